//! Faspex knowledge: how Faspex (a Rails application) reads a request.
//!
//! [`rack`] reads a request's parameters the way Rack and Rails do, in the widest reading any
//! version gives; the gateway's credential gate ([`crate::proxy::gate`]) asks it what Faspex would
//! see. (The Faspex 4 emulator that `faspex-gate demo` and the integration tests run as the
//! upstream is a crate of its own, `faspex-emulator`.)

pub mod rack;
