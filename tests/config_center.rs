//! The config center: routes and upstreams in a real etcd (started per test) and in a
//! watched file, applied while traffic flows.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{eventually, http_client, Etcd, Gateway, GatewayBuilder, TestUpstream};

/// The bootstrap file: a listener and upstream `up`; routes come from etcd.
const BOOTSTRAP: &str = r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams:
- {id: up, endpoints: [{address: "{{up}}"}]}
"#;

fn gateway_on(etcd: &Etcd, yaml: &str, up: &TestUpstream) -> GatewayBuilder {
    Gateway::builder(yaml)
        .upstream(up)
        .arg("--etcd")
        .arg(etcd.endpoint())
        .arg("--etcd-connect-timeout")
        .arg("1s")
}

/// A route answering `body` at `/` without an upstream.
fn answer_route(id: &str, path: &str, body: &str) -> String {
    json!({
        "id": id,
        "match": {"path": {"prefix": path}},
        "filters": [{"direct_response": {"status": 200, "body": body}}],
    })
    .to_string()
}

async fn put(etcd: &Etcd, key: &str, value: String) {
    etcd.client().await.put(key, value, None).await.unwrap();
}

async fn body_of(client: &reqwest::Client, url: &str) -> Option<String> {
    let resp = client.get(url).send().await.ok()?;
    resp.text().await.ok()
}

/// The `etcd` entry of `/api/v1/config`'s sources.
async fn etcd_status(gw: &Gateway) -> Value {
    let config = gw.admin_json("/api/v1/config").await;
    config["sources"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["kind"] == "etcd").cloned())
        .unwrap_or_else(|| panic!("no etcd source in {config}"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::test]
async fn a_route_changed_in_etcd_is_served_by_three_replicas() {
    let etcd = Etcd::start().await;
    let up = TestUpstream::start("up").await;
    put(&etcd, "/sluice/routes/api", answer_route("api", "/", "v0")).await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(gateway_on(&etcd, BOOTSTRAP, &up).start().await);
    }
    let client = http_client();
    let urls: Vec<String> = replicas.iter().map(|g| g.http_url("/")).collect();
    for url in &urls {
        assert_eq!(body_of(&client, url).await.as_deref(), Some("v0"));
    }

    let mut kv = etcd.client().await;
    let mut lags = Vec::new();
    for i in 1..=40 {
        let want = format!("v{i}");
        kv.put("/sluice/routes/api", answer_route("api", "/", &want), None)
            .await
            .unwrap();
        let put_done = Instant::now();
        let mut pending: Vec<&String> = urls.iter().collect();
        let deadline = put_done + Duration::from_secs(10);
        while !pending.is_empty() {
            let mut still = Vec::new();
            for url in pending {
                if body_of(&client, url).await.as_deref() != Some(want.as_str()) {
                    still.push(url);
                }
            }
            pending = still;
            assert!(
                Instant::now() < deadline,
                "change {i} not served everywhere in 10 s"
            );
        }
        lags.push(put_done.elapsed());
    }
    lags.sort();
    eprintln!(
        "etcd put -> served on all 3 replicas, {} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lags.len(),
        percentile(&lags, 0.5).as_secs_f64() * 1000.0,
        percentile(&lags, 0.99).as_secs_f64() * 1000.0,
        lags[lags.len() - 1].as_secs_f64() * 1000.0
    );
    for gw in &replicas {
        let config = gw.admin_json("/api/v1/config").await;
        assert!(config["revision"].as_i64().unwrap() > 1, "{config}");
        assert!(
            config["source"].as_str().unwrap().contains("etcd:/sluice"),
            "{config}"
        );
    }
}

#[tokio::test]
async fn gateways_serve_through_an_etcd_outage_and_resume_the_watch() {
    let mut etcd = Etcd::start().await;
    let up = TestUpstream::start("up").await;
    put(&etcd, "/sluice/routes/api", answer_route("api", "/", "before")).await;
    let gw = gateway_on(&etcd, BOOTSTRAP, &up).start().await;
    let client = http_client();
    let url = gw.http_url("/");
    assert_eq!(body_of(&client, &url).await.as_deref(), Some("before"));
    let relists_before = etcd_status(&gw).await["relists"].as_u64().unwrap();

    etcd.kill();
    eventually(Duration::from_secs(10), "the gateway sees etcd gone", || async {
        gw.metrics()
            .await
            .get("sluice_config_source_connected", &[("source", "etcd")])
            == Some(0.0)
    })
    .await;
    for _ in 0..20 {
        assert_eq!(body_of(&client, &url).await.as_deref(), Some("before"));
    }
    assert_eq!(gw.admin_get("/readyz").await.status(), 200);

    // A change made right after the restart, before the gateway is back, is not missed:
    // the watch resumes from the last revision it saw.
    etcd.restart().await;
    put(&etcd, "/sluice/routes/api", answer_route("api", "/", "after")).await;
    eventually(
        Duration::from_secs(15),
        "the change after the restart is served",
        || async { body_of(&client, &url).await.as_deref() == Some("after") },
    )
    .await;
    let status = etcd_status(&gw).await;
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(
        status["relists"].as_u64().unwrap(),
        relists_before,
        "resumed without listing again: {status}"
    );
}

#[tokio::test]
async fn a_replica_that_missed_compacted_revisions_lists_again() {
    let mut etcd = Etcd::start().await;
    let up = TestUpstream::start("up").await;
    put(&etcd, "/sluice/routes/api", answer_route("api", "/", "r0")).await;
    let gw = gateway_on(&etcd, BOOTSTRAP, &up).start().await;
    let client = http_client();
    let url = gw.http_url("/");
    assert_eq!(body_of(&client, &url).await.as_deref(), Some("r0"));
    let relists_before = etcd_status(&gw).await["relists"].as_u64().unwrap();

    // Out of the gateway's reach (another port), the store moves on and is compacted.
    let port = etcd.client_port;
    etcd.restart_on(Etcd::other_port()).await;
    let mut kv = etcd.client().await;
    let mut rev = 0;
    for i in 1..=5 {
        let body = format!("r{i}");
        rev = kv
            .put("/sluice/routes/api", answer_route("api", "/", &body), None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    put(
        &etcd,
        "/sluice/routes/extra",
        answer_route("extra", "/extra", "new"),
    )
    .await;
    kv.compact(rev + 1, None).await.unwrap();
    etcd.restart_on(port).await;

    eventually(Duration::from_secs(15), "the replica catches up", || async {
        body_of(&client, &url).await.as_deref() == Some("r5")
            && body_of(&client, &gw.http_url("/extra")).await.as_deref() == Some("new")
    })
    .await;
    let status = etcd_status(&gw).await;
    assert_eq!(
        status["relists"].as_u64().unwrap(),
        relists_before + 1,
        "listed again after compaction: {status}"
    );
}

#[tokio::test]
async fn invalid_updates_from_etcd_and_from_the_file_are_rejected_with_field_paths() {
    let etcd = Etcd::start().await;
    let up = TestUpstream::start("up").await;
    put(&etcd, "/sluice/routes/api", answer_route("api", "/", "good")).await;
    let gw = gateway_on(&etcd, BOOTSTRAP, &up).start().await;
    let client = http_client();
    let url = gw.http_url("/");

    put(
        &etcd,
        "/sluice/routes/bad",
        json!({"match": {"path": {"regex": "/x/(["}}, "upstream": "up"}).to_string(),
    )
    .await;
    eventually(Duration::from_secs(10), "the etcd update is rejected", || async {
        let c = gw.admin_json("/api/v1/config").await;
        c["last_rejected"]["errors"].as_array().is_some_and(|e| {
            e.iter().any(|e| {
                e.as_str()
                    .unwrap_or_default()
                    .starts_with("/sluice/routes/bad.match.path.regex: invalid regex")
            })
        })
    })
    .await;
    assert_eq!(body_of(&client, &url).await.as_deref(), Some("good"));
    assert!(gw.admin_json("/api/v1/routes").await["routes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["id"] != "bad"));

    // A broken file is rejected the same way, seen by the watcher without a signal.
    gw.write_config(&format!(
        "{BOOTSTRAP}routes:\n- {{id: local, upstream: nowhere, match: {{path: {{prefix: /local}}}}}}\n"
    ));
    eventually(Duration::from_secs(10), "the file update is rejected", || async {
        let c = gw.admin_json("/api/v1/config").await;
        c["last_rejected"]["errors"].as_array().is_some_and(|e| {
            e.iter().any(|e| {
                let e = e.as_str().unwrap_or_default();
                e.contains("sluice.yaml: routes[0].upstream") && e.contains("nowhere")
            })
        })
    })
    .await;
    assert_eq!(body_of(&client, &url).await.as_deref(), Some("good"));
    let m = gw.metrics().await;
    assert!(m.value("sluice_config_reloads_total", &[("outcome", "rejected")]) >= 2.0);
}

#[tokio::test]
async fn not_ready_until_etcd_answers_then_serving_from_the_cache_when_it_cannot() {
    let etcd = Etcd::start().await;
    let up = TestUpstream::start("up").await;
    put(&etcd, "/sluice/routes/api", answer_route("api", "/", "cached")).await;
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("etcd-cache.json");
    {
        let gw = gateway_on(&etcd, BOOTSTRAP, &up)
            .arg("--etcd-cache")
            .arg(cache.display().to_string())
            .start()
            .await;
        assert_eq!(
            body_of(&http_client(), &gw.http_url("/")).await.as_deref(),
            Some("cached")
        );
        eventually(Duration::from_secs(5), "the cache is written", || async {
            cache.exists()
        })
        .await;
    }
    drop(etcd);

    // No etcd at this address: without a cache the gateway is not ready...
    let dead = Etcd::other_port();
    let mut cold = Gateway::builder(BOOTSTRAP)
        .upstream(&up)
        .arg("--etcd")
        .arg(format!("http://127.0.0.1:{dead}"))
        .arg("--etcd-connect-timeout")
        .arg("300ms")
        .spawn();
    eventually(Duration::from_secs(10), "the admin API answers", || async {
        crate::support::accepts_connections(cold.admin_addr()).await
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(cold.admin_get("/readyz").await.status(), 503);
    assert_eq!(cold.get("/").await.status(), 503);
    assert!(cold.is_running());

    // ...and with the cache it serves the last config it had.
    let warm = Gateway::builder(BOOTSTRAP)
        .upstream(&up)
        .arg("--etcd")
        .arg(format!("http://127.0.0.1:{dead}"))
        .arg("--etcd-connect-timeout")
        .arg("300ms")
        .arg("--etcd-cache")
        .arg(cache.display().to_string())
        .start()
        .await;
    assert_eq!(
        body_of(&http_client(), &warm.http_url("/")).await.as_deref(),
        Some("cached")
    );
    let config = warm.admin_json("/api/v1/config").await;
    assert!(
        config["source"].as_str().unwrap().ends_with("(cache)"),
        "{config}"
    );
}

#[tokio::test]
async fn no_request_is_dropped_over_100_reloads_from_etcd_and_the_file() {
    let etcd = Etcd::start().await;
    let up = TestUpstream::start("up").await;
    put(
        &etcd,
        "/sluice/routes/etcd-route",
        json!({"id": "etcd-route", "upstream": "up", "match": {"path": {"prefix": "/e"}},
               "headers": {"response": {"set": {"x-gen": "0"}}}})
        .to_string(),
    )
    .await;
    let file = |gen: usize| {
        format!(
            "{BOOTSTRAP}routes:\n- {{id: file-route, upstream: up, match: {{path: {{prefix: /f}}}}, \
             headers: {{response: {{set: {{x-gen: \"{gen}\"}}}}}}}}\n\
             - {{id: ws, upstream: up, match: {{path: {{exact: /ws}}}}}}\n"
        )
    };
    let gw = gateway_on(&etcd, &file(0), &up).start().await;

    // A WebSocket through the gateway, echoing all along.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http_addr()))
        .await
        .expect("WebSocket handshake");
    let stop = Arc::new(AtomicBool::new(false));
    let echoes = Arc::new(AtomicUsize::new(0));
    let ws_task = {
        let (stop, echoes) = (stop.clone(), echoes.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let text = format!("ping {i}");
                ws.send(Message::text(text.clone()))
                    .await
                    .expect("WebSocket send");
                let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
                    .await
                    .expect("an echo within 5 s")
                    .expect("the WebSocket stays open")
                    .expect("a valid frame");
                assert_eq!(echoed, Message::text(text));
                echoes.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            ws.close(None).await.expect("close");
        })
    };

    // Steady load: 6 keep-alive clients over both routes, until the reloads are done
    // (at most 20000 requests each).
    const CLIENTS: usize = 6;
    const PER_CLIENT: usize = 20_000;
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let client = http_client();
    let load: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let client = client.clone();
            let urls = [gw.http_url("/e/x"), gw.http_url("/f/x")];
            let (failures, sent, stop) = (failures.clone(), sent.clone(), stop.clone());
            tokio::spawn(async move {
                for i in 0..PER_CLIENT {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    let url = &urls[(c + i) % 2];
                    let ok = match client.get(url).send().await {
                        Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if !ok {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    let applied_now = || async {
        gw.metrics()
            .await
            .value("sluice_config_reloads_total", &[("outcome", "applied")])
    };
    let applied_before = applied_now().await;
    let mut kv = etcd.client().await;
    for gen in 1..=100 {
        let before = applied_now().await;
        if gen % 2 == 0 {
            gw.write_config(&file(gen));
        } else {
            let route = json!({"id": "etcd-route", "upstream": "up", "match": {"path": {"prefix": "/e"}},
                               "headers": {"response": {"set": {"x-gen": gen.to_string()}}}});
            kv.put("/sluice/routes/etcd-route", route.to_string(), None)
                .await
                .unwrap();
        }
        eventually(Duration::from_secs(10), "the change is applied", || async {
            applied_now().await > before
        })
        .await;
    }
    assert!(
        load.iter().any(|l| !l.is_finished()),
        "the load was still running when the last reload was applied"
    );
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    ws_task
        .await
        .expect("the WebSocket kept echoing through every reload");

    // The last change of each source is what serves.
    eventually(
        Duration::from_secs(10),
        "the last generation is served",
        || async {
            let e = gw.get("/e/x").await;
            let f = gw.get("/f/x").await;
            e.headers().get("x-gen").is_some_and(|v| v == "99")
                && f.headers().get("x-gen").is_some_and(|v| v == "100")
        },
    )
    .await;
    let applied = applied_now().await - applied_before;
    eprintln!(
        "100 changes -> {applied} snapshots applied; {} requests, {} failed; {} WebSocket echoes",
        sent.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
        echoes.load(Ordering::Relaxed)
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request failed or was reset"
    );
    assert_eq!(applied, 100.0, "each change was applied as its own snapshot");
    assert!(echoes.load(Ordering::Relaxed) > 20);
}

/// Runs `sluice <args>` to completion; (exit code, stdout, stderr).
fn sluice(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .expect("run the sluice binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn sluice_apply_get_and_diff_manage_etcd_in_one_transaction() {
    let etcd = Etcd::start().await;
    let up = TestUpstream::start("up").await;
    let gw = gateway_on(&etcd, BOOTSTRAP, &up).start().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = etcd.endpoint();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let good = write(
        "good.yaml",
        &format!(
            "upstreams:\n- {{id: backend, endpoints: [{{address: \"{}\"}}]}}\n\
             routes:\n- {{id: hello, match: {{path: {{prefix: /hello}}}}, filters: [{{direct_response: {{body: hi}}}}]}}\n\
             - {{id: proxied, upstream: backend, match: {{path: {{prefix: /p}}}}}}\n",
            up.addr()
        ),
    );

    let (code, out, err) = sluice(&["diff", "--etcd", &endpoint, "-f", &good]);
    assert_eq!(code, 1, "diff exits 1 when there are changes: {out}{err}");
    assert!(out.contains("create /sluice/routes/hello"), "{out}");

    let (code, out, err) = sluice(&["apply", "--etcd", &endpoint, "-f", &good]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("created /sluice/routes/hello"), "{out}");
    assert!(out.contains("created /sluice/routes/proxied"), "{out}");
    assert!(out.contains("created /sluice/upstreams/backend"), "{out}");
    let rev_line = out
        .lines()
        .find(|l| l.starts_with("applied at revision"))
        .unwrap();
    let rev: i64 = rev_line
        .split_whitespace()
        .nth(3)
        .unwrap()
        .trim_end_matches(';')
        .parse()
        .unwrap();

    // Both keys carry the one revision of the transaction.
    let mut kv = etcd.client().await;
    for key in [
        "/sluice/routes/hello",
        "/sluice/routes/proxied",
        "/sluice/upstreams/backend",
    ] {
        let got = kv.get(key, None).await.unwrap();
        assert_eq!(got.kvs()[0].mod_revision(), rev, "{key}");
    }
    eventually(Duration::from_secs(10), "the applied routes serve", || async {
        body_of(&http_client(), &gw.http_url("/hello")).await.as_deref() == Some("hi")
    })
    .await;
    assert_eq!(gw.get("/p/x").await.status(), 200);

    let (code, out, _) = sluice(&["diff", "--etcd", &endpoint, "-f", &good]);
    assert_eq!((code, out.trim()), (0, "no changes"));
    let (code, out, _) = sluice(&["get", "--etcd", &endpoint]);
    assert_eq!(code, 0);
    assert!(out.contains("id: hello") && out.contains("id: proxied"), "{out}");

    // An invalid file is refused with field paths, and nothing is written.
    let bad = write(
        "bad.yaml",
        "routes:\n- {id: hello, match: {path: {regex: \"(\"}}}\n- {id: other, upstream: missing}\n",
    );
    let (code, out, err) = sluice(&["apply", "--etcd", &endpoint, "-f", &bad]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("routes[0].match.path.regex"), "{err}");
    assert!(err.contains("upstream") && err.contains("missing"), "{err}");
    let after = kv.get("/sluice/routes/hello", None).await.unwrap();
    assert_eq!(after.kvs()[0].mod_revision(), rev, "nothing was written");
    assert!(kv
        .get("/sluice/routes/other", None)
        .await
        .unwrap()
        .kvs()
        .is_empty());

    // A filter's spec is checked by its kind before anything is written.
    let bad_filter = write(
        "bad-filter.yaml",
        "routes:\n- {id: limited, upstream: backend, filters: [{rate_limit: {requests: 5, pre: 1s}}]}\n",
    );
    let (code, out, err) = sluice(&["apply", "--etcd", &endpoint, "-f", &bad_filter]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("routes[0].filters[0].rate_limit.pre: unknown field `pre`"),
        "{err}"
    );
    assert!(kv
        .get("/sluice/routes/limited", None)
        .await
        .unwrap()
        .kvs()
        .is_empty());

    // Pruning with a file that declares nothing would wipe the prefix: refused.
    let empty = write("empty.yaml", "routes: []\n");
    let (code, _, err) = sluice(&["apply", "--etcd", &endpoint, "-f", &empty, "--prune"]);
    assert_eq!(code, 1);
    assert!(err.contains("--allow-empty"), "{err}");
    assert_eq!(kv.get("/sluice/routes/hello", None).await.unwrap().kvs().len(), 1);
}
