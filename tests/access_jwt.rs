//! JWT authentication (`jwt` filter) against the real binary and a real upstream: good,
//! missing and refused tokens and their RFC 6750 answers, `alg: none` and HS/RS
//! confusion, every asymmetric family, claims forwarded as headers, the token kept from
//! the upstream, `kid` rotation on a live JWKS server, and tokens kept out of the logs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::jwks::{JwksServer, TestKey};
use crate::support::{eventually, upstream_entries, Gateway, TestUpstream};

const SECRET: &str = "an-hs256-secret-for-the-integration-tests";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Claims every route below accepts.
fn good_claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": "https://idp.test", "aud": "orders", "exp": now() + 300, "iat": now(), "tenant": "t-7"})
}

/// A gateway with upstream `up` and `routes`, plus `extra` top-level YAML.
async fn gateway(up: &TestUpstream, extra: &str, routes: &str) -> Gateway {
    let yaml = format!(
        "listeners: [{{name: web, listen: \"{{{{http}}}}\"}}]\n{extra}upstreams:\n{}routes:\n{routes}",
        upstream_entries(&[up])
    );
    Gateway::start(&yaml, &[up]).await
}

/// GET `path` with `Authorization: Bearer <token>` (none without a token).
async fn get(gw: &Gateway, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = gw.request(reqwest::Method::GET, path);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request through the gateway")
}

fn challenge(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// A 401 for an invalid token, and its JSON body's message.
async fn refused(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&resp),
        r#"Bearer realm="orders", error="invalid_token""#
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unauthenticated", "{body}");
    body["message"].as_str().unwrap().to_string()
}

const HS_ROUTE: &str = r#"
- id: orders
  upstream: up
  match: {path: {prefix: /orders}}
  filters:
  - jwt:
      keys: [{alg: HS256, secret: "an-hs256-secret-for-the-integration-tests"}]
      issuers: ["https://idp.test"]
      audiences: [orders]
      required_claims: [exp, tenant]
      leeway: 5s
      realm: orders
"#;

#[tokio::test]
async fn hs256_tokens_good_missing_and_refused() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(&up, "", HS_ROUTE).await;

    // Good: through, as the subject, with the token kept from the upstream.
    let resp = get(&gw, "/orders/1", Some(&hs256(&good_claims("alice")))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["headers"]["x-sluice-consumer"], "alice", "{echo}");
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");

    // Missing: a challenge without an error code.
    let before = up.requests();
    let resp = get(&gw, "/orders/1", None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&resp), r#"Bearer realm="orders""#);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unauthenticated");

    // Refused, each for another reason, all with the same answer.
    let bad_sig = {
        let t = hs256(&good_claims("alice"));
        let (head, _) = t.rsplit_once('.').unwrap();
        let other = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &good_claims("alice"),
            &EncodingKey::from_secret(b"another-secret").unwrap(),
        )
        .unwrap();
        format!("{head}.{}", other.rsplit_once('.').unwrap().1)
    };
    let mut expired = good_claims("alice");
    expired["exp"] = json!(now() - 60);
    let mut early = good_claims("alice");
    early["nbf"] = json!(now() + 120);
    let mut aud = good_claims("alice");
    aud["aud"] = json!(["billing"]);
    let mut iss = good_claims("alice");
    iss["iss"] = json!("https://evil.test");
    let mut no_tenant = good_claims("alice");
    no_tenant.as_object_mut().unwrap().remove("tenant");
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(good_claims("alice").to_string())
    );
    let cases = [
        ("bad signature", bad_sig),
        ("expired", hs256(&expired)),
        ("nbf in the future", hs256(&early)),
        ("wrong aud", hs256(&aud)),
        ("wrong iss", hs256(&iss)),
        ("missing required claim", hs256(&no_tenant)),
        ("alg none", alg_none),
        ("garbage", "not-a-jwt".to_string()),
    ];
    let mut messages = Vec::new();
    for (what, token) in &cases {
        let resp = get(&gw, "/orders/1", Some(token)).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
        messages.push(refused(resp).await);
    }
    assert!(messages.iter().all(|m| *m == messages[0]), "{messages:?}");
    // Nothing of it reached the upstream.
    assert_eq!(up.requests(), before);
}

#[tokio::test]
async fn every_public_key_family_verifies_and_hs_rs_confusion_is_refused() {
    let up = TestUpstream::start("up").await;
    let keys = [
        TestKey::new("rsa", Algorithm::RS256),
        TestKey::new("rsa", Algorithm::PS384),
        TestKey::new("ec-p256", Algorithm::ES256),
        TestKey::new("ec-p384", Algorithm::ES384),
        TestKey::new("ed25519", Algorithm::EdDSA),
    ];
    let entries: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "{{alg: {:?}, file: {:?}}}",
                k.alg,
                k.public_pem_path().display().to_string()
            )
        })
        .collect();
    let routes = format!(
        r#"
- id: pk
  upstream: up
  filters: [{{jwt: {{keys: [{}], realm: orders}}}}]
"#,
        entries.join(", ")
    );
    let gw = gateway(&up, "", &routes).await;
    for k in &keys {
        let resp = get(&gw, "/", Some(&k.sign(None, &good_claims(k.stem)))).await;
        assert_eq!(resp.status(), StatusCode::OK, "{:?}", k.alg);
    }
    // The RSA public key's own PEM bytes as an HMAC secret: refused.
    let pem = keys[0].public_pem();
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good_claims("mallory"),
        &EncodingKey::from_secret(pem.as_bytes()).unwrap(),
    )
    .unwrap();
    refused(get(&gw, "/", Some(&forged)).await).await;
    // As is a token of an algorithm no key was configured for, even one of the RSA
    // key's family (RS256 and PS384 are configured, PS512 is not).
    refused(
        get(
            &gw,
            "/",
            Some(&TestKey::new("rsa", Algorithm::PS512).sign(None, &good_claims("x"))),
        )
        .await,
    )
    .await;
}

#[tokio::test]
async fn claims_are_forwarded_and_tokens_stripped_from_every_source() {
    let up = TestUpstream::start("up").await;
    let routes = r#"
- id: claims
  upstream: up
  filters:
  - jwt:
      keys: [{alg: HS256, secret: "an-hs256-secret-for-the-integration-tests"}]
      from: [{header: authorization}, {cookie: session}, {query: access_token}]
      claims_to_headers: {sub: x-user, tenant: x-tenant, iss: x-issuer}
- id: keep
  upstream: up
  match: {path: {prefix: /keep}}
  filters:
  - jwt:
      keys: [{alg: HS256, secret: "an-hs256-secret-for-the-integration-tests"}]
      keep_token: true
"#;
    let gw = gateway(&up, "", routes).await;
    let token = hs256(&good_claims("bob"));
    let check = |echo: &Value| {
        let h = &echo["headers"];
        assert_eq!(h["x-user"], "bob", "{echo}");
        assert_eq!(h["x-tenant"], "t-7", "{echo}");
        assert_eq!(h["x-issuer"], "https://idp.test", "{echo}");
        assert_eq!(h["x-sluice-consumer"], "bob", "{echo}");
        assert!(
            !echo.to_string().contains(&token),
            "token reached the upstream: {echo}"
        );
    };

    let resp = gw
        .request(reqwest::Method::GET, "/a")
        .bearer_auth(&token)
        .header("x-tenant", "forged-by-client")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    check(&resp.json().await.unwrap());

    let resp = gw
        .request(reqwest::Method::GET, "/b")
        .header("cookie", format!("theme=dark; session={token}; lang=en"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    check(&echo);
    assert_eq!(echo["headers"]["cookie"], "theme=dark; lang=en", "{echo}");

    let resp = gw.get(&format!("/c?x=1&access_token={token}&y=2")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    check(&echo);
    assert_eq!(echo["query"], "x=1&y=2", "{echo}");

    // keep_token: the upstream sees the token.
    let resp = get(&gw, "/keep", Some(&token)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(
        echo["headers"]["authorization"],
        format!("Bearer {token}"),
        "{echo}"
    );
}

#[tokio::test]
async fn consumers_from_the_config_give_groups_and_can_be_required() {
    let up = TestUpstream::start("up").await;
    let extra = "consumers:\n- {name: carol, groups: [admins, beta]}\n";
    let routes = r#"
- id: known
  upstream: up
  filters:
  - jwt:
      keys: [{alg: HS256, secret: "an-hs256-secret-for-the-integration-tests"}]
      require_consumer: true
      realm: orders
"#;
    let gw = gateway(&up, extra, routes).await;
    let resp = get(&gw, "/", Some(&hs256(&good_claims("carol")))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["headers"]["x-sluice-consumer"], "carol");
    assert_eq!(echo["headers"]["x-sluice-consumer-groups"], "admins,beta");
    refused(get(&gw, "/", Some(&hs256(&good_claims("dave")))).await).await;
}

/// Requests a bounded number of times until `path` with `token` answers `status`.
async fn until_status(gw: &Gateway, token: &str, status: StatusCode, what: &str) {
    eventually(Duration::from_secs(15), what, || async {
        get(gw, "/", Some(token)).await.status() == status
    })
    .await;
}

#[tokio::test]
async fn a_kid_rotated_on_a_live_jwks_server_is_picked_up_and_the_old_one_retired() {
    let up = TestUpstream::start("up").await;
    let k1 = TestKey::new("rsa", Algorithm::RS256);
    let k2 = TestKey::new("rsa2", Algorithm::RS256);
    let jwks = JwksServer::start(vec![k1.jwk("k1")]).await;
    // No background refresh during the test: the unknown kid's refetch does the work.
    let routes = format!(
        r#"
- id: rotate
  upstream: up
  filters:
  - jwt:
      jwks: {{url: "{}", refresh: 1h, min_refetch_interval: 1s, wait: 3s}}
      realm: orders
"#,
        jwks.url()
    );
    let gw = gateway(&up, "", &routes).await;
    let t1 = k1.sign(Some("k1"), &good_claims("alice"));
    let t2 = k2.sign(Some("k2"), &good_claims("alice"));
    // The first request may wait for the first fetch, never fails for it.
    assert_eq!(get(&gw, "/", Some(&t1)).await.status(), StatusCode::OK);
    assert_eq!(get(&gw, "/", Some(&t2)).await.status(), StatusCode::UNAUTHORIZED);

    // Rotate: k2 in, k1 out. A k2 token asks for a refetch and gets through.
    jwks.set_keys(vec![k2.jwk("k2")]);
    until_status(&gw, &t2, StatusCode::OK, "the rotated-in kid accepted").await;
    // k1 left the set with that fetch.
    refused(get(&gw, "/", Some(&t1)).await).await;

    // A storm of unknown kids makes at most one fetch per min_refetch_interval.
    let unknown = k2.sign(Some("k-unknown"), &good_claims("alice"));
    let before = jwks.hits();
    let started = std::time::Instant::now();
    for _ in 0..40 {
        let resp = get(&gw, "/", Some(&unknown)).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let fetched = jwks.hits() - before;
    assert!(
        fetched as f64 <= elapsed / 1.0 + 1.0,
        "{fetched} fetches in {elapsed:.1}s for 40 unknown-kid requests"
    );
}

#[tokio::test]
async fn the_background_refresh_retires_a_kid_that_left_the_set() {
    let up = TestUpstream::start("up").await;
    let k1 = TestKey::new("ec-p256", Algorithm::ES256);
    let k2 = TestKey::new("ed25519", Algorithm::EdDSA);
    let jwks = JwksServer::start(vec![k1.jwk("k1"), k2.jwk("k2")]).await;
    // Refetches effectively off: only the refresh can change the set.
    let routes = format!(
        r#"
- id: refresh
  upstream: up
  filters:
  - jwt:
      jwks: {{url: "{}", refresh: 1s, min_refetch_interval: 1h}}
      realm: orders
"#,
        jwks.url()
    );
    let gw = gateway(&up, "", &routes).await;
    let t1 = k1.sign(Some("k1"), &good_claims("alice"));
    let t2 = k2.sign(Some("k2"), &good_claims("alice"));
    assert_eq!(get(&gw, "/", Some(&t1)).await.status(), StatusCode::OK);
    assert_eq!(get(&gw, "/", Some(&t2)).await.status(), StatusCode::OK);
    jwks.set_keys(vec![k2.jwk("k2")]);
    until_status(
        &gw,
        &t1,
        StatusCode::UNAUTHORIZED,
        "the removed kid refused after a refresh",
    )
    .await;
    assert_eq!(get(&gw, "/", Some(&t2)).await.status(), StatusCode::OK);
    assert!(jwks.hits() >= 2);
}

#[tokio::test]
async fn tokens_never_appear_in_the_logs_or_the_access_log() {
    let up = TestUpstream::start("up").await;
    let yaml = format!(
        "server: {{access_log: true}}\nlisteners: [{{name: web, listen: \"{{{{http}}}}\"}}]\nupstreams:\n{}routes:\n{}",
        upstream_entries(&[&up]),
        r#"
- id: logged
  upstream: up
  filters:
  - jwt:
      keys: [{alg: HS256, secret: "an-hs256-secret-for-the-integration-tests"}]
      from: [{header: authorization}, {query: access_token}]
"#
    );
    let gw = Gateway::builder(&yaml)
        .upstream(&up)
        .env("SLUICE_LOG", "debug")
        .start()
        .await;
    let good = hs256(&good_claims("erin"));
    let mut expired = good_claims("erin");
    expired["exp"] = json!(now() - 600);
    let expired = hs256(&expired);
    assert_eq!(get(&gw, "/", Some(&good)).await.status(), StatusCode::OK);
    assert_eq!(
        get(&gw, "/", Some(&expired)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        gw.get(&format!("/q?access_token={good}")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        gw.get(&format!("/q?access_token={expired}")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Four access-log lines, then nothing of either token anywhere.
    eventually(Duration::from_secs(10), "four access-log lines", || {
        let n = gw.logs().lines().filter(|l| l.contains("\"status\":")).count();
        async move { n >= 4 }
    })
    .await;
    let logs = gw.logs();
    // Debug logging is on, and the refusals were logged (by reason, without the token).
    assert!(
        logs.contains("jwt: token refused"),
        "no refusal in the debug log:\n{logs}"
    );
    assert!(logs.contains("expired"), "{logs}");
    for t in [&good, &expired] {
        for part in t.split('.') {
            assert!(!logs.contains(part), "a token part appears in the logs:\n{logs}");
        }
    }
    assert!(!logs.contains(SECRET), "the secret appears in the logs");
}
