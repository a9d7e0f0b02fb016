//! The access log: with `server.access_log: true`, one JSON line per request on the
//! gateway's stdout, written by its log thread.

use std::time::Duration;

use serde_json::Value;

use crate::support::{eventually, upstream_entries, Gateway, TestUpstream};

/// The JSON lines the gateway has written to stdout so far.
fn access_lines(gw: &Gateway) -> Vec<Value> {
    std::fs::read_to_string(gw.dir().join("stdout.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The line whose `request_id` is `id`.
fn line_for<'a>(lines: &'a [Value], id: &str) -> Option<&'a Value> {
    lines.iter().find(|l| l["request_id"] == id)
}

#[tokio::test]
async fn access_log_lines_carry_the_request_and_its_outcome() {
    let up = TestUpstream::start("api").await;
    let yaml = format!(
        r#"
server: {{access_log: true}}
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
{}routes:
- {{id: users, upstream: api, match: {{path: {{prefix: /users}}}}, circuit_breaker: {{}}}}
"#,
        upstream_entries(&[&up])
    );
    let gw = Gateway::start(&yaml, &[&up]).await;

    // A proxied request with a body, and one no route matches.
    let resp = gw
        .request(reqwest::Method::POST, "/users/7?x=1")
        .header("user-agent", "sluice-it/1")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = resp.bytes().await.unwrap();
    let missing = gw.get("/nowhere").await;
    assert_eq!(missing.status(), 404);
    let missing_id = missing.headers()["x-request-id"].to_str().unwrap().to_string();

    eventually(Duration::from_secs(10), "both access-log lines", || {
        let lines = access_lines(&gw);
        let found = line_for(&lines, &id).is_some() && line_for(&lines, &missing_id).is_some();
        async move { found }
    })
    .await;
    let lines = access_lines(&gw);
    let line = line_for(&lines, &id).unwrap();
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["method"], "POST", "{line}");
    assert_eq!(line["path"], "/users/7", "{line}");
    assert_eq!(line["route"], "users", "{line}");
    assert_eq!(line["backend"], "api", "{line}");
    assert_eq!(line["upstream"], up.addr().to_string(), "{line}");
    assert_eq!(line["bytes_in"], 5, "{line}");
    assert_eq!(line["bytes_out"], body.len(), "{line}");
    assert_eq!(line["client"], "127.0.0.1", "{line}");
    assert_eq!(line["host"], gw.http_addr().to_string(), "{line}");
    assert_eq!(line["user_agent"], "sluice-it/1", "{line}");
    assert_eq!(line["breaker"], "closed", "{line}");
    assert_eq!(line["retries"], 0, "{line}");
    assert_eq!(line["error"], Value::Null, "{line}");
    assert!(line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{line}");
    let time = line["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[19] == b'.',
        "RFC 3339 UTC with milliseconds: {time}"
    );

    let line = line_for(&lines, &missing_id).unwrap();
    assert_eq!(line["status"], 404, "{line}");
    assert_eq!(line["path"], "/nowhere", "{line}");
    assert_eq!(line["route"], Value::Null, "{line}");
    assert_eq!(line["error"], "no_route", "{line}");
    assert_eq!(line["breaker"], Value::Null, "{line}");

    // Nothing was dropped, and the counter is exposed.
    let text = gw.admin_get("/metrics").await.text().await.unwrap();
    assert!(
        text.lines().any(|l| l == "sluice_access_log_dropped_total 0"),
        "{text}"
    );
}
