//! `sluice validate`: exit status and error report, on the files in `tests/fixtures/`.
//! Also: `sluice run` refuses to start on an invalid file.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn sluice(args: &[&str], config: &PathBuf) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("run sluice")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn valid_file_exits_zero() {
    let out = sluice(&["validate"], &fixture("valid.yaml"));
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("valid"), "{}", text(&out.stdout));
}

#[test]
fn every_semantic_error_is_reported_with_its_field_path() {
    let path = fixture("invalid_semantics.yaml");
    let out = sluice(&["validate"], &path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(format!("{}: 3 error(s)", path.display()).as_str()),
        "{stderr}"
    );
    for expected in [
        "  routes[1].match.path.regex: invalid regex",
        "  routes[2].upstream: unknown upstream \"nowhere\"",
        "  routes[3].match.methods[0]: invalid method \"get\"",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(expected)),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn unknown_field_is_an_error_naming_its_path() {
    let path = fixture("invalid_unknown_field.yaml");
    let out = sluice(&["validate"], &path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!("{}: 1 error(s)\n", path.display())),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("  routes[1].match") && l.contains("unknown field `pth`")),
        "{stderr}"
    );
}

#[test]

fn unknown_field_and_semantic_errors_are_all_reported_together() {
    let path = fixture("invalid_mixed.yaml");
    let out = sluice(&["validate"], &path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for expected in [
        "  routes[0].match.pth: unknown field `pth`",
        "  routes[1].match.path.regex: invalid regex",
        "  routes[2].upstream: unknown upstream \"nowhere\"",
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(expected)),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn help_says_what_sluice_is() {
    for flag in ["--help", "-h"] {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg(flag)
            .output()
            .expect("run sluice");
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
        assert_eq!(
            stdout.lines().next(),
            Some("Sluice: an API gateway that routes, meters and shuts the flow of requests into your services."),
            "{stdout}"
        );
        assert!(
            stdout
                .lines()
                .nth(1)
                .is_some_and(|l| l.contains("sluice run --config FILE")),
            "{stdout}"
        );
    }
}

#[test]
fn an_only_listener_with_a_bad_address_is_the_one_error() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("sluice.yaml");
    std::fs::write(
        &path,
        "listeners: [{name: web, listen: 'localhost:eighty'}]\nupstreams: [{id: u, endpoints: [{address: '127.0.0.1:9000', weight: lots}]}]\nroutes: [{id: r, upstream: u}]\n",
    )
    .expect("write the config");
    let out = sluice(&["validate"], &path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert_eq!(lines[0], format!("{}: 2 error(s)", path.display()));
    assert!(lines[1].starts_with("  listeners[0].listen: "), "{stderr}");
    assert!(
        lines[2].starts_with("  upstreams[0].endpoints[0].weight: "),
        "{stderr}"
    );
}

#[test]
fn missing_file_is_an_error() {
    let out = sluice(&["validate"], &fixture("does-not-exist.yaml"));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read"), "{}", text(&out.stderr));
}

#[test]
fn run_refuses_to_start_on_an_invalid_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let stderr_path = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg("--config")
        .arg(fixture("invalid_semantics.yaml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("create stderr.log"))
        .spawn()
        .expect("start sluice");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll sluice") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sluice run kept running on an invalid config");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("routes[2].upstream: unknown upstream \"nowhere\""),
        "{stderr}"
    );
}

#[test]
fn every_bundled_example_is_valid() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("config/examples") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            // Paths inside the examples (certificates) are relative to the repository root.
            let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(["validate", "--config"])
                .arg(&path)
                .current_dir(dir.join("../.."))
                .output()
                .expect("run sluice");
            assert!(out.status.success(), "{}: {}", path.display(), text(&out.stderr));
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} examples found");

    // The etcd pair: the bootstrap file with the resources `sluice apply` would write,
    // as one directory (files merge), is a valid config.
    let merged = tempfile::tempdir().expect("temporary directory");
    for (name, src) in [("a.yaml", "etcd-bootstrap.yaml"), ("b.yaml", "etcd/catalog.yaml")] {
        std::fs::copy(dir.join(src), merged.path().join(name)).expect("copy an example");
    }
    let out = sluice(&["validate"], &merged.path().to_path_buf());
    assert!(out.status.success(), "etcd example pair: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("1 upstreams, 2 routes"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn kafka_acks_all_is_valid_and_one_or_zero_are_refused_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("sluice-acks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |acks: &str| {
        let path = dir.join(format!("acks-{acks}.yaml"));
        std::fs::write(
            &path,
            format!(
                "listeners: [{{name: web, listen: '127.0.0.1:18999'}}]\n\
                 logging:\n  access_log:\n    sinks:\n      - kafka: {{brokers: ['127.0.0.1:19092'], topic: access, acks: {acks}}}\n"
            ),
        )
        .unwrap();
        path
    };
    for ok in ["all", "'-1'"] {
        let out = sluice(&["validate"], &write(ok));
        assert!(out.status.success(), "acks {ok}: {}", text(&out.stderr));
    }
    for (acks, why) in [
        ("'1'", "`1` (leader only) is not supported"),
        ("'0'", "`0` (no acknowledgement) is not supported"),
    ] {
        let out = sluice(&["validate"], &write(acks));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "acks {acks}: {stderr}");
        assert!(
            stderr.contains(&format!("logging.access_log.sinks[0].kafka.acks: {why}")),
            "acks {acks}: {stderr}"
        );
        assert!(stderr.contains("use `all`"), "acks {acks}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
