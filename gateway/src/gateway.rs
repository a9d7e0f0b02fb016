//! The gateway's shared core: the published snapshot, long-lived state, metrics and the
//! record of config updates. The proxy, the admin API and the config sources all hold an
//! `Arc<Gateway>`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;
use sluice_config::{Config, ConfigErrors};

use crate::access_log::{AccessLog, AccessLogConfig};
use crate::metrics::Metrics;
use crate::snapshot::{Provenance, Snapshot};
use crate::state::SharedState;

/// A rejected config update, kept for `/api/v1/config`.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    /// When it was rejected.
    pub at: SystemTime,
    /// Where it came from.
    pub source: String,
    /// Every error, as `path: message`.
    pub errors: Vec<String>,
}

/// What happened to an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyOutcome {
    /// A new snapshot is serving.
    Applied,
    /// Same content as the serving snapshot; nothing changed.
    Unchanged,
}

/// Logs the settings of `next` that a reload does not apply: listeners and the admin
/// listener are bound at start.
fn warn_restart_only(current: &Config, next: &Config) {
    if current.listeners != next.listeners {
        tracing::warn!(
            "listeners changed; they are bound at start, so the change takes effect after a restart or graceful upgrade"
        );
    }
    if current.admin != next.admin {
        tracing::warn!("admin.listen changed; it takes effect after a restart or graceful upgrade");
    }
}

/// The gateway's shared core.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    /// State that survives reloads.
    pub state: SharedState,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The access log's queue to its writer thread (written to while
    /// `server.access_log` is on).
    pub access_log: AccessLog,
    ready: AtomicBool,
    next_version: AtomicU64,
    last_rejection: Mutex<Option<Rejection>>,
    apply_lock: Mutex<()>,
    source_status: Mutex<serde_json::Value>,
    /// Where the serving content last came from: the provenance of the last applied or
    /// unchanged update (an update with the same content, e.g. from a newer etcd
    /// revision, does not publish a snapshot but does say where the content now stands).
    provenance: Mutex<Provenance>,
}

impl Gateway {
    /// A gateway serving `config`. With `ready` false it answers 503 (and `/readyz` says
    /// not ready) until the first [`Gateway::apply`] publishes a config: used when the
    /// routes come from a config center that has not answered yet.
    pub fn new(config: Config, provenance: Provenance, ready: bool) -> Result<Arc<Gateway>, ConfigErrors> {
        let metrics = Arc::new(Metrics::new());
        let state = SharedState::new(metrics.clone());
        let snapshot = Snapshot::compile(config, 1, provenance.clone(), &state, None)?;
        metrics.config_version.set(1);
        metrics.reloads.with_label_values(&["applied"]).inc();
        Ok(Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            state,
            access_log: AccessLog::start(&AccessLogConfig::default(), metrics.access_log_dropped.clone()),
            metrics,
            ready: AtomicBool::new(ready),
            next_version: AtomicU64::new(2),
            last_rejection: Mutex::new(None),
            apply_lock: Mutex::new(()),
            source_status: Mutex::new(serde_json::Value::Null),
            provenance: Mutex::new(provenance),
        }))
    }

    /// The serving snapshot. Load it once per request and keep the `Arc`.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Whether a config has been loaded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Where the serving content last came from (source and revision), updated by every
    /// applied or unchanged update.
    pub fn provenance(&self) -> Provenance {
        self.provenance.lock().clone()
    }

    /// What the config sources report (for `/api/v1/config`).
    pub fn source_status(&self) -> serde_json::Value {
        self.source_status.lock().clone()
    }

    /// Replaces what the config sources report.
    pub fn set_source_status(&self, status: serde_json::Value) {
        *self.source_status.lock() = status;
    }

    /// The last rejected update, if any.
    pub fn last_rejection(&self) -> Option<Rejection> {
        self.last_rejection.lock().clone()
    }

    /// Validates and compiles `config`, then publishes it with one store. On error the
    /// serving snapshot stays, and the rejection is recorded.
    pub fn apply(
        &self,
        config: Result<Config, ConfigErrors>,
        provenance: Provenance,
    ) -> Result<ApplyOutcome, ConfigErrors> {
        let started = Instant::now();
        let _one_at_a_time = self.apply_lock.lock();
        let result = config.and_then(|c| {
            c.validate()?;
            let digest = c.digest();
            let previous = self.snapshot.load();
            if self.is_ready() && digest.content == previous.hash {
                return Ok(None);
            }
            warn_restart_only(&previous.config, &c);
            let version = self.next_version.fetch_add(1, Ordering::Relaxed);
            Snapshot::compile_with(
                c,
                digest,
                version,
                provenance.clone(),
                &self.state,
                Some(&previous),
            )
            .map(Some)
        });
        match result {
            Ok(None) => {
                self.metrics.reloads.with_label_values(&["unchanged"]).inc();
                *self.provenance.lock() = provenance;
                Ok(ApplyOutcome::Unchanged)
            }
            Ok(Some(snapshot)) => {
                *self.provenance.lock() = provenance.clone();
                let version = snapshot.version;
                self.snapshot.store(Arc::new(snapshot));
                self.ready.store(true, Ordering::Release);
                self.state.collect_garbage();
                self.metrics.reloads.with_label_values(&["applied"]).inc();
                self.metrics
                    .config_version
                    .set(i64::try_from(version).unwrap_or(i64::MAX));
                self.metrics
                    .apply_latency
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(version, source = %provenance.source, "config applied");
                Ok(ApplyOutcome::Applied)
            }
            Err(errors) => {
                self.metrics.reloads.with_label_values(&["rejected"]).inc();
                tracing::warn!(source = %provenance.source, "config rejected:\n{errors}");
                *self.last_rejection.lock() = Some(Rejection {
                    at: SystemTime::now(),
                    source: provenance.source,
                    errors: errors.0.iter().map(ToString::to_string).collect(),
                });
                Err(errors)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(endpoint_port: u16, route_path: &str) -> Config {
        Config::from_text(&format!(
            "listeners: [{{name: w, listen: '127.0.0.1:1'}}]\n\
             upstreams: [{{id: u, endpoints: [{{address: '127.0.0.1:{endpoint_port}'}}]}}]\n\
             routes:\n\
             - {{id: a, upstream: u, match: {{path: {{prefix: {route_path}}}}}, circuit_breaker: {{}}}}\n\
             - {{id: b, upstream: u, match: {{path: {{regex: '/b/[0-9]+'}}}}}}\n"
        ))
        .unwrap()
    }

    fn source() -> Provenance {
        Provenance {
            source: "test".into(),
            revision: None,
        }
    }

    #[test]
    fn an_endpoint_only_change_keeps_the_router_routes_and_breaker_state() {
        let g = Gateway::new(config(9001, "/a"), source(), true).unwrap();
        let before = g.snapshot();
        assert_eq!(
            g.apply(Ok(config(9002, "/a")), source()).unwrap(),
            ApplyOutcome::Applied
        );
        let after = g.snapshot();
        assert!(after.version > before.version);
        assert_ne!(after.hash, before.hash);
        assert!(
            Arc::ptr_eq(&after.router, &before.router),
            "router not recompiled"
        );
        for (old, new) in before.routes.iter().zip(&after.routes) {
            assert!(
                Arc::ptr_eq(&old.chain, &new.chain),
                "route {} chain reused",
                old.id
            );
        }
        let (b0, b1) = (
            before.routes[0].breaker.as_ref().unwrap(),
            after.routes[0].breaker.as_ref().unwrap(),
        );
        assert!(
            Arc::ptr_eq(&b0.breaker, &b1.breaker),
            "the breaker (and its state) carries over"
        );
        assert_eq!(after.upstreams["u"].endpoints[0].address, "127.0.0.1:9002");
    }

    #[test]
    fn a_route_change_rebuilds_the_router_but_keeps_state_of_unchanged_objects() {
        let g = Gateway::new(config(9001, "/a"), source(), true).unwrap();
        let before = g.snapshot();
        g.apply(Ok(config(9001, "/c")), source()).unwrap();
        let after = g.snapshot();
        assert!(!Arc::ptr_eq(&after.router, &before.router));
        assert!(Arc::ptr_eq(&before.routes[1].chain, &after.routes[1].chain));
        assert!(Arc::ptr_eq(&before.upstreams["u"], &after.upstreams["u"]));
        assert!(Arc::ptr_eq(
            &before.routes[0].breaker.as_ref().unwrap().breaker,
            &after.routes[0].breaker.as_ref().unwrap().breaker
        ));
    }

    #[test]
    fn same_content_is_unchanged_and_an_invalid_update_keeps_the_last_good_snapshot() {
        let g = Gateway::new(config(9001, "/a"), source(), true).unwrap();
        let v = g.snapshot().version;
        let newer = Provenance {
            source: "etcd".into(),
            revision: Some(42),
        };
        assert_eq!(
            g.apply(Ok(config(9001, "/a")), newer).unwrap(),
            ApplyOutcome::Unchanged
        );
        assert_eq!(g.snapshot().version, v);
        assert_eq!(
            g.provenance().revision,
            Some(42),
            "the content now stands at the newer revision"
        );
        let mut bad = config(9001, "/a");
        bad.routes[1].upstream = Some("missing".into());
        let errors = g.apply(Ok(bad), source()).unwrap_err();
        assert!(errors.to_string().contains("routes[1].upstream"), "{errors}");
        assert_eq!(g.snapshot().version, v, "the last good snapshot keeps serving");
        let rejected = g.last_rejection().unwrap();
        assert!(rejected.errors[0].contains("missing"), "{:?}", rejected.errors);
    }
}
