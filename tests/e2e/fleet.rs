//! Several weir processes sharing one Redis (`[state] backend = "redis"`): three real
//! `weir` binaries, a real `redis-server` (or a local 3-master Redis Cluster) on free
//! loopback ports, scripted upstreams. What the clients got and what the upstreams
//! recorded prove that the three behave as one weir; killing, restarting and stalling
//! Redis proves what each filter does without it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::client::client;
use crate::support::redis::{RedisCluster, RedisServer};
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::{Weir, WeirBuilder};
use crate::support::{SLACK, WAIT};

/// `[state]` for one Redis server, with an operation timeout of `timeout`.
fn state_single(url: &str, timeout: &str) -> String {
    format!(
        r#"[state]
backend = "redis"

[state.redis]
url = "{url}"
prefix = "e2e:"
timeout = "{timeout}"
"#
    )
}

/// A config with an admin listener, `state`, one upstream `api` and one route `/` with
/// `filters` (TOML array contents); `extra` goes before the route.
fn config(state: &str, api: &str, filters: &str, extra: &str) -> String {
    format!(
        r#"[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

{state}
[upstreams.api]
url = "{api}"

{extra}
[[routes]]
name = "api"
upstream = "api"
timeout = "10s"
filters = [{filters}]
"#
    )
}

/// A route `name` for paths under `/<name>` to `api`, with `filters`.
fn route(name: &str, filters: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nupstream = \"api\"\nmatch = {{ path_prefix = \"/{name}\" }}\ntimeout = \"10s\"\nfilters = [{filters}]\n\n"
    )
}

/// Makes `redis` (started with `--enable-debug-command yes`) answer nothing for 8 s, from
/// a thread; join it for the `DEBUG SLEEP` reply once the test is done.
fn stall(redis: &RedisServer) -> std::thread::JoinHandle<String> {
    let port = redis.port;
    let sleeper = std::thread::spawn(move || RedisServer::cmd_on(port, &["DEBUG", "SLEEP", "8"]));
    // Long enough for the command to reach the server before the test's request.
    std::thread::sleep(Duration::from_millis(200));
    sleeper
}

/// Three weir processes with the same config.
pub(crate) async fn three(config: &str) -> Vec<Weir> {
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(Weir::start(config).await);
    }
    out
}

async fn get(weir: &Weir, path: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = client()
        .get(weir.url(path))
        .send()
        .await
        .expect("weir answers");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.expect("body").to_vec())
}

async fn post(weir: &Weir, key: &str, body: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = client()
        .post(weir.url("/pay"))
        .header("idempotency-key", key)
        .body(body.to_owned())
        .send()
        .await
        .expect("weir answers");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.expect("body").to_vec())
}

/// The admin endpoint `path`'s body.
async fn admin(weir: &Weir, path: &str) -> String {
    let r = client().get(weir.admin_url(path)).send().await;
    r.expect("admin answers").text().await.expect("text")
}

async fn status(weir: &Weir) -> Value {
    serde_json::from_str(&admin(weir, "/status").await).expect("json")
}

async fn metrics(weir: &Weir) -> String {
    admin(weir, "/metrics").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limiter_admits_its_rate_across_three_processes() {
    let redis = RedisServer::start();
    let api = Upstream::start(|_, _| Reply::ok()).await;
    let cfg = config(
        &state_single(&redis.url(), "1s"),
        &api.url(),
        r#"{ use = "limiter", config = { rate = 50, burst = 10 } }"#,
        "",
    );
    let weirs = Arc::new(three(&cfg).await);
    // 300 requests a second for 20 s, spread over the three.
    let admitted = Arc::new(AtomicUsize::new(0));
    let rejected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tick = tokio::time::interval(Duration::from_micros(3333));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let http = client();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..6000usize {
        tick.tick().await;
        let (weirs, a, r, f) = (
            weirs.clone(),
            admitted.clone(),
            rejected.clone(),
            failed.clone(),
        );
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            match http
                .get(weirs[i % 3].url("/"))
                .send()
                .await
                .map(|r| r.status().as_u16())
            {
                Ok(200) => a.fetch_add(1, Ordering::SeqCst),
                Ok(429) => r.fetch_add(1, Ordering::SeqCst),
                _ => f.fetch_add(1, Ordering::SeqCst),
            };
        }));
    }
    let sent_for = started.elapsed();
    for t in tasks {
        t.await.unwrap();
    }
    let admitted = admitted.load(Ordering::SeqCst) as f64;
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "every request got 200 or 429"
    );
    assert_eq!(
        api.count() as f64,
        admitted,
        "the upstream saw exactly the admitted"
    );
    // The limiter's own clock ran from the first request to the last.
    let want = 50.0 * sent_for.as_secs_f64() + 10.0;
    assert!(
        (admitted - want).abs() <= want * 0.02,
        "admitted {admitted} over {sent_for:?}; 50/s plus the burst is {want:.0}"
    );
    assert!(rejected.load(Ordering::SeqCst) > 4000);
}

#[tokio::test]
async fn a_breaker_opened_through_one_process_protects_the_upstream_from_all() {
    let redis = RedisServer::start();
    let api = Upstream::start(|_, _| Reply::new(500)).await;
    let cfg = config(
        &state_single(&redis.url(), "1s"),
        &api.url(),
        r#"{ use = "breaker", config = { minimum_calls = 4, window_size = 10, wait_in_open = "60s" } }"#,
        "",
    );
    let weirs = three(&cfg).await;
    for _ in 0..4 {
        assert_eq!(get(&weirs[0], "/").await.0, 500);
    }
    assert_eq!(api.count(), 4);
    for w in &weirs {
        let (code, headers, body) = get(w, "/").await;
        assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "breaker_open");
        assert!(headers.contains_key("retry-after"));
    }
    assert_eq!(api.count(), 4, "no call reached the upstream while open");
}

#[tokio::test]
async fn an_idempotency_key_is_replayed_by_another_process_and_busy_on_a_third() {
    let redis = RedisServer::start();
    let api = Upstream::start(|req, i| {
        Reply::new(201)
            .header("x-charge", format!("ch_{i}"))
            .body(format!("charged {}", req.body_str()))
            .delay(if i == 0 {
                Duration::from_secs(3)
            } else {
                Duration::ZERO
            })
    })
    .await;
    let cfg = config(
        &state_single(&redis.url(), "1s"),
        &api.url(),
        r#""idempotency""#,
        "",
    );
    let weirs = Arc::new(three(&cfg).await);
    let first = {
        let weirs = weirs.clone();
        tokio::spawn(async move { post(&weirs[0], "order-1", "10 EUR").await })
    };
    api.wait_for(1).await;
    let (code, _, body) = post(&weirs[2], "order-1", "10 EUR").await;
    assert_eq!(code, 409, "{}", String::from_utf8_lossy(&body));
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "idempotency_key_in_use");
    let (code, headers, body) = first.await.unwrap();
    assert_eq!((code, body.as_slice()), (201, &b"charged 10 EUR"[..]));
    assert_eq!(headers["x-charge"], "ch_0");
    let (code, replay_headers, replay) = post(&weirs[1], "order-1", "10 EUR").await;
    assert_eq!((code, replay), (201, body), "replayed byte for byte");
    assert_eq!(replay_headers["x-charge"], "ch_0");
    assert_eq!(replay_headers["x-weir-idempotent-replay"], "true");
    assert_eq!(api.count(), 1);
}

#[tokio::test]
async fn a_response_cached_by_one_process_is_a_hit_on_another() {
    let redis = RedisServer::start();
    let api = Upstream::start(|_, i| {
        Reply::ok()
            .header("cache-control", "max-age=60")
            .body(format!("answer {i}"))
    })
    .await;
    let cfg = config(
        &state_single(&redis.url(), "1s"),
        &api.url(),
        r#""cache""#,
        "",
    );
    let weirs = three(&cfg).await;
    assert_eq!(get(&weirs[0], "/item").await.2, b"answer 0");
    for w in &weirs[1..] {
        let (code, _, body) = get(w, "/item").await;
        assert_eq!((code, body.as_slice()), (200, &b"answer 0"[..]));
    }
    assert_eq!(api.count(), 1, "B and C were answered from A's entry");
}

#[tokio::test]
async fn one_oauth2_token_serves_all_three_processes() {
    let redis = RedisServer::start();
    let tokens = Upstream::start(|_, i| {
        Reply::ok().json(&json!({
            "access_token": format!("token-{i}"),
            "token_type": "bearer",
            "expires_in": 3600,
        }))
    })
    .await;
    let api = Upstream::start(|req, _| {
        Reply::ok().body(req.header_str("authorization").unwrap_or("none").to_owned())
    })
    .await;
    let cfg = config(
        &state_single(&redis.url(), "1s"),
        &api.url(),
        r#""auth""#,
        &format!(
            r#"[upstreams.oauth]
url = "{}"

[filters.auth]
outbound = ["oauth"]
config = {{ oauth2 = {{ upstream = "oauth", client_id = "weir", client_secret = "s3cret" }} }}
"#,
            tokens.url()
        ),
    );
    let weirs = three(&cfg).await;
    for w in weirs.iter().chain(weirs.iter()) {
        let (code, _, body) = get(w, "/").await;
        assert_eq!((code, body.as_slice()), (200, &b"Bearer token-0"[..]));
    }
    assert_eq!(tokens.count(), 1, "one token request for all three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_going_away_costs_only_the_documented_behaviour_and_it_comes_back() {
    let mut redis = RedisServer::start();
    let api = Upstream::start(|_, _| Reply::ok()).await;
    let cfg = config(
        &state_single(&redis.url(), "500ms"),
        &api.url(),
        r#"{ use = "limiter", config = { rate = 1000 } }"#,
        &[
            ("pay", r#""idempotency""#),
            (
                "cached",
                r#"{ use = "cache", config = { default_ttl = "1h" } }"#,
            ),
            (
                "strict-limiter",
                r#"{ use = "limiter", config = { rate = 1000, on_state_error = "reject" } }"#,
            ),
            (
                "strict-breaker",
                r#"{ use = "breaker", config = { on_state_error = "reject" } }"#,
            ),
            ("breaker", r#""breaker""#),
        ]
        .map(|(name, filters)| route(name, filters))
        .concat(),
    );
    let weir = Weir::start(&cfg).await;
    assert_eq!(get(&weir, "/").await.0, 200);
    assert_eq!(post(&weir, "k1", "x").await.0, 200);
    assert_eq!(status(&weir).await["state"]["healthy"], true);

    redis.kill();
    // Under load: 40 requests at once, none hangs past the timeout.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let url = weir.url("/");
        let pay = weir.url("/pay");
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                client().get(url).send().await.map(|r| r.status().as_u16())
            } else {
                client()
                    .post(pay)
                    .header("idempotency-key", format!("down-{i}"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let code = t.await.unwrap().expect("weir answers");
        // The limiter fails open; idempotency fails closed.
        assert_eq!(code, if i % 2 == 0 { 200 } else { 503 }, "request {i}");
    }
    assert!(started.elapsed() < Duration::from_millis(500) + SLACK);
    let (code, headers, body) = post(&weir, "k2", "x").await;
    assert_eq!(code, 503);
    assert_eq!(headers["retry-after"], "1");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "state_unavailable");
    // The cache bypasses: every request reaches the upstream; a default breaker lets
    // calls through; with on_state_error = "reject", limiter and breaker answer 503.
    let before = api.count();
    for _ in 0..3 {
        assert_eq!(get(&weir, "/cached").await.0, 200);
    }
    assert_eq!(get(&weir, "/breaker").await.0, 200);
    assert_eq!(api.count(), before + 4);
    for path in ["/strict-limiter", "/strict-breaker"] {
        let (code, headers, body) = get(&weir, path).await;
        assert_eq!(code, 503, "{path}");
        assert_eq!(headers["retry-after"], "1");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "state_unavailable", "{path}");
    }
    assert_eq!(api.count(), before + 4, "the strict routes sent nothing");
    let s = status(&weir).await;
    assert_eq!(s["state"]["backend"], "redis");
    assert_eq!(s["state"]["healthy"], false);
    assert!(
        s["state"]["last_error"]
            .as_str()
            .unwrap()
            .contains(&redis.url()),
        "{s}"
    );
    let m = metrics(&weir).await;
    assert!(m.contains("weir_state_up 0"), "{m}");
    assert!(
        m.contains("weir_state_errors_total{filter=\"idempotency\",kind=\"unavailable\"}"),
        "{m}"
    );

    redis.restart();
    let back = Instant::now();
    loop {
        if post(&weir, &format!("k3-{}", back.elapsed().as_millis()), "x")
            .await
            .0
            == 200
        {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5) + SLACK,
            "no recovery"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(&weir).await["state"]["healthy"], true);
    assert!(metrics(&weir).await.contains("weir_state_up 1"));
}

#[tokio::test]
async fn a_slow_redis_is_cut_at_the_timeout() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let api = Upstream::start(|_, _| Reply::ok()).await;
    let cfg = config(
        &state_single(&redis.url(), "300ms"),
        &api.url(),
        r#""idempotency""#,
        "",
    );
    let weir = Weir::start(&cfg).await;
    assert_eq!(post(&weir, "k1", "x").await.0, 200);
    let sleeper = stall(&redis);
    let started = Instant::now();
    let (code, _, body) = post(&weir, "k2", "x").await;
    let took = started.elapsed();
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("no answer within 300 ms"));
    assert!(
        took < Duration::from_secs(8),
        "waited {took:?} for a sleeping Redis"
    );
    assert_eq!(sleeper.join().unwrap(), "+OK");
    assert_eq!(api.count(), 1);
}

#[tokio::test]
async fn weir_check_connects_to_redis() {
    let redis = RedisServer::start();
    let ok = config(
        &state_single(&redis.url(), "1s"),
        "http://127.0.0.1:1",
        "",
        "",
    );
    let (code, out, err) = crate::support::weir::check(&ok, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let port = crate::support::upstream::closed_port();
    let down = config(
        &state_single(&format!("redis://127.0.0.1:{port}"), "1s"),
        "http://127.0.0.1:1",
        "",
        "",
    );
    let (code, _, err) = crate::support::weir::check(&down, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("[state.redis]") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test]
async fn a_redis_cluster_shares_state_between_processes() {
    let cluster = RedisCluster::start();
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
    let state = format!(
        "[state]\nbackend = \"redis\"\n\n[state.redis]\ncluster = [{}]\ntimeout = \"1s\"\n",
        nodes.join(", ")
    );
    let api = Upstream::start(|_, i| {
        Reply::ok()
            .header("cache-control", "max-age=60")
            .body(format!("answer {i}"))
    })
    .await;
    let cfg = config(&state, &api.url(), r#""cache""#, "");
    let a = Weir::start(&cfg).await;
    let b = Weir::start(&cfg).await;
    for i in 0..20 {
        assert_eq!(
            get(&a, &format!("/item/{i}")).await.2,
            format!("answer {i}").as_bytes()
        );
    }
    for i in 0..20 {
        assert_eq!(
            get(&b, &format!("/item/{i}")).await.2,
            format!("answer {i}").as_bytes()
        );
    }
    assert_eq!(api.count(), 20);
}

#[tokio::test]
async fn a_changed_redis_table_needs_a_restart() {
    let redis = RedisServer::start();
    let other = RedisServer::start();
    let api = Upstream::start(|_, _| Reply::ok()).await;
    let cfg = config(
        &state_single(&redis.url(), "1s"),
        &api.url(),
        r#""cache""#,
        "",
    );
    let weir = WeirBuilder::new(cfg.clone()).start().await;
    let mark = weir.log_mark();
    weir.write_file("weir.toml", cfg.replace(&redis.url(), &other.url()));
    weir.wait_for_log_after(mark, "[state.redis] changed: restart weir to apply", WAIT)
        .await;
    // The old connection stays in use.
    assert_eq!(get(&weir, "/").await.0, 200);
    assert_eq!(status(&weir).await["state"]["healthy"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_fails_from_contention_on_one_key() {
    // Three processes, 64 connections each, every request on one limiter bucket, one
    // breaker and one retry budget: the hottest keys there are.
    let redis = RedisServer::start();
    let api = Upstream::start(|_, _| Reply::ok()).await;
    let cfg = config(
        &state_single(&redis.url(), "2s"),
        &api.url(),
        r#""retry", { use = "limiter", config = { rate = 1000000, burst = 1000000 } }, { use = "breaker", config = { minimum_calls = 10 } }"#,
        "",
    );
    let weirs = Arc::new(three(&cfg).await);
    let mut tasks = Vec::new();
    for c in 0..192usize {
        let weirs = weirs.clone();
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut bad = Vec::new();
            for _ in 0..15 {
                let r = http
                    .get(weirs[c % 3].url("/"))
                    .send()
                    .await
                    .expect("weir answers");
                // A limiter that failed open (state error) sends no RateLimit headers.
                if r.status() != 200 || !r.headers().contains_key("ratelimit") {
                    bad.push(format!("{} {:?}", r.status(), r.headers()));
                }
            }
            bad
        }));
    }
    let mut bad = Vec::new();
    for t in tasks {
        bad.extend(t.await.unwrap());
    }
    assert!(
        bad.is_empty(),
        "{} of 2880 failed, e.g. {}",
        bad.len(),
        bad[0]
    );
    assert_eq!(api.count(), 2880);
    for w in weirs.iter() {
        let m = metrics(w).await;
        assert!(!m.contains("weir_state_errors_total{"), "{m}");
        assert!(
            !m.contains("state_errors_total{"),
            "a filter saw a state error: {m}"
        );
        assert!(!w.logs().contains("state"), "{}", w.logs());
    }
}

#[tokio::test]
async fn rediss_is_verified_against_the_configured_ca() {
    let ca = crate::support::tls::Ca::new("weir test redis CA");
    let cert = ca.server_cert(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("redis.pem"), dir.path().join("redis.key"));
    std::fs::write(&cert_path, &cert.cert_pem).unwrap();
    std::fs::write(&key_path, &cert.key_pem).unwrap();
    let redis = RedisServer::start_tls(&cert_path, &key_path);
    let api = Upstream::start(|_, i| {
        Reply::ok()
            .header("cache-control", "max-age=60")
            .body(format!("answer {i}"))
    })
    .await;
    let url = format!("rediss://localhost:{}", redis.port);
    let trusted = format!("{}ca = \"certs/ca.pem\"\n", state_single(&url, "2s"));
    let cfg = config(&trusted, &api.url(), r#""cache""#, "");
    let (code, out, err) =
        crate::support::weir::check(&cfg, &[("certs/ca.pem", ca.cert_pem.as_bytes())]);
    assert_eq!(code, 0, "{out}{err}");
    let a = WeirBuilder::new(cfg.clone())
        .file("certs/ca.pem", &ca.cert_pem)
        .start()
        .await;
    let b = WeirBuilder::new(cfg)
        .file("certs/ca.pem", &ca.cert_pem)
        .start()
        .await;
    assert_eq!(get(&a, "/x").await.2, b"answer 0");
    assert_eq!(get(&b, "/x").await.2, b"answer 0", "shared over TLS");
    // Without the CA, the public roots do not vouch for the server: no connection.
    let untrusted = config(&state_single(&url, "2s"), &api.url(), r#""cache""#, "");
    let (code, _, err) = crate::support::weir::check(&untrusted, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("[state.redis]"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[tokio::test]
async fn a_slow_redis_never_holds_a_request_past_its_route_deadline() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let api = Upstream::start(|_, _| Reply::ok()).await;
    // Redis may take 5 s an operation, the route only 1 s.
    let cfg = config(
        &state_single(&redis.url(), "5s"),
        &api.url(),
        r#""idempotency""#,
        "",
    )
    .replace(r#"timeout = "10s""#, r#"timeout = "1s""#);
    let weir = Weir::start(&cfg).await;
    assert_eq!(post(&weir, "k1", "x").await.0, 200);
    let sleeper = stall(&redis);
    let started = Instant::now();
    let (code, _, body) = post(&weir, "k2", "x").await;
    let took = started.elapsed();
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("deadline passed while waiting for the state store"),
        "{body}"
    );
    assert!(took < Duration::from_secs(1) + SLACK, "held {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "held {took:?}: the 5 s operation timeout decided"
    );
    assert_eq!(sleeper.join().unwrap(), "+OK");
}

#[tokio::test]
async fn the_full_chain_costs_a_fixed_number_of_redis_round_trips() {
    let redis = RedisServer::start();
    let api = Upstream::start(|_, _| Reply::ok()).await;
    let cfg = config(
        &state_single(&redis.url(), "1s"),
        &api.url(),
        r#""retry", { use = "limiter", config = { rate = 1000000 } }, "breaker", "cache""#,
        "",
    );
    let weir = Weir::start(&cfg).await;
    // Warm: the first request may load the scripts.
    assert_eq!(get(&weir, "/w").await.0, 200);
    let before = state_ops(&weir).await;
    for i in 0..50 {
        assert_eq!(get(&weir, &format!("/{i}")).await.0, 200);
    }
    let after = state_ops(&weir).await;
    let mut per_request = Vec::new();
    for (series, n) in &after {
        let n = n - before.get(series).copied().unwrap_or(0.0);
        per_request.push(format!("{series} {}", n / 50.0));
    }
    per_request.sort();
    let total: f64 = after.values().sum::<f64>() - before.values().sum::<f64>();
    println!(
        "state round trips per request: {}\n{}",
        total / 50.0,
        per_request.join("\n")
    );
    // retry: its budget's active count at the start and at the end; limiter: one take;
    // breaker: the machine read and the outcome's window; cache: one lookup (a miss
    // that stores nothing).
    assert_eq!(total / 50.0, 6.0, "{per_request:?}");
}

/// `weir_state_operations_total` by its labels.
async fn state_ops(weir: &Weir) -> std::collections::HashMap<String, f64> {
    metrics(weir)
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("weir_state_operations_total"))
        .filter_map(|l| {
            let (labels, n) = l.rsplit_once(' ')?;
            Some((labels.to_owned(), n.parse().ok()?))
        })
        .collect()
}
