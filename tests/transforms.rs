//! What the gateway changes on the way: path rewrites and header rules as the upstream
//! sees them, `X-Forwarded-*`, request ids, and the filters that answer by themselves
//! (`redirect`, `direct_response`).

use reqwest::header::{HOST, LOCATION};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{upstream_entries, upstream_of, Gateway, TestUpstream};

const LISTENER: &str = "listeners: [{name: web, listen: \"{{http}}\"}]\n";

/// A gateway with the single upstream `up` and `routes`, plus `extra` top-level YAML.
async fn gateway(up: &TestUpstream, extra: &str, routes: &str) -> Gateway {
    let yaml = format!(
        "{LISTENER}{extra}upstreams:\n{}routes:\n{routes}",
        upstream_entries(&[up])
    );
    Gateway::start(&yaml, &[up]).await
}

/// Sends the request, expects 200 from the upstream and returns its echo of the request.
async fn upstream_view(req: reqwest::RequestBuilder) -> (reqwest::header::HeaderMap, Value) {
    let resp = req.send().await.expect("request through the gateway");
    assert_eq!(resp.status(), StatusCode::OK);
    let headers = resp.headers().clone();
    (headers, resp.json().await.expect("upstream echo is JSON"))
}

#[tokio::test]
async fn path_rewrites_are_what_the_upstream_sees() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(
        &up,
        "",
        r#"
- {id: strip, upstream: up, match: {path: {prefix: /strip}}, rewrite: {strip_prefix: true}}
- {id: swap, upstream: up, match: {path: {prefix: /v1}}, rewrite: {strip_prefix: true, prefix: /v2}}
- {id: replace, upstream: up, match: {path: {prefix: /old}}, rewrite: {prefix: /new}}
- {id: regex, upstream: up, match: {path: {regex: "/u/[0-9]+"}}, rewrite: {regex: {pattern: "^/u/([0-9]+)$", replacement: "/users/$1"}}}
- {id: fixed, upstream: up, match: {path: {exact: /fixed}}, rewrite: {path: /static/index.html}}
- {id: plain, upstream: up, match: {path: {prefix: /plain}}}
"#,
    )
    .await;
    let seen = |path: &'static str| {
        let req = gw.request(Method::GET, path);
        async move {
            let (_, echo) = upstream_view(req).await;
            let query = echo["query"]
                .as_str()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            format!("{}{query}", echo["path"].as_str().expect("echo has a path"))
        }
    };

    assert_eq!(seen("/strip/users?x=1").await, "/users?x=1");
    assert_eq!(seen("/strip").await, "/");
    assert_eq!(seen("/v1/items/7").await, "/v2/items/7");
    assert_eq!(seen("/old/a/b").await, "/new/a/b");
    assert_eq!(seen("/u/42?full=true").await, "/users/42?full=true");
    assert_eq!(seen("/fixed?v=3").await, "/static/index.html?v=3");
    assert_eq!(seen("/plain/untouched?q=%20x").await, "/plain/untouched?q=%20x");
}

#[tokio::test]
async fn header_rules_change_the_request_upstream_and_the_response_downstream() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(
        &up,
        "",
        r#"
- id: h
  upstream: up
  headers:
    request:
      add: {x-added: a}
      set: {x-set: s, x-order: route}
      remove: [x-remove]
    response:
      set: {x-resp: r}
      add: {x-resp-added: b}
      remove: [x-upstream]
  filters:
  - headers:
      request: {set: {x-order: filter}}
      response: {set: {x-filter-resp: f}}
"#,
    )
    .await;
    let (headers, echo) = upstream_view(
        gw.request(Method::GET, "/h")
            .header("x-added", "existing")
            .header("x-set", "original")
            .header("x-remove", "gone")
            .header("x-keep", "kept"),
    )
    .await;
    let sent = &echo["headers"];
    assert_eq!(
        sent["x-added"], "existing, a",
        "add keeps the existing value: {sent}"
    );
    assert_eq!(sent["x-set"], "s", "{sent}");
    assert_eq!(sent.get("x-remove"), None, "{sent}");
    assert_eq!(sent["x-keep"], "kept", "{sent}");
    assert_eq!(
        sent["x-order"], "filter",
        "route rules run before the filter chain: {sent}"
    );

    assert_eq!(headers["x-resp"], "r");
    assert_eq!(headers["x-resp-added"], "b");
    assert_eq!(headers["x-filter-resp"], "f");
    assert!(
        !headers.contains_key("x-upstream"),
        "response remove: {headers:?}"
    );
    assert_eq!(echo["upstream"], "up");
}

#[tokio::test]
async fn forwarded_headers_describe_the_client_connection() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(&up, "", "- {id: r, upstream: up}\n").await;

    let (_, echo) = upstream_view(gw.request(Method::GET, "/").header(HOST, "shop.example.test")).await;
    let sent = &echo["headers"];
    assert_eq!(sent["x-forwarded-for"], "127.0.0.1", "{sent}");
    assert_eq!(sent["x-forwarded-proto"], "http", "{sent}");
    assert_eq!(sent["x-forwarded-host"], "shop.example.test", "{sent}");

    let (_, echo) = upstream_view(
        gw.request(Method::GET, "/")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https"),
    )
    .await;
    let sent = &echo["headers"];
    assert_eq!(
        sent["x-forwarded-for"], "127.0.0.1",
        "an untrusted peer's X-Forwarded-For is replaced: {sent}"
    );
    assert_eq!(sent["x-forwarded-proto"], "http", "{sent}");
}

#[tokio::test]
async fn forwarded_for_is_appended_to_when_the_peer_is_trusted() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(
        &up,
        "server: {trusted_proxies: [127.0.0.1/32]}\n",
        "- {id: r, upstream: up}\n",
    )
    .await;
    let (_, echo) = upstream_view(
        gw.request(Method::GET, "/")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https"),
    )
    .await;
    let sent = &echo["headers"];
    assert_eq!(sent["x-forwarded-for"], "203.0.113.9, 127.0.0.1", "{sent}");
    assert_eq!(
        sent["x-forwarded-proto"], "https",
        "a trusted proxy's scheme is kept: {sent}"
    );
}

#[tokio::test]
async fn request_id_is_propagated_when_sent_and_generated_when_absent() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(&up, "", "- {id: r, upstream: up}\n").await;

    let (headers, echo) = upstream_view(
        gw.request(Method::GET, "/")
            .header("x-request-id", "client-id-123"),
    )
    .await;
    assert_eq!(headers["x-request-id"], "client-id-123");
    assert_eq!(echo["headers"]["x-request-id"], "client-id-123");

    let mut generated = Vec::new();
    for _ in 0..2 {
        let (headers, echo) = upstream_view(gw.request(Method::GET, "/")).await;
        let id = headers["x-request-id"]
            .to_str()
            .expect("ASCII request id")
            .to_string();
        assert!(!id.is_empty());
        assert_eq!(
            echo["headers"]["x-request-id"],
            id.as_str(),
            "upstream and client see the same id"
        );
        generated.push(id);
    }
    assert_ne!(generated[0], generated[1], "each request gets its own id");

    let too_long = "x".repeat(300);
    let (headers, echo) = upstream_view(
        gw.request(Method::GET, "/")
            .header("x-request-id", too_long.as_str()),
    )
    .await;
    assert_ne!(
        headers["x-request-id"],
        too_long.as_str(),
        "an unusable id is replaced"
    );
    assert_eq!(
        echo["headers"]["x-request-id"],
        headers["x-request-id"].to_str().expect("ASCII request id")
    );
}

#[tokio::test]
async fn redirect_answers_with_location_and_status_without_calling_the_upstream() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(
        &up,
        "",
        r#"
- {id: moved, match: {path: {prefix: /old}}, filters: [{redirect: {status: 301, scheme: https, host: new.example.test, path: /new}}]}
- {id: port, match: {path: {prefix: /p}}, filters: [{redirect: {status: 308, port: 8443}}]}
- {id: host, match: {path: {prefix: /keep}}, filters: [{redirect: {host: www.example.test}}]}
- {id: rest, upstream: up}
"#,
    )
    .await;
    let redirect = |path: &'static str| {
        let req = gw.request(Method::GET, path).header(HOST, "site.example.test");
        async move {
            let resp = req.send().await.expect("request through the gateway");
            let location = resp
                .headers()
                .get(LOCATION)
                .map(|l| l.to_str().expect("ASCII Location").to_string());
            (resp.status().as_u16(), location.unwrap_or_default())
        }
    };

    assert_eq!(
        redirect("/old/page?x=1").await,
        (301, "https://new.example.test/new?x=1".to_string())
    );
    assert_eq!(
        redirect("/p/q").await,
        (308, "http://site.example.test:8443/p/q".to_string())
    );
    assert_eq!(
        redirect("/keep/a?b=c").await,
        (302, "http://www.example.test/keep/a?b=c".to_string())
    );
    assert_eq!(up.requests(), 0, "redirects never reach the upstream");
}

#[tokio::test]
async fn direct_response_answers_with_configured_status_headers_and_body() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(
        &up,
        "",
        r#"
- id: teapot
  match: {path: {exact: /tea}}
  filters:
  - direct_response: {status: 418, headers: {content-type: text/plain, x-teapot: "yes"}, body: "short and stout"}
- {id: empty, match: {path: {exact: /empty}}, filters: [{direct_response: {status: 204}}]}
- {id: rest, upstream: up}
"#,
    )
    .await;

    let resp = gw.get("/tea").await;
    assert_eq!(resp.status().as_u16(), 418);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.headers()["x-teapot"], "yes");
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.text().await.expect("body"), "short and stout");

    let resp = gw.get("/empty").await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(resp.text().await.expect("body"), "");

    let resp = gw.get("/other").await;
    assert_eq!(upstream_of(&resp), "up");
    assert_eq!(up.requests(), 1, "only the proxied request reached the upstream");
}
