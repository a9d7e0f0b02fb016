//! `timeouts.total` as a deadline for the whole exchange (Envoy's route `timeout`): from
//! the request's arrival to the last byte of the upstream's response, retries included.
//!
//! The deadline is set when the route's backend is known ([`start`], from
//! `select::endpoint`), which also caps each try's connect, read and write timeouts by what
//! is left of it and starts no try past it. The proxy glue checks it ([`check`]) where
//! pingora hands over the upstream's answer: the response head (`upstream_response_filter`:
//! 504 when nothing was sent yet) and every piece of the body
//! (`upstream_response_body_filter`: the response is cut). Cost: one `Option` test per
//! body piece on routes without a total, one clock read with one.

use std::time::Instant;

use pingora::prelude::*;

use super::Ctx;
use crate::edge::error::ErrorKind;

/// Sets the request's deadline from its backend's `timeouts.total` (route over upstream).
#[inline]
pub fn start(ctx: &mut Ctx, total: Option<std::time::Duration>) {
    if ctx.timing.deadline.is_none() {
        ctx.timing.deadline = total.map(|t| ctx.timing.started + t);
    }
}

/// An upstream timeout error once the deadline has passed.
#[inline]
pub fn check(ctx: &mut Ctx) -> Result<()> {
    match ctx.timing.deadline {
        Some(d) if Instant::now() >= d => {
            ctx.error = Some(ErrorKind::UpstreamTimeout);
            Error::e_explain(ReadTimedout, "the total timeout (timeouts.total) elapsed")
        }
        _ => Ok(()),
    }
}
