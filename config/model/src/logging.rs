//! Where the access log and the gateway's events go: `logging:` in the config.
//!
//! ```yaml
//! logging:
//!   access_log:
//!     sinks:
//!       - stdout: {}
//!       - file: {path: /var/log/sluice/access.log}
//!       - kafka: {brokers: ["10.0.0.5:9092"], topic: sluice-access}
//!     fields: [time, request_id, route, status, duration_ms]
//!   events:
//!     sinks:
//!       - kafka: {brokers: ["10.0.0.5:9092"], topic: sluice-events, key: route}
//!     history: 1000
//! ```
//!
//! Each sink has its own bounded buffer and its own writer (a thread, or a task on its own
//! runtime for Kafka): a slow or dead sink never delays a request or another sink; what it
//! cannot take is dropped and counted (`sluice_log_dropped_total{stream, sink, reason}`).
//! `docs/logging.md` is the operator's guide.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::ConfigError;

/// The log streams and their sinks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// The access log: one record per request. Default: no sinks (off), unless
    /// `server.access_log: true`, which means one `stdout` sink.
    pub access_log: AccessLogStream,
    /// Gateway events (config applied or rejected, breaker transitions, endpoint
    /// ejections and recoveries, health changes). Default: no sinks; the recent history
    /// is kept for `/api/v1/events` either way.
    pub events: EventStream,
}

/// The access-log stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogStream {
    /// Where records go. Default: none.
    pub sinks: Vec<SinkConfig>,
    /// The fields of each record, in this order. Default: every field of
    /// [`AccessField::ALL`], in that order.
    pub fields: Vec<AccessField>,
}

impl Default for AccessLogStream {
    fn default() -> Self {
        Self {
            sinks: Vec::new(),
            fields: AccessField::ALL.to_vec(),
        }
    }
}

/// The events stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EventStream {
    /// Where events go. Default: none.
    pub sinks: Vec<SinkConfig>,
    /// How many recent events `/api/v1/events` keeps (1..=100000). Default: `1000`.
    pub history: usize,
}

impl Default for EventStream {
    fn default() -> Self {
        Self {
            sinks: Vec::new(),
            history: 1000,
        }
    }
}

/// A field of an access-log record (`docs/logging.md` describes each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccessField {
    /// When the request arrived, RFC 3339 with milliseconds, UTC.
    Time,
    /// The request id (as sent back in the request id header).
    RequestId,
    /// The client's address (after `server.trusted_proxies`).
    Client,
    /// The request method.
    Method,
    /// The `Host` (or `:authority`).
    Host,
    /// The path, without the query.
    Path,
    /// The status sent to the client; 0 when none was sent.
    Status,
    /// Request body bytes read.
    BytesIn,
    /// Response body bytes sent.
    BytesOut,
    /// From arrival to the end of the response, in milliseconds.
    DurationMs,
    /// The endpoint (`host:port`) of the last try.
    Upstream,
    /// Time to the upstream's response header, in milliseconds.
    UpstreamMs,
    /// The matched route's id.
    Route,
    /// The upstream id that served the request.
    Backend,
    /// Why that backend was chosen: `weight`, `header`, `cookie`, `query`, `source`,
    /// `consumer` or `sticky`; left out when no backend was chosen.
    BackendReason,
    /// Retries started.
    Retries,
    /// The route's breaker state when the request ended.
    Breaker,
    /// The `User-Agent` header.
    UserAgent,
    /// The gateway's error code, when it answered with an error.
    Error,
    /// The consumer an authentication filter identified (never a credential).
    Consumer,
    /// The name of the rate or concurrency limit that answered; left out when none did.
    Limit,
    /// That limit's decision; left out when no limit answered.
    LimitDecision,
    /// The W3C trace id (32 hex digits) of the request's trace; left out when tracing
    /// is off (`tracing.enabled`).
    TraceId,
    /// The id (16 hex digits) of the gateway's server span for the request; left out
    /// when tracing is off.
    SpanId,
}

impl AccessField {
    /// Every field, in the default order.
    pub const ALL: [AccessField; 24] = [
        AccessField::Time,
        AccessField::RequestId,
        AccessField::Client,
        AccessField::Method,
        AccessField::Host,
        AccessField::Path,
        AccessField::Status,
        AccessField::BytesIn,
        AccessField::BytesOut,
        AccessField::DurationMs,
        AccessField::Upstream,
        AccessField::UpstreamMs,
        AccessField::Route,
        AccessField::Backend,
        AccessField::BackendReason,
        AccessField::Retries,
        AccessField::Breaker,
        AccessField::UserAgent,
        AccessField::Error,
        AccessField::Consumer,
        AccessField::Limit,
        AccessField::LimitDecision,
        AccessField::TraceId,
        AccessField::SpanId,
    ];

    /// The field's JSON key.
    pub const fn as_str(self) -> &'static str {
        match self {
            AccessField::Time => "time",
            AccessField::RequestId => "request_id",
            AccessField::Client => "client",
            AccessField::Method => "method",
            AccessField::Host => "host",
            AccessField::Path => "path",
            AccessField::Status => "status",
            AccessField::BytesIn => "bytes_in",
            AccessField::BytesOut => "bytes_out",
            AccessField::DurationMs => "duration_ms",
            AccessField::Upstream => "upstream",
            AccessField::UpstreamMs => "upstream_ms",
            AccessField::Route => "route",
            AccessField::Backend => "backend",
            AccessField::BackendReason => "backend_reason",
            AccessField::Retries => "retries",
            AccessField::Breaker => "breaker",
            AccessField::UserAgent => "user_agent",
            AccessField::Error => "error",
            AccessField::Consumer => "consumer",
            AccessField::Limit => "limit",
            AccessField::LimitDecision => "limit_decision",
            AccessField::TraceId => "trace_id",
            AccessField::SpanId => "span_id",
        }
    }
}

/// One sink. Written as a one-key map: `{stdout: {}}`, `{file: {path: ...}}`,
/// `{kafka: {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// The process's stdout, JSON lines.
    Stdout(StdoutSink),
    /// A file, JSON lines, appended to; reopened on SIGUSR1 (for logrotate).
    File(FileSink),
    /// A Kafka topic, one record per message.
    Kafka(Box<KafkaSink>),
}

/// Default buffer: 8192 records.
const fn default_buffer() -> usize {
    8192
}

impl SinkConfig {
    /// The sink's name in metrics labels: its `name`, else its kind (`stdout`, `file`,
    /// `kafka`).
    pub fn name(&self) -> &str {
        let (name, kind) = match self {
            SinkConfig::Stdout(s) => (&s.name, "stdout"),
            SinkConfig::File(s) => (&s.name, "file"),
            SinkConfig::Kafka(s) => (&s.name, "kafka"),
        };
        name.as_deref().unwrap_or(kind)
    }

    /// How many records the sink's buffer holds before new ones are dropped.
    pub fn buffer(&self) -> usize {
        match self {
            SinkConfig::Stdout(s) => s.buffer,
            SinkConfig::File(s) => s.buffer,
            SinkConfig::Kafka(s) => s.buffer,
        }
    }
}

/// The stdout sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutSink {
    /// Name in metrics labels, unique within the stream. Default: `stdout`.
    #[serde(default)]
    pub name: Option<String>,
    /// Records buffered before new ones are dropped (1..=1000000). Default: `8192`.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
}

/// The file sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSink {
    /// Name in metrics labels, unique within the stream. Default: `file`.
    #[serde(default)]
    pub name: Option<String>,
    /// Records buffered before new ones are dropped (1..=1000000). Default: `8192`.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// The file, created if missing, appended to. Reopened (by name) on SIGUSR1, so
    /// logrotate can rename it and signal. Required.
    pub path: String,
}

/// What a Kafka message's key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KafkaKey {
    /// The route id (events: the route of a breaker event, the upstream of an endpoint
    /// event); no key when there is none.
    Route,
    /// The request id (events have none, and go without a key).
    RequestId,
    /// No key: messages are spread over the partitions in turn.
    None,
}

/// Compression of Kafka record batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KafkaCompression {
    /// None.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
}

/// Which acknowledgement a produce request waits for, written as Kafka's producer
/// setting is (`all` or `-1`, `1`, `0`) or by name (`all`, `leader`, `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaAcks {
    /// Every in-sync replica (`acks=all`, `-1`): the only mode the producer sends.
    All,
    /// The leader only (`acks=1`): refused by validation, the producer cannot send it.
    Leader,
    /// No acknowledgement (`acks=0`): refused by validation, the producer cannot send it.
    None,
}

impl KafkaAcks {
    /// Why the producer cannot send this mode (`None` for `all`).
    pub fn unsupported(self) -> Option<&'static str> {
        match self {
            KafkaAcks::All => None,
            KafkaAcks::Leader => Some(
                "`1` (leader only) is not supported: the producer's client (rskafka 0.6) always sends acks=-1, hard-coded in its produce request; use `all`",
            ),
            KafkaAcks::None => Some(
                "`0` (no acknowledgement) is not supported: the producer's client (rskafka 0.6) always sends acks=-1, and it waits for a response to every request, which a broker does not send with acks=0; use `all`",
            ),
        }
    }
}

impl<'de> Deserialize<'de> for KafkaAcks {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KafkaAcks, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = KafkaAcks;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`all` (or -1), `1` or `0`")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<KafkaAcks, E> {
                match v {
                    -1 => Ok(KafkaAcks::All),
                    1 => Ok(KafkaAcks::Leader),
                    0 => Ok(KafkaAcks::None),
                    _ => Err(E::custom(format!(
                        "invalid acks {v}: use `all` (or -1), `1` or `0`"
                    ))),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<KafkaAcks, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KafkaAcks, E> {
                match v {
                    "all" | "-1" => Ok(KafkaAcks::All),
                    "leader" | "1" => Ok(KafkaAcks::Leader),
                    "none" | "0" => Ok(KafkaAcks::None),
                    _ => Err(E::custom(format!(
                        "invalid acks {v:?}: use `all` (or -1), `1` or `0`"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl schemars::JsonSchema for KafkaAcks {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "KafkaAcks".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Which acknowledgement a produce request waits for: `all` (or -1), the only mode the producer sends; `1` and `0` (also `leader`, `none`) are refused by validation, saying why.",
            "oneOf": [
                {"type": "string", "enum": ["all", "leader", "none", "-1", "1", "0"]},
                {"type": "integer", "enum": [-1, 0, 1]},
            ],
        })
    }
}

/// SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
pub enum SaslMechanism {
    /// `PLAIN` (use it over TLS only).
    Plain,
    /// `SCRAM-SHA-256`.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// `SCRAM-SHA-512`.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// SASL authentication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`. Required.
    pub mechanism: SaslMechanism,
    /// User name. Required.
    pub username: String,
    /// Password, a secret (shown as `<redacted>`). Default: none; then `password_env`
    /// must be set.
    #[serde(default)]
    pub password: Option<crate::secret::Secret>,
    /// Environment variable holding the password (read when the sink starts).
    /// Default: none.
    #[serde(default)]
    pub password_env: Option<String>,
}

/// TLS to the brokers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaTls {
    /// CA certificates (PEM) to verify the brokers with. Default: the system's roots
    /// (webpki roots).
    pub ca: Option<String>,
    /// Client certificate (PEM) for mutual TLS, with `key`. Default: none.
    pub cert: Option<String>,
    /// Client key (PEM), with `cert`. Default: none.
    pub key: Option<String>,
}

/// The Kafka sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSink {
    /// Name in metrics labels, unique within the stream. Default: `kafka`.
    #[serde(default)]
    pub name: Option<String>,
    /// Records buffered (while a batch is out, or while Kafka is down) before new ones
    /// are dropped (1..=1000000). Default: `8192`.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// Bootstrap brokers, `host:port`. Required (at least one).
    pub brokers: Vec<String>,
    /// The topic. It must exist (the producer does not create topics). Required.
    pub topic: String,
    /// The message key, which picks the partition (murmur2, as Kafka's default
    /// partitioner). Default: `route`.
    #[serde(default = "default_key")]
    pub key: KafkaKey,
    /// How long a batch waits for more records once its first is in. Default: `100ms`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// A batch is sent once its records' bytes reach this (1 KiB..=16 MiB), even before
    /// `linger`. Default: `1048576` (1 MiB).
    #[serde(default = "default_batch_bytes")]
    pub batch_max_bytes: usize,
    /// Batch compression: `none`, `gzip`, `snappy`. Default: `none`.
    #[serde(default = "default_compression")]
    pub compression: KafkaCompression,
    /// Acknowledgement: `all` (the only mode supported, see `docs/logging.md`).
    /// Default: `all`.
    #[serde(default = "default_acks")]
    pub acks: KafkaAcks,
    /// TLS to the brokers. Default: none (plain TCP).
    #[serde(default)]
    pub tls: Option<KafkaTls>,
    /// SASL authentication. Default: none.
    #[serde(default)]
    pub sasl: Option<KafkaSasl>,
    /// Client id sent to the brokers. Default: `sluice`.
    #[serde(default = "default_client_id")]
    pub client_id: String,
}

const fn default_key() -> KafkaKey {
    KafkaKey::Route
}
const fn default_linger() -> Duration {
    Duration::from_millis(100)
}
const fn default_batch_bytes() -> usize {
    1024 * 1024
}
const fn default_compression() -> KafkaCompression {
    KafkaCompression::None
}
const fn default_acks() -> KafkaAcks {
    KafkaAcks::All
}
fn default_client_id() -> String {
    "sluice".into()
}

fn sinks(p: &str, sinks: &[SinkConfig], errors: &mut Vec<ConfigError>) {
    let mut err = |path: String, message: &str| {
        errors.push(ConfigError {
            path,
            message: message.to_string(),
        });
    };
    let mut names = HashSet::new();
    for (i, s) in sinks.iter().enumerate() {
        let (kind, name) = match s {
            SinkConfig::Stdout(x) => ("stdout", &x.name),
            SinkConfig::File(x) => ("file", &x.name),
            SinkConfig::Kafka(x) => ("kafka", &x.name),
        };
        let sp = format!("{p}.sinks[{i}].{kind}");
        if let Some(n) = name {
            if n.is_empty()
                || n.len() > 64
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                err(format!("{sp}.name"), "1 to 64 characters of [A-Za-z0-9_-]");
            }
        }
        if !names.insert(s.name().to_string()) {
            err(
                format!("{sp}.name"),
                &format!(
                    "sink name {:?} is used twice in this stream; give each sink of a kind its own name",
                    s.name()
                ),
            );
        }
        if !(1..=1_000_000).contains(&s.buffer()) {
            err(format!("{sp}.buffer"), "must be 1..=1000000");
        }
        match s {
            SinkConfig::Stdout(_) => {}
            SinkConfig::File(f) => {
                if f.path.is_empty() {
                    err(format!("{sp}.path"), "must not be empty");
                }
            }
            SinkConfig::Kafka(k) => {
                if k.brokers.is_empty() {
                    err(format!("{sp}.brokers"), "at least one broker is required");
                }
                for (j, b) in k.brokers.iter().enumerate() {
                    let ok = b
                        .rsplit_once(':')
                        .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
                    if !ok {
                        err(format!("{sp}.brokers[{j}]"), "must be host:port");
                    }
                }
                let topic_ok = !k.topic.is_empty()
                    && k.topic.len() <= 249
                    && k.topic
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                if !topic_ok {
                    err(
                        format!("{sp}.topic"),
                        "a Kafka topic name: 1 to 249 characters of [A-Za-z0-9._-]",
                    );
                }
                if !(1024..=16 * 1024 * 1024).contains(&k.batch_max_bytes) {
                    err(format!("{sp}.batch_max_bytes"), "must be 1024..=16777216");
                }
                if k.linger > Duration::from_secs(60) {
                    err(format!("{sp}.linger"), "must be at most 60s");
                }
                if let Some(why) = k.acks.unsupported() {
                    err(format!("{sp}.acks"), why);
                }
                if let Some(t) = &k.tls {
                    if t.cert.is_some() != t.key.is_some() {
                        err(format!("{sp}.tls"), "cert and key go together");
                    }
                }
                if let Some(s) = &k.sasl {
                    if s.username.is_empty() {
                        err(format!("{sp}.sasl.username"), "must not be empty");
                    }
                    if s.password.is_some() == s.password_env.is_some() {
                        err(
                            format!("{sp}.sasl"),
                            "set exactly one of password and password_env",
                        );
                    }
                }
            }
        }
    }
}

/// Checks `logging` (and its interplay with `server.access_log`); every error carries its
/// field path.
pub fn validate(logging: &LoggingConfig, server_access_log: bool) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    sinks("logging.access_log", &logging.access_log.sinks, &mut errors);
    sinks("logging.events", &logging.events.sinks, &mut errors);
    if server_access_log && !logging.access_log.sinks.is_empty() {
        errors.push(ConfigError {
            path: "server.access_log".into(),
            message: "`server.access_log: true` means one stdout sink; with logging.access_log.sinks set, \
                      add `- stdout: {}` there instead and remove server.access_log"
                .into(),
        });
    }
    let fields = &logging.access_log.fields;
    if fields.is_empty() {
        errors.push(ConfigError {
            path: "logging.access_log.fields".into(),
            message: "at least one field is required".into(),
        });
    }
    let mut seen = HashSet::new();
    for (i, f) in fields.iter().enumerate() {
        if !seen.insert(*f) {
            errors.push(ConfigError {
                path: format!("logging.access_log.fields[{i}]"),
                message: format!("{} is listed twice", f.as_str()),
            });
        }
    }
    if !(1..=100_000).contains(&logging.events.history) {
        errors.push(ConfigError {
            path: "logging.events.history".into(),
            message: "must be 1..=100000".into(),
        });
    }
    errors
}

impl LoggingConfig {
    /// The access-log sinks in effect: `logging.access_log.sinks`, or one stdout sink
    /// when `server.access_log` is on (the older switch).
    pub fn access_sinks(&self, server_access_log: bool) -> Vec<SinkConfig> {
        if self.access_log.sinks.is_empty() && server_access_log {
            vec![SinkConfig::Stdout(StdoutSink {
                name: None,
                buffer: default_buffer(),
            })]
        } else {
            self.access_log.sinks.clone()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::Config;

    fn errors(text: &str) -> Vec<String> {
        match Config::from_text(text) {
            Ok(c) => c
                .validate()
                .err()
                .map(|e| e.0.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    const BASE: &str = "listeners: [{name: w, listen: '127.0.0.1:1'}]\n";

    #[test]
    fn a_full_logging_section_parses_and_validates() {
        let text = format!(
            "{BASE}logging:\n  access_log:\n    sinks:\n      - stdout: {{}}\n      - file: {{path: /tmp/a.log, buffer: 10}}\n      - kafka: {{brokers: ['127.0.0.1:9092'], topic: access, key: request_id, linger: 5ms, compression: gzip, sasl: {{mechanism: SCRAM-SHA-256, username: u, password: p}}}}\n    fields: [time, status]\n  events:\n    sinks: [{{kafka: {{brokers: ['127.0.0.1:9092'], topic: events}}}}]\n    history: 10\n"
        );
        assert_eq!(errors(&text), Vec::<String>::new());
        let c = Config::from_text(&text).unwrap();
        assert_eq!(c.logging.access_log.sinks.len(), 3);
        assert_eq!(c.logging.access_log.sinks[2].name(), "kafka");
    }

    #[test]
    fn errors_name_their_field() {
        let text = format!(
            "{BASE}server: {{access_log: true}}\nlogging:\n  access_log:\n    sinks:\n      - stdout: {{}}\n      - stdout: {{}}\n      - kafka: {{brokers: ['nope'], topic: 'a b', acks: leader}}\n    fields: [time, time]\n"
        );
        let e = errors(&text);
        assert!(
            e.iter().any(|e| e
                .starts_with("logging.access_log.sinks[1].stdout.name: sink name \"stdout\" is used twice")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e == "logging.access_log.sinks[2].kafka.brokers[0]: must be host:port"),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("logging.access_log.sinks[2].kafka.topic:")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|e| e
                .starts_with("logging.access_log.sinks[2].kafka.acks: `1` (leader only) is not supported")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e == "logging.access_log.fields[1]: time is listed twice"),
            "{e:?}"
        );
        assert!(e.iter().any(|e| e.starts_with("server.access_log:")), "{e:?}");
        let unknown = errors(&format!("{BASE}logging: {{access_log: {{fields: [nope]}}}}\n"));
        assert!(unknown[0].starts_with("logging.access_log.fields"), "{unknown:?}");
    }

    #[test]
    fn acks_take_kafkas_spellings_and_refuse_what_the_producer_cannot_send() {
        use super::KafkaAcks;
        for (yaml, want) in [
            ("all", KafkaAcks::All),
            ("-1", KafkaAcks::All),
            ("'-1'", KafkaAcks::All),
            ("1", KafkaAcks::Leader),
            ("leader", KafkaAcks::Leader),
            ("0", KafkaAcks::None),
            ("'0'", KafkaAcks::None),
        ] {
            let got: KafkaAcks = serde_yaml::from_str(yaml).unwrap();
            assert_eq!(got, want, "{yaml}");
        }
        assert!(serde_yaml::from_str::<KafkaAcks>("2").is_err());
        assert!(KafkaAcks::All.unsupported().is_none());
        assert!(KafkaAcks::None
            .unsupported()
            .unwrap()
            .contains("waits for a response"));
    }
}
