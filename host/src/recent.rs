//! Recent requests: a bounded ring of what weir did with the last requests, for
//! `/requests`, `/requests/{id}` and replay.
//!
//! A record keeps the request as the client sent it (headers and, up to a small cap, the
//! body, so it can be replayed), the response head, body sizes, the time spent in each
//! filter call and upstream, the attempts and the outcome. Secrets never leave it:
//! `Authorization`, `Cookie`, `Set-Cookie`, `Proxy-Authorization`, `X-API-Key` and any
//! configured header are shown as `[redacted]`.
//!
//! # Bounds
//!
//! Clients choose ids, paths and headers, so nothing here grows with them: the ring
//! holds at most `recent_requests` records, the oldest dropped first, and there is no
//! index by id (a lookup walks the ring, newest first, so a reused `x-request-id` finds
//! its latest request). One record holds at most one request head (`max_header_bytes`),
//! `recent_body_bytes` of each body, the response head, and a filter timing per call
//! (at most `MAX_ATTEMPTS` tries of each filter's two phases).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::HeaderName;
use http_body::{Body, Frame, SizeHint};

use tokio::time::Instant;

use crate::body::BoxError;
use crate::clock::rfc3339;
use crate::upstream::ConnectTiming;
use crate::wasm::HostCall;

/// Headers always redacted.
const ALWAYS_REDACTED: [&str; 5] = [
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
    "x-api-key",
];

/// The most records `/requests` lists at once.
const MAX_LIST: usize = 1000;

/// What a body wrapper saw: the first bytes (up to the cap) and the total.
#[derive(Default)]
pub struct Capture {
    kept: BytesMut,
    total: u64,
    /// More than the cap went by, so `kept` is not the whole body.
    overflow: bool,
    /// The body ended normally.
    complete: bool,
}

/// A body that passes its data on and copies the first `cap` bytes into a [`Capture`].
pub struct Tee<B> {
    inner: B,
    cap: u64,
    capture: Arc<Mutex<Capture>>,
}

impl<B: Body> Tee<B> {
    /// Wraps `inner`; what passes is recorded in the returned capture.
    pub fn new(inner: B, cap: u64) -> (Tee<B>, Arc<Mutex<Capture>>) {
        // An empty body (a GET) may never be polled: it is complete as it is.
        let capture = Arc::new(Mutex::new(Capture {
            complete: inner.is_end_stream(),
            ..Capture::default()
        }));
        (
            Tee {
                inner,
                cap,
                capture: capture.clone(),
            },
            capture,
        )
    }
}

impl<B> Body for Tee<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        let mut c = this.capture.lock().unwrap_or_else(|p| p.into_inner());
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    c.total += data.len() as u64;
                    let room = this.cap.saturating_sub(c.kept.len() as u64) as usize;
                    if data.len() > room {
                        c.overflow = true;
                    }
                    let take = data.len().min(room);
                    c.kept.extend_from_slice(&data[..take]);
                }
            }
            Poll::Ready(None) => c.complete = true,
            _ => {}
        }
        if this.inner.is_end_stream() {
            c.complete = true;
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One filter call's timing.
#[derive(Debug, Clone)]
pub struct FilterTiming {
    /// The filter's name.
    pub filter: String,
    /// `on_request` or `on_response`.
    pub phase: &'static str,
    /// The try it belonged to.
    pub attempt: u32,
    /// When the call started (its wait for a free instance included).
    pub at: Instant,
    /// How long the call took.
    pub took: Duration,
    /// How the call failed, if it did: `trap`, `timeout`, `memory` or `invalid`.
    pub error: Option<&'static str>,
    /// The state and outbound calls the filter made in it; recorded only for a request
    /// whose spans are exported.
    pub host_calls: Vec<HostCall>,
}

/// A filter that failed during a request.
#[derive(Debug, Clone)]
pub struct FilterFailure {
    /// The filter's name.
    pub filter: String,
    /// How it failed.
    pub error: crate::wasm::CallError,
}

/// One upstream try: from sending the request to its response head, or to the failure.
#[derive(Debug, Clone)]
pub struct UpstreamTiming {
    /// The try (1 for the first).
    pub attempt: u32,
    /// When the request was handed to the pool.
    pub at: Instant,
    /// Time to the response head, or to the failure.
    pub took: Duration,
    /// The new connection this try opened, if it had to.
    pub connect: Option<ConnectTiming>,
    /// The response status, or the upstream error's kind (`connect_failed`, `timeout`, …).
    pub outcome: Result<u16, &'static str>,
    /// For a request whose spans are exported: this try's span id (the parent id of the
    /// `traceparent` it sent) and the path it sent, without the query.
    pub span: Option<(u64, String)>,
}

/// A wait the walk slept: a filter's `wait`, or the delay before a retry.
#[derive(Debug, Clone)]
pub struct WaitTiming {
    /// The filter that asked for it.
    pub filter: String,
    /// `wait` (from `on-request`) or `retry` (the delay `on-response` asked for).
    pub kind: &'static str,
    /// The try it came in.
    pub attempt: u32,
    /// When the sleep started.
    pub at: Instant,
    /// How long it slept.
    pub took: Duration,
}

/// What the chain did, for the record: filter timings, upstream timings, attempts.
#[derive(Debug, Default, Clone)]
pub struct Trace {
    /// Every filter call, in order.
    pub filters: Vec<FilterTiming>,
    /// Every upstream call, in order.
    pub upstream: Vec<UpstreamTiming>,
    /// Every wait, in order; recorded only for a request whose spans are exported.
    pub waits: Vec<WaitTiming>,
    /// The number of tries.
    pub attempts: u32,
    /// Every filter that failed (a trap, a timeout, an answer weir refused), in order.
    pub failures: Vec<FilterFailure>,
}

/// One recorded request.
pub struct Record {
    /// The request id.
    pub id: String,
    /// When it arrived.
    pub at: SystemTime,
    /// The route that took it, if any.
    pub route: Option<String>,
    /// The method.
    pub method: http::Method,
    /// The path and query as the client sent them.
    pub path_with_query: String,
    /// The URL it was sent to upstream, if it was.
    pub upstream_url: Option<String>,
    /// The client's headers, unredacted (only replay reads them).
    pub request_headers: HeaderMap,
    request_body: Arc<Mutex<Capture>>,
    /// The response status.
    pub status: u16,
    /// The response headers as sent to the client.
    pub response_headers: HeaderMap,
    response_body: Option<Arc<Mutex<Capture>>>,
    /// What the chain did.
    pub trace: Trace,
    /// Time to the response head.
    pub duration: Duration,
    /// The error code, when weir answered with an error.
    pub error: Option<String>,
    /// The W3C trace id.
    pub trace_id: String,
    /// The async job this request ran, when it is a job's run.
    pub job: Option<String>,
    /// The batch this request was a call of (the batch's request id, or its job's id).
    pub batch: Option<String>,
    redact: Arc<Vec<HeaderName>>,
}

impl Record {
    /// The request body, if the whole of it was kept.
    pub fn replayable_body(&self) -> Option<Bytes> {
        let c = self.request_body.lock().unwrap_or_else(|p| p.into_inner());
        (c.complete && !c.overflow).then(|| Bytes::copy_from_slice(&c.kept))
    }

    /// Whether the request failed: a 4xx or 5xx answer, or an error weir answered
    /// with (`/requests?errors=true`).
    pub fn failed(&self) -> bool {
        self.status >= 400 || self.error.is_some()
    }

    fn headers_json(&self, headers: &HeaderMap) -> serde_json::Value {
        let map: Vec<serde_json::Value> = headers
            .iter()
            .map(|(n, v)| {
                let shown = if self.redact.contains(n) {
                    "[redacted]".to_owned()
                } else {
                    String::from_utf8_lossy(v.as_bytes()).into_owned()
                };
                serde_json::json!([n.as_str(), shown])
            })
            .collect();
        map.into()
    }

    fn body_json(capture: &Mutex<Capture>) -> serde_json::Value {
        let c = capture.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::json!({
            "bytes": c.total,
            "complete": c.complete,
            "kept": match std::str::from_utf8(&c.kept) {
                Ok(text) => serde_json::Value::from(text),
                Err(_) => serde_json::Value::Null,
            },
            "truncated": c.overflow,
        })
    }

    fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "at": rfc3339(self.at),
            "route": self.route,
            "method": self.method.as_str(),
            "path": self.path_with_query,
            "status": self.status,
            "duration_ms": self.duration.as_secs_f64() * 1000.0,
            "attempts": self.trace.attempts,
            "error": self.error,
            "job": self.job,
            "batch": self.batch,
        })
    }

    /// The full record, secrets redacted.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = self.summary();
        v["trace_id"] = self.trace_id.clone().into();
        v["upstream_url"] = self.upstream_url.clone().into();
        v["request"] = serde_json::json!({
            "headers": self.headers_json(&self.request_headers),
            "body": Record::body_json(&self.request_body),
        });
        v["response"] = serde_json::json!({
            "headers": self.headers_json(&self.response_headers),
            "body": self.response_body.as_deref().map(Record::body_json),
        });
        v["timings"] = serde_json::json!({
            "filters": self.trace.filters.iter().map(|t| serde_json::json!({
                "filter": t.filter,
                "phase": t.phase,
                "attempt": t.attempt,
                "us": t.took.as_secs_f64() * 1e6,
            })).collect::<Vec<_>>(),
            "upstream_ms": self.trace.upstream.iter().map(|u| u.took.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
            "connect_ms": self.trace.upstream.iter().filter_map(|u| u.connect).map(|c| (c.tcp + c.tls.unwrap_or_default()).as_secs_f64() * 1000.0).collect::<Vec<_>>(),
            "total_ms": self.duration.as_secs_f64() * 1000.0,
        });
        v["filter_failures"] = self
            .trace
            .failures
            .iter()
            .map(|f| serde_json::json!({"filter": f.filter, "error": f.error.to_string()}))
            .collect::<Vec<_>>()
            .into();
        v
    }
}

/// The facts of one request that the ring keeps, gathered by the listener.
pub struct NewRecord {
    /// See [`Record::id`].
    pub id: String,
    /// See [`Record::route`].
    pub route: Option<String>,
    /// See [`Record::method`].
    pub method: http::Method,
    /// See [`Record::path_with_query`].
    pub path_with_query: String,
    /// See [`Record::upstream_url`].
    pub upstream_url: Option<String>,
    /// See [`Record::request_headers`].
    pub request_headers: HeaderMap,
    /// What the request body wrapper captured.
    pub request_body: Arc<Mutex<Capture>>,
    /// See [`Record::status`].
    pub status: u16,
    /// See [`Record::response_headers`].
    pub response_headers: HeaderMap,
    /// What the response body wrapper captured, if the body was wrapped.
    pub response_body: Option<Arc<Mutex<Capture>>>,
    /// See [`Record::trace`].
    pub trace: Trace,
    /// See [`Record::duration`].
    pub duration: Duration,
    /// See [`Record::error`].
    pub error: Option<String>,
    /// See [`Record::trace_id`].
    pub trace_id: String,
    /// See [`Record::job`].
    pub job: Option<String>,
    /// See [`Record::batch`].
    pub batch: Option<String>,
}

/// The ring of recent requests.
pub struct Recent {
    capacity: usize,
    body_cap: u64,
    redact: Arc<Vec<HeaderName>>,
    ring: Mutex<VecDeque<Arc<Record>>>,
}

impl Recent {
    /// Keeps the last `capacity` requests, with bodies up to `body_cap` bytes, redacting
    /// the built-in secret headers and `extra_redact`.
    pub fn new(capacity: usize, body_cap: u64, extra_redact: &[String]) -> Recent {
        let mut redact: Vec<HeaderName> = ALWAYS_REDACTED
            .iter()
            .map(|h| HeaderName::from_static(h))
            .collect();
        redact.extend(
            extra_redact
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
        );
        Recent {
            capacity,
            body_cap,
            redact: Arc::new(redact),
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
        }
    }

    /// The most body bytes kept per request.
    pub fn body_cap(&self) -> u64 {
        self.body_cap
    }

    /// Whether anything is kept at all.
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Adds a record, dropping the oldest past capacity.
    pub fn push(&self, r: NewRecord) {
        if self.capacity == 0 {
            return;
        }
        let record = Arc::new(Record {
            id: r.id,
            at: SystemTime::now() - r.duration,
            route: r.route,
            method: r.method,
            path_with_query: r.path_with_query,
            upstream_url: r.upstream_url,
            request_headers: r.request_headers,
            request_body: r.request_body,
            status: r.status,
            response_headers: r.response_headers,
            response_body: r.response_body,
            trace: r.trace,
            duration: r.duration,
            error: r.error,
            trace_id: r.trace_id,
            job: r.job,
            batch: r.batch,
            redact: self.redact.clone(),
        });
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() >= self.capacity {
            ring.pop_front();
        }
        ring.push_back(record);
    }

    /// The record of request `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Record>> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().rev().find(|r| r.id == id).cloned()
    }

    /// `/requests?route=&status=&limit=`: newest first. `status` is a code (`503`) or a
    /// class (`5xx`).
    pub fn list(&self, query: &str) -> Result<serde_json::Value, String> {
        let mut route = None;
        let mut job = None;
        let mut batch = None;
        let mut status: Option<(u16, bool)> = None;
        let mut limit = 100usize;
        let mut errors_only = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "route" => route = Some(v.to_owned()),
                "job" => job = Some(v.to_owned()),
                "batch" => batch = Some(v.to_owned()),
                "status" => {
                    status = Some(if let Some(class) = v.strip_suffix("xx") {
                        let c: u16 = class.parse().map_err(|_| {
                            format!("invalid status {v:?}: use a code like 503 or a class like 5xx")
                        })?;
                        (c, true)
                    } else {
                        let c: u16 = v.parse().map_err(|_| {
                            format!("invalid status {v:?}: use a code like 503 or a class like 5xx")
                        })?;
                        (c, false)
                    })
                }
                "errors" => {
                    errors_only = match v {
                        "true" | "1" => true,
                        "false" | "0" | "" => false,
                        _ => return Err(format!("invalid errors {v:?}: use true or false")),
                    }
                }
                "limit" => {
                    limit = v
                        .parse()
                        .map_err(|_| format!("invalid limit {v:?}: use a whole number"))?;
                    limit = limit.min(MAX_LIST);
                }
                other => {
                    return Err(format!(
                        "unknown query parameter {other:?}: use route, job, batch, status, errors or limit"
                    ));
                }
            }
        }
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let items: Vec<serde_json::Value> = ring
            .iter()
            .rev()
            .filter(|r| {
                route
                    .as_deref()
                    .is_none_or(|want| r.route.as_deref() == Some(want))
            })
            .filter(|r| {
                job.as_deref()
                    .is_none_or(|want| r.job.as_deref() == Some(want))
            })
            .filter(|r| {
                batch
                    .as_deref()
                    .is_none_or(|want| r.batch.as_deref() == Some(want))
            })
            .filter(|r| !errors_only || r.failed())
            .filter(|r| match status {
                None => true,
                Some((c, true)) => r.status / 100 == c,
                Some((c, false)) => r.status == c,
            })
            .take(limit)
            .map(|r| r.summary())
            .collect();
        Ok(serde_json::json!({ "requests": items }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use http_body_util::BodyExt;

    fn record(recent: &Recent, id: &str, route: &str, status: u16) {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer s3cret".parse().unwrap());
        headers.insert("x-trace-me", "visible".parse().unwrap());
        headers.insert("x-tenant-key", "t0p".parse().unwrap());
        recent.push(NewRecord {
            id: id.into(),
            route: Some(route.into()),
            method: http::Method::POST,
            path_with_query: "/a?b=1".into(),
            upstream_url: None,
            request_headers: headers,
            request_body: Arc::new(Mutex::new(Capture::default())),
            status,
            response_headers: HeaderMap::new(),
            response_body: None,
            trace: Trace::default(),
            duration: Duration::from_millis(5),
            error: None,
            trace_id: "t".into(),
            job: (route == "jobs").then(|| format!("job-{id}")),
            batch: (route == "batch").then(|| format!("batch-{id}")),
        });
    }

    #[test]
    fn the_ring_is_bounded_and_lists_newest_first_with_filters() {
        let recent = Recent::new(3, 16, &[]);
        for (i, s) in [200, 503, 200, 404].iter().enumerate() {
            record(
                &recent,
                &format!("r{i}"),
                if i % 2 == 0 { "a" } else { "b" },
                *s,
            );
        }
        assert!(recent.get("r0").is_none(), "the oldest was dropped");
        let all = recent.list("").unwrap();
        let ids: Vec<_> = all["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["r3", "r2", "r1"]);
        assert_eq!(
            recent.list("status=5xx").unwrap()["requests"][0]["id"],
            "r1"
        );
        assert_eq!(
            recent.list("route=a").unwrap()["requests"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            recent.list("limit=1").unwrap()["requests"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // Errors only: the 503 and the 404, newest first.
        let failed: Vec<_> = recent.list("errors=true").unwrap()["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(failed, ["r3", "r1"]);
        assert_eq!(
            recent.list("errors=false").unwrap()["requests"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        // A job's runs are found by its id.
        record(&recent, "r9", "jobs", 200);
        record(&recent, "r10", "batch", 200);
        let calls = recent.list("batch=batch-r10").unwrap();
        assert_eq!(calls["requests"].as_array().unwrap().len(), 1);
        assert_eq!(calls["requests"][0]["batch"], "batch-r10");
        let runs = recent.list("job=job-r9").unwrap();
        assert_eq!(runs["requests"].as_array().unwrap().len(), 1);
        assert_eq!(runs["requests"][0]["id"], "r9");
        assert_eq!(runs["requests"][0]["job"], "job-r9");
        assert!(
            recent.list("job=job-r3").unwrap()["requests"]
                .as_array()
                .unwrap()
                .is_empty()
        );
        assert!(recent.list("errors=maybe").is_err());
        assert!(recent.list("colour=red").is_err());
        assert!(recent.list("status=bad").is_err());
    }

    #[test]
    fn secrets_are_redacted_builtin_and_configured() {
        let recent = Recent::new(3, 16, &["x-tenant-key".into()]);
        record(&recent, "r", "a", 200);
        let text = recent.get("r").unwrap().to_json().to_string();
        assert!(!text.contains("s3cret") && !text.contains("t0p"), "{text}");
        assert!(text.contains("visible"));
        assert!(text.contains("[redacted]"));
    }

    #[test]
    fn an_empty_body_is_complete_without_being_polled() {
        let (_tee, cap) = Tee::new(body::empty(), 16);
        let c = cap.lock().unwrap();
        assert!(c.complete && !c.overflow && c.total == 0);
    }

    #[tokio::test]
    async fn tee_keeps_small_bodies_whole_and_marks_large_ones() {
        let (tee, cap) = Tee::new(body::full(Bytes::from_static(b"hello")), 16);
        assert_eq!(tee.collect().await.unwrap().to_bytes(), "hello");
        {
            let c = cap.lock().unwrap();
            assert!(c.complete && !c.overflow);
            assert_eq!((&c.kept[..], c.total), (&b"hello"[..], 5));
        }
        let (tee, cap) = Tee::new(body::full(Bytes::from_static(b"0123456789")), 4);
        assert_eq!(tee.collect().await.unwrap().to_bytes().len(), 10);
        let c = cap.lock().unwrap();
        assert!(c.overflow);
        assert_eq!((&c.kept[..], c.total), (&b"0123"[..], 10));
    }
}
