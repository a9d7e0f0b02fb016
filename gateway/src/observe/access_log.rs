//! The access log: one JSON record per request, written off the request path.
//!
//! A worker builds an [`AccessRecord`] (owned small strings and numbers, no formatting)
//! and hands it to the access-log stream's sinks ([`crate::observe::sinks`]: stdout, a file,
//! Kafka; `logging.access_log` in the config, or `server.access_log: true` for stdout),
//! each of which takes it with one `try_send` on its own bounded queue: a worker never
//! blocks on the log. A sink whose queue is full drops the record and counts it in
//! `sluice_log_dropped_total{stream="access_log", sink, reason}` (and, all sinks
//! together, `sluice_access_log_dropped_total`). The sinks' writers format the records
//! with the configured field set (`logging.access_log.fields`, every field by default).
//!
//! A line looks like (one line, wrapped here):
//!
//! ```text
//! {"time":"2026-12-01T19:40:03.123Z","request_id":"4f1c…","client":"127.0.0.1",
//!  "method":"GET","host":"api.example.com","path":"/users/7","status":200,
//!  "bytes_in":0,"bytes_out":512,"duration_ms":1.234,"upstream":"10.0.0.7:8080",
//!  "upstream_ms":null,"route":"users","backend":"users-v1","retries":0,
//!  "breaker":"closed","user_agent":"curl/8.5.0","error":null,"consumer":"alice"}
//! ```

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use prometheus::IntCounter;
use serde::Serialize;
use sluice_config::logging::{AccessField, KafkaKey};
use sluice_config::Config;
use sluice_core::resilience::BreakerState;

use crate::observe::sinks::{LogMetrics, LogRecord, Sinks};

/// One finished request, as the access log records it. Built on the worker; formatted
/// on the writer thread.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessRecord {
    /// When the request arrived.
    pub time: SystemTime,
    /// The request id (as sent back in the request id header).
    pub request_id: String,
    /// The client's address (the peer, or from `X-Forwarded-For` behind a trusted proxy).
    pub client: Option<IpAddr>,
    /// The request method.
    pub method: http::Method,
    /// The `Host` (or `:authority`), if any.
    pub host: Option<String>,
    /// The request path, without the query.
    pub path: String,
    /// The status sent to the client; 0 when no response was sent.
    pub status: u16,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// From arrival to the end of the response.
    pub duration: Duration,
    /// The endpoint (`host:port`) of the last try, if one was picked.
    pub upstream: Option<String>,
    /// Time to the upstream's response header, when known.
    pub upstream_time: Option<Duration>,
    /// The matched route's id.
    pub route: Option<String>,
    /// The upstream id that served the request (a backend of the route, or its
    /// breaker's fallback).
    pub backend: Option<String>,
    /// Why that backend was chosen (the line's `backend_reason`, left out when none).
    pub backend_reason: Option<sluice_core::BackendReason>,
    /// Retries started.
    pub retries: u32,
    /// The route's breaker state when the request ended; `None` without a breaker.
    pub breaker: Option<BreakerState>,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// The gateway's error code (`ErrorKind::code`), when it answered with an error.
    pub error: Option<&'static str>,
    /// The consumer an authentication filter identified (never a credential).
    pub consumer: Option<std::sync::Arc<str>>,
    /// What the route's filters left for the log: the line's `limit` and
    /// `limit_decision` (set by the rate and concurrency limits) are left out when no
    /// filter set them.
    pub notes: sluice_core::LogNotes,
    /// The request's trace id and server span id when tracing is on; the line's
    /// `trace_id` and `span_id` are left out when it is off.
    pub trace: Option<(sluice_core::trace::TraceId, sluice_core::trace::SpanId)>,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Writes `"key":value` (a comma before all but the first).
fn field<T: Serialize + ?Sized>(out: &mut Vec<u8>, first: &mut bool, key: &str, value: &T) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    // Serializing plain strings and numbers into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

impl AccessRecord {
    /// Appends the record as one JSON line (with its `\n`) to `out`, with every field.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        self.write_fields(&AccessField::ALL, out);
        out.push(b'\n');
    }

    /// Appends the record as one JSON object with `fields`, in that order.
    pub fn write_fields(&self, fields: &[AccessField], out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        let o = &mut *out;
        for f in fields {
            let k = f.as_str();
            match f {
                AccessField::Time => field(
                    o,
                    &mut first,
                    k,
                    &humantime::format_rfc3339_millis(self.time).to_string(),
                ),
                AccessField::RequestId => field(o, &mut first, k, &self.request_id),
                AccessField::Client => field(o, &mut first, k, &self.client),
                AccessField::Method => field(o, &mut first, k, self.method.as_str()),
                AccessField::Host => field(o, &mut first, k, &self.host),
                AccessField::Path => field(o, &mut first, k, &self.path),
                AccessField::Status => field(o, &mut first, k, &self.status),
                AccessField::BytesIn => field(o, &mut first, k, &self.bytes_in),
                AccessField::BytesOut => field(o, &mut first, k, &self.bytes_out),
                AccessField::DurationMs => field(o, &mut first, k, &millis(self.duration)),
                AccessField::Upstream => field(o, &mut first, k, &self.upstream),
                AccessField::UpstreamMs => field(o, &mut first, k, &self.upstream_time.map(millis)),
                AccessField::Route => field(o, &mut first, k, &self.route),
                AccessField::Backend => field(o, &mut first, k, &self.backend),
                AccessField::BackendReason => {
                    if let Some(r) = self.backend_reason {
                        field(o, &mut first, k, r.as_str());
                    }
                }
                AccessField::Retries => field(o, &mut first, k, &self.retries),
                AccessField::Breaker => field(o, &mut first, k, &self.breaker.map(BreakerState::as_str)),
                AccessField::UserAgent => field(o, &mut first, k, &self.user_agent),
                AccessField::Error => field(o, &mut first, k, &self.error),
                AccessField::Consumer => field(o, &mut first, k, &self.consumer.as_deref()),
                AccessField::Limit | AccessField::LimitDecision => {
                    if let Some(v) = self.notes.get(k) {
                        field(o, &mut first, k, v);
                    }
                }
                AccessField::TraceId => {
                    if let Some((t, _)) = &self.trace {
                        field(o, &mut first, k, &sluice_core::trace::hex(t));
                    }
                }
                AccessField::SpanId => {
                    if let Some((_, s)) = &self.trace {
                        field(o, &mut first, k, &sluice_core::trace::hex(s));
                    }
                }
            }
        }
        out.push(b'}');
    }
}

impl LogRecord for AccessRecord {
    fn write_json(&self, fields: &[AccessField], out: &mut Vec<u8>) {
        self.write_fields(fields, out);
    }

    fn key(&self, key: KafkaKey) -> Option<&str> {
        crate::observe::sinks::kafka::key_of(key, self.route.as_deref(), Some(&self.request_id))
    }

    fn timestamp(&self) -> SystemTime {
        self.time
    }
}

/// The access log: the sinks in effect, swapped when a reload changes `logging` (the
/// old sinks drain what they hold and end). Workers load it once per request.
pub struct AccessLog {
    sinks: ArcSwap<Sinks<AccessRecord>>,
    metrics: LogMetrics,
    dropped: IntCounter,
}

impl AccessLog {
    /// The access log for `config` (its `logging.access_log` and `server.access_log`);
    /// every drop is also counted in `dropped` (`sluice_access_log_dropped_total`).
    pub fn start(config: &Config, metrics: LogMetrics, dropped: IntCounter) -> AccessLog {
        let log = AccessLog {
            sinks: ArcSwap::from_pointee(Sinks::none()),
            metrics,
            dropped,
        };
        log.reconfigure(config);
        log
    }

    /// Starts the sinks of `config` and swaps them in.
    pub fn reconfigure(&self, config: &Config) {
        let sinks = Sinks::start(
            "access_log",
            &config.logging.access_sinks(config.server.access_log),
            &config.logging.access_log.fields,
            &self.metrics,
            Some(self.dropped.clone()),
        );
        self.sinks.store(Arc::new(sinks));
    }

    /// The sinks in effect: load once per request, check [`Sinks::is_empty`] before
    /// building a record, then [`Sinks::submit`] it (never blocks).
    #[inline]
    pub fn current(&self) -> arc_swap::Guard<Arc<Sinks<AccessRecord>>> {
        self.sinks.load()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(id: &str) -> AccessRecord {
        AccessRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_618_003_123),
            request_id: id.into(),
            client: Some("127.0.0.1".parse().unwrap()),
            method: http::Method::POST,
            host: Some("api.example.com".into()),
            path: "/users/7".into(),
            status: 201,
            bytes_in: 12,
            bytes_out: 345,
            duration: Duration::from_micros(1500),
            upstream: Some("10.0.0.7:8080".into()),
            upstream_time: Some(Duration::from_millis(1)),
            route: Some("users".into()),
            backend: Some("users-v1".into()),
            backend_reason: None,
            retries: 1,
            breaker: Some(BreakerState::HalfOpen),
            user_agent: Some("curl/8.5.0".into()),
            error: None,
            consumer: Some("alice".into()),
            notes: Default::default(),
            trace: None,
        }
    }

    #[test]
    fn a_record_is_one_json_line_with_every_field() {
        let mut out = Vec::new();
        record("abc").write_line(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text:?}"
        );
        assert_eq!(
            text.trim_end(),
            r#"{"time":"2025-12-01T19:40:03.123Z","request_id":"abc","client":"127.0.0.1","method":"POST","host":"api.example.com","path":"/users/7","status":201,"bytes_in":12,"bytes_out":345,"duration_ms":1.5,"upstream":"10.0.0.7:8080","upstream_ms":1.0,"route":"users","backend":"users-v1","retries":1,"breaker":"half_open","user_agent":"curl/8.5.0","error":null,"consumer":"alice"}"#
        );
        let unrouted = AccessRecord {
            route: None,
            breaker: None,
            error: Some("no_route"),
            path: "/a\"b".into(),
            ..record("x")
        };
        let mut out = Vec::new();
        unrouted.write_line(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["route"], serde_json::Value::Null);
        assert_eq!(v["breaker"], serde_json::Value::Null);
        assert_eq!(v["error"], "no_route");
        assert_eq!(v["path"], "/a\"b");
        let mut notes = sluice_core::LogNotes::default();
        notes.set("limit", sluice_core::LogValue::Shared("hourly".into()));
        notes.set("limit_decision", sluice_core::LogValue::Static("rejected"));
        let limited = AccessRecord { notes, ..record("y") };
        let mut out = Vec::new();
        limited.write_line(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["limit"], "hourly");
        assert_eq!(v["limit_decision"], "rejected");
        let canary = AccessRecord {
            backend_reason: Some(sluice_core::BackendReason::Cookie),
            ..record("c")
        };
        let mut out = Vec::new();
        canary.write_line(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(r#""backend":"users-v1","backend_reason":"cookie","retries""#),
            "{text}"
        );
        let traced = AccessRecord {
            trace: Some(([0xab; 16], [0x01; 8])),
            ..record("z")
        };
        let mut out = Vec::new();
        traced.write_line(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["trace_id"], "ab".repeat(16));
        assert_eq!(v["span_id"], "01".repeat(8));
    }

    #[test]
    fn a_field_set_picks_and_orders_the_fields() {
        let mut out = Vec::new();
        record("abc").write_fields(
            &[AccessField::Status, AccessField::Route, AccessField::UpstreamMs],
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"status":201,"route":"users","upstream_ms":1.0}"#
        );
        assert_eq!(record("abc").key(KafkaKey::Route), Some("users"));
        assert_eq!(record("abc").key(KafkaKey::RequestId), Some("abc"));
        assert_eq!(record("abc").key(KafkaKey::None), None);
    }
}
