//! The Python example filter (`examples/filters/python`, a JSON response redactor), built
//! from source with componentize-py and run in a real weir.
//!
//! The component is built once per test process, by the example's own `build.sh`, into
//! cargo's temp dir for tests. componentize-py must be installed: run
//! `examples/filters/python/setup.sh` first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::json;

use crate::support::WAIT;
use crate::support::client::client;
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::{Weir, WeirBuilder};

/// The example's directory, from the workspace root.
const EXAMPLE: &str = "examples/filters/python";

/// How long weir may take to come up: a cold start compiles an 18 MB component (CPython)
/// with Cranelift, which takes tens of seconds on a busy 2-core machine.
const STARTUP: Duration = Duration::from_secs(300);

/// The redactor component, built on first use; every test in this process shares it.
fn redactor_wasm() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_redactor)
}

fn build_redactor() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the weir crate sits in the workspace");
    let example = root.join(EXAMPLE);
    let setup = format!("{EXAMPLE}/setup.sh");
    match Command::new("componentize-py").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => panic!(
            "componentize-py is not installed (or not on PATH): run {setup} to build the \
             Python example filter"
        ),
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("example-python");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    // Built under a name of this process's own, then renamed into place, so test
    // processes running side by side (nextest) never see half a file.
    let partial = dir.join(format!("redactor.{}.wasm", std::process::id()));
    let out = Command::new("bash")
        .arg(example.join("build.sh"))
        .arg(&partial)
        .output()
        .unwrap_or_else(|e| panic!("run {EXAMPLE}/build.sh: {e}"));
    assert!(
        out.status.success(),
        "{EXAMPLE}/build.sh failed ({}); if componentize-py is missing or another \
         version, run {setup}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let wasm = dir.join("redactor.wasm");
    std::fs::rename(&partial, &wasm)
        .unwrap_or_else(|e| panic!("rename {} to {}: {e}", partial.display(), wasm.display()));
    wasm
}

/// weir with `config` and the redactor as `filters/redactor.wasm` next to it.
fn with_redactor(config: impl Into<String>) -> WeirBuilder {
    WeirBuilder::new(config)
        .copy("filters/redactor.wasm", redactor_wasm())
        .startup_timeout(STARTUP)
}

/// An account as an upstream API might return it: card numbers and emails at the top,
/// in nested objects and in arrays.
fn account() -> serde_json::Value {
    json!({
        "id": "acct_1",
        "email": "ada@example.com",
        "card": { "number": "4111111111111111", "exp": "12/30", "brand": "visa" },
        "orders": [
            { "id": 1, "card": { "number": "5500000000000004" }, "total": 12.5 },
            { "id": 2, "card": { "number": "340000000000009" }, "total": 7 },
            { "id": 3, "note": "no card" }
        ],
        "contacts": [ { "email": "bob@example.com", "name": "Bob" }, { "email": null } ],
        "bio": "writes to ada@example.com",
        "tags": ["vip"]
    })
}

fn config(upstream: &str) -> String {
    format!(
        r#"[listen]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{upstream}"

[filters.redact]
wasm = "filters/redactor.wasm"
config = {{ fields = ["card.number", "email", "orders.card.number", "contacts.email"], mask = "****" }}

[[routes]]
name = "strict"
match = {{ path_prefix = "/strict/" }}
upstream = "api"
filters = [{{ use = "redact", config = {{ on_invalid = "block" }} }}]

[[routes]]
name = "anywhere"
match = {{ path_prefix = "/anywhere/" }}
upstream = "api"
filters = [{{ use = "redact", config = {{ fields = ["**.number"], mask = "[redacted]" }} }}]

[[routes]]
name = "api"
upstream = "api"
filters = ["redact"]
"#
    )
}

/// The upstream: what it answers depends on the path's last segment.
async fn upstream() -> Upstream {
    Upstream::start(|req, _| {
        let last = req.path.rsplit('/').next().unwrap_or_default();
        match last {
            "account" => Reply::new(201)
                .json(&account())
                .header("x-upstream", "kept")
                .header("etag", "\"v1\""),
            "problem" => Reply::new(400)
                .header("content-type", "application/problem+json; charset=utf-8")
                .body(r#"{"title":"bad card","email":"ada@example.com"}"#),
            "notes" => Reply::ok()
                .header("content-type", "text/plain")
                .body(r#"{"email": "ada@example.com"}"#),
            "broken" => Reply::ok()
                .header("content-type", "application/json")
                .body(r#"{"email": "ada@exa"#),
            other => panic!("unexpected upstream path {other:?}"),
        }
    })
    .await
}

async fn get(weir: &Weir, path: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let resp = client()
        .get(weir.url(path))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("body").to_vec();
    (status, headers, body)
}

fn header<'h>(headers: &'h reqwest::header::HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).map(|v| v.to_str().expect("ASCII header"))
}

fn parse(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn python_redactor_masks_configured_fields_and_keeps_the_rest() {
    let up = upstream().await;
    let weir = with_redactor(config(&up.url())).start().await;

    let (status, headers, body) = get(&weir, "/v1/account").await;
    assert_eq!(status, 201, "the upstream's status is kept");
    assert_eq!(header(&headers, "x-upstream"), Some("kept"));
    assert_eq!(header(&headers, "etag"), Some("\"v1\""));
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let length: usize = header(&headers, "content-length")
        .expect("content-length")
        .parse()
        .expect("a number");
    assert_eq!(length, body.len(), "weir sets the new body's length");
    let mut want = account();
    want["email"] = json!("****");
    want["card"]["number"] = json!("****");
    want["orders"][0]["card"]["number"] = json!("****");
    want["orders"][1]["card"]["number"] = json!("****");
    want["contacts"][0]["email"] = json!("****");
    assert_eq!(parse(&body), want);

    // The redactor asked the upstream for an unencoded body.
    let seen = up.request(0);
    assert_eq!(seen.path, "/v1/account");
    assert!(!seen.has_header("accept-encoding"), "{:?}", seen.headers);

    // A `+json` media type counts as JSON.
    let (status, _, body) = get(&weir, "/v1/problem").await;
    assert_eq!(status, 400);
    assert_eq!(
        parse(&body),
        json!({ "title": "bad card", "email": "****" })
    );

    // A route's own config: `**` reaches every depth, with its own mask.
    let (_, _, body) = get(&weir, "/anywhere/account").await;
    let mut want = account();
    want["card"]["number"] = json!("[redacted]");
    want["orders"][0]["card"]["number"] = json!("[redacted]");
    want["orders"][1]["card"]["number"] = json!("[redacted]");
    assert_eq!(parse(&body), want);

    let logs = weir.logs();
    assert!(!logs.contains("passed on unredacted"), "{logs}");
}

#[tokio::test]
async fn python_redactor_passes_bodies_it_cannot_read() {
    let up = upstream().await;
    let weir = with_redactor(config(&up.url())).start().await;

    // Not a JSON media type: untouched, byte for byte, whatever it looks like.
    let (status, headers, body) = get(&weir, "/v1/notes").await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("text/plain"));
    assert_eq!(body, br#"{"email": "ada@example.com"}"#);

    // Labelled JSON but broken: passed on unchanged, and the filter says so in weir's log.
    let (status, _, body) = get(&weir, "/v1/broken").await;
    assert_eq!(status, 200);
    assert_eq!(body, br#"{"email": "ada@exa"#);
    let line = weir.wait_for_log("body is not valid JSON", WAIT).await;
    assert!(line.contains("passed on unredacted"), "{line}");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("redact"), "the line names the filter: {line}");

    // With `on_invalid = "block"` the same body is refused instead.
    let (status, headers, body) = get(&weir, "/strict/broken").await;
    assert_eq!(status, 502);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let json = parse(&body);
    assert_eq!(json["error"], "redaction_failed", "{json}");
    assert_eq!(json["route"], "strict", "{json}");
    assert!(
        !String::from_utf8_lossy(&body).contains("ada@"),
        "a blocked body leaks nothing: {json}"
    );
}

#[tokio::test]
async fn python_redactor_bad_config_stops_weir_with_the_reason() {
    let bad = |fields: &str| {
        format!(
            r#"[listen]
addr = "127.0.0.1:0"

[upstreams.api]
url = "http://127.0.0.1:9"

[filters.redact]
wasm = "filters/redactor.wasm"
config = {{ fields = {fields} }}

[[routes]]
name = "api"
upstream = "api"
filters = ["redact"]
"#
        )
    };

    let line = with_redactor(bad(r#"["email", ""]"#))
        .refused("init rejected its config")
        .await;
    assert!(line.contains("filter `redact` on route `api`"), "{line}");
    assert!(
        line.contains(r#""fields"[1] must be a non-empty string, not an empty string"#),
        "{line}"
    );

    let (code, stdout, stderr) = with_redactor(bad(r#""email""#)).check();
    assert_ne!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains(
            r#""fields" must be a non-empty list of dotted paths, not the string 'email'"#
        ),
        "{stderr}"
    );
}
