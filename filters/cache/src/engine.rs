//! The cache's decisions, with the state store and the clock passed in, so the whole
//! request path runs natively in unit tests against an in-memory [`Host`].

use weir_filter::codec::{Reader, put_bytes};
use weir_filter::state::StateError;
use weir_filter::{
    FieldsExt, HeaderBlock, Outcome, Request, RequestAction, RequestEdit, Response, ResponseAction,
    ResponseEdit,
};

use crate::config::Settings;
use crate::directives::CacheControl;
use crate::entry::{self, Charge, Entry};
use crate::policy::{self, Vary};

/// The header every response through the filter carries.
pub const HEADER: &str = "x-weir-cache";

/// The smallest TTL class: entries are counted in 2^4 s = 16 s buckets or wider.
const MIN_CLASS: u8 = 4;
/// The largest TTL class: no entry is kept longer than 2^22 s (about 48 days).
pub const MAX_CLASS: u8 = 22;

/// How long the stale-while-revalidate refresh lock lives at most, whatever the
/// request's deadline, in ms.
const MAX_LOCK_MS: u64 = 300_000;

/// What the filter needs from weir: the state store and a log.
pub trait Host {
    /// `state::get`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError>;
    /// `state::set` with a TTL in ms.
    fn set(&self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), StateError>;
    /// `state::delete`.
    fn delete(&self, key: &str) -> Result<(), StateError>;
    /// `state::incr` with a TTL in ms.
    fn incr(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, StateError>;
    /// `state::compare_and_swap` with a TTL in ms.
    fn cas(
        &self,
        key: &str,
        old: Option<&[u8]>,
        new: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, StateError>;
    /// A warning for weir's log.
    fn warn(&self, message: &str);
}

/// How a response was served: the value of `x-weir-cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// From the cache, fresh, without calling the upstream.
    Hit,
    /// From the upstream.
    Miss,
    /// From the cache, stale (`stale-while-revalidate` or `stale-if-error`).
    Stale,
    /// From the cache after the upstream answered 304 to a conditional request.
    Revalidated,
}

impl Label {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Hit => "hit",
            Label::Miss => "miss",
            Label::Stale => "stale",
            Label::Revalidated => "revalidated",
        }
    }
}

/// What `on-request` hands to `on-response`, in the SDK's binary codec
/// ([`Memo::encode`]): JSON cost more than the rest of a miss.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Memo {
    /// A successful unsafe request invalidates the URL's stored responses.
    Invalidate,
    /// A cacheable GET went upstream.
    Fetch {
        /// When the request left, ms (RFC 9111 `request_time`).
        t: u64,
        /// The key of the stored (stale or to-be-validated) entry, if there was one.
        entry: Option<String>,
        /// Its size charge, to give back if a new response replaces it.
        charge: Option<Charge>,
        /// The filter added `If-None-Match` / `If-Modified-Since`.
        conditional: bool,
        /// The stale-while-revalidate lock this request holds.
        lock: Option<String>,
    },
}

/// The cache, with its settings.
#[derive(Debug, Clone)]
pub struct Cache {
    settings: Settings,
}

impl Cache {
    /// A cache with these settings.
    pub fn new(settings: Settings) -> Cache {
        Cache { settings }
    }

    // === on-request ===

    /// Decides a request at `now` (ms since the epoch); `remaining_ms` is the time left
    /// before the route's deadline. Returns the action and, when the cache answers, how.
    pub fn on_request(
        &self,
        host: &dyn Host,
        req: &Request,
        now: u64,
        remaining_ms: u64,
    ) -> (RequestAction, Option<Label>) {
        let method = req.method();
        if !matches!(method, "GET" | "HEAD") {
            // RFC 9111 §4.4: unsafe methods invalidate; OPTIONS and TRACE are safe.
            if matches!(method, "OPTIONS" | "TRACE" | "CONNECT") {
                return (RequestAction::proceed(), None);
            }
            return (
                RequestAction::proceed_with(None, Some(memo(&Memo::Invalidate))),
                None,
            );
        }
        // The cache key's `Vary` values may name any header: read them all, once, in
        // place.
        let req_headers = req.header_block();
        if req_headers.header("range").is_some() {
            return (RequestAction::proceed(), None);
        }
        let rcc = CacheControl::parse(req_headers);
        let head = method == "HEAD";
        let primary = entry::primary_key(req.upstream(), req.path_with_query());
        let Some((key, stored)) = self.lookup(host, &primary, req_headers) else {
            if rcc.only_if_cached {
                return (RequestAction::Respond(gateway_timeout()), Some(Label::Miss));
            }
            if head {
                return (RequestAction::proceed(), None);
            }
            return (self.fetch(now, None, None, None), None);
        };

        let age = policy::current_age(stored.initial_age, stored.response_time, now);
        let fresh = age < stored.freshness;
        let request_ok = rcc.max_age.is_none_or(|m| age <= m * 1000)
            && rcc
                .min_fresh
                .is_none_or(|m| stored.freshness.saturating_sub(age) >= m * 1000);
        let scc = CacheControl::parse(&stored.headers);
        let must_validate = rcc.no_cache || scc.no_cache;
        if fresh && request_ok && !must_validate {
            return (
                RequestAction::Respond(serve(&stored, age, Label::Hit, head)),
                Some(Label::Hit),
            );
        }
        if rcc.only_if_cached {
            return (RequestAction::Respond(gateway_timeout()), Some(Label::Miss));
        }
        if head {
            // HEAD is answered from fresh GET entries only; anything else goes upstream
            // as it is, and its answer is not stored.
            return (RequestAction::proceed(), None);
        }

        let staleness = age.saturating_sub(stored.freshness);
        let swr = !fresh
            && request_ok
            && !must_validate
            && !scc.forbids_stale()
            && scc
                .stale_while_revalidate
                .is_some_and(|w| staleness <= w * 1000);
        let mut lock = None;
        if swr {
            let lock_key = entry::lock_key(&key);
            let ttl = remaining_ms.clamp(1_000, MAX_LOCK_MS);
            match host.cas(&lock_key, None, b"1", ttl) {
                Ok(true) => lock = Some(lock_key),
                Ok(false) => {
                    return (
                        RequestAction::Respond(serve(&stored, age, Label::Stale, false)),
                        Some(Label::Stale),
                    );
                }
                Err(e) => {
                    // Without the lock every request would refresh: serve stale instead.
                    host.warn(&format!("refresh lock: {e:?}; serving stale"));
                    return (
                        RequestAction::Respond(serve(&stored, age, Label::Stale, false)),
                        Some(Label::Stale),
                    );
                }
            }
        }
        (
            self.fetch(now, Some((key, &stored)), Some(req_headers), lock),
            None,
        )
    }

    /// Continue upstream, made conditional when there is a stored entry with a validator
    /// and the client sent no conditional of its own.
    fn fetch(
        &self,
        now: u64,
        stored: Option<(String, &Entry)>,
        req_headers: Option<&HeaderBlock>,
        lock: Option<String>,
    ) -> RequestAction {
        let mut edit = RequestEdit::new();
        let client_conditional = req_headers.is_some_and(|h| {
            [
                "if-none-match",
                "if-modified-since",
                "if-match",
                "if-unmodified-since",
                "if-range",
            ]
            .iter()
            .any(|n| h.header(n).is_some())
        });
        if let (Some((_, e)), false) = (&stored, client_conditional) {
            if let Some(etag) = e.headers.header("etag") {
                edit = edit.set_header("if-none-match", etag);
            }
            if let Some(lm) = e.headers.header("last-modified") {
                edit = edit.set_header("if-modified-since", lm);
            }
        }
        let conditional = !edit.is_empty();
        let m = Memo::Fetch {
            t: now,
            charge: stored.as_ref().map(|(_, e)| e.charge),
            entry: stored.map(|(k, _)| k),
            conditional,
            lock,
        };
        RequestAction::proceed_with(conditional.then_some(edit), Some(memo(&m)))
    }

    /// The stored response for this request, if any: the URL's index names the `Vary`
    /// headers, the request's values of them pick the variant, and the entry must say
    /// it answers exactly that.
    fn lookup(
        &self,
        host: &dyn Host,
        primary: &str,
        req_headers: &HeaderBlock,
    ) -> Option<(String, Entry)> {
        let index = read(host, &entry::index_key(primary))?;
        let (names, _) = parse_index(&index)?;
        let values = policy::vary_values(req_headers, &names);
        let key = entry::entry_key(primary, &values);
        let stored = Entry::decode(&read(host, &key)?)?;
        (stored.primary == primary && stored.vary == values).then_some((key, stored))
    }

    // === on-response ===

    /// Decides what came back at `now`, given the memo `on_request` returned.
    pub fn on_response(
        &self,
        host: &dyn Host,
        req: &Request,
        memo: Option<&[u8]>,
        outcome: &Outcome,
        now: u64,
    ) -> (ResponseAction, Option<Label>) {
        let memo = memo.and_then(Memo::decode);
        match memo {
            None => miss(outcome),
            Some(Memo::Invalidate) => {
                if outcome.status().is_some_and(|s| (200..400).contains(&s)) {
                    let primary = entry::primary_key(req.upstream(), req.path_with_query());
                    if let Err(e) = host.delete(&entry::index_key(&primary)) {
                        host.warn(&format!("invalidating {primary}: {e:?}"));
                    }
                }
                miss(outcome)
            }
            Some(Memo::Fetch {
                t,
                entry,
                charge,
                conditional,
                lock,
            }) => {
                let result = self.fetched(
                    host,
                    req,
                    outcome,
                    now,
                    t,
                    entry.as_deref(),
                    charge,
                    conditional,
                );
                if let Some(lock) = lock {
                    // Releasing early only lets the next request refresh sooner; the TTL
                    // frees it anyway if this fails.
                    let _ = host.delete(&lock);
                }
                result
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fetched(
        &self,
        host: &dyn Host,
        req: &Request,
        outcome: &Outcome,
        now: u64,
        request_time: u64,
        old_key: Option<&str>,
        old_charge: Option<Charge>,
        conditional: bool,
    ) -> (ResponseAction, Option<Label>) {
        let primary = entry::primary_key(req.upstream(), req.path_with_query());
        let resp = match outcome {
            Outcome::Error(_) => {
                return match old_key.and_then(|k| self.stale_if_error(host, k, &primary, now)) {
                    Some(r) => (ResponseAction::Respond(r), Some(Label::Stale)),
                    None => (ResponseAction::proceed(), None),
                };
            }
            Outcome::Response(r) => r,
        };
        if matches!(resp.status(), 500 | 502 | 503 | 504)
            && let Some(r) = old_key.and_then(|k| self.stale_if_error(host, k, &primary, now))
        {
            return (ResponseAction::Respond(r), Some(Label::Stale));
        }
        if resp.status() == 304
            && conditional
            && let Some(key) = old_key
        {
            return self.merge_304(host, req, resp, key, &primary, request_time, now);
        }
        let resp_headers = resp.header_block();
        if matches!(policy::vary(resp_headers), Vary::Star) {
            // A `Vary: *` answer means no stored variant may be reused for this URL.
            let _ = host.delete(&entry::index_key(&primary));
        }
        match policy::storable(
            req.method(),
            req.header_block(),
            resp.status(),
            resp_headers,
            self.settings.default_ttl.is_some(),
        ) {
            Ok(()) => {
                let values = match policy::vary(resp_headers) {
                    Vary::Names(names) => policy::vary_values(req.header_block(), &names),
                    Vary::Star => Vec::new(),
                };
                let key = entry::entry_key(&primary, &values);
                let body = resp.body().unwrap_or_default();
                // The entry holds at least the body: one over the limit is refused before
                // it is copied (twice: into the entry, then encoded).
                if body.len() as u64 > self.settings.max_entry_bytes {
                    host.warn(&format!(
                        "not stored: its {} body bytes are more than max_entry_bytes ({})",
                        body.len(),
                        self.settings.max_entry_bytes
                    ));
                    return miss(outcome);
                }
                let replaced = old_charge.filter(|_| old_key == Some(key.as_str()));
                let body = body.to_vec();
                let e = self.new_entry(
                    primary,
                    values,
                    resp.status(),
                    resp_headers,
                    body,
                    request_time,
                    now,
                );
                if let Err(why) = self.put(host, &key, e, replaced, now) {
                    host.warn(&format!("not stored: {why}"));
                }
            }
            Err(why) => {
                // A response that may not be stored replaces nothing, but a stored one it
                // contradicts (no-store, private) must not be served again.
                if matches!(why, policy::NotStored::NoStore | policy::NotStored::Private)
                    && old_key.is_some()
                {
                    let _ = host.delete(&entry::index_key(&primary));
                }
            }
        }
        miss(outcome)
    }

    /// RFC 9111 §4.3.4: the upstream said our stored response is still good. Update its
    /// headers from the 304, refresh its age and freshness, store it again and answer
    /// with it.
    #[allow(clippy::too_many_arguments)]
    fn merge_304(
        &self,
        host: &dyn Host,
        req: &Request,
        not_modified: &Response,
        key: &str,
        primary: &str,
        request_time: u64,
        now: u64,
    ) -> (ResponseAction, Option<Label>) {
        let Some(old) = read(host, key)
            .and_then(|b| Entry::decode(&b))
            .filter(|e| e.primary == primary)
        else {
            // The entry was evicted while the request was out; the client asked for a
            // full response and a 304 would be wrong, so say what happened.
            host.warn(&format!("{primary}: entry evicted during revalidation"));
            let r = Response::text(
                502,
                "weir cache: the stored response was evicted while it was being revalidated\n",
            )
            .with_header(HEADER, Label::Miss.as_str());
            return (ResponseAction::Respond(r), Some(Label::Miss));
        };
        let mut headers = old.headers.clone();
        let mut replaced: Vec<&str> = Vec::new();
        for (name, value) in not_modified.headers() {
            if matches!(name.as_str(), "content-length" | "age" | HEADER) {
                continue;
            }
            if !replaced.contains(&name.as_str()) {
                headers.retain(|(n, _)| n != name);
                replaced.push(name);
            }
            headers.push((name.clone(), value.clone()));
        }
        let mut fresh = self.new_entry(
            primary.to_owned(),
            old.vary.clone(),
            old.status,
            &headers,
            old.body.clone(),
            request_time,
            now,
        );
        // The age comes from the 304 itself: its Date and Age describe this exchange.
        fresh.initial_age =
            policy::corrected_initial_age(not_modified.header_block(), request_time, now);
        let served = serve(&fresh, fresh.initial_age, Label::Revalidated, false);
        let still_storable = policy::storable(
            "GET",
            req.header_block(),
            fresh.status,
            &fresh.headers,
            self.settings.default_ttl.is_some(),
        );
        match still_storable {
            Ok(()) => {
                if let Err(why) = self.put(host, key, fresh, Some(old.charge), now) {
                    host.warn(&format!("not stored again after 304: {why}"));
                }
            }
            Err(_) => {
                let _ = host.delete(key);
                give_back(host, old.charge);
            }
        }
        (ResponseAction::Respond(served), Some(Label::Revalidated))
    }

    /// The stored entry under `key`, as a stale response, if its `stale-if-error` window
    /// covers `now` (RFC 5861 §4).
    fn stale_if_error(
        &self,
        host: &dyn Host,
        key: &str,
        primary: &str,
        now: u64,
    ) -> Option<Response> {
        let stored = Entry::decode(&read(host, key)?)?;
        if stored.primary != primary {
            return None;
        }
        let cc = CacheControl::parse(&stored.headers);
        let age = policy::current_age(stored.initial_age, stored.response_time, now);
        let staleness = age.saturating_sub(stored.freshness);
        let window = cc.stale_if_error?;
        (!cc.forbids_stale() && staleness <= window * 1000)
            .then(|| serve(&stored, age, Label::Stale, false))
    }

    // === storing ===

    #[allow(clippy::too_many_arguments)]
    fn new_entry(
        &self,
        primary: String,
        vary: Vec<(String, Option<String>)>,
        status: u16,
        headers: &(impl FieldsExt + ?Sized),
        body: Vec<u8>,
        request_time: u64,
        now: u64,
    ) -> Entry {
        let (freshness, _) =
            policy::freshness_lifetime(status, headers, now, self.settings.default_ttl);
        Entry {
            primary,
            vary,
            status,
            headers: headers
                .fields()
                .filter(|(n, _)| !matches!(*n, "age" | HEADER))
                .map(|(n, v)| (n.to_owned(), v.to_vec()))
                .collect(),
            body,
            response_time: now,
            initial_age: policy::corrected_initial_age(headers, request_time, now),
            freshness,
            charge: Charge::default(),
        }
    }

    /// How long the state store keeps `e`, in ms: its remaining freshness, plus the
    /// longer of its stale windows (when it allows serving stale) and, when it has a
    /// validator, the revalidation window. At most 2^[`MAX_CLASS`] s.
    pub fn state_ttl(&self, e: &Entry) -> u64 {
        let cc = CacheControl::parse(&e.headers);
        let remaining = e.freshness.saturating_sub(e.initial_age);
        let stale = if cc.forbids_stale() {
            0
        } else {
            cc.stale_while_revalidate
                .max(cc.stale_if_error)
                .map_or(0, |s| s * 1000 + 1)
        };
        let validator =
            e.headers.header("etag").is_some() || e.headers.header("last-modified").is_some();
        let revalidate = if validator {
            self.settings.revalidation_window.as_millis() as u64
        } else {
            0
        };
        (remaining + stale.max(revalidate)).min((1u64 << MAX_CLASS) * 1000)
    }

    /// Stores `e` under `key`, counting its bytes against `max_total_bytes` and giving
    /// back `replaced`, the charge of the entry it replaces.
    fn put(
        &self,
        host: &dyn Host,
        key: &str,
        mut e: Entry,
        replaced: Option<Charge>,
        now: u64,
    ) -> Result<(), String> {
        let ttl = self.state_ttl(&e);
        if ttl == 0 {
            return Err("no freshness left and nothing to revalidate with".into());
        }
        // The charge has a fixed size, so the encoded length is known before it is set.
        let bytes = (e.encode().len() + key.len()) as u64;
        if bytes > self.settings.max_entry_bytes {
            return Err(format!(
                "{bytes} bytes is more than max_entry_bytes ({})",
                self.settings.max_entry_bytes
            ));
        }
        let class = ttl_class(ttl);
        let width = (1u64 << class) * 1000;
        let bucket = now / width;
        e.charge = Charge {
            class,
            bucket,
            bytes,
        };
        let counter_ttl = (bucket + 2) * width - now;
        if let Some(old) = replaced {
            give_back(host, old);
        }
        host.incr(&e.charge.key(), bytes as i64, counter_ttl)
            .map_err(|err| format!("counting bytes: {err:?}"))?;
        let total = used_bytes(host, now);
        if total > self.settings.max_total_bytes {
            give_back(host, e.charge);
            return Err(format!(
                "the cache is full ({total} of max_total_bytes {} counted)",
                self.settings.max_total_bytes
            ));
        }
        if let Err(err) = host.set(key, &e.encode(), ttl) {
            give_back(host, e.charge);
            return Err(format!("state: {err:?}"));
        }
        self.update_index(host, &e, ttl, now);
        Ok(())
    }

    /// Points the URL's index at `e`'s `Vary` names, keeping it as long as its longest
    /// entry with the same names.
    fn update_index(&self, host: &dyn Host, e: &Entry, ttl: u64, now: u64) {
        let key = entry::index_key(&e.primary);
        let names: Vec<String> = e.vary.iter().map(|(n, _)| n.clone()).collect();
        let mut until = now + ttl;
        if let Some((old_names, old_until)) = read(host, &key).as_deref().and_then(parse_index)
            && old_names == names
        {
            until = until.max(old_until);
        }
        let value = format!("{}\n{until}", names.join(","));
        if let Err(err) = host.set(&key, value.as_bytes(), until - now) {
            host.warn(&format!("index for {}: {err:?}", e.primary));
        }
    }
}

/// The TTL class of an entry kept `ttl_ms`: the smallest `c` with `ttl ≤ 2^c s`.
fn ttl_class(ttl_ms: u64) -> u8 {
    let secs = ttl_ms.div_ceil(1000).max(1);
    let c = 64 - (secs - 1).leading_zeros() as u8;
    c.clamp(MIN_CLASS, MAX_CLASS)
}

/// The bytes counted against `max_total_bytes` at `now`: for every TTL class, the
/// current and the previous bucket. An entry of class `c` lives at most 2^c s, so every
/// live entry is in one of them.
pub fn used_bytes(host: &dyn Host, now: u64) -> u64 {
    let mut total: i64 = 0;
    for class in MIN_CLASS..=MAX_CLASS {
        let bucket = now / ((1u64 << class) * 1000);
        for b in [bucket, bucket.saturating_sub(1)] {
            let n = read(host, &entry::bytes_key(class, b))
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(0);
            total += n.max(0);
        }
    }
    total.max(0) as u64
}

fn give_back(host: &dyn Host, charge: Charge) {
    if charge.bytes > 0 {
        // A counter that already expired must not come back negative: the TTL is short.
        let _ = host.incr(&charge.key(), -(charge.bytes as i64), 1);
    }
}

/// An index value: `name,name\n<until-ms>`.
fn parse_index(value: &[u8]) -> Option<(Vec<String>, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (names, until) = text.split_once('\n')?;
    let names = names
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    Some((names, until.parse().ok()?))
}

fn read(host: &dyn Host, key: &str) -> Option<Vec<u8>> {
    match host.get(key) {
        Ok(v) => v,
        Err(e) => {
            host.warn(&format!("state get: {e:?}; treating as a miss"));
            None
        }
    }
}

fn memo(m: &Memo) -> Vec<u8> {
    m.encode()
}

impl Memo {
    const INVALIDATE: u8 = 0;
    const FETCH: u8 = 1;

    /// `Invalidate`: one byte, 0. `Fetch`: 1, `t`, then a flag byte (1 conditional,
    /// 2 entry, 4 charge, 8 lock) and the parts it names, in that order.
    fn encode(&self) -> Vec<u8> {
        let Memo::Fetch {
            t,
            entry,
            charge,
            conditional,
            lock,
        } = self
        else {
            return vec![Memo::INVALIDATE];
        };
        let mut w = Vec::with_capacity(32);
        w.push(Memo::FETCH);
        w.extend_from_slice(&t.to_be_bytes());
        let flags = u8::from(*conditional)
            | u8::from(entry.is_some()) << 1
            | u8::from(charge.is_some()) << 2
            | u8::from(lock.is_some()) << 3;
        w.push(flags);
        if let Some(entry) = entry {
            put_bytes(&mut w, entry.as_bytes());
        }
        if let Some(c) = charge {
            w.push(c.class);
            w.extend_from_slice(&c.bucket.to_be_bytes());
            w.extend_from_slice(&c.bytes.to_be_bytes());
        }
        if let Some(lock) = lock {
            put_bytes(&mut w, lock.as_bytes());
        }
        w
    }

    /// The memo [`Memo::encode`] wrote, or `None` (another version's, or damaged).
    fn decode(bytes: &[u8]) -> Option<Memo> {
        let mut r = Reader::new(bytes);
        let memo = match r.u8()? {
            Memo::INVALIDATE => Memo::Invalidate,
            Memo::FETCH => {
                let t = r.u64()?;
                let flags = r.u8()?;
                if flags > 0b1111 {
                    return None;
                }
                let entry = if flags & 2 != 0 {
                    Some(r.string()?)
                } else {
                    None
                };
                let charge = if flags & 4 != 0 {
                    Some(Charge {
                        class: r.u8()?,
                        bucket: r.u64()?,
                        bytes: r.u64()?,
                    })
                } else {
                    None
                };
                let lock = if flags & 8 != 0 {
                    Some(r.string()?)
                } else {
                    None
                };
                Memo::Fetch {
                    t,
                    entry,
                    charge,
                    conditional: flags & 1 != 0,
                    lock,
                }
            }
            _ => return None,
        };
        r.is_empty().then_some(memo)
    }
}

/// Pass the outcome on, tagged `miss` when there is a response to tag.
fn miss(outcome: &Outcome) -> (ResponseAction, Option<Label>) {
    match outcome {
        Outcome::Response(_) => (
            ResponseAction::proceed_with_edit(
                ResponseEdit::new().set_header(HEADER, Label::Miss.as_str()),
            ),
            Some(Label::Miss),
        ),
        Outcome::Error(_) => (ResponseAction::proceed(), None),
    }
}

/// RFC 9111 §5.2.1.7: `only-if-cached` and nothing usable stored.
fn gateway_timeout() -> Response {
    Response::text(
        504,
        "weir cache: only-if-cached and no usable stored response\n",
    )
    .with_header(HEADER, Label::Miss.as_str())
}

/// The stored response as the client gets it, `age_ms` old.
fn serve(e: &Entry, age_ms: u64, label: Label, head: bool) -> Response {
    let mut r = Response::new(e.status);
    for (name, value) in &e.headers {
        r = r.with_header(name.as_str(), value.as_slice());
    }
    r = r
        .with_header("age", (age_ms / 1000).to_string())
        .with_header(HEADER, label.as_str());
    if !head {
        r = r.with_body(e.body.as_slice());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::time::Duration;
    use weir_filter::Fields;

    const T0: u64 = 1_700_000_000_000;

    /// An in-memory state store with TTLs on a clock the test moves.
    #[derive(Default)]
    struct Mem {
        now: Cell<u64>,
        map: RefCell<HashMap<String, (Vec<u8>, u64)>>,
        warnings: RefCell<Vec<String>>,
    }

    impl Mem {
        fn new() -> Mem {
            let m = Mem::default();
            m.now.set(T0);
            m
        }

        fn live(&self, key: &str) -> Option<Vec<u8>> {
            let map = self.map.borrow();
            map.get(key)
                .filter(|(_, until)| *until > self.now.get())
                .map(|(v, _)| v.clone())
        }
    }

    impl Host for Mem {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
            Ok(self.live(key))
        }
        fn set(&self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), StateError> {
            let until = self.now.get() + ttl_ms;
            self.map
                .borrow_mut()
                .insert(key.into(), (value.to_vec(), until));
            Ok(())
        }
        fn delete(&self, key: &str) -> Result<(), StateError> {
            self.map.borrow_mut().remove(key);
            Ok(())
        }
        fn incr(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, StateError> {
            let (n, until) = match (self.live(key), self.map.borrow().get(key)) {
                (Some(v), Some((_, until))) => (
                    String::from_utf8(v).unwrap().parse::<i64>().unwrap(),
                    *until,
                ),
                _ => (0, self.now.get() + ttl_ms),
            };
            let n = n + delta;
            self.map
                .borrow_mut()
                .insert(key.into(), (n.to_string().into_bytes(), until));
            Ok(n)
        }
        fn cas(
            &self,
            key: &str,
            old: Option<&[u8]>,
            new: &[u8],
            ttl_ms: u64,
        ) -> Result<bool, StateError> {
            if self.live(key).as_deref() != old {
                return Ok(false);
            }
            self.set(key, new, ttl_ms)?;
            Ok(true)
        }
        fn warn(&self, message: &str) {
            self.warnings.borrow_mut().push(message.into());
        }
    }

    fn cache(settings: Settings) -> Cache {
        Cache::new(settings)
    }

    fn get(path: &str, headers: &[(&str, &str)]) -> Request {
        request("GET", path, headers)
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        let mut r = Request::new(method, path).with_upstream("http://up");
        for (n, v) in headers {
            r = r.with_header(*n, *v);
        }
        r
    }

    /// `req` as it goes upstream: its headers followed by `added`.
    fn resend(req: &Request, added: Fields) -> Request {
        let mut sent =
            Request::new(req.method(), req.path_with_query()).with_upstream(req.upstream());
        for (n, v) in req.headers().iter().cloned().chain(added) {
            sent = sent.with_header(n, v);
        }
        if let Some(body) = req.body() {
            sent = sent.with_body(body);
        }
        sent
    }

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> Outcome {
        let mut r = Response::new(status).with_body(body);
        for (n, v) in headers {
            r = r.with_header(*n, *v);
        }
        Outcome::Response(r)
    }

    /// One request through the cache: `upstream` answers if the cache continues.
    /// Returns the response the client gets, its label, and whether upstream was called.
    fn run(
        c: &Cache,
        m: &Mem,
        req: &Request,
        upstream: impl FnOnce(&Request) -> Outcome,
    ) -> (Option<Response>, Option<Label>, bool) {
        let now = m.now.get();
        match c.on_request(m, req, now, 30_000).0 {
            RequestAction::Respond(r) => {
                let label = header(&r);
                (Some(r), label, false)
            }
            RequestAction::Continue((edit, memo)) => {
                let sent = resend(req, edit.map(|e| e.set_headers).unwrap_or_default());
                let outcome = upstream(&sent);
                let (action, _) = c.on_response(m, &sent, memo.as_deref(), &outcome, m.now.get());
                let r = match (action, outcome) {
                    (ResponseAction::Respond(r), _) => Some(r),
                    (ResponseAction::Continue(edit), Outcome::Response(mut r)) => {
                        for (n, v) in edit.into_iter().flat_map(|e| e.set_headers) {
                            r = r.with_header(n, v);
                        }
                        Some(r)
                    }
                    _ => None,
                };
                let label = r.as_ref().and_then(header);
                (r, label, true)
            }
            RequestAction::Wait(_) => unreachable!("the cache never waits"),
        }
    }

    fn header(r: &Response) -> Option<Label> {
        match r.header_str(HEADER)?.as_str() {
            "hit" => Some(Label::Hit),
            "miss" => Some(Label::Miss),
            "stale" => Some(Label::Stale),
            "revalidated" => Some(Label::Revalidated),
            other => panic!("bad x-weir-cache {other}"),
        }
    }

    fn advance(m: &Mem, secs: u64) {
        m.now.set(m.now.get() + secs * 1000);
    }

    #[test]
    fn memos_read_back_as_written_and_damaged_ones_are_refused() {
        let fetch = |entry: Option<&str>, charge: Option<Charge>, lock: Option<&str>| Memo::Fetch {
            t: 1_700_000_000_123,
            entry: entry.map(str::to_owned),
            charge,
            conditional: entry.is_some(),
            lock: lock.map(str::to_owned),
        };
        let charge = Charge {
            class: 7,
            bucket: 13_280_000,
            bytes: 4096,
        };
        let memos = [
            Memo::Invalidate,
            fetch(None, None, None),
            fetch(Some("e/https://a.test/x"), Some(charge), None),
            fetch(Some("e/k"), None, Some("l/e/k")),
            fetch(None, Some(charge), Some("l")),
        ];
        for m in memos {
            let bytes = m.encode();
            assert_eq!(Memo::decode(&bytes), Some(m.clone()), "{m:?}");
            assert_eq!(
                Memo::decode(&bytes[..bytes.len() - 1]),
                None,
                "{m:?} cut short"
            );
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(Memo::decode(&longer), None, "{m:?} with a byte more");
        }
        assert_eq!(Memo::decode(b"{\"k\":\"invalidate\"}"), None);
        assert_eq!(Memo::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0b1_0000]), None);
    }

    #[test]
    fn stores_then_hits_with_age() {
        let (c, m) = (cache(Settings::default()), Mem::new());
        let req = get("/a", &[]);
        let (r, label, called) = run(&c, &m, &req, |_| {
            resp(200, &[("cache-control", "max-age=60")], "A")
        });
        assert!(called);
        assert_eq!(label, Some(Label::Miss));
        assert_eq!(r.unwrap().body(), Some(&b"A"[..]));
        advance(&m, 7);
        let (r, label, called) = run(&c, &m, &req, |_| panic!("hit expected"));
        assert!(!called);
        assert_eq!(label, Some(Label::Hit));
        let r = r.unwrap();
        assert_eq!(r.header_str("age").as_deref(), Some("7"));
        assert_eq!(r.body(), Some(&b"A"[..]));
        advance(&m, 54);
        let (_, label, called) = run(&c, &m, &req, |_| resp(200, &[], "B"));
        assert!(called, "stale after 61 s");
        assert_eq!(label, Some(Label::Miss));
    }

    #[test]
    fn revalidates_with_etag_and_merges_the_304() {
        let (c, m) = (cache(Settings::default()), Mem::new());
        let req = get("/r", &[]);
        run(&c, &m, &req, |_| {
            resp(
                200,
                &[
                    ("cache-control", "max-age=10"),
                    ("etag", "\"v1\""),
                    ("x-a", "old"),
                ],
                "body",
            )
        });
        advance(&m, 11);
        let (r, label, _) = run(&c, &m, &req, |sent| {
            assert_eq!(sent.header_str("if-none-match").as_deref(), Some("\"v1\""));
            resp(304, &[("cache-control", "max-age=100"), ("x-a", "new")], "")
        });
        let r = r.unwrap();
        assert_eq!(label, Some(Label::Revalidated));
        assert_eq!(r.status(), 200);
        assert_eq!(r.body(), Some(&b"body"[..]));
        assert_eq!(r.header_str("x-a").as_deref(), Some("new"));
        assert_eq!(r.header_str("etag").as_deref(), Some("\"v1\""));
        advance(&m, 50);
        let (_, label, called) = run(&c, &m, &req, |_| panic!("refreshed for 100 s"));
        assert!(!called);
        assert_eq!(label, Some(Label::Hit));
    }

    #[test]
    fn stale_while_revalidate_lets_one_request_refresh() {
        let (c, m) = (cache(Settings::default()), Mem::new());
        let req = get("/swr", &[]);
        run(&c, &m, &req, |_| {
            resp(
                200,
                &[("cache-control", "max-age=10, stale-while-revalidate=30")],
                "v1",
            )
        });
        advance(&m, 15);
        // The first stale request takes the lock and goes upstream…
        let now = m.now.get();
        let (first, _) = c.on_request(&m, &req, now, 30_000);
        let RequestAction::Continue((None, Some(memo))) = first else {
            panic!("{first:?}")
        };
        // …while a second one is served stale.
        let (r, label, called) = run(&c, &m, &req, |_| panic!("locked"));
        assert!(!called);
        assert_eq!(label, Some(Label::Stale));
        assert_eq!(r.unwrap().header_str("age").as_deref(), Some("15"));
        let fresh = resp(
            200,
            &[("cache-control", "max-age=10, stale-while-revalidate=30")],
            "v2",
        );
        c.on_response(&m, &req, Some(&memo), &fresh, now);
        let (r, label, _) = run(&c, &m, &req, |_| panic!("fresh again"));
        assert_eq!(label, Some(Label::Hit));
        assert_eq!(r.unwrap().body(), Some(&b"v2"[..]));
        // Past the window the request waits for the upstream.
        advance(&m, 41);
        let (_, label, called) = run(&c, &m, &req, |_| resp(200, &[], "v3"));
        assert!(called);
        assert_eq!(label, Some(Label::Miss));
    }

    #[test]
    fn stale_if_error_inside_and_outside_the_window() {
        let (c, m) = (cache(Settings::default()), Mem::new());
        let req = get("/sie", &[]);
        run(&c, &m, &req, |_| {
            resp(
                200,
                &[("cache-control", "max-age=10, stale-if-error=20")],
                "ok",
            )
        });
        advance(&m, 25);
        let (r, label, called) = run(&c, &m, &req, |_| {
            Outcome::Error(weir_filter::UpstreamError::ConnectFailed)
        });
        assert!(called);
        assert_eq!(label, Some(Label::Stale));
        assert_eq!(r.unwrap().body(), Some(&b"ok"[..]));
        let (r, label, _) = run(&c, &m, &req, |_| resp(503, &[], "down"));
        assert_eq!(label, Some(Label::Stale));
        assert_eq!(r.unwrap().status(), 200);
        advance(&m, 6);
        let (r, label, _) = run(&c, &m, &req, |_| resp(503, &[], "down"));
        assert_eq!(label, Some(Label::Miss));
        assert_eq!(r.unwrap().status(), 503);
    }

    #[test]
    fn vary_keeps_variants_apart() {
        let (c, m) = (cache(Settings::default()), Mem::new());
        let vary = |body: &'static str| {
            move |_: &Request| {
                resp(
                    200,
                    &[("cache-control", "max-age=60"), ("vary", "Accept")],
                    body,
                )
            }
        };
        let json = get("/v", &[("accept", "application/json")]);
        let html = get("/v", &[("accept", "text/html")]);
        run(&c, &m, &json, vary("json"));
        run(&c, &m, &html, vary("html"));
        let (r, label, _) = run(&c, &m, &json, |_| panic!("hit"));
        assert_eq!(
            (label, r.unwrap().body().map(<[u8]>::to_vec)),
            (Some(Label::Hit), Some(b"json".to_vec()))
        );
        let (r, label, _) = run(&c, &m, &html, |_| panic!("hit"));
        assert_eq!(
            (label, r.unwrap().body().map(<[u8]>::to_vec)),
            (Some(Label::Hit), Some(b"html".to_vec()))
        );
        let (_, label, called) = run(&c, &m, &get("/v", &[]), vary("none"));
        assert!(called);
        assert_eq!(label, Some(Label::Miss));
    }

    #[test]
    fn unsafe_methods_invalidate() {
        let (c, m) = (cache(Settings::default()), Mem::new());
        let req = get("/i", &[]);
        run(&c, &m, &req, |_| {
            resp(200, &[("cache-control", "max-age=60")], "x")
        });
        let post = request("POST", "/i", &[]);
        // A failed POST invalidates nothing.
        run(&c, &m, &post, |_| resp(500, &[], ""));
        assert_eq!(run(&c, &m, &req, |_| panic!("hit")).1, Some(Label::Hit));
        run(&c, &m, &post, |_| resp(201, &[], ""));
        assert!(run(&c, &m, &req, |_| resp(200, &[], "y")).2);
    }

    #[test]
    fn size_caps() {
        let ok = |_: &Request| resp(200, &[("cache-control", "max-age=60")], &"x".repeat(200));
        let big = |_: &Request| resp(200, &[("cache-control", "max-age=60")], &"x".repeat(500));
        // The size one such entry is counted for (the paths below have the same length).
        let scratch = Mem::new();
        run(&cache(Settings::default()), &scratch, &get("/0", &[]), ok);
        let one = used_bytes(&scratch, scratch.now.get());
        assert!((200..400).contains(&one), "{one}");

        let settings = Settings {
            max_entry_bytes: one + 50,
            max_total_bytes: 2 * one + one / 2,
            ..Settings::default()
        };
        let (c, m) = (cache(settings), Mem::new());
        run(&c, &m, &get("/b", &[]), big);
        assert!(
            run(&c, &m, &get("/b", &[]), big).2,
            "bigger than max_entry_bytes"
        );
        assert_eq!(used_bytes(&m, m.now.get()), 0);
        for i in 0..3 {
            run(&c, &m, &get(&format!("/{i}"), &[]), ok);
        }
        let hits: Vec<bool> = (0..3)
            .map(|i| !run(&c, &m, &get(&format!("/{i}"), &[]), ok).2)
            .collect();
        assert_eq!(hits, [true, true, false], "the third entry does not fit");
        assert_eq!(used_bytes(&m, m.now.get()), 2 * one);
        assert!(
            m.warnings
                .borrow()
                .iter()
                .any(|w| w.contains("the cache is full"))
        );
        // Once the counted entries' buckets have expired there is room again.
        advance(&m, 200);
        assert_eq!(used_bytes(&m, m.now.get()), 0);
        run(&c, &m, &get("/2", &[]), ok);
        assert!(!run(&c, &m, &get("/2", &[]), |_| panic!("stored")).2);
    }

    #[test]
    fn replacing_an_entry_gives_its_bytes_back() {
        let (c, m) = (cache(Settings::default()), Mem::new());
        let req = get("/rep", &[]);
        run(&c, &m, &req, |_| {
            resp(
                200,
                &[("cache-control", "max-age=10"), ("etag", "\"1\"")],
                "one",
            )
        });
        let once = used_bytes(&m, m.now.get());
        assert!(once > 0);
        for _ in 0..5 {
            advance(&m, 11);
            run(&c, &m, &req, |_| {
                resp(
                    200,
                    &[("cache-control", "max-age=10"), ("etag", "\"2\"")],
                    "two",
                )
            });
        }
        assert_eq!(used_bytes(&m, m.now.get()), once);
    }

    #[test]
    fn state_ttl_covers_freshness_and_windows() {
        let c = cache(Settings {
            revalidation_window: Duration::from_secs(100),
            ..Settings::default()
        });
        let e = |headers: &[(&str, &str)]| Entry {
            primary: "GET http://up/".into(),
            vary: vec![],
            status: 200,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: vec![],
            response_time: T0,
            initial_age: 5_000,
            freshness: 60_000,
            charge: Charge::default(),
        };
        assert_eq!(c.state_ttl(&e(&[])), 55_000);
        assert_eq!(
            c.state_ttl(&e(&[("cache-control", "stale-if-error=300")])),
            355_001
        );
        assert_eq!(c.state_ttl(&e(&[("etag", "\"x\"")])), 155_000);
        assert_eq!(
            c.state_ttl(&e(&[(
                "cache-control",
                "must-revalidate, stale-if-error=300"
            )])),
            55_000
        );
        assert_eq!(ttl_class(1), MIN_CLASS);
        assert_eq!(ttl_class(16_000), 4);
        assert_eq!(ttl_class(16_001), 5);
        assert_eq!(ttl_class(u64::MAX / 2), MAX_CLASS);
    }

    #[test]
    fn only_if_cached_and_head() {
        let (c, m) = (cache(Settings::default()), Mem::new());
        let (r, _, called) = run(
            &c,
            &m,
            &get("/o", &[("cache-control", "only-if-cached")]),
            |_| panic!(),
        );
        assert!(!called);
        assert_eq!(r.unwrap().status(), 504);
        run(&c, &m, &get("/o", &[]), |_| {
            resp(200, &[("cache-control", "max-age=60")], "body")
        });
        let head = request("HEAD", "/o", &[]);
        let (r, label, called) = run(&c, &m, &head, |_| panic!());
        assert!(!called);
        assert_eq!(label, Some(Label::Hit));
        assert_eq!(r.unwrap().body(), None);
    }
}
