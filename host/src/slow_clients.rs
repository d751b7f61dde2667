//! Slow clients, kept by one sweep per worker instead of a timer per request:
//! `listen.header_read_timeout`, how long a connection may wait for its next request
//! head (on HTTP/2, its next stream), and `listen.send_timeout`, how long a connection
//! may take none of what weir is sending it.
//!
//! hyper's own header-read timeout arms a boxed tokio `Sleep` for every request head: a
//! clock read, an allocation, a timer-wheel insert and removal, about 1.5k instructions
//! and 4 % of the empty chain's per request (`bench/README.md`). Here each connection
//! keeps a [`Watch`]: how many of its requests weir holds (a request's response until
//! hyper is done with it, and its body until read to its end), whether its last
//! response's bytes are still being flushed, since when it has been waiting, and since
//! when its writes have been blocked. A request costs a few uncontended atomic
//! operations on it: no lock, no timer, no clock read. The wait for a head starts once
//! nothing is held and the last response is flushed, as hyper's timer did, so a slow
//! reader of a large response is not cut by it.
//!
//! A client that reads nothing at all is another matter: hyper stops pulling the
//! response body, and the body holds its upstream connection and its slot of the
//! upstream's `max_connections` for as long as the client likes, so a few such clients
//! would starve everyone else of that upstream. So a write (or flush) that the socket
//! cannot take starts a stall, and the next one it takes ends it; a stall longer than
//! `send_timeout` is cut, as nginx's `send_timeout` does. It bounds the time between two
//! writes, not the whole response; but the kernel wakes a stalled writer only once a
//! third of its send buffer (at most 4 MiB here) has drained, so a client reading
//! slower than that per timeout is cut while still reading (see `docs/design-notes.md`).
//!
//! Each worker's [`Sweep`] runs every quarter of the shorter timeout (between 10 ms and
//! 1 s). A connection found waiting or stalled longer than its timeout is marked, and
//! cut (its task aborted, which drops its requests and their upstream connections) at
//! the next run if it is still in the same wait or stall: a head already in the socket,
//! or a socket drained, while the worker was busy gets its turn in between. So a
//! connection is never cut before its timeout (unless the worker runs the sweep more
//! than a period late), and at most about three periods after it.
//!
//! The wait for a head covers the TLS handshake (it starts at the accept), an idle
//! keep-alive connection, and a head sent slowly. On HTTP/2 it is the wait for the next
//! stream: an HTTP/2 connection with no stream in weir's hands for that long is idle,
//! and is closed as an idle HTTP/1 one is (hyper's timeout never applied to HTTP/2, so
//! such a connection stayed open for good, holding a slot of `max_connections`). Its
//! socket's writes are watched like any other connection's, and so is each of its
//! streams' responses ([`Pulled`]): a client can hold a stream back with HTTP/2's own
//! flow control and leave nothing unwritten in the socket. A response that hyper was
//! handed, or took a frame of, and has not asked for more of since is held back if the
//! socket has meanwhile taken less than [`STREAM_PROGRESS`] a timeout: h2 sends the
//! streams' frames in turn, so on a busy connection a stream also waits its share.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::lock;

/// `stalled` of a connection whose writes are going through.
const FLOWING: u64 = u64::MAX;

/// The least a write to an HTTP/2 connection's socket takes for the connection to count
/// as busy: a response's frames (its head, its data) are more, a PING's answer (17
/// bytes), a window update or a settings acknowledgement are less.
const ACTIVE_WRITE: usize = 64;

/// How much an HTTP/2 connection's socket must take in each `send_timeout` for its
/// responses' waits for hyper to ask for more to count as their share of a slow client
/// (h2 sends the streams' frames in turn) rather than a stream held back: about what a
/// stalled HTTP/1 writer needs drained before the kernel wakes it, a third of a 4 MiB
/// send buffer.
const STREAM_PROGRESS: u64 = 1 << 20;

/// The two timeouts a sweep keeps.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// `listen.header_read_timeout`.
    pub head: Duration,
    /// `listen.send_timeout`.
    pub send: Duration,
}

/// What the sweep counts as it cuts: one counter for each timeout.
#[derive(Clone)]
pub struct Cuts {
    /// Connections cut for waiting too long for a request head.
    pub head: prometheus::IntCounter,
    /// Connections cut for taking none of weir's bytes for too long.
    pub send: prometheus::IntCounter,
}

/// One worker's watched connections and the clock they read.
pub struct Sweep {
    start: Instant,
    /// Milliseconds from `start` at the last run: the connections' clock.
    clock: Arc<AtomicU64>,
    head_ms: u64,
    send_ms: u64,
    period: Duration,
    cuts: Cuts,
    conns: Mutex<Watched>,
}

/// A connection's wait or stall past its timeout, by its start: what a mark remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Overdue {
    Head(u64),
    Send(u64),
}

/// The connections a sweep watches.
struct Watched {
    list: Vec<Entry>,
    /// The list's length that makes [`Sweep::watch`] drop ended connections first: an
    /// ended task's memory lives as long as its [`AbortHandle`].
    compact_at: usize,
}

struct Entry {
    watch: Arc<Watch>,
    task: AbortHandle,
    /// What the last run found past its timeout: cut if it still is.
    marked: Option<Overdue>,
    /// The run at which the socket had last taken [`STREAM_PROGRESS`] more bytes since
    /// the one before, and its count of bytes then.
    progress: (u64, u64),
}

/// One connection's state, shared by its task and its worker's sweep, which run on the
/// worker's thread, so relaxed ordering is enough, but for one thing: a request body
/// can be read, and its [`InHand`] dropped, by an upstream connection's task on another
/// worker. So the flush and the drop of the last [`InHand`] order `held` and
/// `unflushed` sequentially, which makes one of the two see the other's change and
/// start the wait.
pub struct Watch {
    /// When the connection began waiting for a head, in the clock's milliseconds.
    /// Meaningless while `held` is not zero or `unflushed` is set.
    since: AtomicU64,
    /// The connection speaks HTTP/2: its responses are watched as hyper pulls them.
    http2: AtomicBool,
    /// Requests and request bodies weir holds ([`InHand`]s alive).
    held: AtomicU32,
    /// A response ended and hyper has not yet flushed its last bytes.
    unflushed: AtomicBool,
    /// When the socket last refused a write or flush that it has not taken since, in the
    /// clock's milliseconds, or [`FLOWING`].
    stalled: AtomicU64,
    /// The bytes the socket has taken.
    written: AtomicU64,
    /// An HTTP/2 connection's responses in progress (none on HTTP/1).
    streams: Mutex<Vec<Weak<Pulls>>>,
    clock: Arc<AtomicU64>,
}

/// How hyper pulls one HTTP/2 response: since when it has left the next frame unasked
/// for (from the response's start, or its last frame), in the clock's milliseconds, or
/// [`FLOWING`] while it waits on the response itself.
pub struct Pulls {
    since: AtomicU64,
    clock: Arc<AtomicU64>,
}

/// An HTTP/2 response body that tells its [`Pulls`] how hyper pulls it.
pub struct Pulled<B> {
    inner: B,
    pulls: Arc<Pulls>,
}

/// One request, or one request body, in weir's hands: the connection is not waiting for
/// a head while one is alive.
pub struct InHand {
    watch: Arc<Watch>,
    /// A response's: its end leaves bytes to flush.
    response: bool,
}

impl Sweep {
    /// A sweep cutting connections that wait more than `timeouts.head` for a head, or
    /// whose writes stall more than `timeouts.send`, counting each cut in `cuts`.
    pub fn new(timeouts: Timeouts, cuts: Cuts) -> Arc<Sweep> {
        let shorter = timeouts.head.min(timeouts.send);
        let period = (shorter / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4);
        Arc::new(Sweep {
            start: Instant::now(),
            clock: Arc::new(AtomicU64::new(0)),
            head_ms: ms(timeouts.head),
            send_ms: ms(timeouts.send),
            period,
            cuts,
            conns: Mutex::new(Watched {
                list: Vec::new(),
                compact_at: 64,
            }),
        })
    }

    /// A new connection's state, waiting from now. It is watched once [`Sweep::watch`]
    /// has its task.
    pub fn begin(&self) -> Arc<Watch> {
        Arc::new(Watch {
            since: AtomicU64::new(self.clock.load(Relaxed)),
            http2: AtomicBool::new(false),
            held: AtomicU32::new(0),
            unflushed: AtomicBool::new(false),
            stalled: AtomicU64::new(FLOWING),
            written: AtomicU64::new(0),
            streams: Mutex::new(Vec::new()),
            clock: self.clock.clone(),
        })
    }

    /// Watches a connection's task: the sweep aborts it once its wait or a stall is too
    /// long.
    pub fn watch(&self, watch: Arc<Watch>, task: AbortHandle) {
        let mut conns = lock(&self.conns);
        if conns.list.len() >= conns.compact_at {
            conns.list.retain(|c| !c.task.is_finished());
            conns.compact_at = (conns.list.len() * 2).max(64);
        }
        let now = self.clock.load(Relaxed);
        conns.list.push(Entry {
            watch,
            task,
            marked: None,
            progress: (now, 0),
        });
    }

    /// Runs the sweep every period, forever: run it on the connections' own runtime.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(FLOWING - 1);
            self.clock.store(now, Relaxed);
            self.sweep(now);
        }
    }

    /// Marks the connections found past a timeout at `now`, aborts those marked at the
    /// last run for the same wait or stall, counts and logs what it cut, and forgets the
    /// connections that ended.
    fn sweep(&self, now: u64) {
        // A wait's or stall's start is read from the clock, which is up to a period old.
        let period = self.period.as_millis() as u64;
        let (mut heads, mut sends) = (0, 0);
        lock(&self.conns).list.retain_mut(|c| {
            if c.task.is_finished() {
                return false;
            }
            let written = c.watch.written.load(Relaxed);
            if written.wrapping_sub(c.progress.1) >= STREAM_PROGRESS {
                c.progress = (now, written);
            }
            let send_limit = self.send_ms + period;
            let overdue = c
                .watch
                .overdue(now, self.head_ms + period, send_limit, c.progress.0);
            match overdue {
                Some(o) if c.marked == Some(o) => {
                    c.task.abort();
                    match o {
                        Overdue::Head(_) => heads += 1,
                        Overdue::Send(_) => sends += 1,
                    }
                    false
                }
                _ => {
                    c.marked = overdue;
                    true
                }
            }
        });
        if heads > 0 {
            self.cuts.head.inc_by(heads);
            tracing::debug!(
                connections = heads,
                "closed connections that sent no request head within listen.header_read_timeout"
            );
        }
        if sends > 0 {
            self.cuts.send.inc_by(sends);
            tracing::debug!(
                connections = sends,
                "closed connections that took none of their response within listen.send_timeout"
            );
        }
    }

    /// How many connections it watches (ended ones go at its next run).
    #[cfg(test)]
    fn watched(&self) -> usize {
        lock(&self.conns).list.len()
    }
}

impl Watch {
    /// A request head (or an HTTP/2 stream) arrived. Returns what keeps the connection
    /// out of its wait: one for the response, and one for the request's body if it has
    /// one.
    pub fn request(self: &Arc<Self>, http2: bool, body: bool) -> (Option<InHand>, Option<InHand>) {
        if http2 {
            self.speaks_http2();
        }
        self.held.fetch_add(1 + u32::from(body), Relaxed);
        let in_hand = |response| InHand {
            watch: self.clone(),
            response,
        };
        (Some(in_hand(true)), body.then(|| in_hand(false)))
    }

    /// The connection speaks HTTP/2 (by ALPN, or its first request says so).
    pub fn speaks_http2(&self) {
        if !self.http2.load(Relaxed) {
            self.http2.store(true, Relaxed);
        }
    }

    /// Watches an HTTP/2 stream's response `body` as hyper pulls it, from now.
    pub fn pulled<B>(&self, body: B) -> Pulled<B> {
        let pulls = Arc::new(Pulls {
            since: AtomicU64::new(self.clock.load(Relaxed)),
            clock: self.clock.clone(),
        });
        let mut streams = lock(&self.streams);
        if streams.len() >= 64 && streams.len().is_power_of_two() {
            streams.retain(|s| s.strong_count() > 0);
        }
        streams.push(Arc::downgrade(&pulls));
        Pulled { inner: body, pulls }
    }

    /// Since when hyper has asked for nothing more of the longest-waiting of its HTTP/2
    /// responses, if it has left one so.
    fn stream_wait(&self) -> Option<u64> {
        let mut oldest = None;
        lock(&self.streams).retain(|s| {
            let Some(pulls) = s.upgrade() else {
                return false;
            };
            let since = pulls.since.load(Relaxed);
            if since != FLOWING {
                oldest = Some(oldest.map_or(since, |o: u64| o.min(since)));
            }
            true
        });
        oldest
    }

    /// hyper flushed what it had written.
    fn flushed(&self) {
        // A load first: hyper flushes on every turn of a connection, with a response
        // to end or not.
        if self.unflushed.load(Relaxed) {
            self.unflushed.store(false, SeqCst);
            if self.held.load(SeqCst) == 0 {
                self.start_wait();
            }
        }
    }

    fn start_wait(&self) {
        self.since.store(self.clock.load(Relaxed), Relaxed);
    }

    /// What of this connection is past its limit at `now`: its socket's stall (more than
    /// `send_limit` ms), an HTTP/2 response held back as long while the socket has taken
    /// too little since `slow_since`, or else its wait for a head (more than
    /// `head_limit` ms).
    fn overdue(
        &self,
        now: u64,
        head_limit: u64,
        send_limit: u64,
        slow_since: u64,
    ) -> Option<Overdue> {
        let stalled = self.stalled.load(Relaxed);
        if stalled != FLOWING && now.saturating_sub(stalled) > send_limit {
            return Some(Overdue::Send(stalled));
        }
        if self.http2.load(Relaxed)
            && let Some(waiting) = self.stream_wait()
        {
            let held_back = waiting.max(slow_since);
            if now.saturating_sub(held_back) > send_limit {
                return Some(Overdue::Send(held_back));
            }
        }
        let since = self.since.load(Relaxed);
        let busy = self.held.load(Relaxed) > 0 || self.unflushed.load(Relaxed);
        (!busy && now.saturating_sub(since) > head_limit).then_some(Overdue::Head(since))
    }

    /// The socket refused a write or flush: a stall starts, unless one is on.
    fn refused(&self) {
        if self.stalled.load(Relaxed) == FLOWING {
            self.stalled.store(self.clock.load(Relaxed), Relaxed);
        }
    }

    /// The socket took `n` bytes.
    fn wrote(&self, n: usize) {
        // Only the connection's task writes: no read-modify-write needed.
        let written = self.written.load(Relaxed);
        self.written.store(written.wrapping_add(n as u64), Relaxed);
        // On HTTP/2 the last of a response can leave long after hyper let go of it (h2
        // keeps what the client's window does not take yet, and hyper hands it a whole
        // chunk at once): while it goes, the connection is not idle.
        if n >= ACTIVE_WRITE && self.http2.load(Relaxed) {
            self.start_wait();
        }
    }

    /// The socket took a write or flush: any stall is over.
    fn took(&self) {
        // A load first: nearly every write goes through at once.
        if self.stalled.load(Relaxed) != FLOWING {
            self.stalled.store(FLOWING, Relaxed);
        }
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        let w = &self.watch;
        if self.response {
            w.unflushed.store(true, Relaxed);
        }
        if w.held.fetch_sub(1, SeqCst) == 1 && !w.unflushed.load(SeqCst) {
            w.start_wait();
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Pulled<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        let p = &self.pulls;
        match &poll {
            // The next frame is hyper's to ask for.
            Poll::Ready(Some(Ok(_))) => p.since.store(p.clock.load(Relaxed), Relaxed),
            // Waiting on the response itself, or done.
            _ => p.since.store(FLOWING, Relaxed),
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A client connection's transport, telling its [`Watch`] when the server (hyper, or
/// weir's own HTTP/1 side) flushes (a response's wait starts once its last bytes have
/// left, not when the server took them), and when the socket refuses or takes what the
/// server writes.
pub struct Flushes<I> {
    io: I,
    watch: Arc<Watch>,
}

impl<I> Flushes<I> {
    /// `io`, reporting its flushes to `watch`.
    pub fn new(io: I, watch: Arc<Watch>) -> Flushes<I> {
        Flushes { io, watch }
    }

    /// The watch it reports to.
    pub fn watch(&self) -> &Arc<Watch> {
        &self.watch
    }

    /// The transport, no longer watched.
    pub fn into_inner(self) -> I {
        self.io
    }

    /// Tells the watch whether a write went through, and how much it took.
    fn note_write(&self, poll: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = poll {
            self.watch.wrote(n);
        }
        self.note(poll)
    }

    /// Tells the watch whether a write, flush or shutdown went through.
    fn note<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match &poll {
            Poll::Pending => self.watch.refused(),
            Poll::Ready(_) => self.watch.took(),
        }
        poll
    }
}

// hyper gets them through `TokioIo`; weir's own HTTP/1 server side uses them as they are.
impl<I: AsyncRead + Unpin> AsyncRead for Flushes<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Flushes<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.note_write(poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.note_write(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = poll {
            this.watch.flushed();
        }
        this.note(poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_shutdown(cx);
        this.note(poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(400);
    const SEND: Duration = Duration::from_millis(600);
    const PERIOD: Duration = Duration::from_millis(100);

    fn counters() -> Cuts {
        let counter = |name| prometheus::IntCounter::new(name, "test").unwrap();
        Cuts {
            head: counter("heads"),
            send: counter("sends"),
        }
    }

    fn sweep_of(head: Duration, send: Duration) -> Arc<Sweep> {
        Sweep::new(Timeouts { head, send }, counters())
    }

    /// A watched task that runs until aborted.
    fn parked(sweep: &Arc<Sweep>) -> (Arc<Watch>, tokio::task::JoinHandle<()>) {
        let watch = sweep.begin();
        let task = tokio::spawn(std::future::pending::<()>());
        sweep.watch(watch.clone(), task.abort_handle());
        (watch, task)
    }

    /// Waits for `task` to be cut (a minute at most); returns how long after `from` it
    /// was.
    async fn cut_after(task: tokio::task::JoinHandle<()>, from: Instant) -> Duration {
        let ended = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("cut within a minute")
            .unwrap_err();
        assert!(ended.is_cancelled());
        from.elapsed()
    }

    fn started() -> Arc<Sweep> {
        let sweep = sweep_of(TIMEOUT, SEND);
        assert_eq!(sweep.period, PERIOD);
        tokio::spawn(sweep.clone().run());
        sweep
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_connection_is_cut_after_the_timeout_and_never_before() {
        let sweep = started();
        let from = Instant::now();
        let (_watch, task) = parked(&sweep);
        let waited = cut_after(task, from).await;
        assert!(
            waited >= TIMEOUT && waited <= TIMEOUT + 3 * PERIOD,
            "cut after {waited:?}"
        );
        assert_eq!(sweep.watched(), 0);
        assert_eq!(sweep.cuts.head.get(), 1);
        assert_eq!(sweep.cuts.send.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_connection_is_cut_after_the_send_timeout_and_never_before() {
        let sweep = started();
        let (watch, task) = parked(&sweep);
        // A request whose response the client does not read: the socket refuses it.
        let (_response, _) = watch.request(false, false);
        watch.refused();
        let from = Instant::now();
        let waited = cut_after(task, from).await;
        assert!(
            waited >= SEND && waited <= SEND + 3 * PERIOD,
            "cut {waited:?} into the stall"
        );
        assert_eq!(sweep.cuts.send.get(), 1);
        assert_eq!(sweep.cuts.head.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_takes_bytes_now_and_then_is_never_cut() {
        let sweep = started();
        let (watch, task) = parked(&sweep);
        let (response, _) = watch.request(false, false);
        // Each stall is shorter than the send timeout, and a refusal in a stall does
        // not restart it.
        for _ in 0..50 {
            watch.refused();
            tokio::time::sleep(SEND / 4).await;
            watch.refused();
            tokio::time::sleep(SEND / 4).await;
            watch.took();
        }
        assert!(!task.is_finished(), "cut though every stall was short");
        // A long stall is cut, on HTTP/2 as well.
        let (_stream, _) = watch.request(true, false);
        drop(response);
        watch.refused();
        let from = Instant::now();
        let waited = cut_after(task, from).await;
        assert!(waited >= SEND, "cut {waited:?} into the stall");
        assert_eq!(sweep.cuts.send.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_hand_is_never_cut_and_the_wait_starts_once_its_response_is_flushed() {
        let sweep = started();
        let (watch, task) = parked(&sweep);
        let (response, body) = watch.request(false, true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        // The response ends first; its body is still being read, then the flush is late.
        drop(response);
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(body);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !task.is_finished(),
            "the response's last bytes are not flushed yet"
        );
        watch.flushed();
        let from = Instant::now();
        let waited = cut_after(task, from).await;
        assert!(
            waited >= TIMEOUT && waited <= TIMEOUT + 3 * PERIOD,
            "cut {waited:?} after the flush"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_flush_before_the_last_request_body_ends_leaves_the_wait_to_the_body() {
        let sweep = started();
        let (watch, task) = parked(&sweep);
        let (response, body) = watch.request(false, true);
        drop(response);
        watch.flushed();
        // The client is still sending the body the upstream answered early.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!task.is_finished());
        drop(body);
        let from = Instant::now();
        let waited = cut_after(task, from).await;
        assert!(waited >= TIMEOUT, "cut {waited:?} after the body ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pipelined_request_keeps_the_connection_busy_after_the_one_before_ends() {
        let sweep = started();
        let (watch, task) = parked(&sweep);
        let (first, _) = watch.request(false, false);
        let (second, _) = watch.request(false, false);
        drop(first);
        watch.flushed();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!task.is_finished(), "the second request is in hand");
        drop(second);
        watch.flushed();
        let from = Instant::now();
        let waited = cut_after(task, from).await;
        assert!(waited >= TIMEOUT);
    }

    /// A response body that answers each poll with the next of its steps: a frame
    /// (`Some`), or a wait on the upstream (`None`, and no wake); then its end.
    struct Steps(std::collections::VecDeque<Option<&'static str>>);

    impl hyper::body::Body for Steps {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
            match self.0.pop_front() {
                Some(Some(data)) => Poll::Ready(Some(Ok(hyper::body::Frame::data(
                    bytes::Bytes::from_static(data.as_bytes()),
                )))),
                Some(None) => Poll::Pending,
                None => Poll::Ready(None),
            }
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    /// Polls `body` once, as hyper does when it has room for a frame.
    fn pull(body: &mut Pulled<Steps>) -> Poll<bool> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        hyper::body::Body::poll_frame(Pin::new(body), &mut cx).map(|f| f.is_some())
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_response_hyper_stops_pulling_is_cut_and_one_waiting_on_its_upstream_is_not() {
        let sweep = started();
        let (watch, task) = parked(&sweep);
        let (_stream, _) = watch.request(true, false);
        let mut body = watch.pulled(Steps([None, Some("first,"), None, Some("last")].into()));
        // hyper asks at once; the upstream takes its time, longer than the timeout.
        assert!(pull(&mut body).is_pending());
        tokio::time::sleep(SEND * 5).await;
        assert_eq!(pull(&mut body), Poll::Ready(true));
        assert!(pull(&mut body).is_pending());
        tokio::time::sleep(SEND * 5).await;
        assert!(!task.is_finished(), "cut while waiting on the upstream");
        // The last frame, and then hyper asks for nothing more: the client's window
        // for the stream is shut.
        assert_eq!(pull(&mut body), Poll::Ready(true));
        let from = Instant::now();
        let waited = cut_after(task, from).await;
        assert!(
            waited >= SEND && waited <= SEND + 3 * PERIOD,
            "cut {waited:?} after the last frame"
        );
        assert_eq!(sweep.cuts.send.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_response_never_pulled_is_cut_and_an_ended_one_forgotten() {
        let sweep = started();
        let (watch, task) = parked(&sweep);
        let (_stream, _) = watch.request(true, false);
        // A response whose last frame hyper took (its end told by `is_end_stream`, so
        // hyper asks no more) and then dropped is no stall.
        let mut done = watch.pulled(Steps([Some("all")].into()));
        assert_eq!(pull(&mut done), Poll::Ready(true));
        assert!(hyper::body::Body::is_end_stream(&done));
        drop(done);
        tokio::time::sleep(SEND * 5).await;
        assert!(!task.is_finished());
        // One whose head went out, and whose body hyper never asks for (the client's
        // initial window is zero).
        let _never = watch.pulled(Steps([Some("body")].into()));
        let from = Instant::now();
        let waited = cut_after(task, from).await;
        assert!(
            waited >= SEND && waited <= SEND + 3 * PERIOD,
            "cut {waited:?} after the head"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_response_waiting_its_turn_on_a_busy_socket_is_no_stall() {
        let sweep = started();
        let (watch, task) = parked(&sweep);
        let (_stream, _) = watch.request(true, false);
        // hyper took a frame and asks for no more while h2 sends the other streams'
        // frames: the socket keeps taking bytes, more than STREAM_PROGRESS a timeout.
        let mut body = watch.pulled(Steps([Some("frame"), Some("last")].into()));
        assert_eq!(pull(&mut body), Poll::Ready(true));
        for _ in 0..20 {
            tokio::time::sleep(SEND / 2).await;
            watch.wrote(STREAM_PROGRESS as usize);
        }
        assert!(!task.is_finished(), "cut while the socket took its bytes");
        // The socket takes little from now on: the stream is held back.
        watch.wrote(100);
        let from = Instant::now();
        let waited = cut_after(task, from).await;
        assert!(
            waited <= SEND + 3 * PERIOD,
            "cut {waited:?} after the socket slowed"
        );
        assert_eq!(sweep.cuts.send.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_list_is_pruned_as_it_grows() {
        let sweep = sweep_of(TIMEOUT, SEND);
        let watch = sweep.begin();
        watch.speaks_http2();
        for _ in 0..1000 {
            drop(watch.pulled(Steps([].into())));
        }
        let kept = lock(&watch.streams).len();
        assert!(kept <= 64, "{kept} entries for no live stream");
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_still_sending_a_response_hyper_let_go_of_is_not_idle() {
        let sweep = started();
        let (h2, task) = parked(&sweep);
        let (stream, _) = h2.request(true, false);
        // hyper handed h2 the whole response and dropped it; h2 sends it as the client
        // opens its window, a frame at a time, for longer than the timeout.
        drop(stream);
        h2.flushed();
        for _ in 0..20 {
            tokio::time::sleep(TIMEOUT / 2).await;
            h2.wrote(16 << 10);
        }
        assert!(
            !task.is_finished(),
            "cut while its response was still going out"
        );
        // Then only a PING's answer now and then: no sign of life.
        let pinged = h2.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TIMEOUT / 4).await;
                pinged.wrote(17);
            }
        });
        let from = Instant::now();
        let waited = cut_after(task, from).await;
        assert!(
            waited <= TIMEOUT + 3 * PERIOD,
            "cut {waited:?} after its last bytes"
        );
        assert_eq!(sweep.cuts.head.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_http2_connection_is_cut_and_one_with_a_stream_in_hand_is_not() {
        let sweep = started();
        let (h2, h2_task) = parked(&sweep);
        let (_, ended_task) = parked(&sweep);
        ended_task.abort();
        let _ = ended_task.await;
        // Two streams at once, one with a request body; they end in any order.
        let (first, first_body) = h2.request(true, true);
        let (second, _) = h2.request(true, false);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!h2_task.is_finished(), "cut with streams in hand");
        assert_eq!(sweep.watched(), 1, "the ended one is forgotten");
        drop(second);
        drop(first);
        h2.flushed();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !h2_task.is_finished(),
            "the first stream's body is still coming"
        );
        drop(first_body);
        // No stream left: the connection waits for its next, as an idle HTTP/1 one does.
        let from = Instant::now();
        let waited = cut_after(h2_task, from).await;
        assert!(
            waited >= TIMEOUT && waited <= TIMEOUT + 3 * PERIOD,
            "cut {waited:?} after its last stream"
        );
        assert_eq!(sweep.cuts.head.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn watching_drops_ended_connections_once_the_list_doubles() {
        let sweep = sweep_of(TIMEOUT, SEND);
        for _ in 0..200 {
            let (_, task) = parked(&sweep);
            task.abort();
            let _ = task.await;
        }
        // No sweep ran: the list was compacted as it grew, at 64 and then 128 entries.
        assert!(sweep.watched() <= 64, "{} entries", sweep.watched());
    }

    #[test]
    fn the_period_is_a_quarter_of_the_shorter_timeout_within_bounds() {
        let period =
            |head, send| sweep_of(Duration::from_millis(head), Duration::from_millis(send)).period;
        assert_eq!(period(10_000, 60_000), Duration::from_secs(1));
        assert_eq!(period(2_000, 60_000), Duration::from_millis(500));
        assert_eq!(period(60_000, 2_000), Duration::from_millis(500));
        assert_eq!(period(1, 60_000), Duration::from_millis(10));
    }
}
