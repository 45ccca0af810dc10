//! Listeners and connections: accept, the connection caps, TLS (with a handshake timeout),
//! HTTP/1.1 or HTTP/2 by ALPN with every HTTP/2 limit set explicitly, the header-read timeout that
//! also bounds idle keep-alive connections, the header-size limit, the swappable certificate
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
//! Shutdown stops the accept loops, asks every connection to finish its in-flight requests, and
//! waits for all permits to come back, up to `server.shutdown_timeout`.

pub mod io;
pub mod per_ip;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::proxy::{ConnInfo, ConnPermit, Gateway};
use per_ip::{Admission, PerIpGuard, PerIpLimit};
use tls::CertStore;

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
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    tls_handshake_timeout: Duration,
    /// How long an HTTP/2 connection may sit with no open stream (`server.header_read_timeout`,
    /// which bounds idle HTTP/1.1 keep-alive connections the same way).
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
    certs: Option<Arc<CertStore>>,
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
    /// Bind the listeners and load the certificate. Errors here are start-up errors.
    pub async fn bind(cfg: &Config, gateway: Gateway) -> anyhow::Result<Server> {
        let s = &cfg.server;
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(s.header_read_timeout)
            .max_header_size(s.max_header_bytes)
            .max_buf_size(s.max_header_bytes.max(256 * 1024))
            .keep_alive(true);
        // Every HTTP/2 limit is set here rather than left to hyper's and h2's defaults, which
        // are documented as liable to change in a minor release (README, "How a request is
        // handled", lists them). Not offered at all: extended CONNECT (RFC 8441), so WebSocket
        // tunnels exist only over HTTP/1.1 (hyper leaves it off unless asked).
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
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
            .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX))
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
            // and make a connection's buffered upload bytes unpredictable). 1 MiB per stream
            // carries about 160 Mbit/s per upload at 50 ms round trip; 4 MiB per connection
            // bounds what one connection can make the gateway buffer. Set before the sizes:
            // `adaptive_window(true)` would reset them.
            .adaptive_window(false)
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            // A PING every 30 s, and the connection closed if it is not answered within 20 s:
            // finds peers that vanished during a long transfer (NAT timeout, pulled cable),
            // which TCP alone may not notice for hours.
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));

        let max_connections = u32::try_from(s.max_connections)
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);
        let shared = Arc::new(Shared {
            gateway,
            http1,
            http2,
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

        let (https, certs) = match s.listen {
            Some(addr) => {
                let (cert, key) = match (&cfg.tls.cert_file, &cfg.tls.key_file) {
                    (Some(c), Some(k)) => (c, k),
                    _ => anyhow::bail!(
                        "tls.cert_file and tls.key_file are required for server.listen"
                    ),
                };
                let certs = CertStore::load(cert, key)?;
                let acceptor = TlsAcceptor::from(tls::server_config(certs.clone())?);
                let listener = bind(addr, "server.listen").await?;
                (Some((listener, acceptor)), Some(certs))
            }
            None => (None, None),
        };
        let http = match s.http_listen {
            Some(addr) => Some(bind(addr, "server.http_listen").await?),
            None => None,
        };
        Ok(Server {
            shared,
            https,
            http,
            certs,
            max_connections,
            shutdown_timeout: s.shutdown_timeout,
        })
    }

    /// The certificate the HTTPS listener serves (`None` when it is off), for a reload.
    pub fn certs(&self) -> Option<Arc<CertStore>> {
        self.certs.clone()
    }

    /// The address of the HTTPS listener, if on.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serve until `stop` turns true (or its sender is gone), then drain. Reloads are the
    /// app's: it swaps the certificate through [`Server::certs`].
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
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
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
        let permit = ConnPermit(Arc::new(ConnSlots {
            _global: permit,
            _per_ip: per_ip,
        }));
        tokio::spawn(async move {
            serve_connection(stream, peer, tls, &shared, stop, permit).await;
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: &Shared,
    stop: watch::Receiver<bool>,
    permit: ConnPermit,
) {
    let stream = io::WriteStallGuard::new(stream, shared.write_stall_limit);
    match tls {
        None => {
            let info = ConnInfo {
                peer,
                scheme: "http",
            };
            serve_http1(TokioIo::new(stream), info, shared, stop, permit).await;
        }
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(shared.tls_handshake_timeout, acceptor.accept(stream)).await;
            let stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let info = ConnInfo {
                peer,
                scheme: "https",
            };
            if h2 {
                serve_http2(TokioIo::new(stream), info, shared, stop).await;
            } else {
                serve_http1(TokioIo::new(stream), info, shared, stop, permit).await;
            }
        }
    }
}

async fn serve_http1<I>(
    io: I,
    info: ConnInfo,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
    permit: ConnPermit,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = {
        let gateway = shared.gateway.clone();
        service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let gateway = gateway.clone();
            req.extensions_mut().insert(permit.clone());
            async move { Ok::<_, Infallible>(gateway.handle(req, info).await) }
        })
    };
    let conn = shared.http1.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %info.peer, error = %e, "HTTP/1 connection ended with an error");
    }
}

async fn serve_http2<I>(io: I, info: ConnInfo, shared: &Shared, mut stop: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // hyper has no header-read timer for HTTP/2, so an idle connection would stay open forever:
    // close it gracefully once it has had no open stream for `header_read_timeout`.
    let idle_limit = shared.idle_limit;
    let activity = Arc::new(StreamActivity::new());
    let service = {
        let gateway = shared.gateway.clone();
        let activity = activity.clone();
        service_fn(move |req| {
            let gateway = gateway.clone();
            let guard = activity.begin();
            async move {
                let resp = gateway.handle(req, info).await;
                Ok::<_, Infallible>(resp.map(|body| GuardedBody {
                    inner: body,
                    _guard: guard,
                }))
            }
        })
    };
    let conn = shared.http2.serve_connection(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = stop.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(idle_limit / 4), if !closing => {
                if activity.idle_for() >= idle_limit {
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

/// Open streams on one HTTP/2 connection, and since when it has had none.
struct StreamActivity {
    started: std::time::Instant,
    open: std::sync::atomic::AtomicUsize,
    /// Milliseconds after `started` at which the last stream ended.
    idle_since_ms: std::sync::atomic::AtomicU64,
}

impl StreamActivity {
    fn new() -> Self {
        StreamActivity {
            started: std::time::Instant::now(),
            open: std::sync::atomic::AtomicUsize::new(0),
            idle_since_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        StreamGuard(self.clone())
    }

    /// How long the connection has had no open stream (zero while one is open).
    fn idle_for(&self) -> Duration {
        use std::sync::atomic::Ordering;
        if self.open.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        self.started.elapsed().saturating_sub(since)
    }
}

/// Held by a stream's response body; the stream counts as open until the body is done.
struct StreamGuard(Arc<StreamActivity>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        let now = self.0.started.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(now, Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its stream counted as open until it is dropped.
struct GuardedBody {
    inner: crate::proxy::forward::ProxyBody,
    _guard: StreamGuard,
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = crate::proxy::forward::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
