//! The `breaker` filter end to end: a real weir, a scripted upstream, real time (with a
//! [`WAIT_IN_OPEN`] of a second plus `SLACK`, the only real wait). Every ordering is
//! established by awaiting a response; the proof that an open breaker protects the
//! upstream is the upstream's own request count.

use std::time::{Duration, Instant};

use crate::support::SLACK;
use crate::support::client::client;
use crate::support::upstream::{Reply, Upstream, closed_port};
use crate::support::weir::Weir;

/// How long the breaker stays open: long enough for the requests a test sends while it
/// is open to arrive within it on a busy machine.
const WAIT_IN_OPEN: Duration = Duration::from_secs(1).saturating_add(SLACK);

/// `window_size = minimum_calls = 4`, 50 %: four failures open it for [`WAIT_IN_OPEN`];
/// one probe decides.
fn breaker() -> String {
    format!(
        r#"{{ use = "breaker", config = {{ window_size = 4, minimum_calls = 4, wait_in_open = "{}s", permitted_calls_in_half_open = 1 }} }}"#,
        WAIT_IN_OPEN.as_secs()
    )
}

fn config(upstream_url: &str, routes: &[&str]) -> String {
    let mut toml = format!(
        r#"[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{upstream_url}"
"#
    );
    for name in routes {
        toml.push_str(&format!(
            r#"
[[routes]]
name = "{name}"
match = {{ path_prefix = "/{name}/" }}
upstream = "api"
filters = [{breaker}]
"#,
            breaker = breaker()
        ));
    }
    toml
}

async fn get(weir: &Weir, path: &str) -> reqwest::Response {
    client()
        .get(weir.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Asserts `resp` is the breaker's 503 for `key`; returns its `Retry-After`.
async fn assert_breaker_open(resp: reqwest::Response, key: &str) -> u64 {
    assert_eq!(resp.status(), 503, "{resp:?}");
    let retry_after = resp
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .expect("ASCII")
        .parse::<u64>()
        .expect("whole seconds");
    let body: serde_json::Value = resp.json().await.expect("a JSON body");
    assert_eq!(body["error"], "breaker_open", "{body}");
    assert_eq!(body["key"], key, "{body}");
    retry_after
}

/// `weir_filter_breaker_state` for (route, key), from the admin listener.
async fn state_gauge(weir: &Weir, route: &str, key: &str) -> Option<f64> {
    let text = client()
        .get(weir.admin_url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|l| l.starts_with("weir_filter_breaker_state{"))
        .filter(|l| l.contains(&format!("route=\"{route}\"")))
        .find(|l| l.contains(&format!("key=\"{key}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn opens_after_the_threshold_then_a_successful_probe_closes_it() {
    // Four failures, then healthy.
    let up = Upstream::builder()
        .reply(|_, i| if i < 4 { Reply::new(500) } else { Reply::ok() })
        .start()
        .await;
    let weir = Weir::start(&config(&up.url(), &["api"])).await;

    for _ in 0..4 {
        assert_eq!(get(&weir, "/api/items").await.status(), 500);
    }
    // The breaker opened before this, as it saw the fourth failure.
    let opened = Instant::now();
    assert_eq!(up.count(), 4);

    // Open: answered by weir at once; the upstream sees nothing more.
    for _ in 0..3 {
        let retry_after = assert_breaker_open(get(&weir, "/api/items").await, &up.url()).await;
        assert!(
            (1..=WAIT_IN_OPEN.as_secs()).contains(&retry_after),
            "{retry_after}: whole seconds until half-open, at least 1"
        );
    }
    assert_eq!(up.count(), 4, "an open breaker must not call the upstream");
    assert_eq!(state_gauge(&weir, "api", &up.url()).await, Some(1.0));

    // After the wait one probe goes through; it succeeds and closes the breaker. (100 ms
    // for the breaker's wall clock and the test's monotonic one to disagree.)
    tokio::time::sleep_until((opened + WAIT_IN_OPEN + Duration::from_millis(100)).into()).await;
    assert_eq!(get(&weir, "/api/items").await.status(), 200);
    assert_eq!(up.count(), 5);
    assert_eq!(state_gauge(&weir, "api", &up.url()).await, Some(0.0));
    for _ in 0..3 {
        assert_eq!(get(&weir, "/api/items").await.status(), 200);
    }
    assert_eq!(
        up.count(),
        8,
        "closed again: every call reaches the upstream"
    );
}

#[tokio::test]
async fn routes_to_one_upstream_share_one_breaker_and_connect_failures_count() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let weir = Weir::start(&config(&url, &["a", "b"])).await;
    // Connection refused: weir's 502, and a failure for the breaker.
    for _ in 0..4 {
        assert_eq!(get(&weir, "/a/x").await.status(), 502);
    }
    // Route b has never called the upstream, but its breaker is the same one.
    assert_breaker_open(get(&weir, "/b/x").await, &url).await;
    assert_breaker_open(get(&weir, "/a/x").await, &url).await;
}
