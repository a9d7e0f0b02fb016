//! Strict: the request's framing, size limits and body buffering, all decided before
//! any upstream is contacted.
//!
//! - [`head`] (right after ingress): the raw HTTP/1.x head as the client sent it goes
//!   through [`sluice_core::framing::check_head`] (an HTTP/2 request's parsed header
//!   list through `check_parsed`), against `server.limits`.
//! - [`body`] (after the route's request filters): the route's body limit (413 on a
//!   known `Content-Length`), then request buffering: a body within
//!   `request_buffering.max` is read whole into pingora's replay buffer, so a broken
//!   chunked body is refused (400) and never reaches an upstream, not even its head;
//!   pingora then sends the buffered body to the upstream (and replays it on a retry).
//! - [`body_chunk`] (`request_body_filter`): a streamed body is cut at the limit.
//! - [`response_head`] (`upstream_response_filter`): an upstream's head over
//!   `limits.max_response_header_size` becomes a 502.
//!
//! A refusal closes the connection: after a framing error nothing later on it can be
//! trusted to start where the client meant (request smuggling).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use sluice_config::limits::RequestBuffering;
use sluice_core::framing::{self, BodyFraming, HeadLimits, Refusal};

use super::{Answer, Ctx};
use crate::edge::error::ErrorKind;

/// What the strict phase keeps for later hooks.
#[derive(Debug, Default)]
pub struct Strict {
    /// The body's framing, from the head check.
    pub body: Option<BodyFraming>,
    /// The body limit that applies to a streamed body (`None`: not streaming, or no
    /// body).
    pub stream_limit: Option<u64>,
    /// Whether the body was read whole before proxying.
    pub buffered: bool,
}

fn refuse(session: &mut Session, ctx: &mut Ctx, r: Refusal) -> Option<Answer> {
    tracing::debug!(request_id = %ctx.filter.request_id, "strict check refused the request: {r}");
    session.set_keepalive(None);
    Some(Answer::Error(ErrorKind::Framing(r), r.reason().to_string()))
}

/// Checks the request head against the framing rules and `server.limits`. `Some` when
/// it is refused.
pub fn head(session: &mut Session, ctx: &mut Ctx) -> Option<Answer> {
    let snap = ctx.snapshot.clone()?;
    let l = &snap.config.server.limits;
    let limits = HeadLimits {
        max_head: usize::try_from(l.max_header_size.bytes()).unwrap_or(usize::MAX),
        max_line: usize::try_from(l.max_header_line.bytes()).unwrap_or(usize::MAX),
        max_headers: l.max_headers as usize,
        max_uri: usize::try_from(l.max_uri.bytes()).unwrap_or(usize::MAX),
    };
    let checked = match session.as_ref().as_http1() {
        Some(h1) => framing::check_head(&h1.get_headers_raw_bytes(), &limits).map(|h| h.body),
        None => {
            let req = session.req_header();
            let target = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
            framing::check_parsed(
                req.headers
                    .iter()
                    .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())),
                target,
                &limits,
            )
        }
    };
    match checked {
        Ok(body) => {
            ctx.strict.body = Some(body);
            None
        }
        Err(r) => refuse(session, ctx, r),
    }
}

/// The route's body limit and buffering setting.
fn route_settings(ctx: &Ctx) -> Option<(u64, RequestBuffering)> {
    let snap = ctx.snapshot.as_ref()?;
    let server = &snap.config.server;
    let route = ctx.routing.route.and_then(|i| snap.config.routes.get(i));
    let limit = route
        .and_then(|r| r.limits.max_request_body)
        .unwrap_or(server.limits.max_request_body)
        .bytes();
    let buffering = route
        .and_then(|r| r.request_buffering)
        .unwrap_or(server.request_buffering);
    Some((limit, buffering))
}

/// Applies the body limit and request buffering. `Some` when the request is refused
/// (413, or 400 for a broken body), or the client went away.
pub async fn body(session: &mut Session, ctx: &mut Ctx) -> Option<Answer> {
    let framing = ctx.strict.body?;
    let (limit, buffering) = route_settings(ctx)?;
    let buffer_max = buffering.max();
    let buffer = match framing {
        BodyFraming::None | BodyFraming::Length(0) => return None,
        BodyFraming::Length(n) if n > limit => return refuse(session, ctx, Refusal::PayloadTooLarge),
        BodyFraming::Length(n) => buffer_max.is_some_and(|m| n <= m),
        BodyFraming::Chunked => buffer_max.is_some(),
    };
    if !buffer {
        ctx.strict.stream_limit = Some(limit);
        return None;
    }
    // Within the buffer, a chunked body may not grow past `max` (it would not fit the
    // replay buffer pingora sends it from); the route's limit applies too.
    let cap = buffer_max.unwrap_or(0).min(limit);
    if session.req_header().headers.contains_key(http::header::EXPECT) {
        // The client waits for a 100 before it sends the body: say it here, since the
        // upstream does not hear of this request before the body is read (and so must
        // not be asked to say it again).
        if session.as_mut().write_continue_response().await.is_err() {
            return Some(Answer::Error(
                ErrorKind::Downstream,
                ErrorKind::Downstream.describe().into(),
            ));
        }
        session.req_header_mut().remove_header(&http::header::EXPECT);
    }
    session.as_mut().enable_retry_buffering();
    let mut total: u64 = 0;
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                total += chunk.len() as u64;
                if total > cap {
                    let r = Refusal::PayloadTooLarge;
                    return refuse(session, ctx, r);
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(request_id = %ctx.filter.request_id, "request body refused: {e}");
                return if is_client_gone(&e) {
                    session.set_keepalive(None);
                    Some(Answer::Error(
                        ErrorKind::Downstream,
                        ErrorKind::Downstream.describe().into(),
                    ))
                } else {
                    refuse(
                        session,
                        ctx,
                        Refusal::BadRequest("the request body's framing is invalid"),
                    )
                };
            }
        }
    }
    ctx.strict.buffered = true;
    None
}

/// Whether a body read failed because the client left or was too slow (nothing to
/// answer), rather than because what it sent was malformed.
fn is_client_gone(e: &Error) -> bool {
    matches!(
        e.etype(),
        ConnectionClosed | ReadError | ReadTimedout | WriteError | WriteTimedout
    )
}

/// `request_body_filter`: a streamed body is cut once it passes the route's limit.
pub fn body_chunk(session: &Session, ctx: &mut Ctx, _chunk: &Option<Bytes>) -> Result<()> {
    let Some(limit) = ctx.strict.stream_limit else {
        return Ok(());
    };
    if session.as_ref().body_bytes_read() as u64 > limit {
        ctx.error = Some(ErrorKind::Framing(Refusal::PayloadTooLarge));
        let mut e = Error::explain(InvalidHTTPHeader, "request body over the route's limit");
        e.set_retry(false);
        return Err(e.into_down());
    }
    Ok(())
}

/// `upstream_response_filter`: an upstream response head over
/// `limits.max_response_header_size` is refused (the client gets a 502).
pub fn response_head(resp: &ResponseHeader, ctx: &Ctx) -> Result<()> {
    let Some(snap) = &ctx.snapshot else {
        return Ok(());
    };
    let max = snap.config.server.limits.max_response_header_size.bytes();
    // Status line plus `name: value\r\n` per field and the blank line.
    let size: u64 = 17
        + resp
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
            .sum::<u64>()
        + 2;
    if size > max {
        let mut e = Error::explain(
            InvalidHTTPHeader,
            format!("upstream response head over {max} bytes"),
        );
        e.set_retry(false);
        return Err(e.into_up());
    }
    Ok(())
}
