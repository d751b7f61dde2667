//! `idempotency` against the IETF draft `draft-ietf-httpapi-idempotency-key-header` and
//! Stripe's idempotent requests (ORACLES.md, "idempotency"): keys added to POST and
//! PATCH, stored responses replayed byte for byte, 422 for a reused key, 409 while the
//! first request is in flight, expiry, tenants, and the 255-character limit, through the
//! real component on the harness's virtual clock and state store.

use std::time::Duration;

use serde_json::{Value, json};
use weir::authoring::harness::{Exchange, Harness, header, info, request, response, with_header};
use weir::wasm::{Outcome, Request, RequestAction, RequestInfo, Response, ResponseAction};

async fn idempotency(config: Value) -> Harness {
    Harness::builtin("idempotency", config)
        .await
        .expect("the idempotency filter loads")
}

/// A POST to `/charges` with this key (if any) and body.
fn post(key: Option<&str>, body: &str) -> Request {
    let mut req = request("POST", "/charges");
    if let Some(k) = key {
        req = with_header(req, "Idempotency-Key", k);
    }
    req.body = Some(body.as_bytes().to_vec());
    req
}

/// An upstream response with two headers, one of them not UTF-8, and this body.
fn upstream_response(status: u16, body: &str) -> Outcome {
    Outcome::Response(Response {
        status,
        headers: vec![
            ("content-type".into(), b"application/json".to_vec()),
            ("x-raw".into(), vec![0xc3, 0x28, 0xff]),
        ],
        body: Some(body.as_bytes().to_vec()),
    })
}

/// One request through the filter against an upstream that answers `outcome`.
async fn send(h: &Harness, id: &str, req: Request, outcome: &Outcome) -> Exchange {
    h.exchange(id, req, 1, |_, _| outcome.clone())
        .await
        .expect("the filter answers")
}

fn response_of(ex: &Exchange) -> &Response {
    match &ex.outcome {
        Outcome::Response(r) => r,
        Outcome::Error(e) => panic!("no response: {e:?}"),
    }
}

/// The JSON `error` code of a response the filter made.
fn error_code(ex: &Exchange) -> String {
    let r = response_of(ex);
    assert_eq!(
        header(&r.headers, "content-type").as_deref(),
        Some("application/json")
    );
    let v: Value = serde_json::from_slice(r.body.as_deref().unwrap_or_default()).expect("JSON");
    v["error"].as_str().expect("an error code").to_owned()
}

/// The key a `continue` answer sets; panics on anything else.
fn added_key(action: &RequestAction) -> String {
    match action {
        RequestAction::Continue((Some(edit), None)) => header(&edit.set_headers, "idempotency-key")
            .unwrap_or_else(|| panic!("no idempotency-key in {edit:?}")),
        other => panic!("expected continue with an edit, got {other:?}"),
    }
}

#[tokio::test]
async fn the_same_key_and_body_calls_the_upstream_once_and_replays_byte_for_byte() {
    let h = idempotency(json!({})).await;
    let first = send(
        &h,
        "r1",
        post(Some("k-1"), r#"{"amount":100}"#),
        &upstream_response(503, "down"),
    )
    .await;
    assert!(!first.responded);
    assert_eq!(first.upstream_calls, 1);
    assert_eq!(first.header("x-weir-idempotent-replay"), None);

    // A 5xx is a complete response: it is replayed too, and the upstream is not called.
    let again = send(
        &h,
        "r2",
        post(Some("k-1"), r#"{"amount":100}"#),
        &upstream_response(200, "other"),
    )
    .await;
    assert!(again.responded, "answered from the store");
    assert_eq!(again.upstream_calls, 0);
    let replayed = response_of(&again);
    let Outcome::Response(original) = upstream_response(503, "down") else {
        unreachable!()
    };
    assert_eq!(replayed.status, 503);
    assert_eq!(replayed.body, original.body);
    let mut want = original.headers.clone();
    want.push(("x-weir-idempotent-replay".into(), b"true".to_vec()));
    assert_eq!(
        replayed.headers, want,
        "the stored headers in order, bytes intact"
    );

    // And again: the stored response does not change.
    let third = send(
        &h,
        "r3",
        post(Some("k-1"), r#"{"amount":100}"#),
        &upstream_response(201, "x"),
    )
    .await;
    assert_eq!((third.status(), third.upstream_calls), (Some(503), 0));
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_422() {
    let h = idempotency(json!({})).await;
    send(
        &h,
        "r1",
        post(Some("k"), r#"{"amount":100}"#),
        &upstream_response(201, "made"),
    )
    .await;
    let other = send(
        &h,
        "r2",
        post(Some("k"), r#"{"amount":999}"#),
        &upstream_response(201, "x"),
    )
    .await;
    assert_eq!((other.status(), other.upstream_calls), (Some(422), 0));
    assert_eq!(error_code(&other), "idempotency_key_reused");
    // Another path with the key is a different request too.
    let mut elsewhere = post(Some("k"), r#"{"amount":100}"#);
    elsewhere.path_with_query = "/refunds".into();
    let elsewhere = send(&h, "r3", elsewhere, &upstream_response(201, "x")).await;
    assert_eq!(elsewhere.status(), Some(422));
    // The original still replays.
    let same = send(
        &h,
        "r4",
        post(Some("k"), r#"{"amount":100}"#),
        &upstream_response(500, ""),
    )
    .await;
    assert_eq!((same.status(), same.upstream_calls), (Some(201), 0));
}

#[tokio::test]
async fn a_second_request_while_the_first_is_in_flight_gets_409_and_the_upstream_is_called_once() {
    let h = idempotency(json!({})).await;
    let req = post(Some("k"), "pay");
    // The first request passes on-request and is now waiting for the upstream.
    let memo = match h.on_request(&info("first", 1), &req).await.unwrap() {
        RequestAction::Continue((None, Some(memo))) => memo,
        other => panic!("expected continue with a memo, got {other:?}"),
    };
    let loser = send(
        &h,
        "second",
        req.clone(),
        &upstream_response(200, "must not be called"),
    )
    .await;
    assert_eq!((loser.status(), loser.upstream_calls), (Some(409), 0));
    assert_eq!(error_code(&loser), "idempotency_key_in_use");

    // The first request's response arrives and is stored.
    let action = h
        .on_response(
            &info("first", 1),
            &req,
            Some(&memo),
            &upstream_response(200, "paid"),
        )
        .await
        .unwrap();
    assert!(
        matches!(action, ResponseAction::Continue(None)),
        "{action:?}"
    );
    let after = send(&h, "third", req, &upstream_response(500, "")).await;
    assert_eq!((after.status(), after.upstream_calls), (Some(200), 0));
    assert_eq!(
        after.header("x-weir-idempotent-replay").as_deref(),
        Some("true")
    );
}

#[tokio::test]
async fn after_expiry_the_key_is_a_new_request() {
    let h = idempotency(json!({ "expiry": "1s" })).await;
    send(
        &h,
        "r1",
        post(Some("k"), "x"),
        &upstream_response(200, "one"),
    )
    .await;
    h.advance(Duration::from_millis(999));
    let replay = send(
        &h,
        "r2",
        post(Some("k"), "x"),
        &upstream_response(200, "two"),
    )
    .await;
    assert_eq!(replay.upstream_calls, 0);
    h.advance(Duration::from_millis(1));
    let fresh = send(
        &h,
        "r3",
        post(Some("k"), "x"),
        &upstream_response(200, "three"),
    )
    .await;
    assert_eq!(fresh.upstream_calls, 1);
    assert_eq!(response_of(&fresh).body.as_deref(), Some(&b"three"[..]));
}

#[tokio::test]
async fn the_default_expiry_is_24_hours() {
    let h = idempotency(json!({})).await;
    send(
        &h,
        "r1",
        post(Some("k"), "x"),
        &upstream_response(200, "one"),
    )
    .await;
    h.advance(Duration::from_secs(24 * 3600) - Duration::from_millis(1));
    let replay = send(&h, "r2", post(Some("k"), "x"), &upstream_response(200, "")).await;
    assert_eq!(replay.upstream_calls, 0);
    h.advance(Duration::from_millis(1));
    let fresh = send(&h, "r3", post(Some("k"), "x"), &upstream_response(200, "")).await;
    assert_eq!(fresh.upstream_calls, 1);
}

#[tokio::test]
async fn two_tenants_with_one_key_are_isolated() {
    let h = idempotency(json!({ "tenant": { "header": "x-tenant" } })).await;
    let as_tenant = |t: &str, body: &str| with_header(post(Some("shared"), body), "x-tenant", t);
    let a = send(
        &h,
        "a1",
        as_tenant("acme", "A"),
        &upstream_response(201, "acme's"),
    )
    .await;
    assert_eq!(a.upstream_calls, 1);
    // Another tenant, same key, another body: neither 422 nor acme's response.
    let b = send(
        &h,
        "b1",
        as_tenant("globex", "B"),
        &upstream_response(201, "globex's"),
    )
    .await;
    assert_eq!((b.status(), b.upstream_calls), (Some(201), 1));
    assert_eq!(response_of(&b).body.as_deref(), Some(&b"globex's"[..]));
    // Each tenant gets its own response back.
    let a2 = send(
        &h,
        "a2",
        as_tenant("acme", "A"),
        &upstream_response(500, ""),
    )
    .await;
    assert_eq!(response_of(&a2).body.as_deref(), Some(&b"acme's"[..]));
    let b2 = send(
        &h,
        "b2",
        as_tenant("globex", "B"),
        &upstream_response(500, ""),
    )
    .await;
    assert_eq!(response_of(&b2).body.as_deref(), Some(&b"globex's"[..]));
}

#[tokio::test]
async fn two_routes_with_one_key_are_isolated_and_weir_processes_share_keys() {
    let h = idempotency(json!({})).await;
    let wasm = weir::builtin::lookup("idempotency").expect("built in").wasm;
    // Another instance pool on the same store: another weir process with Redis.
    let other_process = h.sibling(wasm, json!({})).await.unwrap();
    let req = post(Some("k"), "x");
    let on = |route: &str, id: &str| RequestInfo {
        route: route.into(),
        ..info(id, 1)
    };
    let RequestAction::Continue((None, Some(memo))) =
        h.on_request(&on("payments", "r1"), &req).await.unwrap()
    else {
        panic!("the first request goes upstream")
    };
    h.on_response(
        &on("payments", "r1"),
        &req,
        Some(&memo),
        &upstream_response(200, "paid"),
    )
    .await
    .unwrap();
    let replay = other_process
        .on_request(&on("payments", "r2"), &req)
        .await
        .unwrap();
    assert!(
        matches!(&replay, RequestAction::Respond(r) if r.status == 200),
        "{replay:?}"
    );
    let other_route = other_process
        .on_request(&on("refunds", "r3"), &req)
        .await
        .unwrap();
    assert!(
        matches!(other_route, RequestAction::Continue((None, Some(_)))),
        "{other_route:?}"
    );
}

#[tokio::test]
async fn a_key_longer_than_255_characters_is_400() {
    let h = idempotency(json!({})).await;
    let long = send(
        &h,
        "r1",
        post(Some(&"k".repeat(256)), "x"),
        &upstream_response(200, ""),
    )
    .await;
    assert_eq!((long.status(), long.upstream_calls), (Some(400), 0));
    assert_eq!(error_code(&long), "invalid_idempotency_key");
    let longest = send(
        &h,
        "r2",
        post(Some(&"k".repeat(255)), "x"),
        &upstream_response(200, ""),
    )
    .await;
    assert_eq!((longest.status(), longest.upstream_calls), (Some(200), 1));
}

#[tokio::test]
async fn a_key_is_added_to_post_and_patch_only() {
    let h = idempotency(json!({})).await;
    let mut keys = Vec::new();
    for (i, method) in ["POST", "PATCH"].into_iter().enumerate() {
        let action = h
            .on_request(&info(&format!("r{i}"), 1), &request(method, "/x"))
            .await
            .unwrap();
        let key = added_key(&action);
        // A UUIDv4: 8-4-4-4-12 lowercase hex, version 4, variant 10xx.
        let parts: Vec<&str> = key.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{key}"
        );
        assert!(
            key.chars()
                .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert!(
            parts[2].starts_with('4') && "89ab".contains(&parts[3][..1]),
            "{key}"
        );
        keys.push(key);
    }
    assert_ne!(keys[0], keys[1], "random per request");
    for method in ["GET", "PUT", "DELETE"] {
        let action = h
            .on_request(&info("g", 1), &request(method, "/x"))
            .await
            .unwrap();
        assert!(
            matches!(action, RequestAction::Continue((None, None))),
            "{method}: {action:?}"
        );
    }
    // The methods are configurable.
    let put_only = idempotency(json!({ "methods": ["put"] })).await;
    added_key(
        &put_only
            .on_request(&info("p", 1), &request("PUT", "/x"))
            .await
            .unwrap(),
    );
    let post = put_only
        .on_request(&info("p2", 1), &request("POST", "/x"))
        .await
        .unwrap();
    assert!(
        matches!(post, RequestAction::Continue((None, None))),
        "{post:?}"
    );
}

#[tokio::test]
async fn a_generated_key_is_the_same_on_every_try_and_lets_retry_resend_a_post() {
    // Chain ["retry", "idempotency"]: the retry re-runs this filter's on-request for
    // every try of request "r1", and each must send the same key.
    let h = idempotency(json!({})).await;
    let first = added_key(
        &h.on_request(&info("r1", 1), &post(None, "x"))
            .await
            .unwrap(),
    );
    for attempt in 2..=3 {
        let again = h
            .on_request(&info("r1", attempt), &post(None, "x"))
            .await
            .unwrap();
        assert_eq!(added_key(&again), first, "try {attempt}");
    }
    let other = h
        .on_request(&info("r2", 1), &post(None, "x"))
        .await
        .unwrap();
    assert_ne!(added_key(&other), first);

    // And `retry` treats the POST with the added key as safe to send again.
    let retry = Harness::builtin("retry", json!({ "max_retries": 2 }))
        .await
        .unwrap();
    let keyed = with_header(post(None, "x"), "idempotency-key", &first);
    let RequestAction::Continue((_, memo)) =
        retry.on_request(&info("r1", 1), &keyed).await.unwrap()
    else {
        panic!("retry continues")
    };
    let decision = retry
        .on_response(
            &info("r1", 1),
            &keyed,
            memo.as_deref(),
            &Outcome::Response(response(503)),
        )
        .await
        .unwrap();
    assert!(matches!(decision, ResponseAction::Retry(_)), "{decision:?}");
    let bare = post(None, "x");
    let RequestAction::Continue((_, memo)) = retry.on_request(&info("r3", 1), &bare).await.unwrap()
    else {
        panic!("retry continues")
    };
    let decision = retry
        .on_response(
            &info("r3", 1),
            &bare,
            memo.as_deref(),
            &Outcome::Response(response(503)),
        )
        .await
        .unwrap();
    assert!(
        matches!(decision, ResponseAction::Continue(_)),
        "without a key: {decision:?}"
    );
}

#[tokio::test]
async fn a_client_key_is_not_replaced_and_goes_upstream_as_sent() {
    let h = idempotency(json!({})).await;
    let ex = h
        .exchange("r1", post(Some("client-key"), "x"), 1, |req, _| {
            let keys: Vec<_> = req
                .headers
                .iter()
                .filter(|(n, _)| n == "idempotency-key")
                .collect();
            assert_eq!(keys.len(), 1);
            assert_eq!(keys[0].1, b"client-key");
            Outcome::Response(response(200))
        })
        .await
        .unwrap();
    assert_eq!(ex.upstream_calls, 1);
}

#[tokio::test]
async fn a_response_too_large_to_store_is_passed_on_and_the_key_freed() {
    let h = idempotency(json!({ "max_response_bytes": 100 })).await;
    let big = "b".repeat(200);
    let first = send(
        &h,
        "r1",
        post(Some("k"), "x"),
        &upstream_response(200, &big),
    )
    .await;
    assert_eq!(response_of(&first).body.as_deref(), Some(big.as_bytes()));
    // Not stored: the same request goes upstream again (no 409: the key was freed).
    let second = send(
        &h,
        "r2",
        post(Some("k"), "x"),
        &upstream_response(200, "small"),
    )
    .await;
    assert_eq!((second.status(), second.upstream_calls), (Some(200), 1));
    let third = send(&h, "r3", post(Some("k"), "x"), &upstream_response(500, "")).await;
    assert_eq!((third.status(), third.upstream_calls), (Some(200), 0));
    assert_eq!(response_of(&third).body.as_deref(), Some(&b"small"[..]));
}

#[tokio::test]
async fn an_upstream_error_frees_the_key() {
    let h = idempotency(json!({})).await;
    let failed = send(
        &h,
        "r1",
        post(Some("k"), "x"),
        &Outcome::Error(weir::wasm::UpstreamError::Reset),
    )
    .await;
    assert_eq!(failed.upstream_calls, 1);
    let retried = send(
        &h,
        "r2",
        post(Some("k"), "x"),
        &upstream_response(200, "ok"),
    )
    .await;
    assert_eq!((retried.status(), retried.upstream_calls), (Some(200), 1));
}

#[tokio::test]
async fn a_request_that_never_finishes_frees_its_key_after_its_deadline() {
    let h = idempotency(json!({})).await;
    let req = post(Some("k"), "x");
    // info() leaves 30 s on the route; the marker lives that long plus 5 s.
    assert!(matches!(
        h.on_request(&info("lost", 1), &req).await.unwrap(),
        RequestAction::Continue(_)
    ));
    h.advance(Duration::from_millis(34_999));
    assert_eq!(
        send(&h, "r2", req.clone(), &upstream_response(200, ""))
            .await
            .status(),
        Some(409)
    );
    h.advance(Duration::from_millis(1));
    let fresh = send(&h, "r3", req, &upstream_response(200, "")).await;
    assert_eq!((fresh.status(), fresh.upstream_calls), (Some(200), 1));
}

#[tokio::test]
async fn config_errors_name_the_key() {
    let cases = [
        (
            json!({ "expiry": "forever" }),
            "idempotency: expiry: invalid duration",
        ),
        (
            json!({ "tenant": { "certificate": true } }),
            "idempotency: tenant: unknown field `certificate`",
        ),
        (
            json!({ "methods": [] }),
            "idempotency: methods: must name at least one method",
        ),
        (
            json!({ "max_response_bytes": "big" }),
            "idempotency: max_response_bytes: invalid size",
        ),
    ];
    for (config, want) in cases {
        let err = Harness::builtin("idempotency", config.clone())
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains(want), "{config}: {err}");
    }
}
