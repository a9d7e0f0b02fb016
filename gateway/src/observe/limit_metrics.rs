//! The limit filters' metrics sink over the gateway's Prometheus metrics
//! ([`sluice_filters::rate_limit::metrics::LimitMetrics`]), and what
//! `/api/v1/routes` shows of a route's limits.

use std::sync::Arc;

use sluice_config::model::RouteConfig;
use sluice_filters::rate_limit::metrics::{
    Counter, Decision, FallbackChange, Gauge, Histogram, LimitMetrics, RedisError,
};

use crate::observe::metrics::Metrics;

struct C(prometheus::IntCounter);
impl Counter for C {
    #[inline]
    fn inc(&self) {
        self.0.inc();
    }
}

struct G(prometheus::IntGauge);
impl Gauge for G {
    fn inc(&self) {
        self.0.inc();
    }
    fn dec(&self) {
        self.0.dec();
    }
}

struct H(prometheus::Histogram);
impl Histogram for H {
    fn observe(&self, seconds: f64) {
        self.0.observe(seconds);
    }
}

struct Sink(Arc<Metrics>);

impl LimitMetrics for Sink {
    fn decision(&self, route: &str, limit: &str, decision: Decision) -> Arc<dyn Counter> {
        Arc::new(C(self.0.ratelimit_decisions.with_label_values(&[
            route,
            limit,
            decision.as_str(),
        ])))
    }
    fn redis_duration(&self) -> Arc<dyn Histogram> {
        Arc::new(H(self.0.redis_duration.clone()))
    }
    fn redis_error(&self, reason: RedisError) -> Arc<dyn Counter> {
        Arc::new(C(self.0.redis_errors.with_label_values(&[reason.as_str()])))
    }
    fn fallback_active(&self) -> Arc<dyn Gauge> {
        Arc::new(G(self.0.ratelimit_fallback.clone()))
    }
    fn fallback_changed(&self, change: &FallbackChange) {
        crate::observe::events::emit(crate::observe::events::Event::LimiterFallback {
            store: change.store.clone(),
            routes: change.routes.clone(),
            active: change.active,
            reason: change.reason.clone(),
        });
    }
}

/// The sink the filters report into.
pub fn sink(metrics: &Arc<Metrics>) -> Arc<dyn LimitMetrics> {
    Arc::new(Sink(metrics.clone()))
}

/// The route's configured rate and concurrency limits, for `/api/v1/routes` (names,
/// quotas, keys, store; never a Redis URL).
pub fn describe_limits(route: &RouteConfig) -> Vec<serde_json::Value> {
    use sluice_filters::{limit_conn, rate_limit};
    route
        .filters
        .iter()
        .filter_map(|f| match f.kind.as_str() {
            "rate_limit" => rate_limit::describe(&f.spec),
            "limit_conn" => limit_conn::describe(&f.spec),
            _ => None,
        })
        .collect()
}
