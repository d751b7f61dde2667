//! Body types: what weir streams between client and upstream.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

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

/// A request extension: the request's body is all in memory (one that came whole with
/// its head, or one weir buffered), so reading it never waits. The upstream pool takes
/// such a body off the request, to send it with its head; it polls no other body
/// early, which would start the client's wait clock (and a `100-continue`) before
/// there is a connection to send it on.
#[derive(Clone, Copy, Debug)]
pub struct Whole;

/// The error [`collect_limited`] fails with once a body passes its limit.
#[derive(Debug, thiserror::Error)]
#[error("body larger than {0} bytes")]
pub struct TooLarge(pub u64);

/// What went wrong with a client's request body: the client's fault, never the
/// upstream's. A [`ClientBody`] fails with it and records it in its [`BodyFault`] cell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyFaultKind {
    /// More than the limit came.
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    /// The framing was broken (e.g. a malformed chunk size).
    #[error("{0}")]
    Malformed(String),
    /// Nothing came for this long while weir was waiting for the body.
    #[error("no request body data for {} ms", .0.as_millis())]
    Stalled(Duration),
    /// The body came slower than this many bytes per second of waiting for it.
    #[error("the request body came slower than the minimum of {0} bytes per second")]
    TooSlow(u64),
    /// The client went away before its body ended.
    #[error("{0}")]
    Closed(String),
}

impl BodyFaultKind {
    /// Sorts an error of the client's body stream: broken framing is the client's
    /// malformed request, anything else (EOF mid-body, a reset, an HTTP/2 stream the
    /// client cancelled) means the client went away.
    fn of(err: &(dyn std::error::Error + 'static)) -> BodyFaultKind {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
                )
            {
                return BodyFaultKind::Malformed(io.to_string());
            }
            cur = e.source();
        }
        BodyFaultKind::Closed(err.to_string())
    }
}

/// One cell per client request that says whether, and how, the client's body failed,
/// and whether weir is waiting for more of it right now. The upstream client and the
/// chain see only an opaque body error (or, over HTTP/2, a reset stream), so they read
/// this cell to tell a client's fault from the upstream's.
#[derive(Debug, Clone)]
pub struct BodyFault(Option<Arc<FaultState>>);

#[derive(Debug, Default)]
struct FaultState {
    /// The first fault; later ones change nothing.
    fault: OnceLock<BodyFaultKind>,
    /// weir asked for the next frame and it has not come yet.
    waiting: AtomicBool,
}

impl Default for BodyFault {
    fn default() -> BodyFault {
        BodyFault::new()
    }
}

impl BodyFault {
    /// A cell with no fault.
    pub fn new() -> BodyFault {
        BodyFault(Some(Arc::default()))
    }

    /// The cell of a request without a body, which has nothing to fail: it never holds
    /// a fault, and costs no allocation.
    pub fn never() -> BodyFault {
        BodyFault(None)
    }

    /// How the client's body failed, if it did.
    pub fn get(&self) -> Option<&BodyFaultKind> {
        self.0.as_ref()?.fault.get()
    }

    /// Whether weir is waiting for the client's next body frame: a deadline that passes
    /// now passes because the client is slow, not the upstream.
    pub fn waiting(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|s| s.waiting.load(Ordering::Relaxed))
    }

    fn set_waiting(&self, waiting: bool) {
        if let Some(s) = &self.0 {
            s.waiting.store(waiting, Ordering::Relaxed);
        }
    }

    fn set(&self, kind: BodyFaultKind) -> BodyFaultKind {
        match &self.0 {
            Some(s) => s.fault.get_or_init(|| kind).clone(),
            None => kind,
        }
    }
}

/// A timer for one wait for a body's next frame: set when the wait begins, kept while
/// it lasts, dropped when a frame comes. Its timer is taken once (on a worker, one it
/// kept: [`crate::deadline`]) and reset after.
#[derive(Default)]
struct WaitTimer {
    timer: crate::deadline::Timer,
    armed: bool,
}

impl WaitTimer {
    /// Whether the wait has run past `until`, arming the timer for it if this wait has
    /// none yet (a wait's `until` is the one it began with).
    fn expired(&mut self, until: tokio::time::Instant, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            self.timer.set(until);
            self.armed = true;
        }
        self.timer.poll(cx).is_ready()
    }

    /// Ends the wait.
    fn disarm(&mut self) {
        self.armed = false;
    }

    fn armed(&self) -> bool {
        self.armed
    }
}

/// A client's request body as weir reads it: it fails past `limit` bytes, or when no
/// frame comes for `read_timeout` while weir waits for one, and records in a
/// [`BodyFault`] every way it fails, its own limits and the client's broken framing
/// or departure alike.
pub struct ClientBody<B> {
    inner: B,
    remaining: u64,
    limit: u64,
    read_timeout: Duration,
    /// The stall and the rate checks' timer.
    timer: WaitTimer,
    fault: BodyFault,
    /// The least bytes per second of waiting, checked once `grace` of waiting has
    /// passed; `None` checks no rate.
    min_rate: Option<(u64, Duration)>,
    /// Bytes received so far.
    received: u64,
    /// Time spent waiting for the client, the current wait excluded.
    waited: Duration,
    /// When the current wait began.
    wait_began: Option<tokio::time::Instant>,
}

impl<B> ClientBody<B> {
    /// Wraps `inner`; `fault` records how it failed.
    pub fn new(inner: B, limit: u64, read_timeout: Duration, fault: BodyFault) -> Self {
        ClientBody {
            inner,
            remaining: limit,
            limit,
            read_timeout,
            timer: WaitTimer::default(),
            fault,
            min_rate: None,
            received: 0,
            waited: Duration::ZERO,
            wait_began: None,
        }
    }

    /// Also fails once the body has come slower than `bytes_per_sec` per second of
    /// waiting for it, after `grace` of waiting: a client that dribbles its body (one
    /// byte every few seconds) holds a request, and an upstream connection, for as long
    /// as it likes under the stall timeout alone. `0` checks no rate.
    pub fn with_min_rate(mut self, bytes_per_sec: u64, grace: Duration) -> Self {
        self.min_rate = (bytes_per_sec > 0).then_some((bytes_per_sec, grace));
        self
    }

    /// Ends the current wait, adding it to the time waited.
    fn stop_waiting(&mut self) {
        self.timer.disarm();
        self.fault.set_waiting(false);
        if let Some(began) = self.wait_began.take() {
            self.waited += began.elapsed();
        }
    }

    /// When the current wait, begun at `began`, makes the body too slow: once the time
    /// waited passes both the grace and the time its bytes so far allow at the rate.
    fn too_slow_at(&self, began: tokio::time::Instant) -> Option<tokio::time::Instant> {
        let (rate, grace) = self.min_rate?;
        let allowed = Duration::from_secs_f64(self.received as f64 / rate as f64).max(grace);
        Some(began + allowed.saturating_sub(self.waited))
    }

    fn fail(&mut self, kind: BodyFaultKind) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.stop_waiting();
        Poll::Ready(Some(Err(Box::new(self.fault.set(kind)))))
    }
}

// The inner error is concretely `BoxError`: a generic `Into<BoxError>` bound here trips
// rustc's higher-ranked `Send` check in the futures that poll this body.
impl<B> Body for ClientBody<B>
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
                this.stop_waiting();
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        return this.fail(BodyFaultKind::TooLarge(this.limit));
                    }
                    this.remaining -= n;
                    this.received += n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(BodyFaultKind::of(e.as_ref())),
            Poll::Ready(None) => {
                this.stop_waiting();
                Poll::Ready(None)
            }
            Poll::Pending => {
                // The clock runs only while weir waits for the client; time the body
                // sits unpolled (an upstream that reads slowly) is not the client's.
                let now = tokio::time::Instant::now();
                let began = *this.wait_began.get_or_insert(now);
                let stalled_at = began + this.read_timeout;
                let slow_at = this.too_slow_at(began);
                let until = slow_at.map_or(stalled_at, |s| s.min(stalled_at));
                if !this.timer.armed() {
                    this.fault.set_waiting(true);
                }
                if this.timer.expired(until, cx) {
                    return match slow_at {
                        Some(at) if at < stalled_at => {
                            let rate = this.min_rate.map_or(0, |(r, _)| r);
                            this.fail(BodyFaultKind::TooSlow(rate))
                        }
                        _ => this.fail(BodyFaultKind::Stalled(this.read_timeout)),
                    };
                }
                Poll::Pending
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

/// The error an upstream's response body fails with when it stalls.
#[derive(Debug, thiserror::Error)]
#[error("no response body data from the upstream for {} ms", .0.as_millis())]
pub struct UpstreamStalled(pub Duration);

/// An upstream's response body that fails with [`UpstreamStalled`] when no frame comes
/// for `idle` while weir waits for one: an upstream that sends a head and then nothing,
/// or drips its body, would otherwise hold the client (and the connection) for good.
/// As with [`ClientBody`], the clock runs only while weir waits: time the body sits
/// unpolled because the client reads slowly is not the upstream's.
pub struct ReadTimeout<B> {
    inner: B,
    idle: Duration,
    timer: WaitTimer,
}

impl<B> ReadTimeout<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, idle: Duration) -> Self {
        ReadTimeout {
            inner,
            idle,
            timer: WaitTimer::default(),
        }
    }

    /// The body it wraps.
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B> Body for ReadTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer.disarm();
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let until = tokio::time::Instant::now() + this.idle;
                if this.timer.expired(until, cx) {
                    this.timer.disarm();
                    return Poll::Ready(Some(Err(Box::new(UpstreamStalled(this.idle)))));
                }
                Poll::Pending
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

/// A body that keeps something alive (the slow-client watch's hold on a response) until
/// it ends or is dropped.
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
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// A client's request body that, if dropped unread (weir answered early: 413, 404, a
/// filter's respond), is read to its end in the background, up to [`DRAIN_BYTES`] and
/// [`DRAIN_TIME`], before the connection closes. Closing a socket with unread data makes
/// the kernel send a reset, and the client can lose the response it was about to read
/// (the "lingering close" nginx does for the same reason).
pub struct Drain<H: Send + 'static> {
    inner: Option<hyper::body::Incoming>,
    /// Kept until the body has been read to its end (here or in the background), then
    /// dropped: what tells the connection that its request is no longer in hand.
    held: Option<H>,
}

impl<H: Send + 'static> Drain<H> {
    /// Wraps a client's request body, keeping `held` until it has been read to its end.
    pub fn holding(inner: hyper::body::Incoming, held: H) -> Drain<H> {
        Drain {
            inner: Some(inner),
            held: Some(held),
        }
    }
}

impl<H: Send + Unpin + 'static> Body for Drain<H> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let poll = match self.inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        };
        if matches!(poll, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.held = None;
        }
        poll
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

impl<H: Send + 'static> Drop for Drain<H> {
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
        let held = self.held.take();
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
            drop(held);
        });
    }
}

/// Reads a whole body, failing with [`TooLarge`] past `limit` bytes.
pub async fn collect_limited(mut body: ProxyBody, limit: u64) -> Result<Bytes, BoxError> {
    if body.size_hint().lower() > limit {
        return Err(Box::new(TooLarge(limit)));
    }
    // A plain loop rather than a limiting body + `collect()`: polling a generic body type in
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
    async fn a_client_body_over_its_limit_records_the_fault() {
        let fault = BodyFault::new();
        let body = ClientBody::new(
            full(Bytes::from_static(b"0123456789")),
            4,
            Duration::from_secs(1),
            fault.clone(),
        );
        assert!(body.collect().await.is_err());
        assert_eq!(fault.get(), Some(&BodyFaultKind::TooLarge(4)));
    }

    /// A body whose first frame never comes.
    fn silent() -> ProxyBody {
        http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, BoxError>,
        >())
        .boxed_unsync()
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_client_body_fails_after_its_read_timeout() {
        let fault = BodyFault::new();
        let timeout = Duration::from_millis(300);
        let mut body = ClientBody::new(silent(), 100, timeout, fault.clone());
        let started = tokio::time::Instant::now();
        let err = body.frame().await.expect("a frame").unwrap_err();
        assert_eq!(started.elapsed(), timeout);
        assert_eq!(err.to_string(), "no request body data for 300 ms");
        assert_eq!(fault.get(), Some(&BodyFaultKind::Stalled(timeout)));
        assert!(!fault.waiting());
    }

    #[tokio::test(start_paused = true)]
    async fn the_read_clock_restarts_with_each_frame_and_only_runs_while_waiting() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = http_body_util::StreamBody::new(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|frame| (frame, rx)) },
        ))
        .boxed_unsync();
        let fault = BodyFault::new();
        let timeout = Duration::from_millis(300);
        let mut body = ClientBody::new(stream, 100, timeout, fault.clone());
        // Frames 200 ms apart never trip a 300 ms clock.
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .unwrap();
            }
            // Then nothing: the sender stays open.
            std::future::pending::<()>().await;
        });
        for _ in 0..5 {
            let frame = body.frame().await.unwrap().unwrap();
            assert!(!fault.waiting());
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        // Not polled for longer than the timeout: not the client's stall.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(fault.get().is_none());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert!(fault.waiting(), "weir now waits for the client");
        let started = tokio::time::Instant::now();
        assert!(body.frame().await.unwrap().is_err());
        assert!(started.elapsed() <= timeout);
        assert_eq!(fault.get(), Some(&BodyFaultKind::Stalled(timeout)));
        feeder.abort();
    }

    /// A body fed from a channel, and its sender.
    fn fed() -> (
        tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
        ProxyBody,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = http_body_util::StreamBody::new(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|frame| (frame, rx)) },
        ))
        .boxed_unsync();
        (tx, stream)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_dribbled_slower_than_the_minimum_rate_fails_after_the_grace() {
        let (tx, stream) = fed();
        let fault = BodyFault::new();
        // A byte every 2 s never stalls a 3 s clock, but averages 0.5 bytes/s.
        let mut body = ClientBody::new(stream, 1000, Duration::from_secs(3), fault.clone())
            .with_min_rate(100, Duration::from_secs(5));
        let feeder = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if tx
                    .send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let started = tokio::time::Instant::now();
        let mut got = 0;
        let err = loop {
            match body.frame().await.expect("a frame") {
                Ok(_) => got += 1,
                Err(e) => break e,
            }
        };
        // Two bytes came by 4 s; at 100 bytes/s they allow 20 ms, so the 5 s grace
        // decides: the body fails when 5 s of waiting have passed.
        assert_eq!(got, 2);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(
            err.to_string(),
            "the request body came slower than the minimum of 100 bytes per second"
        );
        assert_eq!(fault.get(), Some(&BodyFaultKind::TooSlow(100)));
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_minimum_rate_or_faster_is_never_cut_off() {
        let (tx, stream) = fed();
        let fault = BodyFault::new();
        let mut body = ClientBody::new(stream, 100_000, Duration::from_secs(3), fault.clone())
            .with_min_rate(100, Duration::from_secs(1));
        // 200 bytes at once and then every second for 20 s: twice the minimum.
        let feeder = tokio::spawn(async move {
            for _ in 0..20 {
                tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; 200]))))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut got = 0;
        while let Some(frame) = body.frame().await {
            got += frame.unwrap().into_data().unwrap().len();
        }
        assert_eq!(got, 4000);
        assert!(fault.get().is_none());
        feeder.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_body_is_not_polled_does_not_count_against_its_rate() {
        let (tx, stream) = fed();
        let fault = BodyFault::new();
        let mut body = ClientBody::new(stream, 1000, Duration::from_secs(3), fault.clone())
            .with_min_rate(100, Duration::from_secs(1));
        tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; 100]))))
            .await
            .unwrap();
        assert_eq!(
            body.frame()
                .await
                .unwrap()
                .unwrap()
                .into_data()
                .unwrap()
                .len(),
            100
        );
        // weir does not read for a minute (a slow upstream): not the client's time.
        tokio::time::sleep(Duration::from_secs(60)).await;
        tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; 100]))))
            .await
            .unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        drop(tx);
        assert!(body.frame().await.is_none());
        assert!(fault.get().is_none());
    }

    fn failing(err: BoxError) -> ProxyBody {
        http_body_util::StreamBody::new(futures_util::stream::iter([Err::<Frame<Bytes>, _>(err)]))
            .boxed_unsync()
    }

    /// The fault a client body records when its stream fails with `err`.
    async fn fault_of(err: BoxError) -> BodyFaultKind {
        let fault = BodyFault::new();
        let body = ClientBody::new(failing(err), 100, Duration::from_secs(1), fault.clone());
        let err = body.collect().await.unwrap_err();
        let kind = fault.get().expect("a fault").clone();
        assert_eq!(err.to_string(), kind.to_string());
        kind
    }

    #[tokio::test]
    async fn broken_framing_is_malformed_and_anything_else_is_the_client_leaving() {
        let bad_chunk =
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid chunk size line");
        let kind = fault_of(Box::new(bad_chunk)).await;
        assert!(
            matches!(&kind, BodyFaultKind::Malformed(m) if m.contains("chunk size")),
            "{kind:?}"
        );
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "incomplete body");
        let kind = fault_of(Box::new(eof)).await;
        assert!(matches!(kind, BodyFaultKind::Closed(_)), "{kind:?}");
        let kind = fault_of("stream reset by the client".into()).await;
        assert!(matches!(kind, BodyFaultKind::Closed(_)), "{kind:?}");
    }
}
