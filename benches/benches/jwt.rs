//! JWT verification: the `jwt` filter's core on one token per algorithm family that
//! matters most in practice (HS256, RS256, ES256), and the whole request-phase method
//! (token from `Authorization`, verify, claims, identity) for HS256 and RS256.
//!
//! `cargo bench -p sluice-benches --bench jwt`

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sluice_core::Services;
use sluice_core::{FilterCtx, RequestView};
use sluice_filters::auth::jwt::verify::{self, AlgSet, ClaimRules, Key, KeySet};
use sluice_filters::auth::jwt::{Jwt, JwtOutcome, JwtSpec};
use sluice_filters::BuildCtx;

const NOW: u64 = 1_800_000_000;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../tests/fixtures/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

fn claims() -> serde_json::Value {
    serde_json::json!({"sub": "alice", "iss": "https://idp.test", "aud": "orders", "exp": NOW + 300, "iat": NOW, "tenant": "t-7"})
}

struct Case {
    name: &'static str,
    alg: Algorithm,
    token: String,
    keys: KeySet,
    spec: serde_json::Value,
}

fn cases() -> Vec<Case> {
    let secret = b"an-hs256-secret-for-the-benchmarks-32b";
    let rsa = fixture("rsa-private.pem");
    let ec = fixture("ec-p256-private.pem");
    let sign =
        |alg, key: &EncodingKey| jsonwebtoken::encode(&Header::new(alg), &claims(), key).expect("sign");
    let key = |alg, k: jsonwebtoken::DecodingKey| KeySet {
        keys: vec![Key::new(None, k, AlgSet::one(alg)).expect("key")],
    };
    let pem = |name: &str| String::from_utf8(fixture(name)).expect("utf-8");
    vec![
        Case {
            name: "hs256",
            alg: Algorithm::HS256,
            token: sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(secret).expect("secret"),
            ),
            keys: key(
                Algorithm::HS256,
                jsonwebtoken::DecodingKey::from_secret(secret).expect("secret"),
            ),
            spec: serde_json::json!({"keys": [{"alg": "HS256", "secret": String::from_utf8_lossy(secret)}]}),
        },
        Case {
            name: "rs256",
            alg: Algorithm::RS256,
            token: sign(Algorithm::RS256, &EncodingKey::from_rsa_pem(&rsa).expect("rsa")),
            keys: key(
                Algorithm::RS256,
                jsonwebtoken::DecodingKey::from_rsa_pem(&fixture("rsa-public.pem")).expect("rsa"),
            ),
            spec: serde_json::json!({"keys": [{"alg": "RS256", "pem": pem("rsa-public.pem")}]}),
        },
        Case {
            name: "es256",
            alg: Algorithm::ES256,
            token: sign(Algorithm::ES256, &EncodingKey::from_ec_pem(&ec).expect("ec")),
            keys: key(
                Algorithm::ES256,
                jsonwebtoken::DecodingKey::from_ec_pem(&fixture("ec-p256-public.pem")).expect("ec"),
            ),
            spec: serde_json::json!({"keys": [{"alg": "ES256", "pem": pem("ec-p256-public.pem")}]}),
        },
    ]
}

/// Polls a future that does not wait (no JWKS refetch here) to its end.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn jwt_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("jwt");
    for case in cases() {
        let rules = ClaimRules {
            algorithms: AlgSet::one(case.alg),
            leeway: 60,
            issuers: vec!["https://idp.test".into()],
            audiences: vec!["orders".into()],
            required: vec!["exp".into()],
        };
        // Sanity: the token verifies.
        let parsed = verify::parse(&case.token, &rules).expect("parse");
        verify::verify(&parsed, &[&case.keys], &rules, NOW).expect("verify");
        g.bench_function(format!("verify_{}", case.name), |b| {
            b.iter(|| {
                let parsed = verify::parse(black_box(&case.token), &rules).expect("parse");
                black_box(verify::verify(&parsed, &[&case.keys], &rules, NOW).is_ok())
            })
        });
        if case.name == "es256" {
            continue;
        }
        let config = sluice_config::Config::default();
        let shared = Services::default();
        let spec: JwtSpec = serde_json::from_value(case.spec.clone()).expect("spec");
        let jwt = Jwt::new(&spec, &BuildCtx::new(&config, &shared))
            .expect("build")
            .with_clock(|| NOW);
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", case.token)).expect("header"),
        );
        let req = RequestView {
            method: &Method::GET,
            scheme: "http",
            host: Some("api.test"),
            authority: Some("api.test"),
            path: "/orders/1",
            query: None,
            headers: &headers,
            client_ip: None,
        };
        g.bench_function(format!("authenticate_{}", case.name), |b| {
            b.iter(|| {
                let mut ctx = FilterCtx::default();
                let out = ready(jwt.authenticate(black_box(&req), &mut ctx));
                black_box(matches!(out, JwtOutcome::Identified(_)))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, jwt_benches);
criterion_main!(benches);
