//! Async requests end to end: `Prefer: respond-async` gives a 202 for a job stored in the
//! journal; the job runs through the route's chain with an idempotency key; a kill -9
//! loses no accepted job; webhooks arrive signed and retried. Real time only where a job
//! or a delivery must run: every wait polls with [`WAIT`] as its bound.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::support::WAIT;
use crate::support::client::{client, get_json};
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::{Weir, check};

/// A config with one async route (`mode`) to `upstream`, the journal at `journal`, and
/// `extra` appended to `[jobs]`.
fn config(upstream: &str, journal: &Path, mode: &str, jobs_extra: &str) -> String {
    format!(
        r#"[listen]
addr = "127.0.0.1:0"
drain_timeout = "5s"

[admin]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{upstream}"

[jobs]
journal = "{}"
{jobs_extra}

[[routes]]
name = "api"
upstream = "api"
async = {{ mode = "{mode}" }}
"#,
        journal.display()
    )
}

/// POSTs `body` with `Prefer: respond-async` (and `extra` headers).
async fn post_async(weir: &Weir, body: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client()
        .post(weir.url("/work"))
        .header("prefer", "respond-async")
        .body(body.to_owned());
    for (n, v) in extra {
        req = req.header(*n, *v);
    }
    req.send().await.expect("send")
}

/// Polls the job at `location` until it is in a final state with no webhook owed;
/// returns its JSON.
async fn until_final(weir: &Weir, location: &str) -> serde_json::Value {
    until_final_within(weir, location, WAIT).await
}

/// [`until_final`], failing after `within`.
pub(crate) async fn until_final_within(
    weir: &Weir,
    location: &str,
    within: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let job = get_json(&weir.url(location)).await;
        let state = job["state"].as_str().unwrap_or_default();
        let webhook_pending = job["webhook"]["state"] == "pending";
        if ["succeeded", "failed", "dead"].contains(&state) && !webhook_pending {
            return job;
        }
        assert!(Instant::now() < deadline, "job did not finish: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn respond_async_answers_202_and_the_job_runs_through_the_route() {
    let up = Upstream::start(|_, _| Reply::ok().body(&b"done"[..])).await;
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(&config(&up.url(), &dir.path().join("j.redb"), "prefer", "")).await;

    // Without the preference the route answers as it always did.
    let sync = client().post(weir.url("/work")).send().await.unwrap();
    assert_eq!(sync.status(), 200);
    assert_eq!(sync.text().await.unwrap(), "done");

    let resp = post_async(&weir, "payload", &[]).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["preference-applied"], "respond-async");
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let body: serde_json::Value = resp.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(location, format!("/_weir/jobs/{id}"));

    let job = until_final(&weir, &location).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["result"]["status"], 200);
    assert_eq!(job["result"]["body"], "done");
    assert!(job["finished_at"].is_string());

    let got = up.requests().into_iter().last().unwrap();
    assert_eq!(got.body_str(), "payload");
    assert_eq!(
        got.header_str("idempotency-key"),
        Some(format!("weir-{id}").as_str())
    );
    assert_eq!(got.header_str("x-request-id"), Some(id.as_str()));
    assert!(!got.has_header("prefer"));

    // A client's own key goes through; unknown ids are 404.
    let resp = post_async(&weir, "", &[("idempotency-key", "mine-1")]).await;
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    until_final(&weir, &location).await;
    assert_eq!(
        up.requests().last().unwrap().header_str("idempotency-key"),
        Some("mine-1")
    );
    let missing = client()
        .get(weir.url("/_weir/jobs/00000000000000000000000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn wait_answers_the_result_when_it_comes_in_time() {
    let up = Upstream::start(|_, i| {
        // The second call takes longer than the client will wait.
        let r = Reply::new(201).body(format!("n{i}"));
        if i == 1 {
            r.delay(Duration::from_secs(5))
        } else {
            r
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(&config(&up.url(), &dir.path().join("j.redb"), "always", "")).await;
    let fast = client()
        .post(weir.url("/work"))
        .header("prefer", "respond-async, wait=20")
        .send()
        .await
        .unwrap();
    assert_eq!(fast.status(), 201);
    assert_eq!(fast.text().await.unwrap(), "n0");
    let slow = client()
        .post(weir.url("/work"))
        .header("prefer", "wait=1")
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 202);
}

#[tokio::test]
async fn a_full_queue_answers_503_queue_full() {
    let up = Upstream::start(|_, _| Reply::hang()).await;
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(&config(
        &up.url(),
        &dir.path().join("j.redb"),
        "prefer",
        "max_pending = 2\nworkers = 1",
    ))
    .await;
    for _ in 0..2 {
        assert_eq!(post_async(&weir, "x", &[]).await.status(), 202);
    }
    let full = post_async(&weir, "x", &[]).await;
    assert_eq!(full.status(), 503);
    assert_eq!(full.headers()["retry-after"], "1");
    let body: serde_json::Value = full.json().await.unwrap();
    assert_eq!(body["error"], "queue_full");
}

#[tokio::test]
async fn the_byte_bound_refuses_what_would_pass_it() {
    let up = Upstream::start(|_, _| Reply::hang()).await;
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(&config(
        &up.url(),
        &dir.path().join("j.redb"),
        "prefer",
        "max_pending_bytes = \"4KiB\"\nworkers = 1",
    ))
    .await;
    let kib = "x".repeat(1024);
    assert_eq!(post_async(&weir, &kib, &[]).await.status(), 202);
    // 1 KiB and its headers are waiting: 3.5 KiB more would pass 4 KiB.
    let big = post_async(&weir, &"y".repeat(3584), &[]).await;
    assert_eq!(big.status(), 503);
    let body: serde_json::Value = big.json().await.unwrap();
    assert_eq!(body["error"], "queue_full");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("max_pending_bytes"),
        "{body}"
    );
    // A small one still fits.
    assert_eq!(post_async(&weir, &kib, &[]).await.status(), 202);
}

#[tokio::test]
async fn finished_jobs_are_purged_after_the_retention() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(&config(
        &up.url(),
        &dir.path().join("j.redb"),
        "prefer",
        "retention = \"1s\"",
    ))
    .await;
    let resp = post_async(&weir, "x", &[]).await;
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let job = until_final(&weir, &location).await;
    assert_eq!(job["state"], "succeeded");
    let deadline = Instant::now() + WAIT;
    loop {
        let r = client().get(weir.url(&location)).send().await.unwrap();
        if r.status() == 404 {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"], "job_not_found");
            break;
        }
        assert_eq!(r.status(), 200);
        assert!(Instant::now() < deadline, "the job was never purged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A reload that removes the route fails the jobs still queued for it, saying why; the
/// admin API runs a failed job again, and it succeeds once the route is back.
#[tokio::test]
async fn a_reload_that_removes_the_route_fails_its_queued_jobs_clearly() {
    let up = Upstream::start(|r, _| {
        if r.path == "/block" {
            Reply::ok().delay(Duration::from_millis(1500))
        } else {
            Reply::ok().body(&b"ran"[..])
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("j.redb");
    let cfg = config(&up.url(), &journal, "always", "workers = 1");
    let weir = Weir::start(&cfg).await;
    // The one worker is busy with /block while /work waits in the queue.
    let block = client().post(weir.url("/block")).send().await.unwrap();
    assert_eq!(block.status(), 202);
    up.wait_for(1).await;
    let queued = client().post(weir.url("/work")).send().await.unwrap();
    let id = queued.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mark = weir.log_mark();
    let renamed = cfg.replace("name = \"api\"", "name = \"other\"");
    weir.write_file("weir.toml", &renamed);
    weir.wait_for_log_after(mark, "config reloaded", WAIT).await;
    let location = format!("/_weir/jobs/{id}");
    let job = until_final(&weir, &location).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("route `api` is gone"),
        "{job}"
    );
    assert!(
        up.requests().iter().all(|r| r.path != "/work"),
        "the job reached the upstream"
    );

    // Succeeded jobs do not run again; unknown ones are not found.
    let block_id = block.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    until_final(&weir, &format!("/_weir/jobs/{block_id}")).await;
    let refused = client()
        .post(weir.admin_url(&format!("/jobs/{block_id}/rerun")))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    let missing = client()
        .post(weir.admin_url(&format!("/jobs/{}/rerun", "0".repeat(32))))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The route is back: the failed job runs again, with its key.
    let mark = weir.log_mark();
    weir.write_file("weir.toml", &cfg);
    weir.wait_for_log_after(mark, "config reloaded", WAIT).await;
    let again = client()
        .post(weir.admin_url(&format!("/jobs/{id}/rerun")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    let job = until_final(&weir, &location).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["body"], "ran");
    assert_eq!(job["attempts"], 2);
    // `/requests` links the run to the job (the run refused by the missing route never
    // reached the chain).
    let runs = get_json(&weir.admin_url(&format!("/requests?job={id}"))).await;
    let runs = runs["requests"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["job"], id.as_str());
    assert_eq!(runs[0]["status"], 200);
    let work: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.path == "/work")
        .collect();
    assert_eq!(work.len(), 1);
    assert_eq!(
        work[0].header_str("idempotency-key"),
        job["idempotency_key"].as_str()
    );
}

#[test]
fn check_refuses_the_reserved_prefix_and_async_without_a_journal() {
    let base = r#"[listen]
addr = "127.0.0.1:0"

[upstreams.api]
url = "http://127.0.0.1:1"
"#;
    let (code, _, err) = check(
        &format!(
            "{base}[jobs]\njournal = \"j.redb\"\n\n[[routes]]\nname = \"x\"\nupstream = \"api\"\nmatch = {{ path_prefix = \"/_weir/jobs/\" }}\n"
        ),
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("reserved prefix `/_weir/jobs/`"), "{err}");
    let (code, _, err) = check(
        &format!("{base}[[routes]]\nname = \"x\"\nupstream = \"api\"\nasync = {{}}\n"),
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("`async` needs a `[jobs]` table"), "{err}");
}

/// kill -9 while jobs run and webhooks go out, restart on the same journal: every
/// accepted job finishes, the upstream saw exactly the jobs' keys (repeats only with the
/// same key), and every job's webhook arrives (repeats only with the same id).
#[tokio::test]
async fn kill_9_loses_no_accepted_job() {
    const JOBS: usize = 500;
    let up = Upstream::start(|_, _| Reply::ok().delay(Duration::from_millis(10))).await;
    let hooks = Upstream::start(|_, _| Reply::new(204)).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("j.redb");
    let cfg = config(
        &up.url(),
        &journal,
        "always",
        &format!(
            "workers = 4\n[jobs.webhooks]\norigins = [\"{}\"]\nsecret = \"{SECRET}\"\nschedule = [\"50ms\"]\n",
            hooks.url()
        ),
    );
    let mut weir = Weir::start(&cfg).await;
    let ids = accept_jobs(&weir, "/work", JOBS, &format!("{}/hook", hooks.url())).await;
    // Jobs have run and webhooks are going out; most jobs have not run.
    hooks.wait_for(10).await;
    weir.kill();
    let seen_before = up.count();
    assert!(seen_before < JOBS, "all jobs ran before the kill");

    let weir = Weir::start(&cfg).await;
    let mut finals = Vec::new();
    for id in &ids {
        finals.push(until_final(&weir, &format!("/_weir/jobs/{id}")).await);
    }
    assert_each_ran_once_and_was_delivered(&finals, &up, &hooks);
}

/// POSTs `n` requests (bodies `job 0`, `job 1`, …) to `path`, each with
/// `callback` as its webhook, on a route that makes every request a job; returns the
/// jobs' ids.
pub(crate) async fn accept_jobs(weir: &Weir, path: &str, n: usize, callback: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let resp = client()
            .post(weir.url(path))
            .header("weir-callback-url", callback)
            .body(format!("job {i}"))
            .send()
            .await
            .unwrap();
        let location = accepted(resp).await;
        ids.push(location.trim_start_matches("/_weir/jobs/").to_owned());
    }
    ids
}

/// Checks that `resp` is a job's 202 and returns the job's location.
pub(crate) async fn accepted(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 202, "{resp:?}");
    resp.headers()["location"].to_str().unwrap().to_owned()
}

/// What a crash must not change: every job in `finals` (their final JSON, distinct
/// jobs) succeeded and was delivered, the upstream saw exactly their idempotency keys
/// (repeats only with the same key), and every job's webhook reached `hooks` under its
/// own `webhook-id` (repeats only with the same id).
pub(crate) fn assert_each_ran_once_and_was_delivered(
    finals: &[serde_json::Value],
    up: &Upstream,
    hooks: &Upstream,
) {
    let mut keys = HashSet::new();
    let mut webhook_ids = HashSet::new();
    for job in finals {
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["webhook"]["state"], "delivered", "{job}");
        keys.insert(job["idempotency_key"].as_str().unwrap().to_owned());
        webhook_ids.insert(format!("msg_{}", job["id"].as_str().unwrap()));
    }
    assert_eq!(keys.len(), finals.len(), "a key per job");
    let header_values = |u: &Upstream, name: &str| -> HashSet<String> {
        u.requests()
            .iter()
            .map(|r| r.header_str(name).unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        header_values(up, "idempotency-key"),
        keys,
        "the upstream saw exactly the jobs' keys"
    );
    assert_eq!(
        header_values(hooks, "webhook-id"),
        webhook_ids,
        "every job's webhook arrived, under its id"
    );
}

/// A job whose run never finishes, because weir dies each time it runs (here a kill -9
/// while the upstream holds the call), fails after five cut-off runs instead of running
/// at every start; an admin rerun runs it once more.
#[tokio::test]
async fn a_job_cut_off_five_times_fails_instead_of_running_forever() {
    let hang = Upstream::start(|_, _| Reply::hang()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&hang.url(), &dir.path().join("j.redb"), "always", "");
    let mut weir = Weir::start(&cfg).await;
    let resp = client()
        .post(weir.url("/work"))
        .body("poison")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    // A run's start is synced only for a job found unfinished at a start, so the first
    // kill may lose the first start: five cut-off runs take five or six kills.
    // The runs seen before the last kill: a restarted weir may run the job again before
    // this loop looks.
    let mut runs = 0;
    let job = loop {
        let deadline = Instant::now() + WAIT;
        let finished = loop {
            let job = get_json(&weir.url(&location)).await;
            if job["state"] == "failed" {
                break Some(job);
            }
            if hang.count() > runs {
                break None;
            }
            assert!(
                Instant::now() < deadline,
                "the job neither ran nor failed: {job}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if let Some(job) = finished {
            break job;
        }
        assert!(hang.count() <= 6, "the job ran {} times", hang.count());
        runs = hang.count();
        weir.kill();
        weir = Weir::start(&cfg).await;
    };
    assert_eq!(job["cut_off_runs"], 5, "{job}");
    let runs = hang.count();
    assert!((5..=6).contains(&runs), "{runs} runs");
    // A lost first start loses its count too: the journal knows five runs either way.
    assert_eq!(job["attempts"], 5, "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("cut off 5 times"), "{error}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hang.count(), runs, "the job ran again after it failed");

    // The operator may try once more: the count starts again.
    let id = job["id"].as_str().unwrap();
    let rerun = client()
        .post(weir.admin_url(&format!("/jobs/{id}/rerun")))
        .send()
        .await
        .unwrap();
    assert_eq!(rerun.status(), 202);
    hang.wait_for(runs + 1).await;
    let job = get_json(&weir.url(&location)).await;
    assert_eq!(
        (&job["state"], &job["cut_off_runs"]),
        (&"running".into(), &0.into()),
        "{job}"
    );
}

/// SIGTERM: new async requests are refused, and what was accepted finishes, now or
/// after the restart.
#[tokio::test]
async fn sigterm_stops_accepting_and_loses_nothing() {
    let up = Upstream::start(|_, _| Reply::ok().delay(Duration::from_millis(50))).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("j.redb");
    let cfg = config(&up.url(), &journal, "always", "workers = 2");
    let mut weir = Weir::start(&cfg).await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        let resp = client().post(weir.url("/work")).send().await.unwrap();
        let v: serde_json::Value = resp.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let addr = weir.url("/work");
    weir.signal("TERM");
    weir.wait_exit(WAIT).await;
    assert!(
        client().post(&addr).send().await.is_err(),
        "accepted after SIGTERM"
    );
    let weir = Weir::start(&cfg).await;
    for id in &ids {
        let job = until_final(&weir, &format!("/_weir/jobs/{id}")).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
}

pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Checks a delivery's Standard Webhooks signature.
fn verify(r: &crate::support::upstream::Recorded) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let signed = format!(
        "{}.{}.{}",
        r.header_str("webhook-id").unwrap(),
        r.header_str("webhook-timestamp").unwrap(),
        r.body_str()
    );
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        signed.as_bytes(),
    );
    r.header_str("webhook-signature")
        == Some(&format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
        ))
}

#[tokio::test]
async fn webhooks_are_signed_retried_with_one_id_and_dead_after_the_schedule() {
    let up = Upstream::start(|_, _| Reply::ok().body(&b"result"[..])).await;
    // The receiver fails twice (once asking to wait), then takes it; path /dead always fails.
    let hooks = Upstream::start(|r, i| {
        if r.path == "/dead" {
            Reply::new(500)
        } else if r.path == "/gone" {
            Reply::new(410)
        } else if i < 2 {
            Reply::new(503).header("retry-after", "0")
        } else {
            Reply::new(204)
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(&config(
        &up.url(),
        &dir.path().join("j.redb"),
        "prefer",
        &format!(
            "[jobs.webhooks]\norigins = [\"{}\"]\nsecret = \"{SECRET}\"\nschedule = [\"50ms\", \"50ms\"]\n",
            hooks.url()
        ),
    ))
    .await;

    // Not a listed origin: refused before anything is stored.
    let bad = post_async(&weir, "", &[("weir-callback-url", "http://127.0.0.1:1/x")]).await;
    assert_eq!(bad.status(), 400);

    let cb = format!("{}/hook", hooks.url());
    let resp = post_async(&weir, "", &[("weir-callback-url", &cb)]).await;
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let job = until_final(&weir, &location).await;
    assert_eq!(job["webhook"]["state"], "delivered", "{job}");
    assert_eq!(job["webhook"]["attempts"], 3);
    let got = hooks.requests();
    assert_eq!(got.len(), 3);
    let ids: HashSet<_> = got
        .iter()
        .map(|r| r.header_str("webhook-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "one webhook-id across retries");
    assert!(got.iter().all(verify), "every delivery is signed");
    let payload = got[2].json();
    assert_eq!(payload["data"]["result"]["body"], "result");

    // 410 stops at once.
    let resp = post_async(
        &weir,
        "",
        &[("weir-callback-url", &format!("{}/gone", hooks.url()))],
    )
    .await;
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let job = until_final(&weir, &location).await;
    assert_eq!(job["webhook"]["state"], "gone");
    assert_eq!(job["webhook"]["attempts"], 1);

    // A receiver that never takes it: dead after 1 + 2 attempts, listed, re-delivered.
    let resp = post_async(
        &weir,
        "",
        &[("weir-callback-url", &format!("{}/dead", hooks.url()))],
    )
    .await;
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let job = until_final(&weir, &location).await;
    assert_eq!(job["state"], "dead", "{job}");
    assert_eq!(job["webhook"]["attempts"], 3);
    let id = job["id"].as_str().unwrap();
    let dead: serde_json::Value = client()
        .get(weir.admin_url("/jobs/dead"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dead["jobs"][0]["id"], id);
    let before = hooks.count();
    let again = client()
        .post(weir.admin_url(&format!("/jobs/{id}/redeliver")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    let job = until_final(&weir, &location).await;
    assert_eq!(job["state"], "dead");
    assert_eq!(hooks.count(), before + 3);
}
