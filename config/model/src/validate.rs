//! Parsing and validation. Every error names the field path it is about, such as
//! `routes[2].match.path.regex: invalid regex …`, and validation reports every error it
//! finds rather than the first.
//!
//! Nothing here reads a file: checks that need the filesystem (the certificate files a
//! listener names, see [`Config::files`]) are passed in by the caller through
//! [`ParseOptions::extra`], so that their errors are reported with the rest.

use std::collections::HashSet;
use std::fmt;

use http::{HeaderName, HeaderValue, Method};
use sha2::{Digest as _, Sha256};

use crate::model::{
    Config, HashOn, HeaderOps, HeaderRules, LoadBalancing, PathMatch, RouteConfig, UpstreamConfig,
    UpstreamProtocol, ValueMatch,
};

/// One problem in a config, with the path of the field it is about.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigError {
    /// Field path, e.g. `routes[2].match.path.regex`. Empty for a whole-document error.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error at field path `path` (empty for the whole document).
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same error with `prefix` put in front of its path: `rate_limit` and `per`
    /// give `rate_limit.per`, `headers` and `[2]` give `headers[2]`, and an empty path
    /// gives `prefix` itself.
    #[must_use]
    pub fn within(self, prefix: &str) -> ConfigError {
        let path = if self.path.is_empty() {
            prefix.to_string()
        } else if prefix.is_empty() {
            self.path
        } else if self.path.starts_with('[') {
            format!("{prefix}{}", self.path)
        } else {
            format!("{prefix}.{}", self.path)
        };
        ConfigError { path, ..self }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config. Displays one error per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![e])
    }
}

impl From<Vec<ConfigError>> for ConfigErrors {
    fn from(errors: Vec<ConfigError>) -> ConfigErrors {
        ConfigErrors(errors)
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl ConfigErrors {
    /// A single error.
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self(vec![ConfigError {
            path: path.into(),
            message: message.into(),
        }])
    }

    /// The same errors with `prefix` put in front of every path (for example the etcd key
    /// or file a resource came from), as [`ConfigError::within`] does.
    #[must_use]
    pub fn prefixed(self, prefix: &str) -> Self {
        Self(self.0.into_iter().map(|e| e.within(prefix)).collect())
    }

    /// `Ok(())` when there is no error, else every error.
    pub fn result(errors: Vec<ConfigError>) -> Result<(), ConfigErrors> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// Deserializes one value from YAML or JSON (JSON when the text starts with `{` or `[`),
/// reporting the path of the first field that does not fit the model.
///
/// Both formats are first read into a JSON value, so they follow the same rules: an enum
/// is written as a string (`round_robin`) or a single-key map (`{prefix: /api}`).
pub fn parse_document<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigErrors> {
    from_value(parse_value(text)?)
}

/// Parses YAML or JSON text (JSON when it starts with `{` or `[`) into a JSON value.
pub fn parse_value(text: &str) -> Result<serde_json::Value, ConfigErrors> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        serde_json::from_str(text).map_err(|e| ConfigErrors::one("", format!("invalid JSON: {e}")))
    } else {
        serde_yaml::from_str(text).map_err(|e| ConfigErrors::one("", format!("invalid YAML: {e}")))
    }
}

/// One step of a field path: a map key, optionally indexed (`routes[2]`).
fn path_steps(path: &str) -> Vec<(String, Option<usize>)> {
    path.split('.')
        .filter(|s| !s.is_empty())
        .map(|seg| match seg.split_once('[') {
            Some((name, rest)) => (name.to_string(), rest.trim_end_matches(']').parse().ok()),
            None => (seg.to_string(), None),
        })
        .collect()
}

/// For each top-level list, the original index of every element still present.
#[derive(Default)]
struct IndexRemap {
    lists: std::collections::HashMap<String, Vec<usize>>,
}

impl IndexRemap {
    /// `path` with its top-level list index turned back into the input's index.
    fn original(&self, path: &str) -> String {
        let steps = path_steps(path);
        match steps.first() {
            Some((name, Some(i))) => match self.lists.get(name).and_then(|l| l.get(*i)) {
                Some(orig) => {
                    let prefix = format!("{name}[{i}]");
                    format!("{name}[{orig}]{}", &path[prefix.len().min(path.len())..])
                }
                None => path.to_string(),
            },
            _ => path.to_string(),
        }
    }
}

/// Sets aside the element an error is about, so the rest can be checked: removes the
/// top-level list item containing `path`, or else removes the field itself (its default
/// applies). Returns the original path of what was set aside, or `None` when nothing can
/// be (an error about the whole document).
fn set_aside(
    value: &mut serde_json::Value,
    path: &str,
    remap: &mut IndexRemap,
    aside: &mut SetAside,
) -> Option<String> {
    let steps = path_steps(path);
    let (first, index) = steps.first()?;
    if let Some(i) = index {
        let original = remap.original(&format!("{first}[{i}]"));
        let list = value.get_mut(first.as_str())?.as_array_mut()?;
        if *i >= list.len() {
            return None;
        }
        let item = list.remove(*i);
        aside.lists.insert(first.clone());
        if first == "upstreams" {
            if let Some(id) = item.get("id").and_then(|v| v.as_str()) {
                aside.upstreams.insert(id.to_string());
            }
        }
        let len = list.len() + 1;
        let orig = remap
            .lists
            .entry(first.clone())
            .or_insert_with(|| (0..len).collect());
        if *i < orig.len() {
            orig.remove(*i);
        }
        return Some(original);
    }
    let mut cur = value;
    for (n, (key, idx)) in steps.iter().enumerate() {
        let last = n + 1 == steps.len();
        if last && idx.is_none() {
            cur.as_object_mut()?.remove(key.as_str())?;
            aside.fields.insert(path.to_string());
            return Some(path.to_string());
        }
        cur = cur.get_mut(key.as_str())?;
        if let Some(i) = idx {
            if last {
                let arr = cur.as_array_mut()?;
                if *i >= arr.len() {
                    return None;
                }
                arr.remove(*i);
                aside.fields.insert(path.to_string());
                return Some(path.to_string());
            }
            cur = cur.get_mut(*i)?;
        }
    }
    None
}

/// What was set aside before the semantic checks ran, so that they do not report what
/// follows from it: a listener dropped for a bad address must not also make "at least one
/// listener is required", nor an upstream dropped for a bad field make every route that
/// names it an "unknown upstream".
#[derive(Debug, Default)]
struct SetAside {
    /// Top-level lists (`listeners`, `upstreams`, `routes`) that lost an item.
    lists: HashSet<String>,
    /// Ids of upstreams that were set aside (here, or by the caller).
    upstreams: HashSet<String>,
    /// Paths of fields that were removed (their default applies), e.g. `admin.listen`.
    fields: HashSet<String>,
}

impl SetAside {
    /// Whether the field at `path`, or a map that holds it, was set aside.
    fn field(&self, path: &str) -> bool {
        self.fields.iter().any(|f| {
            path == f
                || path
                    .strip_prefix(f.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    }
}

/// Options for [`Config::from_json_value_with`].
#[derive(Default)]
pub struct ParseOptions<'a> {
    /// Ids of upstreams whose definition the caller set aside before parsing, because
    /// of an error already reported (an etcd key that could not be read, an object
    /// whose id does not match its key). References to them are not reported again as
    /// unknown upstreams. Default: none.
    pub set_aside_upstreams: HashSet<String>,
    /// Further checks on the parsed config that this crate does not do, typically
    /// because they need I/O (see [`Config::files`]). Their error paths are paths of the
    /// parsed config, mapped back to the input like the others. Default: none.
    #[allow(clippy::type_complexity)]
    pub extra: Option<&'a (dyn Fn(&Config) -> Vec<ConfigError> + 'a)>,
}

/// A file the config names, with the field that names it: for a caller that checks the
/// files exist and hold what they should ([`Config::files`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef<'a> {
    /// Field path, e.g. `listeners[0].tls.certificates[1].key`.
    pub path: String,
    /// The file, as written in the config.
    pub file: &'a str,
    /// The PEM block label the file must contain: `CERTIFICATE` or `PRIVATE KEY`.
    pub pem_label: &'static str,
}

/// A parse error's message, without the value it quotes when the path is inside a
/// consumer's credentials (serde's "invalid type: string \"…\"" would print a secret).
fn hide_credential(path: &str, message: String) -> String {
    let in_credentials = path.starts_with("consumers[") && path.contains(".credentials");
    if in_credentials && (message.starts_with("invalid type") || message.starts_with("invalid value")) {
        "invalid value (not shown: it may be a credential)".into()
    } else {
        message
    }
}

/// Deserializes a value already parsed, reporting the path of the first field that does
/// not fit the model.
pub fn from_value<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ConfigErrors> {
    let value = if value.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        value
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigErrors::one(path, e.inner().to_string())
    })
}

impl Config {
    /// Parses and validates a YAML or JSON config, reporting every error found: a field
    /// that does not fit the model does not hide the problems elsewhere in the file.
    pub fn from_text(text: &str) -> Result<Config, ConfigErrors> {
        Self::from_json_value(parse_value(text)?)
    }

    /// Deserializes and validates a config already parsed into a JSON value (YAML and
    /// etcd values are read this way too).
    ///
    /// When an element does not fit the model, its error is recorded and the element is
    /// set aside (a list item is removed, another field is reset to its default), and
    /// deserialization is tried again; once the rest fits, the semantic checks run on it.
    /// Paths always name the element as it stands in the input, and references to an
    /// element that was set aside are not reported twice.
    pub fn from_json_value(value: serde_json::Value) -> Result<Config, ConfigErrors> {
        Self::from_json_value_with(value, &ParseOptions::default())
    }

    /// [`Config::from_json_value`], with upstreams the caller already set aside and
    /// further checks run on the parsed config ([`ParseOptions`]).
    pub fn from_json_value_with(
        mut value: serde_json::Value,
        options: &ParseOptions<'_>,
    ) -> Result<Config, ConfigErrors> {
        const MAX_ROUNDS: usize = 64;
        let mut errors = Vec::new();
        let mut remap = IndexRemap::default();
        let mut removed_paths = Vec::new();
        let mut aside = SetAside {
            upstreams: options.set_aside_upstreams.clone(),
            ..SetAside::default()
        };
        let mut parsed = None;
        for _ in 0..MAX_ROUNDS {
            match from_value::<Config>(value.clone()) {
                Ok(c) => {
                    parsed = Some(c);
                    break;
                }
                Err(e) => {
                    let Some(err) = e.0.into_iter().next() else { break };
                    let original = remap.original(&err.path);
                    let set_aside = set_aside(&mut value, &err.path, &mut remap, &mut aside);
                    errors.push(ConfigError {
                        message: hide_credential(&original, err.message),
                        path: original.clone(),
                    });
                    match set_aside {
                        Some(removed) => removed_paths.push(removed),
                        None => break,
                    }
                }
            }
        }
        if let Some(config) = &parsed {
            let mut v = Validator {
                errors: Vec::new(),
                aside: &aside,
            };
            v.config(config);
            if let Some(extra) = options.extra {
                v.errors.extend(extra(config));
            }
            for e in v.errors {
                let path = remap.original(&e.path);
                if !removed_paths.contains(&path) {
                    errors.push(ConfigError {
                        path,
                        message: e.message,
                    });
                }
            }
        }
        match parsed {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// The files this config names (listener certificates and keys), for a caller that
    /// checks them: validation itself does no I/O.
    pub fn files(&self) -> Vec<FileRef<'_>> {
        let mut files = Vec::new();
        for (i, l) in self.listeners.iter().enumerate() {
            for (j, cert) in l.tls.iter().flat_map(|t| t.certificates.iter()).enumerate() {
                let cp = format!("listeners[{i}].tls.certificates[{j}]");
                files.push(FileRef {
                    path: format!("{cp}.cert"),
                    file: &cert.cert,
                    pem_label: "CERTIFICATE",
                });
                files.push(FileRef {
                    path: format!("{cp}.key"),
                    file: &cert.key,
                    pem_label: "PRIVATE KEY",
                });
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if let Some(ca) = l
                .tls
                .as_ref()
                .and_then(|t| t.client_auth.as_ref())
                .and_then(|a| a.ca.as_ref())
            {
                files.push(FileRef {
                    path: format!("listeners[{i}].tls.client_auth.ca"),
                    file: ca,
                    pem_label: "CERTIFICATE",
                });
            }
        }
        for (i, a) in self.client_auth.iter().enumerate() {
            if let Some(ca) = &a.validation.ca {
                files.push(FileRef {
                    path: format!("client_auth[{i}].validation.ca"),
                    file: ca,
                    pem_label: "CERTIFICATE",
                });
            }
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            if let Some(ca) = u.tls.as_ref().and_then(|t| t.ca.as_ref()) {
                files.push(FileRef {
                    path: format!("upstreams[{i}].tls.ca"),
                    file: ca,
                    pem_label: "CERTIFICATE",
                });
            }
        }
        files
    }

    /// SHA-256 of the canonical JSON form, hex encoded. Two configs with the same hash
    /// behave the same. (The same as [`Config::digest`]`().content`.)
    pub fn content_hash(&self) -> String {
        self.digest().content
    }

    /// The content hash with the hashes of its parts, computed in one pass over the
    /// config: each route is serialized once, and the whole-config hash is taken over
    /// the other sections and the route hashes.
    pub fn digest(&self) -> Digest {
        let route_hashes: Vec<String> = self.routes.iter().map(hash_of).collect();
        let routes = hash_of(&route_hashes);
        let content = self.content_hash_with_routes(&routes);
        Digest {
            content,
            routes,
            route_hashes,
        }
    }

    /// The content hash of this config given the hash of its routes (`Digest::routes`),
    /// as in [`Config::digest`]: lets a change that leaves every route alone skip
    /// hashing them again.
    pub fn content_hash_with_routes(&self, routes_hash: &str) -> String {
        hash_of(&(
            &self.server,
            &self.admin,
            &self.listeners,
            &self.upstreams,
            &self.dns,
            routes_hash,
            &self.consumers,
            // Inline listener certificates: a rotated Secret is a change to apply.
            &self.certificates,
            &self.l4_routes,
            &self.client_auth,
            // The response cache store's size and lock wait.
            &self.cache,
            // Applied on reload too: the log sinks and the tracer.
            &self.logging,
            &self.tracing,
        ))
    }

    /// Checks everything the types cannot: references, uniqueness, regexes, header names,
    /// ranges. Returns every error found.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let aside = SetAside::default();
        let mut v = Validator {
            errors: Vec::new(),
            aside: &aside,
        };
        v.config(self);
        if v.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(v.errors))
        }
    }
}

/// Content hashes of a config and its routes ([`Config::digest`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// The whole config.
    pub content: String,
    /// All routes, in order.
    pub routes: String,
    /// Each route, parallel to `routes`.
    pub route_hashes: Vec<String>,
}

/// Checks one upstream's endpoint list (what the discovery plane swaps on its own):
/// `host:port` addresses, no duplicates, at least one endpoint with weight. `p` is the
/// upstream's path, e.g. `upstreams[2]`.
pub fn validate_endpoints(p: &str, endpoints: &[crate::model::EndpointConfig]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
    if endpoints.is_empty() {
        err(
            format!("{p}.endpoints"),
            "at least one endpoint is required".into(),
        );
    }
    let mut seen = HashSet::new();
    for (j, e) in endpoints.iter().enumerate() {
        let ep = format!("{p}.endpoints[{j}].address");
        match e.address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => err(ep.clone(), format!("{:?} is not host:port", e.address)),
        }
        if !seen.insert(e.address.as_str()) {
            err(ep, format!("duplicate endpoint {:?}", e.address));
        }
    }
    if !endpoints.is_empty() && endpoints.iter().all(|e| e.weight == 0) {
        err(
            format!("{p}.endpoints"),
            "at least one endpoint needs a weight above 0".into(),
        );
    }
    errors
}

/// SHA-256 of a value's canonical JSON form, hex encoded. Secrets are hashed as their
/// real values (a changed secret is a change), never shown.
pub fn hash_of<T: serde::Serialize>(value: &T) -> String {
    let bytes = crate::secret::reveal(|| serde_json::to_vec(value).unwrap_or_default());
    hex::encode(Sha256::digest(&bytes))
}

/// Whether `id` is usable as a stable id: 1–128 of `[A-Za-z0-9._-]`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `name` is usable as a consumer or group name: 1–128 of `[A-Za-z0-9._@-]`
/// (it goes into etcd keys, upstream headers and the access log as is).
pub fn is_valid_consumer_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// Whether `pattern` is a valid host pattern: a DNS name, or `*.` followed by one.
pub fn is_valid_host_pattern(pattern: &str) -> bool {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

struct Validator<'a> {
    errors: Vec<ConfigError>,
    /// What parsing set aside; checks skip what would only follow from it.
    aside: &'a SetAside,
}

impl Validator<'_> {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Checks the regex's syntax only (parsing is cheap; building the automata is left
    /// to the router, which caches them across reloads).
    fn regex(&mut self, path: &str, pattern: &str) {
        if let Err(e) = regex_syntax::Parser::new().parse(pattern) {
            self.err(path, format!("invalid regex: {e}"));
        }
    }

    fn header_name(&mut self, path: &str, name: &str) {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.err(path, format!("invalid header name {name:?}"));
        }
    }

    fn header_value(&mut self, path: &str, value: &str) {
        if HeaderValue::from_str(value).is_err() {
            self.err(path, format!("invalid header value {value:?}"));
        }
    }

    fn id(&mut self, path: &str, id: &str, seen: &mut HashSet<String>) {
        if !is_valid_id(id) {
            self.err(path, format!("invalid id {id:?}: use 1-128 of [A-Za-z0-9._-]"));
        } else if !seen.insert(id.to_string()) {
            self.err(path, format!("duplicate id {id:?}"));
        }
    }

    /// `certificates`: unique names, PEM that at least looks like a certificate and a
    /// key (they are parsed when served), valid server names, TLS listeners that exist.
    fn inline_certificates(&mut self, c: &Config) {
        let mut names = HashSet::new();
        for (i, cert) in c.certificates.iter().enumerate() {
            let p = format!("certificates[{i}]");
            self.id(&format!("{p}.name"), &cert.name, &mut names);
            if !cert.cert_pem.contains("-----BEGIN CERTIFICATE-----") {
                self.err(format!("{p}.cert_pem"), "needs a PEM CERTIFICATE block");
            }
            if !cert.key_pem.expose().contains("PRIVATE KEY-----") {
                self.err(format!("{p}.key_pem"), "needs a PEM PRIVATE KEY block");
            }
            for (k, n) in cert.server_names.iter().enumerate() {
                if !is_valid_host_pattern(n) {
                    self.err(
                        format!("{p}.server_names[{k}]"),
                        format!("invalid server name {n:?}"),
                    );
                }
            }
            for (k, l) in cert.listeners.iter().enumerate() {
                if !c.listeners.iter().any(|x| {
                    &x.name == l && (x.tls.is_some() || x.protocol == crate::l4::ListenerProtocol::Tls)
                }) {
                    self.err(
                        format!("{p}.listeners[{k}]"),
                        format!("{l:?} is not a TLS listener"),
                    );
                }
            }
        }
    }

    fn config(&mut self, c: &Config) {
        self.errors
            .extend(crate::logging::validate(&c.logging, c.server.access_log));
        self.errors.extend(crate::tracing::validate(&c.tracing));
        // A listener set aside for its own error is not also "missing".
        if c.listeners.is_empty() && !self.aside.lists.contains("listeners") {
            self.err("listeners", "at least one listener is required");
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        let mut udp_addrs = HashSet::new();
        // A set-aside admin address is not the default one the listeners may clash with.
        if !self.aside.field("admin.listen") {
            addrs.insert(c.admin.listen);
        }
        for (i, l) in c.listeners.iter().enumerate() {
            let p = format!("listeners[{i}]");
            self.id(&format!("{p}.name"), &l.name, &mut names);
            // A UDP listener may share its address with a TCP one (DNS does).
            let udp = l.protocol == crate::l4::ListenerProtocol::Udp;
            if !(if udp {
                udp_addrs.insert(l.listen)
            } else {
                addrs.insert(l.listen)
            }) {
                self.err(
                    format!("{p}.listen"),
                    format!(
                        "{} is already used by another listener or the admin API",
                        l.listen
                    ),
                );
            }
            if let Some(tls) = &l.tls {
                // Certificates may also come inline (`certificates`), or later from the
                // Kubernetes source's TLS Secrets.
                let inline = c.kubernetes.is_some() || c.certificates.iter().any(|x| x.serves_on(&l.name));
                // A `tls` listener needs them only to terminate (`crate::l4::validate`).
                let needed = l.protocol == crate::l4::ListenerProtocol::Http;
                if tls.certificates.is_empty() && !inline && needed {
                    self.err(
                        format!("{p}.tls.certificates"),
                        "at least one certificate is required",
                    );
                }
                // The files themselves are checked by the caller (`Config::files`).
                for (j, cert) in tls.certificates.iter().enumerate() {
                    let cp = format!("{p}.tls.certificates[{j}]");
                    for (k, n) in cert.server_names.iter().enumerate() {
                        if !is_valid_host_pattern(n) {
                            self.err(
                                format!("{cp}.server_names[{k}]"),
                                format!("invalid server name {n:?}"),
                            );
                        }
                    }
                }
            }
        }
        self.inline_certificates(c);
        self.errors.extend(crate::l4::validate(c));
        if c.server.threads == Some(0) {
            self.err("server.threads", "must be at least 1");
        }
        self.header_name("server.request_id_header", &c.server.request_id_header);
        if let crate::model::ServerHeader::Set(v) = &c.server.server_header {
            self.header_value("server.server_header.set", v);
        }
        self.connections(c);
        self.errors
            .extend(crate::limits::validate_limits("server.limits", &c.server.limits));
        self.errors.extend(crate::limits::validate_buffering(
            "server.request_buffering",
            &c.server.request_buffering,
        ));

        let mut upstream_ids = HashSet::new();
        for (i, u) in c.upstreams.iter().enumerate() {
            self.upstream(&format!("upstreams[{i}]"), u, &mut upstream_ids);
        }
        let mut route_ids = HashSet::new();
        for (i, r) in c.routes.iter().enumerate() {
            self.route(&format!("routes[{i}]"), r, &mut route_ids, &upstream_ids);
        }
        let mut consumer_names = HashSet::new();
        for (i, consumer) in c.consumers.iter().enumerate() {
            self.consumer(&format!("consumers[{i}]"), consumer, &mut consumer_names);
        }
    }

    /// A consumer's name and groups; its credentials are checked by each method's filter
    /// kind, in the route check ([`crate::check::RouteCheck`]).
    fn consumer(&mut self, p: &str, c: &crate::model::ConsumerConfig, names: &mut HashSet<String>) {
        if !is_valid_consumer_name(&c.name) {
            self.err(
                format!("{p}.name"),
                format!("invalid consumer name {:?}: use 1-128 of [A-Za-z0-9._@-]", c.name),
            );
        } else if !names.insert(c.name.clone()) {
            self.err(format!("{p}.name"), format!("duplicate consumer {:?}", c.name));
        }
        let mut groups = HashSet::new();
        for (j, g) in c.groups.iter().enumerate() {
            if !is_valid_consumer_name(g) {
                self.err(
                    format!("{p}.groups[{j}]"),
                    format!("invalid group name {g:?}: use 1-128 of [A-Za-z0-9._@-]"),
                );
            } else if !groups.insert(g.as_str()) {
                self.err(format!("{p}.groups[{j}]"), format!("group {g:?} is listed twice"));
            }
        }
    }

    /// Connection limits (server-wide and per listener) and the admin token settings.
    fn connections(&mut self, c: &Config) {
        let mut errs = c.server.connections.check("server.connections");
        for (i, l) in c.listeners.iter().enumerate() {
            errs.extend(l.connections.check(&format!("listeners[{i}].connections")));
        }
        self.errors.extend(errs);
        if c.admin.token.is_some() && c.admin.token_file.is_some() {
            self.err(
                "admin.token_file",
                "give either `token` or `token_file`, not both",
            );
        }
        if c.admin
            .token
            .as_ref()
            .is_some_and(|t| t.expose().trim().is_empty())
        {
            self.err("admin.token", "must not be empty");
        }
        let h = c.admin.history_interval;
        if h < std::time::Duration::from_secs(1) || h > std::time::Duration::from_secs(60) {
            self.err(
                "admin.history_interval",
                format!("must be from 1s to 60s, not {}", humantime::format_duration(h)),
            );
        }
    }

    /// An error for a reference to an upstream that does not exist, unless its
    /// definition was set aside for an error of its own (already reported).
    fn unknown_upstream(&mut self, path: String, id: &str, upstreams: &HashSet<String>) -> bool {
        if upstreams.contains(id) {
            return false;
        }
        if !self.aside.upstreams.contains(id) {
            self.err(path, format!("unknown upstream {id:?}"));
        }
        true
    }

    fn upstream(&mut self, p: &str, u: &UpstreamConfig, ids: &mut HashSet<String>) {
        self.id(&format!("{p}.id"), &u.id, ids);
        self.errors.extend(validate_endpoints(p, &u.endpoints));
        let f = u.overprovisioning_factor;
        if !(f.is_finite() && (1.0..=100.0).contains(&f)) {
            self.err(
                format!("{p}.overprovisioning_factor"),
                format!("{f} is out of range: use a number from 1.0 to 100.0"),
            );
        }
        if let Some(ss) = &u.slow_start {
            let q = format!("{p}.slow_start");
            if ss.window.is_zero() {
                self.err(format!("{q}.window"), "must be above 0");
            }
            if !(ss.aggression.is_finite() && ss.aggression > 0.0) {
                self.err(format!("{q}.aggression"), "must be a number above 0");
            }
            if !(0.0..=100.0).contains(&ss.min_weight_percent) {
                self.err(format!("{q}.min_weight_percent"), "must be from 0 to 100");
            }
        }
        if u.dns.min_refresh.is_zero() {
            self.err(format!("{p}.dns.min_refresh"), "must be above 0");
        }
        if u.dns.refresh < u.dns.min_refresh {
            self.err(format!("{p}.dns.refresh"), "must not be below dns.min_refresh");
        }
        if u.dns.retry.is_zero() {
            self.err(format!("{p}.dns.retry"), "must be above 0");
        }
        if let LoadBalancing::ConsistentHash(HashOn::Header(h)) = &u.load_balancing {
            self.header_name(&format!("{p}.load_balancing.consistent_hash.header"), h);
        }
        if u.protocol == UpstreamProtocol::H2 && !u.keepalive.enabled {
            self.err(
                format!("{p}.keepalive.enabled"),
                "h2 upstreams always pool connections",
            );
        }
        let mut raw = Vec::new();
        u.retries.validate(&format!("{p}.retries"), &mut raw);
        u.outlier_detection
            .validate(&format!("{p}.outlier_detection"), &mut raw);
        if let Some(hc) = &u.health_check {
            hc.validate(&format!("{p}.health_check"), &mut raw);
            if u.tls.is_some() && matches!(hc.kind, crate::resilience::HealthCheckKind::Http(_)) {
                raw.push(ConfigError::at(
                    format!("{p}.health_check.kind"),
                    "HTTP checks speak plain HTTP and this upstream uses TLS: every check would \
                     fail; use `kind: tcp` (HTTPS checks are not supported yet)",
                ));
            }
        }
        self.errors.extend(raw);
    }

    fn route(&mut self, p: &str, r: &RouteConfig, ids: &mut HashSet<String>, upstreams: &HashSet<String>) {
        self.id(&format!("{p}.id"), &r.id, ids);
        if let Some(b) = &r.request_buffering {
            self.errors.extend(crate::limits::validate_buffering(
                &format!("{p}.request_buffering"),
                b,
            ));
        }
        let m = &r.matches;
        for (i, h) in m.hosts.iter().enumerate() {
            if !is_valid_host_pattern(h) {
                self.err(
                    format!("{p}.match.hosts[{i}]"),
                    format!("invalid host {h:?}: use a DNS name or *.name"),
                );
            }
        }
        match &m.path {
            Some(PathMatch::Exact(s)) | Some(PathMatch::Prefix(s)) if !s.starts_with('/') => {
                let kind = if matches!(m.path, Some(PathMatch::Exact(_))) {
                    "exact"
                } else {
                    "prefix"
                };
                self.err(
                    format!("{p}.match.path.{kind}"),
                    format!("{s:?} must start with '/'"),
                );
            }
            Some(PathMatch::Regex(re)) => self.regex(&format!("{p}.match.path.regex"), re),
            _ => {}
        }
        for (i, method) in m.methods.iter().enumerate() {
            if Method::from_bytes(method.as_bytes()).is_err()
                || method.chars().any(|c| c.is_ascii_lowercase())
            {
                self.err(
                    format!("{p}.match.methods[{i}]"),
                    format!("invalid method {method:?} (use upper case, e.g. GET)"),
                );
            }
        }
        for (i, h) in m.headers.iter().enumerate() {
            let hp = format!("{p}.match.headers[{i}]");
            self.header_name(&format!("{hp}.name"), &h.name);
            self.value_match(&hp, h);
        }
        for (i, q) in m.query.iter().enumerate() {
            let qp = format!("{p}.match.query[{i}]");
            if q.name.is_empty() {
                self.err(format!("{qp}.name"), "must not be empty");
            }
            self.value_match(&qp, q);
        }
        if let Some(u) = &r.upstream {
            self.unknown_upstream(format!("{p}.upstream"), u, upstreams);
            if !r.backends.is_empty() {
                self.err(
                    format!("{p}.backends"),
                    "give `upstream` (one backend) or `backends`, not both",
                );
            }
        }
        let mut seen = HashSet::new();
        for (i, b) in r.backends.iter().enumerate() {
            self.unknown_upstream(format!("{p}.backends[{i}].upstream"), &b.upstream, upstreams);
            if !seen.insert(b.upstream.as_str()) {
                self.err(
                    format!("{p}.backends[{i}].upstream"),
                    format!(
                        "upstream {:?} is listed twice; give it one backend with the summed weight",
                        b.upstream
                    ),
                );
            }
            if b.weight > 1_000_000 {
                self.err(
                    format!("{p}.backends[{i}].weight"),
                    format!("{} is above the maximum of 1000000", b.weight),
                );
            }
        }
        if !r.backends.is_empty() && r.backends.iter().all(|b| b.weight == 0) {
            self.err(
                format!("{p}.backends"),
                "at least one backend needs a weight above 0",
            );
        }
        if let Some(rw) = &r.rewrite {
            if rw.strip_prefix && !matches!(m.path, Some(PathMatch::Prefix(_))) {
                self.err(format!("{p}.rewrite.strip_prefix"), "needs a `prefix` path match");
            }
            if rw.prefix.is_some() && !matches!(m.path, Some(PathMatch::Prefix(_))) {
                self.err(format!("{p}.rewrite.prefix"), "needs a `prefix` path match");
            }
            for (field, value) in [("prefix", &rw.prefix), ("path", &rw.path)] {
                if let Some(v) = value {
                    if !v.starts_with('/') {
                        self.err(
                            format!("{p}.rewrite.{field}"),
                            format!("{v:?} must start with '/'"),
                        );
                    }
                }
            }
            let set = [
                rw.path.is_some(),
                rw.regex.is_some(),
                rw.strip_prefix || rw.prefix.is_some(),
            ];
            if set.iter().filter(|b| **b).count() > 1 {
                self.err(
                    format!("{p}.rewrite"),
                    "use only one of `path`, `regex`, or `strip_prefix`/`prefix`",
                );
            }
            if let Some(re) = &rw.regex {
                self.regex(&format!("{p}.rewrite.regex.pattern"), &re.pattern);
            }
        }
        self.header_rules(&format!("{p}.headers"), &r.headers);
        let mut raw = Vec::new();
        if let Some(b) = &r.circuit_breaker {
            b.validate(&format!("{p}.circuit_breaker"), &mut raw);
            if let Some(fb) = &b.fallback_upstream {
                let fp = format!("{p}.circuit_breaker.fallback_upstream");
                let unknown = self.unknown_upstream(fp.clone(), fb, upstreams);
                if !unknown && r.backend_list().iter().any(|b| &b.upstream == fb) {
                    raw.push(ConfigError::at(
                        fp,
                        format!("is the route's own upstream {fb:?}; name another upstream or leave it out"),
                    ));
                }
            }
            if !r.forwards() {
                raw.push(ConfigError::at(
                    format!("{p}.circuit_breaker"),
                    "needs an `upstream` or `backends` on the route",
                ));
            }
        }
        if let Some(rt) = &r.retries {
            rt.validate(&format!("{p}.retries"), &mut raw);
        }
        if let Some(ro) = &r.rollout {
            crate::rollout::validate(&format!("{p}.rollout"), ro, &r.backend_list(), &mut raw);
        }
        self.errors.extend(raw);
    }

    fn value_match(&mut self, p: &str, v: &ValueMatch) {
        let n = usize::from(v.exact.is_some())
            + usize::from(v.regex.is_some())
            + usize::from(v.present.is_some());
        if n != 1 {
            self.err(p, "give exactly one of `exact`, `regex` or `present`");
        }
        if let Some(re) = &v.regex {
            self.regex(&format!("{p}.regex"), re);
        }
    }

    fn header_rules(&mut self, p: &str, rules: &HeaderRules) {
        self.header_ops(&format!("{p}.request"), &rules.request);
        self.header_ops(&format!("{p}.response"), &rules.response);
    }

    fn header_ops(&mut self, p: &str, ops: &HeaderOps) {
        for (kind, map) in [("add", &ops.add), ("set", &ops.set)] {
            for (k, v) in map {
                self.header_name(&format!("{p}.{kind}.{k}"), k);
                self.header_value(&format!("{p}.{kind}.{k}"), v);
            }
        }
        for (i, k) in ops.remove.iter().enumerate() {
            self.header_name(&format!("{p}.remove[{i}]"), k);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BASE: &str = "listeners: [{name: web, listen: '127.0.0.1:8080'}]\nupstreams: [{id: u, endpoints: [{address: '127.0.0.1:9000'}]}]\n";

    fn errors(yaml: &str) -> Vec<String> {
        match Config::from_text(yaml) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_credential_that_does_not_parse_is_not_echoed() {
        let text = format!("{BASE}consumers: [{{name: a, credentials: 'hunter2-secret'}}]");
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("consumers[0].credentials: invalid value (not shown"),
            "{errs:?}"
        );
    }

    #[test]
    fn consumer_names_and_groups_are_checked() {
        let text = format!(
            "{BASE}consumers: [{{name: alice@x, groups: [staff, staff]}}, {{name: alice@x}}, {{name: 'bad/name', groups: ['a,b']}}]"
        );
        assert_eq!(
            errors(&text),
            [
                "consumers[0].groups[1]: group \"staff\" is listed twice",
                "consumers[1].name: duplicate consumer \"alice@x\"",
                "consumers[2].name: invalid consumer name \"bad/name\": use 1-128 of [A-Za-z0-9._@-]",
                "consumers[2].groups[0]: invalid group name \"a,b\": use 1-128 of [A-Za-z0-9._@-]",
            ]
        );
    }

    #[test]
    fn accepts_a_minimal_config() {
        let text = format!("{BASE}routes: [{{id: r, upstream: u}}]");
        assert_eq!(errors(&text), Vec::<String>::new());
    }

    #[test]
    fn unknown_field_names_its_path() {
        let text = format!(
            "{BASE}routes: [{{id: r, upstream: u}}, {{id: s, upstream: u, match: {{pth: {{prefix: /a}}}}}}]"
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("routes[1].match.pth: unknown field `pth`"),
            "{errs:?}"
        );
    }

    #[test]
    fn reports_every_semantic_error_with_its_path() {
        let text = format!(
            "{BASE}routes:\n- {{id: a, upstream: nope}}\n- {{id: b, upstream: u, match: {{path: {{regex: '(['}}}}}}\n- {{id: b, upstream: u, match: {{headers: [{{name: x, exact: a, regex: b}}]}}}}\n"
        );
        let errs = errors(&text);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("routes[0].upstream: unknown upstream \"nope\"")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("routes[1].match.path.regex: invalid regex")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e == "routes[2].id: duplicate id \"b\""),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("routes[2].match.headers[0]: give exactly one")),
            "{errs:?}"
        );
    }

    #[test]
    fn http_health_checks_are_refused_on_tls_upstreams() {
        let text = "listeners: [{name: w, listen: '127.0.0.1:1'}]\nupstreams:\n- {id: s, tls: {}, endpoints: [{address: '127.0.0.1:2'}], health_check: {kind: {http: {path: /h}}}}\n- {id: t, tls: {}, endpoints: [{address: '127.0.0.1:3'}], health_check: {kind: tcp}}\n";
        let errs = errors(text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("upstreams[0].health_check.kind: HTTP checks speak plain HTTP"),
            "{errs:?}"
        );
    }

    #[test]
    fn breaker_fallback_must_be_another_known_upstream() {
        let text = format!(
            "{BASE}routes:\n- {{id: a, upstream: u, circuit_breaker: {{fallback_upstream: u}}}}\n- {{id: b, upstream: u, circuit_breaker: {{fallback_upstream: gone}}}}\n"
        );
        let errs = errors(&text);
        assert!(
            errs.iter().any(|e| e.starts_with(
                "routes[0].circuit_breaker.fallback_upstream: is the route's own upstream \"u\""
            )),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e == "routes[1].circuit_breaker.fallback_upstream: unknown upstream \"gone\""),
            "{errs:?}"
        );
    }

    #[test]
    fn structural_and_semantic_errors_are_reported_together() {
        let text = "listeners: [{name: web, listen: '127.0.0.1:8080'}]\nupstreams:\n  - {id: u, endpoints: [{address: '127.0.0.1:9000'}]}\n  - {id: broken, endpoints: oops}\nroutes:\n- {id: a, upstream: broken}\n- {id: b, upstream: u, match: {pth: x}}\n- {id: c, upstream: nope, match: {path: {regex: '(['}}}\n";
        let errs = errors(text);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("upstreams[1].endpoints: invalid type")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("routes[1].match.pth: unknown field")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("routes[2].upstream: unknown upstream \"nope\"")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("routes[2].match.path.regex: invalid regex")),
            "{errs:?}"
        );
        assert!(
            !errs.iter().any(|e| e.contains("\"broken\"")),
            "a set-aside upstream is not reported again: {errs:?}"
        );
        assert_eq!(errs.len(), 4, "{errs:?}");
    }

    #[test]
    fn a_listener_set_aside_for_its_address_is_not_also_missing() {
        let text = format!(
            "listeners: [{{name: web, listen: 'nope'}}]\n{}",
            &BASE[BASE.find("upstreams").unwrap()..]
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("listeners[0].listen: "), "{errs:?}");
        // With no listener written at all, the missing listener is the error.
        let errs = errors("upstreams: []\nroutes: []\n");
        assert_eq!(errs, ["listeners: at least one listener is required"]);
    }

    #[test]
    fn a_set_aside_upstream_is_not_reported_as_unknown_by_a_breaker_fallback() {
        let text = format!(
            "{BASE}  - {{id: spare, endpoints: [{{address: '127.0.0.1:9001', weight: heavy}}]}}\nroutes:\n- {{id: a, upstream: u, circuit_breaker: {{fallback_upstream: spare}}}}\n- {{id: b, upstream: u, circuit_breaker: {{fallback_upstream: gone}}}}\n"
        )
        .replace("upstreams: [{id: u, endpoints: [{address: '127.0.0.1:9000'}]}]\n", "upstreams:\n  - {id: u, endpoints: [{address: '127.0.0.1:9000'}]}\n");
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("upstreams[1].endpoints[0].weight: invalid type"),
            "{errs:?}"
        );
        assert_eq!(
            errs[1],
            "routes[1].circuit_breaker.fallback_upstream: unknown upstream \"gone\""
        );
    }

    #[test]
    fn a_set_aside_admin_address_does_not_clash_with_a_listener() {
        let text = format!("{BASE}admin: {{listen: 'not an address'}}\nroutes: [{{id: r, upstream: u}}]\n")
            .replace("127.0.0.1:8080", "127.0.0.1:9900");
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("admin.listen: "), "{errs:?}");
        // Written on the default admin address with no admin section, it does clash.
        let text =
            format!("{BASE}routes: [{{id: r, upstream: u}}]\n").replace("127.0.0.1:8080", "127.0.0.1:9900");
        assert!(errors(&text)[0].starts_with("listeners[0].listen: 127.0.0.1:9900 is already used"));
    }

    #[test]
    fn upstreams_the_caller_set_aside_are_not_unknown() {
        let text = format!("{BASE}routes: [{{id: r, upstream: remote}}, {{id: s, upstream: other}}]\n");
        let options = ParseOptions {
            set_aside_upstreams: HashSet::from(["remote".to_string()]),
            extra: None,
        };
        let errs = Config::from_json_value_with(parse_value(&text).unwrap(), &options).unwrap_err();
        assert_eq!(errs.to_string(), "routes[1].upstream: unknown upstream \"other\"");
    }

    #[test]
    fn extra_checks_see_the_files_and_report_at_the_input_paths() {
        // listeners[0] is set aside; the TLS listener is listeners[1] in the input but
        // listeners[0] of the parsed config.
        let text = "listeners:\n- {name: a, listen: bad}\n- {name: b, listen: '127.0.0.1:8443', tls: {certificates: [{cert: c.pem, key: k.pem}]}}\nroutes: [{id: r, direct_response: {status: 204}}]\n".replace("direct_response: {status: 204}", "filters: [{direct_response: {status: 204}}]");
        let check = |c: &Config| -> Vec<ConfigError> {
            c.files()
                .into_iter()
                .map(|f| ConfigError {
                    path: f.path,
                    message: format!("{} needs {}", f.file, f.pem_label),
                })
                .collect()
        };
        let options = ParseOptions {
            extra: Some(&check),
            ..ParseOptions::default()
        };
        let errs: Vec<String> = Config::from_json_value_with(parse_value(&text).unwrap(), &options)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("listeners[0].listen: "), "{errs:?}");
        assert_eq!(
            errs[1],
            "listeners[1].tls.certificates[0].cert: c.pem needs CERTIFICATE"
        );
        assert_eq!(
            errs[2],
            "listeners[1].tls.certificates[0].key: k.pem needs PRIVATE KEY"
        );
        // Validation alone does not touch the files.
        assert!(Config::from_text(&text.replace("listen: bad", "listen: '127.0.0.1:8080'")).is_ok());
    }

    #[test]
    fn json_is_accepted_too() {
        let text = r#"{"listeners":[{"name":"web","listen":"127.0.0.1:8080"}],"routes":[{"id":"r","filters":[{"direct_response":{"status":204}}]}]}"#;
        assert_eq!(errors(text), Vec::<String>::new());
    }

    #[test]
    fn backends_are_checked_with_their_paths() {
        let text = format!(
            "{BASE}routes:\n- {{id: a, upstream: u, backends: [{{upstream: u}}]}}\n- {{id: b, backends: [{{upstream: u, weight: 0}}, {{upstream: nope}}, {{upstream: u}}]}}\n- {{id: c, backends: [{{upstream: u, weight: 0}}]}}\n- {{id: d, backends: [{{upstream: u, wieght: 1}}]}}\n"
        );
        let errs = errors(&text);
        for want in [
            "routes[0].backends: give `upstream` (one backend) or `backends`, not both",
            "routes[1].backends[1].upstream: unknown upstream \"nope\"",
            "routes[1].backends[2].upstream: upstream \"u\" is listed twice",
            "routes[2].backends: at least one backend needs a weight above 0",
            "routes[3].backends[0].wieght: unknown field `wieght`",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "{want} not in {errs:#?}"
            );
        }
    }

    #[test]
    fn upstream_is_the_shorthand_for_one_backend() {
        let c = Config::from_text(&format!("{BASE}routes: [{{id: r, upstream: u}}]")).unwrap();
        let b = c.routes[0].backend_list();
        assert_eq!((b.len(), b[0].upstream.as_str(), b[0].weight), (1, "u", 1));
    }

    #[test]
    fn content_hash_changes_with_content() {
        let a = Config::from_text(&format!("{BASE}routes: [{{id: r, upstream: u}}]")).unwrap();
        let b = Config::from_text(&format!("{BASE}routes: [{{id: r2, upstream: u}}]")).unwrap();
        assert_ne!(a.content_hash(), b.content_hash());
        assert_eq!(a.content_hash(), a.clone().content_hash());
    }

    #[test]
    fn every_section_a_reload_applies_is_in_the_content_hash() {
        let base = Config::from_text(&format!("{BASE}routes: [{{id: r, upstream: u}}]")).unwrap();
        for (section, extra) in [
            (
                "tracing",
                "tracing: {enabled: true, endpoint: 'http://127.0.0.1:4318/v1/traces'}\n",
            ),
            ("logging", "logging: {events: {history: 10}}\n"),
            ("cache", "cache: {max_size: 1000}\n"),
        ] {
            let changed =
                Config::from_text(&format!("{BASE}{extra}routes: [{{id: r, upstream: u}}]")).unwrap();
            assert_ne!(
                base.digest().content,
                changed.digest().content,
                "a change to {section} alone would be taken as unchanged"
            );
        }
    }
}
