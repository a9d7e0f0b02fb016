//! Request mirroring (the `mirror` filter): a mirror gets its share of copies, each
//! with the original method, path, query, headers and body, while the client sees only
//! the stable upstream's answers; a mirror that never answers does not hold the client
//! up, and the copies its full queue drops are counted; invalid specs are refused with
//! their field paths. Real binary, real upstreams on 127.0.0.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::support::{eventually, http_client, Gateway, Metrics, Mode, TestUpstream};

/// One request as the recording mirror saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: Option<String>,
    host: Option<String>,
    marker: Option<String>,
    test_id: Option<String>,
    body: String,
}

/// A real HTTP/1.1 server on 127.0.0.1 that records every request and answers 200
/// `mirror`.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<Incoming>| {
                        let record = record.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                            let header = |n: &str| {
                                parts
                                    .headers
                                    .get(n)
                                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                            };
                            record.lock().unwrap().push(Seen {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_string(),
                                query: parts.uri.query().map(str::to_string),
                                host: header("host"),
                                marker: header("x-sluice-mirror"),
                                test_id: header("x-test-id"),
                                body: String::from_utf8_lossy(&body).into_owned(),
                            });
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"mirror"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Recorder { addr, seen, task }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn mirrored(m: &Metrics, route: &str, outcome: &str) -> f64 {
    m.value(
        "sluice_mirror_requests_total",
        &[("route", route), ("upstream", "shadow"), ("outcome", outcome)],
    )
}

#[tokio::test]
async fn a_mirror_gets_its_share_of_faithful_copies_and_the_client_only_stables_answers() {
    let stable = TestUpstream::start("stable").await;
    let shadow = Recorder::start().await;
    let gw = Gateway::builder(
        r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams:
- {id: stable, endpoints: [{address: "{{stable}}"}]}
- {id: shadow, endpoints: [{address: "{{shadow}}"}]}
routes:
- id: orders
  upstream: stable
  match: {path: {prefix: /orders}}
  filters: [{mirror: {upstream: shadow, percent: 30}}]
"#,
    )
    .upstream(&stable)
    .var("shadow", &shadow.addr.to_string())
    .start()
    .await;
    let client = http_client();
    let total: usize = 2000;
    for i in 0..total {
        // Every third request has no body; the others a small one.
        let req = if i.is_multiple_of(3) {
            client.get(gw.http_url(&format!("/orders/{i}?q={i}")))
        } else {
            client
                .post(gw.http_url(&format!("/orders/{i}?q={i}")))
                .body(format!("body-{i}"))
        };
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            req.header("x-test-id", i.to_string()).send(),
        )
        .await
        .expect("the client's request completes")
        .expect("the gateway answers");
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(resp.headers()["x-upstream"], "stable", "request {i}");
        let doc: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(doc["path"], format!("/orders/{i}"), "the client's own answer");
    }
    // The share is exact by design (30 of every 100); the acceptance band is ±3 points.
    let (lo, hi) = (total * 27 / 100, total * 33 / 100);
    eventually(Duration::from_secs(10), "the copies reach the mirror", || async {
        shadow.count() >= total * 30 / 100
    })
    .await;
    let m = gw
        .metrics_when(Duration::from_secs(5), |m| {
            mirrored(m, "orders", "sent") as usize == shadow.count()
        })
        .await;
    let seen = shadow.seen.lock().unwrap().clone();
    assert!(
        (lo..=hi).contains(&seen.len()),
        "{} copies of {total} requests, want 30% ± 3 points",
        seen.len()
    );
    assert_eq!(mirrored(&m, "orders", "sent") as usize, seen.len());
    for outcome in [
        "failed",
        "timeout",
        "dropped_queue_full",
        "skipped_body",
        "no_endpoint",
    ] {
        assert_eq!(mirrored(&m, "orders", outcome), 0.0, "{outcome}");
    }
    let host = gw.http_addr().to_string();
    let mut ids = std::collections::BTreeSet::new();
    for s in &seen {
        let i: usize = s
            .test_id
            .as_deref()
            .expect("the client's headers are copied")
            .parse()
            .unwrap();
        assert!(ids.insert(i), "request {i} copied twice");
        assert_eq!(
            s.method,
            if i.is_multiple_of(3) { "GET" } else { "POST" },
            "{s:?}"
        );
        assert_eq!(s.path, format!("/orders/{i}"), "{s:?}");
        assert_eq!(s.query.as_deref(), Some(format!("q={i}").as_str()), "{s:?}");
        assert_eq!(
            s.host.as_deref(),
            Some(host.as_str()),
            "Host as the client sent it: {s:?}"
        );
        assert_eq!(s.marker.as_deref(), Some("1"), "{s:?}");
        let body = if i.is_multiple_of(3) {
            String::new()
        } else {
            format!("body-{i}")
        };
        assert_eq!(s.body, body, "{s:?}");
    }
    // Copies are spread over the run, not bunched at its start.
    assert!(ids.iter().any(|&i| i >= total - 100), "{ids:?}");
    assert_eq!(stable.requests(), total, "stable served every request once");
}

#[tokio::test]
async fn a_hanging_mirror_does_not_hold_the_client_up_and_full_queue_drops_are_counted() {
    let stable = TestUpstream::start("stable").await;
    let shadow = TestUpstream::start("shadow").await;
    shadow.set_mode(Mode::Hang).await;
    // The copies' timeout (3s) is far longer than what a client request may take
    // (1s): a client that waited for its copy would fail.
    let gw = Gateway::builder(
        r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams:
- {id: stable, endpoints: [{address: "{{stable}}"}]}
- {id: shadow, endpoints: [{address: "{{shadow}}"}]}
routes:
- id: all
  upstream: stable
  match: {path: {prefix: /}}
  filters: [{mirror: {upstream: shadow, queue: 16, timeout: 3s}}]
"#,
    )
    .upstreams(&[&stable, &shadow])
    .start()
    .await;
    let client = http_client();
    let total = 300usize;
    let mut tasks = tokio::task::JoinSet::new();
    // 6 clients, 50 requests each.
    for c in 0..6 {
        let (client, url) = (client.clone(), gw.http_url(""));
        tasks.spawn(async move {
            for i in 0..50 {
                let resp = tokio::time::timeout(
                    Duration::from_secs(1),
                    client.post(format!("{url}/c{c}/{i}")).body("payload").send(),
                )
                .await
                .unwrap_or_else(|_| panic!("client {c} request {i} held up by the mirror"))
                .expect("the gateway answers");
                assert_eq!(resp.status(), 200);
                assert_eq!(resp.headers()["x-upstream"], "stable");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("every client request completes in time");
    }
    assert_eq!(stable.requests(), total);
    // 100%: every request was copied, and each copy either reached the mirror (and
    // timed out there) or was dropped on a full queue.
    let m = gw
        .metrics_when(Duration::from_secs(20), |m| {
            (mirrored(m, "all", "timeout") + mirrored(m, "all", "dropped_queue_full")) as usize == total
        })
        .await;
    let (timed_out, dropped) = (
        mirrored(&m, "all", "timeout"),
        mirrored(&m, "all", "dropped_queue_full"),
    );
    assert_eq!((timed_out + dropped) as usize, total, "{}", m.text);
    assert!(dropped > 0.0, "the queue of 16 filled: {dropped}");
    assert_eq!(mirrored(&m, "all", "sent"), 0.0);
    assert_eq!(
        shadow.requests(),
        timed_out as usize,
        "every copy sent reached the mirror"
    );
}

#[tokio::test]
async fn invalid_mirror_specs_are_refused_with_their_field_paths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mirror.yaml");
    std::fs::write(
        &path,
        r#"
listeners: [{name: web, listen: "127.0.0.1:0"}]
upstreams:
- {id: stable, endpoints: [{address: "127.0.0.1:1"}]}
routes:
- id: r
  upstream: stable
  match: {path: {prefix: /}}
  filters:
  - mirror: {upstream: ghost}
  - mirror: {upstream: stable, percent: 150}
  - mirror: {upstream: stable, precent: 5}
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["validate", "--config"])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for expected in [
        "routes[0].filters[0].mirror.upstream: no upstream \"ghost\" in upstreams",
        "routes[0].filters[1].mirror.percent: must be between 0 and 100, got 150",
        "routes[0].filters[2].mirror.precent: unknown field `precent`",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
}
