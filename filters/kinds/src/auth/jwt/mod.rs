//! The `jwt` filter: JSON Web Token authentication (RFC 7519, RFC 7515, bearer tokens
//! as RFC 6750 describes them).
//!
//! ```yaml
//! filters:
//!   - jwt:
//!       keys:
//!         - {alg: HS256, secret: "a-shared-secret-of-32-bytes-or-more"}
//!         - {alg: RS256, kid: "2026-01", file: /etc/sluice/jwt/rs256.pem}
//!       jwks: {url: "https://idp.example.com/.well-known/jwks.json"}
//!       issuers: ["https://idp.example.com/"]
//!       audiences: [orders-api]
//!       claims_to_headers: {sub: x-user-id, tenant: x-tenant}
//! ```
//!
//! The core is [`Jwt::authenticate`], which says [`JwtOutcome::Identified`],
//! [`JwtOutcome::Missing`] or [`JwtOutcome::Invalid`] and touches nothing but the
//! identity slot; the `jwt` filter kind answers 401 on top of it, and an "any of several
//! methods" filter can wrap the same core. Options and their defaults are in
//! `docs/auth-jwt.md`.

pub mod cache;
pub mod jwks;
pub mod verify;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::{Deserialize, Serialize};

use self::jwks::{JwksSettings, JwksSource};
use self::verify::{AlgSet, ClaimRules, Invalid, Key, KeySet, ALL_ALGORITHMS};
use crate::registry::{parse, BuildCtx, Kind, SpecError};
use sluice_core::filter::{
    Filter, FilterCtx, Flow, HeaderEdit, Identity, Phases, Reject, RejectKind, RequestView,
};

/// The registry entry.
pub const KIND: Kind = Kind {
    name: "jwt",
    answers: false,
    build,
    redact: crate::registry::shown_as::<JwtSpec>,
    schema: Some(crate::registry::schema_of::<JwtSpec>),
};

/// A JWS algorithm as the config names it (`jsonwebtoken::Algorithm`'s names), for the
/// config's JSON Schema.
pub struct AlgorithmName;

impl schemars::JsonSchema for AlgorithmName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "JwtAlgorithm".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "enum": ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"],
        })
    }
}

/// The `jwt` filter's spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    /// Keys given inline or by file. Default: none (then `jwks` is required).
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// A JWKS URL to take keys from. Default: none (then `keys` is required).
    #[serde(default)]
    pub jwks: Option<JwksSpec>,
    /// The algorithms a token may use. Default: the `alg` of every key in `keys`, and,
    /// with `jwks`, every asymmetric algorithm (RS*, PS*, ES256, ES384, EdDSA). `none` is
    /// never an algorithm.
    #[serde(default)]
    #[schemars(with = "Vec<AlgorithmName>")]
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`. Default: `60s`.
    #[schemars(with = "sluice_config::schema::DurationText")]
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Accepted issuers (`iss`, exact match, any of). Default: none (`iss` not checked).
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Accepted audiences (`aud`, a string or an array, any of). Default: none (`aud`
    /// not checked).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Claims a token must carry. Default: `[exp]`; `[]` accepts tokens that never
    /// expire.
    #[serde(default = "default_required")]
    pub required_claims: Vec<String>,
    /// Claims passed upstream, as claim name to header name. Client copies of these
    /// headers are always removed. Default: none.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Where the token is looked for, in order. Default: `[{header: authorization}]`
    /// (`Authorization: Bearer <token>`).
    #[serde(default = "default_from")]
    pub from: Vec<TokenSource>,
    /// Keep the token in the request sent upstream. Default: `false` (the header,
    /// cookie or query parameter of every `from` entry is removed).
    #[serde(default)]
    pub keep_token: bool,
    /// The claim naming the consumer. Default: `sub`.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// Refuse tokens whose consumer claim names no consumer of the config. Default:
    /// `false` (an unknown name becomes the identity itself, without groups).
    #[serde(default)]
    pub require_consumer: bool,
    /// The `realm` of the `WWW-Authenticate` challenge. Default: `sluice`.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Slots of the cache of verified tokens (a token seen again skips the signature
    /// check; see [`cache`]); `0` turns it off. At most 1048576. Default: `4096`.
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
}

/// One key: exactly one of `secret`, `secret_base64`, `pem` or `file`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// The algorithm this key verifies; fixes its family. Required.
    #[schemars(with = "AlgorithmName")]
    pub alg: Algorithm,
    /// The key id a token's `kid` must name to use this key. Default: none (the key is
    /// tried for any token of its algorithm).
    #[serde(default)]
    pub kid: Option<String>,
    /// An HMAC secret, as text; a secret (shown as `<redacted>`). Default: none.
    #[serde(default)]
    pub secret: Option<sluice_config::secret::Secret>,
    /// An HMAC secret, base64 (standard alphabet); a secret (shown as `<redacted>`).
    /// Default: none.
    #[serde(default)]
    pub secret_base64: Option<sluice_config::secret::Secret>,
    /// A public key in PEM (`BEGIN PUBLIC KEY`, or `BEGIN RSA PUBLIC KEY`). Default: none.
    #[serde(default)]
    pub pem: Option<String>,
    /// A file holding the PEM public key, or, for HS*, the secret (trailing
    /// whitespace removed). Read when the config is loaded. Default: none.
    #[serde(default)]
    pub file: Option<String>,
}

/// A JWKS source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwksSpec {
    /// The `http://` or `https://` URL of the JWKS document. Required. Shown with its
    /// password (if any) redacted.
    pub url: sluice_config::secret::SecretUrl,
    /// Time between background refreshes. Default: `5m`.
    #[schemars(with = "sluice_config::schema::DurationText")]
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// Least time between two fetches caused by tokens naming an unknown `kid` (and
    /// between retries after a failed fetch). Default: `10s`.
    #[schemars(with = "sluice_config::schema::DurationText")]
    #[serde(default = "default_min_refetch", with = "humantime_serde")]
    pub min_refetch_interval: Duration,
    /// Timeout of one fetch. Default: `5s`.
    #[schemars(with = "sluice_config::schema::DurationText")]
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// Longest a request waits for a refetch caused by its unknown `kid`; `0s` never
    /// waits (the request is refused and the fetch goes on). Default: `1s`.
    #[schemars(with = "sluice_config::schema::DurationText")]
    #[serde(default = "default_wait", with = "humantime_serde")]
    pub wait: Duration,
}

/// Where to find the token: exactly one of `header`, `cookie`, `query`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenSource {
    /// A request header. Default: none.
    #[serde(default)]
    pub header: Option<String>,
    /// The scheme before the token in `header`, matched case-insensitively. Default:
    /// `Bearer` for `authorization`, else none; `""` for none.
    #[serde(default)]
    pub scheme: Option<String>,
    /// A cookie. Default: none.
    #[serde(default)]
    pub cookie: Option<String>,
    /// A query parameter. Default: none.
    #[serde(default)]
    pub query: Option<String>,
}

fn default_cache_size() -> usize {
    4096
}

fn default_leeway() -> Duration {
    Duration::from_secs(60)
}
fn default_required() -> Vec<String> {
    vec!["exp".into()]
}
fn default_from() -> Vec<TokenSource> {
    vec![TokenSource {
        header: Some("authorization".into()),
        scheme: None,
        cookie: None,
        query: None,
    }]
}
fn default_consumer_claim() -> String {
    "sub".into()
}
fn default_realm() -> String {
    "sluice".into()
}
fn default_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_min_refetch() -> Duration {
    Duration::from_secs(10)
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_wait() -> Duration {
    Duration::from_secs(1)
}

/// What [`Jwt::authenticate`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum JwtOutcome {
    /// A valid token: the identity (also stored in the context).
    Identified(Identity),
    /// No token in any configured place.
    Missing,
    /// A token that is not valid, and why (for metrics and debug logs only).
    Invalid(Invalid),
}

/// Where a token was found, compiled.
#[derive(Debug, Clone)]
enum Source {
    Header {
        name: HeaderName,
        scheme: Option<String>,
    },
    Cookie(String),
    Query(String),
}

/// The JWT method: keys, rules, token sources and consumer mapping.
pub struct Jwt {
    keys: KeySet,
    jwks: Option<(Arc<JwksSource>, Duration)>,
    rules: ClaimRules,
    sources: Vec<Source>,
    keep_token: bool,
    forward: Vec<(Arc<str>, HeaderName)>,
    consumer_claim: String,
    require_consumer: bool,
    consumers: HashMap<String, Vec<Arc<str>>>,
    /// The digest of the consumers it was built with: a change rebuilds it.
    consumers_digest: String,
    challenge_missing: HeaderValue,
    challenge_invalid: HeaderValue,
    clock: fn() -> u64,
    cache: cache::TokenCache,
}

fn system_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn build(spec: &serde_json::Value, ctx: &BuildCtx<'_>) -> Result<Arc<dyn Filter>, Vec<SpecError>> {
    let spec: JwtSpec = parse(spec)?;
    Ok(Arc::new(Jwt::new(&spec, ctx)?))
}

fn load_key(k: &KeySpec, at: &str, errors: &mut Vec<SpecError>) -> Option<DecodingKey> {
    let given: Vec<&str> = [
        ("secret", k.secret.is_some()),
        ("secret_base64", k.secret_base64.is_some()),
        ("pem", k.pem.is_some()),
        ("file", k.file.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, on)| on.then_some(n))
    .collect();
    if given.len() != 1 {
        errors.push(SpecError::at(
            at,
            format!(
                "give exactly one of secret, secret_base64, pem, file (found {})",
                given.len()
            ),
        ));
        return None;
    }
    let family = k.alg.family();
    let hmac = family == AlgorithmFamily::Hmac;
    let field = given[0];
    let path = format!("{at}.{field}");
    if hmac && field == "pem" {
        errors.push(SpecError::at(
            path,
            format!("{:?} takes a secret, not a PEM key", k.alg),
        ));
        return None;
    }
    if !hmac && matches!(field, "secret" | "secret_base64") {
        errors.push(SpecError::at(
            path,
            format!("{:?} takes a public key (pem or file), not a secret", k.alg),
        ));
        return None;
    }
    let bytes: Vec<u8> = match (field, &k.secret, &k.secret_base64, &k.pem, &k.file) {
        ("secret", Some(s), ..) => s.expose().as_bytes().to_vec(),
        ("secret_base64", _, Some(b), ..) => {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(b.expose().trim()) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(SpecError::at(path, format!("not base64: {e}")));
                    return None;
                }
            }
        }
        ("pem", _, _, Some(p), _) => p.as_bytes().to_vec(),
        ("file", .., Some(f)) => match std::fs::read(f) {
            Ok(v) if hmac => {
                let end = v
                    .iter()
                    .rposition(|b| !b.is_ascii_whitespace())
                    .map_or(0, |i| i + 1);
                v[..end].to_vec()
            }
            Ok(v) => v,
            Err(e) => {
                errors.push(SpecError::at(path, format!("cannot read {f:?}: {e}")));
                return None;
            }
        },
        _ => return None,
    };
    if hmac && bytes.is_empty() {
        errors.push(SpecError::at(path, "the secret is empty"));
        return None;
    }
    if !hmac && bytes.starts_with(b"-----BEGIN") && bytes.windows(7).any(|w| w == b"PRIVATE") {
        errors.push(SpecError::at(
            path,
            "this is a private key; give the public key (openssl pkey -pubout)",
        ));
        return None;
    }
    let key = match family {
        AlgorithmFamily::Hmac => DecodingKey::from_secret(&bytes),
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&bytes),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&bytes),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(&bytes),
    };
    match key {
        Ok(key) => Some(key),
        Err(e) => {
            let what = match family {
                AlgorithmFamily::Hmac => "an HMAC secret",
                AlgorithmFamily::Rsa => "an RSA public key in PEM",
                AlgorithmFamily::Ec => "an EC public key in PEM (P-256 for ES256, P-384 for ES384)",
                AlgorithmFamily::Ed => "an Ed25519 public key in PEM",
            };
            errors.push(SpecError::at(path, format!("not {what}: {e}")));
            None
        }
    }
}

fn header_name(s: &str, at: String, errors: &mut Vec<SpecError>) -> Option<HeaderName> {
    match HeaderName::from_bytes(s.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            errors.push(SpecError::at(at, format!("{s:?} is not a valid header name")));
            None
        }
    }
}

impl Jwt {
    /// Validates `spec` and builds the method. With a runtime in `ctx.shared`, a `jwks`
    /// URL gets (or joins) its shared source; without (validation) nothing starts.
    pub fn new(spec: &JwtSpec, ctx: &BuildCtx<'_>) -> Result<Jwt, Vec<SpecError>> {
        let mut errors = Vec::new();
        if spec.keys.is_empty() && spec.jwks.is_none() {
            errors.push(SpecError::at("", "give keys, jwks, or both"));
        }
        let asymmetric = AlgSet::of(
            ALL_ALGORITHMS
                .into_iter()
                .filter(|a| a.family() != AlgorithmFamily::Hmac),
        );
        let explicit = AlgSet::of(spec.algorithms.iter().copied());
        let mut keys = KeySet::default();
        for (i, k) in spec.keys.iter().enumerate() {
            let at = format!("keys[{i}]");
            if !spec.algorithms.is_empty() && !explicit.contains(k.alg) {
                errors.push(SpecError::at(
                    format!("{at}.alg"),
                    format!("{:?} is not in algorithms", k.alg),
                ));
                continue;
            }
            if let Some(key) = load_key(k, &at, &mut errors) {
                if let Some(key) = Key::new(k.kid.as_deref().map(Arc::from), key, AlgSet::one(k.alg)) {
                    keys.keys.push(key);
                }
            }
        }
        let allowed = if spec.algorithms.is_empty() {
            let mut algs = AlgSet::of(spec.keys.iter().map(|k| k.alg));
            if spec.jwks.is_some() {
                algs = AlgSet::from_bits(u64::from(algs.bits() | asymmetric.bits()));
            }
            algs
        } else {
            explicit
        };
        let mut jwks = None;
        if let Some(j) = &spec.jwks {
            match j.url.expose().parse::<http::Uri>() {
                Ok(u)
                    if matches!(u.scheme_str(), Some("http" | "https"))
                        && u.host().is_some_and(|h| !h.is_empty()) => {}
                Ok(_) => errors.push(SpecError::at("jwks.url", "must be an http:// or https:// URL")),
                Err(e) => errors.push(SpecError::at("jwks.url", format!("not a URL: {e}"))),
            }
            for (name, d) in [
                ("refresh", j.refresh),
                ("min_refetch_interval", j.min_refetch_interval),
                ("fetch_timeout", j.fetch_timeout),
            ] {
                if d < Duration::from_millis(100) {
                    errors.push(SpecError::at(format!("jwks.{name}"), "must be at least 100ms"));
                }
            }
            if errors.is_empty() {
                if let Some(rt) = &ctx.runtime() {
                    let settings = JwksSettings {
                        refresh: j.refresh,
                        min_refetch_interval: j.min_refetch_interval,
                        fetch_timeout: j.fetch_timeout,
                    };
                    match ctx
                        .services
                        .get_or_insert_with(jwks::JwksRegistry::default)
                        .source(j.url.expose(), settings, allowed.and(asymmetric), rt)
                    {
                        Ok(src) => jwks = Some((src, j.wait)),
                        Err(e) => errors.push(SpecError::at("jwks", e)),
                    }
                }
            }
        }
        if spec.from.is_empty() {
            errors.push(SpecError::at(
                "from",
                "give at least one place to look for the token",
            ));
        }
        let mut sources = Vec::new();
        for (i, s) in spec.from.iter().enumerate() {
            let at = format!("from[{i}]");
            match (&s.header, &s.cookie, &s.query) {
                (Some(h), None, None) => {
                    if let Some(name) = header_name(h, format!("{at}.header"), &mut errors) {
                        let scheme = match &s.scheme {
                            Some(x) if x.is_empty() => None,
                            Some(x) => Some(x.clone()),
                            None if name == http::header::AUTHORIZATION => Some("Bearer".into()),
                            None => None,
                        };
                        sources.push(Source::Header { name, scheme });
                    }
                }
                (None, Some(c), None) if !c.is_empty() && s.scheme.is_none() => {
                    sources.push(Source::Cookie(c.clone()))
                }
                (None, None, Some(q)) if !q.is_empty() && s.scheme.is_none() => {
                    sources.push(Source::Query(q.clone()))
                }
                (None, Some(_), None) | (None, None, Some(_)) if s.scheme.is_some() => errors.push(
                    SpecError::at(format!("{at}.scheme"), "only a header has a scheme"),
                ),
                _ => errors.push(SpecError::at(
                    at,
                    "give exactly one of header, cookie, query (not empty)",
                )),
            }
        }
        let mut forward = Vec::new();
        for (claim, h) in &spec.claims_to_headers {
            if let Some(name) = header_name(h, format!("claims_to_headers.{claim}"), &mut errors) {
                forward.push((Arc::from(claim.as_str()), name));
            }
        }
        if spec.consumer_claim.is_empty() {
            errors.push(SpecError::at("consumer_claim", "must not be empty"));
        }
        if spec.cache_size > 1 << 20 {
            errors.push(SpecError::at("cache_size", "at most 1048576"));
        }
        let bad_realm = spec
            .realm
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control());
        let challenge =
            |extra: &str| HeaderValue::try_from(format!("Bearer realm=\"{}\"{extra}", spec.realm));
        let (challenge_missing, challenge_invalid) =
            match (bad_realm, challenge(""), challenge(", error=\"invalid_token\"")) {
                (false, Ok(a), Ok(b)) => (a, b),
                _ => {
                    errors.push(SpecError::at(
                        "realm",
                        "must be printable text without quotes or backslashes",
                    ));
                    (
                        HeaderValue::from_static("Bearer"),
                        HeaderValue::from_static("Bearer"),
                    )
                }
            };
        if !errors.is_empty() {
            return Err(errors);
        }
        let consumers = ctx
            .config
            .consumers
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.groups.iter().map(|g| Arc::from(g.as_str())).collect(),
                )
            })
            .collect();
        Ok(Jwt {
            keys,
            jwks,
            rules: ClaimRules {
                algorithms: allowed,
                leeway: spec.leeway.as_secs(),
                issuers: spec.issuers.clone(),
                audiences: spec.audiences.clone(),
                required: spec.required_claims.clone(),
            },
            sources,
            keep_token: spec.keep_token,
            forward,
            consumer_claim: spec.consumer_claim.clone(),
            require_consumer: spec.require_consumer,
            consumers,
            consumers_digest: crate::auth::consumers::Consumers::of(ctx).digest().to_string(),
            challenge_missing,
            challenge_invalid,
            clock: system_now,
            cache: cache::TokenCache::new(spec.cache_size),
        })
    }

    /// The same method reading time (seconds since the Unix epoch) from `clock`.
    pub fn with_clock(mut self, clock: fn() -> u64) -> Jwt {
        self.clock = clock;
        self
    }

    /// The JWKS source this method uses, if any.
    pub fn jwks_source(&self) -> Option<&Arc<JwksSource>> {
        self.jwks.as_ref().map(|(s, _)| s)
    }

    /// The token in the request, from the first configured place that has one.
    pub fn token<'r>(&self, req: &RequestView<'r>) -> Option<&'r str> {
        self.sources.iter().find_map(|s| match s {
            Source::Header { name, scheme } => req.headers.get_all(name).iter().find_map(|v| {
                let v = v.to_str().ok()?.trim();
                let t = match scheme {
                    Some(sch) => {
                        let (word, rest) = v.split_once(' ')?;
                        if !word.eq_ignore_ascii_case(sch) {
                            return None;
                        }
                        rest.trim_start()
                    }
                    None => v,
                };
                (!t.is_empty()).then_some(t)
            }),
            Source::Cookie(name) => req
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    (k == name && !v.is_empty()).then_some(v)
                }),
            Source::Query(name) => req.query?.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name && !v.is_empty()).then_some(v)
            }),
        })
    }

    /// Verifies `token` against the inline keys and the JWKS set as they are now.
    fn check(&self, token: &str, now: u64) -> Result<serde_json::Map<String, serde_json::Value>, Invalid> {
        let parsed = verify::parse(token, &self.rules)?;
        match &self.jwks {
            None => verify::verify(&parsed, &[&self.keys], &self.rules, now),
            Some((src, _)) => {
                let remote = src.keys();
                verify::verify(&parsed, &[&self.keys, &remote], &self.rules, now)
            }
        }
    }

    /// The core: finds the token, verifies it (or finds it in the cache of verified
    /// tokens), and on success maps it to an identity, stored in `ctx.identity` and
    /// returned. Nothing else is touched; the token is never logged.
    pub async fn authenticate(&self, req: &RequestView<'_>, ctx: &mut FilterCtx) -> JwtOutcome {
        let Some(token) = self.token(req) else {
            return JwtOutcome::Missing;
        };
        let now = (self.clock)();
        let key = self.cache.is_on().then(|| {
            if let Some((src, _)) = &self.jwks {
                self.cache.follow(&src.keys());
            }
            self.cache.key(token)
        });
        if let Some(identity) = key.and_then(|k| self.cache.get(k, now)) {
            ctx.identity = Some(identity.clone());
            return JwtOutcome::Identified(identity);
        }
        let mut result = self.check(token, now);
        if result == Err(Invalid::UnknownKey) {
            if let Some((src, wait)) = &self.jwks {
                if src.refetch(*wait).await {
                    result = self.check(token, (self.clock)());
                }
            }
        }
        let claims = match result {
            Ok(c) => c,
            Err(r) => return JwtOutcome::Invalid(r),
        };
        let identity = match self.identity(&claims) {
            Ok(identity) => identity,
            Err(r) => return JwtOutcome::Invalid(r),
        };
        if let Some(k) = key {
            // Served again only while the verifier's own time check would pass.
            let exp = claims.get("exp").and_then(serde_json::Value::as_f64);
            let until = exp.map_or(f64::INFINITY, |e| e + self.rules.leeway as f64);
            self.cache.put(k, until, identity.clone());
        }
        ctx.identity = Some(identity.clone());
        JwtOutcome::Identified(identity)
    }

    /// The identity a verified token's claims name.
    fn identity(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Result<Identity, Invalid> {
        let Some(name) = claims
            .get(&self.consumer_claim)
            .map(verify::claim_text)
            .filter(|s| !s.is_empty())
        else {
            return Err(Invalid::Consumer);
        };
        let groups = match self.consumers.get(&name) {
            Some(g) => g.clone(),
            None if self.require_consumer => return Err(Invalid::Consumer),
            None => Vec::new(),
        };
        let mut kept = vec![(Arc::from(self.consumer_claim.as_str()), Arc::from(name.as_str()))];
        for (claim, _) in &self.forward {
            if **claim == *self.consumer_claim {
                continue;
            }
            if let Some(v) = claims.get(&**claim) {
                kept.push((claim.clone(), Arc::from(verify::claim_text(v).as_str())));
            }
        }
        Ok(Identity {
            consumer: Arc::from(name.as_str()),
            groups,
            claims: kept,
        })
    }

    /// The 401 refusal for an outcome that is not [`JwtOutcome::Identified`].
    pub fn reject(&self, outcome: &JwtOutcome) -> Reject {
        match outcome {
            JwtOutcome::Invalid(_) => {
                Reject::new(RejectKind::Unauthenticated, "the credentials are not valid")
                    .with_header(http::header::WWW_AUTHENTICATE, self.challenge_invalid.clone())
            }
            _ => Reject::new(RejectKind::Unauthenticated, "authentication is required")
                .with_header(http::header::WWW_AUTHENTICATE, self.challenge_missing.clone()),
        }
    }

    /// Removes the token from the upstream request (unless `keep_token`) and any client
    /// copy of the claim headers, then sets those from the identity.
    pub fn forward(&self, headers: &mut dyn HeaderEdit, ctx: &FilterCtx) {
        if !self.keep_token {
            for s in &self.sources {
                match s {
                    Source::Header { name, .. } => {
                        if headers.headers().contains_key(name) {
                            headers.remove(name);
                        }
                    }
                    Source::Cookie(name) => strip_cookie(headers, name),
                    Source::Query(name) => headers.remove_query_param(name),
                }
            }
        }
        for (claim, header) in &self.forward {
            if headers.headers().contains_key(header) {
                headers.remove(header);
            }
            let value = ctx.identity.as_ref().and_then(|id| id.claim(claim));
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.set(header.clone(), v);
            }
        }
    }
}

/// Removes cookie `name` from the `Cookie` header(s), keeping the others.
fn strip_cookie(headers: &mut dyn HeaderEdit, name: &str) {
    let all: Vec<String> = headers
        .headers()
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(String::from)
        .collect();
    let has = |c: &str| c.trim().split_once('=').is_some_and(|(k, _)| k == name);
    if !all.iter().any(|v| v.split(';').any(has)) {
        return;
    }
    let kept: Vec<&str> = all
        .iter()
        .flat_map(|v| v.split(';'))
        .filter(|c| !has(c) && !c.trim().is_empty())
        .map(str::trim)
        .collect();
    headers.remove(&http::header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.set(http::header::COOKIE, v);
        }
    }
}

#[async_trait]
impl Filter for Jwt {
    fn kind(&self) -> &'static str {
        "jwt"
    }

    fn consumers_digest(&self) -> Option<&str> {
        Some(&self.consumers_digest)
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            upstream_request: true,
            ..Phases::default()
        }
    }

    async fn on_request(&self, req: &RequestView<'_>, ctx: &mut FilterCtx) -> Flow {
        match self.authenticate(req, ctx).await {
            JwtOutcome::Identified(_) => Flow::Continue,
            other => {
                if let JwtOutcome::Invalid(reason) = &other {
                    tracing::debug!(request_id = %ctx.request_id, reason = reason.as_str(), "jwt: token refused");
                }
                Flow::Reject(self.reject(&other))
            }
        }
    }

    fn on_upstream_request(&self, headers: &mut dyn HeaderEdit, ctx: &FilterCtx) {
        self.forward(headers, ctx);
    }
}

#[cfg(test)]
mod tests;
