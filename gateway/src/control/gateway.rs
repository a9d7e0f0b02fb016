//! The gateway's shared core: the published snapshot, long-lived state, metrics and the
//! record of config updates. The proxy, the admin API and the config sources all hold an
//! `Arc<Gateway>`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;
use sluice_config::{Config, ConfigErrors};

use crate::control::snapshot::{Provenance, Snapshot};
use crate::control::state::SharedState;
use crate::observe::access_log::AccessLog;
use crate::observe::events::{self, Event};
use crate::observe::metrics::Metrics;
use crate::observe::sinks::{LogMetrics, Sinks};

/// A rejected config update, kept for `/api/v1/config`.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    /// When it was rejected.
    pub at: SystemTime,
    /// Where it came from.
    pub source: String,
    /// Every error, as `path: message`.
    pub errors: Vec<String>,
}

/// What happened to an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyOutcome {
    /// A new snapshot is serving.
    Applied,
    /// Same content as the serving snapshot; nothing changed.
    Unchanged,
}

/// Logs the settings of `next` that a reload does not apply: listeners and the admin
/// listener are bound at start.
fn warn_restart_only(current: &Config, next: &Config) {
    if current.listeners != next.listeners {
        tracing::warn!(
            "listeners changed; they are bound at start, so the change takes effect after a restart or graceful upgrade"
        );
    }
    if current.admin != next.admin {
        tracing::warn!("admin.listen changed; it takes effect after a restart or graceful upgrade");
    }
}

/// Points the events stream at `config`'s `logging.events` sinks and history size.
fn configure_events(config: &Config, metrics: &LogMetrics) {
    let sinks = Sinks::start("events", &config.logging.events.sinks, &[], metrics, None);
    let queue = metrics.dropped.with_label_values(&["events", "_queue", "full"]);
    events::configure(sinks, config.logging.events.history, queue);
}

/// The gateway's shared core.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    /// State that survives reloads.
    pub state: SharedState,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The access log's sinks (`logging.access_log`, or stdout with
    /// `server.access_log`).
    pub access_log: AccessLog,
    /// The TLS listeners' live certificates (see [`crate::edge::tls`]).
    pub certs: crate::edge::tls::LiveCerts,
    /// The log sinks' metrics.
    log_metrics: LogMetrics,
    /// Progressive rollouts: their store (set at start) and metrics.
    pub rollouts: crate::rollout::Rollouts,
    /// The dashboard's last 15 minutes (see [`crate::observe::history`]).
    pub history: crate::observe::history::History,
    ready: AtomicBool,
    next_version: AtomicU64,
    last_rejection: Mutex<Option<Rejection>>,
    apply_lock: Mutex<()>,
    source_status: Mutex<serde_json::Value>,
    /// Where the serving content last came from: the provenance of the last applied or
    /// unchanged update (an update with the same content, e.g. from a newer etcd
    /// revision, does not publish a snapshot but does say where the content now stands).
    provenance: Mutex<Provenance>,
}

impl Gateway {
    /// A gateway serving `config`. With `ready` false it answers 503 (and `/readyz` says
    /// not ready) until the first [`Gateway::apply`] publishes a config: used when the
    /// routes come from a config center that has not answered yet.
    pub fn new(config: Config, provenance: Provenance, ready: bool) -> Result<Arc<Gateway>, ConfigErrors> {
        sluice_filters::registry::install_redactor();
        let metrics = Arc::new(Metrics::new());
        let state = SharedState::new(metrics.clone());
        let log_metrics = LogMetrics::new(&metrics);
        let access_log = AccessLog::start(&config, log_metrics.clone(), metrics.access_log_dropped.clone());
        configure_events(&config, &log_metrics);
        let snapshot = Snapshot::compile(config, 1, provenance.clone(), &state, None)?.publish(&state);
        state.upstreams.publish(&snapshot);
        metrics.config_version.set(1);
        events::emit(Event::ConfigApplied {
            version: 1,
            source: provenance.source.clone(),
            revision: provenance.revision,
        });
        metrics.reloads.with_label_values(&["applied"]).inc();
        Ok(Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            state,
            access_log,
            certs: crate::edge::tls::LiveCerts::new(&metrics),
            log_metrics,
            rollouts: crate::rollout::Rollouts::new(&metrics),
            history: crate::observe::history::History::new(),
            metrics,
            ready: AtomicBool::new(ready),
            next_version: AtomicU64::new(2),
            last_rejection: Mutex::new(None),
            apply_lock: Mutex::new(()),
            source_status: Mutex::new(serde_json::Value::Null),
            provenance: Mutex::new(provenance),
        }))
    }

    /// The serving snapshot. Load it once per request and keep the `Arc`.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Whether a config has been loaded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Where the serving content last came from (source and revision), updated by every
    /// applied or unchanged update.
    pub fn provenance(&self) -> Provenance {
        self.provenance.lock().clone()
    }

    /// What the config sources report (for `/api/v1/config`).
    pub fn source_status(&self) -> serde_json::Value {
        self.source_status.lock().clone()
    }

    /// Replaces what the config sources report.
    pub fn set_source_status(&self, status: serde_json::Value) {
        *self.source_status.lock() = status;
    }

    /// The last rejected update, if any.
    pub fn last_rejection(&self) -> Option<Rejection> {
        self.last_rejection.lock().clone()
    }

    /// Validates and compiles `config`, then publishes it with one store. On error the
    /// serving snapshot stays, and the rejection is recorded.
    pub fn apply(
        &self,
        config: Result<Config, ConfigErrors>,
        provenance: Provenance,
    ) -> Result<ApplyOutcome, ConfigErrors> {
        let started = Instant::now();
        let _one_at_a_time = self.apply_lock.lock();
        let result = config.and_then(|c| {
            let previous = self.snapshot.load();
            // The discovery plane's fast path: only endpoint lists changed. Validate just
            // those and swap them into the serving upstreams; routes, the router and the
            // upstreams themselves stay.
            if let Some(changed) = self
                .is_ready()
                .then(|| crate::control::snapshot::endpoints_only_change(&previous.config, &c))
                .flatten()
            {
                if changed.is_empty() {
                    return Ok(None);
                }
                let errors: Vec<_> = changed
                    .iter()
                    .flat_map(|&i| {
                        sluice_config::validate::validate_endpoints(
                            &format!("upstreams[{i}]"),
                            &c.upstreams[i].endpoints,
                        )
                    })
                    .collect();
                if !errors.is_empty() {
                    return Err(ConfigErrors(errors));
                }
                let version = self.next_version.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(previous.with_endpoints(c, version, provenance.clone())));
            }
            // Filter specs are checked by compiling the chains (`Snapshot::compile_with`),
            // so each filter is built once per apply, not once to check and once to serve.
            c.validate()?;
            let digest = c.digest();
            if self.is_ready() && digest.content == previous.hash {
                return Ok(None);
            }
            warn_restart_only(&previous.config, &c);
            let version = self.next_version.fetch_add(1, Ordering::Relaxed);
            Snapshot::compile_with(
                c,
                digest,
                version,
                provenance.clone(),
                &self.state,
                Some(&previous),
            )
            .map(Some)
        });
        match result {
            Ok(None) => {
                self.metrics.reloads.with_label_values(&["unchanged"]).inc();
                *self.provenance.lock() = provenance;
                Ok(ApplyOutcome::Unchanged)
            }
            Ok(Some(plan)) => {
                // Accepted: from here on the new config changes what serves, starting
                // with the state its plan carries (breakers, budgets, detectors, splits,
                // endpoint sets), then the snapshot itself.
                let snapshot = plan.publish(&self.state);
                *self.provenance.lock() = provenance.clone();
                let version = snapshot.version;
                let previous = self.snapshot.load_full();
                let relog = previous.config.logging != snapshot.config.logging
                    || previous.config.server.access_log != snapshot.config.server.access_log;
                if relog {
                    self.access_log.reconfigure(&snapshot.config);
                    configure_events(&snapshot.config, &self.log_metrics);
                }
                self.state.upstreams.publish(&snapshot);
                let snapshot = Arc::new(snapshot);
                self.snapshot.store(snapshot.clone());
                self.ready.store(true, Ordering::Release);
                // New certificates (inline ones from the Kubernetes source, changed file
                // names) reach new handshakes; open connections keep theirs.
                self.certs.refresh(&snapshot.config);
                self.state.collect_garbage();
                self.metrics.reloads.with_label_values(&["applied"]).inc();
                self.metrics
                    .config_version
                    .set(i64::try_from(version).unwrap_or(i64::MAX));
                self.metrics
                    .apply_latency
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(version, source = %provenance.source, "config applied");
                events::emit(Event::ConfigApplied {
                    version,
                    source: provenance.source,
                    revision: provenance.revision,
                });
                Ok(ApplyOutcome::Applied)
            }
            Err(errors) => {
                tracing::warn!(source = %provenance.source, "config rejected:\n{errors}");
                let list: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                events::emit(Event::ConfigRejected {
                    version: self.snapshot.load().version,
                    source: provenance.source.clone(),
                    revision: provenance.revision,
                    errors: list.clone(),
                });
                *self.last_rejection.lock() = Some(Rejection {
                    at: SystemTime::now(),
                    source: provenance.source,
                    errors: list,
                });
                // Counted last, so whoever sees the count also sees the rejection.
                self.metrics.reloads.with_label_values(&["rejected"]).inc();
                Err(errors)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(endpoint_port: u16, route_path: &str) -> Config {
        Config::from_text(&format!(
            "listeners: [{{name: w, listen: '127.0.0.1:1'}}]\n\
             upstreams: [{{id: u, endpoints: [{{address: '127.0.0.1:{endpoint_port}'}}]}}]\n\
             routes:\n\
             - {{id: a, upstream: u, match: {{path: {{prefix: {route_path}}}}}, circuit_breaker: {{}}}}\n\
             - {{id: b, upstream: u, match: {{path: {{regex: '/b/[0-9]+'}}}}}}\n"
        ))
        .unwrap()
    }

    fn source() -> Provenance {
        Provenance {
            source: "test".into(),
            revision: None,
        }
    }

    #[test]
    fn an_endpoint_only_change_keeps_the_router_routes_and_breaker_state() {
        let g = Gateway::new(config(9001, "/a"), source(), true).unwrap();
        let before = g.snapshot();
        assert_eq!(
            g.apply(Ok(config(9002, "/a")), source()).unwrap(),
            ApplyOutcome::Applied
        );
        let after = g.snapshot();
        assert!(after.version > before.version);
        assert_ne!(after.hash, before.hash);
        assert!(
            Arc::ptr_eq(&after.router, &before.router),
            "router not recompiled"
        );
        for (old, new) in before.routes.iter().zip(&after.routes) {
            assert!(
                Arc::ptr_eq(&old.chain, &new.chain),
                "route {} chain reused",
                old.id
            );
        }
        let (b0, b1) = (
            before.routes[0].backends[0].breaker.as_ref().unwrap(),
            after.routes[0].backends[0].breaker.as_ref().unwrap(),
        );
        assert!(
            Arc::ptr_eq(&b0.breaker, &b1.breaker),
            "the breaker (and its state) carries over"
        );
        assert!(
            Arc::ptr_eq(&before.upstreams["u"], &after.upstreams["u"]),
            "the upstream is kept; only its endpoint set is swapped"
        );
        assert!(Arc::ptr_eq(
            &before.routes[0].backends[0].upstream,
            &after.upstreams["u"]
        ));
        let set = after.upstreams["u"].endpoints.load();
        assert_eq!(set.endpoints.len(), 1);
        assert_eq!(
            set.endpoints[0].address, "127.0.0.1:9002",
            "the new set is served"
        );
        assert_eq!(
            set.pick_for_try(&[], None, Instant::now()),
            Some(0),
            "and picked from"
        );
        assert_eq!(
            *after.config,
            config(9002, "/a"),
            "the snapshot carries the new config"
        );
        assert_eq!(
            g.apply(Ok(config(9002, "/a")), source()).unwrap(),
            ApplyOutcome::Unchanged
        );
    }

    #[test]
    fn the_cache_store_is_sized_on_publish_and_a_refused_config_leaves_it_as_it_was() {
        let _store = crate::edge::cache_store::TEST_STORE
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let cached = |max_size: u64| {
            Config::from_text(&format!(
                "listeners: [{{name: w, listen: '127.0.0.1:1'}}]\n\
                 cache: {{max_size: {max_size}}}\n\
                 upstreams: [{{id: u, endpoints: [{{address: '127.0.0.1:9001'}}]}}]\n\
                 routes: [{{id: c, upstream: u, cache: {{}}}}]\n"
            ))
        };
        let limit = || crate::edge::cache_store::existing().map(|c| c.lru.weight_limit());
        let g = Gateway::new(cached(3001).unwrap(), source(), true).unwrap();
        assert_eq!(limit(), Some(3001), "made with the published size");
        // Refused (an invalid request id header, past the parser): the serving store
        // keeps its size.
        let mut refused = cached(5003).unwrap();
        refused.server.request_id_header = "bad header".into();
        assert!(g.apply(Ok(refused), source()).is_err());
        assert_eq!(limit(), Some(3001), "a refused config resized the store");
        assert_eq!(g.apply(cached(5003), source()).unwrap(), ApplyOutcome::Applied);
        assert_eq!(limit(), Some(5003), "resized when the new config is published");
    }

    #[test]
    fn a_refused_config_leaves_the_current_tracer_as_it_was() {
        let traced = |service: &str| {
            Config::from_text(&format!(
                "listeners: [{{name: w, listen: '127.0.0.1:1'}}]\n\
                 tracing: {{enabled: true, endpoint: 'http://127.0.0.1:1/v1/traces', service_name: {service}}}\n\
                 upstreams: [{{id: u, endpoints: [{{address: '127.0.0.1:9001'}}]}}]\n\
                 routes: [{{id: r, upstream: u}}]\n"
            ))
        };
        let g = Gateway::new(traced("one").unwrap(), source(), true).unwrap();
        let first = g.state.tracing.current().expect("the published config's tracer");
        assert!(Arc::ptr_eq(&first, g.snapshot().tracer.as_ref().unwrap()));
        // Refused after its tracer was planned (an invalid request id header): the
        // current tracer stays the serving one.
        let mut refused = traced("two").unwrap();
        refused.server.request_id_header = "bad header".into();
        assert!(g.apply(Ok(refused), source()).is_err());
        let kept = g.state.tracing.current().unwrap();
        assert!(Arc::ptr_eq(&kept, &first), "a refused config replaced the tracer");
        // Accepted: its tracer becomes the current one.
        assert_eq!(g.apply(traced("two"), source()).unwrap(), ApplyOutcome::Applied);
        let now = g.state.tracing.current().unwrap();
        assert!(!Arc::ptr_eq(&now, &first));
        assert!(Arc::ptr_eq(&now, g.snapshot().tracer.as_ref().unwrap()));
    }

    #[test]
    fn a_feed_swaps_endpoints_without_a_new_snapshot() {
        use crate::upstream::discovery::EndpointSpec;
        let g = Gateway::new(config(9001, "/a"), source(), true).unwrap();
        let before = g.snapshot();
        let spec = |port: u16, priority: u32| EndpointSpec {
            address: format!("pod-{port}:{port}"),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
            priority,
        };
        assert_eq!(g.set_endpoints("u", vec![spec(9101, 0), spec(9102, 1)]), Ok(true));
        assert_eq!(
            g.set_endpoints("u", vec![spec(9101, 0), spec(9102, 1)]),
            Ok(false)
        );
        let after = g.snapshot();
        assert!(Arc::ptr_eq(&before, &after), "no new snapshot, no recompile");
        let set = after.upstreams["u"].endpoints.load();
        let keys: Vec<(&str, u32)> = set
            .endpoints
            .iter()
            .map(|e| (e.key.as_str(), e.priority))
            .collect();
        assert_eq!(keys, [("127.0.0.1:9101", 0), ("127.0.0.1:9102", 1)]);
        assert_eq!(set.endpoints[0].sni, "pod-9101");
        assert!(g
            .set_endpoints("nope", vec![])
            .unwrap_err()
            .contains("no upstream"));
        assert!(g
            .set_endpoints("u", vec![spec(9101, 0), spec(9101, 0)])
            .unwrap_err()
            .contains("duplicate"));
    }

    #[test]
    fn an_endpoint_only_change_with_a_bad_endpoint_is_rejected_by_the_fast_path() {
        let g = Gateway::new(config(9001, "/a"), source(), true).unwrap();
        let v = g.snapshot().version;
        let mut bad = config(9001, "/a");
        bad.upstreams[0].endpoints[0].address = "nope".into();
        let errors = g.apply(Ok(bad), source()).unwrap_err();
        assert_eq!(
            errors.to_string(),
            "upstreams[0].endpoints[0].address: \"nope\" is not host:port"
        );
        assert_eq!(g.snapshot().version, v);
        assert_eq!(
            g.snapshot().upstreams["u"].endpoints.load().endpoints[0].address,
            "127.0.0.1:9001"
        );
    }

    #[test]
    fn consistent_hash_keys_on_unchanged_endpoints_stay_put_across_a_swap() {
        let text = |ports: &[u16]| {
            let eps: Vec<String> = ports
                .iter()
                .map(|p| format!("{{address: '127.0.0.1:{p}'}}"))
                .collect();
            Config::from_text(&format!(
                "listeners: [{{name: w, listen: '127.0.0.1:1'}}]\n\
                 upstreams: [{{id: u, load_balancing: {{consistent_hash: client_ip}}, endpoints: [{}]}}]\n\
                 routes: [{{id: a, upstream: u}}]\n",
                eps.join(", ")
            ))
            .unwrap()
        };
        let g = Gateway::new(text(&[9001, 9002, 9003]), source(), true).unwrap();
        let up = g.snapshot().upstreams["u"].clone();
        let keys: Vec<u64> = (0..2000u32)
            .map(|k| crate::upstream::balancer::hash_key(&k.to_be_bytes()))
            .collect();
        let owner = |keys: &[u64]| -> Vec<String> {
            let set = up.endpoints.load();
            keys.iter()
                .map(|k| {
                    set.endpoints[set.pick_for_try(&[], Some(*k), Instant::now()).unwrap()]
                        .key
                        .clone()
                })
                .collect()
        };
        let before = owner(&keys);
        // Remove 9003, add 9004: an endpoint-only change.
        g.apply(Ok(text(&[9001, 9002, 9004])), source()).unwrap();
        assert!(Arc::ptr_eq(&up, &g.snapshot().upstreams["u"]));
        let after = owner(&keys);
        let mut kept = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != "127.0.0.1:9003" && a != "127.0.0.1:9004" {
                assert_eq!(a, b, "a key on an unchanged endpoint stays put");
                kept += 1;
            }
        }
        // About 2/3 of the keys sat on the two kept endpoints, and about 1/3 of those move
        // to the new one: some 4/9 of 2000 are checked.
        assert!(kept > 700, "keys checked: {kept}");
        assert!(after.iter().all(|a| a != "127.0.0.1:9003"));
        assert!(after.iter().any(|a| a == "127.0.0.1:9004"));
    }

    #[test]
    fn a_route_change_rebuilds_the_router_but_keeps_state_of_unchanged_objects() {
        let g = Gateway::new(config(9001, "/a"), source(), true).unwrap();
        let before = g.snapshot();
        g.apply(Ok(config(9001, "/c")), source()).unwrap();
        let after = g.snapshot();
        assert!(!Arc::ptr_eq(&after.router, &before.router));
        assert!(Arc::ptr_eq(&before.routes[1].chain, &after.routes[1].chain));
        assert!(Arc::ptr_eq(&before.upstreams["u"], &after.upstreams["u"]));
        assert!(Arc::ptr_eq(
            &before.routes[0].backends[0].breaker.as_ref().unwrap().breaker,
            &after.routes[0].backends[0].breaker.as_ref().unwrap().breaker
        ));
    }

    #[test]
    fn same_content_is_unchanged_and_an_invalid_update_keeps_the_last_good_snapshot() {
        let g = Gateway::new(config(9001, "/a"), source(), true).unwrap();
        let v = g.snapshot().version;
        let newer = Provenance {
            source: "etcd".into(),
            revision: Some(42),
        };
        assert_eq!(
            g.apply(Ok(config(9001, "/a")), newer).unwrap(),
            ApplyOutcome::Unchanged
        );
        assert_eq!(g.snapshot().version, v);
        assert_eq!(
            g.provenance().revision,
            Some(42),
            "the content now stands at the newer revision"
        );
        let mut bad = config(9001, "/a");
        bad.routes[1].upstream = Some("missing".into());
        let errors = g.apply(Ok(bad), source()).unwrap_err();
        assert!(errors.to_string().contains("routes[1].upstream"), "{errors}");
        assert_eq!(g.snapshot().version, v, "the last good snapshot keeps serving");
        let rejected = g.last_rejection().unwrap();
        assert!(rejected.errors[0].contains("missing"), "{:?}", rejected.errors);

        // A route that forwards nowhere and has no answering filter, with a misspelt
        // filter spec: both errors, from compiling the chain, and nothing published.
        let mut nowhere = config(9001, "/a");
        nowhere.routes[1].upstream = None;
        nowhere.routes[1].filters = vec![sluice_config::model::FilterConfig {
            kind: "rate_limit".into(),
            spec: serde_json::json!({"requests": 1, "pre": "1s"}),
        }];
        let errors: Vec<String> = g
            .apply(Ok(nowhere), source())
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            errors[0].starts_with("routes[1].filters[0].rate_limit.pre: unknown field"),
            "{errors:?}"
        );
        assert_eq!(
            errors[1],
            "routes[1].upstream: required unless a redirect or direct_response filter answers"
        );
        assert_eq!(g.snapshot().version, v, "the last good snapshot keeps serving");
    }
}
