//! Client connection limits: timeouts for slow and idle clients, caps on requests and
//! connections, and HTTP/2 limits. Set server-wide in `server.connections`; a listener's
//! `connections` overrides any of them for that listener.
//!
//! Every field is optional so that a listener can override one and inherit the rest;
//! [`ConnectionLimits::resolve`] fills the unset ones from the server's and then from the
//! defaults (the `DEFAULT_*` constants, chosen near what nginx and Envoy ship; see
//! `docs/security-connections.md`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Timeouts and caps for client connections. All optional; see [`ResolvedLimits`] for
/// the values that apply when unset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Longest time to receive a whole HTTP/1.x request head (request line and headers),
    /// counted from the connection's accept for its first request and from the first
    /// byte of the request for later ones on a keep-alive connection. A client slower
    /// than that (slowloris) has its connection closed. Default: `10s`.
    #[schemars(with = "Option<crate::schema::DurationText>")]
    #[serde(with = "humantime_serde")]
    pub head_timeout: Option<Duration>,
    /// Longest wait between two reads of a request body (between chunks, not for the
    /// whole body). Default: `60s`.
    #[schemars(with = "Option<crate::schema::DurationText>")]
    #[serde(with = "humantime_serde")]
    pub body_timeout: Option<Duration>,
    /// How long a keep-alive connection may sit idle between two requests (HTTP/1.x),
    /// or with no stream open (HTTP/2), before it is closed. Default: `60s`.
    #[schemars(with = "Option<crate::schema::DurationText>")]
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Requests served on one HTTP/1.x connection; the last one is answered with
    /// `Connection: close`. Default: `1000`.
    pub max_requests_per_connection: Option<u32>,
    /// Open client connections per listener; a connection accepted past the cap is
    /// closed at once, before anything is read from it. Default: `10000`.
    pub max_connections: Option<u32>,
    /// HTTP/2 limits. Default: see [`Http2Limits`].
    pub http2: Http2Limits,
}

/// HTTP/2 limits for client connections. All optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Limits {
    /// Streams a client may have open at once on one connection (the
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` we advertise). Default: `100`.
    pub max_concurrent_streams: Option<u32>,
    /// Largest decoded header list of a request, in bytes (the
    /// `SETTINGS_MAX_HEADER_LIST_SIZE` we advertise); a larger one is refused.
    /// Default: `65536`.
    pub max_header_list_size: Option<u32>,
    /// Rapid-reset defence (CVE-2023-44487): how many streams a client may reset
    /// (`RST_STREAM`) on one connection in a burst; past it the connection gets a
    /// `GOAWAY` (`ENHANCE_YOUR_CALM`) and is closed. The budget refills at
    /// `max_resets` per `reset_window`. Default: `100`.
    pub max_resets: Option<u32>,
    /// The window over which `max_resets` refills. Default: `10s`.
    #[schemars(with = "Option<crate::schema::DurationText>")]
    #[serde(with = "humantime_serde")]
    pub reset_window: Option<Duration>,
}

/// The limits that apply to one listener, every default filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedLimits {
    /// See [`ConnectionLimits::head_timeout`].
    pub head_timeout: Duration,
    /// See [`ConnectionLimits::body_timeout`].
    pub body_timeout: Duration,
    /// See [`ConnectionLimits::idle_timeout`].
    pub idle_timeout: Duration,
    /// See [`ConnectionLimits::max_requests_per_connection`].
    pub max_requests_per_connection: u32,
    /// See [`ConnectionLimits::max_connections`].
    pub max_connections: u32,
    /// See [`Http2Limits::max_concurrent_streams`].
    pub h2_max_concurrent_streams: u32,
    /// See [`Http2Limits::max_header_list_size`].
    pub h2_max_header_list_size: u32,
    /// See [`Http2Limits::max_resets`].
    pub h2_max_resets: u32,
    /// See [`Http2Limits::reset_window`].
    pub h2_reset_window: Duration,
}

impl ConnectionLimits {
    /// Default head timeout: 10 s (nginx `client_header_timeout` is 60 s).
    pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default body timeout between two reads: 60 s (nginx `client_body_timeout`).
    pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default keep-alive idle timeout: 60 s (nginx `keepalive_timeout` is 75 s).
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default requests per connection: 1000 (nginx `keepalive_requests`).
    pub const DEFAULT_MAX_REQUESTS: u32 = 1000;
    /// Default connections per listener: 10000.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
    /// Default HTTP/2 concurrent streams: 100 (RFC 9113's suggested minimum; nginx
    /// `http2_max_concurrent_streams` is 128).
    pub const DEFAULT_H2_STREAMS: u32 = 100;
    /// Default HTTP/2 header list size: 64 KiB (pingora's default; Envoy's
    /// `max_request_headers_kb` is 60 KiB).
    pub const DEFAULT_H2_HEADER_LIST: u32 = 64 * 1024;
    /// Default reset budget: 100 resets.
    pub const DEFAULT_H2_MAX_RESETS: u32 = 100;
    /// Default reset refill window: 10 s.
    pub const DEFAULT_H2_RESET_WINDOW: Duration = Duration::from_secs(10);

    /// These limits with unset fields taken from `fallback`.
    #[must_use]
    pub fn or(&self, fallback: &ConnectionLimits) -> ConnectionLimits {
        ConnectionLimits {
            head_timeout: self.head_timeout.or(fallback.head_timeout),
            body_timeout: self.body_timeout.or(fallback.body_timeout),
            idle_timeout: self.idle_timeout.or(fallback.idle_timeout),
            max_requests_per_connection: self
                .max_requests_per_connection
                .or(fallback.max_requests_per_connection),
            max_connections: self.max_connections.or(fallback.max_connections),
            http2: Http2Limits {
                max_concurrent_streams: self
                    .http2
                    .max_concurrent_streams
                    .or(fallback.http2.max_concurrent_streams),
                max_header_list_size: self
                    .http2
                    .max_header_list_size
                    .or(fallback.http2.max_header_list_size),
                max_resets: self.http2.max_resets.or(fallback.http2.max_resets),
                reset_window: self.http2.reset_window.or(fallback.http2.reset_window),
            },
        }
    }

    /// The values that apply: these, then the defaults.
    pub fn resolve(&self) -> ResolvedLimits {
        ResolvedLimits {
            head_timeout: self.head_timeout.unwrap_or(Self::DEFAULT_HEAD_TIMEOUT),
            body_timeout: self.body_timeout.unwrap_or(Self::DEFAULT_BODY_TIMEOUT),
            idle_timeout: self.idle_timeout.unwrap_or(Self::DEFAULT_IDLE_TIMEOUT),
            max_requests_per_connection: self
                .max_requests_per_connection
                .unwrap_or(Self::DEFAULT_MAX_REQUESTS),
            max_connections: self.max_connections.unwrap_or(Self::DEFAULT_MAX_CONNECTIONS),
            h2_max_concurrent_streams: self
                .http2
                .max_concurrent_streams
                .unwrap_or(Self::DEFAULT_H2_STREAMS),
            h2_max_header_list_size: self
                .http2
                .max_header_list_size
                .unwrap_or(Self::DEFAULT_H2_HEADER_LIST),
            h2_max_resets: self.http2.max_resets.unwrap_or(Self::DEFAULT_H2_MAX_RESETS),
            h2_reset_window: self.http2.reset_window.unwrap_or(Self::DEFAULT_H2_RESET_WINDOW),
        }
    }

    /// Range errors, with paths under `path`: every duration above 0 and every count at
    /// least 1.
    pub fn check(&self, path: &str) -> Vec<crate::ConfigError> {
        let mut errs = Vec::new();
        let durations = [
            ("head_timeout", self.head_timeout),
            ("body_timeout", self.body_timeout),
            ("idle_timeout", self.idle_timeout),
            ("http2.reset_window", self.http2.reset_window),
        ];
        for (name, d) in durations {
            if d == Some(Duration::ZERO) {
                errs.push(crate::ConfigError::at(
                    format!("{path}.{name}"),
                    "must be above 0",
                ));
            }
        }
        let counts = [
            ("max_requests_per_connection", self.max_requests_per_connection),
            ("max_connections", self.max_connections),
            ("http2.max_concurrent_streams", self.http2.max_concurrent_streams),
            ("http2.max_header_list_size", self.http2.max_header_list_size),
            ("http2.max_resets", self.http2.max_resets),
        ];
        for (name, n) in counts {
            if n == Some(0) {
                errs.push(crate::ConfigError::at(
                    format!("{path}.{name}"),
                    "must be at least 1",
                ));
            }
        }
        errs
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_overrides_one_field_and_inherits_the_rest() {
        let server: ConnectionLimits =
            serde_json::from_value(serde_json::json!({"head_timeout": "5s", "max_connections": 7})).unwrap();
        let listener: ConnectionLimits =
            serde_json::from_value(serde_json::json!({"max_connections": 3})).unwrap();
        let r = listener.or(&server).resolve();
        assert_eq!(r.head_timeout, Duration::from_secs(5));
        assert_eq!(r.max_connections, 3);
        assert_eq!(r.idle_timeout, ConnectionLimits::DEFAULT_IDLE_TIMEOUT);
        assert_eq!(r.h2_max_resets, ConnectionLimits::DEFAULT_H2_MAX_RESETS);
    }

    #[test]
    fn zero_values_are_errors_naming_the_field() {
        let l: ConnectionLimits =
            serde_json::from_value(serde_json::json!({"idle_timeout": "0s", "http2": {"max_resets": 0}}))
                .unwrap();
        let errs: Vec<String> = l
            .check("server.connections")
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            errs,
            [
                "server.connections.idle_timeout",
                "server.connections.http2.max_resets"
            ]
        );
    }
}
