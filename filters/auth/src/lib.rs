//! `auth`: weir's standard credentials filter. It adds the credentials an upstream wants
//! to every request of a route: a bearer token, HTTP Basic, an API key in a header or the
//! query, custom headers, or an OAuth2 access token (client credentials grant) that it
//! fetches, caches and refreshes itself.
//!
//! Credentials replace whatever the client sent under the same header (or query
//! parameter), so a client can neither forge nor leak them.
//!
//! # Secrets
//!
//! Every value below may be written inline, but credentials belong elsewhere: write
//! `{ env = "NAME" }` or `{ file = "path" }` instead of the string. weir resolves these
//! for every filter's config before `init` (a filter has no environment and no files):
//! the variable's value, or the file's contents with trailing newlines removed, the path
//! relative to the config file. A variable that is not set or a file that cannot be read
//! is a config error at `weir check` and at load, with the file, line and column of the
//! filter. Secret files are read again on every reload. Any table of exactly one of
//! these forms, anywhere in any filter's config, is read this way, so a value that must
//! stay a literal `{ env = "…" }` table cannot be written in a filter's config.
//!
//! Values never appear in weir's logs, in `/status`, or in `/requests` (which records the
//! client's request as it arrived, before filters), and init errors name the key at fault,
//! never its value.
//!
//! # Config reference
//!
//! At least one section must be set. `bearer`, `basic`, `oauth2` and a header named
//! `authorization` all set `Authorization`, so at most one of them may be used; no two
//! sections may set the same header. Unknown keys are errors.
//!
//! | key | type | default | meaning |
//! | --- | --- | --- | --- |
//! | `bearer.token` | secret | required | sends `Authorization: Bearer <token>` |
//! | `basic.username` | string (no `:`) | required | sends `Authorization: Basic base64(username:password)` (RFC 7617) |
//! | `basic.password` | secret | required | |
//! | `api_key.header` | header name | one of `header`, `query` | sends the key in this header |
//! | `api_key.query` | string | one of `header`, `query` | appends `name=value` to the query, percent-encoded, replacing any parameter of that name the client sent |
//! | `api_key.value` | secret | required | the key |
//! | `headers` | table of header name → secret or string | `{}` | more headers to set, e.g. a tenant id or a signature |
//! | `oauth2.upstream` | upstream name | required | the token endpoint's upstream; it must be listed in `[filters.auth] outbound` |
//! | `oauth2.token_path` | path | `"/oauth/token"` | where to `POST` the token request |
//! | `oauth2.client_id` | string | required | |
//! | `oauth2.client_secret` | secret | required | |
//! | `oauth2.scope` | string | none | sent as `scope` |
//! | `oauth2.audience` | string | none | sent as `audience` (Auth0, Okta) |
//! | `oauth2.client_auth` | `"basic"` or `"body"` | `"basic"` | how the client authenticates (RFC 6749 §2.3.1): HTTP Basic with the form-encoded id and secret, or both in the form body |
//! | `oauth2.refresh_before` | duration | `"30s"` | how long before its expiry a token is replaced |
//! | `oauth2.timeout` | duration, up to 30s | `"10s"` | the token request's timeout (and the route deadline) |
//! | `oauth2.reissue_upstream` | upstream name | none | the route's upstream, to re-send a request refused with 401 with a fresh token; it must be listed in `outbound` |
//!
//! Durations are a whole number and a unit: `"250ms"`, `"30s"`, `"1m"`, `"1h"`.
//!
//! # Example
//!
//! ```toml
//! [upstreams.stripe]
//! url = "https://api.stripe.com"
//!
//! [upstreams.partner]
//! url = "https://api.partner.example"
//!
//! [upstreams.oauth]
//! url = "https://login.partner.example"
//!
//! [filters.auth]
//! # The token endpoint, and the upstream a 401 is re-sent to.
//! outbound = ["oauth", "partner"]
//!
//! [[routes]]
//! name = "stripe"
//! match = { path_prefix = "/stripe/" }
//! strip_prefix = true
//! upstream = "stripe"
//! filters = [
//!   { use = "auth", config = { bearer = { token = { env = "STRIPE_KEY" } } } },
//! ]
//!
//! [[routes]]
//! name = "partner"
//! match = { path_prefix = "/partner/" }
//! strip_prefix = true
//! upstream = "partner"
//! filters = [
//!   { use = "auth", config = { oauth2 = { upstream = "oauth", token_path = "/oauth2/token", client_id = "weir-prod", client_secret = { file = "secrets/partner-client-secret" }, scope = "orders:read orders:write", reissue_upstream = "partner" }, headers = { x-partner-tenant = "acme" } } },
//! ]
//! ```
//!
//! # OAuth2 client credentials
//!
//! 1. **Token request** (RFC 6749 §4.4): `POST token_path` on `oauth2.upstream` through
//!    weir's `outbound`, `content-type: application/x-www-form-urlencoded`, body
//!    `grant_type=client_credentials` with `scope` and `audience` when set, client
//!    authentication as `client_auth` says. A 2xx JSON answer with `access_token`,
//!    `token_type` `Bearer` (any case, or absent) and `expires_in` (seconds; 300 when
//!    absent) is a token. The request then goes on with `Authorization: Bearer <token>`.
//! 2. **Cache**: the token is kept in weir's state store, shared by every instance and
//!    route, under a key made from (`upstream`, `token_path`, `client_id`, `scope`,
//!    `audience`), for `expires_in − refresh_before` (half of `expires_in` when that is
//!    shorter). Every request until then uses it; the first request after fetches a new one.
//! 3. **One fetch at a time**: the request that finds no token takes a short lock in the
//!    state store (compare-and-swap; it expires by itself `timeout` + 1 s later) and
//!    fetches; the others answer `wait` and look again every 10 ms, within the route
//!    deadline (past it weir answers 504). So a burst of requests costs one token request.
//! 4. **Failure**: when the token endpoint fails, answers non-2xx or sends no usable token,
//!    the request is **not** sent unauthenticated: the client gets 503 with
//!    `{"error": "token_unavailable", "message": "auth: token endpoint answered 500",
//!    "route", "request_id"}`, and the next request tries again.
//! 5. **401**: when the upstream answers 401 to a request that carried a cached token, that
//!    token is dropped (only if it is still the cached one: a token another request
//!    fetched since stays). With `reissue_upstream`, the filter then fetches a fresh token
//!    and re-sends the request **once** itself, through `outbound`, with the same method,
//!    path, headers and body, and the client gets that second answer (a second 401 is
//!    passed on, and its token kept). Without it, the 401 is passed on and the next
//!    request gets a fresh token. weir's `retry` cannot do this: a retry re-runs only the
//!    filters after the one that asked, so it would re-send the old token.
//!
//! `reissue_upstream` needs the request body on the way back, so with it the filter
//! asks weir for request bodies (buffered up to the listener's `max_body_bytes`), and
//! reads the body from weir only when it re-sends. It must name the route's own upstream: the filter sees only the
//! upstream's origin, not its name.
//!
//! # State and metrics
//!
//! Keys (weir prefixes them with `auth/`): `token:<upstream>:<hash>` holds the access
//! token, `lock:<upstream>:<hash>` the fetch lock. If the state store fails, each request
//! fetches its own token. Token requests count in
//! `weir_filter_auth_token_fetches_total{result="ok"|"error"}`; failures are logged at
//! `warn`, without any credential.

// The SDK keeps all the unsafe ABI glue in its own crate; a filter needs none.
#![forbid(unsafe_code)]

mod config;
mod encode;
mod oauth2;

use std::time::Duration;

use weir_filter::outbound::{OutboundError, OutboundRequest, OutboundResponse};
use weir_filter::serde_json::{Value, json};
use weir_filter::{
    Filter, Info, Outcome, Phases, Request, RequestAction, RequestEdit, RequestInfo, Response,
    ResponseAction,
};

pub use config::{Settings, parse_duration, scrub};
pub use encode::{base64, form, form_encode, percent_encode, with_query_param};
pub use oauth2::{
    ClientAuth, DEFAULT_LIFETIME, Env, Issued, OAuth2, Token, cache_ttl, parse_token,
};

/// How long a request waits before looking for a token again while another fetches it.
pub const POLL_MS: u32 = 10;

/// weir's cap on an outbound call.
const MAX_OUTBOUND: Duration = Duration::from_secs(30);

/// Headers never copied between a re-issued request or its response and the client's:
/// weir sets them, or they describe one connection.
const NOT_COPIED: [&str; 10] = [
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// The filter: validated settings; the OAuth2 token lives in the state store.
pub struct Auth {
    settings: Settings,
}

impl Filter for Auth {
    // Parsed section by section in `new`, so errors can be kept free of values.
    type Config = Value;
    const NAME: &'static str = "auth";

    fn new(config: Value) -> Result<Self, String> {
        Ok(Auth {
            settings: Settings::from_json(config)?,
        })
    }

    fn info(&self) -> Info {
        let oauth2 = self.settings.oauth2.as_ref();
        Info {
            // Only OAuth2 has anything to do on the way back (a 401 to its token); static
            // credentials are done once the request goes on.
            phases: if oauth2.is_some() {
                Phases::BOTH
            } else {
                Phases::REQUEST
            },
            wants_request_body: oauth2.is_some_and(|o| o.reissue_upstream().is_some()),
            ..Info::default()
        }
    }

    fn on_request(&mut self, info: &RequestInfo, req: &Request) -> RequestAction {
        self.request(&Host, info, req)
    }

    fn on_response(
        &mut self,
        info: &RequestInfo,
        req: &Request,
        memo: Option<Vec<u8>>,
        outcome: &Outcome,
    ) -> ResponseAction {
        self.response(&Host, info, req, memo, outcome)
    }
}

weir_filter::export_filter!(Auth);

// === impl Auth ===

impl Auth {
    /// The validated settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// `on_request`: add the credentials, fetching an OAuth2 token first if needed.
    pub fn request(&self, env: &impl Env, info: &RequestInfo, req: &Request) -> RequestAction {
        let mut edit = RequestEdit::new();
        for (name, value) in &self.settings.headers {
            edit = edit.set_header(name.as_str(), value.clone());
        }
        if let Some((name, value)) = &self.settings.query {
            edit = edit.path_with_query(with_query_param(req.path_with_query(), name, value));
        }
        let mut memo = None;
        if let Some(o) = &self.settings.oauth2 {
            match o.token(env, &owner(info), budget(info), true, None) {
                Token::Ready(token) => {
                    // The body stays in weir until a 401 needs it re-sent.
                    memo = Some(Memo::encode(oauth2::fingerprint(token.as_bytes())));
                    edit = edit.set_header("authorization", format!("Bearer {token}"));
                }
                Token::Busy => return RequestAction::Wait(POLL_MS),
                Token::Failed(why) => return RequestAction::Respond(unavailable(info, req, &why)),
            }
        }
        RequestAction::proceed_with(Some(edit), memo)
    }

    /// `on_response`: on a 401 to an OAuth2 token, drop the token and, if configured,
    /// re-send the request once with a fresh one.
    pub fn response(
        &self,
        env: &impl Env,
        info: &RequestInfo,
        req: &Request,
        memo: Option<Vec<u8>>,
        outcome: &Outcome,
    ) -> ResponseAction {
        let (Some(o), Some(401), Some(refused)) = (
            &self.settings.oauth2,
            outcome.status(),
            memo.and_then(Memo::decode),
        ) else {
            return ResponseAction::proceed();
        };
        o.invalidate(env, refused);
        let Some(via) = o.reissue_upstream() else {
            return ResponseAction::proceed();
        };
        if info.remaining_ms() == 0 {
            return ResponseAction::proceed();
        }
        let token = match o.token(env, &owner(info), budget(info), false, Some(refused)) {
            Token::Ready(t) => t,
            Token::Busy => return ResponseAction::proceed(),
            Token::Failed(why) => return ResponseAction::Respond(unavailable(info, req, &why)),
        };
        let mut out = OutboundRequest::new(via, req.method(), req.path_with_query())
            .timeout(budget(info).min(MAX_OUTBOUND));
        out.headers = copyable(req.headers());
        out = out.header("authorization", format!("Bearer {token}"));
        // One copy of the body in the filter's memory, straight from weir.
        if let Some(body) = req.body_vec().filter(|b| !b.is_empty()) {
            out = out.body(body);
        }
        match env.send(out) {
            Ok(resp) => {
                if resp.status == 401 {
                    env.warn(
                        "the upstream refused a freshly fetched token too; passing its 401 on",
                    );
                }
                ResponseAction::Respond(reissued(resp))
            }
            Err(OutboundError::NotAllowed(m) | OutboundError::Invalid(m)) => {
                env.warn(&format!("cannot re-send the request after a 401: {m}"));
                ResponseAction::proceed()
            }
            Err(OutboundError::Upstream(e)) => ResponseAction::Respond(failure(
                502,
                "upstream_failed",
                info,
                req,
                &format!(
                    "re-sending the request after a 401 failed: {}",
                    oauth2::upstream_error(e)
                ),
            )),
            Err(OutboundError::TooLarge) => ResponseAction::Respond(failure(
                502,
                "upstream_failed",
                info,
                req,
                "the answer to the re-sent request was larger than weir's body limit",
            )),
        }
    }
}

/// Marks the fetch lock with the request that holds it: weir's own request id, unique
/// per request (a client's `x-request-id` may repeat), and the try.
fn owner(info: &RequestInfo) -> String {
    format!("{}:{}", info.id(), info.attempt())
}

/// What is left of the route deadline.
fn budget(info: &RequestInfo) -> Duration {
    Duration::from_millis(info.remaining_ms().max(1))
}

/// The 503 for a request that cannot get a token.
fn unavailable(info: &RequestInfo, req: &Request, why: &str) -> Response {
    failure(503, "token_unavailable", info, req, why)
}

/// weir's JSON error shape, with the message naming this filter.
fn failure(status: u16, error: &str, info: &RequestInfo, req: &Request, message: &str) -> Response {
    Response::json(
        status,
        &json!({
            "error": error,
            "message": format!("auth: {message}"),
            "route": info.route(),
            "request_id": req.request_id().as_deref().unwrap_or(info.id()),
        }),
    )
}

/// `headers` without the ones weir or this filter set.
fn copyable(headers: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .filter(|(n, _)| !NOT_COPIED.iter().any(|c| n.eq_ignore_ascii_case(c)))
        .cloned()
        .collect()
}

/// The re-sent request's answer, as the client's response.
fn reissued(resp: OutboundResponse) -> Response {
    let mut headers = copyable(&resp.headers);
    // `copyable` drops `authorization`, which a response does not carry anyway; keep the
    // rest of the upstream's headers as they were.
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case("proxy-authenticate"));
    headers
        .into_iter()
        .fold(Response::new(resp.status), |r, (name, value)| {
            r.with_header(name, value)
        })
        .with_body(resp.body)
}

// === Memo ===

/// What `on_request` hands to `on_response`: the token's fingerprint (never the token)
/// and, with `reissue_upstream`, the request body.
struct Memo;

impl Memo {
    const TAG: u8 = b'a';

    /// The memo of a request sent with the token whose fingerprint this is.
    fn encode(fingerprint: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(9);
        out.push(Memo::TAG);
        out.extend_from_slice(&fingerprint.to_be_bytes());
        out
    }

    /// The token's fingerprint.
    fn decode(bytes: Vec<u8>) -> Option<u64> {
        match bytes.split_first() {
            Some((&Memo::TAG, rest)) => Some(u64::from_be_bytes(rest.try_into().ok()?)),
            _ => None,
        }
    }
}

// === impl Host ===

/// The real host: weir's state store, `outbound`, metrics and log.
struct Host;

impl Env for Host {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        weir_filter::state::get(key).map_err(|e| format!("{e:?}"))
    }

    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), String> {
        weir_filter::state::set(key, value, Some(ttl)).map_err(|e| format!("{e:?}"))
    }

    fn delete(&self, key: &str) -> Result<(), String> {
        weir_filter::state::delete(key).map_err(|e| format!("{e:?}"))
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Duration,
    ) -> Result<bool, String> {
        weir_filter::state::compare_and_swap(key, expected, new, Some(ttl))
            .map_err(|e| format!("{e:?}"))
    }

    fn send(&self, req: OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        weir_filter::outbound::send(req)
    }

    fn fetched(&self, result: &'static str) {
        weir_filter::metrics::counter_add("auth_token_fetches_total", &[("result", result)], 1);
    }

    fn warn(&self, message: &str) {
        weir_filter::log::warn(message);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use weir_filter::build_filter;
    use weir_filter::serde_json::json;

    use super::*;

    /// A state store in a map on a virtual clock (milliseconds), TTLs enforced, and a
    /// scripted token endpoint and upstream.
    struct Fake {
        now: Cell<u64>,
        map: RefCell<HashMap<String, (Vec<u8>, u64)>>,
        /// Every outbound request, in order.
        sent: RefCell<Vec<OutboundRequest>>,
        /// Token answers: status and body, by call number (the last repeats).
        tokens: Vec<(u16, String)>,
        /// The re-sent request's answer.
        upstream: Result<u16, OutboundError>,
        fetched: RefCell<Vec<&'static str>>,
        warnings: RefCell<Vec<String>>,
    }

    impl Fake {
        fn new(tokens: &[(u16, &str)]) -> Fake {
            Fake {
                now: Cell::new(1_000),
                map: RefCell::default(),
                sent: RefCell::default(),
                tokens: tokens.iter().map(|(s, b)| (*s, b.to_string())).collect(),
                upstream: Ok(200),
                fetched: RefCell::default(),
                warnings: RefCell::default(),
            }
        }

        fn advance(&self, ms: u64) {
            self.now.set(self.now.get() + ms);
        }

        fn token_calls(&self) -> usize {
            self.sent
                .borrow()
                .iter()
                .filter(|r| r.upstream == "oauth")
                .count()
        }

        fn live(&self, key: &str) -> Option<Vec<u8>> {
            let map = self.map.borrow();
            map.get(key)
                .filter(|(_, exp)| *exp > self.now.get())
                .map(|(v, _)| v.clone())
        }
    }

    impl Env for Fake {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.live(key))
        }

        fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), String> {
            let exp = self.now.get() + ttl.as_millis() as u64;
            self.map
                .borrow_mut()
                .insert(key.to_owned(), (value.to_vec(), exp));
            Ok(())
        }

        fn delete(&self, key: &str) -> Result<(), String> {
            self.map.borrow_mut().remove(key);
            Ok(())
        }

        fn compare_and_swap(
            &self,
            key: &str,
            expected: Option<&[u8]>,
            new: &[u8],
            ttl: Duration,
        ) -> Result<bool, String> {
            if self.live(key).as_deref() != expected {
                return Ok(false);
            }
            self.set(key, new, ttl)?;
            Ok(true)
        }

        fn send(&self, req: OutboundRequest) -> Result<OutboundResponse, OutboundError> {
            let upstream = req.upstream.clone();
            self.sent.borrow_mut().push(req);
            if upstream == "oauth" {
                let n = self.token_calls() - 1;
                let (status, body) = &self.tokens[n.min(self.tokens.len() - 1)];
                return Ok(OutboundResponse {
                    status: *status,
                    headers: vec![("content-type".into(), b"application/json".to_vec())],
                    body: body.replace("{n}", &(n + 1).to_string()).into_bytes(),
                });
            }
            match &self.upstream {
                Ok(status) => Ok(OutboundResponse {
                    status: *status,
                    headers: vec![
                        ("content-type".into(), b"text/plain".to_vec()),
                        ("transfer-encoding".into(), b"chunked".to_vec()),
                    ],
                    body: b"second answer".to_vec(),
                }),
                Err(e) => Err(e.clone()),
            }
        }

        fn fetched(&self, result: &'static str) {
            self.fetched.borrow_mut().push(result);
        }

        fn warn(&self, message: &str) {
            self.warnings.borrow_mut().push(message.to_owned());
        }
    }

    const TOKEN: &str = r#"{"access_token":"tok-{n}","token_type":"Bearer","expires_in":60}"#;

    fn auth(config: Value) -> Auth {
        build_filter::<Auth>(&config.to_string()).unwrap()
    }

    fn oauth(extra: Value) -> Auth {
        let mut o = json!({"upstream": "oauth", "client_id": "weir app", "client_secret": "s3cr:t",
                           "refresh_before": "10s"});
        if let (Value::Object(o), Value::Object(e)) = (&mut o, extra) {
            o.extend(e);
        }
        auth(json!({ "oauth2": o }))
    }

    fn info(id: &str) -> RequestInfo {
        RequestInfo::new(id)
            .with_route("r")
            .with_attempt(1)
            .with_remaining_ms(5_000)
            .with_client_addr("127.0.0.1:5000")
    }

    /// The client's request, with a forged `authorization` and a body.
    fn request(path: &str) -> Request {
        headed(path, "Bearer forged").with_body(b"{\"a\":1}".to_vec())
    }

    /// The test request's headers, with this `authorization`, and no body.
    fn headed(path: &str, authorization: &str) -> Request {
        Request::new("POST", path)
            .with_upstream("http://upstream.test")
            .with_header("authorization", authorization)
            .with_header("content-type", "application/json")
            .with_header("content-length", "7")
    }

    fn edit(action: &RequestAction) -> (&RequestEdit, Option<&Vec<u8>>) {
        match action {
            RequestAction::Continue((Some(e), memo)) => (e, memo.as_ref()),
            other => panic!("expected continue with an edit, got {other:?}"),
        }
    }

    fn set(e: &RequestEdit, name: &str) -> Option<String> {
        e.set_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
    }

    fn status(status: u16) -> Outcome {
        Outcome::Response(Response::new(status))
    }

    #[test]
    fn static_credentials_are_set_on_every_request() {
        let f = auth(json!({
            "bearer": {"token": "t0k"},
            "headers": {"X-Tenant": "acme"},
            "api_key": {"query": "api_key", "value": "k 1"},
        }));
        let env = Fake::new(&[]);
        let action = f.request(&env, &info("a"), &request("/v1/x?api_key=forged&q=1"));
        let (e, memo) = edit(&action);
        assert_eq!(set(e, "authorization").as_deref(), Some("Bearer t0k"));
        assert_eq!(set(e, "x-tenant").as_deref(), Some("acme"));
        assert_eq!(
            e.path_with_query.as_deref(),
            Some("/v1/x?q=1&api_key=k%201")
        );
        assert!(memo.is_none());
        assert!(!f.info().wants_request_body);
        assert_eq!(f.info().phases, Phases::REQUEST);
        assert!(env.sent.borrow().is_empty());
        // A 401 without OAuth2 is just passed on.
        let r = f.response(&env, &info("a"), &request("/"), None, &status(401));
        assert_eq!(r, ResponseAction::proceed());
    }

    #[test]
    fn the_token_request_follows_rfc_6749() {
        let f = oauth(json!({"scope": "read write", "audience": "https://api"}));
        let env = Fake::new(&[(200, TOKEN)]);
        let action = f.request(&env, &info("a"), &request("/x"));
        assert_eq!(
            set(edit(&action).0, "authorization").as_deref(),
            Some("Bearer tok-1")
        );
        let sent = env.sent.borrow();
        let r = &sent[0];
        assert_eq!((r.upstream.as_str(), r.method.as_str()), ("oauth", "POST"));
        assert_eq!(r.path_with_query, "/oauth/token");
        let header = |n: &str| {
            r.headers
                .iter()
                .find(|(h, _)| h == n)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        // RFC 6749 §2.3.1: form-encode id and secret, then Basic.
        assert_eq!(
            header("authorization"),
            Some(format!("Basic {}", base64(b"weir+app:s3cr%3At")))
        );
        assert_eq!(
            r.body.as_deref(),
            Some(&b"grant_type=client_credentials&scope=read+write&audience=https%3A%2F%2Fapi"[..])
        );
        assert_eq!(r.timeout_ms, Some(5_000), "bounded by the route deadline");
        assert_eq!(*env.fetched.borrow(), ["ok"]);

        let f = oauth(json!({"client_auth": "body", "token_path": "/t?x=1"}));
        let env = Fake::new(&[(200, TOKEN)]);
        f.request(&env, &info("a"), &request("/x"));
        let sent = env.sent.borrow();
        assert_eq!(sent[0].path_with_query, "/t?x=1");
        assert!(!sent[0].headers.iter().any(|(n, _)| n == "authorization"));
        assert_eq!(
            sent[0].body.as_deref(),
            Some(&b"grant_type=client_credentials&client_id=weir+app&client_secret=s3cr%3At"[..])
        );
    }

    #[test]
    fn a_token_is_cached_until_refresh_before_its_expiry() {
        let f = oauth(json!({}));
        let env = Fake::new(&[(200, TOKEN)]);
        for i in 0..100 {
            let action = f.request(&env, &info(&format!("r{i}")), &request("/x"));
            assert_eq!(
                set(edit(&action).0, "authorization").as_deref(),
                Some("Bearer tok-1")
            );
        }
        assert_eq!(env.token_calls(), 1);
        // expires_in 60 s, refresh_before 10 s: cached for 50 s.
        env.advance(49_999);
        f.request(&env, &info("b"), &request("/x"));
        assert_eq!(env.token_calls(), 1);
        env.advance(1);
        let action = f.request(&env, &info("c"), &request("/x"));
        assert_eq!(
            set(edit(&action).0, "authorization").as_deref(),
            Some("Bearer tok-2")
        );
        assert_eq!(env.token_calls(), 2);
    }

    #[test]
    fn while_one_request_fetches_the_others_wait_then_use_its_token() {
        let f = oauth(json!({}));
        let env = Fake::new(&[(200, TOKEN)]);
        let lock = f.settings().oauth2.as_ref().unwrap().lock_key().to_owned();
        // Another instance holds the lock.
        env.set(&lock, b"other:1", Duration::from_secs(11)).unwrap();
        let action = f.request(&env, &info("a"), &request("/x"));
        assert_eq!(action, RequestAction::Wait(POLL_MS));
        assert_eq!(env.token_calls(), 0);
        // It stores its token and lets go.
        let key = f.settings().oauth2.as_ref().unwrap().token_key().to_owned();
        env.set(&key, b"theirs", Duration::from_secs(50)).unwrap();
        env.delete(&lock).unwrap();
        let action = f.request(&env, &info("a"), &request("/x"));
        assert_eq!(
            set(edit(&action).0, "authorization").as_deref(),
            Some("Bearer theirs")
        );
        assert_eq!(env.token_calls(), 0);

        // A holder that died: its lock expires and the next request fetches.
        env.delete(&key).unwrap();
        env.set(&lock, b"dead:1", Duration::from_secs(11)).unwrap();
        assert_eq!(
            f.request(&env, &info("b"), &request("/x")),
            RequestAction::Wait(POLL_MS)
        );
        env.advance(11_000);
        let action = f.request(&env, &info("b"), &request("/x"));
        assert_eq!(
            set(edit(&action).0, "authorization").as_deref(),
            Some("Bearer tok-1")
        );
        assert!(env.live(&lock).is_none(), "the fetcher released the lock");
    }

    #[test]
    fn a_failing_token_endpoint_answers_503_and_never_sends_the_request_bare() {
        for (tokens, want) in [
            (vec![(500, "oops")], "auth: token endpoint answered 500"),
            (
                vec![(200, "{}")],
                "auth: token endpoint answered 200 but the body has no access_token",
            ),
        ] {
            let f = oauth(json!({}));
            let env = Fake::new(&tokens);
            let action = f.request(&env, &info("a"), &request("/x"));
            let RequestAction::Respond(r) = action else {
                panic!("expected a 503, got {action:?}");
            };
            assert_eq!(r.status(), 503);
            let body: Value = weir_filter::serde_json::from_slice(r.body().unwrap()).unwrap();
            assert_eq!(
                body,
                json!({"error": "token_unavailable", "message": want, "route": "r", "request_id": "a"})
            );
            assert_eq!(*env.fetched.borrow(), ["error"]);
            assert!(
                env.live(f.settings().oauth2.as_ref().unwrap().lock_key())
                    .is_none()
            );
            // The next request tries again.
            f.request(&env, &info("b"), &request("/x"));
            assert_eq!(env.token_calls(), 2);
        }
    }

    #[test]
    fn a_401_drops_the_token_refetches_once_and_resends_the_request() {
        let f = oauth(json!({"reissue_upstream": "api"}));
        assert!(f.info().wants_request_body);
        let env = Fake::new(&[(200, TOKEN)]);
        let req = request("/orders?x=1");
        let action = f.request(&env, &info("a"), &req);
        let memo = edit(&action).1.cloned();
        // What the upstream saw: the request as the chain passed it on, with the body
        // weir kept (the memo holds only the token's fingerprint).
        let sent_req = headed("/orders?x=1", "Bearer tok-1").with_body(b"{\"a\":1}".to_vec());
        let r = f.response(&env, &info("a"), &sent_req, memo, &status(401));
        let ResponseAction::Respond(resp) = r else {
            panic!("expected the re-sent answer, got {r:?}");
        };
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.body(), Some(&b"second answer"[..]));
        assert!(
            !resp.headers().iter().any(|(n, _)| n == "transfer-encoding"),
            "hop-by-hop headers of the re-sent answer are dropped"
        );
        assert_eq!(env.token_calls(), 2);
        let sent = env.sent.borrow();
        let again = &sent[2];
        assert_eq!(again.upstream, "api");
        assert_eq!(
            (again.method.as_str(), again.path_with_query.as_str()),
            ("POST", "/orders?x=1")
        );
        assert_eq!(
            again.headers,
            vec![
                ("content-type".to_owned(), b"application/json".to_vec()),
                ("authorization".to_owned(), b"Bearer tok-2".to_vec()),
            ]
        );
        assert_eq!(again.body.as_deref(), Some(&b"{\"a\":1}"[..]));
        drop(sent);
        // The fresh token is the cached one now.
        let action = f.request(&env, &info("b"), &request("/x"));
        assert_eq!(
            set(edit(&action).0, "authorization").as_deref(),
            Some("Bearer tok-2")
        );
        assert_eq!(env.token_calls(), 2);
    }

    #[test]
    fn a_401_to_an_old_token_keeps_a_token_fetched_since() {
        let f = oauth(json!({"reissue_upstream": "api"}));
        let env = Fake::new(&[(200, TOKEN)]);
        let action = f.request(&env, &info("a"), &request("/x"));
        let memo = edit(&action).1.cloned();
        // Meanwhile another request found tok-1 refused and fetched a newer token.
        let key = f.settings().oauth2.as_ref().unwrap().token_key().to_owned();
        env.set(&key, b"newer", Duration::from_secs(50)).unwrap();
        let r = f.response(&env, &info("a"), &request("/x"), memo, &status(401));
        assert!(matches!(r, ResponseAction::Respond(ref resp) if resp.status() == 200));
        assert_eq!(env.token_calls(), 1, "no fetch: the newer token is used");
        assert_eq!(env.live(&key).as_deref(), Some(&b"newer"[..]));
        let sent = env.sent.borrow();
        assert!(
            sent[1]
                .headers
                .contains(&("authorization".into(), b"Bearer newer".to_vec()))
        );
    }

    #[test]
    fn without_reissue_a_401_drops_the_token_and_passes_on() {
        let f = oauth(json!({}));
        let env = Fake::new(&[(200, TOKEN)]);
        let action = f.request(&env, &info("a"), &request("/x"));
        let memo = edit(&action).1.cloned();
        assert_eq!(
            memo.as_ref().map(Vec::len),
            Some(9),
            "the memo is the token's fingerprint"
        );
        let r = f.response(&env, &info("a"), &request("/x"), memo, &status(401));
        assert_eq!(r, ResponseAction::proceed());
        assert_eq!(env.token_calls(), 1);
        // Other statuses leave the token alone.
        let action = f.request(&env, &info("b"), &request("/x"));
        assert_eq!(
            set(edit(&action).0, "authorization").as_deref(),
            Some("Bearer tok-2")
        );
        let memo = edit(&action).1.cloned();
        let r = f.response(&env, &info("b"), &request("/x"), memo, &status(403));
        assert_eq!(r, ResponseAction::proceed());
        f.request(&env, &info("c"), &request("/x"));
        assert_eq!(env.token_calls(), 2);
    }

    #[test]
    fn a_reissue_that_is_not_allowed_passes_the_401_on() {
        let f = oauth(json!({"reissue_upstream": "api"}));
        let mut env = Fake::new(&[(200, TOKEN)]);
        env.upstream = Err(OutboundError::NotAllowed(
            "upstream `api` is not listed".into(),
        ));
        let action = f.request(&env, &info("a"), &request("/x"));
        let memo = edit(&action).1.cloned();
        let r = f.response(&env, &info("a"), &request("/x"), memo, &status(401));
        assert_eq!(r, ResponseAction::proceed());
        assert!(
            env.warnings
                .borrow()
                .iter()
                .any(|w| w.contains("`api` is not listed"))
        );

        env.upstream = Err(OutboundError::Upstream(weir_filter::UpstreamError::Reset));
        let action = f.request(&env, &info("b"), &request("/x"));
        let memo = edit(&action).1.cloned();
        let r = f.response(&env, &info("b"), &request("/x"), memo, &status(401));
        assert!(matches!(r, ResponseAction::Respond(ref resp) if resp.status() == 502));
    }

    #[test]
    fn warnings_never_carry_credentials() {
        let f = oauth(json!({"reissue_upstream": "api"}));
        let env = Fake::new(&[(200, TOKEN), (500, "s3cr:t")]);
        let action = f.request(&env, &info("a"), &request("/x"));
        let memo = edit(&action).1.cloned();
        let r = f.response(&env, &info("a"), &request("/x"), memo, &status(401));
        assert!(matches!(r, ResponseAction::Respond(ref resp) if resp.status() == 503));
        for w in env.warnings.borrow().iter() {
            assert!(!w.contains("s3cr") && !w.contains("tok-"), "{w}");
        }
    }

    #[test]
    fn only_oauth2_asks_for_the_response_phase() {
        for config in [
            json!({"bearer": {"token": "t"}}),
            json!({"basic": {"username": "u", "password": "p"}}),
            json!({"api_key": {"query": "k", "value": "v"}, "headers": {"x-a": "b"}}),
        ] {
            assert_eq!(auth(config).info().phases, Phases::REQUEST);
        }
        for extra in [json!({}), json!({"reissue_upstream": "api"})] {
            assert_eq!(oauth(extra).info().phases, Phases::BOTH);
        }
    }

    #[test]
    fn a_503_names_the_clients_request_id_when_there_is_one() {
        let f = oauth(json!({}));
        let env = Fake::new(&[(500, "oops")]);
        let req = request("/x").with_header("x-request-id", "client-7");
        let RequestAction::Respond(r) = f.request(&env, &info("a"), &req) else {
            panic!("expected a 503");
        };
        let body: Value = weir_filter::serde_json::from_slice(r.body().unwrap()).unwrap();
        assert_eq!(body["request_id"], "client-7");
    }

    #[test]
    fn memo_round_trip() {
        assert_eq!(Memo::decode(Memo::encode(7)), Some(7));
        assert_eq!(Memo::decode(Memo::encode(u64::MAX)), Some(u64::MAX));
        assert_eq!(Memo::decode(b"a1234567".to_vec()), None);
        assert_eq!(Memo::decode(b"a123456789".to_vec()), None);
        assert_eq!(Memo::decode(b"x12345678".to_vec()), None);
        assert_eq!(Memo::decode(b"".to_vec()), None);
    }

    #[test]
    fn init_errors_name_the_filter() {
        let err = build_filter::<Auth>(r#"{"bearer": {"token": ""}}"#)
            .err()
            .unwrap();
        assert_eq!(err, "auth: bearer.token must not be empty");
        let err = build_filter::<Auth>("{}").err().unwrap();
        assert!(err.starts_with("auth: nothing to add"), "{err}");
    }
}
