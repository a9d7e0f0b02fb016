//! The [`Filter`] trait and the per-route [`Chain`].
//!
//! A filter declares the phases it takes part in ([`Phases`]); the chain calls only
//! those, in the route's order. The gateway's pingora glue hands each pingora phase to
//! the chain and does nothing else with filters:
//!
//! | filter phase              | pingora phase              | typical use                        |
//! |---------------------------|----------------------------|------------------------------------|
//! | [`Filter::on_request`]    | `request_filter`           | auth, rate limit, redirect, answer |
//! | [`Filter::on_upstream_request`] | `upstream_request_filter` | request header changes     |
//! | [`Filter::on_response`]   | `response_filter`          | response header changes            |
//!
//! `on_request` is async so that filters which call out (forward auth, a shared rate
//! limit in Redis) fit the same seam as the ones that do not.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// The phases a filter takes part in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases {
    /// Runs [`Filter::on_request`].
    pub request: bool,
    /// Runs [`Filter::on_upstream_request`].
    pub upstream_request: bool,
    /// Runs [`Filter::on_response`].
    pub response: bool,
}

/// What a request-phase filter decided.
#[derive(Debug)]
pub enum Flow {
    /// Go on with the next filter, then proxy.
    Continue,
    /// Stop here and send this response; nothing is proxied.
    Respond(Response),
}

/// A response produced by the gateway itself (a filter's answer, or an error).
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// Status code.
    pub status: StatusCode,
    /// Headers, in order.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: Bytes,
}

/// Read access to the request, for filters and the router.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a Method,
    /// `http` or `https`, as the client used.
    pub scheme: &'a str,
    /// Host without port, if the request had one.
    pub host: Option<&'a str>,
    /// Host with port, as the client sent it (`Host` or `:authority`).
    pub authority: Option<&'a str>,
    /// Path.
    pub path: &'a str,
    /// Raw query, without `?`.
    pub query: Option<&'a str>,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// Client address after trusted-proxy resolution.
    pub client_ip: Option<IpAddr>,
}

/// Per-request state the filters share. Later filters (auth) put the consumer here.
#[derive(Debug, Default)]
pub struct FilterCtx {
    /// Request id (generated or propagated).
    pub request_id: String,
}

/// Write access to a header block, implemented for [`HeaderMap`] here and for pingora's
/// request and response headers in the gateway.
pub trait HeaderEdit {
    /// The current headers.
    fn headers(&self) -> &HeaderMap;
    /// Replaces all values of `name` with `value`.
    fn set(&mut self, name: HeaderName, value: HeaderValue);
    /// Adds `value` to `name`, keeping existing values.
    fn append(&mut self, name: HeaderName, value: HeaderValue);
    /// Removes every value of `name`.
    fn remove(&mut self, name: &HeaderName);
}

impl HeaderEdit for HeaderMap {
    fn headers(&self) -> &HeaderMap {
        self
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.insert(name, value);
    }
    fn append(&mut self, name: HeaderName, value: HeaderValue) {
        HeaderMap::append(self, name, value);
    }
    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
}

/// One step of a route's pipeline. Every method has a no-op default; [`Filter::phases`]
/// says which ones the chain calls.
#[async_trait]
pub trait Filter: Send + Sync {
    /// Short kind name for logs and metrics, e.g. `redirect`.
    fn kind(&self) -> &'static str;

    /// The phases this filter takes part in.
    fn phases(&self) -> Phases;

    /// Runs when the request headers have arrived, before an upstream is chosen.
    /// Default: [`Flow::Continue`].
    async fn on_request(&self, _req: &RequestView<'_>, _ctx: &mut FilterCtx) -> Flow {
        Flow::Continue
    }

    /// Runs on the request about to be sent upstream. Default: no change.
    fn on_upstream_request(&self, _headers: &mut dyn HeaderEdit, _ctx: &FilterCtx) {}

    /// Runs on the response headers about to be sent to the client (from the upstream or
    /// from a filter). Default: no change.
    fn on_response(&self, _status: StatusCode, _headers: &mut dyn HeaderEdit, _ctx: &FilterCtx) {}
}

/// A route's filters, split by phase at build time so each phase is a plain loop.
#[derive(Clone, Default)]
pub struct Chain {
    request: Vec<Arc<dyn Filter>>,
    upstream_request: Vec<Arc<dyn Filter>>,
    response: Vec<Arc<dyn Filter>>,
    kinds: Vec<&'static str>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain").field("filters", &self.kinds).finish()
    }
}

impl Chain {
    /// Builds a chain; each filter is registered for the phases it declares.
    pub fn new(filters: Vec<Arc<dyn Filter>>) -> Chain {
        let mut chain = Chain::default();
        for f in filters {
            let p = f.phases();
            chain.kinds.push(f.kind());
            if p.request {
                chain.request.push(f.clone());
            }
            if p.upstream_request {
                chain.upstream_request.push(f.clone());
            }
            if p.response {
                chain.response.push(f);
            }
        }
        chain
    }

    /// The filter kinds, in order.
    pub fn kinds(&self) -> &[&'static str] {
        &self.kinds
    }

    /// Runs the request phase; the first filter that answers stops the chain.
    pub async fn on_request(&self, req: &RequestView<'_>, ctx: &mut FilterCtx) -> Flow {
        for f in &self.request {
            if let Flow::Respond(r) = f.on_request(req, ctx).await {
                return Flow::Respond(r);
            }
        }
        Flow::Continue
    }

    /// Runs the upstream-request phase.
    pub fn on_upstream_request(&self, headers: &mut dyn HeaderEdit, ctx: &FilterCtx) {
        for f in &self.upstream_request {
            f.on_upstream_request(headers, ctx);
        }
    }

    /// Runs the response phase.
    pub fn on_response(&self, status: StatusCode, headers: &mut dyn HeaderEdit, ctx: &FilterCtx) {
        for f in &self.response {
            f.on_response(status, headers, ctx);
        }
    }

    /// Whether any filter takes part in the request phase.
    pub fn has_request_phase(&self) -> bool {
        !self.request.is_empty()
    }
}
