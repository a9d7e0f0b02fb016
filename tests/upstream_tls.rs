//! TLS towards upstreams: HTTP/1.1 and h2 over TLS, the configured SNI name, and
//! certificate verification on (a trusted CA: 200; a CA the gateway does not trust:
//! 502) and off (that certificate: 200).
//!
//! The trusted upstreams name the test CA in `tls.ca` (a private CA per upstream); the
//! others rely on the platform's roots, which do not know either test CA.

use reqwest::StatusCode;

use crate::support::{Gateway, TestCa, TlsUpstream};

#[tokio::test]
async fn h1_and_h2_over_tls_send_the_sni_and_verify_unless_told_not_to() {
    let ca = TestCa::new("sluice test upstream CA");
    let trusted = TlsUpstream::start("trusted", &ca.issue(&["api.internal"])).await;
    let rogue = TestCa::new("a CA nobody trusts");
    let untrusted = TlsUpstream::start("untrusted", &rogue.issue(&["self.internal"])).await;

    let gw = Gateway::builder(
        r#"
listeners: [{name: web, listen: "{{http}}"}]
upstreams:
- {id: h1, endpoints: [{address: "{{trusted}}"}], tls: {sni: api.internal, ca: "{{file:ca.pem}}"}}
- {id: h2, protocol: h2, endpoints: [{address: "{{trusted}}"}], tls: {sni: api.internal, ca: "{{file:ca.pem}}"}}
- {id: checked, endpoints: [{address: "{{untrusted}}"}], tls: {sni: self.internal, ca: "{{file:ca.pem}}"}, retries: {attempts: 0}}
- {id: no-ca, endpoints: [{address: "{{trusted}}"}], tls: {sni: api.internal}, retries: {attempts: 0}}
- {id: unchecked, endpoints: [{address: "{{untrusted}}"}], tls: {sni: self.internal, verify: false}}
routes:
- {id: h1, upstream: h1, match: {path: {prefix: /h1}}}
- {id: h2, upstream: h2, match: {path: {prefix: /h2}}}
- {id: checked, upstream: checked, match: {path: {prefix: /checked}}}
- {id: no-ca, upstream: no-ca, match: {path: {prefix: /no-ca}}}
- {id: unchecked, upstream: unchecked, match: {path: {prefix: /unchecked}}}
"#,
    )
    .var("trusted", &trusted.addr().to_string())
    .var("untrusted", &untrusted.addr().to_string())
    .file("ca.pem", ca.pem())
    .start()
    .await;

    let resp = gw.get("/h1").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "trusted HTTP/1.1");
    let resp = gw.get("/h2").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "trusted HTTP/2.0");
    let seen = trusted.handshakes();
    assert!(
        seen.iter().all(|h| h.sni.as_deref() == Some("api.internal")),
        "every handshake sent the configured SNI: {seen:?}"
    );
    let alpns: Vec<Option<&str>> = seen.iter().map(|h| h.alpn.as_deref()).collect();
    assert!(alpns.contains(&Some("http/1.1")), "{seen:?}");
    assert!(alpns.contains(&Some("h2")), "{seen:?}");

    let resp = gw.get("/checked").await;
    assert_eq!(
        resp.status(),
        StatusCode::BAD_GATEWAY,
        "a certificate from another CA than the upstream's `tls.ca` fails verification"
    );
    assert!(
        untrusted.handshakes().is_empty(),
        "the gateway aborted the handshake: {:?}",
        untrusted.handshakes()
    );

    let resp = gw.get("/no-ca").await;
    assert_eq!(
        resp.status(),
        StatusCode::BAD_GATEWAY,
        "without its `tls.ca` the same upstream is not trusted"
    );

    let resp = gw.get("/unchecked").await;
    assert_eq!(resp.status(), StatusCode::OK, "verify: false accepts it");
    assert_eq!(resp.text().await.unwrap(), "untrusted HTTP/1.1");
    assert_eq!(
        untrusted
            .handshakes()
            .first()
            .and_then(|h| h.sni.clone())
            .as_deref(),
        Some("self.internal"),
        "the SNI is sent with verification off too"
    );
}
