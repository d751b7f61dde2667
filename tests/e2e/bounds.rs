//! Clients must not grow weir's memory: 130,000 requests, each with new values in every
//! field a client chooses (method, path, query, `Host`, `x-request-id`, `traceparent`,
//! a limiter key header and a breaker key header), half to a route with the limiter and
//! the breaker keyed by those headers, half to no route. After a warm-up that fills
//! everything bounded by a count (the recent-request ring, the state store's byte
//! budget), `/metrics` and `/status` must not grow, no client value may appear in them,
//! and weir's RSS must stay flat.
//!
//! The requests go over a few keep-alive connections, pipelined in batches on raw
//! sockets: a full HTTP client per request would make this test about the client.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::client::client;
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::Weir;

/// Requests in all, and of them the warm-up. The warm-up is long enough for the
/// allocator to reach its working set: after 20,000 requests RSS was still settling, and
/// its growth over the next 80,000 ranged 0.4–16.3 MiB between runs on a loaded machine,
/// with weir's code of stop 29 and of stop 30 alike (CI once saw 16.3 against the 16 MiB
/// bound); after 50,000 it ranged 2.0–10.2 MiB.
const TOTAL: usize = 130_000;
const WARM_UP: usize = 50_000;
/// Parallel keep-alive connections, and requests written at once on each.
const CONNECTIONS: usize = 4;
const BATCH: usize = 100;

/// The state store's budget: small, so the warm-up fills it (a breaker record per tenant
/// key is a few hundred bytes) and it stays full afterwards.
const STATE_BYTES: &str = "2MiB";

/// How much weir's RSS may grow after the warm-up, over 80,000 requests with new values.
/// Steady state has nothing left to grow; this is room for the allocator. Before the
/// bounds, the method series alone grew it by ~2 KiB per request, 160 MiB here.
const RSS_GROWTH: u64 = 16 << 20;

/// How many more `/metrics` lines may appear after the warm-up: series first touched
/// later (none are expected, as every kind of request is in the warm-up).
const METRICS_SLACK: usize = 0;
/// How many more `/status` bytes: the counts' digits (6 instead of 5) and rates.
const STATUS_SLACK: usize = 256;

fn config(up: &Upstream) -> String {
    format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[log]
level = "warn"

[state]
max_bytes = "{STATE_BYTES}"

[upstreams.api]
url = "{}"

[[routes]]
name = "api"
match = {{ path_prefix = "/api/" }}
upstream = "api"
timeout = "10s"
filters = [
  {{ use = "limiter", config = {{ rate = 1000000, key = {{ header = "x-api-key" }} }} }},
  {{ use = "breaker", config = {{ key = {{ header = "x-tenant" }} }} }},
]
"#,
        up.url()
    )
}

/// Request `i`: every client-chosen field new. Even ones go to the route, odd ones to
/// no route; half of each have an invented method.
fn request(i: usize) -> String {
    let method = match i % 4 {
        0 | 1 => format!("M{i:07}"),
        2 => "GET".to_owned(),
        _ => "POST".to_owned(),
    };
    let path = if i.is_multiple_of(2) {
        "api"
    } else {
        "nowhere"
    };
    format!(
        "{method} /{path}/p{i}?q={i} HTTP/1.1\r\n\
         host: h{i}.example\r\n\
         x-request-id: rid-{i}\r\n\
         traceparent: 00-{i:032x}-{i:016x}-01\r\n\
         x-api-key: key-{i}\r\n\
         x-tenant: tenant-{i}\r\n\
         content-length: 0\r\n\r\n"
    )
}

/// Reads one HTTP/1.1 response (head and a `content-length` or chunked body); returns
/// its status.
async fn read_response(r: &mut BufReader<TcpStream>, head: &mut Vec<u8>) -> u16 {
    head.clear();
    while !head.ends_with(b"\r\n\r\n") {
        let b = r.read_u8().await.expect("read a response head");
        head.push(b);
    }
    let text = std::str::from_utf8(head).expect("ASCII head");
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {text}"));
    let header = |name: &str| {
        text.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    if let Some(len) = header("content-length") {
        let len: usize = len.parse().expect("content-length");
        let mut body = vec![0; len];
        r.read_exact(&mut body).await.expect("body");
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                line.push(r.read_u8().await.expect("chunk size"));
            }
            let size = std::str::from_utf8(&line[..line.len() - 2]).expect("ASCII size");
            let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
                .expect("hex chunk size");
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk).await.expect("chunk");
            if size == 0 {
                break;
            }
        }
    }
    status
}

/// Sends requests `range` over `CONNECTIONS` connections, pipelined `BATCH` at a time;
/// returns how many got 200 and 404.
async fn send(weir: &Weir, range: std::ops::Range<usize>) -> (usize, usize) {
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let addr = weir.addr();
            let mine: Vec<usize> = range.clone().filter(|i| i % CONNECTIONS == c).collect();
            tokio::spawn(async move {
                let stream = TcpStream::connect(addr).await.expect("connect to weir");
                stream.set_nodelay(true).unwrap();
                let mut r = BufReader::with_capacity(64 << 10, stream);
                let (mut ok, mut not_found) = (0, 0);
                let mut head = Vec::new();
                for batch in mine.chunks(BATCH) {
                    let out: String = batch.iter().map(|&i| request(i)).collect();
                    r.get_mut().write_all(out.as_bytes()).await.expect("write");
                    for &i in batch {
                        match read_response(&mut r, &mut head).await {
                            200 => ok += 1,
                            404 => not_found += 1,
                            other => panic!("request {i}: status {other}"),
                        }
                    }
                }
                (ok, not_found)
            })
        })
        .collect();
    let mut total = (0, 0);
    for t in tasks {
        let (ok, nf) = t.await.expect("connection task");
        total.0 += ok;
        total.1 += nf;
    }
    total
}

async fn admin_text(weir: &Weir, path: &str) -> String {
    let resp = client()
        .get(weir.admin_url(path))
        .send()
        .await
        .expect("admin");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("admin body")
}

/// No client-chosen value (nor a prefix that marks one) is in `text`.
fn assert_no_client_values(what: &str, text: &str) {
    for marker in ["M00", "/p1", ".example", "rid-", "key-", "tenant-", "q=1"] {
        assert!(
            !text.contains(marker),
            "{what} holds client data ({marker:?}):\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_distinct_client_values_leave_memory_flat() {
    let up = Upstream::builder()
        .count_bodies()
        .reply(|_, _| Reply::ok())
        .start()
        .await;
    let weir = Weir::start(&config(&up)).await;
    let started = Instant::now();

    let (ok, not_found) = send(&weir, 0..WARM_UP).await;
    assert_eq!((ok, not_found), (WARM_UP / 2, WARM_UP / 2));
    let metrics_before = admin_text(&weir, "/metrics").await;
    let status_before = admin_text(&weir, "/status").await;
    let rss_before = weir.rss_bytes();

    let (ok, not_found) = send(&weir, WARM_UP..TOTAL).await;
    assert_eq!(
        (ok, not_found),
        ((TOTAL - WARM_UP) / 2, (TOTAL - WARM_UP) / 2)
    );
    let took = started.elapsed();
    let metrics_after = admin_text(&weir, "/metrics").await;
    let status_after = admin_text(&weir, "/status").await;
    let rss_after = weir.rss_bytes();
    eprintln!(
        "{TOTAL} requests in {took:?}; /metrics {} -> {} lines; /status {} -> {} bytes; \
         RSS {} -> {} KiB",
        metrics_before.lines().count(),
        metrics_after.lines().count(),
        status_before.len(),
        status_after.len(),
        rss_before >> 10,
        rss_after >> 10
    );

    // (a) /metrics: a fixed set of series, none named after what a client sent.
    assert!(
        metrics_after.lines().count() <= metrics_before.lines().count() + METRICS_SLACK,
        "/metrics grew from {} to {} lines",
        metrics_before.lines().count(),
        metrics_after.lines().count()
    );
    assert_no_client_values("/metrics", &metrics_after);
    // A quarter of the requests each: invented methods to the route, and to no route.
    for series in [
        format!(
            r#"weir_requests_total{{method="other",route="",status="4xx"}} {}"#,
            TOTAL / 4
        ),
        format!(
            r#"weir_requests_total{{method="other",route="api",status="2xx"}} {}"#,
            TOTAL / 4
        ),
    ] {
        assert!(
            metrics_after.contains(&series),
            "invented methods count as `other`:\n{metrics_after}"
        );
    }
    // (b) /status: the configured route, no entry per client value.
    assert!(
        status_after.len() <= status_before.len() + STATUS_SLACK,
        "/status grew from {} to {} bytes",
        status_before.len(),
        status_after.len()
    );
    assert_no_client_values("/status", &status_after);
    let status: serde_json::Value = serde_json::from_str(&status_after).unwrap();
    assert_eq!(status["breakers"], serde_json::json!([]), "{status}");
    assert_eq!(status["limiters"], serde_json::json!([]), "{status}");
    // (c) RSS.
    assert!(
        rss_after < rss_before + RSS_GROWTH,
        "RSS grew by {} KiB over {} requests (bound {} KiB)",
        (rss_after.saturating_sub(rss_before)) >> 10,
        TOTAL - WARM_UP,
        RSS_GROWTH >> 10
    );
    assert_eq!(up.count(), TOTAL / 2);
}
