//! Filters that answer the request themselves: `redirect` and `direct_response`.

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use sluice_config::model::{DirectResponseConfig, RedirectConfig};

use crate::filter::{Filter, FilterCtx, Flow, Phases, RequestView, Response};
use crate::BuildError;

/// The `redirect` filter.
#[derive(Debug, Clone)]
pub struct Redirect {
    status: StatusCode,
    config: RedirectConfig,
}

impl Redirect {
    /// Builds the filter.
    pub fn new(config: &RedirectConfig) -> Result<Redirect, BuildError> {
        let status =
            StatusCode::from_u16(config.status).map_err(|e| BuildError(format!("redirect status: {e}")))?;
        Ok(Redirect {
            status,
            config: config.clone(),
        })
    }

    /// The `Location` for a request.
    pub fn location(&self, req: &RequestView<'_>) -> String {
        let c = &self.config;
        let scheme = c.scheme.as_deref().unwrap_or(req.scheme);
        let port = c.port.map(|p| format!(":{p}")).unwrap_or_default();
        // With neither host nor port configured, keep the authority the client used.
        let host = match (&c.host, c.port) {
            (Some(h), _) => h.as_str(),
            (None, Some(_)) => req.host.unwrap_or("localhost"),
            (None, None) => req.authority.or(req.host).unwrap_or("localhost"),
        };
        let path = c.path.as_deref().unwrap_or(req.path);
        let query = req.query.map(|q| format!("?{q}")).unwrap_or_default();
        format!("{scheme}://{host}{port}{path}{query}")
    }
}

#[async_trait]
impl Filter for Redirect {
    fn kind(&self) -> &'static str {
        "redirect"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            ..Phases::default()
        }
    }

    async fn on_request(&self, req: &RequestView<'_>, _ctx: &mut FilterCtx) -> Flow {
        let location = self.location(req);
        let headers = match HeaderValue::from_str(&location) {
            Ok(v) => vec![(http::header::LOCATION, v)],
            Err(_) => Vec::new(),
        };
        Flow::Respond(Response {
            status: self.status,
            headers,
            body: Bytes::new(),
        })
    }
}

/// The `direct_response` filter.
#[derive(Debug, Clone)]
pub struct DirectResponse {
    response: Response,
}

impl DirectResponse {
    /// Builds the filter.
    pub fn new(config: &DirectResponseConfig) -> Result<DirectResponse, BuildError> {
        let status = StatusCode::from_u16(config.status).map_err(|e| BuildError(format!("status: {e}")))?;
        let mut headers = Vec::new();
        for (k, v) in &config.headers {
            headers.push((
                HeaderName::from_bytes(k.as_bytes()).map_err(|e| BuildError(format!("header {k:?}: {e}")))?,
                HeaderValue::from_str(v).map_err(|e| BuildError(format!("header {k:?}: {e}")))?,
            ));
        }
        Ok(DirectResponse {
            response: Response {
                status,
                headers,
                body: Bytes::from(config.body.clone()),
            },
        })
    }
}

#[async_trait]
impl Filter for DirectResponse {
    fn kind(&self) -> &'static str {
        "direct_response"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            ..Phases::default()
        }
    }

    async fn on_request(&self, _req: &RequestView<'_>, _ctx: &mut FilterCtx) -> Flow {
        Flow::Respond(self.response.clone())
    }
}
