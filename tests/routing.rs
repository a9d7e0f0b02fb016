//! Route matching over the wire: host, path, method, header and query conditions, and
//! the documented precedence between overlapping routes. Each route forwards to its own
//! upstream, and the `x-upstream` response header says which one answered.

use reqwest::header::HOST;
use reqwest::{Method, StatusCode};

use crate::support::{upstream_entries, upstream_of, Gateway, TestUpstream};

/// Starts one upstream per name and a gateway with those upstreams and `routes`.
async fn gateway_with(names: &[&str], routes: &str) -> (Gateway, Vec<TestUpstream>) {
    let ups = TestUpstream::start_many(names).await;
    let refs: Vec<&TestUpstream> = ups.iter().collect();
    let yaml = format!(
        "listeners: [{{name: web, listen: \"{{{{http}}}}\"}}]\nupstreams:\n{}routes:\n{routes}",
        upstream_entries(&refs)
    );
    (Gateway::start(&yaml, &refs).await, ups)
}

/// Sends the request and returns the name of the upstream that answered, or
/// `status <code>` when the gateway answered itself.
async fn answered_by(req: reqwest::RequestBuilder) -> String {
    let resp = req.send().await.expect("request through the gateway");
    if resp.headers().contains_key("x-upstream") {
        assert_eq!(resp.status(), StatusCode::OK);
        upstream_of(&resp)
    } else {
        format!("status {}", resp.status().as_u16())
    }
}

#[tokio::test]
async fn exact_host_beats_wildcard_beats_hostless() {
    let (gw, _ups) = gateway_with(
        &["any", "wild", "exact", "deep"],
        r#"
- {id: any, upstream: any}
- {id: wild, upstream: wild, match: {hosts: ["*.example.test"]}}
- {id: deep, upstream: deep, match: {hosts: ["*.eu.example.test"]}}
- {id: exact, upstream: exact, match: {hosts: [api.example.test], path: {prefix: /api}}}
"#,
    )
    .await;
    let host = |h: &str, path: &str| gw.request(Method::GET, path).header(HOST, h);

    assert_eq!(answered_by(host("api.example.test", "/api/users")).await, "exact");
    assert_eq!(
        answered_by(host("API.Example.TEST:8080", "/api")).await,
        "exact",
        "case and port ignored"
    );
    assert_eq!(
        answered_by(host("api.example.test", "/other")).await,
        "wild",
        "an exact-host route whose other conditions fail falls back to the wildcard"
    );
    assert_eq!(answered_by(host("www.example.test", "/api")).await, "wild");
    assert_eq!(
        answered_by(host("a.b.example.test", "/")).await,
        "wild",
        "wildcard spans several labels"
    );
    assert_eq!(
        answered_by(host("x.eu.example.test", "/")).await,
        "deep",
        "longer wildcard suffix first"
    );
    assert_eq!(
        answered_by(host("example.test", "/")).await,
        "any",
        "wildcard needs one more label"
    );
    assert_eq!(answered_by(host("other.test", "/api")).await, "any");
}

#[tokio::test]
async fn exact_path_beats_regex_beats_longer_prefix_beats_no_path() {
    let (gw, _ups) = gateway_with(
        &["short", "long", "regex", "exact", "fallback"],
        r#"
- {id: fallback, upstream: fallback}
- {id: short, upstream: short, match: {path: {prefix: /api}}}
- {id: long, upstream: long, match: {path: {prefix: /api/v1/}}}
- {id: regex, upstream: regex, match: {path: {regex: "/api/v[0-9]+/special"}}}
- {id: exact, upstream: exact, match: {path: {exact: /api/v1/special}}}
"#,
    )
    .await;
    let get = |path: &str| gw.request(Method::GET, path);

    assert_eq!(answered_by(get("/api/v1/special")).await, "exact");
    assert_eq!(answered_by(get("/api/v2/special")).await, "regex");
    assert_eq!(
        answered_by(get("/api/v2/special/more")).await,
        "short",
        "regex is anchored at the end"
    );
    assert_eq!(answered_by(get("/api/v1/users?q=1")).await, "long");
    assert_eq!(
        answered_by(get("/api/v1")).await,
        "long",
        "a trailing slash in the prefix is ignored"
    );
    assert_eq!(answered_by(get("/api/v2")).await, "short");
    assert_eq!(answered_by(get("/api")).await, "short");
    assert_eq!(
        answered_by(get("/apix")).await,
        "fallback",
        "prefixes match on segment boundaries"
    );
    assert_eq!(answered_by(get("/")).await, "fallback");
}

#[tokio::test]
async fn request_without_matching_path_gets_404_when_no_route_is_catch_all() {
    let (gw, _ups) = gateway_with(&["a"], "- {id: a, upstream: a, match: {path: {prefix: /a}}}\n").await;
    assert_eq!(answered_by(gw.request(Method::GET, "/a/1")).await, "a");
    assert_eq!(answered_by(gw.request(Method::GET, "/b")).await, "status 404");
    assert_eq!(answered_by(gw.request(Method::GET, "/ab")).await, "status 404");
}

#[tokio::test]
async fn methods_headers_and_query_conditions_select_routes() {
    let (gw, _ups) = gateway_with(
        &["base", "writes", "canary", "user", "debug", "clean", "v2", "flag"],
        r#"
- {id: base, upstream: base, match: {path: {prefix: /r}}}
- {id: writes, upstream: writes, match: {path: {prefix: /r}, methods: [POST, PUT]}}
- {id: canary, upstream: canary, match: {path: {prefix: /r}, headers: [{name: X-Env, exact: canary}]}}
- {id: user, upstream: user, match: {path: {prefix: /r}, headers: [{name: x-user, regex: "u[0-9]+"}]}}
- {id: debug, upstream: debug, match: {path: {prefix: /r}, headers: [{name: x-debug, present: true}]}}
- {id: clean, upstream: clean, match: {path: {exact: /clean}, headers: [{name: x-skip, present: false}]}}
- {id: v2, upstream: v2, match: {path: {prefix: /r}, query: [{name: version, exact: "2"}]}}
- {id: flag, upstream: flag, match: {path: {prefix: /r}, query: [{name: flag, regex: "on|yes"}]}}
"#,
    )
    .await;
    let req = |m: Method, path: &str| gw.request(m, path);

    assert_eq!(answered_by(req(Method::GET, "/r")).await, "base");
    assert_eq!(answered_by(req(Method::POST, "/r/items")).await, "writes");
    assert_eq!(answered_by(req(Method::PUT, "/r/items/1")).await, "writes");
    assert_eq!(
        answered_by(req(Method::DELETE, "/r/items/1")).await,
        "base",
        "method not listed"
    );

    assert_eq!(
        answered_by(req(Method::GET, "/r").header("x-env", "canary")).await,
        "canary"
    );
    assert_eq!(
        answered_by(req(Method::GET, "/r").header("x-env", "Canary")).await,
        "base",
        "exact is case-sensitive"
    );
    assert_eq!(
        answered_by(req(Method::GET, "/r").header("x-user", "u42")).await,
        "user"
    );
    assert_eq!(
        answered_by(req(Method::GET, "/r").header("x-user", "u42x")).await,
        "base",
        "regex is anchored"
    );
    assert_eq!(
        answered_by(req(Method::GET, "/r").header("x-debug", "")).await,
        "debug",
        "present with any value"
    );

    assert_eq!(answered_by(req(Method::GET, "/clean")).await, "clean");
    assert_eq!(
        answered_by(req(Method::GET, "/clean").header("x-skip", "1")).await,
        "status 404",
        "present: false"
    );

    assert_eq!(answered_by(req(Method::GET, "/r?a=1&version=2")).await, "v2");
    assert_eq!(answered_by(req(Method::GET, "/r?version=20")).await, "base");
    assert_eq!(answered_by(req(Method::GET, "/r?flag=yes")).await, "flag");
    assert_eq!(
        answered_by(req(Method::GET, "/r?flag=%6Fn")).await,
        "flag",
        "query values are percent-decoded"
    );
    assert_eq!(answered_by(req(Method::GET, "/r?flag=maybe")).await, "base");
}

#[tokio::test]
async fn more_conditions_then_priority_then_config_order_break_ties() {
    let (gw, _ups) = gateway_with(
        &["low", "high", "first", "second", "get", "loud"],
        r#"
- {id: low, upstream: low, priority: 1, match: {path: {prefix: /p}}}
- {id: high, upstream: high, priority: 5, match: {path: {prefix: /p}}}
- {id: first, upstream: first, match: {path: {prefix: /o}}}
- {id: second, upstream: second, match: {path: {prefix: /o}}}
- {id: loud, upstream: loud, priority: 100, match: {path: {prefix: /c}}}
- {id: get, upstream: get, match: {path: {prefix: /c}, methods: [GET]}}
"#,
    )
    .await;
    let req = |m: Method, path: &str| gw.request(m, path);

    assert_eq!(
        answered_by(req(Method::GET, "/p")).await,
        "high",
        "higher priority wins"
    );
    assert_eq!(
        answered_by(req(Method::GET, "/o")).await,
        "first",
        "equal priority: earlier route wins"
    );
    assert_eq!(
        answered_by(req(Method::GET, "/c")).await,
        "get",
        "more conditions beat a higher priority"
    );
    assert_eq!(answered_by(req(Method::POST, "/c")).await, "loud");
}
