//! Active health checks, run on the admin runtime.
//!
//! One loop ticks every 100 ms over the serving snapshot's upstreams. An endpoint whose
//! check is due gets a check task (HTTP/1.1 `GET` on a fresh connection, or a TCP
//! connect) bounded by the check's `timeout`. `unhealthy_threshold` failures in a row
//! mark it unhealthy (the balancer skips it); `healthy_threshold` passes in a row mark it
//! healthy again (and starts a slow-start ramp). Health lives in the endpoint's
//! long-lived state, keyed by (upstream id, `ip:port`), so it survives reloads and
//! endpoint-set swaps; the loop walks each upstream's current set. An upstream without `health_check` has all its
//! endpoints healthy. The same tick refreshes the gauge of ejected endpoints, since an
//! ejection ends with time rather than with an event.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_config::resilience::{HealthCheckConfig, HealthCheckKind, HttpHealthCheck};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::control::gateway::Gateway;
use crate::upstream::EndpointState;

/// How often the loop looks for due checks.
const TICK: Duration = Duration::from_millis(100);
/// The most of a check response that is read.
const MAX_RESPONSE: usize = 64 * 1024;

/// Per-endpoint check bookkeeping.
#[derive(Default)]
struct Probe {
    next_due: Option<Instant>,
    running: bool,
    passes: u32,
    failures: u32,
}

type Probes = Arc<Mutex<HashMap<(String, String), Probe>>>;

/// Runs the health checker until the process ends.
pub async fn run(gateway: Arc<Gateway>) {
    let probes: Probes = Arc::default();
    let mut ejected = HashSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let snap = gateway.snapshot();
        crate::observe::events::watch_ejections(&snap, &mut ejected, now);
        let mut live = HashSet::new();
        for up in snap.upstreams.values() {
            let set = up.endpoints.load();
            up.ejected_gauge
                .set(i64::try_from(set.outlier.ejected_count(now)).unwrap_or(i64::MAX));
            let Some(check) = &up.config.health_check else {
                for ep in &set.endpoints {
                    ep.state.healthy.store(true, Ordering::Relaxed);
                }
                continue;
            };
            for ep in &set.endpoints {
                let key = (up.id.clone(), ep.key.clone());
                live.insert(key.clone());
                let mut map = probes.lock();
                let probe = map.entry(key.clone()).or_default();
                if probe.running || probe.next_due.is_some_and(|due| due > now) {
                    continue;
                }
                probe.running = true;
                probe.next_due = Some(now + check.interval);
                drop(map);
                let task = Check {
                    key,
                    addr: ep.addr,
                    host: ep.address.clone(),
                    config: check.clone(),
                    state: ep.state.clone(),
                    gauge: gateway
                        .metrics
                        .endpoint_healthy
                        .with_label_values(&[up.id.as_str(), ep.key.as_str()]),
                    probes: probes.clone(),
                };
                tokio::spawn(task.run());
            }
        }
        probes.lock().retain(|k, _| live.contains(k));
    }
}

struct Check {
    key: (String, String),
    addr: SocketAddr,
    host: String,
    config: HealthCheckConfig,
    state: Arc<EndpointState>,
    gauge: prometheus::IntGauge,
    probes: Probes,
}

impl Check {
    async fn run(self) {
        let result = match tokio::time::timeout(self.config.timeout, self.check()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.config.timeout)),
        };
        let mut map = self.probes.lock();
        let Some(probe) = map.get_mut(&self.key) else {
            return;
        };
        probe.running = false;
        let healthy = self.state.healthy.load(Ordering::Relaxed);
        match result {
            Ok(()) => {
                probe.passes += 1;
                probe.failures = 0;
                if !healthy && probe.passes >= self.config.healthy_threshold {
                    self.state.healthy.store(true, Ordering::Relaxed);
                    // Back from unhealthy: ramp up again (when the upstream has slow start).
                    self.state.start_ramp(Instant::now());
                    tracing::warn!(upstream = %self.key.0, endpoint = %self.key.1, "health check: endpoint is healthy again");
                    crate::observe::events::emit(crate::observe::events::Event::HealthChanged {
                        upstream: self.key.0.clone(),
                        endpoint: self.key.1.clone(),
                        healthy: true,
                        reason: None,
                    });
                }
            }
            Err(why) => {
                probe.failures += 1;
                probe.passes = 0;
                if healthy && probe.failures >= self.config.unhealthy_threshold {
                    self.state.healthy.store(false, Ordering::Relaxed);
                    tracing::warn!(upstream = %self.key.0, endpoint = %self.key.1, reason = %why, "health check: endpoint is unhealthy");
                    crate::observe::events::emit(crate::observe::events::Event::HealthChanged {
                        upstream: self.key.0.clone(),
                        endpoint: self.key.1.clone(),
                        healthy: false,
                        reason: Some(why),
                    });
                }
            }
        }
        self.gauge
            .set(i64::from(self.state.healthy.load(Ordering::Relaxed)));
    }

    async fn check(&self) -> Result<(), String> {
        let mut stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match &self.config.kind {
            HealthCheckKind::Tcp => Ok(()),
            HealthCheckKind::Http(http) => self.http(&mut stream, http).await,
        }
    }

    async fn http(&self, stream: &mut TcpStream, http: &HttpHealthCheck) -> Result<(), String> {
        let host = http.host.as_deref().unwrap_or(&self.host);
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sluice-health-check\r\nConnection: close\r\n\r\n",
            http.path
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 || buf.len() >= MAX_RESPONSE {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&buf);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| "no HTTP status line".to_string())?;
        if !http.expected_statuses.iter().any(|r| r.contains(status)) {
            return Err(format!("status {status}"));
        }
        if let Some(needle) = &http.body_contains {
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            if !body.contains(needle.as_str()) {
                return Err(format!("body does not contain {needle:?}"));
            }
        }
        Ok(())
    }
}
