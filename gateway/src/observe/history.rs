//! The dashboard's history: the last 15 minutes of each route's and each backend's
//! request rate, error rate (the share of 5xx) and p50 / p99 latency, with the events
//! worth marking on the same time axis (breaker transitions, config versions, rollout
//! steps, rate limiters falling back), kept in the process so that no Prometheus is
//! needed.
//!
//! **Off the request path.** Requests already count themselves into the route's and the
//! backend's Prometheus counters and latency histograms (atomic adds, no lock). A sampler
//! on the admin runtime reads those figures every `admin.history_interval` and stores the
//! difference with its previous reading as one point; the request path does nothing more.
//! The rings sit behind one mutex that only the sampler and the admin API take.
//!
//! **Bounded.** A series holds `15 min / interval` points of 16 bytes (900 at the
//! smallest interval, 1 s: 14 KiB); at most [`MAX_SERIES`] routes and as many backends
//! are kept (the busiest first, counted by the requests in the window), and at most
//! [`MAX_MARKERS`] markers. A route or backend that is gone is dropped once its points
//! have aged out of the window.
//!
//! A backend is an upstream as the routes use it: the figures of every route backend
//! that forwards to it, summed (a route with one backend counts its own figures; a route
//! that splits counts each backend's per-version figures).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::observe::metrics::RouteFigures;

/// How far back the history goes.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

/// The most routes, and the most backends, whose series are kept.
pub const MAX_SERIES: usize = 256;

/// The most markers kept.
pub const MAX_MARKERS: usize = 512;

/// One point of a series: figures over one interval. `NaN` where there were no requests
/// (latencies and error rate) or no reading (everything).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Requests per second.
    pub rate: f32,
    /// The share of 5xx responses, 0 to 1.
    pub error_rate: f32,
    /// Median latency, milliseconds.
    pub p50_ms: f32,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f32,
}

impl Point {
    const MISSING: Point = Point {
        rate: f32::NAN,
        error_rate: f32::NAN,
        p50_ms: f32::NAN,
        p99_ms: f32::NAN,
    };

    /// The point for the figures `now` read after `before`, `secs` seconds apart.
    pub fn between(before: &RouteFigures, now: &RouteFigures, secs: f64) -> Point {
        // A counter that went down was reset (a series re-created): count from zero.
        let reset = now.count < before.count;
        let zero = RouteFigures {
            by_class: [0; 6],
            buckets: Vec::new(),
            count: 0,
            sum: 0.0,
        };
        let before = if reset { &zero } else { before };
        let requests: u64 = now
            .by_class
            .iter()
            .sum::<u64>()
            .saturating_sub(before.by_class.iter().sum::<u64>());
        let errors = now.by_class[4].saturating_sub(before.by_class[4]);
        let buckets: Vec<(f64, u64)> = now
            .buckets
            .iter()
            .enumerate()
            .map(|(i, (le, c))| {
                let was = before.buckets.get(i).map_or(0, |b| b.1);
                (*le, c.saturating_sub(was))
            })
            .collect();
        let observed = now.count.saturating_sub(before.count);
        let (p50, p99) = if observed == 0 {
            (f64::NAN, f64::NAN)
        } else {
            (
                quantile(&buckets, observed, 0.5),
                quantile(&buckets, observed, 0.99),
            )
        };
        Point {
            rate: (requests as f64 / secs.max(1e-3)) as f32,
            error_rate: if requests == 0 {
                f32::NAN
            } else {
                (errors as f64 / requests as f64) as f32
            },
            p50_ms: (p50 * 1000.0) as f32,
            p99_ms: (p99 * 1000.0) as f32,
        }
    }
}

/// The `q` quantile, in seconds, of `count` observations in cumulative `buckets`
/// (upper bound, count at or below it), interpolated linearly within the bucket it
/// falls in, as Prometheus' `histogram_quantile` does; the highest finite bound when it
/// falls in the `+Inf` bucket.
pub fn quantile(buckets: &[(f64, u64)], count: u64, q: f64) -> f64 {
    let rank = q * count as f64;
    let mut lower = 0.0;
    let mut below = 0u64;
    for (le, cumulative) in buckets {
        if (*cumulative as f64) >= rank {
            if le.is_infinite() {
                return lower;
            }
            let inside = cumulative.saturating_sub(below);
            if inside == 0 {
                return *le;
            }
            return lower + (le - lower) * ((rank - below as f64) / inside as f64);
        }
        lower = *le;
        below = *cumulative;
    }
    lower
}

/// An event marked on the time axis.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Marker {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The event kind: `breaker_transition`, `config_applied`, `rollout_step`,
    /// `limiter_fallback`.
    pub kind: &'static str,
    /// The routes it is about; empty for config versions (which concern every route).
    pub routes: Vec<String>,
    /// The upstreams (backends) it is about, for breaker transitions.
    pub upstreams: Vec<String>,
    /// A breaker's new state (`open`, `half_open`, `closed`), a rollout's action, or
    /// `on` / `off` for a limiter's fallback.
    pub to: Option<String>,
    /// A short text for the plot's tooltip.
    pub label: String,
}

impl Marker {
    /// The marker for an event, when its kind is one the plots show.
    pub fn of(e: &crate::observe::events::Recorded) -> Option<Marker> {
        use crate::observe::events::Event;
        let at_ms = millis(e.time);
        let (kind, routes, upstreams, to, label) = match &e.event {
            Event::BreakerTransition {
                route,
                upstream,
                from,
                to,
                ..
            } => (
                "breaker_transition",
                vec![route.clone()],
                vec![upstream.clone()],
                Some(to.as_str().to_string()),
                format!("breaker {route}/{upstream}: {} → {}", from.as_str(), to.as_str()),
            ),
            Event::ConfigApplied { version, source, .. } => (
                "config_applied",
                Vec::new(),
                Vec::new(),
                None,
                format!("config v{version} ({source})"),
            ),
            Event::RolloutStep {
                route,
                action,
                weight,
                ..
            } => (
                "rollout_step",
                vec![route.clone()],
                vec![],
                Some(action.clone()),
                match weight {
                    Some(w) => format!("rollout {route}: {action}, canary at {w}%"),
                    None => format!("rollout {route}: {action}"),
                },
            ),
            Event::Kind(k) => (
                k.kind,
                k.routes.clone(),
                vec![],
                k.state.map(str::to_string),
                k.summary.clone(),
            ),
            _ => return None,
        };
        Some(Marker {
            at_ms,
            kind,
            routes,
            upstreams,
            to,
            label,
        })
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One series' points, aligned with [`Rings::times`].
#[derive(Debug, Default)]
struct Series {
    points: VecDeque<Point>,
}

impl Series {
    fn requests(&self, secs: f64) -> f64 {
        self.points
            .iter()
            .filter(|p| p.rate.is_finite())
            .map(|p| f64::from(p.rate) * secs)
            .sum()
    }

    fn is_empty(&self) -> bool {
        self.points.iter().all(|p| p.rate.is_nan())
    }
}

/// What the sampler read last, to take differences from.
#[derive(Default)]
struct Previous {
    at: Option<std::time::Instant>,
    routes: HashMap<String, RouteFigures>,
    backends: HashMap<String, RouteFigures>,
}

#[derive(Default)]
struct Rings {
    interval: Duration,
    /// The time of each point, milliseconds since the Unix epoch.
    times: VecDeque<u64>,
    routes: BTreeMap<String, Series>,
    backends: BTreeMap<String, Series>,
    markers: VecDeque<Marker>,
    /// The last event seq looked at.
    seen: u64,
    previous: Previous,
    /// Routes or backends not kept because [`MAX_SERIES`] was reached.
    left_out: usize,
}

/// The history store: see the module docs.
pub struct History {
    rings: Mutex<Rings>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History {
            rings: Mutex::new(Rings::default()),
        }
    }

    /// Adds one point to every series from the figures read now. `routes` and
    /// `backends` are each one's cumulative figures (as [`RouteFigures`]); `interval` is
    /// the sampling interval in force (a change empties the history).
    pub fn record(
        &self,
        now: std::time::Instant,
        wall: SystemTime,
        interval: Duration,
        routes: Vec<(String, RouteFigures)>,
        backends: Vec<(String, RouteFigures)>,
    ) {
        let mut r = self.rings.lock();
        if r.interval != interval {
            *r = Rings {
                interval,
                seen: r.seen,
                ..Rings::default()
            };
        }
        let points = points_for(interval);
        let secs = r
            .previous
            .at
            .map_or(interval.as_secs_f64(), |at| (now - at).as_secs_f64());
        let first = r.previous.at.is_none();
        r.previous.at = Some(now);
        if first {
            // Nothing to take a difference from yet.
            r.previous.routes = routes.into_iter().collect();
            r.previous.backends = backends.into_iter().collect();
            return;
        }
        r.times.push_back(millis(wall));
        let len = r.times.len();
        let Rings {
            routes: route_rings,
            backends: backend_rings,
            previous,
            left_out,
            ..
        } = &mut *r;
        *left_out = 0;
        *left_out += push_all(route_rings, &mut previous.routes, routes, secs, len);
        *left_out += push_all(backend_rings, &mut previous.backends, backends, secs, len);
        let r = &mut *r;
        while r.times.len() > points {
            r.times.pop_front();
            for s in r.routes.values_mut().chain(r.backends.values_mut()) {
                s.points.pop_front();
            }
        }
        r.routes.retain(|_, s| !s.is_empty());
        r.backends.retain(|_, s| !s.is_empty());
        // The oldest point covers the interval before its time.
        let oldest = r
            .times
            .front()
            .copied()
            .unwrap_or(0)
            .saturating_sub(u64::try_from(interval.as_millis()).unwrap_or(0));
        while r.markers.front().is_some_and(|m| m.at_ms < oldest) {
            r.markers.pop_front();
        }
    }

    /// Takes the markers of the events recorded since the last call.
    pub fn take_events(&self) {
        let seen = self.rings.lock().seen;
        let (events, newest) = crate::observe::events::since(seen, usize::MAX);
        let mut r = self.rings.lock();
        r.seen = r.seen.max(newest);
        for e in &events {
            if let Some(m) = Marker::of(e) {
                r.markers.push_back(m);
            }
        }
        while r.markers.len() > MAX_MARKERS {
            r.markers.pop_front();
        }
    }

    /// The history as the admin API serves it (`GET /api/v1/history`): at most `top`
    /// routes and `top` backends, the busiest first.
    pub fn view(&self, top: usize) -> Value {
        let r = self.rings.lock();
        let secs = r.interval.as_secs_f64();
        let series = |m: &BTreeMap<String, Series>| -> Vec<Value> {
            let mut list: Vec<(&String, &Series)> = m.iter().collect();
            // The busiest first.
            list.sort_by(|a, b| {
                b.1.requests(secs)
                    .total_cmp(&a.1.requests(secs))
                    .then(a.0.cmp(b.0))
            });
            list.into_iter()
                .take(top)
                .map(|(id, s)| {
                    let col = |f: fn(&Point) -> f32| -> Vec<Value> {
                        s.points
                            .iter()
                            .map(|p| {
                                let v = f(p);
                                if v.is_finite() {
                                    json!((f64::from(v) * 1000.0).round() / 1000.0)
                                } else {
                                    Value::Null
                                }
                            })
                            .collect()
                    };
                    json!({
                        "id": id,
                        "requests": s.requests(secs).round(),
                        "rate": col(|p| p.rate),
                        "error_rate": col(|p| p.error_rate),
                        "p50_ms": col(|p| p.p50_ms),
                        "p99_ms": col(|p| p.p99_ms),
                    })
                })
                .collect()
        };
        json!({
            "interval_ms": u64::try_from(r.interval.as_millis()).unwrap_or(u64::MAX),
            "window_ms": u64::try_from(WINDOW.as_millis()).unwrap_or(u64::MAX),
            "now_ms": millis(SystemTime::now()),
            "times": r.times,
            "routes": series(&r.routes),
            "backends": series(&r.backends),
            "markers": r.markers,
            "left_out": r.left_out,
        })
    }
}

/// Points in the window at `interval`.
fn points_for(interval: Duration) -> usize {
    let i = interval.as_millis().max(1);
    usize::try_from(WINDOW.as_millis() / i)
        .unwrap_or(usize::MAX)
        .max(2)
}

/// Appends one point per series (a new series is padded to `len` points); returns how
/// many were left out by [`MAX_SERIES`].
fn push_all(
    rings: &mut BTreeMap<String, Series>,
    previous: &mut HashMap<String, RouteFigures>,
    now: Vec<(String, RouteFigures)>,
    secs: f64,
    len: usize,
) -> usize {
    let mut left_out = 0;
    let mut next = HashMap::with_capacity(now.len());
    for (id, figures) in now {
        let point = previous
            .get(&id)
            .map_or(Point::MISSING, |before| Point::between(before, &figures, secs));
        if !rings.contains_key(&id) && rings.len() >= MAX_SERIES {
            left_out += 1;
        } else {
            let s = rings.entry(id.clone()).or_default();
            while s.points.len() + 1 < len {
                s.points.push_front(Point::MISSING);
            }
            s.points.push_back(point);
        }
        next.insert(id, figures);
    }
    // Series with no reading this time (a route removed) get a gap.
    for s in rings.values_mut() {
        while s.points.len() < len {
            s.points.push_back(Point::MISSING);
        }
    }
    *previous = next;
    left_out
}

/// Figures by series id (a route's or an upstream's).
pub type FiguresById = Vec<(String, RouteFigures)>;

/// The figures of every route and every backend of `snapshot` now: `(routes, backends)`.
pub fn read(snapshot: &crate::control::snapshot::Snapshot) -> (FiguresById, FiguresById) {
    let mut routes = Vec::with_capacity(snapshot.routes.len());
    let mut backends: BTreeMap<String, RouteFigures> = BTreeMap::new();
    for r in &snapshot.routes {
        let figures = r.metrics.figures();
        if r.backends.len() == 1 {
            add(
                backends
                    .entry(r.backends[0].upstream.id.clone())
                    .or_insert_with(empty),
                &figures,
            );
        } else {
            for b in &r.backends {
                add(
                    backends.entry(b.upstream.id.clone()).or_insert_with(empty),
                    &b.version.figures(),
                );
            }
        }
        routes.push((r.id.clone(), figures));
    }
    (routes, backends.into_iter().collect())
}

fn empty() -> RouteFigures {
    RouteFigures {
        by_class: [0; 6],
        buckets: Vec::new(),
        count: 0,
        sum: 0.0,
    }
}

fn add(into: &mut RouteFigures, f: &RouteFigures) {
    for (a, b) in into.by_class.iter_mut().zip(f.by_class) {
        *a += b;
    }
    if into.buckets.is_empty() {
        into.buckets.clone_from(&f.buckets);
    } else {
        for (a, b) in into.buckets.iter_mut().zip(&f.buckets) {
            a.1 += b.1;
        }
    }
    into.count += f.count;
    into.sum += f.sum;
}

/// Samples the gateway's figures every `admin.history_interval`, for ever (on the admin
/// runtime).
pub async fn run(gateway: Arc<crate::control::gateway::Gateway>) {
    loop {
        let snapshot = gateway.snapshot();
        let interval = snapshot.config.admin.history_interval;
        let (routes, backends) = read(&snapshot);
        drop(snapshot);
        gateway.history.take_events();
        gateway.history.record(
            std::time::Instant::now(),
            SystemTime::now(),
            interval,
            routes,
            backends,
        );
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn figures(ok: u64, errors: u64, latencies_ms: &[(f64, u64)]) -> RouteFigures {
        let bounds = [0.005, 0.01, 0.05, 0.1, 0.5, 1.0, f64::INFINITY];
        let mut cumulative = 0;
        let buckets = bounds
            .iter()
            .map(|le| {
                cumulative += latencies_ms
                    .iter()
                    .filter(|(ms, _)| ms / 1000.0 <= *le && bucket_of(ms / 1000.0, &bounds) == *le)
                    .map(|(_, n)| n)
                    .sum::<u64>();
                (*le, cumulative)
            })
            .collect();
        let count = latencies_ms.iter().map(|(_, n)| n).sum();
        RouteFigures {
            by_class: [0, ok, 0, 0, errors, 0],
            buckets,
            count,
            sum: 0.0,
        }
    }

    fn bucket_of(s: f64, bounds: &[f64]) -> f64 {
        *bounds.iter().find(|le| s <= **le).unwrap_or(&f64::INFINITY)
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket_like_prometheus() {
        // 100 observations: 50 in (0, 10ms], 50 in (10ms, 50ms].
        let b = [(0.01, 50), (0.05, 100), (f64::INFINITY, 100)];
        assert!((quantile(&b, 100, 0.5) - 0.01).abs() < 1e-9);
        assert!((quantile(&b, 100, 0.99) - (0.01 + 0.04 * 0.98)).abs() < 1e-9);
        // Everything above the highest bound: that bound.
        let slow = [(0.01, 0), (f64::INFINITY, 10)];
        assert!((quantile(&slow, 10, 0.99) - 0.01).abs() < 1e-9);
    }

    #[test]
    fn a_point_is_the_difference_between_two_readings() {
        let before = figures(100, 0, &[(3.0, 100)]);
        let after = figures(280, 20, &[(3.0, 100), (30.0, 200)]);
        let p = Point::between(&before, &after, 10.0);
        assert!((p.rate - 20.0).abs() < 1e-3, "{p:?}");
        assert!((p.error_rate - 0.1).abs() < 1e-6, "{p:?}");
        assert!(p.p50_ms > 10.0 && p.p50_ms <= 50.0, "{p:?}");
        // No request: no latency, no error rate.
        let idle = Point::between(&after, &after, 10.0);
        assert_eq!(idle.rate, 0.0);
        assert!(idle.p99_ms.is_nan() && idle.error_rate.is_nan());
    }

    #[test]
    fn the_rings_are_bounded_by_the_window_and_aligned() {
        let h = History::new();
        let t0 = std::time::Instant::now();
        let w0 = SystemTime::now();
        let interval = Duration::from_secs(60);
        let points = points_for(interval);
        for i in 0..(points as u64 + 10) {
            let mut routes = vec![("a".to_string(), figures(i * 60, 0, &[(3.0, i * 60)]))];
            if i > 5 {
                routes.push(("b".to_string(), figures(i, 0, &[(3.0, i)])));
            }
            h.record(
                t0 + interval * u32::try_from(i).unwrap(),
                w0 + interval * u32::try_from(i).unwrap(),
                interval,
                routes,
                Vec::new(),
            );
        }
        let v = h.view(usize::MAX);
        let times = v["times"].as_array().unwrap();
        assert_eq!(times.len(), points);
        for r in v["routes"].as_array().unwrap() {
            assert_eq!(r["rate"].as_array().unwrap().len(), points, "{r}");
        }
        // The busiest first; a steady 60 requests a minute is 1/s.
        assert_eq!(v["routes"][0]["id"], "a");
        assert_eq!(v["routes"][0]["rate"][points - 1], 1.0);
    }

    #[test]
    fn markers_are_made_for_breaker_config_and_rollout_events_only() {
        use crate::observe::events::{Event, Recorded};
        use sluice_core::resilience::BreakerState;
        let rec = |event| Recorded {
            seq: 1,
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            event,
        };
        let open = Marker::of(&rec(Event::BreakerTransition {
            route: "api".into(),
            upstream: "svc".into(),
            from: BreakerState::Closed,
            to: BreakerState::Open,
            reason: String::new(),
            window: None,
        }))
        .unwrap();
        assert_eq!(
            (open.kind, open.to.as_deref(), open.at_ms),
            ("breaker_transition", Some("open"), 1000)
        );
        assert!(Marker::of(&rec(Event::EndpointRecovered {
            upstream: "u".into(),
            endpoint: "e".into()
        }))
        .is_none());
    }
}
