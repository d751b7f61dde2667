//! The client-facing listener: HTTP/1.1 and HTTP/2 (h2c, or ALPN over TLS), limits on
//! headers, bodies and header-read time, and the per-request entry into the chain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::body::{self, ProxyBody};
use crate::chain::{self, Exchange};
use crate::config::{Admin as AdminConfig, Listen};
use crate::error::{ProxyError, json_response};
use crate::headers;
use crate::recent::{NewRecord, Recent, Tee, Trace};
use crate::router::Router;
use crate::telemetry::Telemetry;

/// The longest client-supplied `x-request-id` weir keeps; longer ones are replaced.
const MAX_REQUEST_ID: usize = 200;

/// What every connection shares: the current route table, the listener's limits, the
/// metrics and the recent-request ring.
pub struct Proxy {
    router: RwLock<Arc<Router>>,
    max_body: u64,
    telemetry: Arc<Telemetry>,
    recent: Recent,
}

/// Where a request comes from: a client connection, or a replay from the admin API.
struct Origin<'a> {
    client: SocketAddr,
    /// The id of the request being replayed.
    replay_of: Option<&'a str>,
}

impl Proxy {
    /// A proxy serving `router` with the limits in `listen`, recording recent requests
    /// as `admin` says (none without an admin listener: nobody could read them).
    pub fn new(
        router: Router,
        listen: &Listen,
        admin: Option<&AdminConfig>,
        telemetry: Arc<Telemetry>,
    ) -> Arc<Proxy> {
        let recent = match admin {
            Some(a) => Recent::new(a.recent_requests, a.recent_body_bytes.0, &a.redact_headers),
            None => Recent::new(0, 0, &[]),
        };
        Arc::new(Proxy {
            router: RwLock::new(Arc::new(router)),
            max_body: listen.max_body_bytes.0,
            telemetry,
            recent,
        })
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

    /// Handles one request; never fails: every error becomes a JSON response.
    pub async fn handle(&self, client: SocketAddr, req: Request<Incoming>) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        let id = request_id(&parts.headers);
        let origin = Origin {
            client,
            replay_of: None,
        };
        self.serve(origin, id, parts, body::boxed(body::Drain::new(body)))
            .await
    }

    async fn serve(
        &self,
        origin: Origin<'_>,
        id: String,
        parts: http::request::Parts,
        body: ProxyBody,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let router = self.router();
        let route = router.find(&parts);
        let method = parts.method.clone();
        let traceparent = TraceContext::from_headers(&parts.headers).next_hop();
        let recording = self.recent.enabled();
        let path_with_query = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
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
        let trace = Mutex::new(Trace::default());
        let result = match route {
            None => Err(ProxyError::NoRoute {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
            }),
            Some(route) => {
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
                    let too_large = Arc::new(AtomicBool::new(false));
                    let body =
                        body::boxed(body::Limited::new(body, self.max_body, too_large.clone()));
                    let mut hdrs = parts.headers;
                    headers::prepare_upstream(&mut hdrs);
                    let x = Exchange {
                        route: &route.name,
                        chain: &route.chain,
                        upstream: &route.upstream,
                        pool: &router.upstreams,
                        id: &id,
                        client_addr: origin.client.to_string(),
                        deadline: started + route.timeout,
                        timeout: route.timeout,
                        max_body: self.max_body,
                        traceparent: &traceparent.header,
                        trace: &trace,
                        telemetry: &self.telemetry,
                    };
                    x.run(chain::Incoming {
                        method: parts.method,
                        path_with_query: route.upstream_path(&parts.uri),
                        headers: hdrs,
                        body,
                        body_too_large: too_large,
                    })
                    .await
                }
            }
        };
        let route_name = route.map(|r| r.name.as_str());
        let (mut resp, error) = match result {
            Ok(r) => (r, None),
            Err(e) => (e.to_response(route_name, &id), Some(e.code())),
        };
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        let took = started.elapsed();
        let trace = trace.into_inner().unwrap_or_else(|p| p.into_inner());
        self.telemetry
            .record_request(route_name.unwrap_or(""), &method, resp.status(), took);
        tracing::info!(
            request_id = %id,
            route = route_name.unwrap_or("-"),
            method = %method,
            status = resp.status().as_u16(),
            attempts = trace.attempts,
            duration_ms = took.as_secs_f64() * 1000.0,
            error = error.unwrap_or("-"),
            replay_of = origin.replay_of.unwrap_or("-"),
            "request"
        );
        let Some(request_capture) = request_capture else {
            return resp;
        };
        let (resp_parts, resp_body) = resp.into_parts();
        let (resp_body, response_capture) = Tee::new(resp_body, self.recent.body_cap());
        self.recent.push(NewRecord {
            id,
            route: route_name.map(str::to_owned),
            method,
            path_with_query,
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
            trace_id: traceparent.trace_id,
        });
        Response::from_parts(resp_parts, body::boxed(resp_body))
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
        req.headers_mut().remove("x-request-id");
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
        let new_id = request_id(&http::HeaderMap::new());
        let origin = Origin {
            client: SocketAddr::from(([127, 0, 0, 1], 0)),
            replay_of: Some(id),
        };
        let resp = self
            .serve(origin, new_id.clone(), parts, body::full(body))
            .await;
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

/// A W3C trace context: the incoming one continued, or a new one started.
struct TraceContext {
    trace_id: String,
    flags: String,
}

/// The `traceparent` weir sends upstream, and the trace id it belongs to.
struct NextHop {
    header: String,
    trace_id: String,
}

impl TraceContext {
    /// The client's `traceparent` when it is valid (version 00), else a new sampled trace.
    fn from_headers(headers: &http::HeaderMap) -> TraceContext {
        let parsed = headers
            .get("traceparent")
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
                    trace_id: trace.to_owned(),
                    flags: flags.to_owned(),
                })
            });
        parsed.unwrap_or_else(|| TraceContext {
            trace_id: format!("{:032x}", rand::random::<u128>() | 1),
            flags: "01".to_owned(),
        })
    }

    /// weir's own span in the trace: a new parent id for the upstream request.
    fn next_hop(self) -> NextHop {
        let span = rand::random::<u64>() | 1;
        NextHop {
            header: format!("00-{}-{span:016x}-{}", self.trace_id, self.flags),
            trace_id: self.trace_id,
        }
    }
}

/// The client's `x-request-id` when it is sane, or a new random one.
fn request_id(headers: &http::HeaderMap) -> String {
    if let Some(v) = headers.get("x-request-id").and_then(|v| v.to_str().ok())
        && !v.is_empty()
        && v.len() <= MAX_REQUEST_ID
        && v.bytes().all(|b| b.is_ascii_graphic())
    {
        return v.to_owned();
    }
    format!("{:032x}", rand::random::<u128>())
}

/// Accepts connections on `listener` until `shutdown` resolves, then waits up to `drain`
/// for in-flight requests: HTTP/1 connections finish their response with
/// `Connection: close`, HTTP/2 connections get GOAWAY.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    proxy: Arc<Proxy>,
    listen: &Listen,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(listen.header_read_timeout.0)
        // hyper's floor for the read buffer is 8 KiB; heads past it get 431.
        .max_buf_size((listen.max_header_bytes.0 as usize).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(listen.max_header_bytes.0.min(u32::MAX as u64) as u32);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let handshake_timeout = listen.header_read_timeout.0;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(proxy.handle(peer, req).await) }
            });
            let result = match tls {
                None => {
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), svc)
                        .into_owned();
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder
                        .serve_connection(TokioIo::new(tls), svc)
                        .into_owned();
                    watcher.watch(conn).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(client = %peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(listen.drain_timeout.0, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout passed with requests still in flight");
    }
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
        assert_eq!(hop.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(
            hop.header
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert!(hop.header.ends_with("-01"));
        assert!(!hop.header.contains("00f067aa0ba902b7"));
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
            assert_eq!(hop.trace_id.len(), 32);
            assert_ne!(hop.trace_id, "00000000000000000000000000000000");
            assert_eq!(hop.header.len(), 55);
        }
    }

    #[test]
    fn request_ids_are_kept_when_sane() {
        let mut h = http::HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_eq!(request_id(&h).len(), 32);
    }
}
