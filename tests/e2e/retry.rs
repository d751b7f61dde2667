//! The `retry` filter end to end: a real weir, a scripted upstream (or none), real time.
//! What the upstream recorded proves how often weir sent a request; the only timing
//! asserted is the route deadline's cap on all attempts: not before it, and not more
//! than [`SLACK`] after it.

use std::time::{Duration, Instant};

use crate::support::SLACK;
use crate::support::client::client;
use crate::support::upstream::{Reply, Upstream, closed_port};
use crate::support::weir::Weir;

/// weir with one route, `/` to `upstream_url`, running `retry` with `config` (TOML inline
/// table contents) and the route `timeout`.
async fn start(upstream_url: &str, config: &str, timeout: &str) -> Weir {
    Weir::start(&format!(
        r#"[listen]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{upstream_url}"

[[routes]]
name = "api"
upstream = "api"
timeout = "{timeout}"
filters = [{{ use = "retry", config = {{ {config} }} }}]
"#
    ))
    .await
}

fn attempts(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get("x-weir-attempts")
        .map(|v| v.to_str().expect("ASCII").to_owned())
}

#[tokio::test]
async fn two_503s_then_200_is_retried_with_the_same_body() {
    let up = Upstream::builder()
        .replies([
            Reply::new(503).body("busy 1"),
            Reply::new(503).body("busy 2"),
            Reply::ok().body("stored"),
            Reply::new(503).body("busy 3"),
            Reply::new(503).body("busy 4"),
            Reply::ok().body("charged"),
        ])
        .start()
        .await;
    let weir = start(&up.url(), "max_retries = 2", "30s").await;
    let c = client();

    // PUT is idempotent.
    let resp = c
        .put(weir.url("/items/1"))
        .body("item-body")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(attempts(&resp).as_deref(), Some("3"));
    assert_eq!(resp.text().await.unwrap(), "stored");
    let reqs = up.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("PUT", "/items/1"));
        assert_eq!(&r.body[..], b"item-body");
    }

    // POST is not, but an Idempotency-Key makes it safe to send again.
    let resp = c
        .post(weir.url("/charges"))
        .header("idempotency-key", "charge-42")
        .body(r#"{"amount":100}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(attempts(&resp).as_deref(), Some("3"));
    assert_eq!(resp.text().await.unwrap(), "charged");
    let reqs = up.requests();
    assert_eq!(reqs.len(), 6);
    for r in &reqs[3..] {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/charges"));
        assert_eq!(r.header_str("idempotency-key"), Some("charge-42"));
        assert_eq!(&r.body[..], br#"{"amount":100}"#);
    }
}

#[tokio::test]
async fn a_post_without_idempotency_key_is_not_sent_twice() {
    let up = Upstream::start(|_, i| Reply::new(503).body(format!("busy {i}"))).await;
    let weir = start(&up.url(), "max_retries = 3", "30s").await;

    let resp = client()
        .post(weir.url("/orders"))
        .body("order")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(attempts(&resp).as_deref(), Some("1"));
    assert_eq!(resp.text().await.unwrap(), "busy 0");
    // weir answers only after its last try, so the count is final.
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_connect_failure_is_retried_even_for_a_post() {
    let port = closed_port();
    let weir = start(
        &format!("http://127.0.0.1:{port}"),
        r#"max_retries = 2, retry_on = ["connect-failure"]"#,
        "30s",
    )
    .await;

    // Never sent, so safe to retry whatever the method.
    let resp = client()
        .post(weir.url("/orders"))
        .body("order")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(attempts(&resp).as_deref(), Some("3"));
    let json: serde_json::Value = resp.json().await.expect("weir's JSON error");
    assert_eq!(json["error"], "connect_failed", "{json}");
    assert_eq!(json["route"], "api", "{json}");
}

#[tokio::test]
async fn the_route_timeout_caps_all_attempts() {
    // Every try hangs. Each is cut at the per-try timeout and retried until the route
    // deadline ends the request, or until the retry filter sees that its next backoff
    // would not fit in the time left (its jittered backoff decides which): at most 5
    // tries start within the deadline, each PER_TRY after the last (a timer never fires
    // early), not max_retries + 1 = 10 (4 s); and at least 2, since the deadline leaves
    // 1.6 s after the first try for the second to start.
    const PER_TRY: Duration = Duration::from_millis(400);
    const TIMEOUT: Duration = Duration::from_secs(2);
    let up = Upstream::start(|_, _| Reply::hang()).await;
    let weir = start(
        &up.url(),
        &format!(
            r#"max_retries = 9, per_try_timeout = "{}ms""#,
            PER_TRY.as_millis()
        ),
        &format!("{}ms", TIMEOUT.as_millis()),
    )
    .await;
    let c = client();

    let started = Instant::now();
    let resp = c.get(weir.url("/slow")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 504);
    let tries: u32 = attempts(&resp)
        .expect("x-weir-attempts on the 504")
        .parse()
        .unwrap();
    let json: serde_json::Value = resp.json().await.expect("weir's JSON error");
    assert_eq!(json["error"], "timeout", "{json}");
    assert!((2..=5).contains(&tries), "{tries} attempts");
    // Every try but the last ran its whole per-try timeout.
    assert!(
        took >= PER_TRY * (tries - 1) && took < TIMEOUT + SLACK,
        "took {took:?} for {tries} tries: the {TIMEOUT:?} route timeout should end it"
    );
    let reqs = up.wait_for(2).await;
    assert!(reqs.len() <= 5, "{} tries reached the upstream", reqs.len());
}
