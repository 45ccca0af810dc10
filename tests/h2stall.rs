//! HTTP/2 streams whose client never takes their response, over real sockets and real TLS: the
//! gateway's per-connection stall watchdog resets them after `server.body_idle_timeout` and gives
//! back their connections to Faspex, while a slow download that keeps reading is left alone.
//!
//! The stalling client is written frame by frame: it sets `SETTINGS_INITIAL_WINDOW_SIZE` to 0 and
//! never sends `WINDOW_UPDATE`, so its socket stays writable and only a per-stream timer can see
//! that nothing moves.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use http::{Request, StatusCode, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::flows::eventually;
use crate::limits::{
    frame, get_block, get_on, h1, CANCEL, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PREFACE,
    RST_STREAM, SETTINGS,
};
use crate::util::*;

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

const ONE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));

/// `server.body_idle_timeout` in these tests.
const STALL: Duration = Duration::from_secs(2);

/// An upstream and a gateway in front of it with every path public, the public-request rate out
/// of the way, a 2 s body idle timeout, 8 connections to Faspex (6 of them for public requests)
/// and a short wait for one.
async fn setup() -> (TestUpstream, GatewayProcess) {
    let upstream = TestUpstream::start().await;
    let files = TestFiles::new();
    let mut cfg = ConfigBuilder::new(&files, &upstream.url());
    cfg.set("faspex", "public_paths", "[\"/\"]");
    cfg.set("policy", "public_requests_per_ip_per_minute", "1000000");
    cfg.set(
        "server",
        "body_idle_timeout",
        &format!("\"{}s\"", STALL.as_secs()),
    );
    cfg.set("upstream", "max_connections", "8");
    cfg.set("upstream", "connect_timeout", "\"500ms\"");
    let gw = tokio::task::block_in_place(|| GatewayProcess::start(files, &cfg));
    (upstream, gw)
}

/// A public GET of `/echo` on a fresh HTTP/1.1 connection from `from`: its status.
async fn public_get_from(from: IpAddr, gw: &GatewayProcess) -> StatusCode {
    let addr = gw.https.unwrap();
    let tls = tls_from(from, addr, &gw.files.cert_pem, &[b"http/1.1"]).await;
    get_on(&mut h1(tls).await, addr.port(), "/echo").await
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 written by hand
// ---------------------------------------------------------------------------------------------

// (the frame types and flags both files need are `limits.rs`'s)
const PING: u8 = 0x6;
const ACK: u8 = 0x1;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

/// A TLS connection from the local address `from` (see `limits::tls_from`).
async fn tls_from(from: IpAddr, to: SocketAddr, pem: &str, alpn: &[&[u8]]) -> Tls {
    crate::limits::tls_from(from, to, pem, alpn)
        .await
        .expect("TLS connection")
}

/// A frame the gateway sent.
#[derive(Debug)]
struct Frame {
    ty: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Read the gateway's frames into `tx` until it closes. Reading the socket grants the gateway no
/// flow-control window: only `WINDOW_UPDATE` frames would, and none is sent.
async fn read_frames(mut r: tokio::io::ReadHalf<Tls>, tx: mpsc::UnboundedSender<Frame>) {
    loop {
        let mut head = [0u8; 9];
        if r.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if r.read_exact(&mut payload).await.is_err() {
            return;
        }
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let f = Frame {
            ty: head[3],
            flags: head[4],
            stream,
            payload,
        };
        if tx.send(f).is_err() {
            return;
        }
    }
}

/// The next frame the gateway sends within `within`, if any.
async fn next_frame<T>(rx: &mut mpsc::UnboundedReceiver<T>, within: Duration) -> Option<T> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

/// A stalling client on its own connection from `from`: window 0 for every stream, `streams`
/// downloads of 1 MB, never a WINDOW_UPDATE. Its frames go to `tx`, tagged with `conn`.
async fn stall_from(
    from: IpAddr,
    gw: &GatewayProcess,
    streams: u32,
    conn: usize,
    tx: mpsc::UnboundedSender<(usize, Frame)>,
) -> tokio::io::WriteHalf<Tls> {
    let addr = gw.https.unwrap();
    let tls = tls_from(from, addr, &gw.files.cert_pem, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (r, mut w) = tokio::io::split(tls);
    let (one_tx, mut one_rx) = mpsc::unbounded_channel();
    tokio::spawn(read_frames(r, one_tx));
    tokio::spawn(async move {
        while let Some(f) = one_rx.recv().await {
            if tx.send((conn, f)).is_err() {
                return;
            }
        }
    });
    let mut settings = SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
    settings.extend_from_slice(&0u32.to_be_bytes());
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &settings));
    let block = get_block(addr.port(), "/stream?bytes=1000000");
    for i in 0..streams {
        out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, &block));
    }
    w.write_all(&out).await.unwrap();
    w.flush().await.unwrap();
    w
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_whose_client_grants_no_window_are_reset_and_free_their_upstream_connections() {
    // Six addresses (127.0.0.1 to .6), one connection each, 8 streams on each: together they
    // ask for far more than the public share of the connections to Faspex (6 of 8), whether or
    // not one address may hold all of it.
    const ADDRESSES: u8 = 6;
    const STREAMS: u32 = 8;
    const PUBLIC_SHARE: usize = 6;
    let victim = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
    let (up, gw) = setup().await;

    let (tx, mut frames) = mpsc::unbounded_channel();
    let t0 = Instant::now();
    let mut writers = Vec::new();
    for i in 0..ADDRESSES {
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i));
        writers.push(stall_from(from, &gw, STREAMS, usize::from(i), tx.clone()).await);
    }
    drop(tx);

    // The requests were forwarded: the whole public share is open to the upstream.
    assert!(
        eventually(Duration::from_secs(3), || up.open_connections()
            >= PUBLIC_SHARE)
        .await,
        "only {} connections open to the upstream",
        up.open_connections()
    );
    eprintln!(
        "after {:?}: {} connections open to the upstream",
        t0.elapsed(),
        up.open_connections()
    );

    // While they stall, another client's public request finds no connection to Faspex free.
    let during = public_get_from(victim, &gw).await;
    let checked_at = t0.elapsed();
    assert!(
        checked_at < STALL,
        "the check during the stall came too late ({checked_at:?}) to mean anything"
    );
    assert_eq!(
        during,
        StatusCode::SERVICE_UNAVAILABLE,
        "a public GET while the stalled streams hold the public share"
    );

    // Every stream is reset (CANCEL) once it has waited on its client for body_idle_timeout,
    // and not before; no connection is closed.
    let total = usize::from(ADDRESSES) * STREAMS as usize;
    let mut responses = 0;
    let mut reset = std::collections::BTreeSet::new();
    let mut first_reset = None;
    while reset.len() < total {
        let Some((conn, f)) = next_frame(&mut frames, STALL + Duration::from_secs(5)).await else {
            panic!(
                "after {:?}: {} of {total} streams reset; the rest were left open",
                t0.elapsed(),
                reset.len()
            );
        };
        match f.ty {
            HEADERS => responses += 1,
            RST_STREAM => {
                let code = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
                assert_eq!(code, CANCEL, "stream {} reset with code {code}", f.stream);
                first_reset.get_or_insert(t0.elapsed());
                reset.insert((conn, f.stream));
            }
            GOAWAY => panic!("the gateway closed connection {conn}: {f:?}"),
            _ => {}
        }
    }
    let all_reset = t0.elapsed();
    let first_reset = first_reset.unwrap();
    eprintln!(
        "{responses} responses started; first stream reset after {first_reset:?}, all {total} \
         after {all_reset:?} (body_idle_timeout {STALL:?})"
    );
    assert_eq!(responses, total, "every request was answered with headers");
    assert!(
        first_reset >= STALL - Duration::from_millis(200),
        "a stream was reset after {first_reset:?}, before body_idle_timeout"
    );
    assert!(
        all_reset <= STALL + Duration::from_secs(3),
        "the last stream was reset only after {all_reset:?}"
    );

    // Their connections to the upstream are gone (a response abandoned mid-body is not pooled).
    assert!(
        eventually(Duration::from_secs(2), || up.open_connections() == 0).await,
        "{} connections still open to the upstream after the streams were reset",
        up.open_connections()
    );

    // The connections carry on: the first still answers a PING.
    writers[0]
        .write_all(&frame(PING, 0, 0, b"stillopn"))
        .await
        .unwrap();
    writers[0].flush().await.unwrap();
    loop {
        let (conn, f) = next_frame(&mut frames, Duration::from_secs(5))
            .await
            .expect("no PING ACK: the connection is gone");
        assert_ne!(f.ty, GOAWAY, "the gateway closed connection {conn}: {f:?}");
        if conn == 0 && f.ty == PING && f.flags & ACK != 0 {
            assert_eq!(f.payload, b"stillopn");
            break;
        }
    }

    // And the slots came back: public requests from the other client and from an address that
    // stalled get through.
    assert_eq!(public_get_from(victim, &gw).await, StatusCode::OK);
    assert_eq!(public_get_from(ONE, &gw).await, StatusCode::OK);
    drop(writers);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_http2_download_that_keeps_reading_is_not_cut() {
    const BYTES: u64 = 50_000_000;
    const PAUSE_EVERY: u64 = 8_000_000;
    // Shorter than body_idle_timeout, and long enough for the client's window to fill, so the
    // gateway's side of the stream waits on it for most of each pause.
    const PAUSE: Duration = Duration::from_millis(1500);
    let (_up, gw) = setup().await;
    let client = https_client(&gw.files.cert_pem, true);
    let req = Request::get(format!("{}/stream?bytes={BYTES}", gw.base()))
        .body(empty())
        .unwrap();
    let t = Instant::now();
    let resp = client.request(req).await.expect("request failed");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    let mut body = resp.into_body();
    let mut got = 0u64;
    let mut pauses = 0;
    let mut next_pause = PAUSE_EVERY;
    while let Some(f) = body.frame().await {
        let f = f.unwrap_or_else(|e| panic!("the download broke off after {got} bytes: {e}"));
        if let Some(d) = f.data_ref() {
            got += d.len() as u64;
        }
        if got >= next_pause {
            tokio::time::sleep(PAUSE).await;
            pauses += 1;
            next_pause += PAUSE_EVERY;
        }
    }
    eprintln!(
        "{got} bytes in {:?} with {pauses} pauses of {PAUSE:?}",
        t.elapsed()
    );
    assert_eq!(got, BYTES);
    assert!(pauses >= 6);
}
