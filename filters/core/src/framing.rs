//! Strict HTTP/1.1 request framing: a check of the raw request head (as the client
//! sent it, before pingora's parser made a [`http`] request of it) that refuses
//! anything a hardened proxy refuses, so nothing ambiguous reaches an upstream.
//!
//! Pure and allocation-light: no pingora type, no I/O, so it is unit-tested and fuzzed
//! on its own (`tests/fuzz_framing.rs`). The gateway runs it in the first request hook,
//! before any routing or upstream work (`gateway/src/edge/pipeline/strict.rs`).
//!
//! What is refused (RFC 9110 / RFC 9112 and what nginx, HAProxy and Envoy refuse):
//!
//! | class | answer |
//! |---|---|
//! | both `Content-Length` and `Transfer-Encoding` | 400 |
//! | a `Transfer-Encoding` other than exactly `chunked` | 400 (a coding we do not know: 501) |
//! | `Transfer-Encoding` on HTTP/1.0 | 400 |
//! | duplicate, list-valued, signed, empty or non-digit `Content-Length` | 400 |
//! | obsolete line folding | 400 |
//! | bare LF or bare CR line endings | 400 |
//! | control characters, spaces or separators in field names; a space before `:` | 400 |
//! | control characters (other than HTAB) in field values | 400 |
//! | a method that is not a token; several spaces in the request line | 400 |
//! | a target with bytes outside visible ASCII, a fragment, a bad `%`-escape, or of a form the method does not allow | 400 |
//! | HTTP/0.9 (no version), a version other than HTTP/1.0 or HTTP/1.1 | 400 |
//! | no `Host` on HTTP/1.1, several `Host`s, an invalid `Host` | 400 |
//! | an absolute-form target whose authority differs from `Host` | 400 |
//! | head, field line or field count over the limits | 431 |
//! | target over the limit | 414 |

use std::fmt;

/// Limits the head check enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// The whole head: request line, field lines and line endings, up to and including
    /// the blank line.
    pub max_head: usize,
    /// One field line, without its line ending.
    pub max_line: usize,
    /// Field lines.
    pub max_headers: usize,
    /// The request target.
    pub max_uri: usize,
}

impl Default for HeadLimits {
    /// The documented defaults: 32 KiB head, 8 KiB line, 100 fields, 8 KiB target.
    fn default() -> Self {
        HeadLimits {
            max_head: 32 * 1024,
            max_line: 8 * 1024,
            max_headers: 100,
            max_uri: 8 * 1024,
        }
    }
}

/// Why a request is refused, with the status it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: the framing is malformed or ambiguous.
    BadRequest(&'static str),
    /// 501: a transfer coding we do not implement.
    NotImplemented(&'static str),
    /// 431: the head, a field line or the field count is over its limit.
    HeaderTooLarge(&'static str),
    /// 414: the target is over its limit.
    UriTooLong,
    /// 413: the body is over its limit.
    PayloadTooLarge,
}

impl Refusal {
    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::NotImplemented(_) => 501,
            Refusal::HeaderTooLarge(_) => 431,
            Refusal::UriTooLong => 414,
            Refusal::PayloadTooLarge => 413,
        }
    }

    /// What was wrong, for the client and the log (never echoes request bytes).
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::BadRequest(r) | Refusal::NotImplemented(r) | Refusal::HeaderTooLarge(r) => r,
            Refusal::UriTooLong => "the request target is too long",
            Refusal::PayloadTooLarge => "the request body is too large",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.reason())
    }
}

/// How the request's body is framed, once the head passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (neither `Content-Length` nor `Transfer-Encoding`).
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What the check learned from a head it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The body framing.
    pub body: BodyFraming,
    /// `true` for HTTP/1.1, `false` for HTTP/1.0.
    pub http11: bool,
    /// Field lines.
    pub headers: usize,
    /// The head's length in bytes, blank line included.
    pub len: usize,
}

/// RFC 9110 `tchar`.
#[inline]
pub fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// [`is_tchar`] as a table: one load per byte.
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = matches!(b as u8,
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_'
            | b'`' | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z');
        b += 1;
    }
    t
};

/// A field value byte: VCHAR, SP, HTAB or obs-text (every byte but the other control
/// characters and DEL). Branch-free, so that [`all_value_bytes`] compiles to wide
/// compares.
#[inline]
fn is_value_byte(b: u8) -> bool {
    (b >= 0x20 || b == b'\t') & (b != 0x7f)
}

/// Whether every byte of a field value is a field value byte. No early exit: the
/// compiler then checks many bytes per instruction (values are most of a head's bytes;
/// a bearer token alone is several hundred).
#[inline]
fn all_value_bytes(v: &[u8]) -> bool {
    !v.iter().fold(false, |bad, &b| bad | !is_value_byte(b))
}

/// A request-target byte: visible ASCII except `#` (a fragment is never sent).
#[inline]
fn is_target_byte(b: u8) -> bool {
    (b.wrapping_sub(0x21) <= 0x7e - 0x21) & (b != b'#')
}

/// Whether every byte of a request target is a target byte (no early exit, as
/// [`all_value_bytes`]).
#[inline]
fn all_target_bytes(v: &[u8]) -> bool {
    !v.iter().fold(false, |bad, &b| bad | !is_target_byte(b))
}

/// Transfer codings we recognise (IANA registry) but do not accept on a request.
const KNOWN_CODINGS: &[&str] = &[
    "chunked",
    "compress",
    "deflate",
    "gzip",
    "identity",
    "x-gzip",
    "x-compress",
    "trailers",
];

/// Checks a raw request head: `raw` holds the request line, the field lines and the
/// blank line (bytes after it are ignored). `Err` says what to answer.
pub fn check_head(raw: &[u8], limits: &HeadLimits) -> Result<Head, Refusal> {
    let mut lines = Lines { raw, pos: 0 };
    // The request line. (A client may send empty lines before it; RFC 9112 §2.2 lets a
    // server ignore "at least one"; pingora's parser skips them, and so do we, but
    // only CRLF ones.)
    let mut request_line = lines.next_line()?;
    let mut skipped = 0;
    while request_line.is_empty() {
        skipped += 1;
        if skipped > 1 {
            return Err(Refusal::BadRequest("empty lines before the request line"));
        }
        request_line = lines.next_line()?;
    }
    let (method, target, http11) = request_line_parts(request_line, limits)?;

    let mut host: Option<&[u8]> = None;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut count = 0usize;
    loop {
        let line = lines.next_line()?;
        if line.is_empty() {
            break;
        }
        if lines.pos > limits.max_head {
            return Err(Refusal::HeaderTooLarge("the request head is too large"));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(Refusal::BadRequest("obsolete line folding"));
        }
        if line.len() > limits.max_line {
            return Err(Refusal::HeaderTooLarge("a header field line is too long"));
        }
        count += 1;
        if count > limits.max_headers {
            return Err(Refusal::HeaderTooLarge("too many header fields"));
        }
        let colon =
            memchr::memchr(b':', line).ok_or(Refusal::BadRequest("a header field line has no colon"))?;
        let name = &line[..colon];
        if name.is_empty() {
            return Err(Refusal::BadRequest("an empty header field name"));
        }
        if !name.iter().all(|&b| is_tchar(b)) {
            return Err(Refusal::BadRequest(
                "a header field name holds a space, a control character or a separator",
            ));
        }
        let value = &line[colon + 1..];
        if !all_value_bytes(value) {
            return Err(Refusal::BadRequest(
                "a header field value holds a control character",
            ));
        }
        let value = trim_ows(value);
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Err(Refusal::BadRequest("several Host fields"));
            }
            if !is_valid_host(value) {
                return Err(Refusal::BadRequest("an invalid Host"));
            }
            host = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(Refusal::BadRequest("several Content-Length fields"));
            }
            content_length = Some(parse_content_length(value)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if transfer_encoding.is_some() {
                return Err(Refusal::BadRequest("several Transfer-Encoding fields"));
            }
            transfer_encoding = Some(value);
        }
    }
    if lines.pos > limits.max_head {
        return Err(Refusal::HeaderTooLarge("the request head is too large"));
    }

    // Host (RFC 9112 §3.2): exactly one on HTTP/1.1.
    if http11 && host.is_none() {
        return Err(Refusal::BadRequest("an HTTP/1.1 request without Host"));
    }
    if let Some(authority) = absolute_authority(target) {
        match host {
            Some(h) if !h.eq_ignore_ascii_case(authority) => {
                return Err(Refusal::BadRequest(
                    "the absolute-form target's authority differs from Host",
                ))
            }
            _ => {}
        }
    }
    let _ = method;

    // Framing (RFC 9112 §6.1, §6.3).
    let body = match (content_length, transfer_encoding) {
        (Some(_), Some(_)) => return Err(Refusal::BadRequest("both Content-Length and Transfer-Encoding")),
        (Some(n), None) => BodyFraming::Length(n),
        (None, Some(te)) => {
            if !http11 {
                return Err(Refusal::BadRequest("Transfer-Encoding on an HTTP/1.0 request"));
            }
            check_transfer_encoding(te)?;
            BodyFraming::Chunked
        }
        (None, None) => BodyFraming::None,
    };
    Ok(Head {
        body,
        http11,
        headers: count,
        len: lines.pos,
    })
}

/// The request line's method, target and version (`true` for 1.1).
fn request_line_parts<'a>(
    line: &'a [u8],
    limits: &HeadLimits,
) -> Result<(&'a [u8], &'a [u8], bool), Refusal> {
    let sp1 = line
        .iter()
        .position(|&b| b == b' ')
        .ok_or(Refusal::BadRequest("an HTTP/0.9 or malformed request line"))?;
    let method = &line[..sp1];
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(Refusal::BadRequest("an invalid method"));
    }
    let rest = &line[sp1 + 1..];
    let sp2 = match rest.iter().rposition(|&b| b == b' ') {
        Some(i) => i,
        None => {
            if rest.len() > limits.max_uri {
                return Err(Refusal::UriTooLong);
            }
            return Err(Refusal::BadRequest("an HTTP/0.9 request (no version)"));
        }
    };
    let target = &rest[..sp2];
    let version = &rest[sp2 + 1..];
    if target.len() > limits.max_uri {
        return Err(Refusal::UriTooLong);
    }
    if target.is_empty() {
        return Err(Refusal::BadRequest("an empty request target"));
    }
    if !all_target_bytes(target) {
        return Err(Refusal::BadRequest(
            "the request target holds a space, a control character, a fragment or a non-ASCII byte",
        ));
    }
    check_percent_escapes(target)?;
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => return Err(Refusal::BadRequest("an unsupported HTTP version")),
    };
    // The target's form (RFC 9112 §3.2).
    if target[0] == b'/' {
        // origin-form
    } else if target == b"*" {
        if method != b"OPTIONS" {
            return Err(Refusal::BadRequest("the asterisk form is only for OPTIONS"));
        }
    } else if absolute_authority(target).is_some() {
        // absolute-form
    } else if method == b"CONNECT" {
        // authority-form: pingora refuses CONNECT itself (405) unless told otherwise.
    } else {
        return Err(Refusal::BadRequest("a request target of no valid form"));
    }
    Ok((method, target, http11))
}

/// The authority of an `http://` or `https://` absolute-form target.
fn absolute_authority(target: &[u8]) -> Option<&[u8]> {
    let rest = strip_prefix_ci(target, b"http://").or_else(|| strip_prefix_ci(target, b"https://"))?;
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    (!authority.is_empty()).then_some(authority)
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)).then(|| &s[prefix.len()..])
}

/// Every `%` starts a two-hex-digit escape.
fn check_percent_escapes(target: &[u8]) -> Result<(), Refusal> {
    let mut i = 0;
    while i < target.len() {
        if target[i] == b'%' {
            let ok = target.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && target.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !ok {
                return Err(Refusal::BadRequest(
                    "an invalid percent-escape in the request target",
                ));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// A `Host` value: `reg-name` / IPv4 / `[IPv6]`, and an optional port.
pub fn is_valid_host(v: &[u8]) -> bool {
    if v.is_empty() {
        // RFC 9112 allows an empty Host for targets without an authority; refuse
        // it all the same: no route can match it and upstreams disagree on it.
        return false;
    }
    let (host, port) = if v[0] == b'[' {
        let Some(close) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &v[1..close];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        (&v[..=close], &v[close + 1..])
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &v[v.len()..]),
        }
    };
    if host.is_empty() {
        return false;
    }
    if host[0] != b'[' {
        if !host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return false;
        }
        // No empty label (a trailing dot, the root, is allowed).
        if host[0] == b'.' || host.windows(2).any(|w| w == b"..") {
            return false;
        }
    }
    match port {
        [] => true,
        [b':', digits @ ..] => {
            !digits.is_empty() && digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    }
}

/// `Content-Length`: one value of 1 to 19 digits (no sign, list or space inside).
fn parse_content_length(v: &[u8]) -> Result<u64, Refusal> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(Refusal::BadRequest("an invalid Content-Length"));
    }
    let mut n: u64 = 0;
    for &b in v {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(Refusal::BadRequest("an invalid Content-Length"))?;
    }
    Ok(n)
}

/// `Transfer-Encoding` must be exactly `chunked` (any case). A list, or another
/// coding we know, is 400; a coding we do not know is 501.
fn check_transfer_encoding(v: &[u8]) -> Result<(), Refusal> {
    if v.eq_ignore_ascii_case(b"chunked") {
        return Ok(());
    }
    let mut unknown = false;
    for token in v.split(|&b| b == b',') {
        let token = trim_ows(token);
        // A coding may carry parameters (`;q=...`): the name is what counts.
        let name = token
            .split(|&b| b == b';')
            .next()
            .map(trim_ows)
            .unwrap_or_default();
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(Refusal::BadRequest("a malformed Transfer-Encoding"));
        }
        if !KNOWN_CODINGS
            .iter()
            .any(|k| name.eq_ignore_ascii_case(k.as_bytes()))
        {
            unknown = true;
        }
    }
    if unknown {
        Err(Refusal::NotImplemented("an unknown transfer coding"))
    } else {
        Err(Refusal::BadRequest("a Transfer-Encoding other than chunked"))
    }
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &v[start..end]
}

/// Splits a head into CRLF-terminated lines, refusing bare LF and bare CR.
struct Lines<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> Lines<'a> {
    fn next_line(&mut self) -> Result<&'a [u8], Refusal> {
        let rest = &self.raw[self.pos..];
        let Some(lf) = memchr::memchr(b'\n', rest) else {
            return Err(Refusal::BadRequest("an incomplete request head"));
        };
        if lf == 0 || rest[lf - 1] != b'\r' {
            return Err(Refusal::BadRequest("a bare LF line ending"));
        }
        let line = &rest[..lf - 1];
        if memchr::memchr(b'\r', line).is_some() {
            return Err(Refusal::BadRequest("a bare CR in the request head"));
        }
        self.pos += lf + 1;
        Ok(line)
    }
}

/// Checks the parsed form of a request that came without a raw head (HTTP/2): the
/// field count and size, the target length, and `Content-Length`. `fields` yields
/// (name, value) pairs; `target_len` is the `:path` length.
pub fn check_parsed<'a>(
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    target_len: usize,
    limits: &HeadLimits,
) -> Result<BodyFraming, Refusal> {
    if target_len > limits.max_uri {
        return Err(Refusal::UriTooLong);
    }
    let mut count = 0usize;
    let mut size = target_len;
    let mut content_length = None;
    for (name, value) in fields {
        count += 1;
        let line = name.len() + 2 + value.len();
        size += line + 2;
        if count > limits.max_headers {
            return Err(Refusal::HeaderTooLarge("too many header fields"));
        }
        if line > limits.max_line {
            return Err(Refusal::HeaderTooLarge("a header field line is too long"));
        }
        if size > limits.max_head {
            return Err(Refusal::HeaderTooLarge("the request head is too large"));
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(Refusal::BadRequest("several Content-Length fields"));
            }
            content_length = Some(parse_content_length(trim_ows(value))?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(Refusal::BadRequest("Transfer-Encoding in an HTTP/2 request"));
        }
    }
    Ok(content_length.map_or(BodyFraming::None, BodyFraming::Length))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(raw: &str) -> Result<Head, Refusal> {
        check_head(raw.as_bytes(), &HeadLimits::default())
    }

    fn status(raw: &str) -> u16 {
        match check(raw) {
            Ok(_) => 200,
            Err(r) => r.status(),
        }
    }

    #[test]
    fn the_byte_classes_are_the_rfc_ones_however_they_are_computed() {
        for b in 0..=255u8 {
            let value = b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80;
            let target = (0x21..=0x7e).contains(&b) && b != b'#';
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_value_byte(b), value, "{b:#04x}");
            assert_eq!(is_target_byte(b), target, "{b:#04x}");
            assert_eq!(is_tchar(b), tchar, "{b:#04x}");
            // The no-early-exit scans, with the byte at every place of a long run.
            for at in [0, 1, 31, 32, 33, 99] {
                let mut v = vec![b'a'; 100];
                v[at] = b;
                assert_eq!(all_value_bytes(&v), value, "{b:#04x} at {at}");
                assert_eq!(all_target_bytes(&v), target, "{b:#04x} at {at}");
            }
        }
        assert!(all_value_bytes(b"") && all_target_bytes(b""));
    }

    #[test]
    fn accepts_ordinary_requests() {
        let h = check("GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n").unwrap();
        assert_eq!(h.body, BodyFraming::None);
        assert_eq!(h.headers, 2);
        let h = check("POST /x HTTP/1.1\r\nHost: a:8080\r\nContent-Length: 0012\r\n\r\nbody").unwrap();
        assert_eq!(h.body, BodyFraming::Length(12));
        let h = check("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked \r\n\r\n").unwrap();
        assert_eq!(h.body, BodyFraming::Chunked);
        assert!(check("GET / HTTP/1.0\r\n\r\n").is_ok());
        assert!(check("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
        assert!(check("GET http://a.example/x HTTP/1.1\r\nHost: A.example\r\n\r\n").is_ok());
        assert!(check("GET / HTTP/1.1\r\nHost: [::1]:80\r\nX-Tab:\tv\u{7f}\r\n\r\n").is_err());
        assert!(check("GET / HTTP/1.1\r\nHost: [::1]:80\r\nX-Tab:\tv a\r\n\r\n").is_ok());
        assert!(check("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
    }

    #[test]
    fn refuses_ambiguous_framing() {
        // CL + TE, in both orders.
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"),
            400
        );
        // TE other than chunked.
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n"),
            501
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n"),
            400
        );
        assert_eq!(status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
        assert_eq!(
            status("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        // Content-Length.
        for cl in ["4, 4", "+4", "-1", "", "4 4", "0x10", "99999999999999999999"] {
            assert_eq!(
                status(&format!(
                    "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {cl}\r\n\r\n"
                )),
                400,
                "{cl:?}"
            );
        }
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n"),
            400
        );
    }

    #[test]
    fn refuses_malformed_lines() {
        assert_eq!(status("GET / HTTP/1.1\nHost: a\n\n"), 400, "bare LF");
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\n\r\n"), 400, "one bare LF");
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n"), 400, "bare CR");
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n"),
            400,
            "obs-fold"
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: a\r\nX : y\r\n\r\n"),
            400,
            "space before colon"
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: a\r\nX\u{1}Y: y\r\n\r\n"),
            400,
            "control in name"
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: a\r\nX: y\u{0}z\r\n\r\n"),
            400,
            "NUL in value"
        );
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nnocolon\r\n\r\n"), 400);
        assert_eq!(status("G@T / HTTP/1.1\r\nHost: a\r\n\r\n"), 400, "method");
        assert_eq!(status("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), 400, "two spaces");
        assert_eq!(
            status("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
            400,
            "space in target"
        );
        assert_eq!(status("GET /a#f HTTP/1.1\r\nHost: a\r\n\r\n"), 400, "fragment");
        assert_eq!(status("GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n"), 400, "bad escape");
        assert_eq!(
            status("GET /\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n"),
            400,
            "non-ASCII target"
        );
        assert_eq!(status("GET a HTTP/1.1\r\nHost: a\r\n\r\n"), 400, "no form");
        assert_eq!(status("GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 400, "asterisk");
        assert_eq!(status("GET /\r\n\r\n"), 400, "HTTP/0.9");
        assert_eq!(status("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 400, "version");
        assert_eq!(status("GET / http/1.1\r\nHost: a\r\n\r\n"), 400, "version case");
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400, "no Host");
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            400,
            "two Hosts"
        );
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 400, "bad Host");
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: .example\r\n\r\n"),
            400,
            "empty label"
        );
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a..b\r\n\r\n"), 400, "empty label");
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: a@b\r\n\r\n"),
            400,
            "userinfo Host"
        );
        assert_eq!(
            status("GET http://evil/x HTTP/1.1\r\nHost: good\r\n\r\n"),
            400,
            "absolute vs Host"
        );
        assert_eq!(
            status("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            400,
            "two empty lines"
        );
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\n"), 400, "incomplete");
    }

    #[test]
    fn enforces_limits() {
        let limits = HeadLimits {
            max_head: 1024,
            max_line: 100,
            max_headers: 3,
            max_uri: 50,
        };
        let c = |raw: String| check_head(raw.as_bytes(), &limits).map_err(Refusal::status);
        assert_eq!(
            c(format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(49))).map(|h| h.headers),
            Ok(1)
        );
        assert_eq!(
            c(format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(50))),
            Err(414)
        );
        assert_eq!(
            c(format!(
                "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
                "v".repeat(98)
            )),
            Err(431)
        );
        assert!(c(format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "v".repeat(97)
        ))
        .is_ok());
        assert_eq!(
            c("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n".into()),
            Err(431)
        );
        let many = (0..20)
            .map(|i| format!("X{i}: {}\r\n", "v".repeat(80)))
            .collect::<String>();
        let big = HeadLimits {
            max_headers: 100,
            ..limits
        };
        assert_eq!(
            check_head(
                format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes(),
                &big
            )
            .map_err(Refusal::status),
            Err(431)
        );
    }

    #[test]
    fn parsed_requests_are_checked_too() {
        let l = HeadLimits::default();
        let ok = [(&b"content-length"[..], &b"5"[..]), (b"x", b"y")];
        assert_eq!(check_parsed(ok.into_iter(), 1, &l), Ok(BodyFraming::Length(5)));
        let te = [(&b"transfer-encoding"[..], &b"chunked"[..])];
        assert_eq!(
            check_parsed(te.into_iter(), 1, &l).map_err(Refusal::status),
            Err(400)
        );
        assert_eq!(
            check_parsed(std::iter::empty(), 9000, &l),
            Err(Refusal::UriTooLong)
        );
    }
}
