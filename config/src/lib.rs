//! Sluice's declarative configuration.
//!
//! This crate owns the public config model (what users write in YAML, JSON or etcd),
//! its validation with field-path errors, and the config sources (file, etcd).
//! It does not own the compiled, request-path form of the config: that is the gateway's
//! snapshot, built from a validated [`Config`].

pub mod model;
pub mod resilience;
pub mod source;
pub mod validate;

pub use model::Config;
pub use validate::{ConfigError, ConfigErrors};
