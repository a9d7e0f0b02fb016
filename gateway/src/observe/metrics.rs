//! Prometheus metrics. Labels come from closed sets only: route and upstream ids from the
//! config, status classes, and error kinds from [`crate::edge::error::ErrorKind::code`].

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use sluice_core::edge::cache::Outcome;
use sluice_core::resilience::{EjectionReason, UpstreamOutcome};

use crate::edge::error::ErrorKind;

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
    /// `sluice_cache_requests_total{route, outcome}`: what the response cache did.
    pub cache_requests: IntCounterVec,
    /// `sluice_config_reloads_total{outcome}`: `applied`, `rejected`, `unchanged`.
    pub reloads: IntCounterVec,
    /// `sluice_config_apply_seconds`: validating, compiling and publishing an applied
    /// update (reading and composing the sources come before).
    pub apply_latency: Histogram,
    /// `sluice_config_version`: the version of the published snapshot.
    pub config_version: IntGauge,
    /// `sluice_breaker_state{route, upstream}`: 0 closed, 1 open, 2 half_open,
    /// 3 forced_open, 4 disabled.
    pub breaker_state: IntGaugeVec,
    /// `sluice_breaker_transitions_total{route, upstream, from, to}`.
    pub breaker_transitions: IntCounterVec,
    /// `sluice_breaker_short_circuited_total{route, upstream, action}`: `response` or
    /// `fallback`.
    pub short_circuited: IntCounterVec,
    /// `sluice_outlier_ejections_total{upstream, reason}`.
    pub ejections: IntCounterVec,
    /// `sluice_endpoints_ejected{upstream}`: endpoints ejected now.
    pub ejected: IntGaugeVec,
    /// `sluice_retries_total{route, upstream, reason}`.
    pub retries: IntCounterVec,
    /// `sluice_backend_requests_total{route, backend}`.
    pub backend_requests: IntCounterVec,
    /// `sluice_retry_budget_exhausted_total{upstream}`: retries refused by the budget.
    pub budget_exhausted: IntCounterVec,
    /// `sluice_endpoint_healthy{upstream, endpoint}`: 1 or 0, from active checks.
    pub endpoint_healthy: IntGaugeVec,
    /// `sluice_upstream_endpoints{upstream}`: the endpoints an upstream has now.
    pub upstream_endpoints: IntGaugeVec,
    /// `sluice_config_source_connected{source}`: 1 while the source (`etcd`) is connected.
    pub source_connected: IntGaugeVec,
    /// `sluice_config_source_revision`: the newest etcd revision seen.
    pub source_revision: IntGauge,
    /// `sluice_access_log_dropped_total`: access-log records dropped because the writer
    /// fell behind (its queue was full).
    pub access_log_dropped: IntCounter,
    /// `sluice_backend_responses_total{route, backend, class}`: per version (backend) of
    /// a route with several backends, requests by status class.
    pub backend_responses: IntCounterVec,
    /// `sluice_backend_request_duration_seconds{route, backend}`: per version, latency
    /// from arrival to end.
    pub backend_latency: HistogramVec,
    /// `sluice_backend_decisions_total{route, backend, reason}`: why requests went to
    /// each backend (`weight`, `header`, `cookie`, `query`, `source`, `consumer`,
    /// `sticky`).
    pub backend_decisions: IntCounterVec,
    unrouted: RouteMetrics,
}

fn route_handles(requests: &IntCounterVec, latency: &HistogramVec, route: &str) -> RouteMetrics {
    RouteMetrics {
        by_class: CLASSES.map(|c| requests.with_label_values(&[route, c])),
        latency: latency.with_label_values(&[route]),
    }
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
        let cache_requests = must(IntCounterVec::new(
            Opts::new(
                "sluice_cache_requests_total",
                "Requests on caching routes, by route and what the cache did (hit, stale, miss, expired, bypass).",
            ),
            &["route", "outcome"],
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
        let counter =
            |name: &str, help: &str, labels: &[&str]| must(IntCounterVec::new(Opts::new(name, help), labels));
        let gauge =
            |name: &str, help: &str, labels: &[&str]| must(IntGaugeVec::new(Opts::new(name, help), labels));
        let breaker_state = gauge(
            "sluice_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half_open, 3 forced_open, 4 disabled.",
            &["route", "upstream"],
        );
        let breaker_transitions = counter(
            "sluice_breaker_transitions_total",
            "Circuit breaker state changes.",
            &["route", "upstream", "from", "to"],
        );
        let short_circuited = counter(
            "sluice_breaker_short_circuited_total",
            "Requests answered without calling the upstream because its breaker was open.",
            &["route", "upstream", "action"],
        );
        let ejections = counter(
            "sluice_outlier_ejections_total",
            "Endpoints ejected by outlier detection.",
            &["upstream", "reason"],
        );
        let ejected = gauge(
            "sluice_endpoints_ejected",
            "Endpoints ejected by outlier detection now.",
            &["upstream"],
        );
        let backend_requests = counter(
            "sluice_backend_requests_total",
            "Requests a route sent to each of its backends (the upstream that served, fallback included).",
            &["route", "backend"],
        );
        let retries = counter(
            "sluice_retries_total",
            "Upstream retries started.",
            &["route", "upstream", "reason"],
        );
        let budget_exhausted = counter(
            "sluice_retry_budget_exhausted_total",
            "Retries refused because the upstream's retry budget was spent.",
            &["upstream"],
        );
        let upstream_endpoints = gauge(
            "sluice_upstream_endpoints",
            "Endpoints an upstream has now (configured, resolved or discovered).",
            &["upstream"],
        );
        let endpoint_healthy = gauge(
            "sluice_endpoint_healthy",
            "Active health check result: 1 healthy, 0 unhealthy.",
            &["upstream", "endpoint"],
        );
        let source_connected = gauge(
            "sluice_config_source_connected",
            "Whether the config source is connected (1) or not (0).",
            &["source"],
        );
        let source_revision = must(IntGauge::new(
            "sluice_config_source_revision",
            "The newest etcd revision the config watch has seen.",
        ));
        let access_log_dropped = must(IntCounter::new(
            "sluice_access_log_dropped_total",
            "Access-log records dropped because the log writer fell behind.",
        ));
        let backend_responses = counter(
            "sluice_backend_responses_total",
            "Requests served by each backend (version) of a route with several backends, by status class.",
            &["route", "backend", "class"],
        );
        let backend_latency = must(HistogramVec::new(
            HistogramOpts::new(
                "sluice_backend_request_duration_seconds",
                "Request latency from arrival to end, by route and backend (version).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route", "backend"],
        ));
        let backend_decisions = counter(
            "sluice_backend_decisions_total",
            "Backend choices of routes with several backends, by route, backend and reason.",
            &["route", "backend", "reason"],
        );
        for c in [
            Box::new(backend_responses.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(backend_latency.clone()),
            Box::new(backend_decisions.clone()),
            Box::new(requests.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(source_connected.clone()),
            Box::new(source_revision.clone()),
            Box::new(breaker_state.clone()),
            Box::new(breaker_transitions.clone()),
            Box::new(short_circuited.clone()),
            Box::new(ejections.clone()),
            Box::new(ejected.clone()),
            Box::new(retries.clone()),
            Box::new(backend_requests.clone()),
            Box::new(budget_exhausted.clone()),
            Box::new(endpoint_healthy.clone()),
            Box::new(upstream_endpoints.clone()),
            Box::new(latency.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(cache_requests.clone()),
            Box::new(reloads.clone()),
            Box::new(apply_latency.clone()),
            Box::new(config_version.clone()),
        ] {
            must(registry.register(c));
        }
        let unrouted = route_handles(&requests, &latency, NO_ROUTE);
        Metrics {
            registry,
            requests,
            latency,
            upstream_errors,
            cache_requests,
            reloads,
            apply_latency,
            config_version,
            breaker_state,
            breaker_transitions,
            short_circuited,
            ejections,
            ejected,
            retries,
            backend_requests,
            budget_exhausted,
            endpoint_healthy,
            upstream_endpoints,
            source_connected,
            source_revision,
            access_log_dropped,
            backend_responses,
            backend_latency,
            backend_decisions,
            unrouted,
        }
    }

    /// Handles for route `id` (resolved once per snapshot compile).
    pub fn route(&self, id: &str) -> RouteMetrics {
        route_handles(&self.requests, &self.latency, id)
    }

    /// Handles for route `id`'s cache outcomes (resolved once per snapshot compile, for
    /// caching routes only).
    pub fn cache_for(&self, id: &str) -> CacheMetrics {
        CacheMetrics(Outcome::ALL.map(|o| self.cache_requests.with_label_values(&[id, o.as_str()])))
    }

    /// Handles for upstream `id`'s error and ejection counters (resolved once per
    /// upstream build).
    pub fn upstream(&self, id: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            errors: UPSTREAM_ERROR_KINDS.map(|k| self.upstream_errors.with_label_values(&[id, k.code()])),
            ejections: EjectionReason::ALL.map(|r| self.ejections.with_label_values(&[id, r.as_str()])),
        }
    }

    /// Handles for the retries of route `route` to upstream `upstream` (resolved once
    /// per route compile).
    pub fn retries_for(&self, route: &str, upstream: &str) -> RetryMetrics {
        RetryMetrics {
            by_reason: RETRY_REASONS.map(|r| self.retries.with_label_values(&[route, upstream, r])),
        }
    }

    /// The per-version handles of backend `backend` of route `route` (resolved once per
    /// route compile).
    pub fn version(&self, route: &str, backend: &str) -> VersionMetrics {
        VersionMetrics {
            by_class: CLASSES.map(|c| self.backend_responses.with_label_values(&[route, backend, c])),
            latency: self.backend_latency.with_label_values(&[route, backend]),
            decisions: sluice_core::BackendReason::ALL.map(|r| {
                self.backend_decisions
                    .with_label_values(&[route, backend, r.as_str()])
            }),
        }
    }

    /// Handles for requests no route matched.
    pub fn unrouted(&self) -> &RouteMetrics {
        &self.unrouted
    }

    /// The registry every metric is in; filter kinds register their own metrics there
    /// (it is a service in the filters' build context).
    pub fn registry(&self) -> &Registry {
        &self.registry
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

/// Pre-resolved metric handles for one route, so the request path does no label lookup.
pub struct RouteMetrics {
    by_class: [IntCounter; 6],
    latency: Histogram,
}

/// A route's request figures so far, for the dashboard (`/api/v1/stats`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteFigures {
    /// Requests by status class, in the order `1xx`, `2xx`, `3xx`, `4xx`, `5xx`, `none`.
    pub by_class: [u64; 6],
    /// The latency histogram: (upper bound in seconds, cumulative count).
    pub buckets: Vec<(f64, u64)>,
    /// Requests observed by the histogram.
    pub count: u64,
    /// Sum of their durations, in seconds.
    pub sum: f64,
}

impl RouteMetrics {
    /// The figures so far (reads the counters; for the admin plane, not the request path).
    pub fn figures(&self) -> RouteFigures {
        figures_of(&self.by_class, &self.latency)
    }

    /// Counts one finished request.
    pub fn observe(&self, status: u16, elapsed: std::time::Duration) {
        self.by_class[class_index(status)].inc();
        self.latency.observe(elapsed.as_secs_f64());
    }
}

/// The figures of counters by status class and a latency histogram.
fn figures_of(by_class: &[IntCounter; 6], latency: &Histogram) -> RouteFigures {
    use prometheus::core::Metric;
    let m = latency.metric();
    let h = m.get_histogram();
    RouteFigures {
        by_class: by_class.each_ref().map(|c| c.get()),
        buckets: h
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect(),
        count: h.get_sample_count(),
        sum: h.get_sample_sum(),
    }
}

/// Pre-resolved handles of `sluice_cache_requests_total` for one route.
#[derive(Debug, Clone)]
pub struct CacheMetrics([IntCounter; 5]);

impl CacheMetrics {
    /// Counts one answer of the route's cache.
    #[inline]
    pub fn observe(&self, outcome: Outcome) {
        if let Some(i) = Outcome::ALL.iter().position(|o| *o == outcome) {
            self.0[i].inc();
        }
    }
}

/// The error kinds counted per upstream, in [`UpstreamMetrics::errors`] order: those for
/// which [`ErrorKind::is_upstream`] holds.
const UPSTREAM_ERROR_KINDS: [ErrorKind; 7] = [
    ErrorKind::UpstreamConnect,
    ErrorKind::UpstreamTimeout,
    ErrorKind::UpstreamBodyTimeout,
    ErrorKind::UpstreamResponseTooLarge,
    ErrorKind::UpstreamReset,
    ErrorKind::UpstreamProtocol,
    ErrorKind::NoHealthyEndpoint,
];

/// Pre-resolved handles of one upstream's `sluice_upstream_errors_total` and
/// `sluice_outlier_ejections_total` series, so the request path does no label lookup.
#[derive(Debug, Clone)]
pub struct UpstreamMetrics {
    errors: [IntCounter; 7],
    ejections: [IntCounter; 3],
}

impl UpstreamMetrics {
    /// Counts an upstream failure of `kind` (kinds that are not upstream failures are
    /// not counted).
    #[inline]
    pub fn error(&self, kind: ErrorKind) {
        if let Some(i) = UPSTREAM_ERROR_KINDS.iter().position(|k| *k == kind) {
            self.errors[i].inc();
        }
    }

    /// Counts an enforced ejection.
    #[inline]
    pub fn ejection(&self, reason: EjectionReason) {
        self.ejections[reason.index()].inc();
    }
}

/// `reason` label values of `sluice_retries_total`, in [`RetryMetrics`] order.
const RETRY_REASONS: [&str; 4] = ["status", "connect_failure", "timeout", "reset"];

/// Pre-resolved handles of `sluice_retries_total` for one (route, upstream) pair.
#[derive(Debug, Clone)]
pub struct RetryMetrics {
    by_reason: [IntCounter; 4],
}

impl RetryMetrics {
    /// Counts a retry of a try that ended with `outcome`.
    #[inline]
    pub fn retry(&self, outcome: UpstreamOutcome) {
        let i = match outcome {
            UpstreamOutcome::Response(_) => 0,
            UpstreamOutcome::ConnectFailure => 1,
            UpstreamOutcome::Timeout => 2,
            UpstreamOutcome::Reset => 3,
        };
        self.by_reason[i].inc();
    }
}

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100) - 1,
        _ => 5,
    }
}

/// `1xx` … `5xx` for a status code, `none` when no response was sent.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=599 => CLASSES[class_index(status)],
        _ => "none",
    }
}

/// Pre-resolved per-version handles of one backend of one route:
/// `sluice_backend_responses_total`, `sluice_backend_request_duration_seconds` and
/// `sluice_backend_decisions_total`.
#[derive(Debug, Clone)]
pub struct VersionMetrics {
    by_class: [IntCounter; 6],
    latency: Histogram,
    decisions: [IntCounter; 7],
}

impl VersionMetrics {
    /// The figures so far, as [`RouteMetrics::figures`] (for the admin plane).
    pub fn figures(&self) -> RouteFigures {
        figures_of(&self.by_class, &self.latency)
    }

    /// Counts one finished request this backend was chosen for.
    #[inline]
    pub fn observe(&self, status: u16, elapsed: std::time::Duration) {
        self.by_class[class_index(status)].inc();
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// Counts one choice of this backend, and why.
    #[inline]
    pub fn decision(&self, reason: sluice_core::BackendReason) {
        self.decisions[reason.index()].inc();
    }
}
