//! Identity nobody can spoof: the identity and forwarded headers in every spelling and
//! case, on every route and on mirror copies; a credential removed from wherever the
//! client put it; origin-form upstream requests; the `headers_with_underscores`
//! policies; the CORS `*` + credentials refusal. Real binary, real upstreams that record
//! every request.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{eventually, Gateway, TestUpstream};

const KEY: &str = "k-ops-Identity-77";

fn config(normalization: &str) -> String {
    format!(
        r#"
server: {{normalization: {normalization}}}
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
- {{id: app, endpoints: [{{address: "{{{{app}}}}"}}]}}
- {{id: shadow, endpoints: [{{address: "{{{{shadow}}}}"}}]}}
consumers:
- name: ops
  groups: [staff]
  credentials: {{key_auth: {{keys: ["{KEY}"]}}}}
routes:
- id: key
  upstream: app
  match: {{path: {{prefix: /key}}}}
  filters: [{{key_auth: {{forward: {{consumer_header: x-consumer-username, groups_header: x-consumer-groups}}}}}}]
- id: mirrored
  upstream: app
  match: {{path: {{prefix: /mirrored}}}}
  filters: [{{mirror: {{upstream: shadow}}}}]
- id: public
  upstream: app
  match: {{path: {{prefix: /}}}}
"#
    )
}

/// Sends `head` (a request head without its final blank line) on a new connection;
/// returns the status.
async fn send(gw: &Gateway, head: &str) -> u16 {
    let mut s = TcpStream::connect(gw.http_addr()).await.unwrap();
    s.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    text.get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"))
}

/// Spoofing attempts: the identity headers, the configured consumer headers and the
/// forwarded headers, in several cases and with `_` for `-`.
const SPOOFS: &str = "X-Sluice-Consumer: admin\r\n\
x_sluice_consumer: admin\r\n\
X_SLUICE_CONSUMER_GROUPS: root\r\n\
x-sluice-consumer-groups: root\r\n\
X-Consumer-Username: admin\r\n\
x_consumer_username: admin\r\n\
x-consumer_groups: root\r\n\
x_forwarded_for: 6.6.6.6\r\n\
X_Forwarded_Host: evil.test\r\n\
X-Forwarded-For: 6.6.6.6\r\n\
x_custom: kept-only-when-allowed\r\n";

fn headers_named<'a>(headers: &'a [(String, String)], names: &[&str]) -> Vec<&'a (String, String)> {
    headers
        .iter()
        .filter(|(k, _)| names.contains(&k.as_str()) || k.contains('_'))
        .collect()
}

const IDENTITY: [&str; 4] = [
    "x-sluice-consumer",
    "x-sluice-consumer-groups",
    "x-consumer-username",
    "x-consumer-groups",
];

#[tokio::test]
async fn identity_headers_are_removed_in_every_spelling_on_every_route() {
    let app = TestUpstream::start("app").await;
    let shadow = TestUpstream::start("shadow").await;
    let gw = Gateway::start(&config("{}"), &[&app, &shadow]).await;

    // A public route: no client copy of any identity header, nor of any `_` header.
    assert_eq!(
        send(&gw, &format!("GET /pub HTTP/1.1\r\nHost: a.test\r\n{SPOOFS}")).await,
        200
    );
    let got = app.received();
    assert_eq!(got.len(), 1);
    assert!(
        headers_named(&got[0].headers, &IDENTITY).is_empty(),
        "{:?}",
        got[0].headers
    );
    let xff: Vec<&str> = got[0]
        .headers
        .iter()
        .filter(|(k, _)| k == "x-forwarded-for")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(xff, ["127.0.0.1"], "an untrusted X-Forwarded-For is replaced");

    // The protected route: only the gateway's own identity, for the consumer the key
    // identified; the key gone from the header and the query both.
    app.reset_requests();
    let head = format!("GET /key/a?apikey={KEY}&x=1 HTTP/1.1\r\nHost: a.test\r\napikey: {KEY}\r\n{SPOOFS}");
    assert_eq!(send(&gw, &head).await, 200);
    let got = app.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].target, "/key/a?x=1",
        "the query copy of the key is removed too"
    );
    let mut seen: Vec<(String, String)> = headers_named(&got[0].headers, &IDENTITY)
        .into_iter()
        .cloned()
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("x-consumer-groups".to_string(), "staff".to_string()),
            ("x-consumer-username".to_string(), "ops".to_string()),
            ("x-sluice-consumer".to_string(), "ops".to_string()),
            ("x-sluice-consumer-groups".to_string(), "staff".to_string()),
        ]
    );
    assert!(!got[0].headers.iter().any(|(k, _)| k == "apikey"));

    // Without the key: 401, and the upstream hears nothing.
    app.reset_requests();
    let head = format!("GET /key/a HTTP/1.1\r\nHost: a.test\r\n{SPOOFS}");
    assert_eq!(send(&gw, &head).await, 401);
    assert!(app.received().is_empty());
}

#[tokio::test]
async fn with_underscores_allowed_only_the_identity_spellings_go() {
    let app = TestUpstream::start("app").await;
    let shadow = TestUpstream::start("shadow").await;
    let gw = Gateway::start(&config("{headers_with_underscores: allow}"), &[&app, &shadow]).await;
    assert_eq!(
        send(&gw, &format!("GET /pub HTTP/1.1\r\nHost: a.test\r\n{SPOOFS}")).await,
        200
    );
    let got = app.received();
    let left: Vec<&(String, String)> = headers_named(&got[0].headers, &IDENTITY);
    assert_eq!(
        left,
        [&("x_custom".to_string(), "kept-only-when-allowed".to_string())],
        "{:?}",
        got[0].headers
    );
}

#[tokio::test]
async fn with_underscores_rejected_such_a_request_is_refused() {
    let app = TestUpstream::start("app").await;
    let shadow = TestUpstream::start("shadow").await;
    let gw = Gateway::start(&config("{headers_with_underscores: reject}"), &[&app, &shadow]).await;
    assert_eq!(
        send(&gw, "GET /pub HTTP/1.1\r\nHost: a.test\r\nx_custom: 1\r\n").await,
        400
    );
    assert_eq!(
        send(&gw, "GET /pub HTTP/1.1\r\nHost: a.test\r\nx-custom: 1\r\n").await,
        200
    );
    assert_eq!(app.requests(), 1);
}

#[tokio::test]
async fn mirror_copies_carry_no_identity_and_the_gateways_own_forwarded_headers() {
    let app = TestUpstream::start("app").await;
    let shadow = TestUpstream::start("shadow").await;
    let gw = Gateway::start(&config("{headers_with_underscores: allow}"), &[&app, &shadow]).await;
    let head = format!("GET /mirrored/x/../y HTTP/1.1\r\nHost: A.Test\r\nForwarded: for=6.6.6.6\r\n{SPOOFS}");
    assert_eq!(send(&gw, &head).await, 200);
    eventually(Duration::from_secs(5), "the mirror copy", || async {
        shadow.requests() == 1
    })
    .await;
    let copy = &shadow.received()[0];
    assert_eq!(copy.target, "/mirrored/y", "the copy has the normalised path");
    let get = |name: &str| -> Vec<&str> {
        copy.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("x-forwarded-for"), ["127.0.0.1"], "{:?}", copy.headers);
    assert_eq!(get("x-forwarded-host"), ["a.test"]);
    assert_eq!(get("host"), ["a.test"]);
    assert!(get("forwarded").is_empty());
    for name in IDENTITY {
        assert!(get(name).is_empty(), "{name} in {:?}", copy.headers);
    }
    assert!(
        !copy
            .headers
            .iter()
            .any(|(k, _)| k.starts_with("x_sluice") || k.starts_with("x_forwarded")),
        "{:?}",
        copy.headers
    );
}

#[tokio::test]
async fn an_absolute_form_target_reaches_the_upstream_in_origin_form_with_its_host() {
    let app = TestUpstream::start("app").await;
    let shadow = TestUpstream::start("shadow").await;
    let gw = Gateway::start(&config("{}"), &[&app, &shadow]).await;
    let head = "GET http://Origin.Test/p/q?x=1 HTTP/1.1\r\nHost: Origin.Test\r\n";
    assert_eq!(send(&gw, head).await, 200);
    let got = app.received();
    assert_eq!(got[0].target, "/p/q?x=1");
    let host: Vec<&str> = got[0]
        .headers
        .iter()
        .filter(|(k, _)| k == "host")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(host, ["origin.test"]);
}

#[test]
fn cors_star_with_credentials_is_refused_with_what_to_do_instead() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cors.yaml");
    std::fs::write(
        &path,
        r#"
listeners: [{name: web, listen: "127.0.0.1:1"}]
upstreams: [{id: app, endpoints: [{address: "127.0.0.1:2"}]}]
routes:
- id: api
  upstream: app
  filters: [{cors: {allow_origins: ["*"], allow_credentials: true}}]
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("routes[0].filters[0].cors.allow_origins[0]"),
        "the error names the field: {text}"
    );
    assert!(text.contains("List the origins"), "and says what to do: {text}");
}
