//! A route's live traffic split: [`LiveSplit`], and the per-version figures that
//! judge a canary: [`VersionStats`].
//!
//! A route's backends carry weights in the config. Those weights can also change
//! without a config change: a progressive rollout steps a canary's weight up, or sets
//! it back to 0 on a rollback. Both go through one [`LiveSplit`] per route, kept in
//! [`Splits`] by route id so it outlives reloads:
//!
//! - the config's weights are the *base* ([`LiveSplit::set_base`], on every compile);
//! - a rollout may set an *override* ([`LiveSplit::set_override`]) that wins over the
//!   base until it is cleared;
//! - readers ([`LiveSplit::next`], [`LiveSplit::table`]) load one immutable
//!   [`SplitTable`] through an `ArcSwap`: no lock on the request path.
//!
//! [`VersionStats`] counts requests, 5xx answers and a latency histogram per backend
//! with relaxed atomics. An analysis takes a [`StatsSample`] at the start and at the end
//! of an interval and judges the difference ([`StatsSample::since`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::weighted::WeightedSequence;

/// Where the weights a [`SplitTable`] serves come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightSource {
    /// The route's config.
    Config,
    /// An override (a progressive rollout's current step).
    Override,
}

/// One immutable set of weights and the exact sequence that serves them.
#[derive(Debug)]
pub struct SplitTable {
    /// The backends' upstream ids, in the route's order (what `weights` are for).
    pub backends: Box<[Arc<str>]>,
    /// The weight of each backend, in the route's backend order.
    pub weights: Box<[u32]>,
    /// Where they come from.
    pub source: WeightSource,
    /// The smooth weighted order over `weights`.
    pub sequence: WeightedSequence,
}

impl SplitTable {
    fn new(backends: &[Arc<str>], weights: &[u32], source: WeightSource) -> SplitTable {
        SplitTable {
            backends: backends.into(),
            weights: weights.into(),
            source,
            sequence: WeightedSequence::new(weights),
        }
    }

    /// The sum of the weights.
    pub fn total(&self) -> u64 {
        self.weights.iter().map(|&w| u64::from(w)).sum()
    }
}

/// State behind the table: the base and the override (written off the request path).
#[derive(Debug, Default)]
struct Sources {
    base: Vec<u32>,
    over: Option<Vec<u32>>,
}

/// A route's live split between its backends.
#[derive(Debug)]
pub struct LiveSplit {
    /// The backends' upstream ids, in order (the split's identity: a change of
    /// backends drops the override).
    backends: Mutex<Vec<Arc<str>>>,
    sources: Mutex<Sources>,
    table: ArcSwap<SplitTable>,
    /// Per-backend figures, in backend order; replaced when the backends change.
    stats: ArcSwap<Vec<Arc<VersionStats>>>,
}

impl LiveSplit {
    /// A split over `backends` (upstream ids) with `weights` as its base.
    pub fn new(backends: &[Arc<str>], weights: &[u32]) -> LiveSplit {
        LiveSplit {
            backends: Mutex::new(backends.to_vec()),
            sources: Mutex::new(Sources {
                base: weights.to_vec(),
                over: None,
            }),
            table: ArcSwap::from_pointee(SplitTable::new(backends, weights, WeightSource::Config)),
            stats: ArcSwap::from_pointee(backends.iter().map(|_| Arc::default()).collect()),
        }
    }

    /// The table requests are served from now.
    pub fn table(&self) -> arc_swap::Guard<Arc<SplitTable>> {
        self.table.load()
    }

    /// The next backend index by the current weights (`None` when all are 0).
    pub fn next(&self) -> Option<usize> {
        self.table.load().sequence.next()
    }

    /// The figures of backend `index`.
    pub fn stats(&self, index: usize) -> Option<Arc<VersionStats>> {
        self.stats.load().get(index).cloned()
    }

    /// Counts one request served by backend `index` (see [`VersionStats::record`]),
    /// without taking a reference to its figures.
    pub fn record(&self, index: usize, status: u16, took: Duration) {
        if let Some(stats) = self.stats.load().get(index) {
            stats.record(status, took);
        }
    }

    /// The backends' upstream ids, in order. Takes a lock: for build time and the admin
    /// plane, not the request path.
    pub fn backends(&self) -> Vec<Arc<str>> {
        self.backends.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// The index of the backend whose upstream is `id`. Takes a lock: for build time and
    /// the admin plane, not the request path.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.backends
            .lock()
            .ok()
            .and_then(|b| b.iter().position(|x| &**x == id))
    }

    /// Sets the config's weights (on every compile). When the backends changed, the
    /// override and the figures are dropped. Unchanged weights keep the serving table
    /// (and its place in the sequence).
    pub fn set_base(&self, backends: &[Arc<str>], weights: &[u32]) {
        let (Ok(mut ids), Ok(mut src)) = (self.backends.lock(), self.sources.lock()) else {
            return;
        };
        let same_backends = ids.as_slice() == backends;
        if same_backends && src.base == weights {
            return;
        }
        if !same_backends {
            *ids = backends.to_vec();
            src.over = None;
            self.stats
                .store(Arc::new(backends.iter().map(|_| Arc::default()).collect()));
        }
        src.base = weights.to_vec();
        self.publish(&ids, &src);
    }

    /// Sets (`Some`) or clears (`None`) the override. Its length must be the number of
    /// backends; a wrong length is refused (`false`).
    pub fn set_override(&self, weights: Option<&[u32]>) -> bool {
        let (Ok(ids), Ok(mut src)) = (self.backends.lock(), self.sources.lock()) else {
            return false;
        };
        if let Some(w) = weights {
            if w.len() != src.base.len() {
                return false;
            }
        }
        let new = weights.map(<[u32]>::to_vec);
        if src.over == new {
            return true;
        }
        src.over = new;
        self.publish(&ids, &src);
        true
    }

    /// The config's weights.
    pub fn base(&self) -> Vec<u32> {
        self.sources.lock().map(|s| s.base.clone()).unwrap_or_default()
    }

    fn publish(&self, ids: &[Arc<str>], src: &Sources) {
        let table = match &src.over {
            Some(w) => SplitTable::new(ids, w, WeightSource::Override),
            None => SplitTable::new(ids, &src.base, WeightSource::Config),
        };
        self.table.store(Arc::new(table));
    }
}

/// The live splits of every route, by route id. Written while compiling (under a
/// lock, off the request path); the request path holds the `Arc<LiveSplit>` itself.
#[derive(Debug, Default)]
pub struct Splits {
    by_route: Mutex<HashMap<String, Arc<LiveSplit>>>,
}

impl Splits {
    /// The split of route `id`, created with these backends and base weights if it does
    /// not exist yet. An existing split is left as it is: a filter build runs while a
    /// config compiles, before it is accepted, and the gateway's compile plans the new
    /// base weights (`LiveSplit::set_base`), applied when the config is published.
    pub fn for_route(&self, id: &str, backends: &[Arc<str>], weights: &[u32]) -> Arc<LiveSplit> {
        let Ok(mut map) = self.by_route.lock() else {
            return Arc::new(LiveSplit::new(backends, weights));
        };
        if let Some(s) = map.get(id) {
            return s.clone();
        }
        let s = Arc::new(LiveSplit::new(backends, weights));
        map.insert(id.to_string(), s.clone());
        s
    }

    /// Makes `split` route `id`'s (a compiled config's new route, on publish).
    pub fn insert(&self, id: &str, split: Arc<LiveSplit>) {
        if let Ok(mut map) = self.by_route.lock() {
            map.insert(id.to_string(), split);
        }
    }

    /// The split of route `id`, if it has one.
    pub fn get(&self, id: &str) -> Option<Arc<LiveSplit>> {
        self.by_route.lock().ok().and_then(|m| m.get(id).cloned())
    }

    /// Drops the splits nothing else holds any more (no snapshot's route, no rollout).
    pub fn prune(&self) {
        if let Ok(mut map) = self.by_route.lock() {
            map.retain(|_, v| Arc::strong_count(v) > 1);
        }
    }
}

/// Upper bounds of the latency buckets, in microseconds: 100 µs to about 100 s in
/// steps of about 19% (so a p99 read from them is within about 19% of the true one).
pub const LATENCY_BOUNDS_US: [u64; 80] = latency_bounds();

const fn latency_bounds() -> [u64; 80] {
    let mut out = [0u64; 80];
    let mut v: u64 = 100;
    let mut i = 0;
    while i < 80 {
        out[i] = v;
        // × 1.19, rounded up so the bounds strictly increase.
        v = (v * 119).div_ceil(100);
        i += 1;
    }
    out
}

/// Requests, 5xx answers and a latency histogram for one backend of one route.
#[derive(Debug)]
pub struct VersionStats {
    requests: AtomicU64,
    errors: AtomicU64,
    /// One more bucket than bounds: the last one counts everything slower.
    buckets: [AtomicU64; 81],
}

impl Default for VersionStats {
    fn default() -> Self {
        VersionStats {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl VersionStats {
    /// Counts one request: its status (`0` for none, which counts as an error, as does
    /// any 5xx) and its duration.
    pub fn record(&self, status: u16, took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status == 0 || status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn sample(&self) -> StatsSample {
        StatsSample {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            buckets: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
        }
    }
}

/// A copy of a [`VersionStats`]' counts, or the difference of two (an interval), or a
/// sum over replicas. Serializable, so replicas can publish theirs.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct StatsSample {
    /// Requests answered.
    pub requests: u64,
    /// Of which failed (5xx or no answer).
    pub errors: u64,
    /// Latency bucket counts over [`LATENCY_BOUNDS_US`] (plus one overflow bucket).
    pub buckets: Vec<u64>,
}

impl StatsSample {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &StatsSample) -> StatsSample {
        StatsSample {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, &b)| b.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// Adds `other` (another replica's interval) into `self`.
    pub fn add(&mut self, other: &StatsSample) {
        self.requests += other.requests;
        self.errors += other.errors;
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
    }

    /// Share of requests that did not fail, in `0.0..=1.0` (`None` with no request).
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| 1.0 - self.errors as f64 / self.requests as f64)
    }

    /// The `q` quantile (`0.99` for p99) of the latency, as the upper bound of the
    /// bucket it falls in (`None` with no request).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let us = LATENCY_BOUNDS_US
                    .get(i)
                    .copied()
                    .unwrap_or(LATENCY_BOUNDS_US[LATENCY_BOUNDS_US.len() - 1] * 2);
                return Some(Duration::from_micros(us));
            }
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<Arc<str>> {
        v.iter().map(|s| Arc::from(*s)).collect()
    }

    #[test]
    fn override_wins_until_cleared_and_base_updates_underneath() {
        let s = LiveSplit::new(&ids(&["stable", "canary"]), &[100, 0]);
        assert_eq!(&*s.table().weights, &[100, 0]);
        let before = arc_swap::Guard::into_inner(s.table());
        s.set_base(&ids(&["stable", "canary"]), &[100, 0]);
        assert!(
            Arc::ptr_eq(&before, &s.table()),
            "an unchanged base keeps the serving table"
        );
        assert!(s.set_override(Some(&[90, 10])));
        assert_eq!(s.table().source, WeightSource::Override);
        s.set_base(&ids(&["stable", "canary"]), &[50, 50]);
        assert_eq!(&*s.table().weights, &[90, 10]);
        assert!(s.set_override(None));
        assert_eq!(&*s.table().weights, &[50, 50]);
        assert!(!s.set_override(Some(&[1, 2, 3])));
    }

    #[test]
    fn changed_backends_drop_the_override() {
        let s = LiveSplit::new(&ids(&["a", "b"]), &[1, 1]);
        s.set_override(Some(&[0, 1]));
        s.set_base(&ids(&["a", "c"]), &[1, 1]);
        assert_eq!(s.table().source, WeightSource::Config);
        assert_eq!(s.index_of("c"), Some(1));
    }

    #[test]
    fn splits_keep_one_per_route() {
        let all = Splits::default();
        let a = all.for_route("r", &ids(&["x"]), &[1]);
        let b = all.for_route("r", &ids(&["x"]), &[1]);
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        all.prune();
        assert!(all.get("r").is_none());
    }

    #[test]
    fn stats_interval_rates_and_quantiles() {
        let v = VersionStats::default();
        let start = v.sample();
        for i in 0..100u64 {
            let status = if i < 5 { 503 } else { 200 };
            v.record(status, Duration::from_millis(if i < 98 { 2 } else { 900 }));
        }
        let d = v.sample().since(&start);
        assert_eq!(d.requests, 100);
        assert_eq!(d.errors, 5);
        assert!((d.success_rate().unwrap() - 0.95).abs() < 1e-9);
        let p50 = d.quantile(0.5).unwrap();
        assert!(
            p50 >= Duration::from_millis(2) && p50 < Duration::from_millis(3),
            "{p50:?}"
        );
        let p99 = d.quantile(0.99).unwrap();
        assert!(
            p99 >= Duration::from_millis(900) && p99 < Duration::from_millis(1100),
            "{p99:?}"
        );
        let mut sum = d.clone();
        sum.add(&d);
        assert_eq!(sum.requests, 200);
        assert_eq!(StatsSample::default().quantile(0.99), None);
    }
}
