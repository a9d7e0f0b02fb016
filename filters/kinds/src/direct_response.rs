//! The `direct_response` filter: answers with a fixed response instead of proxying.
//!
//! ```yaml
//! filters:
//!   - direct_response: {status: 200, headers: {content-type: text/plain}, body: "hello\n"}
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::registry::{parse, BuildCtx, Kind, SpecError};
use sluice_core::filter::{Filter, FilterCtx, Flow, Phases, RequestView, Response};

/// The registry entry.
pub const KIND: Kind = Kind {
    name: "direct_response",
    answers: true,
    build,
    redact: crate::registry::shown_as::<DirectResponseSpec>,
    schema: Some(crate::registry::schema_of::<DirectResponseSpec>),
};

/// A fixed response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseSpec {
    /// Status code. Default: `200`.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Response headers. Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Response body. Default: empty.
    #[serde(default)]
    pub body: String,
}

fn default_status() -> u16 {
    200
}

fn build(spec: &serde_json::Value, _ctx: &BuildCtx<'_>) -> Result<Arc<dyn Filter>, Vec<SpecError>> {
    let spec: DirectResponseSpec = parse(spec)?;
    Ok(Arc::new(DirectResponse::new(&spec)?))
}

/// The `direct_response` filter.
#[derive(Debug, Clone)]
pub struct DirectResponse {
    response: Response,
}

impl DirectResponse {
    /// Validates the spec and builds the filter; every error names its field.
    pub fn new(c: &DirectResponseSpec) -> Result<DirectResponse, Vec<SpecError>> {
        let mut errors = Vec::new();
        let status = match StatusCode::from_u16(c.status) {
            Ok(s) if (100..=599).contains(&c.status) => s,
            _ => {
                errors.push(SpecError::at(
                    "status",
                    format!("{} is not an HTTP status", c.status),
                ));
                StatusCode::OK
            }
        };
        let mut headers = Vec::new();
        for (k, v) in &c.headers {
            let path = format!("headers.{k}");
            match (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                (Err(_), _) => errors.push(SpecError::at(path, format!("invalid header name {k:?}"))),
                (_, Err(_)) => errors.push(SpecError::at(path, format!("invalid header value {v:?}"))),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(DirectResponse {
            response: Response {
                status,
                headers,
                body: Bytes::from(c.body.clone()),
            },
        })
    }
}

#[async_trait]
impl Filter for DirectResponse {
    fn kind(&self) -> &'static str {
        "direct_response"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            ..Phases::default()
        }
    }

    async fn on_request(&self, _req: &RequestView<'_>, _ctx: &mut FilterCtx) -> Flow {
        Flow::Respond(self.response.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bad_status_and_header_are_named() {
        let errs = crate::registry::build_for_test(
            build,
            &serde_json::json!({"status": 99, "headers": {"bad name": "v"}}),
        )
        .err()
        .unwrap();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["status", "headers.bad name"]);
    }
}
