//! The compiled L4 part of a snapshot: per listener, the route for a TCP or UDP
//! connection, the routes of a TLS listener by SNI, and the client-certificate settings
//! by SNI. Built off the request path with the rest of the snapshot; a listener whose
//! routes and settings did not change keeps its compiled plan (and so the TLS
//! acceptors the listener built for it).

use std::collections::HashMap;
use std::sync::Arc;

use sluice_config::l4::{L4RouteConfig, L4TlsMode, ListenerProtocol};
use sluice_config::{Config, ConfigError};
use sluice_core::weighted::WeightedSequence;

use super::client_auth::ClientAuth;
use super::upstream_tls::UpstreamTlsClient;
use crate::upstream::Upstream;

/// What an L4 route does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes of a TCP connection, both ways.
    Tcp,
    /// Datagrams of a UDP session, both ways.
    Udp,
    /// A TLS connection spliced as it came (routed by its ClientHello's SNI).
    Passthrough,
    /// A TLS connection terminated here, its plain bytes sent on.
    Terminate,
}

impl Mode {
    /// The label in metrics and the access log's `method` (`TCP`, `UDP`, `TLS`,
    /// `TLS-TERMINATE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Tcp => "tcp",
            Mode::Udp => "udp",
            Mode::Passthrough => "tls_passthrough",
            Mode::Terminate => "tls_terminate",
        }
    }
}

/// One compiled L4 route.
pub struct L4Route {
    /// Stable id (metrics, access log).
    pub id: String,
    /// What it does.
    pub mode: Mode,
    /// The upstreams, with the weighted order new connections follow.
    pub backends: Vec<Arc<Upstream>>,
    /// The TLS client of each upstream with `tls`, parallel to `backends`.
    pub tls: Vec<Option<Arc<UpstreamTlsClient>>>,
    split: WeightedSequence,
}

impl std::fmt::Debug for L4Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L4Route")
            .field("id", &self.id)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl L4Route {
    /// The upstream for a new connection (UDP: session): the next in weighted order
    /// whose endpoint set is not empty, else the next in order.
    pub fn pick(&self) -> Option<usize> {
        self.split
            .pick(|i| !self.backends[i].endpoints.load().endpoints.is_empty())
            .or_else(|| self.split.next())
    }
}

/// Names to values: exact names first, then the longest matching `*.` wildcard.
#[derive(Debug)]
pub struct HostTable<T> {
    exact: HashMap<String, T>,
    /// `(".example.com", value)`, longest suffix first.
    wildcard: Vec<(String, T)>,
}

impl<T> Default for HostTable<T> {
    fn default() -> Self {
        HostTable {
            exact: HashMap::new(),
            wildcard: Vec::new(),
        }
    }
}

impl<T: Clone> HostTable<T> {
    /// Adds `pattern` (exact or `*.`) unless it is there already (the first wins).
    pub fn insert(&mut self, pattern: &str, value: T) {
        let p = pattern.to_ascii_lowercase();
        match p.strip_prefix('*') {
            Some(suffix) => {
                if !self.wildcard.iter().any(|(s, _)| s == suffix) {
                    self.wildcard.push((suffix.to_string(), value));
                    self.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
                }
            }
            None => {
                self.exact.entry(p).or_insert(value);
            }
        }
    }

    /// The value for `name` (lower-case already), if a pattern matches.
    pub fn get(&self, name: &str) -> Option<&T> {
        self.exact.get(name).or_else(|| {
            self.wildcard
                .iter()
                .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
                .map(|(_, v)| v)
        })
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

/// Client-certificate settings of a TLS listener, by SNI.
#[derive(Debug, Default)]
pub struct ClientAuthTable {
    /// For names no entry of `by_name` takes (and no SNI).
    pub default: Option<Arc<ClientAuth>>,
    /// Per name.
    pub by_name: HostTable<Arc<ClientAuth>>,
}

impl ClientAuthTable {
    /// The settings for a ClientHello with `sni`.
    pub fn for_name(&self, sni: Option<&str>) -> Option<&Arc<ClientAuth>> {
        sni.and_then(|n| self.by_name.get(n)).or(self.default.as_ref())
    }

    /// Every distinct setting, the default first.
    pub fn all(&self) -> Vec<&Arc<ClientAuth>> {
        let mut out: Vec<&Arc<ClientAuth>> = Vec::new();
        let by_name = self
            .by_name
            .exact
            .values()
            .chain(self.by_name.wildcard.iter().map(|(_, v)| v));
        for a in self.default.iter().chain(by_name) {
            if !out.iter().any(|b| Arc::ptr_eq(a, b)) {
                out.push(a);
            }
        }
        out
    }
}

/// The compiled L4 plan of one listener.
#[derive(Debug)]
pub struct ListenerPlan {
    /// The listener's name.
    pub name: String,
    /// What it speaks.
    pub protocol: ListenerProtocol,
    /// `tcp` and `udp`: the route; `tls`: the route for names no entry of `by_name`
    /// takes (and for no SNI).
    pub default: Option<Arc<L4Route>>,
    /// TLS and HTTPS listeners: routes by SNI.
    pub by_name: HostTable<Arc<L4Route>>,
    /// TLS and HTTPS listeners: client certificates by SNI.
    pub client_auth: ClientAuthTable,
    /// Content hash of what it was compiled from, to reuse it.
    hash: String,
}

impl ListenerPlan {
    /// The route a TLS connection with `sni` takes, if any (`None` on an HTTPS
    /// listener: served as HTTPS).
    pub fn route_for(&self, sni: Option<&str>) -> Option<&Arc<L4Route>> {
        sni.and_then(|n| self.by_name.get(n)).or(self.default.as_ref())
    }
}

/// The L4 plan of a snapshot.
#[derive(Debug, Default)]
pub struct L4Plan {
    /// By listener name: every `tcp`, `udp` and `tls` listener, and every HTTPS one.
    pub listeners: HashMap<String, Arc<ListenerPlan>>,
}

impl L4Plan {
    /// The plan of listener `name`.
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerPlan>> {
        self.listeners.get(name)
    }
}

/// What a listener's plan is compiled from, hashed to tell whether it changed: the
/// listener, its routes with their upstreams' settings, and the client-certificate
/// policies that apply to it.
fn listener_hash(c: &Config, name: &str, routes: &[&L4RouteConfig]) -> String {
    let listener = c.listeners.iter().find(|l| l.name == name);
    let policies: Vec<_> = c.client_auth.iter().filter(|a| a.serves_on(name)).collect();
    sluice_config::validate::hash_of(&(listener, routes, policies))
}

/// Compiles the L4 plan of `config` (validated) against the snapshot's `upstreams`,
/// reusing from `previous` every listener plan whose inputs and upstreams did not
/// change. Errors (a CA that does not load) name their field path.
pub fn compile(
    config: &Config,
    upstreams: &HashMap<String, Arc<Upstream>>,
    previous: Option<&L4Plan>,
) -> Result<L4Plan, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut plan = L4Plan::default();
    for l in &config.listeners {
        let l4 = matches!(
            l.protocol,
            ListenerProtocol::Tcp | ListenerProtocol::Udp | ListenerProtocol::Tls
        ) || l.tls.is_some();
        if !l4 {
            continue;
        }
        let routes: Vec<(usize, &L4RouteConfig)> = config
            .l4_routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.listeners.contains(&l.name))
            .collect();
        let route_configs: Vec<&L4RouteConfig> = routes.iter().map(|(_, r)| *r).collect();
        let hash = listener_hash(config, &l.name, &route_configs);
        let same_upstreams = |p: &ListenerPlan| {
            let used = p
                .default
                .iter()
                .chain(p.by_name.exact.values())
                .chain(p.by_name.wildcard.iter().map(|(_, r)| r));
            used.flat_map(|r| r.backends.iter())
                .all(|u| upstreams.get(&u.id).is_some_and(|n| Arc::ptr_eq(n, u)))
        };
        if let Some(old) = previous
            .and_then(|p| p.listeners.get(&l.name))
            .filter(|p| p.hash == hash && same_upstreams(p))
        {
            plan.listeners.insert(l.name.clone(), old.clone());
            continue;
        }
        let mut lp = ListenerPlan {
            name: l.name.clone(),
            protocol: l.protocol,
            default: None,
            by_name: HostTable::default(),
            client_auth: ClientAuthTable::default(),
            hash,
        };
        for (i, r) in routes {
            let mode = match (l.protocol, r.tls) {
                (ListenerProtocol::Tcp, _) => Mode::Tcp,
                (ListenerProtocol::Udp, _) => Mode::Udp,
                (_, Some(L4TlsMode::Terminate)) => Mode::Terminate,
                _ => Mode::Passthrough,
            };
            let mut backends = Vec::new();
            let mut tls = Vec::new();
            let mut weights = Vec::new();
            for (k, b) in r.backend_list().iter().enumerate() {
                match upstreams.get(&b.upstream) {
                    Some(u) => {
                        let client = match (&u.config.tls, mode) {
                            (Some(t), Mode::Tcp | Mode::Terminate) => match UpstreamTlsClient::new(t, &[]) {
                                Ok(c) => Some(Arc::new(c)),
                                Err(e) => {
                                    let i = config.upstreams.iter().position(|x| x.id == u.id).unwrap_or(0);
                                    errors.push(ConfigError {
                                        path: format!("upstreams[{i}].tls"),
                                        message: e,
                                    });
                                    None
                                }
                            },
                            _ => None,
                        };
                        backends.push(u.clone());
                        tls.push(client);
                        weights.push(b.weight);
                    }
                    None => errors.push(ConfigError {
                        path: format!("l4_routes[{i}].backends[{k}].upstream"),
                        message: format!("no upstream {:?}", b.upstream),
                    }),
                }
            }
            let route = Arc::new(L4Route {
                id: r.id.clone(),
                mode,
                split: WeightedSequence::new(&weights),
                backends,
                tls,
            });
            if r.server_names.is_empty() {
                lp.default.get_or_insert(route);
            } else {
                for n in &r.server_names {
                    lp.by_name.insert(n, route.clone());
                }
            }
        }
        if let Some(tls) = &l.tls {
            if let Some(ca) = &tls.client_auth {
                let path = format!("listeners[{}].tls.client_auth", index_of(config, &l.name));
                match ClientAuth::new(ca, &path) {
                    Ok(a) => lp.client_auth.default = Some(Arc::new(a)),
                    Err(e) => errors.push(e),
                }
            }
        }
        for (i, a) in config.client_auth.iter().enumerate() {
            if !a.serves_on(&l.name) {
                continue;
            }
            let path = format!("client_auth[{i}].validation");
            let auth = match ClientAuth::new(&a.validation, &path) {
                Ok(x) => Arc::new(x),
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if a.server_names.is_empty() {
                lp.client_auth.default = Some(auth);
            } else {
                for n in &a.server_names {
                    lp.client_auth.by_name.insert(n, auth.clone());
                }
            }
        }
        plan.listeners.insert(l.name.clone(), Arc::new(lp));
    }
    if errors.is_empty() {
        Ok(plan)
    } else {
        Err(errors)
    }
}

fn index_of(c: &Config, name: &str) -> usize {
    c.listeners.iter().position(|l| l.name == name).unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_win_over_wildcards_and_longer_wildcards_over_shorter() {
        let mut t = HostTable::default();
        t.insert("*.example.com", 1);
        t.insert("*.db.example.com", 2);
        t.insert("Exact.DB.example.com", 3);
        t.insert("*.example.com", 9);
        assert_eq!(t.get("exact.db.example.com"), Some(&3));
        assert_eq!(t.get("a.db.example.com"), Some(&2));
        assert_eq!(t.get("a.b.example.com"), Some(&1));
        assert_eq!(t.get("example.com"), None);
        assert_eq!(t.get("db.example.com"), Some(&1));
    }
}
