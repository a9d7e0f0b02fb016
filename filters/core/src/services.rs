//! The typed service map: process-wide services that filters use and that outlive
//! reloads (connection pools, key caches, counters, the runtime background work runs
//! on), one value per type.
//!
//! The gateway inserts the few services it owns (a runtime handle, the metrics
//! registry, an [`EndpointLookup`], an [`EventSink`], the live
//! [`crate::split::Splits`]); a filter kind
//! creates its own with [`Services::get_or_insert_with`] at build time, so adding a kind
//! with a pool or a metric touches nothing outside its folder. Every call here is made
//! while compiling a config, never on the request path: a filter keeps the `Arc` it got.
//!
//! An empty map (`Services::default()`) is what validation uses: a kind that finds no
//! runtime must check its spec and start no background work.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::{Mutex, ReentrantMutex};

type Entry = Arc<dyn Any + Send + Sync>;

/// Process-wide services by type. See the [module docs](self).
#[derive(Default)]
pub struct Services {
    map: Mutex<HashMap<TypeId, Entry>>,
    /// Held while a service is made, so two builds never make the same one twice (a
    /// maker may itself look services up or make others on the same thread).
    making: ReentrantMutex<()>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("count", &self.map.lock().len())
            .finish()
    }
}

impl Services {
    /// The service of type `T`, if one was inserted or made.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let entry = self.map.lock().get(&TypeId::of::<T>()).cloned()?;
        entry.downcast::<T>().ok()
    }

    /// Inserts `value` as the service of type `T`, replacing any other, and returns it.
    pub fn insert<T: Any + Send + Sync>(&self, value: T) -> Arc<T> {
        let value = Arc::new(value);
        self.map.lock().insert(TypeId::of::<T>(), value.clone());
        value
    }

    /// The service of type `T`, made by `make` on first use (once per map: `make` may
    /// register metrics or start nothing else, it runs once).
    pub fn get_or_insert_with<T: Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Arc<T> {
        if let Some(v) = self.get::<T>() {
            return v;
        }
        let _making = self.making.lock();
        if let Some(v) = self.get::<T>() {
            return v;
        }
        let value = Arc::new(make());
        self.map.lock().insert(TypeId::of::<T>(), value.clone());
        value
    }
}

/// The gateway's view of each upstream's current endpoints, for filters that send
/// requests of their own to an upstream (`mirror`). The gateway inserts one as
/// `Arc<dyn EndpointLookup>`; without it (validation, unit tests) nothing is sent.
pub trait EndpointLookup: Send + Sync {
    /// The `n`-th usable endpoint of upstream `id` (round robin over the available
    /// ones), or `None` if it has none or there is no such upstream.
    fn endpoint(&self, id: &str, n: u64) -> Option<SocketAddr>;
}

/// A rare event a filter kind reports (a shared store it uses became unreachable, or
/// came back), for the gateway's event stream (`/api/v1/events`, the event sinks) and
/// the dashboard's history. Kind-neutral: the kind names the event and its fields, so
/// the gateway relays it without knowing the kind.
///
/// Serialized as `kind` beside the `fields`, like the gateway's own events.
#[derive(Debug, Clone, PartialEq)]
pub struct KindEvent {
    /// The event's name, `kind` in the JSON (e.g. `limiter_fallback`).
    pub kind: &'static str,
    /// What it is about (e.g. a store's `host:port/db`): the Kafka key of an event sink
    /// keyed by route. Default: none.
    pub subject: Option<String>,
    /// The routes it concerns (the dashboard marks their plots).
    pub routes: Vec<String>,
    /// The state entered, for the dashboard's marker (e.g. `on`, `off`). Default: none.
    pub state: Option<&'static str>,
    /// One line for people (the marker's tooltip).
    pub summary: String,
    /// The event's fields, serialized beside `kind`.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl serde::Serialize for KindEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.fields.len() + 1))?;
        m.serialize_entry("kind", self.kind)?;
        for (k, v) in &self.fields {
            if k != "kind" {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

/// Where filter kinds report [`KindEvent`]s. The gateway inserts one as
/// `Arc<dyn EventSink>`; without it (validation, unit tests) events go nowhere.
pub trait EventSink: Send + Sync {
    /// Records `event`. Must not block (it may be called on the request path, rarely).
    fn emit(&self, event: KindEvent);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Pool(u32);

    #[test]
    fn a_service_is_made_once_and_shared() {
        let s = Services::default();
        assert!(s.get::<Pool>().is_none());
        let a = s.get_or_insert_with(|| Pool(1));
        let b = s.get_or_insert_with(|| Pool(2));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(*s.get::<Pool>().unwrap(), Pool(1));
        s.insert(Pool(3));
        assert_eq!(*s.get::<Pool>().unwrap(), Pool(3));
    }

    #[test]
    fn a_maker_may_make_another_service() {
        let s = Services::default();
        let n = s.get_or_insert_with(|| {
            let inner = s.get_or_insert_with(|| 7u64);
            Pool(*inner as u32)
        });
        assert_eq!(*n, Pool(7));
        assert_eq!(*s.get::<u64>().unwrap(), 7);
    }

    #[test]
    fn a_kind_event_serializes_as_its_kind_beside_its_fields() {
        let mut fields = serde_json::Map::new();
        fields.insert("store".into(), "r:6379/0".into());
        fields.insert("kind".into(), "ignored".into());
        let e = KindEvent {
            kind: "limiter_fallback",
            subject: None,
            routes: vec![],
            state: None,
            summary: String::new(),
            fields,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kind": "limiter_fallback", "store": "r:6379/0"})
        );
    }
}
