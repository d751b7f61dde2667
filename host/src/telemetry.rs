//! Logs and metrics: the tracing subscriber, and the Prometheus registry every series
//! lives in.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::stats::Stats;
use crate::wasm::{FilterMetrics, UpstreamError};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber, writing to stderr. `RUST_LOG` wins over `level` (a
/// filter directive such as `"info"` or `"warn,weir=debug"`); without either, `info`.
pub fn init_logging(format: LogFormat, level: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::try_new(level.unwrap_or("info"))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The process's metrics.
pub struct Telemetry {
    /// Every series, for `/metrics`.
    pub registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    retries: IntCounterVec,
    /// The filters' series.
    pub filters: Arc<FilterMetrics>,
    /// The upstream client's series.
    pub upstreams: Arc<UpstreamMetrics>,
    /// Per-route summaries for `/status`.
    pub stats: Stats,
}

/// Series about upstream calls, by upstream name.
pub struct UpstreamMetrics {
    duration: HistogramVec,
    errors: IntCounterVec,
    in_flight: IntGaugeVec,
}

impl UpstreamMetrics {
    fn new(registry: &Registry) -> prometheus::Result<UpstreamMetrics> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "weir_upstream_duration_seconds",
                "Time from sending a request upstream to its response head, by upstream",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["upstream"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "weir_upstream_errors_total",
                "Upstream calls without a response, by upstream and kind (connect_failed, connect_timeout, tls, timeout, reset, protocol, overloaded)",
            ),
            &["upstream", "kind"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "weir_upstream_in_flight",
                "Requests in flight to each upstream: with HTTP/1.1 keep-alive, its open connections in use",
            ),
            &["upstream"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        Ok(UpstreamMetrics {
            duration,
            errors,
            in_flight,
        })
    }

    /// Records a call that got a response head after `took`.
    pub fn answered(&self, upstream: &str, took: Duration) {
        self.duration
            .with_label_values(&[upstream])
            .observe(took.as_secs_f64());
    }

    /// Records a call that got no response.
    pub fn failed(&self, upstream: &str, kind: UpstreamError) {
        let kind = match kind {
            UpstreamError::ConnectFailed => "connect_failed",
            UpstreamError::ConnectTimeout => "connect_timeout",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Reset => "reset",
            UpstreamError::Tls => "tls",
            UpstreamError::Protocol => "protocol",
            UpstreamError::Overloaded => "overloaded",
        };
        self.errors.with_label_values(&[upstream, kind]).inc();
    }

    /// The in-flight gauge of `upstream`.
    pub fn in_flight(&self, upstream: &str) -> prometheus::IntGauge {
        self.in_flight.with_label_values(&[upstream])
    }
}

/// Latency buckets in seconds, shared by the request and upstream histograms.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Telemetry {
    /// Creates and registers the series.
    pub fn new() -> prometheus::Result<Arc<Telemetry>> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "weir_requests_total",
                "Requests answered, by route, method and status class",
            ),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "weir_request_duration_seconds",
                "Time from request head to response head, by route",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "weir_retries_total",
                "Requests re-sent because a filter answered retry, by route",
            ),
            &["route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        let filters = Arc::new(FilterMetrics::new(&registry)?);
        let upstreams = Arc::new(UpstreamMetrics::new(&registry)?);
        Ok(Arc::new(Telemetry {
            registry,
            requests,
            latency,
            retries,
            filters,
            upstreams,
            stats: Stats::default(),
        }))
    }

    /// Counts one answered request. `route` is empty when no route matched.
    pub fn record_request(&self, route: &str, method: &Method, status: StatusCode, took: Duration) {
        let class = match status.as_u16() / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        self.requests
            .with_label_values(&[route, method.as_str(), class])
            .inc();
        self.latency
            .with_label_values(&[route])
            .observe(took.as_secs_f64());
        self.stats.record(route, status.as_u16(), took);
    }

    /// Counts one retry on `route`.
    pub fn record_retry(&self, route: &str) {
        self.retries.with_label_values(&[route]).inc();
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}
