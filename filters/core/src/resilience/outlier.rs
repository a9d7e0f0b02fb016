//! Passive outlier detection for one upstream's endpoints (Envoy's semantics).
//!
//! The proxy reports each attempt's outcome against the endpoint that served it; an
//! endpoint that keeps failing is ejected from load balancing for a while. Whether an
//! endpoint is ejected is one atomic load, so the load balancer can ask on every pick.
//!
//! - **Detectors.** `consecutive_5xx` counts 5xx responses, connect failures, timeouts
//!   and resets in a row; `consecutive_gateway_failure` counts 502/503/504 responses,
//!   connect failures, timeouts and resets in a row (another 5xx resets it, as in Envoy);
//!   `failure_percentage` judges each endpoint's failures over each interval, when the
//!   first outcome after the interval arrives.
//! - **Ejection time.** `base_ejection_time × n`, capped at `max_ejection_time`, where
//!   `n` counts the endpoint's ejections; `n` drops by one for every
//!   `base_ejection_time` the endpoint then stays un-ejected (Envoy decrements it per
//!   healthy interval). Un-ejection needs no timer: an ejection simply expires.
//! - **Cap.** At most `max_ejected()` endpoints are ejected at once:
//!   `floor(endpoints × max_ejection_percent / 100)`, raised to one when the percent is
//!   above 0 (Envoy: "will eject at least one host regardless of the value") — except
//!   that the only endpoint of an upstream is never ejected, since that would turn its
//!   errors into "no endpoint" errors and gain nothing. An ejection the cap prevents is
//!   still reported, with `enforced: false`, and the endpoint's counts are kept, so the
//!   next failure tries again.
//! - While an endpoint is ejected its outcomes (calls that were already under way) are
//!   ignored, and it starts from clean counts when it returns.
//!
//! # Lock-free recording
//!
//! [`OutlierDetector::record`] runs on every upstream response and takes no lock. Each
//! endpoint's counters are atomics: the two runs of failures in a row, and the current
//! failure-percentage interval's requests and failures packed in one word (so the thread
//! that rolls the interval over takes both with one swap, after winning a
//! compare-and-swap on the interval's start). An ejection is a compare-and-swap of the
//! endpoint's "ejected until" word (nanoseconds since the detector's origin) from the
//! value it had when the outcome was judged, so when several threads see the threshold
//! at once exactly one ejects and reports it. The cap is a fixed set of `max_ejected()`
//! slots, each holding the end of the ejection that occupies it: an ejection first
//! claims an expired slot by compare-and-swap, so concurrent ejections can never exceed
//! the cap, and a slot frees itself when its ejection expires, with no timer. An outcome
//! recorded at the very instant its endpoint is ejected by another thread may still be
//! counted into the fresh counts; nothing else differs from a serialized detector.
//!
//! State is keyed by endpoint address: [`OutlierDetector::rebuild`] carries it over to a
//! new endpoint list on reload.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_config::resilience::OutlierDetectionConfig;

use super::{bounded, UpstreamOutcome};

/// Which detector ejected an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EjectionReason {
    /// `consecutive_5xx` failures in a row.
    #[serde(rename = "consecutive_5xx")]
    Consecutive5xx,
    /// `consecutive_gateway_failure` gateway failures in a row.
    ConsecutiveGatewayFailure,
    /// The failure percentage over an interval.
    FailurePercentage,
}

impl EjectionReason {
    /// Every reason, in [`EjectionReason::index`] order.
    pub const ALL: [EjectionReason; 3] = [
        EjectionReason::Consecutive5xx,
        EjectionReason::ConsecutiveGatewayFailure,
        EjectionReason::FailurePercentage,
    ];

    /// The reason's name, for metrics labels: `consecutive_5xx`,
    /// `consecutive_gateway_failure`, `failure_percentage`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EjectionReason::Consecutive5xx => "consecutive_5xx",
            EjectionReason::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            EjectionReason::FailurePercentage => "failure_percentage",
        }
    }

    /// The reason's position in [`EjectionReason::ALL`], for arrays of pre-resolved
    /// metric handles.
    pub const fn index(self) -> usize {
        match self {
            EjectionReason::Consecutive5xx => 0,
            EjectionReason::ConsecutiveGatewayFailure => 1,
            EjectionReason::FailurePercentage => 2,
        }
    }

    /// The code stored in an endpoint's `last_reason` word: the index plus one (0 is
    /// "never ejected").
    const fn code(self) -> u8 {
        self.index() as u8 + 1
    }

    fn from_code(code: u8) -> Option<EjectionReason> {
        EjectionReason::ALL
            .get(usize::from(code).checked_sub(1)?)
            .copied()
    }
}

/// An ejection decided by [`OutlierDetector::record`].
#[derive(Debug, Clone, PartialEq)]
pub struct EjectionEvent {
    /// Index of the endpoint.
    pub endpoint: usize,
    /// Its address.
    pub address: String,
    /// Which detector fired.
    pub reason: EjectionReason,
    /// What it saw, for logs: `5 consecutive 5xx`, `90.0% of 20 requests failed`.
    pub detail: String,
    /// How long the endpoint is ejected for (or would have been).
    pub duration: Duration,
    /// `false` when `max_ejection_percent` kept the endpoint in.
    pub enforced: bool,
}

/// The settings the detector reads, copied out of an [`OutlierDetectionConfig`].
#[derive(Debug, Clone)]
struct Settings {
    enabled: bool,
    consecutive_5xx: Option<u32>,
    consecutive_gateway_failure: Option<u32>,
    /// Threshold (percent), minimum requests, interval in nanoseconds.
    failure_percentage: Option<(f64, u32, u64)>,
    base_ejection_time: Duration,
    max_ejection_time: Duration,
    max_ejection_percent: f64,
}

impl From<&OutlierDetectionConfig> for Settings {
    fn from(c: &OutlierDetectionConfig) -> Self {
        Self {
            enabled: c.enabled,
            consecutive_5xx: c.consecutive_5xx.filter(|n| *n > 0),
            consecutive_gateway_failure: c.consecutive_gateway_failure.filter(|n| *n > 0),
            failure_percentage: c.failure_percentage.as_ref().map(|f| {
                (
                    f.threshold,
                    f.minimum_requests.max(1),
                    duration_nanos(bounded(f.interval)),
                )
            }),
            base_ejection_time: bounded(c.base_ejection_time),
            max_ejection_time: bounded(c.max_ejection_time.max(c.base_ejection_time)),
            max_ejection_percent: c.max_ejection_percent,
        }
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One request in the packed interval word: requests in the low half, failures in the
/// high half.
const INTERVAL_REQUEST: u64 = 1;
const INTERVAL_FAILURE: u64 = 1 << 32;

fn unpack_interval(word: u64) -> (u32, u32) {
    (word as u32, (word >> 32) as u32)
}

/// One endpoint's state. Aligned to a cache line, so that endpoints recorded by
/// different threads do not share one.
#[derive(Debug)]
#[repr(align(64))]
struct Endpoint {
    address: String,
    /// Nanoseconds after the detector's origin until which the endpoint is (or was last)
    /// ejected; 0 when it never was.
    ejected_until: AtomicU64,
    consecutive_5xx: AtomicU64,
    consecutive_gateway: AtomicU64,
    /// Start of the current failure-percentage interval, in nanoseconds after the
    /// origin.
    interval_start: AtomicU64,
    /// The interval's requests and failures, packed (see [`INTERVAL_FAILURE`]).
    interval: AtomicU64,
    /// Recent ejections, before the decay since `ejected_until` is applied.
    ejections: AtomicU64,
    total_ejections: AtomicU64,
    /// [`EjectionReason::code`] of the last ejection; 0 when never ejected.
    last_reason: AtomicU8,
}

impl Endpoint {
    fn new(address: String, interval_start: u64) -> Self {
        Self {
            address,
            ejected_until: AtomicU64::new(0),
            consecutive_5xx: AtomicU64::new(0),
            consecutive_gateway: AtomicU64::new(0),
            interval_start: AtomicU64::new(interval_start),
            interval: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            total_ejections: AtomicU64::new(0),
            last_reason: AtomicU8::new(0),
        }
    }

    /// A copy of `self`'s state under a new address list (for `rebuild`).
    fn carried(&self) -> Self {
        let load = |a: &AtomicU64| AtomicU64::new(a.load(Ordering::Acquire));
        Self {
            address: self.address.clone(),
            ejected_until: load(&self.ejected_until),
            consecutive_5xx: load(&self.consecutive_5xx),
            consecutive_gateway: load(&self.consecutive_gateway),
            interval_start: load(&self.interval_start),
            interval: load(&self.interval),
            ejections: load(&self.ejections),
            total_ejections: load(&self.total_ejections),
            last_reason: AtomicU8::new(self.last_reason.load(Ordering::Acquire)),
        }
    }

    /// `ejections` after forgiving one per `base` spent un-ejected since the last one
    /// ended (`until`, nanoseconds), at `now` (nanoseconds).
    fn decayed_ejections(&self, until: u64, base: Duration, now: u64) -> u32 {
        let ejections = u32::try_from(self.ejections.load(Ordering::Acquire)).unwrap_or(u32::MAX);
        if until == 0 {
            return ejections;
        }
        let healthy = now.saturating_sub(until);
        let steps = healthy / duration_nanos(base).max(1);
        ejections.saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX))
    }

    /// Clears the failure counts, starting a fresh interval at `at`.
    fn clear_counts(&self, at: u64) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.interval.store(0, Ordering::Relaxed);
        self.interval_start.store(at, Ordering::Release);
    }
}

/// Sets a counter to zero, without writing (and taking the cache line) when it already
/// is: the common case, a success after a success.
#[inline]
fn reset(counter: &AtomicU64) {
    if counter.load(Ordering::Relaxed) != 0 {
        counter.store(0, Ordering::Relaxed);
    }
}

/// Outlier detection for one upstream's endpoints, indexed `0..n` in the order given.
#[derive(Debug)]
pub struct OutlierDetector {
    settings: Settings,
    origin: Instant,
    endpoints: Box<[Endpoint]>,
    /// The ejection cap: `max_ejected()` slots, each holding the end (nanoseconds after
    /// the origin) of the ejection that occupies it. A slot whose value is in the past is
    /// free.
    slots: Box<[AtomicU64]>,
}

/// `max_ejected()` for `n` endpoints at `pct` percent.
fn max_ejected(n: usize, pct: f64) -> usize {
    if n < 2 || pct.is_nan() || pct <= 0.0 {
        return 0;
    }
    let floor = (n as f64 * pct.min(100.0) / 100.0).floor() as usize;
    floor.clamp(1, n)
}

impl OutlierDetector {
    /// A detector for endpoints with these addresses, none ejected.
    pub fn new<I, S>(config: &OutlierDetectionConfig, addresses: I, now: Instant) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let settings = Settings::from(config);
        let endpoints: Box<[Endpoint]> = addresses
            .into_iter()
            .map(|a| Endpoint::new(a.into(), 0))
            .collect();
        let slots = (0..max_ejected(endpoints.len(), settings.max_ejection_percent))
            .map(|_| AtomicU64::new(0))
            .collect();
        Self {
            settings,
            origin: now,
            endpoints,
            slots,
        }
    }

    /// A detector for a new config and endpoint list that keeps this one's state
    /// (counts, ejections, back-off) for every address in both. Turning detection off
    /// drops all state.
    pub fn rebuild<I, S>(&self, config: &OutlierDetectionConfig, addresses: I, now: Instant) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let settings = Settings::from(config);
        let fresh_start = self.nanos(now);
        let endpoints: Box<[Endpoint]> = addresses
            .into_iter()
            .map(|a| {
                let address = a.into();
                self.endpoints
                    .iter()
                    .find(|e| e.address == address)
                    .filter(|_| settings.enabled)
                    .map_or_else(|| Endpoint::new(address, fresh_start), Endpoint::carried)
            })
            .collect();
        // The carried ejections occupy slots, the latest-ending first: if there are more
        // than the new cap allows, those left without a slot end before any slot frees,
        // so the cap holds again from the first new ejection on.
        let mut ends: Vec<u64> = endpoints
            .iter()
            .map(|e| e.ejected_until.load(Ordering::Acquire))
            .filter(|&until| until > fresh_start)
            .collect();
        ends.sort_unstable_by(|a, b| b.cmp(a));
        let n = max_ejected(endpoints.len(), settings.max_ejection_percent);
        let slots = (0..n)
            .map(|i| AtomicU64::new(ends.get(i).copied().unwrap_or(0)))
            .collect();
        Self {
            settings,
            origin: self.origin,
            endpoints,
            slots,
        }
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are no endpoints.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The index of the endpoint with this address.
    pub fn index_of(&self, address: &str) -> Option<usize> {
        self.endpoints.iter().position(|e| e.address == address)
    }

    /// Whether endpoint `idx` is ejected at `now`. One atomic load; `false` for an
    /// index out of range.
    #[inline]
    pub fn is_ejected(&self, idx: usize, now: Instant) -> bool {
        // The common case, never ejected, is decided by the load alone, without
        // converting `now`.
        match self.endpoints.get(idx) {
            Some(e) => match e.ejected_until.load(Ordering::Acquire) {
                0 => false,
                until => self.nanos(now) < until,
            },
            None => false,
        }
    }

    /// Most endpoints that may be ejected at once (see the module docs).
    pub fn max_ejected(&self) -> usize {
        self.slots.len()
    }

    /// Endpoints ejected at `now`.
    pub fn ejected_count(&self, now: Instant) -> usize {
        let now = self.nanos(now);
        self.endpoints.iter().filter(|e| self.ejected_at(e, now)).count()
    }

    /// Counts an attempt's outcome against endpoint `idx`. Returns the ejection it
    /// caused, if any. Outcomes for an ejected endpoint, an unknown index, or with
    /// detection off are ignored. Lock-free (see the module docs).
    pub fn record(&self, idx: usize, outcome: UpstreamOutcome, now: Instant) -> Option<EjectionEvent> {
        let s = &self.settings;
        if !s.enabled {
            return None;
        }
        let endpoint = self.endpoints.get(idx)?;
        let now_ns = self.nanos(now);
        // The ejection word as judged: an ejection below replaces exactly this value.
        let until = endpoint.ejected_until.load(Ordering::Acquire);
        if until != 0 && now_ns < until {
            return None;
        }

        let (is_5xx, is_gateway) = match outcome {
            UpstreamOutcome::Response(status) => ((500..=599).contains(&status), matches!(status, 502..=504)),
            UpstreamOutcome::ConnectFailure | UpstreamOutcome::Timeout | UpstreamOutcome::Reset => {
                (true, true)
            }
        };

        let mut fired = None;
        if let Some((threshold, minimum, interval)) = s.failure_percentage {
            let start = endpoint.interval_start.load(Ordering::Acquire);
            if now_ns >= start.saturating_add(interval)
                && endpoint
                    .interval_start
                    .compare_exchange(start, now_ns, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                // This thread rolled the interval over: it alone judges the last one.
                let (requests, failures) = unpack_interval(endpoint.interval.swap(0, Ordering::AcqRel));
                let pct = if requests == 0 {
                    0.0
                } else {
                    f64::from(failures) * 100.0 / f64::from(requests)
                };
                if requests >= minimum && pct >= threshold {
                    fired = Some((
                        EjectionReason::FailurePercentage,
                        format!("{pct:.1}% of {requests} requests failed"),
                    ));
                }
            }
            let add = INTERVAL_REQUEST + if is_5xx { INTERVAL_FAILURE } else { 0 };
            endpoint.interval.fetch_add(add, Ordering::Relaxed);
        }

        let run_5xx = if is_5xx {
            endpoint.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            reset(&endpoint.consecutive_5xx);
            0
        };
        let run_gateway = if is_gateway {
            endpoint.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            reset(&endpoint.consecutive_gateway);
            0
        };
        if fired.is_none() {
            if let Some(n) = s.consecutive_5xx.filter(|n| run_5xx >= u64::from(*n)) {
                fired = Some((EjectionReason::Consecutive5xx, format!("{n} consecutive 5xx")));
            } else if let Some(n) = s
                .consecutive_gateway_failure
                .filter(|n| run_gateway >= u64::from(*n))
            {
                fired = Some((
                    EjectionReason::ConsecutiveGatewayFailure,
                    format!("{n} consecutive gateway failures"),
                ));
            }
        }
        let (reason, detail) = fired?;

        let ejections = endpoint
            .decayed_ejections(until, s.base_ejection_time, now_ns)
            .saturating_add(1);
        let duration = s
            .base_ejection_time
            .saturating_mul(ejections)
            .min(s.max_ejection_time);
        let new_until = self.nanos(now + duration).max(1);
        let enforced = match self.claim_slot(now_ns, new_until) {
            Some(slot) => {
                if endpoint
                    .ejected_until
                    .compare_exchange(until, new_until, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    // Another thread ejected this endpoint first and reported it.
                    let _ = slot.compare_exchange(new_until, 0, Ordering::AcqRel, Ordering::Relaxed);
                    return None;
                }
                endpoint.ejections.store(u64::from(ejections), Ordering::Release);
                endpoint.total_ejections.fetch_add(1, Ordering::Relaxed);
                endpoint.last_reason.store(reason.code(), Ordering::Release);
                endpoint.clear_counts(new_until);
                true
            }
            None => false,
        };
        Some(EjectionEvent {
            endpoint: idx,
            address: endpoint.address.clone(),
            reason,
            detail,
            duration,
            enforced,
        })
    }

    /// Takes a free slot of the ejection cap for an ejection ending at `until`: one
    /// whose ejection has ended by `now`. `None` when the cap is reached.
    fn claim_slot(&self, now: u64, until: u64) -> Option<&AtomicU64> {
        self.slots.iter().find(|slot| {
            let mut held = slot.load(Ordering::Acquire);
            while held <= now {
                match slot.compare_exchange_weak(held, until, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return true,
                    Err(actual) => held = actual,
                }
            }
            false
        })
    }

    /// Every endpoint's state, for the admin API.
    pub fn snapshot(&self, now: Instant) -> OutlierSnapshot {
        let now_ns = self.nanos(now);
        let endpoints: Vec<EndpointSnapshot> = self
            .endpoints
            .iter()
            .map(|e| {
                let until = e.ejected_until.load(Ordering::Acquire);
                let ejected = self.ejected_at(e, now_ns);
                let last_reason = EjectionReason::from_code(e.last_reason.load(Ordering::Acquire));
                let (requests, failures) = unpack_interval(e.interval.load(Ordering::Acquire));
                let count = |a: &AtomicU64| u32::try_from(a.load(Ordering::Acquire)).unwrap_or(u32::MAX);
                EndpointSnapshot {
                    address: e.address.clone(),
                    ejected,
                    reason: last_reason.filter(|_| ejected),
                    ejected_remaining_secs: ejected
                        .then(|| Duration::from_nanos(until.saturating_sub(now_ns)).as_secs_f64()),
                    last_reason,
                    ejections: if ejected {
                        count(&e.ejections)
                    } else {
                        e.decayed_ejections(until, self.settings.base_ejection_time, now_ns)
                    },
                    total_ejections: e.total_ejections.load(Ordering::Acquire),
                    consecutive_5xx: count(&e.consecutive_5xx),
                    consecutive_gateway_failures: count(&e.consecutive_gateway),
                    interval_requests: requests,
                    interval_failures: failures,
                }
            })
            .collect();
        OutlierSnapshot {
            enabled: self.settings.enabled,
            ejected: endpoints.iter().filter(|e| e.ejected).count(),
            max_ejected: self.max_ejected(),
            endpoints,
        }
    }

    #[inline]
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    #[inline]
    fn ejected_at(&self, e: &Endpoint, now: u64) -> bool {
        let until = e.ejected_until.load(Ordering::Acquire);
        until != 0 && now < until
    }
}

/// An upstream's outlier state, for the admin API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutlierSnapshot {
    /// Whether detection runs.
    pub enabled: bool,
    /// Endpoints ejected now.
    pub ejected: usize,
    /// Most endpoints that may be ejected at once.
    pub max_ejected: usize,
    /// Every endpoint, in index order.
    pub endpoints: Vec<EndpointSnapshot>,
}

/// One endpoint's outlier state, for the admin API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointSnapshot {
    /// `host:port`.
    pub address: String,
    /// Whether it is ejected now.
    pub ejected: bool,
    /// Why, while ejected.
    pub reason: Option<EjectionReason>,
    /// Seconds of ejection left, while ejected.
    pub ejected_remaining_secs: Option<f64>,
    /// Why it was last ejected, even if it is back.
    pub last_reason: Option<EjectionReason>,
    /// Recent ejections, which multiply the next ejection time.
    pub ejections: u32,
    /// Ejections since the detector was created (or its state carried over).
    pub total_ejections: u64,
    /// 5xx-class failures in a row.
    pub consecutive_5xx: u32,
    /// Gateway failures in a row.
    pub consecutive_gateway_failures: u32,
    /// Requests in the current failure-percentage interval.
    pub interval_requests: u32,
    /// Failures in the current failure-percentage interval.
    pub interval_failures: u32,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use sluice_config::resilience::FailurePercentage;

    use super::*;
    use crate::resilience::{Clock, ManualClock};

    const ERR: UpstreamOutcome = UpstreamOutcome::Response(500);
    const BAD_GATEWAY: UpstreamOutcome = UpstreamOutcome::Response(502);
    const OK: UpstreamOutcome = UpstreamOutcome::Response(200);

    fn config() -> OutlierDetectionConfig {
        OutlierDetectionConfig {
            consecutive_5xx: Some(3),
            consecutive_gateway_failure: None,
            max_ejection_percent: 50.0,
            ..OutlierDetectionConfig::default()
        }
    }

    fn detector(config: &OutlierDetectionConfig, n: usize, clock: &ManualClock) -> OutlierDetector {
        OutlierDetector::new(config, (0..n).map(|i| format!("10.0.0.{i}:80")), clock.now())
    }

    /// Records `outcome` `n` times; returns the last event.
    fn hit(
        d: &OutlierDetector,
        idx: usize,
        outcome: UpstreamOutcome,
        n: usize,
        now: Instant,
    ) -> Option<EjectionEvent> {
        (0..n).fold(None, |last, _| d.record(idx, outcome, now).or(last))
    }

    #[test]
    fn ejects_after_consecutive_5xx() {
        let clock = ManualClock::new();
        let d = detector(&config(), 4, &clock);
        let now = clock.now();
        assert!(hit(&d, 1, ERR, 2, now).is_none());
        assert!(!d.is_ejected(1, now));
        let e = d.record(1, UpstreamOutcome::ConnectFailure, now).unwrap();
        assert_eq!(
            (e.endpoint, e.address.as_str(), e.reason, e.enforced),
            (1, "10.0.0.1:80", EjectionReason::Consecutive5xx, true)
        );
        assert_eq!(e.duration, Duration::from_secs(30));
        assert_eq!(e.detail, "3 consecutive 5xx");
        assert!(d.is_ejected(1, now));
        assert!(!d.is_ejected(0, now));
        assert!(!d.is_ejected(99, now));
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let clock = ManualClock::new();
        let d = detector(&config(), 4, &clock);
        let now = clock.now();
        for _ in 0..5 {
            assert!(hit(&d, 0, ERR, 2, now).is_none());
            assert!(d.record(0, OK, now).is_none());
        }
        assert!(!d.is_ejected(0, now));
    }

    #[test]
    fn gateway_failures_count_502_to_504_and_local_errors() {
        let clock = ManualClock::new();
        let cfg = OutlierDetectionConfig {
            consecutive_5xx: None,
            consecutive_gateway_failure: Some(3),
            ..config()
        };
        let d = detector(&cfg, 2, &clock);
        let now = clock.now();
        // A 500 is not a gateway failure and breaks the run.
        assert!(d.record(0, BAD_GATEWAY, now).is_none());
        assert!(d.record(0, UpstreamOutcome::Timeout, now).is_none());
        assert!(d.record(0, ERR, now).is_none());
        assert!(d.record(0, UpstreamOutcome::Response(504), now).is_none());
        assert!(d.record(0, UpstreamOutcome::Reset, now).is_none());
        let e = d.record(0, UpstreamOutcome::Response(503), now).unwrap();
        assert_eq!(e.reason, EjectionReason::ConsecutiveGatewayFailure);
        assert!(d.is_ejected(0, now));
    }

    #[test]
    fn un_ejects_when_the_ejection_time_has_passed() {
        let clock = ManualClock::new();
        let d = detector(&config(), 2, &clock);
        hit(&d, 0, ERR, 3, clock.now()).unwrap();
        clock.advance(Duration::from_secs(29));
        assert!(d.is_ejected(0, clock.now()));
        // Outcomes of calls still under way are ignored while ejected.
        assert!(hit(&d, 0, ERR, 10, clock.now()).is_none());
        clock.advance(Duration::from_secs(1));
        assert!(!d.is_ejected(0, clock.now()));
        // Back with clean counts.
        assert!(hit(&d, 0, ERR, 2, clock.now()).is_none());
        let snap = d.snapshot(clock.now());
        assert_eq!(snap.endpoints[0].consecutive_5xx, 2);
        assert!(!snap.endpoints[0].ejected);
        assert_eq!(
            snap.endpoints[0].last_reason,
            Some(EjectionReason::Consecutive5xx)
        );
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_and_is_capped() {
        let clock = ManualClock::new();
        let cfg = OutlierDetectionConfig {
            max_ejection_time: Duration::from_secs(100),
            ..config()
        };
        let d = detector(&cfg, 2, &clock);
        let mut seen = Vec::new();
        for _ in 0..5 {
            let e = hit(&d, 0, ERR, 3, clock.now()).unwrap();
            seen.push(e.duration.as_secs());
            // Come back and fail again at once: no time to decay.
            clock.advance(e.duration);
        }
        assert_eq!(seen, [30, 60, 90, 100, 100]);
    }

    #[test]
    fn ejection_multiplier_decays_while_healthy() {
        let clock = ManualClock::new();
        let d = detector(&config(), 2, &clock);
        for _ in 0..3 {
            let e = hit(&d, 0, ERR, 3, clock.now()).unwrap();
            clock.advance(e.duration);
        }
        // Three ejections: the next would be 120s. One base time healthy forgives one.
        assert_eq!(d.snapshot(clock.now()).endpoints[0].ejections, 3);
        clock.advance(Duration::from_secs(30));
        assert_eq!(d.snapshot(clock.now()).endpoints[0].ejections, 2);
        let e = hit(&d, 0, ERR, 3, clock.now()).unwrap();
        assert_eq!(e.duration, Duration::from_secs(90));
        // A long healthy spell forgives everything.
        clock.advance(e.duration + Duration::from_secs(3600));
        let e = hit(&d, 0, ERR, 3, clock.now()).unwrap();
        assert_eq!(e.duration, Duration::from_secs(30));
    }

    #[test]
    fn never_ejects_more_than_max_ejection_percent() {
        let clock = ManualClock::new();
        // 50% of 5 endpoints, rounded down: 2.
        let d = detector(&config(), 5, &clock);
        assert_eq!(d.max_ejected(), 2);
        let now = clock.now();
        assert!(hit(&d, 0, ERR, 3, now).unwrap().enforced);
        assert!(hit(&d, 1, ERR, 3, now).unwrap().enforced);
        let refused = hit(&d, 2, ERR, 3, now).unwrap();
        assert!(!refused.enforced);
        assert!(!d.is_ejected(2, now));
        assert_eq!(d.ejected_count(now), 2);
        // Its counts are kept: once a slot frees up, the next failure ejects it.
        clock.advance(Duration::from_secs(30));
        let e = d.record(2, ERR, clock.now()).unwrap();
        assert!(e.enforced);
        assert!(d.is_ejected(2, clock.now()));
        let snap = d.snapshot(clock.now());
        assert_eq!((snap.ejected, snap.max_ejected), (1, 2));
    }

    #[test]
    fn max_ejected_is_at_least_one_but_never_the_only_endpoint() {
        let clock = ManualClock::new();
        let with = |pct: f64, n: usize| {
            let cfg = OutlierDetectionConfig {
                max_ejection_percent: pct,
                ..config()
            };
            detector(&cfg, n, &clock).max_ejected()
        };
        assert_eq!(with(10.0, 2), 1);
        assert_eq!(with(10.0, 30), 3);
        assert_eq!(with(50.0, 3), 1);
        assert_eq!(with(100.0, 3), 3);
        assert_eq!(with(0.0, 10), 0);
        assert_eq!(with(100.0, 1), 0);
        let d = detector(&config(), 1, &clock);
        assert!(!hit(&d, 0, ERR, 3, clock.now()).unwrap().enforced);
        assert!(!d.is_ejected(0, clock.now()));
    }

    #[test]
    fn failure_percentage_is_judged_per_interval() {
        let clock = ManualClock::new();
        let cfg = OutlierDetectionConfig {
            consecutive_5xx: None,
            failure_percentage: Some(FailurePercentage {
                threshold: 50.0,
                minimum_requests: 10,
                interval: Duration::from_secs(10),
            }),
            ..config()
        };
        let d = detector(&cfg, 3, &clock);
        // Endpoint 0: 60% of 10; endpoint 1: 60% of 5 (too few); endpoint 2: 40% of 10.
        for i in 0..10 {
            d.record(0, if i % 5 < 3 { ERR } else { OK }, clock.now());
            if i < 5 {
                d.record(1, if i < 3 { ERR } else { OK }, clock.now());
            }
            d.record(2, if i % 5 < 2 { ERR } else { OK }, clock.now());
        }
        assert_eq!(d.ejected_count(clock.now()), 0);
        clock.advance(Duration::from_secs(10));
        let e = d.record(0, OK, clock.now()).unwrap();
        assert_eq!(e.reason, EjectionReason::FailurePercentage);
        assert_eq!(e.detail, "60.0% of 10 requests failed");
        assert!(d.record(1, OK, clock.now()).is_none());
        assert!(d.record(2, OK, clock.now()).is_none());
        assert!(d.is_ejected(0, clock.now()));
        // The next interval starts fresh.
        let snap = d.snapshot(clock.now());
        assert_eq!(
            (
                snap.endpoints[2].interval_requests,
                snap.endpoints[2].interval_failures
            ),
            (1, 0)
        );
    }

    #[test]
    fn disabled_detection_ejects_nothing() {
        let clock = ManualClock::new();
        let cfg = OutlierDetectionConfig {
            enabled: false,
            ..config()
        };
        let d = detector(&cfg, 3, &clock);
        assert!(hit(&d, 0, ERR, 100, clock.now()).is_none());
        assert!(!d.is_ejected(0, clock.now()));
    }

    #[test]
    fn rebuild_keeps_state_by_address() {
        let clock = ManualClock::new();
        let d = detector(&config(), 3, &clock);
        hit(&d, 1, ERR, 3, clock.now()).unwrap();
        hit(&d, 2, ERR, 2, clock.now());
        // Endpoint 10.0.0.0 leaves, 10.0.0.9 joins, the others move.
        let next = d.rebuild(
            &config(),
            ["10.0.0.2:80", "10.0.0.9:80", "10.0.0.1:80"],
            clock.now(),
        );
        assert_eq!(next.index_of("10.0.0.1:80"), Some(2));
        assert!(next.is_ejected(2, clock.now()));
        assert!(!next.is_ejected(0, clock.now()));
        // 10.0.0.2 keeps its two failures in a row.
        assert!(next.record(0, ERR, clock.now()).is_some());
        let off = d.rebuild(
            &OutlierDetectionConfig {
                enabled: false,
                ..config()
            },
            ["10.0.0.1:80"],
            clock.now(),
        );
        assert!(!off.is_ejected(0, clock.now()));
    }

    #[test]
    fn absurd_ejection_times_are_bounded_instead_of_overflowing() {
        let clock = ManualClock::new();
        let cfg = OutlierDetectionConfig {
            base_ejection_time: Duration::MAX,
            max_ejection_time: Duration::MAX,
            ..config()
        };
        let d = detector(&cfg, 2, &clock);
        let e = hit(&d, 0, ERR, 3, clock.now()).unwrap();
        assert_eq!(e.duration, crate::resilience::MAX_DURATION);
        assert!(d.is_ejected(0, clock.now()));
    }

    #[test]
    fn snapshot_shows_why_and_until_when() {
        let clock = ManualClock::new();
        let d = detector(&config(), 2, &clock);
        hit(&d, 0, ERR, 3, clock.now()).unwrap();
        clock.advance(Duration::from_secs(10));
        let snap = d.snapshot(clock.now());
        let e = &snap.endpoints[0];
        assert!(e.ejected);
        assert_eq!(e.reason, Some(EjectionReason::Consecutive5xx));
        assert_eq!(e.ejected_remaining_secs, Some(20.0));
        assert_eq!((e.ejections, e.total_ejections), (1, 1));
        let yaml = serde_yaml::to_string(&snap).unwrap();
        assert!(yaml.contains("reason: consecutive_5xx"), "{yaml}");
    }

    #[test]
    fn concurrent_failures_eject_once_per_endpoint_and_respect_the_cap() {
        let clock = ManualClock::new();
        // 50% of 8 endpoints: at most 4 ejected, however the threads interleave.
        let d = std::sync::Arc::new(detector(&config(), 8, &clock));
        let now = clock.now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let d = d.clone();
                std::thread::spawn(move || {
                    let mut enforced = Vec::new();
                    for round in 0..50 {
                        for idx in 0..8 {
                            if let Some(e) = d.record(idx, ERR, now) {
                                if e.enforced {
                                    enforced.push((idx, round));
                                }
                            }
                        }
                    }
                    enforced
                })
            })
            .collect();
        let mut ejected: Vec<usize> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .map(|(idx, _)| idx)
            .collect();
        ejected.sort_unstable();
        let unique = {
            let mut u = ejected.clone();
            u.dedup();
            u
        };
        assert_eq!(ejected, unique, "each endpoint ejected (and reported) once");
        assert_eq!(ejected.len(), 4);
        assert_eq!(d.ejected_count(now), 4);
        assert_eq!(d.snapshot(now).ejected, 4);
    }
}
