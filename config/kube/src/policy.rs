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
//!   `docs/config.md` documents them. `rollout` is not attached yet (reported).
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
use sluice_config::model::{FilterConfig, RouteConfig, RouteMatch};

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
    rollout: Option<Value>,
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
/// breaker on a route of their own.
fn check(spec: &Value) -> Result<Spec, String> {
    let s: Spec = serde_json::from_value(spec.clone()).map_err(|e| format!("spec: {e}"))?;
    if s.auth.is_none() && s.rate_limit.is_none() && s.breaker.is_none() && s.rollout.is_none() {
        return Err("spec: at least one of auth, rate_limit, breaker, rollout is required".into());
    }
    let mut probe = RouteConfig {
        id: "policy-check".into(),
        priority: 0,
        matches: RouteMatch::default(),
        upstream: None,
        backends: Vec::new(),
        timeouts: Default::default(),
        rewrite: None,
        headers: Default::default(),
        filters: Vec::new(),
        circuit_breaker: None,
        retries: None,
        limits: Default::default(),
        request_buffering: None,
    };
    probe.filters = filters(&s);
    probe.filters.push(FilterConfig {
        kind: "direct_response".into(),
        spec: serde_json::json!({"status": 204}),
    });
    if let Some(b) = &s.breaker {
        probe.circuit_breaker = Some(serde_json::from_value(b.clone()).map_err(|e| format!("spec.breaker: {e}"))?);
    }
    let errors = crate::source::route_errors(&probe, Vec::new());
    if errors.is_empty() {
        Ok(s)
    } else {
        // The probe's paths (`routes[0].filters[0]`) name the policy's sections instead.
        let named: Vec<String> = errors
            .iter()
            .map(|e| {
                e.replace("routes[0].circuit_breaker", "spec.breaker")
                    .replace("filters[0].auth", "spec.auth")
                    .replace("filters[0].rate_limit", "spec.rate_limit")
                    .replace("filters[1].rate_limit", "spec.rate_limit")
            })
            .collect();
        Err(named.join("; "))
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
pub fn attach(t: &mut Translation, objects: &ClusterObjects, policies: &[SluicePolicy], last_good: &mut LastGood) {
    let mut specs: Vec<Option<Spec>> = Vec::with_capacity(policies.len());
    for p in policies {
        let key = (p.namespace().unwrap_or_default(), p.name_any());
        let spec = match check(&p.spec) {
            Ok(s) => {
                last_good.insert(key, p.spec.clone());
                Some(s)
            }
            Err(why) => {
                let previous = last_good.get(&key).and_then(|v| check(v).ok());
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
        if spec.as_ref().is_some_and(|s| s.rollout.is_some()) {
            t.reports.push(Report {
                object: policy_ref(p),
                reason: "UnsupportedPolicy".into(),
                message: "spec.rollout is not attached yet; the other sections are".into(),
            });
        }
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
                    message: format!("target {} {}/{} not found in namespace {ns}", tr.kind, tr.group, tr.name),
                }),
            }
        }
    }
    if reaches.is_empty() {
        return;
    }
    let mut conflicts: BTreeMap<usize, String> = BTreeMap::new();
    for route in &mut t.routes {
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
        if let Some(a) = auth.and_then(|i| specs[i].as_ref()).and_then(|s| s.auth.clone()) {
            route.filters.push(FilterConfig {
                kind: "auth".into(),
                spec: a,
            });
        }
        if let Some(r) = limit.and_then(|i| specs[i].as_ref()).and_then(|s| s.rate_limit.clone()) {
            route.filters.push(FilterConfig {
                kind: "rate_limit".into(),
                spec: r,
            });
        }
        if let Some(b) = breaker.and_then(|i| specs[i].as_ref()).and_then(|s| s.breaker.clone()) {
            if let Ok(b) = serde_json::from_value(b) {
                route.circuit_breaker = Some(b);
            }
        }
    }
    for (pi, message) in conflicts {
        t.reports.push(Report {
            object: policy_ref(&policies[pi]),
            reason: "Conflicted".into(),
            message,
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(name: &str, spec: Value) -> SluicePolicy {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
            "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": spec}))
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
        let hr = serde_json::from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "echo", "namespace": "ns"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"name": "web"}, {"name": "api"}]}}))
        .unwrap();
        let gw = serde_json::from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "ns"},
            "spec": {"gatewayClassName": "sluice", "listeners": []}}))
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

    fn kinds(t: &Translation, id: &str) -> Vec<String> {
        let r = t.routes.iter().find(|r| r.id == id).unwrap();
        r.filters.iter().map(|f| format!("{}:{}", f.kind, f.spec)).collect()
    }

    const LIMIT: &str = r#"{"requests":5,"per":"1s"}"#;

    #[test]
    fn attaches_by_annotation_targetref_rule_and_gateway_with_the_most_specific_winning() {
        let limit: Value = serde_json::from_str(LIMIT).unwrap();
        let policies = vec![
            policy("annotated", json!({"targetRefs": [], "rate_limit": limit})),
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
        attach(&mut t, &objects(), &policies, &mut good);
        assert_eq!(kinds(&t, "k8s.ns.site.r0.p0"), [format!("rate_limit:{LIMIT}")]);
        assert_eq!(
            kinds(&t, "gw.ns.echo.0.0"),
            [r#"rate_limit:{"per":"1s","requests":100}"#]
        );
        assert_eq!(kinds(&t, "gw.ns.echo.1.0"), [r#"rate_limit:{"per":"1s","requests":1}"#]);
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
    fn a_bad_edit_keeps_the_last_good_version_and_is_reported_on_the_policy() {
        let target = json!([{"group": "networking.k8s.io", "kind": "Ingress", "name": "site"}]);
        let mut good = LastGood::new();
        let mut t = translation();
        let ok = policy("p", json!({"targetRefs": target, "rate_limit": {"requests": 5, "per": "1s"}}));
        attach(&mut t, &objects(), &[ok], &mut good);
        let mut t = translation();
        let bad = policy("p", json!({"targetRefs": target, "rate_limit": {"requests": 5, "pre": "1s"}}));
        attach(&mut t, &objects(), &[bad.clone()], &mut good);
        assert_eq!(
            kinds(&t, "k8s.ns.site.r0.p0"),
            [r#"rate_limit:{"per":"1s","requests":5}"#]
        );
        assert_eq!(t.reports.len(), 1, "{:?}", t.reports);
        assert_eq!(t.reports[0].reason, "InvalidPolicy");
        assert_eq!(t.reports[0].object.kind, "SluicePolicy");
        assert!(t.reports[0].message.contains("pre"), "{}", t.reports[0].message);
        // Never good: not attached.
        let mut t = translation();
        attach(&mut t, &objects(), &[bad], &mut LastGood::new());
        assert!(kinds(&t, "k8s.ns.site.r0.p0").is_empty());
        // A target that does not exist is reported.
        let mut t = translation();
        let lost = policy(
            "lost",
            json!({"targetRefs": [{"group": "networking.k8s.io", "kind": "Ingress", "name": "nope"}], "breaker": {}}),
        );
        attach(&mut t, &objects(), &[lost], &mut LastGood::new());
        assert_eq!(t.reports[0].reason, "TargetNotFound");
    }
}
