//! Batch requests end to end: `POST /_weir/batch` with a JSON list of calls, each routed
//! as if sent alone; results in order; malformed batches and limits refused before
//! anything is sent; an async batch delivered by webhook.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::jobs::{SECRET, accepted, until_final_within};
use crate::support::WAIT;
use crate::support::client::{client, get_json, metrics};
use crate::support::upstream::{Reply, Upstream, closed_port};
use crate::support::weir::{Weir, check};

/// Routes `api` (`/api/`) and `slow` (`/slow/`, 1 s timeout) to `api_url` and
/// `slow_url`, `[batch]` with `batch`, and `extra` at the end.
fn config(api_url: &str, slow_url: &str, batch: &str, extra: &str) -> String {
    format!(
        r#"[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[batch]
{batch}

[upstreams.api]
url = "{api_url}"

[upstreams.slow]
url = "{slow_url}"

[[routes]]
name = "api"
match = {{ path_prefix = "/api/" }}
upstream = "api"

[[routes]]
name = "slow"
match = {{ path_prefix = "/slow/" }}
upstream = "slow"
timeout = "1s"
{extra}"#
    )
}

/// An upstream that answers with the request's own body, two `x-multi` headers and
/// its path in `x-path`.
async fn echo() -> Upstream {
    Upstream::start(|r, _| {
        Reply::ok()
            .header("x-path", r.path.clone())
            .header("x-multi", "1")
            .header("x-multi", "2")
            .body(r.body.clone())
    })
    .await
}

/// An upstream URL nothing listens on, for the `slow` route of tests that do not use it.
fn nowhere() -> String {
    format!("http://127.0.0.1:{}", closed_port())
}

async fn post_batch(weir: &Weir, batch: &serde_json::Value) -> reqwest::Response {
    client()
        .post(weir.url("/_weir/batch"))
        .json(batch)
        .send()
        .await
        .expect("POST /_weir/batch")
}

/// 100 calls: GETs with duplicate headers, POSTs with text and binary bodies, one path
/// no route takes, one call that times out. They come back in order, each as a single
/// request would have, and each is its own request in `/requests` and the metrics.
#[tokio::test]
async fn a_hundred_mixed_calls_come_back_in_order_and_correct() {
    let api = echo().await;
    let slow = Upstream::start(|_, _| Reply::hang()).await;
    let weir = Weir::start(&config(&api.url(), &slow.url(), "concurrency = 8", "")).await;
    let binary = |i: usize| -> Vec<u8> { vec![0xff, 0x00, i as u8, 0xfe] };
    let mut calls = Vec::new();
    for i in 0..100 {
        calls.push(match i {
            50 => serde_json::json!({"method": "GET", "path": "/nowhere"}),
            77 => serde_json::json!({"method": "GET", "path": "/slow/x"}),
            _ if i % 3 == 0 => serde_json::json!({
                "method": "GET",
                "path": format!("/api/get/{i}?q=1"),
                "headers": [["x-dup", "a"], ["x-dup", "b"], ["accept", "text/plain"]],
            }),
            _ if i % 3 == 1 => serde_json::json!({
                "method": "POST",
                "path": format!("/api/text/{i}"),
                "body": format!("hello {i}"),
            }),
            _ => serde_json::json!({
                "method": "PUT",
                "path": format!("/api/bin/{i}"),
                "body_base64": BASE64.encode(binary(i)),
            }),
        });
    }
    let started = Instant::now();
    let resp = post_batch(&weir, &serde_json::Value::Array(calls)).await;
    assert_eq!(resp.status(), 200);
    let batch_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(
        started.elapsed() < WAIT,
        "the timed-out call held the batch"
    );
    assert_eq!(v["batch"], batch_id.as_str());
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 100);
    for (i, r) in results.iter().enumerate() {
        match i {
            50 => {
                assert_eq!(r["status"], 404, "{r}");
                assert_eq!(r["error"], "no_route", "{r}");
            }
            77 => {
                assert_eq!(r["status"], 504, "{r}");
                assert_eq!(r["error"], "timeout", "{r}");
            }
            _ => {
                assert_eq!(r["status"], 200, "{i}: {r}");
                assert_eq!(r["error"], serde_json::Value::Null, "{r}");
                let headers = r["headers"].as_array().unwrap();
                let path = headers.iter().find(|h| h[0] == "x-path").unwrap()[1]
                    .as_str()
                    .unwrap();
                assert!(path.ends_with(&format!("/{i}")) || path.contains(&format!("/{i}?")));
                let multi: Vec<&str> = headers
                    .iter()
                    .filter(|h| h[0] == "x-multi")
                    .map(|h| h[1].as_str().unwrap())
                    .collect();
                assert_eq!(multi, ["1", "2"], "{r}");
                match i % 3 {
                    0 => assert_eq!(r["body"], "", "{r}"),
                    1 => assert_eq!(r["body"], format!("hello {i}"), "{r}"),
                    _ => {
                        assert!(r.get("body").is_none(), "{r}");
                        assert_eq!(r["body_base64"], BASE64.encode(binary(i)), "{r}");
                    }
                }
            }
        }
    }
    // What the upstream saw: each call as sent, duplicate headers kept.
    let seen = api.requests();
    assert_eq!(seen.len(), 98);
    let get3 = seen.iter().find(|r| r.path == "/api/get/3?q=1").unwrap();
    assert_eq!(get3.method, "GET");
    assert_eq!(get3.header_all("x-dup"), [b"a".as_slice(), b"b".as_slice()]);
    let bin5 = seen.iter().find(|r| r.path == "/api/bin/5").unwrap();
    assert_eq!(
        (bin5.method.as_str(), &bin5.body[..]),
        ("PUT", &binary(5)[..])
    );
    assert_eq!(
        bin5.header_str("x-request-id"),
        Some(format!("{batch_id}-5").as_str())
    );

    // Each call is its own request, linked to the batch.
    let listed = get_json(&weir.admin_url(&format!("/requests?batch={batch_id}&limit=1000"))).await;
    let listed = listed["requests"].as_array().unwrap();
    assert_eq!(listed.len(), 100, "{listed:?}");
    assert!(listed.iter().all(|r| r["batch"] == batch_id.as_str()));
    let text = metrics(&weir).await;
    for series in [
        r#"weir_requests_total{method="GET",route="api",status="2xx"} 34"#,
        r#"weir_requests_total{method="POST",route="api",status="2xx"} 33"#,
        r#"weir_requests_total{method="PUT",route="api",status="2xx"} 31"#,
        r#"weir_requests_total{method="GET",route="slow",status="5xx"} 1"#,
    ] {
        assert!(text.contains(series), "no {series} in:\n{text}");
    }
}

/// A malformed item is named by its JSON pointer, and nothing of the batch is sent.
#[tokio::test]
async fn a_malformed_batch_gets_400_naming_the_item_and_sends_nothing() {
    let api = echo().await;
    let weir = Weir::start(&config(&api.url(), &nowhere(), "", "")).await;
    let bad = serde_json::json!([
        {"method": "GET", "path": "/api/a"},
        {"method": "POST", "path": "/api/b", "body": "x"},
        {"method": "GET", "path": "/api/c", "headers": [["x-ok", "1"], ["x-bad", 7]]},
    ]);
    let resp = post_batch(&weir, &bad).await;
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "bad_batch");
    assert_eq!(v["pointer"], "/2/headers/1/1");
    assert!(
        v["message"].as_str().unwrap().contains("must be a string"),
        "{v}"
    );
    let resp = client()
        .post(weir.url("/_weir/batch"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["pointer"], "");
    assert!(v["message"].as_str().unwrap().contains("not JSON"), "{v}");
    assert_eq!(api.count(), 0, "a call of a refused batch was sent");
}

/// `max_items`, `max_bytes` and `concurrency` hold; only POST is taken.
#[tokio::test]
async fn the_limits_are_enforced() {
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = arrivals.clone();
    let api = Upstream::start(move |_, _| {
        seen.lock().unwrap().push(Instant::now());
        Reply::ok().delay(Duration::from_millis(300))
    })
    .await;
    let weir = Weir::start(&config(
        &api.url(),
        &nowhere(),
        "max_items = 6\nmax_bytes = \"1KiB\"\nconcurrency = 2",
        "",
    ))
    .await;
    let call = serde_json::json!({"method": "GET", "path": "/api/x"});
    let resp = post_batch(&weir, &serde_json::Value::Array(vec![call.clone(); 7])).await;
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["pointer"], "");
    assert!(v["message"].as_str().unwrap().contains("at most 6"), "{v}");
    let big = serde_json::json!([{"method": "POST", "path": "/api/x", "body": "x".repeat(2000)}]);
    let resp = post_batch(&weir, &big).await;
    assert_eq!(resp.status(), 413);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "body_too_large");
    let resp = client().get(weir.url("/_weir/batch")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    assert_eq!(api.count(), 0);

    // Six calls, two at a time: the third starts only once one of the first two ended.
    let resp = post_batch(&weir, &serde_json::Value::Array(vec![call; 6])).await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == 200),
        "{v}"
    );
    let mut at = arrivals.lock().unwrap().clone();
    at.sort();
    assert_eq!(at.len(), 6);
    for k in 2..6 {
        assert!(
            at[k] - at[k - 2] >= Duration::from_millis(300),
            "call {k} started while two others were in flight"
        );
    }
}

/// `Prefer: respond-async` makes the batch a job: 202, then every call runs and the
/// signed webhook carries each call's result.
#[tokio::test]
async fn an_async_batch_delivers_its_webhook() {
    let api = echo().await;
    let hooks = Upstream::start(|_, _| Reply::new(204)).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "\n[jobs]\njournal = \"{}\"\n[jobs.webhooks]\norigins = [\"{}\"]\nsecret = \"{SECRET}\"\n",
        dir.path().join("j.redb").display(),
        hooks.url()
    );
    let weir = Weir::start(&config(&api.url(), &nowhere(), "", &extra)).await;
    let resp = client()
        .post(weir.url("/_weir/batch"))
        .header("prefer", "respond-async")
        .header("weir-callback-url", format!("{}/done", hooks.url()))
        .json(&serde_json::json!([
            {"method": "POST", "path": "/api/one", "body": "1"},
            {"method": "GET", "path": "/nowhere"},
        ]))
        .send()
        .await
        .unwrap();
    let location = accepted(resp).await;
    let job = until_final_within(&weir, &location, WAIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["route"], "(batch)");
    assert_eq!(job["webhook"]["state"], "delivered", "{job}");
    let results = job["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], 200);
    assert_eq!(results[0]["body"], "1");
    assert_eq!(results[1]["status"], 404);
    let id = job["id"].as_str().unwrap();
    assert_eq!(
        api.request(0).header_str("x-request-id"),
        Some(format!("{id}-0").as_str())
    );
    let hook = hooks.wait_for(1).await.remove(0);
    assert_eq!(hook.path, "/done");
    assert_eq!(hook.json()["data"]["results"], job["results"]);
}

#[test]
fn check_refuses_bad_batch_limits() {
    let (code, _, err) = check(
        "[listen]\naddr = \"127.0.0.1:0\"\n\n[batch]\nmax_items = 0\nconcurrency = 0\n",
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("batch.max_items must be at least 1"), "{err}");
    assert!(
        err.contains("batch.concurrency must be at least 1"),
        "{err}"
    );
}
