//! Server TLS: certificates chosen by SNI (exact names before wildcards, the first
//! certificate as the default), swapped live.
//!
//! Each TLS listener has a [`ListenerCerts`]: an `ArcSwap<SniResolver>` behind rustls'
//! [`ResolvesServerCert`], so a handshake loads the current resolver without a lock and a
//! new resolver only reaches new handshakes (open connections keep the certificate they
//! were made with). A listener serves its own certificate files
//! (`listeners[].tls.certificates`) and the inline certificates of the config
//! (`certificates`, what the Kubernetes source makes of TLS Secrets) that name it or no
//! listener.
//!
//! [`LiveCerts::refresh`] rebuilds every listener's resolver: after every applied config
//! ([`crate::control::gateway::Gateway::apply`]), and every `server.certificate_poll_interval` from
//! the admin runtime ([`poll`]), which re-reads the files. A certificate whose bytes did
//! not change is not parsed again; one that no longer loads keeps its last good version
//! and logs an error naming the file (or the inline certificate), once per bad content.
//! A resolver is stored only when what it serves changed.
//!
//! The served certificates' expiry is `sluice_tls_certificate_expiry_seconds{listener,
//! name}` (the Unix time of the leaf's `notAfter`; `name` is the certificate file path
//! or the inline certificate's name, both from the config), and `/api/v1/certificates`
//! lists them.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use prometheus::{IntGaugeVec, Opts};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Serialize;
use sluice_config::model::TlsConfig;
use sluice_config::Config;

/// Picks a certificate by SNI.
#[derive(Debug, Default)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(".example.com", key)`, longest suffix first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

/// Parses a PEM chain and key; errors name `what_cert` / `what_key`.
fn parse(cert: &[u8], key: &[u8], what_cert: &str, what_key: &str) -> Result<Arc<CertifiedKey>, String> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(cert))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what_cert}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what_cert}: no certificate"));
    }
    let key_der = rustls_pemfile::private_key(&mut std::io::BufReader::new(key))
        .map_err(|e| format!("{what_key}: {e}"))?
        .ok_or_else(|| format!("{what_key}: no private key"))?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der)
        .map_err(|e| format!("{what_key}: {e}"))?;
    let ck = CertifiedKey::new(certs, signing);
    // A key that does not belong to the certificate would fail every handshake.
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => return Err(format!("{what_key}: does not match {what_cert}: {e}")),
    }
    Ok(Arc::new(ck))
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{path}: {e}"))
}

impl SniResolver {
    /// Loads every certificate file of a listener.
    pub fn new(tls: &TlsConfig) -> Result<SniResolver, String> {
        let mut entries = Vec::new();
        for c in &tls.certificates {
            let key = parse(&read(&c.cert)?, &read(&c.key)?, &c.cert, &c.key)?;
            entries.push((key, c.server_names.clone()));
        }
        let r = SniResolver::from_entries(&entries);
        if r.default.is_none() {
            return Err("no certificate".into());
        }
        Ok(r)
    }

    /// A resolver over `(certificate, server names)` in order: the first certificate is
    /// the default, and of two certificates for one exact name the first wins.
    pub fn from_entries(entries: &[(Arc<CertifiedKey>, Vec<String>)]) -> SniResolver {
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        let mut default = None;
        for (key, names) in entries {
            default.get_or_insert_with(|| key.clone());
            for name in names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix('*') {
                    Some(suffix) => wildcard.push((suffix.to_string(), key.clone())),
                    None => {
                        exact.entry(name).or_insert_with(|| key.clone());
                    }
                }
            }
        }
        wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        SniResolver {
            exact,
            wildcard,
            default,
        }
    }

    /// The certificate for a server name; `None` when the listener has none at all.
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map_or_else(|| self.default.clone(), |(_, k)| Some(k.clone()))
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// What `/api/v1/certificates` shows of one served certificate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServedCertificate {
    /// The certificate file path, or the inline certificate's name.
    pub name: String,
    /// `file` or `inline`.
    pub source: &'static str,
    /// The SNI names it serves.
    pub server_names: Vec<String>,
    /// The leaf's `notAfter`, Unix seconds, when it could be read.
    pub not_after: Option<i64>,
    /// Why the current content does not load (the previous good version is served).
    pub error: Option<String>,
}

/// One certificate, loaded.
struct Loaded {
    hash: u64,
    key: Arc<CertifiedKey>,
    not_after: Option<i64>,
}

/// One certificate's cache entry: its last good version, and the hash of the content
/// that failed to load with the error (so a bad file is reported once).
type CacheEntry = (Option<Loaded>, Option<(u64, String)>);

/// What one listener serves, and the last good version of each of its certificates.
pub struct ListenerCerts {
    name: String,
    current: ArcSwap<SniResolver>,
    /// By certificate name: the last good version, and the hash of content that failed.
    cache: Mutex<HashMap<String, CacheEntry>>,
    served: Mutex<Vec<ServedCertificate>>,
}

impl std::fmt::Debug for ListenerCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerCerts").field("name", &self.name).finish()
    }
}

impl ResolvesServerCert for ListenerCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().pick(hello.server_name())
    }
}

/// One certificate a listener should serve, before loading.
struct Wanted {
    name: String,
    source: &'static str,
    server_names: Vec<String>,
    /// The PEM bytes (certificate, key), or why they cannot be read.
    content: Result<(Vec<u8>, Vec<u8>), String>,
    /// How errors name the certificate and the key.
    what: (String, String),
}

fn wanted(listener: &str, config: &Config) -> Vec<Wanted> {
    let mut out = Vec::new();
    if let Some(tls) = config
        .listeners
        .iter()
        .find(|l| l.name == listener)
        .and_then(|l| l.tls.as_ref())
    {
        for c in &tls.certificates {
            out.push(Wanted {
                name: c.cert.clone(),
                source: "file",
                server_names: c.server_names.clone(),
                content: read(&c.cert).and_then(|cert| Ok((cert, read(&c.key)?))),
                what: (c.cert.clone(), c.key.clone()),
            });
        }
    }
    for c in config.certificates.iter().filter(|c| c.serves_on(listener)) {
        out.push(Wanted {
            name: c.name.clone(),
            source: "inline",
            server_names: c.server_names.clone(),
            content: Ok((
                c.cert_pem.clone().into_bytes(),
                c.key_pem.expose().as_bytes().to_vec(),
            )),
            what: (
                format!("certificates.{}.cert_pem", c.name),
                format!("certificates.{}.key_pem", c.name),
            ),
        });
    }
    out
}

fn hash_of(cert: &[u8], key: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    cert.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

impl ListenerCerts {
    /// Loads what listener `name` of `config` serves. With `strict`, any certificate that
    /// does not load is an error (at start); otherwise it keeps its last good version.
    fn load(&self, config: &Config, strict: bool) -> Result<bool, String> {
        let mut cache = self.cache.lock();
        let mut entries = Vec::new();
        let mut served = Vec::new();
        let mut keep: BTreeMap<String, ()> = BTreeMap::new();
        for w in wanted(&self.name, config) {
            keep.insert(w.name.clone(), ());
            let slot = cache.entry(w.name.clone()).or_insert((None, None));
            let mut error = None;
            match &w.content {
                Ok((cert, key)) => {
                    let h = hash_of(cert, key);
                    let fresh = slot.0.as_ref().is_some_and(|l| l.hash == h);
                    let known_bad = slot.1.as_ref().filter(|(bh, _)| *bh == h).map(|(_, e)| e.clone());
                    if let Some(e) = known_bad {
                        error = Some(e);
                    } else if !fresh {
                        match parse(cert, key, &w.what.0, &w.what.1) {
                            Ok(k) => {
                                let not_after = k.cert.first().and_then(|c| not_after(c.as_ref()));
                                slot.0 = Some(Loaded {
                                    hash: h,
                                    key: k,
                                    not_after,
                                });
                                slot.1 = None;
                            }
                            Err(e) => {
                                if strict {
                                    return Err(e);
                                }
                                tracing::error!(
                                    listener = %self.name,
                                    "certificate {e}; keeping the previous certificate"
                                );
                                slot.1 = Some((h, e.clone()));
                                error = Some(e);
                            }
                        }
                    }
                }
                Err(e) => {
                    if strict {
                        return Err(e.clone());
                    }
                    if slot.1.as_ref().is_none_or(|(_, prev)| prev != e) {
                        tracing::error!(listener = %self.name, "certificate {e}; keeping the previous certificate");
                    }
                    slot.1 = Some((0, e.clone()));
                    error = Some(e.clone());
                }
            }
            if let Some(l) = &slot.0 {
                entries.push((l.key.clone(), w.server_names.clone()));
            }
            served.push(ServedCertificate {
                name: w.name,
                source: w.source,
                server_names: w.server_names,
                not_after: slot.0.as_ref().and_then(|l| l.not_after),
                error,
            });
        }
        cache.retain(|k, _| keep.contains_key(k));
        // Store only when what is served changed (same keys for the same names).
        let next = SniResolver::from_entries(&entries);
        let cur = self.current.load();
        let same = cur.default.as_ref().map(Arc::as_ptr) == next.default.as_ref().map(Arc::as_ptr)
            && cur.exact.len() == next.exact.len()
            && cur
                .exact
                .iter()
                .all(|(n, k)| next.exact.get(n).is_some_and(|k2| Arc::ptr_eq(k, k2)))
            && cur.wildcard.len() == next.wildcard.len()
            && cur
                .wildcard
                .iter()
                .zip(&next.wildcard)
                .all(|(a, b)| a.0 == b.0 && Arc::ptr_eq(&a.1, &b.1));
        if !same {
            self.current.store(Arc::new(next));
        }
        *self.served.lock() = served;
        Ok(!same)
    }
}

/// Every TLS listener's live certificates.
pub struct LiveCerts {
    listeners: Mutex<Vec<Arc<ListenerCerts>>>,
    expiry: IntGaugeVec,
}

impl LiveCerts {
    /// No listener yet; registers the expiry gauge in `metrics`.
    pub fn new(metrics: &crate::observe::metrics::Metrics) -> LiveCerts {
        let expiry = IntGaugeVec::new(
            Opts::new(
                "sluice_tls_certificate_expiry_seconds",
                "When a served listener certificate expires (its notAfter, Unix seconds), by listener and certificate (file path or inline certificate name).",
            ),
            &["listener", "name"],
        )
        .expect("a valid metric definition");
        metrics.register(Box::new(expiry.clone()));
        LiveCerts {
            listeners: Mutex::new(Vec::new()),
            expiry,
        }
    }

    /// Adds TLS listener `name` of `config`, loading its certificates; any that does not
    /// load is an error. The resolver for its TLS settings.
    pub fn add_listener(&self, name: &str, config: &Config) -> Result<Arc<ListenerCerts>, String> {
        let l = Arc::new(ListenerCerts {
            name: name.to_string(),
            current: ArcSwap::from_pointee(SniResolver::default()),
            cache: Mutex::new(HashMap::new()),
            served: Mutex::new(Vec::new()),
        });
        l.load(config, true)?;
        let no_inline_source = config.kubernetes.is_none() && config.certificates.is_empty();
        if l.current.load().default.is_none() && no_inline_source {
            return Err("no certificate".into());
        }
        self.listeners.lock().push(l.clone());
        self.export();
        Ok(l)
    }

    /// Rebuilds every listener's resolver from `config`, re-reading the files. Returns
    /// the names of the listeners whose certificates changed.
    pub fn refresh(&self, config: &Config) -> Vec<String> {
        let listeners = self.listeners.lock().clone();
        let mut changed = Vec::new();
        for l in &listeners {
            if let Ok(true) = l.load(config, false) {
                tracing::info!(listener = %l.name, "listener certificates changed; new handshakes get them");
                changed.push(l.name.clone());
            }
        }
        self.export();
        changed
    }

    fn export(&self) {
        self.expiry.reset();
        for l in self.listeners.lock().iter() {
            for c in l.served.lock().iter() {
                if let Some(t) = c.not_after {
                    self.expiry.with_label_values(&[&l.name, &c.name]).set(t);
                }
            }
        }
    }

    /// What each listener serves, for `/api/v1/certificates`.
    pub fn served(&self) -> BTreeMap<String, Vec<ServedCertificate>> {
        self.listeners
            .lock()
            .iter()
            .map(|l| (l.name.clone(), l.served.lock().clone()))
            .collect()
    }
}

/// Re-reads the listeners' certificate files every `server.certificate_poll_interval`
/// (of the serving config) until the process ends; runs on the admin runtime.
pub async fn poll(gateway: Arc<crate::control::gateway::Gateway>) {
    loop {
        let every = gateway.snapshot().config.server.certificate_poll_interval;
        if every.is_zero() {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        tokio::time::sleep(every).await;
        let config = gateway.snapshot().config.clone();
        gateway.certs.refresh(&config);
    }
}

/// Reads one DER element: `(tag, content, rest)`.
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&len0, mut b) = b.split_first()?;
    let len = if len0 < 0x80 {
        usize::from(len0)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let (num, rest) = b.split_at(n);
        b = rest;
        num.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x))
    };
    if b.len() < len {
        return None;
    }
    let (content, rest) = b.split_at(len);
    Some((tag, content, rest))
}

/// The `notAfter` of an X.509 certificate (DER), in Unix seconds.
pub fn not_after(cert: &[u8]) -> Option<i64> {
    let (_, certificate, _) = der(cert)?;
    let (_, tbs, _) = der(certificate)?;
    let mut rest = tbs;
    let (tag, _, r) = der(rest)?;
    if tag == 0xa0 {
        rest = r; // version
    }
    let (_, _, r) = der(rest)?; // serial
    let (_, _, r) = der(r)?; // signature algorithm
    let (_, _, r) = der(r)?; // issuer
    let (_, validity, _) = der(r)?;
    let (_, _, r) = der(validity)?; // notBefore
    let (tag, t, _) = der(r)?;
    let t = std::str::from_utf8(t).ok()?;
    let digits = |s: &str| s.parse::<i64>().ok();
    let (year, rest) = match tag {
        0x17 => {
            let y = digits(t.get(0..2)?)?;
            (if y >= 50 { 1900 + y } else { 2000 + y }, t.get(2..)?)
        }
        0x18 => (digits(t.get(0..4)?)?, t.get(4..)?),
        _ => return None,
    };
    let month = digits(rest.get(0..2)?)?;
    let day = digits(rest.get(2..4)?)?;
    let hour = digits(rest.get(4..6)?)?;
    let min = digits(rest.get(6..8)?)?;
    let sec = digits(rest.get(8..10)?)?;
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 12, 2), 20_789);
    }

    fn issue(name: &str, year: i32) -> (String, String, Vec<u8>) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, 5, 6);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    #[test]
    fn reads_not_after_from_a_certificate() {
        let (_, _, der) = issue("a.test", 2031);
        assert_eq!(not_after(&der), Some(days_from_civil(2031, 5, 6) * 86_400));
        let (_, _, der) = issue("a.test", 2061);
        assert_eq!(not_after(&der), Some(days_from_civil(2061, 5, 6) * 86_400));
    }

    fn inline(
        name: &str,
        cert: &str,
        key: &str,
        sni: &str,
    ) -> sluice_config::certificates::InlineCertificate {
        sluice_config::certificates::InlineCertificate {
            name: name.into(),
            cert_pem: cert.into(),
            key_pem: key.into(),
            server_names: vec![sni.into()],
            listeners: Vec::new(),
        }
    }

    #[test]
    fn a_swap_reaches_new_picks_and_bad_content_keeps_the_last_good_certificate() {
        let live = LiveCerts::new(&crate::observe::metrics::Metrics::new());
        let (c1, k1, d1) = issue("a.test", 2031);
        let (c2, k2, d2) = issue("a.test", 2032);
        let mut config = Config {
            certificates: vec![inline("a", &c1, &k1, "a.test")],
            ..Config::default()
        };
        let l = live.add_listener("tls", &config).unwrap();
        let before = l.current.load_full();
        let served = |l: &ListenerCerts| {
            l.current.load().pick(Some("a.test")).unwrap().cert[0]
                .as_ref()
                .to_vec()
        };
        assert_eq!(served(&l), d1);
        // Unchanged content: nothing stored.
        assert!(live.refresh(&config).is_empty());
        assert!(Arc::ptr_eq(&before, &l.current.load_full()));
        // Rotated.
        config.certificates = vec![inline("a", &c2, &k2, "a.test")];
        assert_eq!(live.refresh(&config), ["tls"]);
        assert_eq!(served(&l), d2);
        assert_eq!(
            served(&before_resolver(&before)),
            d1,
            "the old table is untouched"
        );
        // A key that does not match: the last good certificate stays, the error is shown.
        config.certificates = vec![inline("a", &c1, &k2, "a.test")];
        assert!(live.refresh(&config).is_empty());
        assert_eq!(served(&l), d2);
        let shown = live.served();
        let err = shown["tls"][0].error.clone().unwrap();
        assert!(err.contains("certificates.a.key_pem"), "{err}");
        // Gone from the config: no longer served.
        config.certificates.clear();
        assert_eq!(live.refresh(&config), ["tls"]);
        assert!(l.current.load().pick(Some("a.test")).is_none());
    }

    /// A listener whose table is `r`, to pick from an old table.
    fn before_resolver(r: &Arc<SniResolver>) -> ListenerCerts {
        ListenerCerts {
            name: "old".into(),
            current: ArcSwap::new(r.clone()),
            cache: Mutex::new(HashMap::new()),
            served: Mutex::new(Vec::new()),
        }
    }

    #[test]
    fn a_truncated_certificate_has_no_expiry() {
        assert_eq!(not_after(&[0x30, 0x82, 0x01]), None);
        assert_eq!(not_after(&[]), None);
    }
}
