//! The HTTP/1.x request line, checked as its bytes arrive: a pure, incremental scanner
//! the gateway's stream wrapper (`gateway/src/edge/conn.rs`) feeds every read of a request
//! head with, **before** pingora's parser sees the bytes.
//!
//! Why a scanner below pingora: pingora 0.9.1 (`HttpSession::read_request`, on an
//! httparse `Token`/`Version` error) percent-encodes a target holding a space, a control
//! character, DEL, `"`, `<`, `>` or a byte that is not UTF-8 (`escape_illegal_request_line`)
//! and parses the rewritten head, so a check run in a proxy hook only ever sees
//! `/a%20b`, never the `/a b` the client sent; and it answers nothing to HTTP/0.9
//! (`GET /` with no version), whose head it waits for until a timeout. This scanner
//! sees the bytes as sent.
//!
//! What it refuses (each a 400, the connection then closed):
//!
//! - a method that is not an RFC 9110 token (or an empty one);
//! - a target byte outside RFC 3986: anything but visible ASCII, and `"`, `#`, `<`, `>`,
//!   `\`, `^`, `` ` ``, `{`, `|`, `}`; a space inside the target (a request line of more
//!   than three parts);
//! - an empty target (two spaces after the method);
//! - HTTP/0.9: a line that ends after the target;
//! - a version other than `HTTP/1.0` or `HTTP/1.1` (`PRI * HTTP/2.0`, the HTTP/2
//!   connection preface, passes);
//! - more than two CR/LF bytes before the request line.
//!
//! The rest of the head (line endings, fields, `%`-escapes, the target's form, limits)
//! is left to the strict head check (`framing::check_head`), which runs on pingora's
//! copy of the head. It looks at the request line only, at most [`MAX_LINE`] bytes of
//! it (a longer line is past every head limit, which the strict check refuses), keeps
//! a few bytes of state and allocates nothing.

use std::fmt;

/// The most request-line bytes the scanner looks at: pingora's own cap on a request
/// head. A line this long is over `limits.max_header_size` (validated to be at most
/// this), so the strict check refuses its head (414 or 431) whatever it holds;
/// pingora's rewriting only ever lengthens a line.
pub const MAX_LINE: usize = 1_048_575;

/// Why a request line was refused. Each answer is a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineRefusal {
    /// The method is empty or holds a byte that is not a token character.
    Method,
    /// The target holds a byte RFC 3986 does not allow, or a space.
    Target,
    /// Nothing between the method and the version (`GET  HTTP/1.1`).
    EmptyTarget,
    /// The line ends after the target: HTTP/0.9, or a line of two parts.
    Http09,
    /// A version other than `HTTP/1.0` or `HTTP/1.1`.
    Version,
    /// More than one empty line before the request line.
    LeadingEmptyLines,
}

impl LineRefusal {
    /// What was wrong, for the client and the log (never echoes request bytes).
    pub fn reason(self) -> &'static str {
        match self {
            LineRefusal::Method => "the request method is not a valid token",
            LineRefusal::Target => {
                "the request target holds a space, a control character, a non-ASCII byte or a character URIs do not allow"
            }
            LineRefusal::EmptyTarget => "the request line has no target",
            LineRefusal::Http09 => "an HTTP/0.9 request (no version) is not served",
            LineRefusal::Version => "an unsupported HTTP version",
            LineRefusal::LeadingEmptyLines => "empty lines before the request line",
        }
    }
}

impl fmt::Display for LineRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// What the scanner decided after a chunk of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The line is not complete yet: feed the next bytes.
    More,
    /// The line passed (or is past [`MAX_LINE`]); the rest of the head is not scanned.
    Pass,
    /// The line is refused.
    Refuse(LineRefusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// CR/LF bytes before the method (count in `len`).
    Lead,
    Method,
    Target,
    Version,
    /// Decided: `Pass` or `Refuse`.
    Done(Verdict),
}

/// An incremental request-line scanner: [`RequestLine::feed`] it the bytes of a head as
/// they arrive, split anywhere.
#[derive(Debug, Clone, Copy)]
pub struct RequestLine {
    phase: Phase,
    /// Bytes in the current part (in `Lead`: CR/LF bytes seen).
    len: usize,
    /// Bytes of the whole line so far.
    total: usize,
    /// The method so far is a prefix of `PRI`.
    pri: bool,
    /// The target is `*`.
    star: bool,
    /// The version's bytes (at most 8 are ever valid).
    version: [u8; 8],
}

impl Default for RequestLine {
    fn default() -> Self {
        RequestLine::new()
    }
}

/// RFC 9110 `tchar` (the method).
#[inline]
fn is_tchar(b: u8) -> bool {
    crate::framing::is_tchar(b)
}

/// An RFC 3986 URI byte (reserved, unreserved or `%`), without `#`: visible ASCII but
/// `"`, `#`, `<`, `>`, `\`, `^`, `` ` ``, `{`, `|` and `}`.
#[inline]
pub fn is_target_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
        && !matches!(
            b,
            b'"' | b'#' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
        )
}

impl RequestLine {
    /// A scanner at the start of a request head.
    pub const fn new() -> RequestLine {
        RequestLine {
            phase: Phase::Lead,
            len: 0,
            total: 0,
            pri: true,
            star: false,
            version: [0; 8],
        }
    }

    /// Whether the line has been decided (nothing more to scan).
    #[inline]
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done(_))
    }

    /// Scans the next bytes of the head. Once decided, the same verdict is returned and
    /// nothing more is looked at.
    pub fn feed(&mut self, data: &[u8]) -> Verdict {
        for &b in data {
            if let Some(v) = self.byte(b) {
                self.phase = Phase::Done(v);
                return v;
            }
        }
        match self.phase {
            Phase::Done(v) => v,
            _ => Verdict::More,
        }
    }

    /// One byte; `Some` once decided.
    #[inline]
    fn byte(&mut self, b: u8) -> Option<Verdict> {
        self.total += 1;
        if self.total > MAX_LINE {
            return Some(Verdict::Pass);
        }
        let refuse = |r| Some(Verdict::Refuse(r));
        match self.phase {
            Phase::Done(v) => Some(v),
            Phase::Lead => {
                if b == b'\r' || b == b'\n' {
                    self.len += 1;
                    if self.len > 2 {
                        return refuse(LineRefusal::LeadingEmptyLines);
                    }
                    return None;
                }
                self.phase = Phase::Method;
                self.len = 0;
                self.byte_method(b)
            }
            Phase::Method => self.byte_method(b),
            Phase::Target => match b {
                b' ' => {
                    if self.len == 0 {
                        return refuse(LineRefusal::EmptyTarget);
                    }
                    self.phase = Phase::Version;
                    self.len = 0;
                    None
                }
                b'\r' | b'\n' => refuse(if self.len == 0 {
                    LineRefusal::EmptyTarget
                } else {
                    LineRefusal::Http09
                }),
                _ if is_target_byte(b) => {
                    self.star = self.len == 0 && b == b'*';
                    self.len += 1;
                    None
                }
                _ => refuse(LineRefusal::Target),
            },
            Phase::Version => match b {
                b'\r' | b'\n' => {
                    let v = &self.version[..self.len];
                    let ok =
                        v == b"HTTP/1.1" || v == b"HTTP/1.0" || (v == b"HTTP/2.0" && self.pri && self.star);
                    Some(if ok {
                        Verdict::Pass
                    } else {
                        Verdict::Refuse(LineRefusal::Version)
                    })
                }
                // `GET /a b HTTP/1.1`: the target held a space.
                b' ' => refuse(LineRefusal::Target),
                _ if self.len < self.version.len() => {
                    self.version[self.len] = b;
                    self.len += 1;
                    None
                }
                // Longer than any version: either the target held a space and goes
                // on, or the version is invalid.
                _ => refuse(if is_target_byte(b) {
                    LineRefusal::Version
                } else {
                    LineRefusal::Target
                }),
            },
        }
    }

    #[inline]
    fn byte_method(&mut self, b: u8) -> Option<Verdict> {
        if b == b' ' {
            if self.len == 0 {
                return Some(Verdict::Refuse(LineRefusal::Method));
            }
            self.pri &= self.len == 3;
            self.phase = Phase::Target;
            self.len = 0;
            return None;
        }
        if !is_tchar(b) {
            return Some(Verdict::Refuse(if b == b'\r' || b == b'\n' {
                LineRefusal::Http09
            } else {
                LineRefusal::Method
            }));
        }
        self.pri &= self.len < 3 && b == b"PRI"[self.len];
        self.len += 1;
        None
    }
}

/// The verdict on a whole head (or its start), as [`RequestLine::feed`] gives it.
pub fn check(data: &[u8]) -> Verdict {
    RequestLine::new().feed(data)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn split_everywhere(line: &[u8]) -> Verdict {
        let whole = check(line);
        for at in 0..=line.len() {
            let mut s = RequestLine::new();
            let a = s.feed(&line[..at]);
            let v = if a == Verdict::More {
                s.feed(&line[at..])
            } else {
                a
            };
            assert_eq!(v, whole, "split at {at} of {:?}", line.escape_ascii().to_string());
        }
        let mut s = RequestLine::new();
        let mut v = Verdict::More;
        for b in line {
            v = s.feed(std::slice::from_ref(b));
            if v != Verdict::More {
                break;
            }
        }
        assert_eq!(v, whole, "byte at a time");
        whole
    }

    #[test]
    fn valid_lines_pass() {
        for line in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET /a%20b?x=1&y=%7B HTTP/1.1\r\n",
            b"POST /upload HTTP/1.0\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"GET http://example.com:8080/p?q HTTP/1.1\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n",
            b"\r\nGET / HTTP/1.1\r\n",
            b"GET / HTTP/1.1\n",
            b"M-SEARCH /~user/!$&'()*+,;=:@-._ HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert_eq!(split_everywhere(line), Verdict::Pass, "{}", line.escape_ascii());
        }
    }

    #[test]
    fn illegal_targets_methods_and_versions_are_refused() {
        use LineRefusal::*;
        let cases: &[(&[u8], LineRefusal)] = &[
            (b"GET /a b HTTP/1.1\r\n", Target),
            (b"GET /a\x01b HTTP/1.1\r\n", Target),
            (b"GET /a\tb HTTP/1.1\r\n", Target),
            (b"GET /a\x7fb HTTP/1.1\r\n", Target),
            (b"GET /\xc3\xa9 HTTP/1.1\r\n", Target),
            (b"GET /\xff HTTP/1.1\r\n", Target),
            (b"GET /\"q\" HTTP/1.1\r\n", Target),
            (b"GET /<x> HTTP/1.1\r\n", Target),
            (b"GET /a\\b HTTP/1.1\r\n", Target),
            (b"GET /a^b HTTP/1.1\r\n", Target),
            (b"GET /a`b HTTP/1.1\r\n", Target),
            (b"GET /{a} HTTP/1.1\r\n", Target),
            (b"GET /a|b HTTP/1.1\r\n", Target),
            (b"GET /a#f HTTP/1.1\r\n", Target),
            (b"GET /a b c d e f g h i HTTP/1.1\r\n", Target),
            (b"GET /a bcdefghijk\r\n", Version),
            (b"G(T / HTTP/1.1\r\n", Method),
            (b"G\xc3\x89T / HTTP/1.1\r\n", Method),
            (b" GET / HTTP/1.1\r\n", Method),
            (b"GET  / HTTP/1.1\r\n", EmptyTarget),
            (b"GET \r\n", EmptyTarget),
            (b"GET /\r\n", Http09),
            (b"GET /\n", Http09),
            (b"GET\r\n", Http09),
            (b"GET / HTTP/2.0\r\n", Version),
            (b"GET * HTTP/2.0\r\n", Version),
            (b"PRIX * HTTP/2.0\r\n", Version),
            (b"GET / http/1.1\r\n", Version),
            (b"GET / HTTP/1.1 \r\n", Target),
            (b"GET / HTTP/1.12\r\n", Version),
            (b"GET / HTTP/1.1x\r\n", Version),
            (b"\r\n\r\nGET / HTTP/1.1\r\n", LeadingEmptyLines),
        ];
        for (line, want) in cases {
            assert_eq!(
                split_everywhere(line),
                Verdict::Refuse(*want),
                "{}",
                line.escape_ascii()
            );
        }
    }

    #[test]
    fn an_incomplete_line_asks_for_more_and_a_decision_sticks() {
        let mut s = RequestLine::new();
        assert_eq!(s.feed(b"GET /slow"), Verdict::More);
        assert!(!s.is_done());
        assert_eq!(s.feed(b" HTTP/1.1\r"), Verdict::Pass);
        assert!(s.is_done());
        // The rest of the head and any body are not looked at.
        assert_eq!(s.feed(b"\nX: \x00\x01 anything \xff\r\n\r\n"), Verdict::Pass);
    }
}
