//! The bounded per-key state of a limit filter: a lock-free map (papaya) from a key's
//! 128-bit keyed hash to its slot (buckets, or an in-flight count).
//!
//! - **Fixed size per key.** A key is stored as a SipHash-1-3 pair with seeds chosen at
//!   random per store, so a long header value costs no more than an address, and a
//!   client cannot aim collisions at another key.
//! - **Idle keys are evicted** by [`KeyedStore::sweep`], which the filter runs on the
//!   background runtime: a slot nothing touched for the filter's idle time (by default
//!   the time its buckets take to fill up again, so evicting it forgets nothing) and
//!   that holds no request in flight is removed.
//! - **A hard cap** (`max_keys`): once the store holds that many keys, a new key is not
//!   added; its requests share one *overflow* slot with every other new key until
//!   eviction makes room. A flood of distinct keys therefore gets one key's worth of
//!   traffic through, all together, which protects the upstream, and the memory stays
//!   bounded by `max_keys` slots whatever the flood.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use rustc_hash::FxBuildHasher;

/// A key's state and when it was last used.
pub struct Slot<V> {
    /// The state (buckets, an in-flight count).
    pub value: V,
    last_seen: AtomicU64,
}

impl<V> Slot<V> {
    fn new(value: V, now: u64) -> Slot<V> {
        Slot {
            value,
            last_seen: AtomicU64::new(now),
        }
    }

    /// A slot outside any store (a route's single bucket set).
    pub fn detached(value: V) -> Slot<V> {
        Slot::new(value, 0)
    }

    #[inline]
    fn touch(&self, now: u64) {
        // Written at most once a millisecond, so a hot key's slot is mostly read.
        if now.saturating_sub(self.last_seen.load(Ordering::Relaxed)) > 1_000_000 {
            self.last_seen.store(now, Ordering::Relaxed);
        }
    }
}

/// Per-key state, bounded in count.
pub struct KeyedStore<V> {
    map: papaya::HashMap<u128, Arc<Slot<V>>, FxBuildHasher>,
    count: AtomicUsize,
    max_keys: usize,
    overflow: Arc<Slot<V>>,
    overflowed: AtomicU64,
    seeds: (std::hash::RandomState, std::hash::RandomState),
}

impl<V> KeyedStore<V> {
    /// A store of at most `max_keys` keys, whose overflow slot is `overflow`.
    pub fn new(max_keys: usize, overflow: V) -> KeyedStore<V> {
        KeyedStore {
            map: papaya::HashMap::builder()
                .hasher(FxBuildHasher)
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            count: AtomicUsize::new(0),
            max_keys,
            overflow: Arc::new(Slot::new(overflow, 0)),
            overflowed: AtomicU64::new(0),
            seeds: (std::hash::RandomState::new(), std::hash::RandomState::new()),
        }
    }

    fn hash(&self, key: &[u8]) -> u128 {
        let mut a = self.seeds.0.build_hasher();
        a.write(key);
        let mut b = self.seeds.1.build_hasher();
        b.write(key);
        (u128::from(a.finish()) << 64) | u128::from(b.finish())
    }

    /// The slot of `key` at time `now` (nanoseconds on the filter's clock), made with
    /// `make` if the key is new and the store has room, else the overflow slot.
    #[inline]
    pub fn get(&self, key: &[u8], now: u64, make: impl FnOnce() -> V) -> Arc<Slot<V>> {
        let h = self.hash(key);
        let map = self.map.pin();
        if let Some(slot) = map.get(&h) {
            slot.touch(now);
            return slot.clone();
        }
        if self.count.load(Ordering::Relaxed) >= self.max_keys {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            return self.overflow.clone();
        }
        match map.try_insert_with(h, || Arc::new(Slot::new(make(), now))) {
            Ok(slot) => {
                self.count.fetch_add(1, Ordering::Relaxed);
                slot.clone()
            }
            Err(slot) => slot.clone(),
        }
    }

    /// Removes the keys unused for `idle` nanoseconds before `now` for which `busy`
    /// does not hold; returns how many went.
    pub fn sweep(&self, now: u64, idle: u64, busy: impl Fn(&V) -> bool) -> usize {
        let mut evicted = 0;
        self.map.pin().retain(|_, slot| {
            let keep = now.saturating_sub(slot.last_seen.load(Ordering::Relaxed)) < idle || busy(&slot.value);
            if !keep {
                evicted += 1;
            }
            keep
        });
        self.count
            .fetch_sub(evicted.min(self.count.load(Ordering::Relaxed)), Ordering::Relaxed);
        evicted
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Requests that went to the overflow slot because the store was full.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn caps_keys_and_shares_the_overflow_slot() {
        let s = KeyedStore::new(2, AtomicU32::new(0));
        let a = s.get(b"a", 0, || AtomicU32::new(1));
        let a2 = s.get(b"a", 0, || AtomicU32::new(9));
        assert!(Arc::ptr_eq(&a, &a2));
        s.get(b"b", 0, || AtomicU32::new(2));
        let c = s.get(b"c", 0, || AtomicU32::new(3));
        let d = s.get(b"d", 0, || AtomicU32::new(4));
        assert!(Arc::ptr_eq(&c, &d), "new keys past the cap share one slot");
        assert_eq!(c.value.load(Ordering::Relaxed), 0);
        assert_eq!(s.len(), 2);
        assert_eq!(s.overflowed(), 2);
    }

    #[test]
    fn sweeps_idle_keys_but_not_busy_ones() {
        let s = KeyedStore::new(10, AtomicU32::new(0));
        s.get(b"idle", 0, || AtomicU32::new(0));
        s.get(b"busy", 0, || AtomicU32::new(1));
        s.get(b"recent", 5_000_000_000, || AtomicU32::new(0));
        let gone = s.sweep(6_000_000_000, 2_000_000_000, |v| v.load(Ordering::Relaxed) > 0);
        assert_eq!(gone, 1);
        assert_eq!(s.len(), 2);
        // The evicted key starts afresh.
        let again = s.get(b"idle", 6_000_000_000, || AtomicU32::new(7));
        assert_eq!(again.value.load(Ordering::Relaxed), 7);
    }
}
