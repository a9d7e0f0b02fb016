//! [`JwksServer`]: a JWKS endpoint on 127.0.0.1 whose key set a test changes while the
//! gateway runs, and which counts the documents it served.
//!
//! Keys come from the PEM fixtures in `tests/fixtures/jwt/` ([`TestKey`]), which also
//! sign the tokens the tests send.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The path of a JWT fixture file.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/jwt")
        .join(name)
}

/// A signing key from the fixtures, with the algorithm it signs with.
#[derive(Clone)]
pub struct TestKey {
    /// The algorithm.
    pub alg: Algorithm,
    /// The fixture's stem, e.g. `rsa` for `rsa-private.pem` / `rsa-public.pem`.
    pub stem: &'static str,
    key: EncodingKey,
}

impl TestKey {
    /// The fixture key `stem` signing with `alg`.
    pub fn new(stem: &'static str, alg: Algorithm) -> TestKey {
        let private =
            std::fs::read(fixture(&format!("{stem}-private.pem"))).expect("read a private key fixture");
        let key = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => EncodingKey::from_rsa_pem(&private),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&private),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&private),
            other => panic!("{other:?} is not a public-key algorithm"),
        }
        .expect("parse a private key fixture");
        TestKey { alg, stem, key }
    }

    /// The public key's PEM file.
    pub fn public_pem_path(&self) -> PathBuf {
        fixture(&format!("{}-public.pem", self.stem))
    }

    /// The public key's PEM text.
    pub fn public_pem(&self) -> String {
        std::fs::read_to_string(self.public_pem_path()).expect("read a public key fixture")
    }

    /// A token with `claims`, signed by this key, with `kid` in its header if given.
    pub fn sign(&self, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = kid.map(String::from);
        jsonwebtoken::encode(&h, claims, &self.key).expect("sign a token")
    }

    /// The public key as a JWK with `kid` and `alg`.
    pub fn jwk(&self, kid: &str) -> serde_json::Value {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).expect("a JWK from the key");
        jwk.common.key_id = Some(kid.to_string());
        serde_json::to_value(jwk).expect("a JWK as JSON")
    }
}

/// A JWKS endpoint serving whatever key set the test last set, on every path.
pub struct JwksServer {
    addr: std::net::SocketAddr,
    doc: watch::Sender<String>,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl JwksServer {
    /// Starts serving `{"keys": keys}`.
    pub async fn start(keys: Vec<serde_json::Value>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the JWKS server");
        let addr = listener.local_addr().expect("JWKS server address");
        let (doc, rx) = watch::channel(serde_json::json!({ "keys": keys }).to_string());
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let body = rx.borrow().clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    // One request per connection; the head fits in one read for a GET.
                    let mut buf = vec![0u8; 8192];
                    let mut n = 0;
                    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < buf.len() {
                        match stream.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(m) => n += m,
                        }
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/jwk-set+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(resp.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        JwksServer {
            addr,
            doc,
            hits,
            task,
        }
    }

    /// The document's URL.
    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    /// Serves `{"keys": keys}` from now on.
    pub fn set_keys(&self, keys: Vec<serde_json::Value>) {
        self.doc
            .send_replace(serde_json::json!({ "keys": keys }).to_string());
    }

    /// Documents served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
