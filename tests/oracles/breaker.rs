//! `breaker` against resilience4j's CircuitBreaker (ORACLES.md, "breaker"): the exact
//! sequences, on the harness's virtual clock, through the real component and state store.

use std::time::Duration;

use serde_json::{Value, json};
use weir::authoring::harness::{Harness, info, request, response, with_header};
use weir::state::StateBackend;
use weir::wasm::{Outcome, Request, RequestAction, Response, ResponseAction, UpstreamError};

/// The origin of the harness's `request(…)`, the default breaker key.
const ORIGIN: &str = "http://upstream.test";

async fn breaker(config: Value) -> Harness {
    Harness::builtin("breaker", config)
        .await
        .expect("breaker loads")
}

fn get(path: &str) -> Request {
    request("GET", path)
}

fn status(code: u16) -> Outcome {
    Outcome::Response(response(code))
}

/// `on-request`: the memo if the breaker let the call through, its answer if not.
async fn admit(h: &Harness, req: &Request) -> Result<Option<Vec<u8>>, Response> {
    match h.on_request(&info("r", 1), req).await.expect("on_request") {
        RequestAction::Continue((edit, memo)) => {
            assert!(edit.is_none(), "the breaker never edits requests");
            assert!(memo.is_some(), "a call let through carries a memo");
            Ok(memo)
        }
        RequestAction::Respond(r) => Err(r),
        RequestAction::Wait(ms) => panic!("the breaker never waits, got wait({ms})"),
    }
}

/// `on-response` of a call `admit` let through.
async fn finish(h: &Harness, req: &Request, memo: Option<Vec<u8>>, outcome: Outcome) {
    let action = h
        .on_response(&info("r", 1), req, memo.as_deref(), &outcome)
        .await
        .expect("on_response");
    assert!(
        matches!(action, ResponseAction::Continue(None)),
        "the breaker passes outcomes on untouched: {action:?}"
    );
}

/// One whole call that must be let through.
async fn call(h: &Harness, req: &Request, outcome: Outcome) {
    let memo = admit(h, req)
        .await
        .unwrap_or_else(|r| panic!("rejected with {}", r.status));
    finish(h, req, memo, outcome).await;
}

/// Asserts that the breaker answers `req` with its 503; returns `Retry-After` and the
/// JSON body.
async fn rejected(h: &Harness, req: &Request) -> (u64, Value) {
    let r = admit(h, req)
        .await
        .expect_err("the breaker let the call through");
    assert_eq!(r.status, 503);
    let header = |name: &str| weir::authoring::harness::header(&r.headers, name);
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    let retry_after = header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in whole seconds");
    let body = serde_json::from_slice(r.body.as_deref().expect("a body")).expect("JSON body");
    (retry_after, body)
}

/// The stored record of breaker `key` (the harness namespaces state keys `filter/`). It
/// is written on transitions only: an absent one is a closed breaker of generation 0.
async fn record(h: &Harness, key: &str) -> Value {
    let raw = h
        .state()
        .get(&format!("filter/circuit/{key}"))
        .await
        .expect("state");
    match raw {
        Some(raw) => serde_json::from_slice(&raw).expect("the record is JSON"),
        None => json!({ "state": "closed", "gen": 0, "since": 0 }),
    }
}

/// The stored window of breaker `key` in generation `generation`, as the memory backend
/// keeps it (`"n <calls>,<failed>,<slow> …"` or `"t 1000 <second>:<sums> …"`).
async fn window(h: &Harness, generation: u64, key: &str) -> String {
    let raw = h
        .state()
        .get(&format!("filter/window/{generation}/{key}"))
        .await
        .expect("state")
        .expect("a window");
    String::from_utf8(raw).expect("the window is text")
}

async fn state_of(h: &Harness, key: &str) -> String {
    record(h, key).await["state"]
        .as_str()
        .expect("state is a string")
        .to_owned()
}

/// Opens breaker `ORIGIN` of a window-5 breaker with five failures.
async fn open(h: &Harness) {
    for _ in 0..5 {
        call(h, &get("/"), status(500)).await;
    }
    assert_eq!(state_of(h, ORIGIN).await, "open");
}

#[tokio::test]
async fn window_5_fffss_opens_at_call_5_and_not_before() {
    let h = breaker(json!({ "window_size": 5 })).await;
    let req = get("/items");
    let seq = [500, 500, 500, 200, 200];
    for (i, code) in seq.into_iter().enumerate() {
        call(&h, &req, status(code)).await;
        let want = if i == 4 { "open" } else { "closed" };
        assert_eq!(state_of(&h, ORIGIN).await, want, "after call {}", i + 1);
    }
    let (retry_after, body) = rejected(&h, &req).await;
    assert_eq!(retry_after, 60, "resilience4j's default wait is 60 s");
    assert_eq!(body["error"], "breaker_open");
    assert_eq!(body["key"], ORIGIN);
    assert_eq!(body["state"], "open");
}

#[tokio::test]
async fn upstream_errors_always_fail_and_failure_statuses_are_configurable() {
    let h = breaker(json!({ "window_size": 4, "failure_statuses": [429] })).await;
    let req = get("/");
    // 500 is not in the list: only the 429 fails, 25 %.
    for code in [500, 500, 500, 429] {
        call(&h, &req, status(code)).await;
    }
    assert_eq!(state_of(&h, ORIGIN).await, "closed");
    // The window slides to 500 500 429 error: 50 %.
    call(&h, &req, Outcome::Error(UpstreamError::ConnectFailed)).await;
    assert_eq!(state_of(&h, ORIGIN).await, "open");
    rejected(&h, &req).await;
}

#[tokio::test]
async fn half_open_with_4_permits_rejects_the_5th_concurrent_probe_and_ffsf_reopens() {
    let h = breaker(json!({
        "window_size": 5, "wait_in_open": "5s", "permitted_calls_in_half_open": 4
    }))
    .await;
    open(&h).await;
    h.advance(Duration::from_secs(5));
    let req = get("/");
    let mut probes = Vec::new();
    for _ in 0..4 {
        probes.push(admit(&h, &req).await.expect("a probe goes through"));
    }
    assert_eq!(state_of(&h, ORIGIN).await, "half_open");
    let (retry_after, body) = rejected(&h, &req).await;
    assert_eq!(
        (retry_after, body["state"].as_str()),
        (1, Some("half_open"))
    );

    // F F S F: nothing is decided before the fourth completes, then 75 % ≥ 50 % reopens.
    let outcomes = [500, 500, 200, 500];
    for (i, (memo, code)) in probes.into_iter().zip(outcomes).enumerate() {
        finish(&h, &req, memo, status(code)).await;
        let want = if i == 3 { "open" } else { "half_open" };
        assert_eq!(state_of(&h, ORIGIN).await, want, "after probe {}", i + 1);
        if i < 3 {
            // A completed probe does not free a permit.
            rejected(&h, &req).await;
        }
    }
    let (retry_after, body) = rejected(&h, &req).await;
    assert_eq!((retry_after, body["state"].as_str()), (5, Some("open")));
}

#[tokio::test]
async fn half_open_probes_below_the_thresholds_close_it_with_a_fresh_window() {
    let h = breaker(json!({
        "window_size": 5, "wait_in_open": "5s", "permitted_calls_in_half_open": 4
    }))
    .await;
    open(&h).await;
    h.advance(Duration::from_secs(5));
    let req = get("/");
    let mut probes = Vec::new();
    for _ in 0..4 {
        probes.push(admit(&h, &req).await.expect("a probe goes through"));
    }
    // S S S F: 25 %.
    for (memo, code) in probes.into_iter().zip([200, 200, 200, 500]) {
        finish(&h, &req, memo, status(code)).await;
    }
    assert_eq!(state_of(&h, ORIGIN).await, "closed");
    // The window started afresh: four failures are not yet five calls.
    for _ in 0..4 {
        call(&h, &req, status(500)).await;
    }
    assert_eq!(state_of(&h, ORIGIN).await, "closed");
}

#[tokio::test]
async fn three_slow_successes_out_of_five_open_with_a_50_percent_slow_threshold() {
    for (threshold, want) in [(50, "open"), (100, "closed")] {
        let h = breaker(json!({
            "window_size": 5, "slow_call_duration": "1s", "slow_call_rate_threshold": threshold
        }))
        .await;
        let req = get("/");
        for (i, slow) in [true, false, true, false, true].into_iter().enumerate() {
            let memo = admit(&h, &req).await.expect("closed");
            h.advance(Duration::from_millis(if slow { 1001 } else { 1000 }));
            finish(&h, &req, memo, status(200)).await;
            if i < 4 {
                assert_eq!(state_of(&h, ORIGIN).await, "closed");
            }
        }
        assert_eq!(
            state_of(&h, ORIGIN).await,
            want,
            "slow threshold {threshold}"
        );
    }
}

#[tokio::test]
async fn wait_5s_still_open_at_3s_half_open_at_6s() {
    let h = breaker(json!({ "window_size": 5, "wait_in_open": "5s" })).await;
    open(&h).await;
    let req = get("/");
    h.advance(Duration::from_secs(3));
    let (retry_after, _) = rejected(&h, &req).await;
    assert_eq!(retry_after, 2);
    assert_eq!(state_of(&h, ORIGIN).await, "open");
    h.advance(Duration::from_secs(3));
    let probe = admit(&h, &req)
        .await
        .expect("half-open lets a probe through");
    assert_eq!(state_of(&h, ORIGIN).await, "half_open");
    finish(&h, &req, probe, status(200)).await;
}

#[tokio::test]
async fn with_fewer_than_minimum_calls_it_never_opens() {
    let h = breaker(json!({ "window_size": 20, "minimum_calls": 10 })).await;
    let req = get("/");
    for _ in 0..9 {
        call(&h, &req, status(503)).await;
    }
    // 9 of 9 failed, but 9 < 10 recorded. Nothing moved the breaker, so it has no
    // record: only its window, in generation 0.
    assert!(
        h.state()
            .get(&format!("filter/circuit/{ORIGIN}"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        window(&h, 0, ORIGIN).await,
        format!("n{}", " 1,1,0".repeat(9))
    );
    call(&h, &req, status(503)).await;
    assert_eq!(state_of(&h, ORIGIN).await, "open");
}

#[tokio::test]
async fn the_time_window_drops_old_buckets() {
    let h = breaker(json!({
        "window_type": "time", "window_size": 5, "minimum_calls": 4,
        "key": { "header": "x-tenant" }
    }))
    .await;
    let old = with_header(get("/"), "x-tenant", "old");
    let recent = with_header(get("/"), "x-tenant", "recent");
    for _ in 0..3 {
        call(&h, &old, status(500)).await;
    }
    // 6 s later the three failures have left the 5-second window: F S S S is 25 %
    // (it would be 4 of 7, 57 %, if they still counted).
    h.advance(Duration::from_secs(6));
    call(&h, &old, status(500)).await;
    for _ in 0..3 {
        call(&h, &old, status(200)).await;
    }
    // One second of the window holds calls: 4 calls, 1 failed, none slow.
    let held = window(&h, 0, "old").await;
    assert!(
        held.starts_with("t 1000 ") && held.ends_with(":4,1,0"),
        "{held}"
    );
    assert_eq!(held.matches(':').count(), 1, "{held}");

    // Within the window they do count: F F F, then F 4 s later, is 4 of 4.
    for _ in 0..3 {
        call(&h, &recent, status(500)).await;
    }
    h.advance(Duration::from_secs(4));
    call(&h, &recent, status(500)).await;
    assert_eq!(state_of(&h, "recent").await, "open");
}

#[tokio::test]
async fn the_key_can_come_from_a_header() {
    let h = breaker(json!({ "window_size": 2, "key": { "header": "x-tenant" } })).await;
    let a = with_header(get("/"), "x-tenant", "acme");
    let b = with_header(get("/"), "x-tenant", "globex");
    call(&h, &a, status(500)).await;
    call(&h, &a, status(500)).await;
    let (_, body) = rejected(&h, &a).await;
    assert_eq!(body["key"], "acme");
    // Other tenants, and requests without the header (the origin), have their own.
    call(&h, &b, status(200)).await;
    call(&h, &get("/"), status(200)).await;
    assert_eq!(state_of(&h, "globex").await, "closed");
    assert_eq!(state_of(&h, ORIGIN).await, "closed");
}

#[tokio::test]
async fn the_key_can_come_from_a_regex_over_the_url() {
    let h = breaker(json!({
        "window_size": 2, "key": { "regex": "^https?://[^/]+/v1/([a-z]+)" }
    }))
    .await;
    call(&h, &get("/v1/orders/1"), status(502)).await;
    call(&h, &get("/v1/orders/2?x=1"), status(502)).await;
    let (_, body) = rejected(&h, &get("/v1/orders/3")).await;
    assert_eq!(body["key"], "orders", "the first capture group");
    call(&h, &get("/v1/users/1"), status(200)).await;
    // No match: the origin.
    call(&h, &get("/v2/orders/1"), status(502)).await;
    call(&h, &get("/v2/orders/1"), status(502)).await;
    let (_, body) = rejected(&h, &get("/health")).await;
    assert_eq!(body["key"], ORIGIN);
    assert_eq!(state_of(&h, "users").await, "closed");

    // Without a group the whole match is the key.
    let h = breaker(json!({ "window_size": 1, "key": { "regex": "/v[0-9]+/[a-z]+" } })).await;
    call(&h, &get("/v1/orders/1"), status(500)).await;
    let (_, body) = rejected(&h, &get("/v1/orders/2")).await;
    assert_eq!(body["key"], "/v1/orders");
}

#[tokio::test]
async fn two_siblings_with_one_key_share_one_breaker() {
    let config =
        json!({ "window_size": 5, "wait_in_open": "2s", "permitted_calls_in_half_open": 2 });
    let a = breaker(config.clone()).await;
    let wasm = weir::builtin::lookup("breaker").expect("built in").wasm;
    let b = a.sibling(wasm, config).await.expect("sibling loads");
    let req = get("/");
    // One window: F F F S S across both opens it at the fifth call.
    for (h, code) in [(&a, 500), (&b, 500), (&a, 500), (&b, 200)] {
        call(h, &req, status(code)).await;
    }
    assert_eq!(state_of(&a, ORIGIN).await, "closed");
    call(&a, &req, status(200)).await;
    rejected(&a, &req).await;
    rejected(&b, &req).await;
    // One set of half-open permits.
    a.advance(Duration::from_secs(2));
    let p1 = admit(&b, &req).await.expect("probe 1");
    let p2 = admit(&a, &req).await.expect("probe 2");
    rejected(&b, &req).await;
    finish(&a, &req, p1, status(200)).await;
    finish(&b, &req, p2, status(200)).await;
    assert_eq!(state_of(&b, ORIGIN).await, "closed");
    call(&b, &req, status(200)).await;
}

#[tokio::test]
async fn invalid_config_is_refused_naming_the_key() {
    for (config, want) in [
        (
            json!({ "wait_in_open": "soon" }),
            "breaker: wait_in_open: invalid duration",
        ),
        (json!({ "window_type": "ring" }), "breaker: window_type:"),
        (
            json!({ "failure_rate_threshold": 0 }),
            "breaker: failure_rate_threshold:",
        ),
        (
            json!({ "key": { "regex": "(" } }),
            "breaker: key.regex: invalid regex",
        ),
        (
            json!({ "windowsize": 5 }),
            "breaker: unknown field `windowsize`",
        ),
    ] {
        let err = match Harness::builtin("breaker", config.clone()).await {
            Ok(_) => panic!("{config} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "{config}: {err}");
    }
}
