//! Where rollout state lives and how replicas agree on it: the [`RolloutStore`] seam.
//!
//! A rollout's state (its step, the last analysis, the history of decisions) is stored
//! as opaque bytes (JSON written by the controller) under the route's id, with a
//! revision so that writers compare and swap. One replica decides
//! ([`RolloutStore::is_leader`]); every replica reads the stored state and serves its
//! weights. Each replica publishes its own cumulative per-backend figures
//! ([`RolloutStore::publish_stats`]) so that the leader judges the sum of all replicas'
//! traffic ([`RolloutStore::replica_stats`]).
//!
//! Two implementations: [`LocalStore`] (one process; state in memory, and in a file
//! when given a directory, so it survives a restart) and the etcd store (several
//! replicas; leadership through an etcd lease).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;
use sluice_core::split::StatsSample;

/// A stored rollout state and its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The state as the controller wrote it (JSON).
    pub state: Vec<u8>,
    /// The revision to pass to [`RolloutStore::store`] to replace it; never 0.
    pub revision: u64,
}

/// A store failure (the store is unreachable, or its data is unreadable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rollout store: {0}")]
pub struct StoreError(pub String);

/// Where rollout state lives and who decides. See the module docs.
#[async_trait]
pub trait RolloutStore: Send + Sync + 'static {
    /// The stored state of `route`'s rollout, if any.
    async fn load(&self, route: &str) -> Result<Option<Stored>, StoreError>;

    /// Replaces `route`'s state with `state` if its revision is still `revision` (`0`:
    /// nothing is stored). `Ok(false)` when another writer came first (load and retry).
    async fn store(&self, route: &str, revision: u64, state: &[u8]) -> Result<bool, StoreError>;

    /// Deletes `route`'s state (its rollout left the config).
    async fn delete(&self, route: &str) -> Result<(), StoreError>;

    /// Whether this replica decides now. A local store always does.
    fn is_leader(&self) -> bool;

    /// This replica's id (stable for the life of the process).
    fn replica(&self) -> &str;

    /// Publishes this replica's cumulative figures for `route`, one per backend in the
    /// route's backend order.
    async fn publish_stats(&self, route: &str, samples: &[StatsSample]) -> Result<(), StoreError>;

    /// The last figures every live replica published for `route`, by replica id. A
    /// replica's counts only grow while it lives; a restarted replica starts from zero
    /// (the caller diffs per replica and treats a decrease as a restart).
    async fn replica_stats(&self, route: &str) -> Result<Vec<(String, Vec<StatsSample>)>, StoreError>;
}

/// One process's store: state in memory and, with a directory, in one JSON file per
/// route there (written atomically), so a restarted process continues its rollouts.
#[derive(Debug)]
pub struct LocalStore {
    dir: Option<PathBuf>,
    replica: String,
    inner: Mutex<LocalInner>,
}

#[derive(Debug, Default)]
struct LocalInner {
    states: HashMap<String, Stored>,
    stats: HashMap<String, Vec<StatsSample>>,
}

impl LocalStore {
    /// A store keeping state in memory only.
    pub fn in_memory() -> LocalStore {
        LocalStore {
            dir: None,
            replica: "local".into(),
            inner: Mutex::default(),
        }
    }

    /// A store keeping state in `dir` (created if missing), reading what is there.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Result<LocalStore, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| StoreError(format!("{}: {e}", dir.display())))?;
        let mut states = HashMap::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| StoreError(format!("{}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(route) = name.strip_suffix(".rollout.json") else {
                continue;
            };
            let state = std::fs::read(&path).map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
            states.insert(unescape(route), Stored { state, revision: 1 });
        }
        Ok(LocalStore {
            dir: Some(dir),
            replica: "local".into(),
            inner: Mutex::new(LocalInner {
                states,
                stats: HashMap::new(),
            }),
        })
    }

    fn path(&self, route: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{}.rollout.json", escape(route))))
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, LocalInner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError("state lock poisoned".into()))
    }
}

/// Route ids are free text; file names keep `[A-Za-z0-9._-]` and escape the rest.
fn escape(route: &str) -> String {
    let mut out = String::new();
    for b in route.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && !out.is_empty()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(v) = name
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[async_trait]
impl RolloutStore for LocalStore {
    async fn load(&self, route: &str) -> Result<Option<Stored>, StoreError> {
        Ok(self.lock()?.states.get(route).cloned())
    }

    async fn store(&self, route: &str, revision: u64, state: &[u8]) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        let current = inner.states.get(route).map_or(0, |s| s.revision);
        if current != revision {
            return Ok(false);
        }
        if let Some(path) = self.path(route) {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, state)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        }
        inner.states.insert(
            route.to_string(),
            Stored {
                state: state.to_vec(),
                revision: current + 1,
            },
        );
        Ok(true)
    }

    async fn delete(&self, route: &str) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        inner.states.remove(route);
        if let Some(path) = self.path(route) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError(format!("{}: {e}", path.display()))),
            }
        }
        Ok(())
    }

    fn is_leader(&self) -> bool {
        true
    }

    fn replica(&self) -> &str {
        &self.replica
    }

    async fn publish_stats(&self, route: &str, samples: &[StatsSample]) -> Result<(), StoreError> {
        self.lock()?.stats.insert(route.to_string(), samples.to_vec());
        Ok(())
    }

    async fn replica_stats(&self, route: &str) -> Result<Vec<(String, Vec<StatsSample>)>, StoreError> {
        Ok(self
            .lock()?
            .stats
            .get(route)
            .map(|s| vec![(self.replica.clone(), s.clone())])
            .unwrap_or_default())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn compare_and_swap_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::in_dir(dir.path()).unwrap();
        assert!(store.load("r/1").await.unwrap().is_none());
        assert!(store.store("r/1", 0, b"{\"step\":1}").await.unwrap());
        assert!(
            !store.store("r/1", 0, b"{\"step\":2}").await.unwrap(),
            "stale revision refused"
        );
        let s = store.load("r/1").await.unwrap().unwrap();
        assert!(store.store("r/1", s.revision, b"{\"step\":2}").await.unwrap());
        drop(store);
        let again = LocalStore::in_dir(dir.path()).unwrap();
        assert_eq!(again.load("r/1").await.unwrap().unwrap().state, b"{\"step\":2}");
        again.delete("r/1").await.unwrap();
        assert!(LocalStore::in_dir(dir.path())
            .unwrap()
            .load("r/1")
            .await
            .unwrap()
            .is_none());
    }

    #[test]
    fn route_ids_round_trip_through_file_names() {
        for id in ["plain", "a/b", ".hidden", "ünï", "x%y"] {
            assert_eq!(unescape(&escape(id)), id);
        }
    }
}
