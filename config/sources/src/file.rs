//! The file source: one YAML/JSON file, or a directory of them, and a watcher that says
//! when to read it again.
//!
//! A directory may be a Kubernetes ConfigMap mount: its visible names are symlinks
//! (`config.yaml -> ..data/config.yaml`) and an update swaps the `..data` symlink with a
//! rename. [`load`] follows those symlinks and skips the `..`-prefixed entries
//! themselves; [`watch`] watches the directory so the swap is seen.
//!
//! This module reads and watches; it does not decide whether a change is worth a reload.
//! The consumer re-loads after each notification and compares the content hash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};

use sluice_config::validate::{hash_of, parse_value, ConfigError, ConfigErrors};

/// Top-level lists that several files of a directory may each add to.
const LISTS: [&str; 3] = ["listeners", "upstreams", "routes"];

/// File name extensions read from a directory.
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Default time [`watch`] waits for a burst of file events to settle: 50 ms.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);

/// Reads a config file, or every config file of a directory, into one document.
///
/// Returns the document and the SHA-256 (hex) of its canonical JSON form, which changes
/// only when the content does (not with comments or formatting).
///
/// A file is YAML, or JSON when it starts with `{` or `[`. From a directory, every
/// regular file (or symlink to one) directly in it named `*.yaml`, `*.yml` or `*.json` is
/// read, in name order; names starting with `.` are skipped (hidden files and the `..`
/// entries of a ConfigMap mount). Their top-level lists (`listeners`, `upstreams`,
/// `routes`) are concatenated in that order; any other top-level key (`server`, `admin`)
/// may be set by only one file. Every error names the file it is about.
pub fn load(path: &Path) -> Result<(serde_json::Value, String), ConfigErrors> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigErrors::one(path.display().to_string(), format!("cannot read: {e}")))?;
    let value = if meta.is_dir() {
        load_dir(path)?
    } else {
        load_file(path)?
    };
    let hash = hash_of(&crate::compose::canonical(&value));
    Ok((value, hash))
}

/// Reads and parses one file; errors name the file.
fn load_file(path: &Path) -> Result<serde_json::Value, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::one(name.clone(), format!("cannot read: {e}")))?;
    parse_value(&text).map_err(|e| {
        ConfigErrors(
            e.0.into_iter()
                .map(|err| ConfigError {
                    path: crate::compose::base_path(&name, &err.path),
                    message: err.message,
                })
                .collect(),
        )
    })
}

/// The config files of a directory, in name order.
fn dir_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigErrors> {
    let cannot =
        |e: std::io::Error| ConfigErrors::one(dir.display().to_string(), format!("cannot read: {e}"));
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(cannot)? {
        let entry = entry.map_err(cannot)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let wanted = Path::new(name)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e));
        // `metadata` follows symlinks: a ConfigMap's `name -> ..data/name` is a file.
        if wanted && std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every config file of a directory and merges them.
fn load_dir(dir: &Path) -> Result<serde_json::Value, ConfigErrors> {
    let mut merged = serde_json::Map::new();
    // Which file set each non-list top-level key.
    let mut set_by: BTreeMap<String, String> = BTreeMap::new();
    let mut errors = Vec::new();
    for file in dir_files(dir)? {
        let name = file.display().to_string();
        let doc = match load_file(&file) {
            Ok(serde_json::Value::Null) => continue,
            Ok(serde_json::Value::Object(doc)) => doc,
            Ok(_) => {
                errors.push(ConfigError {
                    path: name,
                    message: "expected a map at the top level".into(),
                });
                continue;
            }
            Err(e) => {
                errors.extend(e.0);
                continue;
            }
        };
        for (key, value) in doc {
            if LISTS.contains(&key.as_str()) {
                match value {
                    serde_json::Value::Array(items) => {
                        if let serde_json::Value::Array(list) = merged
                            .entry(key.clone())
                            .or_insert_with(|| serde_json::Value::Array(Vec::new()))
                        {
                            list.extend(items);
                        }
                    }
                    serde_json::Value::Null => {}
                    _ => errors.push(ConfigError {
                        path: format!("{name}: {key}"),
                        message: "expected a list".into(),
                    }),
                }
            } else if let Some(first) = set_by.get(&key) {
                errors.push(ConfigError {
                    path: format!("{name}: {key}"),
                    message: format!("already set in {first}; set `{key}` in one file only"),
                });
            } else {
                set_by.insert(key.clone(), name.clone());
                merged.insert(key, value);
            }
        }
    }
    if errors.is_empty() {
        Ok(serde_json::Value::Object(merged))
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Keeps a file or directory watched, and counts the batches of changes seen.
///
/// The watch lasts as long as this value: drop it to stop watching.
pub struct FileWatcher {
    changes: tokio::sync::watch::Receiver<u64>,
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

impl FileWatcher {
    /// A receiver of the number of change batches seen so far; it is marked changed on
    /// every batch. Valid only while this `FileWatcher` lives (afterwards it sees the
    /// sender closed).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Waits for the next batch of changes after the last one this watcher's own receiver
    /// saw, and returns the number of batches so far. Cancel-safe.
    pub async fn changed(&mut self) -> u64 {
        // The sender lives in the debouncer, which lives as long as `self`.
        let _ = self.changes.changed().await;
        *self.changes.borrow_and_update()
    }
}

/// Whether a watch event asks for a re-read of file `name` in the watched directory (any
/// file when `name` is `None`). Reading a file is no change: without that rule every
/// read's own open and close events would ask for another read, forever.
fn is_change(event: &notify::Event, name: Option<&std::ffi::OsStr>) -> bool {
    use notify::event::{AccessKind, AccessMode};
    let only_read = matches!(
        event.kind,
        notify::EventKind::Access(a) if !matches!(a, AccessKind::Close(AccessMode::Write))
    );
    event.need_rescan()
        || !only_read
            && event.paths.iter().any(|p| match (name, p.file_name()) {
                (None, _) => true,
                (Some(want), Some(got)) => got == want || got.to_string_lossy().starts_with(".."),
                (Some(_), None) => false,
            })
}

/// Starts watching `path` (a file or a directory) for changes.
///
/// Watches, without recursion, the directory that holds the file (or the directory
/// itself), so that an editor's write-to-temp-then-rename and a ConfigMap's `..data`
/// symlink swap are both seen. Events are debounced for `debounce`
/// ([`DEFAULT_DEBOUNCE`] is a good value); each settled batch that touches the file
/// (or, for a directory, anything in it) notifies once. A notification means "read
/// again": compare the content hash from [`load`] to see whether anything changed.
pub fn watch(path: &Path, debounce: Duration) -> Result<FileWatcher, ConfigErrors> {
    let is_dir = std::fs::metadata(path).is_ok_and(|m| m.is_dir());
    let (dir, name) = if is_dir {
        (path.to_path_buf(), None)
    } else {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        (dir, path.file_name().map(|n| n.to_os_string()))
    };
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    let handler = move |result: DebounceEventResult| {
        let relevant = match &result {
            // Watch errors may mean lost events: read again to be safe.
            Err(_) => true,
            Ok(events) => events.iter().any(|event| is_change(event, name.as_deref())),
        };
        if relevant {
            tx.send_modify(|n| *n += 1);
        }
    };
    let fail = |e: notify::Error| ConfigErrors::one(dir.display().to_string(), format!("cannot watch: {e}"));
    let mut debouncer = new_debouncer(debounce, None, handler).map_err(fail)?;
    debouncer.watch(&dir, RecursiveMode::NonRecursive).map_err(fail)?;
    Ok(FileWatcher {
        changes: rx,
        _debouncer: debouncer,
    })
}

#[cfg(test)]
mod watch_tests {
    use super::is_change;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RenameMode};
    use notify::{Event, EventKind};
    use std::ffi::OsStr;

    fn event(kind: EventKind, file: &str) -> Event {
        Event::new(kind).add_path(std::path::PathBuf::from("/etc/sluice").join(file))
    }

    #[test]
    fn reading_the_file_is_not_a_change_but_writing_it_is() {
        let name = Some(OsStr::new("sluice.yaml"));
        for read in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Read),
        ] {
            assert!(!is_change(&event(read, "sluice.yaml"), name), "{read:?}");
        }
        for write in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Create(CreateKind::File),
        ] {
            assert!(is_change(&event(write, "sluice.yaml"), name), "{write:?}");
        }
        let other = event(EventKind::Modify(ModifyKind::Data(DataChange::Any)), "other.yaml");
        assert!(!is_change(&other, name), "another file in the directory");
        let configmap = event(EventKind::Create(CreateKind::Any), "..data");
        assert!(is_change(&configmap, name), "a ConfigMap's symlink swap");
    }
}
