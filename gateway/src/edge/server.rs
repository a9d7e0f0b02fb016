//! Process wiring: the pingora server, one proxy service per listener, the admin thread,
//! and SIGHUP reloads.

use std::sync::Arc;

use pingora::apps::HttpServerOptions;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::listening::Service;
use sluice_config::Config;

use crate::control::gateway::Gateway;
use crate::control::snapshot::Provenance;
use crate::control::sources::Sources;
use crate::edge::proxy::SluiceProxy;

fn secs_ceil(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Runs the gateway until it is told to stop: serves `config` (the file alone, see
/// [`crate::control::sources::initial`]) and follows `sources` from then on. With etcd the gateway
/// is not ready until etcd (or its cache) has answered. Rollouts keep their state in
/// `rollout_store` (see [`crate::rollout::store_for`]).
pub fn run(
    config: Config,
    sources: Sources,
    base: serde_json::Value,
    base_hash: String,
    upgrade: bool,
    admin_insecure: bool,
    rollout_store: Arc<dyn crate::rollout::RolloutStore>,
) -> Result<(), String> {
    let auth = crate::admin::AdminAuth::resolve(&config.admin, std::env::var(crate::admin::TOKEN_ENV).ok())?;
    auth.check_listen(config.admin.listen, admin_insecure)?;
    let provenance = Provenance {
        source: sources.describe(),
        revision: None,
    };
    let ready = sources.etcd.is_none();
    let gateway =
        Gateway::new(config.clone(), provenance, ready).map_err(|e| format!("invalid config:\n{e}"))?;

    let conf = ServerConf {
        threads: config
            .server
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        // Sluice keeps accepting during `grace_period` itself (see `shutdown`); pingora's
        // grace period is the drain budget, and the process exits earlier once drained.
        grace_period_seconds: Some(secs_ceil(config.server.shutdown_timeout)),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: config.server.upgrade_sock.clone(),
        pid_file: config.server.pid_file.clone(),
        work_stealing: config.server.work_stealing,
        // Every timeout of a second or more (upstream read/write, the pooled connections'
        // idle timeout) on tokio's timer wheel rather than pingora's shared timer map: with
        // one runtime per thread it costs fewer instructions per request (about 1.7k of
        // 79k, benches/README.md), and a cancelled timer is dropped instead of kept to its
        // deadline. The timeouts are the same; they are no longer rounded up to 10 ms.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let conn_metrics = crate::edge::conn::ConnMetrics::register(&gateway.metrics);
    let l4_metrics = crate::l4::session::L4Metrics::register(&gateway.metrics);
    crate::l4::add_services(&mut server, &gateway, &config, &l4_metrics)?;
    for (index, l) in config
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| l.protocol == sluice_config::l4::ListenerProtocol::Http)
    {
        let limits = l.connections.or(&config.server.connections).resolve();
        let metrics = conn_metrics.listener(&l.name);
        let proxy = SluiceProxy::new(gateway.clone(), &l.name, l.tls.is_some(), index);
        let mut options = HttpServerOptions::default();
        options.h2c = l.http2 && l.tls.is_none();
        crate::edge::conn::apply_server_options(&mut options, &limits);
        let mut app = HttpProxy::new(proxy, server.configuration.clone());
        app.server_options = Some(options);
        app.h2_options = Some(crate::edge::conn::h2_options(&limits));
        app.handle_init_modules();
        // The drain wrapper holds back pingora's cut of idle keep-alive connections until
        // the listener has drained (see `shutdown`); `conn` bounds slow and idle clients
        // and caps connections (see `conn`).
        let app = crate::edge::conn::Guarded::new(app, limits);
        let edge = crate::edge::conn::Edge::new(crate::edge::shutdown::Draining::new(app), limits, metrics);
        let addr = l.listen.to_string();
        let name = format!("listener {}", l.name);
        match &l.tls {
            None => {
                let mut svc = Service::new(name, edge);
                svc.add_tcp(&addr);
                server.add_service(svc);
            }
            Some(_) => {
                // The TLS front reads the ClientHello first: TLS passthrough routes by
                // SNI share the port, and client certificates are asked for per SNI
                // (see `l4::front`). Certificates are live: the files are re-read and
                // the config's inline certificates (Kubernetes TLS Secrets) added on
                // every change (see `tls`).
                let resolver = crate::l4::resolver(&gateway, l, &config)?;
                let ctx = crate::l4::listener_ctx(&gateway, l, &l4_metrics);
                let front = crate::l4::front::TlsFront::new(ctx, resolver, edge, true, l.http2);
                let mut svc = Service::new(name, front);
                svc.add_tcp(&addr);
                server.add_service(svc);
            }
        }
    }

    if !crate::rollout::runtime::start(gateway.clone(), rollout_store) {
        tracing::error!("rollouts: the background runtime is not available; rollouts do not run");
    }

    let admin_addr = config.admin.listen;
    let admin_gateway = gateway.clone();
    std::thread::Builder::new()
        .name("sluice-admin".into())
        .spawn(move || admin_thread(admin_gateway, admin_addr, auth, sources, base, base_hash))
        .map_err(|e| format!("cannot start the admin thread: {e}"))?;

    // File log sinks reopen on SIGUSR1 (logrotate); installed before anything can signal.
    crate::observe::sinks::install_reopen_signal();
    tracing::info!(listeners = config.listeners.len(), admin = %admin_addr, "sluice starting");
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(crate::edge::shutdown::Signals {
            grace_period: config.server.grace_period,
        }),
    });
    Ok(())
}

fn admin_thread(
    gateway: Arc<Gateway>,
    addr: std::net::SocketAddr,
    auth: crate::admin::AdminAuth,
    sources: Sources,
    base: serde_json::Value,
    base_hash: String,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("admin runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        tokio::spawn(crate::control::sources::run(
            gateway.clone(),
            sources,
            base,
            base_hash,
        ));
        tokio::spawn(crate::upstream::health::run(gateway.clone()));
        tokio::spawn(crate::upstream::discovery::dns::run(gateway.clone()));
        tokio::spawn(crate::edge::tls::poll(gateway.clone()));
        tokio::spawn(crate::observe::history::run(gateway.clone()));
        // Ready only once a SIGTERM would drain rather than kill the process.
        if !crate::edge::shutdown::signals_installed(std::time::Duration::from_secs(10)).await {
            tracing::warn!("signal handlers not installed after 10 s; opening the admin listener anyway");
        }
        let listener = match crate::admin::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("admin listener {addr}: {e}");
                return;
            }
        };
        if let Err(e) = axum::serve(listener, crate::admin::router(gateway, auth)).await {
            tracing::error!("admin server: {e}");
        }
    });
}
