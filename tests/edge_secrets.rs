//! Secrets that cannot leak: a distinct sentinel planted in every secret field of one
//! config, looked for in every `/api/v1/*` answer (with and without the admin token),
//! in `sluice get` and `sluice diff` (against a real etcd), in `Debug` output and in
//! the logs at `SLUICE_LOG=debug`; the config views answer 401 without the token.

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use crate::support::{eventually, Etcd, Gateway, TestUpstream};

const ADMIN_TOKEN: &str = "S3NT01-admin-token";
const CONSUMER_KEY: &str = "S3NT02-consumer-key";
const JWT_SECRET: &str = "S3NT03-jwt-hs-secret-of-32-bytes-or-more";
const JWKS_PW: &str = "S3NT05-jwks-password";
const FWD_PW: &str = "S3NT06-forward-auth-password";
const REDIS_PW: &str = "S3NT07-redis-password";
const KAFKA_PW: &str = "S3NT08-kafka-password";
const TRACE_KEY: &str = "S3NT09-collector-key";
const WEBHOOK_TOKEN: &str = "S3NT10-webhook-token";

/// The base64 secret: its text is the sentinel (what a view would show).
fn jwt_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode("S3NT04-jwt-base64-secret-32-bytes-long")
}

/// A line from the middle of the inline certificate's private key.
fn key_line(key_pem: &str) -> String {
    key_pem
        .lines()
        .find(|l| !l.starts_with("-----") && l.len() > 20)
        .expect("a base64 line in the key")
        .to_string()
}

fn sentinels(key_pem: &str) -> Vec<String> {
    vec![
        ADMIN_TOKEN.into(),
        CONSUMER_KEY.into(),
        JWT_SECRET.into(),
        jwt_b64(),
        JWKS_PW.into(),
        FWD_PW.into(),
        REDIS_PW.into(),
        KAFKA_PW.into(),
        TRACE_KEY.into(),
        WEBHOOK_TOKEN.into(),
        key_line(key_pem),
    ]
}

/// The routes and consumers (what etcd also holds).
fn routes_and_consumers() -> String {
    format!(
        r#"
consumers:
- name: ops
  credentials: {{key_auth: {{keys: ["{CONSUMER_KEY}"]}}}}
routes:
- id: jwt
  upstream: app
  match: {{path: {{prefix: /jwt}}}}
  filters:
  - jwt:
      keys:
      - {{alg: HS256, kid: a, secret: "{JWT_SECRET}"}}
      - {{alg: HS512, kid: b, secret_base64: "{b64}"}}
- id: jwks
  upstream: app
  match: {{path: {{prefix: /jwks}}}}
  filters: [{{jwt: {{jwks: {{url: "http://reader:{JWKS_PW}@127.0.0.1:9/jwks"}}}}}}]
- id: fwd
  upstream: app
  match: {{path: {{prefix: /fwd}}}}
  filters: [{{forward_auth: {{url: "http://svc:{FWD_PW}@127.0.0.1:9/auth"}}}}]
- id: limited
  upstream: app
  match: {{path: {{prefix: /limited}}}}
  filters:
  - rate_limit:
      limits: [{{requests: 100, per: 1s}}]
      redis: {{url: "redis://:{REDIS_PW}@127.0.0.1:9/0"}}
- id: key
  upstream: app
  match: {{path: {{prefix: /key}}}}
  filters: [{{key_auth: {{}}}}]
- id: rolled
  match: {{path: {{prefix: /rolled}}}}
  backends: [{{upstream: app, weight: 1}}, {{upstream: canary, weight: 0}}]
  rollout:
    canary: canary
    steps: [50, 100]
    interval: 1s
    webhooks: [{{url: "http://127.0.0.1:9/hook?token={WEBHOOK_TOKEN}", on: [pre_step]}}]
upstreams:
- {{id: app, endpoints: [{{address: "{{{{app}}}}"}}]}}
- {{id: canary, endpoints: [{{address: "{{{{app}}}}"}}]}}
"#,
        b64 = jwt_b64()
    )
}

fn config(cert_pem: &str, key_pem: &str) -> String {
    let indent = |pem: &str| pem.lines().map(|l| format!("      {l}\n")).collect::<String>();
    format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}, {{name: tls, listen: "{{{{https}}}}", tls: {{certificates: []}}}}]
admin: {{token: "{ADMIN_TOKEN}"}}
logging:
  access_log:
    sinks:
    - kafka:
        brokers: ["127.0.0.1:9"]
        topic: access
        sasl: {{mechanism: PLAIN, username: gw, password: "{KAFKA_PW}"}}
tracing:
  enabled: true
  endpoint: http://127.0.0.1:9/v1/traces
  headers: {{x-api-key: "{TRACE_KEY}"}}
certificates:
- name: inline
  server_names: [localhost]
  cert_pem: |
{cert}  key_pem: |
{key}{rest}"#,
        cert = indent(cert_pem),
        key = indent(key_pem),
        rest = routes_and_consumers()
    )
}

fn leaks<'a>(text: &str, sentinels: &'a [String]) -> Vec<&'a str> {
    sentinels
        .iter()
        .filter(|s| text.contains(s.as_str()))
        .map(String::as_str)
        .collect()
}

/// Every `/api/v1/*` GET the admin API serves.
const VIEWS: [&str; 11] = [
    "/api/v1/config",
    "/api/v1/config?include=config",
    "/api/v1/routes",
    "/api/v1/upstreams",
    "/api/v1/consumers",
    "/api/v1/certificates",
    "/api/v1/breakers",
    "/api/v1/stats",
    "/api/v1/events",
    "/api/v1/rollouts",
    "/api/v1/rollouts/rolled",
];

#[tokio::test]
async fn no_secret_appears_in_any_view_log_or_cli_output() {
    let app = TestUpstream::start("app").await;
    let cert = crate::support::TestCa::new("sentinel-ca").issue(&["localhost"]);
    let secrets = sentinels(&cert.key_pem);
    let gw = Gateway::builder(&config(&cert.cert_pem, &cert.key_pem))
        .upstream(&app)
        .env("SLUICE_LOG", "debug")
        .env("SLUICE_STATE_DIR", "{{dir}}/state")
        .start()
        .await;

    // Traffic through the secret-bearing routes, so their code paths log what they log.
    let client = crate::support::http_client_unpooled();
    for path in ["/jwt/a", "/jwks/a", "/fwd/a", "/limited/a", "/rolled/a"] {
        let _ = client.get(gw.http_url(path)).send().await;
    }
    let resp = client
        .get(gw.http_url("/key/a"))
        .header("apikey", CONSUMER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let admin = reqwest::Client::new();
    for view in VIEWS {
        let url = gw.admin_url(view);
        let anonymous = admin.get(&url).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{view} without the token");
        let body = anonymous.text().await.unwrap();
        assert!(
            leaks(&body, &secrets).is_empty(),
            "{view} without the token: {body}"
        );

        let authorized = admin.get(&url).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        assert_eq!(authorized.status(), 200, "{view} with the token");
        let body = authorized.text().await.unwrap();
        let leaked = leaks(&body, &secrets);
        assert!(leaked.is_empty(), "{view} shows {leaked:?}");
    }
    // The views still say what is configured, with the secrets redacted.
    let shown: Value = admin
        .get(gw.admin_url("/api/v1/config?include=config"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = shown["config"].to_string();
    assert!(text.contains("<redacted>"), "{text}");
    assert!(
        text.contains("redis://:<redacted>@127.0.0.1:9/0")
            || text.contains("redis://<redacted>@127.0.0.1:9/0"),
        "{text}"
    );
    assert!(
        text.contains("\"alg\":\"HS256\""),
        "non-secret fields stay: {text}"
    );
    // Probes stay open.
    for open in ["/healthz", "/readyz"] {
        assert_eq!(
            admin.get(gw.admin_url(open)).send().await.unwrap().status(),
            200,
            "{open}"
        );
    }

    // Let the background work (JWKS fetch, Redis, Kafka, the exporter, the rollout's
    // webhook) fail at least once, then read the debug log.
    eventually(
        Duration::from_secs(10),
        "the rollout asked its webhook",
        || async { gw.logs().contains("webhook") },
    )
    .await;
    let logs = gw.logs();
    let leaked = leaks(&logs, &secrets);
    assert!(leaked.is_empty(), "the debug log shows {leaked:?}");
}

#[tokio::test]
async fn sluice_get_and_diff_never_print_a_secret() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = sentinels("-----BEGIN\nnot-a-key-line-but-long-enough-to-count\n-----END");
    let doc = routes_and_consumers().replace("{{app}}", "127.0.0.1:9");
    let path = dir.path().join("doc.yaml");
    std::fs::write(&path, &doc).unwrap();
    let endpoint = etcd.endpoint();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .env("SLUICE_LOG", "debug")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let file = path.display().to_string();
    let (code, out) = run(&["diff", "--etcd", &endpoint, "-f", &file]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("create /sluice/routes/jwt"), "{out}");
    assert!(
        leaks(&out, &secrets).is_empty(),
        "diff (create) shows {:?}:\n{out}",
        leaks(&out, &secrets)
    );
    let (code, out) = run(&["apply", "--etcd", &endpoint, "-f", &file]);
    assert_eq!(code, 0, "{out}");
    assert!(
        leaks(&out, &secrets).is_empty(),
        "apply shows {:?}:\n{out}",
        leaks(&out, &secrets)
    );

    let (code, out) = run(&["get", "--etcd", &endpoint]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("id: jwt") && out.contains("<redacted>"), "{out}");
    assert!(
        leaks(&out, &secrets).is_empty(),
        "get shows {:?}:\n{out}",
        leaks(&out, &secrets)
    );

    // A change to a secret and to a field beside it: diff shows the change, not the
    // secret (old or new).
    let changed = doc
        .replace(JWT_SECRET, "S3NT11-new-jwt-hs-secret-of-32-bytes-or-more")
        .replace("requests: 100", "requests: 200");
    std::fs::write(&path, &changed).unwrap();
    let mut all = secrets.clone();
    all.push("S3NT11-new-jwt-hs-secret-of-32-bytes-or-more".into());
    let (code, out) = run(&["diff", "--etcd", &endpoint, "-f", &file]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("update /sluice/routes/limited"), "{out}");
    assert!(
        out.contains("update /sluice/routes/jwt"),
        "a changed secret is a change: {out}"
    );
    assert!(
        leaks(&out, &all).is_empty(),
        "diff (update) shows {:?}:\n{out}",
        leaks(&out, &all)
    );
}
