//! Graceful binary upgrade (`--upgrade` + SIGQUIT) and SIGTERM drain under steady
//! keep-alive load: no request is lost. A loss is a request that got no complete answer
//! (the connection was reset or closed with the request in flight). A response that says
//! `Connection: close`, after which the client opens a new connection, is not a loss.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{eventually, upstream_entries, Gateway, Mode, RawHttp1, Signal, TestUpstream};

/// Requests one client sends at most.
const MAX_REQUESTS: usize = 200_000;
/// How long one client runs at most.
const MAX_RUN: Duration = Duration::from_secs(60);

/// What one keep-alive client saw.
#[derive(Debug, Default)]
struct Report {
    /// Complete 200 responses carrying the echo of their own request.
    ok: usize,
    /// Requests with no complete answer (reset, or closed with the request in flight),
    /// or a wrong answer.
    lost: Vec<String>,
    /// Responses that said `Connection: close`.
    closes: usize,
    /// Connections that could not be opened.
    refused: usize,
}

/// Shared progress of the clients, for the test to wait on.
#[derive(Default)]
struct Progress {
    ok: AtomicUsize,
    stop: AtomicBool,
}

/// A client that sends GETs one after another on a keep-alive connection. After a
/// `Connection: close` it reconnects when `reconnect`, and ends otherwise.
async fn keepalive_client(id: usize, addr: SocketAddr, reconnect: bool, progress: Arc<Progress>) -> Report {
    let mut report = Report::default();
    let started = Instant::now();
    let mut conn: Option<RawHttp1> = None;
    let mut n = 0;
    while n < MAX_REQUESTS && started.elapsed() < MAX_RUN && !progress.stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match RawHttp1::try_connect(addr).await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    report.refused += 1;
                    break;
                }
            },
        };
        n += 1;
        let path = format!("/c{id}/{n}");
        match c.get(&path).await {
            Some(resp)
                if resp.status == 200
                    && String::from_utf8_lossy(&resp.body).contains(&format!("\"{path}\"")) =>
            {
                report.ok += 1;
                progress.ok.fetch_add(1, Ordering::Relaxed);
                if resp
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    report.closes += 1;
                    conn = None;
                    if !reconnect {
                        break;
                    }
                }
            }
            Some(resp) => {
                report.lost.push(format!("{path}: status {}", resp.status));
                conn = None;
            }
            None => {
                report
                    .lost
                    .push(format!("{path}: connection closed with the request in flight"));
                conn = None;
            }
        }
    }
    report
}

fn config(ups: &[&TestUpstream], server: &str) -> String {
    format!(
        "server: {server}\nlisteners: [{{name: web, listen: \"{{{{http}}}}\"}}]\nupstreams:\n{}routes:\n\
         - {{id: slow, upstream: slow, match: {{path: {{prefix: /slow}}}}}}\n\
         - {{id: r, upstream: up}}\n",
        upstream_entries(ups)
    )
}

async fn wait_for_requests(progress: &Progress, more: usize, what: &str) {
    let from = progress.ok.load(Ordering::Relaxed);
    eventually(Duration::from_secs(20), what, || async {
        progress.ok.load(Ordering::Relaxed) >= from + more
    })
    .await;
}

#[tokio::test]
async fn graceful_upgrade_under_keepalive_load_loses_no_request() {
    let up = TestUpstream::start("up").await;
    let slow = TestUpstream::start("slow").await;
    let mut gw = Gateway::start(&config(&[&up, &slow], "{shutdown_timeout: 10s}"), &[&up, &slow]).await;
    let addr = gw.http_addr();
    let progress = Arc::new(Progress::default());
    let clients: Vec<_> = (0..6)
        .map(|id| tokio::spawn(keepalive_client(id, addr, true, progress.clone())))
        .collect();
    wait_for_requests(&progress, 300, "the clients to get going on the old process").await;

    let mut successor = gw.spawn_successor();
    let sock = gw.upgrade_sock();
    eventually(
        Duration::from_secs(20),
        "the new process to wait on the upgrade socket",
        || {
            let exists = sock.exists();
            async move { exists }
        },
    )
    .await;
    gw.signal(Signal::Quit);
    let exited = gw.wait_exit(Duration::from_secs(30)).await;
    assert!(
        exited.is_some_and(|s| s.success()),
        "the old process exited cleanly after handing over ({exited:?}); logs:\n{}",
        gw.logs()
    );
    assert!(
        successor.is_running(),
        "the new process runs; logs:\n{}",
        successor.logs()
    );
    wait_for_requests(&progress, 300, "the clients to be served by the new process").await;
    progress.stop.store(true, Ordering::Relaxed);

    let mut total = Report::default();
    for c in clients {
        let r = c.await.expect("client task");
        total.ok += r.ok;
        total.closes += r.closes;
        total.refused += r.refused;
        total.lost.extend(r.lost);
    }
    assert!(
        total.lost.is_empty() && total.refused == 0,
        "{} of {} requests lost, {} connections refused: {:?}\nold:\n{}\nnew:\n{}",
        total.lost.len(),
        total.ok + total.lost.len(),
        total.refused,
        &total.lost[..total.lost.len().min(10)],
        gw.logs(),
        successor.logs()
    );
    assert!(
        total.closes >= 6,
        "each of the 6 connections to the old process was closed with `Connection: close`: {}",
        total.closes
    );
    assert!(total.ok >= 600, "{}", total.ok);
}

/// Reads h2 frames from `tcp` until the server closes the connection; returns them as
/// (type, flags, stream id, payload). Acknowledges the server's SETTINGS and PINGs.
async fn read_h2_frames(tcp: &mut TcpStream) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut frames = Vec::new();
    loop {
        let mut head = [0u8; 9];
        if tcp.read_exact(&mut head).await.is_err() {
            return frames;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if tcp.read_exact(&mut payload).await.is_err() {
            return frames;
        }
        if kind == 0x4 && flags & 0x1 == 0 {
            let _ = tcp.write_all(&[0, 0, 0, 0x4, 0x1, 0, 0, 0, 0]).await;
        }
        if kind == 0x6 && flags & 0x1 == 0 {
            // PING: answer it, as a graceful h2 shutdown waits for the ACK.
            let mut ack = vec![0, 0, 8, 0x6, 0x1, 0, 0, 0, 0];
            ack.extend_from_slice(&payload);
            let _ = tcp.write_all(&ack).await;
        }
        frames.push((kind, flags, stream, payload));
    }
}

#[tokio::test]
async fn sigterm_drain_answers_every_request_and_closes_keepalive_and_h2_cleanly() {
    let up = TestUpstream::start("up").await;
    let slow = TestUpstream::start("slow").await;
    slow.set_mode(Mode::Delay(Duration::from_millis(1500))).await;
    let mut gw = Gateway::builder(&config(
        &[&up, &slow],
        "{grace_period: 0s, shutdown_timeout: 10s}",
    ))
    .upstreams(&[&up, &slow])
    .env("SLUICE_LOG", "info")
    .start()
    .await;
    let addr = gw.http_addr();

    // An idle keep-alive connection: one request, then nothing.
    let mut idle = RawHttp1::connect(addr).await;
    let first = idle.get("/idle").await.expect("a response");
    assert_eq!(first.status, 200);

    // An h2c connection with a slow request in flight (HPACK: GET, http, /slow
    // literal, authority literal).
    let mut h2 = TcpStream::connect(addr).await.unwrap();
    let mut block = vec![0x82, 0x86, 0x04, 5];
    block.extend_from_slice(b"/slow");
    block.extend_from_slice(&[0x01, 4]);
    block.extend_from_slice(b"test");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    h2.write_all(&out).await.unwrap();
    let h2_frames = tokio::spawn(async move { read_h2_frames(&mut h2).await });

    // A slow HTTP/1.1 request in flight.
    let slow_h1 = tokio::spawn(async move {
        let mut c = RawHttp1::connect(addr).await;
        c.get("/slow/h1").await
    });
    eventually(
        Duration::from_secs(5),
        "both slow requests reach the upstream",
        || async { slow.in_flight() == 2 },
    )
    .await;

    let progress = Arc::new(Progress::default());
    let clients: Vec<_> = (0..6)
        .map(|id| tokio::spawn(keepalive_client(id, addr, false, progress.clone())))
        .collect();
    wait_for_requests(&progress, 300, "the keep-alive clients to get going").await;

    let signalled = Instant::now();
    gw.signal(Signal::Term);
    let exited = gw.wait_exit(Duration::from_secs(30)).await;
    assert!(
        exited.is_some(),
        "sluice exited after draining (shutdown_timeout 10 s); still running {:?} after SIGTERM; logs:\n{}",
        signalled.elapsed(),
        gw.logs()
    );

    for (i, c) in clients.into_iter().enumerate() {
        let r = c.await.expect("client task");
        assert!(
            r.lost.is_empty() && r.refused == 0,
            "client {i} lost requests: {:?}, refused {}",
            r.lost,
            r.refused
        );
        assert_eq!(r.closes, 1, "client {i} was told `Connection: close`: {r:?}");
    }
    let resp = slow_h1
        .await
        .unwrap()
        .expect("the in-flight HTTP/1.1 request was answered");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"), "{:?}", resp.headers);

    let frames = h2_frames.await.unwrap();
    let kinds: Vec<(u8, u8, u32)> = frames.iter().map(|f| (f.0, f.1, f.2)).collect();
    assert!(
        frames.iter().any(|f| f.0 == 0x7),
        "the h2 connection got a GOAWAY: {kinds:?}"
    );
    assert!(
        frames
            .iter()
            .any(|f| f.0 == 0x1 && f.2 == 1 && f.3.first() == Some(&0x88)),
        "the in-flight h2 stream got its 200 headers: {kinds:?}"
    );
    assert!(
        frames.iter().any(|f| f.0 == 0x0 && f.2 == 1 && f.1 & 0x1 == 1),
        "and its whole body: {kinds:?}"
    );
    assert!(
        idle.closed_within(Duration::from_secs(1)).await,
        "the idle keep-alive connection was closed"
    );
}
