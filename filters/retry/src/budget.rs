//! The retry budget: concurrent retries to one upstream stay within `budget_percent` of
//! its active requests, but at least `min_retry_concurrency` are always allowed.
//!
//! Both counts live in `state`, so every instance, route and (with Redis) weir process
//! shares them. Each is a time window (`state::window_add`) of [`WINDOW`] slots of
//! [`BUCKET`], one key per count and upstream. A request adds 1 to the slot in which it
//! started and adds -1 to the same slot when it ends, and a retry in flight does the same
//! in the second count. A count is the window's sum, read in the same atomic call that
//! updates it: no compare-and-swap, so no retries on a key that every request to the
//! upstream touches. An update that never comes (the client went away, the route
//! deadline struck mid-retry) is forgotten once its slot leaves the window, at most 40 s
//! later, and a late one for a slot already gone is dropped; nothing can wedge the
//! budget. The price: a request that runs longer than 30 s stops counting as active,
//! which only makes the budget stricter.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The width of one time bucket (a slot of the window).
pub const BUCKET: Duration = Duration::from_secs(10);
/// How many buckets, the current one included, a count sums.
pub const WINDOW: u64 = 4;
/// How long a count's key lives after its last update (the window is kept at least as
/// long as it spans, 40 s, anyway).
pub const TTL: Duration = Duration::from_secs(50);

/// The two counts kept per upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Requests between `on-request` and their final `on-response`.
    Active,
    /// Retries between the `retry` answer and the outcome of the try it asked for.
    Retrying,
}

/// The part of `state` the budget uses; an in-memory fake stands in for it in tests.
pub trait Store {
    /// Atomically adds `delta` (if any) to bucket `at` of the window under `key` (unless
    /// that bucket has left the window), and returns the window's sum up to bucket `now`.
    /// The key lives [`TTL`] after its last update.
    fn add(&mut self, key: &str, at: u64, now: u64, delta: Option<i64>) -> Result<i64, String>;
}

/// The bucket `now` falls in.
pub fn bucket(now: SystemTime) -> u64 {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    (since.as_millis() / BUCKET.as_millis()) as u64
}

/// The state key of `count` for requests to `upstream`.
pub fn key(count: Count, upstream: &str) -> String {
    let name = match count {
        Count::Active => "active",
        Count::Retrying => "retrying",
    };
    ["budget:", name, ":", upstream].concat()
}

/// How many retries may be in flight at once with `active` requests.
pub fn allowed(active: u64, budget_percent: f64, min_retry_concurrency: u32) -> u64 {
    let share = (active as f64 * budget_percent / 100.0).floor() as u64;
    share.max(u64::from(min_retry_concurrency))
}

/// Adds one to `count` in bucket `start`, at bucket `now`; the new count.
pub fn enter(
    store: &mut impl Store,
    count: Count,
    upstream: &str,
    start: u64,
    now: u64,
) -> Result<u64, String> {
    store
        .add(&key(count, upstream), start, now, Some(1))
        .map(non_negative)
}

/// Takes one off `count` in bucket `start`, at bucket `now`.
pub fn leave(
    store: &mut impl Store,
    count: Count,
    upstream: &str,
    start: u64,
    now: u64,
) -> Result<(), String> {
    store
        .add(&key(count, upstream), start, now, Some(-1))
        .map(drop)
}

/// `count` over the window that ends with bucket `now`; never below zero.
pub fn total(
    store: &mut impl Store,
    count: Count,
    upstream: &str,
    now: u64,
) -> Result<u64, String> {
    store
        .add(&key(count, upstream), now, now, None)
        .map(non_negative)
}

/// A sum as a count: decrements whose increments have left the window can take it below
/// zero.
fn non_negative(sum: i64) -> u64 {
    u64::try_from(sum).unwrap_or(0)
}

/// Takes a retry slot for a request that started in `start`, if the budget has one: adds
/// the retry first and takes it back if that went over, so that two instances racing for
/// the last slot cannot both win. `Ok(false)`: over budget.
pub fn try_acquire(
    store: &mut impl Store,
    upstream: &str,
    start: u64,
    now: u64,
    budget_percent: f64,
    min_retry_concurrency: u32,
) -> Result<bool, String> {
    let retrying = enter(store, Count::Retrying, upstream, start, now)?;
    let granted = total(store, Count::Active, upstream, now)
        .map(|active| retrying <= allowed(active, budget_percent, min_retry_concurrency));
    match granted {
        Ok(true) => Ok(true),
        Ok(false) => {
            leave(store, Count::Retrying, upstream, start, now)?;
            Ok(false)
        }
        Err(e) => {
            let _ = leave(store, Count::Retrying, upstream, start, now);
            Err(e)
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    /// An in-memory [`Store`] that keeps windows as the host does, with TTLs on a clock
    /// the test moves.
    #[derive(Default)]
    pub struct FakeStore {
        now: Duration,
        keys: HashMap<String, (BTreeMap<u64, i64>, Duration)>,
        fail: bool,
    }

    impl FakeStore {
        /// A store whose every call fails, like a Redis that is down.
        pub fn failing() -> FakeStore {
            FakeStore {
                fail: true,
                ..FakeStore::default()
            }
        }

        pub fn advance(&mut self, by: Duration) {
            self.now += by;
            let now = self.now;
            self.keys.retain(|_, (_, expires)| *expires > now);
        }
    }

    impl Store for FakeStore {
        fn add(&mut self, key: &str, at: u64, now: u64, delta: Option<i64>) -> Result<i64, String> {
            if self.fail {
                return Err("unavailable".into());
            }
            let in_window = |b: u64| b <= now && b + WINDOW > now;
            let sum = |slots: &BTreeMap<u64, i64>| {
                slots
                    .iter()
                    .filter(|(b, _)| in_window(**b))
                    .map(|(_, n)| n)
                    .sum()
            };
            let Some(delta) = delta else {
                return Ok(self.keys.get(key).map_or(0, |(slots, _)| sum(slots)));
            };
            let expires = self.now + TTL;
            let (slots, ttl) = self.keys.entry(key.to_owned()).or_default();
            *ttl = expires;
            if in_window(at) {
                *slots.entry(at).or_default() += delta;
            }
            slots.retain(|b, _| in_window(*b));
            Ok(sum(slots))
        }
    }

    const UP: &str = "http://api.test";

    #[test]
    fn allowed_is_a_share_of_active_with_a_floor() {
        assert_eq!(allowed(0, 20.0, 3), 3);
        assert_eq!(allowed(10, 20.0, 3), 3);
        assert_eq!(allowed(19, 20.0, 3), 3);
        assert_eq!(allowed(20, 20.0, 3), 4);
        assert_eq!(allowed(50, 20.0, 3), 10);
        assert_eq!(allowed(54, 20.0, 3), 10);
        assert_eq!(allowed(1000, 20.0, 3), 200);
        assert_eq!(allowed(1000, 0.0, 0), 0);
        assert_eq!(allowed(7, 100.0, 0), 7);
        assert_eq!(allowed(3, 50.0, 0), 1);
    }

    #[test]
    fn buckets_and_keys() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_009);
        assert_eq!(bucket(t), 170_000_000);
        assert_eq!(bucket(t + Duration::from_secs(1)), 170_000_001);
        assert_eq!(key(Count::Active, UP), "budget:active:http://api.test");
        assert_eq!(key(Count::Retrying, UP), "budget:retrying:http://api.test");
    }

    #[test]
    fn retries_are_limited_by_active_requests() {
        for (active, want) in [(10, 3), (50, 10), (0, 3)] {
            let mut s = FakeStore::default();
            for _ in 0..active {
                enter(&mut s, Count::Active, UP, 100, 100).unwrap();
            }
            let granted = (0..20)
                .filter(|_| try_acquire(&mut s, UP, 100, 100, 20.0, 3).unwrap())
                .count();
            assert_eq!(granted, want, "{active} active");
            assert_eq!(
                total(&mut s, Count::Retrying, UP, 100).unwrap(),
                want as u64
            );
            // A retry that ends frees its slot for another.
            leave(&mut s, Count::Retrying, UP, 100, 100).unwrap();
            assert!(try_acquire(&mut s, UP, 100, 100, 20.0, 3).unwrap());
            assert!(!try_acquire(&mut s, UP, 100, 100, 20.0, 3).unwrap());
        }
    }

    #[test]
    fn upstreams_have_separate_budgets() {
        let mut s = FakeStore::default();
        for _ in 0..3 {
            assert!(try_acquire(&mut s, UP, 1, 1, 20.0, 3).unwrap());
        }
        assert!(!try_acquire(&mut s, UP, 1, 1, 20.0, 3).unwrap());
        assert!(try_acquire(&mut s, "http://other.test", 1, 1, 20.0, 3).unwrap());
    }

    #[test]
    fn counts_sum_the_window_and_forget_what_leaves_it() {
        let mut s = FakeStore::default();
        assert_eq!(enter(&mut s, Count::Active, UP, 10, 10), Ok(1));
        assert_eq!(enter(&mut s, Count::Active, UP, 12, 12), Ok(2));
        assert_eq!(enter(&mut s, Count::Active, UP, 13, 13), Ok(3));
        assert_eq!(total(&mut s, Count::Active, UP, 13).unwrap(), 3);
        // Bucket 10 is still in the window at 13 (10, 11, 12, 13) but not at 14.
        assert_eq!(total(&mut s, Count::Active, UP, 14).unwrap(), 2);
        assert_eq!(total(&mut s, Count::Active, UP, 17).unwrap(), 0);
        // A late decrement for a bucket that has left the window is dropped…
        leave(&mut s, Count::Active, UP, 12, 17).unwrap();
        assert_eq!(enter(&mut s, Count::Active, UP, 17, 17), Ok(1));
        // …and decrements beyond the increments still held never make a count negative.
        leave(&mut s, Count::Active, UP, 16, 17).unwrap();
        leave(&mut s, Count::Active, UP, 16, 17).unwrap();
        assert_eq!(total(&mut s, Count::Active, UP, 17).unwrap(), 0);
    }

    #[test]
    fn lost_decrements_are_forgotten() {
        let mut s = FakeStore::default();
        for _ in 0..3 {
            assert!(try_acquire(&mut s, UP, 7, 7, 20.0, 3).unwrap());
        }
        assert!(!try_acquire(&mut s, UP, 7, 7, 20.0, 3).unwrap());
        // Nobody ever gives the slots back; once their bucket leaves the window, or the
        // key expires, retries are allowed again.
        assert!(try_acquire(&mut s, UP, 11, 11, 20.0, 3).unwrap());
        s.advance(TTL);
        for _ in 0..3 {
            assert!(try_acquire(&mut s, UP, 7, 7, 20.0, 3).unwrap());
        }
    }

    #[test]
    fn a_failing_store_is_an_error() {
        let mut s = FakeStore::failing();
        assert!(try_acquire(&mut s, UP, 1, 1, 20.0, 3).is_err());
        assert!(enter(&mut s, Count::Active, UP, 1, 1).is_err());
    }
}
