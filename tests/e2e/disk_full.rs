//! A full disk under the embedded job journal (`[jobs] journal`), end to end: the journal
//! lives on a small filesystem of its own that the test fills (see
//! [`crate::support::disk`]: a tmpfs filled to `ENOSPC`, or, where mounting is refused,
//! weir's file-size limit lowered to 0).
//!
//! While the disk is full, an async request gets 503 `journal_unavailable` with
//! `Retry-After`, never a 202 for a job that was not stored, and weir keeps serving.
//! Jobs accepted before keep their place: a run that finishes meanwhile has its outcome
//! written once there is room again, and so does a webhook delivered meanwhile; each job
//! runs once and is delivered, without a restart. The journal takes new jobs again by
//! itself, and a restart on it finds every job as it was left.
//!
//! Each test starts on an empty journal, whose file holds no block that a megabyte row
//! could reuse: so the writes the test makes while the disk is full are sure to need
//! new blocks, and to fail.

use crate::jobs::{
    SECRET, accept_jobs, accepted, assert_each_ran_once_and_was_delivered, until_final_within,
};
use crate::support::WAIT;
use crate::support::client::{client, get_json};
use crate::support::disk::SmallDisk;
use crate::support::upstream::{Gate, Reply, Upstream};
use crate::support::weir::{Weir, WeirBuilder};

/// Jobs accepted before the disk fills, held by the upstream until it is full.
const HELD: usize = 4;
/// Each held job's answer: a result this large needs new blocks in the journal.
const RESULT_BYTES: u64 = 1 << 20;
/// The bodies of the requests sent while the disk is full: larger than all the journal
/// has ever written, so that no block it could rewrite in place holds one.
const LATE_BYTES: usize = 2 << 20;

fn config(upstream: &str, hooks: &str, journal: &std::path::Path) -> String {
    format!(
        r#"[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{upstream}"

[jobs]
journal = "{}"
workers = 8

[jobs.webhooks]
origins = ["{hooks}"]
secret = "{SECRET}"
schedule = ["100ms", "100ms", "100ms"]

[[routes]]
name = "api"
upstream = "api"
async = {{ mode = "always" }}
"#,
        journal.display()
    )
}

async fn start(disk: &SmallDisk, cfg: &str) -> Weir {
    disk.weir(WeirBuilder::new(cfg)).start().await
}

/// An upstream answering every job with [`RESULT_BYTES`] once `runs` opens, a webhook
/// receiver answering 204 once `deliveries` opens, and weir with its journal on `disk`.
async fn setup(disk: &SmallDisk, runs: &Gate, deliveries: &Gate) -> (Upstream, Upstream, String) {
    let up = {
        let runs = runs.clone();
        Upstream::start(move |_, _| Reply::ok().pattern(RESULT_BYTES).held(&runs)).await
    };
    let hooks = {
        let deliveries = deliveries.clone();
        Upstream::start(move |_, _| Reply::new(204).held(&deliveries)).await
    };
    let cfg = config(&up.url(), &hooks.url(), &disk.path().join("jobs.redb"));
    (up, hooks, cfg)
}

/// Waits for each job to be final with its webhook settled.
async fn finals(weir: &Weir, ids: &[String]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for id in ids {
        out.push(until_final_within(weir, &format!("/_weir/jobs/{id}"), WAIT).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_jobs_with_503_and_loses_none_it_had_accepted() {
    let disk = SmallDisk::new();
    let (runs, deliveries) = (Gate::new(), Gate::new());
    deliveries.open();
    let (up, hooks, cfg) = setup(&disk, &runs, &deliveries).await;
    let mut weir = start(&disk, &cfg).await;
    let callback = format!("{}/hook", hooks.url());

    // Accepted and running: the upstream holds them.
    let mut ids = accept_jobs(&weir, "/work", HELD, &callback).await;
    up.wait_for(HELD).await;

    disk.fill(&weir);
    let mark = weir.log_mark();
    for i in 0..3 {
        let resp = client()
            .post(weir.url("/late"))
            .header("weir-callback-url", &callback)
            .body(vec![b'0' + i; LATE_BYTES])
            .send()
            .await
            .expect("weir answers");
        assert_eq!(resp.status(), 503, "{resp:?}");
        assert_eq!(resp.headers()["retry-after"], "1");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "journal_unavailable", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("job journal"),
            "{body}"
        );
    }
    weir.wait_for_log_after(mark, "cannot store an async request; answered 503", WAIT)
        .await;

    // The held jobs finish while the disk is full: their outcomes cannot be written.
    let mark = weir.log_mark();
    runs.open();
    weir.wait_for_log_after(mark, "cannot record a job's outcome", WAIT)
        .await;
    for id in &ids {
        let job = get_json(&weir.url(&format!("/_weir/jobs/{id}"))).await;
        assert_eq!(job["state"], "running", "{job}");
    }
    assert!(weir.is_running(), "weir died on a full disk");

    disk.free(&weir);
    let mut done = finals(&weir, &ids).await;
    assert_each_ran_once_and_was_delivered(&done, &up, &hooks);
    assert_eq!(up.count(), HELD, "a job ran twice");

    // The journal takes jobs again, without a restart.
    let resp = client()
        .post(weir.url("/work"))
        .header("weir-callback-url", &callback)
        .body("after")
        .send()
        .await
        .unwrap();
    let location = accepted(resp).await;
    ids.push(location.trim_start_matches("/_weir/jobs/").to_owned());
    done.push(until_final_within(&weir, &location, WAIT).await);
    assert_each_ran_once_and_was_delivered(&done, &up, &hooks);

    // What the journal holds is what was answered: a restart finds every job as it was
    // left and has nothing to run again.
    weir.kill();
    let weir = start(&disk, &cfg).await;
    assert!(!weir.logs().contains("re-running jobs"), "{}", weir.logs());
    for (id, before) in ids.iter().zip(&done) {
        let job = get_json(&weir.url(&format!("/_weir/jobs/{id}"))).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["webhook"]["state"], "delivered", "{job}");
        assert_eq!(job["finished_at"], before["finished_at"], "{job}");
    }
    assert_eq!(up.count(), HELD + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_delivered_while_the_disk_is_full_is_recorded_once_it_has_room() {
    let disk = SmallDisk::new();
    let (runs, deliveries) = (Gate::new(), Gate::new());
    runs.open();
    let (up, hooks, cfg) = setup(&disk, &runs, &deliveries).await;
    let mut weir = start(&disk, &cfg).await;

    // The jobs ran; their webhooks are out, held by the receiver.
    let ids = accept_jobs(&weir, "/work", HELD, &format!("{}/hook", hooks.url())).await;
    hooks.wait_for(HELD).await;

    disk.fill(&weir);
    let mark = weir.log_mark();
    deliveries.open();
    weir.wait_for_log_after(mark, "cannot record a delivery", WAIT)
        .await;
    assert!(weir.is_running(), "weir died on a full disk");

    disk.free(&weir);
    let done = finals(&weir, &ids).await;
    assert_each_ran_once_and_was_delivered(&done, &up, &hooks);
    assert_eq!(hooks.count(), HELD, "a webhook was sent twice");
}
