//! weir's own HTTP/1 server side, for the common request.
//!
//! hyper's server connection (its dispatcher, `Server::parse` and `Server::encode`) was
//! about 10k of the empty chain's 27.3k instructions a request (`bench/README.md`, "The
//! eleventh round"). An HTTP/1 connection, in plain text or over TLS when ALPN chose
//! HTTP/1.1 (or nothing), is served here instead, for as long as its requests are the
//! common kind: HTTP/1.1, not `CONNECT`, no `Transfer-Encoding`, `Expect`, `Upgrade` or
//! `TE` line, and no body or one whose `Content-Length` bytes (at most [`OWN_BODY_MAX`])
//! came with its head, in the bytes already read. The first request of any other
//! kind, or one that does not parse, hands the connection to hyper from that request's
//! first byte on ([`Ended::Hand`]). hyper then serves the rest of the connection as it
//! would have from its start: request bodies, `100-continue`, HTTP/1.0's keep-alive,
//! h2c, trailers, and its own 400, 414 and 431 answers.
//!
//! A client sees what hyper would have sent:
//! - the head is read as hyper reads it: `httparse`, at most 100 lines, the same
//!   buffer limit;
//! - a client that closes its end while its request is in flight cancels the request;
//! - the response is written by `Server::encode`'s rules:
//!   - lower-case names, and a `date` line;
//!   - `Content-Length`, or chunked when the length is unknown, none for `HEAD`, 204
//!     and 304;
//!   - `connection: close` when the connection will close after it.
//!
//! The tests below hold it to hyper's own bytes for the same requests and responses.
//! It differs from hyper in one place. hyper ends every line it writes after a
//! `Transfer-Encoding` whose last coding is not `chunked` with `, chunked`, not only
//! that header's; here only the `Transfer-Encoding` line gets it.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::body::{self, BoxError, ProxyBody};
use crate::drain;
use crate::headers::content_length;
use crate::slow_clients::{Flushes, InHand};

/// hyper's limit on a request head's lines.
const MAX_HEADERS: usize = 100;
/// hyper's limit on a request target's length (414 past it).
const MAX_URI_LEN: usize = u16::MAX as usize - 1;
/// How many header lines [`parse`] notes on the stack; a head with more notes them in a
/// `Vec`.
const INLINE_LINES: usize = 32;
/// How much room a read of the socket asks for, as hyper's first read does.
const READ_ROOM: usize = 8192;
/// A body chunk up to this size is copied behind the head into one write.
const COPY_UNDER: usize = 16 * 1024;
/// The largest request body this side takes, when all of it came with the head (in
/// the socket when the head was read). A body that is larger, or still on its way,
/// goes to hyper with its request, which streams it.
pub(crate) const OWN_BODY_MAX: u64 = 16 * 1024;

/// How an own-served connection ended.
pub(super) enum Ended<I> {
    /// It is closed: the client closed it, or weir did after a response.
    Closed,
    /// A request this side does not serve: hyper takes the connection from that
    /// request's first byte on. `served` says whether any request came before it.
    Hand { io: Rewound<I>, served: bool },
}

/// Why an own-served connection broke off. A client sees the connection close, as
/// with hyper's errors on the same cases.
#[derive(Debug, thiserror::Error)]
pub(super) enum Error {
    /// Reading from or writing to the client failed.
    #[error("client connection: {0}")]
    Io(#[from] io::Error),
    /// The client closed its end while its request was in flight.
    #[error("the client closed the connection before its response was complete")]
    Gone,
    /// The response's body failed.
    #[error("response body: {0}")]
    Body(BoxError),
    /// The response's body ended before its `Content-Length`.
    #[error("response body ended {0} bytes short of its content-length")]
    Short(u64),
    /// The response's head cannot be written (nothing of it was).
    #[error("response head: {0}")]
    Head(&'static str),
}

/// Serves `io` until it closes, breaks or meets a request for hyper. `max_head` is
/// `listen.max_header_bytes` as hyper's buffer takes it.
pub(super) async fn serve<I, S, F>(
    io: Flushes<I>,
    max_head: usize,
    drain: &mut drain::Watch,
    mut service: S,
) -> Result<Ended<I>, Error>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: FnMut(Box<http::request::Parts>, ProxyBody) -> F,
    F: Future<Output = Response<ProxyBody>>,
{
    let mut conn = Conn {
        io,
        buf: BytesMut::with_capacity(READ_ROOM),
        out: Vec::with_capacity(1024),
        max_head,
    };
    let mut served = false;
    loop {
        let head = match conn.read_head(drain, served).await? {
            Next::Head(h) => h,
            Next::Closed => {
                // As hyper: the writing side is shut down (over TLS, with `close_notify`).
                let _ = conn.io.shutdown().await;
                return Ok(Ended::Closed);
            }
            Next::Other => {
                return Ok(Ended::Hand {
                    io: Rewound {
                        prefix: conn.buf.freeze(),
                        io: conn.io.into_inner(),
                    },
                    served,
                });
            }
        };
        served = true;
        let (response, _) = conn.io.watch().request(false, false);
        let is_head = head.parts.method == Method::HEAD;
        // A body came whole with its head: the service reads it as hyper's would, in
        // one frame with its exact length, and the request says it is in memory.
        let mut parts = head.parts;
        let body = if head.body.is_empty() {
            body::empty()
        } else {
            parts.extensions.insert(body::Whole);
            body::full(head.body)
        };
        let call = service(parts, body);
        let resp = conn.in_flight(call).await?;
        if !conn
            .respond(resp, is_head, head.keep_alive, response, drain)
            .await?
        {
            let _ = conn.io.shutdown().await;
            return Ok(Ended::Closed);
        }
    }
}

/// A request head this side serves.
struct Head {
    /// Boxed: the proxy takes it so, and it moves as a pointer.
    parts: Box<http::request::Parts>,
    /// HTTP/1.1's default, unless a `Connection` line says `close`.
    keep_alive: bool,
    /// The request's body, all of it (empty when it has none).
    body: Bytes,
}

/// What the bytes at the buffer's front are.
enum Next {
    Head(Head),
    /// The client closed the connection between requests, or weir is draining.
    Closed,
    /// A request for hyper, or bytes hyper is to answer.
    Other,
}

struct Conn<I> {
    io: Flushes<I>,
    /// What the client sent and no request has taken yet.
    buf: BytesMut,
    /// The response's bytes not yet written.
    out: Vec<u8>,
    /// `listen.max_header_bytes` as hyper's buffer takes it: the most a head may be,
    /// and the most of a response buffered before it is written, as hyper's write
    /// buffer.
    max_head: usize,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    /// Reads until the buffer starts with a whole request head.
    async fn read_head(&mut self, drain: &mut drain::Watch, served: bool) -> Result<Next, Error> {
        // As hyper: after a partial head, the buffer is parsed again only once a blank
        // line has come, so a broken head sent in pieces is answered at its end.
        let mut partial = None;
        loop {
            if !self.buf.is_empty() && partial.is_none_or(|from| ends_head(&self.buf, from)) {
                match parse(&mut self.buf, self.max_head) {
                    Parsed::Head(h) => return Ok(Next::Head(h)),
                    Parsed::Other => return Ok(Next::Other),
                    Parsed::Partial => {}
                    Parsed::Short(whole) => {
                        // The rest of the body may be in the socket already (a read
                        // stops where the buffer's room does): it is read now, without
                        // waiting, and the head parsed again once it is all there. A
                        // body still on its way goes to hyper, which streams it.
                        // Outside tokio's cooperative budget: a spent one would say
                        // Pending for bytes the socket holds.
                        let rest = poll_fn(|cx| {
                            while self.buf.len() < whole {
                                match self.poll_fill(cx) {
                                    Poll::Ready(Ok(n)) if n > 0 => {}
                                    _ => return Poll::Ready(false),
                                }
                            }
                            Poll::Ready(true)
                        });
                        if !tokio::task::unconstrained(rest).await {
                            return Ok(Next::Other);
                        }
                        partial = None;
                        continue;
                    }
                }
            }
            if self.buf.len() >= self.max_head {
                return Ok(Next::Other);
            }
            partial = (!self.buf.is_empty()).then_some(self.buf.len());
            if self.buf.is_empty() && self.buf.capacity() < READ_ROOM {
                // A request starts with a whole read's room, so that a body sent with its
                // head comes in the same read: the buffer is taken back when nothing
                // holds a part of it any more (a kept record of the last request's
                // headers may), never by allocating.
                let _ = self.buf.try_reclaim(READ_ROOM);
            }
            // hyper's graceful shutdown closes a connection that has no request in hand:
            // after a response, whether or not part of the next head has come; before
            // the first, only if nothing has (it reads the rest of that head, and
            // answers it with `connection: close`).
            let read = poll_fn(|cx| {
                if drain.draining(cx) && (served || self.buf.is_empty()) {
                    return Poll::Ready(None);
                }
                self.poll_fill(cx).map(Some)
            });
            match read.await {
                None => return Ok(Next::Closed),
                Some(Ok(0)) => return Ok(Next::Closed),
                Some(Ok(_)) => {}
                // As hyper: a read error with no head begun is the client's close (over
                // TLS, one without `close_notify`), not a failure.
                Some(Err(_)) if self.buf.is_empty() => return Ok(Next::Closed),
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_ROOM / 8 {
            self.buf.reserve(READ_ROOM);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// While a request is in flight, reads the socket as hyper does: a close from the
    /// client ends the request; bytes after its head (a pipelined request) are kept and
    /// end the reading until the request is done. Ready only with the close or an error.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        if !self.buf.is_empty() {
            return Poll::Pending;
        }
        match self.poll_fill(cx) {
            Poll::Ready(Ok(0)) => Poll::Ready(Error::Gone),
            // Nothing to wait for from the socket now: the caller's other wait stands.
            Poll::Ready(Ok(_)) => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(e.into()),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Waits for the service's response, watching for the client's close. (A drain
    /// that begins meanwhile is read when the response is written.)
    async fn in_flight<F: Future<Output = Response<ProxyBody>>>(
        &mut self,
        call: F,
    ) -> Result<Response<ProxyBody>, Error> {
        let mut call = std::pin::pin!(call);
        poll_fn(|cx| {
            if let Poll::Ready(resp) = call.as_mut().poll(cx) {
                return Poll::Ready(Ok(resp));
            }
            self.poll_gone(cx).map(Err)
        })
        .await
    }

    /// Writes `resp`; returns whether the connection stays open for another request.
    /// During a drain it closes after this response, which says so, as hyper's
    /// graceful shutdown does.
    async fn respond(
        &mut self,
        resp: Response<ProxyBody>,
        is_head: bool,
        keep_alive: bool,
        response: Option<InHand>,
        drain: &mut drain::Watch,
    ) -> Result<bool, Error> {
        let (mut parts, mut body) = resp.into_parts();
        let length = if body.is_end_stream() {
            BodyLength::None
        } else {
            match body.size_hint().exact() {
                Some(n) => BodyLength::Known(n),
                None => BodyLength::Unknown,
            }
        };
        self.out.clear();
        let keep_alive = keep_alive && !drain.draining_now();
        let Encoded { framing, last } =
            encode(&mut self.out, &mut parts, length, is_head, keep_alive)?;
        let mut sending = Sending::new(framing);
        while !sending.ended {
            let ready = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            let frame = match ready {
                Poll::Ready(f) => f,
                Poll::Pending => {
                    // The body waits: what is ready goes now, flushed as hyper flushes
                    // (over TLS, bytes the socket did not take wait in the session).
                    self.write_out(None).await?;
                    self.io.flush().await?;
                    poll_fn(|cx| {
                        if let Poll::Ready(f) = Pin::new(&mut body).poll_frame(cx) {
                            return Poll::Ready(Ok(f));
                        }
                        self.poll_gone(cx).map(Err)
                    })
                    .await?
                }
            };
            match frame {
                None => sending.end(&mut self.out)?,
                // What is buffered is dropped, as hyper drops it: with a body read to
                // the connection's end, the client could not tell a cut from the end.
                Some(Err(e)) => return Err(Error::Body(e)),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        // Trailers: hyper sends them only to a client that asked with
                        // `TE: trailers`, and such a request is hyper's.
                        continue;
                    };
                    if let Some(big) = sending.data(&mut self.out, data) {
                        self.write_out(Some(big)).await?;
                        sending.after_big(&mut self.out);
                    } else if self.out.len() >= self.max_head {
                        self.write_out(None).await?;
                    }
                }
            }
        }
        drop(body);
        self.write_out(None).await?;
        // A streamed body can leave a large buffer behind: not for the connection's life.
        if self.out.capacity() > 4 * READ_ROOM {
            self.out = Vec::with_capacity(1024);
        }
        // The response is done: the slow-client watch starts the wait for the next head
        // once it is flushed, as it does for hyper.
        drop(response);
        self.io.flush().await?;
        Ok(!last && !sending.to_close() && !drain.draining_now())
    }

    /// Writes the buffered bytes, then `big`.
    async fn write_out(&mut self, big: Option<Bytes>) -> io::Result<()> {
        let mut head = 0;
        let mut tail = 0;
        let big = big.unwrap_or_default();
        while head < self.out.len() || tail < big.len() {
            let bufs = [IoSlice::new(&self.out[head..]), IoSlice::new(&big[tail..])];
            let n = self.io.write_vectored(&bufs).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_out = n.min(self.out.len() - head);
            head += from_out;
            tail += n - from_out;
        }
        self.out.clear();
        Ok(())
    }
}

/// What the response's body is, as hyper reads it before the head is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLength {
    /// It has already ended.
    None,
    Known(u64),
    Unknown,
}

/// How the response's body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes, and no more.
    Length(u64),
    Chunked,
    /// Until the connection closes.
    ToClose,
}

/// A response head's encoding: how its body goes, and whether the connection closes
/// after it.
#[derive(Debug, PartialEq, Eq)]
struct Encoded {
    framing: Framing,
    last: bool,
}

/// A response body on its way out.
struct Sending {
    framing: Framing,
    ended: bool,
}

impl Sending {
    fn new(framing: Framing) -> Sending {
        Sending {
            framing,
            ended: framing == Framing::Length(0),
        }
    }

    fn to_close(&self) -> bool {
        self.framing == Framing::ToClose
    }

    /// Frames `data` into `out`, or returns it to be written after `out` when it is
    /// large (then [`Sending::after_big`] follows its write). Past a `Content-Length`,
    /// the rest is dropped and the body ends, as hyper does.
    fn data(&mut self, out: &mut Vec<u8>, mut data: Bytes) -> Option<Bytes> {
        if data.is_empty() {
            return None;
        }
        match &mut self.framing {
            Framing::Length(left) => {
                if data.len() as u64 >= *left {
                    data.truncate(*left as usize);
                    self.ended = true;
                }
                *left -= data.len() as u64;
            }
            Framing::Chunked => chunk_size(out, data.len()),
            Framing::ToClose => {}
        }
        if data.len() >= COPY_UNDER {
            return Some(data);
        }
        out.extend_from_slice(&data);
        self.after_big(out);
        None
    }

    /// What follows a chunk of data: its CRLF, when chunked.
    fn after_big(&self, out: &mut Vec<u8>) {
        if self.framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The body ended.
    fn end(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        self.ended = true;
        match self.framing {
            Framing::Length(0) | Framing::ToClose => Ok(()),
            Framing::Length(left) => Err(Error::Short(left)),
            Framing::Chunked => {
                out.extend_from_slice(b"0\r\n\r\n");
                Ok(())
            }
        }
    }
}

/// A chunk's size line: upper-case hex, as hyper writes it.
fn chunk_size(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789ABCDEF"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// What [`parse`] found at the buffer's front.
enum Parsed {
    Head(Head),
    Partial,
    /// A head this side serves, with part of its body: the whole request is this many
    /// bytes.
    Short(usize),
    Other,
}

/// Takes a request head this side serves off the front of `buf`. Anything else is left
/// where it is, for hyper.
fn parse(buf: &mut BytesMut, max_head: usize) -> Parsed {
    let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut lines) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    if len > max_head || len > u32::MAX as usize || path.len() > MAX_URI_LEN {
        return Parsed::Other;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    if method == Method::CONNECT {
        return Parsed::Other;
    }
    // Where each line's name and value are: the lines borrow `buf`, which the head is
    // then split off. Most heads have a few lines, and a small array costs no
    // allocation, where one of `MAX_HEADERS` would cost a 3 KiB memset.
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let path = span(path.as_bytes());
    let count = req.headers.len();
    let mut inline = [[0u32; 4]; INLINE_LINES];
    let mut spilled = Vec::new();
    let spans = if count <= INLINE_LINES {
        &mut inline[..count]
    } else {
        spilled.resize(count, [0u32; 4]);
        &mut spilled[..]
    };
    for (at, line) in spans.iter_mut().zip(req.headers.iter()) {
        let (name, value) = (span(line.name.as_bytes()), span(line.value));
        // `len` fits a `u32` (checked above).
        *at = [name.start, name.end, value.start, value.end].map(|n| n as u32);
    }
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path)) else {
        return restore(buf, &head);
    };
    // weir adds up to three lines of its own before the request goes on.
    let mut headers = HeaderMap::with_capacity(count + 3);
    let mut keep_alive = true;
    let mut length = None;
    for &[name_start, name_end, value_start, value_end] in spans.iter() {
        let name = &head[name_start as usize..name_end as usize];
        let Ok(name) = HeaderName::from_bytes(name) else {
            return restore(buf, &head);
        };
        let value = head.slice(value_start as usize..value_end as usize);
        let Ok(value) = HeaderValue::from_maybe_shared(value) else {
            return restore(buf, &head);
        };
        match name {
            header::TRANSFER_ENCODING | header::EXPECT | header::UPGRADE | header::TE => {
                return restore(buf, &head);
            }
            // As hyper: digits only, and several lines must agree; it keeps the first.
            header::CONTENT_LENGTH => match (content_length(value.as_bytes()), length) {
                (None, _) => return restore(buf, &head),
                (Some(n), Some(first)) if n != first => return restore(buf, &head),
                (Some(_), Some(_)) => continue,
                (n, None) => length = n,
            },
            header::CONNECTION if lists(&value, "close") => keep_alive = false,
            _ => {}
        }
        headers.append(name, value);
    }
    let body = match length {
        None | Some(0) => Bytes::new(),
        Some(n) if n > OWN_BODY_MAX => return restore(buf, &head),
        Some(n) if n as usize <= buf.len() => buf.split_to(n as usize).freeze(),
        Some(n) => {
            let whole = head.len() + n as usize;
            rejoin(buf, &head, whole);
            return Parsed::Short(whole);
        }
    };
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.headers = headers;
    Parsed::Head(Head {
        parts: Box::new(parts),
        keep_alive,
        body,
    })
}

/// Whether a blank line (CRLF CRLF, LF LF or LF CRLF) ends `buf`'s bytes, looking from
/// a little before `from`, where the last look stopped: hyper's `is_complete_fast`.
fn ends_head(buf: &[u8], from: usize) -> bool {
    let tail = &buf[from.saturating_sub(3)..];
    tail.iter().enumerate().any(|(i, &b)| {
        let rest = &tail[i + 1..];
        match b {
            b'\r' => rest.starts_with(b"\n\r\n"),
            b'\n' => rest.starts_with(b"\n") || rest.starts_with(b"\r\n"),
            _ => false,
        }
    })
}

/// Puts a head taken off `buf` back in front of it, for hyper: a copy, on a path
/// that hyper then serves for good.
fn restore(buf: &mut BytesMut, head: &[u8]) -> Parsed {
    rejoin(buf, head, 0);
    Parsed::Other
}

/// Puts a head taken off `buf` back in front of it, in a buffer with room for at least
/// `room` bytes in all.
fn rejoin(buf: &mut BytesMut, head: &[u8], room: usize) {
    let mut whole = BytesMut::with_capacity(room.max(head.len() + buf.len()));
    whole.extend_from_slice(head);
    whole.extend_from_slice(buf);
    *buf = whole;
}

/// Whether a comma-separated header value lists `token`, as hyper reads one: a value
/// with bytes outside visible ASCII lists nothing.
fn lists(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Whether a `Transfer-Encoding` value's last coding is `chunked`, as hyper reads it.
fn ends_chunked(value: &HeaderValue) -> bool {
    value
        .to_str()
        .ok()
        .and_then(|s| s.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

/// Writes a response head into `out` as hyper's `Server::encode` does for an HTTP/1.1
/// request. On an error nothing is written.
fn encode(
    out: &mut Vec<u8>,
    head: &mut http::response::Parts,
    length: BodyLength,
    is_head: bool,
    keep_alive: bool,
) -> Result<Encoded, Error> {
    let status = head.status;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        // A 1xx cannot be a final response: hyper answers 500 instead, and closes.
        out.extend_from_slice(b"HTTP/1.1 500 Internal Server Error\r\n");
        if !is_head {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        end_head(out, false);
        return Ok(Encoded {
            framing: Framing::Length(0),
            last: true,
        });
    }
    let mut last = !keep_alive || status == StatusCode::SWITCHING_PROTOCOLS;
    if !keep_alive {
        match head.headers.entry(header::CONNECTION) {
            header::Entry::Occupied(mut e) => {
                if !e.iter().any(|v| lists(v, "close")) {
                    e.append(HeaderValue::from_static("close"));
                }
            }
            header::Entry::Vacant(e) => {
                e.insert(HeaderValue::from_static("close"));
            }
        }
    }
    let start = out.len();
    let reason = head.extensions.get::<hyper::ext::ReasonPhrase>();
    if head.version == Version::HTTP_11 && status == StatusCode::OK && reason.is_none() {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(if head.version == Version::HTTP_10 {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        match reason {
            Some(r) => out.extend_from_slice(r.as_bytes()),
            None => out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }
    // 101 is the one 1xx left here.
    let no_content = status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let can_have_body = !is_head && !no_content;
    let can_chunk = can_have_body && head.version != Version::HTTP_10;
    let fail = |out: &mut Vec<u8>, why| {
        out.truncate(start);
        Err(Error::Head(why))
    };

    let mut framing = Framing::Length(0);
    let mut wrote_len = false;
    let mut wrote_date = false;
    // A special line (length, coding, connection, trailer) is open: later values of
    // its name join it, and the next name ends it.
    let mut open = false;
    let mut add_chunked = false;
    let mut first_length = None;
    let mut current: Option<HeaderName> = None;
    for (name, value) in head.headers.drain() {
        if let Some(n) = name {
            close_line(out, &mut open, &mut add_chunked);
            current = Some(n);
        }
        let name = current
            .as_ref()
            .expect("a map's drain names its first value");
        match *name {
            header::CONTENT_LENGTH => {
                if wrote_len && !open {
                    return fail(out, "content-length after the body's framing");
                }
                match length {
                    BodyLength::Known(n) => {
                        if !open {
                            framing = Framing::Length(n);
                            open_line(out, "content-length: ", &value, &mut open);
                            wrote_len = true;
                        }
                        continue;
                    }
                    BodyLength::Unknown => {
                        let Some(n) = content_length(value.as_bytes()) else {
                            return fail(out, "content-length is not a number");
                        };
                        match first_length {
                            Some(first) if first != n => {
                                return fail(out, "two different content-length values");
                            }
                            Some(_) => {}
                            None => {
                                framing = Framing::Length(n);
                                open_line(out, "content-length: ", &value, &mut open);
                                wrote_len = true;
                                first_length = Some(n);
                            }
                        }
                        continue;
                    }
                    // No body: the line is kept only for `HEAD`, as an ordinary one.
                    BodyLength::None if !is_head => continue,
                    BodyLength::None => wrote_len = true,
                }
            }
            header::TRANSFER_ENCODING => {
                if wrote_len && !open {
                    return fail(out, "transfer-encoding after the body's framing");
                }
                if !can_chunk {
                    continue;
                }
                wrote_len = true;
                add_chunked = !ends_chunked(&value);
                if open {
                    join(out, &value);
                } else {
                    framing = Framing::Chunked;
                    open_line(out, "transfer-encoding: ", &value, &mut open);
                }
                continue;
            }
            header::CONNECTION => {
                last |= lists(&value, "close");
                if open {
                    join(out, &value);
                } else {
                    open_line(out, "connection: ", &value, &mut open);
                }
                continue;
            }
            header::TRAILER => {
                if !can_chunk {
                    continue;
                }
                if open {
                    join(out, &value);
                } else {
                    open_line(out, "trailer: ", &value, &mut open);
                }
                continue;
            }
            header::DATE => wrote_date = true,
            _ => {}
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    close_line(out, &mut open, &mut add_chunked);

    if !wrote_len {
        framing = match length {
            BodyLength::Unknown if can_chunk => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            BodyLength::Unknown => Framing::ToClose,
            BodyLength::None | BodyLength::Known(0) => {
                if !no_content && !is_head {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            BodyLength::Known(n) if !no_content => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
                Framing::Length(n)
            }
            BodyLength::Known(_) => Framing::Length(0),
        };
    }
    if !can_have_body {
        framing = Framing::Length(0);
    }
    end_head(out, wrote_date);
    Ok(Encoded { framing, last })
}

fn open_line(out: &mut Vec<u8>, name: &str, value: &HeaderValue, open: &mut bool) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(value.as_bytes());
    *open = true;
}

fn join(out: &mut Vec<u8>, value: &HeaderValue) {
    out.extend_from_slice(b", ");
    out.extend_from_slice(value.as_bytes());
}

fn close_line(out: &mut Vec<u8>, open: &mut bool, add_chunked: &mut bool) {
    if *open {
        out.extend_from_slice(if *add_chunked {
            b", chunked\r\n"
        } else {
            b"\r\n"
        });
        *open = false;
        *add_chunked = false;
    }
}

/// Ends a head: a `date` line unless it has one, and the blank line.
fn end_head(out: &mut Vec<u8>, wrote_date: bool) {
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        DATE.with(|d| d.borrow_mut().extend(out));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `date` value, formatted once a second, as hyper's is.
    static DATE: RefCell<CachedDate> = const {
        RefCell::new(CachedDate { second: u64::MAX, text: [0; 29] })
    };
}

struct CachedDate {
    second: u64,
    text: [u8; 29],
}

impl CachedDate {
    fn extend(&mut self, out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == self.text.len() {
                self.text.copy_from_slice(text.as_bytes());
                self.second = second;
            }
        }
        out.extend_from_slice(&self.text);
    }
}

/// A connection handed to hyper: the bytes already read from it come first.
pub(super) struct Rewound<I> {
    prefix: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewound<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let part = self.prefix.split_to(n);
            buf.put_slice(&part);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewound<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::time::Duration;

    use http_body::Frame;
    use http_body_util::{BodyExt as _, StreamBody};
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt as _, DuplexStream};

    use crate::body;
    use crate::slow_clients::{Cuts, Sweep, Timeouts, Watch};

    /// What a test's service answers a request with.
    type Answer = fn(&http::request::Parts) -> Response<ProxyBody>;

    fn watch() -> Arc<Watch> {
        let counter = |name| prometheus::IntCounter::new(name, "test").unwrap();
        let timeouts = Timeouts {
            head: Duration::from_secs(60),
            send: Duration::from_secs(60),
        };
        let cuts = Cuts {
            head: counter("heads"),
            send: counter("sends"),
        };
        Sweep::new(timeouts, cuts).begin()
    }

    /// Sends `request` to a server on the other end of `client` and reads what comes
    /// back until the server closes or stays silent for a second of paused time.
    async fn exchange(mut client: DuplexStream, request: &[u8]) -> Vec<u8> {
        client.write_all(request).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(1), client.read(&mut chunk)).await {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => panic!("reading the response: {e}"),
            }
        }
        got
    }

    /// What hyper's HTTP/1 server sends for `request`, and whether it closed.
    async fn hyper_says(request: &[u8], answer: Answer) -> (String, bool) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let resp = answer(&req.into_parts().0);
            async move { Ok::<_, Infallible>(resp) }
        });
        let conn =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), svc);
        let served = tokio::spawn(conn);
        let got = exchange(client, request).await;
        let closed = served.is_finished();
        (normalize(got), closed)
    }

    /// What the own side sends for `request`, whether it closed, and how it ended.
    async fn own_says(request: &[u8], answer: Answer) -> (String, bool) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let drain = crate::drain::Drain::new();
        let service = move |parts: Box<http::request::Parts>, _: ProxyBody| {
            let resp = answer(&parts);
            async move { resp }
        };
        let served = spawn_own(server, &drain, service);
        let got = exchange(client, request).await;
        let closed = served.is_finished();
        if closed {
            match served.await.unwrap() {
                Ok(Ended::Closed) | Err(_) => {}
                Ok(Ended::Hand { .. }) => panic!("handed to hyper"),
            }
        }
        (normalize(got), closed)
    }

    /// The own side serving `server` with `service`, in a task, as one of `drain`'s
    /// connections.
    fn spawn_own<S, F>(
        server: DuplexStream,
        drain: &crate::drain::Drain,
        service: S,
    ) -> tokio::task::JoinHandle<Result<Ended<DuplexStream>, Error>>
    where
        S: FnMut(Box<http::request::Parts>, ProxyBody) -> F + Send + 'static,
        F: Future<Output = Response<ProxyBody>> + Send + 'static,
    {
        let mut in_drain = drain.watch();
        tokio::spawn(async move {
            serve(Flushes::new(server, watch()), 8192, &mut in_drain, service).await
        })
    }

    /// The bytes as text, with each `date` value replaced: the two servers may write
    /// theirs a second apart.
    fn normalize(bytes: Vec<u8>) -> String {
        let text = String::from_utf8(bytes).expect("a test response is text");
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("date: ") {
            out.push_str(&rest[..at]);
            out.push_str("date: <date>");
            rest = &rest[at + "date: ".len() + 29..];
        }
        out.push_str(rest);
        out
    }

    async fn same_as_hyper(request: &str, answer: Answer) -> String {
        let hyper = hyper_says(request.as_bytes(), answer).await;
        let own = own_says(request.as_bytes(), answer).await;
        assert_eq!(own, hyper, "own side against hyper for {request:?}");
        own.0
    }

    fn full(status: u16, text: &'static str) -> Response<ProxyBody> {
        let mut r = Response::new(body::full(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r
    }

    fn streamed(parts: &[&'static str]) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    const GET: &str = "GET /a?b=c HTTP/1.1\r\nhost: x\r\n\r\n";

    #[tokio::test(start_paused = true)]
    async fn a_known_length_goes_as_content_length() {
        let said = same_as_hyper(GET, |_| full(200, "hello")).await;
        assert!(
            said.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: <date>\r\n\r\nhello")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_length_goes_chunked() {
        let said = same_as_hyper(GET, |_| Response::new(streamed(&["ab", "", "cde"]))).await;
        assert!(said.contains("transfer-encoding: chunked\r\n"), "{said}");
        assert!(said.ends_with("2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"), "{said}");
    }

    #[tokio::test(start_paused = true)]
    async fn heads_and_no_content_statuses_have_no_body() {
        let head = "HEAD / HTTP/1.1\r\nhost: x\r\n\r\n";
        let said = same_as_hyper(head, |_| full(200, "hello")).await;
        assert!(
            said.contains("content-length: 5\r\n") && said.ends_with("\r\n\r\n"),
            "{said}"
        );
        same_as_hyper(head, |_| Response::new(streamed(&["ab"]))).await;
        same_as_hyper(head, |_| full(200, "")).await;
        same_as_hyper(GET, |_| full(204, "")).await;
        same_as_hyper(GET, |_| full(304, "")).await;
        same_as_hyper(GET, |_| {
            let mut r = full(304, "");
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
            r
        })
        .await;
        same_as_hyper(head, |_| {
            let mut r = full(200, "");
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
            r
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_responses_own_length_and_coding_lines_are_kept_as_hyper_keeps_them() {
        same_as_hyper(GET, |_| {
            let mut r = full(200, "hello");
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
            r
        })
        .await;
        // An unknown length that a content-length line gives.
        same_as_hyper(GET, |_| {
            let mut r = Response::new(streamed(&["hel", "lo"]));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
            r
        })
        .await;
        // A content-length line with no body, on a GET: dropped for `content-length: 0`.
        same_as_hyper(GET, |_| {
            let mut r = full(200, "");
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
            r
        })
        .await;
        same_as_hyper(GET, |_| {
            let mut r = Response::new(streamed(&["x"]));
            r.headers_mut().insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            r.headers_mut()
                .insert("x-after", HeaderValue::from_static("1"));
            r
        })
        .await;
        same_as_hyper(GET, |_| {
            let mut r = Response::new(streamed(&["x"]));
            r.headers_mut()
                .insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
            r
        })
        .await;
        same_as_hyper(GET, |_| {
            let mut r = Response::new(streamed(&["x"]));
            r.headers_mut()
                .insert(header::TRAILER, HeaderValue::from_static("x-sum"));
            r
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_past_its_length_is_cut_and_the_connection_kept() {
        let two = format!("{GET}{GET}");
        let said = same_as_hyper(&two, |_| {
            let mut r = Response::new(streamed(&["hello", " world"]));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
            r
        })
        .await;
        assert_eq!(said.matches("hello w").count(), 2, "{said}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_short_of_its_length_closes_the_connection() {
        let two = format!("{GET}{GET}");
        let (said, closed) = same_as_hyper_closing(&two, |_| {
            let mut r = Response::new(streamed(&["hel"]));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
            r
        })
        .await;
        // Both sides had it all at once: neither has written a byte when the body
        // falls short, and the connection closes.
        assert!(closed, "a short body leaves the connection unusable");
        assert_eq!(said, "");
    }

    #[tokio::test(start_paused = true)]
    async fn statuses_versions_and_reasons_are_written_as_hyper_writes_them() {
        same_as_hyper(GET, |_| full(404, "no")).await;
        same_as_hyper(GET, |_| full(599, "odd")).await;
        same_as_hyper(GET, |_| {
            let mut r = full(299, "odd");
            r.extensions_mut()
                .insert(hyper::ext::ReasonPhrase::from_static(b"Fine Enough"));
            r
        })
        .await;
        same_as_hyper(GET, |_| {
            let mut r = full(200, "ok");
            r.extensions_mut()
                .insert(hyper::ext::ReasonPhrase::from_static(b"Very OK"));
            r
        })
        .await;
        same_as_hyper(GET, |_| {
            let mut r = full(200, "h2");
            *r.version_mut() = Version::HTTP_2;
            r
        })
        .await;
        // An HTTP/1.0 response of unknown length is read to the connection's end.
        let (said, closed) = same_as_hyper_closing(GET, |_| {
            let mut r = Response::new(streamed(&["to ", "the end"]));
            *r.version_mut() = Version::HTTP_10;
            r
        })
        .await;
        assert!(closed && said.starts_with("HTTP/1.0 200 OK\r\n"), "{said}");
        same_as_hyper(GET, |_| {
            let mut r = full(201, "made");
            r.headers_mut()
                .insert(header::DATE, HeaderValue::from_static("yesterday"));
            r.headers_mut()
                .append("x-many", HeaderValue::from_static("1"));
            r.headers_mut()
                .append("x-many", HeaderValue::from_static("2"));
            r
        })
        .await;
    }

    async fn same_as_hyper_closing(request: &str, answer: Answer) -> (String, bool) {
        let hyper = hyper_says(request.as_bytes(), answer).await;
        let own = own_says(request.as_bytes(), answer).await;
        assert_eq!(own, hyper, "own side against hyper for {request:?}");
        own
    }

    #[tokio::test(start_paused = true)]
    async fn connection_close_from_either_side_closes_after_the_response() {
        let close = "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let (said, closed) = same_as_hyper_closing(close, |_| full(200, "one")).await;
        assert!(closed && said.contains("connection: close\r\n"), "{said}");
        assert_eq!(said.matches("HTTP/1.1").count(), 1);
        let (said, closed) = same_as_hyper_closing(close, |_| {
            let mut r = full(200, "one");
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
            r
        })
        .await;
        assert!(
            closed && said.contains("connection: keep-alive, close\r\n"),
            "{said}"
        );
        let (said, closed) = same_as_hyper_closing(&format!("{GET}{GET}"), |_| {
            let mut r = full(200, "one");
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        })
        .await;
        assert!(closed, "{said}");
        assert_eq!(said.matches("HTTP/1.1").count(), 1);
        same_as_hyper_closing(GET, |_| full(101, "")).await;
        same_as_hyper_closing(GET, |_| full(103, "early")).await;
        let head = "HEAD / HTTP/1.1\r\n\r\n";
        same_as_hyper_closing(head, |_| full(101, "")).await;
        same_as_hyper_closing(head, |_| full(103, "early")).await;
    }

    #[tokio::test(start_paused = true)]
    async fn pipelined_requests_are_answered_in_order_and_the_connection_kept() {
        let three =
            "GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\nx: y\r\n\r\n\r\nGET /3 HTTP/1.1\r\n\r\n";
        let (said, closed) = same_as_hyper_closing(three, |p| {
            let text: &'static str = match p.uri.path() {
                "/1" => "one",
                "/2" => "two",
                _ => "three",
            };
            full(200, text)
        })
        .await;
        assert!(!closed, "kept alive");
        let one = said.find("one").unwrap();
        let two = said.find("two").unwrap();
        let three = said.find("three").unwrap();
        assert!(one < two && two < three, "{said}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_head_reaches_the_service_as_hyper_gives_it() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let drain = crate::drain::Drain::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        let service = move |parts: Box<http::request::Parts>, _: ProxyBody| {
            if let Some(tx) = tx.take() {
                let _ = tx.send(parts);
            }
            async { full(200, "") }
        };
        let _served = spawn_own(server, &drain, service);
        let req =
            "DELETE /x/y?z=1 HTTP/1.1\r\nHost: up\r\nX-A: 1\r\nx-a: 2\r\ncontent-length: 0\r\n\r\n";
        let said = exchange(client, req.as_bytes()).await;
        assert!(said.starts_with(b"HTTP/1.1 200 OK\r\n"));
        let parts = rx.await.unwrap();
        assert_eq!(parts.method, Method::DELETE);
        assert_eq!(parts.uri, "/x/y?z=1");
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers["host"], "up");
        let xa: Vec<_> = parts.headers.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_came_with_its_head_is_served_here_whole() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let drain = crate::drain::Drain::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let service = move |parts: Box<http::request::Parts>, body: ProxyBody| {
            let tx = tx.clone();
            async move {
                let hint = body.size_hint().exact();
                let marked = parts.extensions.get::<body::Whole>().is_some();
                let bytes = body.collect().await.unwrap().to_bytes();
                let _ = tx.send((parts.uri.to_string(), hint, marked, bytes));
                full(200, "")
            }
        };
        let served = spawn_own(server, &drain, service);
        // Two lengths that agree count once, as in hyper; leading zeros are digits. A
        // body larger than one read's room is read on from the socket.
        let large = "x".repeat(10_000);
        let req = format!(
            "POST /a HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello\
             PUT /b HTTP/1.1\r\ncontent-length: 003\r\ncontent-length: 3\r\n\r\nabc\
             PATCH /l HTTP/1.1\r\ncontent-length: 10000\r\n\r\n{large}\
             GET /c HTTP/1.1\r\n\r\n"
        );
        let said = exchange(client, req.as_bytes()).await;
        assert_eq!(said.windows(6).filter(|w| w == b" 200 O").count(), 4);
        // The connection stayed here, to the client's close: it was never handed to hyper.
        assert!(matches!(served.await.unwrap(), Ok(Ended::Closed)));
        let mut got = Vec::new();
        while let Ok(seen) = rx.try_recv() {
            got.push(seen);
        }
        assert_eq!(
            got,
            [
                ("/a".to_owned(), Some(5), true, Bytes::from_static(b"hello")),
                ("/b".to_owned(), Some(3), true, Bytes::from_static(b"abc")),
                ("/l".to_owned(), Some(10_000), true, Bytes::from(large)),
                ("/c".to_owned(), Some(0), false, Bytes::new()),
            ]
        );
    }

    /// Serves `request` on the own side until it hands over; returns what hyper would
    /// read, and whether a request came before.
    async fn handed(request: &[u8]) -> (Vec<u8>, bool, String) {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(request).await.unwrap();
        let drain = crate::drain::Drain::new();
        let service = |_: Box<http::request::Parts>, _: ProxyBody| async { full(200, "first") };
        let ended =
            tokio::time::timeout(Duration::from_secs(5), spawn_own(server, &drain, service))
                .await
                .expect("handed over without waiting")
                .unwrap()
                .expect("no error");
        let Ended::Hand { mut io, served } = ended else {
            panic!("the own side kept a request that is hyper's");
        };
        // What the own side read comes first, then the socket's rest: all of it that
        // the client sent.
        let mut first = Vec::new();
        let mut chunk = [0; 4096];
        while let Ok(n) = tokio::time::timeout(Duration::from_secs(1), io.read(&mut chunk)).await {
            let n = n.unwrap();
            if n == 0 {
                break;
            }
            first.extend_from_slice(&chunk[..n]);
        }
        drop(io);
        let mut said = Vec::new();
        client.read_to_end(&mut said).await.unwrap();
        (first, served, normalize(said))
    }

    #[tokio::test(start_paused = true)]
    async fn requests_it_does_not_serve_go_to_hyper_from_their_first_byte() {
        let big = format!(
            "POST / HTTP/1.1\r\ncontent-length: {n}\r\n\r\n{}",
            "a".repeat(OWN_BODY_MAX as usize + 1),
            n = OWN_BODY_MAX + 1,
        );
        for other in [
            // A body not all come yet, or larger than the own side takes (all of it
            // in the socket): hyper streams it.
            "POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nhi",
            big.as_str(),
            "POST / HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nhi",
            "POST / HTTP/1.1\r\ncontent-length: +2\r\n\r\nhi",
            "POST / HTTP/1.1\r\ncontent-length: 2, 2\r\n\r\nhi",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET / HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nexpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nte: trailers\r\n\r\n",
            "CONNECT up:443 HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\n\r\n",
            "G@T / HTTP/1.1\r\n\r\n",
            "GET http://[::1 HTTP/1.1\r\n\r\n",
        ] {
            let (first, served, said) = handed(other.as_bytes()).await;
            assert_eq!(first, other.as_bytes(), "hyper reads {other:?} whole");
            assert!(!served && said.is_empty(), "{other:?}: {said}");
        }
        let after = format!("{GET}POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nhi");
        let (first, served, said) = handed(after.as_bytes()).await;
        assert_eq!(first, &after.as_bytes()[GET.len()..]);
        assert!(served && said.contains("first"), "{said}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_past_the_buffer_goes_to_hyper_for_its_431() {
        let long = format!("GET / HTTP/1.1\r\nx-long: {}\r\n\r\n", "a".repeat(9000));
        let (first, served, _) = handed(long.as_bytes()).await;
        assert!(!served);
        assert!(long.as_bytes().starts_with(&first) && first.len() >= 8192);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_gone_mid_request_cancels_it() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let drain = crate::drain::Drain::new();
        let service = |_: Box<http::request::Parts>, _: ProxyBody| {
            std::future::pending::<Response<ProxyBody>>()
        };
        let served = spawn_own(server, &drain, service);
        client.write_all(GET.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!served.is_finished(), "the request is in flight");
        drop(client);
        let ended = tokio::time::timeout(Duration::from_secs(1), served)
            .await
            .expect("the close is seen")
            .unwrap();
        assert!(matches!(ended, Err(Error::Gone)), "{:?}", ended.err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_ends_a_request_in_flight_with_close() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let drain = Arc::new(crate::drain::Drain::new());
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
        let service = move |_: Box<http::request::Parts>, _: ProxyBody| {
            let released = released.clone();
            async move {
                if let Some(r) = released.lock().await.take() {
                    let _ = r.await;
                }
                full(200, "done")
            }
        };
        let served = spawn_own(server, &drain, service);
        let (mut reader, mut writer) = tokio::io::split(client);
        writer.write_all(GET.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let draining = drain.clone();
        let shutdown = tokio::spawn(async move { draining.shutdown().await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        release.send(()).unwrap();
        let mut said = Vec::new();
        reader.read_to_end(&mut said).await.unwrap();
        let said = normalize(said);
        assert!(
            said.contains("connection: close\r\n") && said.ends_with("done"),
            "{said}"
        );
        assert!(matches!(served.await.unwrap(), Ok(Ended::Closed)));
        shutdown.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_lets_a_half_come_first_head_come_whole_and_answers_it_with_close() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let drain = Arc::new(crate::drain::Drain::new());
        let service = |_: Box<http::request::Parts>, _: ProxyBody| async { full(200, "late") };
        let served = spawn_own(server, &drain, service);
        let (mut reader, mut writer) = tokio::io::split(client);
        writer.write_all(b"GET / HT").await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let draining = drain.clone();
        let shutdown = tokio::spawn(async move { draining.shutdown().await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        writer.write_all(b"TP/1.1\r\n\r\n").await.unwrap();
        let mut said = Vec::new();
        reader.read_to_end(&mut said).await.unwrap();
        let said = normalize(said);
        assert!(
            said.contains("connection: close\r\n") && said.ends_with("late"),
            "{said}"
        );
        assert!(matches!(served.await.unwrap(), Ok(Ended::Closed)));
        shutdown.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_closes_an_idle_connection_at_once() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let drain = crate::drain::Drain::new();
        let service = |_: Box<http::request::Parts>, _: ProxyBody| async { full(200, "") };
        let served = spawn_own(server, &drain, service);
        tokio::time::sleep(Duration::from_secs(1)).await;
        drain.shutdown().await;
        assert!(matches!(served.await.unwrap(), Ok(Ended::Closed)));
        drop(client);
    }

    /// A transport that, as a TLS session does, may keep written bytes until a flush:
    /// here it keeps all of them.
    struct KeepsUntilFlush {
        io: DuplexStream,
        kept: Vec<u8>,
    }

    impl AsyncRead for KeepsUntilFlush {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for KeepsUntilFlush {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.kept.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = &mut *self;
            while !this.kept.is_empty() {
                let n = std::task::ready!(Pin::new(&mut this.io).poll_write(cx, &this.kept))?;
                this.kept.drain(..n);
            }
            Pin::new(&mut this.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            std::task::ready!(self.as_mut().poll_flush(cx))?;
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// A transport whose end of input is an error, as a TLS session's is when the peer
    /// closes without `close_notify`; it notes its shutdown.
    struct EofIsAnError {
        io: DuplexStream,
        shut: Arc<std::sync::atomic::AtomicBool>,
    }

    impl AsyncRead for EofIsAnError {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            std::task::ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
            if buf.filled().len() == before && buf.remaining() > 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for EofIsAnError {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut.store(true, std::sync::atomic::Ordering::SeqCst);
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_between_requests_ends_the_connection_cleanly_even_as_an_error() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let drain = crate::drain::Drain::new();
        let mut in_drain = drain.watch();
        let shut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let io = EofIsAnError {
            io: server,
            shut: shut.clone(),
        };
        let service = |_: Box<http::request::Parts>, _: ProxyBody| async { full(200, "ok") };
        let served = tokio::spawn(async move {
            serve(Flushes::new(io, watch()), 8192, &mut in_drain, service).await
        });
        client.write_all(GET.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0; 1024];
        while !got.ends_with(b"ok") {
            let n = client.read(&mut chunk).await.unwrap();
            assert_ne!(n, 0, "closed: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
        client.shutdown().await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the close ends the connection")
            .unwrap();
        assert!(matches!(ended, Ok(Ended::Closed)), "{:?}", ended.err());
        assert!(
            shut.load(std::sync::atomic::Ordering::SeqCst),
            "shut down, as hyper does"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_streamed_body_is_flushed_whenever_it_waits() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let drain = crate::drain::Drain::new();
        let mut in_drain = drain.watch();
        let service = |_: Box<http::request::Parts>, _: ProxyBody| async {
            // One event, then nothing for as long as the test runs.
            let first = futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(
                Bytes::from_static(b"data: first\n\n"),
            ))]);
            let body = StreamBody::new(futures_util::StreamExt::chain(
                first,
                futures_util::stream::pending(),
            ));
            Response::new(body.boxed_unsync())
        };
        let io = KeepsUntilFlush {
            io: server,
            kept: Vec::new(),
        };
        let served = tokio::spawn(async move {
            serve(Flushes::new(io, watch()), 8192, &mut in_drain, service)
                .await
                .map(|_| ())
        });
        client.write_all(GET.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0; 1024];
        while !String::from_utf8_lossy(&got).contains("data: first\n\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk))
                .await
                .expect("the first event reaches the client while the body waits")
                .unwrap();
            assert_ne!(n, 0, "closed: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
        let said = normalize(got);
        assert!(said.starts_with("HTTP/1.1 200 OK\r\n"), "{said}");
        assert!(said.contains("transfer-encoding: chunked\r\n"), "{said}");
        assert!(said.ends_with("\r\n\r\nD\r\ndata: first\n\n\r\n"), "{said}");
        assert!(!served.is_finished(), "the response is still streaming");
    }

    #[test]
    fn response_heads_hyper_refuses_are_not_written() {
        let mut out = b"kept".to_vec();
        let mut parts = full(200, "x").into_parts().0;
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("x1"));
        let e = encode(&mut out, &mut parts, BodyLength::Unknown, false, true);
        assert!(matches!(e, Err(Error::Head(_))));
        assert_eq!(out, b"kept");
    }
}
