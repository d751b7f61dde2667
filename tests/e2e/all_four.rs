//! `retry`, `limiter`, `breaker` and `cache` in one chain on one route, as the README's
//! realistic route has them: each does its part, and together they add up.

use crate::support::client::client;
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::Weir;

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII").to_owned())
}

/// The README's route: retry outermost, so every try passes the limiter, the breaker
/// and the cache.
async fn start(upstream: &str, limiter: &str, breaker: &str) -> Weir {
    Weir::start(&format!(
        r#"[listen]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{upstream}"

[[routes]]
name = "api"
upstream = "api"
timeout = "10s"
filters = [
  {{ use = "retry", config = {{ max_retries = 2, retry_on = ["gateway-error"], base_interval = "5ms" }} }},
  {{ use = "limiter", config = {{ {limiter} }} }},
  {{ use = "breaker", config = {{ {breaker} }} }},
  "cache",
]
"#
    ))
    .await
}

#[tokio::test]
async fn retried_then_cached_then_limited() {
    // /item fails twice, then answers a cacheable 200; /fresh answers uncacheable 200s.
    let up = Upstream::builder()
        .replies([
            Reply::new(503).body("busy"),
            Reply::new(503).body("busy"),
            Reply::ok()
                .header("cache-control", "max-age=60")
                .body("item v1"),
            Reply::ok()
                .header("cache-control", "no-store")
                .body("fresh 1"),
            Reply::ok()
                .header("cache-control", "no-store")
                .body("fresh 2"),
        ])
        .start()
        .await;
    let weir = start(
        &up.url(),
        "rate = 1, per = \"60s\", burst = 5",
        "window_size = 20, minimum_calls = 20",
    )
    .await;
    let c = client();

    // 1. Retry: two 503s, then a 200 that the cache stores. Each try took a token.
    let r = c.get(weir.url("/item")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-weir-attempts").as_deref(), Some("3"));
    assert_eq!(header(&r, "x-weir-cache").as_deref(), Some("miss"));
    assert!(
        header(&r, "ratelimit").is_some(),
        "the limiter annotates admitted responses"
    );
    assert_eq!(r.text().await.unwrap(), "item v1");
    assert_eq!(up.count(), 3);

    // 2. Cache: the same GET is a hit; no upstream call.
    let r = c.get(weir.url("/item")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-weir-cache").as_deref(), Some("hit"));
    assert!(header(&r, "age").is_some());
    assert_eq!(header(&r, "x-weir-attempts").as_deref(), Some("1"));
    assert_eq!(r.text().await.unwrap(), "item v1");
    assert_eq!(up.count(), 3);

    // 3. Limiter: burst 5 at 1 per minute. Three tries and one hit used four tokens;
    //    one uncached request still fits, the next is refused without reaching upstream.
    let r = c.get(weir.url("/fresh")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "fresh 1");
    assert_eq!(up.count(), 4);
    let r = c.get(weir.url("/fresh")).send().await.unwrap();
    assert_eq!(
        r.status(),
        429,
        "the limiter refuses once the burst is spent"
    );
    assert!(header(&r, "retry-after").is_some());
    assert!(header(&r, "ratelimit-policy").is_some());
    // 429 is not a gateway error: the retry filter passes it on after one try.
    assert_eq!(header(&r, "x-weir-attempts").as_deref(), Some("1"));
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn the_breaker_opens_under_retries_and_spares_the_upstream() {
    let up = Upstream::start(|_, _| Reply::new(502).body("bad gateway")).await;
    let weir = start(
        &up.url(),
        "rate = 1000, burst = 1000",
        "window_size = 6, minimum_calls = 6, wait_in_open = \"30s\"",
    )
    .await;
    let c = client();

    // Two requests of three tries each fill the window with six failures: open.
    for _ in 0..2 {
        let r = c.get(weir.url("/pay")).send().await.unwrap();
        assert_eq!(r.status(), 502);
        assert_eq!(header(&r, "x-weir-attempts").as_deref(), Some("3"));
    }
    assert_eq!(up.count(), 6);

    // Now the breaker answers every try at once; the retry filter's tries never reach
    // the upstream, and the client gets the breaker's 503 naming its key.
    let r = c.get(weir.url("/pay")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(header(&r, "retry-after").is_some());
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "breaker_open");
    assert_eq!(body["key"], up.url());
    assert_eq!(
        up.count(),
        6,
        "an open breaker spares the upstream, retries included"
    );
}
