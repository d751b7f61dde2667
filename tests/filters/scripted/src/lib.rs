//! `scripted`: a test-only filter whose every action the config scripts, so weir's
//! end-to-end tests can check the chain's semantics (order, respond, wait, retry, memo,
//! edits) from the outside.
//!
//! # Config
//!
//! Every key is optional; unknown keys are errors.
//!
//! | key | type | default | meaning |
//! | --- | --- | --- | --- |
//! | `tag` | string | `"s"` | this filter's name in every header it writes |
//! | `respond` | status | — | `on_request` answers with this status, header `x-responder: <tag>` and body `<tag>` |
//! | `respond_headers` | table of strings | `{}` | more headers on the `respond` answer, as given (weir must refuse hop-by-hop ones) |
//! | `respond_in` | `"request"` or `"response"` | `"request"` | which call answers `respond`: `on_request`, or `on_response` in place of any outcome |
//! | `wait_ms` | ms | — | the first `on_request` of each (request id, attempt) answers `wait(wait_ms)`; the call after the wait goes on |
//! | `set_path` | string | — | the request edit sets this path and query |
//! | `wants_request_body` | bool | `false` | ask for the request body; `on_request` sets `x-body-len-<tag>` to its length (`none` if the host passed none) |
//! | `append_body` | string | — | the request edit sets the body to the body it got plus this text; implies `wants_request_body` |
//! | `retry_on_status` | status | — | `on_response` answers `retry` when the outcome has this status and `attempt < max_attempts`; also sets `may_retry` |
//! | `max_attempts` | integer | `1` | see `retry_on_status` |
//! | `retry_delay_ms` | ms | `10` | the delay of that retry |
//! | `may_retry` | bool | `retry_on_status` is set | what `info()` says; `false` with `retry_on_status` tests that weir ignores an unannounced retry |
//! | `log` | string | — | `on_request` first logs `<log> (request <id>, attempt <n>)` at info level, so a test can wait for a request to reach this filter |
//! | `call` | string | — | `on_request` first sends `GET /hook` to the upstream of this name through `weir:filter/outbound`, and sets request header `x-outbound` to `status <code>` or `error <what>` |
//!
//! # What it does
//!
//! - `on_request` (unless it waits or responds): appends `<tag>` to request header
//!   `x-order` (comma-separated: `a,b,c`), applies `set_path`, `append_body` and
//!   `x-body-len-<tag>`, and returns the memo `<tag>:<attempt>`. A state error traps.
//! - `on_response` (unless it retries): appends `<tag>` to response header
//!   `x-order-back`, sets `x-memo-<tag>` to the memo it got (`none` if none),
//!   `x-attempt-<tag>` to the attempt it sees, `x-info-id-<tag>` to `request-info.id`,
//!   and `x-seen-request-id-<tag>` to the request's `x-request-id` (`none` if absent). An outcome without a response passes
//!   untouched.
//!
//! `wait_ms` counts calls in `state` under `wait/<request id>/<attempt>` (weir prefixes
//! the filter's name), so the count survives the instance being swapped between calls.

// The SDK keeps all the unsafe ABI glue in its own crate; a filter needs none.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use weir_filter::outbound::{self, OutboundError, OutboundRequest};
use weir_filter::{
    Filter, Info, Outcome, Request, RequestAction, RequestEdit, RequestInfo, Response,
    ResponseAction, ResponseEdit, log, state,
};

/// How long a wait counter lives in `state`: longer than any test's request.
const WAIT_KEY_TTL: Duration = Duration::from_secs(300);

/// The config, as documented in the crate docs.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    tag: String,
    respond: Option<u16>,
    respond_headers: BTreeMap<String, String>,
    respond_in: Phase,
    wait_ms: Option<u32>,
    set_path: Option<String>,
    wants_request_body: bool,
    append_body: Option<String>,
    retry_on_status: Option<u16>,
    max_attempts: u32,
    retry_delay_ms: u32,
    may_retry: Option<bool>,
    log: Option<String>,
    call: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tag: "s".into(),
            respond: None,
            respond_headers: BTreeMap::new(),
            respond_in: Phase::Request,
            wait_ms: None,
            set_path: None,
            wants_request_body: false,
            append_body: None,
            retry_on_status: None,
            max_attempts: 1,
            retry_delay_ms: 10,
            may_retry: None,
            log: None,
            call: None,
        }
    }
}

/// Which call of the filter answers `respond`.
#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum Phase {
    Request,
    Response,
}

struct Scripted(Config);

impl Scripted {
    /// The scripted `respond` answer, if this call is the one to give it.
    fn response(&self, phase: Phase) -> Option<Response> {
        let c = &self.0;
        let status = c.respond.filter(|_| c.respond_in == phase)?;
        let mut resp = Response::new(status)
            .with_header("x-responder", c.tag.as_str())
            .with_body(c.tag.as_str());
        for (name, value) in &c.respond_headers {
            resp = resp.with_header(name.as_str(), value.as_str());
        }
        Some(resp)
    }
}

/// `existing,tag`, or `tag` when there is nothing yet.
fn append(existing: Option<&str>, tag: &str) -> String {
    match existing {
        Some(e) if !e.is_empty() => format!("{e},{tag}"),
        _ => tag.to_owned(),
    }
}

impl Filter for Scripted {
    type Config = Config;
    const NAME: &'static str = "scripted";

    fn new(config: Config) -> Result<Self, String> {
        if config.tag.is_empty() {
            return Err("`tag` must not be empty".into());
        }
        Ok(Scripted(config))
    }

    fn info(&self) -> Info {
        Info {
            wants_request_body: self.0.wants_request_body || self.0.append_body.is_some(),
            wants_response_body: false,
            may_retry: self.0.may_retry.unwrap_or(self.0.retry_on_status.is_some()),
            ..Info::default()
        }
    }

    fn on_request(&mut self, info: &RequestInfo, req: &Request) -> RequestAction {
        let c = &self.0;
        if let Some(text) = &c.log {
            log::info(&format!(
                "{text} (request {}, attempt {})",
                info.id(),
                info.attempt()
            ));
        }
        if let Some(ms) = c.wait_ms {
            let key = format!("wait/{}/{}", info.id(), info.attempt());
            let calls = state::incr(&key, 1, Some(WAIT_KEY_TTL))
                .unwrap_or_else(|e| panic!("scripted: state incr {key}: {e:?}"));
            if calls == 1 {
                return RequestAction::Wait(ms);
            }
        }
        if let Some(resp) = self.response(Phase::Request) {
            return RequestAction::Respond(resp);
        }
        let order = req.header_str("x-order");
        let mut edit = RequestEdit::new().set_header("x-order", append(order.as_deref(), &c.tag));
        if let Some(upstream) = &c.call {
            let sent = outbound::send(
                OutboundRequest::new(upstream, "GET", "/hook")
                    .header("x-from-filter", c.tag.as_str()),
            );
            let result = match sent {
                Ok(r) => format!("status {}", r.status),
                Err(OutboundError::NotAllowed(why)) => format!("error not-allowed: {why}"),
                Err(e) => format!("error {e:?}"),
            };
            edit = edit.set_header("x-outbound", result);
        }
        if let Some(path) = &c.set_path {
            edit = edit.path_with_query(path.as_str());
        }
        if let Some(suffix) = &c.append_body {
            let mut body = req.body().unwrap_or_default().to_vec();
            body.extend_from_slice(suffix.as_bytes());
            edit = edit.body(body);
        }
        if c.wants_request_body {
            let len = req
                .body()
                .map_or_else(|| "none".to_owned(), |b| b.len().to_string());
            edit = edit.set_header(format!("x-body-len-{}", c.tag), len);
        }
        let memo = format!("{}:{}", c.tag, info.attempt()).into_bytes();
        RequestAction::proceed_with(Some(edit), Some(memo))
    }

    fn on_response(
        &mut self,
        info: &RequestInfo,
        req: &Request,
        memo: Option<Vec<u8>>,
        outcome: &Outcome,
    ) -> ResponseAction {
        if let Some(resp) = self.response(Phase::Response) {
            return ResponseAction::Respond(resp);
        }
        let c = &self.0;
        let Some(resp) = outcome.response() else {
            return ResponseAction::proceed();
        };
        if c.retry_on_status == Some(resp.status()) && info.attempt() < c.max_attempts {
            return ResponseAction::Retry(c.retry_delay_ms);
        }
        let memo = memo.map_or_else(|| "none".to_owned(), |m| String::from_utf8_lossy(&m).into());
        let order = resp.header_str("x-order-back");
        ResponseAction::proceed_with_edit(
            ResponseEdit::new()
                .set_header("x-order-back", append(order.as_deref(), &c.tag))
                .set_header(format!("x-memo-{}", c.tag), memo)
                .set_header(format!("x-attempt-{}", c.tag), info.attempt().to_string())
                .set_header(format!("x-info-id-{}", c.tag), info.id())
                .set_header(
                    format!("x-seen-request-id-{}", c.tag),
                    req.request_id().unwrap_or_else(|| "none".to_owned()),
                ),
        )
    }
}

weir_filter::export_filter!(Scripted);
