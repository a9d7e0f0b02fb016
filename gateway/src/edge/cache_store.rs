//! The response cache's memory store: pingora-cache's [`Storage`] over a lock-free map,
//! with pingora's sharded LRU as its size bound, and purges by key text or prefix.
//!
//! One store serves the process (pingora-cache wants `'static` storage, eviction and
//! lock); its size limit follows the config on every reload. An entry keeps its
//! response head as parsed, so a hit rebuilds its [`CacheMeta`] without deserialising
//! anything, and its body as one shared buffer.
//!
//! The request path reads the map without a lock (papaya); a fill takes the map's
//! write path once, at its end. The LRU (pingora's) takes a shard lock per admission
//! and hit, as pingora's own storages do.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::eviction::{lru, EvictionManager};
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget, PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;
use pingora::prelude::*;

/// The LRU's shard count.
const SHARDS: usize = 16;

/// A stored response.
struct Entry {
    /// The key text the route built (what purges match).
    text: Box<str>,
    /// The compact key, for the LRU.
    compact: CompactCacheKey,
    fresh_until: SystemTime,
    updated: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    variance: Option<HashBinary>,
    header: ResponseHeader,
    body: Bytes,
}

impl Entry {
    fn meta(&self) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.updated,
            self.stale_while_revalidate,
            self.stale_if_error,
            self.header.clone(),
        );
        if let Some(v) = self.variance {
            meta.set_variance(v);
        }
        meta
    }

    fn weight(&self) -> usize {
        // The body, plus a rough figure for the head and the entry itself.
        self.body.len() + self.text.len() + 64 * self.header.headers.len() + 256
    }
}

/// The memory store.
pub struct MemoryStore {
    entries: papaya::HashMap<HashBinary, std::sync::Arc<Entry>>,
    /// Bytes the entries take, as the LRU counts them.
    fills: AtomicU64,
}

/// The store, its LRU and its lock, made on first use.
pub struct Cache {
    /// The entries.
    pub store: MemoryStore,
    /// The size bound.
    pub lru: lru::Manager<SHARDS>,
    /// One fill per key at a time.
    pub lock: Box<CacheKeyLockImpl>,
}

static CACHE: OnceLock<Cache> = OnceLock::new();

/// Serialises the unit tests that size the process-wide store, so one cannot resize it
/// under another's assertions.
#[cfg(test)]
pub(crate) static TEST_STORE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The process's cache, made with `max_size` on first use; later calls set the size
/// limit (a reload).
pub fn cache(max_size: u64) -> &'static Cache {
    let limit = usize::try_from(max_size).unwrap_or(usize::MAX);
    let c = CACHE.get_or_init(|| Cache {
        store: MemoryStore {
            entries: papaya::HashMap::new(),
            fills: AtomicU64::new(0),
        },
        lru: lru::Manager::with_capacity(limit, 1024),
        // The lock's own age limit: a fill that holds it longer is presumed dead. Each
        // request's wait is the route's `lock_timeout` (an override per request).
        lock: CacheLock::new_boxed(Duration::from_secs(60)),
    });
    if c.lru.weight_limit() != limit {
        c.lru.set_weight_limit(limit);
    }
    c
}

/// The cache if it was ever made.
pub fn existing() -> Option<&'static Cache> {
    CACHE.get()
}

impl Cache {
    /// Removes every entry whose key text `matches` (all its variants), and untracks it
    /// in the LRU. Returns how many were removed.
    pub fn purge_where(&self, matches: impl Fn(&str) -> bool) -> usize {
        let map = self.store.entries.pin();
        let doomed: Vec<(HashBinary, CompactCacheKey)> = map
            .iter()
            .filter(|(_, e)| matches(&e.text))
            .map(|(k, e)| (*k, e.compact.clone()))
            .collect();
        for (k, compact) in &doomed {
            map.remove(k);
            self.lru
                .remove(pingora::cache::CacheEntryKeyRef::from_entry_id(compact, None));
        }
        doomed.len()
    }

    /// How many entries are stored.
    pub fn len(&self) -> usize {
        self.store.entries.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the LRU counts.
    pub fn size(&self) -> usize {
        self.lru.total_size()
    }
}

struct Hit {
    body: Bytes,
    done: bool,
    start: usize,
    end: usize,
    weight: usize,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(InternalError, "seek past the cached body");
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |e| e.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.weight
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

struct Fill {
    store: &'static MemoryStore,
    key: HashBinary,
    text: Box<str>,
    compact: CompactCacheKey,
    meta: (
        SystemTime,
        SystemTime,
        u32,
        u32,
        Option<HashBinary>,
        ResponseHeader,
    ),
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let (fresh_until, updated, swr, sie, variance, header) = self.meta;
        let entry = Entry {
            text: self.text,
            compact: self.compact,
            fresh_until,
            updated,
            stale_while_revalidate: swr,
            stale_if_error: sie,
            variance,
            header,
            body: self.body.freeze(),
        };
        let weight = entry.weight();
        self.store.fills.fetch_add(1, Ordering::Relaxed);
        self.store
            .entries
            .pin()
            .insert(self.key, std::sync::Arc::new(entry));
        Ok(MissFinishType::Created(weight))
    }
}

fn key_text(key: &CacheKey) -> Box<str> {
    String::from_utf8_lossy(key.primary_key()).into()
}

#[async_trait]
impl Storage for MemoryStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let map = self.entries.pin();
        let Some(entry) = map.get(&key.combined_bin()) else {
            return Ok(None);
        };
        let hit = Hit {
            body: entry.body.clone(),
            done: false,
            start: 0,
            end: entry.body.len(),
            weight: entry.weight(),
        };
        Ok(Some((entry.meta(), Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(Fill {
            store: self,
            key: key.combined_bin(),
            text: key_text(key),
            compact: key.to_compact(),
            meta: (
                meta.fresh_until(),
                meta.updated(),
                meta.stale_while_revalidate_sec(),
                meta.stale_if_error_sec(),
                meta.variance(),
                meta.response_header_copy(),
            ),
            body: BytesMut::new(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let removed = self.entries.pin().remove(&target.key().combined_bin()).is_some();
        Ok(if removed {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let map = self.entries.pin();
        let k = key.combined_bin();
        let Some(old) = map.get(&k) else {
            return Ok(false);
        };
        let entry = Entry {
            text: old.text.clone(),
            compact: old.compact.clone(),
            fresh_until: meta.fresh_until(),
            updated: meta.updated(),
            stale_while_revalidate: meta.stale_while_revalidate_sec(),
            stale_if_error: meta.stale_if_error_sec(),
            variance: meta.variance(),
            header: meta.response_header_copy(),
            body: old.body.clone(),
        };
        map.insert(k, std::sync::Arc::new(entry));
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use pingora::cache::trace::Span;

    fn meta() -> CacheMeta {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("content-type", "text/plain").unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 5, h)
    }

    #[tokio::test]
    // The guard only keeps the other store tests out; nothing else takes it.
    #[allow(clippy::await_holding_lock)]
    async fn a_fill_is_found_and_purged_by_text() {
        let _store = TEST_STORE.lock().unwrap_or_else(|e| e.into_inner());
        let c = cache(1 << 20);
        let span = Span::inactive().handle();
        let key = CacheKey::new("example.com/store-test?a=1", "");
        assert!(c.store.lookup(&key, &span).await.unwrap().is_none());
        let mut fill = c.store.get_miss_handler(&key, &meta(), &span).await.unwrap();
        fill.write_body(Bytes::from_static(b"hello "), false)
            .await
            .unwrap();
        fill.write_body(Bytes::from_static(b"world"), true).await.unwrap();
        let MissFinishType::Created(w) = fill.finish().await.unwrap() else {
            panic!("created")
        };
        assert!(w > 11);
        let (m, mut hit) = c.store.lookup(&key, &span).await.unwrap().unwrap();
        assert!(m.is_fresh(SystemTime::now()));
        assert_eq!(m.stale_if_error_sec(), 5);
        assert_eq!(m.response_header().headers["content-type"], "text/plain");
        assert_eq!(hit.read_body().await.unwrap().unwrap(), "hello world");
        assert!(hit.read_body().await.unwrap().is_none());
        hit.seek(6, None).unwrap();
        assert_eq!(hit.read_body().await.unwrap().unwrap(), "world");

        assert_eq!(c.purge_where(|t| t.starts_with("example.com/other")), 0);
        assert_eq!(c.purge_where(|t| t.starts_with("example.com/store-")), 1);
        assert!(c.store.lookup(&key, &span).await.unwrap().is_none());
    }
}
