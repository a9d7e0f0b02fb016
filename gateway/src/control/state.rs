//! State that outlives snapshots, keyed by stable ids: endpoint state (in-flight counts,
//! health) by (upstream id, address), circuit breakers by (route id, upstream id),
//! outlier detectors and retry budgets by upstream id. A reload takes the entries of
//! unchanged objects over (reconfiguring them in place where their config changed) and
//! drops the entries nothing refers to any more.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use sluice_config::resilience::{BreakerConfig, OutlierDetectionConfig, RetryBudgetConfig};
use sluice_core::resilience::{OutlierDetector, RetryBudget};

use crate::observe::metrics::{Metrics, RouteMetrics};
use crate::upstream::resilience::RouteBreaker;
use crate::upstream::EndpointState;

type BreakerKey = (String, String);

/// Long-lived state shared by every snapshot.
pub struct SharedState {
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// The discovery plane's DNS cache of endpoint host names.
    pub discovery: crate::upstream::discovery::Discovery,
    /// The services every filter build shares (runtime, pools, key caches).
    pub filters: sluice_filters::Shared,
    /// The tracer in effect (`tracing:`), kept by snapshots whose tracing is unchanged.
    pub tracing: crate::observe::trace::Tracing,
    /// The serving snapshot's upstreams, where the `mirror` filters send copies.
    pub upstreams: Arc<crate::upstream::mirror::UpstreamDirectory>,
    endpoints: Mutex<HashMap<(String, String), Arc<EndpointState>>>,
    routes: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    breakers: Mutex<HashMap<BreakerKey, Arc<RouteBreaker>>>,
    outliers: Mutex<HashMap<String, Arc<OutlierDetector>>>,
    budgets: Mutex<HashMap<String, Arc<RetryBudget>>>,
}

impl SharedState {
    /// Empty state reporting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> SharedState {
        let upstreams = Arc::new(crate::upstream::mirror::UpstreamDirectory::default());
        let filters = sluice_filters::Shared {
            runtime: crate::control::background::handle(),
            limit_metrics: Some(crate::observe::limit_metrics::sink(&metrics)),
            endpoints: Some(upstreams.clone()),
            ..Default::default()
        };
        metrics.register(Box::new(crate::upstream::mirror::MirrorCollector::new(
            filters.mirrors.clone(),
        )));
        metrics.register(Box::new(
            crate::observe::access_metrics::ForwardAuthCollector::new(filters.forward_auth.stats.clone()),
        ));
        SharedState {
            metrics: metrics.clone(),
            discovery: crate::upstream::discovery::Discovery::default(),
            filters,
            tracing: crate::observe::trace::Tracing::new(&metrics),
            upstreams,
            endpoints: Mutex::default(),
            routes: Mutex::default(),
            breakers: Mutex::default(),
            outliers: Mutex::default(),
            budgets: Mutex::default(),
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

    /// The breaker of `route` × `upstream`: the existing one, reconfigured to `config`
    /// (keeping its state), or a new closed one.
    pub fn breaker(&self, route: &str, upstream: &str, config: &BreakerConfig) -> Arc<RouteBreaker> {
        let mut map = self.breakers.lock();
        if let Some(b) = map.get(&(route.to_string(), upstream.to_string())) {
            b.observe(b.breaker.reconfigure(config, Instant::now()));
            return b.clone();
        }
        let b = Arc::new(RouteBreaker::new(route, upstream, config, &self.metrics));
        map.insert((route.to_string(), upstream.to_string()), b.clone());
        b
    }

    /// Every live breaker, sorted by route then upstream.
    pub fn breakers(&self) -> Vec<Arc<RouteBreaker>> {
        let mut list: Vec<_> = self.breakers.lock().values().cloned().collect();
        list.sort_by(|a, b| (&a.route, &a.upstream).cmp(&(&b.route, &b.upstream)));
        list
    }

    /// The breaker of `route` × `upstream`, if it exists.
    pub fn find_breaker(&self, route: &str, upstream: &str) -> Option<Arc<RouteBreaker>> {
        self.breakers
            .lock()
            .get(&(route.to_string(), upstream.to_string()))
            .cloned()
    }

    /// The outlier detector of upstream `id` for this config and endpoint list: the
    /// previous one rebuilt (ejections and counters of endpoints that stay are kept), or
    /// a new one.
    pub fn outlier(
        &self,
        id: &str,
        config: &OutlierDetectionConfig,
        addresses: &[&str],
    ) -> Arc<OutlierDetector> {
        let now = Instant::now();
        let mut map = self.outliers.lock();
        let detector = match map.get(id) {
            Some(old) => Arc::new(old.rebuild(config, addresses.iter().copied(), now)),
            None => Arc::new(OutlierDetector::new(config, addresses.iter().copied(), now)),
        };
        map.insert(id.to_string(), detector.clone());
        detector
    }

    /// The retry budget of upstream `id`, reconfigured to `config`, or a new one.
    pub fn budget(&self, id: &str, config: &RetryBudgetConfig) -> Arc<RetryBudget> {
        let mut map = self.budgets.lock();
        if let Some(b) = map.get(id) {
            b.reconfigure(config);
            return b.clone();
        }
        let b = RetryBudget::new(config);
        map.insert(id.to_string(), b.clone());
        b
    }

    /// Drops state that no live snapshot refers to (only this map holds it), with the
    /// metric series of dropped breakers.
    pub fn collect_garbage(&self) {
        self.endpoints.lock().retain(|_, v| Arc::strong_count(v) > 1);
        self.routes.lock().retain(|_, v| Arc::strong_count(v) > 1);
        self.outliers.lock().retain(|_, v| Arc::strong_count(v) > 1);
        self.budgets.lock().retain(|_, v| Arc::strong_count(v) > 1);
        self.filters.splits.prune();
        self.breakers.lock().retain(|(route, upstream), v| {
            let keep = Arc::strong_count(v) > 1;
            if !keep {
                let _ = self
                    .metrics
                    .breaker_state
                    .remove_label_values(&[route.as_str(), upstream.as_str()]);
            }
            keep
        });
    }
}
