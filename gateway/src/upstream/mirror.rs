//! The gateway's side of request mirroring (the `mirror` filter lives in
//! `sluice-filters`): where copies go and what they are counted as.
//!
//! - [`UpstreamDirectory`]: the serving snapshot's upstreams by id, published with each
//!   snapshot, read by the filters' senders through
//!   [`sluice_filters::mirror::EndpointLookup`]. An upstream's endpoint set is
//!   its live one (configured, DNS or Kubernetes), so discovered endpoints are mirrored
//!   to as soon as the balancer sees them.
//! - [`MirrorCollector`]: `sluice_mirror_requests_total{route, upstream, outcome}`,
//!   read from the filters' atomics at scrape time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, Opts};
use sluice_filters::mirror::{EndpointLookup, Mirrors, Outcome};

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

/// Exposes the mirrors' outcome counters.
pub struct MirrorCollector {
    mirrors: Mirrors,
    counter: IntCounterVec,
    /// Serializes scrapes, which bring the counter up to the atomics' values.
    scrape: Mutex<()>,
}

impl MirrorCollector {
    /// A collector over `mirrors`' counters.
    pub fn new(mirrors: Mirrors) -> MirrorCollector {
        let counter = IntCounterVec::new(
            Opts::new(
                "sluice_mirror_requests_total",
                "Mirrored request copies, by route, mirror upstream and outcome (sent, failed, timeout, dropped_queue_full, skipped_body, no_endpoint).",
            ),
            &["route", "upstream", "outcome"],
        )
        .expect("the metric definition is static and valid");
        MirrorCollector {
            mirrors,
            counter,
            scrape: Mutex::new(()),
        }
    }
}

impl Collector for MirrorCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self.scrape.lock();
        for ((route, upstream), counters) in self.mirrors.all() {
            for (o, now) in Outcome::ALL.iter().zip(counters.snapshot()) {
                let c = self
                    .counter
                    .with_label_values(&[route.as_str(), upstream.as_str(), o.as_str()]);
                c.inc_by(now.saturating_sub(c.get()));
            }
        }
        self.counter.collect()
    }
}
