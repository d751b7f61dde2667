//! `retry`: weir's standard retry filter, with the semantics of Envoy's router retry
//! policy.
//!
//! When an attempt fails in a way `retry_on` names, the filter asks weir to send the
//! request again (through the filters after it, to the upstream) after a full-jitter
//! backoff, up to `max_retries` times, all within the route's `timeout`. A retry budget
//! shared by every weir instance keeps retries a small share of the traffic to an upstream,
//! so retries cannot multiply the load on an upstream that is already failing. Every
//! response the filter passes on carries `x-weir-attempts`.
//!
//! # Config reference
//!
//! Every key is optional; unknown keys and wrong types are errors that name the key.
//! Durations are strings: `"250ms"`, `"2s"`, `"1.5m"`, `"1h"`, at least `"1ms"`.
//!
//! | key | type | default | meaning |
//! | --- | --- | --- | --- |
//! | `max_retries` | integer, 0 to 9 | `1` | retries after the first attempt (weir makes at most 10 attempts) |
//! | `retry_on` | list of conditions | `["5xx"]` | which outcomes are retried, see below |
//! | `retriable_status_codes` | list of statuses | `[]` | the statuses `retriable-status-codes` retries; required with it, refused without it |
//! | `retriable_methods` | list of methods | `["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]` | methods retried once the request was sent (any case) |
//! | `base_interval` | duration | `"25ms"` | the backoff's base |
//! | `max_interval` | duration | 10 × `base_interval` (`"250ms"`) | the backoff's cap; not less than `base_interval` |
//! | `per_try_timeout` | duration | none | how long each attempt may wait for the response head |
//! | `budget_percent` | number, 0 to 100 | `20` | concurrent retries to an upstream, as a percentage of its active requests |
//! | `min_retry_concurrency` | integer | `3` | concurrent retries to an upstream allowed whatever the percentage gives |
//!
//! `retry_on` conditions:
//!
//! | condition | retries |
//! | --- | --- |
//! | `5xx` | any 5xx response, or no response at all (any upstream error: connect failure, connect timeout, weir's connection limit, TLS failure, reset, timeout, broken HTTP) |
//! | `gateway-error` | 502, 503, 504, or no response at all (weir answers those with 502, 503 or 504 itself) |
//! | `connect-failure` | the connection could not be made: connect failure, connect timeout, or weir's own `max_connections` for the upstream was full |
//! | `reset` | the request was sent but no response head came: reset, timeout (route or per-try), broken HTTP |
//! | `retriable-4xx` | 409 Conflict |
//! | `retriable-status-codes` | a status in `retriable_status_codes` |
//!
//! # Behaviour
//!
//! After each attempt the filter decides, in this order:
//!
//! 1. **Retriable?** If no `retry_on` condition matches the outcome, it is passed on.
//! 2. **Safe?** If the request was sent, it is retried only if its method is in
//!    `retriable_methods` or it carries an `Idempotency-Key` header. A request that was
//!    never sent (connect failure or timeout, TLS handshake failure, weir's connection
//!    limit) is always safe to retry. A `POST` without `Idempotency-Key` that got a 503 is
//!    passed on.
//! 3. **Retries left?** After `max_retries` retries the outcome is passed on. Retries by a
//!    filter later in the chain count too: the count is the request's attempt number.
//! 4. **When?** A 429 or 503 with `Retry-After` (delay-seconds or an HTTP-date) is retried
//!    after that long instead of the backoff, if that is less than the time the route has
//!    left; otherwise the response is passed on as it is. Else, before retry *N* the delay
//!    is uniform in [0, (2^*N* − 1) · `base_interval`), the bound capped at
//!    `max_interval` (with the defaults: below 25 ms, 75 ms, 175 ms, then 250 ms). A
//!    delay that would not end before the route's deadline passes the outcome on.
//! 5. **Budget.** The retry must fit the upstream's retry budget (below), or the outcome
//!    is passed on.
//!
//! The route's `timeout` covers every attempt and every delay: with a 3 s route timeout
//! and a first attempt that takes 2.7 s, the retry gets at most 0.3 s. `per_try_timeout`
//! applies only while it is shorter than what the route has left; an attempt that runs
//! past it ends as a timeout, which `5xx`, `gateway-error` and `reset` retry.
//!
//! The response passed on, retried or not, carries `x-weir-attempts: N`, the request's
//! number of attempts, also on weir's own error response when no attempt got an answer.
//!
//! # Retry budget and state keys
//!
//! Concurrent retries to an upstream (from the `retry` answer until the outcome of the
//! attempt it asked for) may be at most `budget_percent` % of the requests to it that are
//! active in this filter, rounded down, but never fewer than `min_retry_concurrency`: with
//! the defaults, 10 active requests allow 3 concurrent retries and 50 allow 10. Upstreams
//! are told apart by origin, and the counts are shared by every route, instance and (with
//! the Redis backend) weir process:
//!
//! - `budget:active:<origin>`: requests to `<origin>` that have not ended;
//! - `budget:retrying:<origin>`: their retries in flight.
//!
//! Each is a time window (`state::window_add`) of 4 slots of 10 s of wall-clock time
//! (Unix time / 10 s), one lane: a request adds 1 to the slot it started in and -1 to
//! the same slot when it ends, and the count is the window's sum. Every update is one
//! atomic call that also returns the sum, so requests never retry against each other on
//! these hot keys (a retry costs two calls, three if over budget). An update that never
//! comes (the client went away, the deadline struck mid-retry) is forgotten within 40 s
//! when its slot leaves the window, and can never wedge the budget; each key expires 50 s
//! after its last update. A request older than 30 s stops counting as active, which only
//! makes the budget stricter. If the state backend is unavailable the budget fails open:
//! retries follow the rest of the policy.
//!
//! Metrics (with weir's `route` and `filter` labels): `weir_filter_retries` counts retries
//! asked for, and `weir_filter_retries_skipped{reason}` outcomes that matched `retry_on`
//! but were passed on (`not_safe`, `exhausted`, `retry_after_too_long`, `no_time_left`,
//! `budget`).
//!
//! # Example
//!
//! ```toml
//! [filters.retry]
//! # Built in: no `wasm` needed.
//! config = { max_retries = 2, retry_on = ["gateway-error", "reset"], per_try_timeout = "2s" }
//!
//! [[routes]]
//! name = "payments"
//! match = { path_prefix = "/payments/" }
//! upstream = "payments"
//! timeout = "10s"
//! # This route also retries 409s, and POSTs (the upstream dedupes on Idempotency-Key).
//! filters = [{ use = "retry", config = { retry_on = ["gateway-error", "reset", "retriable-4xx"] } }]
//! ```

// The SDK keeps all the unsafe ABI glue in its own crate; a filter needs none.
#![forbid(unsafe_code)]

pub mod budget;
pub mod config;
pub mod policy;

use std::time::{Duration, SystemTime};

use weir_filter::{
    Filter, Info, Outcome, Request, RequestAction, RequestEdit, RequestInfo, ResponseAction,
    ResponseEdit,
};

use crate::budget::{Count, Store};
use crate::config::{Config, Policy};
use crate::policy::{Try, Verdict, Why};

/// The response header that tells the client how many attempts were made.
pub const ATTEMPTS_HEADER: &str = "x-weir-attempts";

/// The filter: the checked policy. Everything about one request travels in its memo.
#[derive(Debug, Clone)]
pub struct Retry {
    policy: Policy,
}

/// What the filter decided about one outcome, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Retry after this delay.
    Retry(Duration),
    /// Pass the outcome on, for this reason.
    Final(Why),
    /// The policy would retry, but the upstream's retry budget is spent.
    OverBudget,
}

/// The moment a decision is made: the wall-clock time, and a uniformly random number
/// that picks the backoff delay.
#[derive(Debug, Clone, Copy)]
pub struct Moment {
    /// The wall-clock time now.
    pub now: SystemTime,
    /// A uniformly random number.
    pub random: u64,
}

/// What `on_request` tells `on_response` about the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memo {
    /// The attempt number when the request passed this filter; later attempts are this
    /// filter's retries.
    pub first_attempt: u32,
    /// The budget bucket the request started in.
    pub start: u64,
    /// Whether the request was added to the active count (the store may be down).
    pub counted: bool,
}

impl Memo {
    /// `first_attempt`, `start` and `counted` in the SDK's binary [`codec`]: a memo is
    /// made and read on every request, and printing and parsing it as text cost about
    /// ten times as much.
    ///
    /// [`codec`]: weir_filter::codec
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(17);
        w.extend_from_slice(&u64::from(self.first_attempt).to_be_bytes());
        w.extend_from_slice(&self.start.to_be_bytes());
        w.push(u8::from(self.counted));
        w
    }

    /// The memo `encode` made, or `None`.
    pub fn decode(bytes: &[u8]) -> Option<Memo> {
        let mut r = weir_filter::codec::Reader::new(bytes);
        let memo = Memo {
            first_attempt: u32::try_from(r.u64()?).ok()?,
            start: r.u64()?,
            counted: match r.u8()? {
                0 => false,
                1 => true,
                _ => return None,
            },
        };
        r.is_empty().then_some(memo)
    }
}

impl Retry {
    /// The filter's policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// `on_request` with its inputs explicit: counts the request as active and sets the
    /// per-try timeout if it is shorter than what the route has left.
    pub fn request(
        &self,
        store: &mut impl Store,
        info: &RequestInfo,
        req: &Request,
        now: SystemTime,
    ) -> RequestAction {
        let start = budget::bucket(now);
        let counted = budget::enter(store, Count::Active, req.upstream(), start, start).is_ok();
        let memo = Memo {
            first_attempt: info.attempt(),
            start,
            counted,
        };
        let edit = self
            .policy
            .per_try_timeout
            .filter(|t| t.as_millis() < u128::from(info.remaining_ms()))
            .map(|t| RequestEdit::new().try_timeout(t));
        RequestAction::proceed_with(edit, Some(memo.encode()))
    }

    /// `on_response` with its inputs explicit: the action, and the decision behind it.
    pub fn response(
        &self,
        store: &mut impl Store,
        info: &RequestInfo,
        req: &Request,
        memo: Option<&[u8]>,
        outcome: &Outcome,
        at: Moment,
    ) -> (ResponseAction, Decision) {
        let Moment { now, random } = at;
        let bucket = budget::bucket(now);
        let Some(memo) = memo.and_then(Memo::decode) else {
            // on_request did not run for this request (it failed open): there is no count
            // to keep, so there is no budget to retry within.
            return (attempts(info), Decision::Final(Why::NotRetriable));
        };
        let retries_done = info.attempt().saturating_sub(memo.first_attempt);
        if retries_done > 0 {
            // The try this filter asked for is over: its retry slot is free again.
            let _ = budget::leave(store, Count::Retrying, req.upstream(), memo.start, bucket);
        }
        let t = Try {
            method: req.method(),
            idempotency_key: req.header("idempotency-key").is_some(),
            retries_done,
            remaining: Duration::from_millis(info.remaining_ms()),
            now,
        };
        let decision = match policy::decide(&self.policy, outcome, &t, random) {
            Verdict::Retry(delay) => {
                let p = &self.policy;
                match budget::try_acquire(
                    store,
                    req.upstream(),
                    memo.start,
                    bucket,
                    p.budget_percent,
                    p.min_retry_concurrency,
                ) {
                    // A store that is down fails open: the rest of the policy still bounds
                    // the retries.
                    Ok(true) | Err(_) => Decision::Retry(delay),
                    Ok(false) => Decision::OverBudget,
                }
            }
            Verdict::Final(why) => Decision::Final(why),
        };
        match decision {
            Decision::Retry(delay) => {
                let ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
                (ResponseAction::Retry(ms), decision)
            }
            Decision::Final(_) | Decision::OverBudget => {
                if memo.counted {
                    let _ = budget::leave(store, Count::Active, req.upstream(), memo.start, bucket);
                }
                (attempts(info), decision)
            }
        }
    }
}

/// Pass the outcome on with the number of attempts.
fn attempts(info: &RequestInfo) -> ResponseAction {
    ResponseAction::proceed_with_edit(
        ResponseEdit::new().set_header(ATTEMPTS_HEADER, info.attempt().to_string()),
    )
}

impl Filter for Retry {
    type Config = Config;
    const NAME: &'static str = "retry";

    fn new(config: Config) -> Result<Self, String> {
        Ok(Retry {
            policy: Policy::from_config(config)?,
        })
    }

    fn info(&self) -> Info {
        Info {
            may_retry: true,
            ..Info::default()
        }
    }

    fn on_request(&mut self, info: &RequestInfo, req: &Request) -> RequestAction {
        self.request(&mut StateStore, info, req, SystemTime::now())
    }

    fn on_response(
        &mut self,
        info: &RequestInfo,
        req: &Request,
        memo: Option<Vec<u8>>,
        outcome: &Outcome,
    ) -> ResponseAction {
        let (action, decision) = self.response(
            &mut StateStore,
            info,
            req,
            memo.as_deref(),
            outcome,
            Moment {
                now: SystemTime::now(),
                random: random(),
            },
        );
        match decision {
            Decision::Retry(_) => weir_filter::metrics::counter_add("retries", &[], 1),
            Decision::Final(Why::NotRetriable) => {}
            Decision::Final(why) => {
                weir_filter::metrics::counter_add("retries_skipped", &[("reason", why.as_str())], 1)
            }
            Decision::OverBudget => {
                weir_filter::metrics::counter_add("retries_skipped", &[("reason", "budget")], 1)
            }
        }
        action
    }
}

weir_filter::export_filter!(Retry);

/// A uniformly random number from the WASI random source.
fn random() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        // Never expected; the clock's nanoseconds still spread retries apart.
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()))
            .unwrap_or(0)
    })
}

// === impl StateStore ===

/// The budget's counts in weir's shared `state`.
struct StateStore;

impl Store for StateStore {
    fn add(&mut self, key: &str, at: u64, now: u64, delta: Option<i64>) -> Result<i64, String> {
        use weir_filter::state::{self, TimeWindow, Window};
        let window = Window::Time(TimeWindow {
            slot_ms: budget::BUCKET.as_millis() as u32,
            slots: budget::WINDOW as u32,
        });
        // The start of each bucket: the host finds the same slots again from it.
        let bucket_ns = budget::BUCKET.as_nanos() as u64;
        let lanes = delta.map(|d| [d]);
        let at_ns = at.saturating_mul(bucket_ns);
        let now_ns = now.saturating_mul(bucket_ns);
        let sums = state::window_add(
            key,
            window,
            at_ns,
            now_ns,
            lanes.as_ref().map(|l| &l[..]),
            Some(budget::TTL),
        )
        .map_err(|e| unavailable(&e))?;
        Ok(sums.first().copied().unwrap_or(0))
    }
}

fn unavailable(e: &weir_filter::state::StateError) -> String {
    let message = format!("retry budget: state unavailable, not enforced: {e:?}");
    weir_filter::log::warn(&message);
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    use weir_filter::{Phases, Response, UpstreamError, build_filter};

    use crate::budget::tests::FakeStore;

    const UP: &str = "http://api.test";

    fn filter(json: &str) -> Retry {
        build_filter::<Retry>(json).unwrap()
    }

    fn req(method: &str) -> Request {
        Request::new(method, "/x").with_upstream(UP)
    }

    fn info(attempt: u32, remaining_ms: u64) -> RequestInfo {
        RequestInfo::new("r1")
            .with_route("test")
            .with_attempt(attempt)
            .with_remaining_ms(remaining_ms)
            .with_client_addr("127.0.0.1:1")
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn at(random: u64) -> Moment {
        Moment { now: now(), random }
    }

    fn memo_of(action: &RequestAction) -> Vec<u8> {
        match action {
            RequestAction::Continue((_, Some(memo))) => memo.clone(),
            other => panic!("expected a memo, got {other:?}"),
        }
    }

    fn attempts_header(action: &ResponseAction) -> Option<String> {
        match action {
            ResponseAction::Continue(Some(edit)) => edit
                .set_headers
                .iter()
                .find(|(n, _)| n == ATTEMPTS_HEADER)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap()),
            _ => None,
        }
    }

    #[test]
    fn info_asks_for_retries_and_no_bodies() {
        let info = filter("{}").info();
        assert!(info.may_retry);
        assert!(!info.wants_request_body && !info.wants_response_body);
        // on_request counts the request and sets the per-try timeout; on_response retries.
        assert_eq!(info.phases, Phases::BOTH);
    }

    #[test]
    fn invalid_config_is_an_init_error_naming_the_key() {
        let err = build_filter::<Retry>(r#"{"max_retries": 12}"#).unwrap_err();
        assert!(err.starts_with("retry: max_retries: "), "{err}");
    }

    #[test]
    fn memo_round_trips_and_rejects_garbage() {
        let m = Memo {
            first_attempt: 2,
            start: 170_000_000,
            counted: true,
        };
        assert_eq!(Memo::decode(&m.encode()), Some(m));
        let good = m.encode();
        let mut longer = good.clone();
        longer.push(0);
        let mut not_a_flag = good.clone();
        *not_a_flag.last_mut().unwrap() = 2;
        let huge_attempt = [&u64::MAX.to_be_bytes()[..], &good[8..]].concat();
        for bad in [
            &b""[..],
            &good[..good.len() - 1],
            &longer,
            &not_a_flag,
            &huge_attempt,
        ] {
            assert_eq!(Memo::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_request_that_fails_twice_then_succeeds() {
        let f = filter(r#"{"max_retries": 3}"#);
        let mut s = FakeStore::default();
        let r = req("GET");
        let memo = memo_of(&f.request(&mut s, &info(1, 30_000), &r, now()));
        assert_eq!(
            budget::total(&mut s, Count::Active, UP, budget::bucket(now())).unwrap(),
            1
        );
        let bad = Outcome::Response(Response::new(503));
        for attempt in 1..=2 {
            let (action, decision) = f.response(
                &mut s,
                &info(attempt, 30_000),
                &r,
                Some(&memo),
                &bad,
                at(10),
            );
            assert!(matches!(action, ResponseAction::Retry(10)), "{action:?}");
            assert_eq!(decision, Decision::Retry(Duration::from_millis(10)));
            // One retry in flight at a time.
            assert_eq!(
                budget::total(&mut s, Count::Retrying, UP, budget::bucket(now())).unwrap(),
                1
            );
        }
        let ok = Outcome::Response(Response::new(200));
        let (action, decision) = f.response(&mut s, &info(3, 30_000), &r, Some(&memo), &ok, at(10));
        assert_eq!(decision, Decision::Final(Why::NotRetriable));
        assert_eq!(attempts_header(&action).as_deref(), Some("3"));
        // The request and its retries are done: both counts are back at zero.
        let b = budget::bucket(now());
        assert_eq!(budget::total(&mut s, Count::Active, UP, b).unwrap(), 0);
        assert_eq!(budget::total(&mut s, Count::Retrying, UP, b).unwrap(), 0);
    }

    #[test]
    fn attempts_header_is_on_every_final_outcome() {
        let f = filter(r#"{"max_retries": 0}"#);
        let mut s = FakeStore::default();
        let r = req("GET");
        let memo = memo_of(&f.request(&mut s, &info(1, 30_000), &r, now()));
        let (action, decision) = f.response(
            &mut s,
            &info(1, 30_000),
            &r,
            Some(&memo),
            &Outcome::Error(UpstreamError::ConnectFailed),
            at(0),
        );
        assert_eq!(decision, Decision::Final(Why::Exhausted));
        assert_eq!(attempts_header(&action).as_deref(), Some("1"));
        // Without a memo (on_request failed open) there are no retries, but a header.
        let (action, _) = f.response(
            &mut s,
            &info(1, 30_000),
            &r,
            None,
            &Outcome::Response(Response::new(503)),
            at(0),
        );
        assert_eq!(attempts_header(&action).as_deref(), Some("1"));
    }

    #[test]
    fn retries_count_from_the_attempt_this_filter_first_saw() {
        // An earlier filter retried: this filter first sees attempt 3.
        let f = filter("{}");
        let mut s = FakeStore::default();
        let r = req("GET");
        let memo = memo_of(&f.request(&mut s, &info(3, 30_000), &r, now()));
        let bad = Outcome::Response(Response::new(502));
        let (action, _) = f.response(&mut s, &info(3, 30_000), &r, Some(&memo), &bad, at(0));
        assert!(matches!(action, ResponseAction::Retry(0)));
        let (action, decision) = f.response(&mut s, &info(4, 30_000), &r, Some(&memo), &bad, at(0));
        assert_eq!(decision, Decision::Final(Why::Exhausted));
        assert_eq!(attempts_header(&action).as_deref(), Some("4"));
    }

    #[test]
    fn per_try_timeout_only_when_shorter_than_the_time_left() {
        let f = filter(r#"{"per_try_timeout": "2s"}"#);
        let mut s = FakeStore::default();
        let r = req("GET");
        let mut edit = |remaining| match f.request(&mut s, &info(1, remaining), &r, now()) {
            RequestAction::Continue((edit, _)) => edit,
            other => panic!("{other:?}"),
        };
        let e = edit(30_000).expect("an edit");
        assert_eq!(e.try_timeout_ms, Some(2000));
        assert!(e.set_headers.is_empty() && e.body.is_none());
        assert_eq!(edit(2001).and_then(|e| e.try_timeout_ms), Some(2000));
        assert_eq!(edit(2000), None);
        assert_eq!(edit(500), None);
        let f = filter("{}");
        assert!(matches!(
            f.request(&mut s, &info(1, 30_000), &r, now()),
            RequestAction::Continue((None, Some(_)))
        ));
    }

    #[test]
    fn over_budget_passes_the_outcome_on() {
        let f = filter(r#"{"min_retry_concurrency": 1, "budget_percent": 0}"#);
        let mut s = FakeStore::default();
        let bad = Outcome::Response(Response::new(503));
        let r = req("GET");
        let m1 = memo_of(&f.request(&mut s, &info(1, 30_000), &r, now()));
        let m2 = memo_of(&f.request(&mut s, &info(1, 30_000), &r, now()));
        let (a1, _) = f.response(&mut s, &info(1, 30_000), &r, Some(&m1), &bad, at(0));
        assert!(matches!(a1, ResponseAction::Retry(_)));
        let (a2, d2) = f.response(&mut s, &info(1, 30_000), &r, Some(&m2), &bad, at(0));
        assert_eq!(d2, Decision::OverBudget);
        assert_eq!(attempts_header(&a2).as_deref(), Some("1"));
    }

    #[test]
    fn a_store_that_is_down_does_not_stop_retries() {
        let f = filter("{}");
        let mut s = FakeStore::failing();
        let r = req("PUT");
        let memo = memo_of(&f.request(&mut s, &info(1, 30_000), &r, now()));
        assert!(!Memo::decode(&memo).unwrap().counted);
        let bad = Outcome::Error(UpstreamError::Reset);
        let (action, _) = f.response(&mut s, &info(1, 30_000), &r, Some(&memo), &bad, at(3));
        assert!(matches!(action, ResponseAction::Retry(3)));
    }
}
