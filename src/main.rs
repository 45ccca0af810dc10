//! The `faspex-gate` binary: parse the command line and hand over to the library.
#![forbid(unsafe_code)]

use clap::Parser;

// jemalloc: glibc's malloc was an eighth of a small request's instructions (a TLS record's
// buffer per response takes its slow path), and jemalloc takes 4 % off the whole (96.5k -> 92.3k
// instructions, benches/instructions.sh). mimalloc was tried first and dropped: it kept 24 MiB
// more at start and let a streaming gateway's peak RSS grow with the worker count (38 -> 78 MiB
// for 1 -> 8 workers); with jemalloc the same 2 GiB stream peaks at 32 MiB with 8 workers.
// Its options (a larger thread cache) are built in from .cargo/config.toml.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    faspex_gate::cli::run(faspex_gate::cli::Cli::parse())
}
