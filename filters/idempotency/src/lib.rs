//! `idempotency`: weir's standard idempotency filter, after the IETF draft
//! `draft-ietf-httpapi-idempotency-key-header` and Stripe's idempotent requests.
//!
//! It does two things for the methods it covers (`POST` and `PATCH` by default):
//!
//! 1. **Adds a key.** A request without an `Idempotency-Key` gets one (a random UUID), so
//!    the upstream can deduplicate it, and so the `retry` filter, which retries a `POST`
//!    only when it carries an `Idempotency-Key`, may send it again. Every try of one
//!    request carries the same key.
//! 2. **Honours the client's key.** The first complete response to a request with a key
//!    is stored under the key, the route and the tenant. Then:
//!    - the same key with the same request (method, path with query, body) gets the
//!      stored response again, byte for byte (status, headers, body; a 5xx too), with
//!      `x-weir-idempotent-replay: true`, and the upstream is not called;
//!    - the same key with a different request gets **422**;
//!    - the same key while the first request is still in flight gets **409**, and only
//!      the first request reaches the upstream;
//!    - a key longer than 255 bytes, an empty key, or several `Idempotency-Key` headers
//!      get **400**;
//!    - after `expiry` the key is new again.
//!
//! The client's key is passed upstream unchanged. Methods not in `methods` pass
//! untouched, key or not.
//!
//! # Config reference
//!
//! Every key is optional; unknown keys are errors, and an invalid value stops weir from
//! starting (or a reload from applying) with an error that names the key. Durations are
//! strings with a unit (`"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"`); sizes are a number
//! of bytes or a string with a unit (`"512KiB"`, `"1MiB"`, `"1MB"`).
//!
//! | key | type | default | meaning |
//! | --- | --- | --- | --- |
//! | `methods` | list of methods | `["POST", "PATCH"]` | the methods that get a key added and whose keys are honoured (any case) |
//! | `generate_key` | bool | `true` | add an `Idempotency-Key` to a request of those methods that has none |
//! | `tenant` | `{ header = "NAME" }` | none | where the tenant comes from: the value of request header `NAME`. Requests without the header form one tenant of their own. Without `tenant`, all clients of a route share its keys |
//! | `expiry` | duration | `"24h"` | how long a stored response is replayed; more than 0 |
//! | `max_response_bytes` | size | `"1MiB"` | the largest response stored (body plus header names and values); more than 0 |
//! | `on_state_error` | `"reject"` or `"allow"` | `"reject"` | when the state store fails: answer 503, or send the request unchecked (below) |
//!
//! Keys are isolated by route and tenant: the same key on two routes, or from two
//! tenants, is two keys. The draft and Stripe also allow the client certificate's
//! subject as the tenant; weir does not pass it to filters yet (the WIT `request-info`
//! has no such field), so that needs a new host field first. Until then, have a trusted
//! layer set a tenant header.
//!
//! ```toml
//! [upstreams.payments]
//! url = "https://payments.internal.example"
//!
//! [[routes]]
//! name = "payments"
//! match = { path_prefix = "/payments/" }
//! upstream = "payments"
//! timeout = "10s"
//! # Built in: no [filters.idempotency] table needed. Retries see the added key.
//! filters = [
//!   { use = "retry", config = { max_retries = 2 } },
//!   { use = "idempotency", config = { tenant = { header = "x-tenant" }, expiry = "12h" } },
//! ]
//! ```
//!
//! # Where to put it in the chain
//!
//! Both orders with `retry` work:
//!
//! - **`["retry", "idempotency"]` (recommended).** Every try passes this filter, so a
//!   stored key sees each try's outcome and keeps the last one, and the generated key is
//!   kept in state under the request so that each try sends the same one. A request's
//!   own retries are told apart from a second client request by the request id and
//!   client address (`RequestInfo::id`, `client_addr`) together with `attempt > 1`.
//! - **`["idempotency", "retry"]`.** The key is added once and `retry` re-sends the
//!   request as it was, key included; this filter sees only the final outcome.
//!
//! Put it **after** filters that answer by themselves (`limiter`, `breaker`, `cache`):
//! a response made by a filter after this one (a 429, an open breaker's 503) would be
//! stored and replayed like an upstream response. With `retry` before it, a replayed
//! 5xx is retried like any other, without calling the upstream.
//!
//! The filter reads request and response bodies (`wants_request_body`,
//! `wants_response_body`), so weir buffers both on its routes, up to the listener's body
//! limit.
//!
//! # Headers
//!
//! | header | where | meaning |
//! | --- | --- | --- |
//! | `Idempotency-Key` | request | the client's key; added (UUIDv4) when absent |
//! | `x-weir-idempotent-replay: true` | response | this is a stored response, replayed |
//!
//! 400, 409 and 422 answers are JSON in the shape of weir's own errors:
//! `{"error": "invalid_idempotency_key" | "idempotency_key_in_use" |
//! "idempotency_key_reused", "message": …, "route": …, "request_id": …}`.
//!
//! # State keys
//!
//! In weir's `state` store (prefixed `idempotency/` by weir), shared by every instance,
//! route and, with the Redis backend, weir process:
//!
//! - `k:<hash>`: one client key. The hash is 128 bits over route, tenant and key; the
//!   record repeats them and every read checks them, so a collision never replays
//!   another tenant's response (the request goes upstream unchecked instead). While the
//!   first request is in flight the record is a marker (its request id and client
//!   address, and the fingerprint of method, path with query and body), taken with
//!   `compare_and_swap` and living the route's remaining time plus 5 s, so a request that
//!   never finishes frees its key by itself. The complete response replaces the marker
//!   (again by `compare_and_swap`, so a marker that expired meanwhile is not overwritten)
//!   and lives `expiry`. See `record.rs` for the encoding.
//! - `g:<hash>`: the key generated for one request (hash of route, request id and client
//!   address), living the route's remaining time plus 5 s, read by the request's retries.
//!
//! # What is not stored
//!
//! - **No response** (an upstream error: connect failure, timeout, reset, …): the key is
//!   freed at once, so the client may retry with it; the upstream sees the same key again
//!   and can deduplicate.
//! - **A response larger than `max_response_bytes`**, or larger than the state store
//!   takes: it is passed on, not stored, and the key is freed at once; a repeat goes
//!   upstream again.
//!
//! # When the store fails
//!
//! Without its record the filter cannot tell a repeat from a first request, so by
//! default (`on_state_error = "reject"`) it **fails closed**: when the state store cannot
//! be read or the key cannot be claimed (Redis down or slower than its `timeout`), the
//! request is not sent, and the client gets
//!
//! ```text
//! HTTP/1.1 503 Service Unavailable
//! retry-after: 1
//! content-type: application/json
//!
//! {"error":"state_unavailable","message":"idempotency: the state store is unavailable (…); the request was not sent, so that it cannot be sent twice","route":…,"request_id":…}
//! ```
//!
//! With `on_state_error = "allow"` the request goes upstream unchecked instead (the key
//! still goes with it), with a warning in weir's log: for upstreams that deduplicate by
//! the key themselves. A response that cannot be stored afterwards is passed on, and a
//! repeat goes upstream again. A generated key that cannot be kept in state is derived
//! from the route, request id and client address instead (a UUIDv8), so that retries
//! still send the same key.
//!
//! # Metrics
//!
//! `weir_filter_idempotency_requests_total{result="generated|new|replayed|in_flight|mismatch|invalid|unchecked|unavailable"}`
//! and `weir_filter_idempotency_responses_total{result="stored|too_large|released|failed"}`.

// The SDK keeps all the unsafe ABI glue in its own crate; a filter needs none.
#![forbid(unsafe_code)]

pub mod config;
pub mod engine;
pub mod record;

use std::time::Duration;

use weir_filter::state::StateError;
use weir_filter::{
    Filter, Info, Outcome, Phases, Request, RequestAction, RequestInfo, ResponseAction,
};

pub use config::{Config, Settings, Tenant};
pub use engine::{HEADER, Host, Idempotency, Label, MAX_KEY_LEN, REPLAY_HEADER, Saved};

/// The filter: an [`Idempotency`] over weir's state store.
#[derive(Debug)]
pub struct IdempotencyFilter {
    engine: Idempotency,
}

impl Filter for IdempotencyFilter {
    type Config = Config;
    const NAME: &'static str = "idempotency";

    fn new(config: Config) -> Result<Self, String> {
        Ok(IdempotencyFilter {
            engine: Idempotency::new(config.validate()?),
        })
    }

    fn info(&self) -> Info {
        Info {
            // Keys are added and claimed in `on_request`; responses are stored in
            // `on_response`.
            phases: Phases::BOTH,
            // The fingerprint covers the body; the stored response includes its body.
            wants_request_body: true,
            wants_response_body: true,
            may_retry: false,
        }
    }

    fn on_request(&mut self, info: &RequestInfo, req: &Request) -> RequestAction {
        let (action, label) = self.engine.on_request(&WeirHost, info, req);
        if let Some(label) = label {
            count("idempotency_requests_total", label.as_str());
        }
        action
    }

    fn on_response(
        &mut self,
        _: &RequestInfo,
        _: &Request,
        memo: Option<Vec<u8>>,
        outcome: &Outcome,
    ) -> ResponseAction {
        let (action, saved) = self.engine.on_response(&WeirHost, memo.as_deref(), outcome);
        if let Some(saved) = saved {
            count("idempotency_responses_total", saved.as_str());
        }
        action
    }
}

weir_filter::export_filter!(IdempotencyFilter);

fn count(name: &str, result: &str) {
    weir_filter::metrics::counter_add(name, &[("result", result)], 1);
}

/// [`Host`] on weir's `state`, `log` and WASI random imports.
struct WeirHost;

fn ttl(ms: u64) -> Option<Duration> {
    Some(Duration::from_millis(ms))
}

impl Host for WeirHost {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        weir_filter::state::get(key)
    }

    fn set(&self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), StateError> {
        weir_filter::state::set(key, value, ttl(ttl_ms))
    }

    fn cas(
        &self,
        key: &str,
        old: Option<&[u8]>,
        new: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, StateError> {
        weir_filter::state::compare_and_swap(key, old, new, ttl(ttl_ms))
    }

    fn random(&self) -> Option<[u8; 16]> {
        let mut bytes = [0; 16];
        getrandom::fill(&mut bytes).ok().map(|()| bytes)
    }

    fn warn(&self, message: &str) {
        weir_filter::log::warn(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_validates_and_asks_for_both_phases_and_both_bodies() {
        let f = weir_filter::build_filter::<IdempotencyFilter>(r#"{"expiry": "1h"}"#).unwrap();
        assert_eq!(
            f.info(),
            Info {
                phases: Phases::BOTH,
                wants_request_body: true,
                wants_response_body: true,
                may_retry: false
            }
        );
        let e = weir_filter::build_filter::<IdempotencyFilter>(r#"{"expiry": "0s"}"#).unwrap_err();
        assert_eq!(e, "idempotency: expiry: must be more than 0");
    }
}
