//! The `rate_limit` filter: a local (per gateway instance) limit on a route's requests,
//! a GCRA token bucket in one atomic word, so admitting takes no lock.
//!
//! ```yaml
//! filters:
//!   - rate_limit: {requests: 100, per: 1s, burst: 20}
//! ```
//!
//! Its bucket is the filter's state: a reload keeps it as long as this filter's own spec
//! is unchanged, whatever else changes in the route.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::HeaderValue;
use serde::{Deserialize, Serialize};

use super::{parse, BuildCtx, Kind, SpecError};
use crate::filter::{Filter, FilterCtx, Flow, Phases, Reject, RejectKind, RequestView};

/// The registry entry.
pub const KIND: Kind = Kind {
    name: "rate_limit",
    answers: false,
    build,
};

/// A local rate limit: `requests` every `per`, with bursts of up to `burst`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Requests allowed per `per`. Required.
    pub requests: NonZeroU32,
    /// The period, e.g. `1s`, `1m`. Default: `1s`.
    #[serde(default = "default_per", with = "humantime_serde")]
    pub per: Duration,
    /// Requests allowed at once after a quiet spell. Default: `requests`.
    #[serde(default)]
    pub burst: Option<NonZeroU32>,
}

fn default_per() -> Duration {
    Duration::from_secs(1)
}

fn build(spec: &serde_json::Value, _ctx: &BuildCtx<'_>) -> Result<Arc<dyn Filter>, Vec<SpecError>> {
    let spec: RateLimitSpec = parse(spec)?;
    Ok(Arc::new(LocalRateLimit::new(&spec, DefaultClock::default())?))
}

/// The `rate_limit` filter, over clock `C` (injectable for tests).
pub struct LocalRateLimit<C: Clock = DefaultClock> {
    limiter: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    clock: C,
}

impl<C: Clock + Clone> LocalRateLimit<C> {
    /// Validates the spec and builds the limiter on `clock`.
    pub fn new(spec: &RateLimitSpec, clock: C) -> Result<LocalRateLimit<C>, Vec<SpecError>> {
        if spec.per.is_zero() {
            return Err(vec![SpecError::at("per", "must be above 0")]);
        }
        let interval = spec.per / spec.requests.get();
        let Some(quota) = Quota::with_period(interval) else {
            return Err(vec![SpecError::at(
                "per",
                format!(
                    "{:?} over {} requests is below a nanosecond",
                    spec.per, spec.requests
                ),
            )]);
        };
        let quota = quota.allow_burst(spec.burst.unwrap_or(spec.requests));
        Ok(LocalRateLimit {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
        })
    }

    /// Takes one request's token: `None` when admitted, else how long until one is free.
    pub fn check(&self) -> Option<Duration> {
        match self.limiter.check() {
            Ok(()) => None,
            Err(not_until) => Some(not_until.wait_time_from(self.clock.now())),
        }
    }
}

#[async_trait]
impl<C: Clock + Clone + Send + Sync> Filter for LocalRateLimit<C>
where
    C::Instant: Send + Sync,
{
    fn kind(&self) -> &'static str {
        "rate_limit"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            ..Phases::default()
        }
    }

    async fn on_request(&self, _req: &RequestView<'_>, _ctx: &mut FilterCtx) -> Flow {
        match self.check() {
            None => Flow::Continue,
            Some(wait) => {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Flow::Reject(
                    Reject::new(RejectKind::RateLimited, "rate limit exceeded")
                        .with_header(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1))),
                )
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limit(yaml: &str, clock: &FakeRelativeClock) -> LocalRateLimit<FakeRelativeClock> {
        let spec: RateLimitSpec = serde_yaml::from_str(yaml).unwrap();
        LocalRateLimit::new(&spec, clock.clone()).unwrap()
    }

    #[test]
    fn admits_the_burst_then_one_per_interval() {
        let clock = FakeRelativeClock::default();
        let l = limit("{requests: 2, per: 1s}", &clock);
        assert_eq!(l.check(), None);
        assert_eq!(l.check(), None);
        let wait = l.check().unwrap();
        assert_eq!(wait, Duration::from_millis(500));
        clock.advance(Duration::from_millis(500));
        assert_eq!(l.check(), None);
        assert!(l.check().is_some());
    }

    #[test]
    fn burst_can_differ_from_the_rate() {
        let clock = FakeRelativeClock::default();
        let l = limit("{requests: 10, per: 1s, burst: 1}", &clock);
        assert_eq!(l.check(), None);
        assert_eq!(l.check(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn rejects_with_retry_after() {
        let clock = FakeRelativeClock::default();
        let l = limit("{requests: 1, per: 1m}", &clock);
        let (h, m) = (http::HeaderMap::new(), http::Method::GET);
        let view = RequestView {
            method: &m,
            scheme: "http",
            host: None,
            authority: None,
            path: "/",
            query: None,
            headers: &h,
            client_ip: None,
        };
        let mut ctx = FilterCtx::default();
        assert!(matches!(
            crate::test_support::block_on(l.on_request(&view, &mut ctx)),
            Flow::Continue
        ));
        let Flow::Reject(r) = crate::test_support::block_on(l.on_request(&view, &mut ctx)) else {
            panic!("expected a rejection")
        };
        assert_eq!(r.kind, RejectKind::RateLimited);
        assert_eq!(r.headers[0].1, "60");
    }

    #[test]
    fn a_misspelt_field_is_named() {
        let errs = crate::kinds::build_for_test(build, &serde_json::json!({"requests": 1, "pre": "1s"}))
            .err()
            .unwrap();
        assert!(errs[0].message.contains("unknown field `pre`"), "{errs:?}");
        let errs = crate::kinds::build_for_test(build, &serde_json::json!({"requests": 0}))
            .err()
            .unwrap();
        assert_eq!(errs[0].path, "requests");
    }
}
