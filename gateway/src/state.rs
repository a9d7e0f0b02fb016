//! State that outlives snapshots, keyed by stable ids: endpoint state (in-flight counts,
//! health) by (upstream id, address). A reload takes the entries of unchanged objects
//! over and drops the entries nothing refers to any more.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::metrics::{Metrics, RouteMetrics};
use crate::upstream::EndpointState;

/// Long-lived state shared by every snapshot.
pub struct SharedState {
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    endpoints: Mutex<HashMap<(String, String), Arc<EndpointState>>>,
    routes: Mutex<HashMap<String, Arc<RouteMetrics>>>,
}

impl SharedState {
    /// Empty state reporting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> SharedState {
        SharedState {
            metrics,
            endpoints: Mutex::default(),
            routes: Mutex::default(),
        }
    }

    /// Metric handles of route `id`, resolved on first use.
    pub fn route_metrics(&self, id: &str) -> Arc<RouteMetrics> {
        self.routes
            .lock()
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(self.metrics.route(id)))
            .clone()
    }

    /// The state of endpoint `address` of upstream `upstream`, created on first use.
    pub fn endpoint(&self, upstream: &str, address: &str) -> Arc<EndpointState> {
        self.endpoints
            .lock()
            .entry((upstream.to_string(), address.to_string()))
            .or_default()
            .clone()
    }

    /// Drops state that no live snapshot refers to (only this map holds it).
    pub fn collect_garbage(&self) {
        self.endpoints.lock().retain(|_, v| Arc::strong_count(v) > 1);
        self.routes.lock().retain(|_, v| Arc::strong_count(v) > 1);
    }
}
