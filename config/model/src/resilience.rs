//! Resilience settings: circuit breakers (per route and upstream), passive outlier
//! detection (per endpoint), retries and active health checks.
//!
//! This module owns the user-facing shape of these settings and their semantic checks
//! (`validate`, which names the field path of every problem). It does not own the state
//! machines that apply them: those are the pure cores in `sluice_core::resilience`.
//!
//! Durations are written the humantime way: `200ms`, `5s`, `1m 30s`. Status codes and
//! ranges are written as `503`, `"503"` or `"500-599"` (see [`StatusRange`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ConfigError;

// ---------------------------------------------------------------------------------------
// Status ranges
// ---------------------------------------------------------------------------------------

/// An inclusive range of HTTP status codes, such as `500-599`, or a single code (`503`).
///
/// Written in config as a string (`"503"`, `"500-599"`) or an integer (`503`). Both ends
/// must lie in `100..=599` and the low end may not exceed the high end; a value that
/// breaks either rule is rejected when the config is parsed, with a message naming it.
/// Always serialized as a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusRange {
    lo: u16,
    hi: u16,
}

impl StatusRange {
    /// Every 5xx status: `500-599`.
    pub const SERVER_ERRORS: StatusRange = StatusRange { lo: 500, hi: 599 };
    /// Every 2xx and 3xx status: `200-399`.
    pub const SUCCESS_AND_REDIRECTS: StatusRange = StatusRange { lo: 200, hi: 399 };

    /// The range `lo..=hi`. Fails, with a message, when either end is outside
    /// `100..=599` or `lo > hi`.
    pub fn new(lo: u16, hi: u16) -> Result<Self, String> {
        for code in [lo, hi] {
            if !(100..=599).contains(&code) {
                return Err(format!("status {code} is outside 100..=599"));
            }
        }
        if lo > hi {
            return Err(format!("range {lo}-{hi} is empty: {lo} is above {hi}"));
        }
        Ok(Self { lo, hi })
    }

    /// The range holding exactly `code`. Fails when `code` is outside `100..=599`.
    pub fn single(code: u16) -> Result<Self, String> {
        Self::new(code, code)
    }

    /// The lowest status in the range.
    pub fn lo(&self) -> u16 {
        self.lo
    }

    /// The highest status in the range.
    pub fn hi(&self) -> u16 {
        self.hi
    }

    /// Whether `status` is in the range.
    #[inline]
    pub fn contains(&self, status: u16) -> bool {
        self.lo <= status && status <= self.hi
    }

    /// Whether any range in `ranges` contains `status`.
    #[inline]
    pub fn any_contains(ranges: &[StatusRange], status: u16) -> bool {
        ranges.iter().any(|r| r.contains(status))
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl FromStr for StatusRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| format!("invalid status range {s:?}: {why}");
        let parse = |part: &str| {
            part.trim()
                .parse::<u16>()
                .map_err(|_| bad(format!("{:?} is not a status code", part.trim())))
        };
        let range = match s.split_once('-') {
            Some((lo, hi)) => Self::new(parse(lo)?, parse(hi)?),
            None => Self::single(parse(s)?),
        };
        range.map_err(bad)
    }
}

impl Serialize for StatusRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = StatusRange;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status code such as 503 or a range such as \"500-599\"")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StatusRange, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StatusRange, E> {
                u16::try_from(v)
                    .map_err(|_| format!("invalid status range {v}: status {v} is outside 100..=599"))
                    .and_then(|c| {
                        StatusRange::single(c).map_err(|why| format!("invalid status range {v}: {why}"))
                    })
                    .map_err(E::custom)
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StatusRange, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!(
                        "invalid status range {v}: status {v} is outside 100..=599"
                    ))),
                }
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

// ---------------------------------------------------------------------------------------
// Circuit breaker
// ---------------------------------------------------------------------------------------

/// A circuit breaker for one route and its upstream (Resilience4j's model, with an
/// exponential open time and a half-open trial that cannot get stuck).
///
/// While **closed**, outcomes go into a sliding `window`. Once the window holds at least
/// `minimum_calls` calls and the failure rate reaches `failure_rate_threshold` (or the
/// slow-call rate reaches `slow_call_rate_threshold`), the breaker **opens**; it also
/// opens after `consecutive_failures` failures in a row, whatever the window holds.
/// While open, requests get `response` (or go to `fallback_upstream`). After the open
/// time the breaker turns **half-open** and lets `half_open_permitted_calls` probes
/// through: if their failure (or slow-call) rate stays below the thresholds it closes
/// with a fresh window, otherwise it opens again for longer. The trial ends as soon as
/// its result is certain (two failed probes of three at a 50 % threshold reopen at once).
///
/// ```yaml
/// circuit_breaker:
///   window: {time: 60s}          # or {count: 100}
///   minimum_calls: 20
///   failure_rate_threshold: 50
///   consecutive_failures: 10
///   open_duration: 5s
///   max_open_duration: 5m
///   failure_on: {statuses: ["500-599", 429]}
///   response: {status: 503, body: '{"error":"circuit_open"}'}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// The sliding window outcomes are counted over. Default: `{count: 100}`.
    pub window: WindowConfig,
    /// Calls the window must hold before the failure and slow-call rates can open the
    /// breaker. Default: `20`.
    pub minimum_calls: u32,
    /// Failure rate, in percent, at or above which the breaker opens. `(0, 100]`.
    /// Default: `50`.
    pub failure_rate_threshold: f64,
    /// Slow-call rate, in percent, at or above which the breaker opens. `(0, 100]`.
    /// Default: `100` (opens only when every call in the window was slow).
    pub slow_call_rate_threshold: f64,
    /// A call that takes longer than this is slow. Default: `5s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub slow_call_duration: Duration,
    /// Open after this many failures in a row, regardless of `minimum_calls` and the
    /// window (APISIX's `unhealthy.failures`). Default: none (off).
    pub consecutive_failures: Option<u32>,
    /// How long the breaker stays open after its first trip. Each further trip without
    /// a recovery in between multiplies it by `backoff_multiplier`. Default: `5s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub open_duration: Duration,
    /// The longest the breaker stays open, jitter included. Default: `300s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub max_open_duration: Duration,
    /// Growth of the open time per consecutive trip: `5s, 10s, 20s …` with `2`. At least
    /// `1`. Default: `2.0`.
    pub backoff_multiplier: f64,
    /// Random spread of each open time, as a fraction: `0.1` gives ±10 %, so breakers
    /// that tripped together do not probe together. `[0, 1)`. Default: `0.1`.
    pub jitter: f64,
    /// Probe calls let through while half-open. Further calls are rejected until the
    /// trial ends. Default: `5`.
    pub half_open_permitted_calls: u32,
    /// The longest a half-open trial may take. When it runs out, the trial is judged on
    /// the probes that completed; if none did, the outstanding probes are written off and
    /// a new set is let through, so the breaker never stays half-open. Default: `30s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub half_open_max_duration: Duration,
    /// What counts as a failure. Default: see [`FailureConditions`].
    pub failure_on: FailureConditions,
    /// The response sent while the breaker is open and no fallback is set. Default: none,
    /// which means the default [`ShortCircuitResponse`] (`503`,
    /// `{"error":"circuit_open"}`).
    pub response: Option<ShortCircuitResponse>,
    /// Upstream id that requests go to while the breaker is open, instead of getting
    /// `response`. Default: none.
    pub fallback_upstream: Option<String>,
    /// Whether the breaker acts at all. `false` lets every call through and records
    /// nothing (the `disabled` state). Default: `true`.
    pub enabled: bool,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: WindowConfig::default(),
            minimum_calls: 20,
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: Duration::from_secs(5),
            consecutive_failures: None,
            open_duration: Duration::from_secs(5),
            max_open_duration: Duration::from_secs(300),
            backoff_multiplier: 2.0,
            jitter: 0.1,
            half_open_permitted_calls: 5,
            half_open_max_duration: Duration::from_secs(30),
            failure_on: FailureConditions::default(),
            response: None,
            fallback_upstream: None,
            enabled: true,
        }
    }
}

impl BreakerConfig {
    /// Largest count window: outcomes are kept one byte each.
    pub const MAX_COUNT_WINDOW: u32 = 100_000;
    /// Longest time window: outcomes are kept in one-second buckets.
    pub const MAX_TIME_WINDOW: Duration = Duration::from_secs(3600);

    /// Pushes a [`ConfigError`] for every semantic error, with paths under `path`
    /// (e.g. `routes[0].circuit_breaker`). Does not check that `fallback_upstream` names
    /// an existing upstream: the caller knows the upstreams.
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut err = |field: &str, msg: String| errors.push(ConfigError::at(format!("{path}.{field}"), msg));
        match self.window {
            WindowConfig::Count(n) => {
                if n == 0 || n > Self::MAX_COUNT_WINDOW {
                    err(
                        "window.count",
                        format!("must be in 1..={}", Self::MAX_COUNT_WINDOW),
                    );
                } else if self.minimum_calls > n {
                    err(
                        "minimum_calls",
                        format!(
                            "{} exceeds the window of {n} calls, so the rates could never open the breaker",
                            self.minimum_calls
                        ),
                    );
                }
            }
            WindowConfig::Time(d) => {
                if d < Duration::from_secs(1) || d > Self::MAX_TIME_WINDOW {
                    err("window.time", "must be between 1s and 1h".into());
                } else if d.subsec_nanos() != 0 {
                    err(
                        "window.time",
                        "must be a whole number of seconds (the window is kept in one-second buckets)".into(),
                    );
                }
            }
        }
        if self.minimum_calls == 0 {
            err("minimum_calls", "must be at least 1".into());
        }
        percent_in_range(self.failure_rate_threshold, "failure_rate_threshold", &mut err);
        percent_in_range(
            self.slow_call_rate_threshold,
            "slow_call_rate_threshold",
            &mut err,
        );
        if self.slow_call_duration.is_zero() {
            err("slow_call_duration", "must be above 0".into());
        }
        if self.consecutive_failures == Some(0) {
            err(
                "consecutive_failures",
                "must be at least 1 (leave it out to turn it off)".into(),
            );
        }
        if self.open_duration.is_zero() {
            err("open_duration", "must be above 0".into());
        }
        if self.max_open_duration < self.open_duration {
            err(
                "max_open_duration",
                format!(
                    "must be at least open_duration ({})",
                    humantime::format_duration(self.open_duration)
                ),
            );
        }
        if !(self.backoff_multiplier.is_finite() && self.backoff_multiplier >= 1.0) {
            err("backoff_multiplier", "must be a number of at least 1".into());
        }
        if !(self.jitter.is_finite() && (0.0..1.0).contains(&self.jitter)) {
            err("jitter", "must be in [0, 1)".into());
        }
        if self.half_open_permitted_calls == 0 {
            err("half_open_permitted_calls", "must be at least 1".into());
        }
        if self.half_open_max_duration.is_zero() {
            err("half_open_max_duration", "must be above 0".into());
        }
        if let Some(r) = &self.response {
            r.validate(&format!("{path}.response"), errors);
        }
    }

    /// The response to send while open: `response`, or the default one.
    pub fn short_circuit_response(&self) -> ShortCircuitResponse {
        self.response.clone().unwrap_or_default()
    }
}

/// Pushes an error unless `value` is in `(0, 100]`.
fn percent_in_range(value: f64, field: &str, err: &mut impl FnMut(&str, String)) {
    if !(value > 0.0 && value <= 100.0) {
        err(field, "must be in (0, 100]".into());
    }
}

/// The sliding window a breaker counts outcomes over. Written as a single-key map:
/// `{count: 100}` (the last 100 calls) or `{time: 60s}` (the calls of the last 60
/// seconds, kept in one-second buckets, so a whole number of seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum WindowConfig {
    /// The last this many calls, `1..=100000`.
    Count(u32),
    /// The calls of the last this long, `1s..=1h`, whole seconds.
    Time(
        #[schemars(with = "crate::schema::DurationText")]
        #[serde(with = "humantime_serde")]
        Duration,
    ),
}

impl Default for WindowConfig {
    /// `{count: 100}`.
    fn default() -> Self {
        WindowConfig::Count(100)
    }
}

/// What counts as a failed call, for a breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FailureConditions {
    /// Response statuses that are failures, as codes or ranges: `[502, "500-599"]`.
    /// Default: `["500-599"]`.
    pub statuses: Vec<StatusRange>,
    /// A failed connection to the upstream is a failure. Default: `true`.
    pub connect_error: bool,
    /// A timed-out call is a failure. Default: `true`.
    pub timeout: bool,
    /// A connection reset, or a response cut short, is a failure. Default: `true`.
    pub reset: bool,
}

impl Default for FailureConditions {
    fn default() -> Self {
        Self {
            statuses: vec![StatusRange::SERVER_ERRORS],
            connect_error: true,
            timeout: true,
            reset: true,
        }
    }
}

impl FailureConditions {
    /// Whether a response with `status` is a failure.
    #[inline]
    pub fn is_failure_status(&self, status: u16) -> bool {
        StatusRange::any_contains(&self.statuses, status)
    }
}

/// The response a breaker sends while open (APISIX's `break_response_*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ShortCircuitResponse {
    /// Status code, `200..=599`. Default: `503`.
    pub status: u16,
    /// Response headers. The gateway adds `retry-after` (seconds until the breaker may
    /// let a probe through) unless set here, and `x-sluice-breaker`. Default: none, and
    /// with the default response, `content-type: application/json`.
    pub headers: BTreeMap<String, String>,
    /// Response body. Default: `{"error":"circuit_open"}`.
    pub body: String,
}

impl Default for ShortCircuitResponse {
    fn default() -> Self {
        Self {
            status: 503,
            headers: BTreeMap::new(),
            body: r#"{"error":"circuit_open"}"#.into(),
        }
    }
}

impl ShortCircuitResponse {
    /// Pushes a [`ConfigError`] for every semantic error, with paths under `path`.
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if !(200..=599).contains(&self.status) {
            errors.push(ConfigError::at(format!("{path}.status"), "must be in 200..=599"));
        }
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                errors.push(ConfigError::at(
                    format!("{path}.headers"),
                    format!("invalid header name {name:?}"),
                ));
            }
            if http::HeaderValue::from_str(value).is_err() {
                errors.push(ConfigError::at(
                    format!("{path}.headers.{name}"),
                    format!("invalid header value {value:?}"),
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Outlier detection
// ---------------------------------------------------------------------------------------

/// Passive health for an upstream's endpoints (Envoy's outlier detection): an endpoint
/// that keeps failing is ejected from load balancing for a while, without waiting for
/// active health checks.
///
/// An endpoint is ejected for `base_ejection_time × n`, where `n` counts its recent
/// ejections, capped at `max_ejection_time`; `n` goes down by one for every
/// `base_ejection_time` it then stays healthy. At most `max_ejection_percent` of the
/// endpoints are ejected at once. Set a detector to `null` (`consecutive_5xx: null`) to
/// turn it off.
///
/// ```yaml
/// outlier_detection:
///   consecutive_5xx: 5
///   consecutive_gateway_failure: null
///   failure_percentage: {threshold: 85, minimum_requests: 20, interval: 10s}
///   base_ejection_time: 30s
///   max_ejection_percent: 50
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierDetectionConfig {
    /// Eject after this many 5xx responses (or connect failures, timeouts and resets) in
    /// a row. `null` turns it off. Default: `5`.
    pub consecutive_5xx: Option<u32>,
    /// Eject after this many 502, 503 or 504 responses (or connect failures, timeouts
    /// and resets) in a row. `null` turns it off. Default: `5`.
    pub consecutive_gateway_failure: Option<u32>,
    /// Eject an endpoint whose failure percentage over an interval is too high.
    /// Default: none (off).
    pub failure_percentage: Option<FailurePercentage>,
    /// Ejection time for a first ejection; also the healthy time that forgives one past
    /// ejection. Default: `30s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub base_ejection_time: Duration,
    /// The longest ejection. Default: `300s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub max_ejection_time: Duration,
    /// Most endpoints that may be ejected at once, in percent of the endpoints, rounded
    /// down, but at least one when above 0 and the upstream has two or more endpoints.
    /// The only endpoint of an upstream is never ejected. `[0, 100]`. Default: `50`.
    pub max_ejection_percent: f64,
    /// Whether outlier detection runs. Default: `true`.
    pub enabled: bool,
}

impl Default for OutlierDetectionConfig {
    fn default() -> Self {
        Self {
            consecutive_5xx: Some(5),
            consecutive_gateway_failure: Some(5),
            failure_percentage: None,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50.0,
            enabled: true,
        }
    }
}

impl OutlierDetectionConfig {
    /// Pushes a [`ConfigError`] for every semantic error, with paths under `path`
    /// (e.g. `upstreams[1].outlier_detection`).
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut err = |field: &str, msg: String| errors.push(ConfigError::at(format!("{path}.{field}"), msg));
        for (field, value) in [
            ("consecutive_5xx", self.consecutive_5xx),
            ("consecutive_gateway_failure", self.consecutive_gateway_failure),
        ] {
            if value == Some(0) {
                err(field, "must be at least 1 (use null to turn it off)".into());
            }
        }
        if let Some(fp) = &self.failure_percentage {
            percent_in_range(fp.threshold, "failure_percentage.threshold", &mut err);
            if fp.minimum_requests == 0 {
                err("failure_percentage.minimum_requests", "must be at least 1".into());
            }
            if fp.interval.is_zero() {
                err("failure_percentage.interval", "must be above 0".into());
            }
        }
        if self.base_ejection_time.is_zero() {
            err("base_ejection_time", "must be above 0".into());
        }
        if self.max_ejection_time < self.base_ejection_time {
            err(
                "max_ejection_time",
                format!(
                    "must be at least base_ejection_time ({})",
                    humantime::format_duration(self.base_ejection_time)
                ),
            );
        }
        if !(self.max_ejection_percent.is_finite() && (0.0..=100.0).contains(&self.max_ejection_percent)) {
            err("max_ejection_percent", "must be in [0, 100]".into());
        }
    }
}

/// Failure-percentage ejection: at the end of each interval, an endpoint that served at
/// least `minimum_requests` requests in it, of which at least `threshold` percent
/// failed, is ejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FailurePercentage {
    /// Failure percentage at or above which an endpoint is ejected. `(0, 100]`.
    /// Default: `85`.
    pub threshold: f64,
    /// Requests an endpoint must serve in an interval to be judged. Default: `20`.
    pub minimum_requests: u32,
    /// Length of an interval. Default: `10s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for FailurePercentage {
    fn default() -> Self {
        Self {
            threshold: 85.0,
            minimum_requests: 20,
            interval: Duration::from_secs(10),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------

/// Retries of a failed upstream attempt, on another endpoint when there is one.
///
/// ```yaml
/// retries:
///   attempts: 2
///   on: [connect_failure, gateway_error, reset]
///   statuses: [429]
///   per_try_timeout: 2s
///   budget: {percent: 20, min_concurrent: 3}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retries after the first try, so `2` means up to three tries; `0` turns retries
    /// off. At most `10`. Default: `2`.
    pub attempts: u32,
    /// Failures that are retried. Default: `[connect_failure, gateway_error, reset]`.
    pub on: Vec<RetryOn>,
    /// Further response statuses that are retried, as codes or ranges: `[429]`.
    /// Default: none.
    pub statuses: Vec<StatusRange>,
    /// Retry only idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE). A connect
    /// failure is retried whatever the method, since the request was never sent.
    /// Default: `true`.
    pub idempotent_only: bool,
    /// Timeout for each try: it caps that try's connect, read (time to the response and
    /// between bytes) and write timeouts, on top of the route's timeouts. Default: none.
    #[schemars(with = "Option<crate::schema::DurationText>")]
    #[serde(with = "humantime_serde")]
    pub per_try_timeout: Option<Duration>,
    /// Caps the retries in flight for the upstream. Default: see [`RetryBudgetConfig`].
    pub budget: RetryBudgetConfig,
    /// A request body larger than this many bytes is never replayed, so such a request
    /// is retried only after a connect failure. Default: `65536` (64 KiB).
    pub max_buffered_body: u64,
    /// Base wait before a retry. It doubles with each retry up to ten times this
    /// (Envoy's rule), and each wait is drawn at random from its upper half.
    /// Default: `25ms` (so at most `250ms`).
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 2,
            on: vec![RetryOn::ConnectFailure, RetryOn::GatewayError, RetryOn::Reset],
            statuses: Vec::new(),
            idempotent_only: true,
            per_try_timeout: None,
            budget: RetryBudgetConfig::default(),
            max_buffered_body: 64 * 1024,
            backoff: Duration::from_millis(25),
        }
    }
}

impl RetryConfig {
    /// Most retries a request may have.
    pub const MAX_ATTEMPTS: u32 = 10;

    /// The longest wait between two tries: ten times `backoff`.
    pub fn max_backoff(&self) -> Duration {
        self.backoff.saturating_mul(10)
    }

    /// Pushes a [`ConfigError`] for every semantic error, with paths under `path`
    /// (e.g. `upstreams[1].retries`).
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut err = |field: &str, msg: String| errors.push(ConfigError::at(format!("{path}.{field}"), msg));
        if self.attempts > Self::MAX_ATTEMPTS {
            err("attempts", format!("must be at most {}", Self::MAX_ATTEMPTS));
        }
        if self.per_try_timeout.is_some_and(|d| d.is_zero()) {
            err("per_try_timeout", "must be above 0".into());
        }
        let b = &self.budget;
        if !(b.percent.is_finite() && (0.0..=100.0).contains(&b.percent)) {
            err("budget.percent", "must be in [0, 100]".into());
        }
        if self.backoff > Duration::from_secs(10) {
            err("backoff", "must be at most 10s".into());
        }
    }
}

/// A failure that may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// The connection to the endpoint could not be made (the request was not sent).
    ConnectFailure,
    /// Any 500–599 response.
    #[serde(rename = "5xx")]
    Status5xx,
    /// A 502, 503 or 504 response.
    GatewayError,
    /// The connection was reset, or closed before a complete response.
    Reset,
    /// The try timed out (`per_try_timeout` or a read timeout).
    Timeout,
}

/// A retry budget: the retries in flight for an upstream may not exceed `percent` of its
/// requests in flight, or `min_concurrent`, whichever is larger (Envoy's `retry_budget`).
/// It keeps retries from multiplying the load on an upstream that is already failing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetConfig {
    /// Retries in flight allowed, in percent of requests in flight. `[0, 100]`.
    /// Default: `20`.
    pub percent: f64,
    /// Retries in flight always allowed, however few requests there are. Default: `3`.
    pub min_concurrent: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            percent: 20.0,
            min_concurrent: 3,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Active health checks
// ---------------------------------------------------------------------------------------

/// Active health checks: each endpoint is probed every `interval`. An endpoint turns
/// unhealthy after `unhealthy_threshold` failed checks in a row and healthy again after
/// `healthy_threshold` passed checks in a row.
///
/// ```yaml
/// health_check:
///   kind: {http: {path: /health, expected_statuses: [200]}}   # or `kind: tcp`
///   interval: 5s
///   timeout: 1s
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// How to check. Default: `http` with its defaults (`GET /healthz`, expecting
    /// 200–399).
    pub kind: HealthCheckKind,
    /// Time between two checks of an endpoint. Default: `5s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A check that takes longer than this fails. Must be below `interval`.
    /// Default: `1s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Passed checks in a row that make an unhealthy endpoint healthy. Default: `2`.
    pub healthy_threshold: u32,
    /// Failed checks in a row that make a healthy endpoint unhealthy. Default: `3`.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            kind: HealthCheckKind::default(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

impl HealthCheckConfig {
    /// Pushes a [`ConfigError`] for every semantic error, with paths under `path`
    /// (e.g. `upstreams[1].health_check`).
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut err = |field: &str, msg: String| errors.push(ConfigError::at(format!("{path}.{field}"), msg));
        if self.interval < Duration::from_millis(100) {
            err("interval", "must be at least 100ms".into());
        }
        if self.timeout.is_zero() {
            err("timeout", "must be above 0".into());
        } else if self.timeout >= self.interval {
            err(
                "timeout",
                format!(
                    "must be below interval ({})",
                    humantime::format_duration(self.interval)
                ),
            );
        }
        if self.healthy_threshold == 0 {
            err("healthy_threshold", "must be at least 1".into());
        }
        if self.unhealthy_threshold == 0 {
            err("unhealthy_threshold", "must be at least 1".into());
        }
        if let HealthCheckKind::Http(h) = &self.kind {
            if !h.path.starts_with('/') {
                err("kind.http.path", format!("must start with '/': {:?}", h.path));
            } else if http::uri::PathAndQuery::from_str(&h.path).is_err() {
                err("kind.http.path", format!("invalid path {:?}", h.path));
            }
            if h.expected_statuses.is_empty() {
                err("kind.http.expected_statuses", "must not be empty".into());
            }
            if let Some(host) = &h.host {
                if http::HeaderValue::from_str(host).is_err() || host.is_empty() {
                    err("kind.http.host", format!("invalid host {host:?}"));
                }
            }
        }
    }
}

/// How an endpoint is checked. Written as `tcp`, `http` (all defaults), or a single-key
/// map such as `{http: {path: /health}}`.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthCheckKind {
    /// An HTTP GET; the check passes on an expected status (and body).
    Http(HttpHealthCheck),
    /// A TCP connect; the check passes when the connection is made.
    Tcp,
}

impl Default for HealthCheckKind {
    /// `http` with [`HttpHealthCheck`]'s defaults.
    fn default() -> Self {
        HealthCheckKind::Http(HttpHealthCheck::default())
    }
}

impl Serialize for HealthCheckKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            HealthCheckKind::Tcp => serializer.serialize_str("tcp"),
            HealthCheckKind::Http(h) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("http", h)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for HealthCheckKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const VARIANTS: &[&str] = &["http", "tcp"];

        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = HealthCheckKind;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`tcp`, `http` or a map such as `{http: {path: /health}}`")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HealthCheckKind, E> {
                match v {
                    "tcp" => Ok(HealthCheckKind::Tcp),
                    "http" => Ok(HealthCheckKind::default()),
                    other => Err(E::unknown_variant(other, VARIANTS)),
                }
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<HealthCheckKind, A::Error> {
                use serde::de::Error;
                let Some(key) = map.next_key::<String>()? else {
                    return Err(A::Error::invalid_length(
                        0,
                        &"a map with one key, `http` or `tcp`",
                    ));
                };
                let kind = match key.as_str() {
                    "http" => HealthCheckKind::Http(
                        map.next_value::<Option<HttpHealthCheck>>()?.unwrap_or_default(),
                    ),
                    "tcp" => {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        HealthCheckKind::Tcp
                    }
                    other => return Err(A::Error::unknown_variant(other, VARIANTS)),
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(A::Error::invalid_length(
                        2,
                        &"a map with one key, `http` or `tcp`",
                    ));
                }
                Ok(kind)
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

/// An HTTP health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpHealthCheck {
    /// Path (and query) requested with GET. Default: `/healthz`.
    pub path: String,
    /// Statuses that pass, as codes or ranges. Default: `["200-399"]`.
    pub expected_statuses: Vec<StatusRange>,
    /// When set, the check passes only if the response body contains this text (the
    /// first 64 KiB are read). Default: none.
    pub body_contains: Option<String>,
    /// `Host` header sent. Default: none (the endpoint's address).
    pub host: Option<String>,
}

impl Default for HttpHealthCheck {
    fn default() -> Self {
        Self {
            path: "/healthz".into(),
            expected_statuses: vec![StatusRange::SUCCESS_AND_REDIRECTS],
            body_contains: None,
            host: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
        // Config documents are read into a JSON value first (see `validate::parse_value`);
        // go the same way so these tests see what users see.
        let value: serde_json::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        serde_path_to_error::deserialize(value).map_err(|e| format!("{}: {}", e.path(), e.inner()))
    }

    fn errors_of(validate: impl FnOnce(&mut Vec<ConfigError>)) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        validate(&mut errors);
        errors
    }

    #[test]
    fn empty_breaker_map_takes_every_default() {
        let b: BreakerConfig = yaml("{}").unwrap();
        assert_eq!(b, BreakerConfig::default());
        assert_eq!(b.window, WindowConfig::Count(100));
        assert_eq!(b.minimum_calls, 20);
        assert_eq!(b.open_duration, Duration::from_secs(5));
        assert_eq!(b.max_open_duration, Duration::from_secs(300));
        assert_eq!(b.half_open_max_duration, Duration::from_secs(30));
        assert_eq!(b.failure_on.statuses, vec![StatusRange::SERVER_ERRORS]);
        assert!(b.enabled);
        assert!(errors_of(|e| b.validate("b", e)).is_empty());
    }

    #[test]
    fn breaker_reads_every_field() {
        let b: BreakerConfig = yaml(
            r#"
window: {time: 60s}
minimum_calls: 10
failure_rate_threshold: 40
slow_call_rate_threshold: 80.5
slow_call_duration: 200ms
consecutive_failures: 7
open_duration: 2s
max_open_duration: 1m
backoff_multiplier: 1.5
jitter: 0
half_open_permitted_calls: 3
half_open_max_duration: 10s
failure_on: {statuses: [502, "503", "520-599"], connect_error: false, timeout: true, reset: false}
response: {status: 429, headers: {retry-after: "5", content-type: text/plain}, body: busy}
fallback_upstream: static
enabled: false
"#,
        )
        .unwrap();
        assert_eq!(b.window, WindowConfig::Time(Duration::from_secs(60)));
        assert_eq!(b.failure_rate_threshold, 40.0);
        assert_eq!(b.slow_call_rate_threshold, 80.5);
        assert_eq!(b.slow_call_duration, Duration::from_millis(200));
        assert_eq!(b.consecutive_failures, Some(7));
        assert_eq!(b.max_open_duration, Duration::from_secs(60));
        assert_eq!(b.jitter, 0.0);
        assert_eq!(
            b.failure_on.statuses,
            vec![
                StatusRange::single(502).unwrap(),
                StatusRange::single(503).unwrap(),
                StatusRange::new(520, 599).unwrap()
            ]
        );
        assert!(!b.failure_on.connect_error && !b.failure_on.reset);
        let r = b.response.as_ref().unwrap();
        assert_eq!((r.status, r.body.as_str()), (429, "busy"));
        assert_eq!(r.headers["retry-after"], "5");
        assert_eq!(b.fallback_upstream.as_deref(), Some("static"));
        assert!(!b.enabled);
        assert!(errors_of(|e| b.validate("b", e)).is_empty());
    }

    #[test]
    fn window_is_a_single_key_map() {
        assert_eq!(
            yaml::<WindowConfig>("{count: 50}").unwrap(),
            WindowConfig::Count(50)
        );
        assert_eq!(
            yaml::<WindowConfig>("{time: 1m 30s}").unwrap(),
            WindowConfig::Time(Duration::from_secs(90))
        );
        assert!(yaml::<WindowConfig>("{sliding: 5}")
            .unwrap_err()
            .contains("unknown variant"));
        assert!(yaml::<WindowConfig>("{time: soon}").is_err());
    }

    #[test]
    fn breaker_round_trips_through_serialization() {
        let b = BreakerConfig {
            window: WindowConfig::Time(Duration::from_secs(30)),
            consecutive_failures: Some(3),
            response: Some(ShortCircuitResponse::default()),
            ..BreakerConfig::default()
        };
        let json = serde_json::to_value(&b).unwrap();
        assert_eq!(json["window"]["time"], "30s");
        assert_eq!(json["failure_on"]["statuses"][0], "500-599");
        assert_eq!(serde_json::from_value::<BreakerConfig>(json).unwrap(), b);
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_path() {
        let e = yaml::<BreakerConfig>("open_duraton: 5s").unwrap_err();
        assert!(e.contains("unknown field `open_duraton`"), "{e}");
        let e = yaml::<BreakerConfig>("failure_on: {status: [500]}").unwrap_err();
        assert!(e.starts_with("failure_on"), "{e}");
        assert!(e.contains("unknown field `status`"), "{e}");
        let e = yaml::<BreakerConfig>("response: {code: 503}").unwrap_err();
        assert!(e.contains("unknown field `code`"), "{e}");
        let e = yaml::<OutlierDetectionConfig>("failure_percentage: {treshold: 50}").unwrap_err();
        assert!(e.contains("unknown field `treshold`"), "{e}");
        let e = yaml::<RetryConfig>("budget: {percentage: 10}").unwrap_err();
        assert!(e.contains("unknown field `percentage`"), "{e}");
        let e = yaml::<HealthCheckConfig>("kind: {http: {pth: /x}}").unwrap_err();
        assert!(e.contains("unknown field `pth`"), "{e}");
        let e = yaml::<HealthCheckConfig>("intervl: 5s").unwrap_err();
        assert!(e.contains("unknown field `intervl`"), "{e}");
    }

    #[test]
    fn status_range_reads_codes_strings_and_ranges() {
        let r: Vec<StatusRange> = yaml(r#"[503, "502", "500-599", " 400 - 499 "]"#).unwrap();
        assert_eq!(r[0], StatusRange::single(503).unwrap());
        assert_eq!(r[1], StatusRange::single(502).unwrap());
        assert_eq!((r[2].lo(), r[2].hi()), (500, 599));
        assert_eq!((r[3].lo(), r[3].hi()), (400, 499));
        assert!(r[2].contains(500) && r[2].contains(599) && !r[2].contains(600));
        assert_eq!(r[2].to_string(), "500-599");
        assert_eq!(r[0].to_string(), "503");
    }

    #[test]
    fn status_range_errors_name_the_value() {
        let e = yaml::<Vec<StatusRange>>(r#"["600"]"#).unwrap_err();
        assert!(
            e.contains(r#"invalid status range "600""#) && e.contains("outside 100..=599"),
            "{e}"
        );
        let e = yaml::<Vec<StatusRange>>(r#"[500, "599-500"]"#).unwrap_err();
        assert!(e.starts_with("[1]"), "{e}");
        assert!(e.contains(r#""599-500""#) && e.contains("empty"), "{e}");
        let e = yaml::<Vec<StatusRange>>(r#"["5xx"]"#).unwrap_err();
        assert!(e.contains(r#""5xx" is not a status code"#), "{e}");
        let e = yaml::<Vec<StatusRange>>("[99]").unwrap_err();
        assert!(e.contains("invalid status range 99"), "{e}");
        let e = yaml::<Vec<StatusRange>>("[70000]").unwrap_err();
        assert!(e.contains("invalid status range 70000"), "{e}");
        let e = yaml::<Vec<StatusRange>>("[-5]").unwrap_err();
        assert!(e.contains("invalid status range -5"), "{e}");
        let e = yaml::<Vec<StatusRange>>("[true]").unwrap_err();
        assert!(e.contains("a status code such as 503"), "{e}");
    }

    #[test]
    fn breaker_validation_names_each_bad_field() {
        let b: BreakerConfig = yaml(
            r#"
window: {count: 10}
minimum_calls: 20
failure_rate_threshold: 0
slow_call_rate_threshold: 101
consecutive_failures: 0
open_duration: 10s
max_open_duration: 5s
backoff_multiplier: 0.5
jitter: 1
half_open_permitted_calls: 0
response: {status: 42, headers: {"bad header": x}}
"#,
        )
        .unwrap();
        let errors = errors_of(|e| b.validate("routes[0].circuit_breaker", e));
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        for field in [
            "minimum_calls",
            "failure_rate_threshold",
            "slow_call_rate_threshold",
            "consecutive_failures",
            "max_open_duration",
            "backoff_multiplier",
            "jitter",
            "half_open_permitted_calls",
            "response.status",
            "response.headers",
        ] {
            let want = format!("routes[0].circuit_breaker.{field}");
            assert!(paths.contains(&want.as_str()), "missing {want} in {errors:?}");
        }
        assert!(errors.iter().any(|e| e.message == "must be in (0, 100]"));
    }

    #[test]
    fn time_window_must_be_whole_seconds() {
        let b = BreakerConfig {
            window: WindowConfig::Time(Duration::from_millis(1500)),
            ..BreakerConfig::default()
        };
        let errors = errors_of(|e| b.validate("b", e));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "b.window.time");
    }

    #[test]
    fn outlier_defaults_and_null_turns_a_detector_off() {
        let o: OutlierDetectionConfig = yaml("{}").unwrap();
        assert_eq!(o, OutlierDetectionConfig::default());
        assert_eq!(o.consecutive_5xx, Some(5));
        let o: OutlierDetectionConfig =
            yaml("consecutive_5xx: null\nfailure_percentage: {threshold: 60}\nmax_ejection_percent: 100")
                .unwrap();
        assert_eq!(o.consecutive_5xx, None);
        assert_eq!(o.consecutive_gateway_failure, Some(5));
        let fp = o.failure_percentage.as_ref().unwrap();
        assert_eq!(
            (fp.threshold, fp.minimum_requests, fp.interval),
            (60.0, 20, Duration::from_secs(10))
        );
        assert!(errors_of(|e| o.validate("o", e)).is_empty());
    }

    #[test]
    fn outlier_validation_names_each_bad_field() {
        let o: OutlierDetectionConfig = yaml(
            "consecutive_5xx: 0\nfailure_percentage: {threshold: 150, minimum_requests: 0}\n\
             base_ejection_time: 1m\nmax_ejection_time: 30s\nmax_ejection_percent: 120",
        )
        .unwrap();
        let errors = errors_of(|e| o.validate("u", e));
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "u.consecutive_5xx",
                "u.failure_percentage.threshold",
                "u.failure_percentage.minimum_requests",
                "u.max_ejection_time",
                "u.max_ejection_percent"
            ]
        );
    }

    #[test]
    fn retry_reads_conditions_including_5xx() {
        let r: RetryConfig = yaml("{}").unwrap();
        assert_eq!(r, RetryConfig::default());
        assert_eq!(r.max_backoff(), Duration::from_millis(250));
        let r: RetryConfig = yaml(
            "attempts: 3\non: [5xx, timeout, connect_failure]\nstatuses: [429]\n\
             per_try_timeout: 750ms\nidempotent_only: false\nmax_buffered_body: 1024\nbackoff: 10ms",
        )
        .unwrap();
        assert_eq!(
            r.on,
            [RetryOn::Status5xx, RetryOn::Timeout, RetryOn::ConnectFailure]
        );
        assert_eq!(r.per_try_timeout, Some(Duration::from_millis(750)));
        assert_eq!(r.budget, RetryBudgetConfig::default());
        assert_eq!(serde_json::to_value(RetryOn::Status5xx).unwrap(), "5xx");
        let e = yaml::<RetryConfig>("on: [gateway_errors]").unwrap_err();
        assert!(e.contains("unknown variant `gateway_errors`"), "{e}");
        let bad: RetryConfig = yaml("attempts: 11\nbudget: {percent: -1}\nper_try_timeout: 0s").unwrap();
        let paths: Vec<String> = errors_of(|e| bad.validate("r", e))
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(paths, ["r.attempts", "r.per_try_timeout", "r.budget.percent"]);
    }

    #[test]
    fn health_check_kind_reads_tcp_http_and_http_map() {
        let h: HealthCheckConfig = yaml("{}").unwrap();
        assert_eq!(h, HealthCheckConfig::default());
        assert_eq!(
            yaml::<HealthCheckConfig>("kind: tcp").unwrap().kind,
            HealthCheckKind::Tcp
        );
        assert_eq!(
            yaml::<HealthCheckConfig>("kind: http").unwrap().kind,
            HealthCheckKind::Http(HttpHealthCheck::default())
        );
        let h: HealthCheckConfig = yaml(
            "kind: {http: {path: /health, expected_statuses: [200, 204], body_contains: ok, host: svc.local}}\n\
             interval: 10s\ntimeout: 2s\nhealthy_threshold: 1\nunhealthy_threshold: 5",
        )
        .unwrap();
        let HealthCheckKind::Http(http) = &h.kind else {
            panic!("expected http")
        };
        assert_eq!(http.path, "/health");
        assert_eq!(http.expected_statuses.len(), 2);
        assert_eq!(http.body_contains.as_deref(), Some("ok"));
        assert!(errors_of(|e| h.validate("h", e)).is_empty());
        let e = yaml::<HealthCheckConfig>("kind: grpc").unwrap_err();
        assert!(e.contains("unknown variant `grpc`"), "{e}");
        let e = yaml::<HealthCheckConfig>("kind: {http: {}, tcp: {}}").unwrap_err();
        assert!(e.contains("one key"), "{e}");
    }

    #[test]
    fn health_check_kind_round_trips() {
        for kind in [HealthCheckKind::Tcp, HealthCheckKind::default()] {
            let h = HealthCheckConfig {
                kind,
                ..HealthCheckConfig::default()
            };
            let json = serde_json::to_value(&h).unwrap();
            assert_eq!(serde_json::from_value::<HealthCheckConfig>(json).unwrap(), h);
        }
    }

    #[test]
    fn a_whole_config_reports_resilience_errors_by_path() {
        // A field that does not parse sets its whole list item aside, so the semantic
        // error sits on a second upstream.
        let text = "listeners: [{name: web, listen: '127.0.0.1:8080'}]\n\
            upstreams: [{id: u, endpoints: [{address: '127.0.0.1:9000'}], retries: {attemps: 3}}, \
                {id: v, endpoints: [{address: '127.0.0.1:9001'}], outlier_detection: {max_ejection_percent: 101}}]\n\
            routes: [{id: r, upstream: v, circuit_breaker: {window: {count: 0}, failure_on: {statuses: [700]}}}]";
        let errors: Vec<String> = match crate::Config::from_text(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        };
        let has = |needle: &str| errors.iter().any(|e| e.contains(needle));
        assert!(
            has("upstreams[0].retries.attemps: unknown field `attemps`"),
            "{errors:?}"
        );
        assert!(
            has("routes[0].circuit_breaker.failure_on.statuses[0]: invalid status range 700"),
            "{errors:?}"
        );
        assert!(
            has("upstreams[1].outlier_detection.max_ejection_percent: must be in [0, 100]"),
            "{errors:?}"
        );
    }

    #[test]
    fn health_check_validation_names_each_bad_field() {
        let h: HealthCheckConfig = yaml(
            "kind: {http: {path: health, expected_statuses: []}}\ninterval: 1s\ntimeout: 2s\nhealthy_threshold: 0",
        )
        .unwrap();
        let paths: Vec<String> = errors_of(|e| h.validate("h", e))
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            [
                "h.timeout",
                "h.healthy_threshold",
                "h.kind.http.path",
                "h.kind.http.expected_statuses"
            ]
        );
    }
}
