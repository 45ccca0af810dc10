//! Licence seats: at most `policy.max_sessions` accounts hold a session at once.
//!
//! An account with at least one live session holds one seat, however many clients it has. A login
//! of an account that holds a seat already never needs a new one; any other login takes a free
//! seat or is refused as licence full, and is told when the soonest session would end. Sessions
//! past their deadline ([`super::timeouts`]) hold no seat: before refusing, they are ended ([`decide_after_ending`]).
//!
//! The rule is these functions. The embedded store's admission ([`crate::store::tables`]) calls
//! [`decide_after_ending`] inside its one atomic step, so the cap is exact however many logins
//! arrive at once. The Redis store's library (`src/store/redis/policy.lua`) mirrors it in `faspex_gate_v2_admit`,
//! exactly, and the one place where it must agree is the store conformance suite,
//! `src/store/conformance.rs` (its `seats_*` checks).

use std::time::Duration;

use crate::clock::Timestamp;
use crate::store::{Session, Timeouts};

/// Whether a login may have a seat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seat {
    /// The account holds one already.
    Held,
    /// A seat is free: the login takes it.
    Free,
    /// Every seat is taken.
    Full,
}

/// The seat for a login of an account that `holds_seat` (or not), with `in_use` seats held by live
/// sessions and the cap `max_sessions`.
pub fn decide(holds_seat: bool, in_use: usize, max_sessions: u32) -> Seat {
    if holds_seat {
        Seat::Held
    } else if in_use >= max_sessions as usize {
        Seat::Full
    } else {
        Seat::Free
    }
}

/// [`decide`] for a login that would otherwise be refused as licence full: sessions past their
/// deadline still hold seats until they are ended, so `end_expired` ends them (and says how many
/// seats are then in use), and the login is decided again. `in_use` is the seats in use before.
pub fn decide_after_ending(
    holds_seat: bool,
    in_use: usize,
    max_sessions: u32,
    end_expired: impl FnOnce() -> usize,
) -> Seat {
    match decide(holds_seat, in_use, max_sessions) {
        Seat::Full => decide(holds_seat, end_expired(), max_sessions),
        seat => seat,
    }
}

/// When the soonest of `sessions` ends without activity: what a refused login is told.
pub fn soonest_end<'a>(
    sessions: impl IntoIterator<Item = &'a Session>,
    t: &Timeouts,
) -> Option<Timestamp> {
    sessions
        .into_iter()
        .map(|s| super::timeouts::deadline(s, t).0)
        .min()
}

/// The `Retry-After` of a licence-full refusal at `now`: until the soonest session ends, between
/// 5 seconds and 15 minutes, or a minute when there is no session to wait for.
pub fn retry_after(soonest_end: Option<Timestamp>, now: Timestamp) -> Duration {
    soonest_end
        .map(|t| {
            t.since(now)
                .clamp(Duration::from_secs(5), Duration::from_secs(900))
        })
        .unwrap_or(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_seat_is_kept_and_the_cap_is_exact() {
        assert_eq!(decide(true, 10, 10), Seat::Held);
        assert_eq!(decide(false, 9, 10), Seat::Free);
        assert_eq!(decide(false, 10, 10), Seat::Full);
        assert_eq!(decide(false, 0, 0), Seat::Full);
    }

    #[test]
    fn expired_sessions_are_ended_only_before_a_refusal() {
        let never = || -> usize { panic!("ended sessions while a seat was free") };
        assert_eq!(decide_after_ending(false, 9, 10, never), Seat::Free);
        assert_eq!(decide_after_ending(true, 10, 10, never), Seat::Held);
        assert_eq!(decide_after_ending(false, 10, 10, || 9), Seat::Free);
        assert_eq!(decide_after_ending(false, 10, 10, || 10), Seat::Full);
    }

    #[test]
    fn licence_full_retry_after_is_bounded() {
        let now = Timestamp::from_millis(1_000_000);
        assert_eq!(retry_after(None, now), Duration::from_secs(60));
        assert_eq!(retry_after(Some(now), now), Duration::from_secs(5));
        let later = now + Duration::from_secs(120);
        assert_eq!(retry_after(Some(later), now), Duration::from_secs(120));
        let much_later = now + Duration::from_secs(3600);
        assert_eq!(retry_after(Some(much_later), now), Duration::from_secs(900));
    }
}
