//! A test harness for filters: load any component, call `init`, drive `on-request` and
//! `on-response` with scripted requests and outcomes, on a virtual clock.
//!
//! The harness uses the same runtime, pools, limits and host interfaces as `weir run`,
//! so a filter behaves here as it does in a route. Time is virtual: the guest's WASI wall
//! and monotonic clocks and the state store's TTLs only move when the test calls
//! [`Harness::advance`], so windows, TTLs, backoff and `Retry-After` are tested exactly,
//! without sleeping.
//!
//! 1. `let h = Harness::builtin("breaker", json!({ "window": 5 })).await?;` (or
//!    [`Harness::load`] with a component's bytes).
//! 2. Call [`Harness::on_request`] / [`Harness::on_response`] with [`request`],
//!    [`info`] and [`response`] values, or let [`Harness::exchange`] play the host's part
//!    for one request against a scripted upstream.
//! 3. [`Harness::advance`] the clock between calls.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use weir::authoring::harness::{Harness, info, request, response};
//! use weir::wasm::{Outcome, RequestAction};
//! let h = Harness::builtin("headers", serde_json::json!({
//!     "request": { "set": { "x-api-key": "k" } }
//! })).await?;
//! let action = h.on_request(&info("r1", 1), &request("GET", "/items")).await?;
//! assert!(matches!(action, RequestAction::Continue((Some(_), None))));
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::body::{self, BodyFault, ProxyBody};
use crate::builtin;
use crate::chain::{self, Chain};
use crate::clock::VirtualClock;
use crate::config::{FilterConfig, HumanDuration, Origin, UpstreamConfig};
use crate::error::ProxyError;
use crate::recent::Trace;
use crate::state::MemoryBackend;
use crate::telemetry::{RouteMetrics, Telemetry};
use crate::upstream::{Upstream, UpstreamFailure, UpstreamPool};
use crate::wasm::{
    CallError, FilterInfo, FilterMetrics, FilterPool, LoadError, Outcome, Request, RequestAction,
    RequestInfo, Response, ResponseAction, Runtime, UpstreamError,
};

/// The route timeout of [`Harness::exchange`], in virtual time; also the `remaining_ms`
/// of [`info`].
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);

/// The scripted upstream's origin, which filters see as `request.upstream`.
const ORIGIN: &str = "http://upstream.test";

/// The state store's budget in the harness.
const STATE_BYTES: u64 = 64 << 20;

/// One filter, initialised, on a virtual clock.
pub struct Harness {
    clock: VirtualClock,
    state: Arc<MemoryBackend>,
    runtime: Arc<Runtime>,
    telemetry: Arc<Telemetry>,
    pool: Arc<FilterPool>,
    route: Route,
}

impl Harness {
    /// Loads the component `wasm` and initialises it with `config`, under the default
    /// limits (`max_memory`, `max_call_time`) of a `[filters.NAME]` table.
    pub async fn load(wasm: &[u8], config: serde_json::Value) -> Result<Harness, LoadError> {
        Harness::load_with(wasm, config, &FilterConfig::default()).await
    }

    /// Like [`Harness::load`], under the limits and `on_error` of `settings` (its `wasm`
    /// and `config` are not used). One instance is initialised at load; more are made
    /// as calls need them, up to `max_instances`.
    pub async fn load_with(
        wasm: &[u8],
        config: serde_json::Value,
        settings: &FilterConfig,
    ) -> Result<Harness, LoadError> {
        let clock = VirtualClock::new();
        let state = MemoryBackend::with_clock(STATE_BYTES, clock.clone());
        let engine = |e: prometheus::Error| LoadError::Engine(e.to_string());
        let telemetry = Telemetry::new().map_err(engine)?;
        let runtime = Runtime::with_clock(
            Runtime::default_cache_dir().as_deref(),
            state.clone(),
            Arc::new(FilterMetrics::new(&telemetry.registry).map_err(engine)?),
            clock.clone(),
        )?;
        let pool = Harness::make_pool(&runtime, wasm, &config, settings).await?;
        let route = Route::new(vec![pool.clone()], &telemetry)?;
        Ok(Harness {
            clock,
            state,
            runtime,
            telemetry,
            pool,
            route,
        })
    }

    /// Loads the built-in filter `name` (`headers`, `retry`, …).
    pub async fn builtin(name: &str, config: serde_json::Value) -> Result<Harness, LoadError> {
        let b = builtin::lookup(name).ok_or_else(|| LoadError::Invalid {
            what: name.to_owned(),
            detail: format!(
                "no built-in filter of that name (built-in: {})",
                builtin::names().join(", ")
            ),
        })?;
        Harness::load(b.wasm, config).await
    }

    async fn make_pool(
        runtime: &Arc<Runtime>,
        wasm: &[u8],
        config: &serde_json::Value,
        settings: &FilterConfig,
    ) -> Result<Arc<FilterPool>, LoadError> {
        let loaded = runtime.load("the filter under test", wasm)?;
        let settings = FilterConfig {
            min_instances: 1,
            ..settings.clone()
        };
        runtime
            .pool(
                loaded,
                "filter",
                "test",
                config.to_string(),
                &settings,
                None,
                crate::config::defaults::max_body_bytes().0,
            )
            .await
    }

    /// Another instance pool of the same component with its own config, sharing this
    /// harness's clock and state: two routes, or two weir processes, using one key.
    pub async fn sibling(
        &self,
        wasm: &[u8],
        config: serde_json::Value,
    ) -> Result<Harness, LoadError> {
        let pool =
            Harness::make_pool(&self.runtime, wasm, &config, &FilterConfig::default()).await?;
        Ok(Harness {
            clock: self.clock.clone(),
            state: self.state.clone(),
            runtime: self.runtime.clone(),
            telemetry: self.telemetry.clone(),
            route: Route::new(vec![pool.clone()], &self.telemetry)?,
            pool,
        })
    }

    /// This harness with `wasm` (initialised with `config`) added after its filters in
    /// the route's chain, sharing the clock and state: [`Harness::exchange`] then runs a
    /// request through all of them, as a route with that `filters` list would. The
    /// single-call methods ([`Harness::on_request`], …) still call the first filter.
    pub async fn then(self, wasm: &[u8], config: serde_json::Value) -> Result<Harness, LoadError> {
        let next =
            Harness::make_pool(&self.runtime, wasm, &config, &FilterConfig::default()).await?;
        let mut filters = self.route.chain.filters().to_vec();
        filters.push(next);
        Ok(Harness {
            route: Route::new(filters, &self.telemetry)?,
            ..self
        })
    }

    /// What the filter's `init` returned.
    pub fn info(&self) -> &FilterInfo {
        self.pool.info()
    }

    /// The virtual clock.
    pub fn clock(&self) -> &VirtualClock {
        &self.clock
    }

    /// The state store the filter sees (keys are prefixed `filter/`).
    pub fn state(&self) -> &MemoryBackend {
        &self.state
    }

    /// Moves the virtual clock (guest clocks and state TTLs) forward.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Calls `on-request`.
    pub async fn on_request(
        &self,
        info: &RequestInfo,
        req: &Request,
    ) -> Result<RequestAction, CallError> {
        self.pool.on_request(info, req).await
    }

    /// Calls `on-response`.
    pub async fn on_response(
        &self,
        info: &RequestInfo,
        req: &Request,
        memo: Option<&[u8]>,
        outcome: &Outcome,
    ) -> Result<ResponseAction, CallError> {
        self.pool.on_response(info, req, memo, outcome).await
    }

    /// Runs one request through a route whose chain is this one filter, against a
    /// scripted upstream: the very walk `weir run` makes ([`crate::chain`]), on the
    /// virtual clock. `wait` and `retry` delays move the clock instead of sleeping; the
    /// route's timeout is [`ROUTE_TIMEOUT`] of virtual time, and at most `max_attempts`
    /// tries are made.
    ///
    /// As in a route, the filter sees `req.body` only if its `info()` sets
    /// `wants_request_body`, and the upstream's response body only with
    /// `wants_response_body`; `upstream` gets the request as weir sends it (the edited
    /// body, and weir's own `x-request-id`, `traceparent` and `host`), and the final
    /// outcome keeps the upstream's body. A failed call, or an answer weir refuses (an
    /// invalid header, path or status), is the error, whatever `on_error` says.
    pub async fn exchange(
        &self,
        id: &str,
        mut req: Request,
        max_attempts: u32,
        upstream: impl FnMut(&Request, u32) -> Outcome + Send,
    ) -> Result<Exchange, CallError> {
        let script = Script {
            clock: &self.clock,
            origin: &self.route.upstream.origin,
            answer: Mutex::new(upstream),
            tries: Mutex::new((0, None)),
        };
        let method = http::Method::from_bytes(req.method.as_bytes())
            .map_err(|e| CallError::Trap(format!("invalid request method: {e}")))?;
        let id_header = http::HeaderValue::from_str(id)
            .map_err(|e| CallError::Trap(format!("invalid request id {id:?}: {e}")))?;
        let mut headers = crate::headers::from_fields(&req.headers);
        // As the listener does; the exchange sets `x-request-id` from `id_header`.
        crate::headers::prepare_upstream(&mut headers);
        let body = req
            .body
            .take()
            .map_or_else(body::empty, |b| body::full(b.into()));
        let trace = std::sync::Mutex::new(Trace::default());
        let started = self.clock.elapsed();
        let x = chain::Exchange {
            route: ROUTE,
            chain: &self.route.chain,
            upstream: &self.route.upstream,
            transport: chain::Transport::Scripted(&script),
            id,
            id_header: &id_header,
            client: CLIENT.into(),
            deadline: self.clock.instant() + ROUTE_TIMEOUT,
            timeout: ROUTE_TIMEOUT,
            max_body: MAX_BODY,
            traceparent: &http::HeaderValue::from_static(TRACEPARENT),
            trace: &trace,
            record_timings: false,
            trace_spans: false,
            metrics: &self.route.metrics,
            max_attempts: max_attempts.max(1),
        };
        let result = x
            .run(chain::Incoming {
                method,
                path_with_query: req.path_with_query,
                headers,
                body,
                body_fault: BodyFault::new(),
                body_whole: true,
            })
            .await;
        let trace = trace.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Some(failure) = trace.failures.into_iter().next() {
            return Err(failure.error);
        }
        let (upstream_calls, last_error) = *script.tries.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = match result {
            Ok(resp) if resp.extensions().get::<chain::Failed>().is_none() => {
                to_outcome(resp).await
            }
            // weir's own error, as the client would get it, unless it is the upstream's.
            Ok(resp) => match last_error {
                Some(kind) => Outcome::Error(kind),
                None => to_outcome(resp).await,
            },
            Err(ProxyError::Timeout { .. }) => Outcome::Error(UpstreamError::Timeout),
            Err(e) => match last_error {
                Some(kind) => Outcome::Error(kind),
                None => to_outcome(e.to_response(Some(ROUTE), id)).await,
            },
        };
        Ok(Exchange {
            responded: upstream_calls == 0 && matches!(outcome, Outcome::Response(_)),
            outcome,
            upstream_calls,
            attempts: trace.attempts,
            waited: self.clock.elapsed() - started,
        })
    }
}

/// The route the harness runs a filter in.
const ROUTE: &str = "test";
/// The client address filters see.
const CLIENT: ([u8; 4], u16) = ([127, 0, 0, 1], 40000);
/// The `traceparent` weir sends the scripted upstream.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// The most body bytes the harness route accepts or buffers.
const MAX_BODY: u64 = 1 << 30;

/// The route a [`Harness`] runs its filter in: a chain of that one filter, the scripted
/// upstream's origin, and the route's metrics.
struct Route {
    chain: Chain,
    upstream: Arc<Upstream>,
    metrics: RouteMetrics,
    /// Keeps the upstream's pool (and its metrics) alive; the script answers instead.
    _upstreams: UpstreamPool,
}

impl Route {
    fn new(filters: Vec<Arc<FilterPool>>, telemetry: &Telemetry) -> Result<Route, LoadError> {
        let engine = |e: String| LoadError::Engine(e);
        let config = UpstreamConfig {
            url: Origin::try_from(ORIGIN.to_owned()).map_err(engine)?,
            connect_timeout: HumanDuration(Duration::from_secs(1)),
            max_connections: 1,
            read_timeout: crate::config::defaults::upstream_read_timeout(),
            tls: None,
        };
        let upstreams =
            UpstreamPool::new(&[(ROUTE.to_owned(), config)], telemetry.upstreams.clone())
                .map_err(|e| engine(e.to_string()))?;
        let upstream = upstreams
            .get(ROUTE)
            .cloned()
            .ok_or_else(|| engine("the harness upstream is missing".into()))?;
        Ok(Route {
            chain: Chain::new(filters),
            upstream,
            metrics: telemetry.route(ROUTE),
            _upstreams: upstreams,
        })
    }
}

/// The scripted upstream of one [`Harness::exchange`].
struct Script<'h, F> {
    clock: &'h VirtualClock,
    origin: &'h str,
    answer: Mutex<F>,
    /// How many tries the upstream got, and the error it answered the last one with.
    tries: Mutex<(u32, Option<UpstreamError>)>,
}

impl<F: FnMut(&Request, u32) -> Outcome + Send> chain::Script for Script<'_, F> {
    fn answer(
        &self,
        req: http::Request<ProxyBody>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<ProxyBody>, UpstreamFailure>> + Send + '_>>
    {
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body::collect_limited(body, MAX_BODY)
                .await
                .unwrap_or_default();
            let seen = Request {
                method: parts.method.as_str().to_owned(),
                upstream: self.origin.to_owned(),
                path_with_query: parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned(),
                headers: crate::headers::to_fields(&parts.headers),
                body: (!body.is_empty()).then(|| body.to_vec()),
            };
            let attempt = {
                let mut tries = self.tries.lock().unwrap_or_else(|p| p.into_inner());
                tries.0 += 1;
                tries.0
            };
            let outcome = (self.answer.lock().unwrap_or_else(|p| p.into_inner()))(&seen, attempt);
            let last_error = match &outcome {
                Outcome::Error(kind) => Some(*kind),
                Outcome::Response(_) => None,
            };
            self.tries.lock().unwrap_or_else(|p| p.into_inner()).1 = last_error;
            match outcome {
                Outcome::Response(r) => {
                    let mut resp = http::Response::new(
                        r.body.map_or_else(body::empty, |b| body::full(b.into())),
                    );
                    *resp.status_mut() =
                        http::StatusCode::from_u16(r.status).map_err(|_| UpstreamFailure {
                            kind: UpstreamError::Protocol,
                            error: ProxyError::UpstreamBroken {
                                upstream: self.origin.to_owned(),
                                detail: format!("the script answered status {}", r.status),
                            },
                        })?;
                    *resp.headers_mut() = crate::headers::from_fields(&r.headers);
                    Ok(resp)
                }
                Outcome::Error(kind) => Err(UpstreamFailure {
                    kind,
                    error: ProxyError::UpstreamBroken {
                        upstream: self.origin.to_owned(),
                        detail: format!("the script answered error {kind:?}"),
                    },
                }),
            }
        })
    }

    fn clock(&self) -> &VirtualClock {
        self.clock
    }
}

/// A response as the filters' WIT sees it, body read whole.
async fn to_outcome(resp: http::Response<ProxyBody>) -> Outcome {
    let (parts, body) = resp.into_parts();
    let body = body::collect_limited(body, MAX_BODY)
        .await
        .unwrap_or_default();
    Outcome::Response(Response {
        status: parts.status.as_u16(),
        headers: crate::headers::to_fields(&parts.headers),
        body: (!body.is_empty()).then(|| body.to_vec()),
    })
}

/// What [`Harness::exchange`] ended with.
#[derive(Debug)]
pub struct Exchange {
    /// What the client would get (before other filters).
    pub outcome: Outcome,
    /// The filter answered from `on-request` without calling the upstream.
    pub responded: bool,
    /// How often the scripted upstream was called.
    pub upstream_calls: u32,
    /// The last attempt number.
    pub attempts: u32,
    /// The virtual time spent in `wait` and `retry` delays.
    pub waited: Duration,
}

impl Exchange {
    /// The final status, if there is a response.
    pub fn status(&self) -> Option<u16> {
        match &self.outcome {
            Outcome::Response(r) => Some(r.status),
            Outcome::Error(_) => None,
        }
    }

    /// The first value of a response header, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        match &self.outcome {
            Outcome::Response(r) => header(&r.headers, name),
            Outcome::Error(_) => None,
        }
    }
}

/// The first value of header `name` in `fields`, as text.
pub fn header(fields: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// A request to `path_with_query` on `http://upstream.test`, with no headers or body.
pub fn request(method: &str, path_with_query: &str) -> Request {
    Request {
        method: method.to_owned(),
        upstream: "http://upstream.test".to_owned(),
        path_with_query: path_with_query.to_owned(),
        headers: Vec::new(),
        body: None,
    }
}

/// `req` with header `name: value` added.
pub fn with_header(mut req: Request, name: &str, value: &str) -> Request {
    req.headers
        .push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
    req
}

/// Request info for request `id`, try `attempt`, on route "test", with 30 s left.
pub fn info(id: &str, attempt: u32) -> RequestInfo {
    RequestInfo {
        id: id.to_owned(),
        route: "test".to_owned(),
        attempt,
        remaining_ms: ROUTE_TIMEOUT.as_millis() as u64,
        client_addr: "127.0.0.1:40000".to_owned(),
    }
}

/// A response with this status and no headers or body.
pub fn response(status: u16) -> Response {
    Response {
        status,
        headers: Vec::new(),
        body: None,
    }
}

/// `resp` with header `name: value` added.
pub fn with_response_header(mut resp: Response, name: &str, value: &str) -> Response {
    resp.headers
        .push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn headers_filter_runs_in_the_harness() {
        let h = Harness::builtin(
            "headers",
            serde_json::json!({"request": {"set": {"x-api-key": "k"}}, "response": {"set": {"x-by": "weir"}}}),
        )
        .await
        .unwrap();
        assert_eq!(h.info().name, "headers");
        let ex = h
            .exchange("r1", request("GET", "/"), 1, |req, _| {
                assert_eq!(header(&req.headers, "x-api-key").as_deref(), Some("k"));
                Outcome::Response(response(200))
            })
            .await
            .unwrap();
        assert_eq!(ex.status(), Some(200));
        assert_eq!(ex.header("x-by").as_deref(), Some("weir"));
        assert_eq!(ex.upstream_calls, 1);
    }

    fn scripted() -> Vec<u8> {
        std::fs::read(env!("WEIR_TEST_SCRIPTED")).expect("build.rs built the scripted filter")
    }

    #[tokio::test]
    async fn the_upstream_gets_the_edited_body_and_the_filter_the_body_it_asked_for() {
        let h = Harness::load(
            &scripted(),
            serde_json::json!({"append_body": "+x", "wants_request_body": true}),
        )
        .await
        .unwrap();
        let mut req = request("POST", "/");
        req.body = Some(b"abc".to_vec());
        let mut sent = None;
        let ex = h
            .exchange("r1", req, 1, |req, _| {
                sent = Some(req.clone());
                Outcome::Response(response(200))
            })
            .await
            .unwrap();
        let sent = sent.unwrap();
        assert_eq!(sent.body.as_deref(), Some(&b"abc+x"[..]));
        assert_eq!(header(&sent.headers, "x-body-len-s").as_deref(), Some("3"));
        assert_eq!(ex.status(), Some(200));
    }

    #[tokio::test]
    async fn an_edit_the_host_would_refuse_is_an_error() {
        let h = Harness::load(&scripted(), serde_json::json!({"set_path": "no-slash"}))
            .await
            .unwrap();
        let err = h
            .exchange("r1", request("GET", "/"), 1, |_, _| {
                Outcome::Response(response(200))
            })
            .await
            .unwrap_err();
        assert_eq!(
            err,
            CallError::Trap("invalid request edit: invalid path \"no-slash\"".into())
        );
    }

    #[tokio::test]
    async fn unknown_builtin_is_an_error() {
        let err = Harness::builtin("nope", serde_json::json!({}))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("no built-in filter"), "{err}");
    }
}
