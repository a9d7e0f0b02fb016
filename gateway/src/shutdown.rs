//! Graceful shutdown with the semantics operators expect, on top of pingora's.
//!
//! Pingora, on SIGTERM, closes its listeners at once, then sleeps its whole grace period
//! however few requests are left, then cancels what remains. Sluice instead:
//!
//! 1. keeps accepting for `server.grace_period` (so load balancers see the instance leave);
//! 2. then hands pingora a graceful terminate, which closes the listeners;
//! 3. lets in-flight requests finish, at most `server.shutdown_timeout` (pingora's grace
//!    period is set to it), and exits as soon as none is left.
//!
//! SIGQUIT (graceful upgrade) skips step 1: the new process is already accepting.
//! SIGINT stops at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

/// Requests in flight in this process.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Set once the listeners are closing.
static DRAINING: AtomicBool = AtomicBool::new(false);

/// Counts one request as in flight while it lives.
#[derive(Debug)]
pub struct RequestGuard(());

impl RequestGuard {
    /// Starts counting a request.
    pub fn new() -> RequestGuard {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        RequestGuard(())
    }
}

impl Default for RequestGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Requests in flight now.
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Relaxed)
}

/// Whether shutdown has begun (listeners closing).
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// The signal watcher handed to pingora.
pub struct Signals {
    /// How long to keep accepting after SIGTERM.
    pub grace_period: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        let kind = tokio::select! {
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = term.recv() => {
                tracing::info!(grace_period = ?self.grace_period, in_flight = in_flight(), "SIGTERM: still accepting during the grace period");
                tokio::time::sleep(self.grace_period).await;
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
        };
        if !matches!(kind, ShutdownSignal::FastShutdown) {
            DRAINING.store(true, Ordering::Relaxed);
            std::thread::spawn(exit_when_drained);
        }
        kind
    }
}

/// Exits the process once no request has been in flight for a short settle time (a
/// connection accepted just before the listeners closed may not have started its
/// request yet). Pingora's own deadline (`shutdown_timeout`) bounds the wait.
fn exit_when_drained() {
    const SETTLE: Duration = Duration::from_millis(200);
    const TICK: Duration = Duration::from_millis(20);
    let mut idle = Duration::ZERO;
    loop {
        std::thread::sleep(TICK);
        if in_flight() == 0 {
            idle += TICK;
            if idle >= SETTLE {
                tracing::info!("drained: no request in flight, exiting");
                std::process::exit(0);
            }
        } else {
            idle = Duration::ZERO;
        }
    }
}
