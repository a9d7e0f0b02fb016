#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, Method};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use super::*;
use crate::registry::build_for_test;
use sluice_core::Services;

const NOW: u64 = 1_800_000_000;
fn clock() -> u64 {
    NOW
}

fn fixture(name: &str) -> String {
    format!("{}/../../tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn jwt(spec: serde_json::Value) -> Jwt {
    jwt_with(spec, &sluice_config::Config::default())
}

fn jwt_with(spec: serde_json::Value, config: &sluice_config::Config) -> Jwt {
    let services = Services::default();
    let spec: JwtSpec = serde_json::from_value(spec).unwrap();
    Jwt::new(&spec, &BuildCtx::new(config, &services))
        .unwrap()
        .with_clock(clock)
}

fn errors(spec: serde_json::Value) -> Vec<String> {
    match build_for_test(build, &spec) {
        Ok(_) => vec![],
        Err(es) => es
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect(),
    }
}

fn hs(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"s3cret").unwrap(),
    )
    .unwrap()
}

fn claims() -> serde_json::Value {
    json!({"sub": "alice", "exp": NOW + 60, "tenant": "t1", "roles": ["a", "b"]})
}

struct Req {
    headers: HeaderMap,
    query: Option<String>,
}

impl Req {
    fn new() -> Req {
        Req {
            headers: HeaderMap::new(),
            query: None,
        }
    }
    fn header(mut self, k: &'static str, v: &str) -> Req {
        self.headers.append(k, HeaderValue::from_str(v).unwrap());
        self
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

async fn run(j: &Jwt, r: &Req) -> (JwtOutcome, FilterCtx) {
    let mut ctx = FilterCtx::default();
    let out = j.authenticate(&r.view(), &mut ctx).await;
    (out, ctx)
}

fn hs_spec() -> serde_json::Value {
    json!({"keys": [{"alg": "HS256", "secret": "s3cret"}]})
}

#[tokio::test]
async fn bearer_tokens_identify_the_subject() {
    let j = jwt(hs_spec());
    let r = Req::new().header("authorization", &format!("bearer  {}", hs(claims())));
    let (out, ctx) = run(&j, &r).await;
    let JwtOutcome::Identified(id) = out else {
        panic!("{out:?}")
    };
    assert_eq!(&*id.consumer, "alice");
    assert!(id.groups.is_empty());
    assert_eq!(ctx.identity, Some(id));
}

#[tokio::test]
async fn missing_and_other_schemes_are_missing() {
    let j = jwt(hs_spec());
    assert_eq!(run(&j, &Req::new()).await.0, JwtOutcome::Missing);
    let r = Req::new().header("authorization", "Basic YTpi");
    assert_eq!(run(&j, &r).await.0, JwtOutcome::Missing);
    let r = Req::new().header("authorization", "Bearer ");
    assert_eq!(run(&j, &r).await.0, JwtOutcome::Missing);
    let r = Req::new().header("authorization", "Bearer not.a.token");
    let (out, ctx) = run(&j, &r).await;
    assert!(matches!(out, JwtOutcome::Invalid(_)), "{out:?}");
    assert!(ctx.identity.is_none());
}

#[tokio::test]
async fn the_clock_decides_expiry() {
    let j = jwt(hs_spec());
    let t = hs(json!({"sub": "a", "exp": NOW - 61}));
    let r = Req::new().header("authorization", &format!("Bearer {t}"));
    assert_eq!(run(&j, &r).await.0, JwtOutcome::Invalid(Invalid::Expired));
    let t = hs(json!({"sub": "a", "exp": NOW - 59}));
    let r = Req::new().header("authorization", &format!("Bearer {t}"));
    assert!(matches!(run(&j, &r).await.0, JwtOutcome::Identified(_)));
}

static MOVING_NOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(NOW);
fn moving_clock() -> u64 {
    MOVING_NOW.load(Ordering::SeqCst)
}

#[tokio::test]
async fn a_cached_token_is_never_accepted_past_its_expiry() {
    let j = jwt(hs_spec()).with_clock(moving_clock);
    assert!(j.cache.is_on(), "on by default");
    let t = hs(json!({"sub": "a", "exp": NOW + 10}));
    let r = Req::new().header("authorization", &format!("Bearer {t}"));
    for _ in 0..3 {
        let (out, ctx) = run(&j, &r).await;
        assert!(matches!(out, JwtOutcome::Identified(_)), "{out:?}");
        assert_eq!(ctx.identity.map(|i| i.consumer), Some(Arc::from("a")));
    }
    // exp + the 60 s leeway, as the verifier itself decides.
    MOVING_NOW.store(NOW + 69, Ordering::SeqCst);
    assert!(matches!(run(&j, &r).await.0, JwtOutcome::Identified(_)));
    MOVING_NOW.store(NOW + 70, Ordering::SeqCst);
    assert_eq!(run(&j, &r).await.0, JwtOutcome::Invalid(Invalid::Expired));
    // A token refused once is refused again (refusals are not cached either way).
    assert_eq!(run(&j, &r).await.0, JwtOutcome::Invalid(Invalid::Expired));
    let no_cache = jwt(json!({"keys": [{"alg": "HS256", "secret": "s3cret"}], "cache_size": 0}));
    assert!(!no_cache.cache.is_on());
    let r = Req::new().header("authorization", &format!("Bearer {}", hs(claims())));
    assert!(matches!(run(&no_cache, &r).await.0, JwtOutcome::Identified(_)));
    assert_eq!(
        errors(json!({"keys": [{"alg": "HS256", "secret": "s3cret"}], "cache_size": 2_000_000})),
        ["cache_size: at most 1048576"]
    );
}

#[tokio::test]
async fn cookie_query_and_custom_header_sources_in_order() {
    let j = jwt(json!({"keys": [{"alg": "HS256", "secret": "s3cret"}],
        "from": [{"header": "x-token"}, {"cookie": "jwt"}, {"query": "access_token"}]}));
    let t = hs(claims());
    for r in [
        Req::new().header("x-token", &t),
        Req::new().header("cookie", &format!("a=1; jwt={t}; b=2")),
        Req {
            query: Some(format!("x=1&access_token={t}")),
            ..Req::new()
        },
    ] {
        assert!(matches!(run(&j, &r).await.0, JwtOutcome::Identified(_)));
    }
    // The default Authorization header is not a source here.
    let r = Req::new().header("authorization", &format!("Bearer {t}"));
    assert_eq!(run(&j, &r).await.0, JwtOutcome::Missing);
}

/// A header block that records query parameter removals.
#[derive(Default)]
struct Edit {
    headers: HeaderMap,
    removed_query: Vec<String>,
}

impl HeaderEdit for Edit {
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.headers.insert(name, value);
    }
    fn append(&mut self, name: HeaderName, value: HeaderValue) {
        self.headers.append(name, value);
    }
    fn remove(&mut self, name: &HeaderName) {
        self.headers.remove(name);
    }
    fn remove_query_param(&mut self, name: &str) {
        self.removed_query.push(name.into());
    }
}

#[tokio::test]
async fn tokens_are_stripped_and_claims_forwarded() {
    let j = jwt(json!({"keys": [{"alg": "HS256", "secret": "s3cret"}],
        "from": [{"header": "authorization"}, {"cookie": "jwt"}, {"query": "t"}],
        "claims_to_headers": {"sub": "x-user", "tenant": "x-tenant", "roles": "x-roles", "absent": "x-absent"}}));
    let t = hs(claims());
    let r = Req::new().header("authorization", &format!("Bearer {t}"));
    let (_, ctx) = run(&j, &r).await;
    let mut up = Edit::default();
    up.headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
    );
    up.headers.insert(
        "cookie",
        HeaderValue::from_str(&format!("a=1; jwt={t}; b=2")).unwrap(),
    );
    up.headers.insert("x-tenant", HeaderValue::from_static("forged"));
    up.headers.insert("x-absent", HeaderValue::from_static("forged"));
    j.on_upstream_request(&mut up, &ctx);
    assert!(!up.headers.contains_key("authorization"));
    assert_eq!(up.headers["cookie"], "a=1; b=2");
    assert_eq!(up.removed_query, ["t"]);
    assert_eq!(up.headers["x-user"], "alice");
    assert_eq!(up.headers["x-tenant"], "t1");
    assert_eq!(up.headers["x-roles"], "a,b");
    assert!(!up.headers.contains_key("x-absent"));

    // keep_token leaves the credential.
    let j = jwt(json!({"keys": [{"alg": "HS256", "secret": "s3cret"}], "keep_token": true}));
    let mut up = Edit::default();
    up.headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
    );
    j.on_upstream_request(&mut up, &ctx);
    assert!(up.headers.contains_key("authorization"));
}

#[tokio::test]
async fn consumers_give_groups_and_may_be_required() {
    let mut config = sluice_config::Config::default();
    config.consumers.push(sluice_config::model::ConsumerConfig {
        name: "alice".into(),
        groups: vec!["admins".into()],
        credentials: Default::default(),
    });
    let j = jwt_with(
        json!({"keys": [{"alg": "HS256", "secret": "s3cret"}], "require_consumer": true}),
        &config,
    );
    let r = Req::new().header("authorization", &format!("Bearer {}", hs(claims())));
    let JwtOutcome::Identified(id) = run(&j, &r).await.0 else {
        panic!()
    };
    assert_eq!(id.groups, vec![Arc::<str>::from("admins")]);
    let r = Req::new().header(
        "authorization",
        &format!("Bearer {}", hs(json!({"sub": "bob", "exp": NOW + 9}))),
    );
    assert_eq!(run(&j, &r).await.0, JwtOutcome::Invalid(Invalid::Consumer));
    let r = Req::new().header(
        "authorization",
        &format!("Bearer {}", hs(json!({"exp": NOW + 9}))),
    );
    assert_eq!(run(&j, &r).await.0, JwtOutcome::Invalid(Invalid::Consumer));
    // Another claim may name the consumer.
    let j = jwt_with(
        json!({"keys": [{"alg": "HS256", "secret": "s3cret"}], "consumer_claim": "client_id"}),
        &config,
    );
    let r = Req::new().header(
        "authorization",
        &format!("Bearer {}", hs(json!({"client_id": "svc-1", "exp": NOW + 9}))),
    );
    let JwtOutcome::Identified(id) = run(&j, &r).await.0 else {
        panic!()
    };
    assert_eq!(&*id.consumer, "svc-1");
}

#[test]
fn refusals_are_rfc_6750_challenges_that_say_nothing_more() {
    let j = jwt(json!({"keys": [{"alg": "HS256", "secret": "s3cret"}], "realm": "orders"}));
    let missing = j.reject(&JwtOutcome::Missing);
    assert_eq!(missing.kind, RejectKind::Unauthenticated);
    assert_eq!(
        missing.headers,
        vec![(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"orders\"")
        )]
    );
    let messages: Vec<String> = Invalid::ALL
        .iter()
        .map(|r| j.reject(&JwtOutcome::Invalid(*r)).message)
        .collect();
    assert!(messages.iter().all(|m| m == &messages[0]), "{messages:?}");
    let invalid = j.reject(&JwtOutcome::Invalid(Invalid::Expired));
    assert_eq!(
        invalid.headers[0].1,
        HeaderValue::from_static("Bearer realm=\"orders\", error=\"invalid_token\"")
    );
}

#[test]
fn every_algorithm_family_loads_from_files_and_pem() {
    let rsa = std::fs::read_to_string(fixture("rsa-public.pem")).unwrap();
    let spec = json!({"keys": [
        {"alg": "RS256", "pem": rsa},
        {"alg": "PS384", "file": fixture("rsa-public.pem")},
        {"alg": "ES256", "file": fixture("ec-p256-public.pem")},
        {"alg": "ES384", "file": fixture("ec-p384-public.pem")},
        {"alg": "EdDSA", "file": fixture("ed25519-public.pem")},
        {"alg": "HS512", "secret_base64": "c2VjcmV0LXNlY3JldA=="},
    ]});
    assert_eq!(errors(spec), Vec::<String>::new());
}

#[test]
fn asymmetric_tokens_verify_with_their_keys() {
    let cases = [
        (Algorithm::RS256, "rsa"),
        (Algorithm::PS512, "rsa"),
        (Algorithm::ES256, "ec-p256"),
        (Algorithm::ES384, "ec-p384"),
        (Algorithm::EdDSA, "ed25519"),
    ];
    for (alg, name) in cases {
        let j = jwt(json!({"keys": [{"alg": alg, "file": fixture(&format!("{name}-public.pem"))}]}));
        let private = std::fs::read(fixture(&format!("{name}-private.pem"))).unwrap();
        let key = match alg.family() {
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&private),
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&private),
            _ => EncodingKey::from_ed_pem(&private),
        }
        .unwrap();
        let t = encode(&Header::new(alg), &claims(), &key).unwrap();
        assert!(j.check(&t, NOW).is_ok(), "{alg:?}");
        // The same key under another algorithm of the family is not allowed.
        if alg == Algorithm::RS256 {
            let t = encode(&Header::new(Algorithm::RS512), &claims(), &key).unwrap();
            assert_eq!(j.check(&t, NOW), Err(Invalid::Algorithm));
        }
    }
}

#[test]
fn hs_rs_confusion_is_refused_even_when_both_kinds_of_keys_are_configured() {
    let pem = std::fs::read_to_string(fixture("rsa-public.pem")).unwrap();
    let j = jwt(json!({"keys": [
        {"alg": "RS256", "pem": pem},
        {"alg": "HS256", "secret": "s3cret"},
    ]}));
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(pem.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(j.check(&forged, NOW), Err(Invalid::Signature));
    let j = jwt(json!({"keys": [{"alg": "RS256", "pem": pem}]}));
    assert_eq!(j.check(&forged, NOW), Err(Invalid::Algorithm));
}

#[test]
fn spec_errors_name_their_paths() {
    let pem = std::fs::read_to_string(fixture("rsa-public.pem")).unwrap();
    let private = std::fs::read_to_string(fixture("rsa-private.pem")).unwrap();
    let e = errors(json!({}));
    assert_eq!(e, [": give keys, jwks, or both"]);
    let e = errors(json!({"keys": [
        {"alg": "HS256"},
        {"alg": "HS256", "pem": pem},
        {"alg": "RS256", "secret": "x"},
        {"alg": "RS256", "pem": "garbage"},
        {"alg": "RS256", "pem": private},
        {"alg": "ES256", "file": "/nonexistent/key.pem"},
    ], "from": [{"cookie": "a", "query": "b"}, {"cookie": "c", "scheme": "x"}],
       "claims_to_headers": {"sub": "bad header"}, "realm": "a\"b"}));
    let paths: Vec<&str> = e.iter().map(|m| m.split(':').next().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "keys[0]",
            "keys[1].pem",
            "keys[2].secret",
            "keys[3].pem",
            "keys[4].pem",
            "keys[5].file",
            "from[0]",
            "from[1].scheme",
            "claims_to_headers.sub",
            "realm"
        ],
        "{e:#?}"
    );
    let e = errors(json!({"keys": [{"alg": "none", "secret": "x"}]}));
    assert!(e[0].starts_with("keys[0].alg: unknown variant `none`"), "{e:?}");
    let e = errors(json!({"keys": [{"alg": "HS256", "secret": "x"}], "algorithms": ["RS256"]}));
    assert_eq!(e, ["keys[0].alg: HS256 is not in algorithms"]);
    let e = errors(json!({"jwks": {"url": "ftp://x/"}}));
    assert_eq!(e, ["jwks.url: must be an http:// or https:// URL"]);
    let e = errors(json!({"jwks": {"url": "http://127.0.0.1/", "refresh": "10ms"}}));
    assert_eq!(e, ["jwks.refresh: must be at least 100ms"]);
    let e = errors(json!({"keys": [], "jwks": {"url": "http://127.0.0.1/"}, "lee_way": "1s"}));
    assert!(e[0].contains("unknown field `lee_way`"), "{e:?}");
    // Under validation a JWKS URL starts nothing.
    assert!(errors(json!({"jwks": {"url": "http://127.0.0.1:9/jwks"}})).is_empty());
}

/// A JWKS server on 127.0.0.1 that counts the documents it served.
async fn jwks_server(doc: String) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let doc = doc.clone();
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                h.fetch_add(1, Ordering::SeqCst);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
                    doc.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}/jwks.json"), hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_refetch_at_most_once_per_interval() {
    let (url, hits) = jwks_server(r#"{"keys": []}"#.into()).await;
    let services = Services::default();
    services.insert(tokio::runtime::Handle::current());
    let config = sluice_config::Config::default();
    let spec: JwtSpec = serde_json::from_value(json!({"jwks": {
        "url": url, "refresh": "1h", "min_refetch_interval": "1h", "wait": "2s"}}))
    .unwrap();
    let j = Jwt::new(&spec, &BuildCtx::new(&config, &services)).unwrap();
    // A second filter naming the URL shares the source.
    let j2 = Jwt::new(&spec, &BuildCtx::new(&config, &services)).unwrap();
    assert!(Arc::ptr_eq(j.jwks_source().unwrap(), j2.jwks_source().unwrap()));
    let jwks = services.get::<super::jwks::JwksRegistry>().unwrap();
    assert_eq!(jwks.live(), 1);
    let private = std::fs::read(fixture("rsa-private.pem")).unwrap();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("nope".into());
    let t = encode(
        &h,
        &json!({"sub": "a", "exp": system_now() + 60}),
        &EncodingKey::from_rsa_pem(&private).unwrap(),
    )
    .unwrap();
    let r = Req::new().header("authorization", &format!("Bearer {t}"));
    // The first request waits for the initial fetch; the 200 after it find the refetch
    // budget spent and fail at once.
    let started = std::time::Instant::now();
    for _ in 0..200 {
        assert_eq!(run(&j, &r).await.0, JwtOutcome::Invalid(Invalid::UnknownKey));
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    drop((j, j2));
    assert_eq!(jwks.live(), 0);
}
