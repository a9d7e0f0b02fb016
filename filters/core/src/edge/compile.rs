//! From the config model to the compiled forms the request path reads, with every error
//! named by its field path. The snapshot compile and `sluice validate` both come here
//! ([`check`]), so a block that validates is one that compiles.

use std::time::Duration;

use http::HeaderValue;
use sluice_config::model::{ListenerConfig, RouteConfig};
use sluice_config::responses::{CacheConfig, CodingName, CompressionConfig, ErrorPagesConfig};
use sluice_config::{Config, ConfigError};

use super::cache::KeyPart;
use super::encoding::{Coding, MediaPattern, Policy};
use super::error_page::{StatusSet, Template};

/// A route's or listener's compression, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compression {
    /// The decision's inputs.
    pub policy: Policy,
    /// The level of each coding (gzip, br, zstd).
    pub levels: Levels,
}

/// Compression levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    /// gzip.
    pub gzip: u32,
    /// Brotli.
    pub br: u32,
    /// Zstandard.
    pub zstd: u32,
}

impl Levels {
    /// The level for `coding`.
    pub fn of(&self, coding: Coding) -> u32 {
        match coding {
            Coding::Gzip => self.gzip,
            Coding::Brotli => self.br,
            Coding::Zstd => self.zstd,
        }
    }
}

/// A route's caching, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRules {
    /// The key's parts.
    pub key: Vec<KeyPart>,
    /// Freshness for responses without their own, for `default_ttl_statuses`.
    pub default_ttl: Option<Duration>,
    /// The statuses `default_ttl` applies to.
    pub default_ttl_statuses: Vec<u16>,
    /// `stale-while-revalidate` when the response gives none.
    pub stale_while_revalidate: Duration,
    /// `stale-if-error` when the response gives none.
    pub stale_if_error: Duration,
    /// The largest body stored.
    pub max_object_size: u64,
    /// Whether identified consumers use the cache.
    pub cache_authenticated: bool,
    /// Whether responses with `Set-Cookie` are stored.
    pub cache_set_cookie: bool,
}

/// Error pages, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPages {
    /// The gateway's own error statuses whose body is replaced.
    pub statuses: StatusSet,
    /// Upstream statuses whose body is replaced.
    pub upstream_statuses: StatusSet,
    /// Each page's `Content-Type` and template, in the configured order.
    pub pages: Vec<(HeaderValue, Template)>,
}

impl ErrorPages {
    /// The page for a request that sent `accept`.
    pub fn page(&self, accept: Option<&str>) -> Option<&(HeaderValue, Template)> {
        let types: Vec<&str> = self.pages.iter().map(|(t, _)| t.to_str().unwrap_or("")).collect();
        self.pages.get(super::error_page::choose(&types, accept))
    }
}

fn err(path: String, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path,
        message: message.into(),
    }
}

/// Compiles `compression` at `path`; `Ok(None)` when it is turned off.
pub fn compression(c: &CompressionConfig, path: &str) -> Result<Option<Compression>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let levels = Levels {
        gzip: c.levels.gzip,
        br: c.levels.br,
        zstd: c.levels.zstd,
    };
    for (name, level, range) in [
        ("gzip", levels.gzip, 1..=9),
        ("br", levels.br, 0..=11),
        ("zstd", levels.zstd, 1..=19),
    ] {
        if !range.contains(&level) {
            errors.push(err(
                format!("{path}.levels.{name}"),
                format!(
                    "{level} is out of range: expected {} to {}",
                    range.start(),
                    range.end()
                ),
            ));
        }
    }
    let mut codings = Vec::new();
    for (i, c) in c.codings.iter().enumerate() {
        let coding = match c {
            CodingName::Gzip => Coding::Gzip,
            CodingName::Brotli => Coding::Brotli,
            CodingName::Zstd => Coding::Zstd,
        };
        if codings.contains(&coding) {
            errors.push(err(
                format!("{path}.codings[{i}]"),
                format!("`{}` is listed twice", coding.token()),
            ));
        }
        codings.push(coding);
    }
    if c.enabled && codings.is_empty() && !c.decompress {
        errors.push(err(
            format!("{path}.codings"),
            "empty with `decompress: false`: nothing would be done (set `enabled: false` instead)",
        ));
    }
    let mut media_types = Vec::new();
    for (i, t) in c.content_types.iter().enumerate() {
        match MediaPattern::parse(t) {
            Some(p) => media_types.push(p),
            None => errors.push(err(
                format!("{path}.content_types[{i}]"),
                format!(
                    "`{t}` is not a media type pattern: expected `type/subtype`, `type/*` or `type/*+suffix`"
                ),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(c.enabled.then(|| Compression {
        policy: Policy {
            codings,
            min_size: c.min_size.bytes(),
            media_types,
            decompress: c.decompress,
        },
        levels,
    }))
}

/// Compiles `cache` at `path`; `Ok(None)` when it is turned off.
pub fn cache(c: &CacheConfig, path: &str) -> Result<Option<CacheRules>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut key = Vec::new();
    for (i, part) in c.key.iter().enumerate() {
        match KeyPart::parse(part) {
            Ok(p) if key.contains(&p) => {
                errors.push(err(
                    format!("{path}.key[{i}]"),
                    format!("`{part}` is listed twice"),
                ));
            }
            Ok(p) => key.push(p),
            Err(e) => errors.push(err(format!("{path}.key[{i}]"), e)),
        }
    }
    if key.is_empty() {
        errors.push(err(
            format!("{path}.key"),
            "must name at least one part (e.g. `[host, path, query]`)",
        ));
    }
    for (i, s) in c.default_ttl_statuses.iter().enumerate() {
        if !(200..=599).contains(s) {
            errors.push(err(
                format!("{path}.default_ttl_statuses[{i}]"),
                format!("{s} is not a final status (200 to 599)"),
            ));
        }
    }
    if c.default_ttl.is_some_and(|t| t.is_zero()) {
        errors.push(err(
            format!("{path}.default_ttl"),
            "must be above 0s (leave it out for none)",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(c.enabled.then(|| CacheRules {
        key,
        default_ttl: c.default_ttl,
        default_ttl_statuses: c.default_ttl_statuses.clone(),
        stale_while_revalidate: c.stale_while_revalidate,
        stale_if_error: c.stale_if_error,
        max_object_size: c.max_object_size.bytes(),
        cache_authenticated: c.cache_authenticated,
        cache_set_cookie: c.cache_set_cookie,
    }))
}

/// Compiles `error_pages` at `path`.
pub fn error_pages(c: &ErrorPagesConfig, path: &str) -> Result<ErrorPages, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let statuses = StatusSet::parse(c.statuses.iter().map(String::as_str))
        .map_err(|e| errors.push(err(format!("{path}.statuses"), e)))
        .unwrap_or_default();
    let upstream_statuses = StatusSet::parse(c.upstream_statuses.iter().map(String::as_str))
        .map_err(|e| errors.push(err(format!("{path}.upstream_statuses"), e)))
        .unwrap_or_default();
    if c.pages.is_empty() {
        errors.push(err(format!("{path}.pages"), "at least one page is required"));
    }
    let mut pages = Vec::new();
    for (i, p) in c.pages.iter().enumerate() {
        let ct = match HeaderValue::from_str(p.content_type.trim()) {
            Ok(v) if p.content_type.contains('/') => v,
            _ => {
                errors.push(err(
                    format!("{path}.pages[{i}].content_type"),
                    format!("`{}` is not a media type", p.content_type),
                ));
                continue;
            }
        };
        match Template::parse(&p.body, &p.content_type) {
            Ok(t) => pages.push((ct, t)),
            Err(e) => errors.push(err(format!("{path}.pages[{i}].body"), e.0)),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ErrorPages {
        statuses,
        upstream_statuses,
        pages,
    })
}

/// What a route asks of responses, compiled. `compression` and `error_pages` are
/// `None` when the route leaves them to its listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteResponses {
    /// `Some(None)`: compression turned off here; `None`: the listener's.
    pub compression: Option<Option<Compression>>,
    /// The route's caching.
    pub cache: Option<CacheRules>,
    /// Whether gRPC-Web is translated.
    pub grpc_web: bool,
    /// The route's error pages; `None`: the listener's.
    pub error_pages: Option<ErrorPages>,
    /// The upstream response body limit (the route's, else the server's).
    pub max_response_body: Option<u64>,
}

impl RouteResponses {
    /// Whether the route asks nothing of its own (then only its listener's defaults
    /// apply).
    pub fn is_empty(&self) -> bool {
        *self == RouteResponses::default()
    }
}

/// Compiles route `r` (at `path`, e.g. `routes[3]`) under `config`'s server limits.
pub fn route(r: &RouteConfig, config: &Config, path: &str) -> Result<RouteResponses, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut out = RouteResponses {
        grpc_web: r.grpc_web,
        max_response_body: r
            .limits
            .max_response_body
            .or(config.server.limits.max_response_body)
            .map(|b| b.bytes()),
        ..RouteResponses::default()
    };
    if let Some(c) = &r.compression {
        match compression(c, &format!("{path}.compression")) {
            Ok(c) => out.compression = Some(c),
            Err(e) => errors.extend(e),
        }
    }
    if let Some(c) = &r.cache {
        match cache(c, &format!("{path}.cache")) {
            Ok(c) => out.cache = c,
            Err(e) => errors.extend(e),
        }
    }
    if let Some(c) = &r.error_pages {
        match error_pages(c, &format!("{path}.error_pages")) {
            Ok(p) => out.error_pages = Some(p),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A listener's defaults, compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerResponses {
    /// The listener's compression.
    pub compression: Option<Compression>,
    /// The listener's error pages.
    pub error_pages: Option<ErrorPages>,
}

/// Compiles listener `l` at `path` (e.g. `listeners[0]`).
pub fn listener(l: &ListenerConfig, path: &str) -> Result<ListenerResponses, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut out = ListenerResponses::default();
    if let Some(c) = &l.compression {
        match compression(c, &format!("{path}.compression")) {
            Ok(c) => out.compression = c,
            Err(e) => errors.extend(e),
        }
    }
    if let Some(c) = &l.error_pages {
        match error_pages(c, &format!("{path}.error_pages")) {
            Ok(p) => out.error_pages = Some(p),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Every error in the config's response settings, listeners then routes.
pub fn check(config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        if let Err(e) = listener(l, &format!("listeners[{i}]")) {
            errors.extend(e);
        }
    }
    for (i, r) in config.routes.iter().enumerate() {
        if let Err(e) = route(r, config, &format!("routes[{i}]")) {
            errors.extend(e);
        }
    }
    errors
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn errors_name_their_field() {
        let c = config(
            r#"
listeners:
  - {name: main, listen: "127.0.0.1:8080", compression: {levels: {gzip: 12}, content_types: ["json"]}}
routes:
  - id: r
    upstream: u
    cache: {key: [host, url, host], default_ttl: 0s}
    error_pages:
      statuses: ["6xx"]
      pages:
        - {content_type: "text/html", body: "{{oops}}"}
        - {content_type: "html", body: "x"}
"#,
        );
        let errs: Vec<String> = check(&c).iter().map(ToString::to_string).collect();
        let expect = [
            "listeners[0].compression.levels.gzip",
            "listeners[0].compression.content_types[0]",
            "routes[0].cache.key[1]",
            "routes[0].cache.key[2]",
            "routes[0].cache.default_ttl",
            "routes[0].error_pages.statuses",
            "routes[0].error_pages.pages[0].body",
            "routes[0].error_pages.pages[1].content_type",
        ];
        for e in expect {
            assert!(errs.iter().any(|x| x.starts_with(e)), "missing {e} in {errs:#?}");
        }
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    }

    #[test]
    fn defaults_compile() {
        let c = config(
            r#"
listeners: [{name: main, listen: "127.0.0.1:8080", compression: {}}]
server: {limits: {max_response_body: 1MiB}}
routes:
  - {id: a, upstream: u, compression: {enabled: false}, cache: {}, grpc_web: true}
  - {id: b, upstream: u, limits: {max_response_body: 2KiB}}
  - {id: c, upstream: u, error_pages: {pages: [{content_type: "application/json", body: "{}"}]}}
"#,
        );
        assert!(check(&c).is_empty());
        let l = listener(&c.listeners[0], "listeners[0]").unwrap();
        let comp = l.compression.unwrap();
        assert_eq!(
            comp.policy.codings,
            vec![Coding::Brotli, Coding::Zstd, Coding::Gzip]
        );
        assert_eq!(
            comp.levels,
            Levels {
                gzip: 6,
                br: 4,
                zstd: 3
            }
        );
        let a = route(&c.routes[0], &c, "routes[0]").unwrap();
        assert_eq!(a.compression, Some(None));
        assert!(a.cache.is_some() && a.grpc_web);
        assert_eq!(a.max_response_body, Some(1 << 20));
        let b = route(&c.routes[1], &c, "routes[1]").unwrap();
        assert_eq!(b.max_response_body, Some(2048));
        let e = route(&c.routes[2], &c, "routes[2]").unwrap();
        let pages = e.error_pages.unwrap();
        assert!(pages.statuses.contains(404) && pages.statuses.contains(503));
        assert!(pages.upstream_statuses.is_empty());
    }
}
