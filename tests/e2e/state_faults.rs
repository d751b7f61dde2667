//! Redis flapping under load: weir with the Redis state backend and a chain of limiter,
//! breaker, cache and idempotency, while clients keep sending and the test kills Redis
//! (a crash: connections refused) and freezes it (SIGSTOP: connections open, nothing
//! answers, as a hung or partitioned server), twice each, bringing it back each time.
//!
//! The outcomes are the ones the README's "When Redis is down" table promises:
//!
//! | request | Redis down | Redis up |
//! | --- | --- | --- |
//! | `GET` (limiter, breaker, cache) | 200 from the upstream, no `RateLimit` header | 200, with `RateLimit` |
//! | `POST` with an `Idempotency-Key` | 503 `state_unavailable`, `Retry-After: 1` | 200 |
//!
//! and nothing else: weir stays up, every request is answered, none is held past the
//! route's timeout (a frozen Redis lasts longer than that, so a request waiting on it
//! would show), `/status` `state.healthy` and `weir_state_up` follow Redis down and back,
//! and once Redis is back the chain works as before (limiter headers, cache hits,
//! idempotent replays).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::client::{client, get_json, metrics};
use crate::support::redis::RedisServer;
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::Weir;
use crate::support::{SLACK, WAIT};

/// The route's timeout: no request may take longer (plus [`SLACK`]).
const ROUTE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the test keeps Redis frozen: longer than a request may take, so that a
/// request waiting on the frozen server instead of its timeouts is caught.
const FROZEN_FOR: Duration = Duration::from_secs(9);
/// How long the test keeps Redis dead at least.
const DEAD_FOR: Duration = Duration::from_secs(3);
/// Client loops sending at once.
const CLIENTS: usize = 6;

/// One request the clients sent.
#[derive(Debug)]
struct Sample {
    post: bool,
    started: Instant,
    ended: Instant,
    /// The status and weir's error code, or why there was no answer.
    answer: Result<(u16, Option<String>), String>,
    /// Whether the answer carried the limiter's `RateLimit` header.
    ratelimit: bool,
    retry_after: Option<String>,
}

/// A stretch of the test in which Redis was known to be up or down throughout.
#[derive(Debug)]
struct Window {
    up: bool,
    what: &'static str,
    from: Instant,
    to: Instant,
}

fn config(redis: &str, api: &str) -> String {
    format!(
        r#"[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[state]
backend = "redis"

[state.redis]
url = "{redis}"
prefix = "flap:"
timeout = "200ms"

[upstreams.api]
url = "{api}"

[[routes]]
name = "api"
upstream = "api"
timeout = "{}s"
filters = [
  {{ use = "limiter", config = {{ rate = 100000, burst = 100000 }} }},
  "breaker",
  "cache",
  "idempotency",
]
"#,
        ROUTE_TIMEOUT.as_secs()
    )
}

/// Sends one request: a cacheable `GET`, or a `POST` with a key never used before.
async fn send(http: &reqwest::Client, weir_url: &str, post: bool, n: usize) -> Sample {
    let started = Instant::now();
    let req = if post {
        http.post(format!("{weir_url}/pay"))
            .header("idempotency-key", format!("flap-{n}"))
            .body(format!("pay {n}"))
    } else {
        http.get(format!("{weir_url}/item/{}", n % 4))
    };
    let answer = match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let ratelimit = r.headers().contains_key("ratelimit");
            let retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match r.bytes().await {
                Ok(body) => {
                    let code = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_owned));
                    return Sample {
                        post,
                        started,
                        ended: Instant::now(),
                        answer: Ok((status, code)),
                        ratelimit,
                        retry_after,
                    };
                }
                Err(e) => Err(format!("body: {e}")),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    Sample {
        post,
        started,
        ended: Instant::now(),
        answer,
        ratelimit: false,
        retry_after: None,
    }
}

/// Whether weir reports its state backend as `up`, in `/status` and in `weir_state_up`
/// alike.
async fn reports(weir: &Weir, up: bool) -> bool {
    let status = get_json(&weir.admin_url("/status")).await;
    let gauge = format!("\nweir_state_up {}\n", i32::from(up));
    status["state"]["healthy"] == up && metrics(weir).await.contains(&gauge)
}

/// Waits until weir reports the backend `up` (or down).
async fn until_reported(weir: &Weir, up: bool) {
    let deadline = Instant::now() + WAIT;
    while !reports(weir, up).await {
        assert!(
            Instant::now() < deadline,
            "weir never reported the state backend {}: {}",
            if up { "up" } else { "down" },
            get_json(&weir.admin_url("/status")).await["state"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until Redis serves weir again: a fresh key's `POST` goes through and the
/// backend is reported up.
async fn until_recovered(weir: &Weir, n: &AtomicUsize) {
    let http = client();
    let deadline = Instant::now() + WAIT;
    loop {
        let s = send(&http, &weir.url(""), true, n.fetch_add(1, Ordering::SeqCst)).await;
        if matches!(s.answer, Ok((200, _))) && reports(weir, true).await {
            return;
        }
        assert!(Instant::now() < deadline, "no recovery: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a blocking call (starting or stopping Redis) off the test's async threads.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_flapping_under_load_costs_only_the_documented_answers() {
    let mut redis = RedisServer::start();
    let api = Upstream::start(|r, i| {
        if r.path.starts_with("/item/") {
            Reply::ok()
                .header("cache-control", "max-age=60")
                .body(format!("item {i}"))
        } else {
            Reply::ok().body(format!("paid {}", r.body_str()))
        }
    })
    .await;
    let mut weir = Weir::start(&config(&redis.url(), &api.url())).await;
    until_reported(&weir, true).await;

    // The clients: each sends one request after another until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let n = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (stop, n, url) = (stop.clone(), n.clone(), weir.url(""));
        clients.push(tokio::spawn(async move {
            let http = client();
            let mut samples = Vec::new();
            let mut i = c;
            while !stop.load(Ordering::SeqCst) {
                samples.push(send(&http, &url, i % 2 == 1, n.fetch_add(1, Ordering::SeqCst)).await);
                i += 1;
            }
            samples
        }));
    }

    let mut windows = Vec::new();
    let mut up_since = Instant::now();
    for round in 0..2 {
        for frozen in [false, true] {
            // Redis has served the clients for a while.
            tokio::time::sleep(Duration::from_secs(1)).await;
            windows.push(Window {
                up: true,
                what: "up",
                from: up_since,
                to: Instant::now(),
            });
            let what = if frozen { "frozen" } else { "dead" };
            if frozen {
                redis.pause();
            } else {
                blocking(|| redis.kill());
            }
            let down_since = Instant::now();
            until_reported(&weir, false).await;
            let down_for = if frozen { FROZEN_FOR } else { DEAD_FOR };
            tokio::time::sleep(down_for.saturating_sub(down_since.elapsed())).await;
            windows.push(Window {
                up: false,
                what,
                from: down_since,
                to: Instant::now(),
            });
            if frozen {
                redis.resume();
            } else {
                blocking(|| redis.restart());
            }
            until_recovered(&weir, &n).await;
            up_since = Instant::now();
            println!("round {round}: {what} for {down_for:?}, then back");
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    windows.push(Window {
        up: true,
        what: "up",
        from: up_since,
        to: Instant::now(),
    });
    stop.store(true, Ordering::SeqCst);
    let mut samples = Vec::new();
    for c in clients {
        samples.extend(c.await.unwrap());
    }

    // Every request was answered in time, with one of the documented answers.
    assert!(weir.is_running(), "weir died");
    let longest = samples.iter().map(|s| s.ended - s.started).max().unwrap();
    println!("{} requests, the longest took {longest:?}", samples.len());
    for s in &samples {
        let took = s.ended - s.started;
        assert!(
            took < ROUTE_TIMEOUT + SLACK,
            "a request was held {took:?}, past the route's timeout: {s:?}"
        );
        match (&s.answer, s.post) {
            (Ok((200, None)), _) => {}
            (Ok((503, Some(code))), true) if code == "state_unavailable" => {
                assert_eq!(s.retry_after.as_deref(), Some("1"), "{s:?}");
            }
            _ => panic!("not a documented answer: {s:?}"),
        }
    }

    // Within each window, the answers are the ones for Redis up, or for Redis down.
    for w in &windows {
        let inside: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.started >= w.from && s.ended <= w.to)
            .collect();
        for post in [false, true] {
            let kind = if post { "POST" } else { "GET" };
            let of_kind: Vec<&&Sample> = inside.iter().filter(|s| s.post == post).collect();
            assert!(
                !of_kind.is_empty(),
                "no {kind} ran while Redis was {} ({:?})",
                w.what,
                w.to - w.from
            );
            for s in of_kind {
                let want = match (w.up, post) {
                    (true, _) | (false, false) => Ok((200, None)),
                    (false, true) => Ok((503, Some("state_unavailable".to_owned()))),
                };
                assert_eq!(s.answer, want, "{kind} while Redis was {}: {s:?}", w.what);
                // The limiter fails open without its headers, and has them otherwise.
                if !post {
                    assert_eq!(s.ratelimit, w.up, "GET while Redis was {}: {s:?}", w.what);
                }
            }
        }
    }

    // Back to normal: limiter headers, a cache hit, an idempotent replay.
    let http = client();
    let before = api.count();
    let first = http.get(weir.url("/item/after")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().contains_key("ratelimit"));
    let hit = http.get(weir.url("/item/after")).send().await.unwrap();
    assert_eq!(hit.status(), 200);
    assert_eq!(api.count(), before + 1, "the second GET was a cache hit");
    let pay = || {
        http.post(weir.url("/pay"))
            .header("idempotency-key", "after")
            .body("once")
            .send()
    };
    let paid = pay().await.unwrap();
    assert_eq!(paid.status(), 200);
    assert_eq!(paid.text().await.unwrap(), "paid once");
    let replay = pay().await.unwrap();
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.headers()["x-weir-idempotent-replay"], "true");
    assert_eq!(api.count(), before + 2, "the replay was not sent upstream");
    assert!(weir.logs().contains("the redis state backend is back"));
}
