//! Where the limit filters report what they decide: [`LimitMetrics`], implemented over
//! the process's Prometheus registry ([`LimitSink::of`] registers the limits' metrics
//! there once, when the first limit filter is built with a registry), and over the
//! gateway's [`EventSink`] for a Redis store's `limiter_fallback` events. Handles are
//! resolved once, when a filter is built; the request path only calls [`Counter::inc`]
//! or [`Histogram::observe`] on them (an atomic add), so it takes no lock and looks up
//! no label.

use std::sync::Arc;

use prometheus::{HistogramOpts, IntCounterVec, IntGauge, Opts};

use sluice_core::{EventSink, FilterCtx, KindEvent, LogValue};

use crate::registry::BuildCtx;

/// A monotonic counter.
pub trait Counter: Send + Sync {
    /// Adds one.
    fn inc(&self);
}

/// A gauge.
pub trait Gauge: Send + Sync {
    /// Adds one.
    fn inc(&self);
    /// Takes one away.
    fn dec(&self);
}

/// A histogram of durations in seconds.
pub trait Histogram: Send + Sync {
    /// Records one observation, in seconds.
    fn observe(&self, seconds: f64);
}

/// A decision of a limit, the `decision` label of `sluice_ratelimit_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Admitted by the limit (local, or Redis).
    Allowed,
    /// Refused by the limit.
    Rejected,
    /// Admitted without a decision because Redis was unreachable (`fallback: fail_open`).
    FailOpen,
    /// Refused without a decision because Redis was unreachable (`fallback: fail_closed`).
    FailClosed,
    /// Admitted by the local share while Redis was unreachable (`fallback: local`).
    FallbackAllowed,
    /// Refused by the local share while Redis was unreachable (`fallback: local`).
    FallbackRejected,
}

impl Decision {
    /// Every decision, in label order.
    pub const ALL: [Decision; 6] = [
        Decision::Allowed,
        Decision::Rejected,
        Decision::FailOpen,
        Decision::FailClosed,
        Decision::FallbackAllowed,
        Decision::FallbackRejected,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Rejected => "rejected",
            Decision::FailOpen => "fail_open",
            Decision::FailClosed => "fail_closed",
            Decision::FallbackAllowed => "fallback_allowed",
            Decision::FallbackRejected => "fallback_rejected",
        }
    }

    /// Whether the request goes on.
    pub fn admits(self) -> bool {
        matches!(
            self,
            Decision::Allowed | Decision::FailOpen | Decision::FallbackAllowed
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a Redis call failed, the `reason` label of `sluice_redis_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RedisError {
    /// No answer within the filter's `timeout`.
    Timeout,
    /// No connection (refused, reset, closed).
    Connection,
    /// Redis answered with an error, or an answer the script should not give.
    Script,
    /// Not called: the circuit breaker in front of Redis is open.
    CircuitOpen,
}

impl RedisError {
    /// Every reason, in label order.
    pub const ALL: [RedisError; 4] = [
        RedisError::Timeout,
        RedisError::Connection,
        RedisError::Script,
        RedisError::CircuitOpen,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisError::Timeout => "timeout",
            RedisError::Connection => "connection",
            RedisError::Script => "script",
            RedisError::CircuitOpen => "circuit_open",
        }
    }
}

/// Resolves metric handles when a filter is built.
pub trait LimitMetrics: Send + Sync {
    /// `sluice_ratelimit_decisions_total{route, limit, decision}`.
    fn decision(&self, route: &str, limit: &str, decision: Decision) -> Arc<dyn Counter>;
    /// `sluice_redis_request_duration_seconds`: one decision's round trip.
    fn redis_duration(&self) -> Arc<dyn Histogram>;
    /// `sluice_redis_errors_total{reason}`.
    fn redis_error(&self, reason: RedisError) -> Arc<dyn Counter>;
    /// `sluice_ratelimit_fallback_active`: Redis stores whose breaker is open now (their
    /// limits use their fallback).
    fn fallback_active(&self) -> Arc<dyn Gauge>;
    /// A Redis store entered or left its fallback (the `limiter_fallback` event). Called once per transition, from the request or the
    /// probe that made it; must not block. Default: nothing.
    fn fallback_changed(&self, _change: &FallbackChange) {}
}

/// A Redis store entering or leaving its fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackChange {
    /// The server, `host:port[/db]` (the URL without its scheme and credentials).
    pub store: String,
    /// The routes whose `rate_limit` filters use it now, sorted.
    pub routes: Vec<String>,
    /// True on entering the fallback, false on leaving it.
    pub active: bool,
    /// Why: the failures that opened the breaker, or the probe that closed it.
    pub reason: String,
}

/// Leaves the limit that answered (`limit`, its configured name) and its decision
/// (`limit_decision`) for the access log; a later limit's note replaces an earlier one.
pub(crate) fn note(ctx: &mut FilterCtx, name: &Arc<str>, decision: Decision) {
    ctx.log.set("limit", LogValue::Shared(name.clone()));
    ctx.log.set("limit_decision", LogValue::Static(decision.as_str()));
}

/// One limit's decision counters, by [`Decision`].
#[derive(Clone, Default)]
pub(crate) struct DecisionCounters(Option<[Arc<dyn Counter>; 6]>);

impl DecisionCounters {
    pub(crate) fn new(sink: Option<&Arc<dyn LimitMetrics>>, route: &str, limit: &str) -> DecisionCounters {
        DecisionCounters(sink.map(|s| Decision::ALL.map(|d| s.decision(route, limit, d))))
    }

    #[inline]
    pub(crate) fn count(&self, d: Decision) {
        if let Some(c) = &self.0 {
            c[d.index()].inc();
        }
    }
}

/// The Redis store's handles.
#[derive(Clone, Default)]
pub(crate) struct RedisCounters {
    pub(crate) duration: Option<Arc<dyn Histogram>>,
    pub(crate) errors: Option<[Arc<dyn Counter>; 4]>,
    pub(crate) fallback: Option<Arc<dyn Gauge>>,
    pub(crate) sink: Option<Arc<dyn LimitMetrics>>,
}

impl RedisCounters {
    pub(crate) fn new(sink: Option<&Arc<dyn LimitMetrics>>) -> RedisCounters {
        RedisCounters {
            duration: sink.map(|s| s.redis_duration()),
            errors: sink.map(|s| RedisError::ALL.map(|r| s.redis_error(r))),
            fallback: sink.map(|s| s.fallback_active()),
            sink: sink.cloned(),
        }
    }

    /// Reports a transition into (`active`) or out of the fallback: the gauge, the
    /// event and a log line.
    pub(crate) fn fallback_changed(&self, change: &FallbackChange) {
        if let Some(g) = &self.fallback {
            if change.active {
                g.inc();
            } else {
                g.dec();
            }
        }
        if let Some(s) = &self.sink {
            s.fallback_changed(change);
        }
    }

    pub(crate) fn error(&self, reason: RedisError) {
        if let Some(e) = &self.errors {
            e[reason as usize].inc();
        }
    }
}

/// The limits' metrics service in the build context's services: the sink, or none when
/// the build has no metrics registry (validation, unit tests).
pub struct LimitSink(pub Option<Arc<dyn LimitMetrics>>);

impl LimitSink {
    /// The service, made (and the limits' metrics registered) on first use.
    pub fn of(ctx: &BuildCtx<'_>) -> Arc<LimitSink> {
        ctx.services.get_or_insert_with(|| {
            let events = ctx.services.get::<Arc<dyn EventSink>>().map(|e| (*e).clone());
            LimitSink(ctx.metrics().and_then(|r| {
                Prom::register(&r, events)
                    .map_err(|e| tracing::error!("the limits' metrics: {e}"))
                    .ok()
                    .map(|p| Arc::new(p) as Arc<dyn LimitMetrics>)
            }))
        })
    }
}

/// [`LimitMetrics`] over Prometheus and the gateway's events.
struct Prom {
    decisions: IntCounterVec,
    redis_duration: prometheus::Histogram,
    redis_errors: IntCounterVec,
    fallback: IntGauge,
    events: Option<Arc<dyn EventSink>>,
}

impl Prom {
    fn register(
        registry: &prometheus::Registry,
        events: Option<Arc<dyn EventSink>>,
    ) -> prometheus::Result<Prom> {
        let p = Prom {
            events,
            decisions: IntCounterVec::new(
                Opts::new(
                    "sluice_ratelimit_decisions_total",
                    "Rate and concurrency limit decisions, by route, limit name and decision.",
                ),
                &["route", "limit", "decision"],
            )?,
            redis_duration: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "sluice_redis_request_duration_seconds",
                    "Round trip of one cluster-wide limit decision in Redis.",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                ]),
            )?,
            redis_errors: IntCounterVec::new(
                Opts::new(
                    "sluice_redis_errors_total",
                    "Failed or skipped Redis calls of cluster-wide limits, by reason.",
                ),
                &["reason"],
            )?,
            fallback: IntGauge::new(
                "sluice_ratelimit_fallback_active",
                "Redis stores unreachable now, whose limits use their fallback.",
            )?,
        };
        registry.register(Box::new(p.decisions.clone()))?;
        registry.register(Box::new(p.redis_duration.clone()))?;
        registry.register(Box::new(p.redis_errors.clone()))?;
        registry.register(Box::new(p.fallback.clone()))?;
        Ok(p)
    }
}

struct C(prometheus::IntCounter);
impl Counter for C {
    #[inline]
    fn inc(&self) {
        self.0.inc();
    }
}

struct G(IntGauge);
impl Gauge for G {
    fn inc(&self) {
        self.0.inc();
    }
    fn dec(&self) {
        self.0.dec();
    }
}

struct H(prometheus::Histogram);
impl Histogram for H {
    fn observe(&self, seconds: f64) {
        self.0.observe(seconds);
    }
}

impl LimitMetrics for Prom {
    fn decision(&self, route: &str, limit: &str, decision: Decision) -> Arc<dyn Counter> {
        Arc::new(C(self.decisions.with_label_values(&[
            route,
            limit,
            decision.as_str(),
        ])))
    }
    fn redis_duration(&self) -> Arc<dyn Histogram> {
        Arc::new(H(self.redis_duration.clone()))
    }
    fn redis_error(&self, reason: RedisError) -> Arc<dyn Counter> {
        Arc::new(C(self.redis_errors.with_label_values(&[reason.as_str()])))
    }
    fn fallback_active(&self) -> Arc<dyn Gauge> {
        Arc::new(G(self.fallback.clone()))
    }
    fn fallback_changed(&self, change: &FallbackChange) {
        if let Some(events) = &self.events {
            events.emit(fallback_event(change));
        }
    }
}

/// The `limiter_fallback` event of `change`: `store`, `routes`, `active`, `reason`.
fn fallback_event(change: &FallbackChange) -> KindEvent {
    let mut fields = serde_json::Map::new();
    fields.insert("store".into(), change.store.clone().into());
    fields.insert("routes".into(), change.routes.clone().into());
    fields.insert("active".into(), change.active.into());
    fields.insert("reason".into(), change.reason.clone().into());
    KindEvent {
        kind: "limiter_fallback",
        subject: Some(change.store.clone()),
        routes: change.routes.clone(),
        state: Some(if change.active { "on" } else { "off" }),
        summary: format!(
            "rate limits on {}: {} ({})",
            change.store,
            if change.active { "fallback" } else { "shared again" },
            change.reason
        ),
        fields,
    }
}
