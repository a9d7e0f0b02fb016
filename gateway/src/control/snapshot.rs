//! The compiled, immutable snapshot the request path reads.
//!
//! A snapshot is built from a validated [`Config`] off the request path and published
//! with one `ArcSwap::store` (see [`crate::control::gateway::Gateway::apply`]). A request loads it
//! once and keeps that `Arc` until it ends, so it never sees half of one config and half
//! of another.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderName;
use ipnet::IpNet;
use prometheus::IntCounter;
use sluice_config::model::{RouteConfig, Timeouts};
use sluice_config::normalization::Normalization;
use sluice_config::validate::Digest;
use sluice_config::{Config, ConfigError, ConfigErrors};
use sluice_core::edge::compile::{ListenerResponses, RouteResponses};
use sluice_core::resilience::RetryPolicy;
use sluice_core::rewrite::PathRewrite;
use sluice_core::router::Router;
use sluice_core::split::LiveSplit;
use sluice_core::Chain;

use crate::control::state::{Commits, SharedState};
use crate::observe::metrics::{CacheMetrics, RetryMetrics, RouteMetrics, VersionMetrics};
use crate::upstream::resilience::{route_retry_policy, BreakerBinding};
use crate::upstream::Upstream;

/// One weighted backend of a compiled route.
#[derive(Clone)]
pub struct Backend {
    /// The upstream it forwards to.
    pub upstream: Arc<Upstream>,
    /// Its share of the route's traffic.
    pub weight: u32,
    /// Route timeouts over this upstream's.
    pub timeouts: Timeouts,
    /// When a failed try is retried: the route's `retries`, else this upstream's.
    pub retry: Arc<RetryPolicy>,
    /// The circuit breaker of (route, this upstream), if the route has one.
    pub breaker: Option<Arc<BreakerBinding>>,
    /// `sluice_backend_requests_total{route, backend}` for this backend.
    pub served: IntCounter,
    /// The same counter for the breaker's fallback, when it serves instead.
    pub served_by_fallback: Option<IntCounter>,
    /// `sluice_retries_total` handles for (route, this upstream).
    pub retries: RetryMetrics,
    /// `sluice_retries_total` handles for (route, the breaker's fallback upstream).
    pub fallback_retries: Option<RetryMetrics>,
    /// Per-version handles (responses by class, latency, decisions by reason) for
    /// (route, this upstream); recorded when the route has several backends.
    pub version: VersionMetrics,
}

/// One compiled route.
#[derive(Clone)]
pub struct Route {
    /// Stable id (metrics label).
    pub id: String,
    /// Content hash of the route's config; an unchanged route reuses its compiled parts.
    pub hash: String,
    /// The route's filters.
    pub chain: Arc<Chain>,
    /// Where it forwards: none when its filters answer every request.
    pub backends: Vec<Backend>,
    /// The live weighted split between `backends`, shared by id with every snapshot
    /// (kept across reloads; a rollout may override the config's weights), with the
    /// per-backend figures a canary analysis reads.
    pub split: Arc<LiveSplit>,
    /// Path rewrite.
    pub rewrite: Option<Arc<PathRewrite>>,
    /// The route's metric handles.
    pub metrics: Arc<RouteMetrics>,
    /// What the route asks of responses (compression, cache, gRPC-Web, error pages,
    /// the response body limit); `None` when nothing.
    pub responses: Option<Arc<RouteResponses>>,
    /// `sluice_cache_requests_total` handles, when the route caches.
    pub cache_metrics: Option<CacheMetrics>,
}

impl Route {
    /// The backend whose upstream is `id`.
    pub fn backend_of(&self, id: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.upstream.id == id)
    }
}

/// Where a snapshot came from, for `/api/v1/config`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Provenance {
    /// Source kind and location, e.g. `file:/etc/sluice.yaml`.
    pub source: String,
    /// Source revision (etcd revision), if the source has one.
    pub revision: Option<i64>,
}

/// An immutable compiled config.
pub struct Snapshot {
    /// Monotonic version, bumped on every publish in this process.
    pub version: u64,
    /// Content hash of the config.
    pub hash: String,
    /// When it was published.
    pub loaded_at: SystemTime,
    /// Where it came from.
    pub provenance: Provenance,
    /// The config it was compiled from.
    pub config: Arc<Config>,
    /// The router; indexes into `routes`. Shared with the previous snapshot when no route
    /// changed (an endpoint-only change does not recompile it).
    pub router: Arc<Router>,
    /// Content hash of all routes, to tell whether the router can be reused.
    pub routes_hash: String,
    /// Routes in config order.
    pub routes: Vec<Route>,
    /// Upstreams by id.
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// Trusted proxy networks.
    pub trusted_proxies: Vec<IpNet>,
    /// Request id header.
    pub request_id_header: HeaderName,
    /// The tracer when `tracing.enabled`; `None` (the one branch a request pays) when off.
    pub tracer: Option<Arc<crate::observe::trace::Tracer>>,
    /// The L4 routes and client-certificate settings, by listener (see [`crate::l4`]).
    pub l4: Arc<crate::l4::plan::L4Plan>,
    /// The headers that tell an upstream who the client is: the gateway's own
    /// (`x-sluice-consumer`, `-groups`) and every one a filter of any route sets (see
    /// `Filter::identity_headers`). Client copies are removed from every request.
    pub identity_headers: Arc<[HeaderName]>,
    /// `server.normalization`, and the listeners that replace it, by name.
    normalization: Arc<(Normalization, Vec<(String, Normalization)>)>,
    /// `server.server_header`: `None` passes the upstream's; `Some(None)` removes it;
    /// `Some(Some(v))` replaces it with `v`.
    pub server_header: Option<Option<http::HeaderValue>>,
    /// Each listener's response defaults (compression, error pages), in config order;
    /// `None` for a listener without any.
    pub listeners: Vec<Option<Arc<ListenerResponses>>>,
}

impl Snapshot {
    /// The normalisation options of listener `name`: its own, else the server's.
    #[inline]
    pub fn normalization(&self, name: &str) -> &Normalization {
        let (server, listeners) = &*self.normalization;
        if listeners.is_empty() {
            return server;
        }
        listeners
            .iter()
            .find(|(l, _)| l == name)
            .map_or(server, |(_, n)| n)
    }
}

/// The normalisation options of `config`'s server and listeners.
fn normalization_of(config: &Config) -> Arc<(Normalization, Vec<(String, Normalization)>)> {
    let listeners = config
        .listeners
        .iter()
        .filter_map(|l| l.normalization.map(|n| (l.name.clone(), n)))
        .collect();
    Arc::new((config.server.normalization, listeners))
}

/// `server.server_header` compiled (see [`Snapshot::server_header`]).
fn server_header_of(config: &Config) -> Option<Option<http::HeaderValue>> {
    use sluice_config::model::ServerHeader;
    match &config.server.server_header {
        ServerHeader::Pass => None,
        ServerHeader::Hide => Some(None),
        // Validated to be a header value.
        ServerHeader::Set(v) => Some(http::HeaderValue::from_str(v).ok()),
    }
}

/// The identity headers of `routes` (see [`Snapshot::identity_headers`]).
fn identity_headers_of(routes: &[Route]) -> Arc<[HeaderName]> {
    let mut names = vec![
        crate::edge::pipeline::forward::X_CONSUMER,
        crate::edge::pipeline::forward::X_CONSUMER_GROUPS,
    ];
    for r in routes {
        for h in r.chain.identity_headers() {
            if !names.contains(&h) {
                names.push(h);
            }
        }
    }
    names.into()
}

/// A compiled config, not yet serving: its snapshot, and what publishing it changes in
/// the state that outlives snapshots (breakers, retry budgets, outlier detectors,
/// splits, endpoint sets). Compiling changes nothing that serves; [`Plan::publish`]
/// (once the config is accepted) does, right before the snapshot is stored. A plan
/// dropped unpublished (a refused config) leaves everything as it was.
pub struct Plan {
    snapshot: Snapshot,
    commits: Commits,
}

impl Plan {
    /// Applies the planned state changes and hands over the snapshot to store.
    pub fn publish(self, state: &SharedState) -> Snapshot {
        self.commits.apply(state);
        self.snapshot
    }

    /// The snapshot to be published (for checks before publishing).
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
}

impl Snapshot {
    /// Compiles a validated config into a [`Plan`], reusing from `previous` every
    /// compiled part whose config did not change: the router when no route changed, a
    /// route's filters when that route did not change, an upstream (with its balancer
    /// state) when it did not change (endpoints only: its endpoint set is swapped on
    /// publish). Never blocks on DNS: host names come from the discovery plane.
    pub fn compile(
        config: Config,
        version: u64,
        provenance: Provenance,
        state: &SharedState,
        previous: Option<&Snapshot>,
    ) -> Result<Plan, ConfigErrors> {
        let digest = config.digest();
        Self::compile_with(config, digest, version, provenance, state, previous)
    }

    /// [`Snapshot::compile`] with the config's [`Digest`] already computed.
    pub fn compile_with(
        config: Config,
        digest: Digest,
        version: u64,
        provenance: Provenance,
        state: &SharedState,
        previous: Option<&Snapshot>,
    ) -> Result<Plan, ConfigErrors> {
        let mut errors = Vec::new();
        let mut upstreams = HashMap::new();
        let mut plan = Commits::default();
        // Upstreams that differ from the serving ones only in their endpoints are kept
        // (balancer state, breakers bound to them); their new endpoint sets are swapped
        // in on publish.
        for u in &config.upstreams {
            let masked = u.without_endpoints();
            if let Some(old) = previous
                .and_then(|p| p.upstreams.get(&u.id))
                .filter(|old| old.config == masked)
            {
                if *old.endpoints.load().configured != *u.endpoints {
                    plan.endpoints(old.clone(), u.endpoints.clone().into());
                }
                upstreams.insert(u.id.clone(), old.clone());
                continue;
            }
            upstreams.insert(u.id.clone(), Arc::new(Upstream::new(u, state, &mut plan)));
        }
        let routes_hash = digest.routes;
        let router = match previous {
            Some(p) if p.routes_hash == routes_hash => p.router.clone(),
            _ => Arc::new(
                previous
                    .map_or_else(
                        || Router::new(&config.routes),
                        |p| Router::rebuild(&config.routes, &p.router),
                    )
                    .map_err(ConfigErrors::from)?,
            ),
        };
        let ctx = sluice_filters::BuildCtx::new(&config, &state.services);
        // Consumers' credentials are checked by their methods (the model checks names).
        errors.extend(sluice_filters::auth::consumers::validate(&config, &ctx));
        let old_routes: HashMap<&str, &Route> = previous
            .map(|p| p.routes.iter().map(|r| (r.id.as_str(), r)).collect())
            .unwrap_or_default();
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, (r, hash)) in config.routes.iter().zip(digest.route_hashes).enumerate() {
            let path = format!("routes[{i}]");
            match compile_route(
                r,
                &path,
                hash,
                &upstreams,
                old_routes.get(r.id.as_str()).copied(),
                state,
                &ctx,
                &mut plan,
            ) {
                Ok(route) => routes.push(route),
                Err(e) => errors.extend(e),
            }
        }
        let l4 = match crate::l4::plan::compile(&config, &upstreams, previous.map(|p| &*p.l4)) {
            Ok(plan) => Arc::new(plan),
            Err(e) => {
                errors.extend(e);
                Arc::default()
            }
        };
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for (i, l) in config.listeners.iter().enumerate() {
            match sluice_core::edge::compile::listener(l, &format!("listeners[{i}]")) {
                Ok(d) if d == ListenerResponses::default() => listeners.push(None),
                Ok(d) => listeners.push(Some(Arc::new(d))),
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        if config.routes.iter().any(|r| r.cache.is_some()) {
            // The store's size follows the config on publish (an LRU limit; nothing is
            // dropped until it is next filled past it).
            plan.cache_size(config.cache.max_size.bytes());
        }
        let request_id_header = HeaderName::from_bytes(config.server.request_id_header.as_bytes())
            .map_err(|e| ConfigErrors::one("server.request_id_header", e.to_string()))?;
        // The tracer is planned like the rest: the current one changes on publish.
        let tracer = state.tracing.tracer_for(&config.tracing);
        plan.tracer(tracer.clone());
        let snapshot = Snapshot {
            version,
            hash: digest.content,
            loaded_at: SystemTime::now(),
            provenance,
            trusted_proxies: config.server.trusted_proxies.clone(),
            request_id_header,
            tracer: tracer.clone(),
            listeners,
            router,
            routes_hash,
            identity_headers: identity_headers_of(&routes),
            normalization: normalization_of(&config),
            server_header: server_header_of(&config),
            routes,
            upstreams,
            l4,
            config: Arc::new(config),
        };
        Ok(Plan {
            snapshot,
            commits: plan,
        })
    }
}

impl Snapshot {
    /// The fast path for a config that differs from `self`'s only in upstreams'
    /// `endpoints` (see [`endpoints_only_change`]): a plan that swaps the changed
    /// upstreams' endpoint sets on publish, with a snapshot of the new config that
    /// shares this one's router, routes and upstreams. Nothing is recompiled; `config`
    /// must have passed [`sluice_config::validate::validate_endpoints`] for the changed
    /// upstreams.
    pub fn with_endpoints(&self, config: Config, version: u64, provenance: Provenance) -> Plan {
        let mut plan = Commits::default();
        for u in &config.upstreams {
            if let Some(up) = self.upstreams.get(&u.id) {
                if *up.endpoints.load().configured != *u.endpoints {
                    plan.endpoints(up.clone(), u.endpoints.clone().into());
                }
            }
        }
        let snapshot = Snapshot {
            version,
            hash: config.content_hash_with_routes(&self.routes_hash),
            loaded_at: SystemTime::now(),
            provenance,
            trusted_proxies: self.trusted_proxies.clone(),
            request_id_header: self.request_id_header.clone(),
            tracer: self.tracer.clone(),
            listeners: self.listeners.clone(),
            router: self.router.clone(),
            routes_hash: self.routes_hash.clone(),
            routes: self.routes.clone(),
            upstreams: self.upstreams.clone(),
            l4: self.l4.clone(),
            identity_headers: self.identity_headers.clone(),
            normalization: self.normalization.clone(),
            server_header: self.server_header.clone(),
            config: Arc::new(config),
        };
        Plan {
            snapshot,
            commits: plan,
        }
    }
}

/// Whether `next` differs from `current` at most in upstreams' `endpoints` (same
/// upstreams in the same order, equal once their endpoints are left out). Returns the
/// indexes of the upstreams whose endpoints changed, or `None` when anything else did.
pub fn endpoints_only_change(current: &Config, next: &Config) -> Option<Vec<usize>> {
    if current.upstreams.len() != next.upstreams.len() {
        return None;
    }
    // Compare everything but the endpoint lists, whatever fields the config grows.
    let masked = |c: &Config| Config {
        upstreams: c.upstreams.iter().map(|u| u.without_endpoints()).collect(),
        ..c.clone()
    };
    if masked(current) != masked(next) {
        return None;
    }
    let changed = current
        .upstreams
        .iter()
        .zip(&next.upstreams)
        .enumerate()
        .filter(|(_, (a, b))| a.endpoints != b.endpoints)
        .map(|(i, _)| i)
        .collect();
    Some(changed)
}

// The route, where it sits, what it compiles against, and the plan it adds to.
#[allow(clippy::too_many_arguments)]
fn compile_route(
    r: &RouteConfig,
    path: &str,
    hash: String,
    upstreams: &HashMap<String, Arc<Upstream>>,
    old: Option<&Route>,
    state: &SharedState,
    ctx: &sluice_filters::BuildCtx<'_>,
    plan: &mut Commits,
) -> Result<Route, Vec<ConfigError>> {
    let one = |path: String, message: String| vec![ConfigError { path, message }];
    // Reported after the chain's own errors, as the route check (`sluice_filters::FilterKinds`) does.
    let missing_backend = sluice_filters::missing_backend(r, path);
    // An unchanged route keeps its chain, unless a filter of it reads consumers and the
    // consumers changed (then `build_chain` rebuilds just those filters).
    let fresh = |c: &sluice_core::Chain| {
        !c.uses_consumers() || c.consumers_fresh(sluice_filters::auth::consumers::Consumers::of(ctx).digest())
    };
    let (chain, rewrite) = match old.filter(|o| o.hash == hash && fresh(&o.chain)) {
        Some(o) => (o.chain.clone(), o.rewrite.clone()),
        None => (
            Arc::new(
                sluice_filters::build_chain(r, path, old.map(|o| &*o.chain), ctx).map_err(|mut es| {
                    es.extend(missing_backend.clone());
                    es
                })?,
            ),
            match &r.rewrite {
                Some(rw) => PathRewrite::new(rw)
                    .map_err(|e| vec![e.within(&format!("{path}.rewrite"))])?
                    .map(Arc::new),
                None => None,
            },
        ),
    };
    if let Some(e) = missing_backend {
        return Err(vec![e]);
    }
    let fallback = match r
        .circuit_breaker
        .as_ref()
        .and_then(|c| c.fallback_upstream.as_ref())
    {
        Some(id) => Some(upstreams.get(id).cloned().ok_or_else(|| {
            one(
                format!("{path}.circuit_breaker.fallback_upstream"),
                format!("no upstream {id:?}"),
            )
        })?),
        None => None,
    };
    let metrics = &state.metrics;
    let mut backends = Vec::new();
    for (i, b) in r.backend_list().iter().enumerate() {
        let up = upstreams.get(&b.upstream).cloned().ok_or_else(|| {
            one(
                format!("{path}.backends[{i}].upstream"),
                format!("no upstream {:?}", b.upstream),
            )
        })?;
        let breaker = r.circuit_breaker.as_ref().map(|cfg| {
            let rb = state.breaker(&r.id, &up.id, cfg, plan);
            Arc::new(BreakerBinding::new(rb, cfg, fallback.clone()))
        });
        backends.push(Backend {
            timeouts: r.timeouts.or(&up.config.timeouts),
            retry: route_retry_policy(r, Some(&up)),
            breaker,
            weight: b.weight,
            served: metrics
                .backend_requests
                .with_label_values(&[r.id.as_str(), up.id.as_str()]),
            retries: metrics.retries_for(&r.id, &up.id),
            version: metrics.version(&r.id, &up.id),
            fallback_retries: fallback.as_ref().map(|f| metrics.retries_for(&r.id, &f.id)),
            served_by_fallback: fallback.as_ref().map(|f| {
                metrics
                    .backend_requests
                    .with_label_values(&[r.id.as_str(), f.id.as_str()])
            }),
            upstream: up,
        });
    }
    let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
    let ids: Vec<Arc<str>> = backends
        .iter()
        .map(|b| Arc::from(b.upstream.id.as_str()))
        .collect();
    let split = state.split(&r.id, &ids, &weights, plan);
    let responses = sluice_core::edge::compile::route(r, ctx.config, path)?;
    let cache_metrics = responses.cache.as_ref().map(|_| state.metrics.cache_for(&r.id));
    Ok(Route {
        id: r.id.clone(),
        hash,
        responses: (!responses.is_empty()).then(|| Arc::new(responses)),
        cache_metrics,
        chain,
        backends,
        split,
        rewrite,
        metrics: state.route_metrics(&r.id),
    })
}
