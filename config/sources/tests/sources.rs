//! The `Source` trait's implementations, run as their consumer runs them: the file
//! source against a real filesystem, the etcd source against a real etcd (and without
//! one, falling back to its cache file).
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_sources::etcd::EtcdOptions;
use sluice_sources::file::load;
use sluice_sources::source::{EtcdSource, FileSource};
use sluice_sources::{Content, Publisher, Resources, Source, SourceContext, SourceState};
use support::Etcd;
use tokio::sync::{watch, Notify};

const WAIT: Duration = Duration::from_secs(15);

/// A source running as the config loop runs it: its task, the receiver of its states,
/// the shared wake-up and the refresh sender.
struct Running {
    rx: watch::Receiver<SourceState>,
    wake: Arc<Notify>,
    refresh: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start(source: Box<dyn Source>) -> Running {
    let wake = Arc::new(Notify::new());
    let (refresh, refresh_rx) = watch::channel(0);
    let (out, rx) = Publisher::new(source.initial(), wake.clone());
    let task = tokio::spawn(source.run(SourceContext {
        out,
        refresh: refresh_rx,
        check: Arc::new(sluice_config::check::NoKinds),
    }));
    Running {
        rx,
        wake,
        refresh,
        task,
    }
}

impl Running {
    /// Waits (bounded) for a state satisfying `done`, woken by the shared `Notify` as
    /// the config loop is.
    async fn wait_for(&mut self, what: &str, done: impl Fn(&SourceState) -> bool) -> SourceState {
        let result = tokio::time::timeout(WAIT, async {
            loop {
                let state = self.rx.borrow_and_update().clone();
                if done(&state) {
                    return state;
                }
                self.wake.notified().await;
            }
        })
        .await;
        result.unwrap_or_else(|_| panic!("timed out waiting for {what}; now {:?}", self.rx.borrow()))
    }
}

fn document(state: &SourceState) -> Option<&serde_json::Value> {
    match &state.content {
        Some(Content::Document { value: Ok(v), .. }) => Some(v),
        _ => None,
    }
}

fn resources(state: &SourceState) -> Option<&Resources> {
    match &state.content {
        Some(Content::Resources { resources, .. }) => Some(resources),
        _ => None,
    }
}

fn write(path: &Path, route: &str) {
    std::fs::write(path, format!("routes: [{{id: {route}, upstream: u}}]\n")).unwrap();
}

#[tokio::test]
async fn the_file_source_publishes_changes_and_every_refresh_but_not_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    write(&file, "one");
    let (doc, hash) = load(&file).unwrap();
    let source = FileSource::new(file.clone(), true).starting_from(doc, hash.clone());
    let initial = source.initial();
    assert_eq!(initial.generation, 0);
    assert_eq!(document(&initial).unwrap()["routes"][0]["id"], "one");
    assert_eq!(initial.status["hash"], hash.as_str());
    let mut running = start(Box::new(source));

    write(&file, "two");
    let state = running
        .wait_for("the new document", |s| {
            document(s).is_some_and(|d| d["routes"][0]["id"] == "two")
        })
        .await;
    // One publish: the start document is not published again, and the change once
    // (the watcher may fire more than once for one write; the same content is not
    // published twice).
    let after_change = state.generation;
    assert_eq!(after_change, 1);
    assert_ne!(state.status["hash"], hash.as_str());

    // A refresh publishes again, with the same content.
    running.refresh.send_modify(|n| *n += 1);
    let state = running
        .wait_for("a publish after the refresh", |s| s.generation > after_change)
        .await;
    assert_eq!(state.generation, 2);
    assert_eq!(document(&state).unwrap()["routes"][0]["id"], "two");

    // A broken file is published as an error, with the error in the status.
    std::fs::write(&file, "routes: [").unwrap();
    let state = running
        .wait_for("the parse error", |s| {
            matches!(&s.content, Some(Content::Document { value: Err(_), .. }))
        })
        .await;
    assert!(
        state.status["error"].as_str().unwrap().contains("invalid YAML"),
        "{:?}",
        state.status
    );
}

#[tokio::test]
async fn the_file_source_reads_at_once_without_a_start_document() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    write(&file, "one");
    let source = FileSource::new(file, false);
    assert!(source.initial().content.is_none());
    let mut running = start(Box::new(source));
    let state = running.wait_for("the first read", |s| s.content.is_some()).await;
    assert_eq!(document(&state).unwrap()["routes"][0]["id"], "one");
    assert_eq!(state.status["watched"], false);
}

fn options(endpoint: String) -> EtcdOptions {
    EtcdOptions {
        endpoints: vec![endpoint],
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(3),
        backoff_max: Duration::from_millis(300),
        ..EtcdOptions::default()
    }
}

#[tokio::test]
async fn the_etcd_source_publishes_its_resources_and_connection() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    client
        .put("/sluice/routes/api", r#"{"upstream": "u"}"#, None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.json");
    let opts = EtcdOptions {
        cache: Some(cache.clone()),
        ..options(etcd.endpoint())
    };
    let source = EtcdSource::new(opts);
    assert_eq!(source.name(), "etcd");
    assert!(source.initial().content.is_none());
    let mut running = start(Box::new(source));
    let state = running
        .wait_for("the first list", |s| {
            resources(s).is_some_and(|r| r.routes.contains_key("api"))
        })
        .await;
    assert!(!state.cached);
    assert!(state.revision.unwrap() > 0);
    let Some(Content::Resources { prefix, .. }) = &state.content else {
        unreachable!()
    };
    assert_eq!(prefix, "/sluice");
    running
        .wait_for("connected", |s| {
            s.connected == Some(true) && s.status["connected"] == true
        })
        .await;

    client
        .put(
            "/sluice/upstreams/u",
            "endpoints: [{address: '127.0.0.1:1'}]",
            None,
        )
        .await
        .unwrap();
    let state = running
        .wait_for("the new upstream", |s| {
            resources(s).is_some_and(|r| r.upstreams.contains_key("u"))
        })
        .await;
    assert_eq!(state.status["revision"], state.revision.unwrap());
    assert!(cache.exists());
    drop(running);
    drop(etcd);

    // etcd gone: the next start serves the cache, marked as such.
    let opts = EtcdOptions {
        cache: Some(cache),
        ..options(etcd_down())
    };
    let mut running = start(Box::new(EtcdSource::new(opts)));
    let state = running
        .wait_for("the cached resources", |s| s.content.is_some())
        .await;
    assert!(state.cached);
    assert_eq!(state.status["serving_cache"], true);
    assert_eq!(state.connected, Some(false));
    let res = resources(&state).unwrap();
    assert!(res.routes.contains_key("api") && res.upstreams.contains_key("u"));
}

#[tokio::test]
async fn the_etcd_source_without_etcd_or_cache_has_not_answered() {
    let mut running = start(Box::new(EtcdSource::new(options(etcd_down()))));
    // Up to three times the connect timeout, the source has no content: the consumer
    // stays not ready.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < deadline {
        assert!(running.rx.borrow_and_update().content.is_none());
        let _ = tokio::time::timeout(Duration::from_millis(100), running.wake.notified()).await;
    }
    assert!(running.rx.borrow().content.is_none());
}

/// A loopback URL where nothing listens.
fn etcd_down() -> String {
    format!("http://127.0.0.1:{}", Etcd::other_port())
}
