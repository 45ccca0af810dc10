//! The Redis store through faults, on real processes: a master, two replicas and three sentinels
//! ([`SentinelSet`]) with the master killed (`kill -9`) or stopped (`SIGSTOP`, then `SIGCONT`);
//! a Redis restarted empty with two gateways remembering locks and an unlock; a lock older than
//! the last unlock never written back; Sentinel over TLS (a failover followed, a CA that signed
//! nothing refused at once); and `[store.redis]` with Sentinel (an unknown `master_name`,
//! sentinels that cannot be reached, `ca_file` only with `rediss://` sentinels). Test builds only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::WATCH_EVERY;
use super::sentinel::{SentinelSet, DOWN_AFTER_MS, MASTER_NAME};
use super::server::RedisServer;
use super::tests::seats;
use super::{RedisOptions, RedisStore, Target, Time};
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::config::RedisConfig;
use crate::store::conformance::lockout;
use crate::store::{
    AccountKind, Admission, AdmitOutcome, AttemptResult, AttemptStart, LockKey, PolicyStore,
    StoreError,
};

const HOUR: Duration = Duration::from_secs(3600);

/// The shared test admission (`tests.rs`), at the wall clock's now: the functions here take time
/// from Redis.
fn admission(key: &str, account: &str) -> Admission {
    super::tests::admission(key, account, now())
}

fn now() -> Timestamp {
    SystemClock.now()
}

fn through_sentinels(set: &SentinelSet, prefix: &str, wait_replicas: u32) -> RedisOptions {
    let mut o = RedisOptions::sentinel(set.sentinel_addrs(), MASTER_NAME, prefix, Time::Server);
    o.wait_replicas = wait_replicas;
    o.wait_timeout = Duration::from_millis(500);
    o
}

/// Lock `account` by failed checks (the path a directory account takes), as `store` sees it.
/// Admit `user0`… `user{n-1}` (sessions `k0`…) under a cap of 3, each one admitted.
async fn admit_users(store: &RedisStore, n: usize) {
    for i in 0..n {
        let a = store
            .admit(admission(&format!("k{i}"), &format!("user{i}")), seats(3))
            .await
            .unwrap();
        assert!(
            matches!(a.outcome, AdmitOutcome::Admitted { .. }),
            "{:?}",
            a.outcome
        );
    }
}

async fn lock_by_failures(store: &RedisStore, account: &str) {
    let key = LockKey::account(account);
    for _ in 0..lockout().threshold {
        if let AttemptStart::Proceed(t) = store.begin_attempt(&key, now(), lockout()).await.unwrap()
        {
            store
                .finish_attempt(t, AttemptResult::Rejected, now(), lockout())
                .await
                .unwrap();
        }
    }
    assert!(store.lock_state(&key, now()).await.unwrap().is_some());
}

/// The first call that succeeds within `within`; the errors before it must be
/// [`StoreError::Remote`] (503), never anything else.
async fn first_ok<T, F, Fut>(within: Duration, mut call: F) -> (T, usize)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + within;
    let mut failed = 0;
    loop {
        match call().await {
            Ok(v) => return (v, failed),
            Err(StoreError::Remote { .. }) if Instant::now() < deadline => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("after {failed} refusals: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_with_seats_locks_and_unlocks_intact() {
    let mut set = SentinelSet::start();

    // A master_name the sentinels do not know is a configuration error naming it.
    let mut unknown = through_sentinels(&set, "ha", 1);
    unknown.target = Target::Sentinel {
        sentinels: set.sentinel_addrs(),
        master_name: "no-such-master".into(),
        tls: false,
    };
    match RedisStore::connect(unknown).await {
        Err(StoreError::Setting {
            key: "store.redis.master_name",
            reason,
        }) => assert!(reason.contains("no-such-master"), "{reason}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected to an unknown master"),
    }

    let store = RedisStore::connect(through_sentinels(&set, "ha", 1))
        .await
        .unwrap();
    admit_users(&store, 3).await;
    let lock_a = store
        .lock_account("ann", AccountKind::Directory, now(), now() + HOUR)
        .await
        .unwrap();
    lock_by_failures(&store, "bob").await;
    store.unlock_account("bob").await.unwrap();
    assert_eq!(store.wait_shortfalls(), 0);

    let old = set.kill_master();
    let killed = Instant::now();
    let set = Arc::new(set);
    let watching = Arc::clone(&set);
    let failover =
        tokio::task::spawn_blocking(move || watching.wait_failover(old, Duration::from_secs(30)));
    // Logins during the gap get 503 (Remote), or a full cap: never a seat over it.
    let mut refused = 0;
    let mut first_answer = None;
    let mut i = 0;
    while !failover.is_finished() || first_answer.is_none() {
        i += 1;
        match store
            .admit(admission(&format!("gap{i}"), &format!("gap{i}")), seats(3))
            .await
        {
            Err(StoreError::Remote { .. }) => refused += 1,
            Ok(a) => {
                assert!(
                    matches!(
                        a.outcome,
                        AdmitOutcome::LicenseFull { .. } | AdmitOutcome::Unsaved { .. }
                    ),
                    "{:?}",
                    a.outcome
                );
                first_answer.get_or_insert(killed.elapsed());
            }
            Err(e) => panic!("{e}"),
        }
        assert!(
            killed.elapsed() < Duration::from_secs(40),
            "no answer since the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (new, took) = failover.await.unwrap();
    assert_ne!(new, old);
    assert!(refused > 0, "no call noticed the dead master");
    eprintln!(
        "failover (down-after-milliseconds {DOWN_AFTER_MS}): sentinels agreed after {took:?}; \
         clients refused (503) {refused} times, first answer {:?} after the kill",
        first_answer
    );

    // After the failover: the seats, the lock and the unlock as they were; seats = accounts =
    // sessions.
    let c = store.counts(now()).await.unwrap();
    assert_eq!((c.seats, c.sessions), (3, 3), "{c:?}");
    let sessions = store.sessions().await.unwrap();
    let mut accounts: Vec<&str> = sessions.iter().map(|s| &*s.account).collect();
    accounts.dedup();
    assert_eq!(accounts, ["user0", "user1", "user2"]);
    assert_eq!(
        store
            .lock_state(&LockKey::account("ann"), now())
            .await
            .unwrap(),
        Some(lock_a.clone())
    );
    assert_eq!(
        store
            .lock_state(&LockKey::account("bob"), now())
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.lockouts(now()).await.unwrap(), vec![lock_a]);
    // The new master had them already (replicated with WAIT): nothing needed writing back.
    assert_eq!(store.written_back().written, 0);
    let mut c = set.connection(new);
    let tombstone: Option<String> = redis::cmd("GET").arg("{ha}:u:bob").query(&mut c).unwrap();
    assert!(tombstone.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_master_is_never_written_to_once_replaced() {
    let set = Arc::new(SentinelSet::start());
    let store = RedisStore::connect(through_sentinels(&set, "stop", 0))
        .await
        .unwrap();
    store
        .lock_account("ann", AccountKind::Directory, now(), now() + HOUR)
        .await
        .unwrap();
    let old = set.master_port();
    let fcalls_before = set.calls(old, "fcall");
    assert!(fcalls_before > 0);
    set.stop(old);
    let watching = Arc::clone(&set);
    let (new, _) =
        tokio::task::spawn_blocking(move || watching.wait_failover(old, Duration::from_secs(30)))
            .await
            .unwrap();
    // The watcher asks a sentinel every WATCH_EVERY and leaves the old master before any call
    // is sent to it.
    tokio::time::sleep(WATCH_EVERY * 3).await;
    let lock = store
        .lock_account("bob", AccountKind::Directory, now(), now() + HOUR)
        .await
        .unwrap();
    let until = |port: u16, account: &str| -> Option<String> {
        redis::cmd("HGET")
            .arg(format!("{{stop}}:l:{account}"))
            .arg("until")
            .query(&mut set.connection(port))
            .unwrap()
    };
    assert_eq!(until(new, "bob"), Some(lock.until.as_millis().to_string()));

    // It wakes, still a master until Sentinel turns it into a replica: every write lands on the
    // new master, none on the old one.
    set.resume(old);
    let mut locks = Vec::new();
    for i in 0..20 {
        let account = format!("cat{i}");
        let lock = store
            .lock_account(&account, AccountKind::Directory, now(), now() + HOUR)
            .await
            .unwrap();
        locks.push((account, lock));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (account, lock) in &locks {
        assert_eq!(
            until(new, account),
            Some(lock.until.as_millis().to_string())
        );
    }
    assert_eq!(
        set.calls(old, "fcall"),
        fcalls_before,
        "the gateway called a function on the demoted master"
    );
    // The demoted one becomes a replica of the new master and gets the writes from it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while set.role(old).as_deref() != Some("slave") {
        assert!(Instant::now() < deadline, "the old master was not demoted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while until(old, "cat19").is_none() {
        assert!(Instant::now() < deadline, "the demoted master did not sync");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(set.calls(old, "fcall"), fcalls_before);
}

#[tokio::test]
async fn redis_restarted_empty_gets_remembered_locks_back_but_no_unlock_undone() {
    let mut server = RedisServer::start_volatile();
    let opts = RedisOptions::new(server.url(), "empty", Time::Server);
    let one = RedisStore::connect(opts.clone()).await.unwrap();
    let two = RedisStore::connect(opts).await.unwrap();
    let ann = one
        .lock_account("ann", AccountKind::Local, now(), now() + HOUR)
        .await
        .unwrap();
    lock_by_failures(&one, "bob").await;
    // The second gateway sees bob's lock (it checks him) and locks dan by failures.
    let bob = two
        .lock_state(&LockKey::account("bob"), now())
        .await
        .unwrap();
    assert!(bob.is_some());
    lock_by_failures(&two, "dan").await;
    let dan = two
        .lock_state(&LockKey::account("dan"), now())
        .await
        .unwrap();
    // The first unlocks bob; the second still remembers bob's lock.
    one.unlock_account("bob").await.unwrap();
    assert_eq!(one.remembered(), (1, 1));
    assert_eq!(two.remembered(), (2, 0));

    server.restart();
    // The second gateway comes back first: it writes back bob's lock (Redis has no tombstone
    // yet) and dan's. The call that found the connection gone was refused (503).
    let (c, refused) = first_ok(Duration::from_secs(5), || two.counts(now())).await;
    assert!(refused >= 1);
    assert_eq!(c.accounts_locked, 2);
    // The first comes back: its unlock lifts bob's older lock; ann's lock is written back.
    let (_, refused) = first_ok(Duration::from_secs(5), || one.probe()).await;
    assert!(refused >= 1);
    for store in [&one, &two] {
        assert_eq!(
            store
                .lock_state(&LockKey::account("ann"), now())
                .await
                .unwrap(),
            Some(ann.clone())
        );
        assert_eq!(
            store
                .lock_state(&LockKey::account("bob"), now())
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .lock_state(&LockKey::account("dan"), now())
                .await
                .unwrap(),
            dan
        );
    }
    assert_eq!(one.written_back().written, 1);
    assert_eq!(two.written_back().written, 2);
    // The second saw the tombstone when it read bob again: it forgot bob's lock, and now
    // remembers ann's (read above) and dan's.
    assert_eq!(two.remembered(), (2, 0));

    // Once more, the other way round: the unlock first, then the older lock is refused.
    server.restart();
    first_ok(Duration::from_secs(5), || one.probe()).await;
    first_ok(Duration::from_secs(5), || two.probe()).await;
    assert_eq!(
        one.lock_state(&LockKey::account("bob"), now())
            .await
            .unwrap(),
        None
    );
    assert_eq!(one.lockouts(now()).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_lock_older_than_the_last_unlock_is_never_written_back() {
    let server = RedisServer::start();
    let store = RedisStore::connect(RedisOptions::new(server.url(), "epoch", Time::Server))
        .await
        .unwrap();
    let c = redis::Client::open(server.url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let until = now() + HOUR;
    store
        .lock_account("ann", AccountKind::Directory, now(), until)
        .await
        .unwrap();
    store
        .lock_account("bob", AccountKind::Directory, now(), until)
        .await
        .unwrap();
    let get = |key: String, field: Option<&'static str>| {
        let mut c = c.clone();
        async move {
            let mut cmd = redis::cmd(if field.is_some() { "HGET" } else { "GET" });
            cmd.arg(format!("{{epoch}}:{key}"));
            if let Some(f) = field {
                cmd.arg(f);
            }
            let v: Option<u64> = cmd.query_async(&mut c).await.unwrap();
            v.unwrap_or(0)
        }
    };
    let ann_epoch = get("l:ann".into(), Some("epoch")).await;
    let bob_epoch = get("l:bob".into(), Some("epoch")).await;
    assert!(
        bob_epoch > ann_epoch && ann_epoch > 1_700_000_000_000,
        "{ann_epoch} {bob_epoch}"
    );
    store.unlock_account("ann").await.unwrap();
    let tombstone = get("u:ann".into(), None).await;
    assert!(tombstone > bob_epoch);
    let mut raw = c.clone();
    let ttl: i64 = redis::cmd("PTTL")
        .arg("{epoch}:u:ann")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        ttl > HOUR.as_millis() as i64,
        "the tombstone outlives the lock it lifted: {ttl}"
    );

    let lock = |key: &str, epoch: u64, until: Timestamp| {
        serde_json::json!({"key": key, "since": now().as_millis(), "until": until.as_millis(),
            "failures": 0, "admin": true, "akind": "directory", "epoch": epoch})
    };
    let restore = |payload: serde_json::Value| {
        let mut c = c.clone();
        async move {
            let r: String = redis::cmd("FCALL")
                .arg("faspex_gate_v2_restore_locks")
                .arg(2)
                .arg("{epoch}:")
                .arg("{epoch}:locks")
                .arg("s")
                .arg(payload.to_string())
                .query_async(&mut c)
                .await
                .unwrap();
            serde_json::from_str::<serde_json::Value>(&r).unwrap()
        }
    };
    let r = restore(serde_json::json!({"locks": [
        // Older than the unlock: refused; so is its address's lock.
        lock("ann", ann_epoch, until),
        lock("ann\u{0}192.0.2.9", tombstone - 1, until),
        // Older than the lock here: kept as it is.
        lock("bob", bob_epoch - 1, until + HOUR),
        // Not here: written.
        lock("cat", tombstone + 5, until),
        // Ended: refused.
        lock("dan", tombstone + 6, now()),
    ], "unlocks": []}))
    .await;
    assert_eq!(r["written"], 1, "{r}");
    assert_eq!(r["refused"], 3, "{r}");
    assert_eq!(r["kept"], 1, "{r}");
    for (account, locked) in [("ann", false), ("bob", true), ("cat", true), ("dan", false)] {
        let state = store
            .lock_state(&LockKey::account(account), now())
            .await
            .unwrap();
        assert_eq!(state.is_some(), locked, "{account}: {state:?}");
    }
    let ann_at = LockKey {
        account: "ann".into(),
        ip: Some("192.0.2.9".parse().unwrap()),
    };
    assert_eq!(store.lock_state(&ann_at, now()).await.unwrap(), None);
    // Epochs handed out later follow the ones written back.
    store
        .lock_account("eve", AccountKind::Directory, now(), until)
        .await
        .unwrap();
    assert!(get("l:eve".into(), Some("epoch")).await > tombstone + 5);
    // An unlock written back lifts the older locks it finds, not newer ones.
    let r = restore(serde_json::json!({"locks": [],
        "unlocks": [{"account": "cat", "epoch": tombstone + 4, "keep": 60000},
                    {"account": "bob", "epoch": bob_epoch + 1, "keep": 60000}]}))
    .await;
    assert_eq!(r["written"], 0, "{r}");
    for (account, locked) in [("bob", false), ("cat", true)] {
        let state = store
            .lock_state(&LockKey::account(account), now())
            .await
            .unwrap();
        assert_eq!(state.is_some(), locked, "{account}: {state:?}");
    }
}

#[tokio::test]
async fn sentinel_settings_are_taken_and_unreachable_sentinels_are_remote() {
    let mut c = RedisConfig {
        urls: vec![],
        sentinels: vec!["127.0.0.1:1".into(), "[::1]:1".into()],
        master_name: Some("gate".into()),
        username: None,
        password_file: None,
        password: None,
        ca_file: None,
        key_prefix: "faspex-gate".into(),
        wait_replicas: 1,
        wait_timeout: Duration::from_millis(100),
        session_cache: Duration::from_secs(1),
        outage_grace: Duration::from_secs(30),
    };
    let opts = RedisOptions::from_config(&c).unwrap();
    assert_eq!(
        opts.target,
        Target::Sentinel {
            sentinels: c.sentinels.clone(),
            master_name: "gate".into(),
            tls: false,
        }
    );
    assert_eq!(opts.time, Time::Server);
    // Nothing listens there: after the search's budget, a Remote error (503), not a setting.
    let began = Instant::now();
    match RedisStore::connect(opts).await {
        Err(StoreError::Remote { reason }) => assert!(reason.contains("sentinel"), "{reason}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    // ca_file is for TLS: refused next to plain sentinels, taken with rediss:// ones.
    c.ca_file = Some("/etc/ssl/certs/ca-certificates.crt".into());
    assert!(matches!(
        RedisOptions::from_config(&c),
        Err(StoreError::Setting {
            key: "store.redis.ca_file",
            ..
        })
    ));
    c.sentinels = vec!["rediss://127.0.0.1:1".into(), "rediss://[::1]:1".into()];
    let opts = RedisOptions::from_config(&c).unwrap();
    assert_eq!(
        opts.target,
        Target::Sentinel {
            sentinels: vec!["127.0.0.1:1".into(), "[::1]:1".into()],
            master_name: "gate".into(),
            tls: true,
        }
    );
    assert!(opts.describe().contains("(TLS)"), "{}", opts.describe());
}

/// Sentinels, master and replicas on TLS only (`rediss://` sentinels, `ca_file` the test CA): the
/// store admits and locks through them; a client trusting another CA gets an error naming the
/// certificate and `store.redis.ca_file` within the search's budget, not a hang; `kill -9` of the
/// master is followed to the new one (over TLS too), with the seats and the lock intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_tls_sentinels_a_failover_is_followed_and_another_ca_is_refused() {
    let mut set = SentinelSet::start_tls();
    let ca = set.ca_file().map(Path::to_path_buf);
    let config = |ca_file: Option<PathBuf>| RedisConfig {
        urls: vec![],
        sentinels: set.sentinel_entries(),
        master_name: Some(MASTER_NAME.into()),
        username: None,
        password_file: None,
        password: None,
        ca_file,
        key_prefix: "tls".into(),
        wait_replicas: 1,
        wait_timeout: Duration::from_millis(500),
        session_cache: Duration::from_secs(1),
        outage_grace: Duration::from_secs(30),
    };
    assert!(set.sentinel_entries()[0].starts_with("rediss://127.0.0.1:"));

    // A CA that signed nothing here: refused at once (a Remote error, so a gateway starts not
    // ready and says why), naming the certificate and the key.
    let began = Instant::now();
    let wrong =
        RedisOptions::from_config(&config(set.other_ca_file().map(Path::to_path_buf))).unwrap();
    match RedisStore::connect(wrong).await {
        Err(StoreError::Remote { reason }) => {
            eprintln!("trusting another CA: {reason}");
            assert!(reason.contains("not trusted"), "{reason}");
            assert!(reason.contains("store.redis.ca_file"), "{reason}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("trusted a certificate its CA did not sign"),
    }
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );

    let store = RedisStore::connect(RedisOptions::from_config(&config(ca)).unwrap())
        .await
        .unwrap();
    admit_users(&store, 2).await;
    let lock = store
        .lock_account("ann", AccountKind::Directory, now(), now() + HOUR)
        .await
        .unwrap();
    assert_eq!(
        store.wait_shortfalls(),
        0,
        "the replicas acknowledged over TLS"
    );

    let old = set.kill_master();
    let killed = Instant::now();
    let set = Arc::new(set);
    let watching = Arc::clone(&set);
    let failover =
        tokio::task::spawn_blocking(move || watching.wait_failover(old, Duration::from_secs(30)));
    let ((), refused) = first_ok(Duration::from_secs(30), || async {
        let a = store.admit(admission("k2", "user2"), seats(3)).await?;
        assert!(
            matches!(a.outcome, AdmitOutcome::Admitted { .. }),
            "{:?}",
            a.outcome
        );
        Ok(())
    })
    .await;
    let (new, took) = failover.await.unwrap();
    assert_ne!(new, old);
    assert!(refused > 0, "no call noticed the dead master");
    eprintln!(
        "TLS failover (down-after-milliseconds {DOWN_AFTER_MS}): sentinels agreed after {took:?}; \
         the store refused {refused} admissions, the first admitted {:?} after the kill",
        killed.elapsed()
    );
    let c = store.counts(now()).await.unwrap();
    assert_eq!((c.seats, c.sessions), (3, 3), "{c:?}");
    assert_eq!(
        store
            .lock_state(&LockKey::account("ann"), now())
            .await
            .unwrap(),
        Some(lock)
    );
    // The new master (TLS only: it has no plain port) holds them.
    let seats_there: u64 = redis::cmd("SCARD")
        .arg("{tls}:seats")
        .query(&mut set.connection(new))
        .unwrap();
    assert_eq!(seats_there, 3);
}
