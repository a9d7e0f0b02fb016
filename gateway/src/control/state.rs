//! State that outlives snapshots, keyed by stable ids: endpoint state (in-flight counts,
//! health) by (upstream id, address), circuit breakers by (route id, upstream id),
//! outlier detectors and retry budgets by upstream id. A reload takes the entries of
//! unchanged objects over and drops the entries nothing refers to any more.
//!
//! Compiling a config changes none of it: the compile step *plans* ([`Commits`]) what
//! its snapshot needs (a new breaker, an existing one with a new config, a rebuilt
//! outlier detector, an endpoint set to swap), and only [`Commits::apply`], run when the
//! config is accepted and its snapshot is about to be published, carries it out. A
//! config refused at any point of its compile leaves every serving breaker, budget,
//! detector, split and endpoint set exactly as it was.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use prometheus::IntGauge;
use sluice_config::model::EndpointConfig;
use sluice_config::resilience::{BreakerConfig, OutlierDetectionConfig, RetryBudgetConfig};
use sluice_core::resilience::{OutlierDetector, RetryBudget};
use sluice_core::split::{LiveSplit, Splits};
use sluice_core::{EndpointLookup, Services};

use crate::observe::metrics::{Metrics, RouteMetrics};
use crate::upstream::directory::UpstreamDirectory;
use crate::upstream::resilience::RouteBreaker;
use crate::upstream::EndpointState;

type BreakerKey = (String, String);

/// Long-lived state shared by every snapshot.
pub struct SharedState {
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// The discovery plane's DNS cache of endpoint host names.
    pub discovery: crate::upstream::discovery::Discovery,
    /// The services every filter build shares: the ones the gateway owns (the
    /// background runtime, the metrics registry, the upstream directory, the live
    /// splits), inserted here, and the ones filter kinds make for themselves.
    pub services: Arc<Services>,
    /// Every route's live split between its backends, by route id, kept across reloads
    /// (canary rules read it, rollouts set its override); also in `services`.
    pub splits: Arc<Splits>,
    /// The tracer in effect (`tracing:`), kept by snapshots whose tracing is unchanged.
    pub tracing: crate::observe::trace::Tracing,
    /// The serving snapshot's upstreams, where filters send requests of their own
    /// (mirror copies); also in `services`, as the [`EndpointLookup`].
    pub upstreams: Arc<UpstreamDirectory>,
    endpoints: Mutex<HashMap<(String, String), Arc<EndpointState>>>,
    routes: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    /// Each breaker with the config it was last given.
    breakers: Mutex<HashMap<BreakerKey, (Arc<RouteBreaker>, BreakerConfig)>>,
    outliers: Mutex<HashMap<String, Arc<OutlierDetector>>>,
    /// Each budget with the config it was last given.
    budgets: Mutex<HashMap<String, (Arc<RetryBudget>, RetryBudgetConfig)>>,
}

/// One change to long-lived state that publishing a compiled config makes.
enum Commit {
    /// A breaker new to this config: enters the map.
    NewBreaker(BreakerKey, Arc<RouteBreaker>, BreakerConfig),
    /// A serving breaker given a new config (its state kept).
    Reconfigure(BreakerKey, Arc<RouteBreaker>, BreakerConfig),
    /// A budget new to this config: enters the map.
    NewBudget(String, Arc<RetryBudget>, RetryBudgetConfig),
    /// A serving budget given a new config.
    Budget(String, Arc<RetryBudget>, RetryBudgetConfig),
    /// A rebuilt (or new) outlier detector: replaces the map's.
    Outlier(String, Arc<OutlierDetector>),
    /// A gauge the new snapshot sets (an upstream's endpoint count).
    Gauge(IntGauge, i64),
    /// A route's split: a new one enters the map, a serving one gets its new base.
    Split {
        route: String,
        split: Arc<LiveSplit>,
        backends: Vec<Arc<str>>,
        weights: Vec<u32>,
        new: bool,
    },
    /// A kept upstream's new endpoint list, swapped in.
    Endpoints(Arc<crate::upstream::Upstream>, Arc<[EndpointConfig]>),
    /// The response cache's size bound (`cache.max_size`): the store is made with it
    /// if it was never made, else its LRU takes the new limit.
    CacheSize(u64),
    /// The tracer of the new snapshot becomes the one later compiles reuse.
    Tracer(Option<Arc<crate::observe::trace::Tracer>>),
}

/// What publishing a compiled config changes in [`SharedState`], planned while it
/// compiles and carried out by [`Commits::apply`] only once it is accepted. Dropped
/// unapplied (a refused config), it changes nothing.
#[derive(Default)]
pub struct Commits(Vec<Commit>);

impl Commits {
    /// Plans setting `gauge` to `value` on publish.
    pub fn gauge(&mut self, gauge: IntGauge, value: i64) {
        self.0.push(Commit::Gauge(gauge, value));
    }

    /// Plans swapping `endpoints` into the kept upstream `up` on publish.
    pub fn endpoints(&mut self, up: Arc<crate::upstream::Upstream>, endpoints: Arc<[EndpointConfig]>) {
        self.0.push(Commit::Endpoints(up, endpoints));
    }

    /// Plans making the response cache's store, or setting its size bound, on publish.
    pub fn cache_size(&mut self, max_size: u64) {
        self.0.push(Commit::CacheSize(max_size));
    }

    /// Plans keeping `tracer` as the current tracer on publish.
    pub fn tracer(&mut self, tracer: Option<Arc<crate::observe::trace::Tracer>>) {
        self.0.push(Commit::Tracer(tracer));
    }

    /// Whether nothing is planned.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Carries the plan out: the one place compiled state reaches the serving state.
    pub fn apply(self, state: &SharedState) {
        let now = Instant::now();
        for c in self.0 {
            match c {
                Commit::NewBreaker(key, b, config) => {
                    state.breakers.lock().insert(key, (b, config));
                }
                Commit::Reconfigure(key, b, config) => {
                    b.observe(b.breaker.reconfigure(&config, now));
                    state.breakers.lock().insert(key, (b, config));
                }
                Commit::NewBudget(id, b, config) => {
                    state.budgets.lock().insert(id, (b, config));
                }
                Commit::Budget(id, b, config) => {
                    b.reconfigure(&config);
                    state.budgets.lock().insert(id, (b, config));
                }
                Commit::Outlier(id, d) => {
                    state.outliers.lock().insert(id, d);
                }
                Commit::Gauge(g, v) => g.set(v),
                Commit::Split {
                    route,
                    split,
                    backends,
                    weights,
                    new,
                } => {
                    if new {
                        state.splits.insert(&route, split);
                    } else {
                        split.set_base(&backends, &weights);
                    }
                }
                Commit::Endpoints(up, endpoints) => {
                    up.replace(endpoints, None, state, now);
                }
                Commit::CacheSize(max_size) => {
                    crate::edge::cache_store::cache(max_size);
                }
                Commit::Tracer(tracer) => state.tracing.keep(tracer),
            }
        }
    }
}

impl SharedState {
    /// Empty state reporting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> SharedState {
        let upstreams = Arc::new(UpstreamDirectory::default());
        let services = Arc::new(Services::default());
        if let Some(rt) = crate::control::background::handle() {
            services.insert(rt);
        }
        services.insert(metrics.registry().clone());
        services.insert(upstreams.clone() as Arc<dyn EndpointLookup>);
        services.insert(Arc::new(crate::observe::events::KindSink) as Arc<dyn sluice_core::EventSink>);
        let splits = services.get_or_insert_with(Splits::default);
        SharedState {
            metrics: metrics.clone(),
            discovery: crate::upstream::discovery::Discovery::default(),
            services,
            splits,
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

    /// The breaker of `route` × `upstream` for a config being compiled: the serving one
    /// (its state kept; a changed `config` is planned in `plan`, applied on publish), or
    /// a new closed one (entering the map on publish). Changes nothing now.
    pub fn breaker(
        &self,
        route: &str,
        upstream: &str,
        config: &BreakerConfig,
        plan: &mut Commits,
    ) -> Arc<RouteBreaker> {
        let key = (route.to_string(), upstream.to_string());
        if let Some((b, applied)) = self.breakers.lock().get(&key) {
            if applied != config {
                plan.0.push(Commit::Reconfigure(key, b.clone(), config.clone()));
            }
            return b.clone();
        }
        let b = Arc::new(RouteBreaker::new(route, upstream, config, &self.metrics));
        plan.0.push(Commit::NewBreaker(key, b.clone(), config.clone()));
        b
    }

    /// Every live breaker, sorted by route then upstream.
    pub fn breakers(&self) -> Vec<Arc<RouteBreaker>> {
        let mut list: Vec<_> = self.breakers.lock().values().map(|(b, _)| b.clone()).collect();
        list.sort_by(|a, b| (&a.route, &a.upstream).cmp(&(&b.route, &b.upstream)));
        list
    }

    /// The breaker of `route` × `upstream`, if it exists.
    pub fn find_breaker(&self, route: &str, upstream: &str) -> Option<Arc<RouteBreaker>> {
        self.breakers
            .lock()
            .get(&(route.to_string(), upstream.to_string()))
            .map(|(b, _)| b.clone())
    }

    /// The outlier detector of upstream `id` for this config and endpoint list: the
    /// previous one rebuilt (ejections and counters of endpoints that stay are kept), or
    /// a new one. With `plan` (a config being compiled) it enters the map on publish;
    /// without (a live endpoint swap), at once.
    pub fn outlier(
        &self,
        id: &str,
        config: &OutlierDetectionConfig,
        addresses: &[&str],
        plan: Option<&mut Commits>,
    ) -> Arc<OutlierDetector> {
        let now = Instant::now();
        let mut map = self.outliers.lock();
        let detector = match map.get(id) {
            Some(old) => Arc::new(old.rebuild(config, addresses.iter().copied(), now)),
            None => Arc::new(OutlierDetector::new(config, addresses.iter().copied(), now)),
        };
        match plan {
            Some(plan) => plan.0.push(Commit::Outlier(id.to_string(), detector.clone())),
            None => {
                map.insert(id.to_string(), detector.clone());
            }
        }
        detector
    }

    /// The retry budget of upstream `id` for a config being compiled: the serving one
    /// (a changed `config` planned in `plan`), or a new one (entering the map on
    /// publish). Changes nothing now.
    pub fn budget(&self, id: &str, config: &RetryBudgetConfig, plan: &mut Commits) -> Arc<RetryBudget> {
        if let Some((b, applied)) = self.budgets.lock().get(id) {
            if applied != config {
                plan.0
                    .push(Commit::Budget(id.to_string(), b.clone(), config.clone()));
            }
            return b.clone();
        }
        let b = RetryBudget::new(config);
        plan.0
            .push(Commit::NewBudget(id.to_string(), b.clone(), config.clone()));
        b
    }

    /// The split of route `id` over `backends` for a config being compiled: the serving
    /// one (its new base weights planned), or a new one (entering the map on publish).
    pub fn split(
        &self,
        id: &str,
        backends: &[Arc<str>],
        weights: &[u32],
        plan: &mut Commits,
    ) -> Arc<LiveSplit> {
        let (split, new) = match self.splits.get(id) {
            Some(s) => (s, false),
            None => (Arc::new(LiveSplit::new(backends, weights)), true),
        };
        plan.0.push(Commit::Split {
            route: id.to_string(),
            split: split.clone(),
            backends: backends.to_vec(),
            weights: weights.to_vec(),
            new,
        });
        split
    }

    /// Drops state that no live snapshot refers to (only this map holds it), with the
    /// metric series of dropped breakers.
    pub fn collect_garbage(&self) {
        self.endpoints.lock().retain(|_, v| Arc::strong_count(v) > 1);
        self.routes.lock().retain(|_, v| Arc::strong_count(v) > 1);
        self.outliers.lock().retain(|_, v| Arc::strong_count(v) > 1);
        self.budgets.lock().retain(|_, (v, _)| Arc::strong_count(v) > 1);
        self.splits.prune();
        self.breakers.lock().retain(|(route, upstream), (v, _)| {
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
