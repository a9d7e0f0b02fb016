//! The discovery plane: where each upstream's endpoint set comes from, and how it is
//! swapped on its own.
//!
//! An [`crate::upstream::Upstream`] holds its endpoints in an `ArcSwap<EndpointSet>`.
//! Three feeds swap that set without recompiling routes, the router or the rest of the
//! config:
//! - the config (file or etcd): a config that differs from the serving one only in
//!   upstreams' `endpoints` takes the fast path in [`crate::control::gateway::Gateway::apply`];
//! - the DNS re-resolver ([`dns::run`], on the admin runtime): endpoint host names are
//!   resolved off the request path, re-resolved when their TTL runs out, and a failed
//!   resolution keeps the last good answer;
//! - [`crate::control::gateway::Gateway::set_endpoints`], for feeds such as Kubernetes
//!   EndpointSlices that hand over resolved endpoints.
//!
//! A new set keeps the live state of endpoints that stay (health, ejection, in-flight
//! counts, keyed by (upstream id, `ip:port`)) and their consistent-hash ring points.

pub mod dns;
pub mod priority;
pub mod slow_start;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;
use sluice_config::model::EndpointConfig;

use crate::control::gateway::Gateway;

/// One resolved endpoint, as a feed hands it to [`Gateway::set_endpoints`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// What the endpoint is called: the configured `host:port` (also the TLS server name
    /// and the `Host` of HTTP health checks). Several specs may share it when a name
    /// resolves to several addresses.
    pub address: String,
    /// Where to connect. Its `ip:port` keys the endpoint's live state.
    pub addr: SocketAddr,
    /// Relative weight; 0 drains.
    pub weight: u32,
    /// Priority level (0 = local).
    pub priority: u32,
}

/// `host` and `port` of a validated `host:port` (brackets around an IPv6 host removed).
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host, port.parse().ok()?))
}

/// What the re-resolver knows of one endpoint host name of one upstream.
#[derive(Debug, Clone, Default)]
pub struct NameEntry {
    /// The last good answer (empty until one arrives).
    pub addrs: Vec<IpAddr>,
    /// When the name is due to be resolved again.
    pub due: Option<Instant>,
    /// When the last good answer arrived.
    pub resolved_at: Option<SystemTime>,
    /// The last failure, cleared by the next good answer.
    pub error: Option<String>,
    /// Resolutions so far, good and failed.
    pub lookups: u64,
    /// Whether a resolution is under way.
    pub running: bool,
}

/// The DNS status of one name, for `/api/v1/upstreams`.
#[derive(Debug, Clone, Serialize)]
pub struct NameStatus {
    /// The host name.
    pub host: String,
    /// The addresses in use (the last good answer).
    pub addresses: Vec<String>,
    /// Seconds until the next resolution.
    pub next_refresh_in_s: Option<f64>,
    /// Seconds since the last good answer.
    pub age_s: Option<f64>,
    /// The last failure, if the last resolution failed.
    pub error: Option<String>,
    /// Resolutions so far.
    pub lookups: u64,
}

/// The discovery plane's bookkeeping: the DNS cache of endpoint host names, keyed by
/// (upstream id, host). Read and written off the request path only.
#[derive(Default)]
pub struct Discovery {
    names: Mutex<HashMap<(String, String), NameEntry>>,
    wake: tokio::sync::Notify,
}

impl Discovery {
    /// Resolved specs for an upstream's configured endpoints: IP literals as they are,
    /// host names from the last good DNS answer. A name never resolved yet gives no
    /// endpoint for now; it is registered and the re-resolver is woken, which swaps the
    /// set once an answer comes. Never blocks on DNS.
    pub fn resolve(&self, upstream: &str, configured: &[EndpointConfig]) -> Vec<EndpointSpec> {
        let mut specs = Vec::with_capacity(configured.len());
        let mut names = self.names.lock();
        let mut woke = false;
        for e in configured {
            let Some((host, port)) = split_host_port(&e.address) else {
                continue;
            };
            let spec = |ip: IpAddr| EndpointSpec {
                address: e.address.clone(),
                addr: SocketAddr::new(ip, port),
                weight: e.weight,
                priority: e.priority,
            };
            if let Ok(ip) = host.parse::<IpAddr>() {
                specs.push(spec(ip));
                continue;
            }
            let entry = names
                .entry((upstream.to_string(), host.to_string()))
                .or_insert_with(|| {
                    woke = true;
                    NameEntry::default()
                });
            specs.extend(entry.addrs.iter().map(|&ip| spec(ip)));
        }
        drop(names);
        if woke {
            self.wake.notify_one();
        }
        specs
    }

    /// The DNS status of the names of `upstream`, sorted by host.
    pub fn status(&self, upstream: &str, now: Instant) -> Vec<NameStatus> {
        let names = self.names.lock();
        let mut list: Vec<NameStatus> = names
            .iter()
            .filter(|((u, _), _)| u == upstream)
            .map(|((_, host), e)| NameStatus {
                host: host.clone(),
                addresses: e.addrs.iter().map(ToString::to_string).collect(),
                next_refresh_in_s: e.due.map(|d| d.saturating_duration_since(now).as_secs_f64()),
                age_s: e
                    .resolved_at
                    .and_then(|t| t.elapsed().ok())
                    .map(|d| d.as_secs_f64()),
                error: e.error.clone(),
                lookups: e.lookups,
            })
            .collect();
        list.sort_by(|a, b| a.host.cmp(&b.host));
        list
    }

    /// Forgets names that no serving upstream uses any more.
    fn retain(&self, live: &std::collections::HashSet<(String, String)>) {
        self.names.lock().retain(|k, _| live.contains(k));
    }
}

impl Gateway {
    /// Replaces the endpoints of upstream `upstream_id` with `specs`, for feeds that
    /// resolve endpoints themselves (Kubernetes EndpointSlices). Swaps only that
    /// upstream's endpoint set: routes, the router and the snapshot stay, as do the live
    /// state and ring points of endpoints that stay. Returns whether the set changed.
    /// A later config change that recompiles this upstream or changes its endpoints puts
    /// the configured endpoints back.
    pub fn set_endpoints(&self, upstream_id: &str, specs: Vec<EndpointSpec>) -> Result<bool, String> {
        let snap = self.snapshot();
        let up = snap
            .upstreams
            .get(upstream_id)
            .ok_or_else(|| format!("no upstream {upstream_id:?}"))?;
        if !specs.is_empty() && specs.iter().all(|s| s.weight == 0) {
            return Err(format!(
                "upstream {upstream_id:?}: at least one endpoint needs a weight above 0"
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = specs.iter().find(|s| !seen.insert(s.addr)) {
            return Err(format!(
                "upstream {upstream_id:?}: duplicate endpoint {}",
                dup.addr
            ));
        }
        let changed = up.replace(Vec::new().into(), Some(specs), &self.state, Instant::now());
        if changed {
            self.state.collect_garbage();
        }
        Ok(changed)
    }
}
