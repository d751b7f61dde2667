//! The JavaScript example filter (`examples/filters/js`, a request signer), built from
//! source with componentize-js and run in a real weir. The upstream checks each signature
//! the way the example's README tells an upstream to: recompute the canonical string and
//! its HMAC-SHA256 (here with `ring`), so the filter's own SHA-256 and HMAC are tested
//! against an independent implementation, over bodies that end on and around every
//! padding boundary, and against one fixed known answer.
//!
//! The component is built once per test process, by the example's `npm run build`, into
//! cargo's temp dir for tests. Its toolchain must be installed: run
//! `examples/filters/js/setup.sh` first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::{digest, hmac};

use crate::support::client::client;
use crate::support::upstream::{Recorded, Reply, Upstream};
use crate::support::weir::{Weir, WeirBuilder};

/// The example's directory, from the workspace root.
const EXAMPLE: &str = "examples/filters/js";

/// How long weir may take to come up: a cold start compiles a 12 MB component
/// (SpiderMonkey) with Cranelift, which takes tens of seconds on a busy 2-core machine.
const STARTUP: Duration = Duration::from_secs(300);

/// The secret the default route signs with, passed to weir as an environment variable.
const SECRET: &str = "correct horse battery staple";

/// The environment variable that carries [`SECRET`].
const SECRET_VAR: &str = "WEIR_TEST_SIGNER_SECRET";

/// The key of the `/options/` route, given as hex: the bytes 0, 1, …, 99. Longer than a
/// SHA-256 block, so HMAC hashes it first.
fn long_key() -> Vec<u8> {
    (0..100).collect()
}

/// The key of the `/b64/` route, given as URL-safe base64 without padding.
const B64_KEY: &[u8] = &[0xfb, 0xff, 0x00, b'w', b'e', b'i', b'r'];

/// The signer component, built on first use; every test in this process shares it.
fn signer_wasm() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_signer)
}

fn build_signer() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the weir crate sits in the workspace");
    let example = root.join(EXAMPLE);
    let setup = format!("{EXAMPLE}/setup.sh");
    let compiler = example.join("node_modules/@bytecodealliance/componentize-js");
    assert!(
        compiler.is_dir(),
        "componentize-js is not installed in {EXAMPLE}/node_modules: run {setup} to build \
         the JavaScript example filter"
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("example-js");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    // Built under a name of this process's own, then renamed into place, so test
    // processes running side by side (nextest) never see half a file.
    let partial = dir.join(format!("signer.{}.wasm", std::process::id()));
    let out = Command::new("npm")
        .args(["run", "--silent", "build", "--", "--out"])
        .arg(&partial)
        .current_dir(&example)
        .output()
        .unwrap_or_else(|e| panic!("run `npm run build` in {EXAMPLE} (is npm installed?): {e}"));
    assert!(
        out.status.success(),
        "`npm run build` in {EXAMPLE} failed ({}); if its node_modules is stale, run \
         {setup}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let wasm = dir.join("signer.wasm");
    std::fs::rename(&partial, &wasm)
        .unwrap_or_else(|e| panic!("rename {} to {}: {e}", partial.display(), wasm.display()));

    // Load it once with `weir check`: a component weir cannot load fails here, in weir's
    // words, and the compiled code lands in weir's compile cache, so the tests' weirs,
    // starting side by side, do not each compile the same 12 MB again (every build
    // differs by a few bytes, so an earlier run's cache entry never matches).
    let (code, stdout, stderr) = WeirBuilder::new(
        r#"[listen]
addr = "127.0.0.1:0"

[upstreams.api]
url = "http://127.0.0.1:9"

[filters.signer]
wasm = "filters/signer.wasm"
config = { secret = "s" }

[[routes]]
name = "api"
upstream = "api"
filters = ["signer"]
"#,
    )
    .copy("filters/signer.wasm", &wasm)
    .check();
    assert_eq!(
        code, 0,
        "weir check refused the freshly built signer\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    wasm
}

/// weir with `config`, the signer as `filters/signer.wasm` and [`SECRET`] in its
/// environment.
fn with_signer(config: impl Into<String>) -> WeirBuilder {
    WeirBuilder::new(config)
        .copy("filters/signer.wasm", signer_wasm())
        .env(SECRET_VAR, SECRET)
        .startup_timeout(STARTUP)
}

/// Three routes to `upstream`: `/signed/` with the README's config (secret from the
/// environment, the default headers), `/options/` with every option changed, and `/b64/`
/// with a base64 secret. `settings` are more `[filters.signer]` keys.
fn config(upstream: &str, settings: &str) -> String {
    let hex_key: String = long_key().iter().map(|b| format!("{b:02x}")).collect();
    format!(
        r#"[listen]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{upstream}"

[filters.signer]
wasm = "filters/signer.wasm"
{settings}
config = {{ secret = {{ env = "{SECRET_VAR}" }} }}

[[routes]]
name = "signed"
match = {{ path_prefix = "/signed/" }}
upstream = "api"
strip_prefix = true
filters = ["signer"]

[[routes]]
name = "options"
match = {{ path_prefix = "/options/" }}
upstream = "api"
strip_prefix = true
filters = [{{ use = "signer", config = {{ secret = "{hex_key}", secret_encoding = "hex", header = "X-Hub-Signature", timestamp = false, key_id = "k-2026", key_id_header = "x-key" }} }}]

[[routes]]
name = "b64"
match = {{ path_prefix = "/b64/" }}
upstream = "api"
strip_prefix = true
filters = [{{ use = "signer", config = {{ secret = "-_8Ad2Vpcg", secret_encoding = "base64" }} }}]
"#
    )
}

async fn start(upstream: &Upstream, settings: &str) -> Weir {
    with_signer(config(&upstream.url(), settings)).start().await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The string the signer signs, as the example's README defines it.
fn canonical(method: &str, path_with_query: &str, timestamp: &str, body: &[u8]) -> String {
    let body_hash = hex(digest::digest(&digest::SHA256, body).as_ref());
    format!("{method}\n{path_with_query}\n{timestamp}\n{body_hash}")
}

/// The signature an upstream expects, in lowercase hex.
fn expected_signature(key: &[u8], canonical: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hex(hmac::sign(&key, canonical.as_bytes()).as_ref())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// Checks one request as the upstream received it on the `/signed/` route, signed between
/// the Unix seconds `sent` and `answered`: the timestamp is in that window and the
/// signature verifies over method, path, timestamp and body.
fn verify_default(req: &Recorded, sent: u64, answered: u64) {
    let signature = req
        .header_str("x-signature")
        .unwrap_or_else(|| panic!("no x-signature upstream: {req:?}"));
    let timestamp = req
        .header_str("x-signature-timestamp")
        .unwrap_or_else(|| panic!("no x-signature-timestamp upstream: {req:?}"));
    let seconds: u64 = timestamp
        .parse()
        .unwrap_or_else(|e| panic!("timestamp {timestamp:?} is not Unix seconds: {e}"));
    assert!(
        (sent..=answered).contains(&seconds),
        "timestamp {seconds} is outside the request's time [{sent}, {answered}]"
    );
    let signed = canonical(&req.method, &req.path, timestamp, &req.body);
    assert_eq!(
        signature,
        expected_signature(SECRET.as_bytes(), &signed),
        "signature of {} {} with a {}-byte body does not verify",
        req.method,
        req.path,
        req.body.len()
    );
    assert!(
        !req.has_header("x-signature-key-id"),
        "no key_id configured"
    );
}

/// Body lengths on and around SHA-256's padding boundaries (55/56 bytes: the length still
/// fits in the last block or not; 64: a whole block) and across several blocks.
const BODY_LENGTHS: &[usize] = &[
    1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 1000, 4096, 65_537,
];

/// A body of `len` bytes that is not all one value.
fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + len) as u8).collect()
}

#[tokio::test]
async fn js_signer_signs_post_bodies_and_the_upstream_verifies_them() {
    let up = Upstream::start(|_, _| Reply::ok().body("signed")).await;
    // Hashing runs in StarlingMonkey's interpreter at a few MB/s: on a busy machine the
    // 200 KiB body below can take longer than the default 100ms call time.
    let weir = start(&up, r#"max_call_time = "30s""#).await;
    let http = client();

    let mut lengths = BODY_LENGTHS.to_vec();
    lengths.push(200 << 10);
    for (i, &len) in lengths.iter().enumerate() {
        let sent = unix_now();
        let resp = http
            .post(weir.url(&format!("/signed/orders?n={len}")))
            .header("content-type", "application/octet-stream")
            .body(body(len))
            .send()
            .await
            .expect("POST through weir");
        assert_eq!(resp.status(), 200, "{len}-byte body");
        assert_eq!(resp.text().await.expect("response body"), "signed");
        let answered = unix_now();

        let req = up.request(i);
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, format!("/orders?n={len}"), "strip_prefix applied");
        assert_eq!(
            req.body.as_ref(),
            body(len).as_slice(),
            "the body is unchanged"
        );
        verify_default(&req, sent, answered);
    }

    // A body signed for one path does not verify for another: the path is in the string.
    let req = up.request(0);
    let signature = req.header_str("x-signature").expect("signature");
    let timestamp = req.header_str("x-signature-timestamp").expect("timestamp");
    let moved = canonical("POST", "/refunds?n=1", timestamp, &req.body);
    assert_ne!(signature, expected_signature(SECRET.as_bytes(), &moved));
}

#[tokio::test]
async fn js_signer_signs_a_get_without_a_body() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    // The filter's defaults: 64 MiB of memory and 100 ms per call are enough without a body.
    let weir = start(&up, "").await;
    let http = client();

    let sent = unix_now();
    let resp = http
        .get(weir.url("/signed/items?page=2&q=a%20b"))
        .send()
        .await
        .expect("GET through weir");
    assert_eq!(resp.status(), 200);
    let answered = unix_now();
    let req = up.request(0);
    assert_eq!(req.method, "GET");
    assert_eq!(req.path, "/items?page=2&q=a%20b");
    assert!(req.body.is_empty());
    verify_default(&req, sent, answered);

    // Every option changed: a hex key longer than a block, another header name (sent in
    // lowercase), no timestamp (an empty line in the signed string), a key id.
    let resp = http
        .get(weir.url("/options/kat?x=1"))
        .send()
        .await
        .expect("GET through weir");
    assert_eq!(resp.status(), 200);
    let req = up.request(1);
    assert_eq!(req.path, "/kat?x=1");
    assert!(!req.has_header("x-signature"), "the header is renamed");
    assert!(
        !req.has_header("x-signature-timestamp"),
        "timestamp = false"
    );
    assert_eq!(req.header_str("x-key"), Some("k-2026"));
    let signature = req.header_str("x-hub-signature").expect("x-hub-signature");
    let signed = canonical("GET", "/kat?x=1", "", b"");
    assert_eq!(signature, expected_signature(&long_key(), &signed));
    // The same value, computed independently once (Python's hmac module), so the test
    // does not rest on `canonical` and `ring` alone.
    assert_eq!(
        signature,
        "5f804c478425aa24ddadcd6c0b1b61ba687868bd0d518a61ba4c71a5b62a4d55"
    );

    // A base64 secret (URL-safe alphabet, no padding) decodes to the bytes it stands for.
    let sent = unix_now();
    let resp = http
        .delete(weir.url("/b64/items/7"))
        .send()
        .await
        .expect("DELETE through weir");
    assert_eq!(resp.status(), 200);
    let answered = unix_now();
    let req = up.request(2);
    let timestamp = req.header_str("x-signature-timestamp").expect("timestamp");
    let seconds: u64 = timestamp.parse().expect("Unix seconds");
    assert!((sent..=answered).contains(&seconds), "{seconds}");
    let signed = canonical("DELETE", "/items/7", timestamp, b"");
    assert_eq!(
        req.header_str("x-signature"),
        Some(expected_signature(B64_KEY, &signed).as_str())
    );
}

#[tokio::test]
async fn js_signer_refuses_a_config_without_a_secret() {
    let bad = |filter_config: &str| {
        format!(
            r#"[listen]
addr = "127.0.0.1:0"

[upstreams.api]
url = "http://127.0.0.1:9"

[filters.signer]
wasm = "filters/signer.wasm"
config = {filter_config}

[[routes]]
name = "api"
upstream = "api"
filters = ["signer"]
"#
        )
    };

    // `weir check` names the filter, the route and the missing key.
    let (code, stdout, stderr) = with_signer(bad("{}")).check();
    assert_ne!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("init rejected its config"))
        .unwrap_or_else(|| panic!("no init error in stderr: {stderr}"));
    assert!(line.contains("filter `signer` on route `api`"), "{line}");
    assert!(line.contains("`secret` is missing"), "{line}");

    // weir itself refuses to start with an empty secret.
    with_signer(bad(r#"{ secret = "" }"#))
        .refused("`secret` is empty")
        .await;

    // A secret that is not what `secret_encoding` says is an error that does not repeat it.
    let secret = "not-hex-at-all-0123";
    let (code, _, stderr) = with_signer(bad(&format!(
        r#"{{ secret = "{secret}", secret_encoding = "hex" }}"#
    )))
    .check();
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("`secret` is not valid hex"), "{stderr}");
    assert!(
        !stderr.contains(secret),
        "the error repeats the secret: {stderr}"
    );
}
