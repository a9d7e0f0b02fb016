//! Graceful shutdown and upgrade with the semantics operators expect, on top of pingora's.
//!
//! What pingora 0.9.1 does on its own: on SIGTERM it closes the listeners at once; on
//! SIGQUIT it sends the listening sockets to the new process, keeps accepting for 5 s,
//! then closes them. Once a listener service has stopped accepting, its cleanup hook
//! (`HttpProxy::http_cleanup`) wakes every HTTP/1.1 connection parked between two
//! requests and drops it, at once. A client that had just sent its next request on such a
//! connection sees it closed with the request unanswered: one lost request per keep-alive
//! connection. Pingora then sleeps its whole grace period however few requests are left.
//!
//! Sluice instead:
//!
//! 1. on SIGTERM keeps accepting for `server.grace_period` (so load balancers see the
//!    instance leave); on SIGQUIT pingora hands the sockets over and keeps accepting its
//!    5 s, while the new process accepts too;
//! 2. then lets pingora close the listeners. From then on every HTTP/1.1 response says
//!    `Connection: close` (pingora's own rule once shutdown is flagged), and every h2
//!    connection gets a GOAWAY;
//! 3. holds back pingora's cut of idle keep-alive connections ([`Draining`]) until no
//!    request has been in flight for [`DRAIN_IDLE`]: a connection whose client sends one
//!    more request gets it answered (with `Connection: close`), and only connections that
//!    stay idle are closed;
//! 4. exits as soon as that is done, within `server.shutdown_timeout` (pingora's grace
//!    period is set to it, and it stops the process at that deadline anyway).
//!
//! SIGINT stops at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use tokio::signal::unix::{signal, SignalKind};

/// How long no request may be in flight, once the listeners are closed, before the
/// connections still open (idle keep-alive ones) are closed and the process exits.
pub const DRAIN_IDLE: Duration = Duration::from_millis(500);

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

/// Set once the signal handlers are installed.
static SIGNALS_INSTALLED: AtomicBool = AtomicBool::new(false);

/// Waits (at most `limit`) until the signal handlers are installed: until then a SIGTERM
/// would kill the process the default way, without a drain. The admin listener (and so
/// `/readyz`) opens only after this.
pub async fn signals_installed(limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !SIGNALS_INSTALLED.load(Ordering::Acquire) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Whether shutdown has begun (listeners closing).
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// Once shutdown has begun, makes this response the connection's last: HTTP/1.1 answers
/// with `Connection: close` (h2 connections get pingora's GOAWAY instead). Called from the
/// proxy's response filter, so that a response already in flight when the drain starts
/// does not promise a keep-alive that the drain will cut.
pub fn close_if_draining(session: &mut pingora::proxy::Session) {
    if draining() {
        session.set_keepalive(None);
    }
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
        SIGNALS_INSTALLED.store(true, Ordering::Release);
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
        }
        kind
    }
}

/// Listener services that have not finished draining yet.
static SERVICES: AtomicUsize = AtomicUsize::new(0);

/// Polls until no request has been in flight for [`DRAIN_IDLE`].
async fn until_idle() {
    const TICK: Duration = Duration::from_millis(20);
    let mut idle = Duration::ZERO;
    while idle < DRAIN_IDLE {
        tokio::time::sleep(TICK).await;
        if in_flight() == 0 {
            idle += TICK;
        } else {
            idle = Duration::ZERO;
        }
    }
}

/// A pingora HTTP application (the proxy) whose shutdown cleanup waits for the drain.
///
/// Pingora calls [`HttpServerApp::http_cleanup`] once the service's listeners stopped
/// accepting; the proxy's own cleanup closes every keep-alive connection waiting for its
/// next request. This wrapper first waits until no request has been in flight for
/// [`DRAIN_IDLE`], so that those connections' next requests are still answered (with
/// `Connection: close`, as pingora does once shutdown is flagged). When the last listener
/// service has drained, the process exits.
pub struct Draining<A> {
    inner: Arc<A>,
}

impl<A> Draining<A> {
    /// Wraps the application of one listener service.
    pub fn new(inner: A) -> Draining<A> {
        SERVICES.fetch_add(1, Ordering::Relaxed);
        Draining {
            inner: Arc::new(inner),
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for Draining<A> {
    // Not an `async fn`: the inner app's request future, returned as it is (no
    // allocation or copy of a future of this wrapper's per request).
    fn process_new_http<'life0, 'life1, 'async_trait>(
        self: &'life0 Arc<Self>,
        session: ServerSession,
        shutdown: &'life1 ShutdownWatch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<ReusedHttpStream>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.process_new_http(session, shutdown)
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        tracing::info!(in_flight = in_flight(), "listener closed; draining");
        until_idle().await;
        self.inner.http_cleanup().await;
        service_drained();
    }
}

/// Counts a listener service that drains on its own (the L4 services, see
/// [`crate::l4`]): the process exits once every counted service has drained.
pub fn service_started() {
    SERVICES.fetch_add(1, Ordering::Relaxed);
}

/// One listener service has drained; when it was the last, the process exits.
pub fn service_drained() {
    if SERVICES.fetch_sub(1, Ordering::AcqRel) == 1 {
        tracing::info!("drained: no request or connection in flight, exiting");
        // From a plain thread: `exit` on a runtime thread runs that thread's
        // thread-local destructors (tokio's context among them) in the middle of a
        // poll, which can hang. The short wait lets the connections just woken by the
        // cleanup close themselves first.
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            crate::observe::logging::flush();
            std::process::exit(0);
        });
    }
}
