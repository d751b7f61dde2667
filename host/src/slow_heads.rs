//! `listen.header_read_timeout`: how long an HTTP/1 connection may wait for its next
//! request head, kept by one sweep per worker instead of a timer per request.
//!
//! hyper's own header-read timeout arms a boxed tokio `Sleep` for every request head: a
//! clock read, an allocation, a timer-wheel insert and removal, about 1.5k instructions
//! and 4 % of the empty chain's per request (`bench/README.md`). Here each connection
//! keeps a [`Watch`]: how many of its requests weir holds (a request's response until
//! hyper is done with it, and its body until read to its end), whether its last
//! response's bytes are still being flushed, and since when it has been waiting. A
//! request costs a few uncontended atomic operations on it: no lock, no timer, no clock
//! read. The wait starts once nothing is held and the last response is flushed, as
//! hyper's timer did, so a slow reader of a large response is not cut.
//!
//! Each worker's [`Sweep`] runs every quarter of the timeout (between 10 ms and 1 s).
//! A connection found waiting longer than the timeout is marked, and cut (its task
//! aborted) at the next run if it is still in the same wait: a head already in the
//! socket when the worker was busy gets read in between. So a connection is never cut
//! before the timeout (unless the worker runs the sweep more than a period late), and
//! at most about three periods after it.
//!
//! The wait covers the TLS handshake (it starts at the accept), an idle keep-alive
//! connection, and a head sent slowly. An HTTP/2 connection leaves the sweep once it is
//! known to be one (ALPN, or its first request): its streams overlap, so there is no one
//! head to wait for, and hyper's timeout was HTTP/1-only as well.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::lock;

/// `since` of a connection the sweep no longer watches (HTTP/2).
const LEFT: u64 = u64::MAX;

/// One worker's watched connections and the clock they read.
pub struct Sweep {
    start: Instant,
    /// Milliseconds from `start` at the last run: the connections' clock.
    clock: Arc<AtomicU64>,
    timeout_ms: u64,
    period: Duration,
    conns: Mutex<Watched>,
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
    /// The wait's start seen past the timeout at the last run: cut if it is still so.
    marked: Option<u64>,
}

/// One connection's state, shared by its task and its worker's sweep. One thread
/// touches it (the worker's), so relaxed ordering is enough.
pub struct Watch {
    /// When the connection began waiting for a head, in the clock's milliseconds, or
    /// [`LEFT`]. Meaningless while `held` is not zero or `unflushed` is set.
    since: AtomicU64,
    /// Requests and request bodies weir holds ([`InHand`]s alive).
    held: AtomicU32,
    /// A response ended and hyper has not yet flushed its last bytes.
    unflushed: AtomicBool,
    clock: Arc<AtomicU64>,
}

/// One request, or one request body, in weir's hands: the connection is not waiting for
/// a head while one is alive.
pub struct InHand {
    watch: Arc<Watch>,
    /// A response's: its end leaves bytes to flush.
    response: bool,
}

impl Sweep {
    /// A sweep cutting connections that wait more than `timeout` for a head.
    pub fn new(timeout: Duration) -> Arc<Sweep> {
        let period = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        Arc::new(Sweep {
            start: Instant::now(),
            clock: Arc::new(AtomicU64::new(0)),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX / 4),
            period,
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
            held: AtomicU32::new(0),
            unflushed: AtomicBool::new(false),
            clock: self.clock.clone(),
        })
    }

    /// Watches a connection's task: the sweep aborts it once its wait is too long.
    pub fn watch(&self, watch: Arc<Watch>, task: AbortHandle) {
        let mut conns = lock(&self.conns);
        if conns.list.len() >= conns.compact_at {
            conns.list.retain(|c| !c.task.is_finished());
            conns.compact_at = (conns.list.len() * 2).max(64);
        }
        conns.list.push(Entry {
            watch,
            task,
            marked: None,
        });
    }

    /// Runs the sweep every period, forever: run it on the connections' own runtime.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(LEFT - 1);
            self.clock.store(now, Relaxed);
            let cut = self.sweep(now);
            if cut > 0 {
                tracing::debug!(
                    connections = cut,
                    "closed connections that sent no request head within listen.header_read_timeout"
                );
            }
        }
    }

    /// Marks the connections that have waited too long at `now`, aborts those marked at
    /// the last run in the same wait, and forgets those that ended or left; returns how
    /// many it aborted.
    fn sweep(&self, now: u64) -> usize {
        // A wait's start is read from the clock, which is up to a period old.
        let limit = self.timeout_ms + self.period.as_millis() as u64;
        let mut cut = 0;
        lock(&self.conns).list.retain_mut(|c| {
            if c.task.is_finished() {
                return false;
            }
            let Some(since) = c.watch.waiting_since() else {
                c.marked = None;
                return true;
            };
            if since == LEFT {
                return false;
            }
            if now.saturating_sub(since) <= limit {
                c.marked = None;
                return true;
            }
            if c.marked == Some(since) {
                c.task.abort();
                cut += 1;
                return false;
            }
            c.marked = Some(since);
            true
        });
        cut
    }

    /// How many connections it watches (ended ones go at its next run).
    #[cfg(test)]
    fn watched(&self) -> usize {
        lock(&self.conns).list.len()
    }
}

impl Watch {
    /// A request head arrived. Returns what keeps the connection out of its wait: one
    /// for the response, and one for the request's body if it has one. An HTTP/2
    /// connection leaves the sweep instead, and gets neither.
    pub fn request(self: &Arc<Self>, http2: bool, body: bool) -> (Option<InHand>, Option<InHand>) {
        if http2 {
            self.leave();
            return (None, None);
        }
        self.held.fetch_add(1 + u32::from(body), Relaxed);
        let in_hand = |response| InHand {
            watch: self.clone(),
            response,
        };
        (Some(in_hand(true)), body.then(|| in_hand(false)))
    }

    /// The connection is HTTP/2: the sweep forgets it.
    pub fn leave(&self) {
        self.since.store(LEFT, Relaxed);
    }

    /// hyper flushed what it had written.
    fn flushed(&self) {
        // A load first: hyper flushes on every turn of a connection, with a response
        // to end or not.
        if self.unflushed.load(Relaxed) {
            self.unflushed.store(false, Relaxed);
            if self.held.load(Relaxed) == 0 {
                self.start_wait();
            }
        }
    }

    fn start_wait(&self) {
        if self.since.load(Relaxed) != LEFT {
            self.since.store(self.clock.load(Relaxed), Relaxed);
        }
    }

    /// When the connection began waiting for a head, if it is waiting ([`LEFT`] if it
    /// left the sweep).
    fn waiting_since(&self) -> Option<u64> {
        let since = self.since.load(Relaxed);
        let busy = self.held.load(Relaxed) > 0 || self.unflushed.load(Relaxed);
        (since == LEFT || !busy).then_some(since)
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        let w = &self.watch;
        if self.response {
            w.unflushed.store(true, Relaxed);
        }
        if w.held.fetch_sub(1, Relaxed) == 1 && !w.unflushed.load(Relaxed) {
            w.start_wait();
        }
    }
}

/// A client connection's transport, telling its [`Watch`] when hyper flushes: a
/// response's wait starts once its last bytes have left, not when hyper took them.
pub struct Flushes<I> {
    io: I,
    watch: Arc<Watch>,
}

impl<I> Flushes<I> {
    /// `io`, reporting its flushes to `watch`.
    pub fn new(io: I, watch: Arc<Watch>) -> Flushes<I> {
        Flushes { io, watch }
    }
}

impl<I: hyper::rt::Read + Unpin> hyper::rt::Read for Flushes<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: hyper::rt::Write + Unpin> hyper::rt::Write for Flushes<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
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
        poll
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(400);
    const PERIOD: Duration = Duration::from_millis(100);

    /// A watched task that runs until aborted.
    fn parked(sweep: &Arc<Sweep>) -> (Arc<Watch>, tokio::task::JoinHandle<()>) {
        let watch = sweep.begin();
        let task = tokio::spawn(std::future::pending::<()>());
        sweep.watch(watch.clone(), task.abort_handle());
        (watch, task)
    }

    /// Waits for `task` to be cut; returns how long after `from` it was.
    async fn cut_after(task: tokio::task::JoinHandle<()>, from: Instant) -> Duration {
        let ended = task.await.unwrap_err();
        assert!(ended.is_cancelled());
        from.elapsed()
    }

    fn started() -> Arc<Sweep> {
        let sweep = Sweep::new(TIMEOUT);
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

    #[tokio::test(start_paused = true)]
    async fn http2_connections_leave_the_sweep_and_ended_ones_are_forgotten() {
        let sweep = started();
        let (h2, h2_task) = parked(&sweep);
        assert!(matches!(h2.request(true, true), (None, None)));
        let (_, ended_task) = parked(&sweep);
        ended_task.abort();
        let _ = ended_task.await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!h2_task.is_finished());
        assert_eq!(sweep.watched(), 0, "neither is watched any more");
    }

    #[tokio::test(start_paused = true)]
    async fn watching_drops_ended_connections_once_the_list_doubles() {
        let sweep = Sweep::new(TIMEOUT);
        for _ in 0..200 {
            let (_, task) = parked(&sweep);
            task.abort();
            let _ = task.await;
        }
        // No sweep ran: the list was compacted as it grew, at 64 and then 128 entries.
        assert!(sweep.watched() <= 64, "{} entries", sweep.watched());
    }

    #[test]
    fn the_period_is_a_quarter_of_the_timeout_within_bounds() {
        let period = |ms| Sweep::new(Duration::from_millis(ms)).period;
        assert_eq!(period(10_000), Duration::from_secs(1));
        assert_eq!(period(2_000), Duration::from_millis(500));
        assert_eq!(period(1), Duration::from_millis(10));
    }
}
