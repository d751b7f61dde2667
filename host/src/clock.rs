//! A virtual clock for testing filters: the harness hands it to guests as their WASI wall
//! and monotonic clocks, and to the state store for TTLs, and moves it by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// A clock that only moves when told to. Clones share the same time.
#[derive(Clone)]
pub struct VirtualClock {
    inner: Arc<Inner>,
}

struct Inner {
    /// Real monotonic time at creation: the state store's TTLs count from here.
    base: tokio::time::Instant,
    /// Wall-clock time (since the Unix epoch) at creation.
    wall_base: Duration,
    /// How far the clock has been moved, in nanoseconds.
    advanced: AtomicU64,
}

impl VirtualClock {
    /// A clock whose wall time starts at `wall_start` (since the Unix epoch).
    pub fn starting_at(wall_start: Duration) -> VirtualClock {
        VirtualClock {
            inner: Arc::new(Inner {
                base: tokio::time::Instant::now(),
                wall_base: wall_start,
                advanced: AtomicU64::new(0),
            }),
        }
    }

    /// A clock whose wall time starts now.
    pub fn new() -> VirtualClock {
        VirtualClock::starting_at(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.inner.advanced.fetch_add(ns, Ordering::SeqCst);
    }

    /// How far the clock has moved since it was made.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.inner.advanced.load(Ordering::SeqCst))
    }

    /// The wall time now, since the Unix epoch.
    pub fn wall(&self) -> Duration {
        self.inner.wall_base + self.elapsed()
    }

    /// The current instant, for code that measures with `tokio::time::Instant`.
    pub fn instant(&self) -> tokio::time::Instant {
        self.inner.base + self.elapsed()
    }
}

impl Default for VirtualClock {
    fn default() -> Self {
        VirtualClock::new()
    }
}

impl HostWallClock for VirtualClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        self.wall()
    }
}

impl HostMonotonicClock for VirtualClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        u64::try_from(self.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_only_when_told() {
        let c = VirtualClock::starting_at(Duration::from_secs(1_000));
        assert_eq!(c.wall(), Duration::from_secs(1_000));
        assert_eq!(HostMonotonicClock::now(&c), 0);
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.wall(), Duration::from_millis(1_001_500));
        assert_eq!(HostMonotonicClock::now(&c), 1_500_000_000);
        assert_eq!(c.clone().elapsed(), Duration::from_millis(1500));
    }
}
