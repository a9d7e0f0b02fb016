//! The discovery plane over the wire: endpoints added and removed in the file and in
//! etcd, priority failover to the next cluster and back, and DNS re-resolution against a
//! DNS server the test runs on loopback. Each change happens under a bounded request
//! loop that asserts no request fails.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{eventually, http_client, upstream_of, Etcd, Gateway, Mode, TestDns, TestUpstream};

/// The most requests, and the longest, that one phase of a test drives.
const MAX_REQUESTS: usize = 5000;
const MAX_PHASE: Duration = Duration::from_secs(30);

/// What a phase saw: answers per upstream, in order.
#[derive(Default, Debug)]
struct Tally {
    order: Vec<String>,
    failures: Vec<String>,
}

impl Tally {
    fn counts(&self) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for n in &self.order {
            *c.entry(n.clone()).or_default() += 1;
        }
        c
    }
}

/// Sends requests one after another until `done` holds for what was seen so far (or the
/// bounds run out, which fails the test), recording every failure.
async fn drive(gw: &Gateway, what: &str, mut done: impl FnMut(&Tally) -> bool) -> Tally {
    let client = http_client();
    let url = gw.http_url("/");
    let started = Instant::now();
    let mut t = Tally::default();
    for _ in 0..MAX_REQUESTS {
        match client.get(&url).send().await {
            Ok(r) if r.status() == StatusCode::OK => t.order.push(upstream_of(&r)),
            Ok(r) => t.failures.push(format!("status {}", r.status())),
            Err(e) => t.failures.push(e.to_string()),
        }
        if done(&t) {
            return t;
        }
        assert!(
            started.elapsed() < MAX_PHASE,
            "{what}: not done within {MAX_PHASE:?}: {t:?}"
        );
    }
    panic!(
        "{what}: not done within {MAX_REQUESTS} requests: {:?}",
        t.counts()
    );
}

/// The last `n` answers all came from upstreams in `names`.
fn last_from(t: &Tally, n: usize, names: &[&str]) -> bool {
    t.order.len() >= n
        && t.order[t.order.len() - n..]
            .iter()
            .all(|u| names.contains(&u.as_str()))
}

fn pool(endpoints: &[&str]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{{address: \"{{{{{e}}}}}\"}}"))
        .collect();
    format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
- {{id: pool, endpoints: [{}]}}
routes:
- {{id: all, upstream: pool}}
"#,
        eps.join(", ")
    )
}

#[tokio::test]
async fn an_endpoint_added_and_removed_in_the_file_moves_traffic_with_no_failed_request() {
    let ups = TestUpstream::start_many(&["a", "b"]).await;
    let gw = Gateway::start(&pool(&["a"]), &[&ups[0], &ups[1]]).await;
    let before = drive(&gw, "only a", |t| t.order.len() == 20).await;
    assert_eq!(before.counts(), BTreeMap::from([("a".to_string(), 20)]));

    gw.rewrite_config(&pool(&["a", "b"]));
    let added = drive(&gw, "b added", |t| {
        last_from(t, 10, &["a", "b"]) && t.order.iter().rev().take(10).any(|u| u == "b")
    })
    .await;
    assert!(
        added.failures.is_empty(),
        "no failed request while adding: {:?}",
        added.failures
    );

    gw.rewrite_config(&pool(&["b"]));
    let removed = drive(&gw, "a removed", |t| last_from(t, 30, &["b"])).await;
    assert!(
        removed.failures.is_empty(),
        "no failed request while removing: {:?}",
        removed.failures
    );

    let ups_json = gw.admin_json("/api/v1/upstreams").await;
    let eps = &ups_json["upstreams"][0]["endpoints"];
    assert_eq!(eps.as_array().unwrap().len(), 1, "{ups_json}");
    assert_eq!(eps[0]["address"], ups[1].addr().to_string());
}

#[tokio::test]
async fn an_endpoint_added_and_removed_in_etcd_moves_traffic_with_no_failed_request() {
    let etcd = Etcd::start().await;
    let ups = TestUpstream::start_many(&["a", "b"]).await;
    let upstream = |addrs: &[SocketAddr]| {
        json!({"id": "pool", "endpoints": addrs.iter().map(|a| json!({"address": a.to_string()})).collect::<Vec<_>>()})
            .to_string()
    };
    let mut kv = etcd.client().await;
    kv.put("/sluice/upstreams/pool", upstream(&[ups[0].addr()]), None)
        .await
        .unwrap();
    kv.put(
        "/sluice/routes/all",
        json!({"id": "all", "upstream": "pool"}).to_string(),
        None,
    )
    .await
    .unwrap();
    let gw = Gateway::builder("listeners: [{name: web, listen: \"{{http}}\"}]\n")
        .arg("--etcd")
        .arg(etcd.endpoint())
        .arg("--etcd-connect-timeout")
        .arg("1s")
        .start()
        .await;
    eventually(Duration::from_secs(10), "the etcd route serves", || async {
        http_client()
            .get(gw.http_url("/"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    let before = drive(&gw, "only a", |t| t.order.len() == 20).await;
    assert_eq!(before.counts(), BTreeMap::from([("a".to_string(), 20)]));

    kv.put(
        "/sluice/upstreams/pool",
        upstream(&[ups[0].addr(), ups[1].addr()]),
        None,
    )
    .await
    .unwrap();
    let added = drive(&gw, "b added", |t| {
        t.order.iter().rev().take(10).any(|u| u == "b")
    })
    .await;
    assert!(added.failures.is_empty(), "{:?}", added.failures);

    kv.put("/sluice/upstreams/pool", upstream(&[ups[1].addr()]), None)
        .await
        .unwrap();
    let removed = drive(&gw, "a removed", |t| last_from(t, 30, &["b"])).await;
    assert!(removed.failures.is_empty(), "{:?}", removed.failures);
}

/// `/api/v1/upstreams`' `priority_load` of the first upstream, as (priority, percent).
async fn priority_load(gw: &Gateway) -> Vec<(u64, u64)> {
    let v: Value = gw.admin_json("/api/v1/upstreams").await;
    v["upstreams"][0]["priority_load"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["priority"].as_u64().unwrap(), l["percent"].as_u64().unwrap()))
        .collect()
}

#[tokio::test]
async fn traffic_fails_over_to_the_next_priority_when_the_local_endpoints_die_and_comes_back() {
    let ups = TestUpstream::start_many(&["local1", "local2", "remote"]).await;
    let yaml = r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams:
- id: pool
  health_check: {kind: tcp, interval: 100ms, timeout: 80ms, unhealthy_threshold: 1, healthy_threshold: 1}
  outlier_detection: {enabled: false}
  endpoints:
  - {address: "{{local1}}"}
  - {address: "{{local2}}"}
  - {address: "{{remote}}", priority: 1}
routes:
- {id: all, upstream: pool}
"#;
    let gw = Gateway::start(yaml, &[&ups[0], &ups[1], &ups[2]]).await;
    let local = drive(&gw, "local while healthy", |t| t.order.len() == 40).await;
    assert_eq!(
        local.counts(),
        BTreeMap::from([("local1".to_string(), 20), ("local2".to_string(), 20)])
    );
    assert_eq!(priority_load(&gw).await, [(0, 100), (1, 0)]);

    ups[0].set_mode(Mode::Refuse).await;
    ups[1].set_mode(Mode::Refuse).await;
    // Until the checks notice, a try on a dead local endpoint is retried (connect
    // failures are retried by default) and ends on the remote one.
    let failover = drive(&gw, "failover", |t| last_from(t, 30, &["remote"])).await;
    assert!(
        failover.failures.is_empty(),
        "no failed request: {:?}",
        failover.failures
    );
    eventually(
        Duration::from_secs(5),
        "the checks mark the local level down",
        || async { priority_load(&gw).await == [(0, 0), (1, 100)] },
    )
    .await;

    ups[0].set_mode(Mode::Healthy).await;
    ups[1].set_mode(Mode::Healthy).await;
    let back = drive(&gw, "failback", |t| last_from(t, 30, &["local1", "local2"])).await;
    assert!(back.failures.is_empty(), "{:?}", back.failures);
    assert_eq!(priority_load(&gw).await, [(0, 100), (1, 0)]);
}

#[tokio::test]
async fn a_changed_dns_answer_moves_traffic_and_a_failing_dns_keeps_the_last_answer() {
    let dns = TestDns::start(&[Ipv4Addr::new(127, 0, 0, 1)]).await;
    let one = TestUpstream::start("one").await;
    let port = one.addr().port();
    let two = TestUpstream::start_at("two", SocketAddr::from(([127, 0, 0, 2], port))).await;
    let yaml = format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
dns: {{nameservers: ["{}"]}}
upstreams:
- {{id: pool, endpoints: [{{address: "svc.test:{port}"}}], dns: {{min_refresh: 200ms, retry: 200ms}}}}
routes:
- {{id: all, upstream: pool}}
"#,
        dns.addr()
    );
    let gw = Gateway::start(&yaml, &[]).await;
    eventually(
        Duration::from_secs(10),
        "the name resolves and serves",
        || async {
            http_client()
                .get(gw.http_url("/"))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        },
    )
    .await;
    let first = drive(&gw, "on 127.0.0.1", |t| t.order.len() == 20).await;
    assert_eq!(first.counts(), BTreeMap::from([("one".to_string(), 20)]));
    let v = gw.admin_json("/api/v1/upstreams").await;
    let up = &v["upstreams"][0];
    assert_eq!(up["endpoints"][0]["address"], format!("svc.test:{port}"), "{v}");
    assert_eq!(up["endpoints"][0]["resolved"], format!("127.0.0.1:{port}"), "{v}");
    assert_eq!(up["dns"][0]["addresses"], json!(["127.0.0.1"]), "{v}");

    // The answer changes (TTL 1 s): traffic moves, nothing fails.
    dns.set(&[Ipv4Addr::new(127, 0, 0, 2)]);
    let moved = drive(&gw, "moves to 127.0.0.2", |t| last_from(t, 20, &["two"])).await;
    assert!(moved.failures.is_empty(), "{:?}", moved.failures);
    assert!(two.requests() >= 20);

    // DNS fails: the last good answer keeps serving.
    let queries = dns.queries();
    dns.fail();
    let kept = drive(&gw, "DNS failing", |t| {
        t.order.len() >= 30 && dns.queries() > queries + 1
    })
    .await;
    assert!(kept.failures.is_empty(), "{:?}", kept.failures);
    assert_eq!(
        kept.counts(),
        BTreeMap::from([("two".to_string(), kept.order.len())])
    );
    eventually(
        Duration::from_secs(10),
        "the admin API reports the DNS failure",
        || async {
            let v = gw.admin_json("/api/v1/upstreams").await;
            v["upstreams"][0]["dns"][0]["error"].is_string()
                && v["upstreams"][0]["dns"][0]["addresses"] == json!(["127.0.0.2"])
        },
    )
    .await;
    let after = drive(&gw, "still serving", |t| t.order.len() == 20).await;
    assert_eq!(after.counts(), BTreeMap::from([("two".to_string(), 20)]));
}
