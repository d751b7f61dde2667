//! Draining a worker's client connections at shutdown: each connection is told to finish
//! what it is serving and close, and the worker waits until all of them have.
//!
//! hyper-util's `GracefulShutdown` does the same with a watch channel whose `changed()`
//! is polled at every poll of every connection: about 450 instructions and two or three
//! atomic read-modify-writes a request (bench/README.md, "The eighth round"). Here a
//! connection reads one flag at each poll, and hands its task's waker over once.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

/// A worker's open connections, and whether they are being drained.
#[derive(Default)]
pub struct Drain {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    draining: AtomicBool,
    next_id: AtomicU64,
    /// The open connections by id, with the waker of the task serving each once it ran.
    open: Mutex<HashMap<u64, Option<Waker>>>,
    /// Told when the last open connection closes.
    closed: Notify,
}

fn lock(open: &Mutex<HashMap<u64, Option<Waker>>>) -> MutexGuard<'_, HashMap<u64, Option<Waker>>> {
    open.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drain {
    /// No connections, not draining.
    pub fn new() -> Drain {
        Drain::default()
    }

    /// Counts a new connection as open until the returned watch is dropped: take it when
    /// the connection is accepted, so that a drain waits for it from then on.
    pub fn watch(&self) -> Watch {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.open).insert(id, None);
        Watch {
            shared: self.shared.clone(),
            id,
            waker: None,
            told: false,
        }
    }

    /// Tells every open connection to finish and close, and waits until none is open.
    pub async fn shutdown(&self) {
        // Set before the wakers are read: a connection that hands its waker over after
        // this reads the flag after it too (see `Watch::stop_now`).
        self.shared.draining.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = lock(&self.shared.open)
            .values()
            .flatten()
            .cloned()
            .collect();
        for waker in wakers {
            waker.wake();
        }
        loop {
            // Made before the check: `notify_waiters` reaches a `Notified` made before it
            // is called, polled or not.
            let closed = self.shared.closed.notified();
            if lock(&self.shared.open).is_empty() {
                return;
            }
            closed.await;
        }
    }
}

/// One open connection's part in its worker's [`Drain`].
pub struct Watch {
    shared: Arc<Shared>,
    id: u64,
    /// The waker last handed over.
    waker: Option<Waker>,
    /// Whether the connection was told to finish.
    told: bool,
}

impl Watch {
    /// Polls `conn` until it ends, calling `graceful` on it once, at its first poll after
    /// the drain began.
    pub fn serve<C: Future, G: Fn(Pin<&mut C>)>(mut self, conn: C, graceful: G) -> Draining<C, G> {
        // A connection that saw the drain while it served itself (`draining`) and then
        // handed over to `conn` must still tell `conn`, at its first poll.
        self.told = false;
        Draining {
            conn,
            watch: self,
            graceful,
        }
    }

    /// Whether the worker is draining, for a connection that serves itself rather than
    /// through [`Watch::serve`]: once true, it stays true. A drain that begins later
    /// wakes the task polling with `cx`.
    pub fn draining(&mut self, cx: &Context<'_>) -> bool {
        self.stop_now(cx);
        self.told
    }

    /// Whether the worker is draining, read without a task to wake.
    pub fn draining_now(&self) -> bool {
        self.told || self.shared.draining.load(Ordering::SeqCst)
    }

    /// Whether the connection must begin its graceful shutdown now: true once, at the
    /// first poll after the drain began. A task's waker does not change between polls,
    /// so after the first poll this reads one flag.
    fn stop_now(&mut self, cx: &Context<'_>) -> bool {
        if self.told {
            return false;
        }
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let waker = cx.waker().clone();
            if let Some(slot) = lock(&self.shared.open).get_mut(&self.id) {
                *slot = Some(waker.clone());
            }
            self.waker = Some(waker);
        }
        // Read after the waker was handed over: a drain that began before it is seen here,
        // and one that begins after it wakes this task.
        self.told = self.shared.draining.load(Ordering::SeqCst);
        self.told
    }
}

pin_project_lite::pin_project! {
    /// A connection served until it ends, told to finish once its worker drains: see
    /// [`Watch::serve`]. (A named future, not an `async fn`: the compiler cannot prove an
    /// `async fn` over hyper-util's connection `Send`.)
    pub struct Draining<C, G> {
        #[pin]
        conn: C,
        watch: Watch,
        graceful: G,
    }
}

impl<C: Future, G: Fn(Pin<&mut C>)> Future for Draining<C, G> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if this.watch.stop_now(cx) {
            (this.graceful)(this.conn.as_mut());
        }
        this.conn.poll(cx)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let empty = {
            let mut open = lock(&self.shared.open);
            open.remove(&self.id);
            open.is_empty()
        };
        if empty {
            self.shared.closed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt as _;
    use std::time::Duration;

    /// Pending until told to stop, then ends at its next poll with its count of polls: a
    /// connection that ends only once its graceful shutdown began.
    struct Conn {
        stopping: bool,
        polls: usize,
    }

    impl Future for Conn {
        type Output = usize;

        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.stopping {
                Poll::Ready(self.polls)
            } else {
                Poll::Pending
            }
        }
    }

    #[tokio::test]
    async fn a_drain_with_nothing_open_ends_at_once() {
        let drain = Drain::new();
        drop(drain.watch());
        tokio::time::timeout(Duration::from_secs(5), drain.shutdown())
            .await
            .expect("nothing open, nothing to wait for");
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_tells_a_connection_once_and_waits_until_it_ends() {
        let drain = Drain::new();
        let told = Arc::new(AtomicU64::new(0));
        let counted = told.clone();
        let conn = Conn {
            stopping: false,
            polls: 0,
        };
        let served = tokio::spawn(drain.watch().serve(conn, move |mut c| {
            counted.fetch_add(1, Ordering::SeqCst);
            c.stopping = true;
        }));
        // The connection runs and waits; the drain must wait for it.
        tokio::task::yield_now().await;
        let mut shutdown = Box::pin(drain.shutdown());
        assert!(
            (&mut shutdown).now_or_never().is_none(),
            "the drain ended with a connection open"
        );
        let polls = tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the drain's wake-up reached the connection")
            .expect("the connection's task");
        // First poll, then the poll the drain's wake-up caused, which ends it.
        assert_eq!(polls, 2);
        assert_eq!(told.load(Ordering::SeqCst), 1, "told exactly once");
        tokio::time::timeout(Duration::from_secs(5), shutdown)
            .await
            .expect("the drain ends once the connection has");
    }

    #[tokio::test(start_paused = true)]
    async fn an_aborted_connection_no_longer_holds_the_drain() {
        let drain = Drain::new();
        let conn = Conn {
            stopping: false,
            polls: 0,
        };
        // Never ends by itself, told or not: as a connection the sweep cuts.
        let served = tokio::spawn(drain.watch().serve(conn, |_| {}));
        tokio::task::yield_now().await;
        let mut shutdown = Box::pin(drain.shutdown());
        assert!((&mut shutdown).now_or_never().is_none());
        served.abort();
        assert!(served.await.expect_err("aborted").is_cancelled());
        tokio::time::timeout(Duration::from_secs(5), shutdown)
            .await
            .expect("the drain ends once the aborted connection's watch is dropped");
    }

    #[tokio::test]
    async fn a_connection_handed_over_after_its_drain_began_is_told_at_its_first_poll() {
        let drain = Drain::new();
        let mut watch = drain.watch();
        let mut shutdown = Box::pin(drain.shutdown());
        assert!((&mut shutdown).now_or_never().is_none());
        let seen = std::future::poll_fn(|cx| Poll::Ready(watch.draining(cx))).await;
        assert!(seen, "the own side sees the drain");
        let conn = Conn {
            stopping: false,
            polls: 0,
        };
        let polls = tokio::time::timeout(
            Duration::from_secs(5),
            watch.serve(conn, |mut c| c.stopping = true),
        )
        .await
        .expect("the connection it handed over to is told too");
        assert_eq!(polls, 1);
        tokio::time::timeout(Duration::from_secs(5), shutdown)
            .await
            .expect("the drain ends when the connection does");
    }

    #[tokio::test]
    async fn a_connection_accepted_during_a_drain_is_told_at_its_first_poll() {
        let drain = Drain::new();
        let first = drain.watch();
        let mut shutdown = Box::pin(drain.shutdown());
        assert!((&mut shutdown).now_or_never().is_none());
        let conn = Conn {
            stopping: false,
            polls: 0,
        };
        let serving = drain.watch().serve(conn, |mut c| c.stopping = true);
        let polls = tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("told while draining");
        assert_eq!(polls, 1, "told before its first poll of the connection");
        assert!(
            (&mut shutdown).now_or_never().is_none(),
            "the first connection is still open"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), shutdown)
            .await
            .expect("the drain ends when the last connection closes");
    }
}
