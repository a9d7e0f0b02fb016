//! The control plane: applying a config ([`gateway`]), compiling it into a
//! [`snapshot`], the sources loop ([`sources`]), persisted [`state`], the route check
//! handed to everyone who validates a config ([`validate`]), and the background runtime
//! filters' services run on ([`background`]).

pub mod background;
pub mod gateway;
pub mod snapshot;
pub mod sources;
pub mod state;
pub mod validate;
