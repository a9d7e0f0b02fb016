//! The circuit breaker state machine for one route and upstream.
//!
//! ```text
//!            failure/slow rate ≥ threshold over ≥ minimum_calls,
//!            or consecutive_failures in a row
//!   CLOSED ───────────────────────────────────────────────▶ OPEN ◀──────────┐
//!     ▲                                                       │             │
//!     │ probes pass                    open time (backed off) │ has passed  │ probes fail
//!     │                                                       ▼             │
//!     └──────────────────────────────────────────────── HALF_OPEN ──────────┘
//!                                                      (N probes; a trial that runs out of
//!                                                       time is judged on what completed,
//!                                                       or restarted when nothing did)
//!
//!   FORCED_OPEN and DISABLED are set by an operator (or `enabled: false`) and override
//!   the above; clearing them starts again from CLOSED with an empty window.
//! ```
//!
//! Every state change is returned to the caller as a [`Transition`] (from
//! [`CircuitBreaker::try_acquire`], [`CircuitBreaker::record`], [`CircuitBreaker::force`]
//! and [`CircuitBreaker::reconfigure`]), so the shell can count and log it; the breaker
//! itself has no observers and does no I/O.
//!
//! Nothing on the request path takes a lock. The state is published in one atomic word
//! (`epoch << 8 | state`), so `try_acquire` while closed is one load. Everything that
//! changes together on a transition (the state with its open time or half-open trial,
//! the back-off, the settings and the closed window) is one immutable phase behind an
//! `ArcSwap`; a transition builds the next phase and publishes it with a
//! compare-and-swap against the phase it judged, so of several callers that see a
//! threshold at once exactly one makes (and reports) the transition. Outcomes go into
//! atomic counters: the lock-free sliding window (`window.rs`) while closed, one packed
//! word of probe counters while half-open, where a probe slot is taken by a
//! compare-and-swap that checks the limit, so the number of probes stays exact. Only
//! `force` and `reconfigure` (operator and config actions) take a lock, to serialize
//! with each other.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use serde::Serialize;
use sluice_config::resilience::{BreakerConfig, FailureConditions, WindowConfig};

use super::window::{Tally, Window};
use super::{bounded, UpstreamOutcome};

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through and their outcomes are counted.
    Closed,
    /// Calls are rejected until the open time has passed.
    Open,
    /// A limited number of probe calls go through to test the upstream.
    HalfOpen,
    /// Set by an operator: every call is rejected.
    ForcedOpen,
    /// Set by an operator or by `enabled: false`: every call goes through and nothing is
    /// counted.
    Disabled,
}

impl BreakerState {
    /// Every state, in gauge-code order.
    pub const ALL: [BreakerState; 5] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
        BreakerState::ForcedOpen,
        BreakerState::Disabled,
    ];

    /// The state's name, as used in metrics labels and the admin API: `closed`, `open`,
    /// `half_open`, `forced_open`, `disabled`.
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::ForcedOpen => "forced_open",
            BreakerState::Disabled => "disabled",
        }
    }

    /// A number for a state gauge: closed 0, open 1, half_open 2, forced_open 3,
    /// disabled 4.
    pub const fn gauge_code(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
            BreakerState::ForcedOpen => 3,
            BreakerState::Disabled => 4,
        }
    }

    const fn from_code(code: u8) -> BreakerState {
        match code {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            3 => BreakerState::ForcedOpen,
            _ => BreakerState::Disabled,
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state an operator can force a breaker into (`CircuitBreaker::force`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Forced {
    /// Reject every call.
    Open,
    /// Let every call through and count nothing.
    Disabled,
}

/// A change of state, returned by the call that caused it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    /// The state before.
    pub from: BreakerState,
    /// The state after. Equal to `from` only when a half-open trial in which no probe
    /// completed is restarted.
    pub to: BreakerState,
    /// Why, for logs and the admin API, e.g. `failure rate 62.0% >= 50.0% over 20 calls`.
    pub reason: String,
    /// The window figures that decided it, when a rate over the closed window or a
    /// half-open trial did (`None` for time-driven, consecutive-failure and operator
    /// transitions).
    pub window: Option<WindowFigures>,
}

/// The figures behind a rate-driven transition (for events and logs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WindowFigures {
    /// Calls in the closed window, or probes the trial was judged over.
    pub calls: u32,
    /// Failed calls among them.
    pub failures: u32,
    /// Slow calls among them.
    pub slow: u32,
    /// Failure rate, percent.
    pub failure_rate: f64,
    /// Slow-call rate, percent.
    pub slow_call_rate: f64,
    /// `failure_rate_threshold`, percent.
    pub failure_rate_threshold: f64,
    /// `slow_call_rate_threshold`, percent.
    pub slow_call_rate_threshold: f64,
}

impl Transition {
    fn with_window(mut self, window: WindowFigures) -> Transition {
        self.window = Some(window);
        self
    }
}

/// What a call did, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallOutcome {
    /// Whether the call failed (see [`CallOutcome::classify`]).
    pub failure: bool,
    /// How long the call took; longer than `slow_call_duration` makes it slow.
    pub duration: Duration,
}

impl CallOutcome {
    /// A successful call that took `duration`.
    pub const fn success(duration: Duration) -> Self {
        Self {
            failure: false,
            duration,
        }
    }

    /// A failed call that took `duration`.
    pub const fn failure(duration: Duration) -> Self {
        Self {
            failure: true,
            duration,
        }
    }

    /// The outcome of a call that ended with `outcome`, judged by the breaker's
    /// `failure_on` conditions.
    pub fn classify(conditions: &FailureConditions, outcome: UpstreamOutcome, duration: Duration) -> Self {
        let failure = match outcome {
            UpstreamOutcome::Response(status) => conditions.is_failure_status(status),
            UpstreamOutcome::ConnectFailure => conditions.connect_error,
            UpstreamOutcome::Timeout => conditions.timeout,
            UpstreamOutcome::Reset => conditions.reset,
        };
        Self { failure, duration }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PermitKind {
    /// Counted in the closed window.
    Closed,
    /// A half-open probe, counted in the trial.
    Probe,
    /// Disabled breaker: nothing is counted.
    Untracked,
}

/// Leave to make one call. Hand it back with [`CircuitBreaker::record`] when the call
/// ends, or [`CircuitBreaker::release`] when it is abandoned without an outcome (the
/// client went away). A permit handed out before a state change is stale: recording it
/// does nothing. A permit that is dropped instead is harmless, except that a dropped
/// probe holds its slot until the half-open trial runs out of time.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "hand the permit back with `record` or `release`"]
pub struct Permit {
    epoch: u64,
    kind: PermitKind,
}

impl Permit {
    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.kind == PermitKind::Probe
    }

    /// Whether the call's outcome will be counted (false while disabled).
    pub fn is_counted(&self) -> bool {
        self.kind != PermitKind::Untracked
    }
}

/// Whether a call may go ahead.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead, and hand the permit back afterwards.
    Permitted(Permit),
    /// Do not call the upstream (answer with the short-circuit response or use the
    /// fallback).
    Rejected {
        /// A hint for `Retry-After`: the open time left; `1s` while a half-open trial
        /// has all its probes out; the base `open_duration` when forced open.
        retry_after: Duration,
        /// The state that rejected the call: `open`, `half_open` or `forced_open`.
        state: BreakerState,
    },
}

/// The result of [`CircuitBreaker::try_acquire`].
#[derive(Debug)]
#[must_use]
pub struct Acquire {
    /// Whether the call may go ahead.
    pub admission: Admission,
    /// The state change this call caused, if any (open to half-open, or the end of a
    /// half-open trial that ran out of time).
    pub transition: Option<Transition>,
}

/// A half-open probe trial.
/// Packed half-open trial counters, 16 bits each: probes in flight, completed, failed,
/// slow. `half_open_permitted_calls` is capped at [`MAX_PROBES`] so that they fit.
const IN_FLIGHT: u64 = 1;
const COMPLETED: u64 = 1 << 16;
const TRIAL_FAILURE: u64 = 1 << 32;
const TRIAL_SLOW: u64 = 1 << 48;
/// The most probes a half-open trial lets through.
const MAX_PROBES: u32 = 0xFFFF;

/// A half-open trial's counters, unpacked.
#[derive(Debug, Clone, Copy, Default)]
struct Trial {
    in_flight: u32,
    completed: u32,
    failures: u32,
    slow: u32,
}

impl Trial {
    fn unpack(word: u64) -> Trial {
        let field = |shift: u32| ((word >> shift) & 0xFFFF) as u32;
        Trial {
            in_flight: field(0),
            completed: field(16),
            failures: field(32),
            slow: field(48),
        }
    }
}

/// The automatic part of the state, which operators' forcing overrides.
#[derive(Debug, Clone)]
enum Auto {
    Closed,
    Open {
        since: Instant,
        until: Instant,
    },
    HalfOpen {
        since: Instant,
        /// The packed [`Trial`] counters (shared by the phases a reconfigure makes of
        /// the same trial).
        trial: Arc<AtomicU64>,
    },
}

/// The settings the state machine reads, copied out of a [`BreakerConfig`].
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    window: WindowConfig,
    minimum_calls: u32,
    failure_rate_threshold: f64,
    slow_call_rate_threshold: f64,
    slow_call_duration: Duration,
    consecutive_failures: Option<u32>,
    open_duration: Duration,
    max_open_duration: Duration,
    backoff_multiplier: f64,
    jitter: f64,
    half_open_permitted_calls: u32,
    half_open_max_duration: Duration,
    enabled: bool,
}

impl From<&BreakerConfig> for Settings {
    fn from(c: &BreakerConfig) -> Self {
        Self {
            window: c.window,
            minimum_calls: c.minimum_calls.max(1),
            failure_rate_threshold: c.failure_rate_threshold,
            slow_call_rate_threshold: c.slow_call_rate_threshold,
            slow_call_duration: bounded(c.slow_call_duration),
            consecutive_failures: c.consecutive_failures.filter(|n| *n > 0),
            open_duration: bounded(c.open_duration),
            max_open_duration: bounded(c.max_open_duration.max(c.open_duration)),
            backoff_multiplier: if c.backoff_multiplier.is_finite() {
                c.backoff_multiplier.max(1.0)
            } else {
                1.0
            },
            jitter: if c.jitter.is_finite() {
                c.jitter.clamp(0.0, 1.0)
            } else {
                0.0
            },
            half_open_permitted_calls: c.half_open_permitted_calls.clamp(1, MAX_PROBES),
            half_open_max_duration: bounded(c.half_open_max_duration),
            enabled: c.enabled,
        }
    }
}

/// How long the breaker stays open after its `trips`-th trip in a row:
/// `open_duration × multiplier^(trips − 1)`, capped at `max_open_duration`, then spread by
/// `± jitter` using `sample` (uniform in `[0, 1)`), and capped again.
fn open_time(s: &Settings, trips: u32, sample: f64) -> Duration {
    let exponent = trips.saturating_sub(1).min(1024) as i32;
    let max = s.max_open_duration.as_secs_f64();
    let base = (s.open_duration.as_secs_f64() * s.backoff_multiplier.powi(exponent)).min(max);
    let spread = 1.0 + s.jitter * (2.0 * sample - 1.0);
    let secs = (base * spread).clamp(0.0, max);
    Duration::try_from_secs_f64(secs).unwrap_or(s.max_open_duration)
}

/// SplitMix64's increment.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output for state `z`, as a float uniform in `[0, 1)`. The state is an
/// atomic counter advanced by [`GAMMA`], so drawing is one `fetch_add`.
fn splitmix_f64(mut z: u64) -> f64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// One phase of the breaker's life: everything that changes together on a transition,
/// immutable once published (its counters are atomics). Replaced as a whole by a
/// compare-and-swap, so exactly one caller makes each transition.
#[derive(Debug)]
struct Phase {
    /// Bumped on every transition; permits from an older epoch are stale.
    epoch: u64,
    settings: Arc<Settings>,
    forced: Option<Forced>,
    auto: Auto,
    /// Trips since the last recovery (half-open to closed); drives the back-off.
    trips: u32,
    /// The closed window (kept while open, as the evidence for the trip).
    window: Arc<Window>,
}

impl Phase {
    fn state(&self) -> BreakerState {
        match self.forced {
            Some(Forced::Open) => BreakerState::ForcedOpen,
            Some(Forced::Disabled) => BreakerState::Disabled,
            None if !self.settings.enabled => BreakerState::Disabled,
            None => match self.auto {
                Auto::Closed => BreakerState::Closed,
                Auto::Open { .. } => BreakerState::Open,
                Auto::HalfOpen { .. } => BreakerState::HalfOpen,
            },
        }
    }

    /// The published word: `epoch << STATE_BITS | state code`.
    fn word(&self) -> u64 {
        (self.epoch << STATE_BITS) | u64::from(self.state().gauge_code())
    }

    /// The next phase: `auto` with `trips`, the same settings, force and window.
    fn next(&self, auto: Auto, trips: u32) -> Phase {
        Phase {
            epoch: self.epoch + 1,
            settings: self.settings.clone(),
            forced: self.forced,
            auto,
            trips,
            window: self.window.clone(),
        }
    }

    /// The next phase, closed with an empty window and no back-off.
    fn closed(&self, now: Instant) -> Phase {
        Phase {
            window: Arc::new(Window::new(&self.settings.window, now)),
            ..self.next(Auto::Closed, 0)
        }
    }
}

/// How long a caller rejected during a full half-open trial is told to wait.
const PROBE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Bits of the published word that hold the state code; the rest is the epoch.
const STATE_BITS: u32 = 8;

/// A circuit breaker for one route and upstream. Cheap to share: every method takes
/// `&self`.
///
/// ```
/// use std::time::{Duration, Instant};
/// use sluice_config::resilience::BreakerConfig;
/// use sluice_core::resilience::{Admission, CallOutcome, CircuitBreaker};
///
/// let breaker = CircuitBreaker::new(&BreakerConfig::default(), Instant::now());
/// let now = Instant::now();
/// match breaker.try_acquire(now).admission {
///     Admission::Permitted(permit) => {
///         // … call the upstream …
///         let outcome = CallOutcome::success(Duration::from_millis(12));
///         if let Some(t) = breaker.record(permit, outcome, Instant::now()) {
///             println!("breaker {} -> {}: {}", t.from, t.to, t.reason);
///         }
///     }
///     Admission::Rejected { retry_after, .. } => {
///         println!("short-circuited; retry after {retry_after:?}");
///     }
/// }
/// ```
#[derive(Debug)]
pub struct CircuitBreaker {
    /// `epoch << STATE_BITS | state code` of the current phase, raised (`fetch_max`)
    /// after every transition; read by `try_acquire` and `state`.
    published: AtomicU64,
    /// The current phase.
    phase: ArcSwap<Phase>,
    /// Failures in a row while closed.
    consecutive_failures: AtomicU64,
    total_trips: AtomicU64,
    /// SplitMix64 state for the open-time jitter.
    rng: AtomicU64,
    last_transition: ArcSwapOption<(Transition, Instant)>,
    /// Serializes `force` and `reconfigure` (operator and config actions, never on the
    /// request path) with each other; the request path does not take it.
    admin: Mutex<()>,
}

impl CircuitBreaker {
    /// A closed breaker with an empty window, jitter seeded at random.
    pub fn new(config: &BreakerConfig, now: Instant) -> Self {
        Self::with_seed(config, now, rand::random())
    }

    /// A closed breaker whose open-time jitter comes from a generator seeded with
    /// `seed`, for reproducible tests.
    pub fn with_seed(config: &BreakerConfig, now: Instant, seed: u64) -> Self {
        let phase = Phase {
            epoch: 0,
            settings: Arc::new(Settings::from(config)),
            forced: None,
            auto: Auto::Closed,
            trips: 0,
            window: Arc::new(Window::new(&config.window, now)),
        };
        Self {
            published: AtomicU64::new(phase.word()),
            phase: ArcSwap::from_pointee(phase),
            consecutive_failures: AtomicU64::new(0),
            total_trips: AtomicU64::new(0),
            rng: AtomicU64::new(seed),
            last_transition: ArcSwapOption::empty(),
            admin: Mutex::new(()),
        }
    }

    /// The current state, read from one atomic word. An open breaker whose open time
    /// has passed still reads `open` until the next `try_acquire`.
    #[inline]
    pub fn state(&self) -> BreakerState {
        BreakerState::from_code((self.published.load(Ordering::Acquire) & 0xff) as u8)
    }

    /// Asks to make a call at `now`. Closed and disabled breakers answer from one atomic
    /// load. An open breaker whose open time has passed turns half-open here and admits
    /// this call as its first probe. Never takes a lock.
    #[inline]
    pub fn try_acquire(&self, now: Instant) -> Acquire {
        let word = self.published.load(Ordering::Acquire);
        let kind = match BreakerState::from_code((word & 0xff) as u8) {
            BreakerState::Closed => PermitKind::Closed,
            BreakerState::Disabled => PermitKind::Untracked,
            _ => return self.try_acquire_slow(now),
        };
        Acquire {
            admission: Admission::Permitted(Permit {
                epoch: word >> STATE_BITS,
                kind,
            }),
            transition: None,
        }
    }

    #[cold]
    fn try_acquire_slow(&self, now: Instant) -> Acquire {
        let current = self.phase.load_full();
        let transition = self.poll(&current, now);
        let phase = if transition.is_some() {
            self.phase.load_full()
        } else {
            current
        };
        Acquire {
            admission: self.admit(&phase, now),
            transition,
        }
    }

    /// Counts the outcome of a call made with `permit`, at `now`. Returns the transition
    /// it caused: closed to open when a threshold is reached, or half-open to closed or
    /// open when the trial's result is certain. A stale permit (from before a state
    /// change) and a disabled breaker's permit count nothing. Never takes a lock: the
    /// outcome goes into atomic counters, and a transition is a compare-and-swap of the
    /// phase that only one of several racing callers wins.
    pub fn record(&self, permit: Permit, outcome: CallOutcome, now: Instant) -> Option<Transition> {
        if permit.kind == PermitKind::Untracked {
            return None;
        }
        let phase = self.phase.load();
        if permit.epoch != phase.epoch {
            return None;
        }
        let slow = outcome.duration > phase.settings.slow_call_duration;
        match permit.kind {
            PermitKind::Closed => self.record_closed(&phase, outcome.failure, slow, now),
            PermitKind::Probe => self.record_probe(&phase, outcome.failure, slow, now),
            PermitKind::Untracked => None,
        }
    }

    /// Hands back a permit whose call ended without an outcome worth counting (the
    /// client went away before the upstream answered). A probe's slot is freed for
    /// another probe; nothing is counted.
    pub fn release(&self, permit: Permit) {
        if permit.kind != PermitKind::Probe {
            return;
        }
        let phase = self.phase.load();
        if permit.epoch != phase.epoch {
            return;
        }
        if let Auto::HalfOpen { trial, .. } = &phase.auto {
            let _ = trial.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w & 0xFFFF != 0).then(|| w - IN_FLIGHT)
            });
        }
    }

    /// Forces the breaker open or disabled (`Some`), or clears the force (`None`), which
    /// starts again from closed with an empty window and no back-off. Returns the
    /// transition, if the state changed.
    pub fn force(&self, forced: Option<Forced>, now: Instant) -> Option<Transition> {
        let _one_at_a_time = self.admin.lock();
        let reason = match forced {
            Some(Forced::Open) => "forced open by an operator",
            Some(Forced::Disabled) => "disabled by an operator",
            None => "force cleared by an operator",
        };
        loop {
            let current = self.phase.load_full();
            if current.forced == forced {
                return None;
            }
            let next = match forced {
                None => Phase {
                    forced: None,
                    ..current.closed(now)
                },
                Some(_) => Phase {
                    forced,
                    ..current.next(current.auto.clone(), current.trips)
                },
            };
            // A transition on the request path can win the race; then look again.
            if let Some(t) = self.replace(&current, next, reason.into(), now) {
                if forced.is_none() {
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                }
                return (t.from != t.to).then_some(t);
            }
        }
    }

    /// Applies a new config, keeping the state: a breaker that is open stays open until
    /// its open time (already drawn) has passed, a trial keeps its probes. A change of
    /// window kind or size starts an empty window. Turning `enabled` off disables the
    /// breaker; turning it on again starts from closed. Returns the transition, if any.
    /// Takes a lock that only `force` and `reconfigure` take.
    pub fn reconfigure(&self, config: &BreakerConfig, now: Instant) -> Option<Transition> {
        let _one_at_a_time = self.admin.lock();
        let settings = Arc::new(Settings::from(config));
        loop {
            let current = self.phase.load_full();
            if *settings == *current.settings {
                return None;
            }
            let reason = match (current.settings.enabled, settings.enabled) {
                (true, false) => "disabled in config",
                (false, true) => "enabled in config",
                _ => {
                    // Same state, same epoch: permits handed out stay valid.
                    let window = if settings.window == current.settings.window {
                        current.window.clone()
                    } else {
                        Arc::new(Window::new(&settings.window, now))
                    };
                    let next = Arc::new(Phase {
                        epoch: current.epoch,
                        settings: settings.clone(),
                        forced: current.forced,
                        auto: current.auto.clone(),
                        trips: current.trips,
                        window,
                    });
                    let previous = self.phase.compare_and_swap(&current, next);
                    if Arc::ptr_eq(&previous, &current) {
                        return None;
                    }
                    continue;
                }
            };
            let next = Phase {
                settings: settings.clone(),
                window: Arc::new(Window::new(&settings.window, now)),
                ..current.closed(now)
            };
            if let Some(t) = self.replace(&current, next, reason.into(), now) {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                return (t.from != t.to).then_some(t);
            }
        }
    }

    /// What the breaker knows, for the admin API. Read-only: an open breaker whose open
    /// time has passed shows `open` with no time left until a call arrives.
    pub fn snapshot(&self, now: Instant) -> BreakerSnapshot {
        let phase = self.phase.load_full();
        let tally = phase.window.tally(now);
        let state = phase.state();
        let open_remaining_secs = match (state, &phase.auto) {
            (BreakerState::Open, Auto::Open { until, .. }) => {
                Some(until.saturating_duration_since(now).as_secs_f64())
            }
            _ => None,
        };
        let half_open = match (state, &phase.auto) {
            (BreakerState::HalfOpen, Auto::HalfOpen { since, trial }) => {
                let t = Trial::unpack(trial.load(Ordering::Acquire));
                Some(TrialSnapshot {
                    permitted: phase.settings.half_open_permitted_calls,
                    in_flight: t.in_flight,
                    completed: t.completed,
                    failures: t.failures,
                    slow_calls: t.slow,
                    remaining_secs: (*since + phase.settings.half_open_max_duration)
                        .saturating_duration_since(now)
                        .as_secs_f64(),
                })
            }
            _ => None,
        };
        let last = self.last_transition.load_full();
        BreakerSnapshot {
            state,
            calls: tally.calls,
            failures: tally.failures,
            slow_calls: tally.slow,
            failure_rate: rate(tally.failures, tally.calls),
            slow_call_rate: rate(tally.slow, tally.calls),
            consecutive_failures: u32::try_from(self.consecutive_failures.load(Ordering::Relaxed))
                .unwrap_or(u32::MAX),
            trips: phase.trips,
            total_trips: self.total_trips.load(Ordering::Relaxed),
            open_remaining_secs,
            half_open,
            last_transition: last.as_deref().map(|(t, at)| TransitionSnapshot {
                from: t.from,
                to: t.to,
                reason: t.reason.clone(),
                secs_ago: now.saturating_duration_since(*at).as_secs_f64(),
            }),
        }
    }

    /// Publishes `next` in place of `current` if `current` is still the phase (one
    /// compare-and-swap), and returns the transition; `None` when another caller changed
    /// the phase first.
    fn replace(&self, current: &Arc<Phase>, next: Phase, reason: String, now: Instant) -> Option<Transition> {
        let from = current.state();
        let next = Arc::new(next);
        let word = next.word();
        let to = next.state();
        let previous = self.phase.compare_and_swap(current, next);
        if !Arc::ptr_eq(&previous, current) {
            return None;
        }
        self.published.fetch_max(word, Ordering::AcqRel);
        let t = Transition {
            from,
            to,
            reason,
            window: None,
        };
        self.last_transition.store(Some(Arc::new((t.clone(), now))));
        Some(t)
    }

    /// A uniform draw in `[0, 1)` for the jitter.
    fn draw(&self) -> f64 {
        splitmix_f64(self.rng.fetch_add(GAMMA, Ordering::Relaxed).wrapping_add(GAMMA))
    }

    /// Applies what time alone changes: an open time that has passed, a half-open trial
    /// that has run out of time.
    fn poll(&self, current: &Arc<Phase>, now: Instant) -> Option<Transition> {
        let s = &current.settings;
        if current.forced.is_some() || !s.enabled {
            return None;
        }
        match &current.auto {
            Auto::Open { since, until } if now >= *until => {
                let reason = format!(
                    "open for {:.1}s; letting {} probes through",
                    now.saturating_duration_since(*since).as_secs_f64(),
                    s.half_open_permitted_calls
                );
                let next = current.next(
                    Auto::HalfOpen {
                        since: now,
                        trial: Arc::default(),
                    },
                    current.trips,
                );
                self.replace(current, next, reason, now)
            }
            Auto::HalfOpen { since, trial } if now >= *since + s.half_open_max_duration => {
                let t = Trial::unpack(trial.load(Ordering::Acquire));
                if t.completed > 0 {
                    self.judge(current, &t, t.completed, now)
                } else {
                    let reason = format!(
                        "no probe completed within {:.1}s; letting {} new probes through",
                        s.half_open_max_duration.as_secs_f64(),
                        s.half_open_permitted_calls
                    );
                    let next = current.next(
                        Auto::HalfOpen {
                            since: now,
                            trial: Arc::default(),
                        },
                        current.trips,
                    );
                    self.replace(current, next, reason, now)
                }
            }
            _ => None,
        }
    }

    /// Whether a call may go ahead in `phase` (after `poll`).
    fn admit(&self, phase: &Phase, now: Instant) -> Admission {
        let permit = |kind| {
            Admission::Permitted(Permit {
                epoch: phase.epoch,
                kind,
            })
        };
        match (phase.state(), &phase.auto) {
            (BreakerState::Closed, _) => permit(PermitKind::Closed),
            (BreakerState::Disabled, _) => permit(PermitKind::Untracked),
            (BreakerState::ForcedOpen, _) => Admission::Rejected {
                retry_after: phase.settings.open_duration,
                state: BreakerState::ForcedOpen,
            },
            (BreakerState::HalfOpen, Auto::HalfOpen { trial, .. }) => {
                let permitted = phase.settings.half_open_permitted_calls;
                // Exact: a probe slot is taken by a compare-and-swap that checks the
                // limit on the value it replaces.
                let taken = trial.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                    let t = Trial::unpack(w);
                    (t.in_flight + t.completed < permitted).then(|| w + IN_FLIGHT)
                });
                match taken {
                    Ok(_) => permit(PermitKind::Probe),
                    Err(_) => Admission::Rejected {
                        retry_after: PROBE_RETRY_AFTER,
                        state: BreakerState::HalfOpen,
                    },
                }
            }
            (state, auto) => {
                let until = match auto {
                    Auto::Open { until, .. } => *until,
                    _ => now,
                };
                Admission::Rejected {
                    retry_after: until.saturating_duration_since(now),
                    state,
                }
            }
        }
    }

    fn record_closed(
        &self,
        phase: &Arc<Phase>,
        failure: bool,
        slow: bool,
        now: Instant,
    ) -> Option<Transition> {
        phase.window.record(failure, slow, now);
        let consecutive = if failure {
            self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            0
        };
        let s = &phase.settings;
        if let Some(limit) = s.consecutive_failures {
            if consecutive >= u64::from(limit) {
                return self.trip(phase, format!("{consecutive} consecutive failures"), now);
            }
        }
        let Tally {
            calls,
            failures,
            slow,
        } = phase.window.tally(now);
        if calls < s.minimum_calls {
            return None;
        }
        let failure_rate = rate(failures, calls);
        let slow_rate = rate(slow, calls);
        let reason = if failure_rate >= s.failure_rate_threshold {
            format!(
                "failure rate {failure_rate:.1}% >= {:.1}% over {calls} calls",
                s.failure_rate_threshold
            )
        } else if slow_rate >= s.slow_call_rate_threshold {
            format!(
                "slow-call rate {slow_rate:.1}% >= {:.1}% over {calls} calls",
                s.slow_call_rate_threshold
            )
        } else {
            return None;
        };
        let figures = WindowFigures {
            calls,
            failures,
            slow,
            failure_rate,
            slow_call_rate: slow_rate,
            failure_rate_threshold: s.failure_rate_threshold,
            slow_call_rate_threshold: s.slow_call_rate_threshold,
        };
        self.trip(phase, reason, now).map(|t| t.with_window(figures))
    }

    fn record_probe(
        &self,
        phase: &Arc<Phase>,
        failure: bool,
        slow: bool,
        now: Instant,
    ) -> Option<Transition> {
        let Auto::HalfOpen { since, trial } = &phase.auto else {
            return None;
        };
        let add = COMPLETED + if failure { TRIAL_FAILURE } else { 0 } + if slow { TRIAL_SLOW } else { 0 };
        let previous = trial
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w & 0xFFFF != 0).then(|| w - IN_FLIGHT + add)
            })
            .ok()?;
        let t = Trial::unpack(previous - IN_FLIGHT + add);
        let s = &phase.settings;
        let permitted = s.half_open_permitted_calls;
        // The trial is decided once its result cannot change, whatever the probes still
        // to come do: judged over all permitted probes.
        let remaining = permitted.saturating_sub(t.completed);
        let over = |count: u32, threshold: f64| rate(count, permitted) >= threshold;
        let certain = over(t.failures, s.failure_rate_threshold)
            || over(t.slow, s.slow_call_rate_threshold)
            || (!over(t.failures + remaining, s.failure_rate_threshold)
                && !over(t.slow + remaining, s.slow_call_rate_threshold));
        if certain {
            self.judge(phase, &t, permitted, now)
        } else if now >= *since + s.half_open_max_duration {
            self.judge(phase, &t, t.completed, now)
        } else {
            None
        }
    }

    /// Ends a trial: open again when the probes' failure or slow-call rate over `basis`
    /// probes reaches its threshold, closed with an empty window otherwise.
    fn judge(&self, phase: &Arc<Phase>, trial: &Trial, basis: u32, now: Instant) -> Option<Transition> {
        let s = &phase.settings;
        let failure_rate = rate(trial.failures, basis);
        let slow_rate = rate(trial.slow, basis);
        let figures = WindowFigures {
            calls: basis,
            failures: trial.failures,
            slow: trial.slow,
            failure_rate,
            slow_call_rate: slow_rate,
            failure_rate_threshold: s.failure_rate_threshold,
            slow_call_rate_threshold: s.slow_call_rate_threshold,
        };
        self.judge_inner(phase, trial, basis, now)
            .map(|t| t.with_window(figures))
    }

    fn judge_inner(&self, phase: &Arc<Phase>, trial: &Trial, basis: u32, now: Instant) -> Option<Transition> {
        let s = &phase.settings;
        let failure_rate = rate(trial.failures, basis);
        let slow_rate = rate(trial.slow, basis);
        let mut reason = format!("probes: {} failed", trial.failures);
        if trial.slow > 0 {
            let _ = write!(reason, ", {} slow", trial.slow);
        }
        let _ = write!(reason, " of {basis}");
        if trial.completed < basis {
            let _ = write!(reason, " ({} completed)", trial.completed);
        }
        if failure_rate >= s.failure_rate_threshold {
            let _ = write!(
                reason,
                "; failure rate {failure_rate:.1}% >= {:.1}%",
                s.failure_rate_threshold
            );
            self.trip(phase, reason, now)
        } else if slow_rate >= s.slow_call_rate_threshold {
            let _ = write!(
                reason,
                "; slow-call rate {slow_rate:.1}% >= {:.1}%",
                s.slow_call_rate_threshold
            );
            self.trip(phase, reason, now)
        } else {
            let _ = write!(reason, "; failure rate below {:.1}%", s.failure_rate_threshold);
            let t = self.replace(phase, phase.closed(now), reason, now)?;
            self.consecutive_failures.store(0, Ordering::Relaxed);
            Some(t)
        }
    }

    /// Opens the breaker for the backed-off (and jittered) open time.
    fn trip(&self, phase: &Arc<Phase>, mut reason: String, now: Instant) -> Option<Transition> {
        let trips = phase.trips.saturating_add(1);
        let open_for = open_time(&phase.settings, trips, self.draw());
        let _ = write!(reason, "; open for {:.1}s", open_for.as_secs_f64());
        let next = phase.next(
            Auto::Open {
                since: now,
                until: now + open_for,
            },
            trips,
        );
        let t = self.replace(phase, next, reason, now)?;
        self.total_trips.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        Some(t)
    }
}

/// `part` as a percentage of `whole` (0 when `whole` is 0).
fn rate(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        f64::from(part) * 100.0 / f64::from(whole)
    }
}

/// A breaker's state and counters, for the admin API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerSnapshot {
    /// The current state.
    pub state: BreakerState,
    /// Calls in the closed window (kept while open, as the evidence for the trip).
    pub calls: u32,
    /// Failed calls in the window.
    pub failures: u32,
    /// Slow calls in the window.
    pub slow_calls: u32,
    /// Failed calls in the window, in percent.
    pub failure_rate: f64,
    /// Slow calls in the window, in percent.
    pub slow_call_rate: f64,
    /// Failures in a row while closed.
    pub consecutive_failures: u32,
    /// Trips since the last recovery, which set the back-off of the open time.
    pub trips: u32,
    /// Trips since the breaker was created.
    pub total_trips: u64,
    /// While open: seconds until it turns half-open (0 when due at the next call).
    pub open_remaining_secs: Option<f64>,
    /// While half-open: the trial so far.
    pub half_open: Option<TrialSnapshot>,
    /// The latest state change.
    pub last_transition: Option<TransitionSnapshot>,
}

/// A half-open trial, for the admin API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrialSnapshot {
    /// Probes the trial lets through.
    pub permitted: u32,
    /// Probes under way.
    pub in_flight: u32,
    /// Probes that have completed.
    pub completed: u32,
    /// Completed probes that failed.
    pub failures: u32,
    /// Completed probes that were slow.
    pub slow_calls: u32,
    /// Seconds until the trial runs out of time.
    pub remaining_secs: f64,
}

/// A past state change, for the admin API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransitionSnapshot {
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
    /// Why.
    pub reason: String,
    /// How long ago, in seconds.
    pub secs_ago: f64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::resilience::{Clock, ManualClock};

    const FAST: Duration = Duration::from_millis(10);
    const SLOW: Duration = Duration::from_secs(10);

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: WindowConfig::Count(10),
            minimum_calls: 4,
            failure_rate_threshold: 50.0,
            jitter: 0.0,
            half_open_permitted_calls: 3,
            ..BreakerConfig::default()
        }
    }

    struct Harness {
        clock: ManualClock,
        breaker: CircuitBreaker,
    }

    impl Harness {
        fn new(config: BreakerConfig) -> Self {
            let clock = ManualClock::new();
            let breaker = CircuitBreaker::with_seed(&config, clock.now(), 7);
            Self { clock, breaker }
        }

        fn acquire(&self) -> Acquire {
            self.breaker.try_acquire(self.clock.now())
        }

        fn permit(&self) -> Permit {
            match self.acquire().admission {
                Admission::Permitted(p) => p,
                other => panic!("expected a permit in {:?}, got {other:?}", self.breaker.state()),
            }
        }

        /// Makes one call with the given outcome; returns the transition it caused.
        fn call(&self, failure: bool, duration: Duration) -> Option<Transition> {
            let p = self.permit();
            self.breaker
                .record(p, CallOutcome { failure, duration }, self.clock.now())
        }

        fn calls(&self, n: usize, failure: bool) -> Vec<Transition> {
            (0..n).filter_map(|_| self.call(failure, FAST)).collect()
        }

        fn retry_after(&self) -> Duration {
            match self.acquire().admission {
                Admission::Rejected { retry_after, .. } => retry_after,
                other => panic!("expected a rejection, got {other:?}"),
            }
        }

        /// Fails calls until the breaker trips from closed.
        fn trip(&self) -> Transition {
            for _ in 0..1000 {
                if let Some(t) = self.call(true, FAST) {
                    assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
                    return t;
                }
            }
            panic!("never tripped")
        }

        /// Waits out the open time and takes the first probe.
        fn half_open(&self) -> Permit {
            let wait = self.retry_after();
            self.clock.advance(wait);
            let a = self.acquire();
            let t = a.transition.expect("open -> half_open");
            assert_eq!((t.from, t.to), (BreakerState::Open, BreakerState::HalfOpen));
            match a.admission {
                Admission::Permitted(p) => p,
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn starts_closed_and_permits_calls() {
        let h = Harness::new(config());
        assert_eq!(h.breaker.state(), BreakerState::Closed);
        let p = h.permit();
        assert!(p.is_counted() && !p.is_probe());
        assert!(h.calls(3, false).is_empty());
    }

    #[test]
    fn opens_when_failure_rate_reaches_threshold() {
        let h = Harness::new(config());
        assert!(h.calls(2, false).is_empty());
        assert!(h.calls(1, true).is_empty());
        // 2 of 4 failed: 50% >= 50%.
        let t = h.calls(1, true);
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].from, t[0].to), (BreakerState::Closed, BreakerState::Open));
        assert_eq!(
            t[0].reason,
            "failure rate 50.0% >= 50.0% over 4 calls; open for 5.0s"
        );
        assert_eq!(h.breaker.state(), BreakerState::Open);
        assert!(matches!(
            h.acquire().admission,
            Admission::Rejected {
                state: BreakerState::Open,
                ..
            }
        ));
    }

    #[test]
    fn stays_closed_below_minimum_calls() {
        let h = Harness::new(config());
        // 3 failures out of 3 is 100%, but the window needs 4 calls.
        assert!(h.calls(3, true).is_empty());
        assert_eq!(h.breaker.state(), BreakerState::Closed);
        let snap = h.breaker.snapshot(h.clock.now());
        assert_eq!((snap.calls, snap.failures, snap.failure_rate), (3, 3, 100.0));
    }

    #[test]
    fn stays_closed_below_failure_rate_threshold() {
        let h = Harness::new(config());
        // One failure in four, at most 30% of any ten calls.
        for _ in 0..10 {
            assert!(h.call(true, FAST).is_none());
            assert!(h.calls(3, false).is_empty());
        }
        assert_eq!(h.breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn opens_when_slow_call_rate_reaches_threshold() {
        let h = Harness::new(BreakerConfig {
            slow_call_rate_threshold: 75.0,
            slow_call_duration: Duration::from_secs(1),
            ..config()
        });
        assert!(h.call(false, FAST).is_none());
        assert!(h.call(false, SLOW).is_none());
        assert!(h.call(false, SLOW).is_none());
        // Exactly the threshold is not slow: a call must take longer.
        assert!(h.call(false, Duration::from_secs(1)).is_none());
        assert_eq!(h.breaker.snapshot(h.clock.now()).slow_calls, 2);
        // 3 of 5 slow is 60%.
        assert!(h.call(false, SLOW).is_none());
        // 4 of 6 is 66.7%; 5 of 7 is 71.4%; 6 of 8 is 75%.
        assert!(h.call(false, SLOW).is_none());
        assert!(h.call(false, SLOW).is_none());
        let t = h.call(false, SLOW).expect("trips");
        assert_eq!(t.to, BreakerState::Open);
        assert!(
            t.reason.starts_with("slow-call rate 75.0% >= 75.0% over 8 calls"),
            "{}",
            t.reason
        );
    }

    #[test]
    fn opens_after_consecutive_failures_regardless_of_minimum_calls() {
        let h = Harness::new(BreakerConfig {
            window: WindowConfig::Count(100),
            minimum_calls: 100,
            consecutive_failures: Some(3),
            ..config()
        });
        assert!(h.calls(2, true).is_empty());
        // A success resets the run.
        assert!(h.call(false, FAST).is_none());
        assert!(h.calls(2, true).is_empty());
        let t = h.call(true, FAST).expect("third failure in a row trips");
        assert_eq!(t.to, BreakerState::Open);
        assert!(t.reason.starts_with("3 consecutive failures"), "{}", t.reason);
    }

    #[test]
    fn count_window_forgets_calls_older_than_its_size() {
        let h = Harness::new(BreakerConfig {
            minimum_calls: 10,
            ..config()
        });
        // 3 failures, then 7 successes: 30% over 10.
        assert!(h.calls(3, true).is_empty());
        assert!(h.calls(7, false).is_empty());
        // Each success now pushes a failure out.
        assert!(h.calls(3, false).is_empty());
        let snap = h.breaker.snapshot(h.clock.now());
        assert_eq!((snap.calls, snap.failures), (10, 0));
        // Five failures in the last ten calls: 50%.
        assert!(h.calls(4, true).is_empty());
        assert_eq!(h.calls(1, true).len(), 1);
    }

    #[test]
    fn time_window_forgets_calls_older_than_its_duration() {
        let h = Harness::new(BreakerConfig {
            window: WindowConfig::Time(Duration::from_secs(10)),
            ..config()
        });
        assert!(h.calls(3, true).is_empty());
        h.clock.advance(Duration::from_secs(10));
        // The three failures have left the window: 1 of 4 fails.
        assert!(h.calls(3, false).is_empty());
        assert!(h.calls(1, true).is_empty());
        assert_eq!(h.breaker.snapshot(h.clock.now()).calls, 4);
        h.clock.advance(Duration::from_secs(5));
        // Still inside: 2 failures in 5 calls is 40%; a third gives 3 of 6, 50%.
        assert!(h.calls(1, true).is_empty());
        let t = h.calls(1, true);
        assert_eq!(t.len(), 1);
        assert!(t[0].reason.contains("over 6 calls"), "{}", t[0].reason);
    }

    #[test]
    fn time_window_trips_on_the_rate_over_the_last_minute() {
        let h = Harness::new(BreakerConfig {
            window: WindowConfig::Time(Duration::from_secs(60)),
            minimum_calls: 10,
            failure_rate_threshold: 10.0,
            ..config()
        });
        for _ in 0..9 {
            assert!(h.call(false, FAST).is_none());
            h.clock.advance(Duration::from_secs(5));
        }
        let t = h.call(true, FAST).expect("1 of 10 in the last minute");
        assert!(
            t.reason.starts_with("failure rate 10.0% >= 10.0% over 10 calls"),
            "{}",
            t.reason
        );
    }

    #[test]
    fn turns_half_open_after_the_open_time() {
        let h = Harness::new(config());
        h.trip();
        assert_eq!(h.retry_after(), Duration::from_secs(5));
        h.clock.advance(Duration::from_millis(4999));
        assert_eq!(h.retry_after(), Duration::from_millis(1));
        assert_eq!(h.breaker.state(), BreakerState::Open);
        h.clock.advance(Duration::from_millis(1));
        let a = h.acquire();
        let t = a.transition.unwrap();
        assert_eq!((t.from, t.to), (BreakerState::Open, BreakerState::HalfOpen));
        assert_eq!(t.reason, "open for 5.0s; letting 3 probes through");
        let Admission::Permitted(p) = a.admission else {
            panic!("the first call after the open time is a probe")
        };
        assert!(p.is_probe());
        assert_eq!(h.breaker.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn half_open_permits_exactly_the_configured_probes() {
        let h = Harness::new(config());
        h.trip();
        let first = h.half_open();
        let second = h.permit();
        let third = h.permit();
        assert!(second.is_probe() && third.is_probe());
        match h.acquire().admission {
            Admission::Rejected { retry_after, state } => {
                assert_eq!(state, BreakerState::HalfOpen);
                assert_eq!(retry_after, PROBE_RETRY_AFTER);
            }
            other => panic!("the fourth call must wait: {other:?}"),
        }
        let snap = h.breaker.snapshot(h.clock.now()).half_open.unwrap();
        assert_eq!((snap.permitted, snap.in_flight, snap.completed), (3, 3, 0));
        // Releasing an abandoned probe frees its slot without counting it.
        h.breaker.release(second);
        let again = h.permit();
        assert!(again.is_probe());
        assert!(matches!(h.acquire().admission, Admission::Rejected { .. }));
        let snap = h.breaker.snapshot(h.clock.now()).half_open.unwrap();
        assert_eq!((snap.in_flight, snap.completed, snap.failures), (3, 0, 0));
        drop((first, third, again));
    }

    #[test]
    fn closes_when_probes_pass() {
        let h = Harness::new(config());
        h.trip();
        let probes = [h.half_open(), h.permit(), h.permit()];
        let now = h.clock.now();
        let mut transitions = Vec::new();
        for (i, p) in probes.into_iter().enumerate() {
            // One of three fails: 33% < 50%.
            let outcome = CallOutcome {
                failure: i == 0,
                duration: FAST,
            };
            transitions.extend(h.breaker.record(p, outcome, now));
        }
        assert_eq!(transitions.len(), 1);
        let t = &transitions[0];
        assert_eq!((t.from, t.to), (BreakerState::HalfOpen, BreakerState::Closed));
        assert_eq!(t.reason, "probes: 1 failed of 3; failure rate below 50.0%");
        // A fresh window and no back-off.
        let snap = h.breaker.snapshot(now);
        assert_eq!(
            (snap.state, snap.calls, snap.trips, snap.total_trips),
            (BreakerState::Closed, 0, 0, 1)
        );
        h.trip();
        assert_eq!(h.retry_after(), Duration::from_secs(5));
    }

    #[test]
    fn reopens_when_probes_fail() {
        let h = Harness::new(config());
        h.trip();
        let probes = [h.half_open(), h.permit(), h.permit()];
        let now = h.clock.now();
        let mut it = probes.into_iter();
        assert!(h
            .breaker
            .record(it.next().unwrap(), CallOutcome::failure(FAST), now)
            .is_none());
        // Two failures of three permitted probes is 66.7%, whatever the third does.
        let t = h
            .breaker
            .record(it.next().unwrap(), CallOutcome::failure(FAST), now)
            .unwrap();
        assert_eq!((t.from, t.to), (BreakerState::HalfOpen, BreakerState::Open));
        assert_eq!(
            t.reason,
            "probes: 2 failed of 3 (2 completed); failure rate 66.7% >= 50.0%; open for 10.0s"
        );
        // The last probe is stale now.
        assert!(h
            .breaker
            .record(it.next().unwrap(), CallOutcome::failure(FAST), now)
            .is_none());
        assert_eq!(h.retry_after(), Duration::from_secs(10));
    }

    #[test]
    fn reopens_when_probes_are_slow() {
        let h = Harness::new(BreakerConfig {
            slow_call_rate_threshold: 50.0,
            slow_call_duration: Duration::from_secs(1),
            ..config()
        });
        h.trip();
        let probes = [h.half_open(), h.permit()];
        let now = h.clock.now();
        let mut it = probes.into_iter();
        assert!(h
            .breaker
            .record(it.next().unwrap(), CallOutcome::success(SLOW), now)
            .is_none());
        let t = h
            .breaker
            .record(it.next().unwrap(), CallOutcome::success(SLOW), now)
            .unwrap();
        assert_eq!(t.to, BreakerState::Open);
        assert!(t.reason.contains("slow-call rate 66.7% >= 50.0%"), "{}", t.reason);
    }

    #[test]
    fn half_open_trial_that_runs_out_of_time_is_judged_on_completed_probes() {
        let h = Harness::new(config());
        h.trip();
        let first = h.half_open();
        let _hung = h.permit();
        let _also_hung = h.permit();
        assert!(h
            .breaker
            .record(first, CallOutcome::success(FAST), h.clock.now())
            .is_none());
        h.clock.advance(Duration::from_secs(30));
        let a = h.acquire();
        let t = a.transition.unwrap();
        assert_eq!((t.from, t.to), (BreakerState::HalfOpen, BreakerState::Closed));
        assert_eq!(t.reason, "probes: 0 failed of 1; failure rate below 50.0%");
        assert!(matches!(a.admission, Admission::Permitted(ref p) if !p.is_probe()));
    }

    #[test]
    fn half_open_trial_with_no_completed_probe_restarts_and_never_sticks() {
        let h = Harness::new(config());
        h.trip();
        let lost = [h.half_open(), h.permit(), h.permit()];
        assert!(matches!(h.acquire().admission, Admission::Rejected { .. }));
        h.clock.advance(Duration::from_secs(29));
        assert!(matches!(h.acquire().admission, Admission::Rejected { .. }));
        h.clock.advance(Duration::from_secs(1));
        let a = h.acquire();
        let t = a.transition.unwrap();
        assert_eq!((t.from, t.to), (BreakerState::HalfOpen, BreakerState::HalfOpen));
        assert_eq!(
            t.reason,
            "no probe completed within 30.0s; letting 3 new probes through"
        );
        let Admission::Permitted(fresh) = a.admission else {
            panic!("a new trial admits probes")
        };
        // The lost probes are stale: recording them neither counts nor frees slots.
        for p in lost {
            assert!(h
                .breaker
                .record(p, CallOutcome::failure(FAST), h.clock.now())
                .is_none());
        }
        let snap = h.breaker.snapshot(h.clock.now()).half_open.unwrap();
        assert_eq!((snap.in_flight, snap.completed), (1, 0));
        let rest = [h.permit(), h.permit()];
        let mut last = None;
        for p in std::iter::once(fresh).chain(rest) {
            last = h
                .breaker
                .record(p, CallOutcome::success(FAST), h.clock.now())
                .or(last);
        }
        assert_eq!(last.unwrap().to, BreakerState::Closed);
    }

    #[test]
    fn open_time_grows_by_the_multiplier_and_is_capped() {
        let h = Harness::new(BreakerConfig {
            open_duration: Duration::from_secs(5),
            max_open_duration: Duration::from_secs(60),
            backoff_multiplier: 2.0,
            half_open_permitted_calls: 1,
            ..config()
        });
        h.trip();
        let mut seen = vec![h.retry_after()];
        for _ in 0..6 {
            let probe = h.half_open();
            let t = h
                .breaker
                .record(probe, CallOutcome::failure(FAST), h.clock.now())
                .unwrap();
            assert_eq!(t.to, BreakerState::Open);
            seen.push(h.retry_after());
        }
        let secs: Vec<u64> = seen.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [5, 10, 20, 40, 60, 60, 60]);
        assert!(seen.iter().all(|d| d.subsec_nanos() == 0));
        assert_eq!(h.breaker.snapshot(h.clock.now()).trips, 7);
        // A recovery resets the back-off.
        let probe = h.half_open();
        let t = h.breaker.record(probe, CallOutcome::success(FAST), h.clock.now());
        assert_eq!(t.unwrap().to, BreakerState::Closed);
        h.trip();
        assert_eq!(h.retry_after(), Duration::from_secs(5));
    }

    #[test]
    fn default_back_off_reaches_300s_cap() {
        let s = Settings::from(&BreakerConfig {
            jitter: 0.0,
            ..BreakerConfig::default()
        });
        let secs: Vec<u64> = (1..=9).map(|n| open_time(&s, n, 0.5).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(open_time(&s, u32::MAX, 0.5), Duration::from_secs(300));
    }

    #[test]
    fn jitter_keeps_open_time_within_bounds() {
        let s = Settings::from(&BreakerConfig {
            jitter: 0.1,
            ..BreakerConfig::default()
        });
        assert_eq!(open_time(&s, 1, 0.0), Duration::from_millis(4500));
        assert_eq!(open_time(&s, 1, 0.5), Duration::from_secs(5));
        // At the cap, jitter only shortens.
        assert_eq!(open_time(&s, 20, 0.999), Duration::from_secs(300));
        assert_eq!(open_time(&s, 20, 0.0), Duration::from_secs(270));
        // Through the breaker, with its own generator: every draw in [4.5s, 5.5s), and
        // not all the same.
        let jittery = BreakerConfig {
            jitter: 0.1,
            ..config()
        };
        let now = Instant::now();
        let mut draws = Vec::new();
        for seed in 0..50 {
            let b = CircuitBreaker::with_seed(&jittery, now, seed);
            let mut tripped = None;
            for _ in 0..4 {
                let Admission::Permitted(p) = b.try_acquire(now).admission else {
                    panic!("closed")
                };
                tripped = b.record(p, CallOutcome::failure(FAST), now).or(tripped);
            }
            assert!(tripped.is_some());
            let Admission::Rejected { retry_after, .. } = b.try_acquire(now).admission else {
                panic!("open")
            };
            assert!(
                retry_after >= Duration::from_millis(4500) && retry_after < Duration::from_millis(5500),
                "{retry_after:?}"
            );
            draws.push(retry_after);
        }
        draws.sort();
        draws.dedup();
        assert!(draws.len() > 40, "{draws:?}");
    }

    #[test]
    fn forced_open_rejects_everything_until_cleared() {
        let h = Harness::new(config());
        let before = h.permit();
        let t = h.breaker.force(Some(Forced::Open), h.clock.now()).unwrap();
        assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::ForcedOpen));
        assert_eq!(h.breaker.state(), BreakerState::ForcedOpen);
        for _ in 0..3 {
            h.clock.advance(Duration::from_secs(600));
            assert!(matches!(
                h.acquire().admission,
                Admission::Rejected {
                    state: BreakerState::ForcedOpen,
                    ..
                }
            ));
        }
        // Forcing the same state again changes nothing.
        assert!(h.breaker.force(Some(Forced::Open), h.clock.now()).is_none());
        // A permit from before is stale.
        assert!(h
            .breaker
            .record(before, CallOutcome::failure(FAST), h.clock.now())
            .is_none());
        let t = h.breaker.force(None, h.clock.now()).unwrap();
        assert_eq!((t.from, t.to), (BreakerState::ForcedOpen, BreakerState::Closed));
        assert!(h.permit().is_counted());
    }

    #[test]
    fn disabled_permits_everything_and_records_nothing() {
        let h = Harness::new(config());
        let t = h.breaker.force(Some(Forced::Disabled), h.clock.now()).unwrap();
        assert_eq!(t.to, BreakerState::Disabled);
        for _ in 0..20 {
            let p = h.permit();
            assert!(!p.is_counted());
            assert!(h
                .breaker
                .record(p, CallOutcome::failure(FAST), h.clock.now())
                .is_none());
        }
        assert_eq!(h.breaker.snapshot(h.clock.now()).calls, 0);
        assert_eq!(h.breaker.state(), BreakerState::Disabled);
    }

    #[test]
    fn clearing_a_force_starts_closed_with_an_empty_window() {
        let h = Harness::new(config());
        h.trip();
        h.breaker.force(Some(Forced::Disabled), h.clock.now());
        let t = h.breaker.force(None, h.clock.now()).unwrap();
        assert_eq!((t.from, t.to), (BreakerState::Disabled, BreakerState::Closed));
        let snap = h.breaker.snapshot(h.clock.now());
        assert_eq!((snap.state, snap.calls, snap.trips), (BreakerState::Closed, 0, 0));
        assert_eq!(
            snap.last_transition.unwrap().reason,
            "force cleared by an operator"
        );
        // Clearing when nothing is forced is a no-op.
        assert!(h.breaker.force(None, h.clock.now()).is_none());
        // The back-off starts over.
        h.trip();
        assert_eq!(h.retry_after(), Duration::from_secs(5));
    }

    #[test]
    fn enabled_false_in_config_disables_the_breaker() {
        let h = Harness::new(BreakerConfig {
            enabled: false,
            ..config()
        });
        assert_eq!(h.breaker.state(), BreakerState::Disabled);
        assert!(h.calls(10, true).is_empty());
        let t = h.breaker.reconfigure(&config(), h.clock.now()).unwrap();
        assert_eq!((t.from, t.to), (BreakerState::Disabled, BreakerState::Closed));
        assert_eq!(t.reason, "enabled in config");
        h.trip();
    }

    #[test]
    fn reconfigure_keeps_state_and_resets_window_on_size_change() {
        let h = Harness::new(config());
        assert!(h.calls(3, true).is_empty());
        // Same window: the counts stay.
        let same_window = BreakerConfig {
            failure_rate_threshold: 90.0,
            ..config()
        };
        assert!(h.breaker.reconfigure(&same_window, h.clock.now()).is_none());
        assert_eq!(h.breaker.snapshot(h.clock.now()).calls, 3);
        // A new window size starts empty.
        let bigger = BreakerConfig {
            window: WindowConfig::Count(20),
            ..config()
        };
        assert!(h.breaker.reconfigure(&bigger, h.clock.now()).is_none());
        assert_eq!(h.breaker.snapshot(h.clock.now()).calls, 0);
        // An open breaker stays open across a reload.
        h.trip();
        assert!(h
            .breaker
            .reconfigure(
                &BreakerConfig {
                    window: WindowConfig::Time(Duration::from_secs(30)),
                    ..config()
                },
                h.clock.now()
            )
            .is_none());
        assert_eq!(h.breaker.state(), BreakerState::Open);
        assert_eq!(h.retry_after(), Duration::from_secs(5));
    }

    #[test]
    fn snapshot_reports_rates_and_the_last_transition() {
        let h = Harness::new(config());
        assert!(h.calls(1, false).is_empty());
        h.trip();
        h.clock.advance(Duration::from_secs(2));
        let snap = h.breaker.snapshot(h.clock.now());
        assert_eq!(snap.state, BreakerState::Open);
        assert_eq!((snap.calls, snap.failures), (4, 3));
        assert_eq!(snap.failure_rate, 75.0);
        assert_eq!(snap.open_remaining_secs, Some(3.0));
        let last = snap.last_transition.as_ref().unwrap();
        assert_eq!(
            (last.from, last.to, last.secs_ago),
            (BreakerState::Closed, BreakerState::Open, 2.0)
        );
        assert_eq!(
            last.reason,
            "failure rate 75.0% >= 50.0% over 4 calls; open for 5.0s"
        );
        let yaml = serde_yaml::to_string(&snap).unwrap();
        assert!(yaml.contains("state: open"), "{yaml}");
    }

    #[test]
    fn stale_closed_permits_do_not_count_after_a_trip() {
        let h = Harness::new(config());
        let late = h.permit();
        h.trip();
        let probe = h.half_open();
        // A call permitted while closed that ends during the trial is not a probe.
        assert!(h
            .breaker
            .record(late, CallOutcome::failure(FAST), h.clock.now())
            .is_none());
        let trial = h.breaker.snapshot(h.clock.now()).half_open.unwrap();
        assert_eq!((trial.completed, trial.failures), (0, 0));
        drop(probe);
    }

    #[test]
    fn state_names_and_gauge_codes_are_stable() {
        let names: Vec<&str> = BreakerState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["closed", "open", "half_open", "forced_open", "disabled"]);
        for (i, s) in BreakerState::ALL.iter().enumerate() {
            assert_eq!(usize::from(s.gauge_code()), i);
            assert_eq!(BreakerState::from_code(s.gauge_code()), *s);
        }
    }

    #[test]
    fn classify_follows_failure_conditions() {
        let c = FailureConditions {
            connect_error: false,
            ..FailureConditions::default()
        };
        let d = FAST;
        assert!(CallOutcome::classify(&c, UpstreamOutcome::Response(503), d).failure);
        assert!(!CallOutcome::classify(&c, UpstreamOutcome::Response(404), d).failure);
        assert!(!CallOutcome::classify(&c, UpstreamOutcome::ConnectFailure, d).failure);
        assert!(CallOutcome::classify(&c, UpstreamOutcome::Timeout, d).failure);
        assert!(CallOutcome::classify(&c, UpstreamOutcome::Reset, d).failure);
    }

    #[test]
    fn absurd_durations_are_bounded_instead_of_overflowing() {
        let h = Harness::new(BreakerConfig {
            open_duration: Duration::MAX,
            max_open_duration: Duration::MAX,
            half_open_max_duration: Duration::MAX,
            ..config()
        });
        h.trip();
        assert_eq!(h.retry_after(), crate::resilience::MAX_DURATION);
        let _probe = h.half_open();
        assert_eq!(h.breaker.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn is_safe_to_share_between_threads() {
        let breaker = std::sync::Arc::new(CircuitBreaker::new(
            &BreakerConfig {
                window: WindowConfig::Count(1000),
                minimum_calls: 1000,
                ..config()
            },
            Instant::now(),
        ));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = breaker.clone();
                std::thread::spawn(move || {
                    for i in 0..250 {
                        if let Admission::Permitted(p) = b.try_acquire(Instant::now()).admission {
                            let _ = b.record(
                                p,
                                CallOutcome {
                                    failure: i % 4 == 0,
                                    duration: FAST,
                                },
                                Instant::now(),
                            );
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let snap = breaker.snapshot(Instant::now());
        // i % 4 == 0 for 63 of every 250 calls.
        assert_eq!(
            (snap.calls, snap.failures, snap.state),
            (1000, 252, BreakerState::Closed)
        );
    }

    #[test]
    fn racing_failures_trip_once_and_probes_stay_exact() {
        let clock = ManualClock::new();
        let cfg = BreakerConfig {
            window: WindowConfig::Count(20),
            minimum_calls: 20,
            half_open_permitted_calls: 7,
            ..config()
        };
        let breaker = std::sync::Arc::new(CircuitBreaker::with_seed(&cfg, clock.now(), 7));
        let now = clock.now();
        // 4 threads × 50 failures: the window reaches its threshold many times at once,
        // and exactly one caller trips it.
        let run = |f: fn(&CircuitBreaker, Instant) -> usize| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let b = breaker.clone();
                    std::thread::spawn(move || f(&b, now))
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum::<usize>()
        };
        let trips = run(|b, now| {
            (0..50)
                .filter_map(|_| match b.try_acquire(now).admission {
                    Admission::Permitted(p) => b.record(p, CallOutcome::failure(FAST), now),
                    Admission::Rejected { .. } => None,
                })
                .filter(|t| t.to == BreakerState::Open)
                .count()
        });
        assert_eq!(trips, 1);
        assert_eq!(breaker.snapshot(now).total_trips, 1);
        // Half-open: of 4 × 50 racing callers, exactly the permitted 7 get a probe.
        let later = now + Duration::from_secs(5);
        let held: Vec<Permit> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..50)
                            .filter_map(|_| match breaker.try_acquire(later).admission {
                                Admission::Permitted(p) => Some(p),
                                Admission::Rejected { .. } => None,
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
        });
        assert!(held.iter().all(Permit::is_probe));
        assert_eq!(held.len(), 7);
        let trial = breaker.snapshot(later).half_open.unwrap();
        assert_eq!((trial.permitted, trial.in_flight), (7, 7));
        let closed = held
            .into_iter()
            .filter_map(|p| breaker.record(p, CallOutcome::success(FAST), later))
            .filter(|t| t.to == BreakerState::Closed)
            .count();
        assert_eq!(closed, 1);
    }
}
