//! The etcd source against a real etcd: listing, watching, resuming after a restart,
//! re-listing after compaction, and the apply/get/diff helpers.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{CompactionOptions, WatchOptions};
use sluice_config::check::NoKinds;
use sluice_sources::etcd::{
    apply, diff, get, load_cache, spawn_watch, ChangeKind, EtcdError, EtcdOptions, EtcdWatch,
};
use sluice_sources::{compose, Resources};
use support::Etcd;

const WAIT: Duration = Duration::from_secs(15);

fn options(etcd: &Etcd) -> EtcdOptions {
    EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(3),
        backoff_max: Duration::from_millis(500),
        ..EtcdOptions::default()
    }
}

/// Waits (bounded) until the published resources satisfy `done`, and returns them.
async fn wait_for(w: &mut EtcdWatch, what: &str, done: impl Fn(&Resources) -> bool) -> Arc<Resources> {
    let result = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(res) = w.resources.borrow_and_update().clone() {
                if done(&res) {
                    return res;
                }
            }
            w.resources.changed().await.unwrap();
        }
    })
    .await;
    match result {
        Ok(res) => res,
        Err(_) => panic!("timed out waiting for {what}; last: {:?}", w.resources.borrow()),
    }
}

async fn wait_connected(w: &mut EtcdWatch, want: bool) {
    tokio::time::timeout(WAIT, w.connected.wait_for(|c| *c == want))
        .await
        .unwrap_or_else(|_| panic!("connected never became {want}"))
        .unwrap();
}

const UPSTREAM: &str = r#"{"endpoints":[{"address":"127.0.0.1:9000"}]}"#;

fn route(upstream: &str) -> String {
    format!(r#"{{"upstream":"{upstream}"}}"#)
}

#[tokio::test]
async fn lists_then_follows_puts_and_deletes() {
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    c.put("/sluice/upstreams/u", UPSTREAM, None).await.unwrap();
    c.put("/sluice/routes/a", route("u"), None).await.unwrap();
    // Outside the prefix, and a prefix look-alike: both ignored.
    c.put("/other/routes/x", "junk", None).await.unwrap();
    c.put("/sluicey/routes/x", "junk", None).await.unwrap();

    let mut w = spawn_watch(options(&etcd));
    let res = wait_for(&mut w, "the initial list", |r| r.routes.contains_key("a")).await;
    assert!(res.upstreams.contains_key("u"));
    assert!(res.errors.is_empty(), "{:?}", res.errors);
    wait_connected(&mut w, true).await;

    c.put("/sluice/routes/b", route("u"), None).await.unwrap();
    wait_for(&mut w, "route b", |r| r.routes.contains_key("b")).await;
    c.delete("/sluice/routes/a", None).await.unwrap();
    let res = wait_for(&mut w, "route a deleted", |r| !r.routes.contains_key("a")).await;
    assert_eq!(res.routes.keys().collect::<Vec<_>>(), ["b"]);
    assert_eq!(w.stats.relists(), 1);

    let config = compose(
        serde_json::json!({"listeners": [{"name": "web", "listen": "127.0.0.1:8080"}]}),
        "sluice.yaml",
        Some(("/sluice", &res)),
    )
    .unwrap();
    assert_eq!(config.routes[0].id, "b");
}

#[tokio::test]
async fn resumes_after_an_etcd_restart_without_listing_again() {
    let mut etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    c.put("/sluice/upstreams/u", UPSTREAM, None).await.unwrap();
    let mut w = spawn_watch(options(&etcd));
    wait_for(&mut w, "the initial list", |r| r.upstreams.contains_key("u")).await;
    wait_connected(&mut w, true).await;

    etcd.kill();
    wait_connected(&mut w, false).await;
    etcd.restart().await;
    let mut c = etcd.client().await;
    c.put("/sluice/routes/after", route("u"), None).await.unwrap();

    let res = wait_for(&mut w, "the put after the restart", |r| {
        r.routes.contains_key("after")
    })
    .await;
    assert!(res.upstreams.contains_key("u"));
    wait_connected(&mut w, true).await;
    assert_eq!(w.stats.relists(), 1, "the watch resumed without a new list");
    assert!(w.stats.reconnects() >= 1);
}

#[tokio::test]
async fn lists_again_when_the_missed_revisions_were_compacted() {
    let mut etcd = Etcd::start().await;
    let home_port = etcd.client_port;
    let mut c = etcd.client().await;
    c.put("/sluice/upstreams/u", UPSTREAM, None).await.unwrap();
    c.put("/sluice/routes/gone", route("u"), None).await.unwrap();
    let mut w = spawn_watch(options(&etcd));
    wait_for(&mut w, "the initial list", |r| r.routes.contains_key("gone")).await;
    wait_connected(&mut w, true).await;

    // Take etcd away from the watcher (another client port), change things and compact
    // the history the watcher has not seen, then bring etcd back where the watcher looks.
    etcd.restart_on(Etcd::other_port()).await;
    let mut c = etcd.client().await;
    c.delete("/sluice/routes/gone", None).await.unwrap();
    for i in 0..20 {
        c.put(format!("/sluice/routes/r{}", i % 5), route("u"), None)
            .await
            .unwrap();
    }
    let last = c.put("/sluice/routes/last", route("u"), None).await.unwrap();
    let rev = last.header().unwrap().revision();
    c.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    drop(c);
    etcd.restart_on(home_port).await;

    let res = wait_for(&mut w, "the state after compaction", |r| {
        r.routes.contains_key("last")
    })
    .await;
    assert!(!res.routes.contains_key("gone"));
    assert_eq!(res.routes.len(), 6, "{:?}", res.routes.keys());
    assert_eq!(res.revision, rev);
    assert_eq!(
        w.stats.relists(),
        2,
        "one list at the start and one after compaction"
    );
}

#[tokio::test]
async fn unreadable_keys_are_errors_naming_the_key() {
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    c.put("/sluice/upstreams/u", UPSTREAM, None).await.unwrap();
    c.put("/sluice/routes/broken", "{not json", None).await.unwrap();
    c.put("/sluice/services/x", "{}", None).await.unwrap();
    c.put("/sluice/consumers/alice", "{}", None).await.unwrap();
    c.put(
        "/sluice/routes/typo",
        r#"{"upstream":"u","match":{"pth":"/"}}"#,
        None,
    )
    .await
    .unwrap();
    let mut w = spawn_watch(options(&etcd));
    let res = wait_for(&mut w, "the initial list", |r| r.upstreams.contains_key("u")).await;
    let errors: Vec<String> = res.errors.iter().map(ToString::to_string).collect();
    // A consumer is a resource of its own (its key gives its name): not an error.
    assert!(res.consumers.contains_key("alice"), "{:?}", res.consumers.keys());
    assert!(
        errors[0].starts_with("/sluice/routes/broken: invalid JSON"),
        "{errors:?}"
    );
    assert_eq!(
        errors[1],
        "/sluice/services/x: unknown resource kind \"services\"; expected routes, upstreams, l4_routes or consumers"
    );
    assert_eq!(errors.len(), 2);

    let all = compose(
        serde_json::json!({"listeners": [{"name": "web", "listen": "127.0.0.1:8080"}]}),
        "sluice.yaml",
        Some(("/sluice", &res)),
    )
    .unwrap_err()
    .to_string();
    assert!(
        all.contains("/sluice/routes/typo.match.pth: unknown field"),
        "{all}"
    );
    assert!(all.contains("/sluice/routes/broken: invalid JSON"), "{all}");

    // Fixing the value clears its error.
    c.put("/sluice/routes/broken", route("u"), None).await.unwrap();
    let res = wait_for(&mut w, "the fix", |r| r.routes.contains_key("broken")).await;
    assert_eq!(
        res.errors.len(),
        1,
        "only the unknown kind is left: {:?}",
        res.errors
    );
}

#[tokio::test]
async fn the_cache_file_holds_the_last_published_state() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("etcd-cache.json");
    let mut c = etcd.client().await;
    c.put("/sluice/upstreams/u", UPSTREAM, None).await.unwrap();
    let mut w = spawn_watch(EtcdOptions {
        cache: Some(cache.clone()),
        ..options(&etcd)
    });
    wait_for(&mut w, "the initial list", |r| r.upstreams.contains_key("u")).await;
    c.put("/sluice/routes/a", route("u"), None).await.unwrap();
    let res = wait_for(&mut w, "route a", |r| r.routes.contains_key("a")).await;
    assert_eq!(load_cache(&cache).unwrap(), *res);
    assert!(load_cache(&dir.path().join("missing.json")).is_none());
}

const DOC: &str = "
upstreams:
- id: u
  endpoints: [{address: '127.0.0.1:9001'}]
routes:
- id: a
  upstream: u
  match: {path: {prefix: /a}}
- id: b
  upstream: u
";

#[tokio::test]
async fn apply_with_prune_writes_every_change_in_one_revision() {
    let etcd = Etcd::start().await;
    let opts = options(&etcd);
    let mut c = etcd.client().await;
    c.put("/sluice/upstreams/u", UPSTREAM, None).await.unwrap();
    c.put("/sluice/routes/old", route("u"), None).await.unwrap();
    let before = c.get("/", None).await.unwrap().header().unwrap().revision();

    let changes = diff(&opts, DOC, true, &NoKinds).await.unwrap();
    let kinds: Vec<_> = changes.iter().map(|ch| (ch.key.as_str(), ch.kind)).collect();
    assert_eq!(
        kinds,
        [
            ("/sluice/routes/a", ChangeKind::Create),
            ("/sluice/routes/b", ChangeKind::Create),
            ("/sluice/routes/old", ChangeKind::Delete),
            ("/sluice/upstreams/u", ChangeKind::Update),
        ]
    );
    assert!(
        changes[3].diff.contains("-- address: 127.0.0.1:9000"),
        "{}",
        changes[3].diff
    );
    assert!(
        changes[3].diff.contains("+- address: 127.0.0.1:9001"),
        "{}",
        changes[3].diff
    );

    let mut events = c
        .watch(
            "/sluice/",
            Some(WatchOptions::new().with_prefix().with_start_revision(before + 1)),
        )
        .await
        .unwrap();
    let summary = apply(&opts, DOC, true, &NoKinds).await.unwrap();
    assert_eq!(summary.created, ["/sluice/routes/a", "/sluice/routes/b"]);
    assert_eq!(summary.updated, ["/sluice/upstreams/u"]);
    assert_eq!(summary.deleted, ["/sluice/routes/old"]);
    assert_eq!(summary.revision, Some(before + 1));

    // A watcher sees the whole apply as one response at one revision.
    let batch = tokio::time::timeout(WAIT, async {
        loop {
            let response = events.message().await.unwrap().unwrap();
            if !response.events().is_empty() {
                return response;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(batch.events().len(), 4);
    assert!(batch
        .events()
        .iter()
        .all(|e| e.kv().unwrap().mod_revision() == before + 1));

    // Applying again changes nothing, and `get` prints a document that applies cleanly.
    let again = apply(&opts, DOC, true, &NoKinds).await.unwrap();
    assert_eq!((again.unchanged, again.revision), (3, None));
    let printed = get(&opts).await.unwrap();
    assert!(printed.contains("prefix: /a"), "{printed}");
    assert!(
        diff(&opts, &printed, true, &NoKinds).await.unwrap().is_empty(),
        "{printed}"
    );
}

#[tokio::test]
async fn apply_validates_against_what_stays_in_etcd() {
    let etcd = Etcd::start().await;
    let opts = options(&etcd);
    let mut c = etcd.client().await;
    c.put("/sluice/upstreams/stored", UPSTREAM, None).await.unwrap();

    // A route may use an upstream that is already in etcd...
    let doc = "routes: [{id: r, upstream: stored}]";
    let summary = apply(&opts, doc, false, &NoKinds).await.unwrap();
    assert_eq!(summary.created, ["/sluice/routes/r"]);

    // ...but not with prune, which would delete it.
    let err = apply(&opts, doc, true, &NoKinds).await.unwrap_err();
    assert!(matches!(err, EtcdError::Invalid(_)), "{err}");
    assert_eq!(err.to_string(), "routes[0].upstream: unknown upstream \"stored\"");

    // Errors name the document's paths, and nothing is written.
    let bad = "routes: [{id: s, upstream: stored, match: {path: {regex: '(['}}}]\nlisteners: []";
    let err = apply(&opts, bad, false, &NoKinds).await.unwrap_err().to_string();
    assert!(
        err.contains("listeners: only `routes`, `upstreams` and `consumers` are stored in etcd"),
        "{err}"
    );
    let bad = "routes: [{id: s, upstream: stored, match: {path: {regex: '(['}}}]";
    let err = apply(&opts, bad, false, &NoKinds).await.unwrap_err().to_string();
    assert!(
        err.starts_with("routes[0].match.path.regex: invalid regex"),
        "{err}"
    );
    assert!(c.get("/sluice/routes/s", None).await.unwrap().kvs().is_empty());
}

/// The rollout store's keys (`{prefix}/rollouts/`) are not config: the watch does not
/// report them, `get` does not print them and `apply --prune` keeps them.
#[tokio::test]
async fn rollout_store_keys_are_not_config() {
    let etcd = Etcd::start().await;
    let opts = options(&etcd);
    let mut c = etcd.client().await;
    c.put("/sluice/upstreams/u", UPSTREAM, None).await.unwrap();
    c.put("/sluice/rollouts/state/a", r#"{"step":2}"#, None)
        .await
        .unwrap();
    c.put("/sluice/rollouts/leader", "replica-1", None).await.unwrap();

    let mut w = spawn_watch(options(&etcd));
    let res = wait_for(&mut w, "the initial list", |r| r.upstreams.contains_key("u")).await;
    assert!(res.errors.is_empty(), "{:?}", res.errors);
    wait_connected(&mut w, true).await;
    let published = w.resources.borrow_and_update().clone().unwrap();
    c.put("/sluice/rollouts/stats/a/replica-1", "[]", None)
        .await
        .unwrap();
    c.put("/sluice/routes/r", route("u"), None).await.unwrap();
    let res = wait_for(&mut w, "route r", |r| r.routes.contains_key("r")).await;
    assert!(res.errors.is_empty(), "{:?}", res.errors);
    assert!(res.revision > published.revision);

    assert!(!get(&opts).await.unwrap().contains("rollouts"));
    let summary = apply(&opts, DOC, true, &NoKinds).await.unwrap();
    assert!(
        summary.deleted.iter().all(|k| !k.contains("/rollouts/")),
        "{:?}",
        summary.deleted
    );
    let kept = c.get("/sluice/rollouts/state/a", None).await.unwrap();
    assert_eq!(kept.kvs()[0].value(), br#"{"step":2}"#);
}

/// A route check that records the upstream and consumer ids of every config it is given
/// and refuses each filter of kind `refuse`.
#[derive(Default)]
struct Spy {
    seen: std::sync::Mutex<Vec<(Vec<String>, Vec<String>)>>,
}

impl sluice_config::RouteCheck for Spy {
    fn check(&self, config: &sluice_config::Config) -> Result<(), sluice_config::ConfigErrors> {
        self.seen.lock().unwrap().push((
            config.upstreams.iter().map(|u| u.id.clone()).collect(),
            config.consumers.iter().map(|c| c.name.clone()).collect(),
        ));
        let errors = config
            .routes
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                r.filters
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.kind == "refuse")
                    .map(move |(j, _)| {
                        sluice_config::ConfigError::at(
                            format!("routes[{i}].filters[{j}].refuse"),
                            "refused by the check",
                        )
                    })
            })
            .collect();
        sluice_config::ConfigErrors::result(errors)
    }

    fn has_kind(&self, kind: &str) -> bool {
        kind == "refuse"
    }
}

#[tokio::test]
async fn apply_and_diff_run_the_route_check_on_the_document_merged_with_etcd() {
    let etcd = Etcd::start().await;
    let opts = options(&etcd);
    let mut c = etcd.client().await;
    c.put("/sluice/upstreams/stored", UPSTREAM, None).await.unwrap();
    c.put("/sluice/consumers/alice", r#"{"name":"alice"}"#, None)
        .await
        .unwrap();

    // The check sees what stays in etcd beside the document.
    let spy = Spy::default();
    let doc = "routes: [{id: r, upstream: stored}]";
    assert_eq!(diff(&opts, doc, false, &spy).await.unwrap().len(), 1);
    let (upstreams, consumers) = spy.seen.lock().unwrap().pop().unwrap();
    assert_eq!(upstreams, ["stored"]);
    assert_eq!(consumers, ["alice"]);

    // What the check refuses is refused at its path by diff and apply, and nothing is written.
    let bad = "routes: [{id: r, upstream: stored, filters: [{refuse: {}}]}]";
    let err = diff(&opts, bad, false, &spy).await.unwrap_err();
    assert!(matches!(err, EtcdError::Invalid(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "routes[0].filters[0].refuse: refused by the check"
    );
    let err = apply(&opts, bad, false, &spy).await.unwrap_err().to_string();
    assert_eq!(err, "routes[0].filters[0].refuse: refused by the check");
    assert!(c.get("/sluice/routes/r", None).await.unwrap().kvs().is_empty());
}
