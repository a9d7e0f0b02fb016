//! `sluice_forward_auth_total{result}`: forward-auth calls by result, `allowed`,
//! `denied`, `timeout`, `unreachable` or `invalid` (all routes together), read from the
//! pool's atomics at scrape time, so the request path only bumps an atomic.

use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, Opts};

use super::Stats;

/// Exposes the forward-auth outcome counters.
pub struct ForwardAuthCollector {
    stats: Arc<Stats>,
    counter: IntCounterVec,
    /// Serializes scrapes, which bring the counter up to the atomics' values.
    scrape: Mutex<()>,
}

impl ForwardAuthCollector {
    /// A collector over `stats`.
    pub fn new(stats: Arc<Stats>) -> prometheus::Result<ForwardAuthCollector> {
        let counter = IntCounterVec::new(
            Opts::new(
                "sluice_forward_auth_total",
                "Forward-auth calls, by result (allowed, denied, timeout, unreachable, invalid).",
            ),
            &["result"],
        )?;
        for r in Stats::RESULTS {
            counter.with_label_values(&[r]);
        }
        Ok(ForwardAuthCollector {
            stats,
            counter,
            scrape: Mutex::new(()),
        })
    }
}

impl Collector for ForwardAuthCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self.scrape.lock();
        for (r, now) in Stats::RESULTS.iter().zip(self.stats.snapshot()) {
            let c = self.counter.with_label_values(&[r]);
            c.inc_by(now.saturating_sub(c.get()));
        }
        self.counter.collect()
    }
}
