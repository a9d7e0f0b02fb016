//! The dashboard: one small page served by the admin listener at `/dashboard` (HTML, CSS
//! and script in one file, no CDN, so it works without internet), and the figures it
//! polls at `/api/v1/stats`. The page polls the admin API once a second and computes the
//! live request rate, error rate and p99 per route from the differences between two
//! polls of the gateway's own counters and latency histograms: no Prometheus needed.
//!
//! When the admin API answers 401 (an admin token is configured), the page asks for the
//! token, keeps it in the tab's session storage and sends it as a bearer token.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Json};
use serde_json::{json, Value};

use crate::control::gateway::Gateway;

/// The page, embedded in the binary.
const PAGE: &str = include_str!("dashboard.html");

/// `GET /dashboard`.
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}

/// `?top=N` of `/api/v1/history`.
#[derive(Debug, serde::Deserialize)]
pub struct HistoryQuery {
    /// The busiest N routes and N backends. Default: all that are kept.
    pub top: Option<usize>,
}

/// `GET /api/v1/history`: the last 15 minutes per route and per backend, and the
/// markers on that time axis (see [`crate::observe::history`]).
pub async fn history(
    State(g): State<Arc<Gateway>>,
    axum::extract::Query(q): axum::extract::Query<HistoryQuery>,
) -> Json<Value> {
    Json(g.history.view(q.top.unwrap_or(usize::MAX)))
}

/// `GET /api/v1/stats`: per route, requests by status class and the latency histogram
/// so far, with the time they were read (milliseconds since the Unix epoch).
pub async fn stats(State(g): State<Arc<Gateway>>) -> Json<Value> {
    let s = g.snapshot();
    let at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let routes: Vec<Value> = s
        .routes
        .iter()
        .map(|r| json!({ "id": r.id, "figures": r.metrics.figures() }))
        .collect();
    Json(json!({
        "at_ms": at,
        "version": s.version,
        "classes": ["1xx", "2xx", "3xx", "4xx", "5xx", "none"],
        "routes": routes,
        "unrouted": g.metrics.unrouted().figures(),
    }))
}
