//! TLS towards upstreams as a BackendTLSPolicy asks for it: the CA bundle (a file,
//! inline PEM from a ConfigMap or Secret, or the public roots), the SNI to send, and
//! either that name or a list of subject alternative names (DNS or URI) the
//! certificate must carry.
//!
//! The L4 proxy (TLS origination after `terminate`, or a plain TCP route to a TLS
//! upstream) connects through [`UpstreamTlsClient::connect`]. Pingora 0.9.1's own
//! upstream TLS (which the HTTP proxy uses) verifies one name, the SNI, with no hook to
//! check a SAN list; the HTTP proxy uses this client for upstreams with
//! `subject_alt_names`, through pingora's `custom_l4` connector seam.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sluice_config::l4::SubjectAltName;
use sluice_config::model::UpstreamTls;
use tokio::net::TcpStream;

/// The TLS client of one upstream.
pub struct UpstreamTlsClient {
    config: Arc<rustls::ClientConfig>,
    /// The configured SNI (`tls.sni`); else each endpoint's host.
    sni: Option<String>,
}

impl std::fmt::Debug for UpstreamTlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsClient")
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The roots an upstream's certificate must chain to: `tls.ca`, `tls.ca_pem`, or the
/// public web roots.
pub fn upstream_roots(t: &UpstreamTls) -> Result<RootCertStore, String> {
    let pem = match (&t.ca, &t.ca_pem) {
        (Some(file), _) => std::fs::read(file).map_err(|e| format!("tls.ca {file}: {e}"))?,
        (None, Some(pem)) => pem.as_bytes().to_vec(),
        (None, None) => {
            return Ok(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
        }
    };
    super::client_auth::roots_from_pem(&pem)
        .map(|(roots, _)| roots)
        .map_err(|e| format!("tls.ca: {e}"))
}

impl UpstreamTlsClient {
    /// The client for upstream TLS settings `t`, offering `alpn`.
    pub fn new(t: &UpstreamTls, alpn: &[&[u8]]) -> Result<UpstreamTlsClient, String> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let verifier: Arc<dyn ServerCertVerifier> = if t.verify {
            let roots = Arc::new(upstream_roots(t)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| e.to_string())?;
            if t.subject_alt_names.is_empty() {
                webpki
            } else {
                Arc::new(SanVerifier {
                    inner: webpki,
                    sans: t.subject_alt_names.clone(),
                })
            }
        } else {
            Arc::new(NoVerify(provider()))
        };
        let mut config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(UpstreamTlsClient {
            config: Arc::new(config),
            sni: t.sni.clone(),
        })
    }

    /// The name sent as SNI (and verified, without SANs) for an endpoint whose host is
    /// `host`.
    pub fn server_name<'a>(&'a self, host: &'a str) -> &'a str {
        self.sni.as_deref().unwrap_or(host)
    }

    /// Connects to `addr` and runs the handshake, within `timeout` in all; `host` is the
    /// endpoint's host, the SNI when `tls.sni` is not set.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        host: &str,
        timeout: Duration,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = self.server_name(host);
        let server_name = ServerName::try_from(name.to_string()).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("SNI {name:?}: {e}"))
        })?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        tokio::time::timeout(timeout, async move {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            connector.connect(server_name, tcp).await
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS connect timed out"))?
    }
}

/// Checks the chain against the roots, and the leaf against a SAN list instead of the
/// SNI.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<WebPkiServerVerifier>,
    sans: Vec<SubjectAltName>,
}

/// Whether certificate DNS name `cert` (maybe `*.x`) covers `want`.
fn dns_matches(cert: &str, want: &str) -> bool {
    let (cert, want) = (cert.to_ascii_lowercase(), want.to_ascii_lowercase());
    match cert.strip_prefix("*.") {
        Some(suffix) => want
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => cert == want,
    }
}

/// Whether the DER leaf carries one of `sans`.
pub fn has_any_san(der: &[u8], sans: &[SubjectAltName]) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return false;
    };
    sans.iter().any(|want| {
        ext.value.general_names.iter().any(|g| match (want, g) {
            (SubjectAltName::Dns(w), GeneralName::DNSName(c)) => dns_matches(c, w),
            (SubjectAltName::Uri(w), GeneralName::URI(c)) => c == w,
            _ => false,
        })
    })
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name check comes last in webpki's verification: a NotValidForName error
        // means the chain itself verified.
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }))
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)) => {}
            Err(e) => return Err(e),
        }
        if has_any_san(end_entity.as_ref(), &self.sans) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ))
        }
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

/// `verify: false`: any certificate (the handshake signatures still checked).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(dns_matches("*.example.com", "abc.example.com"));
        assert!(!dns_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_matches("*.example.com", "example.com"));
        assert!(dns_matches("ABC.example.com", "abc.EXAMPLE.com"));
    }

    #[test]
    fn a_leaf_is_checked_against_dns_and_uri_sans() {
        let mut params = rcgen::CertificateParams::new(vec!["abc.example.com".to_string()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://abc.example.com/test-identity").unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().as_ref();
        let dns = |n: &str| SubjectAltName::Dns(n.into());
        let uri = |u: &str| SubjectAltName::Uri(u.into());
        assert!(has_any_san(der, &[dns("abc.example.com")]));
        assert!(!has_any_san(der, &[dns("dce.example.com")]));
        assert!(has_any_san(der, &[uri("spiffe://abc.example.com/test-identity")]));
        assert!(!has_any_san(
            der,
            &[uri("spiffe://def.example.com/test-identity")]
        ));
        assert!(has_any_san(
            der,
            &[uri("spiffe://def.example.com/x"), dns("abc.example.com")]
        ));
        assert!(!has_any_san(
            der,
            &[uri("spiffe://def.example.com/x"), dns("def.example.com")]
        ));
    }
}

/// Pingora's `custom_l4` connector for an HTTP upstream whose certificate is checked
/// against a SAN list: connects TCP and runs the TLS handshake with
/// [`UpstreamTlsClient`], and hands pingora the TLS stream as a virtual socket (the
/// peer is then plain text to pingora: HTTP/1.1, or h2 with prior knowledge, over it).
#[derive(Debug)]
pub struct SanConnector {
    /// The upstream's client.
    pub client: Arc<UpstreamTlsClient>,
    /// The endpoint's host (the SNI when `tls.sni` is not set).
    pub host: String,
    /// The connect timeout, TCP and handshake together.
    pub timeout: Duration,
}

#[async_trait::async_trait]
impl pingora::connectors::L4Connect for SanConnector {
    async fn connect(
        &self,
        addr: &pingora::protocols::l4::socket::SocketAddr,
    ) -> pingora::Result<pingora::protocols::l4::stream::Stream> {
        use pingora::{Error, ErrorType};
        let Some(inet) = addr.as_inet() else {
            return Error::e_explain(ErrorType::ConnectError, "not an internet address");
        };
        match self.client.connect(*inet, &self.host, self.timeout).await {
            Ok(tls) => Ok(pingora::protocols::l4::stream::Stream::from(
                pingora::protocols::l4::virt::VirtualSocketStream::new(Box::new(TlsSocket(tls))),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                Error::e_explain(ErrorType::ConnectTimedout, format!("connecting to {inet}: {e}"))
            }
            Err(e) => Error::e_explain(ErrorType::TLSHandshakeFailure, format!("TLS to {inet}: {e}")),
        }
    }
}

/// A client TLS stream as pingora's virtual socket.
#[derive(Debug)]
struct TlsSocket(tokio_rustls::client::TlsStream<TcpStream>);

impl tokio::io::AsyncRead for TlsSocket {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsSocket {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl pingora::protocols::l4::virt::VirtualSocket for TlsSocket {
    fn set_socket_option(&self, opt: pingora::protocols::l4::virt::VirtualSockOpt) -> std::io::Result<()> {
        match opt {
            pingora::protocols::l4::virt::VirtualSockOpt::NoDelay => self.0.get_ref().0.set_nodelay(true),
            _ => Ok(()),
        }
    }
}
