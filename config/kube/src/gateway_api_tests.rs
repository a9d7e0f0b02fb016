//! Unit tests of the Gateway API translation: typed objects built from YAML, translated,
//! and the routes, upstreams and status conditions checked; the config produced is
//! validated by `sluice_config` as a whole.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::objects::PrioritizedSlice;
use crate::test_kinds::TestKinds;
use serde::Deserialize;

/// Objects from multi-document YAML, by kind.
fn objects(yaml: &str) -> ClusterObjects {
    let mut o = ClusterObjects::default();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = serde_json::Value::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().unwrap().to_string();
        match kind.as_str() {
            "GatewayClass" => o.gateway_classes.push(serde_json::from_value(v).unwrap()),
            "Gateway" => o.gateways.push(serde_json::from_value(v).unwrap()),
            "HTTPRoute" => o.http_routes.push(serde_json::from_value(v).unwrap()),
            "Service" => o.services.push(serde_json::from_value(v).unwrap()),
            "Secret" => o.secrets.push(serde_json::from_value(v).unwrap()),
            "EndpointSlice" => o.endpoint_slices.push(PrioritizedSlice {
                priority: 0,
                slice: serde_json::from_value(v).unwrap(),
            }),
            "Namespace" | "Deployment" | "Ingress" => {}
            other => panic!("unexpected kind {other}"),
        }
    }
    o
}

/// A Service `name` in `demo` on port 80 (`http`), with ready pods at `ips`.
fn service(name: &str, ips: &[&str]) -> String {
    let eps: Vec<String> = ips
        .iter()
        .map(|ip| format!("  - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n"))
        .collect();
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: demo\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{}",
        eps.concat()
    )
}

const CLASS_AND_GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sluice}
spec: {controllerName: sluice.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: other}
spec: {controllerName: example.com/other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: demo, generation: 3}
spec:
  gatewayClassName: sluice
  listeners:
    - {name: http, protocol: HTTP, port: 80}
    - {name: shop, protocol: HTTP, port: 80, hostname: "*.shop.test"}
"#;

fn with_route(route: &str) -> ClusterObjects {
    objects(&format!(
        "{CLASS_AND_GATEWAY}\n---\n{route}\n{}\n{}",
        service("echo", &["10.0.0.1", "10.0.0.2"]),
        service("canary", &["10.0.1.1"])
    ))
}

fn route_yaml(spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: demo, generation: 2}}\nspec:\n  parentRefs: [{{name: web}}]\n{spec}"
    )
}

fn translate_route(spec: &str) -> GatewayTranslation {
    translate(
        &with_route(&route_yaml(spec)),
        GATEWAY_CONTROLLER,
        &TestKinds::ALL,
    )
}

/// The translation's routes and upstreams form a valid Sluice config, every filter
/// naming a kind this build has (its spec is the kind's business: the gateway's
/// integration tests run these translations against the real kinds).
fn assert_valid(t: &GatewayTranslation) {
    let mut v = serde_json::json!({"listeners": [{"name": "web", "listen": "127.0.0.1:8080"}]});
    // Revealed: a view's serialization redacts filter specs (see `sluice_config::secret`).
    let (routes, upstreams) = sluice_config::secret::reveal(|| {
        (
            serde_json::to_value(&t.translation.routes).unwrap(),
            serde_json::to_value(&t.translation.upstreams).unwrap(),
        )
    });
    v["routes"] = routes;
    v["upstreams"] = upstreams;
    let cfg = sluice_config::Config::from_json_value(v.clone())
        .unwrap_or_else(|e| panic!("{e:?}\n{}", serde_json::to_string_pretty(&v).unwrap()));
    if let Err(e) = sluice_config::check::validate(&cfg, &TestKinds::ALL) {
        panic!("{e}");
    }
}

fn cond<'a>(c: &'a [Condition], type_: &str) -> &'a Condition {
    c.iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} in {c:?}"))
}

fn parent_conditions(t: &GatewayTranslation) -> &[Condition] {
    &t.routes[0].parents[0].conditions
}

fn route<'a>(t: &'a GatewayTranslation, id: &str) -> &'a RouteConfig {
    t.translation
        .routes
        .iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| {
            panic!(
                "no route {id}: {:?}",
                t.translation.routes.iter().map(|r| &r.id).collect::<Vec<_>>()
            )
        })
}

#[test]
fn only_our_class_is_accepted() {
    let t = translate(
        &with_route(&route_yaml(
            "  rules: [{backendRefs: [{name: echo, port: 80}]}]\n",
        )),
        GATEWAY_CONTROLLER,
        &TestKinds::ALL,
    );
    assert_eq!(t.classes.len(), 1);
    assert_eq!(t.classes[0].class.name, "sluice");
    assert_eq!(cond(&t.classes[0].conditions, "Accepted").reason, "Accepted");
    assert_eq!(t.gateways.len(), 1);
    let g = &t.gateways[0];
    assert_eq!(g.generation, Some(3));
    assert!(cond(&g.conditions, "Accepted").status);
    assert!(cond(&g.conditions, "Programmed").status);
    // A route on a Gateway of another class is not ours: no status, no routes.
    let other = objects(&format!(
        "{CLASS_AND_GATEWAY}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: o, namespace: demo}}\nspec: {{gatewayClassName: other, listeners: [{{name: h, protocol: HTTP, port: 80}}]}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: demo}}\nspec: {{parentRefs: [{{name: o}}], rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]}}\n{}",
        service("echo", &["10.0.0.1"])
    ));
    let t = translate(&other, GATEWAY_CONTROLLER, &TestKinds::ALL);
    assert_eq!(t.gateways.len(), 1);
    assert!(t.routes.is_empty() && t.translation.routes.is_empty());
}

#[test]
fn path_matches_and_weighted_backends() {
    let t = translate_route(
        "  rules:\n  - matches:\n    - path: {type: Exact, value: /exact}\n    - path: {type: PathPrefix, value: /api}\n    - path: {type: RegularExpression, value: '/v[0-9]+/.*'}\n    backendRefs:\n    - {name: echo, port: 80, weight: 90}\n    - {name: canary, port: 80, weight: 10}\n",
    );
    assert_valid(&t);
    // Multiple matches are ORed: one route each (×2 host groups: the `shop` listener's
    // wildcard and any host from the `http` listener collapse to any host).
    assert_eq!(
        route(&t, "gw.demo.r.0.0").matches.path,
        Some(PathMatch::Exact("/exact".into()))
    );
    assert_eq!(
        route(&t, "gw.demo.r.0.1").matches.path,
        Some(PathMatch::Prefix("/api".into()))
    );
    assert_eq!(
        route(&t, "gw.demo.r.0.2").matches.path,
        Some(PathMatch::Regex("/v[0-9]+/.*".into()))
    );
    let b = &route(&t, "gw.demo.r.0.1").backends;
    assert_eq!(b.len(), 2);
    assert_eq!((b[0].upstream.as_str(), b[0].weight), ("k8s.demo.echo.80", 90));
    assert_eq!((b[1].upstream.as_str(), b[1].weight), ("k8s.demo.canary.80", 10));
    let ups: Vec<_> = t
        .translation
        .upstreams
        .iter()
        .map(|u| (u.id.as_str(), u.endpoints.len()))
        .collect();
    assert_eq!(ups, [("k8s.demo.canary.80", 1), ("k8s.demo.echo.80", 2)]);
    let c = parent_conditions(&t);
    assert_eq!(
        (cond(c, "Accepted").status, cond(c, "Accepted").reason.as_str()),
        (true, "Accepted")
    );
    assert_eq!(cond(c, "ResolvedRefs").reason, "ResolvedRefs");
    assert_eq!(t.routes[0].generation, Some(2));
    assert_eq!(t.routes[0].parents[0].controller_name, GATEWAY_CONTROLLER);
    // Both listeners took the route.
    assert_eq!(
        t.gateways[0]
            .listeners
            .iter()
            .map(|l| l.attached_routes)
            .collect::<Vec<_>>(),
        [1, 1]
    );
}

#[test]
fn no_match_is_prefix_slash() {
    let t = translate_route("  rules: [{backendRefs: [{name: echo, port: 80}]}]\n");
    assert_eq!(
        route(&t, "gw.demo.r.0.0").matches.path,
        Some(PathMatch::Prefix("/".into()))
    );
}

#[test]
fn header_query_and_method_matches() {
    let t = translate_route(
        "  rules:\n  - matches:\n    - method: POST\n      headers:\n      - {name: X-Env, value: canary}\n      - {name: x-env, value: ignored-second}\n      - {type: RegularExpression, name: x-ver, value: 'v[12]'}\n      queryParams:\n      - {name: debug, value: '1'}\n      - {type: RegularExpression, name: q, value: 'a.*'}\n    backendRefs: [{name: echo, port: 80}]\n",
    );
    assert_valid(&t);
    let m = &route(&t, "gw.demo.r.0.0").matches;
    assert_eq!(m.methods, ["POST"]);
    assert_eq!(m.headers.len(), 2, "only the first match of a header name counts");
    assert_eq!(
        (m.headers[0].name.as_str(), m.headers[0].exact.as_deref()),
        ("X-Env", Some("canary"))
    );
    assert_eq!(m.headers[1].regex.as_deref(), Some("v[12]"));
    assert_eq!(m.query[0].exact.as_deref(), Some("1"));
    assert_eq!(m.query[1].regex.as_deref(), Some("a.*"));
}

#[test]
fn an_invalid_regex_drops_the_match_with_a_report() {
    let t = translate_route(
        "  rules:\n  - matches: [{path: {type: RegularExpression, value: '/(['}}]\n    backendRefs: [{name: echo, port: 80}]\n  - backendRefs: [{name: echo, port: 80}]\n",
    );
    assert!(t
        .translation
        .routes
        .iter()
        .all(|r| !r.id.starts_with("gw.demo.r.0.")));
    assert!(t
        .translation
        .reports
        .iter()
        .any(|r| r.message.contains("invalid regular expression")));
    let c = parent_conditions(&t);
    assert!(cond(c, "Accepted").status);
    assert_eq!(cond(c, "PartiallyInvalid").reason, "UnsupportedValue");
}

#[test]
fn hostnames_intersect_with_listeners() {
    // Listener `http` has no hostname, `shop` has *.shop.test.
    let t = translate(
        &with_route(&route_yaml(
            "  hostnames: [a.shop.test, '*.shop.test', other.test]\n  rules: [{backendRefs: [{name: echo, port: 80}]}]\n",
        )),
        GATEWAY_CONTROLLER,
        &TestKinds::ALL,
    );
    assert_valid(&t);
    // Exact names and the wildcard are separate routes (Sluice ranks any exact host as
    // exact).
    assert_eq!(
        route(&t, "gw.demo.r.0.0").matches.hosts,
        ["a.shop.test", "other.test"]
    );
    assert_eq!(route(&t, "gw.demo.r.0.0.w").matches.hosts, ["*.shop.test"]);

    // Only the shop listener: other.test does not match it.
    let t = translate(
        &with_route(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: demo}\nspec:\n  parentRefs: [{name: web, sectionName: shop}]\n  hostnames: [other.test, 'x.y.shop.test']\n  rules: [{backendRefs: [{name: echo, port: 80}]}]\n",
        ),
        GATEWAY_CONTROLLER,
        &TestKinds::ALL,
    );
    assert_eq!(route(&t, "gw.demo.r.0.0").matches.hosts, ["x.y.shop.test"]);
    assert_eq!(
        t.gateways[0]
            .listeners
            .iter()
            .map(|l| l.attached_routes)
            .collect::<Vec<_>>(),
        [0, 1]
    );

    // No hostname in common: NoMatchingListenerHostname, and no routes.
    let t = translate(
        &with_route(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: demo}\nspec:\n  parentRefs: [{name: web, sectionName: shop}]\n  hostnames: [other.test]\n  rules: [{backendRefs: [{name: echo, port: 80}]}]\n",
        ),
        GATEWAY_CONTROLLER,
        &TestKinds::ALL,
    );
    let c = parent_conditions(&t);
    assert_eq!(
        (cond(c, "Accepted").status, cond(c, "Accepted").reason.as_str()),
        (false, "NoMatchingListenerHostname")
    );
    assert!(t.translation.routes.is_empty());
    // A route without hostnames on the shop listener gets the listener's.
    assert_eq!(
        intersect(Some("*.shop.test"), &[]),
        Some(vec!["*.shop.test".to_string()])
    );
    assert_eq!(intersect(None, &[]), None);
    assert_eq!(
        intersect(Some("a.test"), &["*.test".into(), "test".into()]),
        Some(vec!["a.test".to_string()])
    );
    assert_eq!(
        intersect(Some("*.a.test"), &["*.test".into()]),
        Some(vec!["*.a.test".to_string()])
    );
    assert_eq!(intersect(Some("*.a.test"), &["a.test".into()]), Some(vec![]));
}

#[test]
fn section_name_and_port_select_listeners() {
    let one = |parent: &str| {
        translate(
            &with_route(&format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: demo}}\nspec:\n  parentRefs: [{parent}]\n  rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]\n"
            )),
            GATEWAY_CONTROLLER,
            &TestKinds::ALL,
        )
    };
    let t = one("{name: web, sectionName: nope}");
    let c = parent_conditions(&t);
    assert_eq!(
        (cond(c, "Accepted").status, cond(c, "Accepted").reason.as_str()),
        (false, "NoMatchingParent")
    );
    let t = one("{name: web, port: 8080}");
    assert_eq!(cond(parent_conditions(&t), "Accepted").reason, "NoMatchingParent");
    let t = one("{name: web, sectionName: http, port: 80}");
    assert!(cond(parent_conditions(&t), "Accepted").status);
    assert_eq!(
        t.routes[0].parents[0].parent_ref.section_name.as_deref(),
        Some("http")
    );
    assert_eq!(t.routes[0].parents[0].parent_ref.namespace, "demo");
    assert_eq!(
        t.gateways[0]
            .listeners
            .iter()
            .map(|l| l.attached_routes)
            .collect::<Vec<_>>(),
        [1, 0]
    );
    // Two parentRefs, one of another controller's Gateway (absent here): one status.
    let t = one("{name: web, sectionName: http}, {name: elsewhere}");
    assert_eq!(t.routes[0].parents.len(), 1);
}

#[test]
fn routes_from_other_namespaces_need_allowed_routes() {
    let yaml = format!(
        "{CLASS_AND_GATEWAY}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: team}}\nspec:\n  parentRefs: [{{name: web, namespace: demo}}]\n  rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]\n"
    );
    let t = translate(&objects(&yaml), GATEWAY_CONTROLLER, &TestKinds::ALL);
    assert_eq!(
        cond(parent_conditions(&t), "Accepted").reason,
        "NotAllowedByListeners"
    );
    let yaml = yaml.replace(
        "- {name: http, protocol: HTTP, port: 80}",
        "- {name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}",
    );
    let t = translate(&objects(&yaml), GATEWAY_CONTROLLER, &TestKinds::ALL);
    let c = parent_conditions(&t);
    assert!(cond(c, "Accepted").status);
    // The Service is looked up in the route's namespace, where there is none.
    assert_eq!(
        (
            cond(c, "ResolvedRefs").status,
            cond(c, "ResolvedRefs").reason.as_str()
        ),
        (false, "BackendNotFound")
    );
}

#[test]
fn request_and_response_header_modifiers() {
    let t = translate_route(
        "  rules:\n  - filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier:\n        set: [{name: X-Set, value: a}]\n        add: [{name: x-add, value: b}]\n        remove: [X-Remove]\n    - type: ResponseHeaderModifier\n      responseHeaderModifier:\n        set: [{name: x-resp, value: c}]\n        remove: [server]\n    backendRefs: [{name: echo, port: 80}]\n",
    );
    assert_valid(&t);
    let h = &route(&t, "gw.demo.r.0.0").headers;
    assert_eq!(h.request.set.get("x-set").map(String::as_str), Some("a"));
    assert_eq!(h.request.add.get("x-add").map(String::as_str), Some("b"));
    assert_eq!(h.request.remove, ["x-remove"]);
    assert_eq!(h.response.set.get("x-resp").map(String::as_str), Some("c"));
    assert_eq!(h.response.remove, ["server"]);
}

#[test]
fn request_redirect() {
    let t = translate_route(
        "  rules:\n  - filters:\n    - type: RequestRedirect\n      requestRedirect: {scheme: https, hostname: www.test, port: 8443, statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /new}}\n",
    );
    assert_valid(&t);
    let r = route(&t, "gw.demo.r.0.0");
    assert!(r.backends.is_empty() && r.upstream.is_none());
    assert_eq!(r.filters.len(), 1);
    assert_eq!(r.filters[0].kind, "redirect");
    assert_eq!(
        r.filters[0].spec,
        json!({"status": 301, "scheme": "https", "host": "www.test", "port": 8443, "path": "/new"})
    );
    // A redirect needs no backendRefs: not an invalid rule.
    assert!(cond(parent_conditions(&t), "Accepted").status);
    // Default status 302.
    let t = translate_route(
        "  rules:\n  - filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]\n",
    );
    assert_eq!(route(&t, "gw.demo.r.0.0").filters[0].spec["status"], 302);
}

#[test]
fn url_rewrite() {
    let t = translate_route(
        "  rules:\n  - matches: [{path: {type: PathPrefix, value: /v1}}]\n    filters: [{type: URLRewrite, urlRewrite: {hostname: internal.test, path: {type: ReplacePrefixMatch, replacePrefixMatch: /api}}}]\n    backendRefs: [{name: echo, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /old}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /index.html}}}]\n    backendRefs: [{name: echo, port: 80}]\n",
    );
    assert_valid(&t);
    let r = route(&t, "gw.demo.r.0.0");
    let rw = r.rewrite.clone().unwrap();
    assert!(rw.strip_prefix);
    assert_eq!(rw.prefix.as_deref(), Some("/api"));
    assert_eq!(
        r.headers.request.set.get("host").map(String::as_str),
        Some("internal.test")
    );
    let rw = route(&t, "gw.demo.r.1.0").rewrite.clone().unwrap();
    assert_eq!(rw.path.as_deref(), Some("/index.html"));
    assert!(!rw.strip_prefix);
    // The compiled rewrite does what the Gateway API says: /v1/x -> /api/x, /v1 -> /api.
    let p = sluice_filters_free_prefix_rewrite("/api", "/v1/x", 3);
    assert_eq!(p, "/api/x");
    assert_eq!(sluice_filters_free_prefix_rewrite("/", "/v1/x", 3), "/x");
}

/// The prefix replacement of `Rewrite {strip_prefix: true, prefix}` (filters/core/src/rewrite.rs),
/// restated: this crate does not depend on sluice-filters.
fn sluice_filters_free_prefix_rewrite(new: &str, path: &str, prefix_len: usize) -> String {
    let joined = format!("{}{}", new.trim_end_matches('/'), &path[prefix_len..]);
    if joined.is_empty() {
        "/".into()
    } else {
        joined
    }
}

#[test]
fn cors_and_timeouts() {
    let t = translate_route(
        "  rules:\n  - filters:\n    - type: CORS\n      cors: {allowOrigins: ['https://app.test'], allowMethods: [GET, POST], allowHeaders: [x-a], exposeHeaders: [x-b], allowCredentials: true, maxAge: 600}\n    timeouts: {request: 10s, backendRequest: 2500ms}\n    backendRefs: [{name: echo, port: 80}]\n  - timeouts: {request: 0s}\n    backendRefs: [{name: echo, port: 80}]\n",
    );
    assert_valid(&t);
    let r = route(&t, "gw.demo.r.0.0");
    assert_eq!(r.filters[0].kind, "cors");
    assert_eq!(
        r.filters[0].spec,
        json!({"allow_origins": ["https://app.test"], "allow_methods": ["GET", "POST"], "allow_headers": ["x-a"], "expose_headers": ["x-b"], "allow_credentials": true, "max_age": "600s"})
    );
    assert_eq!(r.timeouts.total, Some(std::time::Duration::from_secs(10)));
    assert_eq!(r.timeouts.read, Some(std::time::Duration::from_millis(2500)));
    // 0s disables the timeout.
    assert_eq!(route(&t, "gw.demo.r.1.0").timeouts.total, None);
}

#[test]
fn request_mirror_becomes_the_mirror_filter_when_the_build_has_it() {
    for kinds in [TestKinds::ALL, TestKinds { mirror: false }] {
        request_mirror_with(&kinds);
    }
}

fn request_mirror_with(kinds: &TestKinds) {
    let t = translate(
        &with_route(&route_yaml("  rules:\n  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: canary, port: 80}}}]\n    backendRefs: [{name: echo, port: 80}]\n  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: canary, port: 80}, fraction: {numerator: 1, denominator: 8}}}]\n    backendRefs: [{name: echo, port: 80}]\n  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: missing, port: 80}, percent: 5}}]\n    backendRefs: [{name: echo, port: 80}]\n",
        )),
        GATEWAY_CONTROLLER,
        kinds,
    );
    let r = route(&t, "gw.demo.r.0.0");
    assert_eq!(r.backends.len(), 1);
    assert_eq!(r.backends[0].upstream, "k8s.demo.echo.80");
    assert!(route(&t, "gw.demo.r.2.0").filters.is_empty());
    if kinds.has_kind("mirror") {
        // An unknown mirror Service: reported, the rule serves without the mirror.
        assert!(t
            .translation
            .reports
            .iter()
            .any(|r| r.reason == "UnsupportedFilter"
                && r.message.contains("RequestMirror")
                && r.message.contains("missing")));
        assert_valid(&t);
        assert_eq!(r.filters.len(), 1);
        assert_eq!(r.filters[0].kind, "mirror");
        assert_eq!(
            r.filters[0].spec,
            json!({"upstream": "k8s.demo.canary.80", "percent": 100})
        );
        assert_eq!(
            route(&t, "gw.demo.r.1.0").filters[0].spec,
            json!({"upstream": "k8s.demo.canary.80", "percent": 12.5})
        );
        assert!(t
            .translation
            .upstreams
            .iter()
            .any(|u| u.id == "k8s.demo.canary.80"));
    } else {
        // Without the kind the config would not validate: the mirror is left out, reported.
        assert_valid(&t);
        assert!(r.filters.is_empty());
        assert!(t
            .translation
            .reports
            .iter()
            .any(|r| r.reason == "UnsupportedFilter" && r.message.contains("no mirror filter")));
    }
}

#[test]
fn unresolved_backends_and_empty_rules() {
    let t = translate_route(
        "  rules:\n  - backendRefs: [{name: missing, port: 80}]\n  - backendRefs: [{name: echo, port: 80}, {name: missing, port: 80}]\n  - backendRefs: [{group: example.com, kind: Bucket, name: b}]\n  - {}\n  - backendRefs: [{name: echo, port: 80, weight: 0}]\n",
    );
    assert_valid(&t);
    let status = |id: &str| {
        route(&t, id)
            .filters
            .first()
            .map(|f| f.spec["status"].as_u64().unwrap())
    };
    assert_eq!(status("gw.demo.r.0.0"), Some(500), "only an unknown Service: 500");
    assert_eq!(
        route(&t, "gw.demo.r.1.0").backends.len(),
        1,
        "the valid backend keeps serving"
    );
    assert_eq!(status("gw.demo.r.2.0"), Some(500));
    assert_eq!(status("gw.demo.r.3.0"), Some(500), "no backendRefs: 500");
    assert_eq!(status("gw.demo.r.4.0"), Some(500), "every weight 0: 500");
    let c = parent_conditions(&t);
    assert_eq!(
        (
            cond(c, "ResolvedRefs").status,
            cond(c, "ResolvedRefs").reason.as_str()
        ),
        (false, "BackendNotFound")
    );
    // A Service without ready endpoints resolves, and answers 503 until one is ready.
    let yaml = format!(
        "{CLASS_AND_GATEWAY}\n---\n{}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: idle, namespace: demo}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n",
        route_yaml("  rules: [{backendRefs: [{name: idle, port: 80}]}]\n")
    );
    let t = translate(&objects(&yaml), GATEWAY_CONTROLLER, &TestKinds::ALL);
    assert_eq!(route(&t, "gw.demo.r.0.0").filters[0].spec["status"], 503);
    assert!(cond(parent_conditions(&t), "ResolvedRefs").status);
    // A cross-namespace backend needs a ReferenceGrant, which is not read.
    let t = translate_route("  rules: [{backendRefs: [{name: echo, namespace: other, port: 80}]}]\n");
    assert_eq!(
        cond(parent_conditions(&t), "ResolvedRefs").reason,
        "RefNotPermitted"
    );
}

#[test]
fn listeners_https_certificates_and_conflicts() {
    let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sluice}
spec: {controllerName: sluice.dev/gateway-controller}
---
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: demo}
type: kubernetes.io/tls
data: {tls.crt: Y2VydA==, tls.key: a2V5}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: demo}
spec:
  gatewayClassName: sluice
  listeners:
    - {name: https, protocol: HTTPS, port: 443, hostname: a.test, tls: {certificateRefs: [{name: cert}]}}
    - {name: missing, protocol: HTTPS, port: 443, hostname: b.test, tls: {certificateRefs: [{name: nope}]}}
    - {name: foreign, protocol: HTTPS, port: 443, hostname: c.test, tls: {certificateRefs: [{name: cert, namespace: other}]}}
    - {name: tcp, protocol: TCP, port: 9000}
    - {name: dup1, protocol: HTTP, port: 80, hostname: d.test}
    - {name: dup2, protocol: HTTP, port: 80, hostname: d.test}
"#;
    let t = translate(&objects(yaml), GATEWAY_CONTROLLER, &TestKinds::ALL);
    let g = &t.gateways[0];
    let l = |name: &str| g.listeners.iter().find(|l| l.name == name).unwrap();
    assert!(cond(&l("https").conditions, "ResolvedRefs").status);
    assert!(cond(&l("https").conditions, "Programmed").status);
    assert_eq!(
        cond(&l("missing").conditions, "ResolvedRefs").reason,
        "InvalidCertificateRef"
    );
    assert_eq!(
        cond(&l("foreign").conditions, "ResolvedRefs").reason,
        "RefNotPermitted"
    );
    // TCP is supported, but no Sluice listener serves port 9000: not accepted.
    assert_eq!(cond(&l("tcp").conditions, "Accepted").reason, "PortUnavailable");
    assert_eq!(l("tcp").supported_kinds, ["TCPRoute"]);
    assert!(!cond(&l("tcp").conditions, "Programmed").status);
    assert_eq!(
        cond(&l("dup1").conditions, "Conflicted").reason,
        "HostnameConflict"
    );
    assert!(cond(&l("dup2").conditions, "Conflicted").status);
    assert_eq!(cond(&l("https").conditions, "Conflicted").reason, "NoConflicts");
    assert_eq!(l("https").supported_kinds, ["HTTPRoute"]);
    // Some listeners are invalid: Accepted with ListenersNotValid, still Programmed.
    assert_eq!(cond(&g.conditions, "Accepted").reason, "ListenersNotValid");
    assert!(cond(&g.conditions, "Programmed").status);
    assert_eq!(
        t.certificates,
        [ListenerCertificate {
            gateway: t.gateways[0].gateway.clone(),
            listener: "https".into(),
            port: 443,
            hostname: Some("a.test".into()),
            secret_namespace: "demo".into(),
            secret_name: "cert".into(),
        }]
    );
}

#[test]
fn precedence_is_creation_time_then_name() {
    let mk = |name: &str, created: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: demo, creationTimestamp: '{created}'}}\nspec: {{parentRefs: [{{name: web}}], rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]}}\n"
        )
    };
    let yaml = format!(
        "{CLASS_AND_GATEWAY}\n{}{}{}{}",
        mk("b-new", "2026-01-02T00:00:00Z"),
        mk("z-old", "2026-01-01T00:00:00Z"),
        mk("a-new", "2026-01-02T00:00:00Z"),
        service("echo", &["10.0.0.1"])
    );
    let t = translate(&objects(&yaml), GATEWAY_CONTROLLER, &TestKinds::ALL);
    let ids: Vec<&str> = t.translation.routes.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        ["gw.demo.z-old.0.0", "gw.demo.a-new.0.0", "gw.demo.b-new.0.0"]
    );
}

#[test]
fn condition_to_k8s() {
    let c = Condition::new("Accepted", true, "Accepted", "ok");
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let k = c.to_k8s(Some(4), now.clone());
    assert_eq!(
        (k.type_.as_str(), k.status.as_str(), k.reason.as_str()),
        ("Accepted", "True", "Accepted")
    );
    assert_eq!((k.observed_generation, k.last_transition_time), (Some(4), now));
}

#[test]
fn long_ids_stay_valid_and_distinct() {
    let a = clean_id(&format!("gw.{}.x.0.0", "n".repeat(200)));
    let b = clean_id(&format!("gw.{}.y.0.0", "n".repeat(200)));
    assert!(a.len() <= 128 && b.len() <= 128);
    assert_ne!(a, b);
    assert_eq!(clean_id("gw.a.b/c.0.0"), "gw.a.b-c.0.0");
}

/// The example in deploy/kubernetes/examples/gateway-api.yaml translates as documented.
#[test]
fn the_deploy_example_translates() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/kubernetes/examples/gateway-api.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let class = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: sluice}\nspec: {controllerName: sluice.dev/gateway-controller}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: wildcard-example-com, namespace: demo}\ntype: kubernetes.io/tls\ndata: {tls.crt: Y2VydA==, tls.key: a2V5}\n";
    let yaml = format!(
        "{class}---\n{text}\n{}\n{}",
        service("echo", &["10.0.0.1"]),
        service("echo-canary", &["10.0.1.1"])
    );
    let t = translate(&objects(&yaml), GATEWAY_CONTROLLER, &TestKinds::ALL);
    assert_valid(&t);
    assert!(t.translation.reports.is_empty(), "{:?}", t.translation.reports);
    assert_eq!(t.routes.len(), 2);
    for r in &t.routes {
        let c = &r.parents[0].conditions;
        assert!(
            cond(c, "Accepted").status && cond(c, "ResolvedRefs").status,
            "{r:?}"
        );
    }
    let api = route(&t, "gw.demo.echo.0.0");
    assert_eq!(api.matches.hosts, ["echo.example.com"]);
    assert_eq!(api.matches.methods, ["GET"]);
    assert_eq!(
        api.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [90, 10]
    );
    assert_eq!(
        route(&t, "gw.demo.echo.0.1").matches.headers[0].name,
        "x-api-version"
    );
    assert_eq!(route(&t, "gw.demo.echo.2.0").filters[0].spec["status"], 301);
    assert_eq!(
        route(&t, "gw.demo.echo-https-redirect.0.0").filters[0].spec["scheme"],
        "https"
    );
    assert_eq!(t.certificates.len(), 1);
}
