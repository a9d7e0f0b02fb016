//! deploy/: every Kustomize overlay renders (`kubectl kustomize`) and validates against
//! the Kubernetes schemas (kubernetes-validate, strict), the SluicePolicy CRD is a
//! structural schema and the example policies validate against it, the RBAC is least
//! privilege, the ConfigMap's config passes `sluice validate`, and the Dockerfile parses.
//!
//! Tools: `kubectl` (`$SLUICE_KUBECTL`, else the one on PATH; Debian's kubernetes-client
//! is kubectl 1.20 with kustomize v2.0.3, which the manifests are written for) and the
//! test venv's python (`$SLUICE_TEST_PYTHON`) with kubernetes-validate, both installed by
//! `scripts/deps.sh test`. The validator is tests/fixtures/deploy/validate.py.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

/// The Kubernetes versions every manifest must be valid for: the oldest supported
/// (autoscaling/v2, policy/v1 and CEL CRD rules are all GA by 1.30) and the newest the
/// validator knows.
const VERSIONS: &str = "1.30.0,1.37.0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kubectl() -> PathBuf {
    std::env::var_os("SLUICE_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("kubectl"))
}

/// `kubectl kustomize dir`, as text.
fn render(dir: &Path) -> String {
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl: {e}: run `scripts/deps.sh test` (kubernetes-client) or set SLUICE_KUBECTL")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The validator's verdict on `files`.
struct Verdict {
    /// `[kind, name, how]`: how is `kubernetes`, `crd-schema` or `external`.
    checked: Vec<(String, String, String)>,
    errors: Vec<String>,
}

fn validate(files: &[&Path], crds: &[&Path]) -> Verdict {
    let python = crate::support::kafka::python();
    let mut cmd = Command::new(python);
    cmd.arg(repo().join("tests/fixtures/deploy/validate.py"))
        .args(["--versions", VERSIONS]);
    for c in crds {
        cmd.arg("--crd").arg(c);
    }
    cmd.args(files);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "validator output is not JSON ({e}): {stdout}\nstderr: {}\n(the venv needs kubernetes-validate: scripts/deps.sh test)",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let checked = v["checked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c[0].as_str().unwrap().to_string(),
                c[1].as_str().unwrap().to_string(),
                c[2].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let errors: Vec<String> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        out.status.success(),
        errors.is_empty(),
        "exit status and errors disagree: {stdout}"
    );
    Verdict { checked, errors }
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind}/{name} in the rendered output"))
}

fn overlays() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes/overlays"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn every_overlay_renders_and_validates() {
    let dirs = overlays();
    let names: Vec<String> = dirs
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"dev".into()) && names.contains(&"production".into()),
        "{names:?}"
    );
    let tmp = tempfile::tempdir().unwrap();
    for dir in dirs
        .iter()
        .chain(std::iter::once(&repo().join("deploy/kubernetes/base")))
    {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let text = render(dir);
        let file = tmp.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &text).unwrap();
        let v = validate(&[&file], &[]);
        assert!(v.errors.is_empty(), "{name}: {:#?}", v.errors);
        // Everything the base ships is there and was checked against a real schema.
        for (kind, obj) in [
            ("Namespace", "sluice"),
            ("CustomResourceDefinition", "sluicepolicies.sluice.dev"),
            ("ServiceAccount", "sluice"),
            ("ClusterRole", "sluice"),
            ("ClusterRoleBinding", "sluice"),
            ("Role", "sluice-leader-election"),
            ("RoleBinding", "sluice-leader-election"),
            ("ConfigMap", "sluice-config"),
            ("Deployment", "sluice"),
            ("Service", "sluice"),
            ("Service", "sluice-admin"),
            ("PodDisruptionBudget", "sluice"),
            ("HorizontalPodAutoscaler", "sluice"),
            ("IngressClass", "sluice"),
        ] {
            assert!(
                v.checked
                    .contains(&(kind.into(), obj.into(), "kubernetes".into())),
                "{name}: {kind}/{obj} not validated: {:?}",
                v.checked
            );
        }
        assert!(v
            .checked
            .contains(&("GatewayClass".into(), "sluice".into(), "external".into())));

        let objs = docs(&text);
        let class = find(&objs, "GatewayClass", "sluice");
        assert_eq!(
            class["spec"]["controllerName"].as_str(),
            Some("sluice.dev/gateway-controller")
        );
        let ic = find(&objs, "IngressClass", "sluice");
        assert_eq!(
            ic["spec"]["controller"].as_str(),
            Some(sluice_config::kubernetes::INGRESS_CONTROLLER),
            "{name}: the IngressClass names the controller sluice answers for"
        );
        check_deployment(&name, &objs, tmp.path());
        match name.as_str() {
            "dev" => {
                assert_eq!(
                    find(&objs, "Deployment", "sluice")["spec"]["replicas"].as_i64(),
                    Some(1)
                );
                assert_eq!(
                    find(&objs, "HorizontalPodAutoscaler", "sluice")["spec"]["maxReplicas"].as_i64(),
                    Some(1)
                );
                assert_eq!(
                    find(&objs, "Service", "sluice")["spec"]["type"].as_str(),
                    Some("NodePort")
                );
                find(&objs, "Secret", "sluice-admin");
            }
            "production" => {
                assert_eq!(
                    find(&objs, "Deployment", "sluice")["spec"]["replicas"].as_i64(),
                    Some(3)
                );
                let hpa = &find(&objs, "HorizontalPodAutoscaler", "sluice")["spec"];
                assert_eq!(
                    (hpa["minReplicas"].as_i64(), hpa["maxReplicas"].as_i64()),
                    (Some(3), Some(20))
                );
                // The base's behaviour survives the overlay's merge patch.
                assert!(hpa["behavior"]["scaleDown"].is_mapping(), "{hpa:?}");
                let sm = find(&objs, "ServiceMonitor", "sluice");
                assert_eq!(sm["spec"]["endpoints"][0]["path"].as_str(), Some("/metrics"));
                // The ServiceMonitor selects the admin Service, whose port it names.
                let admin = find(&objs, "Service", "sluice-admin");
                for (k, val) in sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
                    assert_eq!(&admin["metadata"]["labels"][k.as_str().unwrap()], val);
                }
                assert_eq!(
                    admin["spec"]["ports"][0]["name"],
                    sm["spec"]["endpoints"][0]["port"]
                );
                // No fixed admin token in production.
                assert!(!objs.iter().any(|o| o["kind"].as_str() == Some("Secret")));
            }
            _ => {}
        }
    }
}

/// The Deployment probes `/readyz` on the admin port the mounted config listens on, drains
/// in its preStop, runs unprivileged, and its config passes `sluice validate`.
fn check_deployment(name: &str, objs: &[Value], tmp: &Path) {
    let dep = find(objs, "Deployment", "sluice");
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let port_of = |n: &str| -> i64 {
        c["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(n))
            .unwrap_or_else(|| panic!("{name}: no container port {n}"))["containerPort"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz"),
        "{name}"
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["port"].as_str(),
        Some("admin"),
        "{name}"
    );
    assert_eq!(
        c["startupProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz"),
        "{name}"
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz"),
        "{name}"
    );
    let pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .unwrap();
    assert_eq!(
        pre_stop[0].as_str(),
        Some("sleep"),
        "{name}: preStop lets endpoints drain"
    );
    let sleep: i64 = pre_stop[1].as_str().unwrap().parse().unwrap();
    assert!(sleep >= 5, "{name}: preStop sleeps {sleep}s");
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(
        c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    assert!(c["resources"]["requests"]["cpu"].is_string() && c["resources"]["limits"]["memory"].is_string());

    // The config the pod mounts: from the ConfigMap the volume names.
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some("config"))
        .unwrap();
    let cm = find(objs, "ConfigMap", volume["configMap"]["name"].as_str().unwrap());
    let config_text = cm["data"]["sluice.yaml"].as_str().unwrap();
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["run", "--config", "/etc/sluice/sluice.yaml"], "{name}");
    let file = tmp.join(format!("{name}-sluice.yaml"));
    std::fs::write(&file, config_text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["validate", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: sluice validate: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let config: Value = serde_yaml::from_str(config_text).unwrap();
    let admin: std::net::SocketAddr = config["admin"]["listen"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        i64::from(admin.port()),
        port_of("admin"),
        "{name}: probes hit the admin listener"
    );
    assert!(
        admin.ip().is_unspecified(),
        "{name}: the kubelet must reach the admin listener"
    );
    let http: std::net::SocketAddr = config["listeners"][0]["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(i64::from(http.port()), port_of("http"));
    assert!(
        config["kubernetes"].is_mapping(),
        "{name}: the Kubernetes source is on"
    );
    // Draining fits in the grace period: preStop + grace_period + shutdown_timeout.
    let secs = |k: &str| -> i64 {
        let s = config["server"][k].as_str().unwrap();
        s.trim_end_matches('s').parse().unwrap()
    };
    let budget = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(
        sleep + secs("grace_period") + secs("shutdown_timeout") < budget,
        "{name}: terminationGracePeriodSeconds {budget} too short"
    );
    // The admin token comes from a Secret: a non-loopback admin listener needs one.
    let env = c["env"].as_sequence().unwrap();
    assert!(env
        .iter()
        .any(|e| e["name"].as_str() == Some("SLUICE_ADMIN_TOKEN")
            && e["valueFrom"]["secretKeyRef"]["name"].as_str() == Some("sluice-admin")));
}

#[test]
fn rbac_is_least_privilege() {
    let objs = docs(&render(&repo().join("deploy/kubernetes/base")));
    let rules = |kind: &str, name: &str| -> Vec<(Vec<String>, Vec<String>, Vec<String>)> {
        find(&objs, kind, name)["rules"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|r| {
                let list = |k: &str| -> Vec<String> {
                    r[k].as_sequence()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_str().unwrap().to_string())
                        .collect()
                };
                (list("apiGroups"), list("resources"), list("verbs"))
            })
            .collect()
    };
    let cluster = rules("ClusterRole", "sluice");
    let can = |rules: &[(Vec<String>, Vec<String>, Vec<String>)], group: &str, res: &str, verb: &str| {
        rules.iter().any(|(g, r, v)| {
            g.iter().any(|x| x == group) && r.iter().any(|x| x == res) && v.iter().any(|x| x == verb)
        })
    };
    for (g, r, v) in &cluster {
        for x in g.iter().chain(r).chain(v) {
            assert_ne!(x, "*", "no wildcard in the ClusterRole");
        }
        for verb in v {
            let write = !matches!(verb.as_str(), "get" | "list" | "watch");
            if write {
                assert!(
                    r.iter().all(|res| res.ends_with("/status") || res == "events"),
                    "{verb} on {r:?}: writes only to status subresources and events"
                );
            }
            assert!(!matches!(
                verb.as_str(),
                "delete" | "deletecollection" | "escalate" | "bind" | "impersonate"
            ));
        }
    }
    for (group, res) in [
        ("networking.k8s.io", "ingresses"),
        ("networking.k8s.io", "ingressclasses"),
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("", "secrets"),
        ("gateway.networking.k8s.io", "gatewayclasses"),
        ("gateway.networking.k8s.io", "gateways"),
        ("gateway.networking.k8s.io", "httproutes"),
        ("sluice.dev", "sluicepolicies"),
    ] {
        for verb in ["get", "list", "watch"] {
            assert!(can(&cluster, group, res, verb), "{verb} {group}/{res}");
        }
        assert!(!can(&cluster, group, res, "update") && !can(&cluster, group, res, "patch"));
    }
    for (group, res) in [
        ("networking.k8s.io", "ingresses/status"),
        ("gateway.networking.k8s.io", "gatewayclasses/status"),
        ("gateway.networking.k8s.io", "gateways/status"),
        ("gateway.networking.k8s.io", "httproutes/status"),
        ("sluice.dev", "sluicepolicies/status"),
    ] {
        assert!(
            can(&cluster, group, res, "update") || can(&cluster, group, res, "patch"),
            "{group}/{res}"
        );
    }
    assert!(can(&cluster, "", "events", "create") && can(&cluster, "", "events", "patch"));
    assert!(
        !can(&cluster, "coordination.k8s.io", "leases", "get"),
        "leases are namespaced: a Role"
    );
    let role = rules("Role", "sluice-leader-election");
    assert_eq!(role.len(), 1);
    for verb in ["get", "create", "update"] {
        assert!(can(&role, "coordination.k8s.io", "leases", verb), "{verb} leases");
    }
    let role_obj = find(&objs, "Role", "sluice-leader-election");
    assert_eq!(role_obj["metadata"]["namespace"].as_str(), Some("sluice"));
    // Both bindings name the ServiceAccount the Deployment runs as.
    let sa = find(&objs, "Deployment", "sluice")["spec"]["template"]["spec"]["serviceAccountName"].clone();
    for (kind, name) in [
        ("ClusterRoleBinding", "sluice"),
        ("RoleBinding", "sluice-leader-election"),
    ] {
        let subject = &find(&objs, kind, name)["subjects"][0];
        assert_eq!(subject["name"], sa, "{kind}");
        assert_eq!(subject["namespace"].as_str(), Some("sluice"));
    }
}

#[test]
fn crd_and_examples_validate() {
    let crd = repo().join("deploy/kubernetes/base/crds/sluicepolicies.sluice.dev.yaml");
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files.push(crd.clone());
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let v = validate(&refs, &[]);
    assert!(v.errors.is_empty(), "{:#?}", v.errors);
    let policies: Vec<_> = v.checked.iter().filter(|c| c.0 == "SluicePolicy").collect();
    assert!(policies.len() >= 3, "{:?}", v.checked);
    assert!(policies.iter().all(|c| c.2 == "crd-schema"), "{policies:?}");
    for section in ["auth", "rate_limit", "breaker", "rollout"] {
        let text: String = files
            .iter()
            .filter(|f| {
                f.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("sluicepolicy")
            })
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect();
        assert!(
            docs(&text).iter().any(|d| d["spec"][section].is_mapping()),
            "an example uses `{section}`"
        );
    }
    assert!(v
        .checked
        .contains(&("Ingress".into(), "echo".into(), "kubernetes".into())));
    assert!(v.checked.contains(&(
        "CustomResourceDefinition".into(),
        "sluicepolicies.sluice.dev".into(),
        "kubernetes".into()
    )));
}

/// The checks above can fail: a misspelt field, a policy without targets, a policy with
/// a misspelt filter field, and a CRD that is not structural are all refused.
#[test]
fn validator_refuses_broken_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let crd = repo().join("deploy/kubernetes/base/crds/sluicepolicies.sluice.dev.yaml");
    let write = |name: &str, text: &str| -> PathBuf {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cases = [
        (
            "deployment.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  replica: 2\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec: {containers: [{name: c, image: i}]}\n",
            "replica",
        ),
        (
            "no-targets.yaml",
            "apiVersion: sluice.dev/v1alpha1\nkind: SluicePolicy\nmetadata: {name: p}\nspec:\n  breaker: {minimum_calls: 5}\n",
            "targetRefs",
        ),
        (
            "misspelt.yaml",
            "apiVersion: sluice.dev/v1alpha1\nkind: SluicePolicy\nmetadata: {name: p}\nspec:\n  targetRefs: [{group: networking.k8s.io, kind: Ingress, name: i}]\n  rate_limit: {requests: 5, per: 1s, brust: 10}\n",
            "brust",
        ),
        (
            "bad-type.yaml",
            "apiVersion: sluice.dev/v1alpha1\nkind: SluicePolicy\nmetadata: {name: p}\nspec:\n  targetRefs: [{group: networking.k8s.io, kind: Ingress, name: i}]\n  breaker: {failure_rate_threshold: 150}\n",
            "150",
        ),
    ];
    for (file, text, needle) in cases {
        let p = write(file, text);
        let v = validate(&[&p], &[&crd]);
        assert!(
            v.errors.iter().any(|e| e.contains(needle)),
            "{file}: expected an error about {needle}, got {:?}",
            v.errors
        );
    }
    let unstructural = write(
        "crd.yaml",
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: things.x.dev}\nspec:\n  group: x.dev\n  scope: Namespaced\n  names: {kind: Thing, plural: things}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec: {description: untyped}\n",
    );
    let v = validate(&[&unstructural], &[]);
    assert!(
        v.errors.iter().any(|e| e.contains("spec: no type")),
        "{:?}",
        v.errors
    );
}

#[test]
fn dockerfile_parses() {
    let path = repo().join("deploy/Dockerfile");
    let text = std::fs::read_to_string(&path).unwrap();
    let df = dockerfile::parse(&text).unwrap_or_else(|e| panic!("deploy/Dockerfile: {e}"));
    let stages = &df.stages;
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let builder = &stages[0];
    let runtime = stages.last().unwrap();
    assert_eq!(df.resolve(&builder.image), "rust:1-bookworm");
    assert_eq!(df.resolve(&runtime.image), "debian:bookworm-slim");
    // The builder builds the `sluice` binary of sluice-gateway, and the runtime copies it.
    let build = builder
        .instructions
        .iter()
        .find(|(i, a)| i == "RUN" && a.contains("cargo build"))
        .expect("a cargo build");
    assert!(
        build.1.contains("-p sluice-gateway") && build.1.contains("--bin sluice"),
        "{}",
        build.1
    );
    assert!(build.1.contains("--release") && build.1.contains("--locked"));
    let copies: Vec<&String> = runtime
        .instructions
        .iter()
        .filter(|(i, _)| i == "COPY")
        .map(|(_, a)| a)
        .collect();
    assert!(copies
        .iter()
        .any(|a| a.contains("--from=builder") && a.ends_with("/usr/local/bin/sluice")));
    // Files copied from the build context exist, and the default config is valid.
    for a in copies.iter().filter(|a| !a.contains("--from=")) {
        let src = a.split_whitespace().next().unwrap();
        assert!(repo().join(src).exists(), "COPY {src}: no such file");
        if src.ends_with(".yaml") {
            let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(["validate", "--config"])
                .arg(repo().join(src))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{src}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    // Non-root: a numeric, non-zero USER in the final stage.
    let user = runtime
        .instructions
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .expect("USER");
    let uid: u32 = user.1.split(':').next().unwrap().parse().unwrap();
    assert!(uid > 0);
    // The image's ports are the ones the manifests name.
    let expose = runtime.instructions.iter().find(|(i, _)| i == "EXPOSE").unwrap();
    for p in ["8080", "9900"] {
        assert!(expose.1.split_whitespace().any(|x| x == p), "EXPOSE {p}");
    }
    // With BuildKit at hand, its own linter too.
    let buildx = Command::new("docker").args(["buildx", "version"]).output();
    if buildx.is_ok_and(|o| o.status.success()) {
        let out = Command::new("docker")
            .args(["build", "--check", "-f"])
            .arg(&path)
            .arg(repo())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker build --check: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn dockerfile_parser_refuses_mistakes() {
    for (text, needle) in [
        ("FROM a AS b\nCOPY --from=c /x /y\n", "stage c"),
        ("FROM a\nRUNN echo\n", "RUNN"),
        ("RUN echo\n", "before FROM"),
        ("FROM a\nRUN echo \\\n", "continuation"),
    ] {
        let e = dockerfile::parse(text).unwrap_err();
        assert!(e.contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn e2e_script_is_valid_bash() {
    let script = repo().join("deploy/e2e/kind.sh");
    let out = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let readme = std::fs::read_to_string(repo().join("deploy/e2e/README.md")).unwrap();
    assert!(
        readme.contains("not run in CI"),
        "the README says the e2e script is not run in CI"
    );
}

/// A small Dockerfile parser: instructions, line continuations, stages, ARG defaults.
mod dockerfile {
    const KNOWN: &[&str] = &[
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
        "MAINTAINER",
    ];

    #[derive(Debug)]
    pub struct Stage {
        pub image: String,
        pub name: Option<String>,
        pub instructions: Vec<(String, String)>,
    }

    #[derive(Debug)]
    pub struct Dockerfile {
        /// ARGs before the first FROM, with their defaults.
        pub args: Vec<(String, String)>,
        pub stages: Vec<Stage>,
    }

    impl Dockerfile {
        /// `image` with `${ARG}` / `$ARG` replaced by the global ARG defaults.
        pub fn resolve(&self, image: &str) -> String {
            let mut s = image.to_string();
            for (k, v) in &self.args {
                s = s.replace(&format!("${{{k}}}"), v).replace(&format!("${k}"), v);
            }
            s
        }
    }

    pub fn parse(text: &str) -> Result<Dockerfile, String> {
        let mut logical: Vec<(usize, String)> = Vec::new();
        let mut cur: Option<(usize, String)> = None;
        for (n, line) in text.lines().enumerate() {
            let t = line.trim();
            if cur.is_none() && (t.is_empty() || t.starts_with('#')) {
                continue;
            }
            if cur.is_some() && t.starts_with('#') {
                continue;
            }
            let (start, mut acc) = cur.take().unwrap_or((n + 1, String::new()));
            if let Some(body) = t.strip_suffix('\\') {
                acc.push_str(body);
                acc.push(' ');
                cur = Some((start, acc));
            } else {
                acc.push_str(t);
                logical.push((start, acc));
            }
        }
        if let Some((start, _)) = cur {
            return Err(format!("line {start}: a line continuation runs off the end"));
        }
        let mut df = Dockerfile {
            args: Vec::new(),
            stages: Vec::new(),
        };
        for (n, l) in logical {
            let (ins, rest) = l.split_once(char::is_whitespace).unwrap_or((l.as_str(), ""));
            let ins = ins.to_ascii_uppercase();
            let rest = rest.trim().to_string();
            if !KNOWN.contains(&ins.as_str()) {
                return Err(format!("line {n}: unknown instruction {ins}"));
            }
            if rest.is_empty() {
                return Err(format!("line {n}: {ins} without arguments"));
            }
            match ins.as_str() {
                "FROM" => {
                    let parts: Vec<&str> = rest.split_whitespace().filter(|p| !p.starts_with("--")).collect();
                    let name = match parts.as_slice() {
                        [_] => None,
                        [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                        _ => return Err(format!("line {n}: FROM {rest}")),
                    };
                    df.stages.push(Stage {
                        image: parts[0].to_string(),
                        name,
                        instructions: Vec::new(),
                    });
                }
                "ARG" if df.stages.is_empty() => {
                    let (k, v) = rest.split_once('=').unwrap_or((rest.as_str(), ""));
                    df.args.push((k.to_string(), v.to_string()));
                }
                _ => {
                    let names: Vec<Option<String>> = df.stages.iter().map(|s| s.name.clone()).collect();
                    let stage = df
                        .stages
                        .last_mut()
                        .ok_or_else(|| format!("line {n}: {ins} before FROM"))?;
                    if ins == "COPY" || ins == "ADD" {
                        for flag in rest.split_whitespace().filter(|w| w.starts_with("--from=")) {
                            let from = &flag["--from=".len()..];
                            let earlier = names[..names.len() - 1]
                                .iter()
                                .any(|s| s.as_deref() == Some(from))
                                || from.parse::<usize>().is_ok_and(|i| i + 1 < names.len())
                                || from.contains(':')
                                || from.contains('/');
                            if !earlier {
                                return Err(format!("line {n}: COPY --from names no earlier stage {from}"));
                            }
                        }
                        let words = rest.split_whitespace().filter(|w| !w.starts_with("--")).count();
                        if words < 2 {
                            return Err(format!("line {n}: {ins} needs a source and a destination"));
                        }
                    }
                    if matches!(ins.as_str(), "CMD" | "ENTRYPOINT") && rest.starts_with('[') {
                        serde_json::from_str::<Vec<String>>(&rest)
                            .map_err(|e| format!("line {n}: {ins} exec form is not a JSON array: {e}"))?;
                    }
                    stage.instructions.push((ins, rest));
                }
            }
        }
        if df.stages.is_empty() {
            return Err("no FROM".into());
        }
        Ok(df)
    }
}
