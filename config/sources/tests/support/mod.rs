//! Test helpers: a real etcd server on free loopback ports, killed on drop.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where the etcd binary is (`scripts/deps.sh test` installs it). Override with
/// `SLUICE_TEST_ETCD`.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("SLUICE_TEST_ETCD").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A single-member etcd with its own data directory.
pub struct Etcd {
    child: Option<Child>,
    data: tempfile::TempDir,
    /// The client port the server listens on now.
    pub client_port: u16,
    peer_port: u16,
}

impl Etcd {
    /// Starts etcd and waits (at most 15 s) until it answers.
    pub async fn start() -> Etcd {
        let mut etcd = Etcd {
            child: None,
            data: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.spawn().await;
        etcd
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    async fn spawn(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.endpoint();
        let log = std::fs::File::create(self.data.path().join("etcd.log")).unwrap();
        let child = Command::new(etcd_binary())
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.data.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--initial-cluster-state=new")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start etcd (run `bash scripts/deps.sh test`)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Ok(mut c)) = tokio::time::timeout(
                Duration::from_secs(1),
                etcd_client::Client::connect([client.as_str()], None),
            )
            .await
            {
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), c.get("/", None)).await {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd did not start; see {}",
                self.data.path().join("etcd.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server (the data directory stays).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data directory, on `client_port`.
    pub async fn restart_on(&mut self, client_port: u16) {
        self.kill();
        self.client_port = client_port;
        self.spawn().await;
    }

    /// Kills and starts the server again on the same data directory and ports.
    pub async fn restart(&mut self) {
        let port = self.client_port;
        self.restart_on(port).await;
    }

    /// A new client.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint()], None)
            .await
            .unwrap()
    }

    /// A free port for [`Etcd::restart_on`].
    pub fn other_port() -> u16 {
        free_port()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
