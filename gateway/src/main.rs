//! `sluice`: the gateway binary.
//!
//! `sluice run --config FILE` serves a config; `sluice validate --config FILE` checks one
//! and prints every error with its field path.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_config::Config;

use sluice_gateway::{echo, server};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Sluice, an API gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a config.
    Run {
        /// Config file (YAML or JSON). SIGHUP re-reads it.
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Take the listening sockets over from a running sluice (graceful upgrade): start
        /// the new process with this flag, then send SIGQUIT to the old one.
        #[arg(long)]
        upgrade: bool,
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
    /// Check a config; print every error with its field path and exit non-zero on any.
    Validate {
        /// Config file (YAML or JSON).
        #[arg(short, long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Echo { listen, name } => match echo::run(listen, name) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice echo: {e}");
                ExitCode::from(1)
            }
        },
        Command::Validate { config } => match Config::from_file(&config) {
            Ok(c) => {
                println!(
                    "{}: valid ({} listeners, {} upstreams, {} routes)",
                    config.display(),
                    c.listeners.len(),
                    c.upstreams.len(),
                    c.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{}: {} error(s)", config.display(), errors.0.len());
                for e in &errors.0 {
                    eprintln!("  {e}");
                }
                ExitCode::from(1)
            }
        },
        Command::Run { config, upgrade } => {
            init_tracing();
            let parsed = match Config::from_file(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{}: invalid config:\n{errors}", config.display());
                    return ExitCode::from(1);
                }
            };
            match server::run(parsed, config, upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sluice: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
