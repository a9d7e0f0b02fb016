//! [`Redis`]: a real `redis-server` on a free loopback port, without persistence, killed
//! on drop. Tests can pause it (SIGSTOP: connections are accepted, nothing answers),
//! resume it, kill it and start it again on the same port.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where `redis-server` is (`scripts/deps.sh test` installs it). Override with
/// `SLUICE_TEST_REDIS`.
pub fn redis_binary() -> String {
    std::env::var("SLUICE_TEST_REDIS").unwrap_or_else(|_| "redis-server".into())
}

/// A running (or stopped) Redis server.
pub struct Redis {
    child: Option<Child>,
    /// The port it listens on (kept across [`Redis::restart`]).
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts Redis on a free port and waits (at most 10 s) until it answers `PING`.
    pub async fn start() -> Redis {
        let mut r = Redis {
            child: None,
            port: super::free_port(),
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        r.spawn().await;
        r
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("redis.log");
        let child = Command::new(redis_binary())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server (run `bash scripts/deps.sh test`)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.ping().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not answer PING within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether Redis answers `PING` within 500 ms.
    pub async fn ping(&self) -> bool {
        self.command("PING").await.is_some_and(|r| r.starts_with("+PONG"))
    }

    /// Sends one inline command and returns the raw first reply chunk.
    pub async fn command(&self, cmd: &str) -> Option<String> {
        let fut = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .ok()?;
            s.write_all(format!("{cmd}\r\n").as_bytes()).await.ok()?;
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).into_owned())
        };
        tokio::time::timeout(Duration::from_millis(500), fut)
            .await
            .ok()
            .flatten()
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args([sig, &c.id().to_string()]).status();
        }
    }

    /// Freezes the server (SIGSTOP): the kernel still accepts connections, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the server (SIGKILL); connections are refused from now on.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port, empty (nothing is persisted).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}
