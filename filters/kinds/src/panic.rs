//! The `panic` filter, for tests only: it panics while serving a request, to show that a
//! bug in one request answers that request 500 and leaves the process serving the others.
//! It exists only in builds with the `test-kinds` feature (`sluice-gateway/test-kinds`,
//! which `scripts/test.sh` enables); a release build does not know the kind.
//!
//! ```yaml
//! filters:
//!   - panic: {phase: request}   # or `response`
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::registry::{parse, BuildCtx, Kind, SpecError};
use sluice_core::filter::{Filter, FilterCtx, Flow, HeaderEdit, Phases, RequestView};

/// The registry entry.
pub const KIND: Kind = Kind {
    name: "panic",
    answers: false,
    build,
    redact: crate::registry::shown_as::<PanicSpec>,
    // A test-only kind: not in the published schema.
    schema: None,
};

/// Where the filter panics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PanicPhase {
    /// In `on_request`, before an upstream is chosen.
    #[default]
    Request,
    /// In `on_response`, on the upstream's response headers.
    Response,
}

/// The spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PanicSpec {
    /// The phase that panics. Default: `request`.
    #[serde(default)]
    pub phase: PanicPhase,
}

fn build(spec: &serde_json::Value, _ctx: &BuildCtx<'_>) -> Result<Arc<dyn Filter>, Vec<SpecError>> {
    let spec: PanicSpec = if spec.is_null() {
        PanicSpec::default()
    } else {
        parse(spec)?
    };
    Ok(Arc::new(PanicFilter { phase: spec.phase }))
}

/// The `panic` filter.
#[derive(Debug)]
pub struct PanicFilter {
    phase: PanicPhase,
}

#[async_trait]
impl Filter for PanicFilter {
    fn kind(&self) -> &'static str {
        "panic"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: self.phase == PanicPhase::Request,
            response: self.phase == PanicPhase::Response,
            ..Phases::default()
        }
    }

    #[allow(clippy::panic)]
    async fn on_request(&self, req: &RequestView<'_>, _ctx: &mut FilterCtx) -> Flow {
        panic!("test-kinds panic filter: on_request {}", req.path);
    }

    #[allow(clippy::panic)]
    fn on_response(&self, status: StatusCode, _headers: &mut dyn HeaderEdit, _ctx: &FilterCtx) {
        panic!("test-kinds panic filter: on_response {status}");
    }
}
