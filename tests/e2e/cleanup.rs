//! The chain's loose ends, end to end: every filter whose `on-request` continued gets its
//! `on-response`, however weir ends the request (a `wait` past the deadline, a wait for
//! a busy filter's instance, a streamed body over the limit, a response too large or too
//! slow to buffer); a wait for an instance ends at the route deadline with 504; invalid
//! answers are logged and counted.
//!
//! The proof that a filter was told is a `breaker` before it with a window of one call:
//! one failure it hears about opens it, so the next request gets its 503 and the upstream
//! sees nothing. Without the `on-response`, the breaker would stay closed. No test
//! depends on timing: the slow parts (a `wait`, a hanging body, a busy instance) are many
//! times longer than the route timeout, and the order of events is established by
//! awaiting them.

use std::time::Duration;

use bytes::Bytes;
use prometheus_parse::{Scrape, Value};

use crate::support::body::unsized_body;
use crate::support::client::client;
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::{Weir, WeirBuilder};
use crate::support::{SLACK, WAIT};

/// One call in the window, and one failure opens it (failure rate ≥ 50 %).
const BREAKER: &str =
    r#"{ use = "breaker", config = { window_size = 1, minimum_calls = 1, wait_in_open = "1h" } }"#;

/// weir with `config` after a `[listen]` with a 1 KiB body limit and an admin listener,
/// and the `scripted` test filter at `filters/scripted.wasm`.
async fn start(config: &str) -> Weir {
    builder(config).start().await
}

/// What [`start`] starts, to add to.
fn builder(config: &str) -> WeirBuilder {
    WeirBuilder::new(format!(
        r#"[listen]
addr = "127.0.0.1:0"
max_body_bytes = "1KiB"

[admin]
addr = "127.0.0.1:0"

{config}"#
    ))
    .copy("filters/scripted.wasm", env!("WEIR_TEST_SCRIPTED"))
}

async fn get(weir: &Weir, path: &str) -> reqwest::Response {
    client()
        .get(weir.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// A response header as text, if present.
fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_owned())
}

/// Checks that `resp` is weir's JSON error with this status and code; returns the body.
async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(resp.status(), status, "{resp:?}");
    assert_eq!(
        header(&resp, "content-type").as_deref(),
        Some("application/json")
    );
    let body: serde_json::Value = resp.json().await.expect("a JSON error body");
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].is_string(), "{body}");
    body
}

/// Checks that `resp` is the breaker's own 503: it heard about the earlier failure.
async fn expect_breaker_open(resp: reqwest::Response) {
    assert_eq!(resp.status(), 503, "{resp:?}");
    let body: serde_json::Value = resp.json().await.expect("a JSON body");
    assert_eq!(
        body["error"], "breaker_open",
        "the breaker never heard how the earlier request ended: {body}"
    );
}

/// `weir_filter_failures_total` for one (route, filter, phase, kind); 0 when absent.
async fn failures(weir: &Weir, route: &str, filter: &str, phase: &str, kind: &str) -> f64 {
    let text = client()
        .get(weir.admin_url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parse /metrics");
    let want = [
        ("route", route),
        ("filter", filter),
        ("phase", phase),
        ("kind", kind),
    ];
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == "weir_filter_failures_total")
        .find(|s| want.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map_or(0.0, |s| match s.value {
            Value::Counter(v) => v,
            ref other => panic!("weir_filter_failures_total is {other:?}"),
        })
}

#[tokio::test]
async fn a_wait_past_the_deadline_is_reported_to_the_filters_that_continued() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = start(&format!(
        r#"[upstreams.api]
url = "{}"

[filters.waits]
wasm = "filters/scripted.wasm"
config = {{ tag = "w", wait_ms = 3600000 }}

[[routes]]
name = "waits"
upstream = "api"
timeout = "300ms"
filters = [{BREAKER}, "waits"]
"#,
        up.url()
    ))
    .await;

    // The wait would pass the deadline: 504 at once, as the WIT says.
    let body = expect_error(get(&weir, "/x").await, 504, "timeout").await;
    assert_eq!(body["route"], "waits", "{body}");
    // The breaker saw `error(timeout)`, a failure, and opened.
    expect_breaker_open(get(&weir, "/x").await).await;
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_response_too_large_to_buffer_is_reported_as_the_error_the_client_gets() {
    let up = Upstream::start(|_, _| Reply::ok().body(vec![b'x'; 4096])).await;
    let weir = start(&format!(
        r#"[upstreams.api]
url = "{}"

[filters.a]
wasm = "filters/scripted.wasm"
config = {{ tag = "a" }}

[[routes]]
name = "big"
upstream = "api"
filters = [{BREAKER}, "a", "cache"]
"#,
        up.url()
    ))
    .await;

    let resp = get(&weir, "/big").await;
    // `a` saw weir's 502 and answered with headers: they go on that error response,
    // which stays weir's, status and body.
    assert_eq!(header(&resp, "x-order-back").as_deref(), Some("a"));
    assert_eq!(header(&resp, "x-memo-a").as_deref(), Some("a:1"));
    let body = expect_error(resp, 502, "response_too_large").await;
    assert!(
        body["message"].as_str().unwrap().contains("cache"),
        "{body}"
    );
    // The breaker saw that 502 too, counted a failure and opened.
    expect_breaker_open(get(&weir, "/big").await).await;
    assert_eq!(up.count(), 1);
    // The request log still names weir's error, headers or not.
    let line = weir.wait_for_log("response_too_large", WAIT).await;
    assert!(line.contains("502"), "{line}");
}

#[tokio::test]
async fn a_response_body_that_does_not_come_in_time_is_an_upstream_timeout_for_the_filters() {
    // The head at once, then a body that never ends within the test.
    let up = Upstream::start(|_, _| {
        Reply::ok().chunks(vec![
            (Duration::ZERO, Bytes::from_static(b"partial")),
            (Duration::from_secs(3600), Bytes::from_static(b"rest")),
        ])
    })
    .await;
    let weir = start(&format!(
        r#"[upstreams.api]
url = "{}"

[[routes]]
name = "slow-body"
upstream = "api"
timeout = "300ms"
filters = [{BREAKER}, "cache"]
"#,
        up.url()
    ))
    .await;

    expect_error(get(&weir, "/slow").await, 504, "timeout").await;
    expect_breaker_open(get(&weir, "/slow").await).await;
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_streamed_request_body_over_the_limit_is_reported_as_413() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    // This breaker counts 413 as a failure, so that it shows it heard of one.
    let weir = start(&format!(
        r#"[upstreams.api]
url = "{}"

[[routes]]
name = "upload"
upstream = "api"
filters = [{{ use = "breaker", config = {{ window_size = 1, minimum_calls = 1, wait_in_open = "1h", failure_statuses = [413] }} }}]
"#,
        up.url()
    ))
    .await;

    // 4 x 1000 bytes without a length: the 1 KiB limit trips while weir streams it.
    let resp = client()
        .post(weir.url("/upload"))
        .body(unsized_body((0..4).map(|_| Bytes::from(vec![b'x'; 1000]))))
        .send()
        .await
        .expect("POST /upload");
    expect_error(resp, 413, "body_too_large").await;
    expect_breaker_open(get(&weir, "/upload").await).await;
}

#[tokio::test]
async fn a_wait_for_a_busy_instance_ends_at_the_deadline_with_504_and_settles_the_filters() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    // How long a call holds the filter's only instance: a guest that spins until its
    // call time runs out. (An outbound call would end at the request's own deadline,
    // before the next request's.) The second request may come up to SLACK after the
    // first, and must find the instance still held for all of its TIMEOUT.
    const HOLD: Duration = TIMEOUT.saturating_add(SLACK);
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = builder(&format!(
        r#"[upstreams.api]
url = "{}"

[filters.mark]
wasm = "filters/scripted.wasm"
config = {{ tag = "m", log = "entering the busy filter" }}

[filters.slow]
wasm = "filters/misbehave.wasm"
min_instances = 1
max_instances = 1
max_call_time = "{}ms"
on_error = "fail-open"
config = {{ mode = "loop" }}

[[routes]]
name = "busy"
upstream = "api"
timeout = "{}ms"
filters = [{BREAKER}, "mark", "slow"]
"#,
        up.url(),
        HOLD.as_millis(),
        TIMEOUT.as_millis()
    ))
    .copy("filters/misbehave.wasm", env!("WEIR_TEST_MISBEHAVE"))
    // The test waits for `mark`'s info line, whatever RUST_LOG the caller has.
    .env("RUST_LOG", "info")
    .start()
    .await;

    let first = {
        let url = weir.url("/first");
        tokio::spawn(async move { client().get(url).send().await })
    };
    // The first request is at `slow`, about to take its only instance and spin.
    weir.wait_for_log("entering the busy filter", WAIT).await;

    // Whichever of the two takes the instance holds it past the other's deadline. The
    // other waits for it until then: 504, even with `on_error = "fail-open"` (skipping
    // the filter is not what a timeout means). The one that spins gets 504 too: its
    // deadline passed while it did.
    let body = expect_error(get(&weir, "/second").await, 504, "timeout").await;
    assert_eq!(body["route"], "busy", "{body}");
    assert_eq!(up.count(), 0, "the request skipped the busy filter");
    weir.wait_for_log("no instance of the filter became free", WAIT)
        .await;
    assert_eq!(
        failures(&weir, "busy", "slow", "on_request", "busy").await,
        1.0
    );
    // The breaker before it heard `error(timeout)`, a failure, and opened.
    expect_breaker_open(get(&weir, "/third").await).await;
    assert_eq!(up.count(), 0);
    first.abort();
}

#[tokio::test]
async fn invalid_answers_are_logged_and_counted_in_either_phase() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = start(&format!(
        r#"[upstreams.api]
url = "{}"

[filters.bad-path]
wasm = "filters/scripted.wasm"
config = {{ tag = "p", set_path = "no-slash" }}

[filters.bad-status]
wasm = "filters/scripted.wasm"
config = {{ tag = "s", respond = 42 }}

[filters.bad-header]
wasm = "filters/scripted.wasm"
on_error = "fail-open"
config = {{ tag = "bad tag" }}

[[routes]]
name = "path"
match = {{ path_prefix = "/path/" }}
upstream = "api"
filters = ["bad-path"]

[[routes]]
name = "status"
match = {{ path_prefix = "/status/" }}
upstream = "api"
filters = ["bad-status"]

[[routes]]
name = "header"
match = {{ path_prefix = "/header/" }}
upstream = "api"
filters = ["bad-header"]
"#,
        up.url()
    ))
    .await;

    // Each answer is logged, with the filter's name, before its response goes out.
    let invalid = async |path: &str, filter: &str| {
        let mark = weir.log_mark();
        let resp = get(&weir, path).await;
        let line = weir
            .wait_for_log_after(mark, "filter answered something invalid", WAIT)
            .await;
        assert!(line.contains(filter), "{line}");
        resp
    };

    // on-request: an edit with a path without its `/`, then a status outside 100–999.
    let body = expect_error(invalid("/path/x", "bad-path").await, 503, "filter_failed").await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("invalid request edit"),
        "{body}"
    );
    let body = expect_error(
        invalid("/status/x", "bad-status").await,
        503,
        "filter_failed",
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("invalid response"),
        "{body}"
    );
    // on-response: a header name with a space. Fail-open lets the response through,
    // but not silently.
    assert_eq!(invalid("/header/x", "bad-header").await.status(), 200);
    assert_eq!(up.count(), 1);

    for (route, filter, phase) in [
        ("path", "bad-path", "on_request"),
        ("status", "bad-status", "on_request"),
        ("header", "bad-header", "on_response"),
    ] {
        assert_eq!(
            failures(&weir, route, filter, phase, "invalid").await,
            1.0,
            "{route}/{filter}/{phase}"
        );
    }
}

#[tokio::test]
async fn an_interim_status_or_a_hop_by_hop_header_is_an_invalid_answer() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = start(&format!(
        r#"[upstreams.api]
url = "{}"

[filters.interim]
wasm = "filters/scripted.wasm"
config = {{ tag = "i", respond = 101, respond_headers = {{ upgrade = "websocket" }} }}

[filters.framing]
wasm = "filters/scripted.wasm"
config = {{ tag = "f", respond = 200, respond_headers = {{ transfer-encoding = "chunked" }} }}

[filters.hop-back]
wasm = "filters/scripted.wasm"
config = {{ tag = "h", respond = 200, respond_in = "response", respond_headers = {{ connection = "close" }} }}

[filters.early-hints]
wasm = "filters/scripted.wasm"
config = {{ tag = "e", respond = 103, respond_in = "response" }}

[[routes]]
name = "interim"
match = {{ path_prefix = "/interim/" }}
upstream = "api"
filters = ["interim"]

[[routes]]
name = "framing"
match = {{ path_prefix = "/framing/" }}
upstream = "api"
filters = ["framing"]

[[routes]]
name = "hop-back"
match = {{ path_prefix = "/hop-back/" }}
upstream = "api"
filters = ["hop-back"]

[[routes]]
name = "early-hints"
match = {{ path_prefix = "/early-hints/" }}
upstream = "api"
filters = ["early-hints"]
"#,
        up.url()
    ))
    .await;

    for (path, route, phase, what) in [
        (
            "/interim/x",
            "interim",
            "on_request",
            "status 101 is interim",
        ),
        (
            "/framing/x",
            "framing",
            "on_request",
            "hop-by-hop header \"transfer-encoding\"",
        ),
        (
            "/hop-back/x",
            "hop-back",
            "on_response",
            "hop-by-hop header \"connection\"",
        ),
        (
            "/early-hints/x",
            "early-hints",
            "on_response",
            "status 103 is interim",
        ),
    ] {
        let mark = weir.log_mark();
        let resp = get(&weir, path).await;
        let body = expect_error(resp, 503, "filter_failed").await;
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("invalid response"), "{path}: {body}");
        assert!(message.contains(what), "{path}: {body}");
        let line = weir
            .wait_for_log_after(mark, "filter answered something invalid", WAIT)
            .await;
        assert!(line.contains(route), "{line}");
        assert_eq!(
            failures(&weir, route, route, phase, "invalid").await,
            1.0,
            "{route}/{phase}"
        );
    }
    // The on-request answers stopped the walk; the on-response ones came after the call.
    assert_eq!(up.count(), 2);
}
