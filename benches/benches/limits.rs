//! The local rate limiter's decision, as a request pays it in `on_request`: one
//! unkeyed limit (the route's bucket), one limit keyed by client address (the key
//! written, hashed and looked up in the bounded store), and two limits (a burst and an
//! hourly quota) keyed by address. Keys cycle over 10 000 clients, so the store is warm
//! and every lookup hits.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use sluice_config::Config;
use sluice_core::Services;
use sluice_core::{Filter, FilterCtx, Flow, RequestView};
use sluice_filters::rate_limit::{RateLimit, RateLimitSpec};
use sluice_filters::BuildCtx;

/// Polls a future that never waits (a local limit answers at once).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn limiter(yaml: &str) -> RateLimit {
    let spec: RateLimitSpec = serde_json::from_value(serde_yaml_like(yaml)).expect("spec");
    let config = Config::default();
    let shared = Services::default();
    RateLimit::new(&spec, &BuildCtx::new(&config, &shared), Default::default()).expect("builds")
}

fn serde_yaml_like(json: &str) -> serde_json::Value {
    serde_json::from_str(json).expect("json spec")
}

fn decide(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit");
    let headers = http::HeaderMap::new();
    let method = http::Method::GET;
    let cases = [
        ("unkeyed", r#"{"requests": 1000000000, "per": "1s"}"#),
        (
            "by_client_ip",
            r#"{"requests": 1000000000, "per": "1s", "key": "client_ip"}"#,
        ),
        (
            "two_limits_by_client_ip",
            r#"{"key": "client_ip", "limits": [{"name": "burst", "requests": 1000000000, "per": "1s"}, {"name": "hourly", "requests": 1000000000, "per": "1h"}]}"#,
        ),
    ];
    for (name, spec) in cases {
        let l = limiter(spec);
        let mut i: u32 = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % 10_000;
                let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
                let view = RequestView {
                    method: &method,
                    scheme: "http",
                    host: None,
                    authority: None,
                    path: "/",
                    query: None,
                    headers: &headers,
                    client_ip: Some(ip),
                };
                let mut ctx = FilterCtx {
                    client_ip: Some(ip),
                    ..FilterCtx::default()
                };
                let flow = block_on(l.on_request(black_box(&view), &mut ctx));
                assert!(matches!(flow, Flow::Continue));
                black_box(ctx.held.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
