//! The dashboard in a real headless Chromium (Debian's `chromium` driven through
//! `chromedriver` over WebDriver): it loads from the admin listener, shows the routes,
//! and shows a breaker opening while the test makes its upstream fail, without a reload.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::support::{eventually, free_port, http_client, Gateway, Mode, TestUpstream};

/// A `chromedriver` process on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; scripts/deps.sh test installs it)");
        let driver = Driver {
            child,
            port,
            profile: tempfile::tempdir().unwrap(),
        };
        let status = format!("http://127.0.0.1:{port}/status");
        eventually(
            Duration::from_secs(20),
            "chromedriver answers /status",
            || async {
                let Ok(r) = http_client().get(&status).send().await else {
                    return false;
                };
                r.json::<Value>().await.is_ok_and(|v| v["value"]["ready"] == true)
            },
        )
        .await;
        driver
    }

    /// A headless Chromium session.
    async fn session(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                    format!("--user-data-dir={}", self.profile.path().display()),
                ],
            }),
        );
        // Two rustls crypto providers are linked into the tests; pick one for the client.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        ClientBuilder::rustls()
            .expect("a rustls connector")
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

/// Polls `f` on the page until it returns `Some`, or panics after `timeout`.
async fn until<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(page: &Client, css: &str) -> Option<String> {
    page.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

async fn attr_of(page: &Client, css: &str, attr: &str) -> Option<String> {
    page.find(Locator::Css(css)).await.ok()?.attr(attr).await.ok()?
}

#[tokio::test]
async fn the_dashboard_shows_routes_and_a_breaker_opening_live_in_chromium() {
    let svc = TestUpstream::start("svc").await;
    let gw = Gateway::start(
        r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams:
- id: svc
  endpoints: [{address: "{{svc}}"}]
  retries: {attempts: 0}
  outlier_detection: {enabled: false}
routes:
- id: api
  upstream: svc
  match: {path: {prefix: /api}}
  circuit_breaker: {window: {count: 10}, minimum_calls: 5, failure_rate_threshold: 50, open_duration: 60s}
- id: hello
  match: {path: {prefix: /hello}}
  filters: [{direct_response: {status: 200, body: hi}}]
"#,
        &[&svc],
    )
    .await;

    // The page is small and self-contained: nothing is fetched from elsewhere.
    let html = http_client()
        .get(gw.admin_url("/dashboard"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.len() < 24 * 1024, "the page is {} bytes", html.len());
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "external resources in the page"
    );

    let driver = Driver::start().await;
    let page = driver.session().await;
    page.goto(&gw.admin_url("/dashboard")).await.unwrap();
    // The routes are shown, with their filters and backends.
    let row = until(Duration::from_secs(15), "route api on the page", || {
        text_of(&page, "#routes tbody tr[data-route=\"api\"]")
    })
    .await;
    assert!(row.contains("svc"), "{row}");
    let hello = until(Duration::from_secs(5), "route hello on the page", || {
        text_of(&page, "#routes tbody tr[data-route=\"hello\"]")
    })
    .await;
    assert!(hello.contains("direct_response"), "{hello}");
    let closed = until(Duration::from_secs(10), "the breaker of api on the page", || {
        attr_of(&page, "#breakers tr[data-route=\"api\"] td.state", "data-state")
    })
    .await;
    assert_eq!(closed, "closed");
    // A marker that a reload of the page would wipe.
    page.execute("window.__sluiceTestMarker = 'kept'; return true;", vec![])
        .await
        .unwrap();
    let polls_before = page
        .execute("return window.sluiceDashboard.polls;", vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap();

    // Traffic while healthy, then the upstream fails and the breaker opens.
    let client = http_client();
    for _ in 0..20 {
        assert!(client
            .get(gw.http_url("/api/x"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success());
    }
    until(
        Duration::from_secs(10),
        "a request rate for api on the page",
        || async {
            let t = text_of(&page, "#routes tbody tr[data-route=\"api\"] td.rate").await?;
            (t != "–").then_some(t)
        },
    )
    .await;
    svc.set_mode(Mode::Status(503)).await;
    eventually(
        Duration::from_secs(10),
        "the breaker opens (admin API)",
        || async {
            let _ = client.get(gw.http_url("/api/x")).send().await;
            let v = gw.admin_json("/api/v1/breakers").await;
            v["breakers"][0]["breaker"]["state"] == "open"
        },
    )
    .await;
    until(
        Duration::from_secs(10),
        "the page showing the breaker open",
        || async {
            let s = attr_of(&page, "#breakers tr[data-route=\"api\"] td.state", "data-state").await?;
            (s == "open").then_some(())
        },
    )
    .await;
    let errors = until(Duration::from_secs(10), "an error rate for api", || async {
        let t = text_of(&page, "#routes tbody tr[data-route=\"api\"] td.errors").await?;
        (t != "–" && t != "0.0%").then_some(t)
    })
    .await;
    assert!(errors.ends_with('%'), "{errors}");
    // The same page, updated in place.
    let marker = page
        .execute("return window.__sluiceTestMarker || null;", vec![])
        .await
        .unwrap();
    assert_eq!(marker, json!("kept"), "the page was reloaded");
    let polls_after = page
        .execute("return window.sluiceDashboard.polls;", vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap();
    assert!(polls_after > polls_before, "{polls_before} → {polls_after}");

    let shot = page.screenshot().await.unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-breaker-open.png");
    std::fs::write(&path, &shot).unwrap();
    assert!(shot.starts_with(b"\x89PNG"), "not a PNG");
    println!("dashboard screenshot: {}", path.display());
    page.close().await.unwrap();
}

/// The values a plot's polyline carries (`data-values`: one per point, empty where there
/// was no request).
async fn plot_values(page: &Client, card: &str, plot: &str, line: &str) -> Option<Vec<Option<f64>>> {
    let css = format!("[data-history=\"{card}\"] svg.{plot} polyline.{line}");
    let values = attr_of(page, &css, "data-values").await?;
    Some(values.split(' ').map(|v| v.parse::<f64>().ok()).collect())
}

/// The history test's config; the test reloads it with one more route.
const CONFIG_V1: &str = r#"
admin: {history_interval: 1s}
listeners: [{name: web, listen: "{{http}}"}]
upstreams:
- id: svc
  endpoints: [{address: "{{svc}}"}]
  retries: {attempts: 0}
  outlier_detection: {enabled: false}
routes:
- id: api
  upstream: svc
  match: {path: {prefix: /api}}
  circuit_breaker: {window: {count: 20}, minimum_calls: 10, failure_rate_threshold: 50, open_duration: 60s}
- id: hello
  match: {path: {prefix: /hello}}
  filters: [{direct_response: {status: 200, body: hi}}]
"#;

/// [`CONFIG_V1`] with one more route.
static CONFIG_V2: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{CONFIG_V1}- id: extra\n  match: {{path: {{prefix: /extra}}}}\n  filters: [{{direct_response: {{status: 200, body: x}}}}]\n"
    )
});

#[tokio::test]
async fn the_dashboard_plots_the_last_minutes_with_a_marker_when_a_breaker_opens() {
    let svc = TestUpstream::start("svc").await;
    let gw = Gateway::start(CONFIG_V1, &[&svc]).await;
    let driver = Driver::start().await;
    let page = driver.session().await;
    page.goto(&gw.admin_url("/dashboard")).await.unwrap();
    let client = http_client();
    let send = |path: &'static str| {
        let client = client.clone();
        let url = gw.http_url(path);
        async move {
            client
                .get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };

    // A quiet spell, 2 requests a second for 6 s, then 25 a second for 6 s.
    for _ in 0..12 {
        assert_eq!(send("/api/a").await, 200);
        send("/hello").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A new config version between the two.
    let applied = gw.reload(&CONFIG_V2).await;
    assert_eq!(applied["version"], 2, "{applied}");
    let busy_until = Instant::now() + Duration::from_secs(6);
    let mut busy = 0;
    while Instant::now() < busy_until && busy < 400 {
        assert_eq!(send("/api/b").await, 200);
        busy += 1;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // The rate plot shows the rise: its last points are several times its first ones.
    let rates = until(
        Duration::from_secs(15),
        "the rate plot showing the busy spell",
        || async {
            let v = plot_values(&page, "route:api", "plot-rate", "s-rate").await?;
            // Points before the first request (the gateway idle while Chromium starts) are
            // left out: the quiet spell starts with its first request.
            let known: Vec<f64> = v.iter().flatten().copied().skip_while(|r| *r == 0.0).collect();
            let quiet = known.iter().take(4).copied().fold(f64::MAX, f64::min);
            let peak = known.iter().copied().fold(0.0, f64::max);
            (known.len() >= 10 && quiet > 0.5 && peak > 5.0 * quiet).then_some(v)
        },
    )
    .await;
    println!("api rate per second: {rates:?}");

    // The upstream fails: errors, then the breaker opens.
    svc.set_mode(Mode::Status(503)).await;
    eventually(Duration::from_secs(10), "the breaker opens", || async {
        send("/api/c").await;
        let v = gw.admin_json("/api/v1/breakers").await;
        v["breakers"][0]["breaker"]["state"] == "open"
    })
    .await;
    for _ in 0..20 {
        send("/api/d").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let marker = until(
        Duration::from_secs(15),
        "a breaker-open marker on the route's plots",
        || {
            attr_of(
                &page,
                "[data-history=\"route:api\"] svg.plot-rate line.marker[data-kind=\"breaker_transition\"][data-to=\"open\"]",
                "class",
            )
        },
    )
    .await;
    assert!(marker.contains("m-open"), "{marker}");
    // The same marker on the backend's plots, and the error rate up there.
    assert!(
        attr_of(
            &page,
            "[data-history=\"backend:svc\"] svg.plot-errors line.marker[data-to=\"open\"]",
            "class"
        )
        .await
        .is_some(),
        "the breaker marker on backend svc"
    );
    let errors = until(
        Duration::from_secs(10),
        "the error-rate plot showing the 5xx",
        || async {
            let v = plot_values(&page, "route:api", "plot-errors", "s-err").await?;
            let peak = v.iter().flatten().copied().fold(0.0, f64::max);
            (peak >= 50.0).then_some(v)
        },
    )
    .await;
    println!("api error rate (%): {errors:?}");
    // Latency: p50 and p99 plotted where there were requests.
    let p99 = plot_values(&page, "route:api", "plot-latency", "s-p99")
        .await
        .unwrap();
    assert!(p99.iter().flatten().count() >= 10, "{p99:?}");
    // The config version the reload published is marked too.
    assert!(
        attr_of(
            &page,
            "[data-history=\"route:api\"] line.marker[data-kind=\"config_applied\"]",
            "class"
        )
        .await
        .is_some(),
        "the config version marker"
    );

    let shot = page.screenshot().await.unwrap();
    assert!(shot.starts_with(b"\x89PNG"), "not a PNG");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dashboard.png");
    std::fs::write(&path, &shot).unwrap();
    println!("dashboard screenshot: {}", path.display());
    page.close().await.unwrap();
}
