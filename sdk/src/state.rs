//! State shared by every instance of this filter: across routes and, with weir's Redis
//! backend, across weir processes.
//!
//! weir prefixes every key with the filter's name, so filters never see each other's
//! keys. TTLs are [`Duration`]s here and rounded up to whole milliseconds on the wire,
//! so a short TTL never becomes "expire at once". Every call can fail with
//! [`StateError::Unavailable`] when the backend is down; decide, and document in your
//! config, whether the filter then fails open or closed.

use std::time::Duration;

use crate::bindings::weir::filter::state as wit;

pub use wit::StateError;

/// The value stored under `key`, if any and not expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, StateError> {
    wit::get(key)
}

/// Stores `value` under `key`, expiring after `ttl` if given.
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

/// Atomically stores `new` only if the current value equals `expected` (`None`: the key
/// is absent). Returns whether it stored.
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
