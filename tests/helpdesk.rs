//! The helpdesk console (`[helpdesk]`) against the real binary over real TLS: off unless both
//! keys are set; sign-in through the same throttle and lockout as any login, with no seat taken;
//! non-members refused; the CSRF token and `allowed_networks` enforced; names the admin API
//! refuses refused here with its words; no-ops said plainly; the 15-minute idle timeout on the
//! manual clock; membership re-checked against a real slapd within `auth.cache_ttl`; an action on
//! the Redis store; and the audit lines, with `actor` and `source`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use faspex_emulator::LoginFailureStyle;
use http::{header, HeaderMap, Request, StatusCode};

use crate::flows::{users, Site};
use crate::ops::{admin_req, c_path, ops_site_with};
use crate::slapd::{self, Slapd};
use crate::util::{empty, full, https_client, run_to_exit, ConfigBuilder, HttpsClient, TestFiles};

const TOKEN: &str = "Bearer test-admin-token-0123456789";

/// The helpdesk people added to a site's users file: (name, password).
pub const HELEN: (&str, &str) = ("helen", "helen-pw");
const HAL: (&str, &str) = ("hal", "hal-pw");

/// Turn the console on in `c` (any free port, the users file's `helpdesk = true` as members),
/// and add [`HELEN`] and [`HAL`] to the users file with that flag.
pub fn console_on(c: &mut ConfigBuilder) {
    c.set("helpdesk", "listen", "\"127.0.0.1:0\"");
    c.set("helpdesk", "group", "\"helpdesk\"");
    let path = c_path(c, "users.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (u, p) in [HELEN, HAL] {
        text.push_str(&format!(
            "[users.{u}]\nhash = \"{}\"\nhelpdesk = true\n",
            faspex_gate::auth::password::hash(p).unwrap()
        ));
    }
    std::fs::write(&path, text).unwrap();
}

/// A browser on the console: its cookie jar, over the console's own origin.
pub struct Desk {
    base: String,
    client: HttpsClient,
    jar: Vec<(String, String)>,
}

impl Desk {
    pub fn new(addr: SocketAddr, cert_pem: &str) -> Desk {
        Desk {
            base: format!("https://localhost:{}", addr.port()),
            client: https_client(cert_pem, false),
            jar: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, h: &HeaderMap) {
        for v in h.get_all(header::SET_COOKIE) {
            let v = v.to_str().unwrap();
            assert!(
                v.contains("; Secure") && v.contains("; HttpOnly") && v.contains("SameSite=Strict"),
                "{v}"
            );
            assert!(v.starts_with("__Host-") && v.contains("; Path=/"), "{v}");
            let (pair, _) = v.split_once(';').unwrap();
            let (k, val) = pair.split_once('=').unwrap();
            self.jar.retain(|(name, _)| name != k);
            if !val.is_empty() && !v.contains("Max-Age=0") {
                self.jar.push((k.to_owned(), val.to_owned()));
            }
        }
    }

    pub async fn get(&mut self, path: &str) -> (StatusCode, HeaderMap, String) {
        let req = Request::get(format!("{}{path}", self.base))
            .header(header::COOKIE, self.cookie_header())
            .body(empty())
            .unwrap();
        let (status, h, body) = crate::util::send(&self.client, req).await;
        self.keep_cookies(&h);
        (status, h, text(&body))
    }

    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> (StatusCode, String) {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in fields {
            form.append_pair(k, v);
        }
        let req = Request::post(format!("{}{path}", self.base))
            .header(header::COOKIE, self.cookie_header())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(full(form.finish()))
            .unwrap();
        let (status, h, body) = crate::util::send(&self.client, req).await;
        self.keep_cookies(&h);
        if status == StatusCode::SEE_OTHER {
            assert_eq!(h[header::LOCATION], "/");
        }
        (status, text(&body))
    }

    /// The page's CSRF token (the sign-in form's or the session's).
    pub async fn token(&mut self) -> String {
        let (_, _, body) = self.get("/").await;
        csrf_of(&body)
    }

    /// Sign in: the status of the POST and the page that follows (the console after a 303).
    pub async fn sign_in(&mut self, user: &str, password: &str) -> (StatusCode, String) {
        let token = self.token().await;
        let (status, body) = self
            .post(
                "/signin",
                &[("csrf", &token), ("username", user), ("password", password)],
            )
            .await;
        if status == StatusCode::SEE_OTHER {
            let (s, _, page) = self.get("/").await;
            assert_eq!(s, StatusCode::OK);
            return (status, page);
        }
        (status, body)
    }

    /// A console action with the session's token; the notice on the page that follows.
    pub async fn act(&mut self, path: &str, fields: &[(&str, &str)]) -> String {
        let token = self.token().await;
        let mut all = vec![("csrf", token.as_str())];
        all.extend_from_slice(fields);
        let (status, body) = self.post(path, &all).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        let (_, _, page) = self.get("/").await;
        notice(&page)
    }
}

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn csrf_of(page: &str) -> String {
    let at = page
        .find(r#"name="csrf" value=""#)
        .unwrap_or_else(|| panic!("no CSRF token on the page: {page}"));
    let rest = &page[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// The notice's text on a console page (unescaped as a person reads it).
fn notice(page: &str) -> String {
    let Some(at) = page.find("role=\"status\">") else {
        return String::new();
    };
    let rest = &page[at + "role=\"status\">".len()..];
    unescape(&rest[..rest.find('<').unwrap()])
}

fn unescape(s: &str) -> String {
    s.replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn audit(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The audit log's first line containing `needle`, as written.
fn raw_line(path: &Path, needle: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_default()
        .to_owned()
}

fn events<'a>(records: &'a [serde_json::Value], event: &str) -> Vec<&'a serde_json::Value> {
    records.iter().filter(|r| r["event"] == event).collect()
}

async fn admin(site: &Site, method: &str, path: &str, body: &str) -> (StatusCode, String) {
    let (status, _, body) = admin_req(
        method,
        &format!("{}/admin/v1/{path}", site.gw.admin_url()),
        &[("authorization", TOKEN), ("x-admin-actor", "ops")],
        body,
    )
    .await;
    (status, body)
}

async fn console_site(args: &[&str], tweak: impl FnOnce(&mut ConfigBuilder)) -> (Site, PathBuf) {
    ops_site_with(3, args, |c| {
        console_on(c);
        c.set("policy", "max_sessions", "2");
        tweak(c);
    })
    .await
}

/// A browser that kept the old session cookie (`jar`) posts a kick with that session's real
/// CSRF token: the server refuses it (403, "Not signed in") and nothing happens.
async fn assert_replay_refused(site: &Site, jar: Vec<(String, String)>, token: &str) {
    assert!(jar.iter().any(|(k, _)| k == faspex_gate::helpdesk::COOKIE));
    let mut replay = desk(site);
    replay.jar = jar;
    let (status, body) = replay
        .post("/kick", &[("user", "user0"), ("csrf", token)])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("Not signed in"), "{body}");
}

fn desk(site: &Site) -> Desk {
    Desk::new(
        site.gw.helpdesk.expect("the helpdesk console is on"),
        &site.gw.files.cert_pem,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_is_off_unless_both_keys_are_set_and_bad_values_name_their_key() {
    // Only the listener: off, and the log says why.
    let s = Site::start(users(1), LoginFailureStyle::Rerender, |c| {
        c.set("helpdesk", "listen", "\"127.0.0.1:0\"");
    })
    .await;
    assert!(s.gw.helpdesk.is_none());
    assert!(s
        .gw
        .wait_log("the helpdesk console is off", Duration::from_secs(5)));
    assert!(!s.gw.logs().contains("helpdesk console ready"));
    drop(s);
    // Only the group: off too.
    let s = Site::start(users(1), LoginFailureStyle::Rerender, |c| {
        c.set("helpdesk", "group", "\"helpdesk\"");
    })
    .await;
    assert!(s
        .gw
        .wait_log("the helpdesk console is off", Duration::from_secs(5)));
    drop(s);

    for (key, value, named) in [
        ("listen", "\"nowhere\"", "helpdesk.listen"),
        (
            "allowed_networks",
            "[\"10.0.0.0/33\"]",
            "helpdesk.allowed_networks[0]",
        ),
    ] {
        let files = TestFiles::new();
        let mut c = ConfigBuilder::new(&files, "http://127.0.0.1:9");
        c.set("helpdesk", "listen", "\"127.0.0.1:0\"");
        c.set("helpdesk", "group", "\"helpdesk\"");
        c.set("helpdesk", key, value);
        let out = run_to_exit(&files, &c);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("key `{named}`")), "{err}");
    }
    // The same port as the gateway's: refused by name.
    let files = TestFiles::new();
    let mut c = ConfigBuilder::new(&files, "http://127.0.0.1:9");
    c.set("server", "listen", "\"127.0.0.1:18443\"");
    c.set("helpdesk", "listen", "\"127.0.0.1:18443\"");
    c.set("helpdesk", "group", "\"helpdesk\"");
    let err = String::from_utf8_lossy(&run_to_exit(&files, &c).stderr).into_owned();
    assert!(
        err.contains("key `helpdesk.listen`") && err.contains("same port"),
        "{err}"
    );

    // LDAP without the service account: check-config exits 2 naming auth.ldap.bind_dn; a group
    // that is not a DN names helpdesk.group.
    let files = TestFiles::new();
    let mut c = ConfigBuilder::new(&files, "http://127.0.0.1:9");
    c.set("auth", "backend", "\"ldap\"");
    c.set("auth.ldap", "urls", "[\"ldap://127.0.0.1:9\"]");
    c.set(
        "auth.ldap",
        "user_dn_template",
        &format!("{:?}", slapd::DIRECT_TEMPLATE),
    );
    c.set("helpdesk", "listen", "\"127.0.0.1:0\"");
    c.set("helpdesk", "group", &format!("{:?}", slapd::GROUP_DN));
    let path = files.path("faspex-gate.toml");
    c.write(&path);
    let out = std::process::Command::new(crate::util::bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("key `auth.ldap.bind_dn`"), "{err}");
    assert!(err.contains("helpdesk"), "{err}");
    // With the file backend, the group is a label, and check-config shows the section.
    let files = TestFiles::new();
    let mut c = ConfigBuilder::new(&files, "http://127.0.0.1:9");
    c.set("helpdesk", "listen", "\"127.0.0.1:9443\"");
    c.set("helpdesk", "group", "\"helpdesk\"");
    c.set("helpdesk", "allowed_networks", "[\"10.1.0.0/16\"]");
    let path = files.path("faspex-gate.toml");
    c.write(&path);
    let out = std::process::Command::new(crate::util::bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("[helpdesk]"), "{shown}");
    assert!(
        shown.contains("allowed_networks = [\"10.1.0.0/16\"]"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_shares_the_lockout_takes_no_seat_and_refuses_non_members() {
    let (s, audit_path) = console_site(&[], |_| {}).await;
    let mut d = desk(&s);

    // The sign-in page: a form with labels, the console's own headers.
    let (status, h, page) = d.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<label for=\"username\">User name</label>"));
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert!(!page.contains("<style") && !page.contains("<script"));
    let (status, h, css) = d.get("/console.css").await;
    assert_eq!(status, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/css"));
    assert!(css.contains("meter"));

    // A user with the right password who is not in the group: refused, and audited.
    let (status, page) = d.sign_in("user0", "pass0").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("not in the helpdesk group"), "{page}");

    // Wrong passwords count as any login's: two at Faspex's login form, three here, and helen
    // is locked (threshold 5); her right password is refused while it lasts.
    for i in 0..2 {
        let (status, _, _) = s.form_login("helen", &format!("bad{i}"), None, &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    for i in 0..3 {
        let (status, page) = d.sign_in("helen", &format!("wrong{i}")).await;
        if i < 2 {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{page}");
            assert!(page.contains("was not right"), "{page}");
        } else {
            assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
            assert!(page.contains("locked until"), "{page}");
        }
    }
    let (status, page) = d.sign_in("helen", HELEN.1).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("locked until"), "{page}");

    // hal signs in (no seat taken), finds helen locked with her failures and their address, and
    // unlocks her; helen then signs in at once.
    let mut hal = desk(&s);
    let (status, page) = hal.sign_in(HAL.0, HAL.1).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(page.contains("Helpdesk console"), "{page}");
    assert!(page.contains("Signed in as <strong>hal</strong>"), "{page}");
    assert!(page.contains("0 of 2 seats in use"), "{page}");
    assert!(
        page.contains(r#"<meter id="seats" min="0" max="2""#),
        "{page}"
    );
    let (_, body) = admin(&s, "GET", "status", "").await;
    assert!(
        body.contains("\"seats_used\": 0"),
        "a console session holds no seat: {body}"
    );
    assert!(page.contains("<th scope=\"row\">helen</th>"), "{page}");
    assert!(page.contains("<td>5</td>"), "{page}");
    assert!(page.contains("<td>127.0.0.1</td>"), "{page}");
    let (_, _, why) = hal.get("/?why=helen").await;
    assert!(why.contains("<strong>Locked</strong>"), "{why}");
    assert!(
        why.contains("after 5 failed logins, from 127.0.0.1"),
        "{why}"
    );
    assert_eq!(
        hal.act("/unlock", &[("user", "helen")]).await,
        "helen is unlocked; they can log in now."
    );
    let (status, page) = d.sign_in("helen", HELEN.1).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");

    let records = audit(&audit_path);
    let signins = events(&records, "helpdesk_signin");
    let results: Vec<(&str, &str)> = signins
        .iter()
        .map(|r| (r["user"].as_str().unwrap(), r["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        results,
        [
            ("user0", "not_member"),
            ("helen", "bad_credentials"),
            ("helen", "bad_credentials"),
            ("helen", "locked"),
            ("helen", "locked"),
            ("hal", "success"),
            ("helen", "success"),
        ]
    );
    for r in &signins {
        assert!(
            r["source"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{r}"
        );
    }
    let lock = events(&records, "lockout");
    assert_eq!(lock.len(), 1);
    assert_eq!(lock[0]["user"], "helen");
    let unlock = events(&records, "unlock");
    assert_eq!(unlock.len(), 1);
    assert_eq!(unlock[0]["user"], "helen");
    assert_eq!(unlock[0]["actor"], "hal");
    assert_eq!(unlock[0]["via"], "helpdesk");
    assert_eq!(unlock[0]["was_locked"], true);
    assert!(unlock[0]["source"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    println!("audit: {}", raw_line(&audit_path, "\"event\":\"unlock\""));
    // The console's sign-ins are not `login` events (they are `helpdesk_signin`, above): the
    // only logins are the two wrong passwords typed at Faspex's form.
    let logins: Vec<(&str, &str)> = events(&records, "login")
        .iter()
        .map(|r| (r["user"].as_str().unwrap(), r["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        logins,
        [("helen", "bad_credentials"), ("helen", "bad_credentials")]
    );
    // They have their own counter, beside faspex_gate_logins_total.
    let metrics = crate::ops::scrape(&s.gw).await;
    for (result, n) in [
        ("success", 2),
        ("bad_credentials", 2),
        ("locked", 2),
        ("not_member", 1),
    ] {
        let line = format!("faspex_gate_helpdesk_signins_total{{result=\"{result}\"}} {n}");
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
    assert!(
        metrics
            .lines()
            .any(|l| l == "faspex_gate_logins_total{result=\"success\"} 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_posts_change_nothing_and_names_and_no_ops_are_answered_plainly() {
    let (s, audit_path) = console_site(&[], |_| {}).await;
    // user1 locked by failures, user0 holding a seat.
    for i in 0..5 {
        s.form_login("user1", &format!("bad{i}"), None, &[]).await;
    }
    let cookie = s.browser_login("user0", "pass0").await;
    let mut d = desk(&s);
    // A sign-in without its token, or without the cookie it is bound to: 403.
    let (status, _) = d
        .post(
            "/signin",
            &[("username", HAL.0), ("password", HAL.1), ("csrf", "")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let token = d.token().await;
    let mut other = desk(&s);
    let (status, _) = other
        .post(
            "/signin",
            &[("username", HAL.0), ("password", HAL.1), ("csrf", &token)],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a token without its cookie");
    let (status, _) = d.sign_in(HAL.0, HAL.1).await;
    assert_eq!(status, StatusCode::SEE_OTHER);

    // Forged actions: no token, a wrong one, no session at all. Each is a 4xx and changes
    // nothing.
    for (signed_in, fields) in [
        (true, vec![("user", "user1")]),
        (true, vec![("user", "user1"), ("csrf", "forged")]),
        (false, vec![("user", "user1"), ("csrf", token.as_str())]),
    ] {
        let desk = if signed_in { &mut d } else { &mut other };
        let (status, body) = desk.post("/unlock", &fields).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let (status, _) = desk.post("/kick", &[("user", "user0")]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (_, body) = admin(&s, "GET", "lockouts", "").await;
    assert!(body.contains("\"user\": \"user1\""), "still locked: {body}");
    let (status, _, _) = s.browse("/aspera/faspex/inbox", &cookie).await;
    assert_eq!(status, StatusCode::OK, "user0's session still lives");
    // A GET is never an action.
    let (status, _, _) = d.get("/unlock?user=user1").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // No-ops, said plainly.
    assert_eq!(
        d.act("/unlock", &[("user", "user2")]).await,
        "user2 was not locked: nothing to do."
    );
    assert_eq!(
        d.act("/kick", &[("user", "user2")]).await,
        "No session for user2: nothing to do."
    );
    // Names the admin API refuses, refused with its message.
    for (name, in_path) in [
        ("a/b", "a%2Fb"),
        ("a\\b", "a%5Cb"),
        ("a\u{7}b", "a%07b"),
        ("straße", "stra%C3%9Fe"),
    ] {
        let (status, body) = admin(&s, "DELETE", &format!("lockouts/{in_path}"), "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let api: serde_json::Value = serde_json::from_str(&body).unwrap();
        for path in ["/unlock", "/kick", "/lock"] {
            assert_eq!(
                d.act(path, &[("user", name)]).await,
                api["error"].as_str().unwrap(),
                "{path} {name:?}"
            );
        }
    }
    let n = d
        .act("/lock", &[("user", "user2"), ("for", "forever")])
        .await;
    assert!(
        n.starts_with("for: ") && n.ends_with("(use e.g. \"30m\", \"1h\", \"2d\")"),
        "{n}"
    );
    assert_eq!(
        d.act("/lock", &[("user", "user2"), ("for", "400d")]).await,
        "for: a lock lasts from 1s to 366d"
    );

    // The real actions: kick user0 (the seat is free), unlock user1, lock user2 for 10 minutes.
    assert_eq!(
        d.act("/kick", &[("user", "user0")]).await,
        "user0's session is ended and its seat free."
    );
    let (status, _, _) = s.browse("/aspera/faspex/inbox", &cookie).await;
    assert_ne!(status, StatusCode::OK, "kicked");
    assert_eq!(
        d.act("/unlock", &[("user", "user1")]).await,
        "user1 is unlocked; they can log in now."
    );
    let n = d.act("/lock", &[("user", "user2"), ("for", "10m")]).await;
    assert!(n.starts_with("user2 is locked until"), "{n}");
    let (status, _, _) = s.form_login("user2", "pass2", None, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    s.browser_login("user1", "pass1").await;

    let records = audit(&audit_path);
    let refused = events(&records, "helpdesk_refused");
    assert!(refused.len() >= 6, "{refused:?}");
    assert!(refused.iter().all(|r| r["reason"] == "csrf"));
    let kick = events(&records, "kick");
    let kick: Vec<_> = kick.iter().filter(|r| r["user"] == "user0").collect();
    assert_eq!(kick.len(), 1);
    assert_eq!(kick[0]["actor"], "hal");
    assert_eq!(kick[0]["sessions"], 1);
    assert_eq!(kick[0]["via"], "helpdesk");
    assert!(kick[0]["source"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    println!(
        "audit: {}",
        raw_line(&audit_path, "\"event\":\"kick\",\"user\":\"user0\"")
    );
    let lock = events(&records, "admin_lock");
    assert_eq!(lock.len(), 1);
    assert_eq!(lock[0]["user"], "user2");
    assert_eq!(lock[0]["actor"], "hal");
    assert_eq!(lock[0]["by_admin"], true);

    // Sign out: the cookie no longer works, even replayed with its real token.
    let token = d.token().await;
    let old_jar = d.jar.clone();
    let (status, _) = d.post("/signout", &[("csrf", &token)]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, _, page) = d.get("/").await;
    assert!(page.contains("Helpdesk sign-in"), "{page}");
    assert_replay_refused(&s, old_jar, &token).await;
    let out = events(&audit(&audit_path), "helpdesk_signout")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["reason"], "signed_out");
    assert_eq!(out[0]["user"], "hal");
}

/// Whether the server closes a fresh TCP connection to `addr` at once, before any TLS.
async fn closed_at_once(addr: SocketAddr) -> bool {
    use tokio::io::AsyncReadExt;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn outside_allowed_networks_gets_a_403_never_the_console_and_a_reload_reaches_open_connections(
) {
    let (s, audit_path) = console_site(&[], |c| {
        c.set("helpdesk", "allowed_networks", "[\"192.0.2.0/24\"]");
    })
    .await;
    let addr = s.gw.helpdesk.unwrap();
    // From outside: a 403 page, never the console, and the connection closes.
    for _ in 0..3 {
        let mut d = desk(&s);
        let (status, h, page) = d.get("/").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
        assert!(
            page.contains("cannot be reached from your network"),
            "{page}"
        );
        assert!(
            !page.contains("csrf") && !page.contains("Sign in"),
            "{page}"
        );
        assert_eq!(h[header::CONNECTION], "close");
    }
    // Outsiders have 4 places of their own (never the console's): with 4 held open, a fifth
    // is closed at accept, before TLS.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(closed_at_once(addr).await, "a fifth outsider got a place");
    drop(held);
    let refused = events(&audit(&audit_path), "helpdesk_refused")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert!(refused.iter().all(|r| r["reason"] == "network"));
    assert!(refused[0]["source"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(events(&audit(&audit_path), "helpdesk_signin").is_empty());

    // Allowed by a reload: served. Narrowed again by a reload: the open keep-alive connection
    // gets a 403 for its next request, and is closed.
    let config = s.gw.files.path("faspex-gate.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let reload = |text: String, n: usize| {
        std::fs::write(&config, text).unwrap();
        s.gw.signal("HUP");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while s.gw.logs().matches("configuration reloaded").count() < n {
            assert!(std::time::Instant::now() < deadline, "{}", s.gw.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    reload(original.replace("192.0.2.0/24", "127.0.0.0/8"), 1);
    let mut d = desk(&s);
    let (status, _) = d.sign_in(HAL.0, HAL.1).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    reload(original.clone(), 2);
    let (status, h, page) = d.get("/").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    assert!(
        page.contains("cannot be reached from your network"),
        "{page}"
    );
    assert!(!page.contains("csrf"));
    assert_eq!(h[header::CONNECTION], "close");
    let (status, _, page) = desk(&s).get("/").await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a new connection after the reload: {page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_holds_at_most_8_connections_and_a_slow_form_is_cut_off() {
    let (s, _audit_path) = console_site(&[], |c| {
        c.set("server", "header_read_timeout", "\"2s\"");
    })
    .await;
    let addr = s.gw.helpdesk.unwrap();
    // Eight connections held open (no TLS yet), from 127.0.0.1: a ninth is closed at once.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(closed_at_once(addr).await, "a ninth connection");
    {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_millis(300), held[0].read(&mut buf)).await;
        assert!(r.is_err(), "the held ones are still open");
    }
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut d = desk(&s);
    let (status, _, _) = d.get("/").await;
    assert_eq!(status, StatusCode::OK, "room again");

    // A form whose body stalls: cut off after the read limit (2 s here) with a 408, and the
    // connection closed.
    let started = std::time::Instant::now();
    let answer = crate::util::raw_exchange(
        addr,
        &s.gw.files.cert_pem,
        b"POST /signin HTTP/1.1\r\nHost: localhost\r\nContent-Type: \
          application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nusername=a",
        Duration::from_secs(15),
    )
    .await;
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_console_session_ends_after_15_idle_minutes_on_the_gateways_clock() {
    let (s, audit_path) = console_site(&["--manual-clock"], |_| {}).await;
    let mut d = desk(&s);
    let (status, _) = d.sign_in(HAL.0, HAL.1).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let token = d.token().await;
    let old_jar = d.jar.clone();
    s.advance_clock(Duration::from_secs(14 * 60)).await;
    let (_, _, page) = d.get("/").await;
    assert!(page.contains("Helpdesk console"), "still signed in: {page}");
    s.advance_clock(Duration::from_secs(14 * 60)).await;
    let (_, _, page) = d.get("/").await;
    assert!(
        page.contains("Helpdesk console"),
        "seen 14 minutes ago: {page}"
    );
    s.advance_clock(Duration::from_secs(15 * 60)).await;
    let (status, _, page) = d.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Helpdesk sign-in"), "{page}");
    assert!(
        page.contains("signed out after 15 minutes without activity"),
        "{page}"
    );
    // The old cookie is gone for good on the server: replayed with its real token, refused.
    assert_replay_refused(&s, old_jar, &token).await;
    let out = events(&audit(&audit_path), "helpdesk_signout")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["reason"], "idle");
    assert_eq!(out[0]["user"], "hal");
}

/// A helpdesk person's console sessions end at once when their account is kicked (the admin
/// API, as `faspex-gate admin kick` sends it) or locked by an administrator (here from the
/// console), and at the next re-check (`auth.cache_ttl`) when failed logins lock it; nobody acts
/// on their own account; an account's fifth console session ends its oldest.
#[tokio::test(flavor = "multi_thread")]
async fn a_kick_or_a_lock_ends_a_helpdesk_persons_console_sessions() {
    let (s, audit_path) = console_site(&["--manual-clock"], |_| {}).await;
    let mut hal = desk(&s);
    assert_eq!(hal.sign_in(HAL.0, HAL.1).await.0, StatusCode::SEE_OTHER);
    let mut helen = desk(&s);
    assert_eq!(
        helen.sign_in(HELEN.0, HELEN.1).await.0,
        StatusCode::SEE_OTHER
    );

    // Nobody acts on their own account, however they spell it.
    for (path, name) in [
        ("/unlock", "helen"),
        ("/kick", "HELEN"),
        ("/lock", " Helen "),
    ] {
        let n = helen.act(path, &[("user", name)]).await;
        assert!(n.starts_with("That is your own account"), "{path}: {n}");
    }
    let (_, body) = admin(&s, "GET", "lockouts", "").await;
    assert!(!body.contains("helen"), "{body}");

    // The admin API's kick ends her console session at once; hal's goes on.
    let (status, body) = admin(&s, "DELETE", "sessions/helen", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, _, page) = helen.get("/").await;
    assert!(page.contains("Helpdesk sign-in"), "{page}");
    let (_, _, page) = hal.get("/").await;
    assert!(page.contains("Helpdesk console"), "{page}");

    // Back in; hal locks her from the console: ended at once, and she cannot sign in.
    assert_eq!(
        helen.sign_in(HELEN.0, HELEN.1).await.0,
        StatusCode::SEE_OTHER
    );
    let n = hal.act("/lock", &[("user", "helen"), ("for", "10m")]).await;
    assert!(n.starts_with("helen is locked until"), "{n}");
    let (_, _, page) = helen.get("/").await;
    assert!(page.contains("Helpdesk sign-in"), "{page}");
    let (status, page) = helen.sign_in(HELEN.0, HELEN.1).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    assert_eq!(
        hal.act("/unlock", &[("user", "helen")]).await,
        "helen is unlocked; they can log in now."
    );

    // Locked by failed logins at Faspex's form: found at the next re-check, not before.
    assert_eq!(
        helen.sign_in(HELEN.0, HELEN.1).await.0,
        StatusCode::SEE_OTHER
    );
    for i in 0..5 {
        s.form_login("helen", &format!("bad{i}"), None, &[]).await;
    }
    let (_, _, page) = helen.get("/").await;
    assert!(
        page.contains("Helpdesk console"),
        "within cache_ttl: {page}"
    );
    s.advance_clock(Duration::from_secs(5 * 60 + 1)).await;
    let (status, _, page) = helen.get("/").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    assert!(page.contains("Your account is locked until"), "{page}");
    let (_, _, page) = helen.get("/").await;
    assert!(page.contains("Helpdesk sign-in"), "{page}");

    // Four console sessions per account: hal's fifth sign-in ends his oldest. (Four more
    // browsers' cookie jars, over one connection pool: the sessions are the cookies.)
    let mut other = desk(&s);
    let mut jars = Vec::new();
    for _ in 0..4 {
        other.jar.clear();
        assert_eq!(other.sign_in(HAL.0, HAL.1).await.0, StatusCode::SEE_OTHER);
        jars.push(other.jar.clone());
    }
    let (_, _, page) = hal.get("/").await;
    assert!(
        page.contains("Helpdesk sign-in"),
        "the oldest ended: {page}"
    );
    for jar in jars {
        other.jar = jar;
        let (_, _, page) = other.get("/").await;
        assert!(page.contains("Helpdesk console"), "{page}");
    }

    let records = audit(&audit_path);
    let out: Vec<(&str, &str)> = events(&records, "helpdesk_signout")
        .iter()
        .map(|r| (r["user"].as_str().unwrap(), r["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        out,
        [
            ("helen", "kicked"),
            ("helen", "locked"),
            ("helen", "locked"),
            ("hal", "replaced")
        ]
    );
    println!("audit: {}", raw_line(&audit_path, "\"reason\":\"kicked\""));
}

/// Members of `slapd::GROUP_DN` (ann, not bob) sign in with their directory password; ann,
/// removed from the group with ldapmodify, is signed out on her first request after
/// `auth.cache_ttl` (on the manual clock), and not before.
#[tokio::test(flavor = "multi_thread")]
async fn a_person_removed_from_the_group_is_signed_out_within_cache_ttl() {
    let ldap = Slapd::start();
    let url = ldap.url();
    let (s, audit_path) = ops_site_with(1, &["--manual-clock"], |c| {
        let q = |p: PathBuf| format!("{:?}", p.display().to_string());
        let pw = c_path(c, "bind-password");
        crate::util::write_private(&pw, slapd::SERVICE_PW.as_bytes());
        c.set("auth", "backend", "\"ldap\"");
        c.set("auth", "cache_ttl", "\"5m\"");
        c.set("auth.ldap", "urls", &format!("[{url:?}]"));
        c.set("auth.ldap", "bind_dn", &format!("{:?}", slapd::SERVICE_DN));
        c.set("auth.ldap", "bind_password_file", &q(pw));
        c.set("auth.ldap", "base_dn", &format!("{:?}", slapd::SUFFIX));
        c.set(
            "auth.ldap",
            "user_filter",
            &format!("{:?}", slapd::USER_FILTER),
        );
        c.set("helpdesk", "listen", "\"127.0.0.1:0\"");
        c.set("helpdesk", "group", &format!("{:?}", slapd::GROUP_DN));
    })
    .await;
    let mut bob = desk(&s);
    let (status, page) = bob.sign_in("bob", "bob-pw").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    let mut ann = desk(&s);
    let (status, page) = ann.sign_in("ann", "ann-pw").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");

    let ldif = format!(
        "dn: {}\nchangetype: modify\ndelete: member\nmember: uid=ann,{}\n",
        slapd::GROUP_DN,
        slapd::PEOPLE
    );
    let mut child = std::process::Command::new("ldapmodify")
        .args(["-x", "-H", &url, "-D", slapd::ROOT_DN, "-w", slapd::ROOT_PW])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ldapmodify (Debian's ldap-utils)");
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ldif.as_bytes())
            .unwrap();
    }
    assert!(child.wait().unwrap().success());

    // Within cache_ttl the console still answers; past it, she is signed out.
    s.advance_clock(Duration::from_secs(4 * 60)).await;
    let (status, _, page) = ann.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Helpdesk console"), "{page}");
    s.advance_clock(Duration::from_secs(61)).await;
    let (status, _, page) = ann.get("/").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    assert!(page.contains("no longer in the helpdesk group"), "{page}");
    let (_, _, page) = ann.get("/").await;
    assert!(page.contains("Helpdesk sign-in"), "{page}");
    let (status, page) = ann.sign_in("ann", "ann-pw").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");

    let records = audit(&audit_path);
    let results: Vec<(&str, &str)> = events(&records, "helpdesk_signin")
        .iter()
        .map(|r| (r["user"].as_str().unwrap(), r["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        results,
        [
            ("bob", "not_member"),
            ("ann", "success"),
            ("ann", "not_member")
        ]
    );
    let out = events(&records, "helpdesk_signout");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["reason"], "not_member");
    assert_eq!(out[0]["user"], "ann");
}

/// The console on the Redis store: a lock and an unlock, seen by the admin API.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_acts_on_the_redis_store() {
    let redis = faspex_gate::store::redis::server::RedisServer::start();
    let (s, audit_path) = console_site(&[], |c| {
        c.set("store", "kind", "\"redis\"");
        c.set("store.redis", "urls", &format!("[\"{}\"]", redis.url()));
    })
    .await;
    let mut d = desk(&s);
    let (status, _) = d.sign_in(HELEN.0, HELEN.1).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let n = d.act("/lock", &[("user", "user1"), ("for", "1h")]).await;
    assert!(n.starts_with("user1 is locked until"), "{n}");
    let (_, body) = admin(&s, "GET", "lockouts", "").await;
    assert!(body.contains("\"user\": \"user1\""), "{body}");
    let (status, _, _) = s.form_login("user1", "pass1", None, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, _, page) = d.get("/").await;
    assert!(page.contains("<th scope=\"row\">user1</th>"), "{page}");
    assert_eq!(
        d.act("/unlock", &[("user", "user1")]).await,
        "user1 is unlocked; they can log in now."
    );
    s.browser_login("user1", "pass1").await;
    let (_, _, page) = d.get("/?why=user1").await;
    assert!(
        page.contains("<strong>Has a live session</strong>"),
        "{page}"
    );
    let records = audit(&audit_path);
    let lock = events(&records, "admin_lock");
    assert_eq!(lock[0]["actor"], "helen");
    assert_eq!(lock[0]["via"], "helpdesk");
}
