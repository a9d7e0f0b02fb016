//! Access control: consumers, key-auth, basic-auth, "any of" with an anonymous
//! consumer, ACLs, identity headers, consumers from etcd, `sluice_auth_total`, and no
//! credential in logs or admin output. Real binary, real upstream, real etcd.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::support::{eventually, Etcd, Gateway, TestUpstream};

const ALICE_KEY: &str = "alice-Key-7f3a9c";
const BOB_KEY: &str = "bob-Key-2b8e41";
const CAROL_KEY: &str = "carol-Key-hashed-91d0";
const ALICE_PW: &str = "alice-Pw-c0ffee";
const BOB_PW: &str = "bob-Pw-decaf";

/// An argon2id PHC string for `pw` (small parameters: the test is about the format).
fn argon2_hash(pw: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(4096, 1, 1, None).unwrap();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    a.hash_password(
        pw.as_bytes(),
        &SaltString::from_b64("c2x1aWNlLXRlc3Qtc2FsdA").unwrap(),
    )
    .unwrap()
    .to_string()
}

fn basic(user: &str, pw: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

/// The consumers block: alice (staff, key + argon2 user), bob (key + bcrypt user),
/// carol (a key stored as its SHA-256), guest (public, no credentials).
fn consumers(argon: &str, bcrypt: &str) -> String {
    let carol = hex::encode(Sha256::digest(CAROL_KEY.as_bytes()));
    format!(
        r#"consumers:
- name: alice
  groups: [staff]
  credentials:
    key_auth: {{keys: ["{ALICE_KEY}"]}}
    basic_auth: {{username: alice, password_hash: '{argon}'}}
- name: bob
  groups: [contractors]
  credentials:
    key_auth: {{keys: ["{BOB_KEY}"]}}
    basic_auth: {{username: bob, password_hash: '{bcrypt}'}}
- name: carol
  credentials:
    key_auth: {{keys: ["sha256:{carol}"]}}
- name: guest
  groups: [public]
"#
    )
}

const ROUTES: &str = r#"
server: {access_log: true}
listeners: [{name: web, listen: "{{http}}"}]
upstreams: [{id: api, endpoints: [{address: "{{api}}"}]}]
routes:
- id: key
  upstream: api
  match: {path: {prefix: /key}}
  filters: [{key_auth: {forward: {consumer_header: x-consumer-username}}}]
- id: key-visible
  upstream: api
  match: {path: {prefix: /visible}}
  filters: [{key_auth: {header: x-api-key, query: null, hide_credentials: false}}]
- id: basic
  upstream: api
  match: {path: {prefix: /basic}}
  filters: [{basic_auth: {realm: staff-area}}]
- id: any
  upstream: api
  match: {path: {prefix: /any}}
  filters: [{auth: {methods: [{key_auth: {}}, {basic_auth: {}}], anonymous: guest}}]
- id: staff
  upstream: api
  match: {path: {prefix: /staff}}
  filters:
  - key_auth: {}
  - acl: {allow: {groups: [staff]}}
- id: no-bob
  upstream: api
  match: {path: {prefix: /no-bob}}
  filters: [{auth: {methods: [{key_auth: {}}], acl: {deny: {consumers: [bob]}}}}]
- id: open
  upstream: api
  match: {path: {prefix: /open}}
"#;

struct Setup {
    gw: Gateway,
    _up: TestUpstream,
    secrets: Vec<String>,
}

async fn setup() -> Setup {
    let up = TestUpstream::start("api").await;
    let argon = argon2_hash(ALICE_PW);
    let bcrypt = bcrypt::hash(BOB_PW, 4).unwrap();
    let yaml = format!("{ROUTES}{}", consumers(&argon, &bcrypt));
    let gw = Gateway::builder(&yaml)
        .upstream(&up)
        .env("SLUICE_LOG", "debug")
        .start()
        .await;
    let carol_hash = hex::encode(Sha256::digest(CAROL_KEY.as_bytes()));
    let secrets = [
        ALICE_KEY,
        BOB_KEY,
        CAROL_KEY,
        ALICE_PW,
        BOB_PW,
        &argon,
        &bcrypt,
        &carol_hash,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Setup { gw, _up: up, secrets }
}

async fn send(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = gw.request(reqwest::Method::GET, path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, h, body)
}

/// The metrics once `sluice_auth_total` of each `(route, n)` sums to `n` (decisions are
/// counted when a request ends, just after its response).
async fn auth_metrics(gw: &Gateway, totals: &[(&str, f64)]) -> crate::support::Metrics {
    gw.metrics_when(Duration::from_secs(10), |m| {
        totals
            .iter()
            .all(|(route, n)| m.get("sluice_auth_total", &[("route", route)]) == Some(*n))
    })
    .await
}

fn www_auth(h: &reqwest::header::HeaderMap) -> Vec<String> {
    h.get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn key_auth_from_header_query_or_hash_and_the_key_is_not_proxied() {
    let s = setup().await;
    let gw = &s.gw;
    // Good key in the header: proxied as alice, key stripped, identity forwarded.
    let (status, _, echo) = send(
        gw,
        "/key/a",
        &[("apikey", ALICE_KEY), ("x-sluice-consumer", "forged")],
    )
    .await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["x-sluice-consumer"], "alice");
    assert_eq!(echo["headers"]["x-sluice-consumer-groups"], "staff");
    assert_eq!(echo["headers"]["x-consumer-username"], "alice");
    assert!(echo["headers"].get("apikey").is_none(), "{echo}");
    // In the query: the parameter is removed, the others kept.
    let (status, _, echo) = send(gw, &format!("/key/q?x=1&apikey={BOB_KEY}&y=2"), &[]).await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["x-sluice-consumer"], "bob");
    assert_eq!(echo["query"], "x=1&y=2", "{echo}");
    // A key stored as its SHA-256.
    let (status, _, echo) = send(gw, "/key/h", &[("apikey", CAROL_KEY)]).await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["x-sluice-consumer"], "carol");
    // Missing and wrong keys: 401 with the challenge and a JSON body that says no more.
    let (status, h, body) = send(gw, "/key/a", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(www_auth(&h), ["Key realm=\"sluice\""]);
    assert_eq!(body["error"], "unauthenticated", "{body}");
    assert_eq!(body["message"], "authentication required");
    let (status, h, body) = send(gw, "/key/a", &[("apikey", &format!("{ALICE_KEY}x"))]).await;
    assert_eq!(status, 401);
    assert_eq!(www_auth(&h), ["Key realm=\"sluice\""]);
    assert_eq!(body["message"], "invalid credentials");
    // hide_credentials: false and another header; the query is not read there.
    let (status, _, echo) = send(gw, "/visible", &[("x-api-key", ALICE_KEY)]).await;
    assert_eq!(status, 200);
    assert_eq!(echo["headers"]["x-api-key"], ALICE_KEY);
    let (status, _, _) = send(gw, &format!("/visible?apikey={ALICE_KEY}"), &[]).await;
    assert_eq!(status, 401);

    let m = auth_metrics(gw, &[("key", 5.0), ("key-visible", 2.0)]).await;
    let count = |route: &str, outcome: &str| {
        m.value(
            "sluice_auth_total",
            &[("route", route), ("method", "key_auth"), ("outcome", outcome)],
        )
    };
    assert_eq!(count("key", "ok"), 3.0);
    assert_eq!(count("key", "missing"), 1.0);
    assert_eq!(count("key", "invalid"), 1.0);
    assert_eq!(count("key-visible", "ok"), 1.0);
    assert_eq!(count("key-visible", "missing"), 1.0);
}

#[tokio::test]
async fn basic_auth_with_argon2_and_bcrypt_hashes() {
    let s = setup().await;
    let gw = &s.gw;
    let (status, _, echo) = send(gw, "/basic", &[("authorization", &basic("alice", ALICE_PW))]).await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["x-sluice-consumer"], "alice");
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");
    // Again: served from the verification cache, same answer.
    let (status, _, _) = send(gw, "/basic", &[("authorization", &basic("alice", ALICE_PW))]).await;
    assert_eq!(status, 200);
    let (status, _, echo) = send(gw, "/basic", &[("authorization", &basic("bob", BOB_PW))]).await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["x-sluice-consumer"], "bob");
    for bad in [
        basic("bob", ALICE_PW),
        basic("alice", ""),
        basic("nobody", BOB_PW),
        "Basic ###".to_string(),
    ] {
        let (status, h, body) = send(gw, "/basic", &[("authorization", &bad)]).await;
        assert_eq!(status, 401, "{bad}");
        assert_eq!(www_auth(&h), ["Basic realm=\"staff-area\", charset=\"UTF-8\""]);
        assert_eq!(body["message"], "invalid credentials");
    }
    let (status, h, body) = send(gw, "/basic", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(www_auth(&h), ["Basic realm=\"staff-area\", charset=\"UTF-8\""]);
    assert_eq!(body["message"], "authentication required");
    let m = auth_metrics(gw, &[("basic", 8.0)]).await;
    let count = |outcome: &str| {
        m.value(
            "sluice_auth_total",
            &[("route", "basic"), ("method", "basic_auth"), ("outcome", outcome)],
        )
    };
    assert_eq!((count("ok"), count("invalid"), count("missing")), (3.0, 4.0, 1.0));
}

#[tokio::test]
async fn any_of_several_methods_with_an_anonymous_consumer() {
    let s = setup().await;
    let gw = &s.gw;
    let (status, _, echo) = send(gw, "/any", &[("apikey", BOB_KEY)]).await;
    assert_eq!(status, 200);
    assert_eq!(echo["headers"]["x-sluice-consumer"], "bob");
    let (status, _, echo) = send(gw, "/any", &[("authorization", &basic("alice", ALICE_PW))]).await;
    assert_eq!(status, 200);
    assert_eq!(echo["headers"]["x-sluice-consumer"], "alice");
    // No credential at all: the anonymous consumer, with its groups.
    let (status, _, echo) = send(gw, "/any", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(echo["headers"]["x-sluice-consumer"], "guest");
    assert_eq!(echo["headers"]["x-sluice-consumer-groups"], "public");
    // A wrong credential is refused, not downgraded to the guest; both challenges.
    let (status, h, body) = send(gw, "/any", &[("apikey", "nope")]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        www_auth(&h),
        [
            "Key realm=\"sluice\"",
            "Basic realm=\"sluice\", charset=\"UTF-8\""
        ]
    );
    let m = auth_metrics(gw, &[("any", 4.0)]).await;
    assert_eq!(
        m.value(
            "sluice_auth_total",
            &[("route", "any"), ("method", "any"), ("outcome", "anonymous")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "sluice_auth_total",
            &[("route", "any"), ("method", "basic_auth"), ("outcome", "ok")]
        ),
        1.0
    );
    let routes = gw.admin_json("/api/v1/routes").await;
    let any = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "any")
        .unwrap();
    assert_eq!(any["auth"], json!(["key_auth", "basic_auth"]), "{any}");
}

#[tokio::test]
async fn consumer_and_group_acls_allow_and_deny() {
    let s = setup().await;
    let gw = &s.gw;
    // Group allow: alice is staff, bob is not.
    let (status, _, _) = send(gw, "/staff", &[("apikey", ALICE_KEY)]).await;
    assert_eq!(status, 200);
    let (status, h, body) = send(gw, "/staff", &[("apikey", BOB_KEY)]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden", "{body}");
    assert!(h.get("www-authenticate").is_none());
    // Not identified at all: 401, not 403.
    let (status, _, _) = send(gw, "/staff", &[]).await;
    assert_eq!(status, 401);
    // Consumer deny.
    let (status, _, _) = send(gw, "/no-bob", &[("apikey", CAROL_KEY)]).await;
    assert_eq!(status, 200);
    let (status, _, _) = send(gw, "/no-bob", &[("apikey", BOB_KEY)]).await;
    assert_eq!(status, 403);
    let m = auth_metrics(gw, &[("staff", 3.0), ("no-bob", 2.0)]).await;
    assert_eq!(
        m.value(
            "sluice_auth_total",
            &[("route", "staff"), ("outcome", "forbidden")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "sluice_auth_total",
            &[("route", "no-bob"), ("outcome", "forbidden")]
        ),
        1.0
    );
}

#[tokio::test]
async fn no_credential_reaches_logs_the_access_log_or_admin_output() {
    let s = setup().await;
    let gw = &s.gw;
    let mut ids = Vec::new();
    for (path, headers) in [
        ("/key/a".to_string(), vec![("apikey", ALICE_KEY.to_string())]),
        (format!("/key/q?apikey={BOB_KEY}"), vec![]),
        (
            "/key/a".to_string(),
            vec![("apikey", format!("{CAROL_KEY}-wrong"))],
        ),
        (
            "/basic".to_string(),
            vec![("authorization", basic("alice", ALICE_PW))],
        ),
        (
            "/basic".to_string(),
            vec![("authorization", basic("bob", &format!("{BOB_PW}-wrong")))],
        ),
        ("/open".to_string(), vec![("apikey", CAROL_KEY.to_string())]),
    ] {
        let mut req = gw.request(reqwest::Method::GET, &path);
        for (k, v) in &headers {
            req = req.header(*k, v.as_str());
        }
        let resp = req.send().await.unwrap();
        ids.push(resp.headers()["x-request-id"].to_str().unwrap().to_string());
    }
    // A rejected reload whose credential does not parse must not echo it either.
    let bad = format!(
        "{ROUTES}consumers: [{{name: x, credentials: {{key_auth: {{keys: [{{k: '{ALICE_KEY}'}}]}}}}}}]\n"
    );
    let config = gw.reload(&bad).await;
    assert!(
        config["last_rejected"]["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "{config}"
    );
    let stdout = || std::fs::read_to_string(gw.dir().join("stdout.log")).unwrap_or_default();
    eventually(Duration::from_secs(10), "every access-log line", || {
        let text = stdout();
        let done = ids.iter().all(|id| text.contains(id.as_str()));
        async move { done }
    })
    .await;
    let access: Vec<Value> = stdout()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let line = access
        .iter()
        .find(|l| l["request_id"] == ids[0].as_str())
        .unwrap();
    assert_eq!(line["consumer"], "alice", "{line}");
    let line = access
        .iter()
        .find(|l| l["request_id"] == ids[2].as_str())
        .unwrap();
    assert_eq!(line["consumer"], Value::Null, "{line}");

    let mut outputs = vec![("logs".to_string(), gw.logs())];
    for path in [
        "/api/v1/config?include=config",
        "/api/v1/routes",
        "/api/v1/consumers",
        "/metrics",
    ] {
        let text = gw.admin_get(path).await.text().await.unwrap();
        outputs.push((path.to_string(), text));
    }
    for (what, text) in &outputs {
        for secret in &s.secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} contains a credential ({secret}):\n{text}"
            );
        }
    }
    // The redacted config still shows the consumers and which methods they use.
    let config = gw.admin_json("/api/v1/config?include=config").await;
    let alice = &config["config"]["consumers"][0];
    assert_eq!(alice["name"], "alice");
    assert_eq!(
        alice["credentials"]["key_auth"]["keys"],
        json!(["<redacted>"]),
        "{alice}"
    );
    let consumers = gw.admin_json("/api/v1/consumers").await;
    assert_eq!(
        consumers["consumers"][0],
        json!({"name": "alice", "groups": ["staff"], "methods": ["basic_auth", "key_auth"]})
    );
    assert_eq!(consumers["consumers"].as_array().unwrap().len(), 4);
}

/// Routes from the file, consumers one per key in etcd: a consumer added, its key
/// changed and the consumer deleted take effect while the route stays the same.
#[tokio::test]
async fn consumers_from_etcd_change_without_a_route_change() {
    let etcd = Etcd::start().await;
    let up = TestUpstream::start("api").await;
    let mut kv = etcd.client().await;
    kv.put(
        "/sluice/consumers/dave",
        json!({"groups": ["staff"], "credentials": {"key_auth": {"keys": ["dave-k1"]}}}).to_string(),
        None,
    )
    .await
    .unwrap();
    let yaml = r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams: [{id: api, endpoints: [{address: "{{api}}"}]}]
routes:
- {id: key, upstream: api, match: {path: {prefix: /}}, filters: [{key_auth: {}}, {acl: {allow: {groups: [staff]}}}]}
"#;
    let gw = Gateway::builder(yaml)
        .upstream(&up)
        .arg("--etcd")
        .arg(etcd.endpoint())
        .arg("--etcd-connect-timeout")
        .arg("1s")
        .start()
        .await;
    let status = |key: &'static str| {
        let gw = &gw;
        async move { send(gw, "/", &[("apikey", key)]).await.0 }
    };
    assert_eq!(status("dave-k1").await, 200);
    assert_eq!(status("dave-k2").await, 401);
    // The key changes in etcd: the old one stops working, the new one works.
    kv.put(
        "/sluice/consumers/dave",
        json!({"groups": ["staff"], "credentials": {"key_auth": {"keys": ["dave-k2"]}}}).to_string(),
        None,
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(10), "the new key", || async {
        status("dave-k2").await == 200
    })
    .await;
    assert_eq!(status("dave-k2").await, 200);
    assert_eq!(status("dave-k1").await, 401);
    // Dave leaves the staff group: identified, but the ACL refuses him now.
    kv.put(
        "/sluice/consumers/dave",
        json!({"credentials": {"key_auth": {"keys": ["dave-k2"]}}}).to_string(),
        None,
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(10), "the group change", || async {
        status("dave-k2").await == 403
    })
    .await;
    // Deleted: his key is unknown.
    kv.delete("/sluice/consumers/dave", None).await.unwrap();
    eventually(Duration::from_secs(10), "the deletion", || async {
        status("dave-k2").await == 401
    })
    .await;
    let routes = gw.admin_json("/api/v1/routes").await;
    assert_eq!(routes["routes"][0]["auth"], json!(["key_auth"]));
}
