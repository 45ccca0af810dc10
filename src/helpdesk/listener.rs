//! The console's own HTTPS listener (`helpdesk.listen`): its own port, and so its own origin.
//! TLS with the gateway's certificate (the same [`CertStore`], so a SIGHUP's new certificate
//! serves here too), HTTP/1.1 only.
//!
//! Against a flood: at most [`MAX_PER_ADDRESS`] connections from one address (fewer if
//! `server.max_connections_per_ip` says so). A connection from outside
//! `helpdesk.allowed_networks` never takes one of the console's [`MAX_CONNECTIONS`] places: it
//! gets one of [`MAX_OUTSIDERS`] places of its own, where its one request is answered 403 and
//! the connection closed (no keep-alive), and when those are taken it is closed at accept,
//! before TLS (audited at most 10 a second). The TLS handshake within
//! `server.tls_handshake_timeout`, a request's headers, and then its body, each within
//! `server.header_read_timeout` but never more than 10 s. The network is checked again for
//! every request ([`Console::handle`]), so a reload narrowing it reaches open connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::server::per_ip::{Admission, PerIpLimit};
use crate::server::CertStore;

use super::console::Console;

/// The most console connections open at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 64;

/// The most connections from outside `helpdesk.allowed_networks` being answered 403 at once;
/// more are closed on accept. They never take the console's places.
pub const MAX_OUTSIDERS: usize = 4;

/// The most console connections open from one address (an IPv6 prefix of
/// `server.ipv6_prefix_len` bits); more are closed on accept.
pub const MAX_PER_ADDRESS: usize = 8;

/// The bound console listener.
pub struct HelpdeskServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    console: Console,
    per_ip: Arc<PerIpLimit>,
    handshake_timeout: Duration,
    header_timeout: Duration,
}

impl HelpdeskServer {
    /// Bind `helpdesk.listen` with the certificate in `certs`. An address in use is a start-up
    /// error naming the key.
    pub async fn bind(
        cfg: &Config,
        addr: SocketAddr,
        certs: Arc<CertStore>,
        console: Console,
    ) -> anyhow::Result<Self> {
        let mut tls = (*crate::server::tls::server_config(certs)?).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("helpdesk.listen: cannot listen on {addr}"))?;
        let s = &cfg.server;
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            console,
            per_ip: PerIpLimit::new(
                s.max_connections_per_ip.min(MAX_PER_ADDRESS),
                s.ipv6_prefix_len,
                Vec::new(),
            ),
            handshake_timeout: s
                .tls_handshake_timeout
                .min(super::console::MAX_REQUEST_READ),
            header_timeout: super::console::read_timeout(cfg),
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serve until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        if let Some(addr) = self.local_addr() {
            tracing::info!(%addr, "helpdesk console ready");
        }
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let outsiders = Arc::new(Semaphore::new(MAX_OUTSIDERS));
        loop {
            let Some((stream, peer)) =
                crate::server::accept(&self.listener, &mut stop, "helpdesk").await
            else {
                break;
            };
            // A network outside the list is answered 403 from places of its own, never the
            // console's, and only while there are some.
            let outsider = !self.console.allows(peer);
            let per_ip = match self.per_ip.admit(peer.ip()) {
                Admission::Counted(g) => Some(g),
                Admission::Exempt => None,
                Admission::Refused => {
                    tracing::debug!(%peer, "helpdesk listener: the address has its most connections open; one closed");
                    continue;
                }
            };
            let pool = if outsider { &outsiders } else { &slots };
            let Ok(slot) = Arc::clone(pool).try_acquire_owned() else {
                if outsider {
                    self.console.refuse_network(peer);
                } else {
                    tracing::warn!(%peer, "helpdesk listener: too many connections; one refused");
                }
                continue;
            };
            let console = self.console.clone();
            let acceptor = self.acceptor.clone();
            let mut stop = stop.clone();
            let (handshake_timeout, header_timeout) = (self.handshake_timeout, self.header_timeout);
            tokio::spawn(async move {
                let _slot = (slot, per_ip);
                let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "helpdesk listener: TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let service = service_fn(move |req| {
                    let console = console.clone();
                    async move { Ok::<_, Infallible>(console.handle(req, peer).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .keep_alive(!outsider)
                    .max_buf_size(64 * 1024)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stop.changed() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
    }
}
