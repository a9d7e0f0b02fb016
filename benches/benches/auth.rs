//! Access control: the key-auth lookup (SHA-256 of the presented key, a hash-map probe,
//! a constant-time compare) over tables of 1 000 and 100 000 keys, plain and hashed, and
//! the whole `key_auth` filter's request phase (find the header, look up, set the
//! identity).
//!
//! `cargo bench -p sluice-benches --bench auth`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use sluice_config::Config;
use sluice_core::Services;
use sluice_core::{FilterCtx, RequestView};
use sluice_filters::auth::consumers::Consumers;
use sluice_filters::auth::key_auth::KeyIndex;
use sluice_filters::BuildCtx;

fn consumers_yaml(n: usize, hashed: bool) -> String {
    let mut y = String::from("consumers:\n");
    for i in 0..n {
        let key = format!("key-{i:08}-0123456789abcdef");
        let stored = if hashed {
            use sha2::Digest as _;
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(key.as_bytes())))
        } else {
            key
        };
        y.push_str(&format!(
            "  - {{name: c{i}, credentials: {{key_auth: {{keys: ['{stored}']}}}}}}\n"
        ));
    }
    y
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("key_auth_lookup");
    for (n, hashed) in [(1_000, false), (100_000, false), (100_000, true)] {
        let config: Config = serde_yaml::from_str(&consumers_yaml(n, hashed)).expect("consumers");
        let table = Consumers::new(&config.consumers);
        let index = KeyIndex::new(&table);
        assert!(index.errors().is_empty());
        let hit = format!("key-{:08}-0123456789abcdef", n / 2);
        let label = format!("{n}_{}", if hashed { "sha256" } else { "plain" });
        g.bench_with_input(BenchmarkId::new("hit", &label), &hit, |b, k| {
            b.iter(|| black_box(index.lookup(black_box(k.as_bytes()))).is_some())
        });
        g.bench_with_input(
            BenchmarkId::new("miss", &label),
            &"no-such-key-0123456789",
            |b, k| b.iter(|| black_box(index.lookup(black_box(k.as_bytes()))).is_none()),
        );
    }
    g.finish();
}

fn filter(c: &mut Criterion) {
    let config: Config = serde_yaml::from_str(&consumers_yaml(10_000, false)).expect("consumers");
    let shared = Services::default();
    let ctx = BuildCtx::new(&config, &shared);
    let kind = sluice_filters::registry::find("key_auth").expect("key_auth kind");
    let f = (kind.build)(&serde_json::json!({}), &ctx).unwrap_or_else(|_| panic!("key_auth builds"));
    let mut headers = HeaderMap::new();
    headers.insert(
        "apikey",
        HeaderValue::from_static("key-00005000-0123456789abcdef"),
    );
    headers.insert("accept", HeaderValue::from_static("*/*"));
    let method = Method::GET;
    let view = RequestView {
        method: &method,
        scheme: "http",
        host: Some("api.example.com"),
        authority: Some("api.example.com"),
        path: "/orders",
        query: None,
        headers: &headers,
        client_ip: None,
    };
    c.bench_function("key_auth_filter/on_request_10000_consumers", |b| {
        b.iter(|| {
            let mut fctx = FilterCtx::default();
            let flow = poll(f.on_request(black_box(&view), &mut fctx));
            black_box((flow, fctx.identity))
        })
    });
}

/// Polls a future that never waits to its end.
fn poll<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

criterion_group!(benches, lookup, filter);
criterion_main!(benches);
