//! Strict request framing, limits and request buffering, over raw TCP, through the
//! real binary, to a real upstream that records every byte it receives.
//!
//! Each malformed request goes on its own connection; the test asserts the gateway's
//! answer (400, 413, 414, 431 or 501), that the connection is closed after it, and that
//! the upstream received **none** of its bytes (every malformed request carries the
//! marker `bad-` in its target, and smuggled second requests the marker `smuggled`).
//! Between them, valid requests on other connections keep being served.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{eventually, Gateway};

/// How long a raw exchange may take before the test gives up on it.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests an upstream received: each head and its decoded body.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An HTTP/1.1 upstream on 127.0.0.1 that records every byte each connection sends it
/// and every request head it parses, and answers each request `200 ok` (or, for the
/// path `/bighead`, with a response head of 80 KiB).
struct RecordingUpstream {
    addr: SocketAddr,
    /// Every byte received, over all connections, in arrival order per read.
    bytes: Arc<Mutex<Vec<u8>>>,
    /// Each request: its head and its decoded body.
    requests: Received,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordingUpstream {
    async fn start() -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (b, r) = (bytes.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, b.clone(), r.clone()));
            }
        });
        RecordingUpstream {
            addr,
            bytes,
            requests,
            task,
        }
    }

    fn received(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }

    fn requests(&self) -> Vec<(String, Vec<u8>)> {
        self.requests.lock().unwrap().clone()
    }

    fn saw(&self, marker: &str) -> bool {
        let bytes = self.received();
        bytes.windows(marker.len()).any(|w| w == marker.as_bytes())
    }
}

/// Serves one upstream connection: requests framed by `Content-Length` or chunked.
async fn serve(mut stream: TcpStream, bytes: Arc<Mutex<Vec<u8>>>, requests: Received) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Some(head_end) = read_until(&mut stream, &mut buf, &bytes, b"\r\n\r\n").await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end + 4);
        let lower = head.to_ascii_lowercase();
        let mut body = Vec::new();
        if lower.contains("transfer-encoding: chunked") {
            loop {
                let Some(line_end) = read_until(&mut stream, &mut buf, &bytes, b"\r\n").await else {
                    return;
                };
                let size_line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
                buf.drain(..line_end + 2);
                let Ok(size) = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                else {
                    return;
                };
                if size == 0 {
                    // Trailers (none expected) end with an empty line.
                    let Some(end) = read_until(&mut stream, &mut buf, &bytes, b"\r\n").await else {
                        return;
                    };
                    buf.drain(..end + 2);
                    break;
                }
                if !read_n(&mut stream, &mut buf, &bytes, size + 2).await {
                    return;
                }
                body.extend_from_slice(&buf[..size]);
                buf.drain(..size + 2);
            }
        } else if let Some(cl) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            if !read_n(&mut stream, &mut buf, &bytes, cl).await {
                return;
            }
            body = buf.drain(..cl).collect();
        }
        let big = head.starts_with("GET /bighead ");
        requests.lock().unwrap().push((head, body));
        let response = if big {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-big: {}\r\n\r\nok",
                "b".repeat(80 * 1024)
            )
        } else {
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_string()
        };
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, bytes: &Mutex<Vec<u8>>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            bytes.lock().unwrap().extend_from_slice(&chunk[..n]);
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

async fn read_until(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    bytes: &Mutex<Vec<u8>>,
    pat: &[u8],
) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(pat.len()).position(|w| w == pat) {
            return Some(i);
        }
        if !fill(stream, buf, bytes).await {
            return None;
        }
    }
}

async fn read_n(stream: &mut TcpStream, buf: &mut Vec<u8>, bytes: &Mutex<Vec<u8>>, n: usize) -> bool {
    while buf.len() < n {
        if !fill(stream, buf, bytes).await {
            return false;
        }
    }
    true
}

/// What the gateway did with one raw connection.
#[derive(Debug)]
struct Exchange {
    /// The status of every response read, in order.
    statuses: Vec<u16>,
    /// Whether the gateway closed the connection (within the time bound).
    closed: bool,
    /// Everything the gateway sent.
    text: String,
}

/// Sends `raw` on a new connection, then reads until the gateway closes it (or the
/// time bound passes). `half_close` ends the client's side after `raw`.
async fn exchange(addr: SocketAddr, raw: &[u8], half_close: bool) -> Exchange {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    // A gateway that refuses early may close before it read everything; a failed write
    // is then expected, and what it answered is still read below.
    let _ = stream.write_all(raw).await;
    if half_close {
        let _ = stream.shutdown().await;
    }
    let mut got = Vec::new();
    let mut closed = false;
    let deadline = tokio::time::Instant::now() + EXCHANGE_TIMEOUT;
    loop {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    Exchange {
        statuses: statuses(&got),
        closed,
        text,
    }
}

/// Statuses of the responses in `got` (each starts with `HTTP/1.1 NNN`).
fn statuses(got: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(got);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// Whether the last response in `got` has all of its `Content-Length` body.
fn complete(got: &[u8]) -> bool {
    let text = String::from_utf8_lossy(got);
    let Some(start) = text.rfind("HTTP/1.1 ") else {
        return false;
    };
    let resp = &text[start..];
    let Some(head_end) = resp.find("\r\n\r\n") else {
        return false;
    };
    let len = resp[..head_end]
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    resp.len() >= head_end + 4 + len
}

/// A keep-alive connection driven one request at a time.
struct Conn {
    stream: TcpStream,
    got: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            got: Vec::new(),
        }
    }

    async fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).await.unwrap();
    }

    /// The status of the next complete response; `None` when the connection closed.
    async fn response(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + EXCHANGE_TIMEOUT;
        while !complete(&self.got) || statuses(&self.got).is_empty() {
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .expect("a response in time")
            {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.got.extend_from_slice(&chunk[..n]),
            }
        }
        let status = statuses(&self.got).pop();
        self.got.clear();
        status
    }
}

async fn gateway(up: &RecordingUpstream) -> Gateway {
    Gateway::builder(
        r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams: [{id: rec, endpoints: [{address: "{{rec}}"}]}]
routes:
- {id: small, upstream: rec, match: {path: {prefix: /small}}, limits: {max_request_body: 1KiB}}
- {id: stream, upstream: rec, match: {path: {prefix: /stream}}, request_buffering: off}
- {id: all, upstream: rec}
"#,
    )
    .var("rec", &up.addr.to_string())
    .start()
    .await
}

/// A valid request on a fresh connection is served, and reaches the upstream.
async fn still_serving(gw: &Gateway, up: &RecordingUpstream, n: usize) {
    let marker = format!("/ok-{n}");
    let raw = format!("GET {marker} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    let ex = exchange(gw.http_addr(), raw.as_bytes(), false).await;
    assert_eq!(ex.statuses, [200], "valid request {marker}: {}", ex.text);
    assert!(up.saw(&marker), "the upstream saw {marker}");
}

fn big_header(size: usize) -> String {
    format!("X-Big: {}\r\n", "a".repeat(size))
}

#[tokio::test]
async fn malformed_requests_are_refused_before_any_upstream_byte() {
    let up = RecordingUpstream::start().await;
    let gw = gateway(&up).await;
    let many_headers: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_uri = format!("/bad-uri-{}", "u".repeat(9 * 1024));
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "CL and TE",
            "POST /bad-clte HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "TE identity, chunked",
            "POST /bad-te-list HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "TE chunked twice",
            "POST /bad-te-twice HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "unknown coding before chunked",
            "POST /bad-te-unknown HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: sdch, chunked\r\n\r\n0\r\n\r\n".into(),
            501,
        ),
        (
            "unknown final coding (pingora refuses)",
            "POST /bad-te-final HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: sdch\r\n\r\n".into(),
            400,
        ),
        (
            "duplicate identical CL",
            "POST /bad-cl-dup HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".into(),
            400,
        ),
        (
            "CL list",
            "POST /bad-cl-list HTTP/1.1\r\nHost: test\r\nContent-Length: 3, 3\r\n\r\nabc".into(),
            400,
        ),
        (
            "differing CLs",
            "POST /bad-cl-diff HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".into(),
            400,
        ),
        (
            "signed CL",
            "POST /bad-cl-sign HTTP/1.1\r\nHost: test\r\nContent-Length: +3\r\n\r\nabc".into(),
            400,
        ),
        (
            "obs-fold",
            "GET /bad-fold HTTP/1.1\r\nHost: test\r\nX-A: b\r\n c\r\n\r\n".into(),
            400,
        ),
        ("bare LF", "GET /bad-lf HTTP/1.1\nHost: test\n\n".into(), 400),
        (
            "one bare LF",
            "GET /bad-lf1 HTTP/1.1\r\nHost: test\nX-A: b\r\n\r\n".into(),
            400,
        ),
        (
            "bare CR",
            "GET /bad-cr HTTP/1.1\r\nHost: test\rX-A: b\r\n\r\n".into(),
            400,
        ),
        (
            "control in name",
            "GET /bad-ctl HTTP/1.1\r\nHost: test\r\nX\x01A: b\r\n\r\n".into(),
            400,
        ),
        (
            "space before colon",
            "GET /bad-sp HTTP/1.1\r\nHost: test\r\nX-A : b\r\n\r\n".into(),
            400,
        ),
        (
            "NUL in value",
            "GET /bad-nul HTTP/1.1\r\nHost: test\r\nX-A: b\x00c\r\n\r\n".into(),
            400,
        ),
        ("invalid method", "G(T /bad-method HTTP/1.1\r\nHost: test\r\n\r\n".into(), 400),
        ("bad escape", "GET /bad-%zz HTTP/1.1\r\nHost: test\r\n\r\n".into(), 400),
        ("fragment", "GET /bad-frag#x HTTP/1.1\r\nHost: test\r\n\r\n".into(), 400),
        ("no Host", "GET /bad-nohost HTTP/1.1\r\n\r\n".into(), 400),
        (
            "absolute-form vs Host",
            "GET http://elsewhere.example/bad-abs HTTP/1.1\r\nHost: test\r\n\r\n".into(),
            400,
        ),
        (
            "128 KiB header",
            format!("GET /bad-big HTTP/1.1\r\nHost: test\r\n{}\r\n", big_header(128 * 1024)),
            431,
        ),
        (
            "9 KiB header line",
            format!("GET /bad-line HTTP/1.1\r\nHost: test\r\n{}\r\n", big_header(9 * 1024)),
            431,
        ),
        (
            "101 headers",
            format!("GET /bad-count HTTP/1.1\r\nHost: test\r\n{many_headers}\r\n"),
            431,
        ),
        ("9 KiB target", format!("GET {long_uri} HTTP/1.1\r\nHost: test\r\n\r\n"), 414),
        (
            "CL over the route's limit",
            "POST /small/bad-413 HTTP/1.1\r\nHost: test\r\nContent-Length: 2048\r\n\r\n".into(),
            413,
        ),
        (
            "invalid chunk size",
            "POST /bad-chunk HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "overflowing chunk size",
            "POST /bad-chunk-ovf HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "chunk data without its CRLF",
            "POST /bad-chunk-crlf HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n".into(),
            400,
        ),
        (
            "chunked body over the route's limit",
            format!(
                "POST /small/bad-chunk-413 HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n0\r\n\r\n",
                "c".repeat(0x800)
            ),
            413,
        ),
    ];
    for (i, (name, raw, want)) in cases.iter().enumerate() {
        let ex = exchange(gw.http_addr(), raw.as_bytes(), false).await;
        assert_eq!(ex.statuses.first(), Some(want), "{name}: {}", ex.text);
        assert_eq!(ex.statuses.len(), 1, "{name}: one answer: {}", ex.text);
        assert!(ex.closed, "{name}: the connection is closed after the refusal");
        assert!(
            !up.saw("bad-"),
            "{name}: nothing of a malformed request reached the upstream"
        );
        still_serving(&gw, &up, i).await;
    }
    // HTTP/0.9 (a request line without a version), which pingora's parser would wait
    // on: the connection wrapper answers 400 (see also
    // `illegal_request_lines_are_refused_as_the_client_sent_them`).
    let ex = exchange(gw.http_addr(), b"GET /bad-09\r\n\r\n", false).await;
    assert!(ex.closed && ex.statuses == [400], "HTTP/0.9: {ex:?}");
    assert!(!up.saw("bad-"), "HTTP/0.9 reached the upstream");
    still_serving(&gw, &up, cases.len()).await;

    // Exactly the valid probes reached the upstream.
    let heads: Vec<String> = up.requests().into_iter().map(|(h, _)| h).collect();
    assert_eq!(heads.len(), cases.len() + 1, "{heads:?}");
    assert!(heads.iter().all(|h| h.starts_with("GET /ok-")), "{heads:?}");
}

#[tokio::test]
async fn smuggling_shapes_never_deliver_the_second_request() {
    let up = RecordingUpstream::start().await;
    let gw = gateway(&up).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n";
    let shapes: Vec<(&str, String)> = vec![
        (
            "CL.TE",
            format!("POST /bad-clte HTTP/1.1\r\nHost: test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX{smuggled}"),
        ),
        (
            "TE.CL",
            format!("POST /bad-tecl HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE.TE (second TE field not chunked)",
            format!("POST /bad-tete1 HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE.TE (obfuscated list ending in chunked)",
            format!("POST /bad-tete2 HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: xchunked, chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE.TE (space before colon)",
            format!("POST /bad-tete3 HTTP/1.1\r\nHost: test\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE.TE (tab-folded value)",
            format!("POST /bad-tete4 HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: identity\r\n\tchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE.TE (duplicate chunked, identity)",
            format!("POST /bad-tete5 HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
    ];
    for (i, (name, raw)) in shapes.iter().enumerate() {
        let ex = exchange(gw.http_addr(), raw.as_bytes(), false).await;
        assert_eq!(ex.statuses.len(), 1, "{name}: exactly one answer: {}", ex.text);
        assert!(matches!(ex.statuses[0], 400 | 501), "{name}: {}", ex.text);
        assert!(ex.closed, "{name}: the connection is closed");
        assert!(
            !up.saw("smuggled"),
            "{name}: the second request never reached the upstream"
        );
        assert!(!up.saw("bad-"), "{name}: nor did the first");
        still_serving(&gw, &up, i).await;
    }
}

#[tokio::test]
async fn valid_bodies_are_buffered_and_delivered_whole() {
    let up = RecordingUpstream::start().await;
    let gw = gateway(&up).await;
    // A chunked body within the buffer, then a second request on the same connection.
    let body = "x".repeat(3000);
    let mut conn = Conn::open(gw.http_addr()).await;
    conn.send(
        format!(
            "POST /chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n5\r\nhello\r\n0\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(conn.response().await, Some(200));
    conn.send(b"GET /after HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert_eq!(conn.response().await, Some(200), "the connection stays usable");
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert!(reqs[0].0.starts_with("POST /chunked "));
    assert_eq!(reqs[0].1, format!("{body}hello").into_bytes());
    assert!(reqs[1].0.starts_with("GET /after "));

    // A Content-Length body within the buffer.
    conn.send(b"POST /cl HTTP/1.1\r\nHost: test\r\nContent-Length: 7\r\n\r\npayload")
        .await;
    assert_eq!(conn.response().await, Some(200));
    assert!(up
        .requests()
        .iter()
        .any(|(h, b)| h.starts_with("POST /cl ") && b == b"payload"));

    // A Content-Length body with `Expect: 100-continue`: the gateway says 100 itself.
    let mut stream = TcpStream::connect(gw.http_addr()).await.unwrap();
    stream
        .write_all(b"PUT /expect HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("100 Continue") {
        let n = tokio::time::timeout(EXCHANGE_TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("a 100 Continue in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before 100 Continue: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
    stream.write_all(b"abcde").await.unwrap();
    eventually(EXCHANGE_TIMEOUT, "the upstream got the PUT body", || async {
        up.requests()
            .iter()
            .any(|(h, b)| h.starts_with("PUT /expect ") && b == b"abcde")
    })
    .await;
    assert!(
        !up.requests()
            .iter()
            .any(|(h, _)| h.to_ascii_lowercase().contains("expect:")),
        "the upstream is not asked for a 100 the client already had"
    );
}

#[tokio::test]
async fn streaming_route_cuts_a_body_at_its_limit_and_upstream_heads_are_limited() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::builder(
        r#"
listeners: [{name: web, listen: "{{http}}"}]
server: {limits: {max_response_header_size: 16KiB}}
upstreams: [{id: rec, endpoints: [{address: "{{rec}}"}]}]
routes:
- {id: stream, upstream: rec, request_buffering: off, limits: {max_request_body: 4KiB}}
"#,
    )
    .var("rec", &up.addr.to_string())
    .start()
    .await;
    // Streaming: a chunked body within the limit goes through.
    let raw = "POST /up HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let ex = exchange(gw.http_addr(), raw.as_bytes(), false).await;
    assert_eq!(ex.statuses, [200], "{}", ex.text);
    // One over the limit is cut with a 413 (its head did reach the upstream: streaming).
    let big = "s".repeat(0x2000);
    let raw = format!(
        "POST /up-big HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n{big}\r\n0\r\n\r\n"
    );
    let ex = exchange(gw.http_addr(), raw.as_bytes(), false).await;
    assert_eq!(ex.statuses, [413], "{}", ex.text);
    assert!(
        !up.requests().iter().any(|(h, _)| h.starts_with("POST /up-big ")),
        "the upstream never got the whole over-limit body as a request"
    );
    // An upstream response head over the limit becomes a 502.
    let ex = exchange(
        gw.http_addr(),
        b"GET /bighead HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(ex.statuses, [502], "{}", ex.text);
    let ex = exchange(
        gw.http_addr(),
        b"GET /fine HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(ex.statuses, [200], "{}", ex.text);
}

#[tokio::test]
async fn http2_requests_get_the_same_limits() {
    use crate::support::h2c_request;
    let up = RecordingUpstream::start().await;
    let gw = gateway(&up).await;
    let addr = gw.http_addr();
    let request = |path: &str| {
        http::Request::builder()
            .uri(format!("http://test{path}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    // 101 fields: 431, nothing upstream.
    let mut req = request("/bad-h2-count");
    for i in 0..101 {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
            http::HeaderValue::from_static("v"),
        );
    }
    let resp = h2c_request(addr, req).await;
    assert_eq!(resp.head.status, 431, "{:?}", resp.body);
    // A 9 KiB path: 414.
    let resp = h2c_request(addr, request(&format!("/bad-h2-uri-{}", "u".repeat(9 * 1024)))).await;
    assert_eq!(resp.head.status, 414, "{:?}", resp.body);
    // A Content-Length over the route's limit: 413 before the body is read.
    let mut req = request("/small/bad-h2-413");
    *req.body_mut() = http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; 2048]));
    let resp = h2c_request(addr, req).await;
    assert_eq!(resp.head.status, 413, "{:?}", resp.body);
    assert!(!up.saw("bad-"), "no refused h2 request reached the upstream");
    // A valid h2 request is served.
    let resp = h2c_request(addr, request("/ok-h2")).await;
    assert_eq!(resp.head.status, 200);
    assert!(up.saw("/ok-h2"));
}

/// A gateway whose head timeout (60 s) is far longer than any answer the request-line
/// tests expect, so an answer cannot be the timeout's.
async fn patient_gateway(up: &RecordingUpstream) -> Gateway {
    Gateway::builder(
        r#"
server:
  connections: {head_timeout: 60s, idle_timeout: 60s}
  # These tests are about framing: `;` (a legal URI byte) is kept here; the default
  # refuses it (docs/security.md, "One normalised request").
  normalization: {path_parameters: keep}
listeners: [{name: web, listen: "{{http}}"}]
upstreams: [{id: rec, endpoints: [{address: "{{rec}}"}]}]
routes: [{id: all, upstream: rec}]
"#,
    )
    .var("rec", &up.addr.to_string())
    .start()
    .await
}

/// Asserts the gateway's own answer to a refused request line: one 400, the JSON error
/// naming the problem, the connection closed.
fn assert_line_refused(name: &str, ex: &Exchange) {
    assert_eq!(ex.statuses, [400], "{name}: {}", ex.text);
    assert!(ex.closed, "{name}: the connection is closed after the refusal");
    assert!(
        ex.text.contains("Connection: close") && ex.text.contains(r#""error":"malformed_request""#),
        "{name}: {}",
        ex.text
    );
}

#[tokio::test]
async fn illegal_request_lines_are_refused_as_the_client_sent_them() {
    let up = RecordingUpstream::start().await;
    let gw = patient_gateway(&up).await;
    // pingora percent-encodes the first group before any hook could see them, and
    // accepts the second group as they are; the wrapper refuses all of them.
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, target) in [
        ("space", &b"/bad-a b"[..]),
        ("two spaces inside", b"/bad-a b c"),
        ("tab", b"/bad-a\tb"),
        ("control character", b"/bad-a\x01b"),
        ("NUL", b"/bad-a\x00b"),
        ("DEL", b"/bad-a\x7fb"),
        ("raw byte over 0x7f", b"/bad-a\xffb"),
        ("non-ASCII UTF-8", "/bad-é".as_bytes()),
        ("double quote", b"/bad-\"q\""),
        ("less than", b"/bad-<x"),
        ("greater than", b"/bad->x"),
        ("backslash", b"/bad-a\\b"),
        ("caret", b"/bad-a^b"),
        ("backtick", b"/bad-a`b"),
        ("left brace", b"/bad-{a"),
        ("pipe", b"/bad-a|b"),
        ("right brace", b"/bad-a}"),
    ] {
        let mut raw = b"GET ".to_vec();
        raw.extend_from_slice(target);
        raw.extend_from_slice(b" HTTP/1.1\r\nHost: test\r\n\r\n");
        cases.push((format!("target with {name}"), raw));
    }
    for (name, line) in [
        ("method with a separator", &b"G(T /bad-m1 HTTP/1.1"[..]),
        ("method with a control character", b"GE\x01T /bad-m2 HTTP/1.1"),
        ("method with a slash", b"GE/T /bad-m3 HTTP/1.1"),
        ("non-ASCII method", "GÉT /bad-m4 HTTP/1.1".as_bytes()),
        ("empty method", b" /bad-m5 HTTP/1.1"),
        ("HTTP/2.0 on HTTP/1", b"GET /bad-v1 HTTP/2.0"),
        ("lower-case version", b"GET /bad-v2 http/1.1"),
    ] {
        let mut raw = line.to_vec();
        raw.extend_from_slice(b"\r\nHost: test\r\n\r\n");
        cases.push((name.to_string(), raw));
    }
    for (i, (name, raw)) in cases.iter().enumerate() {
        let started = std::time::Instant::now();
        let ex = exchange(gw.http_addr(), raw, false).await;
        assert_line_refused(name, &ex);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name}: answered promptly"
        );
        assert!(!up.saw("bad-"), "{name}: nothing reached the upstream");
        still_serving(&gw, &up, i).await;
    }

    // A target sent a byte at a time (its illegal byte in a later read than its
    // start) is refused as well.
    let mut s = TcpStream::connect(gw.http_addr()).await.unwrap();
    s.set_nodelay(true).unwrap();
    for b in b"GET /bad-slow" {
        s.write_all(std::slice::from_ref(b)).await.unwrap();
        s.flush().await.unwrap();
    }
    let _ = s.write_all(b" x HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + EXCHANGE_TIMEOUT;
    let closed = loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&got).into_owned();
    let ex = Exchange {
        statuses: statuses(&got),
        closed,
        text,
    };
    assert_line_refused("a split target", &ex);
    assert!(!up.saw("bad-"), "the split target reached the upstream");

    // HTTP/0.9: answered 400 at once (the head timeout is 60 s), without the client
    // closing its side.
    for (name, raw) in [
        ("HTTP/0.9", &b"GET /bad-09\r\n"[..]),
        ("HTTP/0.9 with LF", b"GET /bad-09lf\n"),
    ] {
        let started = std::time::Instant::now();
        let ex = exchange(gw.http_addr(), raw, false).await;
        assert_line_refused(name, &ex);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name}: answered in {:?}, not at the head timeout",
            started.elapsed()
        );
        assert!(
            ex.text.contains("HTTP/0.9"),
            "{name}: the body names the problem: {}",
            ex.text
        );
    }
    assert!(!up.saw("bad-"), "HTTP/0.9 reached the upstream");

    // Percent-encoded targets, and the characters RFC 3986 allows, still pass.
    for (i, target) in ["/ok-pct%20b%7Bc%7D%22", "/ok-chars/~a-b_c.d!$&'()*+,;=:@?q=1/2"]
        .iter()
        .enumerate()
    {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        let ex = exchange(gw.http_addr(), raw.as_bytes(), false).await;
        assert_eq!(ex.statuses, [200], "{target}: {}", ex.text);
        let heads = up.requests();
        assert!(
            heads
                .iter()
                .any(|(h, _)| h.starts_with(&format!("GET {target} "))),
            "{i}: the upstream got {target} as sent: {heads:?}"
        );
    }

    let refused = cases.len() + 3;
    let m = gw.metrics().await;
    assert_eq!(
        m.value(
            "sluice_connections_closed_total",
            &[("listener", "web"), ("reason", "malformed_request_line")]
        ),
        refused as f64,
        "every refusal is counted"
    );
    // Exactly the valid requests reached the upstream.
    let heads: Vec<String> = up.requests().into_iter().map(|(h, _)| h).collect();
    assert_eq!(heads.len(), cases.len() + 2, "{heads:?}");
    assert!(heads.iter().all(|h| h.starts_with("GET /ok-")), "{heads:?}");
}

#[tokio::test]
async fn every_request_line_on_a_keep_alive_connection_is_checked() {
    let up = RecordingUpstream::start().await;
    let gw = patient_gateway(&up).await;
    // Bodies (which may hold anything, spaces and control bytes included) are not
    // taken for request lines, and each next head is checked where it starts: after
    // a Content-Length body, a chunked one, and none.
    let mut c = Conn::open(gw.http_addr()).await;
    c.send(b"POST /ok-ka1 HTTP/1.1\r\nHost: test\r\nContent-Length: 8\r\n\r\na b\x01\"<|>")
        .await;
    assert_eq!(c.response().await, Some(200), "first request");
    c.send(
        b"POST /ok-ka2 HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nG / \r\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(c.response().await, Some(200), "second request");
    c.send(b"GET /ok-ka3 HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert_eq!(c.response().await, Some(200), "third request");
    c.send(b"GET /bad-ka4 b HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert_eq!(
        c.response().await,
        Some(400),
        "the fourth, with an illegal target"
    );
    let mut rest = [0u8; 64];
    let closed = tokio::time::timeout(EXCHANGE_TIMEOUT, c.stream.read(&mut rest))
        .await
        .expect("the connection closes")
        .map_or(true, |n| n == 0);
    assert!(closed, "nothing more on the connection");
    let bodies: Vec<(String, Vec<u8>)> = up.requests();
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    assert_eq!(bodies[0].1, b"a b\x01\"<|>", "the first body arrived whole");
    assert_eq!(bodies[1].1, b"G / \r", "the chunked body arrived whole");
    assert!(!up.saw("bad-"), "the fourth request never reached the upstream");

    // The same after the first request alone: only the second is refused.
    let mut c = Conn::open(gw.http_addr()).await;
    c.send(b"GET /ok-kb1 HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert_eq!(c.response().await, Some(200));
    c.send(b"GET /bad-kb2\r\n").await;
    assert_eq!(c.response().await, Some(400), "HTTP/0.9 as the second request");
    assert!(!up.saw("bad-"));
    still_serving(&gw, &up, 0).await;
}
