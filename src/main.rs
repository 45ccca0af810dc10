//! The `faspex-gate` binary: parse the command line and hand over to the library.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    faspex_gate::cli::run(faspex_gate::cli::Cli::parse())
}
