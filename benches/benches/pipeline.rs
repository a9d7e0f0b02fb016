//! Hot paths of the request pipeline: route matching, the filter chain, and compiling and
//! publishing a config.
//!
//! `cargo bench -p sluice-benches --bench pipeline`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use sluice_config::Config;
use sluice_core::router::{MatchInput, Router};
use sluice_core::{FilterCtx, HeaderEdit};
use sluice_gateway::control::gateway::Gateway;
use sluice_gateway::control::snapshot::Provenance;

/// A config with `n` routes of mixed kinds (exact host, wildcard host, prefix, regex,
/// header conditions), all forwarding to one of 10 upstreams.
pub fn config_with_routes(n: usize) -> String {
    let mut y = String::from("listeners: [{name: w, listen: '127.0.0.1:1'}]\nupstreams:\n");
    for u in 0..10 {
        y.push_str(&format!(
            "  - {{id: u{u}, endpoints: [{{address: '127.0.0.1:{}'}}, {{address: '127.0.0.1:{}'}}]}}\n",
            9000 + u,
            9100 + u
        ));
    }
    y.push_str("routes:\n");
    for i in 0..n {
        let m = match i % 5 {
            0 => format!("{{hosts: [h{i}.example.com], path: {{prefix: /svc{i}}}}}"),
            1 => format!("{{hosts: ['*.d{i}.example.com']}}"),
            2 => format!("{{path: {{prefix: /api/v{i}}}}}"),
            3 => format!("{{path: {{regex: '/items/{i}/[0-9]+'}}}}"),
            _ => format!("{{path: {{prefix: /p{i}}}, headers: [{{name: x-tenant, exact: t{i}}}]}}"),
        };
        y.push_str(&format!(
            "  - {{id: r{i}, upstream: u{}, match: {m}, headers: {{request: {{set: {{x-route: r{i}}}}}}}}}\n",
            i % 10
        ));
    }
    y
}

fn route_match(c: &mut Criterion) {
    let mut g = c.benchmark_group("router/find");
    for n in [10usize, 100, 1000] {
        let cfg = Config::from_text(&config_with_routes(n)).expect("valid");
        let router = Router::new(&cfg.routes).expect("compiles");
        let headers = HeaderMap::new();
        let path = format!("/api/v{}/users", n - 3);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                black_box(router.find(&MatchInput {
                    method: &Method::GET,
                    host: Some("www.example.org"),
                    path: black_box(&path),
                    query: None,
                    headers: &headers,
                }))
            })
        });
    }
    g.finish();
}

fn build_ctx<'a>(config: &'a Config, shared: &'a sluice_core::Services) -> sluice_filters::BuildCtx<'a> {
    sluice_filters::BuildCtx::new(config, shared)
}

fn chain(c: &mut Criterion) {
    let cfg = Config::from_text(&config_with_routes(10)).expect("valid");
    let shared = sluice_core::Services::default();
    let chain = sluice_filters::build_chain(&cfg.routes[0], "routes[0]", None, &build_ctx(&cfg, &shared))
        .expect("builds");
    let ctx = FilterCtx::default();
    c.bench_function("chain/upstream_request_headers", |b| {
        b.iter(|| {
            let mut h = HeaderMap::new();
            chain.on_upstream_request(&mut h as &mut dyn HeaderEdit, &ctx);
            black_box(h)
        })
    });
}

fn split(c: &mut Criterion) {
    let seq = sluice_core::weighted::WeightedSequence::new(&[90, 10]);
    c.bench_function("backends/weighted_split_pick", |b| {
        b.iter(|| black_box(seq.next()))
    });
    let one = sluice_core::weighted::WeightedSequence::new(&[1]);
    c.bench_function("backends/single_backend_pick", |b| {
        b.iter(|| black_box(one.next()))
    });
}

fn chain_reuse(c: &mut Criterion) {
    let cfg = Config::from_text(&config_with_routes(10)).expect("valid");
    let shared = sluice_core::Services::default();
    let first = sluice_filters::build_chain(&cfg.routes[0], "routes[0]", None, &build_ctx(&cfg, &shared))
        .expect("builds");
    c.bench_function("chain/rebuild_reusing_unchanged_filters", |b| {
        b.iter(|| {
            black_box(sluice_filters::build_chain(
                &cfg.routes[0],
                "routes[0]",
                Some(&first),
                &build_ctx(&cfg, &shared),
            ))
        })
    });
}

fn compile_and_swap(c: &mut Criterion) {
    let mut g = c.benchmark_group("config");
    g.sample_size(10);
    let text = config_with_routes(10_000);
    let base = Config::from_text(&config_with_routes(10)).expect("valid");
    let gateway = Gateway::new(
        base,
        Provenance {
            source: "bench".into(),
            revision: None,
        },
        true,
    )
    .expect("gateway");
    g.bench_function("parse_validate_10000_routes", |b| {
        b.iter(|| black_box(Config::from_text(&text).expect("valid")))
    });
    let parsed = Config::from_text(&text).expect("valid");
    let mut flip = false;
    g.bench_function("validate_compile_swap_10000_routes", |b| {
        b.iter(|| {
            // Alternate between two different configs so every apply compiles and swaps.
            let mut cfg = parsed.clone();
            flip = !flip;
            if flip {
                cfg.routes[0].priority = 1;
            }
            gateway
                .apply(
                    Ok(cfg),
                    Provenance {
                        source: "bench".into(),
                        revision: None,
                    },
                )
                .expect("applies")
        })
    });
    g.finish();
}

criterion_group!(benches, route_match, chain, split, chain_reuse, compile_and_swap);
criterion_main!(benches);
