//! The etcd source: routes and upstreams stored one per key, kept current with a watch,
//! and the library side of the `sluice apply|get|diff` commands.
//!
//! Key layout under a prefix (default `/sluice`):
//!
//! - `{prefix}/routes/{id}`: one [`sluice_config::model::RouteConfig`], as JSON or YAML;
//! - `{prefix}/upstreams/{id}`: one [`sluice_config::model::UpstreamConfig`], as JSON or YAML;
//! - `{prefix}/consumers/{name}`: one [`sluice_config::model::ConsumerConfig`], as JSON or YAML.
//!
//! `{prefix}/consumers/{id}` and `{prefix}/filters/{id}` are reserved and reported as not
//! supported yet; any other key under the prefix is an error naming the key.
//!
//! `{prefix}/rollouts/` belongs to the gateway's rollout store (state, leadership and
//! per-replica figures of progressive rollouts): this module never reads, watches into
//! its config, prunes or conflicts on those keys.
//!
//! [`spawn_watch`] lists the prefix once, then follows a watch from the next revision.
//! After a disconnect it reconnects with exponential back-off and resumes the watch where
//! it stopped, without listing again; only when etcd has compacted the revisions it
//! missed does it list again. It publishes the newest [`Resources`] on a Tokio watch
//! channel, so a consumer that falls behind skips straight to the latest state.
//!
//! This module does not validate the whole config: [`crate::compose`] does.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, Txn, TxnOp, WatchOptions,
};
use rand::Rng;
use tokio::sync::watch;

use crate::compose::{canonical, compose, Resources};
use sluice_config::validate::{is_valid_consumer_name, is_valid_id, parse_value, ConfigError, ConfigErrors};
use sluice_config::RouteCheck;

/// How to reach etcd and where Sluice's keys live.
#[derive(Clone)]
pub struct EtcdOptions {
    /// Client URLs, e.g. `http://10.0.0.1:2379` (`https://` with [`EtcdOptions::tls`]).
    /// Default: `["http://127.0.0.1:2379"]`.
    pub endpoints: Vec<String>,
    /// Key prefix; keys are `{prefix}/routes/{id}` and `{prefix}/upstreams/{id}`. A
    /// trailing `/` is ignored. Default: `/sluice`.
    pub prefix: String,
    /// User name and password for etcd authentication. Default: none.
    pub user: Option<(String, String)>,
    /// TLS to etcd. Default: none (plain text).
    pub tls: Option<EtcdTls>,
    /// Timeout for establishing a connection. Default: 5 s.
    pub connect_timeout: Duration,
    /// Timeout for each unary request (get, txn) and for opening a watch. Default: 10 s.
    pub request_timeout: Duration,
    /// HTTP/2 keep-alive ping interval; a watch on a connection that stops answering
    /// pings is treated as disconnected. Default: 10 s (the timeout is half of it).
    pub keep_alive: Duration,
    /// First reconnect delay; it doubles after each failure up to
    /// [`EtcdOptions::backoff_max`], and each wait is drawn at random below it (full
    /// jitter). Default: 100 ms.
    pub backoff_initial: Duration,
    /// Longest reconnect delay. Default: 5 s.
    pub backoff_max: Duration,
    /// File the watcher writes the latest [`Resources`] to (as JSON, atomically) after
    /// each publish, for [`load_cache`] at a start when etcd is unreachable. Default:
    /// none.
    pub cache: Option<PathBuf>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/sluice".into(),
            user: None,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            cache: None,
        }
    }
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("user", &self.user.as_ref().map(|(name, _)| (name, "<redacted>")))
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("cache", &self.cache)
            .finish()
    }
}

impl EtcdOptions {
    /// The prefix without a trailing `/`.
    fn base(&self) -> &str {
        self.prefix.trim_end_matches('/')
    }

    /// The range every Sluice key is in: `{prefix}/`.
    fn range(&self) -> String {
        format!("{}/", self.base())
    }

    /// The rollout store's keys, `{prefix}/rollouts/`, which are not config.
    fn rollouts_range(&self) -> String {
        format!("{}/rollouts/", self.base())
    }

    /// Whether `key` is one of the rollout store's (see [`EtcdOptions::rollouts_range`]).
    fn is_rollout_key(&self, key: &[u8]) -> bool {
        key.starts_with(self.rollouts_range().as_bytes())
    }
}

/// TLS settings for the etcd connection. The endpoints must use `https://`.
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    /// PEM file of the CA that signed etcd's certificate. Default: none (the built-in
    /// roots are not used, so set this unless etcd's certificate is otherwise trusted).
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (needs [`EtcdTls::key`]). Default: none.
    pub cert: Option<PathBuf>,
    /// PEM private key of [`EtcdTls::cert`]. Default: none.
    pub key: Option<PathBuf>,
    /// Name to expect in etcd's certificate. Default: the endpoint's host.
    pub domain: Option<String>,
}

/// Why an etcd operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The etcd client reported an error (connection, auth, request).
    #[error("etcd: {0}")]
    Client(#[from] etcd_client::Error),
    /// A request did not finish in [`EtcdOptions::request_timeout`] or
    /// [`EtcdOptions::connect_timeout`].
    #[error("etcd: {0} timed out after {1:?}")]
    Timeout(&'static str, Duration),
    /// The options cannot work (e.g. an unreadable TLS file).
    #[error("etcd options: {0}")]
    Options(String),
    /// The config is invalid; nothing was written.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// Keys under the prefix kept changing between the read and the write.
    #[error(
        "etcd: keys under the prefix changed during apply {0} times in a row; nothing was written, try again"
    )]
    Conflict(u32),
}

/// Runs `fut` with a timeout, turning an expiry into [`EtcdError::Timeout`].
async fn timed<T>(
    what: &'static str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(EtcdError::Timeout(what, limit)),
    }
}

/// Connects to etcd with `opts`.
pub async fn connect(opts: &EtcdOptions) -> Result<Client, EtcdError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(opts.connect_timeout)
        .with_keep_alive(opts.keep_alive, opts.keep_alive / 2);
    if let Some((name, password)) = &opts.user {
        options = options.with_user(name.clone(), password.clone());
    }
    if let Some(tls) = &opts.tls {
        options = options.with_tls(tls_options(tls)?);
    }
    let limit = opts.connect_timeout;
    timed("connect", limit, Client::connect(&opts.endpoints, Some(options))).await
}

/// The client TLS settings for `tls`.
fn tls_options(tls: &EtcdTls) -> Result<etcd_client::TlsOptions, EtcdError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| EtcdError::Options(format!("cannot read {}: {e}", p.display())))
    };
    let mut options = etcd_client::TlsOptions::new();
    if let Some(ca) = &tls.ca {
        options = options.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    }
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            options = options.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => {
            return Err(EtcdError::Options(
                "tls.cert and tls.key must be given together".into(),
            ))
        }
    }
    if let Some(domain) = &tls.domain {
        options = options.domain_name(domain.clone());
    }
    Ok(options)
}

/// The two resource kinds etcd may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Routes,
    Upstreams,
    Consumers,
    L4Routes,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Routes => "routes",
            Kind::Upstreams => "upstreams",
            Kind::Consumers => "consumers",
            Kind::L4Routes => "l4_routes",
        }
    }
}

/// The kind and id a key under `range` (`{prefix}/`) names.
fn parse_key(range: &str, key: &str) -> Result<(Kind, String), String> {
    let rest = key.strip_prefix(range).unwrap_or(key);
    let (kind, id) = rest.split_once('/').unwrap_or((rest, ""));
    let kind = match kind {
        "routes" => Kind::Routes,
        "upstreams" => Kind::Upstreams,
        "l4_routes" => Kind::L4Routes,
        "consumers" => {
            if !is_valid_consumer_name(id) {
                return Err(format!(
                    "invalid consumer name {id:?} in the key: use 1-128 of [A-Za-z0-9._@-]"
                ));
            }
            return Ok((Kind::Consumers, id.to_string()));
        }
        "filters" => {
            return Err(format!("{kind} in etcd are not supported yet"));
        }
        other => {
            return Err(format!(
                "unknown resource kind {other:?}; expected routes, upstreams, l4_routes or consumers"
            ))
        }
    };
    if !is_valid_id(id) {
        return Err(format!(
            "invalid id {id:?} in the key: use 1-128 of [A-Za-z0-9._-]"
        ));
    }
    Ok((kind, id.to_string()))
}

/// One key as read: its parsed value (or why it could not be parsed) and its revision.
#[derive(Debug, Clone)]
struct Entry {
    value: Result<serde_json::Value, String>,
    mod_revision: i64,
}

impl Entry {
    fn from_kv(kv: &KeyValue) -> Self {
        let value = match std::str::from_utf8(kv.value()) {
            Ok(text) => parse_value(text).map_err(|e| {
                e.0.into_iter()
                    .map(|err| err.message)
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
            Err(_) => Err("value is not UTF-8".into()),
        };
        Self {
            value,
            mod_revision: kv.mod_revision(),
        }
    }
}

/// Every key under the prefix, by full key.
#[derive(Debug, Clone, Default)]
struct Store {
    entries: BTreeMap<String, Entry>,
    revision: i64,
}

impl Store {
    /// The [`Resources`] this store holds.
    fn resources(&self, range: &str) -> Resources {
        let mut res = Resources {
            revision: self.revision,
            ..Resources::default()
        };
        for (key, entry) in &self.entries {
            let parsed = parse_key(range, key).and_then(|kind_id| match &entry.value {
                Ok(value) => Ok((kind_id, value.clone())),
                Err(e) => Err(e.clone()),
            });
            match parsed {
                Ok(((Kind::Routes, id), value)) => {
                    res.routes.insert(id, value);
                }
                Ok(((Kind::Upstreams, id), value)) => {
                    res.upstreams.insert(id, value);
                }
                Ok(((Kind::Consumers, id), value)) => {
                    res.consumers.insert(id, value);
                }
                Ok(((Kind::L4Routes, id), value)) => {
                    res.l4_routes.insert(id, value);
                }
                Err(message) => res.errors.push(ConfigError {
                    path: key.clone(),
                    message,
                }),
            }
        }
        res
    }

    fn apply_kv(&mut self, kv: &KeyValue) {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        self.entries.insert(key, Entry::from_kv(kv));
    }
}

/// Reads every key under the prefix with one consistent range request.
async fn read_store(client: &mut Client, opts: &EtcdOptions) -> Result<Store, EtcdError> {
    let response = timed(
        "get",
        opts.request_timeout,
        client.get(opts.range(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let mut store = Store {
        revision: response.header().map_or(0, |h| h.revision()),
        ..Store::default()
    };
    for kv in response.kvs().iter().filter(|kv| !opts.is_rollout_key(kv.key())) {
        store.apply_kv(kv);
    }
    Ok(store)
}

/// Counters a running [`EtcdWatch`] keeps, for metrics and tests.
#[derive(Debug, Default)]
pub struct WatchStats {
    relists: AtomicU64,
    reconnects: AtomicU64,
    revision: AtomicI64,
}

impl WatchStats {
    /// How many times the whole prefix was listed (the first list included).
    pub fn relists(&self) -> u64 {
        self.relists.load(Ordering::Relaxed)
    }

    /// How many times the watch was re-established after a disconnect.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// The etcd revision of the last published [`Resources`]; `0` before the first.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Relaxed)
    }
}

/// A running etcd watch. Dropping it stops the background task.
pub struct EtcdWatch {
    /// The newest resources; `None` until the first list succeeds. Only the latest value
    /// is kept, so a burst of changes is seen as one.
    pub resources: watch::Receiver<Option<Arc<Resources>>>,
    /// Whether the watch is currently connected and following changes.
    pub connected: watch::Receiver<bool>,
    /// Counters: lists, reconnects, last revision.
    pub stats: Arc<WatchStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EtcdWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts following the keys under `opts.prefix` in a background task. Must be called
/// from within a Tokio runtime.
///
/// The task lists the prefix, publishes the resulting [`Resources`], then watches from
/// the next revision and publishes after each watch response that carries events. On a
/// disconnect it marks [`EtcdWatch::connected`] false, reconnects with full-jitter
/// exponential back-off ([`EtcdOptions::backoff_initial`] doubling to
/// [`EtcdOptions::backoff_max`]) and resumes the watch after the last revision it saw;
/// it lists again only when those revisions were compacted. It never panics and stops
/// when the [`EtcdWatch`] is dropped.
pub fn spawn_watch(opts: EtcdOptions) -> EtcdWatch {
    let (resources_tx, resources) = watch::channel(None);
    let (connected_tx, connected) = watch::channel(false);
    let stats = Arc::new(WatchStats::default());
    let task = tokio::spawn(run_watch(opts, resources_tx, connected_tx, stats.clone()));
    EtcdWatch {
        resources,
        connected,
        stats,
        task,
    }
}

/// Full-jitter exponential back-off.
struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            current: initial,
        }
    }

    /// The next wait: random in `[0, current]`; then `current` doubles, up to `max`.
    fn next(&mut self) -> Duration {
        let ceiling = self.current.min(self.max);
        self.current = (self.current * 2).min(self.max);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// Why a watch session ended.
enum SessionEnd {
    /// The revisions after the last one seen were compacted: list again, right away.
    Compacted,
    /// The connection or the stream failed: back off, then resume.
    Failed(EtcdError),
}

struct Watcher {
    opts: EtcdOptions,
    store: Option<Store>,
    resources_tx: watch::Sender<Option<Arc<Resources>>>,
    connected_tx: watch::Sender<bool>,
    stats: Arc<WatchStats>,
}

async fn run_watch(
    opts: EtcdOptions,
    resources_tx: watch::Sender<Option<Arc<Resources>>>,
    connected_tx: watch::Sender<bool>,
    stats: Arc<WatchStats>,
) {
    let mut backoff = Backoff::new(opts.backoff_initial, opts.backoff_max);
    let mut w = Watcher {
        opts,
        store: None,
        resources_tx,
        connected_tx,
        stats,
    };
    let mut first = true;
    loop {
        if !first {
            w.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        match w.session(&mut backoff).await {
            SessionEnd::Compacted => {
                tracing::warn!(prefix = %w.opts.prefix, "etcd revisions were compacted; listing again");
                w.store = None;
            }
            SessionEnd::Failed(e) => {
                w.connected_tx.send_replace(false);
                let wait = backoff.next();
                tracing::warn!(prefix = %w.opts.prefix, "etcd watch: {e}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

impl Watcher {
    /// Connects, lists when there is no state yet, then follows the watch until it ends.
    async fn session(&mut self, backoff: &mut Backoff) -> SessionEnd {
        let mut client = match connect(&self.opts).await {
            Ok(c) => c,
            Err(e) => return SessionEnd::Failed(e),
        };
        if self.store.is_none() {
            match read_store(&mut client, &self.opts).await {
                Ok(store) => {
                    self.stats.relists.fetch_add(1, Ordering::Relaxed);
                    self.store = Some(store);
                    self.publish();
                }
                Err(e) => return SessionEnd::Failed(e),
            }
        }
        let start = self.store.as_ref().map_or(0, |s| s.revision) + 1;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start)
            .with_progress_notify();
        let mut stream = match timed(
            "watch",
            self.opts.request_timeout,
            client.watch(self.opts.range(), Some(options)),
        )
        .await
        {
            Ok(s) => s,
            Err(e) => return SessionEnd::Failed(e),
        };
        loop {
            let response = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => {
                    return SessionEnd::Failed(EtcdError::Options("watch stream closed by etcd".into()))
                }
                Err(e) => return SessionEnd::Failed(e.into()),
            };
            if response.compact_revision() > 0 {
                return SessionEnd::Compacted;
            }
            if response.canceled() {
                let reason = response.cancel_reason();
                if reason.contains("compacted") {
                    return SessionEnd::Compacted;
                }
                return SessionEnd::Failed(EtcdError::Options(format!("watch canceled: {reason}")));
            }
            if response.created() {
                self.connected_tx.send_replace(true);
                backoff.reset();
            }
            let events = response.events();
            if events.is_empty() {
                continue;
            }
            let Some(store) = self.store.as_mut() else {
                return SessionEnd::Compacted;
            };
            let mut changed = false;
            for event in events {
                let Some(kv) = event.kv() else { continue };
                store.revision = store.revision.max(kv.mod_revision());
                if self.opts.is_rollout_key(kv.key()) {
                    continue;
                }
                changed = true;
                match event.event_type() {
                    EventType::Put => store.apply_kv(kv),
                    EventType::Delete => {
                        store.entries.remove(&*String::from_utf8_lossy(kv.key()));
                    }
                }
            }
            if changed {
                self.publish();
            }
        }
    }

    /// Publishes the current store and writes the cache file.
    fn publish(&self) {
        let Some(store) = &self.store else { return };
        let resources = Arc::new(store.resources(&self.opts.range()));
        self.stats.revision.store(resources.revision, Ordering::Relaxed);
        if let Some(path) = &self.opts.cache {
            if let Err(e) = write_cache(path, &resources) {
                tracing::warn!("cannot write etcd cache {}: {e}", path.display());
            }
        }
        self.resources_tx.send_replace(Some(resources));
    }
}

/// Writes `resources` to `path` as JSON: to a temporary file next to it, then renamed over
/// it, so a reader never sees half a file.
fn write_cache(path: &Path, resources: &Resources) -> std::io::Result<()> {
    let json = serde_json::to_vec(resources).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

/// Reads a cache file written by the watcher ([`EtcdOptions::cache`]); `None` when it is
/// missing or unreadable. For starting with the last known state while etcd is
/// unreachable.
pub fn load_cache(path: &Path) -> Option<Resources> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(res) => Some(res),
        Err(e) => {
            tracing::warn!("ignoring etcd cache {}: {e}", path.display());
            None
        }
    }
}

/// What [`apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplySummary {
    /// Keys created.
    pub created: Vec<String>,
    /// Keys whose value changed.
    pub updated: Vec<String>,
    /// Keys deleted (only with `prune`).
    pub deleted: Vec<String>,
    /// How many keys already held the wanted value.
    pub unchanged: usize,
    /// The etcd revision of the write; `None` when nothing needed writing.
    pub revision: Option<i64>,
}

/// What a change to one key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The key does not exist yet.
    Create,
    /// The key exists with a different value.
    Update,
    /// The key exists and is not in the document (only with `prune`).
    Delete,
}

/// One key [`apply`] would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What happens to the key.
    pub kind: ChangeKind,
    /// The full etcd key.
    pub key: String,
    /// A line diff of the value as YAML: lines prefixed `-` (removed), `+` (added) or ` `
    /// (kept).
    pub diff: String,
}

/// The keys to write for a document, and the checks it passed.
struct Plan {
    /// Every change, in key order, with the new canonical JSON for creates and updates.
    changes: Vec<(Change, Option<String>)>,
    unchanged: usize,
    /// Revision of the read the plan is based on.
    revision: i64,
    /// `mod_revision` of every key that existed at the read and is changed.
    touched: Vec<(String, i64)>,
}

/// Reads the routes and upstreams of a document meant for [`apply`], by key.
fn document_items(
    opts: &EtcdOptions,
    text: &str,
) -> Result<(serde_json::Value, BTreeMap<String, serde_json::Value>), EtcdError> {
    let doc = parse_value(text).map_err(EtcdError::Invalid)?;
    let doc = if doc.is_null() {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        doc
    };
    let Some(map) = doc.as_object() else {
        return Err(EtcdError::Invalid(ConfigErrors::one(
            "",
            "expected a map with `routes`, `upstreams` and `consumers`",
        )));
    };
    let mut errors = Vec::new();
    let mut items = BTreeMap::new();
    for (key, value) in map {
        let kind = match key.as_str() {
            "routes" => Kind::Routes,
            "upstreams" => Kind::Upstreams,
            "consumers" => Kind::Consumers,
            _ => {
                errors.push(ConfigError {
                    path: key.clone(),
                    message: "only `routes`, `upstreams` and `consumers` are stored in etcd".into(),
                });
                continue;
            }
        };
        let field = crate::compose::id_field(kind.as_str());
        let valid = |id: &str| {
            if kind == Kind::Consumers {
                is_valid_consumer_name(id)
            } else {
                is_valid_id(id)
            }
        };
        for (i, item) in value.as_array().into_iter().flatten().enumerate() {
            match item.get(field).and_then(|v| v.as_str()) {
                Some(id) if valid(id) => {
                    items.insert(format!("{}/{}/{id}", opts.base(), kind.as_str()), canonical(item));
                }
                // Invalid or missing ids are reported by validation.
                _ => errors.push(ConfigError {
                    path: format!("{}[{i}].{field}", kind.as_str()),
                    message: format!("a valid {field} is required to name the etcd key"),
                }),
            }
        }
    }
    if errors.is_empty() {
        Ok((doc, items))
    } else {
        Err(EtcdError::Invalid(ConfigErrors(errors)))
    }
}

/// Reads etcd, validates the document merged with what stays in etcd (the one
/// validation path: the model's checks, then `check`), and works out the changes.
async fn plan(
    client: &mut Client,
    opts: &EtcdOptions,
    text: &str,
    prune: bool,
    check: &dyn RouteCheck,
) -> Result<Plan, EtcdError> {
    let (doc, wanted) = document_items(opts, text)?;
    let store = read_store(client, opts).await?;
    let range = opts.range();

    // What stays in etcd: keys the document does not set (none of them with prune).
    let mut kept = Store {
        revision: store.revision,
        ..Store::default()
    };
    if !prune {
        for (key, entry) in &store.entries {
            if !wanted.contains_key(key) {
                kept.entries.insert(key.clone(), entry.clone());
            }
        }
    }
    // The document is not a whole config: listeners are never kept in etcd. It is
    // checked as one under a placeholder listener, whose own errors are left out.
    let mut whole = doc;
    if let Some(map) = whole.as_object_mut() {
        map.insert(
            "listeners".into(),
            serde_json::json!([{"name": "check", "listen": "127.0.0.1:1"}]),
        );
    }
    let about_document = |errors: ConfigErrors| {
        let errors: Vec<_> = errors
            .0
            .into_iter()
            .filter(|e| !e.path.starts_with("listeners"))
            .collect();
        ConfigErrors::result(errors).map_err(EtcdError::Invalid)
    };
    match compose(whole, "", Some((opts.base(), &kept.resources(&range)))) {
        Ok(config) => {
            if let Err(errors) = check.check(&config) {
                about_document(errors)?;
            }
        }
        Err(errors) => about_document(errors)?,
    }

    let mut plan = Plan {
        changes: Vec::new(),
        unchanged: 0,
        revision: store.revision,
        touched: Vec::new(),
    };
    for (key, value) in &wanted {
        let new_yaml = to_yaml(&shown(key, value));
        let json = serde_json::to_string(value).map_err(|e| EtcdError::Options(e.to_string()))?;
        match store.entries.get(key) {
            Some(Entry { value: Ok(old), .. }) if canonical(old) == *value => plan.unchanged += 1,
            Some(entry) => {
                let old_yaml = entry_yaml(key, entry);
                plan.touched.push((key.clone(), entry.mod_revision));
                let mut diff = line_diff(&old_yaml, &new_yaml);
                if old_yaml == new_yaml {
                    diff.push_str("~ a secret changed (values not shown)\n");
                }
                plan.changes.push((
                    Change {
                        kind: ChangeKind::Update,
                        key: key.clone(),
                        diff,
                    },
                    Some(json),
                ));
            }
            None => plan.changes.push((
                Change {
                    kind: ChangeKind::Create,
                    key: key.clone(),
                    diff: line_diff("", &new_yaml),
                },
                Some(json),
            )),
        }
    }
    if prune {
        for (key, entry) in &store.entries {
            if wanted.contains_key(key) {
                continue;
            }
            let old_yaml = entry_yaml(key, entry);
            plan.touched.push((key.clone(), entry.mod_revision));
            plan.changes.push((
                Change {
                    kind: ChangeKind::Delete,
                    key: key.clone(),
                    diff: line_diff(&old_yaml, ""),
                },
                None,
            ));
        }
        plan.changes.sort_by(|a, b| a.0.key.cmp(&b.0.key));
    }
    Ok(plan)
}

/// Writes the routes and upstreams of a YAML/JSON document (`routes:` and `upstreams:`
/// lists, nothing else) to etcd, one key per object, in one transaction.
///
/// The document is first validated merged with the keys it leaves in etcd (the one
/// validation path, `check` its route half), so a route may refer to an upstream
/// already stored there. Values are written as canonical JSON;
/// keys that already hold an equal value are left alone. With `prune`, keys under the
/// prefix that the document does not name are deleted.
///
/// The transaction only succeeds if no key under the prefix changed since the read
/// (checked on the prefix's revisions and on each changed key), so either every change
/// is written or none is. On such a conflict the read, validation and write are retried
/// up to 3 times. etcd limits a transaction to `--max-txn-ops` operations (default 128).
pub async fn apply(
    opts: &EtcdOptions,
    text: &str,
    prune: bool,
    check: &dyn RouteCheck,
) -> Result<ApplySummary, EtcdError> {
    const ATTEMPTS: u32 = 3;
    let mut client = connect(opts).await?;
    for _ in 0..ATTEMPTS {
        let plan = plan(&mut client, opts, text, prune, check).await?;
        let mut summary = ApplySummary {
            unchanged: plan.unchanged,
            ..ApplySummary::default()
        };
        if plan.changes.is_empty() {
            return Ok(summary);
        }
        // Nothing under the prefix (but the rollout store's keys, which change all the
        // time) was created or modified after the read...
        let after_rollouts = format!("{}/rollouts0", opts.base());
        let prefix_end = format!("{}0", opts.base());
        let mut compares = vec![
            Compare::mod_revision(opts.range(), CompareOp::Less, plan.revision + 1)
                .with_range(opts.rollouts_range()),
            Compare::mod_revision(after_rollouts, CompareOp::Less, plan.revision + 1).with_range(prefix_end),
        ];
        // ...and no key this write changes was deleted since.
        compares.extend(
            plan.touched
                .iter()
                .map(|(key, rev)| Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev)),
        );
        let mut ops = Vec::new();
        for (change, json) in &plan.changes {
            match (change.kind, json) {
                (ChangeKind::Delete, _) => {
                    ops.push(TxnOp::delete(change.key.as_str(), None));
                    summary.deleted.push(change.key.clone());
                }
                (kind, Some(json)) => {
                    ops.push(TxnOp::put(change.key.as_str(), json.as_str(), None));
                    if kind == ChangeKind::Create {
                        summary.created.push(change.key.clone());
                    } else {
                        summary.updated.push(change.key.clone());
                    }
                }
                (_, None) => {}
            }
        }
        let txn = Txn::new().when(compares).and_then(ops);
        let response = timed("txn", opts.request_timeout, client.txn(txn)).await?;
        if response.succeeded() {
            summary.revision = response.header().map(|h| h.revision());
            return Ok(summary);
        }
        tracing::info!("etcd keys changed during apply; retrying");
    }
    Err(EtcdError::Conflict(ATTEMPTS))
}

/// What [`apply`] with the same arguments would change, with a line diff per key.
/// Writes nothing.
pub async fn diff(
    opts: &EtcdOptions,
    text: &str,
    prune: bool,
    check: &dyn RouteCheck,
) -> Result<Vec<Change>, EtcdError> {
    let mut client = connect(opts).await?;
    let plan = plan(&mut client, opts, text, prune, check).await?;
    Ok(plan.changes.into_iter().map(|(change, _)| change).collect())
}

/// The routes and upstreams stored under the prefix, as a YAML document
/// (`routes: [...]`, `upstreams: [...]`, each sorted by id) that [`apply`] accepts.
/// Keys that cannot be read are listed as comments at the top.
pub async fn get(opts: &EtcdOptions) -> Result<String, EtcdError> {
    get_with(opts, false).await
}

/// [`get`], with every secret (consumers' credentials, the secret fields of routes'
/// filters and rollouts) shown as stored when `reveal` (`sluice get
/// --show-credentials`), else redacted (`<redacted>`; such a document cannot be applied
/// back as is).
pub async fn get_with(opts: &EtcdOptions, reveal: bool) -> Result<String, EtcdError> {
    let mut client = connect(opts).await?;
    let store = read_store(&mut client, opts).await?;
    let res = store.resources(&opts.range());
    let mut out = String::new();
    for e in &res.errors {
        out.push_str(&format!("# {e}\n"));
    }
    let with_id = |kind: &str, items: &BTreeMap<String, serde_json::Value>| -> Vec<serde_json::Value> {
        items
            .iter()
            .map(|(id, value)| {
                let mut value = if reveal {
                    value.clone()
                } else {
                    shown(&format!("/{kind}/{id}"), value)
                };
                if let Some(obj) = value.as_object_mut() {
                    obj.entry("id")
                        .or_insert_with(|| serde_json::Value::String(id.clone()));
                }
                value
            })
            .collect()
    };
    let consumers: Vec<serde_json::Value> = res
        .consumers
        .iter()
        .map(|(name, value)| {
            let mut value = if reveal {
                value.clone()
            } else {
                sluice_config::model::redact_consumer_value(value)
            };
            if let Some(obj) = value.as_object_mut() {
                obj.entry("name")
                    .or_insert_with(|| serde_json::Value::String(name.clone()));
            }
            value
        })
        .collect();
    let mut doc = serde_json::json!({
        "routes": with_id("routes", &res.routes),
        "upstreams": with_id("upstreams", &res.upstreams),
    });
    if !consumers.is_empty() {
        doc["consumers"] = serde_json::Value::Array(consumers);
    }
    out.push_str(&to_yaml(&doc));
    Ok(out)
}

/// A value as YAML text.
/// An entry's value as YAML (a consumer's credentials redacted), or a comment saying
/// why it cannot be read.
fn entry_yaml(key: &str, entry: &Entry) -> String {
    entry
        .value
        .as_ref()
        .map_or_else(|e| format!("# unreadable: {e}\n"), |v| to_yaml(&shown(key, v)))
}

/// The value of `key` as `diff` and `get` print it: a consumer's credential values
/// redacted, and a route's or upstream's secret fields (a JWT secret, a Redis URL's
/// password, a webhook URL: whatever the model or the filter's spec types as a secret)
/// redacted as the admin API shows them, the rest as stored.
fn shown(key: &str, value: &serde_json::Value) -> serde_json::Value {
    use sluice_config::model::{RouteConfig, UpstreamConfig};
    if key.contains("/consumers/") {
        sluice_config::model::redact_consumer_value(value)
    } else if key.contains("/routes/") {
        with_id(key, value, sluice_config::secret::redact_as::<RouteConfig>)
    } else if key.contains("/upstreams/") {
        with_id(key, value, sluice_config::secret::redact_as::<UpstreamConfig>)
    } else {
        sluice_config::model::redact_value(value)
    }
}

/// `redact(value)`, with the key's id lent to a value stored without its `id` (so it
/// reads as its type) and taken back after.
fn with_id(
    key: &str,
    value: &serde_json::Value,
    redact: fn(&serde_json::Value) -> serde_json::Value,
) -> serde_json::Value {
    let id = key.rsplit('/').next().unwrap_or_default();
    match value.as_object() {
        Some(obj) if !obj.contains_key("id") => {
            let mut lent = obj.clone();
            lent.insert("id".into(), serde_json::Value::String(id.to_string()));
            let mut out = redact(&serde_json::Value::Object(lent));
            if let Some(o) = out.as_object_mut() {
                o.remove("id");
            }
            out
        }
        _ => redact(value),
    }
}

fn to_yaml(value: &serde_json::Value) -> String {
    serde_yaml::to_string(value).unwrap_or_else(|e| format!("# cannot print as YAML: {e}\n"))
}

/// A line diff of `old` and `new` (longest common subsequence): every line prefixed with
/// `-`, `+` or ` `.
fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // lcs[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!(" {}\n", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("-{}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+{}\n", b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_kind_and_id() {
        let r = "/sluice/";
        assert_eq!(
            parse_key(r, "/sluice/routes/api"),
            Ok((Kind::Routes, "api".into()))
        );
        assert_eq!(
            parse_key(r, "/sluice/upstreams/u-1"),
            Ok((Kind::Upstreams, "u-1".into()))
        );
        assert_eq!(
            parse_key(r, "/sluice/services/x").unwrap_err(),
            "unknown resource kind \"services\"; expected routes, upstreams, l4_routes or consumers"
        );
        assert_eq!(
            parse_key(r, "/sluice/consumers/alice@x"),
            Ok((Kind::Consumers, "alice@x".into()))
        );
        assert!(parse_key(r, "/sluice/consumers/a,b")
            .unwrap_err()
            .starts_with("invalid consumer name"));
        assert!(parse_key(r, "/sluice/routes/a/b")
            .unwrap_err()
            .starts_with("invalid id"));
        assert!(parse_key(r, "/sluice/routes/")
            .unwrap_err()
            .starts_with("invalid id"));
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_below_it() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let ceilings = [100, 200, 400, 800, 1600, 3200, 5000, 5000];
        for ceiling in ceilings {
            assert!(b.next() <= Duration::from_millis(ceiling));
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }

    #[test]
    fn line_diff_marks_changed_lines() {
        assert_eq!(
            line_diff("a: 1\nb: 2\nc: 3\n", "a: 1\nb: 5\nc: 3\n"),
            " a: 1\n-b: 2\n+b: 5\n c: 3\n"
        );
        assert_eq!(line_diff("", "x\n"), "+x\n");
    }

    #[test]
    fn the_password_is_not_printed() {
        let opts = EtcdOptions {
            user: Some(("root".into(), "hunter2".into())),
            ..EtcdOptions::default()
        };
        let text = format!("{opts:?}");
        assert!(text.contains("root") && !text.contains("hunter2"), "{text}");
    }
}
