//! Abusive HTTP/2 clients, written frame by frame over h2c: rapid reset
//! (CVE-2023-44487), a CONTINUATION flood, a PING flood, more streams than
//! `max_concurrent_streams`, a stream held back by a shut flow-control window
//! (`send_timeout`), and an idle connection (`header_read_timeout`). In each, weir keeps
//! serving a normal client on another
//! connection, its memory stays bounded, and the abusive connection is cut or refused
//! where the protocol says so.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::WAIT;
use crate::support::client::client;
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::Weir;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// How much weir's resident memory may grow under one abusive connection.
const MAX_GROWTH: u64 = 32 << 20;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK block for `GET /h2/x` with `:authority` `weir.test`.
fn request_block() -> Vec<u8> {
    request_block_for("/h2/x")
}

/// An HPACK block for `GET path` (shorter than 127 bytes) with `:authority`
/// `weir.test`: indexed `:method GET` and `:scheme http`, then literal `:path` and
/// `:authority` (without indexing).
fn request_block_for(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"weir.test");
    block
}

/// A connection that has sent the preface and an empty SETTINGS.
async fn connect(weir: &Weir) -> TcpStream {
    let mut conn = TcpStream::connect(weir.addr()).await.unwrap();
    conn.write_all(PREFACE).await.unwrap();
    conn.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    conn
}

/// Reads frames until `want(kind, flags, stream, payload)` says stop, the connection
/// ends, or [`WAIT`] passes; returns whether `want` stopped it, and every frame type
/// seen.
async fn read_until(
    conn: &mut TcpStream,
    mut want: impl FnMut(u8, u32, &[u8]) -> bool,
) -> (bool, Vec<u8>) {
    let mut buf = Vec::new();
    let mut kinds = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let kind = buf[3];
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            kinds.push(kind);
            if want(kind, stream, &buf[9..9 + len]) {
                return (true, kinds);
            }
            buf.drain(..9 + len);
        }
        let mut chunk = [0u8; 16384];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            Ok(_) => return (false, kinds),
            Err(_) => panic!("nothing decisive within {WAIT:?}; frames: {kinds:?}"),
        }
    }
}

/// weir (h2c on its listener) routing `/h2/` to an upstream that answers 200.
async fn start() -> (Weir, Upstream) {
    let up = Upstream::start(|_, _| Reply::ok().body(&b"ok"[..])).await;
    let weir = start_weir(&up, "", "").await;
    (weir, up)
}

/// weir (h2c on its listener, and an admin API) routing everything to `up`, with
/// `listen` and `upstream` added to those tables.
async fn start_weir(up: &Upstream, listen: &str, upstream: &str) -> Weir {
    Weir::start(&format!(
        r#"[listen]
addr = "127.0.0.1:0"
{listen}

[admin]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{}"
{upstream}

[[routes]]
name = "h2"
upstream = "api"
"#,
        up.url()
    ))
    .await
}

/// A normal client on its own connection is answered.
async fn expect_served(weir: &Weir) {
    let resp = tokio::time::timeout(WAIT, client().get(weir.url("/h2/normal")).send())
        .await
        .expect("the normal client waited past WAIT")
        .expect("the normal client's request");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn rapid_reset_is_cut_off_and_others_are_served() {
    let (weir, up) = start().await;
    let before = weir.rss_bytes();
    let mut conn = connect(&weir).await;
    // Open a stream and cancel it at once, 10,000 times, without reading.
    let mut burst = Vec::new();
    let mut sent = 0;
    for i in 0..10_000u32 {
        let id = 2 * i + 1;
        burst.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &request_block(),
        ));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        if burst.len() > 64 << 10 {
            if conn.write_all(&burst).await.is_err() {
                break;
            }
            burst.clear();
        }
        sent = i + 1;
    }
    let _ = conn.write_all(&burst).await;
    let (goaway, kinds) = read_until(&mut conn, |kind, _, _| kind == GOAWAY).await;
    assert!(
        goaway || sent < 10_000,
        "weir took 10,000 reset streams without a GOAWAY: {kinds:?}"
    );
    expect_served(&weir).await;
    assert!(
        up.count() < 10_000,
        "every reset stream reached the upstream"
    );
    let grew = weir.rss_bytes().saturating_sub(before);
    assert!(grew < MAX_GROWTH, "RSS grew {} MiB", grew >> 20);
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off_before_it_is_buffered() {
    let (weir, up) = start().await;
    let before = weir.rss_bytes();
    let mut conn = connect(&weir).await;
    // A header block that never ends: 16 KiB CONTINUATION frames of one header,
    // `x-flood`, repeated, far past the 64 KiB list limit.
    let mut first = request_block();
    first.extend_from_slice(&[0x00, 7]);
    first.extend_from_slice(b"x-flood");
    first.extend_from_slice(&[1, b'a']);
    conn.write_all(&frame(HEADERS, END_STREAM, 1, &first))
        .await
        .unwrap();
    let mut piece = Vec::new();
    while piece.len() < 16_000 {
        piece.extend_from_slice(&[0x00, 7]);
        piece.extend_from_slice(b"x-flood");
        piece.extend_from_slice(&[1, b'a']);
    }
    let continuation = frame(CONTINUATION, 0, 1, &piece);
    let mut written = 0usize;
    let cut = loop {
        if written > 64 << 20 {
            break false;
        }
        match tokio::time::timeout(WAIT, conn.write_all(&continuation)).await {
            Ok(Ok(())) => written += continuation.len(),
            // A write error is the cut; a write that blocks for WAIT is weir no longer
            // reading, which it may do only once it has decided to close.
            Ok(Err(_)) | Err(_) => break true,
        }
    };
    if !cut {
        // Everything went out: weir must still answer with a GOAWAY or a close.
        let (goaway, kinds) = read_until(&mut conn, |kind, _, _| kind == GOAWAY).await;
        assert!(goaway || !kinds.contains(&HEADERS), "{kinds:?}");
    }
    assert!(written < 64 << 20, "weir read 64 MiB of one header block");
    assert_eq!(up.count(), 0, "the flooded request reached the upstream");
    expect_served(&weir).await;
    let grew = weir.rss_bytes().saturating_sub(before);
    assert!(grew < MAX_GROWTH, "RSS grew {} MiB", grew >> 20);
}

#[tokio::test]
async fn a_ping_flood_stays_bounded() {
    let (weir, _up) = start().await;
    let before = weir.rss_bytes();
    let mut conn = connect(&weir).await;
    // 200,000 PINGs, and no reading of the PONGs.
    let ping = frame(PING, 0, 0, &[7; 8]);
    let mut burst = Vec::new();
    for _ in 0..1000 {
        burst.extend_from_slice(&ping);
    }
    for _ in 0..200 {
        match tokio::time::timeout(Duration::from_secs(5), conn.write_all(&burst)).await {
            Ok(Ok(())) => {}
            // weir stopped reading (its send buffer to us is full) or closed: bounded.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    expect_served(&weir).await;
    let grew = weir.rss_bytes().saturating_sub(before);
    assert!(grew < MAX_GROWTH, "RSS grew {} MiB", grew >> 20);
}

#[tokio::test]
async fn streams_over_max_concurrent_streams_are_refused() {
    let (weir, _up) = start().await;
    let mut conn = connect(&weir).await;
    // 1,000 requests whose bodies never come: each holds its stream open.
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        burst.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &request_block()));
    }
    conn.write_all(&burst).await.unwrap();
    // REFUSED_STREAM (7) for the streams past the limit, or a GOAWAY for the lot.
    let (refused, kinds) = read_until(&mut conn, |kind, _, payload| {
        (kind == RST_STREAM && payload == 7u32.to_be_bytes()) || kind == GOAWAY
    })
    .await;
    assert!(
        refused,
        "1,000 concurrent streams were all taken: {kinds:?}"
    );
    expect_served(&weir).await;
}

#[tokio::test]
async fn a_stream_held_back_by_a_shut_window_is_cut_and_frees_its_upstream_connection() {
    // The upstream takes one connection at a time, so a response that holds it holds up
    // every other request to it.
    let up = Upstream::start(|_, _| Reply::ok().body(vec![b'x'; 256 << 10])).await;
    let weir = start_weir(&up, r#"send_timeout = "500ms""#, "max_connections = 1").await;
    // A client whose streams start with no window at all (SETTINGS_INITIAL_WINDOW_SIZE,
    // 0x4, set to 0) and which never opens one: weir may send the response's head, and
    // not a byte of its body. The client reads everything that comes.
    let mut conn = TcpStream::connect(weir.addr()).await.unwrap();
    conn.write_all(PREFACE).await.unwrap();
    conn.write_all(&frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]))
        .await
        .unwrap();
    conn.write_all(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &request_block(),
    ))
    .await
    .unwrap();
    let asked = Instant::now();
    up.wait_for(1).await;
    // Another client's request gets the upstream's connection once weir has cut the
    // held-back stream's.
    let resp = tokio::time::timeout(WAIT, client().get(weir.url("/h2/normal")).send())
        .await
        .expect("the normal client waited past WAIT")
        .expect("the normal client's request");
    assert_eq!(resp.status(), 200);
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "answered after {waited:?}: the held-back response still held the connection"
    );
    // The held-back connection ends, without a byte of the body.
    let (_, kinds) = read_until(&mut conn, |_, _, _| false).await;
    assert!(
        kinds.contains(&HEADERS),
        "the response's head came: {kinds:?}"
    );
    assert!(
        !kinds.contains(&DATA),
        "no DATA through a shut window: {kinds:?}"
    );
    let counted = crate::support::client::metrics(&weir).await;
    assert!(
        counted.contains("weir_client_connections_cut_total{reason=\"send_timeout\"} 1\n"),
        "{counted}"
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_header_read_timeout_and_a_slow_stream_is_not() {
    // An HTTP/2 connection holds a slot of `listen.max_connections` as an HTTP/1 one
    // does: idle for `header_read_timeout` (no stream in weir's hands), it is closed.
    let timeout = Duration::from_secs(1);
    let up = Upstream::start(|req, _| match req.path.as_str() {
        "/h2/slow" => Reply::ok().delay(Duration::from_millis(2500)).body("slow"),
        _ => Reply::ok().body("ok"),
    })
    .await;
    let listen = format!("header_read_timeout = \"{}ms\"", timeout.as_millis());
    let weir = start_weir(&up, &listen, "").await;
    let mut conn = connect(&weir).await;
    // A stream whose upstream takes longer than the timeout: answered, not cut.
    conn.write_all(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &request_block_for("/h2/slow"),
    ))
    .await
    .unwrap();
    let (answered, kinds) =
        read_until(&mut conn, |kind, stream, _| kind == DATA && stream == 1).await;
    assert!(answered, "the slow stream's body came: {kinds:?}");
    let idle_from = Instant::now();
    // Then nothing: the connection ends, no sooner than the timeout after its stream.
    let (_, kinds) = read_until(&mut conn, |_, _, _| false).await;
    let idle = idle_from.elapsed();
    assert!(
        idle >= timeout,
        "closed {idle:?} after the stream, frames {kinds:?}"
    );
    let counted = crate::support::client::metrics(&weir).await;
    assert!(
        counted.contains("weir_client_connections_cut_total{reason=\"header_read_timeout\"} 1\n"),
        "{counted}"
    );
    expect_served(&weir).await;
}
