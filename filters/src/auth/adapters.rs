//! JWT and forward-auth as methods of the `auth` filter, so a route can accept "any of"
//! key-auth, basic-auth, a JWT and an external auth service (with an optional anonymous
//! consumer), as it accepts each alone through its own filter kind.

use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderValue;

use super::{AuthMethod, AuthOutcome, MethodKind};
use crate::filter::{Filter, FilterCtx, HeaderEdit, Identity, RequestView};
use crate::kinds::forward_auth::{ForwardAuth, ForwardAuthSpec, Outcome};
use crate::kinds::jwt::{Jwt, JwtOutcome, JwtSpec};
use crate::kinds::{parse, BuildCtx, SpecError};

/// `methods: [{jwt: {...}}]`: the `jwt` filter's spec.
pub const JWT: MethodKind = MethodKind {
    name: "jwt",
    build: build_jwt,
    credentials: None,
};

/// `methods: [{forward_auth: {...}}]`: the `forward_auth` filter's spec.
pub const FORWARD_AUTH: MethodKind = MethodKind {
    name: "forward_auth",
    build: build_forward,
    credentials: None,
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
        ctx.shared.forward_auth.clone(),
        ctx.shared.runtime.clone(),
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
