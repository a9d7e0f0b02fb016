//! The Gateway API watchers of one cluster: GatewayClasses (cluster-scoped; only those
//! whose `spec.controllerName` is [`GATEWAY_CONTROLLER`] are translated, filtered here
//! because the API server offers no field selector on it), and Gateways and HTTPRoutes
//! per watched namespace, with the same reflector pattern as the other kinds. When the
//! Gateway API CRDs are not installed the lists answer 404 and the watchers count as
//! listed with nothing, so an Ingress-only cluster is not held up.

use std::sync::Arc;

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::Client;
use tokio::sync::Notify;

use crate::gateway_api::GATEWAY_CONTROLLER;
use crate::source::{spawn_watch, WatchStats};

/// The reflector stores of one cluster's Gateway API objects.
#[derive(Default)]
pub(crate) struct GatewayStores {
    /// Every GatewayClass (filtered by controller at merge).
    pub classes: Vec<Store<GatewayClass>>,
    /// Gateways, one store per watched namespace.
    pub gateways: Vec<Store<Gateway>>,
    /// HTTPRoutes, one store per watched namespace.
    pub routes: Vec<Store<HttpRoute>>,
}

/// Starts the Gateway API watchers of one cluster (`namespaces`: `None` for all).
pub(crate) fn start(
    client: &Client,
    namespaces: &[Option<String>],
    base: &watcher::Config,
    wake: &Arc<Notify>,
    cluster: &str,
    stats: &mut Vec<Arc<WatchStats>>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> GatewayStores {
    let mut out = GatewayStores::default();
    let (s, st) = spawn_watch(
        Api::<GatewayClass>::all(client.clone()),
        base.clone(),
        wake.clone(),
        format!("{cluster}: gatewayclasses"),
        tasks,
    );
    out.classes.push(s);
    stats.push(st);
    for ns in namespaces {
        let at = ns.as_deref().unwrap_or("*");
        let (s, st) = spawn_watch(
            match ns {
                Some(ns) => Api::<Gateway>::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            },
            base.clone(),
            wake.clone(),
            format!("{cluster}: gateways in {at}"),
            tasks,
        );
        out.gateways.push(s);
        stats.push(st);
        let (s, st) = spawn_watch(
            match ns {
                Some(ns) => Api::<HttpRoute>::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            },
            base.clone(),
            wake.clone(),
            format!("{cluster}: httproutes in {at}"),
            tasks,
        );
        out.routes.push(s);
        stats.push(st);
    }
    out
}

/// The GatewayClasses that are Sluice's (`spec.controllerName` is
/// [`GATEWAY_CONTROLLER`]).
pub(crate) fn ours(classes: impl Iterator<Item = GatewayClass>) -> Vec<GatewayClass> {
    classes
        .filter(|c| c.spec.controller_name == GATEWAY_CONTROLLER)
        .collect()
}
