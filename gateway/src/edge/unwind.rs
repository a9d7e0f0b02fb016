//! No crash on a bug: a panic in one request's hooks answers that request 500 and leaves
//! the process serving the others.
//!
//! The release profile unwinds (`panic = "unwind"` in the workspace `Cargo.toml`); with
//! `abort` any panic would end the process. Without this module a panic would still
//! only end its connection's task (tokio catches a panicking task), but the client would
//! see its connection dropped with no answer. The proxy's hooks run their phases through
//! [`catch`] and turn a panic into an `Internal` error with [`or_internal`]; pingora
//! then calls `fail_to_proxy`, which answers through the one error mapping (500,
//! `internal`) and closes the connection, since the request's state cannot be trusted.
//!
//! Cost: `catch_unwind` adds no work on the path that does not panic beyond one call
//! through `std::panicking::try` per poll (a few instructions; the landing pad and its
//! unwind tables are only used when a panic unwinds).

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::task::Poll;

use pingora::{Error, ErrorType};

use crate::edge::error::ErrorKind;
use crate::edge::pipeline::Ctx;

/// Polls `f`, catching a panic in any of its polls.
pub async fn catch<F: Future>(f: F) -> std::thread::Result<F::Output> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(
        move |cx| match catch_unwind(AssertUnwindSafe(|| f.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        },
    )
    .await
}

/// Runs `f`, catching a panic.
pub fn catch_sync<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    catch_unwind(AssertUnwindSafe(f))
}

/// The hook's result, or for a panic an internal error (logged with the request id and
/// the panic message) that `fail_to_proxy` answers 500.
pub fn or_internal<T>(
    r: std::thread::Result<pingora::Result<T>>,
    ctx: &mut Ctx,
    hook: &str,
) -> pingora::Result<T> {
    match r {
        Ok(v) => v,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            tracing::error!(request_id = %ctx.filter.request_id, hook, "panic while serving a request: {message}");
            ctx.error = Some(ErrorKind::Internal);
            Error::e_explain(ErrorType::InternalError, format!("panic in {hook}"))
        }
    }
}
