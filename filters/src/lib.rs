//! Sluice's request pipeline.
//!
//! This crate owns the pure cores of the pipeline: the [`router`], the [`Filter`] trait
//! and [`Chain`], the filters themselves, path rewriting, and the resilience state
//! machines (circuit breaker, outlier detection, retry budget). Nothing here touches a
//! socket or pingora; the `sluice-gateway` crate wraps these cores in pingora phases.

use std::sync::Arc;

use sluice_config::model::{FilterConfig, RouteConfig};

pub mod filter;
pub mod headers;
pub mod resilience;
pub mod respond;
pub mod rewrite;
pub mod router;
pub mod weighted;

pub use filter::{Chain, Filter, FilterCtx, Flow, HeaderEdit, Phases, RequestView, Response};

/// A filter or router could not be built from a config that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError(pub String);

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BuildError {}

/// Builds one filter from its config.
pub fn build_filter(config: &FilterConfig) -> Result<Arc<dyn Filter>, BuildError> {
    Ok(match config {
        FilterConfig::Headers(h) => Arc::new(headers::HeaderTransform::new(h)?),
        FilterConfig::Redirect(r) => Arc::new(respond::Redirect::new(r)?),
        FilterConfig::DirectResponse(d) => Arc::new(respond::DirectResponse::new(d)?),
    })
}

/// Builds a route's chain: the route's own `headers` rules first, then its `filters` in
/// order.
pub fn build_chain(route: &RouteConfig) -> Result<Chain, BuildError> {
    let mut filters: Vec<Arc<dyn Filter>> = Vec::new();
    let own = headers::HeaderTransform::new(&route.headers)?;
    if !own.is_empty() {
        filters.push(Arc::new(own));
    }
    for f in &route.filters {
        filters.push(build_filter(f)?);
    }
    Ok(Chain::new(filters))
}
