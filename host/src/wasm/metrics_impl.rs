//! Host side of `weir:filter/metrics`, and the host's own per-filter series.
//!
//! Guest series are created on first use as `weir_filter_<name>`, with the guest's label
//! names plus `route` and `filter`. A series keeps the label names of its first use: a
//! later call with other label names, or a name that is not a valid metric name, is
//! dropped and logged once.
//!
//! # Bounds
//!
//! A filter may label its series with values it read from a request, so the host bounds
//! what guests can make it keep, whatever their label values:
//!
//! - at most [`MAX_GUEST_METRICS`] metric names across all filters;
//! - at most [`MAX_SERIES_PER_METRIC`] label sets (series) per metric name per filter,
//!   the `route` label included;
//! - label values of at most [`MAX_LABEL_VALUE_BYTES`] bytes.
//!
//! A call past a bound is dropped, counted in
//! `weir_filter_metric_series_dropped_total{filter,metric}` (`metric` is the full series
//! name, or `*` for a name past the name limit), and logged at warn level once per
//! metric name and filter (once in all for the name limit).
//!
//! # Per instance
//!
//! Each instance keeps the series it has written ([`SeriesCache`], up to
//! [`MAX_CACHED_SERIES`] by name and label values), so a filter that sets the same gauge
//! on every request pays a comparison of its name and labels, not the shared map's lock,
//! the bounds' hashes and prometheus' own lookup. Only a write the bounds admitted is
//! kept, and guest series are never removed, so a kept series stays registered.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::{
    Counter, CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec,
    Opts, Registry,
};

use super::bindings::weir::filter::metrics::Host;
use super::{CallError, GuestHost};

/// Most distinct guest metric names across all filters; more are dropped.
pub const MAX_GUEST_METRICS: usize = 1000;

/// Most label sets one filter may create under one metric name; more are dropped.
pub const MAX_SERIES_PER_METRIC: usize = 1000;

/// The longest label value a guest series may have, in bytes; a longer one drops the call.
pub const MAX_LABEL_VALUE_BYTES: usize = 256;

/// Most series one instance keeps at hand; past that it starts over.
pub const MAX_CACHED_SERIES: usize = 64;

/// One series, labels applied.
enum Handle {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

impl Handle {
    fn of(series: &GuestSeries, values: &[&str]) -> Handle {
        match series {
            GuestSeries::Counter(v, _) => Handle::Counter(v.with_label_values(values)),
            GuestSeries::Gauge(v, _) => Handle::Gauge(v.with_label_values(values)),
            GuestSeries::Histogram(v, _) => Handle::Histogram(v.with_label_values(values)),
        }
    }
}

/// The series one instance has written, by metric name and labels (see the module docs).
/// A list searched in order: an instance writes a few series, and comparing a few strings
/// costs less than hashing the name and every label.
#[derive(Default)]
pub struct SeriesCache(Vec<(SeriesKey, Handle)>);

type SeriesKey = (String, Vec<(String, String)>);

enum GuestSeries {
    Counter(CounterVec, Vec<String>),
    Gauge(GaugeVec, Vec<String>),
    Histogram(HistogramVec, Vec<String>),
}

/// One guest metric name: its series, and the label sets each filter made under it.
struct GuestMetric {
    series: GuestSeries,
    /// By filter name (from the config, so bounded).
    by_filter: HashMap<String, LabelSets>,
}

/// The label sets one filter made under one metric name.
#[derive(Default)]
struct LabelSets {
    /// 128-bit keyed hashes of the label values (see [`FilterMetrics::label_key`]).
    seen: HashSet<u128>,
    /// The drop warning was logged.
    warned: bool,
}

/// The per-filter metrics: call durations and failures, and the guests' own series.
pub struct FilterMetrics {
    registry: Registry,
    call_seconds: HistogramVec,
    failures: CounterVec,
    state_errors: CounterVec,
    state_ops: IntCounterVec,
    dropped: IntCounterVec,
    guest: Mutex<HashMap<String, Option<GuestMetric>>>,
    /// Two independently keyed hashers for label-set keys: a client that picks label
    /// values cannot aim for a collision it cannot compute.
    hashers: [RandomState; 2],
    /// The warning about the name limit was logged.
    names_full_warned: AtomicBool,
}

impl FilterMetrics {
    /// Registers the host's filter series in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<FilterMetrics> {
        let call_seconds = HistogramVec::new(
            HistogramOpts::new(
                "weir_filter_call_duration_seconds",
                "Time spent in one call into a filter, by route, filter and phase",
            )
            .buckets(vec![
                1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 5e-4, 1e-3, 1e-2, 1e-1, 1.0,
            ]),
            &["route", "filter", "phase"],
        )?;
        let failures = CounterVec::new(
            Opts::new(
                "weir_filter_failures_total",
                "Filter calls that trapped, timed out, ran out of memory (trap, timeout, memory), answered something invalid (invalid) or found no free instance in time (busy)",
            ),
            &["route", "filter", "phase", "kind"],
        )?;
        let state_errors = CounterVec::new(
            Opts::new(
                "weir_state_errors_total",
                "State operations that failed, by filter and kind (unavailable, too_large, not_an_integer)",
            ),
            &["filter", "kind"],
        )?;
        let state_ops = IntCounterVec::new(
            Opts::new(
                "weir_state_operations_total",
                "State operations filters made, by filter and operation; with the redis backend each is one round trip",
            ),
            &["filter", "op"],
        )?;
        registry.register(Box::new(call_seconds.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(state_ops.clone()))?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "weir_filter_metric_series_dropped_total",
                "Filter metric calls dropped because they would pass a bound: series per metric name per filter, label value length, or metric names (metric=\"*\")",
            ),
            &["filter", "metric"],
        )?;
        registry.register(Box::new(state_errors.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        Ok(FilterMetrics {
            registry: registry.clone(),
            call_seconds,
            failures,
            state_errors,
            state_ops,
            dropped,
            guest: Mutex::new(HashMap::new()),
            hashers: [RandomState::new(), RandomState::new()],
            names_full_warned: AtomicBool::new(false),
        })
    }

    /// The call-duration histogram of one (route, filter, phase), resolved once per pool
    /// so the hot path does no label lookup.
    pub fn call_timer(&self, route: &str, filter: &str, phase: &str) -> Histogram {
        self.call_seconds.with_label_values(&[route, filter, phase])
    }

    /// Counts a failed call.
    pub fn count_failure(&self, route: &str, filter: &str, phase: &str, err: &CallError) {
        self.count_failure_kind(route, filter, phase, err.kind());
    }

    /// Counts a call that went wrong without a failed guest call: `invalid` (an answer
    /// the host could not apply) or `busy` (no instance became free before the deadline).
    pub fn count_failure_kind(&self, route: &str, filter: &str, phase: &str, kind: &str) {
        self.failures
            .with_label_values(&[route, filter, phase, kind])
            .inc();
    }

    /// Counts a state operation (`get`, `bucket_take`, …) of `filter`.
    pub fn count_state_op(&self, filter: &str, op: &str) {
        self.state_ops.with_label_values(&[filter, op]).inc();
    }

    /// Counts a failed state operation.
    pub fn count_state_error(&self, filter: &str, kind: &str) {
        self.state_errors.with_label_values(&[filter, kind]).inc();
    }

    /// Applies `op` to the guest series `name` of `filter` on `route`, creating it on
    /// first use, unless that passes a bound (see the module docs). Allocates only when
    /// it creates something: this runs on every guest metrics call.
    fn with_series(
        &self,
        kind: &'static str,
        name: &str,
        labels: &[(String, String)],
        (route, filter): (&str, &str),
        op: impl FnOnce(&GuestSeries, &[&str]),
    ) {
        let names = || {
            labels
                .iter()
                .map(|(k, _)| k.as_str())
                .chain(["route", "filter"])
        };
        // Keyed by the guest's name; the series itself is `weir_filter_<name>`.
        let mut map = self.guest.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(name) {
            if map.len() >= MAX_GUEST_METRICS {
                drop(map);
                self.dropped.with_label_values(&[filter, "*"]).inc();
                if !self.names_full_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%filter, metric = %format!("weir_filter_{name}"), limit = MAX_GUEST_METRICS, "too many filter metric names; this and later new names are dropped");
                }
                return;
            }
            let full = format!("weir_filter_{name}");
            let owned: Vec<String> = names().map(str::to_owned).collect();
            let created = self.create(kind, &full, &owned);
            if created.is_none() {
                tracing::warn!(%filter, metric = %full, "invalid guest metric; dropped");
            }
            map.insert(
                name.to_owned(),
                created.map(|series| GuestMetric {
                    series,
                    by_filter: HashMap::new(),
                }),
            );
        }
        let Some(Some(metric)) = map.get_mut(name) else {
            return;
        };
        let (series_kind, series_names) = match &metric.series {
            GuestSeries::Counter(_, n) => ("counter", n),
            GuestSeries::Gauge(_, n) => ("gauge", n),
            GuestSeries::Histogram(_, n) => ("histogram", n),
        };
        if series_kind != kind || !names().eq(series_names.iter().map(String::as_str)) {
            return;
        }
        let mut values: Vec<&str> = Vec::with_capacity(labels.len() + 2);
        values.extend(labels.iter().map(|(_, v)| v.as_str()));
        values.extend([route, filter]);
        if !metric.by_filter.contains_key(filter) {
            metric
                .by_filter
                .insert(filter.to_owned(), LabelSets::default());
        }
        let sets = metric
            .by_filter
            .get_mut(filter)
            .expect("inserted above when missing");
        let key = self.label_key(&values);
        if !sets.seen.contains(&key) {
            let too_long = values.iter().any(|v| v.len() > MAX_LABEL_VALUE_BYTES);
            if too_long || sets.seen.len() >= MAX_SERIES_PER_METRIC {
                let warn = !std::mem::replace(&mut sets.warned, true);
                drop(map);
                let full = format!("weir_filter_{name}");
                self.dropped.with_label_values(&[filter, &full]).inc();
                if warn {
                    tracing::warn!(
                        %filter,
                        metric = %full,
                        max_series = MAX_SERIES_PER_METRIC,
                        max_label_value_bytes = MAX_LABEL_VALUE_BYTES,
                        "filter metric past its bounds; this and later such calls are dropped (counted in weir_filter_metric_series_dropped_total)"
                    );
                }
                return;
            }
            sets.seen.insert(key);
        }
        op(&metric.series, &values);
    }

    /// A key for one label set: 128 bits from two independently keyed hashes, so
    /// keeping the key costs 16 bytes and a lookup allocates nothing.
    fn label_key(&self, values: &[&str]) -> u128 {
        let [a, b] = &self.hashers;
        (u128::from(a.hash_one(values)) << 64) | u128::from(b.hash_one(values))
    }

    fn create(&self, kind: &str, name: &str, labels: &[String]) -> Option<GuestSeries> {
        let help = "Reported by a filter through weir:filter/metrics";
        let label_refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        let series = match kind {
            "counter" => CounterVec::new(Opts::new(name, help), &label_refs)
                .map(|v| GuestSeries::Counter(v, labels.to_vec())),
            "gauge" => GaugeVec::new(Opts::new(name, help), &label_refs)
                .map(|v| GuestSeries::Gauge(v, labels.to_vec())),
            _ => HistogramVec::new(HistogramOpts::new(name, help), &label_refs)
                .map(|v| GuestSeries::Histogram(v, labels.to_vec())),
        }
        .ok()?;
        let collector: Box<dyn prometheus::core::Collector> = match &series {
            GuestSeries::Counter(v, _) => Box::new(v.clone()),
            GuestSeries::Gauge(v, _) => Box::new(v.clone()),
            GuestSeries::Histogram(v, _) => Box::new(v.clone()),
        };
        self.registry.register(collector).ok()?;
        Some(series)
    }
}

impl SeriesCache {
    /// The series `name` with `labels` of `filter` on `route`: kept, or else made
    /// through [`FilterMetrics::with_series`] and kept when the bounds admit it; `None`
    /// if they dropped it.
    fn get(
        &mut self,
        metrics: &FilterMetrics,
        kind: &'static str,
        name: String,
        labels: Vec<(String, String)>,
        (route, filter): (&str, &str),
    ) -> Option<&Handle> {
        let at = self
            .0
            .iter()
            .position(|((n, l), _)| *n == name && *l == labels);
        let at = match at {
            Some(at) => at,
            None => {
                if self.0.len() >= MAX_CACHED_SERIES {
                    self.0.clear();
                }
                let mut made = None;
                metrics.with_series(kind, &name, &labels, (route, filter), |s, v| {
                    made = Some(Handle::of(s, v));
                });
                self.0.push(((name, labels), made?));
                self.0.len() - 1
            }
        };
        Some(&self.0[at].1)
    }
}

impl GuestHost {
    fn series(
        &mut self,
        kind: &'static str,
        name: String,
        labels: Vec<(String, String)>,
    ) -> Option<&Handle> {
        let at = (self.meta.route.as_str(), self.meta.filter.as_str());
        self.series.get(&self.metrics, kind, name, labels, at)
    }
}

impl Host for GuestHost {
    fn counter_add(&mut self, name: String, labels: Vec<(String, String)>, value: u64) {
        if let Some(Handle::Counter(c)) = self.series("counter", name, labels) {
            c.inc_by(value as f64);
        }
    }

    fn gauge_set(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        if let Some(Handle::Gauge(g)) = self.series("gauge", name, labels) {
            g.set(value);
        }
    }

    fn histogram_observe(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        if let Some(Handle::Histogram(h)) = self.series("histogram", name, labels) {
            h.observe(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> (Registry, FilterMetrics) {
        let registry = Registry::new();
        let m = FilterMetrics::new(&registry).unwrap();
        (registry, m)
    }

    fn set_gauge(m: &FilterMetrics, filter: &str, name: &str, key: &str) {
        let labels = [("key".to_owned(), key.to_owned())];
        m.with_series("gauge", name, &labels, ("r", filter), |s, v| {
            if let GuestSeries::Gauge(g, _) = s {
                g.with_label_values(v).set(1.0);
            }
        });
    }

    /// The number of series of `name`.
    fn count(registry: &Registry, name: &str) -> usize {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == name)
            .map_or(0, |f| f.get_metric().len())
    }

    /// The dropped counter of (`filter`, `metric`).
    fn dropped(m: &FilterMetrics, filter: &str, metric: &str) -> u64 {
        m.dropped.with_label_values(&[filter, metric]).get()
    }

    #[test]
    fn an_instance_keeps_the_series_it_wrote_and_only_those() {
        let (registry, m) = metrics();
        let mut cache = SeriesCache::default();
        let labels = |k: &str| vec![("key".to_owned(), k.to_owned())];
        let gauge = |cache: &mut SeriesCache, k: &str, value: f64| match cache.get(
            &m,
            "gauge",
            "g".into(),
            labels(k),
            ("r", "f"),
        ) {
            Some(Handle::Gauge(g)) => g.set(value),
            _ => panic!("the gauge g{{key={k}}} was dropped"),
        };
        gauge(&mut cache, "a", 1.0);
        gauge(&mut cache, "a", 2.0);
        assert_eq!(cache.0.len(), 1);
        // The kept handle is the registered series: the second value is the one scraped.
        let scraped = registry.gather();
        let family = scraped
            .iter()
            .find(|f| f.name() == "weir_filter_g")
            .unwrap();
        assert_eq!(family.get_metric()[0].get_gauge().get_value(), 2.0);
        // Another kind under the same name is dropped, as without the cache.
        let counter = cache.get(&m, "counter", "g".into(), labels("a"), ("r", "f"));
        assert!(!matches!(counter, Some(Handle::Counter(_))));
        // A label value past the bound is dropped and counted every time, never kept.
        let long = "x".repeat(MAX_LABEL_VALUE_BYTES + 1);
        for _ in 0..2 {
            assert!(
                cache
                    .get(&m, "gauge", "g".into(), labels(&long), ("r", "f"))
                    .is_none()
            );
        }
        assert_eq!(dropped(&m, "f", "weir_filter_g"), 2);
        assert_eq!(cache.0.len(), 1);
        // Past MAX_CACHED_SERIES it starts over, and every write still lands.
        for k in 0..=MAX_CACHED_SERIES {
            gauge(&mut cache, &k.to_string(), k as f64);
        }
        assert!(cache.0.len() <= MAX_CACHED_SERIES);
        assert_eq!(count(&registry, "weir_filter_g"), MAX_CACHED_SERIES + 2);
    }

    #[test]
    fn series_per_metric_and_filter_are_capped_and_the_excess_counted() {
        let (registry, m) = metrics();
        for i in 0..MAX_SERIES_PER_METRIC + 500 {
            set_gauge(&m, "limiter", "tokens", &format!("client-{i}"));
        }
        assert_eq!(
            count(&registry, "weir_filter_tokens"),
            MAX_SERIES_PER_METRIC
        );
        assert_eq!(dropped(&m, "limiter", "weir_filter_tokens"), 500);
        // A label set made before the cap was reached still updates.
        set_gauge(&m, "limiter", "tokens", "client-0");
        assert_eq!(dropped(&m, "limiter", "weir_filter_tokens"), 500);
        // Another filter has a cap of its own under the same name.
        set_gauge(&m, "other", "tokens", "client-0");
        assert_eq!(
            count(&registry, "weir_filter_tokens"),
            MAX_SERIES_PER_METRIC + 1
        );
        assert_eq!(dropped(&m, "other", "weir_filter_tokens"), 0);
    }

    #[test]
    fn long_label_values_and_names_past_the_limit_are_dropped() {
        let (registry, m) = metrics();
        set_gauge(&m, "f", "g", &"x".repeat(MAX_LABEL_VALUE_BYTES + 1));
        assert_eq!(count(&registry, "weir_filter_g"), 0);
        assert_eq!(dropped(&m, "f", "weir_filter_g"), 1);
        set_gauge(&m, "f", "g", &"x".repeat(MAX_LABEL_VALUE_BYTES));
        assert_eq!(count(&registry, "weir_filter_g"), 1);

        for i in 1..MAX_GUEST_METRICS + 10 {
            set_gauge(&m, "f", &format!("g{i}"), "k");
        }
        assert_eq!(dropped(&m, "f", "*"), 10);
    }
}
