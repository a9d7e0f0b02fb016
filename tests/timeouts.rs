//! Connect and total timeouts answer 504 at about the configured time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::support::{upstream_entries, Gateway, Mode, TestUpstream};

/// A loopback listener that completes no more TCP handshakes: its accept backlog (0, so
/// one pending connection) is filled by connections nobody accepts, after which the
/// kernel drops further SYNs, as a black-holing firewall does. Returns the listener and
/// the filler connections, to keep alive.
async fn blackhole() -> (TcpListener, SocketAddr, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let connect = || tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr));
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match connect().await {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
    }
    assert!(
        !matches!(connect().await, Ok(Ok(_))),
        "the backlog is full: connects time out"
    );
    (listener, addr, fillers)
}

#[tokio::test]
async fn connect_timeout_gives_504_at_the_configured_time() {
    let (_listener, addr, _fillers) = blackhole().await;
    let gw = Gateway::builder(
        r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams:
- {id: hole, endpoints: [{address: "{{hole}}"}], timeouts: {connect: 700ms}, retries: {attempts: 0}}
routes: [{id: r, upstream: hole}]
"#,
    )
    .var("hole", &addr.to_string())
    .start()
    .await;
    let started = Instant::now();
    let resp = gw.get("/").await;
    let took = started.elapsed();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(2700),
        "answered about the 700 ms connect timeout: {took:?}"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout", "{body}");
}

#[tokio::test]
async fn total_timeout_gives_504_at_the_configured_time() {
    let slow = TestUpstream::start("slow").await;
    slow.set_mode(Mode::Delay(Duration::from_secs(10))).await;
    let yaml = format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
{}routes: [{{id: r, upstream: slow, timeouts: {{total: 800ms}}}}]
"#,
        upstream_entries(&[&slow])
    );
    let gw = Gateway::start(&yaml, &[&slow]).await;
    let started = Instant::now();
    let resp = gw.get("/").await;
    let took = started.elapsed();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(2800),
        "answered about the 800 ms total timeout, not the 10 s upstream delay: {took:?}"
    );
    assert!(slow.requests() >= 1);
}

/// An upstream that answers every request with its head at once and then its body one
/// byte every `gap`, 100 bytes in all (10 s at 100 ms): within every per-read timeout,
/// far past any total. Counts the connections it served.
async fn trickler(gap: Duration) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\n")
                    .await;
                for _ in 0..100 {
                    if s.write_all(b"x").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(gap).await;
                }
            });
        }
    });
    (addr, served)
}

#[tokio::test]
async fn total_timeout_is_a_deadline_that_cuts_a_trickling_response() {
    let (addr, served) = trickler(Duration::from_millis(100)).await;
    let gw = Gateway::builder(
        r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams:
- {id: drip, endpoints: [{address: "{{drip}}"}], timeouts: {read: 5s}}
routes: [{id: r, upstream: drip, timeouts: {total: 1500ms}}]
"#,
    )
    .var("drip", &addr.to_string())
    .start()
    .await;
    // The head comes at once: 200, then the body a byte every 100 ms.
    let started = Instant::now();
    let resp = gw.get("/").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.bytes().await;
    let took = started.elapsed();
    // The stream is cut at the deadline: the body ends early, unfinished (content-length
    // 100 promised), at about 1.5 s rather than the trickle's 10 s.
    let err = body.expect_err("the body is cut before its end");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(3500),
        "cut at about the 1.5 s deadline, not after the 10 s trickle: {took:?} ({err})"
    );
    assert_eq!(
        served.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "not retried"
    );
    // Counted and logged as an upstream timeout.
    let m = gw
        .metrics_when(Duration::from_secs(5), |m| {
            m.get(
                "sluice_upstream_errors_total",
                &[("upstream", "drip"), ("kind", "upstream_timeout")],
            )
            .is_some_and(|v| v >= 1.0)
        })
        .await;
    assert_eq!(
        m.value(
            "sluice_upstream_errors_total",
            &[("upstream", "drip"), ("kind", "upstream_timeout")]
        ),
        1.0,
        "{}",
        m.text
    );
}

#[tokio::test]
async fn total_timeout_answers_504_when_the_head_comes_after_the_deadline_and_counts_retries() {
    // Every try waits 700 ms for its head (within the 1 s read timeout); the route's total
    // of 1 s with retries: the second try is cut by what is left of the total, and the
    // client gets one 504 at about 1 s, not 2 × 700 ms.
    let slow = TestUpstream::start("slow").await;
    slow.set_mode(Mode::Delay(Duration::from_millis(700))).await;
    let other = TestUpstream::start("other").await;
    other.set_mode(Mode::Delay(Duration::from_millis(700))).await;
    let gw = Gateway::start(
        r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams:
- id: pool
  endpoints: [{address: "{{slow}}"}, {address: "{{other}}"}]
  timeouts: {read: 1s}
  retries: {attempts: 2, per_try_timeout: 600ms, on: [timeout]}
routes: [{id: r, upstream: pool, timeouts: {total: 1s}}]"#,
        &[&slow, &other],
    )
    .await;
    let started = Instant::now();
    let resp = gw.get("/").await;
    let took = started.elapsed();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_millis(2500),
        "the total covers the retries: {took:?}"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout", "{body}");
}
