//! Logs and metrics: the tracing subscriber, and the Prometheus registry every series
//! lives in.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::time::Instant;

use http::{Method, StatusCode};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use crate::bindings::UpstreamError;
use crate::config::LogFormat;
use crate::stats::{RouteHandle, Stats};

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
    client_errors: IntCounterVec,
    fanout_targets: IntCounterVec,
    /// Client connections open on the proxy listener.
    pub connections: prometheus::IntGauge,
    /// Client connections refused at `listen.max_connections`.
    pub connections_refused: prometheus::IntCounter,
    /// Client connections closed for being too slow, by the timeout they ran past.
    pub connections_cut: crate::slow_clients::Cuts,
    /// The tasks alive on every runtime, read when `/metrics` is scraped.
    alive_tasks: prometheus::IntGauge,
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
    /// Where each upstream's requests in flight are counted, read at the scrape: an
    /// upstream a reload replaced counts until its last request ends.
    in_flight_of: Mutex<Vec<(String, Weak<dyn InFlight>)>>,
}

/// What counts an upstream's requests in flight, for `weir_upstream_in_flight`.
pub trait InFlight: Send + Sync {
    /// The requests in flight now.
    fn in_flight(&self) -> usize;
}

impl UpstreamMetrics {
    /// Creates the series and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<UpstreamMetrics> {
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
            in_flight_of: Mutex::new(Vec::new()),
        })
    }

    /// Records a call that got no response.
    pub fn failed(&self, upstream: &str, kind: UpstreamError) {
        self.errors
            .with_label_values(&[upstream, upstream_error_kind(kind)])
            .inc();
    }

    /// Shows what `count` counts as `upstream`'s requests in flight, from the next scrape
    /// on, for as long as it lives. The series exists, at 0, from now.
    pub fn watch_in_flight(&self, upstream: &str, count: Weak<dyn InFlight>) {
        self.in_flight.with_label_values(&[upstream]);
        // Reloads add counts: the ones of upstreams that are gone go now, scraped or not,
        // and not before their gauges are set without them.
        self.read_in_flight();
        crate::lock(&self.in_flight_of).push((upstream.to_owned(), count));
    }

    /// Sets each upstream's in-flight gauge from its counts, and forgets the counts of
    /// upstreams that are gone.
    fn read_in_flight(&self) {
        let mut counts = crate::lock(&self.in_flight_of);
        let mut sums: std::collections::BTreeMap<&str, usize> = Default::default();
        for (name, count) in counts.iter() {
            *sums.entry(name).or_default() += count.upgrade().map_or(0, |c| c.in_flight());
        }
        for (name, n) in sums {
            self.in_flight
                .with_label_values(&[name])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        counts.retain(|(_, count)| count.strong_count() > 0);
    }

    /// Records a call to `upstream` that got a response head after `took`. `cached`
    /// keeps the series after its first use, so later calls do no label lookup (and an
    /// upstream that never answered has no series).
    pub fn answered(&self, upstream: &str, cached: &OnceLock<Histogram>, took: Duration) {
        cached
            .get_or_init(|| self.duration.with_label_values(&[upstream]))
            .observe(took.as_secs_f64());
    }
}

/// The name of an upstream error's kind, as metrics and spans show it.
pub fn upstream_error_kind(kind: UpstreamError) -> &'static str {
    match kind {
        UpstreamError::ConnectFailed => "connect_failed",
        UpstreamError::ConnectTimeout => "connect_timeout",
        UpstreamError::Timeout => "timeout",
        UpstreamError::Reset => "reset",
        UpstreamError::Tls => "tls",
        UpstreamError::Protocol => "protocol",
        UpstreamError::Overloaded => "overloaded",
    }
}

/// The `status` label values, by [`status_class`].
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index of `status`'s class in [`STATUS_CLASSES`].
fn status_class(status: StatusCode) -> usize {
    match status.as_u16() / 100 {
        1 => 0,
        2 => 1,
        3 => 2,
        4 => 3,
        _ => 4,
    }
}

/// The standard methods (RFC 9110 §9 and PATCH), which keep their names as the
/// `method` label.
pub(crate) const METHODS: [Method; 9] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
    Method::PATCH,
    Method::TRACE,
    Method::CONNECT,
];

/// The `method` label values: the standard methods, then `other` for every extension
/// method. A client may invent any number of methods, so their names never become
/// label values: each would be a series of its own, and memory without bound.
const METHOD_LABELS: [&str; METHODS.len() + 1] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT", "other",
];

/// The index of `method`'s label in [`METHOD_LABELS`].
fn method_index(method: &Method) -> usize {
    METHODS
        .iter()
        .position(|m| m == method)
        .unwrap_or(METHODS.len())
}

/// The `method` label of `method`: its name if it is a standard method, else `other`.
fn method_label(method: &Method) -> &'static str {
    METHOD_LABELS[method_index(method)]
}

/// One route's series and `/status` statistics. Each series is resolved on its first
/// use (for the request counters, of each method and status class) and kept, so a
/// series appears in `/metrics` only once something counted in it, as with a label
/// lookup per request, and later requests do no lookup.
pub struct RouteMetrics {
    by_method: IntCounterVec,
    latency_vec: HistogramVec,
    retries_vec: IntCounterVec,
    client_errors_vec: IntCounterVec,
    fanout_vec: IntCounterVec,
    route: String,
    latency: OnceLock<Histogram>,
    retries: OnceLock<IntCounter>,
    requests: [[OnceLock<IntCounter>; STATUS_CLASSES.len()]; METHOD_LABELS.len()],
    stats: RouteHandle,
}

impl RouteMetrics {
    /// Counts one fan-out target's call: `outcome` is `ok`, `failed` or `timeout`.
    pub fn fanout_target(&self, target: &str, outcome: &str) {
        self.fanout_vec
            .with_label_values(&[&self.route, target, outcome])
            .inc();
    }

    /// Counts one answered request.
    pub fn record(&self, method: &Method, status: StatusCode, took: Duration, ended: Instant) {
        let class = status_class(status);
        let i = method_index(method);
        self.requests[i][class]
            .get_or_init(|| {
                self.by_method.with_label_values(&[
                    &self.route,
                    METHOD_LABELS[i],
                    STATUS_CLASSES[class],
                ])
            })
            .inc();
        self.latency
            .get_or_init(|| self.latency_vec.with_label_values(&[&self.route]))
            .observe(took.as_secs_f64());
        self.stats.record(status.as_u16(), took, ended);
    }

    /// Counts one request that failed by the client's fault; `code` is the error's code
    /// (one of a handful weir defines, so the series stay few). Rare, so it is looked up.
    pub fn record_client_error(&self, code: &'static str) {
        self.client_errors_vec
            .with_label_values(&[&self.route, code])
            .inc();
    }

    /// Counts one retry.
    pub fn record_retry(&self) {
        self.retries
            .get_or_init(|| self.retries_vec.with_label_values(&[&self.route]))
            .inc();
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
                "Requests answered, by route, method (extension methods as `other`) and status class",
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
        let client_errors = IntCounterVec::new(
            Opts::new(
                "weir_client_errors_total",
                "Requests that failed by the client's fault, by route and kind (body_too_large, bad_request, bad_request_body, client_timeout, client_closed)",
            ),
            &["route", "kind"],
        )?;
        let fanout_targets = IntCounterVec::new(
            Opts::new(
                "weir_fanout_targets_total",
                "Fan-out calls by route, target upstream and outcome (ok: an answer below 500; failed; timeout: not done by the route's deadline)",
            ),
            &["route", "target", "outcome"],
        )?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(client_errors.clone()))?;
        registry.register(Box::new(fanout_targets.clone()))?;
        let connections = prometheus::IntGauge::new(
            "weir_client_connections",
            "Client connections open on the proxy listener",
        )?;
        let connections_refused = prometheus::IntCounter::new(
            "weir_client_connections_refused_total",
            "Client connections refused because listen.max_connections were open",
        )?;
        let cut = IntCounterVec::new(
            prometheus::Opts::new(
                "weir_client_connections_cut_total",
                "Client connections closed by weir for running past listen.header_read_timeout (waiting for a request head) or listen.send_timeout (taking none of a response)",
            ),
            &["reason"],
        )?;
        let connections_cut = crate::slow_clients::Cuts {
            head: cut.with_label_values(&["header_read_timeout"]),
            send: cut.with_label_values(&["send_timeout"]),
        };
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(cut))?;
        let alive_tasks = prometheus::IntGauge::new(
            "weir_runtime_alive_tasks",
            "Tokio tasks alive in weir's runtimes (the main one and every worker's) when /metrics was read",
        )?;
        registry.register(Box::new(alive_tasks.clone()))?;
        let upstreams = Arc::new(UpstreamMetrics::new(&registry)?);
        Ok(Arc::new(Telemetry {
            registry,
            requests,
            latency,
            retries,
            client_errors,
            fanout_targets,
            connections,
            connections_refused,
            connections_cut,
            alive_tasks,
            upstreams,
            stats: Stats::default(),
        }))
    }

    /// Counts one answered request. `route` is empty when no route matched.
    pub fn record_request(&self, route: &str, method: &Method, status: StatusCode, took: Duration) {
        let class = STATUS_CLASSES[status_class(status)];
        self.requests
            .with_label_values(&[route, method_label(method), class])
            .inc();
        self.latency
            .with_label_values(&[route])
            .observe(took.as_secs_f64());
        self.stats.record(route, status.as_u16(), took);
    }

    /// The series of `route`, looked up once so that [`RouteMetrics::record`] does no
    /// label lookup on the request path.
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            by_method: self.requests.clone(),
            latency_vec: self.latency.clone(),
            retries_vec: self.retries.clone(),
            client_errors_vec: self.client_errors.clone(),
            fanout_vec: self.fanout_targets.clone(),
            route: route.to_owned(),
            latency: OnceLock::new(),
            retries: OnceLock::new(),
            requests: Default::default(),
            stats: self.stats.route(route),
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        // Read here, at the scrape, rather than kept up to date: no cost per request or
        // task. A leak of tasks (a connection or job task that never ends) shows as a
        // count that grows under steady load.
        // The main runtime's tasks (admin, jobs, reloads) and every worker's.
        let main =
            tokio::runtime::Handle::try_current().map_or(0, |r| r.metrics().num_alive_tasks());
        let alive = main + crate::workers::alive_tasks();
        self.alive_tasks
            .set(i64::try_from(alive).unwrap_or(i64::MAX));
        self.upstreams.read_in_flight();
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The number of `weir_requests_total` series.
    fn request_series(t: &Telemetry) -> usize {
        t.registry
            .gather()
            .iter()
            .find(|f| f.name() == "weir_requests_total")
            .map_or(0, |f| f.get_metric().len())
    }

    #[test]
    fn invented_methods_share_one_other_series() {
        let t = Telemetry::new().unwrap();
        let route = t.route("r");
        for i in 0..1000 {
            let m = Method::from_bytes(format!("M{i:07}").as_bytes()).unwrap();
            t.record_request("", &m, StatusCode::NOT_FOUND, Duration::ZERO);
            route.record(&m, StatusCode::OK, Duration::ZERO, Instant::now());
        }
        route.record(&Method::GET, StatusCode::OK, Duration::ZERO, Instant::now());
        route.record(
            &Method::PATCH,
            StatusCode::OK,
            Duration::ZERO,
            Instant::now(),
        );
        assert_eq!(request_series(&t), 4);
        let text = t.render();
        assert!(
            text.contains(r#"weir_requests_total{method="other",route="",status="4xx"} 1000"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_requests_total{method="other",route="r",status="2xx"} 1000"#)
        );
        assert!(text.contains(r#"weir_requests_total{method="PATCH",route="r",status="2xx"} 1"#));
        assert!(!text.contains("M0000"), "{text}");
    }

    /// `weir_runtime_alive_tasks` as the text shows it.
    fn alive_tasks(t: &Telemetry) -> i64 {
        t.render()
            .lines()
            .find_map(|l| l.strip_prefix("weir_runtime_alive_tasks "))
            .and_then(|n| n.parse().ok())
            .expect("weir_runtime_alive_tasks in the metrics")
    }

    #[tokio::test]
    async fn the_alive_task_gauge_counts_the_runtimes_tasks_at_each_scrape() {
        let t = Telemetry::new().unwrap();
        let before = alive_tasks(&t);
        let (release, wait) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let mut wait = wait.clone();
                tokio::spawn(async move { wait.wait_for(|go| *go).await.map(drop) })
            })
            .collect();
        assert_eq!(alive_tasks(&t), before + 5);
        release.send_replace(true);
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(alive_tasks(&t), before);
    }
}
