//! What a limit counts requests by: the client address, the consumer, a header's
//! value, the route, or a combination.

use http::HeaderName;
use serde::{Deserialize, Serialize};

use super::SpecError;
use sluice_core::filter::{FilterCtx, RequestView};

/// One part of a limit's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyPart {
    /// The client address, after `server.trusted_proxies` resolution.
    ClientIp,
    /// The consumer an authentication filter identified (earlier in the chain).
    Consumer,
    /// The header named by the spec's `header` field.
    Header,
    /// The route: one bucket for all its requests (what an empty key means too).
    Route,
}

/// How a request's key is built, compiled from the spec's `key` and `header`.
#[derive(Debug, Clone, Default)]
pub struct KeySpec {
    parts: Vec<KeyPart>,
    header: Option<HeaderName>,
}

/// The longest key kept as it is; longer keys (a long header value) are hashed for Redis
/// and every key is hashed for the local store, so a key's size in memory is fixed.
pub const MAX_RAW_KEY: usize = 128;

impl KeySpec {
    /// Compiles `key` and `header`: `header` alone means `key: [header]`; `header` in
    /// `key` needs the `header` field. `route` parts are dropped (the filter belongs to
    /// one route already).
    pub fn new(key: &[KeyPart], header: Option<&str>) -> Result<KeySpec, Vec<SpecError>> {
        let header = match header {
            Some(h) => Some(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|e| vec![SpecError::at("header", format!("invalid header name: {e}"))])?,
            ),
            None => None,
        };
        let mut parts: Vec<KeyPart> = key.iter().copied().filter(|p| *p != KeyPart::Route).collect();
        if parts.contains(&KeyPart::Header) && header.is_none() {
            return Err(vec![SpecError::at("header", "required when `key` has `header`")]);
        }
        if header.is_some() && !parts.contains(&KeyPart::Header) {
            parts.push(KeyPart::Header);
        }
        let mut seen = Vec::new();
        for p in &parts {
            if seen.contains(p) {
                return Err(vec![SpecError::at("key", format!("{p:?} listed twice"))]);
            }
            seen.push(*p);
        }
        Ok(KeySpec { parts, header })
    }

    /// Whether every request of the route shares one bucket.
    pub fn is_route(&self) -> bool {
        self.parts.is_empty()
    }

    /// Writes the request's key into `out` (cleared first): each part's value,
    /// separated by `0x1f`; a part the request lacks (no consumer, no such header)
    /// counts as the empty value, so all such requests share one bucket.
    pub fn write(&self, req: &RequestView<'_>, ctx: &FilterCtx, out: &mut Vec<u8>) {
        use std::io::Write;
        out.clear();
        for (i, p) in self.parts.iter().enumerate() {
            if i > 0 {
                out.push(0x1f);
            }
            match p {
                KeyPart::ClientIp => {
                    if let Some(ip) = ctx.client_ip.or(req.client_ip) {
                        let _ = write!(out, "{ip}");
                    }
                }
                KeyPart::Consumer => {
                    if let Some(id) = &ctx.identity {
                        out.extend_from_slice(id.consumer.as_bytes());
                    }
                }
                KeyPart::Header => {
                    if let Some(v) = self.header.as_ref().and_then(|h| req.headers.get(h)) {
                        out.extend_from_slice(v.as_bytes());
                    }
                }
                KeyPart::Route => {}
            }
        }
    }

    /// The configured parts, for the admin API.
    pub fn describe(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .parts
            .iter()
            .map(|p| match p {
                KeyPart::ClientIp => "client_ip".to_string(),
                KeyPart::Consumer => "consumer".to_string(),
                KeyPart::Header => format!("header:{}", self.header.as_ref().map_or("", |h| h.as_str())),
                KeyPart::Route => "route".to_string(),
            })
            .collect();
        if v.is_empty() {
            v.push("route".into());
        }
        v
    }
}

/// The spec's `key`: one part or a list. Default: `route`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum KeyList {
    /// One part.
    One(KeyPart),
    /// Several parts, combined.
    Many(Vec<KeyPart>),
}

impl Default for KeyList {
    fn default() -> Self {
        KeyList::Many(Vec::new())
    }
}

impl KeyList {
    /// The parts.
    pub fn parts(&self) -> &[KeyPart] {
        match self {
            KeyList::One(p) => std::slice::from_ref(p),
            KeyList::Many(v) => v,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sluice_core::filter::Identity;

    fn view<'a>(h: &'a http::HeaderMap, m: &'a http::Method) -> RequestView<'a> {
        RequestView {
            method: m,
            scheme: "http",
            host: None,
            authority: None,
            path: "/",
            query: None,
            headers: h,
            client_ip: None,
        }
    }

    #[test]
    fn combines_ip_consumer_and_header() {
        let k = KeySpec::new(&[KeyPart::ClientIp, KeyPart::Consumer], Some("x-tenant")).unwrap();
        let mut h = http::HeaderMap::new();
        h.insert("x-tenant", "acme".parse().unwrap());
        let m = http::Method::GET;
        let mut ctx = FilterCtx {
            client_ip: Some("10.0.0.1".parse().unwrap()),
            identity: Some(Identity {
                consumer: "alice".into(),
                ..Identity::default()
            }),
            ..FilterCtx::default()
        };
        let mut out = Vec::new();
        k.write(&view(&h, &m), &ctx, &mut out);
        assert_eq!(out, b"10.0.0.1\x1falice\x1facme");
        ctx.identity = None;
        k.write(&view(&h, &m), &ctx, &mut out);
        assert_eq!(out, b"10.0.0.1\x1f\x1facme");
    }

    #[test]
    fn header_part_needs_a_header_name() {
        let e = KeySpec::new(&[KeyPart::Header], None).unwrap_err();
        assert_eq!(e[0].path, "header");
        assert!(KeySpec::new(&[KeyPart::Route], None).unwrap().is_route());
        assert!(KeySpec::new(&[KeyPart::ClientIp, KeyPart::ClientIp], None).is_err());
    }
}
