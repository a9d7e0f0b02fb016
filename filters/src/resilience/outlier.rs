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
//! State is keyed by endpoint address: [`OutlierDetector::rebuild`] carries it over to a
//! new endpoint list on reload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
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
    /// The reason's name, for metrics labels: `consecutive_5xx`,
    /// `consecutive_gateway_failure`, `failure_percentage`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EjectionReason::Consecutive5xx => "consecutive_5xx",
            EjectionReason::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            EjectionReason::FailurePercentage => "failure_percentage",
        }
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
    /// Threshold (percent), minimum requests, interval.
    failure_percentage: Option<(f64, u32, Duration)>,
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
            failure_percentage: c
                .failure_percentage
                .as_ref()
                .map(|f| (f.threshold, f.minimum_requests.max(1), bounded(f.interval))),
            base_ejection_time: bounded(c.base_ejection_time),
            max_ejection_time: bounded(c.max_ejection_time.max(c.base_ejection_time)),
            max_ejection_percent: c.max_ejection_percent,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct LastEjection {
    reason: EjectionReason,
    until: Instant,
}

#[derive(Debug, Clone)]
struct EndpointState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    interval_start: Instant,
    interval_requests: u32,
    interval_failures: u32,
    /// Recent ejections, before the decay since `last` is applied.
    ejections: u32,
    total_ejections: u64,
    last: Option<LastEjection>,
}

impl EndpointState {
    fn new(now: Instant) -> Self {
        Self {
            consecutive_5xx: 0,
            consecutive_gateway: 0,
            interval_start: now,
            interval_requests: 0,
            interval_failures: 0,
            ejections: 0,
            total_ejections: 0,
            last: None,
        }
    }

    fn clear_counts(&mut self, now: Instant) {
        self.consecutive_5xx = 0;
        self.consecutive_gateway = 0;
        self.interval_start = now;
        self.interval_requests = 0;
        self.interval_failures = 0;
    }

    /// `ejections` after forgiving one per `base` spent un-ejected since the last one.
    fn decayed_ejections(&self, base: Duration, now: Instant) -> u32 {
        let Some(last) = self.last else {
            return self.ejections;
        };
        let healthy = now.saturating_duration_since(last.until).as_nanos();
        let steps = healthy / base.as_nanos().max(1);
        self.ejections
            .saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX))
    }
}

#[derive(Debug)]
struct Endpoint {
    address: String,
    /// Nanoseconds after the detector's origin until which the endpoint is ejected; 0
    /// when it never was.
    ejected_until: AtomicU64,
    state: Mutex<EndpointState>,
}

/// Outlier detection for one upstream's endpoints, indexed `0..n` in the order given.
#[derive(Debug)]
pub struct OutlierDetector {
    settings: Settings,
    origin: Instant,
    endpoints: Box<[Endpoint]>,
    /// Serializes ejection decisions, so two endpoints ejected at once cannot both slip
    /// under the cap.
    eject_lock: Mutex<()>,
}

impl OutlierDetector {
    /// A detector for endpoints with these addresses, none ejected.
    pub fn new<I, S>(config: &OutlierDetectionConfig, addresses: I, now: Instant) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let endpoints = addresses
            .into_iter()
            .map(|a| Endpoint {
                address: a.into(),
                ejected_until: AtomicU64::new(0),
                state: Mutex::new(EndpointState::new(now)),
            })
            .collect();
        Self {
            settings: Settings::from(config),
            origin: now,
            endpoints,
            eject_lock: Mutex::new(()),
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
        let endpoints = addresses
            .into_iter()
            .map(|a| {
                let address = a.into();
                let old = self
                    .endpoints
                    .iter()
                    .find(|e| e.address == address)
                    .filter(|_| settings.enabled);
                let (until, state) = match old {
                    Some(e) => (e.ejected_until.load(Ordering::Acquire), e.state.lock().clone()),
                    None => (0, EndpointState::new(now)),
                };
                Endpoint {
                    address,
                    ejected_until: AtomicU64::new(until),
                    state: Mutex::new(state),
                }
            })
            .collect();
        Self {
            settings,
            origin: self.origin,
            endpoints,
            eject_lock: Mutex::new(()),
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
        match self.endpoints.get(idx) {
            Some(e) => self.ejected_at(e, now),
            None => false,
        }
    }

    /// Most endpoints that may be ejected at once (see the module docs).
    pub fn max_ejected(&self) -> usize {
        let n = self.endpoints.len();
        let pct = self.settings.max_ejection_percent;
        if n < 2 || pct.is_nan() || pct <= 0.0 {
            return 0;
        }
        let floor = (n as f64 * pct.min(100.0) / 100.0).floor() as usize;
        floor.clamp(1, n)
    }

    /// Endpoints ejected at `now`.
    pub fn ejected_count(&self, now: Instant) -> usize {
        self.endpoints.iter().filter(|e| self.ejected_at(e, now)).count()
    }

    /// Counts an attempt's outcome against endpoint `idx`. Returns the ejection it
    /// caused, if any. Outcomes for an ejected endpoint, an unknown index, or with
    /// detection off are ignored.
    pub fn record(&self, idx: usize, outcome: UpstreamOutcome, now: Instant) -> Option<EjectionEvent> {
        let s = &self.settings;
        if !s.enabled {
            return None;
        }
        let endpoint = self.endpoints.get(idx)?;
        if self.ejected_at(endpoint, now) {
            return None;
        }
        let mut st = endpoint.state.lock();

        let mut fired = None;
        if let Some((threshold, minimum, interval)) = s.failure_percentage {
            if now >= st.interval_start + interval {
                let (requests, failures) = (st.interval_requests, st.interval_failures);
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
                st.interval_start = now;
                st.interval_requests = 0;
                st.interval_failures = 0;
            }
        }

        let (is_5xx, is_gateway) = match outcome {
            UpstreamOutcome::Response(status) => ((500..=599).contains(&status), matches!(status, 502..=504)),
            UpstreamOutcome::ConnectFailure | UpstreamOutcome::Timeout | UpstreamOutcome::Reset => {
                (true, true)
            }
        };
        st.interval_requests = st.interval_requests.saturating_add(1);
        st.interval_failures += u32::from(is_5xx);
        st.consecutive_5xx = if is_5xx {
            st.consecutive_5xx.saturating_add(1)
        } else {
            0
        };
        st.consecutive_gateway = if is_gateway {
            st.consecutive_gateway.saturating_add(1)
        } else {
            0
        };
        if fired.is_none() {
            if let Some(n) = s.consecutive_5xx.filter(|n| st.consecutive_5xx >= *n) {
                fired = Some((EjectionReason::Consecutive5xx, format!("{n} consecutive 5xx")));
            } else if let Some(n) = s
                .consecutive_gateway_failure
                .filter(|n| st.consecutive_gateway >= *n)
            {
                fired = Some((
                    EjectionReason::ConsecutiveGatewayFailure,
                    format!("{n} consecutive gateway failures"),
                ));
            }
        }
        let (reason, detail) = fired?;

        let ejections = st.decayed_ejections(s.base_ejection_time, now).saturating_add(1);
        let duration = s
            .base_ejection_time
            .saturating_mul(ejections)
            .min(s.max_ejection_time);
        let _guard = self.eject_lock.lock();
        let enforced = self.ejected_count(now) < self.max_ejected();
        if enforced {
            let until = now + duration;
            endpoint
                .ejected_until
                .store(self.nanos(until).max(1), Ordering::Release);
            st.ejections = ejections;
            st.total_ejections += 1;
            st.last = Some(LastEjection { reason, until });
            st.clear_counts(until);
        }
        Some(EjectionEvent {
            endpoint: idx,
            address: endpoint.address.clone(),
            reason,
            detail,
            duration,
            enforced,
        })
    }

    /// Every endpoint's state, for the admin API.
    pub fn snapshot(&self, now: Instant) -> OutlierSnapshot {
        let endpoints: Vec<EndpointSnapshot> = self
            .endpoints
            .iter()
            .map(|e| {
                let st = e.state.lock();
                let ejected = self.ejected_at(e, now);
                EndpointSnapshot {
                    address: e.address.clone(),
                    ejected,
                    reason: st.last.filter(|_| ejected).map(|l| l.reason),
                    ejected_remaining_secs: st
                        .last
                        .filter(|_| ejected)
                        .map(|l| l.until.saturating_duration_since(now).as_secs_f64()),
                    last_reason: st.last.map(|l| l.reason),
                    ejections: if ejected {
                        st.ejections
                    } else {
                        st.decayed_ejections(self.settings.base_ejection_time, now)
                    },
                    total_ejections: st.total_ejections,
                    consecutive_5xx: st.consecutive_5xx,
                    consecutive_gateway_failures: st.consecutive_gateway,
                    interval_requests: st.interval_requests,
                    interval_failures: st.interval_failures,
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
    fn ejected_at(&self, e: &Endpoint, now: Instant) -> bool {
        let until = e.ejected_until.load(Ordering::Acquire);
        until != 0 && self.nanos(now) < until
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
        (0..n).filter_map(|_| d.record(idx, outcome, now)).last()
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
}
