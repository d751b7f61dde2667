//! Shared filter state: the `weir:filter/state` interface's host side, behind one backend
//! trait.
//!
//! Filters keep breaker windows, token buckets, cache entries and idempotency records here
//! rather than in their instances, so the state is shared by every instance and route, and
//! survives instances being discarded and configs being reloaded. The host prefixes every
//! key with the filter's name before it reaches a backend, so filters cannot see each
//! other's keys.

mod memory;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use memory::MemoryBackend;

/// A boxed future, as the backend trait returns (backends are used as trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a state operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The backend cannot be reached.
    #[error("state backend unavailable: {0}")]
    Unavailable(String),
    /// The key or value is larger than the backend accepts.
    #[error("state key or value too large")]
    TooLarge,
    /// `incr` on a value that is not a decimal integer, or an overflow.
    #[error("value is not an integer")]
    NotAnInteger,
}

/// A store of byte values with TTLs and two atomic operations.
///
/// Keys arrive already namespaced (`"<filter>/<key>"`). A TTL of `None` means the entry
/// lives until deleted or evicted.
pub trait StateBackend: Send + Sync + 'static {
    /// The value under `key`, if present and not expired.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StateError>>;
    /// Stores `value` under `key`, replacing any value and TTL.
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), StateError>>;
    /// Removes `key`; removing an absent key succeeds.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StateError>>;
    /// Adds `delta` to the decimal integer under `key` (created at 0 with `ttl` when
    /// absent; the TTL of an existing key is kept) and returns the new value.
    fn incr<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<i64, StateError>>;
    /// Stores `new` (with `ttl`) only if the current value equals `expected`, where `None`
    /// means absent or expired. Returns whether it stored.
    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a [u8]>,
        new: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool, StateError>>;
}
