//! Listener certificates that change without a restart (TLS Secrets through the
//! Kubernetes source, and certificate files), the `ssl-redirect` annotations, and
//! `SluicePolicy` attachment, over the wire: the real binary, the real `kube` watcher
//! against `support::kube_fake`, real upstreams, real TLS clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_rustls::rustls;

use crate::support::{
    eventually, http_client, upstream_of, FakeKube, Gateway, Metrics, TestCa, TestCert, TestUpstream,
};

const NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(15);

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn tls_secret(name: &str, cert: &TestCert) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": NS},
        "data": {"tls.crt": b64(cert.cert_pem.as_bytes()), "tls.key": b64(cert.key_pem.as_bytes())}})
}

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

fn pod_slice(svc: &str, pod: &TestUpstream) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-{}", pod.name()), "namespace": NS,
            "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": pod.addr().port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": [pod.addr().ip().to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false}}]})
}

fn ingress_class() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "sluice"}, "spec": {"controller": "sluice.dev/ingress-controller"}})
}

/// An Ingress routing `host` to Service `svc`, with `tls` as its `spec.tls`.
fn ingress(name: &str, host: &str, svc: &str, annotations: Value, tls: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
    "metadata": {"name": name, "namespace": NS, "annotations": annotations},
    "spec": {"ingressClassName": "sluice", "tls": tls, "rules": [{"host": host, "http": {"paths": [
        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": svc, "port": {"name": "http"}}}}
    ]}}]}})
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "SluicePolicy",
        "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

/// A gateway with a plain listener `web`, a TLS listener `websecure` (certificates from
/// Secrets only) and the Kubernetes source on `fake`; `extra` is appended to the config.
async fn start(fake: &FakeKube, extra: &str) -> Gateway {
    let yaml = format!(
        "listeners:\n- {{name: web, listen: \"{{{{http}}}}\"}}\n- {{name: websecure, listen: \"{{{{https}}}}\", tls: {{certificates: []}}}}\nkubernetes:\n  clusters: [{{name: local, kubeconfig: \"{{{{file:local.kubeconfig}}}}\"}}]\n  namespaces: [{NS}]\n  debounce: 5ms\n  tls_listener: websecure\n{extra}"
    );
    Gateway::builder(&yaml)
        .file("local.kubeconfig", fake.kubeconfig())
        .start()
        .await
}

/// A TLS client trusting `ca` (ring, like the test helpers), HTTP/1.1 only.
fn client_config(ca: &TestCa) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// One HTTP/1.1 keep-alive connection over TLS, and the certificate it was made with.
struct OpenConnection {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    leaf: Vec<u8>,
    host: String,
}

impl OpenConnection {
    async fn open(addr: SocketAddr, host: &str, ca: &TestCa) -> OpenConnection {
        let connector = tokio_rustls::TlsConnector::from(client_config(ca));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
        let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .unwrap()
            .unwrap();
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec();
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        OpenConnection {
            send,
            leaf,
            host: host.into(),
        }
    }

    /// `(status, x-upstream)` of one request on this connection.
    async fn get(&mut self, path: &str) -> (u16, String) {
        let req = hyper::Request::get(path)
            .header("host", &self.host)
            .body(Empty::new())
            .unwrap();
        let resp = tokio::time::timeout(WAIT, self.send.send_request(req))
            .await
            .unwrap()
            .unwrap();
        let status = resp.status().as_u16();
        let upstream = resp
            .headers()
            .get("x-upstream")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let _ = resp.into_body().collect().await.unwrap();
        (status, upstream)
    }
}

/// The leaf certificate a new handshake with `sni` gets, verified against `ca`; empty
/// when the handshake fails (no certificate served yet).
async fn served(addr: SocketAddr, sni: &str, ca: &TestCa) -> Vec<u8> {
    let connector = tokio_rustls::TlsConnector::from(client_config(ca));
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
        return Vec::new();
    };
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    match tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp)).await {
        Ok(Ok(tls)) => tls.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn ingress_tls_from_a_secret_rotates_with_an_open_connection_kept_and_http_redirects() {
    let ca = TestCa::new("kube tls ca");
    let first = ca.issue(&["app.test"]);
    let second = ca.issue(&["app.test"]);
    let fake = FakeKube::start().await;
    let web = TestUpstream::start("web").await;
    fake.apply(ingress_class());
    fake.apply(service("web"));
    fake.apply(pod_slice("web", &web));
    fake.apply(tls_secret("app-tls", &first));
    fake.apply(ingress(
        "app",
        "app.test",
        "web",
        json!({}),
        json!([{"hosts": ["app.test"], "secretName": "app-tls"}]),
    ));
    fake.apply(ingress("plain", "plain.test", "web", json!({}), json!([])));
    fake.apply(ingress(
        "forced",
        "forced.test",
        "web",
        json!({"nginx.ingress.kubernetes.io/force-ssl-redirect": "true"}),
        json!([]),
    ));
    let gw = start(&fake, "").await;
    let https = gw.https_addr();
    eventually(WAIT, "the Secret's certificate served", || async {
        served(https, "app.test", &ca).await == first.der.as_ref()
    })
    .await;

    let mut open = OpenConnection::open(https, "app.test", &ca).await;
    assert_eq!(open.leaf, first.der.as_ref());
    assert_eq!(open.get("/before").await, (200, "web".into()));

    // ssl-redirect: with spec.tls, plain HTTP gets a 308 to https; HTTPS passes.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects
        .get(gw.http_url("/cart?x=1"))
        .header("host", "app.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers()["location"], "https://app.test/cart?x=1");
    // force-ssl-redirect without TLS; neither: proxied.
    let r = no_redirects
        .get(gw.http_url("/"))
        .header("host", "forced.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers()["location"], "https://forced.test/");
    let r = http_client()
        .get(gw.http_url("/"))
        .header("host", "plain.test")
        .send()
        .await
        .unwrap();
    assert_eq!((r.status(), upstream_of(&r)), (StatusCode::OK, "web".into()));

    let metrics = Metrics::parse(
        &reqwest::get(gw.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let expiry = metrics
        .get(
            "sluice_tls_certificate_expiry_seconds",
            &[("listener", "websecure"), ("name", "k8s.shop.app-tls")],
        )
        .expect("the Secret's certificate has an expiry gauge");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now, "expiry {expiry} is in the future");

    // Rotation: the Secret changes; new handshakes get the new certificate.
    fake.apply(tls_secret("app-tls", &second));
    eventually(WAIT, "the rotated certificate served", || async {
        served(https, "app.test", &ca).await == second.der.as_ref()
    })
    .await;
    // The connection opened before the rotation still works, on its old certificate.
    assert_eq!(open.get("/after").await, (200, "web".into()));
    let fresh = OpenConnection::open(https, "app.test", &ca).await;
    assert_eq!(fresh.leaf, second.der.as_ref());
    assert_ne!(open.leaf, fresh.leaf);

    // A Secret that no longer reads is reported on the Ingress, naming the Secret.
    fake.apply(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "app-tls", "namespace": NS},
        "data": {"tls.crt": b64(b"not a certificate"), "tls.key": b64(second.key_pem.as_bytes())}}),
    );
    eventually(WAIT, "an event naming the bad Secret", || async {
        fake.events().iter().any(|e| {
            e["reason"] == "InvalidTLSSecret"
                && e["involvedObject"]["name"] == "app"
                && e["message"].as_str().unwrap_or("").contains("shop/app-tls")
        })
    })
    .await;
}

#[tokio::test]
async fn certificate_files_rotate_without_a_restart_and_a_bad_file_keeps_the_old_one() {
    let ca = TestCa::new("file tls ca");
    let first = ca.issue(&["file.test"]);
    let second = ca.issue(&["file.test"]);
    let up = TestUpstream::start("a").await;
    let yaml = "server: {certificate_poll_interval: 100ms}\nlisteners:\n- {name: websecure, listen: \"{{https}}\", tls: {certificates: [{cert: \"{{cert:site}}\", key: \"{{key:site}}\", server_names: [file.test]}]}}\nupstreams: [{id: a, endpoints: [{address: \"{{a}}\"}]}]\nroutes: [{id: r, upstream: a}]\n";
    let gw = Gateway::builder(yaml)
        .upstream(&up)
        .cert("site", &first)
        .start()
        .await;
    let https = gw.https_addr();
    assert_eq!(served(https, "file.test", &ca).await, first.der.as_ref());
    let mut open = OpenConnection::open(https, "file.test", &ca).await;
    assert_eq!(open.get("/").await.0, 200);

    let (cert_path, key_path) = second.write(gw.dir(), "site");
    eventually(WAIT, "the rewritten files served", || async {
        served(https, "file.test", &ca).await == second.der.as_ref()
    })
    .await;
    assert_eq!(
        open.get("/again").await.0,
        200,
        "the open connection keeps working"
    );

    // A broken file: the last good certificate stays, and the admin API names the file.
    std::fs::write(&cert_path, "garbage").unwrap();
    let cert_name = cert_path.display().to_string();
    eventually(WAIT, "the load error reported", || async {
        let v: Value = reqwest::get(gw.admin_url("/api/v1/certificates"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["listeners"]["websecure"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains(&cert_name))
    })
    .await;
    assert_eq!(served(https, "file.test", &ca).await, second.der.as_ref());
    let _ = key_path;
}

#[tokio::test]
async fn sluice_policies_attach_to_ingresses_change_are_checked_and_go_away() {
    let fake = FakeKube::start().await;
    let web = TestUpstream::start("web").await;
    fake.apply(ingress_class());
    fake.apply(service("web"));
    fake.apply(pod_slice("web", &web));
    fake.apply(ingress(
        "limited",
        "limited.test",
        "web",
        json!({"sluice.dev/policy": "strict"}),
        json!([]),
    ));
    fake.apply(ingress("keyed", "keyed.test", "web", json!({}), json!([])));
    fake.apply(policy(
        "strict",
        json!({"targetRefs": [], "rate_limit": {"requests": 1, "per": "1h", "burst": 1, "key": ["route"]}}),
    ));
    fake.apply(policy(
        "keys",
        json!({"targetRefs": [{"group": "networking.k8s.io", "kind": "Ingress", "name": "keyed"}],
               "auth": {"methods": [{"key_auth": {}}]}}),
    ));
    let gw = start(
        &fake,
        "consumers: [{name: alice, credentials: {key_auth: {keys: [alice-key]}}}]\n",
    )
    .await;
    let client = http_client();
    let status = |host: &'static str, key: Option<&'static str>| {
        let client = client.clone();
        let url = gw.http_url("/");
        async move {
            let mut req = client.get(url).header("host", host);
            if let Some(k) = key {
                req = req.header("apikey", k);
            }
            req.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
        }
    };
    // Key auth from the policy's targetRef.
    eventually(WAIT, "key auth on keyed.test", || async {
        status("keyed.test", None).await == 401
    })
    .await;
    assert_eq!(status("keyed.test", Some("alice-key")).await, 200);
    assert_eq!(status("keyed.test", Some("wrong")).await, 401);
    // The rate limit from the annotation: one request an hour for the route.
    eventually(WAIT, "the rate limit on limited.test", || async {
        status("limited.test", None).await == 429
    })
    .await;

    // A bad edit is reported on the policy, and the limit stays as it was.
    fake.apply(policy(
        "strict",
        json!({"targetRefs": [], "rate_limit": {"requests": 1, "pre": "1h"}}),
    ));
    eventually(WAIT, "an InvalidPolicy event on the policy", || async {
        fake.events().iter().any(|e| {
            e["reason"] == "InvalidPolicy"
                && e["involvedObject"]["kind"] == "SluicePolicy"
                && e["involvedObject"]["name"] == "strict"
        })
    })
    .await;
    assert_eq!(
        status("limited.test", None).await,
        429,
        "the last good policy stays"
    );

    // Changed: a generous limit.
    fake.apply(policy(
        "strict",
        json!({"targetRefs": [], "rate_limit": {"requests": 1000, "per": "1s", "key": ["route"]}}),
    ));
    eventually(WAIT, "the changed limit", || async {
        status("limited.test", None).await == 200
    })
    .await;
    // The key policy removed: keyed.test is open again.
    fake.delete(&policy("keys", json!({})));
    eventually(WAIT, "the auth policy gone", || async {
        status("keyed.test", None).await == 200
    })
    .await;
}
