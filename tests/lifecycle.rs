//! Process lifecycle: draining on SIGTERM, fast stop on SIGINT, and config reloads on
//! SIGHUP (applied, unchanged, rejected).

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::{
    accepts_connections, eventually, upstream_entries, upstream_of, Gateway, Mode, Signal, TestUpstream,
};

/// Config with routes `/one` → `a` and, when `with_two`, `/two` → `b`.
fn routes_config(a: &TestUpstream, b: &TestUpstream, with_two: bool, extra_route: &str) -> String {
    let two = if with_two {
        "- {id: two, upstream: b, match: {path: {prefix: /two}}}\n"
    } else {
        ""
    };
    format!(
        "listeners: [{{name: web, listen: \"{{{{http}}}}\"}}]\nupstreams:\n{}routes:\n- {{id: one, upstream: a, match: {{path: {{prefix: /one}}}}}}\n{two}{extra_route}",
        upstream_entries(&[a, b])
    )
}

/// A gateway that reloads on SIGHUP only (`--no-watch`): with the file watcher on too,
/// [`Gateway::reload`]'s write would be seen once or twice, depending on timing, and the
/// reload counts asserted below would not be exact.
async fn sighup_only(yaml: &str, ups: &[&TestUpstream]) -> Gateway {
    Gateway::builder(yaml)
        .upstreams(ups)
        .arg("--no-watch")
        .start()
        .await
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_request_finish_then_exits() {
    let up = TestUpstream::start("up").await;
    let yaml = format!(
        "server: {{grace_period: 0s, shutdown_timeout: 5s}}\nlisteners: [{{name: web, listen: \"{{{{http}}}}\"}}]\nupstreams:\n{}routes: [{{id: r, upstream: up}}]\n",
        upstream_entries(&[&up])
    );
    let mut gw = Gateway::start(&yaml, &[&up]).await;
    up.set_mode(Mode::Delay(Duration::from_secs(2))).await;

    let slow = tokio::spawn(gw.request(reqwest::Method::GET, "/slow").send());
    eventually(
        Duration::from_secs(5),
        "the slow request to reach the upstream",
        || async { up.in_flight() == 1 },
    )
    .await;
    let signalled = Instant::now();
    gw.signal(Signal::Term);

    let resp = slow
        .await
        .expect("join")
        .expect("the in-flight request completes");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.text().await.map(|t| t.contains("\"/slow\"")).ok(),
        Some(true),
        "the whole body arrived"
    );

    let status = gw.wait_exit(Duration::from_secs(8)).await;
    assert!(
        status.is_some(),
        "sluice exited on its own after draining; logs:\n{}",
        gw.logs()
    );
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(7),
        "exited within the 5 s shutdown timeout (plus slack): {took:?}"
    );
    assert!(
        !accepts_connections(gw.http_addr()).await,
        "no listener after exit"
    );
    assert!(
        !accepts_connections(gw.admin_addr()).await,
        "no admin listener after exit"
    );
}

#[tokio::test]

async fn sigterm_keeps_accepting_new_connections_during_the_grace_period() {
    let up = TestUpstream::start("up").await;
    let yaml = format!(
        "server: {{grace_period: 2s, shutdown_timeout: 2s}}\nlisteners: [{{name: web, listen: \"{{{{http}}}}\"}}]\nupstreams:\n{}routes: [{{id: r, upstream: up}}]\n",
        upstream_entries(&[&up])
    );
    let mut gw = Gateway::start(&yaml, &[&up]).await;
    gw.signal(Signal::Term);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = gw.request(reqwest::Method::GET, "/during-grace").send().await;
    assert!(
        matches!(&during, Ok(r) if r.status() == StatusCode::OK),
        "a new request 0.5 s into a 2 s grace period is served: {during:?}"
    );
    let status = gw.wait_exit(Duration::from_secs(8)).await;
    assert!(
        status.is_some(),
        "sluice exited after the grace period; logs:\n{}",
        gw.logs()
    );
}

#[tokio::test]
async fn sigterm_on_an_idle_gateway_exits_and_closes_every_listener() {
    let up = TestUpstream::start("up").await;
    let yaml = format!(
        "server: {{grace_period: 0s, shutdown_timeout: 2s}}\nlisteners: [{{name: web, listen: \"{{{{http}}}}\"}}]\nupstreams:\n{}routes: [{{id: r, upstream: up}}]\n",
        upstream_entries(&[&up])
    );
    let mut gw = Gateway::start(&yaml, &[&up]).await;
    assert_eq!(gw.get("/").await.status(), StatusCode::OK);
    gw.signal(Signal::Term);
    let status = gw.wait_exit(Duration::from_secs(5)).await;
    assert!(status.is_some(), "sluice exited on its own; logs:\n{}", gw.logs());
    assert!(
        !accepts_connections(gw.http_addr()).await,
        "no proxy listener after exit"
    );
    assert!(
        !accepts_connections(gw.admin_addr()).await,
        "no admin listener after exit"
    );
}

#[tokio::test]
async fn sigint_stops_at_once_even_with_requests_in_flight() {
    let up = TestUpstream::start("up").await;
    let yaml = format!(
        "server: {{shutdown_timeout: 30s}}\nlisteners: [{{name: web, listen: \"{{{{http}}}}\"}}]\nupstreams:\n{}routes: [{{id: r, upstream: up}}]\n",
        upstream_entries(&[&up])
    );
    let mut gw = Gateway::start(&yaml, &[&up]).await;
    up.set_mode(Mode::Hang).await;
    let _hung = tokio::spawn(gw.request(reqwest::Method::GET, "/hang").send());
    eventually(
        Duration::from_secs(5),
        "the request to reach the upstream",
        || async { up.in_flight() == 1 },
    )
    .await;

    gw.signal(Signal::Int);
    let status = gw.wait_exit(Duration::from_secs(5)).await;
    assert!(
        status.is_some(),
        "SIGINT does not wait for in-flight requests; logs:\n{}",
        gw.logs()
    );
}

#[tokio::test]
async fn sighup_applies_a_changed_config_and_bumps_the_version() {
    let ups = TestUpstream::start_many(&["a", "b"]).await;
    let (a, b) = (&ups[0], &ups[1]);
    let gw = sighup_only(&routes_config(a, b, false, ""), &[a, b]).await;
    assert_eq!(gw.get("/two").await.status(), StatusCode::NOT_FOUND);
    let before = gw.admin_json("/api/v1/config").await;
    assert_eq!(before["version"], 1);

    let after = gw.reload(&routes_config(a, b, true, "")).await;
    assert_eq!(after["version"], 2, "{after}");
    assert_ne!(after["hash"], before["hash"]);
    assert!(after["last_rejected"].is_null(), "{after}");
    let resp = gw.get("/two/x").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(upstream_of(&resp), "b");
    assert_eq!(upstream_of(&gw.get("/one").await), "a");

    let same = gw.reload(&routes_config(a, b, true, "")).await;
    assert_eq!(
        same["version"], 2,
        "the same content is not a new version: {same}"
    );

    let m = gw.metrics().await;
    assert_eq!(m.get("sluice_config_version", &[]), Some(2.0));
    assert_eq!(
        m.get("sluice_config_reloads_total", &[("outcome", "applied")]),
        Some(2.0)
    );
    assert_eq!(
        m.get("sluice_config_reloads_total", &[("outcome", "unchanged")]),
        Some(1.0)
    );
}

#[tokio::test]
async fn invalid_config_on_sighup_is_rejected_and_the_old_routes_keep_serving() {
    let ups = TestUpstream::start_many(&["a", "b"]).await;
    let (a, b) = (&ups[0], &ups[1]);
    let gw = sighup_only(&routes_config(a, b, false, ""), &[a, b]).await;

    let bad_regex = "- {id: bad, upstream: b, match: {path: {regex: \"/x/([\"}}}\n";
    let after = gw.reload(&routes_config(a, b, true, bad_regex)).await;
    assert_eq!(after["version"], 1, "the serving config stays: {after}");
    let rejected = &after["last_rejected"];
    assert_eq!(
        rejected["source"],
        format!("file:{}", gw.config_path().display()),
        "{after}"
    );
    assert!(rejected["at"].is_string(), "{after}");
    let errors: Vec<&str> = rejected["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(
        errors.iter().any(|e| e.starts_with(&format!(
            "{}: routes[2].match.path.regex: invalid regex",
            gw.config_path().display()
        ))),
        "the rejection names the field: {errors:?}"
    );
    assert_eq!(upstream_of(&gw.get("/one").await), "a", "old routes keep serving");
    assert_eq!(
        gw.get("/two").await.status(),
        StatusCode::NOT_FOUND,
        "nothing of the rejected config is served"
    );

    let after = gw.reload("listeners: [unclosed\n").await;
    assert_eq!(after["version"], 1, "{after}");
    assert!(
        after["last_rejected"]["errors"].to_string().contains("YAML"),
        "a syntax error is rejected too: {after}"
    );
    assert_eq!(upstream_of(&gw.get("/one").await), "a");

    let m = gw.metrics().await;
    assert_eq!(
        m.get("sluice_config_reloads_total", &[("outcome", "rejected")]),
        Some(2.0)
    );
    assert_eq!(m.get("sluice_config_version", &[]), Some(1.0));
}

#[tokio::test]
async fn a_reload_naming_a_missing_certificate_file_is_rejected_with_its_field() {
    use crate::support::{tls_client, TestCa};
    let up = TestUpstream::start("up").await;
    let ca = TestCa::new("sluice test CA");
    let cert = ca.issue(&["a.example.test"]);
    let config = |key: &str| {
        format!(
            "listeners:\n- {{name: tls, listen: \"{{{{https}}}}\", tls: {{certificates: [{{cert: \"{{{{cert:a}}}}\", key: \"{key}\"}}]}}}}\nupstreams:\n{}routes:\n- {{id: r, upstream: up}}\n",
            upstream_entries(&[&up])
        )
    };
    let gw = Gateway::builder(&config("{{key:a}}"))
        .upstream(&up)
        .cert("a", &cert)
        .start()
        .await;
    let addr = gw.https_addr();
    let client = tls_client(&ca, &[("a.example.test", addr)]);
    let url = format!("https://a.example.test:{}/x", addr.port());
    assert_eq!(client.get(&url).send().await.unwrap().status(), StatusCode::OK);

    let after = gw.reload(&config("{{dir}}/missing.key")).await;
    assert_eq!(after["version"], 1, "the serving config stays: {after}");
    let errors = after["last_rejected"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{after}");
    let want = format!(
        "{}: listeners[0].tls.certificates[0].key: cannot read {}/missing.key",
        gw.config_path().display(),
        gw.dir().display()
    );
    assert!(errors[0].as_str().unwrap().starts_with(&want), "{after}");
    assert_eq!(client.get(&url).send().await.unwrap().status(), StatusCode::OK);
}
