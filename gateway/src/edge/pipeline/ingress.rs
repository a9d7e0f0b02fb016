//! Ingress: the first thing a request meets. Loads the snapshot once (the request keeps
//! that `Arc` to its end), refuses requests while no config is loaded, takes or makes
//! the request id, and finds the client's address through trusted proxies.

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::proxy::Session;

use super::{Answer, Ctx};
use crate::control::gateway::Gateway;
use crate::control::snapshot::Snapshot;
use crate::edge::error::ErrorKind;

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Starts the request. `Some` when it must be answered at once (no config yet).
pub fn begin(gateway: &Gateway, session: &Session, ctx: &mut Ctx) -> Option<Answer> {
    let snap = gateway.snapshot();
    if !gateway.is_ready() {
        ctx.snapshot = Some(snap);
        ctx.filter.request_id = new_request_id();
        return Some(Answer::Error(
            ErrorKind::NotReady,
            ErrorKind::NotReady.describe().into(),
        ));
    }
    let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
    ctx.client.peer_ip = peer;
    let req = session.req_header();
    match req.headers.get(&snap.request_id_header) {
        Some(v) if is_valid_request_id(v) => {
            ctx.filter.request_id = String::from_utf8_lossy(v.as_bytes()).into_owned();
            // The client's value, shared (a reference count) rather than parsed again.
            ctx.client.request_id_value = Some(v.clone());
        }
        _ => {
            let digits = new_request_id_digits();
            ctx.filter.request_id = String::from_utf8(digits.to_vec()).unwrap_or_default();
            // One allocation that the upstream request and the response then share.
            ctx.client.request_id_value = HeaderValue::from_maybe_shared(Bytes::from_owner(digits)).ok();
        }
    }
    (ctx.filter.client_ip, ctx.client.peer_trusted) = client_ip(peer, &req.headers, &snap);
    // The client certificate of an mTLS listener, for the filters and the upstream.
    if let Some(cert) = crate::l4::client_auth::peer_certificate(session.digest()) {
        ctx.filter.ext.insert(cert);
    }
    if let Some(tracer) = &snap.tracer {
        let trace = tracer.begin(&req.headers);
        ctx.filter.ext.insert(trace.context());
        ctx.trace = Some(trace);
    }
    ctx.snapshot = Some(snap);
    None
}

/// A new request id: 128 random bits from the thread-local generator (no system call),
/// as 32 lower-case hex digits (written digit by digit: `format!` costs several times
/// more on this per-request path).
pub fn new_request_id() -> String {
    String::from_utf8(new_request_id_digits().to_vec()).unwrap_or_default()
}

/// A new request id's 32 digits (see [`new_request_id`]).
fn new_request_id_digits() -> [u8; 32] {
    use rand::Rng;
    hex32(rand::rng().random::<u128>())
}

fn hex32(mut n: u128) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 32];
    for d in digits.iter_mut().rev() {
        *d = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    digits
}

fn is_valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

/// The client's address: the peer, or when the peer is a trusted proxy, the right-most
/// `X-Forwarded-For` entry that is not itself trusted.
fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, snap: &Snapshot) -> (Option<IpAddr>, bool) {
    let trusted = |ip: &IpAddr| snap.trusted_proxies.iter().any(|n| n.contains(ip));
    let Some(peer) = peer else { return (None, false) };
    if !trusted(&peer) {
        return (Some(peer), false);
    }
    let mut client = peer;
    for v in headers.get_all(&X_FORWARDED_FOR) {
        let Ok(s) = v.to_str() else { continue };
        for part in s.split(',').rev() {
            if let Ok(ip) = part.trim().parse::<IpAddr>() {
                client = ip;
                if !trusted(&ip) {
                    return (Some(client), true);
                }
            }
        }
    }
    (Some(client), true)
}

/// The request's host: `:authority`, else `Host`.
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    req.uri
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_lower_hex_digits() {
        assert_eq!(&hex32(0), "0".repeat(32).as_bytes());
        assert_eq!(&hex32(u128::MAX), "f".repeat(32).as_bytes());
        assert_eq!(&hex32(0xabc), format!("{:032x}", 0xabc).as_bytes());
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(new_request_id(), id);
    }
}
