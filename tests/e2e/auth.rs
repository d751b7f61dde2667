//! The `auth` filter end to end: credentials from environment variables and files reach
//! the upstream; a missing one stops `weir check` and `weir run`; the OAuth2 token is
//! fetched once for many requests, again after it expires, and once more on a 401; and
//! no secret shows in weir's log, `/status`, `/requests` or `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::support::WAIT;
use crate::support::client::client;
use crate::support::upstream::{Recorded, Reply, Upstream};
use crate::support::weir::{Weir, WeirBuilder};

// Secrets, each distinctive enough that finding it anywhere is a leak.
const BEARER: &str = "sk_live_ENVSECRET_7f3a";
const PASSWORD: &str = "pw_FILESECRET_3c4d";
/// base64("svc:" + PASSWORD): a leak of the Basic header as sent.
const BASIC_B64: &str = "c3ZjOnB3X0ZJTEVTRUNSRVRfM2M0ZA==";
const HEADER_KEY: &str = "hk_FILESECRET_5e6f";
const QUERY_KEY: &str = "qk_ENVSECRET_a1b2";
const SIGNATURE: &str = "sig_ENVSECRET_c3d4";
const CLIENT_SECRET: &str = "cs_FILESECRET_91b2";
/// base64("weir-e2e:" + CLIENT_SECRET): the token request's Basic header.
const CLIENT_B64: &str = "d2Vpci1lMmU6Y3NfRklMRVNFQ1JFVF85MWIy";
/// The access tokens the test endpoint issues are `AT_SECRET_<n>`.
const TOKEN_PREFIX: &str = "AT_SECRET_";

/// The env vars and files that hold the static secrets.
fn with_static_secrets(b: WeirBuilder) -> WeirBuilder {
    b.env("E2E_AUTH_BEARER", BEARER)
        .env("E2E_AUTH_QUERY_KEY", QUERY_KEY)
        .env("E2E_AUTH_SIGNATURE", SIGNATURE)
        .file("secrets/password", format!("{PASSWORD}\n"))
        .file("secrets/header-key", format!("{HEADER_KEY}\r\n"))
}

fn static_config(upstream: &str) -> String {
    format!(
        r#"[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{upstream}"

[[routes]]
name = "bearer"
match = {{ path_prefix = "/bearer/" }}
upstream = "api"
filters = [{{ use = "auth", config = {{ bearer = {{ token = {{ env = "E2E_AUTH_BEARER" }} }} }} }}]

[[routes]]
name = "basic"
match = {{ path_prefix = "/basic/" }}
upstream = "api"
filters = [{{ use = "auth", config = {{ basic = {{ username = "svc", password = {{ file = "secrets/password" }} }} }} }}]

[[routes]]
name = "header"
match = {{ path_prefix = "/header/" }}
upstream = "api"
filters = [{{ use = "auth", config = {{ api_key = {{ header = "x-api-key", value = {{ file = "secrets/header-key" }} }} }} }}]

[[routes]]
name = "query"
match = {{ path_prefix = "/query/" }}
upstream = "api"
filters = [{{ use = "auth", config = {{ api_key = {{ query = "api_key", value = {{ env = "E2E_AUTH_QUERY_KEY" }} }} }} }}]

[[routes]]
name = "custom"
match = {{ path_prefix = "/custom/" }}
upstream = "api"
filters = [{{ use = "auth", config = {{ headers = {{ x-tenant = "acme", x-signature = {{ env = "E2E_AUTH_SIGNATURE" }} }} }} }}]
"#
    )
}

/// A token endpoint issuing `AT_SECRET_<n>` for its n-th call (from 1), valid for
/// `expires_in` seconds; `fail` makes it answer 500 instead.
async fn token_endpoint(expires_in: u64, fail: Arc<AtomicBool>) -> Upstream {
    Upstream::start(move |_, i| {
        if fail.load(Ordering::SeqCst) {
            return Reply::new(500).body("token service down");
        }
        Reply::ok().json(&json!({
            "access_token": format!("{TOKEN_PREFIX}{}", i + 1),
            "token_type": "bearer",
            "expires_in": expires_in,
        }))
    })
    .await
}

/// An API that refuses `AT_SECRET_1` with 401 when `refuse_first` and echoes the token
/// number and body otherwise.
async fn api(refuse_first: bool) -> Upstream {
    Upstream::start(move |req, _| {
        let auth = req
            .header_str("authorization")
            .unwrap_or_default()
            .to_owned();
        if refuse_first && auth == format!("Bearer {TOKEN_PREFIX}1") {
            return Reply::new(401).header("www-authenticate", "Bearer error=\"invalid_token\"");
        }
        let n = auth
            .strip_prefix(&format!("Bearer {TOKEN_PREFIX}"))
            .unwrap_or("none");
        Reply::ok().body(format!("token {n}; body {}", req.body_str()))
    })
    .await
}

fn oauth_config(api: &str, oauth: &str, refresh_before: &str, reissue: bool) -> String {
    let reissue = if reissue {
        r#", reissue_upstream = "api""#
    } else {
        ""
    };
    format!(
        r#"[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{api}"

[upstreams.oauth]
url = "{oauth}"

[filters.auth]
outbound = ["oauth", "api"]
config = {{ oauth2 = {{ upstream = "oauth", client_id = "weir-e2e", client_secret = {{ file = "secrets/client-secret" }}, scope = "orders:read orders:write", refresh_before = "{refresh_before}"{reissue} }} }}

[[routes]]
name = "api"
upstream = "api"
timeout = "20s"
filters = ["auth"]
"#
    )
}

async fn start_oauth(
    api: &Upstream,
    oauth: &Upstream,
    refresh_before: &str,
    reissue: bool,
) -> Weir {
    WeirBuilder::new(oauth_config(
        &api.url(),
        &oauth.url(),
        refresh_before,
        reissue,
    ))
    .file("secrets/client-secret", format!("{CLIENT_SECRET}\n"))
    .env("RUST_LOG", "debug")
    .start()
    .await
}

async fn get(weir: &Weir, path: &str) -> (u16, String) {
    let r = client()
        .get(weir.url(path))
        .send()
        .await
        .expect("request to weir");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

async fn admin_text(weir: &Weir, path: &str) -> String {
    let r = client()
        .get(weir.admin_url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET admin {path}: {e}"));
    assert_eq!(r.status(), 200, "GET admin {path}");
    r.text().await.expect("admin body")
}

/// Everything weir shows an operator: its log so far, `/status`, `/metrics`,
/// `/requests` and every recorded request in full.
async fn everything_shown(weir: &Weir) -> String {
    let mut shown = weir.logs();
    // The secrets must stay out of even the most detailed log.
    assert!(
        shown.contains(" DEBUG "),
        "weir runs with RUST_LOG=debug:\n{shown}"
    );
    for path in ["/status", "/metrics", "/requests?limit=1000"] {
        shown.push_str(&admin_text(weir, path).await);
    }
    let list: Value =
        serde_json::from_str(&admin_text(weir, "/requests?limit=1000").await).unwrap();
    let ids: Vec<String> = list["requests"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| r["id"].as_str().expect("an id").to_owned())
        .collect();
    assert!(!ids.is_empty(), "/requests recorded nothing");
    for id in ids {
        shown.push_str(&admin_text(weir, &format!("/requests/{id}")).await);
    }
    shown
}

fn assert_hidden(shown: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!shown.contains(s), "secret {s:?} is shown:\n{shown}");
    }
}

/// Sends `n` GETs, `at_once` at a time; returns the statuses.
async fn burst(weir: &Weir, n: usize, at_once: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    let url = weir.url("/orders");
    for _ in 0..n / at_once {
        let mut set = JoinSet::new();
        for _ in 0..at_once {
            let (c, url) = (client(), url.clone());
            set.spawn(async move { c.get(url).send().await.expect("request").status().as_u16() });
        }
        statuses.extend(set.join_all().await);
    }
    statuses
}

#[tokio::test]
async fn credentials_from_env_and_files_reach_the_upstream_and_nowhere_else() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = with_static_secrets(WeirBuilder::new(static_config(&up.url())))
        .env("RUST_LOG", "debug")
        .start()
        .await;
    for path in [
        "/bearer/a",
        "/basic/a",
        "/header/a",
        "/query/a?x=1&api_key=forged",
        "/custom/a",
    ] {
        let r = client()
            .get(weir.url(path))
            .header("authorization", "Bearer client-own")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let seen = up.wait_for(5).await;
    let by_path = |prefix: &str| -> &Recorded {
        seen.iter()
            .find(|r| r.path.starts_with(prefix))
            .unwrap_or_else(|| panic!("no request for {prefix}"))
    };
    assert_eq!(
        by_path("/bearer/").header_str("authorization"),
        Some(format!("Bearer {BEARER}").as_str())
    );
    assert_eq!(
        by_path("/basic/").header_str("authorization"),
        Some(format!("Basic {BASIC_B64}").as_str()),
        "the password file's trailing newline is not part of the password"
    );
    let header = by_path("/header/");
    assert_eq!(
        header.header_str("x-api-key"),
        Some(HEADER_KEY),
        "\\r\\n trimmed"
    );
    assert_eq!(
        header.header_str("authorization"),
        Some("Bearer client-own")
    );
    assert_eq!(
        by_path("/query/").path,
        format!("/query/a?x=1&api_key={QUERY_KEY}")
    );
    let custom = by_path("/custom/");
    assert_eq!(custom.header_str("x-tenant"), Some("acme"));
    assert_eq!(custom.header_str("x-signature"), Some(SIGNATURE));

    let shown = everything_shown(&weir).await;
    assert!(
        shown.contains("/query/a?x=1&api_key=forged"),
        "/requests shows the client's path"
    );
    assert_hidden(
        &shown,
        &[
            BEARER, PASSWORD, BASIC_B64, HEADER_KEY, QUERY_KEY, SIGNATURE,
        ],
    );
}

#[tokio::test]
async fn a_missing_secret_fails_weir_check_and_weir_run_naming_it_and_the_filter() {
    let config = static_config("http://127.0.0.1:1");
    // Every variable but the bearer token's, and no password file.
    let builder = || {
        WeirBuilder::new(config.clone())
            .env("E2E_AUTH_QUERY_KEY", QUERY_KEY)
            .env("E2E_AUTH_SIGNATURE", SIGNATURE)
            .file("secrets/header-key", HEADER_KEY)
    };
    let (code, _, stderr) = builder().check();
    assert_ne!(code, 0, "{stderr}");
    // Each error points at the route's use of the filter, inside `filters = [`.
    let line_of = |needle: &str| config.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let bearer = format!(
        "weir.toml:{}:12: filter `auth`: config `bearer.token`: environment variable \
         E2E_AUTH_BEARER is not set",
        line_of("bearer = {")
    );
    assert!(stderr.contains(&bearer), "want {bearer:?} in:\n{stderr}");
    let basic = format!(
        "weir.toml:{}:12: filter `auth`: config `basic.password`: cannot read ",
        line_of("basic = {")
    );
    assert!(stderr.contains(&basic), "want {basic:?} in:\n{stderr}");
    assert!(stderr.contains("secrets/password"), "{stderr}");
    assert!(
        !stderr.contains(QUERY_KEY) && !stderr.contains(SIGNATURE),
        "{stderr}"
    );

    let err = match builder().try_start().await {
        Ok(_) => panic!("weir started without its secrets"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("environment variable E2E_AUTH_BEARER is not set"),
        "{err}"
    );
}

#[tokio::test]
async fn one_token_request_serves_100_concurrent_requests() {
    let oauth = token_endpoint(3600, Arc::default()).await;
    let api = api(false).await;
    let weir = start_oauth(&api, &oauth, "30s", false).await;
    let statuses = burst(&weir, 100, 20).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(oauth.count(), 1, "one token request for 100 requests");
    let seen = api.wait_for(100).await;
    let want = format!("Bearer {TOKEN_PREFIX}1");
    assert!(
        seen.iter()
            .all(|r| r.header_str("authorization") == Some(want.as_str()))
    );

    // The token request itself (RFC 6749 §4.4.2, client authentication per §2.3.1).
    let t = &oauth.requests()[0];
    assert_eq!(
        (t.method.as_str(), t.path.as_str()),
        ("POST", "/oauth/token")
    );
    assert_eq!(
        t.header_str("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        t.header_str("authorization"),
        Some(format!("Basic {CLIENT_B64}").as_str())
    );
    assert_eq!(
        t.body_str(),
        "grant_type=client_credentials&scope=orders%3Aread+orders%3Awrite"
    );
}

#[tokio::test]
async fn the_token_is_fetched_again_once_it_expires() {
    // Valid 2 s, replaced 1 s before: cached for 1 s.
    let oauth = token_endpoint(2, Arc::default()).await;
    let api = api(false).await;
    let weir = start_oauth(&api, &oauth, "1s", false).await;
    assert_eq!(get(&weir, "/orders").await, (200, "token 1; body ".into()));
    assert_eq!(oauth.count(), 1);
    // One request at a time until one carries the second token.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = get(&weir, "/orders").await;
        assert_eq!(status, 200, "{body}");
        if body.starts_with("token 2;") {
            break;
        }
        assert_eq!(body, "token 1; body ", "tokens are used in order");
        assert!(Instant::now() < deadline, "no second token within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fetches = oauth.requests();
    assert_eq!(fetches.len(), 2);
    let cached_for = fetches[1].received_at - fetches[0].received_at;
    assert!(
        cached_for >= Duration::from_secs(1),
        "the first token was cached for only {cached_for:?}"
    );
}

#[tokio::test]
async fn a_401_refreshes_the_token_once_and_the_client_gets_the_resent_answer() {
    let oauth = token_endpoint(3600, Arc::default()).await;
    let api = api(true).await;
    let weir = start_oauth(&api, &oauth, "30s", true).await;
    let r = client()
        .post(weir.url("/orders?dry=1"))
        .header("content-type", "text/plain")
        .body("payload-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "token 2; body payload-1");
    assert_eq!(oauth.count(), 2, "one refresh");
    let seen = api.wait_for(2).await;
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].header_str("authorization"),
        Some(format!("Bearer {TOKEN_PREFIX}1").as_str())
    );
    let again = &seen[1];
    assert_eq!(
        (again.method.as_str(), again.path.as_str()),
        ("POST", "/orders?dry=1")
    );
    assert_eq!(
        again.header_str("authorization"),
        Some(format!("Bearer {TOKEN_PREFIX}2").as_str())
    );
    assert_eq!(again.header_str("content-type"), Some("text/plain"));
    assert_eq!(again.body_str(), "payload-1");

    // The refreshed token is the cached one now.
    assert_eq!(get(&weir, "/orders").await, (200, "token 2; body ".into()));
    assert_eq!(oauth.count(), 2);

    let shown = everything_shown(&weir).await;
    assert_hidden(
        &shown,
        &[
            CLIENT_SECRET,
            CLIENT_B64,
            &format!("{TOKEN_PREFIX}1"),
            &format!("{TOKEN_PREFIX}2"),
        ],
    );
}

#[tokio::test]
async fn without_reissue_a_401_passes_on_and_the_next_request_gets_a_new_token() {
    let oauth = token_endpoint(3600, Arc::default()).await;
    let api = api(true).await;
    let weir = start_oauth(&api, &oauth, "30s", false).await;
    assert_eq!(get(&weir, "/orders").await.0, 401);
    assert_eq!(get(&weir, "/orders").await, (200, "token 2; body ".into()));
    assert_eq!(oauth.count(), 2);
}

#[tokio::test]
async fn a_failing_token_endpoint_answers_503_and_sends_nothing_unauthenticated() {
    let fail = Arc::new(AtomicBool::new(true));
    let oauth = token_endpoint(3600, fail.clone()).await;
    let api = api(false).await;
    let weir = start_oauth(&api, &oauth, "30s", false).await;
    let (status, body) = get(&weir, "/orders").await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "token_unavailable");
    assert_eq!(body["message"], "auth: token endpoint answered 500");
    assert_eq!(body["route"], "api");
    assert_eq!(api.count(), 0, "nothing reached the upstream");
    // The filter's warning reaches weir's log (so the log is worth searching below).
    weir.wait_for_log("token endpoint answered 500", WAIT).await;
    // Once the endpoint is back, the next request gets a token.
    fail.store(false, Ordering::SeqCst);
    assert_eq!(get(&weir, "/orders").await, (200, "token 2; body ".into()));
    assert_hidden(&everything_shown(&weir).await, &[CLIENT_SECRET, CLIENT_B64]);
}
