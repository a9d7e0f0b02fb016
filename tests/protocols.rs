//! Protocols on both sides of the gateway: TLS with SNI certificate selection and ALPN
//! h2, h2c with prior knowledge, WebSocket upgrades, and h2 upstreams whose responses
//! end with trailers (what gRPC needs).

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use reqwest::{StatusCode, Version};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    h2c_client, h2c_request, tls_client, tls_handshake, upstream_entries, upstream_of, Gateway, TestCa,
    TestUpstream,
};

#[tokio::test]
async fn tls_listener_serves_the_certificate_for_the_sni_name_and_negotiates_h2() {
    let up = TestUpstream::start("up").await;
    let ca = TestCa::new("sluice test CA");
    let cert_a = ca.issue(&["a.example.test"]);
    let cert_b = ca.issue(&["b.example.test", "*.b.example.test"]);
    let gw = Gateway::builder(&format!(
        r#"
listeners:
- name: tls
  listen: "{{{{https}}}}"
  tls:
    certificates:
    - {{cert: "{{{{cert:a}}}}", key: "{{{{key:a}}}}", server_names: [a.example.test]}}
    - {{cert: "{{{{cert:b}}}}", key: "{{{{key:b}}}}", server_names: [b.example.test, "*.b.example.test"]}}
upstreams:
{}routes:
- {{id: r, upstream: up}}
"#,
        upstream_entries(&[&up])
    ))
    .upstream(&up)
    .cert("a", &cert_a)
    .cert("b", &cert_b)
    .start()
    .await;
    let addr = gw.https_addr();

    for (sni, expected, which) in [
        ("a.example.test", &cert_a, "a"),
        ("b.example.test", &cert_b, "b"),
        ("x.b.example.test", &cert_b, "b (wildcard)"),
        ("unknown.example.test", &cert_a, "a (the default, first)"),
    ] {
        let hs = tls_handshake(addr, sni, &ca).await;
        assert!(hs.leaf == expected.der, "SNI {sni}: expected certificate {which}");
        assert_eq!(hs.alpn.as_deref(), Some(&b"h2"[..]), "SNI {sni}: ALPN chose h2");
    }

    let client = tls_client(&ca, &[("a.example.test", addr), ("b.example.test", addr)]);
    for name in ["a.example.test", "b.example.test"] {
        let resp = client
            .get(format!("https://{name}:{}/hello", addr.port()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("HTTPS request to {name} (certificate verified for the name): {e}"));
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), Version::HTTP_2, "{name}");
        assert_eq!(upstream_of(&resp), "up");
        let echo: serde_json::Value = resp.json().await.expect("echo JSON");
        assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    }
}

#[tokio::test]
async fn plain_listener_accepts_h2c_with_prior_knowledge_and_http1() {
    let up = TestUpstream::start("up").await;
    let yaml = format!(
        "listeners: [{{name: web, listen: \"{{{{http}}}}\"}}]\nupstreams:\n{}routes: [{{id: r, upstream: up}}]\n",
        upstream_entries(&[&up])
    );
    let gw = Gateway::start(&yaml, &[&up]).await;

    let resp = h2c_client()
        .get(gw.http_url("/h2c"))
        .send()
        .await
        .expect("h2c request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    let echo: serde_json::Value = resp.json().await.expect("echo JSON");
    assert_eq!(echo["path"], "/h2c");
    assert_eq!(
        echo["version"], "HTTP/1.1",
        "an http1 upstream is spoken to in HTTP/1.1"
    );

    let resp = gw.get("/h1").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_11);
}

#[tokio::test]
async fn websocket_messages_echo_through_the_gateway() {
    let up = TestUpstream::start("up").await;
    let yaml = format!(
        "listeners: [{{name: web, listen: \"{{{{http}}}}\"}}]\nupstreams:\n{}routes: [{{id: ws, upstream: up, match: {{path: {{exact: /ws}}}}}}]\n",
        upstream_entries(&[&up])
    );
    let gw = Gateway::start(&yaml, &[&up]).await;

    let exchange = async {
        let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http_addr()))
            .await
            .expect("WebSocket handshake through the gateway");
        assert_eq!(resp.status().as_u16(), 101);
        assert_eq!(resp.headers()["x-upstream"], "up");
        for i in 0..5 {
            let text = format!("message {i}");
            ws.send(Message::text(text.clone())).await.expect("send text");
            let echoed = ws.next().await.expect("an echo").expect("a valid frame");
            assert_eq!(echoed, Message::text(text));
        }
        let blob = Bytes::from_static(&[0, 1, 2, 254, 255]);
        ws.send(Message::binary(blob.clone())).await.expect("send binary");
        assert_eq!(
            ws.next().await.expect("an echo").expect("a valid frame"),
            Message::binary(blob)
        );
        ws.close(None).await.expect("close");
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("WebSocket exchange within 10 s");
}

#[tokio::test]
async fn h2_upstream_response_trailers_reach_the_client() {
    let up = TestUpstream::start("grpc").await;
    let yaml = r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams:
- {id: grpc, protocol: h2, endpoints: [{address: "{{grpc}}"}]}
routes: [{id: r, upstream: grpc}]
"#;
    let gw = Gateway::start(yaml, &[&up]).await;

    let req = http::Request::post(gw.http_url("/pkg.Service/Method"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("valid request");
    let resp = h2c_request(gw.http_addr(), req).await;
    assert_eq!(resp.head.status, http::StatusCode::OK);
    assert_eq!(resp.head.headers["content-type"], "application/grpc");
    assert_eq!(resp.body, Bytes::from_static(b"ok"));
    let trailers = resp.trailers.expect("the response ends with trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
    assert_eq!(trailers["x-upstream-trailer"], "grpc");

    let req = http::Request::get(gw.http_url("/echo"))
        .body(Full::new(Bytes::new()))
        .expect("valid request");
    let resp = h2c_request(gw.http_addr(), req).await;
    let echo: serde_json::Value = serde_json::from_slice(&resp.body).expect("echo JSON");
    assert_eq!(
        echo["version"], "HTTP/2.0",
        "the gateway spoke h2 to the upstream"
    );
}
