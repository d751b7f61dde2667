//! `auth`: the static credential modes through the real component in the harness. The
//! oracles are RFC 6750 §2.1 (`Authorization: Bearer <token>`), RFC 7617 §2 (Basic, with
//! its own "Aladdin" / "open sesame" example) and RFC 3986 §2 (percent-encoding of a
//! query parameter). The OAuth2 flow needs `outbound`, which the harness does not
//! provide: here it shows only that a token that cannot be fetched stops the request.
//!
//! `exchange` applies the filter's edits as weir does, so what the scripted upstream
//! records is what weir would send.

use std::sync::Mutex;

use serde_json::{Value, json};
use weir::authoring::harness::{Harness, header, request, response, with_header};
use weir::wasm::{Outcome, Request};

async fn auth(config: Value) -> Harness {
    Harness::builtin("auth", config)
        .await
        .expect("valid auth config")
}

/// Runs one request through the filter; returns what the upstream saw (if it was
/// called) and the exchange.
async fn run(h: &Harness, req: Request) -> (Option<Request>, weir::authoring::harness::Exchange) {
    let seen = Mutex::new(None);
    let ex = h
        .exchange("r1", req, 1, |req, _| {
            *seen.lock().unwrap() = Some(req.clone());
            Outcome::Response(response(200))
        })
        .await
        .expect("the filter runs");
    (seen.into_inner().unwrap(), ex)
}

#[tokio::test]
async fn bearer_replaces_the_clients_authorization() {
    let h = auth(json!({ "bearer": { "token": "mF_9.B5f-4.1JqM" } })).await;
    let req = with_header(
        request("GET", "/v1/charges"),
        "Authorization",
        "Bearer forged",
    );
    let (seen, ex) = run(&h, req).await;
    let seen = seen.expect("the request went on");
    assert_eq!(ex.status(), Some(200));
    let values: Vec<_> = seen
        .headers
        .iter()
        .filter(|(n, _)| n == "authorization")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(
        values,
        ["Bearer mF_9.B5f-4.1JqM"],
        "exactly one, the configured one"
    );
    assert!(!h.info().wants_request_body && !h.info().may_retry);
}

#[tokio::test]
async fn basic_matches_rfc_7617s_example() {
    let h = auth(json!({ "basic": { "username": "Aladdin", "password": "open sesame" } })).await;
    let (seen, _) = run(&h, request("GET", "/")).await;
    assert_eq!(
        header(&seen.unwrap().headers, "authorization").as_deref(),
        Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
    );
}

#[tokio::test]
async fn api_key_in_a_header_and_custom_headers() {
    let h = auth(json!({
        "api_key": { "header": "X-Api-Key", "value": "k-123" },
        "headers": { "x-tenant": "acme", "X-Signature": "sig=1" },
    }))
    .await;
    let req = with_header(request("POST", "/orders"), "x-api-key", "client-guess");
    let (seen, _) = run(&h, req).await;
    let seen = seen.unwrap();
    assert_eq!(header(&seen.headers, "x-api-key").as_deref(), Some("k-123"));
    assert_eq!(
        seen.headers
            .iter()
            .filter(|(n, _)| n == "x-api-key")
            .count(),
        1
    );
    assert_eq!(header(&seen.headers, "x-tenant").as_deref(), Some("acme"));
    assert_eq!(
        header(&seen.headers, "x-signature").as_deref(),
        Some("sig=1")
    );
    assert_eq!(seen.path_with_query, "/orders", "the path is untouched");
}

#[tokio::test]
async fn api_key_in_the_query_is_percent_encoded_and_replaces_the_clients() {
    let h = auth(json!({ "api_key": { "query": "api_key", "value": "a b&c=d/é+" } })).await;
    for (path, want) in [
        ("/v1/items", "/v1/items?api_key=a%20b%26c%3Dd%2F%C3%A9%2B"),
        (
            "/v1/items?limit=10&api_key=forged&q=x%20y",
            "/v1/items?limit=10&q=x%20y&api_key=a%20b%26c%3Dd%2F%C3%A9%2B",
        ),
    ] {
        let (seen, _) = run(&h, request("GET", path)).await;
        assert_eq!(seen.unwrap().path_with_query, want, "{path}");
    }
}

#[tokio::test]
async fn a_token_that_cannot_be_fetched_stops_the_request_with_503() {
    // The harness gives the filter no outbound upstreams: the token request is refused,
    // as it would be with the token endpoint missing from `outbound`.
    let h = auth(json!({ "oauth2": {
        "upstream": "oauth", "client_id": "weir", "client_secret": "cs-secret-value"
    }}))
    .await;
    let (seen, ex) = run(&h, request("GET", "/x")).await;
    assert!(seen.is_none(), "the request must not go on without a token");
    assert!(ex.responded);
    assert_eq!(ex.status(), Some(503));
    let Outcome::Response(r) = &ex.outcome else {
        panic!("no response")
    };
    let body: Value = serde_json::from_slice(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["error"], "token_unavailable");
    assert_eq!(body["request_id"], "r1");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("auth: token endpoint not allowed: "),
        "{message}"
    );
    assert!(!message.contains("cs-secret-value"));
}

#[tokio::test]
async fn bad_configs_are_refused_without_showing_the_secret() {
    let secret = "hunter2-in-config";
    for (config, want) in [
        (json!({}), "nothing to add"),
        (json!({ "bearer": secret }), "bearer must be a table"),
        (
            json!({ "bearer": { "token": format!("{secret}\n") } }),
            "bearer.token contains a control character",
        ),
        (
            json!({ "bearer": { "token": secret }, "basic": { "username": "u", "password": secret } }),
            "header `authorization` is set by both `bearer` and `basic`",
        ),
        (
            json!({ "api_key": { "value": secret } }),
            "api_key: set exactly one of `header` or `query`",
        ),
        (
            json!({ "oauth2": { "upstream": "oauth", "client_id": "c", "client_secret": secret, "client_auth": "mtls" } }),
            "oauth2: unknown variant `mtls`",
        ),
    ] {
        let shown = config.to_string();
        let err = match Harness::builtin("auth", config).await {
            Ok(_) => panic!("{shown}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "{shown}: {err}");
        assert!(
            !err.contains("hunter2"),
            "{shown}: the error shows the secret: {err}"
        );
    }
}
