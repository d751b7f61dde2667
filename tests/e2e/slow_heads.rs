//! `listen.header_read_timeout` on real connections: a connection that has not sent a
//! whole request head within the timeout (from its accept, or from its last response on
//! keep-alive) is closed, and one with a request in hand is not, however long the
//! upstream or the response body takes.
//!
//! Each assertion on time is a lower bound (weir never closes a connection before the
//! timeout) or a generous upper one ([`WAIT`]): nothing depends on how busy the machine is.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::WAIT;
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::Weir;

/// The configured `header_read_timeout`.
const TIMEOUT: Duration = Duration::from_millis(400);

/// Longer than [`TIMEOUT`]: how long the upstream takes on `/slow` and `/stream`.
const LONG: Duration = Duration::from_millis(1500);

async fn start() -> (Upstream, Weir) {
    let up = Upstream::start(|req, _| match req.path.as_str() {
        "/slow" => Reply::ok().delay(LONG).body("slow"),
        "/stream" => Reply::ok().chunks(vec![
            (Duration::ZERO, Bytes::from_static(b"first,")),
            (LONG, Bytes::from_static(b"last")),
        ]),
        _ => Reply::ok().body("quick"),
    })
    .await;
    let weir = Weir::start(&format!(
        r#"[listen]
addr = "127.0.0.1:0"
header_read_timeout = "{}ms"

[upstreams.api]
url = "{}"

[[routes]]
name = "all"
upstream = "api"
timeout = "30s"
"#,
        TIMEOUT.as_millis(),
        up.url()
    ))
    .await;
    (up, weir)
}

/// Reads until weir closes the connection; returns what came.
async fn read_to_close(conn: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("weir closed the connection within WAIT");
    got
}

/// Reads one whole response (the head and a body of `content-length` bytes, or a
/// chunked body to its last chunk) and returns it as text.
async fn read_response(conn: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let head = text[..end].to_ascii_lowercase();
                let whole = match head.lines().find_map(|l| l.strip_prefix("content-length:")) {
                    Some(len) => text.len() >= end + 4 + len.trim().parse::<usize>().unwrap(),
                    None => text.ends_with("0\r\n\r\n"),
                };
                if whole {
                    return text;
                }
            }
            let n = conn.read(&mut chunk).await.expect("read the response");
            assert!(n > 0, "weir closed the connection mid-response: {text:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("weir answered within WAIT")
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: weir.test\r\n\r\n")
}

#[tokio::test]
async fn a_connection_without_a_whole_head_is_closed_after_the_timeout_and_not_before() {
    let (up, weir) = start().await;

    // One connection sends nothing at all, another half a head.
    let accepted = Instant::now();
    let mut silent = TcpStream::connect(weir.addr()).await.unwrap();
    let mut partial = TcpStream::connect(weir.addr()).await.unwrap();
    partial
        .write_all(b"GET /quick HTTP/1.1\r\nhost: weir.test\r\n")
        .await
        .unwrap();

    for conn in [&mut silent, &mut partial] {
        let got = read_to_close(conn).await;
        assert!(got.is_empty(), "no answer to no request: {got:?}");
    }
    let waited = accepted.elapsed();
    assert!(
        waited >= TIMEOUT,
        "closed after {waited:?}, before the timeout"
    );
    assert_eq!(up.count(), 0, "nothing reached the upstream");

    // weir goes on serving new connections.
    let mut conn = TcpStream::connect(weir.addr()).await.unwrap();
    conn.write_all(get("/quick").as_bytes()).await.unwrap();
    let resp = read_response(&mut conn).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[tokio::test]
async fn a_request_in_hand_is_never_cut_and_the_wait_restarts_after_its_response() {
    let (up, weir) = start().await;
    let mut conn = TcpStream::connect(weir.addr()).await.unwrap();

    // The upstream takes longer than the timeout to answer.
    conn.write_all(get("/slow").as_bytes()).await.unwrap();
    let resp = read_response(&mut conn).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("slow"), "{resp}");

    // The response body takes longer than the timeout to stream.
    conn.write_all(get("/stream").as_bytes()).await.unwrap();
    let resp = read_response(&mut conn).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains("first,") && resp.contains("last"),
        "the whole body came: {resp:?}"
    );

    // The same connection takes the next request at once...
    conn.write_all(get("/quick").as_bytes()).await.unwrap();
    let resp = read_response(&mut conn).await;
    assert!(resp.ends_with("quick"), "{resp}");
    let answered = Instant::now();

    // ...and is closed once it has been idle longer than the timeout.
    let got = read_to_close(&mut conn).await;
    assert!(got.is_empty(), "nothing more came: {got:?}");
    let idle = answered.elapsed();
    assert!(idle >= TIMEOUT, "closed {idle:?} after the last response");

    let seen: Vec<String> = up.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(seen, ["/slow", "/stream", "/quick"]);
}
