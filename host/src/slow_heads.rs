//! `listen.header_read_timeout`: how long an HTTP/1 connection may wait for its next
//! request head, kept by one sweep per worker instead of a timer per request.
//!
//! hyper's own header-read timeout arms a boxed tokio `Sleep` for every request head: a
//! clock read, an allocation, a timer-wheel insert and removal, about 1.5k instructions
//! and 3 % of the empty chain's CPU per request (`bench/README.md`). Here a connection
//! records when it began waiting for a head (its accept, or its last response handed
//! to hyper), read from a clock its worker's sweep keeps, and is marked busy while a
//! request is in hand. The sweep aborts the task of a connection that has waited
//! longer than the timeout. A request costs an atomic load and two stores: no lock, no
//! timer, no clock read.
//!
//! The wait covers the TLS handshake (it starts at the accept), an idle keep-alive
//! connection, and a head sent slowly. The sweep runs every quarter of the timeout
//! (between 10 ms and 1 s) and cuts a connection once its wait passes the timeout plus
//! one period, so never early (unless the sweep itself runs late on a saturated worker)
//! and at most about two periods late. An HTTP/2 connection leaves the sweep at its
//! first request: its streams overlap, so there is no one head to wait for (hyper's
//! timeout is HTTP/1-only as well).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// `since` of a connection with a request in hand.
const BUSY: u64 = u64::MAX;
/// `since` of a connection the sweep no longer watches (HTTP/2).
const LEFT: u64 = u64::MAX - 1;

/// One worker's watched connections and the clock they read.
pub struct Sweep {
    start: Instant,
    /// Milliseconds from `start` at the last sweep: the connections' clock.
    now_ms: AtomicU64,
    timeout_ms: u64,
    period: Duration,
    conns: Mutex<Vec<Watched>>,
}

struct Watched {
    watch: Arc<Watch>,
    task: AbortHandle,
}

/// One connection's wait, shared by its task and its worker's sweep.
pub struct Watch {
    /// When the connection began waiting for a head, in the sweep's milliseconds, or
    /// [`BUSY`] or [`LEFT`].
    since: AtomicU64,
    sweep: Arc<Sweep>,
}

impl Sweep {
    /// A sweep cutting connections that wait more than `timeout` for a head.
    pub fn new(timeout: Duration) -> Arc<Sweep> {
        let period = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        Arc::new(Sweep {
            start: Instant::now(),
            now_ms: AtomicU64::new(0),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX / 4),
            period,
            conns: Mutex::new(Vec::new()),
        })
    }

    /// A new connection's wait, starting now. It is watched once [`Sweep::watch`] has
    /// its task.
    pub fn begin(self: &Arc<Self>) -> Arc<Watch> {
        Arc::new(Watch {
            since: AtomicU64::new(self.now()),
            sweep: self.clone(),
        })
    }

    /// Watches a connection's task: the sweep aborts it once its wait is too long.
    pub fn watch(&self, watch: Arc<Watch>, task: AbortHandle) {
        lock(&self.conns).push(Watched { watch, task });
    }

    /// Runs the sweep every period, forever: run it on the connections' own runtime.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(LEFT - 1);
            self.now_ms.store(now, Ordering::Relaxed);
            let cut = self.sweep(now);
            if cut > 0 {
                tracing::debug!(
                    connections = cut,
                    "closed connections that sent no request head within listen.header_read_timeout"
                );
            }
        }
    }

    /// Aborts the connections that have waited too long at `now` and forgets those that
    /// ended or left; returns how many it aborted.
    fn sweep(&self, now: u64) -> usize {
        let limit = self.timeout_ms + self.period.as_millis() as u64;
        let mut cut = 0;
        lock(&self.conns).retain(|c| {
            if c.task.is_finished() {
                return false;
            }
            match c.watch.since.load(Ordering::Relaxed) {
                LEFT => false,
                BUSY => true,
                since if now.saturating_sub(since) > limit => {
                    c.task.abort();
                    cut += 1;
                    false
                }
                _ => true,
            }
        });
        cut
    }

    fn now(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }

    /// How many connections it watches (ended ones go at its next run).
    #[cfg(test)]
    fn watched(&self) -> usize {
        lock(&self.conns).len()
    }
}

impl Watch {
    /// A request head arrived: the connection is not waiting until its response is
    /// handed over. An HTTP/2 connection leaves the sweep for good.
    pub fn busy(&self, http2: bool) {
        let state = if http2 { LEFT } else { BUSY };
        self.since.store(state, Ordering::Relaxed);
    }

    /// The response went to hyper whole: the wait for the next head starts.
    fn idle(&self) {
        self.since.store(self.sweep.now(), Ordering::Relaxed);
    }
}

/// A response body that starts its connection's wait for the next head when hyper is
/// done with it (written whole, or dropped with the connection).
pub struct Marked<B> {
    body: B,
    /// `None` on HTTP/2, which has no wait.
    watch: Option<Arc<Watch>>,
}

impl<B> Marked<B> {
    /// `body`, starting `watch`'s wait when dropped.
    pub fn new(body: B, watch: Option<Arc<Watch>>) -> Marked<B> {
        Marked { body, watch }
    }
}

impl<B> Drop for Marked<B> {
    fn drop(&mut self) {
        if let Some(watch) = &self.watch {
            watch.idle();
        }
    }
}

impl<B: Body + Unpin> Body for Marked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that runs until aborted, watched with `watch`.
    fn parked(sweep: &Arc<Sweep>) -> (Arc<Watch>, tokio::task::JoinHandle<()>) {
        let watch = sweep.begin();
        let task = tokio::spawn(std::future::pending::<()>());
        sweep.watch(watch.clone(), task.abort_handle());
        (watch, task)
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_connection_is_cut_after_the_timeout_and_never_before() {
        let sweep = Sweep::new(Duration::from_millis(400));
        assert_eq!(sweep.period, Duration::from_millis(100));
        tokio::spawn(sweep.clone().run());
        let started = Instant::now();
        let (_watch, task) = parked(&sweep);
        let ended = task.await.unwrap_err();
        assert!(ended.is_cancelled());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(400) && waited <= Duration::from_millis(700),
            "cut after {waited:?}"
        );
        assert_eq!(sweep.watched(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_is_never_cut_and_its_wait_restarts_with_its_response() {
        let sweep = Sweep::new(Duration::from_millis(400));
        tokio::spawn(sweep.clone().run());
        let (watch, task) = parked(&sweep);
        watch.busy(false);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !task.is_finished(),
            "a request in hand has no head to wait for"
        );
        // The response goes to hyper and is dropped: the wait starts over from here.
        drop(Marked::new((), Some(watch.clone())));
        let idle_from = Instant::now();
        let ended = task.await.unwrap_err();
        assert!(ended.is_cancelled());
        let waited = idle_from.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited <= Duration::from_millis(700),
            "cut {waited:?} after the response"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_leaves_the_sweep_and_ended_ones_are_forgotten() {
        let sweep = Sweep::new(Duration::from_millis(400));
        tokio::spawn(sweep.clone().run());
        let (h2, h2_task) = parked(&sweep);
        h2.busy(true);
        // An HTTP/2 response's body does not restart a wait.
        drop(Marked::new((), None::<Arc<Watch>>));
        let (_ended, ended_task) = parked(&sweep);
        ended_task.abort();
        let _ = ended_task.await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!h2_task.is_finished());
        assert_eq!(sweep.watched(), 0, "neither is watched any more");
    }

    #[test]
    fn the_period_is_a_quarter_of_the_timeout_within_bounds() {
        let period = |ms| Sweep::new(Duration::from_millis(ms)).period;
        assert_eq!(period(10_000), Duration::from_secs(1));
        assert_eq!(period(2_000), Duration::from_millis(500));
        assert_eq!(period(1), Duration::from_millis(10));
    }
}
