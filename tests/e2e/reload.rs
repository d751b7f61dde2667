//! Hot reload and graceful shutdown, end to end.
//!
//! Reloads are driven the way an operator drives them: by rewriting `weir.toml` or a
//! filter's `.wasm` next to it (atomically, as editors do: write, then rename), or by
//! `SIGHUP`. Each generation of config is visible from outside: the chain stamps it on
//! the request (the upstream echoes what it saw) and on the response. Every wait polls
//! an observable (a response, `/metrics`, the process) under a bound; the only timing
//! asserted is that a change serves within [`TAKES_EFFECT`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

use crate::support::client::{client, h2_client};
use crate::support::upstream::{Recorded, Reply, Upstream};
use crate::support::weir::{Weir, WeirBuilder};
use crate::support::{SLACK, WAIT};

/// Request lines off: the load test sends thousands, and only reload lines matter here.
const QUIET_REQUESTS: &str = "info,weir::listener=warn";

/// How soon a change on disk serves: weir waits out its debounce, then reloads in well
/// under a second; SLACK covers a busy machine.
const TAKES_EFFECT: Duration = weir::reload::DEBOUNCE.saturating_add(SLACK);

// === helpers ===

/// An upstream that answers 200 and echoes the chain's request stamps back as
/// `x-upstream-<name>`, so one response shows both halves of the chain.
async fn echo_upstream() -> Upstream {
    Upstream::start(|req, _| echo(req, Reply::ok())).await
}

fn echo(req: &Recorded, mut reply: Reply) -> Reply {
    for name in ["x-gen", "x-order", "x-misbehave"] {
        if let Some(v) = req.header(name) {
            reply = reply.header(&format!("x-upstream-{}", &name[2..]), v);
        }
    }
    reply
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_owned())
}

async fn get(weir: &Weir, path: &str) -> reqwest::Response {
    client()
        .get(weir.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

async fn admin_text(weir: &Weir, path: &str) -> String {
    client()
        .get(weir.admin_url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET admin {path}: {e}"))
        .text()
        .await
        .expect("admin body")
}

async fn status(weir: &Weir) -> Value {
    let text = admin_text(weir, "/status").await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {text}"))
}

/// `weir_reloads_total{result}` from `/metrics`.
async fn reloads(weir: &Weir, result: &str) -> u64 {
    let text = admin_text(weir, "/metrics").await;
    let prefix = format!("weir_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{text}"))
        .trim()
        .parse()
        .expect("a counter value")
}

/// Polls `/metrics` until `weir_reloads_total{result}` is `n`; panics past [`WAIT`].
async fn wait_for_reloads(weir: &Weir, result: &str, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = reloads(weir, result).await;
        if got == n {
            return;
        }
        assert!(
            got < n,
            "weir_reloads_total{{result={result:?}}} is {got}, past {n}"
        );
        assert!(
            Instant::now() < deadline,
            "weir_reloads_total{{result={result:?}}} stayed at {got}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The 1-based line of `config` that contains `needle`.
fn line_of(config: &str, needle: &str) -> usize {
    config
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in:\n{config}"))
        + 1
}

/// Asserts `message` starts with `FILE:LINE:COLUMN: ` for this file and line.
fn assert_located(message: &str, file: &std::path::Path, line: usize) {
    let prefix = format!("{}:{line}:", file.display());
    let rest = message
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{message:?} does not start with {prefix:?}"));
    let (column, _) = rest
        .split_once(": ")
        .unwrap_or_else(|| panic!("no column in {message:?}"));
    assert!(
        !column.is_empty() && column.bytes().all(|b| b.is_ascii_digit()),
        "no column in {message:?}"
    );
}

/// `headers` stamping generation `generation` on the request and on the response.
fn stamp(generation: impl std::fmt::Display) -> String {
    format!(
        r#"{{ use = "headers", config = {{ request = {{ set = {{ x-gen = "{generation}" }} }}, response = {{ set = {{ x-gen = "{generation}" }} }} }} }}"#
    )
}

/// One route through filter `f` (the component at `filters/f.wasm` with `f_config`) and a
/// generation stamp, plus any `extra` filters between them.
fn config(upstream: &str, generation: u64, f_config: &str, extra: &str) -> String {
    format!(
        r#"[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{upstream}"

[filters.f]
wasm = "filters/f.wasm"
config = {f_config}
{extra}
[[routes]]
name = "api"
upstream = "api"
filters = ["f", {}]
"#,
        stamp(generation)
    )
}

// === reload under load ===

const GENERATIONS: u64 = 20;
const IN_FLIGHT: usize = 50;
const LOAD_FOR: Duration = Duration::from_secs(10);

/// Generation `g` alternates the component at `filters/f.wasm`: `scripted` (tag `g<g>`)
/// on even generations, `misbehave` in `ok` mode on odd ones.
fn load_config(upstream: &str, generation: u64) -> String {
    let f = if generation.is_multiple_of(2) {
        format!(r#"{{ tag = "g{generation}" }}"#)
    } else {
        r#"{ mode = "ok" }"#.to_owned()
    };
    config(upstream, generation, &f, "")
}

fn load_component(generation: u64) -> &'static str {
    if generation.is_multiple_of(2) {
        env!("WEIR_TEST_SCRIPTED")
    } else {
        env!("WEIR_TEST_MISBEHAVE")
    }
}

/// Checks that one response was served wholly by one generation's chain, and returns it.
fn served_by(resp: &reqwest::Response) -> Result<u64, String> {
    let h = |name| header(resp, name);
    if resp.status() != 200 {
        return Err(format!("status {}: {resp:?}", resp.status()));
    }
    let stamp = h("x-gen").ok_or("no x-gen on the response")?;
    let generation: u64 = stamp.parse().map_err(|_| format!("x-gen {stamp:?}"))?;
    let upstream_stamp = h("x-upstream-gen");
    if upstream_stamp.as_deref() != Some(stamp.as_str()) {
        return Err(format!(
            "the response says generation {stamp} but the upstream saw {upstream_stamp:?}"
        ));
    }
    let component = (
        h("x-upstream-order"),
        h("x-order-back"),
        h("x-upstream-misbehave"),
    );
    let expected = if generation.is_multiple_of(2) {
        let tag = Some(format!("g{generation}"));
        (tag.clone(), tag, None)
    } else {
        (None, None, Some("ok".to_owned()))
    };
    if component != expected {
        return Err(format!(
            "generation {generation}: filter f left (upstream x-order, x-order-back, upstream x-misbehave) = {component:?}, expected {expected:?}"
        ));
    }
    Ok(generation)
}

/// Sends requests one after another until `stop`; every one must be served wholly by one
/// generation, never an older one than the last. Counts itself in `at_last` once the last
/// generation serves it. Returns how many it sent.
async fn load_worker(
    client: reqwest::Client,
    url: String,
    stop: Arc<AtomicBool>,
    newest: watch::Sender<u64>,
    at_last: Arc<AtomicUsize>,
) -> Result<u64, String> {
    let mut last = 0;
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        let resp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("request {sent} failed: {e}"))?;
        let generation = served_by(&resp)?;
        resp.bytes().await.map_err(|e| format!("body: {e}"))?;
        // A request starts after the previous one ended, so on a table at least as new.
        if generation < last {
            return Err(format!("generation {generation} served after {last}"));
        }
        if generation == GENERATIONS && last < GENERATIONS {
            at_last.fetch_add(1, Ordering::Relaxed);
        }
        last = generation;
        newest.send_if_modified(|n| {
            let newer = generation > *n;
            *n = (*n).max(generation);
            newer
        });
        sent += 1;
    }
    Ok(sent)
}

#[tokio::test]
async fn reload_under_load_serves_every_request_wholly_by_one_generation() {
    let up = echo_upstream().await;
    let components = [
        std::fs::read(load_component(0)).expect("scripted component"),
        std::fs::read(load_component(1)).expect("misbehave component"),
    ];
    let weir = WeirBuilder::new(load_config(&up.url(), 0))
        .file("filters/f.wasm", &components[0])
        .env("RUST_LOG", QUIET_REQUESTS)
        .start()
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let at_last = Arc::new(AtomicUsize::new(0));
    let (newest, mut seen) = watch::channel(0u64);
    let http = client();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            tokio::spawn(load_worker(
                http.clone(),
                weir.url("/load"),
                stop.clone(),
                newest.clone(),
                at_last.clone(),
            ))
        })
        .collect();

    // Rewrite the component and the config together, evenly over the load period; each
    // generation must be served before the next is written.
    let started = Instant::now();
    for generation in 1..=GENERATIONS {
        let at = started + LOAD_FOR * (generation as u32) / (GENERATIONS as u32 + 1);
        tokio::time::sleep_until(at.into()).await;
        weir.write_file("filters/f.wasm", &components[(generation % 2) as usize]);
        weir.write_file("weir.toml", load_config(&up.url(), generation));
        let served = tokio::time::timeout(WAIT, seen.wait_for(|&n| n >= generation)).await;
        assert!(
            served.is_ok(),
            "generation {generation} was not served within {WAIT:?}:\n{}",
            weir.logs()
        );
    }
    tokio::time::sleep_until((started + LOAD_FOR).into()).await;
    // Every client moves to the last generation, not just the first to see it. (A worker
    // that stopped early reports why below.)
    let deadline = Instant::now() + WAIT;
    while at_last.load(Ordering::Relaxed) < IN_FLIGHT && !workers.iter().any(|w| w.is_finished()) {
        assert!(
            Instant::now() < deadline,
            "after {WAIT:?}, the last generation had served only {} of {IN_FLIGHT} clients",
            at_last.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    for worker in workers {
        match worker.await.expect("worker task") {
            Ok(sent) => total += sent,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(at_last.load(Ordering::Relaxed), IN_FLIGHT);
    assert_eq!(*seen.borrow(), GENERATIONS);
    assert_eq!(
        up.count() as u64,
        total,
        "every request reached the upstream once"
    );
    // One successful reload per generation: no more (unchanged files are not reloaded),
    // no fewer (each was served).
    assert_eq!(reloads(&weir, "ok").await, GENERATIONS);
    eprintln!("reload under load: {total} requests, {GENERATIONS} generations");
}

// === a change takes effect ===

#[tokio::test]
async fn a_filter_config_change_serves_soon_after_the_debounce() {
    let up = echo_upstream().await;
    let f = r#"{ tag = "t" }"#;
    let weir = WeirBuilder::new(config(&up.url(), 1, f, ""))
        .copy("filters/f.wasm", env!("WEIR_TEST_SCRIPTED"))
        .start()
        .await;
    assert_eq!(
        header(&get(&weir, "/").await, "x-gen").as_deref(),
        Some("1")
    );
    let hash = status(&weir).await["config"]["hash"].clone();

    weir.write_file("weir.toml", config(&up.url(), 2, f, ""));
    let written = Instant::now();
    let took = loop {
        let resp = get(&weir, "/").await;
        assert_eq!(resp.status(), 200, "{resp:?}");
        match header(&resp, "x-gen").as_deref() {
            Some("2") => break written.elapsed(),
            Some("1") => {}
            other => panic!("x-gen {other:?}"),
        }
        assert!(
            written.elapsed() < WAIT,
            "the change never served:\n{}",
            weir.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        took < TAKES_EFFECT,
        "the change took {took:?} to serve, more than {TAKES_EFFECT:?}"
    );
    for _ in 0..5 {
        let resp = get(&weir, "/").await;
        assert_eq!(header(&resp, "x-gen").as_deref(), Some("2"));
        assert_eq!(header(&resp, "x-upstream-gen").as_deref(), Some("2"));
    }
    let config = &status(&weir).await["config"];
    assert_ne!(config["hash"], hash, "{config}");
    assert_eq!(reloads(&weir, "ok").await, 1);
    assert_eq!(reloads(&weir, "error").await, 0);
    weir.wait_for_log("config reloaded", WAIT).await;
}

#[tokio::test]
async fn sighup_reloads_even_when_nothing_changed() {
    let up = echo_upstream().await;
    let weir = WeirBuilder::new(config(&up.url(), 1, r#"{ tag = "t" }"#, ""))
        .copy("filters/f.wasm", env!("WEIR_TEST_SCRIPTED"))
        .start()
        .await;
    let before = status(&weir).await["config"].clone();
    // Right after weir says it listens: the handler must already be installed, or the
    // signal's default action would end the process.
    weir.signal("HUP");
    wait_for_reloads(&weir, "ok", 1).await;
    weir.wait_for_log("SIGHUP: reloading the config", WAIT)
        .await;
    let after = status(&weir).await["config"].clone();
    assert_eq!(after["hash"], before["hash"], "the same files");
    assert_ne!(after["loaded_at"], before["loaded_at"], "but loaded again");
    assert_eq!(get(&weir, "/").await.status(), 200);
}

// === bad reloads ===

#[tokio::test]
async fn bad_reloads_keep_the_old_config_serving_and_are_reported() {
    let up = echo_upstream().await;
    let good = config(&up.url(), 1, r#"{ tag = "one" }"#, "");
    let weir = WeirBuilder::new(good.clone())
        .copy("filters/f.wasm", env!("WEIR_TEST_SCRIPTED"))
        .copy("filters/misbehave.wasm", env!("WEIR_TEST_MISBEHAVE"))
        .start()
        .await;
    let scripted = std::fs::read(env!("WEIR_TEST_SCRIPTED")).expect("scripted component");
    let hash = status(&weir).await["config"]["hash"].clone();

    // 1. Broken TOML: an unclosed table header on the last line.
    let broken = format!("{good}[[routes]\n");
    let mark = weir.log_mark();
    weir.write_file("weir.toml", &broken);
    wait_for_reloads(&weir, "error", 1).await;
    let message = last_reload_error(&weir).await;
    assert_located(&message, weir.config_path(), broken.lines().count());
    let logged = weir
        .wait_for_log_after(mark, "reload refused: ", WAIT)
        .await;
    assert!(logged.contains(&message), "{logged}");
    still_serving_generation_one(&weir).await;

    // 2. A truncated component, under the restored config.
    weir.write_file("weir.toml", &good);
    weir.write_file("filters/f.wasm", &scripted[..100]);
    wait_for_reloads(&weir, "error", 2).await;
    let message = last_reload_error(&weir).await;
    assert_located(&message, weir.config_path(), line_of(&good, "wasm = "));
    assert!(
        message.contains("f.wasm is not a valid weir filter component"),
        "{message}"
    );
    still_serving_generation_one(&weir).await;

    // 3. A filter whose init fails (the component restored first).
    weir.write_file("filters/f.wasm", &scripted);
    let refusing = config(
        &up.url(),
        2,
        r#"{ tag = "two" }"#,
        "\n[filters.m]\nwasm = \"filters/misbehave.wasm\"\nconfig = { mode = \"init-error\" }\n",
    )
    .replace(r#"filters = ["f", "#, r#"filters = ["m", "f", "#);
    weir.write_file("weir.toml", &refusing);
    wait_for_reloads(&weir, "error", 3).await;
    let message = last_reload_error(&weir).await;
    assert_located(
        &message,
        weir.config_path(),
        line_of(&refusing, "filters = [\"m\""),
    );
    assert!(message.contains("misbehave: init refused"), "{message}");
    still_serving_generation_one(&weir).await;
    assert_eq!(reloads(&weir, "ok").await, 0);
    assert_eq!(status(&weir).await["config"]["hash"], hash);

    // 4. A good config after all that reloads.
    weir.write_file("weir.toml", config(&up.url(), 2, r#"{ tag = "two" }"#, ""));
    wait_for_reloads(&weir, "ok", 1).await;
    let resp = get(&weir, "/").await;
    assert_eq!(header(&resp, "x-gen").as_deref(), Some("2"));
    assert_eq!(header(&resp, "x-order-back").as_deref(), Some("two"));
    assert_eq!(reloads(&weir, "error").await, 3);
}

/// Asserts the first config still serves: generation 1 through `scripted` tagged `one`.
async fn still_serving_generation_one(weir: &Weir) {
    let resp = get(weir, "/").await;
    assert_eq!(resp.status(), 200, "{resp:?}");
    assert_eq!(header(&resp, "x-gen").as_deref(), Some("1"));
    assert_eq!(header(&resp, "x-upstream-gen").as_deref(), Some("1"));
    assert_eq!(header(&resp, "x-order-back").as_deref(), Some("one"));
    assert_eq!(header(&resp, "x-upstream-order").as_deref(), Some("one"));
}

/// `/status`'s `config.last_reload_error.message`.
async fn last_reload_error(weir: &Weir) -> String {
    let status = status(weir).await;
    assert_eq!(status["config"]["needs_restart"], Value::Null, "{status}");
    status["config"]["last_reload_error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no config.last_reload_error.message: {status}"))
        .to_owned()
}

// === state survives ===

#[tokio::test]
async fn an_open_breaker_stays_open_across_a_reload() {
    let failing = Upstream::start(|req, _| echo(req, Reply::new(500))).await;
    let healthy = echo_upstream().await;
    let breaker = r#"{ use = "breaker", config = { window_size = 4, minimum_calls = 4, wait_in_open = "60s", permitted_calls_in_half_open = 1 } }"#;
    let config = |generation: u64| {
        format!(
            r#"[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{}"

[upstreams.probe]
url = "{}"

[[routes]]
name = "api"
match = {{ path_prefix = "/api/" }}
upstream = "api"
filters = [{breaker}]

[[routes]]
name = "probe"
match = {{ path_prefix = "/probe/" }}
upstream = "probe"
filters = [{}]
"#,
            failing.url(),
            healthy.url(),
            stamp(generation)
        )
    };
    let weir = Weir::start(&config(1)).await;
    for _ in 0..4 {
        assert_eq!(get(&weir, "/api/x").await.status(), 500);
    }
    let open = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), 503, "{resp:?}");
        let body: Value = resp.json().await.expect("JSON body");
        assert_eq!(body["error"], "breaker_open", "{body}");
    };
    open(get(&weir, "/api/x").await).await;
    assert_eq!(failing.count(), 4);

    weir.write_file("weir.toml", config(2));
    wait_for_reloads(&weir, "ok", 1).await;
    assert_eq!(
        header(&get(&weir, "/probe/x").await, "x-gen").as_deref(),
        Some("2"),
        "the new config serves"
    );
    for _ in 0..3 {
        open(get(&weir, "/api/x").await).await;
    }
    assert_eq!(
        failing.count(),
        4,
        "the reloaded breaker must still be open and keep the upstream out of it"
    );
}

// === settings bound at start ===

#[tokio::test]
async fn listener_changes_are_reported_as_needing_a_restart() {
    let up = echo_upstream().await;
    let f = r#"{ tag = "t" }"#;
    let weir = WeirBuilder::new(config(&up.url(), 1, f, ""))
        .copy("filters/f.wasm", env!("WEIR_TEST_SCRIPTED"))
        .start()
        .await;
    let changed = config(&up.url(), 2, f, "").replacen(
        "addr = \"127.0.0.1:0\"",
        "addr = \"127.0.0.2:0\"\ndrain_timeout = \"5s\"",
        1,
    );
    weir.write_file("weir.toml", &changed);
    wait_for_reloads(&weir, "ok", 1).await;
    // The rest of the config applies, on the listener weir already has.
    assert_eq!(
        header(&get(&weir, "/").await, "x-gen").as_deref(),
        Some("2")
    );
    let status = status(&weir).await;
    let needs = status["config"]["needs_restart"]
        .as_str()
        .unwrap_or_else(|| panic!("no config.needs_restart: {status}"));
    assert!(
        needs
            .contains("listen.addr changed from 127.0.0.1:0 to 127.0.0.2:0: restart weir to apply"),
        "{needs}"
    );
    assert!(
        needs.contains("listen.drain_timeout changed from 30s to 5s: restart weir to apply"),
        "{needs}"
    );
    weir.wait_for_log("listen.addr changed from", WAIT).await;
}

// === graceful shutdown ===

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_refuses_new_connections_and_exits_zero() {
    // Longer than weir may take, on a busy machine, to stop accepting after SIGTERM.
    const SLOW: Duration = Duration::from_secs(1).saturating_add(SLACK);
    let up = Upstream::start(|_, _| Reply::ok().body("done").delay(SLOW)).await;
    let mut weir = Weir::start(&format!(
        r#"[listen]
addr = "127.0.0.1:0"
drain_timeout = "20s"

[upstreams.api]
url = "{}"

[[routes]]
name = "api"
upstream = "api"
"#,
        up.url()
    ))
    .await;
    let (h1, h2) = (client(), h2_client());
    let in_flight: Vec<_> = (0..6)
        .map(|i| {
            let (http, is_h2) = if i % 3 == 0 {
                (h2.clone(), true)
            } else {
                (h1.clone(), false)
            };
            let url = weir.url(&format!("/slow/{i}"));
            tokio::spawn(async move { (is_h2, http.get(url).send().await) })
        })
        .collect();
    up.wait_for(6).await;

    weir.signal("TERM");
    let addr = weir.addr();
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            Err(e) => panic!("connect: {e}"),
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "weir kept accepting after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    assert!(
        in_flight.iter().all(|t| !t.is_finished()),
        "new connections must be refused while requests are still in flight"
    );

    for task in in_flight {
        let (is_h2, resp) = task.await.expect("request task");
        let resp = resp.expect("a request in flight at SIGTERM completes");
        assert_eq!(resp.status(), 200);
        if is_h2 {
            assert_eq!(resp.version(), http::Version::HTTP_2);
        } else {
            assert_eq!(
                header(&resp, "connection").as_deref(),
                Some("close"),
                "an HTTP/1 response during the drain closes its connection"
            );
        }
        assert_eq!(resp.text().await.expect("body"), "done");
    }
    let exit = weir.wait_exit(WAIT).await;
    assert_eq!(exit.code(), Some(0), "{exit}");
    weir.wait_for_log("SIGTERM: draining", WAIT).await;
}

#[tokio::test]
async fn the_drain_stops_at_drain_timeout_and_still_exits_zero() {
    let up = Upstream::start(|_, _| Reply::hang()).await;
    let mut weir = Weir::start(&format!(
        r#"[listen]
addr = "127.0.0.1:0"
drain_timeout = "1s"

[upstreams.api]
url = "{}"

[[routes]]
name = "api"
upstream = "api"
timeout = "1h"
"#,
        up.url()
    ))
    .await;
    let url = weir.url("/hang");
    let request = tokio::spawn(async move { client().get(url).send().await });
    up.wait_for(1).await;
    let signalled = Instant::now();
    weir.signal("TERM");
    let exit = weir.wait_exit(WAIT).await;
    let took = signalled.elapsed();
    assert_eq!(exit.code(), Some(0), "{exit}");
    assert!(
        took >= Duration::from_secs(1),
        "exited after {took:?}, before the drain timeout"
    );
    assert!(
        request.await.expect("request task").is_err(),
        "the request cut off by the drain timeout fails"
    );
    weir.wait_for_log("drain timeout passed", WAIT).await;
}
