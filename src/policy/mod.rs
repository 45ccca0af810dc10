//! The policy engine: the site's four Faspex policies, independent of HTTP and LDAP.
//!
//! Each policy is a file named after it, holding its rule as code; the store applies the rule
//! inside each atomic step and decides nothing itself:
//!
//! - **Licence seats** ([`seats`]): at most `policy.max_sessions` accounts hold a session at once.
//! - **One client per account** ([`one_client`]): a second client is refused (`reject`) or
//!   replaces the first (`replace`); [`LoginRequest::takeover`] is the 409 page's "sign the other
//!   client out".
//! - **Idle and absolute timeouts** ([`timeouts`]): every request on a session checks its
//!   deadline; the [`Policy::spawn_sweeper`] task ends sessions within [`SWEEP_EVERY`] of their
//!   deadline with no traffic at all, so seats and gauges are always right.
//! - **Lockout** ([`lockout`]): `lockout_threshold` wrong-credential attempts in the sliding
//!   `lockout_window` lock the account for `lockout_duration`. However many guesses arrive at
//!   once, at most `lockout_threshold` reach the directory per window. A locked account's guesses
//!   never reach a bind (with search-then-bind, a spelling not looked up lately costs one search
//!   first: see `resolve.rs`).
//! - **Throttles** ([`throttle`]): per-address login and public-path rates, and the global
//!   ceiling on credential checks.
//!
//! The engine around them, [`Policy`] (`engine.rs`), is split by what it does: the login pipeline
//! (`login.rs`: validate the name → find the account it counts as, `resolve.rs` → single-flight
//! → per-address throttle → lockout reservation, `attempts.rs` → the global ceiling → credential
//! check → record the result → admission), the login that waits for Faspex's word
//! ([`PendingLogin`], `pending.rs`), session lookups and the sweeper (`sessions.rs`), and
//! administration (`admin.rs`). Its vocabulary is in `types.rs`; what it reports, in `events.rs`.
//! Everything takes `now` from the injected [`crate::clock::Clock`]. Events go to an
//! [`Observer`]: the log ([`LogObserver`]), and, as the app wires them, metrics and the audit log.

pub use crate::account;
pub mod lockout;
pub mod names;
pub mod one_client;
pub mod seats;
pub mod singleflight;
pub mod throttle;
pub mod timeouts;

mod admin;
mod attempts;
mod engine;
mod events;
mod login;
mod pending;
mod resolve;
mod sessions;
mod types;

#[cfg(test)]
mod tests;

pub use account::{normalize, InvalidUsername};
pub use admin::AdminError;
pub use engine::{Policy, CHECK_TIMEOUT, SWEEP_EVERY};
pub use events::{DirectoryResult, LogObserver, Observer, Observers, PolicyEvent};
pub use pending::PendingLogin;
pub use types::{
    Admitted, CheckRules, Diagnosis, LoginRefused, LoginRequest, LoginResult, Rechecked,
    SessionGone, Status, Verified,
};
