//! Log sinks and gateway events (`logging:`): access-log records and events reach a real
//! Kafka-protocol broker (tansu) and are read back with librdkafka; a dead broker costs
//! no request and no latency, its drops are counted, and delivery resumes; a file sink
//! reopens on SIGUSR1 after logrotate renames it; `/api/v1/events` lists the events.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::kafka::Kafka;
use crate::support::{eventually, upstream_entries, Gateway, Mode, TestUpstream};

/// The fields every access-log record on Kafka must carry (the default field set).
const ACCESS_FIELDS: [&str; 18] = [
    "time",
    "request_id",
    "client",
    "method",
    "host",
    "path",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "upstream",
    "upstream_ms",
    "route",
    "backend",
    "retries",
    "breaker",
    "user_agent",
    "error",
];

async fn request_id(gw: &Gateway, path: &str) -> (u16, String) {
    let resp = gw.get(path).await;
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    (resp.status().as_u16(), id)
}

#[tokio::test]
async fn access_log_records_and_events_arrive_on_their_kafka_topics() {
    let kafka = Kafka::start(&[("access", 2), ("events", 1)]).await;
    let up = TestUpstream::start("api").await;
    let config = |extra_route: &str| {
        format!(
            r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
{}routes:
- {{id: users, upstream: api, match: {{path: {{prefix: /users}}}}, circuit_breaker: {{minimum_calls: 4, window: {{count: 4}}, open_duration: 60s}}}}
- {{id: orders, upstream: api, match: {{path: {{prefix: /orders}}}}}}
{extra_route}
logging:
  access_log:
    sinks: [{{kafka: {{brokers: ["{{{{kafka}}}}"], topic: access, key: route, linger: 20ms, compression: gzip}}}}]
  events:
    sinks: [{{kafka: {{brokers: ["{{{{kafka}}}}"], topic: events, linger: 20ms}}}}]
"#,
            upstream_entries(&[&up])
        )
    };
    let gw = Gateway::builder(&config(""))
        .upstream(&up)
        .var("kafka", &kafka.addr())
        .start()
        .await;

    let mut ids = Vec::new();
    for i in 0..6 {
        let path = if i % 2 == 0 { "/users/1" } else { "/orders/1" };
        let (status, id) = request_id(&gw, path).await;
        assert_eq!(status, 200);
        ids.push((id, if i % 2 == 0 { "users" } else { "orders" }));
    }
    // Make the breaker open: failures fill its window of 4.
    up.set_mode(Mode::Status(500)).await;
    let mut opened = false;
    for _ in 0..20 {
        let (status, id) = request_id(&gw, "/users/2").await;
        ids.push((id, "users"));
        if status == 503 {
            opened = true;
            break;
        }
    }
    assert!(opened, "the breaker opened within 20 failing requests");
    // A config apply, after the one at start.
    let reloaded = gw
        .reload(&config(
            "- {id: extra, upstream: api, match: {path: {prefix: /extra}}}",
        ))
        .await;
    assert_eq!(reloaded["version"], 2, "{reloaded}");

    let records = kafka.consume("access", ids.len(), Duration::from_secs(60)).await;
    let by_id: std::collections::HashMap<String, &crate::support::kafka::Message> = records
        .iter()
        .map(|m| (m.value["request_id"].as_str().unwrap().to_string(), m))
        .collect();
    let mut partition_of_route = std::collections::HashMap::new();
    for (id, route) in &ids {
        let m = by_id
            .get(id)
            .unwrap_or_else(|| panic!("request {id} not on the access topic; got {records:?}"));
        for f in ACCESS_FIELDS {
            assert!(m.value.get(f).is_some(), "field {f} missing in {}", m.value);
        }
        assert_eq!(m.value["route"], *route);
        assert_eq!(m.value["method"], "GET");
        assert_eq!(m.key.as_deref(), Some(*route), "keyed by route");
        // A route's records stay on one partition (keyed, murmur2).
        let p = *partition_of_route.entry(*route).or_insert(m.partition);
        assert_eq!(p, m.partition, "route {route} on one partition");
    }
    let opened_record = &by_id[&ids.last().unwrap().0].value;
    assert_eq!(opened_record["status"], 503);
    assert_eq!(opened_record["breaker"], "open");

    // Events: two config applies and the breaker opening, with its window figures.
    let deadline = Instant::now() + Duration::from_secs(60);
    let events: Vec<Value> = loop {
        let events: Vec<Value> = kafka
            .consume("events", 3, Duration::from_secs(20))
            .await
            .into_iter()
            .map(|m| m.value)
            .collect();
        let applied = events.iter().filter(|e| e["kind"] == "config_applied").count();
        let opened = events
            .iter()
            .any(|e| e["kind"] == "breaker_transition" && e["to"] == "open");
        if applied >= 2 && opened {
            break events;
        }
        assert!(Instant::now() < deadline, "events on Kafka: {events:?}");
    };
    let applied: Vec<&Value> = events.iter().filter(|e| e["kind"] == "config_applied").collect();
    assert_eq!(applied[0]["version"], 1);
    assert_eq!(applied[1]["version"], 2);
    assert!(
        applied[1]["source"].as_str().unwrap().starts_with("file:"),
        "{}",
        applied[1]
    );
    let open = events
        .iter()
        .find(|e| e["kind"] == "breaker_transition" && e["to"] == "open")
        .unwrap();
    assert_eq!(open["route"], "users");
    assert_eq!(open["upstream"], "api");
    assert_eq!(open["from"], "closed");
    let w = &open["window"];
    let (calls, failures) = (w["calls"].as_f64().unwrap(), w["failures"].as_f64().unwrap());
    assert_eq!(calls, 4.0, "{open}");
    assert!(failures >= 2.0, "{open}");
    assert_eq!(
        w["failure_rate"].as_f64().unwrap(),
        failures * 100.0 / calls,
        "{open}"
    );
    assert_eq!(w["failure_rate_threshold"], 50.0, "{open}");
    assert!(
        open["reason"].as_str().unwrap().contains("failure rate"),
        "{open}"
    );
    for e in &events {
        assert!(
            e["seq"].as_u64().unwrap() >= 1 && e["time"].as_str().unwrap().ends_with('Z'),
            "{e}"
        );
    }

    // The same events in /api/v1/events, and `since` leaves the earlier ones out.
    let listed = gw.admin_json("/api/v1/events").await;
    let list = listed["events"].as_array().unwrap();
    let kinds: Vec<&str> = list.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(
        kinds.contains(&"config_applied") && kinds.contains(&"breaker_transition"),
        "{kinds:?}"
    );
    let open_seq = list
        .iter()
        .find(|e| e["kind"] == "breaker_transition" && e["to"] == "open")
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(
        open_seq,
        open["seq"].as_u64().unwrap(),
        "the same numbering on Kafka and the API"
    );
    let later = gw.admin_json(&format!("/api/v1/events?since={open_seq}")).await;
    let later = later["events"].as_array().unwrap();
    assert!(later.iter().all(|e| e["seq"].as_u64().unwrap() > open_seq));
    assert!(
        later
            .iter()
            .any(|e| e["kind"] == "config_applied" && e["version"] == 2),
        "{later:?}"
    );
    assert_eq!(listed["last_seq"], list.last().unwrap()["seq"]);

    // A rejected update is an event too, with its errors; version 2 keeps serving.
    let last = listed["last_seq"].as_u64().unwrap();
    gw.reload(&config("- {id: broken, upstream: nowhere}")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let rejected = loop {
        let v = gw.admin_json(&format!("/api/v1/events?since={last}")).await;
        if let Some(e) = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "config_rejected")
        {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "no config_rejected event: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(rejected["version"], 2, "{rejected}");
    let errors = rejected["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e
            .as_str()
            .unwrap()
            .contains("routes[2].upstream: unknown upstream")),
        "{rejected}"
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Sends `n` requests one after another (bounded in count and time); returns their
/// latencies, sorted, after checking every one was answered 200.
async fn timed_requests(gw: &Gateway, n: usize, path: &str) -> Vec<Duration> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        assert!(Instant::now() < deadline, "requests took over 60 s");
        let t = Instant::now();
        let resp = client
            .get(gw.http_url(path))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("request answered");
        assert_eq!(resp.status(), 200);
        let _ = resp.bytes().await.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    lat
}

#[tokio::test]
async fn a_dead_broker_costs_no_request_and_no_latency_and_delivery_resumes() {
    let mut kafka = Kafka::start(&[("access", 1)]).await;
    let up = TestUpstream::start("api").await;
    let yaml = format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
{}routes: [{{id: r, upstream: api}}]
logging:
  access_log:
    sinks:
    - kafka: {{brokers: ["{{{{kafka}}}}"], topic: access, buffer: 100, linger: 10ms, key: request_id}}
    - file: {{path: "{{{{dir}}}}/access.log"}}
"#,
        upstream_entries(&[&up])
    );
    let gw = Gateway::builder(&yaml)
        .upstream(&up)
        .var("kafka", &kafka.addr())
        .start()
        .await;

    // Warm up, then measure with the broker up.
    timed_requests(&gw, 50, "/warm").await;
    let up_lat = timed_requests(&gw, 300, "/up").await;
    kafka.stop();
    let down_lat = timed_requests(&gw, 600, "/down").await;
    let (p50_up, p50_down) = (percentile(&up_lat, 0.5), percentile(&down_lat, 0.5));
    let (p90_up, p90_down) = (percentile(&up_lat, 0.9), percentile(&down_lat, 0.9));
    eprintln!(
        "latency with the broker up: p50 {p50_up:?} p90 {p90_up:?}; down: p50 {p50_down:?} p90 {p90_down:?}"
    );
    // Noise on a shared 2-core machine is large; a sink that blocked would add its
    // connect timeouts (seconds) to requests.
    assert!(
        p50_down <= p50_up * 3 + Duration::from_millis(5),
        "p50 up {p50_up:?}, down {p50_down:?}"
    );
    assert!(
        p90_down <= p90_up * 3 + Duration::from_millis(20),
        "p90 up {p90_up:?}, down {p90_down:?}"
    );

    // What the queue could not hold is dropped and counted, for the Kafka sink only.
    let m = gw
        .metrics_when(Duration::from_secs(10), |m| {
            m.get(
                "sluice_log_dropped_total",
                &[("stream", "access_log"), ("sink", "kafka"), ("reason", "full")],
            )
            .is_some_and(|v| v >= 300.0)
        })
        .await;
    assert_eq!(
        m.value(
            "sluice_log_dropped_total",
            &[("stream", "access_log"), ("sink", "file"), ("reason", "full")]
        ),
        0.0,
        "the file sink is not held up by Kafka"
    );
    assert!(m.value("sluice_access_log_dropped_total", &[]) >= 300.0);
    // Every request reached the file sink meanwhile.
    eventually(Duration::from_secs(10), "950 lines in the file sink", || {
        let n = std::fs::read_to_string(gw.dir().join("access.log"))
            .unwrap_or_default()
            .lines()
            .count();
        async move { n == 950 }
    })
    .await;

    // The broker comes back (empty: in-memory storage); new records are delivered.
    let written = |m: &crate::support::Metrics| {
        m.value(
            "sluice_log_written_total",
            &[("stream", "access_log"), ("sink", "kafka")],
        )
    };
    let written_before = written(&gw.metrics().await);
    kafka.restart().await;
    // The records that waited in the full queue (100) go out first, by themselves.
    gw.metrics_when(Duration::from_secs(30), |m| written(m) >= written_before + 100.0)
        .await;
    let mut after = HashSet::new();
    for _ in 0..20 {
        let (status, id) = request_id(&gw, "/after").await;
        assert_eq!(status, 200);
        after.insert(id);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = kafka.consume("access", 10_000, Duration::from_secs(10)).await;
        let got: HashSet<String> = all
            .iter()
            .filter(|m| m.value["path"] == "/after")
            .map(|m| m.value["request_id"].as_str().unwrap().to_string())
            .collect();
        if after.is_subset(&got) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the restart, {} of 20 records arrived ({} read in all: {:?}); metrics:\n{}",
            after.intersection(&got).count(),
            all.len(),
            all.iter()
                .map(|m| format!("{}@{}", m.value["path"], m.partition))
                .collect::<Vec<_>>(),
            gw.metrics()
                .await
                .samples
                .iter()
                .filter(|s| s.name.starts_with("sluice_log_"))
                .map(|s| format!("{s:?}\n"))
                .collect::<String>()
        );
    }
    let m = gw.metrics().await;
    assert!(
        written(&m) >= written_before + 120.0,
        "the backlog and the 20 new records were acknowledged"
    );
}

#[tokio::test]
async fn a_file_sink_reopens_its_file_on_sigusr1_after_logrotate_renames_it() {
    let up = TestUpstream::start("api").await;
    let yaml = format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
{}routes: [{{id: r, upstream: api}}]
logging:
  access_log:
    sinks: [{{file: {{path: "{{{{dir}}}}/access.log"}}}}]
    fields: [request_id, status, route]
"#,
        upstream_entries(&[&up])
    );
    let mut gw = Gateway::builder(&yaml).upstream(&up).start().await;
    let path = gw.dir().join("access.log");
    let rotated = gw.dir().join("access.log.1");
    let ids_in = |p: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                assert_eq!(v.as_object().unwrap().len(), 3, "{l}");
                let at = |k: &str| {
                    l.find(&format!("\"{k}\":"))
                        .unwrap_or_else(|| panic!("{k} in {l}"))
                };
                assert!(
                    at("request_id") < at("status") && at("status") < at("route"),
                    "the configured field set, in order: {l}"
                );
                v["request_id"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let (_, first) = request_id(&gw, "/a").await;
    eventually(Duration::from_secs(10), "the first line", || {
        let ok = ids_in(&path) == [first.clone()];
        async move { ok }
    })
    .await;

    // logrotate: rename, then signal.
    std::fs::rename(&path, &rotated).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-s", "USR1", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Requests until one lands in the new file (the signal is handled asynchronously).
    let mut sent = vec![first.clone()];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, id) = request_id(&gw, "/b").await;
        sent.push(id);
        let now_new = ids_in(&path);
        if !now_new.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "nothing written to the reopened file");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.is_running(), "SIGUSR1 did not stop the gateway");
    // Every line is in one of the two files, once, in order.
    let sent_len = sent.len();
    eventually(Duration::from_secs(10), "every request logged once", || {
        let mut all = ids_in(&rotated);
        all.extend(ids_in(&path));
        let ok = all.len() == sent_len;
        async move { ok }
    })
    .await;
    let mut all = ids_in(&rotated);
    assert_eq!(all[0], first, "the rotated file keeps what was written before");
    all.extend(ids_in(&path));
    assert_eq!(all, sent);
    // The server still drains on SIGTERM as before.
    gw.signal(crate::support::Signal::Term);
    assert!(
        gw.wait_exit(Duration::from_secs(20)).await.is_some(),
        "exits on SIGTERM"
    );
}
