//! The process log's writer: lines go through a bounded queue to one writer thread, so
//! a log event on the request path (a breaker changing state, an endpoint ejected)
//! never takes stderr's lock or waits on a slow terminal or pipe. When the queue is full
//! the line is dropped rather than the worker blocked.

use std::sync::Mutex;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

/// Keeps the writer thread alive; dropping it writes what is queued and stops it.
static GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// A non-blocking writer to stderr, for the tracing subscriber. Call once, at start.
pub fn writer() -> NonBlocking {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("sluice-log")
        .finish(std::io::stderr());
    if let Ok(mut g) = GUARD.lock() {
        *g = Some(guard);
    }
    writer
}

/// Writes every queued line before the process exits (not on the request path).
pub fn flush() {
    let guard = GUARD.lock().ok().and_then(|mut g| g.take());
    drop(guard);
}
