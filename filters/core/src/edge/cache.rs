//! Response caching decisions that are ours rather than RFC 9111's: the cache key a
//! route builds, whether a request may use the cache at all, and the RFC 9211
//! `Cache-Status` field that tells the client what the cache did.
//!
//! Freshness, `Cache-Control`, `Expires`, `Vary`, the `Authorization` rules and the
//! stale windows are pingora-cache's (`pingora_cache::filters`), run by the gateway.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// One part of a cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The request's scheme (`http`, `https`).
    Scheme,
    /// The normalised host, lower case, without the port.
    Host,
    /// The normalised path.
    Path,
    /// The raw query (without `?`), as sent.
    Query,
    /// The query's parameters sorted, so `?b=2&a=1` and `?a=1&b=2` share an entry.
    SortedQuery,
    /// A request header's value (all values, comma-joined).
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The authenticated consumer's id (per-consumer entries).
    Consumer,
}

impl KeyPart {
    /// Parses `scheme`, `host`, `path`, `query`, `sorted_query`, `consumer`,
    /// `header:NAME` or `cookie:NAME`.
    pub fn parse(s: &str) -> Result<KeyPart, String> {
        let s = s.trim();
        Ok(match s {
            "scheme" => KeyPart::Scheme,
            "host" => KeyPart::Host,
            "path" => KeyPart::Path,
            "query" => KeyPart::Query,
            "sorted_query" => KeyPart::SortedQuery,
            "consumer" => KeyPart::Consumer,
            _ => {
                if let Some(name) = s.strip_prefix("header:") {
                    KeyPart::Header(
                        HeaderName::from_bytes(name.trim().as_bytes())
                            .map_err(|_| format!("`{name}` is not a header name"))?,
                    )
                } else if let Some(name) = s.strip_prefix("cookie:") {
                    let name = name.trim();
                    if name.is_empty() || name.contains([';', '=', ' ']) {
                        return Err(format!("`{name}` is not a cookie name"));
                    }
                    KeyPart::Cookie(name.to_string())
                } else {
                    return Err(format!(
                        "`{s}` is not a key part: expected scheme, host, path, query, sorted_query, consumer, header:NAME or cookie:NAME"
                    ));
                }
            }
        })
    }
}

/// The default key: host, path and query (`example.com/a/b?x=1`).
pub const DEFAULT_KEY: [KeyPart; 3] = [KeyPart::Host, KeyPart::Path, KeyPart::Query];

/// What a key is built from: the request as the edge normalised it.
#[derive(Debug, Clone, Copy)]
pub struct KeyInput<'a> {
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The host without port, if any.
    pub host: Option<&'a str>,
    /// The path.
    pub path: &'a str,
    /// The raw query, without `?`.
    pub query: Option<&'a str>,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The authenticated consumer.
    pub consumer: Option<&'a str>,
}

/// The key text for `parts`: `host`, `path` and `?query` run together as a URL would
/// (`example.com/a?x=1`, what a purge by prefix matches), every other part after it
/// on its own line as `name=value`. Two requests share an entry exactly when their key
/// texts are equal.
pub fn key_text(parts: &[KeyPart], input: &KeyInput<'_>) -> String {
    let mut url = String::with_capacity(64);
    let mut extra = String::new();
    for part in parts {
        match part {
            KeyPart::Scheme => {
                url.insert_str(0, "://");
                url.insert_str(0, input.scheme);
            }
            KeyPart::Host => {
                if let Some(h) = input.host {
                    url.extend(h.chars().map(|c| c.to_ascii_lowercase()));
                }
            }
            KeyPart::Path => url.push_str(input.path),
            KeyPart::Query => {
                if let Some(q) = input.query.filter(|q| !q.is_empty()) {
                    url.push('?');
                    url.push_str(q);
                }
            }
            KeyPart::SortedQuery => {
                if let Some(q) = input.query.filter(|q| !q.is_empty()) {
                    let mut pairs: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
                    pairs.sort_unstable();
                    url.push('?');
                    url.push_str(&pairs.join("&"));
                }
            }
            KeyPart::Header(name) => {
                extra.push_str("\nheader:");
                extra.push_str(name.as_str());
                extra.push('=');
                let mut first = true;
                for v in input.headers.get_all(name) {
                    if !first {
                        extra.push(',');
                    }
                    first = false;
                    extra.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
            }
            KeyPart::Cookie(name) => {
                extra.push_str("\ncookie:");
                extra.push_str(name);
                extra.push('=');
                if let Some(v) = cookie(input.headers, name) {
                    extra.push_str(v);
                }
            }
            KeyPart::Consumer => {
                extra.push_str("\nconsumer=");
                extra.push_str(input.consumer.unwrap_or(""));
            }
        }
    }
    url.push_str(&extra);
    url
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim())
        })
}

/// Why a request does not use the cache at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// Not `GET` or `HEAD`.
    Method,
    /// An authenticated consumer, on a route that does not cache for them.
    Authenticated,
    /// The request said `Cache-Control: no-store` (RFC 9111 §5.2.1.5).
    NoStore,
    /// A protocol upgrade (WebSocket).
    Upgrade,
}

impl Bypass {
    /// The reason as `Cache-Status`'s `detail` and a log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Bypass::Method => "method",
            Bypass::Authenticated => "authenticated",
            Bypass::NoStore => "no-store",
            Bypass::Upgrade => "upgrade",
        }
    }
}

/// Whether a request may be answered from, and fill, the cache. `authenticated`: an
/// authentication filter identified a consumer; `cache_authenticated`: the route caches
/// for them anyway (its key should then carry the consumer). A request with an
/// `Authorization` header but no consumer goes on: RFC 9111 §3.5 decides by the
/// response (`public`, `s-maxage`, `must-revalidate`).
pub fn request_bypass(
    method: &Method,
    headers: &HeaderMap,
    authenticated: bool,
    cache_authenticated: bool,
) -> Option<Bypass> {
    if method != Method::GET && method != Method::HEAD {
        return Some(Bypass::Method);
    }
    if authenticated && !cache_authenticated {
        return Some(Bypass::Authenticated);
    }
    if headers.contains_key(http::header::UPGRADE) {
        return Some(Bypass::Upgrade);
    }
    let no_store = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-store"));
    no_store.then_some(Bypass::NoStore)
}

/// What the cache did for one response: the `Cache-Status` it carries and the
/// `outcome` label of the cache metrics (a closed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served fresh from the cache.
    Hit,
    /// Served from the cache while stale (`stale-while-revalidate` or `stale-if-error`).
    Stale,
    /// Not in the cache; fetched from the upstream.
    Miss,
    /// In the cache but stale; fetched again (or revalidated) from the upstream.
    Expired,
    /// The cache was not used for this request.
    Bypass,
}

impl Outcome {
    /// Every outcome, for metric handles resolved once.
    pub const ALL: [Outcome; 5] = [
        Outcome::Hit,
        Outcome::Stale,
        Outcome::Miss,
        Outcome::Expired,
        Outcome::Bypass,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Stale => "stale",
            Outcome::Miss => "miss",
            Outcome::Expired => "expired",
            Outcome::Bypass => "bypass",
        }
    }
}

/// One `Cache-Status` member (RFC 9211) for this gateway's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStatus {
    /// What happened.
    pub outcome: Outcome,
    /// Seconds of freshness left (negative: how long stale), for a served entry.
    pub ttl: Option<i64>,
    /// Whether the upstream's answer was stored.
    pub stored: bool,
    /// Whether this request waited for another one's fill (the cache lock).
    pub collapsed: bool,
    /// The status the upstream answered, when it was asked.
    pub fwd_status: Option<u16>,
    /// A short reason (`stale-if-error`, `no-store`, ...).
    pub detail: Option<&'static str>,
}

/// The cache's name in `Cache-Status`.
pub const CACHE_NAME: &str = "sluice";

impl CacheStatus {
    /// A status with nothing but `outcome`.
    pub fn new(outcome: Outcome) -> CacheStatus {
        CacheStatus {
            outcome,
            ttl: None,
            stored: false,
            collapsed: false,
            fwd_status: None,
            detail: None,
        }
    }

    /// The field value: `sluice; hit; ttl=57`, `sluice; fwd=uri-miss; stored`,
    /// `sluice; hit; ttl=-3; detail=stale-if-error`, `sluice; fwd=bypass; detail=method`.
    pub fn value(&self) -> HeaderValue {
        let mut s = String::with_capacity(48);
        s.push_str(CACHE_NAME);
        match self.outcome {
            Outcome::Hit | Outcome::Stale => s.push_str("; hit"),
            Outcome::Miss => s.push_str("; fwd=uri-miss"),
            Outcome::Expired => s.push_str("; fwd=stale"),
            Outcome::Bypass => s.push_str("; fwd=bypass"),
        }
        if let Some(status) = self.fwd_status {
            s.push_str("; fwd-status=");
            s.push_str(&status.to_string());
        }
        if let Some(ttl) = self.ttl {
            s.push_str("; ttl=");
            s.push_str(&ttl.to_string());
        }
        if self.stored {
            s.push_str("; stored");
        }
        if self.collapsed {
            s.push_str("; collapsed");
        }
        if let Some(d) = self.detail {
            s.push_str("; detail=");
            s.push_str(d);
        }
        HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(CACHE_NAME))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn input<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> KeyInput<'a> {
        KeyInput {
            scheme: "https",
            host: Some("Example.COM"),
            path: "/a/b",
            query,
            headers,
            consumer: Some("alice"),
        }
    }

    #[test]
    fn the_default_key_reads_like_a_url() {
        let h = HeaderMap::new();
        assert_eq!(
            key_text(&DEFAULT_KEY, &input(&h, Some("x=1"))),
            "example.com/a/b?x=1"
        );
        assert_eq!(key_text(&DEFAULT_KEY, &input(&h, Some(""))), "example.com/a/b");
        assert_eq!(key_text(&DEFAULT_KEY, &input(&h, None)), "example.com/a/b");
    }

    #[test]
    fn configured_parts_separate_entries() {
        let mut h = HeaderMap::new();
        h.insert("accept-language", HeaderValue::from_static("de"));
        h.insert("cookie", HeaderValue::from_static("a=1; session=s1; z=2"));
        let parts: Vec<KeyPart> = [
            "scheme",
            "host",
            "path",
            "sorted_query",
            "header:Accept-Language",
            "cookie:session",
            "consumer",
        ]
        .iter()
        .map(|p| KeyPart::parse(p).unwrap())
        .collect();
        assert_eq!(
            key_text(&parts, &input(&h, Some("b=2&a=1"))),
            "https://example.com/a/b?a=1&b=2\nheader:accept-language=de\ncookie:session=s1\nconsumer=alice"
        );
        assert!(KeyPart::parse("cookie:").is_err());
        assert!(KeyPart::parse("header:bad name").is_err());
        assert!(KeyPart::parse("url").unwrap_err().contains("`url`"));
    }

    #[test]
    fn requests_that_bypass_the_cache() {
        let h = HeaderMap::new();
        assert_eq!(request_bypass(&Method::GET, &h, false, false), None);
        assert_eq!(request_bypass(&Method::HEAD, &h, false, false), None);
        assert_eq!(
            request_bypass(&Method::POST, &h, false, false),
            Some(Bypass::Method)
        );
        assert_eq!(
            request_bypass(&Method::GET, &h, true, false),
            Some(Bypass::Authenticated)
        );
        assert_eq!(request_bypass(&Method::GET, &h, true, true), None);
        let mut h = HeaderMap::new();
        h.insert("cache-control", HeaderValue::from_static("max-age=0, No-Store"));
        assert_eq!(
            request_bypass(&Method::GET, &h, false, false),
            Some(Bypass::NoStore)
        );
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer x"));
        assert_eq!(request_bypass(&Method::GET, &h, false, false), None);
    }

    #[test]
    fn cache_status_values() {
        let v = |s: CacheStatus| s.value().to_str().unwrap().to_string();
        assert_eq!(
            v(CacheStatus {
                ttl: Some(57),
                ..CacheStatus::new(Outcome::Hit)
            }),
            "sluice; hit; ttl=57"
        );
        assert_eq!(
            v(CacheStatus {
                stored: true,
                fwd_status: Some(200),
                ..CacheStatus::new(Outcome::Miss)
            }),
            "sluice; fwd=uri-miss; fwd-status=200; stored"
        );
        assert_eq!(
            v(CacheStatus {
                ttl: Some(-3),
                detail: Some("stale-if-error"),
                ..CacheStatus::new(Outcome::Stale)
            }),
            "sluice; hit; ttl=-3; detail=stale-if-error"
        );
        assert_eq!(
            v(CacheStatus {
                detail: Some(Bypass::Method.as_str()),
                ..CacheStatus::new(Outcome::Bypass)
            }),
            "sluice; fwd=bypass; detail=method"
        );
        assert_eq!(
            v(CacheStatus {
                collapsed: true,
                ttl: Some(10),
                ..CacheStatus::new(Outcome::Hit)
            }),
            "sluice; hit; ttl=10; collapsed"
        );
    }
}
