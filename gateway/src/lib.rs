//! The Sluice gateway: everything the `sluice` binary runs.
//!
//! This crate owns the compiled [`snapshot`], upstreams and [`balancer`]s, the [`discovery`]
//! plane, the pingora glue ([`proxy`], a list of calls into the phase modules of
//! [`pipeline`]), the admin API ([`admin`]), [`metrics`], and process wiring
//! ([`server`]). The pure request-path cores live in `sluice-filters`; the config model
//! and its sources in `sluice-config`.

pub mod access_log;
pub mod access_metrics;
pub mod admin;
pub mod background;
pub mod balancer;
pub mod conn;
pub mod dashboard;
pub mod discovery;
pub mod echo;
pub mod error;
pub mod events;
pub mod gateway;
pub mod health;
pub mod l4;
pub mod limit_metrics;
pub mod logging;
pub mod metrics;
pub mod mirror;
pub mod pipeline;
pub mod proxy;
pub mod resilience;
pub mod rollout;
pub mod server;
pub mod shutdown;
pub mod sinks;
pub mod snapshot;
pub mod sources;
pub mod state;
pub mod tls;
pub mod trace;
pub mod unwind;
pub mod upstream;
