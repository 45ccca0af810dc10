//! Credential checks per second against a real OpenLDAP `slapd` (started here, as the tests start
//! it), and what the verification cache saves an HTTP Basic API caller.
//!
//! `cargo bench --bench ldap` (needs Debian's `slapd` and `ldap-utils`). This is a measurement,
//! not a test: it asserts only that the work it timed really happened (every check accepted, and
//! slapd saw the binds). slapd and the gateway share this machine's cores, so the figures are a
//! floor for a real directory on its own host.

#[path = "../tests/slapd.rs"]
mod slapd;
#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use faspex_gate::auth::ldap::LdapDirectory;
use faspex_gate::auth::{Directory, Verdict};
use faspex_gate::clock::SystemClock;
use faspex_gate::config::{LdapConfig, PolicyConfig, Secret};
use faspex_gate::policy::{CheckRules, LoginRequest, Observer, Policy, PolicyEvent, Rechecked};
use faspex_gate::store::embedded::EmbeddedStore;
use faspex_gate::store::ClientKind;

const USERS: usize = 200;

struct Quiet;
impl Observer for Quiet {
    fn event(&self, _: &PolicyEvent<'_>) {}
}

fn ldap_config(url: String, search: bool, pool_size: usize) -> LdapConfig {
    LdapConfig {
        urls: vec![url.parse().unwrap()],
        starttls: false,
        ca_file: None,
        user_dn_template: (!search).then(|| slapd::DIRECT_TEMPLATE.into()),
        bind_dn: search.then(|| slapd::SERVICE_DN.into()),
        bind_password_file: None,
        bind_password: search.then(|| Secret::new(slapd::SERVICE_PW)),
        base_dn: search.then(|| slapd::SUFFIX.into()),
        user_filter: "(&(objectClass=inetOrgPerson)(uid={username}))".into(),
        require_group: Some(slapd::GROUP_DN.into()),
        nested_groups: false,
        pool_size,
        timeout: Duration::from_secs(5),
    }
}

fn row(what: &str, workers: usize, per_sec: f64) {
    println!("| {what:<62} | {workers:>7} | {per_sec:>12.0} |");
}

fn engine(dir: &std::path::Path, cache_ttl: Duration) -> Policy {
    let store = Arc::new(EmbeddedStore::open(dir).unwrap());
    Policy::new(
        PolicyConfig {
            max_sessions: 1_000,
            login_attempts_per_ip_per_minute: u32::MAX / 2,
            ..PolicyConfig::default()
        },
        CheckRules {
            max_checks_per_second: u32::MAX / 2,
            cache_ttl,
            ..CheckRules::default()
        },
        store,
        Arc::new(SystemClock),
        Arc::new(Quiet),
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let quick =
        std::env::args().any(|a| a == "--quick") || std::env::var_os("BENCH_QUICK").is_some();
    let scale = if quick { 10 } else { 1 };
    let s = slapd::Slapd::start_with(&slapd::bulk_people(USERS));
    println!(
        "credential checks against a local slapd (OpenLDAP {}), group restriction on",
        {
            let v = std::process::Command::new("/usr/sbin/slapd")
                .arg("-VV")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            v.split_whitespace().nth(3).unwrap_or("?").to_owned()
        }
    );
    println!(
        "| check                                                          | workers |   per second |"
    );
    println!(
        "|----------------------------------------------------------------|---------|--------------|"
    );

    for (search, label) in [
        (false, "direct bind + group search"),
        (true, "search, bind, group search"),
    ] {
        for workers in [1, 8] {
            let d = Arc::new(
                LdapDirectory::new(&ldap_config(s.url(), search, 8), Arc::new(SystemClock))
                    .unwrap(),
            );
            let total = if workers == 1 { 1_000 } else { 4_000 } / scale;
            let dd = d.clone();
            let rate = support::run(workers, total, move |i| {
                let d = dd.clone();
                async move {
                    let u = format!("user{}", i % USERS);
                    let v = d.verify(&u, &format!("pw-{u}")).await.unwrap();
                    assert_eq!(v, Verdict::Accepted);
                }
            })
            .await;
            row(&format!("LdapDirectory::verify: {label}"), workers, rate);
        }
    }

    // A wrong password: the same operations, refused.
    {
        let d = Arc::new(
            LdapDirectory::new(&ldap_config(s.url(), true, 8), Arc::new(SystemClock)).unwrap(),
        );
        let total = 4_000 / scale;
        let dd = d.clone();
        let rate = support::run(8, total, move |i| {
            let d = dd.clone();
            async move {
                let u = format!("user{}", i % USERS);
                assert_eq!(d.verify(&u, "wrong").await.unwrap(), Verdict::Rejected);
            }
        })
        .await;
        row("LdapDirectory::verify: search, wrong password", 8, rate);
    }

    // The users-file backend: argon2id (OWASP parameters) behind max_concurrent_hashes = 2.
    {
        let text = format!(
            "[users.ann]\nhash = \"{}\"\n",
            faspex_gate::auth::password::hash("pw-ann").unwrap()
        );
        let users = faspex_gate::auth::file::parse_users(&text, |n| Some(n.to_owned())).unwrap();
        let d = Arc::new(faspex_gate::auth::file::FileDirectory::new(users, 2).unwrap());
        let total = 200 / scale;
        let dd = d.clone();
        let rate = support::run(8, total, move |_| {
            let d = dd.clone();
            async move {
                assert_eq!(d.verify("ann", "pw-ann").await.unwrap(), Verdict::Accepted);
            }
        })
        .await;
        assert!(d.most_at_once() <= 2);
        row("FileDirectory::verify (argon2id, 2 at once)", 8, rate);
    }

    // A Basic API caller's requests through the engine: without the cache every request is a
    // credential check (throttle, lockout reservation, bind), with it only the first is.
    for (ttl, label) in [
        (
            Duration::ZERO,
            "engine recheck, cache off (every request binds)",
        ),
        (Duration::from_secs(300), "engine recheck, cache on (hits)"),
    ] {
        for workers in [1, 8] {
            let tmp = tempfile::tempdir().unwrap();
            let policy = engine(tmp.path(), ttl);
            let directory: Arc<dyn Directory> = Arc::new(
                LdapDirectory::new(&ldap_config(s.url(), true, 8), Arc::new(SystemClock)).unwrap(),
            );
            // Each caller logs in once (and is cached, when the cache is on).
            for i in 0..USERS {
                let u = format!("user{i}");
                let pw = format!("pw-{u}");
                policy.login(request(&u, &pw, i), &directory).await.unwrap();
            }
            let binds_before = s.binds("uid=user").len();
            let total = if ttl.is_zero() {
                if workers == 1 {
                    1_000
                } else {
                    4_000
                }
            } else {
                200_000
            } / scale;
            let cached = Arc::new(AtomicUsize::new(0));
            let (p, d, c) = (policy.clone(), directory.clone(), cached.clone());
            let rate = support::run(workers, total, move |i| {
                let (p, d, c) = (p.clone(), d.clone(), c.clone());
                async move {
                    let n = i % USERS;
                    let u = format!("user{n}");
                    let pw = format!("pw-{u}");
                    match p.recheck(&request(&u, &pw, n), &d).await.unwrap().1 {
                        Rechecked::Cached => {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                        Rechecked::Checked => {}
                    }
                }
            })
            .await;
            let hits = cached.load(Ordering::Relaxed);
            let binds = s.binds("uid=user").len() - binds_before;
            if ttl.is_zero() {
                assert_eq!(hits, 0);
                assert_eq!(binds, total, "every request bound");
            } else {
                assert_eq!(hits, total);
                assert_eq!(binds, 0, "no request bound");
            }
            row(label, workers, rate);
        }
    }
}

fn request<'a>(user: &'a str, password: &'a str, n: usize) -> LoginRequest<'a> {
    let ip = format!("10.0.{}.{}", n / 250, n % 250 + 1).parse().unwrap();
    LoginRequest {
        username: user,
        password,
        ip,
        agent: "curl/8",
        client: LoginRequest::basic_client(ip, "curl/8"),
        kind: ClientKind::Basic,
        takeover: false,
    }
}
