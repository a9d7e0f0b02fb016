//! The `cors` filter: Cross-Origin Resource Sharing for a route. The gateway answers
//! preflights itself (they never reach the upstream) and adds the CORS headers to the
//! actual requests' responses.
//!
//! ```yaml
//! filters:
//!   - cors:
//!       allow_origins: ["https://app.example.com", "https://*.example.com"]
//!       allow_methods: [GET, POST]
//!       allow_headers: [content-type, authorization]
//!       expose_headers: [x-request-id]
//!       allow_credentials: true
//!       max_age: 10m
//! ```
//!
//! - A **preflight** is an `OPTIONS` request with `Origin` and
//!   `Access-Control-Request-Method`. From an allowed origin it gets `204` with
//!   `Access-Control-Allow-Origin`, `-Allow-Methods`, `-Allow-Headers` (when any),
//!   `-Allow-Credentials` (when set) and `-Max-Age`; from any other origin, `403` with
//!   no CORS header. Either way the upstream is not called.
//! - An **actual request** (any other request with `Origin`) from an allowed origin
//!   goes upstream as usual and its response gets `Access-Control-Allow-Origin`,
//!   `-Allow-Credentials` and `-Expose-Headers` (replacing the upstream's); from another
//!   origin it goes upstream too and its response gets no CORS header, the upstream's
//!   removed (the browser then withholds it from the page). Responses that depend on
//!   the origin get `Vary: Origin`.
//! - `*` in `allow_origins` together with `allow_credentials: true` is refused at
//!   validation: it would let every site read responses made with the user's cookies
//!   (the Fetch standard forbids `Access-Control-Allow-Origin: *` with credentials, and
//!   echoing any origin instead is the same hole). List the origins instead.
//! - With `allow_credentials: true`, `*` in `allow_methods` or `allow_headers` is
//!   answered with the request's own method or headers, never a literal `*` (which
//!   browsers refuse on credentialed requests).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::registry::{parse, BuildCtx, Kind, SpecError};
use sluice_core::filter::{
    Filter, FilterCtx, Flow, HeaderEdit, Phases, Reject, RejectKind, RequestView, Response,
};

/// The registry entry.
pub const KIND: Kind = Kind {
    name: "cors",
    answers: false,
    build,
    redact: crate::registry::shown_as::<CorsSpec>,
    schema: Some(crate::registry::schema_of::<CorsSpec>),
};

/// A route's CORS policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsSpec {
    /// Origins allowed: exact (`https://app.example.com`, `http://localhost:3000`), a
    /// wildcard of subdomains (`https://*.example.com`: one or more labels before
    /// `.example.com`, same scheme and port), any host of a scheme (`https://*`), or `*`
    /// for any origin. A scheme's default port is the same origin as none. Required,
    /// non-empty.
    pub allow_origins: Vec<String>,
    /// Methods a preflight allows, or `[*]` for any (the requested method is echoed).
    /// Default: `GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS`.
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight allows, or `[*]` for any (the requested headers are
    /// echoed). CORS-safelisted headers need no entry. Default: empty.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers the page may read beyond the safelisted ones, or `[*]` (not with
    /// `allow_credentials`). Default: empty.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Whether the page may send credentials (cookies, `Authorization`) and read the
    /// response: `Access-Control-Allow-Credentials: true`. Default: `false`.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight's answer (`Access-Control-Max-Age`, whole
    /// seconds). `0s` sends no header (the browser's default, 5 s). Default: `5s` (the
    /// Gateway API default).
    #[schemars(with = "sluice_config::schema::DurationText")]
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        .map(String::from)
        .to_vec()
}

fn default_max_age() -> Duration {
    Duration::from_secs(5)
}

fn build(spec: &serde_json::Value, _ctx: &BuildCtx<'_>) -> Result<Arc<dyn Filter>, Vec<SpecError>> {
    let spec: CorsSpec = parse(spec)?;
    Ok(Arc::new(Cors::new(&spec)?))
}

/// One entry of `allow_origins`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    /// `*`.
    Any,
    /// An exact origin, lower case.
    Exact(String),
    /// `scheme://*.suffix[:port]`: `prefix` is `scheme://`, `suffix` is `.suffix[:port]`.
    Subdomains { prefix: String, suffix: String },
    /// `scheme://*[:port]`: any host with that scheme and port; `suffix` is `[:port]`.
    AnyHost { prefix: String, suffix: String },
}

/// `origin` without its scheme's default port (`https://a.test:443` is
/// `https://a.test`), as browsers serialize it.
fn without_default_port(origin: &str) -> &str {
    if origin.starts_with("https://") {
        origin.strip_suffix(":443").unwrap_or(origin)
    } else if origin.starts_with("http://") {
        origin.strip_suffix(":80").unwrap_or(origin)
    } else {
        origin
    }
}

impl OriginRule {
    fn parse(s: &str) -> Result<OriginRule, String> {
        if s == "*" {
            return Ok(OriginRule::Any);
        }
        let lower = without_default_port(&s.to_ascii_lowercase()).to_string();
        if lower == "null" {
            return Ok(OriginRule::Exact(lower));
        }
        let Some((scheme, rest)) = lower.split_once("://") else {
            return Err(format!(
                "{s:?} is not an origin (`https://app.example.com`, `https://*.example.com` or `*`)"
            ));
        };
        let scheme_ok = !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !scheme_ok || rest.is_empty() || rest.contains('/') || rest.ends_with(':') {
            return Err(format!(
                "{s:?} is not an origin: scheme://host[:port], without a path or a trailing slash"
            ));
        }
        let host_chars = |h: &str| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']'))
        };
        if rest == "*" || rest.starts_with("*:") {
            let port = &rest[1..];
            if port.len() > 1 && !port[1..].bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{s:?}: the port must be a number"));
            }
            return Ok(OriginRule::AnyHost {
                prefix: format!("{scheme}://"),
                suffix: port.to_string(),
            });
        }
        if let Some(suffix) = rest.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') || !host_chars(suffix) {
                return Err(format!("{s:?}: a wildcard origin is `scheme://*.domain[:port]`"));
            }
            return Ok(OriginRule::Subdomains {
                prefix: format!("{scheme}://"),
                suffix: format!(".{suffix}"),
            });
        }
        if rest.contains('*') {
            return Err(format!(
                "{s:?}: `*` may only stand for the leftmost labels (`https://*.example.com`)"
            ));
        }
        if !host_chars(rest) {
            return Err(format!("{s:?} has characters an origin's host cannot have"));
        }
        Ok(OriginRule::Exact(lower))
    }

    /// Whether `origin` (lower case) matches.
    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginRule::Any => origin != "null",
            OriginRule::Exact(o) => o == origin,
            OriginRule::Subdomains { prefix, suffix } => origin
                .strip_prefix(prefix.as_str())
                .and_then(|host| host.strip_suffix(suffix.as_str()))
                .is_some_and(|label| {
                    !label.is_empty() && !label.starts_with('.') && !label.contains([':', '/', '@'])
                }),
            OriginRule::AnyHost { prefix, suffix } => origin
                .strip_prefix(prefix.as_str())
                .and_then(|host| host.strip_suffix(suffix.as_str()))
                .is_some_and(|host| !host.is_empty() && !host.contains([':', '/', '@'])),
        }
    }
}

/// A header-name list as the spec says it: a fixed value, or "echo what was asked".
#[derive(Debug, Clone)]
enum List {
    /// Send this value; `None` when the list is empty.
    Fixed(Option<HeaderValue>),
    /// `*`: echo the request's value (with credentials), or send `*`.
    Any,
}

/// The `cors` filter, compiled.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<OriginRule>,
    /// `*` without credentials: every origin gets `Access-Control-Allow-Origin: *`, the
    /// answer does not depend on the origin, and no `Vary: Origin` is needed.
    star: bool,
    methods: List,
    headers: List,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

/// What `on_request` decided for an allowed origin, for `on_response`.
#[derive(Debug, Clone)]
struct Allowed(HeaderValue);

/// Marks a preflight the filter answered (its response already has its headers).
#[derive(Debug, Clone)]
struct Preflight;

/// Marks a request whose origin is not allowed: its response must carry no CORS header,
/// even one the upstream set.
#[derive(Debug, Clone)]
struct Refused;

/// A comma-separated header value from `items`, checked as header names (`names`) or
/// methods; errors at `field[i]`.
fn list(field: &str, items: &[String], names: bool, errors: &mut Vec<SpecError>) -> List {
    if items.iter().any(|i| i == "*") {
        if items.len() > 1 {
            errors.push(SpecError::at(field, "`*` stands alone"));
        }
        return List::Any;
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let checked = if names {
            HeaderName::from_bytes(item.as_bytes())
                .map(|n| n.as_str().to_string())
                .map_err(|_| format!("invalid header name {item:?}"))
        } else {
            Method::from_bytes(item.as_bytes())
                .ok()
                .filter(|_| item.bytes().all(|b| b.is_ascii_uppercase()))
                .map(|m| m.as_str().to_string())
                .ok_or_else(|| format!("invalid method {item:?} (methods are upper case, e.g. GET)"))
        };
        match checked {
            Ok(v) => out.push(v),
            Err(m) => errors.push(SpecError::at(format!("{field}[{i}]"), m)),
        }
    }
    List::Fixed(if out.is_empty() {
        None
    } else {
        HeaderValue::from_str(&out.join(", ")).ok()
    })
}

/// Why `*` in `allow_origins` is refused with `allow_credentials: true`.
pub const STAR_WITH_CREDENTIALS: &str = "`*` cannot be used with allow_credentials: true: it would let \
     every site read responses made with the user's credentials (the Fetch standard forbids \
     `Access-Control-Allow-Origin: *` with credentials). List the origins that may send \
     credentials instead, e.g. [\"https://app.example.com\", \"https://*.example.com\"], or set \
     allow_credentials: false";

impl Cors {
    /// Validates the spec (errors name their field and index) and compiles it.
    pub fn new(spec: &CorsSpec) -> Result<Cors, Vec<SpecError>> {
        let mut errors = Vec::new();
        let mut origins = Vec::new();
        if spec.allow_origins.is_empty() {
            errors.push(SpecError::at(
                "allow_origins",
                "needs at least one origin (or `*`)",
            ));
        }
        for (i, o) in spec.allow_origins.iter().enumerate() {
            match OriginRule::parse(o) {
                Ok(OriginRule::Any) if spec.allow_credentials => errors.push(SpecError::at(
                    format!("allow_origins[{i}]"),
                    STAR_WITH_CREDENTIALS,
                )),
                Ok(r) => origins.push(r),
                Err(m) => errors.push(SpecError::at(format!("allow_origins[{i}]"), m)),
            }
        }
        let methods = list("allow_methods", &spec.allow_methods, false, &mut errors);
        let headers = list("allow_headers", &spec.allow_headers, true, &mut errors);
        let expose = match list("expose_headers", &spec.expose_headers, true, &mut errors) {
            List::Any if spec.allow_credentials => {
                errors.push(SpecError::at(
                    "expose_headers",
                    "`*` is not honoured by browsers with allow_credentials: list the headers",
                ));
                None
            }
            List::Any => Some(HeaderValue::from_static("*")),
            List::Fixed(v) => v,
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let any = origins.contains(&OriginRule::Any);
        Ok(Cors {
            star: any && !spec.allow_credentials,
            origins,
            methods,
            headers,
            expose,
            credentials: spec.allow_credentials,
            max_age: (spec.max_age.as_secs() > 0).then(|| HeaderValue::from(spec.max_age.as_secs())),
        })
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, or `None` when it is not
    /// allowed.
    pub fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.star {
            return Some(HeaderValue::from_static("*"));
        }
        let text = origin.to_str().ok()?;
        let lower = text.to_ascii_lowercase();
        let lower = without_default_port(&lower);
        self.origins
            .iter()
            .any(|r| r.matches(lower))
            .then(|| origin.clone())
    }

    /// The answer to a preflight from `origin`: 204 with the allow headers, or a 403
    /// refusal when the origin is not allowed.
    pub fn preflight(&self, origin: &HeaderValue, req: &RequestView<'_>) -> Flow {
        let Some(allow) = self.allow_origin(origin) else {
            return Flow::Reject(Reject::new(RejectKind::Forbidden, "CORS origin not allowed"));
        };
        let mut headers = Vec::with_capacity(7);
        headers.push((ACCESS_CONTROL_ALLOW_ORIGIN, allow));
        if self.credentials {
            headers.push((ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true")));
        }
        let echo = |name: HeaderName| req.headers.get(name).cloned();
        let methods = match &self.methods {
            List::Fixed(v) => v.clone(),
            List::Any if self.credentials => echo(ACCESS_CONTROL_REQUEST_METHOD),
            List::Any => Some(HeaderValue::from_static("*")),
        };
        if let Some(v) = methods {
            headers.push((ACCESS_CONTROL_ALLOW_METHODS, v));
        }
        let allow_headers = match &self.headers {
            List::Fixed(v) => v.clone(),
            List::Any if self.credentials => echo(ACCESS_CONTROL_REQUEST_HEADERS),
            List::Any => Some(HeaderValue::from_static("*")),
        };
        if let Some(v) = allow_headers {
            headers.push((ACCESS_CONTROL_ALLOW_HEADERS, v));
        }
        if let Some(v) = &self.max_age {
            headers.push((ACCESS_CONTROL_MAX_AGE, v.clone()));
        }
        if !self.star {
            headers.push((VARY, HeaderValue::from_static("Origin")));
        }
        Flow::Respond(Response {
            status: StatusCode::NO_CONTENT,
            headers,
            body: Bytes::new(),
        })
    }
}

/// Whether `req` is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub fn is_preflight(req: &RequestView<'_>) -> bool {
    *req.method == Method::OPTIONS
        && req.headers.contains_key(ORIGIN)
        && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

#[async_trait]
impl Filter for Cors {
    fn kind(&self) -> &'static str {
        "cors"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            response: true,
            ..Phases::default()
        }
    }

    async fn on_request(&self, req: &RequestView<'_>, ctx: &mut FilterCtx) -> Flow {
        let Some(origin) = req.headers.get(ORIGIN) else {
            return Flow::Continue;
        };
        if is_preflight(req) {
            ctx.ext.insert(Preflight);
            return self.preflight(origin, req);
        }
        match self.allow_origin(origin) {
            Some(allow) => ctx.ext.insert(Allowed(allow)),
            None => ctx
                .ext
                .insert(Refused)
                .map(|Refused| Allowed(HeaderValue::from_static(""))),
        };
        Flow::Continue
    }

    fn on_response(&self, _status: StatusCode, headers: &mut dyn HeaderEdit, ctx: &FilterCtx) {
        if ctx.ext.get::<Preflight>().is_some() {
            // A refused preflight gets no CORS header, but caches must still key on the
            // origin.
            if !self.star && !headers.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN) {
                headers.append(VARY, HeaderValue::from_static("Origin"));
            }
            return;
        }
        if !self.star {
            headers.append(VARY, HeaderValue::from_static("Origin"));
        }
        let Some(Allowed(allow)) = ctx.ext.get::<Allowed>() else {
            return;
        };
        headers.set(ACCESS_CONTROL_ALLOW_ORIGIN, allow.clone());
        if self.credentials {
            headers.set(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        if let Some(v) = &self.expose {
            headers.set(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registry::build_for_test;
    use crate::test_support::block_on;
    use http::HeaderMap;

    fn cors(spec: serde_json::Value) -> Arc<dyn Filter> {
        build_for_test(build, &spec).unwrap()
    }

    fn run(f: &dyn Filter, method: Method, headers: &[(&str, &str)]) -> (Flow, HeaderMap, FilterCtx) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let req = RequestView {
            method: &method,
            scheme: "https",
            host: None,
            authority: None,
            path: "/",
            query: None,
            headers: &h,
            client_ip: None,
        };
        let mut ctx = FilterCtx::default();
        let flow = block_on(f.on_request(&req, &mut ctx));
        let mut resp = HeaderMap::new();
        if let Flow::Respond(r) = &flow {
            for (k, v) in &r.headers {
                resp.append(k.clone(), v.clone());
            }
        }
        f.on_response(StatusCode::OK, &mut resp, &ctx);
        (flow, resp, ctx)
    }

    fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
        h.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn origin_rules_match_exact_and_wildcard_origins() {
        let exact = OriginRule::parse("https://App.Example.com").unwrap();
        assert!(exact.matches("https://app.example.com"));
        assert!(!exact.matches("http://app.example.com"));
        assert!(!exact.matches("https://app.example.com:8443"));
        let wild = OriginRule::parse("https://*.example.com").unwrap();
        assert!(wild.matches("https://a.example.com"));
        assert!(wild.matches("https://a.b.example.com"));
        assert!(!wild.matches("https://example.com"));
        assert!(!wild.matches("https://.example.com"));
        assert!(!wild.matches("https://evil-example.com"));
        assert!(!wild.matches("https://a.example.com.evil.net"));
        assert!(!wild.matches("https://a.example.com:444"));
        assert!(!wild.matches("http://a.example.com"));
        let port = OriginRule::parse("http://*.local.test:8080").unwrap();
        assert!(port.matches("http://x.local.test:8080"));
        assert!(!port.matches("http://x.local.test"));
        assert!(!OriginRule::Any.matches("null"));
        let any_https = OriginRule::parse("https://*").unwrap();
        assert!(any_https.matches("https://a.b.test"));
        assert!(!any_https.matches("http://a.test"));
        assert!(!any_https.matches("https://a.test:8443"));
        let any_port = OriginRule::parse("http://*:8080").unwrap();
        assert!(any_port.matches("http://localhost:8080"));
        assert!(!any_port.matches("http://localhost"));
        // Default ports are the same origin as none (Gateway API's rule).
        let default_port = OriginRule::parse("https://app.test:443").unwrap();
        assert!(default_port.matches("https://app.test"));
        assert_eq!(without_default_port("https://app.test:443"), "https://app.test");
        assert_eq!(without_default_port("http://app.test:80"), "http://app.test");
        assert_eq!(without_default_port("http://app.test:443"), "http://app.test:443");
        for bad in [
            "example.com",
            "https://a.example.com/",
            "https://a.*.com",
            "https://*:x",
            "ht tp://x",
            "https://a b",
        ] {
            assert!(OriginRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn preflight_from_an_allowed_origin_is_answered() {
        let f = cors(serde_json::json!({
            "allow_origins": ["https://*.example.com"],
            "allow_methods": ["GET", "PUT"],
            "allow_headers": ["Content-Type", "x-token"],
            "max_age": "10m",
        }));
        let (flow, h, _) = run(
            &*f,
            Method::OPTIONS,
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
            ],
        );
        let Flow::Respond(r) = flow else {
            panic!("{flow:?}")
        };
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(get(&h, "access-control-allow-methods"), Some("GET, PUT"));
        assert_eq!(
            get(&h, "access-control-allow-headers"),
            Some("content-type, x-token")
        );
        assert_eq!(get(&h, "access-control-max-age"), Some("600"));
        assert_eq!(get(&h, "access-control-allow-credentials"), None);
        assert_eq!(
            h.get_all("vary").iter().count(),
            1,
            "on_response adds nothing: {h:?}"
        );
    }

    #[test]
    fn preflight_from_another_origin_is_refused_without_cors_headers() {
        let f = cors(serde_json::json!({"allow_origins": ["https://app.example.com"]}));
        let (flow, h, _) = run(
            &*f,
            Method::OPTIONS,
            &[
                ("origin", "https://evil.test"),
                ("access-control-request-method", "GET"),
            ],
        );
        let Flow::Reject(r) = flow else { panic!("{flow:?}") };
        assert_eq!(r.kind, RejectKind::Forbidden);
        assert!(
            !h.keys().any(|k| k.as_str().starts_with("access-control-")),
            "{h:?}"
        );
        assert_eq!(get(&h, "vary"), Some("Origin"));
    }

    #[test]
    fn options_without_request_method_is_an_actual_request() {
        let f = cors(serde_json::json!({"allow_origins": ["https://app.example.com"]}));
        let (flow, h, _) = run(&*f, Method::OPTIONS, &[("origin", "https://app.example.com")]);
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(get(&h, "access-control-allow-methods"), None);
    }

    #[test]
    fn actual_requests_get_origin_credentials_and_exposed_headers() {
        let f = cors(serde_json::json!({
            "allow_origins": ["https://app.example.com"],
            "expose_headers": ["x-request-id", "X-Total"],
            "allow_credentials": true,
        }));
        let (flow, h, _) = run(&*f, Method::POST, &[("origin", "https://app.example.com")]);
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(
            get(&h, "access-control-expose-headers"),
            Some("x-request-id, x-total")
        );
        assert_eq!(get(&h, "vary"), Some("Origin"));

        let (_, h, _) = run(&*f, Method::GET, &[("origin", "https://other.example.com")]);
        assert!(
            !h.keys().any(|k| k.as_str().starts_with("access-control-")),
            "{h:?}"
        );
        assert_eq!(get(&h, "vary"), Some("Origin"));

        let (_, h, _) = run(&*f, Method::GET, &[]);
        assert!(h.get("access-control-allow-origin").is_none());
    }

    #[test]
    fn star_without_credentials_is_a_literal_star_and_needs_no_vary() {
        let f =
            cors(serde_json::json!({"allow_origins": ["*"], "allow_methods": ["*"], "allow_headers": ["*"]}));
        let (_, h, _) = run(
            &*f,
            Method::OPTIONS,
            &[
                ("origin", "https://any.test"),
                ("access-control-request-method", "DELETE"),
            ],
        );
        assert_eq!(get(&h, "access-control-allow-origin"), Some("*"));
        assert_eq!(get(&h, "access-control-allow-methods"), Some("*"));
        assert_eq!(get(&h, "access-control-allow-headers"), Some("*"));
        assert_eq!(get(&h, "vary"), None);
        let (_, h, _) = run(&*f, Method::GET, &[("origin", "null")]);
        assert_eq!(get(&h, "access-control-allow-origin"), Some("*"));
    }

    #[test]
    fn star_origins_with_credentials_are_refused_with_what_to_do_instead() {
        let errs = build_for_test(
            build,
            &serde_json::json!({"allow_origins": ["https://a.test", "*"], "allow_credentials": true}),
        )
        .err()
        .unwrap();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "allow_origins[1]");
        assert!(
            errs[0].message.contains("List the origins"),
            "{}",
            errs[0].message
        );
        assert!(
            errs[0].message.contains("allow_credentials: false"),
            "{}",
            errs[0].message
        );
        // Without credentials `*` stays what it is.
        assert!(build_for_test(build, &serde_json::json!({"allow_origins": ["*"]})).is_ok());
    }

    #[test]
    fn star_methods_and_headers_with_credentials_echo_the_request_never_a_star() {
        let f = cors(serde_json::json!({
            "allow_origins": ["https://any.test"], "allow_methods": ["*"], "allow_headers": ["*"], "allow_credentials": true,
        }));
        let (_, h, _) = run(
            &*f,
            Method::OPTIONS,
            &[
                ("origin", "https://any.test"),
                ("access-control-request-method", "PATCH"),
                ("access-control-request-headers", "x-a, content-type"),
            ],
        );
        assert_eq!(get(&h, "access-control-allow-origin"), Some("https://any.test"));
        assert_eq!(get(&h, "access-control-allow-methods"), Some("PATCH"));
        assert_eq!(get(&h, "access-control-allow-headers"), Some("x-a, content-type"));
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(get(&h, "vary"), Some("Origin"));
        let (_, h, _) = run(&*f, Method::GET, &[("origin", "https://other.test")]);
        assert_eq!(get(&h, "access-control-allow-origin"), None);
    }

    #[test]
    fn spec_errors_name_their_entries() {
        let errs = build_for_test(
            build,
            &serde_json::json!({
                "allow_origins": ["https://ok.test", "ok.test"],
                "allow_methods": ["GET", "get", "B@D"],
                "allow_headers": ["x-ok", "bad header"],
                "expose_headers": ["*"],
                "allow_credentials": true,
            }),
        )
        .err()
        .unwrap();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "allow_origins[1]",
                "allow_methods[1]",
                "allow_methods[2]",
                "allow_headers[1]",
                "expose_headers"
            ],
            "{errs:?}"
        );
        let errs = build_for_test(build, &serde_json::json!({"allow_origins": []}))
            .err()
            .unwrap();
        assert_eq!(errs[0].path, "allow_origins");
        let errs = build_for_test(build, &serde_json::json!({"allow_origin": ["*"]}))
            .err()
            .unwrap();
        assert_eq!(errs[0].path, "allow_origin", "{errs:?}");
    }
}
