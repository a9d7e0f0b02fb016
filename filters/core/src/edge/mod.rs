//! What an edge proxy does to HTTP itself, as pure decisions the gateway runs:
//! content-coding negotiation and compression ([`encoding`]), response caching's key,
//! bypass rules and `Cache-Status` ([`cache`]), gRPC-Web framing ([`grpc_web`]) and
//! error pages ([`error_page`]), and their compiled config ([`compile`]).

pub mod cache;
pub mod compile;
pub mod encoding;
pub mod error_page;
pub mod grpc_web;
