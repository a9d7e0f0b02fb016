//! The one trait every config source implements, and the two sources Sluice has: the
//! file (or directory) and etcd.
//!
//! A source runs as its own task and publishes [`SourceState`]s through a [`Publisher`]:
//! what it contributes to the config ([`Content`]), and its status for the admin API and
//! the metrics. The consumer (the gateway's config loop) follows a list of sources,
//! `Vec<Box<dyn Source>>`, composes the newest content of each with
//! [`crate::compose_all`] and publishes the result. Each publish replaces the previous
//! state, so a consumer that falls behind sees only the newest: bursts coalesce.
//!
//! A new kind of source (Kubernetes resources, say) is one more implementation: it
//! publishes [`Content::Resources`] under a prefix of its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_config::ConfigErrors;
use tokio::sync::{watch, Notify};

use crate::compose::Resources;
use crate::etcd::{self, EtcdOptions};
use crate::file;

/// What a source contributes to the config.
#[derive(Debug, Clone)]
pub enum Content {
    /// A whole document: `server`, `admin`, `listeners`, and any routes and upstreams.
    /// The first source of the list gives it (the file); when it could not be read, the
    /// errors say why, and the config built from it is rejected.
    Document {
        /// The document, or why it could not be read.
        value: Result<Value, ConfigErrors>,
        /// Where it came from, put in front of its error paths (`sluice.yaml`).
        origin: String,
    },
    /// Routes and upstreams by id, added to the document; errors name `{prefix}/{kind}/{id}`.
    Resources {
        /// The key prefix the resources live under, without a trailing `/` (`/sluice`).
        prefix: String,
        /// The resources.
        resources: Arc<Resources>,
    },
}

/// What one source says now.
#[derive(Debug, Clone, Default)]
pub struct SourceState {
    /// What the source contributes; `None` until it first answers. Nothing is composed
    /// until every source has answered. Default: `None`.
    pub content: Option<Content>,
    /// Bumped by every publish of content, also of content equal to the last (an
    /// explicit re-read asks for a re-apply); a status-only update leaves it. Default: 0.
    pub generation: u64,
    /// The content is a fallback (a cache file), not what the source says live.
    /// Default: `false`.
    pub cached: bool,
    /// The source's revision of the content, for sources that have one (etcd).
    /// Default: none.
    pub revision: Option<i64>,
    /// Whether the source is connected, for sources with a connection (etcd).
    /// Default: none.
    pub connected: Option<bool>,
    /// Status for `/api/v1/config`: a JSON object with at least `kind`. Default: null.
    pub status: Value,
}

/// Hands a source's states to its consumer: each publish replaces the previous state and
/// wakes the consumer.
pub struct Publisher {
    tx: watch::Sender<SourceState>,
    wake: Arc<Notify>,
}

impl Publisher {
    /// A publisher starting from `initial`, the receiver its consumer reads, and `wake`
    /// notified (`notify_one`, so a wake-up is never lost) after every publish. Several
    /// publishers may share one `wake`.
    pub fn new(initial: SourceState, wake: Arc<Notify>) -> (Publisher, watch::Receiver<SourceState>) {
        let (tx, rx) = watch::channel(initial);
        (Publisher { tx, wake }, rx)
    }

    /// Changes the state (status, connection) without publishing new content.
    pub fn update(&self, change: impl FnOnce(&mut SourceState)) {
        self.tx.send_modify(change);
        self.wake.notify_one();
    }

    /// Publishes new content (bumping [`SourceState::generation`]), with `change`
    /// applied to the rest of the state.
    pub fn publish(&self, content: Content, change: impl FnOnce(&mut SourceState)) {
        self.update(|s| {
            s.content = Some(content);
            s.generation += 1;
            change(s);
        });
    }

    /// Whether every receiver is gone (the consumer stopped).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// What a running source gets from its consumer.
pub struct SourceContext {
    /// Where to publish.
    pub out: Publisher,
    /// Changes when the operator asks every source to read again (SIGHUP). A source
    /// that can re-read does, and publishes even when nothing changed; others ignore it.
    pub refresh: watch::Receiver<u64>,
    /// The route check of the one validation path (`sluice_config::check`): what the
    /// filter kinds, which sources do not depend on, say about a config's routes. A
    /// source that must check a route on its own (the Kubernetes source leaves out a
    /// route its objects make invalid) asks this.
    pub check: Arc<dyn sluice_config::RouteCheck>,
}

/// Waits for the next refresh request; never returns once the sender is gone.
async fn refreshed(refresh: &mut watch::Receiver<u64>) {
    if refresh.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A config source: a file, etcd, and next Kubernetes.
#[async_trait::async_trait]
pub trait Source: Send {
    /// A fixed short name (`file`, `etcd`): the `source` label of the metrics.
    fn name(&self) -> &'static str;

    /// What it reads, for the provenance of a config: `file:<path>`, `etcd:<prefix>`.
    fn describe(&self) -> String;

    /// The state before [`Source::run`] starts: what the consumer already holds from
    /// this source (the document the gateway started from), or, by default, nothing yet.
    fn initial(&self) -> SourceState {
        SourceState::default()
    }

    /// Follows the source, publishing each change through `ctx.out`. Runs until the task
    /// is dropped; never panics.
    async fn run(self: Box<Self>, ctx: SourceContext);
}

/// The file source: a config file or a directory of them, re-read when its watcher sees
/// a change and on every refresh.
pub struct FileSource {
    path: PathBuf,
    watch: bool,
    debounce: Duration,
    start: Option<(Value, String)>,
}

impl FileSource {
    /// The file or directory at `path`, watched for changes when `watch` is true (a
    /// refresh re-reads it either way), debounced by [`file::DEFAULT_DEBOUNCE`].
    pub fn new(path: PathBuf, watch: bool) -> Self {
        Self {
            path,
            watch,
            debounce: file::DEFAULT_DEBOUNCE,
            start: None,
        }
    }

    /// Starts from a document already read (and its hash, from [`file::load`]): it is
    /// the initial state, published again only if the file has changed by the time the
    /// watcher is set. Without it the source reads and publishes the file as soon as it
    /// runs.
    #[must_use]
    pub fn starting_from(mut self, document: Value, hash: String) -> Self {
        self.start = Some((document, hash));
        self
    }

    fn origin(&self) -> String {
        self.path.display().to_string()
    }

    fn status(&self, hash: Option<&str>, error: Option<&ConfigErrors>) -> Value {
        json!({
            "kind": "file",
            "path": self.origin(),
            "watched": self.watch,
            "hash": hash,
            "error": error.map(ToString::to_string),
        })
    }

    /// Reads the file and publishes it, unless `force` is false and the content is the
    /// same as the last good read (`hash`).
    fn read(&self, out: &Publisher, hash: &mut Option<String>, force: bool) {
        let (value, new_hash) = match file::load(&self.path) {
            Ok((value, h)) => {
                if !force && hash.as_deref() == Some(h.as_str()) {
                    return;
                }
                (Ok(value), Some(h))
            }
            Err(e) => (Err(e), None),
        };
        let status = self.status(new_hash.as_deref(), value.as_ref().err());
        *hash = new_hash;
        let content = Content::Document {
            value,
            origin: self.origin(),
        };
        out.publish(content, |s| s.status = status);
    }
}

#[async_trait::async_trait]
impl Source for FileSource {
    fn name(&self) -> &'static str {
        "file"
    }

    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn initial(&self) -> SourceState {
        match &self.start {
            Some((doc, hash)) => SourceState {
                content: Some(Content::Document {
                    value: Ok(doc.clone()),
                    origin: self.origin(),
                }),
                status: self.status(Some(hash), None),
                ..SourceState::default()
            },
            None => SourceState {
                status: self.status(None, None),
                ..SourceState::default()
            },
        }
    }

    async fn run(mut self: Box<Self>, mut ctx: SourceContext) {
        let mut watcher = if self.watch {
            match file::watch(&self.path, self.debounce) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::error!(
                        "cannot watch {}: {e}; only SIGHUP reloads it",
                        self.path.display()
                    );
                    None
                }
            }
        } else {
            None
        };
        // Read once now the watcher is set: a change made since the start document was
        // read would otherwise go unseen until the next one.
        let (mut hash, force) = match self.start.take() {
            Some((_, hash)) => (Some(hash), false),
            None => (None, true),
        };
        self.read(&ctx.out, &mut hash, force);
        loop {
            let force = tokio::select! {
                _ = async {
                    match watcher.as_mut() {
                        Some(w) => w.changed().await,
                        None => std::future::pending().await,
                    }
                } => false,
                () = refreshed(&mut ctx.refresh) => true,
            };
            self.read(&ctx.out, &mut hash, force);
        }
    }
}

/// The etcd source: routes and upstreams under a prefix, followed with a watch
/// ([`etcd::spawn_watch`]).
///
/// It has not answered until etcd has; when etcd does not answer within
/// [`EtcdOptions::connect_timeout`] and [`EtcdOptions::cache`] is readable, the cached
/// resources are published meanwhile, marked [`SourceState::cached`].
pub struct EtcdSource {
    opts: EtcdOptions,
}

impl EtcdSource {
    /// A source for the keys under `opts.prefix`.
    pub fn new(opts: EtcdOptions) -> Self {
        Self { opts }
    }

    fn content(&self, resources: Arc<Resources>) -> Content {
        Content::Resources {
            prefix: self.opts.prefix.trim_end_matches('/').to_string(),
            resources,
        }
    }
}

#[async_trait::async_trait]
impl Source for EtcdSource {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn describe(&self) -> String {
        format!("etcd:{}", self.opts.prefix)
    }

    fn initial(&self) -> SourceState {
        SourceState {
            connected: Some(false),
            status: json!({
                "kind": "etcd",
                "endpoints": self.opts.endpoints,
                "prefix": self.opts.prefix,
                "connected": false,
                "revision": 0,
                "relists": 0,
                "reconnects": 0,
                "serving_cache": false,
            }),
            ..SourceState::default()
        }
    }

    async fn run(self: Box<Self>, ctx: SourceContext) {
        let w = etcd::spawn_watch(self.opts.clone());
        let mut resources = w.resources.clone();
        let mut connected = w.connected.clone();
        let status = |cached: bool| {
            json!({
                "kind": "etcd",
                "endpoints": self.opts.endpoints,
                "prefix": self.opts.prefix,
                "connected": *w.connected.borrow(),
                "revision": w.stats.revision(),
                "relists": w.stats.relists(),
                "reconnects": w.stats.reconnects(),
                "serving_cache": cached,
            })
        };
        let timeout = self.opts.connect_timeout;
        let first = tokio::time::timeout(timeout, resources.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|r| (*r).clone()));
        let mut cached = false;
        match first {
            Some(r) => {
                let revision = r.revision;
                ctx.out.publish(self.content(r), |s| {
                    s.revision = Some(revision);
                    s.connected = Some(*w.connected.borrow());
                    s.status = status(false);
                });
            }
            None => match self.opts.cache.as_deref().and_then(etcd::load_cache) {
                Some(c) => {
                    tracing::warn!(
                        revision = c.revision,
                        "etcd did not answer in {timeout:?}; serving the cached config"
                    );
                    cached = true;
                    let revision = c.revision;
                    ctx.out.publish(self.content(Arc::new(c)), |s| {
                        s.cached = true;
                        s.revision = Some(revision);
                        s.status = status(true);
                    });
                }
                None => {
                    tracing::warn!("etcd did not answer in {timeout:?}; not ready until it does");
                }
            },
        }
        loop {
            tokio::select! {
                r = resources.changed() => {
                    if r.is_err() {
                        // The watch task is gone (it never ends on its own).
                        std::future::pending::<()>().await;
                    }
                    let Some(r) = resources.borrow_and_update().clone() else { continue };
                    cached = false;
                    let revision = r.revision;
                    ctx.out.publish(self.content(r), |s| {
                        s.cached = false;
                        s.revision = Some(revision);
                        s.connected = Some(*w.connected.borrow());
                        s.status = status(false);
                    });
                }
                r = connected.changed() => {
                    if r.is_err() {
                        std::future::pending::<()>().await;
                    }
                    let now = *connected.borrow_and_update();
                    ctx.out.update(|s| {
                        s.connected = Some(now);
                        s.status = status(cached);
                    });
                }
            }
        }
    }
}
