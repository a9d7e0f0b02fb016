//! A bounded cache of verified tokens, so a token seen again costs a hash and a lookup
//! instead of a signature check (RS256: about 20 µs of CPU).
//!
//! - **Keyed by a hash of the token**, never the token: 128 bits, two SipHash-1-3
//!   passes (std's keyed hasher) over the token behind two salts drawn at random for
//!   each cache, so no one can aim a token at another's entry, and a memory dump holds
//!   no usable credential.
//! - **Bounded**: `size` slots, direct-mapped by the hash; a new entry replaces whatever
//!   was in its slot. Each slot is an atomic pointer: lookups and inserts take no lock.
//! - **Never past `exp`**: an entry is served only while the token would still pass the
//!   verifier's own time check (`now < exp + leeway`); `nbf` and `iat` only get more
//!   valid with time, and every other check depends on the token and the filter's
//!   config alone (a config change builds a new filter, with a new cache).
//! - **Dropped when keys rotate**: entries verified with a JWKS key set are dropped as
//!   soon as the source holds another set, so a key taken out of the JWKS document stops
//!   every token it signed at once.
//!
//! Only successes are cached: a refused token is checked again each time.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::verify::KeySet;
use sluice_core::filter::Identity;

/// A verified token's result.
struct Entry {
    key: [u64; 2],
    /// Seconds since the Unix epoch up to which the token passes the time check:
    /// `exp + leeway`, or infinity for a token without `exp`.
    until: f64,
    identity: Identity,
}

/// The cache: see the module documentation.
pub struct TokenCache {
    slots: Box<[ArcSwapOption<Entry>]>,
    hasher: RandomState,
    salts: [u128; 2],
    /// The JWKS key set the entries were verified with (`None`: inline keys only, or
    /// none seen yet).
    remote: ArcSwapOption<KeySet>,
}

/// A token's key in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenKey([u64; 2]);

impl TokenCache {
    /// A cache of `size` slots (`0`: no caching).
    pub fn new(size: usize) -> TokenCache {
        TokenCache {
            slots: (0..size).map(|_| ArcSwapOption::empty()).collect(),
            hasher: RandomState::new(),
            salts: rand::random(),
            remote: ArcSwapOption::empty(),
        }
    }

    /// Whether the cache holds anything at all (`size` above 0).
    pub fn is_on(&self) -> bool {
        !self.slots.is_empty()
    }

    /// `token`'s key.
    pub fn key(&self, token: &str) -> TokenKey {
        TokenKey(self.salts.map(|salt| self.hasher.hash_one((salt, token))))
    }

    fn slot(&self, key: TokenKey) -> Option<&ArcSwapOption<Entry>> {
        let n = self.slots.len() as u64;
        (n > 0).then(|| &self.slots[(key.0[0] % n) as usize])
    }

    /// Empties the cache when the JWKS set is not the one its entries were verified
    /// with. Call before [`TokenCache::get`] with the source's current set.
    pub fn follow(&self, remote: &Arc<KeySet>) {
        let same = self
            .remote
            .load()
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(r, remote));
        if !same {
            for s in self.slots.iter() {
                s.store(None);
            }
            self.remote.store(Some(remote.clone()));
        }
    }

    /// The identity remembered for `key`, if its token still passes the time check at
    /// `now` (seconds since the Unix epoch).
    pub fn get(&self, key: TokenKey, now: u64) -> Option<Identity> {
        let slot = self.slot(key)?;
        let guard = slot.load();
        let e = guard.as_ref()?;
        (e.key == key.0 && (now as f64) < e.until).then(|| e.identity.clone())
    }

    /// Remembers a verified token's identity; `until` as in the entry.
    pub fn put(&self, key: TokenKey, until: f64, identity: Identity) {
        if let Some(slot) = self.slot(key) {
            slot.store(Some(Arc::new(Entry {
                key: key.0,
                until,
                identity,
            })));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(name: &str) -> Identity {
        Identity {
            consumer: Arc::from(name),
            groups: vec![],
            claims: vec![(Arc::from("sub"), Arc::from(name))],
        }
    }

    #[test]
    fn an_entry_is_served_until_its_time_and_never_after() {
        let c = TokenCache::new(8);
        let k = c.key("a.b.c");
        assert_eq!(c.get(k, 100), None);
        c.put(k, 160.0, id("alice"));
        assert_eq!(c.get(k, 159), Some(id("alice")));
        assert_eq!(c.get(k, 160), None, "exp + leeway reached");
        assert_eq!(c.get(c.key("a.b.d"), 100), None, "another token");
    }

    #[test]
    fn keys_differ_per_cache_and_per_token() {
        let (a, b) = (TokenCache::new(8), TokenCache::new(8));
        assert_ne!(a.key("t"), b.key("t"), "random keys per cache");
        assert_eq!(a.key("t"), a.key("t"));
        assert_ne!(a.key("t"), a.key("u"));
    }

    #[test]
    fn the_cache_is_bounded_and_a_slot_holds_the_last_entry() {
        let c = TokenCache::new(4);
        let keys: Vec<_> = (0..100).map(|i| (i, c.key(&format!("token-{i}")))).collect();
        for (i, k) in &keys {
            c.put(*k, f64::INFINITY, id(&format!("u{i}")));
        }
        let held = keys.iter().filter(|(_, k)| c.get(*k, 0).is_some()).count();
        assert!((1..=4).contains(&held), "{held} entries held in 4 slots");
        let (i, k) = keys[99];
        assert_eq!(c.get(k, 0), Some(id(&format!("u{i}"))), "the last put is held");
    }

    #[test]
    fn a_new_key_set_drops_every_entry() {
        let c = TokenCache::new(8);
        let first = Arc::new(KeySet::default());
        c.follow(&first);
        let k = c.key("a.b.c");
        c.put(k, f64::INFINITY, id("alice"));
        c.follow(&first);
        assert!(c.get(k, 0).is_some(), "the same set keeps the entries");
        c.follow(&Arc::new(KeySet::default()));
        assert_eq!(c.get(k, 0), None, "a rotated set drops them");
    }

    #[test]
    fn size_zero_caches_nothing() {
        let c = TokenCache::new(0);
        assert!(!c.is_on());
        let k = c.key("a.b.c");
        c.put(k, f64::INFINITY, id("alice"));
        assert_eq!(c.get(k, 0), None);
    }
}
