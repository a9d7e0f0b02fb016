//! State that outlives snapshots, keyed by stable ids: endpoint state (in-flight counts,
//! health) by (upstream id, address). A reload takes the entries of unchanged objects
//! over and drops the entries nothing refers to any more.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::upstream::EndpointState;

/// Long-lived state shared by every snapshot.
#[derive(Debug, Default)]
pub struct SharedState {
    endpoints: Mutex<HashMap<(String, String), Arc<EndpointState>>>,
}

impl SharedState {
    /// The state of endpoint `address` of upstream `upstream`, created on first use.
    pub fn endpoint(&self, upstream: &str, address: &str) -> Arc<EndpointState> {
        self.endpoints
            .lock()
            .entry((upstream.to_string(), address.to_string()))
            .or_default()
            .clone()
    }

    /// Drops state that no live snapshot refers to (only this map holds it).
    pub fn collect_garbage(&self) {
        self.endpoints.lock().retain(|_, v| Arc::strong_count(v) > 1);
    }
}
