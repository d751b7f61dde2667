//! A client's broken request body is the client's fault: malformed chunked framing gets
//! 400 `bad_request_body`, a body that stalls gets 408 `client_timeout`, and a client
//! that goes away mid-body is logged as `client_closed`. None of them reaches a filter as
//! an upstream failure, so a breaker stays closed and a retry never fires; they are
//! counted in `weir_client_errors_total` and named in `/requests`.
//!
//! Bodies are written as raw bytes on a TCP socket, so the framing is exactly what the
//! test says. Routes cover the three ways weir sends a body: no filters (`direct`),
//! filters that stream it (`streamed`: a breaker) and filters that buffer it
//! (`buffered`: a breaker and a retry). Every breaker has `minimum_calls = 2`, so two
//! failures counted against the upstream would open it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::WAIT;
use crate::support::client::{client, metrics};
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::Weir;

/// Two calls, and every failure among them, open it; open stays open for the test.
const BREAKER: &str =
    r#"{ use = "breaker", config = { window_size = 2, minimum_calls = 2, wait_in_open = "60s" } }"#;
/// Retries any upstream failure, three times; PUT is a retriable method.
const RETRY: &str =
    r#"{ use = "retry", config = { max_retries = 3, retry_on = ["5xx", "reset"] } }"#;
/// The configured `body_read_timeout` of [`config`].
const BODY_READ_TIMEOUT: Duration = Duration::from_millis(300);

/// weir with the routes `direct`, `streamed` and `buffered` to `upstream_url`, with
/// `[listen] body_read_timeout = read_timeout` and route timeout `timeout`.
fn config(upstream_url: &str, read_timeout: &str, timeout: &str) -> String {
    let mut toml = format!(
        r#"[listen]
addr = "127.0.0.1:0"
body_read_timeout = "{read_timeout}"

[admin]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{upstream_url}"
"#
    );
    for (name, filters) in [
        ("direct", String::new()),
        ("streamed", BREAKER.to_owned()),
        ("buffered", format!("{BREAKER}, {RETRY}")),
    ] {
        toml.push_str(&format!(
            r#"
[[routes]]
name = "{name}"
match = {{ path_prefix = "/{name}/" }}
upstream = "api"
timeout = "{timeout}"
filters = [{filters}]
"#
        ));
    }
    toml
}

/// The routes that run filters. Every request here is a PUT, which the retry filter
/// would re-send.
const FILTERED: [&str; 2] = ["streamed", "buffered"];

/// A request head for `path` with these extra header lines.
fn head(path: &str, headers: &str) -> String {
    format!("PUT {path} HTTP/1.1\r\nhost: weir.test\r\n{headers}\r\n")
}

/// A chunked body whose second chunk-size line is not hex.
fn bad_chunked(path: &str) -> Vec<u8> {
    let mut req = head(path, "transfer-encoding: chunked\r\n").into_bytes();
    req.extend_from_slice(b"5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n");
    req
}

/// What weir answered on a raw connection: the status and the body.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    body: serde_json::Value,
}

/// Reads one response with a `content-length` body (weir's JSON errors have one).
async fn read_response(conn: &mut (impl tokio::io::AsyncRead + Unpin)) -> RawResponse {
    let mut buf = Vec::new();
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().expect("a length"))
                    .unwrap_or_else(|| panic!("no content-length in {head}"));
                if buf.len() >= end + 4 + len {
                    let status = head[9..12].parse().expect("a status");
                    let body = serde_json::from_slice(&buf[end + 4..end + 4 + len])
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {head}"));
                    return RawResponse { status, body };
                }
            }
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.expect("read the response");
            assert!(
                n > 0,
                "weir closed the connection: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("weir answered within WAIT")
}

/// Sends `bytes` on a new connection and reads the answer.
async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    let mut conn = TcpStream::connect(addr).await.expect("connect to weir");
    conn.write_all(bytes).await.expect("send the request");
    read_response(&mut conn).await
}

fn assert_error(resp: &RawResponse, status: u16, code: &str) {
    assert_eq!(resp.status, status, "{resp:?}");
    assert_eq!(resp.body["error"], code, "{resp:?}");
}

/// The value of `weir_client_errors_total{route,kind}`, or 0 without the series.
fn client_errors(metrics: &str, route: &str, kind: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("weir_client_errors_total{"))
        .filter(|l| l.contains(&format!("route=\"{route}\"")))
        .find(|l| l.contains(&format!("kind=\"{kind}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// How many of the recent requests of `route` ended with `error`.
async fn recent_errors(weir: &Weir, route: &str, error: &str) -> usize {
    let list: serde_json::Value = client()
        .get(weir.admin_url(&format!("/requests?route={route}&limit=1000")))
        .send()
        .await
        .expect("GET /requests")
        .json()
        .await
        .expect("a JSON list");
    list.as_array()
        .or_else(|| list["requests"].as_array())
        .unwrap_or_else(|| panic!("a list of requests: {list}"))
        .iter()
        .filter(|r| r["error"] == error)
        .count()
}

/// Asserts a good PUT to `route` gets through to the upstream.
async fn assert_good_request_passes(weir: &Weir, up: &Upstream, route: &str) {
    let before = up.count();
    let resp = client()
        .put(weir.url(&format!("/{route}/good")))
        .body("fine")
        .send()
        .await
        .expect("a good request");
    assert_eq!(resp.status(), 200, "route {route}: {:?}", resp.text().await);
    assert_eq!(up.count(), before + 1, "route {route}: the upstream got it");
    assert_eq!(&up.request(before).body[..], b"fine");
}

#[tokio::test]
async fn a_breaker_stays_closed_through_20_broken_client_bodies() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = Weir::start(&config(&up.url(), "300ms", "30s")).await;
    for i in 0..20 {
        let route = FILTERED[i % 2];
        let resp = send_raw(weir.addr(), &bad_chunked(&format!("/{route}/broken"))).await;
        assert_error(&resp, 400, "bad_request_body");
        assert_eq!(resp.body["route"], route);
    }
    // The upstream never got a whole request, so the recording upstream never logged one.
    assert_eq!(up.count(), 0);
    for route in FILTERED {
        assert_good_request_passes(&weir, &up, route).await;
    }
    let m = metrics(&weir).await;
    for route in FILTERED {
        assert_eq!(client_errors(&m, route, "bad_request_body"), 10, "{m}");
        assert_eq!(recent_errors(&weir, route, "bad_request_body").await, 10);
    }
    assert!(
        !m.contains("weir_upstream_errors_total{"),
        "a client's body is no upstream error: {m}"
    );
    assert!(
        !m.contains("weir_retries_total{"),
        "nothing was retried: {m}"
    );
}

#[tokio::test]
async fn malformed_chunked_framing_is_400_without_filters_too() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = Weir::start(&config(&up.url(), "300ms", "30s")).await;
    let resp = send_raw(weir.addr(), &bad_chunked("/direct/broken")).await;
    assert_error(&resp, 400, "bad_request_body");
    assert!(
        resp.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("chunk")),
        "{resp:?}"
    );
    assert_eq!(up.count(), 0);
    let m = metrics(&weir).await;
    assert_eq!(client_errors(&m, "direct", "bad_request_body"), 1, "{m}");
    assert!(!m.contains("weir_upstream_errors_total{"), "{m}");
    assert_good_request_passes(&weir, &up, "direct").await;
}

#[tokio::test]
async fn a_stalled_body_gets_408_after_body_read_timeout_and_is_not_retried() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    // The route timeout is far longer than the body read timeout: a 408 well before it
    // comes from `body_read_timeout`.
    let weir = Weir::start(&config(&up.url(), "300ms", "30s")).await;
    for route in ["direct", "streamed", "buffered"] {
        let mut conn = TcpStream::connect(weir.addr()).await.expect("connect");
        let mut req = head(&format!("/{route}/slow"), "content-length: 10\r\n").into_bytes();
        req.extend_from_slice(b"01234");
        let sent = Instant::now();
        conn.write_all(&req).await.expect("send half a body");
        let resp = read_response(&mut conn).await;
        let took = sent.elapsed();
        assert_error(&resp, 408, "client_timeout");
        // Not before the configured timeout; long before the 30 s route deadline (the
        // margin covers a debug build on a busy machine).
        assert!(took >= BODY_READ_TIMEOUT, "route {route}: {took:?}");
        assert!(took < Duration::from_secs(10), "route {route}: {took:?}");
    }
    assert_eq!(up.count(), 0, "no try reached the upstream whole");
    let m = metrics(&weir).await;
    for route in ["direct", "streamed", "buffered"] {
        assert_eq!(client_errors(&m, route, "client_timeout"), 1, "{m}");
        assert_eq!(recent_errors(&weir, route, "client_timeout").await, 1);
    }
    assert!(!m.contains("weir_upstream_errors_total{"), "{m}");
    assert!(!m.contains("weir_retries_total{"), "{m}");
    for route in FILTERED {
        assert_good_request_passes(&weir, &up, route).await;
    }
}

#[tokio::test]
async fn a_body_still_missing_at_the_route_deadline_is_408_not_an_upstream_timeout() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    // Here the route deadline comes first: weir is waiting for the client when it
    // passes, so the client is late, not the upstream.
    let weir = Weir::start(&config(&up.url(), "60s", "2s")).await;
    for route in ["direct", "streamed", "buffered"] {
        let mut conn = TcpStream::connect(weir.addr()).await.expect("connect");
        let mut req = head(&format!("/{route}/slow"), "content-length: 10\r\n").into_bytes();
        req.extend_from_slice(b"01234");
        conn.write_all(&req).await.expect("send half a body");
        let resp = read_response(&mut conn).await;
        assert_error(&resp, 408, "client_timeout");
    }
    assert_eq!(up.count(), 0);
    let m = metrics(&weir).await;
    assert!(!m.contains("weir_upstream_errors_total{"), "{m}");
    for route in FILTERED {
        assert_good_request_passes(&weir, &up, route).await;
    }
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_is_logged_as_client_closed() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = Weir::start(&config(&up.url(), "30s", "30s")).await;
    // Half a body, then the socket closes. (An HTTP/2 client that resets its stream
    // makes hyper drop the request, so nothing is answered or logged for it.)
    for route in ["direct", "streamed", "buffered"] {
        let mark = weir.log_mark();
        let mut conn = TcpStream::connect(weir.addr()).await.expect("connect");
        let mut req = head(&format!("/{route}/gone"), "content-length: 100\r\n").into_bytes();
        req.extend_from_slice(b"0123456789");
        conn.write_all(&req).await.expect("send part of a body");
        drop(conn);
        let line = weir.wait_for_log_after(mark, "client_closed", WAIT).await;
        assert!(line.contains(route), "{line}");
    }
    // weir counts a request before it logs it.
    let m = metrics(&weir).await;
    for route in ["direct", "streamed", "buffered"] {
        assert_eq!(client_errors(&m, route, "client_closed"), 1, "{m}");
        assert_eq!(recent_errors(&weir, route, "client_closed").await, 1);
    }
    assert!(!m.contains("weir_upstream_errors_total{"), "{m}");
    assert!(!m.contains("weir_retries_total{"), "{m}");
    assert_eq!(up.count(), 0);
    for route in FILTERED {
        assert_good_request_passes(&weir, &up, route).await;
    }
}

/// weir with one route `r` to `upstream_url`, `listen` lines added to `[listen]` and
/// `route` lines to the route.
fn one_route(upstream_url: &str, listen: &str, route: &str) -> String {
    format!(
        r#"[listen]
addr = "127.0.0.1:0"
{listen}

[admin]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{upstream_url}"

[[routes]]
name = "r"
upstream = "api"
{route}
"#
    )
}

/// A client that dribbles its body, a byte every 300 ms, never trips a 1 s stall
/// timeout, but averages far below `min_body_rate`: 408 once the grace has passed.
#[tokio::test]
async fn a_body_dribbled_below_min_body_rate_gets_408() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = Weir::start(&one_route(
        &up.url(),
        "body_read_timeout = \"1s\"\nmin_body_rate = \"1KiB\"",
        "buffer_request = true",
    ))
    .await;
    let conn = TcpStream::connect(weir.addr()).await.expect("connect");
    let (mut rd, mut wr) = conn.into_split();
    wr.write_all(head("/slow", "content-length: 100\r\n").as_bytes())
        .await
        .unwrap();
    let sent = Instant::now();
    let dribbler = tokio::spawn(async move {
        for _ in 0..99 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if wr.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let resp = read_response(&mut rd).await;
    let took = sent.elapsed();
    dribbler.abort();
    assert_error(&resp, 408, "client_timeout");
    // After the 1 s grace, long before the 99 bytes would have come (30 s).
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let message = resp.body["message"].as_str().unwrap();
    assert!(
        message.contains("slower than the minimum of 1024 bytes per second"),
        "{message}"
    );
    assert_eq!(
        up.connections(),
        0,
        "the buffered route took an upstream connection"
    );
}

/// With `buffer_request`, a client still sending its body holds no upstream connection;
/// without it, the body streams and the upstream is connected at once.
#[tokio::test]
async fn buffer_request_takes_no_upstream_connection_until_the_body_is_whole() {
    for buffered in [true, false] {
        let up = Upstream::start(|r, _| Reply::ok().body(r.body.clone())).await;
        let route = if buffered {
            "buffer_request = true"
        } else {
            ""
        };
        let weir = Weir::start(&one_route(&up.url(), "", route)).await;
        let mut conn = TcpStream::connect(weir.addr()).await.expect("connect");
        let mut req = head("/upload", "content-length: 10\r\n").into_bytes();
        req.extend_from_slice(b"01234");
        conn.write_all(&req).await.unwrap();
        if buffered {
            // Nothing to wait for: weir must not connect. Give it the time it would take.
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(
                up.connections(),
                0,
                "a half-sent body took an upstream connection"
            );
        } else {
            let deadline = Instant::now() + WAIT;
            while up.connections() == 0 {
                assert!(
                    Instant::now() < deadline,
                    "the streamed body never reached the upstream"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        conn.write_all(b"56789").await.unwrap();
        let mut answer = Vec::new();
        let read = async {
            let mut chunk = [0u8; 1024];
            while !answer.ends_with(b"0123456789") {
                let n = conn.read(&mut chunk).await.unwrap();
                assert!(n > 0, "{}", String::from_utf8_lossy(&answer));
                answer.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(WAIT, read).await.expect("an answer");
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        assert_eq!(up.request(0).body_str(), "0123456789");
    }
}

/// One connection past `max_connections` gets 503 `too_many_connections` at once and
/// is counted; once a connection closes, a new one is served.
#[tokio::test]
async fn a_connection_past_max_connections_gets_503_and_the_next_is_served() {
    past_max_connections("max_connections = 2").await;
}

/// The limit counts the connections of every worker thread together: with four workers
/// accepting, the third connection is still refused.
#[tokio::test]
async fn max_connections_counts_the_connections_of_all_workers() {
    past_max_connections("max_connections = 2\nworkers = 4").await;
}

async fn past_max_connections(listen: &str) {
    let up = Upstream::start(|_, _| Reply::ok().json(&serde_json::json!({"ok": true}))).await;
    let weir = Weir::start(&one_route(&up.url(), listen, "")).await;
    let held: Vec<TcpStream> = vec![
        TcpStream::connect(weir.addr()).await.unwrap(),
        TcpStream::connect(weir.addr()).await.unwrap(),
    ];
    // Both are accepted (and counted) before the third arrives.
    let deadline = Instant::now() + WAIT;
    while !metrics(&weir).await.contains("weir_client_connections 2") {
        assert!(Instant::now() < deadline, "{}", metrics(&weir).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = send_raw(weir.addr(), head("/x", "content-length: 0\r\n").as_bytes()).await;
    assert_error(&refused, 503, "too_many_connections");
    assert!(
        metrics(&weir)
            .await
            .contains("weir_client_connections_refused_total 1")
    );
    drop(held);
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = send_raw(weir.addr(), head("/x", "content-length: 0\r\n").as_bytes()).await;
        if resp.status == 200 {
            break;
        }
        assert_error(&resp, 503, "too_many_connections");
        assert!(
            Instant::now() < deadline,
            "the closed connections' slots never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
