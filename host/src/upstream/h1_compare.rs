//! weir's own HTTP/1 exchange and hyper's client connection, each given the same
//! upstream bytes: what each made of them. The `h1_response` fuzz target
//! (`fuzz/fuzz_targets/h1_response.rs`) asserts that the two agree, and the tests below
//! keep the cases where they once did not.
//!
//! The own exchange replaced hyper's client for requests without a body, so hyper's
//! client is its oracle: for any bytes an upstream sends, a client of weir should see
//! the same status, headers, body and trailers as before, and an error where there was
//! one. Not part of weir's interface: it is public only for the fuzz target.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::h1::Conn1;

/// What a client was given for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No response: the exchange failed before a whole final head came.
    NoResponse(String),
    /// A response head, and how its body ended.
    Response {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: BodyOutcome,
    },
}

/// How a response body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyOutcome {
    /// At its framing's end: all its data, and its trailers if it had any.
    Whole {
        data: Vec<u8>,
        trailers: Option<Vec<(String, Vec<u8>)>>,
    },
    /// With an error, after this much data.
    Cut { data: Vec<u8>, error: String },
}

impl Outcome {
    /// Whether a client would tell `self` and `other` apart: a different head, a body
    /// that ended whole against one cut short, or whole bodies that differ. The data
    /// before a cut and the errors' words may differ (each reads in its own steps).
    pub fn differs_from(&self, other: &Outcome) -> bool {
        match (self, other) {
            (Outcome::NoResponse(_), Outcome::NoResponse(_)) => false,
            (
                Outcome::Response {
                    status: s1,
                    headers: h1,
                    body: b1,
                },
                Outcome::Response {
                    status: s2,
                    headers: h2,
                    body: b2,
                },
            ) => {
                s1 != s2
                    || h1 != h2
                    || match (b1, b2) {
                        (BodyOutcome::Cut { .. }, BodyOutcome::Cut { .. }) => false,
                        (w1 @ BodyOutcome::Whole { .. }, w2 @ BodyOutcome::Whole { .. }) => {
                            w1 != w2
                        }
                        _ => true,
                    }
            }
            _ => true,
        }
    }
}

/// What the upstream is asked and how it answers.
#[derive(Debug, Clone)]
pub struct Case {
    /// `HEAD` rather than `GET`.
    pub head: bool,
    /// The request asks to close the connection (`Connection: close`).
    pub close: bool,
    /// What the upstream sends once the request head has come, before closing.
    pub reply: Vec<u8>,
    /// Where the upstream pauses while sending `reply` (offsets into it), so that each
    /// side reads it in pieces.
    pub cuts: Vec<usize>,
}

/// The own exchange's outcome and hyper's, for `case`.
pub fn both(case: &Case) -> (Outcome, Outcome) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        // Everything is in memory: a side still waiting after a second waits for ever
        // (a bug), and fails rather than hanging the fuzzer.
        let own = within(own(case)).await;
        let hyper = within(hyper(case)).await;
        (own, hyper)
    })
}

async fn within(exchange: impl Future<Output = Outcome>) -> Outcome {
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .unwrap_or_else(|_| Outcome::NoResponse("never ended".into()))
}

fn request(case: &Case) -> Request<Empty<Bytes>> {
    let mut req = Request::builder()
        .method(if case.head { Method::HEAD } else { Method::GET })
        .uri("/r")
        .header("host", "up.example");
    if case.close {
        req = req.header("connection", "close");
    }
    req.body(Empty::new()).expect("a valid request")
}

async fn own(case: &Case) -> Outcome {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    tokio::spawn(upstream(theirs, case.clone()));
    let req = request(case);
    let mut conn = Conn1::new(ours);
    let asked = conn.prepare(&req);
    match conn.send(asked).await {
        Ok(resp) => outcome(resp).await,
        Err(e) => Outcome::NoResponse(e.to_string()),
    }
}

async fn hyper(case: &Case) -> Outcome {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    tokio::spawn(upstream(theirs, case.clone()));
    // As weir's pool makes its hyper connections (`upstream::hyper_h1`).
    let (mut sender, conn) = match hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(ours))
        .await
    {
        Ok(pair) => pair,
        Err(e) => return Outcome::NoResponse(e.to_string()),
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    match sender.send_request(request(case)).await {
        Ok(resp) => outcome(resp).await,
        Err(e) => Outcome::NoResponse(e.to_string()),
    }
}

async fn outcome<B>(resp: http::Response<B>) -> Outcome
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (parts, mut body) = resp.into_parts();
    let mut data = Vec::new();
    let mut trailers = None;
    let body = loop {
        match body.frame().await {
            None => break BodyOutcome::Whole { data, trailers },
            Some(Err(e)) => {
                break BodyOutcome::Cut {
                    data,
                    error: e.to_string(),
                };
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(fields(&t));
                    }
                }
            },
        }
    };
    Outcome::Response {
        status: parts.status.as_u16(),
        headers: fields(&parts.headers),
        body,
    }
}

fn fields(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// Reads the request head, sends the reply in its pieces, then closes.
async fn upstream(mut io: DuplexStream, case: Case) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let mut cuts: Vec<usize> = case.cuts.iter().map(|&c| c.min(case.reply.len())).collect();
    cuts.sort_unstable();
    let mut from = 0;
    for to in cuts.into_iter().chain([case.reply.len()]) {
        // The client side may have given up and dropped its end: nothing more to do.
        if io.write_all(&case.reply[from..to]).await.is_err() {
            return;
        }
        from = to;
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(reply: &[u8]) -> Case {
        Case {
            head: false,
            close: false,
            reply: reply.to_vec(),
            cuts: vec![],
        }
    }

    #[track_caller]
    fn agree(case: &Case) -> Outcome {
        let (own, hyper) = both(case);
        assert!(
            !own.differs_from(&hyper),
            "for {case:?}\n own: {own:?}\nhyper: {hyper:?}"
        );
        own
    }

    #[test]
    fn the_two_agree_on_plain_framings() {
        let whole = |data: &[u8]| BodyOutcome::Whole {
            data: data.to_vec(),
            trailers: None,
        };
        let got = agree(&case(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"));
        assert!(
            matches!(got, Outcome::Response { status: 200, ref body, .. } if *body == whole(b"hello"))
        );
        let mut chunked = case(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n",
        );
        chunked.cuts = vec![20, 50, 51, 60];
        let got = agree(&chunked);
        assert!(
            matches!(got, Outcome::Response { body: BodyOutcome::Whole { ref data, trailers: Some(ref t) }, .. } if data == b"abc" && t.len() == 1)
        );
        let got = agree(&case(b"HTTP/1.1 200 OK\r\n\r\nto the end"));
        assert!(matches!(got, Outcome::Response { ref body, .. } if *body == whole(b"to the end")));
        let mut head = case(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n");
        head.head = true;
        let got = agree(&head);
        assert!(matches!(got, Outcome::Response { ref body, .. } if *body == whole(b"")));
    }

    #[test]
    fn the_two_agree_on_broken_replies() {
        for reply in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcX",
            b"HTTP/1.1 20",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            b"",
        ] {
            let got = agree(&case(reply));
            let cut = matches!(
                got,
                Outcome::NoResponse(_)
                    | Outcome::Response {
                        body: BodyOutcome::Cut { .. },
                        ..
                    }
            );
            assert!(cut, "{:?} gave {got:?}", String::from_utf8_lossy(reply));
        }
    }

    /// Replies on which the `h1_response` fuzz target found the two apart, now agreeing.
    #[test]
    fn what_the_fuzzer_found() {
        for reply in [
            // A `Transfer-Encoding` that is not visible ASCII is not chunked: the body
            // runs to the connection's end.
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: g\xbazip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
            // hyper refuses the two largest lengths.
            b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551614\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551613\r\n\r\nabc",
            // hyper counts the trailer lines that end in CRLF, and refuses a section in
            // which httparse finds more fields than that (here, one ended by a bare LF).
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nz\r\n0\r\nx-s: 1\nx-more: 2\r\n\r\n",
        ] {
            agree(&case(reply));
        }
    }

    #[test]
    fn a_difference_is_told_apart() {
        let ok = |data: &[u8]| Outcome::Response {
            status: 200,
            headers: vec![],
            body: BodyOutcome::Whole {
                data: data.to_vec(),
                trailers: None,
            },
        };
        let cut = |data: &[u8], error: &str| Outcome::Response {
            status: 200,
            headers: vec![],
            body: BodyOutcome::Cut {
                data: data.to_vec(),
                error: error.into(),
            },
        };
        assert!(ok(b"a").differs_from(&ok(b"b")));
        assert!(ok(b"a").differs_from(&cut(b"a", "x")));
        assert!(ok(b"a").differs_from(&Outcome::NoResponse("x".into())));
        assert!(!cut(b"a", "x").differs_from(&cut(b"", "y")));
        assert!(!Outcome::NoResponse("x".into()).differs_from(&Outcome::NoResponse("y".into())));
    }
}
