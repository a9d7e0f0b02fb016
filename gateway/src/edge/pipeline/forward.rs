//! Forward: shape the request sent upstream. Path rewrite, `X-Forwarded-For/-Proto/-Host`
//! (trusting only trusted proxies), the request id, the consumer the filters
//! identified, and the route's upstream-request filters.

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use sluice_core::HeaderEdit;

use super::ingress::X_FORWARDED_FOR;
use super::Ctx;

const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
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
    ($t:ident $(, $extra:item)*) => {
        impl HeaderEdit for $t<'_> {
            $($extra)*
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
header_edit!(
    ReqEdit,
    fn remove_query_param(&mut self, name: &str) {
        remove_query_param(self.0, name);
    }
);
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
    // Each insert below names its header by a `&'static str` spelled as pingora's case
    // map would store the `HeaderName` (lower case, as the upstream has always seen
    // it): pingora keeps a static name without copying it, where it copies a
    // `HeaderName`'s text for its case map first.
    if let Some(peer) = ctx.client.peer_ip {
        let prev = upstream
            .headers
            .get(&X_FORWARDED_FOR)
            .filter(|_| ctx.client.peer_trusted)
            .and_then(|v| v.to_str().ok());
        let xff = match prev {
            Some(prev) => HeaderValue::try_from(format!("{prev}, {}", ip_text(peer))),
            None => ip_value(peer),
        }
        .map_err(|e| Error::because(InternalError, "X-Forwarded-For", e))?;
        upstream.insert_header("x-forwarded-for", xff)?;
    }
    if !(ctx.client.peer_trusted && upstream.headers.contains_key(&X_FORWARDED_PROTO)) {
        upstream.insert_header("x-forwarded-proto", HeaderValue::from_static(scheme))?;
    }
    if !(ctx.client.peer_trusted && upstream.headers.contains_key(&X_FORWARDED_HOST)) {
        if let Some(host) = host_value(session.req_header()) {
            upstream.insert_header("x-forwarded-host", host)?;
        }
    }
    upstream.insert_header(case_name(&snap.request_id_header), ctx.request_id_value())?;
    identity(upstream, ctx)?;
    crate::l4::client_auth::forward_headers(
        upstream,
        ctx.filter
            .ext
            .get::<std::sync::Arc<crate::l4::client_auth::PeerCertificate>>()
            .map(|c| &**c),
    )?;
    if let Some(trace) = &ctx.trace {
        // Our span (this try's) is the upstream's parent; the caller's `tracestate`
        // goes on only with a valid `traceparent` of its own.
        upstream.insert_header("traceparent", trace.upstream_traceparent())?;
        match &trace.tracestate {
            Some(state) => upstream.insert_header("tracestate", state.clone())?,
            None if upstream.headers.contains_key(&crate::observe::trace::TRACESTATE) => {
                upstream.remove_header(&crate::observe::trace::TRACESTATE);
            }
            None => {}
        }
    }
    route
        .chain
        .on_upstream_request(&mut ReqEdit(upstream), &ctx.filter);
    Ok(())
}

/// Removes every `name` parameter from the request's query (a credential a filter
/// took from it, see [`sluice_core::query::without_param`]); the URI is untouched when
/// there is none.
fn remove_query_param(req: &mut RequestHeader, name: &str) {
    let Some(kept) = req
        .uri
        .query()
        .and_then(|q| sluice_core::query::without_param(q, name))
    else {
        return;
    };
    let pq = if kept.is_empty() {
        req.uri.path().to_string()
    } else {
        format!("{}?{kept}", req.uri.path())
    };
    if let Ok(uri) = http::Uri::builder().path_and_query(pq).build() {
        req.set_uri(uri);
    }
}

/// `name` as pingora's case map stores it when handed the `HeaderName` (title case
/// for the few standard names pingora's own table lists, else the lower-case name),
/// without the copy pingora makes for the usual request id header, `x-request-id`.
pub fn case_name(name: &HeaderName) -> Bytes {
    use http::header;
    let titled = match *name {
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::AGE => "Age",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_TYPE => "Content-Type",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LENGTH => "Content-Length",
        header::DATE => "Date",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::HOST => "Host",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        _ if name == X_REQUEST_ID => "x-request-id",
        _ => return Bytes::copy_from_slice(name.as_str().as_bytes()),
    };
    Bytes::from_static(titled.as_bytes())
}

/// The request's host as a header value, as [`super::ingress::request_host`] finds it: the `Host`
/// header's own value shared (a reference count) rather than copied, or the
/// `:authority`.
fn host_value(req: &RequestHeader) -> Option<HeaderValue> {
    match req.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req
            .headers
            .get(http::header::HOST)
            .filter(|h| h.to_str().is_ok())
            .cloned(),
    }
}

/// `ip` as a header value (IPv4 written digit by digit, into one allocation).
fn ip_value(ip: IpAddr) -> std::result::Result<HeaderValue, http::header::InvalidHeaderValue> {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let n = write_v4(&mut buf, v4.octets());
            HeaderValue::from_bytes(&buf[..n])
        }
        IpAddr::V6(v6) => HeaderValue::try_from(v6.to_string()),
    }
}

fn write_v4(buf: &mut [u8; 15], octets: [u8; 4]) -> usize {
    let mut n = 0;
    for (i, octet) in octets.into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    n
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
    fn case_names_are_what_pingora_stores() {
        use pingora::http::IntoCaseHeaderName;
        for name in [
            "x-request-id",
            "x-forwarded-for",
            "x-gateway",
            "host",
            "server",
            "content-length",
            "set-cookie",
            "cache-control",
            "user-agent",
            "accept",
        ] {
            let n = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(case_name(&n), n.into_case_header_name().as_slice(), "{name}");
        }
        for (name, value) in [
            ("x-forwarded-for", X_FORWARDED_FOR),
            ("x-forwarded-proto", X_FORWARDED_PROTO),
            ("x-forwarded-host", X_FORWARDED_HOST),
        ] {
            assert_eq!(
                name.into_case_header_name().as_slice(),
                value.into_case_header_name().as_slice()
            );
        }
    }

    #[test]
    fn query_params_are_removed_by_name_only() {
        let strip = |uri: &str, name: &str| {
            let mut req = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
            ReqEdit(&mut req).remove_query_param(name);
            req.uri.to_string()
        };
        assert_eq!(strip("/a?x=1&token=t&y=2&token=u", "token"), "/a?x=1&y=2");
        assert_eq!(strip("/a?token=t", "token"), "/a");
        assert_eq!(strip("/a?token", "token"), "/a");
        assert_eq!(strip("/a?tokens=t&x", "token"), "/a?tokens=t&x");
        assert_eq!(strip("/a", "token"), "/a");
    }

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
            assert_eq!(ip_value(ip).unwrap(), ip.to_string().as_str());
        }
    }
}
