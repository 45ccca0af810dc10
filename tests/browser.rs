//! A real browser through the gateway: Debian's Chromium, headless, driven over WebDriver by
//! `chromedriver` (the `chromium-driver` package) and fantoccini. It goes through the real login
//! form, an inbox page, the 409 page and the lockout page, and checks the words a person reads.
//! Nothing here downloads a browser: both binaries must be installed (the test command does).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use faspex_gate::faspex::emulator::LoginFailureStyle;

use crate::flows::{users, Site};

/// `chromedriver` on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_binary(names: &[&str]) -> String {
    for name in names {
        for dir in ["/usr/bin", "/usr/lib/chromium", "/usr/local/bin"] {
            let p = format!("{dir}/{name}");
            if std::path::Path::new(&p).exists() {
                return p;
            }
        }
    }
    panic!(
        "none of {names:?} is installed: install Debian's chromium and chromium-driver (the \
         test command .ci/test does)"
    );
}

async fn start_driver() -> Driver {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(find_binary(&["chromedriver"]))
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Driver {
        child,
        port,
        _profile: tempfile::tempdir().unwrap(),
    }
}

async fn browser(driver: &Driver) -> Client {
    // fantoccini's rustls wants a process-wide provider; the gateway's is ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chromium = find_binary(&["chromium", "chromium-browser"]);
    let profile = tempfile::tempdir().unwrap().keep();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                // The test gateway's certificate is made for this test run.
                "--ignore-certificate-errors",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session with headless Chromium")
}

async fn body_text(c: &Client) -> String {
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Fill the page's login form and submit it.
async fn log_in(c: &Client, user: Option<&str>, password: &str) {
    if let Some(user) = user {
        let name = c
            .find(Locator::Css("input[name='user[name]']"))
            .await
            .unwrap();
        name.send_keys(user).await.unwrap();
    }
    let pw = c
        .find(Locator::Css("input[name='user[password]']"))
        .await
        .unwrap();
    pw.send_keys(password).await.unwrap();
    let before = body_text(c).await;
    c.find(Locator::Css("form [type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // Wait for the next page to be there.
    for _ in 0..100 {
        if let Ok(body) = c.find(Locator::Css("body")).await {
            if body.text().await.is_ok_and(|t| t != before) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the page did not change after the form was sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_in_chromium_sees_the_inbox_the_409_page_and_the_lockout_page() {
    let s = Site::start(users(2), LoginFailureStyle::Rerender, |_| {}).await;
    let driver = start_driver().await;
    let login = s.url("/aspera/faspex/login");

    // One person logs in through Faspex's own form and sees the inbox.
    let first = browser(&driver).await;
    first.goto(&s.url("/aspera/faspex/inbox")).await.unwrap();
    assert!(
        first
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/login"),
        "a browser without a session is sent to the login page"
    );
    log_in(&first, Some("user0"), "pass0").await;
    let url = first.current_url().await.unwrap();
    assert!(url.path().ends_with("/aspera/faspex/inbox"), "{url}");
    let text = body_text(&first).await;
    assert!(text.contains("user0"), "{text}");
    assert!(text.contains("Received Packages"), "{text}");

    // A second browser for the same account gets the 409 page, and takes over.
    let second = browser(&driver).await;
    second.goto(&login).await.unwrap();
    log_in(&second, Some("user0"), "pass0").await;
    let text = body_text(&second).await;
    assert!(text.contains("Already signed in elsewhere"), "{text}");
    assert!(text.contains("enter your password again"), "{text}");
    log_in(&second, None, "pass0").await;
    let url = second.current_url().await.unwrap();
    assert!(url.path().ends_with("/aspera/faspex/inbox"), "{url}");
    // The first browser is now signed out, and told why.
    first.goto(&s.url("/aspera/faspex/inbox")).await.unwrap();
    let text = body_text(&first).await;
    assert!(text.contains("Signed in somewhere else"), "{text}");

    // Five wrong passwords: the fifth shows the lockout page with the helpdesk.
    let third = browser(&driver).await;
    for i in 0..5 {
        third.goto(&login).await.unwrap();
        log_in(&third, Some("user1"), &format!("wrong{i}")).await;
        let text = body_text(&third).await;
        if i < 4 {
            assert!(text.contains("Login failed"), "{text}");
        } else {
            assert!(text.contains("Account locked"), "{text}");
            assert!(text.contains("It unlocks at"), "{text}");
            assert!(
                text.contains("the Research IT helpdesk, ext. 4357"),
                "{text}"
            );
        }
    }
    // No native password prompt appeared at any point: every page above had a body to read.
    for c in [first, second, third] {
        c.close().await.unwrap();
    }
}
