//! The Kubernetes [`Source`]: one set of watchers per cluster, their reflector stores
//! merged into one [`ClusterObjects`], translated, and published as resources under
//! the prefix `kubernetes`.
//!
//! - Per cluster (in-cluster config, or a kubeconfig path) and per watched namespace (or
//!   all), a `kube::runtime::watcher` with a reflector store for Ingress, Service,
//!   EndpointSlice (those with a `kubernetes.io/service-name` label) and Secret (type
//!   `kubernetes.io/tls`), and one for the cluster-scoped IngressClasses. The watcher
//!   lists in pages (`limit`, `continue`), watches from the list's resourceVersion with
//!   bookmarks, resumes from the last seen resourceVersion when a watch ends or drops,
//!   and lists again after a 410 Expired; the store keeps serving the last complete list
//!   meanwhile.
//! - Every change wakes the translator, which waits `debounce` for more, then merges the
//!   stores (clusters in priority order; EndpointSlices from all of them, at their
//!   cluster's priority), translates, checks each route on its own (a route that does
//!   not validate is left out and reported, so one bad Ingress does not block the
//!   others), and publishes the result if it changed. A change of endpoints only takes
//!   the gateway's endpoint fast path (no router recompile).
//! - Reports are logged once, and written once as `Warning` Events on their object in
//!   the cluster it came from.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Event as KubeEvent, EventSource, ObjectReference, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use sluice_config::certificates::InlineCertificate;
use sluice_config::kubernetes::{ClusterConfig, KubernetesConfig};
use sluice_config::model::{RouteConfig, UpstreamConfig};
use sluice_config::{ConfigErrors, RouteCheck};
use sluice_sources::{Content, Resources, Source, SourceContext, SourceState};
use tokio::sync::Notify;

use crate::objects::PrioritizedSlice;
use crate::{ClusterObjects, Report, Translation};

/// The prefix the source's resources are published under; errors name
/// `kubernetes/routes/<id>`.
pub const PREFIX: &str = "kubernetes";

/// Per-watcher counters for the status.
#[derive(Default)]
pub(crate) struct WatchStats {
    synced: AtomicBool,
    errors: AtomicU64,
    events: AtomicU64,
}

/// The stores of one cluster.
struct ClusterStores {
    cfg: ClusterConfig,
    client: Option<Client>,
    ingresses: Vec<Store<Ingress>>,
    classes: Vec<Store<IngressClass>>,
    services: Vec<Store<Service>>,
    slices: Vec<Store<EndpointSlice>>,
    secrets: Vec<Store<Secret>>,
    gateway: crate::gateway_watch::GatewayStores,
    l4: crate::l4_watch::L4Stores,
    policies: Vec<Store<crate::policy::SluicePolicy>>,
    stats: Vec<Arc<WatchStats>>,
    error: Option<String>,
}

impl ClusterStores {
    fn synced(&self) -> bool {
        self.client.is_some() && self.stats.iter().all(|s| s.synced.load(Ordering::Acquire))
    }
}

/// The Kubernetes config source.
pub struct KubernetesSource {
    cfg: KubernetesConfig,
    listeners: Vec<sluice_config::model::ListenerConfig>,
}

impl KubernetesSource {
    /// A source for the clusters of `cfg`.
    pub fn new(cfg: KubernetesConfig) -> Self {
        Self {
            cfg,
            listeners: Vec::new(),
        }
    }

    /// The Sluice listeners (bound at start) that Gateway listeners bind to by port.
    #[must_use]
    pub fn with_listeners(mut self, listeners: Vec<sluice_config::model::ListenerConfig>) -> Self {
        self.listeners = listeners;
        self
    }
}

/// Builds a client for one cluster.
pub async fn client_for(cluster: &ClusterConfig) -> Result<Client, String> {
    let config = match &cluster.kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).map_err(|e| format!("kubeconfig {path}: {e}"))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {path}: {e}"))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("in-cluster config: {e}"))?,
    };
    Client::try_from(config).map_err(|e| format!("client: {e}"))
}

pub(crate) fn spawn_watch<K>(
    api: Api<K>,
    wc: watcher::Config,
    wake: Arc<Notify>,
    what: String,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> (Store<K>, Arc<WatchStats>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stats = Arc::new(WatchStats::default());
    let st = stats.clone();
    let stream = reflector::reflector(writer, watcher::watcher(api, wc).default_backoff());
    tasks.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::InitDone) => {
                    st.synced.store(true, Ordering::Release);
                    tracing::debug!("kubernetes {what}: listed");
                    wake.notify_one();
                }
                Ok(Event::Apply(_) | Event::Delete(_)) => {
                    st.events.fetch_add(1, Ordering::Relaxed);
                    wake.notify_one();
                }
                Ok(Event::Init | Event::InitApply(_)) => {}
                Err(watcher::Error::InitialListFailed(kube::Error::Api(e))) if e.code == 404 => {
                    // The kind is not installed (the Gateway API CRDs): nothing to wait for.
                    if !st.synced.swap(true, Ordering::AcqRel) {
                        tracing::info!("kubernetes {what}: not served by the API server; none");
                        wake.notify_one();
                    }
                }
                Err(e) => {
                    st.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("kubernetes {what}: {e}; retrying");
                }
            }
        }
    }));
    (reader, stats)
}

async fn start_cluster(
    cfg: &KubernetesConfig,
    cluster: &ClusterConfig,
    wake: Arc<Notify>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> ClusterStores {
    let mut stores = ClusterStores {
        cfg: cluster.clone(),
        client: None,
        ingresses: Vec::new(),
        classes: Vec::new(),
        services: Vec::new(),
        slices: Vec::new(),
        secrets: Vec::new(),
        gateway: Default::default(),
        l4: Default::default(),
        policies: Vec::new(),
        stats: Vec::new(),
        error: None,
    };
    let client = match client_for(cluster).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("kubernetes cluster {}: {e}", cluster.name);
            stores.error = Some(e);
            return stores;
        }
    };
    let base = watcher::Config::default().page_size(cfg.page_size.max(1));
    let namespaces: Vec<Option<String>> = if cfg.namespaces.is_empty() {
        vec![None]
    } else {
        cfg.namespaces.iter().cloned().map(Some).collect()
    };
    let name = &cluster.name;
    fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    for ns in &namespaces {
        let at = ns.as_deref().unwrap_or("*");
        let (s, st) = spawn_watch(
            api::<Ingress>(&client, ns),
            base.clone(),
            wake.clone(),
            format!("{name}: ingresses in {at}"),
            tasks,
        );
        stores.ingresses.push(s);
        stores.stats.push(st);
        let (s, st) = spawn_watch(
            api::<Service>(&client, ns),
            base.clone(),
            wake.clone(),
            format!("{name}: services in {at}"),
            tasks,
        );
        stores.services.push(s);
        stores.stats.push(st);
        let (s, st) = spawn_watch(
            api::<EndpointSlice>(&client, ns),
            base.clone().labels(crate::endpoints::SERVICE_NAME_LABEL),
            wake.clone(),
            format!("{name}: endpointslices in {at}"),
            tasks,
        );
        stores.slices.push(s);
        stores.stats.push(st);
        let (s, st) = spawn_watch(
            api::<Secret>(&client, ns),
            base.clone().fields("type=kubernetes.io/tls"),
            wake.clone(),
            format!("{name}: secrets in {at}"),
            tasks,
        );
        stores.secrets.push(s);
        stores.stats.push(st);
        if cfg.policies {
            let (s, st) = spawn_watch(
                api::<crate::policy::SluicePolicy>(&client, ns),
                base.clone(),
                wake.clone(),
                format!("{name}: sluicepolicies in {at}"),
                tasks,
            );
            stores.policies.push(s);
            stores.stats.push(st);
        }
    }
    let (s, st) = spawn_watch(
        Api::<IngressClass>::all(client.clone()),
        base.clone(),
        wake.clone(),
        format!("{name}: ingressclasses"),
        tasks,
    );
    stores.classes.push(s);
    stores.stats.push(st);
    stores.gateway =
        crate::gateway_watch::start(&client, &namespaces, &base, &wake, name, &mut stores.stats, tasks);
    stores.l4 = crate::l4_watch::start(&client, &namespaces, &base, &wake, name, &mut stores.stats, tasks);
    stores.client = Some(client);
    stores
}

fn key<K: ResourceExt>(k: &K) -> (String, String) {
    (k.namespace().unwrap_or_default(), k.name_any())
}

/// Merges the stores of every cluster (in priority order): the first cluster holding an
/// object wins, EndpointSlices are kept from all. Returns the objects and, for each
/// object uid, the index of the cluster it came from.
fn merge(clusters: &[ClusterStores]) -> (ClusterObjects, HashMap<String, usize>) {
    fn take<K: Resource<DynamicType = ()> + Clone>(
        stores: &[Store<K>],
        out: &mut BTreeMap<(String, String), K>,
        origin: &mut HashMap<String, usize>,
        ci: usize,
    ) {
        for s in stores {
            for obj in s.state() {
                if let std::collections::btree_map::Entry::Vacant(e) = out.entry(key(obj.as_ref())) {
                    if let Some(uid) = obj.uid() {
                        origin.insert(uid, ci);
                    }
                    e.insert(obj.as_ref().clone());
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..clusters.len()).collect();
    order.sort_by_key(|&i| clusters[i].cfg.priority);
    let mut origin = HashMap::new();
    let (mut ing, mut cls, mut svc, mut sec) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let mut pol = BTreeMap::new();
    let mut slices = Vec::new();
    let (mut gw_classes, mut gateways, mut http_routes) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let (mut tls_routes, mut tcp_routes, mut udp_routes) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let (mut tls_policies, mut grants, mut config_maps) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for &ci in &order {
        let c = &clusters[ci];
        take(&c.ingresses, &mut ing, &mut origin, ci);
        take(&c.classes, &mut cls, &mut origin, ci);
        take(&c.services, &mut svc, &mut origin, ci);
        take(&c.secrets, &mut sec, &mut origin, ci);
        take(&c.gateway.classes, &mut gw_classes, &mut origin, ci);
        take(&c.gateway.gateways, &mut gateways, &mut origin, ci);
        take(&c.gateway.routes, &mut http_routes, &mut origin, ci);
        take(&c.policies, &mut pol, &mut origin, ci);
        take(&c.l4.tls_routes, &mut tls_routes, &mut origin, ci);
        take(&c.l4.tcp_routes, &mut tcp_routes, &mut origin, ci);
        take(&c.l4.udp_routes, &mut udp_routes, &mut origin, ci);
        take(&c.l4.policies, &mut tls_policies, &mut origin, ci);
        take(&c.l4.grants, &mut grants, &mut origin, ci);
        take(&c.l4.config_maps, &mut config_maps, &mut origin, ci);
        let mut mine: Vec<_> = c.slices.iter().flat_map(Store::state).collect();
        mine.sort_by_key(|s| key(s.as_ref()));
        slices.extend(mine.into_iter().map(|s| PrioritizedSlice {
            priority: c.cfg.priority,
            slice: s.as_ref().clone(),
        }));
    }
    let objects = ClusterObjects {
        ingresses: ing.into_values().collect(),
        ingress_classes: cls.into_values().collect(),
        services: svc.into_values().collect(),
        endpoint_slices: slices,
        secrets: sec.into_values().collect(),
        gateway_classes: crate::gateway_watch::ours(gw_classes.into_values()),
        gateways: gateways.into_values().collect(),
        http_routes: http_routes.into_values().collect(),
        policies: pol.into_values().collect(),
        tls_routes: tls_routes.into_values().collect(),
        tcp_routes: tcp_routes.into_values().collect(),
        udp_routes: udp_routes.into_values().collect(),
        backend_tls_policies: tls_policies.into_values().collect(),
        reference_grants: grants.into_values().collect(),
        config_maps: config_maps.into_values().collect(),
        listeners: Vec::new(),
    };
    (objects, origin)
}

/// What is wrong with one route checked alone with `upstreams` (those it names), by the
/// one validation path (`sluice_config::check`): the model's checks, then `kinds` (the
/// route check the gateway hands over). Paths are those of the probe config the route
/// sits alone in (`routes[0].filters[1].rate_limit.per`).
pub fn route_errors(
    r: &RouteConfig,
    upstreams: Vec<UpstreamConfig>,
    kinds: &dyn RouteCheck,
) -> Result<(), ConfigErrors> {
    let config = sluice_config::Config {
        listeners: vec![sluice_config::model::ListenerConfig::new(
            "check",
            std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
        )],
        routes: vec![r.clone()],
        upstreams,
        ..Default::default()
    };
    sluice_config::check::validate(&config, kinds)
}

/// Checks each route with the upstreams it names, alone ([`route_errors`]): a route that
/// does not validate (an annotation value the model refuses, a filter spec its kind
/// refuses) is left out and reported.
pub fn check_routes(t: &mut Translation, objects: &ClusterObjects, kinds: &dyn RouteCheck) {
    let upstreams: BTreeMap<&str, &UpstreamConfig> = t.upstreams.iter().map(|u| (u.id.as_str(), u)).collect();
    let mut keep: Vec<RouteConfig> = Vec::new();
    let mut reports = Vec::new();
    for r in &t.routes {
        let named = route_upstreams(r)
            .iter()
            .filter_map(|id| upstreams.get(id.as_str()).map(|u| (*u).clone()))
            .collect();
        let Err(errors) = route_errors(r, named, kinds) else {
            keep.push(r.clone());
            continue;
        };
        let errors: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        if let Some(obj) = owner_of(&r.id, objects) {
            reports.push(Report {
                object: obj,
                reason: "InvalidRoute".into(),
                message: format!("route {} left out: {}", r.id, errors.join("; ")),
            });
        } else {
            tracing::warn!("kubernetes: route {} left out: {}", r.id, errors.join("; "));
        }
    }
    t.routes = keep;
    t.reports.extend(reports);
    // Upstreams no route names any more are dropped.
    let mut named: BTreeSet<String> = t.routes.iter().flat_map(route_upstreams).collect();
    named.extend(
        t.l4_routes
            .iter()
            .flat_map(|r| r.backend_list().into_iter().map(|b| b.upstream)),
    );
    t.upstreams.retain(|u| named.contains(&u.id));
}

/// The upstreams a route names: its backends, and the targets of its `mirror` filters.
fn route_upstreams(r: &RouteConfig) -> Vec<String> {
    let mut ids: Vec<String> = r.backend_list().into_iter().map(|b| b.upstream).collect();
    ids.extend(
        r.filters
            .iter()
            .filter(|f| f.kind == "mirror")
            .filter_map(|f| f.spec["upstream"].as_str().map(str::to_string)),
    );
    ids
}

/// The Ingress a route id (`k8s.<ns>.<name>.…`) came from.
fn owner_of(route: &str, objects: &ClusterObjects) -> Option<crate::ObjectRef> {
    if let Some(rest) = route.strip_prefix("gw.") {
        return objects.http_routes.iter().find_map(|r| {
            let (ns, name) = key(r);
            rest.starts_with(&format!("{ns}.{name}."))
                .then(|| crate::ObjectRef::of(r))
        });
    }
    let rest = route.strip_prefix("k8s.")?;
    objects.ingresses.iter().find_map(|i| {
        let (ns, name) = key(i);
        rest.starts_with(&format!("{ns}.{name}."))
            .then(|| crate::ObjectRef::of(i))
    })
}

/// Translates the merged objects: the Ingresses of `class` and the Gateway API objects
/// of [`crate::gateway_api::GATEWAY_CONTROLLER`].
pub fn translate_all(objects: &ClusterObjects, class: &str, kinds: &dyn RouteCheck) -> Translation {
    translate_with_status(objects, class, kinds).0
}

/// [`translate_all`], with the Gateway API translation's statuses beside it (its
/// `translation` left empty: its routes, upstreams and reports are in the first).
/// Route ids never collide (`k8s.…` for Ingresses, `gw.…` for HTTPRoutes); an upstream
/// is one Service port (`k8s.<ns>.<svc>.<port>`) whichever object names it, so an id
/// both give is kept once.
pub fn translate_with_status(
    objects: &ClusterObjects,
    class: &str,
    kinds: &dyn RouteCheck,
) -> (Translation, crate::gateway_api::GatewayTranslation) {
    let mut t = crate::ingress::translate(objects, class);
    let mut g = crate::gateway_api::translate(objects, crate::gateway_api::GATEWAY_CONTROLLER, kinds);
    let gt = std::mem::take(&mut g.translation);
    t.routes.extend(gt.routes);
    let mut known: BTreeSet<String> = t.upstreams.iter().map(|u| u.id.clone()).collect();
    t.upstreams
        .extend(gt.upstreams.into_iter().filter(|u| !known.contains(&u.id)));
    t.reports.extend(gt.reports);
    // The L4 part: its routes, its upstreams (shared by id), client certificates.
    known.extend(t.upstreams.iter().map(|u| u.id.clone()));
    t.upstreams.extend(
        std::mem::take(&mut g.l4.upstreams)
            .into_iter()
            .filter(|u| !known.contains(&u.id)),
    );
    t.l4_routes = std::mem::take(&mut g.l4.l4_routes);
    t.client_auth = std::mem::take(&mut g.l4.client_auth);
    t.reports.extend(std::mem::take(&mut g.l4.reports));
    // BackendTLSPolicies apply to every upstream of their Services, HTTP and L4.
    let parents = crate::gateway_l4::upstream_gateways(objects, &g, &t);
    g.l4.policies = crate::gateway_l4::backend_tls(objects, &mut t.upstreams, &parents);
    check_routes(&mut t, objects, kinds);
    (t, g)
}

fn resources(t: &Translation, certs: &[InlineCertificate], revision: i64) -> Resources {
    // Handed on as JSON to the composition, which reads it back: secrets (a TLS
    // Secret's key, a filter spec's) must come through as they are, not redacted.
    sluice_config::secret::reveal(|| resources_revealed(t, certs, revision))
}

fn resources_revealed(t: &Translation, certs: &[InlineCertificate], revision: i64) -> Resources {
    let to_value = |v: Result<Value, serde_json::Error>| v.unwrap_or(Value::Null);
    Resources {
        routes: t
            .routes
            .iter()
            .map(|r| (r.id.clone(), to_value(serde_json::to_value(r))))
            .collect(),
        upstreams: t
            .upstreams
            .iter()
            .map(|u| (u.id.clone(), to_value(serde_json::to_value(u))))
            .collect(),
        consumers: BTreeMap::new(),
        certificates: certs
            .iter()
            .map(|c| (c.name.clone(), to_value(serde_json::to_value(c))))
            .collect(),
        l4_routes: t
            .l4_routes
            .iter()
            .map(|r| (r.id.clone(), to_value(serde_json::to_value(r))))
            .collect(),
        client_auth: t
            .client_auth
            .iter()
            .map(|a| (a.name.clone(), to_value(serde_json::to_value(a))))
            .collect(),
        errors: Vec::new(),
        revision,
    }
}

async fn post_event(client: Client, report: Report) {
    let ns = if report.object.namespace.is_empty() {
        "default".to_string()
    } else {
        report.object.namespace.clone()
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let ev = KubeEvent {
        metadata: kube::api::ObjectMeta {
            generate_name: Some(format!("{}.", report.object.name)),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(report.object.api_version.clone()),
            kind: Some(report.object.kind.clone()),
            name: Some(report.object.name.clone()),
            namespace: (!report.object.namespace.is_empty()).then(|| report.object.namespace.clone()),
            uid: (!report.object.uid.is_empty()).then(|| report.object.uid.clone()),
            ..Default::default()
        },
        reason: Some(report.reason.clone()),
        message: Some(report.message.clone()),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some("sluice".into()),
            host: None,
        }),
        reporting_component: Some("sluice.dev/ingress-controller".into()),
        reporting_instance: Some(hostname()),
        action: Some("Translate".into()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        ..Default::default()
    };
    let api: Api<KubeEvent> = Api::namespaced(client, &ns);
    if let Err(e) = api.create(&PostParams::default(), &ev).await {
        tracing::warn!("kubernetes: cannot write the event on {}: {e}", report.object);
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .or_else(|_| std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()))
        .unwrap_or_else(|_| "sluice".into())
}

fn status(
    cfg: &KubernetesConfig,
    clusters: &[ClusterStores],
    t: Option<&Translation>,
    publishes: u64,
) -> Value {
    json!({
        "kind": "kubernetes",
        "ingress_class": cfg.ingress_class,
        "namespaces": cfg.namespaces,
        "clusters": clusters.iter().map(|c| json!({
            "name": c.cfg.name,
            "priority": c.cfg.priority,
            "synced": c.synced(),
            "error": c.error,
            "watch_errors": c.stats.iter().map(|s| s.errors.load(Ordering::Relaxed)).sum::<u64>(),
            "events": c.stats.iter().map(|s| s.events.load(Ordering::Relaxed)).sum::<u64>(),
        })).collect::<Vec<_>>(),
        "routes": t.map_or(0, |t| t.routes.len()),
        "upstreams": t.map_or(0, |t| t.upstreams.len()),
        "reports": t.map_or(0, |t| t.reports.len()),
        "publishes": publishes,
    })
}

#[async_trait::async_trait]
impl Source for KubernetesSource {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn describe(&self) -> String {
        let names: Vec<&str> = self.cfg.clusters.iter().map(|c| c.name.as_str()).collect();
        format!("kubernetes:{}", names.join(","))
    }

    fn initial(&self) -> SourceState {
        SourceState {
            connected: Some(false),
            status: status(&self.cfg, &[], None, 0),
            ..SourceState::default()
        }
    }

    async fn run(self: Box<Self>, ctx: SourceContext) {
        let wake = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        let mut clusters = Vec::new();
        for c in &self.cfg.clusters {
            clusters.push(start_cluster(&self.cfg, c, wake.clone(), &mut tasks).await);
        }
        let statuses = self
            .cfg
            .status
            .write
            .then(|| start_status(&self.cfg, &clusters, &mut tasks));
        let _abort = AbortAll(tasks);
        // The first publish: once every cluster has listed everything, or at the sync
        // timeout with what the others said.
        let deadline = tokio::time::Instant::now() + self.cfg.sync_timeout;
        loop {
            if clusters.iter().all(ClusterStores::synced) {
                break;
            }
            if tokio::time::timeout_at(deadline, wake.notified()).await.is_err() {
                let late: Vec<&str> = clusters
                    .iter()
                    .filter(|c| !c.synced())
                    .map(|c| c.cfg.name.as_str())
                    .collect();
                tracing::warn!(
                    "kubernetes: clusters {late:?} not listed after {:?}; serving what the others say",
                    self.cfg.sync_timeout
                );
                break;
            }
        }
        let mut last: Option<Resources> = None;
        let mut seen_reports: BTreeSet<Report> = BTreeSet::new();
        let mut publishes = 0u64;
        let mut revision = 0i64;
        let mut policies_good = crate::policy::LastGood::new();
        loop {
            let (mut objects, origin) = merge(&clusters);
            objects.listeners.clone_from(&self.listeners);
            let (mut t, desired) = translate_with_status(&objects, &self.cfg.ingress_class, &*ctx.check);
            // TLS Secrets as listener certificates (see `tls_certs`).
            let (certs, cert_reports) = crate::tls_certs::collect(
                &objects,
                &self.cfg.ingress_class,
                &desired.certificates,
                self.cfg.tls_listener.as_deref(),
            );
            t.reports.extend(cert_reports);
            // SluicePolicies onto the routes, checked (a bad one keeps its last good
            // version, see `policy`).
            crate::policy::attach(
                &mut t,
                &objects,
                &objects.policies,
                &mut policies_good,
                &*ctx.check,
            );
            if let Some((snapshots, _)) = &statuses {
                snapshots.send_replace(Arc::new(crate::status::StatusSnapshot {
                    classes: objects.gateway_classes.clone(),
                    gateways: objects.gateways.clone(),
                    routes: objects.http_routes.clone(),
                    origin: origin.clone(),
                    desired,
                    others: crate::status::Watched::of(&objects),
                }));
            }
            for r in &t.reports {
                if seen_reports.insert(r.clone()) {
                    tracing::warn!(object = %r.object, reason = %r.reason, "kubernetes: {}", r.message);
                    if self.cfg.events {
                        let ci = origin.get(&r.object.uid).copied().unwrap_or(0);
                        if let Some(client) = clusters.get(ci).and_then(|c| c.client.clone()) {
                            tokio::spawn(post_event(client, r.clone()));
                        }
                    }
                }
            }
            // Forget reports that no longer hold, so they are reported again if they come back.
            let now: BTreeSet<&Report> = t.reports.iter().collect();
            seen_reports.retain(|r| now.contains(r));
            let res = resources(&t, &certs, revision + 1);
            let changed = last.as_ref().is_none_or(|l| {
                l.routes != res.routes
                    || l.upstreams != res.upstreams
                    || l.certificates != res.certificates
                    || l.l4_routes != res.l4_routes
                    || l.client_auth != res.client_auth
            });
            let synced = clusters.iter().all(ClusterStores::synced);
            if changed {
                revision += 1;
                publishes += 1;
                let st = status(&self.cfg, &clusters, Some(&t), publishes);
                ctx.out.publish(
                    Content::Resources {
                        prefix: PREFIX.into(),
                        resources: Arc::new(res.clone()),
                    },
                    |s| {
                        s.revision = Some(revision);
                        s.connected = Some(synced);
                        s.status = st;
                    },
                );
                last = Some(res);
            } else {
                let st = status(&self.cfg, &clusters, Some(&t), publishes);
                ctx.out.update(|s| {
                    s.connected = Some(synced);
                    s.status = st;
                });
            }
            if ctx.out.is_closed() {
                return;
            }
            wake.notified().await;
            // Gather a burst into one translation.
            tokio::time::sleep(self.cfg.debounce).await;
        }
    }
}

/// Starts one Lease election per reachable cluster and the status writer. Returns the
/// writer's snapshot channel and the election senders of unreachable clusters (held so
/// their receivers stay quiet).
#[allow(clippy::type_complexity)]
fn start_status(
    cfg: &KubernetesConfig,
    clusters: &[ClusterStores],
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> (
    tokio::sync::watch::Sender<Arc<crate::status::StatusSnapshot>>,
    Vec<tokio::sync::watch::Sender<bool>>,
) {
    let settings = crate::lease::LeaseSettings::from_config(&cfg.status);
    let mut held = Vec::new();
    let mut writers = Vec::new();
    for c in clusters {
        let (tx, rx) = tokio::sync::watch::channel(false);
        if let Some(client) = &c.client {
            tasks.push(tokio::spawn(crate::lease::run(
                client.clone(),
                settings.clone(),
                tx,
            )));
        } else {
            held.push(tx);
        }
        writers.push(crate::status::StatusCluster {
            client: c.client.clone(),
            leader: rx,
        });
    }
    let (snapshots, rx) = tokio::sync::watch::channel(Arc::new(crate::status::StatusSnapshot::default()));
    tasks.push(tokio::spawn(crate::status::run(
        writers,
        rx,
        crate::gateway_api::GATEWAY_CONTROLLER.to_string(),
        settings.identity,
    )));
    (snapshots, held)
}

/// Aborts the watch tasks when the source ends.
struct AbortAll(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortAll {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
