//! The `client_cert` filter: an ACL on the client certificate of the connection
//! (listener mTLS, `listeners[].tls.client_auth`): its subject common name and its SANs.
//!
//! ```yaml
//! filters:
//!   - client_cert:
//!       allow: {common_names: [billing], uris: ["spiffe://prod.example.com/ns/pay/*"]}
//! ```
//!
//! A request passes when its connection presented a verified certificate and, with an
//! `allow` list, the certificate matches one of its entries; else it gets 403. An entry
//! ending in `*` matches by prefix. Unverified certificates (the listener's
//! `allow_invalid` mode) pass only with `require_verified: false`.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::registry::{parse, BuildCtx, Kind, SpecError};
use sluice_core::client_cert::PeerCertificate;
use sluice_core::filter::{Filter, FilterCtx, Flow, Phases, Reject, RejectKind, RequestView};

/// The registry entry.
pub const KIND: Kind = Kind {
    name: "client_cert",
    answers: false,
    build,
    redact: crate::registry::shown_as::<ClientCertSpec>,
    schema: Some(crate::registry::schema_of::<ClientCertSpec>),
};

/// What a certificate may carry to pass. Every list is optional; a certificate passes
/// when any entry of any list matches (an entry ending in `*` is a prefix).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Allow {
    /// Subject common names. Default: none.
    #[serde(default)]
    pub common_names: Vec<String>,
    /// DNS SANs. Default: none.
    #[serde(default)]
    pub dns: Vec<String>,
    /// URI SANs (SPIFFE ids). Default: none.
    #[serde(default)]
    pub uris: Vec<String>,
    /// E-mail SANs. Default: none.
    #[serde(default)]
    pub emails: Vec<String>,
}

/// The filter's spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCertSpec {
    /// Who passes. Default: none, meaning any (verified) certificate.
    #[serde(default)]
    pub allow: Option<Allow>,
    /// Whether the certificate must have verified against the listener's CA. Default:
    /// `true`.
    #[serde(default = "yes")]
    pub require_verified: bool,
    /// The message of the 403 response. Default: `client certificate not allowed`.
    #[serde(default = "default_message")]
    pub message: String,
}

fn yes() -> bool {
    true
}

fn default_message() -> String {
    "client certificate not allowed".into()
}

fn build(spec: &serde_json::Value, _ctx: &BuildCtx<'_>) -> Result<Arc<dyn Filter>, Vec<SpecError>> {
    let spec: ClientCertSpec = parse(spec)?;
    let mut errors = Vec::new();
    if let Some(a) = &spec.allow {
        for (field, list) in [
            ("common_names", &a.common_names),
            ("dns", &a.dns),
            ("uris", &a.uris),
            ("emails", &a.emails),
        ] {
            for (i, e) in list.iter().enumerate() {
                if e.is_empty() {
                    errors.push(SpecError::at(format!("allow.{field}[{i}]"), "must not be empty"));
                }
            }
        }
        if a == &Allow::default() {
            errors.push(SpecError::at("allow", "name at least one common name or SAN"));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Arc::new(ClientCert { spec }))
}

/// The `client_cert` filter.
#[derive(Debug)]
pub struct ClientCert {
    spec: ClientCertSpec,
}

fn matches(patterns: &[String], values: &[String]) -> bool {
    patterns.iter().any(|p| {
        values.iter().any(|v| match p.strip_suffix('*') {
            Some(prefix) => v.starts_with(prefix),
            None => v == p,
        })
    })
}

impl ClientCert {
    /// Whether `cert` (`None`: the connection presented none) passes.
    pub fn admits(&self, cert: Option<&PeerCertificate>) -> bool {
        let Some(c) = cert else { return false };
        if self.spec.require_verified && !c.verified {
            return false;
        }
        let Some(a) = &self.spec.allow else { return true };
        matches(&a.common_names, c.common_name.as_slice())
            || matches(&a.dns, &c.dns)
            || matches(&a.uris, &c.uris)
            || matches(&a.emails, &c.emails)
    }
}

#[async_trait]
impl Filter for ClientCert {
    fn kind(&self) -> &'static str {
        "client_cert"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            ..Phases::default()
        }
    }

    async fn on_request(&self, _req: &RequestView<'_>, ctx: &mut FilterCtx) -> Flow {
        let cert = ctx.ext.get::<Arc<PeerCertificate>>().map(|c| &**c);
        if self.admits(cert) {
            Flow::Continue
        } else {
            Flow::Reject(Reject::new(RejectKind::Forbidden, self.spec.message.clone()))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn filter(spec: serde_json::Value) -> ClientCert {
        ClientCert {
            spec: parse(&spec).unwrap(),
        }
    }

    fn cert(cn: &str, uris: &[&str], verified: bool) -> PeerCertificate {
        PeerCertificate {
            verified,
            common_name: Some(cn.into()),
            uris: uris.iter().map(|u| (*u).to_string()).collect(),
            ..PeerCertificate::default()
        }
    }

    #[test]
    fn matches_common_names_and_san_prefixes() {
        let f = filter(
            serde_json::json!({"allow": {"common_names": ["billing"], "uris": ["spiffe://prod/ns/pay/*"]}}),
        );
        assert!(f.admits(Some(&cert("billing", &[], true))));
        assert!(f.admits(Some(&cert("x", &["spiffe://prod/ns/pay/sa/api"], true))));
        assert!(!f.admits(Some(&cert("x", &["spiffe://prod/ns/other/sa/api"], true))));
        assert!(!f.admits(None));
        assert!(!f.admits(Some(&cert("billing", &[], false))), "unverified");
        let any = filter(serde_json::json!({"require_verified": false}));
        assert!(any.admits(Some(&cert("x", &[], false))));
        assert!(!any.admits(None));
    }

    #[test]
    fn spec_errors_name_their_paths() {
        let ctx_config = sluice_config::Config::default();
        let shared = sluice_core::Services::default();
        let ctx = BuildCtx::new(&ctx_config, &shared);
        let Err(errs) = build(&serde_json::json!({"allow": {"dns": [""]}}), &ctx) else {
            panic!("refused")
        };
        assert_eq!(errs[0].path, "allow.dns[0]");
        let Err(errs) = build(&serde_json::json!({"allow": {"common": ["x"]}}), &ctx) else {
            panic!("refused")
        };
        assert!(errs[0].message.contains("unknown field"), "{errs:?}");
    }
}
