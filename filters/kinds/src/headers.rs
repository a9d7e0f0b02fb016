//! The `headers` filter: remove, set and add headers on the request and the response.
//! A route's own `headers` rules are the same filter, run first.
//!
//! ```yaml
//! filters:
//!   - headers: {request: {set: {x-env: prod}}, response: {remove: [server]}}
//! ```

use http::{HeaderName, HeaderValue, StatusCode};
use sluice_config::model::{HeaderOps, HeaderRules};

use std::sync::Arc;

use crate::registry::{parse, BuildCtx, Kind, SpecError};
use sluice_core::filter::{Filter, FilterCtx, HeaderEdit, Phases};

/// The registry entry. The spec is the same as a route's own `headers` rules.
pub const KIND: Kind = Kind {
    name: "headers",
    answers: false,
    build,
    redact: crate::registry::shown_as::<sluice_config::model::HeaderRules>,
    schema: Some(crate::registry::schema_of::<sluice_config::model::HeaderRules>),
};

fn build(spec: &serde_json::Value, _ctx: &BuildCtx<'_>) -> Result<Arc<dyn Filter>, Vec<SpecError>> {
    let rules: HeaderRules = parse(spec)?;
    Ok(Arc::new(HeaderTransform::new(&rules)?))
}

/// Compiled header operations, applied in the order remove, set, add.
#[derive(Debug, Clone, Default)]
pub struct CompiledOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl CompiledOps {
    /// Compiles header operations; every bad name or value is reported below `path`.
    pub fn new(ops: &HeaderOps, path: &str) -> Result<CompiledOps, Vec<SpecError>> {
        let mut errors = Vec::new();
        let mut pairs = |kind: &str, map: &std::collections::BTreeMap<String, String>| {
            let mut out = Vec::new();
            for (k, v) in map {
                let at = format!("{path}.{kind}.{k}");
                match (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                    (Ok(n), Ok(v)) => out.push((n, v)),
                    (Err(_), _) => errors.push(SpecError::at(at, format!("invalid header name {k:?}"))),
                    (_, Err(_)) => errors.push(SpecError::at(at, format!("invalid header value {v:?}"))),
                }
            }
            out
        };
        let set = pairs("set", &ops.set);
        let add = pairs("add", &ops.add);
        let mut remove = Vec::new();
        for (i, k) in ops.remove.iter().enumerate() {
            match HeaderName::from_bytes(k.as_bytes()) {
                Ok(n) => remove.push(n),
                Err(_) => errors.push(SpecError::at(
                    format!("{path}.remove[{i}]"),
                    format!("invalid header name {k:?}"),
                )),
            }
        }
        if errors.is_empty() {
            Ok(CompiledOps { remove, set, add })
        } else {
            Err(errors)
        }
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
    /// Compiles a header rule set; every bad name or value is reported with its path.
    pub fn new(rules: &HeaderRules) -> Result<HeaderTransform, Vec<SpecError>> {
        match (
            CompiledOps::new(&rules.request, "request"),
            CompiledOps::new(&rules.response, "response"),
        ) {
            (Ok(request), Ok(response)) => Ok(HeaderTransform { request, response }),
            (a, b) => Err(a.err().into_iter().chain(b.err()).flatten().collect()),
        }
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
            upstream_request: !self.request.is_empty(),
            response: !self.response.is_empty(),
            ..Phases::default()
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

    #[test]
    fn bad_names_are_reported_with_their_path() {
        let errs = crate::registry::build_for_test(
            build,
            &serde_json::json!({"request": {"set": {"bad name": "x"}, "remove": ["ok", "no pe"]}}),
        )
        .err()
        .unwrap();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["request.set.bad name", "request.remove[1]"]);
        let errs = crate::registry::build_for_test(build, &serde_json::json!({"reqest": {}}))
            .err()
            .unwrap();
        assert!(errs[0].message.contains("unknown field `reqest`"), "{errs:?}");
    }
}
