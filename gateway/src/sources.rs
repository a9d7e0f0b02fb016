//! The config loop: turns what the sources say into published snapshots.
//!
//! The file (or directory) gives the base document: server, admin, listeners, and any
//! routes and upstreams written there. etcd, when configured, adds its routes and
//! upstreams ([`sluice_config::source::compose`]). The loop, on the admin runtime:
//!
//! - re-reads the file when its watcher fires (or on SIGHUP), and ignores a change that
//!   leaves the parsed content the same;
//! - takes the newest etcd [`Resources`] when the watch publishes;
//! - composes, validates and compiles on a blocking thread, and publishes with one store
//!   ([`Gateway::apply`]). While one apply runs, further changes pile up in the sources'
//!   `watch` channels and only the newest is applied next: bursts coalesce, with no fixed
//!   throttle.
//!
//! At start with etcd configured the gateway is not ready (503, `/readyz` says so) until
//! etcd answers. If it does not answer within [`EtcdOptions::connect_timeout`] and a
//! cache file is configured and readable, the cached resources are served meanwhile.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_config::source::etcd::{self, EtcdOptions, EtcdWatch};
use sluice_config::source::{compose, file, Resources};
use sluice_config::{Config, ConfigErrors};

use crate::gateway::Gateway;
use crate::snapshot::Provenance;

/// Where the config comes from.
#[derive(Clone)]
pub struct Sources {
    /// The config file or directory.
    pub file: PathBuf,
    /// Watch the file for changes (SIGHUP re-reads it either way). Default: `true`.
    pub watch: bool,
    /// etcd, for routes and upstreams. Default: none.
    pub etcd: Option<EtcdOptions>,
}

impl Sources {
    /// `file:<path>`, plus ` + etcd:<prefix>` with etcd.
    pub fn describe(&self) -> String {
        match &self.etcd {
            Some(e) => format!("file:{} + etcd:{}", self.file.display(), e.prefix),
            None => format!("file:{}", self.file.display()),
        }
    }

    fn origin(&self) -> String {
        self.file.display().to_string()
    }
}

/// The config to start with: the file composed alone. With etcd, a file whose routes
/// refer to upstreams kept in etcd cannot stand alone, so its routes and upstreams are
/// left out until etcd answers. Returns the config, the base document and its hash.
pub fn initial(sources: &Sources) -> Result<(Config, Value, String), ConfigErrors> {
    let (base, hash) = file::load(&sources.file)?;
    match compose(base.clone(), &sources.origin(), None) {
        Ok(c) => Ok((c, base, hash)),
        Err(e) if sources.etcd.is_none() => Err(e),
        Err(e) => {
            let mut bare = base.clone();
            if let Some(m) = bare.as_object_mut() {
                m.remove("routes");
                m.remove("upstreams");
            }
            compose(bare, &sources.origin(), None)
                .map(|c| (c, base, hash))
                .map_err(|_| e)
        }
    }
}

/// What the loop knows of its sources.
struct State {
    sources: Sources,
    base: Result<Value, ConfigErrors>,
    base_hash: Option<String>,
    resources: Option<Arc<Resources>>,
    from_cache: bool,
}

impl State {
    fn reload_file(&mut self) -> bool {
        match file::load(&self.sources.file) {
            Ok((value, hash)) => {
                if self.base.is_ok() && self.base_hash.as_deref() == Some(hash.as_str()) {
                    return false;
                }
                self.base = Ok(value);
                self.base_hash = Some(hash);
            }
            Err(e) => {
                self.base = Err(e);
                self.base_hash = None;
            }
        }
        true
    }

    fn provenance(&self) -> Provenance {
        let mut source = self.sources.describe();
        if self.from_cache {
            source.push_str(" (cache)");
        }
        Provenance {
            source,
            revision: self.resources.as_ref().map(|r| r.revision),
        }
    }

    /// What composing needs, owned, for a blocking thread.
    fn inputs(&self) -> ComposeInputs {
        ComposeInputs {
            base: self.base.clone(),
            origin: self.sources.origin(),
            prefix: self
                .sources
                .etcd
                .as_ref()
                .map(|e| e.prefix.trim_end_matches('/').to_string()),
            resources: self.resources.clone(),
        }
    }
}

struct ComposeInputs {
    base: Result<Value, ConfigErrors>,
    origin: String,
    prefix: Option<String>,
    resources: Option<Arc<Resources>>,
}

impl ComposeInputs {
    fn compose(self) -> Result<Config, ConfigErrors> {
        let etcd = self.prefix.as_deref().zip(self.resources.as_deref());
        compose(self.base?, &self.origin, etcd)
    }
}

/// Composes, validates, compiles and publishes on a blocking thread, so the admin API
/// keeps answering while a large config compiles.
async fn apply(gateway: &Arc<Gateway>, state: &State) {
    if state.sources.etcd.is_some() && state.resources.is_none() {
        return;
    }
    let (g, inputs, provenance) = (gateway.clone(), state.inputs(), state.provenance());
    let _ = tokio::task::spawn_blocking(move || g.apply(inputs.compose(), provenance)).await;
}

fn status(state: &State, watch: Option<&EtcdWatch>) -> Value {
    let mut list = vec![json!({
        "kind": "file",
        "path": state.sources.file.display().to_string(),
        "watched": state.sources.watch,
        "hash": state.base_hash,
        "error": state.base.as_ref().err().map(ToString::to_string),
    })];
    if let (Some(opts), Some(w)) = (&state.sources.etcd, watch) {
        list.push(json!({
            "kind": "etcd",
            "endpoints": opts.endpoints,
            "prefix": opts.prefix,
            "connected": *w.connected.borrow(),
            "revision": w.stats.revision(),
            "relists": w.stats.relists(),
            "reconnects": w.stats.reconnects(),
            "serving_cache": state.from_cache,
        }));
    }
    Value::Array(list)
}

/// Runs the config loop until the process ends. `base` is the document and hash the
/// gateway started from.
pub async fn run(gateway: Arc<Gateway>, sources: Sources, base: Value, base_hash: String) {
    let mut watcher = if sources.watch {
        match file::watch(&sources.file, file::DEFAULT_DEBOUNCE) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(
                    "cannot watch {}: {e}; only SIGHUP reloads it",
                    sources.file.display()
                );
                None
            }
        }
    } else {
        None
    };
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let etcd_watch = sources.etcd.clone().map(etcd::spawn_watch);
    // Receivers of their own, so that `select!` can wait on both at once.
    let mut resources_rx = etcd_watch.as_ref().map(|w| w.resources.clone());
    let mut connected_rx = etcd_watch.as_ref().map(|w| w.connected.clone());
    let connect_timeout = sources
        .etcd
        .as_ref()
        .map_or(Duration::ZERO, |e| e.connect_timeout);
    let cache = sources.etcd.as_ref().and_then(|e| e.cache.clone());
    let mut state = State {
        sources,
        base: Ok(base),
        base_hash: Some(base_hash),
        resources: None,
        from_cache: false,
    };
    let metrics = gateway.metrics.clone();

    if let Some(rx) = resources_rx.as_mut() {
        let first = tokio::time::timeout(connect_timeout, rx.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|r| (*r).clone()));
        match first {
            Some(r) => state.resources = Some(r),
            None => {
                if let Some(cached) = cache.as_deref().and_then(etcd::load_cache) {
                    tracing::warn!(
                        revision = cached.revision,
                        "etcd did not answer in {connect_timeout:?}; serving the cached config"
                    );
                    state.resources = Some(Arc::new(cached));
                    state.from_cache = true;
                } else {
                    tracing::warn!("etcd did not answer in {connect_timeout:?}; not ready until it does");
                }
            }
        }
        if state.resources.is_some() {
            apply(&gateway, &state).await;
        }
    }

    loop {
        if let Some(w) = &etcd_watch {
            metrics
                .source_connected
                .with_label_values(&["etcd"])
                .set(i64::from(*w.connected.borrow()));
            metrics.source_revision.set(w.stats.revision());
        }
        gateway.set_source_status(status(&state, etcd_watch.as_ref()));
        let changed = tokio::select! {
            Some(_) = async {
                match watcher.as_mut() {
                    Some(w) => Some(w.changed().await),
                    None => std::future::pending().await,
                }
            } => state.reload_file(),
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                state.reload_file();
                true
            }
            Some(r) = async {
                match resources_rx.as_mut() {
                    Some(rx) => match rx.changed().await {
                        Ok(()) => Some(rx.borrow_and_update().clone()),
                        Err(_) => std::future::pending().await,
                    },
                    None => std::future::pending().await,
                }
            } => {
                let fresh = r.is_some();
                if fresh {
                    state.resources = r;
                    state.from_cache = false;
                }
                fresh
            }
            Some(()) = async {
                match connected_rx.as_mut() {
                    Some(rx) => rx.changed().await.ok(),
                    None => std::future::pending().await,
                }
            } => false,
        };
        if changed {
            apply(&gateway, &state).await;
        }
    }
}
