//! The one validation path: what a config must pass before anything serves it.
//!
//! A config is checked in two halves, always in this order and always by these two
//! functions, whoever asks (the gateway's apply, `sluice validate`, `sluice apply` and
//! `diff` before they write to etcd, and every config source):
//!
//! 1. the model's own checks ([`Config::validate`]): references, uniqueness, ranges,
//!    regexes, header names;
//! 2. the **route check** ([`RouteCheck`]): what only the filter kinds know (every
//!    filter spec built by its kind, every consumer's credentials checked by its
//!    method, a route without a backend has a filter that answers, the per-route and
//!    per-listener response settings).
//!
//! The kinds live above this crate, so the route check comes in as a trait object that
//! the gateway hands down: config sources receive it in their context and never depend
//! on the filter kinds themselves. The gateway's compile builds the very chains the route
//! check builds (and keeps them), so a config it accepts is one [`validate`] accepts.
//!
//! Every error is a [`ConfigError`] naming its field path.

use crate::validate::{ConfigError, ConfigErrors};
use crate::Config;

/// The half of validation that the filter kinds own, handed to whoever validates a
/// config (sources through their context, the command line, the gateway).
pub trait RouteCheck: Send + Sync {
    /// Checks what the config model leaves to the filter kinds (every route's filter
    /// specs, every consumer's credentials, that a route without backends has a filter
    /// that answers). `config` has passed [`Config::validate`]. Returns every error,
    /// each with its field path (`routes[3].filters[1].rate_limit.per: …`).
    fn check(&self, config: &Config) -> Result<(), ConfigErrors>;

    /// Whether this build has the filter kind `kind` (e.g. `mirror`), for translations
    /// that map a feature onto a kind only where the kind exists.
    fn has_kind(&self, kind: &str) -> bool;
}

/// Validates `config` the one way: the model's checks, then (when they pass) the route
/// check. Returns every error of the first half that finds any.
pub fn validate(config: &Config, routes: &dyn RouteCheck) -> Result<(), ConfigErrors> {
    config.validate()?;
    routes.check(config)
}

/// A route check that knows no filter kind and refuses every filter: for tests and for
/// tools that only read configs without filters.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKinds;

impl RouteCheck for NoKinds {
    fn check(&self, config: &Config) -> Result<(), ConfigErrors> {
        let errors: Vec<ConfigError> = config
            .routes
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                r.filters.iter().enumerate().map(move |(j, f)| {
                    ConfigError::at(
                        format!("routes[{i}].filters[{j}]"),
                        format!("unknown filter kind {:?} (this build has none)", f.kind),
                    )
                })
            })
            .collect();
        ConfigErrors::result(errors)
    }

    fn has_kind(&self, _kind: &str) -> bool {
        false
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_checked_before_the_route_check() {
        struct Never;
        impl RouteCheck for Never {
            fn check(&self, _: &Config) -> Result<(), ConfigErrors> {
                panic!("a config the model refuses never reaches the route check")
            }
            fn has_kind(&self, _: &str) -> bool {
                false
            }
        }
        let config = Config {
            routes: vec![
                serde_json::from_value(serde_json::json!({"id": "r", "upstream": "nowhere"})).unwrap(),
            ],
            ..Config::default()
        };
        let errors = validate(&config, &Never).unwrap_err();
        assert!(
            errors.0.iter().any(|e| e.path == "routes[0].upstream"),
            "{errors}"
        );
    }

    #[test]
    fn no_kinds_refuses_each_filter_at_its_path() {
        let config = Config {
            routes: vec![serde_json::from_value(serde_json::json!({
                "id": "r", "upstream": "u", "filters": [{"redirect": {"to": "/x"}}]
            }))
            .unwrap()],
            ..Config::default()
        };
        let errors = NoKinds.check(&config).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].path, "routes[0].filters[0]");
        assert!(!NoKinds.has_kind("redirect"));
    }

    #[test]
    fn an_error_within_a_prefix_joins_paths_and_indexes() {
        assert_eq!(
            ConfigError::at("per", "m").within("rate_limit").path,
            "rate_limit.per"
        );
        assert_eq!(ConfigError::at("[2]", "m").within("headers").path, "headers[2]");
        assert_eq!(ConfigError::at("", "m").within("rewrite").path, "rewrite");
        assert_eq!(ConfigError::at("a", "m").within("").path, "a");
    }
}
