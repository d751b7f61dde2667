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
//! for its next frame takes its [`Timer`] the same way, from a stock of its own. tokio
//! moves a timer that is still in the wheel to a later time with one compare-and-swap
//! and no lock (`Sleep::reset`: the wheel finds the new time when the old one comes
//! round). Within each stock the next time is usually the later one (the same timeout
//! from a later start); an earlier one, or a timer that already fired, is moved under
//! the lock, as a new timer would be.
//!
//! A kept timer keeps the waker of the task that last waited on it until it is reused
//! or its old time comes: then it fires once and wakes that task, which finds nothing to
//! do (a task that has ended is only kept in memory until then). At most [`KEEP`] timers
//! of each stock are kept.
//!
//! Only worker threads keep timers, and a timer goes back only to the thread it came
//! from: a worker runs one runtime for its whole life, so a kept timer always belongs to
//! the runtime of the call that takes it. On any other thread (the main runtime's, a
//! test's) each call makes its own timer.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::LocalKey;

use tokio::time::{Instant, Sleep};

/// How many finished timers a worker keeps of each stock, at most: about as many calls
/// as it has waiting at once.
const KEEP: usize = 256;

/// A worker's finished timers; `None` once the worker has stopped keeping them.
type Stock = RefCell<Option<Vec<Pin<Box<Sleep>>>>>;

thread_local! {
    /// The timers of [`within`]'s deadlines.
    static DEADLINES: Stock = const { RefCell::new(Some(Vec::new())) };
    /// The timers of bodies' waits for their next frame.
    static WAITS: Stock = const { RefCell::new(Some(Vec::new())) };
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
        timer: Timer {
            sleep: None,
            home: 0,
            stock: &DEADLINES,
        },
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
        let had_budget = tokio::task::coop::has_budget_remaining();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        // A call that finishes at its first poll never needs a timer.
        if !this.timer.is_set() {
            this.timer.set(*this.until);
        }
        // As tokio's `Timeout` does: a future that used up the task's budget must not
        // also keep its deadline from being seen.
        let passed = if had_budget && !tokio::task::coop::has_budget_remaining() {
            let timer = &mut *this.timer;
            let mut unconstrained =
                tokio::task::coop::unconstrained(std::future::poll_fn(|cx| timer.poll(cx)));
            Pin::new(&mut unconstrained).poll(cx)
        } else {
            this.timer.poll(cx)
        };
        passed.map(|()| Err(Passed))
    }
}

/// A timer that takes a kept one when first set on a worker, and gives it back when
/// dropped. Unset, it holds nothing.
pub struct Timer {
    sleep: Option<Pin<Box<Sleep>>>,
    /// The worker it came from; 0: none, it is not kept.
    home: usize,
    stock: &'static LocalKey<Stock>,
}

impl Default for Timer {
    /// An unset timer for a body's wait for its next frame.
    fn default() -> Timer {
        Timer {
            sleep: None,
            home: 0,
            stock: &WAITS,
        }
    }
}

impl Timer {
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
                self.sleep = Some(take(self.stock, self.home, until));
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
        let _ = self.stock.try_with(|kept| {
            if let Some(kept) = kept.borrow_mut().as_mut()
                && kept.len() < KEEP
            {
                kept.push(sleep);
            }
        });
    }
}

/// A timer set for `until`: one this worker kept in `stock`, moved to `until`, or a new
/// one.
fn take(stock: &'static LocalKey<Stock>, home: usize, until: Instant) -> Pin<Box<Sleep>> {
    if home != 0
        && let Some(mut sleep) = stock
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
    for stock in [&DEADLINES, &WAITS] {
        let _ = stock.try_with(|kept| kept.borrow_mut().take());
    }
}

#[cfg(test)]
fn kept() -> usize {
    DEADLINES.with(|kept| kept.borrow().as_ref().map_or(0, Vec::len))
}

#[cfg(test)]
fn kept_waits() -> usize {
    WAITS.with(|kept| kept.borrow().as_ref().map_or(0, Vec::len))
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
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(test());
            // As a worker does: the kept timers go before the runtime.
            stop_keeping();
            assert_eq!((kept(), kept_waits()), (0, 0));
            drop(runtime);
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
    fn a_future_that_uses_up_the_budget_still_sees_its_deadline() {
        // Without the unconstrained poll of the timer this never ends: the spinning future
        // takes the whole budget at every poll, and the timer never gets to say so.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let out = runtime.block_on(async {
                let spin = async {
                    loop {
                        tokio::task::consume_budget().await;
                    }
                };
                within(Instant::now(), spin).await
            });
            let _ = done.send(out);
        });
        let out = finished.recv_timeout(Duration::from_secs(20));
        assert_eq!(out, Ok(Err(Passed)));
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
