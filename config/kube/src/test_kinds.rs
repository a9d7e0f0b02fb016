//! A stand-in route check for this crate's unit tests, which test the translations and
//! what they do with a refusal, not the filter kinds (the kinds test their own specs;
//! the gateway's integration tests run these translations against the real kinds).
//!
//! It knows the kind names and refuses a filter whose kind it does not know or whose
//! spec is not a map, at the path the real check would use.

use sluice_config::{Config, ConfigError, ConfigErrors, RouteCheck};

/// The kinds this build of the gateway registers (test-only ones left out).
const NAMES: &[&str] = &[
    "acl",
    "auth",
    "basic_auth",
    "canary",
    "client_cert",
    "cors",
    "direct_response",
    "forward_auth",
    "headers",
    "ip_restriction",
    "jwt",
    "key_auth",
    "limit_conn",
    "mirror",
    "rate_limit",
    "redirect",
];

/// The stand-in route check; [`TestKinds::ALL`] knows every kind.
pub struct TestKinds {
    /// Whether the `mirror` kind is there (a build could leave it out).
    pub mirror: bool,
}

impl TestKinds {
    /// Every kind.
    pub const ALL: TestKinds = TestKinds { mirror: true };
}

impl RouteCheck for TestKinds {
    fn check(&self, config: &Config) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        for (i, r) in config.routes.iter().enumerate() {
            for (j, f) in r.filters.iter().enumerate() {
                let at = format!("routes[{i}].filters[{j}]");
                if !self.has_kind(&f.kind) {
                    errors.push(ConfigError::at(at, format!("unknown filter kind {:?}", f.kind)));
                } else if !f.spec.is_object() {
                    errors.push(ConfigError::at(format!("{at}.{}", f.kind), "expected a map"));
                }
            }
        }
        ConfigErrors::result(errors)
    }

    fn has_kind(&self, kind: &str) -> bool {
        NAMES.contains(&kind) && (self.mirror || kind != "mirror")
    }
}
