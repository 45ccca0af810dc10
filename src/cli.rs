//! The command line: `run`, `demo`, `check-config` and `hash-password`, with the contract's exit
//! codes (0 done, 1 failed, 2 usage or configuration error).

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, ConfigError};

#[derive(Debug, Parser)]
#[command(
    name = "faspex-gate",
    version,
    about = "A policy-enforcing authentication gateway for IBM Aspera Faspex"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve.
    Run {
        /// The configuration file [default: $FASPEX_GATE_CONFIG, else /etc/faspex-gate/faspex-gate.toml]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// A self-contained demo: a self-signed certificate, the built-in Faspex 4 emulator and demo users.
    Demo {
        /// Where the demo's HTTPS listener listens.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Where the demo's admin listener listens.
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin_listen: SocketAddr,
    },
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Read one password line on stdin and print an argon2id hash for the `file` backend.
    HashPassword,
}

/// Exit code 2: usage or configuration error.
pub const EXIT_CONFIG: u8 = 2;

/// Run the parsed command; the binary's `main` is just this.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::CheckConfig { config } => {
            let path = config.unwrap_or_else(config::default_path);
            match Config::load(&path) {
                Ok(cfg) => {
                    print!("{}", cfg.redacted());
                    ExitCode::SUCCESS
                }
                Err(e) => config_failure(&e),
            }
        }
        Command::HashPassword => match read_password_line() {
            Ok(pw) if pw.is_empty() => {
                eprintln!("faspex-gate: refusing to hash an empty password");
                ExitCode::from(1)
            }
            Ok(pw) => match crate::auth::password::hash(&pw) {
                Ok(h) => {
                    println!("{h}");
                    ExitCode::SUCCESS
                }
                Err(e) => failure(&e),
            },
            Err(e) => failure(&e),
        },
        Command::Run { config } => {
            init_tracing();
            let path = config.unwrap_or_else(config::default_path);
            let cfg = match Config::load(&path) {
                Ok(cfg) => cfg,
                Err(e) => return config_failure(&e),
            };
            match runtime().and_then(|rt| rt.block_on(crate::app::serve(cfg))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failure(&e),
            }
        }
        Command::Demo {
            listen,
            admin_listen,
        } => {
            init_tracing();
            match runtime().and_then(|rt| rt.block_on(crate::demo::run(listen, admin_listen))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => match e.downcast_ref::<ConfigError>() {
                    Some(ce) => config_failure(ce),
                    None => failure(&e),
                },
            }
        }
    }
}

fn read_password_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let pw = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    Ok(pw.to_owned())
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("faspex-gate: configuration error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn failure(e: &anyhow::Error) -> ExitCode {
    eprintln!("faspex-gate: {e:#}");
    ExitCode::from(1)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Human-readable logs on stderr; `RUST_LOG` picks the level (default `info`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
