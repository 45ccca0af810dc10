//! The connections to Faspex a request may hold (`upstream.max_connections`): every request
//! holds an [`UpstreamSlot`] from before it is sent until its response body ends (or, after a
//! 101, until its tunnel closes). A request that finds none free waits up to
//! `upstream.connect_timeout`, then gets 503. Public requests ([`Lane::Public`]) may hold at most
//! three quarters of the slots (at least one): the last quarter is kept for requests that carry
//! a session, so that a flood of anonymous requests can never starve logged-in users.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::failure::UpstreamError;
use crate::proxy::body::BoxError;
use crate::proxy::permit::Lane;

/// A request's hold on one of the `upstream.max_connections`, released when dropped.
#[derive(Debug)]
pub struct UpstreamSlot {
    pub(super) _all: tokio::sync::OwnedSemaphorePermit,
    _public: Option<tokio::sync::OwnedSemaphorePermit>,
    /// A public request's place in its address's share ([`AddressShare`]).
    pub(super) _address: Option<AddressShare>,
}

/// A public request's place among the connections to Faspex one address may hold, taken by the
/// handler and put in the request's extensions: the slot keeps it as long as it lasts.
#[derive(Clone, Debug)]
pub struct AddressShare(pub Arc<dyn std::any::Any + Send + Sync>);

/// How many connections to Faspex one address's public requests may hold: a quarter of the
/// public share (at least one), so that one address alone cannot take it all.
pub fn address_share(max: usize) -> u32 {
    u32::try_from((public_share(max) / 4).max(1)).unwrap_or(u32::MAX)
}

/// The slots of `upstream.max_connections`, and the share public requests may hold.
pub(super) struct Slots {
    all: Arc<tokio::sync::Semaphore>,
    public: Arc<tokio::sync::Semaphore>,
    /// How long a request waits for a slot (`upstream.connect_timeout`).
    wait: Duration,
}

impl Slots {
    pub(super) fn new(max: usize, wait: Duration) -> Slots {
        let max = max.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Slots {
            all: Arc::new(tokio::sync::Semaphore::new(max)),
            public: Arc::new(tokio::sync::Semaphore::new(public_share(max))),
            wait,
        }
    }

    /// A slot for `lane`, waiting at most `wait`.
    pub(super) async fn take(&self, lane: Lane) -> Result<UpstreamSlot, UpstreamError> {
        // Nearly always a slot is free: take it without arming a timer.
        let public = match lane {
            Lane::Public => self.public.clone().try_acquire_owned().ok(),
            Lane::Session => None,
        };
        if lane == Lane::Session || public.is_some() {
            if let Ok(all) = self.all.clone().try_acquire_owned() {
                return Ok(UpstreamSlot {
                    _all: all,
                    _public: public,
                    _address: None,
                });
            }
        }
        drop(public);
        let take = async {
            let public = match lane {
                Lane::Public => Some(self.public.clone().acquire_owned().await.ok()?),
                Lane::Session => None,
            };
            let all = self.all.clone().acquire_owned().await.ok()?;
            Some(UpstreamSlot {
                _all: all,
                _public: public,
                _address: None,
            })
        };
        match tokio::time::timeout(self.wait, take).await {
            Ok(Some(slot)) => Ok(slot),
            _ => Err(UpstreamError::Busy(self.wait)),
        }
    }
}

/// How many of `max` connections public requests may hold: three quarters, at least one.
pub fn public_share(max: usize) -> usize {
    (max - max / 4).max(1)
}

/// A body that holds its request's [`UpstreamSlot`] until it ends or is dropped.
pub(super) struct SlotBody<B> {
    pub(super) inner: B,
    pub(super) slot: Option<UpstreamSlot>,
}

impl<B> http_body::Body for SlotBody<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let mut polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        // Trailers are dropped: no client of Faspex's needs them, and they would carry past
        // `server.strip_response_headers` what the head may not.
        if matches!(&polled, std::task::Poll::Ready(Some(Ok(f))) if f.is_trailers()) {
            polled = std::task::Poll::Ready(None);
        }
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_))))
            || self.inner.is_end_stream()
        {
            self.slot = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    #[tokio::test]
    async fn response_trailers_are_dropped() {
        use http_body_util::BodyExt;
        let mut trailers = HeaderMap::new();
        trailers.insert("x-ibm-aspera", HeaderValue::from_static("F4.4.2"));
        let frames = vec![
            Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(b"body"))),
            Ok(http_body::Frame::trailers(trailers)),
        ];
        let inner = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let slots = Slots::new(1, Duration::from_secs(1));
        let slot = slots.take(Lane::Public).await.unwrap();
        let body = SlotBody {
            inner: inner.boxed_unsync(),
            slot: Some(slot),
        };
        let collected = body.collect().await.unwrap();
        assert!(collected.trailers().is_none());
        assert_eq!(collected.to_bytes(), "body");
        assert!(
            slots.take(Lane::Public).await.is_ok(),
            "the slot came back at the end"
        );
    }
}
