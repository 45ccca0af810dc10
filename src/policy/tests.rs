//! The policies against a fake clock, over the real embedded store in a temporary folder.
//!
//! The directory here is [`TestDirectory`]: a table of passwords that counts the checks it is
//! asked to run. That is the seam the engine is built around (LDAP is tested against slapd with
//! the credential-check work); here it lets a test count exactly how many guesses got through.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::auth::testing::TestDirectory;
use crate::auth::Lookup;
use crate::auth::{Directory, DirectoryError, Verdict};
use crate::clock::ManualClock;
use crate::clock::{Clock, Timestamp};
use crate::config::LocalAccounts;
use crate::config::{LockoutKey, OneClient, PolicyConfig};
use crate::proxy::error::refusal_status;
use crate::store::embedded::EmbeddedStore;
use crate::store::failing::FailingStore;
use crate::store::{
    AccountKind, AttemptResult, AttemptStart, ClientId, ClientKind, EndReason, Lock, LockKey,
    PolicyStore, Session, StoreError,
};

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const MS: Duration = Duration::from_millis(1);

/// The contract's defaults, with the site's domains.
fn contract_defaults() -> PolicyConfig {
    PolicyConfig {
        username_domains: vec!["HUTCH".into(), "fhcrc.org".into()],
        ..PolicyConfig::default()
    }
}

#[test]
fn the_defaults_are_the_sites_policy() {
    let d = PolicyConfig::default();
    assert_eq!(d.max_sessions, 10, "ten concurrent logins");
    assert_eq!(
        d.one_client_per_account,
        OneClient::Reject,
        "one client at a time"
    );
    assert_eq!(
        (d.idle_timeout, d.api_idle_timeout),
        (HOUR, HOUR),
        "one hour of inactivity"
    );
    assert_eq!(d.absolute_timeout, Some(12 * HOUR));
    assert_eq!(
        (d.lockout_threshold, d.lockout_window, d.lockout_duration),
        (5, MIN, HOUR),
        "five failures within one minute lock for one hour"
    );
    assert_eq!(d.lockout_key, LockoutKey::Account);
    assert_eq!(
        (
            d.login_attempts_per_ip_per_minute,
            d.public_requests_per_ip_per_minute,
            d.max_tracked_usernames
        ),
        (30, 600, 100_000)
    );
}

/// Keeps a line per event; panics once at an event whose line starts with the prefix it is
/// told to ([`Recorder::panic_at`]), as a broken observer would.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>, Mutex<Option<String>>);

impl Recorder {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn count(&self, prefix: &str) -> usize {
        self.lines()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }
    fn panic_at(&self, prefix: &str) {
        *self.1.lock().unwrap() = Some(prefix.to_owned());
    }
}

impl Observer for Recorder {
    fn event(&self, e: &PolicyEvent<'_>) {
        let line = match e {
            PolicyEvent::Login {
                account, result, ..
            } => {
                format!("login {} {}", account.unwrap_or("-"), result.as_str())
            }
            PolicyEvent::LockedOut(l) => format!("lockout {}", l.key),
            PolicyEvent::LockExpired(l) => format!("lock-expired {}", l.key),
            PolicyEvent::Unlocked { account, lifted } => {
                format!("unlock {account} {}", lifted.len())
            }
            PolicyEvent::AdminLocked(l) => format!("admin-lock {}", l.key),
            PolicyEvent::Kicked { accounts } => format!("kicked {}", accounts.join(" ")),
            PolicyEvent::SessionStarted { session, renewed } => {
                format!(
                    "start {}{}",
                    session.account,
                    if *renewed { " renewed" } else { "" }
                )
            }
            PolicyEvent::SessionEnded(s, why) => format!("end {} {}", s.account, why.as_str()),
            PolicyEvent::Recheck {
                account, result, ..
            } => format!("recheck {} {}", account.unwrap_or("-"), result.as_str()),
            PolicyEvent::DirectoryCheck { result, .. } => format!("directory {}", result.as_str()),
        };
        let panics = {
            let mut at = self.1.lock().unwrap();
            let hit = at.as_ref().is_some_and(|p| line.starts_with(p.as_str()));
            if hit {
                *at = None;
            }
            hit
        };
        assert!(!panics, "an observer panicked at {line} (simulated)");
        self.0.lock().unwrap().push(line);
    }
}

/// A login request of `user` with `password`, from `ip` and `client`, by the tests' agent and
/// with no take-over.
fn request<'a>(
    user: &'a str,
    password: &'a str,
    ip: &str,
    client: &str,
    kind: ClientKind,
) -> LoginRequest<'a> {
    LoginRequest {
        username: user,
        password,
        ip: ip.parse().unwrap(),
        agent: "test-agent/1.0",
        client: ClientId(client.into()),
        kind,
        takeover: false,
    }
}

struct Harness {
    policy: Policy,
    clock: ManualClock,
    dir: Arc<TestDirectory>,
    /// The same directory, as the engine takes it.
    directory: Arc<dyn Directory>,
    events: Arc<Recorder>,
    store: Arc<EmbeddedStore>,
    /// The store as the engine has it: writes fail when told.
    failing: Arc<FailingStore>,
    tmp: tempfile::TempDir,
}

/// Check rules whose ceiling never bites, for tests about everything else.
fn unlimited_checks() -> CheckRules {
    CheckRules {
        max_checks_per_second: 1_000_000,
        ..CheckRules::default()
    }
}

fn engine(
    cfg: PolicyConfig,
    checks: CheckRules,
    store: &Arc<FailingStore>,
    clock: &ManualClock,
    events: &Arc<Recorder>,
) -> Policy {
    Policy::new(
        cfg,
        checks,
        store.clone(),
        Arc::new(clock.clone()),
        events.clone(),
    )
}

impl Harness {
    fn new(cfg: PolicyConfig) -> Self {
        Self::with_users(cfg, 0)
    }

    fn with_users(cfg: PolicyConfig, n: usize) -> Self {
        Self::with_rules(cfg, n, unlimited_checks())
    }

    fn with_rules(cfg: PolicyConfig, n: usize, checks: CheckRules) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(tmp.path()).unwrap());
        let failing = Arc::new(FailingStore::new(store.clone()));
        let clock = ManualClock::at_2026();
        let events = Arc::new(Recorder::default());
        let policy = engine(cfg, checks, &failing, &clock, &events);
        let dir = TestDirectory::with_users(n);
        Self {
            policy,
            clock,
            directory: dir.clone(),
            dir,
            events,
            store,
            failing,
            tmp,
        }
    }

    /// The same store folder, opened again by a new engine (as after a restart).
    async fn restart(self) -> Harness {
        let Harness {
            policy,
            clock,
            dir,
            directory,
            store,
            failing,
            tmp,
            ..
        } = self;
        let cfg = (**policy.cfg()).clone();
        let checks = **policy.inner.checks.load();
        drop(policy);
        drop(failing);
        store.close().await.unwrap();
        drop(store);
        let store = Arc::new(EmbeddedStore::open(tmp.path()).unwrap());
        let failing = Arc::new(FailingStore::new(store.clone()));
        let events = Arc::new(Recorder::default());
        let policy = engine(cfg, checks, &failing, &clock, &events);
        Harness {
            policy,
            clock,
            dir,
            directory,
            events,
            store,
            failing,
            tmp,
        }
    }

    fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }

    async fn login_as(
        &self,
        user: &str,
        password: &str,
        ip: &str,
        client: &str,
        kind: ClientKind,
        takeover: bool,
    ) -> Result<Admitted, LoginRefused> {
        self.policy
            .login(
                LoginRequest {
                    takeover,
                    ..request(user, password, ip, client, kind)
                },
                &self.directory,
            )
            .await
    }

    /// A browser login of `user` with its right password from client `client`.
    async fn browser(&self, user: &str, client: &str) -> Result<Admitted, LoginRefused> {
        let pw = format!("pw-{user}");
        self.login_as(user, &pw, "192.0.2.1", client, ClientKind::Browser, false)
            .await
    }

    async fn wrong(&self, user: &str) -> Result<Admitted, LoginRefused> {
        self.login_as(
            user,
            "wrong",
            "192.0.2.1",
            "c-attacker",
            ClientKind::Browser,
            false,
        )
        .await
    }

    /// `n` wrong passwords for `user`, whatever each is answered.
    async fn wrongs(&self, user: &str, n: usize) {
        for _ in 0..n {
            self.wrong(user).await.ok();
        }
    }

    async fn seats(&self) -> usize {
        self.policy.status().await.unwrap().seats_used
    }

    async fn live(&self, a: &Admitted, path: &str) -> Result<Session, SessionGone> {
        self.policy.session(&a.token, path).await.unwrap()
    }

    async fn locked(&self, user: &str) -> Option<Lock> {
        self.policy
            .lock_state(user, "192.0.2.1".parse().unwrap())
            .await
            .unwrap()
    }
}

/// Wait (in real time, briefly) until the directory has been asked `n` times.
async fn wait_for_checks(h: &Harness, n: usize) {
    let started = std::time::Instant::now();
    while h.dir.checks() < n {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no check started"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn is_locked(r: &Result<Admitted, LoginRefused>) -> bool {
    matches!(r, Err(LoginRefused::AccountLocked { .. }))
}

fn is_bad(r: &Result<Admitted, LoginRefused>) -> bool {
    matches!(r, Err(LoginRefused::BadCredentials))
}

// ----- lockout: rules and boundaries -----

#[tokio::test]
async fn the_fifth_failure_at_59_9_seconds_locks_and_is_answered_locked() {
    let h = Harness::new(contract_defaults());
    for i in 0..4 {
        assert!(is_bad(&h.wrong("ann").await), "failure {i}");
        h.advance(Duration::from_millis(14_975)); // 4 × 14.975 s = 59.9 s
    }
    let fifth = h.wrong("ann").await;
    match &fifth {
        Err(LoginRefused::AccountLocked {
            until, retry_after, ..
        }) => {
            assert_eq!(*until, h.policy.now() + HOUR);
            assert_eq!(*retry_after, HOUR);
        }
        other => panic!("the fifth failure must answer locked: {other:?}"),
    }
    assert_eq!(
        h.dir.checks(),
        5,
        "the fifth guess was checked, then locked"
    );
    assert_eq!(h.events.count("lockout ann"), 1);
    // Every attempt while locked is answered locked, and none reaches the directory, right
    // password included.
    assert!(is_locked(&h.browser("ann", "c1").await));
    assert!(is_locked(&h.wrong("ann").await));
    assert_eq!(h.dir.checks(), 5);
}

#[tokio::test]
async fn five_failures_spread_over_61_seconds_do_not_lock() {
    let h = Harness::new(contract_defaults());
    for t in [0u64, 15, 30, 45] {
        h.clock
            .set(Timestamp::from_millis(1_767_225_600_000 + t * 1000));
        assert!(is_bad(&h.wrong("ann").await));
    }
    h.clock
        .set(Timestamp::from_millis(1_767_225_600_000 + 61_000));
    assert!(is_bad(&h.wrong("ann").await), "the first failure slid out");
    assert!(h.locked("ann").await.is_none());
    // The window slides: the 0 s failure has gone, four remain, one more locks.
    assert!(is_locked(&h.wrong("ann").await));
}

#[tokio::test]
async fn exactly_sixty_seconds_apart_is_outside_the_window() {
    let h = Harness::new(contract_defaults());
    assert!(is_bad(&h.wrong("ann").await));
    h.advance(Duration::from_secs(15));
    for _ in 0..3 {
        assert!(is_bad(&h.wrong("ann").await));
    }
    h.advance(Duration::from_secs(45)); // the first is now exactly 60 s old
    assert!(is_bad(&h.wrong("ann").await));
    h.advance(MS);
    assert!(is_locked(&h.wrong("ann").await));
}

#[tokio::test]
async fn the_lock_lifts_at_exactly_one_hour_by_itself() {
    let h = Harness::new(contract_defaults());
    h.wrongs("ann", 5).await;
    let lock = h.locked("ann").await.expect("locked");
    assert_eq!(lock.until, lock.since + HOUR);
    assert_eq!(lock.failures, 5);
    h.advance(HOUR - MS);
    assert!(
        is_locked(&h.browser("ann", "c1").await),
        "still locked 1 ms before"
    );
    h.advance(MS);
    assert!(h.locked("ann").await.is_none());
    assert_eq!(h.policy.status().await.unwrap().accounts_locked, 0);
    let checks = h.dir.checks();
    assert!(
        h.browser("ann", "c1").await.is_ok(),
        "unlocked at exactly 1 h"
    );
    assert_eq!(h.dir.checks(), checks + 1);
    // The sweeper removes the record and says so.
    h.policy.sweep().await.unwrap();
    assert_eq!(h.events.count("lock-expired ann"), 1);
}

#[tokio::test]
async fn after_a_lock_lifts_the_count_starts_afresh() {
    let h = Harness::new(contract_defaults());
    h.wrongs("ann", 5).await;
    h.advance(HOUR);
    for _ in 0..4 {
        assert!(is_bad(&h.wrong("ann").await));
    }
    assert!(is_locked(&h.wrong("ann").await));
}

#[tokio::test]
async fn a_right_password_does_not_reset_the_window() {
    // Every wrong attempt inside the window counts: an attacker gains no guesses from the
    // owner's logins in between.
    let h = Harness::new(contract_defaults());
    h.wrongs("ann", 4).await;
    let s = h.browser("ann", "c1").await.unwrap();
    h.policy
        .end(&s.session.key, EndReason::Logout)
        .await
        .unwrap();
    assert!(is_locked(&h.wrong("ann").await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guess_whose_caller_goes_away_mid_check_is_still_counted() {
    // An HTTP/2 stream reset (or a closed connection) must not un-count a guess that already
    // reached the directory.
    let mut cfg = contract_defaults();
    cfg.login_attempts_per_ip_per_minute = 1000;
    let h = Arc::new(Harness::new(cfg));
    h.dir.set_delay(Duration::from_millis(200));
    for i in 0..5 {
        let h2 = h.clone();
        let t = tokio::spawn(async move {
            h2.login_as(
                "ann",
                &format!("guess{i}"),
                "203.0.113.1",
                "c",
                ClientKind::Browser,
                false,
            )
            .await
        });
        // Abort once the guess has reached the directory (and before it answers).
        wait_for_checks(&h, i + 1).await;
        t.abort();
        let _ = t.await;
    }
    // Let the five checks finish on their own.
    let started = std::time::Instant::now();
    while h.locked("ann").await.is_none() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.dir.checks(), 5);
    assert!(
        h.locked("ann").await.is_some(),
        "the five abandoned guesses locked the account"
    );
    assert!(is_locked(&h.browser("ann", "c1").await));
    assert_eq!(h.dir.checks(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_lock_placed_during_a_check_wins_over_its_right_password() {
    let h = Arc::new(Harness::new(contract_defaults()));
    h.dir.set_delay(Duration::from_millis(100));
    let h2 = h.clone();
    let login = tokio::spawn(async move { h2.browser("ann", "c1").await });
    wait_for_checks(&h, 1).await;
    let lock = h.policy.lock("ann", Some(7 * 24 * HOUR)).await.unwrap();
    let r = login.await.unwrap();
    match r {
        Err(LoginRefused::AccountLocked { until, .. }) => assert_eq!(until, lock.until),
        other => panic!("the lock must win: {other:?}"),
    }
    assert_eq!(h.seats().await, 0);
}

#[tokio::test]
async fn a_failure_lock_never_shortens_an_admin_lock() {
    let h = Harness::new(contract_defaults());
    h.wrongs("ann", 5).await;
    let failure_lock = h.locked("ann").await.unwrap();
    let admin = h
        .policy
        .lock("ann", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(
        admin.until, failure_lock.until,
        "a shorter admin lock keeps the longer one"
    );
    let admin = h.policy.lock("ann", Some(7 * 24 * HOUR)).await.unwrap();
    assert_eq!(admin.until, h.policy.now() + 7 * 24 * HOUR);
}

#[tokio::test]
async fn spellings_of_one_account_share_one_budget_and_unknown_users_count_too() {
    let h = Harness::new(contract_defaults());
    for u in ["ann", "ANN", "HUTCH\\ann", "ann@fhcrc.org"] {
        assert!(is_bad(&h.wrong(u).await), "{u}");
    }
    assert!(
        is_locked(&h.wrong("ａｎｎ").await),
        "the full-width spelling is the fifth"
    );
    // An account the directory has never heard of is counted and locked the same way.
    for _ in 0..4 {
        assert!(is_bad(&h.wrong("nobody").await));
    }
    assert!(is_locked(&h.wrong("nobody").await));
    assert_eq!(h.dir.checks(), 10);
}

#[tokio::test]
async fn an_empty_password_is_a_failure_that_asks_nobody() {
    let h = Harness::new(contract_defaults());
    for _ in 0..4 {
        let r = h
            .login_as("ann", "", "192.0.2.1", "c1", ClientKind::Browser, false)
            .await;
        assert!(is_bad(&r));
    }
    assert_eq!(h.dir.checks(), 0, "no bind for an empty password");
    assert!(is_locked(&h.wrong("ann").await));
}

#[tokio::test]
async fn bad_usernames_get_a_clear_answer_and_count_nothing() {
    let h = Harness::new(contract_defaults());
    let long = "a".repeat(10 * 1024);
    for (name, want) in [
        ("", InvalidUsername::Empty),
        ("   ", InvalidUsername::Empty),
        (long.as_str(), InvalidUsername::TooLong),
        ("an\0n", InvalidUsername::Control),
        ("ann\u{1b}[31m", InvalidUsername::Control),
        ("a\u{200B}nn", InvalidUsername::Invisible),
    ] {
        match h.wrong(name).await {
            Err(LoginRefused::InvalidUsername(got)) => assert_eq!(got, want, "{name:?}"),
            other => panic!("{name:?}: {other:?}"),
        }
    }
    assert_eq!(h.dir.checks(), 0);
    assert_eq!(h.policy.status().await.unwrap().tracked_windows, 0);
    assert_eq!(h.events.count("login - invalid"), 6);
    // Admin calls refuse them too, clearly.
    assert!(matches!(
        h.policy.unlock("an\0n").await,
        Err(AdminError::InvalidUsername(_))
    ));
}

#[tokio::test]
async fn a_directory_outage_counts_nothing_and_locks_nobody() {
    let h = Harness::new(contract_defaults());
    h.dir.set_down(true);
    for _ in 0..20 {
        assert!(matches!(
            h.browser("ann", "c1").await,
            Err(LoginRefused::DirectoryUnavailable)
        ));
    }
    assert!(h.locked("ann").await.is_none());
    assert_eq!(h.policy.status().await.unwrap().tracked_windows, 0);
    // Each outage is reported, for the directory-errors metric and alert.
    assert_eq!(h.events.count("directory error"), 20);
    assert_eq!(h.events.count("login ann directory_error"), 20);
    h.dir.set_down(false);
    assert!(h.browser("ann", "c1").await.is_ok());
    assert_eq!(h.events.count("directory ok"), 1);
}

#[tokio::test]
async fn a_lockout_does_not_end_live_sessions() {
    let h = Harness::new(contract_defaults());
    let s = h.browser("ann", "c1").await.unwrap();
    h.wrongs("ann", 5).await;
    assert!(h.locked("ann").await.is_some());
    assert!(h.live(&s, "/aspera/faspex/inbox").await.is_ok());
    assert_eq!(h.seats().await, 1);
}

#[tokio::test]
async fn account_plus_ip_keeps_other_addresses_out_of_the_lock() {
    let mut cfg = contract_defaults();
    cfg.lockout_key = LockoutKey::AccountIp;
    let h = Harness::new(cfg);
    for _ in 0..5 {
        h.login_as("ann", "x", "203.0.113.9", "c-a", ClientKind::Browser, false)
            .await
            .ok();
    }
    for _ in 0..5 {
        h.login_as(
            "ann",
            "x",
            "203.0.113.10",
            "c-a",
            ClientKind::Browser,
            false,
        )
        .await
        .ok();
    }
    let r = h
        .login_as(
            "ann",
            "pw-ann",
            "203.0.113.9",
            "c-b",
            ClientKind::Browser,
            false,
        )
        .await;
    assert!(is_locked(&r), "the attacker's address is locked out");
    let r = h
        .login_as(
            "ann",
            "pw-ann",
            "192.0.2.1",
            "c-ann",
            ClientKind::Browser,
            false,
        )
        .await;
    assert!(r.is_ok(), "ann from her own address is not: {r:?}");
    assert_eq!(h.policy.lockouts().await.unwrap().len(), 2);
    assert_eq!(
        h.policy.status().await.unwrap().accounts_locked,
        1,
        "distinct accounts"
    );
    // Unlock lifts every key of the account.
    let u = h.policy.unlock("ann").await.unwrap();
    assert_eq!(u.lifted.len(), 2);
    assert!(h.policy.lockouts().await.unwrap().is_empty());
    // An admin lock is account-wide, whatever the address.
    h.policy.lock("ann", None).await.unwrap();
    let r = h
        .login_as(
            "ann",
            "pw-ann",
            "198.51.100.1",
            "c-x",
            ClientKind::Browser,
            false,
        )
        .await;
    assert!(is_locked(&r));
}

// ----- helpdesk operations -----

#[tokio::test]
async fn unlock_clears_the_lock_and_the_failure_windows() {
    let h = Harness::new(contract_defaults());
    h.wrongs("ann", 5).await;
    h.wrongs("bob", 3).await;
    let u = h.policy.unlock("ANN").await.unwrap();
    assert_eq!(u.lifted.len(), 1);
    assert_eq!(h.events.count("unlock ann 1"), 1);
    assert!(h.browser("ann", "c1").await.is_ok(), "logs in at once");
    let u = h.policy.unlock("bob").await.unwrap();
    assert!(u.lifted.is_empty(), "bob was not locked");
    assert_eq!(u.windows_cleared, 1);
    for _ in 0..4 {
        assert!(
            is_bad(&h.wrong("bob").await),
            "bob's three failures are gone"
        );
    }
    let u = h.policy.unlock("nobody-at-all").await.unwrap();
    assert_eq!(u, crate::store::Unlocked::default(), "a clear no-op");
}

#[tokio::test]
async fn an_admin_lock_holds_for_its_time_and_blocks_the_right_password() {
    let h = Harness::new(contract_defaults());
    let lock = h
        .policy
        .lock("ann", Some(Duration::from_secs(600)))
        .await
        .unwrap();
    assert!(lock.by_admin);
    assert_eq!(lock.until, h.policy.now() + Duration::from_secs(600));
    assert!(is_locked(&h.browser("ann", "c1").await));
    assert_eq!(h.dir.checks(), 0, "no check for a locked account");
    h.advance(Duration::from_secs(599));
    assert!(is_locked(&h.browser("ann", "c1").await));
    h.advance(Duration::from_secs(1));
    assert!(h.browser("ann", "c1").await.is_ok());
    // The default is policy.lockout_duration.
    let lock = h.policy.lock("bob", None).await.unwrap();
    assert_eq!(lock.until, h.policy.now() + HOUR);
}

#[tokio::test]
async fn kick_ends_the_sessions_and_frees_the_seat() {
    let mut cfg = contract_defaults();
    cfg.max_sessions = 1;
    let h = Harness::new(cfg);
    let s = h.browser("ann", "c1").await.unwrap();
    assert!(matches!(
        h.browser("bob", "c2").await,
        Err(LoginRefused::LicenseFull { .. })
    ));
    let ended = h.policy.kick("Ann").await.unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(h.events.count("end ann admin"), 1);
    assert_eq!(h.live(&s, "/").await, Err(SessionGone::Unknown));
    assert!(h.browser("bob", "c2").await.is_ok());
    assert!(
        h.policy.kick("nobody").await.unwrap().is_empty(),
        "a clear no-op"
    );
}

// ----- sessions: timeouts -----

#[tokio::test]
async fn idle_expiry_happens_exactly_on_time_and_activity_moves_it() {
    let h = Harness::new(contract_defaults());
    let s = h.browser("ann", "c1").await.unwrap();
    h.advance(HOUR - MS);
    assert!(h.live(&s, "/aspera/faspex/inbox").await.is_ok());
    h.advance(HOUR - MS);
    assert!(
        h.live(&s, "/aspera/faspex/inbox").await.is_ok(),
        "activity moved it"
    );
    h.advance(HOUR);
    assert_eq!(
        h.live(&s, "/aspera/faspex/inbox").await,
        Err(SessionGone::Expired(EndReason::Idle))
    );
    assert_eq!(h.seats().await, 0, "the seat is free at once");
    assert_eq!(h.events.count("end ann idle"), 1);
    assert_eq!(h.live(&s, "/").await, Err(SessionGone::Unknown));
}

#[tokio::test]
async fn the_sweeper_ends_an_idle_session_at_its_deadline_with_no_traffic() {
    let h = Harness::new(contract_defaults());
    h.browser("ann", "c1").await.unwrap();
    h.advance(HOUR - MS);
    h.policy.sweep().await.unwrap();
    assert_eq!(h.seats().await, 1);
    h.advance(MS);
    h.policy.sweep().await.unwrap();
    assert_eq!(h.seats().await, 0);
    assert_eq!(h.events.count("end ann idle"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_task_runs_on_its_own_within_a_second() {
    let h = Harness::new(contract_defaults());
    let sweeper = h.policy.spawn_sweeper();
    h.browser("ann", "c1").await.unwrap();
    h.wrongs("bob", 5).await;
    assert_eq!(h.policy.status().await.unwrap().accounts_locked, 1);
    h.advance(HOUR);
    let started = std::time::Instant::now();
    while h.events.count("end ann idle") == 0 || h.events.count("lock-expired bob") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the sweeper must act within 1 s: {:?}",
            h.events.lines()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = h.policy.status().await.unwrap();
    assert_eq!((st.seats_used, st.accounts_locked), (0, 0));
    sweeper.abort();
}

/// A sweep that panics (here an observer of what it ended) costs that sweep, not the sweeper:
/// the next sessions to expire still end on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_outlives_a_sweep_that_panics() {
    let h = Harness::new(contract_defaults());
    let sweeper = h.policy.spawn_sweeper();
    h.events.panic_at("end ann");
    h.browser("ann", "c1").await.unwrap();
    h.advance(HOUR);
    let started = std::time::Instant::now();
    while h.seats().await != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "ann's session was not swept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.events.count("end ann"), 0, "the observer panicked at it");
    h.browser("bob", "c2").await.unwrap();
    h.advance(HOUR);
    let started = std::time::Instant::now();
    while h.events.count("end bob idle") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the sweeper stopped after a panic: {:?}",
            h.events.lines()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.seats().await, 0);
    sweeper.abort();
}

#[tokio::test]
async fn api_sessions_use_the_api_idle_timeout() {
    let mut cfg = contract_defaults();
    cfg.idle_timeout = HOUR;
    cfg.api_idle_timeout = Duration::from_secs(300);
    let h = Harness::new(cfg);
    let api = h
        .login_as(
            "bob",
            "pw-bob",
            "192.0.2.5",
            "basic-1",
            ClientKind::Basic,
            false,
        )
        .await
        .unwrap();
    let web = h.browser("ann", "c1").await.unwrap();
    h.advance(Duration::from_secs(300));
    assert_eq!(
        h.live(&api, "/aspera/faspex/inbox.atom").await,
        Err(SessionGone::Expired(EndReason::Idle))
    );
    assert!(h.live(&web, "/aspera/faspex/inbox").await.is_ok());
}

#[tokio::test]
async fn the_absolute_timeout_ends_even_a_busy_session_exactly_on_time() {
    let mut cfg = contract_defaults();
    cfg.absolute_timeout = Some(2 * HOUR);
    let h = Harness::new(cfg);
    let s = h.browser("ann", "c1").await.unwrap();
    for _ in 0..(2 * 60 - 1) {
        h.advance(MIN);
        assert!(h.live(&s, "/").await.is_ok());
    }
    h.advance(MIN - MS);
    assert!(h.live(&s, "/").await.is_ok());
    h.advance(MS);
    assert_eq!(
        h.live(&s, "/").await,
        Err(SessionGone::Expired(EndReason::Absolute))
    );
    // "0s" turns it off.
    let mut cfg = contract_defaults();
    cfg.absolute_timeout = None;
    h.policy.reload(cfg, unlimited_checks());
    let s = h.browser("ann", "c1").await.unwrap();
    for _ in 0..48 {
        h.advance(HOUR - MS);
        assert!(h.live(&s, "/").await.is_ok());
    }
}

#[tokio::test]
async fn requests_to_exempt_paths_do_not_count_as_activity() {
    let mut cfg = contract_defaults();
    cfg.activity_exempt_paths = vec!["/aspera/faspex/transfer_status".into()];
    let h = Harness::new(cfg);
    let s = h.browser("ann", "c1").await.unwrap();
    for _ in 0..59 {
        h.advance(MIN);
        assert!(h
            .live(&s, "/aspera/faspex/transfer_status/77")
            .await
            .is_ok());
    }
    h.advance(MIN);
    assert_eq!(
        h.live(&s, "/aspera/faspex/transfer_status/77").await,
        Err(SessionGone::Expired(EndReason::Idle)),
        "polling kept nothing alive"
    );
}

// ----- seats and one client per account -----

#[tokio::test]
async fn reject_refuses_a_second_client_without_counting_a_failure() {
    let h = Harness::new(contract_defaults());
    let first = h.browser("ann", "laptop").await.unwrap();
    for _ in 0..10 {
        match h.browser("ann", "phone").await {
            Err(LoginRefused::OtherClientActive { since, kind, .. }) => {
                assert_eq!(since, first.session.started);
                assert_eq!(kind, ClientKind::Browser);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(h.locked("ann").await.is_none(), "Keycloak #44474");
    assert_eq!(h.events.count("login ann other_client"), 10);
    assert!(h.live(&first, "/").await.is_ok());
    assert_eq!(h.seats().await, 1);
}

#[tokio::test]
async fn the_same_client_logging_in_again_is_not_a_second_client() {
    let mut cfg = contract_defaults();
    cfg.max_sessions = 1;
    let h = Harness::new(cfg);
    let a = h.browser("ann", "laptop").await.unwrap();
    let b = h.browser("ann", "laptop").await.unwrap();
    assert!(b.renewed);
    assert_eq!(
        h.live(&a, "/").await,
        Err(SessionGone::Unknown),
        "the old token is gone"
    );
    assert!(h.live(&b, "/").await.is_ok());
    assert_eq!(h.seats().await, 1);
    assert_eq!(h.policy.sessions().await.unwrap().len(), 1);
}

#[tokio::test]
async fn take_over_replaces_the_other_client_after_a_fresh_check() {
    let h = Harness::new(contract_defaults());
    let laptop = h.browser("ann", "laptop").await.unwrap();
    assert!(matches!(
        h.browser("ann", "phone").await,
        Err(LoginRefused::OtherClientActive { .. })
    ));
    // Take-over with a wrong password does nothing but count a failure.
    let r = h
        .login_as(
            "ann",
            "wrong",
            "192.0.2.1",
            "phone",
            ClientKind::Browser,
            true,
        )
        .await;
    assert!(is_bad(&r));
    assert!(h.live(&laptop, "/").await.is_ok());
    let checks = h.dir.checks();
    let phone = h
        .login_as(
            "ann",
            "pw-ann",
            "192.0.2.1",
            "phone",
            ClientKind::Browser,
            true,
        )
        .await
        .unwrap();
    assert_eq!(h.dir.checks(), checks + 1, "a fresh credential check");
    assert_eq!(h.live(&laptop, "/").await, Err(SessionGone::Unknown));
    assert!(h.live(&phone, "/").await.is_ok());
    assert_eq!(h.events.count("end ann replaced"), 1);
    assert_eq!(h.seats().await, 1);
}

#[tokio::test]
async fn replace_ends_the_older_session_and_needs_no_new_seat_at_a_full_cap() {
    let mut cfg = contract_defaults();
    cfg.one_client_per_account = OneClient::Replace;
    cfg.max_sessions = 2;
    let h = Harness::new(cfg);
    let old = h.browser("ann", "laptop").await.unwrap();
    h.browser("bob", "desk").await.unwrap();
    assert!(matches!(
        h.browser("cat", "c").await,
        Err(LoginRefused::LicenseFull { .. })
    ));
    let new = h.browser("ann", "phone").await.unwrap();
    assert!(!new.renewed);
    assert_eq!(h.live(&old, "/").await, Err(SessionGone::Unknown));
    assert!(h.live(&new, "/").await.is_ok());
    assert_eq!(h.seats().await, 2);
    assert_eq!(h.events.count("end ann replaced"), 1);
}

#[tokio::test]
async fn a_full_cap_answers_with_when_a_seat_may_free_up() {
    let mut cfg = contract_defaults();
    cfg.max_sessions = 2;
    cfg.idle_timeout = Duration::from_secs(120);
    let h = Harness::new(cfg);
    h.browser("ann", "a").await.unwrap();
    h.advance(Duration::from_secs(30));
    h.browser("bob", "b").await.unwrap();
    match h.browser("cat", "c").await {
        Err(LoginRefused::LicenseFull { retry_after }) => {
            assert_eq!(retry_after, Duration::from_secs(90))
        }
        other => panic!("{other:?}"),
    }
    assert!(
        h.locked("cat").await.is_none(),
        "a full cap is not a failure"
    );
    // An expired session frees its seat for the next login even before the sweeper runs.
    h.advance(Duration::from_secs(90));
    assert!(h.browser("cat", "c").await.is_ok());
    assert_eq!(h.events.count("end ann idle"), 1);
}

#[tokio::test]
async fn logout_and_rollback_free_the_seat_at_once() {
    let mut cfg = contract_defaults();
    cfg.max_sessions = 1;
    let h = Harness::new(cfg);
    let a = h.browser("ann", "a").await.unwrap();
    h.policy
        .end(&a.session.key, EndReason::Logout)
        .await
        .unwrap();
    let b = h.browser("bob", "b").await.unwrap();
    h.policy
        .end(&b.session.key, EndReason::Rollback)
        .await
        .unwrap();
    assert!(h.browser("cat", "c").await.is_ok());
    assert_eq!(h.events.count("end ann logout"), 1);
    assert_eq!(h.events.count("end bob rollback"), 1);
    assert!(
        h.policy
            .end(&a.session.key, EndReason::Logout)
            .await
            .unwrap()
            .is_none(),
        "ending twice is a no-op"
    );
}

#[tokio::test]
async fn lowering_the_cap_cuts_nobody_and_admits_nobody_until_below_it() {
    let h = Harness::new(contract_defaults());
    let mut live = Vec::new();
    for u in ["ann", "bob", "cat", "dan"] {
        live.push(h.browser(u, u).await.unwrap());
    }
    let mut cfg = contract_defaults();
    cfg.max_sessions = 2;
    h.policy.reload(cfg, unlimited_checks());
    for s in &live {
        assert!(h.live(s, "/").await.is_ok(), "no live session is cut");
    }
    h.dir.add_user("eve", "pw-eve");
    assert!(matches!(
        h.browser("eve", "e").await,
        Err(LoginRefused::LicenseFull { .. })
    ));
    for s in &live[..2] {
        h.policy
            .end(&s.session.key, EndReason::Logout)
            .await
            .unwrap();
        assert!(
            matches!(
                h.browser("eve", "e").await,
                Err(LoginRefused::LicenseFull { .. })
            ),
            "still at or above the cap"
        );
    }
    h.policy
        .end(&live[2].session.key, EndReason::Logout)
        .await
        .unwrap();
    assert!(h.browser("eve", "e").await.is_ok(), "one below the cap");
    assert_eq!(h.seats().await, 2);
}

// ----- throttling -----

#[tokio::test]
async fn the_address_throttle_counts_checks_not_cookie_requests() {
    let h = Harness::new(contract_defaults());
    let s = h.browser("ann", "c1").await.unwrap(); // check 1
    for _ in 0..500 {
        assert!(h.live(&s, "/").await.is_ok()); // cookie requests: no check
    }
    for i in 0..29 {
        let r = h
            .login_as(
                &format!("x{i}"),
                "guess",
                "192.0.2.1",
                "c9",
                ClientKind::Browser,
                false,
            )
            .await;
        assert!(is_bad(&r), "check {}", i + 2);
    }
    let r = h
        .login_as("y", "guess", "192.0.2.1", "c9", ClientKind::Browser, false)
        .await;
    match r {
        Err(LoginRefused::Throttled { retry_after }) => {
            assert_eq!(retry_after, Duration::from_secs(2))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.dir.checks(), 30);
    assert!(
        h.locked("y").await.is_none(),
        "a throttled attempt is not a failure"
    );
    // Another address is not affected; public requests have their own budget.
    let r = h
        .login_as(
            "bob",
            "pw-bob",
            "192.0.2.99",
            "c8",
            ClientKind::Browser,
            false,
        )
        .await;
    assert!(r.is_ok());
    assert!(h
        .policy
        .throttle_public("192.0.2.1".parse().unwrap())
        .is_ok());
    h.advance(Duration::from_secs(2));
    let r = h
        .login_as("y", "guess", "192.0.2.1", "c9", ClientKind::Browser, false)
        .await;
    assert!(is_bad(&r));
}

#[tokio::test]
async fn public_requests_have_their_own_budget() {
    let mut cfg = contract_defaults();
    cfg.public_requests_per_ip_per_minute = 600;
    let h = Harness::new(cfg);
    let ip: IpAddr = "198.51.100.3".parse().unwrap();
    for _ in 0..600 {
        assert!(h.policy.throttle_public(ip).is_ok());
    }
    assert_eq!(h.policy.throttle_public(ip), Err(Duration::from_secs(1)));
    assert!(
        h.browser("ann", "c").await.is_ok(),
        "logins are counted apart"
    );
}

// ----- concurrency -----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_parallel_logins_against_a_cap_of_ten_admit_exactly_ten() {
    for round in 0..5 {
        let h = Arc::new(Harness::with_users(contract_defaults(), 200));
        h.dir.set_delay(Duration::from_millis(1));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                let ip = format!("10.0.{}.{}", i / 250, i % 250 + 1);
                h.login_as(
                    &format!("user{i}"),
                    &format!("pw-user{i}"),
                    &ip,
                    &format!("client{i}"),
                    ClientKind::Browser,
                    false,
                )
                .await
            }));
        }
        let (mut ok, mut full) = (0, 0);
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(LoginRefused::LicenseFull { .. }) => full += 1,
                Err(e) => panic!("round {round}: {e:?}"),
            }
        }
        assert_eq!((ok, full), (10, 190), "round {round}");
        assert_eq!(h.seats().await, 10);
        assert_eq!(h.policy.sessions().await.unwrap().len(), 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_parallel_wrong_guesses_reach_the_directory_at_most_five_times() {
    for round in 0..5 {
        let mut cfg = contract_defaults();
        cfg.login_attempts_per_ip_per_minute = 1000;
        let h = Arc::new(Harness::new(cfg));
        h.dir.set_delay(Duration::from_millis(5));
        let mut tasks = Vec::new();
        for i in 0..100 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                let pw = format!("guess-{i}");
                h.login_as("ann", &pw, "203.0.113.5", "c", ClientKind::Browser, false)
                    .await
            }));
        }
        let (mut bad, mut locked) = (0, 0);
        for t in tasks {
            let r = t.await.unwrap();
            if is_bad(&r) {
                bad += 1;
            } else if is_locked(&r) {
                locked += 1;
            } else {
                panic!("round {round}: {r:?}");
            }
        }
        assert_eq!(
            h.dir.checks(),
            5,
            "round {round}: credential checks that ran"
        );
        assert_eq!((bad, locked), (4, 96), "round {round}");
        assert_eq!(h.events.count("lockout ann"), 1);
        // And nothing more gets through later in the window.
        h.advance(Duration::from_secs(30));
        assert!(is_locked(&h.browser("ann", "c").await));
        assert_eq!(h.dir.checks(), 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_parallel_identical_logins_all_succeed_with_one_check() {
    let h = Arc::new(Harness::new(contract_defaults()));
    h.dir.set_delay(Duration::from_millis(20));
    let client = LoginRequest::basic_client("192.0.2.44".parse().unwrap(), "curl/8.5");
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (h, client) = (h.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            h.login_as(
                "ann",
                "pw-ann",
                "192.0.2.44",
                &client.0,
                ClientKind::Basic,
                false,
            )
            .await
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().is_ok());
    }
    assert_eq!(h.dir.checks(), 1);
    assert_eq!(h.seats().await, 1);
    assert_eq!(h.policy.sessions().await.unwrap().len(), 1);
    // The session is found by client, as a Basic caller's next request would.
    let s = h
        .policy
        .client_session("ann", &client, "/aspera/faspex/inbox.atom")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.kind, ClientKind::Basic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn churn_of_logins_logouts_and_expiries_leaves_seats_equal_to_live_sessions() {
    let mut cfg = contract_defaults();
    cfg.max_sessions = 10;
    cfg.idle_timeout = Duration::from_secs(120);
    cfg.login_attempts_per_ip_per_minute = 100_000;
    let h = Arc::new(Harness::with_users(cfg, 40));
    let sweeper = h.policy.spawn_sweeper();
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            for step in 0..60u64 {
                let i = (w * 7 + step * 13) % 40;
                let client = if step % 3 == 0 { "x" } else { "y" };
                let r = h
                    .login_as(
                        &format!("user{i}"),
                        &format!("pw-user{i}"),
                        "10.1.1.1",
                        &format!("{client}{i}"),
                        ClientKind::Browser,
                        step % 5 == 0,
                    )
                    .await;
                if let Ok(a) = r {
                    match step % 4 {
                        0 => {
                            h.policy
                                .end(&a.session.key, EndReason::Logout)
                                .await
                                .unwrap();
                        }
                        1 => {
                            h.policy.kick(&format!("user{i}")).await.unwrap();
                        }
                        _ => {}
                    }
                }
                if w == 0 && step % 10 == 0 {
                    h.advance(Duration::from_secs(61));
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    sweeper.abort();
    let sessions = h.policy.sessions().await.unwrap();
    let st = h.policy.status().await.unwrap();
    let accounts: std::collections::HashSet<_> = sessions.iter().map(|s| &s.account).collect();
    assert_eq!(st.seats_used, accounts.len());
    assert_eq!(
        st.sessions,
        sessions.len(),
        "no expired session lingers unswept"
    );
    assert_eq!(sessions.len(), accounts.len(), "one session per account");
    assert!(st.seats_used <= 10);
    // Let everything expire: the seats come back to zero.
    h.advance(Duration::from_secs(121));
    h.policy.sweep().await.unwrap();
    assert_eq!(h.policy.status().await.unwrap().seats_used, 0);
    let started = h.events.count("start ");
    let renewed = h
        .events
        .lines()
        .iter()
        .filter(|l| l.ends_with(" renewed"))
        .count();
    let ended = h.events.count("end ");
    assert_eq!(
        started,
        ended + renewed,
        "every session that started has ended (or was renewed), and been told"
    );
}

// ----- durability and bounds -----

#[tokio::test]
async fn locks_sessions_and_windows_survive_a_restart() {
    let h = Harness::new(contract_defaults());
    h.wrongs("ann", 5).await;
    h.wrongs("bob", 3).await;
    let lock = h.locked("ann").await.unwrap();
    let s = h.browser("cat", "c1").await.unwrap();
    h.advance(Duration::from_secs(10));
    h.live(&s, "/").await.unwrap();
    let h = h.restart().await;
    assert_eq!(h.locked("ann").await, Some(lock), "same unlock time");
    let live = h.live(&s, "/").await.expect("the session is still valid");
    assert_eq!(
        live.last_activity,
        s.session.started + Duration::from_secs(10)
    );
    assert_eq!(h.seats().await, 1);
    // bob's three failures came back too: two more lock him.
    assert!(is_bad(&h.wrong("bob").await));
    assert!(is_locked(&h.wrong("bob").await));
}

#[tokio::test]
async fn sessions_that_expired_while_down_end_on_the_first_sweep() {
    let h = Harness::new(contract_defaults());
    h.browser("ann", "c1").await.unwrap();
    h.advance(2 * HOUR);
    let h = h.restart().await;
    assert_eq!(h.seats().await, 1, "held until swept");
    h.policy.sweep().await.unwrap();
    assert_eq!(h.seats().await, 0);
    assert_eq!(
        h.events.count("end ann idle"),
        1,
        "so Faspex can be logged out too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_sprayed_usernames_stay_under_the_bound_and_a_victims_lock_stays() {
    let mut cfg = contract_defaults();
    cfg.max_tracked_usernames = 100_000;
    let h = Harness::new(cfg.clone());
    h.wrongs("victim", 5).await;
    let lock = h.locked("victim").await.unwrap();
    // The spray goes straight at the store's lockout steps: the engine's throttles would stop a
    // real spray long before a million.
    let rules = Policy::lockout_rules(&cfg);
    let store: Arc<dyn PolicyStore> = h.store.clone();
    for i in 0..1_000_000u32 {
        let key = LockKey::account(format!("spray{i}"));
        let now = h.clock.now();
        match store.begin_attempt(&key, now, rules).await.unwrap() {
            AttemptStart::Proceed(t) => {
                store
                    .finish_attempt(t, AttemptResult::Rejected, now, rules)
                    .await
                    .unwrap();
            }
            other => panic!("{other:?}"),
        }
        if i % 1000 == 0 {
            h.clock.advance(MS);
        }
        if i % 100_000 == 0 {
            let n = h.policy.status().await.unwrap().tracked_windows;
            assert!(n <= 100_000, "{n} windows at {i}");
        }
    }
    let st = h.policy.status().await.unwrap();
    assert!(st.tracked_windows <= 100_000, "{}", st.tracked_windows);
    assert_eq!(st.accounts_locked, 1);
    assert_eq!(h.locked("victim").await, Some(lock.clone()));
    // And on disk: after a restart the same bound holds and the lock is still there.
    let h = h.restart().await;
    let st = h.policy.status().await.unwrap();
    assert!(st.tracked_windows <= 100_000, "{}", st.tracked_windows);
    assert_eq!(h.locked("victim").await, Some(lock));
}

/// Why the store in `folder` will not open.
fn open_refused(folder: &std::path::Path) -> String {
    EmbeddedStore::open(folder)
        .err()
        .expect("refused")
        .to_string()
}

/// Write `key` = `value` into `table` of the store file in `folder`, behind the store's back.
fn write_raw<V: redb::Value + 'static>(
    folder: &std::path::Path,
    table: &str,
    key: &str,
    value: V::SelfType<'_>,
) {
    let db = redb::Database::create(folder.join("state.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(redb::TableDefinition::<&str, V>::new(table))
        .unwrap()
        .insert(key, value)
        .unwrap();
    txn.commit().unwrap();
}

#[tokio::test]
async fn a_bad_store_file_is_refused_by_name() {
    // Corrupt.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(crate::store::embedded::FILE_NAME);
    std::fs::write(&file, vec![0x5a; 64 * 1024]).unwrap();
    let err = open_refused(tmp.path());
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("corrupt") || err.contains("cannot"), "{err}");

    // From a future schema.
    let tmp = tempfile::tempdir().unwrap();
    write_raw::<u64>(tmp.path(), "meta", "schema_version", 99);
    let err = open_refused(tmp.path());
    assert!(err.contains("newer faspex-gate (schema 99"), "{err}");

    // A record that does not parse.
    let tmp = tempfile::tempdir().unwrap();
    {
        let s = EmbeddedStore::open(tmp.path()).unwrap();
        s.close().await.unwrap();
        write_raw::<&[u8]>(tmp.path(), "locks", "ann", b"{not json");
    }
    let err = open_refused(tmp.path());
    assert!(err.contains("is corrupt: lock \"ann\""), "{err}");

    // Unwritable: the folder cannot be made (its parent is a file).
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("file"), b"x").unwrap();
    let err = open_refused(&tmp.path().join("file/store"));
    assert!(err.contains("state.redb"), "{err}");

    // In use by another process (or another store in this one).
    let tmp = tempfile::tempdir().unwrap();
    let _first = EmbeddedStore::open(tmp.path()).unwrap();
    let err = open_refused(tmp.path());
    assert!(err.contains("in use"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_probe_writes_even_with_nothing_to_save() {
    let h = Harness::new(contract_defaults());
    // Nothing is dirty, yet the probe writes, so a failing disk shows (for /readyz).
    h.policy.probe_store().await.unwrap();
    h.failing.refuse_writes(true);
    let err = h.policy.probe_store().await.unwrap_err().to_string();
    assert!(err.contains("No space left"), "{err}");
    h.failing.refuse_writes(false);
    h.policy.probe_store().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_fails_closed_and_loses_no_lockout() {
    let h = Harness::new(contract_defaults());
    h.failing.refuse_writes(true);
    // A login whose session cannot be saved is refused and undone: no seat is held.
    match h.browser("ann", "c1").await {
        Err(LoginRefused::Store(e)) => assert!(e.to_string().contains("No space left"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.seats().await, 0);
    assert_eq!(h.events.count("login ann store_error"), 1);
    // A lockout is still answered and enforced from memory.
    for _ in 0..4 {
        assert!(is_bad(&h.wrong("bob").await));
    }
    assert!(is_locked(&h.wrong("bob").await));
    assert!(is_locked(&h.browser("bob", "c2").await));
    // An admin lock says it is not saved, and holds anyway.
    assert!(matches!(
        h.policy.lock("cat", None).await,
        Err(AdminError::Store(StoreError::Write { .. }))
    ));
    assert!(is_locked(&h.browser("cat", "c3").await));
    // The disk comes back: the writer's retries put both locks on disk, so a restart keeps them.
    h.failing.refuse_writes(false);
    let started = std::time::Instant::now();
    loop {
        h.policy.flush().await.unwrap();
        if started.elapsed() > Duration::from_millis(300) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(h.browser("ann", "c1").await.is_ok(), "logins work again");
    let bob = h.locked("bob").await.unwrap();
    let cat = h.locked("cat").await.unwrap();
    let h = h.restart().await;
    assert_eq!(h.locked("bob").await, Some(bob));
    assert_eq!(h.locked("cat").await, Some(cat));
    assert_eq!(h.seats().await, 1);
}

// ----- the global ceiling on credential checks -----

fn ceiling(n: u32) -> CheckRules {
    CheckRules {
        max_checks_per_second: n,
        ..CheckRules::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_addresses_at_once_get_exactly_the_ceiling_and_the_rest_429_uncounted() {
    let h = Harness::with_rules(contract_defaults(), 40, ceiling(5));
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let policy = h.policy.clone();
            let dir = h.directory.clone();
            tokio::spawn(async move {
                let user = format!("user{i}");
                let ip = format!("198.51.100.{}", i + 1);
                let r = policy
                    .login(
                        LoginRequest {
                            agent: "spray",
                            ..request(&user, "wrong", &ip, &format!("c{i}"), ClientKind::Browser)
                        },
                        &dir,
                    )
                    .await;
                match r {
                    Err(LoginRefused::Throttled { retry_after }) => {
                        assert!(retry_after >= Duration::from_secs(1));
                        "throttled"
                    }
                    Err(LoginRefused::BadCredentials) => "bad",
                    other => panic!("unexpected {other:?}"),
                }
            })
        })
        .collect();
    let mut throttled = 0;
    for t in tasks {
        if t.await.unwrap() == "throttled" {
            throttled += 1;
        }
    }
    assert_eq!(h.dir.checks(), 5, "the directory saw exactly the ceiling");
    assert_eq!(throttled, 35);
    let status = h.policy.status().await.unwrap();
    assert_eq!(
        status.tracked_windows, 5,
        "a refusal at the ceiling counts no failure"
    );
    assert_eq!(h.events.count("login user"), 40);
    // (the 429 row of the contract)
    assert_eq!(
        refusal_status(&LoginRefused::Throttled {
            retry_after: Duration::from_secs(1)
        }),
        (
            http::StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(1))
        )
    );
    // A second later, another second's worth.
    h.advance(Duration::from_secs(1));
    for (i, user) in ["ann", "bob", "cat", "dan", "user0"].iter().enumerate() {
        assert!(is_bad(
            &h.login_as(
                user,
                "wrong",
                &format!("203.0.113.{i}"),
                "x",
                ClientKind::Browser,
                false
            )
            .await
        ));
    }
    assert!(matches!(
        h.browser("user1", "c1").await,
        Err(LoginRefused::Throttled { .. })
    ));
    assert_eq!(h.dir.checks(), 10);
}

#[tokio::test]
async fn guesses_at_a_locked_account_and_empty_passwords_leave_the_ceiling_alone() {
    let h = Harness::with_rules(contract_defaults(), 0, ceiling(2));
    h.policy.lock("ann", None).await.unwrap();
    for i in 0..50 {
        let r = h
            .login_as(
                "ann",
                "guess",
                &format!("198.51.100.{i}"),
                "x",
                ClientKind::Browser,
                false,
            )
            .await;
        assert!(is_locked(&r));
    }
    for _ in 0..3 {
        assert!(is_bad(
            &h.login_as("cat", "", "192.0.2.9", "x", ClientKind::Browser, false)
                .await
        ));
    }
    assert_eq!(h.dir.checks(), 0);
    assert!(
        h.browser("bob", "c-bob").await.is_ok(),
        "the budget is intact"
    );
    assert!(h.browser("dan", "c-dan").await.is_ok());
    assert!(matches!(
        h.browser("cat", "c-cat").await,
        Err(LoginRefused::Throttled { .. })
    ));
}

#[tokio::test]
async fn a_new_ceiling_applies_on_reload() {
    let h = Harness::with_rules(contract_defaults(), 0, ceiling(1));
    assert!(h.browser("ann", "c-ann").await.is_ok());
    assert!(matches!(
        h.browser("bob", "c-bob").await,
        Err(LoginRefused::Throttled { .. })
    ));
    h.policy.reload(contract_defaults(), ceiling(3));
    assert!(h.browser("bob", "c-bob").await.is_ok());
}

// ----- the verification cache for Basic callers -----

impl Harness {
    async fn basic(&self, user: &str, password: &str) -> Result<Admitted, LoginRefused> {
        self.login_as(
            user,
            password,
            "192.0.2.50",
            "api",
            ClientKind::Basic,
            false,
        )
        .await
    }

    async fn recheck(&self, user: &str, password: &str) -> Result<Rechecked, LoginRefused> {
        self.policy
            .recheck(
                &LoginRequest {
                    agent: "curl/8",
                    ..request(user, password, "192.0.2.50", "api", ClientKind::Basic)
                },
                &self.directory,
            )
            .await
            .map(|(account, r)| {
                assert_eq!(
                    Ok(account.as_str()),
                    self.policy.account(user).as_deref(),
                    "confirmed for the account the name resolves to"
                );
                r
            })
    }
}

#[tokio::test]
async fn a_basic_callers_requests_ride_the_cache_and_wrong_passwords_never_do() {
    let h = Harness::new(contract_defaults());
    h.basic("ann", "pw-ann").await.unwrap();
    assert_eq!(h.dir.checks(), 1);
    for _ in 0..100 {
        assert_eq!(h.recheck("ann", "pw-ann").await.unwrap(), Rechecked::Cached);
    }
    assert_eq!(h.dir.checks(), 1, "a hundred requests, no more checks");
    // Other spellings of the account share the entry.
    assert_eq!(
        h.recheck("HUTCH\\Ann", "pw-ann").await.unwrap(),
        Rechecked::Cached
    );
    // A wrong password runs a check and counts.
    assert!(matches!(
        h.recheck("ann", "pw-ann ").await,
        Err(LoginRefused::BadCredentials)
    ));
    assert_eq!(h.dir.checks(), 2);
    assert_eq!(h.events.count("recheck ann bad_credentials"), 1);
    assert_eq!(h.policy.status().await.unwrap().tracked_windows, 1);
    // The entry lives cache_ttl from its check, then a check runs again.
    h.advance(CheckRules::default().cache_ttl);
    assert_eq!(
        h.recheck("ann", "pw-ann").await.unwrap(),
        Rechecked::Checked
    );
    assert_eq!(h.dir.checks(), 3);
    assert_eq!(h.recheck("ann", "pw-ann").await.unwrap(), Rechecked::Cached);
}

#[tokio::test]
async fn a_browser_login_caches_nothing() {
    let h = Harness::new(contract_defaults());
    h.browser("ann", "c1").await.unwrap();
    assert!(h.policy.cache().is_empty());
    assert_eq!(
        h.recheck("ann", "pw-ann").await.unwrap(),
        Rechecked::Checked
    );
}

#[tokio::test]
async fn kick_and_admin_lock_drop_the_cached_password() {
    let h = Harness::new(contract_defaults());
    h.basic("ann", "pw-ann").await.unwrap();
    h.basic("bob", "pw-bob").await.unwrap();
    h.policy.kick("ann").await.unwrap();
    assert_eq!(
        h.recheck("ann", "pw-ann").await.unwrap(),
        Rechecked::Checked
    );
    assert_eq!(h.recheck("bob", "pw-bob").await.unwrap(), Rechecked::Cached);
    let checks = h.dir.checks();
    h.policy.lock("bob", None).await.unwrap();
    assert!(matches!(
        h.recheck("bob", "pw-bob").await,
        Err(LoginRefused::AccountLocked { .. })
    ));
    assert_eq!(
        h.dir.checks(),
        checks,
        "a locked account's check never runs"
    );
}

#[tokio::test]
async fn an_automatic_lockout_leaves_the_real_users_api_session_working() {
    // The contract: a lockout refuses new credential checks only; an attacker's guesses must not
    // cut the real user off.
    let h = Harness::new(contract_defaults());
    h.basic("ann", "pw-ann").await.unwrap();
    h.wrongs("ann", 5).await;
    assert!(h.locked("ann").await.is_some());
    assert_eq!(h.recheck("ann", "pw-ann").await.unwrap(), Rechecked::Cached);
    assert!(matches!(
        h.recheck("ann", "another-guess").await,
        Err(LoginRefused::AccountLocked { .. })
    ));
}

#[tokio::test]
async fn a_caller_after_an_admin_action_never_joins_a_check_begun_before_it() {
    // A check in flight; the administrator acts; an identical request arrives. Joining the old
    // check could cache its success past the action, so the newcomer runs a check of its own.
    let h = Arc::new(Harness::new(contract_defaults()));
    h.dir.set_delay(Duration::from_millis(100));
    let h2 = h.clone();
    let first = tokio::spawn(async move { h2.recheck("ann", "pw-ann").await });
    wait_for_checks(&h, 1).await;
    h.policy.kick("bob").await.unwrap(); // any admin action bumps the cache epoch
    let second = h.recheck("ann", "pw-ann").await;
    assert_eq!(second.unwrap(), Rechecked::Checked);
    assert_eq!(first.await.unwrap().unwrap(), Rechecked::Checked);
    assert_eq!(
        h.dir.checks(),
        2,
        "the newcomer did not share the older check"
    );
    // Without an admin action in between, identical requests still share one check.
    let h3 = h.clone();
    h.policy.cache().clear();
    let a = tokio::spawn(async move { h3.recheck("cat", "pw-cat").await });
    wait_for_checks(&h, 3).await;
    let b = h.recheck("cat", "pw-cat").await;
    assert!(a.await.unwrap().is_ok() && b.is_ok());
    assert_eq!(h.dir.checks(), 3);
}

#[tokio::test]
async fn a_new_cache_ttl_empties_the_cache() {
    let h = Harness::new(contract_defaults());
    h.basic("ann", "pw-ann").await.unwrap();
    h.policy.reload(
        contract_defaults(),
        CheckRules {
            cache_ttl: Duration::from_secs(10),
            ..unlimited_checks()
        },
    );
    assert!(h.policy.cache().is_empty());
    assert_eq!(
        h.recheck("ann", "pw-ann").await.unwrap(),
        Rechecked::Checked
    );
    h.advance(Duration::from_secs(10));
    assert_eq!(
        h.recheck("ann", "pw-ann").await.unwrap(),
        Rechecked::Checked
    );
}

#[test]
fn every_refusal_has_the_contracts_api_status() {
    use http::StatusCode as S;
    let d = Duration::from_secs(7);
    let now = crate::clock::Timestamp::default();
    let cases: Vec<(LoginRefused, S, Option<Duration>)> = vec![
        (LoginRefused::BadCredentials, S::UNAUTHORIZED, None),
        (
            LoginRefused::InvalidUsername(InvalidUsername::Empty),
            S::UNAUTHORIZED,
            None,
        ),
        (
            LoginRefused::AccountLocked {
                until: now,
                retry_after: d,
                by_admin: false,
            },
            S::FORBIDDEN,
            Some(d),
        ),
        (
            LoginRefused::LicenseFull { retry_after: d },
            S::SERVICE_UNAVAILABLE,
            Some(d),
        ),
        (
            LoginRefused::OtherClientActive {
                since: now,
                ip: "192.0.2.1".parse().unwrap(),
                kind: ClientKind::Browser,
            },
            S::CONFLICT,
            None,
        ),
        (
            LoginRefused::Throttled { retry_after: d },
            S::TOO_MANY_REQUESTS,
            Some(d),
        ),
        (
            LoginRefused::DirectoryUnavailable,
            S::SERVICE_UNAVAILABLE,
            None,
        ),
        (
            LoginRefused::Store(StoreError::Closed),
            S::SERVICE_UNAVAILABLE,
            None,
        ),
    ];
    for (r, status, retry) in cases {
        assert_eq!(refusal_status(&r), (status, retry), "{r:?}");
    }
}

// ----- logins that wait for Faspex, and bearer tokens -----

impl Harness {
    async fn pending(&self, user: &str, kind: ClientKind) -> PendingLogin {
        let pw = format!("pw-{user}");
        self.policy
            .login_pending(
                LoginRequest {
                    agent: "curl/8",
                    ..request(user, &pw, "192.0.2.60", &format!("c-{user}"), kind)
                },
                &self.directory,
            )
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_login_faspex_refuses_gives_its_seat_back_and_counts_no_failure() {
    let mut cfg = contract_defaults();
    cfg.max_sessions = 1;
    let h = Harness::new(cfg);
    let p = h.pending("ann", ClientKind::Basic).await;
    assert_eq!(h.seats().await, 1, "the seat is held while Faspex decides");
    assert_eq!(h.events.count("login ann success"), 0, "not a success yet");
    p.refuse().await.unwrap();
    assert_eq!(h.seats().await, 0);
    assert_eq!(h.events.count("login ann upstream_refused"), 1);
    assert_eq!(h.events.count("end ann rollback"), 1);
    assert_eq!(
        h.policy.status().await.unwrap().tracked_windows,
        0,
        "no failure counted"
    );
    // Nothing was cached for the refused Basic caller.
    assert!(!h.policy.cache().hit("ann", "pw-ann", h.policy.now()));
    // A confirmed one is a success, and a Basic caller's password is cached.
    let p = h.pending("bob", ClientKind::Basic).await;
    let a = p.confirm().await;
    assert_eq!(h.events.count("login bob success"), 1);
    assert!(h.policy.cache().hit("bob", "pw-bob", h.policy.now()));
    assert!(h.live(&a, "/x").await.is_ok());
}

#[tokio::test]
async fn a_pending_login_dropped_undecided_is_rolled_back() {
    let mut cfg = contract_defaults();
    cfg.max_sessions = 1;
    let h = Harness::new(cfg);
    let p = h.pending("ann", ClientKind::Browser).await;
    drop(p);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while h.seats().await != 0 {
        assert!(std::time::Instant::now() < deadline, "the seat was kept");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.events.count("login ann upstream_refused"), 1);
    assert!(h.browser("bob", "b").await.is_ok());
}

#[tokio::test]
async fn a_bearer_token_is_its_sessions_activity_and_dies_with_it() {
    let h = Harness::new(contract_defaults());
    let a = h.basic("ann", "pw-ann").await.unwrap();
    assert!(h.policy.add_bearer(&a.session.key, "tok-1").await.unwrap());
    // Requests with the token keep the session alive past its idle timeout.
    for _ in 0..3 {
        h.advance(40 * MIN);
        let s = h
            .policy
            .bearer_session("tok-1", "/api/v1/me")
            .await
            .unwrap();
        assert_eq!(s.unwrap().key, a.session.key);
    }
    assert!(matches!(
        h.policy.bearer_session("tok-2", "/x").await.unwrap(),
        Err(SessionGone::Unknown)
    ));
    // It survives a restart (only its hash is stored).
    let h = h.restart().await;
    assert!(h
        .policy
        .bearer_session("tok-1", "/x")
        .await
        .unwrap()
        .is_ok());
    // Idle for the API timeout: the session ends, and the token with it.
    h.advance(HOUR);
    assert!(h
        .policy
        .bearer_session("tok-1", "/x")
        .await
        .unwrap()
        .is_err());
    assert!(matches!(
        h.policy.bearer_session("tok-1", "/x").await.unwrap(),
        Err(SessionGone::Unknown)
    ));
    // A token cannot be tied to a session that has gone.
    assert!(!h.policy.add_bearer(&a.session.key, "tok-3").await.unwrap());
}

#[tokio::test]
async fn a_session_keeps_at_most_eight_bearer_tokens() {
    let h = Harness::new(contract_defaults());
    let a = h.basic("ann", "pw-ann").await.unwrap();
    for i in 0..12 {
        assert!(h
            .policy
            .add_bearer(&a.session.key, &format!("tok-{i}"))
            .await
            .unwrap());
    }
    for i in 0..4 {
        assert!(
            h.policy
                .bearer_session(&format!("tok-{i}"), "/x")
                .await
                .unwrap()
                .is_err(),
            "the oldest are forgotten"
        );
    }
    for i in 4..12 {
        assert!(h
            .policy
            .bearer_session(&format!("tok-{i}"), "/x")
            .await
            .unwrap()
            .is_ok());
    }
    // A kick ends the session and every token.
    h.policy.kick("ann").await.unwrap();
    assert!(h
        .policy
        .bearer_session("tok-11", "/x")
        .await
        .unwrap()
        .is_err());
}

#[tokio::test]
async fn a_take_over_faspex_refuses_leaves_the_other_client_signed_in() {
    let h = Harness::new(contract_defaults());
    let first = h.browser("ann", "a").await.unwrap();
    let takeover = |client: &'static str| LoginRequest {
        takeover: true,
        ..request("ann", "pw-ann", "192.0.2.1", client, ClientKind::Browser)
    };
    // Faspex refuses the new login: the first client keeps its session.
    let p = h
        .policy
        .login_pending(takeover("b"), &h.directory)
        .await
        .unwrap();
    assert!(
        h.live(&first, "/x").await.is_ok(),
        "not replaced before Faspex says yes"
    );
    p.refuse().await.unwrap();
    assert!(h.live(&first, "/x").await.is_ok());
    assert_eq!(h.events.count("end ann replaced"), 0);
    assert_eq!(h.seats().await, 1);
    // Faspex accepts it: the first client is replaced, on confirmation.
    let p = h
        .policy
        .login_pending(takeover("c"), &h.directory)
        .await
        .unwrap();
    let second = p.confirm().await;
    assert!(h.live(&first, "/x").await.is_err());
    assert!(h.live(&second, "/x").await.is_ok());
    assert_eq!(h.events.count("end ann replaced"), 1);
    assert_eq!(h.seats().await, 1);
}

// ----- accounts keyed by directory entry (search-then-bind) -----

/// A directory that names the entry a name belongs to, as LDAP with a service account does:
/// entries by uid, reachable by their uid or their other names (a cn), matched as slapd matches
/// (prepared). Counts lookups and checks, and can be down.
struct EntryDirectory {
    /// (uid, other names, password)
    entries: Vec<(&'static str, Vec<&'static str>, &'static str)>,
    lookups: AtomicUsize,
    checks: AtomicUsize,
    down: AtomicBool,
    /// What each check was given: (name, account, bound DN).
    seen: Mutex<Vec<(String, String, Option<String>)>>,
}

impl EntryDirectory {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            entries: vec![
                ("Ann Lee", vec!["Ann Smith"], "pw-ann"),
                ("bob", vec!["Bob Jones"], "pw-bob"),
            ],
            lookups: AtomicUsize::new(0),
            checks: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            seen: Mutex::new(Vec::new()),
        })
    }

    fn dn(uid: &str) -> String {
        format!("uid={uid},ou=people,dc=example,dc=org")
    }

    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    fn checks(&self) -> usize {
        self.checks.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Directory for EntryDirectory {
    async fn verify(&self, _: &str, _: &str) -> Result<Verdict, DirectoryError> {
        panic!("a directory that looks names up is asked through verify_login");
    }

    fn looks_up(&self) -> bool {
        true
    }

    async fn lookup(&self, name: &str) -> Result<Lookup, DirectoryError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(DirectoryError("connection refused".into()));
        }
        let same = |a: &str| account::prepare(a).ok() == account::prepare(name).ok();
        Ok(
            match self
                .entries
                .iter()
                .find(|(uid, other, _)| same(uid) || other.iter().any(|o| same(o)))
            {
                Some((uid, _, _)) => Lookup::Entry {
                    dn: Self::dn(uid),
                    name: Some(uid.to_string()),
                },
                None => Lookup::NoEntry,
            },
        )
    }

    async fn verify_login(
        &self,
        name: &str,
        account: &str,
        found: &Lookup,
        password: &str,
    ) -> Result<Verdict, DirectoryError> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(DirectoryError("connection refused".into()));
        }
        let dn = match found {
            Lookup::Entry { dn, .. } => Some(dn.clone()),
            _ => None,
        };
        self.seen
            .lock()
            .unwrap()
            .push((name.into(), account.into(), dn.clone()));
        let ok = self
            .entries
            .iter()
            .any(|(uid, _, pw)| dn == Some(Self::dn(uid)) && *pw == password);
        Ok(if ok {
            Verdict::Accepted
        } else {
            Verdict::Rejected
        })
    }
}

async fn login_to(
    h: &Harness,
    d: &Arc<EntryDirectory>,
    user: &str,
    password: &str,
    client: &str,
) -> Result<Admitted, LoginRefused> {
    let directory: Arc<dyn Directory> = d.clone();
    h.policy
        .login(
            request(user, password, "192.0.2.1", client, ClientKind::Browser),
            &directory,
        )
        .await
}

#[tokio::test]
async fn with_a_service_account_every_name_of_an_entry_is_one_account() {
    let h = Harness::new(contract_defaults());
    let d = EntryDirectory::new();
    for (i, u) in [
        "ann lee",
        "ANN  LEE",
        "HUTCH\\Ann\u{A0}Lee",
        "Ann Smith",
        "ann\u{3000}lee@fhcrc.org",
    ]
    .into_iter()
    .enumerate()
    {
        let r = login_to(&h, &d, u, "wrong", "c-attacker").await;
        if i < 4 {
            assert!(is_bad(&r), "{u}: {r:?}");
        } else {
            assert!(is_locked(&r), "the fifth name of the entry locks it: {r:?}");
        }
    }
    // The lock is the entry's, under its own readable name.
    let locks = h.policy.lockouts().await.unwrap();
    assert_eq!(locks.len(), 1);
    assert_eq!(locks[0].key.account, "ann lee");
    assert_eq!(h.events.count("lockout ann lee"), 1);
    // Every name of it is refused now, the right password too, and nothing reaches a bind.
    for u in ["Ann Smith", "ann lee", "ann   lee"] {
        assert!(is_locked(&login_to(&h, &d, u, "pw-ann", "c1").await), "{u}");
    }
    assert_eq!(d.checks(), 5);
    // The directory was given each name as typed (less the domain), and the entry was bound.
    let seen = d.seen.lock().unwrap().clone();
    assert_eq!(seen[2].0, "Ann\u{A0}Lee");
    assert!(seen.iter().all(|(_, a, dn)| a == "ann lee"
        && dn.as_deref() == Some(EntryDirectory::dn("Ann Lee").as_str())));
    // An administrator finds it under any spelling.
    assert!(h.locked("ANN\u{3000}LEE").await.is_some());
    let u = h.policy.unlock("Ann   Lee").await.unwrap();
    assert_eq!(u.lifted.len(), 1);
    assert!(h.locked("Ann Smith").await.is_none());

    // One seat, one client: the entry's, whichever name each client typed.
    let a = login_to(&h, &d, "Ann Smith", "pw-ann", "c1").await.unwrap();
    assert_eq!(&*a.session.account, "ann lee");
    match login_to(&h, &d, "ann  lee", "pw-ann", "c2").await {
        Err(LoginRefused::OtherClientActive { .. }) => {}
        other => panic!("a second client of the entry: {other:?}"),
    }
    assert_eq!(h.seats().await, 1);
    // A kick by another spelling ends it.
    assert_eq!(h.policy.kick("ANN LEE").await.unwrap().len(), 1);
    assert_eq!(h.seats().await, 0);
    // Each spelling was looked up once, then remembered.
    let lookups = d.lookups();
    assert!(login_to(&h, &d, "Ann Smith", "pw-ann", "c1").await.is_ok());
    assert_eq!(d.lookups(), lookups);
}

#[tokio::test]
async fn with_a_service_account_unknown_names_count_like_wrong_passwords() {
    let h = Harness::new(contract_defaults());
    let d = EntryDirectory::new();
    // An unknown name and a known one with a wrong password: the same answer, the same work.
    let unknown = login_to(&h, &d, "No  Body", "guess", "c-attacker").await;
    let wrong = login_to(&h, &d, "bob", "guess", "c-attacker").await;
    assert!(is_bad(&unknown) && is_bad(&wrong), "{unknown:?} {wrong:?}");
    assert_eq!((d.lookups(), d.checks()), (2, 2));
    // Unknown names count under their prepared name.
    for u in ["no body", "NO   BODY", "No\u{A0}Body"] {
        assert!(
            is_bad(&login_to(&h, &d, u, "guess", "c-attacker").await),
            "{u}"
        );
    }
    assert!(is_locked(
        &login_to(&h, &d, "no body", "guess", "c-attacker").await
    ));
    assert_eq!(h.policy.lockouts().await.unwrap()[0].key.account, "no body");
    assert_eq!(h.events.count("login no body bad_credentials"), 4);
}

#[tokio::test]
async fn a_directory_outage_while_looking_a_name_up_is_a_503_that_counts_nothing() {
    let h = Harness::new(contract_defaults());
    let d = EntryDirectory::new();
    d.down.store(true, Ordering::SeqCst);
    for _ in 0..10 {
        assert!(matches!(
            login_to(&h, &d, "Ann Smith", "wrong", "c1").await,
            Err(LoginRefused::DirectoryUnavailable)
        ));
    }
    assert_eq!(
        (d.lookups(), d.checks()),
        (10, 0),
        "never a fall-through to a check"
    );
    assert_eq!(h.policy.status().await.unwrap().tracked_windows, 0);
    assert!(h.policy.lockouts().await.unwrap().is_empty());
    assert_eq!(h.events.count("directory error"), 10);
    assert_eq!(h.events.count("login ann smith directory_error"), 10);
    // Nothing was remembered: once it is back, the name is looked up.
    d.down.store(false, Ordering::SeqCst);
    assert!(login_to(&h, &d, "Ann Smith", "pw-ann", "c1").await.is_ok());
    assert_eq!(d.lookups(), 11);
}

#[tokio::test]
async fn an_empty_password_looks_nothing_up() {
    let h = Harness::new(contract_defaults());
    let d = EntryDirectory::new();
    assert!(is_bad(&login_to(&h, &d, "Ann Smith", "", "c1").await));
    assert_eq!((d.lookups(), d.checks()), (0, 0));
}

#[tokio::test]
async fn names_are_looked_up_again_after_the_cache_ttl_and_basic_callers_ride_the_answer() {
    let h = Harness::new(contract_defaults());
    let d = EntryDirectory::new();
    let directory: Arc<dyn Directory> = d.clone();
    let req = LoginRequest {
        agent: "curl/8",
        ..request(
            "Bob Jones",
            "pw-bob",
            "192.0.2.1",
            "basic:1",
            ClientKind::Basic,
        )
    };
    assert_eq!(
        h.policy.account("Bob Jones").as_deref(),
        Ok("bob jones"),
        "not looked up yet"
    );
    // Confirmed for the account the directory's entry names, not the name as typed.
    assert_eq!(
        h.policy.recheck(&req, &directory).await.unwrap(),
        ("bob".to_string(), Rechecked::Checked)
    );
    assert_eq!(h.policy.account("Bob Jones").as_deref(), Ok("bob"));
    assert_eq!(
        h.policy.recheck(&req, &directory).await.unwrap(),
        ("bob".to_string(), Rechecked::Cached)
    );
    assert_eq!(d.lookups(), 1);
    h.advance(CheckRules::default().cache_ttl);
    assert_eq!(h.policy.account("Bob Jones").as_deref(), Ok("bob jones"));
    assert_eq!(
        h.policy.recheck(&req, &directory).await.unwrap(),
        ("bob".to_string(), Rechecked::Checked)
    );
    assert_eq!(d.lookups(), 2);
    // A reload forgets what was looked up.
    let cfg = (**h.policy.cfg()).clone();
    h.policy.reload(cfg, unlimited_checks());
    assert_eq!(h.policy.account("Bob Jones").as_deref(), Ok("bob jones"));
}

#[tokio::test]
async fn a_lookup_takes_the_tokens_its_check_would_have() {
    let h = Harness::new(PolicyConfig {
        login_attempts_per_ip_per_minute: 3,
        ..contract_defaults()
    });
    let d = EntryDirectory::new();
    for u in ["x1", "x2", "x3"] {
        assert!(is_bad(&login_to(&h, &d, u, "guess", "c1").await), "{u}");
    }
    assert!(matches!(
        login_to(&h, &d, "x4", "guess", "c1").await,
        Err(LoginRefused::Throttled { .. })
    ));
    assert_eq!(
        (d.lookups(), d.checks()),
        (3, 3),
        "one token each, and a throttled name is not even looked up"
    );
}

// ----- accounts outside the directory (auth.local_accounts) -----

/// Faspex as the checker of its own accounts, for HTTP Basic callers: a table of local accounts,
/// matched as Faspex's MySQL collation matches names; counts what reaches it, and can be down.
struct FakeFaspex {
    accounts: Vec<(&'static str, &'static str)>,
    asked: AtomicUsize,
    down: AtomicBool,
}

impl FakeFaspex {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            accounts: vec![("collab", "pw-collab"), ("bob", "faspex-only-bob")],
            asked: AtomicUsize::new(0),
            down: AtomicBool::new(false),
        })
    }

    fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Directory for FakeFaspex {
    async fn verify(&self, name: &str, password: &str) -> Result<Verdict, DirectoryError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(DirectoryError("Faspex answered 503".into()));
        }
        let key = |n: &str| account::faspex_key(&account::prepare(n).unwrap_or_default());
        let ok = self
            .accounts
            .iter()
            .any(|(u, p)| key(u) == key(name) && *p == password);
        Ok(if ok {
            Verdict::Accepted
        } else {
            Verdict::Rejected
        })
    }
}

/// A harness whose directory is [`EntryDirectory`] with Faspex's own accounts beside it.
fn local_harness(local: LocalAccounts) -> (Harness, Arc<EntryDirectory>, Arc<FakeFaspex>) {
    let mut h = Harness::with_rules(
        contract_defaults(),
        0,
        CheckRules {
            local,
            ..unlimited_checks()
        },
    );
    let d = EntryDirectory::new();
    let f = FakeFaspex::new();
    let checker: Arc<dyn Directory> = f.clone();
    let local = match local {
        LocalAccounts::File | LocalAccounts::None => crate::auth::local::Local::File(checker),
        LocalAccounts::Faspex => crate::auth::local::Local::Faspex(checker),
    };
    h.directory = Arc::new(crate::auth::local::WithLocal::new(d.clone(), None, local));
    (h, d, f)
}

fn local_login(
    user: &'static str,
    password: &'static str,
    kind: ClientKind,
) -> LoginRequest<'static> {
    request(
        user,
        password,
        "192.0.2.1",
        &format!("c-{user}-{password}"),
        kind,
    )
}

impl Harness {
    /// A login of `user` with `password` by [`local_login`], up to Faspex's verdict.
    async fn local_pending(
        &self,
        user: &'static str,
        password: &'static str,
        kind: ClientKind,
    ) -> Result<PendingLogin, LoginRefused> {
        self.policy
            .login_pending(local_login(user, password, kind), &self.directory)
            .await
    }
}

/// A hundred parallel wrong guesses at a Faspex account by the login form, from a hundred
/// addresses: no more reach Faspex than the threshold (each admitted login is one guess Faspex
/// sees), and the account locks. (With `one_client_per_account = "reject"` fewer still reach it:
/// a login waiting for Faspex holds the account's one client, so the others are refused 409.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_guesses_at_a_faspex_account_reach_faspex_at_most_the_threshold() {
    let (h, _d, _f) = local_harness(LocalAccounts::Faspex);
    h.policy.reload(
        PolicyConfig {
            one_client_per_account: OneClient::Replace,
            ..contract_defaults()
        },
        CheckRules {
            local: LocalAccounts::Faspex,
            ..unlimited_checks()
        },
    );
    let reached = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..100 {
        let policy = h.policy.clone();
        let directory = h.directory.clone();
        let reached = reached.clone();
        tasks.push(tokio::spawn(async move {
            let client = ClientId(format!("c{i}").into());
            let ip: IpAddr = format!("198.51.100.{i}").parse().unwrap();
            let req = LoginRequest {
                client,
                ip,
                ..local_login("Collab", "guess", ClientKind::Browser)
            };
            match policy.login_pending(req, &directory).await {
                Ok(p) => {
                    assert!(p.faspex_checks());
                    assert_eq!(p.admitted().session.account_kind, AccountKind::Local);
                    reached.fetch_add(1, Ordering::SeqCst);
                    // Faspex takes a moment, then re-renders its form: a wrong password.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    p.reject().await.result()
                }
                Err(e) => e.result(),
            }
        }));
    }
    let mut results = HashMap::new();
    for t in tasks {
        *results.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(reached.load(Ordering::SeqCst), 5, "{results:?}");
    assert_eq!(results.get(&LoginResult::BadCredentials), Some(&4));
    assert_eq!(results.get(&LoginResult::Locked), Some(&96));
    let locks = h.policy.lockouts().await.unwrap();
    assert_eq!(locks.len(), 1);
    assert_eq!(locks[0].key.account, "collab");
    assert_eq!(locks[0].account_kind, AccountKind::Local);
    assert_eq!(h.seats().await, 0, "every admission was rolled back");
    // Spellings Faspex takes for the same account are locked with it.
    for spelling in ["collab", "COLLAB ", "cöllab"] {
        let r = h
            .local_pending(spelling, "pw-collab", ClientKind::Browser)
            .await;
        assert!(
            matches!(r, Err(LoginRefused::AccountLocked { .. })),
            "{spelling}: {r:?}"
        );
    }
    // The administrator lifts it by any of them.
    assert_eq!(h.policy.unlock("Cöllab").await.unwrap().lifted.len(), 1);
    let p = h
        .local_pending("collab", "pw-collab", ClientKind::Browser)
        .await
        .unwrap();
    let admitted = p.confirm().await;
    assert_eq!(admitted.session.account_kind, AccountKind::Local);
    assert_eq!(h.seats().await, 1);
}

/// A directory account's wrong password is never tried anywhere else, even where Faspex has a
/// local account of that name; a directory outage is a 503 for everyone, never a fall-through.
#[tokio::test]
async fn directory_accounts_never_fall_through_to_the_local_check() {
    let (h, d, f) = local_harness(LocalAccounts::Faspex);
    for kind in [ClientKind::Basic, ClientKind::Browser] {
        let r = h.local_pending("bob", "faspex-only-bob", kind).await;
        assert!(matches!(r, Err(LoginRefused::BadCredentials)), "{r:?}");
    }
    assert_eq!(f.asked(), 0, "Faspex never saw a directory user's guess");
    assert_eq!(d.checks(), 2);
    d.down.store(true, Ordering::SeqCst);
    h.advance(HOUR);
    for user in ["bob", "collab", "nobody"] {
        let r = h.local_pending(user, "pw-collab", ClientKind::Basic).await;
        assert!(
            matches!(r, Err(LoginRefused::DirectoryUnavailable)),
            "{user}: {r:?}"
        );
    }
    assert_eq!(f.asked(), 0);
}

/// An HTTP Basic caller with a Faspex account is checked by Faspex (its own check), counted
/// like anyone; Faspex down is no verdict (502), counted against no one.
#[tokio::test]
async fn basic_callers_with_faspex_accounts_are_checked_by_faspex() {
    let (h, _d, f) = local_harness(LocalAccounts::Faspex);
    let p = h
        .local_pending("collab", "pw-collab", ClientKind::Basic)
        .await
        .unwrap();
    assert!(
        !p.faspex_checks(),
        "checked already, by its own request to Faspex"
    );
    let a = p.confirm().await;
    assert_eq!(a.session.account_kind, AccountKind::Local);
    assert_eq!(&*a.session.account, "collab");
    assert_eq!(f.asked(), 1);

    f.down.store(true, Ordering::SeqCst);
    for _ in 0..10 {
        let r = h.local_pending("collab", "wrong", ClientKind::Basic).await;
        assert!(matches!(r, Err(LoginRefused::FaspexUnavailable)), "{r:?}");
        assert_eq!(
            refusal_status(&r.unwrap_err()).0,
            http::StatusCode::BAD_GATEWAY
        );
    }
    assert!(
        h.policy.lockouts().await.unwrap().is_empty(),
        "nothing counted"
    );
    f.down.store(false, Ordering::SeqCst);
    for i in 0..5 {
        let r = h.local_pending("collab", "wrong", ClientKind::Basic).await;
        if i < 4 {
            assert!(matches!(r, Err(LoginRefused::BadCredentials)), "{r:?}");
        } else {
            assert!(
                matches!(r, Err(LoginRefused::AccountLocked { .. })),
                "{r:?}"
            );
        }
    }
}

/// A login Faspex answers with an error, or never answers, is no verdict: the admission is
/// rolled back and nothing counts.
#[tokio::test]
async fn a_faspex_error_on_a_local_login_counts_nothing() {
    let (h, _d, _f) = local_harness(LocalAccounts::Faspex);
    for _ in 0..10 {
        let p = h
            .local_pending("collab", "guess", ClientKind::Browser)
            .await
            .unwrap();
        p.refuse().await.unwrap();
    }
    // The client went away before Faspex answered: the same.
    let p = h
        .local_pending("collab", "guess", ClientKind::Browser)
        .await
        .unwrap();
    drop(p);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(h.seats().await, 0);
    assert!(h.policy.lockouts().await.unwrap().is_empty());
    // And five real refusals still lock, as ever.
    for i in 0..5 {
        let p = h
            .local_pending("collab", "guess", ClientKind::Browser)
            .await
            .unwrap();
        let r = p.reject().await;
        assert_eq!(
            i == 4,
            matches!(r, LoginRefused::AccountLocked { .. }),
            "{r:?}"
        );
    }
}

/// `auth.local_accounts = "file"`: the users file checks names the directory does not know.
#[tokio::test]
async fn the_users_file_checks_names_the_directory_does_not_know() {
    let (h, d, f) = local_harness(LocalAccounts::File);
    let p = h
        .local_pending("collab", "pw-collab", ClientKind::Browser)
        .await
        .unwrap();
    assert!(!p.faspex_checks());
    let a = p.confirm().await;
    assert_eq!(a.session.account_kind, AccountKind::Local);
    assert_eq!(f.asked(), 1);
    assert_eq!(
        d.checks(),
        0,
        "the directory was only asked whether it knows the name"
    );
    let r = h
        .local_pending("bob", "faspex-only-bob", ClientKind::Browser)
        .await;
    assert!(matches!(r, Err(LoginRefused::BadCredentials)));
    assert_eq!(f.asked(), 1);
}
