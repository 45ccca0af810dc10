//! The idle and absolute timeouts: when a session ends without activity, and why.
//!
//! A browser session ends `policy.idle_timeout` after its last activity, an API session (HTTP
//! Basic or a bearer token) `policy.api_idle_timeout` after it, and any session
//! `policy.absolute_timeout` after it began, whichever comes first. A deadline is reached at
//! exactly its instant: a request at `last_activity + idle` finds the session ended.
//!
//! A session a login admits begins then, both clocks: a login from the client whose session it
//! renews starts the absolute timeout afresh too, as a new login would ([`begins`]).
//!
//! The rule is these functions. The embedded store ([`crate::store::tables`]) calls them inside
//! each atomic step (every session lookup, admission and sweep); the engine uses them to list live
//! sessions. The Redis store's library (`src/store/redis/policy.lua`) mirrors it in the lookups
//! (`faspex_gate_v2_session`, `_client_session`, `_bearer_session`), `_admit` and `_sweep`,
//! exactly, and the one place where it must agree is the store conformance suite,
//! `src/store/conformance.rs` (its `idle_*` and `absolute_*` checks).

use crate::clock::Timestamp;
use crate::store::{ClientKind, EndReason, Session, Timeouts};

/// How long `kind`'s sessions may go without activity.
pub fn idle_limit(kind: ClientKind, t: &Timeouts) -> std::time::Duration {
    match kind {
        ClientKind::Browser => t.idle,
        ClientKind::Basic | ClientKind::Bearer => t.api_idle,
    }
}

/// When `s` ends unless there is activity first, and why it would: the idle deadline, or the
/// absolute one when that comes first (or at the same instant).
pub fn deadline(s: &Session, t: &Timeouts) -> (Timestamp, EndReason) {
    let idle_end = s.last_activity + idle_limit(s.kind, t);
    match t.absolute {
        Some(abs) if s.started + abs <= idle_end => (s.started + abs, EndReason::Absolute),
        _ => (idle_end, EndReason::Idle),
    }
}

/// `Some(reason)` when `s` has ended by `now`: a deadline is reached at exactly it.
pub fn expired(s: &Session, now: Timestamp, t: &Timeouts) -> Option<EndReason> {
    let (at, why) = deadline(s, t);
    (now >= at).then_some(why)
}

/// When a session a login admits at `now` begins, and when it was last active: both now, also
/// when it renews the client's session (one client, [`super::one_client`]): the renewed
/// session's start is not kept, the absolute timeout counts from the login that checked the
/// password.
pub fn begins(now: Timestamp) -> (Timestamp, Timestamp) {
    (now, now)
}

/// Whether a request at `now` moves `s`'s last activity (time never runs back).
pub fn touches(s: &Session, now: Timestamp) -> bool {
    now > s.last_activity
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{AccountKind, ClientId, SessionKey};

    const HOUR: Duration = Duration::from_secs(3600);

    fn session(kind: ClientKind, started: Timestamp, last: Timestamp) -> Session {
        Session {
            key: SessionKey("k".into()),
            account: "ann".into(),
            client: ClientId("c".into()),
            kind,
            ip: "192.0.2.1".parse().unwrap(),
            agent: "test".into(),
            started,
            last_activity: last,
            upstream_cookie: None,
            bearer: Vec::new(),
            account_kind: AccountKind::Directory,
        }
    }

    #[test]
    fn idle_and_absolute_deadlines_are_reached_at_their_instant() {
        let t0 = Timestamp::from_millis(1_000_000);
        let t = Timeouts {
            idle: HOUR,
            api_idle: 2 * HOUR,
            absolute: Some(3 * HOUR),
        };
        let browser = session(ClientKind::Browser, t0, t0);
        assert_eq!(deadline(&browser, &t), (t0 + HOUR, EndReason::Idle));
        assert_eq!(
            expired(&browser, t0 + (HOUR - Duration::from_millis(1)), &t),
            None
        );
        assert_eq!(expired(&browser, t0 + HOUR, &t), Some(EndReason::Idle));
        let api = session(ClientKind::Bearer, t0, t0);
        assert_eq!(deadline(&api, &t).0, t0 + 2 * HOUR);
        // Busy until the absolute limit: it wins, also when both fall on one instant.
        let busy = session(ClientKind::Browser, t0, t0 + 2 * HOUR);
        assert_eq!(deadline(&busy, &t), (t0 + 3 * HOUR, EndReason::Absolute));
        let none = Timeouts {
            absolute: None,
            ..t
        };
        assert_eq!(deadline(&busy, &none), (t0 + 3 * HOUR, EndReason::Idle));
    }
}
