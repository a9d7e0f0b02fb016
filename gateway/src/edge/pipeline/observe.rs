//! Observe: the completion phase. It runs once the request has ended, whatever the
//! outcome: the breaker hears the verdict, the route's metrics count it, the route's
//! completion filters see the whole request, and the access log gets its record.

use std::time::Instant;

use pingora::prelude::*;
use sluice_core::resilience::CallOutcome;
use sluice_core::Completion;

use super::ingress::request_host;
use super::Ctx;
use crate::control::gateway::Gateway;
use crate::edge::error::ErrorKind;
use crate::observe::access_log::AccessRecord;

/// Ends the request.
pub fn complete(gateway: &Gateway, session: &Session, ctx: &mut Ctx) {
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let started = ctx.timing.started;
    if let Some((b, permit)) = ctx.resilience.permit.take() {
        match ctx.resilience.outcome {
            // The call's duration is up to the upstream's answer (or failure) that
            // decided it, retries included, and not the time spent streaming a body.
            Some((outcome, at)) => {
                let call = CallOutcome::classify(&b.failure_on, outcome, at - started);
                b.breaker
                    .observe(b.breaker.breaker.record(permit, call, Instant::now()));
            }
            None => b.breaker.breaker.release(permit),
        }
    }
    let elapsed = started.elapsed();
    let route = ctx.route_entry();
    route
        .map_or(gateway.metrics.unrouted(), |r| &*r.metrics)
        .observe(status, elapsed);
    if let (Some(r), Some(b)) = (route.filter(|r| r.backends.len() > 1), ctx.routing.backend) {
        r.split.record(b, status, elapsed);
        if let Some(backend) = r.backends.get(b) {
            backend.version.observe(status, elapsed);
        }
    }
    let wants_record = route.is_some_and(|r| r.chain.has_complete_phase());
    let sinks = gateway.access_log.current();
    let access_log = !sinks.is_empty();
    if wants_record || access_log {
        let endpoint = ctx.resilience.tried.last().map(|t| t.endpoint().key.as_str());
        let done = Completion {
            request_id: &ctx.filter.request_id,
            route: route.map(|r| r.id.as_str()),
            backend: ctx.upstream().map(|u| u.id.as_str()),
            endpoint,
            status,
            bytes_in: session.body_bytes_read() as u64,
            bytes_out: session.body_bytes_sent() as u64,
            duration: elapsed,
            upstream_time: ctx.timing.upstream_header.map(|t| t - started),
            retries: ctx.resilience.retries,
            breaker_state: ctx.resilience.breaker_state.map(|s| s.as_str()),
            identity: ctx.filter.identity.as_ref(),
            error: ctx.error.map(ErrorKind::code),
        };
        if let Some(r) = route.filter(|_| wants_record) {
            r.chain.on_complete(&done);
        }
        if access_log {
            let req = session.req_header();
            sinks.submit(AccessRecord {
                time: std::time::SystemTime::now() - elapsed,
                request_id: ctx.filter.request_id.clone(),
                client: ctx.filter.client_ip,
                method: req.method.clone(),
                host: request_host(req).map(str::to_string),
                path: req.uri.path().to_string(),
                status,
                bytes_in: done.bytes_in,
                bytes_out: done.bytes_out,
                duration: elapsed,
                upstream: endpoint.map(str::to_string),
                upstream_time: done.upstream_time,
                route: done.route.map(str::to_string),
                backend: done.backend.map(str::to_string),
                backend_reason: ctx.filter.backend_reason.filter(|_| done.backend.is_some()),
                retries: done.retries,
                breaker: ctx.resilience.breaker_state,
                user_agent: req
                    .headers
                    .get(http::header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                error: done.error,
                consumer: ctx.filter.identity.as_ref().map(|i| i.consumer.clone()),
                notes: ctx.filter.log.clone(),
                trace: ctx.trace.as_ref().map(|t| (t.trace_id, t.span_id)),
            });
        }
    }
    if ctx.trace.is_some() {
        trace(session, ctx, status);
    }
    ctx.resilience.inflight = None;
}

/// Builds the request's spans, when its trace is sampled, and hands them to the
/// exporter.
fn trace(session: &Session, ctx: &mut Ctx, status: u16) {
    let Some(trace) = ctx.trace.take() else { return };
    if !trace.sampled {
        return;
    }
    let children = crate::observe::trace::take_children(&mut ctx.filter.ext);
    let Some(tracer) = ctx.snapshot.as_ref().and_then(|s| s.tracer.clone()) else {
        return;
    };
    let req = session.req_header();
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let done = crate::observe::trace::Summary {
        method: req.method.as_str(),
        path: req.uri.path(),
        scheme: if tls { "https" } else { "http" },
        route: ctx.route_entry().map(|r| r.id.as_str()),
        backend: ctx.upstream().map(|u| u.id.as_str()),
        tried: &ctx.resilience.tried,
        status,
        retries: ctx.resilience.retries,
        breaker: ctx.resilience.breaker_state.map(|s| s.as_str()),
        error: ctx.error.map(ErrorKind::code),
        client: ctx.filter.client_ip,
        request_id: &ctx.filter.request_id,
        user_agent: req
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
    };
    tracer.submit(trace.finish(&done, children));
}
