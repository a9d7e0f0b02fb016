//! The watchers of one cluster for the L4 and TLS part of the Gateway API: TLSRoutes,
//! TCPRoutes, UDPRoutes, BackendTLSPolicies and ReferenceGrants, and the ConfigMaps
//! that hold CA bundles (`ca.crt`), per watched namespace, with the same reflector
//! pattern as the other kinds. A kind the API server does not serve (its CRD is not
//! installed) counts as listed with nothing.

use std::sync::Arc;

use gateway_api::backendtlspolicies::BackendTlsPolicy;
use gateway_api::referencegrants::ReferenceGrant;
use gateway_api::tlsroutes::TlsRoute;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::Client;
use tokio::sync::Notify;

use crate::l4_types::{TcpRoute, UdpRoute};
use crate::source::{spawn_watch, WatchStats};

/// The reflector stores of one cluster's L4 objects, one per watched namespace each.
#[derive(Default)]
pub(crate) struct L4Stores {
    pub tls_routes: Vec<Store<TlsRoute>>,
    pub tcp_routes: Vec<Store<TcpRoute>>,
    pub udp_routes: Vec<Store<UdpRoute>>,
    pub policies: Vec<Store<BackendTlsPolicy>>,
    pub grants: Vec<Store<ReferenceGrant>>,
    pub config_maps: Vec<Store<ConfigMap>>,
}

fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Starts the watchers of one cluster (`namespaces`: `None` for all).
pub(crate) fn start(
    client: &Client,
    namespaces: &[Option<String>],
    base: &watcher::Config,
    wake: &Arc<Notify>,
    cluster: &str,
    stats: &mut Vec<Arc<WatchStats>>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> L4Stores {
    let mut out = L4Stores::default();
    for ns in namespaces {
        let at = ns.as_deref().unwrap_or("*");
        macro_rules! watch {
            ($ty:ty, $field:ident, $what:literal) => {{
                let (s, st) = spawn_watch(
                    api::<$ty>(client, ns),
                    base.clone(),
                    wake.clone(),
                    format!("{cluster}: {} in {at}", $what),
                    tasks,
                );
                out.$field.push(s);
                stats.push(st);
            }};
        }
        watch!(TlsRoute, tls_routes, "tlsroutes");
        watch!(TcpRoute, tcp_routes, "tcproutes");
        watch!(UdpRoute, udp_routes, "udproutes");
        watch!(BackendTlsPolicy, policies, "backendtlspolicies");
        watch!(ReferenceGrant, grants, "referencegrants");
        watch!(ConfigMap, config_maps, "configmaps");
    }
    out
}
