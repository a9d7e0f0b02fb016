//! The admin listener: health endpoints, exact Prometheus counts, and the read-only
//! `/api/v1/*` views of the serving config.

use std::time::Duration;

use reqwest::StatusCode;

use crate::support::{upstream_entries, Gateway, Mode, TestUpstream};

/// Routes `/a/*` → upstream `up`, `/b/*` → upstream `down`.
async fn gateway(up: &TestUpstream, down: &TestUpstream) -> Gateway {
    let yaml = format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
{}routes:
- {{id: a, upstream: up, match: {{path: {{prefix: /a}}}}}}
- {{id: b, upstream: down, priority: 3, match: {{path: {{prefix: /b}}}}, timeouts: {{read: 2s}}}}
"#,
        upstream_entries(&[up, down])
    );
    Gateway::start(&yaml, &[up, down]).await
}

#[tokio::test]
async fn metrics_are_gzipped_only_for_clients_that_ask() {
    use std::io::Read;
    let ups = TestUpstream::start_many(&["up", "down"]).await;
    let gw = gateway(&ups[0], &ups[1]).await;
    // A client that decodes nothing itself: the headers and bytes are as sent.
    let client = reqwest::Client::new();
    let plain = client.get(gw.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(plain.status(), StatusCode::OK);
    assert!(
        plain.headers().get("content-encoding").is_none(),
        "{:?}",
        plain.headers()
    );
    let plain = plain.text().await.unwrap();
    assert!(plain.contains("sluice_config_version"), "{plain}");

    let gzipped = client
        .get(gw.admin_url("/metrics"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.status(), StatusCode::OK);
    assert_eq!(
        gzipped.headers().get("content-encoding").map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    let bytes = gzipped.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .expect("a gzip body");
    assert!(text.contains("sluice_config_version"), "{text}");
    assert!(
        bytes.len() < text.len(),
        "{} compressed bytes for {} bytes",
        bytes.len(),
        text.len()
    );
}

#[tokio::test]
async fn logs_carry_no_colour_codes_when_not_on_a_terminal() {
    let ups = TestUpstream::start_many(&["up", "down"]).await;
    let gw = gateway(&ups[0], &ups[1]).await;
    // The harness logs at warn level: a rejected reload logs a warning.
    gw.reload("listeners: [").await;
    // Log lines reach stderr through the log's writer thread: wait for them.
    crate::support::eventually(
        std::time::Duration::from_secs(5),
        "the rejection is logged",
        || async { gw.logs().contains("config rejected") },
    )
    .await;
    let logs = gw.logs();
    assert!(logs.contains("WARN"), "{logs}");
    assert!(!logs.contains("\x1b["), "{logs:?}");
}

#[tokio::test]
async fn health_endpoints_answer_ok() {
    let ups = TestUpstream::start_many(&["up", "down"]).await;
    let gw = gateway(&ups[0], &ups[1]).await;
    let health = gw.admin_get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test]
async fn metrics_count_exactly_the_requests_sent() {
    let ups = TestUpstream::start_many(&["up", "down"]).await;
    let (up, down) = (&ups[0], &ups[1]);
    let gw = gateway(up, down).await;
    down.set_mode(Mode::Refuse).await;

    for i in 0..7 {
        assert_eq!(gw.get(&format!("/a/{i}")).await.status(), StatusCode::OK);
    }
    for i in 0..3 {
        assert_eq!(
            gw.get(&format!("/missing/{i}")).await.status(),
            StatusCode::NOT_FOUND
        );
    }
    for i in 0..2 {
        assert_eq!(gw.get(&format!("/b/{i}")).await.status(), StatusCode::BAD_GATEWAY);
    }

    // Requests are counted as they finish, just after the response is written.
    let expected = [
        (
            "sluice_requests_total",
            vec![("route", "a"), ("status_class", "2xx")],
            7.0,
        ),
        (
            "sluice_requests_total",
            vec![("route", "_none"), ("status_class", "4xx")],
            3.0,
        ),
        (
            "sluice_requests_total",
            vec![("route", "b"), ("status_class", "5xx")],
            2.0,
        ),
        ("sluice_request_duration_seconds_count", vec![("route", "a")], 7.0),
        (
            "sluice_request_duration_seconds_count",
            vec![("route", "_none")],
            3.0,
        ),
        (
            "sluice_upstream_errors_total",
            vec![("upstream", "down"), ("kind", "upstream_connect")],
            2.0,
        ),
    ];
    let m = gw
        .metrics_when(Duration::from_secs(5), |m| {
            expected
                .iter()
                .all(|(name, labels, v)| m.get(name, labels) == Some(*v))
        })
        .await;
    for (name, labels, v) in &expected {
        assert_eq!(m.get(name, labels), Some(*v), "{name}{labels:?}\n{}", m.text);
    }
    assert_eq!(
        m.value("sluice_requests_total", &[("route", "a")]),
        7.0,
        "no other status class for route a"
    );
    assert_eq!(
        m.value("sluice_upstream_errors_total", &[("upstream", "up")]),
        0.0
    );
    assert_eq!(
        m.get(
            "sluice_request_duration_seconds_bucket",
            &[("route", "a"), ("le", "+Inf")]
        ),
        Some(7.0),
        "the histogram's +Inf bucket holds every observation"
    );
    assert_eq!(m.get("sluice_config_version", &[]), Some(1.0));
    assert_eq!(
        m.get("sluice_config_reloads_total", &[("outcome", "applied")]),
        Some(1.0)
    );
}

#[tokio::test]
async fn api_views_describe_the_serving_config() {
    let ups = TestUpstream::start_many(&["up", "down"]).await;
    let (up, down) = (&ups[0], &ups[1]);
    let gw = gateway(up, down).await;
    for i in 0..4 {
        assert_eq!(gw.get(&format!("/a/{i}")).await.status(), StatusCode::OK);
    }

    let config = gw.admin_json("/api/v1/config").await;
    assert_eq!(config["version"], 1, "{config}");
    assert_eq!(
        config["hash"].as_str().map(str::len),
        Some(64),
        "SHA-256 hex: {config}"
    );
    assert_eq!(
        config["source"],
        format!("file:{}", gw.config_path().display()),
        "{config}"
    );
    assert!(config["loaded_at"].is_string(), "{config}");
    assert!(config["last_rejected"].is_null(), "{config}");

    let routes = gw.admin_json("/api/v1/routes").await;
    let list = routes["routes"].as_array().expect("routes list");
    let ids: Vec<&str> = list.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, ["a", "b"], "{routes}");
    assert_eq!(list[0]["upstream"], "up");
    assert_eq!(list[1]["upstream"], "down");
    assert_eq!(list[1]["priority"], 3);

    // In-flight counts drop as requests finish, just after their responses are written.
    let mut upstreams = gw.admin_json("/api/v1/upstreams").await;
    for _ in 0..250 {
        if upstreams["upstreams"][1]["endpoints"][0]["inflight"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        upstreams = gw.admin_json("/api/v1/upstreams").await;
    }
    let list = upstreams["upstreams"].as_array().expect("upstreams list");
    let ids: Vec<&str> = list.iter().filter_map(|u| u["id"].as_str()).collect();
    assert_eq!(ids, ["down", "up"], "{upstreams}");
    let endpoint = &list[1]["endpoints"][0];
    assert_eq!(endpoint["address"], up.addr().to_string(), "{upstreams}");
    assert_eq!(endpoint["weight"], 1, "{upstreams}");
    assert_eq!(endpoint["healthy"], true, "{upstreams}");
    assert_eq!(endpoint["inflight"], 0, "{upstreams}");
    assert_eq!(endpoint["requests"], 4, "{upstreams}");
    assert_eq!(list[0]["endpoints"][0]["requests"], 0, "{upstreams}");
}
