//! Shared filter state: the `weir:filter/state` interface's host side, behind one backend
//! trait.
//!
//! Filters keep breaker windows, token buckets, cache entries and idempotency records here
//! rather than in their instances, so the state is shared by every instance and route, and
//! survives instances being discarded and configs being reloaded. The host prefixes every
//! key with the filter's name before it reaches a backend, so filters cannot see each
//! other's keys.

mod memory;
// Public (and hidden) for the `state` fuzz target in `fuzz/`, which checks the stored
// forms' round trips and the primitives on values that are not of their form.
#[doc(hidden)]
pub mod prims;
pub(crate) mod redis;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use memory::MemoryBackend;
pub use redis::RedisBackend;

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

/// How a backend is doing, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateHealth {
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// Whether its last exchange with its server worked (always, for memory).
    pub up: bool,
    /// The last failure and when it happened.
    pub last_error: Option<(String, std::time::SystemTime)>,
}

/// A GCRA token bucket's numbers, for [`StateBackend::bucket_take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketPolicy {
    /// Nanoseconds per token (at least 1).
    pub interval_ns: u64,
    /// The capacity, in tokens (at least 1).
    pub burst: u64,
    /// 0: a request that finds no token is refused (`Empty`). Otherwise it reserves the
    /// next token if that comes within this many nanoseconds (`Reserved`).
    pub max_wait_ns: u64,
    /// With `max_wait_ns > 0`: the most requests that may wait, this one included.
    pub max_queue: u64,
}

/// What [`StateBackend::bucket_take`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeOutcome {
    /// A token was taken.
    Admitted,
    /// The next token is reserved; it is due `wait_ns` from now.
    Reserved,
    /// No token, and no queue (`max_wait_ns` is 0).
    Empty,
    /// The bucket is paused (by [`StateBackend::bucket_pause`]) for `wait_ns` more.
    Paused,
    /// `max_queue` requests are already waiting.
    QueueFull,
    /// The token would come later than `max_wait_ns`.
    TooLong,
}

/// The result of [`StateBackend::bucket_take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakeResult {
    /// The decision.
    pub outcome: TakeOutcome,
    /// The bucket's theoretical arrival time after the call (0 for a bucket never used).
    pub tat_ns: u64,
    /// The end of the bucket's pause after the call (0: none).
    pub paused_until_ns: u64,
    /// `Reserved`: until the token is due; a refusal: until a request could pass; 0 when
    /// admitted.
    pub wait_ns: u64,
}

/// The records a [`StateBackend::window_add`] window sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last `n` records (1 to 10 000).
    Count(u32),
    /// The records in the last `slots` slots of `slot_ms` milliseconds each, the slot
    /// `now` falls in included (slots 1 to 3600, slot_ms at least 1).
    Time {
        /// The width of one slot.
        slot_ms: u32,
        /// How many slots are summed.
        slots: u32,
    },
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
    /// Atomically takes one token from the GCRA bucket under `key` at `now_ns`
    /// (nanoseconds since the Unix epoch). An absent key is a full, unpaused bucket; the
    /// key expires when the bucket is full and unpaused again.
    fn bucket_take<'a>(
        &'a self,
        key: &'a str,
        policy: BucketPolicy,
        now_ns: u64,
    ) -> BoxFuture<'a, Result<TakeResult, StateError>>;
    /// Atomically pauses the bucket under `key` until `until_ns`; a longer pause already
    /// set is kept.
    fn bucket_pause<'a>(
        &'a self,
        key: &'a str,
        until_ns: u64,
        now_ns: u64,
    ) -> BoxFuture<'a, Result<(), StateError>>;
    /// Atomically adds `record` (one integer per lane) to the window under `key`, then
    /// returns the window's sums per lane, as many lanes as the longest record held.
    /// `None` only reads. A `Time` window adds the record to the slot `at_ns` falls in
    /// (which may be an earlier slot than `now_ns`'s) and sums the slots up to `now_ns`'s;
    /// a `Count` window ignores `at_ns`. The key expires `ttl` after its last write, and
    /// a `Time` window is kept at least as long as it spans.
    fn window_add<'a>(
        &'a self,
        key: &'a str,
        window: Window,
        at_ns: u64,
        now_ns: u64,
        record: Option<&'a [i64]>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<Vec<i64>, StateError>>;
    /// Asks the backend's server whether it answers (`weir check`); memory always does.
    fn ping(&self) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async { Ok(()) })
    }
    /// How the backend is doing.
    fn health(&self) -> StateHealth {
        StateHealth {
            backend: "memory",
            up: true,
            last_error: None,
        }
    }
}
