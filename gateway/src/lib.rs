//! The Sluice gateway: everything the `sluice` binary runs, in folders by role.
//!
//! - [`edge`]: the pingora glue ([`edge::proxy`], a list of calls into the phase modules
//!   of [`edge::pipeline`]), the connection wrapper, TLS, the server wiring, shutdown.
//! - [`control`]: the control plane: applying configs ([`control::gateway`]), the
//!   compiled [`control::snapshot`], the sources loop, persisted state.
//! - [`upstream`]: upstreams and their endpoints, balancers, discovery, health checks,
//!   the resilience bindings, mirroring.
//! - [`observe`]: the access log, metrics, events and their sinks, tracing, logging.
//! - [`admin`]: the admin API and the dashboard.
//! - [`l4`]: the TCP, UDP and TLS (passthrough and terminate) proxy beside the HTTP one.
//! - [`rollout`]: progressive rollouts.
//! - [`cli`]: subcommands' helpers.
//!
//! The pure request-path cores live in `sluice-core`, the filter kinds in
//! `sluice-filters`; the config model and its sources in `sluice-config`.

pub mod admin;
pub mod cli;
pub mod control;
pub mod edge;
pub mod l4;
pub mod observe;
pub mod rollout;
pub mod upstream;
