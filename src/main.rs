//! The `switchyard` binary: command line, server assembly and live reload.
//!
//! This is the composition root, the only crate that sees all the others:
//! it loads the config (`switchyard-config`), compiles snapshots for the
//! proxy (`switchyard-proxy`), runs them on a pingora server and keeps them
//! current as the config file changes. Start at [`main`], then `server.rs`
//! and `reload.rs`.

mod assets;
mod control;
mod ctl;
mod demo;
mod logging;
mod reload;
mod rollout;
mod server;
mod tls_log;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use switchyard_config::{Config, LoadError};

/// mimalloc keeps per-thread free lists and returns memory in small pages:
/// fewer cycles per request and less memory per idle connection than the
/// system allocator.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Edge reverse proxy for blue/green and canary deployments.
#[derive(Parser, Debug)]
#[command(name = "switchyard", version, about)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve traffic as the config file says, reloading it when it changes.
    Run {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Take over the listening sockets of the running instance (zero-
        /// downtime upgrade): start this, then send the old one SIGQUIT.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate config files; print every problem and exit non-zero if any.
    Check {
        /// The TOML config files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Talk to a running instance's admin API.
    Ctl(Box<ctl::CtlArgs>),
    /// Start the proxy with two demo upstreams (blue and green) at 90/10.
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
}

/// How log lines are written.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { files } => check(&files),
        Command::Ctl(args) => ctl::run(*args),
        Command::Run { config, upgrade } => {
            logging::init(cli.log_format);
            run(config, upgrade)
        }
        Command::Demo { listen } => {
            logging::init(cli.log_format);
            match demo::prepare(listen) {
                Ok(config) => run(config, false),
                Err(e) => {
                    eprintln!("switchyard demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for file in files {
        match Config::load(file) {
            Ok(_) => println!("{}: ok", file.display()),
            Err(LoadError::Invalid(diags)) => {
                ok = false;
                for d in &diags.0 {
                    eprintln!("{d}");
                }
            }
            Err(e) => {
                ok = false;
                eprintln!("{}", error_chain(&e));
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(config_path: PathBuf, upgrade: bool) -> ExitCode {
    let (config, text) = match Config::load_with_text(&config_path) {
        Ok(loaded) => loaded,
        Err(LoadError::Invalid(diags)) => {
            for d in &diags.0 {
                tracing::error!("{d}");
            }
            tracing::error!(
                problems = diags.0.len(),
                "not starting: the config file is invalid"
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            tracing::error!("not starting: {}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    match server::run(config_path, config, text, upgrade) {
        Ok(never) => match never {},
        Err(e) => {
            tracing::error!("not starting: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, outermost first.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
