//! The admin listener (axum on its own thread and runtime, apart from the proxy's):
//! `/healthz`, `/readyz`, `/metrics`, the `/api/v1/*` views and the breaker override.
//!
//! With a token ([`AdminAuth`]), every state-changing call (any method but `GET` and
//! `HEAD`) and every `/api/v1/*` read (they all show configuration) needs
//! `Authorization: Bearer <token>`; `/metrics` needs it with `admin.token_for_reads`;
//! `/healthz`, `/readyz` and the dashboard page itself never do (probes; the page holds
//! no data). A listener on a non-loopback address refuses to start without a token
//! unless told `--admin-insecure` ([`AdminAuth::check_listen`]).
//!
//! No view shows a secret: the config is serialised as it is, and its secret fields
//! (`sluice_config::secret`) and the filters' (through the registry's redactor)
//! serialise as `<redacted>`.

pub mod dashboard;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sluice_core::resilience::{CircuitBreaker, Forced};

use axum::extract::{Path, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tower_http::compression::CompressionLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::control::gateway::Gateway;

/// How long an admin request may take before it is answered 503: 10 s.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The admin API's routes, behind tower-http layers: a span per request (`TraceLayer`,
/// logged at debug level), a [`REQUEST_TIMEOUT`], and gzip for clients that accept it
/// (`/metrics` is large and scraped often).
pub fn router(gateway: Arc<Gateway>, auth: AdminAuth) -> Router {
    let auth = Arc::new(auth);
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/config", get(config))
        .route("/api/v1/routes", get(routes))
        .route("/api/v1/upstreams", get(upstreams))
        .route("/api/v1/consumers", get(consumers))
        .route("/api/v1/certificates", get(certificates))
        .route("/api/v1/breakers", get(breakers))
        .route("/api/v1/breakers/{route}/{upstream}", post(force_breaker))
        .route("/api/v1/stats", get(crate::admin::dashboard::stats))
        .route("/api/v1/history", get(crate::admin::dashboard::history))
        .route("/dashboard", get(crate::admin::dashboard::page))
        .route("/api/v1/events", get(events))
        .route("/api/v1/rollouts", get(crate::rollout::admin::list))
        .route("/api/v1/rollouts/{route}", get(crate::rollout::admin::one))
        .route(
            "/api/v1/rollouts/{route}/{command}",
            post(crate::rollout::admin::command),
        )
        .route("/api/v1/cache", get(cache_stats))
        .route("/api/v1/cache/purge", post(cache_purge))
        .with_state(gateway)
        .layer(axum::middleware::from_fn_with_state(auth, authorize))
        .layer(CompressionLayer::new())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http())
}

/// The admin API's bearer token, and whether reads need it.
#[derive(Clone, Default)]
pub struct AdminAuth {
    token: Option<String>,
    for_reads: bool,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("for_reads", &self.for_reads)
            .finish()
    }
}

/// The environment variable holding the admin token; it wins over `admin.token` and
/// `admin.token_file`.
pub const TOKEN_ENV: &str = "SLUICE_ADMIN_TOKEN";

impl AdminAuth {
    /// The token from `env_token` (the value of [`TOKEN_ENV`], if set and not empty),
    /// else `admin.token`, else the trimmed contents of `admin.token_file`.
    pub fn resolve(
        admin: &sluice_config::model::AdminConfig,
        env_token: Option<String>,
    ) -> Result<AdminAuth, String> {
        let token = match env_token.filter(|t| !t.trim().is_empty()) {
            Some(t) => Some(t.trim().to_string()),
            None => match (&admin.token, &admin.token_file) {
                (Some(t), _) => Some(t.expose().trim().to_string()),
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| format!("admin.token_file: cannot read {path}: {e}"))?;
                    let t = text.trim();
                    if t.is_empty() {
                        return Err(format!("admin.token_file: {path} is empty"));
                    }
                    Some(t.to_string())
                }
                (None, None) => None,
            },
        };
        Ok(AdminAuth {
            token,
            for_reads: admin.token_for_reads,
        })
    }

    /// Whether a token is set.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Refuses an admin address that is not loopback when there is no token, unless
    /// `insecure` (`sluice run --admin-insecure`).
    pub fn check_listen(&self, addr: SocketAddr, insecure: bool) -> Result<(), String> {
        if addr.ip().is_loopback() || self.token.is_some() || insecure {
            return Ok(());
        }
        Err(format!(
            "admin.listen: {addr} is not a loopback address and the admin API has no token; \
             set admin.token, admin.token_file or {TOKEN_ENV}, or pass --admin-insecure"
        ))
    }

    /// Whether a request with this method and path must carry the token.
    fn required(&self, method: &Method, path: &str) -> bool {
        if self.token.is_none() {
            return false;
        }
        if method == Method::GET || method == Method::HEAD {
            match path {
                // Probes, and the dashboard page, which carries no data (it asks for the
                // token and sends it with its calls).
                "/healthz" | "/readyz" | "/dashboard" => false,
                // Scrapers often cannot send a token; the series carry ids, no config.
                "/metrics" => self.for_reads,
                // Every other read shows configuration.
                _ => true,
            }
        } else {
            true
        }
    }

    /// Whether `header` (the `Authorization` value) carries the token.
    fn accepts(&self, header: Option<&[u8]>) -> bool {
        let (Some(token), Some(h)) = (&self.token, header) else {
            return false;
        };
        let Some(given) = h.strip_prefix(b"Bearer ") else {
            return false;
        };
        constant_time_eq(given.trim_ascii(), token.as_bytes())
    }
}

/// Compares without an early exit, so the time taken does not tell how many leading
/// bytes matched (only whether the lengths differ, which a token's length may show).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
        diff |= usize::from(std::hint::black_box(x));
    }
    diff == 0
}

async fn authorize(State(auth): State<Arc<AdminAuth>>, req: Request, next: Next) -> Response {
    if auth.required(req.method(), req.uri().path())
        && !auth.accepts(req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes()))
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"sluice-admin\"")],
            Json(json!({ "error": "unauthorized", "message": "this call needs the admin token: Authorization: Bearer <token>" })),
        )
            .into_response();
    }
    next.run(req).await
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

/// The recent gateway events (`crate::observe::events`), oldest first, with `last_seq` (the
/// newest recorded) to pass as `since` next time.
async fn events(axum::extract::Query(q): axum::extract::Query<EventsQuery>) -> Json<Value> {
    let (list, last) = crate::observe::events::since(q.since, q.limit);
    let list: Vec<&crate::observe::events::Recorded> = list.iter().map(|e| &**e).collect();
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

/// Query of `/api/v1/config`.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct ConfigQuery {
    /// `config`: also return the serving config itself (credentials redacted).
    include: Option<String>,
}

async fn config(
    State(g): State<Arc<Gateway>>,
    axum::extract::Query(q): axum::extract::Query<ConfigQuery>,
) -> Json<Value> {
    let s = g.snapshot();
    let p = g.provenance();
    let body = q
        .include
        .as_deref()
        .filter(|i| *i == "config")
        .map(|_| serde_json::to_value(&*s.config).unwrap_or(Value::Null));
    Json(json!({
        "config": body,
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
                "auth": r.chain.auth_methods(),
                "limits": sluice_filters::registry::describe_limits(cfg),
            })
        })
        .collect();
    Json(json!({ "version": s.version, "routes": list }))
}

/// `/api/v1/consumers`: every consumer's name, groups and the methods it has
/// credentials for; never a credential.
async fn consumers(State(g): State<Arc<Gateway>>) -> Json<Value> {
    let s = g.snapshot();
    let list: Vec<Value> = s
        .config
        .consumers
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "groups": c.groups,
                "methods": c.credentials.keys().collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "version": s.version, "consumers": list }))
}

/// The certificates each TLS listener serves (names, SNI names, expiry, load errors).
async fn certificates(State(g): State<Arc<Gateway>>) -> Json<Value> {
    Json(json!({ "listeners": g.certs.served() }))
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

/// The response cache's size: entries and bytes.
async fn cache_stats() -> Json<Value> {
    Json(match crate::edge::cache_store::existing() {
        Some(c) => json!({ "entries": c.len(), "bytes": c.size() }),
        None => json!({ "entries": 0, "bytes": 0 }),
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    /// One key's entries (all its variants), by the key text the route builds.
    #[serde(default)]
    key: Option<String>,
    /// Every entry whose key text starts with this.
    #[serde(default)]
    prefix: Option<String>,
}

/// Purges the response cache by key or by key prefix (`{"key": "example.com/a?x=1"}`,
/// `{"prefix": "example.com/static/"}`); answers how many entries went.
async fn cache_purge(body: axum::body::Bytes) -> (StatusCode, Json<Value>) {
    let bad = |msg: String| (StatusCode::BAD_REQUEST, Json(json!({ "error": msg })));
    let req: PurgeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad(format!(
                "body: {e}; expected {{\"key\": \"...\"}} or {{\"prefix\": \"...\"}}"
            ))
        }
    };
    let purged = match (req.key, req.prefix, crate::edge::cache_store::existing()) {
        (Some(_), Some(_), _) | (None, None, _) => {
            return bad("give one of `key` and `prefix`".into());
        }
        (Some(p), None, _) | (None, Some(p), _) if p.is_empty() => {
            return bad("`key` or `prefix` is empty (an empty prefix would purge everything: use \"/\"-free host prefixes)".into());
        }
        (_, _, None) => 0,
        (Some(key), None, Some(c)) => c.purge_where(|t| t == key),
        (None, Some(prefix), Some(c)) => c.purge_where(|t| t.starts_with(prefix.as_str())),
    };
    tracing::info!(purged, "response cache purged");
    (StatusCode::OK, Json(json!({ "purged": purged })))
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn auth(token: Option<&str>, for_reads: bool) -> AdminAuth {
        AdminAuth {
            token: token.map(str::to_string),
            for_reads,
        }
    }

    #[test]
    fn writes_and_config_reads_need_the_token_metrics_only_when_asked() {
        let a = auth(Some("s3cret"), false);
        assert!(a.required(&Method::POST, "/api/v1/breakers/r/u"));
        for view in [
            "/api/v1/breakers",
            "/api/v1/config",
            "/api/v1/routes",
            "/api/v1/rollouts/r",
        ] {
            assert!(a.required(&Method::GET, view), "{view}");
        }
        for open in ["/healthz", "/readyz", "/dashboard", "/metrics"] {
            assert!(!a.required(&Method::GET, open), "{open}");
        }
        let r = auth(Some("s3cret"), true);
        assert!(r.required(&Method::GET, "/metrics"));
        assert!(!r.required(&Method::GET, "/healthz"));
        assert!(!auth(None, true).required(&Method::POST, "/api/v1/breakers/r/u"));
        assert!(!auth(None, true).required(&Method::GET, "/api/v1/config"));
    }

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let a = auth(Some("s3cret"), false);
        assert!(a.accepts(Some(b"Bearer s3cret")));
        for bad in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cretx",
            b"Basic s3cret",
            b"s3cret",
            b"",
        ] {
            assert!(!a.accepts(Some(bad)), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(!a.accepts(None));
    }

    #[test]
    fn a_public_address_needs_a_token_or_the_insecure_flag() {
        let public: SocketAddr = "0.0.0.0:9900".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:9900".parse().unwrap();
        assert!(auth(None, false).check_listen(local, false).is_ok());
        let err = auth(None, false).check_listen(public, false).unwrap_err();
        assert!(err.starts_with("admin.listen: 0.0.0.0:9900"), "{err}");
        assert!(auth(None, false).check_listen(public, true).is_ok());
        assert!(auth(Some("t"), false).check_listen(public, false).is_ok());
    }

    #[test]
    fn the_environment_wins_over_the_file_config() {
        let mut c = sluice_config::model::AdminConfig {
            token: Some("from-config".into()),
            ..Default::default()
        };
        let a = AdminAuth::resolve(&c, Some("from-env".into())).unwrap();
        assert!(a.accepts(Some(b"Bearer from-env")));
        let a = AdminAuth::resolve(&c, Some(" ".into())).unwrap();
        assert!(a.accepts(Some(b"Bearer from-config")));
        c.token = None;
        c.token_file = Some("/nonexistent/sluice-token".into());
        let err = AdminAuth::resolve(&c, None).unwrap_err();
        assert!(err.starts_with("admin.token_file: "), "{err}");
    }
}
