//! Log sinks: where the access log and the gateway's events go (`logging:` in the config,
//! [`sluice_config::logging`]).
//!
//! A stream ([`Sinks`]) fans each record out to its sinks. Every sink has its own bounded
//! queue and its own writer: a thread for `stdout` and `file`, a thread running its own
//! small runtime for `kafka` ([`kafka`]). Submitting is one `Arc` allocation and one
//! `try_send` per sink, never a wait: when a sink's queue is full (it is slow, or Kafka is
//! down) the record is dropped for that sink only and counted in
//! `sluice_log_dropped_total{stream, sink, reason}`. Records are formatted on the
//! writers, never on a worker.
//!
//! Drop reasons (a closed set): `full` (the sink's queue was full), `closed` (its writer
//! is gone), `write_error` (the file or stdout write failed), `rejected` (Kafka refused
//! the batch again and again). Written records are counted in
//! `sluice_log_written_total{stream, sink}`.
//!
//! File sinks reopen their file by name on SIGUSR1 ([`install_reopen_signal`]), so
//! logrotate can rename the file and signal; no line is lost or split across the two.

pub mod kafka;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::{IntCounter, IntCounterVec, Opts};
use sluice_config::logging::{AccessField, KafkaKey, SinkConfig};

/// A record a stream carries: an access-log record or an event.
pub trait LogRecord: Send + Sync + 'static {
    /// Appends the record as one JSON object (no newline). `fields` is the configured
    /// field set (access log); events ignore it.
    fn write_json(&self, fields: &[AccessField], out: &mut Vec<u8>);
    /// The Kafka message key for `key`, if the record has one.
    fn key(&self, key: KafkaKey) -> Option<&str>;
    /// When the record happened (the Kafka message timestamp).
    fn timestamp(&self) -> SystemTime;
}

/// The sink metrics, registered once per gateway.
#[derive(Clone)]
pub struct LogMetrics {
    /// `sluice_log_dropped_total{stream, sink, reason}`.
    pub dropped: IntCounterVec,
    /// `sluice_log_written_total{stream, sink}`.
    pub written: IntCounterVec,
}

impl LogMetrics {
    /// The sink metrics, registered in `metrics`.
    pub fn new(metrics: &crate::observe::metrics::Metrics) -> LogMetrics {
        let dropped = IntCounterVec::new(
            Opts::new(
                "sluice_log_dropped_total",
                "Log records (access log, events) a sink dropped, by reason: full, closed, write_error, rejected.",
            ),
            &["stream", "sink", "reason"],
        );
        let written = IntCounterVec::new(
            Opts::new(
                "sluice_log_written_total",
                "Log records (access log, events) a sink wrote (or Kafka acknowledged).",
            ),
            &["stream", "sink"],
        );
        let (Ok(dropped), Ok(written)) = (dropped, written) else {
            unreachable!("static metric definitions are valid")
        };
        metrics.register(Box::new(dropped.clone()));
        metrics.register(Box::new(written.clone()));
        LogMetrics { dropped, written }
    }
}

/// One sink's counters, resolved when it starts.
#[derive(Clone)]
pub struct SinkCounters {
    /// Dropped because the queue was full.
    pub full: IntCounter,
    /// Dropped because the writer is gone.
    pub closed: IntCounter,
    /// Dropped because a write failed.
    pub write_error: IntCounter,
    /// Dropped because Kafka kept refusing the batch.
    pub rejected: IntCounter,
    /// Written.
    pub written: IntCounter,
}

impl SinkCounters {
    fn new(m: &LogMetrics, stream: &str, sink: &str) -> SinkCounters {
        let d = |reason: &str| m.dropped.with_label_values(&[stream, sink, reason]);
        SinkCounters {
            full: d("full"),
            closed: d("closed"),
            write_error: d("write_error"),
            rejected: d("rejected"),
            written: m.written.with_label_values(&[stream, sink]),
        }
    }
}

struct SinkHandle<R> {
    tx: SyncSender<Arc<R>>,
    counters: SinkCounters,
}

/// A stream's sinks. Dropping it lets every writer drain its queue and end.
pub struct Sinks<R> {
    sinks: Vec<SinkHandle<R>>,
    /// Also counts every drop (the access log's `sluice_access_log_dropped_total`).
    also_dropped: Option<IntCounter>,
}

impl<R: LogRecord> Sinks<R> {
    /// A stream without sinks: submitting does nothing.
    pub fn none() -> Sinks<R> {
        Sinks {
            sinks: Vec::new(),
            also_dropped: None,
        }
    }

    /// Starts a writer for each of `configs` (stream `stream`, `access_log` or `events`).
    /// A sink that cannot start (a file that cannot be opened, an invalid TLS file) is
    /// reported and left out.
    pub fn start(
        stream: &'static str,
        configs: &[SinkConfig],
        fields: &[AccessField],
        metrics: &LogMetrics,
        also_dropped: Option<IntCounter>,
    ) -> Sinks<R> {
        let fields: Arc<[AccessField]> = fields.into();
        let mut sinks = Vec::with_capacity(configs.len());
        for config in configs {
            let counters = SinkCounters::new(metrics, stream, config.name());
            let (tx, rx) = sync_channel(config.buffer().max(1));
            let started = match config {
                SinkConfig::Stdout(_) => spawn_lines(
                    stream,
                    config.name(),
                    Output::Stdout,
                    rx,
                    fields.clone(),
                    counters.clone(),
                ),
                SinkConfig::File(f) => match open_append(&f.path) {
                    Ok(file) => spawn_lines(
                        stream,
                        config.name(),
                        Output::File {
                            path: f.path.clone(),
                            file,
                            generation: REOPEN.load(Ordering::Acquire),
                        },
                        rx,
                        fields.clone(),
                        counters.clone(),
                    ),
                    Err(e) => Err(format!("cannot open {}: {e}", f.path)),
                },
                SinkConfig::Kafka(k) => {
                    kafka::spawn(stream, config.name(), k, rx, fields.clone(), counters.clone())
                }
            };
            match started {
                Ok(()) => sinks.push(SinkHandle { tx, counters }),
                Err(e) => tracing::error!(stream, sink = config.name(), "log sink not started: {e}"),
            }
        }
        Sinks { sinks, also_dropped }
    }

    /// Whether the stream has no sink.
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Hands `record` to every sink without ever blocking: a sink whose queue is full
    /// (or whose writer is gone) drops it and counts the drop.
    #[inline]
    pub fn submit(&self, record: R) {
        match self.sinks.as_slice() {
            [] => {}
            [one] => self.offer(one, Arc::new(record)),
            many => {
                let record = Arc::new(record);
                for s in many {
                    self.offer(s, record.clone());
                }
            }
        }
    }

    /// Hands an already shared record to every sink.
    pub fn submit_shared(&self, record: &Arc<R>) {
        for s in &self.sinks {
            self.offer(s, record.clone());
        }
    }

    #[inline]
    fn offer(&self, s: &SinkHandle<R>, record: Arc<R>) {
        let counter = match s.tx.try_send(record) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => &s.counters.full,
            Err(TrySendError::Disconnected(_)) => &s.counters.closed,
        };
        counter.inc();
        if let Some(c) = &self.also_dropped {
            c.inc();
        }
    }
}

/// Bumped by SIGUSR1: file sinks reopen their file when it changes.
static REOPEN: AtomicU64 = AtomicU64::new(0);

/// Asks every file sink to reopen its file (what SIGUSR1 does).
pub fn reopen_files() {
    REOPEN.fetch_add(1, Ordering::AcqRel);
}

/// Installs the SIGUSR1 handler (file sinks reopen their files) on the background
/// runtime. Installed synchronously, so a SIGUSR1 after this returns never kills the
/// process. Pingora's SIGTERM, SIGQUIT and SIGINT handling (`shutdown.rs`) is untouched:
/// each signal has its own tokio handler.
pub fn install_reopen_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Some(handle) = crate::control::background::handle() else {
        return;
    };
    let _entered = handle.enter();
    match signal(SignalKind::user_defined1()) {
        Ok(mut usr1) => {
            handle.spawn(async move {
                while usr1.recv().await.is_some() {
                    tracing::info!("SIGUSR1: reopening log files");
                    reopen_files();
                }
            });
        }
        Err(e) => tracing::error!("cannot install the SIGUSR1 handler: {e}"),
    }
}

fn open_append(path: &str) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

enum Output {
    Stdout,
    File {
        path: String,
        file: File,
        generation: u64,
    },
    /// Tests: a writer of their own.
    #[cfg(test)]
    Custom(Box<dyn Write + Send>),
}

impl Output {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Output::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(buf)?;
                out.flush()
            }
            Output::File {
                path,
                file,
                generation,
            } => {
                let now = REOPEN.load(Ordering::Acquire);
                if now != *generation {
                    match open_append(path) {
                        Ok(f) => {
                            *file = f;
                            *generation = now;
                        }
                        // Keep writing to the file as it was; retried on the next batch.
                        Err(e) => tracing::warn!(path = %path, "cannot reopen the log file: {e}"),
                    }
                }
                file.write_all(buf)
            }
            #[cfg(test)]
            Output::Custom(w) => {
                w.write_all(buf)?;
                w.flush()
            }
        }
    }
}

/// How often a line writer wakes to take what was queued. It never blocks on the queue:
/// a receiver that waits would have every worker's `try_send` wake it (a system call
/// and a context switch per request, on the workers' own CPU).
const DRAIN_EVERY: Duration = Duration::from_millis(10);

fn spawn_lines<R: LogRecord>(
    stream: &str,
    sink: &str,
    out: Output,
    rx: Receiver<Arc<R>>,
    fields: Arc<[AccessField]>,
    counters: SinkCounters,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name(format!("sluice-log-{stream}-{sink}"))
        .spawn(move || write_lines(&rx, out, &fields, &counters))
        .map(|_| ())
        .map_err(|e| format!("cannot start the writer thread: {e}"))
}

/// The line writer: every [`DRAIN_EVERY`] it takes every queued record, formats them
/// as JSON lines into one buffer and writes it with one call (so a busy gateway makes
/// one write per batch, and a reopen never splits a line); ends when the stream is
/// dropped and the queue is empty.
fn write_lines<R: LogRecord>(
    rx: &Receiver<Arc<R>>,
    mut out: Output,
    fields: &[AccessField],
    counters: &SinkCounters,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        let mut n = 0u64;
        let gone = loop {
            match rx.try_recv() {
                Ok(record) => {
                    record.write_json(fields, &mut buf);
                    buf.push(b'\n');
                    n += 1;
                    if buf.len() >= 256 * 1024 {
                        break false;
                    }
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if n > 0 {
            match out.write_all(&buf) {
                Ok(()) => counters.written.inc_by(n),
                Err(e) => {
                    counters.write_error.inc_by(n);
                    tracing::warn!("log write failed: {e}");
                }
            }
        }
        if gone {
            break;
        }
        if n == 0 || buf.len() < 256 * 1024 {
            std::thread::sleep(DRAIN_EVERY);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    struct Rec(u32);

    impl LogRecord for Rec {
        fn write_json(&self, _: &[AccessField], out: &mut Vec<u8>) {
            out.extend_from_slice(format!("{{\"n\":{}}}", self.0).as_bytes());
        }
        fn key(&self, _: KafkaKey) -> Option<&str> {
            None
        }
        fn timestamp(&self) -> SystemTime {
            SystemTime::UNIX_EPOCH
        }
    }

    /// A writer that blocks in its first write until released, and keeps what it got.
    struct Blocked {
        entered: std::sync::mpsc::Sender<()>,
        release: Arc<Mutex<std::sync::mpsc::Receiver<()>>>,
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

    fn metrics() -> LogMetrics {
        LogMetrics::new(&crate::observe::metrics::Metrics::new())
    }

    #[test]
    fn a_stuck_sink_drops_and_counts_while_another_keeps_writing() {
        let m = metrics();
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let stuck_got = Arc::new(Mutex::new(Vec::new()));
        let free_got = Arc::new(Mutex::new(Vec::new()));
        let stuck = Blocked {
            entered: entered_tx,
            release: Arc::new(Mutex::new(release_rx)),
            got: stuck_got.clone(),
            waited: false,
        };
        let (free_entered, _e) = std::sync::mpsc::channel();
        let (_r, free_release) = std::sync::mpsc::channel::<()>();
        let free = Blocked {
            entered: free_entered,
            release: Arc::new(Mutex::new(free_release)),
            got: free_got.clone(),
            waited: true,
        };
        let mk = |name: &str, out: Box<dyn Write + Send>, cap: usize| {
            let counters = SinkCounters::new(&m, "test", name);
            let (tx, rx) = sync_channel(cap);
            spawn_lines::<Rec>(
                "test",
                name,
                Output::Custom(out),
                rx,
                Arc::from(vec![]),
                counters.clone(),
            )
            .unwrap();
            SinkHandle { tx, counters }
        };
        let total = IntCounter::new("t", "t").unwrap();
        let sinks = Sinks {
            sinks: vec![mk("stuck", Box::new(stuck), 4), mk("free", Box::new(free), 100)],
            also_dropped: Some(total.clone()),
        };
        sinks.submit(Rec(0));
        entered.recv_timeout(Duration::from_secs(10)).unwrap();
        // The stuck writer holds record 0 in its write; 4 more fit in its queue.
        for i in 1..=10 {
            sinks.submit(Rec(i));
        }
        let full = m.dropped.with_label_values(&["test", "stuck", "full"]);
        assert_eq!(full.get(), 6);
        assert_eq!(total.get(), 6);
        assert_eq!(m.dropped.with_label_values(&["test", "free", "full"]).get(), 0);
        // The free sink got all 11 while the other is stuck.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while free_got.lock().unwrap().iter().filter(|b| **b == b'\n').count() < 11 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        release.send(()).unwrap();
        drop(sinks);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = String::from_utf8(stuck_got.lock().unwrap().clone()).unwrap();
            if text.lines().count() == 5 {
                assert_eq!(text, "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n{\"n\":4}\n");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{text}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_file_sink_reopens_its_file_after_a_rename() {
        let m = metrics();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let config = SinkConfig::File(sluice_config::logging::FileSink {
            name: None,
            buffer: 100,
            path: path.display().to_string(),
        });
        let sinks = Sinks::<Rec>::start("test_file", &[config], &[], &m, None);
        sinks.submit(Rec(1));
        let wait_for = |p: &std::path::Path, want: &str| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                if text == want {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "{}: {text:?}", p.display());
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        wait_for(&path, "{\"n\":1}\n");
        let rotated = dir.path().join("a.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        reopen_files();
        sinks.submit(Rec(2));
        wait_for(&path, "{\"n\":2}\n");
        wait_for(&rotated, "{\"n\":1}\n");
    }
}
