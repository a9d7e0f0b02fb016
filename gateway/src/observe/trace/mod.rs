//! OpenTelemetry tracing (`tracing:` in the config; `docs/tracing.md`).
//!
//! - **Per request** ([`RequestTrace`], boxed in the request context only when tracing
//!   is on: off, the request path pays one branch on the snapshot's `tracer`). Ingress
//!   reads the W3C `traceparent` / `tracestate` (an invalid header is ignored: a new
//!   trace starts), decides sampling (parent-based, else by ratio of the trace id), and
//!   puts a [`TraceContext`] into the filters' `ext` for filters that call out (forward
//!   auth). Each upstream try gets a span id when its endpoint is picked; the upstream
//!   request carries `traceparent` with that try's span as parent. The completion phase
//!   builds the finished spans (server, one client span per try, the filters' child
//!   spans) and hands them to the exporter with one `try_send`.
//! - **Off the request path** ([`export`]): one thread per tracer, with its own
//!   current-thread runtime, takes what the bounded queue holds every few milliseconds,
//!   converts it to OTLP protobuf ([`otlp`]) and POSTs batches to the collector. A full
//!   queue drops the request's spans (`sluice_trace_spans_dropped_total{reason=
//!   "queue_full"}`); a failed export drops its batch (`reason="export_failed"`).
//! - **Across reloads** ([`Tracing`]): a snapshot whose `tracing` config is unchanged
//!   keeps the tracer (and its queue); a changed one starts a new tracer, and the old
//!   one's thread sends what it holds and ends once the last snapshot using it is gone.

pub mod export;
pub mod otlp;

use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};
use parking_lot::Mutex;
use prometheus::{IntCounter, IntCounterVec, Opts};
use sluice_config::tracing::TracingConfig;
use sluice_core::resilience::UpstreamOutcome;
use sluice_core::trace::{
    self as w3c, AttrValue, ChildSpan, ChildSpans, Sampler, SpanId, TraceContext, TraceId,
};

use crate::observe::metrics::Metrics;
use crate::upstream::Try;

/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The tracing counters.
#[derive(Clone)]
pub struct TraceMetrics {
    /// `sluice_trace_spans_exported_total`.
    pub exported: IntCounter,
    /// `sluice_trace_spans_dropped_total{reason="queue_full"}`.
    pub dropped_queue_full: IntCounter,
    /// `sluice_trace_spans_dropped_total{reason="export_failed"}`.
    pub dropped_export_failed: IntCounter,
}

impl TraceMetrics {
    /// The counters, registered in `metrics`.
    pub fn new(metrics: &Metrics) -> TraceMetrics {
        let exported = IntCounter::new(
            "sluice_trace_spans_exported_total",
            "Spans the OTLP collector accepted.",
        );
        let dropped = IntCounterVec::new(
            Opts::new(
                "sluice_trace_spans_dropped_total",
                "Spans dropped: the export queue was full, or the export failed.",
            ),
            &["reason"],
        );
        match (exported, dropped) {
            (Ok(exported), Ok(dropped)) => {
                metrics.register(Box::new(exported.clone()));
                metrics.register(Box::new(dropped.clone()));
                TraceMetrics {
                    exported,
                    dropped_queue_full: dropped.with_label_values(&["queue_full"]),
                    dropped_export_failed: dropped.with_label_values(&["export_failed"]),
                }
            }
            // Constant, valid names and help: cannot fail.
            _ => unreachable!("tracing metrics"),
        }
    }
}

/// Process-wide tracing: the tracer in effect, handed to every snapshot compiled with
/// the same `tracing` config.
pub struct Tracing {
    metrics: TraceMetrics,
    current: Mutex<Option<Arc<Tracer>>>,
}

impl Tracing {
    /// No tracer yet; counters registered in `metrics`.
    pub fn new(metrics: &Metrics) -> Tracing {
        Tracing {
            metrics: TraceMetrics::new(metrics),
            current: Mutex::new(None),
        }
    }

    /// The tracer for a snapshot of `config`: `None` when tracing is off; the current
    /// one when its config is the same; else a new one (its exporter started; it stops
    /// when the tracer is dropped). The current tracer is not replaced here: a compile
    /// plans [`Tracing::keep`], which runs only when its config is accepted.
    pub fn tracer_for(&self, config: &TracingConfig) -> Option<Arc<Tracer>> {
        if !config.enabled {
            return None;
        }
        if let Some(t) = self.current.lock().as_ref().filter(|t| t.config == *config) {
            return Some(t.clone());
        }
        match Tracer::start(config, self.metrics.clone()) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                tracing::error!("tracing: cannot start the exporter: {e}; requests are not traced");
                None
            }
        }
    }

    /// Makes `tracer` the current one, reused by later compiles of the same config (run
    /// when a config is published).
    pub fn keep(&self, tracer: Option<Arc<Tracer>>) {
        *self.current.lock() = tracer;
    }

    /// The current tracer (for tests).
    #[cfg(test)]
    pub fn current(&self) -> Option<Arc<Tracer>> {
        self.current.lock().clone()
    }
}

/// One `tracing` config at work: the sampler and the exporter's queue.
pub struct Tracer {
    config: TracingConfig,
    sampler: Sampler,
    tx: SyncSender<Vec<FinishedSpan>>,
    dropped: IntCounter,
}

impl Tracer {
    fn start(config: &TracingConfig, metrics: TraceMetrics) -> Result<Tracer, String> {
        let (tx, rx) = sync_channel(config.export.queue_size.max(1));
        let dropped = metrics.dropped_queue_full.clone();
        export::spawn(config.clone(), rx, metrics)?;
        Ok(Tracer {
            config: config.clone(),
            sampler: Sampler::new(config.sampling.ratio, config.sampling.parent_based),
            tx,
            dropped,
        })
    }

    /// The trace of a request with `headers`: continues a valid `traceparent` (with its
    /// `tracestate`, if valid), else starts a new trace; decides sampling.
    pub fn begin(&self, headers: &HeaderMap) -> Box<RequestTrace> {
        let parent = headers
            .get(&TRACEPARENT)
            .and_then(|v| w3c::parse_traceparent(v.as_bytes()));
        let trace_id = parent.map_or_else(w3c::new_trace_id, |p| p.trace_id);
        let tracestate = parent
            .and(headers.get(&TRACESTATE))
            .filter(|v| !v.is_empty() && w3c::valid_tracestate(v.as_bytes()))
            .cloned();
        Box::new(RequestTrace {
            trace_id,
            span_id: w3c::new_span_id(),
            parent: parent.map(|p| p.span_id),
            sampled: self.sampler.sample(parent.as_ref(), &trace_id),
            tracestate,
            start: SystemTime::now(),
            tries: Vec::new(),
        })
    }

    /// Hands a request's finished spans to the exporter; never blocks (a full queue
    /// drops them, counted).
    pub fn submit(&self, spans: Vec<FinishedSpan>) {
        let n = spans.len() as u64;
        if self.tx.try_send(spans).is_err() {
            self.dropped.inc_by(n);
        }
    }
}

/// A request's trace while it runs.
#[derive(Debug)]
pub struct RequestTrace {
    /// The trace (the caller's, or new).
    pub trace_id: TraceId,
    /// The gateway's server span.
    pub span_id: SpanId,
    /// The caller's span, from a valid `traceparent`.
    pub parent: Option<SpanId>,
    /// Whether spans are recorded and exported (and `traceparent` says sampled).
    pub sampled: bool,
    /// The caller's `tracestate`, passed on unchanged.
    pub tracestate: Option<HeaderValue>,
    /// When the request arrived.
    pub start: SystemTime,
    /// One per upstream try, in the order of `Resilience::tried`.
    pub tries: Vec<TrySpan>,
}

/// One upstream try's span.
#[derive(Debug, Clone, Copy)]
pub struct TrySpan {
    /// Its id: the parent the upstream sees in `traceparent`.
    pub span_id: SpanId,
    /// When its endpoint was picked.
    pub start: SystemTime,
    /// When its outcome was known.
    pub end: Option<SystemTime>,
    /// How it ended.
    pub outcome: Option<UpstreamOutcome>,
}

impl RequestTrace {
    /// What filters see of the trace.
    pub fn context(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id: self.span_id,
            sampled: self.sampled,
        }
    }

    /// A new try starts now.
    pub fn start_try(&mut self) {
        self.tries.push(TrySpan {
            span_id: w3c::new_span_id(),
            start: SystemTime::now(),
            end: None,
            outcome: None,
        });
    }

    /// The current try ended with `outcome`.
    pub fn end_try(&mut self, outcome: UpstreamOutcome) {
        if let Some(t) = self.tries.last_mut() {
            t.end = Some(SystemTime::now());
            t.outcome = Some(outcome);
        }
    }

    /// The `traceparent` for the upstream: the current try's span as parent (the server
    /// span's before any try).
    pub fn upstream_traceparent(&self) -> HeaderValue {
        let span = self.tries.last().map_or(&self.span_id, |t| &t.span_id);
        let v = w3c::format_traceparent(&self.trace_id, span, self.sampled);
        HeaderValue::from_bytes(&v).unwrap_or(HeaderValue::from_static(""))
    }
}

/// A finished span, as the exporter converts it to OTLP.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedSpan {
    /// The trace.
    pub trace_id: TraceId,
    /// The span.
    pub span_id: SpanId,
    /// Its parent, if any.
    pub parent: Option<SpanId>,
    /// Whether the parent is another service's (the caller's span).
    pub remote_parent: bool,
    /// The span's name.
    pub name: String,
    /// [`otlp::KIND_SERVER`] or [`otlp::KIND_CLIENT`].
    pub kind: i32,
    /// Start.
    pub start: SystemTime,
    /// End.
    pub end: SystemTime,
    /// Attributes.
    pub attributes: Vec<(&'static str, AttrValue)>,
    /// Set when the span failed: status Error with this message.
    pub error: Option<&'static str>,
    /// The W3C `tracestate` it carried.
    pub trace_state: Option<HeaderValue>,
}

/// What the completion phase knows of a finished request, for its spans.
pub struct Summary<'a> {
    /// The request method.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The matched route's id.
    pub route: Option<&'a str>,
    /// The upstream id that served it.
    pub backend: Option<&'a str>,
    /// The endpoints tried, in order.
    pub tried: &'a [Try],
    /// The status sent to the client; 0 when none.
    pub status: u16,
    /// Retries started.
    pub retries: u32,
    /// The breaker's state, when the route has one.
    pub breaker: Option<&'static str>,
    /// The gateway's error code, when it answered with an error.
    pub error: Option<&'static str>,
    /// The client's address.
    pub client: Option<IpAddr>,
    /// The request id.
    pub request_id: &'a str,
    /// The `User-Agent`.
    pub user_agent: Option<&'a str>,
}

fn s(v: &str) -> AttrValue {
    AttrValue::Str(Arc::from(v))
}

fn outcome_error(o: UpstreamOutcome) -> Option<&'static str> {
    match o {
        UpstreamOutcome::Response(code) if code >= 500 => Some("upstream 5xx"),
        UpstreamOutcome::Response(_) => None,
        UpstreamOutcome::ConnectFailure => Some("connect_failure"),
        UpstreamOutcome::Timeout => Some("timeout"),
        UpstreamOutcome::Reset => Some("reset"),
    }
}

impl RequestTrace {
    /// The request's spans: the server span, one client span per try, and the filters'
    /// child spans (`children`).
    pub fn finish(&self, done: &Summary<'_>, children: Vec<ChildSpan>) -> Vec<FinishedSpan> {
        let end = SystemTime::now();
        let mut spans = Vec::with_capacity(1 + self.tries.len() + children.len());
        let mut attrs: Vec<(&'static str, AttrValue)> = Vec::with_capacity(16);
        attrs.push(("http.request.method", s(done.method)));
        attrs.push(("url.path", s(done.path)));
        attrs.push(("url.scheme", s(done.scheme)));
        if let Some(r) = done.route {
            attrs.push(("http.route", s(r)));
            attrs.push(("sluice.route", s(r)));
        }
        if let Some(b) = done.backend {
            attrs.push(("sluice.backend", s(b)));
        }
        if let Some(t) = done.tried.last() {
            let ep = &t.endpoint();
            attrs.push(("sluice.endpoint", s(&ep.key)));
            attrs.push(("network.peer.address", s(&ep.addr.ip().to_string())));
            attrs.push(("network.peer.port", AttrValue::Int(i64::from(ep.addr.port()))));
        }
        if done.status != 0 {
            attrs.push((
                "http.response.status_code",
                AttrValue::Int(i64::from(done.status)),
            ));
        }
        attrs.push(("sluice.retries", AttrValue::Int(i64::from(done.retries))));
        if let Some(b) = done.breaker {
            attrs.push(("sluice.breaker", AttrValue::Static(b)));
        }
        if let Some(e) = done.error {
            attrs.push(("error.type", AttrValue::Static(e)));
        }
        if let Some(ip) = done.client {
            attrs.push(("client.address", s(&ip.to_string())));
        }
        attrs.push(("sluice.request_id", s(done.request_id)));
        if let Some(ua) = done.user_agent {
            attrs.push(("user_agent.original", s(ua)));
        }
        let name = match done.route {
            Some(r) => format!("{} {r}", done.method),
            None => done.method.to_string(),
        };
        spans.push(FinishedSpan {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent: self.parent,
            remote_parent: self.parent.is_some(),
            name,
            kind: otlp::KIND_SERVER,
            start: self.start,
            end,
            attributes: attrs,
            error: (done.status >= 500 || done.status == 0).then_some("server error"),
            trace_state: self.tracestate.clone(),
        });
        for (i, t) in self.tries.iter().enumerate() {
            let mut attrs: Vec<(&'static str, AttrValue)> = Vec::with_capacity(8);
            attrs.push(("http.request.method", s(done.method)));
            if let Some(tr) = done.tried.get(i) {
                let ep = tr.endpoint();
                attrs.push(("server.address", s(&ep.addr.ip().to_string())));
                attrs.push(("server.port", AttrValue::Int(i64::from(ep.addr.port()))));
                attrs.push(("sluice.endpoint", s(&ep.key)));
            }
            if let Some(b) = done.backend {
                attrs.push(("sluice.backend", s(b)));
            }
            attrs.push(("sluice.try", AttrValue::Int(i as i64)));
            let last = i + 1 == self.tries.len();
            // A try pingora started again by itself (a stale pooled connection) has no
            // outcome; the last one ends with the request.
            let outcome = t.outcome.or_else(|| {
                (last && done.status != 0 && done.error.is_none())
                    .then_some(UpstreamOutcome::Response(done.status))
            });
            match outcome {
                Some(UpstreamOutcome::Response(code)) => {
                    attrs.push(("http.response.status_code", AttrValue::Int(i64::from(code))));
                }
                Some(o) => {
                    if let Some(e) = outcome_error(o) {
                        attrs.push(("error.type", AttrValue::Static(e)));
                    }
                }
                None => {}
            }
            let t_end = if last {
                end
            } else {
                t.end
                    .unwrap_or_else(|| self.tries.get(i + 1).map_or(end, |n| n.start))
            };
            spans.push(FinishedSpan {
                trace_id: self.trace_id,
                span_id: t.span_id,
                parent: Some(self.span_id),
                remote_parent: false,
                name: format!("{} upstream", done.method),
                kind: otlp::KIND_CLIENT,
                start: t.start,
                end: t_end,
                attributes: attrs,
                error: outcome.and_then(outcome_error),
                trace_state: None,
            });
        }
        for c in children {
            spans.push(FinishedSpan {
                trace_id: self.trace_id,
                span_id: c.span_id,
                parent: Some(self.span_id),
                remote_parent: false,
                name: c.name.to_string(),
                kind: otlp::KIND_CLIENT,
                start: c.start,
                end: c.end,
                attributes: c.attributes,
                error: c.error,
                trace_state: None,
            });
        }
        spans
    }
}

/// The filters' child spans, taken from their `ext`.
pub fn take_children(ext: &mut sluice_core::Notes) -> Vec<ChildSpan> {
    ext.remove::<ChildSpans>().map(|c| c.0).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tracer(ratio: f64) -> (Tracer, std::sync::mpsc::Receiver<Vec<FinishedSpan>>) {
        let (tx, rx) = sync_channel(1);
        let t = Tracer {
            config: TracingConfig::default(),
            sampler: Sampler::new(ratio, true),
            tx,
            dropped: IntCounter::new("d", "d").unwrap(),
        };
        (t, rx)
    }

    #[test]
    fn a_request_continues_a_valid_traceparent_and_ignores_a_bad_one() {
        let (t, _rx) = tracer(0.0);
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        h.insert(TRACESTATE, HeaderValue::from_static("rojo=1"));
        let rt = t.begin(&h);
        assert_eq!(w3c::hex(&rt.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(rt.parent, Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]));
        assert!(rt.sampled, "parent-based: the caller sampled it");
        assert_eq!(rt.tracestate.as_ref().unwrap(), "rojo=1");
        assert_ne!(rt.span_id, rt.parent.unwrap());
        let up = rt.upstream_traceparent();
        assert_eq!(
            up.to_str().unwrap(),
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", w3c::hex(&rt.span_id))
        );

        h.insert(TRACEPARENT, HeaderValue::from_static("00-zz-00f067aa0ba902b7-01"));
        let rt = t.begin(&h);
        assert_eq!(rt.parent, None);
        assert_eq!(rt.tracestate, None, "no tracestate without a valid traceparent");
        assert!(!rt.sampled, "ratio 0 for a new trace");
        assert!(rt.upstream_traceparent().to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn each_try_is_the_upstream_parent() {
        let (t, _rx) = tracer(1.0);
        let mut rt = t.begin(&HeaderMap::new());
        assert!(rt.sampled);
        rt.start_try();
        let first = rt.upstream_traceparent();
        rt.end_try(UpstreamOutcome::Response(503));
        rt.start_try();
        let second = rt.upstream_traceparent();
        assert_ne!(first, second);
        assert!(second.to_str().unwrap().contains(&w3c::hex(&rt.tries[1].span_id)));
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (t, rx) = tracer(1.0);
        // The queue holds one request's spans; the next is dropped and counted.
        t.submit(vec![]);
        let rt = t.begin(&HeaderMap::new());
        let done = Summary {
            method: "GET",
            path: "/",
            scheme: "http",
            route: Some("r"),
            backend: None,
            tried: &[],
            status: 502,
            retries: 0,
            breaker: None,
            error: Some("upstream_connect"),
            client: None,
            request_id: "id",
            user_agent: None,
        };
        let spans = rt.finish(&done, Vec::new());
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].name, "GET r");
        assert_eq!(spans[0].error, Some("server error"));
        t.submit(spans.clone());
        assert_eq!(t.dropped.get(), 1);
        assert_eq!(rx.try_recv().unwrap().len(), 0);
        t.submit(spans);
        assert_eq!(rx.try_recv().unwrap().len(), 1);
        assert_eq!(t.dropped.get(), 1);
    }
}
