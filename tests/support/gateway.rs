//! [`Gateway`]: the real `sluice` binary, run on a templated config.
//!
//! # Config templates
//!
//! Tests write YAML with `{{…}}` placeholders, replaced when the gateway starts and on
//! every [`Gateway::rewrite_config`]:
//!
//! | placeholder           | replaced with                                          |
//! |-----------------------|--------------------------------------------------------|
//! | `{{http}}`            | `127.0.0.1:<port>` of a plain listener                 |
//! | `{{https}}`           | `127.0.0.1:<port>` of a TLS listener                   |
//! | `{{admin}}`           | `127.0.0.1:<port>` of the admin API                    |
//! | `{{addr:NAME}}`       | `127.0.0.1:<port>`, one free port per `NAME`           |
//! | `{{port:NAME}}`       | that port number alone                                 |
//! | `{{dir}}`             | the gateway's temporary directory                      |
//! | `{{<upstream name>}}` | the address of a [`TestUpstream`] given to the builder |
//! | `{{cert:NAME}}`       | path of the certificate given with `.cert(NAME, …)`    |
//! | `{{key:NAME}}`        | path of its key                                        |
//! | `{{file:NAME}}`       | path of a file given with `.file(NAME, …)`             |
//! | `{{KEY}}`             | whatever was given with `.var(KEY, …)`                 |
//!
//! An unknown placeholder panics, so a typo cannot silently reach the gateway.
//!
//! Settings every test needs are filled in when the config leaves them out:
//! `server.pid_file` and `server.upgrade_sock` in the temporary directory,
//! `server.threads: 1`, and `admin.listen: {{admin}}`.
//!
//! # Example
//!
//! ```ignore
//! let up = TestUpstream::start("a").await;
//! let gw = Gateway::start(
//!     r#"
//! listeners: [{name: web, listen: "{{http}}"}]
//! upstreams: [{id: a, endpoints: [{address: "{{a}}"}]}]
//! routes: [{id: r, upstream: a}]
//! "#,
//!     &[&up],
//! )
//! .await;
//! let resp = gw.get("/hello").await;
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::metrics::Metrics;
use super::tls::TestCert;
use super::upstream::TestUpstream;
use super::{accepts_connections, free_port, http_client_unpooled};

/// How long [`Gateway::start`] waits for the gateway to be ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`Gateway::reload`] waits for a reload to be processed.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Signals a test can send to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Graceful shutdown (drain).
    Term,
    /// Re-read the config file.
    Hup,
    /// Fast shutdown.
    Int,
    /// Graceful upgrade: hand the listeners to a new process.
    Quit,
    /// Kill at once.
    Kill,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Hup => "HUP",
            Signal::Int => "INT",
            Signal::Quit => "QUIT",
            Signal::Kill => "KILL",
        }
    }
}

/// Builds a [`Gateway`]: the config template plus what its placeholders refer to.
pub struct GatewayBuilder {
    template: String,
    vars: BTreeMap<String, String>,
    files: Vec<(String, Vec<u8>)>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// A running `sluice run` process with its own temporary directory. Killed (SIGKILL) on
/// drop; when the test is panicking, its output is printed first.
pub struct Gateway {
    child: Child,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    template: Template,
    client: reqwest::Client,
}

/// What the placeholders of a config template stand for.
struct Template {
    vars: BTreeMap<String, String>,
    /// Ports handed out so far, by name; the same name always gets the same port.
    ports: Mutex<BTreeMap<String, u16>>,
    dir: PathBuf,
}

impl GatewayBuilder {
    /// A builder for the config template `yaml`.
    pub fn new(yaml: &str) -> GatewayBuilder {
        GatewayBuilder {
            template: yaml.to_string(),
            vars: BTreeMap::new(),
            files: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Adds a command-line argument after `run --config <file>`.
    pub fn arg(mut self, arg: impl Into<String>) -> GatewayBuilder {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable for the process; `{{dir}}` in `value` is replaced with
    /// the gateway's temporary directory.
    pub fn env(mut self, key: &str, value: &str) -> GatewayBuilder {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Makes `{{<name>}}` stand for the upstream's address.
    pub fn upstream(self, up: &TestUpstream) -> GatewayBuilder {
        let name = up.name().to_string();
        self.var(&name, &up.addr().to_string())
    }

    /// [`GatewayBuilder::upstream`] for each.
    pub fn upstreams(mut self, ups: &[&TestUpstream]) -> GatewayBuilder {
        for up in ups {
            self = self.upstream(up);
        }
        self
    }

    /// Makes `{{key}}` stand for `value`.
    pub fn var(mut self, key: &str, value: &str) -> GatewayBuilder {
        assert!(
            !matches!(key, "http" | "https" | "admin" | "dir") && !key.contains(':'),
            "placeholder {key:?} is reserved"
        );
        let previous = self.vars.insert(key.to_string(), value.to_string());
        assert!(previous.is_none(), "placeholder {key:?} given twice");
        self
    }

    /// Writes `contents` to a file in the gateway's directory; `{{file:name}}` is its path
    /// (and for `x.crt` / `x.key`, also `{{cert:x}}` / `{{key:x}}`).
    pub fn file(mut self, name: &str, contents: impl Into<Vec<u8>>) -> GatewayBuilder {
        self.files.push((name.to_string(), contents.into()));
        self
    }

    /// Writes the certificate and key into the gateway's directory; `{{cert:name}}` and
    /// `{{key:name}}` are their paths.
    pub fn cert(self, name: &str, cert: &TestCert) -> GatewayBuilder {
        self.file(&format!("{name}.crt"), cert.cert_pem.clone())
            .file(&format!("{name}.key"), cert.key_pem.clone())
    }

    /// Starts the gateway without waiting for it to be ready.
    pub fn spawn(mut self) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("sluice-it-")
            .tempdir()
            .expect("create a temporary directory");
        for (name, contents) in &self.files {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).expect("write a gateway file");
            let path = path.display().to_string();
            if let Some(stem) = name.strip_suffix(".crt") {
                self.vars.insert(format!("cert:{stem}"), path.clone());
            }
            if let Some(stem) = name.strip_suffix(".key") {
                self.vars.insert(format!("key:{stem}"), path.clone());
            }
            self.vars.insert(format!("file:{name}"), path);
        }
        self.vars.insert("dir".into(), dir.path().display().to_string());
        let ports: BTreeMap<String, u16> = ["http", "https", "admin"]
            .into_iter()
            .map(|n| (n.to_string(), free_port()))
            .collect();
        let template = Template {
            vars: self.vars,
            ports: Mutex::new(ports),
            dir: dir.path().to_path_buf(),
        };
        let config_path = dir.path().join("sluice.yaml");
        std::fs::write(&config_path, template.render(&self.template)).expect("write the gateway config");
        let stdout = std::fs::File::create(dir.path().join("stdout.log")).expect("create stdout.log");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("create stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(&self.args)
            .env("SLUICE_LOG", "warn")
            .envs(
                self.env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.replace("{{dir}}", &dir.path().display().to_string()))),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("start the sluice binary");
        Gateway {
            child,
            dir,
            config_path,
            template,
            client: http_client_unpooled(),
        }
    }

    /// Starts the gateway and waits until it is ready ([`Gateway::wait_ready`]).
    pub async fn start(self) -> Gateway {
        let mut gw = self.spawn();
        gw.wait_ready().await;
        gw
    }
}

impl Gateway {
    /// A builder for the config template `yaml`.
    pub fn builder(yaml: &str) -> GatewayBuilder {
        GatewayBuilder::new(yaml)
    }

    /// Starts a gateway on `yaml`, with `{{<name>}}` standing for each upstream's address,
    /// and waits until it is ready.
    pub async fn start(yaml: &str, upstreams: &[&TestUpstream]) -> Gateway {
        GatewayBuilder::new(yaml).upstreams(upstreams).start().await
    }

    /// Replaces the placeholders in `template` and fills in the per-test settings (see
    /// the module docs). Text that is not a YAML mapping is returned with only the
    /// placeholders replaced, so that tests can write broken files on purpose.
    pub fn render(&self, template: &str) -> String {
        self.template.render(template)
    }

    /// The port behind `{{port:name}}` (`http`, `https` and `admin` included), allocated
    /// on first use.
    pub fn port(&self, name: &str) -> u16 {
        self.template.port(name)
    }

    /// The plain listener's address (`{{http}}`).
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port("http")))
    }

    /// The TLS listener's address (`{{https}}`).
    pub fn https_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port("https")))
    }

    /// The admin API's address (`{{admin}}`).
    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port("admin")))
    }

    /// `http://{{http}}<path>`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr())
    }

    /// `http://{{admin}}<path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr())
    }

    /// The gateway's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file the gateway reads.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        let status = Command::new("kill")
            .args(["-s", signal.name(), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{} {} failed; logs:\n{}",
            signal.name(),
            self.pid(),
            self.logs()
        );
    }

    /// Renders `yaml` (see [`Gateway::render`]) over the config file, then sends SIGHUP.
    /// Does not wait for the reload: see [`Gateway::reload`].
    pub fn rewrite_config(&self, yaml: &str) {
        self.write_config(yaml);
        self.signal(Signal::Hup);
    }

    /// Renders `yaml` over the config file as an editor does (write a temporary file,
    /// rename it over), without a signal: the gateway's file watcher sees it.
    pub fn write_config(&self, yaml: &str) {
        let text = self.render(yaml);
        let tmp = self.dir.path().join(".sluice.yaml.tmp");
        std::fs::write(&tmp, text).expect("write the new config");
        std::fs::rename(&tmp, &self.config_path).expect("replace the config file");
    }

    /// [`Gateway::rewrite_config`], then waits until the gateway has processed it
    /// (`sluice_config_reloads_total` went up, whatever the outcome) and returns
    /// `/api/v1/config`.
    pub async fn reload(&self, yaml: &str) -> Value {
        let before = self.reloads().await;
        self.rewrite_config(yaml);
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        while self.reloads().await <= before {
            assert!(
                Instant::now() < deadline,
                "reload not processed within {RELOAD_TIMEOUT:?}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.admin_json("/api/v1/config").await
    }

    async fn reloads(&self) -> f64 {
        self.metrics().await.value("sluice_config_reloads_total", &[])
    }

    /// Waits until `/readyz` answers 200 and every listener in the config accepts
    /// connections (UDP listeners aside). Panics with the gateway's output if it exits or is not ready within
    /// [`READY_TIMEOUT`].
    pub async fn wait_ready(&mut self) {
        let listeners = self.listener_addrs();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "sluice exited during startup with {status}; logs:\n{}",
                    self.logs()
                );
            }
            if self.is_ready().await {
                let mut all = true;
                for addr in &listeners {
                    all &= accepts_connections(*addr).await;
                }
                if all {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "sluice not ready within {READY_TIMEOUT:?}; config:\n{}\nlogs:\n{}",
                std::fs::read_to_string(&self.config_path).unwrap_or_default(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn is_ready(&self) -> bool {
        let req = self
            .client
            .get(self.admin_url("/readyz"))
            .timeout(Duration::from_secs(1))
            .send();
        matches!(req.await, Ok(r) if r.status() == reqwest::StatusCode::OK)
    }

    /// The `listen` addresses in the config file.
    fn listener_addrs(&self) -> Vec<SocketAddr> {
        let text = std::fs::read_to_string(&self.config_path).unwrap_or_default();
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_default();
        doc.get("listeners")
            .and_then(|l| l.as_sequence())
            .into_iter()
            .flatten()
            // A UDP listener accepts no connection to check.
            .filter(|l| l.get("protocol").and_then(|p| p.as_str()) != Some("udp"))
            .filter_map(|l| l.get("listen")?.as_str()?.parse().ok())
            .collect()
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the sluice process") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts a second `sluice run --config <same file> --upgrade`, the new process of a
    /// graceful upgrade: it waits on `server.upgrade_sock` for this process's listening
    /// sockets (sent on [`Signal::Quit`]). Its output goes to `successor.*.log` in the same
    /// directory.
    pub fn spawn_successor(&self) -> Successor {
        let out = |f: &str| std::fs::File::create(self.dir.path().join(f)).expect("create a successor log");
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--upgrade")
            .env("SLUICE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out("successor.stdout.log")))
            .stderr(Stdio::from(out("successor.stderr.log")))
            .spawn()
            .expect("start the successor sluice");
        Successor {
            child,
            dir: self.dir.path().to_path_buf(),
        }
    }

    /// The path of `server.upgrade_sock` as the test config fills it in.
    pub fn upgrade_sock(&self) -> PathBuf {
        self.dir.path().join("upgrade.sock")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            read("stdout.log"),
            read("stderr.log")
        )
    }

    /// A GET to the plain listener over HTTP/1.1, on a new connection.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} through the gateway failed: {e}"))
    }

    /// A request builder for the plain listener over HTTP/1.1. Every request goes on a new
    /// connection ([`super::http_client_unpooled`]); use [`super::http_client`] to test
    /// keep-alive.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.http_url(path))
    }

    /// A GET to the admin API.
    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.admin_url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("admin GET {path} failed: {e}"))
    }

    /// A GET to the admin API that must answer 200 with JSON.
    pub async fn admin_json(&self, path: &str) -> Value {
        let resp = self.admin_get(path).await;
        assert_eq!(resp.status(), reqwest::StatusCode::OK, "admin GET {path}");
        resp.json()
            .await
            .unwrap_or_else(|e| panic!("admin GET {path}: not JSON: {e}"))
    }

    /// Scrapes `/metrics` until `done` holds for a scrape or `timeout` passes, and returns
    /// the last scrape either way, for the caller to assert on. (Requests are counted as
    /// they finish, just after their response is written, so a client can see the
    /// response before the count.)
    pub async fn metrics_when(&self, timeout: Duration, done: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics().await;
            if done(&m) || Instant::now() >= deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A scrape of `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        let resp = self.admin_get("/metrics").await;
        assert_eq!(resp.status(), reqwest::StatusCode::OK, "admin GET /metrics");
        Metrics::parse(&resp.text().await.expect("read /metrics"))
    }
}

impl Template {
    /// Replaces the placeholders in `template` and fills in the per-test settings (see
    /// the module docs). Text that is not a YAML mapping is returned with only the
    /// placeholders replaced, so that tests can write broken files on purpose.
    pub fn render(&self, template: &str) -> String {
        let text = self.substitute(template);
        let Ok(serde_yaml::Value::Mapping(mut doc)) = serde_yaml::from_str::<serde_yaml::Value>(&text) else {
            return text;
        };
        let dir = self.dir.as_path();
        let server = section(&mut doc, "server");
        server
            .entry("pid_file".into())
            .or_insert(dir.join("sluice.pid").display().to_string().into());
        server
            .entry("upgrade_sock".into())
            .or_insert(dir.join("upgrade.sock").display().to_string().into());
        server.entry("threads".into()).or_insert(1.into());
        let admin = section(&mut doc, "admin");
        admin
            .entry("listen".into())
            .or_insert(format!("127.0.0.1:{}", self.port("admin")).into());
        serde_yaml::to_string(&doc).expect("serialize the test config")
    }

    fn substitute(&self, template: &str) -> String {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .unwrap_or_else(|| panic!("unclosed placeholder in config template: {rest}"));
            out.push_str(&self.lookup(after[..end].trim()));
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        out
    }

    fn lookup(&self, key: &str) -> String {
        if let Some(v) = self.vars.get(key) {
            return v.clone();
        }
        match key.split_once(':') {
            None if matches!(key, "http" | "https" | "admin") => format!("127.0.0.1:{}", self.port(key)),
            Some(("addr", name)) => format!("127.0.0.1:{}", self.port(name)),
            Some(("port", name)) => self.port(name).to_string(),
            _ => panic!(
                "unknown placeholder {{{{{key}}}}} in config template; known: {:?}",
                self.vars.keys()
            ),
        }
    }

    /// The port behind `{{port:name}}` (`http`, `https` and `admin` included), allocated
    /// on first use.
    pub fn port(&self, name: &str) -> u16 {
        *self
            .ports
            .lock()
            .expect("ports lock")
            .entry(name.to_string())
            .or_insert_with(free_port)
    }
}

/// `doc[key]` as a mapping, created (or replacing a null) when missing.
fn section<'a>(doc: &'a mut serde_yaml::Mapping, key: &str) -> &'a mut serde_yaml::Mapping {
    let value = doc
        .entry(key.into())
        .or_insert_with(|| serde_yaml::Value::Mapping(serde_yaml::Mapping::new()));
    if value.is_null() {
        *value = serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
    }
    value
        .as_mapping_mut()
        .unwrap_or_else(|| panic!("`{key}` in the test config must be a mapping"))
}

/// The new process of a graceful upgrade ([`Gateway::spawn_successor`]). Killed on drop.
pub struct Successor {
    child: Child,
    dir: PathBuf,
}

impl Successor {
    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What it wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "--- successor stdout ---\n{}--- successor stderr ---\n{}",
            read("successor.stdout.log"),
            read("successor.stderr.log")
        )
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "sluice (config {}) output:\n{}",
                self.config_path.display(),
                self.logs()
            );
        }
    }
}
