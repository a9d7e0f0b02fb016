//! The pingora glue. Each `ProxyHttp` hook hands its phase to the pure parts (router,
//! filter chain, balancer) and does nothing else of its own:
//!
//! | pingora phase             | what runs                                                   |
//! |---------------------------|-------------------------------------------------------------|
//! | `request_filter`          | load snapshot, request id, client IP, route, chain request  |
//! | `request_filter` (cont.)  | breaker admission: short-circuit response or fallback       |
//! | `upstream_peer`           | pick an endpoint (untried, not ejected, healthy); back-off  |
//! | `upstream_request_filter` | rewrite, `X-Forwarded-*`, request id, chain upstream-request |
//! | `upstream_response_filter`| outlier record; retry a retryable status                    |
//! | `response_filter`         | request id, breaker header, chain response                  |
//! | `fail_to_connect`         | outlier record; retry policy and budget                     |
//! | `error_while_proxy`       | outlier record; retry policy and budget                     |
//! | `fail_to_proxy`           | the JSON error response ([`crate::error`])                  |
//! | `logging`                 | breaker outcome, metrics, access log                        |

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use sluice_filters::resilience::{Admission, CallOutcome, Permit, RequestGuard, RetryGuard, UpstreamOutcome};
use sluice_filters::router::MatchInput;
use sluice_filters::{Chain, FilterCtx, Flow, HeaderEdit, RequestView, Response};

use crate::access_log::AccessRecord;
use crate::error::{error_response, ErrorKind};
use crate::gateway::Gateway;
use crate::resilience::{BreakerBinding, BREAKER_HEADER};
use crate::snapshot::Snapshot;
use crate::upstream::{EndpointState, Upstream};

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
    /// The breaker's leave for this request, handed back in `logging`.
    permit: Option<(Arc<BreakerBinding>, Permit)>,
    /// Set when the breaker sent the request to its fallback upstream: the header value.
    fallback: Option<HeaderValue>,
    /// How the last try ended, and when.
    outcome: Option<(UpstreamOutcome, Instant)>,
    /// Retries started so far.
    retries: u32,
    /// The wait before the next try.
    backoff: Option<std::time::Duration>,
    /// Counts this request in the upstream's retry budget.
    budget_request: Option<RequestGuard>,
    /// Counts the retry in flight in the budget.
    retry_guard: Option<RetryGuard>,
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
/// as 32 lower-case hex digits (written digit by digit: `format!` costs several times
/// more on this per-request path).
fn new_request_id() -> String {
    use rand::Rng;
    hex32(rand::rng().random::<u128>())
}

fn hex32(mut n: u128) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 32];
    for d in digits.iter_mut().rev() {
        *d = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    digits.iter().map(|&b| char::from(b)).collect()
}

/// `ip` as text, IPv4 written digit by digit (its `Display` goes through the formatting
/// machinery, which costs more than the rest of the header it goes into).
fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if octet >= 100 {
                    s.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    s.push(char::from(b'0' + octet / 10 % 10));
                }
                s.push(char::from(b'0' + octet % 10));
            }
            s
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
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

    /// The upstream this request goes to: the route's, or its breaker's fallback.
    fn upstream(&self) -> Option<&Arc<Upstream>> {
        let route = self.route_entry()?;
        if self.fallback.is_some() {
            route.breaker.as_ref()?.fallback.as_ref()
        } else {
            route.upstream.as_ref()
        }
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
            permit: None,
            fallback: None,
            outcome: None,
            retries: 0,
            backoff: None,
            budget_request: None,
            retry_guard: None,
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
                let Some(route) = ctx.route.map(|i| &snap.routes[i]) else {
                    return Ok(false);
                };
                if route.upstream.is_none() {
                    self.send_error(session, ctx, ErrorKind::Internal, "route has no upstream")
                        .await?;
                    return Ok(true);
                }
                if let Some(b) = &route.breaker {
                    let acquired = b.breaker.breaker.try_acquire(Instant::now());
                    b.breaker.observe(acquired.transition);
                    match acquired.admission {
                        Admission::Permitted(permit) => ctx.permit = Some((b.clone(), permit)),
                        Admission::Rejected { retry_after, state } => {
                            if b.fallback.is_some() {
                                b.breaker.short_fallback.inc();
                                ctx.fallback = Some(b.breaker.header(state));
                            } else {
                                b.breaker.short_response.inc();
                                ctx.error = Some(ErrorKind::CircuitOpen);
                                let resp = b.short_circuit(retry_after, state);
                                send(session, resp, ctx, Some(&route.chain)).await?;
                                return Ok(true);
                            }
                        }
                    }
                }
                if route.retry.max_retries() > 0 {
                    ctx.budget_request = ctx.upstream().map(|u| u.budget.request_started());
                }
                Ok(false)
            }
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if let Some(wait) = ctx.backoff.take() {
            tokio::time::sleep(wait).await;
        }
        let snap = ctx.snapshot()?.clone();
        let route_idx = ctx
            .route
            .ok_or_else(|| Error::explain(InternalError, "no route"))?;
        let route = &snap.routes[route_idx];
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
                .or_else(|| ctx.client_ip.map(|ip| ip.to_string().into_bytes()))
                .unwrap_or_default();
            crate::balancer::hash_key(&value)
        });
        let Some(idx) = up.pick_for_try(&ctx.tried, key, Instant::now()) else {
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
        let limit = match (deadline_left, route.retry.per_try_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let state = up.endpoints[idx].state.clone();
        state.inflight.fetch_add(1, Ordering::Relaxed);
        state.requests.fetch_add(1, Ordering::Relaxed);
        ctx.inflight = Some(InFlight(state));
        ctx.tried.push(idx);
        Ok(Box::new(up.peer(idx, &route.timeouts, limit)))
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
        if let Some(peer) = ctx.peer_ip.map(ip_text) {
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
        if let Some(v) = &ctx.fallback {
            resp.insert_header(BREAKER_HEADER, v.clone())?;
        }
        if let Some(route) = ctx.route.map(|i| &snap.routes[i]) {
            route
                .chain
                .on_response(resp.status, &mut RespEdit(resp), &ctx.filter);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        if status < 200 {
            return Ok(());
        }
        let outcome = UpstreamOutcome::Response(status);
        self.record_try(ctx, outcome);
        if self.start_retry(session, ctx, outcome) {
            // Nothing has been sent to the client: fail this try, and pingora asks
            // `upstream_peer` for another endpoint.
            let mut e = Error::explain(HTTPStatus(status), "retrying a retryable status");
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let outcome = UpstreamOutcome::ConnectFailure;
        self.record_try(ctx, outcome);
        e.set_retry(self.start_retry(session, ctx, outcome));
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if matches!(e.etype(), HTTPStatus(_)) && e.retry() {
            // A retryable status: `upstream_response_filter` decided and counted it.
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
        self.record_try(ctx, outcome);
        let retry = self.start_retry(session, ctx, outcome);
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let kind = ctx.error.unwrap_or_else(|| ErrorKind::of(e));
        ctx.error = Some(kind);
        if let Some(up) = ctx.route_entry().and_then(|r| r.upstream.as_ref()) {
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
        if let Some((b, permit)) = ctx.permit.take() {
            match ctx.outcome {
                // The call's duration is up to the upstream's answer (or failure) that
                // decided it, retries included, and not the time spent streaming a body.
                Some((outcome, at)) => {
                    let call = CallOutcome::classify(&b.failure_on, outcome, at - ctx.started);
                    b.breaker
                        .observe(b.breaker.breaker.record(permit, call, Instant::now()));
                }
                None => b.breaker.breaker.release(permit),
            }
        }
        let elapsed = ctx.started.elapsed();
        let handles = ctx
            .route_entry()
            .map_or(self.gateway.metrics.unrouted(), |r| &*r.metrics);
        handles.observe(status, elapsed);
        if ctx.snapshot.as_ref().is_some_and(|s| s.config.server.access_log) {
            self.gateway
                .access_log
                .submit(access_record(session, ctx, status, elapsed));
        }
        ctx.inflight = None;
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _error: &Error) -> bool {
        matches!(ctx.error, Some(ErrorKind::NoRoute))
    }
}

impl SluiceProxy {
    /// Reports how the current try ended to the upstream's outlier detector.
    fn record_try(&self, ctx: &mut Ctx, outcome: UpstreamOutcome) {
        let now = Instant::now();
        ctx.outcome = Some((outcome, now));
        let (Some(up), Some(&idx)) = (ctx.upstream(), ctx.tried.last()) else {
            return;
        };
        if let Some(ev) = up.outlier.record(idx, outcome, now) {
            if ev.enforced {
                up.metrics.ejection(ev.reason);
            }
            up.ejected_gauge
                .set(i64::try_from(up.outlier.ejected_count(now)).unwrap_or(i64::MAX));
            tracing::warn!(
                upstream = %up.id,
                endpoint = %ev.address,
                reason = ev.reason.as_str(),
                detail = %ev.detail,
                duration_ms = ev.duration.as_millis() as u64,
                enforced = ev.enforced,
                "outlier detection ejected an endpoint"
            );
        }
    }

    /// Whether the try that ended with `outcome` is retried: the route's policy allows
    /// it (condition, method, replayable body, count) and the upstream's budget has room.
    /// Counts the retry and sets the back-off before the next try.
    fn start_retry(&self, session: &Session, ctx: &mut Ctx, outcome: UpstreamOutcome) -> bool {
        let (guard, backoff) = {
            let Some(route) = ctx.route_entry() else {
                return false;
            };
            let policy = &route.retry;
            let replayable = !session.as_ref().retry_buffer_truncated()
                && session.as_ref().body_bytes_read() as u64 <= policy.max_buffered_body();
            if !policy.may_retry(outcome, &session.req_header().method, replayable, ctx.retries) {
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
            let retries = match ctx.fallback {
                Some(_) => &route.fallback_retries,
                None => &route.retries,
            };
            if let Some(m) = retries {
                m.retry(outcome);
            }
            (guard, policy.backoff(ctx.retries + 1, rand::random()))
        };
        ctx.retries += 1;
        ctx.retry_guard = guard;
        ctx.backoff = Some(backoff);
        true
    }
}

/// The access-log record of a finished request: owned copies of what `ctx` and the
/// session know, no formatting (that happens on the log's writer thread).
fn access_record(session: &Session, ctx: &Ctx, status: u16, elapsed: std::time::Duration) -> AccessRecord {
    let req = session.req_header();
    let route = ctx.route_entry();
    let up = ctx.upstream();
    AccessRecord {
        time: std::time::SystemTime::now() - elapsed,
        request_id: ctx.filter.request_id.clone(),
        client: ctx.client_ip,
        method: req.method.clone(),
        host: request_host(req).map(str::to_string),
        path: req.uri.path().to_string(),
        status,
        bytes_in: session.as_ref().body_bytes_read() as u64,
        bytes_out: session.as_ref().body_bytes_sent() as u64,
        duration: elapsed,
        upstream: up
            .zip(ctx.tried.last())
            .and_then(|(u, &i)| u.endpoints.get(i))
            .map(|e| e.address.clone()),
        upstream_time: None,
        route: route.map(|r| r.id.clone()),
        backend: up.map(|u| u.id.clone()),
        retries: ctx.retries,
        breaker: route
            .and_then(|r| r.breaker.as_ref())
            .map(|b| b.breaker.breaker.state()),
        user_agent: req
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        error: ctx.error.map(ErrorKind::code),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn request_ids_are_32_lower_hex_digits() {
        assert_eq!(hex32(0), "0".repeat(32));
        assert_eq!(hex32(u128::MAX), "f".repeat(32));
        assert_eq!(hex32(0xabc), format!("{:032x}", 0xabc));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(new_request_id(), id);
    }
}
