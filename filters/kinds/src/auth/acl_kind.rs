//! The `acl` filter kind: allow and deny rules on the consumer an earlier
//! authentication filter identified (its name or groups). 403 for a consumer refused,
//! 401 when no consumer was identified.
//!
//! ```yaml
//! filters:
//!   - key_auth: {}
//!   - acl: {allow: {groups: [staff]}, deny: {consumers: [mallory]}}
//! ```

use std::sync::Arc;

use async_trait::async_trait;

use crate::auth::{decided, Acl, AclSpec, AuthNote, AuthResult, FORBIDDEN, MISSING};
use crate::registry::{parse, BuildCtx, BuildResult, Kind};
use sluice_core::filter::{Filter, FilterCtx, Flow, Phases, Reject, RejectKind, RequestView};

/// The registry entry.
pub const KIND: Kind = Kind {
    name: "acl",
    answers: false,
    build,
    redact: crate::registry::shown_as::<AclSpec>,
    schema: Some(crate::registry::schema_of::<AclSpec>),
};

fn build(spec: &serde_json::Value, _ctx: &BuildCtx<'_>) -> BuildResult {
    let spec: AclSpec = parse(spec)?;
    Ok(Arc::new(AclFilter {
        acl: Acl::new(&spec)?,
    }))
}

/// The `acl` filter.
pub struct AclFilter {
    acl: Acl,
}

#[async_trait]
impl Filter for AclFilter {
    fn kind(&self) -> &'static str {
        "acl"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            ..Phases::default()
        }
    }

    async fn on_request(&self, _req: &RequestView<'_>, ctx: &mut FilterCtx) -> Flow {
        match &ctx.identity {
            None => Flow::Reject(Reject::new(RejectKind::Unauthenticated, MISSING)),
            Some(id) if self.acl.allows(id) => Flow::Continue,
            Some(_) => {
                let counters = crate::auth::decision::decided_counters(ctx);
                let method = decided(ctx).map_or(crate::auth::ANY, |a| a.method);
                crate::auth::decision::decide(
                    ctx,
                    AuthNote {
                        method,
                        outcome: AuthResult::Forbidden,
                    },
                    counters.as_ref(),
                );
                Flow::Reject(Reject::new(RejectKind::Forbidden, FORBIDDEN))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::auth::tests::{build, config, run};
    use sluice_core::filter::{Flow, RejectKind};

    #[test]
    fn group_acl_after_key_auth() {
        let c = config(
            "consumers: [{name: a, groups: [staff], credentials: {key_auth: {keys: [ka]}}}, {name: b, credentials: {key_auth: {keys: [kb]}}}]",
        );
        let key = build("key_auth", serde_json::json!({}), &c).unwrap();
        let acl = build("acl", serde_json::json!({"allow": {"groups": ["staff"]}}), &c).unwrap();
        let chain = sluice_core::Chain::new(vec![key, acl]);
        let run_chain = |k: Option<&str>| {
            let h: Vec<(&str, &str)> = k.map(|k| ("apikey", k)).into_iter().collect();
            let mut hm = http::HeaderMap::new();
            for (n, v) in h {
                hm.insert(n, http::HeaderValue::from_str(v).unwrap());
            }
            let m = http::Method::GET;
            let view = sluice_core::RequestView {
                method: &m,
                scheme: "http",
                host: None,
                authority: None,
                path: "/",
                query: None,
                headers: &hm,
                client_ip: None,
            };
            let mut ctx = sluice_core::FilterCtx::default();
            crate::test_support::block_on(chain.on_request(&view, &mut ctx))
        };
        assert!(matches!(run_chain(Some("ka")), Flow::Continue));
        let Flow::Reject(r) = run_chain(Some("kb")) else {
            panic!()
        };
        assert_eq!(r.kind, RejectKind::Forbidden);
        let acl = build("acl", serde_json::json!({"deny": {"consumers": ["b"]}}), &c).unwrap();
        let (flow, _) = run(&*acl, &[], None);
        let Flow::Reject(r) = flow else { panic!() };
        assert_eq!(r.kind, RejectKind::Unauthenticated);
    }
}
