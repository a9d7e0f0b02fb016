//! Authentication: the [`AuthMethod`] trait every method implements (key-auth,
//! basic-auth here; JWT and forward-auth plug in the same way), the method registry
//! [`METHODS`], and [`AuthFilter`], the filter that runs a route's methods as "any of",
//! with an optional anonymous consumer, an inline ACL and identity headers.
//!
//! ```yaml
//! filters:
//!   - auth:
//!       methods:
//!         - key_auth: {header: apikey}
//!         - basic_auth: {realm: api}
//!       anonymous: guest          # a consumer; used when no credential is presented
//!       acl: {allow: {groups: [staff]}}
//! ```
//!
//! Each method is also a filter kind of its own (`key_auth`, `basic_auth`): the same
//! [`AuthFilter`] with one method, taking the same `anonymous`, `anonymous_on_invalid`,
//! `acl` and `forward` options beside the method's own.
//!
//! # Adding a method
//!
//! 1. A module with a spec type, a `build` returning `Arc<dyn AuthMethod>`, and a
//!    credential check over the consumer table (see [`MethodKind`]).
//! 2. A line in [`METHODS`].
//! 3. If it should be a standalone kind too: a `Kind` whose build is
//!    `|spec, ctx| auth::build_standalone("name", spec, ctx)`, in `registry::REGISTRY`.
//!
//! The method looks consumers up through [`crate::auth::consumers::Consumers`]
//! (`Consumers::of(ctx)`, then `get(name)` or `index(..)` for its own credential index),
//! returns an [`AuthOutcome`], and never decides the response: the filter maps outcomes
//! to 401/403 with every method's challenge, counts them, and applies the ACL.
//!
//! Every way a request proves who it is lives in this folder: the methods above
//! (`key_auth`, `basic_auth`, `jwt`, `forward_auth`), the consumer table
//! ([`consumers`]), the ACLs ([`acl`], the `acl` kind) and the `client_cert` kind (an
//! ACL on the connection's verified client certificate). What the request's decision
//! was is a typed note ([`decision`]), counted in `sluice_auth_total`.

use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use schemars::JsonSchema as _;
use serde::{Deserialize, Serialize};

use crate::auth::consumers::Consumers;
use crate::registry::{parse, BuildCtx, BuildResult, SpecError};
use sluice_core::filter::{
    Filter, FilterCtx, Flow, HeaderEdit, Identity, Phases, Reject, RejectKind, RequestView, Response,
};

pub mod acl;
pub mod acl_kind;
pub mod adapters;
pub mod auth_kind;
pub mod basic_auth;
pub mod client_cert;
pub mod consumers;
pub mod decision;
pub mod forward_auth;
pub mod hashing;
pub mod jwt;
pub mod key_auth;

pub use acl::{Acl, AclSpec, Principals};
use decision::decide;
pub use decision::{decided, AuthCounters, AuthNote, AuthResult};

/// What one method made of a request.
#[derive(Debug)]
pub enum AuthOutcome {
    /// The request carries a valid credential of this consumer.
    Identified(Identity),
    /// The request carries no credential for this method (the next method is tried).
    Missing,
    /// The request carries a credential for this method that is not valid (unknown,
    /// wrong, expired). The reason is not told to the client.
    Invalid,
    /// The method answers the request itself with this response (forward-auth passing
    /// on its service's denial). Counted as `invalid`.
    Respond(Response),
    /// The method cannot decide now (its service or key source is down): 503 unless the
    /// method maps this to one of the outcomes above itself.
    Unavailable,
}

/// One authentication method. Implementations hold their compiled spec and whatever
/// index of consumer credentials they need; everything here runs on the request path
/// and must not take a lock.
#[async_trait]
pub trait AuthMethod: Send + Sync {
    /// The method's name as written in config and in the `method` label of
    /// `sluice_auth_total`, e.g. `key_auth`.
    fn name(&self) -> &'static str;

    /// Looks for this method's credential in the request and checks it. May leave
    /// a note of its own in `ctx.ext` for its [`AuthMethod::strip`].
    async fn authenticate(&self, req: &RequestView<'_>, ctx: &mut FilterCtx) -> AuthOutcome;

    /// The `WWW-Authenticate` challenge for a 401, e.g. `Basic realm="api"`.
    /// Default: none.
    fn challenge(&self) -> Option<HeaderValue> {
        None
    }

    /// Whether [`AuthMethod::strip`] has headers to remove. Default: no.
    fn strips(&self) -> bool {
        false
    }

    /// Removes this method's credential from the request sent upstream, when this method
    /// identified the consumer. Default: nothing.
    fn strip(&self, _headers: &mut dyn HeaderEdit, _ctx: &FilterCtx) {}

    /// Whether the method reads the consumer table (so a consumers-only change must
    /// rebuild it). Default: yes.
    fn uses_consumers(&self) -> bool {
        true
    }
}

/// What a method's build returns: the method, or every error in its spec.
pub type MethodResult = Result<Arc<dyn AuthMethod>, Vec<SpecError>>;

/// A method's build: parses, validates and builds it from its spec.
pub type MethodBuild = fn(&serde_json::Value, &BuildCtx<'_>) -> MethodResult;

/// A method's registry entry.
pub struct MethodKind {
    /// The name in config (`methods: [{key_auth: ..}]`, `credentials: {key_auth: ..}`).
    pub name: &'static str,
    /// Parses, validates and builds the method from its spec.
    pub build: MethodBuild,
    /// Checks every consumer's `credentials.<name>` (and their uniqueness across
    /// consumers); errors carry full paths, e.g. `consumers[2].credentials.key_auth.keys[0]`.
    /// `None` for a method without consumer credentials (forward-auth): a consumer
    /// declaring credentials for it is then an error.
    pub credentials: Option<fn(&Consumers) -> Vec<sluice_config::ConfigError>>,
    /// The method's spec as views show it (see `Kind::redact`).
    pub redact: fn(&serde_json::Value) -> serde_json::Value,
    /// The JSON Schema of its spec (`crate::registry::schema_of::<TheSpec>`), for the
    /// config's schema.
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
}

/// Every authentication method, one line each.
pub static METHODS: &[MethodKind] = &[
    key_auth::METHOD,
    basic_auth::METHOD,
    adapters::JWT,
    adapters::FORWARD_AUTH,
];

/// The method called `name`.
pub fn find_method(name: &str) -> Option<&'static MethodKind> {
    METHODS.iter().find(|m| m.name == name)
}

/// The `auth` spec as views show it: its own fields through [`AuthSpec`], each method's
/// spec through that method's type.
pub fn redact_auth(spec: &serde_json::Value) -> serde_json::Value {
    let mut shown = crate::registry::shown_as::<AuthSpec>(spec);
    if let (Some(methods), Some(raw)) = (
        shown.get_mut("methods").and_then(|m| m.as_array_mut()),
        spec.get("methods").and_then(|m| m.as_array()),
    ) {
        for (out, method) in methods.iter_mut().zip(raw) {
            *out = redact_method(method);
        }
    }
    shown
}

/// One `{name: spec}` entry of `methods`, as views show it.
fn redact_method(entry: &serde_json::Value) -> serde_json::Value {
    let Some(map) = entry.as_object().filter(|m| m.len() == 1) else {
        return sluice_config::model::redact_value(entry);
    };
    map.iter()
        .map(|(name, spec)| {
            let shown = match find_method(name) {
                Some(m) => (m.redact)(spec),
                None => sluice_config::model::redact_value(spec),
            };
            (name.clone(), shown)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A standalone method kind's spec (`key_auth: {...}`) as views show it: the method's
/// own fields through its type, the common ones through [`AuthSpec`].
pub fn redact_standalone(method: &str, spec: &serde_json::Value) -> serde_json::Value {
    let Some(own) = spec.as_object() else {
        return sluice_config::model::redact_value(spec);
    };
    let mut own = own.clone();
    let mut common = serde_json::Map::new();
    for k in COMMON_KEYS {
        if let Some(v) = own.remove(k) {
            common.insert(k.to_string(), v);
        }
    }
    let mut out = match find_method(method) {
        Some(m) => (m.redact)(&serde_json::Value::Object(own)),
        None => sluice_config::model::redact_value(&serde_json::Value::Object(own)),
    };
    common.insert("methods".into(), serde_json::json!([]));
    let common = crate::registry::shown_as::<AuthSpec>(&serde_json::Value::Object(common));
    if let (Some(out), Some(common)) = (out.as_object_mut(), common.as_object()) {
        for (k, v) in common.iter().filter(|(k, _)| *k != "methods") {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// The names of every method, for error messages.
pub fn method_names() -> String {
    METHODS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

/// The `method` label when a filter with several methods found no credential.
pub const ANY: &str = "any";

/// Identity headers an auth filter sets on the upstream request, besides the gateway's
/// own `x-sluice-consumer` and `x-sluice-consumer-groups` (client copies of both are
/// always removed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardSpec {
    /// Header carrying the consumer name, e.g. `x-consumer-username` (Kong's). Any copy
    /// the client sent is removed. Default: none.
    #[serde(default)]
    pub consumer_header: Option<String>,
    /// Header carrying the consumer's groups, comma separated, e.g. `x-consumer-groups`.
    /// Any copy the client sent is removed. Default: none.
    #[serde(default)]
    pub groups_header: Option<String>,
}

/// The `auth` filter's spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// The methods, tried in order, each `{name: spec}`; the first that identifies a
    /// consumer wins ("any of"). Required, at least one.
    #[schemars(schema_with = "methods_schema")]
    pub methods: Vec<serde_json::Value>,
    /// A consumer to use when the request carries no credential for any method; the
    /// request then goes on as that consumer (ACLs and limits apply to it). Must name a
    /// consumer. Default: none (401).
    #[serde(default)]
    pub anonymous: Option<String>,
    /// Whether an invalid credential also falls back to `anonymous` (Kong's behaviour)
    /// instead of a 401. Default: `false`.
    #[serde(default)]
    pub anonymous_on_invalid: bool,
    /// Which consumers may pass (see [`AclSpec`]). Default: every identified consumer.
    #[serde(default)]
    pub acl: Option<AclSpec>,
    /// Extra identity headers for the upstream. Default: none.
    #[serde(default)]
    pub forward: ForwardSpec,
}

/// The keys of [`AuthSpec`] a standalone method kind takes beside its method's own.
const COMMON_KEYS: [&str; 4] = ["anonymous", "anonymous_on_invalid", "acl", "forward"];

/// The schema of `methods`: a list of one-key objects, each a method of [`METHODS`] with
/// its spec.
fn methods_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let one_of: Vec<serde_json::Value> = METHODS
        .iter()
        .map(|m| {
            serde_json::json!({
                "type": "object",
                "properties": {m.name: (m.schema)(generator)},
                "required": [m.name],
                "additionalProperties": false,
            })
        })
        .collect();
    schemars::json_schema!({
        "type": "array",
        "minItems": 1,
        "items": {"oneOf": one_of},
    })
}

/// The schema of a standalone method kind (`key_auth`, `basic_auth`): the method's own
/// spec `T` and the common options of [`AuthSpec`] (`anonymous`, `anonymous_on_invalid`,
/// `acl`, `forward`), as [`build_standalone`] reads them.
pub fn standalone_schema<T: schemars::JsonSchema>(
    generator: &mut schemars::SchemaGenerator,
) -> schemars::Schema {
    let mut own = T::json_schema(generator);
    let common = AuthSpec::json_schema(generator);
    let common_props = common
        .get("properties")
        .and_then(serde_json::Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(props) = own
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        for k in COMMON_KEYS {
            if let Some(v) = common_props.get(k) {
                props.insert(k.to_string(), v.clone());
            }
        }
    }
    own
}

/// The filter: a route's authentication methods as "any of".
pub struct AuthFilter {
    kind: &'static str,
    methods: Vec<Arc<dyn AuthMethod>>,
    anonymous: Option<Identity>,
    anonymous_on_invalid: bool,
    acl: Option<Acl>,
    challenges: Vec<HeaderValue>,
    consumer_header: Option<HeaderName>,
    groups_header: Option<HeaderName>,
    strips: bool,
    digest: Option<String>,
    /// `sluice_auth_total` handles for this filter's methods; none without a registry.
    counters: Option<Arc<AuthCounters>>,
}

/// Builds the `auth` kind.
pub fn build_auth(spec: &serde_json::Value, ctx: &BuildCtx<'_>) -> BuildResult {
    let spec: AuthSpec = parse(spec)?;
    Ok(Arc::new(AuthFilter::new("auth", &spec, ctx)?))
}

/// Builds a standalone method kind (`key_auth`, `basic_auth`, …): the spec is the
/// method's own, plus the common options of [`AuthSpec`] (`anonymous`,
/// `anonymous_on_invalid`, `acl`, `forward`).
pub fn build_standalone(method: &'static str, spec: &serde_json::Value, ctx: &BuildCtx<'_>) -> BuildResult {
    let mut own = match spec {
        serde_json::Value::Object(m) => m.clone(),
        serde_json::Value::Null => serde_json::Map::new(),
        _ => return Err(vec![SpecError::at("", "expected a map")]),
    };
    let mut common = serde_json::Map::new();
    for k in COMMON_KEYS {
        if let Some(v) = own.remove(k) {
            common.insert(k.to_string(), v);
        }
    }
    common.insert(
        "methods".into(),
        serde_json::json!([{ method: serde_json::Value::Object(own) }]),
    );
    let spec: AuthSpec = parse(&serde_json::Value::Object(common))?;
    // Errors inside the one method are reported at the kind's own path.
    let filter = AuthFilter::new(method, &spec, ctx).map_err(|es| {
        es.into_iter()
            .map(|e| {
                let prefix = format!("methods[0].{method}");
                let path = match e.path.strip_prefix(&prefix) {
                    Some(rest) => rest.trim_start_matches('.').to_string(),
                    None => e.path,
                };
                SpecError::at(path, e.message)
            })
            .collect::<Vec<_>>()
    })?;
    Ok(Arc::new(filter))
}

fn header_name(path: &str, name: &str) -> Result<HeaderName, SpecError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|e| SpecError::at(path, format!("invalid header name: {e}")))
}

impl AuthFilter {
    /// Validates `spec` and builds the filter; `kind` is the name it reports.
    pub fn new(
        kind: &'static str,
        spec: &AuthSpec,
        ctx: &BuildCtx<'_>,
    ) -> Result<AuthFilter, Vec<SpecError>> {
        let mut errors = Vec::new();
        let mut methods: Vec<Arc<dyn AuthMethod>> = Vec::new();
        if spec.methods.is_empty() {
            errors.push(SpecError::at("methods", "at least one method is required"));
        }
        for (i, m) in spec.methods.iter().enumerate() {
            let at = format!("methods[{i}]");
            let Some((name, mspec)) = m
                .as_object()
                .filter(|o| o.len() == 1)
                .and_then(|o| o.iter().next())
            else {
                errors.push(SpecError::at(
                    at,
                    format!(
                        "expected one method, e.g. {{key_auth: {{}}}} (known: {})",
                        method_names()
                    ),
                ));
                continue;
            };
            let Some(kind) = find_method(name) else {
                errors.push(SpecError::at(
                    at,
                    format!(
                        "unknown authentication method {name:?} (known: {})",
                        method_names()
                    ),
                ));
                continue;
            };
            if methods.iter().any(|m| m.name() == kind.name) {
                errors.push(SpecError::at(at, format!("method {name} is listed twice")));
                continue;
            }
            match (kind.build)(mspec, ctx) {
                Ok(m) => methods.push(m),
                Err(es) => errors.extend(es.into_iter().map(|e| {
                    let base = format!("{at}.{name}");
                    SpecError::at(
                        if e.path.is_empty() {
                            base
                        } else if e.path.starts_with('[') {
                            format!("{base}{}", e.path)
                        } else {
                            format!("{base}.{}", e.path)
                        },
                        e.message,
                    )
                })),
            }
        }
        let consumers = Consumers::of(ctx);
        let anonymous = match &spec.anonymous {
            Some(name) => match consumers.get(name) {
                Some(c) => Some(c.identity()),
                None => {
                    errors.push(SpecError::at("anonymous", format!("no consumer {name:?}")));
                    None
                }
            },
            None => None,
        };
        if spec.anonymous_on_invalid && spec.anonymous.is_none() {
            errors.push(SpecError::at("anonymous_on_invalid", "needs `anonymous`"));
        }
        let acl = match &spec.acl {
            Some(a) => match Acl::new(a) {
                Ok(acl) => Some(acl),
                Err(es) => {
                    errors.extend(es.into_iter().map(|e| {
                        SpecError::at(
                            if e.path.is_empty() {
                                "acl".into()
                            } else {
                                format!("acl.{}", e.path)
                            },
                            e.message,
                        )
                    }));
                    None
                }
            },
            None => None,
        };
        let consumer_header = spec
            .forward
            .consumer_header
            .as_deref()
            .map(|h| header_name("forward.consumer_header", h))
            .transpose()
            .map_err(|e| errors.push(e))
            .ok()
            .flatten();
        let groups_header = spec
            .forward
            .groups_header
            .as_deref()
            .map(|h| header_name("forward.groups_header", h))
            .transpose()
            .map_err(|e| errors.push(e))
            .ok()
            .flatten();
        if !errors.is_empty() {
            return Err(errors);
        }
        let uses_consumers = spec.anonymous.is_some() || methods.iter().any(|m| m.uses_consumers());
        let names: Vec<&'static str> = methods.iter().map(|m| m.name()).collect();
        Ok(AuthFilter {
            counters: AuthCounters::new(ctx, &names),
            kind,
            challenges: methods.iter().filter_map(|m| m.challenge()).collect(),
            strips: methods.iter().any(|m| m.strips()),
            methods,
            anonymous,
            anonymous_on_invalid: spec.anonymous_on_invalid,
            acl,
            consumer_header,
            groups_header,
            digest: uses_consumers.then(|| consumers.digest().to_string()),
        })
    }

    fn label(&self) -> &'static str {
        match &self.methods[..] {
            [one] => one.name(),
            _ => ANY,
        }
    }

    fn unauthenticated(&self, message: &str) -> Flow {
        let mut r = Reject::new(RejectKind::Unauthenticated, message);
        for c in &self.challenges {
            r = r.with_header(http::header::WWW_AUTHENTICATE, c.clone());
        }
        Flow::Reject(r)
    }

    /// Takes `identity` as the request's consumer, then applies the ACL.
    fn admit(
        &self,
        method: &'static str,
        outcome: AuthResult,
        identity: Identity,
        ctx: &mut FilterCtx,
    ) -> Flow {
        let allowed = self.acl.as_ref().is_none_or(|a| a.allows(&identity));
        ctx.identity = Some(identity);
        if allowed {
            decide(ctx, AuthNote { method, outcome }, self.counters.as_ref());
            Flow::Continue
        } else {
            decide(
                ctx,
                AuthNote {
                    method,
                    outcome: AuthResult::Forbidden,
                },
                self.counters.as_ref(),
            );
            Flow::Reject(Reject::new(RejectKind::Forbidden, FORBIDDEN))
        }
    }
}

/// The 403 message.
pub const FORBIDDEN: &str = "the consumer is not allowed to use this route";
/// The 401 message when no credential was presented.
pub const MISSING: &str = "authentication required";
/// The 401 message when a credential was presented but is not valid (whichever part).
pub const INVALID: &str = "invalid credentials";

#[async_trait]
impl Filter for AuthFilter {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            upstream_request: self.strips || self.consumer_header.is_some() || self.groups_header.is_some(),
            ..Phases::default()
        }
    }

    async fn on_request(&self, req: &RequestView<'_>, ctx: &mut FilterCtx) -> Flow {
        // An earlier auth filter identified a consumer: satisfied (an anonymous one is
        // not, so a later method can still identify the request).
        if decided(ctx).is_some_and(|a| a.outcome == AuthResult::Ok) {
            return Flow::Continue;
        }
        let mut invalid: Option<&'static str> = None;
        for m in &self.methods {
            match m.authenticate(req, ctx).await {
                AuthOutcome::Identified(id) => return self.admit(m.name(), AuthResult::Ok, id, ctx),
                AuthOutcome::Missing => {}
                AuthOutcome::Invalid => {
                    invalid.get_or_insert(m.name());
                }
                AuthOutcome::Respond(resp) => {
                    decide(
                        ctx,
                        AuthNote {
                            method: m.name(),
                            outcome: AuthResult::Invalid,
                        },
                        self.counters.as_ref(),
                    );
                    return Flow::Respond(resp);
                }
                AuthOutcome::Unavailable => {
                    decide(
                        ctx,
                        AuthNote {
                            method: m.name(),
                            outcome: AuthResult::Invalid,
                        },
                        self.counters.as_ref(),
                    );
                    return Flow::Reject(Reject::new(
                        RejectKind::Unavailable,
                        "authentication is unavailable",
                    ));
                }
            }
        }
        if let Some(method) = invalid {
            if !(self.anonymous_on_invalid && self.anonymous.is_some()) {
                decide(
                    ctx,
                    AuthNote {
                        method,
                        outcome: AuthResult::Invalid,
                    },
                    self.counters.as_ref(),
                );
                return self.unauthenticated(INVALID);
            }
        }
        if ctx.identity.is_some() && decided(ctx).is_some_and(|a| a.outcome == AuthResult::Anonymous) {
            // An earlier filter already let the request in as its anonymous consumer.
            return Flow::Continue;
        }
        match &self.anonymous {
            Some(anon) => self.admit(self.label(), AuthResult::Anonymous, anon.clone(), ctx),
            None => {
                decide(
                    ctx,
                    AuthNote {
                        method: self.label(),
                        outcome: AuthResult::Missing,
                    },
                    self.counters.as_ref(),
                );
                self.unauthenticated(MISSING)
            }
        }
    }

    fn on_upstream_request(&self, headers: &mut dyn HeaderEdit, ctx: &FilterCtx) {
        if self.strips {
            if let Some(note) = decided(ctx).filter(|a| a.outcome == AuthResult::Ok) {
                if let Some(m) = self.methods.iter().find(|m| m.name() == note.method) {
                    m.strip(headers, ctx);
                }
            }
        }
        for h in [&self.consumer_header, &self.groups_header].into_iter().flatten() {
            if headers.headers().contains_key(h) {
                headers.remove(h);
            }
        }
        if let Some(id) = &ctx.identity {
            if let Some(h) = &self.consumer_header {
                if let Ok(v) = HeaderValue::from_str(&id.consumer) {
                    headers.set(h.clone(), v);
                }
            }
            if let Some(h) = self.groups_header.as_ref().filter(|_| !id.groups.is_empty()) {
                let groups: Vec<&str> = id.groups.iter().map(|g| &**g).collect();
                if let Ok(v) = HeaderValue::from_str(&groups.join(",")) {
                    headers.set(h.clone(), v);
                }
            }
        }
    }

    fn consumers_digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    fn auth_methods(&self) -> Vec<&'static str> {
        self.methods.iter().map(|m| m.name()).collect()
    }

    fn identity_headers(&self) -> Vec<HeaderName> {
        self.consumer_header
            .iter()
            .chain(self.groups_header.iter())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::test_support::block_on;
    use http::{HeaderMap, Method};
    use sluice_config::Config;
    use sluice_core::Services;

    pub fn config(yaml: &str) -> Config {
        serde_yaml::from_str(yaml).unwrap()
    }

    pub fn build(
        kind: &str,
        spec: serde_json::Value,
        config: &Config,
    ) -> Result<Arc<dyn Filter>, Vec<SpecError>> {
        let services = Services::default();
        let ctx = BuildCtx::new(config, &services);
        (crate::registry::find(kind).unwrap().build)(&spec, &ctx)
    }

    pub fn run(f: &dyn Filter, headers: &[(&str, &str)], query: Option<&str>) -> (Flow, FilterCtx) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let m = Method::GET;
        let view = RequestView {
            method: &m,
            scheme: "http",
            host: None,
            authority: None,
            path: "/",
            query,
            headers: &h,
            client_ip: None,
        };
        let mut ctx = FilterCtx::default();
        let flow = block_on(f.on_request(&view, &mut ctx));
        (flow, ctx)
    }

    const CONSUMERS: &str = r#"
consumers:
  - {name: alice, groups: [staff], credentials: {key_auth: {keys: [alice-key]}}}
  - {name: bob, credentials: {key_auth: {keys: [bob-key]}}}
  - {name: guest, groups: [public]}
"#;

    #[test]
    fn any_of_with_anonymous_and_acl() {
        let c = config(CONSUMERS);
        let f = build(
            "auth",
            serde_json::json!({"methods": [{"key_auth": {}}, {"basic_auth": {}}], "anonymous": "guest",
                               "acl": {"deny": {"consumers": ["bob"]}}}),
            &c,
        )
        .unwrap();
        let (flow, ctx) = run(&*f, &[("apikey", "alice-key")], None);
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(&*ctx.identity.as_ref().unwrap().consumer, "alice");
        assert_eq!(decided(&ctx).unwrap().outcome, AuthResult::Ok);
        let (flow, ctx) = run(&*f, &[], None);
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(&*ctx.identity.as_ref().unwrap().consumer, "guest");
        assert_eq!(
            decided(&ctx).unwrap(),
            AuthNote {
                method: ANY,
                outcome: AuthResult::Anonymous
            }
        );
        let (flow, ctx) = run(&*f, &[("apikey", "bob-key")], None);
        let Flow::Reject(r) = flow else { panic!() };
        assert_eq!(r.kind, RejectKind::Forbidden);
        assert_eq!(decided(&ctx).unwrap().outcome, AuthResult::Forbidden);
        // An invalid key is a 401 with both challenges, not a guest.
        let (flow, ctx) = run(&*f, &[("apikey", "nope")], None);
        let Flow::Reject(r) = flow else { panic!() };
        assert_eq!(r.kind, RejectKind::Unauthenticated);
        assert_eq!(r.message, INVALID);
        assert_eq!(r.headers.len(), 2);
        assert_eq!(
            decided(&ctx).unwrap(),
            AuthNote {
                method: "key_auth",
                outcome: AuthResult::Invalid
            }
        );
    }

    #[test]
    fn anonymous_must_be_a_consumer_and_methods_known() {
        let c = config(CONSUMERS);
        let errs = build(
            "auth",
            serde_json::json!({"methods": [{"nope": {}}], "anonymous": "ghost"}),
            &c,
        )
        .err()
        .unwrap();
        assert_eq!(errs[0].path, "methods[0]");
        assert!(
            errs[0].message.contains("unknown authentication method"),
            "{errs:?}"
        );
        assert_eq!(errs[1].path, "anonymous");
        let errs = build("key_auth", serde_json::json!({"hedaer": "x"}), &c)
            .err()
            .unwrap();
        assert!(errs[0].message.contains("unknown field `hedaer`"), "{errs:?}");
        let errs = build("auth", serde_json::json!({"methods": []}), &c)
            .err()
            .unwrap();
        assert_eq!(errs[0].path, "methods");
    }

    #[test]
    fn a_consumer_identified_earlier_satisfies_a_later_auth_filter() {
        let c = config(CONSUMERS);
        let f = build("basic_auth", serde_json::json!({}), &c).unwrap();
        let mut ctx = FilterCtx::default();
        decide(
            &mut ctx,
            AuthNote {
                method: "key_auth",
                outcome: AuthResult::Ok,
            },
            None,
        );
        let (h, m) = (HeaderMap::new(), Method::GET);
        let view = RequestView {
            method: &m,
            scheme: "http",
            host: None,
            authority: None,
            path: "/",
            query: None,
            headers: &h,
            client_ip: None,
        };
        assert!(matches!(block_on(f.on_request(&view, &mut ctx)), Flow::Continue));
        let (flow, _) = run(&*f, &[], None);
        let Flow::Reject(r) = flow else { panic!() };
        assert_eq!(r.message, MISSING);
        assert_eq!(r.headers[0].1, "Basic realm=\"sluice\", charset=\"UTF-8\"");
    }

    #[test]
    fn forwards_identity_in_configured_headers() {
        let c = config(CONSUMERS);
        let f = build(
            "key_auth",
            serde_json::json!({"forward": {"consumer_header": "x-consumer-username", "groups_header": "x-consumer-groups"}}),
            &c,
        )
        .unwrap();
        let (_, ctx) = run(&*f, &[("apikey", "alice-key")], None);
        let mut up = HeaderMap::new();
        up.insert("apikey", HeaderValue::from_static("alice-key"));
        up.insert("x-consumer-username", HeaderValue::from_static("forged"));
        f.on_upstream_request(&mut up, &ctx);
        assert_eq!(up["x-consumer-username"], "alice");
        assert_eq!(up["x-consumer-groups"], "staff");
        assert!(!up.contains_key("apikey"));
    }
}
