//! Host side of `weir:filter/metrics`, and the host's own per-filter series.
//!
//! Guest series are created on first use as `weir_filter_<name>`, with the guest's label
//! names plus `route` and `filter`. A series keeps the label names of its first use: a
//! later call with other label names, or a name that is not a valid metric name, is
//! dropped and logged once.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{CounterVec, GaugeVec, Histogram, HistogramOpts, HistogramVec, Opts, Registry};

use super::bindings::weir::filter::metrics::Host;
use super::{CallError, GuestHost};

/// Most distinct guest series names across all filters; more are dropped.
const MAX_GUEST_SERIES: usize = 1000;

enum GuestSeries {
    Counter(CounterVec, Vec<String>),
    Gauge(GaugeVec, Vec<String>),
    Histogram(HistogramVec, Vec<String>),
}

/// The per-filter metrics: call durations and failures, and the guests' own series.
pub struct FilterMetrics {
    registry: Registry,
    call_seconds: HistogramVec,
    failures: CounterVec,
    state_errors: CounterVec,
    guest: Mutex<HashMap<String, Option<GuestSeries>>>,
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
        registry.register(Box::new(call_seconds.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(state_errors.clone()))?;
        Ok(FilterMetrics {
            registry: registry.clone(),
            call_seconds,
            failures,
            state_errors,
            guest: Mutex::new(HashMap::new()),
        })
    }

    /// The call-duration histogram of one (route, filter, phase), resolved once per pool
    /// so the hot path does no label lookup.
    pub fn call_timer(&self, route: &str, filter: &str, phase: &str) -> Histogram {
        self.call_seconds.with_label_values(&[route, filter, phase])
    }

    /// Counts a failed call.
    pub fn count_failure(&self, route: &str, filter: &str, phase: &str, err: &CallError) {
        let kind = match err {
            CallError::Trap(_) => "trap",
            CallError::Timeout(_) => "timeout",
            CallError::Memory(_) => "memory",
        };
        self.count_failure_kind(route, filter, phase, kind);
    }

    /// Counts a call that went wrong without a failed guest call: `invalid` (an answer
    /// the host could not apply) or `busy` (no instance became free before the deadline).
    pub fn count_failure_kind(&self, route: &str, filter: &str, phase: &str, kind: &str) {
        self.failures
            .with_label_values(&[route, filter, phase, kind])
            .inc();
    }

    /// Counts a failed state operation.
    pub fn count_state_error(&self, filter: &str, kind: &str) {
        self.state_errors.with_label_values(&[filter, kind]).inc();
    }

    /// Applies `op` to the guest series `name`, creating it on first use. Allocates only
    /// when it creates one: this runs on every guest metrics call.
    fn with_series(
        &self,
        kind: &'static str,
        name: &str,
        labels: &[(String, String)],
        host: &GuestHost,
        op: impl FnOnce(&GuestSeries, &[&str]),
    ) {
        let host_labels = [host.meta.route.as_str(), host.meta.filter.as_str()];
        let names = || {
            labels
                .iter()
                .map(|(k, _)| k.as_str())
                .chain(["route", "filter"])
        };
        // Keyed by the guest's name; the series itself is `weir_filter_<name>`.
        let mut map = self.guest.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(name) {
            if map.len() >= MAX_GUEST_SERIES {
                return;
            }
            let full = format!("weir_filter_{name}");
            let owned: Vec<String> = names().map(str::to_owned).collect();
            let created = self.create(kind, &full, &owned);
            if created.is_none() {
                tracing::warn!(filter = %host.meta.filter, metric = %full, "invalid guest metric; dropped");
            }
            map.insert(name.to_owned(), created);
        }
        let Some(Some(series)) = map.get(name) else {
            return;
        };
        let (series_kind, series_names) = match series {
            GuestSeries::Counter(_, n) => ("counter", n),
            GuestSeries::Gauge(_, n) => ("gauge", n),
            GuestSeries::Histogram(_, n) => ("histogram", n),
        };
        if series_kind != kind || !names().eq(series_names.iter().map(String::as_str)) {
            return;
        }
        let mut values: Vec<&str> = Vec::with_capacity(labels.len() + host_labels.len());
        values.extend(labels.iter().map(|(_, v)| v.as_str()));
        values.extend(host_labels);
        op(series, &values);
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

impl Host for GuestHost {
    fn counter_add(&mut self, name: String, labels: Vec<(String, String)>, value: u64) {
        let metrics = self.metrics.clone();
        metrics.with_series("counter", &name, &labels, self, |s, v| {
            if let GuestSeries::Counter(c, _) = s {
                c.with_label_values(v).inc_by(value as f64);
            }
        });
    }

    fn gauge_set(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        let metrics = self.metrics.clone();
        metrics.with_series("gauge", &name, &labels, self, |s, v| {
            if let GuestSeries::Gauge(g, _) = s {
                g.with_label_values(v).set(value);
            }
        });
    }

    fn histogram_observe(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        let metrics = self.metrics.clone();
        metrics.with_series("histogram", &name, &labels, self, |s, v| {
            if let GuestSeries::Histogram(h, _) = s {
                h.with_label_values(v).observe(value);
            }
        });
    }
}
