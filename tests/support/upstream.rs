//! [`TestUpstream`]: a real upstream server for the gateway to proxy to.
//!
//! It speaks HTTP/1.1 and h2c (prior knowledge) on one port, like a typical backend, and
//! answers:
//! - `/ws` with an `Upgrade: websocket` header: a WebSocket that echoes text and binary
//!   messages;
//! - `/trailers…`, or any request with `content-type: application/grpc`: a gRPC-shaped
//!   response (`content-type: application/grpc`, body `ok`) ending with the trailers
//!   `grpc-status: 0`, `grpc-message: ok` and `x-upstream-trailer: <name>`;
//! - `/status/<code>`: that status with the echo body;
//! - anything else: 200 with the echo body.
//!
//! The echo body is JSON: `{"upstream", "method", "path", "query", "version", "headers",
//! "body"}`, where `headers` maps each lower-case name to its values joined with `", "`.
//! Every response carries `x-upstream: <name>`.
//!
//! The [`Mode`] set with [`TestUpstream::set_mode`] applies to every request that arrives
//! after it is set.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Response body type of the test upstream.
type Body = BoxBody<Bytes, Infallible>;

/// How a [`TestUpstream`] treats requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Answer at once (the default).
    Healthy,
    /// Answer at once with this status (and the usual echo body).
    Status(u16),
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Never answer: the request stays open until the client gives up.
    Hang,
    /// Close the listener and every open connection, so that connections are refused.
    /// Switching to any other mode binds the same port again.
    Refuse,
}

/// One request as the upstream received it (see [`TestUpstream::received`]).
#[derive(Debug, Clone)]
pub struct Received {
    /// The method.
    pub method: String,
    /// The request target as it arrived: `/path?query` in origin-form, the whole URL
    /// in absolute-form.
    pub target: String,
    /// The headers, lower-case names, in arrival order.
    pub headers: Vec<(String, String)>,
}

struct Shared {
    name: String,
    requests: AtomicUsize,
    received: std::sync::Mutex<Vec<Received>>,
    in_flight: AtomicUsize,
    mode: watch::Sender<Mode>,
}

/// A running test upstream. Dropping it stops it.
pub struct TestUpstream {
    shared: Arc<Shared>,
    addr: SocketAddr,
    listening: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl TestUpstream {
    /// Starts an upstream called `name` on `127.0.0.1:0`, in [`Mode::Healthy`].
    pub async fn start(name: &str) -> TestUpstream {
        TestUpstream::start_at(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts an upstream called `name` on `addr` (a loopback address; port 0 picks one),
    /// in [`Mode::Healthy`].
    pub async fn start_at(name: &str, addr: SocketAddr) -> TestUpstream {
        let listener = bind(addr).expect("bind a test upstream");
        let addr = listener.local_addr().expect("local address of a bound listener");
        let (mode, _) = watch::channel(Mode::Healthy);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            requests: AtomicUsize::new(0),
            received: std::sync::Mutex::default(),
            in_flight: AtomicUsize::new(0),
            mode,
        });
        let (listening_tx, listening) = watch::channel(true);
        let task = tokio::spawn(accept_loop(shared.clone(), addr, listener, listening_tx));
        TestUpstream {
            shared,
            addr,
            listening,
            task,
        }
    }

    /// Starts one upstream per name.
    pub async fn start_many(names: &[&str]) -> Vec<TestUpstream> {
        let mut ups = Vec::with_capacity(names.len());
        for name in names {
            ups.push(TestUpstream::start(name).await);
        }
        ups
    }

    /// Its name, as sent in `x-upstream` and the echo body.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The address it listens on (kept across [`Mode::Refuse`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`, to talk to it directly.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests received so far (counted on arrival, whatever the mode).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Sets the request count back to zero and forgets the requests received.
    pub fn reset_requests(&self) {
        self.shared.requests.store(0, Ordering::SeqCst);
        self.shared.received.lock().expect("not poisoned").clear();
    }

    /// Every request received so far (since the last [`TestUpstream::reset_requests`]),
    /// in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("not poisoned").clone()
    }

    /// Requests received and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.shared.mode.borrow().clone()
    }

    /// Switches the mode. Returns once the listener state matches: after switching to
    /// [`Mode::Refuse`] connections are refused, after switching away they are accepted.
    pub async fn set_mode(&self, mode: Mode) {
        let want_listening = mode != Mode::Refuse;
        self.shared.mode.send_replace(mode);
        let mut listening = self.listening.clone();
        tokio::time::timeout(
            Duration::from_secs(10),
            listening.wait_for(|l| *l == want_listening),
        )
        .await
        .expect("test upstream changed its listener within 10 s")
        .expect("test upstream task is running");
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds with `SO_REUSEADDR`, so the port can be bound again right after a close.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(
    shared: Arc<Shared>,
    addr: SocketAddr,
    listener: TcpListener,
    listening: watch::Sender<bool>,
) {
    let mut mode = shared.mode.subscribe();
    let mut listener = Some(listener);
    loop {
        if let Some(l) = listener.take() {
            // Serve until told to refuse; then close the listener and every connection.
            let mut conns = JoinSet::new();
            listening.send_replace(true);
            loop {
                tokio::select! {
                    accepted = l.accept() => {
                        if let Ok((stream, _)) = accepted {
                            conns.spawn(serve_connection(shared.clone(), stream));
                        }
                    }
                    changed = mode.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if *mode.borrow_and_update() == Mode::Refuse {
                            break;
                        }
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            drop(l);
            conns.shutdown().await;
            listening.send_replace(false);
        }
        // Refusing: wait for another mode, then listen on the same port again.
        while *mode.borrow_and_update() == Mode::Refuse {
            if mode.changed().await.is_err() {
                return;
            }
        }
        let mut attempts = 0;
        listener = loop {
            match bind(addr) {
                Ok(l) => break Some(l),
                Err(e) => {
                    attempts += 1;
                    assert!(
                        attempts < 100,
                        "test upstream {} cannot bind {addr} again: {e}",
                        shared.name
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
    }
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| handle(shared.clone(), req));
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
}

/// Counts a request as in flight until dropped.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn new(shared: &Arc<Shared>) -> InFlight {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    shared.received.lock().expect("not poisoned").push(Received {
        method: req.method().to_string(),
        target: req.uri().to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    });
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::new(&shared);
    let mut status = StatusCode::OK;
    let mode = shared.mode.borrow().clone();
    match mode {
        Mode::Healthy | Mode::Refuse => {}
        Mode::Status(code) => {
            status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
        Mode::Delay(d) => tokio::time::sleep(d).await,
        Mode::Hang => std::future::pending::<()>().await,
    }
    let path = req.uri().path().to_string();
    if path == "/ws" && is_websocket_upgrade(req.headers()) {
        return Ok(websocket_echo(&shared.name, req));
    }
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if path.starts_with("/trailers") || grpc {
        return Ok(with_trailers(&shared.name, req).await);
    }
    if let Some(code) = path.strip_prefix("/status/").and_then(|c| c.parse::<u16>().ok()) {
        status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }
    Ok(echo(&shared.name, status, req).await)
}

fn headers_json(headers: &HeaderMap) -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    for name in headers.keys() {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        map.insert(name.as_str().to_string(), values.join(", ").into());
    }
    map
}

async fn echo(name: &str, status: StatusCode, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let doc = serde_json::json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers_json(&parts.headers),
        "body": String::from_utf8_lossy(&body),
    });
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-upstream", name)
        .body(Full::new(Bytes::from(doc.to_string())).boxed())
        .expect("static response parts are valid")
}

async fn with_trailers(name: &str, req: Request<Incoming>) -> Response<Body> {
    // Read the request to its end first, as a gRPC server does.
    let _ = req.into_body().collect().await;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("grpc-message", HeaderValue::from_static("ok"));
    if let Ok(v) = HeaderValue::from_str(name) {
        trailers.insert("x-upstream-trailer", v);
    }
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"ok"))),
        Ok(Frame::trailers(trailers)),
    ];
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("x-upstream", name)
        .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
            frames,
        ))))
        .expect("static response parts are valid")
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && headers.contains_key(http::header::SEC_WEBSOCKET_KEY)
}

fn websocket_echo(name: &str, req: Request<Incoming>) -> Response<Body> {
    let accept = req
        .headers()
        .get(http::header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            let echo = match msg {
                Message::Text(_) | Message::Binary(_) => msg,
                Message::Close(_) => return,
                _ => continue,
            };
            if ws.send(echo).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::SEC_WEBSOCKET_ACCEPT, accept)
        .header("x-upstream", name)
        .body(Full::new(Bytes::new()).boxed())
        .expect("static response parts are valid")
}
