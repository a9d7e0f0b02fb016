//! The backend choice of a route with a canary: the weighted split alone (the live
//! table's smooth weighted sequence), sticky assignment (hash a key, map its point onto
//! the live weights), and a chain of match rules (header, cookie, query, source,
//! consumer) that all miss before the weights decide, or where the last one hits.
//!
//! `cargo bench -p sluice-benches --bench canary`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use sluice_core::split::LiveSplit;
use sluice_core::{FilterCtx, Identity, RequestView};
use sluice_filters::canary::{sticky, Canary, CanarySpec};

fn canary(yaml: serde_json::Value) -> Canary {
    let spec: CanarySpec = serde_json::from_value(yaml).unwrap_or_else(|e| panic!("{e}"));
    Canary::new(&spec, Some(["stable", "canary"].into_iter())).unwrap_or_else(|e| panic!("{e:?}"))
}

fn view<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> RequestView<'a> {
    RequestView {
        method: &Method::GET,
        scheme: "http",
        host: Some("api.example.com"),
        authority: Some("api.example.com"),
        path: "/users/7",
        query,
        headers,
        client_ip: None,
    }
}

fn choice(c: &mut Criterion) {
    let ids: Vec<Arc<str>> = vec![Arc::from("stable"), Arc::from("canary")];
    let split = LiveSplit::new(&ids, &[90, 10]);
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", HeaderValue::from_static("bench/1"));
    headers.insert("cookie", HeaderValue::from_static("session=abc; theme=dark"));
    headers.insert("x-user", HeaderValue::from_static("user-12345"));
    let ctx = FilterCtx {
        client_ip: Some("192.0.2.7".parse().unwrap_or_else(|e| panic!("{e}"))),
        identity: Some(Identity {
            consumer: Arc::from("bob"),
            groups: vec![Arc::from("staff")],
            claims: vec![],
        }),
        ..FilterCtx::default()
    };
    let weighted = canary(serde_json::json!({}));
    let sticky_c = canary(serde_json::json!({"sticky": {"key": "header", "name": "x-user"}}));
    let rules = serde_json::json!({"rules": [
        {"backend": "canary", "header": {"name": "x-canary"}},
        {"backend": "canary", "header": {"name": "x-version", "regex": "^v2(\\.|$)"}},
        {"backend": "canary", "cookie": {"name": "canary"}},
        {"backend": "canary", "query": {"name": "version", "exact": "v2"}},
        {"backend": "canary", "source": ["10.0.0.0/8", "2001:db8::/32"]},
        {"backend": "canary", "groups": ["beta"]},
    ]});
    let ruled = canary(rules);
    let table = split.table();
    let q = Some("page=2&sort=name");
    let mut g = c.benchmark_group("canary_choice");
    g.bench_function("weighted_90_10", |b| {
        let req = view(&headers, q);
        b.iter(|| black_box(weighted.decide(black_box(&req), &ctx, &table, &mut None)))
    });
    g.bench_function("weighted_90_10_live_table_load", |b| {
        let req = view(&headers, q);
        b.iter(|| black_box(weighted.decide(black_box(&req), &ctx, &split.table(), &mut None)))
    });
    g.bench_function("sticky_header_key", |b| {
        let req = view(&headers, q);
        b.iter(|| black_box(sticky_c.decide(black_box(&req), &ctx, &table, &mut None)))
    });
    g.bench_function("six_rules_all_miss_then_weight", |b| {
        let req = view(&headers, q);
        b.iter(|| black_box(ruled.decide(black_box(&req), &ctx, &table, &mut None)))
    });
    let mut hit = headers.clone();
    hit.insert("x-canary", HeaderValue::from_static("always"));
    g.bench_function("first_rule_hits", |b| {
        let req = view(&hit, q);
        b.iter(|| black_box(ruled.decide(black_box(&req), &ctx, &table, &mut None)))
    });
    g.bench_function("sticky_point_and_map", |b| {
        b.iter(|| sticky::backend_for(sticky::point(black_box(b"user-12345")), black_box(&[90, 10])))
    });
    g.finish();
}

criterion_group!(benches, choice);
criterion_main!(benches);
