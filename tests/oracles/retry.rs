//! `retry` against Envoy's router retry policy (ORACLES.md): conditions, safe methods,
//! `max_retries`, full-jitter backoff, `Retry-After`, `per_try_timeout`, the retry budget
//! and `x-weir-attempts`, through the real component on the harness's virtual clock.

use std::time::Duration;

use serde_json::{Value, json};
use weir::authoring::harness::{
    Harness, header, info, request, response, with_header, with_response_header,
};
use weir::wasm::{Outcome, Request, RequestAction, RequestInfo, ResponseAction, UpstreamError};

async fn retry(config: Value) -> Harness {
    Harness::builtin("retry", config)
        .await
        .expect("the retry filter loads")
}

fn status(s: u16) -> Outcome {
    Outcome::Response(response(s))
}

fn error(e: UpstreamError) -> Outcome {
    Outcome::Error(e)
}

/// `info(id, attempt)` with `remaining_ms` left on the route.
fn info_left(id: &str, attempt: u32, remaining_ms: u64) -> RequestInfo {
    RequestInfo {
        remaining_ms,
        ..info(id, attempt)
    }
}

/// Calls `on-request` and returns the memo (the filter always continues).
async fn begin(h: &Harness, id: &str, req: &Request) -> Vec<u8> {
    match h.on_request(&info(id, 1), req).await.unwrap() {
        RequestAction::Continue((_, Some(memo))) => memo,
        other => panic!("expected continue with a memo, got {other:?}"),
    }
}

/// The delay of a `retry` answer; panics on anything else.
fn delay(action: &ResponseAction) -> Duration {
    match action {
        ResponseAction::Retry(ms) => Duration::from_millis(u64::from(*ms)),
        other => panic!("expected retry, got {other:?}"),
    }
}

/// The `x-weir-attempts` a `continue` answer sets; panics on anything else.
fn attempts_set(action: &ResponseAction) -> String {
    match action {
        ResponseAction::Continue(Some(edit)) => header(&edit.set_headers, "x-weir-attempts")
            .unwrap_or_else(|| panic!("no x-weir-attempts in {edit:?}")),
        other => panic!("expected continue with an edit, got {other:?}"),
    }
}

/// Plays one request whose first try ends with `first` and whose retry, if any, gets 200:
/// how many times the upstream was called.
async fn calls_after(h: &Harness, req: Request, first: Outcome) -> u32 {
    let ex = h
        .exchange("r", req, 10, |_, attempt| {
            if attempt == 1 {
                first.clone()
            } else {
                status(200)
            }
        })
        .await
        .unwrap();
    let calls = ex.upstream_calls;
    assert_eq!(
        ex.header("x-weir-attempts"),
        match &ex.outcome {
            Outcome::Response(_) => Some(calls.to_string()),
            Outcome::Error(_) => None,
        }
    );
    calls
}

const ERRORS: [UpstreamError; 7] = [
    UpstreamError::ConnectFailed,
    UpstreamError::ConnectTimeout,
    UpstreamError::Timeout,
    UpstreamError::Reset,
    UpstreamError::Tls,
    UpstreamError::Protocol,
    UpstreamError::Overloaded,
];

#[tokio::test]
async fn each_retry_on_condition_retries_what_envoy_retries() {
    type Case = (&'static str, fn(&Outcome) -> bool);
    let cases: [Case; 6] = [
        ("5xx", |o| match o {
            Outcome::Response(r) => (500..=599).contains(&r.status),
            Outcome::Error(_) => true,
        }),
        ("gateway-error", |o| match o {
            Outcome::Response(r) => matches!(r.status, 502..=504),
            Outcome::Error(_) => true,
        }),
        ("connect-failure", |o| {
            matches!(
                o,
                Outcome::Error(
                    UpstreamError::ConnectFailed
                        | UpstreamError::ConnectTimeout
                        | UpstreamError::Overloaded
                )
            )
        }),
        ("reset", |o| {
            matches!(
                o,
                Outcome::Error(
                    UpstreamError::Reset | UpstreamError::Timeout | UpstreamError::Protocol
                )
            )
        }),
        (
            "retriable-4xx",
            |o| matches!(o, Outcome::Response(r) if r.status == 409),
        ),
        (
            "retriable-status-codes",
            |o| matches!(o, Outcome::Response(r) if r.status == 418 || r.status == 429),
        ),
    ];
    let mut outcomes: Vec<Outcome> = [
        200, 201, 304, 400, 404, 409, 418, 429, 500, 501, 502, 503, 504, 599,
    ]
    .into_iter()
    .map(status)
    .collect();
    outcomes.extend(ERRORS.map(error));
    for (condition, want) in cases {
        let mut config = json!({ "retry_on": [condition] });
        if condition == "retriable-status-codes" {
            config["retriable_status_codes"] = json!([418, 429]);
        }
        let h = retry(config).await;
        for o in &outcomes {
            let calls = calls_after(&h, request("GET", "/"), o.clone()).await;
            assert_eq!(calls, if want(o) { 2 } else { 1 }, "{condition}: {o:?}");
        }
    }
}

#[tokio::test]
async fn max_retries_counts_retries_not_attempts() {
    for max in [0u32, 1, 3, 9] {
        let h = retry(json!({ "max_retries": max })).await;
        let ex = h
            .exchange("r", request("GET", "/"), 10, |_, _| status(503))
            .await
            .unwrap();
        assert_eq!(ex.upstream_calls, max + 1, "max_retries = {max}");
        assert_eq!(ex.status(), Some(503));
        assert_eq!(ex.header("x-weir-attempts"), Some((max + 1).to_string()));
    }
    // The default is one retry.
    let h = retry(json!({})).await;
    let ex = h
        .exchange("r", request("GET", "/"), 10, |_, _| status(500))
        .await
        .unwrap();
    assert_eq!(ex.upstream_calls, 2);
}

#[tokio::test]
async fn two_503s_then_200_is_three_attempts() {
    let h = retry(json!({ "max_retries": 2 })).await;
    let ex = h
        .exchange("r", request("PUT", "/items/1"), 10, |_, attempt| {
            status(if attempt < 3 { 503 } else { 200 })
        })
        .await
        .unwrap();
    assert_eq!(ex.status(), Some(200));
    assert_eq!(ex.upstream_calls, 3);
    assert_eq!(ex.header("x-weir-attempts").as_deref(), Some("3"));
    // Two full-jitter delays: below 25 ms and below 75 ms.
    assert!(ex.waited < Duration::from_millis(100), "{:?}", ex.waited);
}

#[tokio::test]
async fn backoff_before_retry_n_is_uniform_below_2_to_the_n_minus_1_times_base_capped() {
    const SAMPLES: usize = 300;
    // base 25 ms, max 250 ms: bounds 25, 75, 175, then 250 (375 and 775 capped).
    let bounds = [25u64, 75, 175, 250, 250, 250];
    let h = retry(json!({ "max_retries": bounds.len() })).await;
    let req = request("GET", "/");
    let mut seen: Vec<Vec<u64>> = vec![Vec::new(); bounds.len()];
    for s in 0..SAMPLES {
        let id = format!("r{s}");
        let memo = begin(&h, &id, &req).await;
        for (i, bound) in bounds.iter().enumerate() {
            let n = i as u32 + 1;
            let action = h
                .on_response(&info(&id, n), &req, Some(&memo), &status(503))
                .await
                .unwrap();
            let d = delay(&action).as_millis() as u64;
            assert!(d < *bound, "retry {n}: {d} ms, bound {bound} ms");
            assert!(d <= 250, "retry {n}: {d} ms past max_interval");
            seen[i].push(d);
        }
        let last = h
            .on_response(
                &info(&id, bounds.len() as u32 + 1),
                &req,
                Some(&memo),
                &status(200),
            )
            .await
            .unwrap();
        assert_eq!(attempts_set(&last), (bounds.len() + 1).to_string());
    }
    // Full jitter: the delays spread over the whole range, not just its top or bottom.
    for (i, bound) in bounds.iter().enumerate() {
        let min = *seen[i].iter().min().unwrap();
        let max = *seen[i].iter().max().unwrap();
        assert!(min < bound / 5, "retry {}: smallest delay {min} ms", i + 1);
        assert!(
            max >= bound * 4 / 5,
            "retry {}: largest delay {max} ms",
            i + 1
        );
        let mean = seen[i].iter().sum::<u64>() as f64 / SAMPLES as f64;
        let want = (*bound as f64 - 1.0) / 2.0;
        assert!(
            (mean - want).abs() < *bound as f64 * 0.1,
            "retry {}: mean {mean} ms, want about {want} ms",
            i + 1
        );
    }
}

#[tokio::test]
async fn backoff_follows_base_and_max_interval() {
    let h =
        retry(json!({ "max_retries": 3, "base_interval": "100ms", "max_interval": "300ms" })).await;
    let req = request("GET", "/");
    let mut largest = [0u64; 3];
    for s in 0..200 {
        let id = format!("r{s}");
        let memo = begin(&h, &id, &req).await;
        for (i, bound) in [100u64, 300, 300].iter().enumerate() {
            let action = h
                .on_response(&info(&id, i as u32 + 1), &req, Some(&memo), &status(502))
                .await
                .unwrap();
            let d = delay(&action).as_millis() as u64;
            assert!(d < *bound, "retry {}: {d} ms", i + 1);
            largest[i] = largest[i].max(d);
        }
        h.on_response(&info(&id, 4), &req, Some(&memo), &status(200))
            .await
            .unwrap();
    }
    assert!(largest[0] >= 80 && largest[1] >= 240, "{largest:?}");
}

/// An HTTP-date (IMF-fixdate) for `secs` after the Unix epoch.
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
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn http_date_formats_imf_fixdate() {
    assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(http_date(1_709_251_199), "Thu, 29 Feb 2024 23:59:59 GMT");
}

#[tokio::test]
async fn retry_after_seconds_and_http_date_take_precedence_over_backoff() {
    let h = retry(json!({
        "max_retries": 3,
        "retry_on": ["5xx", "retriable-status-codes"],
        "retriable_status_codes": [429],
    }))
    .await;
    let req = request("GET", "/");

    // Seconds, on a 503 and on a 429: far past the 250 ms backoff cap.
    for s in [503, 429] {
        let memo = begin(&h, "secs", &req).await;
        let resp = with_response_header(response(s), "Retry-After", "3");
        let action = h
            .on_response(
                &info("secs", 1),
                &req,
                Some(&memo),
                &Outcome::Response(resp),
            )
            .await
            .unwrap();
        assert_eq!(delay(&action), Duration::from_secs(3), "{s}");
        h.on_response(&info("secs", 2), &req, Some(&memo), &status(200))
            .await
            .unwrap();
    }

    // An HTTP-date 10 s ahead of the guest's clock. Move the clock to a whole second first:
    // the date has no fractions.
    let frac = h.clock().wall().subsec_nanos();
    if frac > 0 {
        h.advance(Duration::from_nanos(u64::from(1_000_000_000 - frac)));
    }
    let now = h.clock().wall().as_secs();
    let memo = begin(&h, "date", &req).await;
    let resp = with_response_header(response(503), "retry-after", &http_date(now + 10));
    let action = h
        .on_response(
            &info("date", 1),
            &req,
            Some(&memo),
            &Outcome::Response(resp),
        )
        .await
        .unwrap();
    assert_eq!(delay(&action), Duration::from_secs(10));

    // A date in the past: retry at once.
    let resp = with_response_header(response(503), "retry-after", &http_date(now - 60));
    let action = h
        .on_response(
            &info("date", 2),
            &req,
            Some(&memo),
            &Outcome::Response(resp),
        )
        .await
        .unwrap();
    assert_eq!(delay(&action), Duration::ZERO);

    // On other statuses Retry-After is ignored: the backoff applies.
    let resp = with_response_header(response(502), "retry-after", "3");
    let action = h
        .on_response(
            &info("date", 3),
            &req,
            Some(&memo),
            &Outcome::Response(resp),
        )
        .await
        .unwrap();
    assert!(delay(&action) < Duration::from_millis(175));
}

#[tokio::test]
async fn retry_after_past_the_route_deadline_returns_the_response() {
    let h = retry(json!({ "max_retries": 3 })).await;
    let req = request("GET", "/");
    let resp = Outcome::Response(with_response_header(response(503), "Retry-After", "5"));

    let memo = begin(&h, "a", &req).await;
    let action = h
        .on_response(&info_left("a", 1, 4_000), &req, Some(&memo), &resp)
        .await
        .unwrap();
    assert_eq!(attempts_set(&action), "1");

    let ex_date = http_date(h.clock().wall().as_secs() + 120);
    let resp_date = Outcome::Response(with_response_header(response(503), "Retry-After", &ex_date));
    let memo = begin(&h, "b", &req).await;
    let action = h
        .on_response(&info_left("b", 1, 30_000), &req, Some(&memo), &resp_date)
        .await
        .unwrap();
    assert_eq!(attempts_set(&action), "1");

    // The same response with time to spare is retried after the 5 s.
    let memo = begin(&h, "c", &req).await;
    let action = h
        .on_response(&info_left("c", 1, 6_000), &req, Some(&memo), &resp)
        .await
        .unwrap();
    assert_eq!(delay(&action), Duration::from_secs(5));
}

#[tokio::test]
async fn no_retry_when_the_route_has_no_time_left() {
    let h = retry(json!({ "max_retries": 3 })).await;
    let req = request("GET", "/");
    let memo = begin(&h, "a", &req).await;
    let action = h
        .on_response(&info_left("a", 1, 0), &req, Some(&memo), &status(503))
        .await
        .unwrap();
    assert_eq!(attempts_set(&action), "1");
}

#[tokio::test]
async fn only_safe_requests_are_retried_once_sent() {
    let h = retry(json!({ "max_retries": 1 })).await;
    // POST and PATCH: not after a 503, a reset or a timeout (the upstream may have acted).
    for method in ["POST", "PATCH"] {
        for o in [
            status(503),
            error(UpstreamError::Reset),
            error(UpstreamError::Timeout),
        ] {
            let calls = calls_after(&h, request(method, "/pay"), o.clone()).await;
            assert_eq!(calls, 1, "{method} {o:?}");
        }
        // Never sent: always safe.
        for e in [
            UpstreamError::ConnectFailed,
            UpstreamError::ConnectTimeout,
            UpstreamError::Overloaded,
        ] {
            let calls = calls_after(&h, request(method, "/pay"), error(e)).await;
            assert_eq!(calls, 2, "{method} {e:?}");
        }
        // An Idempotency-Key makes it safe.
        let keyed = with_header(request(method, "/pay"), "Idempotency-Key", "k-1");
        assert_eq!(calls_after(&h, keyed, status(503)).await, 2, "{method}");
    }
    for method in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
        assert_eq!(
            calls_after(&h, request(method, "/"), status(503)).await,
            2,
            "{method}"
        );
    }
    // retriable_methods replaces the idempotent set.
    let h = retry(json!({ "retriable_methods": ["POST"] })).await;
    assert_eq!(calls_after(&h, request("POST", "/"), status(503)).await, 2);
    assert_eq!(calls_after(&h, request("GET", "/"), status(503)).await, 1);
}

#[tokio::test]
async fn a_post_that_got_503_comes_back_as_it_is() {
    let h = retry(json!({ "max_retries": 3 })).await;
    let body_503 = Outcome::Response(with_response_header(response(503), "x-from", "upstream"));
    let ex = h
        .exchange("p", request("POST", "/orders"), 10, |_, _| body_503.clone())
        .await
        .unwrap();
    assert_eq!(ex.upstream_calls, 1);
    assert_eq!(ex.status(), Some(503));
    assert_eq!(ex.header("x-from").as_deref(), Some("upstream"));
    assert_eq!(ex.header("x-weir-attempts").as_deref(), Some("1"));
}

#[tokio::test]
async fn per_try_timeout_is_set_only_when_smaller_than_the_time_left() {
    let h = retry(json!({ "per_try_timeout": "2s" })).await;
    let req = request("GET", "/");
    let edit = |remaining| {
        let h = &h;
        let req = &req;
        async move {
            match h
                .on_request(&info_left("t", 1, remaining), req)
                .await
                .unwrap()
            {
                RequestAction::Continue((edit, Some(_))) => edit,
                other => panic!("{other:?}"),
            }
        }
    };
    let e = edit(30_000).await.expect("a per-try timeout edit");
    assert_eq!(e.try_timeout_ms, Some(2_000));
    assert!(e.set_headers.is_empty() && e.remove_headers.is_empty());
    assert!(e.path_with_query.is_none() && e.body.is_none());
    assert_eq!(
        edit(2_001).await.and_then(|e| e.try_timeout_ms),
        Some(2_000)
    );
    assert!(edit(2_000).await.is_none());
    assert!(edit(300).await.is_none());
    // Without per_try_timeout there is no edit at all.
    let h = retry(json!({})).await;
    assert!(matches!(
        h.on_request(&info("t", 1), &req).await.unwrap(),
        RequestAction::Continue((None, Some(_)))
    ));
}

/// Starts `active` requests to `upstream` and lets each of them fail with a 503: how many
/// got a retry. The retries stay in flight.
async fn retries_granted(h: &Harness, upstream: &str, active: usize, tag: &str) -> usize {
    let mut req = request("GET", "/");
    req.upstream = upstream.to_owned();
    let mut memos = Vec::new();
    for i in 0..active {
        memos.push(begin(h, &format!("{tag}{i}"), &req).await);
    }
    let mut granted = 0;
    for (i, memo) in memos.iter().enumerate() {
        let action = h
            .on_response(
                &info(&format!("{tag}{i}"), 1),
                &req,
                Some(memo),
                &status(503),
            )
            .await
            .unwrap();
        match action {
            ResponseAction::Retry(_) => granted += 1,
            other => assert_eq!(attempts_set(&other), "1"),
        }
    }
    granted
}

#[tokio::test]
async fn budget_allows_budget_percent_of_active_requests_but_at_least_min_concurrency() {
    let h = retry(json!({ "max_retries": 3 })).await;
    // 10 active, 20 %: 2, raised to the minimum of 3.
    assert_eq!(retries_granted(&h, "http://ten.test", 10, "t").await, 3);
    // 50 active, 20 %: 10.
    assert_eq!(retries_granted(&h, "http://fifty.test", 50, "f").await, 10);
    // 100 active, 35 %, minimum 1: 35. 2 active: the minimum.
    let h = retry(json!({ "budget_percent": 35, "min_retry_concurrency": 1 })).await;
    assert_eq!(
        retries_granted(&h, "http://hundred.test", 100, "h").await,
        35
    );
    assert_eq!(retries_granted(&h, "http://two.test", 2, "w").await, 1);
}

#[tokio::test]
async fn a_finished_retry_frees_its_slot() {
    let h =
        retry(json!({ "max_retries": 3, "budget_percent": 0, "min_retry_concurrency": 1 })).await;
    let req = request("GET", "/");
    let a = begin(&h, "a", &req).await;
    let b = begin(&h, "b", &req).await;
    let ra = h
        .on_response(&info("a", 1), &req, Some(&a), &status(503))
        .await
        .unwrap();
    delay(&ra);
    // a's retry is in flight: b gets none.
    let rb = h
        .on_response(&info("b", 1), &req, Some(&b), &status(503))
        .await
        .unwrap();
    assert_eq!(attempts_set(&rb), "1");
    // a's retry fails again: the slot is handed back and taken again for a's next retry.
    let ra = h
        .on_response(&info("a", 2), &req, Some(&a), &status(503))
        .await
        .unwrap();
    delay(&ra);
    let ra = h
        .on_response(&info("a", 3), &req, Some(&a), &status(200))
        .await
        .unwrap();
    assert_eq!(attempts_set(&ra), "3");
    // Now c can retry.
    let c = begin(&h, "c", &req).await;
    let rc = h
        .on_response(&info("c", 1), &req, Some(&c), &status(503))
        .await
        .unwrap();
    delay(&rc);
}

#[tokio::test]
async fn the_budget_is_shared_across_routes_and_survives_lost_decrements() {
    let h = retry(json!({})).await;
    let wasm = weir::builtin::lookup("retry").unwrap().wasm;
    let other_route = h.sibling(wasm, json!({ "max_retries": 2 })).await.unwrap();
    // Three retries to one upstream from the first route, never answered (the client
    // went away mid-retry): the budget is spent for both routes.
    assert_eq!(retries_granted(&h, "http://shared.test", 3, "a").await, 3);
    assert_eq!(
        retries_granted(&other_route, "http://shared.test", 1, "b").await,
        0
    );
    // Another upstream has its own budget.
    assert_eq!(
        retries_granted(&other_route, "http://elsewhere.test", 1, "c").await,
        1
    );
    // The lost decrements are forgotten once their time bucket leaves the window.
    h.advance(Duration::from_secs(51));
    assert_eq!(
        retries_granted(&other_route, "http://shared.test", 1, "d").await,
        1
    );
}

#[tokio::test]
async fn invalid_config_is_refused_naming_the_key() {
    for (config, want) in [
        (json!({ "max_retries": 10 }), "max_retries"),
        (json!({ "retry_on": ["5xx", "sometimes"] }), "retry_on"),
        (json!({ "base_interval": "fast" }), "base_interval"),
        (json!({ "per_try_timeout": 2 }), "per_try_timeout"),
        (json!({ "budget_percent": 150 }), "budget_percent"),
        (json!({ "retry": 1 }), "unknown field `retry`"),
    ] {
        let err = Harness::builtin("retry", config.clone())
            .await
            .err()
            .unwrap_or_else(|| panic!("{config} was accepted"))
            .to_string();
        assert!(err.contains(&format!("retry: {want}")), "{config}: {err}");
    }
    assert!(retry(json!({})).await.info().may_retry);
}
