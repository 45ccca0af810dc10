//! The connections to the upstream: a keep-alive pool of hyper HTTP/1.1 client connections.
//!
//! The gateway has one upstream, so its pool is a stack of idle connections. A request takes
//! the most recently used one (the warmest, and the least likely to have been closed by Faspex),
//! or opens a new one. Its response body puts the connection back when it ends. A connection
//! whose response was not read to its end, that switched protocols, or that failed is closed and
//! never reused. hyper-util's pooled client did the same for any number of origins, at the cost
//! of a pool keyed by origin, a task spawned per request to put the connection back, and large
//! futures moved on every poll: about a tenth of a small request's instructions.
//!
//! Each connection is driven by a task of its own (hyper's `Connection`), which also hands an
//! upgraded connection's bytes over to the tunnel. Each also keeps one timer, for the
//! `upstream.response_timeout` of the requests it carries: moved to a later deadline at each
//! request (one compare-and-swap while it is armed), where a timer made per request would be
//! registered in tokio's timer wheel and taken out again every time (about 800 instructions
//! of a small GET's 56,000).
//!
//! A request that found its pooled connection closed before any of it was written is sent again
//! on another, as hyper-util's client did: Faspex, or a balancer, closing an idle keep-alive
//! connection must not fail a request. A request that was written, even in part, is never sent
//! twice. Idle connections are dropped after `IDLE_TIMEOUT`, checked whenever the pool is used;
//! one that the upstream closes in the meantime is noticed by its task and skipped.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower_service::Service;

use tokio::sync::oneshot;
use tokio::time::Sleep;

use super::transfer::TransferBody;
use crate::conn::stall::WriteStallGuard;
use crate::proxy::body::{BoxError, ProxyBody};

/// The body of every request the pool sends.
pub type Outbound = TransferBody<ProxyBody>;

/// How long an idle connection is kept for reuse.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The most idle connections kept.
pub const MAX_IDLE: usize = 256;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made (TCP or TLS).
    #[error("{0}")]
    Connect(#[source] BoxError),
    /// The connection or the exchange on it failed (the request body's own errors included).
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// The response headers took longer than the [`ResponseClock`]'s limit.
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

/// When a request's response clock starts, and how long it may then run until the response
/// headers are in: Faspex answers an upload after its last byte, so the clock starts once the
/// request body has been sent (or has failed), which `started` says (a message or its sender
/// dropped).
pub struct ResponseClock {
    pub started: oneshot::Receiver<()>,
    pub limit: Duration,
}

/// A connection to the upstream: its request handle, and the timer of its responses.
struct Conn {
    sender: SendRequest<Outbound>,
    timer: Pin<Box<Sleep>>,
}

impl Conn {
    fn new(sender: SendRequest<Outbound>) -> Self {
        // Registered in the wheel only when first polled, for its first request's deadline.
        let timer = Box::pin(tokio::time::sleep_until(tokio::time::Instant::now()));
        Conn { sender, timer }
    }
}

/// The pool: how to connect, and the idle connections.
pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority` of the upstream, for the connector.
    target: Uri,
    /// How long a new connection may take to be opened (TCP, TLS and all), and a pooled one to
    /// become ready for its next request (`upstream.connect_timeout`).
    connect_timeout: Duration,
    /// How long a connection may wait to write before it fails (`server.body_idle_timeout`).
    write_stall: Duration,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl Pool {
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        target: Uri,
        connect_timeout: Duration,
        write_stall: Duration,
    ) -> Arc<Self> {
        Arc::new(Pool {
            connector,
            target,
            connect_timeout,
            write_stall,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Send `req` (origin-form URI, `Host` set) and wait for the response headers, for at most
    /// `clock`'s limit once it has started (without a clock, for as long as it takes).
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Outbound>,
        mut clock: Option<ResponseClock>,
    ) -> Result<Response<PooledBody>, ClientError> {
        let mut deadline: Option<tokio::time::Instant> = None;
        // How long pooled connections may take to become ready, for the whole request.
        let mut ready_by: Option<tokio::time::Instant> = None;
        loop {
            let (mut conn, reused) = match self.checkout(&mut ready_by).await {
                Some(conn) => (conn, true),
                // Boxed: a new connection is rare, and its future, three times the size of the
                // rest, would make every request's futures (moved several times) that large.
                None => (Conn::new(Box::pin(self.connect()).await?), false),
            };
            let sent = {
                let Conn { sender, timer } = &mut conn;
                let sending = sender.try_send_request(req);
                tokio::pin!(sending);
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(r) = sending.as_mut().poll(cx) {
                        return Poll::Ready(Some(r));
                    }
                    if deadline.is_none() {
                        if let Some(c) = &mut clock {
                            if Pin::new(&mut c.started).poll(cx).is_ready() {
                                let limit = c.limit.min(crate::util::TIMER_CAP);
                                deadline = Some(tokio::time::Instant::now() + limit);
                            }
                        }
                    }
                    if let Some(at) = deadline {
                        // Later than the last request's: one compare-and-swap in tokio.
                        if timer.deadline() != at {
                            timer.as_mut().reset(at);
                        }
                        if timer.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(None);
                        }
                    }
                    Poll::Pending
                })
                .await
            };
            match sent {
                Some(Ok(resp)) => return Ok(self.wrap(resp, conn)),
                Some(Err(mut e)) => match e.take_message() {
                    // Not a byte was written: the connection had closed while it sat idle.
                    Some(back) if reused => req = back,
                    _ => return Err(e.into_error().into()),
                },
                // The connection goes with the request: its response may yet come.
                None => {
                    let limit = clock.map_or(Duration::ZERO, |c| c.limit);
                    return Err(ClientError::Timeout(limit));
                }
            }
        }
    }

    /// The most recently used idle connection that is still open and ready, if any. Those not
    /// ready at once are waited for until `ready_by`, set `connect_timeout` ahead at the first
    /// wait: however many there are, a request waits no longer than that for them.
    async fn checkout(&self, ready_by: &mut Option<tokio::time::Instant>) -> Option<Conn> {
        loop {
            let mut conn = {
                let mut idle = self.lock();
                let now = Instant::now();
                loop {
                    let c = idle.pop()?;
                    if !c.conn.sender.is_closed() && now.duration_since(c.since) <= IDLE_TIMEOUT {
                        break c.conn;
                    }
                }
            };
            if conn.sender.is_ready() {
                return Some(conn);
            }
            // Its last response has just ended; its task has yet to take that in (or it is
            // still sending a request body that Faspex answered before the end). Once `ready_by`
            // has passed, one that is not ready at its first look is dropped, even if it would
            // have been a moment later: the request has spent its wait.
            let by =
                *ready_by.get_or_insert_with(|| tokio::time::Instant::now() + self.connect_timeout);
            if let Ok(Ok(())) = tokio::time::timeout_at(by, conn.sender.ready()).await {
                return Some(conn);
            }
        }
    }

    /// Put a connection whose response has ended back for the next request.
    fn checkin(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock();
        // The oldest are first: drop those past their time, and one more when full.
        let expired = idle
            .iter()
            .take_while(|c| now.duration_since(c.since) > IDLE_TIMEOUT)
            .count();
        let over = (idle.len() - expired + 1).saturating_sub(MAX_IDLE);
        idle.drain(..expired + over);
        idle.push(Idle { conn, since: now });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // The vector is consistent whenever the lock is released: a panic elsewhere while it
        // was held cannot have left it half-changed.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection, its task spawned, within `connect_timeout`: the connector bounds only
    /// the TCP connect, and an upstream (or a balancer) that accepts and then never completes
    /// TLS would otherwise hold the request, and its slot, for as long as the client waits.
    async fn connect(&self) -> Result<SendRequest<Outbound>, ClientError> {
        match tokio::time::timeout(self.connect_timeout, self.open()).await {
            Ok(opened) => opened,
            Err(_) => Err(ClientError::Connect(
                format!("no connection within {:?}", self.connect_timeout).into(),
            )),
        }
    }

    async fn open(&self) -> Result<SendRequest<Outbound>, ClientError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(ClientError::Connect)?;
        let io = connector
            .call(self.target.clone())
            .await
            .map_err(ClientError::Connect)?;
        // Faspex not reading what the gateway writes (an upload it stopped taking, without
        // answering) fails the connection after `write_stall` (`conn::stall`).
        let io = WriteStallGuard::new(io, self.write_stall);
        let (sender, conn) = Builder::new().handshake(io).await?;
        // A combinator, not an `async` block: the compiler cannot prove such a block `Send`
        // over the body's boxed error type.
        tokio::spawn(conn.with_upgrades().map(|ended| {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "an upstream connection ended with an error");
            }
        }));
        Ok(sender)
    }

    fn wrap(self: &Arc<Self>, resp: Response<Incoming>, conn: Conn) -> Response<PooledBody> {
        // After a 101 the connection belongs to the tunnel.
        let home =
            (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| (conn, Arc::clone(self)));
        resp.map(|body| {
            let mut body = PooledBody { body, home };
            if body.body.is_end_stream() {
                body.release();
            }
            body
        })
    }

    /// How many idle connections the pool holds (for tests).
    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }
}

/// A response body that puts its connection back in the pool once it has been read to its end.
/// Dropped before that, it takes the connection with it.
pub struct PooledBody {
    body: Incoming,
    home: Option<(Conn, Arc<Pool>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((conn, pool)) = self.home.take() {
            pool.checkin(conn);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.home = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A keep-alive upstream on loopback that answers each request with its path (4 MiB for
    /// `/big`; `/slow/N` after N ms), counting the connections it accepts.
    async fn upstream() -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        if let Some(ms) = req.uri().path().strip_prefix("/slow/") {
                            let ms = ms.parse().unwrap();
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        let body = if req.uri().path() == "/big" {
                            Bytes::from(vec![b'x'; 4 << 20])
                        } else {
                            Bytes::from(req.uri().path().to_owned())
                        };
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            body,
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (format!("http://{addr}/").parse().unwrap(), accepted)
    }

    fn pool(target: Uri) -> Arc<Pool> {
        pool_with(target, Duration::from_secs(5))
    }

    /// A pool for `target` (`http` or `https`) whose connections are made within
    /// `connect_timeout`.
    fn pool_with(target: Uri, connect_timeout: Duration) -> Arc<Pool> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let tls = crate::tls::client_config(None).unwrap();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Pool::new(connector, target, connect_timeout, Duration::from_secs(5))
    }

    /// An upstream on loopback that reads each request head (and nothing of any body) and
    /// answers it `ok`, counting the connections it accepts. With `one_each`, it closes each
    /// connection after its first answer, without a word (as a balancer's idle timeout does);
    /// else it keeps them open.
    async fn raw_upstream(one_each: bool) -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    loop {
                        let Ok(n) = stream.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            got.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(answer).await.is_err() || one_each {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (format!("http://{addr}/").parse().unwrap(), accepted)
    }

    fn get(target: &Uri, path: &str) -> Request<Outbound> {
        let body = TransferBody::new(
            crate::proxy::body::full(Bytes::new()),
            Duration::from_secs(5),
            None,
        );
        Request::get(path)
            .header(http::header::HOST, target.authority().unwrap().as_str())
            .body(body)
            .unwrap()
    }

    async fn text(resp: Response<PooledBody>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn one_connection_serves_request_after_request() {
        let (target, accepted) = upstream().await;
        let pool = pool(target.clone());
        for i in 0..20 {
            let path = format!("/r{i}");
            let resp = pool.send(get(&target, &path), None).await.unwrap();
            assert_eq!(text(resp).await, path);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    /// A clock that has started now.
    fn started(limit: Duration) -> Option<ResponseClock> {
        let (tx, started) = oneshot::channel();
        tx.send(()).unwrap();
        Some(ResponseClock { started, limit })
    }

    #[tokio::test]
    async fn each_request_on_a_connection_gets_its_own_response_clock() {
        let (target, accepted) = upstream().await;
        let pool = pool(target.clone());
        let limit = Duration::from_millis(1000);
        let resp = pool.send(get(&target, "/a"), started(limit)).await.unwrap();
        assert_eq!(text(resp).await, "/a");
        // The connection's timer passes its deadline while the connection is idle...
        tokio::time::sleep(limit + Duration::from_millis(200)).await;
        // ...and bounds the next request from its own start: 400 ms is within it, and three
        // running 400 ms on the same connection too, together past it (the deadline moved,
        // not kept).
        for _ in 0..3 {
            let resp = pool.send(get(&target, "/slow/400"), started(limit));
            assert_eq!(text(resp.await.unwrap()).await, "/slow/400");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // A response slower than the limit is cut at the limit, and takes its connection.
        let t = Instant::now();
        let cut = pool.send(get(&target, "/slow/3000"), started(limit)).await;
        assert!(
            matches!(cut, Err(ClientError::Timeout(d)) if d == limit),
            "{:?}",
            cut.err()
        );
        let took = t.elapsed();
        assert!(
            took >= limit && took < Duration::from_millis(2500),
            "{took:?}"
        );
        assert_eq!(pool.idle_count(), 0);
        let resp = pool.send(get(&target, "/b"), started(limit)).await.unwrap();
        assert_eq!(text(resp).await, "/b");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_upstream_that_never_completes_tls_is_a_connect_error_in_time() {
        // Accepts TCP, then says nothing: the TLS handshake would wait for ever.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        let target: Uri = format!("https://{addr}/").parse().unwrap();
        let pool = pool_with(target.clone(), Duration::from_millis(300));
        let t = Instant::now();
        // A GET's clock has started already; without its own bound the connect would not end.
        let got = pool.send(get(&target, "/"), started(Duration::from_secs(3600)));
        let got = tokio::time::timeout(Duration::from_secs(10), got)
            .await
            .expect("the connect never ended");
        assert!(
            matches!(got, Err(ClientError::Connect(_))),
            "{:?}",
            got.err()
        );
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        held.abort();
    }

    #[tokio::test]
    async fn connections_still_sending_are_waited_for_no_longer_than_connect_timeout_in_all() {
        // Answers each request head at once, reads nothing of any body, never closes.
        let (target, accepted) = raw_upstream(false).await;
        let connect_timeout = Duration::from_millis(700);
        let pool = pool_with(target.clone(), connect_timeout);
        // Four uploads answered before their (endless) bodies: each connection goes back to
        // the pool with its request still being sent, so it does not become ready.
        let uploads: Vec<_> = (0..4)
            .map(|_| {
                let (pool, target) = (Arc::clone(&pool), target.clone());
                tokio::spawn(async move {
                    let endless = http_body_util::StreamBody::new(futures_util::stream::pending::<
                        Result<Frame<Bytes>, BoxError>,
                    >());
                    let body = TransferBody::new(
                        http_body_util::BodyExt::boxed_unsync(endless),
                        Duration::from_secs(60),
                        None,
                    );
                    let req = Request::post("/upload")
                        .header(http::header::HOST, target.authority().unwrap().as_str())
                        .body(body)
                        .unwrap();
                    text(pool.send(req, None).await.unwrap()).await
                })
            })
            .collect();
        for u in uploads {
            assert_eq!(u.await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        assert_eq!(pool.idle_count(), 4);
        // A GET waits for them one limit in all (not one each), then opens a connection.
        let t = Instant::now();
        let resp = pool.send(get(&target, "/"), started(Duration::from_secs(60)));
        assert_eq!(text(resp.await.unwrap()).await, "ok");
        let took = t.elapsed();
        assert!(took >= connect_timeout, "{took:?}");
        // (one limit each would be four)
        assert!(took < 3 * connect_timeout, "{took:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn the_response_clock_runs_only_once_started() {
        let (target, _) = upstream().await;
        let pool = pool(target.clone());
        let limit = Duration::from_millis(200);
        let (tx, started) = oneshot::channel::<()>();
        let clock = Some(ResponseClock { started, limit });
        // Not started (an upload still being sent): a slower answer is waited for.
        let resp = pool.send(get(&target, "/slow/500"), clock).await.unwrap();
        assert_eq!(text(resp).await, "/slow/500");
        drop(tx);
        // Its sender dropped (a body that failed) counts as started.
        let (tx, started) = oneshot::channel::<()>();
        drop(tx);
        let clock = Some(ResponseClock { started, limit });
        let cut = pool.send(get(&target, "/slow/2000"), clock).await;
        assert!(
            matches!(cut, Err(ClientError::Timeout(_))),
            "{:?}",
            cut.err()
        );
        // Started while the request is under way (its upload's last byte sent after 300 ms):
        // the limit counts from then.
        let limit = Duration::from_millis(500);
        let (tx, started) = oneshot::channel::<()>();
        let clock = Some(ResponseClock { started, limit });
        let t = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = tx.send(());
        });
        let cut = pool.send(get(&target, "/slow/3000"), clock).await;
        let took = t.elapsed();
        assert!(
            matches!(cut, Err(ClientError::Timeout(_))),
            "{:?}",
            cut.err()
        );
        assert!(took >= Duration::from_millis(800), "{took:?}");
        assert!(took < Duration::from_millis(2500), "{took:?}");
    }

    #[tokio::test]
    async fn parallel_requests_each_get_their_own_answer() {
        let (target, accepted) = upstream().await;
        let pool = pool(target.clone());
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let (pool, target) = (Arc::clone(&pool), target.clone());
                tokio::spawn(async move {
                    let path = format!("/p{i}");
                    let resp = pool.send(get(&target, &path), None).await.unwrap();
                    (path, text(resp).await)
                })
            })
            .collect();
        for t in tasks {
            let (asked, got) = t.await.unwrap();
            assert_eq!(asked, got);
        }
        let opened = accepted.load(Ordering::SeqCst);
        assert!((1..=64).contains(&opened), "{opened}");
        assert_eq!(pool.idle_count(), opened);
        // Afterwards, requests one at a time open nothing new.
        for i in 0..10 {
            let path = format!("/q{i}");
            assert_eq!(
                text(pool.send(get(&target, &path), None).await.unwrap()).await,
                path
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), opened);
    }

    #[tokio::test]
    async fn a_response_left_unread_takes_its_connection_with_it() {
        let (target, accepted) = upstream().await;
        let pool = pool(target.clone());
        let resp = pool.send(get(&target, "/big"), None).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        drop(resp);
        assert_eq!(pool.idle_count(), 0);
        let resp = pool.send(get(&target, "/next"), None).await.unwrap();
        assert_eq!(text(resp).await, "/next");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_fails_no_request() {
        // An upstream that answers one request per connection, keep-alive by the protocol's
        // default, and then closes it without a word (as a balancer's idle timeout does).
        let (target, accepted) = raw_upstream(true).await;
        let pool = pool(target.clone());
        for _ in 0..5 {
            let resp = pool.send(get(&target, "/"), None).await.unwrap();
            assert_eq!(text(resp).await, "ok");
            // Give the connection's task the time to see the close.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn no_upstream_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let target: Uri = format!("http://{addr}/").parse().unwrap();
        match pool(target.clone()).send(get(&target, "/"), None).await {
            Err(ClientError::Connect(_)) => {}
            Err(other) => panic!("not a connect error: {other:?}"),
            Ok(resp) => panic!("an answer from nowhere: {}", resp.status()),
        }
    }
}
