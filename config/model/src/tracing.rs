//! OpenTelemetry tracing: `tracing:` in the config.
//!
//! ```yaml
//! tracing:
//!   enabled: true
//!   endpoint: http://127.0.0.1:4318/v1/traces
//!   service_name: sluice
//!   sampling: {ratio: 0.1, parent_based: true}
//!   export: {batch_size: 512, queue_size: 4096, flush_interval: 1s, timeout: 5s}
//!   headers: {x-tenant: ops}
//! ```
//!
//! Off by default. When on, every request gets a server span (and a child span per
//! upstream try and per forward-auth call), W3C `traceparent` / `tracestate` are read from
//! the request and sent to the upstream with the gateway's span as parent, and finished
//! spans are exported over OTLP HTTP/protobuf in batches, off the request path, through a
//! bounded queue. `docs/tracing.md` is the operator's guide.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::ConfigError;

/// The `tracing:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Whether requests are traced. Default: `false` (no span is built, no header read).
    pub enabled: bool,
    /// The OTLP/HTTP traces endpoint spans are POSTed to (protobuf), `http://host:port/path`.
    /// Default: `http://127.0.0.1:4318/v1/traces` (a local collector).
    pub endpoint: String,
    /// The `service.name` resource attribute. Default: `sluice`.
    pub service_name: String,
    /// Which requests are recorded. Default: see [`SamplingConfig`] (all, parent-based).
    pub sampling: SamplingConfig,
    /// Batching and the bounded queue. Default: see [`ExportConfig`].
    pub export: ExportConfig,
    /// Extra HTTP headers sent with every export request (e.g. an API key for the
    /// collector). Their values are secrets (shown as `<redacted>`). Default: none.
    pub headers: BTreeMap<String, crate::secret::Secret>,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            service_name: "sluice".into(),
            sampling: SamplingConfig::default(),
            export: ExportConfig::default(),
            headers: BTreeMap::new(),
        }
    }
}

/// Sampling: a ratio for new traces, and the incoming `traceparent`'s decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// The share of new traces recorded, 0.0..=1.0, decided from the trace id (so every
    /// service sampling by ratio agrees on a trace). Default: `1.0`.
    pub ratio: f64,
    /// A request with a valid `traceparent` follows that header's `sampled` flag instead
    /// of the ratio. Default: `true`.
    pub parent_based: bool,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            ratio: 1.0,
            parent_based: true,
        }
    }
}

/// How spans leave the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Most spans in one export request (1..=65536). Default: `512`.
    pub batch_size: usize,
    /// Finished requests (each with its server span and its children) waiting for the
    /// exporter; when full, a request's spans are dropped and counted in
    /// `sluice_trace_spans_dropped_total{reason="queue_full"}` (1..=1048576).
    /// Default: `4096`.
    pub queue_size: usize,
    /// The longest a finished span waits before its batch is sent (1ms..=1m).
    /// Default: `1s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// The longest one export request may take (1ms..=1m). Default: `5s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            batch_size: 512,
            queue_size: 4096,
            flush_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The endpoint split into what the exporter connects to: `(host, port, path)`. `Err`
/// says what is wrong with it.
pub fn parse_endpoint(endpoint: &str) -> Result<(String, u16, String), String> {
    let rest = endpoint.strip_prefix("http://").ok_or_else(|| {
        "must start with http:// (OTLP over HTTP/protobuf; https is not supported yet)".to_string()
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/v1/traces"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        (h, p.strip_prefix(':').unwrap_or(""))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (authority, ""),
        }
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    let port = if port.is_empty() {
        80
    } else {
        port.parse::<u16>()
            .map_err(|_| format!("invalid port {port:?}"))?
    };
    if path.contains(char::is_whitespace) || path.contains('#') {
        return Err("invalid path".into());
    }
    Ok((host.to_string(), port, path.to_string()))
}

/// Every error in `tracing`, each naming its field path.
pub fn validate(t: &TracingConfig) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |path: &str, message: String| {
        errors.push(ConfigError {
            path: format!("tracing.{path}"),
            message,
        });
    };
    if let Err(e) = parse_endpoint(&t.endpoint) {
        err("endpoint", e);
    }
    if t.service_name.is_empty() || t.service_name.len() > 255 {
        err("service_name", "1 to 255 characters".into());
    }
    if !(0.0..=1.0).contains(&t.sampling.ratio) {
        err("sampling.ratio", "must be between 0.0 and 1.0".into());
    }
    if !(1..=65536).contains(&t.export.batch_size) {
        err("export.batch_size", "must be 1..=65536".into());
    }
    if !(1..=1_048_576).contains(&t.export.queue_size) {
        err("export.queue_size", "must be 1..=1048576".into());
    }
    let range = Duration::from_millis(1)..=Duration::from_secs(60);
    if !range.contains(&t.export.flush_interval) {
        err("export.flush_interval", "must be 1ms..=1m".into());
    }
    if !range.contains(&t.export.timeout) {
        err("export.timeout", "must be 1ms..=1m".into());
    }
    for (name, value) in &t.headers {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_name {
            err(&format!("headers.{name}"), "invalid header name".into());
        } else if [
            "host",
            "content-length",
            "content-type",
            "connection",
            "transfer-encoding",
        ]
        .contains(&name.to_ascii_lowercase().as_str())
        {
            err(&format!("headers.{name}"), "set by the exporter itself".into());
        }
        if value
            .expose()
            .bytes()
            .any(|b| b < 0x20 && b != b'\t' || b == 0x7f)
        {
            err(&format!("headers.{name}"), "invalid header value".into());
        }
    }
    errors
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_split_into_host_port_and_path() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:4318/v1/traces").unwrap(),
            ("127.0.0.1".into(), 4318, "/v1/traces".into())
        );
        assert_eq!(
            parse_endpoint("http://collector").unwrap(),
            ("collector".into(), 80, "/v1/traces".into())
        );
        assert_eq!(
            parse_endpoint("http://[::1]:9/x").unwrap(),
            ("::1".into(), 9, "/x".into())
        );
        assert!(parse_endpoint("https://c:4318/v1/traces").is_err());
        assert!(parse_endpoint("http://:4318/").is_err());
        assert!(parse_endpoint("http://c:99999/").is_err());
    }

    #[test]
    fn errors_name_the_field_path() {
        let t = TracingConfig {
            enabled: true,
            endpoint: "grpc://x".into(),
            service_name: String::new(),
            sampling: SamplingConfig {
                ratio: 1.5,
                parent_based: true,
            },
            export: ExportConfig {
                batch_size: 0,
                queue_size: 0,
                flush_interval: Duration::ZERO,
                timeout: Duration::from_secs(120),
            },
            headers: [
                ("bad name".to_string(), "v".into()),
                ("content-type".into(), "x".into()),
            ]
            .into_iter()
            .collect(),
        };
        let paths: Vec<String> = validate(&t).into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "tracing.endpoint",
                "tracing.service_name",
                "tracing.sampling.ratio",
                "tracing.export.batch_size",
                "tracing.export.queue_size",
                "tracing.export.flush_interval",
                "tracing.export.timeout",
                "tracing.headers.bad name",
                "tracing.headers.content-type",
            ]
        );
        assert!(validate(&TracingConfig::default()).is_empty());
    }
}
