//! Several gateways on one Redis (`store.kind = "redis"`): real gateway processes, one real
//! `redis-server`, one Faspex emulator. One licence cap, one failure count per account, one
//! client per account, and kicks, locks and unlocks that reach every gateway. Then the same two
//! gateways on Sentinel (a master, two replicas, three sentinels: [`SentinelSet`]) through a
//! `kill -9` and a `SIGSTOP` of the master.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faspex_gate::store::redis::conn::WATCH_EVERY;
use faspex_gate::store::redis::sentinel::{SentinelSet, DOWN_AFTER_MS, MASTER_NAME};
use faspex_gate::store::redis::server::RedisServer;
use http::StatusCode;

use crate::flows::{users, Site};
use crate::ops::{admin_req, c_path, scrape, value};
use crate::util::{https_client, ConfigBuilder, GatewayProcess, TestFiles};
use faspex_emulator::LoginFailureStyle;

const ME: &str = "/aspera/faspex/me";
const TOKEN: &str = "Bearer test-admin-token-0123456789";

/// Two gateways (`a`, `b`) in front of one emulator, on one Redis (`redis`: one
/// `redis-server`, or what the test keeps of a [`SentinelSet`] it drives itself).
pub struct Ha<R = RedisServer> {
    pub a: Site,
    pub b: Site,
    pub redis: R,
    pub audit: [std::path::PathBuf; 2],
}

/// Point `c` at Redis (`point` sets `[store.redis]`'s `urls` or sentinels), with the admin
/// listener and an audit file named for `gateway`.
fn on_redis(
    c: &mut ConfigBuilder,
    point: &dyn Fn(&mut ConfigBuilder),
    gateway: &str,
) -> std::path::PathBuf {
    c.set("store", "kind", "\"redis\"");
    point(c);
    c.set("admin", "listen", "\"127.0.0.1:0\"");
    c.set(
        "admin",
        "token_file",
        &format!("{:?}", c_path(c, "admin-token").display().to_string()),
    );
    let audit = c_path(c, &format!("audit-{gateway}.log"));
    c.set(
        "audit",
        "path",
        &format!("{:?}", audit.display().to_string()),
    );
    c.set("audit", "gateway", &format!("{gateway:?}"));
    audit
}

impl Ha {
    /// `n` users; `args` to both gateways' `run`; `tweak` applied to both configurations.
    pub async fn start(n: usize, args: &[&str], tweak: impl Fn(&mut ConfigBuilder)) -> Ha {
        let redis = RedisServer::start();
        let url = redis.url();
        let point = move |c: &mut ConfigBuilder| {
            c.set("store.redis", "urls", &format!("[\"{url}\"]"));
        };
        Ha::start_on(redis, point, n, args, tweak).await
    }
}

impl<R> Ha<R> {
    /// [`Ha::start`] on `redis`, which `point` sets `[store.redis]` to reach.
    pub async fn start_on(
        redis: R,
        point: impl Fn(&mut ConfigBuilder),
        n: usize,
        args: &[&str],
        tweak: impl Fn(&mut ConfigBuilder),
    ) -> Ha<R> {
        let mut a_cfg = None;
        let mut audit_a = Default::default();
        let a = Site::start_with(users(n), LoginFailureStyle::Rerender, args, |c| {
            audit_a = on_redis(c, &point, "gw-a");
            tweak(c);
            a_cfg = Some(c.clone());
        })
        .await;
        // Gateway b: the same configuration (the same users file, the same session secret), its
        // own files, listeners and audit.
        let files = TestFiles::new();
        std::fs::copy(a.gw.files.path("users.toml"), files.path("users.toml")).unwrap();
        let mut b_cfg = a_cfg.expect("the site was configured");
        let q = |p: std::path::PathBuf| format!("{:?}", p.display().to_string());
        b_cfg.set("tls", "cert_file", &q(files.cert.clone()));
        b_cfg.set("tls", "key_file", &q(files.key.clone()));
        b_cfg.set("session", "secret_file", &q(files.path("session-secret")));
        b_cfg.set("auth.file", "path", &q(files.path("users.toml")));
        b_cfg.set("store", "path", &q(files.path("state")));
        let audit_b = on_redis(&mut b_cfg, &point, "gw-b");
        let gw = GatewayProcess::start_with(files, &b_cfg, args);
        let client = https_client(&gw.files.cert_pem, false);
        let (stop, _) = tokio::sync::oneshot::channel();
        let b = Site {
            gw,
            emu: a.emu.clone(),
            emu_addr: a.emu_addr,
            client,
            _emu_stop: stop,
        };
        Ha {
            a,
            b,
            redis,
            audit: [audit_a, audit_b],
        }
    }

    fn both(&self) -> [&Site; 2] {
        [&self.a, &self.b]
    }
}

async fn admin(s: &Site, method: &str, path: &str, body: &str) -> (StatusCode, String) {
    let (st, _, body) = admin_req(
        method,
        &format!("{}/admin/v1/{path}", s.gw.admin_url()),
        &[("authorization", TOKEN), ("x-admin-actor", "helpdesk")],
        body,
    )
    .await;
    (st, body)
}

async fn status(s: &Site) -> serde_json::Value {
    let (st, body) = admin(s, "GET", "status", "").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The sum of every series of `name` (all its labels).
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// 200 parallel logins by 30 accounts, spread over both gateways, admit exactly 10 accounts;
/// both gateways' gauges and status say 10; each audit record names its gateway.
#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_admit_exactly_the_cap() {
    let ha = Ha::start(30, &[], |_| {}).await;
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let site = if i % 2 == 0 { &ha.a } else { &ha.b };
        let (u, p) = (format!("user{}", i % 30), format!("pass{}", i % 30));
        let (base, client) = (site.gw.base(), site.client.clone());
        tasks.push(tokio::spawn(async move {
            let st = crate::util::basic_get(&client, &format!("{base}{ME}"), &u, &p).await;
            (u, st)
        }));
    }
    let mut by_account: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for t in tasks {
        let (u, st) = t.await.unwrap();
        by_account.entry(u).or_default().insert(st.as_u16());
    }
    let admitted: Vec<_> = by_account
        .iter()
        .filter(|(_, codes)| codes.contains(&200))
        .map(|(u, _)| u.clone())
        .collect();
    assert_eq!(admitted.len(), 10, "{by_account:?}");
    for (u, codes) in &by_account {
        if !admitted.contains(u) {
            assert_eq!(codes, &BTreeSet::from([503]), "{u} was never seated");
        }
    }
    for s in ha.both() {
        let v = status(s).await;
        assert_eq!(v["seats_used"], 10, "{v}");
        let m = scrape(&s.gw).await;
        assert_eq!(value(&m, "faspex_gate_sessions_active"), 10.0);
        assert_eq!(value(&m, "faspex_gate_store_up"), 1.0);
    }
    // Every audit line names the gateway that wrote it; both wrote logins.
    for (path, name) in ha.audit.iter().zip(["gw-a", "gw-b"]) {
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(lines.iter().any(|l| l["event"] == "login"), "{text}");
        assert!(lines.iter().all(|l| l["gateway"] == name), "{text}");
    }
}

/// 100 parallel wrong guesses (each a different password) for one account over both gateways
/// make at most 5 credential checks in all, and lock the account on both.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_guesses_over_two_gateways_lock_after_five_checks() {
    let ha = Ha::start(2, &[], |_| {}).await;
    let mut tasks = Vec::new();
    for i in 0..100usize {
        let site = if i % 2 == 0 { &ha.a } else { &ha.b };
        let (base, client) = (site.gw.base(), site.client.clone());
        tasks.push(tokio::spawn(async move {
            let guess = format!("wrong{i}");
            crate::util::basic_get(&client, &format!("{base}{ME}"), "user1", &guess).await
        }));
    }
    for t in tasks {
        let st = t.await.unwrap();
        assert!(
            [
                StatusCode::UNAUTHORIZED,
                StatusCode::FORBIDDEN,
                StatusCode::TOO_MANY_REQUESTS
            ]
            .contains(&st),
            "{st}"
        );
    }
    let mut checks = 0.0;
    for s in ha.both() {
        let m = scrape(&s.gw).await;
        checks += sum(&m, "faspex_gate_directory_duration_seconds_count");
        assert_eq!(
            value(&m, "faspex_gate_accounts_locked"),
            1.0,
            "{m}\n{}",
            s.gw.logs()
        );
    }
    assert!(checks <= 5.0, "{checks} credential checks for 100 guesses");
    assert!(checks >= 1.0);
    for s in ha.both() {
        let st = crate::util::basic_get(&s.client, &s.url(ME), "user1", "pass1").await;
        assert_eq!(st, StatusCode::FORBIDDEN, "locked on both gateways");
    }
}

/// A kick on one gateway ends the session on the other within `session_cache` (the manual
/// clocks move by exactly that); an unlock on one lets the user in at once on the other; one
/// client per account holds across the two.
#[tokio::test(flavor = "multi_thread")]
async fn kicks_unlocks_and_one_client_reach_every_gateway() {
    let ha = Ha::start(3, &["--manual-clock"], |c| {
        c.set("store.redis", "session_cache", "\"1s\"");
    })
    .await;
    // user0 logs in through a, and its cookie works through b (one session secret, one store).
    let cookie = ha.a.browser_login("user0", "pass0").await;
    let (st, _, _) = ha.b.browse(ME, &cookie).await;
    assert_eq!(st, StatusCode::OK, "the session is served by b");
    // One client per account: another browser logging user0 in through b is refused.
    let (st, _, _) = ha.b.form_login("user0", "pass0", None, &[]).await;
    assert_ne!(st, StatusCode::FOUND, "a second client of user0 through b");
    // Kick through a: b still serves its view for less than session_cache, then refuses.
    let (st, body) = admin(&ha.a, "DELETE", "sessions/user0", "").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, _, _) = ha.a.browse(ME, &cookie).await;
    assert_ne!(st, StatusCode::OK, "a ended it at once");
    for s in ha.both() {
        s.advance_clock(Duration::from_secs(1)).await;
    }
    let (st, _, _) = ha.b.browse(ME, &cookie).await;
    assert_ne!(st, StatusCode::OK, "b ended it within session_cache");

    // Lock user1 through b: refused through a at once. Unlock through a: in at once through b.
    let (st, body) = admin(&ha.b, "POST", "lockouts/user1", "{\"for\": \"10m\"}").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let st = crate::util::basic_get(&ha.a.client, &ha.a.url(ME), "user1", "pass1").await;
    assert_eq!(st, StatusCode::FORBIDDEN, "b's lock holds on a");
    let (st, body) = admin(&ha.a, "DELETE", "lockouts/user1", "").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let st = crate::util::basic_get(&ha.b.client, &ha.b.url(ME), "user1", "pass1").await;
    assert_eq!(st, StatusCode::OK, "a's unlock holds on b at once");
}

/// Idle sessions are ended once, whichever gateway's sweep gets them, with one Faspex logout
/// each; the seats come back on both.
#[tokio::test(flavor = "multi_thread")]
async fn idle_sessions_are_swept_once_with_one_logout_each() {
    let ha = Ha::start(4, &["--manual-clock"], |_| {}).await;
    let mut cookies = Vec::new();
    for (i, s) in ha.both().into_iter().enumerate() {
        for j in 0..2 {
            let n = 2 * i + j;
            cookies.push(
                s.browser_login(&format!("user{n}"), &format!("pass{n}"))
                    .await,
            );
        }
    }
    assert_eq!(status(&ha.a).await["seats_used"], 4);
    for s in ha.both() {
        s.advance_clock(Duration::from_secs(3600 + 5)).await;
    }
    // Both sweepers run every second; wait (real time) for the seats to come back.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if status(&ha.a).await["seats_used"] == 0 && status(&ha.b).await["seats_used"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sweep never ended them"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let any second delivery arrive before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logouts: Vec<_> =
        ha.a.emu
            .events()
            .into_iter()
            .filter_map(|e| match e {
                faspex_emulator::EmulatorEvent::Logout { user: Some(u) } => Some(u),
                _ => None,
            })
            .collect();
    let mut once: Vec<_> = logouts.clone();
    once.sort();
    once.dedup();
    assert_eq!(once.len(), 4, "{logouts:?}");
    assert_eq!(logouts.len(), 4, "one logout each: {logouts:?}");
    let mut idle = 0.0;
    for s in ha.both() {
        idle += crate::ops::value(
            &scrape(&s.gw).await,
            "faspex_gate_sessions_ended_total{reason=\"idle\"}",
        );
    }
    assert_eq!(idle, 4.0, "each ended once, by one gateway");
    for c in &cookies {
        let (st, _, _) = ha.b.browse(ME, c).await;
        assert_ne!(st, StatusCode::OK);
    }
}

/// A gateway whose session secret differs from the one the site's gateways sign with refuses to
/// start (exit 2 naming `session.secret_file`).
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_with_another_session_secret_is_refused() {
    let ha = Ha::start(1, &[], |_| {}).await;
    let files = TestFiles::new();
    crate::util::write_private(
        &files.path("session-secret"),
        b"another-secret-another-secret-another-secret",
    );
    let mut cfg = ConfigBuilder::new(&files, &format!("http://{}", ha.a.emu_addr));
    cfg.set("store", "kind", "\"redis\"");
    cfg.set("store.redis", "urls", &format!("[\"{}\"]", ha.redis.url()));
    let out = crate::util::run_to_exit(&files, &cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("session.secret_file"), "{err}");
}

/// A gateway started while Redis is down runs: public paths work, `/readyz` names the store and
/// `faspex_gate_store_up` is 0, logins get 503; once Redis answers, it is ready within seconds
/// and logins work.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_started_without_redis_serves_public_paths_and_gets_ready() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.stop();
    let s = Site::start_with(users(1), LoginFailureStyle::Rerender, &[], |c| {
        c.set("store", "kind", "\"redis\"");
        c.set("store.redis", "urls", &format!("[\"{url}\"]"));
        c.set("admin", "listen", "\"127.0.0.1:0\"");
        c.set(
            "admin",
            "token_file",
            &format!("{:?}", c_path(c, "admin-token").display().to_string()),
        );
    })
    .await;
    let (st, _, body) = admin_req("GET", &format!("{}/readyz", s.gw.admin_url()), &[], "").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("store"), "{body}");
    let m = scrape(&s.gw).await;
    assert_eq!(value(&m, "faspex_gate_store_up"), 0.0);
    let (st, _, _) = crate::util::get(
        &s.client,
        &s.url("/aspera/faspex/external_deliveries/17?passcode=abc"),
    )
    .await;
    assert_ne!(st, StatusCode::SERVICE_UNAVAILABLE, "public paths work");
    let st = crate::util::basic_get(&s.client, &s.url(ME), "user0", "pass0").await;
    assert_eq!(
        st,
        StatusCode::SERVICE_UNAVAILABLE,
        "no login without the store"
    );

    redis.start_again();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (st, _, _) = admin_req("GET", &format!("{}/readyz", s.gw.admin_url()), &[], "").await;
        let m = scrape(&s.gw).await;
        if st == StatusCode::OK && value(&m, "faspex_gate_store_up") == 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let st = crate::util::basic_get(&s.client, &s.url(ME), "user0", "pass0").await;
    assert_eq!(st, StatusCode::OK);
}

/// Redis goes away: a session a gateway confirmed within `outage_grace` keeps working there,
/// nothing is admitted or kicked (503), the store's metrics and `/readyz` say so; after the
/// grace, the session gets 503 too. A logout made during the outage is sent when Redis is back,
/// and the seat is freed once.
#[tokio::test(flavor = "multi_thread")]
async fn during_an_outage_recent_sessions_keep_working_and_nothing_is_admitted() {
    let mut ha = Ha::start(3, &["--manual-clock"], |c| {
        c.set("store.redis", "outage_grace", "\"30s\"");
    })
    .await;
    let ann = ha.a.browser_login("user0", "pass0").await;
    let bob = ha.b.browser_login("user1", "pass1").await;
    for (s, c) in [(&ha.a, &ann), (&ha.b, &bob)] {
        let (st, _, _) = s.browse(ME, c).await;
        assert_eq!(st, StatusCode::OK);
    }
    ha.redis.stop();
    for s in ha.both() {
        s.advance_clock(Duration::from_secs(2)).await;
    }
    let (st, _, _) = ha.a.browse(ME, &ann).await;
    assert_eq!(st, StatusCode::OK, "within outage_grace");
    let st = crate::util::basic_get(&ha.b.client, &ha.b.url(ME), "user2", "pass2").await;
    assert_eq!(
        st,
        StatusCode::SERVICE_UNAVAILABLE,
        "no admission without Redis"
    );
    let (st, _) = admin(&ha.a, "DELETE", "sessions/user1", "").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "no kick without Redis");
    // bob logs out through b during the outage: answered now, sent to Redis later.
    let (st, _, _) = ha.b.logout(&bob).await;
    assert!(st.is_redirection(), "{st}");
    let (st, _, _) = ha.b.browse(ME, &bob).await;
    assert_ne!(st, StatusCode::OK, "logged out at once");
    // The monitor notices within 5 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(&ha.a.gw).await;
        if value(&m, "faspex_gate_store_up") == 0.0 {
            assert!(sum(&m, "faspex_gate_store_errors_total") >= 1.0, "{m}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "store_up stayed 1");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (st, _, body) = admin_req("GET", &format!("{}/readyz", ha.a.gw.admin_url()), &[], "").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("store"), "{body}");
    // Past the grace: 503, not the login page (the session may well be alive in Redis).
    ha.a.advance_clock(Duration::from_secs(30)).await;
    let (st, _, _) = ha.a.browse(ME, &ann).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "past outage_grace");

    // Redis is back (its append-only file kept everything): ann goes on, bob's logout is sent,
    // one seat is left.
    ha.redis.start_again();
    ha.b.advance_clock(Duration::from_secs(30)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        // (the first calls after Redis is back may still get 503 while the gateway reconnects)
        let (st, body) = admin(&ha.b, "GET", "status", "").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if st == StatusCode::OK && v["seats_used"] == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the queued logout never reached Redis: {st} {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (st, _, _) = ha.a.browse(ME, &ann).await;
    assert_eq!(st, StatusCode::OK, "ann's session lived on in Redis");
    let (code, body) = admin(&ha.a, "GET", "sessions", "").await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains("user0") && !body.contains("user1"), "{body}");
}

/// `faspex-gate migrate-store`, run as a site moves from one gateway on the embedded store to
/// Redis: refused while the gateway runs; then the sessions (a browser's and a Basic caller's)
/// and a lock are copied; a gateway on Redis with the same session secret serves the old cookie,
/// holds the lock and counts the same seats. Run again, it changes nothing, and it brings back
/// neither a session kicked nor a lock lifted in Redis since. Its cap, its configuration error
/// and an unreachable Redis are checked too.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_store_moves_sessions_and_locks_into_redis_and_can_run_again() {
    let redis = RedisServer::start();
    let mut site = Site::start_with(users(4), LoginFailureStyle::Rerender, &[], |c| {
        c.set("admin", "listen", "\"127.0.0.1:0\"");
        c.set(
            "admin",
            "token_file",
            &format!("{:?}", c_path(c, "admin-token").display().to_string()),
        );
        c.set("policy", "max_sessions", "3");
    })
    .await;
    let cookie = site.browser_login("user0", "pass0").await;
    let st = crate::util::basic_get(&site.client, &site.url(ME), "user1", "pass1").await;
    assert_eq!(st, StatusCode::OK);
    let (st, body) = admin(&site, "POST", "lockouts/user2", "{\"for\": \"1h\"}").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(status(&site).await["seats_used"], 2);

    // The site's configuration, switched to Redis.
    let files = &site.gw.files;
    let mut cfg = ConfigBuilder::new(files, &format!("http://{}", site.emu_addr));
    cfg.set("policy", "max_sessions", "3");
    cfg.set("store", "kind", "\"redis\"");
    cfg.set("store.redis", "urls", &format!("[\"{}\"]", redis.url()));
    let redis_cfg = files.path("redis.toml");
    cfg.write(&redis_cfg);
    let embedded_cfg = files.path("faspex-gate.toml");
    let migrate = |config: &std::path::Path, env: &[(&str, &str)]| {
        let out = std::process::Command::new(crate::util::bin())
            .args(["migrate-store", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };

    // While the gateway runs on the file: refused.
    let (code, text) = migrate(&redis_cfg, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("stop the gateway first"), "{text}");
    // A configuration that does not name a Redis store: exit 2 naming store.kind.
    let (code, text) = migrate(&embedded_cfg, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("store.kind"), "{text}");

    site.gw.signal("TERM");
    assert!(site.gw.wait_exit(Duration::from_secs(30)).is_some());

    // Redis unreachable: exit 1, saying so.
    let (code, text) = migrate(
        &redis_cfg,
        &[("FASPEX_GATE__STORE__REDIS__URLS", "redis://127.0.0.1:1")],
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("cannot reach the Redis store"), "{text}");

    let (code, text) = migrate(&redis_cfg, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("Copied 2 of 2 sessions and 1 of 1 locks"),
        "{text}"
    );
    // Again: nothing doubled, nothing changed.
    let (code, text) = migrate(&redis_cfg, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(
            "Copied 0 of 2 sessions and 0 of 1 locks; 2 sessions and 1 locks were already there"
        ),
        "{text}"
    );
    // Into a Redis (another prefix) with fewer seats than sessions: the cap holds, the rest is
    // reported.
    let (code, text) = migrate(
        &redis_cfg,
        &[
            ("FASPEX_GATE__POLICY__MAX_SESSIONS", "1"),
            ("FASPEX_GATE__STORE__REDIS__KEY_PREFIX", "capped"),
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("Copied 1 of 2 sessions"), "{text}");
    assert!(
        text.contains("every licence seat in Redis is taken"),
        "{text}"
    );

    // A gateway on Redis, with the same session secret (and its own files).
    let files = TestFiles::new();
    std::fs::copy(site.gw.files.path("users.toml"), files.path("users.toml")).unwrap();
    let mut on_redis_cfg = cfg.clone();
    let q = |p: std::path::PathBuf| format!("{:?}", p.display().to_string());
    on_redis_cfg.set("tls", "cert_file", &q(files.cert.clone()));
    on_redis_cfg.set("tls", "key_file", &q(files.key.clone()));
    on_redis_cfg.set("session", "secret_file", &q(files.path("session-secret")));
    on_redis_cfg.set("auth.file", "path", &q(files.path("users.toml")));
    on_redis_cfg.set("store", "path", &q(files.path("state")));
    on_redis_cfg.set("admin", "listen", "\"127.0.0.1:0\"");
    on_redis_cfg.set("admin", "token_file", &q(files.path("admin-token")));
    let gw = GatewayProcess::start(files, &on_redis_cfg);
    let client = https_client(&gw.files.cert_pem, false);
    let (stop, _) = tokio::sync::oneshot::channel();
    let moved = Site {
        gw,
        emu: site.emu.clone(),
        emu_addr: site.emu_addr,
        client,
        _emu_stop: stop,
    };
    let v = status(&moved).await;
    assert_eq!(v["seats_used"], 2, "{v}");
    assert_eq!(v["accounts_locked"], 1, "{v}");
    let (st, _, _) = moved.browse(ME, &cookie).await;
    assert_eq!(st, StatusCode::OK, "the old cookie works on Redis");
    let st = crate::util::basic_get(&moved.client, &moved.url(ME), "user2", "pass2").await;
    assert_eq!(st, StatusCode::FORBIDDEN, "the lock holds");
    assert_eq!(status(&moved).await["seats_used"], 2);

    // A kick and an unlock in Redis stand when the move is run again.
    let (st, body) = admin(&moved, "DELETE", "sessions/user0", "").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, body) = admin(&moved, "DELETE", "lockouts/user2", "").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (code, text) = migrate(&redis_cfg, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("copied before and ended in Redis since"),
        "{text}"
    );
    assert!(text.contains("the unlock stands"), "{text}");
    let v = status(&moved).await;
    assert_eq!(v["seats_used"], 1, "{v}");
    assert_eq!(v["accounts_locked"], 0, "{v}");
    let (st, _, _) = moved.browse(ME, &cookie).await;
    assert_ne!(st, StatusCode::OK, "the kicked session stays ended");
}

/// Set `[store.redis]` to find the master through `set`'s sentinels, with `wait_replicas = 1`.
fn through_sentinels(set: &SentinelSet) -> impl Fn(&mut ConfigBuilder) {
    let sentinels = serde_json::to_string(&set.sentinel_entries()).unwrap();
    move |c: &mut ConfigBuilder| {
        c.set("store.redis", "sentinels", &sentinels);
        c.set("store.redis", "master_name", &format!("{MASTER_NAME:?}"));
        c.set("store.redis", "wait_replicas", "1");
        c.set("store.redis", "wait_timeout", "\"500ms\"");
        c.set("store.redis", "outage_grace", "\"30s\"");
    }
}

/// `GET status` on `s` once it answers 200: a gateway's first calls after a failover may get
/// 503 while it finds the new master (within 15 s).
async fn settled_status(s: &Site) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (st, body) = admin(s, "GET", "status", "").await;
        if st == StatusCode::OK {
            return serde_json::from_str(&body).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "status never answered: {st} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The accounts of `GET sessions`, and of `GET lockouts`, on `s`.
async fn accounts(s: &Site) -> (Vec<String>, Vec<String>) {
    let mut lists = Vec::new();
    for what in ["sessions", "lockouts"] {
        let (st, body) = admin(s, "GET", what, "").await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut users: Vec<String> = v[what]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["user"].as_str().unwrap().to_owned())
            .collect();
        users.sort();
        lists.push(users);
    }
    let lockouts = lists.pop().unwrap();
    (lists.pop().unwrap(), lockouts)
}

/// What clients saw of a failover: logins refused from `first_refused` (after the fault) until
/// the first admitted one, `first_in`.
struct Gap {
    first_refused: Duration,
    first_in: [Duration; 2],
    refused: usize,
    slowest: Duration,
}

impl Gap {
    fn seen(&self) -> Duration {
        self.first_in
            .iter()
            .min()
            .unwrap()
            .saturating_sub(self.first_refused)
    }
}

/// From `fault` on, log `users[0]` in through a and `users[1]` through b (HTTP Basic, fresh
/// accounts) every 50 ms until each got in. Every answer is 503 or 200, within 10 s (no hang);
/// while neither is in, the browser sessions `cookies` (confirmed on both gateways before the
/// fault) keep working on both.
async fn log_in_through_the_gap(
    ha: &Ha<()>,
    fault: Instant,
    users: [&str; 2],
    cookies: &[&str],
) -> Gap {
    let mut first_refused = None;
    let mut first_in = [None; 2];
    let (mut refused, mut slowest) = (0, Duration::ZERO);
    while first_in.iter().any(Option::is_none) {
        assert!(
            fault.elapsed() < Duration::from_secs(40),
            "no login got in since the fault: {first_in:?}"
        );
        for (i, s) in ha.both().into_iter().enumerate() {
            if first_in[i].is_some() {
                continue;
            }
            let (user, password) = (users[i], users[i].replace("user", "pass"));
            let began = Instant::now();
            let st = tokio::time::timeout(
                Duration::from_secs(10),
                crate::util::basic_get(&s.client, &s.url(ME), user, &password),
            )
            .await
            .unwrap_or_else(|_| panic!("a login through {i} hung"));
            slowest = slowest.max(began.elapsed());
            match st {
                StatusCode::SERVICE_UNAVAILABLE => {
                    refused += 1;
                    first_refused.get_or_insert(fault.elapsed());
                }
                StatusCode::OK => first_in[i] = Some(fault.elapsed()),
                other => panic!("a login during the failover got {other}"),
            }
        }
        if first_in.iter().all(Option::is_none) {
            for s in ha.both() {
                for c in cookies {
                    let (st, _, _) = s.browse(ME, c).await;
                    assert_eq!(st, StatusCode::OK, "a session within outage_grace");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Gap {
        first_refused: first_refused.expect("no login noticed the fault"),
        first_in: first_in.map(|t| t.unwrap_or_default()),
        refused,
        slowest,
    }
}

/// Issue 22's Sentinel checks through two gateway processes. With `wait_replicas = 1`: seats
/// taken through both gateways, one account locked by failed guesses, another locked through one
/// gateway's admin API and unlocked through the other's; then `kill -9` the master. During the
/// gap logins get 503, and sessions both gateways confirmed keep working on both
/// (`outage_grace`). After the failover the seats and the lock are intact, the unlocked account
/// stays unlocked and logs in, the cap holds (one more login is refused), and seats = accounts =
/// sessions, the same on both gateways. Prints the gap clients saw (first 503 to first 200).
#[tokio::test(flavor = "multi_thread")]
async fn a_sentinel_failover_under_two_gateways_keeps_seats_locks_and_unlocks() {
    let mut set = SentinelSet::start();
    let ha = Ha::start_on((), through_sentinels(&set), 8, &[], |c| {
        c.set("policy", "max_sessions", "6");
    })
    .await;
    let ann = ha.a.browser_login("user0", "pass0").await;
    let bob = ha.b.browser_login("user1", "pass1").await;
    ha.b.browser_login("user2", "pass2").await;
    for s in ha.both() {
        for c in [&ann, &bob] {
            let (st, _, _) = s.browse(ME, c).await;
            assert_eq!(st, StatusCode::OK);
        }
    }
    // user3 guesses wrong five times, over both gateways: locked on both.
    for i in 0..5 {
        let s = if i % 2 == 0 { &ha.a } else { &ha.b };
        let st = crate::util::basic_get(&s.client, &s.url(ME), "user3", &format!("no{i}")).await;
        assert_ne!(st, StatusCode::OK);
    }
    for s in ha.both() {
        let st = crate::util::basic_get(&s.client, &s.url(ME), "user3", "pass3").await;
        assert_eq!(st, StatusCode::FORBIDDEN, "user3 is locked");
    }
    // user4 is locked through a and unlocked through b.
    let (st, body) = admin(&ha.a, "POST", "lockouts/user4", "{\"for\": \"1h\"}").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, body) = admin(&ha.b, "DELETE", "lockouts/user4", "").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    for s in ha.both() {
        let v = status(s).await;
        assert_eq!(
            (v["seats_used"].as_u64(), v["accounts_locked"].as_u64()),
            (Some(3), Some(1)),
            "{v}"
        );
    }

    let old = set.kill_master();
    let killed = Instant::now();
    let set = Arc::new(set);
    let watching = Arc::clone(&set);
    let failover =
        tokio::task::spawn_blocking(move || watching.wait_failover(old, Duration::from_secs(30)));
    let gap = log_in_through_the_gap(&ha, killed, ["user5", "user6"], &[&ann, &bob]).await;
    let (new, agreed) = failover.await.unwrap();
    assert_ne!(new, old);
    eprintln!(
        "kill -9 of the master under two gateways (down-after-milliseconds {DOWN_AFTER_MS}): \
         logins refused (503) from {:?} after the kill, the first let in {:?} after it: a gap \
         of {:?} (a {:?}, b {:?}); {} logins refused, the slowest answer {:?}; the sentinels \
         agreed on the new master {agreed:?} after the kill",
        gap.first_refused,
        gap.first_in.iter().min().unwrap(),
        gap.seen(),
        gap.first_in[0],
        gap.first_in[1],
        gap.refused,
        gap.slowest
    );

    // After the failover: the seats (three, and the two let in since) and user3's lock intact.
    for s in ha.both() {
        let v = settled_status(s).await;
        assert_eq!(
            (v["seats_used"].as_u64(), v["accounts_locked"].as_u64()),
            (Some(5), Some(1)),
            "{v}"
        );
        let st = crate::util::basic_get(&s.client, &s.url(ME), "user3", "pass3").await;
        assert_eq!(
            st,
            StatusCode::FORBIDDEN,
            "user3's lock survived the failover"
        );
        for c in [&ann, &bob] {
            let (st, _, _) = s.browse(ME, c).await;
            assert_eq!(st, StatusCode::OK);
        }
    }
    // user4's unlock stands: user4 logs in, taking the last seat; the cap holds on both.
    ha.a.browser_login("user4", "pass4").await;
    for s in ha.both() {
        let st = crate::util::basic_get(&s.client, &s.url(ME), "user7", "pass7").await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "no seat over the cap");
    }
    // Seats = accounts = sessions, and both gateways say the same.
    let (va, vb) = (status(&ha.a).await, status(&ha.b).await);
    for k in ["seats_used", "sessions", "accounts_locked", "seats_limit"] {
        assert_eq!(va[k], vb[k], "{k}: {va} {vb}");
    }
    assert_eq!(
        (va["seats_used"].as_u64(), va["sessions"].as_u64()),
        (Some(6), Some(6)),
        "{va}"
    );
    let (sessions, lockouts) = accounts(&ha.a).await;
    assert_eq!(
        sessions,
        ["user0", "user1", "user2", "user4", "user5", "user6"]
    );
    assert_eq!(lockouts, ["user3"]);
    assert_eq!(accounts(&ha.b).await, (sessions, lockouts));
}

/// `SIGSTOP` the master under two gateways until Sentinel has replaced it, then `SIGCONT`: it
/// wakes still believing it is the master, but no gateway writes to it. Once the calls sent to
/// it before and during the stop have run, its `FCALL` count does not move again, and the locks
/// and the login made through both gateways after it woke are all on the new master. Logins
/// while it is stopped get 503 (prints the gap); seats = sessions on both gateways after.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_master_is_never_written_to_through_two_gateways() {
    let set = SentinelSet::start();
    let ha = Ha::start_on((), through_sentinels(&set), 6, &[], |_| {}).await;
    let ann = ha.a.browser_login("user0", "pass0").await;
    let bob = ha.b.browser_login("user1", "pass1").await;
    for s in ha.both() {
        for c in [&ann, &bob] {
            let (st, _, _) = s.browse(ME, c).await;
            assert_eq!(st, StatusCode::OK);
        }
    }
    let (st, body) = admin(&ha.a, "POST", "lockouts/user2", "{\"for\": \"1h\"}").await;
    assert_eq!(st, StatusCode::OK, "{body}");

    let old = set.master_port();
    set.stop(old);
    let stopped = Instant::now();
    let set = Arc::new(set);
    let watching = Arc::clone(&set);
    let failover =
        tokio::task::spawn_blocking(move || watching.wait_failover(old, Duration::from_secs(30)));
    let gap = log_in_through_the_gap(&ha, stopped, ["user3", "user4"], &[&ann, &bob]).await;
    let (new, agreed) = failover.await.unwrap();
    assert_ne!(new, old);
    eprintln!(
        "SIGSTOP of the master under two gateways (down-after-milliseconds {DOWN_AFTER_MS}): \
         logins refused (503) from {:?} after the stop, the first let in {:?} after it: a gap \
         of {:?}; {} logins refused, the slowest answer {:?}; the sentinels agreed on the new \
         master {agreed:?} after the stop",
        gap.first_refused,
        gap.first_in.iter().min().unwrap(),
        gap.seen(),
        gap.refused,
        gap.slowest
    );

    // The gateways' watchers ask a sentinel every WATCH_EVERY; then the old master wakes.
    tokio::time::sleep(WATCH_EVERY * 3).await;
    set.resume(old);
    // What was sent to it before and during the stop runs now (its callers had their 503s).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fcalls = set.calls(old, "fcall");
    let woke_as = set.role(old);
    // Writes through both gateways while it may still think it is the master.
    for i in 0..10 {
        let s = if i % 2 == 0 { &ha.a } else { &ha.b };
        let (st, body) = admin(s, "POST", &format!("lockouts/cat{i}"), "{\"for\": \"1h\"}").await;
        assert_eq!(st, StatusCode::OK, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ha.b.browser_login("user5", "pass5").await;
    assert_eq!(
        set.calls(old, "fcall"),
        fcalls,
        "a gateway called a function on the demoted master (it woke as {woke_as:?})"
    );
    let mut c = set.connection(new);
    for i in 0..10 {
        let until: Option<u64> = redis::cmd("HGET")
            .arg(format!("{{faspex-gate}}:l:cat{i}"))
            .arg("until")
            .query(&mut c)
            .unwrap();
        assert!(until.is_some(), "cat{i}'s lock is on the new master");
    }
    let seats: u64 = redis::cmd("SCARD")
        .arg("{faspex-gate}:seats")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        seats, 5,
        "ann, bob, the two let in after the stop, and user5"
    );
    for s in ha.both() {
        let v = settled_status(s).await;
        assert_eq!(
            (v["seats_used"].as_u64(), v["sessions"].as_u64()),
            (Some(5), Some(5)),
            "{v}"
        );
        assert_eq!(v["accounts_locked"], 11, "{v}");
    }
    // Sentinel turns it into a replica; still nothing called on it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while set.role(old).as_deref() != Some("slave") {
        assert!(Instant::now() < deadline, "the old master was not demoted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(set.calls(old, "fcall"), fcalls);
    eprintln!("the stopped master woke as {woke_as:?}; {fcalls} FCALLs on it, none after");
}
