//! Per-route request statistics for `/status`: status-code counts, latency percentiles
//! and the request rate over the last minute.
//!
//! Prometheus has the same data as series; this keeps a small, exact summary per route
//! that `/status` can show without a query language. Latencies are counted in fixed
//! buckets, so a percentile is reported as the upper bound of the bucket it falls in.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Upper bounds of the latency buckets, in milliseconds; the last bucket is unbounded.
pub const LATENCY_BOUNDS_MS: [f64; 16] = [
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
    30000.0,
    f64::INFINITY,
];

/// The rate window: one counter per second.
const WINDOW_SECS: usize = 60;

struct RouteStats {
    total: u64,
    codes: BTreeMap<u16, u64>,
    latency: [u64; LATENCY_BOUNDS_MS.len()],
    /// (second since start, requests in it), indexed by second % WINDOW_SECS.
    seconds: [(u64, u64); WINDOW_SECS],
}

impl Default for RouteStats {
    fn default() -> Self {
        RouteStats {
            total: 0,
            codes: BTreeMap::new(),
            latency: [0; LATENCY_BOUNDS_MS.len()],
            seconds: [(0, 0); WINDOW_SECS],
        }
    }
}

impl RouteStats {
    fn record(&mut self, status: u16, took: Duration, second: u64) {
        self.total += 1;
        *self.codes.entry(status).or_default() += 1;
        let ms = took.as_secs_f64() * 1000.0;
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len() - 1);
        self.latency[bucket] += 1;
        let slot = &mut self.seconds[second as usize % WINDOW_SECS];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 += 1;
    }

    /// The bucket bound that holds quantile `q` (0..1), or `None` with no requests.
    fn quantile(&self, q: f64) -> Option<f64> {
        let n: u64 = self.latency.iter().sum();
        if n == 0 {
            return None;
        }
        let rank = (q * n as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in self.latency.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(LATENCY_BOUNDS_MS[i]);
            }
        }
        None
    }

    /// Requests per second over the last full minute ending at `second`.
    fn rate(&self, second: u64) -> f64 {
        let since = second.saturating_sub(WINDOW_SECS as u64 - 1);
        let n: u64 = self
            .seconds
            .iter()
            .filter(|(s, _)| *s >= since && *s <= second)
            .map(|(_, c)| c)
            .sum();
        n as f64 / WINDOW_SECS as f64
    }
}

/// Statistics for every route, by name. They survive reloads: a route keeps its name.
pub struct Stats {
    start: Instant,
    routes: Mutex<HashMap<String, Arc<Mutex<RouteStats>>>>,
}

/// One route's statistics, looked up once when the route is built so that counting a
/// request takes no map lookup.
#[derive(Clone)]
pub struct RouteHandle {
    start: Instant,
    stats: Arc<Mutex<RouteStats>>,
}

impl RouteHandle {
    /// Counts one answered request, which ended at `ended`.
    pub fn record(&self, status: u16, took: Duration, ended: Instant) {
        let second = ended.saturating_duration_since(self.start).as_secs();
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(status, took, second);
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            start: Instant::now(),
            routes: Mutex::new(HashMap::new()),
        }
    }
}

impl Stats {
    fn second(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// The statistics of `route`, created empty on first use.
    pub fn route(&self, route: &str) -> RouteHandle {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let stats = routes.entry(route.to_owned()).or_default().clone();
        RouteHandle {
            start: self.start,
            stats,
        }
    }

    /// Counts one answered request on `route`.
    pub fn record(&self, route: &str, status: u16, took: Duration) {
        self.route(route).record(status, took, Instant::now());
    }

    /// How many of `route`'s requests fell in each of [`LATENCY_BOUNDS_MS`]'s buckets.
    pub fn buckets(&self, route: &str) -> Vec<u64> {
        let stats = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
            .cloned();
        stats.map_or_else(
            || vec![0; LATENCY_BOUNDS_MS.len()],
            |s| s.lock().unwrap_or_else(|p| p.into_inner()).latency.to_vec(),
        )
    }

    /// The `/status` summary of `route`.
    pub fn summary(&self, route: &str) -> serde_json::Value {
        let second = self.second();
        let stats = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
            .cloned();
        let Some(stats) = stats else {
            return serde_json::json!({
                "requests": 0,
                "requests_per_second_1m": 0.0,
                "latency_ms": { "p50": null, "p90": null, "p99": null },
                "status_codes": {},
            });
        };
        let r = stats.lock().unwrap_or_else(|p| p.into_inner());
        let bound = |q| {
            r.quantile(q).map(|b| {
                if b.is_finite() {
                    serde_json::json!(b)
                } else {
                    serde_json::json!("+Inf")
                }
            })
        };
        serde_json::json!({
            "requests": r.total,
            "requests_per_second_1m": r.rate(second),
            "latency_ms": { "p50": bound(0.5), "p90": bound(0.9), "p99": bound(0.99) },
            "status_codes": r.codes.iter().map(|(c, n)| (c.to_string(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_codes_and_bucketed_percentiles() {
        let mut r = RouteStats::default();
        for i in 0..100u64 {
            let took = if i < 90 {
                Duration::from_millis(3)
            } else {
                Duration::from_millis(200)
            };
            r.record(if i % 10 == 0 { 503 } else { 200 }, took, 0);
        }
        assert_eq!(r.total, 100);
        assert_eq!(r.codes[&200], 90);
        assert_eq!(r.codes[&503], 10);
        assert_eq!(r.quantile(0.5), Some(5.0));
        assert_eq!(r.quantile(0.9), Some(5.0));
        assert_eq!(r.quantile(0.99), Some(250.0));
    }

    #[test]
    fn rate_covers_the_last_minute_only() {
        let mut r = RouteStats::default();
        for s in 0..120u64 {
            r.record(200, Duration::from_millis(1), s);
            r.record(200, Duration::from_millis(1), s);
        }
        assert_eq!(r.rate(119), 2.0);
        // A minute later with no traffic, nothing is left in the window.
        assert_eq!(r.rate(200), 0.0);
    }

    #[test]
    fn an_unknown_route_has_an_empty_summary() {
        let s = Stats::default();
        assert_eq!(s.summary("none")["requests"], 0);
        assert_eq!(s.buckets("none"), vec![0; LATENCY_BOUNDS_MS.len()]);
        s.record("a", 200, Duration::from_millis(1));
        s.record("a", 200, Duration::from_millis(7));
        assert_eq!(s.summary("a")["status_codes"]["200"], 2);
        assert_eq!(&s.buckets("a")[..5], &[0, 1, 0, 0, 1]);
    }
}
