//! Async requests: `202 Accepted` now, the upstream's answer later, by polling the job's
//! URL or by a signed webhook.
//!
//! How a request becomes a job and runs:
//!
//! 1. A route with `async = { mode = "prefer" }` takes a request as a job when it carries
//!    `Prefer: respond-async` (RFC 7240); with `mode = "always"`, every request. Other
//!    routes ignore the preference and answer synchronously, as RFC 7240 says.
//! 2. weir reads the whole request, gives it an `Idempotency-Key` (the client's, or a new
//!    one), writes it to the [`journal`] with an fsync'd commit, and only then answers
//!    `202` with `Location: /_weir/jobs/<id>`, `Preference-Applied: respond-async` and
//!    `{"id": …}`. With `wait=N` it first waits up to N seconds (at most the route's
//!    timeout) and answers the result itself when it comes in time.
//! 3. A worker runs the stored request through the route's whole chain, as the proxy
//!    does for a synchronous call, and writes the outcome to the journal.
//!    `succeeded` means the call got an answer below 500; `failed`, a 5xx (weir's own
//!    502/503/504 included) or a route that a reload removed. A fan-out job sends every
//!    target and keeps each one's outcome; it succeeded when every target did, and a
//!    rerun sends only the targets that did not. A batch job runs every call and keeps
//!    each one's outcome; it succeeded once it ran (each call's status is in its slot).
//! 4. At start, jobs the journal holds as `queued` or `running` (a crash or a stop
//!    caught them) run again, with the same idempotency key, so that an upstream that
//!    honours keys acts once.
//! 5. A job with a callback URL is then delivered ([`webhook`]); when the schedule runs
//!    out, the job is `dead`. The admin API lists dead jobs and re-delivers them.
//! 6. Finished jobs stay readable for `retention`, then are purged.
//!
//! Job URLs live under [`PREFIX`] on the proxy listener, which no route may claim. An
//! id is 128 random bits, so the URL is the capability to read the job.

pub mod fleet;
pub mod journal;
pub mod store;
pub mod webhook;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::config::JobsConfig;
use crate::error::json_response;
use crate::listener::Proxy;
use crate::state::BoxFuture;
use crate::telemetry::Telemetry;
use journal::{Journal, JournalError};
use store::{Bounds, Claim, Embedded, Store};
use webhook::{Attempt, Webhooks};

/// Where job URLs live on the proxy listener.
pub const PREFIX: &str = "/_weir/jobs/";

/// The request header that names a callback URL.
pub const CALLBACK_HEADER: &str = "weir-callback-url";

/// What `Retry-After` a full queue or a failing journal answers with, in seconds.
const RETRY_AFTER_SECS: u64 = 1;

/// Whether a route's `path_prefix` reaches into weir's reserved paths.
pub fn claims_reserved(path_prefix: &str) -> bool {
    path_prefix.starts_with("/_weir")
}

/// What a client's `Prefer` headers ask for (RFC 7240).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Prefer {
    /// `respond-async`.
    pub respond_async: bool,
    /// `wait=N`, in seconds.
    pub wait: Option<Duration>,
}

impl Prefer {
    /// Reads every `Prefer` header; unknown preferences are ignored, as the RFC says.
    pub fn from_headers(headers: &HeaderMap) -> Prefer {
        let mut out = Prefer::default();
        for value in headers.get_all(http::header::HeaderName::from_static("prefer")) {
            let Ok(text) = value.to_str() else { continue };
            for pref in text.split(',') {
                // Parameters after `;` do not change these two preferences.
                let token = pref.split(';').next().unwrap_or_default().trim();
                let (name, value) = match token.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                    None => (token, None),
                };
                if name.eq_ignore_ascii_case("respond-async") {
                    out.respond_async = true;
                } else if name.eq_ignore_ascii_case("wait")
                    && let Some(secs) = value.and_then(|v| v.parse::<u64>().ok())
                {
                    out.wait = Some(Duration::from_secs(secs));
                }
            }
        }
        out
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Stored, waiting for a worker.
    Queued,
    /// A worker is running it (or was, when weir stopped: it runs again at start).
    Running,
    /// The call got an answer below 500.
    Succeeded,
    /// The call got a 5xx, or could not be made.
    Failed,
    /// Its webhook could not be delivered within the schedule.
    Dead,
}

impl JobState {
    /// Whether the job will not run again by itself.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Dead
        )
    }
}

/// Bytes kept as base64 in the journal's JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Blob, D::Error> {
        let s = String::deserialize(d)?;
        BASE64.decode(s).map(Blob).map_err(serde::de::Error::custom)
    }
}

/// The upstream's answer, as the journal keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobResult {
    /// The status.
    pub status: u16,
    /// The headers, in order.
    pub headers: Vec<(String, Blob)>,
    /// The body.
    pub body: Blob,
}

/// Where a job's webhook is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not delivered yet; the next attempt is due at `next_at_ms`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// The receiver answered 410: no more attempts.
    Gone,
    /// The schedule ran out.
    Dead,
}

/// A job's webhook.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    /// `webhook-id`: the same on every attempt.
    pub id: String,
    /// Where it goes.
    pub url: String,
    /// Where it is.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (Unix ms).
    pub next_at_ms: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// One job, as the journal keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// 32 hex digits: 128 random bits.
    pub id: String,
    /// The route that accepted it.
    pub route: String,
    /// Where it is.
    pub state: JobState,
    /// The request's method.
    pub method: String,
    /// The request's path and query, as the client sent it.
    pub target: String,
    /// The request's headers, `Idempotency-Key` included.
    pub headers: Vec<(String, Blob)>,
    /// The request's body.
    pub body: Blob,
    /// The key the upstream sees on every run.
    pub idempotency_key: String,
    /// Runs started, re-runs after a crash included.
    pub attempts: u32,
    /// Runs cut off since it was accepted or last rerun: weir stopped (or, in a fleet,
    /// lost its claim) while the job ran. At [`MAX_CUT_OFF_RUNS`] it fails unrun.
    #[serde(default)]
    pub cut_off: u32,
    /// When it was accepted, started last and finished (Unix ms).
    pub accepted_at_ms: u64,
    /// When the last run started.
    pub started_at_ms: Option<u64>,
    /// When the last run finished.
    pub finished_at_ms: Option<u64>,
    /// The upstream's answer (or weir's error response).
    pub result: Option<JobResult>,
    /// Why it failed without an answer worth keeping (a removed route).
    pub error: Option<String>,
    /// The webhook, when the client named a callback.
    pub webhook: Option<Delivery>,
    /// A fan-out job's outcome per target, in target order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<CallOutcome>>,
    /// A batch job's outcome per call, in request order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<Vec<CallOutcome>>,
}

/// What one run of a job came to.
pub enum JobOutput {
    /// A plain route's answer.
    Answer(JobResult),
    /// A fan-out route's outcome per target.
    Targets(Vec<CallOutcome>),
    /// A batch's outcome per call.
    Calls(Vec<CallOutcome>),
}

impl Job {
    /// What the request takes in the queue's byte bound.
    fn size(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.0.len()).sum();
        (self.target.len() + headers + self.body.0.len()) as u64
    }

    /// The job as `GET` on its URL shows it.
    pub fn to_json(&self) -> serde_json::Value {
        let at = |ms: Option<u64>| {
            ms.map(|ms| crate::clock::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)))
        };
        let result = self.result.as_ref().map(|r| {
            let mut headers = serde_json::Map::new();
            for (name, value) in &r.headers {
                let v = String::from_utf8_lossy(&value.0).into_owned();
                match headers.get_mut(name) {
                    Some(serde_json::Value::String(s)) => {
                        s.push_str(", ");
                        s.push_str(&v);
                    }
                    _ => {
                        headers.insert(name.clone(), v.into());
                    }
                }
            }
            let mut out = serde_json::json!({"status": r.status, "headers": headers});
            match std::str::from_utf8(&r.body.0) {
                Ok(text) => out["body"] = text.into(),
                Err(_) => out["body_base64"] = BASE64.encode(&r.body.0).into(),
            }
            out
        });
        let outcomes = |o: &Option<Vec<CallOutcome>>| {
            o.as_ref()
                .map(|o| o.iter().map(CallOutcome::to_json).collect::<Vec<_>>())
        };
        let mut out = serde_json::json!({
            "id": self.id,
            "route": self.route,
            "state": self.state,
            "attempts": self.attempts,
            "cut_off_runs": self.cut_off,
            "idempotency_key": self.idempotency_key,
            "accepted_at": at(Some(self.accepted_at_ms)),
            "started_at": at(self.started_at_ms),
            "finished_at": at(self.finished_at_ms),
            "result": result,
            "error": self.error,
            "webhook": self.webhook.as_ref().map(|w| serde_json::json!({
                "id": w.id,
                "url": w.url,
                "state": w.state,
                "attempts": w.attempts,
                "next_at": (w.state == DeliveryState::Pending).then(|| at(Some(w.next_at_ms))),
                "last_error": w.last_error,
            })),
        });
        if let Some(targets) = outcomes(&self.targets) {
            out["targets"] = targets.into();
        }
        if let Some(calls) = outcomes(&self.calls) {
            out["results"] = calls.into();
        }
        out
    }

    /// How a run that got this far ended: a plain job succeeded with an answer below
    /// 500; a fan-out job when every target did; a batch job once it ran (each call's
    /// own status is in its slot).
    fn outcome(&self) -> JobState {
        let succeeded = match (&self.result, &self.targets, &self.calls) {
            (Some(r), _, _) => r.status < 500,
            (None, Some(targets), _) => targets.iter().all(CallOutcome::ok),
            (None, None, Some(_)) => true,
            (None, None, None) => false,
        };
        if succeeded {
            JobState::Succeeded
        } else {
            JobState::Failed
        }
    }

    /// The stored result as the response a synchronous call would have got: a fan-out
    /// job's as its `all` summary, a batch job's as a batch answer.
    fn to_response(&self) -> Option<Response<ProxyBody>> {
        if let Some(targets) = &self.targets {
            return Some(json_response(
                StatusCode::OK,
                &CallOutcome::summary(targets),
            ));
        }
        if let Some(calls) = &self.calls {
            return Some(json_response(
                StatusCode::OK,
                &CallOutcome::batch_answer(&self.id, calls),
            ));
        }
        let r = self.result.as_ref()?;
        let mut resp = Response::new(crate::body::full(Bytes::from(r.body.0.clone())));
        *resp.status_mut() = StatusCode::from_u16(r.status).ok()?;
        for (name, value) in &r.headers {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(&value.0),
            ) {
                resp.headers_mut().append(n, v);
            }
        }
        Some(resp)
    }
}

/// What one call came to: a fan-out target's, or a batch call's (see [`crate::fanout`]
/// and [`crate::batch`]). The JSON shape is the
/// same in an `all` summary, a batch answer and a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallOutcome {
    /// The target upstream's name (fan-out only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The status the call ended with: the upstream's, or that of weir's error.
    pub status: u16,
    /// The response headers, in order, duplicates kept.
    pub headers: Vec<(String, Blob)>,
    /// The response body.
    pub body: Blob,
    /// Tries made (retries included).
    pub attempts: u32,
    /// From the call's start to its last body byte.
    pub duration_ms: u64,
    /// weir's error code when weir ended the call (`timeout`, `connect`, `no_route`, …).
    #[serde(default)]
    pub error: Option<String>,
}

impl CallOutcome {
    /// An answer below 500 that weir did not end with an error.
    pub fn ok(&self) -> bool {
        CallOutcome::label(self.error.as_deref(), self.status) == "ok"
    }

    /// The outcome as clients see it: headers as `[name, value]` pairs, the body as text
    /// when it is UTF-8, else as `body_base64`.
    pub fn to_json(&self) -> serde_json::Value {
        let headers: Vec<[String; 2]> = self
            .headers
            .iter()
            .map(|(n, v)| [n.clone(), String::from_utf8_lossy(&v.0).into_owned()])
            .collect();
        let mut out = serde_json::json!({
            "status": self.status,
            "headers": headers,
            "attempts": self.attempts,
            "duration_ms": self.duration_ms,
            "error": self.error,
        });
        if let Some(t) = &self.target {
            out["target"] = t.as_str().into();
        }
        match std::str::from_utf8(&self.body.0) {
            Ok(text) => out["body"] = text.into(),
            Err(_) => out["body_base64"] = BASE64.encode(&self.body.0).into(),
        }
        out
    }

    /// A batch's answer: every call's outcome in request order, under the batch's id.
    pub fn batch_answer(batch: &str, outcomes: &[CallOutcome]) -> serde_json::Value {
        serde_json::json!({
            "batch": batch,
            "results": outcomes.iter().map(CallOutcome::to_json).collect::<Vec<_>>(),
        })
    }

    /// A fan-out target's outcome as `weir_fanout_targets_total` counts it, from weir's
    /// error code (if weir ended the call) and the status.
    pub fn label(error: Option<&str>, status: u16) -> &'static str {
        match error {
            Some("timeout") => "timeout",
            None if status < 500 => "ok",
            _ => "failed",
        }
    }

    /// A fan-out's summary: every target's outcome in order, and the counts.
    pub fn summary(outcomes: &[CallOutcome]) -> serde_json::Value {
        let ok = outcomes.iter().filter(|o| o.ok()).count();
        serde_json::json!({
            "targets": outcomes.iter().map(CallOutcome::to_json).collect::<Vec<_>>(),
            "succeeded": ok,
            "failed": outcomes.len() - ok,
        })
    }

    /// Reads `resp` into an outcome, its body bounded by `max_body`, by `budget` (shared
    /// with the answer's other calls) and by `deadline`. `error` is weir's code when the
    /// response is one of its errors.
    pub async fn read(
        resp: Response<ProxyBody>,
        error: Option<&str>,
        attempts: u32,
        started: Instant,
        deadline: Instant,
        budget: &Budget,
    ) -> CallOutcome {
        let (parts, mut resp_body) = resp.into_parts();
        let mut out = CallOutcome {
            target: None,
            status: parts.status.as_u16(),
            headers: to_pairs(&parts.headers),
            body: Blob::default(),
            attempts,
            duration_ms: 0,
            error: error.map(str::to_owned),
        };
        let mut kept = Vec::new();
        let read = async {
            while let Some(frame) = resp_body.frame().await {
                let frame = frame
                    .map_err(|e| ("upstream_body", format!("reading the response body: {e}")))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if !budget.take(data.len() as u64) {
                    return Err((
                        "response_too_large",
                        format!(
                            "the answers' bodies passed max_body_bytes ({} bytes) together",
                            budget.limit
                        ),
                    ));
                }
                kept.extend_from_slice(&data);
            }
            Ok(())
        };
        let read = tokio::time::timeout_at(deadline, read).await;
        match read {
            Ok(Ok(())) => out.body = Blob(std::mem::take(&mut kept)),
            Ok(Err((code, message))) => out.fail(StatusCode::BAD_GATEWAY, code, message),
            Err(_) => out.fail(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the response body was not complete by the route's deadline".to_owned(),
            ),
        }
        if out.error.is_some() {
            budget.give(kept.len() as u64);
        }
        out.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        out
    }

    /// Turns the outcome into weir's error `code`, keeping the head it had.
    fn fail(&mut self, status: StatusCode, code: &str, message: String) {
        self.status = status.as_u16();
        self.error = Some(code.to_owned());
        self.headers = vec![(
            "content-type".to_owned(),
            Blob(b"application/json".to_vec()),
        )];
        let body = serde_json::json!({"error": code, "message": message});
        self.body = Blob(serde_json::to_vec(&body).unwrap_or_default());
    }
}

/// The bytes that the bodies of one answer made of many calls (a fan-out's, a batch's)
/// may hold together: `max_body_bytes`, the most weir buffers, first come first served.
/// A call whose body does not fit shows `response_too_large` in its slot.
pub struct Budget {
    left: AtomicU64,
    limit: u64,
}

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Budget {
        Budget {
            left: AtomicU64::new(bytes),
            limit: bytes,
        }
    }

    /// Takes `n` bytes, if that many are left.
    fn take(&self, n: u64) -> bool {
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(n)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken for a body that was not kept.
    fn give(&self, n: u64) {
        self.left.fetch_add(n, Ordering::Relaxed);
    }
}

/// Unix time in ms.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Headers as the journal keeps them.
pub fn to_pairs(headers: &HeaderMap) -> Vec<(String, Blob)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), Blob(v.as_bytes().to_vec())))
        .collect()
}

/// The job series.
struct JobMetrics {
    events: prometheus::IntCounterVec,
    pending: prometheus::IntGauge,
    oldest: prometheus::Gauge,
    deliveries: prometheus::IntCounterVec,
}

impl JobMetrics {
    fn new(registry: &prometheus::Registry) -> prometheus::Result<JobMetrics> {
        let events = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "weir_jobs_total",
                "Async jobs by event: accepted, succeeded, failed, dead, rerun",
            ),
            &["event"],
        )?;
        let pending = prometheus::IntGauge::new(
            "weir_jobs_pending",
            "Async jobs queued or running (the queue depth; the fleet's with Redis)",
        )?;
        let oldest = prometheus::Gauge::new(
            "weir_jobs_oldest_pending_seconds",
            "How long the oldest job queued or running has waited since it was accepted",
        )?;
        let deliveries = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "weir_webhook_deliveries_total",
                "Webhook delivery attempts by result: delivered, retry, gone, dead",
            ),
            &["result"],
        )?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(oldest.clone()))?;
        registry.register(Box::new(deliveries.clone()))?;
        Ok(JobMetrics {
            events,
            pending,
            oldest,
            deliveries,
        })
    }

    fn event(&self, event: &str) {
        self.events.with_label_values(&[event]).inc();
    }
}

/// Why a job could not be accepted; each is one JSON error response.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The bounds are reached.
    #[error("the job queue is full ({0}); retry later")]
    QueueFull(&'static str),
    /// The journal did not take the job: nothing was accepted.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// weir is stopping.
    #[error("weir is shutting down and accepts no new async requests")]
    ShuttingDown,
}

impl AcceptError {
    /// The 503 with `Retry-After`.
    pub fn to_response(&self, request_id: &str) -> Response<ProxyBody> {
        let code = match self {
            AcceptError::QueueFull(_) => "queue_full",
            AcceptError::Journal(_) => "journal_unavailable",
            AcceptError::ShuttingDown => "shutting_down",
        };
        let mut resp = json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": code, "message": self.to_string(), "request_id": request_id}),
        );
        resp.headers_mut().insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(RETRY_AFTER_SECS),
        );
        resp
    }
}

/// How many cut-off runs make a job fail without running again. A request that makes
/// weir crash (or its process be killed) each time it runs would otherwise crash-loop
/// every restart, or every fleet process in turn.
pub const MAX_CUT_OFF_RUNS: u32 = 5;

/// How often the queue gauges are refreshed and finished jobs purged.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

/// The job system: store, workers and deliveries.
pub struct Jobs {
    store: Arc<dyn Store>,
    config: JobsConfig,
    /// Requests waiting (`wait=N`) for a job this process runs to finish.
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
    accepting: AtomicBool,
    stop: watch::Sender<bool>,
    workers: Arc<Semaphore>,
    webhooks: Option<Webhooks>,
    metrics: JobMetrics,
}

impl Jobs {
    /// Opens the store: the embedded journal, or the fleet's Redis streams when
    /// `redis` is given. Nothing runs until [`Jobs::start`].
    pub fn open(
        config: &JobsConfig,
        redis: Option<&crate::config::RedisConfig>,
        telemetry: &Telemetry,
    ) -> Result<Arc<Jobs>, String> {
        let store: Arc<dyn Store> = match redis {
            Some(r) => Arc::new(fleet::Fleet::new(r, config)?),
            None => {
                let path = config.journal.as_ref().ok_or(
                    "`journal` is required unless [state] backend = \"redis\" keeps the jobs",
                )?;
                let journal = Journal::open(path).map_err(|e| e.to_string())?;
                Arc::new(Embedded::open(journal).map_err(|e| e.to_string())?)
            }
        };
        Jobs::with_store(store, config, telemetry)
    }

    /// The job system over `store`.
    pub fn with_store(
        store: Arc<dyn Store>,
        config: &JobsConfig,
        telemetry: &Telemetry,
    ) -> Result<Arc<Jobs>, String> {
        let webhooks = config
            .webhooks
            .as_ref()
            .map(|w| Webhooks::new(w, telemetry.upstreams.clone()))
            .transpose()
            .map_err(|e| format!("[jobs.webhooks]: {e}"))?;
        let metrics = JobMetrics::new(&telemetry.registry).map_err(|e| e.to_string())?;
        Ok(Arc::new(Jobs {
            store,
            config: config.clone(),
            waiters: Mutex::new(HashMap::new()),
            accepting: AtomicBool::new(true),
            stop: watch::channel(false).0,
            workers: Arc::new(Semaphore::new(config.workers)),
            webhooks,
            metrics,
        }))
    }

    /// Whether callbacks are configured.
    pub fn webhooks(&self) -> Option<&Webhooks> {
        self.webhooks.as_ref()
    }

    /// Starts the workers, the deliverers and the housekeeping.
    pub fn start(self: &Arc<Self>, proxy: Arc<Proxy>) {
        tokio::spawn(self.clone().dispatch(proxy));
        tokio::spawn(self.clone().deliveries());
        tokio::spawn(self.clone().housekeeping());
    }

    /// Stops accepting async requests (they get 503 `shutting_down`), stops starting
    /// jobs, and waits up to `drain` for running ones. A job still running after that
    /// stays `running` and runs again: at the next start, or, in a fleet, on another
    /// process after the visibility timeout.
    pub async fn shutdown(&self, drain: Duration) {
        self.accepting.store(false, Ordering::SeqCst);
        let _ = self.stop.send(true);
        let all = u32::try_from(self.config.workers).unwrap_or(u32::MAX);
        if tokio::time::timeout(drain, self.workers.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                "drain timeout passed with jobs running; they run again at the next start"
            );
        }
    }

    /// Stops accepting new async requests at once (the first step of a shutdown).
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Stores `job` durably and queues it. `waiter` is told when it finishes.
    pub async fn accept(
        &self,
        job: Job,
        waiter: Option<oneshot::Sender<()>>,
    ) -> Result<(), AcceptError> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(AcceptError::ShuttingDown);
        }
        if let Some(w) = waiter {
            self.waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(job.id.clone())
                .or_default()
                .push(w);
        }
        let bounds = Bounds {
            jobs: self.config.max_pending,
            bytes: self.config.max_pending_bytes.0,
        };
        if let Err(e) = self.store.accept(&job, bounds).await {
            self.waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&job.id);
            if let AcceptError::Journal(why) = &e {
                tracing::error!(error = %why, "cannot store an async request; answered 503");
            }
            return Err(e);
        }
        self.metrics.event("accepted");
        Ok(())
    }

    /// The job with this id.
    pub async fn get(&self, id: &str) -> Result<Option<Job>, JournalError> {
        self.store.get(id).await
    }

    /// Answers `GET /_weir/jobs/<id>`.
    pub async fn serve_get(
        &self,
        method: &http::Method,
        rest: &str,
        request_id: &str,
    ) -> Response<ProxyBody> {
        let fail = |status: StatusCode, code: &str, message: String| {
            json_response(
                status,
                &serde_json::json!({"error": code, "message": message, "request_id": request_id}),
            )
        };
        if method != http::Method::GET && method != http::Method::HEAD {
            let mut r = fail(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "job URLs answer GET only".to_owned(),
            );
            r.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let not_found = || {
            fail(
                StatusCode::NOT_FOUND,
                "job_not_found",
                "no such job (never accepted, or purged after its retention)".to_owned(),
            )
        };
        if rest.len() != 32 || !rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return not_found();
        }
        match self.get(rest).await {
            Ok(Some(job)) => json_response(StatusCode::OK, &job.to_json()),
            Ok(None) => not_found(),
            Err(e) => fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "journal_unavailable",
                e.to_string(),
            ),
        }
    }

    /// Waits for the store's next claim, or the stop; a failing store is retried after
    /// a pause.
    async fn next<'a>(
        &'a self,
        stop: &mut watch::Receiver<bool>,
        lane: impl Fn() -> BoxFuture<'a, Result<Claim, JournalError>>,
    ) -> Option<Claim> {
        loop {
            let next = tokio::select! {
                _ = stop.wait_for(|s| *s) => return None,
                next = lane() => next,
            };
            match next {
                Ok(claim) => return Some(claim),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take a job from the store; trying again");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return None,
                        () = tokio::time::sleep(STORE_RETRY) => {}
                    }
                }
            }
        }
    }

    /// Takes jobs from the run lane and runs each with a worker permit, until the
    /// shutdown.
    async fn dispatch(self: Arc<Self>, proxy: Arc<Proxy>) {
        let mut stop = self.stop.subscribe();
        loop {
            let permit = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                p = self.workers.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let Some(claim) = self.next(&mut stop, || self.store.next_run()).await else {
                return;
            };
            let jobs = self.clone();
            let proxy = proxy.clone();
            tokio::spawn(async move {
                jobs.holding(&claim, jobs.run(&proxy, &claim)).await;
                drop(permit);
            });
        }
    }

    /// Takes jobs from the delivery lane and delivers each, until the shutdown.
    async fn deliveries(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        while let Some(claim) = self.next(&mut stop, || self.store.next_delivery()).await {
            let jobs = self.clone();
            tokio::spawn(async move { jobs.holding(&claim, jobs.deliver(&claim)).await });
        }
    }

    /// Runs `work` while keeping `claim` from returning to its lane.
    /// Only a shared store's claims time out; the embedded store's need no timer.
    async fn holding(&self, claim: &Claim, work: impl std::future::Future<Output = ()>) {
        if !self.store.shared() {
            return work.await;
        }
        let keep = async {
            loop {
                tokio::time::sleep(self.config.visibility_timeout.0 / 3).await;
                self.store.touch(claim).await;
            }
        };
        tokio::select! {
            () = work => {}
            () = keep => {}
        }
    }

    /// Runs one job and records its outcome.
    async fn run(self: &Arc<Self>, proxy: &Proxy, claim: &Claim) {
        let id = claim.id.as_str();
        let mut job = match self.store.get(id).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                tracing::error!(job = id, "a queued job is missing from the store");
                return;
            }
            Err(e) => {
                tracing::error!(job = id, error = %e, "cannot read a queued job; it runs again later");
                return;
            }
        };
        if job.state.is_final() {
            // Run by another claim already (a fleet process that seemed dead was not).
            if let Err(e) = self.store.finish(&job, claim, false).await {
                tracing::warn!(job = id, error = %e, "cannot give back a finished job's claim");
            }
            return;
        }
        // Still `running`: the run that had it never finished.
        if job.state == JobState::Running {
            job.cut_off += 1;
        }
        if job.cut_off >= MAX_CUT_OFF_RUNS {
            tracing::error!(job = id, route = %job.route, runs = job.cut_off, "a job's runs were cut off too often; it fails without running again");
            job.error = Some(format!(
                "its run was cut off {} times (weir stopped, or lost its claim, while it ran), so it is not run again; POST /jobs/{id}/rerun on the admin API runs it once more",
                job.cut_off
            ));
        } else {
            job.state = JobState::Running;
            job.attempts += 1;
            job.started_at_ms = Some(now_ms());
            match self.store.put(&job).await {
                Ok(true) => {}
                Ok(false) => {
                    // Another claim finished it meanwhile (a takeover of a live process).
                    if let Err(e) = self.store.finish(&job, claim, false).await {
                        tracing::warn!(job = id, error = %e, "cannot give back a finished job's claim");
                    }
                    return;
                }
                Err(e) => tracing::warn!(job = id, error = %e, "cannot record that a job started"),
            }
            match proxy.run_job(&job).await {
                Ok(JobOutput::Answer(result)) => job.result = Some(result),
                Ok(JobOutput::Targets(outcomes)) => job.targets = Some(outcomes),
                Ok(JobOutput::Calls(outcomes)) => job.calls = Some(outcomes),
                Err(why) => job.error = Some(why),
            }
        }
        job.state = match job.error {
            None => job.outcome(),
            Some(_) => JobState::Failed,
        };
        let now = now_ms();
        job.finished_at_ms = Some(now);
        if let Some(w) = &mut job.webhook {
            w.state = DeliveryState::Pending;
            w.next_at_ms = now;
        }
        let recorded = self
            .persist(id, "record a job's outcome", || {
                self.store.finish(&job, claim, true)
            })
            .await;
        if recorded.is_none() {
            // Stopping: left `running`, it runs again at the next start (or, in a fleet,
            // on another process), with the same key.
            return;
        }
        let event = if job.state == JobState::Succeeded {
            "succeeded"
        } else {
            "failed"
        };
        self.metrics.event(event);
        tracing::info!(job = id, route = %job.route, state = event, attempts = job.attempts, "job finished");
        let waiters = self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        for w in waiters.into_iter().flatten() {
            let _ = w.send(());
        }
    }

    /// Delivers a job's webhook until it is delivered, gone or dead.
    async fn deliver(&self, claim: &Claim) {
        let id = claim.id.as_str();
        let Some(hooks) = &self.webhooks else {
            tracing::error!(
                job = id,
                "a webhook is owed but [jobs.webhooks] is not configured"
            );
            return;
        };
        loop {
            let read = self.persist(id, "read a job to deliver", || self.store.get(id));
            let Some(Some(mut job)) = read.await else {
                return;
            };
            let Some(mut w) = job
                .webhook
                .clone()
                .filter(|w| w.state == DeliveryState::Pending)
            else {
                // Settled already: give the claim back.
                if let Err(e) = self.store.settle(&job, claim).await {
                    tracing::warn!(job = %id, error = %e, "cannot give back a delivery's claim");
                }
                return;
            };
            let wait = Duration::from_millis(w.next_at_ms.saturating_sub(now_ms()));
            tokio::time::sleep(wait).await;
            let body = serde_json::json!({
                "type": "job.finished",
                "timestamp": crate::clock::rfc3339(SystemTime::now()),
                "data": job.to_json(),
            });
            let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
            let attempt = hooks.deliver(&w.url, &w.id, body).await;
            w.attempts += 1;
            let result = match attempt {
                Attempt::Delivered => {
                    w.state = DeliveryState::Delivered;
                    w.last_error = None;
                    "delivered"
                }
                Attempt::Gone => {
                    w.state = DeliveryState::Gone;
                    w.last_error = Some("the receiver answered 410 Gone".to_owned());
                    "gone"
                }
                Attempt::Failed {
                    reason,
                    retry_after,
                } => {
                    w.last_error = Some(reason);
                    let failures = w.attempts as usize;
                    match webhook::next_wait(&hooks.schedule, failures, retry_after, rand::random())
                    {
                        Some(wait) => {
                            w.next_at_ms =
                                now_ms() + u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                            "retry"
                        }
                        None => {
                            w.state = DeliveryState::Dead;
                            job.state = JobState::Dead;
                            self.metrics.event("dead");
                            "dead"
                        }
                    }
                }
            };
            self.metrics.deliveries.with_label_values(&[result]).inc();
            tracing::info!(job = %id, webhook_id = %w.id, attempt = w.attempts, result, "webhook delivery");
            let settled = w.state != DeliveryState::Pending;
            job.webhook = Some(w);
            let recorded = if settled {
                self.persist(id, "record a delivery", || self.store.settle(&job, claim))
                    .await
                    .map(|()| false)
            } else {
                // `false`: another claim settled it meanwhile.
                self.persist(id, "record a delivery", || self.store.put(&job))
                    .await
            };
            if recorded != Some(true) {
                return;
            }
        }
    }

    /// Runs `op` on the store until it succeeds, pausing [`STORE_RETRY`] between tries;
    /// `None` once weir is stopping. A store that cannot be written (a full disk, Redis
    /// away) must not lose what a worker holds: a job's outcome, a delivery's progress.
    /// The embedded store hands a job out once per start, so giving up here would leave
    /// it unfinished until a restart; in a fleet, another process would run it again.
    async fn persist<'a, T>(
        &self,
        job: &str,
        what: &str,
        mut op: impl FnMut() -> BoxFuture<'a, Result<T, JournalError>>,
    ) -> Option<T> {
        let mut stop = self.stop.subscribe();
        let mut failures = 0u32;
        loop {
            match op().await {
                Ok(v) => {
                    if failures > 0 {
                        tracing::info!(job, failures, "the job store works again: {what} done");
                    }
                    return Some(v);
                }
                Err(e) => {
                    if failures == 0 {
                        tracing::error!(job, error = %e, "cannot {what}; trying again until the store takes it");
                    }
                    failures += 1;
                }
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {
                    tracing::warn!(job, "stopping before the job store took it: cannot {what}");
                    return None;
                }
                () = tokio::time::sleep(STORE_RETRY) => {}
            }
        }
    }

    /// Dead jobs, for the admin API.
    pub async fn dead(&self) -> Result<Vec<Job>, JournalError> {
        self.store.dead().await
    }

    /// Re-delivers a dead job's webhook from the start of the schedule. `Ok(false)`
    /// when there is no such dead job.
    pub async fn redeliver(&self, id: &str) -> Result<bool, JournalError> {
        let Some(mut job) = self.get(id).await? else {
            return Ok(false);
        };
        let Some(w) = job.webhook.as_mut().filter(|_| job.state == JobState::Dead) else {
            return Ok(false);
        };
        w.state = DeliveryState::Pending;
        w.attempts = 0;
        w.next_at_ms = now_ms();
        job.state = job.outcome();
        self.store.redeliver(&job).await?;
        Ok(true)
    }

    /// Runs a failed or dead job again, from the start: same request, same
    /// idempotency key, its webhook (if any) owed afresh. `Ok(None)` when there is no
    /// such job; `Ok(Some(state))` names the state that refused it (queued, running,
    /// succeeded).
    pub async fn rerun(&self, id: &str) -> Result<Option<Result<(), JobState>>, JournalError> {
        let Some(mut job) = self.get(id).await? else {
            return Ok(None);
        };
        if !matches!(job.state, JobState::Failed | JobState::Dead) {
            return Ok(Some(Err(job.state)));
        }
        job.state = JobState::Queued;
        job.result = None;
        job.error = None;
        job.cut_off = 0;
        job.started_at_ms = None;
        job.finished_at_ms = None;
        if let Some(w) = &mut job.webhook {
            w.state = DeliveryState::Pending;
            w.attempts = 0;
            w.last_error = None;
        }
        self.store.requeue(&job).await?;
        self.metrics.event("rerun");
        tracing::info!(job = id, route = %job.route, "job queued again by the admin API");
        Ok(Some(Ok(())))
    }

    /// The queue for `/status`: pending jobs by route, their bytes and the oldest's age.
    pub async fn status(&self) -> serde_json::Value {
        let mut status = match self.store.stats().await {
            Ok(s) => serde_json::json!({
                "pending": s.pending,
                "pending_bytes": s.bytes,
                "oldest_pending_seconds": s.oldest_accepted_ms.map(age_secs),
                "routes": s.routes,
                "accepting": self.accepting.load(Ordering::SeqCst),
            }),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        status["store"] = if self.store.shared() {
            "redis"
        } else {
            "journal"
        }
        .into();
        status
    }

    /// Refreshes the queue gauges and removes finished jobs older than the retention.
    async fn housekeeping(self: Arc<Self>) {
        let retention = u64::try_from(self.config.retention.0.as_millis()).unwrap_or(u64::MAX);
        let mut stop = self.stop.subscribe();
        let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            match self.store.stats().await {
                Ok(s) => {
                    self.metrics
                        .pending
                        .set(i64::try_from(s.pending).unwrap_or(i64::MAX));
                    self.metrics
                        .oldest
                        .set(s.oldest_accepted_ms.map_or(0.0, age_secs));
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the job queue's depth"),
            }
            match self.store.purge(now_ms().saturating_sub(retention)).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(jobs = n, "purged finished jobs"),
                Err(e) => tracing::warn!(error = %e, "cannot purge finished jobs"),
            }
        }
    }

    /// Waits up to `wait` for the job to finish, then answers its result, or `None`.
    /// In a fleet another process may run it, so the store is also read now and then.
    pub async fn wait_result(
        &self,
        id: &str,
        rx: oneshot::Receiver<()>,
        wait: Duration,
    ) -> Option<Response<ProxyBody>> {
        let finished = async {
            if !self.store.shared() {
                return rx.await.is_ok();
            }
            let mut rx = std::pin::pin!(rx);
            loop {
                tokio::select! {
                    r = &mut rx => return r.is_ok(),
                    () = tokio::time::sleep(FLEET_WAIT_POLL) => {}
                }
                if self
                    .get(id)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|j| j.state.is_final())
                {
                    return true;
                }
            }
        };
        if !tokio::time::timeout(wait, finished).await.ok()? {
            return None;
        }
        self.get(id).await.ok()??.to_response()
    }
}

/// Seconds since `ms` (Unix ms).
fn age_secs(ms: u64) -> f64 {
    now_ms().saturating_sub(ms) as f64 / 1000.0
}

/// How long a failing store is left before the workers ask again.
const STORE_RETRY: Duration = Duration::from_millis(500);

/// How often a `wait=N` request in a fleet reads the job.
const FLEET_WAIT_POLL: Duration = Duration::from_millis(50);

/// A queued job for tests: route `api`, POST `/x`, its id as body and idempotency key,
/// accepted at 1 ms.
#[cfg(test)]
pub(crate) fn test_job(id: &str) -> Job {
    Job {
        id: id.to_owned(),
        route: "api".to_owned(),
        state: JobState::Queued,
        method: "POST".to_owned(),
        target: "/x".to_owned(),
        headers: vec![("idempotency-key".to_owned(), Blob(id.as_bytes().to_vec()))],
        body: Blob(id.as_bytes().to_vec()),
        idempotency_key: id.to_owned(),
        attempts: 0,
        cut_off: 0,
        accepted_at_ms: 1,
        started_at_ms: None,
        finished_at_ms: None,
        result: None,
        error: None,
        webhook: None,
        targets: None,
        calls: None,
    }
}

#[cfg(test)]
mod tests {
    use super::test_job as job;
    use super::*;

    fn outcome(target: Option<&str>, status: u16, error: Option<&str>) -> CallOutcome {
        CallOutcome {
            target: target.map(str::to_owned),
            status,
            headers: vec![("x-a".to_owned(), Blob(b"1".to_vec()))],
            body: Blob(vec![0xff, 0]),
            attempts: 1,
            duration_ms: 3,
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn a_job_outcome_follows_its_kind() {
        let mut job = test_job("a");
        assert_eq!(
            job.outcome(),
            JobState::Failed,
            "a run with nothing recorded"
        );
        job.targets = Some(vec![
            outcome(Some("t0"), 200, None),
            outcome(Some("t1"), 404, None),
        ]);
        assert_eq!(job.outcome(), JobState::Succeeded);
        job.targets.as_mut().unwrap()[1] = outcome(Some("t1"), 504, Some("timeout"));
        assert_eq!(job.outcome(), JobState::Failed);
        let mut batch = test_job("b");
        batch.calls = Some(vec![outcome(None, 500, None)]);
        assert_eq!(batch.outcome(), JobState::Succeeded, "a batch that ran");
        // The inline answer of a fan-out job is its summary.
        let resp = job.to_response().unwrap();
        assert_eq!(resp.status(), 200);
        let json = job.to_json();
        assert_eq!(json["targets"][1]["error"], "timeout");
        assert_eq!(json["targets"][0]["body_base64"], "/wA=");
        assert_eq!(
            json["targets"][0]["headers"][0],
            serde_json::json!(["x-a", "1"])
        );
    }

    fn prefer(values: &[&str]) -> Prefer {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("prefer", HeaderValue::from_str(v).unwrap());
        }
        Prefer::from_headers(&h)
    }

    #[test]
    fn prefer_reads_respond_async_and_wait() {
        assert_eq!(prefer(&[]), Prefer::default());
        assert_eq!(
            prefer(&["respond-async, wait=10"]),
            Prefer {
                respond_async: true,
                wait: Some(Duration::from_secs(10))
            }
        );
        assert_eq!(
            prefer(&["return=minimal", "Respond-Async; foo=bar", "wait = \"3\""]),
            Prefer {
                respond_async: true,
                wait: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(prefer(&["wait=soon"]), Prefer::default());
        assert_eq!(prefer(&["respond-asyncx"]), Prefer::default());
    }

    #[test]
    fn reserved_prefixes() {
        assert!(claims_reserved("/_weir/jobs/"));
        assert!(claims_reserved("/_weir"));
        assert!(!claims_reserved("/"));
        assert!(!claims_reserved("/api/_weir"));
    }

    #[test]
    fn the_journal_keeps_jobs_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.redb");
        {
            let j = Journal::open(&path).unwrap();
            let mut a = job("a");
            a.body = Blob(vec![0xff, 0, 1]);
            j.put(&a).unwrap();
            j.put(&job("b")).unwrap();
            let mut done = job("b");
            done.state = JobState::Succeeded;
            done.result = Some(JobResult {
                status: 200,
                headers: vec![],
                body: Blob(b"ok".to_vec()),
            });
            j.put(&done).unwrap();
        }
        let j = Journal::open(&path).unwrap();
        let a = j.get("a").unwrap().unwrap();
        assert_eq!(a.body.0, vec![0xff, 0, 1]);
        assert_eq!(j.get("b").unwrap().unwrap().state, JobState::Succeeded);
        assert_eq!(j.all().unwrap().len(), 2);
    }

    #[test]
    fn the_purge_removes_only_jobs_finished_by_the_cutoff_that_owe_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.redb")).unwrap();
        let finished = |id: &str, at: u64| {
            let mut job = job(id);
            job.state = JobState::Succeeded;
            job.finished_at_ms = Some(at);
            job
        };
        j.put(&job("queued")).unwrap();
        j.put(&finished("old", 100)).unwrap();
        j.put(&finished("at-cutoff", 200)).unwrap();
        j.put(&finished("new", 201)).unwrap();
        let mut owed = finished("owed", 50);
        owed.webhook = Some(Delivery {
            id: "msg_owed".to_owned(),
            url: "http://127.0.0.1:1/".to_owned(),
            state: DeliveryState::Pending,
            attempts: 0,
            next_at_ms: 0,
            last_error: None,
        });
        j.put(&owed).unwrap();
        // Finished at 150, then run again: its old index entry must not remove it.
        j.put(&finished("rerun", 150)).unwrap();
        j.put(&job("rerun")).unwrap();
        assert_eq!(j.purge(200).unwrap(), 2);
        let mut left: Vec<String> = j.all().unwrap().into_iter().map(|j| j.id).collect();
        left.sort();
        assert_eq!(left, ["new", "owed", "queued", "rerun"]);
        assert_eq!(j.purge(200).unwrap(), 0);
        assert_eq!(j.purge(1000).unwrap(), 1, "only `new` is left to purge");
    }

    /// A store whose every write fails, as a full disk or a lost Redis does.
    struct Broken;

    fn broken<T>() -> Result<T, JournalError> {
        Err(JournalError::new("disk full".to_owned()))
    }

    impl Store for Broken {
        fn accept<'a>(&'a self, _: &'a Job, _: Bounds) -> BoxFuture<'a, Result<(), AcceptError>> {
            Box::pin(async { Err(broken::<()>().unwrap_err().into()) })
        }
        fn get<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<Job>, JournalError>> {
            Box::pin(async { broken() })
        }
        fn put<'a>(&'a self, _: &'a Job) -> BoxFuture<'a, Result<bool, JournalError>> {
            Box::pin(async { broken() })
        }
        fn next_run(&self) -> BoxFuture<'_, Result<Claim, JournalError>> {
            Box::pin(async { broken() })
        }
        fn finish<'a>(
            &'a self,
            _: &'a Job,
            _: &'a Claim,
            _: bool,
        ) -> BoxFuture<'a, Result<(), JournalError>> {
            Box::pin(async { broken() })
        }
        fn next_delivery(&self) -> BoxFuture<'_, Result<Claim, JournalError>> {
            Box::pin(async { broken() })
        }
        fn settle<'a>(
            &'a self,
            _: &'a Job,
            _: &'a Claim,
        ) -> BoxFuture<'a, Result<(), JournalError>> {
            Box::pin(async { broken() })
        }
        fn touch<'a>(&'a self, _: &'a Claim) -> BoxFuture<'a, ()> {
            Box::pin(std::future::ready(()))
        }
        fn redeliver<'a>(&'a self, _: &'a Job) -> BoxFuture<'a, Result<(), JournalError>> {
            Box::pin(async { broken() })
        }
        fn requeue<'a>(&'a self, _: &'a Job) -> BoxFuture<'a, Result<(), JournalError>> {
            Box::pin(async { broken() })
        }
        fn dead(&self) -> BoxFuture<'_, Result<Vec<Job>, JournalError>> {
            Box::pin(async { broken() })
        }
        fn purge(&self, _: u64) -> BoxFuture<'_, Result<usize, JournalError>> {
            Box::pin(async { broken() })
        }
        fn stats(&self) -> BoxFuture<'_, Result<store::QueueStats, JournalError>> {
            Box::pin(async { broken() })
        }
        fn shared(&self) -> bool {
            false
        }
    }

    fn jobs_config() -> JobsConfig {
        toml::from_str("journal = \"unused.redb\"").unwrap()
    }

    #[tokio::test]
    async fn a_store_that_cannot_write_gives_503_journal_unavailable_and_keeps_nothing() {
        let telemetry = Telemetry::new().unwrap();
        let jobs = Jobs::with_store(Arc::new(Broken), &jobs_config(), &telemetry).unwrap();
        let (tx, _rx) = oneshot::channel();
        let err = jobs.accept(job("a"), Some(tx)).await.unwrap_err();
        let resp = err.to_response("req-1");
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[http::header::RETRY_AFTER], "1");
        assert!(matches!(err, AcceptError::Journal(_)), "{err}");
        assert!(err.to_string().contains("disk full"), "{err}");
        assert!(
            jobs.waiters.lock().unwrap().is_empty(),
            "the waiter was kept"
        );
        assert_eq!(
            jobs.metrics.events.with_label_values(&["accepted"]).get(),
            0
        );
        // `/status` says the store cannot be read rather than showing an empty queue.
        assert_eq!(jobs.status().await["error"], "job journal: disk full");
    }

    #[tokio::test]
    async fn the_embedded_store_requeues_unfinished_jobs_and_owed_webhooks_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("j.redb")).unwrap();
        let mut running = job("run");
        running.state = JobState::Running;
        journal.put(&running).unwrap();
        let mut owed = job("owed");
        owed.state = JobState::Succeeded;
        owed.finished_at_ms = Some(2);
        owed.webhook = Some(Delivery {
            id: "msg_owed".to_owned(),
            url: "http://127.0.0.1:1/hook".to_owned(),
            state: DeliveryState::Pending,
            attempts: 1,
            next_at_ms: 0,
            last_error: None,
        });
        journal.put(&owed).unwrap();
        let mut done = job("done");
        done.state = JobState::Succeeded;
        journal.put(&done).unwrap();
        let store = Embedded::open(journal).unwrap();
        assert_eq!(store.next_run().await.unwrap().id, "run");
        let delivery = store.next_delivery().await.unwrap();
        assert_eq!(delivery.id, "owed");
        let stats = store.stats().await.unwrap();
        assert_eq!(stats.pending, 1);
        assert_eq!(stats.routes["api"], 1);
        assert_eq!(stats.oldest_accepted_ms, Some(1));
        // The bound counts the requeued job.
        let full = store
            .accept(
                &job("new"),
                Bounds {
                    jobs: 1,
                    bytes: 1 << 20,
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(full, AcceptError::QueueFull(_)), "{full}");
    }

    #[test]
    fn binary_result_bodies_show_as_base64() {
        let mut j = job("c");
        j.result = Some(JobResult {
            status: 200,
            headers: vec![
                ("x-a".to_owned(), Blob(b"1".to_vec())),
                ("x-a".to_owned(), Blob(b"2".to_vec())),
            ],
            body: Blob(vec![0xff, 0xfe]),
        });
        let v = j.to_json();
        assert_eq!(v["result"]["body_base64"], "//4=");
        assert!(v["result"].get("body").is_none());
        assert_eq!(v["result"]["headers"]["x-a"], "1, 2");
        j.result.as_mut().unwrap().body = Blob(b"hi".to_vec());
        assert_eq!(j.to_json()["result"]["body"], "hi");
    }
}
