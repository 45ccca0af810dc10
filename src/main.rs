//! The `faspex-gate` binary: parse the command line and hand over to the library.
#![forbid(unsafe_code)]

use clap::Parser;

// mimalloc: the proxy allocates and frees small buffers and header maps on every request, across
// threads; glibc's allocator spent about 5 % of a small request's CPU on them (see
// benches/versus.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    faspex_gate::cli::run(faspex_gate::cli::Cli::parse())
}
