//! The built-in `sanitize` filter, end to end: the configured headers never reach the
//! upstream (checked on what the upstream recorded) or the client (checked on what the
//! client got), allowlist mode, and a request over a header limit answered with the
//! filter's 431 without reaching the upstream.

use serde_json::Value;

use crate::support::client::client;
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::Weir;

/// An upstream whose every answer carries headers a client should not see, next to ones
/// it should.
async fn chatty_upstream() -> Upstream {
    Upstream::start(|_, _| {
        Reply::ok()
            .header("server", "Apache/2.4.1 (Unix)")
            .header("x-powered-by", "PHP/8.1")
            .header("set-cookie", "partner_session=1; Path=/")
            .header("x-partner-node", "node-12")
            .header("x-partner-kept", "1")
            .header("etag", "\"v7\"")
            .body("ok")
    })
    .await
}

/// weir with one route, `/api/` to `up`, using `sanitize` with this inline TOML config.
async fn weir_with(up: &Upstream, config: &str) -> Weir {
    Weir::start(&format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{}"

[[routes]]
name = "api"
match = {{ path_prefix = "/api/" }}
upstream = "api"
strip_prefix = true
filters = [{{ use = "sanitize", config = {config} }}]
"#,
        up.url()
    ))
    .await
}

/// A request carrying internal headers, and some the upstream needs.
fn leaky(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.header("cookie", "session=internal")
        .header("baggage", "tenant=acme,user=alice")
        .header("forwarded", "for=10.1.2.3")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-forwarded-host", "orders.internal")
        .header("x-real-ip", "10.1.2.3")
        .header("x-internal-tenant", "acme")
        .header("x-debug-user", "alice")
        .header("authorization", "Bearer partner-token")
        .header("content-type", "application/json")
        .header("x-client-kept", "2")
}

#[tokio::test]
async fn configured_headers_never_reach_the_upstream_or_the_client() {
    let up = chatty_upstream().await;
    let weir = weir_with(
        &up,
        r#"{ request = { strip_extra = ["x-debug-*"] }, response = { strip_extra = ["x-partner-node"] } }"#,
    )
    .await;
    for i in 0..2 {
        let resp = leaky(client().post(weir.url("/api/orders")))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        for name in ["server", "x-powered-by", "set-cookie", "x-partner-node"] {
            assert!(h.get(name).is_none(), "{name} reached the client: {h:?}");
        }
        assert_eq!(h["x-partner-kept"], "1");
        assert_eq!(h["etag"], "\"v7\"");
        assert!(h.get("x-request-id").is_some(), "weir's own id stays");
        assert_eq!(resp.text().await.unwrap(), "ok");

        let r = up.request(i);
        for name in [
            "cookie",
            "baggage",
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-real-ip",
            "x-internal-tenant",
            "x-debug-user",
        ] {
            assert!(!r.has_header(name), "{name} reached the upstream: {r:?}");
        }
        assert_eq!(r.header_str("authorization"), Some("Bearer partner-token"));
        assert_eq!(r.header_str("content-type"), Some("application/json"));
        assert_eq!(r.header_str("x-client-kept"), Some("2"));
        assert!(r.has_header("traceparent"), "weir's traceparent stays");
        assert_eq!(r.body_str(), "{}");
    }
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn allowlist_mode_sends_only_the_named_headers() {
    let up = chatty_upstream().await;
    let weir = weir_with(
        &up,
        r#"{ request = { allow = ["authorization", "x-client-*"] }, response = { strip = ["server"] } }"#,
    )
    .await;
    let resp = leaky(client().post(weir.url("/api/orders")))
        .header("user-agent", "orders/1.0")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert!(
        h.get("server").is_none(),
        "server reached the client: {h:?}"
    );
    // `response.strip` replaced the defaults: this route keeps the partner's cookies.
    assert_eq!(h["set-cookie"], "partner_session=1; Path=/");
    assert_eq!(h["x-powered-by"], "PHP/8.1");

    let r = up.request(0);
    let mut names: Vec<&str> = r
        .headers
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !["host", "content-length", "x-request-id", "traceparent"].contains(n))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["authorization", "content-type", "x-client-kept"],
        "{r:?}"
    );
    assert_eq!(r.body_str(), "{}");
}

#[tokio::test]
async fn too_many_headers_get_the_filters_431_and_never_reach_the_upstream() {
    let up = chatty_upstream().await;
    let weir = weir_with(&up, "{ limits = { max_headers = 10 } }").await;

    let mut req = client().get(weir.url("/api/items"));
    for i in 1..=20 {
        req = req.header(format!("x-h-{i}"), "v");
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 431);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(resp.headers().get("x-request-id").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "error": "headers_too_large",
            "message": r#"header "x-h-11" is header number 11; limits.max_headers is 10"#,
        })
    );
    assert_eq!(up.count(), 0, "a 431 request must not reach the upstream");

    // Within the limit, the same route forwards.
    let resp = client()
        .get(weir.url("/api/items"))
        .header("x-h-1", "v")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.count(), 1);
}
