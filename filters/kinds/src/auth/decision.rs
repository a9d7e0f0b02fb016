//! What authentication decided for a request, and `sluice_auth_total`.
//!
//! An authentication filter leaves its decision ([`AuthNote`]: method and outcome) in
//! the request's typed notes (`FilterCtx::ext`); later auth filters read it
//! ([`decided`]: a consumer already identified satisfies them, an ACL refusal keeps
//! the method). The last decision is counted once, in `sluice_auth_total{route,
//! method, outcome}`, when the request ends (its note is dropped with the request
//! context, whatever the outcome), by handles the deciding filter resolved when it was
//! built; a replaced decision is not counted.

use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, Opts};
use sluice_core::FilterCtx;

use super::ANY;
use crate::registry::BuildCtx;

/// The outcome label of `sluice_auth_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthResult {
    /// A consumer was identified and allowed.
    Ok,
    /// No credential, no anonymous consumer: 401.
    Missing,
    /// A credential that is not valid: 401 (or the method's own answer).
    Invalid,
    /// An identified (or anonymous) consumer the ACL refuses: 403.
    Forbidden,
    /// No credential; the anonymous consumer was used.
    Anonymous,
}

impl AuthResult {
    /// Every outcome, in [`AuthResult::index`] order.
    pub const ALL: [AuthResult; 5] = [
        AuthResult::Ok,
        AuthResult::Missing,
        AuthResult::Invalid,
        AuthResult::Forbidden,
        AuthResult::Anonymous,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Ok => "ok",
            AuthResult::Missing => "missing",
            AuthResult::Invalid => "invalid",
            AuthResult::Forbidden => "forbidden",
            AuthResult::Anonymous => "anonymous",
        }
    }

    /// Position in [`AuthResult::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What an authentication filter decided (see [`decided`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthNote {
    /// The method that decided, or [`ANY`] when several were tried and none applied.
    pub method: &'static str,
    /// The outcome.
    pub outcome: AuthResult,
}

/// The request's decision in `FilterCtx::ext`, with the handles that count it.
struct Decided {
    note: AuthNote,
    counters: Option<Arc<AuthCounters>>,
}

impl Drop for Decided {
    fn drop(&mut self) {
        if let Some(c) = &self.counters {
            c.count(self.note);
        }
    }
}

/// The decision an earlier authentication filter left for this request, if any.
pub fn decided(ctx: &FilterCtx) -> Option<AuthNote> {
    ctx.ext.get::<Decided>().map(|d| d.note)
}

/// Records `note` as the request's decision, to be counted by `counters` when the
/// request ends; an earlier decision is replaced and not counted.
pub(crate) fn decide(ctx: &mut FilterCtx, note: AuthNote, counters: Option<&Arc<AuthCounters>>) {
    let now = Decided {
        note,
        counters: counters.cloned(),
    };
    if let Some(mut earlier) = ctx.ext.insert(now) {
        earlier.counters = None;
    }
}

/// The handles that counted the request's current decision (so a filter refining it,
/// an ACL, counts with the same ones).
pub(crate) fn decided_counters(ctx: &FilterCtx) -> Option<Arc<AuthCounters>> {
    ctx.ext.get::<Decided>().and_then(|d| d.counters.clone())
}

/// `sluice_auth_total`, a service in the build context: registered in the metrics
/// registry when the first authentication filter is built with one.
struct AuthTotal(Option<IntCounterVec>);

/// One filter's `sluice_auth_total` handles: per method it runs (and [`ANY`]), one per
/// outcome, resolved when the filter is built.
#[derive(Debug)]
pub struct AuthCounters {
    handles: Vec<(&'static str, [IntCounter; 5])>,
}

impl AuthCounters {
    /// The handles of route `ctx.route` for `methods` (and [`ANY`]); `None` when the
    /// build has no metrics registry (validation, unit tests).
    pub fn new(ctx: &BuildCtx<'_>, methods: &[&'static str]) -> Option<Arc<AuthCounters>> {
        let total = ctx.services.get_or_insert_with(|| {
            AuthTotal(ctx.metrics().and_then(|registry| {
                let vec = IntCounterVec::new(
                    Opts::new(
                        "sluice_auth_total",
                        "Authentication decisions, by route, method and outcome.",
                    ),
                    &["route", "method", "outcome"],
                )
                .and_then(|v| registry.register(Box::new(v.clone())).map(|()| v));
                vec.map_err(|e| tracing::error!("sluice_auth_total: {e}")).ok()
            }))
        });
        let vec = total.0.as_ref()?;
        let handles = methods
            .iter()
            .copied()
            .chain([ANY])
            .map(|m| {
                let outcomes = AuthResult::ALL.map(|o| vec.with_label_values(&[ctx.route, m, o.as_str()]));
                (m, outcomes)
            })
            .collect();
        Some(Arc::new(AuthCounters { handles }))
    }

    /// Counts one decision (a method these handles do not cover is not counted).
    fn count(&self, note: AuthNote) {
        if let Some((_, h)) = self.handles.iter().find(|(m, _)| *m == note.method) {
            h[note.outcome.index()].inc();
        }
    }
}
