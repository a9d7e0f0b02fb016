//! The request path, one module per phase. The pingora glue ([`crate::edge::proxy`]) calls
//! these in order and does nothing of its own:
//!
//! | module       | what it does                                                          |
//! |--------------|-----------------------------------------------------------------------|
//! | [`ingress`]  | load the snapshot once, readiness, request id, client address          |
//! | [`normalize`] | the one normalised view of the request: path, host, header names, identity headers removed |
//! | [`route`]    | match a route; run the route's request-phase filters                   |
//! | [`select`]   | choose the backend (filter hint, else the weighted split); pick the endpoint for each try |
//! | [`admit`]    | the backend's circuit breaker: admit, short-circuit, or send to the fallback |
//! | [`forward`]  | the upstream request: rewrite, `X-Forwarded-*`, request id, identity, filters |
//! | [`outcome`]  | each try's result: outlier detection, retries with policy and budget, the upstream-response filters |
//! | [`respond`]  | gateway-made answers and errors, through the one error mapping          |
//! | [`observe`]  | the completion phase: breaker verdict, metrics, completion filters, access log |
//! | [`strict`]   | strict request framing, limits, request buffering (before any upstream) |
//! | [`cache`]    | response caching: bypass, key, storability, `Cache-Status`             |
//! | [`responses`]| compression, gRPC-Web, error pages for upstream statuses, the response body limit |
//!
//! The per-request context ([`Ctx`]) is grouped into typed parts: the routing decision,
//! the filters' shared state (request id, client, identity, backend hint), the
//! resilience state of the tries, and timing.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use pingora::prelude::*;
use sluice_core::resilience::{BreakerState, Permit, RequestGuard, RetryGuard, UpstreamOutcome};
use sluice_core::FilterCtx;

use crate::control::snapshot::{Backend, Route, Snapshot};
use crate::edge::error::ErrorKind;
use crate::upstream::resilience::BreakerBinding;
use crate::upstream::{EndpointState, Try, Upstream};

pub mod admit;
pub mod cache;
pub mod deadline;
pub mod forward;
pub mod ingress;
pub mod normalize;
pub mod observe;
pub mod outcome;
pub mod respond;
pub mod responses;
pub mod route;
pub mod select;
pub mod strict;

/// Decrements an endpoint's in-flight count when dropped.
pub struct InFlight(pub Arc<EndpointState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the request matched and where it goes.
#[derive(Default)]
pub struct Routing {
    /// Index of the matched route in the snapshot.
    pub route: Option<usize>,
    /// Length of the matched path prefix (for prefix rewrites).
    pub prefix_len: Option<usize>,
    /// Index of the chosen backend in the route.
    pub backend: Option<usize>,
    /// Set when the breaker sent the request to its fallback upstream: the header value.
    pub fallback: Option<HeaderValue>,
}

/// Where the request came from.
#[derive(Default)]
pub struct Client {
    /// The TCP peer.
    pub peer_ip: Option<IpAddr>,
    /// Whether the peer is a trusted proxy.
    pub peer_trusted: bool,
    /// The request id as a header value, built once.
    pub request_id_value: Option<HeaderValue>,
}

/// The resilience state of the request's tries.
#[derive(Default)]
pub struct Resilience {
    /// The breaker's leave for this request, handed back in the completion phase.
    pub permit: Option<(Arc<BreakerBinding>, Permit)>,
    /// The breaker's state when it admitted or shaped the request.
    pub breaker_state: Option<BreakerState>,
    /// How the last try ended, and when.
    pub outcome: Option<(UpstreamOutcome, Instant)>,
    /// Retries started so far.
    pub retries: u32,
    /// The wait before the next try.
    pub backoff: Option<Duration>,
    /// Counts this request in the upstream's retry budget.
    pub budget_request: Option<RequestGuard>,
    /// Counts the retry in flight in the budget.
    pub retry_guard: Option<RetryGuard>,
    /// Endpoints tried, in order, each with the endpoint set it was picked from.
    pub tried: Vec<Try>,
    /// The in-flight count of the current try's endpoint.
    pub inflight: Option<InFlight>,
}

/// When things happened.
pub struct Timing {
    /// The request's arrival.
    pub started: Instant,
    /// The upstream's response header, if one came.
    pub upstream_header: Option<Instant>,
    /// When the exchange must be over: the arrival plus the backend's `timeouts.total`
    /// (see [`deadline`]). Default: none (no total).
    pub deadline: Option<Instant>,
}

/// Per-request state, in typed parts.
pub struct Ctx {
    /// The snapshot, loaded once in [`ingress`] and kept to the end.
    pub snapshot: Option<Arc<Snapshot>>,
    /// The routing decision.
    pub routing: Routing,
    /// State the filters share: request id, client address, identity, backend hint.
    pub filter: FilterCtx,
    /// The client connection.
    pub client: Client,
    /// The tries' resilience state.
    pub resilience: Resilience,
    /// Timing.
    pub timing: Timing,
    /// Why the gateway answered with an error, if it did.
    pub error: Option<ErrorKind>,
    /// What the strict framing check learned, and the body's buffering ([`strict`]).
    pub strict: strict::Strict,
    /// The request's trace when tracing is on ([`crate::observe::trace`]); `None` when off.
    pub trace: Option<Box<crate::observe::trace::RequestTrace>>,
    /// The listener's position in the config (its defaults in the snapshot).
    pub listener: usize,
    /// What the response needs on its way ([`responses`], [`cache`]); `None` on a
    /// route that asks for none of it.
    pub http: Option<Box<responses::State>>,
    _request: crate::edge::shutdown::RequestGuard,
}

impl Ctx {
    /// A context for a new request.
    pub fn new() -> Ctx {
        Ctx {
            snapshot: None,
            routing: Routing::default(),
            filter: FilterCtx::default(),
            client: Client::default(),
            resilience: Resilience::default(),
            timing: Timing {
                started: Instant::now(),
                upstream_header: None,
                deadline: None,
            },
            error: None,
            strict: strict::Strict::default(),
            trace: None,
            listener: 0,
            http: None,
            _request: crate::edge::shutdown::RequestGuard::new(),
        }
    }

    /// The matched route in the request's snapshot, if any.
    pub fn route_entry(&self) -> Option<&Route> {
        self.snapshot
            .as_ref()
            .zip(self.routing.route)
            .map(|(s, r)| &s.routes[r])
    }

    /// The chosen backend, if any.
    pub fn backend(&self) -> Option<&Backend> {
        let route = self.route_entry()?;
        route.backends.get(self.routing.backend?)
    }

    /// The upstream this request goes to: the chosen backend's, or its breaker's
    /// fallback.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        let backend = self.backend()?;
        if self.routing.fallback.is_some() {
            backend.breaker.as_ref()?.fallback.as_ref()
        } else {
            Some(&backend.upstream)
        }
    }

    /// The request id as a header value, built once and then shared (cheap clones).
    pub fn request_id_value(&mut self) -> HeaderValue {
        if self.client.request_id_value.is_none() {
            self.client.request_id_value = HeaderValue::from_str(&self.filter.request_id).ok();
        }
        self.client
            .request_id_value
            .clone()
            .unwrap_or_else(|| HeaderValue::from_static("-"))
    }

    /// The snapshot, which every phase after [`ingress`] has.
    pub fn snapshot(&self) -> Result<&Arc<Snapshot>> {
        self.snapshot
            .as_ref()
            .ok_or_else(|| Error::explain(InternalError, "no snapshot in context"))
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx::new()
    }
}

/// A phase's answer as control flow: `Break` with the answer that ends the request
/// phases, `Continue` when there is none (so the request phases read as a list of
/// `stop(phase)?`).
#[inline]
pub fn stop(answer: Option<Answer>) -> std::ops::ControlFlow<Answer> {
    match answer {
        Some(a) => std::ops::ControlFlow::Break(a),
        None => std::ops::ControlFlow::Continue(()),
    }
}

/// Why the request phase stopped before proxying: what to answer.
pub enum Answer {
    /// A filter's own response.
    Respond(sluice_core::Response),
    /// A gateway error, with a message for the client.
    Error(ErrorKind, String),
    /// A filter's refusal.
    Reject(sluice_core::Reject),
}
