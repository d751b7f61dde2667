//! A scripted upstream: a hyper server on 127.0.0.1 that records every request it gets
//! and answers as the test says.
//!
//! 1. Build it: `Upstream::builder()`, then `.reply(|req, i| ...)` (a closure) or
//!    `.replies(vec![...])` (a queue), optionally `.tls(config)`, `.http1_only()`,
//!    `.count_bodies()`; finish with `.start().await`. `Upstream::start(f)` is the short form.
//! 2. Point weir at `up.url()`.
//! 3. Read what arrived: `up.requests()`, `up.count()`, or `up.wait_for(n).await`.
//!
//! It speaks HTTP/1.1 and HTTP/2 (prior knowledge in clear text, ALPN over TLS). A request
//! is recorded once its whole body has been read, before the reply's delay starts, so a
//! test can see a request that the upstream is still "working on".
//!
//! The server runs on the test's tokio runtime and stops when the `Upstream` is dropped.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::WAIT;
use super::body::{Digest, PatternBody};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ReplyBodyBox = UnsyncBoxBody<Bytes, BoxError>;

/// A 127.0.0.1 port with nothing listening on it: connecting to it is refused.
pub fn closed_port() -> u16 {
    let listener = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

// === impl Recorded ===

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, e.g. `/v1/items?page=2`.
    pub path: String,
    /// The `Host` header, or the HTTP/2 `:authority`.
    pub authority: Option<String>,
    /// Every header, names lowercase, grouped by name (HTTP/2 pseudo-headers excluded).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The full body; empty when the upstream was built with `count_bodies()`.
    pub body: Bytes,
    /// Body length, counted even when the body is not stored.
    pub body_len: u64,
    /// CRC-32 of the body, computed even when the body is not stored.
    pub body_crc32: u32,
    pub version: Version,
    /// Which connection it came on: 0 for the first accepted, 1 for the next, ...
    pub conn: usize,
    /// The DER of the client's certificate, when TLS client auth was used.
    pub client_cert: Option<Vec<u8>>,
    /// When the request head arrived.
    pub received_at: Instant,
}

impl Recorded {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of header `name`, if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// The body as text (lossy).
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("upstream body is not JSON ({e}): {}", self.body_str()))
    }
}

// === impl Reply ===

/// What the upstream answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: ReplyBody,
    /// How long to wait before sending the response head.
    pub delay: Duration,
    /// Send no response: HTTP/1.1 closes the connection, HTTP/2 resets the stream.
    pub abort: bool,
    /// Wait until this gate opens before sending the response head (after `delay`).
    pub hold: Option<Gate>,
}

/// Holds the replies given it ([`Reply::held`]) until the test opens it.
#[derive(Debug, Clone)]
pub struct Gate(watch::Sender<bool>);

impl Default for Gate {
    /// A closed gate.
    fn default() -> Gate {
        Gate(watch::channel(false).0)
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Releases every reply held now or later.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn passed(&self) {
        // The sender lives in `self`, so this only returns once the gate is open.
        let _ = self.0.subscribe().wait_for(|open| *open).await;
    }
}

/// The body of a [`Reply`].
#[derive(Debug, Clone)]
pub enum ReplyBody {
    /// These bytes, with a `content-length`.
    Full(Bytes),
    /// `len` generated pattern bytes (see [`super::body`]), never held in memory, with a
    /// `content-length`. With `fail_after`, the body breaks off after that many bytes.
    Pattern { len: u64, fail_after: Option<u64> },
    /// Each chunk sent after its delay, with no `content-length` (chunked in HTTP/1.1).
    Chunks(Vec<(Duration, Bytes)>),
}

impl Reply {
    /// `status` with no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: ReplyBody::Full(Bytes::new()),
            delay: Duration::ZERO,
            abort: false,
            hold: None,
        }
    }

    /// 200 with an empty body.
    pub fn ok() -> Self {
        Self::new(200)
    }

    /// Never answer (within any test's lifetime): for timeout tests.
    pub fn hang() -> Self {
        Self::ok().delay(Duration::from_secs(3600))
    }

    /// Drop the request without a response.
    pub fn abort() -> Self {
        Self {
            abort: true,
            ..Self::ok()
        }
    }

    /// Add a header (repeat to send several values).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = ReplyBody::Full(body.into());
        self
    }

    /// A JSON body, with `content-type: application/json`.
    pub fn json(self, value: &serde_json::Value) -> Self {
        self.header("content-type", "application/json")
            .body(value.to_string())
    }

    /// A generated body of `len` bytes, streamed.
    pub fn pattern(mut self, len: u64) -> Self {
        self.body = ReplyBody::Pattern {
            len,
            fail_after: None,
        };
        self
    }

    /// Announce `len` pattern bytes but break off after `after` of them.
    pub fn pattern_then_fail(mut self, len: u64, after: u64) -> Self {
        self.body = ReplyBody::Pattern {
            len,
            fail_after: Some(after),
        };
        self
    }

    /// Send the body as these chunks, each after its delay.
    pub fn chunks(mut self, chunks: Vec<(Duration, Bytes)>) -> Self {
        self.body = ReplyBody::Chunks(chunks);
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Answer only once `gate` is open.
    pub fn held(mut self, gate: &Gate) -> Self {
        self.hold = Some(gate.clone());
        self
    }
}

// === impl UpstreamBuilder ===

type ReplyFn = dyn Fn(&Recorded, usize) -> Reply + Send + Sync;

enum Script {
    Fn(Box<ReplyFn>),
    /// Replies in order; once empty, every request gets a 500 saying so.
    Queue(Mutex<VecDeque<Reply>>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocols {
    Both,
    Http1,
    Http2,
}

/// Configures an [`Upstream`]. By default it answers every request with `200` and an
/// empty body, over clear text, HTTP/1.1 and HTTP/2, storing request bodies.
pub struct UpstreamBuilder {
    script: Script,
    tls: Option<Arc<ServerConfig>>,
    protocols: Protocols,
    store_bodies: bool,
    keep_requests: bool,
}

impl UpstreamBuilder {
    /// Answer each request with `f(request, index)`; `index` counts from 0 in arrival order.
    pub fn reply(mut self, f: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static) -> Self {
        self.script = Script::Fn(Box::new(f));
        self
    }

    /// Answer requests with these replies in order. Once they run out, every request gets
    /// `500` with the body `upstream script exhausted`.
    pub fn replies(mut self, replies: impl IntoIterator<Item = Reply>) -> Self {
        self.script = Script::Queue(Mutex::new(replies.into_iter().collect()));
        self
    }

    /// Serve TLS with this config. Set its ALPN protocols (see [`super::tls`]) to offer h2.
    pub fn tls(mut self, config: Arc<ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Serve TLS with this certificate chain and key (PEM), offering h2 and http/1.1.
    pub fn tls_pem(self, cert_pem: &str, key_pem: &str) -> Self {
        self.tls(super::tls::server_config_from_pem(cert_pem, key_pem, None))
    }

    /// Refuse HTTP/2.
    pub fn http1_only(mut self) -> Self {
        self.protocols = Protocols::Http1;
        self
    }

    /// Refuse HTTP/1.1.
    pub fn http2_only(mut self) -> Self {
        self.protocols = Protocols::Http2;
        self
    }

    /// Count and checksum request bodies without storing them (`Recorded::body` stays
    /// empty; `body_len` and `body_crc32` are set). For very large uploads.
    pub fn count_bodies(mut self) -> Self {
        self.store_bodies = false;
        self
    }

    /// Count requests without keeping them: [`Upstream::count`] works, and the methods
    /// that return requests panic. For long runs, whose log would grow without bound.
    pub fn count_only(mut self) -> Self {
        self.keep_requests = false;
        self
    }

    /// Bind 127.0.0.1:0 and start serving on the current tokio runtime.
    pub async fn start(self) -> Upstream {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind upstream on 127.0.0.1:0");
        let addr = listener.local_addr().expect("upstream local addr");
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            log: Mutex::new(Vec::new()),
            received: AtomicUsize::new(0),
            keep_requests: self.keep_requests,
            changed,
            connections: AtomicUsize::new(0),
            handshake_failures: AtomicUsize::new(0),
            script: self.script,
            store_bodies: self.store_bodies,
        });
        let tls = self.tls.map(TlsAcceptor::from);
        let is_tls = tls.is_some();
        let task = tokio::spawn(accept_loop(listener, tls, self.protocols, shared.clone()));
        Upstream {
            addr,
            is_tls,
            shared,
            task,
        }
    }
}

// === impl Upstream ===

/// A running scripted upstream. Dropping it stops the server and its connections.
pub struct Upstream {
    addr: SocketAddr,
    is_tls: bool,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    /// The requests, in arrival order, unless [`UpstreamBuilder::count_only`].
    log: Mutex<Vec<Recorded>>,
    /// How many requests arrived (written under `log`'s lock).
    received: AtomicUsize,
    keep_requests: bool,
    /// The number of recorded requests, for waiters.
    changed: watch::Sender<usize>,
    connections: AtomicUsize,
    handshake_failures: AtomicUsize,
    script: Script,
    store_bodies: bool,
}

impl Upstream {
    pub fn builder() -> UpstreamBuilder {
        UpstreamBuilder {
            script: Script::Fn(Box::new(|_, _| Reply::ok())),
            tls: None,
            protocols: Protocols::Both,
            store_bodies: true,
            keep_requests: true,
        }
    }

    /// A clear-text upstream answering with `f(request, index)`.
    pub async fn start(f: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static) -> Self {
        Self::builder().reply(f).start().await
    }

    /// A clear-text upstream that counts request bodies without storing them and answers
    /// every request with `200` and `reply_len` generated bytes.
    pub async fn sink(reply_len: u64) -> Self {
        Self::builder()
            .count_bodies()
            .reply(move |_, _| Reply::ok().pattern(reply_len))
            .start()
            .await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        let scheme = if self.is_tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Like [`Upstream::url`] but naming the host `localhost`, for SNI and name checks.
    /// (The server listens on 127.0.0.1 only; the caller must resolve `localhost` there.)
    pub fn localhost_url(&self) -> String {
        let scheme = if self.is_tls { "https" } else { "http" };
        format!("{scheme}://localhost:{}", self.addr.port())
    }

    /// Every request recorded so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.kept().clone()
    }

    /// The number of requests received so far.
    pub fn count(&self) -> usize {
        self.shared.received.load(Ordering::SeqCst)
    }

    /// The log, which an upstream built with [`UpstreamBuilder::count_only`] does not keep.
    fn kept(&self) -> std::sync::MutexGuard<'_, Vec<Recorded>> {
        assert!(
            self.shared.keep_requests,
            "this upstream only counts requests (count_only)"
        );
        self.shared.log.lock().unwrap()
    }

    /// The `i`th request; panics if there is none.
    pub fn request(&self, i: usize) -> Recorded {
        let log = self.kept();
        log.get(i)
            .cloned()
            .unwrap_or_else(|| panic!("upstream got {} requests, no request #{i}", log.len()))
    }

    /// Waits until at least `n` requests have been recorded (at most [`WAIT`]), then
    /// returns them all. Panics on timeout.
    pub async fn wait_for(&self, n: usize) -> Vec<Recorded> {
        let mut rx = self.shared.changed.subscribe();
        if tokio::time::timeout(WAIT, rx.wait_for(|&count| count >= n))
            .await
            .is_err()
        {
            panic!(
                "upstream got {} requests within {WAIT:?}, expected {n}",
                self.count()
            );
        }
        self.requests()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed (e.g. the client rejected our certificate).
    pub fn handshake_failures(&self) -> usize {
        self.shared.handshake_failures.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // The accept loop owns the connection tasks, so this stops them too.
        self.task.abort();
    }
}

// === the server ===

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    protocols: Protocols,
    shared: Arc<Shared>,
) {
    let mut conns = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // e.g. EMFILE: back off rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            // Reap finished connections so the set doesn't grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let conn = shared.connections.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            match tls {
                None => serve(stream, protocols, shared, conn, None).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            let cert = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| c.as_ref().to_vec());
                            serve(stream, protocols, shared, conn, cert).await
                        }
                        _ => {
                            shared.handshake_failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
        });
    }
}

async fn serve<IO>(
    io: IO,
    protocols: Protocols,
    shared: Arc<Shared>,
    conn: usize,
    client_cert: Option<Vec<u8>>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(shared.clone(), conn, client_cert.clone(), req));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    match protocols {
        Protocols::Both => {}
        Protocols::Http1 => builder = builder.http1_only(),
        Protocols::Http2 => builder = builder.http2_only(),
    }
    // Errors here are the peer going away or breaking protocol; the test sees the effect.
    let _ = builder.serve_connection(TokioIo::new(io), service).await;
}

async fn handle(
    shared: Arc<Shared>,
    conn: usize,
    client_cert: Option<Vec<u8>>,
    req: Request<Incoming>,
) -> Result<Response<ReplyBodyBox>, BoxError> {
    let received_at = Instant::now();
    let (parts, mut body) = req.into_parts();

    let mut digest = Digest::new();
    let mut stored = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            digest.update(&data);
            if shared.store_bodies {
                stored.extend_from_slice(&data);
            }
        }
    }
    let (body_len, body_crc32) = digest.finish();

    let authority = parts.uri.authority().map(|a| a.to_string()).or_else(|| {
        parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    });
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.to_string()),
        authority,
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        body: stored.freeze(),
        body_len,
        body_crc32,
        version: parts.version,
        conn,
        client_cert,
        received_at,
    };

    let index = {
        let mut log = shared.log.lock().unwrap();
        if shared.keep_requests {
            log.push(recorded.clone());
        }
        shared.received.fetch_add(1, Ordering::SeqCst)
    };
    shared.changed.send_replace(index + 1);

    let reply = match &shared.script {
        Script::Fn(f) => f(&recorded, index),
        Script::Queue(queue) => queue
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Reply::new(500).body("upstream script exhausted")),
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if let Some(gate) = &reply.hold {
        gate.passed().await;
    }
    if reply.abort {
        return Err("reply aborted by the test script".into());
    }

    let mut response = Response::new(reply_body(reply.body));
    *response.status_mut() = StatusCode::from_u16(reply.status).expect("scripted status");
    for (name, value) in reply.headers {
        response.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("scripted header name"),
            HeaderValue::from_bytes(&value).expect("scripted header value"),
        );
    }
    Ok(response)
}

fn reply_body(body: ReplyBody) -> ReplyBodyBox {
    match body {
        ReplyBody::Full(bytes) => Full::new(bytes)
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
        ReplyBody::Pattern { len, fail_after } => {
            let mut body = PatternBody::new(len);
            if let Some(after) = fail_after {
                body = body.fail_after(after);
            }
            body.map_err(BoxError::from).boxed_unsync()
        }
        ReplyBody::Chunks(chunks) => ChunksBody {
            chunks: chunks.into(),
            sleep: None,
        }
        .boxed_unsync(),
    }
}

// === impl ChunksBody ===

/// Sends each chunk after its delay.
struct ChunksBody {
    chunks: VecDeque<(Duration, Bytes)>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for ChunksBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(sleep) = &mut this.sleep {
                ready!(sleep.as_mut().poll(cx));
                this.sleep = None;
                let (_, chunk) = this.chunks.pop_front().expect("a chunk is pending");
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            match this.chunks.front() {
                None => return Poll::Ready(None),
                Some((delay, _)) => this.sleep = Some(Box::pin(tokio::time::sleep(*delay))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
