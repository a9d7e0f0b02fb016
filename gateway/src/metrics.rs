//! Prometheus metrics. Labels come from closed sets only: route and upstream ids from the
//! config, status classes, and error kinds from [`crate::error::ErrorKind::code`].

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Route label for requests no route matched.
pub const NO_ROUTE: &str = "_none";

/// All of the gateway's metrics, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// `sluice_requests_total{route, status_class}`.
    pub requests: IntCounterVec,
    /// `sluice_request_duration_seconds{route}`.
    pub latency: HistogramVec,
    /// `sluice_upstream_errors_total{upstream, kind}`.
    pub upstream_errors: IntCounterVec,
    /// `sluice_config_reloads_total{outcome}`: `applied`, `rejected`, `unchanged`.
    pub reloads: IntCounterVec,
    /// `sluice_config_apply_seconds`: from a change arriving to its snapshot published.
    pub apply_latency: Histogram,
    /// `sluice_config_version`: the version of the published snapshot.
    pub config_version: IntGauge,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    r.expect("metric definitions are static and valid")
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = must(IntCounterVec::new(
            Opts::new(
                "sluice_requests_total",
                "Requests served, by route and status class.",
            ),
            &["route", "status_class"],
        ));
        let latency = must(HistogramVec::new(
            HistogramOpts::new(
                "sluice_request_duration_seconds",
                "Request latency from arrival to end, by route.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        ));
        let upstream_errors = must(IntCounterVec::new(
            Opts::new(
                "sluice_upstream_errors_total",
                "Upstream failures, by upstream and kind.",
            ),
            &["upstream", "kind"],
        ));
        let reloads = must(IntCounterVec::new(
            Opts::new("sluice_config_reloads_total", "Config updates, by outcome."),
            &["outcome"],
        ));
        let apply_latency = must(Histogram::with_opts(
            HistogramOpts::new(
                "sluice_config_apply_seconds",
                "Time to validate, compile and publish a config.",
            )
            .buckets(vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]),
        ));
        let config_version = must(IntGauge::new(
            "sluice_config_version",
            "Version of the published config snapshot.",
        ));
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(reloads.clone()),
            Box::new(apply_latency.clone()),
            Box::new(config_version.clone()),
        ] {
            must(registry.register(c));
        }
        Metrics {
            registry,
            requests,
            latency,
            upstream_errors,
            reloads,
            apply_latency,
            config_version,
        }
    }

    /// Registers another collector (used by subsystems that own their metrics).
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) {
        must(self.registry.register(c));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `1xx` … `5xx` for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
