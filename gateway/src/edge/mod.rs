//! The edge: the pingora glue ([`proxy`]) and the phases it calls ([`pipeline`]), the
//! connection wrapper, TLS, the server wiring, panics and shutdown, the one
//! error-to-status mapping ([`error`]), and the response cache's store
//! ([`cache_store`]).

pub mod cache_store;
pub mod conn;
pub mod error;
pub mod pipeline;
pub mod proxy;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod unwind;
