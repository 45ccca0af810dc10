//! Lockout: `policy.lockout_threshold` wrong-credential attempts within the sliding
//! `policy.lockout_window` lock the account (or, with `lockout_key = "account+ip"`, the account
//! from that address) for `policy.lockout_duration`.
//!
//! - A failure counts while it is younger than the window; the window slides with `now`.
//! - Before a credential check runs it reserves a place: failures plus checks in flight never
//!   exceed the threshold, so however many guesses arrive at once, at most `threshold` reach the
//!   directory per window ([`before_check`]).
//! - The failure that reaches the threshold locks the key; the lock carries the count and the
//!   window starts afresh when it lifts ([`after_failure`]).
//! - A right password does not clear the window ([`counts_failure`]).
//! - A check's reservation is presumed dead `ticket_ttl` after it was made, should the check
//!   never finish ([`ticket_expires`], [`ticket_live`]).
//! - A window keeps at most the threshold's worth of failures, the newest ([`failures_kept`]),
//!   and the source addresses of its latest failures: at most [`MAX_SOURCES`] distinct, newest
//!   first, one seen again moving to the front ([`remember_source`]). They go when its failures
//!   do (slid out, cleared by a lock or an unlock); a lock made by failures carries them, an
//!   administrator's none.
//! - An account-wide lock (an administrator's, or failures under `account`) holds for every
//!   address; of two locks in force, the longer answers ([`in_force`]). An administrator's lock
//!   never shortens one in force ([`admin_lock`]). Two locks that become one key (two spellings
//!   of an account, when an old store is re-keyed) keep the longer ([`merge`]).
//! - At most `policy.max_tracked_usernames` failure windows are tracked. To make room for one
//!   more, windows that slid empty go first, then those whose last failure is oldest, an eighth
//!   of the bound at a time; a window with a check in flight stays, so that its ticket finds it,
//!   and locks are never evicted ([`must_make_room`], [`evictable`], [`eviction_cutoff`]).
//!
//! The rule is these functions. The embedded store ([`crate::store::tables`]) calls them inside
//! each atomic step (`begin_attempt`, `finish_attempt`, `lock_state`, `lock_account`, the sweep).
//! The Redis store's library (`src/store/redis/policy.lua`) mirrors it in
//! `faspex_gate_v2_begin_attempt`, `_finish_attempt`, `_lock_state`, `_lock_account`, `_lockouts`
//! and `_sweep`, exactly, and the one place where it must agree is the store conformance suite,
//! `src/store/conformance.rs` (its `lockout_*` checks).

use std::net::IpAddr;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::config::LockoutKey;
use crate::store::{AccountKind, AttemptResult, Lock, LockKey, LockoutRules};

/// The key failures of `account` from `ip` count under, as `policy.lockout_key` says (an IPv6
/// address by its /64).
pub fn key(rule: LockoutKey, account: &str, ip: IpAddr) -> LockKey {
    match rule {
        LockoutKey::Account => LockKey::account(account),
        LockoutKey::AccountIp => LockKey {
            account: account.to_owned(),
            ip: Some(super::throttle::source_key(ip)),
        },
    }
}

/// Whether a failure at `at` still counts at `now`: it is younger than the window.
pub fn counts_at(at: Timestamp, now: Timestamp, window: Duration) -> bool {
    now.since(at) < window
}

/// Whether a check's result is a failure that counts. A right password does not clear the window:
/// the threshold counts every wrong attempt inside it, so an attacker gains nothing from the
/// owner's logins. A check with no verdict (directory down, cancelled) counts nothing.
pub fn counts_failure(result: AttemptResult) -> bool {
    result == AttemptResult::Rejected
}

/// Whether `lock` is in force at `now` (it lifts at exactly its end).
pub fn holds(lock: &Lock, now: Timestamp) -> bool {
    lock.until > now
}

/// The lock in force on a key at `now`: its own, or the account-wide one, whichever lasts longer.
pub fn in_force(own: Option<&Lock>, account_wide: Option<&Lock>, now: Timestamp) -> Option<Lock> {
    let own = own.filter(|l| holds(l, now));
    let wide = account_wide.filter(|l| holds(l, now));
    match (own, wide) {
        (Some(a), Some(b)) => Some(if a.until >= b.until { a } else { b }.clone()),
        (a, b) => a.or(b).cloned(),
    }
}

/// When a check's reservation made at `now` is presumed dead: a check that never finishes (its
/// task gone) gives its place back then.
pub fn ticket_expires(now: Timestamp, rules: &LockoutRules) -> Timestamp {
    now + rules.ticket_ttl
}

/// Whether a reservation presumed dead at `expires` still holds its place at `now`.
pub fn ticket_live(expires: Timestamp, now: Timestamp) -> bool {
    expires > now
}

/// How many failures a window keeps, the newest: the threshold's worth (the one that reaches it
/// locks, and clears the window).
pub fn failures_kept(rules: &LockoutRules) -> usize {
    rules.threshold as usize
}

/// The most distinct source addresses a failure window (and the lock it makes) keeps.
pub const MAX_SOURCES: usize = 5;

/// Remember that a failure came from `ip`: `sources` is newest first, each address once, at most
/// [`MAX_SOURCES`] of them.
pub fn remember_source(sources: &mut Vec<IpAddr>, ip: IpAddr) {
    sources.retain(|s| *s != ip);
    sources.insert(0, ip);
    sources.truncate(MAX_SOURCES);
}

/// Of two locks on one key (two spellings of one account, joined when an old store is
/// re-keyed), the one that lasts longer, an administrator's when they end together, carrying the
/// most failures either counted. No lock is lost.
pub fn merge(a: Lock, b: Lock) -> Lock {
    let failures = a.failures.max(b.failures);
    let mut kept = if (a.until, a.by_admin) >= (b.until, b.by_admin) {
        a
    } else {
        b
    };
    kept.failures = failures;
    kept
}

/// Whether `tracked` failure windows leave no room for one more.
pub fn must_make_room(tracked: usize, rules: &LockoutRules) -> bool {
    tracked >= rules.max_tracked.max(1)
}

/// Whether a window with `in_flight` checks running may be evicted to make room: not while a
/// check holds a place in it (its ticket must find it).
pub fn evictable(in_flight: usize) -> bool {
    in_flight == 0
}

/// Which live windows go to make room, when `tracked` windows are still too many once those that
/// slid empty went: given the last failure of each [`evictable`] one (`last_failures`, in any
/// order; reordered here), the oldest eighth of the bound (or as many as it takes to make room
/// for one, if more), so that the scan is amortised. `Some((cutoff, n))`: evict `n` windows
/// whose last failure is at or before `cutoff`; `None`: none can go.
pub fn eviction_cutoff(
    last_failures: &mut [Timestamp],
    tracked: usize,
    rules: &LockoutRules,
) -> Option<(Timestamp, usize)> {
    let max = rules.max_tracked.max(1);
    let n = (max / 8)
        .max((tracked + 1).saturating_sub(max))
        .min(last_failures.len());
    if n == 0 {
        return None;
    }
    let (_, cutoff, _) = last_failures.select_nth_unstable(n - 1);
    Some((*cutoff, n))
}

/// What a credential check under a key may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BeforeCheck {
    /// Run it, holding a place.
    Proceed,
    /// Not yet: the checks in flight could reach the threshold.
    Busy,
    /// The window holds the threshold without a lock (two spellings' windows joined when an old
    /// store was re-keyed, or the threshold was lowered): it locks as the failure that reached
    /// it would have. The window is cleared.
    Lock(Lock),
    /// As [`BeforeCheck::Lock`], but that lock would have lifted already: the window is cleared
    /// and the check asks again.
    Reset,
}

/// The decision for a check under `key` (no lock in force) whose window holds `failures` (oldest
/// first, each still counting at `now`) with `in_flight` checks running.
pub fn before_check(
    key: &LockKey,
    failures: &[Timestamp],
    in_flight: usize,
    now: Timestamp,
    rules: &LockoutRules,
) -> BeforeCheck {
    if failures.len() >= rules.threshold.max(1) as usize {
        let since = failures.last().copied().unwrap_or(Timestamp::ZERO);
        let lock = Lock {
            key: key.clone(),
            since,
            until: since + rules.duration,
            failures: failures.len() as u32,
            by_admin: false,
            account_kind: AccountKind::default(),
            sources: Vec::new(),
        };
        return if holds(&lock, now) {
            BeforeCheck::Lock(lock)
        } else {
            BeforeCheck::Reset
        };
    }
    if failures.len() + in_flight >= rules.threshold as usize {
        BeforeCheck::Busy
    } else {
        BeforeCheck::Proceed
    }
}

/// A failure at `now` made `failures` in the window of `key`: the lock it places when that
/// reaches the threshold (the window is then cleared), for an account of `kind`.
pub fn after_failure(
    key: &LockKey,
    failures: u32,
    now: Timestamp,
    rules: &LockoutRules,
    kind: AccountKind,
) -> Option<Lock> {
    (failures >= rules.threshold).then(|| Lock {
        key: key.clone(),
        since: now,
        until: now + rules.duration,
        failures,
        by_admin: false,
        account_kind: kind,
        sources: Vec::new(),
    })
}

/// An administrator's lock on `account` (every address) from `now` until `until`, carrying the
/// `failures` in its window; a lock in force (`existing`) that lasts longer stays as long.
pub fn admin_lock(
    account: &str,
    kind: AccountKind,
    failures: u32,
    existing: Option<&Lock>,
    now: Timestamp,
    until: Timestamp,
) -> Lock {
    let until = match existing {
        Some(l) if holds(l, now) => until.max(l.until),
        _ => until,
    };
    Lock {
        key: LockKey::account(account),
        since: now,
        until,
        failures,
        by_admin: true,
        account_kind: kind,
        sources: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    fn rules() -> LockoutRules {
        LockoutRules {
            threshold: 5,
            window: MIN,
            duration: HOUR,
            max_tracked: 100,
            ticket_ttl: Duration::from_secs(180),
        }
    }

    #[test]
    fn five_failures_in_a_minute_lock_for_an_hour() {
        let t0 = Timestamp::from_millis(1_000_000);
        let key = LockKey::account("ann");
        assert_eq!(
            after_failure(&key, 4, t0, &rules(), AccountKind::Local),
            None
        );
        let lock = after_failure(&key, 5, t0, &rules(), AccountKind::Local).unwrap();
        assert_eq!((lock.since, lock.until, lock.failures), (t0, t0 + HOUR, 5));
        assert!(holds(&lock, t0 + (HOUR - Duration::from_millis(1))));
        assert!(!holds(&lock, t0 + HOUR));
        // The window slides: a failure a minute old no longer counts.
        assert!(counts_at(t0, t0 + (MIN - Duration::from_millis(1)), MIN));
        assert!(!counts_at(t0, t0 + MIN, MIN));
    }

    #[test]
    fn checks_in_flight_hold_places_under_the_threshold() {
        let t0 = Timestamp::from_millis(1_000_000);
        let key = LockKey::account("ann");
        let f = [t0, t0, t0];
        assert_eq!(
            before_check(&key, &f, 1, t0, &rules()),
            BeforeCheck::Proceed
        );
        assert_eq!(before_check(&key, &f, 2, t0, &rules()), BeforeCheck::Busy);
        let full = [t0; 5];
        assert!(matches!(
            before_check(&key, &full, 0, t0, &rules()),
            BeforeCheck::Lock(l) if l.until == t0 + HOUR
        ));
        assert_eq!(
            before_check(&key, &full, 0, t0 + HOUR, &rules()),
            BeforeCheck::Reset
        );
    }

    #[test]
    fn the_oldest_eighth_of_evictable_windows_goes() {
        let t0 = Timestamp::from_millis(1_000_000);
        let r = LockoutRules {
            max_tracked: 16,
            ..rules()
        };
        assert!(!must_make_room(15, &r));
        assert!(must_make_room(16, &r));
        assert!(evictable(0) && !evictable(1));
        let s = Duration::from_secs(1);
        let mut last = [t0 + 5 * s, t0 + s, t0 + 3 * s, t0 + 2 * s, t0 + 4 * s];
        // An eighth of 16: two go, those whose last failure is oldest.
        assert_eq!(eviction_cutoff(&mut last, 16, &r), Some((t0 + 2 * s, 2)));
        // Far over the bound (it was lowered): enough to make room for one.
        assert_eq!(eviction_cutoff(&mut last, 19, &r), Some((t0 + 4 * s, 4)));
        assert_eq!(eviction_cutoff(&mut [], 16, &r), None);
        assert_eq!(failures_kept(&r), 5);
        assert!(ticket_live(
            ticket_expires(t0, &r),
            t0 + Duration::from_secs(179)
        ));
        assert!(!ticket_live(
            ticket_expires(t0, &r),
            t0 + Duration::from_secs(180)
        ));
    }

    #[test]
    fn a_window_keeps_five_distinct_sources_newest_first() {
        let ip = |i: u8| IpAddr::from([192, 0, 2, i]);
        let mut s = Vec::new();
        for i in 1..=7 {
            remember_source(&mut s, ip(i));
        }
        assert_eq!(s, [ip(7), ip(6), ip(5), ip(4), ip(3)]);
        remember_source(&mut s, ip(4));
        assert_eq!(s, [ip(4), ip(7), ip(6), ip(5), ip(3)]);
        remember_source(&mut s, ip(4));
        assert_eq!(s.len(), MAX_SOURCES);
    }

    #[test]
    fn merged_locks_keep_the_longer_and_the_most_failures() {
        let t0 = Timestamp::from_millis(1_000_000);
        let key = LockKey::account("ann");
        let failed = after_failure(&key, 5, t0, &rules(), AccountKind::Directory).unwrap();
        let admin = Lock {
            failures: 2,
            ..admin_lock("ann", AccountKind::Directory, 2, None, t0, t0 + HOUR)
        };
        // They end together: the administrator's is kept, with the failures counted.
        let kept = merge(failed.clone(), admin.clone());
        assert!(kept.by_admin);
        assert_eq!(kept.failures, 5);
        assert_eq!(merge(admin.clone(), failed.clone()), kept);
        let longer = Lock {
            until: t0 + 2 * HOUR,
            ..failed.clone()
        };
        assert_eq!(merge(admin, longer.clone()), longer);
    }

    #[test]
    fn the_longer_lock_answers_and_an_admin_never_shortens_one() {
        let t0 = Timestamp::from_millis(1_000_000);
        let ip = "192.0.2.1".parse().unwrap();
        let own = after_failure(
            &key(LockoutKey::AccountIp, "ann", ip),
            5,
            t0,
            &rules(),
            AccountKind::Directory,
        )
        .unwrap();
        let wide = admin_lock("ann", AccountKind::Directory, 0, None, t0, t0 + 2 * HOUR);
        assert_eq!(in_force(Some(&own), Some(&wide), t0), Some(wide.clone()));
        assert_eq!(in_force(Some(&own), None, t0 + HOUR), None);
        let short = admin_lock("ann", AccountKind::Directory, 0, Some(&wide), t0, t0 + MIN);
        assert_eq!(short.until, t0 + 2 * HOUR);
        assert!(short.by_admin);
    }
}
