//! The shared store (`store.kind = "redis"`): the policy state in Redis 7.0 or later, so that
//! several gateways share one licence cap, one failure count per account, and every lock, kick
//! and unlock.
//!
//! Every decision is one atomic step on the server: a function of the library in
//! `policy.lua` (loaded with `FUNCTION LOAD REPLACE` at connect; its name, `faspex_gate_v1`,
//! carries its version), mirroring the Rust rules in [`crate::policy`]. The files:
//!
//! - `policy.lua`: the library, and the layout of the keys under `{key_prefix}:`;
//! - `conn.rs`: [`RedisOptions`], the connection to the master, the checks at connect, one call
//!   of a function and its failure rules (nothing re-sent, `NOSCRIPT` reloads, `WAIT`);
//! - `wire.rs`: the functions' JSON answers read into the store's types;
//! - `store.rs`: [`RedisStore`], the [`crate::store::PolicyStore`] over them;
//! - `server.rs` (test builds): a real `redis-server` for the tests.
//!
//! Sentinel discovery, the per-gateway session cache, `outage_grace`, re-writing locks after a
//! failover and the wiring into the gateway come in later steps; [`conn`]'s one "find the master"
//! step and the locks' `epoch` field are where they slot in.

mod cache;
pub mod conn;
pub mod outbox;
#[cfg(any(test, feature = "test-support"))]
pub mod server;
pub mod store;
mod wire;

#[cfg(test)]
mod tests;

pub use conn::{RedisOptions, Time};
pub use store::{fingerprint, ErrorHook, RedisStore, WaitHook};
