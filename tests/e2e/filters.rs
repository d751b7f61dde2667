//! Failures and filter chains, end to end: upstreams that are down, slow or saturated;
//! filters that trap, loop, eat memory or refuse their config (the `misbehave` test
//! filter); and the chain's semantics (order, respond, wait, retry, memo, edits) driven by
//! the `scripted` test filter (see `tests/filters/*/src/lib.rs` for their config keys).
//!
//! Every test runs its own weir and its own upstreams on 127.0.0.1. Timing is asserted
//! only where the behaviour is about time: never before the configured time, and not
//! more than [`SLACK`] after it, with whatever is being waited out lasting longer still;
//! every other ordering is established by awaiting an event (a request recorded
//! upstream, a log line, a response).

use std::time::{Duration, Instant};

use crate::support::client::{client, metrics};
use crate::support::upstream::{Reply, Upstream, closed_port};
use crate::support::weir::{Weir, WeirBuilder};
use crate::support::{SLACK, WAIT};

const LISTEN: &str = "[listen]\naddr = \"127.0.0.1:0\"\n";

/// weir with `config`, and both test filters next to it as `filters/scripted.wasm` and
/// `filters/misbehave.wasm`.
fn with_test_filters(config: impl Into<String>) -> WeirBuilder {
    WeirBuilder::new(config)
        .copy("filters/scripted.wasm", env!("WEIR_TEST_SCRIPTED"))
        .copy("filters/misbehave.wasm", env!("WEIR_TEST_MISBEHAVE"))
}

async fn start(config: impl Into<String>) -> Weir {
    with_test_filters(config).start().await
}

/// A response header as text, if present.
fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_owned())
}

/// Checks that `resp` is one of weir's JSON errors with this status, code and route, and
/// that its `request_id` is the `x-request-id` it came with; returns the body.
async fn expect_error(
    resp: reqwest::Response,
    status: u16,
    code: &str,
    route: &str,
) -> serde_json::Value {
    assert_eq!(resp.status(), status, "{resp:?}");
    assert_eq!(
        header(&resp, "content-type").as_deref(),
        Some("application/json")
    );
    let id = header(&resp, "x-request-id").expect("x-request-id on an error");
    let text = resp.text().await.expect("error body");
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(json["error"], code, "{json}");
    assert_eq!(json["route"], route, "{json}");
    assert_eq!(json["request_id"], id.as_str(), "{json}");
    assert!(json["message"].is_string(), "{json}");
    json
}

fn message(json: &serde_json::Value) -> &str {
    json["message"].as_str().expect("message is a string")
}

/// The value of the sample `name{labels…}` in a Prometheus text exposition, if present.
/// The sample's label set must be exactly `labels` (in any order).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (set, value) = match rest.strip_prefix('{') {
            Some(r) => {
                let end = r.find('}')?;
                (&r[..end], &r[end + 1..])
            }
            None => ("", rest),
        };
        if !value.starts_with(' ') {
            return None; // a longer metric name with this prefix
        }
        let mut got: Vec<(String, String)> = set
            .split("\",")
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once("=\"").expect("label=\"value\"");
                (k.to_owned(), v.trim_end_matches('"').to_owned())
            })
            .collect();
        got.sort();
        (got == want).then(|| value.trim().parse().expect("sample value"))
    })
}

/// `weir_filter_failures_total` for one (route, filter, phase, kind).
async fn failures(weir: &Weir, route: &str, filter: &str, phase: &str, kind: &str) -> Option<f64> {
    let text = metrics(weir).await;
    metric(
        &text,
        "weir_filter_failures_total",
        &[
            ("route", route),
            ("filter", filter),
            ("phase", phase),
            ("kind", kind),
        ],
    )
}

// === upstream failures ===

#[tokio::test]
async fn upstream_down_is_502_connect_failed() {
    let port = closed_port();
    let weir = start(format!(
        r#"{LISTEN}
[upstreams.down]
url = "http://127.0.0.1:{port}"

[filters.a]
wasm = "filters/scripted.wasm"
config = {{ tag = "a" }}

[[routes]]
name = "down-chain"
match = {{ path_prefix = "/chain/" }}
upstream = "down"
filters = ["a"]

[[routes]]
name = "down"
upstream = "down"
"#
    ))
    .await;
    let c = client();

    // Without filters: the direct path. The client's request id comes back.
    let resp = c
        .get(weir.url("/x"))
        .header("x-request-id", "down-test-1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&resp, "x-request-id").as_deref(),
        Some("down-test-1")
    );
    let json = expect_error(resp, 502, "connect_failed", "down").await;
    assert_eq!(json["request_id"], "down-test-1");
    let origin = format!("http://127.0.0.1:{port}");
    assert!(message(&json).contains(&origin), "{json}");

    // Through a filter chain: the filter sees the error outcome and passes it on.
    let resp = c.get(weir.url("/chain/x")).send().await.unwrap();
    assert_eq!(header(&resp, "x-memo-a"), None);
    let json = expect_error(resp, 502, "connect_failed", "down-chain").await;
    assert!(message(&json).contains(&origin), "{json}");
}

#[tokio::test]
async fn slow_upstream_is_504_at_the_route_timeout() {
    let up = Upstream::start(|req, _| {
        if req.path.starts_with("/slow/") {
            Reply::hang()
        } else {
            Reply::ok().body("warm")
        }
    })
    .await;
    let weir = start(format!(
        r#"{LISTEN}
[upstreams.up]
url = "{}"

[[routes]]
name = "slow"
match = {{ path_prefix = "/slow/" }}
upstream = "up"
timeout = "500ms"

[[routes]]
name = "warm"
upstream = "up"
"#,
        up.url()
    ))
    .await;
    let c = client();
    // Warm up the client's connection to weir and weir's to the upstream, so the timed
    // request measures the deadline and nothing else.
    let warm = c.get(weir.url("/warm")).send().await.unwrap();
    assert_eq!(warm.status(), 200);
    assert_eq!(warm.text().await.unwrap(), "warm");

    let started = Instant::now();
    let resp = c.get(weir.url("/slow/x")).send().await.unwrap();
    let took = started.elapsed();
    let json = expect_error(resp, 504, "timeout", "slow").await;
    assert!(message(&json).contains("500 ms"), "{json}");
    // The upstream hangs for an hour: only the 500 ms deadline ends this request.
    let timeout = Duration::from_millis(500);
    assert!(
        took >= timeout && took < timeout + SLACK,
        "504 after {took:?}, expected at the {timeout:?} deadline"
    );
    // The upstream did get it: the time went on waiting for the answer.
    let reqs = up.wait_for(2).await;
    assert_eq!(reqs[1].path, "/slow/x");
}

#[tokio::test]
async fn max_connections_queues_then_503_overloaded() {
    // The fast route's `timeout`, as configured below.
    const TIMEOUT: Duration = Duration::from_millis(500);
    // The slot stays busy while the second request waits: that request may start up to
    // SLACK late and take up to TIMEOUT + SLACK, and the slot must not free before.
    const HOLD: Duration = TIMEOUT.saturating_add(SLACK).saturating_add(SLACK);
    let up = Upstream::start(|req, _| {
        if req.path.starts_with("/slow/") {
            Reply::ok().body("first").delay(HOLD)
        } else {
            Reply::ok().body("third")
        }
    })
    .await;
    let weir = start(format!(
        r#"{LISTEN}
[upstreams.up]
url = "{}"
max_connections = 1

[[routes]]
name = "slow"
match = {{ path_prefix = "/slow/" }}
upstream = "up"
timeout = "30s"

[[routes]]
name = "fast"
match = {{ path_prefix = "/fast/" }}
upstream = "up"
timeout = "500ms"
"#,
        up.url()
    ))
    .await;

    let first_url = weir.url("/slow/1");
    let first = tokio::spawn(async move {
        let resp = client().get(first_url).send().await.unwrap();
        (resp.status(), resp.text().await.unwrap(), Instant::now())
    });
    // The first request holds the only slot once the upstream has it.
    up.wait_for(1).await;

    let started = Instant::now();
    let resp = client().get(weir.url("/fast/2")).send().await.unwrap();
    let took = started.elapsed();
    let second_done = Instant::now();
    let json = expect_error(resp, 503, "overloaded", "fast").await;
    assert!(message(&json).contains(&up.url()), "{json}");
    // It waited for a slot until its deadline, not refused at once.
    assert!(
        took >= TIMEOUT && took < TIMEOUT + SLACK,
        "503 after {took:?}, expected at the {TIMEOUT:?} deadline"
    );

    let (status, body, first_done) = first.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "first");
    assert!(
        second_done < first_done,
        "the 503 came while the first was held"
    );

    // The slot is free again.
    let resp = client().get(weir.url("/fast/3")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "third");
    let paths: Vec<String> = up.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/slow/1", "/fast/3"],
        "the overloaded one never went out"
    );
}

// === misbehaving filters ===

/// One upstream and a route per misbehaviour, with the admin listener for metrics.
///
/// `bad-guest` is one component with `mode = "ok"` by default; the `trap` routes give it
/// another config, so a healthy and a trapping pool of the same component live side by
/// side.
fn misbehave_config(up: &Upstream) -> String {
    format!(
        r#"{LISTEN}
[admin]
addr = "127.0.0.1:0"

[upstreams.up]
url = "{}"

[filters.bad-guest]
wasm = "filters/misbehave.wasm"
config = {{ mode = "ok" }}

[filters.open-guest]
wasm = "filters/misbehave.wasm"
on_error = "fail-open"
config = {{ mode = "trap" }}

[filters.spin]
wasm = "filters/misbehave.wasm"
max_call_time = "100ms"
config = {{ mode = "loop" }}

[filters.spin-slow]
wasm = "filters/misbehave.wasm"
max_call_time = "5s"
config = {{ mode = "loop" }}

[filters.hog]
wasm = "filters/misbehave.wasm"
max_memory = "32MiB"
config = {{ mode = "alloc" }}

[filters.flood]
wasm = "filters/misbehave.wasm"
max_call_time = "10s"
config = {{ mode = "flood" }}

[filters.mark]
wasm = "filters/scripted.wasm"
config = {{ tag = "m", log = "entering the slow loop" }}

[[routes]]
name = "ok"
match = {{ path_prefix = "/ok/" }}
upstream = "up"
filters = ["bad-guest"]

[[routes]]
name = "trap"
match = {{ path_prefix = "/trap/" }}
upstream = "up"
filters = [{{ use = "bad-guest", config = {{ mode = "trap" }} }}]

[[routes]]
name = "trap-response"
match = {{ path_prefix = "/trap-response/" }}
upstream = "up"
filters = [{{ use = "bad-guest", config = {{ mode = "trap", phase = "response" }} }}]

[[routes]]
name = "open"
match = {{ path_prefix = "/open/" }}
upstream = "up"
filters = ["open-guest"]

[[routes]]
name = "spin"
match = {{ path_prefix = "/spin/" }}
upstream = "up"
filters = ["spin"]

[[routes]]
name = "spin-slow"
match = {{ path_prefix = "/spin-slow/" }}
upstream = "up"
filters = ["mark", "spin-slow"]

[[routes]]
name = "hog"
match = {{ path_prefix = "/hog/" }}
upstream = "up"
filters = ["hog"]

[[routes]]
name = "flood"
match = {{ path_prefix = "/flood/" }}
upstream = "up"
filters = ["flood"]
"#,
        up.url()
    )
}

#[tokio::test]
async fn a_filter_that_sets_too_many_headers_is_refused_and_weir_keeps_serving() {
    let up = Upstream::start(|_, _| Reply::ok().body("upstream")).await;
    let weir = start(misbehave_config(&up)).await;
    let c = client();

    let resp = c.get(weir.url("/flood/1")).send().await.unwrap();
    let json = expect_error(resp, 503, "filter_failed", "flood").await;
    assert_eq!(
        message(&json),
        "filter `flood` failed: invalid request edit: \
         too many header names (weir keeps at most 8192 on one message)",
        "{json}"
    );
    assert_eq!(up.count(), 0, "a refused edit sends nothing upstream");
    assert_eq!(
        failures(&weir, "flood", "flood", "on_request", "invalid").await,
        Some(1.0)
    );

    let resp = c.get(weir.url("/ok/after")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.wait_for(1).await[0].path, "/ok/after");
}

#[tokio::test]
async fn trapping_filter_is_503_and_weir_keeps_serving() {
    let up = Upstream::start(|_, _| Reply::ok().body("upstream")).await;
    let weir = start(misbehave_config(&up)).await;
    let c = client();

    // Twice on the same route: weir survives the first trap, and the next instance traps too.
    for i in 0..2 {
        let resp = c.get(weir.url(&format!("/trap/{i}"))).send().await.unwrap();
        let json = expect_error(resp, 503, "filter_failed", "trap").await;
        assert!(
            message(&json).starts_with("filter `bad-guest` failed: trapped"),
            "{json}"
        );
    }
    assert_eq!(up.count(), 0, "a request whose filter trapped goes nowhere");

    // The same component with its healthy config, right after.
    let resp = c.get(weir.url("/ok/after")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "upstream");
    let reqs = up.wait_for(1).await;
    assert_eq!(reqs[0].path, "/ok/after");
    assert_eq!(reqs[0].header_str("x-misbehave"), Some("ok"));

    assert_eq!(
        failures(&weir, "trap", "bad-guest", "on_request", "trap").await,
        Some(2.0)
    );
    assert_eq!(
        failures(&weir, "ok", "bad-guest", "on_request", "trap").await,
        None
    );
    weir.wait_for_log("filter call failed", WAIT).await;
}

#[tokio::test]
async fn trap_in_on_response_is_503_after_the_upstream_answered() {
    let up = Upstream::start(|_, _| Reply::ok().body("upstream")).await;
    let weir = start(misbehave_config(&up)).await;

    let resp = client()
        .get(weir.url("/trap-response/x"))
        .send()
        .await
        .unwrap();
    let json = expect_error(resp, 503, "filter_failed", "trap-response").await;
    assert!(
        message(&json).starts_with("filter `bad-guest` failed: trapped"),
        "{json}"
    );
    // on-request ran (and set its header), the upstream answered, on-response trapped.
    let reqs = up.wait_for(1).await;
    assert_eq!(reqs[0].header_str("x-misbehave"), Some("ok"));
    assert_eq!(
        failures(&weir, "trap-response", "bad-guest", "on_response", "trap").await,
        Some(1.0)
    );

    let resp = client().get(weir.url("/ok/after")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn looping_filter_is_stopped_by_max_call_time() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = start(misbehave_config(&up)).await;

    let started = Instant::now();
    let resp = client().get(weir.url("/spin/x")).send().await.unwrap();
    let took = started.elapsed();
    let json = expect_error(resp, 503, "filter_failed", "spin").await;
    assert!(message(&json).starts_with("filter `spin` failed"), "{json}");
    assert!(message(&json).contains("call time of 100ms"), "{json}");
    // The guest never returns by itself: only the 100 ms limit ends the call.
    assert!(
        took < Duration::from_millis(100) + SLACK,
        "503 after {took:?}"
    );
    assert_eq!(up.count(), 0);
    assert_eq!(
        failures(&weir, "spin", "spin", "on_request", "timeout").await,
        Some(1.0)
    );

    // And again: the pool replaced the instance it lost.
    let resp = client().get(weir.url("/spin/y")).send().await.unwrap();
    expect_error(resp, 503, "filter_failed", "spin").await;
    assert_eq!(
        failures(&weir, "spin", "spin", "on_request", "timeout").await,
        Some(2.0)
    );
}

#[tokio::test]
async fn looping_filter_does_not_block_other_routes() {
    let up = Upstream::start(|_, _| Reply::ok().body("upstream")).await;
    // The test waits for `mark`'s info line, whatever RUST_LOG the caller has.
    let weir = with_test_filters(misbehave_config(&up))
        .env("RUST_LOG", "info")
        .start()
        .await;

    // `mark` logs as the request reaches it; `spin-slow`, right after it in the chain,
    // then spins for its whole 5 s call time: as long as SLACK, so a request on another
    // route answers before the loop ends, however busy the machine, unless the loop
    // blocks it.
    let url = weir.url("/spin-slow/x");
    let looping = tokio::spawn(async move {
        let resp = client().get(url).send().await.unwrap();
        let done = Instant::now();
        let status = resp.status().as_u16();
        let json: serde_json::Value = resp.json().await.unwrap();
        (status, json, done)
    });
    weir.wait_for_log("entering the slow loop", WAIT).await;

    let resp = client()
        .get(weir.url("/ok/meanwhile"))
        .send()
        .await
        .unwrap();
    let normal_done = Instant::now();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "upstream");

    let (status, json, loop_done) = looping.await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(json["error"], "filter_failed");
    assert_eq!(json["route"], "spin-slow");
    assert!(
        message(&json).starts_with("filter `spin-slow` failed"),
        "{json}"
    );
    assert!(message(&json).contains("call time of 5s"), "{json}");
    assert!(
        normal_done < loop_done,
        "the normal request finished while the loop was still running"
    );
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/ok/meanwhile");
}

#[tokio::test]
async fn allocating_filter_is_stopped_by_max_memory() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = start(misbehave_config(&up)).await;

    let resp = client().get(weir.url("/hog/x")).send().await.unwrap();
    let json = expect_error(resp, 503, "filter_failed", "hog").await;
    assert!(message(&json).starts_with("filter `hog` failed"), "{json}");
    assert!(message(&json).contains("memory"), "{json}");
    assert_eq!(up.count(), 0);
    assert_eq!(
        failures(&weir, "hog", "hog", "on_request", "memory").await,
        Some(1.0)
    );

    let resp = client().get(weir.url("/ok/after")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn fail_open_skips_a_trapping_filter() {
    let up = Upstream::start(|_, _| Reply::ok().body("upstream")).await;
    let weir = start(misbehave_config(&up)).await;

    let resp = client().get(weir.url("/open/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "upstream");
    let reqs = up.wait_for(1).await;
    assert_eq!(reqs[0].path, "/open/x");
    // The filter's edit never happened.
    assert_eq!(reqs[0].header("x-misbehave"), None);
    // Skipped, but still counted.
    assert_eq!(
        failures(&weir, "open", "open-guest", "on_request", "trap").await,
        Some(1.0)
    );
}

fn init_error_config() -> String {
    format!(
        r#"{LISTEN}
[upstreams.up]
url = "http://127.0.0.1:{}"

[filters.refuser]
wasm = "filters/misbehave.wasm"
config = {{ mode = "init-error" }}

[[routes]]
name = "r"
upstream = "up"
filters = ["refuser"]
"#,
        closed_port()
    )
}

#[tokio::test]
async fn init_error_refuses_to_start() {
    let line = with_test_filters(init_error_config())
        .refused("misbehave: init refused")
        .await;
    assert!(line.contains("filter `refuser`"), "{line}");
    assert!(line.contains("route `r`"), "{line}");
}

#[test]
fn init_error_fails_weir_check() {
    let (code, stdout, stderr) = with_test_filters(init_error_config()).check();
    assert_ne!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("misbehave: init refused"))
        .unwrap_or_else(|| panic!("no init error in stderr:\n{stderr}"));
    assert!(line.starts_with("error: "), "{line}");
    assert!(line.contains("filter `refuser`"), "{line}");
    assert!(!stdout.contains(": ok"), "{stdout}");
}

// === chain semantics, with the scripted filter ===

/// Three scripted filters `a`, `b` and `c` (tags alike), one upstream, and `routes`.
fn chain_config(up: &Upstream, routes: &str) -> String {
    format!(
        r#"{LISTEN}
[upstreams.up]
url = "{}"

[filters.a]
wasm = "filters/scripted.wasm"
config = {{ tag = "a" }}

[filters.b]
wasm = "filters/scripted.wasm"
config = {{ tag = "b" }}

[filters.c]
wasm = "filters/scripted.wasm"
config = {{ tag = "c" }}

{routes}"#,
        up.url()
    )
}

#[tokio::test]
async fn chain_runs_in_order_and_back_in_reverse() {
    let up = Upstream::start(|_, _| {
        Reply::ok()
            .header("x-order-back", "up")
            .body("from upstream")
    })
    .await;
    let weir = start(chain_config(
        &up,
        r#"[[routes]]
name = "abc"
upstream = "up"
filters = ["a", "b", "c"]
"#,
    ))
    .await;

    let resp = client()
        .get(weir.url("/things?n=1"))
        .header("x-order", "client")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-order-back").as_deref(), Some("up,c,b,a"));
    for tag in ["a", "b", "c"] {
        // Each filter's on-response got the memo its own on-request made.
        assert_eq!(
            header(&resp, &format!("x-memo-{tag}")),
            Some(format!("{tag}:1"))
        );
        assert_eq!(
            header(&resp, &format!("x-attempt-{tag}")).as_deref(),
            Some("1")
        );
    }
    assert_eq!(resp.text().await.unwrap(), "from upstream");

    let reqs = up.wait_for(1).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/things?n=1");
    assert_eq!(reqs[0].header_all("x-order"), [b"client,a,b,c"]);
}

#[tokio::test]
async fn filters_get_a_host_made_unique_id_even_when_clients_reuse_x_request_id() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = start(chain_config(
        &up,
        r#"[[routes]]
name = "ab"
upstream = "up"
filters = ["a", "b"]
"#,
    ))
    .await;
    let c = client();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..3 {
        let resp = c
            .get(weir.url("/x"))
            .header("x-request-id", "same-id")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // The client's id stays the trace id: returned, and what filters see as the header.
        assert_eq!(header(&resp, "x-request-id").as_deref(), Some("same-id"));
        assert_eq!(
            header(&resp, "x-seen-request-id-a").as_deref(),
            Some("same-id")
        );
        let id = header(&resp, "x-info-id-a").expect("filter a echoes request-info.id");
        assert_eq!(
            header(&resp, "x-info-id-b").as_deref(),
            Some(id.as_str()),
            "one id per request, the same for every filter"
        );
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        ids.insert(id);
    }
    assert_eq!(
        ids.len(),
        3,
        "a reused x-request-id gives no reused id: {ids:?}"
    );

    // Without one, weir makes the x-request-id, and filters see that one as the header.
    let resp = c.get(weir.url("/x")).send().await.unwrap();
    let made = header(&resp, "x-request-id").expect("x-request-id");
    assert_eq!(header(&resp, "x-seen-request-id-a"), Some(made));
    assert!(!ids.contains(&header(&resp, "x-info-id-a").unwrap()));
    let reqs = up.wait_for(4).await;
    assert_eq!(reqs[0].header_all("x-request-id"), [b"same-id"]);
}

#[tokio::test]
async fn respond_stops_the_chain() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = start(chain_config(
        &up,
        r#"[[routes]]
name = "early"
upstream = "up"
filters = ["a", { use = "b", config = { respond = 429 } }, "c"]
"#,
    ))
    .await;

    let resp = client().get(weir.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "x-responder").as_deref(), Some("b"));
    // Only the filter before the responder sees on-response.
    assert_eq!(header(&resp, "x-order-back").as_deref(), Some("a"));
    assert_eq!(header(&resp, "x-memo-a").as_deref(), Some("a:1"));
    assert_eq!(header(&resp, "x-memo-b"), None);
    assert_eq!(header(&resp, "x-memo-c"), None);
    assert!(header(&resp, "x-request-id").is_some());
    assert_eq!(resp.text().await.unwrap(), "b");
    assert_eq!(up.count(), 0, "nothing went upstream");
}

#[tokio::test]
async fn wait_delays_then_continues() {
    let up = Upstream::start(|_, _| Reply::ok().body("waited")).await;
    let weir = start(chain_config(
        &up,
        r#"[[routes]]
name = "patient"
upstream = "up"
filters = [{ use = "a", config = { wait_ms = 200 } }, "b"]
"#,
    ))
    .await;

    let started = Instant::now();
    let resp = client().get(weir.url("/x")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert!(
        took >= Duration::from_millis(200),
        "answered after {took:?}"
    );
    // The repeated on-request continued, with the memo of that call.
    assert_eq!(header(&resp, "x-memo-a").as_deref(), Some("a:1"));
    assert_eq!(header(&resp, "x-order-back").as_deref(), Some("b,a"));
    assert_eq!(resp.text().await.unwrap(), "waited");

    let reqs = up.wait_for(1).await;
    assert_eq!(reqs.len(), 1, "sent upstream once");
    assert_eq!(reqs[0].header_str("x-order"), Some("a,b"));
    assert!(
        reqs[0].received_at - started >= Duration::from_millis(200),
        "the upstream got it before the wait was over"
    );
}

#[tokio::test]
async fn wait_past_the_deadline_is_504() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = start(chain_config(
        &up,
        r#"[[routes]]
name = "impatient"
upstream = "up"
timeout = "300ms"
filters = ["b", { use = "a", config = { wait_ms = 1000 } }]
"#,
    ))
    .await;

    let resp = client().get(weir.url("/x")).send().await.unwrap();
    let json = expect_error(resp, 504, "timeout", "impatient").await;
    assert!(message(&json).contains("300 ms"), "{json}");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn retry_resends_through_later_filters_with_the_same_body() {
    let up = Upstream::builder()
        .replies([
            Reply::new(503).body("busy 1"),
            Reply::new(503).body("busy 2"),
            Reply::ok().body("third time"),
        ])
        .start()
        .await;
    let weir = start(chain_config(
        &up,
        r#"[[routes]]
name = "retrying"
upstream = "up"
filters = ["a", { use = "b", config = { retry_on_status = 503, max_attempts = 3 } }, "c"]
"#,
    ))
    .await;

    let resp = client()
        .post(weir.url("/submit"))
        .header("x-request-id", "retry-test-1")
        .body("payload-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-attempt-b").as_deref(), Some("3"));
    assert_eq!(header(&resp, "x-attempt-c").as_deref(), Some("3"));
    // a and b ran on-request once (attempt 1); c ran it again for each attempt.
    assert_eq!(header(&resp, "x-memo-a").as_deref(), Some("a:1"));
    assert_eq!(header(&resp, "x-memo-b").as_deref(), Some("b:1"));
    assert_eq!(header(&resp, "x-memo-c").as_deref(), Some("c:3"));
    // Only the last try's response reached the client.
    assert_eq!(header(&resp, "x-order-back").as_deref(), Some("c,b,a"));
    assert_eq!(resp.text().await.unwrap(), "third time");

    let reqs = up.wait_for(3).await;
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/submit");
        assert_eq!(&r.body[..], b"payload-123");
        assert_eq!(r.header_str("x-request-id"), Some("retry-test-1"));
        // Each try starts from the request as b passed it on: c added itself once.
        assert_eq!(r.header_all("x-order"), [b"a,b,c"]);
    }
}

#[tokio::test]
async fn retry_stops_at_max_attempts() {
    let up = Upstream::start(|_, i| Reply::new(503).body(format!("busy {i}"))).await;
    let weir = start(chain_config(
        &up,
        r#"[[routes]]
name = "retrying"
upstream = "up"
filters = [{ use = "b", config = { retry_on_status = 503, max_attempts = 2, retry_delay_ms = 1 } }, "c"]
"#,
    ))
    .await;

    let resp = client()
        .put(weir.url("/x"))
        .body("data")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(header(&resp, "x-attempt-b").as_deref(), Some("2"));
    assert_eq!(header(&resp, "x-memo-c").as_deref(), Some("c:2"));
    assert_eq!(resp.text().await.unwrap(), "busy 1");
    let reqs = up.wait_for(2).await;
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| &r.body[..] == b"data"));
}

#[tokio::test]
async fn retry_releases_the_connection_of_the_try_it_replaces() {
    // With one connection allowed, the retry can only go out once the 503 it replaces
    // has let go of it.
    let up = Upstream::builder()
        .replies([
            Reply::new(503).body("busy"),
            Reply::ok().body("second time"),
        ])
        .start()
        .await;
    let weir = start(format!(
        r#"{LISTEN}
[upstreams.up]
url = "{}"
max_connections = 1

[filters.b]
wasm = "filters/scripted.wasm"
config = {{ tag = "b" }}

[[routes]]
name = "single"
upstream = "up"
timeout = "5s"
filters = [{{ use = "b", config = {{ retry_on_status = 503, max_attempts = 2 }} }}]
"#,
        up.url()
    ))
    .await;

    let resp = client().get(weir.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    assert_eq!(header(&resp, "x-attempt-b").as_deref(), Some("2"));
    assert_eq!(resp.text().await.unwrap(), "second time");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn retries_stop_at_the_hard_cap() {
    let up = Upstream::start(|_, i| Reply::new(503).body(format!("busy {i}"))).await;
    let weir = start(chain_config(
        &up,
        r#"[[routes]]
name = "greedy"
upstream = "up"
filters = ["a", { use = "b", config = { retry_on_status = 503, max_attempts = 1000, retry_delay_ms = 1 } }]
"#,
    ))
    .await;

    let resp = client().get(weir.url("/x")).send().await.unwrap();
    let cap = weir::chain::MAX_ATTEMPTS;
    assert_eq!(resp.status(), 503);
    // b's last retry was refused, so its edit never happened; a saw the last attempt.
    assert_eq!(header(&resp, "x-attempt-b"), None);
    assert_eq!(header(&resp, "x-order-back").as_deref(), Some("a"));
    assert_eq!(header(&resp, "x-attempt-a"), Some(cap.to_string()));
    assert_eq!(resp.text().await.unwrap(), format!("busy {}", cap - 1));
    assert_eq!(up.count(), cap as usize);
}

#[tokio::test]
async fn retry_without_may_retry_is_ignored() {
    let up = Upstream::start(|_, i| Reply::new(503).body(format!("busy {i}"))).await;
    let weir = start(chain_config(
        &up,
        r#"[[routes]]
name = "unannounced"
upstream = "up"
filters = ["a", { use = "b", config = { retry_on_status = 503, max_attempts = 3, may_retry = false } }, "c"]
"#,
    ))
    .await;

    let resp = client()
        .post(weir.url("/x"))
        .body("once")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    // b's retry was dropped, and with it b's part of the way back.
    assert_eq!(header(&resp, "x-order-back").as_deref(), Some("c,a"));
    assert_eq!(header(&resp, "x-attempt-b"), None);
    assert_eq!(header(&resp, "x-attempt-a").as_deref(), Some("1"));
    assert_eq!(resp.text().await.unwrap(), "busy 0");
    let reqs = up.wait_for(1).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(&reqs[0].body[..], b"once");
}

#[tokio::test]
async fn set_path_rewrites_the_upstream_path() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = start(chain_config(
        &up,
        r#"[[routes]]
name = "rewrite"
match = { path_prefix = "/api/" }
strip_prefix = true
upstream = "up"
filters = [{ use = "a", config = { set_path = "/v2/items?limit=10", wants_request_body = true } }, "b"]
"#,
    ))
    .await;

    let resp = client()
        .post(weir.url("/api/v1/items?page=3"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reqs = up.wait_for(1).await;
    assert_eq!(reqs[0].path, "/v2/items?limit=10");
    assert_eq!(&reqs[0].body[..], b"hello");
    // a read the whole body; b, after it, saw a's edit.
    assert_eq!(reqs[0].header_str("x-body-len-a"), Some("5"));
    assert_eq!(reqs[0].header_str("x-order"), Some("a,b"));
}

#[tokio::test]
async fn invalid_answers_are_filter_failures() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = start(chain_config(
        &up,
        r#"[[routes]]
name = "bad-path"
match = { path_prefix = "/bad-path/" }
upstream = "up"
filters = ["a", { use = "b", config = { set_path = "no-leading-slash" } }]

[[routes]]
name = "bad-status"
match = { path_prefix = "/bad-status/" }
upstream = "up"
filters = ["a", { use = "b", config = { respond = 99 } }]

[[routes]]
name = "good"
upstream = "up"
filters = ["a", "b"]
"#,
    ))
    .await;
    let c = client();

    for (path, route) in [("/bad-path/x", "bad-path"), ("/bad-status/x", "bad-status")] {
        let resp = c.get(weir.url(path)).send().await.unwrap();
        // The filter before the culprit still sees the failure on the way back.
        assert_eq!(
            header(&resp, "x-order-back").as_deref(),
            Some("a"),
            "{route}"
        );
        let json = expect_error(resp, 503, "filter_failed", route).await;
        assert!(message(&json).starts_with("filter `b` failed"), "{json}");
        assert!(message(&json).contains("invalid"), "{json}");
    }
    assert_eq!(up.count(), 0);

    let resp = c.get(weir.url("/fine")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-order-back").as_deref(), Some("b,a"));
}

#[tokio::test]
async fn retry_resends_the_body_as_the_retrying_filter_passed_it_on() {
    let up = Upstream::builder()
        .replies([Reply::new(503), Reply::new(503), Reply::ok()])
        .start()
        .await;
    let weir = start(chain_config(
        &up,
        r#"[[routes]]
name = "rewrap"
upstream = "up"
filters = [
  { use = "a", config = { append_body = "+a" } },
  { use = "b", config = { retry_on_status = 503, max_attempts = 3 } },
  { use = "c", config = { append_body = "+c", wants_request_body = true } },
]
"#,
    ))
    .await;

    let resp = client()
        .post(weir.url("/x"))
        .body("data")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-attempt-b").as_deref(), Some("3"));
    let reqs = up.wait_for(3).await;
    // Every try starts from b's request, body included: c edits "data+a" each time.
    for r in &reqs {
        assert_eq!(r.body_str(), "data+a+c");
        assert_eq!(r.header_str("x-body-len-c"), Some("6"));
    }
}
