//! The L4 part of the model: what a listener speaks (`protocol`), its L4 limits, the
//! `l4_routes` that send TCP, UDP and TLS connections to upstreams, and TLS at the
//! edges of a connection: client certificates on a listener (`client_auth`) and the
//! names an upstream's certificate must carry (`subject_alt_names`).
//!
//! ```yaml
//! listeners:
//!   - {name: pg, listen: "0.0.0.0:5432", protocol: tcp}
//!   - {name: dns, listen: "0.0.0.0:5353", protocol: udp, l4: {idle_timeout: 30s}}
//!   - name: https            # HTTPS, and TLS passthrough by SNI on the same port
//!     listen: "0.0.0.0:8443"
//!     tls:
//!       certificates: [{cert: /etc/sluice/web.pem, key: /etc/sluice/web.key}]
//!       client_auth: {ca: /etc/sluice/clients-ca.pem, mode: optional}
//! l4_routes:
//!   - {id: pg, listeners: [pg], upstream: pg}
//!   - {id: dns, listeners: [dns], backends: [{upstream: dns-a, weight: 9}, {upstream: dns-b}]}
//!   - {id: vault, listeners: [https], server_names: [vault.example.com], tls: passthrough, upstream: vault}
//! ```
//!
//! Every check that involves more than one field is in [`validate`], which the one
//! validation path ([`crate::Config::validate`]) calls.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{BackendConfig, ListenerConfig};
use crate::validate::{is_valid_host_pattern, is_valid_id, ConfigError};
use crate::Config;

/// What a listener speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 (HTTPS with `tls`), served by `routes`. With `tls`, the
    /// listener also takes `l4_routes` by SNI (passthrough or terminate) on the same
    /// port. The default.
    #[default]
    Http,
    /// Raw TCP: each connection goes to the one `l4_route` of the listener.
    Tcp,
    /// UDP datagrams: a session per client address relays them to the one `l4_route`
    /// of the listener and back.
    Udp,
    /// TLS connections routed by SNI to `l4_routes`, either spliced as they are
    /// (`passthrough`) or terminated with the listener's certificates and sent on as TCP
    /// (`terminate`). A ClientHello that matches no route closes the connection.
    Tls,
}

impl ListenerProtocol {
    /// The name written in config (`http`, `tcp`, `udp`, `tls`).
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Http => "http",
            ListenerProtocol::Tcp => "tcp",
            ListenerProtocol::Udp => "udp",
            ListenerProtocol::Tls => "tls",
        }
    }
}

/// A listener's L4 settings: for `tcp`, `udp` and `tls` listeners, and for the
/// passthrough connections of an HTTPS listener.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct L4ListenerConfig {
    /// A connection (UDP: a client session) with no byte in either direction for this
    /// long is closed. Default: `1h` for TCP and TLS (Envoy's `tcp_proxy` default),
    /// `60s` for UDP sessions.
    #[schemars(with = "Option<crate::schema::DurationText>")]
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Connections (UDP: client sessions) open at once; one past the cap is closed at
    /// accept (UDP: its datagrams are dropped) and counted. Default: `10000`.
    pub max_connections: Option<u32>,
    /// How long a client on a TLS listener (or an HTTPS listener's passthrough) may
    /// take to send its ClientHello. Default: `10s`.
    #[schemars(with = "Option<crate::schema::DurationText>")]
    #[serde(with = "humantime_serde")]
    pub hello_timeout: Option<Duration>,
}

impl L4ListenerConfig {
    /// Whether every field is unset (left out when serialized).
    pub fn is_default(&self) -> bool {
        *self == L4ListenerConfig::default()
    }
}

/// Whether `p` is `http` (left out when serialized).
pub fn is_http(p: &ListenerProtocol) -> bool {
    *p == ListenerProtocol::Http
}

/// The L4 settings of a listener with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedL4 {
    /// See [`L4ListenerConfig::idle_timeout`].
    pub idle_timeout: Duration,
    /// See [`L4ListenerConfig::max_connections`].
    pub max_connections: u32,
    /// See [`L4ListenerConfig::hello_timeout`].
    pub hello_timeout: Duration,
}

impl L4ListenerConfig {
    /// Default idle timeout of TCP and TLS connections: 1 hour.
    pub const DEFAULT_TCP_IDLE: Duration = Duration::from_secs(3600);
    /// Default idle timeout of UDP sessions: 60 seconds.
    pub const DEFAULT_UDP_IDLE: Duration = Duration::from_secs(60);
    /// Default cap on connections or sessions: 10000.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
    /// Default ClientHello timeout: 10 seconds.
    pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

    /// These settings with the defaults for `protocol` filled in.
    pub fn resolve(&self, protocol: ListenerProtocol) -> ResolvedL4 {
        let idle = match protocol {
            ListenerProtocol::Udp => Self::DEFAULT_UDP_IDLE,
            _ => Self::DEFAULT_TCP_IDLE,
        };
        ResolvedL4 {
            idle_timeout: self.idle_timeout.unwrap_or(idle),
            max_connections: self.max_connections.unwrap_or(Self::DEFAULT_MAX_CONNECTIONS),
            hello_timeout: self.hello_timeout.unwrap_or(Self::DEFAULT_HELLO_TIMEOUT),
        }
    }
}

/// What an `l4_route` does with the TLS of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum L4TlsMode {
    /// Leave TLS alone: the ClientHello's SNI picks the route and the bytes are
    /// spliced to the upstream as they came (the upstream holds the certificate).
    Passthrough,
    /// Terminate TLS with the listener's certificates (and its `client_auth`), then
    /// send the plain bytes to the upstream over TCP (or over TLS when the upstream has
    /// `tls`).
    Terminate,
}

impl L4TlsMode {
    /// The name written in config.
    pub fn as_str(self) -> &'static str {
        match self {
            L4TlsMode::Passthrough => "passthrough",
            L4TlsMode::Terminate => "terminate",
        }
    }
}

/// An L4 route: which listeners' connections (and, on TLS, which SNI names) go to which
/// upstreams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct L4RouteConfig {
    /// Unique, stable id: the `route` of access-log records and metrics. Required.
    pub id: String,
    /// The listeners it serves, by name: `tcp` and `udp` listeners (one route each),
    /// `tls` listeners, and HTTPS listeners (`http` with `tls`, for SNI names that are
    /// then not served as HTTP). Required, at least one.
    pub listeners: Vec<String>,
    /// SNI names it takes on TLS and HTTPS listeners: exact (`db.example.com`) or a
    /// leading wildcard (`*.example.com`), compared case-insensitively; an exact name
    /// wins over a wildcard, and a longer wildcard over a shorter one. Empty on a `tls`
    /// listener: every name (and a ClientHello without SNI) that no other route takes.
    /// Not allowed on `tcp` and `udp` listeners. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    /// What to do with TLS: `passthrough` or `terminate`. Required on TLS and HTTPS
    /// listeners, not allowed on `tcp` and `udp` ones. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<L4TlsMode>,
    /// Upstream id: the shorthand for one backend of weight 1. Give `upstream` or
    /// `backends`, not both. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Weighted upstreams: each new connection (UDP: session) picks one by weight
    /// (smooth weighted round robin), then an endpoint of it through its balancer,
    /// health and priorities. Default: none (see `upstream`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendConfig>,
}

impl L4RouteConfig {
    /// The route's backends: `backends`, or `upstream` as one backend of weight 1.
    pub fn backend_list(&self) -> Vec<BackendConfig> {
        match &self.upstream {
            Some(u) if self.backends.is_empty() => vec![BackendConfig {
                upstream: u.clone(),
                weight: 1,
            }],
            _ => self.backends.clone(),
        }
    }
}

/// Client certificates a TLS listener asks for and how it verifies them (nginx's
/// `ssl_verify_client`, the Gateway API's frontend `validation`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// PEM file of the CA certificates client certificates must chain to. Give `ca` or
    /// `ca_pem`, not both. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The same CA certificates inline, in PEM (what the Kubernetes source gives from a
    /// ConfigMap or Secret). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Whether a certificate is required. Default: `require`.
    #[serde(default)]
    pub mode: ClientAuthMode,
    /// The longest chain accepted: `1` takes certificates the CA signed directly, `2`
    /// one intermediate more, and so on (nginx's `ssl_verify_depth`, counted on the
    /// intermediates the client sends). Default: `1` (nginx's default).
    #[serde(default = "default_depth")]
    pub verify_depth: u8,
    /// Also send the client's certificate itself upstream, URL-encoded PEM in
    /// `x-client-cert` (nginx's `$ssl_client_escaped_cert`). The subject, SANs,
    /// fingerprint and verification result always go (`x-client-cert-*`). Default:
    /// `false`.
    #[serde(default)]
    pub forward_certificate: bool,
}

fn default_depth() -> u8 {
    1
}

/// How a listener treats client certificates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    /// A client without a valid certificate fails the handshake. The default (the
    /// Gateway API's `AllowValidOnly`, nginx's `on`).
    #[default]
    Require,
    /// A client may send no certificate; one it sends must be valid (nginx's
    /// `optional`).
    Optional,
    /// Any certificate, or none, is let through; only a valid one is an identity, and
    /// `x-client-cert-verify` says which it was (the Gateway API's
    /// `AllowInsecureFallback`, nginx's `optional_no_ca`).
    AllowInvalid,
}

impl ClientAuthMode {
    /// The name written in config.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMode::Require => "require",
            ClientAuthMode::Optional => "optional",
            ClientAuthMode::AllowInvalid => "allow_invalid",
        }
    }
}

/// Client-certificate settings for some SNI names of some listeners: the top-level
/// `client_auth` list, which sources such as Kubernetes (the Gateway's frontend
/// validation, per port) publish, and which a file may use for per-host settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthPolicy {
    /// Unique name, `[A-Za-z0-9._-]`. Required.
    pub name: String,
    /// The TLS listeners it applies to, by name. Default: none, meaning every TLS
    /// listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<String>,
    /// The SNI names it applies to (exact or `*.` wildcard). Default: none, meaning
    /// every name: the listener's default, over its own `tls.client_auth`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    /// The verification. Required.
    pub validation: ClientAuthConfig,
}

impl ClientAuthPolicy {
    /// Whether listener `name` takes it.
    pub fn serves_on(&self, name: &str) -> bool {
        self.listeners.is_empty() || self.listeners.iter().any(|l| l == name)
    }
}

/// A name the upstream's certificate must carry (the Gateway API's BackendTLSPolicy
/// `subjectAltNames`): `{dns: name}` or `{uri: uri}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SubjectAltName {
    /// A DNS name (`*.` wildcards in the certificate match as usual).
    Dns(String),
    /// A URI, such as a SPIFFE id, compared exactly.
    Uri(String),
}

/// Whether `name` is a listener that speaks TLS (HTTPS, or `tls`).
fn tls_listener(l: &ListenerConfig) -> bool {
    l.tls.is_some() || l.protocol == ListenerProtocol::Tls
}

fn check_ca(p: &str, ca: &ClientAuthConfig, errors: &mut Vec<ConfigError>) {
    let mut err = |path: String, message: &str| {
        errors.push(ConfigError {
            path,
            message: message.into(),
        })
    };
    match (&ca.ca, &ca.ca_pem) {
        (None, None) => err(format!("{p}.ca"), "give `ca` (a PEM file) or `ca_pem`"),
        (Some(_), Some(_)) => err(format!("{p}.ca_pem"), "give `ca` or `ca_pem`, not both"),
        (None, Some(pem)) if !pem.contains("-----BEGIN CERTIFICATE-----") => {
            err(format!("{p}.ca_pem"), "needs a PEM CERTIFICATE block")
        }
        _ => {}
    }
    if ca.verify_depth == 0 {
        err(format!("{p}.verify_depth"), "must be at least 1");
    }
}

fn push(errors: &mut Vec<ConfigError>, path: String, message: String) {
    errors.push(ConfigError { path, message });
}

/// Checks the L4 parts of `c` (listener protocols and L4 settings, `l4_routes`,
/// `client_auth`, upstream SANs), with field paths.
pub fn validate(c: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let listeners: HashMap<&str, &ListenerConfig> =
        c.listeners.iter().map(|l| (l.name.as_str(), l)).collect();
    let upstreams: HashMap<&str, &crate::model::UpstreamConfig> =
        c.upstreams.iter().map(|u| (u.id.as_str(), u)).collect();

    for (i, l) in c.listeners.iter().enumerate() {
        let p = format!("listeners[{i}]");
        match l.protocol {
            ListenerProtocol::Tcp | ListenerProtocol::Udp if l.tls.is_some() => push(&mut errors,
                format!("{p}.tls"),
                format!(
                    "a {} listener does not terminate TLS: use protocol `tls` with `l4_routes` in `terminate` mode",
                    l.protocol.as_str()
                ),
            ),
            _ => {}
        }
        let r = &l.l4;
        if r.idle_timeout.is_some_and(|d| d.is_zero()) {
            push(
                &mut errors,
                format!("{p}.l4.idle_timeout"),
                "must be above 0".into(),
            );
        }
        if r.max_connections == Some(0) {
            push(
                &mut errors,
                format!("{p}.l4.max_connections"),
                "must be at least 1".into(),
            );
        }
        if r.hello_timeout.is_some_and(|d| d.is_zero()) {
            push(
                &mut errors,
                format!("{p}.l4.hello_timeout"),
                "must be above 0".into(),
            );
        }
        if let Some(ca) = l.tls.as_ref().and_then(|t| t.client_auth.as_ref()) {
            check_ca(&format!("{p}.tls.client_auth"), ca, &mut errors);
        }
    }

    // Routes: references, and what each kind of listener allows.
    let mut ids = HashSet::new();
    // (listener, lower-cased name or "" for catch-all) -> the route path that took it.
    let mut taken: HashMap<(&str, String), String> = HashMap::new();
    for (i, r) in c.l4_routes.iter().enumerate() {
        let p = format!("l4_routes[{i}]");
        if !is_valid_id(&r.id) {
            push(
                &mut errors,
                format!("{p}.id"),
                format!("invalid id {:?}: use 1-128 of [A-Za-z0-9._-]", r.id),
            );
        } else if !ids.insert(r.id.as_str()) {
            push(&mut errors, format!("{p}.id"), format!("duplicate id {:?}", r.id));
        }
        if r.listeners.is_empty() {
            push(
                &mut errors,
                format!("{p}.listeners"),
                "name at least one listener".into(),
            );
        }
        for (k, n) in r.server_names.iter().enumerate() {
            if !is_valid_host_pattern(n) {
                push(
                    &mut errors,
                    format!("{p}.server_names[{k}]"),
                    format!("invalid server name {n:?}"),
                );
            }
        }
        let backends = r.backend_list();
        if r.upstream.is_some() && !r.backends.is_empty() {
            push(
                &mut errors,
                format!("{p}.backends"),
                "give `upstream` or `backends`, not both".into(),
            );
        } else if backends.is_empty() {
            push(
                &mut errors,
                format!("{p}.upstream"),
                "an L4 route needs `upstream` or `backends`".into(),
            );
        } else if backends.iter().all(|b| b.weight == 0) {
            push(
                &mut errors,
                format!("{p}.backends"),
                "at least one backend needs a weight above 0".into(),
            );
        }
        for (k, b) in backends.iter().enumerate() {
            let bp = if r.backends.is_empty() {
                format!("{p}.upstream")
            } else {
                format!("{p}.backends[{k}].upstream")
            };
            match upstreams.get(b.upstream.as_str()) {
                None => push(&mut errors, bp, format!("no upstream {:?}", b.upstream)),
                Some(u) if u.tls.is_some() && r.tls == Some(L4TlsMode::Passthrough) => push(&mut errors,
                    bp,
                    format!(
                        "upstream {:?} has `tls`, but a passthrough route sends the client's own TLS as it is",
                        b.upstream
                    ),
                ),
                _ => {}
            }
        }
        for (k, name) in r.listeners.iter().enumerate() {
            let lp = format!("{p}.listeners[{k}]");
            let Some(l) = listeners.get(name.as_str()) else {
                push(&mut errors, lp, format!("no listener {name:?}"));
                continue;
            };
            match l.protocol {
                ListenerProtocol::Tcp | ListenerProtocol::Udp => {
                    if r.tls.is_some() {
                        push(
                            &mut errors,
                            format!("{p}.tls"),
                            format!("listener {name:?} is {}: no TLS mode", l.protocol.as_str()),
                        );
                    }
                    if !r.server_names.is_empty() {
                        push(
                            &mut errors,
                            format!("{p}.server_names"),
                            format!(
                                "listener {name:?} is {}: there is no SNI to match",
                                l.protocol.as_str()
                            ),
                        );
                    }
                    if l.protocol == ListenerProtocol::Udp {
                        for b in &backends {
                            if upstreams
                                .get(b.upstream.as_str())
                                .is_some_and(|u| u.tls.is_some())
                            {
                                push(
                                    &mut errors,
                                    format!("{p}.listeners[{k}]"),
                                    format!("upstream {:?} has `tls`, which UDP cannot carry", b.upstream),
                                );
                            }
                        }
                    }
                    if let Some(first) = taken.insert((name.as_str(), String::new()), p.clone()) {
                        push(
                            &mut errors,
                            lp,
                            format!(
                                "listener {name:?} already has its route ({first}); a {} listener takes one",
                                l.protocol.as_str()
                            ),
                        );
                    }
                }
                ListenerProtocol::Http if l.tls.is_none() => push(
                    &mut errors,
                    lp,
                    format!(
                        "listener {name:?} is plain HTTP: L4 routes need a tcp, udp, tls or HTTPS listener"
                    ),
                ),
                ListenerProtocol::Http | ListenerProtocol::Tls => {
                    let Some(mode) = r.tls else {
                        push(
                            &mut errors,
                            format!("{p}.tls"),
                            format!(
                                "listener {name:?} speaks TLS: give `tls: passthrough` or `tls: terminate`"
                            ),
                        );
                        continue;
                    };
                    if r.server_names.is_empty() && l.protocol == ListenerProtocol::Http {
                        push(
                            &mut errors,
                            format!("{p}.server_names"),
                            format!(
                                "listener {name:?} also serves HTTPS: name the SNI names this route takes"
                            ),
                        );
                    }
                    if mode == L4TlsMode::Terminate {
                        let inline =
                            c.kubernetes.is_some() || c.certificates.iter().any(|x| x.serves_on(name));
                        let files = l.tls.as_ref().is_some_and(|t| !t.certificates.is_empty());
                        if !files && !inline {
                            push(&mut errors,
                                format!("{p}.tls"),
                                format!("listener {name:?} has no certificate to terminate with (`tls.certificates`)"),
                            );
                        }
                    }
                    let names: Vec<String> = if r.server_names.is_empty() {
                        vec![String::new()]
                    } else {
                        r.server_names.iter().map(|n| n.to_ascii_lowercase()).collect()
                    };
                    for n in names {
                        if let Some(first) = taken.insert((name.as_str(), n.clone()), p.clone()) {
                            let what = if n.is_empty() {
                                "every name".to_string()
                            } else {
                                format!("{n:?}")
                            };
                            push(
                                &mut errors,
                                format!("{p}.server_names"),
                                format!("{what} on listener {name:?} is already taken by {first}"),
                            );
                        }
                    }
                }
            }
        }
    }
    // A tcp/udp listener without a route serves nothing: worth saying (the Kubernetes
    // source may add it later, so only for file-only configs).
    if c.kubernetes.is_none() {
        for (i, l) in c.listeners.iter().enumerate() {
            let needs = matches!(
                l.protocol,
                ListenerProtocol::Tcp | ListenerProtocol::Udp | ListenerProtocol::Tls
            );
            if needs && !c.l4_routes.iter().any(|r| r.listeners.contains(&l.name)) {
                push(
                    &mut errors,
                    format!("listeners[{i}]"),
                    format!(
                        "the {} listener {:?} has no l4_route: add one that names it",
                        l.protocol.as_str(),
                        l.name
                    ),
                );
            }
        }
    }

    // Client-certificate policies.
    let mut names = HashSet::new();
    for (i, a) in c.client_auth.iter().enumerate() {
        let p = format!("client_auth[{i}]");
        if !is_valid_id(&a.name) {
            push(
                &mut errors,
                format!("{p}.name"),
                format!("invalid name {:?}: use 1-128 of [A-Za-z0-9._-]", a.name),
            );
        } else if !names.insert(a.name.as_str()) {
            push(
                &mut errors,
                format!("{p}.name"),
                format!("duplicate name {:?}", a.name),
            );
        }
        for (k, l) in a.listeners.iter().enumerate() {
            if !listeners.get(l.as_str()).is_some_and(|x| tls_listener(x)) {
                push(
                    &mut errors,
                    format!("{p}.listeners[{k}]"),
                    format!("{l:?} is not a TLS listener"),
                );
            }
        }
        for (k, n) in a.server_names.iter().enumerate() {
            if !is_valid_host_pattern(n) {
                push(
                    &mut errors,
                    format!("{p}.server_names[{k}]"),
                    format!("invalid server name {n:?}"),
                );
            }
        }
    }
    for (i, a) in c.client_auth.iter().enumerate() {
        check_ca(
            &format!("client_auth[{i}].validation"),
            &a.validation,
            &mut errors,
        );
    }

    // Upstream TLS: the inline CA and the SANs.
    for (i, u) in c.upstreams.iter().enumerate() {
        let Some(t) = &u.tls else { continue };
        let p = format!("upstreams[{i}].tls");
        if t.ca.is_some() && t.ca_pem.is_some() {
            push(
                &mut errors,
                format!("{p}.ca_pem"),
                "give `ca` or `ca_pem`, not both".into(),
            );
        }
        if t.ca_pem
            .as_ref()
            .is_some_and(|pem| !pem.contains("-----BEGIN CERTIFICATE-----"))
        {
            push(
                &mut errors,
                format!("{p}.ca_pem"),
                "needs a PEM CERTIFICATE block".into(),
            );
        }
        for (k, san) in t.subject_alt_names.iter().enumerate() {
            match san {
                SubjectAltName::Dns(n) if !is_valid_host_pattern(n) => push(
                    &mut errors,
                    format!("{p}.subject_alt_names[{k}].dns"),
                    format!("invalid DNS name {n:?}"),
                ),
                SubjectAltName::Uri(u) if !u.contains(':') => push(
                    &mut errors,
                    format!("{p}.subject_alt_names[{k}].uri"),
                    format!("{u:?} is not a URI (no scheme)"),
                ),
                _ => {}
            }
        }
        if !t.subject_alt_names.is_empty() && !t.verify {
            push(
                &mut errors,
                format!("{p}.subject_alt_names"),
                "SANs are checked only when `verify` is on".into(),
            );
        }
    }
    errors
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::Config;

    fn errors(yaml: &str) -> Vec<String> {
        match Config::from_text(yaml) {
            Ok(c) => match c.validate() {
                Ok(()) => Vec::new(),
                Err(e) => e.0.iter().map(ToString::to_string).collect(),
            },
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    const UPS: &str = "upstreams:\n- {id: a, endpoints: [{address: '127.0.0.1:9000'}]}\n- {id: b, endpoints: [{address: '127.0.0.1:9001'}]}\n- {id: t, tls: {}, endpoints: [{address: '127.0.0.1:9002'}]}\n";

    #[test]
    fn a_good_l4_config_validates() {
        let yaml = format!(
            "listeners:\n- {{name: tcp, listen: '127.0.0.1:7000', protocol: tcp}}\n- {{name: udp, listen: '127.0.0.1:7000', protocol: udp, l4: {{idle_timeout: 5s}}}}\n- {{name: tls, listen: '127.0.0.1:7001', protocol: tls}}\n{UPS}l4_routes:\n- {{id: r1, listeners: [tcp], upstream: a}}\n- {{id: r2, listeners: [udp], backends: [{{upstream: a, weight: 3}}, {{upstream: b}}]}}\n- {{id: r3, listeners: [tls], server_names: [db.example.com], tls: passthrough, upstream: a}}\n- {{id: r4, listeners: [tls], tls: passthrough, upstream: b}}\n"
        );
        assert_eq!(errors(&yaml), Vec::<String>::new());
    }

    #[test]
    fn l4_route_errors_name_their_paths() {
        let yaml = format!(
            "listeners:\n- {{name: web, listen: '127.0.0.1:7000'}}\n- {{name: tcp, listen: '127.0.0.1:7001', protocol: tcp}}\n- {{name: tls, listen: '127.0.0.1:7002', protocol: tls}}\n{UPS}l4_routes:\n- {{id: r1, listeners: [tcp, nope], upstream: zz}}\n- {{id: r2, listeners: [tcp], tls: passthrough, server_names: [x.example.com], upstream: a}}\n- {{id: r3, listeners: [web], upstream: a}}\n- {{id: r4, listeners: [tls], upstream: a}}\n- {{id: r5, listeners: [tls], tls: terminate, upstream: a}}\n- {{id: r6, listeners: [tls], tls: passthrough, upstream: t}}\n"
        );
        let errs = errors(&yaml);
        let want = [
            "l4_routes[0].upstream: no upstream \"zz\"",
            "l4_routes[0].listeners[1]: no listener \"nope\"",
            "l4_routes[1].tls: listener \"tcp\" is tcp: no TLS mode",
            "l4_routes[1].server_names: listener \"tcp\" is tcp: there is no SNI to match",
            "l4_routes[1].listeners[0]: listener \"tcp\" already has its route (l4_routes[0]); a tcp listener takes one",
            "l4_routes[2].listeners[0]: listener \"web\" is plain HTTP: L4 routes need a tcp, udp, tls or HTTPS listener",
            "l4_routes[3].tls: listener \"tls\" speaks TLS: give `tls: passthrough` or `tls: terminate`",
            "l4_routes[4].tls: listener \"tls\" has no certificate to terminate with (`tls.certificates`)",
            "l4_routes[5].upstream: upstream \"t\" has `tls`, but a passthrough route sends the client's own TLS as it is",
            "l4_routes[5].server_names: every name on listener \"tls\" is already taken by l4_routes[4]",
        ];
        for w in want {
            assert!(errs.iter().any(|e| e == w), "missing {w:?} in {errs:#?}");
        }
    }

    #[test]
    fn unknown_l4_fields_are_refused_with_their_path() {
        let yaml = format!(
            "listeners:\n- {{name: tcp, listen: '127.0.0.1:7001', protocol: tcp, l4: {{idle: 5s}}}}\n{UPS}l4_routes: [{{id: r, listeners: [tcp], upstream: a}}]\n"
        );
        let errs = errors(&yaml);
        assert!(
            errs.iter()
                .any(|e| e.contains("listeners[0].l4") && e.contains("idle")),
            "{errs:?}"
        );
        let yaml = format!("listeners:\n- {{name: tcp, listen: '127.0.0.1:7001', protocol: sctp}}\n{UPS}");
        let errs = errors(&yaml);
        assert!(
            errs.iter().any(|e| e.contains("listeners[0].protocol")),
            "{errs:?}"
        );
    }

    #[test]
    fn an_https_listener_takes_passthrough_by_name_only() {
        let yaml = format!(
            "listeners:\n- {{name: web, listen: '127.0.0.1:7000', tls: {{certificates: [{{cert: c.pem, key: k.pem}}]}}}}\n{UPS}l4_routes:\n- {{id: p, listeners: [web], tls: passthrough, upstream: a}}\n- {{id: q, listeners: [web], tls: passthrough, server_names: [db.example.com], upstream: b}}\n"
        );
        assert_eq!(
            errors(&yaml),
            ["l4_routes[0].server_names: listener \"web\" also serves HTTPS: name the SNI names this route takes"]
        );
    }

    #[test]
    fn client_auth_needs_one_ca_and_a_tls_listener() {
        let yaml = format!(
            "listeners:\n- {{name: web, listen: '127.0.0.1:7000', tls: {{certificates: [{{cert: c.pem, key: k.pem}}], client_auth: {{mode: optional}}}}}}\n- {{name: plain, listen: '127.0.0.1:7001'}}\n{UPS}client_auth:\n- {{name: a, listeners: [plain], validation: {{ca_pem: 'x', verify_depth: 0}}}}\n"
        );
        let errs = errors(&yaml);
        for w in [
            "listeners[0].tls.client_auth.ca: give `ca` (a PEM file) or `ca_pem`",
            "client_auth[0].listeners[0]: \"plain\" is not a TLS listener",
            "client_auth[0].validation.ca_pem: needs a PEM CERTIFICATE block",
            "client_auth[0].validation.verify_depth: must be at least 1",
        ] {
            assert!(errs.iter().any(|e| e == w), "missing {w:?} in {errs:#?}");
        }
    }

    #[test]
    fn upstream_sans_are_checked() {
        let yaml = "listeners: [{name: w, listen: '127.0.0.1:7000'}]\nupstreams:\n- {id: a, tls: {sni: abc.example.com, subject_alt_names: [{dns: 'bad name'}, {uri: 'noscheme'}, {uri: 'spiffe://a/b'}]}, endpoints: [{address: '127.0.0.1:9000'}]}\n";
        assert_eq!(
            errors(yaml),
            [
                "upstreams[0].tls.subject_alt_names[0].dns: invalid DNS name \"bad name\"",
                "upstreams[0].tls.subject_alt_names[1].uri: \"noscheme\" is not a URI (no scheme)"
            ]
        );
    }
}
