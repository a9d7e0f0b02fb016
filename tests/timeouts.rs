//! Connect and total timeouts answer 504 at about the configured time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::support::{upstream_entries, Gateway, Mode, TestUpstream};

/// A loopback listener that completes no more TCP handshakes: its accept backlog (0, so
/// one pending connection) is filled by connections nobody accepts, after which the
/// kernel drops further SYNs, as a black-holing firewall does. Returns the listener and
/// the filler connections, to keep alive.
async fn blackhole() -> (TcpListener, SocketAddr, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let connect = || tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr));
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match connect().await {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
    }
    assert!(
        !matches!(connect().await, Ok(Ok(_))),
        "the backlog is full: connects time out"
    );
    (listener, addr, fillers)
}

#[tokio::test]
async fn connect_timeout_gives_504_at_the_configured_time() {
    let (_listener, addr, _fillers) = blackhole().await;
    let gw = Gateway::builder(
        r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams:
- {id: hole, endpoints: [{address: "{{hole}}"}], timeouts: {connect: 700ms}, retries: {attempts: 0}}
routes: [{id: r, upstream: hole}]
"#,
    )
    .var("hole", &addr.to_string())
    .start()
    .await;
    let started = Instant::now();
    let resp = gw.get("/").await;
    let took = started.elapsed();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(2700),
        "answered about the 700 ms connect timeout: {took:?}"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout", "{body}");
}

#[tokio::test]
async fn total_timeout_gives_504_at_the_configured_time() {
    let slow = TestUpstream::start("slow").await;
    slow.set_mode(Mode::Delay(Duration::from_secs(10))).await;
    let yaml = format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
{}routes: [{{id: r, upstream: slow, timeouts: {{total: 800ms}}}}]
"#,
        upstream_entries(&[&slow])
    );
    let gw = Gateway::start(&yaml, &[&slow]).await;
    let started = Instant::now();
    let resp = gw.get("/").await;
    let took = started.elapsed();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(2800),
        "answered about the 800 ms total timeout, not the 10 s upstream delay: {took:?}"
    );
    assert!(slow.requests() >= 1);
}
