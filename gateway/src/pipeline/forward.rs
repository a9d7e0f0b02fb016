//! Forward: shape the request sent upstream. Path rewrite, `X-Forwarded-For/-Proto/-Host`
//! (trusting only trusted proxies), the request id, the consumer the filters
//! identified, and the route's upstream-request filters.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use sluice_filters::HeaderEdit;

use super::ingress::{request_host, X_FORWARDED_FOR};
use super::Ctx;

const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The consumer id an authentication filter established, for the upstream. Any copy the
/// client sent is removed, so an upstream can trust it.
pub const X_CONSUMER: HeaderName = HeaderName::from_static("x-sluice-consumer");
/// The consumer's groups, comma separated, for the upstream (client copies removed).
pub const X_CONSUMER_GROUPS: HeaderName = HeaderName::from_static("x-sluice-consumer-groups");

/// Pingora's request header as a [`HeaderEdit`].
pub struct ReqEdit<'a>(pub &'a mut RequestHeader);
/// Pingora's response header as a [`HeaderEdit`].
pub struct RespEdit<'a>(pub &'a mut ResponseHeader);

macro_rules! header_edit {
    ($t:ident) => {
        impl HeaderEdit for $t<'_> {
            fn headers(&self) -> &HeaderMap {
                &self.0.headers
            }
            fn set(&mut self, name: HeaderName, value: HeaderValue) {
                let _ = self.0.insert_header(name, value);
            }
            fn append(&mut self, name: HeaderName, value: HeaderValue) {
                let _ = self.0.append_header(name, value);
            }
            fn remove(&mut self, name: &HeaderName) {
                let _ = self.0.remove_header(name);
            }
        }
    };
}
header_edit!(ReqEdit);
header_edit!(RespEdit);

/// Shapes the upstream request.
pub fn upstream_request(
    session: &Session,
    upstream: &mut RequestHeader,
    ctx: &mut Ctx,
    scheme: &'static str,
) -> Result<()> {
    let snap = ctx.snapshot()?.clone();
    let Some(route) = ctx.routing.route.map(|i| &snap.routes[i]) else {
        return Ok(());
    };
    if let Some(rw) = &route.rewrite {
        let path = rw.apply(upstream.uri.path(), ctx.routing.prefix_len);
        let pq = match upstream.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let uri = http::Uri::builder()
            .path_and_query(pq)
            .build()
            .map_err(|e| Error::because(InternalError, "rewritten path is not a valid URI", e))?;
        upstream.set_uri(uri);
    }
    if let Some(peer) = ctx.client.peer_ip.map(ip_text) {
        let xff = match upstream
            .headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if ctx.client.peer_trusted => format!("{prev}, {peer}"),
            _ => peer,
        };
        upstream.insert_header(X_FORWARDED_FOR, xff)?;
    }
    if !(ctx.client.peer_trusted && upstream.headers.contains_key(&X_FORWARDED_PROTO)) {
        upstream.insert_header(X_FORWARDED_PROTO, HeaderValue::from_static(scheme))?;
    }
    if !(ctx.client.peer_trusted && upstream.headers.contains_key(&X_FORWARDED_HOST)) {
        if let Some(host) = request_host(session.req_header()).map(str::to_string) {
            upstream.insert_header(X_FORWARDED_HOST, host)?;
        }
    }
    upstream.insert_header(snap.request_id_header.clone(), ctx.request_id_value())?;
    identity(upstream, ctx)?;
    route
        .chain
        .on_upstream_request(&mut ReqEdit(upstream), &ctx.filter);
    Ok(())
}

/// Passes the identified consumer upstream, and never a client's claim to be one.
fn identity(upstream: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    if upstream.headers.contains_key(&X_CONSUMER) {
        upstream.remove_header(&X_CONSUMER);
    }
    if upstream.headers.contains_key(&X_CONSUMER_GROUPS) {
        upstream.remove_header(&X_CONSUMER_GROUPS);
    }
    if let Some(id) = &ctx.filter.identity {
        upstream.insert_header(X_CONSUMER, &*id.consumer)?;
        if !id.groups.is_empty() {
            let groups: Vec<&str> = id.groups.iter().map(|g| &**g).collect();
            upstream.insert_header(X_CONSUMER_GROUPS, groups.join(","))?;
        }
    }
    Ok(())
}

/// `ip` as text, IPv4 written digit by digit (its `Display` goes through the formatting
/// machinery, which costs more than the rest of the header it goes into).
pub fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if octet >= 100 {
                    s.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    s.push(char::from(b'0' + octet / 10 % 10));
                }
                s.push(char::from(b'0' + octet % 10));
            }
            s
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }
}
