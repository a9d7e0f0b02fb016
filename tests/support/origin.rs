//! [`Origin`]: an upstream whose answers a test scripts, path by path: the status,
//! headers and body (given whole, or in chunks with pauses between them), and a delay
//! before it answers. It counts the requests it gets per path, and can be stopped (its
//! port then refuses connections) to play an upstream that is down.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One scripted answer.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// The status. Default (0): 200.
    pub status: u16,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body, sent whole (with its `Content-Length`) unless `chunks` is set.
    pub body: Bytes,
    /// The body as chunks with a pause before each one (no `Content-Length`).
    pub chunks: Vec<(Duration, Bytes)>,
    /// How long to wait before answering.
    pub delay: Duration,
}

impl Reply {
    /// 200 with `body` and these headers.
    pub fn ok(body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Reply {
        Reply {
            status: 200,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
            ..Reply::default()
        }
    }

    /// The same answer with `status`.
    pub fn with_status(mut self, status: u16) -> Reply {
        self.status = status;
        self
    }

    /// The same answer after `delay`.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// What the script sees of a request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The path.
    pub path: String,
    /// The headers.
    pub headers: http::HeaderMap,
    /// Requests for this path so far, this one included.
    pub count: usize,
}

type Script = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A running scripted origin. Dropping it stops it.
pub struct Origin {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    task: Option<JoinHandle<()>>,
}

impl Origin {
    /// Starts an origin on `127.0.0.1:0` answering every request with `script`.
    pub async fn start(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let script: Arc<Script> = Arc::new(script);
        let task = tokio::spawn(serve(listener, script, hits.clone()));
        Origin {
            addr,
            hits,
            task: Some(task),
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Stops answering: the listener closes and connections are refused (open ones
    /// are dropped).
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(listener: TcpListener, script: Arc<Script>, hits: Arc<Mutex<HashMap<String, usize>>>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let script = script.clone();
        let hits = hits.clone();
        conns.spawn(async move {
            let service = service_fn(move |req| handle(script.clone(), hits.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    script: Arc<Script>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    req: Request<Incoming>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let (parts, body) = req.into_parts();
    let _ = body.collect().await;
    let path = parts.uri.path().to_string();
    let count = {
        let mut hits = hits.lock().unwrap();
        let n = hits.entry(path.clone()).or_default();
        *n += 1;
        *n
    };
    let seen = Seen {
        path,
        headers: parts.headers,
        count,
    };
    let reply = script(&seen);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut b = Response::builder().status(if reply.status == 0 { 200 } else { reply.status });
    for (k, v) in &reply.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let body = if reply.chunks.is_empty() {
        Full::new(reply.body).boxed()
    } else {
        let chunks = reply.chunks;
        let stream = futures_util::stream::unfold(chunks.into_iter(), |mut it| async move {
            let (pause, chunk) = it.next()?;
            tokio::time::sleep(pause).await;
            Some((Ok::<_, Infallible>(Frame::data(chunk)), it))
        });
        BodyExt::boxed(StreamBody::new(stream))
    };
    Ok(b.body(body).unwrap())
}
