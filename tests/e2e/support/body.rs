//! Deterministic generated bodies, and a digest that checks a body without keeping it.
//!
//! The byte at offset `i` of a pattern body is `(i % 251) as u8`. 251 is prime, so a
//! dropped, repeated or reordered chunk of any power-of-two size changes the digest.
//! Chunks are slices of one static block, so generating 200 MB copies nothing.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The pattern's period.
const PERIOD: usize = 251;
/// The size of each generated chunk.
pub const CHUNK: usize = 64 * 1024;

/// `CHUNK + PERIOD` bytes of pattern: any chunk starting at any offset is a slice of it.
static BLOCK: LazyLock<Vec<u8>> =
    LazyLock::new(|| (0..CHUNK + PERIOD).map(|i| (i % PERIOD) as u8).collect());

/// The `len` bytes of pattern starting at `offset`, without copying (`len <= CHUNK`).
pub fn pattern_chunk(offset: u64, len: usize) -> Bytes {
    assert!(len <= CHUNK, "pattern chunks are at most {CHUNK} bytes");
    let block: &'static [u8] = &BLOCK;
    let start = (offset % PERIOD as u64) as usize;
    Bytes::from_static(&block[start..start + len])
}

/// The first `len` bytes of the pattern, in memory. For small bodies only.
pub fn pattern_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % PERIOD) as u8).collect()
}

/// The digest of the first `len` bytes of the pattern, computed without holding them.
pub fn pattern_digest(len: u64) -> (u64, u32) {
    let mut digest = Digest::new();
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(CHUNK as u64) as usize;
        digest.update(&pattern_chunk(offset, n));
        offset += n as u64;
    }
    digest.finish()
}

// === impl Digest ===

/// Length and CRC-32 of a body seen chunk by chunk.
#[derive(Default, Clone)]
pub struct Digest {
    len: u64,
    crc: crc32fast::Hasher,
}

impl Digest {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.len += chunk.len() as u64;
        self.crc.update(chunk);
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// `(length, crc32)`.
    pub fn finish(&self) -> (u64, u32) {
        (self.len, self.crc.clone().finalize())
    }
}

/// `(length, crc32)` of a body held in memory.
pub fn digest(bytes: &[u8]) -> (u64, u32) {
    let mut d = Digest::new();
    d.update(bytes);
    d.finish()
}

// === impl PatternBody ===

/// An `http_body::Body` of `len` pattern bytes, generated as it is read.
///
/// With [`PatternBody::fail_after`], it yields an error once that many bytes have gone
/// out, which truncates the message on the wire (a reset for HTTP/2).
#[derive(Debug, Clone)]
pub struct PatternBody {
    len: u64,
    sent: u64,
    fail_after: Option<u64>,
    flushed: bool,
}

/// The error a [`PatternBody`] yields when told to fail.
#[derive(Debug)]
pub struct PatternFailed;

impl std::fmt::Display for PatternFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("pattern body failed on purpose")
    }
}

impl std::error::Error for PatternFailed {}

impl PatternBody {
    pub fn new(len: u64) -> Self {
        Self {
            len,
            sent: 0,
            fail_after: None,
            flushed: false,
        }
    }

    /// Stop with an error after `n` bytes (the size hint still says `len`).
    pub fn fail_after(mut self, n: u64) -> Self {
        self.fail_after = Some(n);
        self
    }

    /// Wrap as a reqwest request body (streamed, so reqwest won't buffer or retry it).
    pub fn into_reqwest(self) -> reqwest::Body {
        reqwest::Body::wrap(self)
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = PatternFailed;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, PatternFailed>>> {
        let this = self.get_mut();
        let end = this.fail_after.map_or(this.len, |f| f.min(this.len));
        if this.sent >= end {
            if this.fail_after.is_some() && this.sent < this.len {
                if !this.flushed {
                    // Yield once so the server flushes what it has (at least the response
                    // head) before the error makes it drop the connection.
                    this.flushed = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                return Poll::Ready(Some(Err(PatternFailed)));
            }
            return Poll::Ready(None);
        }
        let n = (end - this.sent).min(CHUNK as u64) as usize;
        let chunk = pattern_chunk(this.sent, n);
        this.sent += n as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.fail_after.is_none() && self.sent >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.sent.min(self.len))
    }
}

/// A request body sent as `chunks` with no length hint, so clients send it chunked
/// (HTTP/1.1) or without `content-length` (HTTP/2), and weir learns its size only while
/// streaming it.
pub fn unsized_body(chunks: impl IntoIterator<Item = Bytes>) -> reqwest::Body {
    reqwest::Body::wrap(Unsized(chunks.into_iter().collect()))
}

struct Unsized(VecDeque<Bytes>);

impl Body for Unsized {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
