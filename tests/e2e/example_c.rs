//! The C example filter (`examples/filters/c`, a request-header allowlist), built from
//! source with its own Makefile against `weir:filter@0.2.1` and run in a real weir.
//!
//! The build needs Debian's clang-16, lld-16 and wasi-libc plus `wit-bindgen` and
//! `wasm-tools`; `examples/filters/c/setup.sh` installs them. Without them these tests
//! fail, saying so. Each test process builds the filter once, into its own directory
//! under cargo's target tmp dir, so parallel test processes never share build files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::support::client::builder;
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::{Weir, WeirBuilder};

const LISTEN: &str = "[listen]\naddr = \"127.0.0.1:0\"\n";
/// The filter's counter, as weir exposes it (prefix `weir_filter_`).
const DROPPED_METRIC: &str = "weir_filter_allowlist_dropped_headers_total";
/// The start of the line the filter logs with `log_dropped = true`.
const DROPPED_LOG: &str = "dropped request headers not on the allowlist: ";

/// `examples/filters/c` in this repository.
fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/filters/c")
}

/// The allowlist component, built from source the first time a test asks for it.
fn allowlist_wasm() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(build_allowlist)
}

/// Runs `make` in `examples/filters/c` with its build directory and output in a fresh
/// temp dir, and returns the component's bytes.
fn build_allowlist() -> Vec<u8> {
    const SETUP: &str = "run examples/filters/c/setup.sh to install the C toolchain and tools";
    let dir = tempfile::Builder::new()
        .prefix("example-c-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create a build dir under the target tmp dir");
    let out = dir.path().join("allowlist.wasm");
    let output = Command::new("make")
        .arg("-C")
        .arg(example_dir())
        .arg(format!("BUILD_DIR={}", dir.path().join("build").display()))
        .arg(format!("OUT={}", out.display()))
        // Host-compiler settings from the environment must not reach a wasm build.
        .env_remove("CC")
        .env_remove("CFLAGS")
        .env_remove("LDFLAGS")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `make` ({e}); {SETUP}"));
    assert!(
        output.status.success(),
        "building the C example filter failed ({}); if a tool is missing, {SETUP}\n\
         --- make stdout ---\n{}\n--- make stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    std::fs::read(&out).unwrap_or_else(|e| panic!("read {}: {e}", out.display()))
}

/// weir with one catch-all route `partner` to `upstream` through the allowlist filter
/// with `config` (a TOML inline table), and the admin listener for metrics.
fn allowlist_weir(upstream: &str, config: &str) -> WeirBuilder {
    WeirBuilder::new(format!(
        r#"{LISTEN}
[admin]
addr = "127.0.0.1:0"

[upstreams.up]
url = "{upstream}"

[filters.allowlist]
wasm = "filters/allowlist.wasm"
config = {config}

[[routes]]
name = "partner"
upstream = "up"
filters = ["allowlist"]
"#
    ))
    .file("filters/allowlist.wasm", allowlist_wasm())
}

/// The filter's dropped-headers counter for route `partner`, or 0 before it exists.
async fn dropped_total(weir: &Weir) -> f64 {
    let text = builder()
        .build()
        .expect("build client")
        .get(weir.admin_url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let labels = ["route=\"partner\"", "filter=\"allowlist\""];
    text.lines()
        .filter(|l| l.starts_with(&format!("{DROPPED_METRIC}{{")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .map_or(0.0, |l| {
            let value = l.rsplit(' ').next().expect("a sample value");
            value.parse().unwrap_or_else(|e| panic!("{l}: {e}"))
        })
}

/// Header pairs as a `HeaderMap`, keeping repeated names as separate values.
fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    map
}

#[tokio::test]
async fn upstream_sees_only_allowed_headers() {
    let up = Upstream::start(|_, _| Reply::ok().body("hello from upstream")).await;
    let weir = allowlist_weir(
        &up.url(),
        r#"{ allow = ["Content-Type", "accept", "authorization", "x-request-id"], allow_prefixes = ["X-Trace-"], log_dropped = true }"#,
    )
    .start()
    .await;
    // Built against 0.2, as weir says when it loads the filter.
    let ready = weir
        .wait_for_log("filter ready", crate::support::WAIT)
        .await;
    assert!(ready.contains(r#"wit="0.2""#), "{ready}");
    // Title-case names on the wire, so the mixed case reaches weir as sent.
    let client = builder()
        .http1_title_case_headers()
        .build()
        .expect("build client");

    let sent = headers(&[
        ("content-type", "application/json"),
        ("accept", "application/json"),
        ("accept", "text/plain"),
        ("authorization", "Bearer t0ken"),
        ("x-trace-span", "span-1"),
        ("x-trace-parent", "parent-1"),
        ("x-tracer", "not a prefix match"),
        ("cookie", "session=secret-cookie"),
        ("x-debug", "1"),
        ("x-debug", "2"),
        ("user-agent", "example-c-test/1"),
    ]);
    let resp = client
        .post(weir.url("/v1/items"))
        .headers(sent)
        .body("{\"id\":1}")
        .send()
        .await
        .expect("request through weir");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "hello from upstream");

    let seen = up.wait_for(1).await.remove(0);
    assert_eq!(seen.path, "/v1/items");
    assert_eq!(seen.body_str(), "{\"id\":1}", "the body is untouched");
    assert_eq!(seen.header_str("content-type"), Some("application/json"));
    assert_eq!(
        seen.header_all("accept"),
        [b"application/json".as_slice(), b"text/plain"],
        "every value of an allowed header, in order"
    );
    assert_eq!(seen.header_str("authorization"), Some("Bearer t0ken"));
    assert_eq!(seen.header_str("x-trace-span"), Some("span-1"));
    assert_eq!(seen.header_str("x-trace-parent"), Some("parent-1"));
    for dropped in ["x-tracer", "cookie", "x-debug", "user-agent"] {
        assert!(
            !seen.has_header(dropped),
            "{dropped} reached the upstream: {:?}",
            seen.headers
        );
    }

    // The log names what was dropped, never the values.
    let line = weir.wait_for_log(DROPPED_LOG, crate::support::WAIT).await;
    // "NAME, NAME, NAME" and then weir's own fields (route=…, filter=…).
    let names = &line[line.find(DROPPED_LOG).expect("found") + DROPPED_LOG.len()..];
    let mut names: Vec<&str> = names
        .split(", ")
        .map(|n| n.split_whitespace().next().unwrap_or_default())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["cookie", "user-agent", "x-debug", "x-tracer"],
        "{line}"
    );
    assert!(!line.contains("secret-cookie"), "{line}");
    assert!(
        line.contains("route=partner") && line.contains("filter=allowlist"),
        "{line}"
    );
    // One per header field: x-debug came twice.
    assert_eq!(dropped_total(&weir).await, 5.0);

    // A request with nothing to drop goes through as it is, and counts nothing.
    let resp = client
        .get(weir.url("/v1/items/1"))
        .headers(headers(&[
            ("accept", "application/json"),
            ("X-Trace-Id", "t-2"),
        ]))
        .send()
        .await
        .expect("second request");
    assert_eq!(resp.status(), 200);
    let seen = up.wait_for(2).await.remove(1);
    assert_eq!(seen.header_str("accept"), Some("application/json"));
    assert_eq!(seen.header_str("x-trace-id"), Some("t-2"));
    assert_eq!(dropped_total(&weir).await, 5.0);
}

/// Configs the filter must refuse, and a piece of the error each must produce.
const BAD_CONFIGS: &[(&str, &str)] = &[
    (
        r#"{ allow = "content-type" }"#,
        "`allow` must be a list of strings, not a string",
    ),
    (
        r#"{ allow = ["accept", 7] }"#,
        "`allow[1]` must be a string (a header name), not a number",
    ),
    (
        r#"{ allow = ["x api key"] }"#,
        r#"`allow[0]` "x api key" has a character HTTP does not allow in a header name"#,
    ),
    (
        r#"{ allow_prefixes = [""] }"#,
        r#"`allow_prefixes[0]` "" is empty"#,
    ),
    (
        r#"{ alow = ["accept"] }"#,
        r#"unknown key "alow" (the keys are allow, allow_prefixes and log_dropped)"#,
    ),
    (
        r#"{ allow = ["accept"], log_dropped = "yes" }"#,
        "`log_dropped` must be true or false, not a string",
    ),
    (
        r#"{ allow = [], allow_prefixes = [] }"#,
        "nothing is allowed: give `allow` (header names) or `allow_prefixes`",
    ),
];

#[test]
fn weir_check_names_the_problem_in_a_bad_config() {
    for (config, problem) in BAD_CONFIGS {
        let (code, stdout, stderr) = allowlist_weir("http://127.0.0.1:1", config).check();
        assert_ne!(code, 0, "{config}: stdout: {stdout}\nstderr: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains(problem))
            .unwrap_or_else(|| panic!("{config}: no {problem:?} in stderr:\n{stderr}"));
        assert!(line.contains("filter `allowlist`"), "{line}");
    }
    let (code, stdout, stderr) =
        allowlist_weir("http://127.0.0.1:1", r#"{ allow = ["accept"] }"#).check();
    assert_eq!(code, 0, "a good config passes: {stdout}\n{stderr}");
}

#[tokio::test]
async fn weir_refuses_to_start_with_a_bad_config() {
    let line = allowlist_weir("http://127.0.0.1:1", r#"{ allow = "accept" }"#)
        .refused("`allow` must be a list of strings, not a string")
        .await;
    assert!(line.contains("filter `allowlist`"), "{line}");
    assert!(line.contains("route `partner`"), "{line}");
}
