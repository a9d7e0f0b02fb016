//! What the gateway tells about itself: the access log and its metrics, Prometheus
//! [`metrics`], [`events`] and their [`sinks`], tracing ([`trace`]), and process logging.

pub mod access_log;
pub mod events;
pub mod history;
pub mod logging;
pub mod metrics;
pub mod sinks;
pub mod trace;
