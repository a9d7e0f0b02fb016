//! The rollout loop, on the background runtime (never on a request's thread).
//!
//! Every tick (a quarter of the shortest rollout interval, between 50 ms and 1 s), for
//! each route of the serving snapshot that has a `rollout`:
//!
//! 1. this replica publishes its cumulative per-backend figures
//!    ([`RolloutStore::publish_stats`]);
//! 2. the stored state is loaded. Its key is the route id; it also carries a hash of
//!    the rollout spec and the route's backends, so a reload that leaves both alone
//!    keeps the rollout where it is, and a changed spec starts it again from its first
//!    step;
//! 3. **on the leader** ([`RolloutStore::is_leader`]): a pending operator command is
//!    carried out; the interval's figures are the sum over replicas of each replica's
//!    counts minus its counts at the interval's start (kept in the state; a replica
//!    whose counts went down restarted and counts from 0); the state machine judges and
//!    moves ([`super::core`]); `pre_step` webhooks are called and their answer fed
//!    back; the state is stored with compare-and-swap, and only then are events
//!    emitted and notification webhooks called;
//! 4. **on every replica**: the stored weight is served through the route's
//!    `LiveSplit` override (the canary at its percent, the other backends sharing the
//!    rest by their configured weights) and shown in the metrics.
//!
//! A rollout that leaves the config has its override cleared and its state deleted.

use sluice_filters::outbound;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use sluice_config::rollout::{RolloutConfig, WebhookConfig, WebhookEvent};
use sluice_core::split::{LiveSplit, StatsSample};

use super::core::{split_weights, Effect, IntervalFigures, RolloutState};
use super::store::RolloutStore;
use crate::control::gateway::Gateway;
use crate::observe::events::{self, Event};

/// The longest tick.
const MAX_TICK: Duration = Duration::from_secs(1);
/// The shortest tick.
const MIN_TICK: Duration = Duration::from_millis(50);

type HttpClient = outbound::HttpClient<Full<Bytes>>;

/// What this replica remembers of a rollout it serves.
struct Seen {
    /// When the last analysis it counted in the metrics was made.
    last_analysis_ms: Option<u64>,
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The hash a rollout's state is tied to: its spec and the route's backends.
pub fn spec_hash(spec: &RolloutConfig, backends: &[Arc<str>]) -> String {
    let ids: Vec<&str> = backends.iter().map(|b| &**b).collect();
    sluice_config::validate::hash_of(&(spec, ids))
}

/// Starts the loop on the background runtime with `store` (also set on the gateway for
/// the admin API). `false` when the background runtime is not available.
pub fn start(gateway: Arc<Gateway>, store: Arc<dyn RolloutStore>) -> bool {
    gateway.rollouts.set_store(store.clone());
    let Some(handle) = crate::control::background::handle() else {
        return false;
    };
    handle.spawn(run(gateway, store));
    true
}

/// Runs the loop until the process ends.
pub async fn run(gateway: Arc<Gateway>, store: Arc<dyn RolloutStore>) {
    // Webhooks may be `https://` services, trusted by the public roots.
    let client: HttpClient = match outbound::client(outbound::public_roots(), outbound::Pool::default()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("rollouts off: cannot build the webhooks' HTTP client: {e}");
            return;
        }
    };
    let mut seen: HashMap<String, Seen> = HashMap::new();
    loop {
        if !gateway.is_ready() {
            tokio::time::sleep(MAX_TICK).await;
            continue;
        }
        let snap = gateway.snapshot();
        let mut tick = MAX_TICK;
        let mut live = HashMap::new();
        for (cfg, spec) in snap
            .config
            .routes
            .iter()
            .filter_map(|r| r.rollout.as_ref().map(|s| (r, s)))
        {
            let Some(route) = snap.routes.iter().find(|r| r.id == cfg.id) else {
                continue;
            };
            tick = tick.min(spec.interval / 4);
            live.insert(route.id.clone(), ());
            let first = !seen.contains_key(&route.id);
            let entry = seen.entry(route.id.clone()).or_insert(Seen {
                last_analysis_ms: None,
            });
            if let Err(e) = step_route(
                &gateway,
                &*store,
                &client,
                &route.id,
                spec,
                &route.split,
                entry,
                first,
            )
            .await
            {
                tracing::warn!(route = %route.id, "rollout: {e}");
            }
        }
        let gone: Vec<String> = seen.keys().filter(|k| !live.contains_key(*k)).cloned().collect();
        for id in gone {
            seen.remove(&id);
            if let Some(split) = gateway.state.splits.get(&id) {
                split.set_override(None);
            }
            gateway.rollouts.metrics.forget(&id);
            if store.is_leader() {
                if let Err(e) = store.delete(&id).await {
                    tracing::warn!(route = %id, "rollout: {e}");
                }
            }
            tracing::info!(route = %id, "rollout left the config; the configured weights are served");
        }
        drop(snap);
        tokio::time::sleep(tick.max(MIN_TICK)).await;
    }
}

/// Each replica's counts since `baseline`; a replica whose counts went down restarted
/// and counts from 0; one without a baseline counts from 0.
pub(crate) fn interval_figures(
    baseline: &[(String, Vec<StatsSample>)],
    now: &[(String, Vec<StatsSample>)],
    canary: usize,
) -> IntervalFigures {
    let mut f = IntervalFigures::default();
    for (replica, samples) in now {
        let base = baseline.iter().find(|(r, _)| r == replica).map(|(_, s)| s);
        for (i, s) in samples.iter().enumerate() {
            let d = match base.and_then(|b| b.get(i)) {
                Some(b) if s.requests >= b.requests => s.since(b),
                _ => s.clone(),
            };
            if i == canary {
                f.canary.add(&d);
            } else {
                f.stable.add(&d);
            }
        }
    }
    f
}

#[allow(clippy::too_many_arguments)]
async fn step_route(
    gateway: &Gateway,
    store: &dyn RolloutStore,
    client: &HttpClient,
    route: &str,
    spec: &RolloutConfig,
    split: &LiveSplit,
    seen: &mut Seen,
    first: bool,
) -> Result<(), String> {
    let backends = split.backends();
    let canary = split
        .index_of(&spec.canary)
        .ok_or_else(|| format!("canary {:?} is not a backend", spec.canary))?;
    let hash = spec_hash(spec, &backends);
    let own: Vec<StatsSample> = (0..backends.len())
        .map(|i| split.stats(i).map(|s| s.sample()).unwrap_or_default())
        .collect();
    store
        .publish_stats(route, &own)
        .await
        .map_err(|e| e.to_string())?;
    let stored = store.load(route).await.map_err(|e| e.to_string())?;
    let revision = stored.as_ref().map_or(0, |s| s.revision);
    let current = stored
        .and_then(|s| serde_json::from_slice::<RolloutState>(&s.state).ok())
        .filter(|s| s.spec_hash == hash);

    let state = if store.is_leader() {
        decide(store, client, route, spec, &hash, canary, current, revision).await?
    } else {
        current
    };
    let Some(state) = state else {
        return Ok(());
    };
    match state.weight {
        Some(w) => split.set_override(Some(split_weights(&split.base(), canary, w).as_slice())),
        None => split.set_override(None),
    };
    let metrics = &gateway.rollouts.metrics;
    metrics.show(route, &state);
    if let Some(a) = &state.last_analysis {
        if first {
            seen.last_analysis_ms = Some(a.at_ms);
        } else if seen.last_analysis_ms != Some(a.at_ms) {
            seen.last_analysis_ms = Some(a.at_ms);
            metrics
                .analyses
                .with_label_values(&[route, a.verdict.as_str()])
                .inc();
        }
    }
    Ok(())
}

/// The leader's part: start, command, judge, gate; store; then events and
/// notifications. `None` when another writer came first (decided again next tick).
#[allow(clippy::too_many_arguments)]
async fn decide(
    store: &dyn RolloutStore,
    client: &HttpClient,
    route: &str,
    spec: &RolloutConfig,
    hash: &str,
    canary: usize,
    current: Option<RolloutState>,
    revision: u64,
) -> Result<Option<RolloutState>, String> {
    let now = now_ms();
    let stats = store.replica_stats(route).await.map_err(|e| e.to_string())?;
    let fresh = current.is_none();
    let (mut state, mut effects) = match current {
        Some(s) => (s, Vec::new()),
        None => {
            let (mut s, e) = RolloutState::start(spec, hash, now);
            s.baseline = stats.clone();
            tracing::info!(route, "rollout started");
            (s, e)
        }
    };
    let before = state.clone();
    let interval_start = state.interval_started_ms;
    if let Some(cmd) = state.command.take() {
        effects.extend(state.apply(spec, now, cmd).1);
    }
    if state.interval_started_ms == interval_start {
        let figures = interval_figures(&state.baseline, &stats, canary);
        effects.extend(state.tick(spec, now, &figures).1);
    }
    // Gates: ask the pre_step webhooks, feed the answer back (which may end the gate
    // or hold the step).
    let mut done = Vec::new();
    let mut i = 0;
    while i < effects.len() {
        if let Effect::Gate { step, weight } = effects[i].clone() {
            let body = payload(route, "pre_step", step, weight, &state);
            let (allowed, detail) = call_all(client, &spec.webhooks, WebhookEvent::PreStep, &body).await;
            effects.extend(state.gate_result(spec, now_ms(), allowed, detail));
        } else {
            done.push(effects[i].clone());
        }
        i += 1;
    }
    if state.interval_started_ms != interval_start {
        state.baseline = stats;
    }
    state.leader = Some(store.replica().to_string());
    if state == before && !fresh {
        return Ok(Some(state));
    }
    let bytes = serde_json::to_vec(&state).map_err(|e| e.to_string())?;
    if !store
        .store(route, revision, &bytes)
        .await
        .map_err(|e| e.to_string())?
    {
        // Another writer (an operator's command) came first: decide again next tick.
        return Ok(None);
    }
    for e in done {
        match e {
            Effect::Event {
                action,
                weight,
                detail,
            } => {
                tracing::info!(route, action, weight, "rollout: {detail}");
                events::emit(Event::RolloutStep {
                    route: route.to_string(),
                    action,
                    weight: Some(weight),
                    detail,
                });
            }
            Effect::Notify { event } => {
                if spec.webhooks.iter().any(|w| w.on.contains(&event)) {
                    let weight = state.weight.unwrap_or(100);
                    let body = payload(route, event.as_str(), state.step, weight, &state);
                    let (ok, detail) = call_all(client, &spec.webhooks, event, &body).await;
                    if !ok {
                        tracing::warn!(route, event = event.as_str(), "rollout webhook: {detail}");
                    }
                }
            }
            Effect::Gate { .. } => {}
        }
    }
    Ok(Some(state))
}

/// The JSON a webhook gets.
fn payload(route: &str, action: &str, step: usize, weight: u32, state: &RolloutState) -> Bytes {
    Bytes::from(
        json!({
            "route": route,
            "action": action,
            "step": step + 1,
            "weight": weight,
            "analysis": state.last_analysis,
        })
        .to_string(),
    )
}

/// Calls every webhook subscribed to `event`, in order; all must answer 2xx for
/// `true`. The detail names the first that did not (or says all agreed).
async fn call_all(
    client: &HttpClient,
    hooks: &[WebhookConfig],
    event: WebhookEvent,
    body: &Bytes,
) -> (bool, String) {
    for (i, hook) in hooks.iter().enumerate().filter(|(_, h)| h.on.contains(&event)) {
        if let Err(why) = call(client, hook, body.clone()).await {
            // The URL is a secret (it often carries the hook's token): named by index.
            return (false, format!("webhooks[{i}]: {why}"));
        }
    }
    (true, "every webhook answered 2xx".into())
}

async fn call(client: &HttpClient, hook: &WebhookConfig, body: Bytes) -> Result<(), String> {
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri(hook.url.expose())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        Ok::<_, String>(status)
    };
    match tokio::time::timeout(hook.timeout, exchange).await {
        Ok(Ok(status)) if status.is_success() => Ok(()),
        Ok(Ok(status)) => Err(format!("answered {}", status.as_u16())),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {:?}", hook.timeout)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn s(requests: u64) -> StatsSample {
        StatsSample {
            requests,
            errors: 0,
            buckets: vec![requests],
        }
    }

    #[test]
    fn interval_figures_sum_replicas_and_survive_a_restart() {
        let baseline = vec![
            ("a".to_string(), vec![s(10), s(5)]),
            ("b".to_string(), vec![s(100), s(50)]),
        ];
        let now = vec![
            ("a".to_string(), vec![s(30), s(15)]),
            // b restarted: its counts went down, so they count from 0.
            ("b".to_string(), vec![s(7), s(3)]),
            // c is new: everything it published counts.
            ("c".to_string(), vec![s(1), s(2)]),
        ];
        let f = interval_figures(&baseline, &now, 1);
        assert_eq!(f.canary.requests, 10 + 3 + 2);
        assert_eq!(f.stable.requests, 20 + 7 + 1);
    }
}
