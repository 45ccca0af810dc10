//! Keeping long transfers honest without ever cutting off a slow one that keeps moving.
//!
//! - [`TransferBody`] wraps every forwarded body, in both directions. It aborts the transfer when
//!   no bytes have moved for `server.body_idle_timeout` while the body is being waited on, and it
//!   can signal when the body has been sent in full: the forwarder starts the
//!   `upstream.response_timeout` clock only then, since Faspex answers an upload after its last
//!   byte.
//! - [`tunnel`] joins an upgraded (WebSocket) connection end to end, counts its bytes each way,
//!   and closes it when neither side has sent anything for the idle timeout, or when the session
//!   it belongs to ends.
//!
//! A peer that stops *reading* is caught one layer down, by the stalled-write guard
//! (`conn::stall`) on the client's connection and on the connection to Faspex.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::proxy::body::BoxError;

/// The error a stalled body ends with.
#[derive(Debug, thiserror::Error)]
#[error("no data moved for {0:?}; transfer aborted")]
pub struct BodyIdle(pub Duration);

/// A body with an idle timer and an optional "fully sent" signal.
pub struct TransferBody<B> {
    inner: B,
    idle: Duration,
    /// When the last frame came through.
    last_progress: Instant,
    /// The timer, armed for `last_progress + idle` while the body is pending. Made the first
    /// time the body waits: a small body that is ready at once never touches the timer wheel.
    timer: Option<Pin<Box<Sleep>>>,
    timer_for: Instant,
    /// Fired (or dropped) when the body has ended, in success or failure.
    done: Option<oneshot::Sender<()>>,
}

impl<B: Body> TransferBody<B> {
    pub fn new(inner: B, idle: Duration, done: Option<oneshot::Sender<()>>) -> Self {
        let now = Instant::now();
        let mut body = TransferBody {
            inner,
            idle,
            last_progress: now,
            timer: None,
            timer_for: now,
            done,
        };
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl<B> Body for TransferBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.last_progress = Instant::now();
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let deadline = this.last_progress + this.idle;
                let timer = match &mut this.timer {
                    Some(t) => {
                        if this.timer_for != this.last_progress {
                            t.as_mut().reset(deadline);
                        }
                        t
                    }
                    None => this
                        .timer
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                this.timer_for = this.last_progress;
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.finish();
                        Poll::Ready(Some(Err(BodyIdle(this.idle).into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An I/O object that stamps `activity` (milliseconds since `epoch`) on every byte it moves,
/// and counts the bytes read from it.
struct Stamped<T> {
    io: T,
    epoch: Instant,
    activity: Arc<AtomicU64>,
    read: u64,
}

impl<T> Stamped<T> {
    fn stamp(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.activity.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stamped<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if matches!(r, Poll::Ready(Ok(()))) && n > 0 {
            self.read += n as u64;
            self.stamp();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stamped<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.stamp();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How a tunnel ended, for its access-log line.
#[derive(Debug)]
pub struct TunnelEnd {
    /// Bytes from the client to the upstream.
    pub up: u64,
    /// Bytes from the upstream to the client.
    pub down: u64,
    /// `Ok` when both sides closed; the idle timeout, the session's end or an I/O error else.
    pub outcome: std::io::Result<()>,
}

/// Why a tunnel was closed under its users.
#[derive(Debug, thiserror::Error)]
#[error("the session the tunnel belonged to ended")]
pub struct TunnelSessionEnded;

/// Join two upgraded connections, `a` the client's and `b` the upstream's, until both sides are
/// done, until nothing has moved in either direction for `idle`, or until `ended` resolves (the
/// session it belongs to has ended).
pub async fn tunnel<A, B>(a: A, b: B, idle: Duration, ended: impl Future<Output = ()>) -> TunnelEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let epoch = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let mut a = Stamped {
        io: a,
        epoch,
        activity: activity.clone(),
        read: 0,
    };
    let mut b = Stamped {
        io: b,
        epoch,
        activity: activity.clone(),
        read: 0,
    };
    let outcome = {
        let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
        tokio::pin!(copy);
        tokio::pin!(ended);
        loop {
            let last = Duration::from_millis(activity.load(Ordering::Relaxed));
            let quiet = epoch.elapsed().saturating_sub(last);
            if quiet >= idle {
                break Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    BodyIdle(idle),
                ));
            }
            tokio::select! {
                r = copy.as_mut() => break r.map(|_| ()),
                _ = ended.as_mut() => {
                    break Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        TunnelSessionEnded,
                    ))
                }
                _ = tokio::time::sleep(idle - quiet) => {}
            }
        }
    };
    TunnelEnd {
        up: a.read,
        down: b.read,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn pending_after(first: &'static [u8]) -> crate::proxy::body::ProxyBody {
        let stream = futures_util::stream::iter(vec![Ok::<_, BoxError>(Frame::data(
            Bytes::from_static(first),
        ))])
        .chain(futures_util::stream::pending());
        BodyExt::boxed_unsync(StreamBody::new(stream))
    }

    use futures_util::StreamExt;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_aborted_after_the_idle_timeout() {
        let mut body = TransferBody::new(pending_after(b"abc"), Duration::from_secs(300), None);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.data_ref().unwrap().as_ref(), b"abc");
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyIdle>());
        assert_eq!(started.elapsed(), Duration::from_secs(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_that_keeps_moving_is_never_cut_off() {
        // One byte every 4 minutes for an hour, with a 5 minute idle limit.
        let stream = futures_util::stream::unfold(0u32, |i| async move {
            if i == 15 {
                return None;
            }
            tokio::time::sleep(Duration::from_secs(240)).await;
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x"))),
                i + 1,
            ))
        });
        let (tx, mut rx) = oneshot::channel();
        let mut body = TransferBody::new(
            BodyExt::boxed_unsync(StreamBody::new(stream)),
            Duration::from_secs(300),
            Some(tx),
        );
        let mut n = 0;
        while let Some(frame) = body.frame().await {
            frame.unwrap();
            n += 1;
            assert!(rx.try_recv().is_err(), "signalled done before the end");
        }
        assert_eq!(n, 15);
        assert!(rx.try_recv().is_ok(), "the end was signalled");
    }

    #[tokio::test]
    async fn an_empty_body_is_done_at_once() {
        let (tx, rx) = oneshot::channel();
        let _body = TransferBody::new(
            http_body_util::Empty::<Bytes>::new()
                .map_err(|e| match e {})
                .boxed_unsync(),
            Duration::from_secs(1),
            Some(tx),
        );
        assert!(rx.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_tunnel_is_closed_and_a_chatty_one_is_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a_near, mut a_far) = tokio::io::duplex(1024);
        let (b_near, mut b_far) = tokio::io::duplex(1024);
        let idle = Duration::from_secs(60);
        let t = tokio::spawn(tunnel(a_near, b_near, idle, std::future::pending()));
        // Chatty for ten minutes: a message every 50 s.
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            a_far.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            b_far.read_exact(&mut buf).await.unwrap();
            assert!(!t.is_finished());
        }
        b_far.write_all(b"pong!").await.unwrap();
        let mut buf = [0u8; 5];
        a_far.read_exact(&mut buf).await.unwrap();
        // Then quiet.
        let end = t.await.unwrap();
        assert_eq!(
            end.outcome.unwrap_err().kind(),
            std::io::ErrorKind::TimedOut
        );
        assert_eq!((end.up, end.down), (48, 5), "bytes each way");
    }

    #[tokio::test]
    async fn a_tunnel_closes_when_its_session_ends() {
        let (a_near, _a_far) = tokio::io::duplex(1024);
        let (b_near, _b_far) = tokio::io::duplex(1024);
        let (end_tx, end_rx) = oneshot::channel::<()>();
        let t = tokio::spawn(tunnel(a_near, b_near, Duration::from_secs(3600), async {
            let _ = end_rx.await;
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!t.is_finished());
        end_tx.send(()).unwrap();
        let end = tokio::time::timeout(Duration::from_secs(1), t)
            .await
            .expect("closed at once")
            .unwrap();
        let err = end.outcome.unwrap_err();
        assert!(err.get_ref().is_some_and(|e| e.is::<TunnelSessionEnded>()));
    }
}
