//! The filter's decisions, with the state store and the random source passed in, so the
//! whole request path runs natively in unit tests against an in-memory [`Host`].

use weir_filter::serde_json::json;
use weir_filter::state::StateError;
use weir_filter::{
    Outcome, Request, RequestAction, RequestEdit, RequestInfo, Response, ResponseAction,
};

use crate::config::{Settings, Tenant};
use crate::record::{self, Identity, Record, Stored};

/// The request header that carries the key (IETF draft, Stripe).
pub const HEADER: &str = "idempotency-key";
/// The response header that marks a replayed response.
pub const REPLAY_HEADER: &str = "x-weir-idempotent-replay";
/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;
/// How long an in-flight marker (and a generated key) outlives the route's deadline, so
/// that `on-response` finds it, in ms. A request that never reaches `on-response` (weir
/// crashed, the client went away mid-flight) holds its key no longer than this past its
/// deadline.
pub const MARGIN_MS: u64 = 5_000;
/// How many times a claim is tried when the record changes under it.
const CLAIM_TRIES: usize = 3;

/// What the filter needs from weir: the state store, random numbers and a log.
pub trait Host {
    /// `state::get`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError>;
    /// `state::set` with a TTL in ms.
    fn set(&self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), StateError>;
    /// `state::compare_and_swap` with a TTL in ms.
    fn cas(
        &self,
        key: &str,
        old: Option<&[u8]>,
        new: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, StateError>;
    /// 16 random bytes, or `None` if the random source failed.
    fn random(&self) -> Option<[u8; 16]>;
    /// A warning for weir's log.
    fn warn(&self, message: &str);
}

/// What `on-request` decided, for the `idempotency_requests_total` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// The request had no key; the filter added one.
    Generated,
    /// The client's key was new (or free again); the request goes upstream.
    New,
    /// The stored response was replayed.
    Replayed,
    /// 409: the first request with the key is still in flight.
    InFlight,
    /// 422: the key was used with a different request.
    Mismatch,
    /// 400: the key is empty, too long, or sent more than once.
    Invalid,
    /// The state store failed; the request went upstream unchecked
    /// (`on_state_error = "allow"`).
    Unchecked,
    /// 503: the state store failed, and the request was not sent
    /// (`on_state_error = "reject"`, the default).
    Unavailable,
}

impl Label {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Generated => "generated",
            Label::New => "new",
            Label::Replayed => "replayed",
            Label::InFlight => "in_flight",
            Label::Mismatch => "mismatch",
            Label::Invalid => "invalid",
            Label::Unchecked => "unchecked",
            Label::Unavailable => "unavailable",
        }
    }
}

/// What `on-response` did with a response, for the `idempotency_responses_total` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// Stored for replay.
    Stored,
    /// Larger than `max_response_bytes` (or than the state store takes): not stored, and
    /// the key is free again.
    TooLarge,
    /// No response (an upstream error): the key is free again.
    Released,
    /// The state store failed, or the marker was gone: not stored.
    Failed,
}

impl Saved {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Saved::Stored => "stored",
            Saved::TooLarge => "too_large",
            Saved::Released => "released",
            Saved::Failed => "failed",
        }
    }
}

/// The filter's logic, with its settings.
#[derive(Debug, Clone)]
pub struct Idempotency {
    settings: Settings,
}

impl Idempotency {
    /// The filter with these settings.
    pub fn new(settings: Settings) -> Idempotency {
        Idempotency { settings }
    }

    // === on-request ===

    /// Decides a request: add a key, claim the client's key, or answer from the store.
    pub fn on_request(
        &self,
        host: &dyn Host,
        info: &RequestInfo,
        req: &Request,
    ) -> (RequestAction, Option<Label>) {
        if !self.settings.methods.iter().any(|m| m == req.method()) {
            return (RequestAction::proceed(), None);
        }
        let keys = req.header_all(HEADER);
        let mut keys = keys.iter();
        let Some(key) = keys.next() else {
            if !self.settings.generate_key {
                return (RequestAction::proceed(), None);
            }
            let edit = RequestEdit::new().set_header(HEADER, generate(host, info));
            return (
                RequestAction::proceed_with_edit(edit),
                Some(Label::Generated),
            );
        };
        if keys.next().is_some() {
            let r = error(
                400,
                "invalid_idempotency_key",
                "send one Idempotency-Key header, not several",
                info,
                req,
            );
            return (RequestAction::Respond(r), Some(Label::Invalid));
        }
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            let message = format!("the Idempotency-Key must be 1 to {MAX_KEY_LEN} characters long");
            let r = error(400, "invalid_idempotency_key", &message, info, req);
            return (RequestAction::Respond(r), Some(Label::Invalid));
        }
        let identity = Identity {
            route: info.route().to_owned(),
            tenant: match &self.settings.tenant {
                Tenant::None => None,
                Tenant::Header(name) => req.header(name),
            },
            key: key.clone(),
        };
        let body = req.body().unwrap_or_default();
        let marker = Record {
            owner: owner(info),
            identity,
            fingerprint: record::fingerprint(req.method(), req.path_with_query(), body),
            response: None,
        };
        self.claim(host, info, req, marker)
    }

    /// Claims the key for this request with an in-flight marker, or answers 409, 422 or
    /// the stored response.
    fn claim(
        &self,
        host: &dyn Host,
        info: &RequestInfo,
        req: &Request,
        marker: Record,
    ) -> (RequestAction, Option<Label>) {
        let state_key = record::record_key(&marker.identity);
        let encoded = marker.encode();
        let ttl = info.remaining_ms().saturating_add(MARGIN_MS);
        for _ in 0..CLAIM_TRIES {
            let current = match host.get(&state_key) {
                Ok(c) => c,
                Err(e) => return self.store_failed(host, &e, info, req),
            };
            match current.as_deref().and_then(Record::decode) {
                None => {}
                Some(found) if found.identity != marker.identity => {
                    // A hash collision: never answer with another key's response.
                    host.warn("state key collision; the request goes upstream unchecked");
                    return (RequestAction::proceed(), Some(Label::Unchecked));
                }
                // This request's own retry (a `retry` filter before this one): the
                // outcome of its earlier try is replaced by the next.
                Some(found) if found.owner == marker.owner && info.attempt() > 1 => {}
                Some(found) if found.fingerprint != marker.fingerprint => {
                    let r = error(
                        422,
                        "idempotency_key_reused",
                        "this Idempotency-Key was already used with a different request",
                        info,
                        req,
                    );
                    return (RequestAction::Respond(r), Some(Label::Mismatch));
                }
                Some(Record { response: None, .. }) => {
                    let r = error(
                        409,
                        "idempotency_key_in_use",
                        "a request with this Idempotency-Key is still in progress",
                        info,
                        req,
                    );
                    return (RequestAction::Respond(r), Some(Label::InFlight));
                }
                Some(Record {
                    response: Some(stored),
                    ..
                }) => {
                    return (
                        RequestAction::Respond(replay(stored)),
                        Some(Label::Replayed),
                    );
                }
            }
            match host.cas(&state_key, current.as_deref(), &encoded, ttl) {
                Ok(true) => {
                    return (
                        RequestAction::proceed_with(None, Some(encoded)),
                        Some(Label::New),
                    );
                }
                // Another request changed the record meanwhile: look again.
                Ok(false) => {}
                Err(e) => return self.store_failed(host, &e, info, req),
            }
        }
        let r = error(
            409,
            "idempotency_key_in_use",
            "other requests with this Idempotency-Key keep changing it",
            info,
            req,
        );
        (RequestAction::Respond(r), Some(Label::InFlight))
    }

    // === on-response ===

    /// Stores the complete response under the key this request claimed, or frees the key
    /// when there is nothing to store. The response itself passes on unchanged.
    pub fn on_response(
        &self,
        host: &dyn Host,
        memo: Option<&[u8]>,
        outcome: &Outcome,
    ) -> (ResponseAction, Option<Saved>) {
        let Some(marker) = memo else {
            return (ResponseAction::proceed(), None);
        };
        let Some(claimed) = Record::decode(marker) else {
            return (ResponseAction::proceed(), None);
        };
        let state_key = record::record_key(&claimed.identity);
        let saved = match outcome {
            Outcome::Error(_) => {
                release(host, &state_key, marker);
                Saved::Released
            }
            Outcome::Response(r) => {
                // Measured before anything is copied: a response too large to store
                // (tens of MiB, on a route that allows it) costs no memory.
                let headers = r.headers();
                let size = r.body().map_or(0, |b| b.len() as u64)
                    + headers
                        .iter()
                        .map(|(n, v)| (n.len() + v.len()) as u64)
                        .sum::<u64>();
                if size > self.settings.max_response_bytes {
                    release(host, &state_key, marker);
                    Saved::TooLarge
                } else {
                    let done = Record {
                        response: Some(Stored {
                            status: r.status(),
                            headers: headers.clone(),
                            body: r.body().map(<[u8]>::to_vec).unwrap_or_default(),
                        }),
                        ..claimed
                    };
                    let ttl = self.settings.expiry.as_millis() as u64;
                    match host.cas(&state_key, Some(marker), &done.encode(), ttl) {
                        Ok(true) => Saved::Stored,
                        Ok(false) => {
                            host.warn("the key's in-flight marker expired; response not stored");
                            Saved::Failed
                        }
                        Err(StateError::TooLarge) => {
                            release(host, &state_key, marker);
                            Saved::TooLarge
                        }
                        Err(e) => {
                            host.warn(&format!("storing the response: {e:?}; not stored"));
                            Saved::Failed
                        }
                    }
                }
            }
        };
        (ResponseAction::proceed(), Some(saved))
    }
}

/// Who holds a key: weir's own request id (unique per request, whatever `x-request-id`
/// the client sent) and the client's address.
fn owner(info: &RequestInfo) -> String {
    format!("{} {}", info.id(), info.client_addr())
}

/// The key added to a request without one: a random UUIDv4 on the request's first try,
/// kept in state so that a `retry` filter before this one re-sends the same key. If the
/// store fails (or the first try did not pass this filter), every try derives the same
/// UUIDv8 from the route, request id and client address.
fn generate(host: &dyn Host, info: &RequestInfo) -> String {
    let derived = || {
        record::uuid(
            record::request_hash(info.route(), info.id(), info.client_addr()),
            8,
        )
    };
    let state_key = record::generated_key(info.route(), info.id(), info.client_addr());
    let ttl = info.remaining_ms().saturating_add(MARGIN_MS);
    if info.attempt() <= 1 {
        let Some(random) = host.random() else {
            return derived();
        };
        let key = record::uuid(random, 4);
        return match host.set(&state_key, key.as_bytes(), ttl) {
            Ok(()) => key,
            Err(e) => {
                host.warn(&format!("keeping the generated key: {e:?}; deriving it"));
                derived()
            }
        };
    }
    match host.get(&state_key) {
        Ok(Some(v)) => String::from_utf8(v).unwrap_or_else(|_| derived()),
        Ok(None) => derived(),
        Err(e) => {
            host.warn(&format!("reading the generated key: {e:?}; deriving it"));
            derived()
        }
    }
}

/// Frees a key this request holds: replaces its marker, only if it is still there, with
/// an empty value that expires at once.
fn release(host: &dyn Host, state_key: &str, marker: &[u8]) {
    if let Err(e) = host.cas(state_key, Some(marker), b"", 1) {
        host.warn(&format!(
            "releasing the key: {e:?}; it frees when its marker expires"
        ));
    }
}

impl Idempotency {
    /// The state store failed before the key was claimed: without a record the filter
    /// cannot tell a repeat from a first request, so by default the request is refused
    /// (503) rather than risk sending it twice; `on_state_error = "allow"` sends it
    /// unchecked.
    fn store_failed(
        &self,
        host: &dyn Host,
        e: &StateError,
        info: &RequestInfo,
        req: &Request,
    ) -> (RequestAction, Option<Label>) {
        let why = match e {
            StateError::Unavailable(why) => why.as_str(),
            StateError::TooLarge => "the key is too large for it",
        };
        if self.settings.on_state_error_allow {
            host.warn(&format!(
                "state store: {why}; the request goes upstream unchecked"
            ));
            return (RequestAction::proceed(), Some(Label::Unchecked));
        }
        host.warn(&format!(
            "state store: {why}; the request is refused with 503"
        ));
        let r = error(
            503,
            "state_unavailable",
            &format!(
                "idempotency: the state store is unavailable ({why}); the request was not sent, so that it cannot be sent twice"
            ),
            info,
            req,
        );
        let r = r.with_header("retry-after", "1");
        (RequestAction::Respond(r), Some(Label::Unavailable))
    }
}

/// The stored response, byte for byte, marked as a replay.
fn replay(stored: Stored) -> Response {
    let mut r = Response::new(stored.status);
    for (name, value) in stored.headers {
        if !name.eq_ignore_ascii_case(REPLAY_HEADER) {
            r = r.with_header(name, value);
        }
    }
    r.with_header(REPLAY_HEADER, "true").with_body(stored.body)
}

/// An error in the shape of weir's own error responses.
fn error(status: u16, code: &str, message: &str, info: &RequestInfo, req: &Request) -> Response {
    Response::json(
        status,
        &json!({
            "error": code,
            "message": message,
            "route": info.route(),
            "request_id": req.request_id().as_deref().unwrap_or(info.id()),
        }),
    )
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use weir_filter::UpstreamError;

    use super::*;
    use crate::config::Config;

    /// An in-memory state store with a manual clock.
    #[derive(Default)]
    struct Mem {
        now: Cell<u64>,
        map: RefCell<HashMap<String, (Vec<u8>, u64)>>,
        down: Cell<bool>,
        max_value: Cell<Option<usize>>,
        seed: Cell<u8>,
        warnings: RefCell<Vec<String>>,
    }

    impl Mem {
        fn advance(&self, ms: u64) {
            self.now.set(self.now.get() + ms);
        }

        fn live(&self, key: &str) -> Option<Vec<u8>> {
            let map = self.map.borrow();
            map.get(key)
                .filter(|(_, until)| *until > self.now.get())
                .map(|(v, _)| v.clone())
        }

        fn check(&self, value: &[u8]) -> Result<(), StateError> {
            if self.down.get() {
                return Err(StateError::Unavailable("down".into()));
            }
            if self.max_value.get().is_some_and(|m| value.len() > m) {
                return Err(StateError::TooLarge);
            }
            Ok(())
        }
    }

    impl Host for Mem {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
            self.check(b"")?;
            Ok(self.live(key))
        }

        fn set(&self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), StateError> {
            self.check(value)?;
            let until = self.now.get() + ttl_ms;
            self.map
                .borrow_mut()
                .insert(key.to_owned(), (value.to_vec(), until));
            Ok(())
        }

        fn cas(
            &self,
            key: &str,
            old: Option<&[u8]>,
            new: &[u8],
            ttl_ms: u64,
        ) -> Result<bool, StateError> {
            self.check(new)?;
            if self.live(key).as_deref() != old {
                return Ok(false);
            }
            self.set(key, new, ttl_ms)?;
            Ok(true)
        }

        fn random(&self) -> Option<[u8; 16]> {
            self.seed.set(self.seed.get().wrapping_add(1));
            Some([self.seed.get(); 16])
        }

        fn warn(&self, message: &str) {
            self.warnings.borrow_mut().push(message.to_owned());
        }
    }

    fn filter(json: &str) -> Idempotency {
        let config = weir_filter::parse_config::<Config>("idempotency", json).unwrap();
        Idempotency::new(config.validate().unwrap())
    }

    fn info(id: &str, attempt: u32) -> RequestInfo {
        RequestInfo::new(id)
            .with_route("pay")
            .with_attempt(attempt)
            .with_remaining_ms(10_000)
            .with_client_addr("127.0.0.1:4000")
    }

    fn post(key: Option<&str>, body: &str) -> Request {
        request("POST", "/charges", key, body)
    }

    /// A request with `content-type: application/json`, then the key if any.
    fn request(method: &str, path: &str, key: Option<&str>, body: &str) -> Request {
        let mut r = Request::new(method, path)
            .with_upstream("http://up")
            .with_header("content-type", "application/json");
        if let Some(k) = key {
            r = r.with_header(HEADER, k);
        }
        r.with_body(body)
    }

    fn upstream(status: u16, body: &str) -> Outcome {
        Outcome::Response(
            Response::new(status)
                .with_header("x-up", "1")
                .with_body(body),
        )
    }

    /// Runs one request through on-request and, if it goes upstream, on-response with
    /// `outcome`. Returns the client's response (None: the upstream's) and the label.
    fn run(
        f: &Idempotency,
        host: &Mem,
        info: &RequestInfo,
        req: &Request,
        outcome: &Outcome,
    ) -> (Option<Response>, Option<Label>) {
        match f.on_request(host, info, req) {
            (RequestAction::Respond(r), label) => (Some(r), label),
            (RequestAction::Continue((_, memo)), label) => {
                let (action, _) = f.on_response(host, memo.as_deref(), outcome);
                assert_eq!(action, ResponseAction::proceed());
                (None, label)
            }
            (other, _) => panic!("unexpected {other:?}"),
        }
    }

    fn status_of(r: &Option<Response>) -> Option<u16> {
        r.as_ref().map(|r| r.status())
    }

    #[test]
    fn replays_the_first_response_byte_for_byte() {
        let (f, host) = (filter("{}"), Mem::default());
        let req = post(Some("k1"), r#"{"amount":1}"#);
        let (resp, label) = run(&f, &host, &info("a", 1), &req, &upstream(503, "busy"));
        assert_eq!((resp, label), (None, Some(Label::New)));

        let (resp, label) = run(&f, &host, &info("b", 1), &req, &upstream(200, "never"));
        assert_eq!(label, Some(Label::Replayed));
        let resp = resp.expect("replayed");
        assert_eq!(resp.status(), 503);
        assert_eq!(
            resp.headers(),
            &vec![
                ("x-up".to_string(), b"1".to_vec()),
                (REPLAY_HEADER.to_string(), b"true".to_vec())
            ]
        );
        assert_eq!(resp.body(), Some(&b"busy"[..]));
    }

    #[test]
    fn a_different_body_path_or_method_is_422() {
        let (f, host) = (filter(r#"{"methods": ["POST", "PUT"]}"#), Mem::default());
        run(
            &f,
            &host,
            &info("a", 1),
            &post(Some("k"), "one"),
            &upstream(201, "ok"),
        );
        let other_path = request("POST", "/refunds", Some("k"), "one");
        let other_method = request("PUT", "/charges", Some("k"), "one");
        for req in [post(Some("k"), "two"), other_path, other_method] {
            let (resp, label) = run(&f, &host, &info("b", 1), &req, &upstream(200, ""));
            assert_eq!(label, Some(Label::Mismatch));
            assert_eq!(status_of(&resp), Some(422));
        }
    }

    #[test]
    fn a_key_in_flight_is_409_and_free_again_after_an_error() {
        let (f, host) = (filter("{}"), Mem::default());
        let req = post(Some("k"), "x");
        let (first, label) = f.on_request(&host, &info("a", 1), &req);
        assert_eq!(label, Some(Label::New));
        let RequestAction::Continue((None, Some(memo))) = first else {
            panic!("{first:?}")
        };
        let (resp, label) = run(&f, &host, &info("b", 1), &req, &upstream(200, ""));
        assert_eq!(
            (status_of(&resp), label),
            (Some(409), Some(Label::InFlight))
        );
        // A different body while in flight is still a misuse of the key.
        let (resp, _) = run(
            &f,
            &host,
            &info("c", 1),
            &post(Some("k"), "y"),
            &upstream(200, ""),
        );
        assert_eq!(status_of(&resp), Some(422));

        let (_, saved) = f.on_response(&host, Some(&memo), &Outcome::Error(UpstreamError::Reset));
        assert_eq!(saved, Some(Saved::Released));
        host.advance(1);
        let (resp, label) = run(&f, &host, &info("d", 1), &req, &upstream(200, "ok"));
        assert_eq!((resp, label), (None, Some(Label::New)));
    }

    #[test]
    fn the_in_flight_marker_expires_after_the_deadline_and_margin() {
        let (f, host) = (filter("{}"), Mem::default());
        let req = post(Some("k"), "x");
        let (action, _) = f.on_request(&host, &info("a", 1), &req);
        assert!(matches!(action, RequestAction::Continue(_)));
        host.advance(10_000 + MARGIN_MS - 1);
        let (resp, _) = run(&f, &host, &info("b", 1), &req, &upstream(200, ""));
        assert_eq!(status_of(&resp), Some(409));
        host.advance(1);
        let (resp, label) = run(&f, &host, &info("c", 1), &req, &upstream(200, ""));
        assert_eq!((resp, label), (None, Some(Label::New)));
    }

    #[test]
    fn the_stored_response_expires() {
        let (f, host) = (filter(r#"{"expiry": "1s"}"#), Mem::default());
        let req = post(Some("k"), "x");
        run(&f, &host, &info("a", 1), &req, &upstream(200, "first"));
        host.advance(999);
        let (resp, _) = run(&f, &host, &info("b", 1), &req, &upstream(200, ""));
        assert_eq!(status_of(&resp), Some(200));
        host.advance(1);
        let (resp, label) = run(&f, &host, &info("c", 1), &req, &upstream(200, "second"));
        assert_eq!((resp, label), (None, Some(Label::New)));
    }

    #[test]
    fn tenants_and_routes_are_isolated() {
        let (f, host) = (
            filter(r#"{"tenant": {"header": "x-tenant"}}"#),
            Mem::default(),
        );
        let with_tenant = |t: &str, body: &str| post(Some("k"), body).with_header("x-tenant", t);
        run(
            &f,
            &host,
            &info("a", 1),
            &with_tenant("acme", "1"),
            &upstream(200, ""),
        );
        // Another tenant, another body: not a conflict.
        let (resp, label) = run(
            &f,
            &host,
            &info("b", 1),
            &with_tenant("globex", "2"),
            &upstream(200, ""),
        );
        assert_eq!((resp, label), (None, Some(Label::New)));
        // No tenant header is a tenant of its own.
        let (resp, label) = run(
            &f,
            &host,
            &info("c", 1),
            &post(Some("k"), "3"),
            &upstream(200, ""),
        );
        assert_eq!((resp, label), (None, Some(Label::New)));
        // Another route.
        let other = info("d", 1).with_route("refunds");
        let (resp, label) = run(
            &f,
            &host,
            &other,
            &with_tenant("acme", "4"),
            &upstream(200, ""),
        );
        assert_eq!((resp, label), (None, Some(Label::New)));
        // The same tenant again replays.
        let (resp, _) = run(
            &f,
            &host,
            &info("e", 1),
            &with_tenant("acme", "1"),
            &upstream(500, ""),
        );
        assert_eq!(status_of(&resp), Some(200));
    }

    #[test]
    fn invalid_keys_are_400() {
        let (f, host) = (filter("{}"), Mem::default());
        let long = "k".repeat(MAX_KEY_LEN + 1);
        let twice = post(Some("a"), "").with_header(HEADER, "b");
        for req in [post(Some(""), ""), post(Some(&long), ""), twice] {
            let (resp, label) = run(&f, &host, &info("a", 1), &req, &upstream(200, ""));
            assert_eq!((status_of(&resp), label), (Some(400), Some(Label::Invalid)));
        }
        let exact = "k".repeat(MAX_KEY_LEN);
        let (resp, _) = run(
            &f,
            &host,
            &info("b", 1),
            &post(Some(&exact), ""),
            &upstream(200, ""),
        );
        assert_eq!(resp, None);
    }

    #[test]
    fn other_methods_pass_untouched() {
        let (f, host) = (filter("{}"), Mem::default());
        let get = request("GET", "/charges", Some("k"), "");
        assert_eq!(
            f.on_request(&host, &info("a", 1), &get),
            (RequestAction::proceed(), None)
        );
        // The same request without headers.
        let get = Request::new("GET", "/charges")
            .with_upstream("http://up")
            .with_body("");
        assert_eq!(
            f.on_request(&host, &info("a", 1), &get),
            (RequestAction::proceed(), None)
        );
        assert!(host.map.borrow().is_empty());
    }

    fn generated(action: &RequestAction) -> String {
        let RequestAction::Continue((Some(edit), None)) = action else {
            panic!("{action:?}")
        };
        assert_eq!(edit.set_headers.len(), 1);
        assert_eq!(edit.set_headers[0].0, HEADER);
        String::from_utf8(edit.set_headers[0].1.clone()).unwrap()
    }

    #[test]
    fn a_generated_key_is_random_and_the_same_on_every_retry() {
        let (f, host) = (filter("{}"), Mem::default());
        let (a1, label) = f.on_request(&host, &info("a", 1), &post(None, "x"));
        assert_eq!(label, Some(Label::Generated));
        let key = generated(&a1);
        assert_eq!(key, "01010101-0101-4101-8101-010101010101");
        for attempt in 2..=4 {
            let (again, _) = f.on_request(&host, &info("a", attempt), &post(None, "x"));
            assert_eq!(generated(&again), key);
        }
        let (other, _) = f.on_request(&host, &info("b", 1), &post(None, "x"));
        assert_ne!(generated(&other), key);
        // Nothing is claimed for a generated key: the upstream deduplicates on it.
        let (_, saved) = f.on_response(&host, None, &upstream(200, ""));
        assert_eq!(saved, None);
    }

    #[test]
    fn without_the_store_a_generated_key_is_derived_the_same_on_every_try() {
        let (f, host) = (filter("{}"), Mem::default());
        host.down.set(true);
        let k1 = generated(&f.on_request(&host, &info("a", 1), &post(None, "x")).0);
        let k2 = generated(&f.on_request(&host, &info("a", 2), &post(None, "x")).0);
        assert_eq!(k1, k2);
        assert_eq!(&k1[14..15], "8", "{k1}");
        host.down.set(false);
        let k3 = generated(&f.on_request(&host, &info("a", 3), &post(None, "x")).0);
        assert_eq!(k1, k3);
        let k4 = generated(&f.on_request(&host, &info("b", 2), &post(None, "x")).0);
        assert_ne!(k1, k4);
    }

    #[test]
    fn generate_key_false_adds_nothing() {
        let (f, host) = (filter(r#"{"generate_key": false}"#), Mem::default());
        assert_eq!(
            f.on_request(&host, &info("a", 1), &post(None, "x")),
            (RequestAction::proceed(), None)
        );
    }

    #[test]
    fn a_retry_before_the_filter_goes_upstream_again_and_the_last_try_is_stored() {
        let (f, host) = (filter("{}"), Mem::default());
        let req = post(Some("k"), "x");
        // The retry filter before this one sends try 2 and 3 of request "a".
        for (attempt, status) in [(1, 503), (2, 503), (3, 200)] {
            let (resp, label) = run(&f, &host, &info("a", attempt), &req, &upstream(status, "s"));
            assert_eq!((resp, label), (None, Some(Label::New)), "try {attempt}");
        }
        // Another request with the key gets the last try's response.
        let (resp, _) = run(&f, &host, &info("b", 1), &req, &upstream(500, ""));
        assert_eq!(status_of(&resp), Some(200));
        // A client that reuses the request id on its own new request is not a retry.
        let (resp, _) = run(&f, &host, &info("a", 1), &req, &upstream(500, ""));
        assert_eq!(status_of(&resp), Some(200));
    }

    #[test]
    fn a_response_too_large_is_not_stored_and_frees_the_key() {
        let (f, host) = (filter(r#"{"max_response_bytes": 10}"#), Mem::default());
        let req = post(Some("k"), "x");
        let (action, _) = f.on_request(&host, &info("a", 1), &req);
        let RequestAction::Continue((_, memo)) = action else {
            panic!()
        };
        // "x-up: 1" is 5 bytes; a 6-byte body makes 11.
        let (_, saved) = f.on_response(&host, memo.as_deref(), &upstream(200, "abcdef"));
        assert_eq!(saved, Some(Saved::TooLarge));
        host.advance(1);
        let (resp, label) = run(&f, &host, &info("b", 1), &req, &upstream(200, "abcde"));
        assert_eq!((resp, label), (None, Some(Label::New)));
        // 10 bytes fit.
        let (resp, _) = run(&f, &host, &info("c", 1), &req, &upstream(500, ""));
        assert_eq!(status_of(&resp), Some(200));
    }

    #[test]
    fn a_response_the_store_refuses_frees_the_key() {
        let (f, host) = (filter("{}"), Mem::default());
        host.max_value.set(Some(200));
        let req = post(Some("k"), "x");
        let (action, _) = f.on_request(&host, &info("a", 1), &req);
        let RequestAction::Continue((_, memo)) = action else {
            panic!()
        };
        let (_, saved) = f.on_response(&host, memo.as_deref(), &upstream(200, &"b".repeat(300)));
        assert_eq!(saved, Some(Saved::TooLarge));
        host.advance(1);
        let (resp, label) = run(&f, &host, &info("b", 1), &req, &upstream(200, ""));
        assert_eq!((resp, label), (None, Some(Label::New)));
    }

    #[test]
    fn a_store_outage_refuses_the_request_with_503_by_default() {
        let (f, host) = (filter("{}"), Mem::default());
        host.down.set(true);
        let (action, label) = f.on_request(&host, &info("a", 1), &post(Some("k"), "x"));
        assert_eq!(label, Some(Label::Unavailable));
        let RequestAction::Respond(r) = action else {
            panic!("expected a 503, got {action:?}")
        };
        assert_eq!(r.status(), 503);
        assert_eq!(r.header_str("retry-after").as_deref(), Some("1"));
        let body: weir_filter::serde_json::Value =
            weir_filter::serde_json::from_slice(r.body().unwrap()).unwrap();
        assert_eq!(body["error"], "state_unavailable");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with("idempotency: the state store is unavailable ("),
            "{message}"
        );
        assert_eq!(host.warnings.borrow().len(), 1);
    }

    #[test]
    fn a_store_outage_lets_requests_through_unchecked_when_allowed() {
        let (f, host) = (filter(r#"{"on_state_error": "allow"}"#), Mem::default());
        host.down.set(true);
        let (action, label) = f.on_request(&host, &info("a", 1), &post(Some("k"), "x"));
        assert_eq!(
            (action, label),
            (RequestAction::proceed(), Some(Label::Unchecked))
        );
        assert_eq!(host.warnings.borrow().len(), 1);
        assert!(
            Config::validate(
                weir_filter::serde_json::from_str(r#"{"on_state_error": "maybe"}"#).unwrap()
            )
            .unwrap_err()
            .starts_with("on_state_error: expected \"reject\" or \"allow\"")
        );
    }

    #[test]
    fn a_marker_that_expired_meanwhile_is_not_overwritten() {
        let (f, host) = (filter("{}"), Mem::default());
        let req = post(Some("k"), "x");
        let (action, _) = f.on_request(&host, &info("a", 1), &req);
        let RequestAction::Continue((_, memo_a)) = action else {
            panic!()
        };
        host.advance(10_000 + MARGIN_MS);
        let (action, _) = f.on_request(&host, &info("b", 1), &req);
        assert!(matches!(action, RequestAction::Continue(_)));
        let (_, saved) = f.on_response(&host, memo_a.as_deref(), &upstream(200, "late"));
        assert_eq!(saved, Some(Saved::Failed));
        // b still holds the key.
        let (resp, _) = run(&f, &host, &info("c", 1), &req, &upstream(200, ""));
        assert_eq!(status_of(&resp), Some(409));
    }

    #[test]
    fn errors_are_json_in_weirs_shape() {
        let r = error(
            409,
            "idempotency_key_in_use",
            "busy",
            &info("r9", 1),
            &post(None, ""),
        );
        assert_eq!(
            r.header_str("content-type").as_deref(),
            Some("application/json")
        );
        let v: weir_filter::serde_json::Value =
            weir_filter::serde_json::from_slice(r.body().unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"error": "idempotency_key_in_use", "message": "busy", "route": "pay", "request_id": "r9"})
        );
    }
}
