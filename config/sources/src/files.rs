//! Checks of the files a config names (listener certificates and keys): the I/O half of
//! validation, which `sluice-config` leaves to its caller.
//!
//! [`crate::compose_all`] runs [`check`] on every config it builds, so a missing or wrong
//! certificate file is an error with its field path at start, on `sluice validate`, and
//! on every reload (which is then rejected, and the last good config keeps serving).

use sluice_config::validate::ConfigError;
use sluice_config::Config;

/// One error per file of [`Config::files`] that cannot be read or holds no PEM block of
/// the kind it should, at the path of the field that names it.
pub fn check(config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for f in config.files() {
        let message = match std::fs::read_to_string(f.file) {
            Ok(text) if text.contains("-----BEGIN") && text.contains(f.pem_label) => continue,
            Ok(_) => format!("{}: no PEM {} found", f.file, f.pem_label),
            Err(e) => format!("cannot read {}: {e}", f.file),
        };
        errors.push(ConfigError {
            path: f.path,
            message,
        });
    }
    errors
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_wrong_files_are_errors_at_their_field() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(&key, "not a key\n").unwrap();
        let text = format!(
            "listeners:\n- {{name: a, listen: '127.0.0.1:8443', tls: {{certificates: [{{cert: {c}, key: {k}}}, {{cert: {c}.gone, key: {k}}}]}}}}\nroutes: [{{id: r, filters: [{{direct_response: {{status: 204}}}}]}}]\n",
            c = cert.display(),
            k = key.display()
        );
        let config = Config::from_text(&text).unwrap();
        let errs: Vec<String> = check(&config).iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert_eq!(
            errs[0],
            format!(
                "listeners[0].tls.certificates[0].key: {}: no PEM PRIVATE KEY found",
                key.display()
            )
        );
        assert!(
            errs[1].starts_with(&format!(
                "listeners[0].tls.certificates[1].cert: cannot read {}.gone: ",
                cert.display()
            )),
            "{errs:?}"
        );
        assert!(
            errs[2].starts_with("listeners[0].tls.certificates[1].key: "),
            "{errs:?}"
        );
    }
}
