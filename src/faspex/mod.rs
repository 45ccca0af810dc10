//! Faspex knowledge: how Faspex (a Rails application) reads a request, and the emulator.
//!
//! [`rack`] reads a request's parameters the way Rack and Rails do, in the widest reading any
//! version gives; the gateway's credential gate ([`crate::proxy::gate`]) asks it what Faspex would
//! see. [`emulator`] is an in-crate Faspex 4 upstream. `faspex-gate demo` runs it behind the
//! gateway, and the integration tests start it on a loopback port so that every policy can be
//! watched against something that answers the way Faspex 4 does.

pub mod emulator;
pub mod rack;
