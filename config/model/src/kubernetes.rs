//! The `kubernetes` section: which clusters the Kubernetes source watches, and what it
//! takes from them (see `docs/kubernetes.md`). Changing it needs a restart.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The IngressClass controller name Sluice answers for: an IngressClass whose
/// `spec.controller` is this is Sluice's, whatever its name.
pub const INGRESS_CONTROLLER: &str = "sluice.dev/ingress-controller";

/// The Kubernetes source: Ingresses, Services, EndpointSlices and TLS Secrets of one or
/// more clusters become routes and upstreams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The clusters to watch. The same Service in several clusters becomes one upstream
    /// whose endpoints carry each cluster's `priority`. Default: one cluster named
    /// `local`, from the in-cluster service account (or `$KUBECONFIG`), priority 0.
    #[serde(default = "default_clusters")]
    pub clusters: Vec<ClusterConfig>,
    /// Namespaces to watch. Default: none, meaning every namespace.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// The IngressClass name Sluice serves. An Ingress is Sluice's when its
    /// `spec.ingressClassName` (or its `kubernetes.io/ingress.class` annotation) is this,
    /// or names an IngressClass whose controller is `sluice.dev/ingress-controller`, or it
    /// names no class and Sluice's IngressClass is marked
    /// `ingressclass.kubernetes.io/is-default-class: "true"`. Default: `sluice`.
    #[serde(default = "default_ingress_class")]
    pub ingress_class: String,
    /// How many objects one list request asks for (`limit`; further pages follow with
    /// `continue`). Default: `500`.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// How long changes are gathered before they are translated and published, so a
    /// burst of object changes becomes one config. Default: `20ms`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(default = "default_debounce", with = "humantime_serde")]
    pub debounce: Duration,
    /// At start, how long to wait for every cluster's first complete list before
    /// publishing what the clusters that answered say. Default: `10s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(default = "default_sync_timeout", with = "humantime_serde")]
    pub sync_timeout: Duration,
    /// Write a Kubernetes Event (type `Warning`) on every object with an unsupported
    /// annotation or an unresolvable reference, besides logging it. Default: `true`.
    #[serde(default = "default_true")]
    pub events: bool,
    /// The TLS listener (by name) that serves the certificates of TLS Secrets (Ingress
    /// `spec.tls`, Gateway HTTPS listeners). Default: none, meaning every TLS listener.
    #[serde(default)]
    pub tls_listener: Option<String>,
    /// Watch `SluicePolicy` objects (the CRD in `deploy/`) and attach them to Ingresses
    /// and HTTPRoutes. Turn it off in a cluster without the CRD: the first publish waits
    /// for every watcher's first list (up to `sync_timeout`). Default: `true`.
    #[serde(default = "default_true")]
    pub policies: bool,
    /// Writing the Gateway API status back (GatewayClass, Gateway, HTTPRoute), by the one
    /// replica holding a `coordination.k8s.io/v1` Lease. Default: on, Lease
    /// `sluice-status` in `$POD_NAMESPACE` (or `default`), 15s, renewed every 2s.
    #[serde(default)]
    pub status: StatusConfig,
}

/// `kubernetes.status`: status write-back and the Lease that elects the one replica
/// doing it (one Lease per cluster, in that cluster).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// Write status back at all. When off, no Lease is taken either. Default: `true`.
    #[serde(default = "default_true")]
    pub write: bool,
    /// The Lease's name. Default: `sluice-status`.
    #[serde(default = "default_lease_name")]
    pub lease_name: String,
    /// The Lease's namespace. Default: none, meaning `$POD_NAMESPACE`, else `default`.
    #[serde(default)]
    pub lease_namespace: Option<String>,
    /// How long a Lease holds without renewal (`leaseDurationSeconds`, whole seconds, at
    /// least 1s); another replica takes it over after this. Default: `15s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(default = "default_lease_duration", with = "humantime_serde")]
    pub lease_duration: Duration,
    /// How often the holder renews, and the others check, the Lease. Must be shorter
    /// than `lease_duration`. Default: `2s`.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(default = "default_lease_retry", with = "humantime_serde")]
    pub retry_period: Duration,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            write: true,
            lease_name: default_lease_name(),
            lease_namespace: None,
            lease_duration: default_lease_duration(),
            retry_period: default_lease_retry(),
        }
    }
}

fn default_lease_name() -> String {
    "sluice-status".into()
}

fn default_lease_duration() -> Duration {
    Duration::from_secs(15)
}

fn default_lease_retry() -> Duration {
    Duration::from_secs(2)
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            clusters: default_clusters(),
            namespaces: Vec::new(),
            ingress_class: default_ingress_class(),
            page_size: default_page_size(),
            debounce: default_debounce(),
            sync_timeout: default_sync_timeout(),
            events: true,
            status: StatusConfig::default(),
            tls_listener: None,
            policies: true,
        }
    }
}

/// One cluster the source watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// A short name, unique among the clusters, for logs and the admin API. Required.
    pub name: String,
    /// Path of a kubeconfig file (its current context is used). Default: none, meaning
    /// the in-cluster service account, or `$KUBECONFIG` / `~/.kube/config` outside a
    /// cluster.
    #[serde(default)]
    pub kubeconfig: Option<String>,
    /// The priority level this cluster's endpoints get: `0` for the local cluster, `1`
    /// for the one to fail over to, and so on. Default: `0`.
    #[serde(default)]
    pub priority: u32,
}

fn default_clusters() -> Vec<ClusterConfig> {
    vec![ClusterConfig {
        name: "local".into(),
        kubeconfig: None,
        priority: 0,
    }]
}

fn default_ingress_class() -> String {
    "sluice".into()
}

fn default_page_size() -> u32 {
    500
}

fn default_debounce() -> Duration {
    Duration::from_millis(20)
}

fn default_sync_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_true() -> bool {
    true
}
