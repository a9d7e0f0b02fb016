//! The `mirror` filter: copies a share of a route's requests to another upstream, fire
//! and forget (Envoy's `request_mirror_policies`, the Gateway API's
//! `RequestMirror`).
//!
//! ```yaml
//! filters:
//!   - mirror:
//!       upstream: shadow
//!       percent: 10
//!       queue: 1024
//!       timeout: 2s
//!       max_body: 64KiB
//! ```
//!
//! The client's request is never held up and its answer never changed:
//!
//! 1. The request phase ([`Filter::on_request`]) decides whether this request is copied
//!    (an exact share: `percent` of every run of requests, counted lock-free) and keeps
//!    a small owned record in the request context: method, the normalised path and
//!    query, the client's headers (hop-by-hop ones removed, `Host` as normalised, the
//!    identity headers removed, `X-Forwarded-For/-Proto/-Host` the gateway's own: the
//!    resolved client address, never the client's header) and the marker
//!    `x-sluice-mirror: 1`.
//! 2. Once the request body is known (the body-ready phase,
//!    [`Filter::on_body_ready`], after request buffering and before the backend is
//!    chosen), the record takes the body: none, the
//!    buffered body when it is at most `max_body`, or, for a body that was streamed
//!    rather than buffered or is bigger, no copy at all (`skipped_body`). The record
//!    then goes into the filter's bounded queue with `try_send`: a full queue drops the
//!    copy and counts it (`dropped_queue_full`). Nothing on the request path awaits.
//! 3. A dispatcher task on the background runtime takes copies from the queue and
//!    sends each (at most [`IN_FLIGHT`] at once per filter) with one pooled keep-alive
//!    HTTP/1.1 client to one of the upstream's current endpoints (round robin over the
//!    healthy, not ejected ones, as the gateway's [`EndpointLookup`] service reports
//!    them, so endpoints from DNS or Kubernetes discovery count). The answer is read and
//!    dropped. Each copy has `timeout` for the whole exchange.
//!
//! Several `mirror` filters on a route are several mirrors, each with its own queue.
//! A reload that keeps a filter's spec keeps the filter, its queue and its tasks; a
//! changed spec builds a new one, and the old one's tasks end once its queue is empty.

pub mod metrics;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sluice_config::limits::ByteSize;
use sluice_config::model::UpstreamProtocol;
use tokio::sync::{mpsc, Semaphore};

use crate::registry::{parse, BuildCtx, Kind, SpecError};
use sluice_core::filter::{Filter, FilterCtx, Flow, Phases, RequestBody, RequestView};
use sluice_core::EndpointLookup;

/// The registry entry.
pub const KIND: Kind = Kind {
    name: "mirror",
    answers: false,
    build,
    redact: crate::registry::shown_as::<MirrorSpec>,
    schema: Some(crate::registry::schema_of::<MirrorSpec>),
};

/// The header every copy carries, so the mirror (and its logs) can tell a copy from
/// real traffic. Any value the client sent is replaced.
pub const X_SLUICE_MIRROR: HeaderName = HeaderName::from_static("x-sluice-mirror");

/// Copies in flight at once per `mirror` filter; the rest wait in the queue.
pub const IN_FLIGHT: usize = 32;

/// The most a copied body can be: pingora's replay buffer, which holds the buffered
/// request body the copy is taken from.
pub const MAX_BODY: u64 = sluice_config::limits::PINGORA_REPLAY_BUFFER;

/// The `mirror` spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    /// The id of the upstream copies go to (plain HTTP/1.1). Required.
    pub upstream: String,
    /// The share of requests copied, in percent, 0 to 100; fractions allowed (`0.5`).
    /// Default: 100.
    #[serde(default = "default_percent")]
    pub percent: f64,
    /// The most copies waiting to be sent; when it is full a copy is dropped and
    /// counted. Default: 1024.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// The whole exchange of one copy (connect, send, read the answer). Default: `2s`.
    #[schemars(with = "sluice_config::schema::DurationText")]
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Request bodies up to this size are copied; a request with a bigger body, or with
    /// a body that was streamed rather than buffered (`request_buffering`), is not
    /// copied at all (`skipped_body`). At most 64KiB. Default: 64KiB.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
}

fn default_percent() -> f64 {
    100.0
}

fn default_queue() -> usize {
    1024
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_max_body() -> ByteSize {
    ByteSize::kib(64)
}

/// How a copy ended, a closed set for `sluice_mirror_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The mirror answered (any status); the answer was dropped.
    Sent,
    /// The connection failed, or the exchange broke.
    Failed,
    /// No complete answer within `timeout`.
    Timeout,
    /// The queue was full; the copy was never sent.
    DroppedQueueFull,
    /// The request's body was too big, or streamed; no copy was made.
    SkippedBody,
    /// The upstream had no usable endpoint (none healthy, or it is gone).
    NoEndpoint,
}

impl Outcome {
    /// Every outcome, in [`Counters::snapshot`] order.
    pub const ALL: [Outcome; 6] = [
        Outcome::Sent,
        Outcome::Failed,
        Outcome::Timeout,
        Outcome::DroppedQueueFull,
        Outcome::SkippedBody,
        Outcome::NoEndpoint,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::DroppedQueueFull => "dropped_queue_full",
            Outcome::SkippedBody => "skipped_body",
            Outcome::NoEndpoint => "no_endpoint",
        }
    }
}

/// The outcome counters of one (route, upstream) pair.
#[derive(Debug, Default)]
pub struct Counters([AtomicU64; 6]);

impl Counters {
    fn count(&self, o: Outcome) {
        self.0[o as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter, in [`Outcome::ALL`] order.
    pub fn snapshot(&self) -> [u64; 6] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

/// Counters by (route id, mirror upstream id).
type CounterList = Vec<((String, String), Arc<Counters>)>;

/// The mirrors' pooled HTTP/1.1 client and their counters by (route, upstream), kept
/// across reloads (a service in the build context, see [`Mirrors::of`]). The map is
/// touched when a filter is built and when metrics are scraped, never per request.
/// Cloning shares both.
#[derive(Clone)]
pub struct Mirrors {
    client: crate::outbound::HttpClient<Full<Bytes>>,
    counters: Arc<Mutex<CounterList>>,
}

impl Default for Mirrors {
    fn default() -> Mirrors {
        // Copies go to upstream endpoints over plain HTTP: no certificate is trusted.
        let pool = crate::outbound::Pool {
            idle_timeout: Duration::from_secs(60),
            max_idle_per_host: IN_FLIGHT,
        };
        let client = crate::outbound::client(rustls::RootCertStore::empty(), pool)
            .unwrap_or_else(|e| panic!("the mirrors' HTTP client: {e}"));
        Mirrors {
            client,
            counters: Arc::default(),
        }
    }
}

impl std::fmt::Debug for Mirrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirrors").finish_non_exhaustive()
    }
}

impl Mirrors {
    /// The process's mirrors, made on first use, their counters then registered in the
    /// metrics registry if the build has one.
    pub fn of(ctx: &BuildCtx<'_>) -> Arc<Mirrors> {
        ctx.services.get_or_insert_with(|| {
            let mirrors = Mirrors::default();
            if let Some(registry) = ctx.metrics() {
                let registered = metrics::MirrorCollector::new(mirrors.clone())
                    .and_then(|c| registry.register(Box::new(c)));
                if let Err(e) = registered {
                    tracing::error!("mirror metrics: {e}");
                }
            }
            mirrors
        })
    }

    /// The counters of `route` × `upstream`, created on first use.
    pub fn counters(&self, route: &str, upstream: &str) -> Arc<Counters> {
        let mut list = self.counters.lock();
        if let Some((_, c)) = list.iter().find(|((r, u), _)| r == route && u == upstream) {
            return c.clone();
        }
        let c = Arc::new(Counters::default());
        list.push(((route.to_string(), upstream.to_string()), c.clone()));
        c
    }

    /// Every (route, upstream) pair's counters, for the metrics.
    pub fn all(&self) -> CounterList {
        self.counters.lock().clone()
    }
}

/// One request's copy, as it waits in a queue.
#[derive(Debug, Clone)]
struct Record {
    method: Method,
    /// Path and query, as the client sent them.
    target: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A filter's queue, and what [`release`] needs to fill it.
struct Queue {
    tx: mpsc::Sender<Record>,
    counters: Arc<Counters>,
    max_body: usize,
}

/// The copies the request phase made, waiting for the body ([`release`]).
#[derive(Clone, Default)]
struct Pending(Vec<(Arc<Queue>, Record)>);

/// Whether the request phase left copies waiting for [`release`].
#[cfg(test)]
fn pending(ctx: &FilterCtx) -> bool {
    ctx.ext.get::<Pending>().is_some()
}

/// Hands the request's copies to their queues with `body`, or counts them as
/// `skipped_body` when the body cannot go with them. Never waits: a full queue drops
/// the copy and counts it. The body-ready phase of the first `mirror` filter of the
/// route releases every filter's copies.
fn release(ctx: &mut FilterCtx, body: &RequestBody) {
    let Some(Pending(copies)) = ctx.ext.remove::<Pending>() else {
        return;
    };
    for (queue, mut copy) in copies {
        match body {
            RequestBody::Empty => {}
            RequestBody::Buffered(b) if b.len() <= queue.max_body => copy.body = b.clone(),
            RequestBody::Buffered(_) | RequestBody::Streamed => {
                queue.counters.count(Outcome::SkippedBody);
                continue;
            }
        }
        if queue.tx.try_send(copy).is_err() {
            queue.counters.count(Outcome::DroppedQueueFull);
        }
    }
}

/// Headers never copied: hop-by-hop ones, and the framing the copy sets itself.
const NOT_COPIED: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONTENT_LENGTH,
    header::EXPECT,
];

/// Headers of the client's that a copy never carries: the forwarded headers (replaced
/// by the gateway's own) and the identity headers (the gateway removes client copies at
/// ingress; removed here again so a copy cannot carry one whatever the route).
const NOT_TRUSTED: [HeaderName; 6] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-sluice-consumer"),
    HeaderName::from_static("x-sluice-consumer-groups"),
];

/// The `mirror` filter, compiled.
pub struct Mirror {
    upstream: String,
    /// Share of requests copied, in millionths (0 to 1 000 000).
    ppm: u64,
    /// Requests seen, for the exact share.
    seen: AtomicU64,
    /// The queue; `None` when built without a runtime (validation).
    queue: Option<Arc<Queue>>,
    counters: Arc<Counters>,
}

fn build(spec: &serde_json::Value, ctx: &BuildCtx<'_>) -> crate::registry::BuildResult {
    let spec: MirrorSpec = parse(spec)?;
    Ok(Arc::new(Mirror::new(&spec, ctx)?))
}

/// Checks `spec` against the config: every error, each naming its field.
fn check(spec: &MirrorSpec, ctx: &BuildCtx<'_>) -> Vec<SpecError> {
    let mut errors = Vec::new();
    match ctx.config.upstreams.iter().find(|u| u.id == spec.upstream) {
        None => errors.push(SpecError::at(
            "upstream",
            format!("no upstream {:?} in upstreams", spec.upstream),
        )),
        Some(u) if u.tls.is_some() || u.protocol != UpstreamProtocol::Http1 => errors.push(SpecError::at(
            "upstream",
            format!(
                "upstream {:?} is TLS or HTTP/2; copies are sent over plain HTTP/1.1",
                spec.upstream
            ),
        )),
        Some(_) => {}
    }
    if !(spec.percent.is_finite() && (0.0..=100.0).contains(&spec.percent)) {
        errors.push(SpecError::at(
            "percent",
            format!("must be between 0 and 100, got {}", spec.percent),
        ));
    }
    if spec.queue == 0 {
        errors.push(SpecError::at("queue", "must be above 0"));
    }
    if spec.timeout.is_zero() {
        errors.push(SpecError::at("timeout", "must be above 0"));
    }
    if spec.max_body.bytes() > MAX_BODY {
        errors.push(SpecError::at(
            "max_body",
            format!(
                "at most 64KiB (the request buffer copies are taken from), got {}",
                spec.max_body.bytes()
            ),
        ));
    }
    errors
}

impl Mirror {
    /// Validates `spec` (errors name their field) and builds the filter. With a runtime
    /// (the build context's, else the current one) and an [`EndpointLookup`] service,
    /// its dispatcher starts there; without them (validation) the filter copies nothing.
    pub fn new(spec: &MirrorSpec, ctx: &BuildCtx<'_>) -> Result<Mirror, Vec<SpecError>> {
        let errors = check(spec, ctx);
        if !errors.is_empty() {
            return Err(errors);
        }
        let mirrors = Mirrors::of(ctx);
        let counters = mirrors.counters(ctx.route, &spec.upstream);
        let runtime = ctx
            .runtime()
            .or_else(|| tokio::runtime::Handle::try_current().ok());
        let lookup = ctx.services.get::<Arc<dyn EndpointLookup>>();
        let queue = match (runtime, lookup) {
            (Some(rt), Some(lookup)) => {
                let (tx, rx) = mpsc::channel(spec.queue);
                rt.spawn(dispatch(
                    rx,
                    Sender {
                        client: mirrors.client.clone(),
                        lookup: (*lookup).clone(),
                        upstream: spec.upstream.clone(),
                        timeout: spec.timeout,
                        counters: counters.clone(),
                    },
                ));
                Some(Arc::new(Queue {
                    tx,
                    counters: counters.clone(),
                    max_body: usize::try_from(spec.max_body.bytes()).unwrap_or(usize::MAX),
                }))
            }
            _ => None,
        };
        Ok(Mirror {
            upstream: spec.upstream.clone(),
            // In range by `check`.
            ppm: (spec.percent * 10_000.0).round() as u64,
            seen: AtomicU64::new(0),
            queue,
            counters,
        })
    }

    /// The upstream copies go to.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// This filter's outcome counters (shared with every filter of the same route and
    /// upstream).
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Whether the next request is copied: exactly `ppm` of every million, spread
    /// evenly (request `n` is copied when `⌊(n+1)·p⌋ > ⌊n·p⌋`).
    fn sample(&self) -> bool {
        match self.ppm {
            0 => false,
            1_000_000 => true,
            p => {
                let n = self.seen.fetch_add(1, Ordering::Relaxed) % 1_000_000;
                (n + 1) * p / 1_000_000 > n * p / 1_000_000
            }
        }
    }
}

/// The copy of `req`.
fn copy_of(req: &RequestView<'_>) -> Record {
    let mut headers = req.headers.clone();
    for name in NOT_COPIED.iter().chain(&NOT_TRUSTED) {
        headers.remove(name);
    }
    if let Some(host) = req.authority.and_then(|a| HeaderValue::from_str(a).ok()) {
        headers.insert(header::HOST, host);
    }
    // The copy's forwarded headers are the gateway's, never the client's: the client
    // address it resolved (through trusted proxies only), the scheme and the host.
    if let Some(ip) = req
        .client_ip
        .and_then(|ip| HeaderValue::try_from(ip.to_string()).ok())
    {
        headers.insert(NOT_TRUSTED[0].clone(), ip);
    }
    if let Ok(scheme) = HeaderValue::from_str(req.scheme) {
        headers.insert(NOT_TRUSTED[1].clone(), scheme);
    }
    if let Some(host) = req.authority.and_then(|a| HeaderValue::from_str(a).ok()) {
        headers.insert(NOT_TRUSTED[2].clone(), host);
    }
    headers.insert(X_SLUICE_MIRROR, HeaderValue::from_static("1"));
    let target = match req.query {
        Some(q) => format!("{}?{q}", req.path),
        None => req.path.to_string(),
    };
    Record {
        method: req.method.clone(),
        target,
        headers,
        body: Bytes::new(),
    }
}

#[async_trait]
impl Filter for Mirror {
    fn kind(&self) -> &'static str {
        "mirror"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            body_ready: true,
            ..Phases::default()
        }
    }

    fn on_body_ready(&self, body: &RequestBody, ctx: &mut FilterCtx) {
        release(ctx, body);
    }

    async fn on_request(&self, req: &RequestView<'_>, ctx: &mut FilterCtx) -> Flow {
        let Some(queue) = &self.queue else {
            return Flow::Continue;
        };
        if !self.sample() {
            return Flow::Continue;
        }
        let copy = copy_of(req);
        match ctx.ext.get_mut::<Pending>() {
            Some(p) => p.0.push((queue.clone(), copy)),
            None => {
                ctx.ext.insert(Pending(vec![(queue.clone(), copy)]));
            }
        }
        Flow::Continue
    }
}

/// What the dispatcher needs to send copies.
struct Sender {
    client: crate::outbound::HttpClient<Full<Bytes>>,
    lookup: Arc<dyn EndpointLookup>,
    upstream: String,
    timeout: Duration,
    counters: Arc<Counters>,
}

/// Takes copies off the queue and sends them, at most [`IN_FLIGHT`] at once. Ends when
/// the filter (the queue's sender) is gone and the queue is empty.
async fn dispatch(mut rx: mpsc::Receiver<Record>, s: Sender) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut n: u64 = 0;
    while let Some(copy) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(addr) = s.lookup.endpoint(&s.upstream, n) else {
            s.counters.count(Outcome::NoEndpoint);
            continue;
        };
        n = n.wrapping_add(1);
        let Some(request) = request(copy, addr) else {
            s.counters.count(Outcome::Failed);
            continue;
        };
        let (client, counters, timeout) = (s.client.clone(), s.counters.clone(), s.timeout);
        tokio::spawn(async move {
            let _slot = slot;
            let exchange = async {
                let resp = client.request(request).await.map_err(|_| Outcome::Failed)?;
                // Read the answer to its end, so the connection goes back to the pool.
                resp.into_body().collect().await.map_err(|_| Outcome::Failed)?;
                Ok::<(), Outcome>(())
            };
            let outcome = match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok(())) => Outcome::Sent,
                Ok(Err(o)) => o,
                Err(_) => Outcome::Timeout,
            };
            counters.count(outcome);
        });
    }
}

/// The request for `copy` to `addr`; `None` if the target is not a valid URI.
fn request(copy: Record, addr: SocketAddr) -> Option<Request<Full<Bytes>>> {
    let uri: Uri = format!("http://{addr}{}", copy.target).parse().ok()?;
    let mut out = Request::new(Full::new(copy.body));
    *out.method_mut() = copy.method;
    *out.uri_mut() = uri;
    *out.headers_mut() = copy.headers;
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sluice_core::Services;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    struct Fixed(SocketAddr);

    impl EndpointLookup for Fixed {
        fn endpoint(&self, id: &str, _n: u64) -> Option<SocketAddr> {
            (id == "shadow").then_some(self.0)
        }
    }

    fn config() -> sluice_config::Config {
        serde_yaml::from_str(
            "upstreams:\n- {id: shadow, endpoints: [{address: '127.0.0.1:1'}]}\n- {id: tls, endpoints: [{address: '127.0.0.1:1'}], tls: {}}\n",
        )
        .unwrap()
    }

    fn errors(spec: serde_json::Value) -> Vec<String> {
        let config = config();
        let services = Services::default();
        match build(&spec, &BuildCtx::new(&config, &services)) {
            Ok(_) => Vec::new(),
            Err(es) => es
                .into_iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect(),
        }
    }

    #[test]
    fn spec_errors_name_their_fields() {
        assert!(errors(serde_json::json!({"upstream": "shadow"})).is_empty());
        let es = errors(serde_json::json!({
            "upstream": "nope", "percent": 150, "queue": 0, "timeout": "0s", "max_body": "1MiB"
        }));
        let paths: Vec<&str> = es.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            ["upstream", "percent", "queue", "timeout", "max_body"],
            "{es:?}"
        );
        assert!(es[0].contains("no upstream \"nope\""), "{es:?}");
        let es = errors(serde_json::json!({"upstream": "tls"}));
        assert!(es[0].starts_with("upstream: ") && es[0].contains("TLS"), "{es:?}");
        let es = errors(serde_json::json!({"upstream": "shadow", "percnt": 5}));
        assert!(es[0].contains("unknown field `percnt`"), "{es:?}");
        assert!(errors(serde_json::json!({"upstream": "shadow", "percent": 0.5})).is_empty());
        assert!(!errors(serde_json::json!({"upstream": "shadow", "percent": -1})).is_empty());
    }

    fn mirror(spec: serde_json::Value, lookup: Option<Arc<dyn EndpointLookup>>) -> Mirror {
        let config = config();
        let services = Services::default();
        if let Some(lookup) = lookup {
            services.insert(lookup);
        }
        Mirror::new(&parse(&spec).unwrap(), &BuildCtx::new(&config, &services)).unwrap()
    }

    #[test]
    fn the_share_is_exact_over_every_run() {
        for (percent, of, want) in [(30.0, 1000, 300), (10.0, 10, 1), (0.5, 200, 1), (33.3, 1000, 333)] {
            let m = mirror(
                serde_json::json!({"upstream": "shadow", "percent": percent}),
                None,
            );
            let n = (0..of).filter(|_| m.sample()).count();
            assert_eq!(n, want, "{percent}% of {of}");
        }
        let all = mirror(serde_json::json!({"upstream": "shadow"}), None);
        assert!((0..100).all(|_| all.sample()));
        let none = mirror(serde_json::json!({"upstream": "shadow", "percent": 0}), None);
        assert!(!(0..100).any(|_| none.sample()));
    }

    struct Req(HeaderMap, Method);

    impl Req {
        fn view(&self) -> RequestView<'_> {
            RequestView {
                method: &self.1,
                scheme: "http",
                host: Some("api.test"),
                authority: Some("api.test:8080"),
                path: "/orders/7",
                query: Some("page=2"),
                headers: &self.0,
                client_ip: None,
            }
        }
    }

    fn req() -> Req {
        let mut h = HeaderMap::new();
        h.insert("x-a", "1".parse().unwrap());
        h.insert("connection", "keep-alive".parse().unwrap());
        h.insert("content-length", "4".parse().unwrap());
        h.insert("x-sluice-mirror", "forged".parse().unwrap());
        Req(h, Method::POST)
    }

    /// A server that answers every request with 200 and reports each request (head
    /// and body) it read.
    async fn server() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let Ok(n) = s.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        if buf.len() < end + 4 + len {
                            continue;
                        }
                        let whole: Vec<u8> = buf.drain(..end + 4 + len).collect();
                        let _ = tx.send(String::from_utf8_lossy(&whole).into_owned());
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    async fn wait_for(c: &Counters, o: Outcome, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while c.snapshot()[o as usize] < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{o:?} never reached {n}: {:?}",
                c.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_copy_carries_the_request_and_its_body() {
        let (addr, mut seen) = server().await;
        let m = mirror(
            serde_json::json!({"upstream": "shadow"}),
            Some(Arc::new(Fixed(addr))),
        );
        let mut ctx = FilterCtx::default();
        assert!(matches!(
            m.on_request(&req().view(), &mut ctx).await,
            Flow::Continue
        ));
        assert!(pending(&ctx));
        release(&mut ctx, &RequestBody::Buffered(Bytes::from_static(b"abcd")));
        assert!(!pending(&ctx));
        let got = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .unwrap()
            .unwrap();
        let lower = got.to_ascii_lowercase();
        assert!(lower.starts_with("post /orders/7?page=2 http/1.1\r\n"), "{got}");
        for line in [
            "host: api.test:8080",
            "x-a: 1",
            "x-sluice-mirror: 1",
            "content-length: 4",
        ] {
            assert!(lower.contains(&format!("\r\n{line}\r\n")), "{line} in {got}");
        }
        assert!(
            !lower.contains("forged") && !lower.contains("connection: keep-alive"),
            "{got}"
        );
        assert!(got.ends_with("\r\n\r\nabcd"), "{got}");
        wait_for(&m.counters, Outcome::Sent, 1).await;
    }

    #[tokio::test]
    async fn bodies_that_cannot_be_copied_are_skipped_and_counted() {
        let (addr, _seen) = server().await;
        let m = mirror(
            serde_json::json!({"upstream": "shadow", "max_body": 3}),
            Some(Arc::new(Fixed(addr))),
        );
        for body in [
            RequestBody::Buffered(Bytes::from_static(b"abcd")),
            RequestBody::Streamed,
        ] {
            let mut ctx = FilterCtx::default();
            m.on_request(&req().view(), &mut ctx).await;
            release(&mut ctx, &body);
        }
        assert_eq!(m.counters.snapshot()[Outcome::SkippedBody as usize], 2);
        assert_eq!(m.counters.snapshot()[Outcome::Sent as usize], 0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_and_never_waits() {
        // A mirror that accepts connections and never answers.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let m = mirror(
            serde_json::json!({"upstream": "shadow", "queue": 4, "timeout": "300ms"}),
            Some(Arc::new(Fixed(addr))),
        );
        let total = 200u64;
        for _ in 0..total {
            let mut ctx = FilterCtx::default();
            m.on_request(&req().view(), &mut ctx).await;
            release(&mut ctx, &RequestBody::Empty);
        }
        let dropped = m.counters.snapshot()[Outcome::DroppedQueueFull as usize];
        assert!(dropped > 0, "{:?}", m.counters.snapshot());
        wait_for(&m.counters, Outcome::Timeout, total - dropped).await;
        assert_eq!(m.counters.snapshot().iter().sum::<u64>(), total);
    }

    #[tokio::test]
    async fn an_upstream_without_endpoints_is_counted() {
        struct NoneLeft;
        impl EndpointLookup for NoneLeft {
            fn endpoint(&self, _: &str, _: u64) -> Option<SocketAddr> {
                None
            }
        }
        let m = mirror(
            serde_json::json!({"upstream": "shadow"}),
            Some(Arc::new(NoneLeft)),
        );
        let mut ctx = FilterCtx::default();
        m.on_request(&req().view(), &mut ctx).await;
        release(&mut ctx, &RequestBody::Empty);
        wait_for(&m.counters, Outcome::NoEndpoint, 1).await;
    }
}
