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
//! use weir::harness::{Harness, info, request, response};
//! use weir::wasm::{Outcome, RequestAction};
//! let h = Harness::builtin("headers", serde_json::json!({
//!     "request": { "set": { "x-api-key": "k" } }
//! })).await?;
//! let action = h.on_request(&info("r1", 1), &request("GET", "/items")).await?;
//! assert!(matches!(action, RequestAction::Continue((Some(_), None))));
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::clock::VirtualClock;
use crate::config::FilterConfig;
use crate::state::MemoryBackend;
use crate::wasm::{
    CallError, FilterInfo, FilterMetrics, FilterPool, LoadError, Outcome, Request, RequestAction,
    RequestInfo, Response, ResponseAction, Runtime, builtin,
};

/// How many `wait` answers [`Harness::exchange`] follows before giving up.
const MAX_WAITS: u32 = 10_000;

/// The state store's budget in the harness.
const STATE_BYTES: u64 = 64 << 20;

/// One filter, initialised, on a virtual clock.
pub struct Harness {
    clock: VirtualClock,
    state: Arc<MemoryBackend>,
    runtime: Arc<Runtime>,
    pool: Arc<FilterPool>,
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
        let metrics = FilterMetrics::new(&prometheus::Registry::new())
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        let runtime = Runtime::with_clock(
            Runtime::default_cache_dir().as_deref(),
            state.clone(),
            Arc::new(metrics),
            clock.clone(),
        )?;
        let pool = Harness::make_pool(&runtime, wasm, &config, settings).await?;
        Ok(Harness {
            clock,
            state,
            runtime,
            pool,
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
        Ok(Harness {
            clock: self.clock.clone(),
            state: self.state.clone(),
            runtime: self.runtime.clone(),
            pool: Harness::make_pool(&self.runtime, wasm, &config, &FilterConfig::default())
                .await?,
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

    /// Plays the host's part for one request through this one filter: follows `wait`
    /// (advancing the clock), calls `upstream` when the filter continues, and follows
    /// `retry` (advancing the clock, calling `upstream` again with `attempt + 1`, at most
    /// `max_attempts` tries).
    ///
    /// As in a route, the filter sees `req.body` only if its `info()` sets
    /// `wants_request_body`, and the upstream's response body only with
    /// `wants_response_body`; `upstream` always gets the body (the edited one, if the
    /// filter replaced it), and the final outcome keeps the upstream's body. Edits are
    /// applied as the host applies them; an edit or a response the host would refuse
    /// (an invalid header, path or status) is an error, as a trap would be.
    pub async fn exchange(
        &self,
        id: &str,
        mut req: Request,
        max_attempts: u32,
        mut upstream: impl FnMut(&Request, u32) -> Outcome,
    ) -> Result<Exchange, CallError> {
        let mut ex = Exchange {
            outcome: Outcome::Error(crate::wasm::UpstreamError::ConnectFailed),
            responded: false,
            upstream_calls: 0,
            attempts: 1,
            waited: Duration::ZERO,
        };
        let filter = self.info();
        let mut body = req.body.take();
        let mut waits = 0;
        let memo = loop {
            if filter.wants_request_body {
                req.body.clone_from(&body);
            }
            let action = self.on_request(&info(id, 1), &req).await;
            req.body = None;
            match action? {
                RequestAction::Continue((edit, memo)) => {
                    if let Some(e) = edit {
                        apply_request_edit(&mut req, &mut body, e)?;
                    }
                    break memo;
                }
                RequestAction::Respond(r) => {
                    check_response(&r)?;
                    ex.outcome = Outcome::Response(r);
                    ex.responded = true;
                    return Ok(ex);
                }
                RequestAction::Wait(ms) => {
                    waits += 1;
                    if waits > MAX_WAITS {
                        return Err(CallError::Trap("the filter kept answering wait".into()));
                    }
                    let d = Duration::from_millis(u64::from(ms.max(1)));
                    self.advance(d);
                    ex.waited += d;
                }
            }
        };
        req.body = body;
        loop {
            ex.upstream_calls += 1;
            ex.outcome = upstream(&req, ex.attempts);
            let sent_body = req.body.take();
            // Only a filter that asked for the response body gets it.
            let hidden = match (&mut ex.outcome, filter.wants_response_body) {
                (Outcome::Response(r), false) => r.body.take(),
                _ => None,
            };
            let action = self
                .on_response(&info(id, ex.attempts), &req, memo.as_deref(), &ex.outcome)
                .await;
            req.body = sent_body;
            if let (Outcome::Response(r), Some(b)) = (&mut ex.outcome, hidden) {
                r.body = Some(b);
            }
            match action? {
                ResponseAction::Continue(edit) => {
                    if let (Some(e), Outcome::Response(r)) = (edit, &mut ex.outcome) {
                        crate::headers::apply_edit(
                            &mut r.headers,
                            e.set_headers,
                            &e.remove_headers,
                        )
                        .map_err(|e| invalid("response edit", e))?;
                    }
                    return Ok(ex);
                }
                ResponseAction::Respond(r) => {
                    check_response(&r)?;
                    ex.outcome = Outcome::Response(r);
                    return Ok(ex);
                }
                ResponseAction::Retry(ms) => {
                    if ex.attempts >= max_attempts || !filter.may_retry {
                        return Ok(ex);
                    }
                    let d = Duration::from_millis(u64::from(ms));
                    self.advance(d);
                    ex.waited += d;
                    ex.attempts += 1;
                }
            }
        }
    }
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

/// What the host makes of an answer it refuses: the filter failed, in these words.
fn invalid(what: &str, detail: String) -> CallError {
    CallError::Trap(format!("invalid {what}: {detail}"))
}

fn apply_request_edit(
    req: &mut Request,
    body: &mut Option<Vec<u8>>,
    e: crate::wasm::RequestEdit,
) -> Result<(), CallError> {
    crate::headers::apply_edit(&mut req.headers, e.set_headers, &e.remove_headers)
        .map_err(|d| invalid("request edit", d))?;
    if let Some(p) = e.path_with_query {
        if !p.starts_with('/') || p.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(invalid("request edit", format!("invalid path {p:?}")));
        }
        req.path_with_query = p;
    }
    if let Some(b) = e.body {
        *body = Some(b);
    }
    Ok(())
}

/// Refuses a response the host would not send: a status outside 100–999 or a bad header.
fn check_response(r: &Response) -> Result<(), CallError> {
    http::StatusCode::from_u16(r.status)
        .map_err(|_| invalid("response", format!("invalid status {}", r.status)))?;
    for (n, v) in &r.headers {
        crate::headers::validate(n, v).map_err(|d| invalid("response", d))?;
    }
    Ok(())
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
        remaining_ms: 30_000,
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
