//! What a reload keeps and how reloads coalesce: active-health marks, outlier ejections
//! and retry-budget counters survive a reload that changes an unrelated route (as the
//! breaker's state does, see `resilience.rs`); a burst of config writes is applied as
//! fewer reloads, and the newest content wins.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{eventually, upstream_of, Gateway, Mode, TestUpstream};

/// Upstreams `hc` (a, b; TCP health check), `od` (c, d; outlier ejection) and `rb` (e;
/// one retry, budget of one), none retried elsewhere; routes `/hc`, `/od`, `/rb`, and
/// `/other` when `other`.
fn config(other: bool) -> String {
    let other = if other {
        "- {id: other, upstream: hc, match: {path: {prefix: /other}}}\n"
    } else {
        ""
    };
    format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
- id: hc
  endpoints: [{{address: "{{{{a}}}}"}}, {{address: "{{{{b}}}}"}}]
  health_check: {{kind: tcp, interval: 1s, timeout: 300ms, unhealthy_threshold: 1, healthy_threshold: 1}}
  retries: {{attempts: 0}}
  outlier_detection: {{enabled: false}}
- id: od
  endpoints: [{{address: "{{{{c}}}}"}}, {{address: "{{{{d}}}}"}}]
  retries: {{attempts: 0}}
  outlier_detection: {{consecutive_5xx: 2, base_ejection_time: 60s, max_ejection_percent: 50}}
- id: rb
  endpoints: [{{address: "{{{{e}}}}"}}]
  retries: {{attempts: 1, on: [gateway_error], backoff: 10ms, budget: {{percent: 0, min_concurrent: 1}}}}
  outlier_detection: {{enabled: false}}
routes:
- {{id: hc, upstream: hc, match: {{path: {{prefix: /hc}}}}}}
- {{id: od, upstream: od, match: {{path: {{prefix: /od}}}}}}
- {{id: rb, upstream: rb, match: {{path: {{prefix: /rb}}}}}}
{other}"#
    )
}

fn upstream<'a>(view: &'a Value, id: &str) -> &'a Value {
    view["upstreams"]
        .as_array()
        .and_then(|l| l.iter().find(|u| u["id"] == id))
        .unwrap_or_else(|| panic!("no upstream {id}: {view}"))
}

fn endpoint<'a>(view: &'a Value, id: &str, addr: std::net::SocketAddr) -> &'a Value {
    upstream(view, id)["endpoints"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["address"] == addr.to_string()))
        .unwrap_or_else(|| panic!("no endpoint {addr} in {id}: {view}"))
}

#[tokio::test]
async fn health_ejection_and_retry_budget_state_survive_an_unrelated_reload() {
    let ups = TestUpstream::start_many(&["a", "b", "c", "d", "e"]).await;
    let (a, b, c, d, e) = (&ups[0], &ups[1], &ups[2], &ups[3], &ups[4]);
    let gw = Gateway::start(&config(false), &[a, b, c, d, e]).await;

    a.set_mode(Mode::Refuse).await;
    eventually(Duration::from_secs(8), "a is marked unhealthy", || async {
        endpoint(&gw.admin_json("/api/v1/upstreams").await, "hc", a.addr())["active_health"] == "unhealthy"
    })
    .await;
    c.set_mode(Mode::Status(500)).await;
    for _ in 0..4 {
        gw.get("/od").await;
    }
    eventually(Duration::from_secs(5), "c is ejected", || async {
        endpoint(&gw.admin_json("/api/v1/upstreams").await, "od", c.addr())["outlier"]["ejected"] == true
    })
    .await;
    e.set_mode(Mode::Status(503)).await;
    for _ in 0..3 {
        assert_eq!(gw.get("/rb").await.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    // The budget's active counts fall when each request's completion phase runs, which
    // may be just after the client has its answer.
    eventually(
        Duration::from_secs(5),
        "the retried requests have ended",
        || async {
            upstream(&gw.admin_json("/api/v1/upstreams").await, "rb")["retry_budget"]["active_requests"] == 0
        },
    )
    .await;
    let before = gw.admin_json("/api/v1/upstreams").await;
    assert_eq!(
        upstream(&before, "rb")["retry_budget"]["retries_started"],
        3,
        "{before}"
    );

    let shown = gw.reload(&config(true)).await;
    assert!(shown["last_rejected"].is_null(), "{shown}");
    assert_eq!(shown["version"], 2, "{shown}");

    // Right after the reload, before the next health check (1 s interval) could mark a
    // again.
    let after = gw.admin_json("/api/v1/upstreams").await;
    assert_eq!(
        endpoint(&after, "hc", a.addr())["active_health"],
        "unhealthy",
        "{after}"
    );
    assert_eq!(
        endpoint(&after, "od", c.addr())["outlier"]["ejected"],
        true,
        "{after}"
    );
    assert_eq!(
        upstream(&after, "rb")["retry_budget"],
        upstream(&before, "rb")["retry_budget"],
        "the retry budget and its counters are the same object"
    );
    c.reset_requests();
    for i in 0..6 {
        let resp = gw.get("/hc").await;
        assert_eq!(resp.status(), StatusCode::OK, "request {i} to hc");
        assert_eq!(upstream_of(&resp), "b");
        let resp = gw.get("/od").await;
        assert_eq!(resp.status(), StatusCode::OK, "request {i} to od");
        assert_eq!(upstream_of(&resp), "d");
    }
    assert_eq!(
        c.requests(),
        0,
        "the ejected endpoint gets nothing after the reload"
    );
    assert_eq!(
        gw.get("/other").await.status(),
        StatusCode::OK,
        "the new route serves"
    );
}

#[tokio::test]
async fn a_burst_of_config_writes_coalesces_and_the_newest_wins() {
    let a = TestUpstream::start("a").await;
    let generation = |i: usize| {
        format!(
            "listeners: [{{name: web, listen: \"{{{{http}}}}\"}}]\nupstreams: [{{id: a, endpoints: [{{address: \"{{{{a}}}}\"}}]}}]\nroutes: [{{id: gen, upstream: a, match: {{path: {{prefix: /gen{i}/}}}}}}]\n"
        )
    };
    let gw = Gateway::start(&generation(0), &[&a]).await;
    assert_eq!(gw.get("/gen0/").await.status(), StatusCode::OK);
    let reloads = |m: &crate::support::Metrics| m.value("sluice_config_reloads_total", &[]);
    let before = reloads(&gw.metrics().await);

    let writes = 20;
    for i in 1..=writes {
        gw.write_config(&generation(i));
    }
    let last = format!("/gen{writes}/");
    eventually(Duration::from_secs(10), "the last write is served", || async {
        gw.get(&last).await.status() == StatusCode::OK
    })
    .await;
    assert_eq!(
        gw.get(&format!("/gen{}/", writes - 1)).await.status(),
        StatusCode::NOT_FOUND,
        "nothing older is served"
    );
    let config = gw.admin_json("/api/v1/config").await;
    let version = config["version"].as_f64().unwrap_or_default();
    let applied =
        |m: &crate::support::Metrics| m.value("sluice_config_reloads_total", &[("outcome", "applied")]);
    let m = gw
        .metrics_when(Duration::from_secs(5), |m| applied(m) >= version)
        .await;
    // The initial load counts as applied too.
    assert_eq!(
        version,
        applied(&m),
        "each applied config is one version: {config}"
    );
    let processed = reloads(&m) - before;
    assert!(
        processed >= 1.0 && processed < writes as f64,
        "{writes} writes were processed as {processed} reloads"
    );
    assert!(
        version < 1.0 + writes as f64,
        "fewer versions than writes: {config}"
    );
}
