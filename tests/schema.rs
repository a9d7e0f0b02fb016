//! The config's JSON Schema: `sluice schema` prints it, the repository carries it
//! (`config/schema/sluice.schema.json`, which must be exactly that output), every bundled
//! config example names it for yaml-language-server and validates against it, and the
//! SluicePolicy CRD's filter sections agree with it. The JSON Schema checks run in the
//! test venv's python with the `jsonschema` package (tests/fixtures/schema/validate.py).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

/// Where the schema is checked in, relative to the repository.
const SCHEMA: &str = "config/schema/sluice.schema.json";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sluice_schema() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("schema")
        .output()
        .expect("run sluice schema");
    assert!(
        out.status.success(),
        "sluice schema: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Every `*.yaml` below `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The bundled configs: the examples, and the configs of the container image and the
/// Kubernetes manifests.
fn bundled_configs() -> Vec<PathBuf> {
    let mut files = yaml_files(&repo().join("config/examples"));
    files.push(repo().join("deploy/docker/sluice.yaml"));
    files.push(repo().join("deploy/kubernetes/base/sluice.yaml"));
    files
}

fn relative(p: &Path) -> String {
    p.strip_prefix(repo()).unwrap_or(p).display().to_string()
}

/// A YAML file's documents as JSON, read by serde_yaml as Sluice reads them.
fn yaml_docs(p: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(p).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml::Value =
                serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn the_checked_in_schema_is_what_sluice_schema_prints() {
    let printed = sluice_schema();
    let file = std::fs::read_to_string(repo().join(SCHEMA))
        .unwrap_or_else(|e| panic!("{SCHEMA}: {e}: run `sluice schema > {SCHEMA}`"));
    assert!(
        printed == file,
        "{SCHEMA} is stale: regenerate it with `cargo run --bin sluice -- schema > {SCHEMA}`"
    );
    // It carries the model's doc comments and serde defaults, and the filter kinds.
    let v: Value = serde_json::from_str(&printed).unwrap();
    let shutdown = &v["$defs"]["ServerConfig"]["properties"]["shutdown_timeout"];
    assert_eq!(shutdown["default"], "30s", "{shutdown}");
    assert!(shutdown["description"]
        .as_str()
        .unwrap()
        .contains("Default: `30s`"));
    let kinds = &v["$defs"]["Filter"]["propertyNames"]["enum"];
    for kind in ["rate_limit", "jwt", "key_auth", "redirect", "headers", "cors"] {
        assert!(
            kinds.as_array().unwrap().contains(&json!(kind)),
            "{kind} in {kinds}"
        );
    }
    assert!(
        !kinds.as_array().unwrap().contains(&json!("panic")),
        "the test-only kind is left out of the published schema: {kinds}"
    );
}

#[test]
fn every_bundled_example_names_the_schema_for_editors() {
    for f in bundled_configs() {
        let text = std::fs::read_to_string(&f).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("# yaml-language-server: $schema="))
            .unwrap_or_else(|| panic!("{}: no `# yaml-language-server: $schema=` line", relative(&f)));
        let target = line.trim_start_matches("# yaml-language-server: $schema=").trim();
        let resolved = f.parent().unwrap().join(target);
        assert_eq!(
            resolved.canonicalize().ok(),
            repo().join(SCHEMA).canonicalize().ok(),
            "{}: $schema={target} is not {SCHEMA}",
            relative(&f)
        );
    }
}

#[test]
fn examples_and_the_sluicepolicy_crd_validate_against_the_schema_with_jsonschema() {
    let schema: Value = serde_json::from_str(&sluice_schema()).unwrap();
    let documents: Vec<Value> = bundled_configs()
        .iter()
        .flat_map(|f| {
            yaml_docs(f)
                .into_iter()
                .map(|doc| json!({"name": relative(f), "doc": doc}))
        })
        .collect();
    assert!(documents.len() >= 18, "{} documents", documents.len());
    let crd_path = repo().join("deploy/kubernetes/base/crds/sluicepolicies.sluice.dev.yaml");
    let crd = yaml_docs(&crd_path).remove(0);
    let policies_path = repo().join("deploy/kubernetes/examples/sluicepolicy.yaml");
    let policies: Vec<Value> = yaml_docs(&policies_path)
        .into_iter()
        .map(|doc| json!({"name": relative(&policies_path), "doc": doc}))
        .collect();
    // What the schema must refuse, so that the checks can fail.
    let invalid = json!([
        {"name": "a misspelt route field", "doc": {"routes": [{"id": "a", "upstrem": "x"}]}},
        {"name": "a misspelt timeout", "doc": {"routes": [{"id": "a", "timeouts": {"totl": "1s"}}]}},
        {"name": "an unknown filter kind", "doc": {"routes": [{"id": "a", "filters": [{"rate_limiter": {}}]}]}},
        {"name": "a filter spec with an unknown field", "doc": {"routes": [{"id": "a", "filters": [{"rate_limit": {"requests": 1, "pre": "1s"}}]}]}},
        {"name": "a duration that is not one", "doc": {"server": {"shutdown_timeout": "soon"}}},
        {"name": "two kinds in one filter item", "doc": {"routes": [{"id": "a", "filters": [{"headers": {}, "cors": {}}]}]}},
    ]);
    let input = json!({
        "schema": schema,
        "documents": documents,
        "crd": crd,
        "policies": policies,
        "invalid": invalid,
    });
    let mut child = Command::new(crate::support::kafka::python())
        .arg(repo().join("tests/fixtures/schema/validate.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), &input).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verdict: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "validator output is not JSON ({e}): {stdout}\nstderr: {}\n(the venv needs jsonschema: scripts/deps.sh test)",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let errors = verdict["errors"].as_array().unwrap();
    assert!(
        errors.is_empty(),
        "{} error(s):\n{}",
        errors.len(),
        errors
            .iter()
            .map(|e| e.as_str().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let checked = verdict["checked"].as_array().unwrap();
    let count = |what: &str| checked.iter().filter(|c| c[0] == what).count();
    assert_eq!(count("schema"), 1, "{verdict}");
    assert_eq!(count("document"), documents.len(), "{verdict}");
    assert_eq!(count("crd-section"), 3, "{verdict}");
    assert_eq!(count("policy-section"), 3, "{verdict}");
    assert_eq!(count("refused"), 6, "{verdict}");
}
