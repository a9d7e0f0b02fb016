//! The Gateway API translation (pure): GatewayClasses whose `controllerName` is Sluice's,
//! their Gateways' HTTP and HTTPS listeners, and the HTTPRoutes attached to them become
//! Sluice routes and upstreams; the status conditions each object should carry
//! (`Accepted`, `ResolvedRefs`, `Programmed`, with their reasons) are computed as data
//! for the runtime to write back (by the replica holding the Lease).
//!
//! # What maps to what
//!
//! | HTTPRoute | Sluice |
//! |---|---|
//! | `hostnames` ∩ the listener's `hostname` | `match.hosts` (exact and `*.` wildcards) |
//! | `matches[]` (ORed) | one route per match |
//! | path `Exact` / `PathPrefix` / `RegularExpression` | `match.path` `exact` / `prefix` / `regex` |
//! | headers, queryParams `Exact` / `RegularExpression` | `match.headers`, `match.query` `exact` / `regex` |
//! | `method` | `match.methods` |
//! | `backendRefs` (Service, port, weight) | `backends` (upstream `k8s.<ns>.<svc>.<port>`, weight) |
//! | `RequestHeaderModifier` / `ResponseHeaderModifier` | `headers.request` / `headers.response` |
//! | `RequestRedirect` | the `redirect` filter |
//! | `URLRewrite` `ReplaceFullPath` / `ReplacePrefixMatch` | `rewrite.path` / `rewrite {strip_prefix, prefix}` |
//! | `URLRewrite.hostname` | `headers.request.set.host` |
//! | `CORS` | the `cors` filter |
//! | `timeouts.request` / `timeouts.backendRequest` | `timeouts.total` / `timeouts.read` |
//! | `RequestMirror` (`backendRef`, `percent` / `fraction`) | the `mirror` filter (`upstream`, `percent`), when the build has it; else reported |
//!
//! # Route precedence
//!
//! The Gateway API orders matches by: an `Exact` path, then the longest `PathPrefix`, then
//! a method match, then the most header matches, then the most query matches; ties go to
//! the oldest route (`creationTimestamp`), then to `namespace/name` alphabetically, then
//! to the rule's and the match's order. Hostnames: the most specific wins (an exact host
//! over a wildcard). Sluice's router ranks host (exact, wildcard, none), then path
//! (exact, regex, longest prefix), then the *number* of method, header and query
//! conditions together, then `priority`, then config order. The translation emits routes
//! sorted by (creation time, namespace/name, rule, match), splits a match whose hosts
//! mix exact names and wildcards into two routes, and leaves `priority` at 0, so config
//! order breaks the remaining ties as the Gateway API does. One difference remains: a
//! match with a method and one header (2 conditions) outranks one with three headers in
//! Sluice, where the Gateway API ranks the method first only between matches with equal
//! paths. The runtime must keep the routes in the order given.
//!
//! # Not (yet) supported, reported
//!
//! `RequestMirror` when the build has no `mirror` filter kind, `ExtensionRef` filters (the rule answers
//! 500), per-backendRef filters (ignored), `RequestRedirect` with `ReplacePrefixMatch`
//! (the rule answers 500), cross-namespace references (no ReferenceGrant is read:
//! `RefNotPermitted`), `allowedRoutes.namespaces.from: Selector` (Namespaces are not
//! read), TLS `Passthrough`. Routes are not bound to one listener: Sluice's routes serve
//! every listener, so a route attached only to an HTTPS listener also answers on HTTP
//! with the same hosts.

use std::collections::{BTreeMap, BTreeSet};

use gateway_api::gateways::{Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom};
use gateway_api::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefs, HttpRouteRulesFilters,
    HttpRouteRulesFiltersRequestRedirectPathType, HttpRouteRulesFiltersType,
    HttpRouteRulesFiltersUrlRewritePathType, HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType,
    HttpRouteRulesMatchesPathType, HttpRouteRulesMatchesQueryParamsType,
};
use kube::ResourceExt;
use serde::Serialize;
use serde_json::json;
use sluice_config::model::{
    BackendConfig, FilterConfig, HeaderRules, PathMatch, Rewrite, RouteConfig, RouteMatch, Timeouts,
    UpstreamConfig, ValueMatch,
};
use sluice_config::RouteCheck;

use crate::endpoints::{service_upstream, PortRef, Unresolved};
use crate::{ClusterObjects, ObjectRef, Report, Translation};

/// The GatewayClass `controllerName` Sluice answers for.
pub const GATEWAY_CONTROLLER: &str = "sluice.dev/gateway-controller";

const GROUP: &str = "gateway.networking.k8s.io";

/// One status condition, as data: the runtime adds `observedGeneration` (the object's
/// generation given beside it) and `lastTransitionTime` (kept from the object's current
/// condition when type and status did not change) with [`Condition::to_k8s`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// `Accepted`, `ResolvedRefs`, `Programmed`, `Conflicted`, `PartiallyInvalid`.
    pub type_: String,
    /// `True` (true) or `False` (false).
    pub status: bool,
    /// The CamelCase reason, from the Gateway API's list for this type.
    pub reason: String,
    /// For people.
    pub message: String,
}

impl Condition {
    pub(crate) fn new(type_: &str, status: bool, reason: &str, message: impl Into<String>) -> Condition {
        Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// The Kubernetes condition, observed at `generation`, changed at `now`.
    pub fn to_k8s(
        &self,
        generation: Option<i64>,
        now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            last_transition_time: now,
            message: self.message.clone(),
            observed_generation: generation,
            reason: self.reason.clone(),
            status: if self.status { "True" } else { "False" }.into(),
            type_: self.type_.clone(),
        }
    }
}

/// The status of one of Sluice's GatewayClasses.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassStatus {
    /// The class.
    pub class: ObjectRef,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `Accepted`.
    pub conditions: Vec<Condition>,
}

/// The status of one listener of a Gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerStatus {
    /// The listener's name.
    pub name: String,
    /// Routes accepted on this listener (`attachedRoutes`).
    pub attached_routes: i32,
    /// The route kinds it takes (`supportedKinds`): `HTTPRoute` when valid.
    pub supported_kinds: Vec<String>,
    /// `Accepted`, `ResolvedRefs`, `Conflicted`, `Programmed`.
    pub conditions: Vec<Condition>,
}

/// The status of one Gateway of Sluice's classes.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayStatus {
    /// The Gateway.
    pub gateway: ObjectRef,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `Accepted`, `Programmed`.
    pub conditions: Vec<Condition>,
    /// One per listener, in the Gateway's order.
    pub listeners: Vec<ListenerStatus>,
}

/// A parentRef as the route wrote it, with defaults filled in (the `parentRef` of a
/// route's `status.parents[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    /// Default `gateway.networking.k8s.io`.
    pub group: String,
    /// Default `Gateway`.
    pub kind: String,
    /// Default: the route's namespace.
    pub namespace: String,
    /// The Gateway's name.
    pub name: String,
    /// The listener named, if any.
    pub section_name: Option<String>,
    /// The port named, if any.
    pub port: Option<i32>,
}

/// The status of an HTTPRoute for one of its parents that is Sluice's.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentStatus {
    /// The parent.
    pub parent_ref: ParentRef,
    /// `controllerName`: [`GATEWAY_CONTROLLER`] (or the name translated for).
    pub controller_name: String,
    /// `Accepted`, `ResolvedRefs`, and `PartiallyInvalid` when some rules were dropped.
    pub conditions: Vec<Condition>,
}

/// The status of one HTTPRoute: one entry per parentRef that names a Gateway of
/// Sluice's (parents of other controllers are left to them).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteStatus {
    /// The route.
    pub route: ObjectRef,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Per parentRef, in the route's order.
    pub parents: Vec<ParentStatus>,
}

/// A certificate a valid HTTPS listener serves: the runtime loads the Secret into the
/// listener (and rotates it when the Secret changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerCertificate {
    /// The Gateway.
    pub gateway: ObjectRef,
    /// The listener's name.
    pub listener: String,
    /// The listener's port.
    pub port: i32,
    /// The listener's hostname (the certificate's SNI name), if any.
    pub hostname: Option<String>,
    /// The Secret's namespace.
    pub secret_namespace: String,
    /// The Secret's name (type `kubernetes.io/tls`, with `tls.crt` and `tls.key`).
    pub secret_name: String,
}

/// What the Gateway API translation gives.
#[derive(Debug, Clone, Default)]
pub struct GatewayTranslation {
    /// Routes (in precedence order: keep it), upstreams and reports.
    pub translation: Translation,
    /// Status of Sluice's GatewayClasses.
    pub classes: Vec<ClassStatus>,
    /// Status of the Gateways of those classes.
    pub gateways: Vec<GatewayStatus>,
    /// Status of the HTTPRoutes attached to them.
    pub routes: Vec<RouteStatus>,
    /// Certificates of the valid HTTPS listeners (and TLS listeners in Terminate mode).
    pub certificates: Vec<ListenerCertificate>,
    /// The L4 and TLS part: TLSRoutes, TCPRoutes, UDPRoutes, BackendTLSPolicies and
    /// frontend client-certificate validation (see [`crate::gateway_l4`]).
    pub l4: crate::gateway_l4::L4Translation,
}

/// One listener, checked.
struct Listener<'a> {
    spec: &'a GatewayListeners,
    /// Accepted, refs resolved, not conflicted.
    valid: bool,
    /// Takes HTTPRoutes.
    takes_http_routes: bool,
    attached: i32,
}

struct OurGateway<'a> {
    namespace: String,
    name: String,
    listeners: Vec<Listener<'a>>,
}

/// Translates the Gateway API objects of `objects` for the controller `controller`
/// (normally [`GATEWAY_CONTROLLER`]). `kinds`, the route check the gateway hands over,
/// says which filter kinds this build has (a `RequestMirror` needs `mirror`).
pub fn translate(objects: &ClusterObjects, controller: &str, kinds: &dyn RouteCheck) -> GatewayTranslation {
    let mut out = GatewayTranslation::default();

    // Classes.
    let mut classes = BTreeSet::new();
    for class in &objects.gateway_classes {
        if class.spec.controller_name != controller {
            continue;
        }
        let name = class.name_any();
        let cond = if let Some(p) = &class.spec.parameters_ref {
            Condition::new(
                "Accepted",
                false,
                "InvalidParameters",
                format!("parametersRef {}/{} is not supported by Sluice", p.kind, p.name),
            )
        } else {
            classes.insert(name);
            Condition::new("Accepted", true, "Accepted", "handled by Sluice")
        };
        out.classes.push(ClassStatus {
            class: ObjectRef::of(class),
            generation: class.metadata.generation,
            conditions: vec![cond],
        });
    }

    // Gateways and their listeners.
    let mut gateways: Vec<OurGateway<'_>> = Vec::new();
    for gw in &objects.gateways {
        if !classes.contains(&gw.spec.gateway_class_name) {
            continue;
        }
        let namespace = gw.namespace().unwrap_or_default();
        let mut listeners = Vec::new();
        let mut statuses = Vec::new();
        for l in &gw.spec.listeners {
            let (listener, status) = check_listener(objects, gw, &namespace, l, &mut out.certificates);
            listeners.push(listener);
            statuses.push(status);
        }
        // Conflicts: one port, two protocols; or one port, protocol and hostname twice.
        for i in 0..listeners.len() {
            let a = listeners[i].spec;
            let conflict = gw.spec.listeners.iter().enumerate().find_map(|(j, b)| {
                let tls_pair = matches!(a.protocol.as_str(), "TLS" | "HTTPS")
                    && matches!(b.protocol.as_str(), "TLS" | "HTTPS");
                if i == j || a.port != b.port {
                    None
                } else if !crate::gateway_l4::compatible(&a.protocol, &b.protocol) {
                    Some("ProtocolConflict")
                } else if (a.protocol == b.protocol || tls_pair) && a.hostname == b.hostname {
                    Some("HostnameConflict")
                } else {
                    None
                }
            });
            let cond = match conflict {
                Some(reason) => {
                    listeners[i].valid = false;
                    Condition::new(
                        "Conflicted",
                        true,
                        reason,
                        format!("another listener uses port {}", a.port),
                    )
                }
                None => Condition::new("Conflicted", false, "NoConflicts", "no conflicts"),
            };
            statuses[i].conditions.push(cond);
        }
        for (l, s) in listeners.iter().zip(&mut statuses) {
            s.conditions.push(if l.valid {
                Condition::new("Programmed", true, "Programmed", "served by Sluice")
            } else {
                Condition::new("Programmed", false, "Invalid", "the listener is not valid")
            });
        }
        if !listeners.iter().all(|l| l.valid) {
            out.certificates.retain(|c| {
                !(c.gateway.name == gw.name_any()
                    && c.gateway.namespace == namespace
                    && listeners.iter().any(|l| !l.valid && l.spec.name == c.listener))
            });
        }
        let valid = listeners.iter().filter(|l| l.valid).count();
        let mut conditions = vec![if valid == listeners.len() {
            Condition::new("Accepted", true, "Accepted", "every listener is valid")
        } else if valid > 0 {
            Condition::new(
                "Accepted",
                true,
                "ListenersNotValid",
                "some listeners are not valid",
            )
        } else {
            Condition::new("Accepted", false, "ListenersNotValid", "no listener is valid")
        }];
        conditions.push(if valid > 0 {
            Condition::new("Programmed", true, "Programmed", "served by Sluice")
        } else {
            Condition::new("Programmed", false, "Invalid", "no listener is valid")
        });
        if crate::gateway_l4::insecure_frontend(gw) {
            conditions.push(Condition::new(
                "InsecureFrontendValidationMode",
                true,
                "ConfigurationChanged",
                "a listener accepts clients without a valid certificate (AllowInsecureFallback)",
            ));
        }
        if gw.spec.addresses.as_ref().is_some_and(|a| !a.is_empty()) {
            out.translation.reports.push(Report {
                object: ObjectRef::of(gw),
                reason: "UnsupportedAddress".into(),
                message: "spec.addresses is ignored: the Service in front of Sluice gives the address".into(),
            });
        }
        out.gateways.push(GatewayStatus {
            gateway: ObjectRef::of(gw),
            generation: gw.metadata.generation,
            conditions,
            listeners: statuses,
        });
        gateways.push(OurGateway {
            name: gw.name_any(),
            namespace,
            listeners,
        });
    }

    // Routes, oldest first (the Gateway API's tie-break), then namespace/name.
    let mut routes: Vec<&HttpRoute> = objects.http_routes.iter().collect();
    routes.sort_by_key(|r| {
        (
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            r.namespace().unwrap_or_default(),
            r.name_any(),
        )
    });
    let mut upstreams: BTreeMap<String, UpstreamConfig> = BTreeMap::new();
    for route in routes {
        translate_route(
            objects,
            controller,
            kinds,
            route,
            &mut gateways,
            &mut upstreams,
            &mut out,
        );
    }
    out.translation.upstreams = upstreams.into_values().collect();

    // attachedRoutes.
    for (gs, g) in out.gateways.iter_mut().zip(&gateways) {
        for (ls, l) in gs.listeners.iter_mut().zip(&g.listeners) {
            ls.attached_routes = l.attached;
        }
    }
    // TLSRoutes, TCPRoutes, UDPRoutes, frontend validation (adds their attachedRoutes).
    let ours: Vec<&Gateway> = objects
        .gateways
        .iter()
        .filter(|g| classes.contains(&g.spec.gateway_class_name))
        .collect();
    out.l4 = crate::gateway_l4::translate(objects, controller, &ours, &mut out.gateways);
    out
}

fn check_listener<'a>(
    objects: &ClusterObjects,
    gw: &Gateway,
    namespace: &str,
    l: &'a GatewayListeners,
    certificates: &mut Vec<ListenerCertificate>,
) -> (Listener<'a>, ListenerStatus) {
    if let Some(c) = crate::gateway_l4::check_listener(objects, gw, namespace, l, certificates) {
        let listener = Listener {
            spec: l,
            valid: c.valid,
            takes_http_routes: false,
            attached: 0,
        };
        let status = ListenerStatus {
            name: l.name.clone(),
            attached_routes: 0,
            supported_kinds: c.supported_kinds,
            conditions: c.conditions,
        };
        return (listener, status);
    }
    // Client-certificate validation of an HTTPS listener (the Gateway's
    // `tls.frontend`): CA references that do not resolve make it invalid.
    let frontend = if l.protocol == "HTTPS" {
        crate::gateway_l4::check_frontend(objects, gw, l)
    } else {
        Ok(())
    };
    let mut conditions = Vec::new();
    let protocol_ok = matches!(l.protocol.as_str(), "HTTP" | "HTTPS");
    conditions.push(if let (true, Err((_, m))) = (protocol_ok, &frontend) {
        Condition::new("Accepted", false, "NoValidCACertificate", m.clone())
    } else if protocol_ok {
        Condition::new("Accepted", true, "Accepted", "accepted")
    } else {
        Condition::new(
            "Accepted",
            false,
            "UnsupportedProtocol",
            format!("protocol {} is not supported (HTTP and HTTPS are)", l.protocol),
        )
    });
    // Route kinds: HTTPRoute by default for HTTP and HTTPS.
    let kinds = l.allowed_routes.as_ref().and_then(|a| a.kinds.clone());
    let takes_http_routes = match &kinds {
        None => protocol_ok,
        Some(k) => k
            .iter()
            .any(|k| k.kind == "HTTPRoute" && k.group.as_deref().unwrap_or(GROUP) == GROUP),
    };
    let bad_kinds: Vec<String> = kinds
        .iter()
        .flatten()
        .filter(|k| !(k.kind == "HTTPRoute" && k.group.as_deref().unwrap_or(GROUP) == GROUP))
        .map(|k| k.kind.clone())
        .collect();
    let mut resolved = if bad_kinds.is_empty() {
        Ok(())
    } else {
        Err((
            "InvalidRouteKinds",
            format!("route kinds {bad_kinds:?} are not supported (HTTPRoute is)"),
        ))
    };
    let mut certs = Vec::new();
    if l.protocol == "HTTPS" && resolved.is_ok() {
        resolved = https_certificates(objects, namespace, l, &mut certs);
    }
    if let (true, Err((reason, message))) = (resolved.is_ok(), &frontend) {
        resolved = Err((reason, message.clone()));
    }
    conditions.push(match &resolved {
        Ok(()) => Condition::new("ResolvedRefs", true, "ResolvedRefs", "references resolved"),
        Err((reason, message)) => Condition::new("ResolvedRefs", false, reason, message.clone()),
    });
    let valid = protocol_ok && resolved.is_ok() && takes_http_routes && frontend.is_ok();
    if valid {
        for (secret_namespace, secret_name) in certs {
            certificates.push(ListenerCertificate {
                gateway: ObjectRef::of(gw),
                listener: l.name.clone(),
                port: l.port,
                hostname: l.hostname.clone(),
                secret_namespace,
                secret_name,
            });
        }
    }
    let listener = Listener {
        spec: l,
        valid,
        takes_http_routes,
        attached: 0,
    };
    let status = ListenerStatus {
        name: l.name.clone(),
        attached_routes: 0,
        supported_kinds: if takes_http_routes {
            vec!["HTTPRoute".into()]
        } else {
            Vec::new()
        },
        conditions,
    };
    (listener, status)
}

/// The Secrets of an HTTPS listener, or why not.
fn https_certificates(
    objects: &ClusterObjects,
    namespace: &str,
    l: &GatewayListeners,
    certs: &mut Vec<(String, String)>,
) -> Result<(), (&'static str, String)> {
    let Some(tls) = &l.tls else {
        return Err((
            "InvalidCertificateRef",
            "an HTTPS listener needs tls.certificateRefs".into(),
        ));
    };
    if tls.mode.as_ref().is_some_and(|m| enum_str(m) == "Passthrough") {
        return Err((
            "InvalidCertificateRef",
            "TLS mode Passthrough is not supported".into(),
        ));
    }
    let refs = tls.certificate_refs.clone().unwrap_or_default();
    if refs.is_empty() {
        return Err((
            "InvalidCertificateRef",
            "an HTTPS listener needs tls.certificateRefs".into(),
        ));
    }
    for r in refs {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        if !group.is_empty() || kind != "Secret" {
            return Err((
                "InvalidCertificateRef",
                format!("certificateRef {group}/{kind} is not a Secret"),
            ));
        }
        let ns = r.namespace.clone().unwrap_or_else(|| namespace.to_string());
        if ns != namespace {
            return Err((
                "RefNotPermitted",
                format!(
                    "Secret {ns}/{} is in another namespace (ReferenceGrants are not supported)",
                    r.name
                ),
            ));
        }
        let Some(secret) = objects.secret(&ns, &r.name) else {
            return Err((
                "InvalidCertificateRef",
                format!("Secret {ns}/{} not found", r.name),
            ));
        };
        let data = secret.data.clone().unwrap_or_default();
        if !data.contains_key("tls.crt") || !data.contains_key("tls.key") {
            return Err((
                "InvalidCertificateRef",
                format!("Secret {ns}/{} has no tls.crt and tls.key", r.name),
            ));
        }
        certs.push((ns, r.name.clone()));
    }
    Ok(())
}

/// The hosts a route serves: `None` means any host.
type Hosts = Option<BTreeSet<String>>;

fn translate_route(
    objects: &ClusterObjects,
    controller: &str,
    kinds: &dyn RouteCheck,
    route: &HttpRoute,
    gateways: &mut [OurGateway<'_>],
    upstreams: &mut BTreeMap<String, UpstreamConfig>,
    out: &mut GatewayTranslation,
) {
    let namespace = route.namespace().unwrap_or_default();
    let name = route.name_any();
    let me = ObjectRef::of(route);
    let hostnames: Vec<String> = route
        .spec
        .hostnames
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();

    // Parents: acceptance per parentRef, hosts across every accepted listener.
    let mut parents = Vec::new();
    let mut hosts: Option<Hosts> = None; // None: not accepted anywhere yet
    for pr in route.spec.parent_refs.clone().unwrap_or_default() {
        let parent = parent_ref(&pr, &namespace);
        if parent.group != GROUP || parent.kind != "Gateway" {
            continue;
        }
        let Some(g) = gateways
            .iter_mut()
            .find(|g| g.name == parent.name && g.namespace == parent.namespace)
        else {
            continue; // not one of ours
        };
        let accepted = attach(&parent, &namespace, &hostnames, g, &mut hosts);
        parents.push((parent, accepted));
    }
    if parents.is_empty() {
        return;
    }

    // Rules.
    let mut resolved: Result<(), (String, String)> = Ok(());
    let mut dropped = Vec::new();
    let mut emitted = Vec::new();
    if let Some(hosts) = &hosts {
        let groups = host_groups(hosts);
        for (ri, rule) in route.spec.rules.clone().unwrap_or_default().iter().enumerate() {
            let parts = rule_parts(
                objects,
                kinds,
                &namespace,
                rule,
                &me,
                upstreams,
                &mut out.translation.reports,
                &mut resolved,
            );
            if let (Some(why), true) = (&parts.invalid, parts.unsupported) {
                dropped.push(format!("rule {ri}: {why}"));
            }
            let matches = rule.matches.clone().unwrap_or_default();
            let matches = if matches.is_empty() {
                vec![HttpRouteRulesMatches::default()]
            } else {
                matches
            };
            for (mi, m) in matches.iter().enumerate() {
                let mut base = match route_match(m) {
                    Ok(rm) => rm,
                    Err(e) => {
                        dropped.push(format!("rule {ri} match {mi}: {e}"));
                        continue;
                    }
                };
                for (gi, group) in groups.iter().enumerate() {
                    base.hosts = group.clone();
                    let mut id = format!("gw.{namespace}.{name}.{ri}.{mi}");
                    if gi > 0 {
                        id.push_str(".w");
                    }
                    emitted.push(parts.route(clean_id(&id), base.clone(), m));
                }
            }
        }
    }
    out.translation.routes.extend(emitted);

    // Status per parent.
    let resolved_cond = match &resolved {
        Ok(()) => Condition::new("ResolvedRefs", true, "ResolvedRefs", "every backendRef resolved"),
        Err((reason, message)) => Condition::new("ResolvedRefs", false, reason, message.clone()),
    };
    let rules = route.spec.rules.as_ref().map_or(0, Vec::len);
    let mut statuses = Vec::new();
    for (parent, accepted) in parents {
        let mut conditions = vec![match accepted {
            Ok(()) if rules > 0 && dropped.len() >= rules => {
                Condition::new("Accepted", false, "UnsupportedValue", dropped.join("; "))
            }
            Ok(()) => Condition::new("Accepted", true, "Accepted", "accepted"),
            Err((reason, message)) => Condition::new("Accepted", false, reason, message),
        }];
        conditions.push(resolved_cond.clone());
        if !dropped.is_empty() && rules > dropped.len() {
            conditions.push(Condition::new(
                "PartiallyInvalid",
                true,
                "UnsupportedValue",
                dropped.join("; "),
            ));
        }
        statuses.push(ParentStatus {
            parent_ref: parent,
            controller_name: controller.to_string(),
            conditions,
        });
    }
    for d in &dropped {
        out.translation.reports.push(Report {
            object: me.clone(),
            reason: "UnsupportedValue".into(),
            message: d.clone(),
        });
    }
    out.routes.push(RouteStatus {
        route: me,
        generation: route.metadata.generation,
        parents: statuses,
    });
}

fn parent_ref(pr: &HttpRouteParentRefs, namespace: &str) -> ParentRef {
    ParentRef {
        group: pr.group.clone().unwrap_or_else(|| GROUP.into()),
        kind: pr.kind.clone().unwrap_or_else(|| "Gateway".into()),
        namespace: pr.namespace.clone().unwrap_or_else(|| namespace.to_string()),
        name: pr.name.clone(),
        section_name: pr.section_name.clone(),
        port: pr.port,
    }
}

/// Attaches a route to the listeners `parent` selects; adds their hosts to `hosts`.
fn attach(
    parent: &ParentRef,
    route_ns: &str,
    hostnames: &[String],
    g: &mut OurGateway<'_>,
    hosts: &mut Option<Hosts>,
) -> Result<(), (&'static str, String)> {
    let selected: Vec<usize> = (0..g.listeners.len())
        .filter(|&i| {
            let l = g.listeners[i].spec;
            parent.section_name.as_ref().is_none_or(|s| *s == l.name)
                && parent.port.is_none_or(|p| p == l.port)
        })
        .collect();
    if selected.is_empty() {
        return Err((
            "NoMatchingParent",
            format!(
                "Gateway {}/{} has no listener {}{}",
                g.namespace,
                g.name,
                parent.section_name.as_deref().unwrap_or(""),
                parent.port.map(|p| format!(" on port {p}")).unwrap_or_default()
            ),
        ));
    }
    let mut allowed = 0;
    let mut matched = 0;
    for i in selected {
        let l = &g.listeners[i];
        if !l.valid || !l.takes_http_routes {
            continue;
        }
        let from = l
            .spec
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
            .and_then(|n| n.from.clone());
        let ns_ok = match from {
            None | Some(GatewayListenersAllowedRoutesNamespacesFrom::Same) => route_ns == g.namespace,
            Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => true,
            Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => false,
        };
        if !ns_ok {
            continue;
        }
        allowed += 1;
        let Some(these) = intersect(l.spec.hostname.as_deref(), hostnames) else {
            // Any host.
            *hosts = Some(None);
            matched += 1;
            g.listeners[i].attached += 1;
            continue;
        };
        if these.is_empty() {
            continue;
        }
        matched += 1;
        g.listeners[i].attached += 1;
        match hosts {
            Some(None) => {}
            Some(Some(set)) => set.extend(these),
            None => *hosts = Some(Some(these.into_iter().collect())),
        }
    }
    if allowed == 0 {
        Err((
            "NotAllowedByListeners",
            "no selected listener allows this route (namespace, kind, or an invalid listener)".into(),
        ))
    } else if matched == 0 {
        Err((
            "NoMatchingListenerHostname",
            "no hostname of the route matches a selected listener's hostname".into(),
        ))
    } else {
        Ok(())
    }
}

/// The hosts a listener hostname and a route's hostnames have in common: `None` for any
/// host, else the names (possibly none).
pub fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    match (listener.map(|l| l.to_ascii_lowercase()), route.is_empty()) {
        (None, true) => None,
        (None, false) => Some(route.to_vec()),
        (Some(l), true) => Some(vec![l]),
        (Some(l), false) => Some(route.iter().filter_map(|h| host_intersection(&l, h)).collect()),
    }
}

/// The more specific of two hostnames when one covers the other (`*.a.com` and
/// `x.a.com` give `x.a.com`; `*.a.com` and `*.x.a.com` give `*.x.a.com`).
fn host_intersection(a: &str, b: &str) -> Option<String> {
    let covers = |wild: &str, other: &str| -> bool {
        match wild.strip_prefix("*.") {
            Some(suffix) => other.strip_prefix("*.").map_or(
                other.len() > suffix.len() + 1 && other.ends_with(&format!(".{suffix}")),
                |o| o == suffix || o.ends_with(&format!(".{suffix}")),
            ),
            None => false,
        }
    };
    if a == b {
        Some(a.to_string())
    } else if covers(a, b) {
        Some(b.to_string())
    } else if covers(b, a) {
        Some(a.to_string())
    } else {
        None
    }
}

/// Hosts split so that exact names and wildcards are separate routes (Sluice ranks a
/// route with any exact host as exact).
fn host_groups(hosts: &Hosts) -> Vec<Vec<String>> {
    match hosts {
        None => vec![Vec::new()],
        Some(set) => {
            let (wild, exact): (Vec<String>, Vec<String>) =
                set.iter().cloned().partition(|h| h.starts_with("*."));
            [exact, wild].into_iter().filter(|g| !g.is_empty()).collect()
        }
    }
}

fn route_match(m: &HttpRouteRulesMatches) -> Result<RouteMatch, String> {
    let mut rm = RouteMatch::default();
    let path = m.path.clone().unwrap_or_default();
    let value = path.value.clone().unwrap_or_else(|| "/".into());
    rm.path = Some(
        match path.r#type.unwrap_or(HttpRouteRulesMatchesPathType::PathPrefix) {
            HttpRouteRulesMatchesPathType::Exact => PathMatch::Exact(value),
            HttpRouteRulesMatchesPathType::PathPrefix => PathMatch::Prefix(value),
            HttpRouteRulesMatchesPathType::RegularExpression => {
                regex_ok(&value)?;
                PathMatch::Regex(value)
            }
        },
    );
    if let Some(method) = &m.method {
        rm.methods.push(enum_str(method));
    }
    // Only the first match of a header name counts (the spec).
    let mut seen = BTreeSet::new();
    for h in m.headers.clone().unwrap_or_default() {
        if !seen.insert(h.name.to_ascii_lowercase()) {
            continue;
        }
        let regex = matches!(
            h.r#type,
            Some(HttpRouteRulesMatchesHeadersType::RegularExpression)
        );
        rm.headers.push(value_match(h.name, h.value, regex)?);
    }
    let mut seen = BTreeSet::new();
    for q in m.query_params.clone().unwrap_or_default() {
        if !seen.insert(q.name.clone()) {
            continue;
        }
        let regex = matches!(
            q.r#type,
            Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression)
        );
        rm.query.push(value_match(q.name, q.value, regex)?);
    }
    Ok(rm)
}

fn value_match(name: String, value: String, regex: bool) -> Result<ValueMatch, String> {
    if regex {
        regex_ok(&value)?;
    }
    Ok(ValueMatch {
        name,
        exact: (!regex).then(|| value.clone()),
        regex: regex.then_some(value),
        present: None,
    })
}

fn regex_ok(r: &str) -> Result<(), String> {
    regex_syntax::Parser::new()
        .parse(r)
        .map(|_| ())
        .map_err(|e| format!("invalid regular expression {r:?}: {e}"))
}

/// What a rule gives every route made from its matches.
#[derive(Default)]
struct RuleParts {
    backends: Vec<BackendConfig>,
    headers: HeaderRules,
    /// `URLRewrite` path: full, or the prefix replacing the matched one.
    rewrite_full: Option<String>,
    rewrite_prefix: Option<String>,
    filters: Vec<FilterConfig>,
    timeouts: Timeouts,
    /// Why the rule answers 500 instead.
    invalid: Option<String>,
    /// Whether `invalid` comes from a value Sluice does not support (a filter, a
    /// timeout): the route is then partially invalid. Backend problems are
    /// `ResolvedRefs`' business instead.
    unsupported: bool,
}

impl RuleParts {
    fn route(&self, id: String, matches: RouteMatch, m: &HttpRouteRulesMatches) -> RouteConfig {
        let mut r = RouteConfig {
            id,
            priority: 0,
            matches,
            upstream: None,
            backends: Vec::new(),
            timeouts: self.timeouts.clone(),
            rewrite: None,
            headers: self.headers.clone(),
            filters: self.filters.clone(),
            circuit_breaker: None,
            retries: None,
            limits: Default::default(),
            request_buffering: None,
            rollout: None,
            compression: None,
            cache: None,
            grpc_web: false,
            error_pages: None,
        };
        if let Some(why) = &self.invalid {
            r.headers = HeaderRules::default();
            r.filters = vec![direct(500, why)];
            return r;
        }
        let prefix_match = m.path.as_ref().is_none_or(|p| {
            p.r#type.is_none() || matches!(p.r#type, Some(HttpRouteRulesMatchesPathType::PathPrefix))
        });
        if let Some(p) = &self.rewrite_full {
            r.rewrite = Some(Rewrite {
                strip_prefix: false,
                prefix: None,
                path: Some(p.clone()),
                regex: None,
            });
        } else if let Some(p) = &self.rewrite_prefix {
            r.rewrite = Some(if prefix_match {
                Rewrite {
                    strip_prefix: true,
                    prefix: Some(p.clone()),
                    path: None,
                    regex: None,
                }
            } else {
                // ReplacePrefixMatch on an Exact match: the whole path is the prefix.
                Rewrite {
                    strip_prefix: false,
                    prefix: None,
                    path: Some(p.clone()),
                    regex: None,
                }
            });
        }
        if !r
            .filters
            .iter()
            .any(|f| f.kind == "redirect" || f.kind == "direct_response")
        {
            r.backends = self.backends.clone();
        }
        r
    }
}

fn direct(status: u16, why: &str) -> FilterConfig {
    FilterConfig {
        kind: "direct_response".into(),
        spec: json!({"status": status, "headers": {"content-type": "text/plain"}, "body": format!("{why}\n")}),
    }
}

// What the rule is read against (the objects, the kinds this build has) and what it
// adds to (upstreams, reports, the route's resolution).
#[allow(clippy::too_many_arguments)]
fn rule_parts(
    objects: &ClusterObjects,
    kinds: &dyn RouteCheck,
    namespace: &str,
    rule: &HttpRouteRules,
    me: &ObjectRef,
    upstreams: &mut BTreeMap<String, UpstreamConfig>,
    reports: &mut Vec<Report>,
    resolved: &mut Result<(), (String, String)>,
) -> RuleParts {
    let mut parts = RuleParts::default();
    let report = |reports: &mut Vec<Report>, reason: &str, message: String| {
        reports.push(Report {
            object: me.clone(),
            reason: reason.into(),
            message,
        })
    };
    let mut cors = None;
    let mut redirect = None;
    for f in rule.filters.clone().unwrap_or_default() {
        if let (HttpRouteRulesFiltersType::RequestMirror, Some(m)) = (&f.r#type, &f.request_mirror) {
            match mirror(objects, kinds, namespace, m, upstreams) {
                Ok(spec) => parts.filters.push(spec),
                Err(msg) => report(reports, "UnsupportedFilter", msg),
            }
            continue;
        }
        if let Err(e) = filter(&f, &mut parts, &mut cors, &mut redirect) {
            match e {
                FilterError::Unsupported(msg) => report(reports, "UnsupportedFilter", msg),
                FilterError::Invalid(msg) => {
                    parts.invalid.get_or_insert(msg);
                    parts.unsupported = true;
                }
            }
        }
    }
    if let Some(t) = &rule.timeouts {
        for (field, value, slot) in [
            ("request", &t.request, &mut parts.timeouts.total),
            ("backendRequest", &t.backend_request, &mut parts.timeouts.read),
        ] {
            if let Some(v) = value {
                match v.parse::<gateway_api::Duration>() {
                    Ok(d) if d.is_zero() => {}
                    Ok(d) => *slot = Some(std::time::Duration::from_millis(d.as_millis() as u64)),
                    Err(e) => {
                        parts
                            .invalid
                            .get_or_insert(format!("timeouts.{field} {v:?}: {e}"));
                        parts.unsupported = true;
                    }
                }
            }
        }
    }
    if let Some(c) = cors {
        parts.filters.push(c);
    }
    let answers = redirect.is_some();
    if let Some(r) = redirect {
        parts.filters.push(r);
    }

    // Backends.
    let refs = rule.backend_refs.clone().unwrap_or_default();
    let mut invalid = 0;
    let mut empty = 0;
    let mut zero = 0;
    for b in &refs {
        match backend(objects, namespace, b) {
            Ok(Some(u)) => {
                let weight = b.weight.unwrap_or(1).max(0) as u32;
                if weight == 0 {
                    zero += 1;
                }
                if b.filters.as_ref().is_some_and(|f| !f.is_empty()) {
                    report(
                        reports,
                        "UnsupportedFilter",
                        format!("filters of backendRef {} are not supported and ignored", b.name),
                    );
                }
                parts.backends.push(BackendConfig {
                    upstream: u.id.clone(),
                    weight,
                });
                upstreams.entry(u.id.clone()).or_insert(u);
            }
            Ok(None) => empty += 1,
            Err((reason, message)) => {
                invalid += 1;
                report(reports, reason, message.clone());
                if resolved.is_ok() {
                    *resolved = Err((reason.to_string(), message));
                }
            }
        }
    }
    if parts.invalid.is_none() && !answers {
        let serving = parts.backends.iter().any(|b| b.weight > 0);
        if !serving {
            parts.invalid = Some(if refs.is_empty() {
                "no backendRefs".to_string()
            } else if invalid > 0 {
                "no valid backendRef".to_string()
            } else if zero > 0 && empty == 0 {
                "every backendRef has weight 0".to_string()
            } else {
                String::new()
            });
            if parts.invalid.as_deref() == Some("") {
                // Resolved, but no endpoint is ready: 503, not an invalid rule.
                parts.invalid = None;
                parts.filters.push(direct(503, "no ready endpoint"));
            }
        }
    }
    parts
}

enum FilterError {
    /// Reported; the rule goes on without it.
    Unsupported(String),
    /// The rule answers 500.
    Invalid(String),
}

fn filter(
    f: &HttpRouteRulesFilters,
    parts: &mut RuleParts,
    cors: &mut Option<FilterConfig>,
    redirect: &mut Option<FilterConfig>,
) -> Result<(), FilterError> {
    match f.r#type {
        HttpRouteRulesFiltersType::RequestHeaderModifier => {
            let m = f.request_header_modifier.clone().unwrap_or_default();
            let ops = &mut parts.headers.request;
            for h in m.set.unwrap_or_default() {
                ops.set.insert(h.name.to_ascii_lowercase(), h.value);
            }
            for h in m.add.unwrap_or_default() {
                ops.add.insert(h.name.to_ascii_lowercase(), h.value);
            }
            ops.remove.extend(
                m.remove
                    .unwrap_or_default()
                    .into_iter()
                    .map(|h| h.to_ascii_lowercase()),
            );
        }
        HttpRouteRulesFiltersType::ResponseHeaderModifier => {
            let m = f.response_header_modifier.clone().unwrap_or_default();
            let ops = &mut parts.headers.response;
            for h in m.set.unwrap_or_default() {
                ops.set.insert(h.name.to_ascii_lowercase(), h.value);
            }
            for h in m.add.unwrap_or_default() {
                ops.add.insert(h.name.to_ascii_lowercase(), h.value);
            }
            ops.remove.extend(
                m.remove
                    .unwrap_or_default()
                    .into_iter()
                    .map(|h| h.to_ascii_lowercase()),
            );
        }
        HttpRouteRulesFiltersType::RequestRedirect => {
            let r = f.request_redirect.clone().unwrap_or_default();
            let mut spec = serde_json::Map::new();
            spec.insert("status".into(), json!(r.status_code.unwrap_or(302)));
            if let Some(s) = &r.scheme {
                spec.insert("scheme".into(), json!(enum_str(s).to_ascii_lowercase()));
            }
            if let Some(h) = &r.hostname {
                spec.insert("host".into(), json!(h));
            }
            if let Some(p) = r.port {
                spec.insert("port".into(), json!(p));
            }
            if let Some(p) = &r.path {
                match p.r#type {
                    HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath => {
                        spec.insert(
                            "path".into(),
                            json!(p.replace_full_path.clone().unwrap_or_default()),
                        );
                    }
                    HttpRouteRulesFiltersRequestRedirectPathType::ReplacePrefixMatch => {
                        return Err(FilterError::Invalid(
                            "RequestRedirect with ReplacePrefixMatch is not supported".into(),
                        ));
                    }
                }
            }
            *redirect = Some(FilterConfig {
                kind: "redirect".into(),
                spec: serde_json::Value::Object(spec),
            });
        }
        HttpRouteRulesFiltersType::UrlRewrite => {
            let r = f.url_rewrite.clone().unwrap_or_default();
            if let Some(h) = r.hostname {
                parts.headers.request.set.insert("host".into(), h);
            }
            if let Some(p) = r.path {
                match p.r#type {
                    HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath => {
                        parts.rewrite_full = Some(p.replace_full_path.unwrap_or_else(|| "/".into()));
                    }
                    HttpRouteRulesFiltersUrlRewritePathType::ReplacePrefixMatch => {
                        parts.rewrite_prefix = Some(p.replace_prefix_match.unwrap_or_else(|| "/".into()));
                    }
                }
            }
        }
        HttpRouteRulesFiltersType::Cors => {
            let c = f.cors.clone().unwrap_or_default();
            let origins = c.allow_origins.unwrap_or_default();
            if origins.is_empty() {
                return Err(FilterError::Unsupported(
                    "CORS without allowOrigins allows nothing; ignored".into(),
                ));
            }
            let mut spec = json!({
                "allow_origins": origins,
                "allow_credentials": c.allow_credentials.unwrap_or(false),
                "max_age": format!("{}s", c.max_age.unwrap_or(5).max(0)),
            });
            if let Some(m) = c.allow_methods {
                spec["allow_methods"] = json!(m);
            }
            if let Some(h) = c.allow_headers {
                spec["allow_headers"] = json!(h);
            }
            if let Some(h) = c.expose_headers {
                spec["expose_headers"] = json!(h);
            }
            *cors = Some(FilterConfig {
                kind: "cors".into(),
                spec,
            });
        }
        HttpRouteRulesFiltersType::RequestMirror => {
            return Err(FilterError::Unsupported(
                "RequestMirror without requestMirror is ignored".into(),
            ));
        }
        HttpRouteRulesFiltersType::ExtensionRef => {
            let e = f.extension_ref.clone().unwrap_or_default();
            return Err(FilterError::Invalid(format!(
                "ExtensionRef {}/{} {} is not supported",
                e.group, e.kind, e.name
            )));
        }
    }
    Ok(())
}

/// A `RequestMirror` filter as Sluice's `mirror` filter:
/// `{"mirror": {"upstream": <the Service port's upstream>, "percent": <percent, or
/// fraction × 100, default 100>}}`; the mirror's upstream joins the translation.
fn mirror(
    objects: &ClusterObjects,
    kinds: &dyn RouteCheck,
    namespace: &str,
    m: &gateway_api::httproutes::HttpRouteRulesFiltersRequestMirror,
    upstreams: &mut BTreeMap<String, UpstreamConfig>,
) -> Result<FilterConfig, String> {
    if !kinds.has_kind("mirror") {
        return Err(
            "RequestMirror is not supported by this build (no mirror filter); requests are not mirrored"
                .into(),
        );
    }
    let r = &m.backend_ref;
    let as_backend = HttpRouteRulesBackendRefs {
        group: r.group.clone(),
        kind: r.kind.clone(),
        name: r.name.clone(),
        namespace: r.namespace.clone(),
        port: r.port,
        ..Default::default()
    };
    let percent: f64 = match (&m.percent, &m.fraction) {
        (Some(p), _) => f64::from(*p),
        (None, Some(f)) => {
            let d = f.denominator.unwrap_or(100);
            if d <= 0 || f.numerator < 0 || f.numerator > d {
                return Err(format!(
                    "RequestMirror fraction {}/{d} is not valid; requests are not mirrored",
                    f.numerator
                ));
            }
            f64::from(f.numerator) * 100.0 / f64::from(d)
        }
        (None, None) => 100.0,
    };
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!(
            "RequestMirror percent {percent} is not in 0-100; requests are not mirrored"
        ));
    }
    match backend(objects, namespace, &as_backend) {
        Ok(Some(u)) => {
            let id = u.id.clone();
            upstreams.entry(id.clone()).or_insert(u);
            let percent = if percent.fract() == 0.0 {
                json!(percent as i64)
            } else {
                json!(percent)
            };
            Ok(FilterConfig {
                kind: "mirror".into(),
                spec: json!({"upstream": id, "percent": percent}),
            })
        }
        Ok(None) => Err(format!(
            "RequestMirror Service {} has no ready endpoint; requests are not mirrored",
            r.name
        )),
        Err((_, msg)) => Err(format!("RequestMirror: {msg}; requests are not mirrored")),
    }
}

/// A backendRef's upstream: `Ok(None)` when the Service has no ready endpoint.
fn backend(
    objects: &ClusterObjects,
    namespace: &str,
    b: &HttpRouteRulesBackendRefs,
) -> Result<Option<UpstreamConfig>, (&'static str, String)> {
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        return Err((
            "InvalidKind",
            format!("backendRef {group}/{kind} {} is not a Service", b.name),
        ));
    }
    let ns = b.namespace.clone().unwrap_or_else(|| namespace.to_string());
    if ns != namespace {
        return Err((
            "RefNotPermitted",
            format!(
                "Service {ns}/{} is in another namespace (ReferenceGrants are not supported)",
                b.name
            ),
        ));
    }
    let Some(port) = b.port else {
        return Err(("BackendNotFound", format!("backendRef {} names no port", b.name)));
    };
    let port = PortRef::Number(port);
    match service_upstream(objects, &ns, &b.name, &port) {
        Ok(u) => Ok(Some(u)),
        Err(Unresolved::NoEndpoints) => Ok(None),
        Err(e) => Err(("BackendNotFound", e.to_string())),
    }
}

/// A serde enum's wire name (`GET`, `Https`).
fn enum_str<T: Serialize>(t: &T) -> String {
    match serde_json::to_value(t) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// `id` as a Sluice id: 1-128 of `[A-Za-z0-9._-]`; a longer one keeps its start and a
/// hash of the whole. The L4 translation names its routes and listeners the same way.
pub(crate) fn clean_id(id: &str) -> String {
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.len() <= 128 {
        return clean;
    }
    // FNV-1a, stable across runs and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in clean.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}.{h:016x}", &clean[..110])
}

#[cfg(test)]
#[path = "gateway_api_tests.rs"]
mod tests;
