//! The command line: `run`, `demo`, `check-config`, `hash-password`, `admin`, `migrate-store`
//! and `completions` (and the hidden `man`), with the contract's exit codes (0 done, 1 failed, 2
//! usage or configuration error, and for `admin` 3 the gateway could not be reached).

pub mod manual;

use std::io::{BufRead, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

use crate::clock::TimeSource;
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
    /// Serve: the gateway itself, as the systemd unit runs it.
    Run {
        /// The configuration file [default: $FASPEX_GATE_CONFIG, else /etc/faspex-gate/faspex-gate.toml]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// FOR TESTS ONLY: run on a manual clock that stands still until `POST /admin/v1/clock`
        /// moves it. Only builds with the `test-support` cargo feature accept it.
        #[arg(long, hide = !MANUAL_CLOCK_BUILT_IN)]
        manual_clock: bool,
    },
    /// A self-contained demo: a self-signed certificate, the built-in Faspex 4 emulator and demo users.
    Demo {
        /// Where the demo's HTTPS listener listens.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Where the demo's admin listener listens.
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin_listen: SocketAddr,
        /// Two gateways on one Redis (started from `redis-server`, which must be installed):
        /// the second listens one port above each of the first's.
        #[arg(long)]
        ha: bool,
    },
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig {
        /// The configuration file [default: $FASPEX_GATE_CONFIG, else /etc/faspex-gate/faspex-gate.toml]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Read one password line on stdin and print an argon2id hash for the `file` backend.
    HashPassword,
    /// Ask a running gateway: sessions, kick, lockouts, unlock, lock (the helpdesk's command).
    Admin {
        /// The configuration file, for admin.listen and admin.token_file [default:
        /// $FASPEX_GATE_CONFIG, else /etc/faspex-gate/faspex-gate.toml]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The admin listener, e.g. http://127.0.0.1:9180 [default: from admin.listen]
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// The file holding the admin token [default: admin.token_file]
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Print the gateway's JSON answer instead of text.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: AdminCommand,
    },
    /// Copy the embedded store's sessions and locks into the Redis store the configuration
    /// names (store.kind = "redis"), with no gateway running on the embedded store. Safe to run
    /// again.
    MigrateStore {
        /// The configuration file, naming the Redis store [default: $FASPEX_GATE_CONFIG, else
        /// /etc/faspex-gate/faspex-gate.toml]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The embedded store's folder [default: store.path]
        #[arg(long, value_name = "PATH")]
        from: Option<PathBuf>,
    },
    /// Print the shell completion script for bash, zsh or fish (the Debian package installs
    /// all three).
    Completions {
        #[arg(value_enum)]
        shell: manual::Shell,
    },
    /// Print the manual page faspex-gate(1), in roff (the package build installs it).
    #[command(hide = true)]
    Man,
}

/// `faspex-gate admin …`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Seats used and the limit, live sessions, accounts locked.
    Status,
    /// Live sessions: user, client (IP and agent), kind, started, last activity.
    Sessions,
    /// End USER's sessions now, freeing the seat and logging the Faspex session out.
    Kick { user: String },
    /// Locked accounts: locked since, unlocks at, failures.
    Lockouts,
    /// Lift USER's lockout and clear its failed-login count; says whether USER was locked.
    Unlock { user: String },
    /// Lock USER now (live sessions go on: use kick too).
    Lock {
        user: String,
        /// How long, e.g. 30m, 1h, 2d [default: policy.lockout_duration]
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
    },
}

/// Exit code 2: usage or configuration error.
pub const EXIT_CONFIG: u8 = 2;

/// Whether this binary can run on a manual clock (`run --manual-clock`): test builds only.
const MANUAL_CLOCK_BUILT_IN: bool = cfg!(feature = "test-support");

/// What a binary without the `test-support` feature says to `run --manual-clock`.
pub const MANUAL_CLOCK_REFUSED: &str = "--manual-clock is for tests only, and this binary was \
     built without them (cargo feature test-support); a gateway in service runs on the wall clock";

/// The clock `run` serves on: the wall's, or with `--manual-clock` (in a build that has it) a
/// manual one. `built_in` is [`MANUAL_CLOCK_BUILT_IN`], a parameter so that the refusal is tested
/// in the builds that have the option.
fn time_source(manual_clock: bool, built_in: bool) -> Result<TimeSource, &'static str> {
    if !manual_clock {
        return Ok(TimeSource::Wall);
    }
    if !built_in {
        return Err(MANUAL_CLOCK_REFUSED);
    }
    #[cfg(feature = "test-support")]
    return Ok(TimeSource::manual());
    #[cfg(not(feature = "test-support"))]
    Err(MANUAL_CLOCK_REFUSED)
}

/// Run the parsed command; the binary's `main` is just this.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::CheckConfig { config } => {
            let path = config.unwrap_or_else(config::default_path);
            // What `run` would read besides: the users file and the certificates.
            match Config::load(&path).and_then(|cfg| crate::app::Loaded::load(&cfg).map(|_| cfg)) {
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
        Command::Run {
            config,
            manual_clock,
        } => {
            let time = match time_source(manual_clock, MANUAL_CLOCK_BUILT_IN) {
                Ok(t) => t,
                Err(why) => {
                    eprintln!("faspex-gate: {why}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let path = config.unwrap_or_else(config::default_path);
            let cfg = match Config::load(&path) {
                Ok(cfg) => cfg,
                Err(e) => return config_failure(&e),
            };
            crate::log::init(cfg.log.format);
            if manual_clock {
                tracing::warn!(
                    "running on a manual clock, moved by POST /admin/v1/clock: for tests only"
                );
            }
            match runtime(cfg.server.workers)
                .and_then(|rt| rt.block_on(crate::app::serve(cfg, time)))
            {
                Ok(()) => ExitCode::SUCCESS,
                // (a file the configuration names, read when the app is built)
                Err(e) => match e.downcast_ref::<ConfigError>() {
                    Some(ce) => config_failure(ce),
                    None => failure(&e),
                },
            }
        }
        Command::Admin {
            config,
            url,
            token_file,
            json,
            action,
        } => admin(
            config.as_deref(),
            url.as_deref(),
            token_file.as_deref(),
            json,
            action,
        ),
        Command::Demo {
            listen,
            admin_listen,
            ha,
        } => demo(listen, admin_listen, ha),
        Command::MigrateStore { config, from } => migrate_store(config, from),
        Command::Completions { shell } => print(&manual::completions(&Cli::command(), shell)),
        Command::Man => match manual::man_page(&Cli::command()) {
            Ok(page) => print(&page),
            Err(e) => failure(&e.into()),
        },
    }
}

/// Write generated text to standard output; a closed or full stdout is exit 1, not a panic.
fn print(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faspex-gate: cannot write to standard output: {e}");
            ExitCode::from(1)
        }
    }
}

/// `faspex-gate migrate-store`: prints what it copied and what it skipped.
fn migrate_store(config: Option<PathBuf>, from: Option<PathBuf>) -> ExitCode {
    use crate::clock::Clock as _;
    let path = config.unwrap_or_else(config::default_path);
    let cfg = match Config::load(&path) {
        Ok(cfg) => cfg,
        Err(e) => return config_failure(&e),
    };
    let now = crate::clock::SystemClock.now();
    let copied = runtime(1)
        .and_then(|rt| rt.block_on(crate::store::migrate::run(&cfg, from.as_deref(), now)));
    match copied {
        Ok(report) => {
            print!("{}", report.render());
            ExitCode::SUCCESS
        }
        Err(e) => match e.downcast_ref::<ConfigError>() {
            Some(ce) => config_failure(ce),
            None => failure(&e),
        },
    }
}

/// `faspex-gate demo`, in a build with the Faspex emulator (the default).
#[cfg(feature = "emulator")]
fn demo(listen: SocketAddr, admin_listen: SocketAddr, ha: bool) -> ExitCode {
    let redis = if ha {
        match crate::demo::redis_server() {
            Some(p) => Some(p),
            None => {
                eprintln!("{}", crate::demo::NO_REDIS_SERVER);
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    } else {
        None
    };
    crate::log::init(config::LogFormat::Text);
    let served = runtime(0).and_then(|rt| {
        rt.block_on(async {
            match redis {
                Some(program) => crate::demo::run_ha(listen, admin_listen, &program).await,
                None => crate::demo::run(listen, admin_listen).await,
            }
        })
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<ConfigError>() {
            Some(ce) => config_failure(ce),
            None => failure(&e),
        },
    }
}

/// `faspex-gate demo` in a build without the Faspex emulator (`--no-default-features`, as a
/// package is built): the subcommand stays, so that its help is the same everywhere, and says why
/// it cannot run. Exit 2, a usage error: nothing was started.
#[cfg(not(feature = "emulator"))]
fn demo(_listen: SocketAddr, _admin_listen: SocketAddr, _ha: bool) -> ExitCode {
    eprintln!("{DEMO_LEFT_OUT}");
    ExitCode::from(EXIT_CONFIG)
}

/// What `faspex-gate demo` says in a build without the Faspex emulator.
#[cfg(not(feature = "emulator"))]
pub const DEMO_LEFT_OUT: &str = "faspex-gate: this build left out the demo's Faspex emulator \
(it was built with --no-default-features, as for a package); the gateway itself is complete. \
For the demo, build with the emulator: cargo build --release --features emulator, \
or from a checkout: cargo run --release -- demo";

fn admin(
    config: Option<&std::path::Path>,
    url: Option<&str>,
    token_file: Option<&std::path::Path>,
    json: bool,
    action: AdminCommand,
) -> ExitCode {
    use crate::admin::client::{self, Action};
    let action = match action {
        AdminCommand::Status => Action::Status,
        AdminCommand::Sessions => Action::Sessions,
        AdminCommand::Kick { user } => Action::Kick(user),
        AdminCommand::Lockouts => Action::Lockouts,
        AdminCommand::Unlock { user } => Action::Unlock(user),
        AdminCommand::Lock { user, duration } => Action::Lock { user, duration },
    };
    let answer = client::target(config, url, token_file).and_then(|target| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| client::Failure {
                code: 1,
                message: format!("cannot start: {e}"),
                body: None,
            })?;
        rt.block_on(client::call(&target, &action))
    });
    match answer {
        Ok(v) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", client::human(&action, &v));
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            if let (true, Some(body)) = (json, &f.body) {
                println!("{}", serde_json::to_string_pretty(body).unwrap_or_default());
            }
            eprintln!("faspex-gate admin: {}", f.message);
            ExitCode::from(f.code)
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

/// The request-handling runtime: `workers` threads, or one per core when 0. One worker is a
/// current-thread runtime: the same single thread without the work-stealing machinery. Each
/// worker writes the log lines held ([`crate::log::parked`]) when it runs out of work, and a
/// task of its own ([`crate::log::flusher`]) those held too long.
fn runtime(workers: usize) -> anyhow::Result<Runtime> {
    let mut b = match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let rt = b.enable_all().on_thread_park(crate::log::parked).build()?;
    rt.spawn(crate::log::flusher());
    Ok(Runtime {
        rt,
        _flush: crate::log::FlushOnDrop,
    })
}

/// A runtime from [`runtime`] that writes the log lines still held once it is gone, however it
/// goes (its last tasks may hold lines as they are dropped; a panic may unwind through it).
struct Runtime {
    rt: tokio::runtime::Runtime,
    /// (dropped after `rt`: fields drop in the order they are declared)
    _flush: crate::log::FlushOnDrop,
}

impl Runtime {
    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.rt.block_on(future)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_without_test_support_refuses_the_manual_clock() {
        assert_eq!(
            time_source(true, false).err(),
            Some(MANUAL_CLOCK_REFUSED),
            "refused, with the reason"
        );
        assert!(
            MANUAL_CLOCK_REFUSED.contains("--manual-clock")
                && MANUAL_CLOCK_REFUSED.contains("test-support")
        );
        assert!(matches!(time_source(false, false), Ok(TimeSource::Wall)));
        assert!(matches!(time_source(false, true), Ok(TimeSource::Wall)));
    }

    #[cfg(feature = "test-support")]
    #[test]
    fn a_test_build_starts_the_manual_clock_at_the_walls_time() {
        use crate::clock::Clock as _;
        let wall = crate::clock::SystemClock.now();
        let Ok(TimeSource::Manual(c)) = time_source(true, true) else {
            panic!("a manual clock");
        };
        assert!(c.now() >= wall && c.now().since(wall) < std::time::Duration::from_secs(60));
    }

    #[test]
    fn run_takes_the_manual_clock_flag() {
        let cli = Cli::try_parse_from(["faspex-gate", "run", "--manual-clock"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Run {
                manual_clock: true,
                ..
            }
        ));
    }
}
