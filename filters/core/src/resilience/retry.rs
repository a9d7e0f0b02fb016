//! Retries: which failed attempts may be retried ([`RetryPolicy`]) and how many retries
//! an upstream may have in flight ([`RetryBudget`]).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sluice_config::resilience::{RetryBudgetConfig, RetryConfig, RetryOn, StatusRange};

use super::UpstreamOutcome;

/// A retry budget for one upstream (Envoy's `retry_budget`): retries in flight may not
/// exceed `percent` of the requests in flight, or `min_concurrent`, whichever is larger.
/// Lock-free; share it as an `Arc`.
///
/// Requests in flight are the client requests between [`RetryBudget::request_started`]
/// and the drop of its guard; a request being retried is still one of them, and its
/// retries are not counted again as requests.
///
/// ```
/// use sluice_config::resilience::RetryBudgetConfig;
/// use sluice_core::resilience::RetryBudget;
///
/// let budget = RetryBudget::new(&RetryBudgetConfig { percent: 20.0, min_concurrent: 1 });
/// let _request = budget.request_started();
/// let retry = budget.try_start_retry().expect("min_concurrent allows one");
/// assert!(budget.try_start_retry().is_none());
/// drop(retry);
/// assert!(budget.try_start_retry().is_some());
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    /// `percent` as `f64` bits.
    percent: AtomicU64,
    min_concurrent: AtomicU32,
    active_requests: AtomicU32,
    active_retries: AtomicU32,
    retries_started: AtomicU64,
    exhausted: AtomicU64,
}

impl RetryBudget {
    /// A budget with nothing in flight.
    pub fn new(config: &RetryBudgetConfig) -> Arc<Self> {
        let budget = Self {
            percent: AtomicU64::new(0),
            min_concurrent: AtomicU32::new(0),
            active_requests: AtomicU32::new(0),
            active_retries: AtomicU32::new(0),
            retries_started: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
        };
        budget.reconfigure(config);
        Arc::new(budget)
    }

    /// Applies new limits, keeping the counts in flight.
    pub fn reconfigure(&self, config: &RetryBudgetConfig) {
        let percent = if config.percent.is_finite() {
            config.percent.clamp(0.0, 100.0)
        } else {
            0.0
        };
        self.percent.store(percent.to_bits(), Ordering::Relaxed);
        self.min_concurrent
            .store(config.min_concurrent, Ordering::Relaxed);
    }

    /// Counts a client request as in flight until the guard is dropped.
    #[inline]
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.active_requests.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            budget: Arc::clone(self),
        }
    }

    /// Takes a retry slot if the budget allows one; the slot is held until the guard is
    /// dropped (when the retry attempt ends). `None` (and the `exhausted` count goes up)
    /// when the budget is spent.
    #[inline]
    pub fn try_start_retry(self: &Arc<Self>) -> Option<RetryGuard> {
        let limit = self.limit();
        let mut current = self.active_retries.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                self.exhausted.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match self.active_retries.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        self.retries_started.fetch_add(1, Ordering::Relaxed);
        Some(RetryGuard {
            budget: Arc::clone(self),
        })
    }

    /// Retries that may be in flight now: `max(min_concurrent, percent% of requests in
    /// flight)`, rounded down.
    #[inline]
    pub fn limit(&self) -> u32 {
        let percent = f64::from_bits(self.percent.load(Ordering::Relaxed));
        let active = self.active_requests.load(Ordering::Relaxed);
        let by_percent = (f64::from(active) * percent / 100.0) as u32;
        by_percent.max(self.min_concurrent.load(Ordering::Relaxed))
    }

    /// Counters, for metrics and the admin API.
    pub fn stats(&self) -> RetryBudgetStats {
        RetryBudgetStats {
            active_requests: self.active_requests.load(Ordering::Relaxed),
            active_retries: self.active_retries.load(Ordering::Relaxed),
            limit: self.limit(),
            retries_started: self.retries_started.load(Ordering::Relaxed),
            exhausted: self.exhausted.load(Ordering::Relaxed),
        }
    }
}

/// A client request in flight, counted by its [`RetryBudget`] until dropped.
#[derive(Debug)]
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct RequestGuard {
    budget: Arc<RetryBudget>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.budget.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A retry in flight, holding a slot of its [`RetryBudget`] until dropped.
#[derive(Debug)]
#[must_use = "the retry slot is freed when the guard is dropped"]
pub struct RetryGuard {
    budget: Arc<RetryBudget>,
}

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.budget.active_retries.fetch_sub(1, Ordering::Release);
    }
}

/// A retry budget's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetryBudgetStats {
    /// Client requests in flight.
    pub active_requests: u32,
    /// Retries in flight.
    pub active_retries: u32,
    /// Retries allowed in flight now.
    pub limit: u32,
    /// Retries started since the budget was created.
    pub retries_started: u64,
    /// Retries refused because the budget was spent.
    pub exhausted: u64,
}

/// When a failed attempt may be retried, compiled from a [`RetryConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    max_retries: u32,
    connect_failure: bool,
    status_5xx: bool,
    gateway_error: bool,
    reset: bool,
    timeout: bool,
    statuses: Vec<StatusRange>,
    idempotent_only: bool,
    per_try_timeout: Option<Duration>,
    max_buffered_body: u64,
    backoff: Duration,
    max_backoff: Duration,
}

impl RetryPolicy {
    /// The policy for `config`.
    pub fn new(config: &RetryConfig) -> Self {
        let on = |c| config.on.contains(&c);
        Self {
            max_retries: config.attempts,
            connect_failure: on(RetryOn::ConnectFailure),
            status_5xx: on(RetryOn::Status5xx),
            gateway_error: on(RetryOn::GatewayError),
            reset: on(RetryOn::Reset),
            timeout: on(RetryOn::Timeout),
            statuses: config.statuses.clone(),
            idempotent_only: config.idempotent_only,
            per_try_timeout: config.per_try_timeout,
            max_buffered_body: config.max_buffered_body,
            backoff: config.backoff,
            max_backoff: config.max_backoff(),
        }
    }

    /// Retries after the first try (`attempts`); 0 means retries are off.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// Timeout for each try, if set.
    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.per_try_timeout
    }

    /// Largest request body, in bytes, kept for replaying.
    pub fn max_buffered_body(&self) -> u64 {
        self.max_buffered_body
    }

    /// Whether `outcome` is one of the conditions retried (`on` and `statuses`), whatever
    /// the method or body.
    pub fn retries_on(&self, outcome: UpstreamOutcome) -> bool {
        match outcome {
            UpstreamOutcome::ConnectFailure => self.connect_failure,
            UpstreamOutcome::Reset => self.reset,
            UpstreamOutcome::Timeout => self.timeout,
            UpstreamOutcome::Response(status) => {
                (self.status_5xx && (500..=599).contains(&status))
                    || (self.gateway_error && matches!(status, 502..=504))
                    || StatusRange::any_contains(&self.statuses, status)
            }
        }
    }

    /// Whether the attempt that ended with `outcome` may be retried, when `retries_done`
    /// retries have already been made. A connect failure may be retried whatever the
    /// method and body, since nothing was sent; anything else needs an idempotent method
    /// (when `idempotent_only`) and a body that can be replayed (`body_replayable`: the
    /// whole body is buffered, within `max_buffered_body`). The budget is checked
    /// separately, with [`RetryBudget::try_start_retry`].
    pub fn may_retry(
        &self,
        outcome: UpstreamOutcome,
        method: &http::Method,
        body_replayable: bool,
        retries_done: u32,
    ) -> bool {
        if retries_done >= self.max_retries || !self.retries_on(outcome) {
            return false;
        }
        if outcome == UpstreamOutcome::ConnectFailure {
            return true;
        }
        body_replayable && (!self.idempotent_only || method.is_idempotent())
    }

    /// The wait before retry number `retry` (1 for the first retry): `backoff ×
    /// 2^(retry − 1)`, capped at ten times `backoff`, then drawn from its upper half with
    /// `sample` (uniform in `[0, 1)`; pass `rand::random()`).
    pub fn backoff(&self, retry: u32, sample: f64) -> Duration {
        let doublings = retry.saturating_sub(1).min(32);
        let full = self
            .backoff
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max_backoff);
        let sample = if sample.is_finite() {
            sample.clamp(0.0, 1.0)
        } else {
            0.0
        };
        full / 2 + (full / 2).mul_f64(sample)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http::Method;

    use super::*;

    #[test]
    fn budget_allows_min_concurrent_retries_with_few_requests() {
        let b = RetryBudget::new(&RetryBudgetConfig {
            percent: 20.0,
            min_concurrent: 3,
        });
        let _r = b.request_started();
        let held: Vec<_> = (0..3).map(|_| b.try_start_retry().unwrap()).collect();
        assert!(b.try_start_retry().is_none());
        assert_eq!(b.stats().exhausted, 1);
        drop(held);
        assert_eq!(b.stats().active_retries, 0);
        assert!(b.try_start_retry().is_some());
    }

    #[test]
    fn budget_caps_retries_at_a_percentage_of_requests_in_flight() {
        let b = RetryBudget::new(&RetryBudgetConfig {
            percent: 20.0,
            min_concurrent: 3,
        });
        let requests: Vec<_> = (0..50).map(|_| b.request_started()).collect();
        assert_eq!(b.limit(), 10);
        let retries: Vec<_> = (0..20).filter_map(|_| b.try_start_retry()).collect();
        assert_eq!(retries.len(), 10);
        let stats = b.stats();
        assert_eq!(
            (
                stats.active_requests,
                stats.active_retries,
                stats.retries_started,
                stats.exhausted
            ),
            (50, 10, 10, 10)
        );
        // As requests finish, the limit falls back to min_concurrent.
        drop(requests);
        assert_eq!(b.limit(), 3);
        assert!(b.try_start_retry().is_none());
        drop(retries);
        assert_eq!(b.stats().active_retries, 0);
    }

    #[test]
    fn budget_reconfigure_keeps_counts() {
        let b = RetryBudget::new(&RetryBudgetConfig::default());
        let _r = b.try_start_retry().unwrap();
        b.reconfigure(&RetryBudgetConfig {
            percent: 0.0,
            min_concurrent: 1,
        });
        assert_eq!(b.stats().active_retries, 1);
        assert!(b.try_start_retry().is_none());
    }

    #[test]
    fn budget_holds_under_concurrency() {
        let b = RetryBudget::new(&RetryBudgetConfig {
            percent: 0.0,
            min_concurrent: 4,
        });
        let peak = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (b, peak) = (b.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(g) = b.try_start_retry() {
                            peak.fetch_max(b.stats().active_retries, Ordering::Relaxed);
                            drop(g);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 4);
        assert_eq!(b.stats().active_retries, 0);
    }

    #[test]
    fn policy_retries_only_the_configured_conditions() {
        let p = RetryPolicy::new(&RetryConfig::default());
        assert!(p.retries_on(UpstreamOutcome::ConnectFailure));
        assert!(p.retries_on(UpstreamOutcome::Reset));
        assert!(p.retries_on(UpstreamOutcome::Response(503)));
        assert!(!p.retries_on(UpstreamOutcome::Response(500)));
        assert!(!p.retries_on(UpstreamOutcome::Timeout));
        let p = RetryPolicy::new(&RetryConfig {
            on: vec![RetryOn::Status5xx, RetryOn::Timeout],
            statuses: vec![StatusRange::single(429).unwrap()],
            ..RetryConfig::default()
        });
        assert!(p.retries_on(UpstreamOutcome::Response(500)));
        assert!(p.retries_on(UpstreamOutcome::Response(429)));
        assert!(p.retries_on(UpstreamOutcome::Timeout));
        assert!(!p.retries_on(UpstreamOutcome::ConnectFailure));
        assert!(!p.retries_on(UpstreamOutcome::Response(404)));
    }

    #[test]
    fn policy_retries_non_idempotent_methods_only_after_connect_failures() {
        let p = RetryPolicy::new(&RetryConfig::default());
        let bad_gateway = UpstreamOutcome::Response(502);
        assert!(p.may_retry(bad_gateway, &Method::GET, true, 0));
        assert!(!p.may_retry(bad_gateway, &Method::POST, true, 0));
        assert!(p.may_retry(UpstreamOutcome::ConnectFailure, &Method::POST, false, 0));
        // A body that cannot be replayed stops everything but connect failures.
        assert!(!p.may_retry(bad_gateway, &Method::PUT, false, 0));
        // Two retries by default.
        assert!(p.may_retry(bad_gateway, &Method::GET, true, 1));
        assert!(!p.may_retry(bad_gateway, &Method::GET, true, 2));
        let off = RetryPolicy::new(&RetryConfig {
            attempts: 0,
            ..RetryConfig::default()
        });
        assert!(!off.may_retry(UpstreamOutcome::ConnectFailure, &Method::GET, true, 0));
        let any_method = RetryPolicy::new(&RetryConfig {
            idempotent_only: false,
            ..RetryConfig::default()
        });
        assert!(any_method.may_retry(bad_gateway, &Method::POST, true, 0));
    }

    #[test]
    fn backoff_doubles_and_is_capped_at_ten_times_the_base() {
        let p = RetryPolicy::new(&RetryConfig::default());
        let ms = |retry, sample| p.backoff(retry, sample).as_millis();
        // Upper end of each draw: 25, 50, 100, 200, then capped at 250.
        let top: Vec<u128> = (1..=6).map(|r| ms(r, 1.0)).collect();
        assert_eq!(top, [25, 50, 100, 200, 250, 250]);
        // Lower end: half of it.
        assert_eq!(p.backoff(1, 0.0), Duration::from_micros(12_500));
        assert_eq!(ms(4, 0.0), 100);
        assert_eq!(ms(u32::MAX, 0.5), 187);
    }
}
