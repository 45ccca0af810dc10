//! The stalled-write guard on every connection, the clients' and Faspex's: a peer that stops
//! reading while the gateway has bytes for it is disconnected after `server.body_idle_timeout`,
//! instead of holding its connection, its buffers and (for a client) its connection to Faspex
//! forever. hyper has no write timeout of its own.
//! - A client: a download nobody drains, a response to a vanished client. (An HTTP/2 client can
//!   also stall one stream while its socket keeps taking bytes, by granting that stream no
//!   flow-control window; the per-stream watchdog in `server::serve_http2` covers that.)
//! - Faspex: an upload it stops reading without answering. hyper then waits to write, and asks
//!   the request body for nothing more, so neither the body's idle timer nor the response clock
//!   (which starts after the body's last byte) would ever run: the request, and its connection
//!   slot, would wait for as long as the client does.
//!
//! - A WebSocket tunnel too: one whose far side keeps sending but stops reading is cut, though
//!   the tunnel's own idle check (any byte either way) would not see it.
//!
//! Reads pass straight through. On a client's connection idle reads are bounded by the
//! header-read timeout and the body idle timer; on Faspex's, by the response timeout, the body
//! idle timer and the pool's idle limit.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The error a write fails with once it has waited for the guard's limit (inside an
/// `io::Error` of kind `TimedOut`), so that a caller can tell a peer that stopped reading.
#[derive(Debug, thiserror::Error)]
#[error("the peer read nothing for {0:?}")]
pub struct WriteStalled(pub Duration);

pub struct WriteStallGuard<T> {
    io: T,
    limit: Duration,
    /// Made at the first stall: most connections never have one, and an idle connection then
    /// holds no timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` runs for the current stall.
    armed: bool,
}

impl<T> WriteStallGuard<T> {
    pub fn new(io: T, limit: Duration) -> Self {
        WriteStallGuard {
            io,
            limit,
            timer: None,
            armed: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// Called when a write could not proceed: start (or keep) the stall clock.
    #[cold]
    fn stalled<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let deadline = Instant::now() + self.limit;
        let timer = match &mut self.timer {
            Some(t) => {
                if !self.armed {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.armed = true;
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                WriteStalled(self.limit),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    #[inline]
    fn progressed<R>(
        &mut self,
        r: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        match r {
            Poll::Pending => self.stalled(cx),
            ready => {
                self.armed = false;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progressed(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progressed(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.progressed(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// The same, for an I/O object that speaks hyper's traits (a connection to Faspex, as the
// connector makes it): no conversion to tokio's and back on every read and write.
impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for WriteStallGuard<T> {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for WriteStallGuard<T> {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progressed(r, cx)
    }

    #[inline]
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progressed(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.progressed(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_is_cut_off() {
        let (near, _far) = tokio::io::duplex(1024);
        let mut guarded = WriteStallGuard::new(near, Duration::from_secs(300));
        let started = Instant::now();
        let err = guarded.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_is_not() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(1024);
        let mut guarded = WriteStallGuard::new(near, Duration::from_secs(300));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut total = 0;
            while total < 16 * 1024 {
                tokio::time::sleep(Duration::from_secs(200)).await;
                total += far.read(&mut buf).await.unwrap();
            }
            total
        });
        guarded.write_all(&[1u8; 16 * 1024]).await.unwrap();
        assert!(reader.await.unwrap() >= 16 * 1024);
    }
}
