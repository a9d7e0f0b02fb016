//! Access control at the edge: `forward_auth` against a real auth service (a
//! [`TestUpstream`] whose answers, status and echo body, are what the gateway passes
//! on), `ip_restriction` on IPv4 and IPv6 listeners and through `trusted_proxies`, and
//! `cors` preflights and actual requests.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{free_port, upstream_entries, Gateway, Mode, TestCa, TestUpstream, TlsUpstream};

/// A gateway listening on `127.0.0.1` (`web`) and `[::1]` (`web6`, port [`Edge::v6`]).
struct Edge {
    gw: Gateway,
    v6: u16,
}

impl std::ops::Deref for Edge {
    type Target = Gateway;
    fn deref(&self) -> &Gateway {
        &self.gw
    }
}

impl Edge {
    fn v6_url(&self, path: &str) -> String {
        format!("http://[::1]:{}{path}", self.v6)
    }
}

/// A port free on `[::1]`, with its number held on `127.0.0.1` until the returned
/// listener is dropped, so the gateway's other ports (picked meanwhile) cannot be the
/// same number (validation refuses two listeners on one port).
fn v6_port() -> (u16, std::net::TcpListener) {
    for _ in 0..100 {
        let hold = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = hold.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("::1", port)).is_ok() {
            return (port, hold);
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1");
}

/// A gateway with the upstreams `ups`, `extra` top-level YAML and `routes`.
async fn gateway(ups: &[&TestUpstream], extra: &str, routes: &str) -> Edge {
    let yaml = format!(
        "listeners: [{{name: web, listen: \"{{{{http}}}}\"}}, {{name: web6, listen: \"[::1]:{{{{v6port}}}}\"}}]\n{extra}upstreams:\n{}routes:\n{routes}",
        upstream_entries(ups)
    );
    let (v6, hold) = v6_port();
    let gw = Gateway::builder(&yaml)
        .upstreams(ups)
        .var("v6port", &v6.to_string())
        .start()
        .await;
    drop(hold);
    Edge { gw, v6 }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn json(resp: reqwest::Response) -> Value {
    resp.json().await.expect("a JSON body")
}

#[tokio::test]
async fn forward_auth_allows_with_its_headers_and_denies_with_its_answer() {
    let app = TestUpstream::start("app").await;
    let auth = TestUpstream::start("auth").await;
    let gw = gateway(
        &[&app, &auth],
        "",
        r#"
- id: allow
  upstream: app
  match: {path: {prefix: /allow}}
  filters:
    - forward_auth: {url: "http://{{auth}}/verify", upstream_headers: [x-upstream], consumer_header: x-upstream}
- id: deny
  upstream: app
  match: {path: {prefix: /deny}}
  filters:
    - forward_auth: {url: "http://{{auth}}/status/401", request_headers: [authorization, x-tenant]}
"#,
    )
    .await;

    // Allowed: the service's header replaces the client's forged copy and names the
    // consumer.
    let resp = gw
        .request(Method::GET, "/allow/x")
        .header("x-upstream", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echo = json(resp).await;
    assert_eq!(echo["upstream"], "app");
    assert_eq!(echo["headers"]["x-upstream"], "auth", "{echo}");
    assert_eq!(echo["headers"]["x-sluice-consumer"], "auth", "{echo}");
    assert_eq!(auth.requests(), 1);
    assert_eq!(app.requests(), 1);

    // Denied: the service's status and body reach the client; the app is not called.
    let resp = gw
        .request(Method::POST, "/deny/orders?page=2")
        .header("authorization", "Bearer abc")
        .header("x-tenant", "t1")
        .header("x-secret", "not-for-auth")
        .header("cookie", "c=1")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let seen = json(resp).await;
    assert_eq!(seen["upstream"], "auth", "the body is the service's: {seen}");
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/status/401");
    assert_eq!(seen["body"], "", "the request body is not sent to the service");
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-method"], "POST", "{h}");
    assert_eq!(h["x-forwarded-uri"], "/deny/orders?page=2", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert_eq!(h["x-forwarded-host"], gw.http_addr().to_string(), "{h}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["authorization"], "Bearer abc", "{h}");
    assert_eq!(h["x-tenant"], "t1", "{h}");
    assert!(h.get("x-secret").is_none() && h.get("cookie").is_none(), "{h}");
    assert!(h["x-request-id"].as_str().is_some_and(|id| !id.is_empty()), "{h}");
    assert_eq!(app.requests(), 1, "a denied request never reaches the upstream");
}

#[tokio::test]
async fn forward_auth_failure_modes_answer_within_the_timeout() {
    let app = TestUpstream::start("app").await;
    let slow = TestUpstream::start("slow").await;
    slow.set_mode(Mode::Hang).await;
    let gone = free_port();
    let gw = gateway(
        &[&app, &slow],
        "",
        &format!(
            r#"
- id: closed
  upstream: app
  match: {{path: {{prefix: /closed}}}}
  filters: [{{forward_auth: {{url: "http://{{{{slow}}}}/", timeout: 300ms}}}}]
- id: open
  upstream: app
  match: {{path: {{prefix: /open}}}}
  filters: [{{forward_auth: {{url: "http://{{{{slow}}}}/", timeout: 300ms, on_error: allow, upstream_headers: [x-user]}}}}]
- id: gone
  upstream: app
  match: {{path: {{prefix: /gone}}}}
  filters: [{{forward_auth: {{url: "http://127.0.0.1:{gone}/"}}}}]
"#
        ),
    )
    .await;

    let start = Instant::now();
    let resp = gw.get("/closed").await;
    let took = start.elapsed();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = json(resp).await;
    assert_eq!(body["status"], 503, "{body}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "a hanging service is cut off at its timeout: {took:?}"
    );
    assert_eq!(app.requests(), 0);

    let start = Instant::now();
    let resp = gw
        .request(Method::GET, "/open")
        .header("x-user", "forged")
        .send()
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(resp.status(), StatusCode::OK, "on_error: allow lets it through");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let echo = json(resp).await;
    assert!(
        echo["headers"].get("x-user").is_none(),
        "the client's copy is removed when failing open: {echo}"
    );

    let start = Instant::now();
    let resp = gw.get("/gone").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    assert_eq!(
        app.requests(),
        1,
        "only the fail-open request reached the upstream"
    );

    let m = gw.metrics().await;
    let count = |r: &str| m.value("sluice_forward_auth_total", &[("result", r)]);
    assert_eq!(count("timeout"), 2.0);
    assert_eq!(count("unreachable"), 1.0);
    assert_eq!(
        m.get("sluice_forward_auth_total", &[("result", "allowed")]),
        Some(0.0),
        "every result is exported from the start"
    );
}

#[tokio::test]
async fn forward_auth_over_https_trusts_its_ca_file_only() {
    let app = TestUpstream::start("app").await;
    let ca = TestCa::new("auth-ca");
    let auth = TlsUpstream::start("tls-auth", &ca.issue(&["127.0.0.1"])).await;
    let url = format!("https://127.0.0.1:{}/verify", auth.addr().port());
    let yaml = format!(
        "listeners: [{{name: web, listen: \"{{{{http}}}}\"}}]\nupstreams:\n{}routes:\n{}",
        upstream_entries(&[&app]),
        format_args!(
            r#"
- id: private
  upstream: app
  match: {{path: {{prefix: /private}}}}
  filters: [{{forward_auth: {{url: "{url}", ca_file: "{{{{file:auth-ca.pem}}}}", upstream_headers: [x-upstream]}}}}]
- id: public-roots
  upstream: app
  match: {{path: {{prefix: /public}}}}
  filters: [{{forward_auth: {{url: "{url}"}}}}]
"#
        )
    );
    let gw = Gateway::builder(&yaml)
        .upstream(&app)
        .file("auth-ca.pem", ca.pem())
        .start()
        .await;

    let resp = gw.get("/private").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let echo = json(resp).await;
    assert_eq!(echo["headers"]["x-upstream"], "tls-auth", "{echo}");
    assert_eq!(auth.handshakes().len(), 1);

    // The test CA is not a public root: the handshake fails, and on_error (deny) answers.
    let resp = gw.get("/public").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.requests(), 1);
    let m = gw.metrics().await;
    assert_eq!(
        m.value("sluice_forward_auth_total", &[("result", "unreachable")]),
        1.0
    );
}

#[tokio::test]
async fn ip_rules_on_ipv4_and_ipv6_with_deny_winning() {
    let app = TestUpstream::start("app").await;
    let gw = gateway(
        &[&app],
        "",
        r#"
- {id: v4only, upstream: app, match: {path: {prefix: /v4only}}, filters: [{ip_restriction: {allow: [127.0.0.0/8]}}]}
- {id: nov6, upstream: app, match: {path: {prefix: /nov6}}, filters: [{ip_restriction: {deny: ["::1/128"]}}]}
- {id: both, upstream: app, match: {path: {prefix: /both}}, filters: [{ip_restriction: {allow: [127.0.0.0/8, "::1"], deny: [127.0.0.1]}}]}
"#,
    )
    .await;
    let c = client();
    let v4 = |path: &str| c.get(gw.http_url(path)).send();
    let v6 = |path: &str| c.get(gw.v6_url(path)).send();

    assert_eq!(v4("/v4only").await.unwrap().status(), StatusCode::OK);
    let refused = v6("/v4only").await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(json(refused).await["error"], "forbidden");
    assert_eq!(v4("/nov6").await.unwrap().status(), StatusCode::OK);
    assert_eq!(v6("/nov6").await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(
        v4("/both").await.unwrap().status(),
        StatusCode::FORBIDDEN,
        "deny wins"
    );
    assert_eq!(v6("/both").await.unwrap().status(), StatusCode::OK);
    assert_eq!(app.requests(), 3, "refused requests never reach the upstream");
}

#[tokio::test]
async fn ip_rules_see_the_client_behind_a_trusted_proxy() {
    let app = TestUpstream::start("app").await;
    let gw = gateway(
        &[&app],
        "server: {trusted_proxies: [127.0.0.1/32]}\n",
        r#"
- {id: office, upstream: app, match: {path: {prefix: /office}}, filters: [{ip_restriction: {allow: [203.0.113.0/24], deny: [203.0.113.66]}}]}
"#,
    )
    .await;
    let c = client();
    let via_proxy = |xff: &'static str| {
        c.get(gw.http_url("/office"))
            .header("x-forwarded-for", xff)
            .send()
    };
    assert_eq!(via_proxy("203.0.113.9").await.unwrap().status(), StatusCode::OK);
    // The right-most untrusted hop counts, not what the client wrote first.
    assert_eq!(
        via_proxy("203.0.113.9, 198.51.100.7").await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        via_proxy("203.0.113.66").await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        c.get(gw.http_url("/office")).send().await.unwrap().status(),
        StatusCode::FORBIDDEN,
        "the proxy itself is not in the allow list"
    );
    // ::1 is not a trusted proxy: its X-Forwarded-For is ignored.
    let untrusted = c
        .get(gw.v6_url("/office"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(untrusted.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.requests(), 1);
}

#[tokio::test]
async fn cors_preflight_is_answered_by_the_gateway_and_actual_requests_get_headers() {
    let app = TestUpstream::start("app").await;
    let gw = gateway(
        &[&app],
        "",
        r#"
- id: api
  upstream: app
  match: {path: {prefix: /api}}
  filters:
    - cors:
        allow_origins: ["https://app.example.com", "https://*.tenants.example.com"]
        allow_methods: [GET, PUT]
        allow_headers: [content-type, x-token]
        expose_headers: [x-upstream]
        allow_credentials: true
        max_age: 10m
    - ip_restriction: {deny: ["::1"]}
"#,
    )
    .await;
    let c = client();

    let resp = c
        .request(Method::OPTIONS, gw.http_url("/api/items"))
        .header("origin", "https://a.tenants.example.com")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "https://a.tenants.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET, PUT");
    assert_eq!(h["access-control-allow-headers"], "content-type, x-token");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(h["vary"], "Origin");
    assert!(h.get("x-upstream").is_none());
    assert_eq!(app.requests(), 0, "a preflight never reaches the upstream");

    let resp = c
        .request(Method::OPTIONS, gw.http_url("/api/items"))
        .header("origin", "https://evil.test")
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(
        !resp
            .headers()
            .keys()
            .any(|k| k.as_str().starts_with("access-control-")),
        "{:?}",
        resp.headers()
    );
    assert_eq!(app.requests(), 0);

    let resp = c
        .get(gw.http_url("/api/items"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert_eq!(h["x-upstream"], "app");
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-expose-headers"], "x-upstream");
    assert_eq!(h["vary"], "Origin");

    let resp = c
        .get(gw.http_url("/api/items"))
        .header("origin", "https://evil.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the request itself goes through");
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    assert_eq!(app.requests(), 2);

    // A later filter's refusal still carries the CORS headers, so the page can read it.
    let resp = c
        .get(gw.v6_url("/api/items"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(app.requests(), 2);
}
