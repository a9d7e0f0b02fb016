//! basic-auth: `Authorization: Basic base64(user:password)` checked against consumers'
//! argon2 (PHC string, `$argon2id$…`) or bcrypt (`$2b$…`) password hashes.
//!
//! ```yaml
//! consumers:
//!   - name: alice
//!     credentials:
//!       basic_auth: {username: alice, password_hash: "$argon2id$v=19$m=19456,t=2,p=1$…"}
//! routes:
//!   - filters: [{basic_auth: {realm: api}}]
//! ```
//!
//! A good password is remembered for `cache_ttl` in a small lock-free cache (a fixed
//! array of slots, each an atomic pointer, indexed by a salted SHA-256 of the user and
//! password), so a hash is not recomputed on every request. Failures are not cached:
//! each wrong password costs its hash, which runs off the worker thread, at most one per
//! CPU at once ([`super::hashing`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use base64::Engine as _;
use http::HeaderValue;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sluice_config::ConfigError;
use subtle::ConstantTimeEq;

use super::{AuthMethod, AuthOutcome, MethodKind};
use crate::auth::consumers::{credential_error, parse_credential, Consumer, Consumers};
use crate::registry::{parse, BuildCtx, BuildResult, Kind, SpecError};
use sluice_core::filter::{FilterCtx, HeaderEdit, RequestView};
use sluice_core::resilience::{Clock, SystemClock};

/// The method's registry entry.
pub const METHOD: MethodKind = MethodKind {
    name: "basic_auth",
    build,
    credentials: Some(check_credentials),
    redact: crate::registry::shown_as::<BasicAuthSpec>,
    schema: crate::registry::schema_of::<BasicAuthSpec>,
};

/// The standalone `basic_auth` filter kind.
pub const KIND: Kind = Kind {
    name: "basic_auth",
    answers: false,
    build: build_kind,
    redact: |spec| super::redact_standalone("basic_auth", spec),
    schema: Some(crate::auth::standalone_schema::<BasicAuthSpec>),
};

fn build_kind(spec: &serde_json::Value, ctx: &BuildCtx<'_>) -> BuildResult {
    super::build_standalone("basic_auth", spec, ctx)
}

/// The basic-auth method's spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthSpec {
    /// The realm of the `WWW-Authenticate: Basic realm="…"` challenge. Default: `sluice`.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Remove the `Authorization` header from the request sent upstream.
    /// Default: `true`.
    #[serde(default = "yes")]
    pub hide_credentials: bool,
    /// How long a verified user and password are remembered. `0s` turns the cache off.
    /// Default: `30s`.
    #[schemars(with = "sluice_config::schema::DurationText")]
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How many verified credentials are remembered at most (slots; a new one may
    /// replace an older one). Default: `1024`.
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
}

fn default_realm() -> String {
    "sluice".into()
}

fn yes() -> bool {
    true
}

fn default_ttl() -> Duration {
    Duration::from_secs(30)
}

fn default_cache_size() -> usize {
    1024
}

/// A consumer's basic-auth credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicCredential {
    /// The user name, unique among consumers. Required.
    pub username: String,
    /// The password's hash: an argon2 PHC string (`$argon2id$v=19$…`, also `argon2i`,
    /// `argon2d`) or a bcrypt hash (`$2a$`, `$2b$`, `$2x$`, `$2y$`). Plain passwords are
    /// refused. Required.
    pub password_hash: String,
}

/// A stored password hash.
#[derive(Debug, Clone)]
enum PasswordHash {
    Argon2(String),
    Bcrypt(String),
}

impl PasswordHash {
    fn parse(s: &str) -> Result<PasswordHash, String> {
        if s.starts_with("$argon2") {
            return match argon2::PasswordHash::new(s) {
                Ok(_) => Ok(PasswordHash::Argon2(s.to_string())),
                Err(e) => Err(format!("not a valid argon2 PHC string: {e}")),
            };
        }
        if ["$2a$", "$2b$", "$2x$", "$2y$"].iter().any(|p| s.starts_with(p)) {
            return match s.parse::<bcrypt::HashParts>() {
                Ok(_) => Ok(PasswordHash::Bcrypt(s.to_string())),
                Err(_) => Err("not a valid bcrypt hash".into()),
            };
        }
        Err("must be an argon2 PHC string ($argon2id$...) or a bcrypt hash ($2b$...); plain passwords are not accepted".into())
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Argon2(s) => {
                use argon2::PasswordVerifier as _;
                argon2::PasswordHash::new(s)
                    .map(|h| argon2::Argon2::default().verify_password(password, &h).is_ok())
                    .unwrap_or(false)
            }
            PasswordHash::Bcrypt(s) => bcrypt::verify(password, s).unwrap_or(false),
        }
    }
}

/// Hashes `password` for a consumer's `password_hash`: argon2id with the crate's
/// default parameters (a PHC string), or bcrypt with cost 12. What
/// `sluice hash-password` prints.
pub fn hash_password(password: &str, bcrypt: bool) -> Result<String, String> {
    if bcrypt {
        return bcrypt::hash(password, 12).map_err(|e| e.to_string());
    }
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Every consumer's basic-auth user.
#[derive(Debug, Default)]
pub struct UserIndex {
    users: HashMap<String, (Arc<Consumer>, PasswordHash)>,
    errors: Vec<ConfigError>,
}

impl UserIndex {
    /// Builds the index; spec errors and user names given to two consumers are kept in
    /// [`UserIndex::errors`].
    pub fn new(consumers: &Consumers) -> UserIndex {
        let mut index = UserIndex::default();
        for (c, spec) in consumers.credentials("basic_auth") {
            let err =
                |path: &str, m: String| credential_error(c.index, "basic_auth", &SpecError::at(path, m));
            let cred: BasicCredential = match parse_credential(spec) {
                Ok(k) => k,
                Err(es) => {
                    index
                        .errors
                        .extend(es.iter().map(|e| credential_error(c.index, "basic_auth", e)));
                    continue;
                }
            };
            if cred.username.is_empty() || cred.username.contains(':') {
                index
                    .errors
                    .push(err("username", "must be non-empty and without ':'".into()));
                continue;
            }
            let hash = match PasswordHash::parse(&cred.password_hash) {
                Ok(h) => h,
                Err(m) => {
                    index.errors.push(err("password_hash", m));
                    continue;
                }
            };
            if let Some((other, _)) = index.users.get(&cred.username) {
                index.errors.push(err(
                    "username",
                    format!(
                        "user {:?} is already consumer {:?}'s (consumers[{}])",
                        cred.username, other.name, other.index
                    ),
                ));
                continue;
            }
            index.users.insert(cred.username, (c.clone(), hash));
        }
        index
    }

    /// Errors found while building it.
    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }

    /// The consumer whose user is `user` and password `password` (runs the hash).
    pub fn verify(&self, user: &str, password: &[u8]) -> Option<&Arc<Consumer>> {
        let (c, hash) = self.users.get(user)?;
        hash.verify(password).then_some(c)
    }
}

fn check_credentials(consumers: &Consumers) -> Vec<ConfigError> {
    consumers.index("basic_auth", UserIndex::new).errors.clone()
}

struct CacheEntry {
    key: [u8; 32],
    consumer: Arc<Consumer>,
    expires: Instant,
}

/// A bounded cache of verified credentials: `size` slots, each an atomic pointer,
/// direct-mapped by a salted SHA-256 of the credential. Lock-free; a new entry replaces
/// whatever was in its slot.
pub struct VerifiedCache {
    slots: Box<[ArcSwapOption<CacheEntry>]>,
    salt: [u8; 16],
    ttl: Duration,
    clock: Arc<dyn Clock>,
}

impl VerifiedCache {
    /// A cache of `size` slots keeping entries for `ttl` on `clock`.
    pub fn new(size: usize, ttl: Duration, clock: Arc<dyn Clock>) -> VerifiedCache {
        VerifiedCache {
            slots: (0..size).map(|_| ArcSwapOption::empty()).collect(),
            salt: rand::random(),
            ttl,
            clock,
        }
    }

    fn key(&self, user: &str, password: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update((user.len() as u64).to_le_bytes());
        h.update(user.as_bytes());
        h.update(password);
        h.finalize().into()
    }

    fn slot(&self, key: &[u8; 32]) -> Option<&ArcSwapOption<CacheEntry>> {
        if self.slots.is_empty() || self.ttl.is_zero() {
            return None;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&key[..8]);
        let i = (u64::from_le_bytes(b) % self.slots.len() as u64) as usize;
        self.slots.get(i)
    }

    /// The consumer remembered for `key`, if still fresh.
    fn get(&self, key: &[u8; 32]) -> Option<Arc<Consumer>> {
        let slot = self.slot(key)?;
        let e = slot.load_full()?;
        (bool::from(e.key.ct_eq(key)) && self.clock.now() < e.expires).then(|| e.consumer.clone())
    }

    fn put(&self, key: [u8; 32], consumer: Arc<Consumer>) {
        if let Some(slot) = self.slot(&key) {
            slot.store(Some(Arc::new(CacheEntry {
                key,
                consumer,
                expires: self.clock.now() + self.ttl,
            })));
        }
    }
}

/// The basic-auth method.
pub struct BasicAuth {
    hide: bool,
    challenge: HeaderValue,
    users: Arc<UserIndex>,
    cache: VerifiedCache,
}

fn build(spec: &serde_json::Value, ctx: &BuildCtx<'_>) -> Result<Arc<dyn AuthMethod>, Vec<SpecError>> {
    let spec: BasicAuthSpec = parse(spec)?;
    let consumers = Consumers::of(ctx);
    Ok(Arc::new(BasicAuth::new(
        &spec,
        consumers.index("basic_auth", UserIndex::new),
        Arc::new(SystemClock),
    )?))
}

impl BasicAuth {
    /// Validates `spec` and builds the method over `users`, its cache on `clock`.
    pub fn new(
        spec: &BasicAuthSpec,
        users: Arc<UserIndex>,
        clock: Arc<dyn Clock>,
    ) -> Result<BasicAuth, Vec<SpecError>> {
        if spec.realm.contains('"') {
            return Err(vec![SpecError::at("realm", "must not contain a quote")]);
        }
        if spec.cache_size > 1 << 20 {
            return Err(vec![SpecError::at("cache_size", "at most 1048576")]);
        }
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{}\", charset=\"UTF-8\"", spec.realm))
            .map_err(|_| vec![SpecError::at("realm", "must be printable text")])?;
        Ok(BasicAuth {
            hide: spec.hide_credentials,
            challenge,
            users,
            cache: VerifiedCache::new(spec.cache_size, spec.cache_ttl, clock),
        })
    }

    /// Checks a user and password: the cache first, else the hash (then cached), off
    /// the worker thread.
    pub async fn check(&self, user: &str, password: &[u8]) -> Option<Arc<Consumer>> {
        let key = self.cache.key(user, password);
        if let Some(c) = self.cache.get(&key) {
            return Some(c);
        }
        let users = self.users.clone();
        let (user, password) = (user.to_owned(), password.to_vec());
        let c = super::hashing::HASHING
            .run(move || users.verify(&user, &password).cloned())
            .await??;
        self.cache.put(key, c.clone());
        Some(c)
    }
}

/// The user and password of a `Basic` authorization header: `None` when the header is
/// another scheme, `Some(Err)` when it is Basic but malformed.
fn basic_credentials(value: &HeaderValue) -> Option<Result<(String, Vec<u8>), ()>> {
    let v = value.as_bytes();
    let (scheme, rest) = match v.iter().position(|b| *b == b' ') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &v[v.len()..]),
    };
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim_ascii());
    Some((|| {
        let decoded = decoded.map_err(|_| ())?;
        let i = decoded.iter().position(|b| *b == b':').ok_or(())?;
        let user = std::str::from_utf8(&decoded[..i]).map_err(|_| ())?.to_string();
        Ok((user, decoded[i + 1..].to_vec()))
    })())
}

#[async_trait]
impl AuthMethod for BasicAuth {
    fn name(&self) -> &'static str {
        "basic_auth"
    }

    async fn authenticate(&self, req: &RequestView<'_>, _ctx: &mut FilterCtx) -> AuthOutcome {
        let Some(value) = req.headers.get(http::header::AUTHORIZATION) else {
            return AuthOutcome::Missing;
        };
        match basic_credentials(value) {
            None => AuthOutcome::Missing,
            Some(Err(())) => AuthOutcome::Invalid,
            Some(Ok((user, password))) => match self.check(&user, &password).await {
                Some(c) => AuthOutcome::Identified(c.identity()),
                None => AuthOutcome::Invalid,
            },
        }
    }

    fn challenge(&self) -> Option<HeaderValue> {
        Some(self.challenge.clone())
    }

    fn strips(&self) -> bool {
        self.hide
    }

    fn strip(&self, headers: &mut dyn HeaderEdit, _ctx: &FilterCtx) {
        if headers.headers().contains_key(http::header::AUTHORIZATION) {
            headers.remove(&http::header::AUTHORIZATION);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::tests::{build, config, run};
    use sluice_core::filter::Flow;
    use sluice_core::resilience::ManualClock;

    fn argon2_hash(pw: &str) -> String {
        use argon2::password_hash::{PasswordHasher, SaltString};
        // Small parameters: the test is about the format, not the cost.
        let params = argon2::Params::new(1024, 1, 1, None).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        a.hash_password(pw.as_bytes(), &SaltString::from_b64("c2FsdHNhbHRzYWx0").unwrap())
            .unwrap()
            .to_string()
    }

    fn consumers_yaml() -> String {
        let a = argon2_hash("pa:ss");
        let b = bcrypt::hash("bobpw", 4).unwrap();
        format!(
            "consumers: [{{name: alice, credentials: {{basic_auth: {{username: alice, password_hash: '{a}'}}}}}}, {{name: bob, credentials: {{basic_auth: {{username: bob, password_hash: '{b}'}}}}}}]"
        )
    }

    fn basic(user: &str, pw: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        )
    }

    #[test]
    fn argon2_and_bcrypt_users() {
        let c = config(&consumers_yaml());
        let f = build("basic_auth", serde_json::json!({"realm": "api"}), &c).unwrap();
        let (flow, ctx) = run(&*f, &[("authorization", &basic("alice", "pa:ss"))], None);
        assert!(matches!(flow, Flow::Continue), "{flow:?}");
        assert_eq!(&*ctx.identity.unwrap().consumer, "alice");
        let (flow, ctx) = run(&*f, &[("authorization", &basic("bob", "bobpw"))], None);
        assert!(matches!(flow, Flow::Continue), "{flow:?}");
        assert_eq!(&*ctx.identity.unwrap().consumer, "bob");
        for bad in [
            basic("bob", "alicepw"),
            basic("carol", "x"),
            "Basic !!!".into(),
            "Basic Ym9i".into(),
        ] {
            let (flow, _) = run(&*f, &[("authorization", &bad)], None);
            let Flow::Reject(r) = flow else { panic!("{bad}") };
            assert_eq!(r.message, crate::auth::INVALID);
            assert_eq!(r.headers[0].1, "Basic realm=\"api\", charset=\"UTF-8\"");
        }
        let (flow, _) = run(&*f, &[("authorization", "Bearer x")], None);
        let Flow::Reject(r) = flow else { panic!() };
        assert_eq!(r.message, crate::auth::MISSING);
    }

    #[test]
    fn hash_password_makes_hashes_the_method_accepts() {
        for bcrypt in [false, true] {
            let h = hash_password("s3cret", bcrypt).unwrap();
            let parsed = PasswordHash::parse(&h).unwrap();
            assert!(parsed.verify(b"s3cret"));
            assert!(!parsed.verify(b"s3cret!"));
        }
    }

    #[test]
    fn verified_credentials_are_cached_until_the_ttl() {
        let c = config(&consumers_yaml());
        let t = Consumers::new(&c.consumers);
        let users = Arc::new(UserIndex::new(&t));
        assert!(users.errors().is_empty(), "{:?}", users.errors());
        let clock = ManualClock::new();
        let spec: BasicAuthSpec = serde_yaml::from_str("{cache_ttl: 10s, cache_size: 4}").unwrap();
        let b = BasicAuth::new(&spec, users, Arc::new(clock.clone())).unwrap();
        let key = b.cache.key("bob", b"bobpw");
        let check = |u: &str, p: &[u8]| crate::test_support::block_on(b.check(u, p));
        assert!(b.cache.get(&key).is_none());
        assert_eq!(&*check("bob", b"bobpw").unwrap().name, "bob");
        assert!(b.cache.get(&key).is_some());
        // A wrong password is neither cached nor matched by the cached good one.
        assert!(check("bob", b"bobpw2").is_none());
        assert!(b.cache.get(&b.cache.key("bob", b"bobpw2")).is_none());
        clock.advance(Duration::from_secs(11));
        assert!(b.cache.get(&key).is_none());
        assert!(check("bob", b"bobpw").is_some());
    }

    #[test]
    fn plain_passwords_and_duplicate_users_are_refused() {
        let c = config(
            "consumers: [{name: a, credentials: {basic_auth: {username: u, password_hash: hunter2}}}, {name: b, credentials: {basic_auth: {username: u, password_hash: '$2b$04$abcdefghijklmnopqrstuOabcdefghijklmnopqrstuvwxyz01234'}}}, {name: c, credentials: {basic_auth: {username: u, password_hash: '$2b$04$abcdefghijklmnopqrstuOabcdefghijklmnopqrstuvwxyz01234'}}}]",
        );
        let errs: Vec<String> = UserIndex::new(&Consumers::new(&c.consumers))
            .errors()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("consumers[0].credentials.basic_auth.password_hash: must be an argon2"),
            "{errs:?}"
        );
        assert!(!errs[0].contains("hunter2"));
        assert!(
            errs[1].starts_with("consumers[2].credentials.basic_auth.username: user \"u\" is already"),
            "{errs:?}"
        );
    }
}
