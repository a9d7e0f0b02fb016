//! Progressive rollouts (`routes[].rollout`) on the real binary, with real stable and
//! canary upstreams and second-scale intervals: promotion through every step, rollback
//! on errors and on latency, operator commands through the admin API and the CLI,
//! `pre_step` webhooks, waiting for traffic, and state that survives a reload and a
//! restart.
//!
//! Traffic comes from [`Traffic`]: a few client tasks sending GETs until stopped,
//! bounded in count and in time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::support::{eventually, http_client, upstream_entries, upstream_of, Gateway, Mode, TestUpstream};

/// The most requests one [`Traffic`] sends.
const MAX_REQUESTS: usize = 50_000;
/// The longest one [`Traffic`] runs.
const MAX_TRAFFIC_TIME: Duration = Duration::from_secs(90);
/// How long a rollout may take to reach a state the test waits for.
const WAIT: Duration = Duration::from_secs(30);

/// Client tasks sending GETs through the gateway until stopped (or [`MAX_REQUESTS`],
/// or [`MAX_TRAFFIC_TIME`]), each pausing `pause` between requests.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Traffic {
    fn start(gw: &Gateway, parallel: usize, pause: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let url = Arc::new(gw.http_url("/x"));
        let client = http_client();
        let started = Instant::now();
        let tasks = (0..parallel)
            .map(|_| {
                let (stop, sent, url, client) = (stop.clone(), sent.clone(), url.clone(), client.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed)
                        && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
                        && started.elapsed() < MAX_TRAFFIC_TIME
                    {
                        let _ = client
                            .get(url.as_str())
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await;
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
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

/// Route `api` over `stable` (weight 1) and `canary` (weight 0) with a rollout of
/// `canary` in steps of 20, 50 and 100% every second, plus `rollout_extra` lines of the
/// rollout block (indented by 4) and `extra` top-level lines.
fn config(ups: &[&TestUpstream], analysis: &str, rollout_extra: &str, extra: &str) -> String {
    format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
{}
routes:
- id: api
  match: {{path: {{prefix: /}}}}
  backends: [{{upstream: stable, weight: 1}}, {{upstream: canary, weight: 0}}]
  rollout:
    canary: canary
    steps: [20, 50, 100]
    interval: 1s
    analysis: {analysis}
{rollout_extra}
{extra}
"#,
        upstream_entries(ups)
    )
}

const ANALYSIS: &str =
    "{min_requests: 10, failed_checks: 2, success_rate: {min: 0.95}, latency_p99: {max: 150ms}}";

async fn start(yaml: &str, ups: &[&TestUpstream]) -> Gateway {
    Gateway::builder(yaml)
        .upstreams(ups)
        .env("SLUICE_STATE_DIR", "{{dir}}/state")
        .start()
        .await
}

async fn rollout(gw: &Gateway) -> Value {
    gw.admin_json("/api/v1/rollouts/api").await
}

/// Polls the rollout until `done` holds; returns it.
async fn wait_for(gw: &Gateway, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = rollout(gw).await;
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}; rollout: {r:#}\nlogs:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn actions(r: &Value) -> Vec<String> {
    r["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| format!("{}@{}", d["action"].as_str().unwrap(), d["weight"]))
        .collect()
}

async fn command(gw: &Gateway, route: &str, cmd: &str) -> (StatusCode, Value) {
    let resp = http_client()
        .post(gw.admin_url(&format!("/api/v1/rollouts/{route}/{cmd}")))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

/// Sends `n` requests one by one and counts the upstreams that answered.
async fn shares(gw: &Gateway, n: usize) -> BTreeMap<String, usize> {
    let client = http_client();
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let resp = client.get(gw.http_url("/y")).send().await.unwrap();
        *seen.entry(upstream_of(&resp)).or_insert(0) += 1;
    }
    seen
}

#[tokio::test]
async fn a_healthy_canary_is_promoted_through_every_step_to_100() {
    let ups = TestUpstream::start_many(&["stable", "canary"]).await;
    let refs = [&ups[0], &ups[1]];
    let gw = start(&config(&refs, ANALYSIS, "", ""), &refs).await;
    let traffic = Traffic::start(&gw, 3, Duration::from_millis(2));
    let r = wait_for(&gw, "promotion", |r| r["state"] == "promoted").await;
    traffic.stop().await;
    assert_eq!(
        actions(&r),
        ["start@0", "step@20", "step@50", "step@100", "promote@100"],
        "{r:#}"
    );
    assert_eq!(r["weight"], 100);
    assert_eq!(r["last_analysis"]["verdict"], "pass");
    assert!(
        r["last_analysis"]["canary"]["requests"].as_u64().unwrap() >= 10,
        "{r:#}"
    );
    let seen = shares(&gw, 50).await;
    assert_eq!(
        seen.get("canary"),
        Some(&50),
        "promoted: the canary serves all: {seen:?}"
    );
    let m = gw.metrics().await;
    assert_eq!(m.value("sluice_rollout_weight", &[("route", "api")]), 100.0);
    assert_eq!(m.value("sluice_rollout_step", &[("route", "api")]), 3.0);
    assert_eq!(
        m.value("sluice_rollout_state", &[("route", "api"), ("state", "promoted")]),
        1.0
    );
    assert_eq!(
        m.value(
            "sluice_rollout_state",
            &[("route", "api"), ("state", "progressing")]
        ),
        0.0
    );
    assert!(
        m.value(
            "sluice_rollout_analyses_total",
            &[("route", "api"), ("verdict", "pass")]
        ) >= 3.0
    );
    let events = gw.admin_json("/api/v1/events?limit=100").await;
    let steps = events.to_string().matches("rollout_step").count();
    assert!(steps >= 4, "rollout_step events: {events:#}");
    let list = gw.admin_json("/api/v1/rollouts").await;
    assert_eq!(list["rollouts"][0]["route"], "api");
    assert_eq!(list["rollouts"][0]["state"], "promoted");
}

#[tokio::test]
async fn a_canary_that_starts_failing_is_rolled_back_to_zero() {
    let ups = TestUpstream::start_many(&["stable", "canary"]).await;
    let refs = [&ups[0], &ups[1]];
    let gw = start(&config(&refs, ANALYSIS, "", ""), &refs).await;
    let traffic = Traffic::start(&gw, 3, Duration::from_millis(2));
    wait_for(&gw, "step 2", |r| r["weight"] == 50).await;
    ups[1].set_mode(Mode::Status(503)).await;
    let failing = Instant::now();
    let r = wait_for(&gw, "rollback", |r| r["state"] == "rolled_back").await;
    let took = failing.elapsed();
    traffic.stop().await;
    // Two failed intervals (the threshold), plus at most one interval in which the
    // failure began, plus ticking: well within four intervals.
    assert!(
        took < Duration::from_secs(4),
        "rolled back {took:?} after the canary failed: {r:#}"
    );
    assert_eq!(r["weight"], 0);
    assert_eq!(r["failed"], 2);
    assert_eq!(r["last_analysis"]["verdict"], "fail");
    assert!(
        r["last_analysis"]["reason"]
            .as_str()
            .unwrap()
            .contains("success rate"),
        "{r:#}"
    );
    assert_eq!(actions(&r).last().unwrap(), "rollback@0");
    ups[1].reset_requests();
    let seen = shares(&gw, 50).await;
    assert_eq!(seen.get("stable"), Some(&50), "{seen:?}");
    assert_eq!(ups[1].requests(), 0, "rolled back: the canary gets nothing");
    let m = gw.metrics().await;
    assert_eq!(
        m.value(
            "sluice_rollout_state",
            &[("route", "api"), ("state", "rolled_back")]
        ),
        1.0
    );
    assert_eq!(m.value("sluice_rollout_weight", &[("route", "api")]), 0.0);
    assert!(
        m.value(
            "sluice_rollout_analyses_total",
            &[("route", "api"), ("verdict", "fail")]
        ) >= 2.0
    );
}

#[tokio::test]
async fn a_slow_canary_is_rolled_back() {
    let ups = TestUpstream::start_many(&["stable", "canary"]).await;
    let refs = [&ups[0], &ups[1]];
    let gw = start(&config(&refs, ANALYSIS, "", ""), &refs).await;
    ups[1].set_mode(Mode::Delay(Duration::from_millis(300))).await;
    let traffic = Traffic::start(&gw, 8, Duration::from_millis(2));
    let r = wait_for(&gw, "rollback", |r| r["state"] == "rolled_back").await;
    traffic.stop().await;
    assert_eq!(r["weight"], 0);
    let reason = r["last_analysis"]["reason"].as_str().unwrap();
    assert!(reason.contains("p99") && reason.contains("above 150ms"), "{r:#}");
    assert!(
        r["last_analysis"]["canary"]["p99_ms"].as_f64().unwrap() >= 300.0,
        "{r:#}"
    );
    assert_eq!(
        actions(&r),
        ["start@0", "step@20", "hold@20", "rollback@0"],
        "{r:#}"
    );
}

#[tokio::test]
async fn too_little_traffic_waits_instead_of_passing() {
    let ups = TestUpstream::start_many(&["stable", "canary"]).await;
    let refs = [&ups[0], &ups[1]];
    let analysis = "{min_requests: 100000, failed_checks: 1}";
    let gw = start(&config(&refs, analysis, "", ""), &refs).await;
    let traffic = Traffic::start(&gw, 1, Duration::from_millis(20));
    let m = gw
        .metrics_when(WAIT, |m| {
            m.get(
                "sluice_rollout_analyses_total",
                &[("route", "api"), ("verdict", "wait")],
            )
            .is_some_and(|v| v >= 3.0)
        })
        .await;
    traffic.stop().await;
    assert_eq!(
        m.value(
            "sluice_rollout_analyses_total",
            &[("route", "api"), ("verdict", "pass")]
        ),
        0.0
    );
    assert_eq!(
        m.value(
            "sluice_rollout_analyses_total",
            &[("route", "api"), ("verdict", "fail")]
        ),
        0.0
    );
    let r = rollout(&gw).await;
    assert_eq!(
        (r["state"].as_str(), r["step"].as_u64(), r["weight"].as_u64()),
        (Some("progressing"), Some(1), Some(20)),
        "{r:#}"
    );
    assert_eq!(r["last_analysis"]["verdict"], "wait");
    assert!(
        r["waiting"].as_str().unwrap().contains("waiting for traffic"),
        "{r:#}"
    );
    assert!(
        r["last_analysis"]["canary"]["requests"].as_u64().unwrap() > 0,
        "some canary traffic was seen: {r:#}"
    );
}

#[tokio::test]
async fn pause_resume_promote_and_abort_through_the_admin_api() {
    let ups = TestUpstream::start_many(&["stable", "canary"]).await;
    let refs = [&ups[0], &ups[1]];
    let gw = start(&config(&refs, ANALYSIS, "", ""), &refs).await;
    let traffic = Traffic::start(&gw, 3, Duration::from_millis(2));
    wait_for(&gw, "the first step", |r| r["weight"] == 20).await;
    let (status, body) = command(&gw, "api", "pause").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let r = wait_for(&gw, "paused", |r| r["state"] == "paused").await;
    let held = r["weight"].clone();
    // Paused for three intervals of healthy traffic: nothing moves.
    let m = gw.metrics().await;
    let judged = m.value(
        "sluice_rollout_analyses_total",
        &[("route", "api"), ("verdict", "pass")],
    );
    let until = Instant::now() + Duration::from_millis(3100);
    while Instant::now() < until {
        let now = rollout(&gw).await;
        assert_eq!(now["state"], "paused", "{now:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = rollout(&gw).await;
    assert_eq!(
        (r["state"].clone(), r["weight"].clone()),
        (Value::from("paused"), held),
        "{r:#}"
    );
    let m = gw.metrics().await;
    assert_eq!(
        m.value(
            "sluice_rollout_analyses_total",
            &[("route", "api"), ("verdict", "pass")]
        ),
        judged,
        "nothing judged while paused"
    );
    let (status, body) = command(&gw, "api", "pause").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "cannot pause a rollout that is paused");
    assert_eq!(command(&gw, "api", "resume").await.0, StatusCode::ACCEPTED);
    wait_for(&gw, "resumed", |r| r["state"] == "progressing").await;
    assert_eq!(command(&gw, "api", "promote").await.0, StatusCode::ACCEPTED);
    let r = wait_for(&gw, "promoted", |r| r["state"] == "promoted").await;
    assert_eq!(r["weight"], 100);
    assert!(actions(&r).contains(&"promote@100".to_string()), "{r:#}");
    let (status, body) = command(&gw, "api", "abort").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // Resume restarts an ended rollout from its first step; abort sends it back to 0.
    assert_eq!(command(&gw, "api", "resume").await.0, StatusCode::ACCEPTED);
    wait_for(&gw, "restarted", |r| {
        r["state"] == "progressing" && r["weight"] == 20
    })
    .await;
    assert_eq!(command(&gw, "api", "abort").await.0, StatusCode::ACCEPTED);
    let r = wait_for(&gw, "aborted", |r| r["state"] == "aborted").await;
    traffic.stop().await;
    assert_eq!(r["weight"], 0);
    ups[1].reset_requests();
    shares(&gw, 20).await;
    assert_eq!(ups[1].requests(), 0, "aborted: the canary gets nothing");
    let (status, body) = command(&gw, "nope", "pause").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "no route \"nope\"");
    let (status, body) = command(&gw, "api", "jump").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("unknown rollout command \"jump\""));
    let resp = gw.admin_get("/api/v1/rollouts/nope").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

/// Runs `sluice rollout ARGS --admin <gw>`; returns (success, stdout + stderr).
async fn cli(gw: &Gateway, args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("rollout")
            .args(args)
            .arg("--admin")
            .arg(format!("http://{}", gw.admin_addr()))
            .output(),
    )
    .await
    .expect("the CLI answers within 15 s")
    .expect("run the CLI");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn the_cli_shows_and_steers_a_rollout() {
    let ups = TestUpstream::start_many(&["stable", "canary"]).await;
    let refs = [&ups[0], &ups[1]];
    let gw = start(&config(&refs, ANALYSIS, "", ""), &refs).await;
    let traffic = Traffic::start(&gw, 3, Duration::from_millis(2));
    wait_for(&gw, "the first step", |r| r["weight"] == 20).await;
    let (ok, out) = cli(&gw, &["pause", "api"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("pause sent to api"), "{out}");
    wait_for(&gw, "paused", |r| r["state"] == "paused").await;
    let (ok, out) = cli(&gw, &["status"]).await;
    assert!(ok, "{out}");
    let line = out.lines().find(|l| l.starts_with("api ")).unwrap_or_default();
    assert!(line.contains("paused") && line.contains("20%"), "{out}");
    let (ok, out) = cli(&gw, &["status", "api"]).await;
    assert!(ok, "{out}");
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["state"], "paused");
    let (ok, out) = cli(&gw, &["pause", "api"]).await;
    assert!(
        !ok && out.contains("409") && out.contains("cannot pause"),
        "{out}"
    );
    let (ok, out) = cli(&gw, &["resume", "api"]).await;
    assert!(ok, "{out}");
    wait_for(&gw, "resumed", |r| r["state"] == "progressing").await;
    let (ok, out) = cli(&gw, &["promote", "api"]).await;
    assert!(ok, "{out}");
    wait_for(&gw, "promoted", |r| r["state"] == "promoted").await;
    let (ok, out) = cli(&gw, &["resume", "api"]).await;
    assert!(ok, "{out}");
    wait_for(&gw, "restarted", |r| r["state"] == "progressing").await;
    let (ok, out) = cli(&gw, &["abort", "api"]).await;
    assert!(ok, "{out}");
    wait_for(&gw, "aborted", |r| r["state"] == "aborted").await;
    traffic.stop().await;
    let (ok, out) = cli(&gw, &["abort", "nope"]).await;
    assert!(
        !ok && out.contains("404") && out.contains("no route \"nope\""),
        "{out}"
    );
    let (ok, out) = cli(&gw, &["pause"]).await;
    assert!(!ok && out.contains("needs a ROUTE"), "{out}");
}

#[tokio::test]
async fn a_webhook_that_says_no_holds_the_step_and_yes_lets_it_go() {
    let ups = TestUpstream::start_many(&["stable", "canary", "hook"]).await;
    ups[2].set_mode(Mode::Status(500)).await;
    let refs = [&ups[0], &ups[1], &ups[2]];
    let hooks = "    webhooks: [{url: \"http://{{hook}}/gate\", on: [pre_step], timeout: 1s}]";
    let gw = start(&config(&refs[..2], ANALYSIS, hooks, ""), &refs).await;
    let traffic = Traffic::start(&gw, 3, Duration::from_millis(2));
    // Refused: the first step is held at 0%, asked again every interval.
    eventually(WAIT, "the webhook to be asked three times", || async {
        ups[2].requests() >= 3
    })
    .await;
    let r = rollout(&gw).await;
    assert_eq!(
        (r["state"].as_str(), r["weight"].as_u64()),
        (Some("progressing"), Some(0)),
        "{r:#}"
    );
    assert!(
        r["waiting"]
            .as_str()
            .unwrap()
            .contains("held by a pre_step webhook"),
        "{r:#}"
    );
    assert!(actions(&r).contains(&"hold@0".to_string()), "{r:#}");
    ups[1].reset_requests();
    shares(&gw, 20).await;
    assert_eq!(ups[1].requests(), 0, "held at 0%: the canary gets nothing");
    // Agreed: the rollout goes on through every step.
    ups[2].set_mode(Mode::Healthy).await;
    let r = wait_for(&gw, "promotion", |r| r["state"] == "promoted").await;
    traffic.stop().await;
    let a = actions(&r);
    assert!(
        a.ends_with(&[
            "step@20".into(),
            "step@50".into(),
            "step@100".into(),
            "promote@100".into()
        ]),
        "{a:?}"
    );
}

#[tokio::test]
async fn state_survives_a_reload_that_does_not_touch_it_and_a_restart() {
    let ups = TestUpstream::start_many(&["stable", "canary", "other"]).await;
    let refs = [&ups[0], &ups[1], &ups[2]];
    let state_dir = tempfile::tempdir().unwrap();
    let yaml =
        |extra: &str, steps: &str| config(&refs, ANALYSIS, "", extra).replace("steps: [20, 50, 100]", steps);
    let start_on = |yaml: String| {
        let dir = state_dir.path().display().to_string();
        async move {
            Gateway::builder(&yaml)
                .upstreams(&refs)
                .env("SLUICE_STATE_DIR", &dir)
                .start()
                .await
        }
    };
    let gw = start_on(yaml("", "steps: [20, 50, 100]")).await;
    let traffic = Traffic::start(&gw, 3, Duration::from_millis(2));
    wait_for(&gw, "step 2", |r| r["weight"] == 50).await;
    assert_eq!(command(&gw, "api", "pause").await.0, StatusCode::ACCEPTED);
    let before = wait_for(&gw, "paused", |r| r["state"] == "paused").await;
    traffic.stop().await;
    let started = before["started_at"].clone();

    // A reload that adds a route leaves the rollout where it is.
    let other_route = "- id: other\n  match: {path: {prefix: /other}}\n  upstream: other\n";
    let applied = gw.reload(&yaml(other_route, "steps: [20, 50, 100]")).await;
    assert!(applied["version"].as_u64().unwrap() >= 2, "{applied:#}");
    let r = rollout(&gw).await;
    assert_eq!(
        (r["state"].clone(), r["weight"].clone(), r["started_at"].clone()),
        (Value::from("paused"), Value::from(50), started.clone()),
        "{r:#}"
    );
    let seen = shares(&gw, 100).await;
    assert_eq!(
        (seen.get("stable"), seen.get("canary")),
        (Some(&50), Some(&50)),
        "{seen:?}"
    );

    // Killed and started again on the same state directory: it continues.
    drop(gw);
    let gw = start_on(yaml(other_route, "steps: [20, 50, 100]")).await;
    let r = wait_for(&gw, "the stored state", |r| r["state"] != "pending").await;
    assert_eq!(
        (r["state"].clone(), r["weight"].clone(), r["started_at"].clone()),
        (Value::from("paused"), Value::from(50), started),
        "{r:#}"
    );
    assert_eq!(actions(&r)[..3], ["start@0", "step@20", "step@50"]);
    eventually(WAIT, "the stored weight to be served", || async {
        let seen = shares(&gw, 10).await;
        seen.get("canary") == Some(&5)
    })
    .await;

    // A changed spec starts the rollout again.
    gw.reload(&yaml(other_route, "steps: [30, 100]")).await;
    let r = wait_for(&gw, "a new rollout", |r| r["weight"] == 30).await;
    assert_eq!(actions(&r), ["start@0", "step@30"], "{r:#}");
}
