//! TCPRoute and UDPRoute at `gateway.networking.k8s.io/v1` (Standard since Gateway API
//! v1.6). The `gateway-api` crate 0.22 has them only at `v1alpha2` (its experimental
//! channel), so their v1 shape is defined here, with the fields Sluice reads; the
//! status is kept as JSON (the status writer merges into it).

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// A route's reference to its parent (a Gateway, maybe one listener of it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// Default `gateway.networking.k8s.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Default `Gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Default: the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The parent's name.
    pub name: String,
    /// The listener's name. Default: every listener that takes the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// The listener's port. Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// A backend of a rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// Default `""` (core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Default `Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The backend's name.
    pub name: String,
    /// Default: the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Default `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

/// One rule of a TCPRoute or UDPRoute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L4Rule {
    /// The rule's name. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The backends. Default: none.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

/// The spec of a TCPRoute or UDPRoute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L4RouteSpec {
    /// The parents. Default: none.
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    /// The rules (one, in practice). Default: none.
    #[serde(default)]
    pub rules: Vec<L4Rule>,
}

macro_rules! l4_route_kind {
    ($ty:ident, $kind:literal, $plural:literal) => {
        #[doc = concat!("A `", $kind, "` (`gateway.networking.k8s.io/v1`).")]
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        pub struct $ty {
            /// Standard metadata.
            #[serde(default)]
            pub metadata: ObjectMeta,
            /// The spec.
            #[serde(default)]
            pub spec: L4RouteSpec,
            /// The status, as JSON. Default: null.
            #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
            pub status: serde_json::Value,
        }

        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                "gateway.networking.k8s.io".into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                "v1".into()
            }
            fn api_version(_: &()) -> Cow<'_, str> {
                "gateway.networking.k8s.io/v1".into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

l4_route_kind!(TcpRoute, "TCPRoute", "tcproutes");
l4_route_kind!(UdpRoute, "UDPRoute", "udproutes");
