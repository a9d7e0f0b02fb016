//! The `forward_auth` filter: asks an external HTTP service whether a request may pass
//! (Traefik's ForwardAuth, nginx's `auth_request`).
//!
//! ```yaml
//! filters:
//!   - forward_auth:
//!       url: http://127.0.0.1:4180/verify
//!       request_headers: [authorization, cookie]
//!       upstream_headers: [x-user, x-groups]
//!       consumer_header: x-user
//!       timeout: 2s
//!       on_error: deny
//! ```
//!
//! For each request the gateway sends `GET url` to the service with the configured
//! request headers and `X-Forwarded-Method`, `-Proto`, `-Host`, `-Uri` and `-For` (the
//! client address after `trusted_proxies`), plus the request id.
//!
//! - A **2xx** lets the request through: the `upstream_headers` of the service's answer
//!   replace the client's own (a client can never send them itself: they are removed
//!   even when the service does not return them), and `consumer_header` /
//!   `groups_header` set the identity.
//! - **Anything else** is the client's answer: the service's status and body, with its
//!   `Content-Type`, `WWW-Authenticate`, `Location` and the `client_headers`. The
//!   upstream is not called.
//! - A **timeout**, a refused connection or a broken answer (including a body over
//!   `max_body_bytes`) takes `on_error`: `deny` (the default, fail closed) answers 503;
//!   `allow` lets the request through without identity.
//!
//! The client is one pooled keep-alive HTTP/1.1 client per process ([`Pool`], a
//! service in the build context); each call runs on the shared background runtime, so
//! connections and their I/O live there, and the request path takes no lock.

pub mod metrics;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use serde::{Deserialize, Serialize};

use crate::registry::{parse, BuildCtx, Kind, SpecError};
use sluice_core::filter::{
    Filter, FilterCtx, Flow, HeaderEdit, Identity, Phases, Reject, RejectKind, RequestView, Response,
};
use sluice_core::trace::{ChildSpan, ChildSpans, TraceContext};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The registry entry.
pub const KIND: Kind = Kind {
    name: "forward_auth",
    answers: false,
    build,
    redact: crate::registry::shown_as::<ForwardAuthSpec>,
    schema: Some(crate::registry::schema_of::<ForwardAuthSpec>),
};

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What to do when the service cannot answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Refuse the request with 503 (fail closed). The default.
    #[default]
    Deny,
    /// Let the request through without identity (fail open).
    Allow,
}

/// The `forward_auth` spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthSpec {
    /// The service's URL, `http://` or `https://host:port/path?query`; it is called
    /// with `GET`. Required. Shown with its password (if any) redacted.
    pub url: sluice_config::secret::SecretUrl,
    /// For an `https` URL: a PEM file of the CA certificates to trust instead of the
    /// public roots (Mozilla's, built in). Read when the filter is built. Default: none.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Request headers copied to the service (every value). Default:
    /// `[authorization, cookie]`.
    #[serde(default = "default_request_headers")]
    pub request_headers: Vec<String>,
    /// Headers of a 2xx answer copied onto the upstream request, replacing the client's
    /// (which are removed even when the answer lacks them). Default: empty.
    #[serde(default)]
    pub upstream_headers: Vec<String>,
    /// Headers of a refusal sent to the client besides `Content-Type`,
    /// `WWW-Authenticate` and `Location` (e.g. `set-cookie`). Default: empty.
    #[serde(default)]
    pub client_headers: Vec<String>,
    /// A header of a 2xx answer that names the consumer (the identity). Default: none.
    #[serde(default)]
    pub consumer_header: Option<String>,
    /// A header of a 2xx answer with the consumer's groups, comma separated (used only
    /// with `consumer_header`). Default: none.
    #[serde(default)]
    pub groups_header: Option<String>,
    /// The whole exchange with the service, connecting included. Default: `2s`.
    #[schemars(with = "sluice_config::schema::DurationText")]
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// What a timeout, a refused connection or a broken answer does: `deny` (503) or
    /// `allow`. Default: `deny`.
    #[serde(default)]
    pub on_error: OnError,
    /// The largest answer body read; a bigger one is a broken answer. Default: 65536.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_request_headers() -> Vec<String> {
    vec!["authorization".into(), "cookie".into()]
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_max_body() -> usize {
    64 * 1024
}

/// Why the service could not answer (the `on_error` cases), a closed set for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No complete answer within `timeout`.
    Timeout,
    /// The connection (or its TLS handshake) could not be made.
    Unreachable,
    /// The answer was not usable: a protocol error, a body over `max_body_bytes`, no
    /// runtime to run on.
    Invalid,
}

/// What the service decided.
#[derive(Debug)]
pub enum Outcome {
    /// A 2xx: the request may pass. The headers for the upstream are kept in the
    /// request context; the identity is set when `consumer_header` named one.
    Allowed,
    /// Any other status: the service's answer, for the client.
    Denied(Response),
    /// The service could not answer.
    Failed(Failure),
}

/// Outcome counters, by [`Outcome`] and [`Failure`]; read by the kind's own metrics
/// collector ([`metrics`]).
#[derive(Debug, Default)]
pub struct Stats {
    counts: [AtomicU64; 5],
}

impl Stats {
    /// The label of each counter, in [`Stats::snapshot`] order.
    pub const RESULTS: [&'static str; 5] = ["allowed", "denied", "timeout", "unreachable", "invalid"];

    fn count(&self, outcome: &Outcome) {
        let i = match outcome {
            Outcome::Allowed => 0,
            Outcome::Denied(_) => 1,
            Outcome::Failed(Failure::Timeout) => 2,
            Outcome::Failed(Failure::Unreachable) => 3,
            Outcome::Failed(Failure::Invalid) => 4,
        };
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter, in [`Stats::RESULTS`] order.
    pub fn snapshot(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

/// The forward-auth HTTP client type: HTTP/1.1 over plain TCP or TLS, pooled.
type HttpClient = crate::outbound::HttpClient<Empty<Bytes>>;

/// The process's forward-auth HTTP client (one keep-alive pool, trusting the public
/// roots, for every `forward_auth` filter of every snapshot; a filter with its own
/// `ca_file` has its own) and the outcome counters. Cloning shares both.
#[derive(Clone)]
pub struct Pool {
    client: HttpClient,
    /// Outcome counters of every call.
    pub stats: Arc<Stats>,
}

/// A pooled client trusting `roots` (the gateway's one outbound stack).
fn client(roots: rustls::RootCertStore) -> Result<HttpClient, String> {
    crate::outbound::client(
        roots,
        crate::outbound::Pool {
            idle_timeout: Duration::from_secs(60),
            max_idle_per_host: 256,
        },
    )
}

/// The CA certificates of PEM file `path`.
fn file_roots(path: &str) -> Result<rustls::RootCertStore, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut std::io::BufReader::new(file)) {
        let cert = cert.map_err(|e| format!("{path}: {e}"))?;
        roots.add(cert).map_err(|e| format!("{path}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{path}: no certificate"));
    }
    Ok(roots)
}

impl Default for Pool {
    fn default() -> Pool {
        Pool {
            // The provider's default protocol versions always exist.
            client: client(crate::outbound::public_roots())
                .unwrap_or_else(|e| panic!("forward-auth TLS client: {e}")),
            stats: Arc::default(),
        }
    }
}

impl Pool {
    /// The process's pool, a service in the build context: made on first use, its
    /// counters then registered in the metrics registry if the build has one.
    pub fn of(ctx: &BuildCtx<'_>) -> Pool {
        let pool = ctx.services.get_or_insert_with(|| {
            let pool = Pool::default();
            if let Some(registry) = ctx.metrics() {
                let registered = metrics::ForwardAuthCollector::new(pool.stats.clone())
                    .and_then(|c| registry.register(Box::new(c)));
                if let Err(e) = registered {
                    tracing::error!("forward_auth metrics: {e}");
                }
            }
            pool
        });
        (*pool).clone()
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("stats", &self.stats).finish()
    }
}

fn build(spec: &serde_json::Value, ctx: &BuildCtx<'_>) -> Result<Arc<dyn Filter>, Vec<SpecError>> {
    let spec: ForwardAuthSpec = parse(spec)?;
    Ok(Arc::new(ForwardAuth::new(&spec, Pool::of(ctx), ctx.runtime())?))
}

/// Headers of 2xx answers, to be copied onto the upstream request.
#[derive(Debug, Clone, Default)]
struct UpstreamHeaders(Vec<(HeaderName, HeaderValue)>);

/// The `forward_auth` filter, compiled.
pub struct ForwardAuth {
    uri: Uri,
    request_headers: Vec<HeaderName>,
    upstream_headers: Vec<HeaderName>,
    client_headers: Vec<HeaderName>,
    consumer_header: Option<HeaderName>,
    groups_header: Option<HeaderName>,
    timeout: Duration,
    on_error: OnError,
    max_body: usize,
    pool: Pool,
    /// The pool's client, or this filter's own for its `ca_file`.
    client: HttpClient,
    runtime: Option<tokio::runtime::Handle>,
}

fn names(field: &str, list: &[String], errors: &mut Vec<SpecError>) -> Vec<HeaderName> {
    let mut out = Vec::with_capacity(list.len());
    for (i, n) in list.iter().enumerate() {
        match HeaderName::from_bytes(n.as_bytes()) {
            Ok(h) => out.push(h),
            Err(_) => errors.push(SpecError::at(
                format!("{field}[{i}]"),
                format!("invalid header name {n:?}"),
            )),
        }
    }
    out
}

fn one_name(field: &str, name: &Option<String>, errors: &mut Vec<SpecError>) -> Option<HeaderName> {
    let n = name.as_ref()?;
    HeaderName::from_bytes(n.as_bytes())
        .map_err(|_| errors.push(SpecError::at(field, format!("invalid header name {n:?}"))))
        .ok()
}

impl ForwardAuth {
    /// Validates the spec (errors name their field) and builds the filter on `pool`,
    /// calling out on `runtime` (the current runtime when `None`).
    pub fn new(
        spec: &ForwardAuthSpec,
        pool: Pool,
        runtime: Option<tokio::runtime::Handle>,
    ) -> Result<ForwardAuth, Vec<SpecError>> {
        let mut errors = Vec::new();
        let uri = match spec.url.expose().parse::<Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https"))
                    && u.host().is_some_and(|h| !h.is_empty()) =>
            {
                Some(u)
            }
            Ok(_) => {
                errors.push(SpecError::at(
                    "url",
                    format!(
                        "{:?} is not an http:// or https:// URL with a host",
                        spec.url.redacted()
                    ),
                ));
                None
            }
            Err(e) => {
                errors.push(SpecError::at(
                    "url",
                    format!("invalid URL {:?}: {e}", spec.url.redacted()),
                ));
                None
            }
        };
        let client = match &spec.ca_file {
            None => Some(pool.client.clone()),
            Some(_) if uri.as_ref().is_some_and(|u| u.scheme_str() != Some("https")) => {
                errors.push(SpecError::at("ca_file", "only for an https:// url"));
                None
            }
            Some(path) => match file_roots(path).and_then(client) {
                Ok(c) => Some(c),
                Err(e) => {
                    errors.push(SpecError::at("ca_file", e));
                    None
                }
            },
        };
        let request_headers = names("request_headers", &spec.request_headers, &mut errors);
        let upstream_headers = names("upstream_headers", &spec.upstream_headers, &mut errors);
        let client_headers = names("client_headers", &spec.client_headers, &mut errors);
        let consumer_header = one_name("consumer_header", &spec.consumer_header, &mut errors);
        let groups_header = one_name("groups_header", &spec.groups_header, &mut errors);
        if spec.groups_header.is_some() && spec.consumer_header.is_none() {
            errors.push(SpecError::at("groups_header", "needs consumer_header"));
        }
        if spec.timeout.is_zero() {
            errors.push(SpecError::at("timeout", "must be above 0"));
        }
        if spec.max_body_bytes == 0 {
            errors.push(SpecError::at("max_body_bytes", "must be above 0"));
        }
        match (uri, client) {
            (Some(uri), Some(client)) if errors.is_empty() => Ok(ForwardAuth {
                uri,
                request_headers,
                upstream_headers,
                client_headers,
                consumer_header,
                groups_header,
                timeout: spec.timeout,
                on_error: spec.on_error,
                max_body: spec.max_body_bytes,
                pool,
                client,
                runtime,
            }),
            _ => Err(errors),
        }
    }

    /// The request sent to the service for `req`.
    fn auth_request(&self, req: &RequestView<'_>, ctx: &FilterCtx) -> Request<Empty<Bytes>> {
        let mut headers = HeaderMap::with_capacity(self.request_headers.len() + 6);
        for name in &self.request_headers {
            for v in req.headers.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        headers.insert(
            X_FORWARDED_METHOD,
            HeaderValue::from_str(req.method.as_str()).unwrap_or(HeaderValue::from_static("GET")),
        );
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if req.scheme == "https" { "https" } else { "http" }),
        );
        if let Some(host) = req.authority.and_then(|h| HeaderValue::from_str(h).ok()) {
            headers.insert(X_FORWARDED_HOST, host);
        }
        let uri = match req.query {
            Some(q) => HeaderValue::from_str(&format!("{}?{q}", req.path)),
            None => HeaderValue::from_str(req.path),
        };
        if let Ok(uri) = uri {
            headers.insert(X_FORWARDED_URI, uri);
        }
        if let Some(ip) = ctx.client_ip.or(req.client_ip) {
            if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
                headers.insert(X_FORWARDED_FOR, v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
            if !ctx.request_id.is_empty() {
                headers.insert(X_REQUEST_ID, v);
            }
        }
        let mut out = Request::new(Empty::new());
        *out.method_mut() = Method::GET;
        *out.uri_mut() = self.uri.clone();
        *out.headers_mut() = headers;
        out
    }

    /// Asks the service about `req`. On [`Outcome::Allowed`] it keeps the headers for
    /// the upstream in `ctx` and sets `ctx.identity` when `consumer_header` names one;
    /// otherwise `ctx` is unchanged. Never waits longer than `timeout`.
    ///
    /// When the request is traced (a [`TraceContext`] in `ctx.ext`), the call carries a
    /// `traceparent` with a span id of its own, and a sampled trace gets a `forward_auth`
    /// [`ChildSpan`] in `ctx.ext`'s [`ChildSpans`].
    pub async fn authenticate(&self, req: &RequestView<'_>, ctx: &mut FilterCtx) -> Outcome {
        let trace = ctx
            .ext
            .get::<TraceContext>()
            .copied()
            .map(|t| (t, sluice_core::trace::new_span_id(), std::time::SystemTime::now()));
        let traceparent = trace.as_ref().map(|(t, id, _)| t.traceparent(id));
        let outcome = self.call(req, ctx, traceparent).await;
        self.pool.stats.count(&outcome);
        if let Some((_, span_id, start)) = trace.filter(|(t, ..)| t.sampled) {
            self.record_span(ctx, span_id, start, &outcome);
        }
        outcome
    }

    /// Leaves the call's span in `ctx.ext` for the gateway to export.
    fn record_span(
        &self,
        ctx: &mut FilterCtx,
        span_id: sluice_core::trace::SpanId,
        start: std::time::SystemTime,
        outcome: &Outcome,
    ) {
        use sluice_core::trace::AttrValue;
        let mut attributes = vec![
            ("http.request.method", AttrValue::Static("GET")),
            (
                "url.full",
                AttrValue::Str(Arc::from(sluice_config::secret::redact_url(
                    &self.uri.to_string(),
                ))),
            ),
        ];
        let error = match outcome {
            Outcome::Allowed => {
                attributes.push(("sluice.auth.outcome", AttrValue::Static("allowed")));
                None
            }
            Outcome::Denied(resp) => {
                attributes.push(("sluice.auth.outcome", AttrValue::Static("denied")));
                attributes.push((
                    "http.response.status_code",
                    AttrValue::Int(i64::from(resp.status.as_u16())),
                ));
                resp.status.is_server_error().then_some("auth service error")
            }
            Outcome::Failed(f) => {
                let kind = match f {
                    Failure::Timeout => "timeout",
                    Failure::Unreachable => "unreachable",
                    Failure::Invalid => "invalid",
                };
                attributes.push(("sluice.auth.outcome", AttrValue::Static("failed")));
                attributes.push(("error.type", AttrValue::Static(kind)));
                Some(kind)
            }
        };
        let span = ChildSpan {
            name: "forward_auth",
            span_id,
            start,
            end: std::time::SystemTime::now(),
            attributes,
            error,
        };
        match ctx.ext.get_mut::<ChildSpans>() {
            Some(spans) => spans.0.push(span),
            None => {
                ctx.ext.insert(ChildSpans(vec![span]));
            }
        }
    }

    async fn call(
        &self,
        req: &RequestView<'_>,
        ctx: &mut FilterCtx,
        traceparent: Option<HeaderValue>,
    ) -> Outcome {
        let mut request = self.auth_request(req, ctx);
        if let Some(tp) = traceparent {
            request.headers_mut().insert(TRACEPARENT, tp);
        }
        let Some(rt) = self
            .runtime
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok())
        else {
            return Outcome::Failed(Failure::Invalid);
        };
        let client = self.client.clone();
        let (timeout, max) = (self.timeout, self.max_body);
        let task = rt.spawn(async move {
            let exchange = async {
                let resp = client.request(request).await.map_err(|e| {
                    if e.is_connect() {
                        Failure::Unreachable
                    } else {
                        Failure::Invalid
                    }
                })?;
                let (parts, body) = resp.into_parts();
                let body = Limited::new(body, max)
                    .collect()
                    .await
                    .map_err(|_| Failure::Invalid)?
                    .to_bytes();
                Ok::<_, Failure>((parts, body))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(r) => r,
                Err(_) => Err(Failure::Timeout),
            }
        });
        let (parts, body) = match task.await {
            Ok(Ok(answer)) => answer,
            Ok(Err(failure)) => return Outcome::Failed(failure),
            Err(_) => return Outcome::Failed(Failure::Invalid),
        };
        if parts.status.is_success() {
            self.allow(&parts.headers, ctx);
            return Outcome::Allowed;
        }
        let mut headers = Vec::new();
        for name in [CONTENT_TYPE, WWW_AUTHENTICATE, LOCATION]
            .iter()
            .chain(&self.client_headers)
        {
            for v in parts.headers.get_all(name) {
                headers.push((name.clone(), v.clone()));
            }
        }
        Outcome::Denied(Response {
            status: parts.status,
            headers,
            body,
        })
    }

    fn allow(&self, answer: &HeaderMap, ctx: &mut FilterCtx) {
        if !self.upstream_headers.is_empty() {
            let mut kept = ctx.ext.remove::<UpstreamHeaders>().unwrap_or_default();
            for name in &self.upstream_headers {
                for v in answer.get_all(name) {
                    kept.0.push((name.clone(), v.clone()));
                }
            }
            ctx.ext.insert(kept);
        }
        let consumer = self
            .consumer_header
            .as_ref()
            .and_then(|h| answer.get(h))
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|c| !c.is_empty());
        if let Some(consumer) = consumer {
            let groups = self
                .groups_header
                .as_ref()
                .map(|h| {
                    answer
                        .get_all(h)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(|v| v.split(','))
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(Arc::from)
                        .collect()
                })
                .unwrap_or_default();
            ctx.identity = Some(Identity {
                consumer: Arc::from(consumer),
                groups,
                claims: Vec::new(),
            });
        }
    }
}

#[async_trait]
impl Filter for ForwardAuth {
    fn kind(&self) -> &'static str {
        "forward_auth"
    }

    /// The consumer and groups headers, when the service's answer carries them on to
    /// the upstream (`upstream_headers`): what names the client to the upstream.
    fn identity_headers(&self) -> Vec<HeaderName> {
        self.consumer_header
            .iter()
            .chain(self.groups_header.iter())
            .filter(|h| self.upstream_headers.contains(h))
            .cloned()
            .collect()
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            upstream_request: !self.upstream_headers.is_empty(),
            ..Phases::default()
        }
    }

    async fn on_request(&self, req: &RequestView<'_>, ctx: &mut FilterCtx) -> Flow {
        match self.authenticate(req, ctx).await {
            Outcome::Allowed => Flow::Continue,
            Outcome::Denied(resp) => Flow::Respond(resp),
            Outcome::Failed(_) if self.on_error == OnError::Allow => Flow::Continue,
            Outcome::Failed(_) => Flow::Reject(Reject::new(
                RejectKind::Unavailable,
                "the authentication service is unavailable",
            )),
        }
    }

    fn on_upstream_request(&self, headers: &mut dyn HeaderEdit, ctx: &FilterCtx) {
        for name in &self.upstream_headers {
            headers.remove(name);
        }
        if let Some(UpstreamHeaders(kept)) = ctx.ext.get::<UpstreamHeaders>() {
            for (name, value) in kept {
                if self.upstream_headers.contains(name) {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::StatusCode;
    use std::net::SocketAddr;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// A keep-alive HTTP/1.1 server on 127.0.0.1 that answers every request with
    /// `answer` (after `delay`) and reports each request head, with its connection's
    /// number (from 1).
    async fn service(
        answer: &'static str,
        delay: Duration,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<(usize, String)>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut conns = 0;
            while let Ok((mut s, _)) = l.accept().await {
                conns += 1;
                let conn = conns;
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
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            let _ = tx.send((conn, String::from_utf8_lossy(&head).into_owned()));
                            tokio::time::sleep(delay).await;
                            if s.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    fn filter(addr: SocketAddr, extra: serde_json::Value) -> ForwardAuth {
        let mut spec = serde_json::json!({"url": format!("http://{addr}/verify?x=1")});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        ForwardAuth::new(&parse(&spec).unwrap(), Pool::default(), None).unwrap()
    }

    struct Req {
        headers: HeaderMap,
        method: Method,
    }

    impl Req {
        fn new(headers: &[(&str, &str)]) -> Req {
            let mut h = HeaderMap::new();
            for (k, v) in headers {
                h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
            }
            Req {
                headers: h,
                method: Method::POST,
            }
        }
        fn view(&self) -> RequestView<'_> {
            RequestView {
                method: &self.method,
                scheme: "https",
                host: Some("api.test"),
                authority: Some("api.test:8443"),
                path: "/orders/7",
                query: Some("page=2"),
                headers: &self.headers,
                client_ip: Some("203.0.113.9".parse().unwrap()),
            }
        }
    }

    fn ctx() -> FilterCtx {
        FilterCtx {
            request_id: "rid-1".into(),
            client_ip: Some("203.0.113.9".parse().unwrap()),
            ..FilterCtx::default()
        }
    }

    #[tokio::test]
    async fn a_2xx_lets_through_and_copies_headers_and_identity() {
        let (addr, mut seen) = service(
            "HTTP/1.1 200 OK\r\nx-user: alice\r\nx-groups: admins, ops\r\nx-other: no\r\ncontent-length: 2\r\n\r\nok",
            Duration::ZERO,
        )
        .await;
        let f = filter(
            addr,
            serde_json::json!({"upstream_headers": ["x-user", "x-groups"], "consumer_header": "x-user", "groups_header": "x-groups"}),
        );
        let req = Req::new(&[
            ("authorization", "Bearer t"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("x-secret", "s"),
        ]);
        let mut c = ctx();
        assert!(matches!(f.on_request(&req.view(), &mut c).await, Flow::Continue));
        let (conn, head) = seen.recv().await.unwrap();
        assert_eq!(conn, 1);
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("get /verify?x=1 http/1.1\r\n"), "{head}");
        for line in [
            "authorization: bearer t",
            "cookie: a=1",
            "cookie: b=2",
            "x-forwarded-method: post",
            "x-forwarded-proto: https",
            "x-forwarded-host: api.test:8443",
            "x-forwarded-uri: /orders/7?page=2",
            "x-forwarded-for: 203.0.113.9",
            "x-request-id: rid-1",
        ] {
            assert!(head.contains(&format!("\r\n{line}\r\n")), "{line} in {head}");
        }
        assert!(!head.contains("x-secret"), "{head}");
        let id = c.identity.as_ref().unwrap();
        assert_eq!(&*id.consumer, "alice");
        assert_eq!(id.groups, vec![Arc::<str>::from("admins"), Arc::from("ops")]);

        let mut upstream = HeaderMap::new();
        upstream.insert("x-user", "forged".parse().unwrap());
        upstream.insert("x-keep", "k".parse().unwrap());
        f.on_upstream_request(&mut upstream, &c);
        assert_eq!(upstream.get_all("x-user").iter().collect::<Vec<_>>(), ["alice"]);
        assert_eq!(upstream["x-groups"], "admins, ops");
        assert!(upstream.get("x-other").is_none());
        assert_eq!(upstream["x-keep"], "k");
        assert_eq!(f.pool.stats.snapshot()[0], 1);

        // The connection is kept alive and reused for the next call.
        let mut c = ctx();
        assert!(matches!(f.on_request(&req.view(), &mut c).await, Flow::Continue));
        assert_eq!(
            seen.recv().await.unwrap().0,
            1,
            "the second call reuses the connection"
        );
    }

    #[tokio::test]
    async fn client_copies_of_upstream_headers_are_removed_even_without_an_answer_value() {
        let (addr, _seen) = service("HTTP/1.1 204 No Content\r\n\r\n", Duration::ZERO).await;
        let f = filter(
            addr,
            serde_json::json!({"upstream_headers": ["x-user"], "consumer_header": "x-user"}),
        );
        let req = Req::new(&[]);
        let mut c = ctx();
        assert!(matches!(f.on_request(&req.view(), &mut c).await, Flow::Continue));
        assert!(c.identity.is_none());
        let mut upstream = HeaderMap::new();
        upstream.insert("x-user", "forged".parse().unwrap());
        f.on_upstream_request(&mut upstream, &c);
        assert!(upstream.get("x-user").is_none());
    }

    #[tokio::test]
    async fn a_refusal_is_the_clients_answer() {
        let (addr, _seen) = service(
            "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer realm=\"api\"\r\ncontent-type: application/json\r\nset-cookie: s=1\r\nx-debug: no\r\ncontent-length: 15\r\n\r\n{\"error\":\"no\"}\n",
            Duration::ZERO,
        )
        .await;
        let f = filter(
            addr,
            serde_json::json!({"client_headers": ["set-cookie"], "upstream_headers": ["x-user"]}),
        );
        let req = Req::new(&[]);
        let mut c = ctx();
        let Flow::Respond(r) = f.on_request(&req.view(), &mut c).await else {
            panic!()
        };
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(&r.body[..], b"{\"error\":\"no\"}\n");
        let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["content-type", "www-authenticate", "set-cookie"]);
        assert!(c.identity.is_none() && c.ext.get::<UpstreamHeaders>().is_none());
        assert_eq!(f.pool.stats.snapshot()[1], 1);
    }

    #[tokio::test]
    async fn a_redirect_to_a_login_page_is_passed_on() {
        let (addr, _seen) = service(
            "HTTP/1.1 302 Found\r\nlocation: https://login.test/?rd=x\r\ncontent-length: 0\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        let f = filter(addr, serde_json::json!({}));
        let Flow::Respond(r) = f.on_request(&Req::new(&[]).view(), &mut ctx()).await else {
            panic!()
        };
        assert_eq!(r.status, StatusCode::FOUND);
        assert_eq!(
            r.headers,
            vec![(LOCATION, HeaderValue::from_static("https://login.test/?rd=x"))]
        );
    }

    #[tokio::test]
    async fn a_slow_service_times_out_within_the_bound() {
        let (addr, _seen) = service(
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            Duration::from_secs(30),
        )
        .await;
        let f = filter(addr, serde_json::json!({"timeout": "150ms"}));
        let start = Instant::now();
        let flow = f.on_request(&Req::new(&[]).view(), &mut ctx()).await;
        let took = start.elapsed();
        let Flow::Reject(r) = flow else { panic!("{flow:?}") };
        assert_eq!(r.kind, RejectKind::Unavailable);
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_secs(1),
            "{took:?}"
        );
        assert_eq!(f.pool.stats.snapshot()[2], 1);

        let open = filter(addr, serde_json::json!({"timeout": "100ms", "on_error": "allow"}));
        assert!(matches!(
            open.on_request(&Req::new(&[]).view(), &mut ctx()).await,
            Flow::Continue
        ));
    }

    #[tokio::test]
    async fn an_unreachable_service_takes_on_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let f = filter(addr, serde_json::json!({}));
        let mut c = ctx();
        let outcome = f.authenticate(&Req::new(&[]).view(), &mut c).await;
        assert!(
            matches!(outcome, Outcome::Failed(Failure::Unreachable)),
            "{outcome:?}"
        );
        let f = filter(
            addr,
            serde_json::json!({"on_error": "allow", "upstream_headers": ["x-user"]}),
        );
        assert!(matches!(
            f.on_request(&Req::new(&[]).view(), &mut c).await,
            Flow::Continue
        ));
        let mut upstream = HeaderMap::new();
        upstream.insert("x-user", "forged".parse().unwrap());
        f.on_upstream_request(&mut upstream, &c);
        assert!(
            upstream.get("x-user").is_none(),
            "fail-open never trusts the client's copy"
        );
    }

    #[tokio::test]
    async fn an_oversized_body_is_a_broken_answer() {
        let (addr, _seen) = service(
            "HTTP/1.1 403 Forbidden\r\ncontent-length: 100\r\n\r\n0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
            Duration::ZERO,
        )
        .await;
        let f = filter(addr, serde_json::json!({"max_body_bytes": 10}));
        let outcome = f.authenticate(&Req::new(&[]).view(), &mut ctx()).await;
        assert!(
            matches!(outcome, Outcome::Failed(Failure::Invalid)),
            "{outcome:?}"
        );
    }

    #[test]
    fn spec_errors_name_their_fields() {
        let errs = crate::registry::build_for_test(
            build,
            &serde_json::json!({
                "url": "ftp://x",
                "request_headers": ["ok", "bad header"],
                "groups_header": "x-g",
                "timeout": "0s",
            }),
        )
        .err()
        .unwrap();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["url", "request_headers[1]", "groups_header", "timeout"],
            "{errs:?}"
        );
        let errs = crate::registry::build_for_test(
            build,
            &serde_json::json!({"url": "http://auth.test/", "ca_file": "/nonexistent.pem"}),
        )
        .err()
        .unwrap();
        assert_eq!(errs[0].path, "ca_file", "{errs:?}");
        let errs = crate::registry::build_for_test(
            build,
            &serde_json::json!({"url": "https://auth.test/", "ca_file": "/nonexistent.pem"}),
        )
        .err()
        .unwrap();
        assert!(errs[0].message.starts_with("/nonexistent.pem: "), "{errs:?}");
        assert!(
            crate::registry::build_for_test(build, &serde_json::json!({"url": "https://auth.test/"})).is_ok()
        );
        let errs = crate::registry::build_for_test(
            build,
            &serde_json::json!({"url": "http://a/", "on_error": "maybe"}),
        )
        .err()
        .unwrap();
        assert_eq!(errs[0].path, "on_error", "{errs:?}");
        assert!(crate::registry::build_for_test(
            build,
            &serde_json::json!({"url": "http://auth.test:9000/v"})
        )
        .is_ok());
    }
}
