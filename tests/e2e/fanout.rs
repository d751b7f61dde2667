//! Fan-out routes end to end: one request to many upstreams, in each mode, with a dead
//! or hanging target among them, per-target breakers, a large body to 100 targets, and
//! a kill -9 in `async` mode. Every upstream is a real listener on 127.0.0.1.

use std::time::{Duration, Instant};

use crate::jobs::{
    SECRET, accept_jobs, accepted, assert_each_ran_once_and_was_delivered, until_final_within,
};
use crate::support::client::{client, get_json, metrics};
use crate::support::upstream::{Reply, Upstream, closed_port};
use crate::support::weir::{Weir, check};
use crate::support::{SLACK, WAIT};

/// `[upstreams.tN]` for each url, and one fan-out route `fan` over all of them, with
/// `route_extra` appended to the route and `top` put before the upstreams.
fn config(urls: &[String], mode: &str, route_extra: &str, top: &str) -> String {
    let mut toml = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\ndrain_timeout = \"5s\"\n\n[admin]\naddr = \"127.0.0.1:0\"\n\n{top}\n"
    );
    for (i, url) in urls.iter().enumerate() {
        toml.push_str(&format!("[upstreams.t{i}]\nurl = \"{url}\"\n\n"));
    }
    let targets: Vec<String> = (0..urls.len()).map(|i| format!("\"t{i}\"")).collect();
    toml.push_str(&format!(
        "[[routes]]\nname = \"fan\"\nfanout = {{ targets = [{}], mode = \"{mode}\" }}\n{route_extra}\n",
        targets.join(", ")
    ));
    toml
}

/// An upstream answering 200 with `name` as its body.
async fn named(name: &'static str) -> Upstream {
    Upstream::start(move |_, _| Reply::ok().body(name.as_bytes().to_vec())).await
}

/// One dead target (nothing listens) and one that never answers among five: the `all`
/// answer comes at the route's deadline with every target in order, the live ones
/// answered long before it, and every target saw the same request.
#[tokio::test]
async fn all_mode_answers_each_target_in_order_by_the_deadline() {
    let a = named("a").await;
    let b = named("b").await;
    let hang = Upstream::start(|_, _| Reply::hang()).await;
    let c = named("c").await;
    let urls = vec![
        a.url(),
        format!("http://127.0.0.1:{}", closed_port()),
        hang.url(),
        b.url(),
        c.url(),
    ];
    let weir = Weir::start(&config(&urls, "all", "timeout = \"2s\"", "")).await;
    let started = Instant::now();
    let resp = client()
        .post(weir.url("/event?n=1"))
        .header("x-tenant", "t1")
        .body("payload")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(
        took < Duration::from_secs(2) + SLACK,
        "the answer waited past the deadline: {took:?}"
    );
    let targets = v["targets"].as_array().unwrap();
    let names: Vec<&str> = targets
        .iter()
        .map(|t| t["target"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["t0", "t1", "t2", "t3", "t4"]);
    for (i, body) in [(0, "a"), (3, "b"), (4, "c")] {
        let t = &targets[i];
        assert_eq!(t["status"], 200, "{t}");
        assert_eq!(t["body"], body, "{t}");
        assert_eq!(t["error"], serde_json::Value::Null, "{t}");
        assert_eq!(t["attempts"], 1, "{t}");
        assert!(
            t["duration_ms"].as_u64().unwrap() < 1500,
            "a live target waited for the others: {t}"
        );
        let headers = t["headers"].as_array().unwrap();
        assert!(
            headers.iter().any(|h| h[0] == "content-length"),
            "{headers:?}"
        );
    }
    assert_eq!(targets[1]["error"], "connect_failed", "{}", targets[1]);
    assert_eq!(targets[1]["status"], 502);
    assert_eq!(targets[2]["error"], "timeout", "{}", targets[2]);
    assert_eq!(targets[2]["status"], 504);
    assert_eq!(v["succeeded"], 3);
    assert_eq!(v["failed"], 2);

    for up in [&a, &hang, &b, &c] {
        let r = up.wait_for(1).await.remove(0);
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/event?n=1");
        assert_eq!(r.body_str(), "payload");
        assert_eq!(r.header_str("x-tenant"), Some("t1"));
        assert_eq!(r.header_str("x-request-id"), Some(id.as_str()));
    }
    let text = metrics(&weir).await;
    for (target, outcome) in [
        ("t0", "ok"),
        ("t1", "failed"),
        ("t2", "timeout"),
        ("t4", "ok"),
    ] {
        let series = format!(
            "weir_fanout_targets_total{{outcome=\"{outcome}\",route=\"fan\",target=\"{target}\"}} 1"
        );
        assert!(text.contains(&series), "no {series} in:\n{text}");
    }
}

/// `primary`: the client gets the first target's response as it is; the mirrors get
/// the request too, and neither a failing nor a hanging mirror reaches the client.
#[tokio::test]
async fn primary_mode_answers_with_the_first_target_and_mirrors_the_rest() {
    let primary = Upstream::start(|_, _| {
        Reply::new(201)
            .header("x-from", "primary")
            .body(&b"created"[..])
    })
    .await;
    let failing = Upstream::start(|_, _| Reply::new(500)).await;
    let hang = Upstream::start(|_, _| Reply::hang()).await;
    let urls = vec![primary.url(), failing.url(), hang.url()];
    let weir = Weir::start(&config(&urls, "primary", "timeout = \"30s\"", "")).await;
    let started = Instant::now();
    let resp = client()
        .put(weir.url("/doc/7"))
        .body("v2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-from"], "primary");
    assert_eq!(resp.text().await.unwrap(), "created");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the hanging mirror held the answer"
    );
    for up in [&primary, &failing, &hang] {
        let r = up.wait_for(1).await.remove(0);
        assert_eq!((r.method.as_str(), r.path.as_str()), ("PUT", "/doc/7"));
        assert_eq!(r.body_str(), "v2");
    }
    // The failing mirror is counted, not answered.
    let deadline = Instant::now() + WAIT;
    loop {
        let text = metrics(&weir).await;
        if text
            .contains("weir_fanout_targets_total{outcome=\"failed\",route=\"fan\",target=\"t1\"} 1")
            && text
                .contains("weir_fanout_targets_total{outcome=\"ok\",route=\"fan\",target=\"t0\"} 1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "metrics:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `async`: 202 at once; the job shows every target's outcome, and the webhook fires
/// once all are final, signed, with the targets in its payload.
#[tokio::test]
async fn async_mode_tracks_each_target_and_fires_the_webhook_when_all_are_final() {
    let a = named("a").await;
    let failing = Upstream::start(|_, _| Reply::new(503)).await;
    let hooks = Upstream::start(|_, _| Reply::new(204)).await;
    let dir = tempfile::tempdir().unwrap();
    let top = format!(
        "[jobs]\njournal = \"{}\"\n[jobs.webhooks]\norigins = [\"{}\"]\nsecret = \"{SECRET}\"\nschedule = [\"50ms\"]\n",
        dir.path().join("j.redb").display(),
        hooks.url()
    );
    let weir = Weir::start(&config(&[a.url(), failing.url()], "async", "", &top)).await;
    let resp = client()
        .post(weir.url("/event"))
        .header("weir-callback-url", format!("{}/hook", hooks.url()))
        .body("e1")
        .send()
        .await
        .unwrap();
    let location = accepted(resp).await;
    let job = until_final_within(&weir, &location, WAIT).await;
    assert_eq!(job["state"], "failed", "one target answered 503: {job}");
    assert_eq!(job["webhook"]["state"], "delivered", "{job}");
    let targets = job["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    assert_eq!(
        (
            &targets[0]["target"],
            &targets[0]["status"],
            &targets[0]["body"]
        ),
        (&"t0".into(), &200.into(), &"a".into())
    );
    assert_eq!(
        (&targets[1]["target"], &targets[1]["status"]),
        (&"t1".into(), &503.into())
    );
    let key = job["idempotency_key"].as_str().unwrap();
    for up in [&a, &failing] {
        let r = up.wait_for(1).await.remove(0);
        assert_eq!(r.body_str(), "e1");
        assert_eq!(r.header_str("idempotency-key"), Some(key));
    }
    let hook = hooks.wait_for(1).await.remove(0);
    assert!(hook.has_header("webhook-signature"));
    let payload = hook.json();
    assert_eq!(payload["data"]["targets"], job["targets"]);

    // `wait=N` answers inline with the summary when the job finishes in time.
    let resp = client()
        .post(weir.url("/event"))
        .header("prefer", "respond-async, wait=20")
        .body("e2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let summary: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        (&summary["succeeded"], &summary["failed"]),
        (&1.into(), &1.into())
    );
    assert_eq!(summary["targets"][1]["status"], 503, "{summary}");
    a.wait_for(2).await;
    failing.wait_for(2).await;

    // A rerun sends only the target that did not succeed.
    let id = job["id"].as_str().unwrap();
    let rerun = client()
        .post(weir.admin_url(&format!("/jobs/{id}/rerun")))
        .send()
        .await
        .unwrap();
    assert_eq!(rerun.status(), 202);
    failing.wait_for(3).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let job = get_json(&weir.url(&location)).await;
        if job["attempts"] == 2 && job["state"] == "failed" && job["webhook"]["state"] != "pending"
        {
            break;
        }
        assert!(Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.count(), 2, "the target that succeeded was sent again");
    assert_eq!(failing.count(), 3);
}

/// Each target has its own breaker (its key is the target's origin): the failing
/// target's opens and it stops being called, while the healthy one gets every request.
#[tokio::test]
async fn per_target_breakers_open_independently() {
    let healthy = named("ok").await;
    let failing = Upstream::start(|_, _| Reply::new(500)).await;
    let breaker = r#"filters = [{ use = "breaker", config = { window_size = 4, minimum_calls = 4, wait_in_open = "60s" } }]"#;
    let weir = Weir::start(&config(&[healthy.url(), failing.url()], "all", breaker, "")).await;
    let mut last = serde_json::Value::Null;
    for _ in 0..10 {
        last = client()
            .get(weir.url("/x"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(last["targets"][0]["status"], 200, "{last}");
    }
    assert_eq!(healthy.count(), 10, "the healthy target's breaker opened");
    assert_eq!(
        failing.count(),
        4,
        "the failing target's breaker did not open after 4 failures"
    );
    assert_eq!(last["targets"][1]["status"], 503, "{last}");
    assert!(
        last["targets"][1]["body"]
            .as_str()
            .unwrap()
            .contains(&failing.url()),
        "the open breaker names the target's origin: {last}"
    );
}

/// A 10 MiB body to 100 targets is held once: weir's peak RSS grows by at most twice
/// the body plus a fixed overhead, not by a copy per target.
#[tokio::test]
async fn a_10_mib_body_to_100_targets_is_held_once() {
    const LEN: usize = 10 << 20;
    const TARGETS: usize = 100;
    const OVERHEAD: u64 = 16 << 20;
    let mut ups = Vec::new();
    for _ in 0..TARGETS {
        ups.push(Upstream::sink(2).await);
    }
    let urls: Vec<String> = ups.iter().map(Upstream::url).collect();
    let weir = Weir::start(&config(&urls, "all", "timeout = \"60s\"", "")).await;
    // Warm up: connections and buffers every request needs, with a small body.
    let small = client()
        .post(weir.url("/blob"))
        .body("warm")
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200);
    small.bytes().await.unwrap();
    let before = weir.rss_bytes();
    // Peak RSS from here on.
    std::fs::write(format!("/proc/{}/clear_refs", weir.pid()), "5").unwrap();
    let body: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let crc = crc32fast::hash(&body);
    let resp = client()
        .post(weir.url("/blob"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["succeeded"], TARGETS, "{v}");
    for up in &ups {
        let r = up.request(1);
        assert_eq!((r.body_len, r.body_crc32), (LEN as u64, crc));
    }
    let peak = weir.peak_rss_bytes();
    let grew = peak.saturating_sub(before);
    assert!(
        grew <= 2 * LEN as u64 + OVERHEAD,
        "weir's RSS grew by {} MiB for a {} MiB body to {TARGETS} targets (from {} MiB)",
        grew >> 20,
        LEN >> 20,
        before >> 20
    );
}

/// kill -9 while async fan-out jobs run: after the restart every job finishes, every
/// target saw every job's key (repeats only with the same key) and every webhook arrived.
#[tokio::test]
async fn kill_9_in_async_mode_loses_no_target() {
    const JOBS: usize = 100;
    const TARGETS: usize = 5;
    let mut ups = Vec::new();
    for _ in 0..TARGETS {
        ups.push(Upstream::start(|_, _| Reply::ok().delay(Duration::from_millis(10))).await);
    }
    let hooks = Upstream::start(|_, _| Reply::new(204)).await;
    let dir = tempfile::tempdir().unwrap();
    let top = format!(
        "[jobs]\njournal = \"{}\"\nworkers = 2\n[jobs.webhooks]\norigins = [\"{}\"]\nsecret = \"{SECRET}\"\nschedule = [\"50ms\"]\n",
        dir.path().join("j.redb").display(),
        hooks.url()
    );
    let urls: Vec<String> = ups.iter().map(Upstream::url).collect();
    let cfg = config(&urls, "async", "", &top);
    let mut weir = Weir::start(&cfg).await;
    let ids = accept_jobs(&weir, "/event", JOBS, &format!("{}/hook", hooks.url())).await;
    hooks.wait_for(5).await;
    weir.kill();
    assert!(
        hooks.count() < JOBS,
        "every job was delivered before the kill"
    );

    let weir = Weir::start(&cfg).await;
    let mut finals = Vec::new();
    for id in &ids {
        let job = until_final_within(&weir, &format!("/_weir/jobs/{id}"), WAIT).await;
        assert_eq!(job["targets"].as_array().unwrap().len(), TARGETS, "{job}");
        finals.push(job);
    }
    // Every target, as the one upstream of a plain async route.
    for up in &ups {
        assert_each_ran_once_and_was_delivered(&finals, up, &hooks);
    }
}

/// A body over `max_body_bytes` gets 413 before any target is sent anything.
#[tokio::test]
async fn a_body_over_the_limit_gets_413_and_no_target_sees_it() {
    let a = named("a").await;
    let b = named("b").await;
    let cfg = config(&[a.url(), b.url()], "all", "", "").replace(
        "drain_timeout = \"5s\"",
        "drain_timeout = \"5s\"\nmax_body_bytes = \"1KiB\"",
    );
    let weir = Weir::start(&cfg).await;
    let resp = client()
        .post(weir.url("/event"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "body_too_large");
    // Chunked, with no length to refuse it by: read up to the limit, then refused.
    let chunk = "x".repeat(1000);
    let raw = crate::support::raw::send(
        weir.addr(),
        format!(
            "POST /event HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3e8\r\n{chunk}\r\n3e8\r\n{chunk}\r\n0\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(raw.status, 413, "{raw:?}");
    assert_eq!((a.count(), b.count()), (0, 0));
}

/// The targets' bodies share `max_body_bytes`: what does not fit shows
/// `response_too_large` in its slot instead of growing the answer.
#[tokio::test]
async fn the_targets_bodies_share_the_body_limit() {
    let mut ups = Vec::new();
    for _ in 0..3 {
        ups.push(Upstream::start(|_, _| Reply::ok().body(vec![b'y'; 600])).await);
    }
    let urls: Vec<String> = ups.iter().map(Upstream::url).collect();
    let cfg = config(&urls, "all", "", "").replace(
        "drain_timeout = \"5s\"",
        "drain_timeout = \"5s\"\nmax_body_bytes = \"1KiB\"",
    );
    let weir = Weir::start(&cfg).await;
    let v = get_json(&weir.url("/x")).await;
    let targets = v["targets"].as_array().unwrap();
    let kept: Vec<&serde_json::Value> = targets.iter().filter(|t| t["status"] == 200).collect();
    assert_eq!(
        kept.len(),
        1,
        "two 600-byte bodies do not fit in 1 KiB: {v}"
    );
    assert_eq!(kept[0]["body"].as_str().unwrap().len(), 600);
    for t in targets.iter().filter(|t| t["status"] != 200) {
        assert_eq!(t["status"], 502, "{t}");
        assert_eq!(t["error"], "response_too_large", "{t}");
    }
}

#[test]
fn check_refuses_bad_fanout_routes() {
    let base = "[listen]\naddr = \"127.0.0.1:0\"\n\n[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n\n[upstreams.b]\nurl = \"http://127.0.0.1:2\"\n\n";
    for (route, needle) in [
        (
            "upstream = \"a\"\nfanout = { targets = [\"a\", \"b\"] }",
            "give `upstream` or `fanout`, not both",
        ),
        ("", "needs `upstream = \"NAME\"`, or `fanout"),
        (
            "fanout = { targets = [] }",
            "`fanout.targets` must name 1 to 1000 upstreams, got 0",
        ),
        (
            "fanout = { targets = [\"a\", \"zz\"] }",
            "unknown upstream `zz` (defined: `a`, `b`)",
        ),
        (
            "fanout = { targets = [\"a\", \"a\"] }",
            "names upstream `a` twice",
        ),
        (
            "fanout = { targets = [\"a\"], mode = \"async\" }",
            "fanout mode \"async\" needs a `[jobs]` table",
        ),
        (
            "fanout = { targets = [\"a\"], mode = \"race\" }",
            "unknown variant `race`",
        ),
    ] {
        let (code, _, err) = check(&format!("{base}[[routes]]\nname = \"r\"\n{route}\n"), &[]);
        assert_ne!(code, 0, "{route}");
        assert!(err.contains(needle), "{route}: {err}");
    }
    let (code, _, err) = check(
        &format!("{base}[[routes]]\nname = \"(batch)\"\nupstream = \"a\"\n"),
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("route name `(batch)` is reserved"), "{err}");
}
