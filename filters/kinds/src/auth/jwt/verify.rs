//! The verification core: a token's header, signature and claims checked against a key
//! set at a given time. Pure and synchronous: no clock of its own (the caller passes
//! `now`), no I/O, no lock.
//!
//! Algorithm rules, in order: the header's `alg` must name one of the supported
//! algorithms (`none` is not one), must be in the filter's allowed set, and must belong
//! to the key's own family and allowed algorithms. A key's algorithms come from the
//! config or its JWK entry, never from the token, so an HS256 token signed with an RSA
//! public key's bytes as the HMAC secret finds no key to verify it with.

use std::str::FromStr;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Every algorithm the filter supports, in bit order of [`AlgSet`].
pub const ALL_ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// A set of algorithms, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlgSet(u16);

impl AlgSet {
    /// No algorithm.
    pub const EMPTY: AlgSet = AlgSet(0);

    fn bit(alg: Algorithm) -> u16 {
        ALL_ALGORITHMS
            .iter()
            .position(|a| *a == alg)
            .map_or(0, |i| 1 << i)
    }

    /// The set holding only `alg`.
    pub fn one(alg: Algorithm) -> AlgSet {
        AlgSet(Self::bit(alg))
    }

    /// The set of `algs`.
    pub fn of(algs: impl IntoIterator<Item = Algorithm>) -> AlgSet {
        AlgSet(algs.into_iter().fold(0, |acc, a| acc | Self::bit(a)))
    }

    /// Every algorithm of `family`.
    pub fn family(family: jsonwebtoken::AlgorithmFamily) -> AlgSet {
        Self::of(family.algorithms().iter().copied())
    }

    /// Whether `alg` is in the set.
    pub fn contains(self, alg: Algorithm) -> bool {
        self.0 & Self::bit(alg) != 0
    }

    /// The algorithms in both sets.
    pub fn and(self, other: AlgSet) -> AlgSet {
        AlgSet(self.0 & other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The set as bits (to keep in an atomic).
    pub fn bits(self) -> u16 {
        self.0
    }

    /// The set from [`AlgSet::bits`]; unknown bits are dropped.
    pub fn from_bits(bits: u64) -> AlgSet {
        AlgSet((bits & 0x0fff) as u16)
    }

    /// The algorithms in the set.
    pub fn iter(self) -> impl Iterator<Item = Algorithm> {
        ALL_ALGORITHMS.into_iter().filter(move |a| self.contains(*a))
    }
}

/// One verification key: its `kid` (a key without one may verify any token), the
/// algorithms it may verify (within its own family, fixed when the key was loaded), and
/// the key.
#[derive(Clone)]
pub struct Key {
    /// The key id, if it has one.
    pub kid: Option<Arc<str>>,
    /// The algorithms this key verifies; always within the key's family.
    pub algs: AlgSet,
    /// The key material.
    pub key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material: an HMAC secret is a credential.
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algs", &self.algs)
            .field("family", &self.key.family())
            .finish()
    }
}

impl Key {
    /// A key allowed for `algs`, narrowed to the key's own family. `None` when no
    /// algorithm of `algs` fits the key.
    pub fn new(kid: Option<Arc<str>>, key: DecodingKey, algs: AlgSet) -> Option<Key> {
        let algs = algs.and(AlgSet::family(key.family()));
        (!algs.is_empty()).then_some(Key { kid, algs, key })
    }
}

/// A set of keys, as loaded from the config or one JWKS document.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    /// The keys, in order.
    pub keys: Vec<Key>,
}

/// Why a token was refused. A closed set (metric label, debug log); never sent to the
/// client, whose answer says only that the token is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Invalid {
    /// Not three base64url parts, a header or payload that is not a JSON object, a
    /// `crit` header, or a time claim that is not a number.
    Malformed,
    /// `alg` is `none`, unknown, or not allowed here.
    Algorithm,
    /// No key of the set may verify this token (unknown `kid`, or no key for `alg`).
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// `exp` has passed (beyond the leeway).
    Expired,
    /// `nbf` or `iat` lies in the future (beyond the leeway).
    NotYetValid,
    /// `iss` is missing or not one of the allowed issuers.
    Issuer,
    /// `aud` is missing or names none of the allowed audiences.
    Audience,
    /// A required claim is missing.
    MissingClaim,
    /// The consumer claim is missing, or names no known consumer when one is required.
    Consumer,
}

impl Invalid {
    /// Every reason, for metric handles resolved once.
    pub const ALL: [Invalid; 10] = [
        Invalid::Malformed,
        Invalid::Algorithm,
        Invalid::UnknownKey,
        Invalid::Signature,
        Invalid::Expired,
        Invalid::NotYetValid,
        Invalid::Issuer,
        Invalid::Audience,
        Invalid::MissingClaim,
        Invalid::Consumer,
    ];

    /// The reason as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::Malformed => "malformed",
            Invalid::Algorithm => "algorithm",
            Invalid::UnknownKey => "unknown_key",
            Invalid::Signature => "signature",
            Invalid::Expired => "expired",
            Invalid::NotYetValid => "not_yet_valid",
            Invalid::Issuer => "issuer",
            Invalid::Audience => "audience",
            Invalid::MissingClaim => "missing_claim",
            Invalid::Consumer => "consumer",
        }
    }
}

/// The claim checks, from the spec.
#[derive(Debug, Clone, Default)]
pub struct ClaimRules {
    /// Allowed algorithms over all keys.
    pub algorithms: AlgSet,
    /// Seconds of clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: u64,
    /// Allowed issuers; empty: `iss` is not checked.
    pub issuers: Vec<String>,
    /// Allowed audiences; empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// Claims that must be present.
    pub required: Vec<String>,
}

/// A token's header and the parts verification needs, parsed once.
#[derive(Debug)]
pub struct Parsed<'t> {
    /// The header's algorithm.
    pub alg: Algorithm,
    /// The header's key id.
    pub kid: Option<String>,
    /// `header.payload`, what the signature covers.
    message: &'t str,
    payload: &'t str,
    signature: &'t str,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

/// Parses a token's header and checks its algorithm against `rules`.
pub fn parse<'t>(token: &'t str, rules: &ClaimRules) -> Result<Parsed<'t>, Invalid> {
    let mut parts = token.splitn(4, '.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Invalid::Malformed);
    };
    if h.is_empty() || p.is_empty() {
        return Err(Invalid::Malformed);
    }
    let header = URL_SAFE_NO_PAD.decode(h).map_err(|_| Invalid::Malformed)?;
    let header: RawHeader = serde_json::from_slice(&header).map_err(|_| Invalid::Malformed)?;
    // RFC 7515 4.1.11: a header with extensions the verifier does not understand is
    // refused; this verifier understands none.
    if header.crit.is_some() {
        return Err(Invalid::Malformed);
    }
    let alg = Algorithm::from_str(&header.alg).map_err(|_| Invalid::Algorithm)?;
    if !rules.algorithms.contains(alg) {
        return Err(Invalid::Algorithm);
    }
    if s.is_empty() {
        return Err(Invalid::Signature);
    }
    Ok(Parsed {
        alg,
        kid: header.kid,
        message: &token[..h.len() + 1 + p.len()],
        payload: p,
        signature: s,
    })
}

/// The keys of `sets` that may verify `parsed`: allowed for its algorithm, and with its
/// `kid` when both have one.
fn candidates<'k>(parsed: &'k Parsed<'_>, sets: &'k [&'k KeySet]) -> impl Iterator<Item = &'k Key> + 'k {
    sets.iter().flat_map(|s| s.keys.iter()).filter(move |k| {
        k.algs.contains(parsed.alg)
            && match (&k.kid, &parsed.kid) {
                (Some(a), Some(b)) => **a == **b,
                _ => true,
            }
    })
}

/// Whether some key of `sets` may verify `parsed` (else it is an unknown key, which a
/// JWKS refetch may resolve).
pub fn has_candidate(parsed: &Parsed<'_>, sets: &[&KeySet]) -> bool {
    candidates(parsed, sets).next().is_some()
}

/// Verifies the signature of `parsed` with the keys of `sets`, then its claims at `now`
/// (seconds since the Unix epoch). Returns the claims.
pub fn verify(
    parsed: &Parsed<'_>,
    sets: &[&KeySet],
    rules: &ClaimRules,
    now: u64,
) -> Result<Map<String, Value>, Invalid> {
    let mut any = false;
    let mut ok = false;
    for key in candidates(parsed, sets) {
        any = true;
        if jsonwebtoken::crypto::verify(parsed.signature, parsed.message.as_bytes(), &key.key, parsed.alg)
            .unwrap_or(false)
        {
            ok = true;
            break;
        }
    }
    if !any {
        return Err(Invalid::UnknownKey);
    }
    if !ok {
        return Err(Invalid::Signature);
    }
    let payload = URL_SAFE_NO_PAD
        .decode(parsed.payload)
        .map_err(|_| Invalid::Malformed)?;
    let claims: Map<String, Value> = serde_json::from_slice(&payload).map_err(|_| Invalid::Malformed)?;
    check_claims(&claims, rules, now)?;
    Ok(claims)
}

fn numeric(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Invalid> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(Invalid::Malformed),
    }
}

/// Checks the registered claims of a verified token at `now`.
pub fn check_claims(claims: &Map<String, Value>, rules: &ClaimRules, now: u64) -> Result<(), Invalid> {
    let now = now as f64;
    let leeway = rules.leeway as f64;
    if let Some(exp) = numeric(claims, "exp")? {
        if now >= exp + leeway {
            return Err(Invalid::Expired);
        }
    }
    if let Some(nbf) = numeric(claims, "nbf")? {
        if now + leeway < nbf {
            return Err(Invalid::NotYetValid);
        }
    }
    if let Some(iat) = numeric(claims, "iat")? {
        if now + leeway < iat {
            return Err(Invalid::NotYetValid);
        }
    }
    if let Some(name) = rules.required.iter().find(|c| !claims.contains_key(c.as_str())) {
        let _ = name;
        return Err(Invalid::MissingClaim);
    }
    if !rules.issuers.is_empty() {
        match claims.get("iss").and_then(Value::as_str) {
            Some(iss) if rules.issuers.iter().any(|i| i == iss) => {}
            _ => return Err(Invalid::Issuer),
        }
    }
    if !rules.audiences.is_empty() {
        let allowed = |a: &str| rules.audiences.iter().any(|x| x == a);
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => allowed(a),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(allowed),
            _ => false,
        };
        if !ok {
            return Err(Invalid::Audience);
        }
    }
    Ok(())
}

/// A claim's value as header text: strings as they are, numbers and booleans in their
/// JSON form, arrays of strings joined with commas, anything else as compact JSON.
pub fn claim_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn rules() -> ClaimRules {
        ClaimRules {
            algorithms: AlgSet::of(ALL_ALGORITHMS),
            leeway: 10,
            issuers: vec!["https://issuer.test".into()],
            audiences: vec!["api".into()],
            required: vec!["exp".into()],
        }
    }

    fn hs_set(secret: &[u8], kid: Option<&str>) -> KeySet {
        KeySet {
            keys: vec![Key::new(
                kid.map(Arc::from),
                DecodingKey::from_secret(secret).unwrap(),
                AlgSet::one(Algorithm::HS256),
            )
            .unwrap()],
        }
    }

    fn hs_token(secret: &[u8], kid: Option<&str>, claims: Value) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(String::from);
        encode(&h, &claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
    }

    fn good() -> Value {
        json!({"sub": "alice", "exp": NOW + 60, "iat": NOW - 5, "iss": "https://issuer.test", "aud": "api"})
    }

    fn check(token: &str, set: &KeySet, rules: &ClaimRules, now: u64) -> Result<Map<String, Value>, Invalid> {
        let p = parse(token, rules)?;
        verify(&p, &[set], rules, now)
    }

    #[test]
    fn a_good_token_verifies_and_gives_its_claims() {
        let set = hs_set(b"secret-1", None);
        let claims = check(&hs_token(b"secret-1", None, good()), &set, &rules(), NOW).unwrap();
        assert_eq!(claims["sub"], "alice");
    }

    #[test]
    fn a_wrong_secret_is_a_bad_signature() {
        let set = hs_set(b"secret-1", None);
        let t = hs_token(b"secret-2", None, good());
        assert_eq!(check(&t, &set, &rules(), NOW), Err(Invalid::Signature));
        // A tampered payload too.
        let mut parts: Vec<String> = hs_token(b"secret-1", None, good())
            .split('.')
            .map(String::from)
            .collect();
        let forged = json!({"sub": "mallory", "exp": NOW + 60, "iss": "https://issuer.test", "aud": "api"});
        parts[1] = URL_SAFE_NO_PAD.encode(forged.to_string());
        assert_eq!(
            check(&parts.join("."), &set, &rules(), NOW),
            Err(Invalid::Signature)
        );
    }

    #[test]
    fn time_claims_honour_the_leeway_on_the_injected_clock() {
        let set = hs_set(b"s", None);
        let r = rules();
        let t = hs_token(
            b"s",
            None,
            json!({"exp": NOW, "iss": "https://issuer.test", "aud": "api"}),
        );
        assert!(check(&t, &set, &r, NOW + 9).is_ok());
        assert_eq!(check(&t, &set, &r, NOW + 10), Err(Invalid::Expired));
        let t = hs_token(
            b"s",
            None,
            json!({"exp": NOW + 999, "nbf": NOW + 20, "iss": "https://issuer.test", "aud": "api"}),
        );
        assert_eq!(check(&t, &set, &r, NOW), Err(Invalid::NotYetValid));
        assert!(check(&t, &set, &r, NOW + 10).is_ok());
        let t = hs_token(
            b"s",
            None,
            json!({"exp": NOW + 999, "iat": NOW + 11, "iss": "https://issuer.test", "aud": "api"}),
        );
        assert_eq!(check(&t, &set, &r, NOW), Err(Invalid::NotYetValid));
        let t = hs_token(
            b"s",
            None,
            json!({"exp": "tomorrow", "iss": "https://issuer.test", "aud": "api"}),
        );
        assert_eq!(check(&t, &set, &r, NOW), Err(Invalid::Malformed));
    }

    #[test]
    fn issuer_audience_and_required_claims() {
        let set = hs_set(b"s", None);
        let r = rules();
        let mut c = good();
        c["iss"] = json!("https://evil.test");
        assert_eq!(
            check(&hs_token(b"s", None, c), &set, &r, NOW),
            Err(Invalid::Issuer)
        );
        let mut c = good();
        c["aud"] = json!(["other", "api"]);
        assert!(check(&hs_token(b"s", None, c), &set, &r, NOW).is_ok());
        let mut c = good();
        c["aud"] = json!(["other"]);
        assert_eq!(
            check(&hs_token(b"s", None, c), &set, &r, NOW),
            Err(Invalid::Audience)
        );
        let mut c = good();
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(
            check(&hs_token(b"s", None, c), &set, &r, NOW),
            Err(Invalid::Audience)
        );
        let mut c = good();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            check(&hs_token(b"s", None, c), &set, &r, NOW),
            Err(Invalid::MissingClaim)
        );
    }

    #[test]
    fn alg_none_and_unlisted_algorithms_are_refused() {
        let set = hs_set(b"s", None);
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(good().to_string());
        for t in [format!("{header}.{payload}."), format!("{header}.{payload}")] {
            assert!(
                matches!(
                    check(&t, &set, &rules(), NOW),
                    Err(Invalid::Algorithm | Invalid::Malformed)
                ),
                "{t}"
            );
        }
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        assert_eq!(
            check(&format!("{header}.{payload}.x"), &set, &rules(), NOW),
            Err(Invalid::Algorithm)
        );
        let mut r = rules();
        r.algorithms = AlgSet::one(Algorithm::RS256);
        assert_eq!(
            check(&hs_token(b"s", None, good()), &set, &r, NOW),
            Err(Invalid::Algorithm)
        );
    }

    #[test]
    fn a_key_never_verifies_outside_its_family() {
        // An RSA public key's PEM bytes used as an HMAC secret: the classic confusion.
        let pem = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/jwt/rsa-public.pem"
        ))
        .unwrap();
        let rsa = Key::new(
            None,
            DecodingKey::from_rsa_pem(&pem).unwrap(),
            AlgSet::of(ALL_ALGORITHMS),
        )
        .unwrap();
        assert!(!rsa.algs.contains(Algorithm::HS256));
        assert!(rsa.algs.contains(Algorithm::PS512));
        let set = KeySet { keys: vec![rsa] };
        let t = hs_token(&pem, None, good());
        assert_eq!(check(&t, &set, &rules(), NOW), Err(Invalid::UnknownKey));
        // And an HMAC key limited to RS256 is no key at all.
        assert!(Key::new(
            None,
            DecodingKey::from_secret(b"s").unwrap(),
            AlgSet::one(Algorithm::RS256)
        )
        .is_none());
    }

    #[test]
    fn kid_selects_the_key() {
        let set = KeySet {
            keys: vec![
                Key::new(
                    Some("a".into()),
                    DecodingKey::from_secret(b"sa").unwrap(),
                    AlgSet::one(Algorithm::HS256),
                )
                .unwrap(),
                Key::new(
                    Some("b".into()),
                    DecodingKey::from_secret(b"sb").unwrap(),
                    AlgSet::one(Algorithm::HS256),
                )
                .unwrap(),
            ],
        };
        assert!(check(&hs_token(b"sb", Some("b"), good()), &set, &rules(), NOW).is_ok());
        assert_eq!(
            check(&hs_token(b"sb", Some("a"), good()), &set, &rules(), NOW),
            Err(Invalid::Signature)
        );
        assert_eq!(
            check(&hs_token(b"sb", Some("c"), good()), &set, &rules(), NOW),
            Err(Invalid::UnknownKey)
        );
        // No kid in the token: every key of the algorithm is tried.
        assert!(check(&hs_token(b"sb", None, good()), &set, &rules(), NOW).is_ok());
    }

    #[test]
    fn garbage_is_malformed() {
        let set = hs_set(b"s", None);
        for t in ["", "a", "a.b", "a.b.c.d", "!!.??.xx", "e30.e30.", "e30.e30.c2ln"] {
            assert!(check(t, &set, &rules(), NOW).is_err(), "{t}");
        }
        let crit = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","crit":["b64"],"b64":false}"#);
        assert_eq!(
            check(&format!("{crit}.e30.c2ln"), &set, &rules(), NOW),
            Err(Invalid::Malformed)
        );
    }

    #[test]
    fn claims_become_header_text() {
        assert_eq!(claim_text(&json!("x")), "x");
        assert_eq!(claim_text(&json!(7)), "7");
        assert_eq!(claim_text(&json!(["a", "b"])), "a,b");
        assert_eq!(claim_text(&json!({"k": 1})), r#"{"k":1}"#);
    }
}
