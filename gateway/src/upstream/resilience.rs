//! Glue between the pure resilience cores ([`sluice_core::resilience`]) and the proxy:
//! a breaker per route × upstream with its metric handles, and what a route does while
//! its breaker is open.
//!
//! The breaker object lives in [`crate::control::state::SharedState`], keyed by (route id,
//! upstream id), so its state survives any reload; the [`BreakerBinding`] that says what
//! counts as a failure and what to answer while open is rebuilt with every snapshot.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use sluice_config::resilience::{BreakerConfig, FailureConditions};
use sluice_core::resilience::{BreakerState, CircuitBreaker, RetryPolicy, Transition};
use sluice_core::Response;

use crate::observe::metrics::Metrics;
use crate::upstream::Upstream;
use std::sync::Arc;

/// The header on every answer a breaker shaped (short-circuit response or fallback):
/// `route=<id>; upstream=<id>; state=<state>`.
pub const BREAKER_HEADER: HeaderName = HeaderName::from_static("x-sluice-breaker");

/// A circuit breaker for one route × upstream pair, with its metric handles.
pub struct RouteBreaker {
    /// Route id.
    pub route: String,
    /// Upstream id.
    pub upstream: String,
    /// The state machine.
    pub breaker: CircuitBreaker,
    state_gauge: IntGauge,
    /// `sluice_breaker_transitions_total` for every (from, to) pair, by gauge codes,
    /// resolved up front so a transition on the request path takes no lock.
    transitions: Vec<IntCounter>,
    /// `sluice_breaker_short_circuited_total{action="response"}`.
    pub short_response: IntCounter,
    /// `sluice_breaker_short_circuited_total{action="fallback"}`.
    pub short_fallback: IntCounter,
}

impl RouteBreaker {
    /// A closed breaker for `route` × `upstream`.
    pub fn new(route: &str, upstream: &str, config: &BreakerConfig, metrics: &Metrics) -> RouteBreaker {
        let b = RouteBreaker {
            route: route.to_string(),
            upstream: upstream.to_string(),
            breaker: CircuitBreaker::new(config, Instant::now()),
            state_gauge: metrics.breaker_state.with_label_values(&[route, upstream]),
            transitions: transition_handles(&metrics.breaker_transitions, route, upstream),
            short_response: metrics
                .short_circuited
                .with_label_values(&[route, upstream, "response"]),
            short_fallback: metrics
                .short_circuited
                .with_label_values(&[route, upstream, "fallback"]),
        };
        b.state_gauge.set(i64::from(b.breaker.state().gauge_code()));
        b
    }

    /// Counts and logs a state change, if there was one.
    #[inline]
    pub fn observe(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        self.state_gauge.set(i64::from(t.to.gauge_code()));
        let n = BreakerState::ALL.len();
        if let Some(c) = self
            .transitions
            .get(usize::from(t.from.gauge_code()) * n + usize::from(t.to.gauge_code()))
        {
            c.inc();
        }
        tracing::warn!(
            route = %self.route,
            upstream = %self.upstream,
            from = t.from.as_str(),
            to = t.to.as_str(),
            reason = %t.reason,
            "circuit breaker state changed"
        );
        crate::observe::events::emit(crate::observe::events::Event::BreakerTransition {
            route: self.route.clone(),
            upstream: self.upstream.clone(),
            from: t.from,
            to: t.to,
            reason: t.reason,
            window: t.window,
        });
    }

    /// The [`BREAKER_HEADER`] value for an answer shaped while in `state`.
    pub fn header(&self, state: BreakerState) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "route={}; upstream={}; state={}",
            self.route,
            self.upstream,
            state.as_str()
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

fn transition_handles(vec: &IntCounterVec, route: &str, upstream: &str) -> Vec<IntCounter> {
    let mut out = Vec::with_capacity(BreakerState::ALL.len() * BreakerState::ALL.len());
    for from in BreakerState::ALL {
        for to in BreakerState::ALL {
            out.push(vec.with_label_values(&[route, upstream, from.as_str(), to.as_str()]));
        }
    }
    out
}

/// What a route does with its breaker, compiled with each snapshot.
pub struct BreakerBinding {
    /// The long-lived breaker.
    pub breaker: Arc<RouteBreaker>,
    /// What counts as a failure.
    pub failure_on: FailureConditions,
    /// Where requests go while the breaker is open, instead of a response.
    pub fallback: Option<Arc<Upstream>>,
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl BreakerBinding {
    /// Binds `breaker` to the route's `config`, with `fallback` resolved.
    pub fn new(breaker: Arc<RouteBreaker>, config: &BreakerConfig, fallback: Option<Arc<Upstream>>) -> Self {
        let resp = config.short_circuit_response();
        let mut headers: Vec<(HeaderName, HeaderValue)> = resp
            .headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect();
        if config.response.is_none() {
            headers.push((
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ));
        }
        BreakerBinding {
            breaker,
            failure_on: config.failure_on.clone(),
            fallback,
            status: StatusCode::from_u16(resp.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            headers,
            body: Bytes::from(resp.body),
        }
    }

    /// The short-circuit answer: the configured response, with `Retry-After` (whole
    /// seconds, at least 1) unless configured, and the breaker header.
    pub fn short_circuit(&self, retry_after: Duration, state: BreakerState) -> Response {
        let mut headers = self.headers.clone();
        if !headers.iter().any(|(k, _)| k == http::header::RETRY_AFTER) {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            headers.push((http::header::RETRY_AFTER, HeaderValue::from(secs.max(1))));
        }
        headers.push((BREAKER_HEADER, self.breaker.header(state)));
        Response {
            status: self.status,
            headers,
            body: self.body.clone(),
        }
    }
}

/// Whether `resp` is a breaker's default short-circuit answer (no `response`
/// configured): the gateway's own error, which error pages may replace.
pub fn is_default_short_circuit(resp: &Response) -> bool {
    let default = sluice_config::resilience::ShortCircuitResponse::default();
    resp.status.as_u16() == default.status && resp.body == default.body.as_bytes()
}

/// The retry policy of a route: its own `retries`, else its upstream's.
pub fn route_retry_policy(
    route: &sluice_config::model::RouteConfig,
    upstream: Option<&Arc<Upstream>>,
) -> Arc<RetryPolicy> {
    match (&route.retries, upstream) {
        (Some(r), _) => Arc::new(RetryPolicy::new(r)),
        (None, Some(u)) => u.retry.clone(),
        (None, None) => Arc::new(RetryPolicy::new(&sluice_config::resilience::RetryConfig {
            attempts: 0,
            ..Default::default()
        })),
    }
}
