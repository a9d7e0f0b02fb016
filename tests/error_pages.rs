//! Error pages: every error the gateway makes itself (404 no route, 401, 429, 502,
//! 503 breaker, 504, ...) and chosen upstream statuses answered with the listener's or
//! the route's page, chosen by `Accept`, filled with the status and the request id; the
//! status and the error code stay the one mapping's.

use std::time::Duration;

use crate::support::{Gateway, Mode, Origin, Reply, TestUpstream};

const HTML: &str =
    "<html><h1>{{status}} {{reason}}</h1><p>{{message}}</p><code>{{request_id}}</code><i>{{code}}</i></html>";
const JSON: &str = r#"{"status": {{status}}, "code": "{{code}}", "id": "{{request_id}}"}"#;

async fn gateway(up: &TestUpstream, origin: &Origin) -> Gateway {
    Gateway::builder(&format!(
        r#"
listeners:
  - name: web
    listen: "{{{{http}}}}"
    error_pages:
      pages:
        - {{content_type: "text/html; charset=utf-8", body: '{HTML}'}}
        - {{content_type: application/json, body: '{JSON}'}}
upstreams:
  - {{id: up, endpoints: [{{address: "{{{{up}}}}"}}], timeouts: {{read: 300ms}}}}
  - {{id: origin, endpoints: [{{address: "{}"}}]}}
  - {{id: dead, endpoints: [{{address: "127.0.0.1:{{{{port:dead}}}}"}}]}}
consumers:
  - {{name: alice, credentials: {{key_auth: {{keys: ["k"]}}}}}}
routes:
  - {{id: ok, upstream: up, match: {{path: {{prefix: /ok}}}}}}
  - {{id: dead, upstream: dead, match: {{path: {{prefix: /dead}}}}}}
  - {{id: limited, upstream: up, match: {{path: {{prefix: /limited}}}}, filters: [{{rate_limit: {{requests: 1, per: 1h, key: client_ip}}}}]}}
  - {{id: authed, upstream: up, match: {{path: {{prefix: /authed}}}}, filters: [{{key_auth: {{}}}}]}}
  - {{id: broken, upstream: up, match: {{path: {{prefix: /broken}}}}, circuit_breaker: {{}}}}
  - id: replaced
    upstream: origin
    match: {{path: {{prefix: /replaced}}}}
    error_pages:
      upstream_statuses: ["500-503"]
      pages: [{{content_type: text/plain, body: "route page {{{{status}}}} for {{{{request_id}}}}"}}]
"#,
        origin.addr()
    ))
    .upstream(up)
    // The pages' own `{{...}}` values pass through the test's config template as they are.
    .var("status", "{{status}}")
    .var("reason", "{{reason}}")
    .var("message", "{{message}}")
    .var("request_id", "{{request_id}}")
    .var("code", "{{code}}")
    .start()
    .await
}

struct Page {
    status: u16,
    content_type: String,
    request_id: String,
    body: String,
}

async fn get(gw: &Gateway, path: &str, accept: Option<&str>) -> Page {
    let mut req = gw.request(reqwest::Method::GET, path);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req.send().await.unwrap();
    let h = resp.headers().clone();
    Page {
        status: resp.status().as_u16(),
        content_type: h["content-type"].to_str().unwrap().to_string(),
        request_id: h["x-request-id"].to_str().unwrap().to_string(),
        body: resp.text().await.unwrap(),
    }
}

/// The HTML page for `status` and `code`, with the answer's own request id.
fn assert_html(p: &Page, status: u16, code: &str) {
    assert_eq!(p.status, status, "{}", p.body);
    assert_eq!(p.content_type, "text/html; charset=utf-8");
    assert!(p.body.starts_with(&format!("<html><h1>{status} ")), "{}", p.body);
    assert!(
        p.body.contains(&format!("<code>{}</code>", p.request_id)),
        "{}",
        p.body
    );
    assert!(p.body.contains(&format!("<i>{code}</i>")), "{}", p.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_error_gets_the_page_the_client_accepts() {
    let up = TestUpstream::start("up").await;
    let origin = Origin::start(|_| Reply::ok("fine", &[])).await;
    let gw = gateway(&up, &origin).await;

    // 404: no route. HTML by default (the first page), JSON when asked for.
    assert_html(&get(&gw, "/nowhere", None).await, 404, "no_route");
    let json = get(&gw, "/nowhere", Some("application/json")).await;
    assert_eq!(
        (json.status, json.content_type.as_str()),
        (404, "application/json")
    );
    let v: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(v["status"], 404);
    assert_eq!(v["code"], "no_route");
    assert_eq!(v["id"], json.request_id.as_str());
    let prefers_json = get(&gw, "/nowhere", Some("text/html;q=0.4, application/*;q=0.9")).await;
    assert_eq!(prefers_json.content_type, "application/json");

    // 401 and 429: filters' refusals.
    assert_html(
        &get(&gw, "/authed", Some("text/html")).await,
        401,
        "unauthenticated",
    );
    assert_eq!(get(&gw, "/limited", None).await.status, 200);
    assert_html(&get(&gw, "/limited", None).await, 429, "rate_limited");

    // 502: the upstream refuses connections.
    assert_html(&get(&gw, "/dead", None).await, 502, "upstream_connect");

    // 504: the upstream does not answer in time.
    up.set_mode(Mode::Hang).await;
    assert_html(&get(&gw, "/ok", None).await, 504, "upstream_timeout");
    up.set_mode(Mode::Healthy).await;

    // 503: the route's breaker is open.
    let forced = reqwest::Client::new()
        .post(gw.admin_url("/api/v1/breakers/broken/up"))
        .body(r#"{"state": "forced_open"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(forced.status(), 200);
    let open = get(&gw, "/broken", None).await;
    assert_html(&open, 503, "circuit_open");

    // Answers that are not errors are untouched.
    assert_eq!(get(&gw, "/ok", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chosen_upstream_statuses_are_replaced_by_the_routes_page() {
    let up = TestUpstream::start("up").await;
    let origin = Origin::start(|seen| match seen.path.as_str() {
        "/replaced/500" => Reply::ok(
            "stack trace the client should not see",
            &[("content-type", "text/plain")],
        )
        .with_status(500),
        "/replaced/504" => Reply::ok("kept", &[("content-type", "text/plain")]).with_status(504),
        "/replaced/slow" => Reply::ok("late", &[])
            .after(Duration::from_millis(10))
            .with_status(503),
        _ => Reply::ok("fine", &[("content-type", "text/plain")]),
    })
    .await;
    let gw = gateway(&up, &origin).await;
    let p = get(&gw, "/replaced/500", None).await;
    assert_eq!(p.status, 500);
    assert_eq!(p.content_type, "text/plain");
    assert_eq!(p.body, format!("route page 500 for {}", p.request_id));
    let p = get(&gw, "/replaced/slow", None).await;
    assert_eq!((p.status, p.body.starts_with("route page 503")), (503, true));
    // Statuses the route does not list pass as the upstream sent them.
    assert_eq!(get(&gw, "/replaced/504", None).await.body, "kept");
    assert_eq!(get(&gw, "/replaced/x", None).await.body, "fine");
    // The route's pages replace the listener's: its 404s are its own too.
    assert!(get(&gw, "/replaced/none", None).await.status == 200);
}
