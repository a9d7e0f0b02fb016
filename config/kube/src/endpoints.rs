//! A Service port resolved to an upstream: the endpoints of its EndpointSlices, from every
//! cluster, at each cluster's priority level. Every translation (Ingress, Gateway API)
//! builds its upstreams here, so one Service port is one upstream id whichever object
//! names it.
//!
//! - A ready endpoint serves (weight 1).
//! - A terminating endpoint that still serves drains: it stays in the set with weight 0,
//!   so requests already on it finish and no new request picks it.
//! - An endpoint neither ready nor serving is left out.
//!
//! An `ExternalName` Service becomes one endpoint `externalName:port`, which the
//! discovery plane resolves with DNS.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServicePort;
use kube::ResourceExt;
use sluice_config::model::{EndpointConfig, UpstreamConfig};

use crate::ClusterObjects;

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service port, by number (`spec.ports[].port`) or by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortRef {
    /// The Service port number.
    Number(i32),
    /// The Service port name.
    Name(String),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => f.write_str(n),
        }
    }
}

/// Why a Service port gives no upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// No such Service in any watched cluster.
    NoService(String),
    /// The Service has no such port.
    NoPort(String),
    /// The Service exists but has no serving endpoint now (a normal, passing state:
    /// requests get 503 until one is ready).
    NoEndpoints,
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unresolved::NoService(s) => write!(f, "Service {s} not found"),
            Unresolved::NoPort(s) => f.write_str(s),
            Unresolved::NoEndpoints => f.write_str("no ready endpoint"),
        }
    }
}

/// The upstream id of a Service port: `k8s.<namespace>.<service>.<port>`, stable while
/// the Service exists, valid as a Sluice id (Kubernetes names are DNS labels; any other
/// character becomes `-`).
pub fn upstream_id(namespace: &str, service: &str, port: &PortRef) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let mut id = format!(
        "k8s.{}.{}.{}",
        clean(namespace),
        clean(service),
        clean(&port.to_string())
    );
    id.truncate(128);
    id
}

fn find_port<'a>(ports: &'a [ServicePort], port: &PortRef) -> Option<&'a ServicePort> {
    ports.iter().find(|p| match port {
        PortRef::Number(n) => p.port == *n,
        PortRef::Name(n) => p.name.as_deref() == Some(n.as_str()),
    })
}

/// The endpoints of Service `namespace/service` port `port` (the id of
/// [`upstream_id`]), as an upstream with default settings. The caller sets protocol,
/// load balancing and the like.
pub fn service_upstream(
    objects: &ClusterObjects,
    namespace: &str,
    service: &str,
    port: &PortRef,
) -> Result<UpstreamConfig, Unresolved> {
    let svc = objects
        .service(namespace, service)
        .ok_or_else(|| Unresolved::NoService(format!("{namespace}/{service}")))?;
    let spec = svc.spec.clone().unwrap_or_default();
    let ports = spec.ports.clone().unwrap_or_default();
    let id = upstream_id(namespace, service, port);
    if spec.type_.as_deref() == Some("ExternalName") {
        let host = spec.external_name.clone().unwrap_or_default();
        let number = match port {
            PortRef::Number(n) => *n,
            PortRef::Name(_) => find_port(&ports, port).map(|p| p.port).ok_or_else(|| {
                Unresolved::NoPort(format!("Service {namespace}/{service} has no port {port}"))
            })?,
        };
        if host.is_empty() {
            return Err(Unresolved::NoEndpoints);
        }
        return Ok(upstream(
            id,
            vec![EndpointConfig {
                address: format!("{host}:{number}"),
                weight: 1,
                priority: 0,
            }],
        ));
    }
    let sp = find_port(&ports, port)
        .ok_or_else(|| Unresolved::NoPort(format!("Service {namespace}/{service} has no port {port}")))?;
    let port_name = sp.name.clone().unwrap_or_default();
    // Address → (priority, weight): an address in several slices keeps its best entry.
    let mut found: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for ps in &objects.endpoint_slices {
        let slice = &ps.slice;
        if slice.namespace().as_deref() != Some(namespace)
            || slice.labels().get(SERVICE_NAME_LABEL).map(String::as_str) != Some(service)
        {
            continue;
        }
        let ipv6 = match slice.address_type.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            _ => continue,
        };
        let Some(number) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.clone().unwrap_or_default() == port_name)
            .and_then(|p| p.port)
        else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            let c = ep.conditions.clone().unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            let serving = c.serving.unwrap_or(ready);
            let terminating = c.terminating.unwrap_or(false);
            let weight = if ready && !terminating {
                1
            } else if serving {
                0
            } else {
                continue;
            };
            for a in &ep.addresses {
                let address = if ipv6 {
                    format!("[{a}]:{number}")
                } else {
                    format!("{a}:{number}")
                };
                let entry = (ps.priority, weight);
                found
                    .entry(address)
                    .and_modify(|e| {
                        if (entry.0, std::cmp::Reverse(entry.1)) < (e.0, std::cmp::Reverse(e.1)) {
                            *e = entry;
                        }
                    })
                    .or_insert(entry);
            }
        }
    }
    if !found.values().any(|&(_, w)| w > 0) {
        return Err(Unresolved::NoEndpoints);
    }
    let endpoints = found
        .into_iter()
        .map(|(address, (priority, weight))| EndpointConfig {
            address,
            weight,
            priority,
        })
        .collect();
    Ok(upstream(id, endpoints))
}

/// An upstream `id` with `endpoints` and every other field at its default.
pub fn upstream(id: String, endpoints: Vec<EndpointConfig>) -> UpstreamConfig {
    UpstreamConfig {
        id,
        endpoints,
        load_balancing: Default::default(),
        protocol: Default::default(),
        tls: None,
        timeouts: Default::default(),
        keepalive: Default::default(),
        retries: Default::default(),
        outlier_detection: Default::default(),
        health_check: None,
        slow_start: None,
        overprovisioning_factor: 1.4,
        dns: Default::default(),
    }
}
