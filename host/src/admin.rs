//! The admin listener: `/metrics` (Prometheus text format), `/status` (JSON), and the
//! recent-request endpoints. It binds to localhost by default and never serves proxy
//! traffic. With `[admin] token` set, every endpoint requires `Authorization: Bearer`.

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
}

/// Serves admin requests on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let (stream, _) = accept::next(&listener, "admin").await;
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req).await) }
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
        let presented = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // The scheme name is case-insensitive (RFC 9110 §11.1).
            .and_then(|v| {
                v.get(..7)
                    .filter(|s| s.eq_ignore_ascii_case("bearer "))
                    .map(|_| &v[7..])
            });
        // Compare in constant time, so the token cannot be guessed byte by byte.
        presented.is_some_and(|p| {
            p.len() == token.len()
                && p.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        if !self.authorized(&req) {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this admin endpoint needs Authorization: Bearer <token>".into(),
            );
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return resp;
        }
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method().clone(), segments.as_slice()) {
            (Method::GET, ["metrics"]) => {
                let mut resp = Response::new(body::full(Bytes::from(self.telemetry.render())));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            (Method::GET, ["status"]) => {
                let mut status = self.status();
                if let Some(jobs) = self.proxy.jobs() {
                    status["jobs"] = jobs.status().await;
                }
                json_response(StatusCode::OK, &status)
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
            (_, ["metrics" | "status" | "requests"])
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
                format!("no admin endpoint {path}; try /metrics, /status or /requests"),
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
