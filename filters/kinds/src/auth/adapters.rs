//! JWT and forward-auth as methods of the `auth` filter, so a route can accept "any of"
//! key-auth, basic-auth, a JWT and an external auth service (with an optional anonymous
//! consumer), as it accepts each alone through its own filter kind.

use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderValue;

use super::{AuthMethod, AuthOutcome, MethodKind};
use crate::auth::forward_auth::{ForwardAuth, ForwardAuthSpec, Outcome};
use crate::auth::jwt::{Jwt, JwtOutcome, JwtSpec};
use crate::registry::{parse, BuildCtx, SpecError};
use sluice_core::filter::{Filter, FilterCtx, HeaderEdit, Identity, RequestView};

/// `methods: [{jwt: {...}}]`: the `jwt` filter's spec.
pub const JWT: MethodKind = MethodKind {
    name: "jwt",
    build: build_jwt,
    credentials: None,
    redact: crate::registry::shown_as::<crate::auth::jwt::JwtSpec>,
    schema: crate::registry::schema_of::<crate::auth::jwt::JwtSpec>,
};

/// `methods: [{forward_auth: {...}}]`: the `forward_auth` filter's spec.
pub const FORWARD_AUTH: MethodKind = MethodKind {
    name: "forward_auth",
    build: build_forward,
    credentials: None,
    redact: crate::registry::shown_as::<crate::auth::forward_auth::ForwardAuthSpec>,
    schema: crate::registry::schema_of::<crate::auth::forward_auth::ForwardAuthSpec>,
};

fn build_jwt(spec: &serde_json::Value, ctx: &BuildCtx<'_>) -> Result<Arc<dyn AuthMethod>, Vec<SpecError>> {
    let spec: JwtSpec = parse(spec)?;
    Ok(Arc::new(JwtMethod(Jwt::new(&spec, ctx)?)))
}

fn build_forward(
    spec: &serde_json::Value,
    ctx: &BuildCtx<'_>,
) -> Result<Arc<dyn AuthMethod>, Vec<SpecError>> {
    let spec: ForwardAuthSpec = parse(spec)?;
    Ok(Arc::new(ForwardMethod(ForwardAuth::new(
        &spec,
        crate::auth::forward_auth::Pool::of(ctx),
        ctx.runtime(),
    )?)))
}

struct JwtMethod(Jwt);

#[async_trait]
impl AuthMethod for JwtMethod {
    fn name(&self) -> &'static str {
        "jwt"
    }

    async fn authenticate(&self, req: &RequestView<'_>, ctx: &mut FilterCtx) -> AuthOutcome {
        match self.0.authenticate(req, ctx).await {
            JwtOutcome::Identified(id) => AuthOutcome::Identified(id),
            JwtOutcome::Missing => AuthOutcome::Missing,
            JwtOutcome::Invalid(_) => AuthOutcome::Invalid,
        }
    }

    fn challenge(&self) -> Option<HeaderValue> {
        self.0
            .reject(&JwtOutcome::Missing)
            .headers
            .into_iter()
            .find(|(n, _)| n == http::header::WWW_AUTHENTICATE)
            .map(|(_, v)| v)
    }

    fn strips(&self) -> bool {
        true
    }

    fn strip(&self, headers: &mut dyn HeaderEdit, ctx: &FilterCtx) {
        self.0.forward(headers, ctx);
    }
}

/// The consumer name a forward-auth pass carries when the service named none
/// (`consumer_header` unset or absent from its answer).
pub const FORWARD_AUTH_CONSUMER: &str = "forward_auth";

struct ForwardMethod(ForwardAuth);

#[async_trait]
impl AuthMethod for ForwardMethod {
    fn name(&self) -> &'static str {
        "forward_auth"
    }

    async fn authenticate(&self, req: &RequestView<'_>, ctx: &mut FilterCtx) -> AuthOutcome {
        match self.0.authenticate(req, ctx).await {
            Outcome::Allowed => AuthOutcome::Identified(ctx.identity.clone().unwrap_or_else(|| Identity {
                consumer: Arc::from(FORWARD_AUTH_CONSUMER),
                groups: Vec::new(),
                claims: Vec::new(),
            })),
            Outcome::Denied(resp) => AuthOutcome::Respond(resp),
            Outcome::Failed(_) => AuthOutcome::Unavailable,
        }
    }

    fn strips(&self) -> bool {
        true
    }

    fn strip(&self, headers: &mut dyn HeaderEdit, ctx: &FilterCtx) {
        // Copies the service's headers onto the upstream request (and removes client
        // copies of them).
        self.0.on_upstream_request(headers, ctx);
    }

    fn uses_consumers(&self) -> bool {
        false
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::auth::tests::{build, config, run};
    use sluice_core::filter::{Flow, RejectKind};

    const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes!";

    fn token(sub: &str) -> String {
        let claims = serde_json::json!({"sub": sub, "exp": 4_000_000_000u64});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_route_accepts_any_of_key_auth_and_a_jwt() {
        let c = config(
            r#"
consumers:
  - {name: alice, groups: [staff], credentials: {key_auth: {keys: [alice-key]}}}
  - {name: svc, groups: [internal]}
"#,
        );
        let f = build(
            "auth",
            serde_json::json!({"methods": [
                {"key_auth": {}},
                {"jwt": {"keys": [{"alg": "HS256", "secret": SECRET}], "require_consumer": true}},
            ]}),
            &c,
        )
        .unwrap();
        let (flow, ctx) = run(&*f, &[("apikey", "alice-key")], None);
        assert!(matches!(flow, Flow::Continue), "{flow:?}");
        assert_eq!(&*ctx.identity.unwrap().consumer, "alice");
        let bearer = format!("Bearer {}", token("svc"));
        let (flow, ctx) = run(&*f, &[("authorization", &bearer)], None);
        assert!(matches!(flow, Flow::Continue), "{flow:?}");
        let id = ctx.identity.unwrap();
        assert_eq!(&*id.consumer, "svc");
        assert_eq!(id.groups.iter().map(|g| &**g).collect::<Vec<_>>(), ["internal"]);
        // A token for nobody the config knows, and no credential at all: 401.
        let bearer = format!("Bearer {}", token("mallory"));
        let (flow, _) = run(&*f, &[("authorization", &bearer)], None);
        assert!(
            matches!(flow, Flow::Reject(ref r) if r.kind == RejectKind::Unauthenticated),
            "{flow:?}"
        );
        let (flow, _) = run(&*f, &[], None);
        match flow {
            Flow::Reject(r) => {
                assert_eq!(r.kind, RejectKind::Unauthenticated);
                let challenges: Vec<_> = r
                    .headers
                    .iter()
                    .map(|(_, v)| v.to_str().unwrap().to_string())
                    .collect();
                assert!(
                    challenges.iter().any(|c| c.starts_with("Bearer")),
                    "{challenges:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
