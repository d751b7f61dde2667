//! Slow clients on real connections.
//!
//! `listen.header_read_timeout`: a connection that has not sent a whole request head
//! within the timeout (from its accept, TLS handshake included, or from its last
//! response on keep-alive) is closed, and one with a request in hand is not, however
//! long the upstream, the request body or the response's delivery takes.
//!
//! `listen.send_timeout`: a connection that takes none of its response for longer is
//! closed, and the upstream connection the response held goes to the next request.
//!
//! Each assertion on time is a lower bound (weir never closes a connection before the
//! timeout) or a generous upper one ([`WAIT`]). The one thing timed on the client's side
//! is that it sends its next request well within [`TIMEOUT`] (a second) of the last
//! response.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::WAIT;
use crate::support::client::{client, metrics};
use crate::support::tls::Pki;
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::{Weir, WeirBuilder};

/// The configured `header_read_timeout` (the sweep checks every quarter of it).
const TIMEOUT: Duration = Duration::from_secs(1);

/// Longer than [`TIMEOUT`] and the three checks after it: how long the upstream takes
/// on `/slow` and `/stream`, and the client to send `/upload`'s body.
const LONG: Duration = Duration::from_millis(2500);

/// The size of `/big`'s body: more than a socket's largest send buffer here (4 MiB,
/// `net.ipv4.tcp_wmem`), so part of a response handed over whole stays in weir.
const BIG: u64 = 6 << 20;

/// The size of `/huge`'s body: 24 MiB, or four times the most a socket's send buffer
/// may hold on this machine (`net.ipv4.tcp_wmem`, 4 MiB by default) if that is more. A
/// client that reads none of it leaves most of it unsent, and a reader takes most of it
/// after weir's first stalled write.
fn huge() -> u64 {
    let send_buffer_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse::<u64>().ok())
        .unwrap_or(4 << 20);
    (24 << 20).max(4 * send_buffer_max)
}

fn upstream() -> impl Fn(&crate::support::upstream::Recorded, usize) -> Reply + Send + Sync {
    |req, _| match req.path.as_str() {
        "/slow" => Reply::ok().delay(LONG).body("slow"),
        "/stream" => Reply::ok().chunks(vec![
            (Duration::ZERO, Bytes::from_static(b"first,")),
            (LONG, Bytes::from_static(b"last")),
        ]),
        "/big" => Reply::ok()
            .header("cache-control", "max-age=600")
            .pattern(BIG),
        "/huge" => Reply::ok().pattern(huge()),
        "/upload" => Reply::ok().body(format!("got {}", req.body_len)),
        _ => Reply::ok().body("quick"),
    }
}

/// weir with `header_read_timeout = timeout` (and `listen_extra` in `[listen]`) in front
/// of an upstream that answers as [`upstream`] says, through `filters`; `tail` ends the
/// config.
async fn start_with(
    timeout: Duration,
    listen_extra: &str,
    filters: &str,
    tail: &str,
    pki: Option<&Pki>,
) -> (Upstream, Weir) {
    let up = Upstream::start(upstream()).await;
    let mut weir = WeirBuilder::new(format!(
        r#"[listen]
addr = "127.0.0.1:0"
header_read_timeout = "{}ms"
{listen_extra}

[upstreams.api]
url = "{}"

[[routes]]
name = "all"
upstream = "api"
timeout = "30s"
filters = [{filters}]
{tail}
"#,
        timeout.as_millis(),
        up.url()
    ));
    if let Some(pki) = pki {
        weir = weir.files(pki.files());
    }
    (up, weir.start().await)
}

/// As [`start_with`], through the cache with room for `/big` (one shard of state, so
/// that the 6 MiB entry fits in it).
async fn start_cached(timeout: Duration) -> (Upstream, Weir) {
    let cache = r#"{ use = "cache", config = { max_entry_bytes = "7MiB" } }"#;
    let state = "[state]\nmax_bytes = \"7MiB\"";
    start_with(timeout, "", cache, state, None).await
}

async fn start() -> (Upstream, Weir) {
    start_with(TIMEOUT, "", "", "", None).await
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

/// Reads one response with a body of `len` bytes, at most 64 KiB a read and with
/// `pause` before each (none: as fast as it comes); panics if weir closes the
/// connection first.
async fn read_paced(conn: &mut TcpStream, len: u64, pause: Option<Duration>) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let read = async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
                && got.len() as u64 >= end as u64 + 4 + len
            {
                return;
            }
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
            let n = conn.read(&mut chunk).await.expect("read the response");
            assert!(
                n > 0,
                "weir closed the connection after {} bytes",
                got.len()
            );
            got.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the whole response within WAIT");
    got
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: weir.test\r\n\r\n")
}

#[tokio::test]
async fn a_connection_without_a_whole_head_is_closed_after_the_timeout_and_not_before() {
    let admin = "[admin]\naddr = \"127.0.0.1:0\"";
    let (up, weir) = start_with(TIMEOUT, "", "", admin, None).await;

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
    let counted = metrics(&weir).await;
    assert!(
        counted.contains("weir_client_connections_cut_total{reason=\"header_read_timeout\"} 2\n"),
        "{counted}"
    );

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

#[tokio::test]
async fn a_request_body_sent_slowly_is_never_cut() {
    let (up, weir) = start().await;
    let mut conn = TcpStream::connect(weir.addr()).await.unwrap();
    const PIECES: u32 = 20;
    let piece = [b'x'; 100];
    conn.write_all(
        format!(
            "PUT /upload HTTP/1.1\r\nhost: weir.test\r\ncontent-length: {}\r\n\r\n",
            PIECES as usize * piece.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    for _ in 0..PIECES {
        tokio::time::sleep(LONG / PIECES).await;
        conn.write_all(&piece).await.unwrap();
    }
    let resp = read_response(&mut conn).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("got 2000"), "{resp}");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_response_read_slowly_is_never_cut() {
    // A short timeout, and a response weir hands to hyper whole (a cache hit, 6 MiB in
    // one piece): when the response has ended, megabytes of it are still in weir's
    // buffer, and take the slow reader below many timeouts to take. The wait starts
    // when the last of it has been written, not when it was handed over.
    let (up, weir) = start_cached(Duration::from_millis(100)).await;
    // A small receive buffer of the client's own, so that the kernel holds little of it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let mut conn = socket.connect(weir.addr()).await.unwrap();
    for (i, status) in ["miss", "hit"].into_iter().enumerate() {
        conn.write_all(get("/big").as_bytes()).await.unwrap();
        // At most 6.4 MB/s on the hit: a second or more to read it.
        let pause = (i == 1).then_some(Duration::from_millis(10));
        let got = read_paced(&mut conn, BIG, pause).await;
        let head = String::from_utf8_lossy(&got[..200]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains(&format!("x-weir-cache: {status}")), "{head}");
    }
    assert_eq!(up.count(), 1, "the second came from the cache");
}

#[tokio::test]
async fn a_tls_connection_without_a_handshake_is_closed_after_the_timeout() {
    let pki = Pki::new();
    let tls = r#"tls = { cert = "certs/server.pem", key = "certs/server.key" }"#;
    let (_up, weir) = start_with(TIMEOUT, tls, "", "", Some(&pki)).await;
    let accepted = Instant::now();
    // A TCP connection that never says hello.
    let mut silent = TcpStream::connect(weir.addr()).await.unwrap();
    let got = read_to_close(&mut silent).await;
    assert!(got.is_empty(), "{got:?}");
    let waited = accepted.elapsed();
    assert!(
        waited >= TIMEOUT,
        "closed after {waited:?}, before the timeout"
    );
}

#[tokio::test]
async fn a_client_that_reads_none_of_its_response_is_closed_and_frees_its_upstream_connection() {
    let send_timeout = Duration::from_millis(500);
    let up = Upstream::start(upstream()).await;
    // The upstream takes one connection at a time: a response that holds it holds up
    // every other request to it.
    let weir = WeirBuilder::new(format!(
        r#"[listen]
addr = "127.0.0.1:0"
send_timeout = "{}ms"

[admin]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{}"
max_connections = 1

[[routes]]
name = "all"
upstream = "api"
timeout = "30s"
"#,
        send_timeout.as_millis(),
        up.url()
    ))
    .start()
    .await;

    // A client asks for `/huge` and reads none of it; its receive buffer is small, so
    // weir's writes to it stall at once.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 << 10).unwrap();
    let mut stuck = socket.connect(weir.addr()).await.unwrap();
    stuck.write_all(get("/huge").as_bytes()).await.unwrap();
    let asked = Instant::now();
    up.wait_for(1).await;

    // Another client's request waits for the upstream's one connection, and gets it
    // once weir has closed the stuck client.
    let resp = client()
        .get(format!("http://{}/quick", weir.addr()))
        .send()
        .await
        .expect("the second request is answered");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "quick");
    let waited = asked.elapsed();
    assert!(
        waited >= send_timeout,
        "answered after {waited:?}: the first response still held the connection"
    );

    let got = read_to_close(&mut stuck).await;
    assert!(
        (got.len() as u64) < huge(),
        "closed before the whole response: {} bytes came",
        got.len()
    );
    assert!(got.starts_with(b"HTTP/1.1 200"));
    let counted = metrics(&weir).await;
    assert!(
        counted.contains("weir_client_connections_cut_total{reason=\"send_timeout\"} 1\n"),
        "{counted}"
    );
    assert!(
        counted.contains("weir_client_connections_cut_total{reason=\"header_read_timeout\"} 0\n"),
        "{counted}"
    );
}

#[tokio::test]
async fn a_client_reading_slowly_but_steadily_outlasts_the_send_timeout() {
    // This client takes 64 KiB every 10 ms, so the 24 MiB take it about four seconds,
    // twice the send timeout. The kernel wakes a stalled writer once a third of its send
    // buffer has drained, at most 1.3 MiB here, a fifth of a second at that pace: each
    // of weir's stalls stays far below the timeout.
    let (up, weir) = start_with(TIMEOUT, r#"send_timeout = "2s""#, "", "", None).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let mut conn = socket.connect(weir.addr()).await.unwrap();
    conn.write_all(get("/huge").as_bytes()).await.unwrap();
    let got = read_paced(&mut conn, huge(), Some(Duration::from_millis(10))).await;
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn an_http2_response_waiting_on_a_slow_upstream_is_not_cut() {
    // Each response on an HTTP/2 connection is watched for being held back; one that
    // hyper waits on, because the upstream is slow to send its next piece (`/stream`:
    // 2.5 s), is not, however short the send timeout.
    let (up, weir) = start_with(TIMEOUT, r#"send_timeout = "300ms""#, "", "", None).await;
    let client = crate::support::client::h2_client();
    let (slow, quick) = tokio::join!(
        client.get(format!("http://{}/stream", weir.addr())).send(),
        client.get(format!("http://{}/quick", weir.addr())).send(),
    );
    let (slow, quick) = (
        slow.expect("/stream answered"),
        quick.expect("/quick answered"),
    );
    assert_eq!(slow.version(), reqwest::Version::HTTP_2);
    assert_eq!(quick.text().await.unwrap(), "quick");
    assert_eq!(slow.text().await.expect("the whole body"), "first,last");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn an_http2_response_read_slowly_after_hyper_let_go_of_it_is_never_cut() {
    // As `a_response_read_slowly_is_never_cut`, over HTTP/2 with small windows: hyper
    // hands h2 the 6 MiB cache hit whole and ends the stream at once, and h2 sends it
    // as the client opens its window, for many timeouts. The connection is busy all the
    // while, with no stream in weir's hands.
    let (up, weir) = start_cached(Duration::from_millis(100)).await;
    let client = crate::support::client::builder()
        .http2_prior_knowledge()
        .http2_initial_stream_window_size(64 << 10)
        .http2_initial_connection_window_size(64 << 10)
        .build()
        .unwrap();
    for status in ["miss", "hit"] {
        let mut resp = client
            .get(format!("http://{}/big", weir.addr()))
            .send()
            .await
            .expect("answered");
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.headers()["x-weir-cache"], status);
        let mut got = 0;
        while let Some(chunk) = resp.chunk().await.expect("the body, to its end") {
            got += chunk.len() as u64;
            if status == "hit" {
                // About 1.6 MB/s: four seconds, forty timeouts.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert_eq!(got, BIG);
    }
    assert_eq!(up.count(), 1, "the second came from the cache");
}
