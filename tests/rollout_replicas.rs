//! Rollouts across replicas: three real `sluice` processes on one real etcd run one
//! rollout. They follow the same steps; killing the leader hands the rollout to another
//! replica, which continues from the stored step; and a canary that fails only on one
//! replica's traffic is judged on the sum of all replicas' figures.
//!
//! Every replica reads the same route and rollout from its own file; the rollout's state,
//! the leader key and the per-replica figures live in etcd (`--etcd`). Traffic comes from
//! bounded client loops ([`Traffic`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::support::{http_client, upstream_of, Etcd, Gateway, Mode, Signal, TestUpstream};

/// The most requests one [`Traffic`] sends.
const MAX_REQUESTS: usize = 60_000;
/// The longest one [`Traffic`] runs.
const MAX_TRAFFIC_TIME: Duration = Duration::from_secs(120);
/// How long a rollout may take to reach a state the test waits for.
const WAIT: Duration = Duration::from_secs(45);

/// The route `api` over `stable` and `canary` with a rollout of `canary` through
/// `steps`, `interval` at each.
fn config(steps: &str, interval: &str, analysis: &str) -> String {
    format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
- {{id: stable, endpoints: [{{address: "{{{{stable}}}}"}}]}}
- {{id: canary, endpoints: [{{address: "{{{{canary}}}}"}}]}}
routes:
- id: api
  match: {{path: {{prefix: /}}}}
  backends: [{{upstream: stable, weight: 1}}, {{upstream: canary, weight: 0}}]
  rollout:
    canary: canary
    steps: {steps}
    interval: {interval}
    analysis: {analysis}
"#
    )
}

const HEALTHY: &str = "{min_requests: 5, failed_checks: 2, success_rate: {min: 0.9}}";

/// A replica named `id` on `etcd`, with `stable` and `canary` as its upstreams.
async fn replica(etcd: &Etcd, yaml: &str, id: &str, stable: &TestUpstream, canary: &TestUpstream) -> Gateway {
    Gateway::builder(yaml)
        .var("stable", &stable.addr().to_string())
        .var("canary", &canary.addr().to_string())
        .arg("--etcd")
        .arg(etcd.endpoint())
        .arg("--etcd-connect-timeout")
        .arg("1s")
        .arg("--replica-id")
        .arg(id)
        .start()
        .await
}

async fn rollout(gw: &Gateway) -> Value {
    gw.admin_json("/api/v1/rollouts/api").await
}

/// Client tasks sending GETs round-robin through `gateways` until stopped (or
/// [`MAX_REQUESTS`], or [`MAX_TRAFFIC_TIME`]).
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Traffic {
    fn start(gateways: &[&Gateway], pause: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let client = http_client();
        let started = Instant::now();
        let tasks = gateways
            .iter()
            .map(|gw| {
                let url = gw.http_url("/x");
                let (stop, sent, client) = (stop.clone(), sent.clone(), client.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed)
                        && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
                        && started.elapsed() < MAX_TRAFFIC_TIME
                    {
                        // A killed replica refuses: that task just keeps trying, bounded.
                        let _ = client
                            .get(url.as_str())
                            .timeout(Duration::from_secs(2))
                            .send()
                            .await;
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Traffic { stop, sent, tasks }
    }

    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.sent.load(Ordering::Relaxed)
    }
}

/// Which backends `n` requests through `gw` reach: (stable, canary).
async fn observed_split(gw: &Gateway, n: usize) -> (usize, usize) {
    let client = http_client();
    let (mut stable, mut canary) = (0, 0);
    for _ in 0..n {
        let resp = client
            .get(gw.http_url("/x"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .unwrap();
        match upstream_of(&resp).as_str() {
            "stable" => stable += 1,
            "canary" | "canary-bad" => canary += 1,
            other => panic!("answered by {other:?}"),
        }
    }
    (stable, canary)
}

/// The canary weights a replica's rollout went through, in order, without repeats.
fn push_distinct(seen: &mut Vec<u64>, weight: u64) {
    if seen.last() != Some(&weight) {
        seen.push(weight);
    }
}

/// The index of the one replica that says it leads, if exactly one does.
async fn leader_of(gws: &[&Gateway]) -> Option<usize> {
    let mut leaders = Vec::new();
    for (i, gw) in gws.iter().enumerate() {
        if rollout(gw).await["is_leader"] == true {
            leaders.push(i);
        }
    }
    (leaders.len() == 1).then(|| leaders[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_follow_the_same_steps() {
    let etcd = Etcd::start().await;
    let stable = TestUpstream::start("stable").await;
    let canary = TestUpstream::start("canary").await;
    let yaml = config("[10, 30, 60, 100]", "2s", HEALTHY);
    let gws = [
        replica(&etcd, &yaml, "r1", &stable, &canary).await,
        replica(&etcd, &yaml, "r2", &stable, &canary).await,
        replica(&etcd, &yaml, "r3", &stable, &canary).await,
    ];
    let refs: Vec<&Gateway> = gws.iter().collect();
    let traffic = Traffic::start(&refs, Duration::from_millis(10));

    let mut seen: [Vec<u64>; 3] = Default::default();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut done = 0;
        for (i, gw) in gws.iter().enumerate() {
            let r = rollout(gw).await;
            assert_eq!(r["replica"], format!("r{}", i + 1), "{r:#}");
            if let Some(w) = r["weight"].as_u64() {
                if r["state"] != "pending" {
                    push_distinct(&mut seen[i], w);
                }
            }
            if r["state"] == "promoted" {
                done += 1;
            }
        }
        if done == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not promoted on every replica: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    traffic.stop().await;

    // Every replica served every step, in order: one rollout, not three.
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s, &[10, 30, 60, 100], "replica r{} went through {s:?}", i + 1);
    }
    // One replica decided every step; the others followed the stored state.
    let states = [
        rollout(&gws[0]).await,
        rollout(&gws[1]).await,
        rollout(&gws[2]).await,
    ];
    let leaders: Vec<_> = states.iter().filter(|r| r["is_leader"] == true).collect();
    assert_eq!(leaders.len(), 1, "{states:#?}");
    for r in &states {
        assert_eq!(
            r["history"], states[0]["history"],
            "replicas disagree on the history"
        );
        assert_eq!(r["leader"], leaders[0]["replica"], "{r:#}");
    }
    // And each replica's own traffic now goes to the canary.
    for gw in &gws {
        assert_eq!(observed_split(gw, 20).await, (0, 20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_hands_the_rollout_over_at_the_stored_step() {
    let etcd = Etcd::start().await;
    let stable = TestUpstream::start("stable").await;
    let canary = TestUpstream::start("canary").await;
    let yaml = config("[10, 20, 30, 40, 50, 60, 100]", "2s", HEALTHY);
    let mut gws = vec![
        replica(&etcd, &yaml, "r1", &stable, &canary).await,
        replica(&etcd, &yaml, "r2", &stable, &canary).await,
        replica(&etcd, &yaml, "r3", &stable, &canary).await,
    ];
    let refs: Vec<&Gateway> = gws.iter().collect();
    let traffic = Traffic::start(&refs, Duration::from_millis(10));

    // Wait for the third step, then kill whoever leads.
    let deadline = Instant::now() + WAIT;
    let (leader, before) = loop {
        let refs: Vec<&Gateway> = gws.iter().collect();
        if let Some(i) = leader_of(&refs).await {
            let r = rollout(&gws[i]).await;
            if r["weight"].as_u64().is_some_and(|w| w >= 30) && r["state"] == "progressing" {
                break (i, r);
            }
        }
        assert!(Instant::now() < deadline, "the rollout never reached 30%");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let killed = before["replica"].as_str().unwrap().to_string();
    let weight_before = before["weight"].as_u64().unwrap();
    gws[leader].signal(Signal::Kill);
    let killed_at = Instant::now();
    let dead = gws.remove(leader);

    // Another replica leads within a few seconds (the lease's TTL and a renewal).
    let rest: Vec<&Gateway> = gws.iter().collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let next = loop {
        if let Some(i) = leader_of(&rest).await {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "no replica took the lead after the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(6), "takeover took {took:?}");
    println!("leader {killed} killed at {weight_before}%: taken over in {took:?}");

    // It continues from the stored step, not from the first, and promotes.
    let mut weights = Vec::new();
    let deadline = Instant::now() + WAIT;
    let last = loop {
        let r = rollout(rest[next]).await;
        if let Some(w) = r["weight"].as_u64() {
            push_distinct(&mut weights, w);
        }
        if r["state"] == "promoted" {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "not promoted after the takeover: {r:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    traffic.stop().await;
    assert!(
        weights.iter().all(|&w| w >= weight_before),
        "went back below {weight_before}% after the takeover: {weights:?}"
    );
    assert_ne!(last["leader"], killed.as_str(), "{last:#}");
    let history: Vec<u64> = last["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["weight"].as_u64())
        .collect();
    assert!(
        history.windows(2).all(|w| w[0] <= w[1]),
        "the rollout went back to an earlier step: {history:?}"
    );
    for gw in &rest {
        assert_eq!(observed_split(gw, 10).await, (0, 10));
    }
    drop(dead);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_on_one_replicas_traffic_is_judged_on_the_sum() {
    let etcd = Etcd::start().await;
    let stable = TestUpstream::start("stable").await;
    let canary = TestUpstream::start("canary").await;
    let bad = TestUpstream::start("canary-bad").await;
    bad.set_mode(Mode::Status(503)).await;
    let yaml = config("[20, 50, 100]", "2s", HEALTHY);

    // r1 starts first and leads; its canary (and r3's) is healthy. r2's canary fails.
    let r1 = replica(&etcd, &yaml, "r1", &stable, &canary).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while rollout(&r1).await["is_leader"] != true {
        assert!(Instant::now() < deadline, "r1 never led");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r2 = replica(&etcd, &yaml, "r2", &stable, &bad).await;
    let r3 = replica(&etcd, &yaml, "r3", &stable, &canary).await;

    // Only r2 gets traffic: the leader's own figures hold no canary request at all, so
    // judging them alone would wait forever; judged on the sum, the canary fails.
    let traffic = Traffic::start(&[&r2], Duration::from_millis(2));
    let deadline = Instant::now() + WAIT;
    let last = loop {
        let r = rollout(&r1).await;
        if r["state"] == "rolled_back" {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "not rolled back: {r:#}\nr2's logs:\n{}",
            r2.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    traffic.stop().await;
    assert_eq!(last["is_leader"], true, "{last:#}");
    assert_eq!(last["leader"], "r1", "{last:#}");
    assert_eq!(last["weight"], 0, "{last:#}");
    assert!(bad.requests() > 0);
    assert_eq!(canary.requests(), 0, "the healthy canaries got no traffic");
    // Every replica follows: no traffic to any canary any more.
    for gw in [&r1, &r2, &r3] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while rollout(gw).await["weight"] != 0 {
            assert!(Instant::now() < deadline, "a replica kept the canary's weight");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The admin API shows the stored state; the replica applies it on its next tick.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let split = observed_split(gw, 10).await;
            if split == (10, 0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a replica still sends to the canary: {split:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
