//! The dashboard: a web page that the admin listener serves at `/`, and `/events`, the
//! stream of snapshots it draws from.
//!
//! The page's files are compiled into the binary, so it loads nothing from anywhere but
//! the admin listener. The charts use uPlot, vendored at a pinned version under
//! `host/assets/dashboard/vendor` (see `docs/dependencies.md`).
//!
//! # Cost
//!
//! The proxy does no work for the dashboard per request: a snapshot is read from what
//! `/metrics` and `/status` already keep (counters, gauges, the per-route statistics),
//! once a second per open stream, on the admin listener's tasks. At most
//! [`MAX_STREAMS`] streams are open at once; one more gets a 503.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::Frame;
use prometheus::proto::MetricType;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::{self, BoxError, ProxyBody};

/// How often `/events` sends a snapshot.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The most `/events` streams open at once, so that browsers left open cannot make the
/// admin listener build snapshots without bound.
pub const MAX_STREAMS: usize = 16;

/// The metric families a snapshot carries, each as a list of `{labels…, value}`: what
/// the page shows beyond `/status` (errors by kind, cache results, 429s, failures).
pub const FAMILIES: [&str; 10] = [
    "weir_upstream_errors_total",
    "weir_retries_total",
    "weir_client_errors_total",
    "weir_filter_failures_total",
    "weir_filter_cache_responses_total",
    "weir_filter_limiter_rejected_total",
    "weir_filter_breaker_transitions_total",
    "weir_reloads_total",
    "weir_jobs_total",
    "weir_webhook_deliveries_total",
];

/// One file of the page.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// The page's files, by the path the admin listener serves them at.
const ASSETS: [Asset; 5] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../assets/dashboard/index.html"),
    },
    Asset {
        path: "/assets/app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/dashboard/app.js"),
    },
    Asset {
        path: "/assets/app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../assets/dashboard/app.css"),
    },
    Asset {
        path: "/assets/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/dashboard/vendor/uPlot.iife.min.js"),
    },
    Asset {
        path: "/assets/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../assets/dashboard/vendor/uPlot.min.css"),
    },
];

/// The headers every page file carries: it may only load from the admin listener, may
/// not be framed by another site, and is never guessed as another type.
const PAGE_HEADERS: [(header::HeaderName, &str); 5] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-cache"),
];

/// The page file at `path` (`/index.html` is `/`), if there is one.
pub fn asset(path: &str) -> Option<Response<ProxyBody>> {
    let path = if path == "/index.html" { "/" } else { path };
    let a = ASSETS.iter().find(|a| a.path == path)?;
    let mut resp = Response::new(body::full(Bytes::from_static(a.bytes)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    for (name, value) in &PAGE_HEADERS {
        h.insert(name.clone(), HeaderValue::from_static(value));
    }
    Some(resp)
}

/// Whether `path` is one of the page's files.
pub fn is_asset(path: &str) -> bool {
    path == "/index.html" || ASSETS.iter().any(|a| a.path == path)
}

/// The open `/events` streams.
pub struct Streams(Arc<Semaphore>);

impl Default for Streams {
    fn default() -> Self {
        Streams(Arc::new(Semaphore::new(MAX_STREAMS)))
    }
}

impl Streams {
    /// A place for one more stream, or `None` when [`MAX_STREAMS`] are open.
    pub fn open(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// An `/events` response: a snapshot from `snapshot` at once and then every
/// [`INTERVAL`], as server-sent events, until the client goes away. The stream holds
/// `permit` for as long as it is open.
pub fn events<F>(permit: OwnedSemaphorePermit, snapshot: F) -> Response<ProxyBody>
where
    F: Fn() -> futures_util::future::BoxFuture<'static, serde_json::Value> + Send + 'static,
{
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let frames = futures_util::stream::unfold(
        (tick, snapshot, permit),
        |(mut tick, snapshot, permit)| async move {
            tick.tick().await;
            let data = snapshot().await;
            let frame = Frame::data(Bytes::from(format!("event: snapshot\ndata: {data}\n\n")));
            Some((Ok::<_, BoxError>(frame), (tick, snapshot, permit)))
        },
    );
    let mut resp = Response::new(body::boxed(http_body_util::StreamBody::new(frames)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The answer when [`MAX_STREAMS`] streams are open.
pub fn too_many_streams() -> Response<ProxyBody> {
    crate::error::json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({
            "error": "too_many_streams",
            "message": format!("{MAX_STREAMS} dashboard event streams are open already; close one"),
        }),
    )
}

/// The series of each of [`FAMILIES`] in `families`: `{name: [{labels…, "value"}]}`,
/// counters and gauges only.
pub fn series(families: &[prometheus::proto::MetricFamily]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for f in families.iter().filter(|f| FAMILIES.contains(&f.name())) {
        let list: Vec<serde_json::Value> = f
            .get_metric()
            .iter()
            .map(|m| {
                let mut entry: serde_json::Map<String, serde_json::Value> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_owned(), l.value().into()))
                    .collect();
                let value = match f.get_field_type() {
                    MetricType::COUNTER => m.get_counter().get_value(),
                    MetricType::GAUGE => m.get_gauge().get_value(),
                    _ => return serde_json::Value::Null,
                };
                entry.insert("value".to_owned(), value.into());
                serde_json::Value::Object(entry)
            })
            .filter(|v| !v.is_null())
            .collect();
        out.insert(f.name().to_owned(), list.into());
    }
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn every_asset_is_served_with_its_type_and_the_page_headers() {
        for path in [
            "/",
            "/index.html",
            "/assets/app.js",
            "/assets/uPlot.min.css",
        ] {
            let resp = asset(path).expect(path);
            assert_eq!(resp.status(), 200);
            let h = resp.headers();
            assert!(
                h[header::CONTENT_SECURITY_POLICY]
                    .to_str()
                    .unwrap()
                    .contains("default-src 'none'")
            );
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert!(is_asset(path));
        }
        assert!(asset("/assets/../Cargo.toml").is_none());
        assert!(asset("/assets/").is_none());
        assert!(!is_asset("/status"));
        assert_eq!(
            asset("/").unwrap().headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        let html = std::str::from_utf8(ASSETS[0].bytes).unwrap();
        for src in html
            .split(['"', '\''])
            .filter(|s| s.starts_with("/assets/"))
        {
            assert!(
                asset(src).is_some(),
                "the page names {src}, which is not served"
            );
        }
        for a in &ASSETS {
            let text = String::from_utf8_lossy(a.bytes);
            for scheme in ["http://", "https://"] {
                // uPlot's banner names its home page in a comment; nothing is loaded
                // from it (the CSP's default-src 'none' would refuse it anyway).
                let loads = text
                    .match_indices(scheme)
                    .filter(|(i, _)| !text[..*i].ends_with("/*! "))
                    .count();
                assert_eq!(loads, 0, "{} names {scheme}", a.path);
            }
        }
    }

    #[test]
    fn the_streams_are_bounded() {
        let s = Streams::default();
        let held: Vec<_> = (0..MAX_STREAMS)
            .map(|_| s.open().expect("a place"))
            .collect();
        assert!(s.open().is_none());
        drop(held);
        assert!(s.open().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn events_sends_a_snapshot_at_once_and_then_every_second() {
        let s = Streams::default();
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = n.clone();
        let resp = events(s.open().unwrap(), move || {
            let i = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move { serde_json::json!({ "n": i }) })
        });
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        let mut body = resp.into_body();
        let start = tokio::time::Instant::now();
        for i in 0..3u64 {
            let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(frame, format!("event: snapshot\ndata: {{\"n\":{i}}}\n\n"));
            assert_eq!(start.elapsed(), INTERVAL * i as u32);
        }
        // The stream holds its place until it is dropped.
        let held: Vec<_> = (1..MAX_STREAMS)
            .map(|_| s.open().expect("a place"))
            .collect();
        assert!(s.open().is_none());
        drop(body);
        assert!(s.open().is_some());
        drop(held);
    }

    #[test]
    fn series_lists_the_named_families_with_their_labels() {
        let registry = prometheus::Registry::new();
        let errors = prometheus::IntCounterVec::new(
            prometheus::Opts::new("weir_upstream_errors_total", "x"),
            &["upstream", "kind"],
        )
        .unwrap();
        let other = prometheus::IntCounter::new("weir_other_total", "x").unwrap();
        registry.register(Box::new(errors.clone())).unwrap();
        registry.register(Box::new(other.clone())).unwrap();
        errors.with_label_values(&["pay", "reset"]).inc_by(3);
        other.inc();
        let v = series(&registry.gather());
        assert_eq!(
            v,
            serde_json::json!({
                "weir_upstream_errors_total": [{"upstream": "pay", "kind": "reset", "value": 3.0}]
            })
        );
    }
}
