//! `weir:filter/outbound` end to end: a filter calls the upstreams its config allows and
//! nothing else; and a component built against `weir:filter@0.1.0` still runs.

use std::time::{Duration, Instant};

use crate::support::SLACK;
use crate::support::client::client;
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::WeirBuilder;

fn config(main: &str, side: &str, call: &str, outbound: &str) -> String {
    format!(
        r#"[listen]
addr = "127.0.0.1:0"

[upstreams.main]
url = "{main}"

[upstreams.side]
url = "{side}"

[filters.caller]
wasm = "filters/scripted.wasm"
outbound = [{outbound}]
config = {{ tag = "c", call = "{call}" }}

[[routes]]
name = "r"
upstream = "main"
filters = ["caller"]
"#
    )
}

#[tokio::test]
async fn a_filter_calls_an_allowed_upstream() {
    let main = Upstream::start(|_, _| Reply::ok()).await;
    let side = Upstream::start(|_, _| Reply::new(202).body("hooked")).await;
    let weir = WeirBuilder::new(config(&main.url(), &side.url(), "side", "\"side\""))
        .copy("filters/scripted.wasm", env!("WEIR_TEST_SCRIPTED"))
        .start()
        .await;
    let r = client().get(weir.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let hook = side.wait_for(1).await;
    assert_eq!(hook[0].path, "/hook");
    assert_eq!(hook[0].header_str("x-from-filter"), Some("c"));
    let seen = main.wait_for(1).await;
    assert_eq!(seen[0].header_str("x-outbound"), Some("status 202"));
}

#[tokio::test]
async fn an_outbound_call_ends_at_the_route_deadline() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let main = Upstream::start(|_, _| Reply::ok()).await;
    // Never answers: without the deadline the call would wait out its 30 s cap, far
    // past TIMEOUT + SLACK.
    let side = Upstream::start(|_, _| Reply::hang()).await;
    // The route is the config's last table: the line is one of its keys.
    let text = format!(
        "{}timeout = \"{}ms\"\n",
        config(&main.url(), &side.url(), "side", "\"side\""),
        TIMEOUT.as_millis()
    );
    let weir = WeirBuilder::new(text)
        .copy("filters/scripted.wasm", env!("WEIR_TEST_SCRIPTED"))
        .start()
        .await;
    let started = Instant::now();
    let r = client().get(weir.url("/x")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 504);
    let json: serde_json::Value = r.json().await.expect("weir's JSON error");
    assert_eq!(json["error"], "timeout", "{json}");
    assert_eq!(side.wait_for(1).await[0].path, "/hook", "the call was made");
    assert!(took >= TIMEOUT, "504 after {took:?}, before the deadline");
    assert!(
        took < TIMEOUT + SLACK,
        "504 after {took:?}: the outbound call outlived the {TIMEOUT:?} route timeout"
    );
}

#[tokio::test]
async fn a_call_to_an_upstream_not_in_the_filters_list_is_refused() {
    let main = Upstream::start(|_, _| Reply::ok()).await;
    let side = Upstream::start(|_, _| Reply::ok()).await;
    // The filter may call `main` only, and tries `side`.
    let weir = WeirBuilder::new(config(&main.url(), &side.url(), "side", "\"main\""))
        .copy("filters/scripted.wasm", env!("WEIR_TEST_SCRIPTED"))
        .start()
        .await;
    let r = client().get(weir.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = main.wait_for(1).await;
    assert_eq!(
        seen[0].header_str("x-outbound"),
        Some("error not-allowed: upstream `side` is not in this filter's outbound list (main)")
    );
    assert_eq!(side.count(), 0, "a refused call reaches nobody");
}

#[tokio::test]
async fn an_outbound_list_naming_an_unknown_upstream_is_a_config_error() {
    let text = config(
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
        "side",
        "\"nowhere\"",
    );
    let (code, _, stderr) = crate::support::weir::check(
        &text,
        &[(
            "filters/scripted.wasm",
            &std::fs::read(env!("WEIR_TEST_SCRIPTED")).unwrap(),
        )],
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains(
            "filter `caller`: outbound names unknown upstream `nowhere` (defined: `main`, `side`)"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_component_built_against_wit_0_1_0_still_runs() {
    let main = Upstream::start(|_, _| Reply::ok()).await;
    let weir = WeirBuilder::new(format!(
        r#"[listen]
addr = "127.0.0.1:0"

[upstreams.main]
url = "{}"

[filters.legacy]
wasm = "filters/legacy.wasm"

[[routes]]
name = "r"
upstream = "main"
filters = ["legacy", "headers"]
"#,
        main.url()
    ))
    .copy("filters/legacy.wasm", env!("WEIR_TEST_LEGACY"))
    .start()
    .await;
    let r = client().get(weir.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-legacy"], "0.1.0");
    assert_eq!(
        main.wait_for(1).await[0].header_str("x-legacy"),
        Some("0.1.0")
    );
}

/// 0.2.1 only added methods: a component built against 0.2.0 links to weir's 0.2.1 and
/// runs beside the standard filters (built against 0.2.1), its memo and changes intact.
#[tokio::test]
async fn a_component_built_against_wit_0_2_0_still_runs() {
    let main = Upstream::start(|_, _| Reply::ok()).await;
    let weir = WeirBuilder::new(format!(
        r#"[listen]
addr = "127.0.0.1:0"

[upstreams.main]
url = "{}"

[upstreams.gone]
url = "http://127.0.0.1:{}"

[filters.v020]
wasm = "filters/v020.wasm"

[[routes]]
name = "gone"
match = {{ path_prefix = "/gone" }}
upstream = "gone"
filters = ["v020"]

[[routes]]
name = "r"
upstream = "main"
filters = ["v020", {{ use = "headers", config = {{ request = {{ set = {{ "x-std" = "0.2.1" }} }} }} }}]
"#,
        main.url(),
        crate::support::upstream::closed_port()
    ))
    .copy("filters/v020.wasm", env!("WEIR_TEST_V020"))
    .start()
    .await;
    let r = client()
        .get(weir.url("/x?q=1"))
        .header("x-drop", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-v020-memo"], "/x?q=1");
    let seen = &main.wait_for(1).await[0];
    assert_eq!(seen.header_str("x-v020"), Some("0.2.0"));
    assert_eq!(seen.header_str("x-std"), Some("0.2.1"));
    assert_eq!(seen.header_str("x-drop"), None);

    // No upstream response: the 0.2.0 `error` import still says why.
    let r = client().get(weir.url("/gone")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-v020-error"], "connect-failed");
}
