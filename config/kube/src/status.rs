//! Writing the Gateway API status back: the statuses the translation computed
//! ([`crate::gateway_api::GatewayTranslation`]) are PATCHed (`status` subresource, JSON
//! merge patch) onto GatewayClasses, Gateways and HTTPRoutes, by the replica that holds
//! the cluster's Lease ([`crate::lease`]) only, and only when they differ from what the
//! object carries (conditions compared without `lastTransitionTime`, which is kept from
//! the current condition when its type and status did not change): no write loop.
//!
//! - GatewayClass: `status.conditions` (`Accepted`).
//! - Gateway: `status.conditions` (`Accepted`, `Programmed`) and `status.listeners`
//!   (`attachedRoutes`, `supportedKinds`, conditions). `status.addresses` is left alone:
//!   the Service in front of Sluice owns the address.
//! - HTTPRoute: `status.parents`: the entries of other controllers are kept as they are,
//!   Sluice's are replaced.
//!
//! Every condition carries the object's `metadata.generation` as `observedGeneration`.
//! Writes name the field manager `sluice/<identity>`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::gateway_api::{Condition, GatewayTranslation, ParentRef};

/// What the status writer works from: the Gateway API objects as last seen (their
/// current status), the cluster each came from, and the statuses they should carry.
#[derive(Debug, Clone, Default)]
pub struct StatusSnapshot {
    /// GatewayClasses, as watched.
    pub classes: Vec<GatewayClass>,
    /// Gateways, as watched.
    pub gateways: Vec<Gateway>,
    /// HTTPRoutes, as watched.
    pub routes: Vec<HttpRoute>,
    /// `metadata.uid` → the index of the cluster the object came from.
    pub origin: HashMap<String, usize>,
    /// The statuses to write.
    pub desired: GatewayTranslation,
    /// TLSRoutes, TCPRoutes, UDPRoutes and BackendTLSPolicies, as watched (kind,
    /// metadata, current status).
    pub others: Vec<Watched>,
}

/// An object of another kind the writer writes, as watched.
#[derive(Debug, Clone)]
pub struct Watched {
    /// `TLSRoute`, `TCPRoute`, `UDPRoute` or `BackendTLSPolicy`.
    pub kind: &'static str,
    /// Its metadata.
    pub meta: kube::api::ObjectMeta,
    /// Its current status.
    pub status: Value,
}

impl Watched {
    /// The L4 objects of `objects` whose status the writer owns a part of.
    pub fn of(objects: &crate::ClusterObjects) -> Vec<Watched> {
        let mut out = Vec::new();
        for r in &objects.tls_routes {
            out.push(Watched {
                kind: "TLSRoute",
                meta: r.metadata.clone(),
                status: serde_json::to_value(&r.status).unwrap_or(Value::Null),
            });
        }
        for r in &objects.tcp_routes {
            out.push(Watched {
                kind: "TCPRoute",
                meta: r.metadata.clone(),
                status: r.status.clone(),
            });
        }
        for r in &objects.udp_routes {
            out.push(Watched {
                kind: "UDPRoute",
                meta: r.metadata.clone(),
                status: r.status.clone(),
            });
        }
        for p in &objects.backend_tls_policies {
            out.push(Watched {
                kind: "BackendTLSPolicy",
                meta: p.metadata.clone(),
                status: serde_json::to_value(&p.status).unwrap_or(Value::Null),
            });
        }
        out
    }
}

/// One cluster the writer may write to.
pub struct StatusCluster {
    /// The client, when the cluster could be reached.
    pub client: Option<Client>,
    /// Whether this replica holds the cluster's Lease.
    pub leader: watch::Receiver<bool>,
}

fn time_now() -> Value {
    serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).unwrap_or(Value::Null)
}

/// The conditions as Kubernetes JSON, keeping `lastTransitionTime` from `current` for
/// a condition whose type and status did not change.
pub fn conditions_json(want: &[Condition], generation: Option<i64>, current: &Value, now: &Value) -> Value {
    let current = current.as_array().cloned().unwrap_or_default();
    Value::Array(
        want.iter()
            .map(|c| {
                let status = if c.status { "True" } else { "False" };
                let since = current
                    .iter()
                    .find(|o| o["type"] == c.type_.as_str() && o["status"] == status)
                    .map(|o| o["lastTransitionTime"].clone())
                    .filter(|t| !t.is_null())
                    .unwrap_or_else(|| now.clone());
                let mut v = json!({
                    "type": c.type_,
                    "status": status,
                    "reason": c.reason,
                    "message": c.message,
                    "lastTransitionTime": since,
                });
                if let Some(g) = generation {
                    v["observedGeneration"] = json!(g);
                }
                v
            })
            .collect(),
    )
}

fn parent_ref_json(p: &ParentRef) -> Value {
    let mut v = json!({"group": p.group, "kind": p.kind, "namespace": p.namespace, "name": p.name});
    if let Some(s) = &p.section_name {
        v["sectionName"] = json!(s);
    }
    if let Some(port) = p.port {
        v["port"] = json!(port);
    }
    v
}

/// `v` without any `lastTransitionTime`, for comparing.
fn strip_times(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "lastTransitionTime")
                .map(|(k, v)| (k.clone(), strip_times(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_times).collect()),
        other => other.clone(),
    }
}

/// A parentRef as written back, with defaults filled, to compare with ours.
fn same_parent(existing: &Value, p: &ParentRef, route_ns: &str) -> bool {
    let s = |k: &str, d: &str| existing[k].as_str().unwrap_or(d).to_string();
    s("group", "gateway.networking.k8s.io") == p.group
        && s("kind", "Gateway") == p.kind
        && s("namespace", route_ns) == p.namespace
        && s("name", "") == p.name
        && existing["sectionName"].as_str() == p.section_name.as_deref()
        && existing["port"].as_i64() == p.port.map(i64::from)
}

/// One status write: the object, and the `status` to merge.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// `GatewayClass`, `Gateway`, `HTTPRoute`, `TLSRoute`, `TCPRoute`, `UDPRoute` or
    /// `BackendTLSPolicy`.
    pub kind: &'static str,
    /// Empty for GatewayClasses.
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// The object's uid (for its cluster).
    pub uid: String,
    /// The object's resourceVersion when the write was computed.
    pub resource_version: String,
    /// The new `status` (the fields Sluice owns).
    pub status: Value,
}

/// The writes `snap` needs: one per object whose status differs from the desired one.
pub fn writes(snap: &StatusSnapshot, controller: &str) -> Vec<Write> {
    let now = time_now();
    let mut out = Vec::new();
    let mut push = |kind: &'static str, meta: &kube::api::ObjectMeta, current: &Value, status: Value| {
        let differs = strip_times(&status)
            .as_object()
            .is_some_and(|m| m.iter().any(|(k, v)| strip_times(&current[k]) != *v));
        if differs {
            out.push(Write {
                kind,
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
                uid: meta.uid.clone().unwrap_or_default(),
                resource_version: meta.resource_version.clone().unwrap_or_default(),
                status,
            });
        }
    };
    for want in &snap.desired.classes {
        let Some(obj) = snap.classes.iter().find(|c| c.name_any() == want.class.name) else {
            continue;
        };
        let current = serde_json::to_value(&obj.status).unwrap_or(Value::Null);
        let status = json!({"conditions": conditions_json(&want.conditions, obj.metadata.generation, &current["conditions"], &now)});
        push("GatewayClass", obj.meta(), &current, status);
    }
    for want in &snap.desired.gateways {
        let Some(obj) = snap.gateways.iter().find(|g| {
            g.name_any() == want.gateway.name && g.namespace().unwrap_or_default() == want.gateway.namespace
        }) else {
            continue;
        };
        let current = serde_json::to_value(&obj.status).unwrap_or(Value::Null);
        let gen = obj.metadata.generation;
        let listeners: Vec<Value> = want
            .listeners
            .iter()
            .map(|l| {
                let cur = current["listeners"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["name"] == l.name.as_str()))
                    .map(|x| x["conditions"].clone())
                    .unwrap_or(Value::Null);
                json!({
                    "name": l.name,
                    "attachedRoutes": l.attached_routes,
                    "supportedKinds": l.supported_kinds.iter()
                        .map(|k| json!({"group": "gateway.networking.k8s.io", "kind": k}))
                        .collect::<Vec<_>>(),
                    "conditions": conditions_json(&l.conditions, gen, &cur, &now),
                })
            })
            .collect();
        let status = json!({
            "conditions": conditions_json(&want.conditions, gen, &current["conditions"], &now),
            "listeners": listeners,
        });
        push("Gateway", obj.meta(), &current, status);
    }
    for want in &snap.desired.routes {
        let Some(obj) = snap.routes.iter().find(|r| {
            r.name_any() == want.route.name && r.namespace().unwrap_or_default() == want.route.namespace
        }) else {
            continue;
        };
        let current = serde_json::to_value(&obj.status).unwrap_or(Value::Null);
        out.extend(route_write(
            "HTTPRoute",
            obj.meta(),
            &current,
            want,
            controller,
            &now,
        ));
    }
    for want in &snap.desired.l4.routes {
        let kind = match want.route.kind.as_str() {
            "TLSRoute" => "TLSRoute",
            "TCPRoute" => "TCPRoute",
            _ => "UDPRoute",
        };
        let Some(obj) = snap.others.iter().find(|o| {
            o.kind == kind
                && o.meta.name.as_deref() == Some(want.route.name.as_str())
                && o.meta.namespace.as_deref() == Some(want.route.namespace.as_str())
        }) else {
            continue;
        };
        out.extend(route_write(kind, &obj.meta, &obj.status, want, controller, &now));
    }
    for want in &snap.desired.l4.policies {
        let Some(obj) = snap.others.iter().find(|o| {
            o.kind == "BackendTLSPolicy"
                && o.meta.name.as_deref() == Some(want.policy.name.as_str())
                && o.meta.namespace.as_deref() == Some(want.policy.namespace.as_str())
        }) else {
            continue;
        };
        out.extend(policy_write(&obj.meta, &obj.status, want, controller, &now));
    }
    out
}

/// The write of a route's `status.parents` (any route kind), when Sluice's entries
/// differ from `want`; other controllers' entries are kept.
fn route_write(
    kind: &'static str,
    meta: &kube::api::ObjectMeta,
    current: &Value,
    want: &crate::gateway_api::RouteStatus,
    controller: &str,
    now: &Value,
) -> Option<Write> {
    let ns = meta.namespace.clone().unwrap_or_default();
    let existing = current["parents"].as_array().cloned().unwrap_or_default();
    let mut parents: Vec<Value> = existing
        .iter()
        .filter(|p| p["controllerName"] != controller)
        .cloned()
        .collect();
    for p in &want.parents {
        let cur = existing
            .iter()
            .find(|e| e["controllerName"] == controller && same_parent(&e["parentRef"], &p.parent_ref, &ns))
            .map(|e| e["conditions"].clone())
            .unwrap_or(Value::Null);
        parents.push(json!({
            "parentRef": parent_ref_json(&p.parent_ref),
            "controllerName": p.controller_name,
            "conditions": conditions_json(&p.conditions, meta.generation, &cur, now),
        }));
    }
    // Compare ours only, with the written parentRef's defaults filled in.
    let norm = |list: &[Value]| -> Vec<Value> {
        list.iter()
            .filter(|p| p["controllerName"] == controller)
            .map(|p| {
                let mut p = strip_times(p);
                let r = &mut p["parentRef"];
                for (k, d) in [
                    ("group", json!("gateway.networking.k8s.io")),
                    ("kind", json!("Gateway")),
                    ("namespace", json!(ns)),
                ] {
                    if r[k].is_null() {
                        r[k] = d;
                    }
                }
                p
            })
            .collect()
    };
    (norm(&existing) != norm(&parents) || existing.len() != parents.len()).then(|| Write {
        kind,
        namespace: ns.clone(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone().unwrap_or_default(),
        status: json!({"parents": parents}),
    })
}

/// The write of a BackendTLSPolicy's `status.ancestors`, when Sluice's entries differ
/// from `want`; other controllers' entries are kept.
fn policy_write(
    meta: &kube::api::ObjectMeta,
    current: &Value,
    want: &crate::gateway_l4::PolicyStatus,
    controller: &str,
    now: &Value,
) -> Option<Write> {
    let existing = current["ancestors"].as_array().cloned().unwrap_or_default();
    let mut ancestors: Vec<Value> = existing
        .iter()
        .filter(|a| a["controllerName"] != controller)
        .cloned()
        .collect();
    for ((ns, name), conditions) in &want.ancestors {
        let cur = existing
            .iter()
            .find(|e| {
                e["controllerName"] == controller
                    && e["ancestorRef"]["name"] == name.as_str()
                    && e["ancestorRef"]["namespace"] == ns.as_str()
            })
            .map(|e| e["conditions"].clone())
            .unwrap_or(Value::Null);
        ancestors.push(json!({
            "ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": ns, "name": name},
            "controllerName": controller,
            "conditions": conditions_json(conditions, meta.generation, &cur, now),
        }));
    }
    (strip_times(&Value::Array(existing)) != strip_times(&Value::Array(ancestors.clone()))).then(|| Write {
        kind: "BackendTLSPolicy",
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone().unwrap_or_default(),
        status: json!({"ancestors": ancestors}),
    })
}

async fn patch(client: Client, w: &Write, pp: &PatchParams) -> Result<(), kube::Error> {
    let body = json!({"status": w.status});
    let p = Patch::Merge(&body);
    match w.kind {
        "GatewayClass" => Api::<GatewayClass>::all(client)
            .patch_status(&w.name, pp, &p)
            .await
            .map(drop),
        "Gateway" => Api::<Gateway>::namespaced(client, &w.namespace)
            .patch_status(&w.name, pp, &p)
            .await
            .map(drop),
        "TLSRoute" => Api::<gateway_api::tlsroutes::TlsRoute>::namespaced(client, &w.namespace)
            .patch_status(&w.name, pp, &p)
            .await
            .map(drop),
        "TCPRoute" => Api::<crate::l4_types::TcpRoute>::namespaced(client, &w.namespace)
            .patch_status(&w.name, pp, &p)
            .await
            .map(drop),
        "UDPRoute" => Api::<crate::l4_types::UdpRoute>::namespaced(client, &w.namespace)
            .patch_status(&w.name, pp, &p)
            .await
            .map(drop),
        "BackendTLSPolicy" => {
            Api::<gateway_api::backendtlspolicies::BackendTlsPolicy>::namespaced(client, &w.namespace)
                .patch_status(&w.name, pp, &p)
                .await
                .map(drop)
        }
        _ => Api::<HttpRoute>::namespaced(client, &w.namespace)
            .patch_status(&w.name, pp, &p)
            .await
            .map(drop),
    }
}

/// Writes statuses for ever: whenever `snapshots` or a cluster's leadership changes,
/// each write [`writes`] finds is PATCHed if this replica leads the object's cluster,
/// at most once per object resourceVersion (failed writes are retried after a second).
pub async fn run(
    mut clusters: Vec<StatusCluster>,
    mut snapshots: watch::Receiver<Arc<StatusSnapshot>>,
    controller: String,
    identity: String,
) {
    let pp = PatchParams {
        field_manager: Some(format!("sluice/{identity}").chars().take(128).collect()),
        ..PatchParams::default()
    };
    // (kind, namespace, name) → (status written, resourceVersion it was written on).
    let mut done: HashMap<(String, String, String), (Value, String)> = HashMap::new();
    loop {
        let snap = snapshots.borrow_and_update().clone();
        let leaders: Vec<bool> = clusters
            .iter_mut()
            .map(|c| *c.leader.borrow_and_update())
            .collect();
        let mut retry = false;
        for w in writes(&snap, &controller) {
            let ci = snap.origin.get(&w.uid).copied().unwrap_or(0);
            if !leaders.get(ci).copied().unwrap_or(false) {
                continue;
            }
            let Some(client) = clusters.get(ci).and_then(|c| c.client.clone()) else {
                continue;
            };
            let key = (w.kind.to_string(), w.namespace.clone(), w.name.clone());
            let stripped = strip_times(&w.status);
            if done.get(&key) == Some(&(stripped.clone(), w.resource_version.clone())) {
                continue; // written already; the watch has not brought it back yet
            }
            match patch(client, &w, &pp).await {
                Ok(()) => {
                    tracing::info!(
                        "kubernetes: status of {} {}/{} written",
                        w.kind,
                        w.namespace,
                        w.name
                    );
                    done.insert(key, (stripped, w.resource_version.clone()));
                }
                Err(e) => {
                    tracing::warn!(
                        "kubernetes: cannot write the status of {} {}/{}: {e}",
                        w.kind,
                        w.namespace,
                        w.name
                    );
                    retry = true;
                }
            }
        }
        let leader_changed = async {
            if clusters.is_empty() {
                std::future::pending::<()>().await;
            }
            let futs = clusters.iter_mut().map(|c| Box::pin(c.leader.changed()));
            let _ = futures_util::future::select_all(futs).await;
        };
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { return; },
            () = leader_changed => {},
            () = tokio::time::sleep(Duration::from_secs(1)), if retry => {},
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::gateway_api::{translate, GATEWAY_CONTROLLER};
    use crate::ClusterObjects;

    fn objects(route_status: Value) -> ClusterObjects {
        let mut o = ClusterObjects::default();
        o.gateway_classes.push(
            serde_json::from_value(
                json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                "metadata": {"name": "sluice", "generation": 1, "uid": "c", "resourceVersion": "1"},
                "spec": {"controllerName": GATEWAY_CONTROLLER}}),
            )
            .unwrap(),
        );
        o.gateways.push(
            serde_json::from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "web", "namespace": "demo", "generation": 4, "uid": "g", "resourceVersion": "2"},
                "spec": {"gatewayClassName": "sluice", "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]}}))
            .unwrap(),
        );
        o.http_routes.push(
            serde_json::from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "r", "namespace": "demo", "generation": 2, "uid": "r", "resourceVersion": "3"},
                "spec": {"parentRefs": [{"name": "web"}, {"name": "theirs"}], "rules": [{"backendRefs": [{"name": "none", "port": 80}]}]},
                "status": route_status}))
            .unwrap(),
        );
        o
    }

    fn snapshot(o: &ClusterObjects) -> StatusSnapshot {
        StatusSnapshot {
            classes: o.gateway_classes.clone(),
            gateways: o.gateways.clone(),
            routes: o.http_routes.clone(),
            origin: HashMap::new(),
            desired: translate(o, GATEWAY_CONTROLLER, &crate::test_kinds::TestKinds::ALL),
            others: Vec::new(),
        }
    }

    /// `o` with each write's status merged in, as the API server would.
    fn applied(o: &ClusterObjects, ws: &[Write]) -> ClusterObjects {
        let mut o = o.clone();
        for w in ws {
            match w.kind {
                "GatewayClass" => {
                    o.gateway_classes[0].status = serde_json::from_value(w.status.clone()).unwrap()
                }
                "Gateway" => o.gateways[0].status = serde_json::from_value(w.status.clone()).unwrap(),
                _ => o.http_routes[0].status = serde_json::from_value(w.status.clone()).unwrap(),
            }
        }
        o
    }

    const THEIRS: &str = "example.com/theirs";

    fn their_parent() -> Value {
        json!({"parentRef": {"name": "theirs"}, "controllerName": THEIRS,
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                "lastTransitionTime": "2020-01-01T00:00:00Z", "observedGeneration": 1}]})
    }

    #[test]
    fn writes_what_differs_once_and_keeps_other_controllers_parents() {
        let o = objects(json!({"parents": [their_parent()]}));
        let ws = writes(&snapshot(&o), GATEWAY_CONTROLLER);
        let kinds: Vec<&str> = ws.iter().map(|w| w.kind).collect();
        assert_eq!(kinds, ["GatewayClass", "Gateway", "HTTPRoute"]);
        let route = &ws[2].status["parents"];
        assert_eq!(
            route[0],
            their_parent(),
            "another controller's entry is kept as it is"
        );
        assert_eq!(route[1]["controllerName"], GATEWAY_CONTROLLER);
        assert_eq!(route[1]["parentRef"]["name"], "web");
        let resolved = route[1]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "ResolvedRefs")
            .unwrap();
        assert_eq!(resolved["status"], "False");
        assert_eq!(resolved["observedGeneration"], 2);
        assert_eq!(ws[1].status["conditions"][0]["observedGeneration"], 4);
        assert_eq!(ws[1].status["listeners"][0]["name"], "http");
        // Once written, nothing differs: no write loop.
        let after = applied(&o, &ws);
        assert_eq!(writes(&snapshot(&after), GATEWAY_CONTROLLER), Vec::new());
    }

    #[test]
    fn keeps_transition_times_and_writes_again_on_a_new_generation() {
        let o = objects(Value::Null);
        let after = applied(&o, &writes(&snapshot(&o), GATEWAY_CONTROLLER));
        let mut old = after.clone();
        let t0 = "2020-01-01T00:00:00Z";
        let mut st = serde_json::to_value(&old.http_routes[0].status).unwrap();
        for c in st["parents"][0]["conditions"].as_array_mut().unwrap() {
            c["lastTransitionTime"] = json!(t0);
        }
        old.http_routes[0].status = serde_json::from_value(st).unwrap();
        old.http_routes[0].metadata.generation = Some(3);
        let ws = writes(&snapshot(&old), GATEWAY_CONTROLLER);
        assert_eq!(ws.len(), 1, "{ws:?}");
        for c in ws[0].status["parents"][0]["conditions"].as_array().unwrap() {
            assert_eq!(c["lastTransitionTime"], t0, "same type and status: time kept");
            assert_eq!(c["observedGeneration"], 3);
        }
    }
}
