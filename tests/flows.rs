//! Faspex 4 end to end through the gateway: the seed's curl flows, the form login, logout, the
//! licence cap, one client per account, idle expiry, lockout, public links, Faspex refusing a
//! login, bearer tokens, and which clients may see a password prompt. Each test runs the real
//! binary over real TLS in front of the built-in Faspex 4 emulator, with the users-file backend.

use std::time::Duration;

use bytes::Bytes;
use faspex_emulator::{
    Emulator, EmulatorConfig, EmulatorEvent, LoginFailureStyle, DROPBOX_PASSCODE,
    EXTERNAL_DELIVERY_ID, EXTERNAL_DELIVERY_PASSCODE, INVITATION_PASSCODE,
};
use http::{header, HeaderMap, Request, StatusCode};

use crate::util::{
    empty, full, https_client, send, ConfigBuilder, GatewayProcess, HttpsClient, TestFiles,
};

pub const COOKIE: &str = "__Host-faspex-gate";
const LOGIN: &str = "/aspera/faspex/login";
const TOKEN: &str = "/aspera/faspex/auth/oauth2/token";
const ME: &str = "/aspera/faspex/me";

/// A gateway in front of a running emulator that knows the same users.
pub struct Site {
    pub gw: GatewayProcess,
    pub emu: Emulator,
    /// Where the emulator listens, for tests that talk to Faspex directly.
    pub emu_addr: std::net::SocketAddr,
    pub client: HttpsClient,
    pub _emu_stop: tokio::sync::oneshot::Sender<()>,
}

/// `n` users: user0/pass0, user1/pass1, ...
pub fn users(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("user{i}"), format!("pass{i}")))
        .collect()
}

impl Site {
    pub async fn start(
        users: Vec<(String, String)>,
        failure: LoginFailureStyle,
        tweak: impl FnOnce(&mut ConfigBuilder),
    ) -> Site {
        Self::start_with(users, failure, &[], tweak).await
    }

    /// [`Site::start`] with `n` [`users`], Faspex re-rendering a refused login, and one
    /// `[policy]` setting.
    pub async fn with_policy(n: usize, key: &str, value: &str) -> Site {
        Self::start(users(n), LoginFailureStyle::Rerender, |c| {
            c.set("policy", key, value);
        })
        .await
    }

    /// A site whose gateway runs on a manual clock (`run --manual-clock`, a test build's
    /// option), with the admin listener on so that [`Site::advance_clock`] can move it.
    pub async fn on_manual_clock(
        users: Vec<(String, String)>,
        failure: LoginFailureStyle,
        tweak: impl FnOnce(&mut ConfigBuilder),
    ) -> Site {
        Self::start_with(users, failure, &["--manual-clock"], |c| {
            c.set("admin", "listen", "\"127.0.0.1:0\"");
            c.set(
                "admin",
                "token_file",
                &format!(
                    "{:?}",
                    crate::ops::c_path(c, "admin-token").display().to_string()
                ),
            );
            tweak(c);
        })
        .await
    }

    /// Move the manual clock of a site made with [`Site::on_manual_clock`] forward by `by`.
    pub async fn advance_clock(&self, by: Duration) {
        let (status, _, body) = crate::ops::admin_req(
            "POST",
            &format!("{}/admin/v1/clock", self.gw.admin_url()),
            &[("authorization", "Bearer test-admin-token-0123456789")],
            &format!("{{\"advance_secs\": {}}}", by.as_secs()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// [`Site::start`] with more arguments to `faspex-gate run`.
    pub async fn start_with(
        users: Vec<(String, String)>,
        failure: LoginFailureStyle,
        args: &[&str],
        tweak: impl FnOnce(&mut ConfigBuilder),
    ) -> Site {
        let emu = Emulator::new(EmulatorConfig {
            users: users.clone(),
            login_failure: failure,
            ..EmulatorConfig::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(emu.clone().serve(listener, async move {
            let _ = stopped.await;
        }));

        let files = TestFiles::new();
        let mut file = String::new();
        for (u, p) in &users {
            file.push_str(&format!(
                "[users.{u}]\nhash = \"{}\"\n",
                faspex_gate::auth::password::hash(p).unwrap()
            ));
        }
        std::fs::write(files.path("users.toml"), file).unwrap();
        let mut cfg = ConfigBuilder::new(&files, &format!("http://{addr}"));
        for (section, key, value) in [
            ("policy", "login_attempts_per_ip_per_minute", "1000"),
            ("auth", "max_checks_per_second", "1000"),
            (
                "pages",
                "helpdesk",
                "\"the Research IT helpdesk, ext. 4357\"",
            ),
            ("pages", "timezone", "\"UTC\""),
        ] {
            cfg.set(section, key, value);
        }
        tweak(&mut cfg);
        let gw = GatewayProcess::start_with(files, &cfg, args);
        let client = https_client(&gw.files.cert_pem, false);
        Site {
            gw,
            emu,
            emu_addr: addr,
            client,
            _emu_stop: stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gw.base())
    }

    /// A browser's form login, optionally carrying an earlier gateway cookie.
    pub async fn form_login(
        &self,
        user: &str,
        password: &str,
        cookie: Option<&str>,
        extra: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Bytes) {
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("authenticity_token", "tok+en/=");
            form.append_pair("user[name]", user);
            form.append_pair("user[password]", password);
            for (k, v) in extra {
                form.append_pair(k, v);
            }
            form.finish()
        };
        let mut req = Request::post(self.url(LOGIN))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "text/html,application/xhtml+xml")
            .header(header::USER_AGENT, "Mozilla/5.0 test");
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        send(&self.client, req.body(full(form)).unwrap()).await
    }

    /// Log `user` in with the form and return the cookies a browser would now send (the
    /// gateway's and Faspex's).
    pub async fn browser_login(&self, user: &str, password: &str) -> String {
        let (status, headers, body) = self.form_login(user, password, None, &[]).await;
        assert_eq!(
            status,
            StatusCode::FOUND,
            "{}",
            String::from_utf8_lossy(&body)
        );
        cookies_from(&headers)
    }

    /// A browser's logout: the link on Faspex's own page, a same-origin GET.
    pub async fn logout(&self, cookie: &str) -> (StatusCode, HeaderMap, Bytes) {
        let req = Request::get(self.url("/aspera/faspex/logout"))
            .header(header::ACCEPT, "text/html")
            .header(header::COOKIE, cookie)
            .header("Sec-Fetch-Site", "same-origin")
            .body(empty())
            .unwrap();
        send(&self.client, req).await
    }

    /// A browser's GET with `cookie`.
    pub async fn browse(&self, path: &str, cookie: &str) -> (StatusCode, HeaderMap, Bytes) {
        let req = Request::get(self.url(path))
            .header(header::ACCEPT, "text/html")
            .header(header::COOKIE, cookie)
            .body(empty())
            .unwrap();
        send(&self.client, req).await
    }

    /// An API client's request with HTTP Basic credentials, as the seed's curl sends it.
    pub async fn basic(
        &self,
        method: &str,
        path: &str,
        user: &str,
        password: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, HeaderMap, Bytes) {
        use base64::Engine as _;
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut req = Request::builder()
            .method(method)
            .uri(self.url(path))
            .header(header::AUTHORIZATION, format!("Basic {creds}"))
            .header(header::USER_AGENT, "curl/8.5.0");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        send(&self.client, req.body(full(body.to_owned())).unwrap()).await
    }

    /// An API client's GET of `path` as XML, with HTTP Basic credentials.
    pub async fn basic_xml(
        &self,
        path: &str,
        user: &str,
        password: &str,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let xml = [("Accept", "application/xml")];
        self.basic("GET", path, user, password, &xml, "").await
    }

    /// An API client's POST of `form` to the OAuth2 token endpoint, with HTTP Basic credentials.
    pub async fn token(
        &self,
        user: &str,
        password: &str,
        form: &str,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let ct = [("Content-Type", "application/x-www-form-urlencoded")];
        self.basic("POST", TOKEN, user, password, &ct, form).await
    }

    /// A form POSTed to `path` with no credentials: only its Content-Type, and `cookie` if any.
    pub async fn post_form(
        &self,
        path: &str,
        cookie: Option<&str>,
        form: impl Into<Bytes>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut req = Request::post(self.url(path))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        send(&self.client, req.body(full(form)).unwrap()).await
    }

    pub async fn get_plain(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut req = Request::get(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        send(&self.client, req.body(empty()).unwrap()).await
    }

    pub fn events(&self) -> Vec<EmulatorEvent> {
        self.emu.events()
    }

    /// Assert that exactly `n` credential checks reached the users file: the log is read by
    /// another thread, so wait for it to catch up, then make sure no more arrive.
    pub async fn assert_checks(&self, n: usize) {
        let caught_up = eventually(Duration::from_secs(5), || self.checks() >= n).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            caught_up && self.checks() == n,
            "{} checks, not {n}",
            self.checks()
        );
    }

    /// How many credential checks reached the users file (the engine logs each one).
    pub fn checks(&self) -> usize {
        self.gw
            .logs()
            .lines()
            .filter(|l| l.contains("credential check") && l.contains("elapsed_ms"))
            .count()
    }
}

/// The `name=value` pairs of every `Set-Cookie`, as a browser would send them back.
pub fn cookies_from(headers: &HeaderMap) -> String {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter(|pair| pair.split_once('=').is_some_and(|(_, v)| !v.is_empty()))
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn location(h: &HeaderMap) -> String {
    h.get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// A 401 that asks for HTTP Basic credentials, as Faspex's own does.
fn assert_basic_challenge(status: StatusCode, h: &HeaderMap) {
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(h[header::WWW_AUTHENTICATE], "Basic realm=\"Faspex\"");
}

fn retry_after(h: &HeaderMap) -> u64 {
    h.get(header::RETRY_AFTER)
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// A browser's form login of `user` refused with `status`, a Retry-After, and a page that says
/// `says`.
async fn assert_form_refused(s: &Site, user: &str, password: &str, status: StatusCode, says: &str) {
    let (got, h, body) = s.form_login(user, password, None, &[]).await;
    assert_eq!(got, status);
    assert!(retry_after(&h) >= 1);
    assert!(text(&body).contains(says));
}

/// The browser with `second` is in, and the one with `first` was replaced and is told so.
async fn assert_replaced(s: &Site, first: &str, second: &str) {
    assert_eq!(
        s.browse("/aspera/faspex/inbox", second).await.0,
        StatusCode::OK
    );
    let (status, h, _) = s.browse("/aspera/faspex/inbox", first).await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(location(&h), "/_faspex-gate/expired?reason=replaced");
}

/// Wait until `f` holds, for at most `within`.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_curl_flows_work_unchanged_and_hold_one_seat() {
    let s = Site::with_policy(2, "max_sessions", "1").await;
    // Step 1 of the tutorial: the package's XML with its faspe:// link.
    let (status, _, body) = s
        .basic_xml("/aspera/faspex/received/4044", "user0", "pass0")
        .await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    assert!(text(&body).contains("faspe://"), "{}", text(&body));
    // Step 2: a download token.
    let (status, _, body) = s
        .basic(
            "POST",
            "/aspera/faspex/issue-token?direction=down",
            "user0",
            "pass0",
            &[
                ("Content-Type", "application/vnd.aspera.url-list+xml"),
                ("Accept", "text/plain"),
            ],
            r#"<?xml version="1.0" encoding="UTF-8"?><url-list xmlns="http://schemas.asperasoft.com/xml/url-list"><url href="faspe://acme-faspex/4044"/></url-list>"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    assert!(!text(&body).trim().is_empty());
    // The other calls API users make.
    let (status, _, body) = s
        .basic_xml("/aspera/faspex/inbox.atom", "user0", "pass0")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(text(&body).contains("<feed"));
    let (status, _, body) = s.basic("GET", ME, "user0", "pass0", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text(&body).contains("user0"));
    let (status, _, body) = s
        .basic(
            "POST",
            "/aspera/faspex/send",
            "user0",
            "pass0",
            &[("Content-Type", "application/json")],
            r#"{"delivery":{"title":"t","recipients":["a@b.org"],"sources":[{"paths":["x"]}]}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(text(&body).contains("xfer_sessions"));
    // One login, then the verification cache: one credential check for five requests.
    s.assert_checks(1).await;
    // That caller holds the only seat: another account is refused with 503 and Retry-After.
    let (status, h, _) = s.basic("GET", ME, "user1", "pass1", &[], "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(retry_after(&h) >= 1);
    // The same account from another client (another User-Agent) is one client too many.
    use base64::Engine as _;
    let creds = base64::engine::general_purpose::STANDARD.encode("user0:pass0");
    let (status, _, _) = s
        .get_plain(
            ME,
            &[
                ("Authorization", &format!("Basic {creds}")),
                ("User-Agent", "other-tool/1.0"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // A wrong password on the live client is refused, not forwarded.
    let (status, h, _) = s.basic("GET", ME, "user0", "wrong", &[], "").await;
    assert_basic_challenge(status, &h);
}

#[tokio::test(flavor = "multi_thread")]
async fn form_login_inbox_logout_frees_the_seat() {
    let s = Site::with_policy(2, "max_sessions", "1").await;
    let (status, headers, _) = s.form_login("user0", "pass0", None, &[]).await;
    assert_eq!(status, StatusCode::FOUND);
    assert!(location(&headers).ends_with("/aspera/faspex/inbox"));
    let set: Vec<&str> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let ours = set
        .iter()
        .find(|c| c.starts_with(&format!("{COOKIE}=")))
        .expect("the gateway's cookie");
    for attr in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(ours.contains(attr), "{ours}");
    }
    assert!(set.iter().any(|c| c.starts_with("_faspex_session=")));
    let cookie = cookies_from(&headers);

    let (status, _, body) = s.browse("/aspera/faspex/inbox", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text(&body).contains("user0"), "{}", text(&body));
    // Faspex never sees the gateway's cookie.
    // (the emulator would have to be asked; the inbox rendering shows its session worked)

    // The seat is held: another account cannot log in.
    let (status, h, body) = s.form_login("user1", "pass1", None, &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(retry_after(&h) >= 1);
    assert!(text(&body).contains("All licences are in use"));
    assert!(
        text(&body).contains(LOGIN),
        "a retry that leads to the login page"
    );

    // Logout ends the gateway session, and Faspex's.
    let (status, h, _) = s.logout(&cookie).await;
    assert_eq!(status, StatusCode::FOUND);
    assert!(h
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|v| v.to_str().unwrap().starts_with(&format!("{COOKIE}=;"))));
    // (the gateway logs Faspex out from its queue, as for every session it ends)
    assert!(
        eventually(Duration::from_secs(5), || s.events().contains(
            &EmulatorEvent::Logout {
                user: Some("user0".into())
            }
        ))
        .await
    );
    // The old cookie no longer opens anything.
    let (status, h, _) = s.browse("/aspera/faspex/inbox", &cookie).await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(location(&h), LOGIN);
    // And the seat is free.
    s.browser_login("user1", "pass1").await;
    // Nothing secret went into the log: no password, no cookie value.
    assert!(s.gw.wait_log("route=logout", Duration::from_secs(5)));
    let logs = s.gw.logs();
    let gateway_cookie = cookie
        .split("; ")
        .find_map(|c| c.strip_prefix(&format!("{COOKIE}=")))
        .unwrap();
    let faspex_cookie = cookie
        .split("; ")
        .find_map(|c| c.strip_prefix("_faspex_session="))
        .unwrap();
    for secret in ["pass0", "pass1", gateway_cookie, faspex_cookie] {
        assert!(!logs.contains(secret), "{secret} leaked into the log");
    }
    assert!(logs.contains("route=login"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn eleventh_account_is_refused_while_ten_hold_seats() {
    let s = Site::start(users(11), LoginFailureStyle::Rerender, |_| {}).await;
    let mut cookies = Vec::new();
    for i in 0..10 {
        cookies.push(
            s.browser_login(&format!("user{i}"), &format!("pass{i}"))
                .await,
        );
    }
    let busy = StatusCode::SERVICE_UNAVAILABLE;
    assert_form_refused(&s, "user10", "pass10", busy, "All licences are in use").await;
    // An API caller gets the plain 503.
    let (status, h, _) = s.basic("GET", ME, "user10", "pass10", &[], "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.contains_key(header::RETRY_AFTER));
    assert!(!h.contains_key(header::WWW_AUTHENTICATE));
    // All ten are still in.
    for c in &cookies {
        assert_eq!(s.browse("/aspera/faspex/inbox", c).await.0, StatusCode::OK);
    }
    // One leaves; the eleventh gets in.
    s.logout(&cookies[3]).await;
    s.browser_login("user10", "pass10").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_logins_of_thirty_accounts_admit_exactly_ten() {
    let s = std::sync::Arc::new(Site::start(users(30), LoginFailureStyle::Rerender, |_| {}).await);
    let mut tasks = Vec::new();
    for i in 0..30 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                s.form_login(&format!("user{i}"), &format!("pass{i}"), None, &[])
                    .await
                    .0
            } else {
                s.basic("GET", ME, &format!("user{i}"), &format!("pass{i}"), &[], "")
                    .await
                    .0
            }
        }));
    }
    let mut admitted = 0;
    let mut full = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::FOUND | StatusCode::OK => admitted += 1,
            StatusCode::SERVICE_UNAVAILABLE => full += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((admitted, full), (10, 20));
}

#[tokio::test(flavor = "multi_thread")]
async fn second_client_gets_409_and_can_take_over() {
    let s = Site::start(users(1), LoginFailureStyle::Rerender, |_| {}).await;
    let first = s.browser_login("user0", "pass0").await;
    // Another browser (no cookie) for the same account.
    let (status, _, body) = s.form_login("user0", "pass0", None, &[]).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let page = text(&body);
    assert!(page.contains("Already signed in elsewhere"), "{page}");
    assert!(page.contains("_faspex_gate_takeover"), "{page}");
    assert!(
        page.contains(r#"name="authenticity_token" value="tok+en/=""#),
        "Faspex's hidden fields are carried over: {page}"
    );
    assert!(
        !page.contains("pass0"),
        "the password is never echoed: {page}"
    );
    // An API client gets the bare 409.
    let (status, _, _) = s.basic("GET", ME, "user0", "pass0", &[], "").await;
    assert_eq!(status, StatusCode::CONFLICT);
    // The take-over asks for the password again: a wrong one fails and changes nothing.
    let (status, _, _) = s
        .form_login("user0", "nope", None, &[("_faspex_gate_takeover", "1")])
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        s.browse("/aspera/faspex/inbox", &first).await.0,
        StatusCode::OK
    );
    // When Faspex refuses the take-over's login, the first browser stays signed in.
    s.emu.refuse_logins(true);
    let (status, _, _) = s
        .form_login("user0", "pass0", None, &[("_faspex_gate_takeover", "1")])
        .await;
    assert_eq!(status, StatusCode::OK, "Faspex's re-rendered form");
    s.emu.refuse_logins(false);
    assert_eq!(
        s.browse("/aspera/faspex/inbox", &first).await.0,
        StatusCode::OK
    );
    // With the right one, the second browser is in and the first is out, told why.
    let (status, h, _) = s
        .form_login("user0", "pass0", None, &[("_faspex_gate_takeover", "1")])
        .await;
    assert_eq!(status, StatusCode::FOUND);
    // Faspex saw the form without the gateway's own field.
    assert!(s
        .events()
        .iter()
        .any(|e| matches!(e, EmulatorEvent::Login { user } if user == "user0")));
    let second = cookies_from(&h);
    assert_replaced(&s, &first, &second).await;
    // The replaced session's Faspex session was logged out by the gateway.
    assert!(
        eventually(Duration::from_secs(5), || s.events().contains(
            &EmulatorEvent::Logout {
                user: Some("user0".into())
            }
        ))
        .await
    );
    // The same browser logging in again is the same client: renewed, no 409.
    let (status, _, _) = s.form_login("user0", "pass0", Some(&second), &[]).await;
    assert_eq!(status, StatusCode::FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn replace_mode_signs_the_older_client_out() {
    let s = Site::with_policy(1, "one_client_per_account", "\"replace\"").await;
    let first = s.browser_login("user0", "pass0").await;
    let second = s.browser_login("user0", "pass0").await;
    assert_replaced(&s, &first, &second).await;
    let (status, _, body) = s.browse("/_faspex-gate/expired?reason=replaced", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text(&body).contains("Signed in somewhere else"));
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_expiry_shows_the_page_frees_the_seat_and_logs_faspex_out() {
    let s = Site::on_manual_clock(users(2), LoginFailureStyle::Rerender, |c| {
        c.set("policy", "max_sessions", "1");
        c.set("policy", "idle_timeout", "\"30m\"");
    })
    .await;
    let cookie = s.browser_login("user0", "pass0").await;
    assert_eq!(
        s.browse("/aspera/faspex/inbox", &cookie).await.0,
        StatusCode::OK
    );
    // Half an hour and a second later, by the gateway's clock.
    s.advance_clock(Duration::from_secs(30 * 60 + 1)).await;
    // The sweeper ends the session with no request at all, and logs Faspex out with the
    // cookie it kept.
    assert!(
        eventually(Duration::from_secs(6), || s.events().contains(
            &EmulatorEvent::Logout {
                user: Some("user0".into())
            }
        ))
        .await,
        "Faspex was not logged out; events: {:?}",
        s.events()
    );
    let (status, h, _) = s.browse("/aspera/faspex/inbox", &cookie).await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(location(&h), "/_faspex-gate/expired");
    let (status, h, body) = s.browse("/_faspex-gate/expired", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text(&body).contains("Signed out after inactivity"));
    assert!(h
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|v| v.to_str().unwrap().starts_with(&format!("{COOKIE}=;"))));
    // The seat is free.
    s.browser_login("user1", "pass1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn five_wrong_passwords_lock_and_nothing_more_reaches_the_directory() {
    let s = Site::start(users(1), LoginFailureStyle::Rerender, |_| {}).await;
    for i in 0..4 {
        let (status, h, body) = s.form_login("user0", &format!("bad{i}"), None, &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            !h.contains_key(header::WWW_AUTHENTICATE),
            "a browser never gets a prompt"
        );
        assert!(text(&body).contains("Login failed"));
        assert!(text(&body).contains(LOGIN));
    }
    let (status, h, body) = s.form_login("user0", "bad4", None, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let wait = retry_after(&h);
    assert!((3500..=3600).contains(&wait), "{wait}");
    let page = text(&body);
    assert!(page.contains("Account locked"), "{page}");
    assert!(page.contains("UTC"), "{page}");
    assert!(
        page.contains("the Research IT helpdesk, ext. 4357"),
        "{page}"
    );
    s.assert_checks(5).await;
    // The right password, from the browser and the API, is refused without a check.
    let (status, _, body) = s.form_login("user0", "pass0", None, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(text(&body).contains("Account locked"));
    let (status, h, _) = s.basic("GET", ME, "user0", "pass0", &[], "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(retry_after(&h) > 3000);
    // No attempt reached the directory after the lock.
    s.assert_checks(5).await;
    // No wrong password ever reached Faspex either.
    assert!(!s
        .events()
        .iter()
        .any(|e| matches!(e, EmulatorEvent::LoginRefused { .. })));
}

#[tokio::test(flavor = "multi_thread")]
async fn public_links_need_no_login_and_hold_no_seat() {
    let s = Site::with_policy(2, "max_sessions", "1").await;
    let cookie = s.browser_login("user0", "pass0").await;
    let ext = format!(
        "/aspera/faspex/external_deliveries/{EXTERNAL_DELIVERY_ID}?passcode={EXTERNAL_DELIVERY_PASSCODE}"
    );
    let (status, _, body) = s.get_plain(&ext, &[("Accept", "application/xml")]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text(&body).contains("faspe://"));
    let (status, _, _) = s
        .get_plain(
            &format!("/aspera/faspex/external/submissions/new?passcode={INVITATION_PASSCODE}"),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = send(
        &s.client,
        Request::post(s.url("/aspera/faspex/external/dropbox_submissions"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(full(vec![7u8; 100_000]))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(text(&body).contains("100000"), "{}", text(&body));
    let (status, _, _) = s
        .get_plain(
            &format!("/aspera/faspex/external/dropbox_submissions/new?passcode={DROPBOX_PASSCODE}"),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = s
        .get_plain("/aspera/http-gwy/v1/download/4044?token=x", &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.is_empty());
    // The HTTP Gateway's WebSocket upload, with a Faspex transfer token.
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let stream = crate::util::raw_tls(s.gw.https.unwrap(), &s.gw.files.cert_pem).await;
        let url = format!(
            "wss://localhost:{}/aspera/http-gwy/v2/upload?token=faspex-issued",
            s.gw.https.unwrap().port()
        );
        let (mut ws, resp) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        let chunk = vec![9u8; 256 * 1024];
        ws.send(Message::binary(chunk.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap().into_data(), chunk);
        ws.close(None).await.unwrap();
    }
    // Faspex's static assets.
    let (status, _, _) = s
        .get_plain("/aspera/faspex/stylesheets/application.css", &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    // The login page itself is public.
    let (status, _, body) = s.get_plain(LOGIN, &[("Accept", "text/html")]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text(&body).contains("user[password]"));
    // Still one seat, still user0's.
    assert_eq!(
        s.browse("/aspera/faspex/inbox", &cookie).await.0,
        StatusCode::OK
    );
    assert_eq!(
        s.form_login("user1", "pass1", None, &[]).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Protected paths are not public: no session, no entry, and a Faspex cookie alone is
    // never enough.
    let faspex_only: String = cookie
        .split("; ")
        .filter(|c| c.starts_with("_faspex_session="))
        .collect();
    let (status, h, _) = s.browse("/aspera/faspex/inbox", &faspex_only).await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(location(&h), LOGIN);
    let (status, h, _) = s
        .get_plain(
            "/aspera/faspex/received/4044",
            &[("Accept", "application/xml")],
        )
        .await;
    assert_basic_challenge(status, &h);
}

#[tokio::test(flavor = "multi_thread")]
async fn public_requests_are_limited_per_address() {
    let s = Site::with_policy(1, "public_requests_per_ip_per_minute", "5").await;
    for _ in 0..5 {
        assert_eq!(s.get_plain(LOGIN, &[]).await.0, StatusCode::OK);
    }
    let (status, h, _) = s.get_plain(LOGIN, &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&h) >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn faspex_refusing_a_login_the_directory_accepted_keeps_no_seat() {
    for style in [
        LoginFailureStyle::Rerender,
        LoginFailureStyle::RedirectToLogin,
    ] {
        let s = Site::start(users(2), style, |c| {
            c.set("policy", "max_sessions", "1");
        })
        .await;
        s.emu.refuse_logins(true);
        let (status, h, body) = s.form_login("user0", "pass0", None, &[]).await;
        match style {
            LoginFailureStyle::Rerender => {
                assert_eq!(status, StatusCode::OK);
                assert!(text(&body).contains("Your login was not successful"));
            }
            LoginFailureStyle::RedirectToLogin => {
                assert_eq!(status, StatusCode::FOUND);
                assert!(location(&h).ends_with(LOGIN));
            }
        }
        assert!(
            !cookies_from(&h).contains(COOKIE),
            "no gateway cookie for a refused login"
        );
        // An API caller whose credentials Faspex answers with 401.
        let (status, _, _) = s.basic("GET", ME, "user1", "pass1", &[], "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        s.emu.refuse_logins(false);
        // No seat was kept: with one seat, both can now log in in turn, and neither attempt
        // counted as a wrong password.
        let cookie = s.browser_login("user0", "pass0").await;
        s.logout(&cookie).await;
        let (status, _, _) = s.basic("GET", ME, "user1", "pass1", &[], "").await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_works_until_its_session_ends() {
    let s = Site::on_manual_clock(users(1), LoginFailureStyle::Rerender, |c| {
        c.set("policy", "api_idle_timeout", "\"30m\"");
    })
    .await;
    let (status, _, body) = s.token("user0", "pass0", "grant_type=password").await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    let token = crate::util::json(&body)["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bearer = |t: &str| format!("Bearer {t}");
    for _ in 0..3 {
        let (status, _, body) = s
            .get_plain(
                "/aspera/faspex/api/v1/me",
                &[("Authorization", &bearer(&token))],
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(text(&body).contains("user0"));
        // Bearer requests are the session's activity: it outlives its 30 min idle timeout.
        s.advance_clock(Duration::from_secs(20 * 60)).await;
    }
    // An unknown token is refused before Faspex sees it.
    let (status, h, _) = s
        .get_plain(
            "/aspera/faspex/api/v1/me",
            &[("Authorization", "Bearer not-a-token")],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(h.contains_key(header::WWW_AUTHENTICATE));
    // Idle past the timeout: the session ends, and the token with it (Faspex would still take it).
    s.advance_clock(Duration::from_secs(31 * 60)).await;
    let (status, _, _) = s
        .get_plain(
            "/aspera/faspex/api/v1/me",
            &[("Authorization", &bearer(&token))],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_api_clients_are_ever_challenged() {
    let s = Site::start(users(1), LoginFailureStyle::Rerender, |_| {}).await;
    use base64::Engine as _;
    let wrong = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user0:wrong")
    );
    // An API client: 401 with the Basic challenge.
    let (status, h, _) = s.get_plain(ME, &[("Authorization", &wrong)]).await;
    assert_basic_challenge(status, &h);
    // The same from a browser (HTML accepted, or script, or a gateway cookie): no challenge.
    for extra in [
        ("Accept", "text/html"),
        ("X-Requested-With", "XMLHttpRequest"),
        ("Cookie", "__Host-faspex-gate=forged"),
    ] {
        let (status, h, _) = s.get_plain(ME, &[("Authorization", &wrong), extra]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{extra:?}");
        assert!(!h.contains_key(header::WWW_AUTHENTICATE), "{extra:?}");
    }
    // A browser with no session is sent to the login page.
    let (status, h, _) = s
        .get_plain("/aspera/faspex/inbox", &[("Accept", "text/html")])
        .await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(location(&h), LOGIN);
    assert!(!h.contains_key(header::WWW_AUTHENTICATE));
}

#[tokio::test(flavor = "multi_thread")]
async fn login_form_bad_input_gets_clear_answers() {
    let s = Site::start(users(1), LoginFailureStyle::Rerender, |_| {}).await;
    // Hostile and empty names, and an empty password: a plain failed login.
    for (u, p) in [
        ("*)(uid=*", "x"),
        ("", "x"),
        ("user0", ""),
        ("user0\u{0}", "pass0"),
    ] {
        let (status, _, body) = s.form_login(u, p, None, &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{u:?}");
        assert!(text(&body).contains("Login failed"));
    }
    // A form over 64 KiB is refused.
    let big = format!(
        "user[name]=user0&user[password]=pass0&pad={}",
        "a".repeat(70_000)
    );
    let (status, _, _) = s.post_form(LOGIN, None, big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Not a form.
    let (status, _, _) = send(
        &s.client,
        Request::post(s.url(LOGIN))
            .header(header::CONTENT_TYPE, "application/json")
            .body(full("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Malformed Basic credentials.
    let (status, _, _) = s.get_plain(ME, &[("Authorization", "Basic !!!")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // An unknown gateway page.
    let (status, _, _) = s.get_plain("/_faspex-gate/nothing", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // None of this reached Faspex's login.
    assert!(!s.events().iter().any(|e| matches!(
        e,
        EmulatorEvent::Login { .. } | EmulatorEvent::LoginRefused { .. }
    )));
}

/// The request lines Faspex received, as "METHOD path?query".
fn requests(s: &Site) -> Vec<String> {
    s.events()
        .into_iter()
        .filter_map(|e| match e {
            EmulatorEvent::Request {
                method,
                path_and_query,
            } => Some(format!("{method} {path_and_query}")),
            _ => None,
        })
        .collect()
}

fn basic_checks(s: &Site) -> usize {
    s.events()
        .iter()
        .filter(|e| matches!(e, EmulatorEvent::BasicAuth { .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn faspex_never_checks_a_password_the_gateway_has_not() {
    let s = Site::start(users(2), LoginFailureStyle::Rerender, |_| {}).await;
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let guess = format!("Basic {}", b64("user1:guess"));

    // Credentials in the login POST's query string never reach Faspex (Rails would prefer
    // them): the request is refused.
    let (status, _, _) = s
        .post_form(
            "/aspera/faspex/login?user[name]=user1&user[password]=guess",
            None,
            "user[name]=user0&user[password]=pass0",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!requests(&s).iter().any(|r| r.contains("login")));
    assert!(!requests(&s).iter().any(|r| r.contains("guess")));
    // The same form without them logs in.
    let (status, h, _) = s.form_login("user0", "pass0", None, &[]).await;
    assert_eq!(status, StatusCode::FOUND);
    assert!(requests(&s).contains(&"POST /aspera/faspex/login".to_owned()));

    // Repeated fields and other spellings of the credential fields are refused.
    for body in [
        "user[name]=user0&user[password]=pass0&user[name][x]=user1",
        "user[name]=user0&user[password]=pass0&user[name]=user1",
        "user[name]=user0&user[password]=pass0&user[name]]=user1&user[password]]=guess",
        "user[name]=user0&user[password]=pass0&[user][password]=guess",
        "user[name]=user0&user[password]=pass0&_method=delete",
    ] {
        let (status, _, _) = s.post_form(LOGIN, None, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }

    // Other fields, even repeated ones (a Rails checkbox), go through.
    let (status, _, _) = s.post_form(LOGIN, Some(&cookies_from(&h)), "utf8=%E2%9C%93&user[name]=user0&user[password]=pass0&user[remember_me]=0&user[remember_me]=1").await;
    assert_eq!(status, StatusCode::FOUND);
    // The login action takes no other method; the token endpoint only POST, and only a form.
    let (status, _, _) = send(
        &s.client,
        Request::put(s.url(LOGIN))
            .header(
                header::AUTHORIZATION,
                format!("Basic {}", b64("user0:pass0")),
            )
            .body(full("user[name]=user1&user[password]=guess"))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, _) = s
        .basic(
            "GET",
            "/aspera/faspex/auth/oauth2/token?username=user1&password=guess",
            "user0",
            "pass0",
            &[],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    for (ct, body) in [
        (
            "application/json",
            r#"{"username":"user1","password":"guess"}"#,
        ),
        (
            "application/x-www-form-urlencoded",
            "grant_type=password&username]=user1&password]=guess",
        ),
    ] {
        let (status, _, _) = s
            .basic(
                "POST",
                TOKEN,
                "user0",
                "pass0",
                &[("Content-Type", ct)],
                body,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }

    // Authorization never rides along on logout, the login form or public paths, in any
    // spelling of any scheme.
    let before = basic_checks(&s);
    for auth in [
        guess.clone(),
        format!("Basic\t{}", b64("user1:guess")),
        format!("Bearer {}", b64("user1:guess")),
    ] {
        s.get_plain("/aspera/faspex/logout", &[("Authorization", &auth)])
            .await;
        s.get_plain(
            &format!(
                "/aspera/faspex/external_deliveries/{EXTERNAL_DELIVERY_ID}?passcode={EXTERNAL_DELIVERY_PASSCODE}"
            ),
            &[("Authorization", &auth)],
        )
        .await;
    }
    assert_eq!(basic_checks(&s), before, "Faspex checked no password");

    // On protected paths an unknown scheme, or Basic with a tab, is not passed on unchecked.
    let (status, _, _) = s
        .get_plain(
            ME,
            &[("Authorization", &format!("Digest {}", b64("user1:guess")))],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = s
        .get_plain(
            ME,
            &[("Authorization", &format!("Basic\t{}", b64("user1:guess")))],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "checked by the gateway, and wrong"
    );
    assert_eq!(basic_checks(&s), before);

    // The token endpoint takes only checked Basic credentials, and no others in its form.
    let cookie = cookies_from(&h);
    let (status, _, _) = s
        .post_form(
            TOKEN,
            Some(&cookie),
            "grant_type=password&username=user1&password=guess",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = s
        .token(
            "user0",
            "pass0",
            "grant_type=password&username=user1&password=guess",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_session_only_ever_uses_its_own_faspex_session() {
    let s = Site::start(users(2), LoginFailureStyle::Rerender, |_| {}).await;
    let ann = s.browser_login("user0", "pass0").await;
    let bob = s.browser_login("user1", "pass1").await;
    let pick = |c: &str, name: &str| {
        c.split("; ")
            .find(|p| p.starts_with(&format!("{name}=")))
            .unwrap()
            .to_owned()
    };
    // user0's gateway cookie with user1's Faspex cookie: Faspex sees user0's.
    let mixed = format!("{}; {}", pick(&ann, COOKIE), pick(&bob, "_faspex_session"));
    let (status, _, body) = s.browse("/aspera/faspex/inbox", &mixed).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text(&body).contains("user0"), "{}", text(&body));
    assert!(!text(&body).contains("user1"), "{}", text(&body));
    // Nor in the spellings Rack reads as the same cookie.
    for sep in [",", "; %5F"] {
        let bob_value = pick(&bob, "_faspex_session")
            .strip_prefix("_faspex_session=")
            .unwrap()
            .to_owned();
        let tricky = if sep == "," {
            format!("a=1,_faspex_session={bob_value}; {}", pick(&ann, COOKIE))
        } else {
            format!("{}; %5Ffaspex_session={bob_value}", pick(&ann, COOKIE))
        };
        let (status, _, body) = s.browse("/aspera/faspex/inbox", &tricky).await;
        assert_eq!(status, StatusCode::OK);
        assert!(text(&body).contains("user0") && !text(&body).contains("user1"));
    }
    // Logout logs out the session's own Faspex session, whatever cookie comes with it.
    let (status, _, _) = s.logout(&mixed).await;
    assert_eq!(status, StatusCode::FOUND);
    assert!(
        eventually(Duration::from_secs(5), || s.events().contains(
            &EmulatorEvent::Logout {
                user: Some("user0".into())
            }
        ))
        .await
    );
    assert!(!s.events().contains(&EmulatorEvent::Logout {
        user: Some("user1".into())
    }));
    let ann = s.browser_login("user0", "pass0").await;
    // And with no Faspex cookie at all, the session still has its own.
    let (status, _, body) = s.browse("/aspera/faspex/inbox", &pick(&ann, COOKIE)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text(&body).contains("user0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_never_sees_faspexs_own_password_challenge() {
    let s = Site::start(users(1), LoginFailureStyle::Rerender, |_| {}).await;
    s.emu.refuse_logins(true);
    use base64::Engine as _;
    let creds = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user0:pass0")
    );
    // Faspex answers 401 with its challenge; a browser gets the 401 without it.
    let (status, h, _) = s
        .get_plain(ME, &[("Authorization", &creds), ("Accept", "text/html")])
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!h.contains_key(header::WWW_AUTHENTICATE));
    // An API client gets Faspex's answer as it is.
    let (status, h, _) = s.get_plain(ME, &[("Authorization", &creds)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(h.contains_key(header::WWW_AUTHENTICATE));
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_attempts_from_one_address_get_429_with_retry_after() {
    let s = Site::with_policy(1, "login_attempts_per_ip_per_minute", "3").await;
    for i in 0..3 {
        let (status, _, _) = s.form_login("user0", &format!("bad{i}"), None, &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let throttled = StatusCode::TOO_MANY_REQUESTS;
    assert_form_refused(&s, "user0", "pass0", throttled, "Too many attempts").await;
    let (status, h, _) = s.basic("GET", ME, "user0", "pass0", &[], "").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&h) >= 1);
    // (throttled attempts reach no directory)
    s.assert_checks(3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_directory_is_503_and_counts_against_no_one() {
    let s = Site::start(users(1), LoginFailureStyle::Rerender, |c| {
        c.set("auth", "backend", "\"ldap\"");
        c.set("auth.ldap", "urls", "[\"ldap://127.0.0.1:9\"]");
        c.set(
            "auth.ldap",
            "user_dn_template",
            "\"uid={username},ou=people,dc=example,dc=org\"",
        );
        c.set("auth.ldap", "timeout", "\"1s\"");
    })
    .await;
    for _ in 0..6 {
        let (status, _, body) = s.form_login("user0", "pass0", None, &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(text(&body).contains("did not count as a failed login"));
    }
    let (status, h, _) = s.basic("GET", ME, "user0", "pass0", &[], "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!h.contains_key(header::WWW_AUTHENTICATE));
    // Six tries and no lock: still 503, never 403.
    assert!(!s.gw.logs().contains("account locked"));
    assert!(s
        .events()
        .iter()
        .all(|e| matches!(e, EmulatorEvent::Request { .. })));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_faspex_is_502_and_keeps_no_seat() {
    let mut s = Site::start(users(2), LoginFailureStyle::Rerender, |c| {
        c.set("policy", "max_sessions", "1");
        c.set("upstream", "connect_timeout", "\"1s\"");
    })
    .await;
    // Stop the emulator: its port refuses connections from now on.
    let (stop, _) = tokio::sync::oneshot::channel();
    drop(std::mem::replace(&mut s._emu_stop, stop));
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (u, p) in [("user0", "pass0"), ("user1", "pass1")] {
        let (status, _, body) = s.form_login(u, p, None, &[]).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{u}: {}", text(&body));
    }
    let (status, _, _) = s.basic("GET", ME, "user1", "pass1", &[], "").await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "no seat was kept by the failed logins"
    );
}

/// `log.format = "json"`: every line on stderr is one JSON object, tracing's lines and the
/// access log alike, with the fields docs/operations.md lists.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_a_line_with_the_access_fields() {
    let s = Site::start(users(1), LoginFailureStyle::Rerender, |c| {
        c.set("log", "format", "\"json\"");
    })
    .await;
    let cookie = s.browser_login("user0", "pass0").await;
    assert_eq!(
        s.browse("/aspera/faspex/inbox", &cookie).await.0,
        StatusCode::OK
    );
    let access_line = |logs: &str| {
        logs.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["target"] == "faspex_gate::access" && v["path"] == "/aspera/faspex/inbox")
    };
    assert!(
        eventually(Duration::from_secs(5), || access_line(&s.gw.logs())
            .is_some())
        .await,
        "no access line; the log:\n{}",
        s.gw.logs()
    );
    let logs = s.gw.logs();
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {line}"));
        if v.get("event").is_some() {
            continue; // an audit record (audit.path = "-"), JSON lines of their own
        }
        for key in ["timestamp", "level", "target"] {
            assert!(v[key].is_string(), "{key} in {line}");
        }
    }
    assert!(
        logs.lines()
            .any(|l| l.contains("\"message\":\"HTTPS listener ready\"")),
        "{logs}"
    );
    let v = access_line(&logs).unwrap();
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["route"], "protected");
    assert_eq!(v["status"], 200);
    assert!(v["bytes"].as_u64().unwrap() > 0);
    assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["client_ip"], "127.0.0.1");
    assert_eq!(v["complete"], true);
    assert!(!logs.contains("pass0"), "no password in the log");
}

/// The manual clock is a test build's option, moved only through the admin API with the token;
/// a gateway on the wall clock has no such route.
#[tokio::test(flavor = "multi_thread")]
async fn the_manual_clock_moves_only_through_the_admin_api() {
    let s = Site::on_manual_clock(users(1), LoginFailureStyle::Rerender, |_| {}).await;
    assert!(s.gw.logs().contains("running on a manual clock"));
    let url = format!("{}/admin/v1/clock", s.gw.admin_url());
    let (st, _, _) = crate::ops::admin_req("POST", &url, &[], "{\"advance_secs\": 60}").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let auth = ("authorization", "Bearer test-admin-token-0123456789");
    let (st, _, a) = crate::ops::admin_req("POST", &url, &[auth], "{\"advance_secs\": 0}").await;
    assert_eq!(st, StatusCode::OK, "{a}");
    let (st, _, b) = crate::ops::admin_req("POST", &url, &[auth], "{\"advance_secs\": 3600}").await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let ms = |t: &str| {
        crate::util::json(&Bytes::from(t.to_owned()))["now_ms"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(ms(&b) - ms(&a), 3_600_000);
    let (st, _, _) = crate::ops::admin_req("POST", &url, &[auth], "{\"advance_secs\": -1}").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _, _) = crate::ops::admin_req("GET", &url, &[auth], "").await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);

    let (wall, _) = crate::ops::ops_site(1, |_| {}).await;
    let url = format!("{}/admin/v1/clock", wall.gw.admin_url());
    let (st, _, _) = crate::ops::admin_req("POST", &url, &[auth], "{\"advance_secs\": 60}").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}
