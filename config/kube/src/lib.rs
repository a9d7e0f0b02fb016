//! Sluice's Kubernetes config source.
//!
//! - [`objects`]: [`ClusterObjects`], the set of Kubernetes objects one translation reads
//!   (Ingresses, IngressClasses, Services, EndpointSlices, Secrets, and the Gateway API
//!   objects), gathered from every watched cluster, and [`Report`], what a translation
//!   says about an object it could not take as it is.
//! - [`endpoints`]: a Service port resolved to the endpoints of its EndpointSlices, the
//!   shared upstream shape every translation uses.
//! - [`gateway_api`]: the pure Gateway API translation (GatewayClass, Gateway, HTTPRoute)
//!   and the status conditions to write back; [`gateway_l4`]: its L4 and TLS part
//!   (TLSRoute, TCPRoute, UDPRoute, BackendTLSPolicy, frontend client certificates),
//!   with the v1 TCPRoute and UDPRoute types of [`l4_types`].
//! - [`lease`]: leader election on a `coordination.k8s.io/v1` Lease; [`status`]: the
//!   Gateway API statuses written back by the leader, only when they change.
//! - [`ingress`]: the pure `networking.k8s.io/v1` Ingress translation, with the
//!   supported ingress-nginx annotations.
//! - [`policy`]: `SluicePolicy` objects attached to the routes of Ingresses and
//!   HTTPRoutes (auth, rate limit, breaker).
//! - [`tls_certs`]: the TLS Secrets Ingresses and Gateways name, as the config's inline
//!   listener certificates (rotated by the gateway without a restart).
//!
//! Every translation has one shape:
//! `fn translate(objects: &ClusterObjects) -> Translation` (routes, upstreams, reports).

pub mod endpoints;
pub mod gateway_api;
pub mod gateway_l4;
mod gateway_watch;
pub mod ingress;
pub mod l4_types;
mod l4_watch;
pub mod lease;
pub mod objects;
pub mod policy;
pub mod source;
pub mod status;
#[cfg(test)]
mod test_kinds;
pub mod tls_certs;

pub use objects::{ClusterObjects, ObjectRef, Report, Translation};
pub use source::KubernetesSource;
