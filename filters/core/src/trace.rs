//! W3C trace context (`traceparent`, `tracestate`) and the sampling decision: pure
//! cores, shared by the gateway's tracing and the filters that call out (forward auth
//! sends a `traceparent` to its service and records a child span).
//!
//! The gateway puts a [`TraceContext`] into [`crate::FilterCtx::ext`] when tracing is on;
//! a filter that calls another service reads it, sends [`TraceContext::traceparent`]
//! with a span id of its own, and, when the trace is sampled, leaves a [`ChildSpan`] in
//! [`ChildSpans`] (also in `ext`), which the gateway exports with the request's spans.

use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;

/// A W3C trace id (16 bytes, never all zero).
pub type TraceId = [u8; 16];
/// A W3C span (parent) id (8 bytes, never all zero).
pub type SpanId = [u8; 8];

/// What a valid incoming `traceparent` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// The trace the request belongs to.
    pub trace_id: TraceId,
    /// The caller's span: the parent of the gateway's server span.
    pub span_id: SpanId,
    /// The caller's `sampled` flag.
    pub sampled: bool,
}

fn unhex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = unhex(s[2 * i])? << 4 | unhex(s[2 * i + 1])?;
    }
    Some(out)
}

/// Writes `bytes` as lower-case hex into `out` (twice as long).
pub fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// `bytes` as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Parses a `traceparent` header (W3C Trace Context level 1, section 3.2). `None` for
/// anything invalid: upper-case hex, a wrong length, version `ff`, an all-zero trace or
/// span id, or a version-00 header with anything after the flags. A later version is
/// read by its first four fields, as the spec asks.
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = parse_hex::<1>(&v[0..2])?[0];
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = parse_hex::<16>(&v[3..35])?;
    let span_id = parse_hex::<8>(&v[36..52])?;
    let flags = parse_hex::<1>(&v[53..55])?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// A version-00 `traceparent`: `00-<trace id>-<span id>-<flags>`.
pub fn format_traceparent(trace_id: &TraceId, span_id: &SpanId, sampled: bool) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    write_hex(trace_id, &mut out[3..35]);
    write_hex(span_id, &mut out[36..52]);
    out[53] = b'0';
    out[54] = if sampled { b'1' } else { b'0' };
    out
}

/// Whether a `tracestate` value may be passed on: at most 512 characters of printable
/// ASCII and at most 32 list members (W3C section 3.3). An invalid one is dropped, the
/// `traceparent` still honoured.
pub fn valid_tracestate(v: &[u8]) -> bool {
    v.len() <= 512
        && v.iter().all(|&b| (0x20..=0x7e).contains(&b))
        && v.iter().filter(|&&b| b == b',').count() < 32
}

/// A new random span id (never zero), from `random` (inject a seeded source in tests).
pub fn span_id_from(mut random: impl FnMut() -> u64) -> SpanId {
    loop {
        let n = random();
        if n != 0 {
            return n.to_be_bytes();
        }
    }
}

/// A new random trace id (never zero), from `random`.
pub fn trace_id_from(mut random: impl FnMut() -> u128) -> TraceId {
    loop {
        let n = random();
        if n != 0 {
            return n.to_be_bytes();
        }
    }
}

/// A new span id from the thread-local generator.
pub fn new_span_id() -> SpanId {
    span_id_from(rand::random)
}

/// A new trace id from the thread-local generator.
pub fn new_trace_id() -> TraceId {
    trace_id_from(rand::random)
}

/// Which requests are recorded: parent-based (an incoming `traceparent`'s flag decides),
/// else a ratio of trace ids, as OpenTelemetry's `ParentBased(TraceIdRatioBased)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// Trace ids whose low 64 bits are below this are sampled; `None`: all of them.
    threshold: Option<u64>,
    parent_based: bool,
}

impl Sampler {
    /// A sampler keeping `ratio` (clamped to 0..=1) of new traces; with `parent_based`,
    /// a request with a valid `traceparent` follows its `sampled` flag.
    pub fn new(ratio: f64, parent_based: bool) -> Sampler {
        let ratio = ratio.clamp(0.0, 1.0);
        let threshold = if ratio >= 1.0 {
            None
        } else {
            // 2^64 * ratio, below 2^64 as ratio < 1.
            Some((ratio * 18_446_744_073_709_551_616.0) as u64)
        };
        Sampler {
            threshold,
            parent_based,
        }
    }

    /// Whether the trace `trace_id` (with `parent`, if the request had a valid
    /// `traceparent`) is recorded. Deterministic in the trace id, so services that
    /// sample by the same ratio keep the same traces.
    pub fn sample(&self, parent: Option<&Parent>, trace_id: &TraceId) -> bool {
        if self.parent_based {
            if let Some(p) = parent {
                return p.sampled;
            }
        }
        match self.threshold {
            None => true,
            Some(t) => {
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace_id[8..]);
                u64::from_be_bytes(low) < t
            }
        }
    }
}

/// The request's trace, for filters that call out: what they send as `traceparent`
/// (with a span id of their own) and whether to record a [`ChildSpan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The request's trace.
    pub trace_id: TraceId,
    /// The gateway's server span: the parent of a filter's child span.
    pub span_id: SpanId,
    /// Whether the trace is recorded (and propagated as sampled).
    pub sampled: bool,
}

impl TraceContext {
    /// The `traceparent` for a call made as span `child`.
    pub fn traceparent(&self, child: &SpanId) -> HeaderValue {
        let v = format_traceparent(&self.trace_id, child, self.sampled);
        HeaderValue::from_bytes(&v).unwrap_or(HeaderValue::from_static(""))
    }
}

/// A span attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// A string.
    Str(Arc<str>),
    /// A static string.
    Static(&'static str),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

/// A span a filter recorded for a call it made (an auth service's check).
#[derive(Debug, Clone, PartialEq)]
pub struct ChildSpan {
    /// The span's name, e.g. `forward_auth`.
    pub name: &'static str,
    /// Its id (what the call's `traceparent` carried).
    pub span_id: SpanId,
    /// When the call started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Attributes (OpenTelemetry semantic-convention names where one fits).
    pub attributes: Vec<(&'static str, AttrValue)>,
    /// Set when the call failed: the span's status is Error with this message.
    pub error: Option<&'static str>,
}

/// The child spans filters recorded for the request (kept in `FilterCtx::ext`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChildSpans(pub Vec<ChildSpan>);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read() {
        let p = parse_traceparent(TP.as_bytes()).unwrap();
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.span_id), "00f067aa0ba902b7");
        assert!(p.sampled);
        let unsampled = parse_traceparent(TP.replace("-01", "-00").as_bytes()).unwrap();
        assert!(!unsampled.sampled);
        // Other flag bits do not make it sampled; bit 0 does.
        assert!(
            !parse_traceparent(TP.replace("-01", "-02").as_bytes())
                .unwrap()
                .sampled
        );
        assert!(
            parse_traceparent(TP.replace("-01", "-03").as_bytes())
                .unwrap()
                .sampled
        );
        // A later version: the first four fields, and more after a dash.
        let future = format!("{}-extra", TP.replacen("00", "cc", 1));
        assert_eq!(parse_traceparent(future.as_bytes()).unwrap().trace_id, p.trace_id);
    }

    #[test]
    fn an_invalid_traceparent_is_ignored() {
        for bad in [
            "",
            "00",
            &TP[..54],
            &format!("{TP}-"),
            &format!("{TP}x"),
            &TP.to_uppercase(),
            &TP.replacen("00", "ff", 1),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0z",
            &format!("{}x", TP.replacen("00", "cc", 1)),
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn traceparent_formats_and_round_trips() {
        let p = parse_traceparent(TP.as_bytes()).unwrap();
        let out = format_traceparent(&p.trace_id, &p.span_id, true);
        assert_eq!(std::str::from_utf8(&out).unwrap(), TP);
        let out = format_traceparent(&p.trace_id, &[1, 2, 3, 4, 5, 6, 7, 8], false);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-00"
        );
        let ctx = TraceContext {
            trace_id: p.trace_id,
            span_id: p.span_id,
            sampled: true,
        };
        assert_eq!(ctx.traceparent(&p.span_id), TP);
    }

    #[test]
    fn tracestate_is_bounded() {
        assert!(valid_tracestate(b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        assert!(!valid_tracestate(&[b'a'; 513]));
        assert!(!valid_tracestate(b"a=b\nc=d"));
        assert!(!valid_tracestate(",".repeat(32).as_bytes()));
    }

    #[test]
    fn ids_are_never_zero() {
        let mut seq = [0u64, 0, 7].into_iter();
        assert_eq!(span_id_from(|| seq.next().unwrap()), 7u64.to_be_bytes());
        let mut seq = [0u128, 9].into_iter();
        assert_eq!(trace_id_from(|| seq.next().unwrap()), 9u128.to_be_bytes());
        assert_ne!(new_span_id(), new_span_id());
    }

    #[test]
    fn the_sampler_follows_the_parent_then_the_ratio() {
        let id = |low: u64| {
            let mut t = [0xab; 16];
            t[8..].copy_from_slice(&low.to_be_bytes());
            t
        };
        let sampled = Parent {
            trace_id: id(u64::MAX),
            span_id: [1; 8],
            sampled: true,
        };
        let unsampled = Parent {
            sampled: false,
            ..sampled
        };
        let none = Sampler::new(0.0, true);
        assert!(!none.sample(None, &id(0)));
        assert!(none.sample(Some(&sampled), &id(0)));
        let all = Sampler::new(1.0, true);
        assert!(all.sample(None, &id(u64::MAX)));
        assert!(!all.sample(Some(&unsampled), &id(0)));
        // Not parent-based: the ratio decides, whatever the parent says.
        let ratio_only = Sampler::new(1.0, false);
        assert!(ratio_only.sample(Some(&unsampled), &id(0)));
        let half = Sampler::new(0.5, false);
        assert!(half.sample(None, &id(u64::MAX / 2 - 1)));
        assert!(!half.sample(None, &id(u64::MAX / 2 + 2)));
        // Over many random ids, close to the ratio.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let tenth = Sampler::new(0.1, true);
        let kept = (0..20_000).filter(|_| tenth.sample(None, &id(next()))).count();
        assert!((1_700..2_300).contains(&kept), "{kept}");
        assert_eq!(Sampler::new(7.0, true), all);
    }
}
