//! A deadline on a future, without a new timer for each call.
//!
//! `tokio::time::timeout_at` makes a timer per call: it clones the runtime's handle,
//! puts an entry in the timer wheel under the wheel's lock when the call first waits,
//! and takes the lock again to take the entry out when the call ends. Nearly every
//! upstream call ends long before its deadline, so all of that is undone unused, on
//! every request.
//!
//! [`within`] does the same job, and on a worker thread ([`crate::workers`]) it keeps
//! the timers its calls are done with and hands them to the next calls; a body's wait
//! for its next frame takes its [`Timer`] the same way. tokio moves a
//! timer that is still in the wheel to a later deadline with one compare-and-swap and no
//! lock (`Sleep::reset`: the wheel finds the new deadline when the old one comes round),
//! and the next call's deadline is nearly always later: the same route's timeout from a
//! later start. A kept timer whose old deadline comes before it is reused fires once and
//! wakes the task that last waited on it, which finds nothing to do.
//!
//! Only worker threads keep timers, and a timer goes back only to the thread it came
//! from: a worker runs one runtime for its whole life, so a kept timer always belongs to
//! the runtime of the call that takes it. On any other thread (the main runtime's, a
//! test's) each call makes its own timer, as `timeout_at` does.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// How many finished timers a worker keeps, at most: about as many calls as it has
/// waiting on their upstreams at once.
const KEEP: usize = 256;

thread_local! {
    /// This worker's finished timers; `None` once the worker has stopped keeping them.
    static KEPT: RefCell<Option<Vec<Pin<Box<Sleep>>>>> = const { RefCell::new(Some(Vec::new())) };
}

/// The deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passed;

/// Runs `fut` until it finishes or `until` passes, whichever comes first; `fut` is
/// polled first, so one that is ready when `until` has passed still counts.
pub fn within<F: Future>(until: Instant, fut: F) -> Within<F> {
    Within {
        fut,
        until,
        timer: Timer::new(),
    }
}

pin_project_lite::pin_project! {
    /// The future [`within`] returns.
    pub struct Within<F> {
        #[pin]
        fut: F,
        until: Instant,
        timer: Timer,
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, Passed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        // A call that finishes at its first poll never needs a timer.
        if !this.timer.is_set() {
            this.timer.set(*this.until);
        }
        match this.timer.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Passed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A timer that takes a kept one when first set on a worker, and gives it back when
/// dropped. Unset, it holds nothing.
#[derive(Default)]
pub struct Timer {
    sleep: Option<Pin<Box<Sleep>>>,
    /// The worker it came from; 0: none, it is not kept.
    home: usize,
}

impl Timer {
    /// An unset timer.
    pub const fn new() -> Timer {
        Timer {
            sleep: None,
            home: 0,
        }
    }

    /// Whether it has been set.
    pub fn is_set(&self) -> bool {
        self.sleep.is_some()
    }

    /// Sets it for `until`, replacing any earlier time.
    pub fn set(&mut self, until: Instant) {
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().reset(until),
            None => {
                self.home = crate::workers::current();
                self.sleep = Some(take(self.home, until));
            }
        }
    }

    /// Ready once the time it was set for has passed; an unset timer never is.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let Some(sleep) = self.sleep.take() else {
            return;
        };
        if self.home == 0 || crate::workers::current() != self.home {
            return;
        }
        // A thread-local being torn down drops the timer instead.
        let _ = KEPT.try_with(|kept| {
            if let Some(kept) = kept.borrow_mut().as_mut()
                && kept.len() < KEEP
            {
                kept.push(sleep);
            }
        });
    }
}

/// A timer set for `until`: one this worker kept, moved to `until`, or a new one.
fn take(home: usize, until: Instant) -> Pin<Box<Sleep>> {
    if home != 0
        && let Some(mut sleep) = KEPT
            .try_with(|kept| kept.borrow_mut().as_mut().and_then(Vec::pop))
            .ok()
            .flatten()
    {
        sleep.as_mut().reset(until);
        return sleep;
    }
    Box::pin(tokio::time::sleep_until(until))
}

/// Drops this worker's kept timers and keeps none from now on: called before its
/// runtime shuts down, so that no timer outlives the runtime it belongs to.
pub fn stop_keeping() {
    let _ = KEPT.try_with(|kept| kept.borrow_mut().take());
}

#[cfg(test)]
fn kept() -> usize {
    KEPT.with(|kept| kept.borrow().as_ref().map_or(0, Vec::len))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Runs `test` on a new thread that counts as worker 1, in a current-thread runtime
    /// with paused time.
    fn on_a_worker<Fut: Future<Output = ()>>(test: impl FnOnce() -> Fut + Send + 'static) {
        std::thread::spawn(move || {
            crate::workers::act_as_worker(1);
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap()
                .block_on(test());
            stop_keeping();
            assert_eq!(kept(), 0);
        })
        .join()
        .unwrap();
    }

    async fn finishes_in(ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_to_come_wins() {
        let now = Instant::now();
        let until = now + Duration::from_millis(100);
        assert_eq!(within(until, finishes_in(99)).await, Ok(99));
        let now = Instant::now();
        assert_eq!(
            within(now + Duration::from_millis(100), finishes_in(101)).await,
            Err(Passed)
        );
        assert_eq!(Instant::now() - now, Duration::from_millis(100));
        // Ready at once: ready, even with the deadline passed.
        assert_eq!(within(now, std::future::ready(7)).await, Ok(7));
    }

    #[test]
    fn off_a_worker_nothing_is_kept() {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(async {
                let until = Instant::now() + Duration::from_millis(50);
                assert_eq!(within(until, finishes_in(10)).await, Ok(10));
                assert_eq!(kept(), 0);
            });
    }

    #[test]
    fn a_worker_reuses_its_timers_at_their_new_deadlines() {
        on_a_worker(|| async {
            // A call that is ready at once never takes a timer.
            let soon = Instant::now() + Duration::from_millis(50);
            assert_eq!(within(soon, std::future::ready(1)).await, Ok(1));
            assert_eq!(kept(), 0);
            // A call that waits takes one and gives it back, still set for 50 ms.
            assert_eq!(within(soon, finishes_in(10)).await, Ok(10));
            assert_eq!(kept(), 1);
            // Moved later: the old deadline passes and the call goes on to its end.
            let start = Instant::now();
            let later = start + Duration::from_millis(200);
            assert_eq!(within(later, finishes_in(150)).await, Ok(150));
            assert_eq!(kept(), 1);
            // Moved later again, and the deadline is what ends the call.
            let start = Instant::now();
            assert_eq!(
                within(start + Duration::from_millis(300), finishes_in(1000)).await,
                Err(Passed)
            );
            assert_eq!(Instant::now() - start, Duration::from_millis(300));
            // Moved earlier than where it was left: it fires at the earlier time.
            let start = Instant::now();
            assert_eq!(
                within(start + Duration::from_secs(60), finishes_in(5)).await,
                Ok(5)
            );
            let start = Instant::now();
            assert_eq!(
                within(start + Duration::from_millis(20), finishes_in(1000)).await,
                Err(Passed)
            );
            assert_eq!(Instant::now() - start, Duration::from_millis(20));
            assert_eq!(kept(), 1);
        });
    }

    #[test]
    fn calls_waiting_at_once_each_get_their_own_timer() {
        on_a_worker(|| async {
            let now = Instant::now();
            let calls = (1..=5u64).map(|i| {
                // The odd ones end by their deadline, the even ones by themselves.
                let until = now + Duration::from_millis(100 * i);
                let takes = if i % 2 == 1 {
                    100 * i + 50
                } else {
                    100 * i - 50
                };
                tokio::spawn(within(until, finishes_in(takes)))
            });
            let mut results = Vec::new();
            for c in calls.collect::<Vec<_>>() {
                results.push(c.await.unwrap());
            }
            assert_eq!(
                results,
                vec![Err(Passed), Ok(150), Err(Passed), Ok(350), Err(Passed)]
            );
            assert_eq!(kept(), 5);
            // The next calls reuse them rather than make more.
            let now = Instant::now();
            let again: Vec<_> = (0..3)
                .map(|_| tokio::spawn(within(now + Duration::from_secs(1), finishes_in(10))))
                .collect();
            for c in again {
                assert_eq!(c.await.unwrap(), Ok(10));
            }
            assert_eq!(kept(), 5);
        });
    }
}
