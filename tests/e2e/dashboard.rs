//! The dashboard end to end: the page and its event stream over plain HTTP (auth, the
//! page's headers, one snapshot), and the whole page in Debian's chromium, driven by
//! `tests/browser/dashboard.mjs` with playwright-core (`scripts/setup-browser.sh`
//! installs both). The browser test's screenshots are kept under
//! `target/dashboard-screenshots/`.

use std::path::PathBuf;
use std::process::Stdio;

use base64::Engine as _;

use crate::support::client::client;
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::Weir;

const TOKEN: &str = "dashboard-test-token-4f2a";

/// Routes for the browser test: `fine` (no filters), `payments` (a breaker in front of
/// an upstream that always fails), `orders` (a limiter of 3 at once, then 1 a second)
/// and `checkout` (an upstream whose first answer is a 500).
fn config(ok: &Upstream, failing: &Upstream, flaky: &Upstream) -> String {
    format!(
        r#"[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"
token = "{TOKEN}"

[upstreams.ok]
url = "{ok}"

[upstreams.failing]
url = "{failing}"

[upstreams.flaky]
url = "{flaky}"

[[routes]]
name = "fine"
match = {{ path_prefix = "/fine/" }}
upstream = "ok"

[[routes]]
name = "payments"
match = {{ path_prefix = "/payments/" }}
upstream = "failing"
filters = [{{ use = "breaker", config = {{ window_size = 4, minimum_calls = 4, wait_in_open = "1m" }} }}]

[[routes]]
name = "orders"
match = {{ path_prefix = "/orders/" }}
upstream = "ok"
filters = [{{ use = "limiter", config = {{ rate = 1, burst = 3, key = "route" }} }}]

[[routes]]
name = "checkout"
match = {{ path_prefix = "/checkout/" }}
upstream = "flaky"
"#,
        ok = ok.url(),
        failing = failing.url(),
        flaky = flaky.url(),
    )
}

async fn start() -> (Weir, [Upstream; 3]) {
    let ok = Upstream::start(|_, _| Reply::ok().body("ok")).await;
    let failing = Upstream::start(|_, _| Reply::new(500).body("down")).await;
    let flaky = Upstream::start(|_, i| {
        if i == 0 {
            Reply::new(500).body(r#"{"error":"try again"}"#)
        } else {
            Reply::ok().body(r#"{"paid":true}"#)
        }
    })
    .await;
    let weir = Weir::start(&config(&ok, &failing, &flaky)).await;
    (weir, [ok, failing, flaky])
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_stream_need_the_token_and_load_only_their_own_files() {
    let (weir, _ups) = start().await;
    let c = client();

    // No token: 401, with a Basic challenge so that a browser asks for it.
    let resp = c.get(weir.admin_url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenges: Vec<_> = resp
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(challenges[0], "Bearer");
    assert!(challenges[1].starts_with("Basic realm="), "{challenges:?}");
    for wrong in [
        basic("x", "wrong"),
        basic(TOKEN, ""),
        "Basic !!!".to_owned(),
    ] {
        let resp = c
            .get(weir.admin_url("/events"))
            .header("authorization", &wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{wrong}");
    }

    // The token as the Basic password, with any user name: the page, its headers.
    let auth = basic("anyone", TOKEN);
    let resp = c
        .get(weir.admin_url("/"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let html = resp.text().await.unwrap();
    for asset in [
        "/assets/app.js",
        "/assets/app.css",
        "/assets/uPlot.iife.min.js",
    ] {
        assert!(html.contains(asset), "the page names {asset}");
        let resp = c
            .get(weir.admin_url(asset))
            .header("authorization", format!("Bearer {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{asset}");
    }

    // The stream: a snapshot at once, with every route and the config.
    c.get(weir.url("/fine/x")).send().await.unwrap();
    let mut events = c
        .get(weir.admin_url("/events"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = events.chunk().await.unwrap().expect("a snapshot");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = text
        .strip_prefix("event: snapshot\ndata: ")
        .and_then(|t| t.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("not one snapshot event: {text:?}"));
    let snap: serde_json::Value = serde_json::from_str(data).unwrap();
    let routes = snap["status"]["routes"].as_array().unwrap();
    let names: Vec<_> = routes.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["fine", "payments", "orders", "checkout"]);
    let fine = &routes[0];
    assert_eq!(fine["requests"], 1);
    let buckets: u64 = fine["latency_buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(buckets, 1, "{fine}");
    assert_eq!(fine["upstream_name"], "ok");
    assert_eq!(
        snap["latency_bounds_ms"].as_array().unwrap().len(),
        fine["latency_buckets"].as_array().unwrap().len()
    );
    assert!(snap["status"]["config"]["hash"].is_string(), "{snap}");
    drop(events);

    // A change sent by another site's page is refused; one from the dashboard's own
    // origin, or from a program (no Origin), goes through.
    let id = "no-such-request";
    let replay = |origin: Option<String>| {
        let mut req = c
            .post(weir.admin_url(&format!("/requests/{id}/replay")))
            .header("authorization", &auth);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let resp = replay(Some("http://evil.example".into())).await.unwrap();
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "cross_origin", "{body}");
    let own = format!("http://{}", weir.admin_addr().unwrap());
    assert_eq!(replay(Some(own)).await.unwrap().status(), 404);
    assert_eq!(replay(None).await.unwrap().status(), 404);
}

/// Where the browser test lives, and where its screenshots go.
fn browser_paths() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    (
        root.join("tests/browser"),
        root.join("target/dashboard-screenshots"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_sees_traffic_an_open_breaker_429s_and_replays_a_failed_request() {
    let (dir, shots) = browser_paths();
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing from {}: run scripts/setup-browser.sh",
        dir.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/setup-browser.sh"
    );
    let (weir, [_ok, failing, flaky]) = start().await;
    let out = tokio::process::Command::new("node")
        .arg(dir.join("dashboard.mjs"))
        .current_dir(&dir)
        .env("WEIR_ADMIN", weir.admin_url("").trim_end_matches('/'))
        .env("WEIR_PROXY", weir.url("").trim_end_matches('/'))
        .env("WEIR_TOKEN", TOKEN)
        .env("SHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run node (is it installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("dashboard: all steps passed"),
        "the browser test failed ({}):\n{stdout}\n{stderr}\nscreenshots in {}",
        out.status,
        shots.display()
    );
    // What the page showed is what happened: the breaker kept the failing upstream from
    // all but the calls that opened it, and the replay reached the flaky one again.
    assert_eq!(failing.count(), 4);
    assert_eq!(flaky.count(), 2);
    let screenshots = std::fs::read_dir(&shots).unwrap().count();
    assert!(
        screenshots >= 5,
        "{screenshots} screenshots in {}",
        shots.display()
    );
}

/// Browsers left open cannot hold more than 16 streams: the 17th gets a 503 that says
/// why, and a closed stream frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_bounded() {
    let (weir, _ups) = start().await;
    let c = client();
    let open = || {
        c.get(weir.admin_url("/events"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .send()
    };
    let mut held = Vec::new();
    for _ in 0..16 {
        let resp = open().await.unwrap();
        assert_eq!(resp.status(), 200);
        held.push(resp);
    }
    let resp = open().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "too_many_streams", "{body}");
    // Closing one frees a place once weir notices the connection is gone: the next
    // snapshot it writes fails. Poll until it does (at most a few seconds).
    drop(held.pop());
    let mut freed = false;
    for _ in 0..50 {
        if open().await.unwrap().status() == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(freed, "a closed stream never freed its place");
}
