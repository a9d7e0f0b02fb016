//! Client certificates on TLS listeners (mTLS): the rustls verifier for one
//! `client_auth` setting (its CA bundle, `mode` and `verify_depth`), and the verified
//! identity a handshake leaves on the connection ([`PeerCertificate`]), which the HTTP
//! pipeline hands to the filters and, as `x-client-cert-*` headers, to the upstream.
//!
//! Pingora 0.9.1's rustls listener takes a `ClientCertVerifier` and runs a callback
//! after the handshake (`TlsAccept::handshake_complete_callback`) whose value it keeps
//! in the connection's `SslDigest` extension, where every request on the connection
//! finds it: that is the seam used here. `allow_invalid` lets any certificate through
//! the handshake (the client still proves it holds the key) and the callback verifies
//! the chain itself, so the identity is only ever a verified one.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use sluice_config::l4::{ClientAuthConfig, ClientAuthMode};
use sluice_config::ConfigError;

/// One compiled `client_auth` setting.
pub struct ClientAuth {
    /// Whether a certificate is required.
    pub mode: ClientAuthMode,
    /// Also forward the certificate itself (`x-client-cert`).
    pub forward_certificate: bool,
    /// The chain check every verified identity passes (CA, validity, depth).
    strict: Arc<dyn ClientCertVerifier>,
    /// What the handshake runs.
    handshake: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("mode", &self.mode)
            .field("forward_certificate", &self.forward_certificate)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Parses PEM CA certificates into a root store; errors say what is wrong.
pub fn roots_from_pem(pem: &[u8]) -> Result<(RootCertStore, Vec<Vec<u8>>), String> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot read the PEM: {e}"))?;
    let mut roots = RootCertStore::empty();
    let mut ders = Vec::new();
    for c in certs {
        ders.push(c.as_ref().to_vec());
        roots
            .add(c)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CA certificate in the PEM".into());
    }
    Ok((roots, ders))
}

impl ClientAuth {
    /// Compiles `c`; errors name `path` (e.g. `listeners[2].tls.client_auth`).
    pub fn new(c: &ClientAuthConfig, path: &str) -> Result<ClientAuth, ConfigError> {
        let err = |field: &str, message: String| ConfigError {
            path: format!("{path}.{field}"),
            message,
        };
        let (pem, field) = match (&c.ca, &c.ca_pem) {
            (Some(file), _) => (
                std::fs::read(file).map_err(|e| err("ca", format!("cannot read {file}: {e}")))?,
                "ca",
            ),
            (None, Some(pem)) => (pem.as_bytes().to_vec(), "ca_pem"),
            (None, None) => return Err(err("ca", "give `ca` or `ca_pem`".into())),
        };
        let (roots, ders) = roots_from_pem(&pem).map_err(|e| err(field, e))?;
        let roots = Arc::new(roots);
        let build = |optional: bool| {
            let b = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
            let b = if optional { b.allow_unauthenticated() } else { b };
            b.build().map_err(|e| err(field, e.to_string()))
        };
        let depth = |inner: Arc<dyn ClientCertVerifier>| -> Arc<dyn ClientCertVerifier> {
            Arc::new(Depth {
                inner,
                max_intermediates: usize::from(c.verify_depth.max(1)) - 1,
                roots: ders.clone(),
            })
        };
        let strict = depth(build(false)?);
        let handshake = match c.mode {
            ClientAuthMode::Require => strict.clone(),
            ClientAuthMode::Optional => depth(build(true)?),
            ClientAuthMode::AllowInvalid => Arc::new(AnyCertificate {
                inner: strict.clone(),
            }),
        };
        Ok(ClientAuth {
            mode: c.mode,
            forward_certificate: c.forward_certificate,
            strict,
            handshake,
        })
    }

    /// The verifier the listener's TLS configuration runs.
    pub fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.handshake.clone()
    }

    /// Whether the chain (leaf first) passes the strict check now.
    pub fn verify(&self, chain: &[CertificateDer<'static>]) -> bool {
        let Some((leaf, rest)) = chain.split_first() else {
            return false;
        };
        self.strict
            .verify_client_cert(leaf, rest, UnixTime::now())
            .is_ok()
    }
}

/// A verifier that refuses chains longer than the configured depth (counting the
/// intermediates the client sends, but not a copy of a trusted CA among them).
#[derive(Debug)]
struct Depth {
    inner: Arc<dyn ClientCertVerifier>,
    max_intermediates: usize,
    roots: Vec<Vec<u8>>,
}

impl ClientCertVerifier for Depth {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let counted = intermediates
            .iter()
            .filter(|c| !self.roots.iter().any(|r| r.as_slice() == c.as_ref()))
            .count();
        if counted > self.max_intermediates {
            return Err(rustls::Error::General(format!(
                "client certificate chain has {counted} intermediates; verify_depth allows {}",
                self.max_intermediates
            )));
        }
        self.inner.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `allow_invalid`: asks for a certificate, lets any (or none) through the handshake,
/// still checks the handshake signature (the client holds the key).
#[derive(Debug)]
struct AnyCertificate {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for AnyCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

pub use sluice_core::client_cert::PeerCertificate;

/// Reads a DER leaf certificate; `None` when it does not parse.
pub fn parse_certificate(der: &[u8], verified: bool, keep_pem: bool) -> Option<PeerCertificate> {
    use sha2::Digest;
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut p = PeerCertificate {
        verified,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        dns: Vec::new(),
        uris: Vec::new(),
        emails: Vec::new(),
        serial: cert.raw_serial_as_string().replace(':', ""),
        fingerprint: hex::encode(sha2::Sha256::digest(der)),
        pem: keep_pem.then(|| pem_of(der)),
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => p.dns.push((*n).to_string()),
                GeneralName::URI(u) => p.uris.push((*u).to_string()),
                GeneralName::RFC822Name(e) => p.emails.push((*e).to_string()),
                _ => {}
            }
        }
    }
    Some(p)
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The post-handshake callback of an acceptor with client certificates: keeps the
/// verified identity (an `Arc<PeerCertificate>`) in the connection's `SslDigest`.
pub struct IdentityCallback {
    /// The setting the acceptor runs.
    pub auth: Arc<ClientAuth>,
}

#[async_trait]
impl TlsAccept for IdentityCallback {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let chain = tls.peer_cert_chain_der()?;
        let leaf = chain.first()?;
        let verified = match self.auth.mode {
            // The handshake verified it.
            ClientAuthMode::Require | ClientAuthMode::Optional => true,
            ClientAuthMode::AllowInvalid => self.auth.verify(chain),
        };
        let cert = parse_certificate(leaf.as_ref(), verified, self.auth.forward_certificate)?;
        Some(Arc::new(Arc::new(cert)))
    }
}

/// The client certificate of the connection `digest` describes, if its handshake left
/// one.
pub fn peer_certificate(digest: Option<&pingora::protocols::Digest>) -> Option<Arc<PeerCertificate>> {
    digest?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<Arc<PeerCertificate>>()
        .cloned()
}

/// Whether `name` (a lower-case header name) is one of the client-certificate headers,
/// in any spelling a client could slip past (`_` for `-`).
fn is_cert_header(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 13
        && b[..13]
            .iter()
            .zip(b"x-client-cert")
            .all(|(c, w)| c == w || (*w == b'-' && *c == b'_'))
}

/// The upstream request's client-certificate headers: every `x-client-cert*` the client
/// sent is removed, then, when the connection presented `cert`, the verified identity
/// is set: `x-client-cert-verify` (`SUCCESS` or `FAILED`), `-subject`, `-issuer`,
/// `-sans`, `-serial`, `-fingerprint`, and `x-client-cert` (URL-encoded PEM) when the
/// listener forwards the certificate.
pub fn forward_headers(
    upstream: &mut pingora::http::RequestHeader,
    cert: Option<&PeerCertificate>,
) -> pingora::Result<()> {
    let spoofed: Vec<http::HeaderName> = upstream
        .headers
        .keys()
        .filter(|k| is_cert_header(k.as_str()))
        .cloned()
        .collect();
    for k in spoofed {
        upstream.remove_header(&k);
    }
    let Some(c) = cert else { return Ok(()) };
    let mut set = |name: &'static str, value: &str| -> pingora::Result<()> {
        match http::HeaderValue::from_str(value) {
            Ok(v) => upstream.insert_header(name, v).map(drop),
            // A DN with characters a header cannot carry is left out.
            Err(_) => Ok(()),
        }
    };
    set(
        "x-client-cert-verify",
        if c.verified { "SUCCESS" } else { "FAILED" },
    )?;
    set("x-client-cert-subject", &c.subject)?;
    set("x-client-cert-issuer", &c.issuer)?;
    set("x-client-cert-sans", &c.sans_header())?;
    set("x-client-cert-serial", &c.serial)?;
    set("x-client-cert-fingerprint", &c.fingerprint)?;
    if let Some(pem) = &c.pem {
        set("x-client-cert", &url_encode(pem))?;
    }
    Ok(())
}

/// Percent-encodes everything but unreserved characters (nginx's
/// `$ssl_client_escaped_cert`).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_the_certificate_headers_is_recognised() {
        for n in [
            "x-client-cert",
            "x-client-cert-subject",
            "x_client_cert_subject",
            "x-client_cert-verify",
        ] {
            assert!(is_cert_header(n), "{n}");
        }
        for n in [
            "x-client",
            "x-client-certificate-x".replace("certificate", "cer").as_str(),
            "x-forwarded-for",
        ] {
            assert!(!is_cert_header(n), "{n}");
        }
    }

    #[test]
    fn a_client_certificate_is_read_into_its_identity() {
        let mut params = rcgen::CertificateParams::new(vec!["a.example.com".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "alice");
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://example.com/alice").unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let p = parse_certificate(cert.der(), true, true).unwrap();
        assert_eq!(p.common_name.as_deref(), Some("alice"));
        assert_eq!(p.subject, "CN=alice");
        assert_eq!(
            p.sans_header(),
            "DNS:a.example.com,URI:spiffe://example.com/alice"
        );
        assert_eq!(p.fingerprint.len(), 64);
        assert!(p.pem.unwrap().starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert_eq!(url_encode("a b/+\n"), "a%20b%2F%2B%0A");
    }
}
