//! A refused config changes nothing: compile builds new state for what changed and only
//! the swap publishes it, so a config refused at compile time (after the breakers of the
//! routes before the bad one were planned) leaves the serving breakers, retry budgets
//! and splits exactly as they were. Real binary, real upstream.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{eventually, Gateway, Mode, TestUpstream};

fn config(minimum_calls: u32, extra_route: &str) -> String {
    format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
- id: svc
  endpoints: [{{address: "{{{{svc}}}}"}}]
  retries: {{attempts: 0}}
  outlier_detection: {{enabled: false}}
routes:
- id: api
  upstream: svc
  match: {{path: {{prefix: /}}}}
  circuit_breaker: {{window: {{count: 10}}, minimum_calls: {minimum_calls}, failure_rate_threshold: 50, open_duration: 60s, jitter: 0}}
{extra_route}"#
    )
}

async fn breaker_state(gw: &Gateway) -> String {
    let all = gw.admin_json("/api/v1/breakers").await;
    all["breakers"]
        .as_array()
        .and_then(|l| l.iter().find(|b| b["route"] == "api"))
        .and_then(|b| b["breaker"]["state"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_refused_config_leaves_the_breaker_opening_at_the_old_threshold() {
    let svc = TestUpstream::start("svc").await;
    let gw = Gateway::start(&config(5, ""), &[&svc]).await;

    // The same breaker asked to open after 2 calls, in a config whose second route has
    // a filter spec only the compile step finds wrong (`per` is not a duration).
    let refused = config(
        2,
        "- {id: bad, upstream: svc, match: {path: {prefix: /bad}}, filters: [{rate_limit: {requests: 1, per: soon}}]}\n",
    );
    let shown: Value = gw.reload(&refused).await;
    let rejected = &shown["last_rejected"];
    assert!(
        rejected["errors"]
            .to_string()
            .contains("routes[1].filters[0].rate_limit.per"),
        "the config is refused at compile time: {shown}"
    );
    assert_eq!(shown["version"], 1, "the first config still serves: {shown}");

    svc.set_mode(Mode::Status(500)).await;
    for i in 1..=4 {
        assert_eq!(
            gw.get("/x").await.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "call {i}"
        );
        assert_eq!(
            breaker_state(&gw).await,
            "closed",
            "{i} calls are under the serving minimum_calls (5), whatever the refused config said"
        );
    }
    assert_eq!(gw.get("/x").await.status(), StatusCode::INTERNAL_SERVER_ERROR);
    eventually(
        Duration::from_secs(5),
        "the breaker opens on the 5th failure",
        || async { breaker_state(&gw).await == "open" },
    )
    .await;
    assert_eq!(svc.requests(), 5);
}

#[tokio::test]
async fn an_accepted_config_reconfigures_the_breaker_keeping_its_state() {
    let svc = TestUpstream::start("svc").await;
    let gw = Gateway::start(&config(5, ""), &[&svc]).await;
    svc.set_mode(Mode::Status(500)).await;
    assert_eq!(gw.get("/x").await.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let shown: Value = gw.reload(&config(2, "")).await;
    assert!(shown["last_rejected"].is_null(), "{shown}");
    // The window kept the first failure: one more reaches the new minimum of 2.
    assert_eq!(gw.get("/x").await.status(), StatusCode::INTERNAL_SERVER_ERROR);
    eventually(
        Duration::from_secs(5),
        "the breaker opens at the new threshold",
        || async { breaker_state(&gw).await == "open" },
    )
    .await;
    assert_eq!(svc.requests(), 2);
}
