//! Routes with several weighted backends: the exact split, a breaker per backend, the
//! backend a filter picks, and filter state that outlives a reload of its route.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{eventually, http_client, upstream_entries, upstream_of, Gateway, Mode, TestUpstream};

/// Sends `n` GETs of `path`, `parallel` at a time, and counts which upstream answered
/// each; every answer must be a 200.
async fn spread(gw: &Gateway, path: &str, n: usize, parallel: usize) -> BTreeMap<String, usize> {
    let client = http_client();
    let url = Arc::new(gw.http_url(path));
    let per_task = n / parallel;
    let tasks: Vec<_> = (0..parallel)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut seen = BTreeMap::<String, usize>::new();
                for _ in 0..per_task {
                    let resp = client
                        .get(url.as_str())
                        .send()
                        .await
                        .expect("request through the gateway");
                    assert_eq!(resp.status(), StatusCode::OK);
                    *seen.entry(upstream_of(&resp)).or_default() += 1;
                }
                seen
            })
        })
        .collect();
    let mut total = BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.expect("request task") {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

/// Upstreams `stable` and `canary` (`ups`, in that order) and route `api` splitting
/// between them with these weights, plus `extra` lines of route config.
fn split_config_for(ups: &[TestUpstream], stable: u32, canary: u32, extra: &str) -> String {
    format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
{}
routes:
- id: api
  match: {{path: {{prefix: /}}}}
  backends: [{{upstream: stable, weight: {stable}}}, {{upstream: canary, weight: {canary}}}]
{extra}
"#,
        upstream_entries(&[&ups[0], &ups[1]])
    )
}

#[tokio::test]
async fn two_weighted_backends_split_within_one_point_over_ten_thousand_requests() {
    let ups = TestUpstream::start_many(&["stable", "canary"]).await;
    let gw = Gateway::start(&split_config_for(&ups, 90, 10, ""), &[&ups[0], &ups[1]]).await;
    let seen = spread(&gw, "/x", 10_000, 8).await;
    let (stable, canary) = (seen["stable"], seen["canary"]);
    assert_eq!(stable + canary, 10_000, "{seen:?}");
    assert!(
        (8_900..=9_100).contains(&stable),
        "stable got {stable} of 10000: {seen:?}"
    );
    assert!(
        (900..=1_100).contains(&canary),
        "canary got {canary} of 10000: {seen:?}"
    );
    // What reached the upstreams, and what the gateway says it sent.
    assert_eq!((ups[0].requests(), ups[1].requests()), (stable, canary));
    let m = gw.metrics().await;
    let served = |b: &str| {
        m.value(
            "sluice_backend_requests_total",
            &[("route", "api"), ("backend", b)],
        )
    };
    assert_eq!(served("stable") as usize, stable);
    assert_eq!(served("canary") as usize, canary);
    let routes = gw.admin_json("/api/v1/routes").await;
    let backends = &routes["routes"][0]["backends"];
    assert_eq!(backends[0]["upstream"], "stable", "{routes}");
    assert_eq!(backends[0]["weight"], 90, "{routes}");
    assert_eq!(backends[1]["upstream"], "canary", "{routes}");
    assert_eq!(backends[1]["served"].as_u64(), Some(canary as u64), "{routes}");
}

#[tokio::test]
async fn the_split_is_exact_over_short_runs_too() {
    let ups = TestUpstream::start_many(&["stable", "canary"]).await;
    let gw = Gateway::start(&split_config_for(&ups, 3, 1, ""), &[&ups[0], &ups[1]]).await;
    for _ in 0..5 {
        let seen = spread(&gw, "/x", 4, 1).await;
        assert_eq!(
            (seen.get("stable"), seen.get("canary")),
            (Some(&3), Some(&1)),
            "{seen:?}"
        );
    }
}

async fn breakers(gw: &Gateway) -> Vec<(String, String, String)> {
    let all: Value = gw.admin_json("/api/v1/breakers").await;
    all["breakers"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|b| {
                    (
                        b["route"].as_str().unwrap_or_default().to_string(),
                        b["upstream"].as_str().unwrap_or_default().to_string(),
                        b["breaker"]["state"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn each_backend_has_its_own_breaker() {
    let ups = TestUpstream::start_many(&["stable", "canary"]).await;
    let yaml = split_config_for(
        &ups,
        1,
        1,
        "  circuit_breaker: {window: {count: 10}, minimum_calls: 4, failure_rate_threshold: 50, open_duration: 60s, jitter: 0}\n",
    );
    let gw = Gateway::start(&yaml, &[&ups[0], &ups[1]]).await;
    ups[1].set_mode(Mode::Status(500)).await;
    // Alternating 1:1, so 8 requests give the canary its 4 failing calls.
    for _ in 0..8 {
        gw.get("/x").await;
    }
    eventually(Duration::from_secs(5), "the canary's breaker opens", || async {
        breakers(&gw)
            .await
            .contains(&("api".into(), "canary".into(), "open".into()))
    })
    .await;
    assert!(
        breakers(&gw)
            .await
            .contains(&("api".into(), "stable".into(), "closed".into())),
        "{:?}",
        breakers(&gw).await
    );
    ups[1].reset_requests();
    let (mut ok, mut short) = (0, 0);
    for _ in 0..20 {
        let resp = gw.get("/x").await;
        match resp.status() {
            StatusCode::OK => {
                assert_eq!(upstream_of(&resp), "stable");
                ok += 1;
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(
                    resp.headers()["x-sluice-breaker"],
                    "route=api; upstream=canary; state=open"
                );
                short += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(
        (ok, short),
        (10, 10),
        "the stable half is served, the canary half short-circuited"
    );
    assert_eq!(
        ups[1].requests(),
        0,
        "nothing reaches the canary while its breaker is open"
    );
}

#[tokio::test]
async fn a_breaker_fallback_serves_an_open_backend() {
    let ups = TestUpstream::start_many(&["stable", "canary", "backup"]).await;
    let yaml = format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
{}
routes:
- id: api
  backends: [{{upstream: stable, weight: 1}}, {{upstream: canary, weight: 1}}]
  circuit_breaker: {{window: {{count: 10}}, minimum_calls: 2, failure_rate_threshold: 50, open_duration: 60s, jitter: 0, fallback_upstream: backup}}
"#,
        upstream_entries(&[&ups[0], &ups[1], &ups[2]])
    );
    let gw = Gateway::start(&yaml, &[&ups[0], &ups[1], &ups[2]]).await;
    ups[1].set_mode(Mode::Status(503)).await;
    for _ in 0..4 {
        gw.get("/").await;
    }
    eventually(Duration::from_secs(5), "the canary's breaker opens", || async {
        breakers(&gw)
            .await
            .contains(&("api".into(), "canary".into(), "open".into()))
    })
    .await;
    let seen = spread(&gw, "/", 10, 1).await;
    assert_eq!(
        (seen.get("stable"), seen.get("backup")),
        (Some(&5), Some(&5)),
        "{seen:?}"
    );
    let m = gw.metrics().await;
    assert_eq!(
        m.value(
            "sluice_backend_requests_total",
            &[("route", "api"), ("backend", "backup")]
        ),
        5.0
    );
}

#[tokio::test]
async fn a_filters_state_survives_a_reload_that_changes_another_field_of_its_route() {
    let svc = TestUpstream::start("svc").await;
    let route = |timeout: &str, requests: u32| {
        format!(
            r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
- {{id: svc, endpoints: [{{address: "{{{{svc}}}}"}}]}}
routes:
- id: api
  upstream: svc
  timeouts: {{read: {timeout}}}
  headers: {{response: {{set: {{x-read-timeout: "{timeout}"}}}}}}
  filters:
  - rate_limit: {{requests: {requests}, per: 1h}}
"#
        )
    };
    let gw = Gateway::start(&route("5s", 3), &[&svc]).await;
    for i in 0..3 {
        assert_eq!(
            gw.get("/").await.status(),
            StatusCode::OK,
            "request {i} is within the limit"
        );
    }
    // Another field of the route (timeouts, headers) changes; the limiter's spec does not.
    let cfg = gw.reload(&route("6s", 3)).await;
    assert!(cfg["last_rejected"].is_null(), "{cfg}");
    eventually(Duration::from_secs(5), "the new route serves", || async {
        gw.get("/")
            .await
            .headers()
            .get("x-read-timeout")
            .is_some_and(|v| v == "6s")
    })
    .await;
    let resp = gw.get("/").await;
    assert_eq!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the bucket was kept"
    );
    assert_eq!(resp.headers()["content-type"], "application/json");
    let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert_eq!(body["status"], 429, "{body}");
    assert_eq!(body["request_id"], id.as_str(), "{body}");
    assert_eq!(svc.requests(), 3, "refused requests never reach the upstream");
    // Its own spec changes: a new bucket.
    gw.reload(&route("6s", 5)).await;
    eventually(Duration::from_secs(5), "the new limit applies", || async {
        gw.get("/").await.status() == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn a_misspelt_filter_field_is_refused_and_the_last_good_config_keeps_serving() {
    let svc = TestUpstream::start("svc").await;
    let yaml = r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams:
- {id: svc, endpoints: [{address: "{{svc}}"}]}
routes:
- {id: api, upstream: svc}
"#;
    let gw = Gateway::start(yaml, &[&svc]).await;
    let bad = yaml.replace(
        "- {id: api, upstream: svc}",
        "- {id: api, upstream: svc, filters: [{rate_limit: {requests: 1, pre: 1s}}]}",
    );
    let cfg = gw.reload(&bad).await;
    let errors = cfg["last_rejected"]["errors"].to_string();
    assert!(
        errors.contains("routes[0].filters[0].rate_limit.pre: unknown field `pre`"),
        "{cfg}"
    );
    for _ in 0..5 {
        assert_eq!(gw.get("/").await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_client_cannot_claim_to_be_a_consumer() {
    let svc = TestUpstream::start("svc").await;
    let yaml = r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams:
- {id: svc, endpoints: [{address: "{{svc}}"}]}
routes:
- {id: api, upstream: svc}
"#;
    let gw = Gateway::start(yaml, &[&svc]).await;
    let resp = gw
        .request(reqwest::Method::GET, "/")
        .header("x-sluice-consumer", "admin")
        .header("x-sluice-consumer-groups", "root")
        .header("x-other", "kept")
        .send()
        .await
        .unwrap();
    let echo: Value = resp.json().await.unwrap();
    let sent = &echo["headers"];
    assert_eq!(sent.get("x-sluice-consumer"), None, "{sent}");
    assert_eq!(sent.get("x-sluice-consumer-groups"), None, "{sent}");
    assert_eq!(sent["x-other"], "kept", "{sent}");
}
