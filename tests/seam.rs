//! The sealed filter seam, from outside: the test-only `ticker` kind (feature
//! `test-kinds`), added by its folder and one registry line, runs its background task on
//! the gateway's runtime, registers its own metric (read here from `/metrics`), leaves a
//! typed request note its response phase reads back (`x-ticker-ticks`), and its task
//! stops when a reload drops the filter. Real binary, real upstream on 127.0.0.1.
//! And the seam's rule as a test: the gateway's request path, observability and
//! upstream code name no filter kind's crate.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{Gateway, TestUpstream};

const TICKS: &str = "sluice_test_ticker_ticks_total";

fn config(with_ticker_on_a: bool) -> String {
    let a_filters = if with_ticker_on_a {
        "[{ticker: {every: 5ms}}]"
    } else {
        "[]"
    };
    format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
- {{id: up, endpoints: [{{address: "{{{{up}}}}"}}]}}
routes:
- id: a
  upstream: up
  match: {{path: {{prefix: /a}}}}
  filters: {a_filters}
- id: b
  upstream: up
  match: {{path: {{prefix: /b}}}}
  filters: [{{ticker: {{every: 5ms}}}}]
"#
    )
}

#[tokio::test]
async fn a_kind_with_a_background_task_and_its_own_metric_plugs_in_and_stops_on_reload() {
    let up = TestUpstream::start("up").await;
    let gw = Gateway::start(&config(true), &[&up]).await;

    // Its metric is registered by the kind and counts the task's ticks, per route.
    let m = gw
        .metrics_when(Duration::from_secs(10), |m| {
            m.get(TICKS, &[("route", "a")]).is_some_and(|v| v >= 3.0)
                && m.get(TICKS, &[("route", "b")]).is_some_and(|v| v >= 3.0)
        })
        .await;
    assert!(
        m.value(TICKS, &[("route", "a")]) >= 3.0,
        "{:?}",
        m.get(TICKS, &[("route", "a")])
    );

    // The request note the request phase leaves is read back by the response phase.
    let resp = gw.get("/a/x").await;
    assert_eq!(resp.status(), 200);
    let seen: u64 = resp.headers()["x-ticker-ticks"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(seen >= 3, "{seen}");

    // A reload that removes route a's ticker drops the filter, which stops its task:
    // route a's count stops moving while route b's (kept, unchanged) goes on.
    gw.reload(&config(false)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = gw.metrics().await;
        let (a0, b0) = (
            before.value(TICKS, &[("route", "a")]),
            before.value(TICKS, &[("route", "b")]),
        );
        let after = gw
            .metrics_when(Duration::from_secs(10), |m| {
                m.value(TICKS, &[("route", "b")]) >= b0 + 20.0
            })
            .await;
        assert!(
            after.value(TICKS, &[("route", "b")]) >= b0 + 20.0,
            "route b's ticker goes on"
        );
        if after.value(TICKS, &[("route", "a")]) == a0 {
            break;
        }
        assert!(Instant::now() < deadline, "route a's ticker never stopped");
    }
    let resp = gw.get("/a/x").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-ticker-ticks").is_none());
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The seam, sealed: what serves requests (`edge/`), what observes them (`observe/`) and
/// the upstream plane (`upstream/`) never use `sluice_filters`; they see filters only
/// through `sluice_core`'s `Chain`, `FilterCtx` and the `Services` map. (The registry
/// and `build_chain` are used by the control plane, the admin API and the CLI.)
#[test]
fn the_request_path_names_no_filter_kind() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for dir in ["edge", "observe", "upstream"] {
        rust_files(&src.join(dir), &mut files);
    }
    assert!(
        files.len() > 20,
        "found only {} files under {}",
        files.len(),
        src.display()
    );
    let offenders: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).expect("read a source file");
            text.lines()
                .enumerate()
                .filter(|(_, l)| {
                    let code = l.trim_start();
                    !code.starts_with("//") && code.contains("sluice_filters")
                })
                .map(|(i, l)| format!("{}:{}: {}", f.display(), i + 1, l.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "the request path uses a filter kind:\n{}",
        offenders.join("\n")
    );
}
