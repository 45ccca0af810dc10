//! Listeners and connections: accept, the connection caps, TLS (with a handshake timeout),
//! HTTP/1.1 or HTTP/2 by ALPN with every HTTP/2 limit set explicitly, the header-read timeout that
//! also bounds idle keep-alive connections (over HTTP/1.1 each connection's one timer, [`head`]),
//! the header-size limit, the swappable certificate
//! ([`tls::CertStore`], which a reload refills) and graceful shutdown.
//!
//! Every connection holds one permit of a semaphore sized `server.max_connections`; the accept
//! loop takes a permit *before* accepting, so past the cap new clients wait in the kernel's
//! backlog instead of costing memory (each time the loop finds no permit free and has to wait,
//! `connections_refused_total{reason="total"}` counts one).
//!
//! Every accepted connection also takes a place under its address's
//! `server.max_connections_per_ip` ([`per_ip`]: an IPv4 address or an IPv6 prefix of
//! `server.ipv6_prefix_len` bits; `server.trusted_proxies` exempt). Past it the connection is
//! closed at once, before TLS, and counted (`reason="per_ip"`), so that one address cannot take
//! every slot of the global cap. Both places ride in one [`ConnSlots`], shared through
//! [`ConnPermit`] by the connection task and any WebSocket tunnel it upgrades into, and are given
//! back when the last holder is gone. Both limits are read at start only.
//!
//! A client that stops reading is cut off after `server.body_idle_timeout`: by
//! [`WriteStallGuard`] once its socket takes no more bytes. Over HTTP/2 the socket stays
//! writable when a client simply grants a stream no flow-control window, and hyper just stops
//! asking that stream's body for more, so each HTTP/2 connection runs a stall watchdog too: every
//! stream task is spawned with a `StreamWatch` (`StreamExec`), its response body (`GuardedBody`)
//! marks when it starts waiting on the client (its headers went out, or hyper took a frame of at
//! most 16,375 bytes and has not asked for the next), and the connection's timer, which ticks every
//! quarter of the shorter of `server.header_read_timeout` and `server.body_idle_timeout`, aborts
//! the task of any stream that has waited on the client that long. That drops the body, which
//! gives back its connection to Faspex and its slot, and h2 resets the stream (`CANCEL`); the
//! connection and its other streams carry on. A body waiting on Faspex is not the client's
//! stall: the transfer's own idle timer covers it.
//!
//! Shutdown stops the accept loops, asks every connection to finish its in-flight requests, and
//! waits for all permits to come back, up to `server.shutdown_timeout`.

mod head;
pub mod per_ip;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use anyhow::Context;
use futures_util::future::Either;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::conn::stall::WriteStallGuard;
use crate::conn::{ConnInfo, ConnPermit};
use crate::proxy::Gateway;
use per_ip::{Admission, PerIpGuard, PerIpLimit};
pub use tls::CertStore;

/// A connection's places: one of `server.max_connections` and, unless its peer is a trusted
/// proxy, one of its address's `server.max_connections_per_ip`. Held (through [`ConnPermit`]) by
/// the connection task and by a WebSocket tunnel it upgrades into, which outlives that task; both
/// places are given back when the last holder drops it.
pub struct ConnSlots {
    _global: OwnedSemaphorePermit,
    _per_ip: Option<PerIpGuard>,
}

/// What every connection needs, shared.
struct Shared {
    gateway: Gateway,
    http1: hyper::server::conn::http1::Builder,
    /// `server.max_header_bytes`, for the HTTP/2 builder each connection makes ([`http2_builder`]).
    max_header_bytes: usize,
    tls_handshake_timeout: Duration,
    /// `server.header_read_timeout`: how long an HTTP/1.1 connection may wait for a request's
    /// head ([`head`]), and an HTTP/2 connection sit with no open stream.
    idle_limit: Duration,
    /// How long a client may leave the gateway's writes unread (`server.body_idle_timeout`).
    write_stall_limit: Duration,
    /// One permit per open connection.
    connections: Arc<Semaphore>,
    /// Open connections per address.
    per_ip: Arc<PerIpLimit>,
}

/// A bound, not yet running, gateway server.
pub struct Server {
    shared: Arc<Shared>,
    https: Option<(TcpListener, TlsAcceptor)>,
    http: Option<TcpListener>,
    max_connections: u32,
    shutdown_timeout: Duration,
}

/// What a signal asks of the running gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGHUP: reload the configuration (and the certificate).
    Reload,
    /// SIGTERM/SIGINT: stop accepting, finish in-flight requests, exit.
    Shutdown,
}

impl Server {
    /// Bind the listeners; the HTTPS listener serves `certs` (loaded when the app was built,
    /// required when `server.listen` is on). Errors here are start-up errors.
    pub async fn bind(
        cfg: &Config,
        gateway: Gateway,
        certs: Option<Arc<CertStore>>,
    ) -> anyhow::Result<Server> {
        let s = &cfg.server;
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            // `server.header_read_timeout` is each connection's [`head::HeadClock`], not
            // hyper's timer (which made one per request).
            .header_read_timeout(None)
            .max_header_size(s.max_header_bytes)
            .max_buf_size(s.max_header_bytes.max(256 * 1024))
            .keep_alive(true);
        let max_connections = u32::try_from(s.max_connections)
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);
        let shared = Arc::new(Shared {
            gateway,
            http1,
            max_header_bytes: s.max_header_bytes,
            tls_handshake_timeout: s.tls_handshake_timeout,
            idle_limit: s.header_read_timeout,
            write_stall_limit: s.body_idle_timeout,
            connections: Arc::new(Semaphore::new(max_connections as usize)),
            per_ip: PerIpLimit::new(
                s.max_connections_per_ip,
                s.ipv6_prefix_len,
                s.trusted_proxies.clone(),
            ),
        });

        let https = match s.listen {
            Some(addr) => {
                let Some(certs) = certs else {
                    anyhow::bail!("tls.cert_file and tls.key_file are required for server.listen")
                };
                let acceptor = TlsAcceptor::from(tls::server_config(certs)?);
                let listener = bind(addr, "server.listen").await?;
                Some((listener, acceptor))
            }
            None => None,
        };
        let http = match s.http_listen {
            Some(addr) => Some(bind(addr, "server.http_listen").await?),
            None => None,
        };
        Ok(Server {
            shared,
            https,
            http,
            max_connections,
            shutdown_timeout: s.shutdown_timeout,
        })
    }

    /// The address of the HTTPS listener, if on.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serve until `stop` turns true (or its sender is gone), then drain. Reloads are the
    /// app's: it swaps the certificate in the [`CertStore`] it gave [`Server::bind`].
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut loops = Vec::new();
        if let Some((listener, acceptor)) = self.https {
            tracing::info!(addr = %listener.local_addr()?, "HTTPS listener ready");
            loops.push(tokio::spawn(accept_loop(
                listener,
                Some(acceptor),
                self.shared.clone(),
                stop_rx.clone(),
            )));
        }
        if let Some(listener) = self.http {
            tracing::info!(addr = %listener.local_addr()?, "plain-HTTP listener ready");
            loops.push(tokio::spawn(accept_loop(
                listener,
                None,
                self.shared.clone(),
                stop_rx.clone(),
            )));
        }

        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                break;
            }
        }

        tracing::info!(deadline = ?self.shutdown_timeout, "shutting down: no new connections, finishing in-flight requests");
        let _ = stop_tx.send(true);
        for l in loops {
            let _ = l.await;
        }
        let drained = tokio::time::timeout(
            self.shutdown_timeout,
            self.shared.connections.acquire_many(self.max_connections),
        )
        .await;
        match drained {
            Ok(_) => tracing::info!("all connections finished"),
            Err(_) => tracing::warn!(
                open = self.max_connections as usize - self.shared.connections.available_permits(),
                "shutdown deadline reached; closing the remaining connections"
            ),
        }
        Ok(())
    }
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{key}: cannot listen on {addr}"))
}

/// The HTTP/2 settings, with `exec` (one per connection: it spawns that connection's streams).
fn http2_builder(
    max_header_bytes: usize,
    exec: StreamExec,
) -> hyper::server::conn::http2::Builder<StreamExec> {
    // Every HTTP/2 limit is set here rather than left to hyper's and h2's defaults, which
    // are documented as liable to change in a minor release (docs/security.md, "How a request is
    // handled", lists them). Not offered at all: extended CONNECT (RFC 8441), so WebSocket
    // tunnels exist only over HTTP/1.1 (hyper leaves it off unless asked).
    let mut http2 = hyper::server::conn::http2::Builder::new(exec);
    http2
        .timer(TokioTimer::new())
        // Streams one connection may have open at once: each is a task and possibly an
        // upstream request. A browser uses far fewer; 256 keeps one connection from fanning
        // out into thousands of upstream requests.
        .max_concurrent_streams(256)
        // The decoded header block a request may carry, the same bound as HTTP/1.1's
        // (`server.max_header_bytes`). h2 also derives from it (and the frame size) how many
        // CONTINUATION frames one header block may take before the connection gets GOAWAY,
        // so a CONTINUATION flood is cut off instead of buffered.
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        // The HPACK dynamic table the client may make us keep, per connection: the RFC's
        // 4 KiB.
        .header_table_size(4096)
        // Streams the client resets before the gateway has even accepted them (the
        // "rapid reset" attack, CVE-2023-44487): past 100 pending at once the connection
        // gets GOAWAY (ENHANCE_YOUR_CALM). A browser cancelling a page's requests when the
        // user navigates away stays far below; a flood of thousands does not.
        .max_pending_accept_reset_streams(100)
        // Streams the gateway itself has to reset because the client broke the protocol on
        // them: past 1024 on one connection it gets GOAWAY (RUSTSEC-2024-0003).
        .max_local_error_reset_streams(1024)
        // The largest frame the client may send: 16 KiB, the protocol's default and minimum.
        // Larger frames save little per byte and let one frame hold more memory.
        .max_frame_size(16 * 1024)
        // Response bytes queued per stream ahead of the client's flow-control window. h2
        // never queues more than the window the client granted, so a client that stops
        // reading holds at most this per stream; 400 KiB keeps a download's pipe full.
        .max_send_buf_size(400 * 1024)
        // Fixed receive windows, no BDP estimation (which would grow them with the network
        // and make a connection's buffered upload bytes unpredictable). 4 MiB per connection
        // bounds what one connection can make the gateway buffer, however many streams it
        // opens; one stream may use all of it. With 1 MiB per stream an upload over HTTP/2
        // stalled on window updates even on loopback: 256 MiB uploads by curl, alternating
        // with HTTP/1.1 ones, ran at 0.54x-0.60x HTTP/1.1's speed, and at 0.75x-0.85x with
        // 4 MiB (2 MiB: 0.68x; 16 MiB no better than 4). 4 MiB per stream carries about
        // 670 Mbit/s per upload at 50 ms round trip. Set before the sizes:
        // `adaptive_window(true)` would reset them.
        .adaptive_window(false)
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(4 << 20)
        // A PING every 30 s, and the connection closed if it is not answered within 20 s:
        // finds peers that vanished during a long transfer (NAT timeout, pulled cable),
        // which TCP alone may not notice for hours.
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    http2
}

/// Turn SIGHUP, SIGTERM and SIGINT into [`Control`] messages.
pub fn signal_control() -> anyhow::Result<tokio::sync::mpsc::Receiver<Control>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let cmd = tokio::select! {
                _ = hup.recv() => Control::Reload,
                _ = term.recv() => Control::Shutdown,
                _ = int.recv() => Control::Shutdown,
            };
            if tx.send(cmd).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// The next connection on `listener`, or `None` once `stop` changes. A failed accept (out of
/// file descriptors and the like) is logged, naming `listener_name`, and retried after 50 ms
/// instead of spinning. Every listener's loop (gateway, admin, helpdesk) takes its connections
/// here.
pub async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
    listener_name: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return None,
        };
        match accepted {
            Ok(a) => return Some(a),
            Err(e) => {
                tracing::warn!(error = %e, listener = listener_name, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // Try first, so that the moment the cap is reached is counted: once per time the loop
        // has to wait, not once per client waiting in the backlog (the loop cannot see those).
        let permit = match shared.connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return,
            Err(TryAcquireError::NoPermits) => {
                shared.gateway.metrics().connection_refused("total");
                tracing::debug!("server.max_connections reached; new clients wait");
                tokio::select! {
                    p = shared.connections.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                    _ = stop.changed() => return,
                }
            }
        };
        let Some((stream, peer)) = accept(&listener, &mut stop, "server").await else {
            return;
        };
        let per_ip = match shared.per_ip.admit(peer.ip()) {
            Admission::Counted(guard) => Some(guard),
            Admission::Exempt => None,
            Admission::Refused => {
                // Closed before TLS or any read: a refused connection costs one accept and
                // one close, and its global permit goes straight back (dropped here).
                shared.gateway.metrics().connection_refused("per_ip");
                tracing::debug!(%peer, "server.max_connections_per_ip reached; connection closed");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        // Shared so that an upgraded (WebSocket) tunnel, which outlives the HTTP connection
        // task, keeps counting against both caps and is waited for on shutdown.
        let permit = ConnPermit::new(ConnSlots {
            _global: permit,
            _per_ip: per_ip,
        });
        tokio::spawn(async move {
            serve_connection(stream, peer, tls, &shared, stop, permit).await;
        });
    }
}

// A future keeps room for every local that is alive across one of its awaits, for as long as
// it lives, in whichever state it is; a value moved from one local to another keeps both
// places. A connection's task lives as long as the connection, idle keep-alive time included, so
// the serving functions below hand each large value on once: the TLS handshake runs boxed (its
// room is given back when it ends), the TLS stream is consumed before anything is awaited, and
// the HTTP connection (about 2 KB with its TLS stream) is boxed where it is made. An idle HTTP/1.1
// connection's task is thereby a few hundred bytes instead of 7 KB.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: &Shared,
    stop: watch::Receiver<bool>,
    permit: ConnPermit,
) {
    let stream = WriteStallGuard::new(stream, shared.write_stall_limit);
    let Some(acceptor) = tls else {
        let info = ConnInfo {
            peer,
            scheme: "http",
        };
        return serve_http1(TokioIo::new(stream), info, shared, stop, permit).await;
    };
    // (a block, so that the TLS stream's local ends before the connection is served)
    let served = {
        let Some(stream) = Box::pin(handshake(acceptor, stream, peer, shared)).await else {
            return;
        };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let info = ConnInfo {
            peer,
            scheme: "https",
        };
        if h2 {
            Either::Left(Box::pin(serve_http2(
                TokioIo::new(stream),
                info,
                shared,
                stop,
            )))
        } else {
            Either::Right(serve_http1(
                TokioIo::new(stream),
                info,
                shared,
                stop,
                permit,
            ))
        }
    };
    served.await
}

/// The TLS handshake, within `server.tls_handshake_timeout`; `None` (logged) when it failed.
async fn handshake(
    acceptor: TlsAcceptor,
    stream: WriteStallGuard<TcpStream>,
    peer: SocketAddr,
    shared: &Shared,
) -> Option<tokio_rustls::server::TlsStream<WriteStallGuard<TcpStream>>> {
    match tokio::time::timeout(shared.tls_handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Serve HTTP/1.1 on `io`. Not an `async fn`: the connection is made (and boxed) here, so the
/// future returned holds it once, not beside the `io` it was made from.
fn serve_http1<I>(
    io: I,
    info: ConnInfo,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
    permit: ConnPermit,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let clock = head::HeadClock::new();
    let service = {
        let gateway = shared.gateway.clone();
        let clock = clock.clone();
        service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let gateway = gateway.clone();
            let wait = clock.serving();
            // Only a request that asks to upgrade can become a tunnel, which holds the
            // connection's places after this task ends: the others go without (a map allocated,
            // filled and freed per request, about 1 % of a small GET's instructions).
            if req.headers().contains_key(hyper::header::UPGRADE) {
                req.extensions_mut().insert(permit.clone());
            }
            async move {
                let resp = gateway.handle(req, info).await;
                Ok::<_, Infallible>(resp.map(|inner| head::Clocked { inner, _wait: wait }))
            }
        })
    };
    let mut conn = Box::pin(shared.http1.serve_connection(io, service).with_upgrades());
    let limit = shared.idle_limit;
    async move {
        let served = async {
            tokio::select! {
                biased;
                r = conn.as_mut() => r,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            }
        };
        // (also while a graceful shutdown waits: the connection may be mid-head)
        let Some(result) = head::within(&clock, limit, served).await else {
            tracing::debug!(
                peer = %info.peer,
                "no request head within server.header_read_timeout: connection closed"
            );
            return;
        };
        if let Err(e) = result {
            tracing::debug!(peer = %info.peer, error = %e, "HTTP/1 connection ended with an error");
        }
    }
}

async fn serve_http2<I>(io: I, info: ConnInfo, shared: &Shared, mut stop: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // hyper has no header-read timer for HTTP/2, so an idle connection would stay open forever:
    // close it gracefully once it has had no open stream for `header_read_timeout`.
    let idle_limit = shared.idle_limit;
    // Nor does it time a stream whose client grants no flow-control window: the socket stays
    // writable (so `WriteStallGuard` sees nothing) and hyper just stops asking the body for
    // more. The watchdog below cuts such a stream after `body_idle_timeout`.
    let stall_limit = shared.write_stall_limit;
    let tick = (idle_limit.min(stall_limit) / 4).max(Duration::from_millis(10));
    let activity = Arc::new(StreamActivity::new());
    let service = {
        let gateway = shared.gateway.clone();
        let activity = activity.clone();
        service_fn(move |req| {
            let gateway = gateway.clone();
            let guard = activity.begin();
            async move {
                let resp = gateway.handle(req, info).await;
                // Polled inside the stream's task, which `StreamExec` gave its watch.
                let watch = WATCH.try_with(Arc::clone).ok();
                Ok::<_, Infallible>(resp.map(|body| GuardedBody::new(body, guard, watch)))
            }
        })
    };
    let exec = StreamExec {
        conn: activity.clone(),
    };
    let http2 = http2_builder(shared.max_header_bytes, exec);
    let conn = http2.serve_connection(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = stop.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            // Also while closing: a graceful shutdown waits for every stream, stalled ones too.
            _ = tokio::time::sleep(tick) => {
                let cut = activity.cut_stalled(stall_limit);
                if cut > 0 {
                    tracing::debug!(
                        peer = %info.peer,
                        streams = cut,
                        limit = ?stall_limit,
                        "HTTP/2 streams reset: the client took none of their response for \
                         server.body_idle_timeout"
                    );
                }
                if !closing && activity.idle_for() >= idle_limit {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %info.peer, error = %e, "HTTP/2 connection ended with an error");
    }
}

/// Open streams on one HTTP/2 connection, and since when it has had none; and the watches of its
/// streams, for the stall watchdog.
struct StreamActivity {
    started: std::time::Instant,
    open: AtomicUsize,
    /// Milliseconds after `started` at which the last stream ended.
    idle_since_ms: AtomicU64,
    /// Every stream task spawned on the connection, ended ones pruned as it goes.
    watches: Mutex<Vec<Weak<StreamWatch>>>,
}

impl StreamActivity {
    fn new() -> Self {
        StreamActivity {
            started: std::time::Instant::now(),
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            watches: Mutex::new(Vec::new()),
        }
    }

    fn begin(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.clone())
    }

    /// How long the connection has had no open stream (zero while one is open).
    fn idle_for(&self) -> Duration {
        if self.open.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        self.started.elapsed().saturating_sub(since)
    }

    fn watches(&self) -> std::sync::MutexGuard<'_, Vec<Weak<StreamWatch>>> {
        self.watches.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watch a new stream task. Ended ones are dropped from the list whenever it is full, and
    /// it grows only when over half of it is still live, so it stays within about twice the
    /// streams open at once, at a constant cost per stream.
    fn watch(&self, w: &Arc<StreamWatch>) {
        let mut watches = self.watches();
        if watches.len() == watches.capacity() {
            watches.retain(|w| w.strong_count() > 0);
            if watches.len() > watches.capacity() / 2 {
                let more = watches.capacity().max(8);
                watches.reserve(more);
            }
        }
        watches.push(Arc::downgrade(w));
    }

    /// The watchdog's round: reset every stream whose response has waited on the client for
    /// `limit`. How many were.
    fn cut_stalled(&self, limit: Duration) -> usize {
        let mut cut = 0;
        self.watches().retain(|w| match w.upgrade() {
            None => false,
            Some(w) => {
                cut += usize::from(w.cut_if_stalled(limit));
                true
            }
        });
        cut
    }
}

/// Held by a stream's response body; the stream counts as open until the body is done.
struct StreamGuard(Arc<StreamActivity>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let now = self.0.started.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(now, Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

tokio::task_local! {
    /// The watch of the stream task being polled, for its response body to report to.
    static WATCH: Arc<StreamWatch>;
}

/// The executor of one HTTP/2 connection: hyper hands it each stream's task (which sends the
/// response and pipes its body), and it spawns it on tokio as [`TokioExecutor`] would, with a
/// [`StreamWatch`] that the stream's [`GuardedBody`] reports to, that the connection's watchdog
/// reads, and through which it can abort the task.
///
/// [`TokioExecutor`]: hyper_util::rt::TokioExecutor
#[derive(Clone)]
struct StreamExec {
    conn: Arc<StreamActivity>,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let watch = Arc::new(StreamWatch::new());
        let task = tokio::spawn(WATCH.scope(watch.clone(), fut));
        let _ = watch.abort.set(task.abort_handle());
        self.conn.watch(&watch);
    }
}

/// What one stream's response body is waiting on, as the watchdog sees it.
///
/// `state` is `IDLE` while the body is not waiting on the client (no response yet, or hyper is
/// polling it, or it answered `Pending`: then it waits on Faspex, whose own idle timer covers
/// it), `WAITING | ms` once it has handed hyper a frame (or its response headers went out) and
/// hyper has not asked for more since `ms` after `base`, and `CUT` once the watchdog has aborted
/// the stream's task.
struct StreamWatch {
    base: std::time::Instant,
    state: AtomicU64,
    abort: OnceLock<tokio::task::AbortHandle>,
}

const IDLE: u64 = 0;
const WAITING: u64 = 1 << 63;
const CUT: u64 = u64::MAX;

impl StreamWatch {
    fn new() -> Self {
        StreamWatch {
            base: std::time::Instant::now(),
            state: AtomicU64::new(IDLE),
            abort: OnceLock::new(),
        }
    }

    /// The body waits on the client from now.
    fn waiting_on_client(&self) {
        let ms = (self.base.elapsed().as_millis() as u64).min(!WAITING - 1);
        self.state.store(WAITING | ms, Ordering::Release);
    }

    /// hyper polls the body: it waits on the client no more. False if the stream was cut.
    fn polled(&self) -> bool {
        if self.state.swap(IDLE, Ordering::AcqRel) == CUT {
            self.state.store(CUT, Ordering::Release);
            return false;
        }
        true
    }

    /// Abort the stream's task if its body has waited on the client for `limit`. Dropping the
    /// task drops the body (and with it the connection to Faspex and its slot) and the stream's
    /// handle, on which h2 resets the stream (`RST_STREAM`, `CANCEL`).
    fn cut_if_stalled(&self, limit: Duration) -> bool {
        let state = self.state.load(Ordering::Acquire);
        if state == CUT || state & WAITING == 0 {
            return false;
        }
        let since = Duration::from_millis(state & !WAITING);
        if self.base.elapsed().saturating_sub(since) < limit {
            return false;
        }
        // Unless hyper polled the body in the meantime.
        if self
            .state
            .compare_exchange(state, CUT, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        if let Some(abort) = self.abort.get() {
            abort.abort();
        }
        true
    }
}

/// Why a stream's response body ended early: the client took none of it for this long.
#[derive(Debug)]
struct ClientStalled;

impl std::fmt::Display for ClientStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client took no response bytes for server.body_idle_timeout")
    }
}

impl std::error::Error for ClientStalled {}

/// A response body that keeps its stream counted as open until it is dropped, and tells the
/// stream's [`StreamWatch`] when it waits on the client.
///
/// Data is handed to hyper in pieces of at most [`WATCHED_PIECE`] bytes: hyper asks for the next
/// piece only once the client has taken (nearly) all of the last, so a slow client that keeps
/// reading is seen to progress at least every `WATCHED_PIECE` bytes, however large the chunks
/// Faspex's connection yields (up to about 400 KiB).
struct GuardedBody {
    inner: crate::proxy::body::ProxyBody,
    /// The part of the last data frame not yet handed to hyper.
    rest: bytes::Bytes,
    watch: Option<Arc<StreamWatch>>,
    _guard: StreamGuard,
}

/// The largest data frame [`GuardedBody`] hands hyper: a client that reads slower than this per
/// `server.body_idle_timeout` (55 bytes/s at the default 5 minutes) counts as stalled.
///
/// 16 KiB less h2's 9-byte frame header, so that each DATA frame (h2 writes and flushes them
/// one at a time) is one full TLS record (the piece after a short one, written with it, is
/// a full record and a short one: see [`first_piece`]). With 64 KiB pieces h2 cut them at the
/// client's 16 KiB `SETTINGS_MAX_FRAME_SIZE` (curl's, browsers'), and every 16,393-byte frame
/// went out as a full record plus a 9-byte one, each encrypted, sent and decrypted on its own:
/// 256 MiB downloads over HTTP/2 ran at 0.87x-0.93x HTTP/1.1's speed, and 0.95x-0.96x with
/// 16,375-byte pieces (curl, alternating runs, the same gateway).
const WATCHED_PIECE: usize = 16 * 1024 - 9;

/// How much of a `len`-byte data frame (more than [`WATCHED_PIECE`]) goes to hyper first: the
/// part that does not fill a whole piece, so that everything after it is whole pieces.
///
/// Short part first, because h2 copies a frame of less than 256 bytes into its write buffer
/// and sends it in the same write as the frame queued after it, while a frame queued after a
/// large one is written on its own (when both are queued before h2's connection task writes,
/// as a chunk's pieces are). Faspex's chunked answers come in 64 KiB chunks, each four whole
/// pieces and 36 bytes: last, the 36 bytes made every fifth `writev` a 67-byte TLS record of
/// its own (6,907 of 40,969 for a 512 MiB download); first, they share the next piece's
/// `writev` (34,035 in all). They are still a TLS record of their own: rustls cuts the 16,429
/// bytes of that write into a full record and a 45-byte one.
fn first_piece(len: usize) -> usize {
    match len % WATCHED_PIECE {
        0 => WATCHED_PIECE,
        short => short,
    }
}

impl GuardedBody {
    fn new(
        inner: crate::proxy::body::ProxyBody,
        guard: StreamGuard,
        watch: Option<Arc<StreamWatch>>,
    ) -> Self {
        // The response headers go out now; until hyper polls the body, it waits on the client
        // (which may have granted no window at all).
        if let Some(w) = &watch {
            w.waiting_on_client();
        }
        GuardedBody {
            inner,
            rest: bytes::Bytes::new(),
            watch,
            _guard: guard,
        }
    }
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = crate::proxy::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Some(w) = &this.watch {
            if !w.polled() {
                return std::task::Poll::Ready(Some(Err(ClientStalled.into())));
            }
        }
        let mut polled = if this.rest.is_empty() {
            std::pin::Pin::new(&mut this.inner).poll_frame(cx)
        } else {
            let rest = std::mem::take(&mut this.rest);
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(rest))))
        };
        if let std::task::Poll::Ready(Some(Ok(frame))) = &mut polled {
            if let Some(data) = frame.data_mut() {
                if data.len() > WATCHED_PIECE {
                    this.rest = data.split_off(first_piece(data.len()));
                }
            }
            // hyper took a frame: it asks for the next once the client has made room for it.
            if let Some(w) = &this.watch {
                w.waiting_on_client();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let hint = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut sum = http_body::SizeHint::new();
        sum.set_lower(hint.lower().saturating_add(rest));
        if let Some(upper) = hint.upper() {
            sum.set_upper(upper.saturating_add(rest));
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::atomic::AtomicBool;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body::{Body, Frame};
    use http_body_util::BodyExt;

    /// A body that answers each poll from a script: `Some(n)` a data frame of `n` bytes, `None`
    /// `Pending`; then ends.
    struct Scripted(std::collections::VecDeque<Option<usize>>);

    impl Body for Scripted {
        type Data = Bytes;
        type Error = crate::proxy::body::BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.0.pop_front() {
                Some(Some(n)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![7u8; n]))))),
                Some(None) => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    fn guarded(script: &[Option<usize>]) -> (GuardedBody, Arc<StreamWatch>, Arc<StreamActivity>) {
        let activity = Arc::new(StreamActivity::new());
        let watch = Arc::new(StreamWatch::new());
        let body = Scripted(script.iter().copied().collect());
        let body = GuardedBody::new(
            BodyExt::boxed_unsync(body),
            activity.begin(),
            Some(watch.clone()),
        );
        (body, watch, activity)
    }

    fn poll(
        body: &mut GuardedBody,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::proxy::body::BoxError>>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(body).poll_frame(&mut cx)
    }

    const LIMIT: Duration = Duration::from_millis(50);

    #[test]
    fn a_body_not_polled_since_its_headers_went_out_is_stalled() {
        let (_body, watch, _a) = guarded(&[Some(10)]);
        assert!(!watch.cut_if_stalled(LIMIT), "cut at once");
        std::thread::sleep(LIMIT);
        assert!(watch.cut_if_stalled(LIMIT));
        assert!(!watch.cut_if_stalled(LIMIT), "cut twice");
    }

    #[test]
    fn a_body_waiting_on_faspex_is_not_stalled() {
        let (mut body, watch, _a) = guarded(&[Some(10), None]);
        assert!(poll(&mut body).is_ready());
        assert!(poll(&mut body).is_pending());
        std::thread::sleep(LIMIT * 2);
        assert!(!watch.cut_if_stalled(LIMIT));
    }

    #[test]
    fn a_frame_taken_and_not_followed_up_is_stalled_until_hyper_asks_again() {
        let (mut body, watch, _a) = guarded(&[Some(10), Some(10)]);
        assert!(poll(&mut body).is_ready());
        std::thread::sleep(LIMIT / 2);
        assert!(
            poll(&mut body).is_ready(),
            "asked again: the clock starts over"
        );
        std::thread::sleep(LIMIT / 2);
        assert!(!watch.cut_if_stalled(LIMIT));
        std::thread::sleep(LIMIT);
        assert!(watch.cut_if_stalled(LIMIT));
        // Polled after the cut (before the abort landed): it ends with an error.
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Err(_)))));
    }

    #[test]
    fn large_frames_are_handed_over_in_pieces_the_short_one_first() {
        let (mut body, _w, _a) = guarded(&[Some(WATCHED_PIECE * 2 + 5)]);
        assert_eq!(body.size_hint().lower(), 0);
        let mut sizes = Vec::new();
        while let Poll::Ready(Some(f)) = poll(&mut body) {
            sizes.push(f.unwrap().into_data().unwrap().len());
            assert_eq!(
                body.is_end_stream(),
                sizes.len() == 3 && body.inner.is_end_stream()
            );
        }
        assert_eq!(sizes, [5, WATCHED_PIECE, WATCHED_PIECE]);
    }

    #[test]
    fn a_chunk_of_faspex_is_one_short_piece_then_whole_ones() {
        let sizes = |script: &[Option<usize>]| {
            let (mut body, _w, _a) = guarded(script);
            let mut sizes = Vec::new();
            while let Poll::Ready(Some(f)) = poll(&mut body) {
                sizes.push(f.unwrap().into_data().unwrap().len());
            }
            sizes
        };
        let whole = WATCHED_PIECE;
        // Faspex's 64 KiB chunks: 36 bytes, then four whole pieces, chunk after chunk.
        assert_eq!(
            sizes(&[Some(65_536), Some(65_536)]),
            [36, whole, whole, whole, whole, 36, whole, whole, whole, whole]
        );
        // Whole pieces only: nothing short.
        assert_eq!(sizes(&[Some(2 * whole)]), [whole, whole]);
        // A frame no larger than a piece goes as it is.
        assert_eq!(sizes(&[Some(whole), Some(100)]), [whole, 100]);
        assert_eq!(sizes(&[Some(whole + 1)]), [1, whole]);
    }

    #[test]
    fn the_stream_counts_as_open_until_its_body_is_dropped() {
        let (body, _w, activity) = guarded(&[]);
        assert_eq!(activity.open.load(Ordering::Acquire), 1);
        drop(body);
        assert_eq!(activity.open.load(Ordering::Acquire), 0);
    }

    /// Flags its drop.
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }

    #[tokio::test]
    async fn the_watchdog_aborts_a_stalled_stream_task_and_leaves_the_others() {
        use hyper::rt::Executor;
        let activity = Arc::new(StreamActivity::new());
        let exec = StreamExec {
            conn: activity.clone(),
        };
        let mut dropped = Vec::new();
        // Task 0's body stalls on the client; task 1's waits on Faspex; task 2 has no body yet.
        for i in 0..3 {
            let flag = Arc::new(AtomicBool::new(false));
            dropped.push(flag.clone());
            let activity = activity.clone();
            exec.execute(async move {
                let _flag = Dropped(flag);
                let watch = WATCH
                    .try_with(Arc::clone)
                    .expect("no watch in a stream task");
                let script: &[Option<usize>] = match i {
                    0 => &[Some(10)],
                    1 => &[None],
                    _ => &[],
                };
                if i < 2 {
                    let mut body = GuardedBody::new(
                        BodyExt::boxed_unsync(Scripted(script.iter().copied().collect())),
                        activity.begin(),
                        Some(watch),
                    );
                    let _ = poll(&mut body);
                    std::future::pending::<()>().await;
                } else {
                    std::future::pending::<()>().await;
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(activity.cut_stalled(LIMIT), 0);
        assert_eq!(activity.open.load(Ordering::Acquire), 2);
        tokio::time::sleep(LIMIT * 2).await;
        assert_eq!(activity.cut_stalled(LIMIT), 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let dropped: Vec<bool> = dropped.iter().map(|d| d.load(Ordering::Acquire)).collect();
        assert_eq!(dropped, [true, false, false]);
        assert_eq!(activity.open.load(Ordering::Acquire), 1);
        assert_eq!(activity.cut_stalled(LIMIT), 0);
        assert_eq!(
            activity.watches().len(),
            2,
            "the aborted task's watch was not pruned"
        );
    }

    #[test]
    fn the_watch_list_stays_near_the_number_of_live_streams() {
        let activity = StreamActivity::new();
        let live: Vec<_> = (0..10).map(|_| Arc::new(StreamWatch::new())).collect();
        for w in &live {
            activity.watch(w);
        }
        for _ in 0..10_000 {
            activity.watch(&Arc::new(StreamWatch::new()));
        }
        let len = activity.watches().len();
        let cap = activity.watches().capacity();
        assert!(
            cap <= 64,
            "{len} watches in a list of {cap} for 10 live streams"
        );
    }
}
