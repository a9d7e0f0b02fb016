//! The `redirect` filter: answers with a redirect instead of proxying.
//!
//! ```yaml
//! filters:
//!   - redirect: {status: 301, scheme: https}
//!   # HTTP to HTTPS only (HTTPS requests pass on to the next filter):
//!   - redirect: {status: 308, scheme: https, port: 443, only_http: true}
//! ```
//!
//! A port that is the scheme's default (443 for https, 80 for http) is left out of the
//! `Location`.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::registry::{parse, BuildCtx, Kind, SpecError};
use sluice_core::filter::{Filter, FilterCtx, Flow, Phases, RequestView, Response};

/// The registry entry.
pub const KIND: Kind = Kind {
    name: "redirect",
    answers: true,
    build,
    redact: crate::registry::shown_as::<RedirectSpec>,
    schema: Some(crate::registry::schema_of::<RedirectSpec>),
};

/// A redirect. Unset parts keep the request's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedirectSpec {
    /// Status: 301, 302, 303, 307 or 308. Default: `302`.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Scheme, `http` or `https`. Default: the request's.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Host. Default: the request's.
    #[serde(default)]
    pub host: Option<String>,
    /// Port. Default: none (the scheme's default port).
    #[serde(default)]
    pub port: Option<u16>,
    /// Path. Default: the request's (query kept).
    #[serde(default)]
    pub path: Option<String>,
    /// Redirect only requests that came over plain HTTP; HTTPS requests go on to the
    /// next filter (an HTTP to HTTPS redirect, ingress-nginx's `ssl-redirect`).
    /// Default: `false` (every request is redirected).
    #[serde(default)]
    pub only_http: bool,
}

fn default_status() -> u16 {
    302
}

fn build(spec: &serde_json::Value, _ctx: &BuildCtx<'_>) -> Result<Arc<dyn Filter>, Vec<SpecError>> {
    let spec: RedirectSpec = parse(spec)?;
    Ok(Arc::new(Redirect::new(&spec)?))
}

/// The `redirect` filter.
#[derive(Debug, Clone)]
pub struct Redirect {
    status: StatusCode,
    config: RedirectSpec,
}

impl Redirect {
    /// Validates the spec and builds the filter; every error names its field.
    pub fn new(c: &RedirectSpec) -> Result<Redirect, Vec<SpecError>> {
        let mut errors = Vec::new();
        if ![301, 302, 303, 307, 308].contains(&c.status) {
            errors.push(SpecError::at(
                "status",
                format!("{} is not a redirect status (301, 302, 303, 307, 308)", c.status),
            ));
        }
        if let Some(s) = &c.scheme {
            if s != "http" && s != "https" {
                errors.push(SpecError::at("scheme", format!("{s:?} must be http or https")));
            }
        }
        if let Some(h) = &c.host {
            if !sluice_config::validate::is_valid_host_pattern(h) || h.starts_with("*.") {
                errors.push(SpecError::at("host", format!("invalid host {h:?}")));
            }
        }
        if let Some(path) = &c.path {
            if !path.starts_with('/') {
                errors.push(SpecError::at("path", format!("{path:?} must start with '/'")));
            }
        }
        let status = StatusCode::from_u16(c.status).unwrap_or(StatusCode::FOUND);
        if errors.is_empty() {
            Ok(Redirect {
                status,
                config: c.clone(),
            })
        } else {
            Err(errors)
        }
    }

    /// The `Location` for a request.
    pub fn location(&self, req: &RequestView<'_>) -> String {
        let c = &self.config;
        let scheme = c.scheme.as_deref().unwrap_or(req.scheme);
        let port = match (scheme, c.port) {
            ("https", Some(443)) | ("http", Some(80)) | (_, None) => String::new(),
            (_, Some(p)) => format!(":{p}"),
        };
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
        if self.config.only_http && req.scheme == "https" {
            return Flow::Continue;
        }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::{HeaderMap, Method};

    fn view<'a>(headers: &'a HeaderMap, method: &'a Method) -> RequestView<'a> {
        RequestView {
            method,
            scheme: "http",
            host: Some("example.com"),
            authority: Some("example.com:8080"),
            path: "/old",
            query: Some("a=1"),
            headers,
            client_ip: None,
        }
    }

    #[test]
    fn keeps_unset_parts_of_the_request() {
        let f =
            crate::registry::build_for_test(build, &serde_json::json!({"scheme": "https", "path": "/new"}))
                .unwrap();
        let (h, m) = (HeaderMap::new(), Method::GET);
        let flow = futures_lite_block_on(f.on_request(&view(&h, &m), &mut FilterCtx::default()));
        let Flow::Respond(r) = flow else {
            panic!("expected a response")
        };
        assert_eq!(r.status, StatusCode::FOUND);
        assert_eq!(r.headers[0].1, "https://example.com:8080/new?a=1");
    }

    #[test]
    fn only_http_redirects_plain_requests_to_the_default_https_port() {
        let spec = serde_json::json!({"status": 308, "scheme": "https", "port": 443, "only_http": true});
        let f = crate::registry::build_for_test(build, &spec).unwrap();
        let (h, m) = (HeaderMap::new(), Method::GET);
        let flow = futures_lite_block_on(f.on_request(&view(&h, &m), &mut FilterCtx::default()));
        let Flow::Respond(r) = flow else {
            panic!("expected a response")
        };
        assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(r.headers[0].1, "https://example.com/old?a=1");
        let mut https = view(&h, &m);
        https.scheme = "https";
        let flow = futures_lite_block_on(f.on_request(&https, &mut FilterCtx::default()));
        assert!(matches!(flow, Flow::Continue), "{flow:?}");
    }

    #[test]
    fn every_bad_field_is_named() {
        let errs = crate::registry::build_for_test(
            build,
            &serde_json::json!({"status": 200, "scheme": "ftp", "path": "x"}),
        )
        .err()
        .unwrap();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["status", "scheme", "path"]);
        let errs = crate::registry::build_for_test(build, &serde_json::json!({"stauts": 301}))
            .err()
            .unwrap();
        assert!(errs[0].message.contains("unknown field `stauts`"), "{errs:?}");
    }

    /// Polls a future that never waits (the filters here answer at once).
    fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
        crate::test_support::block_on(f)
    }
}
