//! The reverse proxy over real sockets and real TLS: forwarding, headers, streaming, upgrades,
//! HTTP/2, limits and timeouts, the deny list, reload and shutdown, and hostile input.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::*;

/// Start an upstream and a gateway in front of it; `tweak` adjusts the configuration.
async fn setup(tweak: impl FnOnce(&mut ConfigBuilder)) -> (TestUpstream, GatewayProcess) {
    let upstream = TestUpstream::start().await;
    let files = TestFiles::new();
    let mut cfg = ConfigBuilder::new(&files, &upstream.url());
    mechanics_only(&mut cfg);
    tweak(&mut cfg);
    let gw = tokio::task::block_in_place(|| GatewayProcess::start(files, &cfg));
    (upstream, gw)
}

/// These tests are about the proxy's mechanics (streaming, headers, upgrades, limits), not the
/// login flows (`flows.rs`): every path of the test upstream is made public, so no session is
/// needed, and the public-path limit is out of the way.
fn mechanics_only(cfg: &mut ConfigBuilder) {
    cfg.set("faspex", "public_paths", "[\"/\"]");
    cfg.set("policy", "public_requests_per_ip_per_minute", "1000000");
}

fn client(gw: &GatewayProcess) -> HttpsClient {
    https_client(&gw.files.cert_pem, false)
}

#[tokio::test(flavor = "multi_thread")]
async fn forwards_methods_paths_queries_headers_bodies_and_statuses() {
    let (_up, gw) = setup(|_| {}).await;
    let c = client(&gw);
    for (method, status) in [
        (Method::GET, 200u16),
        (Method::POST, 201),
        (Method::PUT, 202),
        (Method::DELETE, 404),
        (Method::PATCH, 500),
        (Method::OPTIONS, 200),
    ] {
        let url = format!("{}/echo/a%20b;c?x=1&y=%2F&z&status={status}", gw.base());
        let req = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header("x-custom", "value 1")
            .header("accept", "application/xml")
            .body(full("hello"))
            .unwrap();
        let (st, headers, body) = send(&c, req).await;
        assert_eq!(st.as_u16(), status, "{method}");
        assert_eq!(headers["x-upstream-header"], "from-upstream");
        let j = json(&body);
        assert_eq!(j["method"], method.as_str());
        assert_eq!(
            j["path_and_query"],
            format!("/echo/a%20b;c?x=1&y=%2F&z&status={status}")
        );
        assert_eq!(j["headers"]["x-custom"][0], "value 1");
        assert_eq!(j["headers"]["accept"][0], "application/xml");
        assert_eq!(j["bytes"], 5);
    }
    // A HEAD gets the headers and no body.
    let req = Request::head(format!("{}/stream?bytes=1000", gw.base()))
        .body(empty())
        .unwrap();
    let (st, headers, body) = send(&c, req).await;
    assert_eq!(st, 200);
    assert_eq!(headers["content-length"], "1000");
    assert!(body.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let (_up, gw) = setup(|_| {}).await;
    // A Connection that names an end-to-end header, or an upgrade to anything but a WebSocket,
    // is refused whole: a hop would remove what the gate read (the credential issue).
    for head in [
        &b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close, x-drop\r\nX-Drop: 1\r\n\r\n"
            [..],
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nUpgrade: h2c\r\n\r\n",
    ] {
        let raw = raw_exchange(
            gw.https.unwrap(),
            &gw.files.cert_pem,
            head,
            Duration::from_secs(5),
        )
        .await;
        assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
        assert!(!raw.contains("\"headers\""), "forwarded: {raw}");
    }
    let raw = raw_exchange(
        gw.https.unwrap(),
        &gw.files.cert_pem,
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close, te\r\n\
          Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n\
          X-Keep: 1\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let body = &raw[raw.find("\r\n\r\n").unwrap() + 4..];
    let j: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    let h = j["headers"].as_object().unwrap();
    for gone in ["keep-alive", "te", "proxy-authorization", "upgrade"] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream: {h:?}");
    }
    assert_eq!(h["x-keep"][0], "1");

    let (st, headers, _) = get(&client(&gw), &format!("{}/hop", gw.base())).await;
    assert_eq!(st, 200);
    assert!(headers.get("x-internal").is_none());
    assert!(headers.get("keep-alive").is_none());
    assert!(headers.get("proxy-authenticate").is_none());
    assert_eq!(headers["x-end-to-end"], "kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_headers_are_set_and_spoofing_is_ignored() {
    let (up, gw) = setup(|_| {}).await;
    let c = client(&gw);
    let req = Request::get(format!("{}/echo", gw.base()))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-forwarded-proto", "gopher")
        .body(empty())
        .unwrap();
    let (_, _, body) = send(&c, req).await;
    let j = json(&body);
    let h = &j["headers"];
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(h["x-real-ip"][0], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "https");
    let authority = format!("localhost:{}", gw.https.unwrap().port());
    assert_eq!(h["x-forwarded-host"][0], authority);
    assert_eq!(
        h["host"][0], authority,
        "upstream.preserve_host defaults to true"
    );
    assert!(h.get("forwarded").is_none());
    drop(gw);

    // From a trusted proxy, the chain is believed and extended.
    let files = TestFiles::new();
    let mut cfg = ConfigBuilder::new(&files, &up.url());
    mechanics_only(&mut cfg);
    cfg.set("server", "trusted_proxies", "[\"127.0.0.0/8\"]");
    cfg.set("upstream", "preserve_host", "false");
    let gw = tokio::task::block_in_place(|| GatewayProcess::start(files, &cfg));
    let req = Request::get(format!("{}/echo", gw.base()))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .body(empty())
        .unwrap();
    let (_, _, body) = send(&client(&gw), req).await;
    let j = json(&body);
    let h = &j["headers"];
    assert_eq!(h["x-forwarded-for"][0], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-real-ip"][0], "203.0.113.7");
    assert_eq!(h["host"][0], up.addr.to_string(), "preserve_host = false");
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_to_the_upstream_origin_are_rewritten() {
    let (_up, gw) = setup(|c| {
        c.set("upstream", "preserve_host", "false");
    })
    .await;
    let (st, headers, _) = get(&client(&gw), &format!("{}/redirect", gw.base())).await;
    assert_eq!(st, StatusCode::FOUND);
    assert_eq!(
        headers["location"],
        format!("{}/aspera/faspex/inbox?x=1", gw.base())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gibibyte_streams_both_ways_with_flat_memory() {
    const GIB: u64 = 1 << 30;
    // More workers than this machine has cores: an allocator that keeps memory per thread shows
    // here as a peak that grows with the worker count (mimalloc reached 78 MiB with 8;
    // jemalloc stays at about 32 MiB).
    let (_up, gw) = setup(|c| {
        c.set("server", "workers", "8");
    })
    .await;
    let c = client(&gw);

    // Download.
    let resp = c
        .request(
            Request::get(format!("{}/stream?bytes={}", gw.base(), GIB + 12345))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut n: u64 = 0;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            n += d.len() as u64;
        }
    }
    assert_eq!(n, GIB + 12345);

    // Upload, chunked (no Content-Length).
    let req = Request::post(format!("{}/sink", gw.base()))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(generated_body(GIB + 777))
        .unwrap();
    let (st, _, body) = send(&c, req).await;
    assert_eq!(st, 200);
    assert_eq!(json(&body)["bytes"], GIB + 777);

    let peak = gw.peak_rss_kib();
    eprintln!("gateway peak RSS after 2 GiB streamed: {peak} KiB");
    assert!(peak > 0, "could not read the gateway's peak RSS");
    assert!(
        peak < 64 * 1024,
        "gateway peak RSS {peak} KiB after streaming 2 GiB"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_echo_passes_through() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (_up, gw) = setup(|_| {}).await;
    let stream = raw_tls(gw.https.unwrap(), &gw.files.cert_pem).await;
    // (a WebSocket belongs on the HTTP Gateway's paths, or to a live session)
    let url = format!(
        "wss://localhost:{}/aspera/http-gwy/ws",
        gw.https.unwrap().port()
    );
    let (mut ws, resp) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hello through the gateway"))
        .await
        .unwrap();
    let got = ws.next().await.unwrap().unwrap();
    assert_eq!(
        got.into_text().unwrap().as_str(),
        "hello through the gateway"
    );
    let big = vec![7u8; 300_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let got = ws.next().await.unwrap().unwrap();
    assert_eq!(got.into_data(), big);
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_and_http11_both_work() {
    let (_up, gw) = setup(|_| {}).await;
    for h2 in [false, true] {
        let c = https_client(&gw.files.cert_pem, h2);
        let resp = c
            .request(
                Request::post(format!("{}/echo?v=1", gw.base()))
                    .header("x-h", "1")
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(generated_body(3 * 1024 * 1024))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            resp.version(),
            if h2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            }
        );
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let j = json(&body);
        assert_eq!(j["bytes"], 3 * 1024 * 1024);
        assert_eq!(j["path_and_query"], "/echo?v=1");
        assert_eq!(j["headers"]["x-h"][0], "1");
        // The upstream always gets HTTP/1.1 with a Host header, whatever the client spoke.
        assert_eq!(
            j["headers"]["host"][0],
            format!("localhost:{}", gw.https.unwrap().port())
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn downloads_arrive_byte_for_byte_over_both_protocols() {
    // The gateway cuts a response into pieces for HTTP/2 (the short part of each chunk first):
    // every byte must still arrive, once, in order, with and without a Content-Length.
    let (_up, gw) = setup(|_| {}).await;
    let n: u64 = 3 * 64 * 1024 + 16_375 + 12_345;
    for h2 in [false, true] {
        let c = https_client(&gw.files.cert_pem, h2);
        for length in [0, 1] {
            let resp = c
                .request(
                    Request::get(format!("{}/counted?bytes={n}&length={length}", gw.base()))
                        .body(empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.version() == Version::HTTP_2, h2);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len() as u64, n, "h2 {h2}, length {length}");
            let wrong = body
                .iter()
                .enumerate()
                .position(|(i, b)| *b != (i % 251) as u8);
            assert_eq!(wrong, None, "h2 {h2}, length {length}: first wrong byte");
        }
    }
}

async fn peer_cert(addr: std::net::SocketAddr, trust: &[&str]) -> Vec<u8> {
    let tls = tls_connect(addr, tls_client_config_for(trust, &[], &[])).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let (_up, gw) = setup(|_| {}).await;
    let addr = gw.https.unwrap();
    let old_pem = gw.files.cert_pem.clone();
    let before = peer_cert(addr, &[&old_pem]).await;

    // A keep-alive connection opened before the reload.
    let mut live = raw_tls(addr, &old_pem).await;
    let req = b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n";
    live.write_all(req).await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = live.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&gw.files.cert, ck.cert.pem()).unwrap();
    write_private(&gw.files.key, ck.key_pair.serialize_pem().as_bytes());
    gw.signal("HUP");
    assert!(
        gw.wait_log("certificate reloaded", Duration::from_secs(10)),
        "{}",
        gw.logs()
    );

    let after = peer_cert(addr, &[&old_pem, &ck.cert.pem()]).await;
    assert_ne!(before, after, "new connections get the new certificate");
    assert_eq!(after, ck.cert.der().to_vec());

    // The old connection still works.
    live.write_all(req).await.unwrap();
    let n = live.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // A broken certificate file on reload keeps the old one in service.
    std::fs::write(&gw.files.cert, "not a certificate").unwrap();
    gw.signal("HUP");
    assert!(gw.wait_log(
        "reload refused: the certificate cannot be loaded",
        Duration::from_secs(10)
    ));
    assert_eq!(peer_cert(addr, &[&ck.cert.pem()]).await, after);
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let (_up, mut gw) = setup(|c| {
        c.set("server", "shutdown_timeout", "\"10s\"");
    })
    .await;
    let c = client(&gw);
    let url = format!("{}/slow?ms=1500", gw.base());
    let in_flight = tokio::spawn(async move { get(&c, &url).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    gw.signal("TERM");
    let (st, _, body) = in_flight.await.unwrap();
    assert_eq!(st, 200);
    assert_eq!(&body[..], b"slow done");
    let status = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(10)));
    assert!(status.expect("the gateway exited").success());
    assert!(tokio::net::TcpStream::connect(gw.https.unwrap())
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_deadline_bounds_a_stuck_request() {
    let (_up, mut gw) = setup(|c| {
        c.set("server", "shutdown_timeout", "\"1s\"");
    })
    .await;
    let c = client(&gw);
    let url = format!("{}/never", gw.base());
    let _stuck =
        tokio::spawn(async move { c.request(Request::get(url).body(empty()).unwrap()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    gw.signal("TERM");
    let status = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(10)));
    assert!(status.is_some(), "the gateway did not exit");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_is_dropped_while_others_are_served() {
    let (_up, gw) = setup(|c| {
        c.set("server", "header_read_timeout", "\"1s\"");
    })
    .await;
    let addr = gw.https.unwrap();
    let pem = gw.files.cert_pem.clone();
    let slow = tokio::spawn(async move {
        let mut s = raw_tls(addr, &pem).await;
        let started = Instant::now();
        let head = b"GET /echo HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for b in head.iter() {
            if s.write_all(&[*b]).await.is_err() || s.flush().await.is_err() {
                return (started.elapsed(), true);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Has the server closed on us?
            let mut buf = [0u8; 64];
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
                match r {
                    Ok(0) | Err(_) => return (started.elapsed(), true),
                    Ok(_) => return (started.elapsed(), false),
                }
            }
        }
        (started.elapsed(), false)
    });
    // Meanwhile, normal clients are served.
    let c = client(&gw);
    for _ in 0..5 {
        let (st, _, _) = get(&c, &format!("{}/echo", gw.base())).await;
        assert_eq!(st, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (elapsed, dropped) = slow.await.unwrap();
    assert!(dropped, "the slow client was never dropped");
    assert!(
        elapsed < Duration::from_secs(4),
        "dropped only after {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_closed() {
    let (_up, gw) = setup(|c| {
        c.set("server", "header_read_timeout", "\"1s\"");
    })
    .await;
    let mut s = raw_tls(gw.https.unwrap(), &gw.files.cert_pem).await;
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "connection still open: {r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(3));
}

/// The header-read timeout counts only while a connection waits for a request's head: a
/// request that Faspex answers after 2.5 s (the timeout is 1 s) is served, the connection then
/// carries another, and only once idle is it closed, a timeout after its last response.
#[tokio::test(flavor = "multi_thread")]
async fn the_header_timeout_spares_a_connection_serving_a_slow_request() {
    let (_up, gw) = setup(|c| {
        c.set("server", "header_read_timeout", "\"1s\"");
    })
    .await;
    let mut s = raw_tls(gw.https.unwrap(), &gw.files.cert_pem).await;
    let mut buf = vec![0u8; 8192];
    async fn answer(s: &mut (impl AsyncReadExt + Unpin), buf: &mut [u8], ends: &str) -> String {
        let mut got = String::new();
        while !got.ends_with(ends) {
            match tokio::time::timeout(Duration::from_secs(10), s.read(buf)).await {
                Ok(Ok(n)) if n > 0 => got.push_str(&String::from_utf8_lossy(&buf[..n])),
                other => panic!("the answer broke off ({other:?}) after {got:?}"),
            }
        }
        got
    }
    s.write_all(b"GET /slow?ms=2500 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let slow = answer(&mut s, &mut buf, "slow done").await;
    assert!(slow.starts_with("HTTP/1.1 200"), "{slow}");

    // The same connection carries the next request.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.write_all(b"GET /slow?ms=10 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let next = answer(&mut s, &mut buf, "slow done").await;
    assert!(next.starts_with("HTTP/1.1 200"), "{next}");

    // Idle from here: closed about a second later.
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "connection still open: {r:?}"
    );
    let idle = t.elapsed();
    assert!(
        idle > Duration::from_millis(700) && idle < Duration::from_secs(3),
        "closed after {idle:?} idle"
    );
}

/// Nor is a connection cut while its answer streams: 64 MiB read at most 16 MiB/s, four
/// seconds or more against a 1 s timeout, the gateway writing all along (past what the sockets
/// hold).
#[tokio::test(flavor = "multi_thread")]
async fn the_header_timeout_spares_a_connection_streaming_a_long_answer() {
    const BYTES: usize = 64 << 20;
    let (_up, gw) = setup(|c| {
        c.set("server", "header_read_timeout", "\"1s\"");
    })
    .await;
    let mut s = raw_tls(gw.https.unwrap(), &gw.files.cert_pem).await;
    s.write_all(
        format!("GET /stream?bytes={BYTES} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let t = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let mut head = Vec::new();
    let mut total = 0;
    while total < BYTES + head.len() || head.is_empty() {
        let n = match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            other => panic!("cut after {total} bytes and {:?}: {other:?}", t.elapsed()),
        };
        if head.is_empty() {
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            let end = text.find("\r\n\r\n").expect("the head in the first read") + 4;
            head = buf[..end].to_vec();
        }
        total += n;
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    assert_eq!(total, BYTES + head.len());
    assert!(
        t.elapsed() > Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_cap_holds_new_clients_back() {
    let (_up, gw) = setup(|c| {
        c.set("server", "max_connections", "2");
    })
    .await;
    let addr = gw.https.unwrap();
    let a = raw_tls(addr, &gw.files.cert_pem).await;
    let _b = raw_tls(addr, &gw.files.cert_pem).await;
    let pem = gw.files.cert_pem.clone();
    let third = tokio::spawn(async move { raw_tls(addr, &pem).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !third.is_finished(),
        "a third connection got past a cap of 2"
    );
    drop(a);
    let s = tokio::time::timeout(Duration::from_secs(5), third).await;
    assert!(
        s.is_ok(),
        "the third connection was not let in after one closed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn downed_upstream_gives_502_and_silent_upstream_504() {
    // An address where nothing listens.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let files = TestFiles::new();
    let mut cfg = ConfigBuilder::new(&files, &format!("http://{dead}"));
    mechanics_only(&mut cfg);
    let gw = tokio::task::block_in_place(|| GatewayProcess::start(files, &cfg));
    let c = client(&gw);
    let t = Instant::now();
    let (st, headers, body) = get(&c, &format!("{}/aspera/faspex/inbox", gw.base())).await;
    assert_eq!(st, StatusCode::BAD_GATEWAY);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(!body.is_empty());
    assert!(t.elapsed() < Duration::from_secs(5));
    // A browser gets a page.
    let req = Request::get(format!("{}/aspera/faspex/inbox", gw.base()))
        .header("accept", "text/html")
        .body(empty())
        .unwrap();
    let (st, headers, body) = send(&c, req).await;
    assert_eq!(st, StatusCode::BAD_GATEWAY);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(String::from_utf8_lossy(&body).contains("cannot be reached"));
    assert!(
        gw.wait_log("kind=connect", Duration::from_secs(5)),
        "{}",
        gw.logs()
    );
    drop(gw);

    let (_up, gw) = setup(|c| {
        c.set("upstream", "response_timeout", "\"1s\"");
    })
    .await;
    let t = Instant::now();
    let (st, _, _) = get(&client(&gw), &format!("{}/never", gw.base())).await;
    assert_eq!(st, StatusCode::GATEWAY_TIMEOUT);
    assert!(t.elapsed() >= Duration::from_millis(900) && t.elapsed() < Duration::from_secs(5));
    // A slow body is not a timeout: only the headers are bounded.
    let (st, _, body) = get(
        &client(&gw),
        &format!("{}/stream?bytes={}", gw.base(), 50 * 1024 * 1024),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(body.len(), 50 * 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_list_holds_against_encoded_doubled_and_dot_variants() {
    let (_up, gw) = setup(|_| {}).await;
    let c = client(&gw);
    for path in [
        "/aspera/faspex/package_relay/relay_package",
        "/aspera/faspex/package_relay",
        "//aspera/faspex/package_relay/relay_package",
        "/aspera//faspex//package_relay/relay_package",
        "/aspera/faspex/./package_relay/relay_package",
        "/aspera/faspex/inbox/../package_relay/relay_package",
        "/aspera/faspex/%70ackage_relay/relay_package",
        "/aspera/faspex/package%5frelay/relay_package",
        "/aspera/faspex/%2570ackage_relay/relay_package",
        // Encoded slashes and dot segments are refused (400) before any route is decided.
        "/aspera%2Ffaspex%2Fpackage_relay%2Frelay_package",
        "/aspera/faspex/%2e/package_relay/relay_package",
    ] {
        let want = if path.contains("%2F") || path.contains("%2e") {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::FORBIDDEN
        };
        for method in [Method::POST, Method::GET] {
            let req = Request::builder()
                .method(method.clone())
                .uri(format!("{}{}", gw.base(), path))
                .body(full("payload"))
                .unwrap();
            let (st, _, body) = send(&c, req).await;
            assert_eq!(st, want, "{method} {path}");
            assert!(
                !String::from_utf8_lossy(&body).contains("path_and_query"),
                "{path} was forwarded"
            );
        }
    }
    // The gateway's own paths are never forwarded either.
    let (st, _, body) = get(&c, &format!("{}/_faspex-gate/nothing", gw.base())).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(!String::from_utf8_lossy(&body).contains("path_and_query"));
    // And the rest still is.
    let (st, _, _) = get(&c, &format!("{}/echo/package_relay", gw.base())).await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_clear_answers_and_hurt_nobody() {
    let (_up, gw) = setup(|c| {
        c.set("server", "max_header_bytes", "16384");
    })
    .await;
    let addr = gw.https.unwrap();
    let pem = gw.files.cert_pem.clone();
    let t = Duration::from_secs(5);

    let r = raw_exchange(addr, &pem, b"GARBAGE\r\n\r\n", t).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");

    let r = raw_exchange(
        addr,
        &pem,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        t,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");

    let big = format!(
        "GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let r = raw_exchange(addr, &pem, big.as_bytes(), t).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");

    // Content-Length and Transfer-Encoding together: the chunked framing wins, and the
    // connection closes, so nothing can be smuggled behind the body.
    let smuggle = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /echo?smuggled=1 HTTP/1.1\r\nHost: x\r\n\r\n";
    let r = raw_exchange(addr, &pem, smuggle, t).await;
    assert_eq!(r.matches("HTTP/1.1 ").count(), 1, "{r}");
    assert!(!r.contains("smuggled"), "{r}");

    let r = raw_exchange(
        addr,
        &pem,
        b"GET /aspera/%zz HTTP/1.1\r\nHost: x\r\n\r\n",
        t,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = raw_exchange(
        addr,
        &pem,
        b"GET /aspera/a%00b HTTP/1.1\r\nHost: x\r\n\r\n",
        t,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");

    // A TLS ClientHello of garbage just closes that connection.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 0xff, 0xfe])
        .await
        .unwrap();
    tcp.write_all(&vec![0xAB; 4096]).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(t, tcp.read_to_end(&mut buf))
        .await
        .expect("closed");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let _ = tokio::time::timeout(t, tcp.read_to_end(&mut buf))
        .await
        .expect("closed");

    // An upstream that resets mid-body: the client's response breaks off, nothing else does.
    let c = client(&gw);
    let resp = c
        .request(
            Request::get(format!("{}/reset?bytes=1048576", gw.base()))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await;
    assert!(
        collected.is_err(),
        "a truncated body must not look complete"
    );

    // Everyone else is still served.
    let (st, _, _) = get(&client(&gw), &format!("{}/echo", gw.base())).await;
    assert_eq!(st, 200);
    assert!(gw.child_alive());
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_has_one_line_per_request_and_no_secrets() {
    let (_up, gw) = setup(|_| {}).await;
    let c = client(&gw);
    let req = Request::get(format!(
        "{}/echo/logged?passcode=SECRETPASSCODE123",
        gw.base()
    ))
    .header("authorization", "Basic YW5uOlNFQ1JFVFBBU1M=")
    .header(
        "cookie",
        "_faspex_session=SECRETCOOKIE; __Host-faspex-gate=SECRETTOKEN",
    )
    .body(empty())
    .unwrap();
    let (st, _, _) = send(&c, req).await;
    assert_eq!(st, 200);
    let (st, _, _) = get(&c, &format!("{}/aspera/faspex/package_relay/x", gw.base())).await;
    assert_eq!(st, 403);
    assert!(gw.wait_log(
        "path=/aspera/faspex/package_relay/x",
        Duration::from_secs(5)
    ));
    let logs = gw.logs();
    for secret in [
        "SECRETPASSCODE123",
        "YW5uOlNFQ1JFVFBBU1M",
        "SECRETCOOKIE",
        "SECRETTOKEN",
        "SECRETPASS",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into the log");
    }
    let line = logs
        .lines()
        .find(|l| l.contains("faspex_gate::access") && l.contains("path=/echo/logged"))
        .expect("an access-log line");
    for field in [
        "method=GET",
        "route=public",
        "status=200",
        "bytes=",
        "duration_ms=",
        "client_ip=127.0.0.1",
        "complete=true",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    let denied = logs
        .lines()
        .find(|l| l.contains("faspex_gate::access") && l.contains("package_relay"))
        .unwrap();
    assert!(
        denied.contains("route=denied") && denied.contains("status=403"),
        "{denied}"
    );
    assert_eq!(
        logs.lines()
            .filter(|l| l.contains("faspex_gate::access") && l.contains("path=/echo/logged"))
            .count(),
        1
    );
}

/// Access-log lines are held and written together on the request runtime's threads: none is
/// lost or split, whether the gateway goes idle after a burst or is stopped straight after one,
/// with one worker (a current-thread runtime) or several.
#[tokio::test(flavor = "multi_thread")]
async fn held_access_lines_are_all_written_whole() {
    for workers in ["1", "2"] {
        let (_up, mut gw) = setup(|c| {
            c.set("server", "workers", workers);
        })
        .await;
        let access = |logs: &str, path: &str| {
            logs.lines()
                .filter(|l| l.contains("faspex_gate::access") && l.contains(path))
                .count()
        };
        let burst = |tag: &'static str, n: usize| {
            let c = client(&gw);
            let base = gw.base();
            async move {
                let mut set = tokio::task::JoinSet::new();
                for i in 0..n {
                    let c = c.clone();
                    let url = format!("{base}/echo/{tag}/{i}");
                    set.spawn(async move { get(&c, &url).await.0 });
                }
                while let Some(st) = set.join_next().await {
                    assert_eq!(st.unwrap(), 200);
                }
            }
        };
        // A burst of 300 (several times the bytes held at most), then the gateway goes idle:
        // every line is out without another request to push it.
        burst("idle", 300).await;
        let until = Instant::now() + Duration::from_secs(5);
        while access(&gw.logs(), "path=/echo/idle/") < 300 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            access(&gw.logs(), "path=/echo/idle/"),
            300,
            "workers = {workers}"
        );
        // A burst, then a stop straight after it: no line is lost on the way out.
        burst("stop", 120).await;
        gw.signal("TERM");
        let status = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(10)));
        assert!(status.expect("the gateway exited").success());
        let until = Instant::now() + Duration::from_secs(5);
        while access(&gw.logs(), "path=/echo/stop/") < 120 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let logs = gw.logs();
        assert_eq!(
            access(&logs, "path=/echo/stop/"),
            120,
            "workers = {workers}"
        );
        // Whole lines: each access line is one line, with its fields, never two run together.
        for line in logs.lines().filter(|l| l.contains("faspex_gate::access")) {
            assert_eq!(line.matches("faspex_gate::access").count(), 1, "{line}");
            assert!(line.ends_with("complete=true"), "{line}");
        }
    }
}

/// A download still running when the shutdown deadline passes is cut as the runtime goes: its
/// access line (`complete=false`) is made as its task is dropped, after the last park, and
/// written on the way out.
#[tokio::test(flavor = "multi_thread")]
async fn a_line_made_as_the_runtime_goes_is_written_before_the_exit() {
    for workers in ["1", "2"] {
        let (_up, mut gw) = setup(|c| {
            c.set("server", "workers", workers);
            c.set("server", "shutdown_timeout", "\"1s\"");
        })
        .await;
        // A client that asks for 100 MB and reads none of it.
        let mut s = raw_tls(gw.https.unwrap(), &gw.files.cert_pem).await;
        s.write_all(b"GET /stream?bytes=100000000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        // (its response has begun: the request is in flight when the stop comes)
        let mut head = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut head))
            .await
            .expect("the response began")
            .unwrap();
        assert!(
            head[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&head[..n])
        );
        gw.signal("TERM");
        let status = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(10)));
        assert!(status.expect("the gateway exited").success());
        let until = Instant::now() + Duration::from_secs(5);
        let line = loop {
            let logs = gw.logs();
            let line = logs
                .lines()
                .find(|l| l.contains("faspex_gate::access") && l.contains("path=/stream"))
                .map(str::to_owned);
            match line {
                Some(line) => break line,
                None if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                None => panic!("workers = {workers}: no access line for the cut download:\n{logs}"),
            }
        };
        assert!(line.ends_with("complete=false"), "{line}");
        drop(s);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_listener_serves_too() {
    let (_up, gw) = setup(|c| {
        c.set("server", "listen", "\"\"");
        c.set("server", "http_listen", "\"127.0.0.1:0\"");
    })
    .await;
    let addr = gw.http.unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: gate.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"x-forwarded-proto\":[\"http\"]"), "{out}");
    let _ = Bytes::new();
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_http2_connections_are_closed_but_busy_ones_are_not() {
    let (_up, gw) = setup(|c| {
        c.set("server", "header_read_timeout", "\"1s\"");
    })
    .await;
    let tls = tls_connect(
        gw.https.unwrap(),
        tls_client_config(&gw.files.cert_pem, &[b"h2"]),
    )
    .await;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    // A request that outlives the idle limit keeps the connection open...
    let resp = sender
        .send_request(
            Request::get(format!("{}/slow?ms=2000", gw.base()))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"slow done");
    // ...and once idle, it is closed.
    let t = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        closed.is_ok(),
        "the idle HTTP/2 connection was never closed"
    );
    assert!(t.elapsed() >= Duration::from_millis(700));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_upstream_is_verified_against_ca_file() {
    let files = TestFiles::new();
    let (up, ca_file) = TestUpstream::start_tls(files.dir.path()).await;
    let url = format!("https://localhost:{}", up.addr.port());
    let mut cfg = ConfigBuilder::new(&files, &url);
    mechanics_only(&mut cfg);
    cfg.set(
        "upstream",
        "ca_file",
        &format!("{:?}", ca_file.display().to_string()),
    );
    let gw = tokio::task::block_in_place(|| GatewayProcess::start(files, &cfg));
    let (st, _, body) = get(&client(&gw), &format!("{}/echo?tls=1", gw.base())).await;
    assert_eq!(st, 200);
    assert_eq!(json(&body)["path_and_query"], "/echo?tls=1");
    drop(gw);

    // Without the CA, the upstream's certificate is not trusted: 502, never a silent downgrade.
    let files = TestFiles::new();
    let mut cfg = ConfigBuilder::new(&files, &url);
    mechanics_only(&mut cfg);
    let gw = tokio::task::block_in_place(|| GatewayProcess::start(files, &cfg));
    let (st, _, _) = get(&client(&gw), &format!("{}/echo", gw.base())).await;
    assert_eq!(st, StatusCode::BAD_GATEWAY);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_12_and_13_are_both_offered() {
    let (_up, gw) = setup(|_| {}).await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let cfg = tls_client_config_for(&[&gw.files.cert_pem], &[version], &[]);
        let mut tls = tls_connect(gw.https.unwrap(), cfg).await;
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
        tls.write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tls.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_tunnel_keeps_its_connection_slot() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (_up, gw) = setup(|c| {
        c.set("server", "max_connections", "1");
    })
    .await;
    let addr = gw.https.unwrap();
    let stream = raw_tls(addr, &gw.files.cert_pem).await;
    let url = format!("wss://localhost:{}/aspera/http-gwy/ws", addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    assert!(ws.next().await.unwrap().unwrap().is_text());

    // The tunnel is the one connection allowed: a second client waits...
    let pem = gw.files.cert_pem.clone();
    let second = tokio::spawn(async move { raw_tls(addr, &pem).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !second.is_finished(),
        "a tunnel did not count against the cap"
    );
    // ...until the tunnel closes.
    ws.close(None).await.unwrap();
    drop(ws);
    let s = tokio::time::timeout(Duration::from_secs(5), second).await;
    assert!(s.is_ok(), "the slot was not freed when the tunnel closed");
}

/// A body that sends `chunks` pieces of `size` bytes, sleeping `gap` before each.
fn trickle(chunks: usize, size: usize, gap: Duration) -> TestBody {
    let stream = futures_util::stream::unfold(0usize, move |i| async move {
        if i == chunks {
            return None;
        }
        tokio::time::sleep(gap).await;
        Some((
            Ok::<_, BoxError>(hyper::body::Frame::data(Bytes::from(vec![b'u'; size]))),
            i + 1,
        ))
    });
    BodyExt::boxed(http_body_util::StreamBody::new(stream))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_longer_than_the_response_timeout_is_not_cut_off() {
    let (_up, gw) = setup(|c| {
        c.set("upstream", "response_timeout", "\"1s\"");
    })
    .await;
    let req = Request::post(format!("{}/sink", gw.base()))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(trickle(6, 100_000, Duration::from_millis(400)))
        .unwrap();
    let (st, _, body) = send(&client(&gw), req).await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["bytes"], 600_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_faspex_stops_reading_is_answered_and_frees_its_connection() {
    // `/never` neither reads the body nor answers: once the sockets' buffers are full the
    // gateway cannot write, so no body timer runs and the response clock never starts. The
    // write-stall guard on the connection to Faspex ends it.
    let (_up, gw) = setup(|c| {
        c.set("server", "body_idle_timeout", "\"1s\"");
        c.set("upstream", "max_connections", "1");
    })
    .await;
    let req = Request::post(format!("{}/never", gw.base()))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(generated_body(1 << 30))
        .unwrap();
    let t = Instant::now();
    // Over HTTP/2, so that the answer reaches a client still sending (HTTP/1.1 would see the
    // connection reset under its unsent body).
    let h2 = https_client(&gw.files.cert_pem, true);
    let resp = tokio::time::timeout(Duration::from_secs(30), h2.request(req))
        .await
        .expect("the upload Faspex stopped reading was never answered")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(t.elapsed() >= Duration::from_millis(900));
    // Faspex's fault, not the client's, and said so: it neither read nor answered in time.
    assert!(
        gw.wait_log("kind=timeout", Duration::from_secs(5)),
        "{}",
        gw.logs()
    );
    // Its one connection slot is free again.
    let (st, _, _) = get(&client(&gw), &format!("{}/echo", gw.base())).await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_upload_is_answered_408_and_not_blamed_on_faspex() {
    let (_up, gw) = setup(|c| {
        c.set("server", "body_idle_timeout", "\"1s\"");
    })
    .await;
    let stream = futures_util::stream::iter(vec![Ok::<_, BoxError>(hyper::body::Frame::data(
        Bytes::from_static(b"first bytes"),
    ))])
    .chain(futures_util::stream::pending());
    use futures_util::StreamExt;
    let req = Request::post(format!("{}/sink", gw.base()))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(BodyExt::boxed(http_body_util::StreamBody::new(stream)))
        .unwrap();
    let t = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), client(&gw).request(req))
        .await
        .expect("the stalled upload was never answered")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert!(
        !gw.logs().contains("upstream request failed"),
        "{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_disconnected() {
    let (_up, gw) = setup(|c| {
        c.set("server", "body_idle_timeout", "\"1s\"");
    })
    .await;
    let mut s = raw_tls(gw.https.unwrap(), &gw.files.cert_pem).await;
    s.write_all(b"GET /stream?bytes=1073741824 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // Read the first bytes, then stop reading.
    let mut buf = vec![0u8; 4096];
    let first = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..first]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    // By now the gateway has given up on us: draining ends well short of the gibibyte.
    let mut total = first as u64;
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the connection was never closed");
    assert!(total < 64 * 1024 * 1024, "{total} bytes arrived");
}

#[tokio::test(flavor = "multi_thread")]
async fn host_headers_are_checked() {
    let (_up, gw) = setup(|_| {}).await;
    let addr = gw.https.unwrap();
    let pem = gw.files.cert_pem.clone();
    let t = Duration::from_secs(5);
    for (what, req) in [
        (
            "two Host headers",
            &b"GET /echo HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"[..],
        ),
        ("no Host header", &b"GET /echo HTTP/1.1\r\n\r\n"[..]),
        (
            "a Host with a path",
            &b"GET /redirect HTTP/1.1\r\nHost: evil.example/x?\r\n\r\n"[..],
        ),
        (
            "a Host with user info",
            &b"GET /echo HTTP/1.1\r\nHost: user@evil.example\r\n\r\n"[..],
        ),
        // The review's finding: an absolute-form target skipped the Host check and reached
        // Faspex as `Host: user:pw@evil.example`.
        (
            "an absolute-form target with user info",
            &b"GET http://user:pw@evil.example/echo HTTP/1.1\r\nHost: evil.example\r\n\r\n"[..],
        ),
        (
            "an absolute-form target and a Host that disagree",
            &b"GET http://evil.example/echo HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        ),
        (
            "a Host that Rack reads by its last element",
            &b"GET /echo HTTP/1.1\r\nHost: evil.example,localhost\r\n\r\n"[..],
        ),
        (
            "a Host with an out-of-range port",
            &b"GET /echo HTTP/1.1\r\nHost: localhost:99999\r\n\r\n"[..],
        ),
        (
            "an absolute-form target with a bad port",
            &b"GET http://localhost:99999999/echo HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        ),
    ] {
        let r = raw_exchange(addr, &pem, req, t).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{what}: {r}");
        assert!(!r.contains("path_and_query"), "{what} was forwarded");
    }
    // An absolute-form target that names the Host's authority passes, and Faspex gets that host.
    let r = raw_exchange(
        addr,
        &pem,
        b"GET https://LocalHost/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        t,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("\"host\":[\"localhost\"]"), "{r}");
    // HTTP/1.0 needs no Host.
    let r = raw_exchange(addr, &pem, b"GET /echo HTTP/1.0\r\n\r\n", t).await;
    assert!(
        r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"),
        "{r}"
    );
}

/// `server.strip_response_headers` applies to every Faspex answer, and HSTS goes on every HTTPS
/// answer, the gateway's own included, and on no plain-HTTP one.
#[tokio::test(flavor = "multi_thread")]
async fn response_headers_are_stripped_and_https_answers_carry_hsts() {
    let (_up, gw) = setup(|c| {
        c.set("server", "http_listen", "\"127.0.0.1:0\"");
        c.set(
            "server",
            "strip_response_headers",
            "[\"Server\", \"X-Upstream-Header\"]",
        );
    })
    .await;
    let c = client(&gw);
    let base = gw.base();
    for path in [
        "/echo",
        "/stream?bytes=10",
        "/aspera/faspex/x%2Fy",
        "/_faspex-gate/nope",
    ] {
        let resp = c
            .request(Request::get(format!("{base}{path}")).body(empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            resp.headers()["strict-transport-security"],
            "max-age=31536000",
            "{path}"
        );
        assert!(!resp.headers().contains_key("x-upstream-header"), "{path}");
    }
    let mut s = tokio::net::TcpStream::connect(gw.http.unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let head = out.to_ascii_lowercase();
    assert!(!head.contains("strict-transport-security"), "{out}");
    assert!(!head.contains("x-upstream-header"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_behind_a_trusted_tls_balancer_stay_https() {
    let (_up, gw) = setup(|c| {
        c.set("server", "listen", "\"\"");
        c.set("server", "http_listen", "\"127.0.0.1:0\"");
        c.set("server", "trusted_proxies", "[\"127.0.0.1/32\"]");
        c.set("upstream", "preserve_host", "false");
    })
    .await;
    let ask = |extra: &'static str| {
        let addr = gw.http.unwrap();
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!(
                "GET /redirect HTTP/1.1\r\nHost: gateway.internal:8080\r\n{extra}Connection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out.lines()
                .find_map(|l| l.strip_prefix("location: "))
                .unwrap_or_default()
                .to_string()
        }
    };
    assert_eq!(
        ask("X-Forwarded-Proto: https\r\nX-Forwarded-Host: faspex.example.org\r\n").await,
        "https://faspex.example.org/aspera/faspex/inbox?x=1"
    );
    assert_eq!(
        ask("").await,
        "http://gateway.internal:8080/aspera/faspex/inbox?x=1"
    );
}
