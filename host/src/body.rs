//! Body types: what weir streams between client and upstream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

/// The error type of every body weir streams.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body as weir passes it on: streamed or buffered.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body of these bytes.
pub fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    full(Bytes::new())
}

/// Any body, boxed.
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// The error a [`Limited`] body fails with once it passes its limit.
#[derive(Debug, thiserror::Error)]
#[error("body larger than {0} bytes")]
pub struct TooLarge(pub u64);

/// A body that fails once more than `limit` bytes have passed, and raises a flag that the
/// request's error mapping reads (the upstream client only sees an opaque body error).
pub struct Limited<B> {
    inner: B,
    remaining: u64,
    limit: u64,
    tripped: Arc<AtomicBool>,
}

impl<B> Limited<B> {
    /// Wraps `inner`; `tripped` is set when the limit is passed.
    pub fn new(inner: B, limit: u64, tripped: Arc<AtomicBool>) -> Self {
        Limited {
            inner,
            remaining: limit,
            limit,
            tripped,
        }
    }
}

// The inner error is concretely `BoxError`: a generic `Into<BoxError>` bound here trips
// rustc's higher-ranked `Send` check in the futures that poll this body.
impl<B> Body for Limited<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        this.tripped.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(TooLarge(this.limit)))));
                    }
                    this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body that keeps something alive (a connection permit) until it ends or is dropped.
pub struct Holding<B, T> {
    inner: B,
    held: Option<T>,
}

impl<B, T> Holding<B, T> {
    /// Wraps `inner`, dropping `held` when the body finishes.
    pub fn new(inner: B, held: T) -> Self {
        Holding {
            inner,
            held: Some(held),
        }
    }
}

impl<B, T> Body for Holding<B, T>
where
    B: Body + Unpin,
    T: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(poll, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.held = None;
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How much of an unread request body weir still reads (and drops) after answering early.
const DRAIN_BYTES: u64 = 1 << 20;
/// How long weir keeps reading an unread request body after answering early.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// A client's request body that, if dropped unread (weir answered early: 413, 404, a
/// filter's respond), is read to its end in the background, up to [`DRAIN_BYTES`] and
/// [`DRAIN_TIME`], before the connection closes. Closing a socket with unread data makes
/// the kernel send a reset, and the client can lose the response it was about to read
/// (the "lingering close" nginx does for the same reason).
pub struct Drain {
    inner: Option<hyper::body::Incoming>,
}

impl Drain {
    /// Wraps a client's request body.
    pub fn new(inner: hyper::body::Incoming) -> Drain {
        Drain { inner: Some(inner) }
    }
}

impl Body for Drain {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            let drain = async {
                let mut read = 0u64;
                while let Some(Ok(frame)) = body.frame().await {
                    if let Some(d) = frame.data_ref() {
                        read += d.len() as u64;
                        if read > DRAIN_BYTES {
                            break;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        });
    }
}

/// Reads a whole body, failing with [`TooLarge`] past `limit` bytes.
pub async fn collect_limited(mut body: ProxyBody, limit: u64) -> Result<Bytes, BoxError> {
    if body.size_hint().lower() > limit {
        return Err(Box::new(TooLarge(limit)));
    }
    // A plain loop rather than `Limited` + `collect()`: polling a generic body type in
    // this future trips rustc's higher-ranked `Send` check in the callers.
    let mut first: Option<Bytes> = None;
    let mut rest = bytes::BytesMut::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > limit {
            return Err(Box::new(TooLarge(limit)));
        }
        match &first {
            None => first = Some(data),
            Some(f) => {
                if rest.is_empty() {
                    rest.extend_from_slice(f);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    })
}

/// Whether `err`, or any error it wraps, is a [`TooLarge`].
pub fn is_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<TooLarge>() {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limited_passes_small_and_refuses_large() {
        let ok = collect_limited(full(Bytes::from_static(b"hello")), 5).await;
        assert_eq!(ok.unwrap(), Bytes::from_static(b"hello"));
        let err = collect_limited(full(Bytes::from_static(b"hello!")), 5)
            .await
            .unwrap_err();
        assert!(is_too_large(err.as_ref()));
    }

    #[tokio::test]
    async fn limited_sets_its_flag() {
        let flag = Arc::new(AtomicBool::new(false));
        let body = Limited::new(full(Bytes::from_static(b"0123456789")), 4, flag.clone());
        assert!(body.collect().await.is_err());
        assert!(flag.load(Ordering::Relaxed));
    }
}
