//! gRPC-Web: a browser-style call (HTTP/1.1, no trailers), framed by hand in both the
//! binary (`application/grpc-web+proto`) and the text (`application/grpc-web-text`)
//! modes, reaches a real gRPC server (Python's grpcio, stubs generated from
//! `tests/fixtures/grpc/echo.proto` at test time) through Sluice, and the answer comes
//! back with the gRPC trailers as the body's last frame.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::support::Gateway;

/// The grpcio server, killed on drop.
struct GrpcServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl GrpcServer {
    fn start() -> GrpcServer {
        let dir = tempfile::tempdir().unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/grpc");
        let mut child = Command::new(crate::support::kafka::python())
            .arg(fixtures.join("server.py"))
            .arg(&fixtures)
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // The server prints its port once it serves (or exits with an error first).
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the gRPC server did not start: {line:?}"));
        GrpcServer {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `EchoRequest { text }` / `EchoReply { text }` on the wire: field 1, length-delimited.
fn message(text: &str) -> Vec<u8> {
    let mut m = vec![0x0a, u8::try_from(text.len()).unwrap()];
    m.extend_from_slice(text.as_bytes());
    m
}

/// One gRPC-Web frame: flag, big-endian length, payload.
fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![flag];
    f.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The frames of a gRPC-Web body: (flag, payload).
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "a cut frame: {body:?}");
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    out
}

/// The trailer frame's fields, lower-case names.
fn trailers(payload: &[u8]) -> Vec<(String, String)> {
    String::from_utf8(payload.to_vec())
        .unwrap()
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect()
}

async fn gateway(server: &GrpcServer) -> Gateway {
    Gateway::builder(&format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams: [{{id: grpc, protocol: h2, endpoints: [{{address: "127.0.0.1:{}"}}]}}]
routes: [{{id: web, upstream: grpc, grpc_web: true, match: {{path: {{prefix: /echo.Echo/}}}}}}]
"#,
        server.port
    ))
    .start()
    .await
}

async fn call(
    gw: &Gateway,
    method: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (reqwest::header::HeaderMap, Vec<u8>) {
    let resp = gw
        .request(reqwest::Method::POST, &format!("/echo.Echo/{method}"))
        .header("content-type", content_type)
        .header("x-grpc-web", "1")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    (h, resp.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_grpc_web_call_reaches_a_grpc_server() {
    let server = GrpcServer::start();
    let gw = gateway(&server).await;
    let (h, body) = call(
        &gw,
        "Say",
        "application/grpc-web+proto",
        frame(0, &message("hello")),
    )
    .await;
    // The upstream's own type (grpcio answers `application/grpc`), in its gRPC-Web form.
    let ct = h["content-type"].to_str().unwrap();
    assert!(
        ct.starts_with("application/grpc-web") && !ct.contains("text"),
        "{ct}"
    );
    let f = frames(&body);
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(f[0], (0, message("echo: hello")));
    assert_eq!(f[1].0, 0x80);
    let t = trailers(&f[1].1);
    assert!(t.contains(&("grpc-status".into(), "0".into())), "{t:?}");
    assert!(t.contains(&("x-echo".into(), "done".into())), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_grpc_web_call_reaches_a_grpc_server() {
    let server = GrpcServer::start();
    let gw = gateway(&server).await;
    let request = STANDARD.encode(frame(0, &message("in base64")));
    let (h, body) = call(&gw, "Say", "application/grpc-web-text", request.into_bytes()).await;
    assert_eq!(h["content-type"], "application/grpc-web-text");
    let decoded = STANDARD
        .decode(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    let f = frames(&decoded);
    assert_eq!(f[0], (0, message("echo: in base64")));
    assert_eq!(f.last().unwrap().0, 0x80);
    assert!(trailers(&f.last().unwrap().1).contains(&("grpc-status".into(), "0".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_call_carries_its_grpc_status() {
    let server = GrpcServer::start();
    let gw = gateway(&server).await;
    let (h, body) = call(&gw, "Fail", "application/grpc-web", frame(0, &message("x"))).await;
    // A trailers-only answer keeps its status in the head; otherwise it is the last frame.
    let in_head = h.get("grpc-status").map(|v| v.to_str().unwrap().to_string());
    let status = match in_head {
        Some(s) => s,
        None => {
            let f = frames(&body);
            let t = trailers(&f.last().unwrap().1);
            t.iter().find(|(k, _)| k == "grpc-status").unwrap().1.clone()
        }
    };
    assert_eq!(status, "5", "NOT_FOUND");
    // A plain request on the same route is passed as it is (here: gRPC refuses it).
    let resp = gw
        .request(reqwest::Method::GET, "/echo.Echo/Say")
        .send()
        .await
        .unwrap();
    assert_ne!(
        resp.headers().get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/grpc-web")
    );
}
