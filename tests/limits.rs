//! Connection limits over real sockets and real TLS: `server.max_connections_per_ip` (one
//! address refused past it, other addresses and trusted proxies unaffected, WebSocket tunnels
//! counted while open), honest crowds behind one address, the HTTP/2 abuse limits (rapid reset,
//! CONTINUATION flood) written frame by frame, and another client's latency while one address
//! tries to hold every slot.
//!
//! Linux routes all of 127.0.0.0/8 to the loopback interface, so a client socket bound to
//! 127.0.0.2 is a second address without any set-up.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ops::{scrape, value};
use crate::util::*;

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

const ONE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const TWO: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const H1: &[&[u8]] = &[b"http/1.1"];
const H2: &[&[u8]] = &[b"h2"];

const PER_IP: &str = "faspex_gate_connections_refused_total{reason=\"per_ip\"}";
const TOTAL: &str = "faspex_gate_connections_refused_total{reason=\"total\"}";

/// An upstream and a gateway in front of it with every path public (these tests are about
/// connections, not logins), the public-request rate out of the way, and the admin listener on
/// for `/metrics`.
async fn setup(tweak: impl FnOnce(&mut ConfigBuilder)) -> (TestUpstream, GatewayProcess) {
    let upstream = TestUpstream::start().await;
    let files = TestFiles::new();
    let mut cfg = ConfigBuilder::new(&files, &upstream.url());
    cfg.set("faspex", "public_paths", "[\"/\"]");
    cfg.set("policy", "public_requests_per_ip_per_minute", "1000000");
    cfg.admin("127.0.0.1:0", &files.path("admin-token"));
    tweak(&mut cfg);
    let gw = tokio::task::block_in_place(|| GatewayProcess::start(files, &cfg));
    (upstream, gw)
}

/// A TLS connection to `to` from the local address `from`, as `localhost`. An error means the
/// gateway closed it (or the handshake took over 10 s).
pub(crate) async fn tls_from(
    from: IpAddr,
    to: SocketAddr,
    pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<Tls> {
    let sock = if from.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.bind(SocketAddr::new(from, 0))?;
    let tcp = sock.connect(to).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(pem, alpn)));
    match tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "TLS handshake took over 10 s",
        )),
    }
}

/// An HTTP/1.1 client on one connection (keep-alive).
pub(crate) async fn h1(tls: Tls) -> SendRequest<TestBody> {
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// GET `path` on `send`'s connection; the status, the body read to its end.
pub(crate) async fn get_on(send: &mut SendRequest<TestBody>, port: u16, path: &str) -> StatusCode {
    send.ready().await.expect("connection closed");
    let req = Request::get(path)
        .header("host", format!("localhost:{port}"))
        .body(empty())
        .unwrap();
    let resp = send.send_request(req).await.expect("request failed");
    let status = resp.status();
    resp.into_body().collect().await.expect("body failed");
    status
}

/// A fresh connection from `from` and one GET of `/echo` on it, retried until it works or
/// `within` passes: whether `from` has a free slot (again).
async fn gets_in_within(from: IpAddr, gw: &GatewayProcess, within: Duration) -> bool {
    let addr = gw.https.unwrap();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(tls) = tls_from(from, addr, &gw.files.cert_pem, H1).await {
            let mut c = h1(tls).await;
            if c.ready().await.is_ok() {
                let req = Request::get("/echo")
                    .header("host", format!("localhost:{}", addr.port()))
                    .body(empty())
                    .unwrap();
                if let Ok(resp) = c.send_request(req).await {
                    if resp.status() == StatusCode::OK {
                        return true;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_is_refused_past_its_limit_and_others_are_not() {
    let (_up, gw) = setup(|c| {
        c.set("server", "max_connections_per_ip", "20");
    })
    .await;
    let addr = gw.https.unwrap();
    let pem = gw.files.cert_pem.clone();

    // 20 idle connections from 127.0.0.1 are let in...
    let mut held = Vec::new();
    for i in 0..20 {
        let s = tls_from(ONE, addr, &pem, H1).await;
        held.push(s.unwrap_or_else(|e| panic!("connection {i} within the limit refused: {e}")));
    }
    // ...the 21st is closed at once, before TLS.
    let t = Instant::now();
    let r = tls_from(ONE, addr, &pem, H1).await;
    assert!(r.is_err(), "a 21st connection got in past a limit of 20");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "refused only after {:?}",
        t.elapsed()
    );
    let m = scrape(&gw).await;
    assert_eq!(value(&m, PER_IP), 1.0);
    assert_eq!(value(&m, TOTAL), 0.0, "the global cap was never reached");

    // Another address is served, and fast.
    let t = Instant::now();
    let mut other = h1(tls_from(TWO, addr, &pem, H1)
        .await
        .expect("127.0.0.2 refused"))
    .await;
    assert_eq!(get_on(&mut other, addr.port(), "/echo").await, 200);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "127.0.0.2 took {:?}",
        t.elapsed()
    );

    // Closing one of the 20 frees its slot.
    drop(held.pop());
    assert!(
        gets_in_within(ONE, &gw, Duration::from_secs(5)).await,
        "the slot of a closed connection was not given back"
    );
    // And the 20 are still open: the address is full again with one more.
    let mut again = Vec::new();
    while let Ok(s) = tls_from(ONE, addr, &pem, H1).await {
        again.push(s);
        assert!(again.len() <= 1, "more than 20 open from one address");
    }
    drop(held);
    drop(again);
}

#[tokio::test(flavor = "multi_thread")]
async fn ipv6_loopback_counts_as_one_address() {
    // Only where this host has ::1.
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no ::1 here: the IPv6 keying is covered by src/server/per_ip.rs's unit tests");
        return;
    }
    let (_up, gw) = setup(|c| {
        c.set("server", "listen", "\"[::1]:0\"");
        c.set("server", "max_connections_per_ip", "2");
        c.set("server", "ipv6_prefix_len", "64");
    })
    .await;
    let addr = gw.https.unwrap();
    assert!(addr.is_ipv6());
    let pem = gw.files.cert_pem.clone();
    let v6 = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
    let a = tls_from(v6, addr, &pem, H1).await.expect("first from ::1");
    let b = tls_from(v6, addr, &pem, H1).await.expect("second from ::1");
    assert!(
        tls_from(v6, addr, &pem, H1).await.is_err(),
        "a third connection from ::1 got past a limit of 2"
    );
    assert_eq!(value(&scrape(&gw).await, PER_IP), 1.0);
    drop((a, b));
    assert!(gets_in_within(v6, &gw, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_users_behind_a_trusted_proxy_are_unaffected() {
    let (_up, gw) = setup(|c| {
        c.set("server", "max_connections_per_ip", "5");
        c.set("server", "trusted_proxies", "[\"127.0.0.1/32\"]");
    })
    .await;
    let addr = gw.https.unwrap();
    let pem = gw.files.cert_pem.clone();
    // 50 connections from the proxy, all open at once, each answered.
    let mut conns = Vec::new();
    for i in 0..50 {
        let tls = tls_from(ONE, addr, &pem, H1)
            .await
            .unwrap_or_else(|e| panic!("trusted proxy's connection {i} refused: {e}"));
        conns.push(h1(tls).await);
    }
    for c in &mut conns {
        assert_eq!(get_on(c, addr.port(), "/echo").await, 200);
    }
    // An untrusted address keeps its limit of 5.
    let mut others = Vec::new();
    while let Ok(s) = tls_from(TWO, addr, &pem, H1).await {
        others.push(s);
        assert!(others.len() <= 5, "127.0.0.2 got past its limit");
    }
    assert_eq!(others.len(), 5);
    assert_eq!(value(&scrape(&gw).await, PER_IP), 1.0);
    // The proxy's 50 are still up.
    for c in &mut conns {
        assert_eq!(get_on(c, addr.port(), "/echo").await, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_browsers_behind_one_nat_address_with_six_connections_each_are_unaffected() {
    // The default limit (512), an untrusted address.
    let (_up, gw) = setup(|_| {}).await;
    let addr = gw.https.unwrap();
    let port = addr.port();
    let pem = gw.files.cert_pem.clone();
    let t = Instant::now();
    let browsers: Vec<_> = (0..50)
        .map(|_| {
            let pem = pem.clone();
            tokio::spawn(async move {
                // A browser opens its 6 connections together and uses them all.
                let mut conns = Vec::new();
                for _ in 0..6 {
                    let tls = tls_from(TWO, addr, &pem, H1).await.expect("refused");
                    conns.push(h1(tls).await);
                }
                let gets = conns.iter_mut().map(|c| get_on(c, port, "/echo"));
                for st in futures_util::future::join_all(gets).await {
                    assert_eq!(st, 200);
                }
                conns
            })
        })
        .collect();
    let mut all = Vec::new();
    for b in browsers {
        all.extend(b.await.expect("a browser failed"));
    }
    assert_eq!(all.len(), 300);
    // All 300 are open at once, and each still answers.
    for c in &mut all {
        assert_eq!(get_on(c, port, "/echo").await, 200);
    }
    eprintln!(
        "300 connections from one address opened and served in {:?}",
        t.elapsed()
    );
    assert_eq!(value(&scrape(&gw).await, PER_IP), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_tunnel_keeps_its_address_slot_until_closed() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (_up, gw) = setup(|c| {
        c.set("server", "max_connections_per_ip", "1");
    })
    .await;
    let addr = gw.https.unwrap();
    let pem = gw.files.cert_pem.clone();
    let stream = tls_from(ONE, addr, &pem, H1).await.unwrap();
    let url = format!("wss://localhost:{}/aspera/http-gwy/ws", addr.port());
    let (mut ws, resp) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("ping")).await.unwrap();
    assert!(ws.next().await.unwrap().unwrap().is_text());

    // The HTTP connection task has ended (the tunnel took its socket); the tunnel still holds
    // the address's one slot.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tls_from(ONE, addr, &pem, H1).await.is_err(),
        "a tunnel did not count against its address's limit"
    );
    assert_eq!(value(&scrape(&gw).await, PER_IP), 1.0);
    // Still working.
    ws.send(Message::text("still there")).await.unwrap();
    assert!(ws.next().await.unwrap().unwrap().is_text());

    // Closed, the slot comes back.
    ws.close(None).await.unwrap();
    drop(ws);
    assert!(
        gets_in_within(ONE, &gw, Duration::from_secs(5)).await,
        "the slot was not freed when the tunnel closed"
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 written by hand
// ---------------------------------------------------------------------------------------------

pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;
/// The `RST_STREAM` error code a client gives up a stream with.
pub(crate) const CANCEL: u32 = 0x8;

/// One frame: the 9-byte header (24-bit length, type, flags, 31-bit stream id) and `payload`.
pub(crate) fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET https://localhost:PORT{path}`: static-table indexes for `:method GET` (2) and
/// `:scheme https` (7), then `:path` (name index 4) and `:authority` (name index 1) as literals
/// without indexing, so the decoder's dynamic table is untouched.
pub(crate) fn get_block(port: u16, path: &str) -> Vec<u8> {
    let authority = format!("localhost:{port}");
    assert!(path.len() < 127 && authority.len() < 127);
    let mut b = vec![0x82, 0x87, 0x04, path.len() as u8];
    b.extend_from_slice(path.as_bytes());
    b.extend_from_slice(&[0x01, authority.len() as u8]);
    b.extend_from_slice(authority.as_bytes());
    b
}

/// How the gateway ended a hand-written HTTP/2 connection.
#[derive(Debug)]
enum Ending {
    /// A GOAWAY with this error code (11 = ENHANCE_YOUR_CALM, 9 = COMPRESSION_ERROR, ...; 0,
    /// NO_ERROR, would be a graceful close, not a refusal).
    GoAway(u32),
    /// Closed (or reset) without one.
    Closed,
}

/// Read the gateway's frames until it sends GOAWAY or closes.
async fn ending(mut r: tokio::io::ReadHalf<Tls>) -> Ending {
    loop {
        let mut head = [0u8; 9];
        if r.read_exact(&mut head).await.is_err() {
            return Ending::Closed;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if r.read_exact(&mut payload).await.is_err() {
            return Ending::Closed;
        }
        if head[3] == GOAWAY && payload.len() >= 8 {
            let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
            return Ending::GoAway(code);
        }
    }
}

/// The gateway still answers a new HTTP/2 client (and an HTTP/1.1 one) quickly.
async fn still_serving(gw: &GatewayProcess) {
    assert!(gw.child_alive(), "the gateway died");
    let t = Instant::now();
    let (st, _, _) = get(
        &https_client(&gw.files.cert_pem, true),
        &format!("{}/echo", gw.base()),
    )
    .await;
    assert_eq!(st, 200);
    let (st, _, _) = get(
        &https_client(&gw.files.cert_pem, false),
        &format!("{}/echo", gw.base()),
    )
    .await;
    assert_eq!(st, 200);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_rapid_reset_gets_goaway_and_others_are_served() {
    let (_up, gw) = setup(|_| {}).await;
    let addr = gw.https.unwrap();
    let tls = tls_from(ONE, addr, &gw.files.cert_pem, H2).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (r, mut w) = tokio::io::split(tls);
    let reader = tokio::spawn(ending(r));

    // 10,000 requests, each cancelled as soon as it is sent.
    const PAIRS: u32 = 10_000;
    let block = get_block(addr.port(), "/");
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for i in 0..PAIRS {
        let id = 2 * i + 1;
        out.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
        out.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    let t = Instant::now();
    let mut written = 0usize;
    for chunk in out.chunks(16 * 1024) {
        if w.write_all(chunk).await.is_err() || w.flush().await.is_err() {
            break;
        }
        written += chunk.len();
    }
    let end = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("no GOAWAY and no close within 10 s of a rapid-reset flood")
        .unwrap();
    eprintln!(
        "rapid reset: {end:?} after {:?}, {written} of {} bytes written",
        t.elapsed(),
        out.len()
    );
    assert!(
        matches!(end, Ending::GoAway(code) if code != 0) || matches!(end, Ending::Closed),
        "{end:?}: not cut off as abuse"
    );
    still_serving(&gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_continuation_flood_is_cut_off_and_others_are_served() {
    let (_up, gw) = setup(|_| {}).await;
    let addr = gw.https.unwrap();
    let tls = tls_from(ONE, addr, &gw.files.cert_pem, H2).await.unwrap();
    let (r, mut w) = tokio::io::split(tls);
    let reader = tokio::spawn(ending(r));

    // One header block that never ends: HEADERS without END_HEADERS, then 2,048 full
    // CONTINUATION frames (32 MiB) of valid literal headers, far past max_header_bytes (64 KiB).
    let mut block = get_block(addr.port(), "/");
    let value = [b'a'; 100];
    while block.len() < 16 * 1024 * 2049 {
        // Literal without indexing, new name: 0x00, name length, name, value length, value.
        block.push(0x00);
        block.push(7);
        block.extend_from_slice(b"x-flood");
        block.push(value.len() as u8);
        block.extend_from_slice(&value);
    }
    let mut frames = block.chunks(16 * 1024);
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(HEADERS, END_STREAM, 1, frames.next().unwrap()));
    let first = out.len();
    let t = Instant::now();
    let mut written = 0usize;
    let mut frames_sent = 0usize;
    if w.write_all(&out).await.is_ok() {
        written = first;
        for payload in frames.take(2048) {
            if w.write_all(&frame(CONTINUATION, 0, 1, payload))
                .await
                .is_err()
            {
                break;
            }
            written += 9 + payload.len();
            frames_sent += 1;
        }
        let _ = w.flush().await;
    }
    let end = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("no GOAWAY and no close within 10 s of a CONTINUATION flood")
        .unwrap();
    eprintln!(
        "CONTINUATION flood: {end:?} after {:?}; {frames_sent} CONTINUATION frames \
         ({written} bytes) written before the gateway stopped reading",
        t.elapsed()
    );
    assert!(
        matches!(end, Ending::GoAway(code) if code != 0) || matches!(end, Ending::Closed),
        "{end:?}: not cut off as abuse"
    );
    assert!(
        frames_sent < 2048,
        "all 32 MiB of one header block were taken in: the gateway buffered it"
    );
    still_serving(&gw).await;
}

// ---------------------------------------------------------------------------------------------
// The figure
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn another_clients_p99_while_one_address_tries_to_hold_every_slot() {
    // The attack of the issue: one address opening more connections than the gateway has
    // slots. The per-address limit (100) is below the global cap (150), which is below what
    // the attacker tries (200): without the limit the attacker would hold all 150 and the
    // other client would wait in the backlog.
    const LIMIT: usize = 100;
    let (_up, gw) = setup(|c| {
        c.set("server", "max_connections_per_ip", &LIMIT.to_string());
        c.set("server", "max_connections", "150");
    })
    .await;
    let addr = gw.https.unwrap();
    let pem = gw.files.cert_pem.clone();

    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..2 * LIMIT {
        match tls_from(ONE, addr, &pem, H1).await {
            Ok(s) => held.push(s),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(held.len(), LIMIT);
    assert_eq!(refused, LIMIT);

    // Another client: a fresh keep-alive connection, 200 small GETs one after another.
    let t = Instant::now();
    let mut c = h1(tls_from(TWO, addr, &pem, H1)
        .await
        .expect("127.0.0.2 refused"))
    .await;
    let connect = t.elapsed();
    let mut times = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        assert_eq!(get_on(&mut c, addr.port(), "/echo").await, 200);
        times.push(t.elapsed());
    }
    times.sort();
    let p50 = times[99];
    let p99 = times[197];
    let max = times[199];
    eprintln!(
        "another client while 127.0.0.1 holds {} connections ({} refused): connect+TLS {:?}, \
         200 GETs p50 {:?}, p99 {:?}, max {:?}",
        held.len(),
        refused,
        connect,
        p50,
        p99,
        max
    );
    assert!(connect < Duration::from_millis(500), "connect {connect:?}");
    assert!(p99 < Duration::from_millis(500), "p99 {p99:?}");
    let m = scrape(&gw).await;
    assert_eq!(value(&m, PER_IP), LIMIT as f64);
    assert_eq!(
        value(&m, TOTAL),
        0.0,
        "the attacker never reached the global cap"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_for_the_global_cap_is_counted_once_per_wait() {
    let (_up, gw) = setup(|c| {
        c.set("server", "max_connections", "2");
    })
    .await;
    let addr = gw.https.unwrap();
    let pem = gw.files.cert_pem.clone();
    let a = tls_from(ONE, addr, &pem, H1).await.unwrap();
    let _b = tls_from(TWO, addr, &pem, H1).await.unwrap();
    // Two more wait in the backlog: the accept loop waits once.
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let pem = pem.clone();
            tokio::spawn(async move { tls_from(TWO, addr, &pem, H1).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(waiting.iter().all(|w| !w.is_finished()));
    assert_eq!(value(&scrape(&gw).await, TOTAL), 1.0);
    // One slot frees: one waiting client gets in, and the loop waits again.
    drop(a);
    let mut waiting = waiting.into_iter();
    let first = waiting.next().unwrap();
    let second = waiting.next().unwrap();
    let got_in = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if first.is_finished() || second.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        got_in.is_ok(),
        "no waiting client got in after a slot freed"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(value(&scrape(&gw).await, TOTAL), 2.0);
    assert_eq!(value(&scrape(&gw).await, PER_IP), 0.0);
}
