//! weir's own HTTP/1 exchange and hyper's client connection, each given the same
//! upstream bytes: what each made of them. The `h1_response` fuzz target
//! (`fuzz/fuzz_targets/h1_response.rs`) asserts that the two agree, and the tests below
//! keep the cases where they once did not.
//!
//! The own exchange replaced hyper's client for requests without a body or with a small
//! one in hand, so hyper's
//! client is its oracle: for any bytes an upstream sends, a client of weir should see
//! the same status, headers, body and trailers as before, and an error where there was
//! one. The other way too: the upstream must be asked the same thing by both, the same
//! method, target, headers and body, with the body framed by the same length. Where a
//! body ends matters as much: a connection reused after a body that ended too early or
//! too late reads the rest of one response as the next. So each side, when
//! it keeps the connection, sends a second request on it, which the upstream answers
//! with [`SECOND`]; the own side must read exactly that.
//!
//! Everything runs in memory on one thread with tokio's clock paused, so a run is
//! deterministic: time moves only when every task waits, which first ends the
//! upstream's wait for a second request, and then, only if a side waits for ever (a
//! bug), that side's exchange, as [`Outcome::Hung`]. Built for tests and the fuzz
//! target only (`cfg(fuzzing)`), with tokio's `test-util`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio::sync::oneshot;

use super::h1::Conn1;

/// What the upstream answers to a second request on the same connection.
pub const SECOND: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext";

/// How long the upstream waits for a second request before it closes (on the paused
/// clock: only once every side waits).
const SECOND_WAIT: Duration = Duration::from_secs(1);

/// How long an exchange may wait before it counts as hung (on the paused clock).
const HUNG_AFTER: Duration = Duration::from_secs(60);

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
    /// The exchange never ended, though the upstream had closed the connection.
    Hung,
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

/// One side's run: the first exchange, and the second one if the side kept the
/// connection for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub first: Outcome,
    pub second: Option<Outcome>,
    /// What the upstream was asked, in order: each request it read whole.
    pub asked: Vec<Asked>,
}

/// A request as the upstream read it: what an HTTP/1 server makes of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub method: String,
    pub target: String,
    /// Every header line but the framing ones, sorted: each side orders them its own way.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The `Content-Length` and `Transfer-Encoding` lines, sorted.
    pub framing: Vec<(String, Vec<u8>)>,
    /// The body, by its `Content-Length`.
    pub body: Vec<u8>,
}

impl Outcome {
    /// Whether a client would tell `self` and `other` apart: a different head, a body
    /// that ended whole against one cut short, or whole bodies that differ. The data
    /// before a cut and the errors' words may differ (each reads in its own steps).
    pub fn differs_from(&self, other: &Outcome) -> bool {
        match (self, other) {
            (Outcome::NoResponse(_), Outcome::NoResponse(_)) => false,
            (Outcome::Hung, Outcome::Hung) => false,
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

    /// Whether this is a response whose body ended at its framing's end.
    pub fn ended_whole(&self) -> bool {
        matches!(
            self,
            Outcome::Response {
                body: BodyOutcome::Whole { .. },
                ..
            }
        )
    }

    /// Whether this is the upstream's answer to the second request, [`SECOND`].
    pub fn is_second(&self) -> bool {
        *self
            == Outcome::Response {
                status: 200,
                headers: vec![("content-length".into(), b"4".to_vec())],
                body: BodyOutcome::Whole {
                    data: b"next".to_vec(),
                    trailers: None,
                },
            }
    }
}

impl Run {
    /// What is wrong with the own side's run against hyper's, if anything: it hung; it
    /// asked the upstream something else; its first exchange differs from hyper's; or it
    /// kept the connection and its second exchange read something other than [`SECOND`]
    /// that hyper's did not (a body that ended at another byte). The own side may keep a
    /// connection hyper would not, if it reads the second answer right, and close one
    /// hyper would keep.
    pub fn fault(own: &Run, hyper: &Run) -> Option<&'static str> {
        if own.first == Outcome::Hung || own.second == Some(Outcome::Hung) {
            return Some("the own exchange hung");
        }
        // Each side sends the same request each time: every one the upstream read, from
        // either side, must be hyper's first.
        let want = hyper.asked.first();
        if own.asked.first() != want
            || own
                .asked
                .iter()
                .chain(&hyper.asked)
                .any(|a| Some(a) != want)
        {
            return Some("the upstream was asked something else");
        }
        if own.first.differs_from(&hyper.first) {
            return Some("the first responses differ");
        }
        match (&own.second, &hyper.second) {
            (Some(o), _) if o.is_second() => None,
            // Both read the same wrong answer: the upstream's bytes, not the framing.
            (Some(o), Some(h)) if !o.differs_from(h) => None,
            (Some(_), _) => Some("the kept connection read something else as the next answer"),
            (None, _) => None,
        }
    }
}

/// What is asked of the upstream and how it answers.
#[derive(Debug, Clone)]
pub struct Case {
    /// `HEAD` rather than `GET` (when there is no `body`).
    pub head: bool,
    /// A `POST` with this body instead, whole in memory (the own exchange takes up to
    /// 16 KiB).
    pub body: Option<Vec<u8>>,
    /// The request asks to close the connection (`Connection: close`).
    pub close: bool,
    /// What the upstream sends once the whole request (head and body) has come. Then it
    /// waits for a second request (answered with [`SECOND`]) until every side waits, and
    /// closes.
    pub reply: Vec<u8>,
    /// Where the upstream pauses while sending `reply` (offsets into it), so that each
    /// side reads it in pieces.
    pub cuts: Vec<usize>,
}

/// The own exchange's run and hyper's, for `case`.
pub fn both(case: &Case) -> (Run, Run) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async { (own(case).await, hyper(case).await) })
}

/// What `exchange` gave, or `None` if it hung.
async fn within<T>(exchange: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(HUNG_AFTER, exchange).await.ok()
}

fn request(case: &Case) -> Request<Full<Bytes>> {
    let method = match (&case.body, case.head) {
        (Some(_), _) => Method::POST,
        (None, true) => Method::HEAD,
        (None, false) => Method::GET,
    };
    let mut req = Request::builder()
        .method(method)
        .uri("/r")
        .header("host", "up.example");
    if case.close {
        req = req.header("connection", "close");
    }
    req.body(Full::new(body(case))).expect("a valid request")
}

fn body(case: &Case) -> Bytes {
    case.body.clone().map(Bytes::from).unwrap_or_default()
}

async fn own(case: &Case) -> Run {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (written, replied) = oneshot::channel();
    let asked = Arc::default();
    tokio::spawn(upstream(theirs, case.clone(), written, Arc::clone(&asked)));
    let (first, kept) = within(own_exchange(Conn1::new(ours), case))
        .await
        .unwrap_or((Outcome::Hung, None));
    // As the pool does when it takes an idle connection: once the upstream has sent
    // all it had, a connection that has bytes or an end waiting is not used again.
    let _ = replied.await;
    let second = match kept.and_then(|mut conn| conn.looks_open().then_some(conn)) {
        Some(conn) => Some(
            within(own_exchange(conn, case))
                .await
                .map_or(Outcome::Hung, |(second, _)| second),
        ),
        None => None,
    };
    Run {
        first,
        second,
        asked: taken(&asked),
    }
}

fn taken(asked: &Mutex<Vec<Asked>>) -> Vec<Asked> {
    std::mem::take(&mut asked.lock().expect("no task panics holding it"))
}

/// One request on an own connection: what the client was given, and the connection if
/// it can serve another.
async fn own_exchange(
    mut conn: Conn1<DuplexStream>,
    case: &Case,
) -> (Outcome, Option<Conn1<DuplexStream>>) {
    let asked = conn.prepare(&request(case), body(case));
    match conn.send(asked).await {
        Ok(resp) => {
            let (outcome, body) = outcome(resp).await;
            (outcome, body.and_then(|mut body| body.take_conn()))
        }
        Err(e) => (Outcome::NoResponse(e.to_string()), None),
    }
}

async fn hyper(case: &Case) -> Run {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (written, replied) = oneshot::channel();
    let asked = Arc::default();
    tokio::spawn(upstream(theirs, case.clone(), written, Arc::clone(&asked)));
    // As weir's pool makes its hyper connections (`upstream::hyper_h1`).
    let (mut sender, conn) = match hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(ours))
        .await
    {
        Ok(pair) => pair,
        Err(e) => {
            return Run {
                first: Outcome::NoResponse(e.to_string()),
                second: None,
                asked: taken(&asked),
            };
        }
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let first = within(hyper_exchange(&mut sender, case))
        .await
        .unwrap_or(Outcome::Hung);
    let _ = replied.await;
    // Its connection task runs until it waits: it has seen whatever came after the
    // response, and closed the connection if it will not be used again.
    tokio::task::yield_now().await;
    let kept = first.ended_whole()
        && tokio::time::timeout(Duration::ZERO, sender.ready())
            .await
            .is_ok_and(|ready| ready.is_ok());
    let second = if kept {
        Some(
            within(hyper_exchange(&mut sender, case))
                .await
                .unwrap_or(Outcome::Hung),
        )
    } else {
        None
    };
    Run {
        first,
        second,
        asked: taken(&asked),
    }
}

/// One request on hyper's connection: what the client was given.
async fn hyper_exchange(sender: &mut SendRequest<Full<Bytes>>, case: &Case) -> Outcome {
    match sender.send_request(request(case)).await {
        Ok(resp) => outcome(resp).await.0,
        Err(e) => Outcome::NoResponse(e.to_string()),
    }
}

/// What a client makes of `resp`, and its body once it has ended whole (for the own
/// side to take its connection back).
async fn outcome<B>(resp: http::Response<B>) -> (Outcome, Option<B>)
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (parts, mut body) = resp.into_parts();
    let mut data = Vec::new();
    let mut trailers = None;
    let ended = loop {
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
    let whole = matches!(ended, BodyOutcome::Whole { .. });
    let outcome = Outcome::Response {
        status: parts.status.as_u16(),
        headers: fields(&parts.headers),
        body: ended,
    };
    (outcome, whole.then_some(body))
}

fn fields(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// Reads the request, sends the reply in its pieces and says so on `written`, answers a
/// second request with [`SECOND`] if one comes before every side waits, and closes. Each
/// request read whole goes on `asked`.
async fn upstream(
    mut io: DuplexStream,
    case: Case,
    written: oneshot::Sender<()>,
    asked: Arc<Mutex<Vec<Asked>>>,
) {
    let got = |request: Asked| asked.lock().expect("one task at a time").push(request);
    match read_request(&mut io).await {
        Some(request) => got(request),
        None => return,
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
    let _ = written.send(());
    if let Ok(Some(request)) = tokio::time::timeout(SECOND_WAIT, read_request(&mut io)).await {
        got(request);
        let _ = io.write_all(SECOND).await;
    }
}

/// Reads a request head and the body its `Content-Length` gives; `None` if the
/// connection ends first. A head that does not parse, or a `Content-Length` that is not
/// a number, is a side's bug: it panics (a crash for the fuzz target; in a unit test the
/// request goes missing, which [`Run::fault`] reports).
async fn read_request(io: &mut DuplexStream) -> Option<Asked> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match io.read(&mut byte).await {
            Ok(1) => got.push(byte[0]),
            _ => return None,
        }
    }
    let mut lines = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Request::new(&mut lines);
    assert!(
        head.parse(&got).is_ok_and(|status| status.is_complete()),
        "a side sent a head that does not parse: {:?}",
        String::from_utf8_lossy(&got)
    );
    let (mut headers, mut framing) = (Vec::new(), Vec::new());
    for line in head.headers.iter() {
        let field = (line.name.to_ascii_lowercase(), line.value.to_vec());
        match field.0.as_str() {
            "content-length" | "transfer-encoding" => framing.push(field),
            _ => headers.push(field),
        }
    }
    headers.sort();
    framing.sort();
    let length = framing
        .iter()
        .find(|(name, _)| name == "content-length")
        .map_or(0, |(_, value)| {
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .expect("a side sent a Content-Length that is not a number")
        });
    let mut body = vec![0; length];
    io.read_exact(&mut body).await.ok()?;
    Some(Asked {
        method: head.method?.to_owned(),
        target: head.path?.to_owned(),
        headers,
        framing,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(reply: &[u8]) -> Case {
        Case {
            head: false,
            body: None,
            close: false,
            reply: reply.to_vec(),
            cuts: vec![],
        }
    }

    #[track_caller]
    fn agree(case: &Case) -> Outcome {
        let (own, hyper) = both(case);
        assert_eq!(
            Run::fault(&own, &hyper),
            None,
            "for {case:?}\n own: {own:?}\nhyper: {hyper:?}"
        );
        own.first
    }

    #[test]
    fn a_kept_connection_serves_the_next_request() {
        for reply in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ] {
            let mut case = case(reply);
            case.cuts = vec![10, 40];
            let (own, hyper) = both(&case);
            assert_eq!(Run::fault(&own, &hyper), None);
            assert!(
                own.second.as_ref().is_some_and(Outcome::is_second),
                "{own:?}"
            );
            assert!(
                hyper.second.as_ref().is_some_and(Outcome::is_second),
                "{hyper:?}"
            );
        }
        // Not kept: asked to close, told to close, read to the end, or more bytes than
        // the response came (at once or later).
        let mut asked = case(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        asked.close = true;
        let mut later =
            case(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n");
        later.cuts = vec![40];
        for case in [
            asked,
            case(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"),
            case(b"HTTP/1.1 200 OK\r\n\r\nto the end"),
            case(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA"),
            later,
        ] {
            let (own, hyper) = both(&case);
            assert_eq!(Run::fault(&own, &hyper), None);
            assert_eq!(own.second, None, "{case:?}");
        }
    }

    #[test]
    fn both_ask_the_upstream_the_same() {
        for len in [0, 5, 4096, 16 * 1024] {
            for close in [false, true] {
                let mut case = case(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                case.body = Some(vec![b'b'; len]);
                case.close = close;
                let (own, hyper) = both(&case);
                assert_eq!(Run::fault(&own, &hyper), None, "{len} bytes, close {close}");
                // Asked to close, the own side sends no second request.
                assert_eq!(own.asked.len(), if close { 1 } else { 2 }, "{own:?}");
                let first = &own.asked[0];
                assert_eq!((first.method.as_str(), first.body.len()), ("POST", len));
                // An empty body has no framing line: a client's `Content-Length: 0` on
                // a `POST` is the pool's (`say_empty_content`), not the connection's.
                let framing = match len {
                    0 => vec![],
                    len => vec![("content-length".to_owned(), len.to_string().into_bytes())],
                };
                assert_eq!(first.framing, framing);
            }
        }
    }

    #[test]
    fn a_request_asked_otherwise_is_a_fault() {
        let mut case = case(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        case.body = Some(b"hello".to_vec());
        let (own, hyper) = both(&case);
        assert_eq!(Run::fault(&own, &hyper), None);
        assert_eq!(
            (own.asked.len(), hyper.asked.len()),
            (2, 2),
            "{own:?}\n{hyper:?}"
        );
        let mut longer = own.clone();
        longer.asked[0].body.push(b'!');
        let mut reframed = own.clone();
        reframed.asked[1]
            .framing
            .push(("transfer-encoding".into(), b"chunked".to_vec()));
        // A second request hyper did not send is held to hyper's first.
        let mut closed = hyper.clone();
        closed.asked.truncate(1);
        let mut missing = own.clone();
        missing.asked.clear();
        for (own, hyper) in [
            (longer, &hyper),
            (reframed.clone(), &hyper),
            (reframed, &closed),
            (missing, &hyper),
        ] {
            assert_eq!(
                Run::fault(&own, hyper),
                Some("the upstream was asked something else")
            );
        }
    }

    #[test]
    fn the_limits_are_hypers() {
        let chunked = |rest: &[u8]| {
            case(
                &[
                    &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"[..],
                    rest,
                ]
                .concat(),
            )
        };
        let ext = |n: usize| [b"1;".as_slice(), &vec![b'e'; n], b"\r\nx\r\n"].concat();
        let whole = Outcome::ended_whole;
        // Chunk extensions: fewer than 16384 bytes in the whole body.
        let ok = agree(&chunked(
            &[ext(8000), ext(8383), b"0\r\n\r\n".to_vec()].concat(),
        ));
        assert!(whole(&ok), "{ok:?}");
        let cut = agree(&chunked(
            &[ext(8000), ext(8384), b"0\r\n\r\n".to_vec()].concat(),
        ));
        assert!(!whole(&cut), "{cut:?}");
        // The trailer section: fewer than 16384 bytes, at most 100 lines.
        let section = |len: usize| {
            let field = b"x-t: ".len() + 2;
            [
                b"0\r\nx-t: ".as_slice(),
                &vec![b'v'; len - field - 2],
                b"\r\n\r\n",
            ]
            .concat()
        };
        assert!(whole(&agree(&chunked(&section(16383)))));
        assert!(!whole(&agree(&chunked(&section(16384)))));
        let lines =
            |n: usize| [b"0\r\n".to_vec(), b"x-t: 1\r\n".repeat(n), b"\r\n".to_vec()].concat();
        assert!(whole(&agree(&chunked(&lines(100)))));
        assert!(!whole(&agree(&chunked(&lines(101)))));
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
            // `agree` has already failed on a hung exchange: this is no response, or a
            // cut body.
            let got = agree(&case(reply));
            assert!(
                !got.ended_whole(),
                "{:?} gave {got:?}",
                String::from_utf8_lossy(reply)
            );
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
