//! `limiter`: weir's standard rate limiter, a token bucket per key, shared by every weir
//! process that shares the state store, with the IETF `RateLimit` headers.
//!
//! Each key has a bucket of `burst` tokens that refills at `rate` tokens per `per`. A
//! request takes one token. Without one it is rejected with 429 (`mode = "reject"`), or
//! it waits for the next token (`mode = "queue"`). Over any long run the admitted count
//! stays within `rate` per `per`, plus `burst`. When the upstream itself answers 429 with
//! `Retry-After`, the key is paused for that long, and weir answers 429 itself, without
//! calling the upstream.
//!
//! # Config reference
//!
//! Unknown keys are errors, and every error names its key (`limiter: rate must be at
//! least 1`).
//!
//! | key | type | default | meaning |
//! | --- | --- | --- | --- |
//! | `rate` | integer ≥ 1 | required | tokens added per `per` |
//! | `per` | duration, whole seconds, 1s–24h | `"1s"` | the refill period |
//! | `burst` | integer ≥ 1 | `rate` | the bucket's capacity: how many requests may pass at once after a quiet spell |
//! | `key` | `"route"`, `"client"` or `{ header = "NAME" }` | `"route"` | what a bucket belongs to, see below |
//! | `mode` | `"reject"` or `"queue"` | `"reject"` | what happens without a token |
//! | `max_wait` | duration | `"1s"` | queue mode only: the longest a request waits for its token |
//! | `max_queue` | integer ≥ 1 | `100` | queue mode only: the most requests waiting per key |
//! | `on_state_error` | `"allow"` or `"reject"` | `"allow"` | when the state store fails: let the request pass, or answer 503 (see "State") |
//!
//! Durations are a number and a unit: `"250ms"`, `"1.5s"`, `"1m"`, `"1h"`, `"1d"`. The
//! rate may be at most one token per microsecond. `max_wait` and `max_queue` are errors
//! in reject mode.
//!
//! Keys, always within the route (two routes never share a bucket):
//!
//! - `"route"`: one bucket for the whole route.
//! - `"client"`: one bucket per client IP address, without the port (an IPv4-mapped
//!   IPv6 address counts as the IPv4 address).
//! - `{ header = "x-api-key" }`: one bucket per value of that request header (a tenant,
//!   an API key). Requests **without** the header are not rejected: they all share one
//!   bucket of their own, so put an auth filter in front if anonymous requests must not
//!   pass at all. Header values are stored hashed (128-bit FNV-1a), never in clear.
//!
//! # Example
//!
//! ```toml
//! [[routes]]
//! name = "partner-api"
//! match = { path_prefix = "/partner/" }
//! upstream = "partner"
//! timeout = "10s"
//! # 20 requests per second per API key, bursts of up to 40; wait up to 500 ms for a
//! # token rather than fail at once, with at most 50 requests waiting per key.
//! filters = [
//!   { use = "limiter", config = { rate = 20, burst = 40, key = { header = "x-api-key" }, mode = "queue", max_wait = "500ms", max_queue = 50 } },
//! ]
//! ```
//!
//! # Behaviour
//!
//! - **Admitted**: the request goes on. The response gets `RateLimit-Policy` and
//!   `RateLimit` (below, replacing any the upstream sent), with `r` the tokens left after
//!   this request, unless the upstream answered 429 (its own headers then pass
//!   untouched) or there is no response.
//! - **Rejected** (reject mode with an empty bucket, a full queue, a token due later than
//!   `max_wait` or than the route deadline, or a paused key): 429 with `Retry-After`
//!   (whole seconds, rounded up, at least 1, until a request could pass), both headers
//!   with `r=0` and `t` equal to `Retry-After`, and a JSON body
//!   `{"error": "rate_limited", "message", "route", "request_id"}`. A rejected request
//!   takes no token.
//! - **Queued**: the request reserves the next free token (the bucket goes into debt)
//!   and the filter answers `wait(ms)` until exactly when that token is due; weir then
//!   calls it again, it recognises the reservation and lets the request go. The number
//!   waiting per key is read off the bucket's debt, so the queue is bounded by
//!   `max_queue` and holds no per-request memory beyond the reservation marker. A request
//!   that gives up while waiting (its route deadline) forfeits its token: the limiter
//!   errs on the side of admitting less, never more. If the key is paused while a request
//!   waits, that request is rejected when it wakes.
//! - **Upstream 429**: `Retry-After` as delay-seconds or an HTTP-date pauses the key
//!   until then (at most 24 h; a later pause is never shortened by an earlier one). A
//!   429 without a usable `Retry-After` pauses nothing.
//!
//! The headers, after the IETF draft `draft-ietf-httpapi-ratelimit-headers`:
//!
//! ```text
//! RateLimit-Policy: "default";q=<rate>;w=<per in seconds>
//! RateLimit: "default";r=<whole tokens left>;t=<seconds until the next token>
//! ```
//!
//! `q`/`w` state the sustained quota (`rate = 20, per = "1s"` → `q=20;w=1`); the burst is
//! not part of the policy. `t` is rounded up and at least 1; a reject's `t` equals its
//! `Retry-After`.
//!
//! # State
//!
//! Keys (weir prefixes them with `limiter/`). `<id>` is `<route>:route`,
//! `<route>:client:<ip>` or `<route>:header:<name>:<hash>` (`-` for the shared bucket of
//! requests without the header).
//!
//! - `b:<id>`: the bucket, kept by the state store's atomic GCRA primitive: one
//!   `state::bucket_take` per request (a queued request that wakes only reads it, with
//!   `get`), `state::bucket_pause` for an upstream 429. The store holds
//!   `"<tat> <paused_until>"` in nanoseconds since the Unix epoch (the GCRA form of a
//!   token bucket: the instant the bucket is full again, and the end of an
//!   upstream-requested pause, 0 if none). Each call is a single atomic step, so
//!   concurrent instances and processes never lose a token, and never retry against each
//!   other however hot the key. Its TTL runs out when the bucket is full and not paused,
//!   when an absent key means the same.
//! - `q:<id>:<request id>:<attempt>`: queue mode's reservation marker, the due time in
//!   nanoseconds; deleted when the request goes on, and expiring with the route deadline.
//!   The request id is weir's own (`request-info.id`), unique per request, never the
//!   client's `x-request-id`: a request that reuses another's `x-request-id` cannot find,
//!   and ride on, that request's reservation.
//!
//! Buckets use the wall clock, so processes that share a Redis state store should keep
//! their clocks in sync (NTP). If the state store fails (Redis down, or slower than its
//! `timeout`), the limiter fails open by default: the request passes without headers.
//! With `on_state_error = "reject"` it gets 503 `{"error": "state_unavailable", …}`
//! with `Retry-After: 1` instead. Either way the counter `weir_filter_limiter_state_errors_total`
//! goes up. Rejections count in `weir_filter_limiter_rejected_total{reason}`, with reason
//! `empty`, `paused`, `queue_full` or `max_wait`. The gauge
//! `weir_filter_limiter_tokens{key}` holds the whole tokens the bucket had left after its
//! last admitted request (weir's `/status` lists it under `limiters`), for
//! `key = "route"` only: with a `"client"` or header key, clients choose the buckets, and
//! a series per bucket would let them grow weir's metrics without bound, so those
//! buckets have no gauge.

// The SDK keeps all the unsafe ABI glue in its own crate; a filter needs none.
#![forbid(unsafe_code)]

mod bucket;
mod config;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use weir_filter::serde_json::json;
use weir_filter::{
    Filter, Outcome, Request, RequestAction, RequestInfo, Response, ResponseAction, ResponseEdit,
};

pub use bucket::{Bucket, Decision, NS_PER_SEC, Policy, Queue, Reason, Status, take};
pub use config::{Config, Key, Mode, OnStateError, Settings};
use weir_filter::state::{BucketPolicy, TakeOutcome, TakeResult};

/// How long a reservation marker outlives the route deadline, in nanoseconds.
const RESERVATION_SLACK_NS: u64 = NS_PER_SEC;

/// The filter: validated settings; all per-key data lives in the state store.
#[derive(Debug)]
pub struct Limiter {
    settings: Settings,
    /// The `RateLimit-Policy` value, the same on every response.
    policy_header: String,
}

/// What the limiter needs from the host. The filter uses the real state store and
/// metrics; the unit tests use a map.
pub trait Env {
    /// The value under `key`, if any.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Stores `value` under `key` for `ttl_ns` nanoseconds.
    fn set(&self, key: &str, value: &[u8], ttl_ns: u64) -> Result<(), String>;
    /// Removes `key`.
    fn delete(&self, key: &str) -> Result<(), String>;
    /// Atomically takes a token from the bucket under `key` (`state::bucket_take`).
    fn bucket_take(&self, key: &str, policy: BucketPolicy, now: u64) -> Result<TakeResult, String>;
    /// Atomically pauses the bucket under `key` until `until` (`state::bucket_pause`).
    fn bucket_pause(&self, key: &str, until: u64, now: u64) -> Result<(), String>;
    /// Counts a rejection.
    fn rejected(&self, reason: Reason);
    /// Counts a state store failure.
    fn state_failed(&self, detail: &str);
}

impl Filter for Limiter {
    type Config = Config;
    const NAME: &'static str = "limiter";

    fn new(config: Config) -> Result<Self, String> {
        let settings = config.validate()?;
        let p = &settings.policy;
        let policy_header = format!("\"default\";q={};w={}", p.quota, p.window_secs);
        Ok(Limiter {
            settings,
            policy_header,
        })
    }

    fn on_request(&mut self, info: &RequestInfo, req: &Request) -> RequestAction {
        self.request(&Host, now_ns(), info, req)
    }

    fn on_response(
        &mut self,
        _: &RequestInfo,
        _: &Request,
        memo: Option<Vec<u8>>,
        outcome: &Outcome,
    ) -> ResponseAction {
        let memo = memo.as_deref().and_then(Memo::decode);
        // Only the route's one bucket: a client or header key is chosen by clients, and
        // a label per bucket would grow weir's metrics with every new one.
        if self.settings.key == Key::Route
            && let Some(m) = &memo
        {
            weir_filter::metrics::gauge_set(
                "limiter_tokens",
                &[("key", &m.id)],
                m.status.remaining as f64,
            );
        }
        self.respond(&Host, now_ns(), memo, outcome)
    }
}

weir_filter::export_filter!(Limiter);

// === impl Limiter ===

impl Limiter {
    /// The validated settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// `on_request` at time `now` (nanoseconds since the Unix epoch).
    pub fn request(
        &self,
        env: &impl Env,
        now: u64,
        info: &RequestInfo,
        req: &Request,
    ) -> RequestAction {
        let id = bucket_id(&self.settings.key, info, req);
        match self.admit(env, now, info, req, &id) {
            Ok(action) => action,
            Err(e) => {
                env.state_failed(&e);
                match self.settings.on_state_error {
                    OnStateError::Allow => RequestAction::proceed(),
                    OnStateError::Reject => {
                        let body = json!({
                            "error": "state_unavailable",
                            "message": format!(
                                "limiter: the state store is unavailable ({e}); the request was not sent"
                            ),
                            "route": info.route(),
                            "request_id": req.request_id().as_deref().unwrap_or(info.id()),
                        });
                        RequestAction::Respond(
                            Response::json(503, &body).with_header("retry-after", "1"),
                        )
                    }
                }
            }
        }
    }

    /// `on_response` at time `now`, with the memo `request` left.
    pub fn response(
        &self,
        env: &impl Env,
        now: u64,
        memo: Option<&[u8]>,
        outcome: &Outcome,
    ) -> ResponseAction {
        self.respond(env, now, memo.and_then(Memo::decode), outcome)
    }

    /// [`Limiter::response`] with the memo decoded.
    fn respond(
        &self,
        env: &impl Env,
        now: u64,
        memo: Option<Memo>,
        outcome: &Outcome,
    ) -> ResponseAction {
        let (Some(memo), Some(resp)) = (memo, outcome.response()) else {
            return ResponseAction::proceed();
        };
        if resp.status() == 429 {
            let until = resp
                .header_str("retry-after")
                .and_then(|v| bucket::retry_after_until(&v, now));
            if let Some(until) = until
                && let Err(e) = pause(env, &memo.id, until, now)
            {
                env.state_failed(&e);
            }
            return ResponseAction::proceed();
        }
        let (policy, limit) = self.headers(memo.status);
        ResponseAction::proceed_with_edit(
            ResponseEdit::new()
                .set_header("ratelimit-policy", policy)
                .set_header("ratelimit", limit),
        )
    }

    fn admit(
        &self,
        env: &impl Env,
        now: u64,
        info: &RequestInfo,
        req: &Request,
        id: &str,
    ) -> Result<RequestAction, String> {
        let policy = &self.settings.policy;
        let bucket_key = ["b:", id].concat();
        let queue = self.settings.queue.map(|q| Queue {
            // Waiting past the route deadline would only turn the 429 into a 504.
            max_wait: q
                .max_wait
                .min(info.remaining_ms().saturating_mul(1_000_000)),
            ..q
        });
        // `info.id` is weir's own, unique per request: a client that reuses an
        // `x-request-id` cannot take over another request's reservation. Only a queue
        // has reservations: without one, neither fact is asked of weir.
        let reservation_key = || format!("q:{id}:{}:{}", info.id(), info.attempt());
        if queue.is_some() {
            let key = reservation_key();
            if let Some(due) = env.get(&key)?.as_deref().and_then(parse_u64) {
                return self.wake(env, now, info, req, id, &bucket_key, &key, due);
            }
        }
        // One atomic call decides: however many instances and processes take from this
        // bucket at once, none of them retries.
        let taken = env.bucket_take(&bucket_key, bucket_policy(policy, queue), now)?;
        let reject = |reason| {
            let retry_after = bucket::secs_ceil(taken.wait_ns).max(1);
            Ok(self.reject(env, info, req, reason, retry_after))
        };
        match taken.outcome {
            TakeOutcome::Admitted => {
                let status = bucket::status(policy, taken.tat_ns, now);
                Ok(self.admitted(id, status))
            }
            TakeOutcome::Reserved => {
                let due = now.saturating_add(taken.wait_ns);
                // The marker only has to outlive the request, which the route deadline
                // bounds.
                let ttl = info
                    .remaining_ms()
                    .saturating_mul(1_000_000)
                    .max(taken.wait_ns)
                    .saturating_add(RESERVATION_SLACK_NS);
                env.set(&reservation_key(), due.to_string().as_bytes(), ttl)?;
                Ok(RequestAction::Wait(bucket::millis_ceil(taken.wait_ns)))
            }
            TakeOutcome::Paused => reject(Reason::Paused),
            TakeOutcome::QueueFull => reject(Reason::QueueFull),
            TakeOutcome::TooLong => reject(Reason::TooLong),
            // Queue mode with no time left to wait asks with `max_wait_ns` 0, which the
            // store answers as reject mode: tell the two queue refusals apart here.
            TakeOutcome::Empty => match queue {
                Some(q) if taken.wait_ns.div_ceil(policy.interval) > q.max_queue => {
                    reject(Reason::QueueFull)
                }
                Some(_) => reject(Reason::TooLong),
                None => reject(Reason::Empty),
            },
        }
    }

    /// A queued request is back: wait on if its token is not due yet, else let it go.
    #[allow(clippy::too_many_arguments)]
    fn wake(
        &self,
        env: &impl Env,
        now: u64,
        info: &RequestInfo,
        req: &Request,
        id: &str,
        bucket_key: &str,
        reservation_key: &str,
        due: u64,
    ) -> Result<RequestAction, String> {
        if now < due {
            return Ok(RequestAction::Wait(bucket::millis_ceil(due - now)));
        }
        env.delete(reservation_key)?;
        let current = env
            .get(bucket_key)?
            .as_deref()
            .and_then(Bucket::decode)
            .unwrap_or_default();
        if current.paused_until > now {
            let retry_after = bucket::secs_ceil(current.paused_until - now).max(1);
            return Ok(self.reject(env, info, req, Reason::Paused, retry_after));
        }
        let status = bucket::status(&self.settings.policy, current.tat, now);
        Ok(self.admitted(id, status))
    }

    /// Continue, with what `on_response` needs in the memo.
    fn admitted(&self, id: &str, status: Status) -> RequestAction {
        let memo = Memo {
            status,
            id: id.to_owned(),
        };
        RequestAction::proceed_with(None, Some(memo.encode()))
    }

    /// The 429 weir answers with.
    fn reject(
        &self,
        env: &impl Env,
        info: &RequestInfo,
        req: &Request,
        reason: Reason,
        retry_after: u64,
    ) -> RequestAction {
        env.rejected(reason);
        let (policy, limit) = self.headers(Status {
            remaining: 0,
            reset: retry_after,
        });
        let message = match reason {
            Reason::Empty => format!("rate limit exceeded; retry after {retry_after} s"),
            Reason::Paused => {
                format!("the upstream asked to slow down; retry after {retry_after} s")
            }
            Reason::QueueFull => {
                format!("rate limit exceeded and the queue is full; retry after {retry_after} s")
            }
            Reason::TooLong => format!(
                "rate limit exceeded and the next token is too far off to wait for; \
                 retry after {retry_after} s"
            ),
        };
        let body = json!({
            "error": "rate_limited",
            "message": message,
            "route": info.route(),
            "request_id": req.request_id().as_deref().unwrap_or(info.id()),
        });
        RequestAction::Respond(
            Response::json(429, &body)
                .with_header("retry-after", retry_after.to_string())
                .with_header("ratelimit-policy", policy)
                .with_header("ratelimit", limit),
        )
    }

    /// `RateLimit-Policy` and `RateLimit` values for this status.
    fn headers(&self, status: Status) -> (String, String) {
        (
            self.policy_header.clone(),
            format!("\"default\";r={};t={}", status.remaining, status.reset),
        )
    }
}

/// Pauses bucket `id` until `until`, keeping its tokens.
fn pause(env: &impl Env, id: &str, until: u64, now: u64) -> Result<(), String> {
    env.bucket_pause(&["b:", id].concat(), until, now)
}

/// The numbers `state::bucket_take` works with: `queue`'s bounds, or none (`max_wait_ns`
/// 0) in reject mode.
fn bucket_policy(policy: &Policy, queue: Option<Queue>) -> BucketPolicy {
    BucketPolicy {
        interval_ns: policy.interval,
        burst: policy.burst,
        max_wait_ns: queue.map_or(0, |q| q.max_wait),
        max_queue: queue.map_or(0, |q| q.max_queue),
    }
}

/// The bucket a request belongs to (see "State" in the crate docs).
pub fn bucket_id(key: &Key, info: &RequestInfo, req: &Request) -> String {
    let route = info.route();
    match key {
        Key::Route => [route, ":route"].concat(),
        Key::Client => {
            let ip = match info.client_addr().parse::<SocketAddr>() {
                Ok(addr) => addr.ip().to_canonical().to_string(),
                // Not an address weir would send; still keep such clients apart.
                Err(_) => info.client_addr().to_owned(),
            };
            format!("{route}:client:{ip}")
        }
        Key::Header(name) => match req.header(name) {
            Some(value) => format!("{route}:header:{name}:{:032x}", fnv1a_128(&value)),
            None => format!("{route}:header:{name}:-"),
        },
    }
}

/// 128-bit FNV-1a: a stable hash (the same in every weir process and version), so header
/// values such as API keys never sit in the state store in clear.
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

/// What `on_request` hands `on_response` for an admitted request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Memo {
    status: Status,
    id: String,
}

impl Memo {
    /// `remaining`, `reset` and the bucket id in the SDK's binary [`codec`]: a memo is
    /// made and read on every request, and printing and parsing it as text cost about
    /// ten times as much.
    ///
    /// [`codec`]: weir_filter::codec
    fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(20 + self.id.len());
        w.extend_from_slice(&self.status.remaining.to_be_bytes());
        w.extend_from_slice(&self.status.reset.to_be_bytes());
        weir_filter::codec::put_bytes(&mut w, self.id.as_bytes());
        w
    }

    fn decode(bytes: &[u8]) -> Option<Memo> {
        let mut r = weir_filter::codec::Reader::new(bytes);
        let memo = Memo {
            status: Status {
                remaining: r.u64()?,
                reset: r.u64()?,
            },
            id: r.string()?,
        };
        r.is_empty().then_some(memo)
    }
}

// === impl Host ===

/// The real host: weir's state store and metrics.
struct Host;

impl Host {
    fn ttl(ns: u64) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_nanos(ns))
    }
}

impl Env for Host {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        weir_filter::state::get(key).map_err(|e| format!("{e:?}"))
    }

    fn set(&self, key: &str, value: &[u8], ttl_ns: u64) -> Result<(), String> {
        weir_filter::state::set(key, value, Host::ttl(ttl_ns)).map_err(|e| format!("{e:?}"))
    }

    fn delete(&self, key: &str) -> Result<(), String> {
        weir_filter::state::delete(key).map_err(|e| format!("{e:?}"))
    }

    fn bucket_take(&self, key: &str, policy: BucketPolicy, now: u64) -> Result<TakeResult, String> {
        weir_filter::state::bucket_take(key, policy, now).map_err(|e| format!("{e:?}"))
    }

    fn bucket_pause(&self, key: &str, until: u64, now: u64) -> Result<(), String> {
        weir_filter::state::bucket_pause(key, until, now).map_err(|e| format!("{e:?}"))
    }

    fn rejected(&self, reason: Reason) {
        let reason = match reason {
            Reason::Empty => "empty",
            Reason::Paused => "paused",
            Reason::QueueFull => "queue_full",
            Reason::TooLong => "max_wait",
        };
        weir_filter::metrics::counter_add("limiter_rejected_total", &[("reason", reason)], 1);
    }

    fn state_failed(&self, detail: &str) {
        weir_filter::metrics::counter_add("limiter_state_errors_total", &[], 1);
        weir_filter::log::debug(&format!(
            "state store failed, letting the request pass: {detail}"
        ));
    }
}

/// Nanoseconds since the Unix epoch as the guest sees it (WASI wall clock).
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn parse_u64(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}
#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use weir_filter::build_filter;

    use super::*;

    const S: u64 = NS_PER_SEC;
    const MS: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000 * S;

    /// A state store in a map (TTLs recorded, not enforced) that counts what the filter
    /// reports. Its buckets run [`bucket::take`], the arithmetic the host's `bucket-take`
    /// does.
    #[derive(Default)]
    struct Fake {
        map: RefCell<HashMap<String, (Vec<u8>, u64)>>,
        rejected: RefCell<Vec<Reason>>,
        failing: bool,
        failures: RefCell<u32>,
        /// Every key read, bucket takes included.
        read: RefCell<Vec<String>>,
    }

    impl Env for Fake {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
            self.read.borrow_mut().push(key.to_owned());
            if self.failing {
                return Err("down".into());
            }
            Ok(self.map.borrow().get(key).map(|(v, _)| v.clone()))
        }
        fn set(&self, key: &str, value: &[u8], ttl_ns: u64) -> Result<(), String> {
            self.map
                .borrow_mut()
                .insert(key.into(), (value.to_vec(), ttl_ns));
            Ok(())
        }
        fn delete(&self, key: &str) -> Result<(), String> {
            self.map.borrow_mut().remove(key);
            Ok(())
        }
        fn bucket_take(&self, key: &str, p: BucketPolicy, now: u64) -> Result<TakeResult, String> {
            let current = self.get(key)?.as_deref().and_then(Bucket::decode);
            let b = current.unwrap_or_default();
            let policy = Policy {
                interval: p.interval_ns,
                burst: p.burst,
                quota: 0,
                window_secs: 0,
            };
            let queue = (p.max_wait_ns > 0).then_some(Queue {
                max_wait: p.max_wait_ns,
                max_queue: p.max_queue,
            });
            let result = |outcome, tat_ns, wait_ns| TakeResult {
                outcome,
                tat_ns,
                paused_until_ns: b.paused_until,
                wait_ns,
            };
            Ok(match bucket::take(&policy, current, now, queue) {
                Decision::Admit { bucket, .. } => {
                    self.set(key, &bucket.encode(), bucket.ttl(now))?;
                    result(TakeOutcome::Admitted, bucket.tat, 0)
                }
                Decision::Reserve { bucket, due } => {
                    self.set(key, &bucket.encode(), bucket.ttl(now))?;
                    result(TakeOutcome::Reserved, bucket.tat, due - now)
                }
                Decision::Reject { reason, .. } => {
                    let outcome = match reason {
                        Reason::Empty => TakeOutcome::Empty,
                        Reason::Paused => TakeOutcome::Paused,
                        Reason::QueueFull => TakeOutcome::QueueFull,
                        Reason::TooLong => TakeOutcome::TooLong,
                    };
                    let wait = match reason {
                        Reason::Paused => b.paused_until - now,
                        _ => b.tat.max(now) + p.interval_ns - now - p.burst * p.interval_ns,
                    };
                    result(outcome, b.tat, wait)
                }
            })
        }

        fn bucket_pause(&self, key: &str, until: u64, now: u64) -> Result<(), String> {
            let current = self.get(key)?.as_deref().and_then(Bucket::decode);
            let paused = current.unwrap_or_default().paused(until);
            self.set(key, &paused.encode(), paused.ttl(now))
        }
        fn rejected(&self, reason: Reason) {
            self.rejected.borrow_mut().push(reason);
        }
        fn state_failed(&self, _: &str) {
            *self.failures.borrow_mut() += 1;
        }
    }

    fn limiter(config: &str) -> Limiter {
        build_filter::<Limiter>(config).expect("valid config")
    }

    fn info(id: &str) -> RequestInfo {
        RequestInfo::new(id)
            .with_route("api")
            .with_attempt(1)
            .with_remaining_ms(30_000)
            .with_client_addr("192.0.2.7:40000")
    }

    fn request(headers: &[(&str, &str)]) -> Request {
        headers.iter().fold(
            Request::new("GET", "/").with_upstream("http://upstream.test"),
            |req, (n, v)| req.with_header(*n, *v),
        )
    }

    fn memo(action: &RequestAction) -> Vec<u8> {
        match action {
            RequestAction::Continue((None, Some(memo))) => memo.clone(),
            other => panic!("not admitted: {other:?}"),
        }
    }

    fn rejection(action: &RequestAction) -> &Response {
        match action {
            RequestAction::Respond(r) => r,
            other => panic!("not rejected: {other:?}"),
        }
    }

    fn ok(status: u16, headers: &[(&str, &str)]) -> Outcome {
        let mut r = Response::new(status);
        for (n, v) in headers {
            r = r.with_header(*n, *v);
        }
        Outcome::Response(r)
    }

    #[test]
    fn without_a_queue_no_reservation_is_looked_up() {
        let env = Fake::default();
        let req = request(&[]);
        let l = limiter(r#"{"rate": 2, "per": "10s", "burst": 1}"#);
        memo(&l.request(&env, T0, &info("r1"), &req));
        rejection(&l.request(&env, T0, &info("r2"), &req));
        assert_eq!(*env.read.borrow(), ["b:api:route", "b:api:route"]);
        // With one, a request first asks whether it holds a reservation.
        let queued =
            limiter(r#"{"rate": 2, "per": "10s", "burst": 1, "mode": "queue", "max_wait": "10s"}"#);
        let env = Fake::default();
        memo(&queued.request(&env, T0, &info("r1"), &req));
        assert_eq!(*env.read.borrow(), ["q:api:route:r1:1", "b:api:route"]);
    }

    #[test]
    fn admits_burst_then_rejects_with_exact_headers() {
        let l = limiter(r#"{"rate": 2, "per": "10s", "burst": 3}"#);
        let env = Fake::default();
        let req = request(&[]);
        let memos: Vec<_> = (0..3)
            .map(|i| memo(&l.request(&env, T0, &info(&format!("r{i}")), &req)))
            .collect();
        let action = l.request(&env, T0 + 3200 * MS, &info("r3"), &req);
        let r = rejection(&action);
        assert_eq!(r.status(), 429);
        assert_eq!(r.header_str("retry-after").as_deref(), Some("2"));
        assert_eq!(
            r.header_str("ratelimit-policy").as_deref(),
            Some("\"default\";q=2;w=10")
        );
        assert_eq!(
            r.header_str("ratelimit").as_deref(),
            Some("\"default\";r=0;t=2")
        );
        let body: weir_filter::serde_json::Value =
            weir_filter::serde_json::from_slice(r.body().unwrap()).unwrap();
        assert_eq!(body["error"], "rate_limited");
        assert_eq!(body["route"], "api");
        assert_eq!(body["request_id"], "r3");
        assert_eq!(*env.rejected.borrow(), [Reason::Empty]);

        // Admitted responses say what was left after each request.
        for (m, r) in memos.iter().zip([2, 1, 0]) {
            let action = l.response(&env, T0, Some(m), &ok(200, &[]));
            let ResponseAction::Continue(Some(edit)) = action else {
                panic!("{action:?}")
            };
            assert_eq!(
                edit.set_headers,
                [
                    ("ratelimit-policy".into(), b"\"default\";q=2;w=10".to_vec()),
                    (
                        "ratelimit".into(),
                        format!("\"default\";r={r};t=5").into_bytes()
                    ),
                ]
            );
        }
        // The bucket's TTL ends when it is full again: 3 tokens of 5 s from T0.
        assert_eq!(env.map.borrow()["b:api:route"].1, 15 * S);
    }

    #[test]
    fn queued_requests_wait_for_their_own_token_then_pass() {
        let l = limiter(r#"{"rate": 5, "burst": 1, "mode": "queue"}"#);
        let env = Fake::default();
        let req = request(&[]);
        memo(&l.request(&env, T0, &info("a"), &req));
        assert_eq!(
            l.request(&env, T0, &info("b"), &req),
            RequestAction::Wait(200)
        );
        assert_eq!(
            l.request(&env, T0, &info("c"), &req),
            RequestAction::Wait(400)
        );
        let marker = env.map.borrow()["q:api:route:c:1"].clone();
        assert_eq!(marker.0, (T0 + 400 * MS).to_string().into_bytes());
        assert_eq!(marker.1, 31 * S, "the route deadline plus slack");
        // Called back early (say a clock step), c waits on for what is left.
        assert_eq!(
            l.request(&env, T0 + 250 * MS, &info("c"), &req),
            RequestAction::Wait(150)
        );
        let b = memo(&l.request(&env, T0 + 200 * MS, &info("b"), &req));
        assert!(!env.map.borrow().contains_key("q:api:route:b:1"));
        // c still holds the next token, so b's response reports none left.
        assert_eq!(
            Memo::decode(&b).unwrap().status,
            Status {
                remaining: 0,
                reset: 1
            }
        );
        memo(&l.request(&env, T0 + 400 * MS, &info("c"), &req));
        // A retry of b (attempt 2) is a new try and needs a new token.
        let retry = info("b").with_attempt(2);
        assert_eq!(
            l.request(&env, T0 + 400 * MS, &retry, &req),
            RequestAction::Wait(200)
        );
    }

    #[test]
    fn reservations_are_keyed_by_the_hosts_id_not_the_clients_x_request_id() {
        let l = limiter(r#"{"rate": 5, "burst": 1, "mode": "queue", "max_queue": 1}"#);
        let env = Fake::default();
        let req = request(&[("x-request-id", "same")]);
        memo(&l.request(&env, T0, &info("h1"), &req));
        assert_eq!(
            l.request(&env, T0, &info("h2"), &req),
            RequestAction::Wait(200)
        );
        assert!(env.map.borrow().contains_key("q:api:route:h2:1"));
        // Another request with the same x-request-id finds no reservation of its own,
        // and the queue full.
        let r = l.request(&env, T0 + 10 * MS, &info("h3"), &req);
        let body: weir_filter::serde_json::Value =
            weir_filter::serde_json::from_slice(rejection(&r).body().unwrap()).unwrap();
        assert_eq!(*env.rejected.borrow(), [Reason::QueueFull]);
        // The 429 names the request by the id the client knows.
        assert_eq!(body["request_id"], "same");
    }

    #[test]
    fn queue_mode_never_waits_past_the_route_deadline() {
        let l = limiter(r#"{"rate": 5, "burst": 1, "mode": "queue", "max_wait": "2s"}"#);
        let env = Fake::default();
        let req = request(&[]);
        memo(&l.request(&env, T0, &info("a"), &req));
        let short = info("b").with_remaining_ms(150);
        let action = l.request(&env, T0, &short, &req);
        assert_eq!(
            rejection(&action).header_str("retry-after").as_deref(),
            Some("1")
        );
        assert_eq!(*env.rejected.borrow(), [Reason::TooLong]);
        // The rejected request took nothing: the next one waits for the first free token.
        assert_eq!(
            l.request(&env, T0, &info("c"), &req),
            RequestAction::Wait(200)
        );
    }

    #[test]
    fn an_upstream_429_pauses_the_key_and_a_waking_request_sees_it() {
        let l = limiter(r#"{"rate": 5, "burst": 1, "mode": "queue"}"#);
        let env = Fake::default();
        let req = request(&[]);
        let m = memo(&l.request(&env, T0, &info("a"), &req));
        assert_eq!(
            l.request(&env, T0, &info("b"), &req),
            RequestAction::Wait(200)
        );
        let action = l.response(&env, T0, Some(&m), &ok(429, &[("retry-after", "3")]));
        assert_eq!(
            action,
            ResponseAction::proceed(),
            "the upstream's 429 passes as it is"
        );
        let action = l.request(&env, T0 + 200 * MS, &info("b"), &req);
        let r = rejection(&action);
        assert_eq!(r.header_str("retry-after").as_deref(), Some("3"));
        assert_eq!(
            r.header_str("ratelimit").as_deref(),
            Some("\"default\";r=0;t=3")
        );
        assert_eq!(*env.rejected.borrow(), [Reason::Paused]);
        // The pause ends on time, and the key's tokens are still there.
        memo(&l.request(&env, T0 + 3 * S, &info("c"), &req));
        // A 429 without Retry-After pauses nothing.
        let m = memo(&l.request(&env, T0 + 4 * S, &info("d"), &req));
        l.response(&env, T0 + 4 * S, Some(&m), &ok(429, &[]));
        memo(&l.request(&env, T0 + 5 * S, &info("e"), &req));
    }

    #[test]
    fn keys() {
        let req = request(&[("x-api-key", "k1")]);
        let i = info("r");
        assert_eq!(bucket_id(&Key::Route, &i, &req), "api:route");
        assert_eq!(bucket_id(&Key::Client, &i, &req), "api:client:192.0.2.7");
        let i = i.with_client_addr("[::ffff:192.0.2.7]:1");
        assert_eq!(bucket_id(&Key::Client, &i, &req), "api:client:192.0.2.7");
        let i = i.with_client_addr("[2001:db8::1]:443");
        assert_eq!(bucket_id(&Key::Client, &i, &req), "api:client:2001:db8::1");
        let h = Key::Header("x-api-key".into());
        let k1 = bucket_id(&h, &i, &req);
        assert!(k1.starts_with("api:header:x-api-key:"), "{k1}");
        assert!(!k1.contains("k1"), "header values are hashed: {k1}");
        assert_eq!(k1.len(), "api:header:x-api-key:".len() + 32);
        assert_ne!(k1, bucket_id(&h, &i, &request(&[("x-api-key", "k2")])));
        assert_eq!(bucket_id(&h, &i, &request(&[])), "api:header:x-api-key:-");
        // Known FNV-1a 128 vectors.
        assert_eq!(fnv1a_128(b""), 0x6c62272e07bb014262b821756295c58d);
        assert_eq!(fnv1a_128(b"a"), 0xd228cb696f1a8caf78912b704e4a8964);
    }

    #[test]
    fn tenants_have_their_own_buckets_and_headerless_requests_share_one() {
        let l = limiter(r#"{"rate": 1, "key": {"header": "X-Api-Key"}}"#);
        let env = Fake::default();
        let a = request(&[("x-api-key", "a")]);
        let b = request(&[("x-api-key", "b")]);
        let none = request(&[]);
        memo(&l.request(&env, T0, &info("1"), &a));
        rejection(&l.request(&env, T0, &info("2"), &a));
        memo(&l.request(&env, T0, &info("3"), &b));
        memo(&l.request(&env, T0, &info("4"), &none));
        rejection(&l.request(&env, T0, &info("5"), &none));
    }

    #[test]
    fn the_state_store_failing_lets_requests_pass() {
        let l = limiter(r#"{"rate": 1}"#);
        let env = Fake {
            failing: true,
            ..Fake::default()
        };
        for i in 0..3 {
            assert_eq!(
                l.request(&env, T0, &info(&i.to_string()), &request(&[])),
                RequestAction::proceed()
            );
        }
        assert_eq!(*env.failures.borrow(), 3);
        // No memo, no headers.
        assert_eq!(
            l.response(&env, T0, None, &ok(200, &[])),
            ResponseAction::proceed()
        );
    }

    #[test]
    fn on_state_error_reject_answers_503_when_the_store_fails() {
        let l = limiter(r#"{"rate": 1, "on_state_error": "reject"}"#);
        let env = Fake {
            failing: true,
            ..Fake::default()
        };
        let action = l.request(&env, T0, &info("a"), &request(&[]));
        let r = rejection(&action);
        assert_eq!(r.status(), 503);
        assert_eq!(r.header_str("retry-after").as_deref(), Some("1"));
        let body: weir_filter::serde_json::Value =
            weir_filter::serde_json::from_slice(r.body().unwrap()).unwrap();
        assert_eq!(body["error"], "state_unavailable");
        assert_eq!(
            body["message"],
            "limiter: the state store is unavailable (down); the request was not sent"
        );
        assert_eq!(*env.failures.borrow(), 1);
    }

    #[test]
    fn a_corrupt_bucket_is_replaced_by_a_full_one() {
        let l = limiter(r#"{"rate": 1}"#);
        let env = Fake::default();
        env.set("b:api:route", b"garbage", 1).unwrap();
        memo(&l.request(&env, T0, &info("a"), &request(&[])));
        rejection(&l.request(&env, T0, &info("b"), &request(&[])));
    }

    #[test]
    fn memo_round_trip() {
        let m = Memo {
            status: Status {
                remaining: 7,
                reset: 2,
            },
            id: "my route:header:x:-".into(),
        };
        let good = m.encode();
        assert_eq!(Memo::decode(&good), Some(m));
        assert_eq!(Memo::decode(&good[..good.len() - 1]), None, "cut short");
        assert_eq!(Memo::decode(&[&good[..], b"x"].concat()), None, "trailing");
    }

    #[test]
    fn asks_for_both_phases() {
        // `on_request` takes the token; `on_response` adds the headers and honours an
        // upstream 429.
        let l = limiter(r#"{"rate": 1}"#);
        assert_eq!(l.info().phases, weir_filter::Phases::BOTH);
    }

    #[test]
    fn init_errors_name_the_filter_and_the_key() {
        let err = build_filter::<Limiter>(r#"{"rate": 0}"#).unwrap_err();
        assert_eq!(err, "limiter: rate must be at least 1");
    }
}
