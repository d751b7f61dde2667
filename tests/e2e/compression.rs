//! Compression in the host, end to end: request bodies encoded towards the upstream,
//! responses negotiated with the client's `Accept-Encoding`, decoded for filters that
//! read bodies (and bounded there), and streamed throughout.
//!
//! reqwest is built without its decompression features, so it neither sends
//! `Accept-Encoding` nor decodes: every test sets the header itself and decodes with the
//! same crate weir uses.

use std::time::Duration;

use async_compression::tokio::bufread::{
    BrotliDecoder, BrotliEncoder, GzipDecoder, GzipEncoder, ZstdDecoder, ZstdEncoder,
};
use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt};
use tokio_util::io::StreamReader;

use crate::support::WAIT;
use crate::support::body::{Digest, pattern_digest};
use crate::support::client::{self, client};
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::Weir;

// === helpers ===

const CODINGS: [&str; 3] = ["gzip", "zstd", "br"];

/// `len` varied bytes (xorshift, with a compressible third), the same for every call.
fn varied(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i % 3 == 0 {
                b'a' + (x % 26) as u8
            } else {
                (x >> 24) as u8
            }
        })
        .collect()
}

async fn read_all(mut r: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.expect("decode");
    out
}

/// `data` decoded from `coding`.
async fn decode(coding: &str, data: &[u8]) -> Vec<u8> {
    match coding {
        "gzip" => read_all(GzipDecoder::new(data)).await,
        "zstd" => read_all(ZstdDecoder::new(data)).await,
        "br" => read_all(BrotliDecoder::new(data)).await,
        other => panic!("no decoder for {other:?}"),
    }
}

/// `data` encoded with `coding`.
async fn encode(coding: &str, data: &[u8]) -> Vec<u8> {
    match coding {
        "gzip" => read_all(GzipEncoder::new(data)).await,
        "zstd" => read_all(ZstdEncoder::new(data)).await,
        "br" => read_all(BrotliEncoder::new(data)).await,
        other => panic!("no encoder for {other:?}"),
    }
}

/// The response body as a reader, chunk by chunk as it arrives.
fn body_reader(resp: reqwest::Response) -> impl AsyncBufRead + Unpin {
    let chunks = futures_util::stream::try_unfold(resp, |mut r| async move {
        let chunk = r.chunk().await.map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>(chunk.map(|c| (c, r)))
    });
    StreamReader::new(Box::pin(chunks))
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// weir on one route, `/`, to `up`, with these extra route lines.
async fn weir_for(up: &Upstream, max_body: &str, route: &str) -> Weir {
    Weir::start(&format!(
        r#"
[listen]
addr = "127.0.0.1:0"
max_body_bytes = "{max_body}"

[upstreams.up]
url = "{}"

[[routes]]
name = "compressed"
upstream = "up"
timeout = "5m"
{route}
"#,
        up.url()
    ))
    .await
}

// === requests ===

#[tokio::test]
async fn request_bodies_are_compressed_towards_the_upstream_byte_exact() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let mut config = String::new();
    for coding in CODINGS {
        config.push_str(&format!(
            r#"
[[routes]]
name = "{coding}"
match = {{ path_prefix = "/{coding}/" }}
upstream = "up"
compression = {{ request = "{coding}" }}
"#
        ));
    }
    let weir = Weir::start(&format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[upstreams.up]\nurl = \"{}\"\n{config}",
        up.url()
    ))
    .await;
    let sent = varied(1 << 20);
    for (i, coding) in CODINGS.into_iter().enumerate() {
        let resp = client()
            .post(weir.url(&format!("/{coding}/upload")))
            .body(sent.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{coding}");
        let r = up.request(i);
        assert_eq!(r.header_str("content-encoding"), Some(coding));
        assert!(
            r.body.len() < sent.len(),
            "{coding}: {} bytes upstream for {} sent",
            r.body.len(),
            sent.len()
        );
        let got = decode(coding, &r.body).await;
        assert_eq!(got.len(), sent.len(), "{coding}");
        assert!(
            got == sent,
            "{coding}: the decoded body differs from what was sent"
        );
    }

    // No body: nothing to encode, no Content-Encoding.
    client().get(weir.url("/gzip/empty")).send().await.unwrap();
    let r = up.request(3);
    assert!(!r.has_header("content-encoding"), "{:?}", r.headers);
    assert!(r.body.is_empty());

    // Already encoded by the client: sent as it is.
    let pre = encode("br", b"already br").await;
    client()
        .post(weir.url("/gzip/pre"))
        .header("content-encoding", "br")
        .body(pre.clone())
        .send()
        .await
        .unwrap();
    let r = up.request(4);
    assert_eq!(r.header_str("content-encoding"), Some("br"));
    assert_eq!(r.body, pre);
}

#[tokio::test]
async fn a_retried_request_is_compressed_again_on_every_try() {
    // `retry` buffers the request body; each try must carry a complete encoding of it.
    let up = Upstream::builder()
        .replies([Reply::new(503), Reply::ok()])
        .start()
        .await;
    let weir = weir_for(
        &up,
        "10MiB",
        r#"compression = { request = "zstd" }
filters = [{ use = "retry", config = { max_retries = 2, retry_on = ["5xx"], base_interval = "1ms" } }]"#,
    )
    .await;
    let sent = varied(300_000);
    let resp = client()
        .put(weir.url("/retried"))
        .body(sent.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reqs = up.wait_for(2).await;
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(r.header_str("content-encoding"), Some("zstd"));
        assert!(decode("zstd", &r.body).await == sent, "try body differs");
    }
}

// === responses ===

#[tokio::test]
async fn identity_responses_are_encoded_for_what_the_client_accepts() {
    let body = Bytes::from(varied(1 << 20));
    let reply = body.clone();
    let up = Upstream::start(move |_, _| {
        Reply::ok()
            .header("content-type", "application/octet-stream")
            .header("etag", "\"v7\"")
            .body(reply.clone())
    })
    .await;
    let weir = weir_for(&up, "10MiB", "compression = { response = true }").await;
    let cases = [
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip", "gzip"),
        ("gzip;q=0.5, br;q=0.9", "br"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("br;q=0, *", "zstd"),
    ];
    for (accept, want) in cases {
        let resp = client()
            .get(weir.url("/data"))
            .header("accept-encoding", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{accept}");
        assert_eq!(header(&resp, "content-encoding"), Some(want), "{accept}");
        assert_eq!(header(&resp, "vary"), Some("accept-encoding"), "{accept}");
        assert_eq!(header(&resp, "etag"), Some("W/\"v7\""), "{accept}");
        assert!(header(&resp, "content-length").is_none(), "{accept}");
        let packed = resp.bytes().await.unwrap();
        assert!(packed.len() < body.len(), "{accept}: not compressed");
        let got = decode(want, &packed).await;
        assert!(got == body, "{accept}: the decoded body differs");
    }
    // weir asked the upstream for what it can decode, whatever the client said.
    for r in up.requests() {
        assert_eq!(r.header_str("accept-encoding"), Some("zstd, br, gzip"));
    }
}

#[tokio::test]
async fn a_client_without_accept_encoding_gets_identity_even_from_a_gzip_upstream() {
    let body = varied(1 << 20);
    let gz = Bytes::from(encode("gzip", &body).await);
    let reply = gz.clone();
    let up = Upstream::start(move |_, _| {
        Reply::ok()
            .header("content-encoding", "gzip")
            .body(reply.clone())
    })
    .await;
    let weir = weir_for(&up, "10MiB", "compression = { response = true }").await;

    let resp = client().get(weir.url("/plain")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "content-encoding").is_none());
    assert_eq!(header(&resp, "vary"), Some("accept-encoding"));
    let got = resp.bytes().await.unwrap();
    assert_eq!(got.len(), body.len());
    assert!(got == body, "identity body differs");

    // `identity` only: the same.
    let resp = client()
        .get(weir.url("/plain"))
        .header("accept-encoding", "identity")
        .send()
        .await
        .unwrap();
    assert!(header(&resp, "content-encoding").is_none());
    assert!(resp.bytes().await.unwrap() == body);

    // A gzip client gets the upstream's bytes untouched, not a re-encoding.
    let resp = client()
        .get(weir.url("/plain"))
        .header("accept-encoding", "br, gzip;q=0.2")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "content-encoding"), Some("gzip"));
    assert_eq!(
        header(&resp, "content-length"),
        Some(gz.len().to_string().as_str())
    );
    assert!(resp.bytes().await.unwrap() == gz, "gzip was re-encoded");

    // A zstd-only client gets it transcoded.
    let resp = client()
        .get(weir.url("/plain"))
        .header("accept-encoding", "zstd")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "content-encoding"), Some("zstd"));
    assert!(decode("zstd", &resp.bytes().await.unwrap()).await == body);
}

#[tokio::test]
async fn the_cache_stores_decoded_bodies_and_serves_each_client_its_coding() {
    // A filter that reads response bodies gets them decoded; a hit is encoded anew.
    let body = varied(200_000);
    let br = Bytes::from(encode("br", &body).await);
    let up = Upstream::start(move |_, _| {
        Reply::ok()
            .header("content-encoding", "br")
            .header("cache-control", "max-age=300")
            .body(br.clone())
    })
    .await;
    let weir = weir_for(
        &up,
        "10MiB",
        r#"compression = { response = true }
filters = [{ use = "cache", config = { max_entry_bytes = "1MiB" } }]"#,
    )
    .await;
    for (accept, want, cache) in [
        ("gzip", Some("gzip"), "miss"),
        ("zstd", Some("zstd"), "hit"),
        ("identity", None, "hit"),
    ] {
        let resp = client()
            .get(weir.url("/cached"))
            .header("accept-encoding", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{accept}");
        assert_eq!(header(&resp, "x-weir-cache"), Some(cache), "{accept}");
        assert_eq!(header(&resp, "content-encoding"), want, "{accept}");
        let got = resp.bytes().await.unwrap();
        let got = match want {
            Some(c) => decode(c, &got).await,
            None => got.to_vec(),
        };
        assert!(got == body, "{accept}: body differs");
    }
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_decompression_bomb_is_refused_without_expanding_in_memory() {
    const EXPANDED: u64 = 512 << 20;
    // 512 MiB of zeros, about 500 KiB of gzip.
    let mut zeros = GzipEncoder::new(tokio::io::BufReader::new(
        tokio::io::repeat(0).take(EXPANDED),
    ));
    let mut bomb = Vec::new();
    zeros.read_to_end(&mut bomb).await.unwrap();
    assert!(bomb.len() < 1 << 20, "the bomb is {} bytes", bomb.len());
    let bomb = Bytes::from(bomb);
    let up = Upstream::start(move |_, _| {
        Reply::ok()
            .header("content-encoding", "gzip")
            .header("cache-control", "max-age=300")
            .body(bomb.clone())
    })
    .await;
    // `cache` reads response bodies, so weir must decode this one to hand it over.
    let weir = weir_for(
        &up,
        "1MiB",
        r#"compression = { response = true }
filters = ["cache"]"#,
    )
    .await;
    for accept in ["gzip", "br", "identity"] {
        let resp = client()
            .get(weir.url("/bomb"))
            .header("accept-encoding", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502, "{accept}");
        assert_eq!(header(&resp, "content-type"), Some("application/json"));
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], "response_too_large", "{v}");
        assert_eq!(v["route"], "compressed", "{v}");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains("1048576") && msg.contains("cache"), "{msg}");
    }
    assert_eq!(up.count(), 3);
    let peak = weir.peak_rss_bytes();
    assert!(
        peak < 64 << 20,
        "weir's peak RSS was {} MiB for a bomb that expands to {} MiB",
        peak >> 20,
        EXPANDED >> 20
    );
}

// === streaming ===

#[tokio::test]
async fn a_large_response_is_encoded_on_the_fly_in_bounded_memory() {
    const LEN: u64 = 200 << 20;
    // weir idles at about 25 MiB; holding the response would take 200.
    const MAX_RSS: u64 = 64 << 20;
    let up = Upstream::sink(LEN).await;
    let weir = weir_for(&up, "1MiB", "compression = { response = true }").await;
    let c = client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let resp = c
        .get(weir.url("/big"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-encoding"), Some("gzip"));
    // Decoded as it arrives, checksummed chunk by chunk, never held whole.
    let mut decoder = GzipDecoder::new(body_reader(resp));
    let mut digest = Digest::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = decoder.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
    }
    assert_eq!(digest.finish(), pattern_digest(LEN));
    let peak = weir.peak_rss_bytes();
    assert!(
        peak < MAX_RSS,
        "weir's peak RSS was {} MiB after gzipping a {} MiB response",
        peak >> 20,
        LEN >> 20
    );
}

#[tokio::test]
async fn an_encoded_stream_delivers_each_chunk_before_the_upstream_sends_the_next() {
    // The second chunk never comes within the test: if weir waited for more input before
    // flushing its encoder, the client would get nothing and time out.
    let first = Bytes::from_static(b"data: {\"event\": 1}\n\n");
    let chunk = first.clone();
    let up = Upstream::start(move |_, _| {
        Reply::ok()
            .header("content-type", "text/event-stream")
            .chunks(vec![
                (Duration::ZERO, chunk.clone()),
                (
                    Duration::from_secs(3600),
                    Bytes::from_static(b"data: never\n\n"),
                ),
            ])
    })
    .await;
    let weir = weir_for(&up, "1MiB", "compression = { response = true }").await;
    for coding in CODINGS {
        let resp = client::builder()
            .timeout(Duration::from_secs(3600))
            .build()
            .unwrap()
            .get(weir.url("/events"))
            .header("accept-encoding", coding)
            .send()
            .await
            .unwrap();
        assert_eq!(header(&resp, "content-encoding"), Some(coding));
        let reader = body_reader(resp);
        let mut got = vec![0u8; first.len()];
        let read = async {
            match coding {
                "gzip" => GzipDecoder::new(reader).read_exact(&mut got).await,
                "zstd" => ZstdDecoder::new(reader).read_exact(&mut got).await,
                _ => BrotliDecoder::new(reader).read_exact(&mut got).await,
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .unwrap_or_else(|_| panic!("{coding}: the first event was held back"))
            .unwrap();
        assert_eq!(got, first, "{coding}");
    }
}
