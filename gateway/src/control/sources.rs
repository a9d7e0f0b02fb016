//! The config loop: turns what the sources say into published snapshots.
//!
//! The config comes from a list of [`Source`]s (`sluice_sources::source`): the file (or
//! directory) first, giving the base document (server, admin, listeners, and any routes
//! and upstreams written there), then etcd when configured, adding its routes and
//! upstreams ([`sluice_sources::compose_all`]). Each source runs as its own task and
//! publishes its newest state. The loop, on the admin runtime:
//!
//! - wakes when any source publishes, and when SIGHUP asks every source to read again
//!   (the file source re-reads, and publishes even when nothing changed);
//! - when any source's content changed, composes the newest content of every source,
//!   validates and compiles on a blocking thread, and publishes with one store
//!   ([`Gateway::apply`]). While one apply runs, further changes replace each other in
//!   the sources' channels and only the newest is applied next: bursts coalesce, with no
//!   fixed throttle;
//! - keeps `/api/v1/config`'s source status and the source metrics current.
//!
//! Nothing is applied until every source has answered. At start with etcd configured the
//! gateway is therefore not ready (503, `/readyz` says so) until etcd answers, or until
//! its cache file is served when etcd does not answer within the connect timeout (the
//! etcd source decides that).

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use sluice_config::{Config, ConfigErrors};
use sluice_sources::etcd::EtcdOptions;
use sluice_sources::source::{EtcdSource, FileSource};
use sluice_sources::{
    compose, compose_all, file, Content, Publisher, Resources, Source, SourceContext, SourceState,
};
use tokio::sync::{watch, Notify};

use crate::control::gateway::Gateway;
use crate::control::snapshot::Provenance;

/// Where the config comes from, as given on the command line.
#[derive(Clone)]
pub struct Sources {
    /// The config file or directory.
    pub file: PathBuf,
    /// Watch the file for changes (SIGHUP re-reads it either way). Default: `true`.
    pub watch: bool,
    /// etcd, for routes and upstreams. Default: none.
    pub etcd: Option<EtcdOptions>,
    /// This replica's id among the replicas sharing [`Sources::etcd`] (rollout leadership
    /// and figures; `--replica-id`). Default: none, meaning
    /// [`crate::rollout::etcd_store::default_replica_id`].
    pub replica_id: Option<String>,
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

    /// The sources to follow, in compose order: the file (starting from `base`, the
    /// document the gateway started from, and its hash), then etcd.
    pub fn list(&self, base: Value, base_hash: String) -> Vec<Box<dyn Source>> {
        let kubernetes = kubernetes_config(&base);
        // The listeners are bound at start: Gateway listeners bind to them by port.
        let listeners: Vec<sluice_config::model::ListenerConfig> = base
            .get("listeners")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        let mut list: Vec<Box<dyn Source>> = vec![Box::new(
            FileSource::new(self.file.clone(), self.watch).starting_from(base, base_hash),
        )];
        if let Some(opts) = &self.etcd {
            list.push(Box::new(EtcdSource::new(opts.clone())));
        }
        if let Some(cfg) = kubernetes {
            list.push(Box::new(
                sluice_kube::KubernetesSource::new(cfg).with_listeners(listeners),
            ));
        }
        list
    }
}

/// The document's `kubernetes` section, when it has one that reads (validation reports
/// one that does not). Read once at start: changing it needs a restart.
fn kubernetes_config(base: &Value) -> Option<sluice_config::kubernetes::KubernetesConfig> {
    let v = base.get("kubernetes").filter(|v| !v.is_null())?;
    match serde_json::from_value(v.clone()) {
        Ok(cfg) => Some(cfg),
        Err(e) => {
            tracing::error!("kubernetes: {e}; the Kubernetes source is off");
            None
        }
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

/// Runs the config loop on `sources` until the process ends. `base` is the document and
/// hash the gateway started from.
pub async fn run(gateway: Arc<Gateway>, sources: Sources, base: Value, base_hash: String) {
    follow(gateway, sources.list(base, base_hash)).await;
}

/// One source the loop follows.
struct Followed {
    name: &'static str,
    describe: String,
    rx: watch::Receiver<SourceState>,
    /// The generation of the content last taken into account.
    seen: u64,
    _task: AbortOnDrop,
}

/// Aborts a source's task when the loop ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What composing needs, owned, for a blocking thread.
struct ComposeInputs {
    base: Result<Value, ConfigErrors>,
    origin: String,
    sets: Vec<(String, Arc<Resources>)>,
}

impl ComposeInputs {
    /// The inputs from every source's newest content; `None` while a source has not
    /// answered yet. The first document is the base; a source list without one starts
    /// from an empty document.
    fn from(states: &[SourceState]) -> Option<ComposeInputs> {
        let mut inputs = ComposeInputs {
            base: Ok(Value::Null),
            origin: String::new(),
            sets: Vec::new(),
        };
        let mut have_base = false;
        for state in states {
            match state.content.as_ref()? {
                Content::Document { value, origin } if !have_base => {
                    inputs.base = value.clone();
                    inputs.origin = origin.clone();
                    have_base = true;
                }
                Content::Document { origin, .. } => {
                    tracing::warn!("config source {origin}: only the first document is used");
                }
                Content::Resources { prefix, resources } => {
                    inputs.sets.push((prefix.clone(), resources.clone()));
                }
            }
        }
        Some(inputs)
    }

    fn compose(self) -> Result<Config, ConfigErrors> {
        let sets: Vec<(&str, &Resources)> = self.sets.iter().map(|(p, r)| (p.as_str(), &**r)).collect();
        compose_all(self.base?, &self.origin, &sets)
    }
}

/// Where the content comes from: every source's description, `(cache)` when any serves
/// a fallback, and the revision of the first source that has one.
fn provenance(followed: &[Followed], states: &[SourceState]) -> Provenance {
    let mut source = followed
        .iter()
        .map(|f| f.describe.as_str())
        .collect::<Vec<_>>()
        .join(" + ");
    if states.iter().any(|s| s.cached) {
        source.push_str(" (cache)");
    }
    Provenance {
        source,
        revision: states.iter().find_map(|s| s.revision),
    }
}

/// Follows `sources` (in compose order) until the process ends: see the module docs.
pub async fn follow(gateway: Arc<Gateway>, sources: Vec<Box<dyn Source>>) {
    let wake = Arc::new(Notify::new());
    let (refresh, refresh_rx) = watch::channel(0u64);
    let mut followed: Vec<Followed> = sources
        .into_iter()
        .map(|source| {
            let initial = source.initial();
            let seen = initial.generation;
            let (out, rx) = Publisher::new(initial, wake.clone());
            let name = source.name();
            let describe = source.describe();
            let ctx = SourceContext {
                out,
                refresh: refresh_rx.clone(),
                check: crate::control::validate::route_check(),
            };
            Followed {
                name,
                describe,
                rx,
                seen,
                _task: AbortOnDrop(tokio::spawn(source.run(ctx))),
            }
        })
        .collect();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let metrics = gateway.metrics.clone();

    loop {
        let mut changed = false;
        let mut status = Vec::with_capacity(followed.len());
        let mut states = Vec::with_capacity(followed.len());
        for f in &mut followed {
            let state = f.rx.borrow_and_update().clone();
            if let Some(c) = state.connected {
                metrics
                    .source_connected
                    .with_label_values(&[f.name])
                    .set(i64::from(c));
            }
            if let (Some(rev), false) = (state.revision, state.cached) {
                metrics.source_revision.set(rev);
            }
            status.push(state.status.clone());
            changed |= state.generation != f.seen;
            f.seen = state.generation;
            states.push(state);
        }
        gateway.set_source_status(Value::Array(status));
        if changed {
            if let Some(inputs) = ComposeInputs::from(&states) {
                let (g, provenance) = (gateway.clone(), provenance(&followed, &states));
                // On a blocking thread, so the admin API keeps answering while a large
                // config compiles.
                let _ = tokio::task::spawn_blocking(move || g.apply(inputs.compose(), provenance)).await;
            }
        }
        tokio::select! {
            () = wake.notified() => {}
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                refresh.send_modify(|n| *n += 1);
            }
        }
    }
}
