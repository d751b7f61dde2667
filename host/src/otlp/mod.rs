//! OpenTelemetry traces over OTLP/HTTP: one span per request, with spans for each filter
//! call, wait, upstream try (its connect and TLS handshake), and each state and outbound
//! call a filter made.
//!
//! 1. `[telemetry.otlp]` turns it on (see [`crate::config::OtlpConfig`]); without it the
//!    proxy holds no [`Otlp`] and a request pays one `Option` check.
//! 2. A sampled request records what `/requests` records (the chain's [`Trace`]), plus
//!    start times, waits and host calls, and each upstream try sends a `traceparent` whose
//!    parent id is that try's span. When it has been answered, the listener hands the
//!    record to [`Otlp::submit`]: a `try_send` into a bounded queue. A full queue drops
//!    the request's spans and counts them in `weir_otlp_spans_dropped_total`.
//! 3. One task takes the records off the queue, builds the spans ([`spans::build`]) and
//!    exports them with `opentelemetry-otlp`'s HTTP/protobuf exporter, through weir's own
//!    upstream pool ([`client`]). It exports whatever queued while the previous export
//!    was in flight, as one batch: no timer, so a quiet proxy exports at once and a busy
//!    one in large batches.
//!
//! The trace id is the client's `traceparent`'s (or a new one), and the request span's
//! parent is the client's span. The request span ends at the response head, as weir's
//! latency metrics do; the body then streams at the client's pace.

mod client;
pub mod spans;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Method;
use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanExporter as _;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::OtlpConfig;
use crate::recent::Trace;

/// The most requests whose spans wait for export; more are dropped.
pub const MAX_QUEUED: usize = 4096;

/// How long shutdown waits for the spans still queued to be exported.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The most requests exported in one batch.
const MAX_BATCH: usize = 512;

/// The ids a request's spans hang from.
#[derive(Debug, Clone, Copy)]
pub struct SpanIds {
    /// The trace id: the client's, or a new one.
    pub trace_id: u128,
    /// The client's span id, from its `traceparent`; `None` for a new trace.
    pub parent: Option<u64>,
    /// weir's span for the request: the parent id of the `traceparent` it sends upstream.
    pub span: u64,
}

/// One answered request, as its spans are built from it.
#[derive(Debug)]
pub struct Finished {
    /// Its ids.
    pub ids: SpanIds,
    /// When its head came.
    pub started: Instant,
    /// When its response head was ready.
    pub ended: Instant,
    /// The wall-clock time at `ended`, which the span times are counted back from.
    pub wall_end: SystemTime,
    /// The method.
    pub method: Method,
    /// The route that took it.
    pub route: Option<String>,
    /// The path as routed, without the query.
    pub path: String,
    /// `http` or `https`: the listener's.
    pub scheme: &'static str,
    /// The `Host` (or `:authority`) it was sent to.
    pub host: Option<String>,
    /// The client's address.
    pub client: SocketAddr,
    /// The client's HTTP version.
    pub version: http::Version,
    /// The status answered.
    pub status: u16,
    /// weir's error code, when weir answered with an error.
    pub error: Option<&'static str>,
    /// The request id (`x-request-id`).
    pub request_id: String,
    /// The route's upstream: its name and origin.
    pub upstream: Option<(String, String)>,
    /// What the chain did.
    pub trace: Trace,
    /// The job it ran, if it is a job's run.
    pub job: Option<String>,
    /// The batch it is a call of.
    pub batch: Option<String>,
    /// The request it replays.
    pub replay_of: Option<String>,
}

enum Queued {
    Request(Box<Finished>),
    /// Export everything queued before this, then answer.
    Flush(oneshot::Sender<()>),
}

/// The exporter's side of the request path: sampling and the queue.
pub struct Otlp {
    queue: mpsc::Sender<Queued>,
    /// A new trace is sampled when its id's low 64 bits are below this.
    ratio_below: u64,
    /// Every new trace is sampled (`sample_ratio = 1`).
    all: bool,
    dropped_full: IntCounter,
}

/// The `weir_otlp_*` series.
struct Series {
    exported: IntCounter,
    dropped_full: IntCounter,
    dropped_failed: IntCounter,
}

impl Series {
    fn new(registry: &Registry) -> prometheus::Result<Series> {
        let exported = IntCounter::new(
            "weir_otlp_spans_exported_total",
            "Spans the OTLP collector accepted",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "weir_otlp_spans_dropped_total",
                "Spans not exported, by reason (queue_full: more requests waited for export than weir keeps; export_failed: the collector did not take them)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(exported.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        Ok(Series {
            exported,
            dropped_full: dropped.with_label_values(&["queue_full"]),
            dropped_failed: dropped.with_label_values(&["export_failed"]),
        })
    }
}

impl Otlp {
    /// Builds the exporter for `config`, registers its series in `registry` and starts
    /// the export task. The error says what could not be set up.
    pub fn start(config: &OtlpConfig, registry: &Registry) -> Result<Arc<Otlp>, String> {
        let series = Series::new(registry).map_err(|e| e.to_string())?;
        let collector = client::Collector::new(config)?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(config.endpoint.to_string())
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(client::EXPORT_TIMEOUT)
            .with_http_client(collector)
            .build()
            .map_err(|e| {
                // The exporter reads OTEL_EXPORTER_OTLP_*COMPRESSION from the environment;
                // weir sends uncompressed protobuf and says where the setting came from.
                let hint = if e.to_string().contains("compression") {
                    " (from OTEL_EXPORTER_OTLP_COMPRESSION or OTEL_EXPORTER_OTLP_TRACES_COMPRESSION in weir's environment: weir exports uncompressed; unset it)"
                } else {
                    ""
                };
                format!("telemetry.otlp: {e}{hint}")
            })?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(config.service_name.clone())
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        );
        let scope = InstrumentationScope::builder("weir")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let (queue, rx) = mpsc::channel(MAX_QUEUED);
        let dropped_full = series.dropped_full.clone();
        tokio::spawn(export(rx, exporter, scope, series));
        // The ratio as a bound on 64 random bits; 1.0 would overflow it.
        let ratio = config.sample_ratio.clamp(0.0, 1.0);
        Ok(Arc::new(Otlp {
            queue,
            ratio_below: (ratio * u64::MAX as f64) as u64,
            all: ratio >= 1.0,
            dropped_full,
        }))
    }

    /// Whether a request of trace `trace_id` is exported: as its parent says when the
    /// client sent a `traceparent` (its sampled flag), else by `sample_ratio`, on the
    /// trace id so that every process that sees the trace decides alike.
    pub fn sampled(&self, trace_id: u128, parent_sampled: Option<bool>) -> bool {
        match parent_sampled {
            Some(sampled) => sampled,
            None => self.all || (trace_id as u64) < self.ratio_below,
        }
    }

    /// Queues a request's spans for export; drops them, counted, when the queue is full.
    pub fn submit(&self, finished: Finished) {
        // Closed only once the export task is gone, which happens only with the runtime.
        if let Err(mpsc::error::TrySendError::Full(Queued::Request(f))) =
            self.queue.try_send(Queued::Request(Box::new(finished)))
        {
            self.dropped_full.inc_by(spans::span_count(&f) as u64);
        }
    }

    /// Exports what is queued, waiting `within` at most (at shutdown).
    pub async fn flush(&self, within: Duration) {
        let (tx, rx) = oneshot::channel();
        let flushed = async {
            if self.queue.send(Queued::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        };
        if tokio::time::timeout(within, flushed).await.is_err() {
            tracing::warn!("spans still queued for export at shutdown were dropped");
        }
    }
}

/// The export task: takes what is queued, builds its spans and exports them, until the
/// queue closes.
async fn export(
    mut rx: mpsc::Receiver<Queued>,
    exporter: opentelemetry_otlp::SpanExporter,
    scope: InstrumentationScope,
    series: Series,
) {
    let mut failing = false;
    let mut batch = Vec::new();
    let mut flushed = Vec::new();
    let mut next_id = || rand::random::<u64>() | 1;
    while let Some(first) = rx.recv().await {
        let mut take = |q: Queued| match q {
            Queued::Request(f) => batch.extend(spans::build(&f, &scope, &mut next_id)),
            Queued::Flush(done) => flushed.push(done),
        };
        take(first);
        let mut more = MAX_BATCH;
        while more > 0
            && let Ok(q) = rx.try_recv()
        {
            take(q);
            more -= 1;
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            match exporter.export(std::mem::take(&mut batch)).await {
                Ok(()) => {
                    series.exported.inc_by(n);
                    if failing {
                        tracing::info!("exporting spans over OTLP works again");
                        failing = false;
                    }
                }
                Err(e) => {
                    series.dropped_failed.inc_by(n);
                    // Once per outage, not once per batch.
                    if !failing {
                        tracing::warn!(error = %e, "exporting spans over OTLP failed; they are dropped (weir_otlp_spans_dropped_total) until it works again");
                        failing = true;
                    }
                }
            }
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn otlp(ratio: f64) -> Otlp {
        let (queue, _rx) = mpsc::channel(1);
        Otlp {
            queue,
            ratio_below: (ratio * u64::MAX as f64) as u64,
            all: ratio >= 1.0,
            dropped_full: IntCounter::new("d", "d").unwrap(),
        }
    }

    #[test]
    fn a_parent_decides_else_the_ratio_on_the_trace_id() {
        let half = otlp(0.5);
        // The client's sampled flag wins, whatever the ratio.
        assert!(half.sampled(u128::MAX, Some(true)));
        assert!(!otlp(1.0).sampled(0, Some(false)));
        // A new trace: by its id's low 64 bits, so every process decides alike.
        assert!(half.sampled(1 << 64 | 5, None));
        assert!(!half.sampled(u128::from(u64::MAX - 5), None));
        assert!(otlp(1.0).sampled(u128::MAX, None));
        assert!(!otlp(0.0).sampled(0, None));
        let quarter = otlp(0.25);
        let kept = (0..1000u64)
            .filter(|i| quarter.sampled(u128::from(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), None))
            .count();
        assert!((200..300).contains(&kept), "{kept}");
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_the_spans() {
        let (queue, mut rx) = mpsc::channel(1);
        let dropped = IntCounter::new("d", "d").unwrap();
        let otlp = Otlp {
            queue,
            ratio_below: u64::MAX,
            all: true,
            dropped_full: dropped.clone(),
        };
        let finished = || Finished {
            ids: SpanIds {
                trace_id: 1,
                parent: None,
                span: 1,
            },
            started: Instant::now(),
            ended: Instant::now(),
            wall_end: SystemTime::now(),
            method: Method::GET,
            route: None,
            path: "/".into(),
            scheme: "http",
            host: None,
            client: "127.0.0.1:1".parse().unwrap(),
            version: http::Version::HTTP_11,
            status: 404,
            error: Some("no_route"),
            request_id: "r".into(),
            upstream: None,
            trace: Trace::default(),
            job: None,
            batch: None,
            replay_of: None,
        };
        otlp.submit(finished());
        assert_eq!(dropped.get(), 0);
        otlp.submit(finished());
        otlp.submit(finished());
        assert_eq!(dropped.get(), 2, "one span each");
        assert!(matches!(rx.try_recv(), Ok(Queued::Request(_))));
        assert!(rx.try_recv().is_err());
    }
}
