//! Secrets as a type that redacts itself.
//!
//! Every config field that holds a secret (the admin token, a JWT HS secret, a Kafka SASL
//! password, a tracing or forward-auth header that carries a credential, a private key,
//! a webhook URL, a Redis URL's password) is a [`Secret`] or a [`SecretUrl`]. They
//! deserialise from a plain string; their `Serialize` and `Debug` print `<redacted>`
//! ([`SecretUrl`]: the URL with its password redacted), so no view, log line or `Debug`
//! string can show one by accident. The value is read with [`Secret::expose`], named so
//! that every use is easy to find.
//!
//! The few places that must serialise the real value (the content digest, which must see
//! a changed secret; a source handing a translated config on as JSON) do it inside
//! [`reveal`].

use std::cell::Cell;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a redacted secret reads in views, logs and `Debug` output.
pub const REDACTED: &str = "<redacted>";

thread_local! {
    static REVEALED: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f` with secrets serialised as their real values (on this thread only). For the
/// content digest and for handing a config on between sources; never for a view.
pub fn reveal<R, F: FnOnce() -> R>(f: F) -> R {
    struct Undo;
    impl Drop for Undo {
        fn drop(&mut self) {
            REVEALED.with(|r| r.set(r.get().saturating_sub(1)));
        }
    }
    REVEALED.with(|r| r.set(r.get() + 1));
    let _undo = Undo;
    f()
}

/// Whether this thread is inside [`reveal`].
pub(crate) fn revealed() -> bool {
    REVEALED.with(|r| r.get() > 0)
}

/// How a filter kind's spec is shown: the kind's name and its raw spec in, the spec with
/// its secret fields redacted out.
pub type SpecRedactor = fn(&str, &serde_json::Value) -> serde_json::Value;

static SPEC_REDACTOR: std::sync::OnceLock<SpecRedactor> = std::sync::OnceLock::new();

/// Installs the filter kinds' redactor (the filter registry does, once; later calls
/// change nothing). Until one is installed, every value of every filter spec is shown
/// as `<redacted>`: a view never shows a secret because a redactor was missing.
pub fn set_spec_redactor(f: SpecRedactor) {
    let _ = SPEC_REDACTOR.set(f);
}

/// `spec` (of filter kind `kind`) as views show it: through the installed redactor, or
/// with every value redacted when there is none.
pub fn redact_spec(kind: &str, spec: &serde_json::Value) -> serde_json::Value {
    match SPEC_REDACTOR.get() {
        Some(f) => f(kind, spec),
        None => crate::model::redact_value(spec),
    }
}

/// `raw` as views show it, judged by the type it deserialises into: `raw` is read as a
/// `T`, serialised again (its [`Secret`] fields then read `<redacted>`), and every value
/// that came out redacted is redacted in `raw`, which otherwise keeps its shape and
/// spelling. A value that is not a valid `T`, and any part of `raw` the typed form does
/// not show (an alias, a skipped field), is redacted whole: when in doubt, hide.
pub fn redact_as<T: serde::de::DeserializeOwned + Serialize>(raw: &serde_json::Value) -> serde_json::Value {
    let shown = serde_json::from_value::<T>(raw.clone())
        .ok()
        .and_then(|t| serde_json::to_value(&t).ok());
    match shown {
        Some(shown) => overlay(raw, &shown),
        None => crate::model::redact_value(raw),
    }
}

fn overlay(raw: &serde_json::Value, shown: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (raw, shown) {
        (Value::Object(r), Value::Object(s)) => Value::Object(
            r.iter()
                .map(|(k, v)| {
                    let v = match s.get(k) {
                        Some(sv) => overlay(v, sv),
                        None => crate::model::redact_value(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        (Value::Array(r), Value::Array(s)) if r.len() == s.len() => {
            Value::Array(r.iter().zip(s).map(|(r, s)| overlay(r, s)).collect())
        }
        (_, Value::String(s)) if s.contains(REDACTED) && raw != shown => shown.clone(),
        (Value::Object(_) | Value::Array(_), _) if holds_redacted(shown) => crate::model::redact_value(raw),
        _ => raw.clone(),
    }
}

fn holds_redacted(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains(REDACTED),
        Value::Array(a) => a.iter().any(holds_redacted),
        Value::Object(m) => m.values().any(holds_redacted),
        _ => false,
    }
}

/// A secret string: `<redacted>` in `Serialize` (outside [`reveal`]) and `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret's value. Every use is one to review: it must not reach a view or a log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// In the config's JSON Schema a secret is a plain string (`writeOnly`: views show it
/// `<redacted>`).
impl schemars::JsonSchema for Secret {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Secret".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "writeOnly": true,
            "description": "A secret: views, logs and `Debug` show it `<redacted>`.",
        })
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if revealed() {
            s.serialize_str(&self.0)
        } else {
            s.serialize_str(REDACTED)
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// A URL that may carry a password (`redis://:pw@host:6379/0`): shown with the password
/// (and a user name given without one, which Redis reads as the password) replaced by
/// `<redacted>`; the scheme, host, port and path stay visible, so a view still says
/// where it points.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct SecretUrl(Secret);

/// In the config's JSON Schema a secret URL is a plain string.
impl schemars::JsonSchema for SecretUrl {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SecretUrl".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A URL whose credentials (user info, tokens) views show `<redacted>`.",
        })
    }
}

impl SecretUrl {
    /// A URL holding `value`.
    pub fn new(value: impl Into<String>) -> SecretUrl {
        SecretUrl(Secret::new(value))
    }

    /// The URL as given, password included.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The URL with its credentials redacted.
    pub fn redacted(&self) -> String {
        redact_url(self.0.expose())
    }
}

impl From<&str> for SecretUrl {
    fn from(value: &str) -> SecretUrl {
        SecretUrl::new(value)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if revealed() {
            s.serialize_str(self.0.expose())
        } else {
            s.serialize_str(&self.redacted())
        }
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretUrl::new)
    }
}

/// `url` with the userinfo (`user:password@`, or `token@`) redacted; a URL without one
/// is returned as it is. Something that does not parse as `scheme://...` is redacted
/// whole.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return REDACTED.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rfind('@') {
        None => url.to_string(),
        Some(at) => {
            let (userinfo, host) = (&authority[..at], &authority[at + 1..]);
            let shown = match userinfo.split_once(':') {
                Some((user, _)) if !user.is_empty() => format!("{user}:{REDACTED}"),
                _ => REDACTED.to_string(),
            };
            format!("{scheme}://{shown}@{host}{tail}")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    struct Holder {
        token: Secret,
        url: SecretUrl,
        maybe: Option<Secret>,
    }

    #[test]
    fn a_secret_reads_redacted_in_debug_and_serialize_and_real_when_revealed() {
        let h: Holder = serde_json::from_str(
            r#"{"token":"s3cr3t-token","url":"redis://app:pa55@redis:6379/0","maybe":"other-s3cr3t"}"#,
        )
        .unwrap();
        assert_eq!(h.token.expose(), "s3cr3t-token");
        let debug = format!("{h:?} {h:#?}");
        let json = serde_json::to_string(&h).unwrap();
        let yaml = serde_yaml::to_string(&h).unwrap();
        for shown in [&debug, &json, &yaml] {
            assert!(!shown.contains("s3cr3t") && !shown.contains("pa55"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
            assert!(shown.contains("redis:6379/0"), "the host stays visible: {shown}");
        }
        let real = reveal(|| serde_json::to_string(&h).unwrap());
        assert!(real.contains("s3cr3t-token") && real.contains("pa55"));
        // The scope ends with the closure, also when it panics.
        let _ = std::panic::catch_unwind(|| reveal::<(), _>(|| panic!("inside")));
        assert!(!serde_json::to_string(&h).unwrap().contains("s3cr3t"));
    }

    #[test]
    fn a_raw_value_keeps_its_shape_and_loses_its_secrets() {
        #[derive(Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Spec {
            #[serde(default)]
            secret: Option<Secret>,
            #[serde(default, alias = "uri")]
            url: Option<SecretUrl>,
            #[serde(default = "ten")]
            n: u32,
            #[serde(default)]
            list: Vec<Secret>,
        }
        fn ten() -> u32 {
            10
        }
        let raw = serde_json::json!({"secret": "s3cr3t", "url": "redis://:pa55@r:1", "list": ["a1", "b2"]});
        let shown = redact_as::<Spec>(&raw);
        assert_eq!(
            shown,
            serde_json::json!({"secret": REDACTED, "url": "redis://<redacted>@r:1", "list": [REDACTED, REDACTED]}),
            "defaults are not added, secrets are redacted"
        );
        // An alias the typed form spells otherwise is redacted whole.
        let shown = redact_as::<Spec>(&serde_json::json!({"uri": "redis://:pa55@r:1", "n": 3}));
        assert_eq!(shown, serde_json::json!({"uri": REDACTED, "n": 3}));
        // Something that is not a valid spec is redacted whole.
        let shown = redact_as::<Spec>(&serde_json::json!({"secret": "s3cr3t", "typo": 1}));
        assert_eq!(shown, serde_json::json!({"secret": REDACTED, "typo": REDACTED}));
    }

    #[test]
    fn without_a_redactor_every_spec_value_is_hidden() {
        let spec = serde_json::json!({"secret": "s3cr3t", "n": 1});
        if SPEC_REDACTOR.get().is_none() {
            assert_eq!(
                redact_spec("jwt", &spec),
                serde_json::json!({"secret": REDACTED, "n": REDACTED})
            );
        }
    }

    #[test]
    fn urls_lose_only_their_credentials() {
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://<redacted>@h:1/0");
        assert_eq!(redact_url("redis://user:pw@h"), "redis://user:<redacted>@h");
        assert_eq!(
            redact_url("rediss://pw@h/0?x=a@b"),
            "rediss://<redacted>@h/0?x=a@b"
        );
        assert_eq!(redact_url("http://h/p?q=user@x"), "http://h/p?q=user@x");
        assert_eq!(redact_url("not a url with pw"), REDACTED);
    }
}
