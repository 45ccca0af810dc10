//! Which spellings of a name are one account, proved against a real OpenLDAP `slapd`: for each
//! pair of spellings, slapd is asked directly whether both bind to the same entry (a bind and
//! Who-am-I, after the service account's search in search-then-bind mode), the gateway's engine
//! is asked which account each counts as, and the two must agree; then, through the real
//! gateway binary, a lock taken under one spelling refuses the other exactly when they agree,
//! the helpdesk's `unlock` finds the lock under any spelling, and a second client under another
//! spelling is refused its own seat. Both bind modes: direct bind (`user_dn_template`), where
//! accounts are keyed by the prepared name, and search-then-bind (`bind_dn`), where they are keyed
//! by the entry the directory finds.
//!
//! A spelling the gateway refuses (an invisible character, the Turkish `İ`) counts under no
//! account at all, so it can never be a second budget, whatever slapd makes of it.

use std::process::Command;
use std::sync::Arc;

use faspex_emulator::LoginFailureStyle;
use faspex_gate::auth::ldap::LdapDirectory;
use faspex_gate::auth::Directory;
use faspex_gate::clock::{ManualClock, SystemClock};
use faspex_gate::config::{LdapConfig, PolicyConfig};
use faspex_gate::policy::{
    CheckRules, InvalidUsername, LogObserver, LoginRefused, LoginRequest, Policy,
};
use faspex_gate::store::embedded::EmbeddedStore;
use faspex_gate::store::{ClientId, ClientKind};
use http::StatusCode;
use ldap3::{LdapConnAsync, Scope, SearchEntry};

use crate::flows::Site;
use crate::slapd::{self, Slapd};
use crate::util::{bin, write_private, GatewayProcess};

/// The people these tests add to the directory: (uid, cn, password, in the group).
fn people() -> Vec<(String, String, String, bool)> {
    [
        ("ann lee", "Annabel Lee", "annlee-pw"),
        ("rené", "Rene Roe", "rene-pw"),
        ("ilker", "Ilker Isik", "ilker-pw"),
    ]
    .iter()
    .map(|(u, c, p)| (u.to_string(), c.to_string(), p.to_string(), true))
    .collect()
}

fn password_of(uid: &str) -> &'static str {
    match uid {
        "ann lee" => "annlee-pw",
        "rené" => "rene-pw",
        "ilker" => "ilker-pw",
        other => panic!("no such person {other}"),
    }
}

/// (an entry's own uid, another spelling).
const PAIRS: &[(&str, &str)] = &[
    ("ann lee", "ann  lee"),
    ("ann lee", "ANN   LEE"),
    ("ann lee", " Ann Lee "),
    ("ann lee", "ann\u{A0}lee"),         // no-break space
    ("ann lee", "ann\u{3000}lee"),       // ideographic space
    ("ann lee", "ａｎｎ\u{3000}ｌｅｅ"), // full-width letters
    ("ann lee", "ann\u{2003}lee"),       // em space
    ("ann lee", "an\u{AD}n lee"),        // soft hyphen
    ("ann lee", "ann\u{200B}lee"),       // zero-width space
    ("ann lee", "ann\u{1680}lee"),       // Ogham space mark
    ("ann lee", "Annabel Lee"),          // the entry's cn: the search filter matches it
    ("ann lee", "annlee"),               // another name
    ("rené", "rene\u{301}"),             // e + combining acute
    ("rené", "RENÉ"),
    ("rené", "rene"), // the accent matters
    ("ilker", "ILKER"),
    ("ilker", "\u{130}lker"), // Turkish dotted capital I
    ("ilker", "\u{131}lker"), // Turkish dotless i
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Direct,
    Search,
}

fn ldap_config(s: &Slapd, mode: Mode) -> LdapConfig {
    let urls = [s.url()];
    match mode {
        Mode::Direct => crate::ldap::direct(&urls),
        Mode::Search => crate::ldap::search(&urls),
    }
}

/// The entry slapd itself binds `spelling` to with `password`, asked directly: the DN Who-am-I
/// names after a bind to `uid=<spelling>,…` (direct), or to the one entry the service account's
/// search with the gateway's filter finds (search). `None`: no entry, or not that password.
async fn slapd_entry(s: &Slapd, mode: Mode, spelling: &str, password: &str) -> Option<String> {
    let dn = match mode {
        Mode::Direct => format!("uid={},{}", ldap3::dn_escape(spelling), slapd::PEOPLE),
        Mode::Search => {
            let (conn, mut ldap) = LdapConnAsync::new(&s.url()).await.unwrap();
            ldap3::drive!(conn);
            ldap.simple_bind(slapd::SERVICE_DN, slapd::SERVICE_PW)
                .await
                .unwrap()
                .success()
                .unwrap();
            let filter = slapd::USER_FILTER.replace("{username}", &ldap3::ldap_escape(spelling));
            let (entries, _) = ldap
                .search(slapd::SUFFIX, Scope::Subtree, &filter, vec!["1.1"])
                .await
                .unwrap()
                .success()
                .unwrap();
            let _ = ldap.unbind().await;
            if entries.len() != 1 {
                return None;
            }
            SearchEntry::construct(entries.into_iter().next()?).dn
        }
    };
    let (conn, mut ldap) = LdapConnAsync::new(&s.url()).await.unwrap();
    ldap3::drive!(conn);
    let bound = ldap.simple_bind(&dn, password).await.unwrap();
    if bound.rc != 0 {
        return None;
    }
    let (exop, _) = ldap
        .extended(ldap3::exop::WhoAmI)
        .await
        .unwrap()
        .success()
        .unwrap();
    let _ = ldap.unbind().await;
    Some(
        exop.parse::<ldap3::exop::WhoAmIResp>()
            .authzid
            .to_lowercase(),
    )
}

/// The engine with the LDAP backend in `mode`, over its own store; the lockout threshold out of
/// reach, so that asking does not lock.
fn engine(s: &Slapd, mode: Mode, tmp: &std::path::Path) -> (Policy, Arc<dyn Directory>) {
    let store = Arc::new(EmbeddedStore::open(tmp).unwrap());
    let policy = Policy::new(
        PolicyConfig {
            lockout_threshold: 10_000,
            login_attempts_per_ip_per_minute: 10_000,
            ..PolicyConfig::default()
        },
        CheckRules {
            max_checks_per_second: 10_000,
            ..CheckRules::default()
        },
        store,
        Arc::new(ManualClock::at_2026()),
        Arc::new(LogObserver),
    );
    let directory: Arc<dyn Directory> =
        Arc::new(LdapDirectory::new(&ldap_config(s, mode), Arc::new(SystemClock)).unwrap());
    (policy, directory)
}

/// The account the gateway counts `spelling` as, found the way a login finds it (a failed
/// login, then the engine's account for the name), or why it refuses the name.
async fn gateway_account(
    policy: &Policy,
    directory: &Arc<dyn Directory>,
    spelling: &str,
) -> Result<String, InvalidUsername> {
    let r = policy
        .login(
            LoginRequest {
                username: spelling,
                password: "not the password",
                ip: "192.0.2.1".parse().unwrap(),
                agent: "names-test",
                client: ClientId("names".into()),
                kind: ClientKind::Browser,
                takeover: false,
            },
            directory,
        )
        .await;
    match r {
        Err(LoginRefused::InvalidUsername(e)) => Err(e),
        Err(LoginRefused::BadCredentials) => Ok(policy.account(spelling).unwrap()),
        other => panic!("{spelling:?}: {other:?}"),
    }
}

/// One pair's answers.
#[derive(Debug)]
struct Row {
    a: &'static str,
    b: &'static str,
    slapd_a: Option<String>,
    slapd_b: Option<String>,
    account_a: Result<String, InvalidUsername>,
    account_b: Result<String, InvalidUsername>,
}

impl Row {
    /// slapd binds both to the same entry.
    fn slapd_same(&self) -> bool {
        self.slapd_a.is_some() && self.slapd_a == self.slapd_b
    }

    /// The gateway counts both as one account.
    fn gateway_same(&self) -> bool {
        self.account_a.is_ok() && self.account_a == self.account_b
    }
}

async fn rows(s: &Slapd, mode: Mode) -> Vec<Row> {
    let tmp = tempfile::tempdir().unwrap();
    let (policy, directory) = engine(s, mode, tmp.path());
    let mut rows = Vec::new();
    for &(a, b) in PAIRS {
        let pw = password_of(a);
        rows.push(Row {
            a,
            b,
            slapd_a: slapd_entry(s, mode, a, pw).await,
            slapd_b: slapd_entry(s, mode, b, pw).await,
            account_a: gateway_account(&policy, &directory, a).await,
            account_b: gateway_account(&policy, &directory, b).await,
        });
    }
    for r in &rows {
        eprintln!(
            "{mode:?}: {:?} / {:?}: slapd {:?} / {:?}; gateway {:?} / {:?}",
            r.a, r.b, r.slapd_a, r.slapd_b, r.account_a, r.account_b
        );
    }
    rows
}

fn row<'a>(rows: &'a [Row], b: &str) -> &'a Row {
    rows.iter().find(|r| r.b == b).unwrap()
}

/// For every pair: two spellings bind to the same entry in slapd exactly when the gateway counts
/// them as one account; a spelling the gateway refuses counts nowhere. And what slapd does with
/// each kind of spelling, which the preparation is built on, is pinned.
#[tokio::test]
async fn two_spellings_are_one_account_exactly_when_slapd_binds_them_to_one_entry() {
    let s = Slapd::start_with(&people());
    for mode in [Mode::Direct, Mode::Search] {
        let rows = rows(&s, mode).await;
        for r in &rows {
            assert!(
                r.slapd_a.is_some() && r.account_a.is_ok(),
                "{mode:?}: the entry's own name {:?} reaches it: {r:?}",
                r.a
            );
            match &r.account_b {
                Ok(_) => assert_eq!(
                    r.slapd_same(),
                    r.gateway_same(),
                    "{mode:?}: slapd and the gateway disagree about {:?} and {:?}: {r:?}",
                    r.a,
                    r.b
                ),
                // Refused before anything is counted: never a budget, a lock or a seat of its own.
                Err(_) => assert!(!r.gateway_same()),
            }
        }
        // What slapd (OpenLDAP 2.5) was seen to do, in both modes.
        for same in [
            "ann  lee",
            " Ann Lee ",
            "ann\u{A0}lee",
            "ann\u{3000}lee",
            "ａｎｎ\u{3000}ｌｅｅ",
            "rene\u{301}",
            "\u{130}lker",
        ] {
            assert!(
                row(&rows, same).slapd_same(),
                "{mode:?}: slapd binds {same:?}"
            );
        }
        for none in [
            "an\u{AD}n lee",
            "ann\u{200B}lee",
            "ann\u{1680}lee",
            "rene",
            "\u{131}lker",
        ] {
            assert_eq!(
                row(&rows, none).slapd_b,
                None,
                "{mode:?}: slapd finds no {none:?}"
            );
        }
        // A cn is the entry's name in search mode only (the filter matches it; no DN has it).
        assert_eq!(row(&rows, "Annabel Lee").slapd_same(), mode == Mode::Search);
        // Where RFC 4518 and slapd part ways (the invisible characters it maps to nothing, the
        // Ogham space), or case mappings do (the Turkish I: slapd folds İ to i), the gateway
        // refuses the name rather than guess.
        for (b, why) in [
            ("an\u{AD}n lee", InvalidUsername::Invisible),
            ("ann\u{200B}lee", InvalidUsername::Invisible),
            ("ann\u{1680}lee", InvalidUsername::Ambiguous),
            ("\u{130}lker", InvalidUsername::Ambiguous),
            ("\u{131}lker", InvalidUsername::Ambiguous),
        ] {
            assert_eq!(row(&rows, b).account_b, Err(why), "{mode:?}: {b:?}");
        }
        // Keyed by a readable name: the entry's own (search) or the prepared one (direct).
        assert_eq!(row(&rows, "ANN   LEE").account_b.as_deref(), Ok("ann lee"));
        assert_eq!(row(&rows, "RENÉ").account_b.as_deref(), Ok("ren\u{E9}"));
    }
}

/// The helpdesk's command, against a running gateway.
fn admin(gw: &GatewayProcess, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin())
        .arg("admin")
        .args(["--url", &gw.admin_url(), "--token-file"])
        .arg(gw.files.path("admin-token"))
        .args(args)
        .env("SUDO_USER", "names-test")
        .env_remove("FASPEX_GATE_CONFIG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn lockouts(gw: &GatewayProcess) -> Vec<String> {
    let (ok, out) = admin(gw, &["--json", "lockouts"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["lockouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["user"].as_str().unwrap().to_owned())
        .collect()
}

/// Through the real binary, in `mode`: five failures under an entry's own name lock it; each other
/// spelling with the right password is refused as locked exactly when slapd binds it to the same
/// entry; the helpdesk unlocks it by another spelling; a second client under another spelling
/// gets no seat of its own.
async fn through_the_gateway(mode: Mode) {
    let ldap = Slapd::start_with(&people());
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("bind-password");
    write_private(&password_file, slapd::SERVICE_PW.as_bytes());
    let users: Vec<(String, String)> = people().into_iter().map(|(u, _, p, _)| (u, p)).collect();
    let url = ldap.url();
    let s = Site::start(users, LoginFailureStyle::Rerender, |c| {
        let token = crate::ops::c_path(c, "admin-token");
        c.set("admin", "listen", "\"127.0.0.1:0\"");
        c.set(
            "admin",
            "token_file",
            &format!("{:?}", token.display().to_string()),
        );
        c.set("auth", "backend", "\"ldap\"");
        c.set("auth.ldap", "urls", &format!("[{url:?}]"));
        c.set("auth.ldap", "timeout", "\"5s\"");
        match mode {
            Mode::Direct => {
                c.set(
                    "auth.ldap",
                    "user_dn_template",
                    &format!("{:?}", slapd::DIRECT_TEMPLATE),
                );
            }
            Mode::Search => {
                c.set("auth.ldap", "bind_dn", &format!("{:?}", slapd::SERVICE_DN));
                c.set(
                    "auth.ldap",
                    "bind_password_file",
                    &format!("{:?}", password_file.display().to_string()),
                );
                c.set("auth.ldap", "base_dn", &format!("{:?}", slapd::SUFFIX));
                c.set(
                    "auth.ldap",
                    "user_filter",
                    &format!("{:?}", slapd::USER_FILTER),
                );
            }
        }
    })
    .await;

    for a in ["ann lee", "rené", "ilker"] {
        for i in 0..5 {
            let (st, _, _) = s.form_login(a, &format!("wrong-{i}"), None, &[]).await;
            let want = if i < 4 {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::FORBIDDEN
            };
            assert_eq!(st, want, "{mode:?}: {a:?} failure {i}");
        }
        // (the uids are prepared already: the account reads as the entry's own name)
        assert_eq!(
            lockouts(&s.gw),
            vec![a.to_owned()],
            "{mode:?}: a readable account"
        );
        let mut unlock_as = a;
        for &(_, b) in PAIRS.iter().filter(|(x, _)| *x == a) {
            let pw = password_of(a);
            let same = slapd_entry(&ldap, mode, a, pw).await.is_some()
                && slapd_entry(&ldap, mode, a, pw).await == slapd_entry(&ldap, mode, b, pw).await;
            let (st, _, _) = s.form_login(b, pw, None, &[]).await;
            match faspex_gate::account::prepare(b) {
                Ok(_) => {
                    assert_eq!(
                        st == StatusCode::FORBIDDEN,
                        same,
                        "{mode:?}: the lock on {a:?} and {b:?} (slapd: same entry {same}): {st}"
                    );
                    if same {
                        unlock_as = b;
                    }
                }
                Err(_) => assert_ne!(st, StatusCode::FORBIDDEN, "{mode:?}: {b:?} is refused"),
            }
        }
        // The helpdesk types another spelling, and finds the lock.
        let (ok, out) = admin(&s.gw, &["unlock", unlock_as]);
        assert!(
            ok && out.contains("was locked"),
            "{mode:?}: unlock {unlock_as:?}: {out}"
        );
        assert!(lockouts(&s.gw).is_empty(), "{mode:?}");
    }

    // One seat, one client: a second browser under another spelling is refused.
    let (st, _, body) = s.form_login("ann lee", "annlee-pw", None, &[]).await;
    assert_eq!(st, StatusCode::FOUND, "{}", String::from_utf8_lossy(&body));
    let (st, _, _) = s.form_login("ANN\u{3000}LEE", "annlee-pw", None, &[]).await;
    assert_eq!(
        st,
        StatusCode::CONFLICT,
        "{mode:?}: another client of ann lee"
    );
    let (ok, out) = admin(&s.gw, &["--json", "status"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["seats_used"], 1, "{out}");
    // And a kick by yet another spelling ends it.
    let (ok, out) = admin(&s.gw, &["kick", "Ann\u{A0}\u{A0}Lee"]);
    assert!(ok, "{out}");
    let (ok, out) = admin(&s.gw, &["--json", "status"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["seats_used"], 0, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn through_the_gateway_with_direct_bind() {
    through_the_gateway(Mode::Direct).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn through_the_gateway_with_search_then_bind() {
    through_the_gateway(Mode::Search).await;
}
