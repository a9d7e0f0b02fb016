//! Admit: the chosen backend's circuit breaker. A closed breaker admits without a lock;
//! an open one answers with its configured response, or sends the request to the
//! fallback upstream. The retry budget starts counting the request here.

use std::time::Instant;

use sluice_core::resilience::Admission;

use super::{Answer, Ctx};
use crate::edge::error::ErrorKind;

/// Asks the backend's breaker. `Some` when it short-circuits with a response.
pub fn breaker(ctx: &mut Ctx) -> Option<Answer> {
    let snap = ctx.snapshot.clone()?;
    let route = &snap.routes[ctx.routing.route?];
    let backend = &route.backends[ctx.routing.backend?];
    if let Some(b) = &backend.breaker {
        let acquired = b.breaker.breaker.try_acquire(Instant::now());
        b.breaker.observe(acquired.transition);
        match acquired.admission {
            Admission::Permitted(permit) => {
                ctx.resilience.breaker_state = Some(b.breaker.breaker.state());
                ctx.resilience.permit = Some((b.clone(), permit));
            }
            Admission::Rejected { retry_after, state } => {
                ctx.resilience.breaker_state = Some(state);
                if b.fallback.is_some() {
                    b.breaker.short_fallback.inc();
                    ctx.routing.fallback = Some(b.breaker.header(state));
                } else {
                    b.breaker.short_response.inc();
                    ctx.error = Some(ErrorKind::CircuitOpen);
                    return Some(Answer::Respond(b.short_circuit(retry_after, state)));
                }
            }
        }
    }
    match (&ctx.routing.fallback, &backend.served_by_fallback) {
        (Some(_), Some(c)) => c.inc(),
        _ => backend.served.inc(),
    }
    if backend.retry.max_retries() > 0 {
        ctx.resilience.budget_request = ctx.upstream().map(|u| u.budget.request_started());
    }
    None
}
