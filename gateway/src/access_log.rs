//! The access log: one JSON line per request, written off the request path.
//!
//! A worker builds an [`AccessRecord`] (owned small strings and numbers, no formatting)
//! and hands it to [`AccessLog::submit`], which is one `try_send` on a bounded channel:
//! a worker never blocks on the log. When the channel is full the record is dropped and
//! counted in `sluice_access_log_dropped_total`. One writer thread formats the records
//! as JSON lines into a buffered destination (stdout by default, or a file) and flushes
//! whenever the channel runs empty, so lines appear promptly when traffic is light and
//! are written in large chunks when it is heavy.
//!
//! A line looks like (one line, wrapped here):
//!
//! ```text
//! {"time":"2026-12-01T19:40:03.123Z","request_id":"4f1c…","client":"127.0.0.1",
//!  "method":"GET","host":"api.example.com","path":"/users/7","status":200,
//!  "bytes_in":0,"bytes_out":512,"duration_ms":1.234,"upstream":"10.0.0.7:8080",
//!  "upstream_ms":null,"route":"users","backend":"users-v1","retries":0,
//!  "breaker":"closed","user_agent":"curl/8.5.0","error":null,"consumer":"alice"}
//! ```

use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;
use serde::Serialize;
use sluice_filters::resilience::BreakerState;

/// One finished request, as the access log records it. Built on the worker; formatted
/// on the writer thread.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessRecord {
    /// When the request arrived.
    pub time: SystemTime,
    /// The request id (as sent back in the request id header).
    pub request_id: String,
    /// The client's address (the peer, or from `X-Forwarded-For` behind a trusted proxy).
    pub client: Option<IpAddr>,
    /// The request method.
    pub method: http::Method,
    /// The `Host` (or `:authority`), if any.
    pub host: Option<String>,
    /// The request path, without the query.
    pub path: String,
    /// The status sent to the client; 0 when no response was sent.
    pub status: u16,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// From arrival to the end of the response.
    pub duration: Duration,
    /// The endpoint (`host:port`) of the last try, if one was picked.
    pub upstream: Option<String>,
    /// Time to the upstream's response header, when known.
    pub upstream_time: Option<Duration>,
    /// The matched route's id.
    pub route: Option<String>,
    /// The upstream id that served the request (a backend of the route, or its
    /// breaker's fallback).
    pub backend: Option<String>,
    /// Retries started.
    pub retries: u32,
    /// The route's breaker state when the request ended; `None` without a breaker.
    pub breaker: Option<BreakerState>,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// The gateway's error code (`ErrorKind::code`), when it answered with an error.
    pub error: Option<&'static str>,
    /// The consumer an authentication filter identified (never a credential).
    pub consumer: Option<std::sync::Arc<str>>,
    /// The rate or concurrency limit that answered, and its decision; the line's
    /// `limit` and `limit_decision` are left out when none did.
    pub limit: Option<sluice_filters::LimitNote>,
}

/// The JSON shape of a line.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    request_id: &'a str,
    client: Option<IpAddr>,
    method: &'a str,
    host: Option<&'a str>,
    path: &'a str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    upstream: Option<&'a str>,
    upstream_ms: Option<f64>,
    route: Option<&'a str>,
    backend: Option<&'a str>,
    retries: u32,
    breaker: Option<&'static str>,
    user_agent: Option<&'a str>,
    error: Option<&'static str>,
    consumer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit_decision: Option<&'static str>,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl AccessRecord {
    /// Appends the record as one JSON line (with its `\n`) to `out`.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        let line = Line {
            time: humantime::format_rfc3339_millis(self.time).to_string(),
            request_id: &self.request_id,
            client: self.client,
            method: self.method.as_str(),
            host: self.host.as_deref(),
            path: &self.path,
            status: self.status,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            duration_ms: millis(self.duration),
            upstream: self.upstream.as_deref(),
            upstream_ms: self.upstream_time.map(millis),
            route: self.route.as_deref(),
            backend: self.backend.as_deref(),
            retries: self.retries,
            breaker: self.breaker.map(BreakerState::as_str),
            user_agent: self.user_agent.as_deref(),
            error: self.error,
            consumer: self.consumer.as_deref(),
            limit: self.limit.as_ref().map(|l| &*l.name),
            limit_decision: self.limit.as_ref().map(|l| l.decision),
        };
        // Serializing plain strings and numbers into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, &line);
        out.push(b'\n');
    }
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The process's stdout (what `server.access_log: true` means).
    Stdout,
    /// A file, appended to (created if missing).
    File(PathBuf),
}

/// How the access log is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Where lines go. Default: stdout.
    pub destination: Destination,
    /// Records the channel holds before new ones are dropped. Default: 8192.
    pub capacity: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            destination: Destination::Stdout,
            capacity: 8192,
        }
    }
}

/// The handle workers submit records to. Cheap to share (`&self`); the writer thread
/// ends when the handle is dropped, after writing what is queued.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<AccessRecord>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Starts the writer thread for `config`, counting dropped records in `dropped`
    /// (`sluice_access_log_dropped_total`). A file that cannot be opened is reported and
    /// the log falls back to stdout.
    pub fn start(config: &AccessLogConfig, dropped: IntCounter) -> AccessLog {
        let out: Box<dyn Write + Send> = match &config.destination {
            Destination::Stdout => Box::new(io::stdout()),
            Destination::File(path) => match std::fs::OpenOptions::new().create(true).append(true).open(path)
            {
                Ok(f) => Box::new(f),
                Err(e) => {
                    tracing::error!(path = %path.display(), "cannot open the access log file, using stdout: {e}");
                    Box::new(io::stdout())
                }
            },
        };
        Self::with_writer(config.capacity, out, dropped)
    }

    /// Starts the writer thread writing to `out` (tests give their own writer).
    pub fn with_writer(capacity: usize, out: Box<dyn Write + Send>, dropped: IntCounter) -> AccessLog {
        let (tx, rx) = sync_channel(capacity.max(1));
        let spawned = std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || write_loop(&rx, out));
        if let Err(e) = spawned {
            // Without a writer every record is dropped, and counted.
            tracing::error!("cannot start the access log writer: {e}");
        }
        AccessLog { tx, dropped }
    }

    /// Queues `record` for the writer, without ever blocking: when the queue is full (or
    /// the writer is gone) the record is dropped and counted.
    #[inline]
    pub fn submit(&self, record: AccessRecord) {
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

/// How often the writer wakes to take what the workers queued. The writer never blocks
/// on the channel: a receiver that waits would have every worker's `try_send` wake it (a
/// system call and a context switch per request, on the workers' own CPU).
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// The writer thread: every [`DRAIN_EVERY`] it takes every queued record, formats them
/// into a buffer, and writes and flushes the batch (so a busy gateway makes one write
/// per batch, not one per request); ends when every sender is gone and the queue is
/// empty.
fn write_loop(rx: &Receiver<AccessRecord>, out: Box<dyn Write + Send>) {
    use std::sync::mpsc::TryRecvError;
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(512);
    loop {
        let mut wrote = false;
        let gone = loop {
            match rx.try_recv() {
                Ok(record) => {
                    line.clear();
                    record.write_line(&mut line);
                    if let Err(e) = out.write_all(&line) {
                        tracing::warn!("access log write failed: {e}");
                    }
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if wrote {
            if let Err(e) = out.flush() {
                tracing::warn!("access log flush failed: {e}");
            }
        }
        if gone {
            break;
        }
        std::thread::sleep(DRAIN_EVERY);
    }
    let _ = out.flush();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};

    use super::*;

    fn record(id: &str) -> AccessRecord {
        AccessRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_618_003_123),
            request_id: id.into(),
            client: Some("127.0.0.1".parse().unwrap()),
            method: http::Method::POST,
            host: Some("api.example.com".into()),
            path: "/users/7".into(),
            status: 201,
            bytes_in: 12,
            bytes_out: 345,
            duration: Duration::from_micros(1500),
            upstream: Some("10.0.0.7:8080".into()),
            upstream_time: Some(Duration::from_millis(1)),
            route: Some("users".into()),
            backend: Some("users-v1".into()),
            retries: 1,
            breaker: Some(BreakerState::HalfOpen),
            user_agent: Some("curl/8.5.0".into()),
            error: None,
            consumer: Some("alice".into()),
            limit: None,
        }
    }

    #[test]
    fn a_record_is_one_json_line_with_every_field() {
        let mut out = Vec::new();
        record("abc").write_line(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text:?}"
        );
        assert_eq!(
            text.trim_end(),
            r#"{"time":"2025-12-01T19:40:03.123Z","request_id":"abc","client":"127.0.0.1","method":"POST","host":"api.example.com","path":"/users/7","status":201,"bytes_in":12,"bytes_out":345,"duration_ms":1.5,"upstream":"10.0.0.7:8080","upstream_ms":1.0,"route":"users","backend":"users-v1","retries":1,"breaker":"half_open","user_agent":"curl/8.5.0","error":null,"consumer":"alice"}"#
        );
        let unrouted = AccessRecord {
            route: None,
            breaker: None,
            error: Some("no_route"),
            path: "/a\"b".into(),
            ..record("x")
        };
        let mut out = Vec::new();
        unrouted.write_line(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["route"], serde_json::Value::Null);
        assert_eq!(v["breaker"], serde_json::Value::Null);
        assert_eq!(v["error"], "no_route");
        assert_eq!(v["path"], "/a\"b");
        let limited = AccessRecord {
            limit: Some(sluice_filters::LimitNote {
                name: "hourly".into(),
                decision: "rejected",
            }),
            ..record("y")
        };
        let mut out = Vec::new();
        limited.write_line(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["limit"], "hourly");
        assert_eq!(v["limit_decision"], "rejected");
    }

    /// A writer that blocks in its first `write` until released, and keeps what it got.
    struct Blocked {
        entered: mpsc::Sender<()>,
        release: Arc<Mutex<mpsc::Receiver<()>>>,
        got: Arc<Mutex<Vec<u8>>>,
        waited: bool,
    }

    impl Write for Blocked {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if !self.waited {
                self.waited = true;
                let _ = self.entered.send(());
                let _ = self.release.lock().unwrap().recv();
            }
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_channel_drops_and_counts_and_never_blocks() {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let writer = Blocked {
            entered: entered_tx,
            release: Arc::new(Mutex::new(release_rx)),
            got: got.clone(),
            waited: false,
        };
        let dropped = IntCounter::new("dropped", "test").unwrap();
        // A 1-byte buffer makes the first line reach the writer at once.
        let log = AccessLog::with_writer(4, Box::new(BufWriter::with_capacity(1, writer)), dropped.clone());
        log.submit(record("first"));
        // The writer thread now holds "first" and is stuck in `write`.
        entered.recv_timeout(Duration::from_secs(10)).unwrap();
        for i in 0..10 {
            log.submit(record(&format!("queued-{i}")));
        }
        // 4 fit in the channel, 6 are dropped; submitting did not block.
        assert_eq!(dropped.get(), 6);
        release.send(()).unwrap();
        drop(log);
        // The writer drains what was queued and ends; poll for its output.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
            let ids: Vec<String> = text
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"].to_string())
                .collect();
            if ids.len() == 5 {
                assert_eq!(
                    ids,
                    [
                        "\"first\"",
                        "\"queued-0\"",
                        "\"queued-1\"",
                        "\"queued-2\"",
                        "\"queued-3\""
                    ]
                );
                break;
            }
            assert!(std::time::Instant::now() < deadline, "writer output: {text}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
