//! The `faspex-gate` binary: parse the command line and hand over to the library.
#![forbid(unsafe_code)]

use clap::Parser;

// The system allocator on purpose: mimalloc saved a few per cent of a small request's CPU, but
// kept 24 MiB more at start and let a streaming gateway's peak RSS grow with the worker count
// (38 -> 78 MiB for 1 -> 8 workers, against a flat 30 MiB here), and flat memory is the promise.

fn main() -> std::process::ExitCode {
    faspex_gate::cli::run(faspex_gate::cli::Cli::parse())
}
