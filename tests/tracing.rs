//! OpenTelemetry tracing (`tracing:`): spans reach an OTLP/HTTP receiver run by the test
//! that decodes the real wire format with the official `opentelemetry-proto` package
//! (python, `tests/support/otlp_receiver.py`); the server span and its children (one per
//! upstream try, one per forward-auth call) are linked; `traceparent` reaches the
//! upstream with the gateway's span as parent; an incoming sampled `traceparent` keeps
//! its trace; a bad one starts a new trace; ratio 0 exports nothing of its own; the
//! access log carries the trace id.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::kafka::python;
use crate::support::{eventually, upstream_entries, Gateway, Mode, TestUpstream};

/// The python OTLP receiver; killed on drop.
struct Receiver {
    _child: tokio::process::Child,
    out: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Receiver {
    async fn start() -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("spans.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/support/otlp_receiver.py");
        let mut child = tokio::process::Command::new(python())
            .arg(script)
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start otlp_receiver.py");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(20),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("the receiver prints its port")
        .unwrap();
        let port = line.trim().parse().expect("a port");
        Receiver {
            _child: child,
            out,
            port,
            _dir: dir,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let spans: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        for s in &spans {
            assert!(
                s.get("error").is_none(),
                "the receiver could not decode a body: {s}"
            );
        }
        spans
    }

    /// The spans of `trace`.
    fn trace(&self, trace: &str) -> Vec<Value> {
        self.spans()
            .into_iter()
            .filter(|s| s["trace_id"] == trace)
            .collect()
    }

    /// Waits until trace `trace` has at least `n` spans, and returns them.
    async fn wait_for(&self, trace: &str, n: usize) -> Vec<Value> {
        eventually(
            Duration::from_secs(10),
            &format!("{n} spans of trace {trace}"),
            || async { self.trace(trace).len() >= n },
        )
        .await;
        self.trace(trace)
    }
}

const SERVER: u64 = 2;
const CLIENT: u64 = 3;

/// `(trace id, parent span id, flags)` of the `traceparent` the upstream received, from
/// the echo body.
async fn upstream_traceparent(resp: reqwest::Response) -> (String, String, String) {
    let body: Value = resp.json().await.unwrap();
    let tp = body["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent upstream: {body}"))
        .to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn one<'a>(spans: &'a [Value], what: &str, f: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = spans.iter().filter(|s| f(s)).collect();
    assert_eq!(found.len(), 1, "one {what} in {spans:#?}");
    found[0]
}

fn tracing_section(rx: &Receiver, ratio: &str) -> String {
    format!(
        "tracing: {{enabled: true, endpoint: \"{}\", service_name: sluice-it, sampling: {{ratio: {ratio}}}, export: {{flush_interval: 50ms, batch_size: 64}}, headers: {{x-otlp-key: k1}}}}\n",
        rx.endpoint()
    )
}

#[tokio::test]
async fn spans_are_linked_exported_and_traceparent_reaches_the_upstream() {
    let rx = Receiver::start().await;
    let api = TestUpstream::start("api").await;
    let auth = TestUpstream::start("auth").await;
    let yaml = format!(
        r#"
server: {{access_log: true}}
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
{}routes:
- {{id: users, upstream: api, match: {{path: {{prefix: /users}}}}, circuit_breaker: {{}}}}
- {{id: fail, upstream: api, match: {{path: {{prefix: /status}}}}}}
- id: guarded
  upstream: api
  match: {{path: {{prefix: /guarded}}}}
  filters:
    - forward_auth: {{url: "http://{{{{auth}}}}/verify"}}
{}"#,
        upstream_entries(&[&api, &auth]),
        tracing_section(&rx, "1.0")
    );
    let gw = Gateway::start(&yaml, &[&api, &auth]).await;

    // A new trace: the server span, one try span under it, the try's id upstream.
    let resp = gw.get("/users/7").await;
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let (trace, parent, flags) = upstream_traceparent(resp).await;
    assert_eq!(flags, "01");
    let spans = rx.wait_for(&trace, 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = one(&spans, "server span", |s| s["kind"] == SERVER);
    let try_ = one(&spans, "try span", |s| s["kind"] == CLIENT);
    assert_eq!(server["parent_span_id"], "", "a new trace's root");
    assert_eq!(try_["parent_span_id"], server["span_id"]);
    assert_eq!(try_["span_id"], parent, "the upstream's parent is the try's span");
    assert_eq!(server["service"], "sluice-it");
    assert_eq!(server["name"], "GET users");
    assert_eq!(server["status_code"], 0, "not an error");
    assert_eq!(server["headers"]["x-otlp-key"], "k1");
    assert_eq!(server["content_type"], "application/x-protobuf");
    assert_eq!(server["path"], "/v1/traces");
    let a = &server["attributes"];
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["url.path"], "/users/7");
    assert_eq!(a["http.route"], "users");
    assert_eq!(a["sluice.route"], "users");
    assert_eq!(a["sluice.backend"], "api");
    assert_eq!(a["sluice.endpoint"], api.addr().to_string());
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["sluice.retries"], 0);
    assert_eq!(a["sluice.breaker"], "closed");
    assert_eq!(a["sluice.request_id"], request_id.as_str());
    let t = &try_["attributes"];
    assert_eq!(t["server.address"], "127.0.0.1");
    assert_eq!(t["server.port"], api.addr().port());
    assert_eq!(t["http.response.status_code"], 200);
    let (start, end) = (server["start"].as_u64().unwrap(), server["end"].as_u64().unwrap());
    assert!(start > 0 && start <= try_["start"].as_u64().unwrap() && try_["end"].as_u64().unwrap() <= end);

    // The access log names the same trace and the server span.
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(gw.dir().join("stdout.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    eventually(Duration::from_secs(5), "the access-log line", || async {
        lines().iter().any(|l| l["request_id"] == request_id.as_str())
    })
    .await;
    let line = lines()
        .into_iter()
        .find(|l| l["request_id"] == request_id.as_str())
        .unwrap();
    assert_eq!(line["trace_id"], trace.as_str());
    assert_eq!(line["span_id"], server["span_id"]);

    // An incoming sampled traceparent: its trace goes on, our server span under the
    // caller's, its tracestate kept.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = gw
        .request(reqwest::Method::GET, "/users/8")
        .header("traceparent", format!("00-{caller_trace}-00f067aa0ba902b7-01"))
        .header("tracestate", "rojo=00f067aa0ba902b7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["headers"]["tracestate"], "rojo=00f067aa0ba902b7");
    let tp = body["headers"]["traceparent"].as_str().unwrap().to_string();
    assert!(tp.starts_with(&format!("00-{caller_trace}-")), "{tp}");
    assert!(
        !tp.contains("00f067aa0ba902b7"),
        "our span, not the caller's: {tp}"
    );
    let spans = rx.wait_for(caller_trace, 2).await;
    let server = one(&spans, "server span", |s| s["kind"] == SERVER);
    assert_eq!(server["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(server["trace_state"], "rojo=00f067aa0ba902b7");
    let try_ = one(&spans, "try span", |s| s["kind"] == CLIENT);
    assert_eq!(try_["parent_span_id"], server["span_id"]);
    assert_eq!(tp.split('-').nth(2).unwrap(), try_["span_id"].as_str().unwrap());

    // A bad traceparent is ignored (a new trace), not refused; its tracestate dropped.
    let resp = gw
        .request(reqwest::Method::GET, "/users/9")
        .header(
            "traceparent",
            format!("00-{}-00f067aa0ba902b7-01", caller_trace.to_uppercase()),
        )
        .header("tracestate", "rojo=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(body["headers"].get("tracestate").is_none(), "{body}");
    let tp = body["headers"]["traceparent"].as_str().unwrap();
    let new_trace = tp.split('-').nth(1).unwrap().to_string();
    assert_ne!(new_trace, caller_trace);
    let spans = rx.wait_for(&new_trace, 2).await;
    assert_eq!(
        one(&spans, "server span", |s| s["kind"] == SERVER)["parent_span_id"],
        ""
    );

    // An upstream 5xx: the server span's status is Error.
    let resp = gw.get("/status/503").await;
    assert_eq!(resp.status(), 503);
    let (trace, _, _) = upstream_traceparent(resp).await;
    let spans = rx.wait_for(&trace, 2).await;
    let server = one(&spans, "server span", |s| s["kind"] == SERVER);
    assert_eq!(server["status_code"], 2, "Error");
    assert_eq!(server["attributes"]["http.response.status_code"], 503);

    // Forward auth: a child span for the call, with the server span as parent.
    let resp = gw.get("/guarded/1").await;
    assert_eq!(resp.status(), 200);
    let (trace, parent, _) = upstream_traceparent(resp).await;
    let spans = rx.wait_for(&trace, 3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server = one(&spans, "server span", |s| s["kind"] == SERVER);
    let auth_span = one(&spans, "auth span", |s| s["name"] == "forward_auth");
    assert_eq!(auth_span["kind"], CLIENT);
    assert_eq!(auth_span["parent_span_id"], server["span_id"]);
    assert_eq!(auth_span["attributes"]["sluice.auth.outcome"], "allowed");
    let try_ = one(&spans, "try span", |s| {
        s["kind"] == CLIENT && s["name"] != "forward_auth"
    });
    assert_eq!(try_["span_id"], parent);
    assert!(auth_span["end"].as_u64().unwrap() <= try_["start"].as_u64().unwrap());

    let m = gw
        .metrics_when(Duration::from_secs(5), |m| {
            m.get("sluice_trace_spans_exported_total", &[])
                .is_some_and(|v| v >= 11.0)
        })
        .await;
    assert_eq!(
        m.value("sluice_trace_spans_exported_total", &[]),
        rx.spans().len() as f64
    );
    assert_eq!(
        m.value("sluice_trace_spans_dropped_total", &[("reason", "queue_full")]),
        0.0
    );
}

#[tokio::test]
async fn a_retried_request_has_a_span_per_try() {
    let rx = Receiver::start().await;
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let yaml = format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
- id: pool
  endpoints: [{{address: "{{{{a}}}}"}}, {{address: "{{{{b}}}}"}}]
  retries: {{attempts: 1, on: [gateway_error]}}
  outlier_detection: {{enabled: false}}
routes:
- {{id: api, upstream: pool, match: {{path: {{prefix: /}}}}}}
{}"#,
        tracing_section(&rx, "1.0")
    );
    let gw = Gateway::start(&yaml, &[&a, &b]).await;
    a.set_mode(Mode::Status(503)).await;

    // Round robin: within a few requests one goes to `a` first and is retried on `b`.
    let mut retried = None;
    for _ in 0..6 {
        let resp = gw.get("/r").await;
        assert_eq!(resp.status(), 200);
        let (trace, parent, _) = upstream_traceparent(resp).await;
        let spans = rx.wait_for(&trace, 2).await;
        if spans.len() == 3 {
            retried = Some((spans, parent));
            break;
        }
    }
    let (spans, parent) = retried.expect("a retried request within 6");
    let server = one(&spans, "server span", |s| s["kind"] == SERVER);
    assert_eq!(server["attributes"]["sluice.retries"], 1);
    assert_eq!(server["attributes"]["sluice.endpoint"], b.addr().to_string());
    let mut tries: Vec<&Value> = spans.iter().filter(|s| s["kind"] == CLIENT).collect();
    tries.sort_by_key(|s| s["attributes"]["sluice.try"].as_u64());
    assert_eq!(tries.len(), 2);
    for t in &tries {
        assert_eq!(t["parent_span_id"], server["span_id"]);
    }
    assert_ne!(tries[0]["span_id"], tries[1]["span_id"]);
    assert_eq!(tries[0]["attributes"]["server.port"], a.addr().port());
    assert_eq!(tries[0]["attributes"]["http.response.status_code"], 503);
    assert_eq!(tries[0]["status_code"], 2, "the failed try is an error");
    assert_eq!(tries[1]["attributes"]["server.port"], b.addr().port());
    assert_eq!(tries[1]["attributes"]["http.response.status_code"], 200);
    assert_eq!(tries[1]["span_id"], parent, "b's parent is the second try");
    assert!(tries[0]["end"].as_u64() <= tries[1]["start"].as_u64());
}

#[tokio::test]
async fn ratio_zero_exports_only_what_a_sampled_caller_asks_for() {
    let rx = Receiver::start().await;
    let api = TestUpstream::start("api").await;
    let yaml = format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
{}routes:
- {{id: users, upstream: api, match: {{path: {{prefix: /}}}}}}
{}"#,
        upstream_entries(&[&api]),
        tracing_section(&rx, "0.0")
    );
    let gw = Gateway::start(&yaml, &[&api]).await;
    let mut unsampled = Vec::new();
    for _ in 0..5 {
        let resp = gw.get("/a").await;
        assert_eq!(resp.status(), 200);
        let (trace, _, flags) = upstream_traceparent(resp).await;
        // Propagated, marked not sampled.
        assert_eq!(flags, "00");
        unsampled.push(trace);
    }
    // A caller that sampled its trace: parent-based, it is recorded.
    let caller = "0af7651916cd43dd8448eb211c80319c";
    let resp = gw
        .request(reqwest::Method::GET, "/b")
        .header("traceparent", format!("00-{caller}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    let (trace, _, flags) = upstream_traceparent(resp).await;
    assert_eq!((trace.as_str(), flags.as_str()), (caller, "01"));
    rx.wait_for(caller, 2).await;
    // The exporter sends in order: had the earlier requests been sampled, their spans
    // would have arrived first.
    let all = rx.spans();
    assert!(all.iter().all(|s| s["trace_id"] == caller), "{all:#?}");
    for t in &unsampled {
        assert!(rx.trace(t).is_empty());
    }
}
