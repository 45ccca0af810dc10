//! Credential checks against a real OpenLDAP `slapd` (see `slapd.rs`): both bind modes, ldaps
//! and StartTLS with a test CA, failover when a server is down or hangs, a downed directory,
//! hostile usernames, empty passwords, the group restriction and the global ceiling; and, against
//! a hostile raw-socket directory ([`Flood`]), a search answered without end (entries,
//! referrals or intermediate responses).

use std::sync::Arc;
use std::time::{Duration, Instant};

use faspex_gate::auth::ldap::LdapDirectory;
use faspex_gate::auth::{Directory, Verdict};
use faspex_gate::clock::ManualClock;
use faspex_gate::config::{LdapConfig, PolicyConfig, Secret};
use faspex_gate::metrics::Metrics;
use faspex_gate::policy::{
    CheckRules, LogObserver, LoginRefused, LoginRequest, Observer, Observers, Policy,
};
use faspex_gate::store::embedded::EmbeddedStore;
use faspex_gate::store::{ClientId, ClientKind};

use crate::slapd::{self, Slapd};

/// Direct bind through `uid={username},ou=people,…`.
pub fn direct(urls: &[String]) -> LdapConfig {
    LdapConfig {
        urls: urls.iter().map(|u| u.parse().unwrap()).collect(),
        starttls: false,
        ca_file: None,
        user_dn_template: Some(slapd::DIRECT_TEMPLATE.into()),
        bind_dn: None,
        bind_password_file: None,
        bind_password: None,
        base_dn: None,
        user_filter: "(sAMAccountName={username})".into(),
        require_group: None,
        nested_groups: false,
        pool_size: 4,
        timeout: Duration::from_secs(2),
    }
}

/// Search with the service account, then bind.
pub fn search(urls: &[String]) -> LdapConfig {
    LdapConfig {
        user_dn_template: None,
        bind_dn: Some(slapd::SERVICE_DN.into()),
        bind_password: Some(Secret::new(slapd::SERVICE_PW)),
        base_dn: Some(slapd::SUFFIX.into()),
        user_filter: slapd::USER_FILTER.into(),
        ..direct(urls)
    }
}

/// Both bind modes, with `require_group` set.
fn both_modes_in_the_group(s: &Slapd) -> [(&'static str, LdapConfig); 2] {
    [
        ("direct", direct(&[s.url()])),
        ("search", search(&[s.url()])),
    ]
    .map(|(mode, mut cfg)| {
        cfg.require_group = Some(slapd::GROUP_DN.into());
        (mode, cfg)
    })
}

fn dir(cfg: &LdapConfig) -> LdapDirectory {
    LdapDirectory::new(cfg, std::sync::Arc::new(faspex_gate::clock::SystemClock))
        .expect("the LDAP backend builds")
}

async fn verdict(d: &LdapDirectory, user: &str, pw: &str) -> Verdict {
    d.verify(user, pw)
        .await
        .unwrap_or_else(|e| panic!("{user}: {e}"))
}

#[tokio::test]
async fn direct_bind_accepts_the_right_password_only() {
    let s = Slapd::start();
    let d = dir(&direct(&[s.url()]));
    assert_eq!(verdict(&d, "ann", "ann-pw").await, Verdict::Accepted);
    assert_eq!(verdict(&d, "ann", "bob-pw").await, Verdict::Rejected);
    assert_eq!(verdict(&d, "nobody", "ann-pw").await, Verdict::Rejected);
    assert_eq!(
        s.binds("uid=ann,ou=people").len(),
        2,
        "one bind per check: {:?}",
        s.all_binds()
    );
    assert_eq!(
        s.binds("uid=nobody").len(),
        1,
        "an unknown user is one bind too"
    );
    // An entry that cannot authenticate (as a disabled account cannot) is a plain wrong password.
    assert_eq!(verdict(&d, "nopass", "anything").await, Verdict::Rejected);
    assert_eq!(s.binds("uid=nopass").len(), 1, "the directory was asked");
}

#[tokio::test]
async fn search_then_bind_finds_the_entry_and_reuses_pooled_connections() {
    let s = Slapd::start();
    let d = dir(&search(&[s.url()]));
    assert_eq!(verdict(&d, "ann", "ann-pw").await, Verdict::Accepted);
    // The filter matches cn as well as uid: the entry's DN is what gets bound.
    assert_eq!(verdict(&d, "Bob Jones", "bob-pw").await, Verdict::Accepted);
    assert_eq!(verdict(&d, "ann", "wrong").await, Verdict::Rejected);
    // An unknown user runs a dummy bind, which the directory refuses: same work, same answer.
    assert_eq!(verdict(&d, "nobody", "ann-pw").await, Verdict::Rejected);
    assert_eq!(s.binds("cn=faspex-gate-no-such-user-").len(), 1);
    // An ambiguous name (two entries with cn "Twin") is refused, even with the right password.
    assert_eq!(verdict(&d, "Twin", "twin-pw").await, Verdict::Rejected);
    // Three: slapd sends two and sizeLimitExceeded, within what the search allows: refused the
    // same way, not a directory failure.
    assert_eq!(verdict(&d, "Triplet", "trip-pw").await, Verdict::Rejected);

    for _ in 0..40 {
        assert_eq!(verdict(&d, "ann", "ann-pw").await, Verdict::Accepted);
    }
    let (connects, _, searches) = d.stats();
    assert!(
        connects <= 2,
        "one service and one bind connection, reused: {connects} connects"
    );
    assert_eq!(searches, 46);
    assert_eq!(
        s.binds(slapd::SERVICE_DN).len(),
        1,
        "the service account bound once, on its pooled connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_checks_use_at_most_pool_size_connections_per_pool() {
    let s = Slapd::start();
    let d = Arc::new(dir(&search(&[s.url()])));
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move {
                let (u, p) = if i % 2 == 0 {
                    ("ann", "ann-pw")
                } else {
                    ("bob", "nope")
                };
                d.verify(u, p).await.unwrap()
            })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        if t.await.unwrap() == Verdict::Accepted {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 32);
    let (connects, _, _) = d.stats();
    assert!(connects <= 8, "pool_size 4 per pool: {connects} connects");
}

#[tokio::test]
async fn ldaps_and_starttls_verify_the_server_against_ca_file() {
    let s = Slapd::start();
    let mut cfg = direct(&[s.ldaps_url()]);
    cfg.ca_file = Some(s.ca_file.clone());
    assert_eq!(
        verdict(&dir(&cfg), "ann", "ann-pw").await,
        Verdict::Accepted
    );

    let mut cfg = direct(&[format!("ldap://localhost:{}", s.port)]);
    cfg.starttls = true;
    cfg.ca_file = Some(s.ca_file.clone());
    assert_eq!(
        verdict(&dir(&cfg), "ann", "ann-pw").await,
        Verdict::Accepted
    );

    // A certificate for another name is refused.
    let other = Slapd::start_named(&["ldap.example.org"]);
    let mut cfg = direct(&[other.ldaps_url()]);
    cfg.ca_file = Some(other.ca_file.clone());
    let e = dir(&cfg).verify("ann", "ann-pw").await.unwrap_err();
    assert!(e.0.contains("no directory server answered"), "{e}");
    let mut cfg = direct(&[format!("ldaps://127.0.0.1:{}", other.tls_port)]);
    cfg.ca_file = Some(other.ca_file.clone());
    assert!(dir(&cfg).verify("ann", "ann-pw").await.is_err());
    assert!(other.binds("uid=ann").is_empty());

    // Without the CA the certificate is not trusted: no answer, never a bind in the clear.
    let before = s.binds("uid=ann").len();
    let cfg = direct(&[s.ldaps_url()]);
    let e = dir(&cfg).verify("ann", "ann-pw").await.unwrap_err();
    assert!(e.0.contains("no directory server answered"), "{e}");
    let mut cfg = direct(&[format!("ldap://localhost:{}", s.port)]);
    cfg.starttls = true;
    assert!(dir(&cfg).verify("ann", "ann-pw").await.is_err());
    assert_eq!(
        s.binds("uid=ann").len(),
        before,
        "no password left the gateway"
    );
}

#[tokio::test]
async fn a_down_first_server_fails_over_to_the_second() {
    let s = Slapd::start();
    let dead = format!("ldap://127.0.0.1:{}", slapd::free_port());
    let d = dir(&direct(&[dead, s.url()]));
    let t = Instant::now();
    assert_eq!(verdict(&d, "ann", "ann-pw").await, Verdict::Accepted);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a refused connect fails over at once"
    );
    // The dead server is skipped from now on.
    let (connects, _, _) = d.stats();
    assert_eq!(verdict(&d, "ann", "ann-pw").await, Verdict::Accepted);
    assert_eq!(
        d.stats().0,
        connects,
        "the pooled connection to the live server is reused"
    );
}

#[tokio::test]
async fn a_hung_server_fails_over_within_the_timeout_even_with_pooled_connections() {
    let a = Slapd::start();
    let b = Slapd::start();
    let mut cfg = search(&[a.url(), b.url()]);
    cfg.timeout = Duration::from_secs(1);
    let d = dir(&cfg);
    // Warm both pools on server A.
    assert_eq!(verdict(&d, "ann", "ann-pw").await, Verdict::Accepted);
    assert_eq!(a.binds("uid=ann").len(), 1);

    a.hang();
    let t = Instant::now();
    assert_eq!(verdict(&d, "ann", "ann-pw").await, Verdict::Accepted);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "failed over in {took:?}");
    assert_eq!(b.binds("uid=ann").len(), 1, "server B answered");
    // While A is skipped, checks go straight to B.
    let t = Instant::now();
    assert_eq!(verdict(&d, "bob", "bob-pw").await, Verdict::Accepted);
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    a.resume();
}

#[tokio::test]
async fn when_every_server_was_down_each_is_still_tried_once_per_check() {
    let a = Slapd::start();
    let mut b = Slapd::start();
    let mut cfg = direct(&[a.url(), b.url()]);
    cfg.timeout = Duration::from_millis(500);
    let d = dir(&cfg);
    a.hang();
    b.kill();
    assert!(d.verify("ann", "ann-pw").await.is_err(), "both down");
    // B comes back while A still hangs: A (down longest) is tried first, once, then B answers.
    b.run();
    let (connects, _, _) = d.stats();
    let t = Instant::now();
    assert_eq!(verdict(&d, "ann", "ann-pw").await, Verdict::Accepted);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "A's timeout, then B: {took:?}"
    );
    assert_eq!(d.stats().0 - connects, 2, "one connection to A, one to B");
    assert_eq!(b.binds("uid=ann").len(), 1);
    a.resume();
}

#[tokio::test]
async fn a_hung_only_server_gives_an_error_in_bounded_time() {
    let s = Slapd::start();
    let mut cfg = direct(&[s.url()]);
    cfg.timeout = Duration::from_millis(500);
    let d = dir(&cfg);
    s.hang();
    let t = Instant::now();
    let e = d.verify("ann", "ann-pw").await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(e.0.contains("no answer"), "{e}");
    s.resume();
    // Once it answers again, after the skip period or as the only server, checks work.
    assert_eq!(verdict(&d, "ann", "ann-pw").await, Verdict::Accepted);
}

fn engine(tmp: &std::path::Path, clock: &ManualClock, checks: CheckRules) -> Policy {
    engine_observed(tmp, clock, checks, Arc::new(LogObserver))
}

fn engine_observed(
    tmp: &std::path::Path,
    clock: &ManualClock,
    checks: CheckRules,
    observer: Arc<dyn Observer>,
) -> Policy {
    let store = Arc::new(EmbeddedStore::open(tmp).unwrap());
    Policy::new(
        PolicyConfig::default(),
        checks,
        store,
        Arc::new(clock.clone()),
        observer,
    )
}

fn login<'a>(user: &'a str, pw: &'a str, ip: &str) -> LoginRequest<'a> {
    LoginRequest {
        username: user,
        password: pw,
        ip: ip.parse().unwrap(),
        agent: "test",
        client: ClientId(format!("browser-{ip}").into()),
        kind: ClientKind::Browser,
        takeover: false,
    }
}

#[tokio::test]
async fn a_downed_directory_answers_503_and_locks_nobody_out() {
    let mut s = Slapd::start();
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_2026();
    let metrics = Arc::new(Metrics::new().unwrap());
    let policy = engine_observed(
        tmp.path(),
        &clock,
        CheckRules::default(),
        Arc::new(Observers(vec![Arc::new(LogObserver), metrics.clone()])),
    );
    let d: Arc<dyn Directory> = Arc::new(dir(&direct(&[s.url()])));
    s.kill();
    for i in 0..10 {
        let r = policy
            .login(login("ann", "whatever", "192.0.2.1"), &d)
            .await;
        match r {
            Err(e @ LoginRefused::DirectoryUnavailable) => {
                assert_eq!(
                    faspex_gate::proxy::error::refusal_status(&e).0,
                    http::StatusCode::SERVICE_UNAVAILABLE
                )
            }
            other => panic!("attempt {i}: {other:?}"),
        }
    }
    assert!(policy
        .lock_state("ann", "192.0.2.1".parse().unwrap())
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        policy.status().await.unwrap().tracked_windows,
        0,
        "nothing counted"
    );
    // Logged, and counted in the metrics.
    let text = metrics.render();
    for series in [
        "faspex_gate_directory_duration_seconds_count{result=\"error\"} 10",
        "faspex_gate_logins_total{result=\"directory_error\"} 10",
        "faspex_gate_logins_total{result=\"bad_credentials\"} 0",
        "faspex_gate_lockouts_total 0",
    ] {
        assert!(text.lines().any(|l| l == series), "{series} in\n{text}");
    }
    // Back up: the only server is tried even while it is marked down.
    s.run();
    let r = policy.login(login("ann", "ann-pw", "192.0.2.1"), &d).await;
    assert!(r.is_ok(), "{r:?}");
}

/// The hostile names of the issue, plus a few more.
fn hostile_names() -> Vec<String> {
    vec![
        "*".into(),
        "*)(uid=*".into(),
        "admin)(|(uid=*".into(),
        "\\".into(),
        ",cn=admin".into(),
        "admin,ou=people,dc=example,dc=org".into(),
        "ann\0".into(),
        "a".repeat(10 * 1024),
        String::from_utf8_lossy(b"ann\xff\xfe").into_owned(),
        "ann)".into(),
        "*ann*".into(),
        "uid=ann,ou=people,dc=example,dc=org".into(),
    ]
}

#[tokio::test]
async fn hostile_usernames_never_widen_a_search_or_bind_as_someone_else() {
    let s = Slapd::start();
    for (mode, cfg) in [
        ("direct", direct(&[s.url()])),
        ("search", search(&[s.url()])),
    ] {
        let d = dir(&cfg);
        for name in hostile_names() {
            for pw in ["ann-pw", "admin-pw", "root-secret"] {
                let v = d.verify(&name, pw).await;
                assert!(
                    matches!(v, Ok(Verdict::Rejected)),
                    "{mode}: {:?} with {pw}: {v:?}",
                    &name[..name.len().min(40)]
                );
            }
        }
        // The directory is still fine, and so is ann.
        assert_eq!(
            verdict(&d, "ann", "ann-pw").await,
            Verdict::Accepted,
            "{mode}"
        );
    }
    // No search ever carried an unescaped wildcard or a second clause.
    for l in s.searches() {
        let filter = &l[l.find("filter=").unwrap()..];
        assert!(!filter.contains("(uid=*)"), "{l}");
        assert!(!filter.contains("(uid=admin)(|"), "{l}");
    }
    // No bind went to the root DN or to an entry other than the ones named.
    assert!(
        s.binds(slapd::ROOT_DN).is_empty(),
        "{:?}",
        s.binds(slapd::ROOT_DN)
    );
    assert!(s.binds("uid=admin,ou=people").is_empty());
}

#[tokio::test]
async fn hostile_usernames_through_the_engine_get_a_clear_answer() {
    let s = Slapd::start();
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_2026();
    let policy = engine(tmp.path(), &clock, CheckRules::default());
    let d: Arc<dyn Directory> = Arc::new(dir(&search(&[s.url()])));
    let invalid =
        |name: &str| name.contains('\0') || name.len() > 1024 || name.contains('\u{FFFD}');
    // Names that cannot be accounts (NUL, 10 KB, what a lossy decoder made of non-UTF-8) are
    // refused as invalid, before the directory is asked anything.
    let (searches, binds) = (s.searches().len(), s.all_binds().len());
    for (i, name) in hostile_names().iter().filter(|n| invalid(n)).enumerate() {
        let r = policy
            .login(login(name, "ann-pw", &format!("198.51.100.{i}")), &d)
            .await;
        assert!(
            matches!(r, Err(LoginRefused::InvalidUsername(_))),
            "{:?}: {r:?}",
            &name[..name.len().min(40)]
        );
    }
    assert_eq!((s.searches().len(), s.all_binds().len()), (searches, binds));
    // Raw bytes that are not UTF-8 are refused before they become a name at all.
    assert_eq!(
        faspex_gate::account::from_bytes(b"ann\xff\xfe"),
        Err(faspex_gate::policy::InvalidUsername::NotUtf8)
    );
    // The others are names no entry has: a plain wrong password, counted.
    for (i, name) in hostile_names().iter().filter(|n| !invalid(n)).enumerate() {
        let r = policy
            .login(login(name, "ann-pw", &format!("198.51.101.{i}")), &d)
            .await;
        assert!(
            matches!(r, Err(LoginRefused::BadCredentials)),
            "{name:?}: {r:?}"
        );
    }
    assert!(policy
        .login(login("ann", "ann-pw", "192.0.2.1"), &d)
        .await
        .is_ok());
}

#[tokio::test]
async fn an_empty_password_never_reaches_the_directory() {
    let s = Slapd::start();
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_2026();
    let policy = engine(tmp.path(), &clock, CheckRules::default());
    for cfg in [direct(&[s.url()]), search(&[s.url()])] {
        let d = Arc::new(dir(&cfg));
        assert_eq!(verdict(&d, "ann", "").await, Verdict::Rejected);
        let d: Arc<dyn Directory> = d;
        let r = policy.login(login("ann", "", "192.0.2.1"), &d).await;
        assert!(matches!(r, Err(LoginRefused::BadCredentials)), "{r:?}");
    }
    assert!(
        s.binds("uid=ann").is_empty(),
        "no bind for ann at all: {:?}",
        s.binds("uid=ann")
    );
    assert!(
        s.searches().is_empty(),
        "not even a search: {:?}",
        s.searches()
    );
}

#[tokio::test]
async fn require_group_admits_members_only_in_both_modes() {
    let s = Slapd::start();
    for (mode, mut cfg) in both_modes_in_the_group(&s) {
        let d = dir(&cfg);
        assert_eq!(
            verdict(&d, "ann", "ann-pw").await,
            Verdict::Accepted,
            "{mode}"
        );
        assert_eq!(
            verdict(&d, "bob", "bob-pw").await,
            Verdict::Rejected,
            "{mode}: the right password of a non-member is refused like a wrong one"
        );
        assert_eq!(
            verdict(&d, "bob", "wrong").await,
            Verdict::Rejected,
            "{mode}"
        );
        // A group that does not exist is a configuration error: 503, never a lockout count.
        cfg.require_group = Some(format!("cn=no-such-group,ou=groups,{}", slapd::SUFFIX));
        let e = dir(&cfg).verify("ann", "ann-pw").await.unwrap_err();
        assert!(e.0.contains("require_group"), "{mode}: {e}");
    }
    // The membership question was asked about the bound DN, escaped.
    assert!(s
        .searches()
        .iter()
        .any(|l| l.contains("(member=uid=ann,ou=people,dc=example,dc=org)")));
}

#[tokio::test]
async fn a_wrong_service_password_is_a_directory_error_not_a_lockout() {
    let s = Slapd::start();
    let mut cfg = search(&[s.url()]);
    cfg.bind_password = Some(Secret::new("not it"));
    let e = dir(&cfg).verify("ann", "ann-pw").await.unwrap_err();
    assert!(e.0.contains("bind_dn was refused"), "{e}");
    assert!(!e.0.contains("not it"), "the password is never echoed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_ceiling_caps_what_reaches_slapd_from_many_addresses() {
    let s = Slapd::start();
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_2026();
    let policy = engine(
        tmp.path(),
        &clock,
        CheckRules {
            max_checks_per_second: 5,
            ..CheckRules::default()
        },
    );
    let d: Arc<dyn Directory> = Arc::new(dir(&direct(&[s.url()])));
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let policy = policy.clone();
            let d = d.clone();
            tokio::spawn(async move {
                let user = format!("guess{i}");
                let ip = format!("127.0.{}.{}", i / 200, i % 200 + 1);
                policy.login(login(&user, "password1", &ip), &d).await
            })
        })
        .collect();
    let (mut throttled, mut bad) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Err(e @ LoginRefused::Throttled { .. }) => {
                let (status, retry) = faspex_gate::proxy::error::refusal_status(&e);
                assert_eq!(status, http::StatusCode::TOO_MANY_REQUESTS);
                assert!(retry.is_some());
                throttled += 1;
            }
            Err(LoginRefused::BadCredentials) => bad += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((bad, throttled), (5, 35));
    assert_eq!(
        s.binds("uid=guess").len(),
        5,
        "slapd saw exactly the ceiling: {:?}",
        s.binds("uid=guess")
    );
    clock.advance(Duration::from_secs(1));
    assert!(policy
        .login(login("ann", "ann-pw", "127.0.9.9"), &d)
        .await
        .is_ok());
}

#[tokio::test]
async fn a_restarted_server_is_reconnected_not_skipped() {
    let mut a = Slapd::start();
    let b = Slapd::start();
    let d = dir(&search(&[a.url(), b.url()]));
    assert_eq!(verdict(&d, "ann", "ann-pw").await, Verdict::Accepted);
    // Both pools now hold an idle connection to A, which A's restart breaks.
    a.kill();
    a.run();
    assert_eq!(verdict(&d, "ann", "ann-pw").await, Verdict::Accepted);
    assert_eq!(
        a.binds("uid=ann").len(),
        2,
        "A answered again, on new connections"
    );
    assert!(
        b.all_binds().is_empty(),
        "B was never needed: {:?}",
        b.all_binds()
    );
}

/// The real binary with the LDAP backend: it starts even while the directory is down (checks
/// then fail closed: see `a_downed_directory_answers_503_and_locks_nobody_out`), and says which
/// directory it uses and how.
#[test]
fn the_gateway_starts_with_an_ldap_backend_whose_directory_is_down() {
    use crate::util::{ConfigBuilder, GatewayProcess, TestFiles};
    let files = TestFiles::new();
    let mut cfg = ConfigBuilder::new(&files, "http://127.0.0.1:9");
    let dead = format!("ldap://127.0.0.1:{}", slapd::free_port());
    cfg.set("auth", "backend", "\"ldap\"");
    cfg.set(
        "auth.ldap",
        "urls",
        &format!("[{dead:?}, \"ldap://ldap.example.invalid\"]"),
    );
    cfg.set(
        "auth.ldap",
        "user_dn_template",
        &format!("{:?}", slapd::DIRECT_TEMPLATE),
    );
    cfg.set(
        "auth.ldap",
        "require_group",
        &format!("{:?}", slapd::GROUP_DN),
    );
    let gw = GatewayProcess::start(files, &cfg);
    assert!(
        gw.wait_log("credential checks: LDAP", Duration::from_secs(10)),
        "{}",
        gw.logs()
    );
    let logs = gw.logs();
    assert!(
        logs.contains(&dead) && logs.contains("direct bind"),
        "{logs}"
    );
    // Clear text to another host is allowed, and warned about; to loopback it is not warned.
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("sends passwords in clear text"))
        .collect();
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(warnings[0].contains("ldap.example.invalid"), "{logs}");
}

/// Unknown users, wrong passwords and non-members with the right password cost the directory
/// the same operations, so neither the answer nor its timing tells them apart.
#[tokio::test]
async fn every_refusal_costs_the_directory_the_same_operations() {
    let s = Slapd::start();
    for (mode, cfg) in both_modes_in_the_group(&s) {
        let d = dir(&cfg);
        // Warm the pools so that connects do not differ.
        assert_eq!(verdict(&d, "ann", "ann-pw").await, Verdict::Accepted);
        let mut costs = Vec::new();
        for (who, user, pw) in [
            ("right password", "ann", "ann-pw"),
            ("wrong password", "ann", "nope"),
            ("unknown user", "nobody", "nope"),
            ("non-member, right password", "bob", "bob-pw"),
        ] {
            let (c0, b0, s0) = d.stats();
            let v = verdict(&d, user, pw).await;
            let (c1, b1, s1) = d.stats();
            assert_eq!(c1, c0, "{mode}/{who}: no new connection");
            costs.push((who, v, b1 - b0, s1 - s0));
        }
        let (_, _, binds, searches) = costs[0];
        for (who, v, b, sr) in &costs {
            assert_eq!(
                (*b, *sr),
                (binds, searches),
                "{mode}: {who} costs differ: {costs:?}"
            );
            assert_eq!(
                *v == Verdict::Accepted,
                *who == "right password",
                "{mode}: {who}"
            );
        }
    }
}

/// What a [`Flood`] answers a search with, without end.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// SearchResultEntry messages.
    Entries,
    /// SearchResultReference messages (referrals).
    Referrals,
    /// IntermediateResponse messages.
    Intermediates,
}

/// A hostile "directory" on a loopback port: it answers every bind with success (or, made with
/// `refuse_binds`, with invalidCredentials) and every search with one kind of message for as long as the client reads them (64 MiB at most, then
/// it holds the connection in silence), never with the search's result. It counts the binds,
/// the bytes it got written, and how long into a flood the client closed the connection on it.
struct Flood {
    url: String,
    binds: Arc<std::sync::atomic::AtomicUsize>,
    written: Arc<std::sync::atomic::AtomicU64>,
    cut_off_after: Arc<std::sync::Mutex<Option<Duration>>>,
}

impl Flood {
    async fn start(answer: Answer) -> Flood {
        Flood::start_with(answer, false).await
    }

    async fn start_with(answer: Answer, refuse_binds: bool) -> Flood {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ldap://{}", listener.local_addr().unwrap());
        let flood = Flood {
            url,
            binds: Arc::default(),
            written: Arc::default(),
            cut_off_after: Arc::default(),
        };
        let (binds, written, cut) = (
            flood.binds.clone(),
            flood.written.clone(),
            flood.cut_off_after.clone(),
        );
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (binds, written, cut) = (binds.clone(), written.clone(), cut.clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                    while let Some((id, op)) = read_message(&mut sock).await {
                        match op {
                            // BindRequest: BindResponse, success (or invalidCredentials, 49).
                            0x60 => {
                                binds.fetch_add(1, Ordering::SeqCst);
                                let rc = if refuse_binds { 49 } else { 0 };
                                let ok =
                                    [ber(0x0a, &[rc]), ber(0x04, &[]), ber(0x04, &[])].concat();
                                let reply = ber(0x30, &[ber(0x02, &id), ber(0x61, &ok)].concat());
                                if sock.write_all(&reply).await.is_err() {
                                    return;
                                }
                            }
                            // SearchRequest: the flood, 64 KiB at a time, until the client goes.
                            0x63 => {
                                let mut batch = Vec::new();
                                let mut n = 0u32;
                                while batch.len() < 64 * 1024 {
                                    let one = match answer {
                                        Answer::Entries => {
                                            let dn =
                                                format!("uid=ann{n},ou=people,dc=example,dc=org");
                                            ber(
                                                0x64,
                                                &[ber(0x04, dn.as_bytes()), ber(0x30, &[])]
                                                    .concat(),
                                            )
                                        }
                                        Answer::Referrals => {
                                            let url =
                                                format!("ldap://elsewhere{n}/dc=example,dc=org");
                                            ber(0x73, &ber(0x04, url.as_bytes()))
                                        }
                                        Answer::Intermediates => ber(0x79, &[]),
                                    };
                                    batch.extend(ber(0x30, &[ber(0x02, &id), one].concat()));
                                    n += 1;
                                }
                                let t = Instant::now();
                                while sock.write_all(&batch).await.is_ok() {
                                    let total =
                                        written.fetch_add(batch.len() as u64, Ordering::SeqCst);
                                    if total >= 64 << 20 {
                                        // Enough to fail the test, not the machine: hold on.
                                        let mut rest = Vec::new();
                                        let _ = sock.read_to_end(&mut rest).await;
                                        break;
                                    }
                                }
                                *cut.lock().unwrap() = Some(t.elapsed());
                                return;
                            }
                            // Unbind, abandon, anything else: no answer.
                            _ => {}
                        }
                    }
                });
            }
        });
        flood
    }
}

/// A BER element: `tag`, the definite length (these are all under 64 KiB), `body`.
fn ber(tag: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 1 << 16, "a BER body of {} bytes", body.len());
    let mut v = vec![tag];
    match body.len() {
        n if n < 0x80 => v.push(n as u8),
        n if n < 0x100 => v.extend([0x81, n as u8]),
        n => v.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    v.extend_from_slice(body);
    v
}

/// One LDAPMessage from the client: its message ID's bytes and its operation's tag. `None` when
/// the connection ends or the message is not one this server reads.
async fn read_message(sock: &mut tokio::net::TcpStream) -> Option<(Vec<u8>, u8)> {
    use tokio::io::AsyncReadExt as _;
    let tag = sock.read_u8().await.ok()?;
    let first = sock.read_u8().await.ok()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let mut n = 0usize;
        for _ in 0..(first & 0x7f).min(4) {
            n = (n << 8) | usize::from(sock.read_u8().await.ok()?);
        }
        n
    };
    let mut body = vec![0; len.min(1 << 20)];
    sock.read_exact(&mut body).await.ok()?;
    // SEQUENCE { INTEGER messageID, protocolOp, ... } (a short ID: ldap3's are small)
    if tag != 0x30 || body.len() < 3 || body[0] != 0x02 {
        return None;
    }
    let id_len = usize::from(body[1]);
    let id = body.get(2..2 + id_len)?.to_vec();
    let op = *body.get(2 + id_len)?;
    Some((id, op))
}

/// A directory that answers the user search with message after message, and never ends it, is
/// read no further than the search allows: past the size limit's 2 entries, or past 1,000
/// referrals or intermediate responses. The check then ends at once as a directory failure (no
/// verdict, so nothing is counted against the name typed, and no bind as anyone), and the
/// connection is closed on the directory, instead of being read into memory until the step's
/// timeout (11 s here).
#[tokio::test]
async fn a_directory_that_floods_a_search_is_cut_off() {
    use std::sync::atomic::Ordering;
    for (answer, says) in [
        (Answer::Entries, "size limit"),
        (Answer::Referrals, "referrals or intermediate responses"),
        (Answer::Intermediates, "referrals or intermediate responses"),
    ] {
        let flood = Flood::start(answer).await;
        let mut cfg = search(std::slice::from_ref(&flood.url));
        cfg.timeout = Duration::from_secs(5);
        let d = dir(&cfg);
        let t = Instant::now();
        let e = d.verify("ann", "ann-pw").await.unwrap_err();
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "{answer:?}: the check took {took:?}: {e}"
        );
        assert!(e.0.contains(says), "{answer:?}: {e}");
        assert_eq!(
            flood.binds.load(Ordering::SeqCst),
            1,
            "{answer:?}: the service account's only"
        );
        // The flood's connection is closed on it soon after.
        let deadline = Instant::now() + Duration::from_secs(5);
        let cut = loop {
            if let Some(c) = *flood.cut_off_after.lock().unwrap() {
                break c;
            }
            assert!(
                Instant::now() < deadline,
                "{answer:?}: the flood was still being read after {:?} ({} bytes)",
                t.elapsed(),
                flood.written.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            cut < Duration::from_secs(3),
            "{answer:?}: cut off after {cut:?}"
        );
        let written = flood.written.load(Ordering::SeqCst);
        assert!(
            written < 64 << 20,
            "{answer:?}: {written} bytes were taken in"
        );
    }
}

/// The group question asked after a wrong password (direct bind with `require_group`, asked
/// only so that a wrong password costs what a non-member's right one does): when the directory
/// floods it, the verdict stands (the bind said 49) and the connection is closed, not pooled
/// with the flood still coming in.
#[tokio::test]
async fn a_flooded_group_question_after_a_wrong_password_is_cut_off_too() {
    use std::sync::atomic::Ordering;
    let flood = Flood::start_with(Answer::Entries, true).await;
    let mut cfg = direct(std::slice::from_ref(&flood.url));
    cfg.require_group = Some(slapd::GROUP_DN.into());
    cfg.timeout = Duration::from_secs(5);
    let d = dir(&cfg);
    let t = Instant::now();
    assert_eq!(verdict(&d, "ann", "wrong").await, Verdict::Rejected);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(flood.binds.load(Ordering::SeqCst), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while flood.cut_off_after.lock().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the connection was kept, the flood still being read ({} bytes)",
            flood.written.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
