//! The header-transform filter: remove, set and add headers on the request and the
//! response.

use http::{HeaderName, HeaderValue, StatusCode};
use sluice_config::model::{HeaderOps, HeaderRules};

use crate::filter::{Filter, FilterCtx, HeaderEdit, Phases};
use crate::BuildError;

/// Compiled header operations, applied in the order remove, set, add.
#[derive(Debug, Clone, Default)]
pub struct CompiledOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl CompiledOps {
    /// Compiles header operations.
    pub fn new(ops: &HeaderOps) -> Result<CompiledOps, BuildError> {
        let pair = |k: &String, v: &String| -> Result<(HeaderName, HeaderValue), BuildError> {
            Ok((
                HeaderName::from_bytes(k.as_bytes()).map_err(|e| BuildError(format!("header {k:?}: {e}")))?,
                HeaderValue::from_str(v).map_err(|e| BuildError(format!("header {k:?} value: {e}")))?,
            ))
        };
        Ok(CompiledOps {
            remove: ops
                .remove
                .iter()
                .map(|k| {
                    HeaderName::from_bytes(k.as_bytes()).map_err(|e| BuildError(format!("header {k:?}: {e}")))
                })
                .collect::<Result<_, _>>()?,
            set: ops
                .set
                .iter()
                .map(|(k, v)| pair(k, v))
                .collect::<Result<_, _>>()?,
            add: ops
                .add
                .iter()
                .map(|(k, v)| pair(k, v))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies the operations.
    pub fn apply(&self, headers: &mut dyn HeaderEdit) {
        for k in &self.remove {
            headers.remove(k);
        }
        for (k, v) in &self.set {
            headers.set(k.clone(), v.clone());
        }
        for (k, v) in &self.add {
            headers.append(k.clone(), v.clone());
        }
    }
}

/// The `headers` filter.
#[derive(Debug, Clone)]
pub struct HeaderTransform {
    request: CompiledOps,
    response: CompiledOps,
}

impl HeaderTransform {
    /// Compiles a header rule set.
    pub fn new(rules: &HeaderRules) -> Result<HeaderTransform, BuildError> {
        Ok(HeaderTransform {
            request: CompiledOps::new(&rules.request)?,
            response: CompiledOps::new(&rules.response)?,
        })
    }

    /// Whether the rules change nothing.
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

impl Filter for HeaderTransform {
    fn kind(&self) -> &'static str {
        "headers"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: false,
            upstream_request: !self.request.is_empty(),
            response: !self.response.is_empty(),
        }
    }

    fn on_upstream_request(&self, headers: &mut dyn HeaderEdit, _ctx: &FilterCtx) {
        self.request.apply(headers);
    }

    fn on_response(&self, _status: StatusCode, headers: &mut dyn HeaderEdit, _ctx: &FilterCtx) {
        self.response.apply(headers);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn removes_then_sets_then_adds() {
        let rules: HeaderRules = serde_yaml::from_str(
            "request: {remove: [x-secret], set: {x-env: prod}, add: {x-tag: b}}\nresponse: {set: {server: sluice}}",
        )
        .unwrap();
        let f = HeaderTransform::new(&rules).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-secret", "s".parse().unwrap());
        h.insert("x-env", "dev".parse().unwrap());
        h.insert("x-tag", "a".parse().unwrap());
        f.on_upstream_request(&mut h, &FilterCtx::default());
        assert!(h.get("x-secret").is_none());
        assert_eq!(h.get("x-env").unwrap(), "prod");
        let tags: Vec<_> = h.get_all("x-tag").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(tags, ["a", "b"]);
        let mut r = HeaderMap::new();
        f.on_response(StatusCode::OK, &mut r, &FilterCtx::default());
        assert_eq!(r.get("server").unwrap(), "sluice");
        assert!(f.phases().upstream_request && f.phases().response && !f.phases().request);
    }
}
