//! Helpers shared by the integration tests.
//!
//! - [`TestUpstream`]: a real HTTP/1.1 + h2c server whose behaviour a test can switch at
//!   run time ([`Mode`]), which counts what it receives and echoes requests as JSON.
//! - [`Gateway`]: the real `sluice` binary, started on a templated config in its own
//!   temporary directory and killed on drop.
//! - [`TestCa`] / [`TestCert`]: certificates made at run time.
//! - [`client`]: HTTP/1.1, h2c, TLS and raw h2 clients.
//! - [`Metrics`]: a parsed Prometheus exposition.
//!
//! Nothing here sleeps for a fixed time to wait for a condition: waits poll the condition
//! ([`eventually`]) and panic with a message after a bound.

#![allow(dead_code, unused_imports)]

pub mod client;
pub mod dns;
/// The real-etcd helper, shared with the config crate's tests.
#[path = "../../config/sources/tests/support/mod.rs"]
pub mod etcd;
pub mod gateway;
pub mod jwks;
pub mod kafka;
pub mod kube_fake;
pub mod l4_echo;
pub mod metrics;
pub mod origin;
pub mod redis;
pub mod tls;
pub mod tls_upstream;
pub mod upstream;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

pub use client::{
    h2c_client, h2c_request, http_client, http_client_unpooled, tls_client, tls_handshake, H2Response,
    Handshake, RawHttp1, RawResponse,
};
pub use dns::TestDns;
pub use etcd::Etcd;
pub use gateway::{Gateway, GatewayBuilder, Signal, Successor};
pub use kube_fake::FakeKube;
pub use metrics::Metrics;
pub use origin::{Origin, Reply};
pub use redis::Redis;
pub use tls::{TestCa, TestCert};
pub use tls_upstream::TlsUpstream;
pub use upstream::{Mode, TestUpstream};

/// A port that was free a moment ago on 127.0.0.1: bound to port 0, read, released.
///
/// For processes that must be told their port up front (the gateway's listeners). Servers
/// the tests run in-process bind `127.0.0.1:0` themselves instead.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// Polls `condition` every 20 ms until it holds; panics naming `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a TCP connection to `addr` is accepted right now.
pub async fn accepts_connections(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// The value of `x-upstream` in a response: the name of the [`TestUpstream`] that answered.
pub fn upstream_of(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
        .to_string()
}

/// YAML list items declaring one single-endpoint upstream per test upstream, with the
/// upstream's name as its id: `- {id: a, endpoints: [{address: "{{a}}"}]}`. Use under
/// `upstreams:`, with the same upstreams given to the [`Gateway`].
pub fn upstream_entries(ups: &[&TestUpstream]) -> String {
    ups.iter()
        .map(|u| {
            format!(
                "- {{id: {0}, endpoints: [{{address: \"{{{{{0}}}}}\"}}]}}\n",
                u.name()
            )
        })
        .collect()
}
