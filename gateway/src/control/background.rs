//! The background runtime: one worker thread, apart from the proxy's and the admin
//! plane's runtimes, for work filters start at build time and keep going across reloads
//! (key-set refreshes, connection pools to shared limit stores, calls that must not run
//! on a request's thread). Started on first use; lives as long as the process.

use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime};

static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();

/// The background runtime's handle, or `None` if it could not be started (logged once).
pub fn handle() -> Option<Handle> {
    RUNTIME
        .get_or_init(|| {
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("sluice-bg")
                .enable_all()
                .build()
            {
                Ok(rt) => Some(rt),
                Err(e) => {
                    tracing::error!("background runtime: {e}");
                    None
                }
            }
        })
        .as_ref()
        .map(|rt| rt.handle().clone())
}
