//! A bounded chaos run: steady load from several keep-alive clients over three
//! endpoints, with one endpoint killed partway through. Run once with retries on and
//! once with them off; the figures are printed for the record
//! (`cargo test -p sluice-gateway --test integration chaos -- --nocapture`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{http_client, Gateway, Mode, TestUpstream};

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 500;
/// The endpoint is killed once this many requests have been answered.
const KILL_AFTER: usize = CLIENTS * PER_CLIENT / 3;

/// What one run saw.
struct Run {
    requests: usize,
    errors: usize,
    /// From the kill to the last try the gateway sent to the dead endpoint.
    last_try_after_kill: Duration,
    tries_after_kill: u64,
}

/// Requests the gateway has sent to endpoint `addr` (from `/api/v1/upstreams`).
async fn tries_to(gw: &Gateway, addr: &str) -> u64 {
    let view = gw.admin_json("/api/v1/upstreams").await;
    view["upstreams"][0]["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["address"] == addr))
        .and_then(|e| e["requests"].as_u64())
        .unwrap_or_default()
}

async fn run(retries: &str) -> Run {
    let ups = TestUpstream::start_many(&["a", "b", "c"]).await;
    let refs: Vec<&TestUpstream> = ups.iter().collect();
    let yaml = format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
- id: pool
  endpoints: [{{address: "{{{{a}}}}"}}, {{address: "{{{{b}}}}"}}, {{address: "{{{{c}}}}"}}]
  retries: {retries}
routes:
- {{id: api, upstream: pool, match: {{path: {{prefix: /}}}}}}
"#
    );
    let gw = Gateway::start(&yaml, &refs).await;
    let dead = ups[2].addr().to_string();
    let done = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let client = http_client();
    let url = gw.http_url("/load");
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, url, done, errors) = (client.clone(), url.clone(), done.clone(), errors.clone());
            tokio::spawn(async move {
                for _ in 0..PER_CLIENT {
                    let outcome = match client.get(&url).send().await {
                        Ok(r) if r.status().is_success() => {
                            r.bytes().await.map(|_| ()).map_err(|e| format!("body: {e:?}"))
                        }
                        Ok(r) => Err(format!("status {}", r.status())),
                        Err(e) => Err(format!("{e:?}")),
                    };
                    if let Err(e) = outcome {
                        eprintln!("  client error: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::Relaxed) < KILL_AFTER && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    ups[2].set_mode(Mode::Refuse).await;
    let killed = Instant::now();
    let at_kill = tries_to(&gw, &dead).await;
    let (mut last, mut last_change) = (at_kill, killed);
    while done.load(Ordering::Relaxed) < CLIENTS * PER_CLIENT && Instant::now() < deadline {
        let now = tries_to(&gw, &dead).await;
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for w in workers {
        w.await.unwrap();
    }
    if errors.load(Ordering::Relaxed) > 0 {
        for line in gw
            .logs()
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .take(20)
        {
            eprintln!("  {line}");
        }
    }
    Run {
        requests: done.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        last_try_after_kill: last_change - killed,
        tries_after_kill: last - at_kill,
    }
}

#[tokio::test]
async fn killing_one_of_three_endpoints_under_load() {
    let on = run("{attempts: 2}").await;
    let off = run("{attempts: 0}").await;
    for (name, r) in [("retries on", &on), ("retries off", &off)] {
        eprintln!(
            "chaos {name}: {} requests, {} client errors ({:.3}%), {} tries to the dead endpoint \
             after the kill, the last {} ms after it",
            r.requests,
            r.errors,
            r.errors as f64 * 100.0 / r.requests as f64,
            r.tries_after_kill,
            r.last_try_after_kill.as_millis()
        );
    }
    assert_eq!(on.requests, CLIENTS * PER_CLIENT);
    assert!(
        (on.errors as f64) < on.requests as f64 * 0.001,
        "retries on: {} errors in {} requests",
        on.errors,
        on.requests
    );
    assert!(
        off.errors > 0 && off.errors as u64 <= off.tries_after_kill + CLIENTS as u64,
        "retries off: each failed request is a try on the dead endpoint ({} errors, {} tries)",
        off.errors,
        off.tries_after_kill
    );
}
