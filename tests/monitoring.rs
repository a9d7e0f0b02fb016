//! The monitor center: the Grafana dashboard and the Prometheus alert rules in `deploy/`
//! against what the real binary exposes, `promtool` on both, and a real Prometheus
//! server scraping a running gateway.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{eventually, free_port, http_client, Etcd, Gateway, Mode, TestUpstream};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Metric names (families) in an exposition: `# TYPE` lines and samples.
fn families(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                out.insert(name.to_string());
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

/// The `sluice_*` metric families a PromQL expression reads (histogram series mapped to
/// their family).
fn queried(expr: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"sluice_[a-z0-9_]+").unwrap();
    re.find_iter(expr)
        .map(|m| {
            let n = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_string()
        })
        .collect()
}

/// Every `expr` in a Grafana dashboard.
fn dashboard_exprs(dash: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            out.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

/// A gateway whose config exercises every subsystem the dashboard shows: routes from
/// etcd, a backend split, an active health check, outlier detection, retries, and a
/// breaker that the test trips.
async fn busy_gateway(etcd: &Etcd, ok: &TestUpstream, bad: &TestUpstream) -> Gateway {
    let yaml = r#"
listeners: [{name: web, listen: "{{http}}"}]
server: {access_log: false}
upstreams:
- id: ok
  endpoints: [{address: "{{ok}}"}]
  health_check: {kind: {http: {path: /healthz}}, interval: 200ms, timeout: 150ms}
- id: bad
  endpoints: [{address: "{{bad}}"}]
  retries: {attempts: 1}
  outlier_detection: {consecutive_5xx: 2, base_ejection_time: 60s, max_ejection_percent: 100}
routes:
- id: split
  backends: [{upstream: ok, weight: 1}, {upstream: bad, weight: 1}]
  match: {path: {prefix: /split}}
- id: failing
  upstream: bad
  match: {path: {prefix: /fail}}
  circuit_breaker: {window: {count: 4}, minimum_calls: 2, open_duration: 60s}
"#;
    let mut gw = Gateway::builder(yaml)
        .upstreams(&[ok, bad])
        .arg("--etcd")
        .arg(etcd.endpoint())
        .arg("--etcd-connect-timeout")
        .arg("1s")
        .spawn();
    gw.wait_ready().await;
    let client = http_client();
    for i in 0..20 {
        let path = if i % 2 == 0 { "/split" } else { "/fail" };
        let _ = client.get(gw.http_url(path)).send().await;
    }
    let state = |gw: &Gateway| {
        let url = gw.admin_url("/api/v1/breakers");
        async move {
            let v: Value = http_client().get(url).send().await.ok()?.json().await.ok()?;
            v["breakers"]
                .as_array()?
                .iter()
                .find(|b| b["route"] == "failing")
                .cloned()
        }
    };
    eventually(
        Duration::from_secs(10),
        "the breaker of route failing opens",
        || async {
            let _ = client.get(gw.http_url("/fail")).send().await;
            state(&gw).await.is_some_and(|b| b["breaker"]["state"] == "open")
        },
    )
    .await;
    // A short-circuited request, and a rejected config update.
    let _ = client.get(gw.http_url("/fail")).send().await;
    let rejected = gw
        .reload("listeners: [{name: web, listen: \"{{http}}\"}]\nroutes: [{id: x, upstream: nope}]\n")
        .await;
    assert!(rejected["last_rejected"].is_object(), "{rejected}");
    gw
}

#[tokio::test]
async fn the_grafana_dashboard_and_the_alert_rules_query_only_metrics_sluice_exposes() {
    let etcd = Etcd::start().await;
    let ok = TestUpstream::start("ok").await;
    let bad = TestUpstream::start("bad").await;
    bad.set_mode(Mode::Status(503)).await;
    let gw = busy_gateway(&etcd, &ok, &bad).await;
    let text = gw.admin_get("/metrics").await.text().await.unwrap();
    let exposed = families(&text);

    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/sluice-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    assert!(!dash["panels"].as_array().unwrap().is_empty());
    let mut wanted = BTreeSet::new();
    for e in dashboard_exprs(&dash) {
        wanted.extend(queried(&e));
    }
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yaml")).unwrap();
    let rules: serde_yaml::Value = serde_yaml::from_str(&rules).unwrap();
    let mut alert_metrics = BTreeSet::new();
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            alert_metrics.extend(queried(r["expr"].as_str().unwrap()));
        }
    }
    assert!(wanted.len() >= 10, "{wanted:?}");
    let missing: Vec<_> = wanted
        .iter()
        .chain(&alert_metrics)
        .filter(|m| !exposed.contains(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not in /metrics: {missing:?}\nexposed: {exposed:?}"
    );
    // And every exposed family is documented.
    let doc = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    let undocumented: Vec<_> = exposed
        .iter()
        .filter(|m| m.starts_with("sluice_"))
        .map(|m| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| m.strip_suffix(s))
                .unwrap_or(m)
        })
        .filter(|m| !doc.contains(&format!("`{m}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/metrics.md: {undocumented:?}"
    );
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/deps.sh test installs it)");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn promtool_accepts_the_exposition_and_the_alert_rules() {
    let etcd = Etcd::start().await;
    let ok = TestUpstream::start("ok").await;
    let bad = TestUpstream::start("bad").await;
    bad.set_mode(Mode::Status(503)).await;
    let gw = busy_gateway(&etcd, &ok, &bad).await;
    let text = gw.admin_get("/metrics").await.text().await.unwrap();
    let (ok_metrics, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok_metrics, "promtool check metrics:\n{out}");
    let rules = repo().join("deploy/prometheus/alerts.yaml");
    let (ok_rules, out) = promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert!(ok_rules, "promtool check rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    // A broken rule file is refused, so the check above means something.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "groups: [{name: x, rules: [{alert: A, expr: 'sum(rate(sluice_requests_total[5m]'}]}]\n",
    )
    .unwrap();
    let (ok_broken, _) = promtool(&["check", "rules", broken.to_str().unwrap()], None);
    assert!(!ok_broken, "promtool accepted a broken rule");
}

/// A real Prometheus server, killed on drop.
struct Prometheus {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let rules = repo().join("deploy/prometheus/alerts.yaml");
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: ['{}']\n\
             scrape_configs:\n- job_name: sluice\n  static_configs: [{{targets: ['{target}']}}]\n",
            rules.display()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's prometheus package; scripts/deps.sh test installs it)");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    async fn query(&self, q: &str) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let v: Value = http_client()
            .get(url)
            .query(&[("query", q)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["status"] == "success").then(|| v["data"]["result"].clone())
    }

    async fn rules(&self) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/api/v1/rules", self.port);
        let v: Value = http_client().get(url).send().await.ok()?.json().await.ok()?;
        Some(v["data"]["groups"].clone())
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_sluice_and_loads_the_alert_rules() {
    let up = TestUpstream::start("up").await;
    let gw = Gateway::start(
        r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams: [{id: up, endpoints: [{address: "{{up}}"}]}]
routes: [{id: api, upstream: up, match: {path: {prefix: /}}}]
"#,
        &[&up],
    )
    .await;
    let client = http_client();
    for _ in 0..5 {
        assert!(client
            .get(gw.http_url("/x"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success());
    }
    let prom = Prometheus::start(gw.admin_addr());
    eventually(
        Duration::from_secs(30),
        "Prometheus scrapes sluice (up == 1)",
        || async {
            prom.query("up{job=\"sluice\"}")
                .await
                .and_then(|r| r.get(0).cloned())
                .is_some_and(|s| s["value"][1] == "1")
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "Prometheus holds sluice_requests_total for route api",
        || async {
            prom.query("sum(sluice_requests_total{job=\"sluice\", route=\"api\", status_class=\"2xx\"})")
                .await
                .and_then(|r| r.get(0).cloned())
                .and_then(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()))
                .is_some_and(|v| v >= 5.0)
        },
    )
    .await;
    let groups = prom.rules().await.expect("rules API");
    let names: Vec<String> = groups[0]["rules"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| r["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert!(names.contains(&"SluiceBreakerOpen".to_string()), "{groups}");
    assert!(names.iter().all(|n| n.starts_with("Sluice")), "{names:?}");
    // Health of every rule as evaluated against the scraped data: none errors.
    for r in groups[0]["rules"].as_array().unwrap() {
        assert_ne!(
            r["health"], "err",
            "rule {} fails to evaluate: {}",
            r["name"], r["lastError"]
        );
    }
}
