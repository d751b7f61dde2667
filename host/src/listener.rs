//! The client-facing listener: HTTP/1.1 and HTTP/2 (h2c, or ALPN over TLS), limits on
//! headers, bodies and header-read time, and the per-request entry into the chain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::header::HeaderValue;
use http::{Request, Response};
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
use crate::config::Listen;
use crate::error::ProxyError;
use crate::headers;
use crate::router::Router;
use crate::telemetry::Telemetry;

/// The longest client-supplied `x-request-id` weir keeps; longer ones are replaced.
const MAX_REQUEST_ID: usize = 200;

/// What every connection shares: the current route table and the listener's limits.
pub struct Proxy {
    router: RwLock<Arc<Router>>,
    max_body: u64,
    telemetry: Arc<Telemetry>,
}

impl Proxy {
    /// A proxy serving `router` with the limits in `listen`.
    pub fn new(router: Router, listen: &Listen, telemetry: Arc<Telemetry>) -> Arc<Proxy> {
        Arc::new(Proxy {
            router: RwLock::new(Arc::new(router)),
            max_body: listen.max_body_bytes.0,
            telemetry,
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

    /// Handles one request; never fails: every error becomes a JSON response.
    pub async fn handle(&self, client: SocketAddr, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let id = request_id(req.headers());
        let router = self.router();
        let (parts, body) = req.into_parts();
        let route = router.find(&parts);
        let method = parts.method.clone();
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
                    let body = body::boxed(body::Limited::new(
                        body::boxed(body),
                        self.max_body,
                        too_large.clone(),
                    ));
                    let mut hdrs = parts.headers;
                    headers::prepare_upstream(&mut hdrs);
                    let x = Exchange {
                        route: &route.name,
                        chain: &route.chain,
                        upstream: &route.upstream,
                        pool: &router.upstreams,
                        id: &id,
                        client_addr: client.to_string(),
                        deadline: started + route.timeout,
                        timeout: route.timeout,
                        max_body: self.max_body,
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
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(request_id = %id, route = ?route_name, error = %e, "request failed");
                e.to_response(route_name, &id)
            }
        };
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        self.telemetry.record_request(
            route_name.unwrap_or(""),
            &method,
            resp.status(),
            started.elapsed(),
        );
        resp
    }
}

/// The client's `x-request-id` when it is sane, or a new random one.
fn request_id(headers: &http::HeaderMap) -> String {
    if let Some(v) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        if !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.bytes().all(|b| b.is_ascii_graphic()) {
            return v.to_owned();
        }
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
