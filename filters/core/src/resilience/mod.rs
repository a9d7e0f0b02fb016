//! Resilience cores: the circuit breaker, outlier detection, and retry budgets and
//! policies.
//!
//! These are plain state machines with no I/O, no timers and no pingora types. Every
//! method that depends on time takes `now: Instant`, so tests drive them with a
//! [`ManualClock`] and the proxy passes [`Instant::now`] (or one instant per request).
//! State changes are *returned* (a breaker [`Transition`], an [`EjectionEvent`]) for the
//! caller to count in metrics and log; nothing here calls back.
//!
//! What the proxy does with them:
//!
//! 1. Once per request, [`CircuitBreaker::try_acquire`] — on `Rejected`, answer with
//!    the short-circuit response (or go to the fallback upstream) instead of calling.
//! 2. For each try, pick an endpoint, skipping those for which
//!    [`OutlierDetector::is_ejected`], and report how the try ended (an
//!    [`UpstreamOutcome`]) to the detector ([`OutlierDetector::record`]).
//! 3. If a try failed, [`RetryPolicy::may_retry`] and [`RetryBudget::try_start_retry`]
//!    decide whether to try again, after [`RetryPolicy::backoff`].
//! 4. When the request ends, report the last try's outcome to the breaker
//!    ([`CallOutcome::classify`], then [`CircuitBreaker::record`]; or
//!    [`CircuitBreaker::release`] if no try got an answer). The breaker thus judges
//!    what the client saw from the upstream, after retries.
//!
//! State is keyed by stable ids (route, upstream, endpoint address) by the caller, and
//! survives reloads through [`CircuitBreaker::reconfigure`], [`OutlierDetector::rebuild`]
//! and [`RetryBudget::reconfigure`].
//!
//! [`Instant::now`]: std::time::Instant::now

use std::time::Duration;

mod breaker;
mod clock;
mod outlier;
mod retry;
mod window;

pub use breaker::{
    Acquire, Admission, BreakerSnapshot, BreakerState, CallOutcome, CircuitBreaker, Forced, Permit,
    Transition, TransitionSnapshot, TrialSnapshot, WindowFigures,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use outlier::{EjectionEvent, EjectionReason, EndpointSnapshot, OutlierDetector, OutlierSnapshot};
pub use retry::{RequestGuard, RetryBudget, RetryBudgetStats, RetryGuard, RetryPolicy};

/// The longest duration the cores use: longer configured durations are cut to this, so
/// that adding one to an `Instant` cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// `d`, at most [`MAX_DURATION`].
fn bounded(d: Duration) -> Duration {
    d.min(MAX_DURATION)
}

/// How an upstream attempt ended, as the breaker, the outlier detector and the retry
/// policy see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamOutcome {
    /// The upstream answered with this status (response headers received).
    Response(u16),
    /// No connection could be made (refused, unreachable, TLS handshake failed, connect
    /// timeout): the request was not sent.
    ConnectFailure,
    /// The attempt timed out after the request was sent.
    Timeout,
    /// The connection was reset or closed before a complete response.
    Reset,
}
