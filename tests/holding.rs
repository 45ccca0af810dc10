//! What one address, or anonymous traffic as a whole, may hold (issue 19): public requests
//! still arriving per address, connections to Faspex (with a reserve for sessions), a stalled
//! public body that holds no connection to Faspex, and a session's tunnels and downloads that
//! end when the gateway ends the session.

use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::flows::eventually;
use crate::ops::{admin_req, scrape, value};
use crate::util::*;

const TOKEN: &str = "holding-admin-token-0123456789";

/// A gateway in front of the test upstream: `/slow`, `/sink` and `/never` public, everything
/// else protected, one user (`alice`/`wonderland`) in the users file, the admin listener on.
async fn setup(tweak: impl FnOnce(&mut ConfigBuilder)) -> (TestUpstream, GatewayProcess) {
    let upstream = TestUpstream::start().await;
    let files = TestFiles::new();
    std::fs::write(
        files.path("users.toml"),
        format!(
            "[users.alice]\nhash = \"{}\"\n",
            faspex_gate::auth::password::hash("wonderland").unwrap()
        ),
    )
    .unwrap();
    write_private(&files.path("admin-token"), TOKEN.as_bytes());
    let mut cfg = ConfigBuilder::new(&files, &upstream.url());
    cfg.set("faspex", "public_paths", r#"["/slow", "/sink", "/never"]"#);
    cfg.set("policy", "public_requests_per_ip_per_minute", "1000000");
    cfg.admin("127.0.0.1:0", &files.path("admin-token"));
    tweak(&mut cfg);
    let gw = tokio::task::block_in_place(|| GatewayProcess::start(files, &cfg));
    (upstream, gw)
}

fn basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:wonderland")
    )
}

fn refused(metrics: &str, reason: &str) -> f64 {
    value(
        metrics,
        &format!("faspex_gate_requests_refused_total{{reason=\"{reason}\"}}"),
    )
}

/// Open a TLS connection and send the head of a public upload that declares `declared` bytes and
/// sends `sent` of them, then stalls.
async fn stalled_upload(
    gw: &GatewayProcess,
    declared: usize,
    sent: usize,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut s = raw_tls(gw.https.unwrap(), &gw.files.cert_pem).await;
    let head = format!(
        "POST /sink HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {declared}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b'x'; sent]).await.unwrap();
    s.flush().await.unwrap();
    s
}

/// Read what has arrived on `s` within `within`, as text.
async fn arrived(
    s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    within: Duration,
) -> String {
    let mut out = vec![0u8; 4096];
    match tokio::time::timeout(within, s.read(&mut out)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&out[..n]).into_owned(),
        _ => String::new(),
    }
}

/// The review's finding: 200 unauthenticated uploads, each declaring 1 MB and sending 4 bytes,
/// held 200 connections to Faspex. Now at most `public_inflight_per_ip` of them are taken in
/// from one address (the rest get 429 at once), and none of those holds a connection to Faspex.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_public_uploads_hold_no_connection_to_faspex() {
    let (up, gw) = setup(|_| {}).await;
    let mut held = Vec::new();
    let mut too_many = 0;
    for _ in 0..200 {
        let mut s = stalled_upload(&gw, 1_000_000, 4).await;
        let answer = arrived(&mut s, Duration::from_millis(30)).await;
        if answer.starts_with("HTTP/1.1 429") {
            assert!(
                answer.to_ascii_lowercase().contains("retry-after: 1"),
                "{answer}"
            );
            too_many += 1;
        } else {
            assert_eq!(answer, "", "a stalled upload is simply waited for");
            held.push(s);
        }
    }
    assert_eq!(
        held.len(),
        32,
        "policy.public_inflight_per_ip (default 32) are taken in"
    );
    assert_eq!(too_many, 168);
    let faspex_connections = up.open_connections();
    eprintln!(
        "figure: connections to Faspex held by 200 stalled public uploads from one address: \
         {faspex_connections} (public_inflight_per_ip = 32)"
    );
    assert_eq!(
        faspex_connections, 0,
        "a stalled public body takes no connection to Faspex"
    );
    let m = scrape(&gw).await;
    assert_eq!(refused(&m, "public_inflight"), 168.0);

    // A logged-in user's requests from the same address are not public ones: they go on.
    let c = https_client(&gw.files.cert_pem, false);
    let (st, _, _) = send(
        &c,
        Request::get(format!("{}/echo", gw.base()))
            .header(header::AUTHORIZATION, basic())
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK);

    // Once an upload's body has come in full, its place is free again.
    let mut one = held.pop().unwrap();
    one.write_all(&vec![b'y'; 1_000_000 - 4]).await.unwrap();
    let answer = arrived(&mut one, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"bytes\":1000000"), "{answer}");
    let mut next = stalled_upload(&gw, 10, 10).await;
    let answer = arrived(&mut next, Duration::from_secs(10)).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "a place came back: {answer}"
    );

    // Hanging up frees the places of the others.
    drop(held);
    drop(next);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut after: Vec<_> = Vec::new();
    for _ in 0..32 {
        let mut s = stalled_upload(&gw, 1_000_000, 4).await;
        assert_eq!(arrived(&mut s, Duration::from_millis(30)).await, "");
        after.push(s);
    }
}

/// A public body larger than the read-ahead takes its connection to Faspex once its first
/// 64 KiB have come, and not before.
#[tokio::test(flavor = "multi_thread")]
async fn a_public_body_takes_a_connection_only_after_its_first_64_kib() {
    let (up, gw) = setup(|_| {}).await;
    let _short = stalled_upload(&gw, 1_000_000, 64 * 1024 - 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.open_connections(), 0);
    let mut long = stalled_upload(&gw, 1_000_000, 64 * 1024).await;
    assert!(
        eventually(Duration::from_secs(5), || up.open_connections() == 1).await,
        "the upload is on its way to Faspex"
    );
    long.write_all(&vec![b'z'; 1_000_000 - 64 * 1024])
        .await
        .unwrap();
    let answer = arrived(&mut long, Duration::from_secs(10)).await;
    assert!(
        answer.contains("\"bytes\":1000000"),
        "every byte arrived: {answer}"
    );
}

/// A public GET of `path` as the client `addr`, which a trusted proxy (the test, on loopback)
/// vouches for in `X-Forwarded-For`.
async fn get_from(
    c: &HttpsClient,
    url: &str,
    addr: &str,
) -> (StatusCode, http::HeaderMap, bytes::Bytes) {
    send(
        c,
        Request::get(url)
            .header("X-Forwarded-For", addr)
            .body(empty())
            .unwrap(),
    )
    .await
}

/// `upstream.max_connections`: public requests get three quarters of them, then wait
/// `connect_timeout` and get 503 with Retry-After; a session's requests still get through.
#[tokio::test(flavor = "multi_thread")]
async fn connections_to_faspex_are_bounded_with_a_reserve_for_sessions() {
    let (up, gw) = setup(|c| {
        c.set("upstream", "max_connections", "4");
        c.set("upstream", "connect_timeout", "\"1s\"");
        c.set("server", "trusted_proxies", "[\"127.0.0.1\"]");
    })
    .await;
    let base = gw.base();
    // Three public requests from three addresses that Faspex answers slowly hold the public
    // share.
    let mut slow = Vec::new();
    for i in 0..3 {
        let c = https_client(&gw.files.cert_pem, false);
        let url = format!("{base}/slow?ms=4000");
        slow.push(tokio::spawn(async move {
            get_from(&c, &url, &format!("198.51.100.{i}")).await.0
        }));
    }
    assert!(eventually(Duration::from_secs(5), || up.open_connections() == 3).await);

    let c = https_client(&gw.files.cert_pem, false);
    let started = Instant::now();
    let (st, h, _) = get_from(&c, &format!("{base}/slow?ms=1"), "198.51.100.9").await;
    assert_eq!(
        st,
        StatusCode::SERVICE_UNAVAILABLE,
        "the fourth public request"
    );
    assert_eq!(h[header::RETRY_AFTER], "1");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "it waited connect_timeout"
    );
    assert_eq!(
        value(&scrape(&gw).await, "faspex_gate_upstream_busy_total"),
        1.0
    );

    // The reserve: a logged-in user's request goes through at once.
    let started = Instant::now();
    let (st, _, _) = send(
        &c,
        Request::get(format!("{base}/echo"))
            .header(header::AUTHORIZATION, basic())
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(up.open_connections() <= 4);
    for t in slow {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    // Then the public share is free again.
    let (st, _, _) = get_from(&c, &format!("{base}/slow?ms=1"), "198.51.100.9").await;
    assert_eq!(st, StatusCode::OK);
}

/// One address's public WebSocket tunnels may hold only a quarter of the public share of the
/// connections to Faspex (the review's finding: 390 tunnels from one address, each kept alive
/// by a byte now and then, held all 384 of it): beyond, 429; other addresses go on.
#[tokio::test(flavor = "multi_thread")]
async fn one_address_holds_only_its_share_of_the_connections_to_faspex() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (_up, gw) = setup(|c| {
        // public share 12, one address's share 3
        c.set("upstream", "max_connections", "16");
        c.set("server", "trusted_proxies", "[\"127.0.0.1\"]");
        c.set(
            "faspex",
            "public_paths",
            r#"["/slow", "/aspera/http-gwy/"]"#,
        );
    })
    .await;
    let port = gw.https.unwrap().port();
    let tunnel = |from: &'static str| {
        let addr = gw.https.unwrap();
        let pem = gw.files.cert_pem.clone();
        async move {
            let mut req = format!("wss://localhost:{port}/aspera/http-gwy/ws")
                .into_client_request()
                .unwrap();
            req.headers_mut()
                .insert("x-forwarded-for", from.parse().unwrap());
            let stream = raw_tls(addr, &pem).await;
            tokio_tungstenite::client_async(req, stream).await
        }
    };
    let mut open = Vec::new();
    for _ in 0..3 {
        let (ws, resp) = tunnel("203.0.113.5").await.unwrap();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        open.push(ws);
    }
    match tunnel("203.0.113.5").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        }
        other => panic!("a fourth tunnel from the address: {:?}", other.map(|r| r.1)),
    }
    let (_other, resp) = tunnel("203.0.113.6").await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::SWITCHING_PROTOCOLS,
        "another address has its own share"
    );
    // Short public requests from the address are not held to it.
    let c = https_client(&gw.files.cert_pem, false);
    let (st, _, _) = get_from(&c, &format!("{}/slow?ms=1", gw.base()), "203.0.113.5").await;
    assert_eq!(st, StatusCode::OK);
    // A tunnel that closes gives its place back.
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        if let Ok((ws, _)) = tunnel("203.0.113.5").await {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "the place came back");
}

/// The review's finding: form bodies to protected paths (and the logout path) were read whole
/// before any session was looked at, and counted nowhere. Without the gateway's cookie they
/// now count against the address like public ones.
#[tokio::test(flavor = "multi_thread")]
async fn protected_form_bodies_without_a_session_count_against_the_address() {
    let (_up, gw) = setup(|c| {
        c.set("policy", "public_inflight_per_ip", "4");
    })
    .await;
    let mut held = Vec::new();
    for path in ["/aspera/faspex/inbox", "/aspera/faspex/logout"] {
        for _ in 0..2 {
            let mut s = raw_tls(gw.https.unwrap(), &gw.files.cert_pem).await;
            s.write_all(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: localhost\r\n\
                     Content-Type: application/x-www-form-urlencoded\r\n\
                     Content-Length: 100000\r\n\r\na=1"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            assert_eq!(arrived(&mut s, Duration::from_millis(50)).await, "");
            held.push(s);
        }
    }
    let mut s = raw_tls(gw.https.unwrap(), &gw.files.cert_pem).await;
    s.write_all(
        b"POST /aspera/faspex/inbox HTTP/1.1\r\nHost: localhost\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\na=1",
    )
    .await
    .unwrap();
    let answer = arrived(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert_eq!(refused(&scrape(&gw).await, "public_inflight"), 1.0);
}

/// A kick ends the session's WebSocket tunnel and its download at once, and the tunnel's
/// access-log line says what it moved.
#[tokio::test(flavor = "multi_thread")]
async fn a_kick_ends_the_sessions_tunnels_and_downloads() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let (_up, gw) = setup(|_| {}).await;
    let port = gw.https.unwrap().port();

    // A download of 10 GiB, read slowly.
    let c = https_client(&gw.files.cert_pem, false);
    let resp = c
        .request(
            Request::get(format!("{}/stream?bytes={}", gw.base(), 10u64 << 30))
                .header(header::AUTHORIZATION, basic())
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut download = resp.into_body();
    let first = download.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));

    // A WebSocket on a protected path, same session (same address and User-Agent).
    let mut ws_req = format!("wss://localhost:{port}/x/ws")
        .into_client_request()
        .unwrap();
    ws_req
        .headers_mut()
        .insert(header::AUTHORIZATION, basic().parse().unwrap());
    let stream = raw_tls(gw.https.unwrap(), &gw.files.cert_pem).await;
    let (mut ws, resp) = tokio_tungstenite::client_async(ws_req, stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("before the kick")).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "before the kick");

    let (st, _, body) = admin_req(
        "DELETE",
        &format!("{}/admin/v1/sessions/alice", gw.admin_url()),
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");

    // The tunnel closes now.
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the tunnel outlived the kick");

    // The download ends too, well short of its 10 GiB.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        let mut n = 0u64;
        loop {
            match download.frame().await {
                Some(Ok(f)) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                Some(Err(_)) => return Err(n),
                None => return Ok(n),
            }
        }
    })
    .await
    .expect("the download outlived the kick");
    assert!(
        ended.is_err(),
        "the download broke off instead of completing"
    );

    // The tunnel's line: a tunnel, its bytes each way, cut short.
    assert!(
        gw.wait_log("tunnel=true", Duration::from_secs(5)),
        "{}",
        gw.logs()
    );
    let logs = gw.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("tunnel=true"))
        .unwrap()
        .to_string();
    assert!(line.contains("path=/x/ws"), "{line}");
    assert!(line.contains("status=101"), "{line}");
    assert!(line.contains("complete=false"), "{line}");
    let field = |name: &str| -> u64 {
        line.split(' ')
            .find_map(|f| f.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    assert!(
        field("bytes_up=") > "before the kick".len() as u64,
        "{line}"
    );
    assert!(
        field("bytes_down=") > "before the kick".len() as u64,
        "{line}"
    );

    // And the session is gone: the next request is a new login.
    let m = scrape(&gw).await;
    assert_eq!(
        value(&m, "faspex_gate_sessions_ended_total{reason=\"admin\"}"),
        1.0
    );
}

/// Honest use under the default limits, all from one address at once: an HTTP Gateway download
/// of 4 GiB, a WebSocket upload beside it, and a logged-in browser polling Faspex (as its pages
/// do for transfer status) all work.
#[tokio::test(flavor = "multi_thread")]
async fn a_big_download_an_upload_and_polling_work_together_under_the_default_limits() {
    use tokio_tungstenite::tungstenite::Message;
    const FOUR_GIB: u64 = 4 << 30;
    let s = crate::flows::Site::start(
        crate::flows::users(1),
        faspex_emulator::LoginFailureStyle::Rerender,
        |_| {},
    )
    .await;
    let cookie = s.browser_login("user0", "pass0").await;

    let download = {
        let client = s.client.clone();
        let url = s.url(&format!(
            "/aspera/http-gwy/v1/download/4044?bytes={FOUR_GIB}&token=x"
        ));
        tokio::spawn(async move {
            let resp = client
                .request(Request::get(url).body(empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let mut body = resp.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                n += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
            }
            n
        })
    };

    let upload = {
        let addr = s.gw.https.unwrap();
        let pem = s.gw.files.cert_pem.clone();
        tokio::spawn(async move {
            let stream = raw_tls(addr, &pem).await;
            let url = format!(
                "wss://localhost:{}/aspera/http-gwy/v2/upload?token=faspex-issued",
                addr.port()
            );
            let (mut ws, resp) = tokio_tungstenite::client_async(url, stream).await.unwrap();
            assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
            let chunk = vec![5u8; 1 << 20];
            for _ in 0..64 {
                ws.send(Message::binary(chunk.clone())).await.unwrap();
                assert_eq!(ws.next().await.unwrap().unwrap().into_data(), chunk);
            }
            ws.close(None).await.unwrap();
        })
    };

    // The browser polls every few milliseconds meanwhile.
    let mut polls = 0;
    while !download.is_finished() || polls < 200 {
        let req = Request::get(s.url("/aspera/faspex/inbox"))
            .header(header::COOKIE, &cookie)
            .header("X-Requested-With", "XMLHttpRequest")
            .body(empty())
            .unwrap();
        let (st, _, _) = send(&s.client, req).await;
        assert_eq!(st, StatusCode::OK, "poll {polls}");
        polls += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    upload.await.unwrap();
    assert_eq!(download.await.unwrap(), FOUR_GIB);
    eprintln!("{polls} polls answered during a 4 GiB download and a 64 MiB WebSocket upload");
}

/// A logged-in browser's polling is not a public request: an address whose public requests
/// are all still arriving (stalled uploads) keeps its session's requests.
#[tokio::test(flavor = "multi_thread")]
async fn polling_with_a_session_is_untouched_by_the_public_limit() {
    let s = crate::flows::Site::start(
        crate::flows::users(1),
        faspex_emulator::LoginFailureStyle::Rerender,
        |c| {
            c.set("policy", "public_inflight_per_ip", "4");
        },
    )
    .await;
    let cookie = s.browser_login("user0", "pass0").await;
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut c = raw_tls(s.gw.https.unwrap(), &s.gw.files.cert_pem).await;
        c.write_all(
            b"POST /aspera/http-gwy/v1/upload?token=x HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\nabcd",
        )
        .await
        .unwrap();
        stalled.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The public share of this address is taken...
    let (st, h, _) = s
        .get_plain("/aspera/faspex/stylesheets/application.css", &[])
        .await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h[header::RETRY_AFTER], "1");
    // ... and the session's requests go on.
    for i in 0..50 {
        let req = Request::get(s.url("/aspera/faspex/inbox"))
            .header(header::COOKIE, &cookie)
            .header("X-Requested-With", "XMLHttpRequest")
            .body(empty())
            .unwrap();
        assert_eq!(send(&s.client, req).await.0, StatusCode::OK, "poll {i}");
    }
    drop(stalled);
}
