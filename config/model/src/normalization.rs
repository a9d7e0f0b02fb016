//! How the edge normalises a request before anything decides on it: the options of
//! `server.normalization` and `listeners[].normalization`.
//!
//! Sluice normalises every request target once, at ingress (RFC 3986 section 6): it
//! decodes `%`-escapes of unreserved characters, upper-cases the hex of the others,
//! removes dot segments (a path that climbs above the root is refused) and merges
//! repeated slashes; it refuses `%00` and escaped control characters; it lower-cases the
//! host and removes its trailing dot. Routing, every filter, the access log, mirror
//! copies and the upstream request then see that one normalised target. The options here
//! only relax what a legacy upstream needs; `docs/security.md` sets each beside what
//! nginx, Envoy and HAProxy do.

use serde::{Deserialize, Serialize};

/// The normalisation options, for every listener (`server.normalization`) or one
/// (`listeners[].normalization`, which replaces the server's block as a whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Normalization {
    /// What an escaped slash or backslash (`%2F`, `%5C`) or a raw backslash (`\`) in the
    /// path does. Default: `reject` (400).
    pub escaped_slashes: EscapedSlashes,
    /// Whether repeated slashes (`//a///b`) become one. Default: `true`.
    pub merge_slashes: bool,
    /// What a `;` (a path parameter, `/a;jsessionid=1/b`) in the path does.
    /// Default: `reject` (400).
    pub path_parameters: PathParameters,
    /// What an escaped `%` that itself starts an escape (`%2561`, double encoding) does.
    /// Default: `reject` (400).
    pub double_encoding: DoubleEncoding,
    /// What a request header whose name holds an underscore (`x_api_key`) does.
    /// Default: `drop` (removed before anything sees the request, as nginx does).
    pub headers_with_underscores: HeadersWithUnderscores,
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization {
            escaped_slashes: EscapedSlashes::default(),
            merge_slashes: true,
            path_parameters: PathParameters::default(),
            double_encoding: DoubleEncoding::default(),
            headers_with_underscores: HeadersWithUnderscores::default(),
        }
    }
}

/// What `%2F`, `%5C` and `\` in a path do (Envoy's `path_with_escaped_slashes_action`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Refuse the request (400). The default: an escaped slash is where a router and an
    /// upstream that decodes it disagree about the segments (`/public/..%2Fadmin`), and
    /// legitimate paths need one rarely enough that a listener can opt in.
    #[default]
    Reject,
    /// Keep `%2F` and `%5C` as escapes (hex upper-cased, a raw `\` sent as `%5C`): the
    /// router sees one segment. Only for upstreams that never decode them.
    Keep,
    /// Decode them to `/` (a `\` too) and normalise again, then forward.
    Unescape,
    /// Decode them to `/` and normalise again, then redirect the client there (308);
    /// a path without them is forwarded as usual.
    UnescapeAndRedirect,
}

/// What a `;` in a path does. Tomcat and Jetty strip `;params` from each segment before
/// they resolve dot segments, so `/x/..;/admin` reaches their `/admin`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PathParameters {
    /// Refuse a path with a `;` (400), as Spring Security's strict firewall does.
    #[default]
    Reject,
    /// Keep them; a segment that is empty, `.` or `..` before its `;` is still refused.
    /// Routing sees `/admin;x` as a segment of its own, so use it only for upstreams
    /// that do not strip parameters.
    Keep,
    /// Remove every `;params` from each segment (what Tomcat would see), then route and
    /// forward that path.
    Strip,
}

/// What a double-encoded escape (`%25` followed by two hex digits) does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DoubleEncoding {
    /// Refuse the request (400): an upstream that decodes twice would see another path.
    #[default]
    Reject,
    /// Keep `%25` as it is.
    Keep,
}

/// What a request header whose name holds `_` does (Envoy's
/// `headers_with_underscores_action`, nginx's `underscores_in_headers`). CGI, WSGI, Rack
/// and PHP map `X_Sluice_Consumer` and `X-Sluice-Consumer` to one variable, so such a
/// header can impersonate one the gateway sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HeadersWithUnderscores {
    /// Remove the header before routing, filters and the upstream see it (nginx's
    /// default).
    #[default]
    Drop,
    /// Refuse the request (400).
    Reject,
    /// Keep it (Envoy's default). The identity and forwarded headers are still removed
    /// in every spelling.
    Allow,
}
