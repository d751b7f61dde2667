//! weir's own HTTP/1 server side and hyper's server connection, each given the same
//! client bytes: what each sent back. The `h1_request` fuzz target
//! (`fuzz/fuzz_targets/h1_request.rs`) asserts that the two agree.
//!
//! The own side replaced hyper's server for the common request, so hyper's server is
//! its oracle: for any bytes a client sends, in any pieces, the client should get the
//! same bytes back, and see the connection closed where hyper closed it. The service
//! answers every request with a [`Reply`] whose body lists the request's method, target,
//! header lines and body as the service saw them, so a request read differently shows
//! too. The
//! own side hands what it does not serve to hyper, as the listener does.
//!
//! Everything runs in memory on one thread with tokio's clock paused, so a run is
//! deterministic: time moves only when every task waits. The client never closes its
//! sending side: hyper cancels a request whose client does so at once, even when its
//! answer is ready, and the own side answers it (`listener::h1`). Built for tests and
//! the fuzz target only (`cfg(fuzzing)`), with tokio's `test-util`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, Version, header};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::h1::{Ended, serve};
use crate::body::{self, BoxError, ProxyBody};
use crate::drain::Drain;
use crate::slow_clients::{Cuts, Flushes, Sweep, Timeouts};

/// How long the client waits for more before it stops reading (on the paused clock:
/// only once every side waits).
const SILENCE: Duration = Duration::from_secs(1);

/// The statuses a [`Reply`] picks from: not 1xx, which hyper's server cannot send.
const STATUSES: [u16; 8] = [200, 201, 204, 299, 304, 404, 500, 599];

/// What the service answers every request with.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    /// An index into the statuses a reply may have.
    pub status: u8,
    /// How the body comes: 0 none, 1 whole, else in this many parts (length unknown).
    pub body: u8,
    /// A `content-length` line with the body's true length.
    pub length_line: bool,
    /// A `transfer-encoding: chunked` line.
    pub chunked_line: bool,
    /// A `connection: close` line.
    pub close_line: bool,
    /// An HTTP/1.0 response.
    pub http10: bool,
    /// A `date` line of its own.
    pub date_line: bool,
    /// Answers without reading the request's body (a proxy's own error, say).
    pub skip_body: bool,
}

/// What a client sends and how the service answers.
#[derive(Debug, Clone)]
pub struct Case {
    /// The client's bytes: one or more requests, or anything else.
    pub request: Vec<u8>,
    /// Where the client pauses while sending (offsets into `request`).
    pub cuts: Vec<usize>,
    pub reply: Reply,
}

/// What the client got back: the bytes (each `date` value masked) and whether the
/// server closed the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Said {
    pub bytes: String,
    pub closed: bool,
}

/// The own side's answer and hyper's, for `case`.
pub fn both(case: &Case) -> (Said, Said) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async { (own(case).await, hyper(case).await) })
}

/// The service's answer to a request with this head and body: it reads the whole body
/// first, as a proxy that buffers it does, unless the reply skips it.
async fn answer<B>(reply: Reply, head: &http::request::Parts, body: B) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut echo = format!("{} {}\n", head.method, head.uri).into_bytes();
    for (name, value) in &head.headers {
        echo.extend_from_slice(name.as_str().as_bytes());
        echo.push(b'=');
        echo.extend_from_slice(value.as_bytes());
        echo.push(b'\n');
    }
    if reply.skip_body {
        drop(body);
    } else {
        match body.collect().await {
            Ok(whole) => {
                echo.extend_from_slice(b"body=");
                echo.extend_from_slice(&whole.to_bytes());
            }
            Err(e) => echo.extend_from_slice(format!("body error: {e}").as_bytes()),
        }
    }
    let len = echo.len();
    let body = match reply.body {
        0 => body::empty(),
        1 => body::full(Bytes::from(echo)),
        parts => {
            let step = len.div_ceil(usize::from(parts)).max(1);
            let frames: Vec<Result<Frame<Bytes>, BoxError>> = echo
                .chunks(step)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
        }
    };
    let mut resp = Response::new(body);
    let status = STATUSES[usize::from(reply.status) % STATUSES.len()];
    *resp.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    let lines = resp.headers_mut();
    if reply.length_line && reply.body != 0 {
        lines.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    if reply.chunked_line {
        lines.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    if reply.close_line {
        lines.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if reply.date_line {
        lines.insert(header::DATE, HeaderValue::from_static("then"));
    }
    if reply.http10 {
        *resp.version_mut() = Version::HTTP_10;
    }
    resp
}

/// Sends the case's bytes in its pieces, then reads until the server closes or is
/// silent.
async fn client(mut io: DuplexStream, case: &Case) -> Vec<u8> {
    let mut cuts: Vec<usize> = case
        .cuts
        .iter()
        .map(|c| c % (case.request.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut from = 0;
    for cut in cuts.into_iter().chain([case.request.len()]) {
        if io.write_all(&case.request[from..cut]).await.is_err() {
            break;
        }
        from = cut;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut got = Vec::new();
    let mut chunk = [0; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(SILENCE, io.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

async fn hyper(case: &Case) -> Said {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let reply = case.reply;
    let served = tokio::spawn(serve_hyper(TokioIo::new(theirs), reply));
    let got = client(ours, case).await;
    Said {
        bytes: masked(&got),
        closed: served.is_finished(),
    }
}

/// hyper's HTTP/1 server on `io`, as the listener builds it.
async fn serve_hyper<I>(io: TokioIo<I>, reply: Reply)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (head, body) = req.into_parts();
        async move { Ok::<_, Infallible>(answer(reply, &head, body).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .max_buf_size(8192)
        .serve_connection(io, svc)
        .await;
}

async fn own(case: &Case) -> Said {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let reply = case.reply;
    let served = tokio::spawn(async move {
        let drain = Drain::new();
        let mut watch = drain.watch();
        let counter = |name| prometheus::IntCounter::new(name, "compare").expect("a counter");
        let sweep = Sweep::new(
            Timeouts {
                head: Duration::from_secs(3600),
                send: Duration::from_secs(3600),
            },
            Cuts {
                head: counter("heads"),
                send: counter("sends"),
            },
        );
        let io = Flushes::new(theirs, sweep.begin());
        let service = |head: Box<http::request::Parts>, body: ProxyBody| async move {
            answer(reply, &head, body).await
        };
        if let Ok(Ended::Hand { io, .. }) = serve(io, 8192, &mut watch, service).await {
            serve_hyper(TokioIo::new(io), reply).await;
        }
    });
    let got = client(ours, case).await;
    Said {
        bytes: masked(&got),
        closed: served.is_finished(),
    }
}

/// `bytes` as text, with each `date` line's value masked: the two servers may write
/// theirs a second apart.
fn masked(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    let mut rest = text.as_ref();
    while let Some(at) = rest.find("\r\ndate: ") {
        let value = at + "\r\ndate: ".len();
        out.push_str(&rest[..value]);
        let end = rest[value..].find("\r\n").map_or(rest.len(), |e| value + e);
        out.push_str(if &rest[value..end] == "then" {
            "then"
        } else {
            "<date>"
        });
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> Reply {
        Reply {
            status: 0,
            body: 1,
            length_line: false,
            chunked_line: false,
            close_line: false,
            http10: false,
            date_line: false,
            skip_body: false,
        }
    }

    fn agree(request: &str, reply: Reply, cuts: Vec<usize>) -> Said {
        let case = Case {
            request: request.as_bytes().to_vec(),
            cuts,
            reply,
        };
        let (own, hyper) = both(&case);
        assert_eq!(own, hyper, "{case:?}");
        own
    }

    #[test]
    fn the_common_request_is_answered_alike() {
        let said = agree("GET /x HTTP/1.1\r\nHost: a\r\n\r\n", reply(), vec![]);
        assert!(said.bytes.contains("GET /x\nhost=a\n"), "{said:?}");
        assert!(!said.closed);
    }

    #[test]
    fn pieces_pipelines_and_handovers_are_answered_alike() {
        let many = "GET /1 HTTP/1.1\r\n\r\nHEAD /2 HTTP/1.1\r\nx: 1\r\n\r\n\
                    POST /3 HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcGET /4 HTTP/1.1\r\n\r\n";
        for body in 0..4 {
            for cuts in [vec![], vec![3, 20, 40], vec![17, 18, 19, 90]] {
                let said = agree(many, Reply { body, ..reply() }, cuts);
                assert_eq!(said.bytes.matches("HTTP/1.1 200 OK").count(), 4, "{said:?}");
            }
        }
    }

    #[test]
    fn requests_with_bodies_are_answered_alike_whole_or_in_pieces() {
        let two = "POST /a HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello\
                   GET /b HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi";
        // Whole (the own side serves both), and cut in the first body or head (hyper
        // takes the connection at that request).
        for cuts in [vec![], vec![40], vec![36], vec![10, 38, 60]] {
            let said = agree(two, reply(), cuts);
            assert!(said.bytes.contains("body=hello"), "{said:?}");
            assert!(said.bytes.contains("body=hi"), "{said:?}");
        }
        // Larger than one read's room (the own side reads on), and larger than it takes
        // (hyper's); whether the service reads the body or answers without it.
        for len in [12_000, 20_000] {
            let big = "x".repeat(len);
            let large = format!(
                "PUT / HTTP/1.1\r\ncontent-length: {len}\r\n\r\n{big}GET / HTTP/1.1\r\n\r\n"
            );
            let said = agree(&large, reply(), vec![]);
            assert!(said.bytes.contains(&big), "the large body is echoed whole");
            let skipped = agree(
                &large,
                Reply {
                    skip_body: true,
                    ..reply()
                },
                vec![],
            );
            assert!(!skipped.bytes.contains(&big), "{skipped:?}");
        }
        for cuts in [vec![], vec![40]] {
            agree(
                two,
                Reply {
                    skip_body: true,
                    ..reply()
                },
                cuts,
            );
        }
        for request in [
            "POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhel",
            "POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 003\r\n\r\nabc",
            "POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
            "POST / HTTP/1.1\r\ncontent-length: 3, 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\nabc",
            "POST / HTTP/1.1\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhiGET / HTTP/1.1\r\n\r\n",
            "HEAD / HTTP/1.1\r\ncontent-length: 2\r\n\r\nhiGET / HTTP/1.1\r\n\r\n",
        ] {
            agree(request, reply(), vec![]);
        }
    }

    #[test]
    fn replies_of_every_kind_are_answered_alike() {
        for status in 0..STATUSES.len() as u8 {
            for body in 0..3 {
                for bits in 0..32u8 {
                    let reply = Reply {
                        status,
                        body,
                        length_line: bits & 1 != 0,
                        chunked_line: bits & 2 != 0,
                        close_line: bits & 4 != 0,
                        http10: bits & 8 != 0,
                        date_line: bits & 16 != 0,
                        skip_body: false,
                    };
                    agree(
                        "GET / HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n",
                        reply,
                        vec![],
                    );
                    agree("HEAD / HTTP/1.1\r\n\r\n", reply, vec![]);
                }
            }
        }
    }

    #[test]
    fn bad_and_odd_requests_are_answered_alike() {
        for request in [
            "GET / HTTP/1.1\r\nconnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nconnection: keep-alive, CLOSE\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\ncontent-length: 0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\ncontent-length: 00\r\n\r\n",
            "GET / HTTP/1.1\r\ncontent-length: 0\r\ncontent-length: 0\r\n\r\n",
            "GET /a\r\nb HTTP/1.1\r\nHost: up\r\n\r\n",
            "GET / HTTP/1.1\r\ncontent-length: 0\r\ncontent-length: 1\r\n\r\nx",
            "GET / HTTP/1.1\r\nx: \x7f\r\n\r\n",
            "GET / HTTP/1.1\r\nx: caf\u{e9}\r\n\r\n",
            "GET / HTTP/1.1\r\nbad line\r\n\r\n",
            "GET http://a:b:c/ HTTP/1.1\r\n\r\n",
            "GET * HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\nnonsense\r\n\r\n",
            "GET / HTTP/1.1\nx: 1\n\n",
            "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ] {
            agree(request, reply(), vec![]);
        }
        // A broken head in pieces: hyper parses again only once a blank line comes.
        agree("\nHost: up\r\nx: 1\r\n", reply(), vec![1]);
        agree("\nHost: up\r\nx: 1\r\n\r\n", reply(), vec![2]);
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000));
        agree(&long, reply(), vec![]);
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "x: 1\r\n".repeat(101));
        agree(&many, reply(), vec![]);
    }
}
