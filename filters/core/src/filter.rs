//! The [`Filter`] trait and the per-route [`Chain`].
//!
//! A filter declares the phases it takes part in ([`Phases`]); the chain calls only
//! those, in the route's order. The gateway's pingora glue hands each pingora phase to
//! the chain and does nothing else with filters:
//!
//! | filter phase                      | pingora phase              | typical use                        |
//! |-----------------------------------|----------------------------|------------------------------------|
//! | [`Filter::on_request`]            | `request_filter`           | auth, rate limit, redirect, answer, pick a backend |
//! | [`Filter::on_body_ready`]         | `request_filter`, once the body is buffered (or known to stream) | act on the request body (mirror copies) |
//! | [`Filter::on_upstream_request`]   | `upstream_request_filter`  | request header changes             |
//! | [`Filter::on_upstream_response`]  | `upstream_response_filter` | look at or change what the upstream said |
//! | [`Filter::on_response`]           | `response_filter`          | response header changes            |
//! | [`Filter::on_complete`]           | `logging`                  | counters, logs, learning (sees the whole request) |
//!
//! `on_request` is async so that filters which call out (forward auth, a shared rate
//! limit in Redis) fit the same seam as the ones that do not.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// The phases a filter takes part in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases {
    /// Runs [`Filter::on_request`].
    pub request: bool,
    /// Runs [`Filter::on_body_ready`].
    pub body_ready: bool,
    /// Runs [`Filter::on_upstream_request`].
    pub upstream_request: bool,
    /// Runs [`Filter::on_upstream_response`].
    pub upstream_response: bool,
    /// Runs [`Filter::on_response`].
    pub response: bool,
    /// Runs [`Filter::on_complete`].
    pub complete: bool,
}

/// What a request-phase filter decided.
#[derive(Debug)]
pub enum Flow {
    /// Go on with the next filter, then proxy.
    Continue,
    /// Stop here and send this response; nothing is proxied.
    Respond(Response),
    /// Stop here and refuse the request with a typed error; the gateway turns it into a
    /// status and its JSON error body through its one error-to-status mapping.
    Reject(Reject),
}

/// Why a filter refused a request. The gateway maps each kind to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectKind {
    /// The request is malformed for this filter (400).
    BadRequest,
    /// No valid credentials (401).
    Unauthenticated,
    /// Credentials are valid but not allowed here (403).
    Forbidden,
    /// The body is larger than allowed (413).
    PayloadTooLarge,
    /// A rate limit or quota is exhausted (429).
    RateLimited,
    /// The filter cannot decide now, e.g. a dependency is down (503).
    Unavailable,
}

impl RejectKind {
    /// Every kind, for metric handles resolved once.
    pub const ALL: [RejectKind; 6] = [
        RejectKind::BadRequest,
        RejectKind::Unauthenticated,
        RejectKind::Forbidden,
        RejectKind::PayloadTooLarge,
        RejectKind::RateLimited,
        RejectKind::Unavailable,
    ];
}

/// A filter's refusal: the kind, a message for the client, and extra headers (such as
/// `Retry-After` or `WWW-Authenticate`).
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// Why.
    pub kind: RejectKind,
    /// A message for the client; it must not leak secrets.
    pub message: String,
    /// Headers added to the error response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// A configured status and body replacing the standard ones (the error code in the
    /// logs and metrics stays the kind's). Default: none.
    pub custom: Option<Arc<CustomReject>>,
}

/// A configured answer for a refusal: the status and body a user chose instead of the
/// gateway's JSON error (e.g. a rate limit answering `503` with its own text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomReject {
    /// The status. Default: the kind's own.
    pub status: Option<StatusCode>,
    /// The body and its content type. Default: the gateway's JSON error body.
    pub body: Option<(HeaderValue, Bytes)>,
}

impl Reject {
    /// A refusal of `kind` with `message` and no extra headers.
    pub fn new(kind: RejectKind, message: impl Into<String>) -> Reject {
        Reject {
            kind,
            message: message.into(),
            headers: Vec::new(),
            custom: None,
        }
    }

    /// Replaces the standard status and body with `custom`'s (where it sets them).
    pub fn with_custom(mut self, custom: Option<Arc<CustomReject>>) -> Reject {
        self.custom = custom;
        self
    }

    /// Adds a header to the error response.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Reject {
        self.headers.push((name, value));
        self
    }
}

/// What the gateway knows of the request body once request buffering is done, for
/// [`Filter::on_body_ready`].
#[derive(Debug, Clone)]
pub enum RequestBody {
    /// The request has no body.
    Empty,
    /// The body, read whole (request buffering).
    Buffered(Bytes),
    /// The body is streamed to the upstream, so it is not at hand.
    Streamed,
}

/// A response produced by the gateway itself (a filter's answer, or an error).
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// Status code.
    pub status: StatusCode,
    /// Headers, in order.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: Bytes,
}

/// Read access to the request, for filters and the router.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a Method,
    /// `http` or `https`, as the client used.
    pub scheme: &'a str,
    /// Host without port, if the request had one.
    pub host: Option<&'a str>,
    /// Host with port, as the client sent it (`Host` or `:authority`).
    pub authority: Option<&'a str>,
    /// Path.
    pub path: &'a str,
    /// Raw query, without `?`.
    pub query: Option<&'a str>,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// Client address after trusted-proxy resolution.
    pub client_ip: Option<IpAddr>,
}

/// Who the request is from, as an authentication filter established it. Later filters
/// (rate limits, canary rules), the backend choice, the upstream request headers and the
/// access log read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The consumer's stable id.
    pub consumer: Arc<str>,
    /// Groups the consumer belongs to (for canary cohorts, limits per group).
    pub groups: Vec<Arc<str>>,
    /// Chosen claims or attributes, as name and value (e.g. a JWT's `sub`, `tenant`).
    pub claims: Vec<(Arc<str>, Arc<str>)>,
}

impl Identity {
    /// The value of claim `name`, if present.
    pub fn claim(&self, name: &str) -> Option<&str> {
        self.claims.iter().find(|(k, _)| &**k == name).map(|(_, v)| &**v)
    }
}

/// A request-phase filter's say in which backend serves the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BackendHint {
    /// The route's weighted split decides. The default.
    #[default]
    Split,
    /// The backend whose upstream has this id (ignored, and counted, when the route has
    /// no such backend).
    Upstream(Arc<str>),
}

/// Why a request went to the backend it went to: a closed set, for the access log, the
/// response header a canary adds and `sluice_backend_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendReason {
    /// The route's weighted split (live weights, a rollout's override included).
    Weight,
    /// A canary rule on a request header.
    Header,
    /// A canary rule on a cookie.
    Cookie,
    /// A canary rule on a query parameter.
    Query,
    /// A canary rule on the client's network.
    Source,
    /// A canary rule on the consumer or its groups.
    Consumer,
    /// The client's sticky key (hashed onto the live weights).
    Sticky,
}

impl BackendReason {
    /// Every reason, in [`BackendReason::index`] order (for metric handles resolved once).
    pub const ALL: [BackendReason; 7] = [
        BackendReason::Weight,
        BackendReason::Header,
        BackendReason::Cookie,
        BackendReason::Query,
        BackendReason::Source,
        BackendReason::Consumer,
        BackendReason::Sticky,
    ];

    /// The name in logs, headers and metric labels (`weight`, `header`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            BackendReason::Weight => "weight",
            BackendReason::Header => "header",
            BackendReason::Cookie => "cookie",
            BackendReason::Query => "query",
            BackendReason::Source => "source",
            BackendReason::Consumer => "consumer",
            BackendReason::Sticky => "sticky",
        }
    }

    /// The position in [`BackendReason::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Per-request state the filters share: set by one filter, read by later ones and by
/// the gateway's later phases.
#[derive(Debug, Default)]
pub struct FilterCtx {
    /// Request id (generated or propagated).
    pub request_id: String,
    /// Client address after trusted-proxy resolution.
    pub client_ip: Option<IpAddr>,
    /// The identified consumer, once an authentication filter set it.
    pub identity: Option<Identity>,
    /// Which backend should serve the request. Default: [`BackendHint::Split`].
    pub backend: BackendHint,
    /// Why the backend was chosen: set by the filter that gave the hint (a canary), or
    /// by the gateway (`weight`) when the split decided. Default: none (no backend
    /// chosen yet, or the request was answered before).
    pub backend_reason: Option<BackendReason>,
    /// Typed per-request notes, one value per type, that a filter keeps between its
    /// own phases or leaves for later filters of its family (what an authentication
    /// filter decided, what forward auth copies upstream, the origin CORS echoes, the
    /// mirror copies waiting for the body). Each kind's note is its own type. Empty (and
    /// unallocated) by default.
    pub ext: crate::notes::Notes,
    /// Fields for the access log (e.g. the limit that answered). Default: empty.
    pub log: LogNotes,
    /// Things a filter holds for the request's lifetime (a concurrency permit, what its
    /// response phase needs). Dropped with the request context, whatever the outcome
    /// (answered, error, client gone, panic), which is what releases a permit.
    /// Default: empty.
    pub held: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

/// A value filters leave for the access log: static text or shared text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogValue {
    /// Text known at compile time (a decision from a closed set).
    Static(&'static str),
    /// Shared text (a configured name).
    Shared(Arc<str>),
}

impl LogValue {
    /// The text.
    pub fn as_str(&self) -> &str {
        match self {
            LogValue::Static(s) => s,
            LogValue::Shared(s) => s,
        }
    }
}

/// What filters leave for the access log, by field name (e.g. `limit` and
/// `limit_decision`, which the rate and concurrency limits set): a kind-neutral seam,
/// so the gateway logs what a filter says without knowing the filter. Holds up to
/// [`LogNotes::MAX`] fields inline (no allocation); a later value of a field replaces
/// the earlier one. Default: empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogNotes {
    items: [Option<(&'static str, LogValue)>; LogNotes::MAX],
}

impl LogNotes {
    /// The most fields held; a new field beyond them is dropped.
    pub const MAX: usize = 4;

    /// Sets field `name` to `value`.
    pub fn set(&mut self, name: &'static str, value: LogValue) {
        let slot = match self
            .items
            .iter()
            .position(|i| i.as_ref().is_some_and(|(n, _)| *n == name))
        {
            Some(at) => Some(at),
            None => self.items.iter().position(Option::is_none),
        };
        if let Some(at) = slot {
            self.items[at] = Some((name, value));
        }
    }

    /// The value of field `name`, if a filter set it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.items
            .iter()
            .flatten()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The finished request, as the completion phase sees it.
#[derive(Debug, Clone)]
pub struct Completion<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The route's id, if one matched.
    pub route: Option<&'a str>,
    /// The upstream id of the backend that served, if any.
    pub backend: Option<&'a str>,
    /// The endpoint address of the last try, if any.
    pub endpoint: Option<&'a str>,
    /// The status sent to the client (0 if none was sent).
    pub status: u16,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// From the request's arrival to its end.
    pub duration: Duration,
    /// From the request's arrival to the upstream's response header, if one came.
    pub upstream_time: Option<Duration>,
    /// Retries made.
    pub retries: u32,
    /// The breaker's state when it admitted or shaped the request, if the backend has one.
    pub breaker_state: Option<&'static str>,
    /// The identified consumer, if any.
    pub identity: Option<&'a Identity>,
    /// The gateway's error code, if the gateway answered with an error.
    pub error: Option<&'static str>,
}

/// Write access to a header block, implemented for [`HeaderMap`] here and for pingora's
/// request and response headers in the gateway.
pub trait HeaderEdit {
    /// The current headers.
    fn headers(&self) -> &HeaderMap;
    /// Replaces all values of `name` with `value`.
    fn set(&mut self, name: HeaderName, value: HeaderValue);
    /// Adds `value` to `name`, keeping existing values.
    fn append(&mut self, name: HeaderName, value: HeaderValue);
    /// Removes every value of `name`.
    fn remove(&mut self, name: &HeaderName);
    /// Removes every parameter called `name` from the request's query, where the edit
    /// is on a request (a credential passed in the query). Default: nothing.
    fn remove_query_param(&mut self, _name: &str) {}
}

impl HeaderEdit for HeaderMap {
    fn headers(&self) -> &HeaderMap {
        self
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.insert(name, value);
    }
    fn append(&mut self, name: HeaderName, value: HeaderValue) {
        HeaderMap::append(self, name, value);
    }
    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
}

/// One step of a route's pipeline. Every method has a no-op default; [`Filter::phases`]
/// says which ones the chain calls.
#[async_trait]
pub trait Filter: Send + Sync {
    /// Short kind name for logs and metrics, e.g. `redirect`.
    fn kind(&self) -> &'static str;

    /// The phases this filter takes part in.
    fn phases(&self) -> Phases;

    /// Runs when the request headers have arrived, before an upstream is chosen.
    /// Default: [`Flow::Continue`].
    async fn on_request(&self, _req: &RequestView<'_>, _ctx: &mut FilterCtx) -> Flow {
        Flow::Continue
    }

    /// Runs once the request body is known (buffered, empty, or streamed), after every
    /// request-phase filter has let the request through and before the backend is
    /// chosen. It must not wait. Default: nothing.
    fn on_body_ready(&self, _body: &RequestBody, _ctx: &mut FilterCtx) {}

    /// Runs on the request about to be sent upstream. Default: no change.
    fn on_upstream_request(&self, _headers: &mut dyn HeaderEdit, _ctx: &FilterCtx) {}

    /// Runs on the upstream's response header as it arrives, once per try, before the
    /// gateway decides on a retry. Default: no change.
    fn on_upstream_response(&self, _status: StatusCode, _headers: &mut dyn HeaderEdit, _ctx: &FilterCtx) {}

    /// Runs on the response headers about to be sent to the client (from the upstream or
    /// from a filter). Default: no change.
    fn on_response(&self, _status: StatusCode, _headers: &mut dyn HeaderEdit, _ctx: &FilterCtx) {}

    /// Runs once the request has ended, whatever the outcome. It must not block: hand
    /// slow work to another thread. Default: nothing.
    fn on_complete(&self, _done: &Completion<'_>) {}

    /// The digest of the consumer table this filter was built against, for filters that
    /// read consumers (authentication): a reload whose consumers changed rebuilds such a
    /// filter even when its own spec and its route are unchanged. Default: `None` (the
    /// filter does not read consumers).
    fn consumers_digest(&self) -> Option<&str> {
        None
    }

    /// The authentication methods this filter runs, e.g. `["key_auth", "basic_auth"]`,
    /// for `/api/v1/routes`. Default: none.
    fn auth_methods(&self) -> Vec<&'static str> {
        Vec::new()
    }

    /// The request headers this filter sets to tell the upstream who the client is (an
    /// authentication filter's `forward.consumer_header`, `forward_auth`'s
    /// `consumer_header`). The gateway removes every client copy of them, in every
    /// spelling, from every request on every route, so that no route's upstream can be
    /// told an identity by the client. Default: none.
    fn identity_headers(&self) -> Vec<HeaderName> {
        Vec::new()
    }
}

/// One built filter of a chain, with what it was built from, so a reload can keep it
/// (and its state: buckets, caches, counters) when its own spec did not change.
#[derive(Clone)]
pub struct Built {
    /// The filter's stable key within its route: kind and position among filters of that
    /// kind (`rate_limit#0`), or `route.headers` for the route's own header rules.
    pub key: String,
    /// The spec it was built from.
    pub spec: serde_json::Value,
    /// The filter.
    pub filter: Arc<dyn Filter>,
}

/// A route's filters, split by phase at build time so each phase is a plain loop.
#[derive(Clone, Default)]
pub struct Chain {
    request: Vec<Arc<dyn Filter>>,
    body_ready: Vec<Arc<dyn Filter>>,
    upstream_request: Vec<Arc<dyn Filter>>,
    upstream_response: Vec<Arc<dyn Filter>>,
    response: Vec<Arc<dyn Filter>>,
    complete: Vec<Arc<dyn Filter>>,
    built: Vec<Built>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain").field("filters", &self.kinds()).finish()
    }
}

impl Chain {
    /// Builds a chain of anonymous filters (no reuse key); each is registered for the
    /// phases it declares.
    pub fn new(filters: Vec<Arc<dyn Filter>>) -> Chain {
        Chain::from_built(
            filters
                .into_iter()
                .enumerate()
                .map(|(i, filter)| Built {
                    key: format!("{}#{i}", filter.kind()),
                    spec: serde_json::Value::Null,
                    filter,
                })
                .collect(),
        )
    }

    /// Builds a chain from built filters, in order.
    pub fn from_built(built: Vec<Built>) -> Chain {
        let mut chain = Chain::default();
        for b in &built {
            let p = b.filter.phases();
            let f = &b.filter;
            for (on, list) in [
                (p.request, &mut chain.request),
                (p.body_ready, &mut chain.body_ready),
                (p.upstream_request, &mut chain.upstream_request),
                (p.upstream_response, &mut chain.upstream_response),
                (p.response, &mut chain.response),
                (p.complete, &mut chain.complete),
            ] {
                if on {
                    list.push(f.clone());
                }
            }
        }
        chain.built = built;
        chain
    }

    /// The built filters, in order (for reuse on reload).
    pub fn built(&self) -> &[Built] {
        &self.built
    }

    /// The filter kinds, in order.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.built.iter().map(|b| b.filter.kind()).collect()
    }

    /// Runs the request phase; the first filter that answers or rejects stops the chain.
    pub async fn on_request(&self, req: &RequestView<'_>, ctx: &mut FilterCtx) -> Flow {
        for f in &self.request {
            match f.on_request(req, ctx).await {
                Flow::Continue => {}
                stop => return stop,
            }
        }
        Flow::Continue
    }

    /// Runs the body-ready phase.
    pub fn on_body_ready(&self, body: &RequestBody, ctx: &mut FilterCtx) {
        for f in &self.body_ready {
            f.on_body_ready(body, ctx);
        }
    }

    /// Runs the upstream-request phase.
    pub fn on_upstream_request(&self, headers: &mut dyn HeaderEdit, ctx: &FilterCtx) {
        for f in &self.upstream_request {
            f.on_upstream_request(headers, ctx);
        }
    }

    /// Runs the upstream-response phase.
    pub fn on_upstream_response(&self, status: StatusCode, headers: &mut dyn HeaderEdit, ctx: &FilterCtx) {
        for f in &self.upstream_response {
            f.on_upstream_response(status, headers, ctx);
        }
    }

    /// Runs the response phase.
    pub fn on_response(&self, status: StatusCode, headers: &mut dyn HeaderEdit, ctx: &FilterCtx) {
        for f in &self.response {
            f.on_response(status, headers, ctx);
        }
    }

    /// Runs the completion phase.
    pub fn on_complete(&self, done: &Completion<'_>) {
        for f in &self.complete {
            f.on_complete(done);
        }
    }

    /// Whether every filter that reads consumers was built against the consumer table
    /// whose digest is `digest` (see [`Filter::consumers_digest`]).
    pub fn consumers_fresh(&self, digest: &str) -> bool {
        self.built
            .iter()
            .all(|b| b.filter.consumers_digest().is_none_or(|d| d == digest))
    }

    /// Whether a filter reads consumers.
    pub fn uses_consumers(&self) -> bool {
        self.built.iter().any(|b| b.filter.consumers_digest().is_some())
    }

    /// The identity headers of the chain's filters (see [`Filter::identity_headers`]).
    pub fn identity_headers(&self) -> Vec<HeaderName> {
        self.built
            .iter()
            .flat_map(|b| b.filter.identity_headers())
            .collect()
    }

    /// The authentication methods of the chain's filters, in order, without repeats.
    pub fn auth_methods(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for m in self.built.iter().flat_map(|b| b.filter.auth_methods()) {
            if !out.contains(&m) {
                out.push(m);
            }
        }
        out
    }

    /// Whether any filter takes part in the request phase.
    pub fn has_request_phase(&self) -> bool {
        !self.request.is_empty()
    }

    /// Whether any filter takes part in the body-ready phase.
    pub fn has_body_ready_phase(&self) -> bool {
        !self.body_ready.is_empty()
    }

    /// Whether any filter takes part in the upstream-response phase.
    pub fn has_upstream_response_phase(&self) -> bool {
        !self.upstream_response.is_empty()
    }

    /// Whether any filter takes part in the completion phase.
    pub fn has_complete_phase(&self) -> bool {
        !self.complete.is_empty()
    }
}
