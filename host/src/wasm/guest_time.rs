//! The clock behind `max_call_time`: the CPU time of the guest's own code in one call.
//!
//! A call's limit counts what the guest consumes, so a slow host or a busy machine never
//! fails a call that the guest itself kept short. The clock is the CPU time of the thread
//! running the guest (`CLOCK_THREAD_CPUTIME_ID`), read only across stretches in which
//! guest code runs. It does not run:
//!
//! - while the host lowers a call's arguments into the guest (copying a body in) or lifts
//!   its results: the store's call hook sees every entry into and exit from guest code;
//! - while one of weir's own imports runs (`state`, `log`, `metrics`, `outbound`): from
//!   the host taking the import until it returns to the guest, its result copied in;
//! - while the call is suspended: it is timed poll by poll, so yielding at a tick,
//!   waiting on an import, or other tasks using the thread in between are not counted;
//! - while the thread is not running at all: a busy machine adds no CPU time.
//!
//! It does count the guest's code, the runtime work the guest asks for (growing its
//! memory, bulk memory copies), and the WASI functions it calls (clocks, random numbers,
//! stdout and stderr).
//!
//! The epoch ticker sets how often the clock is read: each tick that finds the guest
//! running adds the time since its stretch began and checks the limit. A stretch that
//! begins at an entry from the host (the call itself, and one per string or list the
//! host lowers, through the guest's allocator) is timed from the first tick that finds
//! it running, since reading a clock at every entry would cost more than it tells; at
//! most one tick of guest code per entry goes uncounted.
//!
//! The state is atomics rather than store data because the future that polls a call
//! shares it, and cannot reach the store while the call borrows it. One thread at a time
//! touches it (the one polling the call; tokio orders a task's polls across threads), so
//! relaxed ordering is enough.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use rustix::time::{ClockId, clock_gettime};

/// `since` when no stretch is being timed.
const UNTIMED: u64 = u64::MAX;

/// One instance's call clock; [`GuestTime::begin`] resets it for each call.
#[derive(Debug)]
pub struct GuestTime {
    limit: AtomicU64,
    used: AtomicU64,
    /// The thread's CPU time when the current stretch of guest code began, or `UNTIMED`.
    since: AtomicU64,
    /// The host has the thread: lowering, lifting, or running one of weir's imports.
    host: AtomicBool,
    timed_out: AtomicBool,
}

/// The calling thread's CPU time, in nanoseconds.
fn thread_cpu() -> u64 {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl GuestTime {
    /// A clock for an instance; each call sets its limit with [`GuestTime::begin`].
    pub fn new() -> GuestTime {
        GuestTime {
            limit: AtomicU64::new(0),
            used: AtomicU64::new(0),
            since: AtomicU64::new(UNTIMED),
            host: AtomicBool::new(true),
            timed_out: AtomicBool::new(false),
        }
    }

    /// Starts a call of at most `limit`; the host has the thread (it lowers first).
    pub fn begin(&self, limit: Duration) {
        self.limit.store(nanos(limit), Relaxed);
        self.used.store(0, Relaxed);
        self.since.store(UNTIMED, Relaxed);
        self.host.store(true, Relaxed);
        self.timed_out.store(false, Relaxed);
    }

    /// The limit of the current call.
    pub fn limit(&self) -> Duration {
        Duration::from_nanos(self.limit.load(Relaxed))
    }

    /// The guest time the current call has used so far.
    #[cfg(test)]
    pub fn used(&self) -> Duration {
        Duration::from_nanos(self.used.load(Relaxed))
    }

    /// Whether the current call ran out of time.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Relaxed)
    }

    /// Adds the stretch being timed, if any, and stops timing.
    fn stop(&self) {
        let since = self.since.swap(UNTIMED, Relaxed);
        if since != UNTIMED {
            let ran = thread_cpu().saturating_sub(since);
            self.used.fetch_add(ran, Relaxed);
        }
    }

    /// The host calls into guest code (the call, or the guest's allocator while the host
    /// lowers). Timed from the next tick; a stretch still timed (a WASI function that
    /// calls back in) is added first.
    pub fn entered_guest(&self) {
        self.stop();
        self.host.store(false, Relaxed);
    }

    /// Guest code returns to the host.
    pub fn left_guest(&self) {
        self.stop();
        self.host.store(true, Relaxed);
    }

    /// The guest called one of weir's imports: the host has the thread until it returns.
    pub fn import_called(&self) {
        self.stop();
        self.host.store(true, Relaxed);
    }

    /// A host function returns to guest code. After weir's imports the guest runs again
    /// from now; after anything else (a runtime call, WASI) it never stopped.
    pub fn host_returned(&self) {
        if self.host.load(Relaxed) {
            self.host.store(false, Relaxed);
            self.since.store(thread_cpu(), Relaxed);
        }
    }

    /// An epoch tick found the guest running: adds its time since the last reading.
    /// Returns `false` once the call is over its limit, and remembers that it was.
    pub fn tick(&self) -> bool {
        let now = thread_cpu();
        let since = self.since.swap(now, Relaxed);
        if since != UNTIMED {
            self.used.fetch_add(now.saturating_sub(since), Relaxed);
        }
        if self.used.load(Relaxed) > self.limit.load(Relaxed) {
            self.timed_out.store(true, Relaxed);
            return false;
        }
        true
    }

    /// Runs `call` (a future that runs guest code) with the clock timing only its polls:
    /// between them, the task is not running, whatever the guest was doing.
    pub async fn time<F: Future>(&self, call: F) -> F::Output {
        let mut call = pin!(call);
        std::future::poll_fn(|cx| {
            if !self.host.load(Relaxed) {
                self.since.store(thread_cpu(), Relaxed);
            }
            let polled = call.as_mut().poll(cx);
            self.stop();
            polled
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Burns at least `d` of this thread's CPU time.
    fn spin(d: Duration) {
        let start = thread_cpu();
        while thread_cpu() - start < nanos(d) {
            std::hint::black_box(0);
        }
    }

    #[test]
    fn only_guest_stretches_count() {
        let t = GuestTime::new();
        t.begin(Duration::from_millis(30));
        // The host lowers the arguments.
        spin(Duration::from_millis(20));
        t.entered_guest();
        assert!(t.tick());
        assert_eq!(t.used(), Duration::ZERO, "the lowering did not count");
        spin(Duration::from_millis(10));
        assert!(t.tick());
        assert!(t.used() >= Duration::from_millis(10), "{:?}", t.used());
        // One of weir's imports, then back in the guest.
        t.import_called();
        let used = t.used();
        spin(Duration::from_millis(20));
        t.host_returned();
        assert_eq!(t.used(), used, "the import did not count");
        spin(Duration::from_millis(25));
        assert!(!t.tick(), "10 + 25 ms of guest code is over 30 ms");
        assert!(t.timed_out());
        // The next call starts afresh.
        t.begin(Duration::from_millis(30));
        assert_eq!(t.used(), Duration::ZERO);
        assert!(!t.timed_out());
    }

    #[test]
    fn runtime_calls_count_and_lifting_does_not() {
        let t = GuestTime::new();
        t.begin(Duration::from_secs(1));
        t.entered_guest();
        t.tick();
        // A host function that is not one of weir's imports (memory.grow, WASI).
        spin(Duration::from_millis(5));
        t.host_returned();
        t.left_guest();
        let used = t.used();
        assert!(used >= Duration::from_millis(5), "{used:?}");
        // The host lifts the results, then calls the guest's post-return.
        spin(Duration::from_millis(5));
        t.entered_guest();
        t.left_guest();
        assert_eq!(t.used(), used);
    }

    #[tokio::test]
    async fn other_tasks_between_polls_do_not_count() {
        let t = GuestTime::new();
        t.begin(Duration::from_secs(1));
        let other_ran = std::sync::Arc::new(AtomicBool::new(false));
        let other = {
            let other_ran = other_ran.clone();
            tokio::spawn(async move {
                spin(Duration::from_millis(20));
                other_ran.store(true, Relaxed);
            })
        };
        let mut first = true;
        t.time(std::future::poll_fn(|cx| {
            if std::mem::take(&mut first) {
                t.entered_guest();
                t.tick();
            }
            if !other_ran.load(Relaxed) {
                // The guest yields at a tick, and this thread runs the other task.
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            t.tick();
            t.left_guest();
            std::task::Poll::Ready(())
        }))
        .await;
        other.await.unwrap();
        assert!(t.used() < Duration::from_millis(20), "{:?}", t.used());
    }
}
