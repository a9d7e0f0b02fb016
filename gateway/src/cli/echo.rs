//! `sluice echo`: a tiny demo backend that answers every request with a JSON description
//! of it, so the quickstart works without any other software. It stops on SIGINT
//! (Ctrl-C) and SIGTERM, once the requests in flight are answered.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{HeaderValue, Request};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Serves the echo backend on `listen` until SIGINT or SIGTERM.
pub fn run(listen: SocketAddr, name: String) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async move {
        // Installed before the socket opens, so that once the port answers a signal
        // stops the server. A shell starts a background job with SIGINT ignored; the
        // handler replaces that, so Ctrl-C and `kill -INT` work there too.
        let stop = crate::cli::signals::stop_signal().map_err(|e| format!("signals: {e}"))?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("bind {listen}: {e}"))?;
        eprintln!("echo backend {name:?} listening on http://{listen}");
        let name_for_log = name.clone();
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let name = name.clone();
            async move { describe(&name, &req) }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let which = stop.await;
                eprintln!("echo backend {name_for_log:?}: {which}, stopping");
            })
            .await
            .map_err(|e| format!("serve: {e}"))
    })
}

fn describe(name: &str, req: &Request<Body>) -> Response {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
        .collect();
    let body = json!({
        "upstream": name,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    });
    let mut resp = axum::Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(name) {
        resp.headers_mut().insert("x-upstream", v);
    }
    resp
}
