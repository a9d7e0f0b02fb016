//! The TLS front of a `tls` or HTTPS listener: the listener accepts plain TCP, and this
//! pingora transport application reads the ClientHello without consuming it
//! ([`super::hello`]), then:
//!
//! 1. an `l4_route` in `passthrough` mode for its SNI: the connection is spliced to the
//!    route's upstream as it is, ClientHello included, and TLS stays end to end;
//! 2. otherwise the handshake runs here, with the listener's certificates and the
//!    client-certificate setting for that SNI (see [`super::client_auth`]);
//! 3. then an `l4_route` in `terminate` mode for the SNI sends the plain bytes to its
//!    upstream; on an HTTPS listener anything else goes on to the HTTP application (the
//!    pingora proxy, exactly as when pingora's own TLS listener ran the handshake); on
//!    a `tls` listener it is closed.
//!
//! So passthrough and terminated hosts share one port (ingress-nginx's
//! `ssl-passthrough`), and client-certificate settings can differ per host. The rustls
//! server configuration of each distinct setting is built once per compiled listener
//! plan and kept until the plan changes.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::{Acceptor, TlsSettings};
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Peek, Stream};
use pingora::server::ShutdownWatch;
use rustls::server::ResolvesServerCert;

use super::client_auth::{ClientAuth, IdentityCallback};
use super::hello::{parse, ClientHello, Parse, MAX_HELLO};
use super::plan::{ListenerPlan, Mode};
use super::session::{drained, End, ListenerCtx, Record};
use super::tcp::{client_of, proxy};

/// The HTTP application behind an HTTPS listener's front; [`NoHttp`] on a `tls`
/// listener.
pub struct NoHttp;

#[async_trait]
impl ServerApp for NoHttp {
    async fn process_new(self: &Arc<Self>, _stream: Stream, _shutdown: &ShutdownWatch) -> Option<Stream> {
        None
    }
}

/// The acceptors built for one listener plan: one per client-certificate setting.
struct Acceptors {
    plan: Arc<ListenerPlan>,
    plain: Arc<Acceptor>,
    by_auth: Vec<(Arc<ClientAuth>, Arc<Acceptor>)>,
}

/// The TLS front of one listener.
pub struct TlsFront<A> {
    ctx: Arc<ListenerCtx>,
    resolver: Arc<dyn ResolvesServerCert>,
    alpn: Vec<Vec<u8>>,
    inner: Arc<A>,
    /// Whether `inner` serves HTTPS (an HTTPS listener) or the listener is `tls`.
    http: bool,
    acceptors: ArcSwapOption<Acceptors>,
}

/// The rustls server configuration of a TLS listener: TLS 1.2 and 1.3, certificates
/// from the listener's live resolver, and client certificates when `verifier` is given.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    alpn: &[Vec<u8>],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let builder =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
            .map_err(|e| e.to_string())?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(config))
}

impl<A: ServerApp + Send + Sync + 'static> TlsFront<A> {
    /// The front of listener `ctx` with its certificate `resolver`; `inner` is the HTTP
    /// application of an HTTPS listener (`http`), with `h2` offered by ALPN when
    /// `http2`. Counts as a listener service for the drain when it is not HTTP (the
    /// HTTP application counts itself).
    pub fn new(
        ctx: Arc<ListenerCtx>,
        resolver: Arc<dyn ResolvesServerCert>,
        inner: A,
        http: bool,
        http2: bool,
    ) -> TlsFront<A> {
        if !http {
            crate::edge::shutdown::service_started();
        }
        let alpn = match (http, http2) {
            (true, true) => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            (true, false) => vec![b"http/1.1".to_vec()],
            (false, _) => Vec::new(),
        };
        TlsFront {
            ctx,
            resolver,
            alpn,
            inner: Arc::new(inner),
            http,
            acceptors: ArcSwapOption::empty(),
        }
    }

    fn build(&self, plan: &Arc<ListenerPlan>) -> Result<Acceptors, String> {
        let plain = Acceptor::from_server_config(server_config(self.resolver.clone(), None, &self.alpn)?);
        let mut by_auth = Vec::new();
        for auth in plan.client_auth.all() {
            let config = server_config(self.resolver.clone(), Some(auth.verifier()), &self.alpn)?;
            let mut settings = TlsSettings::with_callbacks(Box::new(IdentityCallback { auth: auth.clone() }))
                .map_err(|e| e.to_string())?;
            settings.set_cert_resolver(self.resolver.clone());
            let mut acceptor = settings.build();
            acceptor.acceptor = pingora::tls::TlsAcceptor::from(config);
            by_auth.push((auth.clone(), Arc::new(acceptor)));
        }
        Ok(Acceptors {
            plan: plan.clone(),
            plain: Arc::new(plain),
            by_auth,
        })
    }

    /// The acceptor for a ClientHello with `sni` under `plan`.
    fn acceptor(&self, plan: &Arc<ListenerPlan>, sni: Option<&str>) -> Option<Arc<Acceptor>> {
        let current = self.acceptors.load_full();
        let set = match current.filter(|a| Arc::ptr_eq(&a.plan, plan)) {
            Some(a) => a,
            None => match self.build(plan) {
                Ok(a) => {
                    let a = Arc::new(a);
                    self.acceptors.store(Some(a.clone()));
                    a
                }
                Err(e) => {
                    tracing::error!(listener = %self.ctx.name, "TLS settings: {e}");
                    return None;
                }
            },
        };
        Some(match plan.client_auth.for_name(sni) {
            Some(auth) => set
                .by_auth
                .iter()
                .find(|(a, _)| Arc::ptr_eq(a, auth))
                .map_or_else(|| set.plain.clone(), |(_, acc)| acc.clone()),
            None => set.plain.clone(),
        })
    }

    /// Counts and logs an L4 session that ended before it had a route; on an HTTPS
    /// listener a failed plain HTTPS handshake is only logged (as pingora did).
    fn refuse(&self, record: Record, end: End) {
        if self.http {
            tracing::debug!(listener = %self.ctx.name, outcome = end.as_str(), "TLS connection closed");
        } else {
            record.finish(&self.ctx, end);
        }
    }
}

/// Reads the ClientHello at the start of `stream`, leaving it in the stream. `Ok(None)`
/// when the stream cannot be peeked.
async fn read_hello(stream: &mut L4Stream) -> Result<Option<ClientHello>, End> {
    let mut buf = vec![0u8; 5];
    loop {
        match stream.try_peek(&mut buf).await {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(_) => return Err(End::Reset),
        }
        match parse(&buf) {
            Parse::Hello(h) => return Ok(Some(h)),
            Parse::Need(n) if n <= MAX_HELLO + 64 => buf.resize(n, 0),
            Parse::Need(_) | Parse::NotTls(_) => return Err(End::NotTls),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for TlsFront<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        // The listener is plain TCP: its streams are pingora's L4 streams, which the
        // TLS handshake takes (and which keep the peeked ClientHello to be read again).
        let mut stream: L4Stream = match stream.into_any().downcast::<L4Stream>() {
            Ok(s) => *s,
            Err(_) => {
                tracing::error!(listener = %self.ctx.name, "the TLS front got a stream that is not TCP");
                return None;
            }
        };
        let mut record = Record::new(client_of(&stream), "TLS");
        let hello_timeout = self.ctx.limits.hello_timeout;
        let hello = match tokio::time::timeout(hello_timeout, read_hello(&mut stream)).await {
            Ok(Ok(h)) => h.unwrap_or_default(),
            Ok(Err(end)) => {
                self.refuse(record, end);
                return None;
            }
            Err(_) => {
                self.refuse(record, End::HelloTimeout);
                return None;
            }
        };
        let sni = hello.server_name.as_deref();
        record.sni = hello.server_name.clone();
        let Some(plan) = self.ctx.gateway.snapshot().l4.listener(&self.ctx.name).cloned() else {
            self.refuse(record, End::NoRoute);
            return None;
        };
        let route = plan.route_for(sni).cloned();
        if let Some(route) = route.as_ref().filter(|r| r.mode == Mode::Passthrough) {
            let _slot = self.ctx.admit()?;
            let end = proxy(&mut stream, route, &self.ctx, shutdown, &mut record).await;
            record.finish(&self.ctx, end);
            return None;
        }
        if route.is_none() && !self.http {
            self.refuse(record, End::NoRoute);
            return None;
        }
        let acceptor = self.acceptor(&plan, sni)?;
        let tls = match tokio::time::timeout(hello_timeout, acceptor.tls_handshake(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(listener = %self.ctx.name, sni = ?sni, "TLS handshake failed: {e}");
                self.refuse(record, End::HandshakeFailed);
                return None;
            }
            Err(_) => {
                self.refuse(record, End::HelloTimeout);
                return None;
            }
        };
        match route {
            Some(route) => {
                let _slot = self.ctx.admit()?;
                record.kind = "TLS-TERMINATE";
                let mut tls = tls;
                let end = proxy(&mut tls, &route, &self.ctx, shutdown, &mut record).await;
                record.finish(&self.ctx, end);
                None
            }
            None => self.inner.process_new(Box::new(tls), shutdown).await,
        }
    }

    async fn cleanup(&self) {
        drained(&self.ctx.open).await;
        self.inner.cleanup().await;
        if !self.http {
            crate::edge::shutdown::service_drained();
        }
    }
}
