//! Limits on what upstreams send: a response body over `max_response_body` is refused
//! with a 502 when its length is known up front and cut when it grows past the limit;
//! a body that stalls longer than the read timeout is cut. Each is counted with its own
//! error code.

use std::time::Duration;

use bytes::Bytes;

use crate::support::{Gateway, Origin, Reply};

async fn origin() -> Origin {
    Origin::start(|seen| match seen.path.as_str() {
        "/big" => Reply::ok(vec![b'x'; 10_000], &[("content-type", "text/plain")]),
        "/small" => Reply::ok(vec![b'x'; 500], &[("content-type", "text/plain")]),
        "/stream" => Reply {
            status: 200,
            chunks: (0..10)
                .map(|_| (Duration::from_millis(5), Bytes::from(vec![b'y'; 1000])))
                .collect(),
            ..Reply::default()
        },
        "/stall" => Reply {
            status: 200,
            chunks: vec![
                (Duration::ZERO, Bytes::from_static(b"first part;")),
                (Duration::from_secs(5), Bytes::from_static(b"never in time")),
            ],
            ..Reply::default()
        },
        _ => Reply::ok("ok", &[]),
    })
    .await
}

async fn gateway(origin: &Origin) -> Gateway {
    Gateway::builder(&format!(
        r#"
server: {{limits: {{max_response_body: 2KiB}}}}
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams: [{{id: o, endpoints: [{{address: "{}"}}], timeouts: {{read: 400ms}}}}]
routes:
  - {{id: limited, upstream: o}}
  - {{id: roomy, upstream: o, match: {{path: {{prefix: /roomy}}}}, limits: {{max_response_body: 1MiB}}}}
"#,
        origin.addr()
    ))
    .start()
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused_or_cut_with_its_own_error_code() {
    let o = origin().await;
    let gw = gateway(&o).await;
    // Known up front: a 502 naming the cause, and the upstream is not tried again.
    let resp = gw.get("/big").await;
    assert_eq!(resp.status(), 502);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "upstream_response_too_large", "{v}");
    assert_eq!(o.hits("/big"), 1);
    // Under the limit, or on a route with a larger one: whole.
    assert_eq!(gw.get("/small").await.bytes().await.unwrap().len(), 500);
    // Streamed past the limit: the answer has begun, so it is cut short.
    let resp = gw.get("/stream").await;
    assert_eq!(resp.status(), 200);
    let got = resp.bytes().await;
    assert!(
        got.as_ref().map_or(true, |b| b.len() < 10_000),
        "the body was not cut: {:?}",
        got.map(|b| b.len())
    );
    let m = gw
        .metrics_when(Duration::from_secs(5), |m| {
            m.value(
                "sluice_upstream_errors_total",
                &[("upstream", "o"), ("kind", "upstream_response_too_large")],
            ) >= 2.0
        })
        .await;
    assert_eq!(
        m.value(
            "sluice_upstream_errors_total",
            &[("upstream", "o"), ("kind", "upstream_response_too_large")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_may_allow_more_and_a_stalled_body_is_cut_after_the_read_timeout() {
    let o = origin().await;
    let gw = gateway(&o).await;
    let roomy = gw.get("/roomy/big").await;
    assert_eq!(roomy.status(), 200);
    let resp = gw.get("/stall").await;
    assert_eq!(resp.status(), 200);
    let started = std::time::Instant::now();
    let got = resp.bytes().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the stall was not cut"
    );
    assert!(got.is_err() || got.unwrap().len() < "first part;never in time".len());
    let m = gw
        .metrics_when(Duration::from_secs(5), |m| {
            m.value(
                "sluice_upstream_errors_total",
                &[("upstream", "o"), ("kind", "upstream_body_timeout")],
            ) >= 1.0
        })
        .await;
    assert_eq!(
        m.value(
            "sluice_upstream_errors_total",
            &[("upstream", "o"), ("kind", "upstream_body_timeout")]
        ),
        1.0
    );
}
