//! key-auth: an API key from a header (default `apikey`, as Kong and APISIX) or a query
//! parameter (default `apikey`), matched against consumers' keys.
//!
//! ```yaml
//! consumers:
//!   - name: alice
//!     credentials:
//!       key_auth: {keys: ["s3cr3t", "sha256:<hex of the key's SHA-256>"]}
//! routes:
//!   - filters: [{key_auth: {header: apikey, query: apikey, hide_credentials: true}}]
//! ```
//!
//! Lookup: the presented key's SHA-256 picks the entry in a hash map (keyed with a
//! random per-process key, so probe timing says nothing), then the stored key (or
//! stored hash) is compared with `subtle`'s constant-time equality.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sluice_config::ConfigError;
use subtle::ConstantTimeEq;

use super::{AuthMethod, AuthOutcome, MethodKind};
use crate::auth::consumers::{credential_error, parse_credential, Consumer, Consumers};
use crate::registry::{parse, BuildCtx, BuildResult, Kind, SpecError};
use sluice_core::filter::{FilterCtx, HeaderEdit, RequestView};

/// The method's registry entry.
pub const METHOD: MethodKind = MethodKind {
    name: "key_auth",
    build,
    credentials: Some(check_credentials),
    redact: crate::registry::shown_as::<KeyAuthSpec>,
    schema: crate::registry::schema_of::<KeyAuthSpec>,
};

/// The standalone `key_auth` filter kind.
pub const KIND: Kind = Kind {
    name: "key_auth",
    answers: false,
    build: build_kind,
    redact: |spec| super::redact_standalone("key_auth", spec),
    schema: Some(crate::auth::standalone_schema::<KeyAuthSpec>),
};

fn build_kind(spec: &serde_json::Value, ctx: &BuildCtx<'_>) -> BuildResult {
    super::build_standalone("key_auth", spec, ctx)
}

/// Where the key is looked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyAuthSpec {
    /// Request header carrying the key; `null` to not read a header. Default: `apikey`.
    #[serde(default = "default_name")]
    pub header: Option<String>,
    /// Query parameter carrying the key (read when the header is absent); `null` to not
    /// read the query. Default: `apikey`.
    #[serde(default = "default_name")]
    pub query: Option<String>,
    /// Remove the key (header or query parameter) from the request sent upstream.
    /// Default: `true`.
    #[serde(default = "yes")]
    pub hide_credentials: bool,
    /// The realm of the `WWW-Authenticate: Key realm="…"` challenge. Default: `sluice`.
    #[serde(default = "default_realm")]
    pub realm: String,
}

fn default_name() -> Option<String> {
    Some("apikey".into())
}

fn yes() -> bool {
    true
}

fn default_realm() -> String {
    "sluice".into()
}

/// A consumer's key-auth credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCredential {
    /// The consumer's keys, each in plain text or as `sha256:<64 hex digits>` (the
    /// SHA-256 of the key). Required, at least one.
    pub keys: Vec<String>,
}

/// A stored key.
#[derive(Debug, Clone)]
enum Stored {
    Plain(Box<[u8]>),
    Sha256([u8; 32]),
}

/// A key's entry in the index.
#[derive(Debug, Clone)]
struct Entry {
    consumer: Arc<Consumer>,
    stored: Stored,
}

/// Every consumer key, by the SHA-256 of the key.
#[derive(Debug, Default)]
pub struct KeyIndex {
    map: HashMap<[u8; 32], Entry>,
    errors: Vec<ConfigError>,
}

fn parse_key(key: &str) -> Result<Stored, String> {
    if let Some(hex) = key.strip_prefix("sha256:") {
        let mut out = [0u8; 32];
        return match hex::decode_to_slice(hex, &mut out) {
            Ok(()) => Ok(Stored::Sha256(out)),
            Err(_) => Err("a sha256: key needs 64 hex digits".into()),
        };
    }
    if key.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(Stored::Plain(key.as_bytes().into()))
}

impl KeyIndex {
    /// Builds the index over every consumer's `credentials.key_auth`; spec errors and
    /// keys given to two consumers are kept in [`KeyIndex::errors`].
    pub fn new(consumers: &Consumers) -> KeyIndex {
        let mut index = KeyIndex::default();
        for (c, spec) in consumers.credentials("key_auth") {
            let cred: KeyCredential = match parse_credential(spec) {
                Ok(k) => k,
                Err(es) => {
                    index
                        .errors
                        .extend(es.iter().map(|e| credential_error(c.index, "key_auth", e)));
                    continue;
                }
            };
            if cred.keys.is_empty() {
                index.errors.push(credential_error(
                    c.index,
                    "key_auth",
                    &SpecError::at("keys", "at least one key is required"),
                ));
            }
            for (i, k) in cred.keys.iter().enumerate() {
                let at = |m: String| {
                    credential_error(c.index, "key_auth", &SpecError::at(format!("keys[{i}]"), m))
                };
                let stored = match parse_key(k) {
                    Ok(s) => s,
                    Err(m) => {
                        index.errors.push(at(m));
                        continue;
                    }
                };
                let digest: [u8; 32] = match &stored {
                    Stored::Plain(k) => Sha256::digest(k).into(),
                    Stored::Sha256(h) => *h,
                };
                if let Some(other) = index.map.get(&digest) {
                    // Never print the key: only who else has it.
                    index.errors.push(at(format!(
                        "the same key as consumer {:?} (consumers[{}]); keys must be unique",
                        other.consumer.name, other.consumer.index
                    )));
                    continue;
                }
                index.map.insert(
                    digest,
                    Entry {
                        consumer: c.clone(),
                        stored,
                    },
                );
            }
        }
        index
    }

    /// The consumer whose key is `key`.
    pub fn lookup(&self, key: &[u8]) -> Option<&Arc<Consumer>> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        let e = self.map.get(&digest)?;
        let ok = match &e.stored {
            Stored::Plain(k) => k.ct_eq(key),
            Stored::Sha256(h) => h.ct_eq(&digest),
        };
        bool::from(ok).then_some(&e.consumer)
    }

    /// How many keys the index holds.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Errors found while building it.
    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }
}

fn check_credentials(consumers: &Consumers) -> Vec<ConfigError> {
    consumers.index("key_auth", KeyIndex::new).errors.clone()
}

/// The key-auth method.
pub struct KeyAuth {
    header: Option<HeaderName>,
    query: Option<String>,
    hide: bool,
    challenge: HeaderValue,
    index: Arc<KeyIndex>,
}

fn build(spec: &serde_json::Value, ctx: &BuildCtx<'_>) -> Result<Arc<dyn AuthMethod>, Vec<SpecError>> {
    let spec: KeyAuthSpec = parse(spec)?;
    let consumers = Consumers::of(ctx);
    Ok(Arc::new(KeyAuth::new(
        &spec,
        consumers.index("key_auth", KeyIndex::new),
    )?))
}

impl KeyAuth {
    /// Validates `spec` and builds the method over `index`.
    pub fn new(spec: &KeyAuthSpec, index: Arc<KeyIndex>) -> Result<KeyAuth, Vec<SpecError>> {
        let mut errors = Vec::new();
        let header = match spec.header.as_deref() {
            Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) => Some(h),
                Err(e) => {
                    errors.push(SpecError::at("header", format!("invalid header name: {e}")));
                    None
                }
            },
            None => None,
        };
        if spec.query.as_deref() == Some("") {
            errors.push(SpecError::at("query", "must not be empty (null turns it off)"));
        }
        if spec.header.is_none() && spec.query.is_none() {
            errors.push(SpecError::at("", "needs a header or a query parameter"));
        }
        let challenge = HeaderValue::from_str(&format!("Key realm=\"{}\"", spec.realm))
            .map_err(|_| vec![SpecError::at("realm", "must be printable text without quotes")]);
        if spec.realm.contains('"') {
            errors.push(SpecError::at("realm", "must not contain a quote"));
        }
        let challenge = match challenge {
            Ok(c) => c,
            Err(es) => {
                errors.extend(es);
                HeaderValue::from_static("Key")
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(KeyAuth {
            header,
            query: spec.query.clone(),
            hide: spec.hide_credentials,
            challenge,
            index,
        })
    }
}

/// The request's key came from this query parameter, which is removed from the
/// request sent upstream (`hide_credentials`).
#[derive(Debug, Clone)]
struct FromQuery(Arc<str>);

/// The value of query parameter `name` in `query`, percent-decoded when it needs to be.
fn query_param<'a>(query: &'a str, name: &str) -> Option<std::borrow::Cow<'a, [u8]>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> std::borrow::Cow<'_, [u8]> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return std::borrow::Cow::Borrowed(s.as_bytes());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

#[async_trait]
impl AuthMethod for KeyAuth {
    fn name(&self) -> &'static str {
        "key_auth"
    }

    async fn authenticate(&self, req: &RequestView<'_>, ctx: &mut FilterCtx) -> AuthOutcome {
        let from_header = self.header.as_ref().and_then(|h| req.headers.get(h));
        let (key, from_query) = match from_header {
            Some(v) => (std::borrow::Cow::Borrowed(v.as_bytes()), false),
            None => match (&self.query, req.query) {
                (Some(name), Some(q)) => match query_param(q, name) {
                    Some(k) => (k, true),
                    None => return AuthOutcome::Missing,
                },
                _ => return AuthOutcome::Missing,
            },
        };
        if key.is_empty() {
            return AuthOutcome::Invalid;
        }
        match self.index.lookup(&key) {
            Some(c) => {
                // The key leaves the request wherever the client put it, not only where
                // it was read: a query copy goes even when the header carried the key
                // (the header itself is removed by `strip`).
                if self.hide {
                    if let Some(name) = &self.query {
                        if from_query || req.query.is_some_and(|q| query_param(q, name).is_some()) {
                            ctx.ext.insert(FromQuery(Arc::from(name.as_str())));
                        }
                    }
                }
                AuthOutcome::Identified(c.identity())
            }
            None => AuthOutcome::Invalid,
        }
    }

    fn challenge(&self) -> Option<HeaderValue> {
        Some(self.challenge.clone())
    }

    fn strips(&self) -> bool {
        self.hide && (self.header.is_some() || self.query.is_some())
    }

    fn strip(&self, headers: &mut dyn HeaderEdit, ctx: &FilterCtx) {
        if let Some(h) = &self.header {
            if headers.headers().contains_key(h) {
                headers.remove(h);
            }
        }
        if let Some(FromQuery(name)) = ctx.ext.get::<FromQuery>() {
            headers.remove_query_param(name);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::tests::{build, config, run};
    use sluice_core::filter::{Flow, RejectKind};

    fn table(yaml: &str) -> Consumers {
        Consumers::new(&config(yaml).consumers)
    }

    #[test]
    fn plain_and_hashed_keys_are_found_in_constant_time() {
        let hashed = hex::encode(Sha256::digest(b"bob-key"));
        let t = table(&format!(
            "consumers: [{{name: alice, credentials: {{key_auth: {{keys: [alice-key]}}}}}}, {{name: bob, credentials: {{key_auth: {{keys: ['sha256:{hashed}']}}}}}}]"
        ));
        let idx = KeyIndex::new(&t);
        assert!(idx.errors().is_empty(), "{:?}", idx.errors());
        assert_eq!(&*idx.lookup(b"alice-key").unwrap().name, "alice");
        assert_eq!(&*idx.lookup(b"bob-key").unwrap().name, "bob");
        assert!(idx.lookup(b"alice-key2").is_none());
        assert!(idx.lookup(b"").is_none());
    }

    #[test]
    fn bad_and_duplicate_keys_are_errors_without_the_key() {
        let t = table(
            "consumers: [{name: a, credentials: {key_auth: {keys: [topsecret]}}}, {name: b, credentials: {key_auth: {keys: ['', 'sha256:zz', topsecret]}}}, {name: c, credentials: {key_auth: {kyes: [x]}}}]",
        );
        let errs: Vec<String> = KeyIndex::new(&t)
            .errors()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(
            errs[0].starts_with("consumers[1].credentials.key_auth.keys[0]: must not be empty"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("consumers[1].credentials.key_auth.keys[1]: a sha256"),
            "{errs:?}"
        );
        assert!(
            errs[2].starts_with("consumers[1].credentials.key_auth.keys[2]: the same key as consumer \"a\""),
            "{errs:?}"
        );
        assert!(
            errs[3].starts_with("consumers[2].credentials.key_auth.kyes: unknown field"),
            "{errs:?}"
        );
        assert!(!errs.iter().any(|e| e.contains("topsecret")));
    }

    #[test]
    fn header_then_query_and_the_query_key_is_stripped() {
        let c = config("consumers: [{name: alice, credentials: {key_auth: {keys: ['a b&c']}}}]");
        let f = build("key_auth", serde_json::json!({}), &c).unwrap();
        let (flow, ctx) = run(&*f, &[("apikey", "a b&c")], None);
        assert!(matches!(flow, Flow::Continue));
        assert!(ctx.ext.get::<FromQuery>().is_none());
        // Sent both ways: read from the header, stripped from the query too.
        let (flow, ctx) = run(&*f, &[("apikey", "a b&c")], Some("apikey=a+b%26c&x=1"));
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(&*ctx.ext.get::<FromQuery>().unwrap().0, "apikey");
        let (flow, ctx) = run(&*f, &[], Some("x=1&apikey=a+b%26c"));
        assert!(matches!(flow, Flow::Continue), "{flow:?}");
        assert_eq!(&*ctx.ext.get::<FromQuery>().unwrap().0, "apikey");
        let (flow, _) = run(&*f, &[("apikey", "wrong")], Some("apikey=a+b%26c"));
        let Flow::Reject(r) = flow else { panic!() };
        assert_eq!(r.kind, RejectKind::Unauthenticated);
        assert_eq!(r.headers[0].1, "Key realm=\"sluice\"");
        let off = build(
            "key_auth",
            serde_json::json!({"query": null, "header": "x-key"}),
            &c,
        )
        .unwrap();
        let (flow, _) = run(&*off, &[], Some("apikey=a+b%26c"));
        let Flow::Reject(r) = flow else { panic!() };
        assert_eq!(r.message, crate::auth::MISSING);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(&*percent_decode("a%20b%zz%4"), b"a b%zz%4");
        assert_eq!(&*percent_decode("plain"), b"plain");
    }
}
