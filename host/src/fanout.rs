//! Fan-out routes: one request sent to several upstreams (`fanout = { targets = […] }`).
//!
//! Each target gets the request through the route's whole chain as its own call: its own
//! retries, its own limiter slot, and its own breaker, because the breaker's default key
//! is the upstream origin a call goes to. The client's body is read once, bounded by
//! `max_body_bytes` (413 before anything is sent), and every target's call reads the same
//! [`Bytes`]: a reference-counted view, never a copy per target.
//!
//! Modes ([`crate::config::FanoutMode`]):
//! - `all`: every target at once, each bounded by the route's deadline; the client gets
//!   200 and a JSON summary in target order. A target still busy at the deadline shows
//!   as `timeout` and never holds the answer back.
//! - `primary`: the client gets the first target's response as a plain route would give
//!   it; the others are mirrored in the background and their outcomes are only logged
//!   and counted (Envoy's request mirroring).
//! - `async`: the request becomes a job ([`crate::jobs`]) whose run sends every target,
//!   and whose record keeps each target's outcome.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use tokio::time::Instant;

use crate::body::{self, BodyFault, ProxyBody};
use crate::chain::{self, Exchange, Failed, Transport};
use crate::error::{ProxyError, json_response};
use crate::jobs::{Budget, CallOutcome};
use crate::recent::Trace;
use crate::router::{Route, Router};
use crate::upstream::Upstream;

/// One client request on its way to every target of a fan-out route: what each
/// target's call shares. The body is read once; each call takes a cheap clone of it.
pub struct Fanout {
    router: Arc<Router>,
    route: usize,
    id: String,
    id_header: HeaderValue,
    client: SocketAddr,
    deadline: Instant,
    max_body: u64,
    traceparent: HeaderValue,
    method: Method,
    path_with_query: String,
    headers: HeaderMap,
    body: Bytes,
    /// What the targets' bodies may hold together.
    budget: Budget,
}

/// The parts of a [`Fanout`] that come from the client's request.
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path and query to send upstream.
    pub path_with_query: String,
    /// The headers, prepared for upstreams (each target's exchange sets `x-request-id`).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Fanout {
    /// The fan-out of `req` by `route` of `router` (a route of that table), by
    /// `deadline`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        router: Arc<Router>,
        route: &Route,
        id: &HeaderValue,
        client: SocketAddr,
        deadline: Instant,
        max_body: u64,
        traceparent: HeaderValue,
        req: Request,
    ) -> Fanout {
        let route = router
            .routes()
            .iter()
            .position(|r| std::ptr::eq(r, route))
            .expect("the route belongs to this router");
        Fanout {
            router,
            route,
            id: id.to_str().unwrap_or_default().to_owned(),
            id_header: id.clone(),
            client,
            deadline,
            max_body,
            traceparent,
            method: req.method,
            path_with_query: req.path_with_query,
            headers: req.headers,
            body: req.body,
            budget: Budget::new(max_body),
        }
    }

    fn route(&self) -> &Route {
        &self.router.routes()[self.route]
    }

    fn targets(&self) -> &[Arc<Upstream>] {
        self.route().fanout.as_ref().map_or(&[], |(t, _)| t)
    }

    /// Sends the request to `target` through the route's chain: what a plain route's
    /// call would return, and the tries made.
    async fn send(&self, target: &Upstream) -> (Result<Response<ProxyBody>, ProxyError>, u32) {
        let route = self.route();
        let trace = Mutex::new(Trace::default());
        let x = Exchange {
            route: &route.name,
            chain: &route.chain,
            upstream: target,
            transport: Transport::Pool(&self.router.upstreams),
            id: &self.id,
            id_header: &self.id_header,
            client: self.client,
            deadline: self.deadline,
            timeout: route.timeout,
            max_body: self.max_body,
            traceparent: &self.traceparent,
            trace: &trace,
            record_timings: false,
            trace_spans: false,
            metrics: &route.metrics,
            max_attempts: chain::MAX_ATTEMPTS,
        };
        let result = x
            .run(chain::Incoming {
                method: self.method.clone(),
                path_with_query: self.path_with_query.clone(),
                headers: self.headers.clone(),
                body: body::full(self.body.clone()),
                body_fault: BodyFault::new(),
                body_whole: true,
            })
            .await;
        let attempts = trace.lock().unwrap_or_else(|p| p.into_inner()).attempts;
        (result, attempts)
    }

    /// Sends the request to target `i` and reads the whole answer by the deadline.
    async fn outcome(&self, i: usize) -> CallOutcome {
        let started = Instant::now();
        let target = &self.targets()[i];
        let (result, attempts) = self.send(target).await;
        let (resp, code) = match result {
            Ok(r) => {
                let code = r.extensions().get::<Failed>().map(|f| f.code);
                (r, code)
            }
            Err(e) => (
                e.to_response(Some(&self.route().name), &self.id),
                Some(e.code()),
            ),
        };
        let mut out =
            CallOutcome::read(resp, code, attempts, started, self.deadline, &self.budget).await;
        out.target = Some(target.name.clone());
        self.count(&target.name, &out);
        out
    }

    /// Counts a target's outcome and logs it.
    fn count(&self, target: &str, out: &CallOutcome) {
        let outcome = CallOutcome::label(out.error.as_deref(), out.status);
        self.route().metrics.fanout_target(target, outcome);
        tracing::debug!(
            request_id = %self.id,
            route = %self.route().name,
            target,
            status = out.status,
            attempts = out.attempts,
            error = out.error.as_deref().unwrap_or("-"),
            "fan-out target"
        );
    }

    /// Every target's outcome, in target order, all sent at once. A target that
    /// already succeeded in `before` (a job's earlier run) keeps that outcome and is not
    /// sent again.
    pub async fn all(&self, before: &[CallOutcome]) -> Vec<CallOutcome> {
        let calls = self.targets().iter().enumerate().map(|(i, t)| async move {
            let kept = before
                .iter()
                .find(|o| o.ok() && o.target.as_deref() == Some(t.name.as_str()));
            match kept {
                Some(kept) => kept.clone(),
                None => self.outcome(i).await,
            }
        });
        futures_util::future::join_all(calls).await
    }

    /// The `all` mode's answer: 200 and the summary.
    pub async fn summary(&self) -> Response<ProxyBody> {
        let outcomes = self.all(&[]).await;
        json_response(StatusCode::OK, &CallOutcome::summary(&outcomes))
    }

    /// The `primary` mode's answer: what the first target's call returns, as a plain
    /// route's would; every other target is sent in the background, its outcome only
    /// logged and counted.
    pub async fn primary(self: Arc<Self>) -> Result<Response<ProxyBody>, ProxyError> {
        for i in 1..self.targets().len() {
            let me = self.clone();
            tokio::spawn(async move {
                me.outcome(i).await;
            });
        }
        let target = &self.targets()[0];
        let (result, _) = self.send(target).await;
        let (code, status) = match &result {
            Ok(r) => (r.extensions().get::<Failed>().map(|f| f.code), r.status()),
            Err(e) => (Some(e.code()), e.status()),
        };
        let outcome = CallOutcome::label(code, status.as_u16());
        self.route().metrics.fanout_target(&target.name, outcome);
        result
    }
}
