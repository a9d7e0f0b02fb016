//! The `networking.k8s.io/v1` Ingress translation (pure): Ingresses of Sluice's class
//! become routes and upstreams, with the supported ingress-nginx annotations.

use crate::{ClusterObjects, Translation};

/// Routes and upstreams for every Ingress of `class` (see
/// `KubernetesConfig::ingress_class`) in `objects`, and reports on what could not be
/// taken as written.
pub fn translate(objects: &ClusterObjects, class: &str) -> Translation {
    let _ = (objects, class);
    Translation::default()
}
