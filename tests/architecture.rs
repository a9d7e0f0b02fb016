//! Architecture rules, read from `cargo metadata`: the crate graph the workspace resolves
//! to, normal (non-dev, non-build) dependencies only, followed transitively. A rule
//! broken by a new dependency fails here, in the test command, instead of eroding the
//! shape silently (docs/architecture.md draws the crates).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// A rule: crate `krate` must not reach any of `forbidden` (names, or name prefixes
/// ending in `*`) through its normal dependencies.
struct Rule {
    krate: &'static str,
    forbidden: &'static [&'static str],
    why: &'static str,
}

/// I/O and runtime crates the pure core must not compile.
const IO: &[&str] = &[
    "tokio",
    "hyper",
    "hyper-util",
    "reqwest",
    "redis",
    "pingora*",
    "axum",
    "tower*",
    "kube*",
    "rustls",
    "mio",
];

const RULES: &[Rule] = &[
    Rule {
        krate: "sluice-core",
        forbidden: IO,
        why: "the pure core (router, rewrite, split, framing, normalisation, resilience machines, the filter seam) does no I/O",
    },
    Rule {
        krate: "sluice-core",
        forbidden: &["sluice-filters", "sluice-sources", "sluice-kube", "sluice-gateway"],
        why: "the core sits below every other crate but the config model",
    },
    Rule {
        krate: "sluice-config",
        forbidden: &[
            "sluice-core", "sluice-filters", "sluice-sources", "sluice-kube", "sluice-gateway", "tokio",
            "hyper", "reqwest", "redis", "pingora*",
        ],
        why: "the config model is plain types, parsing and validation primitives",
    },
    Rule {
        krate: "sluice-filters",
        forbidden: &["pingora*", "sluice-sources", "sluice-kube", "sluice-gateway"],
        why: "filter kinds do not touch pingora; the gateway wraps them in its phases",
    },
    Rule {
        krate: "sluice-sources",
        forbidden: &["pingora*", "sluice-core", "sluice-filters", "sluice-gateway"],
        why: "config sources get the route check through their context, not from the kinds",
    },
    Rule {
        krate: "sluice-kube",
        forbidden: &["pingora*", "sluice-gateway", "sluice-filters"],
        why: "the Kubernetes source gets the route check through its context, not from the kinds",
    },
];

/// Rules broken today, each with the reason it is allowed for now. The test also fails
/// when a listed violation is gone, so this list stays true (remove the entry). None
/// today: every rule above holds.
const KNOWN: &[(&str, &str, &str)] = &[];

/// The workspace's resolved graph: package name -> names of its normal dependencies.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
            root,
        ])
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().expect("resolve.nodes") {
        let from = names[node["id"].as_str().unwrap()].to_string();
        let deps = g.entry(from).or_default();
        for d in node["deps"].as_array().expect("deps") {
            let normal = d["dep_kinds"]
                .as_array()
                .expect("dep_kinds")
                .iter()
                .any(|k| k["kind"].is_null());
            if normal {
                deps.insert(names[d["pkg"].as_str().unwrap()].to_string());
            }
        }
    }
    g
}

/// Every crate `krate` reaches through normal dependencies, with one path to each.
fn reach(g: &BTreeMap<String, BTreeSet<String>>, krate: &str) -> BTreeMap<String, Vec<String>> {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut queue = vec![vec![krate.to_string()]];
    while let Some(path) = queue.pop() {
        let last = path.last().unwrap().clone();
        for d in g.get(&last).into_iter().flatten() {
            if !seen.contains_key(d) {
                let mut p = path.clone();
                p.push(d.clone());
                seen.insert(d.clone(), p.clone());
                queue.push(p);
            }
        }
    }
    seen
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// The rules broken in graph `g`: (crate, forbidden crate, path, why).
fn violations(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for rule in RULES {
        assert!(
            g.contains_key(rule.krate),
            "no crate {} in the workspace",
            rule.krate
        );
        for (dep, path) in reach(g, rule.krate) {
            if rule.forbidden.iter().any(|f| matches(f, &dep)) {
                out.push((
                    rule.krate.to_string(),
                    dep,
                    path.join(" -> "),
                    rule.why.to_string(),
                ));
            }
        }
    }
    out
}

#[test]
fn the_crate_graph_keeps_the_architecture_rules() {
    let g = graph();
    let found = violations(&g);
    let mut broken = Vec::new();
    for (krate, dep, path, why) in &found {
        if !KNOWN.iter().any(|(k, d, _)| k == krate && d == dep) {
            broken.push(format!("{krate} must not depend on {dep} ({why}): {path}"));
        }
    }
    assert!(
        broken.is_empty(),
        "architecture rules broken:\n{}",
        broken.join("\n")
    );
    for (k, d, reason) in KNOWN {
        assert!(
            found.iter().any(|(fk, fd, _, _)| fk == k && fd == d),
            "{k} no longer depends on {d}: remove it from KNOWN ({reason})"
        );
    }
}

#[test]
fn a_forbidden_dependency_is_reported_with_its_path() {
    // The checker itself, on a graph with a deliberate violation: the pure core reaching
    // tokio through a helper crate.
    let mut g = graph();
    g.entry("sluice-core".into()).or_default().insert("helper".into());
    g.entry("helper".into()).or_default().insert("tokio".into());
    let found = violations(&g);
    assert!(
        found
            .iter()
            .any(|(k, d, p, _)| k == "sluice-core" && d == "tokio" && p == "sluice-core -> helper -> tokio"),
        "{found:?}"
    );
}
