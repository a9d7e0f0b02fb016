//! The `networking.k8s.io/v1` Ingress translation (pure): Ingresses of Sluice's class
//! become routes and upstreams, with the supported ingress-nginx annotations.
//!
//! - Each path of each rule is one route (`k8s.<ns>.<ingress>.r<rule>.p<path>`) matching
//!   the rule's host and the path: `Exact` → `exact`, `Prefix` → `prefix` (segment-wise,
//!   as Kubernetes defines it), `ImplementationSpecific` → `prefix`, or a case-insensitive
//!   regex with `use-regex`. The default backend is a route matching any path of any
//!   host, below every rule.
//! - A backend Service port is one upstream (see [`crate::endpoints`]).
//! - A canary Ingress (`canary: "true"`) adds to the routes of the main Ingress with the
//!   same host and path: `canary-weight` becomes a backend weight in the main route's
//!   split (several canaries on one host each take their share, which ingress-nginx
//!   cannot do), and `canary-by-header` / `canary-by-cookie` a route of its own that
//!   matches the header or cookie and goes to the canary only (header value `always`, or
//!   `canary-by-header-value`, or `canary-by-header-pattern`), with `never` pinned to the
//!   main backends.
//! - Every annotation under `nginx.ingress.kubernetes.io/` that is not in
//!   [`SUPPORTED`], and every value that cannot be read, is a [`Report`].
//!
//! | ingress-nginx annotation | Sluice |
//! |---|---|
//! | `canary`, `canary-weight`, `canary-weight-total` | a backend weight in the main route's split (main keeps `total − Σ canary weights`) |
//! | `canary-by-header` (+ `-value` / `-pattern`), `canary-by-cookie` | a route of its own matching the header (exact / regex) or cookie (`always`); `never` pins the main backends |
//! | `rewrite-target` (+ `use-regex`) | `rewrite.prefix` with `strip_prefix` on prefix paths; `rewrite.regex` on regex paths (`$1` groups) |
//! | `app-root` | a `redirect` (302) route for the exact path `/` |
//! | `permanent-redirect` (+ `-code`), `temporal-redirect` | a `redirect` filter (301 / code, 302) |
//! | `proxy-connect-timeout`, `proxy-read-timeout`, `proxy-send-timeout` | route `timeouts.connect`, `read`, `write` (seconds) |
//! | `proxy-body-size` | route `limits.max_request_body` (`0`, unlimited, is refused) |
//! | `backend-protocol` | `HTTPS`: upstream TLS without verification (as ingress-nginx), `GRPC`: h2c, `GRPCS`: h2 over TLS |
//! | `upstream-vhost` | `headers.request.set.host` |
//! | `enable-cors`, `cors-allow-origin`, `-methods`, `-headers`, `-expose-headers`, `-credentials`, `-max-age` | a `cors` filter with ingress-nginx's defaults |
//! | `whitelist-source-range` / `allowlist-source-range`, `denylist-source-range` | an `ip_restriction` filter |
//! | `limit-rps` (+ `limit-burst-multiplier`, default 5) | a `rate_limit` filter per client IP |
//! | `limit-connections` | a `limit_conn` filter per client IP |
//! | `affinity: cookie`, `session-cookie-name` | the upstream's `consistent_hash: {cookie}` (Sluice hashes on the cookie; it does not set it) |
//! | `ssl-redirect` (default `"true"`), `force-ssl-redirect` | a `redirect` filter (308 to `https://<host>`, `only_http`) first on every route of an Ingress with `spec.tls` (unless `ssl-redirect: "false"`), or of any Ingress with `force-ssl-redirect: "true"` |
//!
//! A Service port with `backend-protocol` or `affinity` is an upstream of its own
//! (`k8s.<ns>.<svc>.<port>.grpc`, `.cookie-<name>`), so two Ingresses can name the same
//! Service differently.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::{HTTPIngressPath, Ingress, IngressBackend};
use kube::ResourceExt;
use serde_json::json;
use sluice_config::kubernetes::INGRESS_CONTROLLER;
use sluice_config::limits::ByteSize;
use sluice_config::model::{
    BackendConfig, FilterConfig, HashOn, LoadBalancing, PathMatch, RegexRewrite, Rewrite, RouteConfig,
    RouteMatch, UpstreamConfig, UpstreamProtocol, UpstreamTls, ValueMatch,
};

use crate::endpoints::{service_upstream, upstream_id, PortRef, Unresolved};
use crate::{ClusterObjects, ObjectRef, Report, Translation};

/// The ingress-nginx annotation prefix.
pub const NGINX: &str = "nginx.ingress.kubernetes.io/";

/// Sluice's own annotation prefix (policies attach through it).
pub const SLUICE: &str = "sluice.dev/";

/// The legacy class annotation.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// The annotation marking the default IngressClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// The ingress-nginx annotations (without the prefix) Sluice maps onto its features.
pub const SUPPORTED: &[&str] = &[
    "canary",
    "canary-by-header",
    "canary-by-header-value",
    "canary-by-header-pattern",
    "canary-by-cookie",
    "canary-weight",
    "canary-weight-total",
    "rewrite-target",
    "use-regex",
    "app-root",
    "permanent-redirect",
    "permanent-redirect-code",
    "temporal-redirect",
    "proxy-connect-timeout",
    "proxy-read-timeout",
    "proxy-send-timeout",
    "proxy-body-size",
    "backend-protocol",
    "upstream-vhost",
    "enable-cors",
    "cors-allow-origin",
    "cors-allow-methods",
    "cors-allow-headers",
    "cors-expose-headers",
    "cors-allow-credentials",
    "cors-max-age",
    "whitelist-source-range",
    "allowlist-source-range",
    "denylist-source-range",
    "limit-rps",
    "limit-burst-multiplier",
    "limit-connections",
    "affinity",
    "session-cookie-name",
    "ssl-redirect",
    "force-ssl-redirect",
];

/// Sluice's own annotations that the policy attachment reads (not this translation).
const SLUICE_KNOWN: &[&str] = &["policy"];

/// Whether `ing` belongs to Sluice: its class (field, else legacy annotation) is
/// `class`, or names an IngressClass whose controller is Sluice's, or it has no class
/// and Sluice's IngressClass is the default one.
pub fn is_ours(objects: &ClusterObjects, ing: &Ingress, class: &str) -> bool {
    let named = ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.clone())
        .or_else(|| ing.annotations().get(CLASS_ANNOTATION).cloned());
    let ours_class = |c: &k8s_openapi::api::networking::v1::IngressClass| {
        c.name_any() == class
            || c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(INGRESS_CONTROLLER)
    };
    match named {
        Some(n) if n == class => true,
        Some(n) => objects.ingress_classes.iter().any(|c| {
            c.name_any() == n
                && c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(INGRESS_CONTROLLER)
        }),
        None => objects.ingress_classes.iter().any(|c| {
            ours_class(c) && c.annotations().get(DEFAULT_CLASS_ANNOTATION).map(String::as_str) == Some("true")
        }),
    }
}

/// The annotations of one Ingress, read.
#[derive(Debug, Default, Clone)]
struct Annotations {
    canary: bool,
    canary_header: Option<String>,
    canary_header_value: Option<String>,
    canary_header_pattern: Option<String>,
    canary_cookie: Option<String>,
    canary_weight: Option<u32>,
    canary_weight_total: Option<u32>,
    rewrite_target: Option<String>,
    use_regex: bool,
    app_root: Option<String>,
    redirect: Option<(String, u16)>,
    connect: Option<u64>,
    read: Option<u64>,
    send: Option<u64>,
    body_size: Option<ByteSize>,
    protocol: Option<String>,
    vhost: Option<String>,
    cors: Option<serde_json::Value>,
    allow: Vec<String>,
    deny: Vec<String>,
    limit_rps: Option<u32>,
    burst_multiplier: Option<u32>,
    limit_conn: Option<u32>,
    affinity_cookie: Option<String>,
    /// Plain-HTTP requests get a 308 to https (`ssl-redirect` with `spec.tls`, or
    /// `force-ssl-redirect`).
    ssl_redirect: bool,
}

struct Reporter<'a> {
    object: ObjectRef,
    out: &'a mut Vec<Report>,
}

impl Reporter<'_> {
    fn report(&mut self, reason: &str, message: String) {
        self.out.push(Report {
            object: self.object.clone(),
            reason: reason.into(),
            message,
        });
    }

    fn invalid(&mut self, key: &str, value: &str, why: &str) {
        self.report(
            "InvalidAnnotation",
            format!("annotation {NGINX}{key}: {value:?} {why}; ignored"),
        );
    }
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn read_annotations(ing: &Ingress, r: &mut Reporter<'_>) -> Annotations {
    let mut a = Annotations::default();
    let ann = ing.annotations();
    let get = |k: &str| ann.get(&format!("{NGINX}{k}")).map(|v| v.trim().to_string());
    let truthy = |k: &str| get(k).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    for (key, value) in ann {
        if let Some(k) = key.strip_prefix(NGINX) {
            if SUPPORTED.contains(&k) {
                continue;
            }
            let why = "is not supported by Sluice";
            r.report(
                "UnsupportedAnnotation",
                format!("annotation {key}={value:?} {why}; ignored"),
            );
        } else if let Some(k) = key.strip_prefix(SLUICE) {
            if !SLUICE_KNOWN.contains(&k) {
                r.report(
                    "UnsupportedAnnotation",
                    format!("annotation {key}={value:?} is unknown; ignored"),
                );
            }
        }
    }
    let num = |k: &str, r: &mut Reporter<'_>| -> Option<u32> {
        let v = get(k)?;
        match v.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                r.invalid(k, &v, "is not a whole number");
                None
            }
        }
    };
    a.canary = truthy("canary");
    a.canary_header = get("canary-by-header").filter(|s| !s.is_empty());
    a.canary_header_value = get("canary-by-header-value").filter(|s| !s.is_empty());
    a.canary_header_pattern = get("canary-by-header-pattern").filter(|s| !s.is_empty());
    if let Some(p) = &a.canary_header_pattern {
        if regex_ok(p).is_err() {
            r.invalid("canary-by-header-pattern", p, "is not a valid regex");
            a.canary_header_pattern = None;
        }
    }
    a.canary_cookie = get("canary-by-cookie").filter(|s| !s.is_empty());
    a.canary_weight = num("canary-weight", r);
    a.canary_weight_total = num("canary-weight-total", r).filter(|&t| t > 0);
    a.rewrite_target = get("rewrite-target");
    a.use_regex = truthy("use-regex");
    a.app_root = get("app-root").filter(|s| s.starts_with('/'));
    if let Some(url) = get("permanent-redirect") {
        let code = num("permanent-redirect-code", r)
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(301);
        a.redirect = Some((url, code));
    } else if let Some(url) = get("temporal-redirect") {
        a.redirect = Some((url, 302));
    }
    a.connect = num("proxy-connect-timeout", r).map(u64::from);
    a.read = num("proxy-read-timeout", r).map(u64::from);
    a.send = num("proxy-send-timeout", r).map(u64::from);
    if let Some(v) = get("proxy-body-size") {
        match ByteSize::parse(&v) {
            Ok(b) if b.0 > 0 => a.body_size = Some(b),
            Ok(_) => r.invalid("proxy-body-size", &v, "(unlimited) is not supported"),
            Err(e) => r.invalid("proxy-body-size", &v, &e),
        }
    }
    if let Some(p) = get("backend-protocol") {
        match p.to_ascii_uppercase().as_str() {
            "HTTP" | "HTTPS" | "GRPC" | "GRPCS" => a.protocol = Some(p.to_ascii_uppercase()),
            _ => r.invalid(
                "backend-protocol",
                &p,
                "is not supported (HTTP, HTTPS, GRPC, GRPCS are)",
            ),
        }
    }
    a.vhost = get("upstream-vhost").filter(|s| !s.is_empty());
    if truthy("enable-cors") {
        let origins = get("cors-allow-origin").map_or_else(|| vec!["*".to_string()], |v| list(&v));
        let methods = get("cors-allow-methods")
            .map_or_else(|| list("GET, PUT, POST, DELETE, PATCH, OPTIONS"), |v| list(&v));
        let headers = get("cors-allow-headers").map_or_else(
            || list("DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization"),
            |v| list(&v),
        );
        let expose = get("cors-expose-headers").map(|v| list(&v)).unwrap_or_default();
        // ingress-nginx sends credentials by default, also with its default origin `*`,
        // which browsers refuse for credentialed requests (and Sluice refuses at
        // validation): with `*` and no annotation, no credentials, so what worked still
        // does. An explicit `true` with `*` is reported as the filter's error.
        let credentials = match get("cors-allow-credentials") {
            Some(v) => v.eq_ignore_ascii_case("true"),
            None => !origins.iter().any(|o| o == "*"),
        };
        let max_age = num("cors-max-age", r).unwrap_or(1_728_000);
        a.cors = Some(json!({
            "allow_origins": origins,
            "allow_methods": methods,
            "allow_headers": headers,
            "expose_headers": expose,
            "allow_credentials": credentials,
            "max_age": format!("{max_age}s"),
        }));
    }
    a.allow = get("whitelist-source-range")
        .or_else(|| get("allowlist-source-range"))
        .map(|v| list(&v))
        .unwrap_or_default();
    a.deny = get("denylist-source-range").map(|v| list(&v)).unwrap_or_default();
    a.limit_rps = num("limit-rps", r).filter(|&n| n > 0);
    a.burst_multiplier = num("limit-burst-multiplier", r).filter(|&n| n > 0);
    a.limit_conn = num("limit-connections", r).filter(|&n| n > 0);
    let has_tls = ing
        .spec
        .as_ref()
        .and_then(|s| s.tls.as_ref())
        .is_some_and(|t| !t.is_empty());
    let flag = |k: &str, default: bool, r: &mut Reporter<'_>| match get(k) {
        None => default,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            r.invalid(k, &v, "is not \"true\" or \"false\"");
            default
        }
    };
    let force = flag("force-ssl-redirect", false, r);
    let ssl = flag("ssl-redirect", true, r);
    a.ssl_redirect = force || (has_tls && ssl);
    if let Some(kind) = get("affinity") {
        if kind == "cookie" {
            a.affinity_cookie = Some(get("session-cookie-name").unwrap_or_else(|| "INGRESSCOOKIE".into()));
        } else {
            r.invalid("affinity", &kind, "is not supported (only \"cookie\" is)");
        }
    }
    a
}

fn regex_ok(p: &str) -> Result<(), String> {
    regex_syntax::Parser::new()
        .parse(p)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One route of an Ingress before canaries are attached.
struct Built {
    route: RouteConfig,
    /// host and path (type, value) for matching canaries.
    key: (String, String, String),
    /// Whether it came from the default backend.
    default: bool,
}

/// The shared state of one translation.
struct Ctx<'a> {
    objects: &'a ClusterObjects,
    upstreams: BTreeMap<String, UpstreamConfig>,
    reports: Vec<Report>,
}

impl Ctx<'_> {
    /// The upstream for a backend with the annotations' upstream settings; `None` with
    /// a report when the backend cannot be used.
    fn backend(&mut self, ing: &Ingress, b: &IngressBackend, a: &Annotations) -> Result<String, Unresolved> {
        let object = ObjectRef::of(ing);
        let ns = ing.namespace().unwrap_or_default();
        let Some(svc) = &b.service else {
            let m = "a resource backend is not supported".to_string();
            self.reports.push(Report {
                object,
                reason: "UnsupportedBackend".into(),
                message: m.clone(),
            });
            return Err(Unresolved::NoPort(m));
        };
        let port = match svc.port.as_ref() {
            Some(p) if p.name.as_deref().is_some_and(|n| !n.is_empty()) => {
                PortRef::Name(p.name.clone().unwrap_or_default())
            }
            Some(p) => PortRef::Number(p.number.unwrap_or(0)),
            None => PortRef::Number(0),
        };
        let mut up = match service_upstream(self.objects, &ns, &svc.name, &port) {
            Ok(u) => u,
            Err(e) => {
                if !matches!(e, Unresolved::NoEndpoints) {
                    self.reports.push(Report {
                        object,
                        reason: "BackendNotFound".into(),
                        message: format!("backend {}:{port}: {e}; answering 503", svc.name),
                    });
                }
                return Err(e);
            }
        };
        let mut suffix = String::new();
        match a.protocol.as_deref() {
            Some("HTTPS") => {
                up.tls = Some(UpstreamTls {
                    sni: None,
                    verify: false,
                    ca: None,
                    ca_pem: None,
                    subject_alt_names: Vec::new(),
                });
                suffix.push_str(".https");
            }
            Some("GRPC") => {
                up.protocol = UpstreamProtocol::H2;
                suffix.push_str(".grpc");
            }
            Some("GRPCS") => {
                up.protocol = UpstreamProtocol::H2;
                up.tls = Some(UpstreamTls {
                    sni: None,
                    verify: false,
                    ca: None,
                    ca_pem: None,
                    subject_alt_names: Vec::new(),
                });
                suffix.push_str(".grpcs");
            }
            _ => {}
        }
        if let Some(c) = &a.affinity_cookie {
            up.load_balancing = LoadBalancing::ConsistentHash(HashOn::Cookie(c.clone()));
            suffix.push_str(".cookie-");
            suffix.push_str(&c.to_ascii_lowercase());
        }
        let id = format!("{}{suffix}", upstream_id(&ns, &svc.name, &port));
        up.id = id.clone();
        self.upstreams.insert(id.clone(), up);
        Ok(id)
    }
}

fn path_match(p: &HTTPIngressPath, a: &Annotations) -> (PathMatch, String, String) {
    let path = p
        .path
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/".into());
    let kind = p.path_type.clone();
    let m = match kind.as_str() {
        "Exact" => PathMatch::Exact(path.clone()),
        _ if a.use_regex || a.rewrite_target.as_deref().is_some_and(|t| t.contains('$')) => {
            PathMatch::Regex(format!("(?i){path}.*"))
        }
        _ => {
            let trimmed = path.trim_end_matches('/');
            PathMatch::Prefix(if trimmed.is_empty() {
                "/".into()
            } else {
                trimmed.into()
            })
        }
    };
    (m, kind, path)
}

fn redirect_filter(url: &str, status: u16) -> Option<FilterConfig> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse::<u16>().ok()),
        _ => (authority, None),
    };
    let mut spec = json!({"status": status, "scheme": scheme, "host": host, "path": path});
    if let Some(p) = port {
        spec["port"] = json!(p);
    }
    Some(FilterConfig {
        kind: "redirect".into(),
        spec,
    })
}

/// The 503 a route answers while its Service has no endpoint.
fn unavailable() -> FilterConfig {
    FilterConfig {
        kind: "direct_response".into(),
        spec: json!({"status": 503, "body": "no endpoint available for this backend\n"}),
    }
}

/// A route with `id` and `matches` and every other field at its default (no backend, no
/// filters), for translations to fill in.
pub(crate) fn new_route(id: String, matches: RouteMatch) -> RouteConfig {
    RouteConfig {
        id,
        priority: 0,
        matches,
        upstream: None,
        backends: Vec::new(),
        timeouts: Default::default(),
        rewrite: None,
        headers: Default::default(),
        filters: Vec::new(),
        circuit_breaker: None,
        retries: None,
        limits: Default::default(),
        request_buffering: None,
        rollout: None,
        compression: None,
        cache: None,
        grpc_web: false,
        error_pages: None,
    }
}

/// The ssl-redirect filter: plain-HTTP requests get a 308 to the same host and path
/// over https (port 443), HTTPS requests pass.
fn ssl_redirect() -> FilterConfig {
    FilterConfig {
        kind: "redirect".into(),
        spec: json!({"status": 308, "scheme": "https", "port": 443, "only_http": true}),
    }
}

/// Applies the route-level annotations.
fn decorate(route: &mut RouteConfig, a: &Annotations, r: &mut Reporter<'_>) {
    if a.ssl_redirect {
        // First, as ingress-nginx redirects before anything else runs.
        route.filters.push(ssl_redirect());
    }
    let secs = |n: Option<u64>| n.map(std::time::Duration::from_secs);
    route.timeouts.connect = secs(a.connect);
    route.timeouts.read = secs(a.read);
    route.timeouts.write = secs(a.send);
    if let Some(b) = a.body_size {
        route.limits.max_request_body = Some(b);
    }
    if let Some(h) = &a.vhost {
        route.headers.request.set.insert("host".into(), h.clone());
    }
    if !a.allow.is_empty() || !a.deny.is_empty() {
        route.filters.push(FilterConfig {
            kind: "ip_restriction".into(),
            spec: json!({"allow": a.allow, "deny": a.deny}),
        });
    }
    if let Some(c) = &a.cors {
        route.filters.push(FilterConfig {
            kind: "cors".into(),
            spec: c.clone(),
        });
    }
    if let Some(n) = a.limit_rps {
        let burst = n.saturating_mul(a.burst_multiplier.unwrap_or(5));
        route.filters.push(FilterConfig {
            kind: "rate_limit".into(),
            spec: json!({"key": "client_ip", "requests": n, "per": "1s", "burst": burst}),
        });
    }
    if let Some(n) = a.limit_conn {
        route.filters.push(FilterConfig {
            kind: "limit_conn".into(),
            spec: json!({"key": "client_ip", "max": n}),
        });
    }
    if let Some((url, code)) = &a.redirect {
        match redirect_filter(url, *code) {
            Some(f) => route.filters.push(f),
            None => r.invalid("permanent-redirect", url, "is not an absolute URL"),
        }
    }
    if let Some(target) = &a.rewrite_target {
        match &route.matches.path {
            Some(PathMatch::Regex(re)) => {
                let pattern = re.trim_end_matches(".*").to_string();
                route.rewrite = Some(Rewrite {
                    strip_prefix: false,
                    prefix: None,
                    path: None,
                    regex: Some(RegexRewrite {
                        pattern: format!("^{pattern}"),
                        replacement: target.clone(),
                    }),
                });
            }
            Some(PathMatch::Prefix(_)) => {
                route.rewrite = Some(Rewrite {
                    strip_prefix: true,
                    prefix: Some(target.clone()),
                    path: None,
                    regex: None,
                });
            }
            Some(PathMatch::Exact(_)) | None => {
                route.rewrite = Some(Rewrite {
                    strip_prefix: false,
                    prefix: None,
                    path: Some(target.clone()),
                    regex: None,
                });
            }
        }
    }
}

fn set_backend(route: &mut RouteConfig, upstream: Result<String, Unresolved>) {
    match upstream {
        Ok(u) => route.upstream = Some(u),
        Err(_) => route.filters.push(unavailable()),
    }
}

fn sort_key(i: &Ingress) -> (String, String) {
    (i.namespace().unwrap_or_default(), i.name_any())
}

/// Routes and upstreams for every Ingress of `class` (see
/// `KubernetesConfig::ingress_class`) in `objects`, and reports on what could not be
/// taken as written.
pub fn translate(objects: &ClusterObjects, class: &str) -> Translation {
    let mut ingresses: Vec<&Ingress> = objects
        .ingresses
        .iter()
        .filter(|i| is_ours(objects, i, class))
        .collect();
    ingresses.sort_by_key(|i| sort_key(i));
    let mut ctx = Ctx {
        objects,
        upstreams: BTreeMap::new(),
        reports: Vec::new(),
    };
    let mut mains: Vec<Built> = Vec::new();
    let mut canaries: Vec<(&Ingress, Annotations)> = Vec::new();
    for ing in &ingresses {
        let mut reports = Vec::new();
        let mut r = Reporter {
            object: ObjectRef::of(*ing),
            out: &mut reports,
        };
        let a = read_annotations(ing, &mut r);
        ctx.reports.append(&mut reports);
        if a.canary {
            canaries.push((ing, a));
            continue;
        }
        let (ns, name) = sort_key(ing);
        let base = format!("k8s.{ns}.{name}");
        let spec = ing.spec.clone().unwrap_or_default();
        for (ri, rule) in spec.rules.iter().flatten().enumerate() {
            let host = rule.host.clone().unwrap_or_default();
            let hosts = if host.is_empty() {
                Vec::new()
            } else {
                vec![host.to_ascii_lowercase()]
            };
            if let Some(root) = &a.app_root {
                let mut route = new_route(
                    format!("{base}.r{ri}.app-root"),
                    RouteMatch {
                        hosts: hosts.clone(),
                        path: Some(PathMatch::Exact("/".into())),
                        ..Default::default()
                    },
                );
                if a.ssl_redirect {
                    route.filters.push(ssl_redirect());
                }
                route.filters.push(FilterConfig {
                    kind: "redirect".into(),
                    spec: json!({"status": 302, "path": root}),
                });
                mains.push(Built {
                    route,
                    key: (host.clone(), "app-root".into(), String::new()),
                    default: false,
                });
            }
            let Some(http) = &rule.http else { continue };
            for (pi, p) in http.paths.iter().enumerate() {
                let (m, kind, path) = path_match(p, &a);
                let mut route = new_route(
                    format!("{base}.r{ri}.p{pi}"),
                    RouteMatch {
                        hosts: hosts.clone(),
                        path: Some(m),
                        ..Default::default()
                    },
                );
                let mut reports = Vec::new();
                let mut r = Reporter {
                    object: ObjectRef::of(*ing),
                    out: &mut reports,
                };
                decorate(&mut route, &a, &mut r);
                ctx.reports.append(&mut reports);
                let up = ctx.backend(ing, &p.backend, &a);
                set_backend(&mut route, up);
                mains.push(Built {
                    route,
                    key: (host.clone(), kind, path),
                    default: false,
                });
            }
        }
        if let Some(b) = &spec.default_backend {
            let mut route = new_route(format!("{base}.default"), RouteMatch::default());
            route.priority = -1000;
            let mut reports = Vec::new();
            let mut r = Reporter {
                object: ObjectRef::of(*ing),
                out: &mut reports,
            };
            decorate(&mut route, &a, &mut r);
            ctx.reports.append(&mut reports);
            let up = ctx.backend(ing, b, &a);
            set_backend(&mut route, up);
            mains.push(Built {
                route,
                key: (String::new(), "default".into(), String::new()),
                default: true,
            });
        }
    }
    let mut extra: Vec<RouteConfig> = Vec::new();
    // Canary weights per main route: (upstream, weight, total).
    let mut splits: BTreeMap<usize, Vec<(String, u32, u32)>> = BTreeMap::new();
    for (ing, a) in &canaries {
        let (ns, name) = sort_key(ing);
        let spec = ing.spec.clone().unwrap_or_default();
        let mut targets: Vec<((String, String, String), &IngressBackend, String)> = Vec::new();
        for (ri, rule) in spec.rules.iter().flatten().enumerate() {
            let host = rule.host.clone().unwrap_or_default();
            for (pi, p) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
                let (_, kind, path) = path_match(p, a);
                targets.push(((host.clone(), kind, path), &p.backend, format!("r{ri}.p{pi}")));
            }
        }
        if let Some(b) = &spec.default_backend {
            targets.push((
                (String::new(), "default".into(), String::new()),
                b,
                "default".into(),
            ));
        }
        for (key, backend, tag) in targets {
            let Some(main) = mains.iter().position(|m| m.key == key) else {
                ctx.reports.push(Report {
                    object: ObjectRef::of(*ing),
                    reason: "CanaryWithoutMain".into(),
                    message: format!(
                        "canary host {:?} path {:?} ({}) has no main Ingress with the same host and path; ignored",
                        key.0, key.2, key.1
                    ),
                });
                continue;
            };
            // The canary's upstream keeps the main Ingress's upstream settings.
            let Ok(up) = ctx.backend(ing, backend, a) else {
                continue;
            };
            let base = &mains[main].route;
            let id = format!("{}.canary.{ns}.{name}.{tag}", base.id);
            let header_route = |suffix: &str, cond: ValueMatch, to: Option<&str>| {
                let mut r = base.clone();
                r.id = format!("{id}.{suffix}");
                r.matches.headers.push(cond);
                if let Some(to) = to {
                    r.filters.retain(|f| f.kind != "direct_response");
                    r.upstream = Some(to.to_string());
                    r.backends.clear();
                }
                r
            };
            if let Some(h) = &a.canary_header {
                let cond = |exact: Option<String>, regex: Option<String>| ValueMatch {
                    name: h.clone(),
                    exact,
                    regex,
                    present: None,
                };
                if let Some(v) = &a.canary_header_value {
                    extra.push(header_route("header", cond(Some(v.clone()), None), Some(&up)));
                } else if let Some(p) = &a.canary_header_pattern {
                    extra.push(header_route("header", cond(None, Some(p.clone())), Some(&up)));
                } else {
                    extra.push(header_route(
                        "header",
                        cond(Some("always".into()), None),
                        Some(&up),
                    ));
                    extra.push(header_route(
                        "header-never",
                        cond(Some("never".into()), None),
                        None,
                    ));
                }
            }
            if let Some(c) = &a.canary_cookie {
                let cookie = |v: &str| ValueMatch {
                    name: "cookie".into(),
                    exact: None,
                    regex: Some(format!("(.*;\\s*)?{}={v}(;.*)?", regex_syntax::escape(c))),
                    present: None,
                };
                extra.push(header_route("cookie", cookie("always"), Some(&up)));
                extra.push(header_route("cookie-never", cookie("never"), None));
            }
            if let Some(w) = a.canary_weight {
                let total = a.canary_weight_total.unwrap_or(100);
                splits.entry(main).or_default().push((up, w.min(total), total));
            }
        }
    }
    let mut routes = Vec::new();
    for (i, mut m) in mains.into_iter().enumerate() {
        if let (Some(split), Some(main_up)) = (splits.get(&i), m.route.upstream.clone()) {
            let total = split.iter().map(|s| s.2).max().unwrap_or(100);
            let taken: u32 = split.iter().map(|s| s.1).sum();
            let mut backends = vec![BackendConfig {
                upstream: main_up,
                weight: total.saturating_sub(taken),
            }];
            for (u, w, _) in split {
                backends.push(BackendConfig {
                    upstream: u.clone(),
                    weight: *w,
                });
            }
            if backends.iter().all(|b| b.weight == 0) {
                backends[0].weight = 1;
            }
            m.route.upstream = None;
            m.route.backends = backends;
        }
        let _ = m.default;
        routes.push(m.route);
    }
    routes.extend(extra);
    let mut seen = BTreeSet::new();
    routes.retain(|r| seen.insert(r.id.clone()));
    Translation {
        routes,
        upstreams: ctx.upstreams.into_values().collect(),
        reports: ctx.reports,
        ..Translation::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::objects::PrioritizedSlice;
    use serde_json::Value;

    fn svc(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "ns"},
            "spec": {"ports": [{"name": "http", "port": 80}]}})
    }

    fn slice(svc: &str, ip: &str, port: u16, ready: bool, terminating: bool) -> PrioritizedSlice {
        PrioritizedSlice {
            priority: 0,
            slice: serde_json::from_value(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{svc}-{ip}"), "namespace": "ns", "labels": {"kubernetes.io/service-name": svc}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": port}],
                "endpoints": [{"addresses": [ip], "conditions": {"ready": ready, "serving": ready || terminating, "terminating": terminating}}]}))
            .unwrap(),
        }
    }

    fn ing(name: &str, annotations: Value, spec: Value) -> Ingress {
        serde_json::from_value(json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "ns", "annotations": annotations, "uid": format!("uid-{name}")},
            "spec": spec}))
        .unwrap()
    }

    fn rules(host: &str, paths: Value) -> Value {
        json!({"ingressClassName": "sluice", "rules": [{"host": host, "http": {"paths": paths}}]})
    }

    fn path(p: &str, kind: &str, svc: &str) -> Value {
        json!({"path": p, "pathType": kind, "backend": {"service": {"name": svc, "port": {"number": 80}}}})
    }

    fn objects(ingresses: Vec<Ingress>, services: &[&str]) -> ClusterObjects {
        ClusterObjects {
            ingresses,
            services: services
                .iter()
                .map(|s| serde_json::from_value(svc(s)).unwrap())
                .collect(),
            endpoint_slices: services
                .iter()
                .enumerate()
                .map(|(i, s)| slice(s, &format!("10.0.0.{}", i + 1), 8080, true, false))
                .collect(),
            ..ClusterObjects::default()
        }
    }

    #[test]
    fn paths_hosts_and_default_backend() {
        let mut spec = rules(
            "A.example",
            json!([
                path("/", "Prefix", "web"),
                path("/api/", "Prefix", "api"),
                path("/x", "Exact", "api"),
                path("/i", "ImplementationSpecific", "api")
            ]),
        );
        spec["defaultBackend"] = json!({"service": {"name": "web", "port": {"number": 80}}});
        let o = objects(vec![ing("site", json!({}), spec)], &["web", "api"]);
        let t = translate(&o, "sluice");
        assert!(t.reports.is_empty(), "{:?}", t.reports);
        let paths: Vec<_> = t
            .routes
            .iter()
            .map(|r| (r.matches.hosts.clone(), r.matches.path.clone()))
            .collect();
        assert_eq!(
            paths[0],
            (vec!["a.example".to_string()], Some(PathMatch::Prefix("/".into())))
        );
        assert_eq!(paths[1].1, Some(PathMatch::Prefix("/api".into())));
        assert_eq!(paths[2].1, Some(PathMatch::Exact("/x".into())));
        assert_eq!(paths[3].1, Some(PathMatch::Prefix("/i".into())));
        let default = t.routes.iter().find(|r| r.id == "k8s.ns.site.default").unwrap();
        assert!(default.matches.hosts.is_empty() && default.priority < 0);
        assert_eq!(default.upstream.as_deref(), Some("k8s.ns.web.80"));
        let api = t.upstreams.iter().find(|u| u.id == "k8s.ns.api.80").unwrap();
        assert_eq!(api.endpoints[0].address, "10.0.0.2:8080");
    }

    #[test]
    fn another_class_is_not_ours() {
        let mut spec = rules("a", json!([path("/", "Prefix", "web")]));
        spec["ingressClassName"] = json!("nginx");
        let o = objects(vec![ing("site", json!({}), spec)], &["web"]);
        assert!(translate(&o, "sluice").routes.is_empty());
    }

    #[test]
    fn canaries_by_weight_and_header() {
        let spec = |s: &str| rules("shop", json!([path("/", "Prefix", s)]));
        let c = "nginx.ingress.kubernetes.io/canary";
        let o = objects(
            vec![
                ing("main", json!({}), spec("stable")),
                ing(
                    "a",
                    json!({c: "true", "nginx.ingress.kubernetes.io/canary-weight": "10"}),
                    spec("cana"),
                ),
                ing(
                    "b",
                    json!({c: "true", "nginx.ingress.kubernetes.io/canary-weight": "20"}),
                    spec("canb"),
                ),
                ing(
                    "h",
                    json!({c: "true", "nginx.ingress.kubernetes.io/canary-by-header": "x-c", "nginx.ingress.kubernetes.io/canary-by-header-value": "yes"}),
                    spec("canh"),
                ),
                ing(
                    "k",
                    json!({c: "true", "nginx.ingress.kubernetes.io/canary-by-cookie": "beta"}),
                    spec("canh"),
                ),
            ],
            &["stable", "cana", "canb", "canh"],
        );
        let t = translate(&o, "sluice");
        assert!(t.reports.is_empty(), "{:?}", t.reports);
        let main = t.routes.iter().find(|r| r.id == "k8s.ns.main.r0.p0").unwrap();
        let w: Vec<(String, u32)> = main
            .backends
            .iter()
            .map(|b| (b.upstream.clone(), b.weight))
            .collect();
        assert_eq!(
            w,
            vec![
                ("k8s.ns.stable.80".into(), 70),
                ("k8s.ns.cana.80".into(), 10),
                ("k8s.ns.canb.80".into(), 20)
            ]
        );
        let header = t
            .routes
            .iter()
            .find(|r| r.matches.headers.iter().any(|h| h.name == "x-c"))
            .unwrap();
        assert_eq!(header.matches.headers[0].exact.as_deref(), Some("yes"));
        assert_eq!(header.upstream.as_deref(), Some("k8s.ns.canh.80"));
        let cookie =
            t.routes
                .iter()
                .find(|r| {
                    r.matches.headers.iter().any(|h| {
                        h.name == "cookie" && h.regex.as_deref().unwrap_or("").contains("beta=always")
                    })
                })
                .unwrap();
        assert_eq!(cookie.upstream.as_deref(), Some("k8s.ns.canh.80"));
        let never = t.routes.iter().find(|r| r.id.ends_with("cookie-never")).unwrap();
        assert_eq!(never.upstream.as_deref(), Some("k8s.ns.stable.80"));
    }

    #[test]
    fn annotations_map_onto_sluice_features_and_validate() {
        let n = |k: &str| format!("{NGINX}{k}");
        let ann = json!({
            n("proxy-connect-timeout"): "3", n("proxy-read-timeout"): "30", n("proxy-send-timeout"): "31",
            n("proxy-body-size"): "8m", n("upstream-vhost"): "internal.svc",
            n("enable-cors"): "true", n("cors-allow-origin"): "https://a.example, https://b.example",
            n("whitelist-source-range"): "10.0.0.0/8, 192.168.1.1", n("denylist-source-range"): "10.6.0.0/16",
            n("limit-rps"): "5", n("limit-connections"): "7",
            n("affinity"): "cookie", n("session-cookie-name"): "route",
            n("backend-protocol"): "GRPC", n("rewrite-target"): "/v2", n("ssl-redirect"): "false",
        });
        let o = objects(
            vec![ing(
                "site",
                ann,
                rules("a", json!([path("/api", "Prefix", "web")])),
            )],
            &["web"],
        );
        let mut t = translate(&o, "sluice");
        crate::source::check_routes(&mut t, &o, &crate::test_kinds::TestKinds::ALL);
        assert!(t.reports.is_empty(), "{:?}", t.reports);
        let r = &t.routes[0];
        assert_eq!(r.timeouts.connect, Some(std::time::Duration::from_secs(3)));
        assert_eq!(r.timeouts.read, Some(std::time::Duration::from_secs(30)));
        assert_eq!(r.timeouts.write, Some(std::time::Duration::from_secs(31)));
        assert_eq!(r.limits.max_request_body, Some(ByteSize::mib(8)));
        assert_eq!(
            r.headers.request.set.get("host").map(String::as_str),
            Some("internal.svc")
        );
        let kinds: Vec<&str> = r.filters.iter().map(|f| f.kind.as_str()).collect();
        assert_eq!(kinds, ["ip_restriction", "cors", "rate_limit", "limit_conn"]);
        assert_eq!(r.filters[2].spec["burst"], 25);
        assert_eq!(r.rewrite.as_ref().unwrap().prefix.as_deref(), Some("/v2"));
        let u = &t.upstreams[0];
        assert_eq!(u.id, "k8s.ns.web.80.grpc.cookie-route");
        assert_eq!(u.protocol, UpstreamProtocol::H2);
        assert_eq!(
            u.load_balancing,
            LoadBalancing::ConsistentHash(HashOn::Cookie("route".into()))
        );
    }

    #[test]
    fn unsupported_and_invalid_annotations_are_reported() {
        let ann = json!({
            "nginx.ingress.kubernetes.io/configuration-snippet": "x",
            "nginx.ingress.kubernetes.io/ssl-redirect": "maybe",
            "nginx.ingress.kubernetes.io/limit-rps": "lots",
            "sluice.dev/nope": "1",
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
        });
        let o = objects(
            vec![ing("site", ann, rules("a", json!([path("/", "Prefix", "web")])))],
            &["web"],
        );
        let t = translate(&o, "sluice");
        let mut got: Vec<(&str, bool)> = t
            .reports
            .iter()
            .map(|r| {
                (
                    r.reason.as_str(),
                    r.object.name == "site" && r.object.uid == "uid-site",
                )
            })
            .collect();
        got.sort_unstable();
        assert_eq!(
            got,
            [
                ("InvalidAnnotation", true),
                ("InvalidAnnotation", true),
                ("UnsupportedAnnotation", true),
                ("UnsupportedAnnotation", true)
            ]
        );
        assert_eq!(t.routes.len(), 1, "the Ingress is still served");
    }

    #[test]
    fn ssl_redirect_with_tls_and_force_ssl_redirect_without() {
        let mut with_tls = rules("a", json!([path("/", "Prefix", "web")]));
        with_tls["tls"] = json!([{"hosts": ["a"], "secretName": "a-tls"}]);
        let mut off = with_tls.clone();
        off["rules"][0]["host"] = json!("off");
        let o = objects(
            vec![
                ing("tls", json!({}), with_tls),
                ing(
                    "off",
                    json!({"nginx.ingress.kubernetes.io/ssl-redirect": "false"}),
                    off,
                ),
                ing(
                    "plain",
                    json!({}),
                    rules("p", json!([path("/", "Prefix", "web")])),
                ),
                ing(
                    "forced",
                    json!({"nginx.ingress.kubernetes.io/force-ssl-redirect": "true"}),
                    rules("f", json!([path("/", "Prefix", "web")])),
                ),
            ],
            &["web"],
        );
        let t = translate(&o, "sluice");
        assert!(t.reports.is_empty(), "{:?}", t.reports);
        let first = |id: &str| {
            let r = t.routes.iter().find(|r| r.id == id).unwrap();
            r.filters.first().map(|f| (f.kind.clone(), f.spec.clone()))
        };
        let redirect = Some((
            "redirect".to_string(),
            json!({"status": 308, "scheme": "https", "port": 443, "only_http": true}),
        ));
        assert_eq!(first("k8s.ns.tls.r0.p0"), redirect);
        assert_eq!(first("k8s.ns.forced.r0.p0"), redirect);
        assert_eq!(first("k8s.ns.off.r0.p0"), None);
        assert_eq!(first("k8s.ns.plain.r0.p0"), None);
    }

    #[test]
    fn endpoints_ready_terminating_and_none() {
        let mut o = objects(
            vec![ing(
                "site",
                json!({}),
                rules("a", json!([path("/", "Prefix", "web")])),
            )],
            &["web"],
        );
        o.endpoint_slices
            .push(slice("web", "10.0.1.1", 8080, false, true));
        o.endpoint_slices
            .push(slice("web", "10.0.1.2", 8080, false, false));
        let mut remote = slice("web", "10.9.0.1", 9090, true, false);
        remote.priority = 1;
        o.endpoint_slices.push(remote);
        let t = translate(&o, "sluice");
        let eps: Vec<(String, u32, u32)> = t.upstreams[0]
            .endpoints
            .iter()
            .map(|e| (e.address.clone(), e.weight, e.priority))
            .collect();
        assert_eq!(
            eps,
            [
                ("10.0.0.1:8080".into(), 1, 0),
                ("10.0.1.1:8080".into(), 0, 0),
                ("10.9.0.1:9090".into(), 1, 1)
            ]
        );
        // No ready endpoint: the route answers 503 itself, and nothing is reported.
        o.endpoint_slices.clear();
        let t = translate(&o, "sluice");
        assert!(t.upstreams.is_empty() && t.reports.is_empty());
        assert_eq!(t.routes[0].filters[0].kind, "direct_response");
        // A missing Service is reported.
        o.services.clear();
        let t = translate(&o, "sluice");
        assert_eq!(t.reports[0].reason, "BackendNotFound");
    }
}
