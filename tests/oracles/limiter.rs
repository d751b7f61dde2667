//! limiter: a token bucket with the IETF RateLimit headers (ORACLES.md, "limiter").
//!
//! Every sequence runs on the harness's virtual clock, so rates, waits and pauses are
//! checked to the millisecond.

use std::time::Duration;

use serde_json::json;
use weir::authoring::harness::{
    Harness, header, info, request, response, with_header, with_response_header,
};
use weir::builtin;
use weir::wasm::{Outcome, RequestAction, RequestInfo, Response, ResponseAction};

async fn limiter(config: serde_json::Value) -> Harness {
    Harness::builtin("limiter", config)
        .await
        .expect("valid limiter config")
}

/// Whether the limiter let the request through (and so the upstream would be called).
fn admitted(action: &RequestAction) -> bool {
    match action {
        RequestAction::Continue(_) => true,
        RequestAction::Respond(r) => {
            assert_eq!(r.status, 429, "{r:?}");
            false
        }
        RequestAction::Wait(ms) => panic!("unexpected wait({ms}) in reject mode"),
    }
}

/// The 429 the limiter answered with.
fn rejection(action: &RequestAction) -> &Response {
    match action {
        RequestAction::Respond(r) if r.status == 429 => r,
        other => panic!("expected a 429 from the limiter, got {other:?}"),
    }
}

/// The milliseconds of a `wait` answer, if it is one.
fn wait_ms(action: &RequestAction) -> Option<u32> {
    match action {
        RequestAction::Wait(ms) => Some(*ms),
        _ => None,
    }
}

fn memo(action: &RequestAction) -> Option<Vec<u8>> {
    match action {
        RequestAction::Continue((_, memo)) => memo.clone(),
        other => panic!("expected the request to pass, got {other:?}"),
    }
}

fn ok() -> Outcome {
    Outcome::Response(response(200))
}

fn info_from(id: &str, client_addr: &str) -> RequestInfo {
    RequestInfo {
        client_addr: client_addr.to_owned(),
        ..info(id, 1)
    }
}

/// The `RateLimit` header the limiter adds to an admitted response.
async fn ratelimit_on_response(h: &Harness, id: &str, memo: Option<Vec<u8>>) -> String {
    let action = h
        .on_response(&info(id, 1), &request("GET", "/"), memo.as_deref(), &ok())
        .await
        .unwrap();
    let ResponseAction::Continue(Some(edit)) = action else {
        panic!("expected RateLimit headers on the response, got {action:?}")
    };
    header(&edit.set_headers, "ratelimit").expect("RateLimit on an admitted response")
}

#[tokio::test]
async fn over_a_virtual_minute_the_admitted_count_is_rate_times_time_plus_burst() {
    let (rate, burst) = (20u64, 10u64);
    let h = limiter(json!({ "rate": rate, "burst": burst })).await;
    let req = request("GET", "/");
    let step = Duration::from_millis(10);
    let mut admitted_at = Vec::new();
    for i in 0..12_000u64 {
        let action = h
            .on_request(&info(&format!("r{i}"), 1), &req)
            .await
            .unwrap();
        if admitted(&action) {
            admitted_at.push(i * 10);
        }
        h.advance(step);
    }
    let first_minute = admitted_at.iter().filter(|&&ms| ms < 60_000).count() as f64;
    let second_minute = admitted_at.len() as f64 - first_minute;
    let want = (rate * 60 + burst) as f64;
    assert!(
        (first_minute - want).abs() <= want * 0.01,
        "first minute: {first_minute} admitted, want {want} ± 1%"
    );
    // Under steady overload there is no burst left: exactly the rate.
    let want = (rate * 60) as f64;
    assert!(
        (second_minute - want).abs() <= want * 0.01,
        "second minute: {second_minute} admitted, want {want} ± 1%"
    );
    // No one-second window ever holds more than rate + burst.
    for (k, &start) in admitted_at.iter().enumerate() {
        let in_window = admitted_at[k..]
            .iter()
            .take_while(|&&ms| ms < start + 1000)
            .count() as u64;
        assert!(
            in_window <= rate + burst,
            "{in_window} admitted in the second from {start} ms"
        );
    }
}

#[tokio::test]
async fn reject_headers_are_exact() {
    // 2 tokens per 10 s (one every 5 s), bucket of 3.
    let h = limiter(json!({ "rate": 2, "per": "10s", "burst": 3 })).await;
    let req = request("GET", "/");
    for (i, left) in [2, 1, 0].into_iter().enumerate() {
        let id = format!("a{i}");
        let ex = h.exchange(&id, req.clone(), 1, |_, _| ok()).await.unwrap();
        assert_eq!(ex.status(), Some(200));
        assert_eq!(
            ex.header("ratelimit-policy").as_deref(),
            Some("\"default\";q=2;w=10")
        );
        assert_eq!(
            ex.header("ratelimit"),
            Some(format!("\"default\";r={left};t=5"))
        );
    }
    h.advance(Duration::from_millis(3200));
    let ex = h
        .exchange("b", req.clone(), 1, |_, _| {
            panic!("a rejected request reached the upstream")
        })
        .await
        .unwrap();
    assert!(ex.responded);
    assert_eq!(ex.status(), Some(429));
    assert_eq!(ex.header("retry-after").as_deref(), Some("2"));
    assert_eq!(
        ex.header("ratelimit-policy").as_deref(),
        Some("\"default\";q=2;w=10")
    );
    assert_eq!(
        ex.header("ratelimit").as_deref(),
        Some("\"default\";r=0;t=2")
    );
    assert_eq!(
        ex.header("content-type").as_deref(),
        Some("application/json")
    );
    let Outcome::Response(r) = &ex.outcome else {
        unreachable!()
    };
    let body: serde_json::Value = serde_json::from_slice(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["route"], "test");
    assert_eq!(body["request_id"], "b");

    // Just before the token: still 1 s to go (rounded up); at 5 s it passes.
    h.advance(Duration::from_millis(1799));
    let action = h.on_request(&info("c", 1), &req).await.unwrap();
    assert_eq!(
        header(&rejection(&action).headers, "retry-after").as_deref(),
        Some("1")
    );
    h.advance(Duration::from_millis(1));
    let action = h.on_request(&info("d", 1), &req).await.unwrap();
    assert_eq!(
        ratelimit_on_response(&h, "d", memo(&action)).await,
        "\"default\";r=0;t=5"
    );
}

#[tokio::test]
async fn queue_mode_waits_exactly_until_the_reserved_token() {
    // One token every 200 ms, bucket of 1.
    let h = limiter(json!({ "rate": 5, "burst": 1, "mode": "queue" })).await;
    let req = request("GET", "/");
    assert!(matches!(
        h.on_request(&info("a", 1), &req).await.unwrap(),
        RequestAction::Continue(_)
    ));
    assert_eq!(
        wait_ms(&h.on_request(&info("b", 1), &req).await.unwrap()),
        Some(200)
    );
    assert_eq!(
        wait_ms(&h.on_request(&info("c", 1), &req).await.unwrap()),
        Some(400)
    );
    h.advance(Duration::from_millis(199));
    // Called back 1 ms early, b waits the last millisecond.
    assert_eq!(
        wait_ms(&h.on_request(&info("b", 1), &req).await.unwrap()),
        Some(1)
    );
    h.advance(Duration::from_millis(1));
    let b = h.on_request(&info("b", 1), &req).await.unwrap();
    // c holds the next token, so none is left; the one after c's comes in 200 ms.
    assert_eq!(
        ratelimit_on_response(&h, "b", memo(&b)).await,
        "\"default\";r=0;t=1"
    );
    assert_eq!(
        wait_ms(&h.on_request(&info("c", 1), &req).await.unwrap()),
        Some(200)
    );
    h.advance(Duration::from_millis(200));
    assert!(matches!(
        h.on_request(&info("c", 1), &req).await.unwrap(),
        RequestAction::Continue(_)
    ));
    // The host's part, end to end: d arrives with the bucket empty and waits 200 ms.
    let ex = h.exchange("d", req, 1, |_, _| ok()).await.unwrap();
    assert_eq!(ex.status(), Some(200));
    assert_eq!(ex.upstream_calls, 1);
    assert_eq!(ex.waited, Duration::from_millis(200));
}

#[tokio::test]
async fn queue_mode_is_bounded_by_max_wait_and_the_route_deadline() {
    let h = limiter(json!({ "rate": 5, "burst": 1, "mode": "queue", "max_wait": "500ms" })).await;
    let req = request("GET", "/");
    assert!(matches!(
        h.on_request(&info("a", 1), &req).await.unwrap(),
        RequestAction::Continue(_)
    ));
    assert_eq!(
        wait_ms(&h.on_request(&info("b", 1), &req).await.unwrap()),
        Some(200)
    );
    assert_eq!(
        wait_ms(&h.on_request(&info("c", 1), &req).await.unwrap()),
        Some(400)
    );
    // d's token would come at 600 ms: past max_wait, so 429 now, without taking it.
    let action = h.on_request(&info("d", 1), &req).await.unwrap();
    let r = rejection(&action);
    assert_eq!(header(&r.headers, "retry-after").as_deref(), Some("1"));
    assert_eq!(
        header(&r.headers, "ratelimit").as_deref(),
        Some("\"default\";r=0;t=1")
    );
    // A request with only 300 ms left before its route deadline does not wait 600 ms.
    let hurried = RequestInfo {
        remaining_ms: 300,
        ..info("e", 1)
    };
    rejection(&h.on_request(&hurried, &req).await.unwrap());
    // Neither rejection took a token: at 100 ms the next request waits for 600 ms.
    h.advance(Duration::from_millis(100));
    assert_eq!(
        wait_ms(&h.on_request(&info("f", 1), &req).await.unwrap()),
        Some(500)
    );
}

#[tokio::test]
async fn queue_mode_is_bounded_by_max_queue() {
    let h = limiter(json!({
        "rate": 1, "burst": 1, "mode": "queue", "max_wait": "1m", "max_queue": 3
    }))
    .await;
    let req = request("GET", "/");
    assert!(matches!(
        h.on_request(&info("a", 1), &req).await.unwrap(),
        RequestAction::Continue(_)
    ));
    for (id, ms) in [("b", 1000), ("c", 2000), ("d", 3000)] {
        assert_eq!(
            wait_ms(&h.on_request(&info(id, 1), &req).await.unwrap()),
            Some(ms)
        );
    }
    let action = h.on_request(&info("e", 1), &req).await.unwrap();
    assert_eq!(
        header(&rejection(&action).headers, "retry-after").as_deref(),
        Some("4")
    );
    // b's token comes and b leaves the queue: one place is free again, and only one.
    h.advance(Duration::from_secs(1));
    assert!(matches!(
        h.on_request(&info("b", 1), &req).await.unwrap(),
        RequestAction::Continue(_)
    ));
    assert_eq!(
        wait_ms(&h.on_request(&info("f", 1), &req).await.unwrap()),
        Some(3000)
    );
    rejection(&h.on_request(&info("g", 1), &req).await.unwrap());
}

#[tokio::test]
async fn key_by_header_separates_tenants() {
    let h = limiter(json!({ "rate": 2, "per": "1m", "key": { "header": "X-Api-Key" } })).await;
    let tenant = |k: &str| with_header(request("GET", "/"), "x-api-key", k);
    for id in ["a1", "a2"] {
        assert!(admitted(
            &h.on_request(&info(id, 1), &tenant("alpha")).await.unwrap()
        ));
    }
    assert!(!admitted(
        &h.on_request(&info("a3", 1), &tenant("alpha"))
            .await
            .unwrap()
    ));
    // Another tenant has a full bucket of its own.
    for id in ["b1", "b2"] {
        assert!(admitted(
            &h.on_request(&info(id, 1), &tenant("beta")).await.unwrap()
        ));
    }
    assert!(!admitted(
        &h.on_request(&info("b3", 1), &tenant("beta")).await.unwrap()
    ));
    // Requests without the header share one bucket, apart from every tenant.
    let anonymous = request("GET", "/");
    for id in ["n1", "n2"] {
        assert!(admitted(
            &h.on_request(&info(id, 1), &anonymous).await.unwrap()
        ));
    }
    assert!(!admitted(
        &h.on_request(&info("n3", 1), &anonymous).await.unwrap()
    ));
    // A minute later, alpha has its 2 tokens back.
    h.advance(Duration::from_secs(60));
    for id in ["a4", "a5"] {
        assert!(admitted(
            &h.on_request(&info(id, 1), &tenant("alpha")).await.unwrap()
        ));
    }
    assert!(!admitted(
        &h.on_request(&info("a6", 1), &tenant("alpha"))
            .await
            .unwrap()
    ));
}

#[tokio::test]
async fn key_by_client_address_ignores_the_port() {
    let h = limiter(json!({ "rate": 1, "per": "1m", "key": "client" })).await;
    let req = request("GET", "/");
    let call = |id: &'static str, addr: &'static str| {
        let (h, req) = (&h, &req);
        async move { admitted(&h.on_request(&info_from(id, addr), req).await.unwrap()) }
    };
    assert!(call("1", "10.0.0.1:40000").await);
    assert!(
        !call("2", "10.0.0.1:40001").await,
        "same address, another port"
    );
    assert!(call("3", "10.0.0.2:40000").await);
    assert!(call("4", "[2001:db8::1]:443").await);
    assert!(!call("5", "[2001:db8::1]:444").await);
    // An IPv4-mapped IPv6 address is the same client as the IPv4 address.
    assert!(!call("6", "[::ffff:10.0.0.2]:5000").await);
}

#[tokio::test]
async fn an_upstream_429_with_retry_after_seconds_pauses_the_key() {
    // One token every 6 s, bucket of 10.
    let h = limiter(json!({ "rate": 10, "per": "1m" })).await;
    let req = request("GET", "/");
    let ex = h
        .exchange("a", req.clone(), 1, |_, _| {
            Outcome::Response(with_response_header(response(429), "retry-after", "2"))
        })
        .await
        .unwrap();
    // The upstream's own 429 passes to the client as it is.
    assert_eq!(ex.status(), Some(429));
    assert_eq!(ex.header("retry-after").as_deref(), Some("2"));
    assert_eq!(ex.header("ratelimit"), None);
    // The next calls get 429 from weir, without a round trip, for 2 s.
    let never = |_: &_, _| panic!("the upstream was called during the pause");
    let ex = h.exchange("b", req.clone(), 1, never).await.unwrap();
    assert!(ex.responded);
    assert_eq!(ex.header("retry-after").as_deref(), Some("2"));
    assert_eq!(
        ex.header("ratelimit").as_deref(),
        Some("\"default\";r=0;t=2")
    );
    h.advance(Duration::from_millis(1999));
    let ex = h.exchange("c", req.clone(), 1, never).await.unwrap();
    assert!(ex.responded);
    assert_eq!(ex.header("retry-after").as_deref(), Some("1"));
    h.advance(Duration::from_millis(1));
    let ex = h.exchange("d", req.clone(), 1, |_, _| ok()).await.unwrap();
    assert_eq!(ex.upstream_calls, 1);
    assert_eq!(ex.status(), Some(200));
    // A pause takes no tokens: a's and d's are gone, and a's comes back at 6 s.
    assert_eq!(
        ex.header("ratelimit").as_deref(),
        Some("\"default\";r=8;t=4")
    );
}

#[tokio::test]
async fn an_upstream_429_with_an_http_date_pauses_only_that_key() {
    let h = limiter(json!({ "rate": 10, "key": { "header": "x-tenant" } })).await;
    let tenant = |t: &str| with_header(request("GET", "/"), "x-tenant", t);
    assert_eq!(http_date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
    let now = h.clock().wall();
    let until = Duration::from_secs(now.as_secs() + 6);
    let date = http_date(until.as_secs());
    let ex = h
        .exchange("a", tenant("t1"), 1, |_, _| {
            Outcome::Response(with_response_header(response(429), "retry-after", &date))
        })
        .await
        .unwrap();
    assert_eq!(ex.status(), Some(429));
    let action = h.on_request(&info("b", 1), &tenant("t1")).await.unwrap();
    let wait = (until - now).as_nanos().div_ceil(1_000_000_000).to_string();
    assert_eq!(
        header(&rejection(&action).headers, "retry-after"),
        Some(wait)
    );
    // Another tenant is not paused.
    assert!(admitted(
        &h.on_request(&info("c", 1), &tenant("t2")).await.unwrap()
    ));
    h.advance(until - now - Duration::from_nanos(1));
    assert!(!admitted(
        &h.on_request(&info("d", 1), &tenant("t1")).await.unwrap()
    ));
    h.advance(Duration::from_nanos(1));
    assert!(admitted(
        &h.on_request(&info("e", 1), &tenant("t1")).await.unwrap()
    ));
}

#[tokio::test]
async fn routes_and_processes_sharing_the_state_share_the_bucket() {
    let config = json!({ "rate": 3, "per": "1m" });
    let one = limiter(config.clone()).await;
    let wasm = builtin::lookup("limiter").unwrap().wasm;
    // Another pool over the same state and clock: a second weir process on the same Redis.
    let two = one.sibling(wasm, config).await.unwrap();
    let req = request("GET", "/");
    let mut passed = 0;
    for i in 0..10 {
        let h = if i % 2 == 0 { &one } else { &two };
        if admitted(
            &h.on_request(&info(&format!("r{i}"), 1), &req)
                .await
                .unwrap(),
        ) {
            passed += 1;
        }
    }
    assert_eq!(passed, 3);
}

#[tokio::test]
async fn invalid_configs_are_init_errors_naming_the_key() {
    for (config, want) in [
        (json!({ "rate": 0 }), "rate must be at least 1"),
        (json!({}), "missing field `rate`"),
        (json!({ "rate": 5, "burst": 0 }), "burst must be at least 1"),
        (
            json!({ "rate": 5, "per": "100ms" }),
            "per must be a whole number of seconds",
        ),
        (
            json!({ "rate": 5, "max_wait": "1s" }),
            "max_wait applies only to mode",
        ),
        (
            json!({ "rate": 5, "mode": "queue", "max_queue": 0 }),
            "max_queue must be at least 1",
        ),
        (json!({ "rate": 5, "key": "tenant" }), "key: expected"),
    ] {
        let err = match Harness::builtin("limiter", config.clone()).await {
            Ok(_) => panic!("{config} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&format!("limiter: {want}")) || err.contains(want),
            "{config}: {err}"
        );
    }
}

/// An IMF-fixdate (RFC 9110) for `secs` after the Unix epoch.
fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
