//! Large bodies through the standard filters that read them: a route whose
//! `max_body_bytes` an operator raised to 64 MiB passes 64 MiB requests and responses
//! whole, under the filters' default limits (`max_call_time` 100ms, `max_memory`), in
//! whatever build and on however busy a machine the tests run.
//!
//! The filters' call clock counts only the guest's own CPU time: not the host copying a
//! body into the guest, not its imports, not other work on the machine. Their memory
//! cap has room for the bodies they read on top of `max_memory`.
//!
//! The bodies are generated and checksummed as they stream (see `support::body`); the
//! upstream keeps only each body's length and CRC-32.

use std::time::Duration;

use serde_json::json;

use crate::support::body::{Digest, PatternBody, pattern_digest};
use crate::support::client;
use crate::support::upstream::{Recorded, Reply, Upstream};
use crate::support::weir::{Weir, WeirBuilder};

/// As large as the route allows.
const LEN: u64 = 64 << 20;

/// weir with `max_body_bytes = "64MiB"` in front of `api`, route `big` using `filters`
/// with their default limits; `more` is added to the config as it is.
fn config(api: &Upstream, filters: &str, more: &str) -> String {
    format!(
        r#"[listen]
addr = "127.0.0.1:0"
max_body_bytes = "64MiB"

[admin]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{}"
{more}
[[routes]]
name = "big"
upstream = "api"
# Moving 64 MiB through a debug build on a busy machine takes a while; this test is
# about the filters' limits, not the route's.
timeout = "10m"
filters = {filters}
"#,
        api.url()
    )
}

/// A client that waits as long as a big body takes.
fn patient() -> reqwest::Client {
    client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("client")
}

/// The status, and the length and CRC-32 of the body, read chunk by chunk.
async fn digest_of(resp: reqwest::Response) -> (u16, (u64, u32)) {
    let status = resp.status().as_u16();
    let mut resp = resp;
    let mut digest = Digest::new();
    while let Some(chunk) = resp.chunk().await.expect("response body") {
        digest.update(&chunk);
    }
    (status, digest.finish())
}

/// No filter call failed (`weir_filter_failures_total` has no series).
async fn no_filter_failures(weir: &Weir) {
    let metrics = client::client()
        .get(weir.admin_url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics");
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("weir_filter_failures_total{")),
        "{metrics}"
    );
}

fn body_of(r: &Recorded) -> (u64, u32) {
    (r.body_len, r.body_crc32)
}

#[tokio::test]
async fn idempotency_takes_64_mib_each_way_under_its_default_limits() {
    let api = Upstream::builder()
        .reply(|_, _| Reply::ok().pattern(LEN))
        .count_bodies()
        .start()
        .await;
    let weir = Weir::start(&config(&api, r#"["idempotency"]"#, "")).await;
    // The key makes the filter fingerprint the body; the response is too large to
    // store, so the key is freed and the same request goes upstream again.
    for i in 0..2 {
        let resp = patient()
            .post(weir.url("/orders"))
            .header("idempotency-key", "order-64m")
            .body(PatternBody::new(LEN).into_reqwest())
            .send()
            .await
            .expect("POST");
        assert_eq!(digest_of(resp).await, (200, pattern_digest(LEN)), "#{i}");
        let r = api.request(i);
        assert_eq!(body_of(&r), pattern_digest(LEN), "#{i}: upstream body");
        assert_eq!(r.header_str("idempotency-key"), Some("order-64m"));
    }
    no_filter_failures(&weir).await;
}

#[tokio::test]
async fn cache_takes_a_64_mib_response_under_its_default_limits() {
    let api = Upstream::builder()
        .reply(|_, _| {
            Reply::ok()
                .header("cache-control", "max-age=60")
                .pattern(LEN)
        })
        .count_bodies()
        .start()
        .await;
    let weir = Weir::start(&config(&api, r#"["cache"]"#, "")).await;
    // Larger than the cache's max_entry_bytes: passed on whole, not stored, so both
    // requests reach the upstream.
    for i in 0..2 {
        let resp = patient()
            .get(weir.url("/report"))
            .send()
            .await
            .expect("GET");
        assert_eq!(resp.headers()["x-weir-cache"], "miss", "#{i}");
        assert_eq!(digest_of(resp).await, (200, pattern_digest(LEN)), "#{i}");
    }
    assert_eq!(api.count(), 2);
    no_filter_failures(&weir).await;
}

#[tokio::test]
async fn auth_re_sends_a_64_mib_body_under_its_default_limits() {
    // The API refuses the first token; auth fetches another and re-sends the request,
    // body included, which it keeps (in its memo) for that.
    let oauth = Upstream::start(|_, i| {
        Reply::ok().json(&json!({
            "access_token": format!("token-{}", i + 1),
            "token_type": "bearer",
            "expires_in": 3600,
        }))
    })
    .await;
    let api = Upstream::builder()
        .reply(|req, _| match req.header_str("authorization") {
            Some("Bearer token-1") => Reply::new(401),
            _ => Reply::ok().body("accepted"),
        })
        .count_bodies()
        .start()
        .await;
    let oauth_url = oauth.url();
    let more = format!(
        r#"
[upstreams.oauth]
url = "{oauth_url}"

[filters.auth]
outbound = ["oauth", "api"]
config = {{ oauth2 = {{ upstream = "oauth", client_id = "weir-e2e", client_secret = "s3cret", reissue_upstream = "api" }} }}
"#
    );
    let weir = WeirBuilder::new(config(&api, r#"["auth"]"#, &more))
        .start()
        .await;
    let resp = patient()
        .post(weir.url("/orders"))
        .body(PatternBody::new(LEN).into_reqwest())
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "accepted");
    let sent = api.requests();
    assert_eq!(sent.len(), 2, "the request, then the re-sent one");
    for (r, token) in sent.iter().zip(["Bearer token-1", "Bearer token-2"]) {
        assert_eq!(r.header_str("authorization"), Some(token));
        assert_eq!(body_of(r), pattern_digest(LEN), "{token}: upstream body");
    }
    no_filter_failures(&weir).await;
}
