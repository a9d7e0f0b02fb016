use std::net::IpAddr;

use http::{HeaderMap, Method};

use super::*;
use crate::test_support::block_on;
use sluice_core::filter::Identity;

fn ids(v: &[&str]) -> Vec<Arc<str>> {
    v.iter().map(|s| Arc::from(*s)).collect()
}

fn canary(yaml: &str) -> Canary {
    let spec: CanarySpec = serde_yaml::from_str(yaml).unwrap();
    Canary::new(&spec, Some(["stable", "canary", "beta"].into_iter())).unwrap()
}

fn errors(yaml: &str) -> Vec<String> {
    let spec: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
    let spec: CanarySpec = match parse(&spec) {
        Ok(s) => s,
        Err(es) => {
            return es
                .into_iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect()
        }
    };
    match Canary::new(&spec, Some(["stable", "canary"].into_iter())) {
        Ok(_) => vec![],
        Err(es) => es
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect(),
    }
}

struct Req {
    headers: HeaderMap,
    query: Option<String>,
}

impl Req {
    fn new(headers: &[(&str, &str)], query: Option<&str>) -> Req {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        Req {
            headers: h,
            query: query.map(str::to_string),
        }
    }

    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &Method::GET,
            scheme: "http",
            host: None,
            authority: None,
            path: "/",
            query: self.query.as_deref(),
            headers: &self.headers,
            client_ip: None,
        }
    }
}

fn decide(c: &Canary, split: &LiveSplit, req: &Req, ctx: &FilterCtx) -> (Decision, Option<String>) {
    let mut key = None;
    let d = c.decide(&req.view(), ctx, &split.table(), &mut key);
    (d, key)
}

fn named(id: &str, r: BackendReason) -> Decision {
    Decision::Named(Arc::from(id), r)
}

const ALL_RULES: &str = r#"
rules:
  - {backend: beta, consumer: [alice], groups: [testers]}
  - {backend: canary, source: [10.0.0.0/8]}
  - {backend: canary, query: {name: version, exact: v2}}
  - {backend: canary, cookie: {name: canary}}
  - {backend: canary, header: {name: x-canary}}
  - {backend: beta, header: {name: x-beta, regex: "^b[0-9]+$"}}
"#;

#[test]
fn header_beats_cookie_beats_query_beats_source_beats_consumer_by_default() {
    let c = canary(ALL_RULES);
    let split = LiveSplit::new(&ids(&["stable", "canary", "beta"]), &[100, 0, 0]);
    let mut ctx = FilterCtx {
        client_ip: Some("10.1.2.3".parse().unwrap()),
        identity: Some(Identity {
            consumer: Arc::from("bob"),
            groups: vec![Arc::from("testers")],
            claims: vec![],
        }),
        ..FilterCtx::default()
    };
    let r = Req::new(
        &[("x-canary", "never"), ("cookie", "canary=always")],
        Some("version=v2"),
    );
    // `never` on the header wins over the cookie's `always`: pinned to the base.
    assert_eq!(
        decide(&c, &split, &r, &ctx).0,
        Decision::Index(0, BackendReason::Header)
    );
    let r = Req::new(
        &[("x-canary", "maybe"), ("cookie", "canary=always")],
        Some("version=v2"),
    );
    assert_eq!(
        decide(&c, &split, &r, &ctx).0,
        named("canary", BackendReason::Cookie)
    );
    let r = Req::new(&[], Some("a=1&version=v2"));
    assert_eq!(
        decide(&c, &split, &r, &ctx).0,
        named("canary", BackendReason::Query)
    );
    let r = Req::new(&[], Some("version=v3"));
    assert_eq!(
        decide(&c, &split, &r, &ctx).0,
        named("canary", BackendReason::Source)
    );
    ctx.client_ip = Some("192.168.0.1".parse().unwrap());
    assert_eq!(
        decide(&c, &split, &r, &ctx).0,
        named("beta", BackendReason::Consumer)
    );
    ctx.identity = None;
    assert_eq!(
        decide(&c, &split, &r, &ctx).0,
        Decision::Index(0, BackendReason::Weight)
    );
    let r = Req::new(&[("x-beta", "b12")], None);
    assert_eq!(
        decide(&c, &split, &r, &ctx).0,
        named("beta", BackendReason::Header)
    );
    let r = Req::new(&[("x-beta", "xb12")], None);
    assert_eq!(
        decide(&c, &split, &r, &ctx).0,
        Decision::Index(0, BackendReason::Weight)
    );
}

#[test]
fn an_explicit_precedence_reorders_the_stages() {
    let c = canary(&format!(
        "{ALL_RULES}precedence: [consumer, cookie, header, query, source]\n"
    ));
    let split = LiveSplit::new(&ids(&["stable", "canary", "beta"]), &[1, 0, 0]);
    let ctx = FilterCtx {
        identity: Some(Identity {
            consumer: Arc::from("alice"),
            ..Identity::default()
        }),
        ..FilterCtx::default()
    };
    let r = Req::new(&[("x-canary", "always"), ("cookie", "canary=always")], None);
    assert_eq!(
        decide(&c, &split, &r, &ctx).0,
        named("beta", BackendReason::Consumer)
    );
    let anon = FilterCtx::default();
    assert_eq!(
        decide(&c, &split, &r, &anon).0,
        named("canary", BackendReason::Cookie)
    );
}

#[test]
fn the_weighted_stage_follows_the_live_split_exactly() {
    let c = canary("{}");
    let split = LiveSplit::new(&ids(&["stable", "canary"]), &[90, 10]);
    let r = Req::new(&[], None);
    let ctx = FilterCtx::default();
    let mut counts = [0; 2];
    for _ in 0..100 {
        match decide(&c, &split, &r, &ctx).0 {
            Decision::Index(i, BackendReason::Weight) => counts[i] += 1,
            d => panic!("{d:?}"),
        }
    }
    assert_eq!(counts, [90, 10]);
    // A rollout's override applies at once.
    split.set_override(Some(&[0, 1]));
    assert_eq!(
        decide(&c, &split, &r, &ctx).0,
        Decision::Index(1, BackendReason::Weight)
    );
}

#[test]
fn sticky_keys_stay_and_keyless_clients_get_a_key_placed_by_weight() {
    let c = canary("sticky: {key: header, name: x-user, cookie: {max_age: 1d, same_site: lax}}\n");
    let split = LiveSplit::new(&ids(&["stable", "canary"]), &[80, 20]);
    let ctx = FilterCtx::default();
    let mut on_canary = 0;
    for i in 0..5_000 {
        let r = Req::new(&[("x-user", &format!("user-{i}"))], None);
        let first = decide(&c, &split, &r, &ctx);
        assert!(first.1.is_none());
        for _ in 0..3 {
            assert_eq!(decide(&c, &split, &r, &ctx), first);
        }
        if first.0 == Decision::Index(1, BackendReason::Sticky) {
            on_canary += 1;
        }
    }
    assert!(
        (900..=1_100).contains(&on_canary),
        "{on_canary} of 5000 keys on the canary"
    );
    // No header: a random key, then the cookie holding it keeps the client put.
    let (d, key) = decide(&c, &split, &Req::new(&[], None), &ctx);
    let key = key.expect("a keyless client gets a key");
    let again = Req::new(&[("cookie", &format!("sluice_canary={key}"))], None);
    let Decision::Index(i, BackendReason::Weight) = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        decide(&c, &split, &again, &ctx),
        (Decision::Index(i, BackendReason::Sticky), None)
    );
}

#[test]
fn sticky_keys_on_the_canary_stay_when_its_weight_rises() {
    let c = canary("sticky: {key: consumer}\n");
    let split = LiveSplit::new(&ids(&["stable", "canary"]), &[95, 5]);
    let who = |i: usize| FilterCtx {
        identity: Some(Identity {
            consumer: Arc::from(format!("c{i}").as_str()),
            ..Identity::default()
        }),
        ..FilterCtx::default()
    };
    let r = Req::new(&[], None);
    let before: Vec<Decision> = (0..2_000).map(|i| decide(&c, &split, &r, &who(i)).0).collect();
    split.set_override(Some(&[70, 30]));
    for (i, b) in before.iter().enumerate() {
        if *b == Decision::Index(1, BackendReason::Sticky) {
            assert_eq!(decide(&c, &split, &r, &who(i)).0, *b, "key {i} left the canary");
        }
    }
    // An anonymous client has no key and no cookie is configured: it follows the weights.
    assert_eq!(decide(&c, &split, &r, &FilterCtx::default()).1, None);
}

#[test]
fn the_response_names_the_backend_and_reason_and_sets_the_sticky_cookie() {
    let c = canary(
        "sticky: {key: cookie, cookie: {max_age: 1h, secure: true}}\nresponse_header: x-sluice-backend\n",
    )
    .with_split(Arc::new(LiveSplit::new(&ids(&["stable", "canary"]), &[1, 1])));
    assert!(c.phases().response);
    let r = Req::new(&[], None);
    let mut ctx = FilterCtx::default();
    block_on(c.on_request(&r.view(), &mut ctx));
    let BackendHint::Upstream(id) = ctx.backend.clone() else {
        panic!("{:?}", ctx.backend)
    };
    let mut out = HeaderMap::new();
    c.on_response(StatusCode::OK, &mut out, &ctx);
    assert_eq!(out["x-sluice-backend"], format!("{id}; reason=weight").as_str());
    let cookie = out[http::header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with("sluice_canary="), "{cookie}");
    assert!(
        cookie.ends_with("; Path=/; Max-Age=3600; HttpOnly; Secure"),
        "{cookie}"
    );
    // With the cookie back, the same backend, now as sticky.
    let value = cookie.split(';').next().unwrap();
    let r = Req::new(&[("cookie", value)], None);
    let mut ctx = FilterCtx::default();
    block_on(c.on_request(&r.view(), &mut ctx));
    assert_eq!(ctx.backend, BackendHint::Upstream(id));
    assert_eq!(ctx.backend_reason, Some(BackendReason::Sticky));
    let mut out = HeaderMap::new();
    c.on_response(StatusCode::OK, &mut out, &ctx);
    assert!(!out.contains_key(http::header::SET_COOKIE));
}

#[test]
fn a_client_ip_key_uses_the_address() {
    let c = canary("sticky: {key: client_ip}\n");
    let split = LiveSplit::new(&ids(&["stable", "canary"]), &[50, 50]);
    let r = Req::new(&[], None);
    let mut seen = [0; 2];
    for i in 0..200u32 {
        let ip: IpAddr = std::net::Ipv4Addr::from(0x0a00_0000 + i).into();
        let ctx = FilterCtx {
            client_ip: Some(ip),
            ..FilterCtx::default()
        };
        let Decision::Index(b, BackendReason::Sticky) = decide(&c, &split, &r, &ctx).0 else {
            panic!()
        };
        assert_eq!(
            decide(&c, &split, &r, &ctx).0,
            Decision::Index(b, BackendReason::Sticky)
        );
        seen[b] += 1;
    }
    assert!(seen[0] > 50 && seen[1] > 50, "{seen:?}");
}

#[test]
fn spec_errors_name_their_paths() {
    let es = errors(
        r#"
rules:
  - {backend: nope, header: {name: x-a}}
  - {backend: canary, header: {name: x-a}, cookie: {name: c}}
  - {backend: canary, source: [10.0.0.0/33]}
  - {backend: canary, query: {name: v, regex: "("}}
  - {backend: canary, cookie: {name: c, exact: a, present: true}}
precedence: [header, weight, cookie, header]
sticky: {key: header}
response_header: "bad header"
"#,
    );
    let want = [
        "precedence[2]: `weight` always decides, so it must be last",
        "precedence[3]: `header` is listed twice",
        "rules[0].backend: \"nope\" is not one of the route's backends",
        "rules[1]: give exactly one of `header`, `cookie`, `query`, `source`, `consumer`/`groups`",
        "rules[2].source[0]:",
        "rules[2]: a `source` rule, but `precedence` does not list `source`",
        "rules[3].query.regex:",
        "rules[4].cookie: give at most one of `exact`, `regex`, `present`",
        "sticky.name: required with `key: header`",
        "sticky: set, but `precedence` does not list `sticky`",
        "response_header: \"bad header\" is not a header name",
    ];
    for w in want {
        assert!(es.iter().any(|e| e.starts_with(w)), "missing {w:?} in {es:#?}");
    }
    assert_eq!(errors("{rules: [{backend: canary, heder: {name: a}}]}").len(), 1);
    assert!(errors("{rules: [{backend: canary, heder: {name: a}}]}")[0].starts_with("rules[0]"));
    assert!(errors("{}").is_empty());
}
