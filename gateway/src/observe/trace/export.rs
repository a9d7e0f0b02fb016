//! The OTLP/HTTP exporter: one thread per tracer with its own current-thread runtime.
//! Every few milliseconds it takes what the bounded queue holds (it never waits on the
//! queue, so a worker's `try_send` never wakes it: no system call per request), and
//! sends a batch when it holds `batch_size` spans or its oldest span has waited
//! `flush_interval`. A batch is one `ExportTraceServiceRequest` POSTed as
//! `application/x-protobuf`; a 2xx counts its spans exported, anything else (or no
//! answer within `timeout`) drops them, counted. When its tracer is gone it sends what
//! it holds and ends.

use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use sluice_config::tracing::{parse_endpoint, TracingConfig};
use sluice_core::trace::AttrValue;

use super::otlp;
use super::{FinishedSpan, TraceMetrics};

/// Starts the exporter thread for `config`, reading `rx`.
pub fn spawn(
    config: TracingConfig,
    rx: Receiver<Vec<FinishedSpan>>,
    metrics: TraceMetrics,
) -> Result<(), String> {
    let (host, port, path) = parse_endpoint(&config.endpoint)?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let uri: Uri = format!("http://{host}:{port}{path}")
        .parse()
        .map_err(|e| format!("tracing.endpoint: {e}"))?;
    let mut headers = HeaderMap::new();
    for (k, v) in &config.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("tracing.headers.{k}: {e}"))?;
        let mut value = HeaderValue::from_str(v.expose()).map_err(|e| format!("tracing.headers.{k}: {e}"))?;
        // A credential for the collector: kept out of any `Debug` of the request.
        value.set_sensitive(true);
        headers.append(name, value);
    }
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("exporter runtime: {e}"))?;
    std::thread::Builder::new()
        .name("sluice-trace-export".into())
        .spawn(move || {
            rt.block_on(run(
                Exporter {
                    config,
                    uri,
                    headers,
                    metrics,
                    last_warning: None,
                },
                rx,
            ));
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the exporter thread: {e}"))
}

struct Exporter {
    config: TracingConfig,
    uri: Uri,
    headers: HeaderMap,
    metrics: TraceMetrics,
    last_warning: Option<Instant>,
}

/// How often the exporter looks at its queue.
const POLL_EVERY: Duration = Duration::from_millis(20);

async fn run(mut ex: Exporter, rx: Receiver<Vec<FinishedSpan>>) {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let batch_size = ex.config.export.batch_size.max(1);
    let flush = ex.config.export.flush_interval;
    let poll = flush.min(POLL_EVERY);
    let mut batch: Vec<FinishedSpan> = Vec::new();
    let mut oldest: Option<Instant> = None;
    loop {
        let mut closed = false;
        while batch.len() < batch_size {
            match rx.try_recv() {
                Ok(spans) => {
                    if oldest.is_none() {
                        oldest = Some(Instant::now());
                    }
                    batch.extend(spans);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let due = batch.len() >= batch_size || closed || oldest.is_some_and(|t| t.elapsed() >= flush);
        if due && !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(batch_size));
            let spans = std::mem::replace(&mut batch, rest);
            oldest = (!batch.is_empty()).then(Instant::now);
            ex.send(&client, spans).await;
            continue;
        }
        if closed {
            return;
        }
        tokio::time::sleep(poll).await;
    }
}

impl Exporter {
    async fn send(&mut self, client: &Client<HttpConnector, Full<Bytes>>, spans: Vec<FinishedSpan>) {
        let n = spans.len() as u64;
        let body = encode(&self.config.service_name, spans);
        let mut req = Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        let exchange = async {
            let resp = client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            Ok::<_, String>(status)
        };
        let result = match tokio::time::timeout(self.config.export.timeout, exchange).await {
            Ok(Ok(status)) if status.is_success() => {
                self.metrics.exported.inc_by(n);
                return;
            }
            Ok(Ok(status)) => format!("the collector answered {status}"),
            Ok(Err(e)) => e,
            Err(_) => "timed out".into(),
        };
        self.metrics.dropped_export_failed.inc_by(n);
        // One warning a minute at most: a dead collector must not flood the log.
        if self
            .last_warning
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.last_warning = Some(Instant::now());
            tracing::warn!(endpoint = %self.uri, "tracing: export of {n} spans failed: {result}");
        }
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn kv(key: &str, value: otlp::Value) -> otlp::KeyValue {
    otlp::KeyValue {
        key: key.to_string(),
        value: Some(otlp::AnyValue { value: Some(value) }),
    }
}

fn attr(v: AttrValue) -> otlp::Value {
    match v {
        AttrValue::Str(s) => otlp::Value::StringValue(s.to_string()),
        AttrValue::Static(s) => otlp::Value::StringValue(s.to_string()),
        AttrValue::Int(i) => otlp::Value::IntValue(i),
        AttrValue::Bool(b) => otlp::Value::BoolValue(b),
    }
}

/// The OTLP request for `spans`, all under one resource (`service.name`) and scope.
pub fn request(service_name: &str, spans: Vec<FinishedSpan>) -> otlp::ExportTraceServiceRequest {
    let version = env!("CARGO_PKG_VERSION");
    let spans = spans
        .into_iter()
        .map(|s| otlp::Span {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            trace_state: s
                .trace_state
                .and_then(|v| v.to_str().ok().map(str::to_string))
                .unwrap_or_default(),
            parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: s.name,
            kind: s.kind,
            start_time_unix_nano: nanos(s.start),
            end_time_unix_nano: nanos(s.end).max(nanos(s.start)),
            attributes: s.attributes.into_iter().map(|(k, v)| kv(k, attr(v))).collect(),
            status: s.error.map(|m| otlp::Status {
                message: m.to_string(),
                code: otlp::STATUS_ERROR,
            }),
            // Sampled, and whether the parent is remote is known (bit 8) and set (bit 9).
            flags: 0x1 | 0x100 | if s.remote_parent { 0x200 } else { 0 },
        })
        .collect();
    otlp::ExportTraceServiceRequest {
        resource_spans: vec![otlp::ResourceSpans {
            resource: Some(otlp::Resource {
                attributes: vec![
                    kv("service.name", otlp::Value::StringValue(service_name.to_string())),
                    kv("service.version", otlp::Value::StringValue(version.to_string())),
                    kv("telemetry.sdk.name", otlp::Value::StringValue("sluice".into())),
                    kv("telemetry.sdk.language", otlp::Value::StringValue("rust".into())),
                ],
            }),
            scope_spans: vec![otlp::ScopeSpans {
                scope: Some(otlp::InstrumentationScope {
                    name: "sluice".into(),
                    version: version.into(),
                }),
                spans,
            }],
        }],
    }
}

/// `spans` as an encoded `ExportTraceServiceRequest`.
pub fn encode(service_name: &str, spans: Vec<FinishedSpan>) -> Vec<u8> {
    request(service_name, spans).encode_to_vec()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_encodes_and_decodes() {
        let span = FinishedSpan {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: Some([3; 8]),
            remote_parent: true,
            name: "GET r".into(),
            kind: otlp::KIND_SERVER,
            start: UNIX_EPOCH + Duration::from_secs(10),
            end: UNIX_EPOCH + Duration::from_secs(11),
            attributes: vec![("http.response.status_code", AttrValue::Int(503))],
            error: Some("server error"),
            trace_state: Some(HeaderValue::from_static("a=b")),
        };
        let bytes = encode("svc", vec![span]);
        let back = otlp::ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let rs = &back.resource_spans[0];
        assert_eq!(
            rs.resource.as_ref().unwrap().attributes[0].value,
            Some(otlp::AnyValue {
                value: Some(otlp::Value::StringValue("svc".into()))
            })
        );
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(s.trace_id, vec![1; 16]);
        assert_eq!(s.parent_span_id, vec![3; 8]);
        assert_eq!(s.start_time_unix_nano, 10_000_000_000);
        assert_eq!(s.status.as_ref().unwrap().code, otlp::STATUS_ERROR);
        assert_eq!(s.trace_state, "a=b");
        assert_eq!(s.flags, 0x301);
    }
}
