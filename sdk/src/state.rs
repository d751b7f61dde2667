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
//!   made in between. [`incr`] and [`compare_and_swap`] are atomic: build counters,
//!   windows and leases on them.
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
//!         let client = req.header_str("x-client-id").unwrap_or("anonymous");
//!         // One key per route and client. The window's first request creates it with
//!         // a 60 s TTL (incr keeps the TTL of an existing key), so it resets by expiring.
//!         let key = format!("{}/{client}", info.route);
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

use crate::bindings::weir::filter::state as wit;

pub use wit::StateError;

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
