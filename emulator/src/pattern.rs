//! The download pattern: the bytes of every package the HTTP Gateway streams
//! ([`pattern_byte`]), and the body that streams them as slices of one shared block
//! ([`PatternBody`]), so that memory stays flat whatever the length.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// The length of every chunk a [`PatternBody`] yields (the last one may be shorter).
const CHUNK: usize = 64 * 1024;

/// The period of the download pattern. It does not divide [`CHUNK`], so that a chunk lost,
/// repeated or reordered on the way shows up as a wrong byte.
const PERIOD: u64 = 251;

/// The byte at `offset` of every package the HTTP Gateway streams: `offset mod 251`.
pub fn pattern_byte(offset: u64) -> u8 {
    // The remainder is below 251, so the cast cannot truncate.
    (offset % PERIOD) as u8
}

/// One block holding [`CHUNK`] bytes of the pattern from every starting phase: bytes
/// `0 .. CHUNK + PERIOD` of the pattern.
pub fn pattern_block() -> Bytes {
    let len = CHUNK + PERIOD as usize;
    (0..len as u64)
        .map(pattern_byte)
        .collect::<Vec<u8>>()
        .into()
}

/// A body of `len` pattern bytes (see [`pattern_byte`]), yielded as slices of one shared block:
/// memory stays flat whatever the length, and hyper only asks for the next chunk when the client
/// has taken the previous one.
pub struct PatternBody {
    block: Bytes,
    offset: u64,
    len: u64,
}

impl PatternBody {
    /// `block` must come from `pattern_block()`.
    pub fn new(block: Bytes, len: u64) -> Self {
        Self {
            block,
            offset: 0,
            len,
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let remaining = this.len - this.offset;
        if remaining == 0 {
            return Poll::Ready(None);
        }
        // Both values fit: the first is below CHUNK, the second below PERIOD.
        let n = remaining.min(CHUNK as u64) as usize;
        let start = (this.offset % PERIOD) as usize;
        let chunk = this.block.slice(start..start + n);
        this.offset += n as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.offset)
    }
}
