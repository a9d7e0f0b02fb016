//! The admin listener (axum on its own thread and runtime, apart from the proxy's):
//! `/healthz`, `/readyz`, `/metrics` and the read-only `/api/v1/*` views.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sluice_filters::resilience::{CircuitBreaker, Forced};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Json};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tower_http::compression::CompressionLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::gateway::Gateway;

/// How long an admin request may take before it is answered 503: 10 s.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The admin API's routes, behind tower-http layers: a span per request (`TraceLayer`,
/// logged at debug level), a [`REQUEST_TIMEOUT`], and gzip for clients that accept it
/// (`/metrics` is large and scraped often).
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/config", get(config))
        .route("/api/v1/routes", get(routes))
        .route("/api/v1/upstreams", get(upstreams))
        .route("/api/v1/breakers", get(breakers))
        .route("/api/v1/breakers/{route}/{upstream}", post(force_breaker))
        .route("/api/v1/events", get(events))
        .with_state(gateway)
        .layer(CompressionLayer::new())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http())
}

/// `?since=<seq>&limit=<n>` for `/api/v1/events`.
#[derive(serde::Deserialize)]
struct EventsQuery {
    /// Only events with a larger seq. Default: 0 (all kept).
    #[serde(default)]
    since: u64,
    /// At most this many (oldest first). Default: 1000.
    #[serde(default = "default_events_limit")]
    limit: usize,
}

fn default_events_limit() -> usize {
    1000
}

/// The recent gateway events (`crate::events`), oldest first, with `last_seq` (the
/// newest recorded) to pass as `since` next time.
async fn events(axum::extract::Query(q): axum::extract::Query<EventsQuery>) -> Json<Value> {
    let (list, last) = crate::events::since(q.since, q.limit);
    let list: Vec<&crate::events::Recorded> = list.iter().map(|e| &**e).collect();
    Json(json!({ "events": list, "last_seq": last }))
}

async fn readyz(State(g): State<Arc<Gateway>>) -> impl IntoResponse {
    if g.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no config loaded yet\n",
        )
    }
}

async fn metrics(State(g): State<Arc<Gateway>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        g.metrics.render(),
    )
}

async fn config(State(g): State<Arc<Gateway>>) -> Json<Value> {
    let s = g.snapshot();
    let p = g.provenance();
    Json(json!({
        "version": s.version,
        "hash": s.hash,
        "source": p.source,
        "revision": p.revision,
        "loaded_at": rfc3339(s.loaded_at),
        "sources": g.source_status(),
        "last_rejected": g.last_rejection().map(|r| json!({
            "at": rfc3339(r.at),
            "source": r.source,
            "errors": r.errors,
        })),
    }))
}

async fn routes(State(g): State<Arc<Gateway>>) -> Json<Value> {
    let s = g.snapshot();
    let list: Vec<Value> = s
        .config
        .routes
        .iter()
        .zip(&s.routes)
        .map(|(cfg, r)| {
            json!({
                "id": r.id,
                "priority": cfg.priority,
                "match": cfg.matches,
                "upstream": cfg.upstream,
                "backends": r.backends.iter().map(|b| json!({
                    "upstream": b.upstream.id,
                    "weight": b.weight,
                    "served": b.served.get(),
                    "timeouts": b.timeouts,
                    "breaker": b.breaker.as_ref().map(|br| br.breaker.breaker.state().as_str()),
                    "fallback": b.breaker.as_ref().and_then(|br| br.fallback.as_ref().map(|f| f.id.clone())),
                    "served_by_fallback": b.served_by_fallback.as_ref().map(prometheus::IntCounter::get),
                })).collect::<Vec<_>>(),
                "filters": r.chain.kinds(),
            })
        })
        .collect();
    Json(json!({ "version": s.version, "routes": list }))
}

async fn upstreams(State(g): State<Arc<Gateway>>) -> Json<Value> {
    let s = g.snapshot();
    let mut list: Vec<Value> = s
        .config
        .upstreams
        .iter()
        .filter_map(|cfg| s.upstreams.get(&cfg.id))
        .map(|u| {
            let now = Instant::now();
            let set = u.endpoints.load();
            let outlier = set.outlier.snapshot(now);
            let checked = u.config.health_check.is_some();
            json!({
                "id": u.id,
                "load_balancing": u.config.load_balancing,
                "protocol": u.config.protocol,
                "ejected": outlier.ejected,
                "max_ejected": outlier.max_ejected,
                "retry_budget": u.budget.stats(),
                "overprovisioning_factor": u.config.overprovisioning_factor,
                "priority_load": set.priority_loads(now).iter().map(|(level, load)| json!({
                    "priority": level,
                    "percent": load,
                })).collect::<Vec<_>>(),
                "dns": g.state.discovery.status(&u.id, now),
                "endpoints": set.endpoints.iter().enumerate().map(|(i, e)| json!({
                    "address": e.address,
                    "resolved": e.addr.to_string(),
                    "priority": e.priority,
                    "weight": e.weight,
                    "slow_start_weight_percent": set.slow_start_factor(i, now) * 100.0,
                    "healthy": e.state.healthy.load(Ordering::Relaxed),
                    "active_health": if !checked {
                        "unchecked"
                    } else if e.state.healthy.load(Ordering::Relaxed) {
                        "healthy"
                    } else {
                        "unhealthy"
                    },
                    "outlier": outlier.endpoints.get(i),
                    "inflight": e.state.inflight.load(Ordering::Relaxed),
                    "requests": e.state.requests.load(Ordering::Relaxed),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    list.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Json(json!({ "version": s.version, "upstreams": list }))
}

fn breaker_json(route: &str, upstream: &str, b: &CircuitBreaker) -> Value {
    json!({
        "route": route,
        "upstream": upstream,
        "breaker": b.snapshot(Instant::now()),
    })
}

async fn breakers(State(g): State<Arc<Gateway>>) -> Json<Value> {
    let list: Vec<Value> = g
        .state
        .breakers()
        .iter()
        .map(|b| breaker_json(&b.route, &b.upstream, &b.breaker))
        .collect();
    Json(json!({ "breakers": list }))
}

/// Body of `POST /api/v1/breakers/{route}/{upstream}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ForceRequest {
    /// `forced_open`, `disabled`, or `auto` (clear the force).
    state: String,
}

async fn force_breaker(
    State(g): State<Arc<Gateway>>,
    Path((route, upstream)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    let bad = |status: StatusCode, msg: String| (status, Json(json!({ "error": msg })));
    let Some(b) = g.state.find_breaker(&route, &upstream) else {
        return bad(
            StatusCode::NOT_FOUND,
            format!("no circuit breaker for route {route:?} and upstream {upstream:?}"),
        );
    };
    let req: ForceRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad(
                StatusCode::BAD_REQUEST,
                format!("body: {e}; expected {{\"state\": \"forced_open\" | \"disabled\" | \"auto\"}}"),
            )
        }
    };
    let forced = match req.state.as_str() {
        "forced_open" => Some(Forced::Open),
        "disabled" => Some(Forced::Disabled),
        "auto" => None,
        other => {
            return bad(
                StatusCode::BAD_REQUEST,
                format!("state: unknown value {other:?}; expected forced_open, disabled or auto"),
            )
        }
    };
    b.observe(b.breaker.force(forced, Instant::now()));
    (
        StatusCode::OK,
        Json(breaker_json(&b.route, &b.upstream, &b.breaker)),
    )
}

/// Binds the admin listener with `SO_REUSEPORT`, so that during a graceful upgrade the
/// new process can bind it while the old one drains.
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
