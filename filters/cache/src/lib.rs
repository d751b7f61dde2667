//! `cache`: weir's standard HTTP cache filter, a shared cache after RFC 9111 with
//! RFC 5861's `stale-while-revalidate` and `stale-if-error`.
//!
//! Put it early in a route's chain: a hit answers from `on-request`, so the filters after
//! it and the upstream are not called. Every response that passes through carries
//! `x-weir-cache`:
//!
//! | value | meaning |
//! | --- | --- |
//! | `hit` | served from the cache, fresh; the upstream was not called |
//! | `miss` | the upstream's response (stored or not) |
//! | `stale` | served from the cache although stale: within `stale-while-revalidate` while another request refreshes it, or within `stale-if-error` when the upstream failed or answered 500, 502, 503 or 504 |
//! | `revalidated` | the upstream answered 304 to the cache's conditional request; the stored response, updated from the 304, is served |
//!
//! Responses served from the cache carry `Age` (whole seconds, RFC 9111 §4.2.3: the
//! `corrected_initial_age`, which includes the upstream's own `Age` and the time the
//! response took to arrive, plus the time it has been stored).
//!
//! # Config reference
//!
//! Every key is optional; unknown keys are errors, and an invalid value stops weir from
//! starting (or a reload from applying) with an error that names the key. Durations are
//! strings with a unit (`"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"`); sizes are a number of
//! bytes or a string with a unit (`"512KiB"`, `"1MiB"`, `"1MB"`).
//!
//! | key | type | default | meaning |
//! | --- | --- | --- | --- |
//! | `default_ttl` | duration | off | freshness for responses without `max-age`, `s-maxage` or `Expires` that are otherwise storable; only for the heuristically cacheable statuses (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501) or `public` responses. It takes precedence over the `Last-Modified` heuristic. Must be more than 0 |
//! | `max_entry_bytes` | size | `"1MiB"` | the largest entry stored (the encoded entry: body, headers and bookkeeping); larger responses are passed on and not stored. At most `max_total_bytes` |
//! | `max_total_bytes` | size | `"64MiB"` | the most bytes this cache counts as stored at once (see *Size limits*) |
//! | `revalidation_window` | duration | `"1h"` | how long an entry with an `ETag` or `Last-Modified` is kept after it goes stale, so it can be revalidated with a conditional request instead of fetched again |
//!
//! ```toml
//! [upstreams.catalog]
//! url = "https://catalog.internal.example"
//!
//! [[routes]]
//! name = "catalog"
//! match = { path_prefix = "/catalog/" }
//! upstream = "catalog"
//! # The built-in `cache` needs no [filters.cache] table; this route caches JSON that
//! # carries no caching headers for 30 s.
//! filters = [{ use = "cache", config = { default_ttl = "30s", max_entry_bytes = "512KiB", max_total_bytes = "256MiB" } }]
//! ```
//!
//! # What is stored
//!
//! A response is stored only if all of these hold (RFC 9111 §3):
//!
//! 1. the request is a `GET` without `Range`, and without `Cache-Control: no-store`;
//! 2. the status is final and complete: 200–599 except 206 and 304;
//! 3. the response has neither `no-store` nor `private` (a qualified `private="…"` counts
//!    too), no `Set-Cookie` (a shared cache would hand one client's cookie to others) and
//!    not `Vary: *`;
//! 4. if the request carried `Authorization`, the response has `public`, `s-maxage` or
//!    `must-revalidate`;
//! 5. the response has `max-age`, `s-maxage`, `Expires` or `public`, or a heuristically
//!    cacheable status with `Last-Modified`, or `default_ttl` is on and the status is
//!    heuristically cacheable;
//! 6. the entry fits `max_entry_bytes` and `max_total_bytes`, and there is something to
//!    keep it for: remaining freshness, a stale window, or a validator.
//!
//! `HEAD` requests are answered from fresh `GET` entries (headers only); otherwise they go
//! upstream and their responses are not stored. `Range` requests bypass the cache. A
//! `POST`, `PUT`, `DELETE`, `PATCH` (any method but `GET`, `HEAD`, `OPTIONS`, `TRACE`,
//! `CONNECT`) that gets a 2xx or 3xx answer invalidates the stored `GET` responses for its
//! URL (RFC 9111 §4.4); `Location` and `Content-Location` are not invalidated.
//!
//! # Freshness and reuse
//!
//! The freshness lifetime is `s-maxage`, else `max-age`, else `Expires − Date` (an invalid
//! `Expires` is already expired); without those, `default_ttl` if on, else 10% of
//! `Date − Last-Modified`, at most 24 h. A stored response is served as a `hit` while its
//! current age is below its freshness lifetime, unless
//!
//! - the request says `Cache-Control: no-cache` (or `Pragma: no-cache` without
//!   `Cache-Control`), or the stored response says `no-cache`: it is revalidated first;
//! - the request's `max-age=N` is below its age, or its `min-fresh=N` is more than the
//!   freshness left: it is treated as stale.
//!
//! A request with `only-if-cached` and no usable entry gets a 504. `max-stale` is
//! ignored. A stale entry (or one that must be revalidated) with an `ETag` or
//! `Last-Modified` is revalidated: the request goes upstream with `If-None-Match` /
//! `If-Modified-Since` (unless the client sent conditional headers of its own; then it
//! goes as it is). On a 304 the cache replaces the stored headers with the 304's (except
//! `Content-Length`), takes the new age from the 304, recomputes the freshness, stores the
//! entry again and answers with the stored status and body (`revalidated`). Any other
//! response replaces the entry if it is storable. Should the entry be evicted while the
//! conditional request is out, the client gets a 502 rather than a body-less 304.
//!
//! `Vary` is honoured: each URL has an index of its `Vary` header names, and each
//! combination of the request's values of those headers (all fields joined, whitespace
//! around commas ignored, absent distinct from empty) is a separate entry. A response
//! with `Vary: *` is never stored, and removes the URL's index, so nothing matches.
//!
//! # Stale responses (RFC 5861)
//!
//! Unless the stored response says `must-revalidate`, `proxy-revalidate` or `no-cache`:
//!
//! - **`stale-while-revalidate=N`**: up to N s after going stale, one request at a time
//!   goes upstream to refresh (conditionally, if it can) while the others are served the
//!   stale copy (`stale`). The one-at-a-time lock is a `compare_and_swap` key in `state`
//!   that lives until that request's `on-response` (at most the route's remaining time,
//!   at least 1 s, at most 5 min). weir has no background refresh: the refreshing request
//!   itself waits for the upstream.
//! - **`stale-if-error=N`**: up to N s after going stale, if the upstream fails (no
//!   response) or answers 500, 502, 503 or 504, the stale copy is served (`stale`).
//!
//! # Where entries live
//!
//! Everything is in weir's `state` store (keys prefixed `cache/` by weir), shared by every
//! route and, with the Redis backend, every weir process. The key is the method (`GET`),
//! the route's upstream origin and the path with query, plus the `Vary` values; keys are
//! 128-bit hashes of those, and every entry repeats what it answers so a hash collision
//! is a miss, never a wrong answer.
//!
//! - `i:<hash>`: the URL's index, `name,name\n<until-ms>` (the `Vary` names);
//! - `e:<hash>`: one stored response: status, headers (without `Age`), body, when it
//!   arrived, its corrected initial age and freshness lifetime, the request's `Vary`
//!   values and its size charge (binary, see `entry.rs`). Its state TTL is its remaining
//!   freshness plus the longer of its stale windows and, with a validator,
//!   `revalidation_window`; at most 2^22 s (about 48 days);
//! - `l:<hash>`: a `stale-while-revalidate` refresh lock;
//! - `b:<class>:<bucket>`: byte counters for `max_total_bytes`.
//!
//! If the state store fails, the cache fails open: a failed read is a miss, a failed
//! write leaves the response unstored, each with a warning in weir's log.
//!
//! # Size limits
//!
//! `max_entry_bytes` is exact. `max_total_bytes` is enforced with counters in `state`:
//! an entry whose state TTL is at most 2^c seconds (c from 4 to 22) is counted in the
//! counter for class c and time bucket `now / 2^c s`, which lives until the end of the
//! next bucket. The total is the sum of the current and previous bucket of every class,
//! so every live entry is counted (storing an entry reads these 38 counters; hits read
//! none). An entry that the cache replaces or drops itself is
//! subtracted at once; one that expires stays counted until its bucket does, so the
//! total over-counts (by entries that expired within up to about 3× their TTL) and never
//! under-counts. When a new entry would pass the limit it is not stored (weir logs
//! "the cache is full"); nothing is evicted early. Independently, the state store's own
//! `max_bytes` and per-entry limit apply, and its LRU may evict entries sooner.
//! Invalidation removes a URL's index; its entries stay counted until they expire.
//!
//! # Metrics
//!
//! `weir_filter_cache_responses_total{result="hit|miss|stale|revalidated"}`.

// The SDK keeps all the unsafe ABI glue in its own crate; a filter needs none.
#![forbid(unsafe_code)]

pub mod config;
pub mod directives;
pub mod engine;
pub mod entry;
pub mod policy;

use std::time::{SystemTime, UNIX_EPOCH};

use weir_filter::state::StateError;
use weir_filter::{
    Filter, Info, Outcome, Phases, Request, RequestAction, RequestInfo, ResponseAction,
};

pub use config::{Config, Settings};
pub use engine::{Cache, Host, Label};

/// The filter: a [`Cache`] over weir's state store and clock.
#[derive(Debug)]
pub struct CacheFilter {
    cache: Cache,
}

impl Filter for CacheFilter {
    type Config = Config;
    const NAME: &'static str = "cache";

    fn new(config: Config) -> Result<Self, String> {
        Ok(CacheFilter {
            cache: Cache::new(config.validate()?),
        })
    }

    fn info(&self) -> Info {
        Info {
            // Hits are answered in `on_request`; responses are stored in `on_response`.
            phases: Phases::BOTH,
            wants_response_body: true,
            ..Info::default()
        }
    }

    fn on_request(&mut self, info: &RequestInfo, req: &Request) -> RequestAction {
        let (action, label) = self
            .cache
            .on_request(&WeirState, req, now_ms(), info.remaining_ms());
        count(label);
        action
    }

    fn on_response(
        &mut self,
        _: &RequestInfo,
        req: &Request,
        memo: Option<Vec<u8>>,
        outcome: &Outcome,
    ) -> ResponseAction {
        let (action, label) =
            self.cache
                .on_response(&WeirState, req, memo.as_deref(), outcome, now_ms());
        count(label);
        action
    }
}

weir_filter::export_filter!(CacheFilter);

/// Wall-clock time in ms since the epoch. In the filter harness this is the virtual
/// clock.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn count(label: Option<Label>) {
    if let Some(label) = label {
        weir_filter::metrics::counter_add(
            "cache_responses_total",
            &[("result", label.as_str())],
            1,
        );
    }
}

/// [`Host`] on weir's `state` and `log` imports.
struct WeirState;

fn ttl(ms: u64) -> Option<std::time::Duration> {
    Some(std::time::Duration::from_millis(ms))
}

impl Host for WeirState {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        weir_filter::state::get(key)
    }

    fn set(&self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), StateError> {
        weir_filter::state::set(key, value, ttl(ttl_ms))
    }

    fn delete(&self, key: &str) -> Result<(), StateError> {
        weir_filter::state::delete(key)
    }

    fn incr(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, StateError> {
        weir_filter::state::incr(key, delta, ttl(ttl_ms))
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

    fn warn(&self, message: &str) {
        weir_filter::log::warn(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_in_both_phases_and_asks_for_the_response_body() {
        let f = weir_filter::build_filter::<CacheFilter>("{}").unwrap();
        assert_eq!(
            f.info(),
            Info {
                phases: Phases::BOTH,
                wants_request_body: false,
                wants_response_body: true,
                may_retry: false,
            }
        );
    }
}
