//! Cluster-wide limits in Redis: one GCRA script per decision, over a small pool of
//! self-reconnecting connections per Redis URL, with a timeout on every call and a
//! circuit breaker so a dead Redis costs nothing.
//!
//! - **The script** ([`SCRIPT`]) checks every limit of the filter for one key in one
//!   atomic step, reading Redis's own clock (`TIME`, so the replicas' clocks do not
//!   matter), and stores the new theoretical arrival times only if *every* limit admits:
//!   a request refused by one limit consumes nothing from the others. Keys share a hash
//!   tag (`{prefix:route:key}:limit`), so they live in one slot on a Redis Cluster.
//! - **The pool** ([`RedisPools`], a service in the build context) holds one [`RedisStore`] per URL,
//!   made on the background runtime and kept across reloads: `pool` multiplexed
//!   connections ([`redis::aio::ConnectionManager`], which reconnects by itself), used
//!   in turn. Every call runs on the background runtime; the request waits for it at
//!   most `timeout`.
//! - **The breaker**: after `breaker_failures` consecutive failures (timeouts, lost
//!   connections, errors) the store is *open* for `breaker_cooldown`: calls are not
//!   made and the filters use their fallback at once. Then a probe (`PING`, bounded by
//!   the timeout) runs in the background, started by the first request after the
//!   cooldown, which itself uses the fallback and does not wait for it: no request waits
//!   on a Redis that hangs. The probe's success closes the breaker; its failure keeps it
//!   open for another cooldown.
//! - **Fallback events**: entering and leaving the fallback are reported once each,
//!   with the reason, through the metrics sink ([`FallbackChange`]; the gateway emits
//!   its `limiter_fallback` event and moves `sluice_ratelimit_fallback_active`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::metrics::{FallbackChange, LimitMetrics, RedisCounters, RedisError};

/// The GCRA script. `KEYS[i]` is limit i's key; `ARGV[2i-1]` its emission interval and
/// `ARGV[2i]` its burst, in microseconds and requests. Returns
/// `{admitted (1|0), limit index (1-based: the refusing one, or the one with the least
/// room left), retry after (us), remaining, reset (us, until that limit is full again)}`.
pub const SCRIPT_SOURCE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local best, best_remaining, best_reset = 1, -1, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - interval * burst
  if allow_at > now then
    return {0, i, allow_at - now, 0, tat - now}
  end
  tats[i] = new_tat
  local remaining = math.floor((interval * burst - (new_tat - now)) / interval)
  if best_remaining < 0 or remaining < best_remaining then
    best, best_remaining, best_reset = i, remaining, new_tat - now
  end
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.floor((tats[i] - now) / 1000) + 1000)
end
return {1, best, 0, best_remaining, best_reset}
";

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SCRIPT_SOURCE));

/// What Redis decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisAnswer {
    /// Whether every limit admitted.
    pub admitted: bool,
    /// The refusing limit, or the one with the least room left (0-based).
    pub limit: usize,
    /// How long until the refusing limit admits again.
    pub retry_after: Duration,
    /// Requests left in the answering limit.
    pub remaining: u32,
    /// How long until the answering limit is full again.
    pub reset: Duration,
}

/// How a store behaves: its pool size and breaker. The first filter to use a URL sets
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSettings {
    /// Connections in the pool.
    pub pool: usize,
    /// Consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one request probes Redis again.
    pub breaker_cooldown: Duration,
    /// The connect and response timeout of the connections.
    pub timeout: Duration,
}

/// The Redis stores, one per URL, kept across reloads (a service in the build context).
#[derive(Default)]
pub struct RedisPools {
    stores: Mutex<HashMap<String, Arc<RedisStore>>>,
}

impl std::fmt::Debug for RedisPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPools")
            .field("stores", &self.stores.lock().len())
            .finish()
    }
}

impl RedisPools {
    /// The store for `url`, made (on `runtime`) on first use. Build time only.
    pub fn get(
        &self,
        url: &str,
        runtime: &tokio::runtime::Handle,
        settings: StoreSettings,
        sink: Option<&Arc<dyn LimitMetrics>>,
    ) -> Result<Arc<RedisStore>, String> {
        let mut stores = self.stores.lock();
        if let Some(s) = stores.get(url) {
            return Ok(s.clone());
        }
        let store = Arc::new(RedisStore::new(url, runtime, settings, sink)?);
        stores.insert(url.to_string(), store.clone());
        Ok(store)
    }
}

/// Checks a Redis URL without connecting (what validation does).
pub fn check_url(url: &str) -> Result<(), String> {
    redis::Client::open(url).map(|_| ()).map_err(|e| e.to_string())
}

/// The server a Redis URL names, for logs and events: `host:port[/db]`, without the
/// scheme, the credentials or the query.
pub fn store_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['?', '#']).next().unwrap_or(rest).to_string()
}

/// One Redis server's connections and breaker.
pub struct RedisStore {
    name: String,
    conns: Vec<ConnectionManager>,
    next: AtomicUsize,
    runtime: tokio::runtime::Handle,
    breaker: Breaker,
    metrics: RedisCounters,
    probe_timeout: Duration,
    /// The routes whose filters use this store (alive while their filter is).
    users: Mutex<Vec<Weak<str>>>,
}

impl RedisStore {
    fn new(
        url: &str,
        runtime: &tokio::runtime::Handle,
        settings: StoreSettings,
        sink: Option<&Arc<dyn LimitMetrics>>,
    ) -> Result<RedisStore, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        // The connections (and their reconnects) live on the background runtime.
        let _enter = runtime.enter();
        let conns = (0..settings.pool.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Ok(RedisStore {
            name: store_name(url),
            conns,
            next: AtomicUsize::new(0),
            runtime: runtime.clone(),
            breaker: Breaker::new(settings.breaker_failures, settings.breaker_cooldown),
            metrics: RedisCounters::new(sink),
            probe_timeout: settings.timeout,
            users: Mutex::new(Vec::new()),
        })
    }

    /// Records that a filter of `route` uses this store, for as long as the returned
    /// handle lives (the filter keeps it). Build time only.
    pub fn register(&self, route: &str) -> Arc<str> {
        let handle: Arc<str> = Arc::from(route);
        let mut users = self.users.lock();
        users.retain(|w| w.strong_count() > 0);
        users.push(Arc::downgrade(&handle));
        handle
    }

    /// The routes whose filters use this store now, sorted.
    fn routes(&self) -> Vec<String> {
        let mut routes: Vec<String> = self
            .users
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .map(|r| r.to_string())
            .collect();
        routes.sort();
        routes.dedup();
        routes
    }

    /// Reports entering (`active`) or leaving the fallback.
    fn fallback_changed(&self, active: bool, reason: String) {
        if active {
            tracing::warn!(store = %self.name, %reason, "redis is failing: limits use their fallback");
        } else {
            tracing::info!(store = %self.name, %reason, "redis is answering again: cluster-wide limits resume");
        }
        self.metrics.fallback_changed(&FallbackChange {
            store: self.name.clone(),
            routes: self.routes(),
            active,
            reason,
        });
    }

    /// Checks, in the background, whether Redis answers again (`PING` within the
    /// timeout): a success closes the breaker, a failure keeps it open for another
    /// cooldown.
    fn spawn_probe(self: &Arc<Self>) {
        let store = self.clone();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let mut conn = self.conns[i].clone();
        self.runtime.spawn(async move {
            let ping = redis::cmd("PING");
            let call = ping.query_async::<String>(&mut conn);
            let result = match tokio::time::timeout(store.probe_timeout, call).await {
                Err(_) => Err(RedisError::Timeout),
                Ok(Err(e)) => Err(classify(&e)),
                Ok(Ok(_)) => Ok(()),
            };
            match result {
                Ok(()) => {
                    if store.breaker.success() {
                        store.fallback_changed(false, "redis answered the probe".into());
                    }
                }
                Err(e) => {
                    store.metrics.error(e);
                    store.breaker.failure();
                }
            }
        });
    }

    /// Whether the breaker is open now (calls are skipped).
    pub fn is_open(&self) -> bool {
        self.breaker.open.load(Ordering::Relaxed)
    }

    /// Runs the script for `keys` (one per limit) with `args` (interval in
    /// microseconds and burst, per limit), waiting at most `timeout`.
    pub async fn decide(
        self: &Arc<Self>,
        keys: Vec<String>,
        args: Vec<u64>,
        timeout: Duration,
    ) -> Result<RedisAnswer, RedisError> {
        match self.breaker.admit() {
            Admit::Call => {}
            Admit::Probe => {
                // This request uses the fallback at once; the probe runs on its own.
                self.spawn_probe();
                self.metrics.error(RedisError::CircuitOpen);
                return Err(RedisError::CircuitOpen);
            }
            Admit::Skip => {
                self.metrics.error(RedisError::CircuitOpen);
                return Err(RedisError::CircuitOpen);
            }
        }
        let started = Instant::now();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let mut conn = self.conns[i].clone();
        let call = self.runtime.spawn(async move {
            let mut inv = SCRIPT.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            for a in &args {
                inv.arg(*a);
            }
            inv.invoke_async::<Vec<i64>>(&mut conn).await
        });
        let result = match tokio::time::timeout(timeout, call).await {
            Err(_) => Err(RedisError::Timeout),
            Ok(Err(_)) => Err(RedisError::Connection),
            Ok(Ok(Err(e))) => Err(classify(&e)),
            Ok(Ok(Ok(v))) => parse(&v).ok_or(RedisError::Script),
        };
        if let Some(h) = &self.metrics.duration {
            h.observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(_) => {
                // Closed already (calls are made only then): this resets the count.
                self.breaker.success();
            }
            Err(e) => {
                self.metrics.error(e);
                if self.breaker.failure() {
                    let n = self.breaker.threshold;
                    let reason = if n == 1 {
                        format!("a failure: {}", e.as_str())
                    } else {
                        format!("{n} consecutive failures, the last a {}", e.as_str())
                    };
                    self.fallback_changed(true, reason);
                }
            }
        }
        result
    }
}

fn classify(e: &redis::RedisError) -> RedisError {
    if e.is_timeout() {
        RedisError::Timeout
    } else if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
    {
        RedisError::Connection
    } else {
        RedisError::Script
    }
}

fn parse(v: &[i64]) -> Option<RedisAnswer> {
    let [admitted, limit, retry, remaining, reset] = *v else {
        return None;
    };
    let us = |x: i64| Duration::from_micros(u64::try_from(x.max(0)).unwrap_or(0));
    Some(RedisAnswer {
        admitted: admitted == 1,
        limit: usize::try_from(limit.max(1) - 1).ok()?,
        retry_after: us(retry),
        remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
        reset: us(reset),
    })
}

/// What the breaker lets a caller do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// Call Redis.
    Call,
    /// Do not call; start the probe (this caller is the one).
    Probe,
    /// Do not call.
    Skip,
}

/// Consecutive-failure breaker in atomics: closed → open (after `threshold` failures) →
/// one probe after `cooldown` → closed on its success, open again on its failure.
struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: AtomicU32,
    open: AtomicBool,
    /// When the breaker opened, in microseconds since `epoch`.
    opened_at: AtomicU64,
    probing: AtomicBool,
    epoch: Instant,
}

impl Breaker {
    fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
            opened_at: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Whether a call may be made now, or a probe (once the cooldown is over, to one
    /// caller at a time), or neither.
    fn admit(&self) -> Admit {
        if !self.open.load(Ordering::Acquire) {
            return Admit::Call;
        }
        let cooled = self
            .now_us()
            .saturating_sub(self.opened_at.load(Ordering::Relaxed))
            >= u64::try_from(self.cooldown.as_micros()).unwrap_or(u64::MAX);
        // One probe at a time once the cooldown is over.
        if cooled
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            Admit::Probe
        } else {
            Admit::Skip
        }
    }

    /// Records a success; true when it closed the breaker.
    fn success(&self) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        self.probing.store(false, Ordering::Release);
        self.open.swap(false, Ordering::AcqRel)
    }

    /// Records a failure; true when it opened the breaker.
    fn failure(&self) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if self.open.load(Ordering::Acquire) {
            // A failed probe: stay open for another cooldown.
            self.opened_at.store(self.now_us(), Ordering::Relaxed);
            self.probing.store(false, Ordering::Release);
            return false;
        }
        if n >= self.threshold {
            self.opened_at.store(self.now_us(), Ordering::Relaxed);
            return !self.open.swap(true, Ordering::AcqRel);
        }
        false
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_repeated_failures_and_probes_once() {
        let b = Breaker::new(3, Duration::ZERO);
        assert_eq!(b.admit(), Admit::Call);
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(b.failure(), "the third failure opens it");
        // Cooldown zero: one probe at a time.
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::Skip, "a second probe waits for the first");
        assert!(!b.failure(), "a failed probe keeps it open");
        assert_eq!(b.admit(), Admit::Probe);
        assert!(b.success(), "a good probe closes it");
        assert_eq!((b.admit(), b.admit()), (Admit::Call, Admit::Call));
    }

    #[test]
    fn an_open_breaker_waits_for_its_cooldown() {
        let b = Breaker::new(1, Duration::from_secs(3600));
        assert!(b.failure());
        assert_eq!(b.admit(), Admit::Skip);
    }

    #[test]
    fn a_store_is_named_without_its_credentials() {
        assert_eq!(store_name("redis://:s3cret@10.0.0.5:6379/2"), "10.0.0.5:6379/2");
        assert_eq!(
            store_name("rediss://user:pw@redis.local:6380?x=1"),
            "redis.local:6380"
        );
        assert_eq!(store_name("redis://127.0.0.1:6379"), "127.0.0.1:6379");
    }

    #[test]
    fn parses_the_script_answer() {
        let a = parse(&[0, 2, 1_500_000, 0, 3_000_000]).unwrap();
        assert!(!a.admitted);
        assert_eq!(a.limit, 1);
        assert_eq!(a.retry_after, Duration::from_millis(1500));
        assert!(parse(&[1, 1]).is_none());
    }
}
