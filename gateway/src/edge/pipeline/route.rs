//! Route: match the request to a route, then run the route's request-phase filters
//! (authentication, rate limits, redirects, direct responses, backend hints, mirror
//! copies), and their body-ready phase once the body is known ([`body_ready`]).

use pingora::proxy::Session;
use sluice_core::framing::BodyFraming;
use sluice_core::router::MatchInput;
use sluice_core::{Flow, RequestBody, RequestView};

use super::ingress::request_host;
use super::{Answer, Ctx};
use crate::edge::error::ErrorKind;

/// Finds the route. `Some` when none matches (a 404).
pub fn find(session: &Session, ctx: &mut Ctx) -> Option<Answer> {
    let snap = ctx.snapshot.as_ref()?;
    let req = session.req_header();
    let found = snap.router.find(&MatchInput {
        method: &req.method,
        host: request_host(req),
        path: req.uri.path(),
        query: req.uri.query(),
        headers: &req.headers,
    });
    match found {
        Some(m) => {
            ctx.routing.route = Some(m.index);
            ctx.routing.prefix_len = m.prefix_len;
            None
        }
        None => Some(Answer::Error(
            ErrorKind::NoRoute,
            format!("no route for {} {}", req.method, req.uri.path()),
        )),
    }
}

/// Runs the route's request-phase filters. `Some` when one answers or refuses.
pub async fn filters(session: &Session, ctx: &mut Ctx, scheme: &'static str) -> Option<Answer> {
    let snap = ctx.snapshot.clone()?;
    let route = &snap.routes[ctx.routing.route?];
    if !route.chain.has_request_phase() {
        return None;
    }
    let req = session.req_header();
    let host = request_host(req);
    let view = RequestView {
        method: &req.method,
        scheme,
        host: host.map(|h| h.rsplit_once(':').map_or(h, |(a, _)| a)),
        authority: host,
        path: req.uri.path(),
        query: req.uri.query(),
        headers: &req.headers,
        client_ip: ctx.filter.client_ip,
    };
    match route.chain.on_request(&view, &mut ctx.filter).await {
        Flow::Continue => None,
        Flow::Respond(r) => Some(Answer::Respond(r)),
        Flow::Reject(r) => Some(Answer::Reject(r)),
    }
}

/// Once request buffering is done: runs the route's body-ready phase with the body
/// when it was buffered (e.g. `mirror` hands its copies to their queues; never waits).
pub fn body_ready(session: &Session, ctx: &mut Ctx) {
    let (Some(snap), Some(i)) = (&ctx.snapshot, ctx.routing.route) else {
        return;
    };
    let route = &snap.routes[i];
    if !route.chain.has_body_ready_phase() {
        return;
    }
    let body = match ctx.strict.body {
        None | Some(BodyFraming::None | BodyFraming::Length(0)) => RequestBody::Empty,
        Some(_) if ctx.strict.buffered => {
            RequestBody::Buffered(session.as_ref().get_retry_buffer().unwrap_or_default())
        }
        Some(_) => RequestBody::Streamed,
    };
    route.chain.on_body_ready(&body, &mut ctx.filter);
}
