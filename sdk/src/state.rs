//! State shared by every instance of this filter, on every route that uses it.
//!
//! An instance is lent out for one call at a time and may be replaced at any moment, so
//! anything that requests share (counters, windows, cached tokens, leases) lives here,
//! in weir's store, rather than in the filter value.
//!
//! - **Keys** are namespaced by weir: it prefixes each key with the filter's configured
//!   name (`[filters.NAME]`, not [`Filter::NAME`](crate::Filter::NAME)) and a `/`, so
//!   filters never see each other's keys, and every route using this filter sees the
//!   same ones. Put [`RequestInfo::route`](crate::RequestInfo::route) into a key when
//!   routes must not share. A key may be 1024 bytes at most, the prefix included.
//! - **TTLs** are [`Duration`]s here, rounded up to whole milliseconds on the wire, so a
//!   short TTL never becomes "expire at once". `None` keeps the entry until it is deleted
//!   or evicted. [`set`] replaces the TTL; [`incr`] sets it only when it creates the key.
//! - **Atomicity.** Instances run in parallel, so [`get`] then [`set`] can lose an update
//!   made in between. [`incr`] and [`compare_and_swap`] are atomic: build counters and
//!   leases on them. A compare-and-swap loop on a key that many instances (or several
//!   weir processes sharing Redis) update at once retries on every conflict, so for the
//!   hot keys of limits and windows use the primitives below instead.
//! - **Primitives** (since WIT 0.1.2): [`bucket_take`] and [`bucket_pause`] keep a GCRA
//!   token bucket, [`window_add`] a sliding window of per-lane sums (the last n records,
//!   or the records of the last slots of time). Each is one atomic call that never
//!   conflicts. Times are nanoseconds since the Unix epoch, from the filter's own clock
//!   (`SystemTime::now()`; under `weir filter test` the virtual one), so processes that
//!   share a store should keep their clocks in sync. A component that uses them needs
//!   weir 0.1.2 or later.
//! - **Eviction.** weir's `memory` backend (today the only one: in-process, shared by
//!   every route and instance, kept across reloads, lost on restart) is bounded by
//!   `[state] max_bytes` and evicts the least recently used entries when full. A key can
//!   therefore vanish before its TTL: treat state as a cache that a filter can rebuild.
//! - **Errors.** [`StateError::TooLarge`] for an oversized key or entry;
//!   [`StateError::Unavailable`] when the backend cannot do it, and for [`incr`] on a
//!   value that is not a decimal integer (or would overflow). weir counts each failure
//!   in `weir_state_errors_total{filter,kind}`. Decide whether the filter then fails
//!   open (lets the request through) or closed (refuses it), and say which in its config
//!   reference.
//!
//! Off wasm (under `cargo test`) these calls panic; see the crate docs for testing.
//! Under `weir filter test` the TTLs follow the virtual clock.
//!
//! A fixed-window limit per client, failing open when the store is unavailable:
//!
//! ```
//! use std::time::Duration;
//! use weir_filter::{Filter, Request, RequestAction, RequestInfo, Response, log, state};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     per_minute: i64,
//! }
//!
//! struct PerClient(Config);
//!
//! impl Filter for PerClient {
//!     type Config = Config;
//!     const NAME: &'static str = "per-client";
//!
//!     fn new(config: Config) -> Result<Self, String> {
//!         if config.per_minute < 1 {
//!             return Err("`per_minute` must be at least 1".into());
//!         }
//!         Ok(PerClient(config))
//!     }
//!
//!     fn on_request(&mut self, info: &RequestInfo, req: &Request) -> RequestAction {
//!         let client = req.header_str("x-client-id");
//!         let client = client.as_deref().unwrap_or("anonymous");
//!         // One key per route and client. The window's first request creates it with
//!         // a 60 s TTL (incr keeps the TTL of an existing key), so it resets by expiring.
//!         let key = format!("{}/{client}", info.route());
//!         match state::incr(&key, 1, Some(Duration::from_secs(60))) {
//!             Ok(n) if n > self.0.per_minute => RequestAction::Respond(
//!                 Response::json(429, &weir_filter::serde_json::json!({ "error": "rate_limited" }))
//!                     .with_header("retry-after", "60"),
//!             ),
//!             Ok(_) => RequestAction::proceed(),
//!             Err(e) => {
//!                 log::warn(&format!("state unavailable, letting the request through: {e:?}"));
//!                 RequestAction::proceed()
//!             }
//!         }
//!     }
//! }
//! ```

use std::time::Duration;

use crate::bindings::weir::filter0_1_2::state as wit;

pub use wit::{BucketPolicy, StateError, TakeOutcome, TakeResult, TimeWindow, Window};

/// The value stored under `key`, if any and not expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, StateError> {
    wit::get(key)
}

/// Stores `value` under `key`, replacing any value and TTL; it expires after `ttl` if
/// given, else lives until deleted or evicted.
pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StateError> {
    wit::set(key, value, ttl.map(ttl_ms))
}

/// Removes `key`. Removing an absent key is not an error.
pub fn delete(key: &str) -> Result<(), StateError> {
    wit::delete(key)
}

/// Atomically adds `delta` and returns the new value. An absent key starts at 0, and
/// `ttl` applies only when the key is created. A stored value that is not a decimal
/// integer is an error.
pub fn incr(key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, StateError> {
    wit::incr(key, delta, ttl.map(ttl_ms))
}

/// Atomically stores `new` (with `ttl`) only if the current value equals `expected`
/// (`None`: the key is absent or expired). Returns whether it stored; `false` means
/// another instance changed the value first, so read it again and decide.
pub fn compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    new: &[u8],
    ttl: Option<Duration>,
) -> Result<bool, StateError> {
    wit::compare_and_swap(key, expected, new, ttl.map(ttl_ms))
}

/// Atomically takes one token at `now_ns` from the GCRA bucket under `key`.
///
/// The bucket holds `policy.burst` tokens and gains one every `policy.interval_ns`. An
/// absent key is a full, unpaused bucket, and the key expires once the bucket is full and
/// unpaused again, so idle buckets cost nothing. Without a token the request is refused
/// ([`TakeOutcome::Empty`]), or with `policy.max_wait_ns > 0` it reserves the next token
/// ([`TakeOutcome::Reserved`], due [`TakeResult::wait_ns`] from now) unless
/// `policy.max_queue` requests already wait ([`TakeOutcome::QueueFull`]) or the token
/// comes later than `max_wait_ns` ([`TakeOutcome::TooLong`]). A paused bucket refuses
/// everything ([`TakeOutcome::Paused`]). Only admitting and reserving change the bucket;
/// a refusal's `wait_ns` is how long until a request could pass.
///
/// ```no_run
/// use weir_filter::state::{self, BucketPolicy, TakeOutcome};
///
/// # let now_ns = 0;
/// // 10 per second, bursts of 20, no queue.
/// let policy = BucketPolicy { interval_ns: 100_000_000, burst: 20, max_wait_ns: 0, max_queue: 0 };
/// match state::bucket_take("route-a", policy, now_ns) {
///     Ok(r) if r.outcome == TakeOutcome::Admitted => { /* go on */ }
///     Ok(r) => { /* 429, Retry-After from r.wait_ns */ }
///     Err(_) => { /* the store failed: fail open or closed */ }
/// }
/// ```
pub fn bucket_take(key: &str, policy: BucketPolicy, now_ns: u64) -> Result<TakeResult, StateError> {
    wit::bucket_take(key, policy, now_ns)
}

/// Atomically pauses the bucket under `key` until `until_ns` (an upstream's
/// `Retry-After`, say): every [`bucket_take`] is refused until then, and the bucket keeps
/// its tokens. A longer pause already set is kept.
pub fn bucket_pause(key: &str, until_ns: u64, now_ns: u64) -> Result<(), StateError> {
    wit::bucket_pause(key, until_ns, now_ns)
}

/// Atomically adds `lanes` (one integer per lane, e.g. `[calls, failures, slow]`) to the
/// window under `key`, and returns the window's sums per lane: as many lanes as the
/// longest record it holds, saturating at the `i64` bounds. `None` only reads; an absent
/// key is an empty window (no lanes).
///
/// - [`Window::Count`]`(n)` sums the last `n` records (1 to 10 000) and ignores `at_ns`.
/// - [`Window::Time`] sums the records of the last `slots` slots of `slot_ms` each, the
///   slot `now_ns` falls in included (`slots` 1 to 3600). The record goes to the slot
///   `at_ns` falls in: a call's start, say, recorded when it ends. A record whose slot
///   has already left the window is dropped.
///
/// The key expires `ttl` after its last write; a time window is kept at least as long as
/// it spans. Changing a window's kind or slot width (a new config) starts it afresh.
pub fn window_add(
    key: &str,
    window: Window,
    at_ns: u64,
    now_ns: u64,
    lanes: Option<&[i64]>,
    ttl: Option<Duration>,
) -> Result<Vec<i64>, StateError> {
    wit::window_add(key, window, at_ns, now_ns, lanes, ttl.map(ttl_ms))
}

/// Whole milliseconds, rounded up.
fn ttl_ms(ttl: Duration) -> u64 {
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_milliseconds() {
        assert_eq!(ttl_ms(Duration::ZERO), 0);
        assert_eq!(ttl_ms(Duration::from_nanos(1)), 1);
        assert_eq!(ttl_ms(Duration::from_millis(250)), 250);
        assert_eq!(ttl_ms(Duration::from_micros(250_001)), 251);
        assert_eq!(ttl_ms(Duration::MAX), u64::MAX);
    }
}
