//! Select: which backend serves the request, then which endpoint each try goes to.
//!
//! The backend is chosen once per request, after the request-phase filters: a filter's
//! [`BackendHint`] wins (canary rules, sticky assignment, consumer groups), else the
//! route's weighted split, which is exact over short runs. The endpoint is picked per
//! try by the upstream's balancer.

use std::sync::atomic::Ordering;
use std::time::Instant;

use pingora::prelude::*;
use sluice_core::{BackendHint, BackendReason};

use super::{Answer, Ctx, InFlight};
use crate::edge::error::ErrorKind;
use crate::upstream::Try;

/// Chooses the backend. `Some` when there is none to choose.
pub fn backend(ctx: &mut Ctx) -> Option<Answer> {
    let route = ctx.route_entry()?;
    if route.backends.is_empty() {
        return Some(Answer::Error(ErrorKind::Internal, "route has no upstream".into()));
    }
    let named = match &ctx.filter.backend {
        BackendHint::Split => None,
        BackendHint::Upstream(id) => route.backend_of(id),
    };
    // The split decides when no filter did (or a filter named no backend of the route).
    let (chosen, reason) = match named {
        Some(i) => (
            Some(i),
            ctx.filter.backend_reason.unwrap_or(BackendReason::Weight),
        ),
        None => (route.split.next(), BackendReason::Weight),
    };
    if let Some(b) = chosen
        .and_then(|i| route.backends.get(i))
        .filter(|_| route.backends.len() > 1)
    {
        b.version.decision(reason);
    }
    match chosen {
        Some(i) => {
            ctx.routing.backend = Some(i);
            ctx.filter.backend_reason = Some(reason);
            None
        }
        None => Some(Answer::Error(
            ErrorKind::NoHealthyEndpoint,
            ErrorKind::NoHealthyEndpoint.describe().into(),
        )),
    }
}

/// Picks the endpoint for the next try (one not tried yet, not ejected, healthy), with
/// the timeouts it gets: the route's over the upstream's, each capped by the per-try
/// timeout and by what is left of the total.
pub async fn endpoint(session: &Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
    if let Some(wait) = ctx.resilience.backoff.take() {
        tokio::time::sleep(wait).await;
    }
    let snap = ctx.snapshot()?.clone();
    let route = &snap.routes[ctx
        .routing
        .route
        .ok_or_else(|| Error::explain(InternalError, "no route"))?];
    let backend = &route.backends[ctx
        .routing
        .backend
        .ok_or_else(|| Error::explain(InternalError, "no backend"))?];
    let up = ctx
        .upstream()
        .ok_or_else(|| Error::explain(InternalError, "no upstream"))?
        .clone();
    let key = up.hash_on.as_ref().map(|h| {
        let req = session.req_header();
        let value = match h {
            sluice_config::model::HashOn::Header(name) => {
                req.headers.get(name.as_str()).map(|v| v.as_bytes().to_vec())
            }
            sluice_config::model::HashOn::Cookie(name) => {
                cookie(&req.headers, name).map(|v| v.as_bytes().to_vec())
            }
            sluice_config::model::HashOn::ClientIp => None,
        };
        let value = value
            .or_else(|| ctx.filter.client_ip.map(|ip| ip.to_string().into_bytes()))
            .unwrap_or_default();
        crate::upstream::balancer::hash_key(&value)
    });
    let set = up.endpoints.load_full();
    let Some(idx) = set.pick_for_try(&ctx.resilience.tried, key, Instant::now()) else {
        ctx.error = Some(ErrorKind::NoHealthyEndpoint);
        return Err(Error::explain(
            HTTPStatus(503),
            format!("upstream {} has no available endpoint", up.id),
        ));
    };
    super::deadline::start(ctx, backend.timeouts.total);
    let deadline_left = match ctx.timing.deadline {
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                ctx.error = Some(ErrorKind::UpstreamTimeout);
                return Err(Error::explain(ReadTimedout, "total timeout elapsed"));
            }
            Some(left)
        }
        None => None,
    };
    let limit = match (deadline_left, backend.retry.per_try_timeout()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let state = set.endpoints[idx].state.clone();
    state.inflight.fetch_add(1, Ordering::Relaxed);
    state.requests.fetch_add(1, Ordering::Relaxed);
    ctx.resilience.inflight = Some(InFlight(state));
    let peer = up.peer(&set.endpoints[idx], &backend.timeouts, limit);
    ctx.resilience.tried.push(Try { set, index: idx });
    if let Some(trace) = ctx.trace.as_mut() {
        trace.start_try();
    }
    Ok(Box::new(peer))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    sluice_core::cookie::get(headers, name)
}
