//! The serving snapshot's upstreams by id, published with each snapshot: the
//! [`EndpointLookup`] service filters use to send requests of their own (the `mirror`
//! kind's copies). An upstream's endpoint set is its live one (configured, DNS or
//! Kubernetes), so discovered endpoints are used as soon as the balancer sees them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use sluice_core::EndpointLookup;

use crate::control::snapshot::Snapshot;
use crate::upstream::Upstream;

/// The serving snapshot's upstreams, by id.
#[derive(Default)]
pub struct UpstreamDirectory(ArcSwap<HashMap<String, Arc<Upstream>>>);

impl UpstreamDirectory {
    /// Points the directory at `snapshot`'s upstreams (called as it is published).
    pub fn publish(&self, snapshot: &Snapshot) {
        self.0.store(Arc::new(snapshot.upstreams.clone()));
    }
}

impl EndpointLookup for UpstreamDirectory {
    fn endpoint(&self, id: &str, n: u64) -> Option<SocketAddr> {
        let map = self.0.load();
        let set = map.get(id)?.endpoints.load();
        let now = Instant::now();
        let usable = (0..set.endpoints.len()).filter(|&i| set.is_available(i, now));
        let count = usable.clone().count() as u64;
        if count == 0 {
            return None;
        }
        let k = usize::try_from(n % count).ok()?;
        usable.clone().nth(k).map(|i| set.endpoints[i].addr)
    }
}
