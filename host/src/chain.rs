//! Running a route's filter chain around the upstream call.
//!
//! `on-request` runs in chain order. `continue` applies the edit and keeps the memo,
//! `respond` stops the walk (the filters already passed see `on-response`), and `wait`
//! sleeps and asks again. The upstream is called once the walk reaches the end. Then
//! `on-response` runs in reverse; `retry` from filter *k* re-sends through filters
//! *k+1…N* and the upstream, with `attempt + 1`, and filter *k* then sees the new outcome.
//! The route deadline and [`MAX_ATTEMPTS`] bound every wait and retry, and every wait of
//! `on-request` for a free instance.
//!
//! Every filter whose `on-request` answered `continue` gets its `on-response`, in reverse,
//! however the request ends, so that reservations (a breaker's probe, a limiter's slot)
//! are always settled. When weir itself ends the request midway (a `wait` or a wait for
//! an instance past the deadline, a streamed request body over the limit, a response
//! too large to buffer) the filters see what the client gets: `error(timeout)` for a
//! deadline, weir's JSON error response otherwise. That outcome is final, as the WIT
//! says of a `wait` past the deadline ("ends the request with 504"): `respond` and
//! `retry` are ignored, a `continue` edit only adds headers to weir's error response, and
//! a filter that fails there is logged and counted but changes nothing.
//!
//! A client's request body that breaks its framing, stalls or breaks off ends the
//! request the same way: it is the client's fault, never the upstream's, so the filters
//! see weir's final 400, 408 or 499 JSON response and never `error(reset)` or
//! `error(timeout)`. A breaker does not count it and a retry does not re-send it. The
//! [`BodyFault`] cell that the client's body reads through says which it was.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::Body as _;
use tokio::time::Instant;

use crate::body::{self, BodyFault, ProxyBody};
use crate::clock::VirtualClock;
use crate::compress;
use crate::config::{Compression, OnError};
use crate::error::{Origin, ProxyError};
use crate::headers;
use crate::recent::{FilterFailure, FilterTiming, Trace, UpstreamTiming, WaitTiming};
use crate::telemetry::RouteMetrics;
use crate::upstream::{Upstream, UpstreamFailure, UpstreamPool};
use crate::wasm::{
    self, CallError, ChainOutcome, ChainResponse, FilterPool, HostCall, Phase, RequestAction,
    RequestInfo, ResponseAction, Unanswered, UpstreamError,
};

/// The most tries one request gets, whatever the filters ask.
pub const MAX_ATTEMPTS: u32 = 10;

/// A route's filters, with what they need from the host worked out once at load.
pub struct Chain {
    filters: Vec<Arc<FilterPool>>,
    /// Some filter reads request bodies, or may retry (and so needs the body again).
    buffer_request: bool,
    /// Some filter reads response bodies.
    buffer_response: bool,
    /// The route's content codings; `None` when it has nothing to do, so routes without
    /// compression pay one branch and no allocation.
    compression: Option<Compression>,
}

impl Chain {
    /// A chain of these filters, in order.
    pub fn new(filters: Vec<Arc<FilterPool>>) -> Chain {
        let buffer_request = filters
            .iter()
            .any(|f| f.info().wants_request_body || f.info().may_retry);
        let buffer_response = filters.iter().any(|f| f.info().wants_response_body);
        Chain {
            filters,
            buffer_request,
            buffer_response,
            compression: None,
        }
    }

    /// The chain with the route's `compression` setting.
    pub fn with_compression(mut self, c: Option<Compression>) -> Chain {
        self.compression = c.filter(|c| c.request.is_some() || c.response);
        self
    }

    /// The filters, in order.
    pub fn filters(&self) -> &[Arc<FilterPool>] {
        &self.filters
    }

    /// The filters' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.filters.iter().map(|f| f.name()).collect()
    }
}

/// Everything about one client request that the walk needs besides the message.
pub struct Exchange<'a> {
    /// The route's name.
    pub route: &'a str,
    /// The route's chain.
    pub chain: &'a Chain,
    /// The route's upstream.
    pub upstream: &'a Upstream,
    /// How the request reaches the upstream.
    pub transport: Transport<'a>,
    /// The request id (`x-request-id`).
    pub id: &'a str,
    /// The same, as the header weir sends upstream.
    pub id_header: &'a HeaderValue,
    /// The client's address.
    pub client: SocketAddr,
    /// When the route's timeout runs out.
    pub deadline: Instant,
    /// The route's timeout, for error messages.
    pub timeout: Duration,
    /// The most body bytes weir accepts or buffers.
    pub max_body: u64,
    /// The `traceparent` sent upstream.
    pub traceparent: &'a HeaderValue,
    /// Where the number of tries goes, and, with `record_timings`, filter and upstream
    /// timings, for `/requests`.
    pub trace: &'a Mutex<Trace>,
    /// Whether to time each filter call and upstream call (for `/requests` and exported
    /// spans).
    pub record_timings: bool,
    /// Whether this request's spans are exported (see [`crate::otlp`]): then its waits,
    /// the filters' state and outbound calls, and each upstream try's span id are
    /// recorded too, and each try sends its own `traceparent`.
    pub trace_spans: bool,
    /// Where retries are counted.
    pub metrics: &'a RouteMetrics,
    /// The most tries, whatever the filters ask: [`MAX_ATTEMPTS`] for every client
    /// request; the filter harness may set fewer.
    pub max_attempts: u32,
}

/// How the walk reaches the upstream once it passes the last filter, and which clock its
/// waits and deadline run on.
#[derive(Clone, Copy)]
pub enum Transport<'a> {
    /// The shared client, on tokio's clock: every request weir serves.
    Pool(&'a UpstreamPool),
    /// A scripted upstream on a virtual clock: the filter harness, so that a filter
    /// under test goes through this very walk and not a copy of it.
    Scripted(&'a dyn Script),
}

/// An upstream that answers from a script, on a virtual clock that the walk's waits and
/// retry delays move instead of sleeping.
pub trait Script: Sync {
    /// Answers one try.
    fn answer(
        &self,
        req: http::Request<ProxyBody>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, UpstreamFailure>> + Send + '_>>;

    /// The clock the walk waits on.
    fn clock(&self) -> &VirtualClock;
}

/// The request as the client sent it, with the path already rewritten for the upstream.
pub struct Incoming {
    /// The method.
    pub method: Method,
    /// The path and query to send upstream.
    pub path_with_query: String,
    /// The headers, hop-by-hop headers already removed. On a route without filters or
    /// fan-out whose upstream sets its own `Host`, the client's `Host` may still be here
    /// (`headers::prepare_upstream_keeping_host`): [`Exchange::finish_request`] replaces it.
    pub headers: http::HeaderMap,
    /// The body, streaming.
    pub body: ProxyBody,
    /// How the client's body failed, if it did: set by the [`body::ClientBody`] that
    /// `body` reads through.
    pub body_fault: BodyFault,
    /// Whether `body` is all in memory ([`body::Whole`]).
    pub body_whole: bool,
}

impl Exchange<'_> {
    /// Runs the chain and the upstream call; the error is what the client gets.
    pub fn run(
        &self,
        req: Incoming,
    ) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send + '_ {
        use futures_util::future::Either;
        // The common case, no filters and no compression: the forward itself, with no
        // future of this function's own around it.
        if self.chain.filters.is_empty() && self.chain.compression.is_none() {
            Either::Left(self.direct(req))
        } else {
            Either::Right(self.run_other(req))
        }
    }

    async fn run_other(&self, req: Incoming) -> Result<Response<ProxyBody>, ProxyError> {
        if self.chain.compression.is_some_and(|c| c.response) {
            // What the client accepts must be read before its headers go upstream.
            let accept = compress::Accept::from_headers(&req.headers);
            let head = req.method == Method::HEAD;
            // Boxed, as the chain's walk below: `run` is `direct`'s future or this one's,
            // so this one stays small.
            let resp = if self.chain.filters.is_empty() {
                Box::pin(self.direct(req)).await
            } else {
                Box::pin(self.run_chain(req)).await
            }?;
            // weir's own errors go out as they do without compression, headers the
            // filters added or not.
            if resp.extensions().get::<Failed>().is_some() {
                return Ok(resp);
            }
            return Ok(compress::to_client(resp, &accept, head));
        }
        if self.chain.filters.is_empty() {
            return Box::pin(self.direct(req)).await;
        }
        // A chain's walk is a large future: boxed, so that the request's own stays small.
        Box::pin(self.run_chain(req)).await
    }

    async fn run_chain(&self, req: Incoming) -> Result<Response<ProxyBody>, ProxyError> {
        let Incoming {
            method,
            path_with_query,
            mut headers,
            body,
            body_fault,
            body_whole,
        } = req;
        // Filters read the id weir logs and returns: `request-info.id` is a different,
        // host-made one. `send` sets it again after them, as `direct` does.
        headers.insert(headers::X_REQUEST_ID, self.id_header.clone());
        let body = if self.chain.buffer_request {
            // No filter has run yet: a client whose body fails here gets its 4xx before
            // any filter could take it for the upstream's failure.
            ReqBody::Buffered(self.read_body(body, &body_fault).await?)
        } else {
            ReqBody::Stream(Some(body))
        };
        let mut walk = Walk {
            x: self,
            method,
            body,
            body_fault,
            body_whole,
            memos: vec![None; self.chain.filters.len()],
            attempt: 1,
            try_timeout: None,
            info: RequestInfo {
                // Not the client's `x-request-id`: filters key reservations on this, and
                // a client may send any id, a used one included.
                id: unique_id(),
                route: self.route.to_owned(),
                attempt: 1,
                remaining_ms: 0,
                client_addr: addr_text(self.client),
            },
        };
        let wreq = wasm::ChainRequest {
            method: walk.method.as_str().to_owned(),
            upstream: self.upstream.origin.clone(),
            path_with_query,
            headers,
        };
        let reply = walk.pass(0, wreq).await;
        self.lock_trace().attempts = walk.attempt;
        reply.into_response(self.route, self.id)
    }

    /// No filters: forward as it is, with no conversion. `finish_request` must stay on
    /// this path: it is what replaces a client's `Host` that `Proxy::serve` left in place.
    async fn direct(&self, req: Incoming) -> Result<Response<ProxyBody>, ProxyError> {
        let mut out = Box::new(http::Request::new(req.body));
        // The pool reads it to blame the client for a body that failed; a request with no
        // body (most) has none to fail, and skips the extension map's allocations.
        if !out.body().is_end_stream() {
            out.extensions_mut().insert(req.body_fault);
            if req.body_whole {
                out.extensions_mut().insert(body::Whole);
            }
        }
        *out.method_mut() = req.method;
        *out.uri_mut() = self.upstream.uri_owned(req.path_with_query)?;
        *out.headers_mut() = req.headers;
        self.finish_request(out.headers_mut());
        self.compress_request(&mut out);
        let sent = self
            .send_upstream(out, self.deadline, self.timeout_ms(), 1)
            .await;
        self.lock_trace().attempts = 1;
        match sent {
            Ok(mut resp) => {
                headers::strip_hop_by_hop(resp.headers_mut());
                Ok(resp)
            }
            Err(f) => Err(f.error),
        }
    }

    fn finish_request(&self, headers: &mut http::HeaderMap) {
        // Room for all three at once: a client's few headers fill the map hyper parsed
        // them into, and each insert past its room would rehash it again.
        headers.reserve(3);
        headers.insert(headers::X_REQUEST_ID, self.id_header.clone());
        headers.insert(headers::TRACEPARENT, self.traceparent.clone());
        if let Some(host) = self.upstream.host_header() {
            // What the client would add itself, made once per upstream.
            headers.insert(header::HOST, host.clone());
        }
    }

    /// Sends `out` upstream as try `attempt`; with `record_timings`, notes how long the
    /// response head and any new connection took, and how the try ended.
    fn send_upstream(
        &self,
        out: Box<http::Request<ProxyBody>>,
        deadline: Instant,
        timeout_ms: u64,
        attempt: u32,
    ) -> impl Future<Output = Result<Response<ProxyBody>, UpstreamFailure>> + Send + '_ {
        use futures_util::future::Either;
        match self.transport {
            // The common case: the pool's own future, with none of this function's.
            Transport::Pool(pool) if !self.record_timings => {
                Either::Left(pool.send(self.upstream, out, deadline, timeout_ms))
            }
            _ => Either::Right(self.send_noted(out, deadline, timeout_ms, attempt)),
        }
    }

    /// [`Exchange::send_upstream`] by a script, or with `record_timings`.
    async fn send_noted(
        &self,
        mut out: Box<http::Request<ProxyBody>>,
        deadline: Instant,
        timeout_ms: u64,
        attempt: u32,
    ) -> Result<Response<ProxyBody>, UpstreamFailure> {
        let pool = match self.transport {
            Transport::Pool(pool) => pool,
            Transport::Scripted(script) => return script.answer(*out).await,
        };
        let span = self.trace_spans.then(|| {
            // This try's span is the upstream's parent.
            let id = rand::random::<u64>() | 1;
            out.headers_mut().insert(
                headers::TRACEPARENT,
                headers::with_parent_id(self.traceparent, id),
            );
            (id, out.uri().path().to_owned())
        });
        let started = Instant::now();
        let (sent, connect) = pool
            .send_timed(self.upstream, out, deadline, timeout_ms)
            .await;
        let outcome = match &sent {
            Ok(r) => Ok(r.status().as_u16()),
            Err(f) => Err(crate::telemetry::upstream_error_kind(f.kind)),
        };
        self.lock_trace().upstream.push(UpstreamTiming {
            attempt,
            at: started,
            took: started.elapsed(),
            connect,
            outcome,
            span,
        });
        sent
    }

    /// Applies the route's request-side codings to what goes upstream.
    fn compress_request(&self, out: &mut http::Request<ProxyBody>) {
        let Some(c) = self.chain.compression else {
            return;
        };
        if c.response {
            // weir decodes whatever it gets back, so the upstream may use any of these;
            // the client's own `Accept-Encoding` is honoured on the way back.
            out.headers_mut()
                .insert(header::ACCEPT_ENCODING, compress::UPSTREAM_ACCEPT);
        }
        if let Some(coding) = c.request {
            compress::encode_request(out, coding);
        }
    }

    fn lock_trace(&self) -> std::sync::MutexGuard<'_, Trace> {
        self.trace.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a filter call's timing, and the state and outbound calls it made; `started`
    /// is `None` when this request's timings are not recorded.
    fn time_filter(
        &self,
        f: &FilterPool,
        phase: &'static str,
        attempt: u32,
        started: Option<Instant>,
        host_calls: Option<Vec<HostCall>>,
    ) {
        let Some(started) = started else {
            return;
        };
        let took = started.elapsed();
        self.lock_trace().filters.push(FilterTiming {
            filter: f.name().to_owned(),
            phase,
            attempt,
            at: started,
            took,
            error: None,
            host_calls: host_calls.unwrap_or_default(),
        });
    }

    /// Notes that filter `f` failed (a failed call) for the record; the harness reports
    /// it as the filter's error.
    fn note_failure(&self, f: &FilterPool, error: CallError) {
        let kind = error.kind();
        self.note_failure_as(f, error, kind);
    }

    /// Notes that filter `f` answered something weir could not apply.
    fn note_invalid(&self, f: &FilterPool, detail: String) {
        self.note_failure_as(f, CallError::Trap(detail), "invalid");
    }

    /// Notes a failure of kind `kind`; the call it came from, the last one of `f` timed,
    /// is marked with it.
    fn note_failure_as(&self, f: &FilterPool, error: CallError, kind: &'static str) {
        let mut trace = self.lock_trace();
        if let Some(call) = trace
            .filters
            .iter_mut()
            .rev()
            .find(|t| t.filter == f.name())
        {
            call.error = Some(kind);
        }
        trace.failures.push(FilterFailure {
            filter: f.name().to_owned(),
            error,
        });
    }

    /// Notes a sleep of the walk that started `at`, when this request's spans are
    /// exported.
    fn note_wait(&self, f: &FilterPool, kind: &'static str, attempt: u32, at: Option<Instant>) {
        let Some(at) = at.filter(|_| self.trace_spans) else {
            return;
        };
        let took = self.now().saturating_duration_since(at);
        self.lock_trace().waits.push(WaitTiming {
            filter: f.name().to_owned(),
            kind,
            attempt,
            at,
            took,
        });
    }

    /// Reads the client's whole body by the deadline, within `max_body`. An error is the
    /// client's 4xx: what `fault` says the body did, else 400.
    pub async fn read_body(&self, body: ProxyBody, fault: &BodyFault) -> Result<Bytes, ProxyError> {
        let collected =
            crate::deadline::within(self.deadline, body::collect_limited(body, self.max_body))
                .await
                .map_err(|_| ProxyError::ClientTimeout {
                    detail: format!(
                        "the request body was not complete within the route's timeout of {} ms",
                        self.timeout_ms()
                    ),
                })?;
        collected.map_err(|e| match fault.get() {
            Some(fault) => fault.clone().into(),
            None => ProxyError::BadRequest(format!("reading the request body: {e}")),
        })
    }

    fn timeout_ms(&self) -> u64 {
        self.timeout.as_millis() as u64
    }

    fn timeout(&self) -> ProxyError {
        ProxyError::Timeout {
            timeout_ms: self.timeout_ms(),
        }
    }

    /// When a filter call starts, if this request's calls are timed.
    fn call_started(&self) -> Option<Instant> {
        self.record_timings.then(Instant::now)
    }

    /// Sleeps `ms`, unless that would pass the deadline.
    async fn sleep_within_deadline(&self, ms: u32) -> Result<(), ProxyError> {
        let until = self.now() + Duration::from_millis(u64::from(ms));
        if until > self.deadline {
            return Err(self.timeout());
        }
        self.sleep_until(until).await;
        Ok(())
    }

    /// Now, on the clock the walk runs on.
    fn now(&self) -> Instant {
        match self.transport {
            Transport::Pool(_) => Instant::now(),
            Transport::Scripted(s) => s.clock().instant(),
        }
    }

    /// Waits until `until` on the walk's clock: a virtual clock is moved there at once.
    async fn sleep_until(&self, until: Instant) {
        match self.transport {
            Transport::Pool(_) => tokio::time::sleep_until(until).await,
            Transport::Scripted(s) => {
                let clock = s.clock();
                clock.advance(until.saturating_duration_since(clock.instant()));
            }
        }
    }

    /// How long a call may wait for a free instance: until `until` on tokio's clock. On
    /// a virtual clock, which only waits move, an instance being rebuilt is waited for.
    fn instance_wait(&self, until: Instant) -> Option<Instant> {
        match self.transport {
            Transport::Pool(_) => Some(until),
            Transport::Scripted(_) => None,
        }
    }

    /// How long an `on-response` call of `f` may wait for a free instance: until the
    /// deadline, and at least `max_call_time` from now. `on-response` also runs after
    /// the deadline (the filters see the upstream's `error(timeout)`), and by then an
    /// instance in a call has had its whole call time to come back.
    fn response_wait_until(&self, f: &FilterPool) -> Option<Instant> {
        self.instance_wait(self.deadline.max(self.now() + f.max_call_time()))
    }
}

/// A request id no other request of this process gets, for `request-info.id`: 32 hex
/// digits, a random prefix drawn once per process and then a counter. The prefix keeps
/// ids apart across processes that share a state store (two processes collide only if
/// they draw the same 64 random bits).
fn unique_id() -> String {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(rand::random::<u64>);
    let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // By hand: `format!("{:016x}")` costs about ten times as much, on every request.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for n in [prefix, next] {
        id.extend(
            (0..16)
                .rev()
                .map(|k| char::from(HEX[(n >> (4 * k)) as usize & 0xf])),
        );
    }
    id
}

/// `addr` as `Display` writes it; an IPv4 address (nearly every client's) written
/// through `itoa`, which costs a tenth of the formatter's padding-aware path.
fn addr_text(addr: SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else {
        return addr.to_string();
    };
    let mut digits = itoa::Buffer::new();
    let mut out = String::with_capacity(21);
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(digits.format(octet));
    }
    out.push(':');
    out.push_str(digits.format(v4.port()));
    out
}

/// Marks a response that is one of weir's JSON errors with headers the filters added,
/// so the request log, `/requests` and metrics still name the error.
#[derive(Debug, Clone, Copy)]
pub struct Failed {
    /// The error's code.
    pub code: &'static str,
    /// Where it came from.
    pub origin: Origin,
}

/// Checks the header and path parts of a filter's `on-request` edit and applies them to
/// `req`; the walk applies the body and `try-timeout-ms` itself. The new path must be a
/// path and query that starts with `/`.
///
/// All or nothing: an invalid part leaves `req` as it was, so a filter that fails open
/// on an invalid edit lets the request through untouched, not half edited.
///
/// Public (and hidden) for the `wit_answers` fuzz target in `fuzz/`.
#[doc(hidden)]
pub fn edit_request(
    req: &mut wasm::ChainRequest,
    set_headers: Vec<(String, Vec<u8>)>,
    remove_headers: &[String],
    path_with_query: Option<String>,
) -> Result<(), String> {
    if let Some(pq) = &path_with_query {
        check_path(pq)?;
    }
    // Checks every header before it changes any.
    headers::apply_edit_map(
        &mut req.headers,
        set_headers,
        remove_headers,
        headers::parse,
    )?;
    if let Some(pq) = path_with_query {
        req.path_with_query = pq;
    }
    Ok(())
}

/// Checks a path and query a filter sends upstream: it starts with `/` and parses.
pub(crate) fn check_path(pq: &str) -> Result<(), String> {
    if !pq.starts_with('/') || pq.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(format!("invalid path {pq:?}"));
    }
    Ok(())
}

/// Checks a filter's `on-response` edit and applies it to `map`, the headers of the
/// response the client gets (or of weir's error response). What it sets goes to the
/// client, so it is held to [`headers::parse_response`]: no hop-by-hop headers either.
///
/// Public (and hidden) for the `wit_answers` fuzz target in `fuzz/`.
#[doc(hidden)]
pub fn edit_response(map: &mut HeaderMap, edit: wasm::ResponseEdit) -> Result<(), String> {
    let (set, remove) = (edit.set_headers, &edit.remove_headers);
    headers::apply_edit_map(map, set, remove, headers::parse_response)
}

enum ReqBody {
    Buffered(Bytes),
    /// Streamed to the upstream once; `None` after it was sent.
    Stream(Option<ProxyBody>),
}

impl ReqBody {
    /// The body a filter is lent: the buffered one, if it asked for bodies.
    fn for_filter(&self, f: &FilterPool) -> Option<&Bytes> {
        match self {
            ReqBody::Buffered(b) if f.info().wants_request_body => Some(b),
            _ => None,
        }
    }
}

/// What came back: the WIT outcome, the upstream body if it is still streaming, and the
/// error the client gets if the outcome is an error.
struct Reply {
    outcome: ChainOutcome,
    stream: Option<ProxyBody>,
    error: Option<ProxyError>,
    /// Headers filters set on the way back while the outcome is an error (e.g. retry's
    /// `x-weir-attempts`): they go on weir's error response.
    error_headers: HeaderMap,
    /// weir ended the request with `error` itself: the filters are told, but cannot
    /// change it (see the module docs).
    fixed: bool,
}

impl Reply {
    fn respond(resp: wasm::Response) -> Result<Reply, String> {
        headers::validate_response(Some(resp.status), &resp.headers)?;
        Ok(Reply {
            outcome: ChainOutcome::Response(ChainResponse::from_wit(resp)),
            stream: None,
            error: None,
            error_headers: HeaderMap::new(),
            fixed: false,
        })
    }

    /// An upstream failure (no response, or none in time): the filters see `kind` and
    /// may answer it as they would any upstream error; the client gets `err` unless one
    /// of them responds.
    fn upstream_failed(kind: UpstreamError, err: ProxyError) -> Reply {
        Reply {
            outcome: ChainOutcome::Error(kind),
            stream: None,
            error: Some(err),
            error_headers: HeaderMap::new(),
            fixed: false,
        }
    }

    /// weir ends the request with `err`: the filters see `error(timeout)` for the
    /// deadline, and weir's JSON error response for anything else, as the client will.
    fn ended(err: ProxyError, route: &str, id: &str) -> Reply {
        let outcome = match err {
            ProxyError::Timeout { .. } => ChainOutcome::Error(UpstreamError::Timeout),
            _ => Reply::error(&err, route, id).outcome,
        };
        Reply {
            outcome,
            stream: None,
            error: Some(err),
            error_headers: HeaderMap::new(),
            fixed: true,
        }
    }

    /// The JSON error response as a reply, so filters before the failing one still see a
    /// response.
    fn error(err: &ProxyError, route: &str, id: &str) -> Reply {
        let body = serde_json::json!({
            "error": err.code(),
            "message": err.to_string(),
            "route": route,
            "request_id": id,
        });
        let mut text = serde_json::to_vec(&body).unwrap_or_default();
        text.push(b'\n');
        Reply {
            outcome: ChainOutcome::Response(ChainResponse {
                status: err.status().as_u16(),
                headers: HeaderMap::from_iter([(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )]),
                body: Some(text),
            }),
            stream: None,
            error: None,
            error_headers: HeaderMap::new(),
            fixed: false,
        }
    }

    fn into_response(self, route: &str, id: &str) -> Result<Response<ProxyBody>, ProxyError> {
        match self.outcome {
            ChainOutcome::Response(r) if !self.fixed => {
                let body = match (self.stream, r.body) {
                    (Some(s), _) => s,
                    (None, Some(b)) => body::full(Bytes::from(b)),
                    (None, None) => body::empty(),
                };
                let mut resp = Response::new(body);
                *resp.status_mut() =
                    StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
                *resp.headers_mut() = r.headers;
                if resp.body().size_hint().exact().is_some() {
                    // The filters may have changed the body; let hyper set the length.
                    resp.headers_mut().remove(header::CONTENT_LENGTH);
                }
                Ok(resp)
            }
            _ => {
                let err = self.error.unwrap_or(ProxyError::UpstreamBroken {
                    upstream: String::new(),
                    detail: "no response".into(),
                });
                if self.error_headers.is_empty() {
                    return Err(err);
                }
                let mut resp = err.to_response(Some(route), id);
                resp.headers_mut().extend(self.error_headers);
                resp.extensions_mut().insert(Failed {
                    code: err.code(),
                    origin: err.origin(),
                });
                Ok(resp)
            }
        }
    }
}

/// One request's walk through the chain.
struct Walk<'x, 'a> {
    x: &'x Exchange<'a>,
    method: Method,
    body: ReqBody,
    /// Handed to the pool with each try, which reads it to blame the client for a body
    /// that failed.
    body_fault: BodyFault,
    /// Whether a streamed `body` is all in memory all the same ([`body::Whole`]).
    body_whole: bool,
    /// Each filter's memo for the try, shared (not copied) with its `on-response`.
    memos: Vec<Option<Bytes>>,
    attempt: u32,
    /// The smallest per-try timeout any filter asked for.
    try_timeout: Option<Duration>,
    /// What filters are told about the request: built once, brought up to date before
    /// each call.
    info: RequestInfo,
}

impl Walk<'_, '_> {
    /// Brings `info` up to date for a call made now.
    fn refresh_info(&mut self) {
        self.info.attempt = self.attempt;
        // Rounded up: a guest's host calls rebuild the deadline as now + remaining_ms,
        // and one rounded down would end an outbound call up to a millisecond before the
        // route's deadline, leaving the request a sliver of time to be sent upstream.
        // 0 means the deadline has passed.
        let left = self.x.deadline.saturating_duration_since(self.x.now());
        self.info.remaining_ms =
            u64::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    }

    /// Runs filters `from..` and the upstream with `req`, then `on-response` back down
    /// to `from`: to every filter whose `on-request` continued, however the try ended.
    ///
    /// Boxed, with `Send` spelled out, because it recurses for retries.
    fn pass(
        &mut self,
        from: usize,
        req: wasm::ChainRequest,
    ) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>> {
        Box::pin(self.pass_inner(from, req))
    }

    async fn pass_inner(&mut self, from: usize, mut req: wasm::ChainRequest) -> Reply {
        let filters = &self.x.chain.filters;
        // What each retrying filter passed on, body included, for its retries to re-send.
        let mut snapshots: Vec<Option<(wasm::ChainRequest, Option<Bytes>)>> =
            vec![None; filters.len()];
        let mut passed = from;
        let mut early = None;
        'walk: for (k, f) in filters.iter().enumerate().skip(from) {
            loop {
                match self.on_request(f, &mut req).await {
                    Step::Go(memo) => {
                        self.memos[k] = memo.map(Bytes::from);
                        break;
                    }
                    Step::Stop(reply) => {
                        early = Some(*reply);
                        break 'walk;
                    }
                    Step::Wait(ms) => {
                        let at = self.x.trace_spans.then(|| self.x.now());
                        // The WIT: "a wait past the deadline ends the request with 504".
                        if let Err(e) = self.x.sleep_within_deadline(ms.max(1)).await {
                            early = Some(self.ended(e));
                            break 'walk;
                        }
                        self.x.note_wait(f, "wait", self.attempt, at);
                    }
                    Step::Expired => {
                        early = Some(self.ended(self.x.timeout()));
                        break 'walk;
                    }
                }
            }
            if f.info().may_retry {
                let body = match &self.body {
                    ReqBody::Buffered(b) => Some(b.clone()),
                    ReqBody::Stream(_) => None,
                };
                snapshots[k] = Some((req.clone(), body));
            }
            passed = k + 1;
        }
        let mut reply = match early {
            Some(r) => r,
            None => self.send(&req).await,
        };
        let mut k = passed;
        while k > from {
            k -= 1;
            let f = &filters[k];
            let Some(action) = self.on_response(f, k, &mut req, &mut reply).await else {
                // No instance in time: this filter misses its `on-response`, and the
                // request ends at its deadline; the filters before it see that.
                if !reply.fixed {
                    reply = self.ended(self.x.timeout());
                }
                continue;
            };
            if reply.fixed {
                self.settled(f, action, &mut reply);
                continue;
            }
            match action {
                ResponseAction::Continue(None) => {}
                ResponseAction::Continue(Some(edit)) => {
                    let fields = match &mut reply.outcome {
                        ChainOutcome::Response(r) => &mut r.headers,
                        ChainOutcome::Error(_) => &mut reply.error_headers,
                    };
                    if let Err(e) = edit_response(fields, edit) {
                        self.misbehaved(f, &e, &mut reply);
                    }
                }
                ResponseAction::Respond(resp) => match Reply::respond(resp) {
                    Ok(r) => reply = r,
                    Err(e) => self.misbehaved(f, &format!("invalid response: {e}"), &mut reply),
                },
                ResponseAction::Retry(ms) => {
                    let Some((snapshot, body)) = snapshots[k].clone() else {
                        continue;
                    };
                    let until = self.x.now() + Duration::from_millis(u64::from(ms));
                    if self.attempt >= self.x.max_attempts
                        || matches!(self.body, ReqBody::Stream(_))
                        || until > self.x.deadline
                    {
                        continue;
                    }
                    // The next try replaces this outcome: release its upstream body, and
                    // with it the connection and the `max_connections` slot, now rather
                    // than after the next try (which may need that very slot).
                    reply.stream = None;
                    self.x.sleep_until(until).await;
                    let at = until - Duration::from_millis(u64::from(ms));
                    self.x.note_wait(f, "retry", self.attempt, Some(at));
                    // Later filters may have replaced the body on the last try.
                    if let Some(b) = body {
                        self.body = ReqBody::Buffered(b);
                    }
                    self.attempt += 1;
                    self.x.metrics.record_retry();
                    reply = self.pass(k + 1, snapshot).await;
                    // Filter k sees the new outcome next.
                    k += 1;
                }
            }
        }
        reply
    }

    /// weir ends the request with `err`; the filters that continued are told.
    fn ended(&self, err: ProxyError) -> Reply {
        Reply::ended(err, self.x.route, self.x.id)
    }

    /// Applies filter `f`'s answer to a reply weir has fixed: a `continue` edit adds
    /// headers to the error response; anything else is ignored, since the WIT's
    /// `wait(…)` "ends the request with 504" and weir's other errors are limits the
    /// filters do not lift.
    fn settled(&self, f: &FilterPool, action: ResponseAction, reply: &mut Reply) {
        match action {
            ResponseAction::Continue(None) => {}
            ResponseAction::Continue(Some(edit)) => {
                if let Err(e) = edit_response(&mut reply.error_headers, edit) {
                    f.invalid_answer(Phase::Response, &e);
                    self.x.note_invalid(f, e);
                }
            }
            ResponseAction::Respond(_) | ResponseAction::Retry(_) => {
                tracing::debug!(
                    route = %self.x.route,
                    filter = %f.name(),
                    request_id = %self.x.id,
                    "the request already failed in weir; the filter's respond or retry is ignored"
                );
            }
        }
    }

    async fn on_request(&mut self, f: &FilterPool, req: &mut wasm::ChainRequest) -> Step {
        if !f.phases().request {
            return Step::Go(None);
        }
        let started = self.x.call_started();
        let mut calls = self.x.trace_spans.then(Vec::new);
        self.refresh_info();
        let body = self.body.for_filter(f);
        let result = f
            .on_request_until(
                &mut self.info,
                req,
                body,
                self.x.instance_wait(self.x.deadline),
                calls.as_mut(),
            )
            .await;
        self.x
            .time_filter(f, "on_request", self.attempt, started, calls);
        match result {
            Ok(RequestAction::Continue((edit, memo))) => {
                if let Some(edit) = edit
                    && let Err(e) = self.apply_request_edit(req, edit)
                {
                    return self.invalid_request_answer(f, format!("invalid request edit: {e}"));
                }
                Step::Go(memo)
            }
            Ok(RequestAction::Respond(resp)) => match Reply::respond(resp) {
                Ok(r) => Step::Stop(Box::new(r)),
                Err(e) => self.invalid_request_answer(f, format!("invalid response: {e}")),
            },
            Ok(RequestAction::Wait(ms)) => Step::Wait(ms),
            // Not the filter's failure, and skipping it (fail-open) would let requests
            // past an auth or a sanitizer whenever its pool is busy: the request ran
            // out of time, like any other wait.
            Err(Unanswered::Busy) => Step::Expired,
            Err(Unanswered::Failed(CallError::Invalid(detail))) => {
                self.invalid_request_answer(f, format!("invalid request edit: {detail}"))
            }
            Err(Unanswered::Failed(e)) => {
                let detail = e.to_string();
                self.x.note_failure(f, e);
                self.failed_request(f, detail)
            }
        }
    }

    fn apply_request_edit(
        &mut self,
        req: &mut wasm::ChainRequest,
        edit: wasm::RequestEdit,
    ) -> Result<(), String> {
        edit_request(
            req,
            edit.set_headers,
            &edit.remove_headers,
            edit.path_with_query,
        )?;
        if let Some(b) = edit.body {
            self.body = ReqBody::Buffered(Bytes::from(b));
        }
        if let Some(ms) = edit.try_timeout_ms {
            let t = Duration::from_millis(u64::from(ms));
            self.try_timeout = Some(self.try_timeout.map_or(t, |old| old.min(t)));
        }
        Ok(())
    }

    /// An `on-request` answer weir cannot apply: logged, counted, then `on_error`.
    fn invalid_request_answer(&self, f: &FilterPool, detail: String) -> Step {
        f.invalid_answer(Phase::Request, &detail);
        self.x.note_invalid(f, detail.clone());
        self.failed_request(f, detail)
    }

    fn failed_request(&self, f: &FilterPool, detail: String) -> Step {
        match f.on_error() {
            OnError::FailOpen => Step::Go(None),
            OnError::FailClosed => Step::Stop(Box::new(Reply::error(
                &ProxyError::FilterFailed {
                    filter: f.name().to_owned(),
                    detail,
                },
                self.x.route,
                self.x.id,
            ))),
        }
    }

    /// A filter's `on-response` answer was invalid: logged, counted, then fail open or
    /// closed, as configured.
    fn misbehaved(&self, f: &FilterPool, detail: &str, reply: &mut Reply) {
        f.invalid_answer(Phase::Response, detail);
        self.x.note_invalid(f, detail.to_owned());
        if f.on_error() == OnError::FailClosed {
            *reply = Reply::error(
                &ProxyError::FilterFailed {
                    filter: f.name().to_owned(),
                    detail: detail.to_owned(),
                },
                self.x.route,
                self.x.id,
            );
        }
    }

    /// Calls `f`'s `on-response`; `None` when no instance became free in time. A failed
    /// call is answered by `on_error` here (on a fixed reply it changes nothing).
    async fn on_response(
        &mut self,
        f: &FilterPool,
        k: usize,
        req: &mut wasm::ChainRequest,
        reply: &mut Reply,
    ) -> Option<ResponseAction> {
        if !f.phases().response {
            return Some(ResponseAction::Continue(None));
        }
        // Only filters that asked for the body get it.
        let hidden = match (&mut reply.outcome, f.info().wants_response_body) {
            (ChainOutcome::Response(r), false) => r.body.take(),
            _ => None,
        };
        let started = self.x.call_started();
        let mut calls = self.x.trace_spans.then(Vec::new);
        self.refresh_info();
        let until = self.x.response_wait_until(f);
        let body = self.body.for_filter(f);
        let returned = wasm::Returned {
            memo: self.memos[k].as_ref(),
            body,
            outcome: &mut reply.outcome,
            error_headers: &mut reply.error_headers,
            fixed: reply.fixed,
        };
        let result = f
            .on_response_until(&mut self.info, req, returned, until, calls.as_mut())
            .await;
        self.x
            .time_filter(f, "on_response", self.attempt, started, calls);
        if let (ChainOutcome::Response(r), Some(b)) = (&mut reply.outcome, hidden) {
            r.body = Some(b);
        }
        match result {
            Ok(action) => Some(action),
            Err(Unanswered::Busy) => None,
            Err(Unanswered::Failed(CallError::Invalid(detail))) => {
                let detail = format!("invalid response edit: {detail}");
                if reply.fixed {
                    f.invalid_answer(Phase::Response, &detail);
                    self.x.note_invalid(f, detail);
                } else {
                    self.misbehaved(f, &detail, reply);
                }
                Some(ResponseAction::Continue(None))
            }
            Err(Unanswered::Failed(e)) => {
                if !reply.fixed && f.on_error() == OnError::FailClosed {
                    *reply = Reply::error(
                        &ProxyError::FilterFailed {
                            filter: f.name().to_owned(),
                            detail: e.to_string(),
                        },
                        self.x.route,
                        self.x.id,
                    );
                }
                self.x.note_failure(f, e);
                Some(ResponseAction::Continue(None))
            }
        }
    }

    /// Calls the upstream with the request as the chain left it. The reply is an
    /// upstream failure when no whole response came in time, and fixed when weir ends
    /// the request itself (see [`Reply::ended`]).
    async fn send(&mut self, req: &wasm::ChainRequest) -> Reply {
        let (body, whole) = match &mut self.body {
            ReqBody::Buffered(b) => (body::full(b.clone()), true),
            ReqBody::Stream(s) => (s.take().unwrap_or_else(body::empty), self.body_whole),
        };
        let mut out = Box::new(http::Request::new(body));
        if !out.body().is_end_stream() {
            out.extensions_mut().insert(self.body_fault.clone());
            if whole {
                out.extensions_mut().insert(body::Whole);
            }
        }
        *out.method_mut() = self.method.clone();
        *out.uri_mut() = match self.x.upstream.uri(&req.path_with_query) {
            Ok(u) => u,
            Err(e) => return self.ended(e),
        };
        let mut h = req.headers.clone();
        headers::prepare_upstream(&mut h);
        *out.headers_mut() = h;
        self.x.finish_request(out.headers_mut());
        self.x.compress_request(&mut out);
        let now = self.x.now();
        let (deadline, timeout_ms) = match self.try_timeout {
            Some(t) if now + t < self.x.deadline => (now + t, t.as_millis() as u64),
            _ => (self.x.deadline, self.x.timeout_ms()),
        };
        let sent = self
            .x
            .send_upstream(out, deadline, timeout_ms, self.attempt)
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            // The client's body failed (413, 400, 408, 499): the client's fault, not the
            // upstream's, whatever the filters say.
            Err(f) if f.error.origin() == Origin::Client => return self.ended(f.error),
            Err(f) => return Reply::upstream_failed(f.kind, f.error),
        };
        headers::strip_hop_by_hop(resp.headers_mut());
        let (mut parts, mut stream) = resp.into_parts();
        let (body, stream) = if self.x.chain.buffer_response {
            let limit = self.x.max_body;
            // Filters read the body decoded. The limit below then counts decoded bytes,
            // and the decoder yields small frames, so a bomb stops at the limit.
            if self.x.chain.compression.is_some_and(|c| c.response)
                && let Ok(Some(coding)) = compress::content_coding(&parts.headers)
            {
                compress::mark_decoded(&mut parts.headers);
                stream = compress::decode(stream, coding);
            }
            // A body that does not come whole in time, or breaks off, is an upstream
            // failure like a head that does not come: the filters may answer it as
            // such (a cache's stale copy, a retry).
            match crate::deadline::within(self.x.deadline, body::collect_limited(stream, limit))
                .await
            {
                Err(_) => return Reply::upstream_failed(UpstreamError::Timeout, self.x.timeout()),
                Ok(Ok(b)) => (Some(b.to_vec()), None),
                Ok(Err(e)) if body::is_too_large(e.as_ref()) => {
                    let filter = self
                        .x
                        .chain
                        .filters
                        .iter()
                        .find(|f| f.info().wants_response_body)
                        .map(|f| f.name().to_owned())
                        .unwrap_or_default();
                    return self.ended(ProxyError::ResponseTooLarge { filter, limit });
                }
                Ok(Err(e)) => {
                    return Reply::upstream_failed(
                        UpstreamError::Reset,
                        ProxyError::UpstreamBroken {
                            upstream: self.x.upstream.origin.clone(),
                            detail: format!("reading the response body: {e}"),
                        },
                    );
                }
            }
        } else {
            (None, Some(stream))
        };
        Reply {
            outcome: ChainOutcome::Response(ChainResponse {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            }),
            stream,
            error: None,
            error_headers: HeaderMap::new(),
            fixed: false,
        }
    }
}

/// What one `on-request` call comes to.
enum Step {
    /// Go on, with this memo.
    Go(Option<Vec<u8>>),
    /// Stop the walk with this reply (boxed: a reply is large, and rare here).
    Stop(Box<Reply>),
    /// Ask again after this many milliseconds.
    Wait(u32),
    /// No instance became free before the deadline.
    Expired,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> wasm::ChainRequest {
        wasm::ChainRequest {
            method: "GET".to_owned(),
            upstream: "http://upstream.test".to_owned(),
            path_with_query: "/a".to_owned(),
            headers: headers::from_fields(&[("x-a".to_owned(), b"1".to_vec())]),
        }
    }

    fn parts(req: &wasm::ChainRequest) -> (&str, Vec<(String, Vec<u8>)>) {
        (&req.path_with_query, headers::to_fields(&req.headers))
    }

    #[test]
    fn ids_are_32_hex_digits_and_unique() {
        let (a, b) = (unique_id(), unique_id());
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(a[..16], b[..16], "one prefix per process");
        let (na, nb) = (
            u64::from_str_radix(&a[16..], 16).unwrap(),
            u64::from_str_radix(&b[16..], 16).unwrap(),
        );
        assert!(nb > na);
    }

    #[test]
    fn addresses_read_as_display_writes_them() {
        for addr in [
            "0.0.0.0:0",
            "127.0.0.1:8080",
            "255.255.255.255:65535",
            "10.20.3.40:9",
            "[::1]:443",
            "[2001:db8::7]:65535",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(addr_text(addr), addr.to_string());
        }
    }

    /// Found by the `wit_answers` fuzz target: headers set and removed before the path
    /// was refused, so a filter failing open sent them on.
    #[test]
    fn a_request_edit_with_a_bad_path_changes_nothing() {
        let mut req = request();
        let e = edit_request(
            &mut req,
            vec![("x-b".to_owned(), b"2".to_vec())],
            &["x-a".to_owned()],
            Some("no-slash".to_owned()),
        )
        .unwrap_err();
        assert_eq!(e, "invalid path \"no-slash\"");
        assert_eq!(parts(&req), parts(&request()));
    }

    #[test]
    fn a_request_edit_with_a_bad_header_changes_nothing() {
        let mut req = request();
        let set = vec![
            ("x-b".to_owned(), b"2".to_vec()),
            ("x-c".to_owned(), b"a\r\nb".to_vec()),
        ];
        let e = edit_request(&mut req, set, &["x-a".to_owned()], Some("/b".to_owned()));
        assert!(e.unwrap_err().contains("x-c"));
        assert_eq!(parts(&req), parts(&request()));
    }

    #[test]
    fn a_valid_request_edit_applies_every_part() {
        let mut req = request();
        let set = vec![("X-B".to_owned(), b"2".to_vec())];
        edit_request(
            &mut req,
            set,
            &["X-A".to_owned()],
            Some("/b?c=d".to_owned()),
        )
        .unwrap();
        let want = vec![("x-b".to_owned(), b"2".to_vec())];
        assert_eq!(parts(&req), ("/b?c=d", want));
    }

    #[test]
    fn a_response_edit_with_a_hop_by_hop_header_changes_nothing() {
        let before = headers::from_fields(&[("x-a".to_owned(), b"1".to_vec())]);
        let mut fields = before.clone();
        let edit = wasm::ResponseEdit {
            set_headers: vec![
                ("x-b".to_owned(), b"2".to_vec()),
                ("connection".to_owned(), b"close".to_vec()),
            ],
            remove_headers: vec!["x-a".to_owned()],
        };
        assert!(edit_response(&mut fields, edit).is_err());
        assert_eq!(fields, before);
    }
}
