//! The README's run command, `scripts/quickstart.sh`, started for real (with the dev
//! build through `SLUICE_BIN`, so it does not build a release binary): it serves on its
//! documented ports, and when it is stopped (Ctrl-C, which signals its whole process
//! group, or SIGTERM to the script alone, as a supervisor does) it leaves no process and
//! no listening port behind, so the next quickstart starts.
//!
//! The script's ports are fixed (127.0.0.1:8080, :9900, :9001, :9002); the tests below
//! run one after the other under one lock.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{accepts_connections, eventually, http_client};

/// The quickstart's ports: gateway, admin, the two echo backends.
const PORTS: [u16; 4] = [8080, 9900, 9001, 9002];

/// One quickstart at a time: the ports are fixed.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The processes whose process group is `pgid` (read from /proc), as `pid command`.
fn group_members(pgid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces, so split after ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // A zombie has been reaped by nobody yet but holds no port; count it anyway.
        if fields.get(2) == Some(&pgid.to_string().as_str()) {
            found.push(head.replace(" (", " "));
        }
    }
    found
}

/// Starts the script in its own process group (as a terminal runs a foreground job) and
/// waits until the gateway proxies to both backends.
async fn start_quickstart() -> Child {
    for port in PORTS {
        assert!(
            !accepts_connections(addr(port)).await,
            "127.0.0.1:{port} is already taken: the quickstart test needs its fixed ports"
        );
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let child = Command::new("bash")
        .arg("scripts/quickstart.sh")
        .current_dir(root)
        .env("SLUICE_BIN", env!("CARGO_BIN_EXE_sluice"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("bash scripts/quickstart.sh");
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    eventually(
        Duration::from_secs(30),
        "the quickstart gateway to proxy /api/users to backend-1 and backend-2",
        || async {
            let Ok(resp) = http_client().get("http://127.0.0.1:8080/api/users").send().await else {
                return false;
            };
            if let Some(up) = resp.headers().get("x-upstream").and_then(|v| v.to_str().ok()) {
                seen.lock().unwrap().insert(up.to_string());
            }
            seen.lock().unwrap().len() == 2
        },
    )
    .await;
    let ready = http_client()
        .get("http://127.0.0.1:9900/readyz")
        .send()
        .await
        .expect("the admin listener answers");
    assert!(ready.status().is_success(), "/readyz: {}", ready.status());
    child
}

/// Waits (bounded) for the script to exit, then checks nothing it started is left.
async fn assert_stops_cleanly(mut child: Child, how: &str) {
    let pgid = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let left = group_members(pgid);
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .status();
            let _ = child.wait();
            panic!("the quickstart did not exit within 20 s of {how}; its processes: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        matches!(status.code(), Some(0 | 130 | 143) | None),
        "the script's exit after {how}: {status:?}"
    );
    let left = group_members(pgid);
    assert!(left.is_empty(), "after {how}, processes left behind: {left:?}");
    for port in PORTS {
        assert!(
            !accepts_connections(addr(port)).await,
            "after {how}, 127.0.0.1:{port} still accepts connections"
        );
    }
}

fn kill(signal: &str, target: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, "--", target])
        .status()
        .unwrap();
    assert!(status.success(), "kill -s {signal} {target}");
}

#[tokio::test]
async fn ctrl_c_stops_the_quickstart_and_frees_its_ports() {
    let _one = ONE_AT_A_TIME.lock().await;
    let child = start_quickstart().await;
    // Ctrl-C in a terminal: SIGINT to every process of the foreground group.
    kill("INT", &format!("-{}", child.id()));
    assert_stops_cleanly(child, "SIGINT to the process group").await;
    // The next quickstart starts on the same ports.
    let child = start_quickstart().await;
    // A supervisor stopping the script alone: the script must stop its children.
    kill("TERM", &child.id().to_string());
    assert_stops_cleanly(child, "SIGTERM to the script").await;
}

#[tokio::test]
async fn sigint_to_the_script_alone_stops_its_children() {
    let _one = ONE_AT_A_TIME.lock().await;
    let child = start_quickstart().await;
    // `kill -INT <script>`: bash started the backends with SIGINT ignored (background
    // jobs of a non-interactive shell); the script signals them, and they stop on it.
    kill("INT", &child.id().to_string());
    assert_stops_cleanly(child, "SIGINT to the script").await;
}
