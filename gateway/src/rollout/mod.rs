//! Progressive rollouts: a route's canary weight stepped up on the canary's own live
//! figures, and rolled back when they fail.
//!
//! - [`core`]: the state machine (pure, clock passed in);
//! - [`store`]: where state lives and how replicas agree (the [`RolloutStore`] seam);
//! - [`etcd_store`]: the store of replicas sharing etcd (leadership by lease);
//! - [`runtime`]: the loop on the background runtime that feeds the state machine, calls
//!   the webhooks and serves the stored weights through each route's `LiveSplit`;
//! - [`Rollouts`]: what the gateway holds (the store once chosen, and the metrics) for
//!   the admin API.

pub mod admin;
pub mod cli;
pub mod core;
pub mod etcd_store;
pub mod runtime;
pub mod store;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use prometheus::{IntCounterVec, IntGaugeVec, Opts};

pub use store::{LocalStore, RolloutStore};

/// The default state directory: `/tmp/sluice-state` (like the PID file's default, in
/// `/tmp`; give `--state-dir` a lasting place in production).
pub const DEFAULT_STATE_DIR: &str = "/tmp/sluice-state";

/// The store rollouts keep their state in: with etcd (`etcd` given) the shared etcd
/// store, else a [`LocalStore`] in `state_dir` (so a restarted process continues), or
/// in memory when the directory cannot be used (logged).
///
/// `replica_id` names this replica among those sharing etcd (`--replica-id`; default
/// [`etcd_store::default_replica_id`]).
pub fn store_for(
    state_dir: Option<&Path>,
    etcd: Option<&sluice_sources::etcd::EtcdOptions>,
    replica_id: Option<&str>,
) -> Result<Arc<dyn RolloutStore>, String> {
    if let Some(opts) = etcd {
        return Ok(Arc::new(etcd_store::EtcdStore::for_gateway(opts, replica_id)));
    }
    let dir = state_dir.unwrap_or_else(|| Path::new(DEFAULT_STATE_DIR));
    match LocalStore::in_dir(dir) {
        Ok(s) => Ok(Arc::new(s)),
        Err(e) => {
            tracing::warn!("rollout state kept in memory only: {e}");
            Ok(Arc::new(LocalStore::in_memory()))
        }
    }
}

/// The rollout metrics (closed label sets: route ids, phases, verdicts).
#[derive(Clone)]
pub struct RolloutMetrics {
    /// `sluice_rollout_weight{route}`: the canary's served weight, percent.
    pub weight: IntGaugeVec,
    /// `sluice_rollout_step{route}`: the current step, counted from 1.
    pub step: IntGaugeVec,
    /// `sluice_rollout_state{route,state}`: 1 for the current state, 0 for the others.
    pub state: IntGaugeVec,
    /// `sluice_rollout_analyses_total{route,verdict}`: judged intervals.
    pub analyses: IntCounterVec,
}

impl RolloutMetrics {
    fn new(metrics: &crate::observe::metrics::Metrics) -> RolloutMetrics {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition is valid")
        };
        let m = RolloutMetrics {
            weight: gauge(
                "sluice_rollout_weight",
                "The canary's served weight in percent, by route.",
                &["route"],
            ),
            step: gauge(
                "sluice_rollout_step",
                "The rollout's current step, counted from 1, by route.",
                &["route"],
            ),
            state: gauge(
                "sluice_rollout_state",
                "1 for the rollout's current state, by route and state.",
                &["route", "state"],
            ),
            analyses: IntCounterVec::new(
                Opts::new(
                    "sluice_rollout_analyses_total",
                    "Judged rollout intervals, by route and verdict.",
                ),
                &["route", "verdict"],
            )
            .expect("static metric definition is valid"),
        };
        metrics.register(Box::new(m.weight.clone()));
        metrics.register(Box::new(m.step.clone()));
        metrics.register(Box::new(m.state.clone()));
        metrics.register(Box::new(m.analyses.clone()));
        m
    }

    /// Shows `state` for `route`.
    pub fn show(&self, route: &str, state: &core::RolloutState) {
        self.weight
            .with_label_values(&[route])
            .set(i64::from(state.weight.unwrap_or(100)));
        self.step
            .with_label_values(&[route])
            .set(i64::try_from(state.step + 1).unwrap_or(i64::MAX));
        for p in core::Phase::ALL {
            self.state
                .with_label_values(&[route, p.as_str()])
                .set(i64::from(p == state.phase));
        }
        // Every verdict's series exists from the rollout's start, at 0 until judged: a
        // rollout that has passed nothing yet shows `verdict="pass"} 0`, not no series.
        for v in core::Verdict::ALL {
            let _ = self.analyses.with_label_values(&[route, v.as_str()]);
        }
    }

    /// Drops `route`'s series (its rollout left the config).
    pub fn forget(&self, route: &str) {
        let _ = self.weight.remove_label_values(&[route]);
        let _ = self.step.remove_label_values(&[route]);
        for p in core::Phase::ALL {
            let _ = self.state.remove_label_values(&[route, p.as_str()]);
        }
        for v in core::Verdict::ALL {
            let _ = self.analyses.remove_label_values(&[route, v.as_str()]);
        }
    }
}

/// What the gateway holds of its rollouts: the store (set once at start, see
/// [`Rollouts::set_store`]) and the metrics.
pub struct Rollouts {
    store: OnceLock<Arc<dyn RolloutStore>>,
    /// The rollout metrics.
    pub metrics: RolloutMetrics,
}

impl Rollouts {
    /// No store yet, metrics registered in `metrics`.
    pub fn new(metrics: &crate::observe::metrics::Metrics) -> Rollouts {
        Rollouts {
            store: OnceLock::new(),
            metrics: RolloutMetrics::new(metrics),
        }
    }

    /// Sets the store; `false` if one was set already.
    pub fn set_store(&self, store: Arc<dyn RolloutStore>) -> bool {
        self.store.set(store).is_ok()
    }

    /// The store, once set.
    pub fn store(&self) -> Option<&Arc<dyn RolloutStore>> {
        self.store.get()
    }
}
