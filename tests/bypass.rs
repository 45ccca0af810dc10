//! The attacks of the issue "No password reaches Faspex unchecked", each against the real binary
//! in front of the emulator, which routes and reads parameters as Rails does: every one reached
//! Faspex unchecked before the credential gate, and none does now. Then the protocol-layer
//! findings of issue 19 (upgrades, headers, the deny list's spellings), against an emulator that
//! speaks h2c when asked, as Apache with `Protocols h2c http/1.1` does.

use std::time::Duration;

use base64::Engine as _;
use faspex_emulator::{EmulatorEvent, LoginFailureStyle, LoginVia};
use http::{header, Method, Request, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::flows::{cookies_from, eventually, location, text, users, Site};
use crate::ops::{ops_site, scrape, value};
use crate::util::{empty, full, send};

/// How many passwords for `user` reached Faspex, by any route.
fn guesses(s: &Site, user: &str) -> usize {
    s.events()
        .iter()
        .filter(|e| matches!(e, EmulatorEvent::LoginAttempt { user: u, .. } if u == user))
        .count()
}

fn refused(metrics: &str, reason: &str) -> f64 {
    value(
        metrics,
        &format!("faspex_gate_requests_refused_total{{reason=\"{reason}\"}}"),
    )
}

async fn post_form(
    s: &Site,
    path: &str,
    cookie: &str,
    form: &str,
    extra: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, bytes::Bytes) {
    let mut req = Request::post(s.url(path))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "text/html")
        .header(header::COOKIE, cookie);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    send(&s.client, req.body(full(form.to_owned())).unwrap()).await
}

/// Finding 1: a session holder guessing another account's password through spellings of the
/// login action that Rails routes to it. Each guess is now the checked login (counted, locking)
/// or refused; none reaches Faspex.
#[tokio::test(flavor = "multi_thread")]
async fn guesses_through_rails_spellings_of_login_are_checked_and_lock() {
    let (s, _audit) = ops_site(2, |_| {}).await;
    let alice = s.browser_login("user0", "pass0").await;
    let before = guesses(&s, "user1");
    for path in [
        "/aspera/faspex/login.json/",
        "/aspera/faspex/login.x-y",
        "/aspera/faspex/login.html/",
        "/aspera/faspex/login.json%2F",
        "/aspera/faspex/login.a_b",
        "/aspera/faspex/login//",
    ] {
        let (status, _, body) = post_form(
            &s,
            path,
            &alice,
            "user%5Bname%5D=user1&user%5Bpassword%5D=wrong",
            &[],
        )
        .await;
        assert!(
            status == StatusCode::UNAUTHORIZED
                || status == StatusCode::FORBIDDEN
                || status == StatusCode::BAD_REQUEST,
            "{path}: {status} {}",
            text(&body)
        );
    }
    // Five wrong passwords through the checked login locked the account: its right password is
    // refused too, and Faspex saw not one of the guesses.
    let (status, _, body) = s.form_login("user1", "pass1", None, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{}", text(&body));
    assert_eq!(guesses(&s, "user1"), before, "a guess reached Faspex");
    let metrics = scrape(&s.gw).await;
    assert!(refused(&metrics, "path") >= 1.0, "the %2F spelling");
}

/// Finding 1, the take-over: a right guess on a spelling of the login action is a real login of
/// that account, checked and holding its own seat; the guesser's own session ends and never
/// serves the other account's Faspex session.
#[tokio::test(flavor = "multi_thread")]
async fn a_right_guess_on_another_spelling_is_a_login_not_a_take_over() {
    let s = Site::start(users(2), LoginFailureStyle::Rerender, |_| {}).await;
    let alice = s.browser_login("user0", "pass0").await;
    let (status, h, body) = post_form(
        &s,
        "/aspera/faspex/login.x-y",
        &alice,
        "user[name]=user1&user[password]=pass1",
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::FOUND, "{}", text(&body));
    let bob = cookies_from(&h);
    assert_ne!(bob, alice);
    // Exactly the one checked login reached Faspex, and it was the gateway's.
    let attempts: Vec<_> = s
        .events()
        .into_iter()
        .filter(|e| matches!(e, EmulatorEvent::LoginAttempt { user, .. } if user == "user1"))
        .collect();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    // Alice's old cookie no longer opens anything: it never serves user1's inbox.
    let (status, _, body) = s.browse("/aspera/faspex/inbox", &alice).await;
    assert_ne!(status, StatusCode::OK, "{}", text(&body));
    assert!(!text(&body).contains("user1"));
}

/// Finding 1, the token action: `username`/`password` in a token form need Basic credentials
/// that the gateway checks, on every spelling of the action.
#[tokio::test(flavor = "multi_thread")]
async fn token_spellings_refuse_form_credentials() {
    let s = Site::start(users(2), LoginFailureStyle::Rerender, |_| {}).await;
    let alice = s.browser_login("user0", "pass0").await;
    for path in [
        "/aspera/faspex/auth/oauth2/token",
        "/aspera/faspex/auth/oauth2/token.json/",
        "/aspera/faspex/auth//oauth2/token/",
    ] {
        let (status, _, body) = post_form(
            &s,
            path,
            &alice,
            "grant_type=password&username=user1&password=pass1",
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {}", text(&body));
    }
    assert_eq!(guesses(&s, "user1"), 0);
}

/// Finding 2: credentials in a query string to the login page (which a Rails 3 `match` route
/// accepts by GET) never reach Faspex.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_in_a_query_are_refused() {
    let (s, _audit) = ops_site(2, |_| {}).await;
    let alice = s.browser_login("user0", "pass0").await;
    for target in [
        "/aspera/faspex/login?user[name]=user1&user[password]=pass1",
        "/aspera/faspex/login/?user%5Bname%5D=user1&user%5Bpassword%5D=pass1",
        "/aspera/faspex/login/new?user[name]=user1&user[password]=pass1",
        "/aspera/faspex/login.json?a=1;user[password]=pass1&user[name]=user1",
        "/aspera/faspex/inbox?user[name]=user1&user[password]=pass1",
    ] {
        for cookie in [None, Some(alice.as_str())] {
            let mut req = Request::get(s.url(target));
            if let Some(c) = cookie {
                req = req.header(header::COOKIE, c);
            }
            let (status, _, body) = send(&s.client, req.body(empty()).unwrap()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{target}: {}", text(&body));
            assert!(
                text(&body).contains("faspex.password_forms"),
                "the refusal names the key: {}",
                text(&body)
            );
        }
    }
    assert_eq!(guesses(&s, "user1"), 0);
    assert!(!s.events().iter().any(|e| matches!(
        e,
        EmulatorEvent::Request { path_and_query, .. } if path_and_query.contains("password")
    )));
    let metrics = scrape(&s.gw).await;
    assert_eq!(refused(&metrics, "credential_field"), 10.0);
}

/// Credentials in a body to any other path, in the spellings Rack reads, are refused; a Faspex
/// form listed in `faspex.password_forms` passes with a live session, and only with one.
#[tokio::test(flavor = "multi_thread")]
async fn credential_bodies_are_refused_and_password_forms_pass_with_a_session() {
    let s = Site::start(users(2), LoginFailureStyle::Rerender, |_| {}).await;
    let alice = s.browser_login("user0", "pass0").await;
    for (ct, body) in [
        ("application/x-www-form-urlencoded", "user[password][]=x"),
        ("application/x-www-form-urlencoded", "a=1&user]password=x"),
        (
            "application/json",
            r#"{"user":{"name":"user1","password":"pass1"}}"#,
        ),
        ("text/plain", r#"{"refresh_token":"x"}"#),
        ("application/xml", "<user><password>x</password></user>"),
        (
            "multipart/form-data; boundary=B",
            "--B\r\nContent-Disposition: form-data; name=\"user[password]\"\r\n\r\nx\r\n--B--\r\n",
        ),
    ] {
        let req = Request::post(s.url("/aspera/faspex/send"))
            .header(header::CONTENT_TYPE, ct)
            .header(header::COOKIE, &alice)
            .body(full(body.to_owned()))
            .unwrap();
        let (status, _, resp) = send(&s.client, req).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{ct} {body}: {}",
            text(&resp)
        );
    }
    // A body the gate cannot read whole is never forwarded uninspected.
    let big = format!("a={}", "x".repeat(1024 * 1024 + 1));
    let (status, _, _) = post_form(&s, "/aspera/faspex/send", &alice, &big, &[]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let form = "user%5Blogin%5D=ext1&user%5Bemail%5D=ext1%40example.org&user%5Bpassword%5D=Secret-1&user%5Bpassword_confirmation%5D=Secret-1";
    // Without a session: no further than the gateway.
    let (status, _, _) = post_form(&s, "/aspera/faspex/admin/users", "", form, &[]).await;
    assert_ne!(status, StatusCode::OK);
    assert!(!s
        .events()
        .iter()
        .any(|e| matches!(e, EmulatorEvent::LocalAccountCreated { .. })));
    // With one: Faspex's own form, password and all.
    let (status, _, body) = post_form(&s, "/aspera/faspex/admin/users", &alice, form, &[]).await;
    assert!(
        status.is_success() || status.is_redirection(),
        "{status} {}",
        text(&body)
    );
    assert!(
        eventually(Duration::from_secs(5), || s.events().iter().any(
            |e| matches!(e, EmulatorEvent::LocalAccountCreated { login, .. } if login == "ext1")
        ))
        .await
    );
}

/// Finding 4: a Basic password that is not UTF-8 was checked lossily while Faspex got the raw
/// bytes. Now: 400, and Faspex sees nothing.
#[tokio::test(flavor = "multi_thread")]
async fn non_utf8_basic_credentials_are_refused() {
    let s = Site::start(users(1), LoginFailureStyle::Rerender, |_| {}).await;
    for raw in [&b"user0:pw-\xff!"[..], b"us\xffer0:pass0"] {
        let creds = base64::engine::general_purpose::STANDARD.encode(raw);
        let (status, _, _) = s
            .get_plain(
                "/aspera/faspex/me",
                &[("Authorization", &format!("Basic {creds}"))],
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    assert!(!s.events().iter().any(|e| matches!(
        e,
        EmulatorEvent::BasicAuth { .. }
            | EmulatorEvent::LoginAttempt {
                via: LoginVia::Basic,
                ..
            }
    )));
}

/// Finding 5: a logout link on another site. A cross-site (or unmarked) GET gets a page asking
/// to confirm; the session lives on. A same-origin GET, or the confirming POST, ends it, and
/// the gateway logs Faspex out itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_cross_site_logout_link_asks_first() {
    let s = Site::start(users(1), LoginFailureStyle::Rerender, |_| {}).await;
    let cookie = s.browser_login("user0", "pass0").await;
    for marks in [
        vec![("Sec-Fetch-Site", "cross-site")],
        vec![("Referer", "https://evil.example/page")],
        vec![],
    ] {
        let mut req = Request::get(s.url("/aspera/faspex/logout"))
            .header(header::ACCEPT, "text/html")
            .header(header::COOKIE, &cookie);
        for (k, v) in &marks {
            req = req.header(*k, *v);
        }
        let (status, _, body) = send(&s.client, req.body(empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{marks:?}");
        assert!(text(&body).contains("Sign out?"), "{marks:?}");
        assert!(text(&body).contains(r#"<form method="post""#));
        let (status, _, _) = s.browse("/aspera/faspex/inbox", &cookie).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "the session lives on after {marks:?}"
        );
    }
    assert!(!s
        .events()
        .iter()
        .any(|e| matches!(e, EmulatorEvent::Logout { .. })));

    // The button: a same-origin POST.
    let origin = s.gw.base();
    let (status, h, _) = post_form(
        &s,
        "/aspera/faspex/logout",
        &cookie,
        "",
        &[("Origin", origin.as_str())],
    )
    .await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(location(&h), "/aspera/faspex/login");
    let (status, _, _) = s.browse("/aspera/faspex/inbox", &cookie).await;
    assert_eq!(status, StatusCode::FOUND, "the session ended");
    assert!(
        eventually(Duration::from_secs(5), || s.events().contains(
            &EmulatorEvent::Logout {
                user: Some("user0".into())
            }
        ))
        .await,
        "the gateway logged Faspex out with the cookie it kept"
    );

    // A same-origin GET (the browser says so) ends it at once.
    let cookie = s.browser_login("user0", "pass0").await;
    let req = Request::get(s.url("/aspera/faspex/logout.json/"))
        .header(header::COOKIE, &cookie)
        .header("Sec-Fetch-Site", "same-origin")
        .body(empty())
        .unwrap();
    let (status, _, _) = send(&s.client, req).await;
    assert_eq!(status, StatusCode::FOUND);
    let (status, _, _) = s.browse("/aspera/faspex/inbox", &cookie).await;
    assert_eq!(status, StatusCode::FOUND);

    // The confirm page's button under `Referrer-Policy: no-referrer`: Chromium posts it with
    // `Origin: null` and `Sec-Fetch-Site: same-origin`. That is the browser's own origin.
    let cookie = s.browser_login("user0", "pass0").await;
    let same = [("Origin", "null"), ("Sec-Fetch-Site", "same-origin")];
    let (status, _, _) = post_form(&s, "/aspera/faspex/logout", &cookie, "", &same).await;
    assert_eq!(status, StatusCode::FOUND);
    let (status, _, _) = s.browse("/aspera/faspex/inbox", &cookie).await;
    assert_eq!(status, StatusCode::FOUND, "the session ended");
    // A null origin another site's page sends is still another site's.
    let cookie = s.browser_login("user0", "pass0").await;
    let cross = [("Origin", "null"), ("Sec-Fetch-Site", "cross-site")];
    let (status, _, body) = post_form(&s, "/aspera/faspex/logout", &cookie, "", &cross).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text(&body).contains("Sign out?"));
    let (status, _, _) = s.browse("/aspera/faspex/inbox", &cookie).await;
    assert_eq!(status, StatusCode::OK, "the session lives on");
}

/// Finding 6: the rebuilt login form kept the client's `Content-Encoding`. A login body the
/// gateway must read may not be content-encoded at all: 415, and nothing reaches Faspex.
#[tokio::test(flavor = "multi_thread")]
async fn a_content_encoded_login_is_refused() {
    let (s, _audit) = ops_site(1, |_| {}).await;
    let (status, _, _) = post_form(
        &s,
        "/aspera/faspex/login",
        "",
        "user[name]=user0&user[password]=pass0",
        &[("Content-Encoding", "gzip")],
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(guesses(&s, "user0"), 0);
    let metrics = scrape(&s.gw).await;
    assert_eq!(refused(&metrics, "body"), 1.0);
}

/// Encoded slashes and dot segments are refused, and the path Faspex receives is the
/// normalised one the gateway classified.
#[tokio::test(flavor = "multi_thread")]
async fn faspex_receives_the_path_that_was_classified() {
    let s = Site::start(users(1), LoginFailureStyle::Rerender, |_| {}).await;
    for target in [
        "/aspera/faspex/inbox/%2e%2e/javascripts/x",
        "/aspera/faspex/received/1%2f..%2f..%2fjavascripts%2fx",
        "/aspera/faspex/external/%252e%252e/received/4044",
    ] {
        let (status, _, _) = s.get_plain(target, &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{target}");
    }
    let cookie = s.browser_login("user0", "pass0").await;
    let (status, _, _) = s.browse("//aspera/faspex/x/../inbox?page=1", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(s.events().iter().any(|e| matches!(
        e,
        EmulatorEvent::Request { path_and_query, .. } if path_and_query == "/aspera/faspex/inbox?page=1"
    )));
    assert!(!s.events().iter().any(|e| matches!(
        e,
        EmulatorEvent::Request { path_and_query, .. } if path_and_query.contains("..") || path_and_query.contains("//")
    )));
}

/// The `HTTP2-Settings` of the review's h2c upgrade (three settings, base64url).
const H2_SETTINGS: &str = "AAMAAABkAARAAAAAAAIAAAAA";

/// Speak h2c to `addr` directly, as a client would past a gateway that relayed the upgrade: a
/// `GET upgrade_path` asking for h2c, then, if the answer is `101`, each of `requests` as HTTP/2
/// on the same connection. Returns the answer's head and the HTTP/2 answers' statuses.
async fn h2c_direct(
    addr: std::net::SocketAddr,
    upgrade_path: &str,
    requests: &[(Method, &str)],
) -> (String, Vec<StatusCode>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET {upgrade_path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: {H2_SETTINGS}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    if !head.starts_with("HTTP/1.1 101") {
        return (head, Vec::new());
    }
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 on the upgraded connection");
    tokio::spawn(connection);
    let mut statuses = Vec::new();
    for (method, path) in requests {
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("http://{addr}{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .expect("an HTTP/2 answer in time")
            .expect("an HTTP/2 answer");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        statuses.push(resp.status());
    }
    (head, statuses)
}

/// Read an HTTP/1.1 response head, byte by byte so that nothing after it is taken.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut head = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if stream.read(&mut b).await.unwrap() == 0 {
                break;
            }
            head.push(b[0]);
        }
    })
    .await;
    assert!(read.is_ok(), "no response head in time");
    String::from_utf8_lossy(&head).into_owned()
}

/// An upgrade to a made-up token, straight to `addr`: the answer's head, and what came back for
/// `ping` when it was `101`.
async fn made_up_direct(addr: std::net::SocketAddr, path: &str) -> (String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: made-up\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    if !head.starts_with("HTTP/1.1 101") {
        return (head, Vec::new());
    }
    stream.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut echo))
        .await
        .expect("the echo in time")
        .unwrap();
    (head, echo.to_vec())
}

/// The HTTP/2 requests that reached the emulator.
fn h2_requests(s: &Site) -> Vec<String> {
    s.emu
        .requests()
        .into_iter()
        .filter(|r| r.version == http::Version::HTTP_2)
        .map(|r| format!("{} {}", r.method, r.path_and_query))
        .collect()
}

fn upgrades(s: &Site) -> usize {
    s.events()
        .iter()
        .filter(|e| matches!(e, EmulatorEvent::Upgraded { .. }))
        .count()
}

/// The emulator's h2c mode is a real h2c upstream: asked directly, without the gateway, a public
/// GET upgrades to HTTP/2, and the requests sent inside reach Faspex with nothing in between,
/// the denied package relay among them. Off (the default), the same GET is answered as HTTP/1.1.
/// Without this, the refusals below would prove nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_h2c_emulator_opens_a_tunnel_when_asked_directly() {
    let s = Site::start(users(1), LoginFailureStyle::Rerender, |_| {}).await;
    let relay = "/aspera/faspex/package_relay/relay_package";
    // Off: no 101, the stylesheet comes back over HTTP/1.1, and no HTTP/2 request arrives.
    let (head, statuses) = h2c_direct(
        s.emu_addr,
        "/aspera/faspex/stylesheets/application.css",
        &[(Method::POST, relay)],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(statuses.is_empty());
    let (head, _) = made_up_direct(s.emu_addr, "/aspera/faspex/stylesheets/application.css").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(upgrades(&s), 0);

    s.emu.accept_h2c(true);
    let (head, statuses) = h2c_direct(
        s.emu_addr,
        "/aspera/faspex/stylesheets/a.css",
        &[
            (Method::POST, relay),
            (Method::GET, "/aspera/faspex/received/4044"),
            (Method::GET, "/aspera/faspex/login"),
        ],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: h2c"), "{head}");
    // Rails 404s the relay (the emulator routes it, as Faspex 4.4.2 would run it), the inbox
    // wants a login, the login page is there.
    assert_eq!(
        statuses,
        [
            StatusCode::NOT_FOUND,
            StatusCode::UNAUTHORIZED,
            StatusCode::OK
        ]
    );
    assert_eq!(
        h2_requests(&s),
        [
            format!("POST {relay}"),
            "GET /aspera/faspex/received/4044".into(),
            "GET /aspera/faspex/login".into()
        ]
    );
    assert!(s.events().contains(&EmulatorEvent::Upgraded {
        protocol: "h2c".into()
    }));
    // A made-up token: 101, and a raw echo.
    let (head, echo) = made_up_direct(s.emu_addr, "/aspera/faspex/login").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: made-up"),
        "{head}"
    );
    assert_eq!(echo, b"ping");
    assert_eq!(upgrades(&s), 2);
}

/// The tunnel of the protocol-layer review: `Upgrade: h2c` (or any token but WebSocket) on a
/// public path was forwarded, and behind an upstream that speaks h2c the gateway answered 101
/// and joined the sockets: `POST /aspera/faspex/package_relay/relay_package` arrived over HTTP/2
/// with no session. Here the upstream does speak h2c (checked first, directly), and every such
/// upgrade through the gateway gets 400, is counted, and reaches nothing. A WebSocket belongs
/// only on the HTTP Gateway's paths (or to a live session), where it still works.
#[tokio::test(flavor = "multi_thread")]
async fn no_upgrade_but_websocket_where_one_belongs() {
    let (s, _audit) = ops_site(1, |_| {}).await;
    s.emu.accept_h2c(true);
    // The upstream behind this gateway opens the tunnel to whoever asks it directly.
    let (head, statuses) = h2c_direct(
        s.emu_addr,
        "/aspera/faspex/stylesheets/a.css",
        &[(Method::POST, "/aspera/faspex/package_relay/relay_package")],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(statuses, [StatusCode::NOT_FOUND]);
    let h2_before = h2_requests(&s);
    let upgrades_before = upgrades(&s);

    let public = format!(
        "/aspera/faspex/external_deliveries/{}?passcode={}",
        faspex_emulator::EXTERNAL_DELIVERY_ID,
        faspex_emulator::EXTERNAL_DELIVERY_PASSCODE
    );
    let h2c: &[(&str, &str)] = &[
        ("Connection", "Upgrade, HTTP2-Settings"),
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", H2_SETTINGS),
    ];
    let made_up: &[(&str, &str)] = &[("Connection", "Upgrade"), ("Upgrade", "made-up")];
    let websocket: &[(&str, &str)] = &[
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("/aspera/faspex/stylesheets/a.css", h2c),
        ("/aspera/faspex/login", h2c),
        (&public, h2c),
        ("/aspera/faspex/stylesheets/a.css", made_up),
        ("/aspera/faspex/login", made_up),
        (&public, made_up),
        (&public, websocket),
        ("/aspera/faspex/login", websocket),
        ("/aspera/faspex/stylesheets/a.css", &[("Upgrade", "h2c")]),
        (
            "/aspera/http-gwy/v2/upload",
            &[("Connection", "Upgrade"), ("Upgrade", "h2c")],
        ),
        (
            "/aspera/http-gwy/v2/upload",
            &[
                ("Connection", "Upgrade, HTTP2-Settings"),
                ("Upgrade", "h2c"),
                ("HTTP2-Settings", H2_SETTINGS),
            ],
        ),
    ];
    let before = s.events().len();
    for (path, headers) in cases {
        let (status, h, _) = s.get_plain(path, headers).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {headers:?}");
        assert!(!h.contains_key(header::UPGRADE), "{path} {headers:?}");
    }
    // With a live session too: only a WebSocket may upgrade, never h2c.
    let cookie = s.browser_login("user0", "pass0").await;
    let after_login = s.events().len();
    for path in ["/aspera/faspex/inbox", "/aspera/faspex/stylesheets/a.css"] {
        let mut req = Request::get(s.url(path)).header(header::COOKIE, &cookie);
        for (k, v) in h2c {
            req = req.header(*k, *v);
        }
        let (status, _, _) = send(&s.client, req.body(empty()).unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} with a session");
    }
    assert_eq!(
        s.events().len(),
        after_login,
        "nothing reached Faspex: {:?}",
        &s.events()[after_login..]
    );
    assert!(
        s.events()[before..after_login]
            .iter()
            .all(|e| !matches!(e, EmulatorEvent::Request { path_and_query, .. } if !path_and_query.starts_with("/aspera/faspex/login"))),
        "only the login reached Faspex: {:?}",
        &s.events()[before..after_login]
    );
    assert_eq!(upgrades(&s), upgrades_before, "Faspex switched no protocol");
    assert_eq!(
        h2_requests(&s),
        h2_before,
        "no HTTP/2 request reached Faspex"
    );
    let metrics = scrape(&s.gw).await;
    assert_eq!(refused(&metrics, "upgrade"), (cases.len() + 2) as f64);

    // The public page itself still works, and the HTTP Gateway's WebSocket upload still
    // upgrades, end to end, to the one protocol it asked for.
    let (status, _, _) = s.get_plain(&public, &[]).await;
    assert_eq!(status, StatusCode::OK);
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let addr = s.gw.https.unwrap();
        let stream = crate::util::raw_tls(addr, &s.gw.files.cert_pem).await;
        let url = format!(
            "wss://localhost:{}/aspera/http-gwy/v2/upload?token=faspex-issued",
            addr.port()
        );
        let (mut ws, resp) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(resp.headers()[header::UPGRADE], "websocket");
        ws.send(Message::binary(vec![7u8; 4096])).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap().into_data(),
            vec![7u8; 4096]
        );
        ws.close(None).await.unwrap();
    }
    assert_eq!(
        upgrades(&s),
        upgrades_before,
        "the WebSocket is the gateway's route"
    );
}

/// Header names with `_` (`X_Forwarded_For`, `Client_IP`, `Transfer_Encoding`), which Rack folds
/// into `-` and so into the headers the gateway sets or refuses, never reach Faspex, and each is
/// counted; nor do the URL-override headers, which IIS URL Rewrite, Symfony and Zend act on.
#[tokio::test(flavor = "multi_thread")]
async fn underscore_and_url_override_headers_never_reach_faspex() {
    let (s, _audit) = ops_site(1, |_| {}).await;
    let dropped = |m: &str| value(m, "faspex_gate_request_headers_dropped_total");
    let before = dropped(&scrape(&s.gw).await);
    let relay = "/aspera/faspex/package_relay/relay_package";
    let sent: &[(&str, &str)] = &[
        ("X_Forwarded_For", "6.6.6.6"),
        ("Client_IP", "6.6.6.6"),
        ("Transfer_Encoding", "chunked"),
        ("X-Original-URL", relay),
        ("X-Rewrite-URL", relay),
        ("X-Original-URI", relay),
        ("X-Override-URL", relay),
        ("X-Forwarded-Uri", relay),
    ];
    let cookie = s.browser_login("user0", "pass0").await;
    let mut paths = Vec::new();
    for (path, cookie) in [
        ("/aspera/faspex/login", None),
        ("/aspera/faspex/inbox?x=headers", Some(cookie.as_str())),
    ] {
        let mut req = Request::get(s.url(path)).header(header::ACCEPT, "text/html");
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        for (k, v) in sent {
            req = req.header(*k, *v);
        }
        let (status, _, body) = send(&s.client, req.body(empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{path}: {}", text(&body));
        paths.push(path);
    }
    let seen = s.emu.requests();
    for path in paths {
        let r = seen
            .iter()
            .rev()
            .find(|r| r.path_and_query == path)
            .unwrap_or_else(|| panic!("{path} reached Faspex"));
        for (name, _) in sent {
            assert!(
                !r.headers.contains_key(*name),
                "{name} reached Faspex on {path}"
            );
        }
        assert!(
            r.headers.keys().all(|k| !k.as_str().contains('_')),
            "{path}: {:?}",
            r.headers
        );
        // The address Faspex is told is the client's, not the spoofed one.
        assert!(
            r.headers
                .get_all("x-forwarded-for")
                .iter()
                .all(|v| !v.to_str().unwrap().contains("6.6.6.6")),
            "{path}: {:?}",
            r.headers
        );
    }
    assert!(!s.events().iter().any(
        |e| matches!(e, EmulatorEvent::Request { path_and_query, .. } if path_and_query.contains("package_relay"))
    ));
    let after = dropped(&scrape(&s.gw).await);
    assert_eq!(after - before, (2 * sent.len()) as f64);
}

/// Deny rules match ignoring case and `;params` on a segment: with a live session, the package
/// relay in capitals or with `;x` gets 403 and never reaches Faspex (Rails would 404 them; a
/// server that folds case or drops `;params` would run the relay).
#[tokio::test(flavor = "multi_thread")]
async fn the_deny_list_holds_in_any_case_and_with_segment_params() {
    let s = Site::start(users(1), LoginFailureStyle::Rerender, |_| {}).await;
    let cookie = s.browser_login("user0", "pass0").await;
    let before = s.events().len();
    for path in [
        "/aspera/faspex/package_relay/relay_package",
        "/aspera/faspex/PACKAGE_RELAY/relay_package",
        "/aspera/faspex/Package_Relay/relay_package",
        "/aspera/faspex/package_relay;x/relay_package",
        "/aspera/faspex/PACKAGE_RELAY;jsessionid=1/relay_package",
    ] {
        let (status, _, body) = post_form(&s, path, &cookie, "a=1", &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {}", text(&body));
        let (status, _, _) = s.browse(path, &cookie).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "GET {path}");
    }
    // `..;` is a dot segment to a server that drops params and a name to Rails: refused (400).
    let path = "/aspera/faspex/inbox/..;/package_relay/relay_package";
    let (status, _, _) = post_form(&s, path, &cookie, "a=1", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
    assert_eq!(
        s.events().len(),
        before,
        "nothing reached Faspex: {:?}",
        &s.events()[before..]
    );
    // A path that is not denied still goes through as it was sent.
    let (status, _, _) = s.browse("/aspera/faspex/inbox;x", &cookie).await;
    assert_ne!(status, StatusCode::FORBIDDEN);
    assert!(s.events().iter().any(
        |e| matches!(e, EmulatorEvent::Request { path_and_query, .. } if path_and_query == "/aspera/faspex/inbox;x")
    ));
}

/// The hostile review's way around the gate: `Connection: Content-Type` made the gateway strip
/// the type it had decided on, so Rack read a body the gate had streamed unread as a form.
/// `X-Post-Data-Format: xml` made Rails 3 read any body as XML. Both are refused or dropped
/// before the gate reads the request.
#[tokio::test(flavor = "multi_thread")]
async fn headers_cannot_change_how_faspex_reads_what_the_gate_read() {
    let (s, _audit) = ops_site(2, |_| {}).await;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user0:pass0")
    );
    let req = Request::post(s.url("/aspera/faspex/auth/oauth2/token?grant_type=password"))
        .header(header::AUTHORIZATION, &basic)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONNECTION, "keep-alive, Content-Type")
        .body(full("grant_type=password&username=user1&password=guess"))
        .unwrap();
    let (status, _, _) = send(&s.client, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Without the Connection trick, file data to the token action is read, and refused.
    let req = Request::post(s.url("/aspera/faspex/auth/oauth2/token"))
        .header(header::AUTHORIZATION, &basic)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(full("grant_type=password&username=user1&password=guess"))
        .unwrap();
    let (status, _, _) = send(&s.client, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A legacy XML body to the login page.
    let req = Request::get(s.url("/aspera/faspex/login"))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("X-Post-Data-Format", "xml")
        .body(full(
            "<user><name>user1</name><password>guess</password></user>",
        ))
        .unwrap();
    let (status, _, _) = send(&s.client, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(guesses(&s, "user1"), 0);
    let metrics = scrape(&s.gw).await;
    assert_eq!(refused(&metrics, "header"), 1.0);
}

/// The form Faspex gets is the one the gate read: Rack drops the spaces after a separator
/// (`& user[password]`), and so does the rebuilt form, so the checked password is the one
/// Faspex reads, and a login goes through.
#[tokio::test(flavor = "multi_thread")]
async fn the_rebuilt_login_form_is_the_one_checked() {
    let s = Site::start(users(1), LoginFailureStyle::Rerender, |_| {}).await;
    let (status, _, body) = post_form(
        &s,
        "/aspera/faspex/login",
        "",
        "user%5Bname%5D=user0&  user%5Bpassword%5D=pass0",
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::FOUND, "{}", text(&body));
    assert!(s.events().iter().any(
        |e| matches!(e, EmulatorEvent::LoginAttempt { user, ok: true, .. } if user == "user0")
    ));
}
