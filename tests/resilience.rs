//! Circuit breakers, retries, outlier ejection and active health checks, against real
//! upstreams switched at run time. Counts are taken at the upstream (what really reached
//! it) and from the gateway's metrics and admin API.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{eventually, upstream_of, Gateway, Mode, TestUpstream};

/// The breaker entry for `route` in `/api/v1/breakers`.
async fn breaker(gw: &Gateway, route: &str) -> Value {
    let all = gw.admin_json("/api/v1/breakers").await;
    all["breakers"]
        .as_array()
        .and_then(|l| l.iter().find(|b| b["route"] == route).cloned())
        .unwrap_or_else(|| panic!("no breaker for route {route}: {all}"))
}

async fn breaker_state(gw: &Gateway, route: &str) -> String {
    breaker(gw, route).await["breaker"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn status_of(gw: &Gateway, path: &str) -> StatusCode {
    gw.get(path).await.status()
}

/// `n` GETs of `path` at once, each on its own connection; their statuses.
async fn concurrent_gets(gw: &Gateway, path: &str, n: usize) -> Vec<StatusCode> {
    let client = crate::support::http_client_unpooled();
    let url = gw.http_url(path);
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let req = client.get(&url).send();
            tokio::spawn(async move { req.await.map(|r| r.status()) })
        })
        .collect();
    let mut statuses = Vec::with_capacity(n);
    for c in calls {
        statuses.push(c.await.unwrap().unwrap());
    }
    statuses
}

/// The `active_health` the admin API shows for endpoint `addr` of the first upstream.
async fn active_health(gw: &Gateway, addr: std::net::SocketAddr) -> String {
    let view = gw.admin_json("/api/v1/upstreams").await;
    view["upstreams"][0]["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["address"] == addr.to_string()))
        .and_then(|e| e["active_health"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// One upstream `svc` (no retries, no outlier ejection, so every request is one call) and
/// route `api` with the given breaker settings.
fn breaker_config(breaker: &str) -> String {
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
  circuit_breaker: {breaker}
"#
    )
}

#[tokio::test]
async fn breaker_opens_at_the_threshold_and_sends_nothing_upstream_while_open() {
    let svc = TestUpstream::start("svc").await;
    let gw = Gateway::start(
        &breaker_config("{window: {count: 10}, minimum_calls: 5, failure_rate_threshold: 50, open_duration: 60s, jitter: 0}"),
        &[&svc],
    )
    .await;
    assert_eq!(breaker_state(&gw, "api").await, "closed");

    svc.set_mode(Mode::Status(500)).await;
    for i in 1..=4 {
        assert_eq!(status_of(&gw, "/x").await, 500, "call {i} reaches the upstream");
        assert_eq!(
            breaker_state(&gw, "api").await,
            "closed",
            "{i} calls are under minimum_calls"
        );
    }
    assert_eq!(status_of(&gw, "/x").await, 500);
    eventually(
        Duration::from_secs(5),
        "breaker opens on the 5th failure",
        || async { breaker_state(&gw, "api").await == "open" },
    )
    .await;
    let b = breaker(&gw, "api").await;
    assert_eq!(b["breaker"]["calls"], 5, "{b}");
    assert_eq!(b["breaker"]["failures"], 5, "{b}");
    assert_eq!(b["breaker"]["last_transition"]["to"], "open", "{b}");
    assert_eq!(svc.requests(), 5);

    svc.reset_requests();
    svc.set_mode(Mode::Healthy).await;
    for _ in 0..20 {
        let resp = gw.get("/x").await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(
            resp.headers()["x-sluice-breaker"],
            "route=api; upstream=svc; state=open"
        );
        let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry_after), "retry-after {retry_after}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "circuit_open");
    }
    assert_eq!(
        svc.requests(),
        0,
        "nothing reaches the upstream while the breaker is open"
    );

    let m = gw.metrics().await;
    let labels = [("route", "api"), ("upstream", "svc")];
    assert_eq!(m.value("sluice_breaker_state", &labels), 1.0);
    assert_eq!(
        m.value(
            "sluice_breaker_transitions_total",
            &[("route", "api"), ("from", "closed"), ("to", "open")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "sluice_breaker_short_circuited_total",
            &[("route", "api"), ("action", "response")]
        ),
        20.0
    );
}

#[tokio::test]
async fn half_open_admits_exactly_the_permitted_probes_then_recovers() {
    let svc = TestUpstream::start("svc").await;
    let gw = Gateway::start(
        &breaker_config(
            "{window: {count: 4}, minimum_calls: 2, failure_rate_threshold: 50, open_duration: 1s, \
             jitter: 0, half_open_permitted_calls: 3}",
        ),
        &[&svc],
    )
    .await;
    svc.set_mode(Mode::Status(500)).await;
    for _ in 0..2 {
        assert_eq!(status_of(&gw, "/").await, 500);
    }
    eventually(Duration::from_secs(5), "breaker opens", || async {
        breaker_state(&gw, "api").await == "open"
    })
    .await;

    // After the open time, a burst of 10 concurrent calls against a slow upstream: the
    // first 3 are probes and reach it, the other 7 are turned away at once.
    svc.set_mode(Mode::Delay(Duration::from_millis(2000))).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    svc.reset_requests();
    let statuses = concurrent_gets(&gw, "/probe", 10).await;
    let passed = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let rejected = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!((passed, rejected), (3, 7), "statuses {statuses:?}");
    assert_eq!(
        svc.requests(),
        3,
        "exactly the permitted probes reached the upstream"
    );

    eventually(
        Duration::from_secs(5),
        "breaker closes after 3 good probes",
        || async { breaker_state(&gw, "api").await == "closed" },
    )
    .await;
    svc.set_mode(Mode::Healthy).await;
    for _ in 0..5 {
        assert_eq!(status_of(&gw, "/").await, 200);
    }
    let m = gw.metrics().await;
    for (from, to) in [("closed", "open"), ("open", "half_open"), ("half_open", "closed")] {
        assert_eq!(
            m.value(
                "sluice_breaker_transitions_total",
                &[("route", "api"), ("from", from), ("to", to)]
            ),
            1.0,
            "{from} -> {to}"
        );
    }
}

#[tokio::test]
async fn open_breaker_serves_the_configured_response_or_the_fallback_upstream() {
    let main = TestUpstream::start("main").await;
    let backup = TestUpstream::start("backup").await;
    let yaml = r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams:
- {id: main, endpoints: [{address: "{{main}}"}], retries: {attempts: 0}}
- {id: backup, endpoints: [{address: "{{backup}}"}]}
routes:
- id: busy
  upstream: main
  match: {path: {prefix: /busy}}
  circuit_breaker:
    response: {status: 429, headers: {content-type: text/plain, x-why: overloaded}, body: "try later"}
- id: fb
  upstream: main
  match: {path: {prefix: /fb}}
  circuit_breaker: {fallback_upstream: backup}
"#;
    let gw = Gateway::start(yaml, &[&main, &backup]).await;
    let force = |route: &'static str, body: Value| {
        let client = reqwest::Client::new();
        let url = gw.admin_url(&format!("/api/v1/breakers/{route}/main"));
        async move { client.post(url).json(&body).send().await.unwrap() }
    };

    let resp = force("busy", json!({"state": "forced_open"})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = force("fb", json!({"state": "forced_open"})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let shown: Value = resp.json().await.unwrap();
    assert_eq!(shown["breaker"]["state"], "forced_open", "{shown}");

    let resp = gw.get("/busy/a").await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.headers()["x-why"], "overloaded");
    assert_eq!(
        resp.headers()["x-sluice-breaker"],
        "route=busy; upstream=main; state=forced_open"
    );
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(resp.text().await.unwrap(), "try later");

    let resp = gw.get("/fb/a").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(upstream_of(&resp), "backup");
    assert_eq!(
        resp.headers()["x-sluice-breaker"],
        "route=fb; upstream=main; state=forced_open"
    );
    assert_eq!(main.requests(), 0);
    assert_eq!(backup.requests(), 1);

    // Back to automatic: traffic goes to the primary again, without the header.
    assert_eq!(
        force("fb", json!({"state": "auto"})).await.status(),
        StatusCode::OK
    );
    let resp = gw.get("/fb/a").await;
    assert_eq!(upstream_of(&resp), "main");
    assert!(!resp.headers().contains_key("x-sluice-breaker"));

    // Disabled: failures pass through and are not counted.
    main.set_mode(Mode::Status(500)).await;
    assert_eq!(
        force("fb", json!({"state": "disabled"})).await.status(),
        StatusCode::OK
    );
    for _ in 0..30 {
        assert_eq!(status_of(&gw, "/fb/a").await, 500);
    }
    assert_eq!(breaker_state(&gw, "fb").await, "disabled");

    // Bad input names what is wrong.
    let resp = force("fb", json!({"state": "sideways"})).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await.unwrap();
    assert!(err["error"].as_str().unwrap().contains("sideways"), "{err}");
    let resp = force("nope", json!({"state": "auto"})).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let m = gw.metrics().await;
    assert_eq!(
        m.value(
            "sluice_breaker_short_circuited_total",
            &[("route", "fb"), ("action", "fallback")]
        ),
        1.0
    );
}

/// Upstream `pool` over the given test upstreams, round robin, with `extra` settings.
fn pool_config(ups: &[&TestUpstream], extra: &str) -> String {
    let endpoints: Vec<String> = ups
        .iter()
        .map(|u| format!("{{address: \"{{{{{}}}}}\"}}", u.name()))
        .collect();
    format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
- id: pool
  endpoints: [{}]
{extra}
routes:
- {{id: api, upstream: pool, match: {{path: {{prefix: /}}}}}}
"#,
        endpoints.join(", ")
    )
}

#[tokio::test]
async fn retries_land_on_a_different_endpoint_and_skip_non_idempotent_methods() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    let yaml = pool_config(
        &[&a, &b, &c],
        "  retries: {attempts: 1, on: [gateway_error]}\n  outlier_detection: {enabled: false}",
    );
    let gw = Gateway::start(&yaml, &[&a, &b, &c]).await;
    a.set_mode(Mode::Status(503)).await;

    // One retry only: had it gone back to `a`, the client would see a's 503.
    for i in 0..30 {
        let resp = gw.get("/r").await;
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        assert_ne!(upstream_of(&resp), "a");
    }
    assert!(
        a.requests() >= 5,
        "round robin sent a its share first: {}",
        a.requests()
    );
    let m = gw.metrics().await;
    assert_eq!(
        m.value(
            "sluice_retries_total",
            &[("upstream", "pool"), ("reason", "status")]
        ),
        a.requests() as f64,
        "every try on a was retried once"
    );
    assert_eq!(b.requests() + c.requests(), 30);

    // POST is not idempotent: a's 503 reaches the client.
    let mut posts_failed = 0;
    for _ in 0..9 {
        let resp = gw
            .request(reqwest::Method::POST, "/r")
            .body("x")
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            posts_failed += 1;
            assert_eq!(upstream_of(&resp), "a");
        }
    }
    assert_eq!(posts_failed, 3, "every third POST lands on a and is not retried");
}

#[tokio::test]
async fn retry_budget_admits_exactly_min_concurrent_retries_at_once() {
    // a fails at once; b answers after 3 s, so a retry (which goes to b) holds its
    // budget slot for 3 s, long after every other first try on a has failed.
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let yaml = pool_config(
        &[&a, &b],
        "  retries: {attempts: 1, on: [gateway_error], backoff: 10ms, budget: {percent: 0, min_concurrent: 3}}\n  \
         outlier_detection: {enabled: false}",
    );
    let gw = Gateway::start(&yaml, &[&a, &b]).await;
    a.set_mode(Mode::Status(503)).await;
    b.set_mode(Mode::Delay(Duration::from_secs(3))).await;

    let n = 20;
    let statuses = concurrent_gets(&gw, "/budget", n).await;
    let first_on_a = a.requests();
    assert!(
        first_on_a > 3,
        "enough first tries failed on a for the cap to matter: {first_on_a}"
    );
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let failed = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!(ok + failed, n, "{statuses:?}");
    assert_eq!(
        failed,
        first_on_a - 3,
        "of the {first_on_a} requests that failed on a, exactly 3 were retried (to b): {statuses:?}"
    );
    assert_eq!(
        b.requests(),
        (n - first_on_a) + 3,
        "b got its first tries and the 3 retries"
    );
    let m = gw.metrics().await;
    assert_eq!(m.value("sluice_retries_total", &[("upstream", "pool")]), 3.0);
    assert_eq!(
        m.value("sluice_retry_budget_exhausted_total", &[("upstream", "pool")]),
        (first_on_a - 3) as f64
    );
    let ups = gw.admin_json("/api/v1/upstreams").await;
    let budget = &ups["upstreams"][0]["retry_budget"];
    assert_eq!(budget["limit"], 3, "{ups}");
    assert_eq!(budget["retries_started"], 3, "{ups}");
    assert_eq!(budget["active_retries"], 0, "{ups}");
}

#[tokio::test]
async fn outlier_ejection_stops_at_max_ejection_percent() {
    let ups = TestUpstream::start_many(&["a", "b", "c", "d"]).await;
    let refs: Vec<&TestUpstream> = ups.iter().collect();
    let yaml = pool_config(
        &refs,
        "  retries: {attempts: 0}\n  \
         outlier_detection: {consecutive_5xx: 3, base_ejection_time: 60s, max_ejection_percent: 50}",
    );
    let gw = Gateway::start(&yaml, &refs).await;
    for u in &ups[..3] {
        u.set_mode(Mode::Status(500)).await;
    }
    for _ in 0..40 {
        gw.get("/o").await;
    }
    let m = gw
        .metrics_when(Duration::from_secs(5), |m| {
            m.get("sluice_endpoints_ejected", &[("upstream", "pool")])
                .is_some_and(|v| v >= 2.0)
        })
        .await;
    assert_eq!(m.value("sluice_endpoints_ejected", &[("upstream", "pool")]), 2.0);
    assert_eq!(
        m.value(
            "sluice_outlier_ejections_total",
            &[("upstream", "pool"), ("reason", "consecutive_5xx")]
        ),
        2.0,
        "the third failing endpoint stays in: 50% of 4 is 2"
    );
    let view = gw.admin_json("/api/v1/upstreams").await;
    let eps = view["upstreams"][0]["endpoints"].as_array().unwrap().clone();
    let ejected: Vec<&Value> = eps.iter().filter(|e| e["outlier"]["ejected"] == true).collect();
    assert_eq!(ejected.len(), 2, "{view}");
    for e in &ejected {
        assert_eq!(e["outlier"]["reason"], "consecutive_5xx", "{view}");
    }

    // The ejected two get nothing; the remaining failing one and d share the traffic.
    for u in &ups {
        u.reset_requests();
    }
    for _ in 0..20 {
        gw.get("/o").await;
    }
    let counts: Vec<usize> = ups.iter().map(TestUpstream::requests).collect();
    assert_eq!(counts.iter().filter(|c| **c == 0).count(), 2, "{counts:?}");
    assert_eq!(counts[3], 10, "{counts:?}");
}

#[tokio::test]
async fn active_health_check_marks_an_endpoint_down_and_up_again() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let yaml = pool_config(
        &[&a, &b],
        "  health_check: {kind: {http: {path: /healthz}}, interval: 200ms, timeout: 150ms, \
         healthy_threshold: 2, unhealthy_threshold: 2}",
    );
    let gw = Gateway::start(&yaml, &[&a, &b]).await;
    a.set_mode(Mode::Status(500)).await;
    eventually(Duration::from_secs(5), "a is marked unhealthy", || async {
        active_health(&gw, a.addr()).await == "unhealthy"
    })
    .await;
    let m = gw.metrics().await;
    assert_eq!(
        m.value(
            "sluice_endpoint_healthy",
            &[("upstream", "pool"), ("endpoint", &a.addr().to_string())]
        ),
        0.0
    );
    a.set_mode(Mode::Healthy).await;
    // a answers again, but the balancer skips it until two checks in a row pass.
    for _ in 0..10 {
        let resp = gw.get("/h").await;
        if active_health(&gw, a.addr()).await == "unhealthy" {
            assert_eq!(upstream_of(&resp), "b");
        }
    }
    eventually(Duration::from_secs(5), "a is healthy again", || async {
        active_health(&gw, a.addr()).await == "healthy"
    })
    .await;
    let mut seen_a = false;
    for _ in 0..4 {
        seen_a |= upstream_of(&gw.get("/h").await) == "a";
    }
    assert!(seen_a, "a is back in rotation");
}

#[tokio::test]
async fn tcp_health_check_takes_the_endpoint_out_of_rotation_and_back() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    // No retries and no outlier ejection: only the health check keeps requests off a
    // while it refuses connections (a balancer that ignored it would answer 502).
    let yaml = pool_config(
        &[&a, &b],
        "  health_check: {kind: tcp, interval: 200ms, timeout: 150ms, unhealthy_threshold: 1, healthy_threshold: 1}\n  \
         retries: {attempts: 0}\n  outlier_detection: {enabled: false}",
    );
    let gw = Gateway::start(&yaml, &[&a, &b]).await;
    eventually(Duration::from_secs(5), "a is checked healthy", || async {
        active_health(&gw, a.addr()).await == "healthy"
    })
    .await;
    a.set_mode(Mode::Refuse).await;
    eventually(Duration::from_secs(5), "a is marked unhealthy", || async {
        active_health(&gw, a.addr()).await == "unhealthy"
    })
    .await;
    for i in 0..10 {
        let resp = gw.get("/t").await;
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        assert_eq!(upstream_of(&resp), "b");
    }

    a.set_mode(Mode::Healthy).await;
    eventually(Duration::from_secs(5), "a is healthy again", || async {
        active_health(&gw, a.addr()).await == "healthy"
    })
    .await;
    a.reset_requests();
    b.reset_requests();
    for i in 0..10 {
        assert_eq!(gw.get("/t").await.status(), StatusCode::OK, "request {i}");
    }
    assert_eq!(
        (a.requests(), b.requests()),
        (5, 5),
        "round robin over both again"
    );
}

#[tokio::test]
async fn breaker_state_survives_a_reload_of_an_unrelated_route() {
    let svc = TestUpstream::start("svc").await;
    let config = breaker_config("{window: {count: 4}, minimum_calls: 2, open_duration: 60s}");
    let gw = Gateway::start(&config, &[&svc]).await;
    svc.set_mode(Mode::Status(500)).await;
    for _ in 0..2 {
        gw.get("/").await;
    }
    eventually(Duration::from_secs(5), "breaker opens", || async {
        breaker_state(&gw, "api").await == "open"
    })
    .await;

    let with_other = format!("{config}- {{id: other, upstream: svc, match: {{path: {{prefix: /other}}}}}}\n");
    let shown = gw.reload(&with_other).await;
    assert!(shown["version"].as_u64().unwrap() >= 2, "{shown}");
    assert!(shown["last_rejected"].is_null(), "{shown}");

    svc.reset_requests();
    svc.set_mode(Mode::Healthy).await;
    assert_eq!(status_of(&gw, "/x").await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(breaker_state(&gw, "api").await, "open");
    assert_eq!(
        svc.requests(),
        0,
        "the open breaker still short-circuits after the reload"
    );
    assert_eq!(
        status_of(&gw, "/other").await,
        StatusCode::OK,
        "the new route serves"
    );
}

#[tokio::test]
async fn a_hanging_endpoint_times_out_per_try_and_the_retry_goes_elsewhere() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let yaml = pool_config(
        &[&a, &b],
        "  retries: {attempts: 1, on: [timeout], per_try_timeout: 300ms}\n  outlier_detection: {enabled: false}",
    );
    let gw = Gateway::start(&yaml, &[&a, &b]).await;
    a.set_mode(Mode::Hang).await;
    for i in 0..4 {
        let started = Instant::now();
        let resp = gw.get("/h").await;
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        assert_eq!(upstream_of(&resp), "b");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let m = gw.metrics().await;
    assert_eq!(
        m.value(
            "sluice_retries_total",
            &[("upstream", "pool"), ("reason", "timeout")]
        ),
        a.requests() as f64,
        "each try on the hanging endpoint timed out and was retried"
    );
    assert!(a.requests() >= 1);
}

#[tokio::test]
async fn slow_calls_open_the_breaker_at_the_slow_call_rate() {
    let svc = TestUpstream::start("svc").await;
    let gw = Gateway::start(
        &breaker_config(
            "{window: {count: 10}, minimum_calls: 4, failure_rate_threshold: 100, \
             slow_call_rate_threshold: 50, slow_call_duration: 150ms, open_duration: 60s}",
        ),
        &[&svc],
    )
    .await;
    for _ in 0..4 {
        assert_eq!(status_of(&gw, "/fast").await, StatusCode::OK);
    }
    assert_eq!(breaker_state(&gw, "api").await, "closed");
    svc.set_mode(Mode::Delay(Duration::from_millis(300))).await;
    for _ in 0..4 {
        assert_eq!(
            status_of(&gw, "/slow").await,
            StatusCode::OK,
            "slow calls still succeed"
        );
    }
    eventually(
        Duration::from_secs(5),
        "4 slow of 8 calls open the breaker",
        || async { breaker_state(&gw, "api").await == "open" },
    )
    .await;
    let b = breaker(&gw, "api").await;
    assert_eq!(b["breaker"]["slow_calls"], 4, "{b}");
    assert_eq!(b["breaker"]["failures"], 0, "{b}");
    assert_eq!(status_of(&gw, "/x").await, StatusCode::SERVICE_UNAVAILABLE);
}
