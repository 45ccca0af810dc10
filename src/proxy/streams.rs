//! What a session has open beyond single requests: WebSocket tunnels and long response
//! streams (downloads). When the gateway ends a session (kick, logout, replacement, idle or
//! absolute timeout) its open streams end with it: a kick means access ends now, not when the
//! download finishes.
//!
//! Each session with something open has one cancellation token here and a count of the
//! streams holding it; the last stream to finish removes the entry, and the session's end
//! cancels the token and removes it, so the map holds only sessions with streams open.
//! A small complete response is not registered: it is over before a kick could matter, and
//! registering costs a small request a map entry.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use dashmap::DashMap;
use http_body::{Body, Frame, SizeHint};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::body::{BoxError, ProxyBody};
use crate::store::SessionKey;

/// Responses whose body is known to be at most this long are not registered.
pub const SHORT_BODY: u64 = 256 * 1024;

/// The open streams of every session.
#[derive(Default)]
pub struct SessionStreams {
    open: DashMap<SessionKey, Entry>,
}

struct Entry {
    token: CancellationToken,
    /// Which entry this is: one removed by a session's end and one made after it differ.
    generation: u64,
    holders: usize,
}

/// Entry generations, never reused.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One stream's hold on its session's token; the entry goes when the last hold does.
pub struct StreamHold {
    streams: Arc<SessionStreams>,
    key: SessionKey,
    token: CancellationToken,
    generation: u64,
}

/// The session a stream ended with.
#[derive(Debug, thiserror::Error)]
#[error("the session ended")]
pub struct SessionEnded;

impl SessionStreams {
    /// Hold `key`'s token for one more stream.
    pub fn hold(self: &Arc<Self>, key: &SessionKey) -> StreamHold {
        let mut entry = self.open.entry(key.clone()).or_insert_with(|| Entry {
            token: CancellationToken::new(),
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            holders: 0,
        });
        entry.holders += 1;
        let (token, generation) = (entry.token.clone(), entry.generation);
        drop(entry);
        StreamHold {
            streams: Arc::clone(self),
            key: key.clone(),
            token,
            generation,
        }
    }

    /// The session `key` ended: every stream it holds ends now.
    pub fn end(&self, key: &SessionKey) {
        if let Some((_, entry)) = self.open.remove(key) {
            entry.token.cancel();
        }
    }

    /// How many sessions have streams open (for tests and the status).
    pub fn sessions(&self) -> usize {
        self.open.len()
    }
}

impl StreamHold {
    /// Resolves when the session ends.
    pub fn ended(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// Whether the session has ended already.
    pub fn is_ended(&self) -> bool {
        self.token.is_cancelled()
    }
}

impl Drop for StreamHold {
    fn drop(&mut self) {
        // Only the entry this hold counted in: once a session's end has removed it, a later
        // entry under the same key is another's.
        self.streams.open.remove_if_mut(&self.key, |_, e| {
            if e.generation != self.generation {
                return false;
            }
            e.holders = e.holders.saturating_sub(1);
            e.holders == 0
        });
    }
}

/// A response body that ends, with an error, when its session does.
pub struct SessionBound {
    inner: ProxyBody,
    ended: Pin<Box<WaitForCancellationFutureOwned>>,
    _hold: StreamHold,
}

impl SessionBound {
    pub fn new(inner: ProxyBody, hold: StreamHold) -> Self {
        SessionBound {
            inner,
            ended: Box::pin(hold.ended()),
            _hold: hold,
        }
    }
}

impl Body for SessionBound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(SessionEnded))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a response body may run long enough to be worth ending with its session.
pub fn long(body: &ProxyBody) -> bool {
    !body.is_end_stream() && body.size_hint().upper().is_none_or(|n| n > SHORT_BODY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn key(n: u8) -> SessionKey {
        SessionKey(format!("session-{n}").into())
    }

    #[tokio::test]
    async fn a_session_end_ends_its_streams_and_no_others() {
        let streams = Arc::new(SessionStreams::default());
        let (a, b) = (key(1), key(2));
        let pending = || {
            http_body_util::StreamBody::new(futures_util::stream::pending::<
                Result<Frame<Bytes>, BoxError>,
            >())
            .boxed_unsync()
        };
        let mut on_a = SessionBound::new(pending(), streams.hold(&a));
        let mut on_b = SessionBound::new(pending(), streams.hold(&b));
        assert_eq!(streams.sessions(), 2);
        streams.end(&a);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(1), on_a.frame())
            .await
            .expect("the stream ends at once");
        assert!(ended.unwrap().unwrap_err().is::<SessionEnded>());
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), on_b.frame())
                .await
                .is_err(),
            "another session's stream goes on"
        );
        drop(on_a);
        assert_eq!(streams.sessions(), 1);
        drop(on_b);
        assert_eq!(streams.sessions(), 0, "the last hold removes the entry");
    }

    #[tokio::test]
    async fn holds_of_an_ended_session_leave_a_later_entry_alone() {
        let streams = Arc::new(SessionStreams::default());
        let k = key(3);
        let old = streams.hold(&k);
        streams.end(&k);
        assert!(old.is_ended());
        let new = streams.hold(&k);
        drop(old);
        assert_eq!(streams.sessions(), 1);
        assert!(!new.is_ended());
        drop(new);
        assert_eq!(streams.sessions(), 0);
    }
}
