//! TLS Secrets as listener certificates (pure): the Secrets that Sluice's Ingresses name
//! in `spec.tls[].secretName`, and that the Gateway API's HTTPS listeners name in
//! `certificateRefs`, become the config's inline `certificates`, one per Secret
//! (`k8s.<namespace>.<secret>`), serving the union of the hosts that name it.
//!
//! The gateway swaps them into its TLS listeners on every change (see
//! `gateway/src/edge/tls.rs`), so a Secret that changes is a rotation with no restart: new
//! handshakes get the new certificate, open connections keep theirs. A Secret that is
//! missing, has no `tls.crt` / `tls.key`, or whose PEM does not read, is reported (an
//! Event on the Ingress or Gateway naming the Secret) and left out: the previous
//! certificate of that Secret is then no longer served, and the hosts fall back to the
//! listener's default certificate.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use sluice_config::certificates::InlineCertificate;

use crate::gateway_api::ListenerCertificate;
use crate::{ClusterObjects, ObjectRef, Report};

/// The name of the certificate made of Secret `namespace/name`.
pub fn certificate_name(namespace: &str, name: &str) -> String {
    format!("k8s.{namespace}.{name}")
}

/// The PEM certificate chain and key of a `kubernetes.io/tls` Secret, or why not.
pub fn secret_pem(secret: &Secret) -> Result<(String, String), String> {
    let data = secret.data.clone().unwrap_or_default();
    let field = |k: &str| -> Result<String, String> {
        let v = data.get(k).ok_or_else(|| format!("has no {k}"))?;
        String::from_utf8(v.0.clone()).map_err(|_| format!("{k} is not PEM text"))
    };
    let cert = field("tls.crt")?;
    let key = field("tls.key")?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if certs.is_empty() {
        return Err("tls.crt holds no PEM CERTIFICATE".into());
    }
    match rustls_pemfile::private_key(&mut key.as_bytes()) {
        Ok(Some(_)) => Ok((cert, key)),
        Ok(None) => Err("tls.key holds no PEM PRIVATE KEY".into()),
        Err(e) => Err(format!("tls.key: {e}")),
    }
}

/// One Secret wanted as a certificate: who asked for it and for which hosts.
#[derive(Default)]
struct Wanted {
    hosts: BTreeSet<String>,
    askers: Vec<ObjectRef>,
}

/// The certificates of the Secrets named by Sluice's Ingresses (of `class`) and by the
/// Gateway API's valid HTTPS listeners (`gateway_certs`), served on `listener` (or every
/// TLS listener), and reports on the Secrets that cannot be used.
pub fn collect(
    objects: &ClusterObjects,
    class: &str,
    gateway_certs: &[ListenerCertificate],
    listener: Option<&str>,
) -> (Vec<InlineCertificate>, Vec<Report>) {
    let mut wanted: BTreeMap<(String, String), Wanted> = BTreeMap::new();
    let mut reports = Vec::new();
    for ing in objects
        .ingresses
        .iter()
        .filter(|i| crate::ingress::is_ours(objects, i, class))
    {
        let ns = ing.namespace().unwrap_or_default();
        for (i, tls) in ing
            .spec
            .as_ref()
            .and_then(|s| s.tls.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            let Some(secret) = tls.secret_name.as_deref().filter(|s| !s.is_empty()) else {
                reports.push(Report {
                    object: ObjectRef::of(ing),
                    reason: "NoTLSSecret".into(),
                    message: format!(
                        "spec.tls[{i}] names no secretName: its hosts get the listener's default certificate"
                    ),
                });
                continue;
            };
            let w = wanted.entry((ns.clone(), secret.to_string())).or_default();
            w.hosts
                .extend(tls.hosts.iter().flatten().map(|h| h.to_ascii_lowercase()));
            w.askers.push(ObjectRef::of(ing));
        }
    }
    for c in gateway_certs {
        let w = wanted
            .entry((c.secret_namespace.clone(), c.secret_name.clone()))
            .or_default();
        w.hosts.extend(c.hostname.iter().map(|h| h.to_ascii_lowercase()));
        w.askers.push(c.gateway.clone());
    }
    let mut out = Vec::new();
    for ((ns, name), w) in wanted {
        let pem = match objects.secret(&ns, &name) {
            None => Err("not found (or not of type kubernetes.io/tls)".to_string()),
            Some(s) => secret_pem(s),
        };
        match pem {
            Ok((cert_pem, key_pem)) => out.push(InlineCertificate {
                name: certificate_name(&ns, &name),
                cert_pem,
                key_pem: key_pem.into(),
                server_names: w.hosts.into_iter().collect(),
                listeners: listener.map(String::from).into_iter().collect(),
            }),
            Err(why) => {
                let mut askers = w.askers;
                askers.sort();
                askers.dedup();
                for a in askers {
                    reports.push(Report {
                        object: a,
                        reason: "InvalidTLSSecret".into(),
                        message: format!("TLS Secret {ns}/{name} {why}; its certificate is not served"),
                    });
                }
            }
        }
    }
    (out, reports)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ0jUvWkqQ9T1r3Xj1Q0jUvWkqQ8wCgYIKoZIzj0EAwIw\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";

    fn b64(s: &str) -> String {
        // Minimal base64 for the tests (k8s-openapi's ByteString deserializes base64).
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn objects(secret_data: serde_json::Value) -> ClusterObjects {
        let ing = serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "site", "namespace": "shop", "uid": "u1"},
            "spec": {"ingressClassName": "sluice",
                "tls": [{"hosts": ["A.example"], "secretName": "site-tls"}, {"hosts": ["b.example"]}],
                "rules": []}
        }))
        .unwrap();
        let secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "site-tls", "namespace": "shop"},
            "data": secret_data,
        }))
        .unwrap();
        ClusterObjects {
            ingresses: vec![ing],
            secrets: vec![secret],
            ..ClusterObjects::default()
        }
    }

    #[test]
    fn an_ingress_tls_secret_becomes_a_certificate_for_its_hosts() {
        let o = objects(json!({"tls.crt": b64(CERT), "tls.key": b64(KEY)}));
        let (certs, reports) = collect(&o, "sluice", &[], Some("websecure"));
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].name, "k8s.shop.site-tls");
        assert_eq!(certs[0].server_names, ["a.example"]);
        assert_eq!(certs[0].listeners, ["websecure"]);
        assert_eq!(certs[0].cert_pem, CERT);
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].reason, "NoTLSSecret");
    }

    #[test]
    fn a_bad_secret_is_reported_naming_it_and_left_out() {
        let o = objects(json!({"tls.crt": b64("not pem"), "tls.key": b64(KEY)}));
        let (certs, reports) = collect(&o, "sluice", &[], None);
        assert!(certs.is_empty());
        let bad: Vec<_> = reports
            .iter()
            .filter(|r| r.reason == "InvalidTLSSecret")
            .collect();
        assert_eq!(bad.len(), 1, "{reports:?}");
        assert!(bad[0].message.contains("shop/site-tls"), "{}", bad[0].message);
        assert_eq!(bad[0].object.name, "site");
    }
}
