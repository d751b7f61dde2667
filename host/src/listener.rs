//! The client-facing listener: HTTP/1.1 and HTTP/2 (h2c, or ALPN over TLS), limits on
//! headers, bodies and header-read time, and the per-request entry into the chain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;

use crate::accept;
use crate::batch;
use crate::body::{self, ProxyBody};
use crate::chain::{self, Exchange};
use crate::config::BatchConfig;
use crate::config::{Admin as AdminConfig, AsyncMode, FanoutMode, Listen};
use crate::drain::Drain;
use crate::error::{Origin as ErrorOrigin, ProxyError, json_response};
use crate::fanout::{self, Fanout};
use crate::headers::{self, hex_into};
use crate::jobs::{self, CallOutcome, JobOutput, Jobs};
use crate::otlp::{Finished, Otlp, SpanIds};
use crate::recent::{NewRecord, Recent, Tee, Trace};
use crate::router::{Router, check_host};
use crate::slow_clients::{Flushes, InHand, Sweep, Timeouts};
use crate::telemetry::Telemetry;
use crate::workers::Workers;

mod h1;
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod h1_compare;

/// The longest client-supplied `x-request-id` weir keeps; longer ones are replaced.
const MAX_REQUEST_ID: usize = 200;

/// What every connection shares: the current route table, the listener's limits, the
/// metrics and the recent-request ring.
pub struct Proxy {
    router: RwLock<Arc<Router>>,
    max_body: u64,
    body_read_timeout: Duration,
    /// `[listen] min_body_rate`, in bytes per second; 0 checks none.
    min_body_rate: u64,
    telemetry: Arc<Telemetry>,
    recent: Recent,
    /// The async-job system, with `[jobs]`.
    jobs: Option<Arc<Jobs>>,
    /// Batch requests, with `[batch]`.
    batch: Option<BatchConfig>,
    /// Span export, with `[telemetry.otlp]`.
    otlp: Option<Arc<Otlp>>,
    /// `url.scheme` of the requests this listener takes, for their spans.
    scheme: &'static str,
}

/// What a batch call's slot shows of how serving it went: put on its response.
#[derive(Clone, Copy)]
struct CallInfo {
    attempts: u32,
    error: Option<&'static str>,
}

/// Where a request comes from: a client connection, a replay from the admin API, or a
/// job's run.
struct Origin<'a> {
    client: SocketAddr,
    /// The id of the request being replayed.
    replay_of: Option<&'a str>,
    /// The id of the job being run.
    job: Option<&'a str>,
    /// The id of the batch this request is a call of.
    batch: Option<&'a str>,
}

impl Proxy {
    /// A proxy serving `router` with the limits in `listen`, recording recent requests
    /// as `admin` says (none without an admin listener: nobody could read them), and
    /// exporting spans to `otlp`.
    pub fn new(
        router: Router,
        listen: &Listen,
        admin: Option<&AdminConfig>,
        telemetry: Arc<Telemetry>,
        jobs: Option<Arc<Jobs>>,
        batch: Option<&BatchConfig>,
        otlp: Option<Arc<Otlp>>,
    ) -> Arc<Proxy> {
        let recent = match admin {
            Some(a) => Recent::new(a.recent_requests, a.recent_body_bytes.0, &a.redact_headers),
            None => Recent::new(0, 0, &[]),
        };
        Arc::new(Proxy {
            router: RwLock::new(Arc::new(router)),
            max_body: listen.max_body_bytes.0,
            body_read_timeout: listen.body_read_timeout.0,
            min_body_rate: listen.min_body_rate.0,
            telemetry,
            recent,
            jobs,
            batch: batch.cloned(),
            otlp,
            scheme: if listen.tls.is_some() {
                "https"
            } else {
                "http"
            },
        })
    }

    /// Span export, with `[telemetry.otlp]`.
    pub fn otlp(&self) -> Option<&Arc<Otlp>> {
        self.otlp.as_ref()
    }

    /// The async-job system, with `[jobs]`.
    pub fn jobs(&self) -> Option<&Arc<Jobs>> {
        self.jobs.as_ref()
    }

    /// Makes `router` the table for new requests. Requests already running keep the
    /// table (and chains) they started with.
    pub fn swap(&self, router: Router) {
        *self.router.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(router);
    }

    /// The route table requests use now.
    pub fn router(&self) -> Arc<Router> {
        self.router
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The recent-request ring.
    pub fn recent(&self) -> &Recent {
        &self.recent
    }

    /// Handles one request; never fails: every error becomes a JSON response. `in_hand`
    /// is kept until the request's body has been read to its end.
    pub async fn handle(
        &self,
        client: SocketAddr,
        req: Request<Incoming>,
        in_hand: Option<InHand>,
    ) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        // A request without a body (most GETs) needs neither the drain nor the limit.
        let body = if body.is_end_stream() {
            body::empty()
        } else {
            body::boxed(body::Drain::holding(body, in_hand))
        };
        // Boxed: the head goes down through several futures, and a box moves as a
        // pointer where the head would be copied into each.
        self.handle_head(client, Box::new(parts), body).await
    }

    /// Handles one request whose body is already weir's; never fails, as
    /// [`Proxy::handle`].
    pub async fn handle_head(
        &self,
        client: SocketAddr,
        parts: Box<http::request::Parts>,
        body: ProxyBody,
    ) -> Response<ProxyBody> {
        let id = request_id(&parts.headers);
        let origin = Origin {
            client,
            replay_of: None,
            job: None,
            batch: None,
        };
        if let Some(batch) = &self.batch
            && parts.uri.path() == batch::PATH
        {
            let mut resp = Box::pin(self.serve_batch(batch, client, &id, *parts, body)).await;
            resp.headers_mut().insert(headers::X_REQUEST_ID, id);
            return resp;
        }
        if let Some(jobs) = &self.jobs
            && let Some(rest) = parts.uri.path().strip_prefix(jobs::PREFIX)
        {
            let id_text = id.to_str().unwrap_or_default();
            let mut resp = Box::pin(jobs.serve_get(&parts.method, rest, id_text)).await;
            resp.headers_mut().insert(headers::X_REQUEST_ID, id.clone());
            return resp;
        }
        self.dispatch(origin, id, parts, body).await
    }

    /// Serves a request as a job when its route is async (and the client asked, where
    /// it must), else through the chain.
    async fn dispatch(
        &self,
        origin: Origin<'_>,
        id: HeaderValue,
        parts: Box<http::request::Parts>,
        body: ProxyBody,
    ) -> Response<ProxyBody> {
        if let Some(jobs) = &self.jobs
            && let Some(route) = self.async_route(&parts)
        {
            return Box::pin(self.accept_job(jobs, id, *parts, body, route)).await;
        }
        self.serve(origin, id, parts, body).await
    }

    /// Answers `POST /_weir/batch`: reads and checks the whole batch (nothing is sent
    /// from a bad one), then runs its calls, or stores it as a job when the client
    /// prefers `respond-async`.
    async fn serve_batch(
        &self,
        config: &BatchConfig,
        client: SocketAddr,
        id: &HeaderValue,
        parts: http::request::Parts,
        body: ProxyBody,
    ) -> Response<ProxyBody> {
        let id_text = id.to_str().unwrap_or_default();
        let fail = |e: ProxyError| e.to_response(None, id_text);
        if parts.method != http::Method::POST {
            let mut r = json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &serde_json::json!({
                    "error": "method_not_allowed",
                    "message": format!("{} takes POST with a JSON list of calls", batch::PATH),
                    "request_id": id_text,
                }),
            );
            r.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        if let Err(e) = check_host(&parts) {
            return fail(e);
        }
        let bytes = match self.read_whole(&parts, body, config.max_bytes.0).await {
            Ok(b) => b,
            Err(e) => return fail(e),
        };
        let calls = match batch::parse(&bytes, config.max_items) {
            Ok(c) => c,
            Err(e) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({
                        "error": "bad_batch",
                        "message": e.to_string(),
                        "pointer": e.pointer,
                        "request_id": id_text,
                    }),
                );
            }
        };
        let prefer = jobs::Prefer::from_headers(&parts.headers);
        if let Some(jobs) = self.jobs.as_ref().filter(|_| prefer.respond_async) {
            let timeout = self.router().longest_timeout();
            let stored = self
                .enqueue(jobs, parts, bytes, batch::JOB_ROUTE, timeout, prefer.wait)
                .await;
            let (Ok(resp) | Err(resp)) = stored;
            tracing::info!(request_id = %id_text, calls = calls.len(), status = resp.status().as_u16(), "async batch");
            return resp;
        }
        let host = parts.headers.get(http::header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let n = calls.len();
        let results = self
            .run_batch(id_text, client, calls, host, config.concurrency)
            .await;
        tracing::info!(request_id = %id_text, calls = n, "batch");
        json_response(
            StatusCode::OK,
            &CallOutcome::batch_answer(id_text, &results),
        )
    }

    /// Runs every call of batch `batch_id`, at most `concurrency` at once, each as if
    /// sent alone; the outcomes in call order.
    async fn run_batch(
        &self,
        batch_id: &str,
        client: SocketAddr,
        calls: Vec<batch::Call>,
        host: Option<HeaderValue>,
        concurrency: usize,
    ) -> Vec<CallOutcome> {
        use futures_util::StreamExt as _;
        // A call's answer is read by the longest deadline a route of this table has.
        let longest = self.router().longest_timeout();
        let budget = &jobs::Budget::new(self.max_body);
        let host = host.as_ref();
        let calls = calls.into_iter().enumerate().map(|(i, call)| async move {
            (i, {
                let started = Instant::now();
                let mut req = Request::new(());
                *req.method_mut() = call.method;
                *req.uri_mut() = http::Uri::from(call.path);
                for (name, value) in call.headers {
                    req.headers_mut().append(name, value);
                }
                if let Some(host) = host
                    && !req.headers().contains_key(http::header::HOST)
                {
                    req.headers_mut().insert(http::header::HOST, host.clone());
                }
                let (parts, ()) = req.into_parts();
                let origin = Origin {
                    client,
                    replay_of: None,
                    job: None,
                    batch: Some(batch_id),
                };
                let id = HeaderValue::from_str(&format!("{batch_id}-{i}"))
                    .unwrap_or_else(|_| new_request_id());
                let resp = self
                    .dispatch(origin, id, Box::new(parts), body::full(call.body))
                    .await;
                let info = resp.extensions().get::<CallInfo>().copied();
                CallOutcome::read(
                    resp,
                    info.and_then(|i| i.error),
                    info.map_or(0, |i| i.attempts),
                    started,
                    started + longest,
                    budget,
                )
                .await
            })
        });
        // Unordered, so that one slow call does not keep later ones from starting.
        let mut done: Vec<(usize, CallOutcome)> = futures_util::stream::iter(calls)
            .buffer_unordered(concurrency)
            .collect()
            .await;
        done.sort_unstable_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, o)| o).collect()
    }

    /// The route's name, its timeout and the client's `wait`, when this request is to
    /// become a job: its route is async and, unless always, the client asked.
    fn async_route(
        &self,
        parts: &http::request::Parts,
    ) -> Option<(String, Duration, Option<Duration>)> {
        let router = self.router();
        if !router.any_async() || check_host(parts).is_err() {
            return None;
        }
        let prefer = jobs::Prefer::from_headers(&parts.headers);
        let mut probe = Request::new(());
        *probe.method_mut() = parts.method.clone();
        *probe.uri_mut() = parts.uri.clone();
        *probe.headers_mut() = parts.headers.clone();
        let (mut probe, ()) = probe.into_parts();
        let route = router.route(&mut probe).ok()?;
        match route.async_mode? {
            AsyncMode::Always => {}
            AsyncMode::Prefer if prefer.respond_async => {}
            AsyncMode::Prefer => return None,
        }
        Some((route.name.clone(), route.timeout, prefer.wait))
    }

    /// Reads the request, stores it as a job, and answers 202 (or, with `wait`, the
    /// result when it comes in time).
    async fn accept_job(
        &self,
        jobs: &Arc<Jobs>,
        id: HeaderValue,
        parts: http::request::Parts,
        body: ProxyBody,
        (route, timeout, wait): (String, Duration, Option<Duration>),
    ) -> Response<ProxyBody> {
        let id_text = id.to_str().unwrap_or_default().to_owned();
        let mut resp = match self
            .store_job(jobs, parts, body, &route, timeout, wait)
            .await
        {
            Ok(resp) => resp,
            Err(resp) => resp,
        };
        let status = resp.status();
        resp.headers_mut().insert(headers::X_REQUEST_ID, id);
        tracing::info!(request_id = %id_text, route = %route, status = status.as_u16(), "async request");
        resp
    }

    async fn store_job(
        &self,
        jobs: &Arc<Jobs>,
        parts: http::request::Parts,
        body: ProxyBody,
        route: &str,
        timeout: Duration,
        wait: Option<Duration>,
    ) -> Result<Response<ProxyBody>, Response<ProxyBody>> {
        let request_id = request_id(&parts.headers);
        let request_id = request_id.to_str().unwrap_or_default();
        let client_error = |e: ProxyError| e.to_response(Some(route), request_id);
        let bytes = self
            .read_whole(&parts, body, self.max_body)
            .await
            .map_err(client_error)?;
        self.enqueue(jobs, parts, bytes, route, timeout, wait).await
    }

    /// A client's body read with the listener's limits: at most `limit` bytes, the
    /// stall timeout and the minimum rate; `fault` records how it failed.
    fn client_body(
        &self,
        body: ProxyBody,
        limit: u64,
        fault: &body::BodyFault,
    ) -> body::ClientBody<ProxyBody> {
        body::ClientBody::new(body, limit, self.body_read_timeout, fault.clone())
            .with_min_rate(self.min_body_rate, self.body_read_timeout)
    }

    /// Reads a client's whole body, at most `limit` bytes: an error is the client's 4xx.
    async fn read_whole(
        &self,
        parts: &http::request::Parts,
        body: ProxyBody,
        limit: u64,
    ) -> Result<Bytes, ProxyError> {
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        let fault = body::BodyFault::new();
        let body = body::boxed(self.client_body(body, limit, &fault));
        body::collect_limited(body, limit)
            .await
            .map_err(|e| match fault.get() {
                Some(f) => f.clone().into(),
                None if body::is_too_large(e.as_ref()) => ProxyError::BodyTooLarge { limit },
                None => ProxyError::BadRequestBody {
                    detail: e.to_string(),
                },
            })
    }

    /// Stores a read request as a job of `route` and answers 202 (or, with `wait`, the
    /// result when it comes in time).
    async fn enqueue(
        &self,
        jobs: &Arc<Jobs>,
        parts: http::request::Parts,
        bytes: Bytes,
        route: &str,
        timeout: Duration,
        wait: Option<Duration>,
    ) -> Result<Response<ProxyBody>, Response<ProxyBody>> {
        let request_id = request_id(&parts.headers);
        let request_id = request_id.to_str().unwrap_or_default();
        let client_error = |e: ProxyError| e.to_response(Some(route), request_id);
        let callback = match parts.headers.get(jobs::CALLBACK_HEADER) {
            None => None,
            Some(v) => {
                let url = v.to_str().map_err(|_| {
                    client_error(ProxyError::BadRequest(format!(
                        "{} is not visible ASCII",
                        jobs::CALLBACK_HEADER
                    )))
                })?;
                let hooks = jobs.webhooks().ok_or_else(|| {
                    client_error(ProxyError::BadRequest(
                        "callbacks are not enabled: [jobs.webhooks] is not configured".to_owned(),
                    ))
                })?;
                hooks
                    .check_url(url)
                    .map_err(|e| client_error(ProxyError::BadRequest(e)))?;
                Some(url.to_owned())
            }
        };
        let job_id = format!("{:032x}", rand::random::<u128>());
        let mut hdrs = parts.headers;
        hdrs.remove("prefer");
        hdrs.remove(jobs::CALLBACK_HEADER);
        hdrs.remove(headers::X_REQUEST_ID);
        let key = match hdrs.get("idempotency-key").and_then(|v| v.to_str().ok()) {
            Some(k) if !k.is_empty() => k.to_owned(),
            _ => {
                let k = format!("weir-{job_id}");
                hdrs.insert(
                    "idempotency-key",
                    HeaderValue::from_str(&k).expect("hex digits"),
                );
                k
            }
        };
        let job = jobs::Job {
            id: job_id.clone(),
            route: route.to_owned(),
            state: jobs::JobState::Queued,
            method: parts.method.to_string(),
            target: parts.uri.to_string(),
            headers: jobs::to_pairs(&hdrs),
            body: jobs::Blob(bytes.to_vec()),
            idempotency_key: key,
            attempts: 0,
            cut_off: 0,
            accepted_at_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            started_at_ms: None,
            finished_at_ms: None,
            result: None,
            error: None,
            targets: None,
            calls: None,
            webhook: callback.map(|url| jobs::Delivery {
                id: format!("msg_{job_id}"),
                url,
                state: jobs::DeliveryState::Pending,
                attempts: 0,
                next_at_ms: 0,
                last_error: None,
            }),
        };
        let (tx, rx) = match wait {
            Some(_) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        jobs.accept(job, tx)
            .await
            .map_err(|e| e.to_response(request_id))?;
        if let (Some(wait), Some(rx)) = (wait, rx)
            && let Some(resp) = jobs.wait_result(&job_id, rx, wait.min(timeout)).await
        {
            return Ok(resp);
        }
        let location = format!("{}{job_id}", jobs::PREFIX);
        let mut resp = json_response(
            StatusCode::ACCEPTED,
            &serde_json::json!({"id": job_id, "state": "queued", "location": location}),
        );
        let h = resp.headers_mut();
        h.insert(
            http::header::LOCATION,
            HeaderValue::from_str(&location).expect("hex digits"),
        );
        h.insert(
            "preference-applied",
            HeaderValue::from_static("respond-async"),
        );
        Ok(resp)
    }

    /// Runs a stored job through its route's chain, as a request with the job's id, and
    /// returns the answer: a plain route's response, a fan-out route's outcome per target,
    /// or a batch's per call. The error says why it could not run.
    pub(crate) async fn run_job(&self, job: &jobs::Job) -> Result<JobOutput, String> {
        let parts = || -> Result<http::request::Parts, String> {
            let mut req = Request::new(());
            *req.method_mut() = http::Method::from_bytes(job.method.as_bytes())
                .map_err(|e| format!("stored method: {e}"))?;
            *req.uri_mut() = job
                .target
                .parse()
                .map_err(|e| format!("stored target: {e}"))?;
            for (name, value) in &job.headers {
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_bytes(&value.0),
                ) {
                    req.headers_mut().append(n, v);
                }
            }
            Ok(req.into_parts().0)
        };
        let client = SocketAddr::from(([127, 0, 0, 1], 0));
        // The upstream sees the job's id as `x-request-id` on every run; `/requests`
        // records each run with `job` set (`/requests?job=<id>` lists them).
        let id = HeaderValue::from_str(&job.id).map_err(|e| e.to_string())?;
        if job.route == batch::JOB_ROUTE {
            // Checked when it was accepted; a batch refused now was stored by another
            // weir build, and is reported rather than half run.
            let calls = batch::parse(&job.body.0, usize::MAX)
                .map_err(|e| format!("the stored batch is not valid: {e}"))?;
            let concurrency = self
                .batch
                .as_ref()
                .map_or_else(crate::config::defaults::batch_concurrency, |b| {
                    b.concurrency
                });
            let host = parts()?.headers.get(http::header::HOST).cloned();
            let outcomes = self
                .run_batch(&job.id, client, calls, host, concurrency)
                .await;
            return Ok(JobOutput::Calls(outcomes));
        }
        let router = self.router();
        let mut probe = parts()?;
        let route = match router.route(&mut probe) {
            Ok(r) if r.name == job.route => r,
            _ => {
                return Err(format!(
                    "route `{}` is gone: a config reload removed it, or it no longer matches this request",
                    job.route
                ));
            }
        };
        if route.fanout.is_some() {
            let started = Instant::now();
            let mut hdrs = probe.headers;
            let traceparent = TraceContext::from_headers(&hdrs).next_hop();
            headers::prepare_upstream(&mut hdrs);
            let fanout = Fanout::new(
                router.clone(),
                route,
                &id,
                client,
                started + route.timeout,
                self.max_body,
                traceparent.header,
                fanout::Request {
                    method: probe.method.clone(),
                    path_with_query: route.upstream_path(&probe.uri),
                    headers: hdrs,
                    body: Bytes::from(job.body.0.clone()),
                },
            );
            let outcomes = fanout.all(job.targets.as_deref().unwrap_or_default()).await;
            route.metrics.record(
                &probe.method,
                StatusCode::OK,
                started.elapsed(),
                Instant::now(),
            );
            return Ok(JobOutput::Targets(outcomes));
        }
        let origin = Origin {
            client,
            replay_of: None,
            job: Some(&job.id),
            batch: None,
        };
        let resp = self
            .serve(
                origin,
                id,
                Box::new(parts()?),
                body::full(Bytes::from(job.body.0.clone())),
            )
            .await;
        let (resp_parts, resp_body) = resp.into_parts();
        let body = body::collect_limited(resp_body, self.max_body)
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        Ok(JobOutput::Answer(jobs::JobResult {
            status: resp_parts.status.as_u16(),
            headers: jobs::to_pairs(&resp_parts.headers),
            body: jobs::Blob(body.to_vec()),
        }))
    }

    async fn serve(
        &self,
        origin: Origin<'_>,
        id: HeaderValue,
        mut parts: Box<http::request::Parts>,
        body: ProxyBody,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let router = self.router();
        // The Host rules are for requests read off a connection; a replay is rebuilt from
        // a record of one that already passed them.
        let routed = match (origin.replay_of, origin.job) {
            (None, None) => check_host(&parts),
            _ => Ok(()),
        }
        .and_then(|()| router.route(&mut parts));
        let route = routed.as_ref().ok().copied();
        let method = parts.method.clone();
        let mut traceparent = TraceContext::from_headers(&parts.headers).next_hop();
        // With span export off, this is all it costs a request.
        let otlp = match &self.otlp {
            None => None,
            Some(o) if traceparent.sampled_by(o) => Some((o, authority(&parts))),
            Some(_) => {
                // A trace weir started and left out goes on marked as left out, so that
                // the upstream does not record spans whose parent was never exported.
                traceparent.unsampled();
                None
            }
        };
        // Everything only `/requests` reads is gathered only when it keeps records.
        let recording = self.recent.enabled();
        let request_headers = if recording {
            parts.headers.clone()
        } else {
            http::HeaderMap::new()
        };
        let (body, request_capture) = if recording {
            let (tee, capture) = Tee::new(body, self.recent.body_cap());
            (body::boxed(tee), Some(capture))
        } else {
            (body, None)
        };
        // request_id() only makes visible-ASCII values.
        let id_text = id.to_str().unwrap_or_default();
        let trace = Mutex::new(Trace::default());
        let result = match routed {
            Err(e) => Err(e),
            Ok(route) => {
                let declared = parts
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if declared.is_some_and(|n| n > self.max_body) {
                    Err(ProxyError::BodyTooLarge {
                        limit: self.max_body,
                    })
                } else {
                    let (body, body_fault) = if body.is_end_stream() {
                        (body, body::BodyFault::never())
                    } else {
                        let fault = body::BodyFault::new();
                        let body = body::boxed(self.client_body(body, self.max_body, &fault));
                        (body, fault)
                    };
                    let mut hdrs = parts.headers;
                    // `x-request-id` is set by the exchange (`Exchange::run`): on the
                    // headers the filters read, and on the upstream request. Where
                    // nothing but the exchange reads the headers (no filters, no
                    // fan-out to other upstreams) and it sets the upstream's `Host`
                    // itself, that replaces the client's.
                    if route.chain.filters().is_empty()
                        && route.fanout.is_none()
                        && route.upstream.host_header().is_some()
                    {
                        headers::prepare_upstream_keeping_host(&mut hdrs);
                    } else {
                        headers::prepare_upstream(&mut hdrs);
                    }
                    let x = Exchange {
                        route: &route.name,
                        chain: &route.chain,
                        upstream: &route.upstream,
                        transport: chain::Transport::Pool(&router.upstreams),
                        id: id_text,
                        id_header: &id,
                        client: origin.client,
                        deadline: started + route.timeout,
                        timeout: route.timeout,
                        max_body: self.max_body,
                        traceparent: &traceparent.header,
                        trace: &trace,
                        record_timings: recording || otlp.is_some(),
                        trace_spans: otlp.is_some(),
                        metrics: &route.metrics,
                        max_attempts: chain::MAX_ATTEMPTS,
                    };
                    // A fan-out reads the whole body itself.
                    let buffered = route.buffer_request && route.fanout.is_none();
                    let body_whole = buffered || parts.extensions.get::<body::Whole>().is_some();
                    let body = if buffered {
                        Box::pin(x.read_body(body, &body_fault))
                            .await
                            .map(body::full)
                    } else {
                        Ok(body)
                    };
                    match body {
                        Err(e) => Err(e),
                        Ok(body) => {
                            let incoming = chain::Incoming {
                                method: parts.method,
                                path_with_query: route.upstream_path(&parts.uri),
                                headers: hdrs,
                                body,
                                body_fault,
                                body_whole,
                            };
                            match &route.fanout {
                                None => x.run(incoming).await,
                                Some((_, mode)) => {
                                    Box::pin(self.fan_out(
                                        &router,
                                        route,
                                        &x,
                                        incoming,
                                        *mode,
                                        &traceparent.header,
                                    ))
                                    .await
                                }
                            }
                        }
                    }
                }
            }
        };
        let route_name = route.map(|r| r.name.as_str());
        let (mut resp, failed) = match result {
            // One of weir's errors that filters added headers to still names its code.
            Ok(r) => {
                let failed = r.extensions().get::<chain::Failed>().copied();
                (r, failed)
            }
            Err(e) => {
                let failed = chain::Failed {
                    code: e.code(),
                    origin: e.origin(),
                };
                (e.to_response(route_name, id_text), Some(failed))
            }
        };
        let error = failed.map(|f| f.code);
        resp.headers_mut().insert(headers::X_REQUEST_ID, id.clone());
        if origin.batch.is_some() {
            resp.extensions_mut().insert(CallInfo {
                attempts: trace.lock().unwrap_or_else(|p| p.into_inner()).attempts,
                error,
            });
        }
        let ended = Instant::now();
        let took = ended - started;
        let mut trace = trace.into_inner().unwrap_or_else(|p| p.into_inner());
        match route {
            Some(r) => {
                r.metrics.record(&method, resp.status(), took, ended);
                if let Some(f) = failed.filter(|f| f.origin == ErrorOrigin::Client) {
                    r.metrics.record_client_error(f.code);
                }
            }
            None => self
                .telemetry
                .record_request("", &method, resp.status(), took),
        }
        tracing::info!(
            request_id = %id_text,
            route = route_name.unwrap_or("-"),
            method = %method,
            status = resp.status().as_u16(),
            attempts = trace.attempts,
            duration_ms = took.as_secs_f64() * 1000.0,
            error = error.unwrap_or("-"),
            replay_of = origin.replay_of.unwrap_or("-"),
            job = origin.job.unwrap_or("-"),
            batch = origin.batch.unwrap_or("-"),
            "request"
        );
        if let Some((otlp, host)) = otlp {
            otlp.submit(Finished {
                ids: traceparent.span_ids(),
                started,
                ended: started + took,
                wall_end: SystemTime::now(),
                method: method.clone(),
                route: route_name.map(str::to_owned),
                path: parts.uri.path().to_owned(),
                scheme: self.scheme,
                host,
                client: origin.client,
                version: parts.version,
                status: resp.status().as_u16(),
                error,
                request_id: id_text.to_owned(),
                upstream: route.map(|r| (r.upstream.name.clone(), r.upstream.origin.clone())),
                // `/requests` keeps its own.
                trace: if recording {
                    trace.clone()
                } else {
                    std::mem::take(&mut trace)
                },
                job: origin.job.map(str::to_owned),
                batch: origin.batch.map(str::to_owned),
                replay_of: origin.replay_of.map(str::to_owned),
            });
        }
        let Some(request_capture) = request_capture else {
            return resp;
        };
        let (resp_parts, resp_body) = resp.into_parts();
        let (resp_body, response_capture) = Tee::new(resp_body, self.recent.body_cap());
        self.recent.push(NewRecord {
            id: id_text.to_owned(),
            route: route_name.map(str::to_owned),
            method,
            path_with_query: parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            upstream_url: route
                .map(|r| format!("{}{}", r.upstream.origin, r.upstream_path(&parts.uri))),
            request_headers,
            request_body: request_capture,
            status: resp_parts.status.as_u16(),
            response_headers: resp_parts.headers.clone(),
            response_body: Some(response_capture),
            trace,
            duration: took,
            error: error.map(str::to_owned),
            trace_id: traceparent.trace_id(),
            job: origin.job.map(str::to_owned),
            batch: origin.batch.map(str::to_owned),
        });
        Response::from_parts(resp_parts, body::boxed(resp_body))
    }

    /// Runs a fan-out route's request: reads the body once (a client error before
    /// anything is sent), then answers as the route's mode says. An `async` route's
    /// request only gets here as a replay: it is answered as `all` is.
    async fn fan_out(
        &self,
        router: &Arc<Router>,
        route: &crate::router::Route,
        x: &Exchange<'_>,
        incoming: chain::Incoming,
        mode: FanoutMode,
        traceparent: &HeaderValue,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let body = x.read_body(incoming.body, &incoming.body_fault).await?;
        let fanout = Fanout::new(
            router.clone(),
            route,
            x.id_header,
            x.client,
            x.deadline,
            self.max_body,
            traceparent.clone(),
            fanout::Request {
                method: incoming.method,
                path_with_query: incoming.path_with_query,
                headers: incoming.headers,
                body,
            },
        );
        match mode {
            FanoutMode::Primary => Arc::new(fanout).primary().await,
            FanoutMode::All | FanoutMode::Async => Ok(fanout.summary().await),
        }
    }

    /// Re-sends recorded request `id` through its route's current chain, as a new request
    /// with a new id, and answers with what came back.
    pub async fn replay(&self, id: &str) -> Response<ProxyBody> {
        let fail = |status: StatusCode, code: &str, message: String| {
            json_response(
                status,
                &serde_json::json!({"error": code, "message": message, "request_id": id}),
            )
        };
        let Some(record) = self.recent.get(id) else {
            return fail(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no recent request with id {id:?}"),
            );
        };
        let mut req = Request::new(());
        *req.method_mut() = record.method.clone();
        *req.uri_mut() = match record.path_with_query.parse() {
            Ok(u) => u,
            Err(e) => return fail(StatusCode::CONFLICT, "not_replayable", e.to_string()),
        };
        *req.headers_mut() = record.request_headers.clone();
        req.headers_mut().remove(headers::X_REQUEST_ID);
        let (parts, ()) = req.into_parts();
        if self.router().find(&parts).is_none() {
            return fail(
                StatusCode::NOT_FOUND,
                "route_gone",
                format!(
                    "no route of the current config matches {} {} (the request was served by route {:?})",
                    record.method, record.path_with_query, record.route
                ),
            );
        }
        // After the route: a request no route took never had its body read.
        let Some(body) = record.replayable_body() else {
            return fail(
                StatusCode::CONFLICT,
                "body_not_kept",
                format!(
                    "the request body was not kept (larger than recent_body_bytes = {} bytes, or not fully read), so it cannot be replayed",
                    self.recent.body_cap()
                ),
            );
        };
        let new_id = new_request_id();
        let origin = Origin {
            client: SocketAddr::from(([127, 0, 0, 1], 0)),
            replay_of: Some(id),
            job: None,
            batch: None,
        };
        let resp = self
            .serve(origin, new_id.clone(), Box::new(parts), body::full(body))
            .await;
        let new_id = new_id.to_str().unwrap_or_default();
        let (resp_parts, resp_body) = resp.into_parts();
        let body = body::collect_limited(resp_body, self.max_body).await;
        let text = body
            .as_ref()
            .ok()
            .map(|b| String::from_utf8_lossy(b).into_owned());
        json_response(
            StatusCode::OK,
            &serde_json::json!({
                "id": new_id,
                "replay_of": id,
                "status": resp_parts.status.as_u16(),
                "body": text,
            }),
        )
    }
}

/// A W3C trace context: the incoming one continued, or a new one started. Both ids are
/// kept as their lowercase hex digits.
struct TraceContext {
    trace_id: [u8; 32],
    /// The client's span id, when it sent a valid `traceparent`.
    parent: Option<[u8; 16]>,
    flags: [u8; 2],
}

/// The `traceparent` weir sends upstream, and the trace it belongs to.
struct NextHop {
    header: HeaderValue,
    trace_id: [u8; 32],
    parent: Option<[u8; 16]>,
    /// The parent id in `header`: weir's span for the request.
    span: u64,
    flags: [u8; 2],
}

impl NextHop {
    /// The trace id as text, for `/requests`.
    fn trace_id(&self) -> String {
        String::from_utf8_lossy(&self.trace_id).into_owned()
    }

    /// The ids the request's spans hang from.
    fn span_ids(&self) -> SpanIds {
        let hex = |digits: &[u8]| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u128::from_str_radix(d, 16).ok())
                .unwrap_or_default()
        };
        SpanIds {
            trace_id: hex(&self.trace_id),
            parent: self.parent.map(|p| hex(&p) as u64),
            span: self.span,
        }
    }

    /// Clears the sampled flag of a trace weir started (a client's flags are kept).
    fn unsampled(&mut self) {
        if self.parent.is_some() {
            return;
        }
        self.flags = *b"00";
        let mut text = [0u8; 55];
        text.copy_from_slice(self.header.as_bytes());
        text[53..].copy_from_slice(&self.flags);
        self.header = HeaderValue::from_bytes(&text).expect("hex digits and dashes");
    }

    /// Whether `otlp` exports this request's spans.
    fn sampled_by(&self, otlp: &Otlp) -> bool {
        // The sampled flag is the low bit of the flags' second hex digit.
        let parent_sampled = self.parent.map(|_| {
            matches!(
                self.flags[1],
                b'1' | b'3' | b'5' | b'7' | b'9' | b'b' | b'd' | b'f'
            )
        });
        otlp.sampled(self.span_ids().trace_id, parent_sampled)
    }
}

impl TraceContext {
    /// The client's `traceparent` when it is valid (version 00), else a new sampled trace.
    fn from_headers(headers: &http::HeaderMap) -> TraceContext {
        let parsed = headers::first(headers, &headers::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let mut parts = v.split('-');
                let (version, trace, parent, flags) =
                    (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
                let hex = |s: &str, n: usize| {
                    s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                };
                let valid = version == "00"
                    && parts.next().is_none()
                    && hex(trace, 32)
                    && trace.bytes().any(|b| b != b'0')
                    && hex(parent, 16)
                    && parent.bytes().any(|b| b != b'0')
                    && hex(flags, 2);
                valid.then(|| TraceContext {
                    trace_id: trace.as_bytes().try_into().expect("checked: 32 bytes"),
                    parent: Some(parent.as_bytes().try_into().expect("checked: 16 bytes")),
                    flags: flags.as_bytes().try_into().expect("checked: 2 bytes"),
                })
            });
        parsed.unwrap_or_else(|| {
            let mut trace_id = [0; 32];
            hex_into(id_bits() | 1, &mut trace_id);
            TraceContext {
                trace_id,
                parent: None,
                flags: *b"01",
            }
        })
    }

    /// weir's own span in the trace: a new parent id for the upstream request.
    fn next_hop(self) -> NextHop {
        // "00-" trace "-" span "-" flags
        let mut text = [0u8; 55];
        text[..3].copy_from_slice(b"00-");
        text[3..35].copy_from_slice(&self.trace_id);
        text[35] = b'-';
        let span = id_bits() as u64 | 1;
        hex_into(u128::from(span), &mut text[36..52]);
        text[52] = b'-';
        text[53..].copy_from_slice(&self.flags);
        NextHop {
            header: HeaderValue::from_bytes(&text).expect("hex digits and dashes"),
            trace_id: self.trace_id,
            parent: self.parent,
            span,
            flags: self.flags,
        }
    }
}

/// The authority a request was sent to: its target's (HTTP/2 `:authority`, an
/// absolute-form target), else its `Host`.
fn authority(parts: &http::request::Parts) -> Option<String> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
}

/// The client's `x-request-id` when it is sane, or a new random one.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    if let Some(v) = headers::first(headers, &headers::X_REQUEST_ID)
        && !v.is_empty()
        && v.len() <= MAX_REQUEST_ID
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return v.clone();
    }
    new_request_id()
}

/// A new random request id: 32 hex digits.
fn new_request_id() -> HeaderValue {
    let mut text = [0u8; 32];
    hex_into(id_bits(), &mut text);
    HeaderValue::from_bytes(&text).expect("hex digits")
}

thread_local! {
    /// The generator of request ids, trace ids and span ids, seeded from the OS on each
    /// thread: a few instructions an id, where `rand::random` costs about a hundred.
    /// These ids must be unique, not secret (a client sees its own, and may send any):
    /// nothing that needs a secret id uses them (job ids come from `rand::random`, and
    /// the ids filters key their reservations on from a random per-process prefix and a
    /// counter).
    static IDS: std::cell::RefCell<rand::rngs::SmallRng> =
        std::cell::RefCell::new(rand::SeedableRng::from_os_rng());
}

/// 128 random bits for an id.
fn id_bits() -> u128 {
    IDS.with(|rng| rand::Rng::random(&mut *rng.borrow_mut()))
}

/// How many refused connections may be getting their 503 at once.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// The 503 a connection over `listen.max_connections` gets, before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 113\r\n\r\n{\"error\":\"too_many_connections\",\"message\":\"weir has listen.max_connections client connections open; retry later\"}";

/// Answers a plain-HTTP connection over the limit with [`REFUSAL`] and closes it,
/// reading what the client sent meanwhile (for at most a second) so that the close
/// does not reset the connection before the client reads the answer.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let linger = async {
        stream.write_all(REFUSAL).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), linger).await;
}

/// An open client connection: its slot under `listen.max_connections`, and the gauge
/// it keeps up while open.
struct Open {
    _slot: tokio::sync::OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl Open {
    fn new(slot: tokio::sync::OwnedSemaphorePermit, gauge: &prometheus::IntGauge) -> Open {
        gauge.inc();
        Open {
            _slot: slot,
            gauge: gauge.clone(),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Where the worker threads serving the proxy listener are in their life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Serving,
    /// Stop accepting and drain.
    Draining,
    /// Drop the runtimes: the upstream connections their tasks drive go with them.
    Exiting,
}

/// The proxy listener served by the worker threads ([`crate::workers`]).
pub struct Serving {
    stage: tokio::sync::watch::Sender<Stage>,
    drained: Vec<tokio::sync::oneshot::Receiver<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Starts serving `listener` on every worker: each worker accepts on its own duplicate
/// of the socket and serves its connections itself. `listen.max_connections` counts the
/// connections of all of them.
pub fn serve_on_workers(
    workers: Workers,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    proxy: Arc<Proxy>,
    listen: &Listen,
) -> std::io::Result<Serving> {
    let socket = listener.into_std()?;
    let sockets = (0..workers.len())
        .map(|_| socket.try_clone())
        .collect::<std::io::Result<Vec<_>>>()?;
    drop(socket);
    let mut sockets = sockets.into_iter();
    let (stage, watch) = tokio::sync::watch::channel(Stage::Serving);
    let limits = Limits::new(listen.max_connections);
    let mut drained = Vec::with_capacity(workers.len());
    let threads = workers.spawn(|_| {
        let (done, wait) = tokio::sync::oneshot::channel();
        drained.push(wait);
        let socket = sockets.next().expect("one socket per worker");
        let (tls, proxy, listen, limits) =
            (tls.clone(), proxy.clone(), listen.clone(), limits.clone());
        let mut watch = watch.clone();
        move || async move {
            match TcpListener::from_std(socket) {
                Ok(listener) => {
                    let mut stop = watch.clone();
                    let shutdown = async move {
                        // A dropped sender (weir failed to start) stops the workers too.
                        let _ = stop.wait_for(|s| *s >= Stage::Draining).await;
                    };
                    serve(listener, tls, proxy, &listen, &limits, shutdown).await;
                }
                Err(e) => tracing::error!(error = %e, "a worker cannot accept on the listener"),
            }
            let _ = done.send(());
            let _ = watch.wait_for(|s| *s >= Stage::Exiting).await;
        }
    })?;
    Ok(Serving {
        stage,
        drained,
        threads,
    })
}

impl Serving {
    /// Stops accepting and waits until every worker has drained its requests (each up
    /// to `drain_timeout`). The workers' runtimes keep running: async jobs and the span
    /// export may still be using an upstream connection one of them drives.
    pub async fn drain(&mut self) {
        let _ = self.stage.send(Stage::Draining);
        for done in self.drained.drain(..) {
            let _ = done.await;
        }
    }

    /// Stops the workers and waits for their threads to end.
    pub async fn exit(self) {
        let _ = self.stage.send(Stage::Exiting);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// The connection limits every worker shares.
#[derive(Clone)]
struct Limits {
    /// One permit per open client connection: `listen.max_connections`.
    slots: Arc<Semaphore>,
    /// One permit per refused connection getting its 503.
    refusals: Arc<Semaphore>,
}

impl Limits {
    fn new(max_connections: usize) -> Limits {
        Limits {
            slots: Arc::new(Semaphore::new(max_connections)),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT)),
        }
    }
}

/// Accepts connections on `listener` until `shutdown` resolves, then waits up to `drain`
/// for in-flight requests: HTTP/1 connections finish their response with
/// `Connection: close`, HTTP/2 connections get GOAWAY.
async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    proxy: Arc<Proxy>,
    listen: &Listen,
    limits: &Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // `header_read_timeout` is kept by `sweep`, not by a hyper timer per request.
        .header_read_timeout(None)
        // hyper's floor for the read buffer is 8 KiB; heads past it get 431.
        .max_buf_size((listen.max_header_bytes.0 as usize).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(listen.max_header_bytes.0.min(u32::MAX as u64) as u32);
    // A connection the own HTTP/1 side handed over after serving some of its requests
    // is HTTP/1 for good: no h2c preface is looked for.
    let builder_h1 = Arc::new(builder.clone().http1_only());
    let builder = Arc::new(builder);
    let max_head = (listen.max_header_bytes.0 as usize).max(8192);
    let drain = Drain::new();
    let timeouts = Timeouts {
        head: listen.header_read_timeout.0,
        send: listen.send_timeout.0,
    };
    let sweep = Sweep::new(timeouts, proxy.telemetry.connections_cut.clone());
    let sweeping = tokio::spawn(sweep.clone().run());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept::next(&listener, "proxy") => accepted,
            () = &mut shutdown => break,
        };
        let Ok(slot) = limits.slots.clone().try_acquire_owned() else {
            proxy.telemetry.connections_refused.inc();
            tracing::debug!(client = %peer, limit = listen.max_connections, "connection refused: listen.max_connections are open");
            // A flood of refusals must not become a flood of tasks: past the bound, the
            // connection is closed without a word.
            if let Ok(turn) = limits.refusals.clone().try_acquire_owned()
                && tls.is_none()
            {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(turn);
                });
            }
            continue;
        };
        let open = Open::new(slot, &proxy.telemetry.connections);
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let builder = builder.clone();
        let builder_h1 = builder_h1.clone();
        let tls = tls.clone();
        let mut draining = drain.watch();
        let watch = sweep.begin();
        let conn_watch = watch.clone();
        let task = tokio::spawn(async move {
            let _open = open;
            let own_proxy = proxy.clone();
            let svc_watch = conn_watch.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let proxy = proxy.clone();
                let http2 = req.version() == http::Version::HTTP_2;
                let (response, body) = svc_watch.request(http2, !req.body().is_end_stream());
                let stream_watch = http2.then(|| svc_watch.clone());
                async move {
                    let resp = proxy.handle(peer, req, body).await;
                    let resp = match stream_watch {
                        None => resp,
                        // A stream can stall without the socket doing so: see `Pulled`.
                        Some(w) => resp.map(|b| body::boxed(w.pulled(b))),
                    };
                    Ok::<_, Infallible>(resp.map(|b| body::Holding::new(b, response)))
                }
            });
            let (stream, http2) = match tls {
                None => (Either::Left(stream), false),
                Some(acceptor) => {
                    // The sweep bounds the handshake too: the wait began at the accept.
                    let tls = match acceptor.accept(stream).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    };
                    let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    // Boxed: a TLS session is large, and a plain connection's task
                    // would carry its size.
                    (Either::Right(Box::new(tls)), http2)
                }
            };
            let result = if http2 {
                conn_watch.speaks_http2();
                let io = TokioIo::new(Flushes::new(stream, conn_watch));
                let conn = builder.serve_connection(io, svc).into_owned();
                draining.serve(conn, |c| c.graceful_shutdown()).await
            } else {
                // HTTP/1 in plain text, or over TLS when ALPN chose it or nothing: the own
                // side serves it until a request is hyper's.
                let own = Flushes::new(stream, conn_watch.clone());
                let proxy = &*own_proxy;
                let service = |parts, body| proxy.handle_head(peer, parts, body);
                match h1::serve(own, max_head, &mut draining, service).await {
                    Ok(h1::Ended::Closed) => Ok(()),
                    Ok(h1::Ended::Hand { io, served }) => {
                        let builder = if served { builder_h1 } else { builder };
                        let io = TokioIo::new(Flushes::new(io, conn_watch));
                        let conn = builder.serve_connection(io, svc).into_owned();
                        draining.serve(conn, |c| c.graceful_shutdown()).await
                    }
                    Err(e) => Err(e.into()),
                }
            };
            if let Err(e) = result {
                tracing::debug!(client = %peer, error = %e, "connection ended with an error");
            }
        });
        sweep.watch(watch, task.abort_handle());
    }
    drop(listener);
    if tokio::time::timeout(listen.drain_timeout.0, drain.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout passed with requests still in flight");
    }
    sweeping.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let hop = TraceContext::from_headers(&h).next_hop();
        assert_eq!(hop.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let header = hop.header.to_str().unwrap();
        assert!(header.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(header.ends_with("-01"));
        assert!(!header.contains("00f067aa0ba902b7"));
    }

    #[test]
    fn an_invalid_or_missing_traceparent_starts_a_new_trace() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        );
        let a = TraceContext::from_headers(&h).next_hop();
        let b = TraceContext::from_headers(&http::HeaderMap::new()).next_hop();
        for hop in [a, b] {
            let id = hop.trace_id();
            assert_eq!(id.len(), 32);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert_ne!(id, "00000000000000000000000000000000");
            let header = hop.header.to_str().unwrap();
            assert_eq!(header.len(), 55);
            assert!(header.starts_with(&format!("00-{id}-")));
            assert!(header.ends_with("-01"));
        }
    }

    #[test]
    fn only_a_trace_weir_started_is_marked_unsampled() {
        let mut new = TraceContext::from_headers(&http::HeaderMap::new()).next_hop();
        let span = new.header.to_str().unwrap()[36..52].to_owned();
        new.unsampled();
        let header = new.header.to_str().unwrap();
        assert!(header.ends_with(&format!("-{span}-00")), "{header}");
        assert_eq!(&header[3..35], new.trace_id());

        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let mut continued = TraceContext::from_headers(&h).next_hop();
        continued.unsampled();
        assert!(continued.header.to_str().unwrap().ends_with("-01"));
    }

    #[test]
    fn request_ids_are_kept_when_sane() {
        let mut h = http::HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        let made = request_id(&h);
        assert_eq!(made.len(), 32);
        assert!(made.as_bytes().iter().all(u8::is_ascii_hexdigit));
    }

    #[test]
    fn the_refusal_is_a_whole_http_response() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "too_many_connections");
    }

    #[test]
    fn hex_digits_are_most_significant_first() {
        let mut out = [0u8; 6];
        hex_into(0xab_cdef, &mut out);
        assert_eq!(&out, b"abcdef");
        hex_into(0x12_3456_789a, &mut out);
        assert_eq!(&out, b"56789a");
        // Every length an id uses, and odd ones, against `format!`.
        let n = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        for len in 1..=32 {
            let mut out = [0u8; 32];
            hex_into(n, &mut out[..len]);
            let all = format!("{n:032x}");
            assert_eq!(std::str::from_utf8(&out[..len]).unwrap(), &all[32 - len..]);
        }
    }
}
