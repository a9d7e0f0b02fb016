//! The public config model: what users write in YAML or JSON (and, one resource per key,
//! in etcd). Every struct rejects unknown fields, and every field states its default.
//!
//! This model is the user-facing API. It is validated by [`crate::validate`] and then
//! compiled by the gateway into an immutable snapshot; the request path never reads it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::resilience::{BreakerConfig, HealthCheckConfig, OutlierDetectionConfig, RetryConfig};

/// The whole gateway configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Process-wide settings. Default: see [`ServerConfig`].
    pub server: ServerConfig,
    /// The admin listener (health, metrics, admin API). Default: `127.0.0.1:9900`.
    pub admin: AdminConfig,
    /// Proxy listeners. Default: none (a config without listeners serves nothing and is
    /// rejected by validation).
    pub listeners: Vec<ListenerConfig>,
    /// Upstream clusters that routes forward to. Default: none.
    pub upstreams: Vec<UpstreamConfig>,
    /// How endpoint host names are resolved. Default: see [`DnsConfig`].
    pub dns: DnsConfig,
    /// Routes, matched by specificity (see `docs/config.md`, "Route precedence").
    /// Default: none.
    pub routes: Vec<RouteConfig>,
    /// Consumers: named identities with credentials and groups, which authentication
    /// filters identify (see `docs/access-control.md`). Default: none.
    pub consumers: Vec<ConsumerConfig>,
    /// Where the access log and the gateway's events go (sinks, fields). Default: see
    /// [`crate::logging::LoggingConfig`] (no sinks).
    pub logging: crate::logging::LoggingConfig,
    /// OpenTelemetry tracing (spans, W3C propagation, OTLP export). Default: off, see
    /// [`crate::tracing::TracingConfig`].
    pub tracing: crate::tracing::TracingConfig,
    /// The Kubernetes source: Ingresses, Services and EndpointSlices of one or more
    /// clusters (see `docs/kubernetes.md`). Needs a restart to change. Default: none
    /// (off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<crate::kubernetes::KubernetesConfig>,
    /// Listener certificates given inline in PEM (the Kubernetes source's TLS Secrets
    /// land here), served next to each TLS listener's certificate files and swapped in on
    /// every config change. Default: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<crate::certificates::InlineCertificate>,
    /// L4 routes: TCP, UDP and TLS (passthrough or terminate) connections of the `tcp`,
    /// `udp`, `tls` and HTTPS listeners they name, to upstreams (see
    /// [`crate::l4::L4RouteConfig`] and `docs/config.md`, "L4"). Default: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub l4_routes: Vec<crate::l4::L4RouteConfig>,
    /// Client-certificate settings for some SNI names of some TLS listeners, over each
    /// listener's own `tls.client_auth` (what the Kubernetes source publishes for a
    /// Gateway's frontend validation). Default: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub client_auth: Vec<crate::l4::ClientAuthPolicy>,
    /// The response cache's store, shared by every route with `cache`. Default: see
    /// [`crate::responses::CacheStoreConfig`] (`256MiB` in memory).
    pub cache: crate::responses::CacheStoreConfig,
}

/// A consumer: a named identity with its groups and its credentials, one set per
/// authentication method. Its `Serialize` and `Debug` show the credentials' method and
/// field names with every value `<redacted>` (see [`crate::secret`]).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// The consumer's name, unique in the config; what the identity, the access log,
    /// ACLs and rate-limit keys carry. Required.
    pub name: String,
    /// Groups the consumer belongs to, for ACLs and canary rules. Default: none.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Credentials by authentication method (`key_auth`, `basic_auth`, `jwt`, …). Each
    /// method's filter kind owns, parses and validates its own credential spec, as it does
    /// its filter spec, and reports errors as `consumers[N].credentials.<method>.<field>`.
    /// Secrets: every value is shown as `<redacted>`. Default: none.
    #[serde(default, serialize_with = "serialize_credentials")]
    pub credentials: BTreeMap<String, serde_json::Value>,
}

impl std::fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerConfig")
            .field("name", &self.name)
            .field("groups", &self.groups)
            .field("credentials", &redacted_credentials(&self.credentials))
            .finish()
    }
}

fn redacted_credentials(c: &BTreeMap<String, serde_json::Value>) -> BTreeMap<&str, serde_json::Value> {
    c.iter().map(|(k, v)| (k.as_str(), redact_value(v))).collect()
}

fn serialize_credentials<S: serde::Serializer>(
    c: &BTreeMap<String, serde_json::Value>,
    s: S,
) -> Result<S::Ok, S::Error> {
    if crate::secret::revealed() {
        c.serialize(s)
    } else {
        redacted_credentials(c).serialize(s)
    }
}

/// What a redacted value reads in views, logs and `Debug` output.
pub const REDACTED: &str = crate::secret::REDACTED;

/// `v` with every leaf (string, number, boolean) replaced by [`REDACTED`].
pub fn redact_value(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), redact_value(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(redact_value).collect()),
        Value::Null => Value::Null,
        _ => Value::String(REDACTED.into()),
    }
}

/// A consumer as a raw JSON value (an etcd object, a document's list item) with the
/// values under its `credentials` redacted; anything else is kept as it is.
pub fn redact_consumer_value(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(c) = v.get_mut("credentials") {
        *c = redact_value(c);
    }
    v
}

/// Process-wide settings. Changing these needs a restart (or a graceful upgrade).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Worker threads for the proxy. Default: the number of CPU cores.
    pub threads: Option<usize>,
    /// After SIGTERM, how long to keep accepting connections (so load balancers can
    /// notice the instance going away) before closing the listeners. Default: `0s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// After the listeners close, how long in-flight requests may take to finish before
    /// the process exits anyway. Default: `30s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Unix socket used to hand listening sockets to a new process during a graceful
    /// upgrade (`sluice run --upgrade` then SIGQUIT to the old one).
    /// Default: `/tmp/sluice_upgrade.sock`.
    pub upgrade_sock: String,
    /// Where the PID file is written. Default: `/tmp/sluice.pid`.
    pub pid_file: String,
    /// Peers whose `X-Forwarded-*` headers are trusted. A request from any other address
    /// gets its `X-Forwarded-For` replaced by its own address rather than appended to.
    /// Default: none (no peer is trusted).
    #[schemars(with = "Vec<crate::schema::CidrText>")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Name of the request id header, generated when absent and propagated upstream and
    /// back to the client. Default: `x-request-id`.
    pub request_id_header: String,
    /// Whether to write one JSON access-log line per request to stdout: the same as one
    /// `stdout` sink in `logging.access_log.sinks` (not both). Default: `false`.
    pub access_log: bool,
    /// Let idle worker threads take tasks from busy ones. Off, each thread runs its own
    /// single-threaded runtime and keeps its connections (nginx's model), which is faster
    /// for short requests; on suits a few heavy long-lived streams. Default: `false`.
    pub work_stealing: bool,
    /// Timeouts for slow and idle clients, caps on requests and connections, and HTTP/2
    /// limits, for every listener (a listener's `connections` overrides them).
    /// Default: see [`crate::connections::ConnectionLimits`].
    pub connections: crate::connections::ConnectionLimits,
    /// Request limits (head size, header count, URI, body) and the upstream response
    /// head limit. Default: see [`crate::limits::LimitsConfig`].
    pub limits: crate::limits::LimitsConfig,
    /// Request buffering for every route (`off`, `on` or `{max: <size>}`), overridable
    /// per route. Default: `{max: 64KiB}`; see [`crate::limits::RequestBuffering`].
    pub request_buffering: crate::limits::RequestBuffering,
    /// How often the listeners' certificate and key files are read again: a changed file
    /// is served to new handshakes without a restart (open connections keep theirs), a
    /// file that no longer loads keeps the previous certificate and logs an error naming
    /// it. `0s` turns polling off (a config reload still re-reads them). Default: `2s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub certificate_poll_interval: Duration,
    /// How every listener normalises a request's path, host and header names before
    /// routing, filters, logs and the upstream see it (a listener's own `normalization`
    /// replaces this). Default: the strict settings, see
    /// [`crate::normalization::Normalization`].
    pub normalization: crate::normalization::Normalization,
    /// What clients see of the upstream's `Server` header, which names the backend's
    /// software: `hide` (removed, as nginx does), `pass` (kept), or `{set: <value>}`
    /// (replaced by this value, also on the gateway's own answers). Default: `hide`.
    pub server_header: ServerHeader,
}

/// What clients see of the upstream's `Server` header (`server.server_header`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerHeader {
    /// Removed from every response.
    #[default]
    Hide,
    /// Passed on as the upstream sent it.
    Pass,
    /// Replaced by this value (a valid header value).
    Set(String),
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            threads: None,
            grace_period: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(30),
            upgrade_sock: "/tmp/sluice_upgrade.sock".into(),
            pid_file: "/tmp/sluice.pid".into(),
            trusted_proxies: Vec::new(),
            request_id_header: "x-request-id".into(),
            access_log: false,
            work_stealing: false,
            connections: crate::connections::ConnectionLimits::default(),
            limits: crate::limits::LimitsConfig::default(),
            request_buffering: crate::limits::RequestBuffering::default(),
            certificate_poll_interval: Duration::from_secs(2),
            normalization: crate::normalization::Normalization::default(),
            server_header: ServerHeader::default(),
        }
    }
}

/// The admin listener: `/healthz`, `/readyz`, `/metrics` and `/api/v1/*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address to bind. Keep it on loopback or a private interface: the admin API can
    /// change breaker states. A non-loopback address needs a token (or `sluice run
    /// --admin-insecure`). Default: `127.0.0.1:9900`.
    pub listen: SocketAddr,
    /// Bearer token required (`Authorization: Bearer <token>`) on every state-changing
    /// call of the admin API and on every `/api/v1/*` read (they show configuration). A
    /// secret (shown as `<redacted>`). The environment variable `SLUICE_ADMIN_TOKEN`
    /// takes precedence over this and `token_file`. Default: none (no token).
    pub token: Option<crate::secret::Secret>,
    /// File holding the token (surrounding whitespace trimmed), read at start; not both
    /// `token` and `token_file`. Default: none.
    pub token_file: Option<String>,
    /// Whether `/metrics` needs the token too (every `/api/v1/*` read does whenever a
    /// token is set); `/healthz` and `/readyz` never do. Default: `false`.
    pub token_for_reads: bool,
    /// How often the dashboard's history (`/api/v1/history`: the last 15 minutes of
    /// rate, error rate and latency per route and backend) takes a point, from 1s to
    /// 60s. A series holds 15 minutes / this many points; changing it empties the
    /// history. Default: `5s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub history_interval: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9900)),
            token: None,
            token_file: None,
            token_for_reads: false,
            history_interval: Duration::from_secs(5),
        }
    }
}

/// One proxy listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique name, used in logs and metrics. Required.
    pub name: String,
    /// Address to bind, e.g. `0.0.0.0:8080` or `[::]:8443`. Required.
    pub listen: SocketAddr,
    /// TLS settings; when present the listener speaks HTTPS. Default: none (plain HTTP).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Accept HTTP/2: through ALPN on TLS listeners, and as h2c with prior knowledge on
    /// plain ones (HTTP/1.1 still works on both). Default: `true`.
    #[serde(default = "default_true")]
    pub http2: bool,
    /// Connection limits for this listener; unset fields come from
    /// `server.connections`. Default: none (all from `server.connections`).
    #[serde(default)]
    pub connections: crate::connections::ConnectionLimits,
    /// What the listener speaks: `http` (with `tls`: HTTPS, which can also take TLS
    /// passthrough by SNI), `tcp`, `udp` or `tls` (L4, served by `l4_routes`).
    /// Default: `http`.
    #[serde(default, skip_serializing_if = "crate::l4::is_http")]
    pub protocol: crate::l4::ListenerProtocol,
    /// Limits of L4 connections and UDP sessions (and of an HTTPS listener's
    /// passthrough connections). Default: see [`crate::l4::L4ListenerConfig`].
    #[serde(default, skip_serializing_if = "crate::l4::L4ListenerConfig::is_default")]
    pub l4: crate::l4::L4ListenerConfig,
    /// The port clients reach this listener on when it differs from `listen`'s (a
    /// Kubernetes Service or NAT in front of Sluice): a Gateway listener of this port
    /// is served by this listener. Default: the `listen` port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_port: Option<u16>,
    /// This listener's normalisation options, replacing `server.normalization` as a
    /// whole (unset fields take their defaults, not the server's). Default: none (the
    /// server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<crate::normalization::Normalization>,
    /// Response compression for every route served here that sets none of its own.
    /// Default: none (off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<crate::responses::CompressionConfig>,
    /// Error pages for every route served here that sets none of its own, and for
    /// requests no route matches. Default: none (the gateway's JSON errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_pages: Option<crate::responses::ErrorPagesConfig>,
}

impl ListenerConfig {
    /// A listener `name` on `listen` with every other field at its default (plain HTTP).
    pub fn new(name: impl Into<String>, listen: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            name: name.into(),
            listen,
            tls: None,
            http2: true,
            connections: Default::default(),
            protocol: Default::default(),
            l4: Default::default(),
            public_port: None,
            normalization: None,
            compression: None,
            error_pages: None,
        }
    }

    /// The port Gateway listeners name this listener by: `public_port`, else the
    /// `listen` port.
    pub fn gateway_port(&self) -> u16 {
        self.public_port.unwrap_or(self.listen.port())
    }
}

/// Server-side TLS for a listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificates, chosen by the SNI the client sends. The first certificate is also
    /// served to clients that send no SNI or an unknown name. At least one is required
    /// on an HTTPS listener (unless inline `certificates` or the Kubernetes source give
    /// them); a `tls` listener needs them only for `terminate` routes. Default: none.
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    /// Ask clients for certificates and verify them (mTLS): the whole listener's
    /// setting, which top-level `client_auth` entries override per SNI name. The
    /// verified identity reaches the filters (the `client_cert` filter) and the
    /// upstream (`x-client-cert-*` headers, always cleared of client copies). Default:
    /// none (no certificate is asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<crate::l4::ClientAuthConfig>,
}

/// One certificate and key pair, and the names it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// Path to the PEM certificate chain. Required.
    pub cert: String,
    /// Path to the PEM private key (PKCS#8, PKCS#1 or SEC1). Required.
    pub key: String,
    /// SNI names this certificate serves: exact (`api.example.com`) or a wildcard
    /// (`*.example.com`). Default: none (served only as the default certificate).
    #[serde(default)]
    pub server_names: Vec<String>,
}

/// An upstream cluster: a set of endpoints and how to reach them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Unique, stable id. Routes refer to it; health, outlier and breaker state are keyed
    /// by it so that they survive reloads. Required.
    pub id: String,
    /// The endpoints. At least one is required.
    pub endpoints: Vec<EndpointConfig>,
    /// How an endpoint is chosen. Default: `round_robin`.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Protocol spoken to the endpoints. Default: `http1`.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoints. Default: none (plain text).
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// Connection timeouts, overridable per route. Default: see [`Timeouts`].
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Keepalive pooling. Default: see [`KeepaliveConfig`].
    #[serde(default)]
    pub keepalive: KeepaliveConfig,
    /// Retries for requests to this upstream. Default: see [`RetryConfig`].
    #[serde(default)]
    pub retries: RetryConfig,
    /// Passive per-endpoint health (outlier ejection). Default: see
    /// [`OutlierDetectionConfig`].
    #[serde(default)]
    pub outlier_detection: OutlierDetectionConfig,
    /// Active health checks. Default: none (endpoints are assumed healthy).
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Ramp the share of a new endpoint (one added to the set, or back from unhealthy)
    /// up over a window, so a cold instance is not flooded. Default: none (off).
    #[serde(default)]
    pub slow_start: Option<SlowStartConfig>,
    /// Envoy's overprovisioning factor for priority failover: a priority level keeps all
    /// the traffic while `healthy share × factor ≥ 100%`, and spills the rest to the next
    /// level as its healthy share drops. Default: `1.4`.
    #[serde(default = "default_overprovisioning")]
    pub overprovisioning_factor: f64,
    /// How often endpoint host names are re-resolved. Default: see [`UpstreamDnsConfig`].
    #[serde(default)]
    pub dns: UpstreamDnsConfig,
}

impl UpstreamConfig {
    /// This upstream with its endpoint list left out: two upstreams that compare equal
    /// this way differ at most in their endpoints, which the discovery plane swaps
    /// without rebuilding the upstream.
    pub fn without_endpoints(&self) -> UpstreamConfig {
        UpstreamConfig {
            endpoints: Vec::new(),
            ..self.clone()
        }
    }
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `host:port`. The host is an IP address, or a name that the discovery plane
    /// resolves off the request path (and re-resolves as its TTL expires; a name with
    /// several addresses gives one endpoint per address). Required.
    pub address: String,
    /// Relative weight for weighted algorithms. Default: `1`. `0` drains the endpoint.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Priority level: `0` is the local cluster, `1` the next one to fail over to, and so
    /// on. Traffic goes to the lowest level while enough of it is healthy (see
    /// `overprovisioning_factor`). Default: `0`.
    #[serde(default)]
    pub priority: u32,
}

/// Slow start (Envoy's `slow_start_config`): a new endpoint's effective weight is
/// `weight × max(min_weight_percent / 100, (elapsed / window) ^ (1 / aggression))`
/// until `window` has passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlowStartConfig {
    /// How long the ramp lasts. Required.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Shape of the ramp: `1.0` is linear, larger values ramp faster at first.
    /// Default: `1.0`.
    #[serde(default = "default_aggression")]
    pub aggression: f64,
    /// The share an endpoint gets at the start of its ramp, in percent of its weight.
    /// Default: `10`.
    #[serde(default = "default_min_weight_percent")]
    pub min_weight_percent: f64,
}

/// Re-resolution of an upstream's endpoint host names. An answer is kept for its TTL,
/// clamped to `[min_refresh, refresh]`; when DNS fails the last good answer stays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamDnsConfig {
    /// The longest an answer is used before it is resolved again, whatever its TTL.
    /// Default: `30s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// The shortest time between two resolutions of a name, whatever its TTL.
    /// Default: `1s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub min_refresh: Duration,
    /// How soon a failed resolution is tried again (the last good answer is used
    /// meanwhile). Default: `5s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
}

impl Default for UpstreamDnsConfig {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(30),
            min_refresh: Duration::from_secs(1),
            retry: Duration::from_secs(5),
        }
    }
}

/// The DNS client the discovery plane resolves endpoint host names with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Name servers (`ip:port`, queried over UDP, in order). Default: none,
    /// meaning the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
}

/// Load-balancing algorithms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum LoadBalancing {
    /// Each endpoint in turn, ignoring weights. The default.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (nginx's algorithm): exact shares over short runs.
    WeightedRoundRobin,
    /// Power of two random choices, picking the one with fewer requests in flight.
    LeastRequest,
    /// Consistent hashing (a ring with virtual nodes), so a key keeps its endpoint while
    /// the endpoint set changes little.
    ConsistentHash(HashOn),
}

/// What a consistent hash is computed from. A request with no such value falls back to
/// the client IP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum HashOn {
    /// The value of this request header.
    Header(String),
    /// The value of this cookie.
    Cookie(String),
    /// The client IP (after trusted-proxy resolution).
    ClientIp,
}

/// Protocol spoken to upstream endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1. The default.
    #[default]
    Http1,
    /// HTTP/2: over TLS when `tls` is set, otherwise h2c with prior knowledge. Needed for
    /// gRPC.
    H2,
}

/// TLS towards upstream endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// SNI and certificate name to expect. Default: the endpoint host.
    #[serde(default)]
    pub sni: Option<String>,
    /// Verify the upstream certificate. Default: `true`.
    #[serde(default = "default_true")]
    pub verify: bool,
    /// PEM file of the CA certificate(s) to trust for this upstream instead of the
    /// system's (a private CA). Default: none (the system's trust store).
    #[serde(default)]
    pub ca: Option<String>,
    /// The same CA certificates inline, in PEM (the Kubernetes source's
    /// BackendTLSPolicy CAs from ConfigMaps and Secrets); not with `ca`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Names the upstream's certificate must carry, one of them at least, instead of
    /// `sni` (which is then only sent): `{dns: name}` or `{uri: spiffe://...}` (the
    /// BackendTLSPolicy's `subjectAltNames`). Default: none (the certificate must match
    /// `sni`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<crate::l4::SubjectAltName>,
}

/// Timeouts, all optional. A route's values override its upstream's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP (and TLS) connect timeout. Default: `5s`.
    #[schemars(with = "Option<crate::schema::DurationText>")]
    #[serde(with = "humantime_serde")]
    pub connect: Option<Duration>,
    /// Longest wait between two reads from the upstream. Default: `60s`.
    #[schemars(with = "Option<crate::schema::DurationText>")]
    #[serde(with = "humantime_serde")]
    pub read: Option<Duration>,
    /// Longest wait between two writes to the upstream. Default: `60s`.
    #[schemars(with = "Option<crate::schema::DurationText>")]
    #[serde(with = "humantime_serde")]
    pub write: Option<Duration>,
    /// A deadline for the whole exchange, as Envoy's route `timeout`: from the request's
    /// arrival to the last byte of the upstream's response, retries and back-off
    /// included. Past it, a client still waiting for the response head gets `504
    /// upstream_timeout`; a response already streaming is cut (see
    /// `docs/resilience.md#timeouts`). Default: none.
    #[schemars(with = "Option<crate::schema::DurationText>")]
    #[serde(with = "humantime_serde")]
    pub total: Option<Duration>,
}

impl Timeouts {
    /// Default connect timeout: 5 s.
    pub const DEFAULT_CONNECT: Duration = Duration::from_secs(5);
    /// Default read and write timeout: 60 s.
    pub const DEFAULT_IO: Duration = Duration::from_secs(60);

    /// These timeouts with unset fields taken from `fallback`.
    #[must_use]
    pub fn or(&self, fallback: &Timeouts) -> Timeouts {
        Timeouts {
            connect: self.connect.or(fallback.connect),
            read: self.read.or(fallback.read),
            write: self.write.or(fallback.write),
            total: self.total.or(fallback.total),
        }
    }
}

/// Upstream keepalive pooling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KeepaliveConfig {
    /// Reuse connections to endpoints. Default: `true`.
    pub enabled: bool,
    /// How long an idle pooled connection is kept. Default: `60s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// A route: what to match, where to send it, and what to do on the way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique, stable id, used in metrics, logs and breaker state. Required.
    pub id: String,
    /// Tie-breaker between routes that are equally specific: higher first. Default: `0`.
    #[serde(default)]
    pub priority: i32,
    /// Match conditions; all must hold. Default: match everything.
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    /// Upstream id to forward to: the shorthand for one backend of weight 1
    /// (`backends: [{upstream: X}]`). Give `upstream` or `backends`, not both. Default:
    /// none; then a filter must answer every request (for example `direct_response` or
    /// `redirect`), or the client gets a 500.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Weighted backends to split traffic between, e.g. a stable and a canary upstream:
    /// `[{upstream: stable, weight: 90}, {upstream: canary, weight: 10}]`. The split is
    /// exact over short runs (smooth weighted round robin at route level), and each
    /// backend has its own circuit breaker. Default: none (see `upstream`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendConfig>,
    /// Timeouts for this route, overriding the upstream's. Default: the upstream's.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Path rewriting before forwarding. Default: none.
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    /// Header changes on the request and on the response. Applied before `filters`.
    /// Default: none.
    #[serde(default)]
    pub headers: HeaderRules,
    /// Filters, run in order. Default: none.
    #[serde(default)]
    pub filters: Vec<FilterConfig>,
    /// Circuit breaker for this route's upstream (and its fallback). Default: none.
    #[serde(default)]
    pub circuit_breaker: Option<BreakerConfig>,
    /// Retry settings for this route, replacing the upstream's whole `retries` block
    /// (fields left out take their defaults, not the upstream's). The retry budget is
    /// always the upstream's (`upstreams[].retries.budget`): it caps retries to the
    /// upstream from all routes together. Default: the upstream's.
    #[serde(default)]
    pub retries: Option<RetryConfig>,
    /// Limit overrides for this route (`max_request_body`). Default: the server's.
    #[serde(default, skip_serializing_if = "crate::limits::RouteLimits::is_empty")]
    pub limits: crate::limits::RouteLimits,
    /// Request buffering on this route (`off` for streaming uploads, or `{max: <size>}`).
    /// Default: `server.request_buffering`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_buffering: Option<crate::limits::RequestBuffering>,
    /// A progressive rollout of one of `backends` (a canary stepped up on its own live
    /// figures, rolled back when they fail). Default: none. See
    /// [`crate::rollout::RolloutConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutConfig>,
    /// Response compression on this route, replacing the listener's. Default: the
    /// listener's (none: off). See [`crate::responses::CompressionConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<crate::responses::CompressionConfig>,
    /// Response caching on this route. Default: none (off). See
    /// [`crate::responses::CacheConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::responses::CacheConfig>,
    /// Translate gRPC-Web calls (`application/grpc-web`, `application/grpc-web-text`)
    /// into gRPC to the upstream (which must speak HTTP/2: `protocol: h2`).
    /// Other requests pass as they are. Default: `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grpc_web: bool,
    /// Error pages on this route, replacing the listener's. Default: the listener's
    /// (none: the gateway's JSON errors). See [`crate::responses::ErrorPagesConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_pages: Option<crate::responses::ErrorPagesConfig>,
}

/// One weighted backend of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Upstream id. Required.
    pub upstream: String,
    /// Relative share of the route's traffic. Default: `1`. `0` sends it nothing (unless a
    /// filter picks it by name, as canary rules do).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

impl RouteConfig {
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

    /// Whether the route forwards anywhere (has `upstream` or `backends`).
    pub fn forwards(&self) -> bool {
        self.upstream.is_some() || !self.backends.is_empty()
    }
}

/// Route match conditions. All present conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RouteMatch {
    /// Hosts: exact (`api.example.com`) or a leading wildcard (`*.example.com`, matching
    /// any name with at least one more label). Compared case-insensitively, port
    /// ignored. Default: any host.
    pub hosts: Vec<String>,
    /// Path condition. Default: any path.
    pub path: Option<PathMatch>,
    /// Methods, e.g. `[GET, HEAD]`. Default: any method.
    pub methods: Vec<String>,
    /// Header conditions. Default: none.
    pub headers: Vec<ValueMatch>,
    /// Query parameter conditions. Default: none.
    pub query: Vec<ValueMatch>,
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum PathMatch {
    /// The path equals this.
    Exact(String),
    /// The path starts with this, on a segment boundary: `/api` matches `/api` and
    /// `/api/x`, not `/apix`.
    Prefix(String),
    /// The path matches this regular expression (Rust `regex` syntax), anchored at both
    /// ends.
    Regex(String),
}

/// A condition on a named header or query parameter. Give exactly one of `exact`,
/// `regex` or `present`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    /// Header name (case-insensitive) or query parameter name (case-sensitive). Required.
    pub name: String,
    /// The value equals this. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The value matches this regular expression, anchored at both ends. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: present with any value; `false`: absent. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// Path rewriting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Strip the matched path prefix (only for `prefix` path matches); `/api/users` on
    /// prefix `/api` becomes `/users`. Default: `false`.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the matched prefix with this (after stripping when both are set, this is
    /// prepended). Default: none.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Replace the whole path with this. Default: none.
    #[serde(default)]
    pub path: Option<String>,
    /// Regex substitution on the path: `pattern` and `replacement` (`$1` references
    /// groups). Default: none.
    #[serde(default)]
    pub regex: Option<RegexRewrite>,
}

/// A regex substitution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    /// The regular expression. Required.
    pub pattern: String,
    /// The replacement, with `$1`, `$name` group references. Required.
    pub replacement: String,
}

/// Header changes for the request (towards the upstream) and the response (towards the
/// client).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderRules {
    /// Changes to the request. Default: none.
    pub request: HeaderOps,
    /// Changes to the response. Default: none.
    pub response: HeaderOps,
}

/// Header operations, applied in the order remove, set, add.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderOps {
    /// Append these headers (keeping existing values). Default: none.
    pub add: BTreeMap<String, String>,
    /// Set these headers, replacing existing values. Default: none.
    pub set: BTreeMap<String, String>,
    /// Remove these headers. Default: none.
    pub remove: Vec<String>,
}

/// One filter in a route's chain, written as a single-key map: `- redirect: {...}`.
///
/// The model keeps the filter's kind and its spec as given: each filter kind owns its
/// spec type, validation and build in `sluice-filters` (`filters/kinds/src/`), which
/// reports spec errors with their full field path (`routes[3].filters[1].rate_limit.per`).
///
/// Its `Serialize` and `Debug` show the spec with the kind's secret fields redacted
/// (through [`crate::secret::set_spec_redactor`]; every value when no redactor is
/// installed).
#[derive(Clone, PartialEq)]
pub struct FilterConfig {
    /// The filter kind, e.g. `redirect`.
    pub kind: String,
    /// The kind's spec, as written.
    pub spec: serde_json::Value,
}

impl std::fmt::Debug for FilterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterConfig")
            .field("kind", &self.kind)
            .field("spec", &crate::secret::redact_spec(&self.kind, &self.spec))
            .finish()
    }
}

impl Serialize for FilterConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        if crate::secret::revealed() {
            m.serialize_entry(&self.kind, &self.spec)?;
        } else {
            m.serialize_entry(&self.kind, &crate::secret::redact_spec(&self.kind, &self.spec))?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for FilterConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let mut it = map.into_iter();
        match (it.next(), it.next()) {
            (Some((kind, spec)), None) => Ok(FilterConfig { kind, spec }),
            _ => Err(serde::de::Error::custom(
                "a filter is a map with exactly one key, its kind (e.g. `- redirect: {...}`)",
            )),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_weight() -> u32 {
    1
}
fn default_overprovisioning() -> f64 {
    1.4
}
fn default_aggression() -> f64 {
    1.0
}
fn default_min_weight_percent() -> f64 {
    10.0
}
