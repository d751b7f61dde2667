//! The upstream client: each upstream's own pool of keep-alive connections over
//! `hyper::client::conn`, HTTP/2 by ALPN, TLS verified by default, and per-upstream
//! connect timeouts and connection limits.
//!
//! Each [`Upstream`] keeps its connections: idle HTTP/1 connections on a stack (the most
//! recently used on top, so the warmest is reused and the rest expire), and at most one
//! HTTP/2 connection that every request shares. A request takes an idle connection or
//! opens one. An HTTP/1 connection goes back on the stack from its response body's own
//! poll when the body ends: no task, channel or hashed pool key per request.
//! (hyper-util's legacy client, which weir used before, spawned a task per request to
//! do that, and looked its pool up by a SipHashed key.)
//!
//! A request with no body, or a small one all in hand, goes over HTTP/1 by weir's own
//! exchange ([`h1`]): the request's task writes the request and reads the response
//! itself, and no task drives the connection. A request with a larger or streamed body,
//! and every HTTP/2 connection, go through hyper's client, with one task per
//! connection; an idle connection of the own exchange is handed to hyper when such a
//! request takes it.
//!
//! weir is never an open proxy: a pool only ever dials its own upstream's origin.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::bindings::UpstreamError;
use crate::body::{self, BodyFault, ProxyBody};
use crate::config::{Origin, UpstreamConfig};
use crate::error::{self, ProxyError};
use crate::lock;
use crate::telemetry::{InFlight, UpstreamMetrics};
use crate::tls::{self, TlsError};

mod h1;
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod h1_compare;

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

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How often an upstream with idle connections closes those past [`POOL_IDLE_TIMEOUT`].
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// One configured upstream.
pub struct Upstream {
    /// The name in the config.
    pub name: String,
    /// The origin, as text: `https://api.example.com`.
    pub origin: String,
    uri_origin: Origin,
    /// Time to the response head: the series, once the first answer made it.
    duration: OnceLock<prometheus::Histogram>,
    /// How long a response body may go without a frame.
    read_timeout: Duration,
    /// The `Host` header for a plain-HTTP upstream, made once: the client would format
    /// the same value for every request. `None` for HTTPS, where the connection may turn
    /// out to be HTTP/2 and the client sets `:authority` instead.
    host: Option<http::HeaderValue>,
    /// The `Host` an HTTP/1 request carries when it has none (an HTTPS upstream's).
    authority: http::HeaderValue,
    /// Its connections.
    conns: Arc<Conns>,
}

/// A request's connection slot under `max_connections`, from its checkout until its
/// response body ends; it frees itself when dropped.
struct Slot(Arc<Conns>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.free();
    }
}

/// An upstream's connection slots: `max_connections` of them, one per request in flight.
///
/// A count and a queue, not a [`tokio::sync::Semaphore`]: taking a free slot is one
/// compare-and-swap and freeing it one subtraction, where the semaphore's release also
/// takes its waiters' lock on every request. The count is also what
/// `weir_upstream_in_flight` shows, read at the scrape ([`InFlight`]).
///
/// While requests wait, a freed slot is handed to the one that has waited longest, as
/// the semaphore did: a new request queues behind them rather than take it.
struct Slots {
    max: usize,
    /// Slots taken: the requests in flight, and slots being handed to a waiter.
    taken: AtomicUsize,
    /// The queue's length: read without its lock by every request, and by every freed
    /// slot.
    waiting: AtomicUsize,
    /// The waiting requests, longest first; each is sent its slot.
    queue: Mutex<std::collections::VecDeque<tokio::sync::oneshot::Sender<()>>>,
}

/// A request in [`Slots`]' queue. However its wait ends, it leaves the queue; a slot
/// sent to it too late (past its deadline, or after its request went away) is passed on.
struct Waiter<'a> {
    slots: &'a Slots,
    handed: tokio::sync::oneshot::Receiver<()>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.handed.close();
        if self.handed.try_recv().is_ok() {
            self.slots.free();
        }
        let mut queue = lock(&self.slots.queue);
        queue.retain(|w| !w.is_closed());
        self.slots.waiting.store(queue.len(), Ordering::SeqCst);
    }
}

impl Slots {
    fn new(max: usize) -> Slots {
        Slots {
            max,
            taken: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            queue: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Takes a slot now, if one is free and no request is waiting for one.
    fn take_now(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) == 0 && self.take()
    }

    fn take(&self) -> bool {
        // SeqCst here, in `free` and in `wait`: a waiter counts itself and then looks at
        // the slots, a freer frees its slot and then looks at the waiters; one of the
        // two must see the other's write, or the waiter sleeps past a free slot.
        self.taken
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Waits for a slot, behind the requests already waiting; `false` when `deadline`
    /// passes first.
    async fn wait(&self, deadline: Instant) -> bool {
        let mut waiter = {
            let mut queue = lock(&self.queue);
            let (to_me, handed) = tokio::sync::oneshot::channel();
            queue.push_back(to_me);
            self.waiting.store(queue.len(), Ordering::SeqCst);
            // First in line: a slot freed before this request counted itself is free.
            if queue.len() == 1 && self.take() {
                queue.clear();
                self.waiting.store(0, Ordering::SeqCst);
                return true;
            }
            Waiter {
                slots: self,
                handed,
            }
        };
        matches!(
            crate::deadline::within(deadline, &mut waiter.handed).await,
            Ok(Ok(()))
        )
    }

    fn free(&self) {
        self.taken.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.hand_over();
        }
    }

    /// Gives the slot just freed to the longest waiter still waiting, unless another
    /// request took it first.
    fn hand_over(&self) {
        let mut queue = lock(&self.queue);
        while !queue.is_empty() && self.take() {
            let waiter = queue.pop_front().expect("not empty");
            self.waiting.store(queue.len(), Ordering::SeqCst);
            if waiter.send(()).is_ok() {
                return;
            }
            // That one gave up: the slot goes back, for the next in line.
            self.taken.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Upstream {
    /// The `Host` header requests to this upstream carry, when weir sets it itself.
    pub fn host_header(&self) -> Option<&http::HeaderValue> {
        self.host.as_ref()
    }

    /// The URI for `path_with_query` on this upstream: the path alone for a plain-HTTP
    /// upstream (all its request line needs), the full URI for an HTTPS one (HTTP/2 by
    /// ALPN sends the origin as `:scheme` and `:authority`).
    pub fn uri(&self, path_with_query: &str) -> Result<Uri, ProxyError> {
        starts_with_slash(path_with_query)?;
        let pq = http::uri::PathAndQuery::try_from(path_with_query).map_err(|e| {
            ProxyError::BadRequest(format!("invalid path {path_with_query:?}: {e}"))
        })?;
        self.uri_of(pq)
    }

    /// [`Upstream::uri`] for a path the caller gives up, such as one made from the
    /// client's already valid URI: its bytes become the URI's, with no copy.
    pub fn uri_owned(&self, path_with_query: String) -> Result<Uri, ProxyError> {
        starts_with_slash(&path_with_query)?;
        let pq = http::uri::PathAndQuery::from_maybe_shared(Bytes::from(path_with_query))
            .map_err(|e| ProxyError::BadRequest(format!("invalid path: {e}")))?;
        self.uri_of(pq)
    }

    fn uri_of(&self, pq: http::uri::PathAndQuery) -> Result<Uri, ProxyError> {
        if self.host.is_some() {
            // A plain-HTTP upstream speaks HTTP/1 only, whose request line carries the
            // path alone: no origin to add here and take off again in `origin_form`.
            return Ok(Uri::from(pq));
        }
        Uri::builder()
            .scheme(self.uri_origin.scheme.clone())
            .authority(self.uri_origin.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| ProxyError::BadRequest(format!("invalid path: {e}")))
    }
}

fn starts_with_slash(path_with_query: &str) -> Result<(), ProxyError> {
    if path_with_query.starts_with('/') {
        Ok(())
    } else {
        Err(ProxyError::BadRequest(format!(
            "path {path_with_query:?} does not start with /"
        )))
    }
}

/// The upstreams, each with its connections.
pub struct UpstreamPool {
    upstreams: std::collections::HashMap<String, Arc<Upstream>>,
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
    /// Sets up every upstream and loads its TLS files. No connection is opened yet.
    pub fn new(
        upstreams: &[(String, UpstreamConfig)],
        metrics: Arc<UpstreamMetrics>,
    ) -> Result<UpstreamPool, TlsError> {
        let mut by_name = std::collections::HashMap::new();
        for (name, cfg) in upstreams {
            let tls = if cfg.url.is_https() {
                Some(tls::client_config(name, cfg.tls.as_ref())?)
            } else {
                None
            };
            let host = cfg.url.authority.host();
            let target = Target {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port: cfg
                    .url
                    .authority
                    .port_u16()
                    .unwrap_or(if tls.is_some() { 443 } else { 80 }),
                tls,
                connect_timeout: cfg.connect_timeout.0,
            };
            let conns = Arc::new(Conns::new(
                target,
                POOL_IDLE_TIMEOUT,
                cfg.max_connections as usize,
            ));
            by_name.insert(
                name.clone(),
                Arc::new(Upstream {
                    name: name.clone(),
                    origin: cfg.url.to_string(),
                    uri_origin: cfg.url.clone(),
                    duration: OnceLock::new(),
                    read_timeout: cfg.read_timeout.0,
                    host: host_header(&cfg.url),
                    authority: authority_header(&cfg.url),
                    conns: conns.clone(),
                }),
            );
            metrics.watch_in_flight(name, Arc::downgrade(&conns) as Weak<dyn InFlight>);
        }
        Ok(UpstreamPool {
            upstreams: by_name,
            metrics,
        })
    }

    /// The upstream called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(name)
    }

    /// Sends `req` to `upstream`, waiting for a connection slot and the response head no
    /// later than `deadline`. The slot is held until the response body ends. The request
    /// is boxed: it goes down through several futures, and a box moves as a pointer.
    ///
    /// A client's request carries its body's [`BodyFault`] in its extensions. When the
    /// call failed because of that body (it broke, or the deadline passed while weir was
    /// waiting for it), the failure's error is the client's ([`error::Origin::Client`]) and it
    /// is not counted as the upstream's: over HTTP/2 the upstream side sees only a reset
    /// stream, so the error itself cannot say.
    pub fn send<'a>(
        &'a self,
        upstream: &'a Upstream,
        req: Box<Request<ProxyBody>>,
        deadline: Instant,
        timeout_ms: u64,
    ) -> impl Future<Output = Result<Response<ProxyBody>, UpstreamFailure>> + Send + 'a {
        use futures_util::FutureExt as _;
        // Not an `async fn`: no future of its own around `send_timed`'s.
        self.send_timed(upstream, req, deadline, timeout_ms)
            .map(|(sent, _)| sent)
    }

    /// Like [`UpstreamPool::send`], and also says when and how long opening a new
    /// connection took (TCP, then TLS), when this request opened one.
    pub async fn send_timed(
        &self,
        upstream: &Upstream,
        req: Box<Request<ProxyBody>>,
        deadline: Instant,
        timeout_ms: u64,
    ) -> (
        Result<Response<ProxyBody>, UpstreamFailure>,
        Option<ConnectTiming>,
    ) {
        let client_body = req.extensions().get::<BodyFault>().cloned();
        let started = Instant::now();
        let mut connect = None;
        let result = self
            .send_inner(upstream, req, started, deadline, timeout_ms, &mut connect)
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
        (result, connect)
    }

    async fn send_inner(
        &self,
        upstream: &Upstream,
        req: Box<Request<ProxyBody>>,
        now: Instant,
        deadline: Instant,
        timeout_ms: u64,
        connect: &mut Option<ConnectTiming>,
    ) -> Result<Response<ProxyBody>, UpstreamFailure> {
        let timed_out = || UpstreamFailure {
            kind: UpstreamError::Timeout,
            error: ProxyError::Timeout { timeout_ms },
        };
        // The timer wheel fires up to a millisecond past `deadline`, and `within` polls
        // the call first, so a fast upstream could still answer a request sent
        // after its deadline. Such a request is not sent.
        if now >= deadline {
            return Err(timed_out());
        }
        // A free slot (the common case) is taken with no timer; a wait for one is
        // bounded by the deadline, and the clock is read again after it.
        let slots = &upstream.conns.slots;
        let now = if slots.take_now() {
            now
        } else {
            // Boxed: the wait is rare, and its future large.
            if !Box::pin(slots.wait(deadline)).await {
                return Err(UpstreamFailure {
                    kind: UpstreamError::Overloaded,
                    error: ProxyError::Overloaded {
                        upstream: upstream.origin.clone(),
                    },
                });
            }
            Instant::now()
        };
        let slot = Slot(upstream.conns.clone());
        // `within` reuses the worker's timers: no timer wheel lock on most requests.
        match crate::deadline::within(deadline, upstream.exchange(req, now, connect)).await {
            Err(_) => Err(timed_out()),
            Ok(Err(f)) => Err(f),
            // One box for the body, whatever it carries. `Returning` is outermost, so
            // that a body that stalls past `read_timeout` gives its slot up at once.
            Ok(Ok((resp, back))) => Ok(resp.map(|b| {
                let b = body::ReadTimeout::new(b, upstream.read_timeout);
                body::boxed(Returning::new(b, back, slot))
            })),
        }
    }
}

impl Upstream {
    /// Sends `req` (sent at `now`) on a pooled or new connection and waits for the
    /// response head; an HTTP/1 connection comes back with it, to be given back when
    /// the body ends. A new connection's time to open goes to `connect`.
    async fn exchange(
        &self,
        mut req: Box<Request<ProxyBody>>,
        now: Instant,
        connect: &mut Option<ConnectTiming>,
    ) -> Result<(Response<Answer>, Option<Back>), UpstreamFailure> {
        let fail = |e: ConnectError| e.to_failure(self.origin.clone());
        say_empty_content(&mut req);
        // Whether the own exchange can send the request: with no body, or with the whole
        // of one in memory taken off it, which goes back into the request if hyper's
        // client takes the request after all.
        let mut whole = None;
        let mut own = h1::fits(&req)
            && (req.body().is_end_stream()
                || req.extensions().get::<body::Whole>().is_some() && {
                    whole = h1::take_body(req.body_mut());
                    whole.is_some()
                });
        let mut fresh = false;
        loop {
            let checkout = if fresh {
                // Boxed, here and in `checkout`: opening a connection (TCP, TLS, the
                // handshake) is a large future that most requests never run, and every
                // request would otherwise copy its space along with the rest.
                Box::pin(self.conns.connect(own)).await
            } else {
                self.conns.checkout(now, own).await
            }
            .map_err(fail)?;
            let reused = checkout.connect.is_none();
            if !reused {
                *connect = checkout.connect;
            }
            if !matches!(checkout.sender, Sender::Own(..))
                && let Some(b) = whole.take()
            {
                *req.body_mut() = body::full(b);
                own = false;
            }
            let unsent = match checkout.sender {
                Sender::H2(mut s) => match s.try_send_request(*req).await {
                    Ok(resp) => return Ok((resp.map(Answer::Hyper), None)),
                    Err(e) => e,
                },
                Sender::H1(mut s, home) => {
                    self.origin_form(&mut req);
                    match s.try_send_request(*req).await {
                        Ok(resp) => return Ok((resp.map(Answer::Hyper), Some(Back::H1(s, home)))),
                        Err(e) => e,
                    }
                }
                Sender::Own(mut conn, home) => {
                    self.origin_form(&mut req);
                    let asked = conn.prepare(&req, whole.clone().unwrap_or_default());
                    match conn.send(asked).await {
                        Ok(resp) => return Ok((resp.map(Answer::Own), Some(Back::Own(home)))),
                        // As below: a pooled connection that could not take the head.
                        Err(h1::H1Error::Unsent(_)) if reused && !fresh => {
                            fresh = true;
                            continue;
                        }
                        Err(e) => return Err(own_failure(&e, &self.origin)),
                    }
                }
            };
            let mut unsent = unsent;
            // A pooled connection that the upstream closed just as it was taken: the
            // request was not written, so it goes once more, on a new connection.
            match unsent.take_message() {
                Some(again) if reused && !fresh => {
                    *req = again;
                    fresh = true;
                }
                _ => return Err(classify(unsent.error(), &self.origin)),
            }
        }
    }

    /// An HTTP/1 request line carries the path alone, and the request a `Host`.
    fn origin_form(&self, req: &mut Request<ProxyBody>) {
        if req.uri().scheme().is_some()
            && let Some(pq) = req.uri().path_and_query().cloned()
        {
            *req.uri_mut() = Uri::from(pq);
        }
        req.headers_mut()
            .entry(header::HOST)
            .or_insert_with(|| self.authority.clone());
    }
}

/// The `Host` value the HTTP/1 client would send to a plain-HTTP `origin`: the host,
/// and the port unless it is 80.
fn host_header(origin: &Origin) -> Option<http::HeaderValue> {
    (!origin.is_https()).then(|| authority_header(origin))
}

/// `origin`'s host, and its port unless it is the scheme's default.
fn authority_header(origin: &Origin) -> http::HeaderValue {
    let host = origin.authority.host();
    let default = if origin.is_https() { 443 } else { 80 };
    let value = match origin.authority.port_u16() {
        Some(port) if port != default => http::HeaderValue::from_str(&format!("{host}:{port}")),
        _ => http::HeaderValue::from_str(host),
    };
    // A parsed authority is valid header text.
    value.unwrap_or_else(|_| http::HeaderValue::from_static("invalid"))
}

/// Puts `Content-Length: 0` on a request with an empty body whose method anticipates
/// content (RFC 9110, section 8.6), as user agents do: weir takes the client's framing
/// headers off (`headers::prepare_upstream`), and without one some servers (Google's
/// front end among them) answer such a `POST` with 411 Length Required. Over HTTP/1, a
/// `GET`, `HEAD`, `DELETE`, `OPTIONS`, `TRACE` or `CONNECT` without content gets none, as
/// the RFC asks (over HTTP/2, hyper's client adds one to every method but `GET`, `HEAD`,
/// `DELETE` and `CONNECT`).
fn say_empty_content(req: &mut Request<ProxyBody>) {
    use http::Method;
    if matches!(
        *req.method(),
        Method::GET
            | Method::HEAD
            | Method::DELETE
            | Method::OPTIONS
            | Method::TRACE
            | Method::CONNECT
    ) || !req.body().is_end_stream()
    {
        return;
    }
    if let header::Entry::Vacant(slot) = req.headers_mut().entry(header::CONTENT_LENGTH) {
        slot.insert(http::HeaderValue::from_static("0"));
    }
}

/// Maps an error of the own HTTP/1 exchange to the WIT kind and the client's error.
fn own_failure(e: &h1::H1Error, origin: &str) -> UpstreamFailure {
    let kind = if e.is_protocol() {
        UpstreamError::Protocol
    } else {
        UpstreamError::Reset
    };
    broken(kind, e, origin)
}

/// Maps an error of a request on a connection to the WIT kind and the client's error.
fn classify(e: &hyper::Error, origin: &str) -> UpstreamFailure {
    let kind = if e.is_timeout() {
        UpstreamError::Timeout
    } else if e.is_parse() || e.is_parse_status() {
        UpstreamError::Protocol
    } else {
        UpstreamError::Reset
    };
    broken(kind, e, origin)
}

/// A connection that broke under a request: `kind` for filters, `e` for the client.
fn broken(kind: UpstreamError, e: &dyn std::fmt::Display, origin: &str) -> UpstreamFailure {
    UpstreamFailure {
        kind,
        error: ProxyError::UpstreamBroken {
            upstream: origin.to_owned(),
            detail: e.to_string(),
        },
    }
}

// === connections ===

/// Where and how to connect to one upstream.
struct Target {
    /// The host to dial, without IPv6 brackets.
    host: String,
    port: u16,
    tls: Option<Arc<ClientConfig>>,
    connect_timeout: Duration,
}

impl Target {
    /// Opens a TCP connection and, for HTTPS, a verified TLS session on it; also says
    /// how long the TCP connect took.
    async fn dial(&self) -> Result<(Conn, Duration), ConnectError> {
        let started = Instant::now();
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| ConnectError::Failed(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let took = started.elapsed();
        let Some(cfg) = &self.tls else {
            return Ok((Conn::Plain(tcp), took));
        };
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| ConnectError::Tls(format!("invalid server name {:?}: {e}", self.host)))?;
        let tls = TlsConnector::from(cfg.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        Ok((Conn::Tls(Box::new(tls)), took))
    }
}

/// One upstream's connections.
struct Conns {
    target: Target,
    /// Idle HTTP/1 connections, the most recently used last: a stack per worker
    /// ([`crate::workers`]), so that a worker reuses the connections its own runtime
    /// drives, and slot 0 for every other thread (async jobs, span export).
    idle: Box<[Stack]>,
    /// The HTTP/2 connection every request shares, once ALPN has chosen h2.
    h2: Mutex<Option<http2::SendRequest<ProxyBody>>>,
    /// Whether `h2` was ever set: until then a checkout does not take its lock.
    any_h2: AtomicBool,
    /// The connection slots under `max_connections`.
    slots: Slots,
    idle_timeout: Duration,
    /// Whether the task that closes expired idle connections runs.
    sweeping: AtomicBool,
}

/// One worker's idle connections, alone on its cache lines: workers on other cores
/// never touch it.
#[repr(align(128))]
#[derive(Default)]
struct Stack(Mutex<Vec<Idle>>);

/// An idle HTTP/1 connection, and since when.
struct Idle {
    conn: IdleConn,
    since: Instant,
}

/// An idle HTTP/1 connection: hyper's, driven by its task, or the own exchange's.
enum IdleConn {
    Hyper(http1::SendRequest<ProxyBody>),
    Own(h1::Conn1<Conn>),
}

impl IdleConn {
    /// Whether the upstream closed it (or sent bytes nobody asked for) while it was idle.
    fn is_closed(&mut self) -> bool {
        match self {
            IdleConn::Hyper(sender) => sender.is_closed(),
            IdleConn::Own(conn) => !conn.looks_open(),
        }
    }
}

/// A connection to send one request on. An HTTP/1 one comes with the idle stack it goes
/// back to: its home worker's, whose runtime's event loop its socket is registered
/// with. (An own connection another worker hands to hyper keeps that home; its hyper
/// task runs on the worker that handed it over.)
enum Sender {
    /// hyper's HTTP/1 client: for a request whose body the own exchange does not take,
    /// and for any request on a connection already handed to it.
    H1(http1::SendRequest<ProxyBody>, usize),
    /// The own exchange, for a request with no body or one taken whole.
    Own(h1::Conn1<Conn>, usize),
    H2(http2::SendRequest<ProxyBody>),
}

/// A connection, and how opening it went if it is new.
struct Checkout {
    sender: Sender,
    connect: Option<ConnectTiming>,
}

impl InFlight for Conns {
    fn in_flight(&self) -> usize {
        self.slots.taken.load(Ordering::Relaxed)
    }
}

impl Conns {
    fn new(target: Target, idle_timeout: Duration, max_connections: usize) -> Conns {
        Conns {
            target,
            idle: (0..crate::workers::slots())
                .map(|_| Stack::default())
                .collect(),
            h2: Mutex::new(None),
            any_h2: AtomicBool::new(false),
            slots: Slots::new(max_connections),
            idle_timeout,
            sweeping: AtomicBool::new(false),
        }
    }

    /// The shared HTTP/2 connection, else an idle HTTP/1 one that is ready, else a new
    /// connection. `now` is the request's start: no clock read here. `own`: the request
    /// can take the own HTTP/1 exchange; otherwise an own idle connection goes to
    /// hyper's client first.
    async fn checkout(&self, now: Instant, own: bool) -> Result<Checkout, ConnectError> {
        let shared = if self.any_h2.load(Ordering::Acquire) {
            lock(&self.h2).as_ref().filter(|s| !s.is_closed()).cloned()
        } else {
            None
        };
        if let Some(sender) = shared {
            return Ok(Checkout {
                sender: Sender::H2(sender),
                connect: None,
            });
        }
        while let Some((idle, home)) = self.pop_idle(now) {
            let mut sender = match idle {
                IdleConn::Own(conn) if own => {
                    return Ok(Checkout {
                        sender: Sender::Own(conn, home),
                        connect: None,
                    });
                }
                IdleConn::Own(conn) => match Box::pin(hyper_h1(conn.into_io())).await {
                    Ok(sender) => sender,
                    Err(_) => continue,
                },
                IdleConn::Hyper(sender) => sender,
            };
            // A connection goes back when its last response ended; it is ready once its
            // task has seen that, or closed if the upstream ended it.
            if sender.ready().await.is_ok() {
                return Ok(Checkout {
                    sender: Sender::H1(sender, home),
                    connect: None,
                });
            }
        }
        Box::pin(self.connect(own)).await
    }

    /// The most recently used idle connection that has not expired or closed, and the
    /// stack it came from: the calling worker's own, else (rather than open a new
    /// connection) another's.
    fn pop_idle(&self, now: Instant) -> Option<(IdleConn, usize)> {
        let own = self.own_stack();
        let others = (0..self.idle.len()).filter(|&i| i != own);
        for home in std::iter::once(own).chain(others) {
            let mut idle = lock(&self.idle[home].0);
            while let Some(mut i) = idle.pop() {
                if now.saturating_duration_since(i.since) < self.idle_timeout && !i.conn.is_closed()
                {
                    return Some((i.conn, home));
                }
            }
        }
        None
    }

    /// The calling thread's idle stack: its worker's, or slot 0.
    fn own_stack(&self) -> usize {
        crate::workers::current() % self.idle.len()
    }

    /// Puts an HTTP/1 connection whose response ended back on stack `home` for the next
    /// request.
    fn put_back(self: &Arc<Self>, conn: IdleConn, home: usize) {
        if let IdleConn::Hyper(sender) = &conn
            && sender.is_closed()
        {
            return;
        }
        lock(&self.idle[home].0).push(Idle {
            conn,
            since: Instant::now(),
        });
        // A load first: a swap is an atomic write on every request's hand-back.
        if !self.sweeping.load(Ordering::Relaxed) && !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// Opens a connection (within the connect timeout) and, unless the own exchange
    /// takes it (`own`, and ALPN did not choose HTTP/2), starts hyper's task that drives
    /// it. An HTTP/2 one becomes the shared connection.
    async fn connect(&self, own: bool) -> Result<Checkout, ConnectError> {
        let at = Instant::now();
        let (io, tcp) = tokio::time::timeout(self.target.connect_timeout, self.target.dial())
            .await
            .map_err(|_| ConnectError::Timeout)??;
        let timing = ConnectTiming {
            at,
            tcp,
            tls: self
                .target
                .tls
                .is_some()
                .then(|| at.elapsed().saturating_sub(tcp)),
        };
        let sender = if io.is_h2() {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(io))
                .await
                .map_err(|e| ConnectError::Failed(format!("HTTP/2 handshake: {e}")))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            *lock(&self.h2) = Some(sender.clone());
            self.any_h2.store(true, Ordering::Release);
            Sender::H2(sender)
        } else if own {
            Sender::Own(h1::Conn1::new(io), self.own_stack())
        } else {
            Sender::H1(hyper_h1(io).await?, self.own_stack())
        };
        Ok(Checkout {
            sender,
            connect: Some(timing),
        })
    }
}

/// Hands `io` to hyper's HTTP/1 client, and starts the task that drives it.
async fn hyper_h1(io: Conn) -> Result<http1::SendRequest<ProxyBody>, ConnectError> {
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ConnectError::Failed(format!("HTTP/1 handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Closes `conns`' expired idle connections every [`SWEEP_EVERY`], until the upstream
/// is gone (a reload replaced it).
async fn sweep(conns: Weak<Conns>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(c) = conns.upgrade() else {
            return;
        };
        for stack in &c.idle {
            lock(&stack.0)
                .retain_mut(|i| i.since.elapsed() < c.idle_timeout && !i.conn.is_closed());
        }
    }
}

/// An HTTP/1 connection to give back when its response ends, and its home stack (in the
/// pool its [`Slot`] holds): hyper's, or the own exchange's, which its body holds.
enum Back {
    H1(http1::SendRequest<ProxyBody>, usize),
    Own(usize),
}

/// An upstream response's body, from hyper's client or the own exchange.
enum Answer {
    Hyper(Incoming),
    Own(h1::Body<Conn>),
}

impl Body for Answer {
    type Data = Bytes;
    type Error = body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, body::BoxError>>> {
        match self.get_mut() {
            Answer::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Answer::Own(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Answer::Hyper(b) => b.is_end_stream(),
            Answer::Own(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Answer::Hyper(b) => b.size_hint(),
            Answer::Own(b) => b.size_hint(),
        }
    }
}

/// An upstream's response body: when it ends, it gives its connection slot up and puts
/// its HTTP/1 connection back in the pool. A body dropped before its end gives the slot
/// up and takes the connection with it (it is closed).
struct Returning {
    inner: body::ReadTimeout<Answer>,
    back: Option<Back>,
    slot: Option<Slot>,
}

impl Returning {
    fn new(inner: body::ReadTimeout<Answer>, back: Option<Back>, slot: Slot) -> Self {
        let mut r = Returning {
            inner,
            back,
            slot: Some(slot),
        };
        // An empty body (a HEAD, a 204) may never be polled.
        if r.inner.is_end_stream() {
            r.give_back();
        }
        r
    }

    fn give_back(&mut self) {
        // The connection first: a request the freed slot lets in finds it idle.
        if let Some(slot) = &self.slot {
            let idle = match self.back.take() {
                Some(Back::H1(sender, home)) => Some((IdleConn::Hyper(sender), home)),
                Some(Back::Own(home)) => match self.inner.get_mut() {
                    Answer::Own(b) => b.take_conn().map(|c| (IdleConn::Own(c), home)),
                    Answer::Hyper(_) => None,
                },
                None => None,
            };
            if let Some((conn, home)) = idle {
                slot.0.put_back(conn, home);
            }
        }
        self.slot = None;
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, body::BoxError>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => {
                self.back = None;
                self.slot = None;
            }
            _ => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
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

/// A connection to an upstream, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// Whether TLS's ALPN chose HTTP/2.
    fn is_h2(&self) -> bool {
        match self {
            Conn::Plain(_) => false,
            Conn::Tls(s) => s.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
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

    /// An HTTP/1 server on loopback that answers `status` (with `Connection: close` when
    /// `close`), and counts the connections it accepted.
    async fn server(status: u16, close: bool) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    // Read to its end, as an upstream that answers after the body.
                    let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                    let mut resp =
                        Response::new(http_body_util::Full::new(Bytes::from(if status == 204 {
                            ""
                        } else {
                            "ok"
                        })));
                    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    if close {
                        resp.headers_mut()
                            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        (url, accepted)
    }

    fn pool_for(url: String) -> UpstreamPool {
        pool_reporting_to(url, &crate::telemetry::Telemetry::new().unwrap())
    }

    /// A pool of one upstream `u` at `url`, with default settings, whose series are in
    /// `telemetry`.
    fn pool_reporting_to(url: String, telemetry: &crate::telemetry::Telemetry) -> UpstreamPool {
        let config = UpstreamConfig {
            url: crate::config::Origin::try_from(url).unwrap(),
            connect_timeout: crate::config::defaults::connect_timeout(),
            max_connections: crate::config::defaults::max_connections(),
            read_timeout: crate::config::defaults::upstream_read_timeout(),
            tls: None,
        };
        UpstreamPool::new(&[("u".to_owned(), config)], telemetry.upstreams.clone()).unwrap()
    }

    /// Sends a GET and reads the whole answer; returns its status, and whether the call
    /// opened a new connection.
    async fn get(pool: &UpstreamPool) -> (u16, bool) {
        call(pool, Request::new(crate::body::empty())).await
    }

    /// Sends a POST with a body not marked as in memory (hyper's client, not the own
    /// exchange), as [`get`].
    async fn post(pool: &UpstreamPool) -> (u16, bool) {
        let mut req = Request::new(crate::body::full(Bytes::from_static(b"a body")));
        *req.method_mut() = http::Method::POST;
        call(pool, req).await
    }

    async fn call(pool: &UpstreamPool, mut req: Request<ProxyBody>) -> (u16, bool) {
        use http_body_util::BodyExt as _;
        let upstream = pool.get("u").unwrap();
        *req.uri_mut() = upstream.uri("/x").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (resp, connect) = pool
            .send_timed(upstream, Box::new(req), deadline, 5000)
            .await;
        let resp = resp.expect("an answer");
        let status = resp.status().as_u16();
        resp.into_body().collect().await.unwrap();
        (status, connect.is_some())
    }

    #[test]
    fn an_owned_path_makes_the_same_uri() {
        for origin in ["http://127.0.0.1:9", "https://api.example.com"] {
            let pool = pool_for(origin.to_owned());
            let u = pool.get("u").unwrap();
            for pq in ["/", "/a/b?x=1&y"] {
                let owned = u.uri_owned(pq.to_owned()).unwrap();
                assert_eq!(owned, u.uri(pq).unwrap(), "{origin}{pq}");
                assert_eq!(owned.path_and_query().unwrap().as_str(), pq);
                assert_eq!(owned.scheme().is_some(), origin.starts_with("https"));
            }
            for bad in ["no-slash", ""] {
                let ProxyError::BadRequest(e) = u.uri_owned(bad.to_owned()).unwrap_err() else {
                    panic!("not a bad request")
                };
                assert_eq!(e, format!("path {bad:?} does not start with /"));
            }
            let ProxyError::BadRequest(e) = u.uri_owned("/a b".to_owned()).unwrap_err() else {
                panic!("not a bad request")
            };
            assert!(e.starts_with("invalid path: "), "{e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_is_waited_for_until_the_deadline() {
        let slots = Slots::new(1);
        assert!(slots.take_now());
        assert!(!slots.take_now(), "the one slot is taken");
        let deadline = Instant::now() + Duration::from_secs(1);
        assert!(!slots.wait(deadline).await, "no slot was freed");
        assert_eq!(Instant::now(), deadline);
        assert_eq!(slots.waiting.load(Ordering::SeqCst), 0);
        assert_eq!(slots.taken.load(Ordering::SeqCst), 1);
    }

    /// Waiters for `slots` until `deadline`, each in its own task.
    fn waiter(slots: &Arc<Slots>, deadline: Instant) -> tokio::task::JoinHandle<bool> {
        let slots = slots.clone();
        tokio::spawn(async move { slots.wait(deadline).await })
    }

    /// One slot, taken, and a deadline ten seconds away.
    fn one_slot_taken() -> (Arc<Slots>, Instant) {
        let slots = Arc::new(Slots::new(1));
        assert!(slots.take_now());
        (slots, Instant::now() + Duration::from_secs(10))
    }

    /// Runs other tasks until `n` requests wait for one of `slots`.
    async fn until_waiting(slots: &Slots, n: usize) {
        while slots.waiting.load(Ordering::SeqCst) != n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_slot_goes_to_the_longest_waiter_before_any_newcomer() {
        let (slots, deadline) = one_slot_taken();
        let first = waiter(&slots, deadline);
        until_waiting(&slots, 1).await;
        slots.free();
        // The first waiter has not run since, but the slot is already its own: neither a
        // newcomer's fast path nor a newcomer that waits gets it.
        assert!(!slots.take_now(), "a newcomer took the waiter's slot");
        let second = waiter(&slots, deadline);
        until_waiting(&slots, 1).await;
        assert!(first.await.unwrap(), "the first waiter got the freed slot");
        assert!(!second.is_finished(), "the second waiter got a slot too");
        assert_eq!(slots.taken.load(Ordering::SeqCst), 1);
        slots.free();
        assert!(second.await.unwrap(), "the second waiter got the next slot");
        slots.free();
        assert_eq!(slots.taken.load(Ordering::SeqCst), 0);
        assert_eq!(slots.waiting.load(Ordering::SeqCst), 0);
        assert!(slots.take_now(), "no one waits: a slot is taken at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_sent_to_a_waiter_that_went_away_goes_to_the_next() {
        let (slots, deadline) = one_slot_taken();
        let gone = waiter(&slots, deadline);
        until_waiting(&slots, 1).await;
        let next = waiter(&slots, deadline);
        until_waiting(&slots, 2).await;
        slots.free();
        // Its request ends before it sees the slot it was sent.
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        assert!(next.await.unwrap(), "the slot was lost with the waiter");
        assert_eq!(slots.taken.load(Ordering::SeqCst), 1);
        assert_eq!(slots.waiting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_in_flight_gauge_counts_requests_until_their_bodies_end() {
        use http_body_util::BodyExt as _;
        let (url, _) = server(200, false).await;
        let telemetry = crate::telemetry::Telemetry::new().unwrap();
        let pool = pool_reporting_to(url, &telemetry);
        let gauge = |t: &crate::telemetry::Telemetry| {
            t.render()
                .lines()
                .find_map(|l| l.strip_prefix("weir_upstream_in_flight{upstream=\"u\"} "))
                .map(str::to_owned)
        };
        assert_eq!(gauge(&telemetry).as_deref(), Some("0"));
        let upstream = pool.get("u").unwrap();
        let mut req = Request::new(crate::body::empty());
        *req.uri_mut() = upstream.uri("/x").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let resp = pool
            .send(upstream, Box::new(req), deadline, 5000)
            .await
            .unwrap();
        assert_eq!(
            gauge(&telemetry).as_deref(),
            Some("1"),
            "the body has not ended"
        );
        // A pool a reload replaced counts its requests until they end.
        drop(pool);
        assert_eq!(gauge(&telemetry).as_deref(), Some("1"));
        resp.into_body().collect().await.unwrap();
        assert_eq!(gauge(&telemetry).as_deref(), Some("0"));
    }

    #[tokio::test]
    async fn one_connection_carries_requests_one_after_another() {
        let (url, accepted) = server(200, false).await;
        let pool = pool_for(url);
        assert_eq!(get(&pool).await, (200, true));
        for _ in 0..5 {
            assert_eq!(get(&pool).await, (200, false), "a pooled connection");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn requests_with_and_without_a_body_share_one_connection() {
        let (url, accepted) = server(200, false).await;
        let pool = pool_for(url);
        assert_eq!(get(&pool).await, (200, true), "the own exchange opens it");
        assert_eq!(
            post(&pool).await,
            (200, false),
            "hyper's client takes it over"
        );
        assert_eq!(
            get(&pool).await,
            (200, false),
            "and keeps it, for any request"
        );
        assert_eq!(post(&pool).await, (200, false));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// What the idle connections are, the most recently used last: `true` for the own
    /// exchange's, `false` for hyper's.
    fn idle_kinds(pool: &UpstreamPool) -> Vec<bool> {
        let upstream = pool.get("u").unwrap();
        upstream
            .conns
            .idle
            .iter()
            .flat_map(|stack| {
                lock(&stack.0)
                    .iter()
                    .map(|i| matches!(i.conn, IdleConn::Own(_)))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[tokio::test]
    async fn only_a_small_body_in_memory_goes_over_the_own_exchange() {
        let (url, accepted) = server(200, false).await;
        let pool = pool_for(url);
        let whole = |len: usize| {
            let mut req = Request::new(crate::body::full(Bytes::from(vec![b'x'; len])));
            *req.method_mut() = http::Method::POST;
            req.extensions_mut().insert(crate::body::Whole);
            req
        };
        assert_eq!(call(&pool, whole(100)).await, (200, true));
        assert_eq!(call(&pool, whole(16 * 1024)).await, (200, false));
        assert_eq!(idle_kinds(&pool), [true], "the own exchange sent both");
        // Too large to go with its head: hyper's client takes the connection over.
        assert_eq!(call(&pool, whole(16 * 1024 + 1)).await, (200, false));
        assert_eq!(idle_kinds(&pool), [false]);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // A body not marked as in memory is not polled early: hyper's client sends it.
        let pool = pool_for(server(200, false).await.0);
        assert_eq!(get(&pool).await, (200, true));
        assert_eq!(idle_kinds(&pool), [true]);
        assert_eq!(post(&pool).await, (200, false));
        assert_eq!(idle_kinds(&pool), [false]);
    }

    #[tokio::test]
    async fn an_empty_answer_gives_its_connection_back_too() {
        let (url, accepted) = server(204, false).await;
        let pool = pool_for(url);
        for _ in 0..3 {
            assert_eq!(get(&pool).await.0, 204);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_is_not_reused() {
        let (url, accepted) = server(200, true).await;
        let pool = pool_for(url);
        for _ in 0..3 {
            assert_eq!(get(&pool).await, (200, true), "each on a new connection");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_expired_idle_connection_is_replaced() {
        let (url, accepted) = server(200, false).await;
        let mut pool = pool_for(url);
        let upstream = pool.upstreams.get_mut("u").unwrap();
        let conns = Arc::new(Conns::new(
            Target {
                host: "127.0.0.1".into(),
                port: upstream.uri_origin.authority.port_u16().unwrap(),
                tls: None,
                connect_timeout: Duration::from_secs(5),
            },
            Duration::ZERO,
            1,
        ));
        Arc::get_mut(upstream).unwrap().conns = conns;
        assert_eq!(get(&pool).await, (200, true));
        assert_eq!(get(&pool).await, (200, true));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
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
            .send(upstream, Box::new(req), Instant::now(), 500)
            .await
            .expect_err("sent after its deadline");
        assert_eq!(failed.kind, UpstreamError::Timeout);
        // Nothing connected: the deadline was checked before any connection was made.
        let accepted = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
        assert!(accepted.is_err(), "the upstream was reached");
    }
}
