//! [`TlsUpstream`]: an HTTPS upstream (HTTP/1.1 and h2 by ALPN) that records the SNI
//! name and ALPN protocol of every TLS handshake it accepts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

use super::tls::TestCert;

/// What one accepted TLS handshake carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The SNI name the client sent, if any.
    pub sni: Option<String>,
    /// The ALPN protocol agreed, if any.
    pub alpn: Option<String>,
}

/// A running HTTPS upstream; every response is 200 with body `<name> <HTTP version>` and
/// `x-upstream: <name>`. Dropping it stops it.
pub struct TlsUpstream {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    task: JoinHandle<()>,
}

impl TlsUpstream {
    /// Starts an HTTPS upstream called `name` on `127.0.0.1:0` that presents `cert`.
    pub async fn start(name: &str, cert: &TestCert) -> TlsUpstream {
        let key = rustls_pemfile::private_key(&mut cert.key_pem.as_bytes())
            .expect("read the key PEM")
            .expect("a private key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("default protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der.clone()], key)
            .expect("a valid certificate and key");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a TLS upstream");
        let addr = listener.local_addr().expect("local address");
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let seen = handshakes.clone();
        let name = name.to_string();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let conn = tls.get_ref().1;
                    seen.lock().expect("handshakes lock").push(Handshake {
                        sni: conn.server_name().map(str::to_string),
                        alpn: conn
                            .alpn_protocol()
                            .map(|p| String::from_utf8_lossy(p).into_owned()),
                    });
                    let service = service_fn(move |req: Request<Incoming>| {
                        let body = format!("{name} {:?}", req.version());
                        let name = name.clone();
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("x-upstream", name)
                                    .body(Full::new(Bytes::from(body)))
                                    .expect("static response parts are valid"),
                            )
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsUpstream {
            addr,
            handshakes,
            task,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TLS handshakes it completed so far.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().expect("handshakes lock").clone()
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
