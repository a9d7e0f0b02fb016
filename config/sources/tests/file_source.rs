//! The file source against a real filesystem: loading a file or a directory, and the
//! watcher seeing in-place writes, atomic renames and ConfigMap symlink swaps.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use sluice_sources::file::{load, watch, FileWatcher};

const WAIT: Duration = Duration::from_secs(10);
const DEBOUNCE: Duration = Duration::from_millis(50);

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Waits (bounded) for the watcher's next notification.
async fn next_change(w: &mut FileWatcher) {
    tokio::time::timeout(WAIT, w.changed())
        .await
        .expect("no change notification within 10 s");
}

/// Waits until `load` returns a document whose `routes[0].id` is `want`.
async fn wait_for_route(path: &Path, want: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (doc, _) = load(path).unwrap();
        if doc["routes"][0]["id"] == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {doc}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn doc(route: &str) -> String {
    format!("routes: [{{id: {route}, upstream: u}}]\n")
}

#[tokio::test]
async fn a_write_in_place_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    write(&file, &doc("one"));
    let (_, first_hash) = load(&file).unwrap();
    let mut w = watch(&file, DEBOUNCE).unwrap();
    write(&file, &doc("two"));
    next_change(&mut w).await;
    let (value, hash) = load(&file).unwrap();
    assert_eq!(value["routes"][0]["id"], "two");
    assert_ne!(hash, first_hash);
}

#[tokio::test]
async fn an_atomic_rename_over_the_file_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    write(&file, &doc("one"));
    let mut w = watch(&file, DEBOUNCE).unwrap();
    let tmp = dir.path().join(".sluice.yaml.swp");
    write(&tmp, &doc("two"));
    std::fs::rename(&tmp, &file).unwrap();
    next_change(&mut w).await;
    assert_eq!(load(&file).unwrap().0["routes"][0]["id"], "two");
    // The watch survives the rename: a second replacement is seen too.
    write(&tmp, &doc("three"));
    std::fs::rename(&tmp, &file).unwrap();
    next_change(&mut w).await;
    wait_for_route(&file, "three").await;
}

#[tokio::test]
async fn a_change_to_another_file_in_the_directory_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    write(&file, &doc("one"));
    let mut w = watch(&file, DEBOUNCE).unwrap();
    write(&dir.path().join("other.txt"), "x");
    assert!(tokio::time::timeout(Duration::from_millis(500), w.changed())
        .await
        .is_err());
}

/// A Kubernetes ConfigMap mount: `name -> ..data/name`, `..data -> ..<timestamp>`.
fn configmap(dir: &Path, ts: &str, files: &[(&str, &str)]) {
    let data = dir.join(ts);
    std::fs::create_dir(&data).unwrap();
    for (name, text) in files {
        write(&data.join(name), text);
    }
    let tmp_link = dir.join("..data_tmp");
    std::os::unix::fs::symlink(ts, &tmp_link).unwrap();
    std::fs::rename(&tmp_link, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_seen_when_watching_the_file() {
    let dir = tempfile::tempdir().unwrap();
    configmap(dir.path(), "..2026_01_01", &[("config.yaml", &doc("one"))]);
    let file = dir.path().join("config.yaml");
    assert_eq!(load(&file).unwrap().0["routes"][0]["id"], "one");
    let mut w = watch(&file, DEBOUNCE).unwrap();
    configmap(dir.path(), "..2026_01_02", &[("config.yaml", &doc("two"))]);
    next_change(&mut w).await;
    assert_eq!(load(&file).unwrap().0["routes"][0]["id"], "two");
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_seen_when_watching_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    configmap(dir.path(), "..2026_01_01", &[("routes.yaml", &doc("one"))]);
    let mut w = watch(dir.path(), DEBOUNCE).unwrap();
    configmap(dir.path(), "..2026_01_02", &[("routes.yaml", &doc("two"))]);
    next_change(&mut w).await;
    let (value, _) = load(dir.path()).unwrap();
    // Only the visible name is read, not the `..` directories' copies.
    assert_eq!(value["routes"].as_array().unwrap().len(), 1);
    assert_eq!(value["routes"][0]["id"], "two");
}

#[test]
fn a_directory_is_merged_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("10-base.yaml"),
        "listeners: [{name: web, listen: '127.0.0.1:8080'}]\nserver: {access_log: true}\nupstreams: [{id: u, endpoints: [{address: '127.0.0.1:9000'}]}]\n",
    );
    write(&dir.path().join("20-routes.yml"), &doc("a"));
    write(
        &dir.path().join("30-more.json"),
        r#"{"routes":[{"id":"b","upstream":"u"}]}"#,
    );
    write(
        &dir.path().join(".hidden.yaml"),
        "routes: [{id: hidden, upstream: u}]",
    );
    write(&dir.path().join("notes.txt"), "not config");
    write(&dir.path().join("40-empty.yaml"), "");
    let (value, hash) = load(dir.path()).unwrap();
    let ids: Vec<_> = value["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(value["server"]["access_log"], true);
    let config = sluice_config::Config::from_json_value(value).unwrap();
    assert_eq!(config.upstreams.len(), 1);
    // Loading the same content again gives the same hash.
    assert_eq!(load(dir.path()).unwrap().1, hash);
}

#[test]
fn a_section_set_in_two_files_names_both() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("a.yaml"), "server: {access_log: true}\n");
    write(&dir.path().join("b.yaml"), "server: {access_log: false}\n");
    let errors = load(dir.path()).unwrap_err().to_string();
    let a = dir.path().join("a.yaml").display().to_string();
    let b = dir.path().join("b.yaml").display().to_string();
    assert_eq!(
        errors,
        format!("{b}: server: already set in {a}; set `server` in one file only")
    );
}

#[test]
fn a_parse_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("ok.yaml"), &doc("a"));
    write(&dir.path().join("bad.json"), "{\"routes\": [");
    let errors = load(dir.path()).unwrap_err().to_string();
    let bad = dir.path().join("bad.json").display().to_string();
    assert!(errors.starts_with(&format!("{bad}: invalid JSON")), "{errors}");
}

#[test]
fn formatting_changes_keep_the_hash() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    write(&file, "routes: [{id: a, upstream: u}]\n");
    let (_, one) = load(&file).unwrap();
    write(&file, "# a comment\nroutes:\n  - upstream: u\n    id: a\n");
    assert_eq!(load(&file).unwrap().1, one);
}
