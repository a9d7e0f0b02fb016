//! Responses the gateway makes itself when it cannot proxy: a JSON body
//! `{"error", "status", "message", "request_id"}` whose request id is the one in the
//! `x-request-id` header.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{upstream_entries, Gateway, Mode, RawHttp1, TestUpstream};

/// A gateway with routes `/up/*` → upstream `up` and `/slow/*` → `up` with a 300 ms read
/// timeout; nothing else is routed.
async fn gateway(up: &TestUpstream) -> Gateway {
    let yaml = format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
{}routes:
- {{id: up, upstream: up, match: {{path: {{prefix: /up}}}}}}
- {{id: slow, upstream: up, match: {{path: {{prefix: /slow}}}}, timeouts: {{read: 300ms}}}}
"#,
        upstream_entries(&[up])
    );
    Gateway::start(&yaml, &[up]).await
}

/// Checks the error shape and returns the body.
async fn error_body(resp: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let header_id = resp.headers()["x-request-id"]
        .to_str()
        .expect("ASCII request id")
        .to_string();
    let body: Value = resp.json().await.expect("error body is JSON");
    assert_eq!(body["error"], code, "{body}");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert!(body["message"].is_string(), "{body}");
    assert_eq!(
        body["request_id"],
        header_id.as_str(),
        "the body's request id is the header's: {body}"
    );
    body
}

#[tokio::test]
async fn unrouted_request_gets_404_json_with_its_request_id() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(&up).await;

    let body = error_body(gw.get("/nowhere").await, StatusCode::NOT_FOUND, "no_route").await;
    assert!(!body["request_id"].as_str().unwrap_or_default().is_empty());

    let resp = gw
        .request(reqwest::Method::GET, "/nowhere")
        .header("x-request-id", "trace-404")
        .send()
        .await
        .unwrap();
    let body = error_body(resp, StatusCode::NOT_FOUND, "no_route").await;
    assert_eq!(body["request_id"], "trace-404");
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn refused_upstream_connection_gets_502_json() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(&up).await;
    assert_eq!(gw.get("/up/ok").await.status(), StatusCode::OK);

    up.set_mode(Mode::Refuse).await;
    error_body(
        gw.get("/up/refused").await,
        StatusCode::BAD_GATEWAY,
        "upstream_connect",
    )
    .await;

    up.set_mode(Mode::Healthy).await;
    assert_eq!(
        gw.get("/up/back").await.status(),
        StatusCode::OK,
        "served again once the upstream listens"
    );
}

#[tokio::test]
async fn upstream_that_hangs_past_the_read_timeout_gets_504_json() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(&up).await;
    up.set_mode(Mode::Hang).await;

    let started = Instant::now();
    error_body(
        gw.get("/slow/hang").await,
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
    )
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "answered after the 300 ms read timeout, not before: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "answered soon after the read timeout: {took:?}"
    );
}

#[tokio::test]
async fn keepalive_is_reused_and_an_upstream_error_closes_the_connection_as_it_says() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(&up).await;

    let mut conn = RawHttp1::connect(gw.http_addr()).await;
    for path in ["/up/one", "/up/two"] {
        let resp = conn
            .get(path)
            .await
            .unwrap_or_else(|| panic!("{path} answered on the kept-alive connection"));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("connection"), Some("keep-alive"), "{path}");
    }

    up.set_mode(Mode::Refuse).await;
    let failed = conn
        .get("/up/refused")
        .await
        .expect("a 502 on the same connection");
    assert_eq!(failed.status, 502);
    assert_eq!(
        failed.header("connection"),
        Some("close"),
        "pingora does not reuse a connection after a failed proxy attempt, and says so"
    );
    assert!(
        conn.closed_within(Duration::from_secs(5)).await,
        "the gateway closed the connection as announced"
    );
}
