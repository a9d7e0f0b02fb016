//! The client certificate a TLS connection presented (listener mTLS), as the gateway
//! read it after the handshake: pure data. The gateway puts an
//! `Arc<PeerCertificate>` in [`crate::FilterCtx::ext`] for every request on such a
//! connection; the `client_cert` filter kind matches on it, and the gateway sends it
//! upstream as `x-client-cert-*` headers.

/// A client certificate: its subject, issuer, SANs, and whether it verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCertificate {
    /// Whether the chain verified against the listener's CA (always, except under the
    /// `allow_invalid` mode, which lets unverified certificates through).
    pub verified: bool,
    /// The subject DN, RFC 4514 style (`CN=alice, O=Example`).
    pub subject: String,
    /// The issuer DN.
    pub issuer: String,
    /// The subject's first common name, if any.
    pub common_name: Option<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// URI SANs (SPIFFE ids).
    pub uris: Vec<String>,
    /// E-mail SANs.
    pub emails: Vec<String>,
    /// The serial number, hex.
    pub serial: String,
    /// SHA-256 of the DER certificate, lower-case hex.
    pub fingerprint: String,
    /// The leaf in PEM, when the listener's setting forwards it.
    pub pem: Option<String>,
}

impl PeerCertificate {
    /// The SANs as one header value: `DNS:a.example.com,URI:spiffe://x/y,email:a@b`.
    pub fn sans_header(&self) -> String {
        let dns = self.dns.iter().map(|n| format!("DNS:{n}"));
        let uris = self.uris.iter().map(|u| format!("URI:{u}"));
        let emails = self.emails.iter().map(|e| format!("email:{e}"));
        dns.chain(uris).chain(emails).collect::<Vec<_>>().join(",")
    }
}
