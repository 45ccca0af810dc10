//! The one integration-test binary: every module below runs the real `faspex-gate` binary against
//! real sockets, real TLS and real peers.

mod engine;
mod slapd;
mod util;

mod browser;
mod bypass;
mod cli;
mod demo;
mod docs;
mod flows;
mod h2stall;
mod ha;
mod helpdesk;
mod holding;
mod layers;
mod ldap;
mod limits;
mod local;
mod names;
mod ops;
mod proxy;
mod rails;
mod state;
