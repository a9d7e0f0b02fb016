//! The `limit_conn` filter: at most `max` requests in flight per key (APISIX's
//! `limit-conn`), in this gateway instance.
//!
//! ```yaml
//! filters:
//!   - limit_conn: {max: 10, key: client_ip}
//! ```
//!
//! A request takes a permit in `on_request` and keeps it in [`FilterCtx::held`] until
//! the request context is dropped, which happens however the request ends (answered,
//! failed upstream, client gone, a panic unwinding the task): the permit's `Drop` gives
//! the slot back. Key state is bounded like `rate_limit`'s (`max_keys`, an overflow
//! slot shared by new keys past the cap, idle keys without requests in flight evicted).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::rate_limit::key::{KeyList, KeySpec};
use crate::rate_limit::metrics::{note, Decision, DecisionCounters};
use crate::rate_limit::store::{KeyedStore, Slot};
use crate::rate_limit::RejectionSpec;
use crate::registry::{parse, BuildCtx, Kind, SpecError};
use sluice_core::filter::{CustomReject, Filter, FilterCtx, Flow, Phases, Reject, RejectKind, RequestView};

/// The registry entry.
pub const KIND: Kind = Kind {
    name: "limit_conn",
    answers: false,
    build,
    redact: crate::registry::shown_as::<LimitConnSpec>,
    schema: Some(crate::registry::schema_of::<LimitConnSpec>),
};

/// The filter's spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitConnSpec {
    /// Requests in flight allowed per key. Required.
    pub max: NonZeroU32,
    /// The limit's name (metric label, access log). Default: `concurrency`.
    #[serde(default = "default_name")]
    pub name: String,
    /// What requests are counted by, as in `rate_limit`. Default: `route`.
    #[serde(default)]
    pub key: KeyList,
    /// The header whose value is (part of) the key. Default: none.
    #[serde(default)]
    pub header: Option<String>,
    /// The most distinct keys kept; past it, new keys share one overflow slot.
    /// Default: 65536.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// How long a key with nothing in flight is kept. Default: `60s`.
    #[schemars(with = "sluice_config::schema::DurationText")]
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle: Duration,
    /// The answer when refused. Default: `429` with the JSON error and `Retry-After: 1`.
    #[serde(default)]
    pub rejection: RejectionSpec,
}

fn default_name() -> String {
    "concurrency".into()
}
fn default_max_keys() -> usize {
    65_536
}
fn default_idle() -> Duration {
    Duration::from_secs(60)
}

fn build(spec: &serde_json::Value, ctx: &BuildCtx<'_>) -> Result<Arc<dyn Filter>, Vec<SpecError>> {
    let spec: LimitConnSpec = parse(spec)?;
    Ok(Arc::new(LimitConn::new(&spec, ctx)?))
}

/// A slot given back when dropped.
struct Permit(Arc<Slot<AtomicU32>>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.value.fetch_sub(1, Ordering::AcqRel);
    }
}

/// In-flight counts by key.
pub struct Counts {
    route: Option<Arc<Slot<AtomicU32>>>,
    keyed: KeyedStore<AtomicU32>,
    start: Instant,
    idle_ns: u64,
}

impl Counts {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Drops the keys with nothing in flight that were idle long enough.
    pub fn sweep(&self) -> usize {
        self.keyed
            .sweep(self.now_ns(), self.idle_ns, |n| n.load(Ordering::Acquire) > 0)
    }

    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.keyed.len()
    }
}

/// The `limit_conn` filter.
pub struct LimitConn {
    max: u32,
    name: Arc<str>,
    key: KeySpec,
    counts: Arc<Counts>,
    custom: Option<Arc<CustomReject>>,
    counters: DecisionCounters,
}

impl LimitConn {
    /// Validates the spec and builds the filter; with a runtime, idle keys are swept on it.
    pub fn new(spec: &LimitConnSpec, ctx: &BuildCtx<'_>) -> Result<LimitConn, Vec<SpecError>> {
        let key = KeySpec::new(spec.key.parts(), spec.header.as_deref())?;
        if spec.max_keys == 0 {
            return Err(vec![SpecError::at("max_keys", "must be at least 1")]);
        }
        if spec.name.is_empty()
            || !spec
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(vec![SpecError::at("name", "must be 1 to 64 of [A-Za-z0-9_-]")]);
        }
        let custom = spec.rejection.compile()?;
        let counts = Arc::new(Counts {
            route: key
                .is_route()
                .then(|| Arc::new(Slot::detached(AtomicU32::new(0)))),
            keyed: KeyedStore::new(spec.max_keys, AtomicU32::new(0)),
            start: Instant::now(),
            idle_ns: u64::try_from(spec.idle.as_nanos()).unwrap_or(u64::MAX),
        });
        if let (Some(rt), false) = (&ctx.runtime(), key.is_route()) {
            let weak: Weak<Counts> = Arc::downgrade(&counts);
            let every = (spec.idle / 2).clamp(Duration::from_millis(500), Duration::from_secs(30));
            rt.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(c) = weak.upgrade() else { return };
                    c.sweep();
                }
            });
        }
        Ok(LimitConn {
            max: spec.max.get(),
            counters: DecisionCounters::new(
                crate::rate_limit::metrics::LimitSink::of(ctx).0.as_ref(),
                ctx.route,
                &spec.name,
            ),
            name: spec.name.as_str().into(),
            key,
            counts,
            custom,
        })
    }

    /// The in-flight counts (for tests).
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Takes a permit for the request's key, if one is free: the permit gives it back
    /// when dropped.
    fn acquire(&self, req: &RequestView<'_>, ctx: &FilterCtx) -> Option<Permit> {
        let slot = match &self.counts.route {
            Some(s) => s.clone(),
            None => {
                let mut key = Vec::new();
                self.key.write(req, ctx, &mut key);
                self.counts
                    .keyed
                    .get(&key, self.counts.now_ns(), || AtomicU32::new(0))
            }
        };
        slot.value
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(Permit(slot))
    }
}

#[async_trait]
impl Filter for LimitConn {
    fn kind(&self) -> &'static str {
        "limit_conn"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            ..Phases::default()
        }
    }

    async fn on_request(&self, req: &RequestView<'_>, ctx: &mut FilterCtx) -> Flow {
        match self.acquire(req, ctx) {
            Some(permit) => {
                self.counters.count(Decision::Allowed);
                ctx.held.push(Box::new(permit));
                note(ctx, &self.name, Decision::Allowed);
                Flow::Continue
            }
            None => {
                self.counters.count(Decision::Rejected);
                note(ctx, &self.name, Decision::Rejected);
                Flow::Reject(
                    Reject::new(RejectKind::RateLimited, "too many requests in flight")
                        .with_custom(self.custom.clone())
                        .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
                )
            }
        }
    }
}

/// What `/api/v1/routes` shows of a `limit_conn` spec.
pub fn describe(spec: &serde_json::Value) -> Option<serde_json::Value> {
    let s: LimitConnSpec = serde_json::from_value(spec.clone()).ok()?;
    let key = KeySpec::new(s.key.parts(), s.header.as_deref()).ok()?;
    Some(serde_json::json!({
        "kind": "limit_conn",
        "key": key.describe(),
        "limits": [{"name": s.name, "concurrency": s.max}],
        "store": "local",
        "max_keys": s.max_keys,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_support::block_on;

    fn conn(yaml: &str) -> LimitConn {
        let spec: LimitConnSpec = serde_yaml::from_str(yaml).unwrap();
        let config = sluice_config::Config::default();
        let services = sluice_core::Services::default();
        LimitConn::new(&spec, &BuildCtx::new(&config, &services)).unwrap()
    }

    fn run(f: &LimitConn, headers: &http::HeaderMap, ctx: &mut FilterCtx) -> bool {
        let m = http::Method::GET;
        let view = RequestView {
            method: &m,
            scheme: "http",
            host: None,
            authority: None,
            path: "/",
            query: None,
            headers,
            client_ip: None,
        };
        matches!(block_on(f.on_request(&view, ctx)), Flow::Continue)
    }

    #[test]
    fn admits_max_in_flight_and_frees_a_slot_when_the_context_drops() {
        let f = conn("{max: 2}");
        let h = http::HeaderMap::new();
        let mut a = FilterCtx::default();
        let mut b = FilterCtx::default();
        let mut c = FilterCtx::default();
        assert!(run(&f, &h, &mut a));
        assert!(run(&f, &h, &mut b));
        assert!(!run(&f, &h, &mut c), "the third in flight is refused");
        assert_eq!(c.log.get("limit_decision"), Some("rejected"));
        drop(a);
        let mut d = FilterCtx::default();
        assert!(run(&f, &h, &mut d), "a finished request gave its slot back");
    }

    #[test]
    fn counts_per_header_key_and_evicts_idle_keys() {
        let f = conn("{max: 1, header: x-tenant, idle: 0s}");
        let mut h1 = http::HeaderMap::new();
        h1.insert("x-tenant", "a".parse().unwrap());
        let mut h2 = http::HeaderMap::new();
        h2.insert("x-tenant", "b".parse().unwrap());
        let mut a = FilterCtx::default();
        let mut b = FilterCtx::default();
        assert!(run(&f, &h1, &mut a));
        assert!(run(&f, &h2, &mut b), "another key has its own slot");
        assert!(!run(&f, &h1, &mut FilterCtx::default()));
        drop(b);
        assert_eq!(f.counts().sweep(), 1, "only the key with nothing in flight goes");
        assert_eq!(f.counts().keys(), 1);
    }

    #[test]
    fn a_panicking_request_gives_its_permit_back() {
        let f = Arc::new(conn("{max: 1}"));
        let g = f.clone();
        let r = std::thread::spawn(move || {
            let mut ctx = FilterCtx::default();
            assert!(run(&g, &http::HeaderMap::new(), &mut ctx));
            panic!("a filter or the proxy panicked mid-request");
        })
        .join();
        assert!(r.is_err());
        assert!(run(&f, &http::HeaderMap::new(), &mut FilterCtx::default()));
    }
}
