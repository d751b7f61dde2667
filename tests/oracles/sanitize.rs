//! `sanitize`: header hygiene, through the real component in the harness. The oracle
//! for the limits is RFC 6585 §5: a request whose header fields are too large is
//! answered with 431 Request Header Fields Too Large, before it goes anywhere.
//!
//! `exchange` applies the filter's edits as weir does, so what the scripted upstream
//! records is what weir would send, and `ex.outcome` is what the client would get.

use std::sync::Mutex;

use serde_json::{Value, json};
use weir::authoring::harness::{
    Harness, header, request, response, with_header, with_response_header,
};
use weir::wasm::{Outcome, Request};

async fn sanitize(config: Value) -> Harness {
    Harness::builtin("sanitize", config)
        .await
        .expect("valid sanitize config")
}

/// `req` with every (name, value) in `headers` added.
fn with_headers(mut req: Request, headers: &[(&str, &str)]) -> Request {
    for (n, v) in headers {
        req = with_header(req, n, v);
    }
    req
}

/// A request carrying one of every header the default strip list covers, and some the
/// upstream needs.
fn leaky_request() -> Request {
    with_headers(
        request("POST", "/orders"),
        &[
            ("cookie", "session=internal"),
            ("baggage", "tenant=acme,user=alice"),
            ("forwarded", "for=10.1.2.3;proto=http"),
            ("x-forwarded-for", "10.1.2.3"),
            ("x-forwarded-host", "orders.internal"),
            ("x-real-ip", "10.1.2.3"),
            ("x-internal-tenant", "acme"),
            ("X-Internal-Route", "blue"),
            ("authorization", "Bearer partner-token"),
            ("content-type", "application/json"),
            ("accept", "application/json"),
            ("user-agent", "orders/1.0"),
        ],
    )
}

/// The headers weir sends upstream whatever the filters do.
const WEIRS_OWN: [&str; 3] = ["host", "x-request-id", "traceparent"];

/// Runs one request through the filter; returns the header names the upstream saw, in
/// order, less the three weir itself adds after the chain (`host`, `x-request-id`,
/// `traceparent`), and the exchange.
async fn run(
    h: &Harness,
    req: Request,
    reply: Outcome,
) -> (Vec<String>, weir::authoring::harness::Exchange) {
    let seen = Mutex::new(Vec::new());
    let ex = h
        .exchange("r1", req, 1, |req, _| {
            *seen.lock().unwrap() = req
                .headers
                .iter()
                .map(|(n, _)| n.clone())
                .filter(|n| !WEIRS_OWN.contains(&n.as_str()))
                .collect();
            reply.clone()
        })
        .await
        .expect("the filter runs");
    (seen.into_inner().unwrap(), ex)
}

/// The response header names the client would get.
fn client_headers(ex: &weir::authoring::harness::Exchange) -> Vec<String> {
    match &ex.outcome {
        Outcome::Response(r) => r.headers.iter().map(|(n, _)| n.clone()).collect(),
        Outcome::Error(e) => panic!("no response: {e:?}"),
    }
}

fn upstream_reply() -> Outcome {
    let mut r = response(200);
    for (n, v) in [
        ("content-type", "application/json"),
        ("server", "Apache/2.4.1 (Unix)"),
        ("set-cookie", "partner_session=1; Path=/"),
        ("x-powered-by", "PHP/8.1"),
        ("set-cookie", "tracking=2"),
        ("etag", "\"v7\""),
        ("x-partner-debug", "node-12"),
    ] {
        r = with_response_header(r, n, v);
    }
    Outcome::Response(r)
}

/// The 431 the filter answered with: checks status, content type and the body's fields,
/// and returns the message.
fn too_large(ex: &weir::authoring::harness::Exchange) -> String {
    assert!(ex.responded, "the filter should answer from on-request");
    assert_eq!(ex.upstream_calls, 0, "a 431 request must not go upstream");
    let Outcome::Response(r) = &ex.outcome else {
        panic!("expected a 431 response, got {:?}", ex.outcome)
    };
    assert_eq!(r.status, 431);
    assert_eq!(
        header(&r.headers, "content-type").as_deref(),
        Some("application/json")
    );
    let body: Value = serde_json::from_slice(r.body.as_deref().expect("a JSON body"))
        .expect("the 431 body is JSON");
    assert_eq!(body["error"], "headers_too_large", "{body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(2), "{body}");
    body["message"].as_str().expect("a message").to_owned()
}

// === stripping ===

#[tokio::test]
async fn the_default_lists_never_reach_the_upstream_or_the_client() {
    let h = sanitize(json!({})).await;
    assert_eq!(h.info().name, "sanitize");
    let (seen, ex) = run(&h, leaky_request(), upstream_reply()).await;
    assert_eq!(
        seen,
        ["authorization", "content-type", "accept", "user-agent"]
    );
    assert_eq!(ex.upstream_calls, 1);
    assert_eq!(ex.status(), Some(200));
    assert_eq!(
        client_headers(&ex),
        ["content-type", "etag", "x-partner-debug"]
    );
}

#[tokio::test]
async fn strip_extra_adds_to_both_default_lists() {
    let h = sanitize(json!({
        "request": { "strip_extra": ["authorization", "User-Agent"] },
        "response": { "strip_extra": ["x-partner-*", "ETag"] },
    }))
    .await;
    let (seen, ex) = run(&h, leaky_request(), upstream_reply()).await;
    assert_eq!(seen, ["content-type", "accept"]);
    assert_eq!(client_headers(&ex), ["content-type"]);
}

#[tokio::test]
async fn strip_replaces_the_default_lists() {
    let h = sanitize(json!({
        "request": { "strip": ["x-internal-*", "x-forwarded-for"] },
        "response": { "strip": ["server"] },
    }))
    .await;
    let (seen, ex) = run(&h, leaky_request(), upstream_reply()).await;
    assert_eq!(
        seen,
        [
            "cookie",
            "baggage",
            "forwarded",
            "x-forwarded-host",
            "x-real-ip",
            "authorization",
            "content-type",
            "accept",
            "user-agent"
        ]
    );
    // The route wants the partner's cookies: only `server` goes. (weir's header map keeps
    // the values of one name together, in their order, as the client gets them.)
    assert_eq!(
        client_headers(&ex),
        [
            "content-type",
            "set-cookie",
            "set-cookie",
            "x-powered-by",
            "etag",
            "x-partner-debug"
        ]
    );
}

#[tokio::test]
async fn prefixes_match_whole_families_and_nothing_else() {
    let h = sanitize(json!({ "request": { "strip": ["x-debug-*"] } })).await;
    let req = with_headers(
        request("GET", "/"),
        &[
            ("x-debug-user", "a"),
            ("X-DEBUG-Flags", "b"),
            ("x-debug-", "c"),
            ("x-debug", "kept: no dash after the prefix"),
            ("x-debugger", "kept"),
        ],
    );
    let (seen, _) = run(&h, req, Outcome::Response(response(204))).await;
    assert_eq!(seen, ["x-debug", "x-debugger"]);
}

#[tokio::test]
async fn empty_lists_strip_nothing() {
    let h = sanitize(json!({ "request": { "strip": [] }, "response": { "strip": [] } })).await;
    let req = leaky_request();
    let all: Vec<String> = req.headers.iter().map(|(n, _)| n.clone()).collect();
    let (seen, ex) = run(&h, req, upstream_reply()).await;
    assert_eq!(seen, all);
    assert_eq!(client_headers(&ex).len(), 7);
}

// === allowlist mode ===

#[tokio::test]
async fn allowlist_sends_only_what_it_names_plus_the_content_headers() {
    let h = sanitize(json!({ "request": { "allow": ["Authorization", "x-partner-*"] } })).await;
    let req = with_headers(
        leaky_request(),
        &[
            ("content-encoding", "gzip"),
            ("x-partner-account", "42"),
            ("x-partner", "dropped: not under the prefix"),
        ],
    );
    let (seen, ex) = run(&h, req, upstream_reply()).await;
    assert_eq!(
        seen,
        [
            "authorization",
            "content-type",
            "content-encoding",
            "x-partner-account"
        ]
    );
    // The response side keeps its default list in allowlist mode.
    assert_eq!(
        client_headers(&ex),
        ["content-type", "etag", "x-partner-debug"]
    );
}

#[tokio::test]
async fn an_empty_allowlist_keeps_only_the_content_headers() {
    let h = sanitize(json!({ "request": { "allow": [] } })).await;
    let (seen, _) = run(&h, leaky_request(), upstream_reply()).await;
    assert_eq!(seen, ["content-type"]);
}

// === limits ===

#[tokio::test]
async fn too_many_headers_get_431_naming_the_limit_and_the_header() {
    let h = sanitize(json!({})).await;
    let mut req = request("GET", "/");
    for i in 1..=100 {
        req = with_header(req, &format!("x-h-{i}"), "v");
    }
    let (seen, ex) = run(&h, req.clone(), Outcome::Response(response(200))).await;
    assert_eq!(seen.len(), 100, "100 headers are within the default limit");
    assert_eq!(ex.status(), Some(200));

    let req = with_header(req, "x-h-101", "v");
    let (_, ex) = run(&h, req, Outcome::Response(response(200))).await;
    assert_eq!(
        too_large(&ex),
        r#"header "x-h-101" is header number 101; limits.max_headers is 100"#
    );
}

#[tokio::test]
async fn too_many_header_bytes_get_431_naming_the_limit_and_the_header() {
    let h = sanitize(json!({ "limits": { "max_header_bytes": 1000 } })).await;
    // Each header is 5 + 195 = 200 bytes: five fit exactly, the sixth is over.
    let value = "v".repeat(195);
    let mut req = request("GET", "/");
    for i in 1..=5 {
        req = with_header(req, &format!("x-p-{i}"), &value);
    }
    let (seen, _) = run(&h, req.clone(), Outcome::Response(response(200))).await;
    assert_eq!(seen.len(), 5);

    let req = with_header(req, "x-p-6", &value);
    let (_, ex) = run(&h, req, Outcome::Response(response(200))).await;
    assert_eq!(
        too_large(&ex),
        r#"header "x-p-6" brings the headers to 1200 bytes; limits.max_header_bytes is 1000"#
    );
}

#[tokio::test]
async fn a_too_long_value_gets_431_naming_the_limit_and_the_header() {
    let h = sanitize(json!({})).await;
    let req = with_header(request("GET", "/"), "x-big", &"a".repeat(8 << 10));
    let (_, ex) = run(&h, req, Outcome::Response(response(200))).await;
    assert_eq!(ex.status(), Some(200), "8 KiB is within the default limit");

    let req = with_headers(
        request("GET", "/"),
        &[("accept", "*/*"), ("x-big", &"a".repeat((8 << 10) + 1))],
    );
    let (_, ex) = run(&h, req, Outcome::Response(response(200))).await;
    assert_eq!(
        too_large(&ex),
        r#"header "x-big" has a 8193-byte value; limits.max_value_bytes is 8192"#
    );
}

#[tokio::test]
async fn stripped_headers_still_count_towards_the_limits() {
    let h = sanitize(json!({ "limits": { "max_headers": 3 } })).await;
    let req = with_headers(
        request("GET", "/"),
        &[
            ("cookie", "a"),
            ("cookie", "b"),
            ("cookie", "c"),
            ("cookie", "d"),
        ],
    );
    let (_, ex) = run(&h, req, Outcome::Response(response(200))).await;
    assert_eq!(
        too_large(&ex),
        r#"header "cookie" is header number 4; limits.max_headers is 3"#
    );
}

// === config ===

#[tokio::test]
async fn bad_configs_are_refused_at_init_naming_the_key() {
    let cases = [
        (
            json!({ "request": { "strip_extra": ["bad name"] } }),
            r#"request.strip_extra: header name "bad name" contains ' '"#,
        ),
        (
            json!({ "response": { "strip": ["x-request-id"] } }),
            r#"response.strip: "x-request-id" cannot be stripped"#,
        ),
        (
            json!({ "request": { "allow": ["accept"], "strip": ["cookie"] } }),
            "`request.allow` cannot be combined with `request.strip`",
        ),
        (
            json!({ "limits": { "max_value_bytes": 0 } }),
            "limits.max_value_bytes must be at least 1",
        ),
        (json!({ "limit": {} }), "unknown field `limit`"),
    ];
    for (config, want) in cases {
        let err = Harness::builtin("sanitize", config.clone())
            .await
            .err()
            .unwrap_or_else(|| panic!("{config} should be refused"));
        let err = err.to_string();
        assert!(err.contains("sanitize: "), "{config}: {err}");
        assert!(err.contains(want), "{config}: {err}");
    }
}
