//! The admin API's rollout calls (mounted by [`crate::admin::router`]):
//!
//! - `GET /api/v1/rollouts`: every rollout of the serving config;
//! - `GET /api/v1/rollouts/{route}`: one;
//! - `POST /api/v1/rollouts/{route}/{pause|resume|promote|abort}`: a command, written
//!   into the stored state with compare-and-swap (so any replica takes it) for the
//!   leader to carry out on its next tick; `202` with the state it was accepted in.
//!
//! An unknown route, a route without a rollout or an unknown command is a `404`; a
//! command that does not apply in the current state (pausing a paused rollout) or a
//! rollout that has not started yet is a `409`. Errors are `{"error": "..."}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Json;
use serde_json::{json, Value};
use sluice_config::model::RouteConfig;
use sluice_config::rollout::RolloutConfig;

use super::core::{Command, Figures, RolloutState};
use super::runtime::{interval_figures, spec_hash};
use super::store::RolloutStore;
use crate::control::gateway::Gateway;
use crate::control::snapshot::Snapshot;

type Answer = (StatusCode, Json<Value>);

fn error(status: StatusCode, msg: String) -> Answer {
    (status, Json(json!({ "error": msg })))
}

fn rfc3339_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The route `id` and its rollout, or the 404 to answer.
fn find<'a>(snap: &'a Snapshot, id: &str) -> Result<(&'a RouteConfig, &'a RolloutConfig), Answer> {
    let Some(r) = snap.config.routes.iter().find(|r| r.id == id) else {
        return Err(error(StatusCode::NOT_FOUND, format!("no route {id:?}")));
    };
    match &r.rollout {
        Some(spec) => Ok((r, spec)),
        None => Err(error(
            StatusCode::NOT_FOUND,
            format!("route {id:?} has no rollout"),
        )),
    }
}

/// The stored state of `route` if it runs `spec` now.
async fn current(
    store: &dyn RolloutStore,
    g: &Gateway,
    route: &RouteConfig,
    spec: &RolloutConfig,
) -> Result<Option<(RolloutState, u64)>, String> {
    let Some(split) = g.state.splits.get(&route.id) else {
        return Ok(None);
    };
    let hash = spec_hash(spec, &split.backends());
    Ok(store
        .load(&route.id)
        .await
        .map_err(|e| e.to_string())?
        .and_then(|s| {
            serde_json::from_slice::<RolloutState>(&s.state)
                .ok()
                .map(|st| (st, s.revision))
        })
        .filter(|(st, _)| st.spec_hash == hash))
}

async fn view(store: &dyn RolloutStore, g: &Gateway, route: &RouteConfig, spec: &RolloutConfig) -> Value {
    let backends: Vec<String> = route.backend_list().into_iter().map(|b| b.upstream).collect();
    let stable: Vec<&String> = backends.iter().filter(|b| **b != spec.canary).collect();
    let mut v = json!({
        "route": route.id,
        "canary": spec.canary,
        "stable": stable,
        "steps": spec.steps,
        "interval": humantime::format_duration(spec.interval).to_string(),
        "failed_checks": spec.analysis.failed_checks,
        "replica": store.replica(),
        "is_leader": store.is_leader(),
    });
    let state = match current(store, g, route, spec).await {
        Ok(s) => s,
        Err(e) => {
            v["state"] = json!("unknown");
            v["error"] = json!(e);
            return v;
        }
    };
    let Some((s, revision)) = state else {
        v["state"] = json!("pending");
        v["step"] = json!(0);
        v["weight"] = json!(0);
        v["last_analysis"] = Value::Null;
        return v;
    };
    let canary = backends.iter().position(|b| *b == spec.canary).unwrap_or(0);
    let figures = match store.replica_stats(&route.id).await {
        Ok(now) => {
            let f = interval_figures(&s.baseline, &now, canary);
            json!({ "canary": Figures::of(&f.canary), "stable": Figures::of(&f.stable) })
        }
        Err(_) => Value::Null,
    };
    let history: Vec<Value> = s
        .history
        .iter()
        .map(|d| {
            json!({
                "at": rfc3339_ms(d.at_ms),
                "action": d.action,
                "weight": d.weight,
                "reason": d.reason,
            })
        })
        .collect();
    let extra = json!({
        "state": s.phase.as_str(),
        "waiting": s.waiting,
        "step": s.step + 1,
        "weight": s.weight.unwrap_or(100),
        "serving_config_weights": s.weight.is_none(),
        "failed": s.failed,
        "pending_command": s.command.map(Command::as_str),
        "started_at": rfc3339_ms(s.started_ms),
        "step_started_at": rfc3339_ms(s.step_started_ms),
        "interval_started_at": rfc3339_ms(s.interval_started_ms),
        "interval_figures": figures,
        "last_analysis": s.last_analysis,
        "history": history,
        "leader": s.leader,
        "revision": revision,
    });
    if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        v.extend(extra.clone());
    }
    v
}

fn store_of(g: &Gateway) -> Result<&Arc<dyn RolloutStore>, Answer> {
    g.rollouts.store().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "rollouts are not running in this process".into(),
        )
    })
}

/// `GET /api/v1/rollouts`.
pub async fn list(State(g): State<Arc<Gateway>>) -> Answer {
    let Some(store) = g.rollouts.store().cloned() else {
        return (StatusCode::OK, Json(json!({ "rollouts": [] })));
    };
    let snap = g.snapshot();
    let mut out = Vec::new();
    for r in &snap.config.routes {
        if let Some(spec) = &r.rollout {
            out.push(view(&*store, &g, r, spec).await);
        }
    }
    (StatusCode::OK, Json(json!({ "rollouts": out })))
}

/// `GET /api/v1/rollouts/{route}`.
pub async fn one(State(g): State<Arc<Gateway>>, Path(route): Path<String>) -> Answer {
    let store = match store_of(&g) {
        Ok(s) => s.clone(),
        Err(e) => return e,
    };
    let snap = g.snapshot();
    match find(&snap, &route) {
        Ok((r, spec)) => (StatusCode::OK, Json(view(&*store, &g, r, spec).await)),
        Err(e) => e,
    }
}

/// How often a command retries its compare-and-swap against the leader's writes.
const COMMAND_ATTEMPTS: usize = 8;

/// `POST /api/v1/rollouts/{route}/{command}`.
pub async fn command(
    State(g): State<Arc<Gateway>>,
    Path((route, command)): Path<(String, String)>,
) -> Answer {
    let store = match store_of(&g) {
        Ok(s) => s.clone(),
        Err(e) => return e,
    };
    let snap = g.snapshot();
    let (r, spec) = match find(&snap, &route) {
        Ok(x) => x,
        Err(e) => return e,
    };
    let Some(cmd) = Command::parse(&command) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown rollout command {command:?}; use pause, resume, promote or abort"),
        );
    };
    for _ in 0..COMMAND_ATTEMPTS {
        let (mut state, revision) = match current(&*store, &g, r, spec).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return error(
                    StatusCode::CONFLICT,
                    format!("the rollout of route {route:?} has not started yet; try again in a moment"),
                )
            }
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
        };
        if let Some(why) = cmd.refused_in(state.phase) {
            return error(StatusCode::CONFLICT, why);
        }
        state.command = Some(cmd);
        let bytes = match serde_json::to_vec(&state) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        match store.store(&route, revision, &bytes).await {
            Ok(true) => {
                return (
                    StatusCode::ACCEPTED,
                    Json(json!({
                        "route": route,
                        "command": cmd.as_str(),
                        "state": state.phase.as_str(),
                        "accepted": true,
                    })),
                )
            }
            Ok(false) => continue,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
    error(
        StatusCode::CONFLICT,
        "the rollout state kept changing; try again".into(),
    )
}
