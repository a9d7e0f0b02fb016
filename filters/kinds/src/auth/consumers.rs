//! The compiled consumer table: every consumer by name, its groups, its credentials by
//! method, and the per-method credential indexes the authentication methods build
//! from it (once per consumer set, shared by every filter of a snapshot).
//!
//! A method's build gets the table with [`Consumers::of`], which returns the table of
//! the config being compiled, built once and cached a service in the build context while the
//! consumers stay the same. Then:
//!
//! - [`Consumers::get`]: a consumer by name (`Arc<Consumer>`, with
//!   [`Consumer::identity`] for the request's identity);
//! - [`Consumers::credentials`]: every `(config index, consumer, credentials.<method>)`;
//! - [`Consumers::index`]: the method's own index (a key map, a user table, …), built
//!   the first time one of the snapshot's filters asks and shared by the others;
//! - [`Consumers::digest`]: what [`sluice_core::Filter::consumers_digest`] returns, so a
//!   consumers-only change rebuilds the filters that read consumers.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};
use sluice_config::model::ConsumerConfig;
use sluice_config::{Config, ConfigError};

use crate::registry::{BuildCtx, SpecError};
use sluice_core::filter::Identity;

/// One consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// Its name.
    pub name: Arc<str>,
    /// Its groups.
    pub groups: Vec<Arc<str>>,
    /// Its position in the config's `consumers` (for error paths).
    pub index: usize,
}

impl Consumer {
    /// The identity a request authenticated as this consumer carries.
    pub fn identity(&self) -> Identity {
        Identity {
            consumer: self.name.clone(),
            groups: self.groups.clone(),
            claims: Vec::new(),
        }
    }
}

type Index = Arc<dyn Any + Send + Sync>;

/// The compiled consumer table.
pub struct Consumers {
    source: Vec<ConsumerConfig>,
    list: Vec<Arc<Consumer>>,
    by_name: HashMap<Arc<str>, usize>,
    digest: String,
    // Build time only: methods' indexes, built on first use.
    indexes: Mutex<HashMap<&'static str, Index>>,
}

impl std::fmt::Debug for Consumers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumers")
            .field("consumers", &self.list.len())
            .field("digest", &self.digest)
            .finish()
    }
}

/// The cache of the last consumer table built, a service in the build context.
#[derive(Clone, Default)]
pub struct ConsumerCache(Arc<Mutex<Option<Arc<Consumers>>>>);

impl Consumers {
    /// Builds the table (the first of two consumers with one name wins; validation
    /// reports the second).
    pub fn new(consumers: &[ConsumerConfig]) -> Consumers {
        let mut list = Vec::with_capacity(consumers.len());
        let mut by_name = HashMap::with_capacity(consumers.len());
        for (i, c) in consumers.iter().enumerate() {
            let name: Arc<str> = Arc::from(c.name.as_str());
            by_name.entry(name.clone()).or_insert(i);
            list.push(Arc::new(Consumer {
                name,
                groups: c.groups.iter().map(|g| Arc::from(g.as_str())).collect(),
                index: i,
            }));
        }
        // Hashed with the credentials' real values (a changed key is a change), never shown.
        let bytes = sluice_config::secret::reveal(|| serde_json::to_vec(consumers).unwrap_or_default());
        let digest = hex::encode(Sha256::digest(bytes));
        Consumers {
            source: consumers.to_vec(),
            list,
            by_name,
            digest,
            indexes: Mutex::new(HashMap::new()),
        }
    }

    /// The table of `ctx.config`'s consumers: the cached one while they are unchanged,
    /// else a new one (then cached).
    pub fn of(ctx: &BuildCtx<'_>) -> Arc<Consumers> {
        let cache = ctx.services.get_or_insert_with(ConsumerCache::default);
        let mut cached = cache.0.lock();
        if let Some(c) = cached.as_ref().filter(|c| c.source == ctx.config.consumers) {
            return c.clone();
        }
        let table = Arc::new(Consumers::new(&ctx.config.consumers));
        *cached = Some(table.clone());
        table
    }

    /// The consumer called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Consumer>> {
        self.by_name.get(name).map(|i| &self.list[*i])
    }

    /// Every consumer, in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Consumer>> {
        self.list.iter()
    }

    /// How many consumers there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every consumer with credentials for `method`: `(consumer, its credential spec)`,
    /// in config order (`consumer.index` is its position, for error paths).
    pub fn credentials<'a>(
        &'a self,
        method: &'a str,
    ) -> impl Iterator<Item = (&'a Arc<Consumer>, &'a serde_json::Value)> {
        self.list
            .iter()
            .zip(&self.source)
            .filter_map(move |(c, src)| src.credentials.get(method).map(|v| (c, v)))
    }

    /// Runs `check` on every consumer's `credentials.<method>` and returns its errors
    /// with their full paths (`consumers[2].credentials.key_auth.keys[0]`).
    pub fn check_each(
        &self,
        method: &str,
        check: impl Fn(&serde_json::Value) -> Vec<SpecError>,
    ) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        for (c, spec) in self.credentials(method) {
            for e in check(spec) {
                errors.push(credential_error(c.index, method, &e));
            }
        }
        errors
    }

    /// Method `method`'s index over this table, built with `build` the first time it is
    /// asked for and shared afterwards (so every filter of a snapshot uses one index).
    /// Build time only: it takes a lock.
    pub fn index<T: Send + Sync + 'static>(
        &self,
        method: &'static str,
        build: impl FnOnce(&Consumers) -> T,
    ) -> Arc<T> {
        if let Some(i) = self.indexes.lock().get(method).cloned() {
            if let Ok(t) = i.downcast::<T>() {
                return t;
            }
        }
        let t = Arc::new(build(self));
        self.indexes.lock().insert(method, t.clone());
        t
    }

    /// The digest of the consumers this table was built from.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// The error for a credential of consumer `index`, at `e.path` inside its
/// `credentials.<method>`.
pub fn credential_error(index: usize, method: &str, e: &SpecError) -> ConfigError {
    let base = format!("consumers[{index}].credentials.{method}");
    ConfigError {
        path: if e.path.is_empty() {
            base
        } else if e.path.starts_with('[') {
            format!("{base}{}", e.path)
        } else {
            format!("{base}.{}", e.path)
        },
        message: e.message.clone(),
    }
}

/// Parses a credential spec like a filter spec, but never echoes the value in the error
/// (a serde "invalid type: string \"hunter2\"" would print a secret).
pub fn parse_credential<T: serde::de::DeserializeOwned>(
    spec: &serde_json::Value,
) -> Result<T, Vec<SpecError>> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = e.into_inner().to_string();
        let message = if message.starts_with("invalid type") || message.starts_with("invalid value") {
            "invalid value (not shown)".to_string()
        } else {
            message
        };
        vec![SpecError::at(path, message)]
    })
}

/// Checks every consumer's credentials: each method's spec, by the method's own check,
/// and that every method named under `credentials` is one. (Names and groups are
/// checked by the config model.)
pub fn validate(config: &Config, ctx: &BuildCtx<'_>) -> Vec<ConfigError> {
    let table = Consumers::of(ctx);
    let mut errors = Vec::new();
    for (i, c) in config.consumers.iter().enumerate() {
        for method in c.credentials.keys() {
            match crate::auth::find_method(method) {
                Some(m) if m.credentials.is_some() => {}
                Some(_) => errors.push(ConfigError {
                    path: format!("consumers[{i}].credentials.{method}"),
                    message: format!("method {method} takes no consumer credentials"),
                }),
                None => errors.push(ConfigError {
                    path: format!("consumers[{i}].credentials.{method}"),
                    message: format!(
                        "unknown authentication method {method:?} (known: {})",
                        crate::auth::method_names()
                    ),
                }),
            }
        }
    }
    for m in crate::auth::METHODS {
        if let Some(check) = m.credentials {
            errors.extend(check(&table));
        }
    }
    errors.sort_by(|a, b| a.path.cmp(&b.path));
    errors
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sluice_core::Services;

    #[test]
    fn the_table_is_cached_while_consumers_are_unchanged() {
        let services = Services::default();
        let a: Config = serde_yaml::from_str("consumers: [{name: a, groups: [g]}, {name: b}]").unwrap();
        let ctx = BuildCtx::new(&a, &services);
        let t1 = Consumers::of(&ctx);
        let t2 = Consumers::of(&ctx);
        assert!(Arc::ptr_eq(&t1, &t2));
        assert_eq!(&*t1.get("a").unwrap().groups[0], "g");
        assert!(t1.get("c").is_none());
        let b: Config = serde_yaml::from_str("consumers: [{name: a, groups: [h]}, {name: b}]").unwrap();
        let t3 = Consumers::of(&BuildCtx::new(&b, &services));
        assert!(!Arc::ptr_eq(&t1, &t3));
        assert_ne!(t1.digest(), t3.digest());
        let i1 = t3.index("x", |c| c.len());
        let i2 = t3.index("x", |_| 99usize);
        assert!(Arc::ptr_eq(&i1, &i2));
    }

    #[test]
    fn unknown_methods_are_named_and_values_redacted() {
        let c: Config = serde_yaml::from_str(
            "consumers: [{name: a, credentials: {nope: {x: 1}, key_auth: {keys: [secret1]}}}]",
        )
        .unwrap();
        let services = Services::default();
        let errs = validate(&c, &BuildCtx::new(&c, &services));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "consumers[0].credentials.nope");
        // A consumer serialises with every credential value redacted, by itself.
        let r = serde_json::to_string(&c.consumers).unwrap();
        assert!(!format!("{:?}", c.consumers).contains("secret1"));
        assert!(!r.contains("secret1"), "{r}");
        assert!(r.contains("\"keys\":[\"<redacted>\"]"), "{r}");
    }

    #[test]
    fn credential_parse_errors_do_not_echo_values() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct S {
            keys: Vec<String>,
        }
        let errs = parse_credential::<S>(&serde_json::json!({"keys": [12345678]}))
            .err()
            .unwrap();
        assert!(!errs[0].message.contains("12345678"), "{errs:?}");
        assert_eq!(errs[0].path, "keys[0]");
    }
}
