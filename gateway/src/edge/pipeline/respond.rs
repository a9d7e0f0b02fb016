//! Respond: answers the gateway makes itself (a filter's response, a refusal, an error),
//! all through the one error-to-status mapping ([`crate::edge::error`]), and the response
//! headers towards the client.

use http::HeaderName;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use sluice_core::{Chain, Response};

use super::forward::{case_name, RespEdit};
use super::{Answer, Ctx};
use crate::edge::error::{apply_page, error_response, reject_response, ErrorKind};
use crate::upstream::resilience::BREAKER_HEADER;

/// Sends `answer`; the request phase then ends (`Ok(true)`: pingora proxies nothing).
pub async fn answer(session: &mut Session, ctx: &mut Ctx, answer: Answer) -> Result<bool> {
    let resp = match answer {
        Answer::Respond(mut resp) => {
            // The breaker's default short-circuit answer is the gateway's own error.
            if ctx.error == Some(ErrorKind::CircuitOpen)
                && crate::upstream::resilience::is_default_short_circuit(&resp)
            {
                page(
                    session,
                    ctx,
                    &mut resp,
                    ErrorKind::CircuitOpen,
                    ErrorKind::CircuitOpen.describe(),
                );
            }
            resp
        }
        Answer::Error(kind, message) => {
            send_error(session, ctx, kind, &message).await?;
            return Ok(true);
        }
        Answer::Reject(reject) => {
            let kind = ErrorKind::Rejected(reject.kind);
            ctx.error = Some(kind);
            let own_body = reject.custom.as_ref().is_some_and(|c| c.body.is_some());
            let message = reject.message.clone();
            let mut resp = reject_response(reject, &ctx.filter.request_id, &id_header(ctx));
            if !own_body {
                page(session, ctx, &mut resp, kind, &message);
            }
            resp
        }
    };
    // A filter's answer or refusal passes through the route's response filters.
    let snap = ctx.snapshot.clone();
    let chain = snap
        .as_ref()
        .zip(ctx.routing.route)
        .map(|(s, i)| &*s.routes[i].chain);
    send(session, resp, ctx, chain).await?;
    Ok(true)
}

fn id_header(ctx: &Ctx) -> HeaderName {
    ctx.snapshot.as_ref().map_or_else(
        || HeaderName::from_static("x-request-id"),
        |s| s.request_id_header.clone(),
    )
}

/// Writes a gateway-made response, running the route's response filters over it.
pub async fn send(session: &mut Session, resp: Response, ctx: &Ctx, chain: Option<&Chain>) -> Result<()> {
    crate::edge::shutdown::close_if_draining(session);
    let mut h = ResponseHeader::build(resp.status, Some(resp.headers.len() + 2))?;
    for (k, v) in resp.headers {
        h.append_header(k, v)?;
    }
    h.insert_header(http::header::CONTENT_LENGTH, resp.body.len().to_string())?;
    if let Some(snap) = &ctx.snapshot {
        if let Ok(v) = http::HeaderValue::from_str(&ctx.filter.request_id) {
            h.insert_header(case_name(&snap.request_id_header), v)?;
        }
    }
    if let Some(chain) = chain {
        chain.on_response(resp.status, &mut RespEdit(&mut h), &ctx.filter);
    }
    let end = resp.body.is_empty();
    session.write_response_header(Box::new(h), end).await?;
    if !end {
        session.write_response_body(Some(resp.body), true).await?;
    }
    Ok(())
}

/// Replaces `resp`'s body with the route's (else the listener's) error page for
/// `kind`, when one covers its status.
fn page(session: &Session, ctx: &Ctx, resp: &mut Response, kind: ErrorKind, message: &str) {
    let Some(pages) = super::responses::error_pages(ctx) else {
        return;
    };
    let accept = session
        .req_header()
        .headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    apply_page(resp, kind.code(), message, &ctx.filter.request_id, pages, accept);
}

/// Sends the error response for `kind`: the JSON error, or the error page that
/// covers its status.
pub async fn send_error(session: &mut Session, ctx: &mut Ctx, kind: ErrorKind, message: &str) -> Result<()> {
    ctx.error = Some(kind);
    let mut resp = error_response(kind, message, &ctx.filter.request_id, &id_header(ctx));
    page(session, ctx, &mut resp, kind, message);
    // `send` sets the request id header again (replacing, not adding a second one).
    send(session, resp, ctx, None).await
}

/// The response headers towards the client: request id, the breaker's header when it
/// shaped the answer, and the route's response filters.
pub fn headers(resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
    let snap = ctx.snapshot()?.clone();
    resp.insert_header(case_name(&snap.request_id_header), ctx.request_id_value())?;
    // The upstream's `Server` names its software: hidden (or replaced) by default.
    match &snap.server_header {
        None => {}
        Some(None) if resp.headers.contains_key(http::header::SERVER) => {
            resp.remove_header(&http::header::SERVER);
        }
        Some(None) => {}
        Some(Some(v)) => resp.insert_header(http::header::SERVER, v.clone())?,
    }
    if let Some(v) = &ctx.routing.fallback {
        resp.insert_header(BREAKER_HEADER, v.clone())?;
    }
    if let Some(route) = ctx.routing.route.map(|i| &snap.routes[i]) {
        route
            .chain
            .on_response(resp.status, &mut RespEdit(resp), &ctx.filter);
    }
    Ok(())
}

/// After a failed proxy attempt: the error response, and the error counted.
pub async fn fail_to_proxy(session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
    // A kind set by a phase stands (the total deadline is an `UpstreamTimeout` wherever
    // it falls); else pingora's error decides.
    let kind = ctx.error.unwrap_or_else(|| match ErrorKind::of(e) {
        // A read timeout once the answer's head came: the body stalled.
        ErrorKind::UpstreamTimeout if ctx.timing.upstream_header.is_some() => ErrorKind::UpstreamBodyTimeout,
        kind => kind,
    });
    ctx.error = Some(kind);
    if let Some(up) = ctx.upstream() {
        up.metrics.error(kind);
    }
    let code = if kind == ErrorKind::Downstream {
        0
    } else {
        kind.status().as_u16()
    };
    // Pingora does not reuse a client connection after a failed proxy attempt, so say
    // `Connection: close` rather than promise a keep-alive that will not happen.
    session.set_keepalive(None);
    if code > 0 && session.response_written().is_none() {
        tracing::debug!(request_id = %ctx.filter.request_id, "proxy error: {e}");
        if let Err(err) = send_error(session, ctx, kind, kind.describe()).await {
            tracing::debug!("could not send error response: {err}");
        }
    }
    FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}
