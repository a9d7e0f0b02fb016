//! Normalise: the one view of the request that everything after ingress decides on.
//!
//! Right after ingress, before routing, the request target is normalised
//! ([`sluice_core::normalize`]) and written back into the request itself, so routing,
//! every filter (`RequestView`), the access log, mirror copies and the upstream request
//! read the same path and host, and the raw target decides nothing:
//!
//! - header names with `_` are dropped, refused or kept (`headers_with_underscores`);
//!   the identity headers (`x-sluice-consumer`, `-groups`, every configured consumer
//!   header) are removed from every request, on every route, in every spelling, and so
//!   are the `_` spellings of the forwarded headers;
//! - an absolute-form target's authority replaces `Host` (RFC 9112 section 3.2.2) and
//!   the upstream gets origin-form;
//! - the host is lower-cased and loses a trailing dot;
//! - the path is normalised (RFC 3986 section 6, with the listener's options).
//!
//! An already-normal request (the common case) costs one scan of the path, one of the
//! host and one look at each header name, and allocates nothing.

use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
use pingora::proxy::Session;
use sluice_config::normalization::{HeadersWithUnderscores, Normalization};
use sluice_core::normalize::{self, TargetRefusal};

use super::{Answer, Ctx};
use crate::edge::error::ErrorKind;

/// The forwarded headers, whose `_` spellings are removed whatever the policy (the
/// gateway sets or extends the `-` ones itself; see `forward`).
const FORWARDED: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

/// Normalises the request in `session`. `Some` when it is refused (400) or redirected
/// (`escaped_slashes: unescape_and_redirect`).
pub fn request(session: &mut Session, ctx: &Ctx, listener: &str) -> Option<Answer> {
    let snap = ctx.snapshot.as_deref()?;
    let opts = snap.normalization(listener);
    if let Err(r) = headers(session, opts, &snap.identity_headers) {
        return Some(refuse(ctx, r));
    }
    match target(session, opts) {
        Ok(None) => None,
        Ok(Some(location)) => Some(redirect(location)),
        Err(r) => Some(refuse(ctx, r)),
    }
}

fn refuse(ctx: &Ctx, r: TargetRefusal) -> Answer {
    tracing::debug!(request_id = %ctx.filter.request_id, "normalisation refused the request: {r}");
    Answer::Error(ErrorKind::Target(r), r.reason().to_string())
}

fn redirect(location: String) -> Answer {
    let mut headers = Vec::with_capacity(1);
    if let Ok(v) = HeaderValue::try_from(location) {
        headers.push((http::header::LOCATION, v));
    }
    Answer::Respond(sluice_core::Response {
        status: StatusCode::PERMANENT_REDIRECT,
        headers,
        body: bytes::Bytes::new(),
    })
}

/// Why a header name was refused: only `headers_with_underscores: reject` refuses.
const UNDERSCORE: TargetRefusal = TargetRefusal::HeaderUnderscore;

/// Applies the underscore policy and removes every client copy of the identity headers,
/// in one pass over the header names (no hashing for the common request that has none).
fn headers(
    session: &mut Session,
    opts: &Normalization,
    identity: &[HeaderName],
) -> Result<(), TargetRefusal> {
    let req = session.req_header();
    let mut remove: Vec<HeaderName> = Vec::new();
    for name in req.headers.keys() {
        let n = name.as_str();
        if n.as_bytes().contains(&b'_') {
            let spoof = || {
                identity
                    .iter()
                    .map(HeaderName::as_str)
                    .chain(FORWARDED)
                    .any(|id| same_but_underscores(n, id))
            };
            match opts.headers_with_underscores {
                HeadersWithUnderscores::Reject => return Err(UNDERSCORE),
                HeadersWithUnderscores::Drop => remove.push(name.clone()),
                HeadersWithUnderscores::Allow if spoof() => remove.push(name.clone()),
                HeadersWithUnderscores::Allow => {}
            }
        } else if identity.contains(name) && !remove.contains(name) {
            remove.push(name.clone());
        }
    }
    if !remove.is_empty() {
        let req = session.req_header_mut();
        for name in &remove {
            req.remove_header(name);
        }
    }
    Ok(())
}

/// Whether `name` (lower case) is `id` with some `-` written `_`.
fn same_but_underscores(name: &str, id: &str) -> bool {
    name.len() == id.len()
        && name
            .bytes()
            .zip(id.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
}

/// Normalises the host and the target in place. `Ok(Some(location))` for a redirect.
fn target(session: &mut Session, opts: &Normalization) -> Result<Option<String>, TargetRefusal> {
    let req = session.req_header();
    // An absolute-form target (HTTP/1.x): its authority is the host (RFC 9112 3.2.2),
    // and the upstream gets origin-form. Pingora keeps such a target's bytes apart from
    // the URI (which holds its path); origin-form targets start with `/`.
    let absolute = match raw_target_authority(req.raw_path()) {
        RawTargetAuthority::None => None,
        RawTargetAuthority::Absolute { authority, .. } => Some(authority.to_vec()),
        RawTargetAuthority::AmbiguousAuthority => return Err(TargetRefusal::BadHost),
    };
    let host = match &absolute {
        Some(a) => Some(
            std::str::from_utf8(a)
                .map_err(|_| TargetRefusal::BadHost)?
                .to_string(),
        ),
        None => None,
    };
    let host_changed = match host.as_deref().or_else(|| super::ingress::request_host(req)) {
        Some(h) => match normalize::host(h)? {
            Some(normal) => Some(normal),
            None => host.clone(),
        },
        None => None,
    };
    let path = normalize::path(req.uri.path(), opts)?;
    if let Some(p) = path.as_ref().filter(|p| p.redirect) {
        let mut location = p.path.clone();
        if let Some(q) = req.uri.query() {
            location.push('?');
            location.push_str(q);
        }
        return Ok(Some(location));
    }
    if let Some(h) = host_changed {
        set_host(session, &h)?;
    }
    if path.is_some() || absolute.is_some() {
        let req = session.req_header();
        let path = path.map_or_else(|| req.uri.path().to_string(), |p| p.path);
        let pq = match req.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = req.uri.clone().into_parts();
        parts.path_and_query = Some(pq.parse().map_err(|_| TargetRefusal::BadEscape)?);
        let uri = http::Uri::from_parts(parts).map_err(|_| TargetRefusal::BadEscape)?;
        session.req_header_mut().set_uri(uri);
    }
    Ok(None)
}

/// Writes the normalised host where the request keeps it: the URI's authority
/// (HTTP/2's `:authority`), else `Host`.
fn set_host(session: &mut Session, host: &str) -> Result<(), TargetRefusal> {
    let req = session.req_header_mut();
    if req.uri.authority().is_some() {
        let mut parts = req.uri.clone().into_parts();
        parts.authority = Some(host.parse().map_err(|_| TargetRefusal::BadHost)?);
        let uri = http::Uri::from_parts(parts).map_err(|_| TargetRefusal::BadHost)?;
        req.set_uri(uri);
        if req.headers.contains_key(http::header::HOST) {
            let _ = req.insert_header(http::header::HOST, host);
        }
    } else {
        req.insert_header(http::header::HOST, host)
            .map_err(|_| TargetRefusal::BadHost)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscore_spellings_match_only_their_dash_name() {
        assert!(same_but_underscores("x_sluice_consumer", "x-sluice-consumer"));
        assert!(same_but_underscores("x-sluice_consumer", "x-sluice-consumer"));
        assert!(!same_but_underscores("x_sluice_consumers", "x-sluice-consumer"));
        assert!(!same_but_underscores(
            "x_sluice_consumer",
            "x-sluice-consumer-groups"
        ));
        assert!(!same_but_underscores("y_sluice_consumer", "x-sluice-consumer"));
    }
}
