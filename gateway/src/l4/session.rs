//! What every L4 connection (TCP, TLS) and UDP session shares: its metrics, why it
//! ended (a closed set), the byte splice with its idle timeout and drain, the access
//! log record written when it ends, and the count of open sessions the drain waits on.
//!
//! Drain: once shutdown begins (`ShutdownWatch` turns true, after `server.grace_period`
//! of still accepting), a session is closed as soon as no byte has moved either way
//! for [`crate::edge::shutdown::DRAIN_IDLE`]; a session still moving bytes goes on until it
//! ends by itself or the process reaches `server.shutdown_timeout`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use pingora::server::ShutdownWatch;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::control::gateway::Gateway;

/// How an L4 connection or UDP session ended: the `outcome` label of
/// `sluice_l4_sessions_total` and the access log's `error` (none for `closed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed (or the upstream did, after the client).
    Closed,
    /// No byte either way for the listener's `l4.idle_timeout`.
    IdleTimeout,
    /// Closed, idle, during shutdown.
    Drained,
    /// No route takes the connection (no SNI match, no route on the listener).
    NoRoute,
    /// The route's upstreams have no endpoint to connect to.
    NoEndpoint,
    /// Every endpoint tried refused, timed out, or failed the upstream TLS handshake.
    ConnectFailed,
    /// The client's TLS handshake failed (or its client certificate was refused).
    HandshakeFailed,
    /// No whole ClientHello within `l4.hello_timeout`.
    HelloTimeout,
    /// The first bytes were not a TLS ClientHello.
    NotTls,
    /// Refused: the listener already had `l4.max_connections` open.
    ConnectionLimit,
    /// A read or write failed mid-session (a reset).
    Reset,
}

impl End {
    /// Every outcome.
    pub const ALL: [End; 11] = [
        End::Closed,
        End::IdleTimeout,
        End::Drained,
        End::NoRoute,
        End::NoEndpoint,
        End::ConnectFailed,
        End::HandshakeFailed,
        End::HelloTimeout,
        End::NotTls,
        End::ConnectionLimit,
        End::Reset,
    ];

    /// The metric label and access-log error code.
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::IdleTimeout => "idle_timeout",
            End::Drained => "drained",
            End::NoRoute => "no_route",
            End::NoEndpoint => "no_endpoint",
            End::ConnectFailed => "connect_failed",
            End::HandshakeFailed => "handshake_failed",
            End::HelloTimeout => "hello_timeout",
            End::NotTls => "not_tls",
            End::ConnectionLimit => "connection_limit",
            End::Reset => "reset",
        }
    }
}

/// The L4 metrics, registered once per process.
#[derive(Clone)]
pub struct L4Metrics {
    /// `sluice_l4_sessions_total{listener, route, outcome}` (`route` empty when none
    /// matched).
    sessions: IntCounterVec,
    /// `sluice_l4_sessions_open{listener}`.
    open: IntGaugeVec,
    /// `sluice_l4_bytes_total{listener, direction}`: `from_client` and `to_client`.
    bytes: IntCounterVec,
    /// `sluice_l4_session_duration_seconds{listener}`.
    duration: HistogramVec,
}

impl L4Metrics {
    /// Registers the L4 metrics in `metrics`.
    pub fn register(metrics: &crate::observe::metrics::Metrics) -> L4Metrics {
        let m = L4Metrics {
            sessions: IntCounterVec::new(
                Opts::new(
                    "sluice_l4_sessions_total",
                    "L4 connections (TCP, TLS) and UDP sessions, by listener, route and how they ended.",
                ),
                &["listener", "route", "outcome"],
            )
            .expect("static metric definition"),
            open: IntGaugeVec::new(
                Opts::new(
                    "sluice_l4_sessions_open",
                    "L4 connections and UDP sessions open, by listener.",
                ),
                &["listener"],
            )
            .expect("static metric definition"),
            bytes: IntCounterVec::new(
                Opts::new(
                    "sluice_l4_bytes_total",
                    "Bytes relayed by L4 routes, by listener and direction (from_client, to_client).",
                ),
                &["listener", "direction"],
            )
            .expect("static metric definition"),
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_l4_session_duration_seconds",
                    "How long L4 connections and UDP sessions lasted, by listener.",
                )
                .buckets(vec![
                    0.005, 0.05, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
                ]),
                &["listener"],
            )
            .expect("static metric definition"),
        };
        metrics.register(Box::new(m.sessions.clone()));
        metrics.register(Box::new(m.open.clone()));
        metrics.register(Box::new(m.bytes.clone()));
        metrics.register(Box::new(m.duration.clone()));
        m
    }
}

/// L4 sessions open in the process (the drain waits for them).
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// L4 sessions open now, in the whole process.
pub fn open_sessions() -> usize {
    OPEN.load(Ordering::Relaxed)
}

/// Waits until the sessions counted by `open` are all gone (each closes itself once idle
/// during the drain); pingora's own grace period bounds the wait.
pub async fn drained(open: &AtomicUsize) {
    while open.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One listener's shared L4 state: its name, its limits, its metrics, and its open
/// session count.
pub struct ListenerCtx {
    /// The listener's name (metric label).
    pub name: String,
    /// The gateway (snapshot, access log).
    pub gateway: Arc<Gateway>,
    /// The listener's L4 settings.
    pub limits: sluice_config::l4::ResolvedL4,
    /// The process's L4 metrics.
    pub metrics: L4Metrics,
    /// Sessions of this listener open now.
    pub open: AtomicUsize,
}

impl ListenerCtx {
    /// Takes a session slot; `None` past `max_connections` (counted as refused).
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.limits.max_connections as usize {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.metrics
                .sessions
                .with_label_values(&[&self.name, "", End::ConnectionLimit.as_str()])
                .inc();
            return None;
        }
        OPEN.fetch_add(1, Ordering::Relaxed);
        self.metrics.open.with_label_values(&[&self.name]).inc();
        Some(Slot { ctx: self.clone() })
    }
}

/// One open session of a listener, counted while it lives.
pub struct Slot {
    ctx: Arc<ListenerCtx>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.ctx.open.fetch_sub(1, Ordering::Relaxed);
        OPEN.fetch_sub(1, Ordering::Relaxed);
        self.ctx.metrics.open.with_label_values(&[&self.ctx.name]).dec();
    }
}

/// What is known of a session, filled in as it goes, and reported when it ends.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it started.
    pub started: Instant,
    /// The same, as wall time.
    pub time: SystemTime,
    /// The client.
    pub client: Option<SocketAddr>,
    /// `TCP`, `UDP`, `TLS` (passthrough) or `TLS-TERMINATE`: the access log's `method`.
    pub kind: &'static str,
    /// The SNI, for TLS: the access log's `host`.
    pub sni: Option<String>,
    /// The route's id.
    pub route: Option<String>,
    /// The upstream id.
    pub backend: Option<String>,
    /// The endpoint connected to.
    pub endpoint: Option<SocketAddr>,
    /// Time to connect to the endpoint (and its TLS).
    pub connect_time: Option<Duration>,
    /// Endpoints tried after the first.
    pub retries: u32,
    /// Bytes from the client.
    pub bytes_in: u64,
    /// Bytes to the client.
    pub bytes_out: u64,
}

impl Record {
    /// A record for a session from `client` starting now.
    pub fn new(client: Option<SocketAddr>, kind: &'static str) -> Record {
        Record {
            started: Instant::now(),
            time: SystemTime::now(),
            client,
            kind,
            sni: None,
            route: None,
            backend: None,
            endpoint: None,
            connect_time: None,
            retries: 0,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Counts and logs the session, ended with `end`.
    pub fn finish(self, ctx: &ListenerCtx, end: End) {
        let m = &ctx.metrics;
        m.sessions
            .with_label_values(&[&ctx.name, self.route.as_deref().unwrap_or(""), end.as_str()])
            .inc();
        m.bytes
            .with_label_values(&[&ctx.name, "from_client"])
            .inc_by(self.bytes_in);
        m.bytes
            .with_label_values(&[&ctx.name, "to_client"])
            .inc_by(self.bytes_out);
        let duration = self.started.elapsed();
        m.duration
            .with_label_values(&[&ctx.name])
            .observe(duration.as_secs_f64());
        tracing::debug!(
            listener = %ctx.name,
            route = self.route.as_deref().unwrap_or(""),
            outcome = end.as_str(),
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            "l4 session ended"
        );
        let sinks = ctx.gateway.access_log.current();
        if sinks.is_empty() {
            return;
        }
        sinks.submit(crate::observe::access_log::AccessRecord {
            time: self.time,
            request_id: crate::edge::pipeline::ingress::new_request_id(),
            client: self.client.map(|a| a.ip()),
            method: http::Method::from_bytes(self.kind.as_bytes()).unwrap_or(http::Method::CONNECT),
            host: self.sni,
            path: String::new(),
            status: 0,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            duration,
            upstream: self.endpoint.map(|a| a.to_string()),
            upstream_time: self.connect_time,
            route: self.route,
            backend: self.backend,
            backend_reason: None,
            retries: self.retries,
            breaker: None,
            user_agent: None,
            error: (end != End::Closed).then_some(end.as_str()),
            consumer: None,
            notes: Default::default(),
            trace: None,
        });
    }
}

/// Milliseconds since `origin`, for the activity stamps.
fn stamp(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The last time a byte moved on a session, in milliseconds from its start.
#[derive(Debug)]
pub struct Activity {
    origin: Instant,
    last: AtomicU64,
}

impl Activity {
    /// Activity now.
    pub fn new() -> Activity {
        Activity {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Something moved now.
    #[inline]
    pub fn touch(&self) {
        self.last.store(stamp(self.origin), Ordering::Relaxed);
    }

    /// How long nothing has moved.
    pub fn idle(&self) -> Duration {
        Duration::from_millis(stamp(self.origin).saturating_sub(self.last.load(Ordering::Relaxed)))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// Ends when the session has been idle for `idle` (then [`End::IdleTimeout`]), or, once
/// shutdown began, for [`crate::edge::shutdown::DRAIN_IDLE`] (then [`End::Drained`]).
pub async fn idle_or_drained(activity: &Activity, idle: Duration, shutdown: &ShutdownWatch) -> End {
    let mut shutdown = shutdown.clone();
    loop {
        let draining = *shutdown.borrow();
        let limit = if draining {
            crate::edge::shutdown::DRAIN_IDLE.min(idle)
        } else {
            idle
        };
        let quiet = activity.idle();
        if quiet >= limit {
            return if draining { End::Drained } else { End::IdleTimeout };
        }
        let wait = limit - quiet;
        if draining {
            tokio::time::sleep(wait).await;
        } else {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                r = shutdown.changed() => {
                    if r.is_err() {
                        // The server is gone; only the idle timeout applies now.
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
    }
}

/// A stream that counts the bytes read from it and stamps the session's activity.
pub struct Counted<'a, S> {
    inner: S,
    read: &'a AtomicU64,
    activity: &'a Activity,
}

impl<'a, S> Counted<'a, S> {
    /// Wraps `inner`.
    pub fn new(inner: S, read: &'a AtomicU64, activity: &'a Activity) -> Self {
        Counted {
            inner,
            read,
            activity,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The buffer size of each direction of a splice.
const SPLICE_BUF: usize = 64 * 1024;

/// Copies bytes both ways between the client and the upstream until both sides are
/// done (a half-close is passed on), the session idles out, or the drain closes it.
/// Fills the record's byte counts.
pub async fn splice<C, U>(
    client: &mut C,
    upstream: &mut U,
    idle: Duration,
    shutdown: &ShutdownWatch,
    record: &mut Record,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (from_client, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
    let activity = Activity::new();
    let end = {
        let mut c = Counted::new(client, &from_client, &activity);
        let mut u = Counted::new(upstream, &to_client, &activity);
        tokio::select! {
            r = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut u, SPLICE_BUF, SPLICE_BUF) => match r {
                Ok(_) => End::Closed,
                Err(_) => End::Reset,
            },
            end = idle_or_drained(&activity, idle, shutdown) => end,
        }
    };
    record.bytes_in += from_client.load(Ordering::Relaxed);
    record.bytes_out += to_client.load(Ordering::Relaxed);
    end
}

/// The client IP of a session, for hashing (`consistent_hash` upstreams hash on it).
pub fn hash_key(client: Option<SocketAddr>) -> Option<u64> {
    let ip: IpAddr = client?.ip();
    Some(crate::upstream::balancer::hash_key(ip.to_string().as_bytes()))
}
