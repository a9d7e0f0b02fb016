//! The objects a translation reads, and what it reports back.

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::ResourceExt;
use sluice_config::model::{RouteConfig, UpstreamConfig};

/// One EndpointSlice and the priority level of the cluster it came from (`0` for the
/// local cluster, `1` for the next, from `kubernetes.clusters[].priority`).
#[derive(Debug, Clone)]
pub struct PrioritizedSlice {
    /// The cluster's priority level. Default: `0`.
    pub priority: u32,
    /// The slice.
    pub slice: EndpointSlice,
}

/// Every Kubernetes object a translation reads, from every watched cluster, already
/// filtered by the source's namespace filter. Objects of the same kind, namespace and
/// name from several clusters appear once, from the cluster of lowest priority level,
/// except EndpointSlices, which are kept from every cluster with their priority (so one
/// Service in two clusters becomes one upstream with endpoints at two levels).
///
/// Each list is sorted by namespace and name, so a translation is deterministic.
#[derive(Debug, Clone, Default)]
pub struct ClusterObjects {
    /// `networking.k8s.io/v1` Ingresses. Default: none.
    pub ingresses: Vec<Ingress>,
    /// IngressClasses (cluster-scoped). Default: none.
    pub ingress_classes: Vec<IngressClass>,
    /// Services. Default: none.
    pub services: Vec<Service>,
    /// EndpointSlices, with their cluster's priority level. Default: none.
    pub endpoint_slices: Vec<PrioritizedSlice>,
    /// Secrets of type `kubernetes.io/tls`. Default: none.
    pub secrets: Vec<Secret>,
    /// Gateway API GatewayClasses (cluster-scoped). Default: none.
    pub gateway_classes: Vec<GatewayClass>,
    /// Gateway API Gateways. Default: none.
    pub gateways: Vec<Gateway>,
    /// Gateway API HTTPRoutes. Default: none.
    pub http_routes: Vec<HttpRoute>,
    /// `SluicePolicy` objects (`sluice.dev/v1alpha1`). Default: none.
    pub policies: Vec<crate::policy::SluicePolicy>,
    /// Gateway API TLSRoutes (`v1`). Default: none.
    pub tls_routes: Vec<gateway_api::tlsroutes::TlsRoute>,
    /// Gateway API TCPRoutes (`v1`). Default: none.
    pub tcp_routes: Vec<crate::l4_types::TcpRoute>,
    /// Gateway API UDPRoutes (`v1`). Default: none.
    pub udp_routes: Vec<crate::l4_types::UdpRoute>,
    /// Gateway API BackendTLSPolicies (`v1`). Default: none.
    pub backend_tls_policies: Vec<gateway_api::backendtlspolicies::BackendTlsPolicy>,
    /// Gateway API ReferenceGrants. Default: none.
    pub reference_grants: Vec<gateway_api::referencegrants::ReferenceGrant>,
    /// ConfigMaps (CA bundles of BackendTLSPolicies and frontend validation, key
    /// `ca.crt`). Default: none.
    pub config_maps: Vec<k8s_openapi::api::core::v1::ConfigMap>,
    /// Not Kubernetes objects: Sluice's own listeners (from the file config, bound at
    /// start), which Gateway listeners bind to by port. Default: none.
    pub listeners: Vec<sluice_config::model::ListenerConfig>,
}

impl ClusterObjects {
    /// The Service `namespace/name`, if known.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name) && s.namespace().as_deref() == Some(namespace))
    }

    /// The Secret `namespace/name`, if known.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&Secret> {
        self.secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name) && s.namespace().as_deref() == Some(namespace))
    }
}

/// A Kubernetes object a report is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// `apiVersion`, e.g. `networking.k8s.io/v1`.
    pub api_version: String,
    /// `kind`, e.g. `Ingress`.
    pub kind: String,
    /// Namespace; empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid`, when known (the Event's `involvedObject.uid`). Default: empty.
    pub uid: String,
}

impl ObjectRef {
    /// The reference to an object of type `K`.
    pub fn of<K>(obj: &K) -> ObjectRef
    where
        K: kube::Resource<DynamicType = ()>,
    {
        ObjectRef {
            api_version: K::api_version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            namespace: obj.meta().namespace.clone().unwrap_or_default(),
            name: obj.meta().name.clone().unwrap_or_default(),
            uid: obj.meta().uid.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// What a translation says about one object: something it ignored or could not take as
/// written (an unsupported annotation, a Service that does not exist). The source logs
/// every report and writes it as a Kubernetes Event (type `Warning`) on the object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Report {
    /// The object.
    pub object: ObjectRef,
    /// A short CamelCase reason, the Event's `reason` (`UnsupportedAnnotation`).
    pub reason: String,
    /// What happened, for people.
    pub message: String,
}

/// What a translation gives: routes and upstreams for the config, and reports.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    /// Routes, with ids unique within the translation.
    pub routes: Vec<RouteConfig>,
    /// Upstreams, with ids unique within the translation.
    pub upstreams: Vec<UpstreamConfig>,
    /// Reports on objects.
    pub reports: Vec<Report>,
    /// L4 routes (TLSRoutes, TCPRoutes, UDPRoutes), with ids unique within the
    /// translation.
    pub l4_routes: Vec<sluice_config::l4::L4RouteConfig>,
    /// Client-certificate policies (a Gateway's frontend validation).
    pub client_auth: Vec<sluice_config::l4::ClientAuthPolicy>,
}
