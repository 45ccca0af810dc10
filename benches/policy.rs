//! How many admissions, session checks and lockout decisions per second the policy engine makes,
//! over the real embedded store (redb, durable commits) in a temporary folder.
//!
//! `cargo bench --bench policy`. This is a measurement, not a test: it asserts only that the work
//! it timed really happened. The directory is an in-memory one (`TestDirectory`), so the figures are the
//! engine's and the store's, not LDAP's.

use std::sync::Arc;

#[path = "../tests/engine.rs"]
mod engine;
#[path = "support/mod.rs"]
mod support;

use faspex_gate::auth::testing::TestDirectory;
use faspex_gate::auth::Directory;
use faspex_gate::config::PolicyConfig;
use faspex_gate::policy::{CheckRules, LoginRefused, LoginRequest, Policy};
use faspex_gate::store::embedded::EmbeddedStore;
use faspex_gate::store::{EndReason, SessionToken};

fn config(max_sessions: u32) -> PolicyConfig {
    PolicyConfig {
        max_sessions,
        username_domains: vec!["HUTCH".into()],
        login_attempts_per_ip_per_minute: u32::MAX / 2,
        public_requests_per_ip_per_minute: u32::MAX / 2,
        ..PolicyConfig::default()
    }
}

/// What a measurement runs on: an engine over a fresh store in a temporary folder, and a
/// directory that knows every account (it counts the checks it runs).
struct Setup {
    policy: Policy,
    store: Arc<EmbeddedStore>,
    dir: Arc<TestDirectory>,
    directory: Arc<dyn Directory>,
    _tmp: tempfile::TempDir,
}

fn setup(max_sessions: u32) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let checks = CheckRules {
        max_checks_per_second: u32::MAX / 2,
        ..Default::default()
    };
    let (policy, store) = engine::open(tmp.path(), config(max_sessions), checks);
    let dir = TestDirectory::any_account();
    Setup {
        policy,
        store,
        directory: dir.clone(),
        dir,
        _tmp: tmp,
    }
}

fn req<'a>(user: &'a str, password: &'a str, client: String) -> LoginRequest<'a> {
    engine::browser_login(user, password, "10.0.0.1", "bench", client)
}

/// Log `user0` to `user{n-1}` in with their right passwords, from clients `c0`, `c1` and so on.
async fn log_in_users(s: &Setup, n: usize) -> Vec<SessionToken> {
    let mut tokens = Vec::new();
    for u in 0..n {
        let user = format!("user{u}");
        let pw = format!("pw-{user}");
        let login = req(&user, &pw, format!("c{u}"));
        tokens.push(s.policy.login(login, &s.directory).await.unwrap().token);
    }
    tokens
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn row(what: &str, workers: usize, per_sec: f64) {
    println!("| {what:<58} | {workers:>7} | {per_sec:>12.0} |");
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `cargo bench --bench policy -- login-latency`: only the stores' login latency.
    if std::env::args().any(|a| a == "login-latency") {
        login_latency_by_store().await;
        return;
    }
    println!("policy engine over the embedded store (redb, durable group commits)");
    println!(
        "| operation                                                  | workers |   per second |"
    );
    println!(
        "|------------------------------------------------------------|---------|--------------|"
    );

    // Admissions: check + seat admission, each made durable before it returns, then a logout
    // (also durable) so the seat frees again.
    for workers in [1, 16, 64] {
        let s = setup(1_000_000);
        let total = if workers == 1 { 500 } else { 5_000 };
        let (p, d) = (s.policy.clone(), s.directory.clone());
        let rate = support::run(workers, total, move |i| {
            let (p, d) = (p.clone(), d.clone());
            async move {
                let user = format!("user{i}");
                let pw = format!("pw-user{i}");
                let a = p.login(req(&user, &pw, format!("c{i}")), &d).await.unwrap();
                p.end(&a.session.key, EndReason::Logout).await.unwrap();
            }
        })
        .await;
        assert_eq!(s.dir.checks(), total);
        row(
            "login + logout (admission and end, both durable)",
            workers,
            rate,
        );
        s.store.close().await.unwrap();
    }

    // The hot path: a request carrying a session cookie (lookup, deadline check, activity).
    {
        let s = setup(10);
        let tokens: Vec<_> = log_in_users(&s, 10)
            .await
            .into_iter()
            .map(Arc::new)
            .collect();
        let tokens = Arc::new(tokens);
        for workers in [1, 16] {
            let (p, t) = (s.policy.clone(), tokens.clone());
            let rate = support::run(workers, 1_000_000, move |i| {
                let (p, t) = (p.clone(), t.clone());
                async move {
                    let s = p.session(&t[i % 10], "/aspera/faspex/inbox").await.unwrap();
                    assert!(s.is_ok());
                }
            })
            .await;
            row(
                "session check on a request (cookie, counts as activity)",
                workers,
                rate,
            );
        }
        s.store.close().await.unwrap();
    }

    // Lockout decisions that run a check: wrong guesses spread over many accounts (reserve,
    // check, count; written behind).
    for workers in [1, 16] {
        let s = setup(10);
        let (p, d) = (s.policy.clone(), s.directory.clone());
        let total = 200_000;
        let rate = support::run(workers, total, move |i| {
            let (p, d) = (p.clone(), d.clone());
            async move {
                // Four guesses per account: counted, never locking.
                let user = format!("acct{}", i / 4);
                let pw = format!("guess{i}");
                let r = p.login(req(&user, &pw, "c".into()), &d).await;
                assert!(matches!(r, Err(LoginRefused::BadCredentials)));
            }
        })
        .await;
        assert_eq!(s.dir.checks(), total);
        row(
            "wrong guess: reserve, check, count a failure",
            workers,
            rate,
        );
        s.store.close().await.unwrap();
    }

    // Lockout decisions that refuse without a check: attempts on locked accounts.
    {
        let s = setup(10);
        for a in 0..100 {
            s.policy.lock(&format!("locked{a}"), None).await.unwrap();
        }
        for workers in [1, 16] {
            let (p, d) = (s.policy.clone(), s.directory.clone());
            let rate = support::run(workers, 500_000, move |i| {
                let (p, d) = (p.clone(), d.clone());
                async move {
                    let user = format!("locked{}", i % 100);
                    let r = p.login(req(&user, "guess", "c".into()), &d).await;
                    assert!(matches!(r, Err(LoginRefused::AccountLocked { .. })));
                }
            })
            .await;
            row(
                "attempt on a locked account (refused, no check)",
                workers,
                rate,
            );
        }
        assert_eq!(s.dir.checks(), 0);
        s.store.close().await.unwrap();
    }

    // Memory: fill every failure window with the longest names, and see what it costs.
    {
        let s = setup(10);
        let before = rss_kib();
        let (p, d) = (s.policy.clone(), s.directory.clone());
        let rate = support::run(16, 300_000, move |i| {
            let (p, d) = (p.clone(), d.clone());
            async move {
                // 256-byte names: the longest accepted.
                let user = format!("{i:0>256}");
                let r = p.login(req(&user, "guess", "c".into()), &d).await;
                assert!(matches!(r, Err(LoginRefused::BadCredentials)));
            }
        })
        .await;
        s.policy.flush().await.unwrap();
        let st = s.policy.status().await.unwrap();
        let grown = rss_kib().saturating_sub(before);
        row(
            "spray of 300,000 distinct 256-byte names (wrong guesses)",
            16,
            rate,
        );
        println!(
            "\nspray: {} windows tracked (bound 100000); process RSS grew {} MiB",
            st.tracked_windows,
            grown / 1024
        );
        s.store.close().await.unwrap();
    }

    // Refusals at a full cap (a check, then admission says no).
    {
        let s = setup(10);
        log_in_users(&s, 10).await;
        let (p, d) = (s.policy.clone(), s.directory.clone());
        let rate = support::run(16, 200_000, move |i| {
            let (p, d) = (p.clone(), d.clone());
            async move {
                let user = format!("other{i}");
                let pw = format!("pw-{user}");
                let r = p.login(req(&user, &pw, "c".into()), &d).await;
                assert!(matches!(r, Err(LoginRefused::LicenseFull { .. })));
            }
        })
        .await;
        row(
            "admission refused at a full cap (check, then no seat)",
            16,
            rate,
        );
        s.store.close().await.unwrap();
    }

    login_latency_by_store().await;
}

/// One login's latency (a check with an in-memory directory, plus the admission, made durable),
/// one at a time, on the embedded store and on a local `redis-server` (functions, time from
/// Redis, loopback): medians and 99th percentiles, and what Redis adds.
async fn login_latency_by_store() {
    use faspex_gate::store::redis::server::RedisServer;
    use faspex_gate::store::redis::{RedisOptions, RedisStore, Time};
    use faspex_gate::store::PolicyStore;

    const N: usize = 2_000;
    let redis = RedisServer::start();
    let mut rows = Vec::new();
    for on_redis in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn PolicyStore> = if on_redis {
            let opts = RedisOptions::new(redis.url(), "bench", Time::Server);
            Arc::new(RedisStore::connect(opts).await.unwrap())
        } else {
            Arc::new(EmbeddedStore::open(tmp.path()).unwrap())
        };
        let policy = Policy::new(
            config(1_000_000),
            CheckRules {
                max_checks_per_second: u32::MAX / 2,
                ..Default::default()
            },
            Arc::clone(&store),
            Arc::new(faspex_gate::clock::SystemClock),
            Arc::new(engine::Quiet),
        );
        let dir: Arc<dyn Directory> = TestDirectory::any_account();
        let mut us = Vec::with_capacity(N);
        for i in 0..N {
            let user = format!("user{i}");
            let pw = format!("pw-{user}");
            let t = std::time::Instant::now();
            let a = policy
                .login(req(&user, &pw, format!("c{i}")), &dir)
                .await
                .unwrap();
            us.push(t.elapsed().as_secs_f64() * 1e6);
            policy.end(&a.session.key, EndReason::Logout).await.unwrap();
        }
        us.sort_by(f64::total_cmp);
        let q = |p: f64| us[((us.len() as f64 - 1.0) * p) as usize];
        rows.push((if on_redis { "redis" } else { "embedded" }, q(0.5), q(0.99)));
    }
    println!("\nlogin latency (check + admission, durable), one at a time, {N} logins");
    println!("| store    | median µs | p99 µs |");
    println!("|----------|----------:|-------:|");
    for (name, p50, p99) in &rows {
        println!("| {name:<8} | {p50:>9.0} | {p99:>6.0} |");
    }
    println!(
        "added by Redis on loopback: median {:+.0} µs, p99 {:+.0} µs",
        rows[1].1 - rows[0].1,
        rows[1].2 - rows[0].2
    );
}
