//! What the gateway does to responses on a route: compression (`compression`),
//! response caching (`cache`, with the process-wide store in the top-level `cache`),
//! gRPC-Web translation (`grpc_web`) and error pages (`error_pages`). Compression and
//! error pages can also be set on a listener, as the default for every route served
//! there. See `docs/compression.md`, `docs/caching.md`, `docs/grpc-web.md` and
//! `docs/error-pages.md`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits::ByteSize;

/// A content coding the gateway produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CodingName {
    /// `gzip`.
    Gzip,
    /// `br` (Brotli).
    #[serde(rename = "br")]
    Brotli,
    /// `zstd` (Zstandard).
    Zstd,
}

/// Response compression (`routes[].compression`, `listeners[].compression`).
///
/// The coding is chosen from the request's `Accept-Encoding` with its q-values; a body
/// already coded passes as it is when the client accepts its coding and is decoded
/// when it does not (`decompress`). Responses get `Vary: Accept-Encoding` and a weak
/// `ETag` when their body is changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    /// Whether to compress; `false` on a route turns off its listener's default.
    /// Default: `true`.
    pub enabled: bool,
    /// The codings offered, in order of preference when the client weights several
    /// equally. Default: `[br, zstd, gzip]`.
    pub codings: Vec<CodingName>,
    /// Compression levels. Default: gzip `6`, br `4`, zstd `3`.
    pub levels: CompressionLevels,
    /// The smallest body compressed, by its `Content-Length`; bodies of unknown length
    /// are compressed. Default: `1KiB` (Traefik's; nginx's `gzip_min_length` is 20 bytes).
    pub min_size: ByteSize,
    /// Media types compressed: `type/subtype`, `type/*` or `type/*+suffix`.
    /// `text/event-stream` and gRPC are never compressed. Default: `[text/*,
    /// application/json, application/*+json, application/javascript, application/xml,
    /// application/*+xml, application/wasm, image/svg+xml]`.
    pub content_types: Vec<String>,
    /// Decode an upstream body coded with gzip, br or zstd for a client that does not
    /// accept that coding. Default: `true`.
    pub decompress: bool,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: true,
            codings: vec![CodingName::Brotli, CodingName::Zstd, CodingName::Gzip],
            levels: CompressionLevels::default(),
            min_size: ByteSize::kib(1),
            content_types: [
                "text/*",
                "application/json",
                "application/*+json",
                "application/javascript",
                "application/xml",
                "application/*+xml",
                "application/wasm",
                "image/svg+xml",
            ]
            .map(String::from)
            .to_vec(),
            decompress: true,
        }
    }
}

/// Compression levels per coding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionLevels {
    /// gzip, `1` (fastest) to `9` (smallest). Default: `6` (zlib's default).
    pub gzip: u32,
    /// Brotli, `0` to `11`. Default: `4` (a common on-the-fly setting; `11` is for
    /// precompressed files).
    pub br: u32,
    /// Zstandard, `1` to `19`. Default: `3` (zstd's default).
    pub zstd: u32,
}

impl Default for CompressionLevels {
    fn default() -> Self {
        CompressionLevels {
            gzip: 6,
            br: 4,
            zstd: 3,
        }
    }
}

/// Response caching on a route (`routes[].cache`), following RFC 9111.
///
/// Only `GET` and `HEAD` use the cache. A response is stored when its status and
/// `Cache-Control`/`Expires` make it fresh for a shared cache (`private`, `no-store`,
/// `Vary: *` and `Set-Cookie` keep it out; a request with `Authorization` is stored
/// only when the response says `public`, `s-maxage` or `must-revalidate`). One request
/// per key goes to the upstream on a miss while the others wait for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Whether the route uses the cache. Default: `true`.
    pub enabled: bool,
    /// The key: `host`, `path`, `query`, `sorted_query`, `scheme`, `consumer`,
    /// `header:NAME`, `cookie:NAME`, in order. Purges match its text, which reads like
    /// a URL (`example.com/a?x=1`). Default: `[host, path, query]`.
    pub key: Vec<String>,
    /// How long a response with no freshness of its own (no `max-age`, `s-maxage` or
    /// `Expires`) stays fresh, for the statuses in `default_ttl_statuses`. Default:
    /// none (such responses are not stored).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::schema::DurationText>")]
    pub default_ttl: Option<Duration>,
    /// The statuses `default_ttl` applies to. Default: `[200, 203, 301, 308, 404, 410]`.
    pub default_ttl_statuses: Vec<u16>,
    /// The `stale-while-revalidate` window when the response gives none: a stale entry
    /// is served while one request refreshes it. Default: `0s`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::schema::DurationText")]
    pub stale_while_revalidate: Duration,
    /// The `stale-if-error` window when the response gives none: a stale entry is
    /// served when the upstream fails. Default: `0s`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::schema::DurationText")]
    pub stale_if_error: Duration,
    /// The largest body stored; a larger one is served but not stored. Default: `8MiB`.
    pub max_object_size: ByteSize,
    /// Cache for requests an authentication filter identified (put `consumer` in the
    /// key unless every consumer may see the same answer). Default: `false`.
    pub cache_authenticated: bool,
    /// Store responses that set cookies. Default: `false` (as nginx).
    pub cache_set_cookie: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            key: ["host", "path", "query"].map(String::from).to_vec(),
            default_ttl: None,
            default_ttl_statuses: vec![200, 203, 301, 308, 404, 410],
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            max_object_size: ByteSize::mib(8),
            cache_authenticated: false,
            cache_set_cookie: false,
        }
    }
}

/// The process-wide response cache store (top-level `cache`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CacheStoreConfig {
    /// The memory the stored bodies and heads may take, all routes together; the least
    /// recently used entries are evicted past it. Changes apply on reload. Default:
    /// `256MiB`.
    pub max_size: ByteSize,
    /// How long requests for a key wait for the one request filling it before going
    /// to the upstream themselves. Default: `10s`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::schema::DurationText")]
    pub lock_timeout: Duration,
}

impl Default for CacheStoreConfig {
    fn default() -> Self {
        CacheStoreConfig {
            max_size: ByteSize::mib(256),
            lock_timeout: Duration::from_secs(10),
        }
    }
}

/// Error pages (`routes[].error_pages`, `listeners[].error_pages`): the body of the
/// gateway's own error answers (404 no route, 429, 502, 503, 504, ...) and of chosen
/// upstream statuses, replaced by a page chosen by the request's `Accept`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorPagesConfig {
    /// The gateway's own errors whose body is replaced: codes (`404`), classes (`5xx`)
    /// or ranges (`500-504`). Default: `[4xx, 5xx]`.
    #[serde(default = "all_errors")]
    pub statuses: Vec<String>,
    /// Upstream answers whose body is replaced, in the same forms (the status stays
    /// the upstream's). Default: none.
    #[serde(default)]
    pub upstream_statuses: Vec<String>,
    /// The pages, one per media type; the request's `Accept` chooses, the first when it
    /// takes none. At least one. Required.
    pub pages: Vec<ErrorPage>,
}

fn all_errors() -> Vec<String> {
    vec!["4xx".into(), "5xx".into()]
}

/// One error page: a template for one media type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorPage {
    /// The page's media type, e.g. `text/html; charset=utf-8` or `application/json`.
    /// Required.
    pub content_type: String,
    /// The template: the whole page, with `{{status}}`, `{{reason}}`, `{{code}}`,
    /// `{{message}}` and `{{request_id}}` where their values go (escaped for the media
    /// type). Required.
    pub body: String,
}
