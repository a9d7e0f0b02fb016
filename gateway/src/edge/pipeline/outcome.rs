//! Outcome: how each try ended. The upstream's outlier detector hears every try; the
//! route's retry policy and the upstream's retry budget decide whether another try
//! goes to a different endpoint; the upstream-response filters see each answer.

use std::time::Instant;

use pingora::http::ResponseHeader;
use pingora::prelude::*;
use sluice_core::resilience::UpstreamOutcome;

use super::forward::RespEdit;
use super::Ctx;

/// The upstream's response header arrived. `Err` (retryable) when the status is retried.
pub fn upstream_response(session: &Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
    let status = resp.status.as_u16();
    if status < 200 {
        return Ok(());
    }
    ctx.timing.upstream_header = Some(Instant::now());
    if let Some(route) = ctx.route_entry() {
        if route.chain.has_upstream_response_phase() {
            let chain = route.chain.clone();
            chain.on_upstream_response(resp.status, &mut RespEdit(resp), &ctx.filter);
        }
    }
    let outcome = UpstreamOutcome::Response(status);
    record_try(ctx, outcome);
    if start_retry(session, ctx, outcome) {
        // Nothing has been sent to the client: fail this try, and pingora asks
        // `upstream_peer` for another endpoint.
        let mut e = Error::explain(HTTPStatus(status), "retrying a retryable status");
        e.set_retry(true);
        return Err(e);
    }
    Ok(())
}

/// A try could not connect: record it, and say whether to retry.
pub fn connect_failed(session: &Session, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
    let outcome = UpstreamOutcome::ConnectFailure;
    record_try(ctx, outcome);
    e.set_retry(start_retry(session, ctx, outcome));
    e
}

/// A try failed after connecting: record it, and say whether to retry.
pub fn proxy_failed(
    peer: &HttpPeer,
    session: &Session,
    e: Box<Error>,
    ctx: &mut Ctx,
    client_reused: bool,
) -> Box<Error> {
    let mut e = e.more_context(format!("Peer: {peer}"));
    if ctx.error == Some(crate::edge::error::ErrorKind::UpstreamResponseTooLarge) {
        // The route refused the answer's size: another endpoint would send the same.
        e.set_retry(false);
        return e;
    }
    if matches!(e.etype(), HTTPStatus(_)) && e.retry() {
        // A retryable status: `upstream_response` decided and counted it.
        return e;
    }
    if *e.esource() == ErrorSource::Downstream || session.response_written().is_some() {
        // The client went away, or the answer has begun: nothing can be retried.
        e.set_retry(false);
        return e;
    }
    let outcome = match e.etype() {
        ReadTimedout | WriteTimedout => UpstreamOutcome::Timeout,
        _ => UpstreamOutcome::Reset,
    };
    // A pooled connection the endpoint had already closed is pingora's to retry
    // (once the request is safe to replay); that says nothing about the endpoint.
    let stale_reused = client_reused
        && e.retry()
        && session.req_header().method.is_idempotent()
        && !session.as_ref().retry_buffer_truncated();
    if stale_reused {
        return e;
    }
    record_try(ctx, outcome);
    let retry = start_retry(session, ctx, outcome);
    e.set_retry(retry);
    e
}

/// Reports how the current try ended to the upstream's outlier detector.
fn record_try(ctx: &mut Ctx, outcome: UpstreamOutcome) {
    let now = Instant::now();
    ctx.resilience.outcome = Some((outcome, now));
    if let Some(trace) = ctx.trace.as_mut() {
        trace.end_try(outcome);
    }
    let (Some(up), Some(t)) = (ctx.upstream(), ctx.resilience.tried.last()) else {
        return;
    };
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
            detail = %ev.detail,
            duration_ms = ev.duration.as_millis() as u64,
            enforced = ev.enforced,
            "outlier detection ejected an endpoint"
        );
        crate::observe::events::emit(crate::observe::events::Event::EndpointEjected {
            upstream: up.id.clone(),
            endpoint: ev.address.clone(),
            reason: ev.reason,
            detail: ev.detail.clone(),
            duration_ms: u64::try_from(ev.duration.as_millis()).unwrap_or(u64::MAX),
            enforced: ev.enforced,
        });
    }
}

/// Whether the try that ended with `outcome` is retried: the route's policy allows
/// it (condition, method, replayable body, count) and the upstream's budget has room.
/// Counts the retry and sets the back-off before the next try.
fn start_retry(session: &Session, ctx: &mut Ctx, outcome: UpstreamOutcome) -> bool {
    let (guard, backoff) = {
        let Some(backend) = ctx.backend() else {
            return false;
        };
        let policy = &backend.retry;
        let replayable = !session.as_ref().retry_buffer_truncated()
            && session.as_ref().body_bytes_read() as u64 <= policy.max_buffered_body();
        if !policy.may_retry(
            outcome,
            &session.req_header().method,
            replayable,
            ctx.resilience.retries,
        ) {
            return false;
        }
        let Some(up) = ctx.upstream() else { return false };
        // A try that could not connect put no load on the upstream, so retrying it
        // elsewhere cannot feed a retry storm: it does not draw on the budget.
        let guard = if outcome == UpstreamOutcome::ConnectFailure {
            None
        } else {
            let Some(guard) = up.budget.try_start_retry() else {
                up.budget_exhausted.inc();
                return false;
            };
            Some(guard)
        };
        match (&ctx.routing.fallback, &backend.fallback_retries) {
            (Some(_), Some(m)) => m.retry(outcome),
            _ => backend.retries.retry(outcome),
        }
        (guard, policy.backoff(ctx.resilience.retries + 1, rand::random()))
    };
    ctx.resilience.retries += 1;
    ctx.resilience.retry_guard = guard;
    ctx.resilience.backoff = Some(backoff);
    true
}
