//! Where the limit filters report what they decide, without this crate knowing
//! Prometheus: the gateway implements [`LimitMetrics`] and puts it in
//! [`crate::Shared::limit_metrics`]. Handles are resolved once, when a filter is built;
//! the request path only calls [`Counter::inc`] or [`Histogram::observe`] on them (an
//! atomic add in the gateway's implementation), so it takes no lock and looks up no
//! label.

use std::sync::Arc;

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

/// The gateway's side: resolves metric handles when a filter is built.
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
    /// A Redis store entered or left its fallback (the gateway emits its
    /// `limiter_fallback` event). Called once per transition, from the request or the
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
