//! Client connections at the edge: timeouts for slow and idle clients, the caps on
//! requests and connections, and the HTTP/2 rapid-reset defence.
//!
//! What pingora 0.9.1 does on its own (`pingora-core` `apps/mod.rs`,
//! `protocols/http/v1/server.rs`): it bounds each *read* of a request head by 60 s on a
//! new connection and not at all on a reused one (HTTP/1.1 keep-alive becomes "infinite"
//! once a head is parsed), so a client sending a head a byte at a time, or a keep-alive
//! connection left idle, is kept for ever; it has no cap on connections; it caps
//! requests per connection only when `keepalive_request_limit` is set; and h2 0.4's
//! rapid-reset guard only counts streams reset before the application accepted them.
//!
//! Sluice adds two wrappers around each listener's application:
//!
//! - [`Edge`], the transport application, one call per connection: it refuses a
//!   connection past `max_connections`, wraps the stream in [`Watched`] (which notes when
//!   the first byte of each request arrives and counts the client's HTTP/2 `RST_STREAM`
//!   frames against a budget, answering a flood with `GOAWAY` and closing), and closes a
//!   connection on which nothing arrives within `head_timeout`. [`Watched`] also scans
//!   each HTTP/1.x request line as it arrives, before pingora's parser sees it
//!   ([`sluice_core::request_line`]): pingora percent-encodes an illegal target
//!   (`/a b` becomes `/a%20b`) before any hook runs and never answers HTTP/0.9, so an
//!   invalid method, an illegal target byte, HTTP/0.9 or a bad version is answered here,
//!   `400` with `Connection: close`, and pingora sees the end of the stream. A request's
//!   head starts at its first byte, which the wrapper already notes: pingora (without
//!   pipelining, which Sluice does not enable) reads nothing of a next request before it
//!   starts serving it, and drops a connection on which it read past a request's end.
//! - [`Guarded`], the HTTP application, one call per HTTP/1.x request: it sets the body
//!   read timeout and notes that a request has begun (the wait for its first byte
//!   starts), then hands the session on; it adds no future of its own.
//!
//! One watchdog per connection, in [`Edge`], keeps every time limit: nothing on the
//! connection within `head_timeout` of its accept; no byte of a next request within the
//! keep-alive idle timeout; a head not complete `head_timeout` after accept (first
//! request) or after its first byte (later ones). The proxy marks the head complete with
//! [`head_received`] at its first hook. The watchdog holds one timer, armed for the
//! earliest deadline the connection could reach and re-armed only when it fires: the
//! request path writes a few relaxed atomics (and reads the clock twice) and never
//! touches a timer, a waker or an allocation of the wrapper's. See [`ConnState::check`].
//!
//! The per-connection state is one [`ConnState`] shared by the stream wrapper, the
//! watchdog and a task-local, so the request path takes no lock.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use sluice_config::connections::ResolvedLimits;
use sluice_core::request_line::{LineRefusal, RequestLine, Verdict};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

tokio::task_local! {
    /// The connection an HTTP/1.x request is served on (set by [`Edge`] for the
    /// connection's task; HTTP/2 streams run in tasks of their own and do not see it).
    static CONN: Arc<ConnState>;
}

/// Marks the current request's head as received, so its head timeout no longer applies.
/// Called by the proxy at its first hook; does nothing outside an HTTP/1.x connection.
pub fn head_received() {
    let _ = CONN.try_with(|c| c.head_done.store(true, Ordering::Relaxed));
}

/// No first byte yet (in [`ConnState::first_byte`]).
const NONE: u64 = u64::MAX;

/// Per-connection state shared by the stream wrapper, the wrappers' watchdogs and the
/// proxy's first hook.
#[derive(Debug)]
pub struct ConnState {
    /// When the connection was accepted; the stream wrapper's times count from it.
    accepted: Instant,
    /// Set by the wrapper when a read returns data while armed; cleared by it.
    armed: AtomicBool,
    /// Nanoseconds from `accepted` to the first byte of the current request, or [`NONE`].
    first_byte: AtomicU64,
    /// Whether any byte arrived on the connection.
    any_byte: AtomicBool,
    /// Whether the current request's head has been received.
    head_done: AtomicBool,
    /// HTTP/1.x requests started on the connection.
    requests: AtomicU32,
    /// Nanoseconds from `accepted` to when the current request began (pingora asked for
    /// it: the previous one was done), the start of its keep-alive idle wait.
    waiting_since: AtomicU64,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            accepted: Instant::now(),
            armed: AtomicBool::new(true),
            first_byte: AtomicU64::new(NONE),
            any_byte: AtomicBool::new(false),
            head_done: AtomicBool::new(false),
            requests: AtomicU32::new(0),
            waiting_since: AtomicU64::new(0),
        }
    }

    fn since_accepted(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_nanos()).unwrap_or(NONE - 1)
    }

    fn at(&self, ns: u64) -> Instant {
        self.accepted + Duration::from_nanos(ns)
    }

    /// Starts an HTTP/1.x request: its first byte and head are still to come (the first
    /// request's state is the new connection's).
    fn begin_request(&self) {
        if self.requests.fetch_add(1, Ordering::Relaxed) > 0 {
            self.head_done.store(false, Ordering::Relaxed);
            self.first_byte.store(NONE, Ordering::Relaxed);
            self.armed.store(true, Ordering::Relaxed);
            self.waiting_since.store(self.since_accepted(), Ordering::Relaxed);
        }
    }

    /// What the watchdog does at `now`: close the connection for a reason, or look
    /// again at the returned instant: the current request's deadline or
    /// `min(head_timeout, idle_timeout)` from now, whichever is earlier (only the latter
    /// while nothing can expire: a head is complete, or an HTTP/2 connection). A request
    /// that begins in between has a deadline at least that far away, so every deadline
    /// is kept exactly although the request path never re-arms the timer.
    fn check(&self, now: Instant, l: &ResolvedLimits) -> Result<Instant, CloseReason> {
        let later = now + l.head_timeout.min(l.idle_timeout);
        let (deadline, reason) = match self.requests.load(Ordering::Relaxed) {
            // No HTTP/1.x request yet: nothing may arrive for `head_timeout`; once
            // something did, it is HTTP/2 (streams have their own idle timeout) or an
            // HTTP/1.x request about to begin.
            0 if self.any_byte.load(Ordering::Relaxed) => return Ok(later),
            0 => (self.accepted + l.head_timeout, CloseReason::HeadTimeout),
            _ if self.head_done.load(Ordering::Relaxed) => return Ok(later),
            // The first request's head is due `head_timeout` after the accept.
            1 => (self.accepted + l.head_timeout, CloseReason::HeadTimeout),
            _ => match self.first_byte.load(Ordering::Relaxed) {
                NONE => (
                    self.at(self.waiting_since.load(Ordering::Relaxed)) + l.idle_timeout,
                    CloseReason::IdleTimeout,
                ),
                ns => (self.at(ns) + l.head_timeout, CloseReason::HeadTimeout),
            },
        };
        if now >= deadline {
            Err(reason)
        } else {
            // Never sleep past `later`: a request that begins meanwhile may have an
            // earlier deadline than this one (an idle timeout shorter than the head
            // timeout).
            Ok(deadline.min(later))
        }
    }

    /// Called by the stream wrapper when a read returned data; `true` when the data is
    /// the first of a request (on HTTP/1.x: where its head begins).
    #[inline]
    fn on_data(&self) -> bool {
        if self.armed.load(Ordering::Relaxed) {
            self.armed.store(false, Ordering::Relaxed);
            self.first_byte.store(self.since_accepted(), Ordering::Relaxed);
            self.any_byte.store(true, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

/// Why the gateway closed a client connection: the `reason` label of
/// `sluice_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The request head did not arrive in `head_timeout`.
    HeadTimeout,
    /// No next request arrived in `idle_timeout`.
    IdleTimeout,
    /// Refused: the listener already had `max_connections` open.
    ConnectionLimit,
    /// The client reset more HTTP/2 streams than `http2.max_resets` allows.
    ResetFlood,
    /// An HTTP/1.x request line the stream wrapper refused (400): an invalid method,
    /// an illegal byte in the target, HTTP/0.9, a bad version ([`sluice_core::request_line`]).
    MalformedRequestLine,
}

impl CloseReason {
    const ALL: [CloseReason; 5] = [
        CloseReason::HeadTimeout,
        CloseReason::IdleTimeout,
        CloseReason::ConnectionLimit,
        CloseReason::ResetFlood,
        CloseReason::MalformedRequestLine,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::HeadTimeout => "head_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::ConnectionLimit => "connection_limit",
            CloseReason::ResetFlood => "h2_reset_flood",
            CloseReason::MalformedRequestLine => "malformed_request_line",
        }
    }
}

/// Connection metrics, registered once per process; [`ConnMetrics::listener`] resolves
/// one listener's handles when the listener is built, so the request path does no
/// label lookup.
#[derive(Clone)]
pub struct ConnMetrics {
    closed: IntCounterVec,
    open: IntGaugeVec,
}

/// One listener's connection metric handles.
#[derive(Clone)]
pub struct ListenerMetrics {
    closed: [IntCounter; 5],
    open: IntGauge,
}

impl ListenerMetrics {
    fn closed(&self, r: CloseReason) -> &IntCounter {
        &self.closed[r as usize]
    }
}

impl ConnMetrics {
    /// Creates `sluice_connections_closed_total{listener, reason}` and
    /// `sluice_connections_open{listener}` in `metrics`' registry.
    pub fn register(metrics: &crate::observe::metrics::Metrics) -> ConnMetrics {
        let closed = IntCounterVec::new(
            Opts::new(
                "sluice_connections_closed_total",
                "Client connections the gateway closed or refused, by listener and reason.",
            ),
            &["listener", "reason"],
        )
        .expect("static metric definition");
        let open = IntGaugeVec::new(
            Opts::new("sluice_connections_open", "Client connections open, by listener."),
            &["listener"],
        )
        .expect("static metric definition");
        metrics.register(Box::new(closed.clone()));
        metrics.register(Box::new(open.clone()));
        ConnMetrics { closed, open }
    }

    /// The handles for one listener.
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        ListenerMetrics {
            closed: CloseReason::ALL.map(|r| self.closed.with_label_values(&[name, r.as_str()])),
            open: self.open.with_label_values(&[name]),
        }
    }
}

/// The HTTP/2 settings for a listener's limits: pingora's bounded defaults with our
/// stream and header-list limits, and h2's own guards kept at their defaults (20
/// streams reset before they were accepted, 1024 streams we had to reset for protocol
/// errors; both answer `GOAWAY` `ENHANCE_YOUR_CALM`).
pub fn h2_options(l: &ResolvedLimits) -> H2Options {
    let mut o = pingora::protocols::http::v2::server::default_h2_options();
    o.max_concurrent_streams(l.h2_max_concurrent_streams);
    o.max_header_list_size(l.h2_max_header_list_size);
    o.max_pending_accept_reset_streams(20);
    o.max_local_error_reset_streams(Some(1024));
    o
}

/// Applies the per-connection options pingora has a seam for: the requests-per-connection
/// cap and the HTTP/2 idle timeout.
pub fn apply_server_options(options: &mut HttpServerOptions, l: &ResolvedLimits) {
    // Pingora counts reuses: a first session given `n` is followed by `n` more, so
    // `max - 1` serves exactly `max` requests, the last with `Connection: close`.
    options.keepalive_request_limit = Some(l.max_requests_per_connection.saturating_sub(1));
    options.h2_idle_timeout = Some(l.idle_timeout);
}

/// The transport application of one listener: see the module documentation.
pub struct Edge<A> {
    inner: Arc<A>,
    limits: ResolvedLimits,
    open: AtomicU32,
    metrics: ListenerMetrics,
}

impl<A> Edge<A> {
    /// Wraps `inner` (the listener's HTTP application, already a [`ServerApp`]).
    pub fn new(inner: A, limits: ResolvedLimits, metrics: ListenerMetrics) -> Edge<A> {
        Edge {
            inner: Arc::new(inner),
            limits,
            open: AtomicU32::new(0),
            metrics,
        }
    }
}

/// One open connection of a listener, counted while it lives.
struct Slot<'a> {
    open: &'a AtomicU32,
    gauge: &'a IntGauge,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Edge<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.limits.max_connections {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.metrics.closed(CloseReason::ConnectionLimit).inc();
            tracing::debug!("connection refused: {} open", self.limits.max_connections);
            return None; // dropping the stream closes it
        }
        self.metrics.open.inc();
        let _slot = Slot {
            open: &self.open,
            gauge: &self.metrics.open,
        };
        let state = Arc::new(ConnState::new());
        let watched = Watched::new(stream, state.clone(), &self.limits, self.metrics.clone());
        let inner = self.inner.clone();
        CONN.scope(state.clone(), async move {
            tokio::select! {
                biased;
                _ = inner.process_new(Box::new(watched), shutdown) => {}
                reason = watchdog(&state, &self.limits) => {
                    self.metrics.closed(reason).inc();
                    tracing::debug!(reason = reason.as_str(), "client connection closed");
                }
            }
        })
        .await;
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Ends, with the reason, when the connection must be closed ([`ConnState::check`]).
/// One timer for the connection's life, re-armed only when it fires.
async fn watchdog(conn: &ConnState, l: &ResolvedLimits) -> CloseReason {
    let first = conn.accepted + l.head_timeout.min(l.idle_timeout);
    let mut timer = std::pin::pin!(tokio::time::sleep_until(first.into()));
    loop {
        timer.as_mut().await;
        match conn.check(Instant::now(), l) {
            Ok(next) => timer.as_mut().reset(next.into()),
            Err(reason) => return reason,
        }
    }
}

/// The HTTP application of one listener: see the module documentation.
pub struct Guarded<A> {
    inner: Arc<A>,
    limits: ResolvedLimits,
}

impl<A> Guarded<A> {
    /// Wraps the listener's proxy.
    pub fn new(inner: A, limits: ResolvedLimits) -> Guarded<A> {
        Guarded {
            inner: Arc::new(inner),
            limits,
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for Guarded<A> {
    // Not an `async fn`: the request's future is the inner app's, returned as it is, so
    // this wrapper adds no allocation, copy or poll to a request.
    fn process_new_http<'life0, 'life1, 'async_trait>(
        self: &'life0 Arc<Self>,
        mut session: ServerSession,
        shutdown: &'life1 ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        session.set_read_timeout(Some(self.limits.body_timeout));
        if !session.is_http2() {
            let _ = CONN.try_with(|c| c.begin_request());
        }
        self.inner.process_new_http(session, shutdown)
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

/// A budget of client stream resets: `capacity` at most, refilled continuously at
/// `capacity` per `window`. A pure core; the caller passes the time.
#[derive(Debug, Clone)]
pub struct ResetBudget {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl ResetBudget {
    /// A full budget at `now`.
    pub fn new(capacity: u32, window: Duration, now: Instant) -> ResetBudget {
        let capacity = f64::from(capacity.max(1));
        ResetBudget {
            capacity,
            per_sec: capacity / window.as_secs_f64().max(1e-3),
            tokens: capacity,
            last: now,
        }
    }

    /// Takes one reset at `now`; `false` when the budget is spent.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_HEADERS: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Where a frame scanner is in its byte stream.
#[derive(Debug, Clone, Default)]
struct Frames {
    /// Bytes of a frame header read so far.
    header: [u8; 9],
    have: u8,
    /// Payload bytes still to skip.
    skip: u32,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0
    }

    /// Walks `data`, calling `on_frame(type, stream id)` for each frame header completed.
    fn feed(&mut self, mut data: &[u8], mut on_frame: impl FnMut(u8, u32) -> bool) -> bool {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = data.len().min(self.skip as usize);
                data = &data[n..];
                self.skip -= n as u32;
                continue;
            }
            let n = data.len().min(9 - usize::from(self.have));
            let have = usize::from(self.have);
            self.header[have..have + n].copy_from_slice(&data[..n]);
            self.have += n as u8;
            data = &data[n..];
            if self.have == 9 {
                self.have = 0;
                let h = self.header;
                self.skip = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                if !on_frame(h[3], stream) {
                    return false;
                }
            }
        }
        true
    }
}

/// The client's side of an HTTP/2 connection as the reset defence sees it.
#[derive(Debug)]
enum H2Watch {
    /// Comparing the first bytes with the HTTP/2 preface.
    Preface(usize),
    /// HTTP/2: counting frames.
    Frames {
        inbound: Frames,
        outbound: Frames,
        budget: ResetBudget,
        last_stream: u32,
    },
    /// Not HTTP/2 (or already closed for a flood).
    Off,
}

/// A client stream with the connection's bookkeeping: see the module documentation.
pub struct Watched {
    inner: Stream,
    state: Arc<ConnState>,
    h2: H2Watch,
    max_resets: u32,
    reset_window: Duration,
    /// Set once the connection is being closed for a reset flood: every later read and
    /// write fails.
    killed: bool,
    /// The current HTTP/1.x request line, scanned as it arrives (restarted at the first
    /// byte of each request).
    line: RequestLine,
    /// A request line was refused: the 400 still being written, then end of stream.
    refusal: Option<Refusing>,
    /// Bytes read by [`Peek::try_peek`] (pingora's h2c preface check), served again
    /// by the next reads: `rewind[pos..len]`.
    rewind: [u8; H2_PREFACE.len()],
    rewind_len: u8,
    rewind_pos: u8,
    metrics: ListenerMetrics,
}

/// The answer to a refused request line, being written.
struct Refusing {
    response: Vec<u8>,
    sent: usize,
}

impl Refusing {
    /// `HTTP/1.1 400` with `Connection: close` and the JSON error body the gateway's
    /// other refusals carry (there is no request id: no request was read).
    fn new(r: LineRefusal) -> Refusing {
        let body = serde_json::json!({
            "error": "malformed_request",
            "status": 400,
            "message": r.reason(),
        })
        .to_string();
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        Refusing { response, sent: 0 }
    }
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched").field("inner", &self.inner).finish()
    }
}

impl Watched {
    fn new(inner: Stream, state: Arc<ConnState>, l: &ResolvedLimits, metrics: ListenerMetrics) -> Watched {
        Watched {
            inner,
            state,
            h2: H2Watch::Preface(0),
            max_resets: l.h2_max_resets,
            reset_window: l.h2_reset_window,
            killed: false,
            line: RequestLine::new(),
            refusal: None,
            rewind: [0; H2_PREFACE.len()],
            rewind_len: 0,
            rewind_pos: 0,
            metrics,
        }
    }

    /// Writes the refusal's answer; `Ready(Ok)` once it is written and flushed (or the
    /// client is gone), after which every read is the end of the stream.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(r) = &mut self.refusal else {
            return Poll::Ready(Ok(()));
        };
        while r.sent < r.response.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &r.response[r.sent..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    r.sent = r.response.len();
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(n)) => r.sent += n,
                Poll::Pending => return Poll::Pending,
            }
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    /// Scans bytes the client sent; `false` when its resets exhausted the budget.
    fn scan_inbound(&mut self, mut data: &[u8]) -> bool {
        if let H2Watch::Preface(seen) = &mut self.h2 {
            let n = data.len().min(H2_PREFACE.len() - *seen);
            if data[..n] != H2_PREFACE[*seen..*seen + n] {
                self.h2 = H2Watch::Off;
                return true;
            }
            *seen += n;
            data = &data[n..];
            if *seen == H2_PREFACE.len() {
                self.h2 = H2Watch::Frames {
                    inbound: Frames::default(),
                    outbound: Frames::default(),
                    budget: ResetBudget::new(self.max_resets, self.reset_window, Instant::now()),
                    last_stream: 0,
                };
            }
        }
        if let H2Watch::Frames {
            inbound,
            budget,
            last_stream,
            ..
        } = &mut self.h2
        {
            return inbound.feed(data, |kind, stream| match kind {
                FRAME_HEADERS => {
                    *last_stream = (*last_stream).max(stream);
                    true
                }
                FRAME_RST_STREAM => budget.take(Instant::now()),
                _ => true,
            });
        }
        true
    }

    /// Closes the connection for a reset flood: a `GOAWAY` (`ENHANCE_YOUR_CALM`) when the
    /// outgoing stream is between two frames, then every read and write fails.
    fn kill(&mut self, cx: &mut Context<'_>) {
        self.killed = true;
        self.metrics.closed(CloseReason::ResetFlood).inc();
        let H2Watch::Frames {
            outbound,
            last_stream,
            ..
        } = &self.h2
        else {
            return;
        };
        tracing::debug!(
            "HTTP/2 client reset more than {} streams; closing",
            self.max_resets
        );
        if outbound.at_boundary() {
            let mut frame = [0u8; 17];
            frame[2] = 8; // payload length
            frame[3] = 0x7; // GOAWAY
            frame[9..13].copy_from_slice(&last_stream.to_be_bytes());
            frame[13..17].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
            let inner = Pin::new(&mut self.inner);
            if let Poll::Ready(Ok(17)) = inner.poll_write(cx, &frame) {
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
            }
        }
        self.h2 = H2Watch::Off;
    }
}

fn flood() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "HTTP/2 reset flood")
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed {
            return Poll::Ready(Err(flood()));
        }
        let this = &mut *self;
        if this.refusal.is_some() {
            // Nothing more is read: pingora sees the end of the stream once the 400 is
            // out, and closes the connection.
            return this.poll_refusal(cx);
        }
        let before = buf.filled().len();
        let r = if this.rewind_pos < this.rewind_len {
            let avail = &this.rewind[usize::from(this.rewind_pos)..usize::from(this.rewind_len)];
            let n = avail.len().min(buf.remaining());
            buf.put_slice(&avail[..n]);
            this.rewind_pos += n as u8;
            Poll::Ready(Ok(()))
        } else {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        };
        if let Poll::Ready(Ok(())) = r {
            let data = &buf.filled()[before..];
            if !data.is_empty() {
                if this.state.on_data() {
                    // The first byte of a request: on HTTP/1.x its head starts here
                    // (pingora reads nothing of the next request before it starts it).
                    this.line = RequestLine::new();
                }
                if !this.line.is_done() && !matches!(this.h2, H2Watch::Frames { .. }) {
                    if let Verdict::Refuse(why) = this.line.feed(data) {
                        tracing::debug!("request line refused: {why}");
                        this.metrics.closed(CloseReason::MalformedRequestLine).inc();
                        buf.set_filled(before);
                        this.refusal = Some(Refusing::new(why));
                        return this.poll_refusal(cx);
                    }
                }
                if !matches!(this.h2, H2Watch::Off) && !this.scan_inbound(data) {
                    this.kill(cx);
                    return Poll::Ready(Err(flood()));
                }
            }
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.killed {
            return Poll::Ready(Err(flood()));
        }
        if self.refusal.is_some() {
            // The connection answered its refusal; nothing else goes out on it.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "request line refused",
            )));
        }
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), H2Watch::Frames { outbound, .. }) = (&r, &mut this.h2) {
            outbound.feed(&buf[..*n], |_, _| true);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !matches!(self.h2, H2Watch::Frames { .. }) && !self.killed && self.refusal.is_none() {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        // HTTP/2: the outgoing frame boundaries are tracked on plain writes.
        let buf = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
        self.poll_write(cx, buf)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Watched {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for Watched {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Watched {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Watched {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Watched {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Watched {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Watched {
    /// Pingora's h2c check peeks at the first 24 bytes; the TCP stream's own peek waits
    /// for all 24, so a shorter HTTP/1.x request (`GET /\r\n`, HTTP/0.9) would wait
    /// for the head timeout. This one stops at the first byte that is not the HTTP/2
    /// preface's and keeps what it read for the next reads (which scan it as usual).
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        use tokio::io::AsyncReadExt;
        if buf.len() != H2_PREFACE.len() || self.rewind_len != 0 {
            return self.inner.try_peek(buf).await;
        }
        let mut have = 0;
        while have < buf.len() {
            let n = self.inner.read(&mut self.rewind[have..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            have += n;
            self.rewind_len = have as u8;
            if self.rewind[..have] != H2_PREFACE[..have] {
                break;
            }
        }
        buf[..have].copy_from_slice(&self.rewind[..have]);
        buf[have..].fill(0);
        Ok(true)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_reset_budget_allows_a_burst_then_refills() {
        let t0 = Instant::now();
        let mut b = ResetBudget::new(3, Duration::from_secs(3), t0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0), "the burst is spent");
        assert!(
            !b.take(t0 + Duration::from_millis(500)),
            "half a token is not one"
        );
        assert!(b.take(t0 + Duration::from_millis(1600)), "one per second refills");
        assert!(b.take(t0 + Duration::from_secs(100)));
        assert!(b.take(t0 + Duration::from_secs(100)));
        assert!(b.take(t0 + Duration::from_secs(100)));
        assert!(!b.take(t0 + Duration::from_secs(100)), "never above the capacity");
    }

    fn limits() -> ResolvedLimits {
        sluice_config::connections::ConnectionLimits {
            head_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        }
        .resolve()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_watchdog_keeps_every_deadline_without_being_rearmed_per_request() {
        let l = limits();
        let c = ConnState::new();
        let t0 = c.accepted;
        // Nothing arrives: cut at the head timeout from the accept.
        assert_eq!(c.check(t0 + ms(1), &l), Ok(t0 + ms(10_000)));
        assert_eq!(c.check(t0 + ms(10_000), &l), Err(CloseReason::HeadTimeout));
        // The first request began; its head is due 10 s after the accept, bytes or not.
        c.begin_request();
        c.any_byte.store(true, Ordering::Relaxed);
        assert_eq!(c.check(t0 + ms(5), &l), Ok(t0 + ms(10_000)));
        assert_eq!(c.check(t0 + ms(10_001), &l), Err(CloseReason::HeadTimeout));
        // Its head arrived: nothing can expire; look again in min(head, idle).
        c.head_done.store(true, Ordering::Relaxed);
        assert_eq!(c.check(t0 + ms(20), &l), Ok(t0 + ms(10_020)));
        // The second request began at 30 ms (the first was done): idle until 60.03 s.
        c.begin_request();
        c.waiting_since.store(30_000_000, Ordering::Relaxed);
        assert_eq!(
            c.check(t0 + ms(10_020), &l),
            Ok(t0 + ms(20_020)),
            "at most min(head, idle) on"
        );
        assert_eq!(c.check(t0 + ms(55_000), &l), Ok(t0 + ms(60_030)));
        assert_eq!(c.check(t0 + ms(60_030), &l), Err(CloseReason::IdleTimeout));
        // Its first byte at 50 s: the head is due 10 s later, whatever the idle time.
        c.first_byte.store(50_000_000_000, Ordering::Relaxed);
        assert_eq!(c.check(t0 + ms(50_001), &l), Ok(t0 + ms(60_000)));
        assert_eq!(c.check(t0 + ms(60_000), &l), Err(CloseReason::HeadTimeout));
        c.head_done.store(true, Ordering::Relaxed);
        assert_eq!(c.check(t0 + ms(60_000), &l), Ok(t0 + ms(70_000)));
    }

    #[test]
    fn an_idle_timeout_shorter_than_the_head_timeout_is_kept() {
        let l = sluice_config::connections::ConnectionLimits {
            head_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_millis(700)),
            ..Default::default()
        }
        .resolve();
        let c = ConnState::new();
        let t0 = c.accepted;
        c.begin_request();
        c.any_byte.store(true, Ordering::Relaxed);
        // The head is due at 10 s, but the watchdog looks again within the idle timeout.
        assert_eq!(c.check(t0 + ms(1), &l), Ok(t0 + ms(701)));
        c.head_done.store(true, Ordering::Relaxed);
        assert_eq!(c.check(t0 + ms(701), &l), Ok(t0 + ms(1_401)));
        // The next request began at 1 s: idle until 1.7 s, not 10 s.
        c.begin_request();
        c.waiting_since.store(1_000_000_000, Ordering::Relaxed);
        assert_eq!(c.check(t0 + ms(1_401), &l), Ok(t0 + ms(1_700)));
        assert_eq!(c.check(t0 + ms(1_700), &l), Err(CloseReason::IdleTimeout));
    }

    #[test]
    fn an_http2_connection_is_only_held_to_its_first_byte() {
        let l = limits();
        let c = ConnState::new();
        let t0 = c.accepted;
        assert!(c.on_data(), "the preface's first bytes");
        assert_eq!(c.check(t0 + ms(10_000), &l), Ok(t0 + ms(20_000)));
        assert_eq!(c.check(t0 + ms(900_000), &l), Ok(t0 + ms(910_000)));
    }

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn the_frame_scanner_finds_frames_split_anywhere() {
        let mut bytes = Vec::new();
        for s in [1u32, 3, 5] {
            bytes.extend(frame(FRAME_HEADERS, s, b"abcdefgh"));
            bytes.extend(frame(FRAME_RST_STREAM, s, &[0, 0, 0, 8]));
        }
        for split in 1..bytes.len() {
            let mut f = Frames::default();
            let mut seen = Vec::new();
            for chunk in bytes.chunks(split) {
                assert!(f.feed(chunk, |k, s| {
                    seen.push((k, s));
                    true
                }));
            }
            assert!(f.at_boundary());
            assert_eq!(
                seen,
                [(1, 1), (3, 1), (1, 3), (3, 3), (1, 5), (3, 5)],
                "split {split}"
            );
        }
    }
}
