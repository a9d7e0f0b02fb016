//! The request target, normalised once at ingress so that routing, every filter, the
//! access log, mirror copies and the upstream all decide on the same path and host.
//!
//! [`path`] applies RFC 3986 section 6 to a path: `%`-escapes of unreserved characters
//! are decoded (`/%61dmin` is `/admin`), the hex of the others upper-cased (`%c3%a9` is
//! `%C3%A9`), dot segments removed (`/x/../admin` is `/admin`; one that climbs above the
//! root is refused) and repeated slashes merged; `%00`, an escaped control character, a
//! malformed escape and the cases the [`Normalization`] options refuse are refused.
//! [`host`] lower-cases a host and removes its trailing dot, keeping the port.
//!
//! Both are pure and cheap on what most requests carry: an already-normal target is
//! checked in one scan over a byte table and nothing is allocated (`Ok(None)`); only a
//! target that changes is copied.

use sluice_config::normalization::{DoubleEncoding, EscapedSlashes, Normalization, PathParameters};

/// Why a target was refused. Each is a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetRefusal {
    /// The path does not start with `/` (and is not `*`).
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// `%00`.
    Nul,
    /// An escaped control character (`%01`–`%1F`, `%7F`) or a raw one.
    Control,
    /// `%2F`, `%5C` or `\` with `escaped_slashes: reject`.
    EscapedSlash,
    /// Dot segments that climb above the root (`/../a`).
    AboveRoot,
    /// `%25` followed by two hex digits with `double_encoding: reject`.
    DoubleEncoding,
    /// A `;` with `path_parameters: reject`.
    PathParameter,
    /// A segment that is empty, `.` or `..` before its `;` (`/x/..;/admin`).
    DotSegmentParameter,
    /// The host holds a character a host name cannot, or its port is not a number.
    BadHost,
    /// A header name holds `_` with `headers_with_underscores: reject`.
    HeaderUnderscore,
}

impl TargetRefusal {
    /// What was wrong, for the client and the log (never echoes the request).
    pub fn reason(self) -> &'static str {
        match self {
            TargetRefusal::NotAbsolute => "the request path must start with /",
            TargetRefusal::BadEscape => "the request path holds a % not followed by two hex digits",
            TargetRefusal::Nul => "the request path holds %00",
            TargetRefusal::Control => "the request path holds a control character",
            TargetRefusal::EscapedSlash => {
                "the request path holds an escaped slash or a backslash (%2F, %5C, \\)"
            }
            TargetRefusal::AboveRoot => "the request path climbs above the root with ..",
            TargetRefusal::DoubleEncoding => "the request path holds a double-encoded escape (%25XX)",
            TargetRefusal::PathParameter => "the request path holds a path parameter (;)",
            TargetRefusal::DotSegmentParameter => {
                "the request path holds a dot segment with a path parameter (..;)"
            }
            TargetRefusal::BadHost => "the request host is not a valid host name",
            TargetRefusal::HeaderUnderscore => "a request header name holds an underscore",
        }
    }
}

impl std::fmt::Display for TargetRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// A path that normalisation changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath {
    /// The normalised path.
    pub path: String,
    /// Whether the client is to be redirected there (`escaped_slashes:
    /// unescape_and_redirect` decoded an escaped slash) rather than the request
    /// forwarded.
    pub redirect: bool,
}

// Byte classes.
const CTL: u8 = 0; // control characters and DEL: refused
const UNR: u8 = 1; // unreserved: ALPHA DIGIT - . _ ~
const SUB: u8 = 2; // sub-delims but `;`, and `:` `@`: kept as they are
const SLASH: u8 = 3;
const PCT: u8 = 4;
const SEMI: u8 = 5;
const BSLASH: u8 = 6;
const OTHER: u8 = 7; // anything else a URI cannot hold raw: percent-encoded

static CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = CTL;
        i += 1;
    }
    t[0x7f] = CTL;
    let mut c = b'a';
    while c <= b'z' {
        t[c as usize] = UNR;
        t[(c - 32) as usize] = UNR;
        c += 1;
    }
    let mut d = b'0';
    while d <= b'9' {
        t[d as usize] = UNR;
        d += 1;
    }
    t[b'-' as usize] = UNR;
    t[b'.' as usize] = UNR;
    t[b'_' as usize] = UNR;
    t[b'~' as usize] = UNR;
    let subs = b"!$&'()*+,=:@";
    let mut k = 0;
    while k < subs.len() {
        t[subs[k] as usize] = SUB;
        k += 1;
    }
    t[b'/' as usize] = SLASH;
    t[b'%' as usize] = PCT;
    t[b';' as usize] = SEMI;
    t[b'\\' as usize] = BSLASH;
    t
};

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Whether an escaped byte stays escaped in a normal path: not unreserved (those are
/// decoded), not a control character (refused), not a slash or backslash (the policy's)
/// and not `%` (which may start a double encoding).
fn stays_escaped(v: u8) -> bool {
    matches!(CLASS[v as usize], SUB | SEMI | OTHER)
}

/// Normalises `path` (a request's path, without its query) under `opts`.
///
/// `Ok(None)` when the path is already normal (the common case: one scan, nothing
/// allocated); `Ok(Some(_))` with the normal path; `Err` when the request is to be
/// refused (400). `*` (the asterisk-form target of `OPTIONS *`) is left as it is.
pub fn path(path: &str, opts: &Normalization) -> Result<Option<NormalPath>, TargetRefusal> {
    if is_normal(path.as_bytes(), opts) || path == "*" {
        return Ok(None);
    }
    let normal = rewrite(path.as_bytes(), opts)?;
    if normal.path == path {
        return Ok(None);
    }
    Ok(Some(normal))
}

/// The fast check: whether `b` is surely normal. Conservative: `false` sends the path to
/// [`rewrite`], which decides.
#[inline]
fn is_normal(b: &[u8], opts: &Normalization) -> bool {
    if b.first() != Some(&b'/') {
        return false;
    }
    let mut seg_start = 1;
    let mut i = 1;
    while i < b.len() {
        match CLASS[b[i] as usize] {
            UNR | SUB => {}
            SLASH => {
                let seg = &b[seg_start..i];
                if (seg.is_empty() && opts.merge_slashes) || is_dot_segment(seg) {
                    return false;
                }
                seg_start = i + 1;
            }
            PCT => {
                // Normal only as two upper-case hex digits of a byte that stays escaped.
                let (Some(&h), Some(&l)) = (b.get(i + 1), b.get(i + 2)) else {
                    return false;
                };
                if !(is_upper_hex(h) && is_upper_hex(l)) {
                    return false;
                }
                let v = (hex_nibble(h) << 4) | hex_nibble(l);
                if !stays_escaped(v) || (v == b'%') {
                    return false;
                }
                i += 2;
            }
            _ => return false,
        }
        i += 1;
    }
    !is_dot_segment(&b[seg_start..])
}

#[inline]
fn is_dot_segment(seg: &[u8]) -> bool {
    seg == b"." || seg == b".."
}

#[inline]
fn is_upper_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'A'..=b'F').contains(&b)
}

#[inline]
fn hex_nibble(b: u8) -> u8 {
    hex_value(b).unwrap_or(0)
}

fn push_escaped(out: &mut Vec<u8>, v: u8) {
    out.extend_from_slice(&[b'%', HEX[usize::from(v >> 4)], HEX[usize::from(v & 0xf)]]);
}

/// The full normalisation (allocates): decode, then resolve the segments.
fn rewrite(b: &[u8], opts: &Normalization) -> Result<NormalPath, TargetRefusal> {
    if b.first() != Some(&b'/') {
        return Err(TargetRefusal::NotAbsolute);
    }
    // 1. Decode: unreserved escapes decoded, other escapes upper-cased, the policies for
    //    slashes, parameters and double encoding applied. A `/` in `decoded` separates
    //    segments; an escape stays a `%XX` there, so it never does.
    let mut decoded = Vec::with_capacity(b.len());
    let mut slash_decoded = false;
    let mut slash = |decoded: &mut Vec<u8>, escape: u8| -> Result<(), TargetRefusal> {
        match opts.escaped_slashes {
            EscapedSlashes::Reject => Err(TargetRefusal::EscapedSlash),
            EscapedSlashes::Keep => {
                push_escaped(decoded, escape);
                Ok(())
            }
            EscapedSlashes::Unescape | EscapedSlashes::UnescapeAndRedirect => {
                decoded.push(b'/');
                slash_decoded = true;
                Ok(())
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match CLASS[c as usize] {
            CTL => return Err(TargetRefusal::Control),
            UNR | SUB | SLASH => decoded.push(c),
            OTHER => push_escaped(&mut decoded, c),
            BSLASH => slash(&mut decoded, b'\\')?,
            SEMI => match opts.path_parameters {
                PathParameters::Reject => return Err(TargetRefusal::PathParameter),
                PathParameters::Keep => decoded.push(c),
                PathParameters::Strip => {
                    // Everything to the next raw `/` is the segment's parameters.
                    while i + 1 < b.len() && b[i + 1] != b'/' {
                        i += 1;
                    }
                }
            },
            _ => {
                // `%`
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex_value),
                    b.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(TargetRefusal::BadEscape);
                };
                let v = (h << 4) | l;
                i += 2;
                match CLASS[v as usize] {
                    _ if v == 0 => return Err(TargetRefusal::Nul),
                    CTL => return Err(TargetRefusal::Control),
                    UNR => decoded.push(v),
                    SLASH | BSLASH => slash(&mut decoded, v)?,
                    _ => push_escaped(&mut decoded, v),
                }
            }
        }
        i += 1;
    }

    // A `%25` followed by two hex digits once decoded (`%2561`, and `%25%32%65`, whose
    // `%32%65` decodes to `2e`) is another escape to an upstream that decodes twice.
    if opts.double_encoding == DoubleEncoding::Reject
        && decoded
            .windows(5)
            .any(|w| w[..3] == *b"%25" && w[3].is_ascii_hexdigit() && w[4].is_ascii_hexdigit())
    {
        return Err(TargetRefusal::DoubleEncoding);
    }

    // 2. Resolve the segments: merge empty ones, remove `.`, pop on `..`.
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut parts = decoded[1..].split(|&c| c == b'/').peekable();
    let mut trailing = false;
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        if opts.path_parameters == PathParameters::Keep {
            if let Some(semi) = seg.iter().position(|&c| c == b';') {
                let base = &seg[..semi];
                if base.is_empty() || is_dot_segment(base) {
                    return Err(TargetRefusal::DotSegmentParameter);
                }
            }
        }
        match seg {
            b"" if last => trailing = true,
            b"" if opts.merge_slashes => {}
            b"." => trailing = last,
            b".." => {
                if segments.pop().is_none() {
                    return Err(TargetRefusal::AboveRoot);
                }
                trailing = last;
            }
            _ => segments.push(seg),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for seg in &segments {
        out.push('/');
        // Every byte pushed to `decoded` is ASCII (escapes are written as `%XX`).
        out.push_str(std::str::from_utf8(seg).unwrap_or_default());
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Ok(NormalPath {
        path: out,
        redirect: slash_decoded && opts.escaped_slashes == EscapedSlashes::UnescapeAndRedirect,
    })
}

/// Normalises a request's authority (`Host` or `:authority`): the host lower-cased and
/// its trailing dot removed, the port kept. `Ok(None)` when it is already normal
/// (nothing allocated); `Err` when it holds a byte a host cannot (a space, `/`, `\`,
/// `@`, a control character) or a port that is not a number.
pub fn host(authority: &str) -> Result<Option<String>, TargetRefusal> {
    let b = authority.as_bytes();
    let (name, port) = split_port(b).ok_or(TargetRefusal::BadHost)?;
    let literal = name.first() == Some(&b'[');
    let mut normal = true;
    for &c in name {
        let ok = if literal {
            c.is_ascii_hexdigit() || matches!(c, b'[' | b']' | b':' | b'.') || c.is_ascii_alphanumeric()
        } else {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
        };
        if !ok {
            return Err(TargetRefusal::BadHost);
        }
        normal &= !c.is_ascii_uppercase();
    }
    let dotted = !literal && name.len() > 1 && name.last() == Some(&b'.');
    if normal && !dotted {
        return Ok(None);
    }
    let name = if dotted { &name[..name.len() - 1] } else { name };
    let mut out = String::with_capacity(authority.len());
    for &c in name {
        out.push(char::from(c.to_ascii_lowercase()));
    }
    if let Some(port) = port {
        out.push(':');
        // Checked to be digits by `split_port`.
        out.push_str(std::str::from_utf8(port).unwrap_or_default());
    }
    Ok(Some(out))
}

/// The host and the port (digits, at most 5; absent or empty is no port).
fn split_port(b: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let colon = if b.first() == Some(&b'[') {
        let close = b.iter().position(|&c| c == b']')?;
        match b.get(close + 1) {
            None => return Some((b, None)),
            Some(b':') => close + 1,
            Some(_) => return None,
        }
    } else {
        match b.iter().rposition(|&c| c == b':') {
            None => return Some((b, None)),
            Some(i) => i,
        }
    };
    let (name, port) = (&b[..colon], &b[colon + 1..]);
    if port.len() > 5 || !port.iter().all(u8::is_ascii_digit) || name.is_empty() {
        return None;
    }
    Some((name, (!port.is_empty()).then_some(port)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn strict() -> Normalization {
        Normalization::default()
    }

    fn norm(p: &str) -> Result<String, TargetRefusal> {
        norm_with(p, &strict())
    }

    fn norm_with(p: &str, o: &Normalization) -> Result<String, TargetRefusal> {
        Ok(match path(p, o)? {
            None => p.to_string(),
            Some(n) => n.path,
        })
    }

    #[test]
    fn a_normal_path_is_left_alone_without_a_copy() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/api/v1/users/42",
            "/a-b_c~d.e",
            "/a/b.c/..d/d..",
            "/files/100%25",
            "/a%20b/%C3%A9",
            "/x:y@z!$&'()*+,=",
            "/.well-known/acme",
            "/a/...",
        ] {
            assert_eq!(path(p, &strict()), Ok(None), "{p}");
            assert!(
                is_normal(p.as_bytes(), &strict()) || p.contains('%'),
                "{p} takes the fast path"
            );
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_the_others_upper_cased() {
        assert_eq!(norm("/%61dmin/a").unwrap(), "/admin/a");
        assert_eq!(norm("/%41%2d%5f%7e%2E").unwrap(), "/A-_~.");
        assert_eq!(norm("/a%c3%a9").unwrap(), "/a%C3%A9");
        assert_eq!(norm("/a%3b").unwrap(), "/a%3B");
        assert_eq!(norm("/a%3F%23").unwrap(), "/a%3F%23");
    }

    #[test]
    fn dot_segments_are_removed_and_climbing_above_the_root_refused() {
        assert_eq!(norm("/x/../admin/a").unwrap(), "/admin/a");
        assert_eq!(norm("/./admin/a").unwrap(), "/admin/a");
        assert_eq!(norm("/public/%2e%2e/admin/a").unwrap(), "/admin/a");
        assert_eq!(norm("/public/%2E./admin").unwrap(), "/admin");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("/a/..").unwrap(), "/");
        assert_eq!(norm("/..").unwrap_err(), TargetRefusal::AboveRoot);
        assert_eq!(norm("/../admin").unwrap_err(), TargetRefusal::AboveRoot);
        assert_eq!(norm("/a/../../admin").unwrap_err(), TargetRefusal::AboveRoot);
        assert_eq!(norm("/%2e%2e/admin").unwrap_err(), TargetRefusal::AboveRoot);
    }

    #[test]
    fn repeated_slashes_merge_unless_told_not_to() {
        assert_eq!(norm("//admin/a").unwrap(), "/admin/a");
        assert_eq!(norm("/a///b//").unwrap(), "/a/b/");
        let keep = Normalization {
            merge_slashes: false,
            ..strict()
        };
        assert_eq!(path("//a//b", &keep), Ok(None));
        assert_eq!(norm_with("//a/./b", &keep).unwrap(), "//a/b");
    }

    #[test]
    fn nul_controls_and_broken_escapes_are_refused() {
        assert_eq!(norm("/admin%00/a").unwrap_err(), TargetRefusal::Nul);
        assert_eq!(norm("/a%0a").unwrap_err(), TargetRefusal::Control);
        assert_eq!(norm("/a%7F").unwrap_err(), TargetRefusal::Control);
        assert_eq!(norm("/a\u{1}").unwrap_err(), TargetRefusal::Control);
        assert_eq!(norm("/a%").unwrap_err(), TargetRefusal::BadEscape);
        assert_eq!(norm("/a%4").unwrap_err(), TargetRefusal::BadEscape);
        assert_eq!(norm("/a%zz").unwrap_err(), TargetRefusal::BadEscape);
        assert_eq!(norm("a/b").unwrap_err(), TargetRefusal::NotAbsolute);
        assert_eq!(norm("").unwrap_err(), TargetRefusal::NotAbsolute);
    }

    #[test]
    fn escaped_slashes_follow_the_policy() {
        for p in [
            "/public/..%2fadmin/a",
            "/%2fadmin",
            "/a%5Cb",
            "/a\\b",
            "/admin%2F..%2Fadmin/a",
        ] {
            assert_eq!(norm(p).unwrap_err(), TargetRefusal::EscapedSlash, "{p}");
        }
        let keep = Normalization {
            escaped_slashes: EscapedSlashes::Keep,
            ..strict()
        };
        assert_eq!(
            norm_with("/public/..%2fadmin/a", &keep).unwrap(),
            "/public/..%2Fadmin/a"
        );
        assert_eq!(norm_with("/a\\b", &keep).unwrap(), "/a%5Cb");
        assert_eq!(path("/a%2Fb", &keep), Ok(None));
        let unescape = Normalization {
            escaped_slashes: EscapedSlashes::Unescape,
            ..strict()
        };
        assert_eq!(norm_with("/public/..%2fadmin/a", &unescape).unwrap(), "/admin/a");
        assert_eq!(norm_with("/a\\..\\admin", &unescape).unwrap(), "/admin");
        assert!(!path("/a%2Fb", &unescape).unwrap().unwrap().redirect);
        let redirect = Normalization {
            escaped_slashes: EscapedSlashes::UnescapeAndRedirect,
            ..strict()
        };
        let n = path("/a%2Fb", &redirect).unwrap().unwrap();
        assert_eq!((n.path.as_str(), n.redirect), ("/a/b", true));
        let n = path("/a/../b", &redirect).unwrap().unwrap();
        assert_eq!((n.path.as_str(), n.redirect), ("/b", false));
    }

    #[test]
    fn path_parameters_follow_the_policy() {
        assert_eq!(norm("/x/..;/admin/a").unwrap_err(), TargetRefusal::PathParameter);
        assert_eq!(norm("/admin;x/a").unwrap_err(), TargetRefusal::PathParameter);
        let keep = Normalization {
            path_parameters: PathParameters::Keep,
            ..strict()
        };
        assert_eq!(path("/a;jsessionid=1/b", &keep), Ok(None));
        for p in ["/x/..;/admin", "/x/.;a/admin", "/;x/admin", "/x/%2e%2e;/admin"] {
            assert_eq!(
                norm_with(p, &keep).unwrap_err(),
                TargetRefusal::DotSegmentParameter,
                "{p}"
            );
        }
        let strip = Normalization {
            path_parameters: PathParameters::Strip,
            ..strict()
        };
        assert_eq!(norm_with("/x/..;/admin/a", &strip).unwrap(), "/admin/a");
        assert_eq!(norm_with("/admin;x=1/a;b", &strip).unwrap(), "/admin/a");
        assert_eq!(norm_with("/a;x%2F..%2F/b", &strip).unwrap(), "/a/b");
    }

    #[test]
    fn double_encoding_follows_the_policy() {
        assert_eq!(norm("/%2561dmin/a").unwrap_err(), TargetRefusal::DoubleEncoding);
        assert_eq!(
            norm("/%252e%252e/admin").unwrap_err(),
            TargetRefusal::DoubleEncoding
        );
        assert_eq!(
            norm("/%25%32%65%25%32%65/admin").unwrap_err(),
            TargetRefusal::DoubleEncoding
        );
        assert_eq!(norm("/100%25").unwrap(), "/100%25");
        assert_eq!(norm("/100%25off").unwrap(), "/100%25off");
        let keep = Normalization {
            double_encoding: DoubleEncoding::Keep,
            ..strict()
        };
        assert_eq!(norm_with("/%2561dmin/a", &keep).unwrap(), "/%2561dmin/a");
    }

    #[test]
    fn other_bytes_are_escaped() {
        assert_eq!(norm("/a\"b{c}").unwrap(), "/a%22b%7Bc%7D");
        assert_eq!(norm("/é").unwrap(), "/%C3%A9");
    }

    #[test]
    fn the_asterisk_form_is_left_alone() {
        assert_eq!(path("*", &strict()), Ok(None));
    }

    #[test]
    fn hosts_are_lower_cased_and_lose_a_trailing_dot() {
        assert_eq!(host("example.com"), Ok(None));
        assert_eq!(host("example.com:8080"), Ok(None));
        assert_eq!(host("[::1]:8080"), Ok(None));
        assert_eq!(host("127.0.0.1"), Ok(None));
        assert_eq!(host("Example.COM").unwrap().unwrap(), "example.com");
        assert_eq!(host("example.com.").unwrap().unwrap(), "example.com");
        assert_eq!(host("Example.com.:8443").unwrap().unwrap(), "example.com:8443");
        assert_eq!(host("[::ABCD]:1").unwrap().unwrap(), "[::abcd]:1");
        for bad in [
            "a b",
            "a/b",
            "a\\b",
            "user@host",
            "host:port",
            "host:123456",
            ":80",
            "[::1",
            "[::1]x",
            "a\u{1}",
        ] {
            assert_eq!(host(bad), Err(TargetRefusal::BadHost), "{bad}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn piece() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("/".to_string()),
                Just("//".to_string()),
                Just(".".to_string()),
                Just("..".to_string()),
                Just("%2e".to_string()),
                Just("%2E".to_string()),
                Just("%2f".to_string()),
                Just("%5c".to_string()),
                Just("\\".to_string()),
                Just(";".to_string()),
                Just("%25".to_string()),
                Just("%00".to_string()),
                Just("%".to_string()),
                Just("%41".to_string()),
                Just("%c3%a9".to_string()),
                Just("%3B".to_string()),
                "[a-zA-Z0-9_~!$&'()*+,=:@-]{1,3}",
                "%[0-9a-fA-F]{2}",
            ]
        }

        fn target() -> impl Strategy<Value = String> {
            proptest::collection::vec(piece(), 0..12).prop_map(|v| format!("/{}", v.concat()))
        }

        fn options() -> impl Strategy<Value = Normalization> {
            (
                prop_oneof![
                    Just(EscapedSlashes::Reject),
                    Just(EscapedSlashes::Keep),
                    Just(EscapedSlashes::Unescape),
                    Just(EscapedSlashes::UnescapeAndRedirect)
                ],
                any::<bool>(),
                prop_oneof![
                    Just(PathParameters::Reject),
                    Just(PathParameters::Keep),
                    Just(PathParameters::Strip)
                ],
                prop_oneof![Just(DoubleEncoding::Reject), Just(DoubleEncoding::Keep)],
            )
                .prop_map(
                    |(escaped_slashes, merge_slashes, path_parameters, double_encoding)| Normalization {
                        escaped_slashes,
                        merge_slashes,
                        path_parameters,
                        double_encoding,
                        ..Normalization::default()
                    },
                )
        }

        /// The segments an upstream that decodes everything and resolves dot segments
        /// would see.
        fn decoded_segments(p: &str) -> Vec<String> {
            let mut bytes = Vec::new();
            let b = p.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    let v = u8::from_str_radix(&p[i + 1..i + 3], 16).unwrap();
                    bytes.push(v);
                    i += 3;
                } else {
                    bytes.push(b[i]);
                    i += 1;
                }
            }
            let mut out: Vec<String> = Vec::new();
            for seg in bytes.split(|&c| c == b'/' || c == b'\\') {
                match seg {
                    b"" | b"." => {}
                    b".." => {
                        out.pop();
                    }
                    s => out.push(String::from_utf8_lossy(s).into_owned()),
                }
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1500))]

            /// Normalising twice changes nothing, and a normal path passes the fast check
            /// or is found unchanged.
            #[test]
            fn normalisation_is_idempotent(p in target(), o in options()) {
                if is_normal(p.as_bytes(), &o) {
                    prop_assert_eq!(rewrite(p.as_bytes(), &o).map(|n| n.path), Ok(p.clone()), "the fast check agrees");
                }
                if let Ok(n) = path(&p, &o) {
                    let once = n.map_or(p.clone(), |n| n.path);
                    prop_assert_eq!(path(&once, &o), Ok(None), "{} -> {}", p, once);
                }
            }

            /// With the defaults, what passes is free of everything an upstream could
            /// read differently: no escaped slash, no dot segment, no `;`, no `%25XX`,
            /// no empty segment, and an upstream that decodes it sees the segments the
            /// router saw.
            #[test]
            fn the_defaults_leave_nothing_to_reinterpret(p in target()) {
                if let Ok(n) = path(&p, &Normalization::default()) {
                    let out = n.map_or(p.clone(), |n| n.path);
                    prop_assert!(out.starts_with('/'));
                    let upper = out.to_ascii_uppercase();
                    prop_assert!(!upper.contains("%2F") && !upper.contains("%5C") && !out.contains('\\'));
                    prop_assert!(!out.contains(';') && !out.contains("//"));
                    prop_assert!(!upper.contains("%2E") && !upper.contains("%00"));
                    let router: Vec<&str> = out.split('/').filter(|s| !s.is_empty()).collect();
                    prop_assert!(!router.iter().any(|s| *s == "." || *s == ".."));
                    prop_assert_eq!(decoded_segments(&out).len(), router.len());
                }
            }

            /// Every output holds only bytes a URI path may hold raw.
            #[test]
            fn the_output_is_a_valid_path(p in target(), o in options()) {
                if let Ok(Some(n)) = path(&p, &o) {
                    prop_assert!(n.path.bytes().all(|c| matches!(CLASS[c as usize], UNR | SUB | SLASH | PCT | SEMI)));
                    prop_assert!(http::uri::PathAndQuery::try_from(n.path.as_str()).is_ok());
                }
            }
        }
    }
}
