//! Stop signals for the small serving subcommands (`sluice echo`): SIGINT and SIGTERM.
//! `sluice run` has its own, richer handling (a drain on SIGTERM, see [`crate::edge::shutdown`]).

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};

/// Installs the SIGINT and SIGTERM handlers now and returns a future that completes with
/// the signal's name when either arrives. Installing replaces an inherited "ignore" (a
/// shell starts background jobs with SIGINT ignored). Call it inside a runtime.
pub fn stop_signal() -> std::io::Result<impl Future<Output = &'static str>> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    })
}
