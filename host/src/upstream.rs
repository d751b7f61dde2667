//! The one shared upstream client: pooled keep-alive connections, HTTP/2 by ALPN, TLS
//! verified by default, and per-upstream connect timeouts and connection limits.
//!
//! All routes share one hyper-util client; its pool is keyed by origin. The connector
//! looks up each origin's TLS settings and connect timeout, so an upstream with its own
//! CA or client certificate still uses the shared pool.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::bindings::UpstreamError;
use crate::body::{self, BodyFault, ProxyBody};
use crate::config::{Origin, UpstreamConfig};
use crate::error::{self, ProxyError};
use crate::telemetry::UpstreamMetrics;
use crate::tls::{self, TlsError};

tokio::task_local! {
    /// Where the connector reports a new connection's timings to the request waiting on
    /// it. Absent when hyper makes the connection in the background; a pooled connection
    /// reports nothing.
    static CONNECT_REPORT: Arc<ConnectReport>;
}

/// A new upstream connection: TCP, then TLS for an https upstream.
#[derive(Debug, Clone, Copy)]
pub struct ConnectTiming {
    /// When the TCP connect started.
    pub at: Instant,
    /// How long the TCP connect took.
    pub tcp: Duration,
    /// How long the TLS handshake took, for an https upstream.
    pub tls: Option<Duration>,
}

/// A new connection's timings, in nanoseconds (0: not reported): when its TCP connect
/// started, counted from the start of the request that waits on it, and how long TCP and
/// TLS took.
struct ConnectReport {
    base: Instant,
    start: AtomicU64,
    tcp: AtomicU64,
    tls: AtomicU64,
}

impl ConnectReport {
    fn nanos(d: Duration) -> u64 {
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
    }

    /// What was reported, if a connection was made for this request.
    fn timing(&self) -> Option<ConnectTiming> {
        let tcp = self.tcp.load(Ordering::Relaxed);
        (tcp > 0).then(|| {
            let tls = self.tls.load(Ordering::Relaxed);
            ConnectTiming {
                at: self.base + Duration::from_nanos(self.start.load(Ordering::Relaxed)),
                tcp: Duration::from_nanos(tcp),
                tls: (tls > 0).then(|| Duration::from_nanos(tls)),
            }
        })
    }
}

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// One configured upstream.
pub struct Upstream {
    /// The name in the config.
    pub name: String,
    /// The origin, as text: `https://api.example.com`.
    pub origin: String,
    uri_origin: Origin,
    permits: Arc<Semaphore>,
    in_flight: prometheus::IntGauge,
    /// Time to the response head: the series, once the first answer made it.
    duration: OnceLock<prometheus::Histogram>,
    /// How long a response body may go without a frame.
    read_timeout: Duration,
    /// The `Host` header for a plain-HTTP upstream, made once: the client would format
    /// the same value for every request. `None` for HTTPS, where the connection may turn
    /// out to be HTTP/2 and the client sets `:authority` instead.
    host: Option<http::HeaderValue>,
}

/// A connection slot: its permit, and the in-flight gauge it keeps up while held.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Upstream {
    /// The `Host` header requests to this upstream carry, when weir sets it itself.
    pub fn host_header(&self) -> Option<&http::HeaderValue> {
        self.host.as_ref()
    }

    /// The full URI for `path_with_query` on this upstream.
    pub fn uri(&self, path_with_query: &str) -> Result<Uri, ProxyError> {
        let pq = if path_with_query.starts_with('/') {
            path_with_query
        } else {
            return Err(ProxyError::BadRequest(format!(
                "path {path_with_query:?} does not start with /"
            )));
        };
        Uri::builder()
            .scheme(self.uri_origin.scheme.clone())
            .authority(self.uri_origin.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| ProxyError::BadRequest(format!("invalid path {pq:?}: {e}")))
    }
}

/// The shared client and the upstreams it serves.
pub struct UpstreamPool {
    client: Client<Connector, ProxyBody>,
    upstreams: HashMap<String, Arc<Upstream>>,
    metrics: Arc<UpstreamMetrics>,
}

/// Why there is no upstream response: what filters see, and what the client gets.
#[derive(Debug)]
pub struct UpstreamFailure {
    /// The kind, as the WIT names it.
    pub kind: UpstreamError,
    /// The error the client gets if no filter answers instead.
    pub error: ProxyError,
}

impl UpstreamFailure {
    /// The client's error instead of this one when the client's body is why the call
    /// failed. `kind` stays as it was; callers look at the error's origin first.
    fn blame(self, body: &BodyFault, timeout_ms: u64) -> UpstreamFailure {
        let error = match body.get() {
            Some(fault) => fault.clone().into(),
            None if self.kind == UpstreamError::Timeout && body.waiting() => {
                ProxyError::ClientTimeout {
                    detail: format!("the request body was not complete within {timeout_ms} ms"),
                }
            }
            None => return self,
        };
        UpstreamFailure {
            kind: self.kind,
            error,
        }
    }
}

impl UpstreamPool {
    /// Builds the client and loads every upstream's TLS files.
    pub fn new(
        upstreams: &[(String, UpstreamConfig)],
        metrics: Arc<UpstreamMetrics>,
    ) -> Result<UpstreamPool, TlsError> {
        let mut targets = HashMap::new();
        let mut by_name = HashMap::new();
        for (name, cfg) in upstreams {
            let target = Target {
                tls: if cfg.url.is_https() {
                    Some(tls::client_config(name, cfg.tls.as_ref())?)
                } else {
                    None
                },
                connect_timeout: cfg.connect_timeout.0,
            };
            targets.insert(authority_key(&cfg.url.scheme, &cfg.url.authority), target);
            by_name.insert(
                name.clone(),
                Arc::new(Upstream {
                    name: name.clone(),
                    origin: cfg.url.to_string(),
                    uri_origin: cfg.url.clone(),
                    permits: Arc::new(Semaphore::new(cfg.max_connections as usize)),
                    in_flight: metrics.in_flight(name),
                    duration: OnceLock::new(),
                    read_timeout: cfg.read_timeout.0,
                    host: host_header(&cfg.url),
                }),
            );
        }
        let connector = Connector {
            targets: Arc::new(targets),
        };
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Ok(UpstreamPool {
            client,
            upstreams: by_name,
            metrics,
        })
    }

    /// The upstream called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(name)
    }

    /// Sends `req` to `upstream`, waiting for a connection slot and the response head no
    /// later than `deadline`. The slot is held until the response body ends.
    ///
    /// A client's request carries its body's [`BodyFault`] in its extensions. When the
    /// call failed because of that body (it broke, or the deadline passed while weir was
    /// waiting for it), the failure's error is the client's ([`error::Origin::Client`]) and it
    /// is not counted as the upstream's: over HTTP/2 the upstream side sees only a reset
    /// stream, so the error itself cannot say.
    pub async fn send(
        &self,
        upstream: &Upstream,
        req: Request<ProxyBody>,
        deadline: Instant,
        timeout_ms: u64,
    ) -> Result<Response<ProxyBody>, UpstreamFailure> {
        let client_body = req.extensions().get::<BodyFault>().cloned();
        let started = Instant::now();
        let result = self
            .send_inner(upstream, req, started, deadline, timeout_ms)
            .await
            .map_err(|f| match &client_body {
                Some(body) => f.blame(body, timeout_ms),
                None => f,
            });
        match &result {
            Ok(_) => self
                .metrics
                .answered(&upstream.name, &upstream.duration, started.elapsed()),
            Err(f) if f.error.origin() == error::Origin::Client => {}
            Err(f) => self.metrics.failed(&upstream.name, f.kind),
        }
        result
    }

    /// Like [`UpstreamPool::send`], and also says when and how long opening a new
    /// connection took (TCP, then TLS), when this request waited for one. The report
    /// costs a task-local around every poll, so only requests whose timings are recorded
    /// (for `/requests` or exported spans) ask for it.
    pub async fn send_timed(
        &self,
        upstream: &Upstream,
        req: Request<ProxyBody>,
        deadline: Instant,
        timeout_ms: u64,
    ) -> (
        Result<Response<ProxyBody>, UpstreamFailure>,
        Option<ConnectTiming>,
    ) {
        let report = Arc::new(ConnectReport {
            base: Instant::now(),
            start: AtomicU64::new(0),
            tcp: AtomicU64::new(0),
            tls: AtomicU64::new(0),
        });
        let result = CONNECT_REPORT
            .scope(
                report.clone(),
                self.send(upstream, req, deadline, timeout_ms),
            )
            .await;
        (result, report.timing())
    }

    async fn send_inner(
        &self,
        upstream: &Upstream,
        req: Request<ProxyBody>,
        now: Instant,
        deadline: Instant,
        timeout_ms: u64,
    ) -> Result<Response<ProxyBody>, UpstreamFailure> {
        let timed_out = || UpstreamFailure {
            kind: UpstreamError::Timeout,
            error: ProxyError::Timeout { timeout_ms },
        };
        // The timer wheel fires up to a millisecond past `deadline`, and `timeout_at`
        // polls the call first, so a fast upstream could still answer a request sent
        // after its deadline. Such a request is not sent.
        if now >= deadline {
            return Err(timed_out());
        }
        let acquired =
            tokio::time::timeout_at(deadline, upstream.permits.clone().acquire_owned()).await;
        let Ok(Ok(permit)) = acquired else {
            return Err(UpstreamFailure {
                kind: UpstreamError::Overloaded,
                error: ProxyError::Overloaded {
                    upstream: upstream.origin.clone(),
                },
            });
        };
        upstream.in_flight.inc();
        let slot = Slot {
            _permit: permit,
            gauge: upstream.in_flight.clone(),
        };
        match tokio::time::timeout_at(deadline, self.client.request(req)).await {
            Err(_) => Err(timed_out()),
            Ok(Err(e)) => Err(classify(&e, &upstream.origin)),
            Ok(Ok(resp)) => Ok(resp.map(|b| {
                let b = body::ReadTimeout::new(b, upstream.read_timeout);
                body::boxed(body::Holding::new(b, slot))
            })),
        }
    }
}

/// The `Host` value the HTTP/1 client would send to a plain-HTTP `origin`: the host,
/// and the port unless it is 80.
fn host_header(origin: &Origin) -> Option<http::HeaderValue> {
    if origin.is_https() {
        return None;
    }
    let host = origin.authority.host();
    let value = match origin.authority.port_u16() {
        Some(port) if port != 80 => http::HeaderValue::from_str(&format!("{host}:{port}")),
        _ => http::HeaderValue::from_str(host),
    };
    value.ok()
}

fn authority_key(scheme: &http::uri::Scheme, authority: &http::uri::Authority) -> String {
    let port = authority
        .port_u16()
        .unwrap_or(if *scheme == http::uri::Scheme::HTTPS {
            443
        } else {
            80
        });
    format!(
        "{scheme}://{}:{port}",
        authority.host().to_ascii_lowercase()
    )
}

/// Maps a client error to the WIT kind and the client's error.
fn classify(e: &hyper_util::client::legacy::Error, origin: &str) -> UpstreamFailure {
    let upstream = origin.to_owned();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<ConnectError>() {
            return c.to_failure(upstream);
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            let detail = h.to_string();
            let kind = if h.is_timeout() {
                UpstreamError::Timeout
            } else if h.is_parse() || h.is_parse_status() {
                UpstreamError::Protocol
            } else {
                UpstreamError::Reset
            };
            return UpstreamFailure {
                kind,
                error: ProxyError::UpstreamBroken { upstream, detail },
            };
        }
        cur = err.source();
    }
    if e.is_connect() {
        return UpstreamFailure {
            kind: UpstreamError::ConnectFailed,
            error: ProxyError::ConnectFailed {
                upstream,
                detail: format!("{e:#}"),
            },
        };
    }
    UpstreamFailure {
        kind: UpstreamError::Reset,
        error: ProxyError::UpstreamBroken {
            upstream,
            detail: format!("{e:#}"),
        },
    }
}

// === impl Connector ===

struct Target {
    tls: Option<Arc<ClientConfig>>,
    connect_timeout: Duration,
}

/// Connects to configured upstreams only, with each one's timeout and TLS settings.
#[derive(Clone)]
struct Connector {
    targets: Arc<HashMap<String, Target>>,
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}")]
    Failed(String),
    #[error("connect timed out")]
    Timeout,
    #[error("{0}")]
    Tls(String),
}

impl ConnectError {
    fn to_failure(&self, upstream: String) -> UpstreamFailure {
        match self {
            ConnectError::Failed(detail) => UpstreamFailure {
                kind: UpstreamError::ConnectFailed,
                error: ProxyError::ConnectFailed {
                    upstream,
                    detail: detail.clone(),
                },
            },
            ConnectError::Timeout => UpstreamFailure {
                kind: UpstreamError::ConnectTimeout,
                error: ProxyError::ConnectTimeout { upstream },
            },
            ConnectError::Tls(detail) => UpstreamFailure {
                kind: UpstreamError::Tls,
                error: ProxyError::Tls {
                    upstream,
                    detail: detail.clone(),
                },
            },
        }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let targets = self.targets.clone();
        Box::pin(async move {
            let (scheme, authority) = match (uri.scheme(), uri.authority()) {
                (Some(s), Some(a)) => (s.clone(), a.clone()),
                _ => return Err(ConnectError::Failed(format!("not an absolute uri: {uri}"))),
            };
            let key = authority_key(&scheme, &authority);
            // weir is never an open proxy: only configured origins are dialled.
            let target = targets.get(&key).ok_or_else(|| {
                ConnectError::Failed(format!("{key} is not a configured upstream"))
            })?;
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let port = authority
                .port_u16()
                .unwrap_or(if target.tls.is_some() { 443 } else { 80 });
            let started = Instant::now();
            let connect = async {
                let tcp = TcpStream::connect((host, port))
                    .await
                    .map_err(|e| ConnectError::Failed(e.to_string()))?;
                let _ = tcp.set_nodelay(true);
                let connected = Instant::now();
                let conn = match &target.tls {
                    None => Conn::Plain(TokioIo::new(tcp)),
                    Some(cfg) => {
                        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
                            ConnectError::Tls(format!("invalid server name {host:?}: {e}"))
                        })?;
                        let tls = TlsConnector::from(cfg.clone())
                            .connect(name, tcp)
                            .await
                            .map_err(|e| ConnectError::Tls(e.to_string()))?;
                        Conn::Tls(Box::new(TokioIo::new(tls)))
                    }
                };
                Ok((conn, connected))
            };
            let (conn, connected) = tokio::time::timeout(target.connect_timeout, connect)
                .await
                .map_err(|_| ConnectError::Timeout)??;
            let _ = CONNECT_REPORT.try_with(|r| {
                let store =
                    |cell: &AtomicU64, d| cell.store(ConnectReport::nanos(d), Ordering::Relaxed);
                store(&r.start, started.saturating_duration_since(r.base));
                store(&r.tcp, connected - started);
                if matches!(conn, Conn::Tls(_)) {
                    store(&r.tls, connected.elapsed());
                }
            });
            Ok(conn)
        })
    }
}

/// A connection to an upstream, plain or TLS.
enum Conn {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        match self {
            Conn::Plain(_) => Connected::new(),
            Conn::Tls(s) => {
                let (_, session) = s.inner().get_ref();
                if session.alpn_protocol() == Some(b"h2") {
                    Connected::new().negotiated_h2()
                } else {
                    Connected::new()
                }
            }
        }
    }
}

impl Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(url: &str) -> Origin {
        let uri: Uri = url.parse().unwrap();
        Origin {
            scheme: uri.scheme().unwrap().clone(),
            authority: uri.authority().unwrap().clone(),
        }
    }

    #[test]
    fn host_header_is_made_for_plain_http_only_and_drops_the_default_port() {
        let host = |url| host_header(&origin(url)).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            host("http://127.0.0.1:18080").as_deref(),
            Some("127.0.0.1:18080")
        );
        assert_eq!(
            host("http://api.example.com:80").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            host("http://api.example.com").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(host("http://[::1]:8080").as_deref(), Some("[::1]:8080"));
        assert_eq!(host("https://api.example.com"), None);
    }

    #[tokio::test]
    async fn a_request_past_its_deadline_is_not_sent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url =
            crate::config::Origin::try_from(format!("http://{}", listener.local_addr().unwrap()))
                .unwrap();
        let config = UpstreamConfig {
            url,
            connect_timeout: crate::config::defaults::connect_timeout(),
            max_connections: crate::config::defaults::max_connections(),
            read_timeout: crate::config::defaults::upstream_read_timeout(),
            tls: None,
        };
        let telemetry = crate::telemetry::Telemetry::new().unwrap();
        let pool =
            UpstreamPool::new(&[("u".to_owned(), config)], telemetry.upstreams.clone()).unwrap();
        let upstream = pool.get("u").unwrap();
        let mut req = Request::new(crate::body::empty());
        *req.uri_mut() = upstream.uri("/").unwrap();
        let failed = pool
            .send(upstream, req, Instant::now(), 500)
            .await
            .expect_err("sent after its deadline");
        assert_eq!(failed.kind, UpstreamError::Timeout);
        // Nothing connected: the deadline was checked before any connection was made.
        let accepted = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
        assert!(accepted.is_err(), "the upstream was reached");
    }
}
