//! Connecting an L4 session to its route's upstream: the weighted backend, then an
//! endpoint through the upstream's own balancer, priorities, health and outlier state
//! (the same discovery plane as HTTP: endpoints from the config, DNS and
//! EndpointSlices), then TCP (and TLS when the upstream has `tls`). A refused or
//! timed-out endpoint is reported to outlier detection and the next one is tried, up
//! to [`MAX_TRIES`] endpoints.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_config::model::Timeouts;
use sluice_core::resilience::UpstreamOutcome;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::plan::L4Route;
use super::session::{End, Record};
use crate::upstream::{EndpointState, Try, Upstream};

/// Endpoints tried for one session before it fails.
pub const MAX_TRIES: usize = 3;

/// A byte stream to an upstream endpoint (TCP, or TLS over TCP).
pub trait UpstreamIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> UpstreamIo for T {}

/// Counts a session as in flight on its endpoint (for `least_request`) while it lives.
pub struct InFlight(Arc<EndpointState>);

impl InFlight {
    /// Counts one on `state`.
    pub fn new(state: Arc<EndpointState>) -> InFlight {
        state.inflight.fetch_add(1, Ordering::Relaxed);
        state.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connected upstream.
pub struct Connected {
    /// The stream.
    pub stream: Box<dyn UpstreamIo>,
    /// Held while the session lives.
    pub inflight: InFlight,
}

/// Reports how a try ended to the upstream's outlier detector (a connection made is a
/// success).
pub fn record_try(up: &Upstream, t: &Try, outcome: UpstreamOutcome) {
    let now = Instant::now();
    let outlier = &t.set.outlier;
    if let Some(ev) = outlier.record(t.index, outcome, now) {
        if ev.enforced {
            up.metrics.ejection(ev.reason);
        }
        up.ejected_gauge
            .set(i64::try_from(outlier.ejected_count(now)).unwrap_or(i64::MAX));
        tracing::warn!(
            upstream = %up.id,
            endpoint = %ev.address,
            reason = ev.reason.as_str(),
            "outlier detection ejected an endpoint (l4)"
        );
    }
}

/// Picks the backend of `route` and an endpoint of it for a session from `key`'s client
/// (the consistent-hash key), trying others when one fails. Fills the record's
/// backend, endpoint, connect time and retries.
pub async fn connect(route: &L4Route, key: Option<u64>, record: &mut Record) -> Result<Connected, End> {
    let Some(b) = route.pick() else {
        return Err(End::NoEndpoint);
    };
    let up = &route.backends[b];
    let tls = route.tls.get(b).and_then(Option::as_ref);
    record.backend = Some(up.id.clone());
    let timeout = up.config.timeouts.connect.unwrap_or(Timeouts::DEFAULT_CONNECT);
    let mut tried: Vec<Try> = Vec::new();
    let started = Instant::now();
    let mut last = End::NoEndpoint;
    for attempt in 0..MAX_TRIES {
        let set = up.endpoints.load_full();
        if set.endpoints.is_empty() {
            break;
        }
        let Some(index) = set.pick_for_try(&tried, key, Instant::now()) else {
            break;
        };
        // Past the endpoints there are, a try would only repeat one.
        if attempt > 0
            && tried
                .iter()
                .any(|t| Arc::ptr_eq(&t.endpoint().state, &set.endpoints[index].state))
        {
            break;
        }
        let t = Try { set, index };
        let ep = t.endpoint();
        let addr = ep.addr;
        record.endpoint = Some(addr);
        record.retries = u32::try_from(attempt).unwrap_or(u32::MAX);
        let result: std::io::Result<Box<dyn UpstreamIo>> = match tls {
            Some(client) => client
                .connect(addr, &ep.sni, timeout)
                .await
                .map(|s| Box::new(s) as Box<dyn UpstreamIo>),
            None => tcp(addr, timeout)
                .await
                .map(|s| Box::new(s) as Box<dyn UpstreamIo>),
        };
        match result {
            Ok(stream) => {
                record.connect_time = Some(started.elapsed());
                record_try(up, &t, UpstreamOutcome::Response(200));
                let inflight = InFlight::new(ep.state.clone());
                return Ok(Connected { stream, inflight });
            }
            Err(e) => {
                tracing::debug!(route = %route.id, upstream = %up.id, endpoint = %addr, "l4 connect failed: {e}");
                record_try(up, &t, UpstreamOutcome::ConnectFailure);
                last = End::ConnectFailed;
                tried.push(t);
            }
        }
    }
    Err(last)
}

async fn tcp(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let s = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = s.set_nodelay(true);
    Ok(s)
}
