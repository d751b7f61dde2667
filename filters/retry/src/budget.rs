//! The retry budget: concurrent retries to one upstream stay within `budget_percent` of
//! its active requests, but at least `min_retry_concurrency` are always allowed.
//!
//! Both counts live in `state`, so every instance, route and (with Redis) weir process
//! shares them. They are kept in time buckets of [`BUCKET`], keyed by the bucket in which
//! a request started: a request adds itself to its start bucket and removes itself from
//! the same bucket when it ends, and a retry in flight does the same in a second key. A
//! count is the sum of the last [`WINDOW`] buckets, and each key expires [`TTL`] after it
//! was made. So a decrement that never comes (the client went away, the route deadline
//! struck mid-retry) is forgotten once its bucket leaves the window, at most 40 s later;
//! nothing can wedge the budget. The price: a request that runs longer than 30 s stops
//! counting as active, which only makes the budget stricter.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The width of one time bucket.
pub const BUCKET: Duration = Duration::from_secs(10);
/// How many buckets, the current one included, a count sums.
pub const WINDOW: u64 = 4;
/// How long a bucket's key lives: one bucket past the window, so that a key is never
/// recreated by a late decrement while its bucket still counts.
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
    /// Atomically adds `delta` to `key` (created at 0 with `ttl`); the new value.
    fn incr(&mut self, key: &str, delta: i64, ttl: Duration) -> Result<i64, String>;
    /// The integer under `key`, if any.
    fn get(&mut self, key: &str) -> Result<Option<i64>, String>;
}

/// The bucket `now` falls in.
pub fn bucket(now: SystemTime) -> u64 {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    (since.as_millis() / BUCKET.as_millis()) as u64
}

/// The state key of `count` for requests to `upstream` that started in `bucket`.
pub fn key(count: Count, upstream: &str, bucket: u64) -> String {
    let name = match count {
        Count::Active => "active",
        Count::Retrying => "retrying",
    };
    format!("budget:{name}:{upstream}:{bucket}")
}

/// How many retries may be in flight at once with `active` requests.
pub fn allowed(active: u64, budget_percent: f64, min_retry_concurrency: u32) -> u64 {
    let share = (active as f64 * budget_percent / 100.0).floor() as u64;
    share.max(u64::from(min_retry_concurrency))
}

/// Adds one to `count` in `bucket`.
pub fn enter(
    store: &mut impl Store,
    count: Count,
    upstream: &str,
    bucket: u64,
) -> Result<(), String> {
    store.incr(&key(count, upstream, bucket), 1, TTL).map(drop)
}

/// Takes one off `count` in `bucket`.
pub fn leave(
    store: &mut impl Store,
    count: Count,
    upstream: &str,
    bucket: u64,
) -> Result<(), String> {
    store.incr(&key(count, upstream, bucket), -1, TTL).map(drop)
}

/// The sum of `count` over the window that ends with bucket `now`; never below zero.
pub fn total(
    store: &mut impl Store,
    count: Count,
    upstream: &str,
    now: u64,
) -> Result<u64, String> {
    let mut sum = 0i64;
    for b in now.saturating_sub(WINDOW - 1)..=now {
        sum += store.get(&key(count, upstream, b))?.unwrap_or(0);
    }
    Ok(sum.max(0) as u64)
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
    enter(store, Count::Retrying, upstream, start)?;
    let granted = (|| {
        let retrying = total(store, Count::Retrying, upstream, now)?;
        let active = total(store, Count::Active, upstream, now)?;
        Ok::<_, String>(retrying <= allowed(active, budget_percent, min_retry_concurrency))
    })();
    match granted {
        Ok(true) => Ok(true),
        Ok(false) => {
            leave(store, Count::Retrying, upstream, start)?;
            Ok(false)
        }
        Err(e) => {
            let _ = leave(store, Count::Retrying, upstream, start);
            Err(e)
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::collections::HashMap;

    /// An in-memory [`Store`] with TTLs on a clock the test moves.
    #[derive(Default)]
    pub struct FakeStore {
        now: Duration,
        keys: HashMap<String, (i64, Duration)>,
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
        fn incr(&mut self, key: &str, delta: i64, ttl: Duration) -> Result<i64, String> {
            if self.fail {
                return Err("unavailable".into());
            }
            let expires = self.now + ttl;
            let entry = self.keys.entry(key.to_owned()).or_insert((0, expires));
            entry.0 += delta;
            Ok(entry.0)
        }

        fn get(&mut self, key: &str) -> Result<Option<i64>, String> {
            if self.fail {
                return Err("unavailable".into());
            }
            Ok(self.keys.get(key).map(|(v, _)| *v))
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
        assert_eq!(key(Count::Active, UP, 5), "budget:active:http://api.test:5");
        assert_eq!(
            key(Count::Retrying, UP, 5),
            "budget:retrying:http://api.test:5"
        );
    }

    #[test]
    fn retries_are_limited_by_active_requests() {
        for (active, want) in [(10, 3), (50, 10), (0, 3)] {
            let mut s = FakeStore::default();
            for _ in 0..active {
                enter(&mut s, Count::Active, UP, 100).unwrap();
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
            leave(&mut s, Count::Retrying, UP, 100).unwrap();
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
        enter(&mut s, Count::Active, UP, 10).unwrap();
        enter(&mut s, Count::Active, UP, 12).unwrap();
        enter(&mut s, Count::Active, UP, 13).unwrap();
        assert_eq!(total(&mut s, Count::Active, UP, 13).unwrap(), 3);
        // Bucket 10 is still in the window at 13 (10, 11, 12, 13) but not at 14.
        assert_eq!(total(&mut s, Count::Active, UP, 14).unwrap(), 2);
        assert_eq!(total(&mut s, Count::Active, UP, 17).unwrap(), 0);
        // A late decrement to a forgotten bucket does not go below zero in a count.
        leave(&mut s, Count::Active, UP, 9).unwrap();
        leave(&mut s, Count::Active, UP, 9).unwrap();
        assert_eq!(total(&mut s, Count::Active, UP, 9).unwrap(), 0);
    }

    #[test]
    fn lost_decrements_expire() {
        let mut s = FakeStore::default();
        for _ in 0..3 {
            assert!(try_acquire(&mut s, UP, 7, 7, 20.0, 3).unwrap());
        }
        assert!(!try_acquire(&mut s, UP, 7, 7, 20.0, 3).unwrap());
        // Nobody ever gives the slots back; TTL later the keys are gone.
        s.advance(TTL);
        assert!(try_acquire(&mut s, UP, 7, 7, 20.0, 3).unwrap());
    }

    #[test]
    fn a_failing_store_is_an_error() {
        let mut s = FakeStore::failing();
        assert!(try_acquire(&mut s, UP, 1, 1, 20.0, 3).is_err());
        assert!(enter(&mut s, Count::Active, UP, 1).is_err());
    }
}
