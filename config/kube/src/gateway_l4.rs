//! The L4 and TLS part of the Gateway API translation (pure): Gateway listeners of
//! protocol `TCP`, `UDP` and `TLS`, the TLSRoutes, TCPRoutes and UDPRoutes attached to
//! them, BackendTLSPolicies, and a Gateway's frontend client-certificate validation;
//! with the status each object should carry.
//!
//! # Listeners
//!
//! Sluice binds its listeners at start, from the file config. A Gateway listener is
//! served by the Sluice listener whose public port (`public_port`, else the `listen`
//! port) is the Gateway listener's `port` and whose protocol fits: `tcp` for `TCP`,
//! `udp` for `UDP`, `tls` or HTTPS for `TLS`. A Gateway listener with no such Sluice
//! listener is `Accepted: False` (`PortUnavailable`), so it never claims to be served.
//!
//! | Gateway API | Sluice |
//! |---|---|
//! | `TCP` listener + TCPRoute | `l4_routes[]` on the `tcp` listener (the oldest route; later ones are attached but not served) |
//! | `UDP` listener + UDPRoute | `l4_routes[]` on the `udp` listener (likewise) |
//! | `TLS` listener, `mode: Passthrough` + TLSRoute | `l4_routes[]` with `tls: passthrough`, `server_names` = route hostnames ∩ listener hostname |
//! | `TLS` listener, `mode: Terminate` + TLSRoute | `l4_routes[]` with `tls: terminate`; the listener's `certificateRefs` as inline certificates |
//! | `backendRefs` (Service, port, weight) | `backends` (upstream `k8s.<ns>.<svc>.<port>`, weight) |
//! | BackendTLSPolicy (`targetRefs` Service [+ port name]) | the upstreams of that Service (port): `tls` with `sni: hostname`, `ca_pem` (ConfigMap or Secret `ca.crt`), `subject_alt_names` |
//! | Gateway `spec.tls.frontend` (`default`, `perPort`) | `client_auth[]` on the HTTPS listeners of those ports (`AllowInsecureFallback`: `mode: allow_invalid`) |
//!
//! Cross-namespace `backendRefs` need a ReferenceGrant (`RefNotPermitted` otherwise).

use std::collections::{BTreeMap, BTreeSet};

use gateway_api::gateways::{Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom};
use kube::{Resource, ResourceExt};
use serde_json::Value;
use sluice_config::l4::{
    ClientAuthConfig, ClientAuthMode, ClientAuthPolicy, L4RouteConfig, L4TlsMode, ListenerProtocol,
    SubjectAltName,
};
use sluice_config::model::{BackendConfig, ListenerConfig, UpstreamConfig, UpstreamTls};

use crate::endpoints::{service_upstream, upstream_id, PortRef, Unresolved};
use crate::gateway_api::{
    clean_id, intersect, Condition, ListenerCertificate, ParentRef, ParentStatus, RouteStatus,
};
use crate::l4_types::{BackendRef, ParentReference};
use crate::{ClusterObjects, ObjectRef, Report};

const GROUP: &str = "gateway.networking.k8s.io";

/// The route kind a Gateway listener of `protocol` takes, if it is an L4 one.
pub fn l4_kind(protocol: &str) -> Option<&'static str> {
    match protocol {
        "TCP" => Some("TCPRoute"),
        "UDP" => Some("UDPRoute"),
        "TLS" => Some("TLSRoute"),
        _ => None,
    }
}

/// Whether two Gateway listener protocols may share a port: the same one, TLS with
/// HTTPS (both routed by SNI), or TCP-based with UDP.
pub fn compatible(a: &str, b: &str) -> bool {
    a == b || matches!((a, b), ("TLS", "HTTPS") | ("HTTPS", "TLS")) || (a == "UDP") != (b == "UDP")
}

/// The TLS mode of a Gateway `TLS` listener (`Terminate` by default, as the API says).
fn listener_mode(l: &GatewayListeners) -> L4TlsMode {
    let mode = l.tls.as_ref().and_then(|t| serde_json::to_value(&t.mode).ok());
    match mode.as_ref().and_then(Value::as_str) {
        Some("Passthrough") => L4TlsMode::Passthrough,
        _ => L4TlsMode::Terminate,
    }
}

/// The Sluice listener that serves Gateway listener `l`, if any.
pub fn sluice_listener<'a>(objects: &'a ClusterObjects, l: &GatewayListeners) -> Option<&'a ListenerConfig> {
    let port = u16::try_from(l.port).ok()?;
    objects.listeners.iter().find(|s| {
        s.gateway_port() == port
            && match l.protocol.as_str() {
                "TCP" => s.protocol == ListenerProtocol::Tcp,
                "UDP" => s.protocol == ListenerProtocol::Udp,
                "TLS" => {
                    s.protocol == ListenerProtocol::Tls
                        || (s.protocol == ListenerProtocol::Http && s.tls.is_some())
                }
                "HTTPS" => s.protocol == ListenerProtocol::Http && s.tls.is_some(),
                "HTTP" => s.protocol == ListenerProtocol::Http && s.tls.is_none(),
                _ => false,
            }
    })
}

/// The checked state of an L4 Gateway listener, for the Gateway's status.
#[derive(Debug, Clone)]
pub struct L4ListenerCheck {
    /// Accepted, refs resolved (not yet checked for conflicts).
    pub valid: bool,
    /// `supportedKinds`.
    pub supported_kinds: Vec<String>,
    /// `Accepted` and `ResolvedRefs`.
    pub conditions: Vec<Condition>,
}

/// Checks Gateway listener `l` when it is an L4 one (`TCP`, `UDP`, `TLS`); `None`
/// otherwise. A valid `TLS` listener in `Terminate` mode adds its certificates.
pub fn check_listener(
    objects: &ClusterObjects,
    gw: &Gateway,
    namespace: &str,
    l: &GatewayListeners,
    certificates: &mut Vec<ListenerCertificate>,
) -> Option<L4ListenerCheck> {
    let kind = l4_kind(&l.protocol)?;
    let kinds = l.allowed_routes.as_ref().and_then(|a| a.kinds.clone());
    let (supported, bad): (Vec<String>, Vec<String>) = match &kinds {
        None => (vec![kind.to_string()], Vec::new()),
        Some(k) => {
            let mut ok = Vec::new();
            let mut bad = Vec::new();
            for x in k {
                if x.kind == kind && x.group.as_deref().unwrap_or(GROUP) == GROUP {
                    ok.push(x.kind.clone());
                } else {
                    bad.push(x.kind.clone());
                }
            }
            (ok, bad)
        }
    };
    let mut accepted = Ok(());
    let mut resolved = Ok(());
    if !bad.is_empty() {
        resolved = Err((
            "InvalidRouteKinds",
            format!(
                "route kinds {bad:?} are not supported on a {} listener ({kind} is)",
                l.protocol
            ),
        ));
    }
    let mut certs = Vec::new();
    if l.protocol == "TLS" && listener_mode(l) == L4TlsMode::Terminate {
        let refs = l
            .tls
            .as_ref()
            .and_then(|t| t.certificate_refs.clone())
            .unwrap_or_default();
        if refs.is_empty() {
            accepted = Err((
                "InvalidTLSConfig",
                "a Terminate listener needs certificateRefs".into(),
            ));
        }
        for r in refs {
            let ns = r.namespace.clone().unwrap_or_else(|| namespace.to_string());
            let kind_ok = r.group.as_deref().unwrap_or("").is_empty()
                && r.kind.as_deref().unwrap_or("Secret") == "Secret";
            if !kind_ok {
                resolved = Err((
                    "InvalidCertificateRef",
                    format!("certificateRef {} is not a Secret", r.name),
                ));
            } else if ns != namespace
                && !granted(objects, GROUP, "Gateway", namespace, "", "Secret", &ns, &r.name)
            {
                resolved = Err((
                    "RefNotPermitted",
                    format!("Secret {ns}/{} needs a ReferenceGrant", r.name),
                ));
            } else if objects
                .secret(&ns, &r.name)
                .is_none_or(|s| crate::tls_certs::secret_pem(s).is_err())
            {
                resolved = Err((
                    "InvalidCertificateRef",
                    format!("Secret {ns}/{} is missing or not a TLS Secret", r.name),
                ));
            } else {
                certs.push((ns, r.name.clone()));
            }
        }
    }
    if accepted.is_ok() && sluice_listener(objects, l).is_none() {
        accepted = Err((
            "PortUnavailable",
            format!(
                "no Sluice listener with public port {} for {} (add one to the file config: protocol {})",
                l.port,
                l.protocol,
                match l.protocol.as_str() {
                    "TCP" => "tcp",
                    "UDP" => "udp",
                    _ => "tls, or an HTTPS listener",
                }
            ),
        ));
    }
    let mut conditions = vec![match &accepted {
        Ok(()) => Condition::new("Accepted", true, "Accepted", "accepted"),
        Err((r, m)) => Condition::new("Accepted", false, r, m.clone()),
    }];
    conditions.push(match &resolved {
        Ok(()) => Condition::new("ResolvedRefs", true, "ResolvedRefs", "references resolved"),
        Err((r, m)) => Condition::new("ResolvedRefs", false, r, m.clone()),
    });
    let valid = accepted.is_ok() && resolved.is_ok() && !supported.is_empty();
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
    Some(L4ListenerCheck {
        valid,
        supported_kinds: supported,
        conditions,
    })
}

/// Whether a ReferenceGrant in `to_ns` lets `from_kind` objects of `from_ns` refer to
/// `to_kind` `to_name` there.
#[allow(clippy::too_many_arguments)]
pub fn granted(
    objects: &ClusterObjects,
    from_group: &str,
    from_kind: &str,
    from_ns: &str,
    to_group: &str,
    to_kind: &str,
    to_ns: &str,
    to_name: &str,
) -> bool {
    objects
        .reference_grants
        .iter()
        .filter(|g| g.namespace().as_deref() == Some(to_ns))
        .any(|g| {
            g.spec
                .from
                .iter()
                .any(|f| f.group == from_group && f.kind == from_kind && f.namespace == from_ns)
                && g.spec.to.iter().any(|t| {
                    t.group == to_group && t.kind == to_kind && t.name.as_deref().is_none_or(|n| n == to_name)
                })
        })
}

/// The CA certificates a `caCertificateRefs` entry names: `Err((reason kind, message))`
/// where the kind is `"kind"` (not a ConfigMap or Secret) or `"ref"` (missing, no
/// `ca.crt`, not PEM, or not granted).
fn ca_pem(
    objects: &ClusterObjects,
    from_kind: &str,
    namespace: &str,
    r: &Value,
) -> Result<String, (&'static str, String)> {
    let group = r["group"].as_str().unwrap_or("");
    let kind = r["kind"].as_str().unwrap_or("");
    let name = r["name"].as_str().unwrap_or("");
    let ns = r["namespace"].as_str().unwrap_or(namespace);
    if !group.is_empty() || !matches!(kind, "ConfigMap" | "Secret") {
        return Err((
            "kind",
            format!("caCertificateRef {group}/{kind} {name} is not a ConfigMap or Secret"),
        ));
    }
    if ns != namespace && !granted(objects, GROUP, from_kind, namespace, "", kind, ns, name) {
        return Err((
            "ref",
            format!("{kind} {ns}/{name} is in another namespace, with no ReferenceGrant"),
        ));
    }
    let pem = match kind {
        "ConfigMap" => objects
            .config_maps
            .iter()
            .find(|c| c.name_any() == name && c.namespace().as_deref() == Some(ns))
            .and_then(|c| c.data.as_ref()?.get("ca.crt").cloned()),
        _ => objects.secret(ns, name).and_then(|s| {
            s.data
                .as_ref()?
                .get("ca.crt")
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        }),
    };
    let Some(pem) = pem else {
        return Err(("ref", format!("{kind} {ns}/{name} not found, or has no ca.crt")));
    };
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err((
            "ref",
            format!("{kind} {ns}/{name}: ca.crt holds no PEM CERTIFICATE"),
        ));
    }
    Ok(pem)
}

/// A Gateway's frontend client-certificate validation for `port`: the per-port entry,
/// else the default. `None` when the Gateway asks for none.
fn frontend_validation(gw: &Gateway, port: i32) -> Option<Value> {
    let v = serde_json::to_value(gw.spec.tls.as_ref()?.frontend.as_ref()?).ok()?;
    let per_port = v["perPort"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["port"].as_i64() == Some(i64::from(port))))
        .map(|p| p["tls"]["validation"].clone());
    per_port
        .or_else(|| Some(v["default"]["validation"].clone()))
        .filter(|x| !x.is_null())
}

/// Checks the frontend validation an HTTPS (or TLS Terminate) listener of `gw` gets:
/// `Err((resolved reason, message))` when its CA references do not resolve (the
/// listener is then not accepted, `NoValidCACertificate`).
pub fn check_frontend(
    objects: &ClusterObjects,
    gw: &Gateway,
    l: &GatewayListeners,
) -> Result<(), (&'static str, String)> {
    let Some(v) = frontend_validation(gw, l.port) else {
        return Ok(());
    };
    let ns = gw.namespace().unwrap_or_default();
    let refs = v["caCertificateRefs"].as_array().cloned().unwrap_or_default();
    if refs.is_empty() {
        return Err((
            "InvalidCACertificateRef",
            "validation names no caCertificateRefs".into(),
        ));
    }
    for r in &refs {
        match ca_pem(objects, "Gateway", &ns, r) {
            Ok(_) => {}
            Err(("kind", m)) => return Err(("InvalidCACertificateKind", m)),
            Err((_, m)) => return Err(("InvalidCACertificateRef", m)),
        }
    }
    Ok(())
}

/// Whether `gw` lets any of its listeners accept clients without a valid certificate
/// (the Gateway condition `InsecureFrontendValidationMode`).
pub fn insecure_frontend(gw: &Gateway) -> bool {
    gw.spec.listeners.iter().any(|l| {
        frontend_validation(gw, l.port).is_some_and(|v| v["mode"].as_str() == Some("AllowInsecureFallback"))
    })
}

/// What the L4 translation gives, beside the HTTP one.
#[derive(Debug, Clone, Default)]
pub struct L4Translation {
    /// `l4_routes`.
    pub l4_routes: Vec<L4RouteConfig>,
    /// Upstreams the L4 routes name (merged with the HTTP ones by id).
    pub upstreams: Vec<UpstreamConfig>,
    /// `client_auth` policies from Gateways' frontend validation.
    pub client_auth: Vec<ClientAuthPolicy>,
    /// Statuses of TLSRoutes, TCPRoutes and UDPRoutes (`route.kind` says which).
    pub routes: Vec<RouteStatus>,
    /// Statuses of BackendTLSPolicies.
    pub policies: Vec<PolicyStatus>,
    /// Reports.
    pub reports: Vec<Report>,
}

/// The status of one BackendTLSPolicy: one ancestor per Gateway whose routes use a
/// Service it targets.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyStatus {
    /// The policy.
    pub policy: ObjectRef,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `(Gateway namespace, Gateway name)` with the conditions for it.
    pub ancestors: Vec<((String, String), Vec<Condition>)>,
}

/// A route of any L4 kind, read into one shape.
struct AnyRoute {
    me: ObjectRef,
    kind: &'static str,
    generation: Option<i64>,
    created: Option<k8s_openapi::jiff::Timestamp>,
    namespace: String,
    name: String,
    hostnames: Vec<String>,
    parents: Vec<ParentReference>,
    backends: Vec<BackendRef>,
}

fn any_routes(objects: &ClusterObjects) -> Vec<AnyRoute> {
    let mut out = Vec::new();
    for r in &objects.tls_routes {
        let v = serde_json::to_value(&r.spec).unwrap_or(Value::Null);
        out.push(AnyRoute {
            me: ObjectRef::of(r),
            kind: "TLSRoute",
            generation: r.metadata.generation,
            created: r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            namespace: r.namespace().unwrap_or_default(),
            name: r.name_any(),
            hostnames: r.spec.hostnames.iter().map(|h| h.to_ascii_lowercase()).collect(),
            parents: serde_json::from_value(v["parentRefs"].clone()).unwrap_or_default(),
            backends: v["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|rule| {
                    serde_json::from_value::<Vec<BackendRef>>(rule["backendRefs"].clone()).unwrap_or_default()
                })
                .collect(),
        });
    }
    for (kind, list) in [
        (
            "TCPRoute",
            objects
                .tcp_routes
                .iter()
                .map(|r| (&r.metadata, &r.spec, ObjectRef::of(r)))
                .collect::<Vec<_>>(),
        ),
        (
            "UDPRoute",
            objects
                .udp_routes
                .iter()
                .map(|r| (&r.metadata, &r.spec, ObjectRef::of(r)))
                .collect(),
        ),
    ] {
        for (meta, spec, me) in list {
            out.push(AnyRoute {
                me,
                kind,
                generation: meta.generation,
                created: meta.creation_timestamp.as_ref().map(|t| t.0),
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
                hostnames: Vec::new(),
                parents: spec.parent_refs.clone(),
                backends: spec.rules.iter().flat_map(|r| r.backend_refs.clone()).collect(),
            });
        }
    }
    // Oldest first (the Gateway API's tie-break), then namespace/name.
    out.sort_by(|a, b| (a.created, &a.namespace, &a.name).cmp(&(b.created, &b.namespace, &b.name)));
    out
}

/// Where a route is served on one Sluice listener: the TLS mode, the SNI names (`None`:
/// any), and whether the listener also serves HTTPS.
type Target = (Option<L4TlsMode>, Option<BTreeSet<String>>, bool);

/// One valid L4 listener of one of our Gateways.
struct L4Listener<'a> {
    gateway_ns: String,
    gateway_name: String,
    /// Index of the Gateway in `out.gateways`, and of the listener in it.
    at: (usize, usize),
    spec: &'a GatewayListeners,
    kind: &'static str,
    sluice: String,
    mode: Option<L4TlsMode>,
    https: bool,
}

/// Translates the L4 routes, BackendTLSPolicies and frontend validation of our
/// Gateways (`gateways`: the Gateway objects in the order of `statuses`), adding the
/// attached-route counts to the listeners' statuses.
pub fn translate(
    objects: &ClusterObjects,
    controller: &str,
    gateways: &[&Gateway],
    statuses: &mut [crate::gateway_api::GatewayStatus],
) -> L4Translation {
    let mut out = L4Translation::default();
    // Valid L4 listeners.
    let mut listeners: Vec<L4Listener<'_>> = Vec::new();
    for (gi, gw) in gateways.iter().enumerate() {
        let ns = gw.namespace().unwrap_or_default();
        for (li, l) in gw.spec.listeners.iter().enumerate() {
            let Some(kind) = l4_kind(&l.protocol) else {
                continue;
            };
            let Some(st) = statuses.get(gi).and_then(|s| s.listeners.get(li)) else {
                continue;
            };
            let ok = |t: &str| st.conditions.iter().any(|c| c.type_ == t && c.status);
            let conflicted = st.conditions.iter().any(|c| c.type_ == "Conflicted" && c.status);
            if !ok("Accepted") || !ok("ResolvedRefs") || conflicted {
                continue;
            }
            let Some(s) = sluice_listener(objects, l) else {
                continue;
            };
            listeners.push(L4Listener {
                gateway_ns: ns.clone(),
                gateway_name: gw.name_any(),
                at: (gi, li),
                spec: l,
                kind,
                sluice: s.name.clone(),
                mode: (kind == "TLSRoute").then(|| listener_mode(l)),
                https: s.protocol == ListenerProtocol::Http,
            });
        }
    }
    let ours: BTreeSet<(String, String)> = gateways
        .iter()
        .map(|g| (g.namespace().unwrap_or_default(), g.name_any()))
        .collect();

    let mut upstreams: BTreeMap<String, UpstreamConfig> = BTreeMap::new();
    // (sluice listener, name or "") → the route id that took it.
    let mut taken: BTreeMap<(String, String), String> = BTreeMap::new();
    for r in any_routes(objects) {
        let mut parents = Vec::new();
        // Sluice listener → (mode, server names or None for any).
        let mut targets: BTreeMap<String, Target> = BTreeMap::new();
        for pr in &r.parents {
            let parent = ParentRef {
                group: pr.group.clone().unwrap_or_else(|| GROUP.into()),
                kind: pr.kind.clone().unwrap_or_else(|| "Gateway".into()),
                namespace: pr.namespace.clone().unwrap_or_else(|| r.namespace.clone()),
                name: pr.name.clone(),
                section_name: pr.section_name.clone(),
                port: pr.port,
            };
            if parent.group != GROUP
                || parent.kind != "Gateway"
                || !ours.contains(&(parent.namespace.clone(), parent.name.clone()))
            {
                continue;
            }
            let accepted = attach(objects, &parent, &r, &mut listeners, statuses, &mut targets);
            parents.push((parent, accepted));
        }
        if parents.is_empty() {
            continue;
        }
        // Backends.
        let mut resolved: Result<(), (&'static str, String)> = Ok(());
        let mut backends = Vec::new();
        for b in &r.backends {
            match l4_backend(objects, &r, b) {
                Ok(Some(u)) => {
                    backends.push(BackendConfig {
                        upstream: u.id.clone(),
                        weight: u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0),
                    });
                    upstreams.entry(u.id.clone()).or_insert(u);
                }
                Ok(None) => {}
                Err(e) => {
                    if resolved.is_ok() {
                        resolved = Err(e);
                    }
                }
            }
        }
        if r.backends.is_empty() {
            resolved = Err(("BackendNotFound", "the route names no backendRefs".into()));
        }
        if !backends.is_empty() && backends.iter().any(|b| b.weight > 0) {
            for (sluice, (mode, names, https)) in &targets {
                let names: Vec<String> = match names {
                    None if *https => {
                        out.reports.push(Report {
                            object: r.me.clone(),
                            reason: "NoHostname".into(),
                            message: format!(
                                "listener {sluice} also serves HTTPS: a TLSRoute there needs hostnames"
                            ),
                        });
                        continue;
                    }
                    None => vec![String::new()],
                    Some(set) => set.iter().cloned().collect(),
                };
                let id = clean_id(&format!(
                    "gw.{}.{}.{}.{}",
                    r.kind.to_ascii_lowercase(),
                    r.namespace,
                    r.name,
                    sluice
                ));
                let mut mine = Vec::new();
                for n in names {
                    match taken.get(&(sluice.clone(), n.clone())) {
                        Some(first) if *first != id => out.reports.push(Report {
                            object: r.me.clone(),
                            reason: "Conflicted".into(),
                            message: format!(
                                "listener {sluice}{} is served by the older route {first}",
                                if n.is_empty() {
                                    String::new()
                                } else {
                                    format!(" for {n}")
                                }
                            ),
                        }),
                        _ => {
                            taken.insert((sluice.clone(), n.clone()), id.clone());
                            mine.push(n);
                        }
                    }
                }
                if mine.is_empty() {
                    continue;
                }
                out.l4_routes.push(L4RouteConfig {
                    id,
                    listeners: vec![sluice.clone()],
                    server_names: mine.into_iter().filter(|n| !n.is_empty()).collect(),
                    tls: *mode,
                    upstream: None,
                    backends: backends.clone(),
                });
            }
        }
        let resolved_cond = match &resolved {
            Ok(()) => Condition::new("ResolvedRefs", true, "ResolvedRefs", "every backendRef resolved"),
            Err((reason, message)) => Condition::new("ResolvedRefs", false, reason, message.clone()),
        };
        out.routes.push(RouteStatus {
            route: r.me.clone(),
            generation: r.generation,
            parents: parents
                .into_iter()
                .map(|(parent_ref, accepted)| ParentStatus {
                    parent_ref,
                    controller_name: controller.to_string(),
                    conditions: vec![
                        match accepted {
                            Ok(()) => Condition::new("Accepted", true, "Accepted", "accepted"),
                            Err((reason, message)) => Condition::new("Accepted", false, reason, message),
                        },
                        resolved_cond.clone(),
                    ],
                })
                .collect(),
        });
    }
    out.upstreams = upstreams.into_values().collect();

    // Frontend validation: per port, on the Sluice HTTPS listeners serving it.
    for gw in gateways {
        let ns = gw.namespace().unwrap_or_default();
        let mut ports: BTreeMap<i32, Vec<&GatewayListeners>> = BTreeMap::new();
        for l in &gw.spec.listeners {
            if l.protocol == "HTTPS" || (l.protocol == "TLS" && listener_mode(l) == L4TlsMode::Terminate) {
                ports.entry(l.port).or_default().push(l);
            }
        }
        for (port, ls) in ports {
            let Some(v) = frontend_validation(gw, port) else {
                continue;
            };
            if check_frontend(objects, gw, ls[0]).is_err() {
                continue;
            }
            let pems: Vec<String> = v["caCertificateRefs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| ca_pem(objects, "Gateway", &ns, r).ok())
                .collect();
            let Some(sluice) = ls.iter().find_map(|l| sluice_listener(objects, l)) else {
                continue;
            };
            let any_host = ls.iter().any(|l| l.hostname.is_none());
            out.client_auth.push(ClientAuthPolicy {
                name: clean_id(&format!("gw.{ns}.{}.{port}", gw.name_any())),
                listeners: vec![sluice.name.clone()],
                server_names: if any_host {
                    Vec::new()
                } else {
                    ls.iter().filter_map(|l| l.hostname.clone()).collect()
                },
                validation: ClientAuthConfig {
                    ca: None,
                    ca_pem: Some(pems.join("\n")),
                    mode: if v["mode"].as_str() == Some("AllowInsecureFallback") {
                        ClientAuthMode::AllowInvalid
                    } else {
                        ClientAuthMode::Require
                    },
                    // The Gateway API sets no depth: allow chains through intermediates.
                    verify_depth: 9,
                    forward_certificate: false,
                },
            });
        }
    }
    out
}

/// Attaches route `r` to the listeners `parent` selects; records where it is served.
fn attach(
    objects: &ClusterObjects,
    parent: &ParentRef,
    r: &AnyRoute,
    listeners: &mut [L4Listener<'_>],
    statuses: &mut [crate::gateway_api::GatewayStatus],
    targets: &mut BTreeMap<String, Target>,
) -> Result<(), (&'static str, String)> {
    let gw = objects
        .gateways
        .iter()
        .find(|g| g.name_any() == parent.name && g.namespace().as_deref() == Some(parent.namespace.as_str()));
    let Some(gw) = gw else {
        return Err((
            "NoMatchingParent",
            format!("Gateway {}/{} not found", parent.namespace, parent.name),
        ));
    };
    let selected: Vec<&GatewayListeners> = gw
        .spec
        .listeners
        .iter()
        .filter(|l| {
            parent.section_name.as_ref().is_none_or(|s| *s == l.name)
                && parent.port.is_none_or(|p| p == l.port)
        })
        .collect();
    if selected.is_empty() {
        return Err((
            "NoMatchingParent",
            format!(
                "Gateway {}/{} has no listener {}{}",
                parent.namespace,
                parent.name,
                parent.section_name.as_deref().unwrap_or(""),
                parent.port.map(|p| format!(" on port {p}")).unwrap_or_default()
            ),
        ));
    }
    let (mut allowed, mut matched) = (0, 0);
    for l in listeners.iter_mut().filter(|l| {
        l.gateway_ns == parent.namespace
            && l.gateway_name == parent.name
            && selected.iter().any(|s| std::ptr::eq(*s, l.spec))
    }) {
        if l.kind != r.kind {
            continue;
        }
        let from = l
            .spec
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
            .and_then(|n| n.from.clone());
        let ns_ok = match from {
            None | Some(GatewayListenersAllowedRoutesNamespacesFrom::Same) => r.namespace == l.gateway_ns,
            Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => true,
            Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => false,
        };
        if !ns_ok {
            continue;
        }
        allowed += 1;
        let hosts = if r.kind == "TLSRoute" {
            match intersect(l.spec.hostname.as_deref(), &r.hostnames) {
                None => None,
                Some(h) if h.is_empty() => continue,
                Some(h) => Some(h),
            }
        } else {
            None
        };
        matched += 1;
        if let Some(st) = statuses.get_mut(l.at.0).and_then(|s| s.listeners.get_mut(l.at.1)) {
            st.attached_routes += 1;
        }
        let entry = targets
            .entry(l.sluice.clone())
            .or_insert((l.mode, Some(BTreeSet::new()), l.https));
        match hosts {
            None => entry.1 = None,
            Some(h) => {
                if let Some(set) = entry.1.as_mut() {
                    set.extend(h);
                }
            }
        }
    }
    if allowed == 0 {
        Err((
            "NotAllowedByListeners",
            format!(
                "no selected listener takes a {} from namespace {}",
                r.kind, r.namespace
            ),
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

/// The upstream of one backendRef of an L4 route: `Ok(None)` for a Service with no
/// ready endpoint now.
fn l4_backend(
    objects: &ClusterObjects,
    r: &AnyRoute,
    b: &BackendRef,
) -> Result<Option<UpstreamConfig>, (&'static str, String)> {
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        return Err((
            "InvalidKind",
            format!("backendRef {group}/{kind} {} is not a Service", b.name),
        ));
    }
    let ns = b.namespace.clone().unwrap_or_else(|| r.namespace.clone());
    if ns != r.namespace && !granted(objects, GROUP, r.kind, &r.namespace, "", "Service", &ns, &b.name) {
        return Err((
            "RefNotPermitted",
            format!(
                "Service {ns}/{} is in another namespace, with no ReferenceGrant that allows it",
                b.name
            ),
        ));
    }
    let Some(port) = b.port else {
        return Err(("BackendNotFound", format!("backendRef {} names no port", b.name)));
    };
    match service_upstream(objects, &ns, &b.name, &PortRef::Number(port)) {
        Ok(u) => Ok(Some(u)),
        Err(Unresolved::NoEndpoints) => Ok(None),
        Err(e) => Err(("BackendNotFound", e.to_string())),
    }
}

/// Applies the BackendTLSPolicies to `upstreams` (the HTTP and L4 ones together) and
/// computes their statuses. `parents` lists, per upstream id, the Gateways whose
/// routes use it.
pub fn backend_tls(
    objects: &ClusterObjects,
    upstreams: &mut [UpstreamConfig],
    parents: &BTreeMap<String, BTreeSet<(String, String)>>,
) -> Vec<PolicyStatus> {
    let mut policies: Vec<&gateway_api::backendtlspolicies::BackendTlsPolicy> =
        objects.backend_tls_policies.iter().collect();
    policies.sort_by_key(|p| {
        (
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            p.namespace().unwrap_or_default(),
            p.name_any(),
        )
    });
    // (namespace, service, section or "") → the policy that holds it.
    let mut held: BTreeMap<(String, String, String), String> = BTreeMap::new();
    // upstream id → (specific: with a section name, tls).
    let mut apply: BTreeMap<String, (bool, UpstreamTls)> = BTreeMap::new();
    let mut out = Vec::new();
    for p in policies {
        let ns = p.namespace().unwrap_or_default();
        let v = serde_json::to_value(&p.spec).unwrap_or(Value::Null);
        let val = &v["validation"];
        // Which upstreams it covers, and the Gateways above them.
        let mut covered: Vec<(String, bool)> = Vec::new();
        let mut conflicted = false;
        for t in v["targetRefs"].as_array().into_iter().flatten() {
            if !t["group"].as_str().unwrap_or("").is_empty() || t["kind"].as_str() != Some("Service") {
                continue;
            }
            let svc_name = t["name"].as_str().unwrap_or("");
            let section = t["sectionName"].as_str().unwrap_or("");
            let key = (ns.clone(), svc_name.to_string(), section.to_string());
            match held.get(&key) {
                Some(owner) if *owner != p.name_any() => {
                    conflicted = true;
                    continue;
                }
                _ => {
                    held.insert(key, p.name_any());
                }
            }
            let Some(svc) = objects.service(&ns, svc_name) else {
                continue;
            };
            for sp in svc
                .spec
                .as_ref()
                .and_then(|s| s.ports.clone())
                .unwrap_or_default()
            {
                if section.is_empty() || sp.name.as_deref() == Some(section) {
                    covered.push((
                        upstream_id(&ns, svc_name, &PortRef::Number(sp.port)),
                        !section.is_empty(),
                    ));
                }
            }
        }
        let mut ca: Result<Option<String>, (&'static str, String)> = Ok(None);
        let refs = val["caCertificateRefs"].as_array().cloned().unwrap_or_default();
        let mut pems = Vec::new();
        for r in &refs {
            match ca_pem(objects, "BackendTLSPolicy", &ns, r) {
                Ok(pem) => pems.push(pem),
                Err(e) => {
                    if ca.is_ok() {
                        ca = Err(e);
                    }
                }
            }
        }
        if ca.is_ok() && !pems.is_empty() {
            ca = Ok(Some(pems.join("\n")));
        }
        let hostname = val["hostname"].as_str().unwrap_or("").to_string();
        let sans: Vec<SubjectAltName> = val["subjectAltNames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| match s["type"].as_str() {
                Some("Hostname") => s["hostname"].as_str().map(|h| SubjectAltName::Dns(h.into())),
                Some("URI") => s["uri"].as_str().map(|u| SubjectAltName::Uri(u.into())),
                _ => None,
            })
            .collect();
        let (accepted, resolved) = match &ca {
            _ if conflicted => (
                Condition::new(
                    "Accepted",
                    false,
                    "Conflicted",
                    "an older BackendTLSPolicy targets the same Service port",
                ),
                Condition::new("ResolvedRefs", true, "ResolvedRefs", "references resolved"),
            ),
            Ok(_) => (
                Condition::new("Accepted", true, "Accepted", "accepted"),
                Condition::new("ResolvedRefs", true, "ResolvedRefs", "references resolved"),
            ),
            Err((kind, message)) => (
                Condition::new("Accepted", false, "NoValidCACertificate", message.clone()),
                Condition::new(
                    "ResolvedRefs",
                    false,
                    if *kind == "kind" {
                        "InvalidKind"
                    } else {
                        "InvalidCACertificateRef"
                    },
                    message.clone(),
                ),
            ),
        };
        let tls = UpstreamTls {
            sni: (!hostname.is_empty()).then(|| hostname.clone()),
            verify: true,
            ca: None,
            ca_pem: ca.clone().ok().flatten(),
            subject_alt_names: match &ca {
                // Fails closed: no certificate carries this name (the policy's CA does
                // not resolve, so nothing may be trusted).
                Err(_) => vec![SubjectAltName::Uri(
                    "urn:sluice:backend-tls-policy-without-a-valid-ca".into(),
                )],
                Ok(_) => sans,
            },
        };
        let mut gateways_above: BTreeSet<(String, String)> = BTreeSet::new();
        if !conflicted || !covered.is_empty() {
            for (id, specific) in &covered {
                gateways_above.extend(parents.get(id).into_iter().flatten().cloned());
                let replace = apply.get(id).is_none_or(|(s, _)| *specific && !*s);
                if replace {
                    apply.insert(id.clone(), (*specific, tls.clone()));
                }
            }
        }
        if conflicted {
            // Name the Gateways above every Service it targets.
            for t in v["targetRefs"].as_array().into_iter().flatten() {
                let svc_name = t["name"].as_str().unwrap_or("");
                for (id, gws) in parents {
                    if id.starts_with(&format!("k8s.{ns}.{svc_name}.")) {
                        gateways_above.extend(gws.iter().cloned());
                    }
                }
            }
        }
        out.push(PolicyStatus {
            policy: ObjectRef::of(p),
            generation: p.meta().generation,
            ancestors: gateways_above
                .into_iter()
                .map(|g| (g, vec![accepted.clone(), resolved.clone()]))
                .collect(),
        });
    }
    for u in upstreams.iter_mut() {
        if let Some((_, tls)) = apply.get(&u.id) {
            u.tls = Some(tls.clone());
        }
    }
    out
}

/// For each upstream id, the Gateways (namespace, name) whose routes (HTTPRoutes and L4
/// routes, as `g` translated them) send traffic to it: a BackendTLSPolicy's ancestors.
pub fn upstream_gateways(
    objects: &ClusterObjects,
    g: &crate::gateway_api::GatewayTranslation,
    _t: &crate::Translation,
) -> BTreeMap<String, BTreeSet<(String, String)>> {
    let mut out: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    let parents_of = |me: &ObjectRef, statuses: &[RouteStatus]| -> Vec<(String, String)> {
        statuses
            .iter()
            .filter(|s| {
                s.route.kind == me.kind && s.route.namespace == me.namespace && s.route.name == me.name
            })
            .flat_map(|s| {
                s.parents
                    .iter()
                    .map(|p| (p.parent_ref.namespace.clone(), p.parent_ref.name.clone()))
            })
            .collect()
    };
    for r in &objects.http_routes {
        let me = ObjectRef::of(r);
        let gws = parents_of(&me, &g.routes);
        let v = serde_json::to_value(&r.spec).unwrap_or(Value::Null);
        for rule in v["rules"].as_array().into_iter().flatten() {
            for b in rule["backendRefs"].as_array().into_iter().flatten() {
                let (Some(name), Some(port)) = (b["name"].as_str(), b["port"].as_i64()) else {
                    continue;
                };
                let ns = b["namespace"].as_str().unwrap_or(&me.namespace);
                let id = upstream_id(ns, name, &PortRef::Number(i32::try_from(port).unwrap_or(0)));
                out.entry(id).or_default().extend(gws.iter().cloned());
            }
        }
    }
    for r in any_routes(objects) {
        let gws = parents_of(&r.me, &g.l4.routes);
        for b in &r.backends {
            let Some(port) = b.port else { continue };
            let ns = b.namespace.as_deref().unwrap_or(&r.namespace);
            out.entry(upstream_id(ns, &b.name, &PortRef::Number(port)))
                .or_default()
                .extend(gws.iter().cloned());
        }
    }
    out
}
