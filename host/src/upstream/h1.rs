//! weir's own HTTP/1 exchange, for a request with no body or a small one in hand: the
//! request's own task writes it and reads the response, on a pooled connection that no
//! task drives.
//!
//! hyper's client connection runs a task per connection: each request crosses a channel
//! to that task, its response head comes back over a oneshot, and its body over a
//! channel of its own. Each of those costs a task wake and a few atomics on both sides,
//! on every request. Here the task that serves the client reads the upstream's bytes
//! itself, as nginx's single event loop does. A request whose body is all in hand and
//! at most [`MAX_BODY`] bytes goes with its head in one write ([`take_body`]). Larger or
//! streamed bodies (whose upload may have to race the upstream's early answer) and HTTP/2
//! stay on hyper's client.
//!
//! The framing rules are hyper's client's (RFC 9112, section 6.3): no body for `HEAD`,
//! 1xx, 204 and 304; `Transfer-Encoding` whose last coding is `chunked`, else read to
//! the connection's end; one valid `Content-Length`; else read to the end. Head parsing
//! is `httparse`'s, as in hyper. A connection is reused only when both sides kept it
//! alive and the response ended exactly at its framing's end.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::body::{BoxError, ProxyBody};
use crate::headers::content_length;

/// The most header lines a response head or a trailer section may have: hyper's limit.
const MAX_HEADERS: usize = 100;

/// The most bytes a response head may take: hyper's default read buffer limit.
const MAX_HEAD: usize = 8192 + 4096 * 100;

/// The bytes of chunk extensions a body may have, and of its trailer section, must
/// stay under this: hyper's limits.
const MAX_SECTION: usize = 16 * 1024;

/// A read asks for at least this much room.
const READ_ROOM: usize = 8192;

/// The largest request body the own path sends. It goes in the same write as its head,
/// which a socket's send buffer takes at once, so an upstream that answers before it
/// reads the body (a 413, say) finds it sent; hyper's client reads while it uploads a
/// larger one.
pub(super) const MAX_BODY: u64 = 16 * 1024;

/// Whether `req`'s head can take the own path: HTTP/1.1 framing (an HTTP/2 client's
/// request is sent as HTTP/1.1, as hyper does), and no `CONNECT`. Its body must also
/// be one [`take_body`] takes.
pub(super) fn fits<B>(req: &Request<B>) -> bool {
    matches!(req.version(), Version::HTTP_11 | Version::HTTP_2) && req.method() != Method::CONNECT
}

/// Takes all of `body` when the own path can send it: none, or at most [`MAX_BODY`]
/// bytes of a known length that are all ready now. Otherwise `None`, and `body` is as
/// it was: any frame polled off it is put back in front. It never waits. The pool
/// gives it only bodies in memory ([`crate::body::Whole`]): polling a client's streamed
/// body before there is a connection would start its wait clock early.
pub(super) fn take_body(body: &mut ProxyBody) -> Option<Bytes> {
    use std::future::Future as _;
    if body.is_end_stream() {
        return Some(Bytes::new());
    }
    let len = body.size_hint().exact().filter(|&n| n <= MAX_BODY)?;
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut taken = VecDeque::new();
    let mut got = 0;
    let ended = loop {
        // Outside tokio's cooperative budget, as in `looks_open`: a spent budget would
        // say Pending for a body that is all there.
        let next = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx)));
        let Poll::Ready(next) = std::pin::pin!(tokio::task::unconstrained(next)).poll(&mut cx)
        else {
            unreachable!("the poll_fn is always ready");
        };
        match next {
            Poll::Ready(None) => break true,
            Poll::Pending => break false,
            Poll::Ready(Some(frame)) => {
                let data = frame.as_ref().ok().and_then(Frame::data_ref);
                got += data.map_or(0, |d| d.len() as u64);
                let more = data.is_some() && got <= len;
                taken.push_back(frame);
                if !more {
                    break false;
                }
            }
        }
    };
    if ended && got == len {
        // Every frame taken is data: any other kind ends the loop unended.
        let mut data = taken.into_iter().filter_map(|f| f.ok()?.into_data().ok());
        let first = data.next().unwrap_or_default();
        return Some(match data.next() {
            // One frame (a buffered body's, or one that came with its head): no copy.
            None => first,
            Some(second) => {
                let mut whole = BytesMut::with_capacity(len as usize);
                for d in [first, second].into_iter().chain(data) {
                    whole.extend_from_slice(&d);
                }
                whole.freeze()
            }
        });
    }
    if !taken.is_empty() {
        let rest = std::mem::replace(body, crate::body::empty());
        *body = crate::body::boxed(Replayed { taken, rest });
    }
    None
}

/// A body whose first frames were polled off it already, and come first again.
struct Replayed {
    taken: VecDeque<Result<Frame<Bytes>, BoxError>>,
    rest: ProxyBody,
}

impl HttpBody for Replayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.taken.pop_front() {
            Some(frame) => Poll::Ready(Some(frame)),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.taken.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let taken: u64 = self
            .taken
            .iter()
            .filter_map(|f| Some(f.as_ref().ok()?.data_ref()?.len() as u64))
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + taken);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + taken);
        }
        hint
    }
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum H1Error {
    /// The request could not be written, and the transport took none of it: nothing
    /// reached the upstream, so the request may go again on another connection.
    #[error("writing the request: {0}")]
    Unsent(io::Error),
    /// Writing the request failed after part of it was taken: the upstream may have
    /// acted on its head, so it does not go again.
    #[error("writing the request: {0}")]
    Write(io::Error),
    #[error("reading the response: {0}")]
    Read(io::Error),
    #[error("the connection closed before the response head was complete")]
    ClosedInHead,
    #[error("the connection closed before the response body was complete")]
    ClosedInBody,
    /// The upstream's bytes are not HTTP/1 as RFC 9112 frames it.
    #[error("invalid response: {0}")]
    Invalid(String),
}

impl H1Error {
    /// Whether the upstream spoke, but not valid HTTP/1 (the `protocol` error kind),
    /// rather than breaking the connection (`reset`).
    pub(super) fn is_protocol(&self) -> bool {
        matches!(self, H1Error::Invalid(_))
    }
}

/// An HTTP/1 connection that the own path drives: its transport, and what was read from
/// it but not used yet.
pub(super) struct Conn1<IO> {
    io: IO,
    buf: BytesMut,
    /// The request head being written: kept, so that a reused connection allocates none.
    out: Vec<u8>,
    /// Response header names and where their values are in the head: kept, as `out`.
    fields: Vec<(HeaderName, usize, usize)>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn1<IO> {
    pub(super) fn new(io: IO) -> Self {
        Conn1 {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            fields: Vec::new(),
        }
    }

    /// The transport, to hand a connection to hyper's client (for a request whose body
    /// the own path does not take). A pooled connection has nothing left unread.
    pub(super) fn into_io(self) -> IO {
        self.io
    }

    /// Whether an idle connection still looks usable: no bytes and no end came on it
    /// while it sat in the pool. This costs no system call unless the event loop saw
    /// the socket become readable (a close, or stray bytes), and it never waits.
    ///
    /// Outside tokio's cooperative budget: a task whose budget is spent would be told
    /// Pending whatever the socket holds, and take a closed connection for open.
    pub(super) fn looks_open(&mut self) -> bool {
        use std::future::Future as _;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let check = std::future::poll_fn(|cx| {
            self.buf.reserve(64);
            tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
        });
        // Ready is an end, bytes nobody asked for, or an error: in every case it is done.
        std::pin::pin!(tokio::task::unconstrained(check))
            .poll(&mut cx)
            .is_pending()
    }

    /// Makes `req`'s head for `body` (its whole body, from [`take_body`]), to
    /// [`Conn1::send`]. The request is not borrowed across the exchange's waits: its
    /// body need not be `Sync`.
    pub(super) fn prepare<B>(&mut self, req: &Request<B>, body: Bytes) -> Asked {
        Asked {
            head_method: req.method() == Method::HEAD,
            close: encode(req, body.len(), &mut self.out),
            body,
        }
    }

    /// Sends the head [`Conn1::prepare`] made, and the body behind it in the same
    /// write, and reads the response head. The response body reads on from this
    /// connection; once it ends, [`Body::take_conn`] gives the connection back when it
    /// can serve another request.
    pub(super) async fn send(mut self, asked: Asked) -> Result<Response<Body<IO>>, H1Error> {
        let Asked {
            head_method,
            close: asked_close,
            body,
        } = asked;
        // Only a request none of which was taken may go again: an upstream may act on a
        // head whose body never came (an early answer), as hyper's client assumes.
        let (mut head, mut rest) = (&self.out[..], &body[..]);
        let mut took = false;
        let failed = |took: bool, e| {
            if took {
                H1Error::Write(e)
            } else {
                H1Error::Unsent(e)
            }
        };
        while !head.is_empty() || !rest.is_empty() {
            let n = self
                .io
                .write_vectored(&[IoSlice::new(head), IoSlice::new(rest)])
                .await
                .map_err(|e| failed(took, e))?;
            if n == 0 {
                return Err(failed(took, io::ErrorKind::WriteZero.into()));
            }
            took = true;
            let from_head = n.min(head.len());
            head = &head[from_head..];
            rest = &rest[n - from_head..];
        }
        self.io.flush().await.map_err(H1Error::Write)?;
        loop {
            if !self.buf.is_empty()
                && let Some(head) = self.parse_head()?
            {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    // 100 Continue and its kin: the answer is still to come.
                    continue;
                }
                let framing = framing(&head, head_method)?;
                // A 101's connection is no longer HTTP: it is not reused, as in hyper.
                let reusable = head.keep_alive
                    && !asked_close
                    && head.status != StatusCode::SWITCHING_PROTOCOLS
                    && !matches!(framing, Framing::Close);
                let mut resp = Response::new(Body {
                    conn: Some(self),
                    framing,
                    chunks: Chunks::default(),
                    reusable,
                    failed: None,
                });
                *resp.status_mut() = head.status;
                *resp.version_mut() = head.version;
                *resp.headers_mut() = head.headers;
                if let Some(reason) = head.reason {
                    resp.extensions_mut().insert(reason);
                }
                return Ok(resp);
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(H1Error::Invalid(format!(
                    "response head larger than {MAX_HEAD} bytes"
                )));
            }
            if self.fill().await? == 0 {
                return Err(H1Error::ClosedInHead);
            }
        }
    }

    async fn fill(&mut self) -> Result<usize, H1Error> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, H1Error>> {
        if self.buf.capacity() - self.buf.len() < READ_ROOM / 8 {
            self.buf.reserve(READ_ROOM);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
            .map_err(H1Error::Read)
    }

    /// A complete response head off the front of the buffer, or `None` while it is
    /// partial.
    fn parse_head(&mut self) -> Result<Option<Head>, H1Error> {
        let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let invalid = |e: httparse::Error| H1Error::Invalid(e.to_string());
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, &self.buf, &mut lines)
            .map_err(invalid)?
        {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => return Ok(None),
        };
        let status = StatusCode::from_u16(res.code.unwrap_or(0))
            .map_err(|e| H1Error::Invalid(e.to_string()))?;
        let reason = res.reason.unwrap_or("");
        let reason = (Some(reason) != status.canonical_reason())
            .then(|| hyper::ext::ReasonPhrase::try_from(reason.as_bytes()).ok())
            .flatten();
        let version = if res.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        // The values are slices of the head once it is split off, so that no value is
        // copied: first where each one is, then the slices.
        let base = self.buf.as_ptr() as usize;
        self.fields.clear();
        for h in res.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|e| H1Error::Invalid(format!("header name {:?}: {e}", h.name)))?;
            let at = h.value.as_ptr() as usize - base;
            self.fields.push((name, at, at + h.value.len()));
        }
        let bytes = self.buf.split_to(len).freeze();
        // One more than it holds: the `x-request-id` weir adds to every response.
        let mut headers = HeaderMap::with_capacity(self.fields.len() + 1);
        let mut keep_alive = version == Version::HTTP_11;
        let mut saw_close = false;
        let mut lengths = Lengths::default();
        for (name, from, to) in self.fields.drain(..) {
            let value = HeaderValue::from_maybe_shared(bytes.slice(from..to))
                .map_err(|e| H1Error::Invalid(format!("header {name}: {e}")))?;
            if name == http::header::CONNECTION {
                // Once any `Connection` line asks to close, a later `keep-alive` does not
                // undo it; HTTP/1.0 keeps alive only when asked to.
                if saw_close || has_token(&value, "close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_token(&value, "keep-alive");
                }
            } else {
                lengths.see(&name, &value);
            }
            headers.append(name, value);
        }
        Ok(Some(Head {
            status,
            version,
            headers,
            reason,
            keep_alive,
            lengths,
        }))
    }
}

/// What a response's framing and reuse depend on in its request, and the request's body.
pub(super) struct Asked {
    head_method: bool,
    close: bool,
    body: Bytes,
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    reason: Option<hyper::ext::ReasonPhrase>,
    keep_alive: bool,
    lengths: Lengths,
}

/// What a response head's `Transfer-Encoding` and `Content-Length` lines said, gathered
/// as the head is read: no lookup in its header map afterwards.
#[derive(Default)]
struct Lengths {
    /// Whether the last `Transfer-Encoding` line's last coding is `chunked`; `None`
    /// when there is no such line. A line with other than visible ASCII is not chunked,
    /// as in hyper (the body then runs to the connection's end).
    chunked: Option<bool>,
    /// The `Content-Length`, while every value agrees.
    length: Option<u64>,
    /// Why the `Content-Length` lines are invalid, when they are.
    invalid: Option<String>,
}

impl Lengths {
    fn see(&mut self, name: &HeaderName, value: &HeaderValue) {
        if name == http::header::TRANSFER_ENCODING {
            let last = value.to_str().ok().and_then(|v| v.rsplit(',').next());
            self.chunked = Some(last.is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked")));
        } else if name == http::header::CONTENT_LENGTH && self.invalid.is_none() {
            for part in value.as_bytes().split(|&b| b == b',') {
                match content_length(part.trim_ascii()) {
                    None => self.invalid = Some(format!("invalid Content-Length {value:?}")),
                    Some(n) if self.length.is_some_and(|l| l != n) => {
                        self.invalid = Some("differing Content-Length values".into());
                    }
                    n => self.length = n,
                }
                if self.invalid.is_some() {
                    return;
                }
            }
        }
    }
}

/// Writes `req`'s head for a body of `body_len` bytes: the method, the path and query,
/// `HTTP/1.1`, and the headers but `Transfer-Encoding` (the body is framed by its
/// length). With a body, its `Content-Length` comes last, from the body itself, in place
/// of any the request had. Says whether its `Connection` header asks to close after
/// this exchange.
fn encode<B>(req: &Request<B>, body_len: usize, out: &mut Vec<u8>) -> bool {
    let mut close = false;
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        if name == http::header::TRANSFER_ENCODING
            || (body_len > 0 && name == http::header::CONTENT_LENGTH)
        {
            continue;
        }
        if name == http::header::CONNECTION {
            close |= has_token(value, "close");
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if body_len > 0 {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    close
}

/// Whether a comma-separated header value lists `token`, in any case.
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked: [`Body::chunks`] reads it.
    Chunked,
    /// At the connection's end.
    Close,
    /// It has ended.
    Done,
}

/// A chunked body's decoder. Byte by byte, it takes what hyper's client takes (its
/// `ChunkedState`), so that any bytes an upstream sends give a client of weir the same
/// body, trailers or error as they did when hyper's client read them: the `h1_response`
/// fuzz target holds the two to that. Each byte is used once, so a line of any length
/// costs no more memory than its limit.
#[derive(Debug, Default)]
struct Chunks {
    step: Step,
    /// The chunk size read so far, then the chunk's bytes left.
    size: u64,
    /// The bytes of chunk extensions so far, in the whole body.
    extensions: usize,
    /// The trailer section so far (from its first field), once one has begun.
    trailers: Option<BytesMut>,
    /// Its complete lines.
    lines: usize,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Step {
    /// At the start of a chunk-size line: a hex digit must come.
    #[default]
    Start,
    /// In the size's digits.
    Size,
    /// In white space after the size.
    SizeSpace,
    /// In a chunk extension, up to the line's CR.
    Extension,
    /// After the size line's CR.
    SizeLf,
    /// In a chunk's data.
    Data,
    /// After a chunk's data.
    DataCr,
    DataLf,
    /// After the last chunk, at the start of a line: a trailer field or the end.
    EndCr,
    /// After the CR of the empty line that ends the body.
    EndLf,
    /// In a trailer field's line.
    Trailer,
    /// After a trailer line's CR.
    TrailerLf,
}

/// What a chunked body's decoder made of the bytes it had.
enum Decoded {
    Data(Bytes),
    /// The body has ended with this trailer section.
    Trailers(HeaderMap),
    /// The body has ended, without trailers.
    End,
    /// More bytes are needed.
    More,
}

impl Chunks {
    /// Decodes from the front of `buf`, taking what it uses.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
        let invalid = |why: &str| Err(H1Error::Invalid(why.into()));
        loop {
            if self.step == Step::Data {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let take = usize::try_from(self.size).map_or(buf.len(), |n| n.min(buf.len()));
                self.size -= take as u64;
                if self.size == 0 {
                    self.step = Step::DataCr;
                }
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            let Some(&byte) = buf.first() else {
                return Ok(Decoded::More);
            };
            buf.advance(1);
            self.step = match (self.step, byte) {
                // A chunk's size is 0 at its line's start: its data counted it down.
                (Step::Start | Step::Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    let digit = char::from(byte).to_digit(16).map_or(0, u64::from);
                    match self.size.checked_mul(16).and_then(|n| n.checked_add(digit)) {
                        Some(size) => self.size = size,
                        None => return invalid("chunk size overflows 64 bits"),
                    }
                    Step::Size
                }
                (Step::Start, _) => return invalid("chunk-size line without a size"),
                (Step::Size | Step::SizeSpace, b'\t' | b' ') => Step::SizeSpace,
                (Step::Size | Step::SizeSpace, b';') => Step::Extension,
                (Step::Size | Step::SizeSpace, b'\r') => Step::SizeLf,
                (Step::Size | Step::SizeSpace, _) => return invalid("invalid chunk size"),
                (Step::Extension, b'\r') => Step::SizeLf,
                (Step::Extension, b'\n') => return invalid("bare LF in a chunk-size line"),
                (Step::Extension, _) => {
                    self.extensions += 1;
                    if self.extensions >= MAX_SECTION {
                        return invalid("chunk extensions of 16384 bytes or more");
                    }
                    Step::Extension
                }
                (Step::SizeLf, b'\n') if self.size == 0 => Step::EndCr,
                (Step::SizeLf, b'\n') => Step::Data,
                (Step::SizeLf, _) => return invalid("chunk-size line not ended by CRLF"),
                (Step::DataCr, b'\r') => Step::DataLf,
                (Step::DataLf, b'\n') => Step::Start,
                (Step::DataCr | Step::DataLf, _) => {
                    return invalid("chunk data not followed by CRLF");
                }
                (Step::EndCr, b'\r') => {
                    self.keep(byte)?;
                    Step::EndLf
                }
                (Step::EndCr, _) => {
                    self.trailers
                        .get_or_insert_with(|| BytesMut::with_capacity(64));
                    self.keep(byte)?;
                    Step::Trailer
                }
                (Step::EndLf, b'\n') => {
                    self.keep(byte)?;
                    return match self.trailers.take() {
                        Some(section) => trailers(&section, self.lines).map(Decoded::Trailers),
                        None => Ok(Decoded::End),
                    };
                }
                (Step::EndLf, _) => return invalid("chunked body not ended by CRLF"),
                (Step::Trailer, _) => {
                    self.keep(byte)?;
                    if byte == b'\r' {
                        Step::TrailerLf
                    } else {
                        Step::Trailer
                    }
                }
                (Step::TrailerLf, b'\n') => {
                    if self.lines >= MAX_HEADERS {
                        return invalid("more than 100 trailer fields");
                    }
                    self.lines += 1;
                    self.keep(byte)?;
                    Step::EndCr
                }
                (Step::TrailerLf, _) => return invalid("trailer line not ended by CRLF"),
                (Step::Data, _) => unreachable!("data is taken above"),
            };
        }
    }

    /// Adds a byte to the trailer section, once one has begun.
    fn keep(&mut self, byte: u8) -> Result<(), H1Error> {
        let Some(section) = &mut self.trailers else {
            return Ok(());
        };
        section.extend_from_slice(&[byte]);
        if section.len() >= MAX_SECTION {
            return Err(H1Error::Invalid(format!(
                "trailer section of {MAX_SECTION} bytes or more"
            )));
        }
        Ok(())
    }
}

/// A complete trailer section (its `lines` CRLF-ended fields and the empty line) as a
/// header map.
fn trailers(section: &[u8], lines: usize) -> Result<HeaderMap, H1Error> {
    let mut fields = vec![httparse::EMPTY_HEADER; lines];
    let fields = match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        Ok(httparse::Status::Partial) => {
            return Err(H1Error::Invalid("trailers: incomplete section".into()));
        }
        Err(e) => return Err(H1Error::Invalid(format!("trailers: {e}"))),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|e| H1Error::Invalid(format!("trailer name {:?}: {e}", f.name)))?;
        let value = HeaderValue::from_bytes(f.value)
            .map_err(|e| H1Error::Invalid(format!("trailer {name}: {e}")))?;
        map.append(name, value);
    }
    Ok(map)
}

/// The response's framing, by RFC 9112 section 6.3, as hyper's client decides it.
fn framing(head: &Head, head_method: bool) -> Result<Framing, H1Error> {
    let status = head.status.as_u16();
    if head_method || matches!(status, 101 | 204 | 304) {
        return Ok(Framing::Done);
    }
    let lengths = &head.lengths;
    if let Some(chunked) = lengths.chunked {
        if head.version == Version::HTTP_10 {
            return Err(H1Error::Invalid(
                "Transfer-Encoding in an HTTP/1.0 response".into(),
            ));
        }
        // `Transfer-Encoding` overrides `Content-Length`.
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    if let Some(invalid) = &lengths.invalid {
        return Err(H1Error::Invalid(invalid.clone()));
    }
    Ok(match lengths.length {
        // hyper keeps the two largest values for its own use, and refuses them.
        Some(n) if n > u64::MAX - 2 => {
            return Err(H1Error::Invalid(format!("Content-Length {n} is too large")));
        }
        Some(0) => Framing::Done,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// A response body read straight off its connection by whoever polls it.
pub(super) struct Body<IO> {
    conn: Option<Conn1<IO>>,
    framing: Framing,
    /// The decoder of a chunked body.
    chunks: Chunks,
    reusable: bool,
    /// An error found but not reported yet (see [`Body::fail_soon`]).
    failed: Option<H1Error>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Body<IO> {
    /// The connection, once the body has ended exactly at its framing's end on a
    /// connection both sides keep alive; `None` otherwise. An ended body's connection
    /// that cannot be reused is closed here, not when the body is dropped: its slot
    /// under `max_connections` is given up at this point.
    pub(super) fn take_conn(&mut self) -> Option<Conn1<IO>> {
        if self.framing != Framing::Done {
            return None;
        }
        let conn = self.conn.take()?;
        (self.reusable && conn.buf.is_empty()).then_some(conn)
    }

    fn conn(&mut self) -> &mut Conn1<IO> {
        self.conn
            .as_mut()
            .expect("a body that has not ended has its connection")
    }

    /// The next frame, or `None` when more must be read first.
    fn next_frame(&mut self) -> Result<Option<Frame<Bytes>>, H1Error> {
        let framing = self.framing;
        // Not `self.conn()`: the chunked decoder borrows `self.chunks` beside the buffer.
        let conn = self
            .conn
            .as_mut()
            .expect("a body that has not ended has its connection");
        let buf = &mut conn.buf;
        match framing {
            Framing::Done => Ok(None),
            Framing::Length(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                let left = left - take as u64;
                self.framing = if left == 0 {
                    Framing::Done
                } else {
                    Framing::Length(left)
                };
                Ok(Some(Frame::data(buf.split_to(take).freeze())))
            }
            Framing::Close if buf.is_empty() => Ok(None),
            Framing::Close => Ok(Some(Frame::data(buf.split().freeze()))),
            Framing::Chunked => match self.chunks.decode(buf)? {
                Decoded::Data(data) => Ok(Some(Frame::data(data))),
                Decoded::Trailers(map) => {
                    self.framing = Framing::Done;
                    Ok(Some(Frame::trailers(map)))
                }
                Decoded::End => {
                    self.framing = Framing::Done;
                    Ok(None)
                }
                Decoded::More => Ok(None),
            },
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> HttpBody for Body<IO> {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = &mut *self;
        if let Some(e) = this.failed.take() {
            this.fail();
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            if this.framing == Framing::Done {
                return Poll::Ready(None);
            }
            match this.next_frame() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) if this.framing == Framing::Done => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => return this.fail_soon(e, cx),
            }
            match ready!(this.conn().poll_fill(cx)) {
                Ok(0) if this.framing == Framing::Close => {
                    this.framing = Framing::Done;
                    this.reusable = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail_soon(H1Error::ClosedInBody, cx),
                Ok(_) => {}
                Err(e) => return this.fail_soon(e, cx),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl<IO> Body<IO> {
    /// Reports `e` at the next poll, after waking the task: whoever streams this body
    /// first sends what it already has (the response head, the data before the
    /// error), so a client sees a cut body rather than no answer. (hyper's client gave
    /// the same order: its connection task found such an error after the reader had
    /// taken the data before it.)
    fn fail_soon(
        &mut self,
        e: H1Error,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.failed = Some(e);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// After an error the body is over, and its connection is closed.
    fn fail(&mut self) {
        self.framing = Framing::Done;
        self.reusable = false;
        self.conn = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, DuplexStream};

    /// A connection whose upstream is the other end of a pipe.
    fn pipe() -> (Conn1<DuplexStream>, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        (Conn1::new(ours), theirs)
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path)
            .header("host", "up.example")
            .header("x-one", "1")
            .body(())
            .unwrap()
    }

    /// What the upstream read: everything up to the end of the request head.
    async fn read_head(upstream: &mut DuplexStream) -> String {
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let mut byte = [0; 1];
            upstream.read_exact(&mut byte).await.unwrap();
            got.push(byte[0]);
        }
        String::from_utf8(got).unwrap()
    }

    /// Sends `req` with the upstream answering `answer`; the response, its whole body
    /// (data and trailers), and the connection if it can be reused.
    async fn exchange(
        req: Request<()>,
        answer: &'static [u8],
        then_close: bool,
    ) -> Result<(Response<()>, Bytes, Option<HeaderMap>, bool), H1Error> {
        let (conn, mut upstream) = pipe();
        let server = tokio::spawn(async move {
            let head = read_head(&mut upstream).await;
            upstream.write_all(answer).await.unwrap();
            if then_close {
                drop(upstream);
                None
            } else {
                Some((head, upstream))
            }
        });
        let mut conn = conn;
        let asked = conn.prepare(&req, Bytes::new());
        let resp = conn.send(asked).await?;
        let (parts, mut body) = resp.into_parts();
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        let reusable = body.take_conn().is_some();
        drop(server.await.unwrap());
        Ok((
            Response::from_parts(parts, ()),
            data.into(),
            trailers,
            reusable,
        ))
    }

    #[tokio::test]
    async fn the_head_is_written_as_hyper_writes_it() {
        let (conn, mut upstream) = pipe();
        let mut req = get("/a/b?c=d");
        req.headers_mut()
            .insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let mut conn = conn;
        let asked = conn.prepare(&req, Bytes::new());
        let sent = tokio::spawn(async move { conn.send(asked).await.map(|_| ()) });
        assert_eq!(
            read_head(&mut upstream).await,
            "GET /a/b?c=d HTTP/1.1\r\nhost: up.example\r\nx-one: 1\r\n\r\n"
        );
        upstream
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        sent.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_sized_body_is_read_and_the_connection_reused() {
        let (resp, body, trailers, reusable) = exchange(
            get("/"),
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\nx-a: 2\r\n\r\nhello",
            false,
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), Version::HTTP_11);
        let all: Vec<_> = resp.headers().get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
        assert_eq!(body, "hello");
        assert!(trailers.is_none());
        assert!(reusable);
    }

    #[tokio::test]
    async fn a_chunked_body_is_decoded_with_its_trailers() {
        let (_, body, trailers, reusable) = exchange(
            get("/"),
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 9\r\n\r\n",
            false,
        )
        .await
        .unwrap();
        assert_eq!(body, "hello world");
        assert_eq!(trailers.unwrap()["x-sum"], "9");
        assert!(reusable);
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_end_and_closes() {
        let (_, body, _, reusable) = exchange(
            get("/"),
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nraw bytes",
            true,
        )
        .await
        .unwrap();
        assert_eq!(body, "raw bytes");
        assert!(!reusable);
        let (_, body, _, reusable) = exchange(get("/"), b"HTTP/1.1 200 OK\r\n\r\nto the end", true)
            .await
            .unwrap();
        assert_eq!(body, "to the end");
        assert!(!reusable);
    }

    #[tokio::test]
    async fn head_204_and_304_have_no_body_whatever_they_say() {
        let mut head = get("/");
        *head.method_mut() = Method::HEAD;
        let (_, body, _, reusable) = exchange(
            head,
            b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n",
            false,
        )
        .await
        .unwrap();
        assert_eq!((body.len(), reusable), (0, true));
        for answer in [
            &b"HTTP/1.1 204 No Content\r\ncontent-length: 3\r\n\r\n"[..],
            b"HTTP/1.1 304 Not Modified\r\n\r\n",
        ] {
            let answer: &'static [u8] = answer;
            let (_, body, _, reusable) = exchange(get("/"), answer, false).await.unwrap();
            assert_eq!((body.len(), reusable), (0, true));
        }
    }

    #[tokio::test]
    async fn an_informational_answer_is_skipped() {
        let (resp, body, _, _) = exchange(
            get("/"),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
              HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            false,
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 201);
        assert!(resp.headers().get("link").is_none());
        assert_eq!(body, "ok");
    }

    #[tokio::test]
    async fn a_connection_is_not_reused_when_either_side_says_close() {
        let close =
            &b"HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n"[..];
        let (_, _, _, reusable) = exchange(get("/"), close, false).await.unwrap();
        assert!(!reusable);
        let old = &b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"[..];
        assert!(!exchange(get("/"), old, false).await.unwrap().3);
        let old_kept =
            &b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"[..];
        assert!(exchange(get("/"), old_kept, false).await.unwrap().3);
        let mut asked = get("/");
        asked
            .headers_mut()
            .insert("connection", HeaderValue::from_static("close"));
        let fine = &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..];
        assert!(!exchange(asked, fine, false).await.unwrap().3);
    }

    #[tokio::test]
    async fn a_connection_that_cannot_be_reused_is_closed_when_its_body_ends() {
        let (mut conn, mut upstream) = pipe();
        let asked = conn.prepare(&get("/"), Bytes::new());
        let server = tokio::spawn(async move {
            read_head(&mut upstream).await;
            upstream
                .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            // Ends only when weir closes its side.
            let mut rest = Vec::new();
            upstream.read_to_end(&mut rest).await.unwrap();
            rest
        });
        let mut body = conn.send(asked).await.unwrap().into_body();
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(data, "ok");
        assert!(body.is_end_stream());
        assert!(body.take_conn().is_none());
        // The body is still alive, but its connection is closed.
        assert_eq!(server.await.unwrap(), b"");
        drop(body);
    }

    #[tokio::test]
    async fn bytes_past_the_body_make_the_connection_unusable() {
        let (_, body, _, reusable) = exchange(
            get("/"),
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA",
            false,
        )
        .await
        .unwrap();
        assert_eq!(body, "ok");
        assert!(!reusable);
    }

    #[tokio::test]
    async fn broken_answers_name_what_is_wrong() {
        let long_line: &'static [u8] = Box::leak(
            [
                &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;"[..],
                &[b'x'; MAX_SECTION],
            ]
            .concat()
            .into_boxed_slice(),
        );
        let cases: [(&'static [u8], &str); 9] = [
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                "differing Content-Length",
            ),
            (
                b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                "HTTP/1.0",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5x\r\n",
                "invalid chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXY",
                "CRLF",
            ),
            (b"NOT HTTP\r\n\r\n", "invalid response"),
            // httparse alone would take these for the last chunk, and the rest of the
            // body for the next response.
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n\r\n\r\n",
                "without a size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n",
                "bare LF",
            ),
            (long_line, "16384 bytes or more"),
        ];
        for (answer, says) in cases {
            let err = exchange(get("/"), answer, false)
                .await
                .expect_err("a broken answer");
            assert!(err.is_protocol(), "{err}");
            assert!(
                err.to_string().contains(says),
                "{err} does not say {says:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_early_end_is_a_reset_in_the_head_or_the_body() {
        let err = exchange(get("/"), b"HTTP/1.1 200 OK\r\ncontent-le", true)
            .await
            .expect_err("cut in the head");
        assert!(matches!(err, H1Error::ClosedInHead), "{err}");
        let err = exchange(
            get("/"),
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nabc",
            true,
        )
        .await
        .expect_err("cut in the body");
        assert!(matches!(err, H1Error::ClosedInBody), "{err}");
        assert!(!err.is_protocol());
    }

    #[tokio::test]
    async fn an_error_after_data_comes_one_wake_later() {
        let (mut conn, mut upstream) = pipe();
        let asked = conn.prepare(&get("/"), Bytes::new());
        upstream
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n5x\r\n")
            .await
            .unwrap();
        let mut body = conn.send(asked).await.unwrap().into_body();
        let woken = Arc::new(Woken::default());
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut poll = || Pin::new(&mut body).poll_frame(&mut cx);
        assert!(
            matches!(poll(), Poll::Ready(Some(Ok(f))) if f.data_ref().is_some_and(|d| d == "hello"))
        );
        // The data's reader gets to pass it on before it hears of the error.
        assert!(poll().is_pending());
        assert!(woken.0.load(std::sync::atomic::Ordering::SeqCst));
        assert!(matches!(
            poll(),
            Poll::Ready(Some(Err(H1Error::Invalid(_))))
        ));
        assert!(matches!(poll(), Poll::Ready(None)));
        assert!(body.take_conn().is_none());
    }

    #[derive(Default)]
    struct Woken(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn transfer_encoding_overrides_content_length() {
        let (_, body, _, _) = exchange(
            get("/"),
            b"HTTP/1.1 200 OK\r\ncontent-length: nonsense\r\ntransfer-encoding: chunked\r\n\r\n\
              2\r\nok\r\n0\r\n\r\n",
            false,
        )
        .await
        .unwrap();
        assert_eq!(body, "ok");
    }

    #[tokio::test]
    async fn an_idle_connection_looks_open_until_its_upstream_closes_it() {
        let (mut conn, upstream) = pipe();
        assert!(conn.looks_open());
        drop(upstream);
        tokio::task::yield_now().await;
        assert!(!conn.looks_open());
        let (mut conn, mut upstream) = pipe();
        upstream.write_all(b"stray").await.unwrap();
        assert!(!conn.looks_open(), "bytes nobody asked for");
    }

    #[test]
    fn content_length_takes_digits_only() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(content_length(b"18446744073709551616"), None);
        assert_eq!(content_length(b"+1"), None);
        assert_eq!(content_length(b""), None);
    }

    #[test]
    fn only_plain_http11_heads_take_the_own_path() {
        assert!(fits(&get("/")));
        let mut h2 = get("/");
        *h2.version_mut() = Version::HTTP_2;
        assert!(fits(&h2));
        let old = Request::get("/")
            .version(Version::HTTP_10)
            .body(())
            .unwrap();
        assert!(!fits(&old));
        assert!(!fits(&Request::connect("up.example:443").body(()).unwrap()));
    }

    /// A body of `frames`, with or without its exact length, as a client's streamed
    /// body would come: each frame ready at once, or a wait where one is `None`.
    fn frames(frames: Vec<Option<Frame<Bytes>>>, exact: Option<u64>) -> ProxyBody {
        struct Frames(VecDeque<Option<Frame<Bytes>>>, Option<u64>);
        impl HttpBody for Frames {
            type Data = Bytes;
            type Error = BoxError;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
                match self.0.pop_front() {
                    None => Poll::Ready(None),
                    Some(Some(frame)) => Poll::Ready(Some(Ok(frame))),
                    Some(None) => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                }
            }
            fn size_hint(&self) -> SizeHint {
                self.1.map_or_else(SizeHint::new, SizeHint::with_exact)
            }
        }
        crate::body::boxed(Frames(frames.into(), exact))
    }

    fn data(s: &'static str) -> Option<Frame<Bytes>> {
        Some(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    #[tokio::test]
    async fn a_small_body_all_in_hand_is_taken_and_any_other_left_whole() {
        let mut empty = crate::body::empty();
        assert_eq!(take_body(&mut empty), Some(Bytes::new()));
        let mut full = crate::body::full(Bytes::from_static(b"hello"));
        assert_eq!(take_body(&mut full), Some(Bytes::from_static(b"hello")));
        let mut pieces = frames(vec![data("he"), data("llo")], Some(5));
        assert_eq!(take_body(&mut pieces), Some(Bytes::from_static(b"hello")));

        let big = Bytes::from(vec![b'x'; MAX_BODY as usize + 1]);
        let trailers = Some(Frame::trailers(HeaderMap::new()));
        for (mut body, whole) in [
            // Too large for one write; no length known; a part still to come; more
            // than its length; trailers; less than its length.
            (crate::body::full(big.clone()), big.clone()),
            (frames(vec![data("he"), data("llo")], None), "hello".into()),
            (
                frames(vec![data("he"), None, data("llo")], Some(5)),
                "hello".into(),
            ),
            (
                frames(vec![data("hello"), data("!")], Some(5)),
                "hello!".into(),
            ),
            (
                frames(vec![data("hello"), trailers], Some(5)),
                "hello".into(),
            ),
            (frames(vec![data("hell")], Some(5)), "hell".into()),
        ] {
            assert_eq!(take_body(&mut body), None, "{whole:?}");
            let again = body.collect().await.unwrap().to_bytes();
            assert_eq!(again, whole, "every frame taken came back, in order");
        }
    }

    #[tokio::test]
    async fn a_body_goes_behind_its_head_with_its_own_length() {
        let (mut conn, mut upstream) = pipe();
        let req = Request::post("/p")
            .header("host", "up.example")
            .header("content-length", "99")
            .header("transfer-encoding", "chunked")
            .header("x-one", "1")
            .body(())
            .unwrap();
        let asked = conn.prepare(&req, Bytes::from_static(b"hello"));
        let sent = tokio::spawn(async move { conn.send(asked).await.map(|_| ()) });
        assert_eq!(
            read_head(&mut upstream).await,
            "POST /p HTTP/1.1\r\nhost: up.example\r\nx-one: 1\r\ncontent-length: 5\r\n\r\n"
        );
        let mut body = [0; 5];
        upstream.read_exact(&mut body).await.unwrap();
        assert_eq!(&body, b"hello");
        upstream
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        sent.await.unwrap().unwrap();
    }
}
