//! [`Kafka`]: a real Kafka-protocol broker (tansu, in-memory storage) on a free port of
//! 127.0.0.1, killed on drop; and [`consume`], which reads a topic back with librdkafka
//! (`confluent-kafka` in a venv, `kafka_consume.py`), a client independent of ours.
//!
//! `scripts/deps.sh test` installs both: tansu with `cargo install tansu --features
//! dynostore --locked` into `~/.cargo/bin`, the venv in `~/.cache/sluice/venv`.
//! `SLUICE_TANSU` and `SLUICE_TEST_PYTHON` override where they are looked for. A test
//! that needs them and does not find them fails, saying how to install them.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The tansu binary: `$SLUICE_TANSU`, else `tansu` on `PATH`, else `~/.cargo/bin/tansu`.
pub fn tansu() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_TANSU") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("tansu"))
                .find(|f| f.is_file())
        })
        .unwrap_or_default();
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tansu"));
    on_path
        .or(home.filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "tansu (the Kafka-protocol broker these tests run) is not installed: run `scripts/deps.sh test`, \
                 which runs `cargo install tansu --features dynostore --locked`, or set SLUICE_TANSU"
            )
        })
}

/// The venv python with confluent-kafka: `$SLUICE_TEST_PYTHON`, else
/// `~/.cache/sluice/venv/bin/python`.
pub fn python() -> PathBuf {
    let p = std::env::var_os("SLUICE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sluice/venv/bin/python")
        });
    assert!(
        p.is_file(),
        "{} not found: run `scripts/deps.sh test` (it creates the venv with confluent-kafka), or set SLUICE_TEST_PYTHON",
        p.display()
    );
    p
}

/// A running tansu broker with the topics it was given. Killed on drop.
pub struct Kafka {
    child: Option<Child>,
    port: u16,
    topics: Vec<(String, u32)>,
    dir: tempfile::TempDir,
    starts: u32,
}

impl Kafka {
    /// Starts a broker on a free port and creates `topics` (name, partitions).
    pub async fn start(topics: &[(&str, u32)]) -> Kafka {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut k = Kafka {
            child: None,
            port,
            topics: topics.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
            dir: tempfile::tempdir().unwrap(),
            starts: 0,
        };
        k.run().await;
        k
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    async fn run(&mut self) {
        self.starts += 1;
        let log = |name: &str| std::fs::File::create(self.dir.path().join(name)).unwrap();
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &self.url(),
                "--advertised-listener-url",
                &self.url(),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log(&format!("tansu.{}.out", self.starts))))
            .stderr(Stdio::from(log(&format!("tansu.{}.err", self.starts))))
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(self.addr()).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen within 20 s: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (topic, partitions) in self.topics.clone() {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let out = Command::new(tansu())
                    .args([
                        "topic",
                        "create",
                        "--broker",
                        &self.url(),
                        "--partitions",
                        &partitions.to_string(),
                        &topic,
                    ])
                    .output()
                    .expect("run tansu topic create");
                if out.status.success() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "tansu topic create {topic}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Kills the broker (SIGKILL) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port, with the same topics (empty: the storage
    /// is in memory).
    pub async fn restart(&mut self) {
        self.stop();
        self.run().await;
    }

    /// What the broker printed.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for i in 1..=self.starts {
            for ext in ["out", "err"] {
                s.push_str(
                    &std::fs::read_to_string(self.dir.path().join(format!("tansu.{i}.{ext}")))
                        .unwrap_or_default(),
                );
            }
        }
        s
    }

    /// Reads `topic` from the beginning with librdkafka until `want` messages arrived or
    /// `timeout` passed, and returns what it read.
    pub async fn consume(&self, topic: &str, want: usize, timeout: Duration) -> Vec<Message> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/support/kafka_consume.py");
        let out = tokio::process::Command::new(python())
            .args([
                script,
                &self.addr(),
                topic,
                &want.to_string(),
                &timeout.as_secs_f64().to_string(),
            ])
            .output()
            .await
            .expect("run kafka_consume.py");
        assert!(
            out.status.success(),
            "kafka_consume.py failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let m: Value = serde_json::from_str(l).unwrap();
                Message {
                    key: m["key"].as_str().map(str::to_string),
                    value: serde_json::from_str(m["value"].as_str().unwrap()).unwrap(),
                    partition: m["partition"].as_i64().unwrap(),
                }
            })
            .collect()
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- tansu ---\n{}", self.logs());
        }
        self.stop();
    }
}

/// A message read back.
#[derive(Debug, Clone)]
pub struct Message {
    /// The key, if any.
    pub key: Option<String>,
    /// The value, parsed as JSON.
    pub value: Value,
    /// The partition it was read from.
    pub partition: i64,
}
