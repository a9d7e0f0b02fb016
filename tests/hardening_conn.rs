//! Slow and idle clients, connection caps, HTTP/2 rapid reset, a panicking request and the
//! admin token, against the real binary over raw sockets (docs/security-connections.md).
//!
//! Timeouts are configured in hundreds of milliseconds; each cut is measured from the
//! client's side and asserted between the configured time and a generous bound.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{eventually, Gateway, RawHttp1, TestUpstream};

/// Slack on every measured cut: the gateway has one thread and shares two cores with
/// the other tests.
const SLACK: Duration = Duration::from_millis(1500);
/// How much sooner than its timeout an idle cut may look from the client: the server's
/// idle clock starts when it has written the answer, a moment before the client has
/// read it and starts its own.
const EARLY: Duration = Duration::from_millis(50);

/// Reads until the server closes the connection (or `limit` passes); the bytes read and
/// whether it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => return (got, false),
        }
    }
}

async fn ok(gw: &Gateway, path: &str) {
    let resp = gw.get(path).await;
    assert_eq!(resp.status(), 200, "{path} is served meanwhile");
}

fn limits_config(limits: &str) -> String {
    format!(
        r#"
server: {{connections: {limits}}}
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams: [{{id: a, endpoints: [{{address: "{{{{a}}}}"}}]}}]
routes: [{{id: r, upstream: a}}]
"#
    )
}

#[tokio::test]
async fn a_head_sent_a_byte_at_a_time_is_cut_at_the_head_timeout() {
    let up = TestUpstream::start("a").await;
    let gw = Gateway::start(&limits_config("{head_timeout: 600ms}"), &[&up]).await;
    let head = format!(
        "GET / HTTP/1.1\r\nHost: test\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(400)
    );

    // The first request of a connection: from its accept.
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.http_addr()).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    let mut sent = 0;
    let cut = loop {
        tick.tick().await;
        if sent == head.len() {
            panic!("the whole head went through a byte at a time");
        }
        if s.write_all(&head.as_bytes()[sent..=sent]).await.is_err() {
            break started.elapsed();
        }
        sent += 1;
        // A closed connection shows on the read side first.
        let mut b = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await {
            assert!(matches!(r, Ok(0) | Err(_)), "no answer to a partial head");
            break started.elapsed();
        }
        if sent % 5 == 0 {
            ok(&gw, "/meanwhile").await;
        }
    };
    assert!(
        cut >= Duration::from_millis(600) && cut < Duration::from_millis(600) + SLACK,
        "cut at the 600 ms head timeout: {cut:?} ({sent} bytes sent)"
    );
    assert!(sent < head.len());

    // A later request on a keep-alive connection: from its first byte, however long the
    // connection was idle before.
    let mut s = TcpStream::connect(gw.http_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the first request is answered");
        raw.extend_from_slice(&chunk[..n]);
    }
    let second = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let took = second.elapsed();
    assert!(closed, "the partial second head is cut");
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(600) + SLACK,
        "cut 600 ms after the second head began: {took:?}; got {:?}",
        String::from_utf8_lossy(&got)
    );
    // The closure is counted as the connection task ends, which may be just after the
    // client saw the close.
    eventually(Duration::from_secs(5), "both cuts are counted", || async {
        gw.metrics()
            .await
            .get(
                "sluice_connections_closed_total",
                &[("listener", "web"), ("reason", "head_timeout")],
            )
            .is_some_and(|v| v >= 2.0)
    })
    .await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_cut_at_the_head_timeout() {
    let up = TestUpstream::start("a").await;
    let gw = Gateway::start(&limits_config("{head_timeout: 500ms}"), &[&up]).await;
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.http_addr()).await.unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(closed);
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(500) + SLACK,
        "{took:?}"
    );
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_cut_at_the_body_timeout() {
    let up = TestUpstream::start("a").await;
    let gw = Gateway::start(&limits_config("{body_timeout: 500ms}"), &[&up]).await;
    let mut s = TcpStream::connect(gw.http_addr()).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(closed, "the stalled body is cut");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(500) + SLACK,
        "cut at the 500 ms body timeout: {took:?}; got {:?}",
        String::from_utf8_lossy(&got)
    );
    ok(&gw, "/after").await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_cut_at_the_idle_timeout() {
    let up = TestUpstream::start("a").await;
    let gw = Gateway::start(&limits_config("{idle_timeout: 700ms}"), &[&up]).await;
    let mut c = RawHttp1::connect(gw.http_addr()).await;
    let resp = c.get("/one").await.expect("answered");
    assert_eq!(resp.status, 200);
    let idle_from = Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(5)).await,
        "the idle connection is closed"
    );
    let took = idle_from.elapsed();
    assert!(
        took >= Duration::from_millis(700) - EARLY && took < Duration::from_millis(700) + SLACK,
        "cut at the 700 ms idle timeout: {took:?}"
    );
    // A connection that keeps sending requests within the timeout stays open.
    let mut c = RawHttp1::connect(gw.http_addr()).await;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(1500) && n < 200 {
        let resp = c.get("/busy").await.expect("a busy connection is not cut");
        assert_eq!(resp.status, 200);
        n += 1;
    }
    let m = gw.metrics().await;
    assert_eq!(
        m.value(
            "sluice_connections_closed_total",
            &[("listener", "web"), ("reason", "idle_timeout")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_connection_serves_max_requests_then_closes() {
    let up = TestUpstream::start("a").await;
    let gw = Gateway::start(&limits_config("{max_requests_per_connection: 3}"), &[&up]).await;
    let mut c = RawHttp1::connect(gw.http_addr()).await;
    for i in 1..=3 {
        let resp = c
            .get(&format!("/{i}"))
            .await
            .unwrap_or_else(|| panic!("request {i} is answered"));
        assert_eq!(resp.status, 200);
        let close = resp
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        assert_eq!(
            close,
            i == 3,
            "only the third answer says Connection: close: {resp:?}"
        );
    }
    assert!(
        c.get("/4").await.is_none(),
        "a fourth request on it is not answered"
    );
    assert_eq!(up.requests(), 3);
}

#[tokio::test]
async fn connections_past_the_listener_cap_are_refused_and_others_are_served() {
    let up = TestUpstream::start("a").await;
    let gw = Gateway::start(&limits_config("{max_connections: 2}"), &[&up]).await;
    let addr = gw.http_addr();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = RawHttp1::connect(addr).await;
        assert_eq!(c.get("/held").await.expect("within the cap").status, 200);
        held.push(c);
    }
    let mut third = RawHttp1::connect(addr).await;
    assert!(
        third.closed_within(Duration::from_secs(3)).await,
        "a third connection is closed at once"
    );
    // The held connections still work, and once one closes a new one is accepted.
    assert_eq!(held[0].get("/still").await.expect("held").status, 200);
    held.pop();
    eventually(Duration::from_secs(5), "a slot frees up", || async {
        let mut c = RawHttp1::connect(addr).await;
        matches!(c.get("/again").await, Some(r) if r.status == 200)
    })
    .await;
    let m = gw.metrics().await;
    assert!(
        m.value(
            "sluice_connections_closed_total",
            &[("listener", "web"), ("reason", "connection_limit")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_listener_overrides_the_server_limits() {
    let up = TestUpstream::start("a").await;
    let gw = Gateway::start(
        r#"
server: {connections: {max_requests_per_connection: 1}}
listeners:
- {name: web, listen: "{{http}}"}
- {name: other, listen: "{{addr:other}}", connections: {max_requests_per_connection: 2}}
upstreams: [{id: a, endpoints: [{address: "{{a}}"}]}]
routes: [{id: r, upstream: a}]
"#,
        &[&up],
    )
    .await;
    let served = |addr: SocketAddr| async move {
        let mut c = RawHttp1::connect(addr).await;
        let mut n = 0;
        while n < 5 && c.get("/").await.is_some() {
            n += 1;
        }
        n
    };
    assert_eq!(served(gw.http_addr()).await, 1);
    let other = SocketAddr::from(([127, 0, 0, 1], gw.port("other")));
    assert_eq!(served(other).await, 2);
}

#[tokio::test]
async fn a_panicking_request_answers_500_and_the_others_are_served() {
    let up = TestUpstream::start("a").await;
    let mut gw = Gateway::start(
        r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams: [{id: a, endpoints: [{address: "{{a}}"}]}]
routes:
- {id: boom, upstream: a, match: {path: {prefix: /boom}}, filters: [{panic: {phase: request}}]}
- {id: late, upstream: a, match: {path: {prefix: /late}}, filters: [{panic: {phase: response}}]}
- {id: ok, upstream: a}
"#,
        &[&up],
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let client = crate::support::http_client_unpooled();
        let path = match i % 3 {
            0 => "/boom",
            1 => "/late",
            _ => "/fine",
        };
        let url = gw.http_url(path);
        tasks.push(tokio::spawn(async move {
            let resp = client
                .get(url)
                .send()
                .await
                .expect("an answer, not a dropped connection");
            (
                path,
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            )
        }));
    }
    for t in tasks {
        let (path, status, body) = t.await.unwrap();
        if path == "/fine" {
            assert_eq!(status, 200, "{path}: {body}");
        } else {
            assert_eq!(status, 500, "{path}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"], "internal", "{body}");
        }
    }
    assert!(gw.is_running(), "the process is still up");
    ok(&gw, "/after").await;
    let m = gw.metrics().await;
    assert_eq!(
        m.value(
            "sluice_requests_total",
            &[("route", "boom"), ("status_class", "5xx")]
        ),
        10.0
    );
}

const ADMIN_CONFIG: &str = r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams: [{id: a, endpoints: [{address: "{{a}}"}]}]
routes: [{id: r, upstream: a, circuit_breaker: {}}]
"#;

async fn force(gw: &Gateway, token: Option<&str>) -> u16 {
    let mut req = crate::support::http_client_unpooled()
        .post(gw.admin_url("/api/v1/breakers/r/a"))
        .body(r#"{"state": "forced_open"}"#);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn the_admin_token_is_required_for_state_changing_calls_and_config_reads() {
    let up = TestUpstream::start("a").await;
    let gw = Gateway::builder(&format!(
        "{ADMIN_CONFIG}admin: {{listen: \"{{{{admin}}}}\", token_file: \"{{{{file:token}}}}\"}}\n"
    ))
    .upstream(&up)
    .file("token", "file-token\n")
    .start()
    .await;
    assert_eq!(force(&gw, None).await, 401, "no token");
    assert_eq!(force(&gw, Some("file-toke")).await, 401, "a wrong token");
    assert_eq!(
        gw.get("/").await.status(),
        200,
        "still closed: nothing was forced"
    );
    assert_eq!(
        gw.admin_get("/api/v1/breakers").await.status(),
        401,
        "a view of the config needs the token too"
    );
    assert_eq!(
        gw.admin_get("/metrics").await.status(),
        200,
        "metrics only with token_for_reads"
    );
    assert_eq!(
        force(&gw, Some("file-token")).await,
        200,
        "the token from the file"
    );
    assert_eq!(gw.get("/").await.status(), 503, "forced open");

    // The environment wins, and /metrics can be made to need it too.
    let gw = Gateway::builder(&format!(
        "{ADMIN_CONFIG}admin: {{listen: \"{{{{admin}}}}\", token: config-token, token_for_reads: true}}\n"
    ))
    .upstream(&up)
    .env("SLUICE_ADMIN_TOKEN", "env-token")
    .start()
    .await;
    assert_eq!(force(&gw, Some("config-token")).await, 401);
    assert_eq!(
        gw.admin_get("/api/v1/routes").await.status(),
        401,
        "reads need it"
    );
    assert_eq!(gw.admin_get("/metrics").await.status(), 401, "metrics too");
    assert_eq!(gw.admin_get("/healthz").await.status(), 200, "probes never do");
    assert_eq!(force(&gw, Some("env-token")).await, 200);
}

#[tokio::test]
async fn a_public_admin_address_needs_a_token_or_admin_insecure() {
    let up = TestUpstream::start("a").await;
    let public = format!("{ADMIN_CONFIG}admin: {{listen: \"0.0.0.0:{{{{port:admin}}}}\"}}\n");
    let mut gw = Gateway::builder(&public).upstream(&up).spawn();
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("refuses to start");
    assert!(!status.success());
    assert!(
        gw.logs().contains("admin.listen: 0.0.0.0:") && gw.logs().contains("--admin-insecure"),
        "{}",
        gw.logs()
    );

    let gw = Gateway::builder(&public)
        .upstream(&up)
        .arg("--admin-insecure")
        .start()
        .await;
    assert_eq!(force(&gw, None).await, 200, "told so, it runs without a token");

    let gw = Gateway::builder(&public)
        .upstream(&up)
        .env("SLUICE_ADMIN_TOKEN", "t0ken")
        .start()
        .await;
    assert_eq!(force(&gw, None).await, 401);
    assert_eq!(force(&gw, Some("t0ken")).await, 200);
}

/// Opens a stream on `client`, waits until the gateway has accepted it and sent its
/// request upstream (`upstream` counts one more), then resets it: the rapid-reset shape
/// that h2's own guard (streams reset *before* they are accepted) does not see. `None`
/// once the connection is gone.
async fn open_and_reset(
    client: &h2::client::SendRequest<bytes::Bytes>,
    upstream: &TestUpstream,
    i: usize,
    closed: impl Fn() -> bool,
) -> Option<()> {
    let mut ready = tokio::time::timeout(Duration::from_secs(2), client.clone().ready())
        .await
        .ok()?
        .ok()?;
    let before = upstream.requests();
    let req = http::Request::get(format!("http://test/flood/{i}"))
        .body(())
        .unwrap();
    let (_response, mut stream) = ready.send_request(req, true).ok()?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while upstream.requests() == before {
        if Instant::now() > deadline || closed() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stream.send_reset(h2::Reason::CANCEL);
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_rapid_reset_flood_is_cut_and_others_are_served() {
    let up = TestUpstream::start("a").await;
    // Every flood stream stays in flight upstream until the gateway gives it up.
    let flooded = TestUpstream::start("f").await;
    flooded.set_mode(crate::support::Mode::Hang).await;
    let gw = Gateway::start(
        r#"
server: {connections: {http2: {max_resets: 10, reset_window: 60s, max_concurrent_streams: 20}}}
listeners: [{name: web, listen: "{{http}}"}]
upstreams:
- {id: a, endpoints: [{address: "{{a}}"}]}
- {id: f, endpoints: [{address: "{{f}}"}], timeouts: {read: 30s}}
routes:
- {id: flood, upstream: f, match: {path: {prefix: /flood}}}
- {id: r, upstream: a}
"#,
        &[&up, &flooded],
    )
    .await;
    // A well-behaved h2c client on its own connection, during the flood.
    let h2c = crate::support::h2c_client();
    let url = gw.http_url("/calm");
    let calm = tokio::spawn(async move {
        let mut served = 0;
        for _ in 0..20 {
            let resp = h2c.get(&url).send().await.expect("the calm client is served");
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.version(), reqwest::Version::HTTP_2);
            served += 1;
        }
        served
    });

    let tcp = TcpStream::connect(gw.http_addr()).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    let conn = tokio::spawn(conn);
    let started = Instant::now();
    let mut sent = 0;
    // Without the budget all 200 would be accepted: ten times the 20 concurrent streams
    // the connection is allowed, since a reset stream no longer counts against it.
    while sent < 200
        && open_and_reset(&client, &flooded, sent, || conn.is_finished())
            .await
            .is_some()
    {
        sent += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the flooding connection is closed")
        .unwrap();
    let took = started.elapsed();
    eprintln!(
        "rapid reset: {sent} streams opened and reset in {took:?}; {} reached the upstream; ended with {ended:?}",
        flooded.requests()
    );
    assert!(
        ended.is_err(),
        "it ends in an error (GOAWAY or reset), not cleanly"
    );
    if let Some(reason) = ended.as_ref().err().and_then(h2::Error::reason) {
        assert_eq!(reason, h2::Reason::ENHANCE_YOUR_CALM, "{ended:?}");
    }
    assert!(
        (10..=12).contains(&flooded.requests()),
        "the budget's 10 resets, and the one that spent it, reached the upstream: {} ({sent} opened)",
        flooded.requests()
    );
    assert_eq!(calm.await.unwrap(), 20);
    ok(&gw, "/after").await;
    let m = gw.metrics().await;
    assert_eq!(
        m.value(
            "sluice_connections_closed_total",
            &[("listener", "web"), ("reason", "h2_reset_flood")]
        ),
        1.0,
        "closed by the reset budget, once"
    );
}

#[tokio::test]
async fn h2_settings_and_idle_timeout_follow_the_config() {
    let up = TestUpstream::start("a").await;
    let gw = Gateway::start(
        &limits_config(
            "{idle_timeout: 600ms, http2: {max_concurrent_streams: 7, max_header_list_size: 4096}}",
        ),
        &[&up],
    )
    .await;
    let tcp = TcpStream::connect(gw.http_addr()).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client
        .send_request(http::Request::get("http://test/small").body(()).unwrap(), true)
        .unwrap();
    let resp = resp.await.expect("a small request is answered");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        client.current_max_send_streams(),
        7,
        "the advertised stream limit"
    );

    // A header list over the advertised size never reaches the upstream.
    let before = up.requests();
    let big = http::Request::get("http://test/big")
        .header("x-big", "b".repeat(8192))
        .body(())
        .unwrap();
    let mut client = client.ready().await.unwrap();
    let answer = match client.send_request(big, true) {
        Ok((resp, _)) => match resp.await {
            Ok(r) => format!("status {}", r.status()),
            Err(e) => format!("error {e}"),
        },
        Err(e) => format!("refused {e}"),
    };
    assert!(!answer.contains("status 200"), "{answer}");
    assert_eq!(up.requests(), before, "{answer}");

    // Idle, with no stream open, the connection is closed at the idle timeout.
    let idle_from = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle h2 connection is closed");
    let took = idle_from.elapsed();
    assert!(
        took >= Duration::from_millis(600) - EARLY && took < Duration::from_millis(600) + SLACK,
        "closed at the 600 ms idle timeout: {took:?} ({ended:?})"
    );
}
