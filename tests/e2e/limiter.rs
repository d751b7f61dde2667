//! The built-in `limiter` filter end to end: a real weir, real sockets, real time.
//!
//! Timing bounds are the specification's (the rate, the queue's spacing, the upstream's
//! `Retry-After`), counted over the time the test measured rather than the time it
//! planned: a token bucket never admits more than `burst + rate * elapsed`, and a wait
//! never ends early. Upper bounds on how long something takes allow [`SLACK`] for a
//! loaded machine. Clients are paced on a fixed schedule and fire concurrently, so a slow
//! response never slows the schedule.

use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use crate::support::SLACK;
use crate::support::client::client;
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::Weir;

/// weir with one route, `/api/` to `up`, through the limiter with `config` (inline TOML).
async fn start(up: &Upstream, config: &str) -> Weir {
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
timeout = "10s"
filters = [{{ use = "limiter", config = {config} }}]
"#,
        up.url()
    ))
    .await
}

/// A response header as text, if present.
fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_overload_is_cut_to_rate_plus_burst_and_429s_carry_the_headers() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    const RATE: f64 = 20.0;
    const BURST: f64 = 10.0;
    let weir = start(&up, "{ rate = 20, burst = 10 }").await;
    let c = client();
    // 100 requests per second for 10 s, on a fixed schedule.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let began = Instant::now();
    let mut calls = Vec::with_capacity(1000);
    for _ in 0..1000 {
        tick.tick().await;
        let (c, url) = (c.clone(), weir.url("/api/x"));
        calls.push(tokio::spawn(async move {
            let sent = Instant::now();
            let resp = c.get(url).send().await;
            (sent, Instant::now(), resp)
        }));
    }
    let (mut admitted, mut rejected) = (0usize, 0usize);
    let (mut first_answer, mut last_sent) = (None::<Instant>, began);
    for call in calls {
        let (sent, answered, resp) = call.await.unwrap();
        let resp = resp.expect("weir answers");
        first_answer = Some(first_answer.map_or(answered, |f| f.min(answered)));
        last_sent = last_sent.max(sent);
        assert_eq!(
            header(&resp, "ratelimit-policy").as_deref(),
            Some("\"default\";q=20;w=1")
        );
        let ratelimit = header(&resp, "ratelimit").expect("RateLimit on every response");
        match resp.status().as_u16() {
            200 => {
                admitted += 1;
                let r: u32 = ratelimit
                    .strip_prefix("\"default\";r=")
                    .and_then(|rest| rest.strip_suffix(";t=1"))
                    .and_then(|r| r.parse().ok())
                    .unwrap_or_else(|| panic!("RateLimit {ratelimit:?}"));
                assert!(r < 10, "{ratelimit}");
            }
            429 => {
                rejected += 1;
                // A token every 50 ms: the next one is always under a second away.
                assert_eq!(header(&resp, "retry-after").as_deref(), Some("1"));
                assert_eq!(ratelimit, "\"default\";r=0;t=1");
                let body: serde_json::Value = resp.json().await.unwrap();
                assert_eq!(body["error"], "rate_limited", "{body}");
                assert_eq!(body["route"], "api", "{body}");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let ended = Instant::now();
    assert_eq!(admitted + rejected, 1000);
    // weir saw every request between `began` and `ended`: the bucket cannot have admitted
    // more than its burst and what it refilled in that time.
    let most = BURST + RATE * (ended - began).as_secs_f64();
    // And it saw requests every 10 ms or so from before the first answer until after the
    // last send, so it handed out every token refilled in between, except those lost
    // while the bucket sat full: only in a stall (of the test or of weir) longer than
    // burst / rate = 500 ms. Allow SLACK of such stalls.
    let first_answer = first_answer.expect("answers");
    let busy = last_sent.saturating_duration_since(first_answer);
    let least = RATE * busy.saturating_sub(SLACK).as_secs_f64();
    assert!(
        least - 1.0 <= admitted as f64 && admitted as f64 <= most + 1.0,
        "{admitted} admitted, want {least:.1} to {most:.1} (about 210 for 10 s)"
    );
    assert_eq!(
        up.count(),
        admitted,
        "only admitted requests reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_mode_delays_instead_of_rejecting() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    // A token every 200 ms, bucket of 1.
    let weir = start(&up, r#"{ rate = 5, burst = 1, mode = "queue" }"#).await;
    let c = client();
    let started = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let (c, url) = (c.clone(), weir.url("/api/q"));
            tokio::spawn(async move { c.get(url).send().await })
        })
        .collect();
    for call in calls {
        let resp = call.await.unwrap().expect("weir answers");
        assert_eq!(resp.status(), 200, "{resp:?}");
    }
    let mut arrived: Vec<Instant> = up.requests().iter().map(|r| r.received_at).collect();
    arrived.sort();
    assert_eq!(arrived.len(), 3);
    // Each waited for its own token. The bucket holds one at most, so the second token
    // comes 200 ms after the first is taken and the third 400 ms after, both after the
    // test started; the upstream sees each request after its token.
    let token = Duration::from_millis(200);
    assert!(arrived[1] - started >= token, "{:?}", arrived[1] - started);
    let last = arrived[2] - started;
    assert!(
        last >= 2 * token && last < 2 * token + SLACK,
        "the last request reached the upstream {last:?} after the test began"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_mode_rejects_what_it_could_not_serve_within_max_wait() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    // A token a minute, and nobody waits more than max_wait (under the route's 10 s
    // timeout): the second token is too far off to wait for.
    let max_wait = SLACK;
    let weir = start(
        &up,
        &format!(
            r#"{{ rate = 1, per = "1m", burst = 1, mode = "queue", max_wait = "{}s" }}"#,
            max_wait.as_secs()
        ),
    )
    .await;
    let c = client();
    let first = c.get(weir.url("/api/a")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let started = Instant::now();
    let second = c.get(weir.url("/api/b")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(second.status(), 429);
    let retry_after: u64 = header(&second, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    // Waiting would have taken max_wait at least.
    assert!(
        took < max_wait,
        "rejected at once, not after waiting: {took:?}"
    );
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_429_with_retry_after_pauses_the_key() {
    // A second, then SLACK for the probe below to reach weir within the pause.
    let pause = Duration::from_secs(1) + SLACK;
    let up = Upstream::start(move |_, i| {
        if i == 0 {
            Reply::new(429).header("retry-after", pause.as_secs().to_string())
        } else {
            Reply::ok()
        }
    })
    .await;
    let weir = start(&up, "{ rate = 100 }").await;
    let c = client();
    let get = |path: &str| c.get(weir.url(path)).send();

    // weir starts the pause between these two instants.
    let sent = Instant::now();
    let resp = get("/api/1").await.unwrap();
    let paused_at = Instant::now();
    assert_eq!(resp.status(), 429);
    assert_eq!(up.count(), 1, "the first 429 is the upstream's");

    // Paused: weir answers 429 itself, without reaching the upstream.
    let resp = get("/api/2").await.unwrap();
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=pause.as_secs()).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    assert_eq!(
        header(&resp, "ratelimit"),
        Some(format!("\"default\";r=0;t={retry_after}"))
    );
    // Still paused a second later: the pause ends `pause` after `sent` at the earliest.
    tokio::time::sleep_until((sent + Duration::from_secs(1)).into()).await;
    assert_eq!(get("/api/3").await.unwrap().status(), 429);
    assert_eq!(
        up.count(),
        1,
        "no request reached the upstream during the pause"
    );

    // After the pause (over `pause` after `paused_at` at the latest, with 300 ms for
    // weir's wall clock and the test's monotonic one to disagree), requests reach the
    // upstream again.
    tokio::time::sleep_until((paused_at + pause + Duration::from_millis(300)).into()).await;
    let resp = get("/api/4").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_x_request_id_does_not_ride_on_another_requests_reservation() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    // One token every 5 s, and one request may wait for it. The limiter keys a queued
    // request's reservation by `request-info.id`: were that the client's
    // `x-request-id`, the second request with the same id would find the first one's
    // reservation and pass on it, and both would be admitted for one token.
    const PER: Duration = Duration::from_secs(5);
    let weir = start(
        &up,
        r#"{ rate = 1, per = "5s", burst = 1, mode = "queue", max_wait = "9s", max_queue = 1 }"#,
    )
    .await;
    let c = client();
    let before_first = Instant::now();
    assert_eq!(
        c.get(weir.url("/api/0")).send().await.unwrap().status(),
        200
    );
    // Both arrive while the next token is still seconds away (a margin of seconds for a
    // busy machine), in whichever order: one takes the queue's one place, the other
    // finds it full.
    let calls: Vec<_> = ["/api/a", "/api/b"]
        .into_iter()
        .map(|path| {
            let (c, url) = (c.clone(), weir.url(path));
            tokio::spawn(async move {
                let resp = c
                    .get(url)
                    .header("x-request-id", "same-id")
                    .send()
                    .await
                    .expect("weir answers");
                let at = Instant::now();
                let status = resp.status().as_u16();
                let body = resp.text().await.expect("a body");
                (status, at, body)
            })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    let mut statuses: Vec<u16> = results.iter().map(|(s, _, _)| *s).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 429], "one token, one admitted: {results:?}");
    let (_, _, rejected) = results.iter().find(|(s, _, _)| *s == 429).unwrap();
    let rejected: serde_json::Value = serde_json::from_str(rejected).unwrap();
    // The 429 names the request by the id the client knows it by.
    assert_eq!(rejected["request_id"], "same-id", "{rejected}");
    let (_, admitted_at, _) = results.iter().find(|(s, _, _)| *s == 200).unwrap();
    // It waited for its own token, due PER after the first request took the burst's
    // (after `before_first`); 50 ms for clock granularity.
    let waited = *admitted_at - before_first;
    assert!(
        waited >= PER - Duration::from_millis(50),
        "admitted {waited:?} after the first request"
    );
    assert_eq!(up.count(), 2, "the upstream saw one request per token");
}
