//! `breaker`: weir's standard circuit breaker, with resilience4j's CircuitBreaker
//! semantics and defaults.
//!
//! Each breaker watches the outcomes of the calls made under one key (by default the
//! upstream origin). While **closed** it lets every call through and records its outcome
//! in a sliding window. Once the window holds at least `minimum_calls` calls and the
//! failure rate is ≥ `failure_rate_threshold` or the slow-call rate is ≥
//! `slow_call_rate_threshold`, it **opens**: every call is answered at once with a 503,
//! and the upstream sees nothing. After `wait_in_open` the next call finds it
//! **half-open**: it lets `permitted_calls_in_half_open` probes through (any further
//! call gets the same 503), and once all of them have completed it judges them by the
//! same thresholds: it opens again, or closes. Every transition starts a fresh window.
//!
//! The breaker's state lives in weir's shared `state`, so every route, instance and weir
//! process (with a shared backend) that uses the same filter entry (`"breaker"`) and
//! computes the same key shares one breaker.
//!
//! # Config reference
//!
//! Every key is optional; unknown keys are errors, and an invalid value makes weir refuse
//! the config with a message that names the key.
//!
//! | key | type | default | meaning |
//! | --- | --- | --- | --- |
//! | `window_type` | `"count"` or `"time"` | `"count"` | count: the last `window_size` calls; time: the calls of the last `window_size` one-second buckets (the current second included) |
//! | `window_size` | integer | `100` | calls (1 to 1000) or seconds (1 to 600) |
//! | `minimum_calls` | integer ≥ 1 | `100` | calls the window must hold before the rates count; with a count window at most `window_size` is used |
//! | `failure_rate_threshold` | percent, > 0 and ≤ 100 | `50` | open when failed calls / calls ≥ this |
//! | `slow_call_rate_threshold` | percent, > 0 and ≤ 100 | `100` | open when slow calls / calls ≥ this |
//! | `slow_call_duration` | duration | `"60s"` | a call taking longer than this is slow |
//! | `wait_in_open` | duration | `"60s"` | time in open before half-open |
//! | `permitted_calls_in_half_open` | integer, 1 to 1000 | `10` | probes let through in half-open |
//! | `failure_statuses` | list of statuses | every 5xx | response statuses that count as failures |
//! | `key` | `{ header = "…" }` or `{ regex = "…" }` | the upstream origin | what names the breaker (below) |
//! | `on_state_error` | `"allow"` or `"reject"` | `"allow"` | when the state store fails: let the call through unrecorded, or answer 503 (below) |
//! | `idle_ttl` | duration ≥ 1s | `"1h"` | a window no call has updated for this long is forgotten; so is the breaker, that long after its last transition (back to closed, empty window) |
//!
//! Durations are a number and a unit: `ms`, `s`, `m`, `h` or `d` (`"250ms"`, `"1.5s"`, `"2m"`).
//!
//! ## What counts
//!
//! - A call is one try through this filter: `on-request` that let it through, then the
//!   `on-response` of the same try. A retry by an earlier filter is another call.
//! - It **failed** when there was no response at all (connect failure, timeout, reset,
//!   TLS or protocol error: always), or when the status is in `failure_statuses` (every
//!   5xx by default). A response made up by a later filter counts like the upstream's.
//! - It is **slow** when more than `slow_call_duration` passed between this filter's
//!   `on-request` and its `on-response` (wall clock; the start travels in the memo). A
//!   slow call may also have failed; it counts in both rates.
//! - An outcome is recorded only in the state it was admitted in: a call let through
//!   while closed that completes after the breaker opened is not counted anywhere.
//!
//! ## The key
//!
//! - Default: the route's upstream origin, e.g. `https://api.example.com`.
//! - `key = { header = "x-tenant" }`: that request header's value (trimmed); the origin
//!   when the header is absent, empty or not UTF-8.
//! - `key = { regex = "…" }`: the regex runs over the URL, upstream origin followed by
//!   path and query (`https://api.example.com/v1/orders/7?x=1`). The key is its **first
//!   capture group** when the regex has one and it took part in the match, otherwise the
//!   whole match; the origin when it does not match, or matches the empty string.
//! - Keys longer than 512 bytes become their first 256 bytes, `#`, and a 64-bit FNV-1a
//!   hash of the whole key in hex.
//!
//! ## The 503
//!
//! While open, and in half-open once every permit is taken, the breaker answers
//!
//! ```text
//! HTTP/1.1 503 Service Unavailable
//! content-type: application/json
//! retry-after: 42
//!
//! {"error":"breaker_open","key":"https://api.example.com","state":"open","retry_after":42,"message":"…"}
//! ```
//!
//! `Retry-After` is the whole seconds until the breaker goes half-open, rounded up and
//! at least 1 (`1` in half-open); `state` is `open` or `half_open`.
//!
//! ## Half-open probes
//!
//! A probe's permit is held until its `on-response`. If that never comes (the client
//! went away), the permit is freed at the request's route deadline (`remaining-ms` when
//! it was admitted), so a lost probe cannot keep the breaker half-open for ever. A
//! completed probe keeps its permit: as in resilience4j, the breaker decides once all
//! `permitted_calls_in_half_open` probes have completed, so it lets at most that many
//! through per half-open period.
//!
//! ## State
//!
//! weir adds the filter entry's name as a namespace (`breaker/…`). Per breaker key:
//!
//! - `circuit/<key>`: the machine, JSON, written only on a transition, with
//!   compare-and-swap:
//!
//!   ```json
//!   {"state":"closed","gen":4,"since":1700000000000}
//!   {"state":"open","gen":5,"since":1700000000000}
//!   {"state":"half_open","gen":6,"since":1700000060000,"until":1700000090000}
//!   ```
//!
//!   `state`: `closed`, `open` or `half_open`; `since`: when it began (Unix ms); `gen`:
//!   bumped on every transition; `until` (half-open): the route deadline of the call that
//!   began the round. An absent key is a closed breaker of generation 0.
//! - `window/<gen>/<key>`: the outcomes of generation `<gen>`, kept by the store's atomic
//!   windowed counter (`state::window_add`), one record `[calls, failed, slow]` per call
//!   (`[1, 0, 0]` for a fast success). Closed: the last `window_size` calls, or the
//!   one-second slots of the last `window_size` seconds; half-open: the completed
//!   probes. Recording a call and reading the rates is that one call.
//! - `permits/<gen>/<key>`: half-open only, a counter (`state::incr`) of the probes let
//!   through; a call whose number is above `permitted_calls_in_half_open` is refused.
//!
//! The generation in the window's key is what starts a fresh window on a transition, and
//! what keeps a call admitted before a transition (completing after it) out of the new
//! window: its outcome lands in the old generation's window, which nothing reads.
//!
//! Nothing is updated with a compare-and-swap loop, so any number of instances and
//! processes can share a breaker without retrying against each other: a transition's
//! compare-and-swap that loses means another instance made that transition, and the call
//! goes on with what it stored.
//!
//! A lost half-open probe (its client went away) keeps its permit, and the round cannot
//! decide without it. So when every permit is taken and the round is past its `until`
//! with outcomes missing, the next call starts a new half-open round (a new generation,
//! fresh permits; the missing probes no longer count).
//!
//! TTLs: windows and permits live `idle_ttl` (or the time window, if longer) plus
//! `wait_in_open` after their last write, the machine as long after its last transition.
//! A breaker that expires is closed with an empty window again. Open → half-open happens
//! on the first call after `wait_in_open`, as resilience4j does without
//! `automaticTransitionFromOpenToHalfOpenEnabled`; until then the record still says
//! `open`.
//!
//! When the state backend fails (Redis down, or slower than its `timeout`), the breaker
//! **fails open** by default: the call goes through unrecorded, and a warning is logged
//! at most every 10 s per instance. With `on_state_error = "reject"` the call gets 503
//! `{"error": "state_unavailable", "key", "message"}` with `Retry-After: 1` instead, for
//! upstreams that must never see a burst the breaker could not check.
//!
//! ## Metrics
//!
//! weir prefixes `weir_filter_` and adds `route` and `filter` labels:
//!
//! - `breaker_state{key}` (gauge): 0 closed, 1 open, 2 half-open, as this process last
//!   saw it (set on every transition, rejection and recorded outcome);
//! - `breaker_failure_rate{key}` (gauge): the failure rate (percent) of the window after
//!   the last recorded outcome, or the rate that moved the breaker on a transition;
//! - `breaker_transitions_total{key,to}` (counter): transitions this process made;
//! - `breaker_rejected_total{key}` (counter): calls answered with the 503.
//!
//! With the default key, `key` is the upstream origin, and weir's `/status` lists each
//! breaker's state under `breakers`. A header or regex key is chosen by clients, and a
//! series per key would let them grow weir's metrics without bound, so those breakers
//! have no gauges (and no `/status` entry), and their counters all carry one `key`
//! label naming the source: `header:<name>` (lowercase) or `regex`. Their transitions
//! are also logged, with the key.
//!
//! # Example
//!
//! ```toml
//! [filters.breaker]
//! config = { window_size = 20, minimum_calls = 10, wait_in_open = "30s", slow_call_duration = "2s", slow_call_rate_threshold = 80 }
//!
//! [[routes]]
//! name = "payments"
//! match = { path_prefix = "/payments/" }
//! upstream = "payments"
//! filters = ["retry", "breaker"]
//!
//! [[routes]]
//! name = "tenants"
//! match = { path_prefix = "/t/" }
//! upstream = "saas"
//! # One breaker per tenant, over the last 30 seconds.
//! filters = [{ use = "breaker", config = { window_type = "time", window_size = 30, minimum_calls = 20, key = { header = "x-tenant" } } }]
//! ```
//!
//! Put `breaker` after `retry` in a route's chain, so that each retry is a call the
//! breaker sees and an open breaker's 503 reaches `retry` (which may wait out its
//! `Retry-After`).

// The SDK keeps all the unsafe ABI glue in its own crate; a filter needs none.
#![forbid(unsafe_code)]

pub mod config;
pub mod key;
pub mod machine;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weir_filter::serde_json::json;
use weir_filter::{
    Filter, Outcome, Request, RequestAction, RequestInfo, Response, ResponseAction, metrics,
};

use crate::config::Config;
use crate::key::KeySource;
use crate::machine::{Admitted, Call, Engine, Phase, Store, StoreFailure, Ticket, Transition};

/// At most one "state unavailable" warning per instance this often.
const WARN_EVERY_MS: u64 = 10_000;

/// Extra time after the route deadline before a lost probe frees its permit, for the
/// host's own bookkeeping after the deadline.
const PROBE_GRACE_MS: u64 = 1_000;

/// The filter: the checked config. Everything about a breaker lives in `state`.
#[derive(Debug)]
pub struct Breaker {
    engine: Engine,
    key: KeySource,
    /// When this instance last logged a store failure (not per-request data: a
    /// throttle for the log).
    last_warning_ms: u64,
}

impl Filter for Breaker {
    type Config = Config;
    const NAME: &'static str = "breaker";

    fn new(config: Config) -> Result<Self, String> {
        let (settings, key) = config.validate()?;
        Ok(Breaker {
            engine: Engine::new(settings),
            key,
            last_warning_ms: 0,
        })
    }

    fn on_request(&mut self, info: &RequestInfo, req: &Request) -> RequestAction {
        let key = self.key.key_for(req);
        let now = now_ms();
        let expires = now
            .saturating_add(info.remaining_ms())
            .saturating_add(PROBE_GRACE_MS);
        match self.engine.admit(&SharedState, &key, now, expires) {
            Ok(Admitted::Pass { ticket, transition }) => {
                if let Some(t) = transition {
                    report_transition(&self.key, &key, t);
                }
                let memo = Memo {
                    ticket,
                    start_ms: now,
                    key,
                };
                RequestAction::proceed_with(None, Some(memo.encode()))
            }
            Ok(Admitted::Reject {
                phase,
                retry_after_s,
            }) => {
                let (label, own) = self.key.label(&key);
                if own {
                    metrics::gauge_set("breaker_state", &[("key", &label)], phase.gauge());
                }
                metrics::counter_add("breaker_rejected_total", &[("key", &label)], 1);
                RequestAction::Respond(rejection(&key, phase, retry_after_s))
            }
            Err(e) => {
                self.warn(now, &key, &e);
                if self.engine.settings().reject_on_state_error {
                    RequestAction::Respond(state_unavailable(&key, &e))
                } else {
                    RequestAction::proceed()
                }
            }
        }
    }

    fn on_response(
        &mut self,
        _: &RequestInfo,
        _: &Request,
        memo: Option<Vec<u8>>,
        outcome: &Outcome,
    ) -> ResponseAction {
        // No memo: the call went through unrecorded because the store failed.
        let Some(memo) = memo.as_deref().and_then(Memo::decode) else {
            return ResponseAction::proceed();
        };
        let now = now_ms();
        let call = classify(
            &self.engine.settings().failure_statuses,
            self.engine.settings().slow_call_ms,
            outcome,
            now.saturating_sub(memo.start_ms),
        );
        match self
            .engine
            .complete(&SharedState, &memo.key, memo.ticket, call, now)
        {
            Ok(done) => {
                let (label, own) = self.key.label(&memo.key);
                if own {
                    metrics::gauge_set(
                        "breaker_failure_rate",
                        &[("key", &label)],
                        done.failure_rate,
                    );
                }
                if let Some(t) = done.transition {
                    report_transition(&self.key, &memo.key, t);
                } else if own {
                    metrics::gauge_set("breaker_state", &[("key", &label)], done.phase.gauge());
                }
            }
            Err(e) => self.warn(now, &memo.key, &e),
        }
        ResponseAction::proceed()
    }
}

weir_filter::export_filter!(Breaker);

impl Breaker {
    fn warn(&mut self, now: u64, key: &str, e: &StoreFailure) {
        if now.saturating_sub(self.last_warning_ms) >= WARN_EVERY_MS {
            self.last_warning_ms = now;
            weir_filter::log::warn(&format!(
                "breaker {key}: {e}; letting calls through unrecorded"
            ));
        }
    }
}

/// Whether a call with this outcome, which took `took_ms`, failed and was slow.
pub fn classify(
    failures: &config::FailureStatuses,
    slow_call_ms: u64,
    outcome: &Outcome,
    took_ms: u64,
) -> Call {
    Call {
        failed: match outcome {
            Outcome::Response(r) => failures.is_failure(r.status()),
            Outcome::Error(_) => true,
        },
        slow: took_ms > slow_call_ms,
    }
}

/// The 503 an open (or full half-open) breaker answers with.
pub fn rejection(key: &str, phase: Phase, retry_after_s: u64) -> Response {
    let body = json!({
        "error": "breaker_open",
        "key": key,
        "state": phase.name(),
        "retry_after": retry_after_s,
        "message": format!(
            "the circuit breaker for {key} is {}; retry in {retry_after_s}s",
            match phase {
                Phase::HalfOpen => "half-open and all its probes are taken",
                _ => "open",
            }
        ),
    });
    Response::json(503, &body).with_header("retry-after", retry_after_s.to_string())
}

/// The 503 for a call the state store could not check, with `on_state_error = "reject"`.
pub fn state_unavailable(key: &str, e: &StoreFailure) -> Response {
    let body = json!({
        "error": "state_unavailable",
        "key": key,
        "message": format!("breaker: the state store is unavailable ({e}); the call was not sent"),
    });
    Response::json(503, &body).with_header("retry-after", "1")
}

fn report_transition(source: &KeySource, key: &str, t: Transition) {
    let (label, own) = source.label(key);
    if own {
        metrics::gauge_set("breaker_state", &[("key", &label)], t.to.gauge());
    }
    metrics::counter_add(
        "breaker_transitions_total",
        &[("key", &label), ("to", t.to.name())],
        1,
    );
    let why = match t.from {
        Phase::Open => String::new(),
        _ => format!(
            " ({} calls, failure rate {:.1}%, slow-call rate {:.1}%)",
            t.tally.calls,
            t.tally.failure_rate(),
            t.tally.slow_rate()
        ),
    };
    weir_filter::log::info(&format!(
        "breaker {key}: {} -> {}{why}",
        t.from.name(),
        t.to.name()
    ));
}

fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

// === impl SharedState ===

/// `weir_filter::state`: shared by every instance, route and (with a shared backend)
/// process.
struct SharedState;

impl Store for SharedState {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        weir_filter::state::get(key).map_err(|e| format!("{e:?}"))
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, String> {
        weir_filter::state::compare_and_swap(
            key,
            expected,
            new,
            Some(Duration::from_millis(ttl_ms)),
        )
        .map_err(|e| format!("{e:?}"))
    }

    fn incr(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, String> {
        weir_filter::state::incr(key, delta, Some(Duration::from_millis(ttl_ms)))
            .map_err(|e| format!("{e:?}"))
    }

    fn window_add(
        &self,
        key: &str,
        window: weir_filter::state::Window,
        now_ms: u64,
        lanes: Option<&[i64]>,
        ttl_ms: u64,
    ) -> Result<Vec<i64>, String> {
        let now_ns = now_ms.saturating_mul(1_000_000);
        let ttl = Some(Duration::from_millis(ttl_ms));
        weir_filter::state::window_add(key, window, now_ns, now_ns, lanes, ttl)
            .map_err(|e| format!("{e:?}"))
    }
}

// === impl Memo ===

/// What `on-request` hands to `on-response` of the same try:
/// `"<gen> <probe id or -> <start ms> <key>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memo {
    /// The admission.
    pub ticket: Ticket,
    /// When `on-request` let the call through (Unix ms).
    pub start_ms: u64,
    /// The breaker key, so `on-response` need not compute it again.
    pub key: String,
}

impl Memo {
    /// The memo's bytes, in the SDK's binary [`codec`]: a memo is made and read on every
    /// request, and printing and parsing it as text cost about ten times as much.
    ///
    /// [`codec`]: weir_filter::codec
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(29 + self.key.len());
        w.extend_from_slice(&self.ticket.generation.to_be_bytes());
        match self.ticket.probe {
            None => w.push(0),
            Some(p) => {
                w.push(1);
                w.extend_from_slice(&p.to_be_bytes());
            }
        }
        w.extend_from_slice(&self.start_ms.to_be_bytes());
        weir_filter::codec::put_bytes(&mut w, self.key.as_bytes());
        w
    }

    /// Parses a memo; `None` if it is not one.
    pub fn decode(bytes: &[u8]) -> Option<Memo> {
        let mut r = weir_filter::codec::Reader::new(bytes);
        let generation = r.u64()?;
        let probe = match r.u8()? {
            0 => None,
            1 => Some(r.u64()?),
            _ => return None,
        };
        let memo = Memo {
            ticket: Ticket { generation, probe },
            start_ms: r.u64()?,
            key: r.string()?,
        };
        r.is_empty().then_some(memo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FailureStatuses;
    use weir_filter::UpstreamError;

    #[test]
    fn memo_round_trips_keys_with_spaces() {
        for probe in [None, Some(7)] {
            let memo = Memo {
                ticket: Ticket {
                    generation: 3,
                    probe,
                },
                start_ms: 1_700_000_000_123,
                key: "tenant a b".into(),
            };
            assert_eq!(Memo::decode(&memo.encode()), Some(memo));
        }
        let good = Memo {
            ticket: Ticket {
                generation: 3,
                probe: None,
            },
            start_ms: 1,
            key: "k".into(),
        }
        .encode();
        assert_eq!(Memo::decode(&good[..good.len() - 1]), None, "cut short");
        assert_eq!(Memo::decode(&[&good[..], b"x"].concat()), None, "trailing");
        let mut not_a_tag = good.clone();
        not_a_tag[8] = 2;
        assert_eq!(Memo::decode(&not_a_tag), None);
    }

    #[test]
    fn classify_failures_and_slowness() {
        let any = FailureStatuses::Any5xx;
        let ok = Outcome::Response(Response::new(200));
        let err = Outcome::Response(Response::new(503));
        let reset = Outcome::Error(UpstreamError::Reset);
        assert_eq!(
            classify(&any, 100, &ok, 100),
            Call {
                failed: false,
                slow: false
            }
        );
        assert_eq!(
            classify(&any, 100, &ok, 101),
            Call {
                failed: false,
                slow: true
            }
        );
        assert_eq!(
            classify(&any, 100, &err, 0),
            Call {
                failed: true,
                slow: false
            }
        );
        assert_eq!(
            classify(&any, 100, &reset, 500),
            Call {
                failed: true,
                slow: true
            }
        );
        // An upstream error fails even when the status list is empty.
        let none = FailureStatuses::List(vec![]);
        assert!(!classify(&none, 100, &err, 0).failed);
        assert!(classify(&none, 100, &reset, 0).failed);
    }

    #[test]
    fn rejection_names_the_key_and_says_when_to_retry() {
        let r = rejection("https://api.example.com", Phase::Open, 42);
        assert_eq!(r.status(), 503);
        assert_eq!(r.header_str("retry-after").as_deref(), Some("42"));
        assert_eq!(
            r.header_str("content-type").as_deref(),
            Some("application/json")
        );
        let body: weir_filter::serde_json::Value =
            weir_filter::serde_json::from_slice(r.body().unwrap()).unwrap();
        assert_eq!(body["error"], "breaker_open");
        assert_eq!(body["key"], "https://api.example.com");
        assert_eq!(body["state"], "open");
        assert_eq!(body["retry_after"], 42);
        let r = rejection("k", Phase::HalfOpen, 1);
        assert_eq!(r.header_str("retry-after").as_deref(), Some("1"));
    }

    #[test]
    fn state_unavailable_is_json_naming_the_key_and_the_failure() {
        let e =
            StoreFailure::Unavailable("redis at redis://r:6379: no answer within 250 ms".into());
        let r = state_unavailable("https://api.example.com", &e);
        assert_eq!(r.status(), 503);
        assert_eq!(r.header_str("retry-after").as_deref(), Some("1"));
        let body: weir_filter::serde_json::Value =
            weir_filter::serde_json::from_slice(r.body().unwrap()).unwrap();
        assert_eq!(body["error"], "state_unavailable");
        assert_eq!(body["key"], "https://api.example.com");
        assert_eq!(
            body["message"],
            "breaker: the state store is unavailable (state unavailable: redis at redis://r:6379: no answer within 250 ms); the call was not sent"
        );
        let err =
            weir_filter::build_filter::<Breaker>(r#"{"on_state_error": "deny"}"#).unwrap_err();
        assert_eq!(
            err,
            "breaker: on_state_error: expected \"allow\" or \"reject\", got \"deny\""
        );
    }

    #[test]
    fn asks_for_both_phases() {
        // `on_request` admits or rejects; `on_response` records the outcome.
        let breaker = weir_filter::build_filter::<Breaker>("{}").unwrap();
        assert_eq!(breaker.info().phases, weir_filter::Phases::BOTH);
    }

    #[test]
    fn init_errors_are_prefixed_with_the_filter_name() {
        let err =
            weir_filter::build_filter::<Breaker>(r#"{"wait_in_open": "forever"}"#).unwrap_err();
        assert!(
            err.starts_with("breaker: wait_in_open: invalid duration"),
            "{err}"
        );
        assert!(weir_filter::build_filter::<Breaker>("").is_ok());
    }
}
