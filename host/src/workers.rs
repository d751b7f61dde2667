//! The proxy's worker threads: a current-thread tokio runtime on each, all accepting on
//! the one listening socket, each serving its connections from start to end.
//!
//! A multi-thread runtime pays for work stealing on every wake-up (atomics, the shared
//! injection queue, parking and unparking), even with one worker. A current-thread
//! runtime per core pays none of it: a connection, its requests, its upstream calls and
//! the timers they set stay on the thread that accepted it. `bench/README.md` has the
//! measurement (about 12 % less CPU per request on the empty chain).
//!
//! The workers share the listening socket (each polls a duplicate of its descriptor)
//! rather than each binding its own with `SO_REUSEPORT`: with `SO_REUSEPORT` a second
//! process of the same user could bind weir's port too and silently take part of its
//! connections, where now it fails to bind. An idle worker takes the next connection;
//! the kernel does not hash connections to a busy one.
//!
//! Everything else (the admin API, reloads, async jobs, span export, the state
//! backend's connections) stays on the main multi-thread runtime.

use std::cell::Cell;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Handle, Runtime};

use crate::lock;

thread_local! {
    /// This thread's worker number: 1..=N on a worker, 0 elsewhere.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// How many workers this process has started (the most ever asked for).
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// The workers' runtimes, for metrics that cover every task.
static HANDLES: Mutex<Vec<Handle>> = Mutex::new(Vec::new());

/// The calling thread's worker number: 1..=N on a worker thread, 0 on any other.
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Makes the calling thread count as worker `index`, for tests of what a worker does.
#[cfg(test)]
pub(crate) fn act_as_worker(index: usize) {
    INDEX.with(|c| c.set(index));
}

/// How many per-worker slots a structure kept per worker needs: one per worker and one
/// (slot 0) for every other thread. Index it with [`current`].
pub fn slots() -> usize {
    COUNT.load(Ordering::Relaxed) + 1
}

/// The number of workers when `[listen] workers` is not set: the CPUs this process may
/// run on (its affinity mask, so `taskset -c 0 weir run` gets one).
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The tasks alive on every worker's runtime.
pub fn alive_tasks() -> usize {
    lock(&HANDLES)
        .iter()
        .map(|h| h.metrics().num_alive_tasks())
        .sum()
}

/// The workers' runtimes, built but not yet running anything.
pub struct Workers {
    runtimes: Vec<Runtime>,
}

impl Workers {
    /// Builds `count` current-thread runtimes. Structures built from now on that keep
    /// something per worker ([`slots`]) have room for them.
    pub fn build(count: usize) -> io::Result<Workers> {
        let runtimes = (0..count)
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            })
            .collect::<io::Result<Vec<_>>>()?;
        COUNT.fetch_max(count, Ordering::Relaxed);
        Ok(Workers { runtimes })
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.runtimes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.runtimes.is_empty()
    }

    /// Starts a thread per runtime, named `weir-worker-N`. `make(N)` runs here, on the
    /// caller's thread, and gives what the worker runs: a closure called on the worker's
    /// thread, inside its runtime, whose future the worker runs to its end. The runtime,
    /// and every task still on it, is dropped with the thread.
    pub fn spawn<M, F, Fut>(mut self, mut make: M) -> io::Result<Vec<std::thread::JoinHandle<()>>>
    where
        M: FnMut(usize) -> F,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let mut threads = Vec::with_capacity(self.runtimes.len());
        for index in 1..=self.runtimes.len() {
            let work = make(index);
            // The thread gets its runtime once it exists: were the spawn to fail, the
            // runtime would otherwise be dropped inside the caller's runtime, which panics.
            let (give, take) = std::sync::mpsc::channel::<(Runtime, F)>();
            let thread = std::thread::Builder::new()
                .name(format!("weir-worker-{index}"))
                .spawn(move || {
                    let Ok((runtime, work)) = take.recv() else {
                        return;
                    };
                    INDEX.with(|c| c.set(index));
                    let id = runtime.handle().id();
                    runtime.block_on(async move { work().await });
                    // Its kept timers belong to the runtime: they go before it does.
                    crate::deadline::stop_keeping();
                    // Tasks still on it (idle connections) are dropped, not waited for.
                    runtime.shutdown_background();
                    lock(&HANDLES).retain(|h| h.id() != id);
                })?;
            let runtime = self.runtimes.remove(0);
            lock(&HANDLES).push(runtime.handle().clone());
            // The thread waits for it: the send cannot fail.
            let _ = give.send((runtime, work));
            threads.push(thread);
        }
        Ok(threads)
    }
}

impl Drop for Workers {
    /// Runtimes that never ran (weir failed to start) are dropped without waiting, which
    /// is allowed inside the main runtime.
    fn drop(&mut self) {
        for runtime in self.runtimes.drain(..) {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_knows_its_number_and_other_threads_are_zero() {
        assert_eq!(current(), 0);
        let workers = Workers::build(3).unwrap();
        assert_eq!(workers.len(), 3);
        assert!(slots() >= 4, "one slot per worker and slot 0");
        let (tx, rx) = std::sync::mpsc::channel();
        let threads = workers
            .spawn(|index| {
                let tx = tx.clone();
                move || async move {
                    // A task spawned here runs on the same thread, so it sees the number.
                    let seen = tokio::spawn(async { current() }).await.unwrap();
                    tx.send((index, current(), seen)).unwrap();
                }
            })
            .unwrap();
        for t in threads {
            t.join().unwrap();
        }
        let mut seen: Vec<_> = rx.try_iter().collect();
        seen.sort();
        assert_eq!(seen, vec![(1, 1, 1), (2, 2, 2), (3, 3, 3)]);
    }
}
