//! TCP, TLS and UDP echo servers for the L4 tests, on 127.0.0.1, speaking the protocol
//! of the Gateway API conformance suite's `echo-basic` backends:
//!
//! - TCP (and TLS): the server greets with `WELCOME <pod>\n`; then, line by line,
//!   `PING` → `PONG`, `IS_TLS` → `true`/`false`, `TEST` → one JSON line
//!   `{"namespace", "service", "pod", "tls": {"serverName"}}`, anything else is echoed
//!   back as it came. [`TcpEcho::raw`] is a plain byte echo (no greeting), for load.
//! - UDP: every datagram is answered with `{"request", "namespace", "service", "pod"}`.
//!
//! Each server counts its connections (datagrams for UDP) and the bytes it echoed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_rustls::rustls;

use super::tls::TestCert;

/// The namespace the echo servers report.
pub const NAMESPACE: &str = "gateway-conformance-infra";

/// Counters of one echo server.
#[derive(Default)]
pub struct EchoStats {
    /// Connections accepted (UDP: datagrams received).
    pub accepted: AtomicUsize,
    /// Connections open now.
    pub open: AtomicUsize,
    /// Bytes echoed.
    pub bytes: AtomicU64,
}

/// A TCP (or TLS) echo server.
pub struct TcpEcho {
    addr: SocketAddr,
    pod: String,
    /// Its counters.
    pub stats: Arc<EchoStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
enum Kind {
    Lines {
        service: String,
        tls: Option<Arc<rustls::ServerConfig>>,
    },
    Raw,
}

impl TcpEcho {
    /// An `echo-basic` TCP server for `service`, its pod called `<service>-<n>`.
    pub async fn start(service: &str) -> TcpEcho {
        Self::run(
            service,
            Kind::Lines {
                service: service.into(),
                tls: None,
            },
        )
        .await
    }

    /// The same over TLS with `cert` (which SNI the client sent is in `TEST`'s answer).
    pub async fn start_tls(service: &str, cert: &TestCert) -> TcpEcho {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let certs = rustls_pemfile::certs(&mut cert.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut cert.key_pem.as_bytes())
            .unwrap()
            .unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Self::run(
            service,
            Kind::Lines {
                service: service.into(),
                tls: Some(Arc::new(config)),
            },
        )
        .await
    }

    /// A plain byte echo, no greeting.
    pub async fn raw(name: &str) -> TcpEcho {
        Self::run(name, Kind::Raw).await
    }

    async fn run(service: &str, kind: Kind) -> TcpEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pod = format!("{service}-{}", addr.port());
        let stats = Arc::new(EchoStats::default());
        let (p, st) = (pod.clone(), stats.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let _ = sock.set_nodelay(true);
                st.accepted.fetch_add(1, Ordering::Relaxed);
                st.open.fetch_add(1, Ordering::Relaxed);
                let (p, st, kind) = (p.clone(), st.clone(), kind.clone());
                tokio::spawn(async move {
                    match kind {
                        Kind::Raw => raw_echo(sock, &st).await,
                        Kind::Lines { service, tls: None } => {
                            lines(sock, &p, &service, None, &st).await;
                        }
                        Kind::Lines {
                            service,
                            tls: Some(cfg),
                        } => {
                            if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(sock).await {
                                let sni = s.get_ref().1.server_name().map(str::to_string);
                                lines(s, &p, &service, Some(sni.unwrap_or_default()), &st).await;
                            }
                        }
                    }
                    st.open.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        TcpEcho {
            addr,
            pod,
            stats,
            task,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its pod name (`<service>-<port>`).
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::Relaxed)
    }
}

async fn raw_echo(mut sock: TcpStream, st: &EchoStats) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if sock.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                st.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

async fn lines<S: AsyncRead + AsyncWrite + Unpin>(
    sock: S,
    pod: &str,
    service: &str,
    sni: Option<String>,
    st: &EchoStats,
) {
    let (r, mut w) = tokio::io::split(sock);
    let mut r = BufReader::new(r);
    if w.write_all(format!("WELCOME {pod}\n").as_bytes()).await.is_err() {
        return;
    }
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let answer = match line.trim_end_matches('\n') {
            "PING" => "PONG\n".to_string(),
            "IS_TLS" => format!("{}\n", sni.is_some()),
            "TEST" => format!(
                "{}\n",
                json!({"namespace": NAMESPACE, "service": service, "pod": pod,
                    "tls": {"serverName": sni.clone().unwrap_or_default()}})
            ),
            "QUIT" => return,
            _ => line.clone(),
        };
        st.bytes.fetch_add(answer.len() as u64, Ordering::Relaxed);
        if w.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// What `TEST` answered through a connection.
#[derive(Debug, Clone, PartialEq)]
pub struct TestAnswer {
    /// The backend's pod.
    pub pod: String,
    /// Its service.
    pub service: String,
    /// The SNI the backend's TLS saw (empty for plain TCP).
    pub server_name: String,
}

/// Greets, sends `TEST` and reads the answer, on an open stream.
pub async fn echo_test<S: AsyncRead + AsyncWrite + Unpin>(s: S) -> Result<TestAnswer, String> {
    let (r, mut w) = tokio::io::split(s);
    let mut r = BufReader::new(r);
    let mut line = String::new();
    r.read_line(&mut line).await.map_err(|e| e.to_string())?;
    if !line.starts_with("WELCOME ") {
        return Err(format!("no welcome: {line:?}"));
    }
    w.write_all(b"TEST\n").await.map_err(|e| e.to_string())?;
    line.clear();
    r.read_line(&mut line).await.map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}"))?;
    Ok(TestAnswer {
        pod: v["pod"].as_str().unwrap_or("").into(),
        service: v["service"].as_str().unwrap_or("").into(),
        server_name: v["tls"]["serverName"].as_str().unwrap_or("").into(),
    })
}

/// Connects to `addr` over TCP and runs [`echo_test`], within 5 s.
pub async fn tcp_test(addr: SocketAddr) -> Result<TestAnswer, String> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        echo_test(s).await
    })
    .await
    .map_err(|_| "timed out".to_string())?
}

/// A rustls client trusting `ca_pem`, optionally presenting `client` (cert, key PEM).
pub fn tls_connector(ca_pem: &str, client: Option<(&str, &str)>) -> tokio_rustls::TlsConnector {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match client {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = rustls_pemfile::certs(&mut cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls_pemfile::private_key(&mut key.as_bytes()).unwrap().unwrap();
            b.with_client_auth_cert(certs, key).unwrap()
        }
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Connects to `addr` with TLS for `sni` (trusting `ca_pem`) and runs [`echo_test`].
pub async fn tls_test(addr: SocketAddr, sni: &str, ca_pem: &str) -> Result<TestAnswer, String> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
        let s = tls_connector(ca_pem, None)
            .connect(name, s)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        echo_test(s).await
    })
    .await
    .map_err(|_| "timed out".to_string())?
}

/// A UDP echo server.
pub struct UdpEcho {
    addr: SocketAddr,
    pod: String,
    /// Its counters (`accepted`: datagrams).
    pub stats: Arc<EchoStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UdpEcho {
    /// An echo for `service`, its pod called `<service>-<port>`.
    pub async fn start(service: &str) -> UdpEcho {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let pod = format!("{service}-{}", addr.port());
        let stats = Arc::new(EchoStats::default());
        let (p, st, svc) = (pod.clone(), stats.clone(), service.to_string());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                st.accepted.fetch_add(1, Ordering::Relaxed);
                let answer = json!({"request": String::from_utf8_lossy(&buf[..n]), "namespace": NAMESPACE,
                    "service": svc, "pod": p})
                .to_string();
                st.bytes.fetch_add(answer.len() as u64, Ordering::Relaxed);
                let _ = sock.send_to(answer.as_bytes(), from).await;
            }
        });
        UdpEcho {
            addr,
            pod,
            stats,
            task,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its pod name.
    pub fn pod(&self) -> &str {
        &self.pod
    }
}

/// Sends `payload` to `addr` from `sock` and waits (up to `wait`) for the answer's JSON.
pub async fn udp_ask(sock: &UdpSocket, addr: SocketAddr, payload: &str, wait: Duration) -> Option<Value> {
    sock.send_to(payload.as_bytes(), addr).await.ok()?;
    let mut buf = vec![0u8; 65_535];
    let (n, _) = tokio::time::timeout(wait, sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    serde_json::from_slice(&buf[..n]).ok()
}
