//! Resolved upstreams: endpoints with their live state, the balancer, and how to build
//! a pingora peer for one endpoint.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use prometheus::{IntCounter, IntGauge};
use sluice_config::model::{HashOn, LoadBalancing, Timeouts, UpstreamConfig, UpstreamProtocol};
use sluice_filters::resilience::{OutlierDetector, RetryBudget, RetryPolicy};

use crate::balancer::Balancer;
use crate::metrics::UpstreamMetrics;
use crate::state::SharedState;

/// Live state of one endpoint, keyed by (upstream id, address) so it survives reloads.
#[derive(Debug)]
pub struct EndpointState {
    /// Requests in flight.
    pub inflight: AtomicUsize,
    /// Requests sent, ever.
    pub requests: AtomicU64,
    /// Result of active health checks (`true` until a check says otherwise).
    pub healthy: AtomicBool,
}

impl Default for EndpointState {
    fn default() -> Self {
        Self {
            inflight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
        }
    }
}

/// One resolved endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// Address as configured (`host:port`), the stable key.
    pub address: String,
    /// Resolved socket address.
    pub addr: SocketAddr,
    /// Weight; 0 means drained.
    pub weight: u32,
    /// TLS server name for this endpoint (the upstream's `tls.sni`, else the host).
    pub sni: String,
    /// Live state shared across snapshots.
    pub state: Arc<EndpointState>,
}

/// A resolved upstream.
#[derive(Debug)]
pub struct Upstream {
    /// Stable id.
    pub id: String,
    /// Endpoints in config order.
    pub endpoints: Vec<Endpoint>,
    /// Weights, parallel to `endpoints`.
    pub weights: Vec<u32>,
    /// The balancer.
    pub balancer: Balancer,
    /// What the consistent hash is computed from, for `consistent_hash`.
    pub hash_on: Option<HashOn>,
    /// The config it came from.
    pub config: UpstreamConfig,
    /// Passive health: outlier ejection of endpoints (state kept across reloads).
    pub outlier: Arc<OutlierDetector>,
    /// Caps retries in flight (state kept across reloads).
    pub budget: Arc<RetryBudget>,
    /// The upstream's retry policy (a route's `retries` overrides it).
    pub retry: Arc<RetryPolicy>,
    /// `sluice_endpoints_ejected{upstream}`.
    pub ejected_gauge: IntGauge,
    /// `sluice_retry_budget_exhausted_total{upstream}`.
    pub budget_exhausted: IntCounter,
    /// The upstream's error and ejection counters, resolved at build.
    pub metrics: UpstreamMetrics,
}

/// Resolves `host:port`.
pub fn resolve(address: &str) -> Result<SocketAddr, String> {
    address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {address:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address:?} resolves to no address"))
}

impl Upstream {
    /// Builds an upstream, taking endpoint state from `state` so it carries over.
    pub fn new(config: &UpstreamConfig, state: &SharedState) -> Result<Upstream, String> {
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for e in &config.endpoints {
            let host = e.address.rsplit_once(':').map_or(e.address.as_str(), |(h, _)| h);
            let sni = config
                .tls
                .as_ref()
                .and_then(|t| t.sni.clone())
                .unwrap_or_else(|| host.to_string());
            endpoints.push(Endpoint {
                sni,
                address: e.address.clone(),
                addr: resolve(&e.address)?,
                weight: e.weight,
                state: state.endpoint(&config.id, &e.address),
            });
        }
        let pairs: Vec<(&str, u32)> = config
            .endpoints
            .iter()
            .map(|e| (e.address.as_str(), e.weight))
            .collect();
        let hash_on = match &config.load_balancing {
            LoadBalancing::ConsistentHash(h) => Some(h.clone()),
            _ => None,
        };
        let addresses: Vec<&str> = pairs.iter().map(|(a, _)| *a).collect();
        let metrics = &state.metrics;
        Ok(Upstream {
            outlier: state.outlier(&config.id, &config.outlier_detection, &addresses),
            budget: state.budget(&config.id, &config.retries.budget),
            retry: Arc::new(RetryPolicy::new(&config.retries)),
            ejected_gauge: metrics.ejected.with_label_values(&[config.id.as_str()]),
            budget_exhausted: metrics.budget_exhausted.with_label_values(&[config.id.as_str()]),
            metrics: metrics.upstream(&config.id),
            id: config.id.clone(),
            weights: config.endpoints.iter().map(|e| e.weight).collect(),
            balancer: Balancer::new(&config.load_balancing, &pairs),
            endpoints,
            hash_on,
            config: config.clone(),
        })
    }

    /// Picks an endpoint that `usable` allows, among those with weight and passing health
    /// checks.
    pub fn pick(&self, usable: impl Fn(usize) -> bool, key: Option<u64>) -> Option<usize> {
        let eps = &self.endpoints;
        self.balancer.pick(
            &self.weights,
            |i| eps[i].weight > 0 && eps[i].state.healthy.load(Ordering::Relaxed) && usable(i),
            |i| eps[i].state.inflight.load(Ordering::Relaxed),
            key,
        )
    }

    /// Picks the endpoint for one try: one not tried yet and not ejected by outlier
    /// detection, else one not ejected, else any. Ejection is ignored when it would
    /// leave nothing to pick (as `max_ejection_percent` 100 can).
    pub fn pick_for_try(&self, tried: &[usize], key: Option<u64>, now: std::time::Instant) -> Option<usize> {
        let out = &self.outlier;
        self.pick(|i| !tried.contains(&i) && !out.is_ejected(i, now), key)
            .or_else(|| self.pick(|i| !out.is_ejected(i, now), key))
            .or_else(|| self.pick(|i| !tried.contains(&i), key))
            .or_else(|| self.pick(|_| true, key))
    }

    /// A pingora peer for endpoint `index`, with `timeouts` (route over upstream) applied,
    /// each cut to `limit` (the per-try timeout, or what is left of the total).
    pub fn peer(&self, index: usize, timeouts: &Timeouts, limit: Option<Duration>) -> HttpPeer {
        let ep = &self.endpoints[index];
        let c = &self.config;
        let tls = c.tls.is_some();
        let mut peer = HttpPeer::new(ep.addr, tls, ep.sni.clone());
        let o = &mut peer.options;
        let cap = |d: Duration| limit.map_or(d, |l| l.min(d));
        o.connection_timeout = Some(cap(timeouts.connect.unwrap_or(Timeouts::DEFAULT_CONNECT)));
        o.read_timeout = Some(cap(timeouts.read.unwrap_or(Timeouts::DEFAULT_IO)));
        o.write_timeout = Some(cap(timeouts.write.unwrap_or(Timeouts::DEFAULT_IO)));
        o.idle_timeout = Some(if c.keepalive.enabled {
            c.keepalive.idle_timeout
        } else {
            Duration::ZERO
        });
        if let Some(t) = &c.tls {
            o.verify_cert = t.verify;
            o.verify_hostname = t.verify;
        }
        match (c.protocol, tls) {
            (UpstreamProtocol::H2, true) => o.alpn = ALPN::H2,
            (UpstreamProtocol::H2, false) => o.set_http_version(2, 2),
            (UpstreamProtocol::Http1, _) => o.alpn = ALPN::H1,
        }
        peer
    }
}
