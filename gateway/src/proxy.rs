//! The pingora glue. Each `ProxyHttp` hook hands its phase to the pure parts (router,
//! filter chain, balancer) and does nothing else of its own:
//!
//! | pingora phase             | what runs                                                   |
//! |---------------------------|-------------------------------------------------------------|
//! | `request_filter`          | load snapshot, request id, client IP, route, chain request  |
//! | `upstream_peer`           | pick an endpoint (balancer, skipping tried/unhealthy)       |
//! | `upstream_request_filter` | rewrite, `X-Forwarded-*`, request id, chain upstream-request |
//! | `response_filter`         | request id, chain response                                  |
//! | `fail_to_connect`         | decide whether to retry on another endpoint                 |
//! | `fail_to_proxy`           | the JSON error response ([`crate::error`])                  |
//! | `logging`                 | metrics, access log                                         |

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use sluice_filters::router::MatchInput;
use sluice_filters::{Chain, FilterCtx, Flow, HeaderEdit, RequestView, Response};

use crate::error::{error_response, ErrorKind};
use crate::gateway::Gateway;
use crate::metrics::NO_ROUTE;
use crate::snapshot::Snapshot;
use crate::upstream::EndpointState;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The proxy for one listener.
pub struct SluiceProxy {
    gateway: Arc<Gateway>,
    scheme: &'static str,
}

impl SluiceProxy {
    /// A proxy serving `gateway`'s snapshots on a listener that is TLS or not.
    pub fn new(gateway: Arc<Gateway>, tls: bool) -> Self {
        Self {
            gateway,
            scheme: if tls { "https" } else { "http" },
        }
    }
}

/// Decrements an endpoint's in-flight count when dropped.
struct InFlight(Arc<EndpointState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-request state.
pub struct Ctx {
    snapshot: Option<Arc<Snapshot>>,
    route: Option<usize>,
    prefix_len: Option<usize>,
    filter: FilterCtx,
    client_ip: Option<IpAddr>,
    peer_ip: Option<IpAddr>,
    peer_trusted: bool,
    request_id_value: Option<HeaderValue>,
    started: Instant,
    tried: Vec<usize>,
    inflight: Option<InFlight>,
    error: Option<ErrorKind>,
    _request: crate::shutdown::RequestGuard,
}

/// Pingora's request header as a [`HeaderEdit`].
struct ReqEdit<'a>(&'a mut RequestHeader);
/// Pingora's response header as a [`HeaderEdit`].
struct RespEdit<'a>(&'a mut ResponseHeader);

macro_rules! header_edit {
    ($t:ident) => {
        impl HeaderEdit for $t<'_> {
            fn headers(&self) -> &HeaderMap {
                &self.0.headers
            }
            fn set(&mut self, name: HeaderName, value: HeaderValue) {
                let _ = self.0.insert_header(name, value);
            }
            fn append(&mut self, name: HeaderName, value: HeaderValue) {
                let _ = self.0.append_header(name, value);
            }
            fn remove(&mut self, name: &HeaderName) {
                let _ = self.0.remove_header(name);
            }
        }
    };
}
header_edit!(ReqEdit);
header_edit!(RespEdit);

/// A new request id: 128 random bits from the thread-local generator (no system call),
/// as 32 hex digits.
fn new_request_id() -> String {
    use rand::Rng;
    format!("{:032x}", rand::rng().random::<u128>())
}

fn is_valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

/// The client's address: the peer, or when the peer is a trusted proxy, the right-most
/// `X-Forwarded-For` entry that is not itself trusted.
fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, snap: &Snapshot) -> (Option<IpAddr>, bool) {
    let trusted = |ip: &IpAddr| snap.trusted_proxies.iter().any(|n| n.contains(ip));
    let Some(peer) = peer else { return (None, false) };
    if !trusted(&peer) {
        return (Some(peer), false);
    }
    let mut client = peer;
    for v in headers.get_all(&X_FORWARDED_FOR) {
        let Ok(s) = v.to_str() else { continue };
        for part in s.split(',').rev() {
            if let Ok(ip) = part.trim().parse::<IpAddr>() {
                client = ip;
                if !trusted(&ip) {
                    return (Some(client), true);
                }
            }
        }
    }
    (Some(client), true)
}

fn request_host(req: &RequestHeader) -> Option<&str> {
    req.uri
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()))
}

impl Ctx {
    /// The matched route in the request's snapshot, if any.
    fn route_entry(&self) -> Option<&crate::snapshot::Route> {
        self.snapshot.as_ref().zip(self.route).map(|(s, r)| &s.routes[r])
    }

    /// The request id as a header value, built once and then shared (cheap clones).
    fn request_id_value(&mut self) -> HeaderValue {
        if self.request_id_value.is_none() {
            self.request_id_value = HeaderValue::from_str(&self.filter.request_id).ok();
        }
        self.request_id_value
            .clone()
            .unwrap_or_else(|| HeaderValue::from_static("-"))
    }

    fn snapshot(&self) -> Result<&Arc<Snapshot>> {
        self.snapshot
            .as_ref()
            .ok_or_else(|| Error::explain(InternalError, "no snapshot in context"))
    }
}

/// Writes a gateway-made response, running the route's response filters over it.
async fn send(session: &mut Session, resp: Response, ctx: &Ctx, chain: Option<&Chain>) -> Result<()> {
    let mut h = ResponseHeader::build(resp.status, Some(resp.headers.len() + 2))?;
    for (k, v) in resp.headers {
        h.append_header(k, v)?;
    }
    h.insert_header(http::header::CONTENT_LENGTH, resp.body.len().to_string())?;
    if let Some(snap) = &ctx.snapshot {
        if let Ok(v) = HeaderValue::from_str(&ctx.filter.request_id) {
            h.insert_header(snap.request_id_header.clone(), v)?;
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

impl SluiceProxy {
    async fn send_error(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        kind: ErrorKind,
        message: &str,
    ) -> Result<()> {
        ctx.error = Some(kind);
        let header = ctx.snapshot.as_ref().map_or_else(
            || HeaderName::from_static("x-request-id"),
            |s| s.request_id_header.clone(),
        );
        let resp = error_response(kind, message, &ctx.filter.request_id, &header);
        // `send` sets the request id header again (replacing, not adding a second one).
        send(session, resp, ctx, None).await
    }
}

impl Ctx {
    fn blank() -> Ctx {
        Ctx {
            snapshot: None,
            route: None,
            prefix_len: None,
            filter: FilterCtx::default(),
            client_ip: None,
            peer_ip: None,
            peer_trusted: false,
            request_id_value: None,
            started: Instant::now(),
            tried: Vec::new(),
            inflight: None,
            error: None,
            _request: crate::shutdown::RequestGuard::new(),
        }
    }
}

#[async_trait]
impl ProxyHttp for SluiceProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::blank()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snap = self.gateway.snapshot();
        if !self.gateway.is_ready() {
            ctx.snapshot = Some(snap);
            ctx.filter.request_id = new_request_id();
            self.send_error(session, ctx, ErrorKind::NotReady, ErrorKind::NotReady.describe())
                .await?;
            return Ok(true);
        }
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        ctx.peer_ip = peer;
        let flow = {
            let req = session.req_header();
            ctx.filter.request_id = match req.headers.get(&snap.request_id_header) {
                Some(v) if is_valid_request_id(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
                _ => new_request_id(),
            };
            (ctx.client_ip, ctx.peer_trusted) = client_ip(peer, &req.headers, &snap);
            let host = request_host(req);
            let path = req.uri.path();
            let query = req.uri.query();
            let found = snap.router.find(&MatchInput {
                method: &req.method,
                host,
                path,
                query,
                headers: &req.headers,
            });
            match found {
                None => Err(format!("no route for {} {}", req.method, path)),
                Some(m) => {
                    ctx.route = Some(m.index);
                    ctx.prefix_len = m.prefix_len;
                    let route = &snap.routes[m.index];
                    if route.chain.has_request_phase() {
                        let view = RequestView {
                            method: &req.method,
                            scheme: self.scheme,
                            host: host.map(|h| h.rsplit_once(':').map_or(h, |(a, _)| a)),
                            authority: host,
                            path,
                            query,
                            headers: &req.headers,
                            client_ip: ctx.client_ip,
                        };
                        Ok(route.chain.on_request(&view, &mut ctx.filter).await)
                    } else {
                        Ok(Flow::Continue)
                    }
                }
            }
        };
        ctx.snapshot = Some(snap.clone());
        match flow {
            Err(message) => {
                self.send_error(session, ctx, ErrorKind::NoRoute, &message)
                    .await?;
                Ok(true)
            }
            Ok(Flow::Respond(resp)) => {
                let chain = ctx.route.map(|i| &*snap.routes[i].chain);
                send(session, resp, ctx, chain).await?;
                Ok(true)
            }
            Ok(Flow::Continue) => {
                let route = ctx.route.map(|i| &snap.routes[i]);
                if route.is_some_and(|r| r.upstream.is_none()) {
                    self.send_error(session, ctx, ErrorKind::Internal, "route has no upstream")
                        .await?;
                    return Ok(true);
                }
                Ok(false)
            }
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let snap = ctx.snapshot()?.clone();
        let route_idx = ctx
            .route
            .ok_or_else(|| Error::explain(InternalError, "no route"))?;
        let route = &snap.routes[route_idx];
        let up = route
            .upstream
            .as_ref()
            .ok_or_else(|| Error::explain(InternalError, "no upstream"))?;
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
                .or_else(|| ctx.client_ip.map(|ip| ip.to_string().into_bytes()))
                .unwrap_or_default();
            crate::balancer::hash_key(&value)
        });
        let tried = &ctx.tried;
        let pick = up
            .pick(|i| !tried.contains(&i), key)
            .or_else(|| up.pick(|_| true, key));
        let Some(idx) = pick else {
            ctx.error = Some(ErrorKind::NoHealthyEndpoint);
            return Err(Error::explain(
                HTTPStatus(503),
                format!("upstream {} has no available endpoint", up.id),
            ));
        };
        let deadline_left = match route.timeouts.total {
            Some(total) => {
                let left = total.saturating_sub(ctx.started.elapsed());
                if left.is_zero() {
                    ctx.error = Some(ErrorKind::UpstreamTimeout);
                    return Err(Error::explain(ReadTimedout, "total timeout elapsed"));
                }
                Some(left)
            }
            None => None,
        };
        let state = up.endpoints[idx].state.clone();
        state.inflight.fetch_add(1, Ordering::Relaxed);
        state.requests.fetch_add(1, Ordering::Relaxed);
        ctx.inflight = Some(InFlight(state));
        ctx.tried.push(idx);
        Ok(Box::new(up.peer(idx, &route.timeouts, deadline_left)))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let snap = ctx.snapshot()?.clone();
        let Some(route) = ctx.route.map(|i| &snap.routes[i]) else {
            return Ok(());
        };
        if let Some(rw) = &route.rewrite {
            let path = rw.apply(upstream.uri.path(), ctx.prefix_len);
            let pq = match upstream.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let uri = http::Uri::builder()
                .path_and_query(pq)
                .build()
                .map_err(|e| Error::because(InternalError, "rewritten path is not a valid URI", e))?;
            upstream.set_uri(uri);
        }
        if let Some(peer) = ctx.peer_ip.map(|ip| ip.to_string()) {
            let xff = match upstream
                .headers
                .get(&X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) if ctx.peer_trusted => format!("{prev}, {peer}"),
                _ => peer,
            };
            upstream.insert_header(X_FORWARDED_FOR, xff)?;
        }
        if !(ctx.peer_trusted && upstream.headers.contains_key(&X_FORWARDED_PROTO)) {
            upstream.insert_header(X_FORWARDED_PROTO, HeaderValue::from_static(self.scheme))?;
        }
        if !(ctx.peer_trusted && upstream.headers.contains_key(&X_FORWARDED_HOST)) {
            if let Some(host) = request_host(session.req_header()).map(str::to_string) {
                upstream.insert_header(X_FORWARDED_HOST, host)?;
            }
        }
        upstream.insert_header(snap.request_id_header.clone(), ctx.request_id_value())?;
        route
            .chain
            .on_upstream_request(&mut ReqEdit(upstream), &ctx.filter);
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let snap = ctx.snapshot()?.clone();
        resp.insert_header(snap.request_id_header.clone(), ctx.request_id_value())?;
        if let Some(route) = ctx.route.map(|i| &snap.routes[i]) {
            route
                .chain
                .on_response(resp.status, &mut RespEdit(resp), &ctx.filter);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the upstream, so trying another endpoint is safe for any method.
        let attempts = ctx
            .route_entry()
            .and_then(|r| r.upstream.as_ref().map(|u| u.endpoints.len()))
            .unwrap_or(1);
        if ctx.tried.len() < attempts.min(3) {
            e.set_retry(true);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let kind = ctx.error.unwrap_or_else(|| ErrorKind::of(e));
        ctx.error = Some(kind);
        if kind.is_upstream() {
            let up = ctx
                .route_entry()
                .and_then(|r| r.upstream.as_ref().map(|u| u.id.clone()));
            if let Some(up) = up {
                self.gateway
                    .metrics
                    .upstream_errors
                    .with_label_values(&[up.as_str(), kind.code()])
                    .inc();
            }
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
            if let Err(err) = self.send_error(session, ctx, kind, kind.describe()).await {
                tracing::debug!("could not send error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = ctx.route_entry().map_or(NO_ROUTE, |r| r.id.as_str());
        let elapsed = ctx.started.elapsed();
        let handles = ctx
            .route_entry()
            .map_or(self.gateway.metrics.unrouted(), |r| &*r.metrics);
        handles.observe(status, elapsed);
        if ctx.snapshot.as_ref().is_some_and(|s| s.config.server.access_log) {
            let req = session.req_header();
            let line = serde_json::json!({
                "request_id": ctx.filter.request_id,
                "client": ctx.client_ip.map(|i| i.to_string()),
                "method": req.method.as_str(),
                "path": req.uri.path(),
                "route": route,
                "status": status,
                "duration_ms": elapsed.as_secs_f64() * 1000.0,
                "error": ctx.error.map(ErrorKind::code),
            });
            println!("{line}");
        }
        ctx.inflight = None;
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _error: &Error) -> bool {
        matches!(ctx.error, Some(ErrorKind::NoRoute))
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}
