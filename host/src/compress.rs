//! Content codings in the host: gzip, zstd and br, always streamed.
//!
//! Compression is byte-heavy, so the host does it rather than a filter. A route opts in with
//! `compression = { request = "gzip" | "zstd" | "br", response = true }`:
//!
//! 1. **Requests** (`request = "…"`): a request body weir sends upstream is encoded with
//!    that coding on the fly, with `Content-Encoding` set, unless the body is empty or the
//!    client (or a filter) already set a `Content-Encoding`. weir never decodes request
//!    bodies: filters see them as the client sent them.
//! 2. **Responses** (`response = true`): weir asks the upstream for any coding it can decode
//!    ([`UPSTREAM_ACCEPT`]). When a filter wants the response body, weir decodes it first,
//!    bounded by `max_body_bytes` of *decoded* bytes, so a small compressed body that would
//!    expand past the limit is refused (502 `response_too_large`), never buffered without
//!    bound. Towards the client, [`to_client`] picks the best coding in the client's
//!    `Accept-Encoding` ([`Accept`]) and encodes, or decodes, on the fly. A response whose
//!    coding the client already accepts passes through untouched.
//!
//! Every transformation runs chunk by chunk: a coder holds at most its window and one
//! [`CHUNK`] of output, whatever the size of the body.

use std::io;

use async_compression::Level;
use async_compression::tokio::bufread::{
    BrotliDecoder, BrotliEncoder, GzipDecoder, GzipEncoder, ZstdDecoder, ZstdEncoder,
};
use futures_util::TryStreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body as _, Frame};
use http_body_util::{BodyDataStream, StreamBody};
use serde::Deserialize;
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::body::{self, BoxError, ProxyBody};

/// The most bytes a coder hands on in one frame.
pub const CHUNK: usize = 32 << 10;

/// What weir sends upstream as `Accept-Encoding` on a route with `response = true`: every
/// coding it can decode.
pub const UPSTREAM_ACCEPT: HeaderValue = HeaderValue::from_static("zstd, br, gzip");

/// The largest zstd window weir decodes: 8 MiB, the bound RFC 9659 sets for the `zstd`
/// content coding. A frame that asks for more would make the decoder allocate it.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Brotli's default quality (11) is meant for static assets; 4 keeps on-the-fly encoding
/// about as fast as gzip's default while still compressing better.
const BROTLI_QUALITY: i32 = 4;

/// A content coding weir can encode and decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Coding {
    /// `gzip` (RFC 1952).
    Gzip,
    /// `zstd` (RFC 8878, window at most 8 MiB).
    Zstd,
    /// `br` (Brotli, RFC 7932).
    Br,
}

impl Coding {
    /// The content-coding token, as it appears in `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Zstd => "zstd",
            Coding::Br => "br",
        }
    }

    /// The coding a token names (any case; `x-gzip` is `gzip`, RFC 9110 §8.4.1.3).
    pub fn from_token(token: &str) -> Option<Coding> {
        let t = token.trim();
        if t.eq_ignore_ascii_case("gzip") || t.eq_ignore_ascii_case("x-gzip") {
            Some(Coding::Gzip)
        } else if t.eq_ignore_ascii_case("zstd") {
            Some(Coding::Zstd)
        } else if t.eq_ignore_ascii_case("br") {
            Some(Coding::Br)
        } else {
            None
        }
    }

    fn header(self) -> HeaderValue {
        HeaderValue::from_static(self.token())
    }
}

// === streaming coders ===

/// `body` encoded with `coding`, streamed. Trailers are dropped.
pub fn encode(body: ProxyBody, coding: Coding) -> ProxyBody {
    let input = reader(body);
    match coding {
        Coding::Gzip => from_reader(GzipEncoder::new(input)),
        Coding::Zstd => from_reader(ZstdEncoder::new(input)),
        Coding::Br => from_reader(BrotliEncoder::with_quality(
            input,
            Level::Precise(BROTLI_QUALITY),
        )),
    }
}

/// `body` decoded from `coding`, streamed in frames of at most [`CHUNK`] bytes, so a small
/// input that expands a thousandfold still arrives piece by piece. Trailers are dropped.
pub fn decode(body: ProxyBody, coding: Coding) -> ProxyBody {
    let input = reader(body);
    match coding {
        Coding::Gzip => {
            let mut d = GzipDecoder::new(input);
            // Concatenated gzip members are one valid body (RFC 1952 §2.2).
            d.multiple_members(true);
            from_reader(d)
        }
        Coding::Zstd => {
            let mut d = ZstdDecoder::with_params(
                input,
                &[async_compression::zstd::DParameter::window_log_max(
                    ZSTD_WINDOW_LOG_MAX,
                )],
            );
            d.multiple_members(true);
            from_reader(d)
        }
        Coding::Br => from_reader(BrotliDecoder::new(input)),
    }
}

/// The body as a buffered reader, for the coders.
fn reader(body: ProxyBody) -> impl tokio::io::AsyncBufRead + Send + Unpin + 'static {
    StreamReader::new(BodyDataStream::new(body).map_err(io::Error::other))
}

/// The coder's output as a body.
fn from_reader(r: impl AsyncRead + Send + 'static) -> ProxyBody {
    let frames = ReaderStream::with_capacity(r, CHUNK)
        .map_ok(Frame::data)
        .map_err(unwrap_io);
    body::boxed(StreamBody::new(frames))
}

/// Gives back the body error that [`reader`] wrapped, so `TooLarge` and friends keep
/// their type; the coders' own errors (corrupt input) stay `io::Error`s.
fn unwrap_io(e: io::Error) -> BoxError {
    if e.kind() != io::ErrorKind::Other || e.get_ref().is_none() {
        return Box::new(e);
    }
    e.into_inner()
        .unwrap_or_else(|| Box::new(io::Error::from(io::ErrorKind::Other)))
}

// === negotiation ===

/// `q` values in thousandths (RFC 9110 §12.4.2: at most three decimals).
type Q = u16;

/// A client's `Accept-Encoding`, reduced to what weir can produce.
///
/// A client that sends no `Accept-Encoding` gets identity. (RFC 9110 would allow any
/// coding, but clients such as `curl` without `--compressed` send none and expect plain
/// bytes.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accept {
    gzip: Option<Q>,
    zstd: Option<Q>,
    br: Option<Q>,
    identity: Option<Q>,
    any: Option<Q>,
}

impl Accept {
    /// Parses every `Accept-Encoding` line; entries that do not parse are ignored.
    pub fn from_headers(headers: &HeaderMap) -> Accept {
        let mut a = Accept::default();
        for line in headers.get_all(header::ACCEPT_ENCODING) {
            let Ok(line) = line.to_str() else { continue };
            for entry in line.split(',') {
                let mut parts = entry.split(';');
                let token = parts.next().unwrap_or("").trim();
                if token.is_empty() {
                    continue;
                }
                let mut q = Some(1000);
                for param in parts {
                    let Some((k, v)) = param.split_once('=') else {
                        continue;
                    };
                    if k.trim().eq_ignore_ascii_case("q") {
                        q = parse_q(v.trim());
                    }
                }
                let Some(q) = q else { continue };
                let slot = if token == "*" {
                    &mut a.any
                } else if token.eq_ignore_ascii_case("identity") {
                    &mut a.identity
                } else {
                    match Coding::from_token(token) {
                        Some(Coding::Gzip) => &mut a.gzip,
                        Some(Coding::Zstd) => &mut a.zstd,
                        Some(Coding::Br) => &mut a.br,
                        None => continue,
                    }
                };
                *slot = Some(q);
            }
        }
        a
    }

    /// How much the client wants `coding` (`None`: identity), 0 to 1000.
    fn q(&self, coding: Option<Coding>) -> Q {
        let explicit = match coding {
            None => self.identity,
            Some(Coding::Gzip) => self.gzip,
            Some(Coding::Zstd) => self.zstd,
            Some(Coding::Br) => self.br,
        };
        // Identity is acceptable unless excluded; a coding only if named or covered by `*`.
        let default = if coding.is_none() { 1000 } else { 0 };
        explicit.or(self.any).unwrap_or(default)
    }

    /// Whether the client accepts `coding` (`None`: identity).
    pub fn accepts(&self, coding: Option<Coding>) -> bool {
        self.q(coding) > 0
    }

    /// The coding to send (`None`: identity): the highest `q`. Ties go to a coding over
    /// identity, and among codings to zstd, then br, then gzip (fastest to encode well
    /// first). If the client accepts nothing weir can produce, identity.
    pub fn best(&self) -> Option<Coding> {
        let mut best: Option<(Coding, Q)> = None;
        for c in [Coding::Zstd, Coding::Br, Coding::Gzip] {
            let q = self.q(Some(c));
            if q > 0 && best.is_none_or(|(_, b)| q > b) {
                best = Some((c, q));
            }
        }
        // Identity that is not named (nor covered by `*`) is the fallback, not a rival.
        let identity = self.identity.or(self.any).unwrap_or(0);
        match best {
            Some((c, q)) if q >= identity => Some(c),
            _ => None,
        }
    }
}

/// `0`, `0.5`, `1.000` and the like (RFC 9110 §12.4.2), in thousandths.
fn parse_q(v: &str) -> Option<Q> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{frac:0<3}").parse::<Q>().ok()?;
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// A `Content-Encoding` weir cannot undo: a coding it does not know, or several stacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownCoding;

/// The coding of a message: `None` for identity, or the one coding weir knows.
pub fn content_coding(headers: &HeaderMap) -> Result<Option<Coding>, UnknownCoding> {
    let mut found = None;
    for line in headers.get_all(header::CONTENT_ENCODING) {
        let line = line.to_str().map_err(|_| UnknownCoding)?;
        for token in line.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case("identity") {
                continue;
            }
            let c = Coding::from_token(token).ok_or(UnknownCoding)?;
            if found.replace(c).is_some() {
                return Err(UnknownCoding);
            }
        }
    }
    Ok(found)
}

// === the request and response paths ===

/// Encodes a request body going upstream with `coding`, unless it is empty or already
/// has a `Content-Encoding`.
pub fn encode_request(req: &mut http::Request<ProxyBody>, coding: Coding) {
    if req.headers().contains_key(header::CONTENT_ENCODING) || req.body().is_end_stream() {
        return;
    }
    let plain = std::mem::replace(req.body_mut(), body::empty());
    *req.body_mut() = encode(plain, coding);
    let h = req.headers_mut();
    h.insert(header::CONTENT_ENCODING, coding.header());
    h.remove(header::CONTENT_LENGTH);
}

/// Fixes the headers of a response whose body weir decoded: no `Content-Encoding`, no
/// `Content-Length` (it was the encoded length), and a weak `ETag`.
pub fn mark_decoded(headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    weaken_etag(headers);
}

/// The response as the client wants it: re-coded for `accept` when needed, with
/// `Vary: Accept-Encoding`. `head` is whether the request was a HEAD (headers as for a
/// GET, body left alone).
///
/// Left untouched: a coding weir does not know (or several stacked), a partial response
/// (its ranges count encoded bytes) and `Cache-Control: no-transform`.
pub fn to_client(resp: Response<ProxyBody>, accept: &Accept, head: bool) -> Response<ProxyBody> {
    let Ok(current) = content_coding(resp.headers()) else {
        return resp;
    };
    let status = resp.status();
    if status == StatusCode::PARTIAL_CONTENT
        || resp.headers().contains_key(header::CONTENT_RANGE)
        || no_transform(resp.headers())
    {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    add_vary(&mut parts.headers);
    let target = match current {
        Some(c) if accept.accepts(Some(c)) => Some(c),
        _ => accept.best(),
    };
    let bodiless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    // An empty body stays empty (and identity): encoding nothing only adds a header.
    if target == current || (current.is_none() && !head && body.is_end_stream()) {
        return Response::from_parts(parts, body);
    }
    weaken_etag(&mut parts.headers);
    if bodiless {
        // Validators only: a 304 updates a stored response, whose coding stays its own.
        return Response::from_parts(parts, body);
    }
    let h = &mut parts.headers;
    h.remove(header::CONTENT_LENGTH);
    match target {
        Some(c) => h.insert(header::CONTENT_ENCODING, c.header()),
        None => h.remove(header::CONTENT_ENCODING),
    };
    if head {
        return Response::from_parts(parts, body);
    }
    let plain = match current {
        Some(c) => decode(body, c),
        None => body,
    };
    let body = match target {
        Some(c) => encode(plain, c),
        None => plain,
    };
    Response::from_parts(parts, body)
}

fn no_transform(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
}

fn add_vary(headers: &mut HeaderMap) {
    let covered = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|f| f == "*" || f.eq_ignore_ascii_case("accept-encoding"));
    if !covered {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// A transformed representation is not byte-identical to the one the strong `ETag` named
/// (RFC 9110 §8.8.3), so it becomes weak.
fn weaken_etag(headers: &mut HeaderMap) {
    let Some(tag) = headers.get(header::ETAG) else {
        return;
    };
    if tag.as_bytes().starts_with(b"\"") {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(tag.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&weak) {
            headers.insert(header::ETAG, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;

    fn accept(v: &str) -> Accept {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        Accept::from_headers(&h)
    }

    /// Varied, somewhat compressible bytes.
    fn sample(len: usize) -> Vec<u8> {
        let mut x: u32 = 0x9e37_79b9;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 3 == 0 {
                    (x % 16) as u8 + b'a'
                } else {
                    (x >> 24) as u8
                }
            })
            .collect()
    }

    /// A body of `data` in frames of `frame` bytes.
    fn chunked(data: &[u8], frame: usize) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = data
            .chunks(frame)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        body::boxed(StreamBody::new(futures_util::stream::iter(frames)))
    }

    async fn all(b: ProxyBody) -> Result<Bytes, BoxError> {
        Ok(b.collect().await?.to_bytes())
    }

    #[test]
    fn no_header_or_identity_means_identity() {
        assert_eq!(Accept::from_headers(&HeaderMap::new()).best(), None);
        assert!(Accept::from_headers(&HeaderMap::new()).accepts(None));
        assert!(!Accept::from_headers(&HeaderMap::new()).accepts(Some(Coding::Gzip)));
        assert_eq!(accept("identity").best(), None);
        assert_eq!(accept("").best(), None);
        assert_eq!(accept("deflate, compress").best(), None);
    }

    #[test]
    fn q_values_pick_the_coding() {
        assert_eq!(accept("gzip").best(), Some(Coding::Gzip));
        assert_eq!(accept("gzip;q=0.5, br;q=0.8").best(), Some(Coding::Br));
        assert_eq!(accept("br;q=0.8, gzip;q=0.5").best(), Some(Coding::Br));
        assert_eq!(accept("gzip, br").best(), Some(Coding::Br));
        assert_eq!(accept("gzip, deflate, br, zstd").best(), Some(Coding::Zstd));
        assert_eq!(accept("zstd;q=0, gzip").best(), Some(Coding::Gzip));
        assert_eq!(accept("GZIP ; Q=1.0").best(), Some(Coding::Gzip));
        assert_eq!(accept("x-gzip").best(), Some(Coding::Gzip));
        // Identity preferred over a coding the client only half wants.
        assert_eq!(accept("gzip;q=0.5, identity").best(), None);
        // Equal: compress.
        assert_eq!(accept("gzip, identity").best(), Some(Coding::Gzip));
        // A bad q value drops the entry, not the header.
        assert_eq!(accept("br;q=2, gzip;q=0.9").best(), Some(Coding::Gzip));
        assert_eq!(
            accept("br;q=0.1234, gzip;q=0.001").best(),
            Some(Coding::Gzip)
        );
        assert_eq!(parse_q("0.001"), Some(1));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("1.001"), None);
        assert_eq!(parse_q("0."), Some(0));
    }

    #[test]
    fn star_covers_what_is_not_named() {
        assert_eq!(accept("*").best(), Some(Coding::Zstd));
        assert_eq!(accept("*;q=0.5, gzip").best(), Some(Coding::Gzip));
        assert_eq!(accept("*, zstd;q=0, br;q=0").best(), Some(Coding::Gzip));
        // `*;q=0` excludes identity too, unless identity is named.
        let a = accept("*;q=0");
        assert!(!a.accepts(None));
        assert_eq!(a.best(), None);
        assert!(accept("*;q=0, identity").accepts(None));
        assert!(!accept("identity;q=0").accepts(None));
    }

    #[test]
    fn several_lines_are_one_list() {
        let mut h = HeaderMap::new();
        h.append(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0.2"),
        );
        h.append(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br;q=0.3"),
        );
        assert_eq!(Accept::from_headers(&h).best(), Some(Coding::Br));
    }

    #[test]
    fn content_coding_knows_one_coding_only() {
        let h = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(v));
            h
        };
        assert_eq!(content_coding(&HeaderMap::new()), Ok(None));
        assert_eq!(content_coding(&h("identity")), Ok(None));
        assert_eq!(content_coding(&h("GZIP")), Ok(Some(Coding::Gzip)));
        assert_eq!(content_coding(&h("br")), Ok(Some(Coding::Br)));
        assert_eq!(content_coding(&h("deflate")), Err(UnknownCoding));
        assert_eq!(content_coding(&h("gzip, br")), Err(UnknownCoding));
    }

    #[tokio::test]
    async fn every_coding_round_trips_byte_exact() {
        let data = sample(300_000);
        for coding in [Coding::Gzip, Coding::Zstd, Coding::Br] {
            let packed = all(encode(chunked(&data, 7_000), coding)).await.unwrap();
            assert!(packed.len() < data.len(), "{coding:?} compressed nothing");
            let back = all(decode(chunked(&packed, 1_000), coding)).await.unwrap();
            assert_eq!(back.len(), data.len(), "{coding:?}");
            assert!(back == data, "{coding:?}: bytes differ");
            // Empty in, empty out.
            let empty = all(encode(body::empty(), coding)).await.unwrap();
            assert!(
                all(decode(body::full(empty), coding))
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    }

    #[tokio::test]
    async fn corrupt_input_is_an_error() {
        for coding in [Coding::Gzip, Coding::Zstd, Coding::Br] {
            let junk = body::full(Bytes::from_static(b"this is not compressed at all"));
            assert!(all(decode(junk, coding)).await.is_err(), "{coding:?}");
        }
    }

    #[tokio::test]
    async fn decoding_a_bomb_stops_at_the_limit_in_small_frames() {
        // 64 MiB of zeros: about 64 KiB of gzip.
        let zeros = vec![0u8; 64 << 20];
        let bomb = all(encode(chunked(&zeros, 1 << 20), Coding::Gzip))
            .await
            .unwrap();
        drop(zeros);
        assert!(bomb.len() < 256 << 10, "bomb is {} bytes", bomb.len());
        let mut out = decode(body::full(bomb.clone()), Coding::Gzip);
        // Each frame is small, whatever the ratio.
        let first = out.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(first.len() <= CHUNK);
        // The bound the chain uses refuses it without holding more than the limit.
        let err = body::collect_limited(decode(body::full(bomb), Coding::Gzip), 1 << 20)
            .await
            .unwrap_err();
        assert!(body::is_too_large(err.as_ref()), "{err}");
    }

    #[tokio::test]
    async fn body_errors_keep_their_type_through_a_coder() {
        let limited = body::boxed(body::ClientBody::new(
            chunked(&sample(10_000), 1_000),
            100,
            std::time::Duration::from_secs(1),
            body::BodyFault::new(),
        ));
        let err = all(encode(limited, Coding::Zstd)).await.unwrap_err();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err.as_ref());
        let mut kind = None;
        while let Some(e) = cur {
            kind = kind.or(e.downcast_ref::<body::BodyFaultKind>());
            cur = e.source();
        }
        assert_eq!(kind, Some(&body::BodyFaultKind::TooLarge(100)), "{err}");
    }

    fn response(coding: Option<&'static str>, body: &[u8]) -> Response<ProxyBody> {
        let mut r = Response::new(body::full(Bytes::copy_from_slice(body)));
        if let Some(c) = coding {
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static(c));
        }
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        r.headers_mut()
            .insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        r
    }

    #[tokio::test]
    async fn to_client_recodes_only_when_it_must() {
        let data = sample(50_000);
        // Identity to a br client: encoded, length dropped, Vary and a weak ETag.
        let r = to_client(response(None, &data), &accept("br"), false);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "br");
        assert!(!r.headers().contains_key(header::CONTENT_LENGTH));
        assert_eq!(r.headers()[header::VARY], "accept-encoding");
        assert_eq!(r.headers()[header::ETAG], "W/\"v1\"");
        let packed = all(r.into_body()).await.unwrap();
        assert!(all(decode(body::full(packed), Coding::Br)).await.unwrap() == data);

        // gzip to a client that takes gzip (even at a lower q): untouched.
        let gz = all(encode(body::full(Bytes::from(data.clone())), Coding::Gzip))
            .await
            .unwrap();
        let r = to_client(
            response(Some("gzip"), &gz),
            &accept("br, gzip;q=0.1"),
            false,
        );
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(
            r.headers()[header::CONTENT_LENGTH],
            gz.len().to_string().as_str()
        );
        assert_eq!(r.headers()[header::ETAG], "\"v1\"");
        assert_eq!(r.headers()[header::VARY], "accept-encoding");
        assert!(all(r.into_body()).await.unwrap() == gz);

        // gzip to a client without Accept-Encoding: decoded.
        let r = to_client(response(Some("gzip"), &gz), &Accept::default(), false);
        assert!(!r.headers().contains_key(header::CONTENT_ENCODING));
        assert!(all(r.into_body()).await.unwrap() == data);

        // gzip to a zstd-only client: transcoded.
        let r = to_client(response(Some("gzip"), &gz), &accept("zstd"), false);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "zstd");
        let packed = all(r.into_body()).await.unwrap();
        assert!(all(decode(body::full(packed), Coding::Zstd)).await.unwrap() == data);

        // HEAD: the headers a GET would get, the body left alone.
        let r = to_client(response(None, b""), &accept("gzip"), true);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        assert!(all(r.into_body()).await.unwrap().is_empty());

        // An empty identity body stays empty and identity.
        let r = to_client(response(None, b""), &accept("gzip"), false);
        assert!(!r.headers().contains_key(header::CONTENT_ENCODING));
        assert!(all(r.into_body()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn to_client_leaves_what_it_must_not_touch() {
        let data = sample(1_000);
        let mut r = response(None, &data);
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=5, no-transform"),
        );
        let r = to_client(r, &accept("gzip"), false);
        assert!(!r.headers().contains_key(header::CONTENT_ENCODING));
        assert!(all(r.into_body()).await.unwrap() == data);

        let r = to_client(response(Some("deflate"), &data), &Accept::default(), false);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "deflate");
        assert!(all(r.into_body()).await.unwrap() == data);

        let mut r = response(None, &data);
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        let r = to_client(r, &accept("gzip"), false);
        assert!(!r.headers().contains_key(header::CONTENT_ENCODING));

        let mut r = response(None, &data);
        r.headers_mut().insert(
            header::VARY,
            HeaderValue::from_static("Origin, Accept-Encoding"),
        );
        let r = to_client(r, &accept("gzip"), false);
        assert_eq!(r.headers().get_all(header::VARY).iter().count(), 1);
    }

    #[tokio::test]
    async fn request_bodies_are_encoded_once_and_never_when_empty() {
        let data = sample(20_000);
        let mut req = http::Request::new(body::full(Bytes::from(data.clone())));
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
        encode_request(&mut req, Coding::Gzip);
        assert_eq!(req.headers()[header::CONTENT_ENCODING], "gzip");
        assert!(!req.headers().contains_key(header::CONTENT_LENGTH));
        let packed = all(req.into_body()).await.unwrap();
        assert!(all(decode(body::full(packed), Coding::Gzip)).await.unwrap() == data);

        let mut req = http::Request::new(body::empty());
        encode_request(&mut req, Coding::Gzip);
        assert!(!req.headers().contains_key(header::CONTENT_ENCODING));

        let mut req = http::Request::new(body::full(Bytes::from_static(b"already")));
        req.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        encode_request(&mut req, Coding::Gzip);
        assert_eq!(req.headers()[header::CONTENT_ENCODING], "br");
        assert_eq!(all(req.into_body()).await.unwrap(), "already");
    }
}
