//! Secrets stay secret: weir runs at `trace` log level with the `auth` filter's secrets
//! from `{ env }` and `{ file }`, an admin token and a webhook signing secret from the
//! environment. Traffic goes through successes, an upstream error, a replay, a reload,
//! an async job with a webhook, `/requests`, `/status`, `/metrics` and the dashboard
//! (its page and a snapshot of its event stream). Then everything
//! weir printed or served (to clients, the admin API and the webhook receiver) is
//! searched for each secret value, and none is found. Only the upstream, whose job it
//! is, receives them.

use std::time::{Duration, Instant};

use crate::jobs::{accepted, until_final_within};
use crate::support::WAIT;
use crate::support::client::client;
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::{Weir, WeirBuilder};

const BEARER: &str = "sekret-bearer-5bd1e7c2";
const API_KEY: &str = "sekret-file-9a0f33d4";
const ADMIN_TOKEN: &str = "sekret-admin-c81e72aa";
/// A Standard Webhooks secret: `whsec_` and base64.
const WEBHOOK_SECRET: &str = "whsec_c2VrcmV0LXdlYmhvb2stN2YzYTkx";

fn config(upstream: &str, hooks: &str, journal: &str) -> String {
    format!(
        r#"[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"
token = {{ env = "WEIR_TEST_ADMIN_TOKEN" }}

[log]
level = "trace"

[upstreams.api]
url = "{upstream}"

[jobs]
journal = "{journal}"
[jobs.webhooks]
origins = ["{hooks}"]
secret = {{ env = "WEIR_TEST_WEBHOOK_SECRET" }}
schedule = ["50ms"]

[[routes]]
name = "bearer"
match = {{ path_prefix = "/bearer/" }}
upstream = "api"
async = {{ mode = "prefer" }}
filters = [{{ use = "auth", config = {{ bearer = {{ token = {{ env = "WEIR_TEST_BEARER" }} }} }} }}]

[[routes]]
name = "key"
match = {{ path_prefix = "/key/" }}
upstream = "api"
filters = [{{ use = "auth", config = {{ api_key = {{ header = "x-api-key", value = {{ file = "secrets/key" }} }} }} }}]
"#
    )
}

/// What an admin request answered, as text.
async fn admin(weir: &Weir, method: reqwest::Method, path: &str) -> String {
    let resp = client()
        .request(method, weir.admin_url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.text().await.unwrap()
}

/// The dashboard's first snapshot from `/events`, with the token as a browser sends it.
async fn dashboard_snapshot(weir: &Weir) -> String {
    let mut resp = client()
        .get(weir.admin_url("/events"))
        .basic_auth("operator", Some(ADMIN_TOKEN))
        .send()
        .await
        .expect("/events");
    assert_eq!(resp.status(), 200);
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = resp.chunk().await.unwrap().expect("a snapshot");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("last_reload_error"), "{text}");
    text
}

#[tokio::test]
async fn no_secret_appears_in_anything_weir_prints_or_serves() {
    let up = Upstream::start(|r, _| {
        if r.path.ends_with("/fail") {
            Reply::new(500).body(&b"upstream trouble"[..])
        } else {
            Reply::ok().body(&b"fine"[..])
        }
    })
    .await;
    let hooks = Upstream::start(|_, _| Reply::new(204)).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("j.redb");
    let cfg = config(&up.url(), &hooks.url(), &journal.display().to_string());
    let weir = WeirBuilder::new(cfg.clone())
        .file("secrets/key", format!("{API_KEY}\n"))
        .env("WEIR_TEST_BEARER", BEARER)
        .env("WEIR_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("WEIR_TEST_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("RUST_LOG", "trace")
        .start()
        .await;
    let mut served = Vec::new();

    // Successes and an upstream error on both routes.
    for path in ["/bearer/ok", "/bearer/fail", "/key/ok", "/key/fail"] {
        let resp = client().get(weir.url(path)).send().await.unwrap();
        served.push(format!("{:?}", resp.headers()));
        served.push(resp.text().await.unwrap());
    }
    // An async job with a webhook.
    let resp = client()
        .post(weir.url("/bearer/job"))
        .header("prefer", "respond-async")
        .header("weir-callback-url", format!("{}/hook", hooks.url()))
        .body("work")
        .send()
        .await
        .unwrap();
    let location = accepted(resp).await;
    let job = until_final_within(&weir, &location, WAIT).await;
    assert_eq!(job["webhook"]["state"], "delivered", "{job}");
    served.push(job.to_string());
    // The admin API: the recent requests, each one, a replay, the status, the metrics.
    let list = admin(&weir, reqwest::Method::GET, "/requests?limit=100").await;
    let listed: serde_json::Value = serde_json::from_str(&list).unwrap();
    served.push(list);
    for r in listed["requests"].as_array().unwrap() {
        let id = r["id"].as_str().unwrap();
        served.push(admin(&weir, reqwest::Method::GET, &format!("/requests/{id}")).await);
    }
    let first = listed["requests"][0]["id"].as_str().unwrap().to_owned();
    served.push(
        admin(
            &weir,
            reqwest::Method::POST,
            &format!("/requests/{first}/replay"),
        )
        .await,
    );
    // A reload: the same config written again, and one that fails.
    weir.write_file("weir.toml", format!("{cfg}\n# touched\n"));
    let deadline = Instant::now() + WAIT;
    while !weir.logs().contains("config reloaded") {
        assert!(Instant::now() < deadline, "no reload: {}", weir.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    weir.write_file("weir.toml", format!("{cfg}\n[broken\n"));
    let deadline = Instant::now() + WAIT;
    loop {
        let status = admin(&weir, reqwest::Method::GET, "/status").await;
        if status.contains("last_reload_error\":{") {
            served.push(status);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broken reload was not reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    served.push(admin(&weir, reqwest::Method::GET, "/metrics").await);
    served.push(admin(&weir, reqwest::Method::GET, "/jobs/dead").await);
    // The dashboard: its page, and a snapshot of its stream (routes, breakers, the
    // config with the failed reload, the jobs), as a browser would get them.
    for page in ["/", "/assets/app.js"] {
        served.push(admin(&weir, reqwest::Method::GET, page).await);
    }
    served.push(dashboard_snapshot(&weir).await);

    // The upstream got the credentials: the filters did their job.
    let got = up.requests();
    assert!(
        got.iter()
            .any(|r| r.header_str("authorization") == Some(&format!("Bearer {BEARER}")))
    );
    assert!(
        got.iter()
            .any(|r| r.header_str("x-api-key") == Some(API_KEY))
    );

    let mut printed = weir.logs();
    printed.push_str(&weir.stdout());
    assert!(printed.contains("TRACE"), "not at trace level");
    let webhooks: Vec<String> = hooks
        .requests()
        .iter()
        .map(|r| format!("{:?} {}", r.headers, r.body_str()))
        .collect();
    for secret in [
        BEARER,
        API_KEY,
        ADMIN_TOKEN,
        WEBHOOK_SECRET,
        &WEBHOOK_SECRET[6..],
    ] {
        let found_in = [
            ("weir's output", printed.as_str()),
            ("what weir served", &served.join("\n")),
            ("the webhooks", &webhooks.join("\n")),
        ];
        for (place, text) in found_in {
            if let Some(at) = text.find(secret) {
                let from = at.saturating_sub(200);
                panic!(
                    "{secret:?} appears in {place}: …{}…",
                    &text[from..(at + secret.len() + 50).min(text.len())]
                );
            }
        }
    }
}
