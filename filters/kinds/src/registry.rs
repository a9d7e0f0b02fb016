//! The filter kinds, one module each with its spec, validation, build and tests, and the
//! registry: one line per kind. Adding a filter means a new module (or folder), a line
//! in [`REGISTRY`] (or, for a test-only kind, in [`test_kinds!`]) and its section in
//! `docs/config.md`; the gateway's glue does not change. A kind gets what it needs
//! (a runtime, the metrics registry, pools it makes itself) from the [`Services`] map
//! in its [`BuildCtx`], and registers its own metrics there.
//!
//! A spec is parsed from the route's config with `deny_unknown_fields`, so a misspelt
//! key is an error naming its path (`routes[0].filters[1].rate_limit.per: unknown field
//! "pre"`), never a silent default.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use sluice_core::filter::Filter;
pub use sluice_core::Services;

use crate::auth::{acl_kind, auth_kind, basic_auth, client_cert, forward_auth, jwt, key_auth};
use crate::{
    canary, cors, direct_response, headers, ip_restriction, limit_conn, mirror, rate_limit, redirect,
};

/// A spec error: the control plane's one error type, its path taken inside the
/// filter's spec (`per`, `headers.x-a`; empty for the spec as a whole).
/// [`crate::build_chain`] puts the route and filter in front (`routes[3].filters[1].rate_limit.per`).
pub type SpecError = sluice_config::ConfigError;

/// What a kind's build returns: the filter, or every error in its spec.
pub type BuildResult = Result<Arc<dyn Filter>, Vec<SpecError>>;

/// One filter kind.
pub struct Kind {
    /// The name written in config, e.g. `redirect`.
    pub name: &'static str,
    /// Whether the filter answers every request itself, so its route needs no backend.
    pub answers: bool,
    /// Parses, validates and builds the filter from its spec, in the build context.
    pub build: fn(&serde_json::Value, &BuildCtx<'_>) -> BuildResult,
    /// The spec as views show it (the admin API, `sluice get`/`diff`, `Debug`): as
    /// written, with the secret fields redacted. Use [`shown_as`] with the kind's spec
    /// type, so a secret field (a `sluice_config::secret::Secret`) is redacted by its
    /// type wherever it is added.
    pub redact: fn(&serde_json::Value) -> serde_json::Value,
    /// The JSON Schema of its spec, for the config's schema ([`config_schema`]): usually
    /// `Some(schema_of::<TheSpec>)`, the type `build` parses. `None` only for test-only
    /// kinds, which the published schema leaves out.
    pub schema: Option<fn(&mut schemars::SchemaGenerator) -> schemars::Schema>,
}

/// A spec shown as its spec type `T` shows it: read as a `T`, the values that come out
/// redacted (its `Secret` fields) redacted in the spec as written; a spec that is not a
/// valid `T` redacted whole (see `sluice_config::secret::redact_as`).
pub fn shown_as<T: serde::de::DeserializeOwned + serde::Serialize>(
    spec: &serde_json::Value,
) -> serde_json::Value {
    sluice_config::secret::redact_as::<T>(spec)
}

/// `spec` of kind `kind` as views show it (see [`Kind::redact`]); an unknown kind's
/// spec is redacted whole.
pub fn redact_spec(kind: &str, spec: &serde_json::Value) -> serde_json::Value {
    match find(kind) {
        Some(k) => (k.redact)(spec),
        None => sluice_config::model::redact_value(spec),
    }
}

/// Makes every view of a config (its `Serialize`, its `Debug`) show filter specs
/// through [`redact_spec`]. Called once at start; until then every value of every spec
/// is redacted.
pub fn install_redactor() {
    sluice_config::secret::set_spec_redactor(redact_spec);
}

/// The schema of spec type `T` (a definition in the generator, referred to).
pub fn schema_of<T: schemars::JsonSchema>(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    generator.subschema_for::<T>()
}

/// The JSON Schema of a whole config file, each filter item one of the registered kinds
/// with its spec (see [`sluice_config::schema`]): what `sluice schema` prints.
pub fn config_schema() -> schemars::Schema {
    sluice_config::schema::config_schema(|generator| {
        kinds()
            .filter_map(|k| k.schema.map(|schema| (k.name.to_string(), schema(generator))))
            .collect()
    })
}

/// What a filter's build may look at besides its own spec.
#[derive(Clone, Copy)]
pub struct BuildCtx<'a> {
    /// The whole config being compiled (consumers, server settings, other routes). In
    /// `sluice validate` and the CLI's checks it may hold only part of a config.
    pub config: &'a sluice_config::Config,
    /// Process-wide services every build shares, which outlive reloads: what the
    /// gateway inserted (a runtime handle, the metrics registry, an endpoint lookup)
    /// and what kinds made for themselves (pools, key caches, counters). Empty in
    /// validation: a kind must then check its spec and start no background work.
    pub services: &'a Services,
    /// The id of the route the filter is built for (a metric label, a shared store's
    /// key prefix); set by [`crate::build_chain`]. Default: empty.
    pub route: &'a str,
}

impl<'a> BuildCtx<'a> {
    /// A context over `config` and `services`, for no route in particular.
    pub fn new(config: &'a sluice_config::Config, services: &'a Services) -> BuildCtx<'a> {
        BuildCtx {
            config,
            services,
            route: "",
        }
    }

    /// The runtime background work (key refreshes, pool upkeep, outbound calls) is
    /// spawned on, if the gateway gave one; `None` in validation.
    pub fn runtime(&self) -> Option<tokio::runtime::Handle> {
        self.services
            .get::<tokio::runtime::Handle>()
            .map(|h| (*h).clone())
    }

    /// The metrics registry kinds register their metrics in, if the gateway gave one;
    /// `None` in validation and unit tests (nothing is counted).
    pub fn metrics(&self) -> Option<Arc<prometheus::Registry>> {
        self.services.get::<prometheus::Registry>()
    }
}

/// Every filter kind of a release build, one line each (the test-only ones are in
/// [`test_kinds!`]).
pub static REGISTRY: &[Kind] = &[
    headers::KIND,
    redirect::KIND,
    direct_response::KIND,
    rate_limit::KIND,
    jwt::KIND,
    auth_kind::KIND,
    key_auth::KIND,
    basic_auth::KIND,
    acl_kind::KIND,
    ip_restriction::KIND,
    client_cert::KIND,
    cors::KIND,
    forward_auth::KIND,
    limit_conn::KIND,
    canary::KIND,
    mirror::KIND,
];

/// Declares the test-only kinds, one line each (`name = "its file"`, relative to
/// `src/`): the line both declares the kind's module and lists its `KIND` in the
/// registry, so such a kind is added by its folder and that one line. They exist only
/// with the `test-kinds` feature (`sluice-gateway/test-kinds`, which `scripts/test.sh`
/// enables); a release build does not know them.
macro_rules! test_kinds {
    ($($name:ident = $file:literal),* $(,)?) => {
        $(
            #[cfg(feature = "test-kinds")]
            #[path = $file]
            pub mod $name;
        )*
        /// The test-only kinds (empty without the `test-kinds` feature).
        #[cfg(feature = "test-kinds")]
        pub static TEST_KINDS: &[Kind] = &[$($name::KIND),*];
        /// The test-only kinds (empty without the `test-kinds` feature).
        #[cfg(not(feature = "test-kinds"))]
        pub static TEST_KINDS: &[Kind] = &[];
    };
}

test_kinds! {
    panic = "panic.rs",
    ticker = "ticker/mod.rs",
}

/// Every kind this build knows: [`REGISTRY`], then [`TEST_KINDS`].
pub fn kinds() -> impl Iterator<Item = &'static Kind> {
    REGISTRY.iter().chain(TEST_KINDS)
}

/// The kind called `name`.
pub fn find(name: &str) -> Option<&'static Kind> {
    kinds().find(|k| k.name == name)
}

/// The names of every kind, for error messages.
pub fn names() -> String {
    kinds().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

/// The route's configured rate and concurrency limits, for `/api/v1/routes` (names,
/// quotas, keys, store; never a Redis URL).
pub fn describe_limits(route: &sluice_config::model::RouteConfig) -> Vec<serde_json::Value> {
    route
        .filters
        .iter()
        .filter_map(|f| match f.kind.as_str() {
            "rate_limit" => rate_limit::describe(&f.spec),
            "limit_conn" => limit_conn::describe(&f.spec),
            _ => None,
        })
        .collect()
}

/// Deserializes a spec with the path of the first error.
pub(crate) fn parse<T: DeserializeOwned>(spec: &serde_json::Value) -> Result<T, Vec<SpecError>> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        vec![SpecError::at(path, e.into_inner().to_string())]
    })
}

/// Runs a kind's `build` with an empty config and no runtime, as validation does.
#[cfg(test)]
pub(crate) fn build_for_test(
    build: fn(&serde_json::Value, &BuildCtx<'_>) -> BuildResult,
    spec: &serde_json::Value,
) -> BuildResult {
    let config = sluice_config::Config::default();
    let services = Services::default();
    build(spec, &BuildCtx::new(&config, &services))
}

#[cfg(all(test, not(feature = "test-kinds")))]
mod without_test_kinds {
    #[test]
    fn a_build_without_the_feature_has_no_panic_kind() {
        assert!(super::find("panic").is_none());
    }
}
