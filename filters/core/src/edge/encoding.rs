//! Content-coding negotiation and the compression decision for one response.
//!
//! Pure: the gateway feeds it the request's `Accept-Encoding` and the response's head,
//! and runs pingora's encoders on what it decides.
//!
//! - [`AcceptEncoding`] reads `Accept-Encoding` with its q-values (RFC 9110 §12.5.3):
//!   `gzip;q=0` refuses gzip, `*` stands for every coding not named, `identity;q=0` (or
//!   `*;q=0` without an `identity` entry) refuses an uncoded body.
//! - [`decide`] chooses, for one response: pass it as it is, compress it with the
//!   client's best-weighted coding among the route's, or decompress an upstream coding
//!   the client does not accept.
//! - [`edit_headers`] makes the head match: `Content-Encoding`, no `Content-Length` or
//!   `Accept-Ranges` once the body changes, a weak `ETag` (RFC 9110 §8.8.3), and
//!   `Vary: Accept-Encoding` whenever the answer depended on it.

use http::{header, HeaderValue};

use crate::HeaderEdit;

/// A content coding the gateway can produce and undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    /// `gzip` (RFC 9110 §8.4.1.3).
    Gzip,
    /// `br`, Brotli (RFC 7932).
    Brotli,
    /// `zstd`, Zstandard (RFC 8878).
    Zstd,
}

impl Coding {
    /// Every coding, in the default order of preference on equal weights.
    pub const ALL: [Coding; 3] = [Coding::Brotli, Coding::Zstd, Coding::Gzip];

    /// The coding's token in `Accept-Encoding` and `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
        }
    }

    /// The coding a token names (case-insensitive; `x-gzip` is gzip, RFC 9110 §8.4.1.3).
    pub fn parse(token: &str) -> Option<Coding> {
        let t = token.trim();
        if t.eq_ignore_ascii_case("gzip") || t.eq_ignore_ascii_case("x-gzip") {
            Some(Coding::Gzip)
        } else if t.eq_ignore_ascii_case("br") {
            Some(Coding::Brotli)
        } else if t.eq_ignore_ascii_case("zstd") {
            Some(Coding::Zstd)
        } else {
            None
        }
    }

    fn index(self) -> usize {
        match self {
            Coding::Gzip => 0,
            Coding::Brotli => 1,
            Coding::Zstd => 2,
        }
    }
}

/// A q-value in thousandths: `1000` is `q=1`, `0` is "not acceptable".
pub type Weight = u16;

/// What a request's `Accept-Encoding` says, coding by coding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AcceptEncoding {
    /// Whether the request had the field at all.
    present: bool,
    /// Weights given by name to gzip, br and zstd ([`Coding::index`]).
    named: [Option<Weight>; 3],
    /// The weight given to `identity` by name.
    identity: Option<Weight>,
    /// The weight given to `*`.
    any: Option<Weight>,
    /// Other codings named with a weight above zero (`deflate`, `compress`, ...), by
    /// their lower-case token; only for [`AcceptEncoding::accepts_token`].
    others: [Option<[u8; 16]>; 4],
}

impl AcceptEncoding {
    /// Reads every `Accept-Encoding` field line of a request. Malformed members (a bad
    /// q-value, an empty token) are skipped, as if not sent; the first entry for a
    /// coding counts.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> AcceptEncoding {
        let mut ae = AcceptEncoding::default();
        for value in values {
            ae.present = true;
            let Ok(text) = value.to_str() else { continue };
            for member in text.split(',') {
                let mut parts = member.split(';');
                let token = parts.next().unwrap_or("").trim();
                if token.is_empty() {
                    continue;
                }
                let mut weight = Some(1000);
                for param in parts {
                    let Some((k, v)) = param.split_once('=') else {
                        weight = None;
                        break;
                    };
                    if k.trim().eq_ignore_ascii_case("q") {
                        weight = parse_q(v.trim());
                    }
                }
                let Some(w) = weight else { continue };
                ae.record(token, w);
            }
        }
        ae
    }

    fn record(&mut self, token: &str, w: Weight) {
        if token == "*" {
            self.any.get_or_insert(w);
        } else if token.eq_ignore_ascii_case("identity") {
            self.identity.get_or_insert(w);
        } else if let Some(c) = Coding::parse(token) {
            self.named[c.index()].get_or_insert(w);
        } else if w > 0 && token.len() <= 16 {
            let mut buf = [0u8; 16];
            for (b, t) in buf.iter_mut().zip(token.bytes()) {
                *b = t.to_ascii_lowercase();
            }
            if let Some(slot) = self.others.iter_mut().find(|s| s.is_none()) {
                *slot = Some(buf);
            }
        }
    }

    /// Whether the request sent `Accept-Encoding`.
    pub fn is_present(&self) -> bool {
        self.present
    }

    /// The weight the client gives `coding`: its own entry, else `*`'s, else 0. Without
    /// the field, 0 too: RFC 9110 allows any coding then, but clients that send no
    /// `Accept-Encoding` are mostly ones that cannot decode (as nginx and Envoy assume).
    pub fn weight(&self, coding: Coding) -> Weight {
        self.named[coding.index()].or(self.any).unwrap_or(0)
    }

    /// The weight the client gives an uncoded body: `identity`'s entry, else 0 when
    /// `*;q=0` excludes it, else 1000 (always acceptable unless excluded).
    pub fn identity_weight(&self) -> Weight {
        match (self.identity, self.any) {
            (Some(w), _) => w,
            (None, Some(0)) => 0,
            _ => 1000,
        }
    }

    /// The weight the client gave `identity` itself (or through `*`), when it did:
    /// only then does `identity` compete with the codings it named.
    pub fn identity_preference(&self) -> Option<Weight> {
        self.identity.or(self.any.filter(|w| *w == 0))
    }

    /// Whether the client takes a body already coded as `token` (an upstream's
    /// `Content-Encoding`) as it is.
    pub fn accepts_token(&self, token: &str) -> bool {
        let token = token.trim();
        if token.eq_ignore_ascii_case("identity") {
            return self.identity_weight() > 0;
        }
        if let Some(c) = Coding::parse(token) {
            return self.weight(c) > 0;
        }
        let named = self.others.iter().flatten().any(|o| {
            let len = o.iter().position(|b| *b == 0).unwrap_or(o.len());
            token.len() == len && token.as_bytes().eq_ignore_ascii_case(&o[..len])
        });
        named || self.any.is_some_and(|w| w > 0)
    }

    /// The coding of `offered` (in the route's order of preference) the client weights
    /// highest, above zero; on equal weights the earlier one. `None` when it takes none.
    pub fn choose(&self, offered: &[Coding]) -> Option<Coding> {
        let mut best: Option<(Coding, Weight)> = None;
        for &c in offered {
            let w = self.weight(c);
            if w > 0 && best.is_none_or(|(_, bw)| w > bw) {
                best = Some((c, w));
            }
        }
        best.map(|(c, _)| c)
    }
}

/// `q=` value as thousandths: `0`, `0.5`, `1`, `1.000`; anything else is malformed.
fn parse_q(v: &str) -> Option<Weight> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: Weight = 0;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += Weight::from(b - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Media types eligible for compression: `text/html`, `text/*` (a whole type), or
/// `application/*+json` (a structured-syntax suffix). Compared case-insensitively,
/// parameters ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaPattern {
    /// `type/subtype`.
    Exact(String),
    /// `type/*`.
    AnySubtype(String),
    /// `type/*+suffix`: the type and the suffix (with its `+`).
    Suffix(String, String),
}

impl MediaPattern {
    /// Parses a pattern; `None` when it is not `type/subtype`, `type/*` or `type/*+suffix`.
    pub fn parse(s: &str) -> Option<MediaPattern> {
        let s = s.trim().to_ascii_lowercase();
        let (ty, sub) = s.split_once('/')?;
        let token = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
        };
        if !token(ty) {
            return None;
        }
        if sub == "*" {
            return Some(MediaPattern::AnySubtype(ty.to_string()));
        }
        if let Some(suffix) = sub.strip_prefix("*+") {
            return token(suffix).then(|| MediaPattern::Suffix(ty.to_string(), format!("+{suffix}")));
        }
        token(sub).then(|| MediaPattern::Exact(format!("{ty}/{sub}")))
    }

    /// Whether `media_type` (lower case, no parameters) matches.
    pub fn matches(&self, media_type: &str) -> bool {
        let (ty, sub) = media_type.split_once('/').unwrap_or((media_type, ""));
        match self {
            MediaPattern::Exact(m) => m == media_type,
            MediaPattern::AnySubtype(t) => t == ty,
            MediaPattern::Suffix(t, suffix) => t == ty && sub.ends_with(suffix.as_str()),
        }
    }
}

/// The media types compressed by default: text, JSON, JavaScript, XML, SVG, WebAssembly
/// and the structured `+json`/`+xml` types.
pub const DEFAULT_MEDIA_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/*+json",
    "application/javascript",
    "application/xml",
    "application/*+xml",
    "application/wasm",
    "image/svg+xml",
];

/// Streaming types never compressed whatever the patterns say: an encoder holds bytes
/// back until it has enough to compress, which would stall events and gRPC messages.
const STREAMING_TYPES: &[&str] = &["text/event-stream", "application/grpc"];

/// A route's compression, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The codings offered, in order of preference on equal client weights.
    pub codings: Vec<Coding>,
    /// Smallest body (by `Content-Length`) worth compressing; a body of unknown length
    /// is compressed.
    pub min_size: u64,
    /// Media types compressed.
    pub media_types: Vec<MediaPattern>,
    /// Whether a coded upstream body the client does not accept is decoded.
    pub decompress: bool,
}

/// The response facts a decision needs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    /// The response status.
    pub status: u16,
    /// Whether the request was `HEAD` (no body follows).
    pub head: bool,
    /// `Content-Type`, as sent.
    pub content_type: Option<&'a str>,
    /// `Content-Encoding`, as sent.
    pub content_encoding: Option<&'a str>,
    /// `Content-Length`, when sent and valid.
    pub content_length: Option<u64>,
    /// Whether the response is a part (`Content-Range`).
    pub partial: bool,
    /// Whether `Cache-Control` says `no-transform` (RFC 9111 §5.2.2.6).
    pub no_transform: bool,
}

impl<'a> Facts<'a> {
    /// The facts of a response head (`status` and `headers`) to a `HEAD` request or not.
    pub fn of(status: u16, headers: &'a http::HeaderMap, head: bool) -> Facts<'a> {
        let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
        Facts {
            status,
            head,
            content_type: text(header::CONTENT_TYPE),
            content_encoding: text(header::CONTENT_ENCODING),
            content_length: text(header::CONTENT_LENGTH).and_then(|v| v.trim().parse().ok()),
            partial: headers.contains_key(header::CONTENT_RANGE),
            no_transform: headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
                v.to_str().is_ok_and(|s| {
                    s.split(',')
                        .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
                })
            }),
        }
    }

    fn has_body(&self) -> bool {
        !(self.head || self.status < 200 || self.status == 204 || self.status == 304)
    }

    /// The coding of the body, `None` for an uncoded one (absent, empty or `identity`).
    fn coding(&self) -> Option<&'a str> {
        self.content_encoding
            .map(str::trim)
            .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
    }
}

/// What to do with one response's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send it as it is.
    Pass,
    /// Compress it.
    Compress(Coding),
    /// Decode the upstream's coding: the client does not accept it.
    Decompress(Coding),
}

/// The decision for one response, and whether it depended on `Accept-Encoding` (then
/// the response carries `Vary: Accept-Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// What to do with the body.
    pub action: Action,
    /// Whether another `Accept-Encoding` could have changed the answer.
    pub varies: bool,
}

/// Decides what to do with one response body under `policy` for a client that sent
/// `accept`.
///
/// - Nothing changes a response without a body, a part (`206`, `Content-Range`), or one
///   marked `no-transform`.
/// - A coded body passes when the client accepts its coding; otherwise it is decoded
///   when `policy.decompress` and the coding is one of [`Coding`] (a stacked coding,
///   `gzip, br`, passes as it is).
/// - An uncoded body is compressed with the client's best-weighted coding of the
///   policy's when its media type is listed, its length (if known) reaches `min_size`
///   and the client does not weight `identity` above that coding. When the client
///   refuses `identity` (`identity;q=0`), size and type do not hold it back.
pub fn decide(policy: &Policy, accept: &AcceptEncoding, facts: &Facts<'_>) -> Decision {
    let pass = |varies| Decision {
        action: Action::Pass,
        varies,
    };
    if !facts.has_body() || facts.partial || facts.status == 206 || facts.no_transform {
        return pass(false);
    }
    if let Some(coding) = facts.coding() {
        if !policy.decompress {
            return pass(false);
        }
        return match Coding::parse(coding) {
            Some(c) if !accept.accepts_token(coding) => Decision {
                action: Action::Decompress(c),
                varies: true,
            },
            Some(_) => pass(true),
            None => pass(false),
        };
    }
    let media = facts
        .content_type
        .map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    let streaming = media.as_deref().is_some_and(|m| {
        STREAMING_TYPES
            .iter()
            .any(|s| m == *s || m.starts_with("application/grpc"))
    });
    if streaming {
        return pass(false);
    }
    let listed = media
        .as_deref()
        .is_some_and(|m| policy.media_types.iter().any(|p| p.matches(m)));
    let large = facts.content_length.is_none_or(|l| l >= policy.min_size);
    let identity = accept.identity_weight();
    let eligible = listed && large;
    if !eligible && identity > 0 {
        return pass(false);
    }
    // An uncoded body is always acceptable, but that is no preference: `identity` holds
    // compression back only when the client weighted it above the chosen coding.
    let preferred = accept.identity_preference().unwrap_or(0);
    match accept.choose(&policy.codings) {
        Some(c) if accept.weight(c) >= preferred => Decision {
            action: Action::Compress(c),
            varies: true,
        },
        _ => pass(eligible),
    }
}

const ACCEPT_ENCODING: &str = "accept-encoding";

/// Makes the response head match `decision`: for a changed body, `Content-Encoding`
/// set (or removed when decoded), `Content-Length` and `Accept-Ranges` removed (the
/// length is no longer known, ranges of the new body are not served), a strong `ETag`
/// weakened (the bytes differ; RFC 9110 §8.8.3); `Vary: Accept-Encoding` whenever the
/// decision depended on it.
pub fn edit_headers(decision: Decision, resp: &mut dyn HeaderEdit) {
    if decision.varies {
        add_vary(resp, ACCEPT_ENCODING);
    }
    let coding = match decision.action {
        Action::Pass => return,
        Action::Compress(c) => Some(c),
        Action::Decompress(_) => None,
    };
    match coding {
        Some(c) => resp.set(header::CONTENT_ENCODING, HeaderValue::from_static(c.token())),
        None => resp.remove(&header::CONTENT_ENCODING),
    }
    resp.remove(&header::CONTENT_LENGTH);
    resp.remove(&header::ACCEPT_RANGES);
    let etag = resp
        .headers()
        .get(header::ETAG)
        .map(|e| (weaken_etag(e), e.as_bytes().starts_with(b"W/")));
    match etag {
        Some((Some(weak), _)) => resp.set(header::ETAG, weak),
        // Not an entity tag at all: it cannot be made weak, so it goes (as nginx does).
        Some((None, false)) => resp.remove(&header::ETAG),
        _ => {}
    }
}

/// `etag` made weak (`"x"` → `W/"x"`); `None` when it is weak already (or not an
/// entity tag).
pub fn weaken_etag(etag: &HeaderValue) -> Option<HeaderValue> {
    let b = etag.as_bytes();
    if b.starts_with(b"W/") || !b.starts_with(b"\"") {
        return None;
    }
    let mut weak = Vec::with_capacity(b.len() + 2);
    weak.extend_from_slice(b"W/");
    weak.extend_from_slice(b);
    HeaderValue::from_bytes(&weak).ok()
}

/// Adds `name` to the response's `Vary` unless it is there already or `Vary: *`.
pub fn add_vary(resp: &mut dyn HeaderEdit, name: &str) {
    let mut present = false;
    for v in resp.headers().get_all(header::VARY) {
        let Ok(s) = v.to_str() else { continue };
        if s.split(',')
            .map(str::trim)
            .any(|f| f == "*" || f.eq_ignore_ascii_case(name))
        {
            present = true;
        }
    }
    if present {
        return;
    }
    let value = match resp.headers().get(header::VARY).and_then(|v| v.to_str().ok()) {
        Some(prev) if resp.headers().get_all(header::VARY).iter().count() == 1 => {
            HeaderValue::from_str(&format!("{prev}, {}", vary_name(name))).ok()
        }
        Some(_) => None,
        None => HeaderValue::from_str(vary_name(name)).ok(),
    };
    match value {
        Some(v) => resp.set(header::VARY, v),
        None => {
            if let Ok(v) = HeaderValue::from_str(vary_name(name)) {
                resp.append(header::VARY, v);
            }
        }
    }
}

fn vary_name(name: &str) -> &str {
    if name == ACCEPT_ENCODING {
        "Accept-Encoding"
    } else {
        name
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn ae(s: &str) -> AcceptEncoding {
        AcceptEncoding::parse([&HeaderValue::from_str(s).unwrap()])
    }

    fn policy() -> Policy {
        Policy {
            codings: Coding::ALL.to_vec(),
            min_size: 1024,
            media_types: DEFAULT_MEDIA_TYPES
                .iter()
                .map(|p| MediaPattern::parse(p).unwrap())
                .collect(),
            decompress: true,
        }
    }

    fn facts(ct: &str, len: Option<u64>, ce: Option<&'static str>) -> Facts<'static> {
        Facts {
            status: 200,
            content_type: Some(Box::leak(ct.to_string().into_boxed_str())),
            content_length: len,
            content_encoding: ce,
            ..Facts::default()
        }
    }

    #[test]
    fn q_values_are_read_in_thousandths() {
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("0"), Some(0));
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("0.125"), Some(125));
        assert_eq!(parse_q("0.1234"), None);
        assert_eq!(parse_q("1.5"), None);
        assert_eq!(parse_q("2"), None);
        assert_eq!(parse_q(""), None);
    }

    #[test]
    fn the_highest_weight_wins_and_ties_go_to_the_route_order() {
        let a = ae("gzip;q=0.8, br;q=0.5, zstd;q=0.9");
        assert_eq!(a.choose(&Coding::ALL), Some(Coding::Zstd));
        let a = ae("gzip, br");
        assert_eq!(a.choose(&Coding::ALL), Some(Coding::Brotli));
        assert_eq!(a.choose(&[Coding::Gzip, Coding::Brotli]), Some(Coding::Gzip));
        let a = ae("GZIP;Q=1");
        assert_eq!(a.choose(&Coding::ALL), Some(Coding::Gzip));
    }

    #[test]
    fn zero_weights_refuse_and_star_stands_for_the_rest() {
        let a = ae("gzip;q=0, *");
        assert_eq!(a.weight(Coding::Gzip), 0);
        assert_eq!(a.weight(Coding::Brotli), 1000);
        assert_eq!(a.choose(&[Coding::Gzip]), None);
        assert_eq!(a.choose(&[Coding::Gzip, Coding::Zstd]), Some(Coding::Zstd));
        let a = ae("*;q=0");
        assert_eq!(a.choose(&Coding::ALL), None);
        assert_eq!(a.identity_weight(), 0);
        let a = ae("*;q=0, identity");
        assert_eq!(a.identity_weight(), 1000);
        let a = ae("identity;q=0, gzip");
        assert_eq!(a.identity_weight(), 0);
        assert!(!a.accepts_token("identity"));
    }

    #[test]
    fn malformed_members_are_skipped() {
        let a = ae("gzip;q=2, br;q=abc, zstd;q=0.3, ;q=1, deflate");
        assert_eq!(a.weight(Coding::Gzip), 0);
        assert_eq!(a.weight(Coding::Brotli), 0);
        assert_eq!(a.weight(Coding::Zstd), 300);
        assert!(a.accepts_token("deflate"));
        assert!(!a.accepts_token("compress"));
    }

    #[test]
    fn no_header_means_identity_only() {
        let a = AcceptEncoding::parse([]);
        assert!(!a.is_present());
        assert_eq!(a.choose(&Coding::ALL), None);
        assert_eq!(a.identity_weight(), 1000);
        assert!(!a.accepts_token("gzip"));
        let d = decide(&policy(), &a, &facts("text/html", Some(5000), Some("gzip")));
        assert_eq!(d.action, Action::Decompress(Coding::Gzip));
    }

    #[test]
    fn compressible_bodies_are_compressed_with_the_chosen_coding() {
        let d = decide(
            &policy(),
            &ae("gzip, br"),
            &facts("text/html; charset=utf-8", Some(5000), None),
        );
        assert_eq!(d.action, Action::Compress(Coding::Brotli));
        assert!(d.varies);
        let d = decide(
            &policy(),
            &ae("gzip"),
            &facts("application/problem+json", None, None),
        );
        assert_eq!(d.action, Action::Compress(Coding::Gzip));
    }

    #[test]
    fn small_or_unlisted_bodies_pass_unless_identity_is_refused() {
        let p = policy();
        let d = decide(&p, &ae("gzip"), &facts("text/html", Some(100), None));
        assert_eq!(
            d,
            Decision {
                action: Action::Pass,
                varies: false
            }
        );
        let d = decide(&p, &ae("gzip"), &facts("image/png", Some(50_000), None));
        assert_eq!(d.action, Action::Pass);
        let d = decide(
            &p,
            &ae("identity;q=0, gzip"),
            &facts("text/html", Some(100), None),
        );
        assert_eq!(d.action, Action::Compress(Coding::Gzip));
        let d = decide(
            &p,
            &ae("identity;q=0, gzip;q=0, br;q=0.1"),
            &facts("image/png", Some(10), None),
        );
        assert_eq!(d.action, Action::Compress(Coding::Brotli));
    }

    #[test]
    fn low_weights_still_beat_an_unweighted_identity() {
        let d = decide(
            &policy(),
            &ae("gzip;q=0.1"),
            &facts("text/html", Some(5000), None),
        );
        assert_eq!(d.action, Action::Compress(Coding::Gzip));
        let d = decide(
            &policy(),
            &ae("gzip;q=0.5, br;q=0.9"),
            &facts("text/html", Some(5000), None),
        );
        assert_eq!(d.action, Action::Compress(Coding::Brotli));
    }

    #[test]
    fn identity_preferred_over_a_coding_is_honoured() {
        let d = decide(
            &policy(),
            &ae("identity, gzip;q=0.5"),
            &facts("text/html", Some(5000), None),
        );
        assert_eq!(
            d,
            Decision {
                action: Action::Pass,
                varies: true
            }
        );
    }

    #[test]
    fn coded_bodies_pass_when_accepted_and_are_decoded_when_not() {
        let p = policy();
        let d = decide(&p, &ae("gzip, br"), &facts("text/html", Some(5000), Some("br")));
        assert_eq!(
            d,
            Decision {
                action: Action::Pass,
                varies: true
            }
        );
        let d = decide(&p, &ae("gzip"), &facts("text/html", Some(5000), Some("zstd")));
        assert_eq!(d.action, Action::Decompress(Coding::Zstd));
        let d = decide(&p, &ae("gzip"), &facts("image/png", Some(5000), Some("x-gzip")));
        assert_eq!(d.action, Action::Pass);
        let d = decide(&p, &ae("br"), &facts("text/html", Some(5000), Some("gzip, br")));
        assert_eq!(d.action, Action::Pass);
        let d = decide(&p, &ae("gzip"), &facts("text/html", Some(5000), Some("identity")));
        assert_eq!(d.action, Action::Compress(Coding::Gzip));
        let no_decode = Policy {
            decompress: false,
            ..policy()
        };
        let d = decide(
            &no_decode,
            &ae("gzip"),
            &facts("text/html", Some(5000), Some("br")),
        );
        assert_eq!(
            d,
            Decision {
                action: Action::Pass,
                varies: false
            }
        );
    }

    #[test]
    fn bodiless_partial_streaming_and_no_transform_responses_pass() {
        let p = policy();
        let a = ae("gzip");
        for status in [101, 204, 304] {
            let f = Facts {
                status,
                ..facts("text/html", None, None)
            };
            assert_eq!(decide(&p, &a, &f).action, Action::Pass, "{status}");
        }
        let f = Facts {
            head: true,
            ..facts("text/html", Some(5000), None)
        };
        assert_eq!(decide(&p, &a, &f).action, Action::Pass);
        let f = Facts {
            partial: true,
            status: 206,
            ..facts("text/html", Some(5000), None)
        };
        assert_eq!(decide(&p, &a, &f).action, Action::Pass);
        let f = Facts {
            no_transform: true,
            ..facts("text/html", Some(5000), None)
        };
        assert_eq!(decide(&p, &a, &f).action, Action::Pass);
        for t in ["text/event-stream", "application/grpc+proto"] {
            assert_eq!(decide(&p, &a, &facts(t, None, None)).action, Action::Pass, "{t}");
        }
    }

    #[test]
    fn facts_are_read_from_a_head() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert("content-length", HeaderValue::from_static("2048"));
        h.insert("cache-control", HeaderValue::from_static("public, No-Transform"));
        let f = Facts::of(200, &h, false);
        assert_eq!(f.content_length, Some(2048));
        assert!(f.no_transform);
        assert!(!f.partial);
    }

    #[test]
    fn media_patterns() {
        let p = |s| MediaPattern::parse(s).unwrap();
        assert!(p("text/*").matches("text/css"));
        assert!(!p("text/*").matches("textual/css"));
        assert!(p("application/*+json").matches("application/ld+json"));
        assert!(!p("application/*+json").matches("application/json"));
        assert!(p("Application/JSON").matches("application/json"));
        assert!(MediaPattern::parse("json").is_none());
        assert!(MediaPattern::parse("*/*").is_none());
        assert!(MediaPattern::parse("text/").is_none());
    }

    #[test]
    fn headers_follow_the_decision() {
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("5000"));
        h.insert("accept-ranges", HeaderValue::from_static("bytes"));
        h.insert("etag", HeaderValue::from_static("\"v1\""));
        h.insert("vary", HeaderValue::from_static("Origin"));
        let d = Decision {
            action: Action::Compress(Coding::Gzip),
            varies: true,
        };
        edit_headers(d, &mut h);
        assert_eq!(h["content-encoding"], "gzip");
        assert!(!h.contains_key("content-length"));
        assert!(!h.contains_key("accept-ranges"));
        assert_eq!(h["etag"], "W/\"v1\"");
        assert_eq!(h["vary"], "Origin, Accept-Encoding");
        edit_headers(d, &mut h);
        assert_eq!(h["etag"], "W/\"v1\"");
        assert_eq!(h.get_all("vary").iter().count(), 1);

        let mut h = HeaderMap::new();
        h.insert("content-encoding", HeaderValue::from_static("br"));
        h.insert("vary", HeaderValue::from_static("*"));
        edit_headers(
            Decision {
                action: Action::Decompress(Coding::Brotli),
                varies: true,
            },
            &mut h,
        );
        assert!(!h.contains_key("content-encoding"));
        assert_eq!(h["vary"], "*");

        let mut h = HeaderMap::new();
        h.insert("etag", HeaderValue::from_static("not-quoted"));
        edit_headers(d, &mut h);
        assert!(!h.contains_key("etag"));
    }
}
