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

use crate::metrics::{RetryMetrics, RouteMetrics};
use crate::resilience::{route_retry_policy, BreakerBinding};
use crate::state::SharedState;
use crate::upstream::Upstream;

/// One compiled route.
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
    /// `sluice_retries_total` handles for (route, upstream).
    pub retries: Option<RetryMetrics>,
    /// `sluice_retries_total` handles for (route, breaker fallback upstream).
    pub fallback_retries: Option<RetryMetrics>,
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
    /// change. Fails only on what validation cannot see (a host name that does not
    /// resolve).
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
        for (i, u) in config.upstreams.iter().enumerate() {
            if let Some(old) = previous
                .and_then(|p| p.upstreams.get(&u.id))
                .filter(|old| old.config == *u)
            {
                upstreams.insert(u.id.clone(), old.clone());
                continue;
            }
            match Upstream::new(u, state) {
                Ok(up) => {
                    upstreams.insert(u.id.clone(), Arc::new(up));
                }
                Err(e) => errors.push(sluice_config::ConfigError {
                    path: format!("upstreams[{i}].endpoints"),
                    message: e,
                }),
            }
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
    let retries = upstream.as_ref().map(|u| state.metrics.retries_for(&r.id, &u.id));
    let fallback_retries = breaker
        .as_ref()
        .and_then(|b| b.fallback.as_ref())
        .map(|u| state.metrics.retries_for(&r.id, &u.id));
    Ok(Route {
        retries,
        fallback_retries,
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
