//! One normalised request: the path corpus (`tests/fixtures/path_corpus.txt`) against a
//! protected `/admin` route (key_auth) and a public catch-all, over a raw socket, through
//! the real binary, to upstreams that record every request they receive.
//!
//! For every spelling: either the protected route's filters run (401 without the key;
//! with the key the protected upstream receives exactly the normalised target, in
//! origin-form) or the request is refused (400) and no upstream receives anything.
//! Nothing unauthenticated reaches either upstream.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Gateway, TestUpstream};

const KEY: &str = "k-ops-Corpus-51";

const CONFIG: &str = r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams:
- {id: secured, endpoints: [{address: "{{secured}}"}]}
- {id: open, endpoints: [{address: "{{open}}"}]}
consumers:
- name: ops
  credentials: {key_auth: {keys: ["k-ops-Corpus-51"]}}
routes:
- id: admin
  upstream: secured
  match: {path: {prefix: /admin}}
  filters: [{key_auth: {}}]
- id: public
  upstream: open
  match: {path: {prefix: /}}
"#;

/// One line of the corpus.
#[derive(Debug)]
struct Case {
    line: usize,
    expect: u16,
    target: String,
    normal: Option<String>,
}

fn corpus() -> Vec<Case> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/path_corpus.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let case = match fields.as_slice() {
            ["401", target, normal] => Case {
                line: line_no,
                expect: 401,
                target: target.to_string(),
                normal: Some(normal.to_string()),
            },
            ["400", target] => Case {
                line: line_no,
                expect: 400,
                target: target.to_string(),
                normal: None,
            },
            _ => panic!("path_corpus.txt:{line_no}: expected `401 <target> <path>` or `400 <target>`"),
        };
        cases.push(case);
    }
    cases
}

/// Sends `GET <target>` on a new connection and returns the status.
async fn status_of(addr: SocketAddr, target: &str, key: Option<&str>) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let key = key.map(|k| format!("apikey: {k}\r\n")).unwrap_or_default();
    let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{key}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{target}: no complete answer in 10 s"))
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok());
    status.unwrap_or_else(|| panic!("{target}: not an HTTP/1.1 answer: {text:?}"))
}

#[tokio::test]
async fn every_spelling_of_a_protected_path_runs_its_filters_or_is_refused() {
    let secured = TestUpstream::start("secured").await;
    let open = TestUpstream::start("open").await;
    let gw = Gateway::start(CONFIG, &[&secured, &open]).await;
    let cases = corpus();
    assert!(cases.len() >= 40, "the corpus holds {} cases", cases.len());
    let addr = gw.http_addr();
    let mut failures = Vec::new();
    for c in &cases {
        secured.reset_requests();
        open.reset_requests();
        let anonymous = status_of(addr, &c.target, None).await;
        // The gateway answers the 401 or 400 itself, before any upstream: whatever an
        // upstream received was sent before the answer, so it is already recorded.
        let leaked: Vec<String> = secured
            .received()
            .iter()
            .chain(open.received().iter())
            .map(|r| r.target.clone())
            .collect();
        if anonymous != c.expect || !leaked.is_empty() {
            failures.push(format!(
                "line {}: {} without a key: {anonymous} (want {}), upstreams received {leaked:?}",
                c.line, c.target, c.expect
            ));
            continue;
        }
        let with_key = status_of(addr, &c.target, Some(KEY)).await;
        let got: Vec<String> = secured.received().iter().map(|r| r.target.clone()).collect();
        let public: Vec<String> = open.received().iter().map(|r| r.target.clone()).collect();
        match &c.normal {
            Some(normal) => {
                if with_key != 200 || got != [normal.clone()] || !public.is_empty() {
                    failures.push(format!(
                        "line {}: {} with the key: {with_key}, protected upstream received {got:?} (want [{normal:?}]), public {public:?}",
                        c.line, c.target
                    ));
                }
            }
            None => {
                if with_key != 400 || !got.is_empty() || !public.is_empty() {
                    failures.push(format!(
                        "line {}: {} with the key: {with_key} (want 400), upstreams received {got:?} {public:?}",
                        c.line, c.target
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn the_upstream_and_the_access_log_see_the_normalised_host_and_path() {
    let secured = TestUpstream::start("secured").await;
    let open = TestUpstream::start("open").await;
    let gw = Gateway::start(
        &format!("server: {{access_log: true}}\n{CONFIG}"),
        &[&secured, &open],
    )
    .await;
    let mut s = TcpStream::connect(gw.http_addr()).await.unwrap();
    s.write_all(b"GET /x/./y/../%7Ename HTTP/1.1\r\nHost: WWW.Example.COM.\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    let got = open.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].target, "/x/~name");
    let host: Vec<&str> = got[0]
        .headers
        .iter()
        .filter(|(k, _)| k == "host")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(host, ["www.example.com"]);
    crate::support::eventually(Duration::from_secs(5), "the access log line", || async {
        gw.logs().contains("\"path\":\"/x/~name\"")
    })
    .await;
    assert!(
        !gw.logs().contains("/x/./y/../%7Ename"),
        "the raw target is not logged"
    );
}
