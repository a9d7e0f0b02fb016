//! The UDP proxy of a `udp` listener. Pingora 0.9.1 has no UDP listener, so this is a
//! pingora background service (started and stopped with the server, on its runtime)
//! around a socket bound before the server starts.
//!
//! A session per client address: the first datagram from an address picks the route's
//! upstream and an endpoint (the same discovery plane, balancer and health as TCP),
//! and opens a connected socket to it; datagrams go both ways through it until the
//! session has seen nothing either way for the listener's `l4.idle_timeout` (60 s by
//! default). The listener's `l4.max_connections` caps the sessions: datagrams of a new
//! address past the cap are dropped and counted. On shutdown no new session starts and
//! each open one ends once idle for [`crate::edge::shutdown::DRAIN_IDLE`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::connect::{record_try, InFlight};
use super::plan::L4Route;
use super::session::{drained, hash_key, idle_or_drained, Activity, End, ListenerCtx, Record, Slot};
use crate::upstream::Try;

/// The largest datagram relayed.
const MAX_DATAGRAM: usize = 65_535;

/// The proxy of one `udp` listener.
pub struct UdpProxy {
    ctx: Arc<ListenerCtx>,
    socket: parking_lot::Mutex<Option<std::net::UdpSocket>>,
}

impl UdpProxy {
    /// Binds `listen` now (so a taken port fails the start) and counts as a listener
    /// service for the drain.
    pub fn bind(ctx: Arc<ListenerCtx>, listen: SocketAddr) -> Result<UdpProxy, String> {
        let socket = std::net::UdpSocket::bind(listen).map_err(|e| format!("udp {listen}: {e}"))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("udp {listen}: {e}"))?;
        crate::edge::shutdown::service_started();
        Ok(UdpProxy {
            ctx,
            socket: parking_lot::Mutex::new(Some(socket)),
        })
    }
}

/// One client's session.
struct Session {
    upstream: Arc<UdpSocket>,
    activity: Arc<Activity>,
    from_client: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

#[async_trait]
impl BackgroundService for UdpProxy {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(std_socket) = self.socket.lock().take() else {
            return;
        };
        let socket = match UdpSocket::from_std(std_socket) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!(listener = %self.ctx.name, "udp socket: {e}");
                crate::edge::shutdown::service_drained();
                return;
            }
        };
        let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
        let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<SocketAddr>();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut stop = shutdown.clone();
        loop {
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                r = socket.recv_from(&mut buf) => {
                    let (n, client) = match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::debug!(listener = %self.ctx.name, "udp recv: {e}");
                            continue;
                        }
                    };
                    let alive = sessions.get(&client).is_some_and(|s| !s.done.load(Ordering::Relaxed));
                    if !alive {
                        sessions.remove(&client);
                        match self.open(client, &socket, &shutdown, &ended_tx).await {
                            Some(s) => {
                                sessions.insert(client, s);
                            }
                            None => continue,
                        }
                    }
                    if let Some(s) = sessions.get(&client) {
                        s.activity.touch();
                        s.from_client.fetch_add(n as u64, Ordering::Relaxed);
                        if let Err(e) = s.upstream.send(&buf[..n]).await {
                            tracing::debug!(listener = %self.ctx.name, "udp send upstream: {e}");
                        }
                    }
                }
                Some(addr) = ended_rx.recv() => {
                    if sessions.get(&addr).is_some_and(|s| s.done.load(Ordering::Relaxed)) {
                        sessions.remove(&addr);
                    }
                }
                r = stop.changed() => {
                    if r.is_err() {
                        break;
                    }
                }
            }
        }
        // Draining: the open sessions end themselves once idle; client datagrams to
        // them are still relayed meanwhile.
        tracing::info!(listener = %self.ctx.name, sessions = sessions.len(), "udp listener draining");
        let relay = async {
            loop {
                let Ok((n, client)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some(s) = sessions.get(&client).filter(|s| !s.done.load(Ordering::Relaxed)) {
                    s.activity.touch();
                    s.from_client.fetch_add(n as u64, Ordering::Relaxed);
                    let _ = s.upstream.send(&buf[..n]).await;
                }
            }
        };
        tokio::select! {
            () = relay => {}
            () = drained(&self.ctx.open) => {}
        }
        crate::edge::shutdown::service_drained();
    }
}

impl UdpProxy {
    /// Opens a session for `client`: picks the route's upstream and endpoint, connects a
    /// socket to it, and starts relaying its answers. `None` when there is no route,
    /// endpoint or room (counted).
    async fn open(
        &self,
        client: SocketAddr,
        listener: &Arc<UdpSocket>,
        shutdown: &ShutdownWatch,
        ended: &mpsc::UnboundedSender<SocketAddr>,
    ) -> Option<Session> {
        let slot = self.ctx.admit()?;
        let mut record = Record::new(Some(client), "UDP");
        let route = {
            let snap = self.ctx.gateway.snapshot();
            snap.l4.listener(&self.ctx.name).and_then(|p| p.default.clone())
        };
        let Some(route) = route else {
            record.finish(&self.ctx, End::NoRoute);
            return None;
        };
        record.route = Some(route.id.clone());
        let (upstream, inflight) = match connect(&route, &mut record).await {
            Ok(x) => x,
            Err(end) => {
                record.finish(&self.ctx, end);
                return None;
            }
        };
        let upstream = Arc::new(upstream);
        let session = Session {
            upstream: upstream.clone(),
            activity: Arc::new(Activity::new()),
            from_client: Arc::new(AtomicU64::new(0)),
            done: Arc::new(AtomicBool::new(false)),
        };
        let task = Relay {
            ctx: self.ctx.clone(),
            listener: listener.clone(),
            upstream,
            client,
            activity: session.activity.clone(),
            from_client: session.from_client.clone(),
            done: session.done.clone(),
            shutdown: shutdown.clone(),
            ended: ended.clone(),
            record,
            _slot: slot,
            _inflight: inflight,
        };
        tokio::spawn(task.run());
        Some(session)
    }
}

/// Connects a UDP socket to an endpoint of the route's upstream.
async fn connect(route: &L4Route, record: &mut Record) -> Result<(UdpSocket, InFlight), End> {
    let b = route.pick().ok_or(End::NoEndpoint)?;
    let up = &route.backends[b];
    record.backend = Some(up.id.clone());
    let set = up.endpoints.load_full();
    let index = set
        .pick_for_try(&[], hash_key(record.client), std::time::Instant::now())
        .ok_or(End::NoEndpoint)?;
    let t = Try { set, index };
    let ep = t.endpoint();
    record.endpoint = Some(ep.addr);
    let local: SocketAddr = if ep.addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    };
    let started = std::time::Instant::now();
    let result = async {
        let s = UdpSocket::bind(local).await?;
        s.connect(ep.addr).await?;
        Ok::<_, std::io::Error>(s)
    }
    .await;
    match result {
        Ok(s) => {
            record.connect_time = Some(started.elapsed());
            let inflight = InFlight::new(ep.state.clone());
            Ok((s, inflight))
        }
        Err(e) => {
            tracing::debug!(route = %route.id, endpoint = %ep.addr, "udp connect: {e}");
            record_try(up, &t, sluice_core::resilience::UpstreamOutcome::ConnectFailure);
            Err(End::ConnectFailed)
        }
    }
}

/// The task relaying one session's answers back to its client, until it idles out.
struct Relay {
    ctx: Arc<ListenerCtx>,
    listener: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    activity: Arc<Activity>,
    from_client: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    shutdown: ShutdownWatch,
    ended: mpsc::UnboundedSender<SocketAddr>,
    record: Record,
    _slot: Slot,
    _inflight: InFlight,
}

impl Relay {
    async fn run(mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut to_client = 0u64;
        let idle = self.ctx.limits.idle_timeout;
        let end = loop {
            tokio::select! {
                r = self.upstream.recv(&mut buf) => match r {
                    Ok(n) => {
                        self.activity.touch();
                        to_client += n as u64;
                        if let Err(e) = self.listener.send_to(&buf[..n], self.client).await {
                            tracing::debug!(listener = %self.ctx.name, "udp send to client: {e}");
                        }
                    }
                    // An ICMP error (port unreachable) on the connected socket.
                    Err(_) => break End::Reset,
                },
                end = idle_or_drained(&self.activity, idle, &self.shutdown) => break end,
            }
        };
        self.done.store(true, Ordering::Relaxed);
        let _ = self.ended.send(self.client);
        self.record.bytes_in = self.from_client.load(Ordering::Relaxed);
        self.record.bytes_out = to_client;
        let end = if end == End::IdleTimeout { End::Closed } else { end };
        self.record.finish(&self.ctx, end);
    }
}
