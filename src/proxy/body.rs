//! The bottom of the proxy: the body type every request and response takes ([`ProxyBody`]),
//! its builders, and the bodies that wrap it on the way: the client's body marked as the
//! client's ([`client_body`]), a public body whose head was read ahead ([`ReadAhead`]), and
//! the response body that writes the access-log line when it ends ([`LoggedBody`]).
//!
//! Nothing here knows about routes, sessions or Faspex: every other file of the proxy may use
//! it, and it uses none of them but the access record it writes and the in-flight guard it holds.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::access::AccessRecord;
use super::inflight::InflightGuard;

/// Errors from any body the gateway streams.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request the gateway forwards and every response it returns.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Marks an error as coming from the client's side of the request body.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ClientBodyError(pub(crate) BoxError);

/// A client's request body as the gateway forwards it: its errors marked as the client's.
pub fn client_body(body: Incoming) -> ProxyBody {
    body.map_err(|e| BoxError::from(ClientBodyError(e.into())))
        .boxed_unsync()
}

/// Wrap a complete body into the gateway's body type.
pub fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Why a body could not be read.
pub enum ReadError {
    TooLarge,
    Broken(BoxError),
}

/// Read a whole body of at most `limit` bytes.
pub async fn read_limited(body: &mut ProxyBody, limit: usize) -> Result<Bytes, ReadError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(ReadError::TooLarge);
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Broken)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// A public body whose head was read ahead: the head, then the rest as it comes. The request
/// stops counting against its address when the rest has come.
pub struct ReadAhead {
    head: Option<Bytes>,
    rest: ProxyBody,
    inflight: Option<InflightGuard>,
}

impl ReadAhead {
    pub fn new(head: Bytes, rest: ProxyBody, inflight: Option<InflightGuard>) -> Self {
        ReadAhead {
            head: Some(head),
            rest,
            inflight,
        }
    }
}

impl Body for ReadAhead {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        let polled = Pin::new(&mut self.rest).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) || self.rest.is_end_stream() {
            self.inflight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let head = self.head.as_ref().map_or(0, |h| h.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(head));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(head));
        }
        hint
    }
}

/// A response body that counts the bytes it passes and writes the access-log line when it ends,
/// or when it is dropped early (the client went away, or the upstream broke mid-body).
pub(crate) struct LoggedBody {
    inner: ProxyBody,
    bytes: u64,
    record: Option<AccessRecord>,
    failed: bool,
}

impl LoggedBody {
    pub(crate) fn new(inner: ProxyBody, record: AccessRecord) -> Self {
        let mut body = LoggedBody {
            inner,
            bytes: 0,
            record: Some(record),
            failed: false,
        };
        if body.inner.is_end_stream() {
            body.finish(true);
        }
        body
    }

    fn finish(&mut self, complete: bool) {
        if let Some(r) = self.record.take() {
            r.log(self.bytes, complete && !self.failed);
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(Some(Err(_))) => this.failed = true,
            Poll::Ready(None) => this.finish(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.finish(false);
    }
}
