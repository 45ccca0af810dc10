//! Tests of the emulator over real sockets: each starts it on `127.0.0.1:0` and talks to it with
//! hyper's HTTP/1 client (or tokio-tungstenite for the WebSocket), as the gateway will.

use std::convert::Infallible;
use std::net::SocketAddr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::*;

type ClientBody = BoxBody<Bytes, Infallible>;

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
const ACCEPT_JSON: (&str, &str) = ("accept", "application/json");

/// An emulator serving on a loopback port.
struct Running {
    emulator: Emulator,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

/// A complete answer.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    /// The body as text (lossily), for assertions on pages and documents.
    body: String,
    /// The body's length in bytes.
    len: usize,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn start(config: EmulatorConfig) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let emulator = Emulator::new(config);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(emulator.clone().serve(listener, async {
        let _ = stopped.await;
    }));
    Running {
        emulator,
        addr,
        stop: Some(stop),
        task,
    }
}

async fn start_default() -> Running {
    start(EmulatorConfig::default()).await
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

fn empty_body() -> ClientBody {
    Empty::new().boxed()
}

fn body(bytes: impl Into<Bytes>) -> ClientBody {
    Full::new(bytes.into()).boxed()
}

impl Running {
    /// Send one request on a fresh connection.
    async fn send(&self, mut request: Request<ClientBody>) -> Response<Incoming> {
        let host = self.addr.to_string();
        request
            .headers_mut()
            .entry("host")
            .or_insert(host.parse().unwrap());
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    }

    /// Send a request and read the whole answer.
    async fn fetch(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        request_body: ClientBody,
    ) -> Reply {
        let mut builder = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = self.send(builder.body(request_body).unwrap()).await;
        let (parts, incoming) = response.into_parts();
        let bytes = incoming.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            len: bytes.len(),
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.fetch(Method::GET, path, headers, empty_body()).await
    }

    /// POST `request_body` to `path`.
    async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        request_body: impl Into<Bytes>,
    ) -> Reply {
        self.fetch(Method::POST, path, headers, body(request_body))
            .await
    }

    /// POST the form `form` to `path` in the session `cookie`.
    async fn post_form(&self, path: &str, cookie: &str, form: impl Into<Bytes>) -> Reply {
        self.post(path, &[FORM, ("cookie", cookie)], form).await
    }

    /// `/aspera/faspex/me` with HTTP Basic credentials (the check the gateway runs for an API
    /// caller), and the `more` headers after them.
    async fn me(&self, user: &str, password: &str, more: &[(&str, &str)]) -> Reply {
        let auth = basic(user, password);
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend_from_slice(more);
        self.get("/aspera/faspex/me", &headers).await
    }

    /// Whether the emulator has recorded `event`.
    fn recorded(&self, event: &EmulatorEvent) -> bool {
        self.emulator.events().contains(event)
    }

    async fn login(&self, user: &str, password: &str) -> Reply {
        let form = format!("utf8=%E2%9C%93&authenticity_token=abc%3D&user%5Bname%5D={user}&user%5Bpassword%5D={password}&commit=Login");
        self.post("/aspera/faspex/login", &[FORM], form).await
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(std::time::Duration::from_secs(10), self.task)
            .await
            .expect("the emulator stops after its shutdown signal");
        result.unwrap().unwrap();
    }
}

#[tokio::test]
async fn login_page_has_the_rails_form() {
    let emu = start_default().await;
    for path in [
        "/aspera/faspex/login",
        "/aspera/faspex/login/new",
        "/aspera/faspex/login?local=true",
    ] {
        let reply = emu.get(path, &[("accept", "text/html")]).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.header("x-ibm-aspera"), "F4.4.1");
        assert!(reply.header("content-type").starts_with("text/html"));
        for needle in [
            "action=\"/aspera/faspex/login\"",
            "method=\"post\"",
            "name=\"user[name]\"",
            "name=\"user[password]\"",
            "name=\"authenticity_token\"",
        ] {
            assert!(reply.body.contains(needle), "{needle} missing on {path}");
        }
    }
    // The root sends a visitor without a session to the login page.
    let reply = emu.get("/aspera/faspex/", &[("accept", "text/html")]).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(
        reply.header("location"),
        format!("http://{}/aspera/faspex/login", emu.addr)
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn login_success_sets_the_cookie_and_redirects_to_the_inbox() {
    let emu = start_default().await;
    let reply = emu.login("ann", "apple").await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(
        reply.header("location"),
        format!("http://{}/aspera/faspex/inbox", emu.addr)
    );
    let set_cookie = reply.header("set-cookie");
    assert!(set_cookie.starts_with("_faspex_session="), "{set_cookie}");
    assert!(set_cookie.ends_with("; path=/; HttpOnly"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    // The cookie opens the inbox, and the root now leads there.
    let inbox = emu
        .get(
            "/aspera/faspex/inbox",
            &[("cookie", &cookie), ("accept", "text/html")],
        )
        .await;
    assert_eq!(inbox.status, StatusCode::OK);
    assert!(inbox.body.contains("/aspera/faspex/received/4044"));
    assert!(inbox.body.contains("Logout"));
    let root = emu.get("/aspera/faspex", &[("cookie", &cookie)]).await;
    assert_eq!(root.status, StatusCode::FOUND);
    assert!(root.header("location").ends_with("/aspera/faspex/inbox"));

    assert!(emu.recorded(&EmulatorEvent::Login { user: "ann".into() }));
    emu.shutdown().await;
}

#[tokio::test]
async fn absolute_redirects_follow_the_forwarded_host_and_proto() {
    let emu = start_default().await;
    let form = "user%5Bname%5D=ANN&user%5Bpassword%5D=apple";
    let reply = emu
        .post(
            "/aspera/faspex/login",
            &[
                FORM,
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "faspex.example.org"),
            ],
            form,
        )
        .await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(
        reply.header("location"),
        "https://faspex.example.org/aspera/faspex/inbox"
    );
    // Usernames match whatever their case; the event names the account as configured.
    assert!(emu.recorded(&EmulatorEvent::Login { user: "ann".into() }));
    emu.shutdown().await;
}

#[tokio::test]
async fn failed_login_rerenders_the_form() {
    let emu = start_default().await;
    let reply = emu.login("ann", "wrong").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains(LOGIN_FAILED_TEXT));
    assert!(reply.body.contains("name=\"user[password]\""));
    assert!(reply.headers.get("set-cookie").is_none());
    assert!(emu.recorded(&EmulatorEvent::LoginRefused { user: "ann".into() }));
    emu.shutdown().await;
}

#[tokio::test]
async fn failed_login_can_redirect_back_to_the_login_page() {
    let emu = start(EmulatorConfig {
        login_failure: LoginFailureStyle::RedirectToLogin,
        ..EmulatorConfig::default()
    })
    .await;
    let reply = emu.login("nobody", "apple").await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(
        reply.header("location"),
        format!("http://{}/aspera/faspex/login", emu.addr)
    );
    assert!(reply.headers.get("set-cookie").is_none());
    assert!(emu.recorded(&EmulatorEvent::LoginRefused {
        user: "nobody".into()
    }));
    emu.shutdown().await;
}

#[tokio::test]
async fn refused_logins_fail_even_with_the_right_password() {
    let emu = start_default().await;
    emu.emulator.refuse_logins(true);
    let reply = emu.login("bob", "banana").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains(LOGIN_FAILED_TEXT));
    let api = emu.me("bob", "banana", &[]).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);

    emu.emulator.refuse_logins(false);
    assert_eq!(emu.login("bob", "banana").await.status, StatusCode::FOUND);
    let events = emu.emulator.events();
    assert!(events.contains(&EmulatorEvent::LoginRefused { user: "bob".into() }));
    assert!(events.contains(&EmulatorEvent::BasicAuth {
        user: "bob".into(),
        ok: false
    }));
    assert!(events.contains(&EmulatorEvent::Login { user: "bob".into() }));
    emu.shutdown().await;
}

#[tokio::test]
async fn logout_ends_the_session() {
    let emu = start_default().await;
    let login = emu.login("cat", "cherry").await;
    let cookie = login
        .header("set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    let reply = emu
        .get("/aspera/faspex/logout", &[("cookie", &cookie)])
        .await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert!(reply.header("location").ends_with("/aspera/faspex/login"));
    assert!(reply.header("set-cookie").starts_with("_faspex_session=;"));

    // The old cookie no longer opens anything: a browser goes back to the login page.
    let after = emu
        .get(
            "/aspera/faspex/inbox",
            &[("cookie", &cookie), ("accept", "text/html")],
        )
        .await;
    assert_eq!(after.status, StatusCode::FOUND);
    assert!(after.header("location").ends_with("/aspera/faspex/login"));

    // A second logout knows nobody.
    emu.get("/aspera/faspex/logout", &[("cookie", &cookie)])
        .await;
    let logouts: Vec<_> = emu
        .emulator
        .events()
        .into_iter()
        .filter(|e| matches!(e, EmulatorEvent::Logout { .. }))
        .collect();
    assert_eq!(
        logouts,
        [
            EmulatorEvent::Logout {
                user: Some("cat".into())
            },
            EmulatorEvent::Logout { user: None }
        ]
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn requests_without_credentials_get_401_or_the_login_page() {
    let emu = start_default().await;
    // An API client: 401 with the Basic challenge.
    let reply = emu
        .get(
            "/aspera/faspex/received/4044",
            &[("accept", "application/xml")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.header("www-authenticate"), "Basic realm=\"Faspex\"");
    assert_eq!(reply.header("x-ibm-aspera"), "F4.4.1");
    // Wrong credentials too, and the check is recorded.
    let reply = emu.me("ann", "pear", &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(emu.recorded(&EmulatorEvent::BasicAuth {
        user: "ann".into(),
        ok: false
    }));
    // A browser is sent to the login page instead, never challenged.
    let reply = emu
        .get(
            "/aspera/faspex/inbox",
            &[("accept", "text/html,application/xhtml+xml")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert!(reply.headers.get("www-authenticate").is_none());
    // Malformed Basic credentials are a 400.
    let reply = emu
        .get("/aspera/faspex/me", &[("authorization", "Basic %%%")])
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    emu.shutdown().await;
}

#[tokio::test]
async fn basic_xml_received_entry_carries_the_faspe_link() {
    let emu = start_default().await;
    let auth = basic("ann", "apple");
    let reply = emu
        .get(
            "/aspera/faspex/received/4045",
            &[("authorization", &auth), ("accept", "application/xml")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.header("content-type").starts_with("application/xml"));
    assert!(reply.body.starts_with("<?xml"));
    assert!(reply
        .body
        .contains("<entry xmlns=\"http://www.w3.org/2005/Atom\">"));
    let link = reply
        .body
        .split("<link rel=\"package\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a package link");
    assert!(
        link.starts_with("faspe://127.0.0.1/Microscopy%20run%2017%20-%20002de384-"),
        "{link}"
    );
    for part in [
        "?cookie=aspera.faspex20:d:176cc5df-2df8-4c09-ae93-2b39f3e0ed7b:YW5u:",
        "&amp;port=33001&amp;",
        "&amp;httpport=443&amp;",
        "&amp;v=2",
    ] {
        assert!(link.contains(part), "{part} missing from {link}");
    }
    assert!(reply
        .body
        .contains("<recipient_delivery_id>4045</recipient_delivery_id>"));
    assert!(emu.recorded(&EmulatorEvent::BasicAuth {
        user: "ann".into(),
        ok: true
    }));

    // The same URL is HTML for a browser, the sent view works too, and unknown ids are 404s.
    let page = emu
        .get("/aspera/faspex/received/4045", &[("authorization", &auth)])
        .await;
    assert!(page.header("content-type").starts_with("text/html"));
    assert!(page
        .body
        .contains("/aspera/http-gwy/v1/download/4045?token=ATM2_AC"));
    let sent = emu
        .get(
            "/aspera/faspex/sent/4044",
            &[("authorization", &auth), ("accept", "application/xml")],
        )
        .await;
    assert_eq!(sent.status, StatusCode::OK);
    for path in [
        "/aspera/faspex/received/9999",
        "/aspera/faspex/received/abc",
    ] {
        let missing = emu
            .get(
                path,
                &[("authorization", &auth), ("accept", "application/xml")],
            )
            .await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{path}");
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn atom_feeds_page_through_the_mailbox() {
    let emu = start_default().await;
    let auth = basic("bob", "banana");
    let headers = [
        ("authorization", auth.as_str()),
        ("accept", "application/xml"),
    ];
    let all = emu.get("/aspera/faspex/inbox.atom", &headers).await;
    assert_eq!(all.status, StatusCode::OK);
    assert!(all
        .header("content-type")
        .starts_with("application/atom+xml"));
    assert_eq!(all.body.matches("<entry>").count(), 3);
    assert!(all
        .body
        .contains("<opensearch:totalResults>3</opensearch:totalResults>"));
    assert!(!all.body.contains("rel=\"next\""));

    let first = emu.get("/aspera/faspex/inbox.atom?count=2", &headers).await;
    assert_eq!(first.body.matches("<entry>").count(), 2);
    assert!(first.body.contains("inbox.atom?page=2&amp;count=2\""));
    // Newest first: the big package leads.
    assert!(
        first.body.find("<delivery_id>4046").unwrap()
            < first.body.find("<delivery_id>4045").unwrap()
    );
    let second = emu
        .get("/aspera/faspex/inbox.atom?count=2&page=2", &headers)
        .await;
    assert_eq!(second.body.matches("<entry>").count(), 1);
    assert!(second.body.contains("<delivery_id>4044</delivery_id>"));
    let indexed = emu
        .get("/aspera/faspex/sent.atom?startIndex=1&count=1", &headers)
        .await;
    assert!(indexed.body.contains("<delivery_id>4045</delivery_id>"));
    assert!(indexed
        .body
        .contains("sent.atom?startIndex=2&amp;count=1\""));
    assert_eq!(
        emu.get("/aspera/faspex/archive.atom", &headers)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        emu.get("/aspera/faspex/inbox.atom?count=x", &headers)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn json_documents_answer_basic_clients() {
    let emu = start_default().await;
    let auth = basic("dan", "damson");
    let headers = [("authorization", auth.as_str()), ACCEPT_JSON];
    let me = emu.get("/aspera/faspex/me", &headers).await;
    let me: serde_json::Value = serde_json::from_str(&me.body).unwrap();
    assert_eq!(me["name"], "dan");
    let dropboxes = emu.get("/aspera/faspex/dropboxes", &headers).await;
    let dropboxes: serde_json::Value = serde_json::from_str(&dropboxes.body).unwrap();
    assert!(dropboxes["items"]
        .as_array()
        .is_some_and(|items| !items.is_empty()));
    let book = emu
        .get("/aspera/faspex/address-book?format=json", &headers)
        .await;
    let book: serde_json::Value = serde_json::from_str(&book.body).unwrap();
    assert_eq!(book["totalResults"], 5);
    assert_eq!(book["entry"][0]["emails"][0]["primary"], "true");
    emu.shutdown().await;
}

#[tokio::test]
async fn issue_token_returns_a_plain_text_transfer_token() {
    let emu = start_default().await;
    let auth = basic("ann", "apple");
    let payload = r#"<?xml version="1.0" encoding="UTF-8"?><url-list xmlns="http://schemas.asperasoft.com/xml/url-list"><url href="faspe://127.0.0.1/x?cookie=a&amp;port=33001"/></url-list>"#;
    let reply = emu
        .post(
            "/aspera/faspex/issue-token?direction=down",
            &[
                ("authorization", &auth),
                ("content-type", "application/vnd.aspera.url-list+xml"),
                ("accept", "text/plain"),
            ],
            payload,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.header("content-type").starts_with("text/plain"));
    assert!(reply.body.starts_with("ATM2_AC"), "{}", reply.body);
    assert!(reply.body.len() > 60);

    let wrong_type = emu
        .post(
            "/aspera/faspex/issue-token?direction=down",
            &[("authorization", &auth), ("content-type", "text/plain")],
            payload,
        )
        .await;
    assert_eq!(wrong_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let no_direction = emu
        .post(
            "/aspera/faspex/issue-token",
            &[
                ("authorization", &auth),
                ("content-type", "application/vnd.aspera.url-list+xml"),
            ],
            payload,
        )
        .await;
    assert_eq!(no_direction.status, StatusCode::BAD_REQUEST);
    let anonymous = emu
        .post(
            "/aspera/faspex/issue-token?direction=down",
            &[("content-type", "application/vnd.aspera.url-list+xml")],
            payload,
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    emu.shutdown().await;
}

#[tokio::test]
async fn send_returns_a_transfer_spec_or_a_200_error() {
    let emu = start_default().await;
    let auth = basic("eve", "elderberry");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ACCEPT_JSON,
    ];
    let good =
        r#"{"delivery":{"title":"Results","recipients":["ann"],"sources":[{"paths":["a.txt"]}]}}"#;
    let reply = emu.post("/aspera/faspex/send", &headers, good).await;
    assert_eq!(reply.status, StatusCode::OK);
    let spec: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(spec["xfer_sessions"][0]["direction"], "send");
    assert!(spec["xfer_sessions"][0]["token"]
        .as_str()
        .unwrap()
        .starts_with("ATM2_AC"));

    for bad in [
        "not json",
        r#"{"nothing":1}"#,
        r#"{"delivery":{"title":"x","recipients":[]}}"#,
    ] {
        let reply = emu.post("/aspera/faspex/send", &headers, bad).await;
        assert_eq!(reply.status, StatusCode::OK, "{bad}");
        let error: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert!(
            error["error"]["user_message"].is_string(),
            "{bad}: {}",
            reply.body
        );
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn oauth2_tokens_open_the_api() {
    let emu = start_default().await;
    let reply = emu
        .post(
            "/aspera/faspex/auth/oauth2/token",
            &[("authorization", &basic("ann", "apple")), FORM],
            "grant_type=password&scope=admin",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let token: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(token["token_type"], "bearer");
    assert!(token["expires_in"].as_u64().is_some());
    let access = token["access_token"].as_str().unwrap();

    let me = emu
        .get(
            "/aspera/faspex/api/v1/me",
            &[("authorization", &format!("Bearer {access}"))],
        )
        .await;
    assert_eq!(me.status, StatusCode::OK);
    let me: serde_json::Value = serde_json::from_str(&me.body).unwrap();
    assert_eq!(me["name"], "ann");

    let unknown = emu
        .get(
            "/aspera/faspex/api/v1/me",
            &[("authorization", "Bearer nope")],
        )
        .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    let wrong_password = emu
        .post(
            "/aspera/faspex/auth/oauth2/token",
            &[("authorization", &basic("ann", "pear")), FORM],
            "grant_type=password",
        )
        .await;
    assert_eq!(wrong_password.status, StatusCode::UNAUTHORIZED);
    emu.shutdown().await;
}

#[tokio::test]
async fn external_delivery_needs_the_right_passcode() {
    let emu = start_default().await;
    let good = format!(
        "/aspera/faspex/external_deliveries/{EXTERNAL_DELIVERY_ID}?passcode={EXTERNAL_DELIVERY_PASSCODE}"
    );
    let xml = emu.get(&good, &[("accept", "application/xml")]).await;
    assert_eq!(xml.status, StatusCode::OK);
    assert!(xml.body.contains("<link rel=\"package\" href=\"faspe://"));
    // Outside recipients find their token in the link.
    assert!(xml.body.contains("&amp;token=ATM2_AC"));
    let page = emu
        .get(
            &format!("{good}&expiration=2030-01-01"),
            &[("accept", "text/html")],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Microscopy run 17"));

    let wrong = format!(
        "/aspera/faspex/external_deliveries/{EXTERNAL_DELIVERY_ID}?passcode={}",
        "0".repeat(40)
    );
    assert_eq!(emu.get(&wrong, &[]).await.status, StatusCode::FORBIDDEN);
    let missing = format!("/aspera/faspex/external_deliveries/{EXTERNAL_DELIVERY_ID}");
    assert_eq!(emu.get(&missing, &[]).await.status, StatusCode::FORBIDDEN);
    let unknown =
        format!("/aspera/faspex/external_deliveries/1?passcode={EXTERNAL_DELIVERY_PASSCODE}");
    assert_eq!(emu.get(&unknown, &[]).await.status, StatusCode::NOT_FOUND);
    emu.shutdown().await;
}

#[tokio::test]
async fn invitations_and_dropboxes_take_uploads_of_any_size() {
    let emu = start_default().await;
    for (form, post, passcode) in [
        (
            "/aspera/faspex/external/submissions/new",
            "/aspera/faspex/external/submissions",
            INVITATION_PASSCODE,
        ),
        (
            "/aspera/faspex/external/dropbox_submissions/new",
            "/aspera/faspex/external/dropbox_submissions",
            DROPBOX_PASSCODE,
        ),
    ] {
        for key in ["passcode", "token"] {
            let reply = emu.get(&format!("{form}?{key}={passcode}"), &[]).await;
            assert_eq!(reply.status, StatusCode::OK, "{form} {key}");
            assert!(reply.body.contains(&format!("action=\"{post}\"")));
        }
        let wrong = emu
            .get(&format!("{form}?passcode={}", "1".repeat(40)), &[])
            .await;
        assert_eq!(wrong.status, StatusCode::NOT_FOUND);

        let size = 3 * 1024 * 1024 + 17;
        let reply = emu
            .post(
                post,
                &[("content-type", "multipart/form-data; boundary=x")],
                vec![b'x'; size],
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            reply.body.contains(&format!(">{size}</span> bytes")),
            "{}",
            reply.body
        );
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn a_100_mib_download_streams_the_pattern_with_its_length() {
    let emu = start_default().await;
    let len: u64 = 100 << 20;
    let request = Request::get(format!(
        "/aspera/http-gwy/v1/download/{BIG_PACKAGE_ID}?bytes={len}&token=ATM2_ACtest"
    ))
    .body(empty_body())
    .unwrap();
    let response = emu.send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-length"],
        len.to_string().as_str()
    );
    assert_eq!(response.headers()["x-ibm-aspera"], "F4.4.1");
    let mut incoming = response.into_body();
    let mut offset = 0u64;
    while let Some(frame) = incoming.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            for (i, byte) in data.iter().enumerate() {
                assert_eq!(
                    *byte,
                    pattern_byte(offset + i as u64),
                    "at offset {}",
                    offset + i as u64
                );
            }
            offset += data.len() as u64;
        }
    }
    assert_eq!(offset, len);
    emu.shutdown().await;
}

#[tokio::test]
async fn downloads_default_to_the_package_size_and_need_a_token() {
    let emu = start(EmulatorConfig {
        big_package_bytes: 3 * 1024 * 1024 + 5,
        ..EmulatorConfig::default()
    })
    .await;
    let path = format!("/aspera/http-gwy/v1/download/{BIG_PACKAGE_ID}");
    let reply = emu
        .get(&path, &[("authorization", "Bearer ATM2_ACtest")])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("content-length"),
        (3 * 1024 * 1024 + 5).to_string()
    );
    assert_eq!(reply.len, 3 * 1024 * 1024 + 5);
    assert_eq!(emu.get(&path, &[]).await.status, StatusCode::UNAUTHORIZED);
    let unknown = emu.get("/aspera/http-gwy/v1/download/1?token=t", &[]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let bad = emu.get(&format!("{path}?token=t&bytes=lots"), &[]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let empty = emu.get(&format!("{path}?token=t&bytes=0"), &[]).await;
    assert_eq!((empty.status, empty.len), (StatusCode::OK, 0));
    emu.shutdown().await;
}

#[tokio::test]
async fn a_streamed_upload_is_counted() {
    let emu = start_default().await;
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let chunks = 160; // 10 MiB, sent chunked: no Content-Length
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
    );
    let request = Request::post("/aspera/http-gwy/v1/upload?token=ATM2_ACtest")
        .header("content-type", "application/octet-stream")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap();
    let response = emu.send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let reply = response.into_body().collect().await.unwrap().to_bytes();
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["bytes"], 160 * 64 * 1024);
    emu.shutdown().await;
}

#[tokio::test]
async fn the_websocket_echoes_and_closes() {
    let emu = start_default().await;
    let url = format!(
        "ws://{}/aspera/http-gwy/v2/upload?token=ATM2_ACtest",
        emu.addr
    );
    let stream = TcpStream::connect(emu.addr).await.unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()["x-ibm-aspera"], "F4.4.1");

    socket
        .send(Message::Text("hello faspex".into()))
        .await
        .unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::Text("hello faspex".into())
    );
    let binary: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
    socket.send(Message::Binary(binary.clone())).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::Binary(binary)
    );

    socket.close(None).await.unwrap();
    // The server answers the close (or simply ends the stream); it sends nothing else.
    match socket.next().await {
        Some(Ok(Message::Close(_)) | Err(_)) | None => {}
        Some(Ok(other)) => panic!("unexpected {other:?} after close"),
    }

    // Without a token the handshake is refused.
    let stream = TcpStream::connect(emu.addr).await.unwrap();
    let url = format!("ws://{}/aspera/http-gwy/v2/upload", emu.addr);
    assert!(tokio_tungstenite::client_async(url, stream).await.is_err());
    // A plain GET is not an upgrade.
    let plain = emu.get("/aspera/http-gwy/v2/upload?token=t", &[]).await;
    assert_eq!(plain.status, StatusCode::BAD_REQUEST);
    emu.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_open_websockets_as_going_away() {
    let emu = start_default().await;
    let url = format!("ws://{}/aspera/http-gwy/v2/upload?token=t", emu.addr);
    let stream = TcpStream::connect(emu.addr).await.unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    emu.shutdown().await;
    match socket.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn assets_unknown_paths_and_events() {
    let emu = start_default().await;
    let css = emu
        .get("/aspera/faspex/stylesheets/application.css", &[])
        .await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(css.header("content-type").starts_with("text/css"));
    let js = emu
        .get("/aspera/faspex/javascripts/application.js", &[])
        .await;
    assert!(js
        .header("content-type")
        .starts_with("application/javascript"));
    let logo = emu.get("/aspera/faspex/images/aspera_logo.svg", &[]).await;
    assert_eq!(logo.status, StatusCode::OK);
    for path in [
        "/aspera/faspex/images/missing.png",
        "/aspera/faspex/nowhere",
        "/aspera/faspexnot",
        "/elsewhere",
        "/aspera/http-gwy/v9/x",
    ] {
        let reply = emu
            .get(path, &[("authorization", &basic("ann", "apple"))])
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.header("x-ibm-aspera"), "F4.4.1", "{path}");
    }
    let relay = emu
        .post("/aspera/faspex/package_relay/relay_package", &[], "x")
        .await;
    assert_eq!(relay.status, StatusCode::NOT_FOUND);
    let events = emu.emulator.events();
    assert_eq!(
        events.first(),
        Some(&EmulatorEvent::Request {
            method: "GET".into(),
            path_and_query: "/aspera/faspex/stylesheets/application.css".into()
        })
    );
    assert!(events.contains(&EmulatorEvent::Request {
        method: "POST".into(),
        path_and_query: "/aspera/faspex/package_relay/relay_package".into()
    }));
    emu.shutdown().await;
}

#[tokio::test]
async fn the_service_answers_without_serve() {
    let emulator = Emulator::new(EmulatorConfig::default());
    let service = emulator.service();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::get("/aspera/faspex/login")
        .header("host", addr.to_string())
        .body(empty_body())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(emulator.events().len(), 1);
}

// ------------------------------------------------------------------------------------------------
// Rails' reading of a request (see `rails.rs`, and `tests/rails.rs` for the oracle behind it)

/// The administrator's form that creates the local account `visitor`, password `s3cret`.
const CREATE_VISITOR: &str = "user[login]=visitor&user[email]=v%40example.org&user[password]=s3cret&user[password_confirmation]=s3cret";

/// The `name=value` of a reply's `Set-Cookie`.
fn cookie_of(reply: &Reply) -> String {
    reply
        .header("set-cookie")
        .split(';')
        .next()
        .unwrap_or("")
        .to_owned()
}

fn attempts(emu: &Running) -> Vec<(String, bool, LoginVia)> {
    emu.emulator.login_attempts()
}

#[tokio::test]
async fn the_login_action_runs_for_every_method_and_spelling() {
    let emu = start_default().await;
    // A GET with the credentials in the query logs the user in, as a Rails 3 `match` does.
    let reply = emu
        .get(
            "/aspera/faspex/login?user[name]=ann&user[password]=apple",
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert!(reply.header("set-cookie").starts_with("_faspex_session="));
    // Format suffixes, slashes, escapes and `;` separators reach the same action.
    for path in [
        "/aspera/faspex/login.json/?user%5Bname%5D=bob;user%5Bpassword%5D=banana",
        "//aspera/faspex/login.x-y?user]name=bob&user[password=banana",
        "/aspera/faspex/%6cogin/?user[name]=bob&user[password]=banana",
        "/aspera/faspex/x/../login.a_b?user[name]=bob&user[password]=banana",
    ] {
        let reply = emu.fetch(Method::PUT, path, &[], empty_body()).await;
        assert_eq!(reply.status, StatusCode::FOUND, "{path}");
    }
    // Case matters, and a format holds no dot.
    for path in [
        "/aspera/faspex/Login",
        "/aspera/faspex/login.a.b",
        "/aspera/faspex/login.",
    ] {
        let reply = emu
            .get(&format!("{path}?user[name]=bob&user[password]=banana"), &[])
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
    }
    // A GET without credentials is the login page.
    let page = emu.get("/aspera/faspex/login.html", &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("name=\"user[password]\""));
    let ok: Vec<bool> = attempts(&emu).iter().map(|(_, ok, _)| *ok).collect();
    assert_eq!(ok, [true, true, true, true, true]);
    emu.shutdown().await;
}

#[tokio::test]
async fn login_bodies_are_read_as_rails_reads_them() {
    let emu = start_default().await;
    let multipart = "--XyZ\r\nContent-Disposition: form-data; name=\"user[name]\"\r\n\r\ncat\r\n\
                     --XyZ\r\nContent-Disposition: form-data; name=\"user[password]\"\r\n\r\ncherry\r\n--XyZ--\r\n";
    let cases: Vec<(&str, Option<&str>, String)> = vec![
        (
            "/aspera/faspex/login",
            Some("application/json"),
            r#"{"user": {"name": "cat", /* a comment */ "password": "cherry"}}"#.into(),
        ),
        (
            "/aspera/faspex/login",
            Some("multipart/form-data; boundary=XyZ"),
            multipart.into(),
        ),
        (
            "/aspera/faspex/login",
            Some("text/xml"),
            "<user><name>cat</name><password type=\"base64Binary\">Y2hlcnJ5</password></user>"
                .into(),
        ),
        // Rails 3's Rack split bodies on `;` too.
        (
            "/aspera/faspex/login",
            Some("application/x-www-form-urlencoded"),
            "user[name]=cat;user[password]=cherry".into(),
        ),
        // No Content-Type: a POST body is a form.
        (
            "/aspera/faspex/login",
            None,
            "user[name]=cat&user[password]=cherry".into(),
        ),
        // The body's password, under a query that does not name `user`.
        (
            "/aspera/faspex/login?commit=Login",
            Some("application/x-www-form-urlencoded"),
            "user[name]=cat&user[password]=cherry".into(),
        ),
    ];
    for (path, content_type, body_text) in cases {
        let headers: Vec<(&str, &str)> = content_type
            .map(|ct| ("content-type", ct))
            .into_iter()
            .collect();
        let reply = emu.post(path, &headers, body_text.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::FOUND,
            "{content_type:?} {body_text}"
        );
    }
    // The query replaces the body's whole `user`: its password is never read.
    let reply = emu
        .post(
            "/aspera/faspex/login?user[name]=cat",
            &[FORM],
            "user[name]=cat&user[password]=cherry",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains(LOGIN_FAILED_TEXT));
    // Malformed parameters are a 400 before any check; an array password is checked and fails.
    let bad = emu
        .post("/aspera/faspex/login", &[FORM], "user[password]=%")
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let array = emu
        .post(
            "/aspera/faspex/login",
            &[FORM],
            "user[name]=cat&user[password][]=cherry",
        )
        .await;
    assert_eq!(array.status, StatusCode::OK);
    let checked = attempts(&emu);
    assert_eq!(checked.len(), 8, "{checked:?}");
    assert_eq!(checked.iter().filter(|(_, ok, _)| *ok).count(), 6);
    assert!(checked
        .iter()
        .all(|(user, _, via)| user == "cat" && *via == LoginVia::Form));
    emu.shutdown().await;
}

#[tokio::test]
async fn unknown_methods_and_method_override() {
    let emu = start_default().await;
    let reply = emu
        .fetch(
            Method::from_bytes(b"FOO").unwrap(),
            "/aspera/faspex/login",
            &[],
            empty_body(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    // `_method=get` turns the POST to /send into the "New Package" page.
    let auth = basic("ann", "apple");
    let reply = emu
        .post(
            "/aspera/faspex/send",
            &[("authorization", &auth), FORM],
            "_method=get",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains("New Package"), "{}", reply.body);
    // X-HTTP-Method-Override does the same.
    let reply = emu
        .fetch(
            Method::POST,
            "/aspera/faspex/send",
            &[("authorization", &auth), ("x-http-method-override", "GET")],
            empty_body(),
        )
        .await;
    assert!(reply.body.contains("New Package"), "{}", reply.body);
    // A method the route does not take is Rails' routing error.
    let reply = emu
        .fetch(
            Method::PUT,
            "/aspera/faspex/send",
            &[("authorization", &auth)],
            empty_body(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    emu.shutdown().await;
}

#[tokio::test]
async fn oauth2_tokens_take_username_and_password_parameters() {
    let emu = start_default().await;
    let reply = emu
        .post(
            "/aspera/faspex/auth/oauth2/token.json/",
            &[FORM],
            "grant_type=password&username=dan&password=damson",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = emu
        .get(
            "/aspera/faspex/auth/oauth2/token?grant_type=password&username=dan&password=plum",
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        attempts(&emu),
        [
            ("dan".to_owned(), true, LoginVia::Token),
            ("dan".to_owned(), false, LoginVia::Token)
        ]
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn a_login_issues_a_fresh_session_and_the_account_page_rotates_it() {
    let emu = start_default().await;
    let first = cookie_of(&emu.login("ann", "apple").await);
    // Logging in again with the old cookie: a new value, and the old one ends (reset_session).
    let again = emu
        .post_form(
            "/aspera/faspex/login",
            &first,
            "user[name]=ann&user[password]=apple",
        )
        .await;
    let second = cookie_of(&again);
    assert_ne!(first, second);
    let browse = |cookie: String| {
        let emu = &emu;
        async move {
            emu.get(
                "/aspera/faspex/inbox",
                &[("cookie", &cookie), ("accept", "text/html")],
            )
            .await
            .status
        }
    };
    assert_eq!(browse(first.clone()).await, StatusCode::FOUND);
    assert_eq!(browse(second.clone()).await, StatusCode::OK);

    // The account page rotates the cookie; the old value works until the new one is used.
    let account = emu
        .get("/aspera/faspex/account", &[("cookie", &second)])
        .await;
    assert_eq!(account.status, StatusCode::OK);
    let third = cookie_of(&account);
    assert!(third.starts_with("_faspex_session="));
    assert_ne!(third, second);
    assert_eq!(emu.emulator.session_rotations(), 1);
    assert!(emu.emulator.events().iter().any(|e| matches!(
        e,
        EmulatorEvent::SessionRotated { user, .. } if user == "ann"
    )));
    assert_eq!(browse(second.clone()).await, StatusCode::OK);
    assert_eq!(browse(third.clone()).await, StatusCode::OK);
    assert_eq!(browse(second.clone()).await, StatusCode::FOUND);
    // Logout ends the session whatever value it holds.
    emu.get("/aspera/faspex/logout", &[("cookie", &third)])
        .await;
    assert_eq!(browse(third).await, StatusCode::FOUND);
    emu.shutdown().await;
}

#[tokio::test]
async fn sessions_rotate_every_n_requests_when_configured() {
    let emu = start(EmulatorConfig {
        rotate_session_every: Some(3),
        ..EmulatorConfig::default()
    })
    .await;
    let mut cookie = cookie_of(&emu.login("bob", "banana").await);
    let mut rotated = 0;
    for _ in 0..9 {
        let reply = emu.get("/aspera/faspex/me", &[("cookie", &cookie)]).await;
        assert_eq!(reply.status, StatusCode::OK);
        if reply.headers.contains_key("set-cookie") {
            rotated += 1;
            cookie = cookie_of(&reply);
        }
    }
    assert_eq!(rotated, 3);
    assert_eq!(emu.emulator.session_rotations(), 3);
    emu.shutdown().await;
}

#[tokio::test]
async fn an_administrator_creates_a_local_account_that_can_log_in_and_change_its_password() {
    let emu = start_default().await;
    // Without a session: the login page, nothing created.
    let reply = emu
        .post(
            "/aspera/faspex/admin/users",
            &[FORM, ("accept", "text/html")],
            CREATE_VISITOR,
        )
        .await;
    assert_eq!(reply.status, StatusCode::FOUND);
    // Only the configured collaborator so far.
    assert_eq!(emu.emulator.local_accounts(), ["extern.collab"]);

    let admin = cookie_of(&emu.login("ann", "apple").await);
    let reply = emu
        .post_form("/aspera/faspex/admin/users", &admin, CREATE_VISITOR)
        .await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.body);
    assert_eq!(emu.emulator.local_accounts(), ["extern.collab", "visitor"]);
    assert!(emu.recorded(&EmulatorEvent::LocalAccountCreated {
        by: "ann".into(),
        login: "visitor".into()
    }));
    // Taken logins and mismatched confirmations are refused.
    for bad in [
        CREATE_VISITOR.to_owned(),
        "user[login]=ANN&user[email]=a%40b&user[password]=x&user[password_confirmation]=x"
            .to_owned(),
        "user[login]=new&user[email]=a%40b&user[password]=x&user[password_confirmation]=y"
            .to_owned(),
    ] {
        let reply = emu
            .post_form("/aspera/faspex/admin/users", &admin, bad.clone())
            .await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }

    // The local account logs in (form and Basic); the directory never heard of it.
    let visitor = cookie_of(&emu.login("visitor", "s3cret").await);
    assert!(visitor.starts_with("_faspex_session="));
    let me = emu.me("visitor", "s3cret", &[]).await;
    assert_eq!(me.status, StatusCode::OK);

    // A wrong current password is refused (and was a guess that reached Faspex).
    let change = |current: &str| {
        format!("_method=put&user[current_password]={current}&user[password]=n3w&user[password_confirmation]=n3w")
    };
    let reply = emu
        .post_form("/aspera/faspex/account/password", &visitor, change("wrong"))
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(attempts(&emu).contains(&("visitor".into(), false, LoginVia::CurrentPassword)));
    // The right one changes it: the old password fails, the new one works.
    let reply = emu
        .post_form(
            "/aspera/faspex/account/password",
            &visitor,
            change("s3cret"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.body);
    assert!(emu.recorded(&EmulatorEvent::PasswordChanged {
        user: "visitor".into()
    }));
    assert_eq!(emu.login("visitor", "s3cret").await.status, StatusCode::OK);
    assert_eq!(emu.login("visitor", "n3w").await.status, StatusCode::FOUND);
    // A PUT works as the form's POST does; a directory user's password is the directory's.
    let reply = emu
        .fetch(
            Method::PUT,
            "/aspera/faspex/account/password",
            &[FORM, ("cookie", &admin)],
            body("user[current_password]=apple&user[password]=x&user[password_confirmation]=x"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.body.contains("directory"));
    // The edit form itself.
    let form = emu
        .get("/aspera/faspex/account/password", &[("cookie", &admin)])
        .await;
    assert!(form.body.contains("name=\"user[current_password]\""));
    emu.shutdown().await;
}

#[tokio::test]
async fn every_password_check_is_recorded() {
    let emu = start_default().await;
    emu.login("ann", "pear").await;
    emu.login("ann", "apple").await;
    emu.me("eve", "fig", &[]).await;
    emu.emulator.refuse_logins(true);
    emu.login("bob", "banana").await;
    assert_eq!(
        attempts(&emu),
        [
            ("ann".to_owned(), false, LoginVia::Form),
            ("ann".to_owned(), true, LoginVia::Form),
            ("eve".to_owned(), false, LoginVia::Basic),
            ("bob".to_owned(), false, LoginVia::Form),
        ]
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn feeds_and_entries_follow_the_format_suffix() {
    let emu = start_default().await;
    let auth = basic("ann", "apple");
    for path in [
        "/aspera/faspex/inbox.atom",
        "/aspera/faspex/inbox.xml/",
        "/aspera/faspex/inbox?format=atom",
    ] {
        let reply = emu.get(path, &[("authorization", &auth)]).await;
        assert!(
            reply
                .header("content-type")
                .starts_with("application/atom+xml"),
            "{path}"
        );
    }
    let page = emu
        .get("/aspera/faspex/inbox/", &[("authorization", &auth)])
        .await;
    assert!(page.header("content-type").starts_with("text/html"));
    let entry = emu
        .get(
            "/aspera/faspex/received/4044.xml",
            &[("authorization", &auth)],
        )
        .await;
    assert!(entry.body.starts_with("<?xml"), "{}", entry.body);
    let odd = emu
        .get(
            "/aspera/faspex/received/4044.pdf",
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(odd.status, StatusCode::NOT_ACCEPTABLE);
    emu.shutdown().await;
}

#[test]
fn logins_fold_as_mysql_compares_them() {
    // Case, accents and trailing spaces do not matter, as in MySQL's utf8_general_ci.
    for spelling in ["José", "jose", "JOSE ", "Jose\u{301}", "JOSÉ   ", "jôsè"] {
        assert_eq!(fold_login(spelling), "jose", "{spelling:?}");
    }
    // Compatibility forms fold too (NFKD): full-width letters.
    assert_eq!(fold_login("ＡＮＮ"), "ann");
    // A leading space, an inner space, another letter: other accounts.
    for other in [" jose", "jo se", "josef", "jose\t", "jos"] {
        assert_ne!(fold_login(other), "jose", "{other:?}");
    }
}

/// A config with one directory user (`ann`/`apple`) and the given local users.
fn with_locals(local: &[(&str, &str)]) -> EmulatorConfig {
    EmulatorConfig {
        users: vec![("ann".into(), "apple".into())],
        local_users: local
            .iter()
            .map(|(u, p)| ((*u).to_owned(), (*p).to_owned()))
            .collect(),
        ..EmulatorConfig::default()
    }
}

#[tokio::test]
async fn the_default_config_has_one_local_collaborator() {
    let config = EmulatorConfig::default();
    assert_eq!(
        config.local_users,
        [("extern.collab".to_owned(), "collab-pass".to_owned())]
    );
    assert_eq!(config.faspex_lockout, None);
    assert!(!config.prevent_concurrent_login);
    let emu = start(config).await;
    assert_eq!(emu.emulator.local_accounts(), ["extern.collab"]);
    let reply = emu.login("extern.collab", "collab-pass").await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert!(reply.header("location").ends_with("/aspera/faspex/inbox"));
    assert!(emu.recorded(&EmulatorEvent::Login {
        user: "extern.collab".into()
    }));
    emu.shutdown().await;
}

#[tokio::test]
async fn local_users_log_in_by_form_and_basic_matched_as_mysql_matches() {
    let emu = start(with_locals(&[("José", "Secret-1")])).await;
    // The form: any case, no accent, trailing spaces; the password exactly.
    for name in ["Jos%C3%A9", "jose", "JOSE+", "JOSE%20%20"] {
        let reply = emu.login(name, "Secret-1").await;
        assert_eq!(reply.status, StatusCode::FOUND, "{name}");
        assert!(reply.header("set-cookie").starts_with("_faspex_session="));
    }
    let reply = emu.login("jose", "secret-1").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains(LOGIN_FAILED_TEXT));
    // A leading space is another name.
    assert_eq!(emu.login("+jose", "Secret-1").await.status, StatusCode::OK);
    // Sessions and events name the account as configured.
    let logins = emu
        .emulator
        .events()
        .iter()
        .filter(|e| {
            **e == EmulatorEvent::Login {
                user: "José".into(),
            }
        })
        .count();
    assert_eq!(logins, 4);
    // HTTP Basic on /me, the check the gateway runs for a local account.
    let me = emu.me("JOSE ", "Secret-1", &[ACCEPT_JSON]).await;
    assert_eq!(me.status, StatusCode::OK);
    assert!(me.header("content-type").starts_with("application/json"));
    let doc: serde_json::Value = serde_json::from_str(&me.body).unwrap();
    assert_eq!(doc["name"], "José");
    emu.shutdown().await;
}

#[tokio::test]
async fn basic_checks_on_me_answer_200_or_401_and_each_is_one_recorded_guess() {
    let emu = start(with_locals(&[("extern.collab", "collab-pass")])).await;
    // A local account made at run time by an administrator.
    let admin = cookie_of(&emu.login("ann", "apple").await);
    let reply = emu
        .post_form("/aspera/faspex/admin/users", &admin, CREATE_VISITOR)
        .await;
    assert_eq!(reply.status, StatusCode::FOUND);
    let before = attempts(&emu).len();

    for (user, password) in [
        ("ann", "apple"),
        ("extern.collab", "collab-pass"),
        ("visitor", "s3cret"),
    ] {
        let reply = emu.me(user, password, &[ACCEPT_JSON]).await;
        assert_eq!(reply.status, StatusCode::OK, "{user}");
        assert!(
            reply.header("content-type").starts_with("application/json"),
            "{user}"
        );
        assert!(
            reply.body.contains(&format!("\"name\":\"{user}\"")),
            "{}",
            reply.body
        );
    }
    for (user, password) in [
        ("ann", "pear"),
        ("extern.collab", "wrong"),
        ("visitor", "S3CRET"),
        ("nobody", "s3cret"),
    ] {
        let reply = emu.me(user, password, &[ACCEPT_JSON]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{user}");
        assert_eq!(reply.header("www-authenticate"), "Basic realm=\"Faspex\"");
    }
    // One guess per check, recorded as Basic; and a wrong form password as Form.
    emu.login("extern.collab", "nope").await;
    assert_eq!(
        attempts(&emu)[before..],
        [
            ("ann".to_owned(), true, LoginVia::Basic),
            ("extern.collab".to_owned(), true, LoginVia::Basic),
            ("visitor".to_owned(), true, LoginVia::Basic),
            ("ann".to_owned(), false, LoginVia::Basic),
            ("extern.collab".to_owned(), false, LoginVia::Basic),
            ("visitor".to_owned(), false, LoginVia::Basic),
            ("nobody".to_owned(), false, LoginVia::Basic),
            ("extern.collab".to_owned(), false, LoginVia::Form),
        ]
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn a_name_in_the_directory_and_local_is_the_directory_s() {
    // `ann` is local too, with another password: the directory account answers.
    let emu = start(with_locals(&[("ANN", "local-pass")])).await;
    assert_eq!(emu.login("ann", "apple").await.status, StatusCode::FOUND);
    assert_eq!(emu.login("ann", "local-pass").await.status, StatusCode::OK);
    emu.shutdown().await;
}

#[tokio::test]
async fn faspex_s_own_lockout_locks_after_n_wrong_passwords_until_an_admin_unlocks() {
    let emu = start(EmulatorConfig {
        faspex_lockout: Some(3),
        ..with_locals(&[("extern.collab", "collab-pass")])
    })
    .await;
    let session = cookie_of(&emu.login("extern.collab", "collab-pass").await);
    // Two wrong, then the right one: the count starts again.
    emu.login("extern.collab", "x1").await;
    emu.login("EXTERN.COLLAB", "x2").await;
    assert_eq!(
        emu.login("extern.collab", "collab-pass").await.status,
        StatusCode::FOUND
    );
    assert!(emu.emulator.faspex_locked_accounts().is_empty());
    // Three in a row, by form and Basic alike, lock it.
    emu.login("extern.collab", "x3").await;
    emu.me("extern.collab", "x4", &[]).await;
    assert!(emu.emulator.faspex_locked_accounts().is_empty());
    let reply = emu.login("Extern.Collab ", "x5").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains(ACCOUNT_LOCKED_TEXT));
    assert_eq!(emu.emulator.faspex_locked_accounts(), ["extern.collab"]);
    let events = emu.emulator.events();
    let lock = events
        .iter()
        .position(|e| {
            *e == EmulatorEvent::FaspexAccountLocked {
                user: "extern.collab".into(),
            }
        })
        .expect("the lock is recorded");
    assert_eq!(
        events[lock - 1],
        EmulatorEvent::LoginAttempt {
            user: "Extern.Collab ".into(),
            ok: false,
            via: LoginVia::Form
        }
    );
    // Now even the right password is refused, by form and Basic; a live session keeps working.
    let reply = emu.login("extern.collab", "collab-pass").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains(ACCOUNT_LOCKED_TEXT));
    let me = emu.me("extern.collab", "collab-pass", &[]).await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
    let inbox = emu
        .get("/aspera/faspex/inbox", &[("cookie", &session)])
        .await;
    assert_eq!(inbox.status, StatusCode::OK);
    // Unknown names never lock anything; other accounts are not affected.
    for _ in 0..5 {
        emu.login("nobody", "x").await;
    }
    assert_eq!(emu.emulator.faspex_locked_accounts(), ["extern.collab"]);
    assert_eq!(emu.login("ann", "apple").await.status, StatusCode::FOUND);
    // The administrator's unlock, by any spelling, lifts it and the count.
    assert!(emu.emulator.unlock_faspex_account("EXTERN.COLLAB"));
    assert!(!emu.emulator.unlock_faspex_account("extern.collab"));
    assert!(emu.recorded(&EmulatorEvent::FaspexAccountUnlocked {
        user: "extern.collab".into()
    }));
    assert_eq!(
        emu.login("extern.collab", "collab-pass").await.status,
        StatusCode::FOUND
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn faspex_s_own_lockout_is_off_by_default() {
    let emu = start(with_locals(&[("extern.collab", "collab-pass")])).await;
    for i in 0..50 {
        emu.login("extern.collab", &format!("wrong{i}")).await;
    }
    assert!(emu.emulator.faspex_locked_accounts().is_empty());
    assert_eq!(
        emu.login("extern.collab", "collab-pass").await.status,
        StatusCode::FOUND
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn prevent_concurrent_login_refuses_a_second_session_until_the_first_logs_out() {
    let emu = start(EmulatorConfig {
        prevent_concurrent_login: true,
        rotate_session_every: Some(1),
        ..with_locals(&[("extern.collab", "collab-pass")])
    })
    .await;
    let first = cookie_of(&emu.login("extern.collab", "collab-pass").await);
    // The session is used and rotated: its new value is still the same client's.
    let inbox = emu.get("/aspera/faspex/inbox", &[("cookie", &first)]).await;
    assert_eq!(inbox.status, StatusCode::OK);
    let rotated = cookie_of(&inbox);
    assert!(rotated.starts_with("_faspex_session="), "rotated");

    // Another client, the right password: refused, and the refusal is recorded.
    let reply = emu.login("EXTERN.COLLAB", "collab-pass").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains(CONCURRENT_LOGIN_TEXT));
    assert!(reply.headers.get("set-cookie").is_none());
    let events = emu.emulator.events();
    assert!(events.contains(&EmulatorEvent::ConcurrentLoginRefused {
        user: "extern.collab".into()
    }));
    assert_eq!(
        attempts(&emu).last().unwrap(),
        &("EXTERN.COLLAB".to_owned(), false, LoginVia::Form)
    );
    // Basic opens no session: not affected. Another account is not affected either.
    let me = emu.me("extern.collab", "collab-pass", &[]).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(emu.login("ann", "apple").await.status, StatusCode::FOUND);

    // The same client logging in again (its own cookie, any value of it) is not another one.
    let form = "user%5Bname%5D=extern.collab&user%5Bpassword%5D=collab-pass";
    let again = emu.post_form("/aspera/faspex/login", &first, form).await;
    assert_eq!(again.status, StatusCode::FOUND);
    let second = cookie_of(&again);

    // Once that session logs out, another client may log in.
    assert_eq!(
        emu.login("extern.collab", "collab-pass").await.status,
        StatusCode::OK
    );
    emu.get("/aspera/faspex/logout", &[("cookie", &second)])
        .await;
    assert_eq!(
        emu.login("extern.collab", "collab-pass").await.status,
        StatusCode::FOUND
    );
    emu.shutdown().await;
}
