//! The shared store (`store.kind = "redis"`): the policy state in Redis 7.0 or later, so that
//! several gateways share one licence cap, one failure count per account, and every lock, kick
//! and unlock.
//!
//! Every decision is one atomic step on the server: a function of the library in
//! `policy.lua` (loaded with `FUNCTION LOAD REPLACE` at connect; its name, `faspex_gate_v2`,
//! carries its version), mirroring the Rust rules in [`crate::policy`]. The files:
//!
//! - `policy.lua`: the library, and the layout of the keys under `{key_prefix}:`;
//! - `conn.rs`: [`RedisOptions`] (one master in `urls`, or Sentinel), finding the master (asking
//!   the sentinels, checking `ROLE`) and checking each new one, one call of a function and its
//!   failure rules (nothing re-sent, the connection forgotten and the master found again after
//!   a failover, `NOSCRIPT` reloads, `WAIT`);
//! - `memory.rs`: the locks and unlocks this gateway has seen, written back after a failover or
//!   a Redis that came back empty (a lock older than its account's last unlock never is);
//! - `wire.rs`: the functions' JSON answers read into the store's types;
//! - `store.rs`: [`RedisStore`], the [`crate::store::PolicyStore`] over them;
//! - `cache.rs`: the per-gateway view of sessions (`session_cache`, `outage_grace`);
//! - `outbox.rs`: the owed Faspex logouts' stream;
//! - `server.rs`, `sentinel.rs` (test builds): a real `redis-server`, and a master with two
//!   replicas and three sentinels, for the tests; `tests.rs` and `failover.rs` use them.

mod cache;
pub mod conn;
mod memory;
pub mod outbox;
#[cfg(any(test, feature = "test-support"))]
pub mod sentinel;
#[cfg(any(test, feature = "test-support"))]
pub mod server;
pub mod store;
mod wire;

#[cfg(test)]
mod failover;
#[cfg(test)]
mod tests;

pub use conn::{RedisOptions, Target, Time};
pub use store::{fingerprint, ErrorHook, RedisStore, WaitHook};
pub use wire::Restored;
