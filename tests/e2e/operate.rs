//! Operating weir: the admin listener end to end. `/metrics` parsed as Prometheus text,
//! `/status` figures against a known workload, the recent-request ring (`/requests`,
//! redaction, replay), the admin token, and trace context and request logs.
//!
//! Every figure is checked against traffic the test sent and the upstream recorded.
//! Latencies are never asserted tighter than their bucket, and the only delays are the
//! upstream's own (300 ms at most).

use std::time::Duration;

use prometheus_parse::{LineInfo, Scrape, Value};
use serde_json::Value as Json;

use crate::support::WAIT;
use crate::support::client::client;
use crate::support::upstream::{Recorded, Reply, Upstream, closed_port};
use crate::support::weir::{Weir, WeirBuilder};

// The bounds `/status` reports latency percentiles in.
use weir::stats::LATENCY_BOUNDS_MS;

/// The W3C example trace context.
const CLIENT_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CLIENT_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

// === helpers ===

/// `[listen]` and `[admin]` on free ports; `admin_extra` goes into the `[admin]` table.
fn head(admin_extra: &str) -> String {
    format!(
        r#"[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"
{admin_extra}
"#
    )
}

async fn send(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = req.send().await.expect("request to weir");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.expect("response body");
    (status, headers, body)
}

/// GET `path` on weir's proxy listener with `x-request-id: id`; returns the status.
async fn get_with_id(weir: &Weir, path: &str, id: &str) -> u16 {
    send(client().get(weir.url(path)).header("x-request-id", id))
        .await
        .0
}

async fn admin_get(weir: &Weir, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = client().get(weir.admin_url(path));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("GET admin {path}: {e}"))
}

/// GET an admin endpoint that must answer 200 with JSON.
async fn admin_json(weir: &Weir, path: &str) -> Json {
    let resp = admin_get(weir, path, None).await;
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("admin body");
    assert_eq!(status, 200, "GET admin {path}: {text}");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET admin {path}: not JSON ({e}): {text}"))
}

/// POST `/requests/{id}/replay`: (status, JSON body).
async fn replay(weir: &Weir, id: &str) -> (u16, Json) {
    let resp = client()
        .post(weir.admin_url(&format!("/requests/{id}/replay")))
        .send()
        .await
        .expect("POST replay");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("replay body");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("replay of {id}: not JSON ({e}): {text}"));
    (status, json)
}

/// The ids `/requests?{query}` lists, in its order.
async fn listed_ids(weir: &Weir, query: &str) -> Vec<String> {
    let list = admin_json(weir, &format!("/requests?{query}")).await;
    list["requests"]
        .as_array()
        .unwrap_or_else(|| panic!("/requests?{query}: no array: {list}"))
        .iter()
        .map(|r| r["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// `/metrics`, checked line by line to be valid text exposition, then parsed.
async fn scrape(weir: &Weir) -> Scrape {
    let resp = admin_get(weir, "/metrics", None).await;
    assert_eq!(resp.status(), 200);
    let content_type = resp
        .headers()
        .get("content-type")
        .expect("a content-type")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "{content_type}"
    );
    let text = resp.text().await.expect("metrics body");
    for line in text.lines() {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "unexpected comment line: {line}"
            );
            continue;
        }
        match LineInfo::parse(line) {
            LineInfo::Empty => {}
            LineInfo::Sample { value, .. } => {
                let ok = value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value);
                assert!(ok, "sample with a bad value: {line}");
            }
            _ => panic!("not a Prometheus sample line: {line:?}\n{text}"),
        }
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parse /metrics")
}

/// The value of the one series `name` with exactly these labels.
fn series(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| s.labels.len() == labels.len())
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert!(found.len() <= 1, "{name}{labels:?} matches {found:?}");
    found.first().map(|s| match s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{name}{labels:?} is {other:?}"),
    })
}

/// The buckets of histogram `name` with exactly these labels (besides `le`).
fn histogram(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let found: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| s.labels.len() == labels.len())
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
    match &found[0].value {
        Value::Histogram(buckets) => buckets.iter().map(|b| (b.less_than, b.count)).collect(),
        other => panic!("{name}{labels:?} is not a histogram: {other:?}"),
    }
}

/// Polls `/metrics` until the series has `want`; panics after [`WAIT`].
async fn eventually(weir: &Weir, name: &str, labels: &[(&str, &str)], want: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = series(&scrape(weir).await, name, labels);
        if got == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} is {got:?}, not {want} after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The bucket bound `/status` reports for quantile `q` of these latencies.
fn bucket_of_quantile(durations_ms: &[f64], q: f64) -> f64 {
    let mut counts = [0u64; LATENCY_BOUNDS_MS.len()];
    for ms in durations_ms {
        let i = LATENCY_BOUNDS_MS.iter().position(|b| ms <= b).unwrap();
        counts[i] += 1;
    }
    let rank = (q * durations_ms.len() as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return LATENCY_BOUNDS_MS[i];
        }
    }
    unreachable!("rank {rank} of {} durations", durations_ms.len())
}

/// A valid version-00 `traceparent`: (trace id, parent id, flags).
fn parse_traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value:?}");
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert_eq!(parts[0], "00", "traceparent {value:?}");
    assert!(
        hex(parts[1], 32) && parts[1].bytes().any(|b| b != b'0'),
        "trace id in {value:?}"
    );
    assert!(
        hex(parts[2], 16) && parts[2].bytes().any(|b| b != b'0'),
        "parent id in {value:?}"
    );
    assert!(hex(parts[3], 2), "flags in {value:?}");
    (
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

/// A record's headers (`[[name, value], ...]`) as pairs.
fn header_pairs(headers: &Json) -> Vec<(String, String)> {
    headers
        .as_array()
        .unwrap_or_else(|| panic!("headers are not a list: {headers}"))
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().expect("a name").to_owned(),
                pair[1].as_str().expect("a value").to_owned(),
            )
        })
        .collect()
}

fn shown(headers: &Json, name: &str) -> Vec<String> {
    header_pairs(headers)
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .collect()
}

// === /metrics ===

#[tokio::test]
async fn metrics_parse_and_count_requests_upstream_calls_filter_calls_and_retries() {
    let api = Upstream::start(|r, _| {
        if r.path.starts_with("/a/fail") {
            Reply::new(503).body("busy")
        } else {
            Reply::ok().body("fine")
        }
    })
    .await;
    let flaky = Upstream::builder()
        .replies([
            Reply::new(503),
            Reply::new(503),
            Reply::ok().body("third time"),
        ])
        .start()
        .await;
    let slow = Upstream::start(|_, _| Reply::ok().delay(Duration::from_secs(3))).await;
    let down = format!("http://127.0.0.1:{}", closed_port());
    let config = format!(
        r#"{head}
[upstreams.api]
url = "{api}"

[upstreams.flaky]
url = "{flaky}"

[upstreams.slow]
url = "{slow}"

[upstreams.down]
url = "{down}"

[[routes]]
name = "a"
match = {{ path_prefix = "/a/" }}
upstream = "api"
filters = [{{ use = "headers", config = {{ response = {{ set = {{ "x-served-by" = "weir" }} }} }} }}]

[[routes]]
name = "r"
match = {{ path_prefix = "/r/" }}
upstream = "flaky"
filters = [{{ use = "retry", config = {{ max_retries = 2, retry_on = ["5xx"] }} }}]

[[routes]]
name = "s"
match = {{ path_prefix = "/s/" }}
upstream = "slow"

[[routes]]
name = "d"
match = {{ path_prefix = "/d/" }}
upstream = "down"
"#,
        head = head(""),
        api = api.url(),
        flaky = flaky.url(),
        slow = slow.url(),
    );
    let weir = Weir::start(&config).await;
    let c = client();

    for i in 0..10 {
        let path = if i < 7 { "/a/ok" } else { "/a/fail" };
        let (status, headers, _) = send(c.get(weir.url(path))).await;
        assert_eq!(status, if i < 7 { 200 } else { 503 }, "GET {path}");
        assert_eq!(
            headers.get("x-served-by").unwrap(),
            "weir",
            "the headers filter ran"
        );
    }
    for _ in 0..2 {
        assert_eq!(send(c.get(weir.url("/nowhere"))).await.0, 404);
    }
    let (status, headers, body) = send(c.get(weir.url("/r/item"))).await;
    assert_eq!((status, body.as_str()), (200, "third time"));
    assert_eq!(headers.get("x-weir-attempts").unwrap(), "3");
    assert_eq!(flaky.count(), 3);
    let (status, _, body) = send(c.get(weir.url("/d/x"))).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(api.count(), 10);

    let m = scrape(&weir).await;
    let requests = |route, method, class| {
        series(
            &m,
            "weir_requests_total",
            &[("route", route), ("method", method), ("status", class)],
        )
    };
    assert_eq!(requests("a", "GET", "2xx"), Some(7.0));
    assert_eq!(requests("a", "GET", "5xx"), Some(3.0));
    assert_eq!(requests("a", "GET", "4xx"), None, "no 4xx on route a");
    assert_eq!(requests("", "GET", "4xx"), Some(2.0), "unmatched requests");
    assert_eq!(
        requests("r", "GET", "2xx"),
        Some(1.0),
        "a retried request counts once"
    );
    assert_eq!(requests("d", "GET", "5xx"), Some(1.0));

    let count = |name, labels: &[(&str, &str)]| series(&m, name, labels);
    assert_eq!(
        count("weir_request_duration_seconds_count", &[("route", "a")]),
        Some(10.0)
    );
    assert_eq!(
        count("weir_request_duration_seconds_count", &[("route", "")]),
        Some(2.0)
    );
    let buckets = histogram(&m, "weir_request_duration_seconds", &[("route", "a")]);
    assert_eq!(buckets.last(), Some(&(f64::INFINITY, 10.0)), "{buckets:?}");
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "cumulative buckets: {buckets:?}"
    );
    assert_eq!(
        count(
            "weir_upstream_duration_seconds_count",
            &[("upstream", "api")]
        ),
        Some(10.0)
    );
    assert_eq!(
        count(
            "weir_upstream_duration_seconds_count",
            &[("upstream", "flaky")]
        ),
        Some(3.0),
        "every try is an upstream call"
    );
    assert_eq!(
        count(
            "weir_upstream_errors_total",
            &[("upstream", "down"), ("kind", "connect_failed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        count(
            "weir_upstream_duration_seconds_count",
            &[("upstream", "down")]
        ),
        None,
        "a call without a response has no duration"
    );
    // Route a's `headers` changes responses only, so weir never calls its
    // `on_request`: the series is there, at zero.
    for (route, filter, phase, calls) in [
        ("a", "headers", "on_request", 0.0),
        ("a", "headers", "on_response", 10.0),
        ("r", "retry", "on_request", 1.0),
        ("r", "retry", "on_response", 3.0),
    ] {
        let labels = [("route", route), ("filter", filter), ("phase", phase)];
        assert_eq!(
            count("weir_filter_call_duration_seconds_count", &labels),
            Some(calls),
            "{labels:?}"
        );
    }
    assert_eq!(count("weir_retries_total", &[("route", "r")]), Some(2.0));
    assert_eq!(
        count("weir_retries_total", &[("route", "a")]),
        None,
        "no retry filter on a"
    );

    // In flight: 1 while the slow upstream works on a request, 0 once it is answered.
    eventually(
        &weir,
        "weir_upstream_in_flight",
        &[("upstream", "api")],
        0.0,
    )
    .await;
    let pending = tokio::spawn(send(client().get(weir.url("/s/wait"))));
    slow.wait_for(1).await;
    eventually(
        &weir,
        "weir_upstream_in_flight",
        &[("upstream", "slow")],
        1.0,
    )
    .await;
    assert_eq!(pending.await.unwrap().0, 200);
    eventually(
        &weir,
        "weir_upstream_in_flight",
        &[("upstream", "slow")],
        0.0,
    )
    .await;
}

// === /status ===

#[tokio::test]
async fn status_reports_exact_counts_bucketed_percentiles_rate_config_and_open_breakers() {
    let up = Upstream::start(|r, _| {
        if r.path.starts_with("/st/slow") {
            Reply::ok().delay(Duration::from_millis(300))
        } else if r.path.starts_with("/st/missing") {
            Reply::new(404)
        } else {
            Reply::ok()
        }
    })
    .await;
    let failing = Upstream::start(|_, _| Reply::new(500)).await;
    let config = format!(
        r#"{head}
[upstreams.api]
url = "{api}"

[upstreams.failing]
url = "{failing}"

[[routes]]
name = "st"
match = {{ path_prefix = "/st/" }}
upstream = "api"
filters = [{{ use = "headers", config = {{ request = {{ set = {{ "x-team" = "ops" }} }} }} }}, {{ use = "retry", config = {{ max_retries = 1, retry_on = ["reset"] }} }}]

[[routes]]
name = "br"
match = {{ path_prefix = "/br/" }}
upstream = "failing"
filters = [{{ use = "breaker", config = {{ window_size = 4, minimum_calls = 4, wait_in_open = "30s" }} }}]

[[routes]]
name = "idle"
match = {{ path_prefix = "/idle/" }}
upstream = "api"
"#,
        head = head(""),
        api = up.url(),
        failing = failing.url(),
    );
    let weir = Weir::start(&config).await;

    // 20 requests, one at a time: 16 fast 200s, 2 fast 404s, 2 slow (300 ms) 200s.
    for i in 0..20 {
        let (path, want) = match i {
            5 | 15 => ("/st/slow", 200),
            8 | 9 => ("/st/missing", 404),
            _ => ("/st/fast", 200),
        };
        assert_eq!(
            get_with_id(&weir, path, &format!("st-{i}")).await,
            want,
            "{path}"
        );
    }
    // The breaker: four failures fill its window and open it; the fifth call is refused.
    for i in 0..4 {
        assert_eq!(get_with_id(&weir, "/br/x", &format!("br-{i}")).await, 500);
    }
    let (status, _, body) = send(client().get(weir.url("/br/x"))).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("breaker_open"), "{body}");
    assert_eq!(failing.count(), 4);

    let status = admin_json(&weir, "/status").await;
    let routes = status["routes"].as_array().expect("routes");
    let names: Vec<&str> = routes.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["st", "br", "idle"], "{status}");

    let st = &routes[0];
    assert_eq!(st["requests"], 20, "{st}");
    assert_eq!(
        st["status_codes"],
        serde_json::json!({"200": 18, "404": 2}),
        "{st}"
    );
    assert_eq!(
        st["filters"],
        serde_json::json!(["headers", "retry"]),
        "{st}"
    );
    assert_eq!(st["upstream"], up.url(), "{st}");
    let rate = st["requests_per_second_1m"].as_f64().expect("a rate");
    assert!(
        (rate - 20.0 / 60.0).abs() < 1e-9,
        "rate {rate}: 20 requests in the last minute"
    );

    // Each percentile is the upper bound of the bucket holding it. Cross-check exactly
    // with the durations weir recorded for the same requests...
    let mut durations = Vec::new();
    for i in 0..20 {
        let r = admin_json(&weir, &format!("/requests/st-{i}")).await;
        durations.push(r["duration_ms"].as_f64().expect("duration_ms"));
    }
    let latency = &st["latency_ms"];
    for (q, key) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")] {
        let got = latency[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {latency}"));
        assert_eq!(
            got,
            bucket_of_quantile(&durations, q),
            "{key}: {latency}, durations {durations:?}"
        );
    }
    // ...and with what the workload must give: 90 % fast, 10 % after 300 ms.
    let p50 = latency["p50"].as_f64().unwrap();
    let p90 = latency["p90"].as_f64().unwrap();
    assert!(p50 <= 25.0, "p50 {p50}: most requests are answered at once");
    assert!(p90 <= 250.0, "p90 {p90}: the 18th of 20 is a fast one");
    assert_eq!(
        latency["p99"], 500.0,
        "p99: the 300 ms requests fall in the (250, 500] bucket"
    );

    let br = &routes[1];
    assert_eq!(br["requests"], 5, "{br}");
    assert_eq!(
        br["status_codes"],
        serde_json::json!({"500": 4, "503": 1}),
        "{br}"
    );
    assert_eq!(br["filters"], serde_json::json!(["breaker"]), "{br}");
    let idle = &routes[2];
    assert_eq!(idle["requests"], 0, "{idle}");
    assert_eq!(idle["filters"], serde_json::json!([]), "{idle}");
    assert_eq!(idle["status_codes"], serde_json::json!({}), "{idle}");
    assert_eq!(idle["latency_ms"]["p50"], Json::Null, "{idle}");

    let breakers = status["breakers"].as_array().expect("breakers");
    let open: Vec<&Json> = breakers
        .iter()
        .filter(|b| b["route"] == "br" && b["filter"] == "breaker")
        .collect();
    assert_eq!(open.len(), 1, "{breakers:?}");
    assert_eq!(open[0]["key"], failing.url(), "{breakers:?}");
    assert_eq!(open[0]["state"], "open", "{breakers:?}");
    assert_eq!(
        open[0]["failure_rate"], 100.0,
        "four failures of four: {breakers:?}"
    );
    assert_eq!(status["limiters"], serde_json::json!([]), "{status}");

    let cfg = &status["config"];
    let hash = cfg["hash"].as_str().expect("config.hash");
    assert!(
        hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "hash {hash:?}"
    );
    let loaded_at = cfg["loaded_at"].as_str().expect("config.loaded_at");
    let b = loaded_at.as_bytes();
    assert!(
        b.len() == 24 && b[4] == b'-' && b[10] == b'T' && b[19] == b'.' && b[23] == b'Z',
        "loaded_at {loaded_at:?} is RFC 3339 UTC with milliseconds"
    );
    assert!(
        cfg["path"]
            .as_str()
            .expect("config.path")
            .ends_with("weir.toml"),
        "{cfg}"
    );
    assert_eq!(cfg["last_reload_error"], Json::Null, "{cfg}");
}

// === redaction ===

#[tokio::test]
async fn secrets_are_redacted_in_requests_and_logs_even_at_debug() {
    let up = Upstream::start(|_, _| {
        Reply::ok()
            .header("set-cookie", "session=sekret-D; HttpOnly")
            .header("x-resp-visible", "shown-resp")
            .body("ok")
    })
    .await;
    let config = format!(
        r#"{head}
[upstreams.api]
url = "{api}"

[[routes]]
name = "plain"
match = {{ path_prefix = "/plain/" }}
upstream = "api"

[[routes]]
name = "filtered"
match = {{ path_prefix = "/filtered/" }}
upstream = "api"
filters = [{{ use = "headers", config = {{ response = {{ set = {{ "x-served-by" = "weir" }} }} }} }}]
"#,
        head = head(r#"redact_headers = ["x-tenant-secret"]"#),
        api = up.url(),
    );
    let weir = WeirBuilder::new(config)
        .env("RUST_LOG", "debug")
        .start()
        .await;
    const SECRETS: [&str; 6] = [
        "sekret-A", "sekret-B", "sekret-C", "sekret-D", "sekret-E", "sekret-F",
    ];

    for (id, path) in [
        ("redact-plain", "/plain/x?q=1"),
        ("redact-filtered", "/filtered/x"),
    ] {
        let (status, headers, _) = send(
            client()
                .post(weir.url(path))
                .header("x-request-id", id)
                .header("authorization", "Bearer sekret-A")
                .header("cookie", "sekret-B")
                .header("x-api-key", "sekret-C")
                .header("proxy-authorization", "Basic sekret-E")
                .header("x-tenant-secret", "sekret-F")
                .header("x-visible", "shown-1")
                .body("payload"),
        )
        .await;
        assert_eq!(status, 200, "{path}");
        assert!(
            headers
                .get("set-cookie")
                .is_some_and(|v| v.to_str().unwrap().contains("sekret-D")),
            "the client still gets its cookie"
        );
        weir.wait_for_log(&format!("request_id={id}"), WAIT).await;

        let record = admin_json(&weir, &format!("/requests/{id}")).await;
        let req_headers = &record["request"]["headers"];
        for name in [
            "authorization",
            "cookie",
            "x-api-key",
            "proxy-authorization",
            "x-tenant-secret",
        ] {
            assert_eq!(shown(req_headers, name), ["[redacted]"], "{name}: {record}");
        }
        assert_eq!(shown(req_headers, "x-visible"), ["shown-1"], "{record}");
        let resp_headers = &record["response"]["headers"];
        assert_eq!(
            shown(resp_headers, "set-cookie"),
            ["[redacted]"],
            "{record}"
        );
        assert_eq!(
            shown(resp_headers, "x-resp-visible"),
            ["shown-resp"],
            "{record}"
        );
    }
    // The secrets did travel: weir redacts what it shows, not what it forwards.
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(r.header_str("authorization"), Some("Bearer sekret-A"));
        assert_eq!(r.header_str("x-tenant-secret"), Some("sekret-F"));
    }

    let mut shown_anywhere = vec![
        (
            "/requests",
            admin_json(&weir, "/requests").await.to_string(),
        ),
        ("/status", admin_json(&weir, "/status").await.to_string()),
    ];
    for id in ["redact-plain", "redact-filtered"] {
        let text = admin_get(&weir, &format!("/requests/{id}"), None)
            .await
            .text()
            .await
            .unwrap();
        shown_anywhere.push(("/requests/{id}", text));
    }
    let metrics = admin_get(&weir, "/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    shown_anywhere.push(("/metrics", metrics));
    let logs = weir.logs();
    assert!(
        logs.contains(" DEBUG "),
        "RUST_LOG=debug took effect, so debug lines were checked too"
    );
    shown_anywhere.push(("stderr", logs));
    shown_anywhere.push(("stdout", weir.stdout()));
    for (place, text) in &shown_anywhere {
        for secret in SECRETS {
            assert!(
                !text.contains(secret),
                "{secret} appears in {place}:\n{text}"
            );
        }
    }
}

// === /requests ===

#[tokio::test]
async fn requests_list_filters_newest_first_and_a_record_shows_timings_and_sizes() {
    let up = Upstream::start(|r, _| match r.path.as_str() {
        "/a/1?x=1" => Reply::ok().delay(Duration::from_millis(100)).body("abc"),
        p if p.ends_with("/503") => Reply::new(503),
        p if p.ends_with("/404") => Reply::new(404),
        _ => Reply::ok(),
    })
    .await;
    let config = format!(
        r#"{head}
[upstreams.api]
url = "{api}"

[[routes]]
name = "a"
match = {{ path_prefix = "/a/" }}
upstream = "api"
filters = [{{ use = "headers", config = {{ request = {{ set = {{ "x-team" = "ops" }} }} }} }}]

[[routes]]
name = "b"
match = {{ path_prefix = "/b/" }}
upstream = "api"
"#,
        head = head(""),
        api = up.url(),
    );
    let weir = Weir::start(&config).await;
    let c = client();

    let (status, _, body) = send(
        c.post(weir.url("/a/1?x=1"))
            .header("x-request-id", "q1")
            .body("hello"),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "abc"));
    assert_eq!(get_with_id(&weir, "/b/503", "q2").await, 503);
    assert_eq!(get_with_id(&weir, "/a/404", "q3").await, 404);
    assert_eq!(get_with_id(&weir, "/b/ok", "q4").await, 200);
    assert_eq!(get_with_id(&weir, "/a/503", "q5").await, 503);
    assert_eq!(get_with_id(&weir, "/elsewhere", "q6").await, 404);

    assert_eq!(
        listed_ids(&weir, "").await,
        ["q6", "q5", "q4", "q3", "q2", "q1"]
    );
    assert_eq!(listed_ids(&weir, "route=a").await, ["q5", "q3", "q1"]);
    assert_eq!(listed_ids(&weir, "route=b").await, ["q4", "q2"]);
    assert_eq!(listed_ids(&weir, "status=5xx").await, ["q5", "q2"]);
    assert_eq!(listed_ids(&weir, "status=404").await, ["q6", "q3"]);
    assert_eq!(listed_ids(&weir, "status=2xx").await, ["q4", "q1"]);
    assert_eq!(listed_ids(&weir, "route=a&status=5xx").await, ["q5"]);
    assert_eq!(listed_ids(&weir, "limit=2").await, ["q6", "q5"]);
    assert_eq!(listed_ids(&weir, "route=b&limit=1").await, ["q4"]);
    assert_eq!(listed_ids(&weir, "route=nope").await, Vec::<String>::new());

    let list = admin_json(&weir, "/requests").await;
    let q6 = &list["requests"][0];
    assert_eq!(q6["route"], Json::Null, "{q6}");
    assert_eq!(q6["error"], "no_route", "{q6}");
    assert_eq!(q6["status"], 404, "{q6}");
    let q2 = &list["requests"][4];
    assert_eq!(q2["id"], "q2", "{q2}");
    assert_eq!(q2["method"], "GET", "{q2}");
    assert_eq!(q2["path"], "/b/503", "{q2}");
    assert_eq!(q2["route"], "b", "{q2}");
    assert_eq!(q2["attempts"], 1, "{q2}");

    let bad = admin_get(&weir, "/requests?colour=red", None).await;
    assert_eq!(bad.status(), 400);
    let bad: Json = bad.json().await.unwrap();
    assert_eq!(bad["error"], "bad_query", "{bad}");

    let q1 = admin_json(&weir, "/requests/q1").await;
    assert_eq!(q1["id"], "q1");
    assert_eq!(q1["method"], "POST");
    assert_eq!(q1["path"], "/a/1?x=1");
    assert_eq!(q1["route"], "a");
    assert_eq!(q1["status"], 200);
    assert_eq!(q1["attempts"], 1);
    assert_eq!(q1["error"], Json::Null);
    assert_eq!(q1["upstream_url"], format!("{}/a/1?x=1", up.url()));
    let timings = &q1["timings"];
    let filters = timings["filters"].as_array().expect("filter timings");
    let phases: Vec<(&str, &str, u64)> = filters
        .iter()
        .map(|f| {
            (
                f["filter"].as_str().unwrap(),
                f["phase"].as_str().unwrap(),
                f["attempt"].as_u64().unwrap(),
            )
        })
        .collect();
    // `headers` changes requests only here, so weir skips its `on_response`.
    assert_eq!(phases, [("headers", "on_request", 1)], "{timings}");
    for f in filters {
        let us = f["us"].as_f64().expect("us");
        assert!(us > 0.0 && us < 30e6, "{f}");
    }
    let upstream_ms: Vec<f64> = timings["upstream_ms"]
        .as_array()
        .expect("upstream_ms")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(upstream_ms.len(), 1, "{timings}");
    assert!(
        upstream_ms[0] >= 100.0,
        "the upstream took 100 ms: {timings}"
    );
    // q1 was the first request to the upstream: it waited for a new connection, and
    // that connect time is part of its upstream time.
    let connect_ms: Vec<f64> = timings["connect_ms"]
        .as_array()
        .expect("connect_ms")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(connect_ms.len(), 1, "{timings}");
    assert!(
        connect_ms[0] > 0.0 && connect_ms[0] <= upstream_ms[0],
        "{timings}"
    );
    // q2 came after q1 had finished: it reused the pooled connection.
    let q2_full = admin_json(&weir, "/requests/q2").await;
    assert_eq!(
        q2_full["timings"]["connect_ms"],
        serde_json::json!([]),
        "{q2_full}"
    );
    let total = timings["total_ms"].as_f64().unwrap();
    assert!(total >= upstream_ms[0], "{timings}");
    assert_eq!(q1["duration_ms"].as_f64(), Some(total));
    let req_body = &q1["request"]["body"];
    assert_eq!(req_body["bytes"], 5, "{q1}");
    assert_eq!(req_body["kept"], "hello", "{q1}");
    assert_eq!(req_body["complete"], true, "{q1}");
    assert_eq!(req_body["truncated"], false, "{q1}");
    assert_eq!(q1["response"]["body"]["bytes"], 3, "{q1}");
    assert_eq!(q1["response"]["body"]["kept"], "abc", "{q1}");

    // A route without filters: no filter timings, one upstream call.
    let q4 = admin_json(&weir, "/requests/q4").await;
    assert_eq!(q4["timings"]["filters"], serde_json::json!([]), "{q4}");
    assert_eq!(
        q4["timings"]["upstream_ms"].as_array().map(Vec::len),
        Some(1),
        "{q4}"
    );
    // No route: nothing was sent upstream.
    let q6 = admin_json(&weir, "/requests/q6").await;
    assert_eq!(q6["timings"]["upstream_ms"], serde_json::json!([]), "{q6}");
    assert_eq!(q6["upstream_url"], Json::Null, "{q6}");

    let missing = admin_get(&weir, "/requests/no-such-id", None).await;
    assert_eq!(missing.status(), 404);
    assert!(
        missing.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("json"),
        "{missing:?}"
    );
    let missing: Json = missing.json().await.expect("a JSON 404");
    assert_eq!(missing["error"], "not_found", "{missing}");
}

// === replay ===

/// Headers as the upstream saw them, minus those a replay may change.
fn comparable_headers(r: &Recorded) -> Vec<(String, Vec<u8>)> {
    const VARY: [&str; 9] = [
        "x-request-id",
        "traceparent",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    ];
    let mut h: Vec<(String, Vec<u8>)> = r
        .headers
        .iter()
        .filter(|(n, _)| !VARY.contains(&n.as_str()))
        .cloned()
        .collect();
    h.sort();
    h
}

#[tokio::test]
async fn replay_resends_the_request_byte_for_byte_and_refuses_what_it_cannot() {
    let up = Upstream::start(|_, i| Reply::new(201).body(format!("created-{i}"))).await;
    let config = format!(
        r#"{head}
[upstreams.api]
url = "{api}"

[[routes]]
name = "orders"
match = {{ path_prefix = "/orders/" }}
upstream = "api"
strip_prefix = true
filters = [{{ use = "headers", config = {{ request = {{ set = {{ "x-team" = "ops" }} }} }} }}]
"#,
        head = head(r#"recent_body_bytes = "16B""#),
        api = up.url(),
    );
    let weir = Weir::start(&config).await;

    let body = r#"{"amount":100}"#;
    let (status, _, text) = send(
        client()
            .post(weir.url("/orders/new?dry=0"))
            .header("x-request-id", "orig-1")
            .header("authorization", "Bearer sekret-R")
            .header("content-type", "application/json")
            .header("x-custom", "one")
            .header("x-multi", "a")
            .header("x-multi", "b")
            .body(body),
    )
    .await;
    assert_eq!((status, text.as_str()), (201, "created-0"));

    let (status, replayed) = replay(&weir, "orig-1").await;
    assert_eq!(status, 200, "{replayed}");
    let new_id = replayed["id"].as_str().expect("a new id").to_owned();
    assert_ne!(new_id, "orig-1");
    assert!(!new_id.is_empty());
    assert_eq!(replayed["replay_of"], "orig-1", "{replayed}");
    assert_eq!(replayed["status"], 201, "{replayed}");
    assert_eq!(replayed["body"], "created-1", "{replayed}");
    assert!(!replayed.to_string().contains("sekret-R"), "{replayed}");

    let seen = up.wait_for(2).await;
    assert_eq!(seen.len(), 2);
    let (first, again) = (&seen[0], &seen[1]);
    assert_eq!(
        (again.method.as_str(), again.path.as_str()),
        ("POST", "/new?dry=0")
    );
    assert_eq!((&first.method, &first.path), (&again.method, &again.path));
    assert_eq!(first.body, again.body);
    assert_eq!(&again.body[..], body.as_bytes());
    assert_eq!(
        comparable_headers(first),
        comparable_headers(again),
        "the replay must carry the same headers"
    );
    assert_eq!(
        again.header_str("authorization"),
        Some("Bearer sekret-R"),
        "the real value, not [redacted]"
    );
    assert_eq!(
        again.header_all("x-multi"),
        [b"a".as_slice(), b"b".as_slice()]
    );
    assert_eq!(
        again.header_str("x-team"),
        Some("ops"),
        "through the route's filters"
    );
    assert_eq!(first.header_str("x-request-id"), Some("orig-1"));
    assert_eq!(again.header_str("x-request-id"), Some(new_id.as_str()));
    parse_traceparent(again.header_str("traceparent").expect("a traceparent"));

    // The replay is a request of its own, in the ring, redacted like any other.
    let record = admin_json(&weir, &format!("/requests/{new_id}")).await;
    assert_eq!(record["method"], "POST");
    assert_eq!(record["route"], "orders");
    assert_eq!(record["status"], 201);
    assert_eq!(
        shown(&record["request"]["headers"], "authorization"),
        ["[redacted]"]
    );
    assert!(!record.to_string().contains("sekret-R"), "{record}");
    let line = weir.wait_for_log("replay_of=\"orig-1\"", WAIT).await;
    assert!(line.contains(&format!("request_id={new_id} ")), "{line}");

    // A request without a body (its body is never read) replays too.
    assert_eq!(get_with_id(&weir, "/orders/list", "list-1").await, 201);
    let (status, replayed) = replay(&weir, "list-1").await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["status"], 201, "{replayed}");
    let seen = up.wait_for(4).await;
    assert_eq!(
        (seen[3].method.as_str(), seen[3].path.as_str()),
        ("GET", "/list")
    );
    assert_eq!(comparable_headers(&seen[2]), comparable_headers(&seen[3]));
    assert!(seen[3].body.is_empty());

    // A body over recent_body_bytes = 16 was not kept whole: nothing to replay.
    let big = "x".repeat(100);
    let (status, _, _) = send(
        client()
            .post(weir.url("/orders/big"))
            .header("x-request-id", "big-1")
            .body(big.clone()),
    )
    .await;
    assert_eq!(status, 201);
    let record = admin_json(&weir, "/requests/big-1").await;
    assert_eq!(record["request"]["body"]["bytes"], 100, "{record}");
    assert_eq!(record["request"]["body"]["truncated"], true, "{record}");
    let (status, refused) = replay(&weir, "big-1").await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"], "body_not_kept", "{refused}");

    // A request no route took has no route to go back to.
    assert_eq!(get_with_id(&weir, "/nowhere", "gone-1").await, 404);
    let (status, refused) = replay(&weir, "gone-1").await;
    assert_eq!(status, 404, "{refused}");
    assert_eq!(refused["error"], "route_gone", "{refused}");

    // Also when it had a body, which weir never read: the route is what is missing.
    let (status, _, _) = send(
        client()
            .post(weir.url("/nowhere"))
            .header("x-request-id", "gone-2")
            .body("short"),
    )
    .await;
    assert_eq!(status, 404);
    let (status, refused) = replay(&weir, "gone-2").await;
    assert_eq!(status, 404, "{refused}");
    assert_eq!(refused["error"], "route_gone", "{refused}");

    let (status, refused) = replay(&weir, "never-was").await;
    assert_eq!(status, 404, "{refused}");
    assert_eq!(refused["error"], "not_found", "{refused}");

    assert_eq!(
        up.count(),
        5,
        "only the two originals, their replays and big-1 reached the upstream"
    );
}

/// Writes `request` (a head and part of a body) on a new connection to `addr`, keeps the
/// connection open, and returns the response head weir sends before the rest of the body
/// arrives; panics after [`WAIT`] without one.
async fn head_before_the_body_ends(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write the request");
    let mut head = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await.expect("read the response");
            assert!(n > 0, "closed without a response");
            head.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("no answer while the body was still coming: weir waited to read it all");
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn a_replay_reads_at_most_a_small_body_and_refuses_a_larger_one_with_413() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let config = format!(
        r#"{head}
[upstreams.api]
url = "{api}"

[[routes]]
name = "api"
upstream = "api"
"#,
        head = head(""),
        api = up.url(),
    );
    let weir = Weir::start(&config).await;
    assert_eq!(get_with_id(&weir, "/x", "orig").await, 200);
    let url = weir.admin_url("/requests/orig/replay");
    let limit = weir::admin::MAX_BODY as usize;

    // A small body is read and ignored: the replay goes ahead.
    let (status, _, text) = send(client().post(&url).body("x".repeat(limit))).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(up.wait_for(2).await.len(), 2);

    // One byte more is refused, with weir's JSON error, and nothing is replayed.
    let (status, headers, text) = send(client().post(&url).body("x".repeat(limit + 1))).await;
    assert_eq!(status, 413, "{text}");
    assert_eq!(headers["content-type"], "application/json");
    let json: Json = serde_json::from_str(&text).expect("a JSON error");
    assert_eq!(json["error"], "body_too_large", "{json}");

    // A declared length past the limit is refused before any of the body is read, and a
    // chunked body once the limit is passed: weir never waits for the rest.
    let admin = weir.admin_addr().expect("an admin listener");
    let declared = head_before_the_body_ends(
        admin,
        b"POST /requests/orig/replay HTTP/1.1\r\nhost: admin\r\ncontent-length: 1000000000\r\n\r\nxxxx",
    )
    .await;
    assert!(declared.starts_with("HTTP/1.1 413 "), "{declared}");
    let mut chunked =
        b"POST /requests/orig/replay HTTP/1.1\r\nhost: admin\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    chunked.extend_from_slice(format!("{:x}\r\n", limit + 1).as_bytes());
    chunked.extend(std::iter::repeat_n(b'x', limit + 1));
    chunked.extend_from_slice(b"\r\n");
    let streamed = head_before_the_body_ends(admin, &chunked).await;
    assert!(streamed.starts_with("HTTP/1.1 413 "), "{streamed}");

    assert_eq!(up.count(), 2, "only the original and the one replay");
}

// === admin token ===

#[tokio::test]
async fn the_admin_token_guards_every_endpoint() {
    const TOKEN: &str = "t0ken-xyz-1234";
    let up = Upstream::start(|_, _| Reply::ok().body("fine")).await;
    let config = format!(
        r#"{head}
[upstreams.api]
url = "{api}"

[[routes]]
name = "api"
upstream = "api"
"#,
        head = head(r#"token = { env = "WEIR_ADMIN_TOKEN" }"#),
        api = up.url(),
    );
    let weir = WeirBuilder::new(config.clone())
        .env("WEIR_ADMIN_TOKEN", TOKEN)
        .start()
        .await;
    // The proxy itself needs no token.
    assert_eq!(get_with_id(&weir, "/x", "tok-1").await, 200);

    let endpoints = [
        ("GET", "/metrics".to_owned()),
        ("GET", "/status".to_owned()),
        ("GET", "/requests".to_owned()),
        ("GET", "/requests?route=api&limit=1".to_owned()),
        ("GET", "/requests/tok-1".to_owned()),
        ("POST", "/requests/tok-1/replay".to_owned()),
        ("GET", "/no-such-endpoint".to_owned()),
    ];
    let wrong = [
        None,
        Some("Bearer wrong".to_owned()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_owned()),
    ];
    let call = |method: &str, path: &str, auth: Option<&str>| {
        let url = weir.admin_url(path);
        let mut req = match method {
            "GET" => client().get(url),
            _ => client().post(url),
        };
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    for (method, path) in &endpoints {
        for auth in &wrong {
            let resp = call(method, path, auth.as_deref())
                .await
                .expect("admin call");
            assert_eq!(resp.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(
                resp.headers()
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap()),
                Some("Bearer"),
                "{method} {path} with {auth:?}"
            );
            let body: Json = resp.json().await.expect("a JSON 401");
            assert_eq!(body["error"], "unauthorized", "{body}");
            assert!(!body.to_string().contains(TOKEN), "{body}");
        }
        let resp = call(method, path, Some(&format!("Bearer {TOKEN}")))
            .await
            .expect("admin call");
        let want = if path == "/no-such-endpoint" {
            404
        } else {
            200
        };
        assert_eq!(resp.status(), want, "{method} {path} with the token");
    }
    // Nothing that was refused reached the upstream: one request, one authorised replay.
    assert_eq!(up.count(), 2);

    // A token from a variable that is not set: `weir check` and `weir run` refuse it.
    let unset = "WEIR_E2E_OPERATE_UNSET_ADMIN_TOKEN";
    assert!(
        std::env::var_os(unset).is_none(),
        "{unset} must not be set for this test"
    );
    let missing = config.replace("WEIR_ADMIN_TOKEN", unset);
    let (code, stdout, stderr) = WeirBuilder::new(missing.clone()).check();
    assert_ne!(code, 0, "weir check must fail\n{stdout}\n{stderr}");
    assert!(
        stderr.contains(unset) && stderr.contains("admin.token"),
        "the error names the setting and the variable:\n{stderr}"
    );
    let err = WeirBuilder::new(missing)
        .try_start()
        .await
        .err()
        .expect("weir run must refuse the config");
    assert_ne!(err.exit_code(), Some(0), "{err}");
    assert!(err.stderr.contains(unset), "{err}");
}

// === trace context and request logs ===

#[tokio::test]
async fn trace_context_is_continued_or_started_and_each_request_logs_one_line() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let flaky = Upstream::builder()
        .replies([Reply::new(503), Reply::new(503), Reply::ok()])
        .start()
        .await;
    let config = format!(
        r#"{head}
[upstreams.api]
url = "{api}"

[upstreams.flaky]
url = "{flaky}"

[[routes]]
name = "t"
match = {{ path_prefix = "/t/" }}
upstream = "api"

[[routes]]
name = "tr"
match = {{ path_prefix = "/tr/" }}
upstream = "flaky"
filters = [{{ use = "retry", config = {{ max_retries = 2, retry_on = ["5xx"] }} }}]
"#,
        head = head(""),
        api = up.url(),
        flaky = flaky.url(),
    );
    let weir = Weir::start(&config).await;
    let c = client();

    // Continued: same trace, weir's own span as the parent.
    let (status, _, _) = send(
        c.get(weir.url("/t/continued"))
            .header("x-request-id", "trace-1")
            .header("traceparent", CLIENT_TRACEPARENT),
    )
    .await;
    assert_eq!(status, 200);
    let seen = up.request(0);
    let (trace, parent, flags) =
        parse_traceparent(seen.header_str("traceparent").expect("traceparent"));
    assert_eq!(trace, CLIENT_TRACE_ID);
    assert_ne!(
        parent, "00f067aa0ba902b7",
        "weir is a new hop: a new parent id"
    );
    assert_eq!(flags, "01");
    assert_eq!(seen.header_all("traceparent").len(), 1);

    // Started: no (or an invalid) traceparent gets a fresh, valid one, new each time.
    assert_eq!(get_with_id(&weir, "/t/fresh", "trace-2").await, 200);
    let (status, _, _) = send(
        c.get(weir.url("/t/invalid"))
            .header("x-request-id", "trace-3")
            .header(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            ),
    )
    .await;
    assert_eq!(status, 200);
    let (fresh, _, _) = parse_traceparent(
        up.request(1)
            .header_str("traceparent")
            .expect("traceparent"),
    );
    let (fresh2, _, _) = parse_traceparent(
        up.request(2)
            .header_str("traceparent")
            .expect("traceparent"),
    );
    assert_ne!(fresh, CLIENT_TRACE_ID);
    assert_ne!(fresh, fresh2, "each new trace has its own id");

    for (id, want) in [
        ("trace-1", CLIENT_TRACE_ID),
        ("trace-2", fresh.as_str()),
        ("trace-3", fresh2.as_str()),
    ] {
        let record = admin_json(&weir, &format!("/requests/{id}")).await;
        assert_eq!(record["trace_id"], want, "{record}");
    }

    // Retried: every try belongs to the one trace.
    let (status, _, _) = send(c.get(weir.url("/tr/x")).header("x-request-id", "trace-4")).await;
    assert_eq!(status, 200);
    let tries = flaky.requests();
    assert_eq!(tries.len(), 3);
    let traces: Vec<String> = tries
        .iter()
        .map(|r| parse_traceparent(r.header_str("traceparent").unwrap()).0)
        .collect();
    assert!(traces.iter().all(|t| *t == traces[0]), "{traces:?}");
    assert_eq!(
        admin_json(&weir, "/requests/trace-4").await["trace_id"],
        traces[0]
    );

    assert_eq!(get_with_id(&weir, "/elsewhere", "trace-5").await, 404);

    // One info line per request, naming its id, route, status, attempts and duration.
    for (id, route, status, attempts, error) in [
        ("trace-1", "t", 200, 1, "-"),
        ("trace-2", "t", 200, 1, "-"),
        ("trace-3", "t", 200, 1, "-"),
        ("trace-4", "tr", 200, 3, "-"),
        ("trace-5", "-", 404, 0, "no_route"),
    ] {
        let needle = format!("request_id={id} ");
        weir.wait_for_log(&needle, WAIT).await;
        let lines: Vec<String> = weir
            .log_lines()
            .into_iter()
            .filter(|l| l.contains(id))
            .collect();
        assert_eq!(lines.len(), 1, "{id}: {lines:#?}");
        let line = &lines[0];
        assert!(line.contains(" INFO "), "{line}");
        for field in [
            format!(" route=\"{route}\" "),
            format!(" status={status} "),
            format!(" attempts={attempts} "),
            format!(" error=\"{error}\""),
        ] {
            assert!(line.contains(&field), "{field:?} in {line}");
        }
        let duration: f64 = line
            .split("duration_ms=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("a duration_ms in {line}"));
        assert!(duration > 0.0 && duration < 30_000.0, "{line}");
    }
    let request_lines = weir
        .log_lines()
        .into_iter()
        .filter(|l| l.contains(" request_id="))
        .count();
    assert_eq!(request_lines, 5, "one line per request:\n{}", weir.logs());
}
