//! Sluice's declarative configuration model.
//!
//! This crate owns the public config model (what users write in YAML, JSON or etcd), its
//! parsing and its validation with field-path errors, and content digests. It does no
//! I/O and nothing async: reading files, watching them and talking to etcd is the job of
//! `sluice-sources`, and checks that need the filesystem (the certificate files a
//! listener names) are passed in as [`validate::ParseOptions::extra`].
//!
//! It does not own the compiled, request-path form of the config either: that is the
//! gateway's snapshot, built from a validated [`Config`].

pub mod certificates;
pub mod check;
pub mod connections;
pub mod kubernetes;
pub mod l4;
pub mod limits;
pub mod logging;
pub mod model;
pub mod normalization;
pub mod resilience;
pub mod responses;
pub mod rollout;
pub mod schema;
pub mod secret;
pub mod tracing;
pub mod validate;

pub use check::RouteCheck;
pub use model::Config;
pub use validate::{ConfigError, ConfigErrors};
