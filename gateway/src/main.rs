//! `sluice`: the gateway binary.
//!
//! - `sluice run --config PATH [--etcd URL,...]` serves a config file or directory, and
//!   routes and upstreams from etcd, reloading on every change.
//! - `sluice validate --config PATH` checks a config and prints every error with its
//!   field path.
//! - `sluice apply|get|diff --etcd URL,...` manage the routes, upstreams and consumers kept in etcd.
//! - `sluice rollout status|pause|resume|promote|abort [ROUTE] --admin URL` shows and
//!   steers progressive rollouts.
//! - `sluice echo` runs a demo backend.
//! - `sluice schema` prints the config's JSON Schema (`config/schema/sluice.schema.json`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sluice_sources::etcd::{self, ChangeKind, EtcdOptions, EtcdTls};
use sluice_sources::{compose, file};

use sluice_gateway::cli::echo;
use sluice_gateway::control::sources;
use sluice_gateway::control::sources::Sources;
use sluice_gateway::control::validate;
use sluice_gateway::edge::server;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// What `sluice --help` opens with: what Sluice is, for its users, and where to start.
const ABOUT: &str = "Sluice: an API gateway that routes, meters and shuts the flow of requests into your services.\n\
Start with `sluice run --config FILE` (try config/examples/quickstart.yaml); `sluice validate --config FILE` checks one.";

/// The command line.
#[derive(Parser)]
#[command(version, about = ABOUT, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How to reach etcd.
#[derive(Args, Clone)]
struct EtcdArgs {
    /// etcd client URLs, comma-separated (`http://10.0.0.1:2379,http://10.0.0.2:2379`).
    #[arg(long = "etcd", env = "SLUICE_ETCD", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Key prefix: keys are `{prefix}/routes/{id}` and `{prefix}/upstreams/{id}`.
    #[arg(long = "etcd-prefix", env = "SLUICE_ETCD_PREFIX", default_value = "/sluice")]
    prefix: String,
    /// etcd user name (with `--etcd-password`).
    #[arg(long = "etcd-user", env = "SLUICE_ETCD_USER")]
    user: Option<String>,
    /// etcd password. Prefer the environment variable to the flag.
    #[arg(long = "etcd-password", env = "SLUICE_ETCD_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// CA certificate (PEM) to verify etcd with; turns TLS on.
    #[arg(long = "etcd-ca")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long = "etcd-cert")]
    cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long = "etcd-key")]
    key: Option<PathBuf>,
    /// Timeout for connecting to etcd; at start, how long to wait before serving the cache.
    #[arg(long = "etcd-connect-timeout", default_value = "3s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
}

impl EtcdArgs {
    fn options(&self, cache: Option<PathBuf>) -> Result<Option<EtcdOptions>, String> {
        if self.endpoints.is_empty() {
            return Ok(None);
        }
        let user = match (&self.user, &self.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (None, None) => None,
            _ => return Err("--etcd-user and --etcd-password go together".into()),
        };
        if self.cert.is_some() != self.key.is_some() {
            return Err("--etcd-cert and --etcd-key go together".into());
        }
        for f in [&self.ca, &self.cert, &self.key].into_iter().flatten() {
            if let Err(e) = std::fs::metadata(f) {
                return Err(format!("{}: {e}", f.display()));
            }
        }
        let tls = (self.ca.is_some() || self.cert.is_some()).then(|| EtcdTls {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            domain: None,
        });
        Ok(Some(EtcdOptions {
            endpoints: self.endpoints.clone(),
            prefix: self.prefix.clone(),
            user,
            tls,
            connect_timeout: self.connect_timeout,
            cache,
            ..EtcdOptions::default()
        }))
    }

    fn required(&self) -> Result<EtcdOptions, String> {
        self.options(None)?
            .ok_or_else(|| "--etcd (or SLUICE_ETCD) is required".to_string())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve a config, reloading it when the file or etcd changes.
    Run {
        /// Config file or directory (YAML or JSON). Watched for changes; SIGHUP re-reads
        /// it too.
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Do not watch the config file (SIGHUP still re-reads it).
        #[arg(long)]
        no_watch: bool,
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Keep the last routes and upstreams read from etcd in this file, and serve them
        /// when etcd cannot be reached at start.
        #[arg(long = "etcd-cache", env = "SLUICE_ETCD_CACHE")]
        etcd_cache: Option<PathBuf>,
        /// Take the listening sockets over from a running sluice (graceful upgrade): start
        /// the new process with this flag, then send SIGQUIT to the old one.
        #[arg(long)]
        upgrade: bool,
        /// Let the admin listener start on a non-loopback address without a token
        /// (`admin.token`, `admin.token_file` or SLUICE_ADMIN_TOKEN).
        #[arg(long, env = "SLUICE_ADMIN_INSECURE")]
        admin_insecure: bool,
        /// This replica's id among the replicas sharing `--etcd` (who leads rollouts, whose
        /// figures are whose; one etcd key segment, other characters become `-`).
        /// Default: `{hostname}-{pid}-{4 random hex digits}`.
        #[arg(long = "replica-id", env = "SLUICE_REPLICA_ID")]
        replica_id: Option<String>,
        /// Directory where progressive rollouts keep their state (one JSON file per
        /// route), so a restarted process continues them. Default: /tmp/sluice-state.
        #[arg(long = "state-dir", env = "SLUICE_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Show or steer the progressive rollouts of a running gateway (its admin API).
    Rollout {
        /// `status` (every rollout, or ROUTE's), `pause`, `resume`, `promote` or `abort`.
        #[arg(value_parser = ["status", "pause", "resume", "promote", "abort"])]
        action: String,
        /// The route whose rollout to show or steer (required but for `status`).
        route: Option<String>,
        /// The admin API's base URL.
        #[arg(long, env = "SLUICE_ADMIN_URL", default_value = "http://127.0.0.1:9900")]
        admin: String,
        /// The admin token (`Authorization: Bearer`). Prefer the environment variable.
        #[arg(long = "admin-token", env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
    },
    /// Purge a running gateway's response cache (its admin API): one key's entries, or
    /// every entry whose key starts with a prefix. Keys read like URLs:
    /// `example.com/path?query` (see docs/caching.md).
    Cache {
        /// `purge`.
        #[arg(value_parser = ["purge"])]
        action: String,
        /// The key whose entries (all variants) to purge.
        #[arg(long, conflicts_with = "prefix", required_unless_present = "prefix")]
        key: Option<String>,
        /// Purge every entry whose key starts with this, e.g. `example.com/static/`.
        #[arg(long)]
        prefix: Option<String>,
        /// The admin API's base URL.
        #[arg(long, env = "SLUICE_ADMIN_URL", default_value = "http://127.0.0.1:9900")]
        admin: String,
        /// The admin token (`Authorization: Bearer`). Prefer the environment variable.
        #[arg(long = "admin-token", env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
    },
    /// Run a demo backend that answers every request with a JSON echo of it.
    Echo {
        /// Address to listen on.
        #[arg(short, long, default_value = "127.0.0.1:9001")]
        listen: std::net::SocketAddr,
        /// Name reported in the `upstream` field and the `x-upstream` header.
        #[arg(short, long, default_value = "echo")]
        name: String,
    },
    /// Print the config file's JSON Schema (draft 2020-12), for editors and CI:
    /// `config/schema/sluice.schema.json` is this output.
    Schema,
    /// Check a config; print every error with its field path and exit non-zero on any.
    Validate {
        /// Config file or directory (YAML or JSON).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate routes, upstreams and consumers locally, then write them to etcd in one transaction.
    Apply {
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(flatten)]
        change: ChangeArgs,
        /// With `--prune`, accept a file with no routes and no upstreams (which deletes
        /// everything under the prefix).
        #[arg(long)]
        allow_empty: bool,
    },
    /// Print the routes, upstreams and consumers kept in etcd, as YAML (every secret
    /// redacted: consumers' credentials, filters' secret fields, webhook URLs).
    Get {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Print every secret as stored instead of `<redacted>`.
        #[arg(long)]
        show_credentials: bool,
    },
    /// Hash a password (read from stdin, one line) for a consumer's
    /// `credentials.basic_auth.password_hash`: argon2id by default.
    HashPassword {
        /// bcrypt (cost 12) instead of argon2id.
        #[arg(long)]
        bcrypt: bool,
    },
    /// Show what `apply` would change in etcd; exit 1 when there are changes.
    Diff {
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(flatten)]
        change: ChangeArgs,
    },
}

/// The file `apply` and `diff` compare with etcd.
#[derive(Args)]
struct ChangeArgs {
    /// File with `routes:`, `upstreams:` and `consumers:` (YAML or JSON).
    #[arg(short, long)]
    file: PathBuf,
    /// Also delete (for `diff`: show the deletion of) the routes and upstreams in etcd
    /// that the file does not have.
    #[arg(long)]
    prune: bool,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("sluice: {message}");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    // Every view of a config (admin API, `get`, `diff`, logs) shows filter specs with
    // their secret fields redacted, by the kinds' own spec types.
    sluice_filters::registry::install_redactor();
    let cli = Cli::parse();
    match cli.command {
        Command::Echo { listen, name } => match echo::run(listen, name) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(format!("echo: {e}")),
        },
        Command::Validate { config } => validate_file(&config),
        Command::Schema => match serde_json::to_string_pretty(&sluice_filters::config_schema()) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("schema: {e}")),
        },
        Command::Run {
            config,
            no_watch,
            etcd,
            etcd_cache,
            upgrade,
            admin_insecure,
            replica_id,
            state_dir,
        } => {
            init_tracing();
            let sources = match etcd.options(etcd_cache) {
                Ok(etcd) => Sources {
                    file: config,
                    watch: !no_watch,
                    etcd,
                    replica_id,
                },
                Err(e) => return fail(e),
            };
            let (parsed, base, hash) = match sources::initial(&sources) {
                Ok(x) => x,
                Err(errors) => {
                    eprintln!("{}: invalid config:\n{errors}", sources.file.display());
                    return ExitCode::from(1);
                }
            };
            let store = match sluice_gateway::rollout::store_for(
                state_dir.as_deref(),
                sources.etcd.as_ref(),
                sources.replica_id.as_deref(),
            ) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            match server::run(parsed, sources, base, hash, upgrade, admin_insecure, store) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Apply {
            etcd,
            change: ChangeArgs { file, prune },
            allow_empty,
        } => etcd_command(&etcd, |opts| async move {
            let text = read(&file)?;
            if prune && !allow_empty && declares_nothing(&text) {
                return Err(format!(
                    "{}: no routes and no upstreams; with --prune this would delete everything under {}. \
                     Add --allow-empty if that is what you want",
                    file.display(),
                    opts.prefix
                ));
            }
            let s = etcd::apply(&opts, &text, prune, &*validate::route_check())
                .await
                .map_err(|e| e.to_string())?;
            for k in &s.created {
                println!("created {k}");
            }
            for k in &s.updated {
                println!("updated {k}");
            }
            for k in &s.deleted {
                println!("deleted {k}");
            }
            match s.revision {
                Some(rev) => println!("applied at revision {rev}; {} unchanged", s.unchanged),
                None => println!("nothing to change; {} unchanged", s.unchanged),
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Rollout {
            action,
            route,
            admin,
            admin_token,
        } => {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return fail(e),
            };
            match rt.block_on(sluice_gateway::rollout::cli::run(
                &admin,
                admin_token.as_deref(),
                &action,
                route.as_deref(),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Cache {
            action: _,
            key,
            prefix,
            admin,
            admin_token,
        } => {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return fail(e),
            };
            match rt.block_on(sluice_gateway::cli::cache::purge(
                &admin,
                admin_token.as_deref(),
                key.as_deref(),
                prefix.as_deref(),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::HashPassword { bcrypt } => {
            let mut line = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut line) {
                return fail(e);
            }
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                return fail("no password on stdin");
            }
            match sluice_filters::auth::basic_auth::hash_password(password, bcrypt) {
                Ok(h) => {
                    println!("{h}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Get {
            etcd,
            show_credentials,
        } => etcd_command(&etcd, |opts| async move {
            print!(
                "{}",
                etcd::get_with(&opts, show_credentials)
                    .await
                    .map_err(|e| e.to_string())?
            );
            Ok(ExitCode::SUCCESS)
        }),
        Command::Diff {
            etcd,
            change: ChangeArgs { file, prune },
        } => etcd_command(&etcd, |opts| async move {
            let text = read(&file)?;
            let changes = etcd::diff(&opts, &text, prune, &*validate::route_check())
                .await
                .map_err(|e| e.to_string())?;
            for c in &changes {
                let verb = match c.kind {
                    ChangeKind::Create => "create",
                    ChangeKind::Update => "update",
                    ChangeKind::Delete => "delete",
                };
                println!("{verb} {}", c.key);
                print!("{}", c.diff);
            }
            Ok(if changes.is_empty() {
                println!("no changes");
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }),
    }
}

/// Whether a document has no routes and no upstreams (an unparsable one is left to
/// `apply` to report).
fn declares_nothing(text: &str) -> bool {
    let Ok(doc) = sluice_config::validate::parse_value(text) else {
        return false;
    };
    let empty = |k: &str| doc.get(k).and_then(|v| v.as_array()).is_none_or(Vec::is_empty);
    empty("routes") && empty("upstreams") && empty("consumers")
}

fn read(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs `f` with the etcd options on a small runtime, printing its error.
fn etcd_command<F, Fut>(args: &EtcdArgs, f: F) -> ExitCode
where
    F: FnOnce(EtcdOptions) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, String>>,
{
    let opts = match args.required() {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    match rt.block_on(f(opts)) {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

fn validate_file(path: &std::path::Path) -> ExitCode {
    let result = file::load(path)
        .and_then(|(base, _)| compose(base, "", None))
        .and_then(|c| validate::check(&c).map(|()| c));
    match result {
        Ok(c) => {
            println!(
                "{}: valid ({} listeners, {} upstreams, {} routes)",
                path.display(),
                c.listeners.len(),
                c.upstreams.len(),
                c.routes.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            ExitCode::from(1)
        }
    }
}

/// Logs go to stderr, in colour only when stderr is a terminal and `NO_COLOR` is unset
/// or empty (<https://no-color.org>).
fn init_tracing() {
    use std::io::IsTerminal;
    // Pingora's debug logs print whole request headers and bodies (credentials
    // included): they stay off under a plain `SLUICE_LOG=debug` and need naming
    // (`SLUICE_LOG=debug,pingora_proxy=debug`).
    let directives = std::env::var("SLUICE_LOG").unwrap_or_else(|_| "info".into());
    let directives = if directives.contains("pingora") {
        directives
    } else {
        format!("{directives},pingora_proxy=info,pingora_core=info")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_writer(sluice_gateway::observe::logging::writer())
        .try_init();
}
