//! Time as weir shows and fakes it: [`rfc3339`] timestamps for `/status` and `/requests`,
//! and a virtual clock for testing filters, which the harness hands to guests as their
//! WASI wall and monotonic clocks, and to the state store for TTLs, and moves by hand.

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

/// `time` as RFC 3339 UTC with milliseconds, e.g. `2026-11-22T04:15:01.123Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let d = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
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

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_320_901_123);
        assert_eq!(rfc3339(t), "2026-11-22T04:15:01.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
