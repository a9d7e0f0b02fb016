//! The L4 proxy beside the HTTP one: TCP, UDP, and TLS routed by SNI (passthrough or
//! terminated), on pingora's server, listeners and streams, with the HTTP proxy's
//! discovery plane (upstreams, endpoints from the config, DNS and EndpointSlices,
//! balancers, health, priorities, outlier detection).
//!
//! - [`plan`]: the compiled `l4_routes` and client-certificate settings of each
//!   listener, part of the snapshot.
//! - [`tcp`]: a `tcp` listener's application; [`udp`]: a `udp` listener's service;
//!   [`front`]: the TLS front of `tls` and HTTPS listeners (passthrough, terminate, or
//!   on to HTTP), reading the ClientHello with [`hello`].
//! - [`connect`]: a session's upstream endpoint; [`upstream_tls`]: TLS towards it
//!   (BackendTLSPolicy: CA, SNI, SANs).
//! - [`client_auth`]: client certificates (mTLS) on TLS listeners and the identity they
//!   leave on a connection.
//! - [`session`]: metrics, the access log record, the splice, idle timeout and drain.
//!
//! Listeners are bound at start (like the HTTP ones); routes, upstreams and
//! client-certificate settings follow every config change.

pub mod client_auth;
pub mod connect;
pub mod front;
pub mod hello;
pub mod plan;
pub mod session;
pub mod tcp;
pub mod udp;
pub mod upstream_tls;

use std::sync::Arc;

use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use sluice_config::l4::ListenerProtocol;
use sluice_config::model::ListenerConfig;
use sluice_config::Config;

use crate::control::gateway::Gateway;
use session::{L4Metrics, ListenerCtx};

/// The shared L4 state of listener `l`.
pub fn listener_ctx(gateway: &Arc<Gateway>, l: &ListenerConfig, metrics: &L4Metrics) -> Arc<ListenerCtx> {
    Arc::new(ListenerCtx {
        name: l.name.clone(),
        gateway: gateway.clone(),
        limits: l.l4.resolve(l.protocol),
        metrics: metrics.clone(),
        open: Default::default(),
    })
}

/// The live certificate resolver of TLS listener `l` (its files and the config's inline
/// certificates); an empty one for a `tls` listener that only passes TLS through.
pub fn resolver(
    gateway: &Gateway,
    l: &ListenerConfig,
    config: &Config,
) -> Result<Arc<dyn rustls::server::ResolvesServerCert>, String> {
    match gateway.certs.add_listener(&l.name, config) {
        Ok(r) => Ok(r),
        Err(e) if l.protocol == ListenerProtocol::Tls => {
            tracing::info!(listener = %l.name, "no certificate ({e}): passthrough only until one comes");
            Ok(Arc::new(crate::edge::tls::SniResolver::default()))
        }
        Err(e) => Err(format!("listener {}: {e}", l.name)),
    }
}

/// Adds the service of each `tcp`, `udp` and `tls` listener of `config` to `server`
/// (HTTPS listeners get their TLS front where the HTTP services are built).
pub fn add_services(
    server: &mut Server,
    gateway: &Arc<Gateway>,
    config: &Config,
    metrics: &L4Metrics,
) -> Result<(), String> {
    for l in &config.listeners {
        let addr = l.listen.to_string();
        match l.protocol {
            ListenerProtocol::Http => {}
            ListenerProtocol::Tcp => {
                let app = tcp::TcpProxy::new(listener_ctx(gateway, l, metrics));
                let mut svc = Service::new(format!("tcp listener {}", l.name), app);
                svc.add_tcp(&addr);
                server.add_service(svc);
            }
            ListenerProtocol::Tls => {
                let front = front::TlsFront::new(
                    listener_ctx(gateway, l, metrics),
                    resolver(gateway, l, config)?,
                    front::NoHttp,
                    false,
                    false,
                );
                let mut svc = Service::new(format!("tls listener {}", l.name), front);
                svc.add_tcp(&addr);
                server.add_service(svc);
            }
            ListenerProtocol::Udp => {
                let proxy = udp::UdpProxy::bind(listener_ctx(gateway, l, metrics), l.listen)?;
                server.add_service(background_service(&format!("udp listener {}", l.name), proxy));
            }
        }
    }
    Ok(())
}
