//! Sluice's pure request-path cores.
//!
//! This crate owns what the request path decides without I/O: the [`router`], path
//! rewriting ([`rewrite`]), the weighted split between a route's backends ([`weighted`],
//! [`split`]), the strict request-framing checks ([`framing`], [`request_line`]), trace
//! context ([`trace`]), cookies ([`cookie`]), query editing ([`query`]), what the edge does to HTTP itself ([`edge`]:
//! content-coding negotiation, the cache key and rules, gRPC-Web framing, error-page
//! templates), the resilience state machines ([`resilience`]:
//! circuit breaker, outlier detection, retry budget), and the filter seam ([`filter`]: the
//! [`Filter`] trait, [`Chain`], [`FilterCtx`]) with the typed [`Services`] map filters
//! get their process-wide services from. Every decision here is a pure function or
//! state machine with an injectable clock; the filter kinds live in `sluice-filters`, and
//! the `sluice-gateway` crate wraps both in pingora phases.

pub mod client_cert;
pub mod cookie;
pub mod edge;
pub mod filter;
pub mod framing;
pub mod normalize;
pub mod notes;
pub mod query;
pub mod request_line;
pub mod resilience;
pub mod rewrite;
pub mod router;
pub mod services;
pub mod split;
pub mod trace;
pub mod weighted;

pub use filter::BackendReason;
pub use filter::{
    BackendHint, Built, Chain, Completion, CustomReject, Filter, FilterCtx, Flow, HeaderEdit, Identity,
    LogNotes, LogValue, Phases, Reject, RejectKind, RequestBody, RequestView, Response,
};
pub use notes::Notes;
pub use services::{EndpointLookup, EventSink, KindEvent, Services};
