//! The pingora glue: each `ProxyHttp` hook is a few calls into the phase modules of
//! [`crate::edge::pipeline`], so the whole request path reads on one screen.
//!
//! | pingora hook               | phases                                                           |
//! |----------------------------|------------------------------------------------------------------|
//! | `request_filter`           | ingress → strict (head) → normalize (the one view of path, host, headers) → route (match, request filters) → strict (body) → route (body-ready filters) → select (backend) → admit (breaker) |
//! | `request_body_filter`      | strict (a streamed body's limit)                                 |
//! | `upstream_peer`            | select (endpoint for this try, timeouts)                         |
//! | `upstream_request_filter`  | forward (rewrite, `X-Forwarded-*`, request id, identity, filters) |
//! | `upstream_response_filter` | outcome (upstream-response filters, outlier record, retry a status) |
//! | `response_filter`          | drain (`Connection: close` once draining); respond (request id, breaker header, response filters) |
//! | `fail_to_connect`          | outcome (outlier record, retry policy and budget)                |
//! | `error_while_proxy`        | outcome (outlier record, retry policy and budget)                |
//! | `request_cache_filter` ... `should_serve_stale` | cache (bypass, key, storability, vary, stale) |
//! | `upstream_response_body_filter` | responses (the response body limit)                         |
//! | `response_body_filter`, `response_trailer_filter` | responses (compression, gRPC-Web, error pages) |
//! | `fail_to_proxy`            | respond (the error, through the one mapping, as the error page if any) |
//! | `logging`                  | observe (breaker verdict, metrics, completion filters, access log) |

use std::ops::ControlFlow;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;

use crate::control::gateway::Gateway;
use crate::edge::error::ErrorKind;
use crate::edge::pipeline::{
    admit, cache, deadline, forward, ingress, normalize, observe, outcome, respond, responses, route, select,
    stop, strict, Answer, Ctx,
};

/// The proxy for one listener.
pub struct SluiceProxy {
    gateway: Arc<Gateway>,
    scheme: &'static str,
    /// The listener's name (its normalisation options).
    listener: String,
    /// The listener's position in the config (its compression and error-page defaults
    /// in the snapshot).
    listener_index: usize,
}

impl SluiceProxy {
    /// A proxy serving `gateway`'s snapshots on listener `listener`, the
    /// `listener_index`th of the config, TLS or not.
    pub fn new(gateway: Arc<Gateway>, listener: &str, tls: bool, listener_index: usize) -> Self {
        Self {
            gateway,
            scheme: if tls { "https" } else { "http" },
            listener: listener.to_string(),
            listener_index,
        }
    }
}

impl SluiceProxy {
    /// The request phases in order; the first that answers the request ends them
    /// (`Break` with the answer), else the request goes upstream (`Continue`).
    async fn request_phases(&self, session: &mut Session, ctx: &mut Ctx) -> ControlFlow<Answer> {
        stop(ingress::begin(&self.gateway, session, ctx))?;
        stop(strict::head(session, ctx))?;
        stop(normalize::request(session, ctx, &self.listener))?;
        stop(route::find(session, ctx))?;
        stop(route::filters(session, ctx, self.scheme).await)?;
        stop(strict::body(session, ctx).await)?;
        route::body_ready(session, ctx);
        stop(select::backend(ctx))?;
        stop(admit::breaker(ctx))?;
        responses::begin(session, ctx);
        ControlFlow::Continue(())
    }
}

/// The per-request context as pingora holds it: boxed. Pingora keeps `CTX` by value in
/// each request's future, which its `async_trait` shim builds on the stack and then
/// copies to the heap; a pointer there keeps that future, and so the copy, small.
pub type Cx = Box<Ctx>;

#[async_trait]
impl ProxyHttp for SluiceProxy {
    type CTX = Cx;

    fn new_ctx(&self) -> Cx {
        let mut ctx = Box::new(Ctx::new());
        ctx.listener = self.listener_index;
        ctx
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Cx) -> Result<bool> {
        crate::edge::conn::head_received();
        let r = crate::edge::unwind::catch(async {
            match self.request_phases(session, ctx).await {
                ControlFlow::Break(answer) => respond::answer(session, ctx, answer).await,
                ControlFlow::Continue(()) => Ok(false),
            }
        })
        .await;
        crate::edge::unwind::or_internal(r, ctx, "request_filter")
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Cx,
    ) -> Result<()> {
        strict::body_chunk(session, ctx, body)?;
        responses::request_body(body, end_of_stream, ctx)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Cx) -> Result<()> {
        cache::request(session, ctx);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Cx) -> Result<CacheKey> {
        cache::key(session, ctx)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Cx,
    ) -> Result<RespCacheable> {
        Ok(cache::response(session, resp, ctx))
    }

    fn cache_vary_filter(&self, meta: &CacheMeta, _ctx: &mut Cx, req: &RequestHeader) -> Option<HashBinary> {
        cache::vary(meta, req)
    }

    fn should_serve_stale(&self, _session: &mut Session, _ctx: &mut Cx, error: Option<&Error>) -> bool {
        cache::serve_stale(error)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Cx) -> Result<Box<HttpPeer>> {
        select::endpoint(session, ctx).await
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Cx,
    ) -> Result<()> {
        let r = crate::edge::unwind::catch_sync(|| {
            forward::upstream_request(session, upstream, ctx, self.scheme)
        });
        crate::edge::unwind::or_internal(r, ctx, "upstream_request_filter")?;
        responses::upstream_request(upstream, ctx)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Cx,
    ) -> Result<()> {
        strict::response_head(resp, ctx)?;
        deadline::check(ctx)?;
        responses::upstream_response(resp, ctx)?;
        let r = crate::edge::unwind::catch_sync(|| outcome::upstream_response(session, resp, ctx));
        crate::edge::unwind::or_internal(r, ctx, "upstream_response_filter")
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Cx,
    ) -> Result<()> {
        crate::edge::shutdown::close_if_draining(session);
        let r = crate::edge::unwind::catch_sync(|| respond::headers(resp, ctx));
        crate::edge::unwind::or_internal(r, ctx, "response_filter")?;
        if ctx.http.is_some() {
            cache::response_head(session, resp, ctx)?;
            responses::response_head(session, resp, ctx)?;
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Cx,
    ) -> Result<Option<std::time::Duration>> {
        deadline::check(ctx)?;
        responses::upstream_body(body, ctx)?;
        Ok(None)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Cx,
    ) -> Result<Option<std::time::Duration>> {
        responses::response_body(body, end_of_stream, ctx)?;
        Ok(None)
    }

    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Cx,
    ) -> Result<Option<bytes::Bytes>> {
        Ok(responses::response_trailers(trailers, ctx))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Cx,
        e: Box<Error>,
    ) -> Box<Error> {
        outcome::connect_failed(session, ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Cx,
        client_reused: bool,
    ) -> Box<Error> {
        outcome::proxy_failed(peer, session, e, ctx, client_reused)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Cx) -> FailToProxy {
        respond::fail_to_proxy(session, e, ctx).await
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Cx) {
        let r = crate::edge::unwind::catch_sync(|| observe::complete(&self.gateway, session, ctx));
        let _ = crate::edge::unwind::or_internal(r.map(Ok), ctx, "logging");
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Cx, _error: &Error) -> bool {
        matches!(ctx.error, Some(ErrorKind::NoRoute))
    }
}
