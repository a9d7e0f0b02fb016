//! Clients for talking to the gateway: reqwest over HTTP/1.1, h2c and TLS; a raw TLS
//! handshake that reports the certificate and ALPN the server chose; and a hyper h2c
//! client that exposes response trailers.
//!
//! All reqwest clients ignore proxy environment variables, do not follow redirects and
//! give up on a request after 15 s.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

use super::tls::TestCa;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

fn base() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
}

/// An HTTP/1.1-only client.
pub fn http_client() -> reqwest::Client {
    base().http1_only().build().expect("build the HTTP/1.1 client")
}

/// An HTTP/1.1-only client that opens a new connection for every request, so that one
/// request can never fail because the server closed a kept-alive connection left over
/// from an earlier one.
pub fn http_client_unpooled() -> reqwest::Client {
    base()
        .http1_only()
        .pool_max_idle_per_host(0)
        .build()
        .expect("build the HTTP/1.1 client")
}

/// An HTTP/2 client that speaks h2c with prior knowledge (for plain listeners).
pub fn h2c_client() -> reqwest::Client {
    base()
        .http2_prior_knowledge()
        .build()
        .expect("build the h2c client")
}

/// A TLS client that trusts `ca` and resolves each `(name, addr)` pair to `addr`, so that
/// `https://name:port/` sends SNI `name` to the gateway. It offers h2 and HTTP/1.1 by
/// ALPN.
pub fn tls_client(ca: &TestCa, resolve: &[(&str, SocketAddr)]) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA certificate is valid PEM");
    let mut builder = base()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root);
    for (name, addr) in resolve {
        builder = builder.resolve(name, *addr);
    }
    builder.build().expect("build the TLS client")
}

/// What a TLS server chose in a handshake.
#[derive(Debug)]
pub struct Handshake {
    /// The leaf certificate the server presented.
    pub leaf: CertificateDer<'static>,
    /// The ALPN protocol it selected, if any.
    pub alpn: Option<Vec<u8>>,
}

/// Records the leaf certificate and accepts it without checking its chain or name, so
/// that a test can see which certificate was served even when it is the wrong one.
/// Handshake signatures are still verified.
#[derive(Debug)]
struct RecordingVerifier {
    signatures: Arc<WebPkiServerVerifier>,
    seen: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().expect("verifier lock") = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

/// Does a TLS handshake with `addr`, sending SNI `sni` and offering ALPN `h2` and
/// `http/1.1`; returns the certificate the server presented and the protocol it chose.
/// `ca` is only used to build the signature verifier.
pub async fn tls_handshake(addr: SocketAddr, sni: &str, ca: &TestCa) -> Handshake {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).expect("CA certificate is valid");
    let signatures = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("build the signature verifier");
    let verifier = Arc::new(RecordingVerifier {
        signatures,
        seen: Mutex::new(None),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(sni.to_string()).expect("valid SNI name");
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the TLS listener");
    let tls = tokio::time::timeout(REQUEST_TIMEOUT, connector.connect(name, tcp))
        .await
        .expect("TLS handshake finished in time")
        .expect("TLS handshake succeeded");
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let leaf = verifier
        .seen
        .lock()
        .expect("verifier lock")
        .take()
        .expect("the server presented a certificate");
    Handshake { leaf, alpn }
}

/// A response read to its end over h2, with its trailers.
#[derive(Debug)]
pub struct H2Response {
    /// Status, version and headers.
    pub head: http::response::Parts,
    /// The whole body.
    pub body: Bytes,
    /// The trailers, if the response had any.
    pub trailers: Option<HeaderMap>,
}

/// Sends `req` (its URI must be absolute) over a new h2c prior-knowledge connection to
/// `addr` and reads the response, trailers included.
pub async fn h2c_request(addr: SocketAddr, req: Request<Full<Bytes>>) -> H2Response {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.expect("connect for h2c");
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2c handshake");
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.expect("send the h2 request");
        let (head, body) = resp.into_parts();
        let collected = body.collect().await.expect("read the h2 response body");
        let trailers = collected.trailers().cloned();
        H2Response {
            head,
            body: collected.to_bytes(),
            trailers,
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .expect("h2c exchange finished in time")
}

/// One HTTP/1.1 connection driven by hand, to see exactly what happens on the wire (for
/// example whether a connection the server called `keep-alive` really is reusable).
pub struct RawHttp1 {
    stream: TcpStream,
    buffer: Vec<u8>,
}

/// A response read by [`RawHttp1`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bodies only).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl RawHttp1 {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> RawHttp1 {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawHttp1 {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Connects to `addr`; the error when the connection is refused or fails.
    pub async fn try_connect(addr: SocketAddr) -> std::io::Result<RawHttp1> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let _ = stream.set_nodelay(true);
        Ok(RawHttp1 {
            stream,
            buffer: Vec::new(),
        })
    }

    /// Waits up to `timeout` for the server to close the connection without sending
    /// anything; `true` if it did. Bytes from the server count as not closed.
    pub async fn closed_within(&mut self, timeout: std::time::Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 1024];
        matches!(
            tokio::time::timeout(timeout, self.stream.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        ) && self.buffer.is_empty()
    }

    /// Sends `GET <path>` (with `Host: test`) and reads the response; `None` when the
    /// server closed the connection instead of answering.
    pub async fn get(&mut self, path: &str) -> Option<RawResponse> {
        use tokio::io::AsyncWriteExt;
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        if self.stream.write_all(request.as_bytes()).await.is_err() {
            return None;
        }
        tokio::time::timeout(REQUEST_TIMEOUT, self.read_response())
            .await
            .expect("a response or a close in time")
    }

    async fn read_response(&mut self) -> Option<RawResponse> {
        use tokio::io::AsyncReadExt;
        let head_end = loop {
            if let Some(i) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        self.buffer.drain(..head_end + 4);
        while self.buffer.len() < length {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body = self.buffer.drain(..length).collect();
        Some(RawResponse {
            status,
            headers,
            body,
        })
    }
}
