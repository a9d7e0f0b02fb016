//! Sluice's config sources: where the documents that become a [`Config`] come from, and
//! how they are joined into one.
//!
//! - [`file`](mod@file): a YAML/JSON file or a directory of them (a Kubernetes ConfigMap
//!   mount works), and a watcher that says when to re-read.
//! - [`etcd`](mod@etcd): routes and upstreams, one per key, kept current with an etcd
//!   watch; and the library side of `sluice apply|get|diff`.
//! - [`source`](mod@source): the one [`Source`] trait both implement, so that the
//!   gateway's config loop follows a list of sources (`Vec<Box<dyn Source>>`) and a new
//!   kind of source (Kubernetes) is one more implementation.
//! - [`compose_all`] joins what they say: the file gives the base document (listeners,
//!   server, admin and any routes/upstreams written there), each resource set adds its
//!   routes and upstreams, and every error names where the faulty element came from.
//! - [`files`](mod@files): the checks of the files a config names (certificates), the I/O
//!   half of validation.
//!
//! This crate does not decide when to publish a snapshot; that is the gateway's job.
//!
//! [`Config`]: sluice_config::Config

mod compose;
pub mod etcd;
pub mod file;
pub mod files;
pub mod source;

pub use compose::{compose, compose_all, Resources};
pub use source::{Content, Publisher, Source, SourceContext, SourceState};
