//! The TCP proxy of a `tcp` listener: a pingora transport application (`ServerApp`)
//! that takes each accepted connection to the listener's route: an endpoint is picked
//! and connected ([`super::connect`]), then bytes are copied both ways until both sides
//! close, the connection idles out, or the drain closes it ([`super::session`]).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use super::plan::L4Route;
use super::session::{drained, hash_key, splice, End, ListenerCtx, Record};

/// The application of one `tcp` listener.
pub struct TcpProxy {
    ctx: Arc<ListenerCtx>,
}

impl TcpProxy {
    /// The proxy of the listener `ctx` describes; counts as a listener service for the
    /// drain ([`crate::edge::shutdown::service_started`]).
    pub fn new(ctx: Arc<ListenerCtx>) -> TcpProxy {
        crate::edge::shutdown::service_started();
        TcpProxy { ctx }
    }
}

/// The client address of an accepted stream.
pub fn client_of<S: pingora::protocols::IO + ?Sized>(stream: &S) -> Option<std::net::SocketAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr().and_then(|a| a.as_inet()).copied()
}

/// Proxies one client stream through `route` (connect, then splice). The caller
/// counts the session.
pub async fn proxy<C>(
    client: &mut C,
    route: &L4Route,
    ctx: &ListenerCtx,
    shutdown: &ShutdownWatch,
    record: &mut Record,
) -> End
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    record.route = Some(route.id.clone());
    let mut up = match super::connect::connect(route, hash_key(record.client), record).await {
        Ok(up) => up,
        Err(end) => return end,
    };
    let end = splice(client, &mut up.stream, ctx.limits.idle_timeout, shutdown, record).await;
    drop(up.inflight);
    end
}

#[async_trait]
impl ServerApp for TcpProxy {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let Some(_slot) = self.ctx.admit() else {
            return None; // dropping the stream closes it
        };
        let mut record = Record::new(client_of(&*stream), "TCP");
        let route = {
            let snap = self.ctx.gateway.snapshot();
            snap.l4.listener(&self.ctx.name).and_then(|p| p.default.clone())
        };
        let end = match route {
            Some(route) => proxy(&mut stream, &route, &self.ctx, shutdown, &mut record).await,
            None => End::NoRoute,
        };
        record.finish(&self.ctx, end);
        None
    }

    async fn cleanup(&self) {
        tracing::info!(listener = %self.ctx.name, open = self.ctx.open.load(std::sync::atomic::Ordering::Relaxed), "l4 listener closed; draining");
        drained(&self.ctx.open).await;
        crate::edge::shutdown::service_drained();
    }
}
