//! The gateway's side of the one validation path ([`sluice_config::check`]): the route
//! check this build hands to everyone who validates a config.
//!
//! - `sluice validate` composes the file and calls [`check`];
//! - `sluice apply` and `sluice diff` give [`route_check`] to the etcd plan, which checks
//!   the document merged with what stays in etcd before anything is written;
//! - every config source gets [`route_check`] in its context (the Kubernetes source
//!   leaves out a route its objects make invalid, and maps a feature onto a kind only
//!   where this build has the kind);
//! - the gateway's apply runs the model's checks ([`Config::validate`]) and compiles
//!   ([`crate::control::snapshot::Snapshot::compile`]), which builds each route's chain
//!   with the same functions the route check calls and keeps it, so a filter is built
//!   once per apply; a config `sluice validate` accepts is one apply accepts.
//!
//! Every error is a [`sluice_config::ConfigError`] naming its field path.

use std::sync::Arc;

use sluice_config::{Config, ConfigErrors, RouteCheck};

/// The route check of this build: its filter kinds.
pub fn route_check() -> Arc<dyn RouteCheck> {
    Arc::new(sluice_filters::FilterKinds)
}

/// Validates a whole config the one way: the model's checks, then the route check.
pub fn check(config: &Config) -> Result<(), ConfigErrors> {
    sluice_config::check::validate(config, &sluice_filters::FilterKinds)
}
