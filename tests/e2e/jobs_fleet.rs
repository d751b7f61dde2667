//! Async jobs across a fleet: three `weir` processes keep their jobs in one real
//! `redis-server` (Redis Streams), so a job accepted by one runs on any, a process
//! killed with -9 loses nothing (its claims are taken over after the visibility
//! timeout), and the queue's bounds and figures are the fleet's.

use std::time::{Duration, Instant};

use crate::fleet::three;
use crate::jobs::{assert_each_ran_once_and_was_delivered, until_final_within};
use crate::support::WAIT;
use crate::support::client::{client, get_json};
use crate::support::redis::RedisServer;
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::Weir;

/// The visibility timeout the tests use: a killed process's jobs wait this long.
const VISIBILITY: Duration = Duration::from_secs(2);

/// Redis that fsyncs every write, as the README asks for a job store.
fn redis() -> RedisServer {
    RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
}

/// Three processes' config: state and jobs in `redis`, one async route to `api`;
/// `jobs_extra` goes in `[jobs]`, `hooks` (a receiver's origin) enables callbacks.
fn config(redis: &str, api: &str, jobs_extra: &str, hooks: Option<&str>) -> String {
    let webhooks = hooks.map_or(String::new(), |h| {
        format!(
            "[jobs.webhooks]\norigins = [\"{h}\"]\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nschedule = [\"100ms\", \"100ms\", \"100ms\"]\n"
        )
    });
    format!(
        r#"[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[state]
backend = "redis"

[state.redis]
url = "{redis}"
prefix = "e2e:"

[upstreams.api]
url = "{api}"

[jobs]
visibility_timeout = "{}ms"
{jobs_extra}

{webhooks}
[[routes]]
name = "api"
upstream = "api"
async = {{ mode = "always" }}
"#,
        VISIBILITY.as_millis()
    )
}

/// The URL path of job `id`.
fn location(id: &str) -> String {
    format!("/_weir/jobs/{id}")
}

/// 300 jobs accepted across three processes with callbacks; one process is killed -9
/// while they run and deliver. Every job finishes on the other two, the upstream sees
/// exactly the 300 jobs' keys, and every job's webhook arrives.
#[tokio::test]
async fn a_fleet_finishes_every_job_when_one_process_is_killed() {
    const JOBS: usize = 300;
    let redis = redis();
    let up = Upstream::start(|_, _| Reply::ok().delay(Duration::from_millis(30))).await;
    let hooks = Upstream::start(|_, _| Reply::new(204)).await;
    let cfg = config(&redis.url(), &up.url(), "workers = 4", Some(&hooks.url()));
    let mut fleet = three(&cfg).await;
    let callback = format!("{}/hook", hooks.url());
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let resp = client()
            .post(fleet[i % 3].url("/work"))
            .header("weir-callback-url", &callback)
            .body(format!("job {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "job {i}");
        let v: serde_json::Value = resp.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    // Jobs are running and webhooks are going out on all three.
    hooks.wait_for(20).await;
    fleet[0].kill();
    assert!(up.count() < JOBS, "every job ran before the kill");

    let mut finals = Vec::new();
    for id in &ids {
        finals.push(until_final_within(&fleet[1], &location(id), WAIT + VISIBILITY).await);
    }
    assert_each_ran_once_and_was_delivered(&finals, &up, &hooks);
    // The killed process held claims (its four workers were busy): the others took
    // them over.
    let took_over = fleet[1..]
        .iter()
        .any(|w| w.logs().contains("took over a claim its process left"));
    assert!(took_over, "no claim was taken over");
    // The two survivors see the fleet's queue empty.
    let status = get_json(&fleet[2].admin_url("/status")).await;
    assert_eq!(status["jobs"]["store"], "redis", "{status}");
    assert_eq!(status["jobs"]["pending"], 0, "{status}");
}

/// The bound is the fleet's: three jobs waiting on A fill a queue of three for B, and
/// B's `/status` shows them by route; `wait=N` on B answers a job that A runs.
#[tokio::test]
async fn the_queue_bound_and_figures_are_the_fleets() {
    let redis = redis();
    let slow = Upstream::start(|r, _| {
        if r.path == "/fast" {
            Reply::ok().body(&b"fast"[..])
        } else {
            Reply::ok().delay(Duration::from_secs(3))
        }
    })
    .await;
    let cfg = config(
        &redis.url(),
        &slow.url(),
        "workers = 1\nmax_pending = 3",
        None,
    );
    let a = Weir::start(&cfg).await;
    let b = Weir::start(&cfg).await;
    for _ in 0..3 {
        let r = client().post(a.url("/slow")).send().await.unwrap();
        assert_eq!(r.status(), 202);
    }
    let full = client().post(b.url("/slow")).send().await.unwrap();
    assert_eq!(full.status(), 503);
    assert!(full.headers().contains_key("retry-after"));
    let body: serde_json::Value = full.json().await.unwrap();
    assert_eq!(body["error"], "queue_full", "{body}");
    let status = get_json(&b.admin_url("/status")).await;
    assert_eq!(status["jobs"]["pending"], 3, "{status}");
    assert_eq!(status["jobs"]["routes"]["api"], 3, "{status}");
    assert!(
        status["jobs"]["oldest_pending_seconds"].as_f64().is_some(),
        "{status}"
    );
    drop(a);
    drop(b);

    // A fresh pair on an empty Redis: a job accepted by B with wait=N is answered by B
    // whichever process runs it.
    let redis = self::redis();
    let cfg = config(&redis.url(), &slow.url(), "workers = 2", None);
    let fleet = three(&cfg).await;
    for w in &fleet {
        let r = client()
            .post(w.url("/fast"))
            .header("prefer", "respond-async, wait=10")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "fast");
    }
}

/// Without Redis nothing is accepted: 503 `journal_unavailable`, never a 202 for a job
/// that was not stored. An emptied Redis coming back (its groups gone) takes jobs again.
#[tokio::test]
async fn without_redis_async_requests_get_503_and_never_a_202() {
    let mut redis = redis();
    let up = Upstream::start(|_, _| Reply::ok().body(&b"ok"[..])).await;
    let cfg = config(&redis.url(), &up.url(), "", None);
    let weir = Weir::start(&cfg).await;
    let first = client().post(weir.url("/a")).send().await.unwrap();
    assert_eq!(first.status(), 202);
    up.wait_for(1).await;

    redis.kill();
    let refused = client().post(weir.url("/b")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "journal_unavailable", "{body}");

    redis.restart();
    let deadline = Instant::now() + WAIT;
    let id = loop {
        let r = client().post(weir.url("/c")).send().await.unwrap();
        if r.status() == 202 {
            break r.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        assert_eq!(r.status(), 503);
        assert!(Instant::now() < deadline, "Redis came back, weir did not");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let j = until_final_within(&weir, &location(&id), WAIT).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    let paths: Vec<String> = up.requests().iter().map(|r| r.path.clone()).collect();
    assert!(!paths.contains(&"/b".to_owned()), "{paths:?}");
}
