//! Upstreams: each holds its endpoint set in an `ArcSwap`, swapped on its own by the
//! discovery plane ([`crate::upstream::discovery`]); the set holds the endpoints with their live
//! state, the balancer and the outlier detector, and picks the endpoint for one try
//! (priority level, then balancer, with slow start). Also: how to build a pingora peer
//! for one endpoint.

pub mod balancer;
pub mod directory;
pub mod discovery;
pub mod health;
pub mod resilience;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use prometheus::{IntCounter, IntGauge};
use sluice_config::model::{
    EndpointConfig, HashOn, LoadBalancing, SlowStartConfig, Timeouts, UpstreamConfig, UpstreamProtocol,
};
use sluice_core::resilience::{OutlierDetector, RetryBudget, RetryPolicy};

use crate::control::state::{Commits, SharedState};
use crate::observe::metrics::UpstreamMetrics;
use crate::upstream::balancer::Balancer;
use crate::upstream::discovery::{priority, slow_start, split_host_port, EndpointSpec};

/// The origin of the ramp timestamps kept in [`EndpointState`].
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Live state of one endpoint, keyed by (upstream id, `ip:port`) so it survives reloads
/// and endpoint-set swaps.
#[derive(Debug)]
pub struct EndpointState {
    /// Requests in flight.
    pub inflight: AtomicUsize,
    /// Requests sent, ever.
    pub requests: AtomicU64,
    /// Result of active health checks (`true` until a check says otherwise).
    pub healthy: AtomicBool,
    /// When the endpoint's slow-start ramp began: nanoseconds after [`ORIGIN`], plus 1;
    /// 0 when it is not ramping.
    ramp_from: AtomicU64,
}

impl Default for EndpointState {
    fn default() -> Self {
        Self {
            inflight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            ramp_from: AtomicU64::new(0),
        }
    }
}

impl EndpointState {
    /// Starts the endpoint's slow-start ramp at `now` (it is new, or healthy again).
    pub fn start_ramp(&self, now: Instant) {
        let nanos = now.saturating_duration_since(*ORIGIN).as_nanos();
        self.ramp_from.store(
            u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1,
            Ordering::Relaxed,
        );
    }

    /// How long the endpoint has been ramping at `now`, if a ramp was started.
    pub fn ramp_elapsed(&self, now: Instant) -> Option<Duration> {
        match self.ramp_from.load(Ordering::Relaxed) {
            0 => None,
            from => {
                let start = *ORIGIN + Duration::from_nanos(from - 1);
                Some(now.saturating_duration_since(start))
            }
        }
    }
}

/// One endpoint of a set.
#[derive(Debug)]
pub struct Endpoint {
    /// Address as configured (`host:port`): what the endpoint is called in the admin API
    /// and the `Host` of HTTP health checks. Shared by every address a name resolves to.
    pub address: String,
    /// `ip:port`: the key of its live state, its outlier entry, its ring points and its
    /// metric label.
    pub key: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// Weight; 0 means drained.
    pub weight: u32,
    /// Priority level (0 = local).
    pub priority: u32,
    /// TLS server name for this endpoint (the upstream's `tls.sni`, else the host).
    pub sni: String,
    /// Live state shared across snapshots and sets.
    pub state: Arc<EndpointState>,
}

/// An immutable endpoint set: what an upstream serves from until the discovery plane
/// swaps in the next one.
#[derive(Debug)]
pub struct EndpointSet {
    /// Endpoints, in config order (a name's addresses sorted).
    pub endpoints: Vec<Endpoint>,
    /// The balancer compiled for these endpoints (ring, weighted order).
    pub balancer: Balancer,
    /// Passive health: outlier ejection, indexed like `endpoints` (state of addresses
    /// that stay carries over to the next set).
    pub outlier: Arc<OutlierDetector>,
    /// The configured endpoints this set was resolved from (empty when a feed such as
    /// [`crate::control::gateway::Gateway::set_endpoints`] gave it).
    pub configured: Arc<[EndpointConfig]>,
    /// The resolved specs it was built from, to tell whether a new answer changes it.
    pub specs: Vec<EndpointSpec>,
    /// Distinct priority levels, ascending.
    levels: Vec<u32>,
    overprovisioning: f64,
    slow_start: Option<SlowStartConfig>,
    /// SplitMix64 state for slow-start admission and priority draws.
    rng: AtomicU64,
}

/// One try of a request: the set it picked from and the endpoint's index there.
#[derive(Debug, Clone)]
pub struct Try {
    /// The set the endpoint was picked from (kept, so a swap mid-request is harmless).
    pub set: Arc<EndpointSet>,
    /// Index into `set.endpoints` (and `set.outlier`).
    pub index: usize,
}

impl Try {
    /// The endpoint tried.
    pub fn endpoint(&self) -> &Endpoint {
        &self.set.endpoints[self.index]
    }
}

impl EndpointSet {
    /// Next pseudo-random number, lock-free.
    fn next_random(&self) -> u64 {
        let mut z = self.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Whether endpoint `i` counts as healthy for priority failover at `now`: its active
    /// health is ok and outlier detection has not ejected it.
    pub fn is_available(&self, i: usize, now: Instant) -> bool {
        self.endpoints[i].state.healthy.load(Ordering::Relaxed) && !self.outlier.is_ejected(i, now)
    }

    /// Each priority level with its share of the traffic in percent (see
    /// [`priority::priority_load`]).
    pub fn priority_loads(&self, now: Instant) -> Vec<(u32, u32)> {
        let counts: Vec<(usize, usize)> = self
            .levels
            .iter()
            .map(|&l| {
                let mut c = (0, 0);
                for (i, e) in self.endpoints.iter().enumerate() {
                    if e.priority == l && e.weight > 0 {
                        c.1 += 1;
                        if self.is_available(i, now) {
                            c.0 += 1;
                        }
                    }
                }
                c
            })
            .collect();
        let load = priority::priority_load(&counts, self.overprovisioning);
        self.levels.iter().copied().zip(load).collect()
    }

    /// The level this try should go to, when there is more than one.
    fn choose_level(&self, now: Instant, key: Option<u64>) -> Option<u32> {
        if self.levels.len() < 2 {
            return None;
        }
        let loads = self.priority_loads(now);
        let shares: Vec<u32> = loads.iter().map(|(_, l)| *l).collect();
        let draw = key.unwrap_or_else(|| self.next_random()) % 100;
        Some(loads[priority::level_for(&shares, draw as u32)].0)
    }

    /// The effective share of its weight endpoint `i` gets at `now`, in `(0, 1]`: below 1
    /// only during a slow-start ramp.
    pub fn slow_start_factor(&self, i: usize, now: Instant) -> f64 {
        match (&self.slow_start, self.endpoints[i].state.ramp_elapsed(now)) {
            (Some(c), Some(elapsed)) => slow_start::factor(c, elapsed),
            _ => 1.0,
        }
    }

    /// Whether a ramping endpoint takes this turn (with probability its factor).
    fn admit(&self, i: usize, now: Instant) -> bool {
        let f = self.slow_start_factor(i, now);
        f >= 1.0 || ((self.next_random() >> 11) as f64 / (1u64 << 53) as f64) < f
    }

    /// Picks an endpoint that `usable` allows, among those with weight and passing
    /// health checks; ramping endpoints take their turns with their slow-start factor.
    pub fn pick(&self, usable: impl Fn(usize) -> bool, key: Option<u64>, now: Instant) -> Option<usize> {
        let eps = &self.endpoints;
        let base = |i: usize| eps[i].weight > 0 && eps[i].state.healthy.load(Ordering::Relaxed) && usable(i);
        let inflight = |i: usize| eps[i].state.inflight.load(Ordering::Relaxed);
        let ramps = self.slow_start.is_some() && !matches!(self.balancer, Balancer::ConsistentHash(_));
        if !ramps {
            return self.balancer.pick(eps.len(), base, inflight, key);
        }
        self.balancer
            .pick(eps.len(), |i| base(i) && self.admit(i, now), inflight, key)
            .or_else(|| self.balancer.pick(eps.len(), base, inflight, key))
    }

    /// Picks the endpoint for one try: in the priority level that failover chooses, one
    /// not tried yet and not ejected; else such an endpoint in the lowest level that has
    /// one; else one not ejected, else any. Ejection is ignored when it would leave
    /// nothing to pick (as `max_ejection_percent` 100 can).
    pub fn pick_for_try(&self, tried: &[Try], key: Option<u64>, now: Instant) -> Option<usize> {
        let eps = &self.endpoints;
        let fresh = |i: usize| {
            !tried
                .iter()
                .any(|t| Arc::ptr_eq(&t.endpoint().state, &eps[i].state))
        };
        let ok = |i: usize| !self.outlier.is_ejected(i, now);
        let level = self.choose_level(now, key);
        let first = self.pick(
            |i| level.is_none_or(|l| eps[i].priority == l) && fresh(i) && ok(i),
            key,
            now,
        );
        first
            .or_else(|| {
                self.levels
                    .iter()
                    .filter(|&&l| Some(l) != level)
                    .find_map(|&l| self.pick(|i| eps[i].priority == l && fresh(i) && ok(i), key, now))
            })
            .or_else(|| self.pick(ok, key, now))
            .or_else(|| self.pick(fresh, key, now))
            .or_else(|| self.pick(|_| true, key, now))
    }
}

/// An upstream: its settings, and its endpoint set behind an `ArcSwap`.
#[derive(Debug)]
pub struct Upstream {
    /// Stable id.
    pub id: String,
    /// The endpoint set. Load it once per try; the discovery plane swaps it.
    pub endpoints: ArcSwap<EndpointSet>,
    /// What the consistent hash is computed from, for `consistent_hash`.
    pub hash_on: Option<HashOn>,
    /// The config it came from, with `endpoints` left out (they live in `endpoints`;
    /// see [`UpstreamConfig::without_endpoints`]).
    pub config: UpstreamConfig,
    /// Caps retries in flight (state kept across reloads).
    pub budget: Arc<RetryBudget>,
    /// The upstream's retry policy (a route's `retries` overrides it).
    pub retry: Arc<RetryPolicy>,
    /// `sluice_endpoints_ejected{upstream}`.
    pub ejected_gauge: IntGauge,
    /// `sluice_retry_budget_exhausted_total{upstream}`.
    pub budget_exhausted: IntCounter,
    /// `sluice_upstream_endpoints{upstream}`.
    pub endpoints_gauge: IntGauge,
    /// Serializes set swaps (config, DNS and feeds), off the request path.
    swap: Mutex<()>,
    /// The upstream's error and ejection counters, resolved at build.
    pub metrics: UpstreamMetrics,
    /// The CAs trusted for this upstream (`tls.ca`), read when it is built; none: the
    /// system's roots.
    pub ca: Option<Arc<pingora::protocols::tls::CaType>>,
    /// Pingora's pool key for connections verified against `ca`: its reuse hash leaves
    /// the CA out, so without this a connection verified with one upstream's CA could be
    /// reused for another upstream at the same address and SNI that trusts another CA.
    ca_group: u64,
    /// The TLS client of an upstream whose certificate is checked against
    /// `tls.subject_alt_names` (pingora checks only the SNI): connections go through it
    /// (see [`crate::l4::upstream_tls::SanConnector`]).
    pub san_tls: Option<Arc<crate::l4::upstream_tls::UpstreamTlsClient>>,
}

/// Reads a PEM file of CA certificates for an upstream's `tls.ca`. A file that cannot be
/// read or holds no usable certificate gives an empty list, which pingora refuses at
/// the handshake (502): a broken CA setting fails closed rather than falling back to the
/// system's roots.
fn ca_group(ca: Option<&pingora::protocols::tls::CaType>) -> u64 {
    use std::hash::{Hash, Hasher};
    let Some(ca) = ca else { return 0 };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for c in ca {
        c.borrow_raw_cert().hash(&mut h);
    }
    // Never 0, which is every peer without a CA of its own.
    h.finish() | 1
}

fn load_ca(id: &str, path: &str) -> Arc<pingora::protocols::tls::CaType> {
    load_ca_pem(id, path, std::fs::read(path).map_err(|e| e.to_string()))
}

/// [`load_ca`] over PEM already read (`tls.ca_pem`), `what` naming it in errors.
fn load_ca_pem(id: &str, path: &str, pem: Result<Vec<u8>, String>) -> Arc<pingora::protocols::tls::CaType> {
    use pingora::utils::tls::{parse_x509, WrappedX509};
    let ders = pem.and_then(|pem| {
        rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    });
    let mut list = Vec::new();
    match ders {
        Ok(ders) => {
            for der in ders {
                // x509-parser (pingora's) panics on DER it cannot parse: let webpki vet it.
                if rustls::RootCertStore::empty().add(der.clone()).is_ok() {
                    list.push(WrappedX509::new(der.to_vec(), parse_x509));
                }
            }
        }
        Err(e) => tracing::error!(upstream = id, "tls.ca {path}: {e}"),
    }
    if list.is_empty() {
        tracing::error!(
            upstream = id,
            "tls.ca {path}: no usable CA certificate; TLS to this upstream will fail"
        );
    }
    list.into()
}

impl Upstream {
    /// Builds an upstream for a config being compiled, taking endpoint state from
    /// `state` so it carries over; what the serving state must learn of it (its budget,
    /// detector, endpoint gauge) goes into `plan`, applied on publish. Never blocks on
    /// DNS: host names come from the discovery plane's last answer (none yet for a new
    /// name: the re-resolver swaps them in when it answers).
    pub fn new(config: &UpstreamConfig, state: &SharedState, plan: &mut Commits) -> Upstream {
        let masked = config.without_endpoints();
        let metrics = &state.metrics;
        let configured: Arc<[EndpointConfig]> = config.endpoints.clone().into();
        let specs = state.discovery.resolve(&config.id, &configured);
        let mut up = Upstream {
            budget: state.budget(&config.id, &config.retries.budget, plan),
            retry: Arc::new(RetryPolicy::new(&config.retries)),
            ejected_gauge: metrics.ejected.with_label_values(&[config.id.as_str()]),
            budget_exhausted: metrics.budget_exhausted.with_label_values(&[config.id.as_str()]),
            endpoints_gauge: metrics
                .upstream_endpoints
                .with_label_values(&[config.id.as_str()]),
            metrics: metrics.upstream(&config.id),
            id: config.id.clone(),
            endpoints: ArcSwap::from_pointee(empty_set(&masked)),
            hash_on: match &config.load_balancing {
                LoadBalancing::ConsistentHash(h) => Some(h.clone()),
                _ => None,
            },
            ca: None,
            ca_group: 0,
            san_tls: None,
            config: masked,
            swap: Mutex::new(()),
        };
        up.ca = config.tls.as_ref().and_then(|t| match (&t.ca, &t.ca_pem) {
            (Some(path), _) => Some(load_ca(&config.id, path)),
            (None, Some(pem)) => Some(load_ca_pem(
                &config.id,
                "tls.ca_pem",
                Ok(pem.clone().into_bytes()),
            )),
            (None, None) => None,
        });
        up.ca_group = ca_group(up.ca.as_deref());
        if let Some(t) = config
            .tls
            .as_ref()
            .filter(|t| t.verify && !t.subject_alt_names.is_empty())
        {
            let alpn: &[&[u8]] = match config.protocol {
                UpstreamProtocol::H2 => &[b"h2"],
                UpstreamProtocol::Http1 => &[b"http/1.1"],
            };
            match crate::l4::upstream_tls::UpstreamTlsClient::new(t, alpn) {
                Ok(c) => up.san_tls = Some(Arc::new(c)),
                Err(e) => {
                    // Fails closed: an empty CA list refuses every handshake.
                    tracing::error!(upstream = %config.id, "tls: {e}; TLS to this upstream will fail");
                    up.ca = Some(Vec::new().into());
                }
            }
            // Connections checked against these SANs are pooled apart from the rest.
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            t.subject_alt_names.hash(&mut h);
            up.ca_group ^= h.finish() | 1;
        }
        let set = up.build_set(configured, specs, state, Instant::now(), Some(&mut *plan));
        plan.gauge(up.endpoints_gauge.clone(), set.endpoints.len() as i64);
        up.endpoints = ArcSwap::from_pointee(set);
        up
    }

    /// A set for these specs, keeping the live state of endpoints that stay. An endpoint
    /// new to a non-empty set starts its slow-start ramp at `now`. With `plan` (a config
    /// being compiled) its outlier detector is published with the config; without (a
    /// live swap) at once.
    pub fn build_set(
        &self,
        configured: Arc<[EndpointConfig]>,
        specs: Vec<EndpointSpec>,
        state: &SharedState,
        now: Instant,
        plan: Option<&mut Commits>,
    ) -> EndpointSet {
        let c = &self.config;
        let previous = self.endpoints.load();
        let endpoints: Vec<Endpoint> = specs
            .iter()
            .map(|s| {
                let key = s.addr.to_string();
                let ep_state = state.endpoint(&self.id, &key);
                if c.slow_start.is_some()
                    && !previous.endpoints.is_empty()
                    && !previous.endpoints.iter().any(|e| e.key == key)
                {
                    ep_state.start_ramp(now);
                }
                let host = split_host_port(&s.address).map_or(s.address.as_str(), |(h, _)| h);
                Endpoint {
                    sni: c
                        .tls
                        .as_ref()
                        .and_then(|t| t.sni.clone())
                        .unwrap_or_else(|| host.to_string()),
                    address: s.address.clone(),
                    addr: s.addr,
                    weight: s.weight,
                    priority: s.priority,
                    state: ep_state,
                    key,
                }
            })
            .collect();
        let pairs: Vec<(&str, u32)> = endpoints.iter().map(|e| (e.key.as_str(), e.weight)).collect();
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| *k).collect();
        let mut levels: Vec<u32> = endpoints.iter().map(|e| e.priority).collect();
        levels.sort_unstable();
        levels.dedup();
        EndpointSet {
            balancer: Balancer::new(&c.load_balancing, &pairs),
            outlier: state.outlier(&self.id, &c.outlier_detection, &keys, plan),
            rng: AtomicU64::new(crate::upstream::balancer::hash_key(self.id.as_bytes())),
            levels,
            overprovisioning: c.overprovisioning_factor,
            slow_start: c.slow_start.clone(),
            endpoints,
            configured,
            specs,
        }
    }

    /// Swaps in the set for `configured` (resolved through the discovery plane) or, with
    /// `specs`, for those specs. Returns whether the set changed.
    pub fn replace(
        &self,
        configured: Arc<[EndpointConfig]>,
        specs: Option<Vec<EndpointSpec>>,
        state: &SharedState,
        now: Instant,
    ) -> bool {
        let _one_at_a_time = self.swap.lock();
        let specs = specs.unwrap_or_else(|| state.discovery.resolve(&self.id, &configured));
        let current = self.endpoints.load();
        if current.specs == specs && *current.configured == *configured {
            return false;
        }
        let set = self.build_set(configured, specs, state, now, None);
        self.endpoints_gauge.set(set.endpoints.len() as i64);
        self.endpoints.store(Arc::new(set));
        true
    }

    /// Rebuilds the set from its configured endpoints and the discovery plane's latest
    /// DNS answers; swaps it only if the resolved endpoints changed.
    pub fn refresh_endpoints(&self, state: &SharedState, now: Instant) -> bool {
        let configured = self.endpoints.load().configured.clone();
        if configured.is_empty() {
            return false;
        }
        self.replace(configured, None, state, now)
    }

    /// A pingora peer for endpoint `ep`, with `timeouts` (route over upstream) applied,
    /// each cut to `limit` (the per-try timeout, or what is left of the total).
    pub fn peer(&self, ep: &Endpoint, timeouts: &Timeouts, limit: Option<Duration>) -> HttpPeer {
        let c = &self.config;
        // With a SAN list the TLS is Sluice's own, under a plain-text peer.
        let tls = c.tls.is_some() && self.san_tls.is_none();
        let mut peer = HttpPeer::new(ep.addr, tls, ep.sni.clone());
        let o = &mut peer.options;
        let cap = |d: Duration| limit.map_or(d, |l| l.min(d));
        o.connection_timeout = Some(cap(timeouts.connect.unwrap_or(Timeouts::DEFAULT_CONNECT)));
        if let Some(client) = &self.san_tls {
            o.custom_l4 = Some(Arc::new(crate::l4::upstream_tls::SanConnector {
                client: client.clone(),
                host: ep.sni.clone(),
                timeout: o.connection_timeout.unwrap_or(Timeouts::DEFAULT_CONNECT),
            }));
            peer.group_key = self.ca_group;
        }
        let o = &mut peer.options;
        o.read_timeout = Some(cap(timeouts.read.unwrap_or(Timeouts::DEFAULT_IO)));
        o.write_timeout = Some(cap(timeouts.write.unwrap_or(Timeouts::DEFAULT_IO)));
        o.idle_timeout = Some(if c.keepalive.enabled {
            c.keepalive.idle_timeout
        } else {
            Duration::ZERO
        });
        if let (Some(t), true) = (&c.tls, tls) {
            o.verify_cert = t.verify;
            o.verify_hostname = t.verify;
            o.ca.clone_from(&self.ca);
            peer.group_key = self.ca_group;
        }
        match (c.protocol, tls) {
            (UpstreamProtocol::H2, true) => o.alpn = ALPN::H2,
            (UpstreamProtocol::H2, false) => o.set_http_version(2, 2),
            (UpstreamProtocol::Http1, _) => o.alpn = ALPN::H1,
        }
        peer
    }
}

/// The set an upstream starts from before its first real one is built.
fn empty_set(config: &UpstreamConfig) -> EndpointSet {
    EndpointSet {
        endpoints: Vec::new(),
        balancer: Balancer::new(&config.load_balancing, &[]),
        outlier: Arc::new(OutlierDetector::new(
            &config.outlier_detection,
            std::iter::empty::<String>(),
            Instant::now(),
        )),
        configured: Vec::new().into(),
        specs: Vec::new(),
        levels: Vec::new(),
        overprovisioning: config.overprovisioning_factor,
        slow_start: None,
        rng: AtomicU64::new(0),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::observe::metrics::Metrics;
    use sluice_config::Config;

    fn upstream(yaml: &str) -> (SharedState, Upstream) {
        let c = Config::from_text(&format!(
            "listeners: [{{name: w, listen: '127.0.0.1:1'}}]\nupstreams: [{yaml}]\nroutes: [{{id: r, upstream: u}}]\n"
        ))
        .unwrap();
        let state = SharedState::new(Arc::new(Metrics::new()));
        let mut plan = Commits::default();
        let up = Upstream::new(&c.upstreams[0], &state, &mut plan);
        plan.apply(&state);
        (state, up)
    }

    fn ep(port: u16, priority: u32) -> EndpointConfig {
        EndpointConfig {
            address: format!("127.0.0.1:{port}"),
            weight: 1,
            priority,
        }
    }

    fn shares(up: &Upstream, picks: usize, now: Instant) -> Vec<usize> {
        let set = up.endpoints.load();
        let mut c = vec![0; set.endpoints.len()];
        for _ in 0..picks {
            c[set.pick_for_try(&[], None, now).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn a_new_endpoint_ramps_up_over_the_slow_start_window() {
        let (state, up) = upstream(
            "{id: u, slow_start: {window: 10s, min_weight_percent: 10}, endpoints: [{address: '127.0.0.1:1'}]}",
        );
        assert_eq!(shares(&up, 100, Instant::now()), [100]);
        let t0 = Instant::now();
        assert!(up.replace(vec![ep(1, 0), ep(2, 0)].into(), None, &state, t0));
        let set = up.endpoints.load();
        assert_eq!(
            set.slow_start_factor(0, t0),
            1.0,
            "the endpoint that stays does not ramp"
        );
        assert_eq!(set.slow_start_factor(1, t0), 0.1);
        // The new endpoint takes its turn with probability f (0.1, then 0.5, then 1) and
        // passes it on otherwise, which gives it the share of an effective weight f next
        // to weight 1: f / (1 + f).
        let at_start = shares(&up, 2000, t0)[1];
        assert!(
            (130..=235).contains(&at_start),
            "about 9% (0.1 / 1.1): {at_start}"
        );
        let halfway = shares(&up, 2000, t0 + Duration::from_secs(5))[1];
        assert!((590..=740).contains(&halfway), "about 33% (0.5 / 1.5): {halfway}");
        assert_eq!(shares(&up, 2000, t0 + Duration::from_secs(10)), [1000, 1000]);
    }

    #[test]
    fn without_slow_start_a_new_endpoint_gets_its_full_share_at_once() {
        let (state, up) = upstream("{id: u, endpoints: [{address: '127.0.0.1:1'}]}");
        let t0 = Instant::now();
        up.replace(vec![ep(1, 0), ep(2, 0)].into(), None, &state, t0);
        assert_eq!(shares(&up, 1000, t0), [500, 500]);
    }

    #[test]
    fn traffic_spills_to_the_next_priority_as_the_local_one_loses_health() {
        let (_state, up) = upstream(
            "{id: u, endpoints: [{address: '127.0.0.1:1'}, {address: '127.0.0.1:2'}, {address: '127.0.0.1:3', priority: 1}]}",
        );
        let now = Instant::now();
        assert_eq!(shares(&up, 1000, now), [500, 500, 0], "all local while healthy");
        let set = up.endpoints.load();
        set.endpoints[0].state.healthy.store(false, Ordering::Relaxed);
        assert_eq!(set.priority_loads(now), [(0, 70), (1, 30)]);
        let half = shares(&up, 2000, now);
        assert_eq!(half[0], 0);
        assert!((450..=750).contains(&half[2]), "about 30% remote: {half:?}");
        set.endpoints[1].state.healthy.store(false, Ordering::Relaxed);
        assert_eq!(shares(&up, 1000, now), [0, 0, 1000], "all remote");
        set.endpoints[0].state.healthy.store(true, Ordering::Relaxed);
        set.endpoints[1].state.healthy.store(true, Ordering::Relaxed);
        assert_eq!(shares(&up, 1000, now), [500, 500, 0], "and back");
    }

    #[test]
    fn a_retry_skips_the_endpoint_it_tried_even_across_a_swap() {
        let (state, up) =
            upstream("{id: u, endpoints: [{address: '127.0.0.1:1'}, {address: '127.0.0.1:2'}]}");
        let now = Instant::now();
        let set = up.endpoints.load_full();
        let first = set.pick_for_try(&[], None, now).unwrap();
        let tried = [Try { set, index: first }];
        let key = tried[0].endpoint().key.clone();
        // The set is swapped (reordered) between the two tries.
        up.replace(vec![ep(3, 0), ep(2, 0), ep(1, 0)].into(), None, &state, now);
        let set = up.endpoints.load();
        for _ in 0..10 {
            let i = set.pick_for_try(&tried, None, now).unwrap();
            assert_ne!(set.endpoints[i].key, key);
        }
    }
}
