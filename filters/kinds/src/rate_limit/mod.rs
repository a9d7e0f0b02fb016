//! The `rate_limit` filter: rate limits on a route's requests, local to the gateway
//! instance (GCRA buckets from `governor`, one atomic word each) or shared by every
//! replica through Redis, keyed on the client address, the consumer, a header, the route
//! or a combination, with several limits that must all admit.
//!
//! ```yaml
//! filters:
//!   - rate_limit: {requests: 100, per: 1s, burst: 20}          # one limit, the route's
//!   - rate_limit:
//!       key: [client_ip, consumer]
//!       header: x-tenant
//!       limits:
//!         - {name: burst, requests: 10, per: 1s, burst: 20}
//!         - {name: hourly, requests: 1000, per: 1h}
//!       redis: {url: "redis://10.0.0.5:6379", timeout: 50ms, fallback: local, replicas: 3}
//! ```
//!
//! Its buckets are the filter's state: a reload keeps them as long as this filter's own
//! spec is unchanged, whatever else changes in the route. `docs/rate-limits.md` has
//! every option, the semantics of several limits, the memory bounds and the fallbacks.

use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::{HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::registry::{parse, BuildCtx, Kind, SpecError};
use sluice_core::filter::{
    CustomReject, Filter, FilterCtx, Flow, HeaderEdit, Phases, Reject, RejectKind, RequestView,
};

pub mod key;
pub mod metrics;
pub mod redis;
pub mod store;

use key::{KeyList, KeySpec};
use metrics::{note, Decision, DecisionCounters};
use store::{KeyedStore, Slot};

/// The registry entry.
pub const KIND: Kind = Kind {
    name: "rate_limit",
    answers: false,
    build,
    redact: crate::registry::shown_as::<RateLimitSpec>,
    schema: Some(crate::registry::schema_of::<RateLimitSpec>),
};

/// `RateLimit-Limit`.
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`.
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`.
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// One limit: `requests` every `per`, with bursts of up to `burst`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// The limit's name: the `limit` label of the decision metric, the access log's
    /// `limit`. Default: `default` for the first limit, `limit<i>` for the others.
    #[serde(default)]
    pub name: Option<String>,
    /// Requests allowed per `per`. Required.
    pub requests: NonZeroU32,
    /// The period, e.g. `1s`, `1m`, `1h`. Default: `1s`.
    #[schemars(with = "sluice_config::schema::DurationText")]
    #[serde(default = "default_per", with = "humantime_serde")]
    pub per: Duration,
    /// Requests allowed at once after a quiet spell. Default: `requests`.
    #[serde(default)]
    pub burst: Option<NonZeroU32>,
}

/// What a limit answers when it refuses, instead of the standard
/// `429 {"error": "rate_limited", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectionSpec {
    /// The status. Default: 429 (503 for `fallback: fail_closed`).
    #[serde(default)]
    pub status: Option<u16>,
    /// The body. Default: the gateway's JSON error.
    #[serde(default)]
    pub body: Option<String>,
    /// The body's content type. Default: `text/plain; charset=utf-8` when `body` is set.
    #[serde(default)]
    pub content_type: Option<String>,
}

impl RejectionSpec {
    /// Compiles the spec; errors are under `rejection`.
    pub fn compile(&self) -> Result<Option<Arc<CustomReject>>, Vec<SpecError>> {
        if self.status.is_none() && self.body.is_none() {
            return Ok(None);
        }
        let status = match self.status {
            Some(s) => Some(
                StatusCode::from_u16(s)
                    .ok()
                    .filter(|s| s.as_u16() >= 400)
                    .ok_or_else(|| {
                        vec![SpecError::at(
                            "rejection.status",
                            "must be a status from 400 to 599",
                        )]
                    })?,
            ),
            None => None,
        };
        let body = match &self.body {
            Some(b) => {
                let ct = self
                    .content_type
                    .as_deref()
                    .unwrap_or("text/plain; charset=utf-8");
                let ct = HeaderValue::from_str(ct)
                    .map_err(|_| vec![SpecError::at("rejection.content_type", "invalid header value")])?;
                Some((ct, Bytes::from(b.clone())))
            }
            None => None,
        };
        Ok(Some(Arc::new(CustomReject { status, body })))
    }
}

/// What a cluster-wide limit does while Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Each replica enforces its share (`requests / replicas`, `burst / replicas`, at
    /// least 1) in local buckets. The default.
    #[default]
    Local,
    /// Admit every request.
    FailOpen,
    /// Refuse every request (503 `unavailable`, or the `rejection` status).
    FailClosed,
}

impl Fallback {
    fn as_str(self) -> &'static str {
        match self {
            Fallback::Local => "local",
            Fallback::FailOpen => "fail_open",
            Fallback::FailClosed => "fail_closed",
        }
    }
}

/// A cluster-wide limit's Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSpec {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://`). Required. Shown with
    /// its password redacted.
    pub url: sluice_config::secret::SecretUrl,
    /// The longest a request waits for Redis's decision. Default: `50ms`.
    #[schemars(with = "sluice_config::schema::DurationText")]
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// What to do while Redis cannot answer. Default: `local`.
    #[serde(default)]
    pub fallback: Fallback,
    /// How many gateway replicas share the limit, for `fallback: local`. Default: 1.
    #[serde(default = "one")]
    pub replicas: NonZeroU32,
    /// Prefix of the Redis keys (`{prefix:route:key}:limit`). Default: `sluice:rl`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Connections to this Redis (the first filter naming a URL sets it). Default: 2.
    #[serde(default = "two")]
    pub pool: usize,
    /// Consecutive failures after which Redis is not called for `breaker_cooldown`.
    /// Default: 3.
    #[serde(default = "three")]
    pub breaker_failures: u32,
    /// How long Redis is left alone after `breaker_failures` failures; then one request
    /// probes it. Default: `1s`.
    #[schemars(with = "sluice_config::schema::DurationText")]
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub breaker_cooldown: Duration,
}

/// The filter's spec: one limit written inline (`requests`, `per`, `burst`), or a list
/// of `limits`; the key; the bounds of the key state; the answer; Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// One limit's requests (the short form; not with `limits`). Default: none.
    #[serde(default)]
    pub requests: Option<NonZeroU32>,
    /// The short form's period. Default: `1s`.
    #[schemars(with = "Option<sluice_config::schema::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub per: Option<Duration>,
    /// The short form's burst. Default: `requests`.
    #[serde(default)]
    pub burst: Option<NonZeroU32>,
    /// The limits, all of which must admit a request. Default: none (then the short
    /// form is required).
    #[serde(default)]
    pub limits: Vec<LimitSpec>,
    /// What requests are counted by: `client_ip`, `consumer`, `header`, `route`, or a
    /// list of them. Default: `route` (one bucket for the route).
    #[serde(default)]
    pub key: KeyList,
    /// The header whose value is (part of) the key. Default: none.
    #[serde(default)]
    pub header: Option<String>,
    /// The most distinct keys kept; past it, new keys share one overflow bucket.
    /// Default: 65536.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// How long a key may stay unused before its buckets are dropped. Default: the
    /// time the slowest limit takes to refill its whole burst (dropping it then forgets
    /// nothing), at least 1s.
    #[schemars(with = "Option<sluice_config::schema::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub idle: Option<Duration>,
    /// Whether admitted responses carry `RateLimit-Limit`, `RateLimit-Remaining` and
    /// `RateLimit-Reset`. Default: true.
    #[serde(default = "yes")]
    pub headers: bool,
    /// The answer when refused. Default: `429` with the JSON error.
    #[serde(default)]
    pub rejection: RejectionSpec,
    /// A cluster-wide limit in Redis. Default: none (local limits).
    #[serde(default)]
    pub redis: Option<RedisSpec>,
}

fn default_per() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_millis(50)
}
fn default_cooldown() -> Duration {
    Duration::from_secs(1)
}
fn default_prefix() -> String {
    "sluice:rl".into()
}
fn default_max_keys() -> usize {
    65_536
}
fn one() -> NonZeroU32 {
    NonZeroU32::MIN
}
fn two() -> usize {
    2
}
fn three() -> u32 {
    3
}
fn yes() -> bool {
    true
}

/// A compiled limit.
struct Limit {
    name: Arc<str>,
    quota: Quota,
    /// The quota of this replica's share, for `fallback: local`.
    share: Quota,
    interval_us: u64,
    burst: u32,
    counters: DecisionCounters,
}

impl RateLimitSpec {
    /// The limits, the short form being one limit called `default`.
    fn limit_specs(&self) -> Result<Vec<LimitSpec>, Vec<SpecError>> {
        match (self.requests, self.limits.is_empty()) {
            (Some(_), false) => Err(vec![SpecError::at(
                "limits",
                "write one limit inline (`requests`, `per`, `burst`) or a list of `limits`, not both",
            )]),
            (Some(requests), true) => Ok(vec![LimitSpec {
                name: None,
                requests,
                per: self.per.unwrap_or_else(default_per),
                burst: self.burst,
            }]),
            (None, true) => Err(vec![SpecError::at(
                "requests",
                "missing field `requests` (or `limits`)",
            )]),
            (None, false) => {
                if self.per.is_some() || self.burst.is_some() {
                    return Err(vec![SpecError::at(
                        "per",
                        "`per` and `burst` go inside each of `limits`",
                    )]);
                }
                Ok(self.limits.clone())
            }
        }
    }

    fn compile_limits(&self, ctx: &BuildCtx<'_>) -> Result<Vec<Limit>, Vec<SpecError>> {
        let specs = self.limit_specs()?;
        let inline = self.requests.is_some();
        let replicas = self.redis.as_ref().map_or(1, |r| r.replicas.get());
        let mut out: Vec<Limit> = Vec::new();
        let mut errors = Vec::new();
        for (i, l) in specs.iter().enumerate() {
            let at = |f: &str| {
                if inline {
                    f.to_string()
                } else {
                    format!("limits[{i}].{f}")
                }
            };
            let name = l.name.clone().unwrap_or_else(|| {
                if i == 0 {
                    "default".into()
                } else {
                    format!("limit{i}")
                }
            });
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                errors.push(SpecError::at(at("name"), "must be 1 to 64 of [A-Za-z0-9_-]"));
                continue;
            }
            if out.iter().any(|o| *o.name == *name) {
                errors.push(SpecError::at(at("name"), format!("{name:?} is used twice")));
                continue;
            }
            match quota(l.per, l.requests, l.burst.unwrap_or(l.requests), 1) {
                Ok(q) => {
                    let share =
                        quota(l.per, l.requests, l.burst.unwrap_or(l.requests), replicas).unwrap_or(q);
                    out.push(Limit {
                        counters: DecisionCounters::new(
                            metrics::LimitSink::of(ctx).0.as_ref(),
                            ctx.route,
                            &name,
                        ),
                        name: name.into(),
                        interval_us: u64::try_from(q.replenish_interval().as_micros())
                            .unwrap_or(u64::MAX)
                            .max(1),
                        burst: q.burst_size().get(),
                        quota: q,
                        share,
                    })
                }
                Err(m) => errors.push(SpecError::at(at("per"), m)),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

/// The quota for `requests` per `per` with `burst`, divided among `replicas`.
fn quota(per: Duration, requests: NonZeroU32, burst: NonZeroU32, replicas: u32) -> Result<Quota, String> {
    if per.is_zero() {
        return Err("must be above 0".into());
    }
    let requests = (requests.get() / replicas).max(1);
    let burst = NonZeroU32::new((burst.get() / replicas).max(1)).unwrap_or(NonZeroU32::MIN);
    let interval = per / requests;
    let q = Quota::with_period(interval)
        .ok_or_else(|| format!("{per:?} over {requests} requests is below a nanosecond"))?;
    Ok(q.allow_burst(burst))
}

type Bucket<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

/// One key's buckets, one per limit.
pub struct Buckets<C: Clock>(Box<[Bucket<C>]>);

/// What the local buckets decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every limit admitted; `limit` has the least room left.
    Admit {
        /// The limit with the least room left.
        limit: usize,
        /// Requests left in it.
        remaining: u32,
        /// Until it is full again.
        reset: Duration,
    },
    /// `limit` refused.
    Refuse {
        /// The refusing limit.
        limit: usize,
        /// Until it admits again.
        wait: Duration,
    },
}

/// The local state of one set of quotas: one bucket set (the route's) or a bounded
/// store of them by key.
pub struct LocalLimits<C: Clock> {
    quotas: Vec<Quota>,
    clock: C,
    start: C::Instant,
    route: Option<Slot<Buckets<C>>>,
    keyed: KeyedStore<Buckets<C>>,
    idle_ns: u64,
}

impl<C: Clock + Clone> LocalLimits<C> {
    /// Local state for `quotas`, keyed (with at most `max_keys` keys, idle ones evicted
    /// after `idle`) or not.
    pub fn new(quotas: Vec<Quota>, clock: C, keyed: bool, max_keys: usize, idle: Duration) -> LocalLimits<C> {
        let make = |q: &[Quota], c: &C| Buckets(q.iter().map(|q| bucket(*q, c)).collect());
        let overflow = make(&quotas, &clock);
        LocalLimits {
            route: (!keyed).then(|| store::Slot::detached(make(&quotas, &clock))),
            keyed: KeyedStore::new(if keyed { max_keys } else { 0 }, overflow),
            start: clock.now(),
            idle_ns: u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX),
            quotas,
            clock,
        }
    }

    fn now_ns(&self) -> u64 {
        Duration::from(self.clock.now().duration_since(self.start))
            .as_nanos()
            .try_into()
            .unwrap_or(u64::MAX)
    }

    /// Takes one request from every limit of `key`'s buckets (ignored when unkeyed), in
    /// order, stopping at the first that refuses.
    #[inline]
    pub fn check(&self, key: &[u8]) -> Outcome {
        match &self.route {
            Some(slot) => self.check_buckets(&slot.value),
            None => {
                let slot = self.keyed.get(key, self.now_ns(), || {
                    Buckets(self.quotas.iter().map(|q| bucket(*q, &self.clock)).collect())
                });
                self.check_buckets(&slot.value)
            }
        }
    }

    /// Brings `key`'s local share of limit `limit` down to the shared figure Redis just
    /// gave (`remaining` of `burst` requests left in that limit, cluster-wide), counting
    /// the request Redis answered: it takes one request from the local bucket, then what
    /// is left above `remaining`'s share of the local burst. A local bucket already
    /// emptier stays as it is. So when Redis fails, `fallback: local` starts from the
    /// last shared figure, not from a full bucket (no extra burst per outage).
    pub fn follow(&self, key: &[u8], limit: usize, remaining: u32, burst: u32) {
        let follow_buckets = |b: &Buckets<C>| {
            let (Some(bucket), Some(q)) = (b.0.get(limit), self.quotas.get(limit)) else {
                return;
            };
            let local_burst = u64::from(q.burst_size().get());
            let target = u64::from(remaining) * local_burst / u64::from(burst.max(1));
            let target = u32::try_from(target).unwrap_or(u32::MAX);
            if let Ok(snap) = bucket.check() {
                let above = snap.remaining_burst_capacity().saturating_sub(target);
                if let Some(n) = NonZeroU32::new(above) {
                    let _ = bucket.check_n(n);
                }
            }
        };
        match &self.route {
            Some(slot) => follow_buckets(&slot.value),
            None => {
                let slot = self.keyed.get(key, self.now_ns(), || {
                    Buckets(self.quotas.iter().map(|q| bucket(*q, &self.clock)).collect())
                });
                follow_buckets(&slot.value);
            }
        }
    }

    fn check_buckets(&self, b: &Buckets<C>) -> Outcome {
        let mut best: Option<(usize, u32, Duration)> = None;
        for (i, bucket) in b.0.iter().enumerate() {
            match bucket.check() {
                Ok(snap) => {
                    let remaining = snap.remaining_burst_capacity();
                    if best.is_none_or(|(_, r, _)| remaining < r) {
                        let q = snap.quota();
                        let used = q.burst_size().get().saturating_sub(remaining);
                        best = Some((i, remaining, q.replenish_interval() * used));
                    }
                }
                Err(not_until) => {
                    return Outcome::Refuse {
                        limit: i,
                        wait: not_until.wait_time_from(self.clock.now()),
                    }
                }
            }
        }
        let (limit, remaining, reset) = best.unwrap_or((0, 0, Duration::ZERO));
        Outcome::Admit {
            limit,
            remaining,
            reset,
        }
    }

    /// Drops the keys idle for longer than the idle time; returns how many.
    pub fn sweep(&self) -> usize {
        self.keyed.sweep(self.now_ns(), self.idle_ns, |_| false)
    }

    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.keyed.len()
    }
}

fn bucket<C: Clock + Clone>(q: Quota, clock: &C) -> Bucket<C> {
    RateLimiter::direct_with_clock(q, clock.clone()).with_middleware::<StateInformationMiddleware>()
}

/// Runs `local`'s sweep every `every` on the background runtime until the filter is gone.
fn spawn_sweeper<C>(runtime: &tokio::runtime::Handle, local: Weak<LocalLimits<C>>, every: Duration)
where
    C: Clock + Clone + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(l) = local.upgrade() else { return };
            l.sweep();
        }
    });
}

/// A cluster-wide limit's Redis side.
struct Cluster {
    store: Arc<redis::RedisStore>,
    /// Lists this filter's route among the store's users while the filter lives.
    _user: Arc<str>,
    prefix: String,
    timeout: Duration,
    fallback: Fallback,
}

fn build(spec: &serde_json::Value, ctx: &BuildCtx<'_>) -> Result<Arc<dyn Filter>, Vec<SpecError>> {
    let spec: RateLimitSpec = parse(spec)?;
    Ok(Arc::new(RateLimit::new(&spec, ctx, DefaultClock::default())?))
}

/// The `rate_limit` filter, over clock `C` (injectable for tests).
pub struct RateLimit<C: Clock = DefaultClock> {
    limits: Vec<Limit>,
    key: KeySpec,
    local: Arc<LocalLimits<C>>,
    cluster: Option<Cluster>,
    custom: Option<Arc<CustomReject>>,
    headers: bool,
}

impl<C> RateLimit<C>
where
    C: Clock + Clone + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    /// Validates the spec and builds the filter on `clock`. With a runtime in `ctx`,
    /// idle keys are swept on it, and a Redis spec gets its store from the shared pools.
    pub fn new(spec: &RateLimitSpec, ctx: &BuildCtx<'_>, clock: C) -> Result<RateLimit<C>, Vec<SpecError>> {
        let limits = spec.compile_limits(ctx)?;
        let key = KeySpec::new(spec.key.parts(), spec.header.as_deref())?;
        let custom = spec.rejection.compile()?;
        if spec.max_keys == 0 {
            return Err(vec![SpecError::at("max_keys", "must be at least 1")]);
        }
        let idle = spec.idle.unwrap_or_else(|| {
            limits
                .iter()
                .map(|l| l.quota.burst_size_replenished_in())
                .max()
                .unwrap_or_default()
                .max(Duration::from_secs(1))
        });
        // Local buckets: the limits themselves, or this replica's share of a cluster-wide
        // limit (used while Redis cannot answer).
        let quotas = limits
            .iter()
            .map(|l| if spec.redis.is_some() { l.share } else { l.quota })
            .collect();
        let local = Arc::new(LocalLimits::new(
            quotas,
            clock,
            !key.is_route(),
            spec.max_keys,
            idle,
        ));
        if let (Some(rt), false) = (&ctx.runtime(), key.is_route()) {
            let every = (idle / 2).clamp(Duration::from_millis(500), Duration::from_secs(30));
            spawn_sweeper(rt, Arc::downgrade(&local), every);
        }
        let cluster = match &spec.redis {
            None => None,
            Some(r) => {
                if r.timeout.is_zero() {
                    return Err(vec![SpecError::at("redis.timeout", "must be above 0")]);
                }
                if r.pool == 0 || r.pool > 64 {
                    return Err(vec![SpecError::at("redis.pool", "must be from 1 to 64")]);
                }
                redis::check_url(r.url.expose()).map_err(|e| vec![SpecError::at("redis.url", e)])?;
                match &ctx.runtime() {
                    // Validation: the spec is checked, nothing is started.
                    None => None,
                    Some(rt) => {
                        let settings = redis::StoreSettings {
                            pool: r.pool,
                            breaker_failures: r.breaker_failures,
                            breaker_cooldown: r.breaker_cooldown,
                            timeout: r.timeout,
                        };
                        let store = ctx
                            .services
                            .get_or_insert_with(redis::RedisPools::default)
                            .get(
                                r.url.expose(),
                                rt,
                                settings,
                                metrics::LimitSink::of(ctx).0.as_ref(),
                            )
                            .map_err(|e| vec![SpecError::at("redis.url", e)])?;
                        Some(Cluster {
                            _user: store.register(ctx.route),
                            store,
                            prefix: format!("{}:{}", r.prefix, ctx.route),
                            timeout: r.timeout,
                            fallback: r.fallback,
                        })
                    }
                }
            }
        };
        Ok(RateLimit {
            limits,
            key,
            local,
            cluster,
            custom,
            headers: spec.headers,
        })
    }

    /// The local state (for tests and benchmarks).
    pub fn local(&self) -> &LocalLimits<C> {
        &self.local
    }

    /// Decides for the request, as `on_request` does, returning the decision and the
    /// outcome.
    pub async fn decide(&self, req: &RequestView<'_>, ctx: &FilterCtx) -> (Decision, Outcome) {
        let mut key = Vec::new();
        if !self.key.is_route() {
            self.key.write(req, ctx, &mut key);
        }
        let Some(c) = &self.cluster else {
            let o = self.local.check(&key);
            return (decision(o, false), o);
        };
        let keys = self.redis_keys(&c.prefix, &key);
        let args = self
            .limits
            .iter()
            .flat_map(|l| [l.interval_us, u64::from(l.burst)])
            .collect();
        let answer = c.store.decide(keys, args, c.timeout).await;
        if let (Ok(a), Fallback::Local) = (&answer, c.fallback) {
            let limit = a.limit.min(self.limits.len().saturating_sub(1));
            let remaining = if a.admitted { a.remaining } else { 0 };
            self.local
                .follow(&key, limit, remaining, self.limits[limit].burst);
        }
        match answer {
            Ok(a) if a.admitted => (
                Decision::Allowed,
                Outcome::Admit {
                    limit: a.limit,
                    remaining: a.remaining,
                    reset: a.reset,
                },
            ),
            Ok(a) => (
                Decision::Rejected,
                Outcome::Refuse {
                    limit: a.limit.min(self.limits.len().saturating_sub(1)),
                    wait: a.retry_after,
                },
            ),
            Err(_) => match c.fallback {
                Fallback::FailOpen => (
                    Decision::FailOpen,
                    Outcome::Admit {
                        limit: 0,
                        remaining: 0,
                        reset: Duration::ZERO,
                    },
                ),
                Fallback::FailClosed => (
                    Decision::FailClosed,
                    Outcome::Refuse {
                        limit: 0,
                        wait: Duration::from_secs(1),
                    },
                ),
                Fallback::Local => {
                    let o = self.local.check(&key);
                    (decision(o, true), o)
                }
            },
        }
    }

    /// `{prefix:route:key}:limit` for each limit; a key longer than
    /// [`key::MAX_RAW_KEY`] bytes, or not printable, is replaced by its hex SHA-256.
    fn redis_keys(&self, prefix: &str, key: &[u8]) -> Vec<String> {
        let printable =
            key.len() <= key::MAX_RAW_KEY && key.iter().all(|b| (0x20..0x7f).contains(b) || *b == 0x1f);
        let key = if printable {
            String::from_utf8_lossy(key).replace('\x1f', "|")
        } else {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(key))
        };
        self.limits
            .iter()
            .map(|l| format!("{{{prefix}:{key}}}:{}", l.name))
            .collect()
    }

    fn refusal(&self, decision: Decision, limit: usize, wait: Duration) -> Reject {
        let l = &self.limits[limit.min(self.limits.len() - 1)];
        let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        let (kind, message) = if decision == Decision::FailClosed {
            (RejectKind::Unavailable, "the rate limit cannot be checked now")
        } else {
            (RejectKind::RateLimited, "rate limit exceeded")
        };
        Reject::new(kind, message)
            .with_custom(self.custom.clone())
            .with_header(http::header::RETRY_AFTER, HeaderValue::from(secs))
            .with_header(RATELIMIT_LIMIT, HeaderValue::from(l.burst))
            .with_header(RATELIMIT_REMAINING, HeaderValue::from_static("0"))
            .with_header(RATELIMIT_RESET, HeaderValue::from(secs))
    }

    fn id(&self) -> usize {
        std::ptr::from_ref(self) as *const () as usize
    }
}

fn decision(o: Outcome, fallback: bool) -> Decision {
    match (o, fallback) {
        (Outcome::Admit { .. }, false) => Decision::Allowed,
        (Outcome::Refuse { .. }, false) => Decision::Rejected,
        (Outcome::Admit { .. }, true) => Decision::FallbackAllowed,
        (Outcome::Refuse { .. }, true) => Decision::FallbackRejected,
    }
}

/// What an admitted request's response headers say, held in [`FilterCtx::held`].
struct Admitted {
    owner: usize,
    limit: u32,
    remaining: u32,
    reset: Duration,
}

#[async_trait]
impl<C> Filter for RateLimit<C>
where
    C: Clock + Clone + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    fn kind(&self) -> &'static str {
        "rate_limit"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            response: self.headers,
            ..Phases::default()
        }
    }

    async fn on_request(&self, req: &RequestView<'_>, ctx: &mut FilterCtx) -> Flow {
        let (d, outcome) = self.decide(req, ctx).await;
        match outcome {
            Outcome::Admit {
                limit,
                remaining,
                reset,
            } => {
                for l in &self.limits {
                    l.counters.count(d);
                }
                let l = &self.limits[limit.min(self.limits.len() - 1)];
                note(ctx, &l.name, d);
                if self.headers && d != Decision::FailOpen {
                    ctx.held.push(Box::new(Admitted {
                        owner: self.id(),
                        limit: l.burst,
                        remaining,
                        reset,
                    }));
                }
                Flow::Continue
            }
            Outcome::Refuse { limit, wait } => {
                let l = &self.limits[limit.min(self.limits.len() - 1)];
                if d == Decision::FailClosed {
                    for l in &self.limits {
                        l.counters.count(d);
                    }
                } else {
                    l.counters.count(d);
                }
                note(ctx, &l.name, d);
                Flow::Reject(self.refusal(d, limit, wait))
            }
        }
    }

    fn on_response(&self, _status: StatusCode, headers: &mut dyn HeaderEdit, ctx: &FilterCtx) {
        let me = self.id();
        for h in &ctx.held {
            if let Some(a) = h.downcast_ref::<Admitted>().filter(|a| a.owner == me) {
                let reset = a.reset.as_secs() + u64::from(a.reset.subsec_nanos() > 0);
                headers.set(RATELIMIT_LIMIT, HeaderValue::from(a.limit));
                headers.set(RATELIMIT_REMAINING, HeaderValue::from(a.remaining));
                headers.set(RATELIMIT_RESET, HeaderValue::from(reset));
            }
        }
    }
}

/// What `/api/v1/routes` shows of a `rate_limit` spec: the limits, the key, where the
/// buckets live (never the Redis URL, which may hold a password). `None` if the spec
/// does not parse.
pub fn describe(spec: &serde_json::Value) -> Option<serde_json::Value> {
    let s: RateLimitSpec = serde_json::from_value(spec.clone()).ok()?;
    let limits = s.limit_specs().ok()?;
    let key = KeySpec::new(s.key.parts(), s.header.as_deref()).ok()?;
    Some(serde_json::json!({
        "kind": "rate_limit",
        "key": key.describe(),
        "limits": limits.iter().enumerate().map(|(i, l)| serde_json::json!({
            "name": l.name.clone().unwrap_or_else(|| if i == 0 { "default".into() } else { format!("limit{i}") }),
            "requests": l.requests,
            "per": humantime::format_duration(l.per).to_string(),
            "burst": l.burst.unwrap_or(l.requests),
        })).collect::<Vec<_>>(),
        "store": if s.redis.is_some() { "redis" } else { "local" },
        "fallback": s.redis.as_ref().map(|r| r.fallback.as_str()),
        "max_keys": s.max_keys,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
