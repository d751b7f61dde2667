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
//! The thread's CPU clock has no vDSO path: each reading is a system call, and reading it
//! around every import cost several a call (7.5 a request for `cache` serving hits,
//! about a quarter of that row's CPU). So a call's first [`UNTIMED_IMPORTS`] imports
//! do not stop the clock. One made while no stretch is being timed (a short call's,
//! before any tick: nearly every call) reads no clock at all, since no stretch covers
//! it. One made inside a timed stretch (a call that has already run past a tick, where
//! two readings more cost nothing that matters) reads the CPU clock on the way in and
//! out, and that CPU time is taken off the stretch when it is added. (The monotonic
//! clock would be cheaper, but on a busy machine an import's elapsed time is far more
//! than its CPU time, and taking it off would hand the guest time it used.) Past those
//! imports, each one pauses the clock as above.
//!
//! The state is atomics rather than store data because the future that polls a call
//! shares it, and cannot reach the store while the call borrows it. One thread at a time
//! touches it (the one polling the call; tokio orders a task's polls across threads), so
//! relaxed ordering is enough.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use rustix::time::{ClockId, clock_gettime};

/// `since` when no stretch is being timed.
const UNTIMED: u64 = u64::MAX;

/// How many of a call's imports are timed without the CPU clock (see the module docs).
pub const UNTIMED_IMPORTS: u32 = 64;

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
    /// Imports the current call has made.
    imports: AtomicU32,
    /// The guest is in one of its untimed imports: the host's calls into the guest's
    /// allocator to hand back the import's result change nothing.
    in_untimed: AtomicBool,
    /// The thread's CPU time when the current untimed import began inside a timed
    /// stretch, or `UNTIMED`.
    import_began: AtomicU64,
    /// CPU time of untimed imports inside the current stretch: taken off it.
    credit: AtomicU64,
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
            imports: AtomicU32::new(0),
            in_untimed: AtomicBool::new(false),
            import_began: AtomicU64::new(UNTIMED),
            credit: AtomicU64::new(0),
        }
    }

    /// Starts a call of at most `limit`; the host has the thread (it lowers first).
    pub fn begin(&self, limit: Duration) {
        self.limit.store(nanos(limit), Relaxed);
        self.used.store(0, Relaxed);
        self.since.store(UNTIMED, Relaxed);
        self.host.store(true, Relaxed);
        self.timed_out.store(false, Relaxed);
        self.imports.store(0, Relaxed);
        self.in_untimed.store(false, Relaxed);
        self.import_began.store(UNTIMED, Relaxed);
        self.credit.store(0, Relaxed);
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

    /// Adds the stretch being timed, if any, less its untimed imports, and stops timing.
    fn stop(&self) {
        let since = self.since.swap(UNTIMED, Relaxed);
        if since != UNTIMED {
            self.add(thread_cpu().saturating_sub(since));
        }
    }

    /// Adds `ran` of a stretch's CPU time, less the time of its untimed imports.
    fn add(&self, ran: u64) {
        let credit = self.credit.swap(0, Relaxed);
        self.used.fetch_add(ran.saturating_sub(credit), Relaxed);
    }

    /// The host calls into guest code (the call, or the guest's allocator while the host
    /// lowers). Timed from the next tick; a stretch still timed (a WASI function that
    /// calls back in) is added first.
    pub fn entered_guest(&self) {
        if self.in_untimed.load(Relaxed) {
            return;
        }
        self.stop();
        self.host.store(false, Relaxed);
    }

    /// Guest code returns to the host.
    pub fn left_guest(&self) {
        if self.in_untimed.load(Relaxed) {
            return;
        }
        self.stop();
        self.host.store(true, Relaxed);
    }

    /// The guest called one of weir's imports: the host has the thread until it returns.
    /// A call's first [`UNTIMED_IMPORTS`] read no CPU clock (see the module docs).
    pub fn import_called(&self) {
        if self.imports.fetch_add(1, Relaxed) < UNTIMED_IMPORTS {
            self.in_untimed.store(true, Relaxed);
            let began = if self.since.load(Relaxed) == UNTIMED {
                UNTIMED
            } else {
                thread_cpu()
            };
            self.import_began.store(began, Relaxed);
            return;
        }
        self.stop();
        self.host.store(true, Relaxed);
    }

    /// A host function returns to guest code. After weir's imports the guest runs again
    /// from now; after anything else (a runtime call, WASI) it never stopped.
    pub fn host_returned(&self) {
        if self.in_untimed.swap(false, Relaxed) {
            // Back from an untimed import: the stretch goes on, less the import's time.
            let began = self.import_began.swap(UNTIMED, Relaxed);
            if began != UNTIMED {
                self.credit
                    .fetch_add(thread_cpu().saturating_sub(began), Relaxed);
            }
            return;
        }
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
            self.add(now.saturating_sub(since));
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
        // Past the call's untimed imports, one of weir's imports, then back in the guest.
        for _ in 0..UNTIMED_IMPORTS {
            t.import_called();
            t.host_returned();
        }
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
    fn early_imports_read_no_clock_in_a_short_call_and_never_count() {
        let t = GuestTime::new();
        // A short call: no tick, so nothing is timed and no clock is read.
        t.begin(Duration::from_secs(1));
        t.entered_guest();
        for _ in 0..3 {
            t.import_called();
            // The host hands the result back through the guest's allocator.
            t.entered_guest();
            t.left_guest();
            t.host_returned();
            assert_eq!(t.since.load(Relaxed), UNTIMED);
            assert_eq!(t.import_began.load(Relaxed), UNTIMED);
        }
        t.left_guest();
        assert_eq!(t.used(), Duration::ZERO);
        // A long one: inside a timed stretch, an untimed import's 20 ms are taken off.
        t.begin(Duration::from_secs(1));
        t.entered_guest();
        assert!(t.tick());
        spin(Duration::from_millis(10));
        t.import_called();
        spin(Duration::from_millis(20));
        t.host_returned();
        spin(Duration::from_millis(10));
        t.left_guest();
        // 20 ms of guest code: the import's CPU time is taken off, however long the
        // thread waited for a core meanwhile.
        let used = t.used();
        assert!(
            used >= Duration::from_millis(20) && used < Duration::from_millis(30),
            "{used:?}"
        );
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
