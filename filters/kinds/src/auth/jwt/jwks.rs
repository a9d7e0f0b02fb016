//! JWKS key sources: one per URL, process-wide (a service in the build context), so
//! every route naming a URL shares its key set and a reload keeps it.
//!
//! - The key set is an `ArcSwap<KeySet>`: the request path loads it, never locks.
//! - A background task on the shared runtime fetches the document at start and every
//!   `refresh` after that (sooner, every `min_refetch_interval`, after a failure). A
//!   failed fetch keeps the last good set.
//! - A token whose `kid` is not in the set asks for a refetch, at most one per
//!   `min_refetch_interval` per URL whatever the request rate; the request waits for it
//!   at most `wait`. Requests that come while a fetch is in flight wait for that one.
//! - The task holds the source weakly: when no filter refers to the URL any more, the
//!   source and its task end.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::verify::{AlgSet, Key, KeySet};

/// Largest JWKS document accepted, in bytes.
pub const MAX_DOCUMENT: usize = 1 << 20;

/// How one source fetches and refreshes; the newest build's settings win.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksSettings {
    /// Time between background refreshes.
    pub refresh: Duration,
    /// Least time between two fetches asked for by unknown `kid`s (and between retries
    /// after a failure).
    pub min_refetch_interval: Duration,
    /// Timeout of one fetch.
    pub fetch_timeout: Duration,
}

/// The process-wide JWKS sources, by URL. Building takes its lock; requests never do.
#[derive(Clone, Default)]
pub struct JwksRegistry {
    inner: Arc<Mutex<HashMap<String, Weak<JwksSource>>>>,
    client: Arc<OnceLock<JwksClient>>,
}

impl std::fmt::Debug for JwksRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksRegistry")
            .field("sources", &self.inner.lock().len())
            .finish()
    }
}

impl JwksRegistry {
    /// The source for `url`, created (and its refresh task started on `runtime`) if no
    /// live filter uses it yet; an existing one takes `settings`. `default_algs` are the
    /// algorithms a JWK without `alg` may verify.
    pub fn source(
        &self,
        url: &str,
        settings: JwksSettings,
        default_algs: AlgSet,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Arc<JwksSource>, String> {
        let mut map = self.inner.lock();
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(src) = map.get(url).and_then(Weak::upgrade) {
            src.configure(settings, default_algs);
            return Ok(src);
        }
        let client = match self.client.get() {
            Some(c) => c.clone(),
            None => {
                let c = crate::outbound::client(
                    crate::outbound::public_roots(),
                    crate::outbound::Pool::default(),
                )
                .map_err(|e| format!("cannot build the JWKS HTTP client: {e}"))?;
                let _ = self.client.set(c.clone());
                c
            }
        };
        let (generation, _) = watch::channel(0u64);
        let src = Arc::new(JwksSource {
            url: url.to_string(),
            keys: ArcSwap::from_pointee(KeySet::default()),
            refresh_ms: AtomicU64::new(0),
            min_refetch_ms: AtomicU64::new(0),
            fetch_timeout_ms: AtomicU64::new(0),
            default_algs: AtomicU64::new(0),
            epoch: Instant::now(),
            last_fetch_ms: AtomicU64::new(0),
            fetched_once: AtomicBool::new(false),
            in_flight: AtomicBool::new(false),
            generation,
            client,
            runtime: runtime.clone(),
        });
        src.configure(settings, default_algs);
        map.insert(url.to_string(), Arc::downgrade(&src));
        src.in_flight.store(true, Ordering::SeqCst);
        runtime.spawn(refresh_loop(Arc::downgrade(&src)));
        Ok(src)
    }

    /// How many sources are alive (for tests).
    pub fn live(&self) -> usize {
        self.inner
            .lock()
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

/// One JWKS URL's key set and fetch state.
pub struct JwksSource {
    url: String,
    keys: ArcSwap<KeySet>,
    refresh_ms: AtomicU64,
    min_refetch_ms: AtomicU64,
    fetch_timeout_ms: AtomicU64,
    default_algs: AtomicU64,
    epoch: Instant,
    /// When the last fetch started, in ms since `epoch`.
    last_fetch_ms: AtomicU64,
    fetched_once: AtomicBool,
    in_flight: AtomicBool,
    /// Bumped after each fetch ends, whatever its outcome.
    generation: watch::Sender<u64>,
    client: JwksClient,
    runtime: tokio::runtime::Handle,
}

impl JwksSource {
    fn configure(&self, s: JwksSettings, default_algs: AlgSet) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.refresh_ms.store(ms(s.refresh), Ordering::Relaxed);
        self.min_refetch_ms
            .store(ms(s.min_refetch_interval), Ordering::Relaxed);
        self.fetch_timeout_ms
            .store(ms(s.fetch_timeout), Ordering::Relaxed);
        self.default_algs
            .store(u64::from(default_algs.bits()), Ordering::Relaxed);
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The current key set (a lock-free load).
    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Asks for a refetch because a token names a key the set lacks, and waits for it at
    /// most `wait`. Returns whether a fetch ended meanwhile (the caller then looks at the
    /// set again). At most one fetch starts per `min_refetch_interval`.
    pub async fn refetch(self: &Arc<Self>, wait: Duration) -> bool {
        let mut rx = self.generation.subscribe();
        if !self.in_flight.load(Ordering::Acquire) {
            let now = self.now_ms();
            let last = self.last_fetch_ms.load(Ordering::Acquire);
            let min = self.min_refetch_ms.load(Ordering::Relaxed);
            let due = !self.fetched_once.load(Ordering::Acquire) || now.saturating_sub(last) >= min;
            if !due {
                return false;
            }
            if self
                .in_flight
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let me = self.clone();
                self.runtime.spawn(async move {
                    me.fetch_once().await;
                });
            }
        }
        if wait.is_zero() {
            return false;
        }
        matches!(tokio::time::timeout(wait, rx.changed()).await, Ok(Ok(())))
    }

    /// Fetches once (the caller has set `in_flight`), publishes the set if it parsed,
    /// and wakes the waiters.
    async fn fetch_once(&self) -> bool {
        self.last_fetch_ms.store(self.now_ms(), Ordering::Release);
        let timeout = Duration::from_millis(self.fetch_timeout_ms.load(Ordering::Relaxed));
        let algs = AlgSet::from_bits(self.default_algs.load(Ordering::Relaxed));
        let ok = match fetch(&self.client, &self.url, timeout).await {
            Ok(body) => match parse_jwks(&body, algs) {
                Ok(set) => {
                    tracing::debug!(url = %sluice_config::secret::redact_url(&self.url), keys = set.keys.len(), "JWKS fetched");
                    self.keys.store(Arc::new(set));
                    true
                }
                Err(e) => {
                    tracing::warn!(url = %sluice_config::secret::redact_url(&self.url), "JWKS document refused, keeping the last good key set: {e}");
                    false
                }
            },
            Err(e) => {
                tracing::warn!(url = %sluice_config::secret::redact_url(&self.url), "JWKS fetch failed, keeping the last good key set: {e}");
                false
            }
        };
        self.fetched_once.store(true, Ordering::Release);
        self.in_flight.store(false, Ordering::Release);
        self.generation.send_modify(|g| *g += 1);
        ok
    }
}

async fn refresh_loop(src: Weak<JwksSource>) {
    loop {
        let next = {
            let Some(s) = src.upgrade() else { return };
            // The first fetch was marked in flight when the source was made; later ones
            // skip a turn when an unknown-kid refetch is running.
            let ok = if s.fetched_once.load(Ordering::Acquire) {
                if s.in_flight
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    s.fetch_once().await
                } else {
                    true
                }
            } else {
                s.fetch_once().await
            };
            let ms = if ok {
                s.refresh_ms.load(Ordering::Relaxed)
            } else {
                s.min_refetch_ms.load(Ordering::Relaxed).max(100)
            };
            Duration::from_millis(ms.max(100))
        };
        // Sleep in short steps so a source nobody uses any more ends soon.
        let until = tokio::time::Instant::now() + next;
        while tokio::time::Instant::now() < until {
            if src.strong_count() == 0 {
                return;
            }
            let step = (until - tokio::time::Instant::now()).min(Duration::from_secs(1));
            tokio::time::sleep(step).await;
        }
    }
}

/// The client JWKS documents are fetched with (the gateway's one outbound stack).
type JwksClient = crate::outbound::HttpClient<http_body_util::Empty<bytes::Bytes>>;

async fn fetch(client: &JwksClient, url: &str, timeout: Duration) -> Result<bytes::Bytes, String> {
    let get = crate::outbound::Get {
        url,
        accept: Some("application/json, application/jwk-set+json"),
        timeout,
        max_bytes: MAX_DOCUMENT,
        redirects: 3,
    };
    crate::outbound::get(client, &get).await
}

/// Parses a JWKS document. Keys for encryption (`use: enc`), symmetric keys (`kty:
/// oct`) and keys of unsupported types are skipped; a key with `alg` verifies that
/// algorithm only, one without verifies `default_algs` within its family.
pub fn parse_jwks(body: &[u8], default_algs: AlgSet) -> Result<KeySet, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut set = KeySet::default();
    for raw in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            continue;
        };
        if let Some(k) = jwk_key(&jwk, default_algs) {
            set.keys.push(k);
        }
    }
    Ok(set)
}

/// One JWK as a verification key; `None` when it is not a usable signature key.
pub fn jwk_key(jwk: &Jwk, default_algs: AlgSet) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    if key.family() == AlgorithmFamily::Hmac {
        return None;
    }
    let algs = match &jwk.common.key_algorithm {
        Some(a) => {
            let name = serde_json::to_value(a).ok()?;
            AlgSet::one(Algorithm::from_str(name.as_str()?).ok()?)
        }
        None => default_algs,
    };
    Key::new(jwk.common.key_id.as_deref().map(Arc::from), key, algs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::jwt::verify::ALL_ALGORITHMS;

    #[test]
    fn jwks_documents_keep_signature_keys_only() {
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig",
             "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
             "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "sXch", "e": "AQAB"},
            {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "e1", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "XYZ", "kid": "strange"}
        ]});
        let set = parse_jwks(doc.to_string().as_bytes(), AlgSet::of(ALL_ALGORITHMS)).unwrap();
        let kids: Vec<&str> = set.keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, ["r1", "e1"]);
        assert_eq!(set.keys[0].algs, AlgSet::one(Algorithm::RS256));
        assert!(set.keys[1].algs.contains(Algorithm::ES256));
        assert!(!set.keys[1].algs.contains(Algorithm::HS256));
        assert!(parse_jwks(b"{}", AlgSet::EMPTY).is_err());
    }
}
