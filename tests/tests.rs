//! The one integration-test binary: every module below runs the real `faspex-gate` binary against
//! real sockets, real TLS and real peers.

mod util;

mod cli;
mod demo;
mod proxy;
mod state;
