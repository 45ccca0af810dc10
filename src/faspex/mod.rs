//! Faspex knowledge: the emulator; the route profile comes later.
//!
//! [`emulator`] is an in-crate Faspex 4 upstream. `faspex-gate demo` runs it behind the gateway, and
//! the integration tests start it on a loopback port so that every policy can be watched against
//! something that answers the way Faspex 4 does.

pub mod emulator;
