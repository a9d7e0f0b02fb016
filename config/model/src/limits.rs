//! Request limits and request buffering: `server.limits`, `server.request_buffering`,
//! and their per-route overrides (`routes[].limits`, `routes[].request_buffering`).
//!
//! Defaults follow what nginx and Envoy ship (see `docs/security.md`):
//!
//! | setting | default | answer |
//! |---|---|---|
//! | `limits.max_header_size` (request line + field lines) | `32KiB` | 431 |
//! | `limits.max_header_line` (one field line) | `8KiB` | 431 |
//! | `limits.max_headers` | `100` | 431 |
//! | `limits.max_uri` | `8KiB` | 414 |
//! | `limits.max_request_body` | `1MiB` | 413 |
//! | `limits.max_response_header_size` (from upstreams) | `64KiB` | 502 |
//! | `request_buffering` | `{max: 64KiB}` | bodies up to `max` read and checked first |

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::validate::ConfigError;

/// Pingora's own cap on a request head; a larger head is refused by pingora (400)
/// before Sluice sees it, so a larger `max_header_size` would never apply.
pub const PINGORA_MAX_HEADER_SIZE: u64 = 1_048_575;
/// Pingora's own cap on the number of request header fields (400 beyond it).
pub const PINGORA_MAX_HEADERS: u32 = 256;
/// Pingora's replay (retry) buffer: the most a buffered body can hold and still be
/// sent to the upstream (and replayed on a retry).
pub const PINGORA_REPLAY_BUFFER: u64 = 64 * 1024;

/// A size in bytes: an integer (`65536`) or a string with a unit (`64KiB`, `8k`,
/// `1MiB`, `1m`, `512B`). `k`/`KiB`/`KB` are all 1024 bytes, `m`/`MiB`/`MB` 1024².
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` KiB.
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n * 1024)
    }

    /// `n` MiB.
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n * 1024 * 1024)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Parses `64KiB`, `8k`, `1MiB`, `100`, `512B` (case-insensitive units).
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        if digits.is_empty() {
            return Err(format!(
                "invalid size {s:?}: use bytes or a unit, e.g. 64KiB, 8k, 1MiB"
            ));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid size {s:?}: too large"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1024,
            "m" | "mb" | "mib" => 1024 * 1024,
            "g" | "gb" | "gib" => 1024 * 1024 * 1024,
            _ => {
                return Err(format!(
                    "invalid size {s:?}: unknown unit {unit:?} (use B, KiB, MiB or GiB)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size {s:?}: too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n != 0 && n.is_multiple_of(1024 * 1024) {
            write!(f, "{}MiB", n / (1024 * 1024))
        } else if n != 0 && n.is_multiple_of(1024) {
            write!(f, "{}KiB", n / 1024)
        } else {
            write!(f, "{n}B")
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: bytes, or a string such as \"64KiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Limits on what a client may send, and on upstream response heads (`server.limits`).
/// Checked on every request before any upstream is contacted; see `docs/security.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The whole request head: request line and field lines with their line endings.
    /// Larger → 431. At most `1048575` (pingora's own cap). Default: `32KiB` (nginx's
    /// `large_client_header_buffers 4 8k`).
    pub max_header_size: ByteSize,
    /// One header field line (`name: value`). Longer → 431. Default: `8KiB` (nginx).
    pub max_header_line: ByteSize,
    /// Header fields in a request. More → 431. At most `256` (pingora's own cap).
    /// Default: `100` (Envoy's `max_headers_count`).
    pub max_headers: u32,
    /// The request target. Longer → 414. Default: `8KiB` (nginx's line buffer).
    pub max_uri: ByteSize,
    /// A request body. Larger → 413 (before the upstream is contacted when the size is
    /// known from `Content-Length` or the body is buffered; otherwise the stream is cut
    /// when it passes the limit). Overridable per route. Default: `1MiB` (nginx's
    /// `client_max_body_size`).
    pub max_request_body: ByteSize,
    /// An upstream's response head. Larger → 502 to the client. Default: `64KiB`
    /// (Envoy's 60 KiB, rounded).
    pub max_response_header_size: ByteSize,
    /// An upstream's response body. Larger → 502 `upstream_response_too_large` when its
    /// `Content-Length` says so before anything is sent; a body that grows past it is
    /// cut (the client sees the response end early), logged with that code.
    /// Overridable per route. Default: none (no limit, as nginx and Envoy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_body: Option<ByteSize>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_header_size: ByteSize::kib(32),
            max_header_line: ByteSize::kib(8),
            max_headers: 100,
            max_uri: ByteSize::kib(8),
            max_request_body: ByteSize::mib(1),
            max_response_header_size: ByteSize::kib(64),
            max_response_body: None,
        }
    }
}

/// Per-route limit overrides (`routes[].limits`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RouteLimits {
    /// The request body limit on this route, e.g. larger for an upload route.
    /// Default: `server.limits.max_request_body`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_body: Option<ByteSize>,
    /// The upstream response body limit on this route. Default:
    /// `server.limits.max_response_body`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_response_body: Option<ByteSize>,
}

impl RouteLimits {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self.max_request_body.is_none() && self.max_response_body.is_none()
    }
}

/// Request buffering (nginx's `proxy_request_buffering`): `off`, `on` (the default
/// size), or `{max: 64KiB}`.
///
/// On, a request body of at most `max` bytes (a `Content-Length` up to `max`, or a
/// chunked body that ends within `max`) is read whole and its framing checked before
/// any upstream is contacted, so a broken body never reaches an upstream and a retry
/// can replay it. A chunked body that grows past `max` is refused with 413; a
/// `Content-Length` body larger than `max` streams (its framing is exact). Off, bodies
/// stream to the upstream as they arrive (uploads). `max` is at most `64KiB`
/// (pingora's replay buffer). Default: `{max: 64KiB}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBuffering {
    /// Stream bodies.
    Off,
    /// Buffer bodies up to this size.
    On {
        /// The largest body that is buffered. Default: `64KiB`.
        max: ByteSize,
    },
}

impl Default for RequestBuffering {
    fn default() -> Self {
        RequestBuffering::On {
            max: ByteSize(PINGORA_REPLAY_BUFFER),
        }
    }
}

impl RequestBuffering {
    /// The buffering size, `None` when off.
    pub fn max(self) -> Option<u64> {
        match self {
            RequestBuffering::Off => None,
            RequestBuffering::On { max } => Some(max.0),
        }
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct BufferingSpec {
    #[serde(default = "default_buffering_max")]
    max: ByteSize,
}

fn default_buffering_max() -> ByteSize {
    ByteSize(PINGORA_REPLAY_BUFFER)
}

impl Serialize for RequestBuffering {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            RequestBuffering::Off => s.serialize_str("off"),
            RequestBuffering::On { max } => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("max", max)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for RequestBuffering {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RequestBuffering, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RequestBuffering;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`off`, `on`, or `{max: <size>}`")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RequestBuffering, E> {
                Ok(if v {
                    RequestBuffering::default()
                } else {
                    RequestBuffering::Off
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RequestBuffering, E> {
                match v {
                    "off" => Ok(RequestBuffering::Off),
                    "on" => Ok(RequestBuffering::default()),
                    _ => Err(E::custom(format!(
                        "invalid request_buffering {v:?}: use off, on, or {{max: <size>}}"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RequestBuffering, A::Error> {
                let spec = BufferingSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RequestBuffering::On { max: spec.max })
            }
        }
        d.deserialize_any(V)
    }
}

/// Checks `server.limits` (`p` is its path).
pub fn validate_limits(p: &str, l: &LimitsConfig) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: String| {
        errors.push(ConfigError {
            path: format!("{p}.{field}"),
            message,
        })
    };
    if l.max_header_size.0 < 1024 || l.max_header_size.0 > PINGORA_MAX_HEADER_SIZE {
        err(
            "max_header_size",
            format!("must be between 1KiB and {PINGORA_MAX_HEADER_SIZE} bytes (pingora's cap)"),
        );
    }
    if l.max_header_line.0 < 256 || l.max_header_line > l.max_header_size {
        err(
            "max_header_line",
            "must be at least 256 bytes and at most max_header_size".into(),
        );
    }
    if l.max_headers == 0 || l.max_headers > PINGORA_MAX_HEADERS {
        err(
            "max_headers",
            format!("must be between 1 and {PINGORA_MAX_HEADERS} (pingora's cap)"),
        );
    }
    if l.max_uri.0 < 64 || l.max_uri > l.max_header_size {
        err(
            "max_uri",
            "must be at least 64 bytes and at most max_header_size".into(),
        );
    }
    if l.max_response_header_size.0 < 1024 {
        err("max_response_header_size", "must be at least 1KiB".into());
    }
    errors
}

/// Checks a `request_buffering` setting (`p` is its path).
pub fn validate_buffering(p: &str, b: &RequestBuffering) -> Vec<ConfigError> {
    match b {
        RequestBuffering::On { max } if max.0 == 0 || max.0 > PINGORA_REPLAY_BUFFER => vec![ConfigError {
            path: format!("{p}.max"),
            message: "must be between 1 byte and 64KiB (pingora's replay buffer); use `off` to stream larger bodies".to_string(),
        }],
        _ => Vec::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(ByteSize::parse("64KiB").unwrap(), ByteSize(65536));
        assert_eq!(ByteSize::parse("8k").unwrap(), ByteSize(8192));
        assert_eq!(ByteSize::parse("1MiB").unwrap(), ByteSize(1 << 20));
        assert_eq!(ByteSize::parse("1m").unwrap(), ByteSize(1 << 20));
        assert_eq!(ByteSize::parse("512").unwrap(), ByteSize(512));
        assert_eq!(ByteSize::parse("512B").unwrap(), ByteSize(512));
        assert!(ByteSize::parse("KiB").is_err());
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("99999999999999999999").is_err());
        assert!(ByteSize::parse("99999999999999G").is_err());
        assert_eq!(ByteSize(65536).to_string(), "64KiB");
        assert_eq!(ByteSize(100).to_string(), "100B");
    }

    #[test]
    fn buffering_reads_off_on_and_a_size() {
        let b: RequestBuffering = serde_json::from_str("\"off\"").unwrap();
        assert_eq!(b, RequestBuffering::Off);
        let b: RequestBuffering = serde_json::from_str("\"on\"").unwrap();
        assert_eq!(b.max(), Some(65536));
        let b: RequestBuffering = serde_json::from_str(r#"{"max": "16KiB"}"#).unwrap();
        assert_eq!(b.max(), Some(16384));
        assert!(serde_json::from_str::<RequestBuffering>(r#"{"size": 1}"#).is_err());
        assert!(serde_json::from_str::<RequestBuffering>("\"maybe\"").is_err());
        let back = serde_json::to_string(&RequestBuffering::On { max: ByteSize(10) }).unwrap();
        assert_eq!(back, r#"{"max":10}"#);
        assert!(!validate_buffering(
            "b",
            &RequestBuffering::On {
                max: ByteSize::kib(65)
            }
        )
        .is_empty());
        assert!(validate_buffering("b", &RequestBuffering::default()).is_empty());
    }

    #[test]
    fn default_limits_validate_and_bad_ones_name_their_field() {
        assert!(validate_limits("server.limits", &LimitsConfig::default()).is_empty());
        let bad = LimitsConfig {
            max_headers: 300,
            max_header_line: ByteSize::kib(64),
            ..LimitsConfig::default()
        };
        let errs = validate_limits("server.limits", &bad);
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["server.limits.max_header_line", "server.limits.max_headers"]
        );
    }
}
