//! `sluice_mirror_requests_total{route, upstream, outcome}`, read from the mirrors'
//! atomics at scrape time, so the request path only bumps an atomic.

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, Opts};

use super::{Mirrors, Outcome};

/// Exposes the mirrors' outcome counters.
pub struct MirrorCollector {
    mirrors: Mirrors,
    counter: IntCounterVec,
    /// Serializes scrapes, which bring the counter up to the atomics' values.
    scrape: Mutex<()>,
}

impl MirrorCollector {
    /// A collector over `mirrors`' counters.
    pub fn new(mirrors: Mirrors) -> prometheus::Result<MirrorCollector> {
        let counter = IntCounterVec::new(
            Opts::new(
                "sluice_mirror_requests_total",
                "Mirrored request copies, by route, mirror upstream and outcome (sent, failed, timeout, dropped_queue_full, skipped_body, no_endpoint).",
            ),
            &["route", "upstream", "outcome"],
        )?;
        Ok(MirrorCollector {
            mirrors,
            counter,
            scrape: Mutex::new(()),
        })
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
