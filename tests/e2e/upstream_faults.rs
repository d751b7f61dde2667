//! An upstream that misbehaves at the wire, end to end: it resets mid-body, half-closes
//! without answering, sends a head and then nothing, drips a byte a second, breaks its
//! chunked framing, or sends interim 1xx responses first. Each has one defined outcome,
//! on a route whose response streams (`streamed`: a breaker only) and on one whose
//! response a filter reads whole (`buffered`: a breaker and the cache):
//!
//! | fault | streamed | buffered |
//! | --- | --- | --- |
//! | reset mid-body | the head, then the body breaks off | 502 `upstream_failed` |
//! | half-close, no answer | 502 `upstream_failed` | 502 `upstream_failed` |
//! | head, then nothing | the head, then the body breaks off after `read_timeout` | 502 `upstream_failed` |
//! | a byte a second | the head, then the body breaks off after `read_timeout` | 502 `upstream_failed` |
//! | malformed chunked framing | the head, then the body breaks off | 502 `upstream_failed` |
//! | 100 and 103 before the answer | the answer | the answer |
//!
//! Every failure reaches the filters' `on-response` (a breaker with a window of one call
//! opens on it, so the next request gets its 503), and no upstream connection stays in
//! flight (`weir_upstream_in_flight` is back to 0).
//!
//! The upstream is raw TCP, so each fault is exactly the bytes (or the close) the test
//! says.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::WAIT;
use crate::support::client::{client, metrics};
use crate::support::weir::Weir;

/// One call in the window, and one failure opens it.
const BREAKER: &str =
    r#"{ use = "breaker", config = { window_size = 1, minimum_calls = 1, wait_in_open = "1h" } }"#;

/// What the raw upstream does on a connection, after reading the request head.
#[derive(Clone)]
enum Step {
    /// Write these bytes.
    Write(&'static [u8]),
    /// Wait this long.
    Sleep(Duration),
    /// Close with a TCP reset.
    Reset,
    /// Shut the write side (FIN) and keep reading.
    HalfClose,
    /// Write `n` bytes, one a second.
    Drip(usize),
}

/// A raw TCP upstream running `steps` on every connection; counts the connections.
struct RawUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start(steps: Vec<Step>) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(run(stream, steps.clone()));
            }
        });
        RawUpstream {
            addr,
            connections,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Reads one request head, then runs `steps`; the connection ends with the task.
async fn run(mut stream: TcpStream, steps: Vec<Step>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    for step in steps {
        match step {
            Step::Write(bytes) => {
                if stream.write_all(bytes).await.is_err() {
                    return;
                }
            }
            Step::Sleep(d) => tokio::time::sleep(d).await,
            Step::Reset => {
                let _ = stream.set_zero_linger();
                return;
            }
            Step::HalfClose => {
                let _ = stream.shutdown().await;
                // Keep reading until the peer closes.
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                return;
            }
            Step::Drip(n) => {
                for _ in 0..n {
                    if stream.write_all(b"x").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
    // Then hold the connection open: the steps said all there is.
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

/// weir with the routes `streamed` and `buffered` to `upstream_url`, timeout 1 s, and
/// the upstream's `read_timeout` 300 ms.
async fn start(upstream_url: &str) -> Weir {
    Weir::start(&format!(
        r#"[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{upstream_url}"
read_timeout = "300ms"

[[routes]]
name = "streamed"
match = {{ path_prefix = "/streamed/" }}
upstream = "api"
timeout = "1s"
filters = [{BREAKER}]

[[routes]]
name = "buffered"
match = {{ path_prefix = "/buffered/" }}
upstream = "api"
timeout = "1s"
filters = [{BREAKER}, "cache"]
"#
    ))
    .await
}

/// What the client got: the status, and the body or how reading it failed.
#[derive(Debug)]
struct Got {
    status: u16,
    body: Result<Vec<u8>, String>,
    took: Duration,
}

async fn get(weir: &Weir, path: &str) -> Got {
    let started = Instant::now();
    let resp = client()
        .get(weir.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map(|b| b.to_vec()).map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        text
    });
    Got {
        status,
        body,
        took: started.elapsed(),
    }
}

/// Checks that `got` is weir's JSON error `code` with `status`.
fn expect_error(got: &Got, status: u16, code: &str) {
    assert_eq!(got.status, status, "{got:?}");
    let body = got.body.as_ref().expect("a whole error body");
    let json: serde_json::Value = serde_json::from_slice(body).expect("a JSON error");
    assert_eq!(json["error"], code, "{json}");
}

/// Checks that the route's breaker heard of the failure: the next request gets the
/// breaker's 503 and the upstream sees no new connection.
async fn expect_breaker_open(weir: &Weir, up: &RawUpstream, route: &str) {
    let before = up.connections();
    let got = get(weir, &format!("/{route}/again")).await;
    expect_error(&got, 503, "breaker_open");
    assert_eq!(
        up.connections(),
        before,
        "a request went past an open breaker"
    );
}

/// Waits until no request to `api` is in flight: nothing leaked.
async fn expect_nothing_in_flight(weir: &Weir) {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = metrics(weir).await;
        let in_flight = text
            .lines()
            .find(|l| l.starts_with("weir_upstream_in_flight{upstream=\"api\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.to_owned());
        if in_flight.as_deref() == Some("0") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "an upstream request stayed in flight: {in_flight:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A head whose body the streamed route has begun to forward, then a body that breaks
/// off (a reset, broken framing) or stalls past the upstream's `read_timeout`: the
/// client gets the head and a body that ends early, at once.
fn expect_broken_body(got: &Got) {
    assert_eq!(got.status, 200, "{got:?}");
    assert!(got.body.is_err(), "the body was whole: {got:?}");
    assert!(got.took < Duration::from_secs(1) + WAIT / 6, "{got:?}");
}

/// A fault after the head: the streamed route's body breaks off, the buffered route
/// gets 502 `upstream_failed`, its breaker heard of it, and nothing stays in flight.
async fn expect_fault_after_the_head(steps: Vec<Step>) {
    let up = RawUpstream::start(steps).await;
    let weir = start(&up.url()).await;
    expect_broken_body(&get(&weir, "/streamed/x").await);
    expect_error(&get(&weir, "/buffered/x").await, 502, "upstream_failed");
    expect_breaker_open(&weir, &up, "buffered").await;
    expect_nothing_in_flight(&weir).await;
}

#[tokio::test]
async fn a_reset_mid_body() {
    expect_fault_after_the_head(vec![
        Step::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789"),
        Step::Sleep(Duration::from_millis(50)),
        Step::Reset,
    ])
    .await;
}

#[tokio::test]
async fn a_half_close_without_an_answer() {
    // A weir each: both routes' breakers key on the one upstream origin.
    for route in ["streamed", "buffered"] {
        let up = RawUpstream::start(vec![Step::HalfClose]).await;
        let weir = start(&up.url()).await;
        expect_error(
            &get(&weir, &format!("/{route}/x")).await,
            502,
            "upstream_failed",
        );
        expect_breaker_open(&weir, &up, route).await;
        expect_nothing_in_flight(&weir).await;
    }
}

#[tokio::test]
async fn a_head_and_then_nothing() {
    expect_fault_after_the_head(vec![Step::Write(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
    )])
    .await;
}

#[tokio::test]
async fn a_body_dripped_a_byte_a_second() {
    expect_fault_after_the_head(vec![
        Step::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 60\r\n\r\n"),
        Step::Drip(60),
    ])
    .await;
}

#[tokio::test]
async fn malformed_chunked_framing() {
    expect_fault_after_the_head(vec![Step::Write(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n",
    )]).await;
}

#[tokio::test]
async fn interim_responses_before_the_answer() {
    let up = RawUpstream::start(vec![Step::Write(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello",
    )])
    .await;
    let weir = start(&up.url()).await;
    for route in ["streamed", "buffered"] {
        let got = get(&weir, &format!("/{route}/x")).await;
        assert_eq!(got.status, 200, "{got:?}");
        assert_eq!(got.body.as_deref(), Ok(&b"hello"[..]), "{got:?}");
    }
    expect_nothing_in_flight(&weir).await;
}
