//! The `canary` filter: decides which of the route's backends serves a request, and why.
//!
//! ```yaml
//! routes:
//!   - id: api
//!     backends: [{upstream: stable, weight: 90}, {upstream: canary, weight: 10}]
//!     filters:
//!       - canary:
//!           rules:
//!             - {backend: canary, header: {name: x-canary}}          # `always` / `never`
//!             - {backend: canary, cookie: {name: canary}}
//!             - {backend: canary, query: {name: version, exact: v2}}
//!             - {backend: canary, source: [10.0.0.0/8]}
//!             - {backend: canary, groups: [beta-testers]}
//!           precedence: [header, cookie, query, source, consumer, sticky, weight]
//!           sticky: {key: cookie, name: sluice_canary, cookie: {max_age: 1d}}
//!           response_header: x-sluice-backend
//! ```
//!
//! The request is checked stage by stage in `precedence` order; the first stage that
//! decides wins:
//!
//! - a **rule stage** (`header`, `cookie`, `query`, `source`, `consumer`) checks the rules
//!   of that kind in the order written. A rule on a value (`header`, `cookie`, `query`)
//!   with `exact`, `regex` or `present` sends a matching request to its `backend`; with
//!   none of them it reads the value the way ingress-nginx does: `always` sends to the
//!   rule's backend, `never` pins to the base (the route's first backend), anything else
//!   does not match;
//! - `sticky` hashes the client's key onto the live weights ([`sticky`]): a key stays on
//!   its backend, and a canary whose weight rises keeps every key it had;
//! - `weight` is the route's live weighted split (a rollout's override included): exact
//!   over short runs.
//!
//! The decision goes to the gateway as a [`BackendHint`] and a [`BackendReason`] (the
//! access log's `backend_reason`, `sluice_backend_decisions_total`, and the optional
//! response header `<backend>; reason=<reason>`).
//!
//! The weights are read per request from the route's [`LiveSplit`] (one `ArcSwap` load):
//! no lock on the request path, and a rollout's steps apply at once.

pub mod sticky;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue, StatusCode};
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::ip_restriction::{parse_net, IpSet};
use crate::registry::{parse, BuildCtx, Kind, SpecError};
use sluice_core::filter::{
    BackendHint, BackendReason, Filter, FilterCtx, Flow, HeaderEdit, Phases, RequestView,
};
use sluice_core::split::{LiveSplit, SplitTable};

/// The registry entry.
pub const KIND: Kind = Kind {
    name: "canary",
    answers: false,
    build,
    redact: crate::registry::shown_as::<CanarySpec>,
    schema: Some(crate::registry::schema_of::<CanarySpec>),
};

/// A route's canary rules, their precedence, sticky assignment and the response header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanarySpec {
    /// Rules that send a request to a named backend. Default: none.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// The order the stages are checked in; the first that decides wins. Every rule
    /// kind in use, and `sticky` when `sticky` is set, must be listed; `weight`, if
    /// listed, must be last (it always decides). Default:
    /// `[header, cookie, query, source, consumer, sticky, weight]`.
    #[serde(default = "default_precedence")]
    pub precedence: Vec<Stage>,
    /// Sticky assignment of clients to backends by a key. Default: none (requests no
    /// rule matched follow the weights one by one).
    #[serde(default)]
    pub sticky: Option<StickySpec>,
    /// A response header that tells the backend and the reason, as
    /// `<upstream id>; reason=<reason>` (e.g. `canary; reason=header`). Default: none.
    #[serde(default)]
    pub response_header: Option<String>,
}

/// One stage of the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Rules on a request header.
    Header,
    /// Rules on a cookie.
    Cookie,
    /// Rules on a query parameter.
    Query,
    /// Rules on the client's network (`source`).
    Source,
    /// Rules on the consumer or its groups (`consumer`, `groups`).
    Consumer,
    /// Sticky assignment by key.
    Sticky,
    /// The route's weighted split.
    Weight,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Header => "header",
            Stage::Cookie => "cookie",
            Stage::Query => "query",
            Stage::Source => "source",
            Stage::Consumer => "consumer",
            Stage::Sticky => "sticky",
            Stage::Weight => "weight",
        }
    }

    fn reason(self) -> BackendReason {
        match self {
            Stage::Header => BackendReason::Header,
            Stage::Cookie => BackendReason::Cookie,
            Stage::Query => BackendReason::Query,
            Stage::Source => BackendReason::Source,
            Stage::Consumer => BackendReason::Consumer,
            Stage::Sticky => BackendReason::Sticky,
            Stage::Weight => BackendReason::Weight,
        }
    }
}

fn default_precedence() -> Vec<Stage> {
    vec![
        Stage::Header,
        Stage::Cookie,
        Stage::Query,
        Stage::Source,
        Stage::Consumer,
        Stage::Sticky,
        Stage::Weight,
    ]
}

/// One rule: a condition and the backend it sends to. Give exactly one condition
/// (`consumer` and `groups` may go together: either matches).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// The upstream id of one of the route's backends. Required.
    pub backend: String,
    /// A request header. Default: none.
    #[serde(default)]
    pub header: Option<ValueMatchSpec>,
    /// A cookie. Default: none.
    #[serde(default)]
    pub cookie: Option<ValueMatchSpec>,
    /// A query parameter (its value percent-decoded). Default: none.
    #[serde(default)]
    pub query: Option<ValueMatchSpec>,
    /// Client networks (`10.0.0.0/8`, `2001:db8::/32`, a bare address), on the client
    /// address after `server.trusted_proxies`. Default: none.
    #[serde(default)]
    pub source: Option<Vec<String>>,
    /// Consumer ids (as an authentication filter before this one identified them).
    /// Default: none.
    #[serde(default)]
    pub consumer: Option<Vec<String>>,
    /// Consumer groups: a consumer in any of them matches. Default: none.
    #[serde(default)]
    pub groups: Option<Vec<String>>,
}

/// A condition on a named value (header, cookie or query parameter). With none of
/// `exact`, `regex`, `present`, the value `always` sends to the rule's backend and
/// `never` to the base (ingress-nginx's `canary-by-header` / `canary-by-cookie`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueMatchSpec {
    /// The header, cookie or parameter name (headers case-insensitive). Required.
    pub name: String,
    /// Matches when the value is exactly this. Default: none.
    #[serde(default)]
    pub exact: Option<String>,
    /// Matches when the value matches this regular expression (unanchored: use `^…$`
    /// for the whole value). Default: none.
    #[serde(default)]
    pub regex: Option<String>,
    /// Matches when the value is there at all (`true`). Default: `false`.
    #[serde(default)]
    pub present: bool,
}

/// Sticky assignment: the key a client is known by, and the cookie keyless clients get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StickySpec {
    /// What identifies a client: `cookie`, `header`, `consumer` or `client_ip`. Required.
    pub key: StickyKey,
    /// The cookie or header name for `key: cookie` / `key: header`. Default:
    /// `sluice_canary` for a cookie; required for a header.
    #[serde(default)]
    pub name: Option<String>,
    /// The cookie a client without a key gets, holding a random key so it stays put.
    /// With `key: cookie` it is that cookie (always set; this block only changes its
    /// attributes); with another key it is read when the key is missing (a client with
    /// neither gets one). Default: with `key: cookie`, the defaults below; otherwise none
    /// (keyless clients follow the weights request by request).
    #[serde(default)]
    pub cookie: Option<CookieSpec>,
}

/// What identifies a sticky client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StickyKey {
    /// A cookie's value (`name`).
    Cookie,
    /// A request header's value (`name`).
    Header,
    /// The identified consumer's id.
    Consumer,
    /// The client address (after `server.trusted_proxies`).
    ClientIp,
}

/// The attributes of the sticky cookie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CookieSpec {
    /// The cookie's name. Default: the sticky `name` with `key: cookie`, else
    /// `sluice_canary`.
    #[serde(default)]
    pub name: Option<String>,
    /// `Max-Age`. Default: none (a session cookie).
    #[schemars(with = "Option<sluice_config::schema::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// `Path`. Default: `/`.
    #[serde(default = "default_path")]
    pub path: String,
    /// `Secure`. Default: `false`.
    #[serde(default)]
    pub secure: bool,
    /// `HttpOnly`. Default: `true`.
    #[serde(default = "yes")]
    pub http_only: bool,
    /// `SameSite`: `lax`, `strict` or `none`. Default: none (the browser's default).
    #[serde(default)]
    pub same_site: Option<SameSite>,
}

impl Default for CookieSpec {
    fn default() -> Self {
        CookieSpec {
            name: None,
            max_age: None,
            path: default_path(),
            secure: false,
            http_only: true,
            same_site: None,
        }
    }
}

/// A cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SameSite {
    /// `SameSite=Lax`.
    Lax,
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=None`.
    None,
}

fn default_path() -> String {
    "/".into()
}

fn yes() -> bool {
    true
}

/// The default sticky cookie name.
pub const DEFAULT_COOKIE: &str = "sluice_canary";

fn build(spec: &serde_json::Value, ctx: &BuildCtx<'_>) -> Result<Arc<dyn Filter>, Vec<SpecError>> {
    let spec: CanarySpec = parse(spec)?;
    // The route's backends, when the build knows its route (validation of a partial
    // config may not).
    let route = ctx.config.routes.iter().find(|r| r.id == ctx.route);
    let backends = route.map(|r| r.backend_list());
    let canary = Canary::new(
        &spec,
        backends.as_deref().map(|b| b.iter().map(|b| b.upstream.as_str())),
    )?;
    let split = match &backends {
        Some(b) if !b.is_empty() => {
            let ids: Vec<Arc<str>> = b.iter().map(|b| Arc::from(b.upstream.as_str())).collect();
            let weights: Vec<u32> = b.iter().map(|b| b.weight).collect();
            ctx.services
                .get_or_insert_with(sluice_core::split::Splits::default)
                .for_route(ctx.route, &ids, &weights)
        }
        _ => Arc::new(LiveSplit::new(&[], &[])),
    };
    Ok(Arc::new(canary.with_split(split)))
}

/// What a value condition checks.
#[derive(Debug, Clone)]
enum ValueTest {
    /// `always` / `never`.
    AlwaysNever,
    Exact(String),
    Regex(Regex),
    Present,
}

/// A compiled condition.
#[derive(Debug, Clone)]
enum Cond {
    Header(HeaderName, ValueTest),
    Cookie(String, ValueTest),
    Query(String, ValueTest),
    Source(IpSet),
    Consumer {
        ids: Vec<Arc<str>>,
        groups: Vec<Arc<str>>,
    },
}

/// A compiled rule.
#[derive(Debug, Clone)]
struct Rule {
    backend: Arc<str>,
    cond: Cond,
}

/// What one rule says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Send it to the rule's backend.
    To,
    /// Pin it to the base (`never`).
    Base,
}

impl ValueTest {
    fn check(&self, value: Option<&str>) -> Option<Verdict> {
        let v = value?;
        match self {
            ValueTest::AlwaysNever => match v {
                "always" => Some(Verdict::To),
                "never" => Some(Verdict::Base),
                _ => None,
            },
            ValueTest::Exact(e) => (v == e).then_some(Verdict::To),
            ValueTest::Regex(r) => r.is_match(v).then_some(Verdict::To),
            ValueTest::Present => Some(Verdict::To),
        }
    }
}

impl Rule {
    fn check(&self, req: &RequestView<'_>, ctx: &FilterCtx) -> Option<Verdict> {
        match &self.cond {
            Cond::Header(name, t) => {
                let v = req.headers.get(name);
                match t {
                    // A header that is not visible ASCII is there all the same.
                    ValueTest::Present => v.map(|_| Verdict::To),
                    _ => t.check(v.and_then(|v| v.to_str().ok())),
                }
            }
            Cond::Cookie(name, t) => t.check(sluice_core::cookie::get(req.headers, name)),
            Cond::Query(name, t) => {
                let v = req.query.and_then(|q| sluice_core::router::query_param(q, name));
                t.check(v.as_deref())
            }
            Cond::Source(set) => ctx.client_ip.filter(|ip| set.contains(*ip)).map(|_| Verdict::To),
            Cond::Consumer { ids, groups } => {
                let who = ctx.identity.as_ref()?;
                let hit = ids.contains(&who.consumer) || who.groups.iter().any(|g| groups.contains(g));
                hit.then_some(Verdict::To)
            }
        }
    }
}

/// The compiled sticky assignment.
#[derive(Debug, Clone)]
struct Sticky {
    key: StickyKeyOf,
    /// The cookie keyless clients get (and that is read when the key is missing).
    cookie: Option<StickyCookie>,
}

#[derive(Debug, Clone)]
enum StickyKeyOf {
    Cookie(String),
    Header(HeaderName),
    Consumer,
    ClientIp,
}

#[derive(Debug, Clone)]
struct StickyCookie {
    name: String,
    /// Everything after `name=value`, e.g. `; Path=/; HttpOnly`.
    attributes: String,
}

/// The random key given to a keyless client, to be set as its cookie.
#[derive(Debug, Clone)]
struct NewKey(String);

/// One compiled stage.
#[derive(Debug, Clone)]
enum Step {
    Rules(BackendReason, Vec<Rule>),
    Sticky,
    Weight,
}

/// The `canary` filter: its compiled stages, sticky assignment and the route's split.
#[derive(Debug)]
pub struct Canary {
    steps: Vec<Step>,
    sticky: Option<Sticky>,
    response_header: Option<HeaderName>,
    split: Arc<LiveSplit>,
}

/// How a request was decided: the backend's index in the split table (or the rule's
/// backend by id) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Backend `index` of the table.
    Index(usize, BackendReason),
    /// The backend with this upstream id.
    Named(Arc<str>, BackendReason),
    /// No backend has weight: the gateway's split decides (and fails).
    Undecided,
}

impl Canary {
    /// Validates the spec (errors at their paths inside it) and compiles it. With
    /// `backends` (the route's upstream ids), rules must name one of them.
    pub fn new<'b>(
        spec: &CanarySpec,
        backends: Option<impl Iterator<Item = &'b str> + Clone>,
    ) -> Result<Canary, Vec<SpecError>> {
        let mut errors = Vec::new();
        // Precedence: each stage once, `weight` last.
        let mut order: Vec<Stage> = Vec::new();
        for (i, s) in spec.precedence.iter().enumerate() {
            if order.contains(s) {
                errors.push(SpecError::at(
                    format!("precedence[{i}]"),
                    format!("`{}` is listed twice", s.as_str()),
                ));
            } else if order.contains(&Stage::Weight) {
                errors.push(SpecError::at(
                    format!("precedence[{i}]"),
                    "`weight` always decides, so it must be last",
                ));
            }
            order.push(*s);
        }
        let mut by_stage: Vec<(Stage, Vec<Rule>)> = Vec::new();
        for (i, r) in spec.rules.iter().enumerate() {
            let at = |f: &str| format!("rules[{i}].{f}");
            if let Some(b) = backends.clone() {
                let mut b = b;
                if !b.any(|id| id == r.backend) {
                    errors.push(SpecError::at(
                        at("backend"),
                        format!("{:?} is not one of the route's backends", r.backend),
                    ));
                }
            }
            let given = [
                r.header.is_some(),
                r.cookie.is_some(),
                r.query.is_some(),
                r.source.is_some(),
                r.consumer.is_some() || r.groups.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if given != 1 {
                errors.push(SpecError::at(
                    format!("rules[{i}]"),
                    "give exactly one of `header`, `cookie`, `query`, `source`, `consumer`/`groups`",
                ));
                continue;
            }
            let (stage, cond) = if let Some(h) = &r.header {
                let name = match HeaderName::from_bytes(h.name.as_bytes()) {
                    Ok(n) => n,
                    Err(_) => {
                        errors.push(SpecError::at(
                            at("header.name"),
                            format!("{:?} is not a header name", h.name),
                        ));
                        continue;
                    }
                };
                match value_test(h, &at("header"), &mut errors) {
                    Some(t) => (Stage::Header, Cond::Header(name, t)),
                    None => continue,
                }
            } else if let Some(c) = &r.cookie {
                match value_test(c, &at("cookie"), &mut errors) {
                    Some(t) => (Stage::Cookie, Cond::Cookie(c.name.clone(), t)),
                    None => continue,
                }
            } else if let Some(q) = &r.query {
                match value_test(q, &at("query"), &mut errors) {
                    Some(t) => (Stage::Query, Cond::Query(q.name.clone(), t)),
                    None => continue,
                }
            } else if let Some(src) = &r.source {
                let mut nets = Vec::with_capacity(src.len());
                for (j, s) in src.iter().enumerate() {
                    match parse_net(s) {
                        Ok(n) => nets.push(n),
                        Err(m) => errors.push(SpecError::at(format!("rules[{i}].source[{j}]"), m)),
                    }
                }
                if src.is_empty() {
                    errors.push(SpecError::at(at("source"), "needs at least one network"));
                }
                (Stage::Source, Cond::Source(IpSet::new(&nets)))
            } else {
                let ids: Vec<Arc<str>> = r
                    .consumer
                    .iter()
                    .flatten()
                    .map(|c| Arc::from(c.as_str()))
                    .collect();
                let groups: Vec<Arc<str>> =
                    r.groups.iter().flatten().map(|g| Arc::from(g.as_str())).collect();
                if ids.is_empty() && groups.is_empty() {
                    errors.push(SpecError::at(
                        format!("rules[{i}]"),
                        "`consumer`/`groups` need at least one entry",
                    ));
                }
                (Stage::Consumer, Cond::Consumer { ids, groups })
            };
            if !order.contains(&stage) {
                errors.push(SpecError::at(
                    format!("rules[{i}]"),
                    format!(
                        "a `{}` rule, but `precedence` does not list `{}`",
                        stage.as_str(),
                        stage.as_str()
                    ),
                ));
            }
            let rule = Rule {
                backend: Arc::from(r.backend.as_str()),
                cond,
            };
            match by_stage.iter_mut().find(|(s, _)| *s == stage) {
                Some((_, rules)) => rules.push(rule),
                None => by_stage.push((stage, vec![rule])),
            }
        }
        let sticky = spec.sticky.as_ref().and_then(|s| sticky_of(s, &mut errors));
        if spec.sticky.is_some() && !order.contains(&Stage::Sticky) {
            errors.push(SpecError::at(
                "sticky",
                "set, but `precedence` does not list `sticky`",
            ));
        }
        let response_header = match &spec.response_header {
            Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    errors.push(SpecError::at(
                        "response_header",
                        format!("{h:?} is not a header name"),
                    ));
                    None
                }
            },
            None => None,
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut steps = Vec::new();
        for s in order {
            match s {
                Stage::Sticky if sticky.is_some() => steps.push(Step::Sticky),
                Stage::Sticky => {}
                Stage::Weight => steps.push(Step::Weight),
                rules => {
                    if let Some(pos) = by_stage.iter().position(|(k, _)| *k == rules) {
                        let (_, list) = by_stage.swap_remove(pos);
                        steps.push(Step::Rules(rules.reason(), list));
                    }
                }
            }
        }
        Ok(Canary {
            steps,
            sticky,
            response_header,
            split: Arc::new(LiveSplit::new(&[], &[])),
        })
    }

    /// The same filter reading its weights from `split` (the route's live split).
    pub fn with_split(mut self, split: Arc<LiveSplit>) -> Canary {
        self.split = split;
        self
    }

    /// The decision for a request against `table` (the route's live weights): the pure
    /// core of [`Filter::on_request`]. `new_key` gets the random key a keyless sticky
    /// client is given (to set as its cookie).
    pub fn decide(
        &self,
        req: &RequestView<'_>,
        ctx: &FilterCtx,
        table: &SplitTable,
        new_key: &mut Option<String>,
    ) -> Decision {
        for step in &self.steps {
            match step {
                Step::Rules(reason, rules) => {
                    for r in rules {
                        match r.check(req, ctx) {
                            Some(Verdict::To) => return Decision::Named(r.backend.clone(), *reason),
                            Some(Verdict::Base) => {
                                let base_is_rule = table.backends.first().is_some_and(|b| *b == r.backend);
                                if !table.backends.is_empty() && !base_is_rule {
                                    return Decision::Index(0, *reason);
                                }
                            }
                            None => {}
                        }
                    }
                }
                Step::Sticky => {
                    if let Some(d) = self.sticky_decision(req, ctx, table, new_key) {
                        return d;
                    }
                }
                Step::Weight => break,
            }
        }
        match table.sequence.next() {
            Some(i) => Decision::Index(i, BackendReason::Weight),
            None => Decision::Undecided,
        }
    }

    fn sticky_decision(
        &self,
        req: &RequestView<'_>,
        ctx: &FilterCtx,
        table: &SplitTable,
        new_key: &mut Option<String>,
    ) -> Option<Decision> {
        let s = self.sticky.as_ref()?;
        let on = |key: &[u8], reason| {
            sticky::backend_for(sticky::point(key), &table.weights).map(|i| Decision::Index(i, reason))
        };
        let mut ip = [0u8; 16];
        let key: Option<&[u8]> = match &s.key {
            StickyKeyOf::Cookie(name) => sluice_core::cookie::get(req.headers, name).map(str::as_bytes),
            StickyKeyOf::Header(name) => req.headers.get(name).map(HeaderValue::as_bytes),
            StickyKeyOf::Consumer => ctx.identity.as_ref().map(|i| i.consumer.as_bytes()),
            StickyKeyOf::ClientIp => match ctx.client_ip {
                Some(IpAddr::V4(a)) => {
                    ip[..4].copy_from_slice(&a.octets());
                    Some(&ip[..4])
                }
                Some(IpAddr::V6(a)) => {
                    ip = a.octets();
                    Some(&ip[..])
                }
                None => None,
            },
        };
        let key = key.filter(|k| !k.is_empty());
        if let Some(k) = key {
            return on(k, BackendReason::Sticky);
        }
        let c = s.cookie.as_ref()?;
        if let Some(k) = sluice_core::cookie::get(req.headers, &c.name).filter(|k| !k.is_empty()) {
            return on(k.as_bytes(), BackendReason::Sticky);
        }
        // A keyless client: a random key, placed by its point (so the share of new keys
        // follows the weights), given as a cookie so it stays put.
        let k = format!("{:016x}", rand::random::<u64>());
        let d = on(k.as_bytes(), BackendReason::Weight);
        *new_key = Some(k);
        d
    }
}

fn value_test(v: &ValueMatchSpec, at: &str, errors: &mut Vec<SpecError>) -> Option<ValueTest> {
    if v.name.is_empty() {
        errors.push(SpecError::at(format!("{at}.name"), "must not be empty"));
        return None;
    }
    let n = usize::from(v.exact.is_some()) + usize::from(v.regex.is_some()) + usize::from(v.present);
    if n > 1 {
        errors.push(SpecError::at(
            at,
            "give at most one of `exact`, `regex`, `present`",
        ));
        return None;
    }
    if let Some(e) = &v.exact {
        return Some(ValueTest::Exact(e.clone()));
    }
    if let Some(r) = &v.regex {
        return match Regex::new(r) {
            Ok(r) => Some(ValueTest::Regex(r)),
            Err(e) => {
                errors.push(SpecError::at(format!("{at}.regex"), e.to_string()));
                None
            }
        };
    }
    Some(if v.present {
        ValueTest::Present
    } else {
        ValueTest::AlwaysNever
    })
}

fn sticky_of(s: &StickySpec, errors: &mut Vec<SpecError>) -> Option<Sticky> {
    let key = match s.key {
        StickyKey::Cookie => StickyKeyOf::Cookie(s.name.clone().unwrap_or_else(|| DEFAULT_COOKIE.into())),
        StickyKey::Header => match s.name.as_deref().map(|n| HeaderName::from_bytes(n.as_bytes())) {
            Some(Ok(n)) => StickyKeyOf::Header(n),
            Some(Err(_)) => {
                errors.push(SpecError::at("sticky.name", "is not a header name"));
                return None;
            }
            None => {
                errors.push(SpecError::at("sticky.name", "required with `key: header`"));
                return None;
            }
        },
        StickyKey::Consumer | StickyKey::ClientIp if s.name.is_some() => {
            errors.push(SpecError::at(
                "sticky.name",
                "only with `key: cookie` or `key: header`",
            ));
            return None;
        }
        StickyKey::Consumer => StickyKeyOf::Consumer,
        StickyKey::ClientIp => StickyKeyOf::ClientIp,
    };
    let spec = match (&key, &s.cookie) {
        (_, Some(c)) => c.clone(),
        (StickyKeyOf::Cookie(_), None) => CookieSpec::default(),
        _ => return Some(Sticky { key, cookie: None }),
    };
    let name = match (&key, &spec.name) {
        (StickyKeyOf::Cookie(k), Some(n)) if k != n => {
            errors.push(SpecError::at(
                "sticky.cookie.name",
                format!("with `key: cookie` the cookie is `sticky.name` ({k:?})"),
            ));
            return None;
        }
        (StickyKeyOf::Cookie(k), _) => k.clone(),
        (_, Some(n)) => n.clone(),
        (_, None) => DEFAULT_COOKIE.into(),
    };
    let token = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        errors.push(SpecError::at(
            "sticky.cookie.name",
            format!("{name:?} is not a cookie name"),
        ));
        return None;
    }
    if spec.path.chars().any(|c| c == ';' || c.is_ascii_control()) {
        errors.push(SpecError::at(
            "sticky.cookie.path",
            "must not hold `;` or control characters",
        ));
        return None;
    }
    let mut attributes = format!("; Path={}", spec.path);
    if let Some(age) = spec.max_age {
        attributes.push_str(&format!("; Max-Age={}", age.as_secs()));
    }
    if spec.http_only {
        attributes.push_str("; HttpOnly");
    }
    if spec.secure {
        attributes.push_str("; Secure");
    }
    match spec.same_site {
        Some(SameSite::Lax) => attributes.push_str("; SameSite=Lax"),
        Some(SameSite::Strict) => attributes.push_str("; SameSite=Strict"),
        Some(SameSite::None) => attributes.push_str("; SameSite=None"),
        None => {}
    }
    Some(Sticky {
        key,
        cookie: Some(StickyCookie { name, attributes }),
    })
}

#[async_trait]
impl Filter for Canary {
    fn kind(&self) -> &'static str {
        "canary"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            response: self.response_header.is_some()
                || self.sticky.as_ref().is_some_and(|s| s.cookie.is_some()),
            ..Phases::default()
        }
    }

    async fn on_request(&self, req: &RequestView<'_>, ctx: &mut FilterCtx) -> Flow {
        let table = self.split.table();
        let mut new_key = None;
        let (id, reason) = match self.decide(req, ctx, &table, &mut new_key) {
            Decision::Index(i, reason) => match table.backends.get(i) {
                Some(id) => (id.clone(), reason),
                None => return Flow::Continue,
            },
            Decision::Named(id, reason) => (id, reason),
            Decision::Undecided => return Flow::Continue,
        };
        ctx.backend = BackendHint::Upstream(id);
        ctx.backend_reason = Some(reason);
        if let Some(k) = new_key {
            ctx.ext.insert(NewKey(k));
        }
        Flow::Continue
    }

    fn on_response(&self, _status: StatusCode, headers: &mut dyn HeaderEdit, ctx: &FilterCtx) {
        if let (Some(h), Some(reason), BackendHint::Upstream(id)) =
            (&self.response_header, ctx.backend_reason, &ctx.backend)
        {
            if let Ok(v) = HeaderValue::from_str(&format!("{id}; reason={}", reason.as_str())) {
                headers.set(h.clone(), v);
            }
        }
        if let (Some(NewKey(k)), Some(c)) = (
            ctx.ext.get::<NewKey>(),
            self.sticky.as_ref().and_then(|s| s.cookie.as_ref()),
        ) {
            if let Ok(v) = HeaderValue::from_str(&format!("{}={k}{}", c.name, c.attributes)) {
                headers.append(http::header::SET_COOKIE, v);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
