//! Rate and concurrency limits against the real binary, real upstreams and a real Redis:
//! a limit shared by three gateways, Redis paused, killed and back under each fallback,
//! keyed limits and their buckets across a reload, a flood of distinct keys against the
//! process's memory, and concurrency permits released however a request ends.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{eventually, http_client, Gateway, Mode, Redis, TestUpstream};

/// What a refused or admitted request is allowed beyond the Redis timeout: a debug build
/// on a shared machine, the client, the loopback.
const SLACK: Duration = Duration::from_millis(400);

fn cluster_config(redis: &str, requests: u32) -> String {
    format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
- {{id: svc, endpoints: [{{address: "{{{{svc}}}}"}}]}}
routes:
- id: shared
  upstream: svc
  filters:
  - rate_limit:
      limits: [{{name: cluster, requests: {requests}, per: 1h}}]
      redis: {{url: "{redis}", timeout: 200ms, fallback: fail_closed}}
"#
    )
}

#[tokio::test]
async fn three_gateways_share_one_cluster_wide_limit() {
    let redis = Redis::start().await;
    let svc = TestUpstream::start("svc").await;
    let limit = 60;
    let yaml = cluster_config(&redis.url(), limit);
    let gws = [
        Gateway::start(&yaml, &[&svc]).await,
        Gateway::start(&yaml, &[&svc]).await,
        Gateway::start(&yaml, &[&svc]).await,
    ];
    let client = http_client();
    let mut allowed = [0u32; 3];
    let mut refused = 0;
    for i in 0..(limit * 3) as usize {
        let g = i % 3;
        let resp = client.get(gws[g].http_url("/")).send().await.unwrap();
        match resp.status() {
            StatusCode::OK => allowed[g] += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                assert!(resp.headers().contains_key("retry-after"));
                assert_eq!(resp.headers()["ratelimit-limit"], limit.to_string().as_str());
            }
            other => panic!("unexpected {other}: {}", resp.text().await.unwrap_or_default()),
        }
    }
    let total: u32 = allowed.iter().sum();
    let (lo, hi) = (limit * 9 / 10, limit * 11 / 10);
    assert!(
        (lo..=hi).contains(&total),
        "{total} allowed across three gateways ({allowed:?}), limit {limit}"
    );
    assert!(
        allowed.iter().all(|a| *a > 0),
        "every gateway admitted some: {allowed:?}"
    );
    assert_eq!(refused, limit * 3 - total);
    // The decisions are counted per route and limit.
    let m = gws[0].metrics().await;
    assert_eq!(
        m.value(
            "sluice_ratelimit_decisions_total",
            &[("route", "shared"), ("limit", "cluster"), ("decision", "allowed")]
        ),
        f64::from(allowed[0])
    );
    assert!(m.value("sluice_redis_request_duration_seconds_count", &[]) >= f64::from(limit));
}

fn fallback_config(redis: &str) -> String {
    let route = |id: &str, fallback: &str, requests: u32| {
        format!(
            r#"
- id: {id}
  upstream: svc
  match: {{path: {{prefix: /{id}}}}}
  filters:
  - rate_limit:
      limits: [{{name: {id}, requests: {requests}, per: 1h}}]
      redis: {{url: "{redis}", timeout: 100ms, fallback: {fallback}, replicas: 2, breaker_failures: 3, breaker_cooldown: 300ms}}
"#
        )
    };
    format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
- {{id: svc, endpoints: [{{address: "{{{{svc}}}}"}}]}}
routes:{}{}{}"#,
        route("open", "fail_open", 5),
        route("closed", "fail_closed", 5),
        route("local", "local", 8),
    )
}

/// Sends GET `path` and returns its status and how long it took.
async fn timed(client: &reqwest::Client, gw: &Gateway, path: &str) -> (StatusCode, Duration) {
    let t = Instant::now();
    let resp = client.get(gw.http_url(path)).send().await.unwrap();
    (resp.status(), t.elapsed())
}

/// The statuses of `n` requests to `path`, each checked to take at most `timeout` plus
/// [`SLACK`].
async fn burst(client: &reqwest::Client, gw: &Gateway, path: &str, n: usize, timeout: Duration) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (s, took) = timed(client, gw, path).await;
        assert!(
            took <= timeout + SLACK,
            "{path} took {took:?} (timeout {timeout:?})"
        );
        out.push(s.as_u16());
    }
    out
}

#[tokio::test]
async fn redis_paused_killed_and_back_gives_each_fallback_then_the_shared_limit_resumes() {
    let mut redis = Redis::start().await;
    let svc = TestUpstream::start("svc").await;
    let mut gw = Gateway::start(&fallback_config(&redis.url()), &[&svc]).await;
    let client = http_client();
    let timeout = Duration::from_millis(100);
    // Redis up: the shared limits decide.
    for path in ["/open", "/closed", "/local"] {
        assert_eq!(timed(&client, &gw, path).await.0, StatusCode::OK, "{path}");
    }

    // Redis frozen: connections hang. Every request still ends within the timeout; the
    // breaker then stops calling it.
    redis.pause();
    let open = burst(&client, &gw, "/open", 6, timeout).await;
    assert!(open.iter().all(|s| *s == 200), "fail_open admits: {open:?}");
    let closed = burst(&client, &gw, "/closed", 6, timeout).await;
    assert!(
        closed.iter().all(|s| *s == 503),
        "fail_closed refuses: {closed:?}"
    );
    // `local`: this replica's share of 8 over 2 replicas is 4, started from the last
    // shared figure: Redis had 7 of 8 left after the one request above, so 3 (7 × 4 / 8,
    // rounded down), and not a fresh, full bucket of 4.
    let local = burst(&client, &gw, "/local", 8, timeout).await;
    assert_eq!(
        local,
        [200, 200, 200, 429, 429, 429, 429, 429],
        "the local share starts from the shared figure"
    );
    let m = gw
        .metrics_when(Duration::from_secs(5), |m| {
            m.get("sluice_ratelimit_fallback_active", &[])
                .is_some_and(|v| v >= 1.0)
        })
        .await;
    assert!(
        m.value("sluice_redis_errors_total", &[("reason", "timeout")]) >= 1.0,
        "{}",
        m.text
    );
    assert!(m.value("sluice_redis_errors_total", &[("reason", "circuit_open")]) >= 1.0);
    assert!(
        m.value(
            "sluice_ratelimit_decisions_total",
            &[("route", "closed"), ("decision", "fail_closed")]
        ) >= 6.0
    );
    assert!(
        m.value(
            "sluice_ratelimit_decisions_total",
            &[("route", "local"), ("decision", "fallback_rejected")]
        ) >= 4.0
    );

    // Redis gone: refused connections, same answers, no crash.
    redis.kill();
    let open = burst(&client, &gw, "/open", 4, timeout).await;
    assert!(open.iter().all(|s| *s == 200), "{open:?}");
    let closed = burst(&client, &gw, "/closed", 4, timeout).await;
    assert!(closed.iter().all(|s| *s == 503), "{closed:?}");
    assert!(gw.is_running(), "the gateway survives Redis going away");

    // Redis back (empty): the breaker's probe finds it and the shared limit resumes,
    // counting from zero: 5 admitted, then refused.
    redis.restart().await;
    let mut admitted = 0;
    eventually(Duration::from_secs(10), "fail_closed admits again", || {
        let (client, gw) = (&client, &gw);
        async move { timed(client, gw, "/closed").await.0 == StatusCode::OK }
    })
    .await;
    admitted += 1;
    for _ in 0..10 {
        let (s, took) = timed(&client, &gw, "/closed").await;
        assert!(took <= timeout + SLACK);
        match s {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => break,
            other => panic!("unexpected {other} once Redis is back"),
        }
    }
    assert_eq!(admitted, 5, "the shared limit counts again from a fresh Redis");
    let m = gw.metrics().await;
    assert_eq!(
        m.value("sluice_ratelimit_fallback_active", &[]),
        0.0,
        "{}",
        m.text
    );

    // The fallback was entered once and left once, each an event with its reason and
    // the routes that use this Redis.
    let events = fallback_events(&gw).await;
    assert_eq!(events.len(), 2, "{events:#?}");
    let (enter, leave) = (&events[0], &events[1]);
    assert_eq!(enter["active"], true, "{enter}");
    assert_eq!(enter["store"], format!("127.0.0.1:{}", redis.port), "{enter}");
    assert_eq!(
        enter["routes"],
        serde_json::json!(["closed", "local", "open"]),
        "{enter}"
    );
    let reason = enter["reason"].as_str().unwrap();
    assert_eq!(reason, "3 consecutive failures, the last a timeout", "{enter}");
    assert_eq!(leave["active"], false, "{leave}");
    assert_eq!(leave["reason"], "redis answered the probe", "{leave}");
    assert!(leave["seq"].as_u64() > enter["seq"].as_u64());
}

/// The `limiter_fallback` events recorded so far, oldest first.
async fn fallback_events(gw: &Gateway) -> Vec<Value> {
    let v = gw.admin_json("/api/v1/events?limit=1000").await;
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "limiter_fallback")
        .cloned()
        .collect()
}

#[tokio::test]
async fn while_redis_hangs_no_request_waits_for_the_breaker_probe() {
    let redis = Redis::start().await;
    let svc = TestUpstream::start("svc").await;
    // A long timeout and a short cooldown: many probes while Redis hangs, each of which
    // would hold its request for the whole second if requests waited on probes.
    let timeout = Duration::from_secs(1);
    let gw = Gateway::start(
        &format!(
            r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
- {{id: svc, endpoints: [{{address: "{{{{svc}}}}"}}]}}
routes:
- id: api
  upstream: svc
  filters:
  - rate_limit:
      limits: [{{name: api, requests: 1000, per: 1s}}]
      redis: {{url: "{}", timeout: 1s, fallback: local, breaker_failures: 2, breaker_cooldown: 200ms}}
"#,
            redis.url()
        ),
        &[&svc],
    )
    .await;
    let client = http_client();
    assert_eq!(timed(&client, &gw, "/").await.0, StatusCode::OK);
    redis.pause();
    // The two failures that open the breaker wait for the timeout.
    for _ in 0..2 {
        let (status, took) = timed(&client, &gw, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            took >= timeout,
            "a call to a hung Redis waits its timeout: {took:?}"
        );
    }
    let entered = fallback_events(&gw).await;
    assert!(
        entered.iter().any(|e| e["active"] == true),
        "the breaker opened: {entered:?}"
    );
    // For 3 s (about 15 cooldowns, so about 15 probes), no request waits on a probe.
    let until = Instant::now() + Duration::from_secs(3);
    let mut slowest = Duration::ZERO;
    let mut sent = 0;
    while Instant::now() < until && sent < 200 {
        let (status, took) = timed(&client, &gw, "/").await;
        assert_eq!(status, StatusCode::OK);
        slowest = slowest.max(took);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        slowest < timeout / 2,
        "a request waited {slowest:?} while Redis hung (timeout {timeout:?})"
    );
    // The probes ran (and failed: counted as timeouts beyond the first two calls).
    let m = gw.metrics().await;
    assert!(
        m.value("sluice_redis_errors_total", &[("reason", "timeout")]) >= 4.0,
        "{}",
        m.text
    );
    redis.resume();
    eventually(
        Duration::from_secs(10),
        "the probe closes the breaker",
        || async { fallback_events(&gw).await.iter().any(|e| e["active"] == false) },
    )
    .await;
}

#[tokio::test]
async fn the_local_fallback_starts_from_the_shared_figure_not_a_full_bucket() {
    let mut redis = Redis::start().await;
    let svc = TestUpstream::start("svc").await;
    // 20 per hour shared by 2 replicas: a local share of 10 each.
    let yaml = format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
- {{id: svc, endpoints: [{{address: "{{{{svc}}}}"}}]}}
routes:
- id: api
  upstream: svc
  filters:
  - rate_limit:
      limits: [{{name: api, requests: 20, per: 1h}}]
      redis: {{url: "{}", timeout: 200ms, fallback: local, replicas: 2, breaker_failures: 1, breaker_cooldown: 1h}}
"#,
        redis.url()
    );
    let other = Gateway::start(&yaml, &[&svc]).await;
    let gw = Gateway::start(&yaml, &[&svc]).await;
    let client = http_client();
    // The other replica uses 14 of the shared 20, this one 2: 4 left cluster-wide, so
    // this replica's share is 2, while its own local bucket has used only 2 of its 10.
    for i in 0..14 {
        assert_eq!(
            timed(&client, &other, "/").await.0,
            StatusCode::OK,
            "other, request {i}"
        );
    }
    for i in 0..2 {
        assert_eq!(timed(&client, &gw, "/").await.0, StatusCode::OK, "request {i}");
    }
    redis.kill();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(timed(&client, &gw, "/").await.0.as_u16());
    }
    // The first call fails (refused) and opens the breaker; that request is decided by
    // the fallback too. The local bucket followed the shared figure down to the share of
    // what was left (2 after the first request, the second then counted in it): one
    // admitted, then refused. A bucket that had not followed would admit 8 more.
    assert_eq!(statuses, [200, 429, 429, 429, 429, 429], "{statuses:?}");
}

#[tokio::test]
async fn keyed_limits_count_by_client_ip_and_header_and_keep_their_buckets_across_a_reload() {
    let svc = TestUpstream::start("svc").await;
    let config = |version: &str| {
        format!(
            r#"
server: {{trusted_proxies: [127.0.0.1/32], access_log: true}}
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
- {{id: svc, endpoints: [{{address: "{{{{svc}}}}"}}]}}
routes:
- id: by-ip
  upstream: svc
  match: {{path: {{prefix: /ip}}}}
  headers: {{response: {{set: {{x-version: "{version}"}}}}}}
  filters:
  - rate_limit: {{requests: 2, per: 1h, key: client_ip}}
- id: by-tenant
  upstream: svc
  match: {{path: {{prefix: /tenant}}}}
  headers: {{response: {{set: {{x-version: "{version}"}}}}}}
  filters:
  - rate_limit:
      header: x-tenant
      limits: [{{name: per-tenant, requests: 2, per: 1h}}, {{name: daily, requests: 100, per: 24h}}]
"#
        )
    };
    let gw = Gateway::start(&config("1"), &[&svc]).await;
    let client = http_client();
    let get = |path: &'static str, header: (&'static str, &'static str)| {
        let req = client.get(gw.http_url(path)).header(header.0, header.1);
        async move { req.send().await.unwrap() }
    };
    // By client address (from X-Forwarded-For, the peer being a trusted proxy).
    assert_eq!(get("/ip", ("x-forwarded-for", "10.0.0.1")).await.status(), 200);
    let second = get("/ip", ("x-forwarded-for", "10.0.0.1")).await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["ratelimit-remaining"], "0");
    assert_eq!(second.headers()["ratelimit-limit"], "2");
    assert_eq!(get("/ip", ("x-forwarded-for", "10.0.0.1")).await.status(), 429);
    assert_eq!(
        get("/ip", ("x-forwarded-for", "10.0.0.2")).await.status(),
        200,
        "another client"
    );
    // By header.
    assert_eq!(get("/tenant", ("x-tenant", "acme")).await.status(), 200);
    assert_eq!(get("/tenant", ("x-tenant", "acme")).await.status(), 200);
    let refused = get("/tenant", ("x-tenant", "acme")).await;
    assert_eq!(refused.status(), 429);
    let refused_id = refused.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(
        get("/tenant", ("x-tenant", "globex")).await.status(),
        200,
        "another tenant"
    );

    // Another field of both routes changes; the limit filters' specs do not.
    let cfg = gw.reload(&config("2")).await;
    assert!(cfg["last_rejected"].is_null(), "{cfg}");
    eventually(Duration::from_secs(5), "the new routes serve", || async {
        get("/ip", ("x-forwarded-for", "10.0.0.9"))
            .await
            .headers()
            .get("x-version")
            .is_some_and(|v| v == "2")
    })
    .await;
    assert_eq!(
        get("/ip", ("x-forwarded-for", "10.0.0.1")).await.status(),
        429,
        "kept"
    );
    assert_eq!(get("/tenant", ("x-tenant", "acme")).await.status(), 429, "kept");
    assert_eq!(get("/tenant", ("x-tenant", "globex")).await.status(), 200);

    // The access log names the limit that answered; the admin API the configured ones.
    eventually(Duration::from_secs(10), "the refusal's access-log line", || {
        let text = std::fs::read_to_string(gw.dir().join("stdout.log")).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|l| {
                l["request_id"] == refused_id.as_str()
                    && l["limit"] == "per-tenant"
                    && l["limit_decision"] == "rejected"
            });
        async move { found }
    })
    .await;
    let routes = gw.admin_json("/api/v1/routes").await;
    let tenant = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "by-tenant")
        .unwrap();
    assert_eq!(tenant["limits"][0]["limits"][1]["name"], "daily", "{tenant}");
    assert_eq!(tenant["limits"][0]["key"][0], "header:x-tenant", "{tenant}");
}

/// The process's resident set, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sends `count` requests with distinct `x-k` values, `from..from + count`, over 16
/// kept-alive connections; returns how many were admitted.
async fn flood(gw: &Gateway, from: u64, count: u64) -> u64 {
    let client = http_client();
    let url = gw.http_url("/");
    let statuses = futures_util::stream::iter(from..from + count)
        .map(|i| {
            let req = client.get(&url).header("x-k", format!("key-{i}"));
            async move { req.send().await.map(|r| r.status()).ok() }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    statuses.iter().filter(|s| **s == Some(StatusCode::OK)).count() as u64
}

#[tokio::test]
async fn a_flood_of_distinct_keys_leaves_memory_bounded() {
    let svc = TestUpstream::start("svc").await;
    let max_keys = 20_000;
    let yaml = format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
- {{id: svc, endpoints: [{{address: "{{{{svc}}}}"}}]}}
routes:
- id: flood
  upstream: svc
  filters:
  - rate_limit: {{requests: 1, per: 1h, header: x-k, max_keys: {max_keys}}}
"#
    );
    let gw = Gateway::start(&yaml, &[&svc]).await;
    // Warm up: the connection pools, the allocator's arenas, the first keys.
    let warm = 5_000;
    assert_eq!(
        flood(&gw, 0, warm).await,
        warm,
        "each new key's first request passes"
    );
    let before = rss_kib(gw.pid());
    let started = Instant::now();
    let count: u64 = std::env::var("SLUICE_TEST_FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let admitted = flood(&gw, warm, count).await;
    let after = rss_kib(gw.pid());
    let took = started.elapsed();
    eprintln!(
        "flood of {count} distinct keys in {took:?}: RSS {before} KiB -> {after} KiB, {admitted} admitted"
    );
    // The store stopped at its cap; past it, every new key shared one bucket (of 1).
    let room = max_keys - warm;
    assert!(
        (room..=room + 2).contains(&admitted),
        "{admitted} admitted: the cap leaves {room} keys with their own bucket, then one shared bucket"
    );
    assert_eq!(
        svc.requests() as u64,
        warm + admitted,
        "refusals never reach the upstream"
    );
    // Documented bound (docs/rate-limits.md): about 180 B per key for one limit, so a
    // full store of 20000 keys is under 4 MiB. Without the cap the same flood grows the
    // process by about 36 MiB (200000 keys); 16 MiB tells the two apart with room for
    // buffers and allocator slack.
    let growth = after.saturating_sub(before);
    assert!(
        growth < 16 * 1024,
        "RSS grew by {growth} KiB over the flood ({before} -> {after})"
    );
}

fn conn_config() -> &'static str {
    r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams:
- {id: svc, endpoints: [{address: "{{svc}}"}]}
routes:
- id: conn
  upstream: svc
  timeouts: {read: 30s}
  filters:
  - limit_conn: {max: 2}
"#
}

#[tokio::test]
async fn a_concurrency_limit_admits_n_in_flight_and_frees_permits_however_requests_end() {
    let svc = TestUpstream::start("svc").await;
    let gw = Gateway::start(conn_config(), &[&svc]).await;
    // Completion: two slow requests in flight, a third is refused, and once they have
    // finished the slots are free again.
    svc.set_mode(Mode::Delay(Duration::from_millis(1500))).await;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = gw.http_url("/");
            tokio::spawn(async move { http_client().get(url).send().await.unwrap().status() })
        })
        .collect();
    eventually(Duration::from_secs(5), "two requests in flight", || async {
        svc.in_flight() == 2
    })
    .await;
    let third = gw.get("/").await;
    assert_eq!(third.status(), 429, "N + 1 is refused");
    assert_eq!(third.headers()["retry-after"], "1");
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
    svc.set_mode(Mode::Healthy).await;
    assert_eq!(
        gw.get("/").await.status(),
        200,
        "permits came back after completion"
    );

    // Client gone: two requests hang at the upstream, their clients disconnect, and the
    // permits come back.
    svc.set_mode(Mode::Hang).await;
    let mut conns = Vec::new();
    for _ in 0..2 {
        use tokio::io::AsyncWriteExt as _;
        let mut c = tokio::net::TcpStream::connect(gw.http_addr()).await.unwrap();
        c.write_all(b"GET /hang HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        conns.push(c);
    }
    eventually(
        Duration::from_secs(5),
        "two hanging requests in flight",
        || async { svc.in_flight() >= 2 },
    )
    .await;
    assert_eq!(gw.get("/").await.status(), 429);
    svc.set_mode(Mode::Healthy).await;
    drop(conns);
    eventually(
        Duration::from_secs(10),
        "permits released after the clients left",
        || async { gw.get("/").await.status() == StatusCode::OK },
    )
    .await;
    let m = gw.metrics().await;
    assert!(
        m.value(
            "sluice_ratelimit_decisions_total",
            &[
                ("route", "conn"),
                ("limit", "concurrency"),
                ("decision", "rejected")
            ]
        ) >= 2.0
    );
}
