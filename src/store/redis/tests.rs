//! The Redis store on a real `redis-server`: the conformance suite twice (time given, and time
//! from Redis), then what only a shared store must show: retries count once, no lock or window
//! key lives forever, the library comes back after `FUNCTION FLUSH`, two prefixes share nothing,
//! Redis's clock beats the caller's, `WAIT` short of replicas undoes an admission and keeps a
//! lock, the ACL user's rights and password are checked at connect naming their keys, the session
//! secret's fingerprint, a restart of Redis itself keeps the locks, and the session view: one
//! refresh ahead of time for many parallel lookups, a refresh that waits past `session_cache`
//! failing closed, one round trip for a burst on a stale view, a touch answered from the view
//! reaching Redis, and an end made in an outage holding until the replay sends it, with its
//! reason, without holding back the outage's touches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::server::RedisServer;
use super::{RedisOptions, RedisStore, Time};
use crate::clock::{Clock, ManualClock, SystemClock, Timestamp};
use crate::config::{OneClient, Secret};
use crate::store::conformance::{lockout, Backend};
use crate::store::{
    AccountKind, Admission, AdmitOutcome, AttemptEnd, AttemptResult, AttemptStart, ClientId,
    ClientKind, EndReason, LockKey, PolicyStore, SeatRules, SessionKey, SessionState, StoreError,
    Timeouts,
};

const SEC: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

/// A `redis-server` of its own, and the store opened on it again at each [`Backend::open`]: a
/// restart of the gateway's store on the same Redis, which keeps the state.
struct OnRedis {
    server: RedisServer,
    time: Time,
    open: Option<Arc<RedisStore>>,
}

impl OnRedis {
    fn new(time: Time) -> Self {
        Self {
            server: RedisServer::start(),
            time,
            open: None,
        }
    }
}

#[async_trait]
impl Backend for OnRedis {
    async fn open(&mut self) -> Arc<dyn PolicyStore> {
        self.open = None;
        let opts = RedisOptions::new(self.server.url(), "conformance", self.time);
        let store = Arc::new(RedisStore::connect(opts).await.unwrap());
        self.open = Some(Arc::clone(&store));
        store
    }

    fn durable(&self) -> bool {
        true
    }
}

/// The suite with the time each check passes.
mod given {
    use super::*;
    crate::store_conformance!(OnRedis::new(Time::Given));
}

/// The suite with time from Redis's `TIME` (shifted by an offset tied to its second, so the
/// checks can move time by hours; see [`Time::ServerShifted`]).
mod server_time {
    use super::*;
    crate::store_conformance!(OnRedis::new(Time::ServerShifted));
}

pub(super) fn t0() -> Timestamp {
    ManualClock::at_2026().now()
}

pub(super) fn seats(max_sessions: u32) -> SeatRules {
    SeatRules {
        max_sessions,
        one_client: OneClient::Reject,
        timeouts: Timeouts {
            idle: HOUR,
            api_idle: HOUR,
            absolute: None,
        },
    }
}

pub(super) fn admission(key: &str, account: &str, now: Timestamp) -> Admission {
    Admission {
        key: SessionKey(key.into()),
        account: account.into(),
        account_kind: AccountKind::Directory,
        client: ClientId(format!("client-{key}").into()),
        kind: ClientKind::Browser,
        ip: "192.0.2.1".parse().unwrap(),
        agent: "test".into(),
        takeover: false,
        now,
    }
}

pub(super) async fn store(server: &RedisServer, prefix: &str, time: Time) -> RedisStore {
    RedisStore::connect(RedisOptions::new(server.url(), prefix, time))
        .await
        .unwrap()
}

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn keys(server: &RedisServer, prefix: &str) -> Vec<String> {
    let mut c = raw(server).await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_retried_check_or_admission_counts_once() {
    let server = RedisServer::start();
    let store = store(&server, "retry", Time::Given).await;
    let now = t0();
    let key = LockKey::account("ann");
    for i in 1..=5u32 {
        let ticket = match store.begin_attempt(&key, now, lockout()).await.unwrap() {
            AttemptStart::Proceed(t) => t,
            other => panic!("{other:?}"),
        };
        let at = now + SEC * i;
        let first = store
            .finish_attempt(ticket.clone(), AttemptResult::Rejected, at, lockout())
            .await
            .unwrap();
        // The same ticket again (a retry after a lost answer): the same answer, nothing counted.
        let again = store
            .finish_attempt(ticket, AttemptResult::Rejected, at + SEC, lockout())
            .await
            .unwrap();
        assert_eq!(first, again);
        if i < 5 {
            assert_eq!(first, AttemptEnd::Counted { failures: i });
        } else {
            assert!(
                matches!(first, AttemptEnd::Locked(ref l) if l.failures == 5),
                "{first:?}"
            );
        }
    }
    // An admission sent twice takes one seat and answers the same session.
    let a = admission("k1", "bob", now);
    let first = store.admit(a.clone(), seats(1)).await.unwrap();
    let again = store.admit(a, seats(1)).await.unwrap();
    for outcome in [first.outcome, again.outcome] {
        assert!(
            matches!(outcome, AdmitOutcome::Admitted { ref session, .. } if &*session.key.0 == "k1" && session.started == now),
            "{outcome:?}"
        );
    }
    let c = store.counts(now).await.unwrap();
    assert_eq!((c.seats, c.sessions), (1, 1));
}

#[tokio::test]
async fn no_lock_or_window_key_lives_forever() {
    let server = RedisServer::start();
    let store = store(&server, "ttl", Time::Given).await;
    let now = t0();
    // Failures in a window, a lock by failures (account and account+ip), an admin lock, a check
    // in flight, a finished check's answer, an unlock.
    for (key, n) in [
        (LockKey::account("ann"), 5u32),
        (LockKey::account("bob"), 2),
        (
            LockKey {
                account: "cat".into(),
                ip: Some("192.0.2.7".parse().unwrap()),
            },
            5,
        ),
    ] {
        for i in 0..n {
            if let AttemptStart::Proceed(t) =
                store.begin_attempt(&key, now, lockout()).await.unwrap()
            {
                store
                    .finish_attempt(t, AttemptResult::Rejected, now + SEC * i, lockout())
                    .await
                    .unwrap();
            }
        }
    }
    let in_flight = store
        .begin_attempt(&LockKey::account("dan"), now, lockout())
        .await
        .unwrap();
    assert!(matches!(in_flight, AttemptStart::Proceed(_)));
    store
        .lock_account("eve", AccountKind::Directory, now, now + HOUR)
        .await
        .unwrap();
    store
        .lock_account("fay", AccountKind::Directory, now, now + HOUR)
        .await
        .unwrap();
    store.unlock_account("fay").await.unwrap();
    assert_eq!(store.lockouts(now + 10 * SEC).await.unwrap().len(), 3);

    let mut c = raw(&server).await;
    let all = keys(&server, "ttl").await;
    assert!(all.len() > 10, "{all:?}");
    let mut immortal = Vec::new();
    for k in &all {
        let ttl: i64 = redis::cmd("PTTL").arg(k).query_async(&mut c).await.unwrap();
        if ttl < 0 {
            immortal.push(k.clone());
        }
    }
    // Only the counters live on: ticket ids and lock epochs must never repeat.
    assert_eq!(immortal, vec!["{ttl}:epoch", "{ttl}:tickets"], "{all:?}");
}

#[tokio::test]
async fn the_library_comes_back_after_function_flush() {
    let server = RedisServer::start();
    let store = store(&server, "flush", Time::Given).await;
    let now = t0();
    store
        .lock_account("ann", AccountKind::Directory, now, now + HOUR)
        .await
        .unwrap();
    let mut c = raw(&server).await;
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    // The next call finds its function gone, loads the library again and runs once.
    assert_eq!(store.lockouts(now).await.unwrap().len(), 1);
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    let lock = store
        .lock_account("bob", AccountKind::Directory, now, now + HOUR)
        .await
        .unwrap();
    assert_eq!(lock.until, now + HOUR);
    assert_eq!(store.lockouts(now).await.unwrap().len(), 2);
}

#[tokio::test]
async fn two_prefixes_on_one_redis_share_nothing() {
    let server = RedisServer::start();
    let a = store(&server, "site-a", Time::Given).await;
    let b = store(&server, "site-b", Time::Given).await;
    let now = t0();
    for s in [&a, &b] {
        let admit = s
            .admit(admission("k1", "ann", now), seats(1))
            .await
            .unwrap();
        assert!(matches!(admit.outcome, AdmitOutcome::Admitted { .. }));
    }
    a.lock_account("bob", AccountKind::Directory, now, now + HOUR)
        .await
        .unwrap();
    assert!(b
        .lock_state(&LockKey::account("bob"), now)
        .await
        .unwrap()
        .is_none());
    assert_eq!(a.counts(now).await.unwrap().seats, 1);
    assert_eq!(b.counts(now).await.unwrap().seats, 1);
    let ka = keys(&server, "site-a").await;
    let kb = keys(&server, "site-b").await;
    assert!(ka.iter().all(|k| k.starts_with("{site-a}:")));
    assert!(kb.iter().all(|k| k.starts_with("{site-b}:")));
    let mut c = raw(&server).await;
    let every: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(every.len(), ka.len() + kb.len(), "{every:?}");
}

#[tokio::test]
async fn time_comes_from_redis_not_from_the_caller() {
    let server = RedisServer::start();
    let store = store(&server, "clock", Time::Server).await;
    // A caller whose clock is years off.
    let wrong = Timestamp::from_millis(1_000_000_000_000);
    let before = SystemClock.now();
    let admit = store
        .admit(admission("k1", "ann", wrong), seats(1))
        .await
        .unwrap();
    let after = SystemClock.now();
    let started = match admit.outcome {
        AdmitOutcome::Admitted { session, .. } => session.started,
        other => panic!("{other:?}"),
    };
    assert!(
        before <= started && started <= after,
        "{before} <= {started} <= {after}"
    );
    let lock = store
        .lock_account("bob", AccountKind::Directory, wrong, wrong + HOUR)
        .await
        .unwrap();
    assert!(before <= lock.since && lock.until == lock.since + HOUR);
}

#[tokio::test]
async fn wait_short_of_replicas_undoes_an_admission_and_keeps_a_lock() {
    let server = RedisServer::start();
    let mut opts = RedisOptions::new(server.url(), "wait", Time::Given);
    opts.wait_replicas = 1;
    opts.wait_timeout = Duration::from_millis(50);
    let store = RedisStore::connect(opts).await.unwrap();
    let heard = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&heard);
    store.on_wait_shortfall(Arc::new(move |op| {
        assert!(matches!(op, "admit" | "lock" | "unlock" | "kick"), "{op}");
        h.fetch_add(1, Ordering::SeqCst);
    }));
    let now = t0();
    // A Redis without replicas never reaches one.
    let admit = store
        .admit(admission("k1", "ann", now), seats(5))
        .await
        .unwrap();
    match admit.outcome {
        AdmitOutcome::Unsaved { error } => {
            assert!(error.to_string().contains("0 of the 1 replicas"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.counts(now).await.unwrap().seats, 0);
    let lock = store
        .lock_account("bob", AccountKind::Directory, now, now + HOUR)
        .await
        .unwrap();
    assert_eq!(
        store
            .lock_state(&LockKey::account("bob"), now)
            .await
            .unwrap(),
        Some(lock)
    );
    assert_eq!(store.wait_shortfalls(), 2);
    assert_eq!(heard.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_acl_user_without_rights_or_a_wrong_password_is_named() {
    let server = RedisServer::start();
    let mut c = raw(&server).await;
    for user in [
        vec![
            "ACL",
            "SETUSER",
            "nofn",
            "on",
            ">nofn-pw",
            "~*",
            "+@all",
            "-function",
            "-fcall",
            "-fcall_ro",
        ],
        vec!["ACL", "SETUSER", "gate", "on", ">gate-pw", "~*", "+@all"],
    ] {
        let mut cmd = redis::cmd(user[0]);
        for a in &user[1..] {
            cmd.arg(*a);
        }
        let _: () = cmd.query_async(&mut c).await.unwrap();
    }
    let with = |user: &str, pw: &str| {
        let mut o = RedisOptions::new(server.url(), "acl", Time::Server);
        o.username = Some(user.into());
        o.password = Some(Secret::new(pw.as_bytes().to_vec()));
        o
    };
    let err = RedisStore::connect(with("nofn", "nofn-pw"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            StoreError::Setting {
                key: "store.redis.username",
                ..
            }
        ),
        "{err}"
    );
    let err = RedisStore::connect(with("gate", "wrong"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            StoreError::Setting {
                key: "store.redis.password_file",
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.to_string().contains("wrong"), "{err}");
    let ok = RedisStore::connect(with("gate", "gate-pw")).await.unwrap();
    ok.probe().await.unwrap();
}

#[tokio::test]
async fn every_gateway_of_a_site_needs_the_same_session_secret() {
    let server = RedisServer::start();
    let one = store(&server, "secret", Time::Server).await;
    let two = store(&server, "secret", Time::Server).await;
    let secret = [7u8; 32];
    one.check_secret_fingerprint(&secret).await.unwrap();
    two.check_secret_fingerprint(&secret).await.unwrap();
    let err = two.check_secret_fingerprint(&[8u8; 32]).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Setting {
                key: "session.secret_file",
                ..
            }
        ),
        "{err}"
    );
    // Only the fingerprint is kept.
    let mut c = raw(&server).await;
    let kept: String = redis::cmd("GET")
        .arg("{secret}:secret")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(kept, super::fingerprint(&secret));
    assert_eq!(kept.len(), 64);
}

#[tokio::test]
async fn locks_and_sessions_survive_a_restart_of_redis() {
    let mut server = RedisServer::start();
    let now = t0();
    let (locks,) = {
        let store = store(&server, "restart", Time::Given).await;
        store
            .lock_account("ann", AccountKind::Local, now, now + HOUR)
            .await
            .unwrap();
        store
            .admit(admission("k1", "bob", now), seats(5))
            .await
            .unwrap();
        (store.lockouts(now).await.unwrap(),)
    };
    server.restart();
    let store = store(&server, "restart", Time::Given).await;
    assert_eq!(store.lockouts(now).await.unwrap(), locks);
    assert_eq!(store.counts(now).await.unwrap().seats, 1);
}

/// How many library calls (`FCALL` and `FCALL_RO`) Redis has run (`INFO commandstats`).
async fn library_calls(server: &RedisServer) -> u64 {
    let mut c = raw(server).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_fcall:") || l.starts_with("cmdstat_fcall_ro:"))
        .filter_map(|l| {
            l.split_once("calls=")?
                .1
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// A store on `server` with a session view of 1 s and no `outage_grace`, with ann's session `k1`
/// admitted at [`t0`] and in the view (looked up live at [`t0`]); its key and timeouts.
async fn viewed(server: &RedisServer, prefix: &str) -> (Arc<RedisStore>, SessionKey, Timeouts) {
    viewed_with_grace(server, prefix, Duration::ZERO).await
}

/// [`viewed`] with an `outage_grace` of `grace`.
async fn viewed_with_grace(
    server: &RedisServer,
    prefix: &str,
    grace: Duration,
) -> (Arc<RedisStore>, SessionKey, Timeouts) {
    let store = Arc::new(
        store(server, prefix, Time::Given)
            .await
            .with_session_view(SEC, grace),
    );
    let (now, t, key) = (t0(), seats(5).timeouts, SessionKey("k1".into()));
    store
        .admit(admission("k1", "ann", now), seats(5))
        .await
        .unwrap();
    let first = store.session(&key, now, true, t).await.unwrap();
    assert!(matches!(first, SessionState::Live(_)), "{first:?}");
    (store, key, t)
}

/// A busy session's view is confirmed again by one request past half of `session_cache`, while
/// the requests beside it are answered from the view: 50 parallel lookups then make exactly one
/// round trip, and every one is answered live. When that refresh cannot reach Redis, its caller
/// is answered from the view (still within `session_cache`); past `session_cache`, with no
/// `outage_grace`, a lookup fails closed.
#[tokio::test]
async fn a_busy_sessions_view_is_refreshed_by_one_request_ahead_of_time() {
    let mut server = RedisServer::start();
    let (store, key, t) = viewed(&server, "ahead").await;
    let now = t0();

    let parallel = |at: Timestamp| {
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (store, key) = (Arc::clone(&store), key.clone());
                tokio::spawn(async move { store.session(&key, at, true, t).await })
            })
            .collect();
        async move {
            let mut live = 0;
            for task in tasks {
                if let SessionState::Live(s) = task.await.unwrap().unwrap() {
                    assert_eq!(&*s.account, "ann");
                    live += 1;
                }
            }
            live
        }
    };
    for (at, round_trips) in [(600, 1), (700, 0), (1_099, 0), (1_100, 1), (1_599, 0)] {
        let before = library_calls(&server).await;
        let live = parallel(now + Duration::from_millis(at)).await;
        let calls = library_calls(&server).await - before;
        assert_eq!((live, calls), (50, round_trips), "50 lookups at {at} ms");
    }

    // The last refresh was at 1,100 ms. Redis goes away: the refresh at 1,600 ms is answered from
    // the view, as the lookups after it are; at 2,100 ms the view is stale and there is no grace.
    server.stop();
    for at in [1_600, 2_099] {
        let state = store
            .session(&key, now + Duration::from_millis(at), true, t)
            .await;
        assert!(
            matches!(state, Ok(SessionState::Live(_))),
            "at {at} ms: {state:?}"
        );
    }
    let stale = store
        .session(&key, now + Duration::from_millis(2_100), true, t)
        .await;
    assert!(matches!(stale, Err(StoreError::Remote { .. })), "{stale:?}");
}

/// Redis goes silent: its port accepts connections and never answers. The first call finds the
/// store's old connection dropped and fails at once (made here); the next ones connect to the
/// silent port and wait.
async fn silence(server: &mut RedisServer, store: &RedisStore) {
    let port = server.port();
    server.stop();
    let silent = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().flatten() {
            held.push(c);
        }
    });
    assert!(store.counts(t0()).await.is_err());
}

/// A refresh whose wait for Redis outlasts `session_cache` fails closed (with no
/// `outage_grace`): what counts is the time the wait ended, not when the lookup began. The
/// lookups beside it are still answered from the view, without waiting, while it is fresh.
#[tokio::test]
async fn a_refresh_that_waits_past_session_cache_is_not_answered_from_the_view() {
    let mut server = RedisServer::start();
    let (store, key, t) = viewed(&server, "late").await;
    let now = t0();

    silence(&mut server, &store).await;
    let refresh = {
        let (store, key) = (Arc::clone(&store), key.clone());
        tokio::spawn(async move {
            let asked = std::time::Instant::now();
            let r = store
                .session(&key, now + Duration::from_millis(600), true, t)
                .await;
            (r, asked.elapsed())
        })
    };
    // Meanwhile the view answers at once (the refresh is in flight).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let beside = tokio::time::timeout(
        Duration::from_millis(200),
        store.session(&key, now + Duration::from_millis(700), true, t),
    )
    .await
    .expect("answered from the view without waiting for Redis");
    assert!(matches!(beside, Ok(SessionState::Live(_))), "{beside:?}");
    let (r, waited) = refresh.await.unwrap();
    assert!(waited >= SEC, "it waited for Redis: {waited:?}");
    assert!(
        matches!(r, Err(StoreError::Remote { .. })),
        "after {waited:?}: {r:?}"
    );
}

/// A burst of lookups that find the view stale (a page's requests after a quiet second) makes
/// one round trip, not one per request: the others wait for it and are answered from the view
/// it refreshed. When Redis is silent, every one of them fails closed with it (no
/// `outage_grace` here), all within about one wait for Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_a_stale_view_makes_one_round_trip() {
    let mut server = RedisServer::start();
    let (store, key, t) = viewed(&server, "burst").await;
    // The view of ann's session was confirmed at t0: at 1,500 ms it is stale.
    let before = library_calls(&server).await;
    let answers = burst_of_50(&store, &key, t, t0() + Duration::from_millis(1_500)).await;
    let calls = library_calls(&server).await - before;
    let live = answers
        .iter()
        .filter(|(r, _)| matches!(r, Ok(SessionState::Live(s)) if &*s.account == "ann"))
        .count();
    assert_eq!((live, calls), (50, 1), "50 lookups on a stale view");
    // The view that round trip left serves the next ones.
    let before = library_calls(&server).await;
    let answers = burst_of_50(&store, &key, t, t0() + Duration::from_millis(1_600)).await;
    assert!(answers.iter().all(|(r, _)| r.is_ok()));
    assert_eq!(library_calls(&server).await - before, 0);

    silence(&mut server, &store).await;
    let answers = burst_of_50(&store, &key, t, t0() + Duration::from_millis(3_000)).await;
    let waits: Vec<Duration> = answers
        .iter()
        .map(|(r, waited)| {
            assert!(matches!(r, Err(StoreError::Remote { .. })), "{r:?}");
            *waited
        })
        .collect();
    let (quickest, slowest) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
    assert!(*quickest >= SEC, "they waited for Redis: {quickest:?}");
    assert!(
        *slowest < *quickest + SEC,
        "about one wait: {quickest:?} to {slowest:?}"
    );
}

/// 50 parallel lookups of `key` at `at`, each with how long it took.
async fn burst_of_50(
    store: &Arc<RedisStore>,
    key: &SessionKey,
    t: Timeouts,
    at: Timestamp,
) -> Vec<(Result<SessionState, StoreError>, Duration)> {
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (store, key) = (Arc::clone(store), key.clone());
            tokio::spawn(async move {
                let asked = std::time::Instant::now();
                let r = store.session(&key, at, true, t).await;
                (r, asked.elapsed())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

/// In an outage, a burst on a stale view that is still within `outage_grace` is answered from
/// it: the waiters as the lookup they waited for, without a round trip of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_in_an_outage_is_answered_within_outage_grace() {
    let mut server = RedisServer::start();
    let (store, key, t) = viewed_with_grace(&server, "grace", 30 * SEC).await;
    silence(&mut server, &store).await;
    let answers = burst_of_50(&store, &key, t, t0() + Duration::from_millis(1_500)).await;
    for (r, _) in &answers {
        assert!(matches!(r, Ok(SessionState::Live(_))), "{r:?}");
    }
    let slowest = answers.iter().map(|(_, waited)| *waited).max().unwrap();
    assert!(slowest < 4 * SEC, "about one wait: {slowest:?}");
}

/// Activity reaches Redis even when the lookups that go to Redis carry none (an exempt path's
/// polls, which keep the view fresh): a request whose activity no lookup with activity carried
/// within `session_cache` carries its own, and the polls' answers do not wipe it. Without it the
/// session's idle deadline in Redis would stay where the polls found it.
#[tokio::test]
async fn activity_reaches_redis_through_polls_that_keep_the_view_fresh() {
    let server = RedisServer::start();
    let (store, key, t) = viewed(&server, "carried").await;
    // Redis's own answer, with no view in front of it.
    let direct = self::store(&server, "carried", Time::Given).await;
    let at = |ms: u64| t0() + Duration::from_millis(ms);
    let in_redis = |ms: u64| {
        let (direct, key) = (&direct, key.clone());
        async move {
            match direct.session(&key, at(ms), false, t).await.unwrap() {
                SessionState::Live(s) => s.last_activity,
                other => panic!("{other:?}"),
            }
        }
    };
    let lookup = |ms: u64, activity: bool| {
        let (store, key) = (Arc::clone(&store), key.clone());
        async move {
            let s = store.session(&key, at(ms), activity, t).await.unwrap();
            assert!(matches!(s, SessionState::Live(_)), "{s:?}");
        }
    };
    // ann's view was confirmed with activity at t0; polls every 400 ms keep it fresh.
    let before = library_calls(&server).await;
    for ms in [400, 800, 1_200, 1_600] {
        lookup(ms, false).await;
    }
    lookup(1_700, true).await;
    assert_eq!(
        in_redis(1_700).await,
        at(1_700),
        "carried by its own request"
    );
    lookup(1_800, true).await;
    assert_eq!(
        in_redis(1_800).await,
        at(1_700),
        "within session_cache: from the view"
    );
    for ms in [2_000, 2_400, 2_800] {
        lookup(ms, false).await;
    }
    assert_eq!(in_redis(2_800).await, at(1_700), "the polls wiped nothing");
    // (polls past half of `session_cache` refresh at 800, 1,600 and 2,400 ms, the activity at
    // 1,700 carries its own: 4 calls; and the 3 direct reads)
    assert_eq!(library_calls(&server).await - before, 4 + 3);
}

/// Wait until `store` reaches Redis again after [`RedisServer::start_again`] (its first call may
/// find its old connection dropped).
async fn reconnected(store: &RedisStore) {
    for _ in 0..50 {
        if store.counts(t0()).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the store did not reach Redis again");
}

/// Redis stops, `key` ends (`reason`) on `store`, answered from the view, and Redis starts again
/// on its port and data, before the store monitor's replay.
async fn ended_in_an_outage(
    server: &mut RedisServer,
    store: &RedisStore,
    key: &SessionKey,
    reason: EndReason,
) {
    server.stop();
    let ended = store.end_session(key, reason).await;
    assert!(
        matches!(ended, Ok(Some(_))),
        "answered from the view: {ended:?}"
    );
    server.start_again();
    reconnected(store).await;
}

/// Redis stops, `key` is active at t0 + 1.5 s on `store`, answered from the view (its touch
/// queued), and Redis starts again on its port and data, before any replay. The activity's time.
async fn active_in_an_outage(
    server: &mut RedisServer,
    store: &RedisStore,
    key: &SessionKey,
    t: Timeouts,
) -> Timestamp {
    server.stop();
    let active = t0() + Duration::from_millis(1_500);
    let r = store.session(key, active, true, t).await;
    assert!(matches!(r, Ok(SessionState::Live(_))), "{r:?}");
    server.start_again();
    reconnected(store).await;
    active
}

/// Give `key` Faspex's session cookie (so that an owed end puts a logout in `logouts`) and put
/// it back in the view, which the grant forgot.
async fn with_faspex_cookie(store: &RedisStore, key: &SessionKey, t: Timeouts) {
    assert!(store
        .set_upstream_cookie(key, Some("faspex-cookie".into()))
        .await
        .unwrap());
    let again = store.session(key, t0(), true, t).await.unwrap();
    assert!(matches!(again, SessionState::Live(_)), "{again:?}");
}

/// Overwrite session `key`'s record under `prefix` with one the library cannot read: every end
/// of it then fails (`WRONGTYPE`).
async fn unreadable(server: &RedisServer, prefix: &str, key: &str) {
    let mut c = raw(server).await;
    redis::cmd("SET")
        .arg(format!("{{{prefix}}}:s:{key}"))
        .arg("not a session")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
}

/// bob's session `k2`, admitted at t0 and in `store`'s view.
async fn bob_viewed(store: &RedisStore, t: Timeouts) -> SessionKey {
    let bob = SessionKey("k2".into());
    store
        .admit(admission("k2", "bob", t0()), seats(5))
        .await
        .unwrap();
    let live = store.session(&bob, t0(), true, t).await.unwrap();
    assert!(matches!(live, SessionState::Live(_)), "{live:?}");
    bob
}

/// The Faspex logouts owed under `prefix` (the `logouts` stream's length).
async fn owed_logouts(server: &RedisServer, prefix: &str) -> u64 {
    let mut c = raw(server).await;
    redis::cmd("XLEN")
        .arg(format!("{{{prefix}}}:logouts"))
        .query_async(&mut c)
        .await
        .unwrap()
}

/// A logout made during an outage holds when Redis comes back before the store monitor's replay
/// has sent its end: a lookup that Redis still answers live is answered unknown, and the view
/// does not keep it. The replay then ends the session in Redis, for every gateway.
#[tokio::test]
async fn a_logout_in_an_outage_holds_until_the_replay_sends_it() {
    let mut server = RedisServer::start();
    let (store, key, t) = viewed_with_grace(&server, "owed", 30 * SEC).await;
    ended_in_an_outage(&mut server, &store, &key, EndReason::Logout).await;
    let at = t0() + Duration::from_millis(1_500);
    let direct = self::store(&server, "owed", Time::Given).await;
    let in_redis = direct.session(&key, at, false, t).await.unwrap();
    assert!(
        matches!(in_redis, SessionState::Live(_)),
        "Redis has not had the end yet: {in_redis:?}"
    );
    // Unknown here, without asking Redis (which would touch the session).
    let before = library_calls(&server).await;
    for ms in [1_500, 1_600] {
        let r = store
            .session(&key, t0() + Duration::from_millis(ms), true, t)
            .await;
        assert!(matches!(r, Ok(SessionState::Unknown)), "at {ms} ms: {r:?}");
    }
    assert_eq!(library_calls(&server).await, before);
    match direct.session(&key, at, false, t).await.unwrap() {
        SessionState::Live(s) => assert_eq!(s.last_activity, t0(), "not touched"),
        other => panic!("{other:?}"),
    }
    store.check(at).await.unwrap();
    let in_redis = direct.session(&key, at, false, t).await.unwrap();
    assert!(
        !matches!(in_redis, SessionState::Live(_)),
        "the replay ended it in Redis: {in_redis:?}"
    );
    let r = store.session(&key, at, true, t).await;
    assert!(!matches!(r, Ok(SessionState::Live(_))), "{r:?}");
}

/// An end that keeps failing in the store monitor's replay does not hold back the touches
/// queued in the same outage: they are sent all the same, so a session in use is not swept.
#[tokio::test]
async fn a_failing_end_does_not_hold_back_the_touches_of_an_outage() {
    let mut server = RedisServer::start();
    let (store, key, t) = viewed_with_grace(&server, "stuck", 30 * SEC).await;
    let k2 = bob_viewed(&store, t).await;
    server.stop();
    // In the outage bob logs out and ann is active, both answered from the view.
    let ended = store.end_session(&k2, EndReason::Logout).await;
    assert!(matches!(ended, Ok(Some(_))), "{ended:?}");
    let active = t0() + Duration::from_millis(1_500);
    let ann = store.session(&key, active, true, t).await;
    assert!(matches!(ann, Ok(SessionState::Live(_))), "{ann:?}");
    server.start_again();
    reconnected(&store).await;
    // bob's record is now one the library cannot read: his end fails every time.
    unreadable(&server, "stuck", "k2").await;
    store.check(active).await.unwrap();
    let direct = self::store(&server, "stuck", Time::Given).await;
    match direct.session(&key, active, false, t).await.unwrap() {
        SessionState::Live(s) => assert_eq!(s.last_activity, active, "ann's touch reached Redis"),
        other => panic!("{other:?}"),
    }
}

/// A touch answered from the view in an outage reaches Redis at the activity's own time, not
/// the replay's: a session idle since then ends when its idle timeout after that activity is up,
/// however long the outage lasted.
#[tokio::test]
async fn a_touch_of_an_outage_counts_at_its_own_time() {
    let mut server = RedisServer::start();
    let (store, key, t) = viewed_with_grace(&server, "when", 30 * SEC).await;
    let active = active_in_an_outage(&mut server, &store, &key, t).await;
    let replayed = t0() + 20 * 60 * SEC;
    store.check(replayed).await.unwrap();
    let direct = self::store(&server, "when", Time::Given).await;
    match direct.session(&key, replayed, false, t).await.unwrap() {
        SessionState::Live(s) => assert_eq!(s.last_activity, active, "not the replay's time"),
        other => panic!("{other:?}"),
    }
    let idle_end = active + t.idle;
    let before = direct
        .session(&key, active + (t.idle - SEC), false, t)
        .await
        .unwrap();
    assert!(matches!(before, SessionState::Live(_)), "{before:?}");
    let after = direct.session(&key, idle_end, false, t).await.unwrap();
    assert!(matches!(after, SessionState::Ended(..)), "{after:?}");
}

/// A session kept in use through an outage longer than its idle timeout (an `outage_grace`
/// above the idle timeout) is not ended when Redis is back: every activity time the chain needs
/// reaches Redis, each counted while the session was live, not only the last (which, alone,
/// would fall after the deadline Redis knew), and it reaches Redis before this gateway's sweep or
/// the session's next lookup judges the deadline.
#[tokio::test]
async fn a_session_in_use_through_a_long_outage_survives_the_replay() {
    // What reaches Redis first when it is back: the store monitor's check, this gateway's
    // sweep (every 250 ms), a request of the session itself (by its cookie, or as an API
    // client is, by account and client), or an admission of the account.
    for first in ["check", "sweep", "request", "client", "admission"] {
        let mut server = RedisServer::start();
        let (store, key, _) = viewed_with_grace(&server, "chain", 30 * 60 * SEC).await;
        let t = Timeouts {
            idle: 5 * 60 * SEC,
            api_idle: 5 * 60 * SEC,
            absolute: None,
        };
        let client = ClientId("client-k1".into());
        let by_client = |at: Timestamp| {
            let (store, client) = (Arc::clone(&store), client.clone());
            async move { store.client_session("ann", &client, at, true, t).await }
        };
        if first == "client" {
            let r = by_client(t0()).await;
            assert!(matches!(r, Ok(SessionState::Live(_))), "{r:?}");
        }
        server.stop();
        let minutes = |m: u64| t0() + Duration::from_secs(m * 60);
        for m in [4, 8, 12] {
            let r = if first == "client" {
                by_client(minutes(m)).await
            } else {
                store.session(&key, minutes(m), true, t).await
            };
            assert!(matches!(r, Ok(SessionState::Live(_))), "at {m} min: {r:?}");
        }
        server.start_again();
        reconnected(&store).await;
        let last = match first {
            "check" => {
                store.check(minutes(13)).await.unwrap();
                minutes(12)
            }
            "sweep" => {
                let swept = store.sweep(minutes(13), t, 60 * SEC).await.unwrap();
                assert!(swept.ended.is_empty(), "{:?}", swept.ended);
                minutes(12)
            }
            "admission" => {
                // ann on another client: her session, in use, still holds the account
                let rules = SeatRules {
                    timeouts: t,
                    ..seats(5)
                };
                let other = store
                    .admit(admission("k7", "ann", minutes(13)), rules)
                    .await
                    .unwrap();
                assert!(
                    matches!(other.outcome, AdmitOutcome::OtherClient { .. }),
                    "{:?}",
                    other.outcome
                );
                minutes(12)
            }
            "request" => {
                let r = store.session(&key, minutes(13), true, t).await;
                assert!(matches!(r, Ok(SessionState::Live(_))), "{r:?}");
                minutes(13)
            }
            _ => {
                let r = by_client(minutes(13)).await;
                assert!(matches!(r, Ok(SessionState::Live(_))), "{r:?}");
                minutes(13)
            }
        };
        let direct = self::store(&server, "chain", Time::Given).await;
        match direct.session(&key, minutes(13), false, t).await.unwrap() {
            SessionState::Live(s) => assert_eq!(s.last_activity, last, "{first}"),
            other => panic!("{first}: {other:?}"),
        }
    }
}

/// A touch replayed after an outage never moves a session's activity back (another gateway saw
/// later activity meanwhile), and one replayed past the idle timeout after its own time does not
/// revive the session: it ends then, as it would have with no outage, and the next sweep reports
/// that end once (no request is there to report it).
#[tokio::test]
async fn a_replayed_touch_moves_activity_only_forward_and_revives_nothing() {
    for late in [false, true] {
        let mut server = RedisServer::start();
        let (store, key, t) = viewed_with_grace(&server, "forward", 30 * SEC).await;
        let active = active_in_an_outage(&mut server, &store, &key, t).await;
        let direct = self::store(&server, "forward", Time::Given).await;
        if late {
            let replayed = active + t.idle + SEC;
            store.check(replayed).await.unwrap();
            let r = direct.session(&key, replayed, false, t).await.unwrap();
            assert!(matches!(r, SessionState::Unknown), "ended: {r:?}");
            // Reported once, by the next sweep, as the sweep's own ends are.
            let swept = store.sweep(replayed, t, 60 * SEC).await.unwrap();
            let ended: Vec<_> = swept
                .ended
                .iter()
                .map(|(s, why)| (&*s.key.0, *why))
                .collect();
            assert_eq!(ended, [("k1", EndReason::Idle)]);
            let again = store.sweep(replayed, t, 60 * SEC).await.unwrap();
            assert!(again.ended.is_empty(), "{:?}", again.ended);
        } else {
            // Another gateway, which Redis answered all along, saw ann later.
            let elsewhere = t0() + 10 * SEC;
            let r = direct.session(&key, elsewhere, true, t).await.unwrap();
            assert!(matches!(r, SessionState::Live(_)), "{r:?}");
            let replayed = t0() + 20 * 60 * SEC;
            store.check(replayed).await.unwrap();
            match direct.session(&key, replayed, false, t).await.unwrap() {
                SessionState::Live(s) => assert_eq!(s.last_activity, elsewhere, "never back"),
                other => panic!("{other:?}"),
            }
        }
    }
}

/// An end answered from the view in an outage is replayed with its own reason: a session
/// replaced in the outage owes Faspex its logout (`logouts` gets its cookie), a logout does not
/// (the gateway logged Faspex out itself).
#[tokio::test]
async fn an_end_in_an_outage_is_replayed_with_its_reason() {
    for (reason, owed) in [(EndReason::Replaced, 1), (EndReason::Logout, 0)] {
        let mut server = RedisServer::start();
        let (store, key, t) = viewed_with_grace(&server, "why", 30 * SEC).await;
        with_faspex_cookie(&store, &key, t).await;
        ended_in_an_outage(&mut server, &store, &key, reason).await;
        store.check(t0()).await.unwrap();
        let direct = self::store(&server, "why", Time::Given).await;
        let in_redis = direct.session(&key, t0(), false, t).await.unwrap();
        assert!(
            !matches!(in_redis, SessionState::Live(_)),
            "the replay ended it in Redis: {in_redis:?}"
        );
        assert_eq!(owed_logouts(&server, "why").await, owed, "{reason:?}");
    }
}

/// A session replaced in an outage, whose person logs in again on the same client before the
/// replay: the admission renews it in Redis, which ends it as no end at all, so the account's
/// queued end goes to Redis first, with its reason, and Faspex is still owed its logout. Another
/// account's end that keeps failing does not stand in its way.
#[tokio::test]
async fn a_renewal_before_the_replay_keeps_the_logout_an_outage_end_owes() {
    let mut server = RedisServer::start();
    let (store, key, t) = viewed_with_grace(&server, "renew", 30 * SEC).await;
    with_faspex_cookie(&store, &key, t).await;
    // bob's end, queued ahead of ann's, fails every time (his record is one the library cannot
    // read): it does not hold up ann's.
    let bob = bob_viewed(&store, t).await;
    server.stop();
    for (k, why) in [(&bob, EndReason::Logout), (&key, EndReason::Replaced)] {
        let ended = store.end_session(k, why).await;
        assert!(matches!(ended, Ok(Some(_))), "{ended:?}");
    }
    server.start_again();
    reconnected(&store).await;
    unreadable(&server, "renew", "k2").await;
    let again = Admission {
        client: ClientId("client-k1".into()),
        ..admission("k9", "ann", t0() + Duration::from_millis(1_500))
    };
    let admit = store.admit(again, seats(5)).await.unwrap();
    match admit.outcome {
        AdmitOutcome::Admitted { renewed_from, .. } => {
            assert_eq!(renewed_from, None, "k1 had ended before the admission")
        }
        other => panic!("{other:?}"),
    }
    assert!(admit.ended.is_empty(), "reported when it was made");
    assert_eq!(owed_logouts(&server, "renew").await, 1);
    // Nor is it sent again by the replay (only bob's failing end is left).
    store.check(t0() + 2 * SEC).await.unwrap();
    assert_eq!(owed_logouts(&server, "renew").await, 1);
}

/// A session ended here in an outage, then ended in Redis otherwise before the replay (here by
/// the sweep, past its idle deadline), is not reported ended a second time, and its queued end
/// goes.
#[tokio::test]
async fn an_end_made_in_an_outage_is_not_reported_again_by_the_sweep() {
    let mut server = RedisServer::start();
    let (store, key, t) = viewed_with_grace(&server, "twice", 30 * SEC).await;
    store
        .admit(admission("k2", "bob", t0()), seats(5))
        .await
        .unwrap();
    ended_in_an_outage(&mut server, &store, &key, EndReason::Logout).await;
    let later = t0() + 2 * HOUR;
    let swept = store.sweep(later, t, 60 * SEC).await.unwrap();
    let reported: Vec<&str> = swept.ended.iter().map(|(s, _)| &*s.key.0).collect();
    assert_eq!(reported, ["k2"], "bob's idle end only");
    let before = library_calls(&server).await;
    store.check(later).await.unwrap();
    // (the check's own calls: ready, the secret, the probe; no end left to replay)
    let replayed = library_calls(&server).await - before;
    let again = store.sweep(later, t, 60 * SEC).await.unwrap();
    assert!(again.ended.is_empty());
    // A second check makes as many calls as the first: nothing was queued.
    let before = library_calls(&server).await;
    store.check(later).await.unwrap();
    assert_eq!(library_calls(&server).await - before, replayed);
}

/// A session ended here in an outage and ended again before the replay (a second logout, or an
/// admission replacing it) is not reported ended again: its queued end goes to Redis then, with
/// the reason it was made for, and the session lists leave it out meanwhile.
#[tokio::test]
async fn an_end_made_in_an_outage_is_sent_not_reported_by_a_second_end() {
    let mut server = RedisServer::start();
    let (store, key, t) = viewed_with_grace(&server, "second", 30 * SEC).await;
    with_faspex_cookie(&store, &key, t).await;
    ended_in_an_outage(&mut server, &store, &key, EndReason::Replaced).await;
    assert!(store.sessions().await.unwrap().is_empty(), "not listed");
    let second = store.end_session(&key, EndReason::Logout).await;
    assert!(matches!(second, Ok(None)), "not reported again: {second:?}");
    let direct = self::store(&server, "second", Time::Given).await;
    let in_redis = direct.session(&key, t0(), false, t).await.unwrap();
    assert!(!matches!(in_redis, SessionState::Live(_)), "{in_redis:?}");
    assert_eq!(
        owed_logouts(&server, "second").await,
        1,
        "ended as replaced: Faspex's logout owed"
    );
}
