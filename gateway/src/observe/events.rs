//! Gateway events: what changed in the gateway, as typed records, for operators and
//! their event bus.
//!
//! Code anywhere calls [`emit`] with an [`Event`]; that is one `try_send` on a bounded
//! queue (4096 events), never a wait and never a lock, so it is safe on the request path
//! (a breaker opening is seen by a worker). A queue that is full drops the event and
//! counts it (`sluice_log_dropped_total{stream="events", sink="_queue", reason="full"}`).
//!
//! One dispatcher thread takes events from the queue, numbers them (`seq`, from 1,
//! without gaps for what it took), keeps the last `logging.events.history` in memory for
//! `/api/v1/events?since=<seq>`, and hands each to the events stream's sinks
//! (`logging.events.sinks`: stdout, file, Kafka), like the access log's.
//!
//! Rollouts emit [`Event::RolloutStep`] (see `rollout::runtime`); filter kinds emit
//! [`Event::Kind`] through the [`KindSink`] service in their build context (the
//! `rate_limit` kind's Redis stores on entering and on leaving their fallback).

use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use prometheus::IntCounter;
use serde::Serialize;
use sluice_config::logging::{AccessField, KafkaKey};
use sluice_core::resilience::{BreakerState, EjectionReason};
use sluice_core::{EventSink, KindEvent};

use crate::observe::sinks::{LogRecord, Sinks};

pub use sluice_core::resilience::WindowFigures;

/// Something that happened in the gateway. Serialized with `"kind"` naming the variant
/// (`config_applied`, `breaker_transition`, …) beside its fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A config update was published.
    ConfigApplied {
        /// The new snapshot's version.
        version: u64,
        /// Where it came from (`file:… + etcd:…`).
        source: String,
        /// The etcd revision, when it came from etcd.
        revision: Option<i64>,
    },
    /// A config update was rejected; the serving config stays.
    ConfigRejected {
        /// The serving snapshot's version (unchanged).
        version: u64,
        /// Where the update came from.
        source: String,
        /// The etcd revision, when it came from etcd.
        revision: Option<i64>,
        /// Every error, as `path: message`.
        errors: Vec<String>,
    },
    /// A circuit breaker changed state.
    BreakerTransition {
        /// Route id.
        route: String,
        /// Upstream id.
        upstream: String,
        /// The state before.
        from: BreakerState,
        /// The state after.
        to: BreakerState,
        /// Why, e.g. `failure rate 62.0% >= 50.0% over 20 calls; open for 5.0s`.
        reason: String,
        /// The window figures that tripped it, when a rate did.
        window: Option<WindowFigures>,
    },
    /// Outlier detection ejected an endpoint.
    EndpointEjected {
        /// Upstream id.
        upstream: String,
        /// Endpoint address as configured.
        endpoint: String,
        /// The detector: `consecutive_5xx`, `consecutive_gateway_failure`,
        /// `failure_percentage`.
        reason: EjectionReason,
        /// Its figures, e.g. `5 consecutive 5xx`.
        detail: String,
        /// How long the ejection lasts, in milliseconds.
        duration_ms: u64,
        /// False when the ejection cap (`max_ejection_percent`) prevented it.
        enforced: bool,
    },
    /// An ejected endpoint's ejection ended: it takes traffic again.
    EndpointRecovered {
        /// Upstream id.
        upstream: String,
        /// Endpoint address.
        endpoint: String,
    },
    /// An active health check changed an endpoint's health.
    HealthChanged {
        /// Upstream id.
        upstream: String,
        /// Endpoint address.
        endpoint: String,
        /// Healthy now.
        healthy: bool,
        /// Why it failed (when it became unhealthy).
        reason: Option<String>,
    },
    /// A rollout step, promotion or rollback (emitted by the canary work).
    RolloutStep {
        /// Route id.
        route: String,
        /// `step`, `promote` or `rollback`.
        action: String,
        /// The new weight of the canary, percent.
        weight: Option<u32>,
        /// What decided it (the analysis).
        detail: String,
    },
    /// An event a filter kind reported through the [`sluice_core::EventSink`] service
    /// (e.g. the `rate_limit` kind's `limiter_fallback`: a Redis server's limits fell
    /// back, or came back); serialized as its own `kind` beside its fields.
    #[serde(untagged)]
    Kind(KindEvent),
}

impl Event {
    /// The variant's name (`kind` in the JSON).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::ConfigApplied { .. } => "config_applied",
            Event::ConfigRejected { .. } => "config_rejected",
            Event::BreakerTransition { .. } => "breaker_transition",
            Event::EndpointEjected { .. } => "endpoint_ejected",
            Event::EndpointRecovered { .. } => "endpoint_recovered",
            Event::HealthChanged { .. } => "health_changed",
            Event::RolloutStep { .. } => "rollout_step",
            Event::Kind(e) => e.kind,
        }
    }

    /// The route (or, for endpoint events, the upstream) it is about: the Kafka key for
    /// `key: route`.
    fn subject(&self) -> Option<&str> {
        match self {
            Event::BreakerTransition { route, .. } | Event::RolloutStep { route, .. } => Some(route),
            Event::Kind(e) => e.subject.as_deref(),
            Event::EndpointEjected { upstream, .. }
            | Event::EndpointRecovered { upstream, .. }
            | Event::HealthChanged { upstream, .. } => Some(upstream),
            Event::ConfigApplied { .. } | Event::ConfigRejected { .. } => None,
        }
    }
}

/// An event as recorded: numbered and timed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recorded {
    /// Its number, from 1 in this process.
    pub seq: u64,
    /// When it was emitted, RFC 3339 with milliseconds.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

impl LogRecord for Recorded {
    fn write_json(&self, _: &[AccessField], out: &mut Vec<u8>) {
        // Serializing plain strings and numbers into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, self);
    }

    fn key(&self, key: KafkaKey) -> Option<&str> {
        match key {
            KafkaKey::Route => self.event.subject(),
            KafkaKey::RequestId | KafkaKey::None => None,
        }
    }

    fn timestamp(&self) -> SystemTime {
        self.time
    }
}

/// How many emitted events may wait for the dispatcher.
const QUEUE: usize = 4096;

struct Bus {
    tx: SyncSender<(SystemTime, Event)>,
    history: Mutex<History>,
    sinks: ArcSwap<Sinks<Recorded>>,
    dropped: OnceLock<IntCounter>,
}

struct History {
    events: VecDeque<Arc<Recorded>>,
    capacity: usize,
    next_seq: u64,
}

static BUS: OnceLock<Option<Bus>> = OnceLock::new();

fn bus() -> Option<&'static Bus> {
    BUS.get_or_init(|| {
        let (tx, rx) = sync_channel(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("sluice-events".into())
            .spawn(move || dispatch(&rx));
        if let Err(e) = spawned {
            tracing::error!("cannot start the events thread: {e}");
            return None;
        }
        Some(Bus {
            tx,
            history: Mutex::new(History {
                events: VecDeque::new(),
                capacity: 1000,
                next_seq: 1,
            }),
            sinks: ArcSwap::from_pointee(Sinks::none()),
            dropped: OnceLock::new(),
        })
    })
    .as_ref()
}

/// The [`EventSink`] service the gateway hands filter kinds: their events join the
/// gateway's own, as [`Event::Kind`].
#[derive(Debug, Default)]
pub struct KindSink;

impl EventSink for KindSink {
    fn emit(&self, event: KindEvent) {
        emit(Event::Kind(event));
    }
}

/// Records `event`: never blocks, never locks (see the module docs).
pub fn emit(event: Event) {
    let Some(bus) = bus() else { return };
    match bus.tx.try_send((SystemTime::now(), event)) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            if let Some(c) = bus.dropped.get() {
                c.inc();
            }
        }
    }
}

fn dispatch(rx: &Receiver<(SystemTime, Event)>) {
    // Events are rare: waiting on the queue (one wake per event) costs nothing that
    // matters, unlike the access log's per-request records.
    while let Ok((time, event)) = rx.recv() {
        let Some(bus) = BUS.get().and_then(Option::as_ref) else {
            continue;
        };
        let recorded = {
            let mut h = bus.history.lock();
            let r = Arc::new(Recorded {
                seq: h.next_seq,
                time,
                event,
            });
            h.next_seq += 1;
            h.events.push_back(r.clone());
            while h.events.len() > h.capacity {
                h.events.pop_front();
            }
            r
        };
        bus.sinks.load().submit_shared(&recorded);
    }
}

/// Sets where events go from now on (`logging.events`): the sinks, and how many recent
/// events to keep. `queue_dropped` counts events the queue could not take (set once).
pub fn configure(sinks: Sinks<Recorded>, history: usize, queue_dropped: IntCounter) {
    let Some(bus) = bus() else { return };
    let _ = bus.dropped.set(queue_dropped);
    bus.sinks.store(Arc::new(sinks));
    let mut h = bus.history.lock();
    h.capacity = history.max(1);
    while h.events.len() > h.capacity {
        h.events.pop_front();
    }
}

/// The recent events with `seq > since`, oldest first, at most `limit`; and the newest
/// seq recorded so far (0 before the first).
pub fn since(since: u64, limit: usize) -> (Vec<Arc<Recorded>>, u64) {
    let Some(bus) = bus() else {
        return (Vec::new(), 0);
    };
    let h = bus.history.lock();
    let list = h
        .events
        .iter()
        .filter(|e| e.seq > since)
        .take(limit)
        .cloned()
        .collect();
    (list, h.next_seq - 1)
}

/// Emits [`Event::EndpointRecovered`] for the endpoints of `snapshot` whose ejection
/// ended since the last call; `ejected` is the caller's memory of what was ejected
/// (upstream id, endpoint key). Called by the health loop every tick (an ejection ends
/// with time, not with an event).
pub fn watch_ejections(
    snapshot: &crate::control::snapshot::Snapshot,
    ejected: &mut std::collections::HashSet<(String, String)>,
    now: std::time::Instant,
) {
    let mut still = std::collections::HashSet::new();
    for up in snapshot.upstreams.values() {
        let set = up.endpoints.load();
        for (i, ep) in set.endpoints.iter().enumerate() {
            if set.outlier.is_ejected(i, now) {
                still.insert((up.id.clone(), ep.key.clone()));
            }
        }
    }
    for (upstream, endpoint) in ejected.drain() {
        if !still.contains(&(upstream.clone(), endpoint.clone())) {
            emit(Event::EndpointRecovered { upstream, endpoint });
        }
    }
    *ejected = still;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn events_are_numbered_kept_and_listed_since_a_seq() {
        let (_, before) = since(0, usize::MAX);
        let mut fields = serde_json::Map::new();
        fields.insert("store".into(), "unit-test-store:6379/0".into());
        fields.insert("routes".into(), serde_json::json!(["a"]));
        KindSink.emit(KindEvent {
            kind: "limiter_fallback",
            subject: Some("unit-test-store:6379/0".into()),
            routes: vec!["a".into()],
            state: Some("on"),
            summary: "redis down".into(),
            fields,
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let got = loop {
            let (list, _) = since(before, usize::MAX);
            if let Some(e) = list.into_iter().find(
                |e| matches!(&e.event, Event::Kind(k) if k.subject.as_deref() == Some("unit-test-store:6379/0")),
            ) {
                break e;
            }
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert!(got.seq > before);
        let mut out = Vec::new();
        got.write_json(&[], &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["kind"], "limiter_fallback");
        assert_eq!(v["store"], "unit-test-store:6379/0");
        assert_eq!(v["routes"], serde_json::json!(["a"]));
        assert_eq!(v["seq"], got.seq);
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(got.key(KafkaKey::Route), Some("unit-test-store:6379/0"));
        let (after, _) = since(got.seq, usize::MAX);
        assert!(after.iter().all(|e| e.seq > got.seq));
    }
}
