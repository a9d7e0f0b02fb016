//! Access control at the edge: an `ip_restriction` lookup in a thousand networks, a
//! `cors` origin match, and one `forward_auth` round trip to a keep-alive service on
//! loopback (the pooled client, the hop to the background runtime and back).
//!
//! `cargo bench -p sluice-benches --bench access_edge`

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use sluice_core::{FilterCtx, RequestView};
use sluice_filters::auth::forward_auth::{ForwardAuth, ForwardAuthSpec, Outcome, Pool};
use sluice_filters::cors::{Cors, CorsSpec};
use sluice_filters::ip_restriction::{parse_net, IpSet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ip_benches(c: &mut Criterion) {
    // 1000 disjoint /24s spread over 10.0.0.0/8, and 1000 IPv6 /48s.
    let v4: Vec<_> = (0..1000u32)
        .map(|i| {
            parse_net(&format!("10.{}.{}.0/24", (i * 7) / 256 % 256, (i * 7) % 256))
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let v6: Vec<_> = (0..1000u32)
        .map(|i| parse_net(&format!("2001:db8:{i:x}::/48")).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let set = IpSet::new(&[v4, v6].concat());
    let hit: IpAddr = "10.0.70.9".parse().unwrap_or_else(|e| panic!("{e}"));
    let miss: IpAddr = "192.0.2.1".parse().unwrap_or_else(|e| panic!("{e}"));
    let hit6: IpAddr = "2001:db8:1f4::1".parse().unwrap_or_else(|e| panic!("{e}"));
    let mut g = c.benchmark_group("ip_restriction");
    g.bench_function("v4_hit_2000_nets", |b| {
        b.iter(|| black_box(&set).contains(black_box(hit)))
    });
    g.bench_function("v4_miss_2000_nets", |b| {
        b.iter(|| black_box(&set).contains(black_box(miss)))
    });
    g.bench_function("v6_hit_2000_nets", |b| {
        b.iter(|| black_box(&set).contains(black_box(hit6)))
    });
    g.finish();
}

fn cors_benches(c: &mut Criterion) {
    let spec: CorsSpec = serde_json::from_value(serde_json::json!({
        "allow_origins": ["https://app.example.com", "https://admin.example.com", "https://*.tenants.example.com"],
        "allow_credentials": true,
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let cors = Cors::new(&spec).unwrap_or_else(|e| panic!("{e:?}"));
    let wild = HeaderValue::from_static("https://acme.tenants.example.com");
    let refused = HeaderValue::from_static("https://evil.test");
    let mut g = c.benchmark_group("cors");
    g.bench_function("origin_wildcard_match", |b| {
        b.iter(|| black_box(&cors).allow_origin(black_box(&wild)))
    });
    g.bench_function("origin_refused", |b| {
        b.iter(|| black_box(&cors).allow_origin(black_box(&refused)))
    });
    g.finish();
}

/// A keep-alive HTTP/1.1 service on 127.0.0.1 that answers every request with 200.
async fn service() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\nx-user: alice\r\ncontent-length: 0\r\n\r\n";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn forward_auth_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    // Like the gateway: the pingora worker's runtime awaits, the background one calls.
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = background.block_on(service());
    let spec: ForwardAuthSpec = serde_json::from_value(serde_json::json!({
        "url": format!("http://{addr}/verify"),
        "upstream_headers": ["x-user"],
        "consumer_header": "x-user",
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let fa = ForwardAuth::new(&spec, Pool::default(), Some(background.handle().clone()))
        .unwrap_or_else(|e| panic!("{e:?}"));
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Bearer abc"));
    let method = Method::GET;
    let req = RequestView {
        method: &method,
        scheme: "http",
        host: Some("api.test"),
        authority: Some("api.test"),
        path: "/orders",
        query: Some("page=2"),
        headers: &headers,
        client_ip: Some(IpAddr::from([203, 0, 113, 9])),
    };
    c.bench_function("forward_auth/round_trip_loopback", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut ctx = FilterCtx::default();
                let outcome = fa.authenticate(&req, &mut ctx).await;
                assert!(matches!(outcome, Outcome::Allowed), "{outcome:?}");
                black_box(ctx)
            })
        })
    });
}

criterion_group!(benches, ip_benches, cors_benches, forward_auth_benches);
criterion_main!(benches);
