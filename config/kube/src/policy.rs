//! `SluicePolicy` (`sluice.dev/v1alpha1`, the CRD in
//! `deploy/kubernetes/base/crds/sluicepolicies.sluice.dev.yaml`): Sluice's filters
//! attached to the routes of Ingresses and HTTPRoutes (pure, after the translations).
//!
//! - **What attaches.** A policy's `spec.targetRefs` name, in the policy's namespace, an
//!   Ingress (`networking.k8s.io`), an HTTPRoute (`sectionName`: one named rule) or a
//!   Gateway (`gateway.networking.k8s.io`; `sectionName`: one listener), following the
//!   Gateway API's direct policy attachment. An Ingress may also name its policy with the
//!   annotation `sluice.dev/policy: <name>` (same namespace).
//! - **What it adds.** `auth` → an `auth` filter, `rate_limit` → a `rate_limit` filter
//!   (in that order, after the route's own filters), `breaker` → the route's
//!   `circuit_breaker`. The specs are those of the filter kinds and route fields, as
//!   `docs/config.md` documents them. `rollout` → a weighted split of the route's
//!   backend with each canary's Service (`weight` of `weight_total`), and, per canary
//!   with a `header` or `cookie` override, a route of its own matching it (`always`, or
//!   the `exact` / `regex` value, goes to the canary; `never` stays on the main backend),
//!   as the Ingress canary annotations do.
//! - **Precedence.** Per section, the most specific policy wins: an HTTPRoute rule over
//!   the HTTPRoute over its Gateway (an Ingress's annotation and its `targetRefs` are one
//!   level); among equals, the older policy (then the name) wins and the other is
//!   reported as `Conflicted`.
//! - **A bad policy** (a spec the filter kind refuses, a target that does not exist) is
//!   reported as a `Warning` Event on the policy, and the routes stay as they were: the
//!   last good version of that policy keeps being attached (kept by the source across
//!   translations), or none if it never was good.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_config::model::{BackendConfig, FilterConfig, RouteMatch, ValueMatch};
use sluice_config::{ConfigError, RouteCheck};

use crate::{ClusterObjects, ObjectRef, Report, Translation};

/// The Ingress annotation that names a policy of the Ingress's namespace.
pub const POLICY_ANNOTATION: &str = "sluice.dev/policy";

/// A `SluicePolicy` as the watcher reads it: metadata and the spec as JSON (checked by
/// [`attach`], so a bad spec is reported rather than dropped by the watcher).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SluicePolicy {
    /// Standard metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec (see the CRD's schema). Default: null.
    #[serde(default)]
    pub spec: Value,
}

impl kube::Resource for SluicePolicy {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "SluicePolicy".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "sluice.dev".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1alpha1".into()
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        "sluice.dev/v1alpha1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "sluicepolicies".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The spec, typed (unknown fields refused, as the CRD's schema does).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    target_refs: Vec<TargetRef>,
    #[serde(default, rename = "auth")]
    auth: Option<Value>,
    #[serde(default, rename = "rate_limit")]
    rate_limit: Option<Value>,
    #[serde(default, rename = "breaker")]
    breaker: Option<Value>,
    #[serde(default, rename = "rollout")]
    rollout: Option<Rollout>,
}

/// `spec.rollout`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rollout {
    canaries: Vec<Canary>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Canary {
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "backendRef")]
    backend_ref: CanaryBackend,
    #[serde(default)]
    weight: u32,
    #[serde(default = "default_weight_total")]
    weight_total: u32,
    #[serde(default)]
    header: Option<HeaderOverride>,
    #[serde(default)]
    cookie: Option<String>,
}

fn default_weight_total() -> u32 {
    100
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryBackend {
    name: String,
    port: i32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderOverride {
    name: String,
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    regex: Option<String>,
}

impl Canary {
    fn label(&self) -> String {
        let n = self.name.clone().unwrap_or_else(|| self.backend_ref.name.clone());
        n.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TargetRef {
    #[serde(default)]
    group: String,
    kind: String,
    name: String,
    #[serde(default)]
    section_name: Option<String>,
}

/// How specific an attachment is (higher wins).
const GATEWAY: u8 = 1;
const ROUTE: u8 = 2;
const RULE: u8 = 3;

/// One section of one policy reaching one route.
#[derive(Debug, Clone)]
struct Reach {
    specificity: u8,
    /// (creation time, namespace, name): older first.
    age: (String, String, String),
    policy: usize,
}

/// The last good spec of each policy (`namespace/name`), kept by the source across
/// translations so that a bad edit leaves the routes as they were.
pub type LastGood = BTreeMap<(String, String), Value>;

fn policy_ref(p: &SluicePolicy) -> ObjectRef {
    ObjectRef::of(p)
}

/// The checked spec of a policy, or why it is refused. `probe` checks the filters and
/// breaker on a route of their own, by the one validation path with `kinds`.
fn check(spec: &Value, kinds: &dyn RouteCheck) -> Result<Spec, String> {
    let s: Spec = serde_json::from_value(spec.clone()).map_err(|e| format!("spec: {e}"))?;
    if s.auth.is_none() && s.rate_limit.is_none() && s.breaker.is_none() && s.rollout.is_none() {
        return Err("spec: at least one of auth, rate_limit, breaker, rollout is required".into());
    }
    let mut probe = crate::ingress::new_route("policy-check".into(), RouteMatch::default());
    probe.filters = filters(&s);
    probe.filters.push(FilterConfig {
        kind: "direct_response".into(),
        spec: serde_json::json!({"status": 204}),
    });
    if let Some(b) = &s.breaker {
        probe.circuit_breaker =
            Some(serde_json::from_value(b.clone()).map_err(|e| format!("spec.breaker: {e}"))?);
    }
    if let Some(r) = &s.rollout {
        if r.canaries.is_empty() {
            return Err("spec.rollout.canaries: at least one canary is required".into());
        }
        let mut taken = 0u32;
        for (i, c) in r.canaries.iter().enumerate() {
            let p = format!("spec.rollout.canaries[{i}]");
            if c.weight_total == 0 || c.weight > c.weight_total {
                return Err(format!(
                    "{p}.weight: {} is not within weight_total {}",
                    c.weight, c.weight_total
                ));
            }
            taken = taken.saturating_add(c.weight);
            if let Some(re) = c.header.as_ref().and_then(|h| h.regex.as_ref()) {
                regex_syntax::Parser::new()
                    .parse(re)
                    .map_err(|e| format!("{p}.header.regex: {e}"))?;
            }
            if !(1..=65535).contains(&c.backend_ref.port) {
                return Err(format!(
                    "{p}.backendRef.port: {} is not a port",
                    c.backend_ref.port
                ));
            }
        }
        let total = r.canaries.iter().map(|c| c.weight_total).max().unwrap_or(100);
        if taken > total {
            return Err(format!(
                "spec.rollout.canaries: the weights add up to {taken}, more than {total}"
            ));
        }
    }
    match crate::source::route_errors(&probe, Vec::new(), kinds) {
        Ok(()) => Ok(s),
        // The probe's paths (`routes[0].filters[0].rate_limit`) name the policy's
        // sections instead (`spec.rate_limit`).
        Err(errors) => Err(errors
            .0
            .iter()
            .map(|e| {
                let path = e
                    .path
                    .replace("routes[0].circuit_breaker", "spec.breaker")
                    .replace("routes[0].filters[0].auth", "spec.auth")
                    .replace("routes[0].filters[0].rate_limit", "spec.rate_limit")
                    .replace("routes[0].filters[1].rate_limit", "spec.rate_limit");
                ConfigError::at(path, e.message.clone()).to_string()
            })
            .collect::<Vec<_>>()
            .join("; ")),
    }
}

fn filters(s: &Spec) -> Vec<FilterConfig> {
    let mut out = Vec::new();
    if let Some(a) = &s.auth {
        out.push(FilterConfig {
            kind: "auth".into(),
            spec: a.clone(),
        });
    }
    if let Some(r) = &s.rate_limit {
        out.push(FilterConfig {
            kind: "rate_limit".into(),
            spec: r.clone(),
        });
    }
    out
}

/// The route ids (prefixes) a target reaches, with its specificity; `None` when the
/// target does not exist.
fn reached(objects: &ClusterObjects, ns: &str, t: &TargetRef) -> Option<Vec<(String, u8)>> {
    match (t.group.as_str(), t.kind.as_str()) {
        ("networking.k8s.io", "Ingress") => {
            objects
                .ingresses
                .iter()
                .find(|i| i.name_any() == t.name && i.namespace().as_deref() == Some(ns))?;
            Some(vec![(format!("k8s.{ns}.{}.", t.name), ROUTE)])
        }
        ("gateway.networking.k8s.io", "HTTPRoute") => {
            let route = objects
                .http_routes
                .iter()
                .find(|r| r.name_any() == t.name && r.namespace().as_deref() == Some(ns))?;
            let base = format!("gw.{ns}.{}.", t.name);
            match &t.section_name {
                None => Some(vec![(base, ROUTE)]),
                Some(section) => {
                    let ri = route
                        .spec
                        .rules
                        .iter()
                        .flatten()
                        .position(|r| r.name.as_deref() == Some(section.as_str()))?;
                    Some(vec![(format!("{base}{ri}."), RULE)])
                }
            }
        }
        ("gateway.networking.k8s.io", "Gateway") => {
            objects
                .gateways
                .iter()
                .find(|g| g.name_any() == t.name && g.namespace().as_deref() == Some(ns))?;
            let mut out = Vec::new();
            for r in &objects.http_routes {
                let rns = r.namespace().unwrap_or_default();
                let attached = r.spec.parent_refs.iter().flatten().any(|p| {
                    p.name == t.name
                        && p.namespace.as_deref().unwrap_or(&rns) == ns
                        && p.kind.as_deref().is_none_or(|k| k == "Gateway")
                        && match (&t.section_name, &p.section_name) {
                            (Some(a), Some(b)) => a == b,
                            _ => true,
                        }
                });
                if attached {
                    out.push((format!("gw.{rns}.{}.", r.name_any()), GATEWAY));
                }
            }
            Some(out)
        }
        _ => None,
    }
}

/// Attaches the `policies` to the routes of `t` (see the module doc). `last_good` is
/// updated with every policy that checks and read for those that do not. Reports go on
/// the policies.
pub fn attach(
    t: &mut Translation,
    objects: &ClusterObjects,
    policies: &[SluicePolicy],
    last_good: &mut LastGood,
    kinds: &dyn RouteCheck,
) {
    let mut specs: Vec<Option<Spec>> = Vec::with_capacity(policies.len());
    for p in policies {
        let key = (p.namespace().unwrap_or_default(), p.name_any());
        let spec = match check(&p.spec, kinds) {
            Ok(s) => {
                last_good.insert(key, p.spec.clone());
                Some(s)
            }
            Err(why) => {
                let previous = last_good.get(&key).and_then(|v| check(v, kinds).ok());
                let tail = if previous.is_some() {
                    "the previous version stays attached"
                } else {
                    "not attached"
                };
                t.reports.push(Report {
                    object: policy_ref(p),
                    reason: "InvalidPolicy".into(),
                    message: format!("{why}; {tail}"),
                });
                previous
            }
        };
        specs.push(spec);
    }
    // Forget policies that are gone.
    let live: std::collections::BTreeSet<(String, String)> = policies
        .iter()
        .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
        .collect();
    last_good.retain(|k, _| live.contains(k));

    // Which policies reach which route id prefixes.
    let mut reaches: Vec<(String, Reach)> = Vec::new();
    for (pi, (p, spec)) in policies.iter().zip(&specs).enumerate() {
        let Some(spec) = spec else { continue };
        let ns = p.namespace().unwrap_or_default();
        let age = (
            p.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            ns.clone(),
            p.name_any(),
        );
        let mut targets = spec.target_refs.clone();
        for ing in &objects.ingresses {
            if ing.namespace().as_deref() == Some(ns.as_str())
                && ing.annotations().get(POLICY_ANNOTATION).map(String::as_str) == Some(p.name_any().as_str())
            {
                targets.push(TargetRef {
                    group: "networking.k8s.io".into(),
                    kind: "Ingress".into(),
                    name: ing.name_any(),
                    section_name: None,
                });
            }
        }
        targets.dedup();
        for tr in &targets {
            match reached(objects, &ns, tr) {
                Some(list) => reaches.extend(list.into_iter().map(|(prefix, specificity)| {
                    (
                        prefix,
                        Reach {
                            specificity,
                            age: age.clone(),
                            policy: pi,
                        },
                    )
                })),
                None => t.reports.push(Report {
                    object: policy_ref(p),
                    reason: "TargetNotFound".into(),
                    message: format!(
                        "target {} {}/{} not found in namespace {ns}",
                        tr.kind, tr.group, tr.name
                    ),
                }),
            }
        }
    }
    if reaches.is_empty() {
        return;
    }
    let mut conflicts: BTreeMap<usize, String> = BTreeMap::new();
    let mut rollouts: Vec<(usize, usize)> = Vec::new();
    for (ri, route) in t.routes.iter_mut().enumerate() {
        let mut here: Vec<&Reach> = reaches
            .iter()
            .filter(|(prefix, _)| route.id.starts_with(prefix.as_str()))
            .map(|(_, r)| r)
            .collect();
        if here.is_empty() {
            continue;
        }
        here.sort_by(|a, b| b.specificity.cmp(&a.specificity).then_with(|| a.age.cmp(&b.age)));
        here.dedup_by_key(|r| r.policy);
        let pick = |has: &dyn Fn(&Spec) -> bool| -> Option<usize> {
            here.iter()
                .map(|r| r.policy)
                .filter(|&i| specs[i].as_ref().is_some_and(has))
                .collect::<Vec<_>>()
                .first()
                .copied()
        };
        let mut note = |section: &str, has: &dyn Fn(&Spec) -> bool, winner: Option<usize>| {
            for r in here.iter() {
                if Some(r.policy) != winner && specs[r.policy].as_ref().is_some_and(has) {
                    if let Some(w) = winner {
                        conflicts.entry(r.policy).or_insert_with(|| {
                            format!(
                                "spec.{section} on route {} is overridden by SluicePolicy {}",
                                route.id,
                                policies[w].name_any()
                            )
                        });
                    }
                }
            }
        };
        let auth = pick(&|s| s.auth.is_some());
        note("auth", &|s| s.auth.is_some(), auth);
        let limit = pick(&|s| s.rate_limit.is_some());
        note("rate_limit", &|s| s.rate_limit.is_some(), limit);
        let breaker = pick(&|s| s.breaker.is_some());
        note("breaker", &|s| s.breaker.is_some(), breaker);
        let rollout = pick(&|s| s.rollout.is_some());
        note("rollout", &|s| s.rollout.is_some(), rollout);
        if let Some(pi) = rollout {
            rollouts.push((ri, pi));
        }
        if let Some(a) = auth.and_then(|i| specs[i].as_ref()).and_then(|s| s.auth.clone()) {
            route.filters.push(FilterConfig {
                kind: "auth".into(),
                spec: a,
            });
        }
        if let Some(r) = limit
            .and_then(|i| specs[i].as_ref())
            .and_then(|s| s.rate_limit.clone())
        {
            route.filters.push(FilterConfig {
                kind: "rate_limit".into(),
                spec: r,
            });
        }
        if let Some(b) = breaker
            .and_then(|i| specs[i].as_ref())
            .and_then(|s| s.breaker.clone())
        {
            if let Ok(b) = serde_json::from_value(b) {
                route.circuit_breaker = Some(b);
            }
        }
    }
    for (ri, pi) in rollouts {
        roll_out(t, objects, &policies[pi], specs[pi].as_ref(), ri);
    }
    for (pi, message) in conflicts {
        t.reports.push(Report {
            object: policy_ref(&policies[pi]),
            reason: "Conflicted".into(),
            message,
        });
    }
}

/// Splits route `ri` of `t` onto the canaries of `policy`'s rollout, and adds a route
/// per header or cookie override.
fn roll_out(
    t: &mut Translation,
    objects: &ClusterObjects,
    policy: &SluicePolicy,
    spec: Option<&Spec>,
    ri: usize,
) {
    let Some(rollout) = spec.and_then(|s| s.rollout.as_ref()) else {
        return;
    };
    let ns = policy.namespace().unwrap_or_default();
    let base = t.routes[ri].clone();
    let mains = base.backend_list();
    let [main] = mains.as_slice() else {
        t.reports.push(Report {
            object: policy_ref(policy),
            reason: "UnsupportedPolicy".into(),
            message: format!(
                "spec.rollout: route {} has no single backend to split (it answers itself or is split already); not rolled out",
                base.id
            ),
        });
        return;
    };
    let total = rollout
        .canaries
        .iter()
        .map(|c| c.weight_total)
        .max()
        .unwrap_or(100);
    let mut backends = Vec::new();
    let mut extra = Vec::new();
    for c in &rollout.canaries {
        let port = crate::endpoints::PortRef::Number(c.backend_ref.port);
        let up = match crate::endpoints::service_upstream(objects, &ns, &c.backend_ref.name, &port) {
            Ok(u) => u,
            Err(e) => {
                t.reports.push(Report {
                    object: policy_ref(policy),
                    reason: "BackendNotFound".into(),
                    message: format!(
                        "spec.rollout canary {}:{port}: {e}; not rolled out",
                        c.backend_ref.name
                    ),
                });
                continue;
            }
        };
        let up_id = up.id.clone();
        if !t.upstreams.iter().any(|u| u.id == up_id) {
            t.upstreams.push(up);
        }
        // Weights are out of the largest weight_total.
        let w = u64::from(c.weight) * u64::from(total) / u64::from(c.weight_total.max(1));
        backends.push(BackendConfig {
            upstream: up_id.clone(),
            weight: u32::try_from(w).unwrap_or(total),
        });
        let over = |suffix: &str, cond: ValueMatch, to: &str| {
            let mut r = base.clone();
            r.id = format!("{}.rollout.{}.{suffix}", base.id, c.label());
            r.matches.headers.push(cond);
            r.upstream = Some(to.to_string());
            r.backends.clear();
            r
        };
        if let Some(h) = &c.header {
            let cond = |exact: Option<String>, regex: Option<String>| ValueMatch {
                name: h.name.clone(),
                exact,
                regex,
                present: None,
            };
            if h.exact.is_some() || h.regex.is_some() {
                extra.push(over("header", cond(h.exact.clone(), h.regex.clone()), &up_id));
            } else {
                extra.push(over("header", cond(Some("always".into()), None), &up_id));
                extra.push(over(
                    "header-never",
                    cond(Some("never".into()), None),
                    &main.upstream,
                ));
            }
        }
        if let Some(name) = &c.cookie {
            let cookie = |v: &str| ValueMatch {
                name: "cookie".into(),
                exact: None,
                regex: Some(format!("(.*;\\s*)?{}={v}(;.*)?", regex_syntax::escape(name))),
                present: None,
            };
            extra.push(over("cookie", cookie("always"), &up_id));
            extra.push(over("cookie-never", cookie("never"), &main.upstream));
        }
    }
    if backends.is_empty() {
        return;
    }
    let taken: u32 = backends.iter().map(|b| b.weight).sum();
    let mut all = vec![BackendConfig {
        upstream: main.upstream.clone(),
        weight: total.saturating_sub(taken),
    }];
    all.extend(backends);
    if all.iter().all(|b| b.weight == 0) {
        all[0].weight = 1;
    }
    let route = &mut t.routes[ri];
    route.upstream = None;
    route.backends = all;
    t.routes.extend(extra);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_config::model::RouteConfig;

    fn policy(name: &str, spec: Value) -> SluicePolicy {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
            "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": spec}),
        )
        .unwrap()
    }

    fn route(id: &str) -> RouteConfig {
        serde_json::from_value(json!({"id": id, "upstream": "u"})).unwrap()
    }

    fn objects() -> ClusterObjects {
        let ing = serde_json::from_value(json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "site", "namespace": "ns", "annotations": {"sluice.dev/policy": "annotated"}},
            "spec": {"ingressClassName": "sluice"}}))
        .unwrap();
        let hr = serde_json::from_value(
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "echo", "namespace": "ns"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"name": "web"}, {"name": "api"}]}}),
        )
        .unwrap();
        let gw = serde_json::from_value(
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "ns"},
            "spec": {"gatewayClassName": "sluice", "listeners": []}}),
        )
        .unwrap();
        ClusterObjects {
            ingresses: vec![ing],
            http_routes: vec![hr],
            gateways: vec![gw],
            ..ClusterObjects::default()
        }
    }

    fn translation() -> Translation {
        Translation {
            routes: vec![
                route("k8s.ns.site.r0.p0"),
                route("gw.ns.echo.0.0"),
                route("gw.ns.echo.1.0"),
                route("k8s.ns.other.r0.p0"),
            ],
            ..Translation::default()
        }
    }

    fn kinds(t: &Translation, id: &str) -> Vec<(String, Value)> {
        let r = t.routes.iter().find(|r| r.id == id).unwrap();
        r.filters
            .iter()
            .map(|f| (f.kind.clone(), f.spec.clone()))
            .collect()
    }

    fn limit(requests: u32) -> Vec<(String, Value)> {
        vec![("rate_limit".into(), json!({"requests": requests, "per": "1s"}))]
    }

    #[test]
    fn attaches_by_annotation_targetref_rule_and_gateway_with_the_most_specific_winning() {
        let policies = vec![
            policy(
                "annotated",
                json!({"targetRefs": [], "rate_limit": {"requests": 5, "per": "1s"}}),
            ),
            policy(
                "gateway-wide",
                json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}],
                       "rate_limit": {"requests": 100, "per": "1s"}}),
            ),
            policy(
                "api-rule",
                json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "echo", "sectionName": "api"}],
                       "rate_limit": {"requests": 1, "per": "1s"}}),
            ),
        ];
        let mut t = translation();
        let mut good = LastGood::new();
        attach(
            &mut t,
            &objects(),
            &policies,
            &mut good,
            &crate::test_kinds::TestKinds::ALL,
        );
        assert_eq!(kinds(&t, "k8s.ns.site.r0.p0"), limit(5));
        assert_eq!(kinds(&t, "gw.ns.echo.0.0"), limit(100));
        assert_eq!(kinds(&t, "gw.ns.echo.1.0"), limit(1));
        assert!(kinds(&t, "k8s.ns.other.r0.p0").is_empty());
        let reasons: Vec<(&str, &str)> = t
            .reports
            .iter()
            .map(|r| (r.reason.as_str(), r.object.name.as_str()))
            .collect();
        assert_eq!(reasons, [("Conflicted", "gateway-wide")]);
        assert_eq!(good.len(), 3);
    }

    #[test]
    fn a_rollout_splits_the_route_and_adds_header_and_cookie_routes() {
        let mut o = objects();
        o.services.push(
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "canary", "namespace": "ns"},
                "spec": {"type": "ExternalName", "externalName": "canary.example", "ports": [{"port": 80}]}}))
            .unwrap(),
        );
        let p = policy(
            "roll",
            json!({"targetRefs": [{"group": "networking.k8s.io", "kind": "Ingress", "name": "site"}],
                   "rollout": {"canaries": [{"name": "v2", "backendRef": {"name": "canary", "port": 80}, "weight": 5,
                       "header": {"name": "x-canary"}, "cookie": "canary"}]}}),
        );
        let mut t = translation();
        attach(
            &mut t,
            &o,
            &[p],
            &mut LastGood::new(),
            &crate::test_kinds::TestKinds::ALL,
        );
        assert!(t.reports.is_empty(), "{:?}", t.reports);
        let r = t.routes.iter().find(|r| r.id == "k8s.ns.site.r0.p0").unwrap();
        let split: Vec<(&str, u32)> = r
            .backends
            .iter()
            .map(|b| (b.upstream.as_str(), b.weight))
            .collect();
        assert_eq!(split, [("u", 95), ("k8s.ns.canary.80", 5)]);
        let extra: Vec<(&str, &str)> = t
            .routes
            .iter()
            .filter(|r| r.id.contains(".rollout."))
            .map(|r| (r.id.as_str(), r.upstream.as_deref().unwrap()))
            .collect();
        assert_eq!(
            extra,
            [
                ("k8s.ns.site.r0.p0.rollout.v2.header", "k8s.ns.canary.80"),
                ("k8s.ns.site.r0.p0.rollout.v2.header-never", "u"),
                ("k8s.ns.site.r0.p0.rollout.v2.cookie", "k8s.ns.canary.80"),
                ("k8s.ns.site.r0.p0.rollout.v2.cookie-never", "u"),
            ]
        );
        assert_eq!(t.upstreams.len(), 1);
    }

    #[test]
    fn a_bad_edit_keeps_the_last_good_version_and_is_reported_on_the_policy() {
        let target = json!([{"group": "networking.k8s.io", "kind": "Ingress", "name": "site"}]);
        let mut good = LastGood::new();
        let mut t = translation();
        let ok = policy(
            "p",
            json!({"targetRefs": target, "rate_limit": {"requests": 5, "per": "1s"}}),
        );
        attach(
            &mut t,
            &objects(),
            &[ok],
            &mut good,
            &crate::test_kinds::TestKinds::ALL,
        );
        let mut t = translation();
        let bad = policy(
            "p",
            // A spec the route check refuses (`TestKinds` wants a map; the real kind
            // refuses more, see tests/kubernetes_tls.rs).
            json!({"targetRefs": target, "rate_limit": "5 per second"}),
        );
        attach(
            &mut t,
            &objects(),
            std::slice::from_ref(&bad),
            &mut good,
            &crate::test_kinds::TestKinds::ALL,
        );
        assert_eq!(kinds(&t, "k8s.ns.site.r0.p0"), limit(5));
        assert_eq!(t.reports.len(), 1, "{:?}", t.reports);
        assert_eq!(t.reports[0].reason, "InvalidPolicy");
        assert_eq!(t.reports[0].object.kind, "SluicePolicy");
        assert!(
            t.reports[0].message.contains("spec.rate_limit: expected a map"),
            "{}",
            t.reports[0].message
        );
        // Never good: not attached.
        let mut t = translation();
        attach(
            &mut t,
            &objects(),
            &[bad],
            &mut LastGood::new(),
            &crate::test_kinds::TestKinds::ALL,
        );
        assert!(kinds(&t, "k8s.ns.site.r0.p0").is_empty());
        // A target that does not exist is reported.
        let mut t = translation();
        let lost = policy(
            "lost",
            json!({"targetRefs": [{"group": "networking.k8s.io", "kind": "Ingress", "name": "nope"}], "rate_limit": {"requests": 5, "per": "1s"}}),
        );
        attach(
            &mut t,
            &objects(),
            &[lost],
            &mut LastGood::new(),
            &crate::test_kinds::TestKinds::ALL,
        );
        assert_eq!(t.reports.len(), 1, "{:?}", t.reports);
        assert_eq!(t.reports[0].reason, "TargetNotFound");
    }
}
