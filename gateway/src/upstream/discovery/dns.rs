//! The DNS re-resolver, on the admin runtime.
//!
//! Every 200 ms (or at once, when a compile registers a new name) it walks the serving
//! upstreams' configured endpoint host names and resolves those that are due, one lookup
//! per name at a time. A good answer is kept for its TTL clamped to the upstream's
//! `[dns.min_refresh, dns.refresh]`; when it differs from the last one the upstream's
//! endpoint set is rebuilt and swapped (state of addresses that stay is kept). A failed
//! lookup keeps the last good answer and is retried after `dns.retry`. Nothing here runs
//! on the request path.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hickory_resolver::config::{NameServerConfig, NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Resolver, TokioResolver};
use sluice_config::model::UpstreamDnsConfig;

use super::split_host_port;
use crate::control::gateway::Gateway;

/// How often the loop looks for due names.
const TICK: Duration = Duration::from_millis(200);

/// A resolver for these name servers (none: the system's `/etc/resolv.conf`).
fn build(nameservers: &[SocketAddr]) -> Result<TokioResolver, String> {
    if nameservers.is_empty() {
        return Resolver::builder_tokio()
            .map(|b| b.build())
            .map_err(|e| format!("system DNS config: {e}"));
    }
    let group: NameServerConfigGroup = nameservers
        .iter()
        .map(|&a| NameServerConfig::new(a, Protocol::Udp))
        .collect::<Vec<_>>()
        .into();
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 1;
    Ok(Resolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], group),
        TokioConnectionProvider::default(),
    )
    .with_options(opts)
    .build())
}

/// Runs the re-resolver until the process ends.
pub async fn run(gateway: Arc<Gateway>) {
    let mut resolver: Option<(Vec<SocketAddr>, Arc<TokioResolver>)> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let discovery = &gateway.state.discovery;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = discovery.wake.notified() => {}
        }
        let snap = gateway.snapshot();
        let servers = &snap.config.dns.nameservers;
        if resolver.as_ref().is_none_or(|(s, _)| s != servers) {
            match build(servers) {
                Ok(r) => resolver = Some((servers.clone(), Arc::new(r))),
                Err(e) => {
                    tracing::warn!("DNS resolver: {e}");
                    continue;
                }
            }
        }
        let Some((_, r)) = &resolver else { continue };
        let now = Instant::now();
        let mut live = HashSet::new();
        for up in snap.upstreams.values() {
            let set = up.endpoints.load();
            for e in set.configured.iter() {
                let Some((host, _)) = split_host_port(&e.address) else {
                    continue;
                };
                if host.parse::<IpAddr>().is_ok() {
                    continue;
                }
                let key = (up.id.clone(), host.to_string());
                if !live.insert(key.clone()) {
                    continue;
                }
                let mut names = discovery.names.lock();
                let entry = names.entry(key.clone()).or_default();
                if entry.running || entry.due.is_some_and(|d| d > now) {
                    continue;
                }
                entry.running = true;
                drop(names);
                tokio::spawn(lookup(gateway.clone(), r.clone(), key, up.config.dns.clone()));
            }
        }
        discovery.retain(&live);
    }
}

/// Resolves one name and swaps its upstream's endpoint set if the answer changed.
async fn lookup(
    gateway: Arc<Gateway>,
    resolver: Arc<TokioResolver>,
    key: (String, String),
    dns: UpstreamDnsConfig,
) {
    let result = resolver.lookup_ip(key.1.as_str()).await;
    let now = Instant::now();
    let changed = {
        let mut names = gateway.state.discovery.names.lock();
        let Some(e) = names.get_mut(&key) else { return };
        e.running = false;
        e.lookups += 1;
        let answer = result.map_err(|err| err.to_string()).and_then(|l| {
            let mut addrs: Vec<IpAddr> = l.iter().collect();
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                Err("no address in the answer".to_string())
            } else {
                Ok((addrs, l.valid_until().saturating_duration_since(now)))
            }
        });
        match answer {
            Ok((addrs, ttl)) => {
                e.due = Some(now + ttl.clamp(dns.min_refresh, dns.refresh));
                e.error = None;
                e.resolved_at = Some(SystemTime::now());
                let changed = e.addrs != addrs;
                e.addrs = addrs;
                changed
            }
            Err(err) => {
                if e.error.is_none() {
                    tracing::warn!(upstream = %key.0, host = %key.1, error = %err, "DNS resolution failed; keeping the last good answer");
                }
                e.error = Some(err);
                e.due = Some(now + dns.retry);
                false
            }
        }
    };
    if changed {
        let snap = gateway.snapshot();
        if let Some(up) = snap.upstreams.get(&key.0) {
            if up.refresh_endpoints(&gateway.state, now) {
                tracing::info!(upstream = %key.0, host = %key.1, "DNS answer changed; endpoint set swapped");
                gateway.state.collect_garbage();
            }
        }
    }
}
