//! Sluice's filter kinds: one module (or folder) each with its spec, validation, build
//! and tests, all authentication in [`auth`], the [`registry`] (one line per kind), and
//! [`build_chain`], which builds a route's chain from its config.
//!
//! The filter seam itself (the `Filter` trait, `Chain`, `FilterCtx`) and the pure cores
//! (router, split, resilience machines) are in `sluice-core`. A filter that must call out
//! (a key set to fetch, a shared limit store, an auth service) keeps that I/O in a thin
//! shell beside its core, run on the runtime service it finds in the build's
//! [`Services`] map. Nothing here touches pingora;
//! the `sluice-gateway` crate wraps these filters in pingora phases.

use sluice_config::model::{Config, RouteConfig};
use sluice_config::ConfigError;
use sluice_core::{Built, Chain, Services};

use auth::consumers;

pub mod auth;
pub mod canary;
pub mod cors;
pub mod direct_response;
pub mod headers;
pub mod ip_restriction;
pub mod limit_conn;
pub mod mirror;
pub mod outbound;
pub mod rate_limit;
pub mod redirect;
pub mod registry;

pub use registry::{config_schema, BuildCtx};

/// The reuse key of a route's own `headers` rules.
const ROUTE_HEADERS_KEY: &str = "route.headers";

/// Builds the chain of route `route` (at config path `path`, e.g. `routes[3]`): the
/// route's own `headers` rules first, then its `filters` in order.
///
/// A filter of `previous` (the same route's chain in the serving snapshot) is reused,
/// with its state, when its key (kind and position among filters of that kind) and its
/// spec are unchanged, whatever else changed in the route. Every spec error is reported
/// with its full path, e.g. `routes[3].filters[1].rate_limit.per: unknown field "pre"`.
pub fn build_chain(
    route: &RouteConfig,
    path: &str,
    previous: Option<&Chain>,
    ctx: &BuildCtx<'_>,
) -> Result<Chain, Vec<ConfigError>> {
    let ctx = &BuildCtx {
        route: &route.id,
        ..*ctx
    };
    // A filter that reads consumers is kept only while the consumers are unchanged.
    let mut consumers_digest: Option<String> = None;
    let mut reuse = |key: &str, spec: &serde_json::Value| {
        let b = previous?
            .built()
            .iter()
            .find(|b| b.key == key && b.spec == *spec)?;
        if let Some(d) = b.filter.consumers_digest() {
            let now =
                consumers_digest.get_or_insert_with(|| consumers::Consumers::of(ctx).digest().to_string());
            if d != now {
                return None;
            }
        }
        Some(b.clone())
    };
    let mut built = Vec::new();
    let mut errors = Vec::new();
    if route.headers != Default::default() {
        let spec = serde_json::to_value(&route.headers).unwrap_or_default();
        match reuse(ROUTE_HEADERS_KEY, &spec) {
            Some(b) => built.push(b),
            None => match headers::HeaderTransform::new(&route.headers) {
                Ok(f) if !f.is_empty() => built.push(Built {
                    key: ROUTE_HEADERS_KEY.into(),
                    spec,
                    filter: std::sync::Arc::new(f),
                }),
                Ok(_) => {}
                Err(es) => errors.extend(es.into_iter().map(|e| ConfigError {
                    path: join(&format!("{path}.headers"), &e.path),
                    message: e.message,
                })),
            },
        }
    }
    let mut seen: Vec<&str> = Vec::new();
    for (i, f) in route.filters.iter().enumerate() {
        let at = format!("{path}.filters[{i}]");
        let Some(kind) = registry::find(&f.kind) else {
            errors.push(ConfigError {
                path: at,
                message: format!("unknown filter kind {:?} (known: {})", f.kind, registry::names()),
            });
            continue;
        };
        let n = seen.iter().filter(|k| **k == kind.name).count();
        seen.push(kind.name);
        let key = format!("{}#{n}", kind.name);
        if let Some(b) = reuse(&key, &f.spec) {
            built.push(b);
            continue;
        }
        match (kind.build)(&f.spec, ctx) {
            Ok(filter) => built.push(Built {
                key,
                spec: f.spec.clone(),
                filter,
            }),
            Err(es) => errors.extend(es.into_iter().map(|e| ConfigError {
                path: join(&format!("{at}.{}", kind.name), &e.path),
                message: e.message,
            })),
        }
    }
    if errors.is_empty() {
        Ok(Chain::from_built(built))
    } else {
        Err(errors)
    }
}

fn join(base: &str, sub: &str) -> String {
    if sub.is_empty() {
        base.to_string()
    } else if sub.starts_with('[') {
        format!("{base}{sub}")
    } else {
        format!("{base}.{sub}")
    }
}

/// Whether one of the route's filters answers every request itself (a `redirect` or a
/// `direct_response`), so the route needs no backend. A `redirect` with `only_http`
/// lets HTTPS requests through, so it does not count.
pub fn answers_itself(route: &RouteConfig) -> bool {
    route.filters.iter().any(|f| {
        registry::find(&f.kind).is_some_and(|k| k.answers)
            && !(f.kind == "redirect" && f.spec.get("only_http") == Some(&serde_json::Value::Bool(true)))
    })
}

/// This build's filter kinds as the route check of the one validation path
/// ([`sluice_config::check`]): the gateway hands it to `sluice validate`, to `apply` and
/// `diff`, and to every config source, which so never depend on the kinds themselves.
#[derive(Debug, Clone, Copy, Default)]
pub struct FilterKinds;

impl sluice_config::RouteCheck for FilterKinds {
    fn check(&self, config: &Config) -> Result<(), sluice_config::ConfigErrors> {
        sluice_config::ConfigErrors::result(validate_filters(config))
    }

    fn has_kind(&self, kind: &str) -> bool {
        registry::find(kind).is_some()
    }
}

/// Checks what the config model leaves to the filter kinds: every consumer's
/// credentials (by each method's own check), every route's filter specs, and that a
/// route without backends has a filter that answers. Returns every error, with its path.
/// The gateway's compile builds the same chains with the same functions
/// ([`build_chain`], [`missing_backend`]) and keeps them; everything else reaches this
/// through [`FilterKinds`].
pub fn validate_filters(config: &Config) -> Vec<ConfigError> {
    let services = Services::default();
    let ctx = BuildCtx::new(config, &services);
    let mut errors = consumers::validate(config, &ctx);
    for (i, r) in config.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if let Err(es) = build_chain(r, &path, None, &ctx) {
            errors.extend(es);
        }
        errors.extend(missing_backend(r, &path));
    }
    errors.extend(sluice_core::edge::compile::check(config));
    errors
}

/// The error for route `route` (at config path `path`) when it has no backend and no
/// filter that answers every request.
pub fn missing_backend(route: &RouteConfig, path: &str) -> Option<ConfigError> {
    (!route.forwards() && !answers_itself(route)).then(|| ConfigError {
        path: format!("{path}.upstream"),
        message: "required unless a redirect or direct_response filter answers".into(),
    })
}

#[cfg(test)]
pub(crate) mod test_support {
    /// Polls a future that never waits (the filters here answer at once) to its end.
    pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn route(yaml: &str) -> RouteConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn build_chain(
        route: &RouteConfig,
        path: &str,
        previous: Option<&Chain>,
    ) -> Result<Chain, Vec<ConfigError>> {
        let config = Config::default();
        let services = Services::default();
        super::build_chain(route, path, previous, &BuildCtx::new(&config, &services))
    }

    #[test]
    fn a_filter_is_kept_when_its_own_spec_is_unchanged() {
        let a = route("{id: r, upstream: u, filters: [{rate_limit: {requests: 5, per: 1m}}, {headers: {request: {set: {x-a: '1'}}}}]}");
        let first = build_chain(&a, "routes[0]", None).unwrap();
        // Another field of the route and another filter's spec change.
        let b = route("{id: r, upstream: u, timeouts: {connect: 1s}, filters: [{rate_limit: {requests: 5, per: 1m}}, {headers: {request: {set: {x-a: '2'}}}}]}");
        let second = build_chain(&b, "routes[0]", Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&first.built()[0].filter, &second.built()[0].filter));
        assert!(!Arc::ptr_eq(&first.built()[1].filter, &second.built()[1].filter));
        // Its own spec changes: rebuilt.
        let c = route("{id: r, upstream: u, filters: [{rate_limit: {requests: 6, per: 1m}}]}");
        let third = build_chain(&c, "routes[0]", Some(&second)).unwrap();
        assert!(!Arc::ptr_eq(&second.built()[0].filter, &third.built()[0].filter));
    }

    #[test]
    fn a_filter_reading_consumers_is_rebuilt_when_they_change() {
        let r = route("{id: r, upstream: u, filters: [{key_auth: {}}, {rate_limit: {requests: 5}}]}");
        let services = Services::default();
        let build = |consumers: &str, previous: Option<&Chain>| {
            let config: Config = serde_yaml::from_str(consumers).unwrap();
            let ctx = BuildCtx::new(&config, &services);
            let digest = consumers::Consumers::of(&ctx).digest().to_string();
            let chain = super::build_chain(&r, "routes[0]", previous, &ctx).unwrap();
            assert!(chain.consumers_fresh(&digest));
            chain
        };
        let a = "consumers: [{name: x, credentials: {key_auth: {keys: [k1]}}}]";
        let first = build(a, None);
        let same = build(a, Some(&first));
        assert!(Arc::ptr_eq(&first.built()[0].filter, &same.built()[0].filter));
        let changed = build(
            "consumers: [{name: x, credentials: {key_auth: {keys: [k2]}}}]",
            Some(&same),
        );
        assert!(!same.consumers_fresh(consumers::Consumers::new(&[]).digest()));
        assert!(!Arc::ptr_eq(&same.built()[0].filter, &changed.built()[0].filter));
        // The rate limit (and its bucket) is kept.
        assert!(Arc::ptr_eq(&same.built()[1].filter, &changed.built()[1].filter));
        assert_eq!(changed.auth_methods(), ["key_auth"]);
    }

    #[test]
    fn spec_errors_name_the_full_path() {
        let r = route("{id: r, upstream: u, headers: {request: {set: {'bad h': x}}}, filters: [{redirect: {status: 301}}, {rate_limit: {requests: 1, pre: 1s}}, {nope: {}}]}");
        let errs: Vec<String> = build_chain(&r, "routes[3]", None)
            .err()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            errs[0].starts_with("routes[3].headers.request.set.bad h: invalid header name"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("routes[3].filters[1].rate_limit.pre: unknown field `pre`"),
            "{errs:?}"
        );
        assert!(
            errs[2].starts_with("routes[3].filters[2]: unknown filter kind \"nope\""),
            "{errs:?}"
        );
    }

    #[test]
    fn a_route_needs_a_backend_or_an_answering_filter() {
        let c: Config = serde_yaml::from_str(
            "routes: [{id: a}, {id: b, filters: [{direct_response: {}}]}, {id: c, backends: [{upstream: u}]}]",
        )
        .unwrap();
        let errs: Vec<String> = validate_filters(&c).iter().map(ToString::to_string).collect();
        assert_eq!(
            errs,
            ["routes[0].upstream: required unless a redirect or direct_response filter answers"]
        );
    }
}
