//! The compiled, immutable snapshot the request path reads.
//!
//! A snapshot is built from a validated [`Config`] off the request path and published
//! with one `ArcSwap::store` (see [`crate::gateway::Gateway::apply`]). A request loads it
//! once and keeps that `Arc` until it ends, so it never sees half of one config and half
//! of another.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderName;
use ipnet::IpNet;
use sluice_config::model::{RouteConfig, Timeouts};
use sluice_config::validate::Digest;
use sluice_config::{Config, ConfigErrors};
use sluice_filters::rewrite::PathRewrite;
use sluice_filters::router::Router;
use sluice_filters::Chain;

use sluice_filters::resilience::RetryPolicy;

use crate::metrics::RouteMetrics;
use crate::resilience::{route_retry_policy, BreakerBinding};
use crate::state::SharedState;
use crate::upstream::Upstream;

/// One compiled route.
#[derive(Clone)]
pub struct Route {
    /// Stable id (metrics label).
    pub id: String,
    /// Content hash of the route's config; an unchanged route reuses its compiled parts.
    pub hash: String,
    /// The route's filters.
    pub chain: Arc<Chain>,
    /// Where it forwards, if anywhere.
    pub upstream: Option<Arc<Upstream>>,
    /// Route timeouts over the upstream's.
    pub timeouts: Timeouts,
    /// Path rewrite.
    pub rewrite: Option<Arc<PathRewrite>>,
    /// The route's metric handles.
    pub metrics: Arc<RouteMetrics>,
    /// The route's circuit breaker (for its upstream), if it has one.
    pub breaker: Option<Arc<BreakerBinding>>,
    /// When a failed try is retried: the route's `retries`, else its upstream's.
    pub retry: Arc<RetryPolicy>,
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
}

impl Snapshot {
    /// Compiles a validated config, reusing from `previous` every compiled part whose
    /// config did not change: the router when no route changed, a route's filters when
    /// that route did not change, an upstream (with its balancer state) when it did not
    /// change (endpoints only: its endpoint set is swapped in place). Never blocks on
    /// DNS: host names come from the discovery plane.
    pub fn compile(
        config: Config,
        version: u64,
        provenance: Provenance,
        state: &SharedState,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigErrors> {
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
    ) -> Result<Snapshot, ConfigErrors> {
        let mut errors = Vec::new();
        let mut upstreams = HashMap::new();
        // Upstreams that differ from the serving ones only in their endpoints are kept
        // (balancer state, breakers bound to them); their new endpoint sets are swapped
        // in once the whole snapshot has compiled.
        let mut swaps = Vec::new();
        for u in &config.upstreams {
            let masked = u.without_endpoints();
            if let Some(old) = previous
                .and_then(|p| p.upstreams.get(&u.id))
                .filter(|old| old.config == masked)
            {
                if *old.endpoints.load().configured != *u.endpoints {
                    swaps.push((old.clone(), u.endpoints.clone()));
                }
                upstreams.insert(u.id.clone(), old.clone());
                continue;
            }
            upstreams.insert(u.id.clone(), Arc::new(Upstream::new(u, state)));
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
                    .map_err(|e| ConfigErrors::one("routes", e.to_string()))?,
            ),
        };
        let old_routes: HashMap<&str, &Route> = previous
            .map(|p| p.routes.iter().map(|r| (r.id.as_str(), r)).collect())
            .unwrap_or_default();
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, (r, hash)) in config.routes.iter().zip(digest.route_hashes).enumerate() {
            match compile_route(r, hash, &upstreams, old_routes.get(r.id.as_str()).copied(), state) {
                Ok(route) => routes.push(route),
                Err(e) => errors.push(sluice_config::ConfigError {
                    path: format!("routes[{i}]"),
                    message: e,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let request_id_header = HeaderName::from_bytes(config.server.request_id_header.as_bytes())
            .map_err(|e| ConfigErrors::one("server.request_id_header", e.to_string()))?;
        let now = std::time::Instant::now();
        for (up, endpoints) in swaps {
            up.replace(endpoints.into(), None, state, now);
        }
        Ok(Snapshot {
            version,
            hash: digest.content,
            loaded_at: SystemTime::now(),
            provenance,
            trusted_proxies: config.server.trusted_proxies.clone(),
            request_id_header,
            router,
            routes_hash,
            routes,
            upstreams,
            config: Arc::new(config),
        })
    }
}

impl Snapshot {
    /// The fast path for a config that differs from `self`'s only in upstreams'
    /// `endpoints` (see [`endpoints_only_change`]): swaps the changed upstreams' endpoint
    /// sets in place and returns a snapshot of the new config that shares this one's
    /// router, routes and upstreams. Nothing is recompiled; `config` must have passed
    /// [`sluice_config::validate::validate_endpoints`] for the changed upstreams.
    pub fn with_endpoints(
        &self,
        config: Config,
        version: u64,
        provenance: Provenance,
        state: &SharedState,
    ) -> Snapshot {
        let now = std::time::Instant::now();
        for u in &config.upstreams {
            if let Some(up) = self.upstreams.get(&u.id) {
                if *up.endpoints.load().configured != *u.endpoints {
                    up.replace(u.endpoints.clone().into(), None, state, now);
                }
            }
        }
        Snapshot {
            version,
            hash: config.content_hash_with_routes(&self.routes_hash),
            loaded_at: SystemTime::now(),
            provenance,
            trusted_proxies: self.trusted_proxies.clone(),
            request_id_header: self.request_id_header.clone(),
            router: self.router.clone(),
            routes_hash: self.routes_hash.clone(),
            routes: self.routes.clone(),
            upstreams: self.upstreams.clone(),
            config: Arc::new(config),
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

fn compile_route(
    r: &RouteConfig,
    hash: String,
    upstreams: &HashMap<String, Arc<Upstream>>,
    old: Option<&Route>,
    state: &SharedState,
) -> Result<Route, String> {
    let upstream = r.upstream.as_ref().and_then(|u| upstreams.get(u).cloned());
    let timeouts = match &upstream {
        Some(u) => r.timeouts.or(&u.config.timeouts),
        None => r.timeouts.clone(),
    };
    let (chain, rewrite) = match old.filter(|o| o.hash == hash) {
        Some(o) => (o.chain.clone(), o.rewrite.clone()),
        None => (
            Arc::new(sluice_filters::build_chain(r).map_err(|e| e.to_string())?),
            match &r.rewrite {
                Some(rw) => PathRewrite::new(rw).map_err(|e| e.to_string())?.map(Arc::new),
                None => None,
            },
        ),
    };
    let breaker =
        match (&r.circuit_breaker, &upstream) {
            (Some(cfg), Some(up)) => {
                let fallback =
                    match &cfg.fallback_upstream {
                        Some(id) => Some(upstreams.get(id).cloned().ok_or_else(|| {
                            format!("circuit_breaker.fallback_upstream: no upstream {id:?}")
                        })?),
                        None => None,
                    };
                let b = state.breaker(&r.id, &up.id, cfg);
                Some(Arc::new(BreakerBinding::new(b, cfg, fallback)))
            }
            _ => None,
        };
    Ok(Route {
        id: r.id.clone(),
        hash,
        chain,
        retry: route_retry_policy(r, upstream.as_ref()),
        upstream,
        timeouts,
        rewrite,
        metrics: state.route_metrics(&r.id),
        breaker,
    })
}
