//! The request, the response and what a filter answers.
//!
//! In weir the request and the response stay in the host: a filter gets handles, and the
//! [`Request`], [`RequestInfo`] and [`Response`] here read through them only what the
//! filter asks for, once (a value read is kept for the rest of the call). Off wasm, and
//! in a filter's unit tests, the same types hold their data themselves: build them with
//! [`Request::new`], [`RequestInfo::new`] and [`Response::new`].

use std::cell::OnceCell;
use std::mem::ManuallyDrop;

use crate::bindings::weir::filter0_2_1::types as wit;
use crate::bindings::{lend_request, lend_response};
use crate::{Fields, UpstreamError};

/// Header lookup by case-insensitive name, and a walk over every field, on [`Fields`]
/// (`[(name, value)]`) and on a [`HeaderBlock`].
pub trait FieldsExt {
    /// The first value of header `name`, if present.
    fn header(&self, name: &str) -> Option<&[u8]>;

    /// The first value of header `name`, if present and valid UTF-8.
    fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of header `name`, in order.
    fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a;

    /// Every field, `(name, value)`, in order.
    fn fields(&self) -> impl Iterator<Item = (&str, &[u8])>;
}

impl FieldsExt for [(String, Vec<u8>)] {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }
}

/// [`Fields`] as it is, so that code generic over [`FieldsExt`] takes `&Fields` too.
impl FieldsExt for Vec<(String, Vec<u8>)> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.as_slice().header(name)
    }

    fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.as_slice().header_all(name)
    }

    fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.as_slice().fields()
    }
}

// === impl HeaderBlock ===

/// A message's headers as weir hands them over in one buffer (its `header-block`), each
/// field read where it lies.
///
/// Reading every header this way costs two allocations, where
/// [`Request::headers`] makes two for each field: a filter that walks the headers or
/// looks up many of them (a cache, a sanitizer) should read them here, through
/// [`FieldsExt`] (`header`, `header_str`, `header_all`, `fields`). Names are lowercase,
/// as weir sends them; lookups ignore case.
#[derive(Clone, Default)]
pub struct HeaderBlock {
    /// `name: value` and CRLF for each field.
    block: Vec<u8>,
    fields: Vec<Span>,
}

/// Where one field lies in the block: its name is `start..colon`, its value
/// `colon + 2..end`.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    colon: u32,
    end: u32,
}

impl HeaderBlock {
    /// Indexes a `header-block`. weir writes the block, so a line it could not have
    /// written (no `: `, no CR before its LF, a name that is not ASCII) is skipped rather
    /// than guessed at.
    pub(crate) fn parse(block: Vec<u8>) -> HeaderBlock {
        // A field is rarely shorter than 16 bytes: one allocation for the index.
        let mut fields = Vec::with_capacity(block.len() / 16 + 1);
        let mut start = 0;
        while start < block.len() {
            let line = &block[start..];
            // Each byte is looked at once, a word at a time: the name up to its `:`, then
            // the value up to the LF.
            let stop = memchr::memchr2(b':', b'\n', line);
            let colon = stop.filter(|&i| line[i] == b':');
            let lf = match (colon, stop) {
                (Some(c), _) => memchr::memchr(b'\n', &line[c..]).map_or(line.len(), |k| c + k),
                (None, Some(lf)) => lf,
                (None, None) => line.len(),
            };
            if let Some(colon) = colon
                && let Some(span) = Self::span(&line[..lf], colon, start)
            {
                fields.push(span);
            }
            start += lf + 1;
        }
        HeaderBlock { block, fields }
    }

    /// The field on `line` (its LF cut off), which starts at `start` in the block and
    /// has its first `:` at `colon`, if it is one weir writes: a name of ASCII, `: `, a
    /// value, CR.
    fn span(line: &[u8], colon: usize, start: usize) -> Option<Span> {
        let line = line.strip_suffix(b"\r")?;
        if colon == 0 || colon >= line.len() || !line[..colon].is_ascii() {
            return None;
        }
        line[colon..].strip_prefix(b": ")?;
        // A block is far below 4 GiB: weir caps a message's headers.
        let at = |i: usize| u32::try_from(start + i).ok();
        Some(Span {
            start: at(0)?,
            colon: at(colon)?,
            end: at(line.len())?,
        })
    }

    /// The same fields as a block, for a message a test built: indexed as they are
    /// written, so that every field comes back as it went in, even one weir would refuse.
    fn from_fields(fields: &[(String, Vec<u8>)]) -> HeaderBlock {
        let len = fields.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
        let mut block = Vec::with_capacity(len);
        let mut spans = Vec::with_capacity(fields.len());
        // Offsets past 4 GiB saturate; no test builds such a message.
        let at = |b: &Vec<u8>| u32::try_from(b.len()).unwrap_or(u32::MAX);
        for (name, value) in fields {
            let start = at(&block);
            block.extend_from_slice(name.as_bytes());
            let colon = at(&block);
            block.extend_from_slice(b": ");
            block.extend_from_slice(value);
            spans.push(Span {
                start,
                colon,
                end: at(&block),
            });
            block.extend_from_slice(b"\r\n");
        }
        HeaderBlock {
            block,
            fields: spans,
        }
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Every field as an owned `(name, value)`: what [`Request::headers`] holds.
    pub fn to_fields(&self) -> Fields {
        self.fields()
            .map(|(n, v)| (n.to_owned(), v.to_vec()))
            .collect()
    }

    fn name(&self, s: &Span) -> &[u8] {
        &self.block[s.start as usize..s.colon as usize]
    }

    fn value(&self, s: &Span) -> &[u8] {
        &self.block[s.colon as usize + 2..s.end as usize]
    }

    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Span> + 'a {
        // Lengths first: most names are told apart without reading them.
        self.fields.iter().filter(move |s| {
            (s.colon - s.start) as usize == name.len()
                && self.name(s).eq_ignore_ascii_case(name.as_bytes())
        })
    }
}

impl FieldsExt for HeaderBlock {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.named(name).next().map(|s| self.value(s))
    }

    fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.named(name).map(|s| self.value(s))
    }

    fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        // `parse` kept only names of ASCII.
        self.fields.iter().map(|s| {
            let name = std::str::from_utf8(self.name(s)).unwrap_or_default();
            (name, self.value(s))
        })
    }
}

/// Equal when the fields are: lines a block skipped do not count.
impl PartialEq for HeaderBlock {
    fn eq(&self, other: &HeaderBlock) -> bool {
        self.len() == other.len() && self.fields().eq(other.fields())
    }
}

impl Eq for HeaderBlock {}

impl std::fmt::Debug for HeaderBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.fields().map(|(n, v)| (n, String::from_utf8_lossy(v))))
            .finish()
    }
}

/// Header names cross the boundary in lowercase (see `fields` in the WIT); edits and
/// responses built here keep that promise whatever case the caller used.
fn header_name(name: impl Into<String>) -> String {
    let mut name = name.into();
    name.make_ascii_lowercase();
    name
}

fn utf8(v: Vec<u8>) -> Option<String> {
    String::from_utf8(v).ok()
}

// === impl RequestInfo ===

/// Facts about the current request that are not part of the HTTP message.
pub struct RequestInfo {
    src: InfoSrc,
    id: OnceCell<String>,
    route: OnceCell<String>,
    client_addr: OnceCell<String>,
    /// Each read from weir is a call into the host: the numbers are kept too.
    attempt: OnceCell<u32>,
    remaining_ms: OnceCell<u64>,
}

enum InfoSrc {
    /// The request handle weir lent to this call (never dropped here: weir owns it).
    Host(ManuallyDrop<wit::Request>),
    Local,
}

impl RequestInfo {
    /// Facts for a test: request `id`, route `"test"`, attempt 1, 30 s left, client
    /// `127.0.0.1:40000`. Change them with the `with_*` methods.
    pub fn new(id: impl Into<String>) -> RequestInfo {
        RequestInfo {
            src: InfoSrc::Local,
            id: OnceCell::from(id.into()),
            route: OnceCell::from("test".to_owned()),
            client_addr: OnceCell::from("127.0.0.1:40000".to_owned()),
            attempt: OnceCell::from(1),
            remaining_ms: OnceCell::from(30_000),
        }
    }

    /// The same facts with another route name.
    pub fn with_route(mut self, route: impl Into<String>) -> RequestInfo {
        self.route = OnceCell::from(route.into());
        self
    }

    /// The same facts with another attempt number.
    pub fn with_attempt(mut self, attempt: u32) -> RequestInfo {
        self.attempt = OnceCell::from(attempt);
        self
    }

    /// The same facts with another time left.
    pub fn with_remaining_ms(mut self, remaining_ms: u64) -> RequestInfo {
        self.remaining_ms = OnceCell::from(remaining_ms);
        self
    }

    /// The same facts with another client address.
    pub fn with_client_addr(mut self, addr: impl Into<String>) -> RequestInfo {
        self.client_addr = OnceCell::from(addr.into());
        self
    }

    pub(crate) fn lent(handle: &wit::Request) -> RequestInfo {
        RequestInfo {
            src: InfoSrc::Host(lend_request(handle)),
            id: OnceCell::new(),
            route: OnceCell::new(),
            client_addr: OnceCell::new(),
            attempt: OnceCell::new(),
            remaining_ms: OnceCell::new(),
        }
    }

    fn host(&self) -> &wit::Request {
        match &self.src {
            InfoSrc::Host(h) => h,
            InfoSrc::Local => unreachable!("a local RequestInfo has every part set"),
        }
    }

    /// Unique per client request, made by weir (32 hex digits): key per-request state on
    /// it (with [`attempt`](RequestInfo::attempt) for one try). The same for every
    /// attempt. Not the client's `x-request-id` ([`Request::request_id`]).
    pub fn id(&self) -> &str {
        self.id.get_or_init(|| self.host().id())
    }

    /// The name of the route that matched.
    pub fn route(&self) -> &str {
        self.route.get_or_init(|| self.host().route())
    }

    /// 1 for the first try, 2 for the first retry, …
    pub fn attempt(&self) -> u32 {
        *self.attempt.get_or_init(|| self.host().attempt())
    }

    /// Milliseconds left before the route's deadline, from the start of this call.
    pub fn remaining_ms(&self) -> u64 {
        *self.remaining_ms.get_or_init(|| self.host().remaining_ms())
    }

    /// The client's address, e.g. `"127.0.0.1:51234"`.
    pub fn client_addr(&self) -> &str {
        self.client_addr.get_or_init(|| self.host().client_addr())
    }
}

impl std::fmt::Debug for RequestInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestInfo")
            .field("id", &self.id())
            .field("attempt", &self.attempt())
            .finish_non_exhaustive()
    }
}

// === impl Request ===

/// The request as it reaches this filter, earlier filters' changes applied.
///
/// In weir it is read through a handle, a part at a time, as the filter asks for it.
/// Change it by answering [`RequestAction::Continue`] with a [`RequestEdit`].
pub struct Request {
    src: ReqSrc,
    method: OnceCell<String>,
    upstream: OnceCell<String>,
    path_with_query: OnceCell<String>,
    headers: OnceCell<Fields>,
    block: OnceCell<HeaderBlock>,
    body: OnceCell<Option<Vec<u8>>>,
}

enum ReqSrc {
    Host(ManuallyDrop<wit::Request>),
    Local,
}

impl Request {
    /// A request for a test: `method` and `path_with_query` to upstream
    /// `https://upstream.test`, no headers, no body.
    pub fn new(method: impl Into<String>, path_with_query: impl Into<String>) -> Request {
        Request {
            src: ReqSrc::Local,
            method: OnceCell::from(method.into()),
            upstream: OnceCell::from("https://upstream.test".to_owned()),
            path_with_query: OnceCell::from(path_with_query.into()),
            headers: OnceCell::from(Vec::new()),
            block: OnceCell::new(),
            body: OnceCell::from(None),
        }
    }

    /// Adds a header (the name is lowercased). Adding a name twice sends it twice.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Request {
        let headers = self
            .headers
            .get_mut()
            .expect("a local request has its headers");
        headers.push((header_name(name), value.into()));
        self.block = OnceCell::new();
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = OnceCell::from(Some(body.into()));
        self
    }

    /// Sets the upstream origin.
    pub fn with_upstream(mut self, upstream: impl Into<String>) -> Request {
        self.upstream = OnceCell::from(upstream.into());
        self
    }

    pub(crate) fn lent(handle: &wit::Request) -> Request {
        Request {
            src: ReqSrc::Host(lend_request(handle)),
            method: OnceCell::new(),
            upstream: OnceCell::new(),
            path_with_query: OnceCell::new(),
            headers: OnceCell::new(),
            block: OnceCell::new(),
            body: OnceCell::new(),
        }
    }

    fn host(&self) -> &wit::Request {
        match &self.src {
            ReqSrc::Host(h) => h,
            ReqSrc::Local => unreachable!("a local Request has every part set"),
        }
    }

    /// The method, in upper case: `"GET"`, `"POST"`, …
    pub fn method(&self) -> &str {
        self.method.get_or_init(|| self.host().method())
    }

    /// The upstream origin chosen by the route, e.g. `"https://api.example.com"`.
    pub fn upstream(&self) -> &str {
        self.upstream.get_or_init(|| self.host().upstream())
    }

    /// The path and query that will be sent upstream (after `strip_prefix`).
    pub fn path_with_query(&self) -> &str {
        self.path_with_query
            .get_or_init(|| self.host().path_with_query())
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        let pq = self.path_with_query();
        pq.split_once('?').map_or(pq, |(p, _)| p)
    }

    /// The first value of header `name` (case-insensitive), if present. Asks weir for
    /// that one header, unless [`header_block`](Request::header_block) or
    /// [`headers`](Request::headers) already read them all.
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        if let Some(all) = self.block.get() {
            return all.header(name).map(<[u8]>::to_vec);
        }
        match self.headers.get() {
            Some(all) => all.header(name).map(<[u8]>::to_vec),
            None => self.host().header(name),
        }
    }

    /// The first value of header `name`, if present and valid UTF-8.
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).and_then(utf8)
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
        if let Some(all) = self.block.get() {
            return all.header_all(name).map(<[u8]>::to_vec).collect();
        }
        self.headers.get().map_or_else(
            || self.host().header_values(name),
            |all| all.header_all(name).map(<[u8]>::to_vec).collect(),
        )
    }

    /// The names of the headers, lowercase, each once, in the order they first appear.
    pub fn header_names(&self) -> Vec<String> {
        if let Some(all) = self.block.get() {
            return names(all);
        }
        self.headers
            .get()
            .map_or_else(|| self.host().header_names(), names)
    }

    /// All the headers, read from weir once, each name and value a copy of its own.
    /// Prefer [`header`](Request::header) for a few names, and
    /// [`header_block`](Request::header_block) to walk them or look up many.
    pub fn headers(&self) -> &Fields {
        self.headers.get_or_init(|| self.header_block().to_fields())
    }

    /// All the headers in one buffer, read from weir once, each field read in place:
    /// look them up and walk them with [`FieldsExt`].
    pub fn header_block(&self) -> &HeaderBlock {
        self.block.get_or_init(|| match &self.src {
            ReqSrc::Host(h) => HeaderBlock::parse(h.header_block()),
            ReqSrc::Local => HeaderBlock::from_fields(self.headers()),
        })
    }

    /// The body, if the filter asked for it ([`Info::wants_request_body`](crate::Info)).
    /// In `on_response`, the body as it went upstream.
    pub fn body(&self) -> Option<&[u8]> {
        self.body.get_or_init(|| self.host().body()).as_deref()
    }

    /// The body as a buffer of the filter's own, to send on (through
    /// [`outbound`](crate::outbound)) or keep: in weir, a copy made straight from the
    /// host, without the second copy `body().to_vec()` would make.
    pub fn body_vec(&self) -> Option<Vec<u8>> {
        match (self.body.get(), &self.src) {
            (Some(b), _) => b.clone(),
            (None, ReqSrc::Host(h)) => h.body(),
            (None, ReqSrc::Local) => None,
        }
    }

    /// The request's `x-request-id`: the id weir logs, returns to the client and sends
    /// upstream, so the one to show a person (an error body, a log line). weir always
    /// sets it before the first filter; `None` only where a test builds the request
    /// without it.
    ///
    /// It may be the client's own, so it is not unique: key per-request state on
    /// [`RequestInfo::id`] instead, which weir makes unique.
    pub fn request_id(&self) -> Option<String> {
        self.header_str("x-request-id")
    }
}

fn names(fields: &(impl FieldsExt + ?Sized)) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (n, _) in fields.fields() {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(n)) {
            out.push(n.to_ascii_lowercase());
        }
    }
    out
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("path_with_query", &self.path_with_query())
            .finish_non_exhaustive()
    }
}

// === impl Response ===

/// A response: one a filter makes ([`Response::new`], [`Response::json`], …) to answer
/// with, or what came back, in [`Outcome::Response`], read from weir as the filter asks.
pub struct Response {
    src: RespSrc,
    status: OnceCell<u16>,
    headers: OnceCell<Fields>,
    block: OnceCell<HeaderBlock>,
    body: OnceCell<Option<Vec<u8>>>,
}

enum RespSrc {
    Host(ManuallyDrop<wit::Response>),
    Local,
}

impl Response {
    /// A response with this status, no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Response {
            src: RespSrc::Local,
            status: OnceCell::from(status),
            headers: OnceCell::from(Vec::new()),
            block: OnceCell::new(),
            body: OnceCell::from(None),
        }
    }

    /// A response with a JSON body and `content-type: application/json`.
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Response::new(status)
            .with_header("content-type", "application/json")
            .with_body(body.to_string())
    }

    /// A response with a text body and `content-type: text/plain; charset=utf-8`.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into())
    }

    pub(crate) fn lent(handle: &wit::Response) -> Response {
        Response {
            src: RespSrc::Host(lend_response(handle)),
            status: OnceCell::new(),
            headers: OnceCell::new(),
            block: OnceCell::new(),
            body: OnceCell::new(),
        }
    }

    fn host(&self) -> &wit::Response {
        match &self.src {
            RespSrc::Host(h) => h,
            RespSrc::Local => unreachable!("a local Response has every part set"),
        }
    }

    /// This response as one the filter owns, every part read: to change and answer with.
    fn into_local(self) -> Response {
        let (status, headers, body) = self.into_parts();
        Response {
            src: RespSrc::Local,
            status: OnceCell::from(status),
            headers: OnceCell::from(headers),
            block: OnceCell::new(),
            body: OnceCell::from(body),
        }
    }

    /// The status, the headers and the body, read from weir if they came from there.
    pub fn into_parts(self) -> (u16, Fields, Option<Vec<u8>>) {
        let (status, _, _) = (self.status(), self.headers(), self.body());
        let Response {
            status: s,
            headers: h,
            body: b,
            ..
        } = self;
        (
            s.into_inner().unwrap_or(status),
            h.into_inner().unwrap_or_default(),
            b.into_inner().flatten(),
        )
    }

    /// Adds a header (the name is lowercased). Adding a name twice sends it twice.
    pub fn with_header(self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        let mut r = self.into_local();
        r.headers
            .get_mut()
            .expect("a local response has its headers")
            .push((header_name(name), value.into()));
        r
    }

    /// Sets the body. weir sets `content-length` to match.
    pub fn with_body(self, body: impl Into<Vec<u8>>) -> Self {
        let mut r = self.into_local();
        r.body = OnceCell::from(Some(body.into()));
        r
    }

    /// Sets the status.
    pub fn with_status(self, status: u16) -> Self {
        let mut r = self.into_local();
        r.status = OnceCell::from(status);
        r
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        *self.status.get_or_init(|| self.host().status())
    }

    /// The first value of header `name` (case-insensitive), if present. Asks weir for
    /// that one header, unless [`header_block`](Response::header_block) or
    /// [`headers`](Response::headers) already read them all.
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        if let Some(all) = self.block.get() {
            return all.header(name).map(<[u8]>::to_vec);
        }
        match self.headers.get() {
            Some(all) => all.header(name).map(<[u8]>::to_vec),
            None => self.host().header(name),
        }
    }

    /// The first value of header `name`, if present and valid UTF-8.
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).and_then(utf8)
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
        if let Some(all) = self.block.get() {
            return all.header_all(name).map(<[u8]>::to_vec).collect();
        }
        self.headers.get().map_or_else(
            || self.host().header_values(name),
            |all| all.header_all(name).map(<[u8]>::to_vec).collect(),
        )
    }

    /// The names of the headers, lowercase, each once, in the order they first appear.
    pub fn header_names(&self) -> Vec<String> {
        if let Some(all) = self.block.get() {
            return names(all);
        }
        self.headers
            .get()
            .map_or_else(|| self.host().header_names(), names)
    }

    /// All the headers, read from weir once, each name and value a copy of its own.
    /// Prefer [`header`](Response::header) for a few names, and
    /// [`header_block`](Response::header_block) to walk them or look up many.
    pub fn headers(&self) -> &Fields {
        self.headers.get_or_init(|| self.header_block().to_fields())
    }

    /// All the headers in one buffer, read from weir once, each field read in place:
    /// look them up and walk them with [`FieldsExt`].
    pub fn header_block(&self) -> &HeaderBlock {
        self.block.get_or_init(|| match &self.src {
            RespSrc::Host(h) => HeaderBlock::parse(h.header_block()),
            RespSrc::Local => HeaderBlock::from_fields(self.headers()),
        })
    }

    /// The body. From the upstream it is there only if the filter asked for it
    /// ([`Info::wants_response_body`](crate::Info)); in a response a filter makes, `None`
    /// means empty.
    pub fn body(&self) -> Option<&[u8]> {
        self.body.get_or_init(|| self.host().body()).as_deref()
    }
}

impl Clone for Response {
    /// A clone owns its parts: those of a response from weir are read first.
    fn clone(&self) -> Response {
        Response {
            src: RespSrc::Local,
            status: OnceCell::from(self.status()),
            headers: OnceCell::from(self.headers().clone()),
            block: OnceCell::new(),
            body: OnceCell::from(self.body().map(<[u8]>::to_vec)),
        }
    }
}

impl PartialEq for Response {
    fn eq(&self, other: &Response) -> bool {
        self.status() == other.status()
            && self.headers() == other.headers()
            && self.body() == other.body()
    }
}

impl Eq for Response {}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Response");
        d.field("status", &self.status());
        if let RespSrc::Local = self.src {
            d.field("headers", &self.headers())
                .field("body", &self.body().map(String::from_utf8_lossy));
        }
        d.finish_non_exhaustive()
    }
}

// === impl Outcome ===

/// What came back from the rest of the chain and the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP response, of any status.
    Response(Response),
    /// No response at all, and why.
    Error(UpstreamError),
}

impl Outcome {
    /// The response, if there is one.
    pub fn response(&self) -> Option<&Response> {
        match self {
            Outcome::Response(r) => Some(r),
            Outcome::Error(_) => None,
        }
    }

    /// The response status, if there is a response.
    pub fn status(&self) -> Option<u16> {
        self.response().map(Response::status)
    }

    /// The outcome behind `handle`, from the `facts` the SDK read for the call.
    pub(crate) fn lent(handle: &wit::Response, facts: &wit::ResponseFacts) -> Outcome {
        match facts.error {
            Some(e) => Outcome::Error(e),
            None => {
                let response = Response::lent(handle);
                let _ = response.status.set(facts.status);
                Outcome::Response(response)
            }
        }
    }
}

// === impl RequestEdit ===

/// Changes a filter makes to the request before it goes on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestEdit {
    /// Headers to set, replacing every existing value of the same name.
    pub set_headers: Fields,
    /// Header names to remove (case-insensitive).
    pub remove_headers: Vec<String>,
    /// A new path and query, if it changes.
    pub path_with_query: Option<String>,
    /// A new body, if it changes. weir fixes `content-length`.
    pub body: Option<Vec<u8>>,
    /// The most milliseconds this try may wait for the upstream's response head.
    pub try_timeout_ms: Option<u32>,
}

impl RequestEdit {
    /// An edit that changes nothing; add changes with the builder methods.
    pub fn new() -> Self {
        RequestEdit::default()
    }

    /// Sets header `name` (lowercased) to `value`, replacing every existing value.
    /// Setting a name twice in one edit sends both values.
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.set_headers.push((header_name(name), value.into()));
        self
    }

    /// Removes every value of header `name`.
    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        self.remove_headers.push(header_name(name));
        self
    }

    /// Replaces the path and query sent upstream, e.g. `"/v2/items?limit=10"`.
    pub fn path_with_query(mut self, path_with_query: impl Into<String>) -> Self {
        self.path_with_query = Some(path_with_query.into());
        self
    }

    /// Replaces the request body. weir fixes `content-length`.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Limits how long this try waits for the upstream's response head; past it the
    /// outcome is `UpstreamError::Timeout` (and a retrying filter may try again). The
    /// route deadline still applies; the smallest limit any filter sets wins.
    pub fn try_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.try_timeout_ms = Some(timeout.as_millis().min(u32::MAX as u128) as u32);
        self
    }

    /// Whether this edit changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == RequestEdit::default()
    }

    /// Makes the changes through weir's handle: the header changes (see
    /// [`apply_headers`]), then the path, the body and the timeout. A change weir refuses
    /// makes the filter's answer invalid.
    pub(crate) fn apply(self, req: &wit::Request) {
        apply_headers(req, &self.remove_headers, &self.set_headers);
        if let Some(pq) = &self.path_with_query {
            let _ = req.set_path_with_query(pq);
        }
        if let Some(body) = &self.body {
            req.set_body(body);
        }
        if let Some(ms) = self.try_timeout_ms {
            req.set_try_timeout_ms(ms);
        }
    }
}

// === impl ResponseEdit ===

/// Changes a filter makes to the response on its way back to the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseEdit {
    /// Headers to set, replacing every existing value of the same name.
    pub set_headers: Fields,
    /// Header names to remove (case-insensitive).
    pub remove_headers: Vec<String>,
}

impl ResponseEdit {
    /// An edit that changes nothing; add changes with the builder methods.
    pub fn new() -> Self {
        ResponseEdit::default()
    }

    /// Sets header `name` (lowercased) to `value`, replacing every existing value.
    /// Setting a name twice in one edit sends both values.
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.set_headers.push((header_name(name), value.into()));
        self
    }

    /// Removes every value of header `name`.
    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        self.remove_headers.push(header_name(name));
        self
    }

    /// Whether this edit changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set_headers.is_empty() && self.remove_headers.is_empty()
    }

    /// Makes the changes through weir's handle, as [`RequestEdit`] does.
    pub(crate) fn apply(self, resp: &wit::Response) {
        apply_headers(resp, &self.remove_headers, &self.set_headers);
    }
}

/// A handle whose headers an edit changes: the request's or the response's.
trait HeaderHandle {
    fn set_header(&self, name: &str, value: &[u8]) -> Result<(), String>;
    fn append_header(&self, name: &str, value: &[u8]) -> Result<(), String>;
    fn remove_header(&self, name: &str);
    fn change_headers(&self, remove: &[String], set: &[(String, Vec<u8>)]) -> Result<(), String>;
}

macro_rules! header_handle {
    ($handle:ty) => {
        impl HeaderHandle for $handle {
            fn set_header(&self, name: &str, value: &[u8]) -> Result<(), String> {
                <$handle>::set_header(self, name, value)
            }
            fn append_header(&self, name: &str, value: &[u8]) -> Result<(), String> {
                <$handle>::append_header(self, name, value)
            }
            fn remove_header(&self, name: &str) {
                <$handle>::remove_header(self, name)
            }
            fn change_headers(
                &self,
                remove: &[String],
                set: &[(String, Vec<u8>)],
            ) -> Result<(), String> {
                <$handle>::change_headers(self, remove, set)
            }
        }
    };
}

header_handle!(wit::Request);
header_handle!(wit::Response);

/// Header changes up to this many go to weir one call each; more go in one
/// `change-headers`. A list costs more to pass than single values: measured, one call
/// with two changes costs about 2k instructions more than two calls, and the two break
/// even at about four changes (`bench/README.md`).
const SINGLE_CALLS_UP_TO: usize = 3;

/// Makes an edit's header changes through `handle`: removals, then sets (a name set
/// twice in one edit, in any case, gets both values). An error is weir's to report: it
/// makes the filter's answer invalid, and the guest has nothing to add. Made one call
/// each, the changes weir accepted stay when another is refused (they matter only
/// under `fail-open`); made in one `change-headers`, none does.
fn apply_headers(handle: &impl HeaderHandle, remove: &[String], set: &[(String, Vec<u8>)]) {
    let changes = remove.len() + set.len();
    if changes == 0 {
        return;
    }
    if changes > SINGLE_CALLS_UP_TO {
        let _ = handle.change_headers(remove, set);
        return;
    }
    for name in remove {
        handle.remove_header(name);
    }
    for (i, (name, value)) in set.iter().enumerate() {
        let again = set[..i].iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        let _ = if again {
            handle.append_header(name, value)
        } else {
            handle.set_header(name, value)
        };
    }
}

// === impl RequestAction ===

/// What [`Filter::on_request`](crate::Filter::on_request) decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestAction {
    /// Go on to the next filter, after applying the edit. The memo comes back to this
    /// filter's `on_response` for the same try.
    Continue((Option<RequestEdit>, Option<Vec<u8>>)),
    /// Answer the client now, without calling upstream: a cache hit, an open breaker, a
    /// 429. Filters before this one still see `on_response`; later ones see nothing.
    Respond(Response),
    /// Call `on_request` again after this many milliseconds. The route deadline bounds
    /// it: a wait past the deadline ends the request with 504.
    Wait(u32),
}

impl RequestAction {
    /// Pass the request on unchanged, with no memo.
    pub fn proceed() -> Self {
        RequestAction::Continue((None, None))
    }

    /// Pass the request on after applying `edit`, with no memo.
    pub fn proceed_with_edit(edit: RequestEdit) -> Self {
        RequestAction::Continue((Some(edit), None))
    }

    /// Pass the request on after applying `edit`, if any, and hand `memo`, if any, to this
    /// filter's `on_response` for the same try.
    pub fn proceed_with(edit: Option<RequestEdit>, memo: Option<Vec<u8>>) -> Self {
        RequestAction::Continue((edit, memo))
    }
}

// === impl ResponseAction ===

/// What [`Filter::on_response`](crate::Filter::on_response) decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseAction {
    /// Pass the response on towards the client, after applying the edit.
    Continue(Option<ResponseEdit>),
    /// Answer with this response instead, e.g. serve a stale cached copy on error.
    Respond(Response),
    /// Send the request again, through the filters after this one and the upstream,
    /// after this many milliseconds. Bounded by the route deadline and a hard cap. Only
    /// honoured with [`Info::may_retry`](crate::Info).
    Retry(u32),
}

impl ResponseAction {
    /// Pass the outcome on unchanged.
    pub fn proceed() -> Self {
        ResponseAction::Continue(None)
    }

    /// Pass the response on after applying `edit`.
    pub fn proceed_with_edit(edit: ResponseEdit) -> Self {
        ResponseAction::Continue(Some(edit))
    }
}

/// A response a filter answers with, as the WIT carries it.
pub(crate) fn reply(resp: Response) -> wit::Reply {
    let (status, headers, body) = resp.into_parts();
    wit::Reply {
        status,
        headers,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    /// Records the calls an edit makes, as weir would receive them.
    #[derive(Default)]
    struct Calls(std::cell::RefCell<Vec<String>>);

    impl HeaderHandle for Calls {
        fn set_header(&self, name: &str, value: &[u8]) -> Result<(), String> {
            let value = String::from_utf8_lossy(value);
            self.0.borrow_mut().push(format!("set {name}={value}"));
            Ok(())
        }
        fn append_header(&self, name: &str, value: &[u8]) -> Result<(), String> {
            let value = String::from_utf8_lossy(value);
            self.0.borrow_mut().push(format!("append {name}={value}"));
            Ok(())
        }
        fn remove_header(&self, name: &str) {
            self.0.borrow_mut().push(format!("remove {name}"));
        }
        fn change_headers(
            &self,
            remove: &[String],
            set: &[(String, Vec<u8>)],
        ) -> Result<(), String> {
            let set: Vec<String> = set
                .iter()
                .map(|(n, v)| format!("{n}={}", String::from_utf8_lossy(v)))
                .collect();
            let call = format!("change remove={remove:?} set={set:?}");
            self.0.borrow_mut().push(call);
            Ok(())
        }
    }

    #[test]
    fn a_few_header_changes_go_one_call_each_and_more_in_one() {
        let calls = Calls::default();
        apply_headers(&calls, &[], &[]);
        assert!(calls.0.borrow().is_empty(), "no changes, no calls");

        let calls = Calls::default();
        let set = fields(&[("x-a", "1"), ("X-A", "2")]);
        apply_headers(&calls, &["cookie".to_owned()], &set);
        assert_eq!(
            *calls.0.borrow(),
            ["remove cookie", "set x-a=1", "append X-A=2"]
        );

        let calls = Calls::default();
        let set = fields(&[("x-a", "1"), ("x-b", "2"), ("x-a", "3")]);
        apply_headers(&calls, &["cookie".to_owned()], &set);
        assert_eq!(
            *calls.0.borrow(),
            [r#"change remove=["cookie"] set=["x-a=1", "x-b=2", "x-a=3"]"#]
        );
    }

    #[test]
    fn a_header_block_reads_back_every_field_in_order() {
        let block = b"accept: */*\r\nx-a:  two spaces: and a colon\r\nx-a: \r\nx-bin: \xff\t1\r\n";
        let mut want = fields(&[
            ("accept", "*/*"),
            ("x-a", " two spaces: and a colon"),
            ("x-a", ""),
        ]);
        want.push(("x-bin".into(), b"\xff\t1".to_vec()));
        assert_eq!(HeaderBlock::parse(block.to_vec()).to_fields(), want);
        assert_eq!(HeaderBlock::parse(Vec::new()).to_fields(), Fields::new());
        // Lines weir never writes are skipped, not guessed at.
        assert_eq!(
            HeaderBlock::parse(
                b"no-colon\r\nx-a:no-space\r\nx-b: 1\nx-c: 2\r\n\xff: 3\r\n".to_vec()
            )
            .to_fields(),
            fields(&[("x-c", "2")])
        );
    }

    #[test]
    fn a_header_block_is_looked_up_and_walked_in_place() {
        let block = HeaderBlock::parse(
            b"accept: */*\r\nx-id: 1\r\nbad line\r\nx-id: 2\r\nx-empty: \r\nx-bin: \xff\r\n"
                .to_vec(),
        );
        assert_eq!(block.len(), 5);
        assert_eq!(block.header("X-ID"), Some(&b"1"[..]));
        assert_eq!(block.header_all("x-id").collect::<Vec<_>>(), [b"1", b"2"]);
        assert_eq!(block.header("x-empty"), Some(&b""[..]));
        assert_eq!(block.header_str("x-bin"), None);
        assert_eq!(block.header("x-i"), None);
        assert_eq!(
            block.fields().map(|(n, _)| n).collect::<Vec<_>>(),
            ["accept", "x-id", "x-id", "x-empty", "x-bin"]
        );
        assert_eq!(names(&block), ["accept", "x-id", "x-empty", "x-bin"]);
        assert!(HeaderBlock::parse(Vec::new()).is_empty());
        // The last line needs its CR, not its LF; an empty name is no field.
        let end = HeaderBlock::parse(b"x-a: 1\r\nx-b: 2\r".to_vec());
        assert_eq!(end.header("x-b"), Some(&b"2"[..]));
        assert!(HeaderBlock::parse(b"x-a: 1".to_vec()).is_empty());
        assert!(HeaderBlock::parse(b": v\r\n".to_vec()).is_empty());
        // Equal by fields, whatever lines were skipped.
        assert_eq!(
            HeaderBlock::parse(b"junk\r\nx-a: 1\r\n".to_vec()),
            HeaderBlock::parse(b"x-a: 1\r\n".to_vec())
        );
    }

    #[test]
    fn a_local_message_has_a_header_block_of_its_headers() {
        // Fields weir would refuse come back as they went in.
        let odd = Request::new("GET", "/").with_header("x:a", "1\r\n2");
        assert_eq!(odd.header_block().to_fields(), *odd.headers());

        let req = Request::new("GET", "/").with_header("X-A", "1");
        assert_eq!(req.header_block().to_fields(), *req.headers());
        // A header added after the block was read is in the next one.
        let req = req.with_header("x-b", "2");
        assert_eq!(req.header_block().header("x-b"), Some(&b"2"[..]));
        assert_eq!(req.header_all("x-a"), [b"1"]);
        assert_eq!(req.header_names(), ["x-a", "x-b"]);

        let resp = Response::new(200).with_header("x-a", "1");
        assert_eq!(resp.header_block().header("X-A"), Some(&b"1"[..]));
        let resp = resp.with_header("x-a", "2");
        assert_eq!(resp.header_block().header_all("x-a").count(), 2);
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_returns_the_first_value() {
        let h = fields(&[("accept", "a"), ("x-id", "1"), ("X-Id", "2")]);
        assert_eq!(h.header("X-ID"), Some(&b"1"[..]));
        assert_eq!(h.header_str("x-id"), Some("1"));
        assert_eq!(h.header_all("x-id").collect::<Vec<_>>(), [b"1", b"2"]);
        assert_eq!(h.header("missing"), None);
    }

    #[test]
    fn header_str_is_none_for_non_utf8() {
        let h = [("x-raw".to_string(), vec![0xff, 0xfe])];
        assert_eq!(h.header("x-raw"), Some(&[0xff, 0xfe][..]));
        assert_eq!(h.header_str("x-raw"), None);
    }

    #[test]
    fn a_local_request_answers_like_one_from_weir() {
        let req = Request::new("POST", "/v1/items?limit=2")
            .with_header("Authorization", "Bearer t")
            .with_header("x-tag", "a")
            .with_header("X-Tag", "b")
            .with_body("{}");
        assert_eq!(req.method(), "POST");
        assert_eq!(req.path(), "/v1/items");
        assert_eq!(req.path_with_query(), "/v1/items?limit=2");
        assert_eq!(req.header_str("authorization").as_deref(), Some("Bearer t"));
        assert_eq!(req.header_all("x-tag"), [b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(req.header_names(), ["authorization", "x-tag"]);
        assert_eq!(req.body(), Some(&b"{}"[..]));
        assert_eq!(req.request_id(), None);
        let info = RequestInfo::new("r1").with_attempt(3).with_remaining_ms(5);
        assert_eq!(
            (info.id(), info.attempt(), info.remaining_ms()),
            ("r1", 3, 5)
        );
        assert_eq!(info.route(), "test");
    }

    #[test]
    fn request_edit_builder() {
        assert!(RequestEdit::new().is_empty());
        let edit = RequestEdit::new()
            .set_header("X-A", "b")
            .set_header("x-bytes", vec![1u8, 2])
            .remove_header("Cookie")
            .path_with_query("/v2?x=1")
            .body("{}");
        assert_eq!(
            edit,
            RequestEdit {
                set_headers: vec![
                    ("x-a".into(), b"b".to_vec()),
                    ("x-bytes".into(), vec![1, 2])
                ],
                remove_headers: vec!["cookie".into()],
                path_with_query: Some("/v2?x=1".into()),
                body: Some(b"{}".to_vec()),
                try_timeout_ms: None,
            }
        );
        assert!(!edit.is_empty());
    }

    #[test]
    fn response_edit_builder() {
        assert!(ResponseEdit::new().is_empty());
        let edit = ResponseEdit::new()
            .set_header("X-Served-By", "weir")
            .remove_header("server");
        assert_eq!(
            edit,
            ResponseEdit {
                set_headers: vec![("x-served-by".into(), b"weir".to_vec())],
                remove_headers: vec!["server".into()],
            }
        );
    }

    #[test]
    fn response_constructors() {
        let r = Response::json(429, &serde_json::json!({"error": "slow down"}));
        assert_eq!(r.status(), 429);
        assert_eq!(
            r.header_str("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(r.body(), Some(&br#"{"error":"slow down"}"#[..]));

        let r = Response::text(503, "open").with_status(500);
        assert_eq!(
            r.header_str("Content-Type").as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!((r.status(), r.body()), (500, Some(&b"open"[..])));

        assert_eq!(Response::new(204).body(), None);
        assert_eq!(
            Response::new(200).with_header("ETag", "v1").into_parts(),
            (200, vec![("etag".into(), b"v1".to_vec())], None)
        );
    }

    #[test]
    fn action_shorthands() {
        assert_eq!(
            RequestAction::proceed(),
            RequestAction::Continue((None, None))
        );
        assert_eq!(
            RequestAction::proceed_with(None, Some(vec![7])),
            RequestAction::Continue((None, Some(vec![7])))
        );
        assert_eq!(
            RequestAction::proceed_with_edit(RequestEdit::new()),
            RequestAction::Continue((Some(RequestEdit::new()), None))
        );
        assert_eq!(ResponseAction::proceed(), ResponseAction::Continue(None));
        assert_eq!(
            ResponseAction::proceed_with_edit(ResponseEdit::new()),
            ResponseAction::Continue(Some(ResponseEdit::new()))
        );
    }

    #[test]
    fn outcome_status() {
        assert_eq!(Outcome::Response(Response::new(502)).status(), Some(502));
        assert_eq!(Outcome::Error(UpstreamError::Reset).status(), None);
        assert!(Outcome::Error(UpstreamError::Tls).response().is_none());
    }
}
