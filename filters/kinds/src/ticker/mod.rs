//! The `ticker` filter, for tests only: a kind that owns a background service and a
//! metric, added by touching only this folder and one registry line. It exists only in
//! builds with the `test-kinds` feature (`sluice-gateway/test-kinds`, which
//! `scripts/test.sh` enables); a release build does not know the kind.
//!
//! ```yaml
//! filters:
//!   - ticker: {every: 50ms}
//! ```
//!
//! - **Background service.** Each filter starts a task on the runtime service of the
//!   build's [`Services`](sluice_core::Services) map that ticks every `every`; the task
//!   ends when the filter is dropped (a reload that replaces it, the route removed).
//!   Without a runtime (validation) nothing starts.
//! - **Metric.** Each tick counts in `sluice_test_ticker_ticks_total{route}`, which the
//!   kind registers itself, once per process, in the metrics registry service.
//! - **Request note.** The request phase leaves the tick count it saw as a typed note
//!   in `FilterCtx::ext`; the response phase reads it back into `x-ticker-ticks`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue, StatusCode};
use prometheus::{IntCounter, IntCounterVec, Opts};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::registry::{parse, BuildCtx, Kind, SpecError};
use sluice_core::filter::{Filter, FilterCtx, Flow, HeaderEdit, Phases, RequestView};

/// The registry entry.
pub const KIND: Kind = Kind {
    name: "ticker",
    answers: false,
    build,
    redact: crate::registry::shown_as::<TickerSpec>,
    // A test-only kind: not in the published schema.
    schema: None,
};

/// The response header the tick count goes in.
pub const HEADER: &str = "x-ticker-ticks";

/// The spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TickerSpec {
    /// How often the background task ticks, from 1ms. Default: `100ms`.
    #[serde(default = "default_every", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub every: Duration,
}

fn default_every() -> Duration {
    Duration::from_millis(100)
}

impl Default for TickerSpec {
    fn default() -> TickerSpec {
        TickerSpec { every: default_every() }
    }
}

/// The kind's service in the build's map: `sluice_test_ticker_ticks_total`, registered
/// once when the first filter is built with a metrics registry (`None` without one).
struct TickMetric(Option<IntCounterVec>);

impl TickMetric {
    fn of(ctx: &BuildCtx<'_>) -> Arc<TickMetric> {
        ctx.services.get_or_insert_with(|| {
            TickMetric(ctx.metrics().and_then(|registry| {
                let vec = IntCounterVec::new(
                    Opts::new("sluice_test_ticker_ticks_total", "Ticks of the test-only ticker filters, by route."),
                    &["route"],
                )
                .and_then(|v| registry.register(Box::new(v.clone())).map(|()| v));
                vec.map_err(|e| tracing::error!("sluice_test_ticker_ticks_total: {e}")).ok()
            }))
        })
    }
}

/// What a filter and its task share.
#[derive(Debug, Default)]
struct Ticks {
    count: AtomicU64,
    /// Set by the task as it ends.
    stopped: AtomicBool,
}

/// The tick count the request phase saw: the kind's note in `FilterCtx::ext`.
#[derive(Debug, Clone, Copy)]
struct Seen(u64);

fn build(spec: &serde_json::Value, ctx: &BuildCtx<'_>) -> Result<Arc<dyn Filter>, Vec<SpecError>> {
    let spec: TickerSpec = if spec.is_null() {
        TickerSpec::default()
    } else {
        parse(spec)?
    };
    if spec.every < Duration::from_millis(1) {
        return Err(vec![SpecError::at("every", "must be at least 1ms")]);
    }
    Ok(Arc::new(Ticker::new(&spec, ctx)))
}

/// The `ticker` filter. Dropping it stops its task.
#[derive(Debug)]
pub struct Ticker {
    ticks: Arc<Ticks>,
    /// Dropped with the filter, which ends the task.
    _stop: Option<oneshot::Sender<()>>,
}

impl Ticker {
    fn new(spec: &TickerSpec, ctx: &BuildCtx<'_>) -> Ticker {
        let ticks = Arc::new(Ticks::default());
        let Some(rt) = ctx.runtime() else {
            // Validation: the spec is checked, nothing starts.
            return Ticker { ticks, _stop: None };
        };
        let counter = TickMetric::of(ctx).0.as_ref().map(|v| v.with_label_values(&[ctx.route]));
        let (stop, stopped) = oneshot::channel();
        rt.spawn(tick(spec.every, ticks.clone(), counter, stopped));
        Ticker {
            ticks,
            _stop: Some(stop),
        }
    }
}

/// Ticks every `every` until `stop`'s sender is dropped.
async fn tick(every: Duration, ticks: Arc<Ticks>, counter: Option<IntCounter>, mut stop: oneshot::Receiver<()>) {
    let mut interval = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = interval.tick() => {
                ticks.count.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = &counter {
                    c.inc();
                }
            }
        }
    }
    ticks.stopped.store(true, Ordering::Release);
}

#[async_trait]
impl Filter for Ticker {
    fn kind(&self) -> &'static str {
        "ticker"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            response: true,
            ..Phases::default()
        }
    }

    async fn on_request(&self, _req: &RequestView<'_>, ctx: &mut FilterCtx) -> Flow {
        ctx.ext.insert(Seen(self.ticks.count.load(Ordering::Relaxed)));
        Flow::Continue
    }

    fn on_response(&self, _status: StatusCode, headers: &mut dyn HeaderEdit, ctx: &FilterCtx) {
        if let Some(Seen(n)) = ctx.ext.get::<Seen>() {
            headers.set(HeaderName::from_static(HEADER), HeaderValue::from(*n));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sluice_core::Services;
    use std::time::Instant;

    /// Polls `done` every millisecond until it holds, for at most 10 seconds.
    async fn until(mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "not within 10s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn ticks_of(registry: &prometheus::Registry, route: &str) -> Option<u64> {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == "sluice_test_ticker_ticks_total")?
            .get_metric()
            .iter()
            .find(|m| m.get_label().iter().any(|l| l.name() == "route" && l.value() == route))
            .map(|m| m.get_counter().get_value() as u64)
    }

    #[tokio::test]
    async fn it_ticks_in_the_background_counts_in_its_own_metric_and_stops_when_dropped() {
        let config = sluice_config::Config::default();
        let services = Services::default();
        services.insert(tokio::runtime::Handle::current());
        let registry = services.insert(prometheus::Registry::new());
        let mut ctx = BuildCtx::new(&config, &services);
        ctx.route = "r1";
        let spec = parse::<TickerSpec>(&serde_json::json!({"every": "1ms"})).unwrap();
        let a = Ticker::new(&spec, &ctx);
        // A second filter shares the metric (registered once) under its own route.
        ctx.route = "r2";
        let b = Ticker::new(&spec, &ctx);
        until(|| ticks_of(&registry, "r1").is_some_and(|n| n >= 3)).await;
        until(|| ticks_of(&registry, "r2").is_some_and(|n| n >= 3)).await;
        assert!(a.ticks.count.load(Ordering::Relaxed) >= 3);

        // The request phase leaves its note; the response phase reads it back.
        let mut fctx = FilterCtx::default();
        let (h, m) = (http::HeaderMap::new(), http::Method::GET);
        let view = RequestView {
            method: &m,
            scheme: "http",
            host: None,
            authority: None,
            path: "/",
            query: None,
            headers: &h,
            client_ip: None,
        };
        assert!(matches!(a.on_request(&view, &mut fctx).await, Flow::Continue));
        let mut out = http::HeaderMap::new();
        a.on_response(StatusCode::OK, &mut out, &fctx);
        assert!(out[HEADER].to_str().unwrap().parse::<u64>().unwrap() >= 3);

        let ticks = a.ticks.clone();
        drop(a);
        until(|| ticks.stopped.load(Ordering::Acquire)).await;
        let after = ticks.count.load(Ordering::Relaxed);
        assert!(!b.ticks.stopped.load(Ordering::Acquire));
        // Stopped: its count no longer moves while the other filter's does.
        let b_now = b.ticks.count.load(Ordering::Relaxed);
        until(|| b.ticks.count.load(Ordering::Relaxed) >= b_now + 3).await;
        assert_eq!(ticks.count.load(Ordering::Relaxed), after);
    }

    #[test]
    fn without_a_runtime_nothing_starts_and_a_bad_spec_names_its_field() {
        let f = crate::registry::build_for_test(build, &serde_json::json!({"every": "5ms"})).unwrap();
        assert_eq!(f.kind(), "ticker");
        let Err(errs) = crate::registry::build_for_test(build, &serde_json::json!({"every": "0s"})) else {
            panic!("0s refused")
        };
        assert_eq!(errs[0].path, "every");
        let Err(errs) = crate::registry::build_for_test(build, &serde_json::json!({"evry": "5ms"})) else {
            panic!("an unknown field refused")
        };
        assert!(errs[0].message.contains("unknown field"), "{errs:?}");
    }
}
