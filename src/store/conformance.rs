//! The conformance suite every [`PolicyStore`] must pass: the one place where a second backend
//! must agree with the rules as coded in [`crate::policy::seats`], [`crate::policy::one_client`],
//! [`crate::policy::timeouts`] and [`crate::policy::lockout`]. Test builds only.
//!
//! Each check is an `async fn` over a fresh [`Backend`]; time is passed in (a check moves `now`
//! an hour in one step and never sleeps). A backend runs all of them with one line, which stamps
//! out one `#[tokio::test]` per check:
//!
//! ```ignore
//! faspex_gate::store_conformance!(MyBackend::new());
//! ```
//!
//! The embedded store runs it in [`super::embedded`]'s tests; the Redis store runs it twice on a
//! real `redis-server` (time given, and time from Redis) in `super::redis`'s tests.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::failing::FailingStore;
use super::{
    AccountKind, Admission, AdmitOutcome, AttemptEnd, AttemptResult, AttemptStart, AttemptTicket,
    ClientId, ClientKind, EndReason, Lock, LockKey, LockoutRules, OneClient, PolicyStore,
    SeatRules, SessionKey, SessionState, Timeouts,
};
use crate::clock::{Clock, ManualClock, Timestamp};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// A backend under test: opens its store, and opens it again on the same state (a restart).
#[async_trait]
pub trait Backend: Send + 'static {
    /// The store, on this backend's state. Called again, it first closes the store it gave
    /// before, then opens the same state anew, as a restart would.
    async fn open(&mut self) -> Arc<dyn PolicyStore>;
    /// Whether the state survives [`Backend::open`] again (an in-memory backend's does not).
    fn durable(&self) -> bool;
}

/// Stamp out one `#[tokio::test]` per conformance check, each over a fresh backend made by the
/// given expression (which must implement [`Backend`]).
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        $crate::store_conformance!(@checks $make;
            seats_cap_is_exact_under_many_parallel_admissions,
            seats_a_held_seat_needs_no_free_one,
            seats_expired_sessions_hold_no_seat,
            one_client_a_second_client_is_refused_under_reject,
            one_client_a_second_client_replaces_under_replace_or_takeover,
            one_client_the_same_client_renews_its_session,
            idle_expiry_at_the_exact_instant,
            idle_activity_moves_the_deadline,
            absolute_expiry_at_the_exact_instant,
            sweep_ends_expired_sessions_and_lifts_locks,
            lockout_five_failures_in_a_minute_lock_for_an_hour,
            lockout_the_window_slides,
            lockout_checks_in_flight_hold_places,
            lockout_admin_lock_and_unlock,
            lockout_account_wide_lock_holds_for_every_address,
            lockout_windows_keep_their_last_sources,
            lockout_and_sessions_survive_a_restart,
            account_kinds_are_kept_and_counted,
            counts_seats_sessions_locks_and_windows,
            bearer_tokens_lead_to_their_session_and_die_with_it,
            fail_closed_when_writes_fail,
        );
    };
    (@checks $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                $crate::store::conformance::$check($make).await;
            }
        )*
    };
}

fn t0() -> Timestamp {
    ManualClock::at_2026().now()
}

fn timeouts() -> Timeouts {
    Timeouts {
        idle: HOUR,
        api_idle: 2 * HOUR,
        absolute: Some(12 * HOUR),
    }
}

fn seats(max_sessions: u32, one_client: OneClient) -> SeatRules {
    SeatRules {
        max_sessions,
        one_client,
        timeouts: timeouts(),
    }
}

/// The lockout rules the checks run under (the contract's: five failures in a minute lock for an
/// hour); the embedded store's own tests use them too.
pub(crate) fn lockout() -> LockoutRules {
    LockoutRules {
        threshold: 5,
        window: MIN,
        duration: HOUR,
        max_tracked: 1000,
        ticket_ttl: Duration::from_secs(180),
    }
}

fn ip() -> IpAddr {
    "192.0.2.1".parse().unwrap()
}

fn admission(key: &str, account: &str, client: &str, now: Timestamp) -> Admission {
    Admission {
        key: SessionKey(key.into()),
        account: account.into(),
        account_kind: AccountKind::Directory,
        client: ClientId(client.into()),
        kind: ClientKind::Browser,
        ip: ip(),
        agent: "conformance".into(),
        takeover: false,
        now,
    }
}

/// The session admitted, or a panic naming what happened instead.
fn admitted(outcome: AdmitOutcome) -> (super::Session, Option<SessionKey>, Vec<SessionKey>) {
    match outcome {
        AdmitOutcome::Admitted {
            session,
            renewed_from,
            replaces,
        } => (session, renewed_from, replaces),
        other => panic!("not admitted: {other:?}"),
    }
}

/// `a` admitted under `rules`, or a panic naming what happened instead.
async fn admit(
    store: &Arc<dyn PolicyStore>,
    a: Admission,
    rules: SeatRules,
) -> (super::Session, Option<SessionKey>, Vec<SessionKey>) {
    admitted(store.admit(a, rules).await.unwrap().outcome)
}

/// A fresh store, and the instant a check starts at.
async fn open(b: &mut impl Backend) -> (Arc<dyn PolicyStore>, Timestamp) {
    (b.open().await, t0())
}

/// A fresh store where `ann` holds session `k1` from client `c1`, admitted under `rules` at the
/// instant the check starts, which is returned with it.
async fn open_with_ann(
    b: &mut impl Backend,
    rules: SeatRules,
) -> (Arc<dyn PolicyStore>, Timestamp) {
    let (store, now) = open(b).await;
    admit(&store, admission("k1", "ann", "c1", now), rules).await;
    (store, now)
}

/// The keys of the sessions a call ended, each with why.
fn keys_ended(ended: &[(super::Session, EndReason)]) -> Vec<(&str, EndReason)> {
    ended.iter().map(|(s, why)| (&*s.key.0, *why)).collect()
}

async fn state(store: &Arc<dyn PolicyStore>, key: &str, now: Timestamp) -> SessionState {
    store
        .session(&SessionKey(key.into()), now, false, timeouts())
        .await
        .unwrap()
}

/// Session `key` is live a millisecond before `from + after`, and at that instant the lookup
/// finds it ended for `reason`.
async fn assert_ends_at(
    store: &Arc<dyn PolicyStore>,
    key: &str,
    (from, after): (Timestamp, Duration),
    reason: EndReason,
) {
    let before = state(store, key, from + (after - MS)).await;
    assert!(matches!(before, SessionState::Live(_)), "{key}: {before:?}");
    let at = state(store, key, from + after).await;
    assert!(
        matches!(at, SessionState::Ended(_, why) if why == reason),
        "{key} at {}: {at:?}",
        from + after
    );
}

/// The lock in force on `key` at `now`, if any.
async fn lock_at(store: &Arc<dyn PolicyStore>, key: &LockKey, now: Timestamp) -> Option<Lock> {
    store.lock_state(key, now).await.unwrap()
}

/// Ask for a place for a credential check under `key` at `now`.
async fn begin(store: &Arc<dyn PolicyStore>, key: &LockKey, now: Timestamp) -> AttemptStart {
    store.begin_attempt(key, now, lockout()).await.unwrap()
}

/// A place for a credential check under `key` at `now`, or a panic naming what happened instead.
async fn ticket(store: &Arc<dyn PolicyStore>, key: &LockKey, now: Timestamp) -> AttemptTicket {
    match begin(store, key, now).await {
        AttemptStart::Proceed(ticket) => ticket,
        other => panic!("no place for a check at {now}: {other:?}"),
    }
}

/// One credential check under `key` at `now`: reserved, then finished with `result`.
async fn attempt(
    store: &Arc<dyn PolicyStore>,
    key: &LockKey,
    result: AttemptResult,
    now: Timestamp,
) -> AttemptEnd {
    let ticket = ticket(store, key, now).await;
    store
        .finish_attempt(ticket, result, now, lockout())
        .await
        .unwrap()
}

/// `failures` wrong passwords under `key`, one a second from `from`.
async fn fail(store: &Arc<dyn PolicyStore>, key: &LockKey, failures: u32, from: Timestamp) {
    for i in 0..failures {
        attempt(store, key, AttemptResult::Rejected, from + SEC * i).await;
    }
}

/// Seats: the cap is exact however many admissions of different accounts arrive at once.
pub async fn seats_cap_is_exact_under_many_parallel_admissions(mut b: impl Backend) {
    let (store, now) = open(&mut b).await;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let a = admission(&format!("k{i}"), &format!("user{i}"), &format!("c{i}"), now);
                store.admit(a, seats(10, OneClient::Reject)).await.unwrap()
            })
        })
        .collect();
    let (mut admitted, mut full) = (0, 0);
    for t in tasks {
        match t.await.unwrap().outcome {
            AdmitOutcome::Admitted { .. } => admitted += 1,
            AdmitOutcome::LicenseFull { soonest_end } => {
                assert_eq!(soonest_end, Some(now + HOUR), "the soonest idle deadline");
                full += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((admitted, full), (10, 30));
    let counts = store.counts(now).await.unwrap();
    assert_eq!((counts.seats, counts.sessions), (10, 10));
}

/// Seats: an account holding a seat logs in from another client with every seat taken.
pub async fn seats_a_held_seat_needs_no_free_one(mut b: impl Backend) {
    let (store, now) = open(&mut b).await;
    let rules = seats(2, OneClient::Replace);
    for (k, user) in [("k1", "ann"), ("k2", "bob")] {
        admit(&store, admission(k, user, k, now), rules).await;
    }
    let refused = store.admit(admission("k3", "cat", "c3", now), rules).await;
    assert!(matches!(
        refused.unwrap().outcome,
        AdmitOutcome::LicenseFull { .. }
    ));
    let (_, _, replaces) = admit(&store, admission("k4", "ann", "c4", now), rules).await;
    assert_eq!(replaces, vec![SessionKey("k1".into())]);
    let counts = store.counts(now).await.unwrap();
    assert_eq!(
        (counts.seats, counts.sessions),
        (2, 3),
        "ann holds one seat"
    );
}

/// Seats: a session past its deadline holds no seat; the admission that finds the seats full
/// ends it and takes the seat.
pub async fn seats_expired_sessions_hold_no_seat(mut b: impl Backend) {
    let rules = seats(1, OneClient::Reject);
    let (store, now) = open_with_ann(&mut b, rules).await;
    let early = store
        .admit(admission("k2", "bob", "c2", now + (HOUR - MS)), rules)
        .await
        .unwrap();
    match early.outcome {
        AdmitOutcome::LicenseFull { soonest_end } => assert_eq!(soonest_end, Some(now + HOUR)),
        other => panic!("{other:?}"),
    }
    let at = store
        .admit(admission("k3", "bob", "c2", now + HOUR), rules)
        .await
        .unwrap();
    admitted(at.outcome);
    assert_eq!(keys_ended(&at.ended), vec![("k1", EndReason::Idle)]);
}

/// One client: under `reject`, a second client of a live account is refused, naming the first.
pub async fn one_client_a_second_client_is_refused_under_reject(mut b: impl Backend) {
    let rules = seats(10, OneClient::Reject);
    let (store, now) = open_with_ann(&mut b, rules).await;
    match store
        .admit(admission("k2", "ann", "c2", now + SEC), rules)
        .await
        .unwrap()
        .outcome
    {
        AdmitOutcome::OtherClient { active } => {
            assert_eq!((&*active.key.0, active.started), ("k1", now))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        state(&store, "k1", now).await,
        SessionState::Live(_)
    ));
    assert!(matches!(
        state(&store, "k2", now).await,
        SessionState::Unknown
    ));
    // Once the first has idled out, the second client is welcome.
    let later = store
        .admit(admission("k3", "ann", "c2", now + HOUR), rules)
        .await
        .unwrap();
    assert_eq!(admitted(later.outcome).2, Vec::<SessionKey>::new());
}

/// One client: under `replace`, or with a take-over under `reject`, the second client is
/// admitted and told which sessions it replaces; they stay live until the engine ends them.
pub async fn one_client_a_second_client_replaces_under_replace_or_takeover(mut b: impl Backend) {
    let reject = seats(10, OneClient::Reject);
    let (store, now) = open_with_ann(&mut b, reject).await;
    let mut takeover = admission("k2", "ann", "c2", now);
    takeover.takeover = true;
    let (_, renewed, replaces) = admit(&store, takeover, reject).await;
    assert_eq!((renewed, replaces), (None, vec![SessionKey("k1".into())]));
    assert!(matches!(
        state(&store, "k1", now).await,
        SessionState::Live(_)
    ));
    store
        .end_session(&SessionKey("k1".into()), EndReason::Replaced)
        .await
        .unwrap();

    let replace = seats(10, OneClient::Replace);
    let (_, _, replaces) = admit(&store, admission("k3", "ann", "c3", now), replace).await;
    assert_eq!(replaces, vec![SessionKey("k2".into())]);
}

/// One client: the same client logging in again renews its session under the new key.
pub async fn one_client_the_same_client_renews_its_session(mut b: impl Backend) {
    let rules = seats(10, OneClient::Reject);
    let (store, now) = open_with_ann(&mut b, rules).await;
    let (session, renewed, replaces) =
        admit(&store, admission("k2", "ann", "c1", now + MIN), rules).await;
    assert_eq!(renewed, Some(SessionKey("k1".into())));
    assert!(replaces.is_empty());
    assert_eq!(session.started, now + MIN);
    assert!(matches!(
        state(&store, "k1", now + MIN).await,
        SessionState::Unknown
    ));
    let counts = store.counts(now + MIN).await.unwrap();
    assert_eq!((counts.seats, counts.sessions), (1, 1));
}

/// Timeouts: a browser session ends at exactly `idle` after its last activity, an API session
/// at `api_idle`; the lookup that finds it ended ends it.
pub async fn idle_expiry_at_the_exact_instant(mut b: impl Backend) {
    let rules = seats(10, OneClient::Reject);
    let (store, now) = open_with_ann(&mut b, rules).await;
    let mut api = admission("k2", "bob", "c2", now);
    api.kind = ClientKind::Basic;
    admit(&store, api, rules).await;

    assert_ends_at(&store, "k1", (now, HOUR), EndReason::Idle).await;
    assert!(matches!(
        state(&store, "k1", now + HOUR).await,
        SessionState::Unknown
    ));
    assert!(matches!(
        state(&store, "k2", now + HOUR).await,
        SessionState::Live(_)
    ));
    let by_client = store
        .client_session(
            "bob",
            &ClientId("c2".into()),
            now + 2 * HOUR,
            false,
            timeouts(),
        )
        .await
        .unwrap();
    assert!(matches!(by_client, SessionState::Ended(_, EndReason::Idle)));
    assert_eq!(store.counts(now + 2 * HOUR).await.unwrap().seats, 0);
}

/// Timeouts: activity moves the idle deadline; a lookup without activity does not.
pub async fn idle_activity_moves_the_deadline(mut b: impl Backend) {
    let (store, now) = open_with_ann(&mut b, seats(10, OneClient::Reject)).await;
    let key = SessionKey("k1".into());
    let peek = store
        .session(&key, now + 30 * MIN, false, timeouts())
        .await
        .unwrap();
    assert!(matches!(peek, SessionState::Live(s) if s.last_activity == now));
    let touch = store
        .session(&key, now + 40 * MIN, true, timeouts())
        .await
        .unwrap();
    assert!(matches!(touch, SessionState::Live(s) if s.last_activity == now + 40 * MIN));
    assert_ends_at(&store, "k1", (now, 40 * MIN + HOUR), EndReason::Idle).await;
}

/// Timeouts: however busy, a session ends at exactly `absolute` after it began.
pub async fn absolute_expiry_at_the_exact_instant(mut b: impl Backend) {
    let (store, now) = open_with_ann(&mut b, seats(10, OneClient::Reject)).await;
    let key = SessionKey("k1".into());
    let mut t = now;
    while t + 30 * MIN < now + 12 * HOUR {
        t = t + 30 * MIN;
        let s = store.session(&key, t, true, timeouts()).await.unwrap();
        assert!(matches!(s, SessionState::Live(_)), "{t}");
    }
    assert_ends_at(&store, "k1", (now, 12 * HOUR), EndReason::Absolute).await;
}

/// The sweep ends sessions at their deadline and lifts locks at their end, with no request.
pub async fn sweep_ends_expired_sessions_and_lifts_locks(mut b: impl Backend) {
    let (store, now) = open_with_ann(&mut b, seats(10, OneClient::Reject)).await;
    fail(&store, &LockKey::account("bob"), 5, now).await;
    let locked_at = now + 4 * SEC;

    let early = store
        .sweep(now + (HOUR - MS), timeouts(), MIN)
        .await
        .unwrap();
    assert!(early.ended.is_empty() && early.lifted.is_empty());
    let swept = store.sweep(now + HOUR, timeouts(), MIN).await.unwrap();
    assert_eq!(keys_ended(&swept.ended), vec![("k1", EndReason::Idle)]);
    assert!(
        swept.lifted.is_empty(),
        "the lock ends at {}",
        locked_at + HOUR
    );
    let swept = store
        .sweep(locked_at + HOUR, timeouts(), MIN)
        .await
        .unwrap();
    assert_eq!(swept.lifted.len(), 1);
    assert_eq!(swept.lifted[0].key, LockKey::account("bob"));
    assert!(store.lockouts(locked_at + HOUR).await.unwrap().is_empty());
}

/// Lockout: five failures within a minute lock for an hour, from the fifth; the lock lifts at
/// exactly its end, and the window starts afresh.
pub async fn lockout_five_failures_in_a_minute_lock_for_an_hour(mut b: impl Backend) {
    let (store, now) = open(&mut b).await;
    let key = LockKey::account("ann");
    for i in 0..4u32 {
        let end = attempt(&store, &key, AttemptResult::Rejected, now + SEC * i).await;
        assert_eq!(end, AttemptEnd::Counted { failures: i + 1 });
    }
    let fifth = now + 10 * SEC;
    let lock = match attempt(&store, &key, AttemptResult::Rejected, fifth).await {
        AttemptEnd::Locked(lock) => lock,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (lock.since, lock.until, lock.failures, lock.by_admin),
        (fifth, fifth + HOUR, 5, false)
    );
    let during = begin(&store, &key, fifth + (HOUR - MS)).await;
    assert!(matches!(during, AttemptStart::Locked(l) if l == lock));
    assert_eq!(lock_at(&store, &key, fifth + (HOUR - MS)).await, Some(lock));
    assert_eq!(lock_at(&store, &key, fifth + HOUR).await, None);
    let after = attempt(&store, &key, AttemptResult::Rejected, fifth + HOUR).await;
    assert_eq!(after, AttemptEnd::Counted { failures: 1 });
}

/// Lockout: the window slides (a failure a minute old no longer counts), and a right password
/// does not clear it.
pub async fn lockout_the_window_slides(mut b: impl Backend) {
    let (store, now) = open(&mut b).await;
    let key = LockKey::account("ann");
    for s in [0u32, 10, 20, 30] {
        attempt(&store, &key, AttemptResult::Rejected, now + SEC * s).await;
    }
    assert_eq!(
        attempt(&store, &key, AttemptResult::Accepted, now + 40 * SEC).await,
        AttemptEnd::Done
    );
    // At one minute, the first failure has slid out: four count, with this one.
    assert_eq!(
        attempt(&store, &key, AttemptResult::Rejected, now + MIN).await,
        AttemptEnd::Counted { failures: 4 }
    );
    assert!(matches!(
        attempt(&store, &key, AttemptResult::Rejected, now + MIN + SEC).await,
        AttemptEnd::Locked(l) if l.failures == 5
    ));
}

/// Lockout: failures plus checks in flight never exceed the threshold; a check that gives no
/// verdict counts nothing and frees its place.
pub async fn lockout_checks_in_flight_hold_places(mut b: impl Backend) {
    let (store, now) = open(&mut b).await;
    let key = LockKey::account("ann");
    fail(&store, &key, 2, now).await;
    let mut tickets: Vec<AttemptTicket> = Vec::new();
    for _ in 0..3 {
        tickets.push(ticket(&store, &key, now + 5 * SEC).await);
    }
    let ids: HashSet<u64> = tickets.iter().map(|t| t.id).collect();
    assert_eq!(ids.len(), 3, "each place is its own");
    assert!(matches!(
        begin(&store, &key, now + 5 * SEC).await,
        AttemptStart::Busy
    ));
    let aborted = tickets.pop().unwrap();
    let end = store
        .finish_attempt(aborted, AttemptResult::Aborted, now + 6 * SEC, lockout())
        .await
        .unwrap();
    assert_eq!(end, AttemptEnd::Done);
    assert!(matches!(
        begin(&store, &key, now + 6 * SEC).await,
        AttemptStart::Proceed(_)
    ));
}

/// Lockout: an administrator's lock holds for its time (never shortening a longer one), and
/// an unlock lifts every lock of the account and clears its failures.
pub async fn lockout_admin_lock_and_unlock(mut b: impl Backend) {
    let (store, now) = open(&mut b).await;
    let key = LockKey::account("ann");
    fail(&store, &key, 5, now).await;
    let by_failures = lock_at(&store, &key, now + 5 * SEC).await.unwrap();
    let admin = store
        .lock_account(
            "ann",
            AccountKind::Directory,
            now + 5 * SEC,
            now + 5 * SEC + MIN,
        )
        .await
        .unwrap();
    assert!(admin.by_admin);
    assert_eq!(
        admin.until, by_failures.until,
        "a longer lock in force stays as long"
    );

    let u = store.unlock_account("ann").await.unwrap();
    assert_eq!(u.lifted.len(), 1);
    assert_eq!(lock_at(&store, &key, now + 6 * SEC).await, None);
    fail(&store, &key, 3, now + 10 * SEC).await;
    let u = store.unlock_account("ann").await.unwrap();
    assert_eq!((u.lifted.len(), u.windows_cleared), (0, 1));
    assert_eq!(
        attempt(&store, &key, AttemptResult::Rejected, now + 20 * SEC).await,
        AttemptEnd::Counted { failures: 1 },
        "the unlock cleared the failures"
    );

    let lock = store
        .lock_account("bob", AccountKind::Directory, now, now + 2 * HOUR)
        .await
        .unwrap();
    assert_eq!(
        (lock.since, lock.until, lock.failures),
        (now, now + 2 * HOUR, 0)
    );
    let start = begin(&store, &LockKey::account("bob"), now + HOUR).await;
    assert!(matches!(start, AttemptStart::Locked(l) if l.by_admin));
}

/// Lockout: under `account+ip`, failures lock one address; an account-wide lock holds for all.
pub async fn lockout_account_wide_lock_holds_for_every_address(mut b: impl Backend) {
    let (store, now) = open(&mut b).await;
    let from = |ip: &str| LockKey {
        account: "ann".into(),
        ip: Some(ip.parse().unwrap()),
    };
    fail(&store, &from("192.0.2.1"), 5, now).await;
    assert!(lock_at(&store, &from("192.0.2.1"), now + 5 * SEC)
        .await
        .is_some());
    assert!(lock_at(&store, &from("192.0.2.2"), now + 5 * SEC)
        .await
        .is_none());
    assert!(lock_at(&store, &LockKey::account("ann"), now)
        .await
        .is_none());
    store
        .lock_account("ann", AccountKind::Directory, now, now + 2 * HOUR)
        .await
        .unwrap();
    let other = lock_at(&store, &from("192.0.2.2"), now + HOUR).await;
    assert!(matches!(other, Some(l) if l.by_admin));
    let one = lock_at(&store, &from("192.0.2.1"), now + 5 * SEC).await;
    assert_eq!(
        one.unwrap().until,
        now + 2 * HOUR,
        "the longer lock answers"
    );
    assert_eq!(store.unlock_account("ann").await.unwrap().lifted.len(), 2);
}

/// One credential check under `key` at `now` from `source`, under `rules`, finished with `result`.
async fn attempt_from(
    store: &Arc<dyn PolicyStore>,
    key: &LockKey,
    source: &str,
    result: AttemptResult,
    now: Timestamp,
    rules: LockoutRules,
) -> AttemptEnd {
    let mut ticket = match store.begin_attempt(key, now, rules).await.unwrap() {
        AttemptStart::Proceed(ticket) => ticket,
        other => panic!("no place for a check at {now}: {other:?}"),
    };
    ticket.source = Some(source.parse().unwrap());
    store
        .finish_attempt(ticket, result, now, rules)
        .await
        .unwrap()
}

/// Lockout: a window keeps the source addresses of its last failures (at most five distinct,
/// newest first, one seen again moving to the front), the lock it makes carries them, and they go
/// with the window's failures (an unlock, a lock, or sliding out). An administrator's lock has
/// none.
pub async fn lockout_windows_keep_their_last_sources(mut b: impl Backend) {
    let (store, now) = open(&mut b).await;
    let ten = LockoutRules {
        threshold: 10,
        ..lockout()
    };
    let key = LockKey::account("ann");
    let net = |i: u32| format!("192.0.2.{i}");
    let ips = |v: &[u32]| -> Vec<IpAddr> { v.iter().map(|i| net(*i).parse().unwrap()).collect() };
    // Nine failures from 1, 2, 3, 4, 5, 6, 3 again, 7 and 8; an accepted and an aborted check
    // from 20 and 21 in between count no address.
    for (n, i) in [1, 2, 3, 4, 5, 6, 3, 7, 8].into_iter().enumerate() {
        let end = attempt_from(&store, &key, &net(i), AttemptResult::Rejected, now, ten).await;
        assert_eq!(
            end,
            AttemptEnd::Counted {
                failures: n as u32 + 1
            }
        );
    }
    for (i, result) in [(20, AttemptResult::Accepted), (21, AttemptResult::Aborted)] {
        attempt_from(&store, &key, &net(i), result, now + SEC, ten).await;
    }
    let eight = net(8);
    let tenth = attempt_from(
        &store,
        &key,
        &eight,
        AttemptResult::Rejected,
        now + SEC,
        ten,
    );
    let lock = match tenth.await {
        AttemptEnd::Locked(l) => l,
        other => panic!("the tenth failure locks: {other:?}"),
    };
    assert_eq!(
        lock.sources,
        ips(&[8, 7, 3, 6, 5]),
        "five, newest first, each once"
    );
    assert_eq!(
        lock_at(&store, &key, now + 2 * SEC).await,
        Some(lock.clone())
    );
    assert_eq!(
        store.lockouts(now + 2 * SEC).await.unwrap(),
        vec![lock.clone()]
    );
    // It is kept with the lock (where the backend is durable).
    let store = if b.durable() {
        drop(store);
        let store = b.open().await;
        assert_eq!(
            lock_at(&store, &key, now + 2 * SEC).await,
            Some(lock.clone())
        );
        store
    } else {
        store
    };

    // The unlock lifts the lock with them; the window starts afresh.
    let u = store.unlock_account("ann").await.unwrap();
    assert_eq!(u.lifted, vec![lock]);
    let two = LockoutRules {
        threshold: 2,
        ..lockout()
    };
    let at = now + 10 * SEC;
    attempt_from(&store, &key, &net(9), AttemptResult::Rejected, at, ten).await;
    // An unlock clears the window's addresses with its failures.
    store.unlock_account("ann").await.unwrap();
    attempt_from(&store, &key, &net(10), AttemptResult::Rejected, at, two).await;
    let end = attempt_from(&store, &key, &net(11), AttemptResult::Rejected, at, two).await;
    assert!(
        matches!(&end, AttemptEnd::Locked(l) if l.sources == ips(&[11, 10])),
        "{end:?}"
    );
    store.unlock_account("ann").await.unwrap();

    // Failures that slid out of the window take their addresses with them.
    attempt_from(&store, &key, &net(12), AttemptResult::Rejected, at, two).await;
    let later = at + MIN;
    attempt_from(&store, &key, &net(13), AttemptResult::Rejected, later, two).await;
    let end = attempt_from(&store, &key, &net(13), AttemptResult::Rejected, later, two).await;
    assert!(
        matches!(&end, AttemptEnd::Locked(l) if l.sources == ips(&[13])),
        "{end:?}"
    );

    // An administrator's lock has none, even over a window with failures.
    attempt_from(
        &store,
        &LockKey::account("bob"),
        &net(14),
        AttemptResult::Rejected,
        at,
        ten,
    )
    .await;
    let admin = store
        .lock_account("bob", AccountKind::Directory, at, at + HOUR)
        .await
        .unwrap();
    assert_eq!((admin.failures, admin.sources.len()), (1, 0));
    let shown = lock_at(&store, &LockKey::account("bob"), at).await.unwrap();
    assert!(shown.sources.is_empty());
}

/// Durability: locks, and sessions with their deadlines, survive a restart (where the backend
/// is durable).
pub async fn lockout_and_sessions_survive_a_restart(mut b: impl Backend) {
    if !b.durable() {
        return;
    }
    let (store, now) = open(&mut b).await;
    fail(&store, &LockKey::account("ann"), 5, now).await;
    store
        .lock_account("bob", AccountKind::Local, now, now + 2 * HOUR)
        .await
        .unwrap();
    let rules = seats(10, OneClient::Reject);
    admit(&store, admission("k1", "cat", "c1", now), rules).await;
    let before = store.lockouts(now + 10 * SEC).await.unwrap();
    assert_eq!(before.len(), 2);
    drop(store);

    let store = b.open().await;
    assert_eq!(store.lockouts(now + 10 * SEC).await.unwrap(), before);
    assert_ends_at(&store, "k1", (now, HOUR), EndReason::Idle).await;
}

/// Account kinds: a session and a lock keep whose account they are, and the gauges count local
/// accounts apart.
pub async fn account_kinds_are_kept_and_counted(mut b: impl Backend) {
    let (store, now) = open(&mut b).await;
    let rules = seats(10, OneClient::Reject);
    let mut local = admission("k1", "ann", "c1", now);
    local.account_kind = AccountKind::Local;
    let (s, _, _) = admit(&store, local, rules).await;
    assert_eq!(s.account_kind, AccountKind::Local);
    admit(&store, admission("k2", "bob", "c2", now), rules).await;

    let key = LockKey::account("cat");
    for i in 0..5u32 {
        let mut ticket = ticket(&store, &key, now + SEC * i).await;
        ticket.account_kind = AccountKind::Local;
        let end = store
            .finish_attempt(ticket, AttemptResult::Rejected, now + SEC * i, lockout())
            .await
            .unwrap();
        if let AttemptEnd::Locked(l) = end {
            assert_eq!(l.account_kind, AccountKind::Local);
        }
    }
    store
        .lock_account("dan", AccountKind::Directory, now, now + HOUR)
        .await
        .unwrap();
    let c = store.counts(now + 5 * SEC).await.unwrap();
    assert_eq!(
        (
            c.seats,
            c.local_seats,
            c.accounts_locked,
            c.local_accounts_locked
        ),
        (2, 1, 2, 1)
    );
}

/// Counts: seats are accounts, sessions are sessions, locks and windows as they stand at `now`.
pub async fn counts_seats_sessions_locks_and_windows(mut b: impl Backend) {
    let rules = seats(10, OneClient::Replace);
    let (store, now) = open_with_ann(&mut b, rules).await;
    admit(&store, admission("k2", "ann", "c2", now), rules).await;
    fail(&store, &LockKey::account("bob"), 2, now).await;
    let ip_key = LockKey {
        account: "cat".into(),
        ip: Some(ip()),
    };
    fail(&store, &ip_key, 5, now).await;
    store
        .lock_account("cat", AccountKind::Directory, now, now + 2 * HOUR)
        .await
        .unwrap();
    let c = store.counts(now + 5 * SEC).await.unwrap();
    assert_eq!((c.seats, c.sessions), (1, 2));
    assert_eq!(
        (c.accounts_locked, c.locks),
        (1, 2),
        "cat is one account, twice locked"
    );
    assert!(c.tracked_windows >= 1, "bob's failures are tracked");
    let later = store.counts(now + 90 * MIN).await.unwrap();
    assert_eq!(
        (later.accounts_locked, later.locks),
        (1, 1),
        "the hour's lock ended"
    );
}

/// Bearer tokens: a token leads to the session it was tied to, counts as its activity, and ends
/// with it.
pub async fn bearer_tokens_lead_to_their_session_and_die_with_it(mut b: impl Backend) {
    let (store, now) = open_with_ann(&mut b, seats(10, OneClient::Reject)).await;
    let key = SessionKey("k1".into());
    let bearer = SessionKey("b1".into());
    assert!(store.add_bearer(&key, bearer.clone()).await.unwrap());
    assert!(!store
        .add_bearer(&SessionKey("none".into()), bearer.clone())
        .await
        .unwrap());
    let s = store
        .bearer_session(&bearer, now + MIN, true, timeouts())
        .await
        .unwrap();
    assert!(matches!(s, SessionState::Live(s) if s.key == key && s.last_activity == now + MIN));
    assert!(store
        .set_upstream_cookie(&key, Some("faspex=1".into()))
        .await
        .unwrap());
    assert!(matches!(
        state(&store, "k1", now + MIN).await,
        SessionState::Live(s) if s.upstream_cookie.as_deref() == Some("faspex=1")
    ));
    store.end_session(&key, EndReason::Logout).await.unwrap();
    let gone = store
        .bearer_session(&bearer, now + MIN, false, timeouts())
        .await
        .unwrap();
    assert!(matches!(gone, SessionState::Unknown));
}

/// Failing writes: an admission that cannot be saved admits nobody; a lockout is still in force;
/// an administrator's lock says it is not saved and holds anyway; the probe fails. When writes
/// work again, so does everything, and (where the backend is durable) the locks survive a
/// restart.
pub async fn fail_closed_when_writes_fail(mut b: impl Backend) {
    let store = Arc::new(FailingStore::new(b.open().await));
    let dyn_store: Arc<dyn PolicyStore> = store.clone();
    let now = t0();
    let rules = seats(10, OneClient::Reject);
    store.probe().await.unwrap();
    store.refuse_writes(true);
    match store
        .admit(admission("k1", "ann", "c1", now), rules)
        .await
        .unwrap()
        .outcome
    {
        AdmitOutcome::Unsaved { error } => {
            assert!(error.to_string().contains("No space left"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.counts(now).await.unwrap().seats, 0);
    assert!(matches!(
        state(&dyn_store, "k1", now).await,
        SessionState::Unknown
    ));
    fail(&dyn_store, &LockKey::account("bob"), 5, now).await;
    assert!(lock_at(&dyn_store, &LockKey::account("bob"), now + 5 * SEC)
        .await
        .is_some());
    assert!(store
        .lock_account("cat", AccountKind::Directory, now, now + HOUR)
        .await
        .is_err());
    assert!(lock_at(&dyn_store, &LockKey::account("cat"), now)
        .await
        .is_some());
    assert!(store.probe().await.is_err());
    assert!(store.flush().await.is_err());

    store.refuse_writes(false);
    store.flush().await.unwrap();
    admit(&dyn_store, admission("k2", "ann", "c1", now), rules).await;
    let locks = store.lockouts(now + 10 * SEC).await.unwrap();
    assert_eq!(locks.len(), 2);
    drop((store, dyn_store));
    if b.durable() {
        let store = b.open().await;
        assert_eq!(store.lockouts(now + 10 * SEC).await.unwrap(), locks);
        assert_eq!(store.counts(now).await.unwrap().seats, 1);
    }
}
