//! The L4 proxy from the file config, with the real binary: TCP and UDP routes to echo
//! servers on 127.0.0.1, TLS passthrough by SNI sharing the HTTPS port with terminated
//! hosts, TLS terminate to a plain TCP backend, client certificates, limits, the access
//! log and metrics, loss-free load loops, and the drain on SIGTERM.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::support::l4_echo::{echo_test, tcp_test, tls_connector, tls_test, udp_ask, TcpEcho, UdpEcho};
use crate::support::{eventually, Gateway, Signal, TestCa, TestUpstream};

const WAIT: Duration = Duration::from_secs(15);

/// The JSON lines the gateway has written to stdout so far.
fn access_lines(gw: &Gateway) -> Vec<Value> {
    std::fs::read_to_string(gw.dir().join("stdout.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn addr(gw: &Gateway, name: &str) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], gw.port(name)))
}

#[tokio::test]
async fn a_tcp_route_relays_bytes_both_ways_and_logs_each_connection() {
    let a = TcpEcho::start("tcp-a").await;
    let yaml = format!(
        r#"
server: {{access_log: true}}
listeners:
- {{name: web, listen: "{{{{http}}}}"}}
- {{name: db, listen: "{{{{addr:db}}}}", protocol: tcp}}
upstreams:
- {{id: a, endpoints: [{{address: "{}"}}]}}
l4_routes:
- {{id: db-route, listeners: [db], upstream: a}}
"#,
        a.addr()
    );
    let gw = Gateway::builder(&yaml).start().await;
    let db = addr(&gw, "db");
    let answer = tcp_test(db).await.unwrap();
    assert_eq!(answer.pod, a.pod());

    // Bytes both ways, with a half-close passed on: the echo answers everything sent
    // before the client's FIN, then the connection ends.
    let mut s = TcpStream::connect(db).await.unwrap();
    let mut welcome = vec![0u8; 64];
    let n = s.read(&mut welcome).await.unwrap();
    assert!(welcome[..n].starts_with(b"WELCOME "));
    let payload: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    s.write_all(payload.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, payload.as_bytes());

    eventually(WAIT, "the access-log record of the bulk connection", || {
        let found = access_lines(&gw)
            .iter()
            .any(|l| l["route"] == "db-route" && l["bytes_in"] == payload.len());
        async move { found }
    })
    .await;
    let lines = access_lines(&gw);
    let line = lines
        .iter()
        .find(|l| l["route"] == "db-route" && l["bytes_in"] == payload.len())
        .unwrap_or_else(|| panic!("no record of the bulk connection: {lines:?}"));
    assert_eq!(line["method"], "TCP", "{line}");
    assert_eq!(line["backend"], "a", "{line}");
    assert_eq!(line["upstream"], a.addr().to_string(), "{line}");
    assert_eq!(line["bytes_in"], payload.len(), "{line}");
    assert!(
        line["bytes_out"].as_u64().unwrap() > payload.len() as u64,
        "{line}"
    );
    assert_eq!(line["error"], Value::Null, "{line}");

    let m = gw
        .metrics_when(WAIT, |m| {
            m.value(
                "sluice_l4_sessions_total",
                &[("listener", "db"), ("route", "db-route"), ("outcome", "closed")],
            ) >= 2.0
        })
        .await;
    assert_eq!(m.value("sluice_l4_sessions_open", &[("listener", "db")]), 0.0);
    assert!(
        m.value(
            "sluice_l4_bytes_total",
            &[("listener", "db"), ("direction", "from_client")]
        ) >= payload.len() as f64
    );
}

#[tokio::test]
async fn a_tcp_connection_idle_past_the_timeout_is_closed_and_a_full_listener_refuses() {
    let a = TcpEcho::raw("idle").await;
    let yaml = format!(
        r#"
listeners:
- {{name: db, listen: "{{{{addr:db}}}}", protocol: tcp, l4: {{idle_timeout: 300ms, max_connections: 2}}}}
upstreams:
- {{id: a, endpoints: [{{address: "{}"}}]}}
l4_routes:
- {{id: r, listeners: [db], upstream: a}}
"#,
        a.addr()
    );
    let gw = Gateway::builder(&yaml).start().await;
    let db = addr(&gw, "db");
    let mut one = TcpStream::connect(db).await.unwrap();
    one.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    one.read_exact(&mut b).await.unwrap();
    let started = Instant::now();
    let n = tokio::time::timeout(WAIT, one.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed by the gateway");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );

    // Two open, the third is refused.
    let mut c1 = TcpStream::connect(db).await.unwrap();
    let mut c2 = TcpStream::connect(db).await.unwrap();
    for c in [&mut c1, &mut c2] {
        c.write_all(b"y").await.unwrap();
        c.read_exact(&mut b).await.unwrap();
    }
    let mut c3 = TcpStream::connect(db).await.unwrap();
    let _ = c3.write_all(b"z").await;
    let n = tokio::time::timeout(WAIT, c3.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the third connection is closed at accept");
    gw.metrics_when(WAIT, |m| {
        m.value(
            "sluice_l4_sessions_total",
            &[("listener", "db"), ("outcome", "connection_limit")],
        ) >= 1.0
            && m.value(
                "sluice_l4_sessions_total",
                &[("listener", "db"), ("outcome", "idle_timeout")],
            ) >= 1.0
    })
    .await;
}

#[tokio::test]
async fn udp_sessions_relay_datagrams_per_client_and_end_when_idle() {
    let a = UdpEcho::start("udp-a").await;
    let yaml = format!(
        r#"
listeners:
- {{name: dns, listen: "{{{{addr:dns}}}}", protocol: udp, l4: {{idle_timeout: 400ms}}}}
upstreams:
- {{id: a, endpoints: [{{address: "{}"}}]}}
l4_routes:
- {{id: dns, listeners: [dns], upstream: a}}
"#,
        a.addr()
    );
    let gw = Gateway::builder(&yaml).start().await;
    let dns = addr(&gw, "dns");
    let c1 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let c2 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (i, c) in [&c1, &c2].into_iter().enumerate() {
        let mut answer = None;
        for _ in 0..50 {
            answer = udp_ask(c, dns, &format!("hello {i}"), Duration::from_millis(200)).await;
            if answer.is_some() {
                break;
            }
        }
        let answer = answer.expect("an answer through the gateway");
        assert_eq!(answer["request"], format!("hello {i}"));
        assert_eq!(answer["pod"], a.pod());
    }
    let m = gw
        .metrics_when(WAIT, |m| {
            m.value("sluice_l4_sessions_open", &[("listener", "dns")]) == 2.0
        })
        .await;
    assert_eq!(
        m.value("sluice_l4_sessions_open", &[("listener", "dns")]),
        2.0,
        "a session per client"
    );
    // Idle: both sessions end.
    gw.metrics_when(WAIT, |m| {
        m.value("sluice_l4_sessions_open", &[("listener", "dns")]) == 0.0
            && m.value(
                "sluice_l4_sessions_total",
                &[("listener", "dns"), ("route", "dns"), ("outcome", "closed")],
            ) == 2.0
    })
    .await;
}

#[tokio::test]
async fn tls_passthrough_by_sni_shares_the_https_port_with_terminated_hosts() {
    let edge_ca = TestCa::new("edge");
    let backend_ca = TestCa::new("backend");
    let web = TestUpstream::start("web").await;
    let db = TcpEcho::start_tls("db", &backend_ca.issue(&["db.example.com"])).await;
    let yaml = format!(
        r#"
listeners:
- name: https
  listen: "{{{{https}}}}"
  tls: {{certificates: [{{cert: "{{{{cert:web}}}}", key: "{{{{key:web}}}}", server_names: [web.example.com]}}]}}
upstreams:
- {{id: web, endpoints: [{{address: "{}"}}]}}
- {{id: db, endpoints: [{{address: "{}"}}]}}
routes:
- {{id: site, upstream: web}}
l4_routes:
- {{id: db, listeners: [https], server_names: [db.example.com, "*.db.example.com"], tls: passthrough, upstream: db}}
"#,
        web.addr(),
        db.addr()
    );
    let gw = Gateway::builder(&yaml)
        .cert("web", &edge_ca.issue(&["web.example.com"]))
        .start()
        .await;
    // The passthrough host: the backend's own certificate, the client's SNI, end to end.
    let answer = tls_test(gw.https_addr(), "db.example.com", &backend_ca.pem())
        .await
        .unwrap();
    assert_eq!(answer.pod, db.pod());
    assert_eq!(answer.server_name, "db.example.com");
    // The gateway's certificate would not do for it.
    assert!(tls_test(gw.https_addr(), "db.example.com", &edge_ca.pem())
        .await
        .is_err());
    // Any other name is HTTPS, terminated here, on the same port.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(edge_ca.pem().as_bytes()).unwrap())
        .resolve("web.example.com", gw.https_addr())
        .build()
        .unwrap();
    let resp = client
        .get(format!(
            "https://web.example.com:{}/hello",
            gw.https_addr().port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(crate::support::upstream_of(&resp), "web");
}

#[tokio::test]
async fn a_tls_listener_terminates_for_its_route_and_sends_plain_bytes_on() {
    let ca = TestCa::new("edge");
    let plain = TcpEcho::start("plain").await;
    let yaml = format!(
        r#"
listeners:
- name: tls
  listen: "{{{{addr:tls}}}}"
  protocol: tls
  tls: {{certificates: [{{cert: "{{{{cert:edge}}}}", key: "{{{{key:edge}}}}"}}]}}
upstreams:
- {{id: plain, endpoints: [{{address: "{}"}}]}}
l4_routes:
- {{id: term, listeners: [tls], server_names: [app.example.com], tls: terminate, upstream: plain}}
"#,
        plain.addr()
    );
    let gw = Gateway::builder(&yaml)
        .cert("edge", &ca.issue(&["app.example.com", "other.example.com"]))
        .start()
        .await;
    let tls = addr(&gw, "tls");
    let answer = tls_test(tls, "app.example.com", &ca.pem()).await.unwrap();
    assert_eq!(answer.pod, plain.pod());
    assert_eq!(answer.server_name, "", "the backend saw plain TCP");
    // A name no route takes: closed.
    assert!(tls_test(tls, "other.example.com", &ca.pem()).await.is_err());
}

#[tokio::test]
async fn a_tcp_and_a_udp_echo_under_a_bounded_load_loop_lose_nothing() {
    let t = TcpEcho::raw("bulk").await;
    let u = UdpEcho::start("bulk").await;
    let yaml = format!(
        r#"
listeners:
- {{name: tcp, listen: "{{{{addr:tcp}}}}", protocol: tcp}}
- {{name: udp, listen: "{{{{addr:udp}}}}", protocol: udp}}
upstreams:
- {{id: t, endpoints: [{{address: "{}"}}]}}
- {{id: u, endpoints: [{{address: "{}"}}]}}
l4_routes:
- {{id: t, listeners: [tcp], upstream: t}}
- {{id: u, listeners: [udp], upstream: u}}
"#,
        t.addr(),
        u.addr()
    );
    let gw = Gateway::builder(&yaml).start().await;
    let (tcp, udp) = (addr(&gw, "tcp"), addr(&gw, "udp"));
    // The readiness check opened (and closed) a connection already.
    let closed = |m: &crate::support::Metrics| {
        m.value(
            "sluice_l4_sessions_total",
            &[("listener", "tcp"), ("outcome", "closed")],
        )
    };
    let before = closed(
        &gw.metrics_when(WAIT, |m| {
            // The readiness check's session may not be counted yet (its series appears
            // with the listener's first session).
            m.get("sluice_l4_sessions_open", &[("listener", "tcp")]) == Some(0.0)
        })
        .await,
    );

    // TCP: 8 clients at once, each 50 connections of 64 KiB of patterned bytes, every
    // byte checked on the way back.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for c in 0..8u8 {
        tasks.push(tokio::spawn(async move {
            let mut sent = 0usize;
            for i in 0..50u32 {
                assert!(Instant::now() < deadline, "the load loop ran out of time");
                let data: Vec<u8> = (0..64 * 1024u32).map(|k| (k ^ i ^ u32::from(c)) as u8).collect();
                let s = TcpStream::connect(tcp).await.unwrap();
                let (mut r, mut w) = s.into_split();
                let out = data.clone();
                let writer = tokio::spawn(async move {
                    w.write_all(&out).await.unwrap();
                    w.shutdown().await.unwrap();
                });
                let mut back = Vec::with_capacity(data.len());
                r.read_to_end(&mut back).await.unwrap();
                writer.await.unwrap();
                assert_eq!(back.len(), data.len(), "client {c} connection {i}: bytes lost");
                assert!(back == data, "client {c} connection {i}: bytes changed");
                sent += data.len();
            }
            sent
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 8 * 50 * 64 * 1024);

    // UDP: 4 clients, 500 datagrams each, one in flight at a time; every one answered
    // (loopback drops nothing; a lost datagram would be the gateway's).
    let mut tasks = Vec::new();
    for c in 0..4 {
        tasks.push(tokio::spawn(async move {
            let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut lost = 0;
            for i in 0..500 {
                let payload = format!("client {c} datagram {i}");
                match udp_ask(&sock, udp, &payload, Duration::from_secs(2)).await {
                    Some(v) if v["request"] == payload => {}
                    _ => lost += 1,
                }
            }
            lost
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 0, "UDP datagrams lost");
    }
    let m = gw.metrics_when(WAIT, |m| closed(m) - before >= 400.0).await;
    assert_eq!(closed(&m) - before, 400.0, "every connection closed cleanly");
    // No other outcome (reset, error, ...): every TCP session the listener counted, of
    // any outcome, is a clean close. (A series for an outcome exists only once it
    // happened, so this sums them all rather than reading a `reset` series as 0.)
    assert_eq!(
        m.value("sluice_l4_sessions_total", &[("listener", "tcp")]),
        closed(&m),
        "{}",
        m.text
    );
}

#[tokio::test]
async fn sigterm_closes_idle_connections_and_lets_active_ones_finish_within_the_drain_time() {
    let t = TcpEcho::raw("drain").await;
    let yaml = format!(
        r#"
server: {{shutdown_timeout: 20s}}
listeners:
- {{name: web, listen: "{{{{http}}}}"}}
- {{name: tcp, listen: "{{{{addr:tcp}}}}", protocol: tcp}}
upstreams:
- {{id: t, endpoints: [{{address: "{}"}}]}}
l4_routes:
- {{id: t, listeners: [tcp], upstream: t}}
"#,
        t.addr()
    );
    let mut gw = Gateway::builder(&yaml).start().await;
    let tcp = addr(&gw, "tcp");
    // An idle connection, and an active one that keeps sending for 2 s after the signal.
    let mut idle = TcpStream::connect(tcp).await.unwrap();
    idle.write_all(b"i").await.unwrap();
    let mut b = [0u8; 1];
    idle.read_exact(&mut b).await.unwrap();
    let active = TcpStream::connect(tcp).await.unwrap();
    let (mut ar, mut aw) = active.into_split();
    let signalled = Instant::now();
    let sender = tokio::spawn(async move {
        let mut sent = 0usize;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            aw.write_all(&[7u8; 1024]).await.unwrap();
            sent += 1024;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        aw.shutdown().await.unwrap();
        sent
    });
    let reader = tokio::spawn(async move {
        let mut got = 0usize;
        let mut buf = vec![0u8; 8192];
        loop {
            match ar.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got += n,
            }
        }
    });
    gw.signal(Signal::Term);
    // The idle one is closed soon after the listeners close.
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut b))
        .await
        .expect("the idle connection is closed within the drain")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "closed before the active one ends"
    );
    // The listener no longer accepts.
    eventually(WAIT, "the TCP listener closed", || async move {
        TcpStream::connect(tcp).await.is_err()
    })
    .await;
    // The active one finishes: every byte sent comes back.
    let sent = sender.await.unwrap();
    let got = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    assert_eq!(got, sent, "the active connection finished whole");
    // Then the process exits, well within the 20 s drain time.
    let status = gw.wait_exit(Duration::from_secs(15)).await.expect("exited");
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(15));
    assert_eq!(t.stats.open.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn client_certificates_are_required_per_listener_and_checked_against_the_ca() {
    let edge = TestCa::new("edge");
    let clients = TestCa::new("clients");
    let strangers = TestCa::new("strangers");
    let plain = TcpEcho::start("plain").await;
    let yaml = format!(
        r#"
listeners:
- name: tls
  listen: "{{{{addr:tls}}}}"
  protocol: tls
  tls:
    certificates: [{{cert: "{{{{cert:edge}}}}", key: "{{{{key:edge}}}}"}}]
    client_auth: {{ca: "{{{{file:clients.pem}}}}"}}
upstreams:
- {{id: plain, endpoints: [{{address: "{}"}}]}}
l4_routes:
- {{id: term, listeners: [tls], tls: terminate, upstream: plain}}
"#,
        plain.addr()
    );
    let gw = Gateway::builder(&yaml)
        .cert("edge", &edge.issue(&["app.example.com"]))
        .file("clients.pem", clients.pem())
        .start()
        .await;
    let tls = addr(&gw, "tls");
    let good = clients.issue_client("alice", &[], &["spiffe://example.com/alice"]);
    let bad = strangers.issue_client("mallory", &[], &[]);
    let attempt = |cert: Option<(String, String)>| {
        let edge_pem = edge.pem();
        async move {
            let s = TcpStream::connect(tls).await.map_err(|e| e.to_string())?;
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from("app.example.com").unwrap();
            let connector = tls_connector(&edge_pem, cert.as_ref().map(|(c, k)| (c.as_str(), k.as_str())));
            let s = connector.connect(name, s).await.map_err(|e| e.to_string())?;
            tokio::time::timeout(Duration::from_secs(5), echo_test(s))
                .await
                .map_err(|_| "timed out".to_string())?
        }
    };
    let ok = attempt(Some((good.cert_pem.clone(), good.key_pem.clone())))
        .await
        .unwrap();
    assert_eq!(ok.pod, plain.pod());
    // TLS 1.3 reports a refused client certificate after the handshake: the first read
    // fails instead of the connect.
    assert!(attempt(Some((bad.cert_pem.clone(), bad.key_pem.clone())))
        .await
        .is_err());
    assert!(attempt(None).await.is_err());
}

#[tokio::test]
async fn an_https_listener_hands_the_verified_client_certificate_to_filters_and_upstream() {
    let edge = TestCa::new("edge");
    let clients = TestCa::new("clients");
    let api = TestUpstream::start("api").await;
    let yaml = format!(
        r#"
listeners:
- name: https
  listen: "{{{{https}}}}"
  tls:
    certificates: [{{cert: "{{{{cert:edge}}}}", key: "{{{{key:edge}}}}"}}]
    client_auth: {{ca: "{{{{file:clients.pem}}}}", mode: optional, forward_certificate: true}}
upstreams:
- {{id: api, endpoints: [{{address: "{}"}}]}}
routes:
- id: billing
  upstream: api
  match: {{path: {{prefix: /billing}}}}
  filters: [{{client_cert: {{allow: {{uris: ["spiffe://example.com/billing/*"]}}}}}}]
- {{id: open, upstream: api}}
"#,
        api.addr()
    );
    let gw = Gateway::builder(&yaml)
        .cert("edge", &edge.issue(&["api.example.com"]))
        .file("clients.pem", clients.pem())
        .start()
        .await;
    let client = |cert: Option<&crate::support::TestCert>| {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(edge.pem().as_bytes()).unwrap())
            .resolve("api.example.com", gw.https_addr());
        if let Some(c) = cert {
            b = b.identity(
                reqwest::Identity::from_pem(format!("{}{}", c.cert_pem, c.key_pem).as_bytes()).unwrap(),
            );
        }
        b.build().unwrap()
    };
    let url = |path: &str| format!("https://api.example.com:{}{path}", gw.https_addr().port());
    let billing = clients.issue_client("billing-api", &[], &["spiffe://example.com/billing/api"]);
    let other = clients.issue_client("shop", &["shop.internal"], &[]);

    // The upstream sees the identity, and never the client's own copies.
    let resp = client(Some(&billing))
        .get(url("/open"))
        .header("x-client-cert-subject", "CN=admin")
        .header("x_client_cert_verify", "SUCCESS")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.unwrap();
    let h = &echo["headers"];
    assert_eq!(h["x-client-cert-subject"], "CN=billing-api", "{h}");
    assert_eq!(h["x-client-cert-verify"], "SUCCESS", "{h}");
    assert_eq!(
        h["x-client-cert-sans"], "URI:spiffe://example.com/billing/api",
        "{h}"
    );
    assert!(
        h["x-client-cert"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN%20CERTIFICATE"),
        "{h}"
    );
    assert_eq!(h["x_client_cert_verify"], Value::Null, "{h}");

    // Without a certificate (optional): served, with no identity, spoofing stripped.
    let resp = client(None)
        .get(url("/open"))
        .header("x-client-cert-subject", "CN=admin")
        .send()
        .await
        .unwrap();
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(
        echo["headers"]["x-client-cert-subject"],
        Value::Null,
        "{}",
        echo["headers"]
    );

    // The filter: only the billing SPIFFE id passes.
    assert_eq!(
        client(Some(&billing))
            .get(url("/billing/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client(Some(&other))
            .get(url("/billing/x"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        client(None).get(url("/billing/x")).send().await.unwrap().status(),
        403
    );
}
