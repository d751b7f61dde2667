//! The admin listener: `/metrics` (Prometheus text format), `/status` (JSON), the
//! recent-request endpoints, and the dashboard (`/` and its `/events` stream; see
//! [`crate::dashboard`]). It binds to localhost by default and never serves proxy
//! traffic. With `[admin] token` set, every endpoint requires the token: as
//! `Authorization: Bearer <token>`, or as the password of HTTP Basic authentication
//! (any user name), which is what a browser opening the dashboard sends.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus::proto::MetricType;
use tokio::net::TcpListener;

use crate::accept;
use crate::body::{self, ProxyBody};
use crate::dashboard;
use crate::error::json_response;
use crate::listener::Proxy;
use crate::reload::ReloadStatus;
use crate::telemetry::Telemetry;

/// The most body bytes weir reads from an admin request. No endpoint needs a body; the
/// bound keeps a caller from making weir read (or hold) an unbounded one.
pub const MAX_BODY: u64 = 1024;

/// What the admin endpoints read.
pub struct Admin {
    /// Metrics and per-route statistics.
    pub telemetry: Arc<Telemetry>,
    /// The proxy: its current routes, recent requests and replay.
    pub proxy: Arc<Proxy>,
    /// The running config and reload history.
    pub reload: Arc<ReloadStatus>,
    /// The state backend, whose health `/status` shows.
    pub state: Arc<dyn crate::state::StateBackend>,
    /// The bearer token every request must carry, if set.
    pub token: Option<String>,
    /// The dashboard's open event streams.
    pub streams: dashboard::Streams,
}

/// Serves admin requests on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let (stream, _) = accept::next(&listener, "admin").await;
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(Admin::handle(admin, req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn error(status: StatusCode, code: &str, message: String) -> Response<ProxyBody> {
    json_response(
        status,
        &serde_json::json!({"error": code, "message": message}),
    )
}

/// Whether `presented` is `expected`, compared in constant time so that the token
/// cannot be guessed byte by byte.
fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len()
        && presented
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A 403 for a request that changes something (replay, rerun, redeliver) sent by a
/// page of another site: a browser that holds the dashboard's Basic credentials sends
/// them with any site's form, and `Origin` is how it says whose page sent it.
fn cross_origin(req: &Request<Incoming>) -> Option<Response<ProxyBody>> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return None;
    }
    let origin = req.headers().get(http::header::ORIGIN)?;
    let host = req.headers().get(http::header::HOST);
    let same = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .is_some_and(|(_, authority)| host.is_some_and(|h| h.as_bytes() == authority.as_bytes()));
    (!same).then(|| {
        error(
            StatusCode::FORBIDDEN,
            "cross_origin",
            format!(
                "{} from a page of {} is refused: the admin API takes changes only from its own pages or from programs",
                req.method(),
                String::from_utf8_lossy(origin.as_bytes())
            ),
        )
    })
}

fn no_jobs() -> Response<ProxyBody> {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "async jobs are not configured ([jobs])".to_owned(),
    )
}

impl Admin {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(value) = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        // The scheme name is case-insensitive (RFC 9110 §11.1).
        let scheme = |name: &str| {
            value
                .get(..name.len())
                .filter(|s| s.eq_ignore_ascii_case(name))
                .map(|_| value[name.len()..].trim_start())
        };
        if let Some(presented) = scheme("bearer ") {
            return same_secret(presented.as_bytes(), token.as_bytes());
        }
        // Basic (RFC 7617): `user:password` in base64; the token is the password, and
        // the user name is whatever the person typed.
        scheme("basic ")
            .and_then(|b64| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(b64).ok()
            })
            .and_then(|pair| {
                let colon = pair.iter().position(|b| *b == b':')?;
                Some(same_secret(&pair[colon + 1..], token.as_bytes()))
            })
            .unwrap_or(false)
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        if !self.authorized(&req) {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this admin endpoint needs Authorization: Bearer <token> (or, from a browser, the token as the password)".into(),
            );
            // Bearer for programs; Basic so that a browser asks a person for the token.
            let h = resp.headers_mut();
            h.append(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            h.append(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static(r#"Basic realm="weir admin", charset="UTF-8""#),
            );
            return resp;
        }
        if let Some(resp) = cross_origin(&req) {
            return resp;
        }
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method().clone(), segments.as_slice()) {
            (Method::GET, _) if dashboard::is_asset(&path) => dashboard::asset(&path)
                .unwrap_or_else(|| error(StatusCode::NOT_FOUND, "not_found", path.clone())),
            (Method::GET, ["events"]) => match self.streams.open() {
                Some(permit) => {
                    let admin = self.clone();
                    dashboard::events(permit, move || {
                        let admin = admin.clone();
                        Box::pin(async move { admin.snapshot().await })
                    })
                }
                None => dashboard::too_many_streams(),
            },
            (Method::GET, ["metrics"]) => {
                let mut resp = Response::new(body::full(Bytes::from(self.telemetry.render())));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            (Method::GET, ["status"]) => {
                json_response(StatusCode::OK, &self.status_with_jobs().await)
            }
            (Method::GET, ["requests"]) => match self.proxy.recent().list(&query) {
                Ok(list) => json_response(StatusCode::OK, &list),
                Err(e) => error(StatusCode::BAD_REQUEST, "bad_query", e),
            },
            (Method::GET, ["requests", id]) => match self.proxy.recent().get(id) {
                Some(r) => json_response(StatusCode::OK, &r.to_json()),
                None => error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no recent request with id {id:?}"),
                ),
            },
            (Method::POST, ["requests", id, "replay"]) => {
                // The replay uses the stored body: a caller's own is read (so that the
                // connection can be reused) only while it is small.
                match body::collect_limited(body::boxed(req.into_body()), MAX_BODY).await {
                    Ok(_) => self.proxy.replay(id).await,
                    Err(e) if body::is_too_large(e.as_ref()) => error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        format!(
                            "{path} takes no body (the replay sends the recorded one); at most {MAX_BODY} bytes are read"
                        ),
                    ),
                    Err(e) => error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("reading the request body: {e}"),
                    ),
                }
            }
            (Method::GET, ["jobs", "dead"]) => self.dead_jobs().await,
            (Method::POST, ["jobs", id, "redeliver"]) => self.redeliver(id).await,
            (Method::POST, ["jobs", id, "rerun"]) => self.rerun(id).await,
            (_, ["metrics" | "status" | "requests" | "events"])
            | (_, ["requests", _])
            | (_, ["jobs", "dead"])
            | (_, ["jobs", _, "redeliver" | "rerun"])
            | (_, ["requests", _, "replay"]) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} is not allowed on {path}", req.method()),
            ),
            _ => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no admin endpoint {path}; try /, /metrics, /status or /requests"),
            ),
        }
    }

    /// `/jobs/dead`: jobs whose webhook could not be delivered, oldest first.
    async fn dead_jobs(&self) -> Response<ProxyBody> {
        let Some(jobs) = self.proxy.jobs() else {
            return no_jobs();
        };
        match jobs.dead().await {
            Ok(dead) => json_response(
                StatusCode::OK,
                &serde_json::json!({
                    "jobs": dead.iter().map(crate::jobs::Job::to_json).collect::<Vec<_>>()
                }),
            ),
            Err(e) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "journal_unavailable",
                e.to_string(),
            ),
        }
    }

    /// `/jobs/<id>/redeliver`: a dead job's webhook, from the start of the schedule.
    async fn redeliver(&self, id: &str) -> Response<ProxyBody> {
        let Some(jobs) = self.proxy.jobs() else {
            return no_jobs();
        };
        match jobs.redeliver(id).await {
            Ok(true) => json_response(
                StatusCode::ACCEPTED,
                &serde_json::json!({"id": id, "webhook": "pending"}),
            ),
            Ok(false) => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no dead job with id {id:?}"),
            ),
            Err(e) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "journal_unavailable",
                e.to_string(),
            ),
        }
    }

    /// `/jobs/<id>/rerun`: a failed or dead job, run again from the start.
    async fn rerun(&self, id: &str) -> Response<ProxyBody> {
        let Some(jobs) = self.proxy.jobs() else {
            return no_jobs();
        };
        match jobs.rerun(id).await {
            Ok(Some(Ok(()))) => json_response(
                StatusCode::ACCEPTED,
                &serde_json::json!({"id": id, "state": "queued"}),
            ),
            Ok(Some(Err(state))) => error(
                StatusCode::CONFLICT,
                "not_rerunnable",
                format!(
                    "job {id} is {}: only failed or dead jobs run again",
                    serde_json::to_value(state)
                        .unwrap_or_default()
                        .as_str()
                        .unwrap_or("?")
                ),
            ),
            Ok(None) => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no job with id {id:?}"),
            ),
            Err(e) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "journal_unavailable",
                e.to_string(),
            ),
        }
    }

    /// `/status`, with the job queue when `[jobs]` is configured.
    async fn status_with_jobs(&self) -> serde_json::Value {
        let mut status = self.status();
        if let Some(jobs) = self.proxy.jobs() {
            status["jobs"] = jobs.status().await;
        }
        status
    }

    /// One snapshot for the dashboard: `/status`, each route's latency bucket counts
    /// (so the page can work out percentiles over any window from two snapshots), and
    /// the series of [`dashboard::FAMILIES`].
    async fn snapshot(&self) -> serde_json::Value {
        let mut status = self.status_with_jobs().await;
        if let Some(routes) = status["routes"].as_array_mut() {
            for r in routes {
                let name = r["name"].as_str().unwrap_or_default().to_owned();
                r["latency_buckets"] = self.telemetry.stats.buckets(&name).into();
            }
        }
        serde_json::json!({
            "at_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            "latency_bounds_ms": crate::stats::LATENCY_BOUNDS_MS
                .iter()
                .map(|b| b.is_finite().then_some(*b))
                .collect::<Vec<_>>(),
            "status": status,
            "series": dashboard::series(&self.telemetry.registry.gather()),
        })
    }

    /// `/status`: routes with their figures and filters, breakers, limiters, and the
    /// loaded config (and, with `[jobs]`, the job queue: added by the caller).
    fn status(&self) -> serde_json::Value {
        let router = self.proxy.router();
        let routes: Vec<serde_json::Value> = router
            .routes()
            .iter()
            .map(|r| {
                let mut v = self.telemetry.stats.summary(&r.name);
                v["name"] = r.name.clone().into();
                v["upstream"] = r.upstream.origin.clone().into();
                v["upstream_name"] = r.upstream.name.clone().into();
                v["filters"] = r.chain.names().into();
                v
            })
            .collect();
        serde_json::json!({
            "routes": routes,
            "breakers": self.guest_gauges("weir_filter_breaker_state", |v| match v as i64 {
                0 => "closed".into(),
                1 => "open".into(),
                2 => "half_open".into(),
                _ => serde_json::Value::Null,
            }, "state", &[("weir_filter_breaker_failure_rate", "failure_rate")]),
            "limiters": self.guest_gauges("weir_filter_limiter_tokens", serde_json::Value::from, "tokens", &[]),
            "state": self.state_health(),
            "config": self.reload.snapshot(),
        })
    }

    /// `/status`'s `state`: the backend, whether it answers, and its last failure.
    fn state_health(&self) -> serde_json::Value {
        let h = self.state.health();
        let (last_error, at) = match h.last_error {
            Some((why, when)) => (Some(why), Some(crate::clock::rfc3339(when))),
            None => (None, None),
        };
        serde_json::json!({
            "backend": h.backend,
            "healthy": h.up,
            "last_error": last_error,
            "last_error_at": at,
        })
    }

    /// One entry per series of the guest gauge `name`: its labels, its value (mapped by
    /// `value`) under `field`, and the values of `extra` gauges with the same labels.
    fn guest_gauges(
        &self,
        name: &str,
        value: impl Fn(f64) -> serde_json::Value,
        field: &str,
        extra: &[(&str, &str)],
    ) -> Vec<serde_json::Value> {
        let families = self.telemetry.registry.gather();
        let find = |n: &str| {
            families
                .iter()
                .find(|f| f.name() == n && f.get_field_type() == MetricType::GAUGE)
        };
        let labels_of =
            |m: &prometheus::proto::Metric| -> serde_json::Map<String, serde_json::Value> {
                m.get_label()
                    .iter()
                    .map(|l| (l.name().to_owned(), l.value().into()))
                    .collect()
            };
        let Some(family) = find(name) else {
            return Vec::new();
        };
        family
            .get_metric()
            .iter()
            .map(|m| {
                let labels = labels_of(m);
                let mut entry = labels.clone();
                entry.insert(field.to_owned(), value(m.get_gauge().get_value()));
                for (gauge, key) in extra {
                    let v = find(gauge).and_then(|f| {
                        f.get_metric()
                            .iter()
                            .find(|o| labels_of(o) == labels)
                            .map(|o| o.get_gauge().get_value())
                    });
                    entry.insert((*key).to_owned(), v.into());
                }
                serde_json::Value::Object(entry)
            })
            .collect()
    }
}
