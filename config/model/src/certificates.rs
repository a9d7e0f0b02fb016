//! Listener certificates given inline (PEM in the config rather than files): what the
//! Kubernetes source turns TLS Secrets into, and what a config file may also carry. They
//! are served by the TLS listeners next to the listeners' own certificate files, and
//! swapped in on every config change, without a restart (see `docs/security-connections.md`).

use serde::{Deserialize, Serialize};

/// One certificate and key pair in PEM, and the names it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InlineCertificate {
    /// A unique name, `[A-Za-z0-9._-]`, the `name` label of
    /// `sluice_tls_certificate_expiry_seconds` (the Kubernetes source names them
    /// `k8s.<namespace>.<secret>`). Required.
    pub name: String,
    /// The PEM certificate chain, leaf first. Required.
    pub cert_pem: String,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1). Required; a secret (shown as
    /// `<redacted>`).
    pub key_pem: crate::secret::Secret,
    /// SNI names this certificate serves: exact (`api.example.com`) or a wildcard
    /// (`*.example.com`). Default: none (served to no name: such a certificate is only
    /// the default of a listener with no certificate files).
    #[serde(default)]
    pub server_names: Vec<String>,
    /// The TLS listeners (by name) that serve it. Default: none, meaning every TLS
    /// listener.
    #[serde(default)]
    pub listeners: Vec<String>,
}

impl InlineCertificate {
    /// Whether listener `name` serves it.
    pub fn serves_on(&self, name: &str) -> bool {
        self.listeners.is_empty() || self.listeners.iter().any(|l| l == name)
    }
}
