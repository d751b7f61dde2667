//! The `idempotency` filter end to end: a real weir, a scripted upstream, real time. What
//! the upstream recorded proves how often weir called it and with which key. The only
//! timings are the expiry test's poll and the in-flight test's upstream delay, which
//! keeps the first request in flight far longer than the second one needs: both allow
//! `SLACK` for a busy machine.

use std::time::{Duration, Instant};

use crate::support::SLACK;
use crate::support::client::client;
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::Weir;

/// weir with one route, `/`, to `upstream_url`, with these filters (TOML array contents)
/// and a 30 s timeout.
async fn start(upstream_url: &str, filters: &str) -> Weir {
    Weir::start(&format!(
        r#"[listen]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{upstream_url}"

[[routes]]
name = "api"
upstream = "api"
timeout = "30s"
filters = [{filters}]
"#
    ))
    .await
}

/// weir with only `idempotency`, configured with `config` (TOML inline table contents).
async fn idempotency(upstream_url: &str, config: &str) -> Weir {
    start(
        upstream_url,
        &format!(r#"{{ use = "idempotency", config = {{ {config} }} }}"#),
    )
    .await
}

/// What the client got: status, headers and body bytes.
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    fn replayed(&self) -> bool {
        self.header("x-weir-idempotent-replay") == Some("true")
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// POSTs `body` to `path` with these headers.
async fn post(weir: &Weir, path: &str, headers: &[(&str, &str)], body: &str) -> Got {
    let mut req = client().post(weir.url(path)).body(body.to_owned());
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    Got {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.bytes().await.expect("body").to_vec(),
    }
}

#[tokio::test]
async fn the_same_key_and_body_call_the_upstream_once_and_replay_byte_for_byte() {
    let up = Upstream::start(|req, i| {
        let status = if req.path == "/fail" { 503 } else { 201 };
        Reply::new(status)
            .header("x-order", format!("{i}"))
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .body(format!("response {i} to {}", req.body_str()))
    })
    .await;
    let weir = idempotency(&up.url(), "").await;
    let key = [("idempotency-key", "order-1")];

    let first = post(&weir, "/orders", &key, r#"{"sku":"a"}"#).await;
    assert_eq!(first.status, 201);
    assert!(!first.replayed());
    assert_eq!(first.body, br#"response 0 to {"sku":"a"}"#);
    let again = post(&weir, "/orders", &key, r#"{"sku":"a"}"#).await;
    assert_eq!(up.count(), 1, "the repeat did not reach the upstream");
    assert!(again.replayed());
    assert_eq!(again.status, first.status);
    assert_eq!(again.body, first.body);
    for name in ["x-order", "content-type", "date"] {
        assert_eq!(
            again.headers.get_all(name).iter().collect::<Vec<_>>(),
            first.headers.get_all(name).iter().collect::<Vec<_>>(),
            "{name}"
        );
    }
    let cookies = |g: &Got| {
        g.headers
            .get_all("set-cookie")
            .iter()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(cookies(&again), ["a=1", "b=2"]);
    assert_eq!(cookies(&again), cookies(&first));
    assert_eq!(up.request(0).header_str("idempotency-key"), Some("order-1"));

    // A 5xx is stored and replayed just the same.
    let key = [("idempotency-key", "order-2")];
    let failed = post(&weir, "/fail", &key, "x").await;
    assert_eq!((failed.status, failed.replayed()), (503, false));
    let replayed = post(&weir, "/fail", &key, "x").await;
    assert_eq!((replayed.status, replayed.replayed()), (503, true));
    assert_eq!(replayed.body, failed.body);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_422() {
    let up = Upstream::start(|_, _| Reply::new(201).body("created")).await;
    let weir = idempotency(&up.url(), "").await;
    let key = [("idempotency-key", "k")];
    assert_eq!(post(&weir, "/orders", &key, "one").await.status, 201);
    let other = post(&weir, "/orders", &key, "two").await;
    assert_eq!(other.status, 422);
    assert_eq!(other.json()["error"], "idempotency_key_reused");
    assert_eq!(other.json()["route"], "api");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_second_request_while_the_first_is_in_flight_gets_409_and_one_upstream_call() {
    // The upstream sits on the first request for SLACK; the second arrives within
    // milliseconds of the upstream recording the first, on a busy machine within SLACK.
    let up =
        Upstream::start(|_, i| Reply::new(201).body(format!("charged {i}")).delay(SLACK)).await;
    let weir = idempotency(&up.url(), "").await;
    let first = {
        let url = weir.url("/charges");
        tokio::spawn(async move {
            let resp = client()
                .post(url)
                .header("idempotency-key", "charge-1")
                .body("100")
                .send()
                .await
                .expect("first request");
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    };
    up.wait_for(1).await;

    let loser = post(&weir, "/charges", &[("idempotency-key", "charge-1")], "100").await;
    assert_eq!(loser.status, 409);
    assert_eq!(loser.json()["error"], "idempotency_key_in_use");
    assert_eq!(up.count(), 1);

    assert_eq!(first.await.unwrap(), (201, "charged 0".to_owned()));
    assert_eq!(up.count(), 1, "the upstream was called once");
    // Now the response is stored.
    let after = post(&weir, "/charges", &[("idempotency-key", "charge-1")], "100").await;
    assert_eq!((after.status, after.replayed()), (201, true));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn after_expiry_the_key_calls_the_upstream_again() {
    // Long enough for the second request to come well within it, however busy the
    // machine.
    let expiry = SLACK;
    let up = Upstream::start(|_, i| Reply::ok().body(format!("response {i}"))).await;
    let weir = idempotency(&up.url(), &format!(r#"expiry = "{}s""#, expiry.as_secs())).await;
    let key = [("idempotency-key", "short-lived")];
    let started = Instant::now();
    assert!(!post(&weir, "/x", &key, "b").await.replayed());
    assert!(post(&weir, "/x", &key, "b").await.replayed());
    assert_eq!(up.count(), 1);

    // Poll until the stored response has expired: not before `expiry`, which started
    // after `started`, and not much after.
    let fresh = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = post(&weir, "/x", &key, "b").await;
        if !got.replayed() {
            break got;
        }
        assert!(started.elapsed() < expiry + SLACK, "never expired");
    };
    assert!(started.elapsed() >= expiry);
    assert_eq!(fresh.body, b"response 1");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn two_tenants_with_one_key_are_isolated() {
    let up = Upstream::start(|req, _| {
        Reply::new(201).body(format!(
            "for {}",
            req.header_str("x-tenant").unwrap_or("nobody")
        ))
    })
    .await;
    let weir = idempotency(&up.url(), r#"tenant = { header = "x-tenant" }"#).await;
    let acme = [("idempotency-key", "shared"), ("x-tenant", "acme")];
    let globex = [("idempotency-key", "shared"), ("x-tenant", "globex")];

    let a = post(&weir, "/orders", &acme, "acme's order").await;
    let g = post(&weir, "/orders", &globex, "globex's order").await;
    assert_eq!((a.status, a.replayed()), (201, false));
    assert_eq!(
        (g.status, g.replayed()),
        (201, false),
        "not a 422: another tenant's key"
    );
    assert_eq!(up.count(), 2);
    let a2 = post(&weir, "/orders", &acme, "acme's order").await;
    let g2 = post(&weir, "/orders", &globex, "globex's order").await;
    assert_eq!(
        (a2.body.as_slice(), a2.replayed()),
        (&b"for acme"[..], true)
    );
    assert_eq!(
        (g2.body.as_slice(), g2.replayed()),
        (&b"for globex"[..], true)
    );
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_key_longer_than_255_characters_is_400() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = idempotency(&up.url(), "").await;
    let long = "k".repeat(256);
    let got = post(&weir, "/x", &[("idempotency-key", long.as_str())], "b").await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["error"], "invalid_idempotency_key");
    assert_eq!(up.count(), 0);
}

/// A request without a key through `filters` against an upstream that answers 503, 503,
/// 200: it is retried, and all three tries carry the same generated key.
async fn generated_key_survives_retries(filters: &str) {
    let up = Upstream::builder()
        .replies([
            Reply::new(503).body("busy"),
            Reply::new(503).body("busy"),
            Reply::new(201).body("created"),
            Reply::new(201).body("created again"),
        ])
        .start()
        .await;
    let weir = start(&up.url(), filters).await;

    let got = post(&weir, "/orders", &[], "order").await;
    assert_eq!(got.status, 201);
    assert_eq!(got.header("x-weir-attempts"), Some("3"));
    let tries = up.requests();
    assert_eq!(tries.len(), 3);
    let key = tries[0]
        .header_str("idempotency-key")
        .expect("a generated key upstream")
        .to_owned();
    let parts: Vec<usize> = key.split('-').map(str::len).collect();
    assert_eq!(parts, [8, 4, 4, 4, 12], "a UUID: {key}");
    for t in &tries {
        assert_eq!(
            t.header_all("idempotency-key"),
            [key.as_bytes()],
            "every try, once"
        );
        assert_eq!(&t.body[..], b"order");
    }

    // The next request gets a key of its own.
    assert_eq!(post(&weir, "/orders", &[], "order").await.status, 201);
    let next = up.request(3);
    assert_ne!(next.header_str("idempotency-key"), Some(key.as_str()));
    assert!(next.has_header("idempotency-key"));
}

#[tokio::test]
async fn a_generated_key_is_sent_upstream_and_is_the_same_on_every_retry_with_retry_first() {
    generated_key_survives_retries(
        r#"{ use = "retry", config = { max_retries = 2 } }, { use = "idempotency" }"#,
    )
    .await;
}

#[tokio::test]
async fn a_generated_key_is_the_same_on_every_retry_with_idempotency_first() {
    generated_key_survives_retries(
        r#"{ use = "idempotency" }, { use = "retry", config = { max_retries = 2 } }"#,
    )
    .await;
}

#[tokio::test]
async fn with_retry_first_a_client_key_stores_the_last_try_only() {
    let up = Upstream::builder()
        .replies([
            Reply::new(503).body("busy"),
            Reply::new(503).body("busy"),
            Reply::new(201).body("created"),
        ])
        .start()
        .await;
    let weir = start(
        &up.url(),
        r#"{ use = "retry", config = { max_retries = 2 } }, { use = "idempotency" }"#,
    )
    .await;
    let key = [("idempotency-key", "client-key")];

    // The request's own retries are not answered 409 or with the stored 503.
    let got = post(&weir, "/orders", &key, "order").await;
    assert_eq!((got.status, got.body.as_slice()), (201, &b"created"[..]));
    assert_eq!(got.header("x-weir-attempts"), Some("3"));
    assert_eq!(up.count(), 3);
    for t in up.requests() {
        assert_eq!(t.header_str("idempotency-key"), Some("client-key"));
    }

    let again = post(&weir, "/orders", &key, "order").await;
    assert_eq!(
        (again.status, again.body.as_slice()),
        (201, &b"created"[..])
    );
    assert!(again.replayed());
    assert_eq!(up.count(), 3);
}
