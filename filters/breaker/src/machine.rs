//! The circuit breaker's state machine, in plain Rust: time is a parameter and the store
//! is a trait, so every transition is unit-tested natively.
//!
//! One [`Record`] per breaker key lives in the shared store. [`Engine::admit`] (from
//! `on-request`) and [`Engine::complete`] (from `on-response`) read it, compute the next
//! record with the pure [`admit`] and [`complete`], and write it back with
//! compare-and-swap, retrying when another instance or process wrote first.

use serde::{Deserialize, Serialize};

use crate::config::{Settings, Window};

/// How often a compare-and-swap is retried before the call gives up (and fails open).
const MAX_CAS_TRIES: u32 = 32;

// === Record ===

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Calls go through and are recorded in the window.
    Closed,
    /// Calls are refused until `wait_in_open` has passed.
    Open,
    /// A limited number of probes go through; their outcomes decide.
    HalfOpen,
}

impl Phase {
    /// The value of the `breaker_state` gauge.
    pub fn gauge(self) -> f64 {
        match self {
            Phase::Closed => 0.0,
            Phase::Open => 1.0,
            Phase::HalfOpen => 2.0,
        }
    }

    /// The name used in logs, metrics and the 503 body.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::Open => "open",
            Phase::HalfOpen => "half_open",
        }
    }
}

/// One call's outcome, as recorded in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// A failure status or an upstream error.
    pub failed: bool,
    /// Took longer than `slow_call_duration`.
    pub slow: bool,
}

impl Call {
    /// `o` ok, `f` failed, `s` slow, `F` failed and slow.
    fn code(self) -> char {
        match (self.failed, self.slow) {
            (false, false) => 'o',
            (true, false) => 'f',
            (false, true) => 's',
            (true, true) => 'F',
        }
    }

    fn from_code(c: char) -> Call {
        Call {
            failed: matches!(c, 'f' | 'F'),
            slow: matches!(c, 's' | 'F'),
        }
    }
}

/// One second of a time-based window: `[unix second, calls, failed, slow]`.
pub type Bucket = [u64; 4];

/// What the store holds for one breaker key, as JSON. An absent key is a closed breaker
/// of generation 0 with an empty window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The state.
    pub state: Phase,
    /// Bumped on every transition; a call is recorded only in the generation it was
    /// admitted in, so late outcomes never leak into a new window.
    #[serde(rename = "gen")]
    pub generation: u64,
    /// When this state began, in Unix milliseconds.
    pub since: u64,
    /// Closed with a count window: the last calls, oldest first. Half-open: the
    /// completed probes. One character per call (see [`Call`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub calls: String,
    /// Closed with a time window: the non-empty buckets still in the window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<Bucket>,
    /// Half-open: probes let through and not yet completed, as `[id, expires]`; a probe
    /// whose request must be over by `expires` (its route deadline) frees its permit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<[u64; 2]>,
    /// Half-open: the id of the next probe.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub next_probe: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Record {
    /// A fresh breaker in `state` since `now`.
    fn fresh(state: Phase, generation: u64, now: u64) -> Record {
        Record {
            state,
            generation,
            since: now,
            calls: String::new(),
            buckets: Vec::new(),
            probes: Vec::new(),
            next_probe: 0,
        }
    }

    /// The record an absent key stands for.
    pub fn absent() -> Record {
        Record::fresh(Phase::Closed, 0, 0)
    }

    /// The JSON stored in `state`.
    pub fn encode(&self) -> Vec<u8> {
        weir_filter::serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a stored record; `None` if it is not one.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        weir_filter::serde_json::from_slice(bytes).ok()
    }

    /// The move to `state`, with fresh metrics, as resilience4j does on every transition.
    fn transition(&self, state: Phase, now: u64) -> Record {
        Record::fresh(state, self.generation + 1, now)
    }
}

// === Rates ===

/// What a window holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    /// Recorded calls.
    pub calls: u64,
    /// Failed calls.
    pub failed: u64,
    /// Slow calls.
    pub slow: u64,
}

impl Tally {
    fn of_codes(codes: &str) -> Tally {
        codes
            .chars()
            .map(Call::from_code)
            .fold(Tally::default(), |mut t, c| {
                t.calls += 1;
                t.failed += u64::from(c.failed);
                t.slow += u64::from(c.slow);
                t
            })
    }

    fn of_buckets(buckets: &[Bucket]) -> Tally {
        buckets.iter().fold(Tally::default(), |t, b| Tally {
            calls: t.calls + b[1],
            failed: t.failed + b[2],
            slow: t.slow + b[3],
        })
    }

    /// Failure rate in percent (0 for an empty window).
    pub fn failure_rate(&self) -> f64 {
        percent(self.failed, self.calls)
    }

    /// Slow-call rate in percent (0 for an empty window).
    pub fn slow_rate(&self) -> f64 {
        percent(self.slow, self.calls)
    }

    /// Whether, with at least `minimum` calls, either rate reached its threshold.
    fn trips(&self, s: &Settings, minimum: u64) -> bool {
        self.calls >= minimum
            && (self.failure_rate() >= s.failure_rate_threshold
                || self.slow_rate() >= s.slow_call_rate_threshold)
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

// === Pure transitions ===

/// What a request carries from admission to completion (in the memo).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The generation the call was admitted in.
    pub generation: u64,
    /// The probe id, when admitted as a half-open probe.
    pub probe: Option<u64>,
}

/// What [`admit`] decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Let the call through, after storing `update` if there is one.
    Permit {
        /// Carried to [`complete`].
        ticket: Ticket,
        /// The new record, if admission changed it (a probe permit, a move to half-open).
        update: Option<Record>,
    },
    /// Refuse the call.
    Reject {
        /// Open or half-open.
        phase: Phase,
        /// Whole seconds until half-open (1 when half-open and out of permits).
        retry_after_s: u64,
    },
}

/// Decides whether a call may go through at `now`. `expires` is when the request is
/// over at the latest (its route deadline): a half-open probe's permit is freed then
/// even if its outcome never comes back.
pub fn admit(rec: &Record, s: &Settings, now: u64, expires: u64) -> Admission {
    match rec.state {
        Phase::Closed => Admission::Permit {
            ticket: Ticket {
                generation: rec.generation,
                probe: None,
            },
            update: None,
        },
        Phase::Open => {
            let until = rec.since.saturating_add(s.wait_in_open_ms);
            if now < until {
                return Admission::Reject {
                    phase: Phase::Open,
                    retry_after_s: (until - now).div_ceil(1000).max(1),
                };
            }
            let mut half = rec.transition(Phase::HalfOpen, now);
            take_probe(&mut half, expires)
        }
        Phase::HalfOpen => {
            let mut half = rec.clone();
            half.probes.retain(|p| p[1] > now);
            let taken = half.probes.len() + half.calls.chars().count();
            if taken < s.permitted_in_half_open as usize {
                take_probe(&mut half, expires)
            } else {
                Admission::Reject {
                    phase: Phase::HalfOpen,
                    retry_after_s: 1,
                }
            }
        }
    }
}

fn take_probe(half: &mut Record, expires: u64) -> Admission {
    let id = half.next_probe;
    half.next_probe += 1;
    half.probes.push([id, expires]);
    Admission::Permit {
        ticket: Ticket {
            generation: half.generation,
            probe: Some(id),
        },
        update: Some(half.clone()),
    }
}

/// Records `call` (admitted with `ticket`) at `now`; returns the new record, or `None`
/// when the call no longer counts: it was admitted in an earlier generation, or its
/// probe permit expired and was reused.
pub fn complete(
    rec: &Record,
    s: &Settings,
    ticket: Ticket,
    call: Call,
    now: u64,
) -> Option<Record> {
    if rec.generation != ticket.generation {
        return None;
    }
    match rec.state {
        Phase::Closed => {
            let mut next = rec.clone();
            let tally = match s.window {
                Window::Count(size) => {
                    next.calls.push(call.code());
                    let excess = next.calls.len().saturating_sub(size as usize);
                    next.calls.drain(..excess);
                    Tally::of_codes(&next.calls)
                }
                Window::Time(size) => {
                    let second = now / 1000;
                    next.buckets.retain(|b| b[0] + u64::from(size) > second);
                    match next.buckets.iter_mut().find(|b| b[0] == second) {
                        Some(b) => add(b, call),
                        None => {
                            let mut b = [second, 0, 0, 0];
                            add(&mut b, call);
                            next.buckets.push(b);
                        }
                    }
                    Tally::of_buckets(&next.buckets)
                }
            };
            if tally.trips(s, u64::from(s.minimum_calls)) {
                Some(rec.transition(Phase::Open, now))
            } else {
                Some(next)
            }
        }
        // Nothing is admitted in open, so no ticket can name an open generation.
        Phase::Open => None,
        Phase::HalfOpen => {
            let probe = ticket.probe?;
            let at = rec.probes.iter().position(|p| p[0] == probe)?;
            let mut next = rec.clone();
            next.probes.remove(at);
            next.calls.push(call.code());
            let tally = Tally::of_codes(&next.calls);
            let permitted = u64::from(s.permitted_in_half_open);
            if tally.calls < permitted {
                Some(next)
            } else if tally.trips(s, permitted) {
                Some(rec.transition(Phase::Open, now))
            } else {
                Some(rec.transition(Phase::Closed, now))
            }
        }
    }
}

fn add(bucket: &mut Bucket, call: Call) {
    bucket[1] += 1;
    bucket[2] += u64::from(call.failed);
    bucket[3] += u64::from(call.slow);
}

/// The counts a record's current window holds (for logs and tests).
pub fn tally(rec: &Record) -> Tally {
    let mut t = Tally::of_codes(&rec.calls);
    let b = Tally::of_buckets(&rec.buckets);
    t.calls += b.calls;
    t.failed += b.failed;
    t.slow += b.slow;
    t
}

// === Engine ===

/// The shared store, as the breaker uses it: `weir_filter::state` in a component, a map
/// in unit tests.
pub trait Store {
    /// The value under `key`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Stores `new` if the value is still `expected`; whether it stored.
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, String>;
}

/// A state change one call caused, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    /// The state before.
    pub from: Phase,
    /// The state after.
    pub to: Phase,
    /// The window that decided it (empty for open → half-open).
    pub tally: Tally,
}

/// What [`Engine::admit`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Admitted {
    /// Go on; carry the ticket in the memo.
    Pass {
        /// For [`Engine::complete`].
        ticket: Ticket,
        /// Set when this call moved the breaker (open → half-open).
        transition: Option<Transition>,
    },
    /// Answer 503.
    Reject {
        /// Open or half-open.
        phase: Phase,
        /// For `Retry-After`.
        retry_after_s: u64,
    },
}

/// What [`Engine::complete`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Completed {
    /// The state after this call.
    pub phase: Phase,
    /// The failure rate (percent) of the window after this call, for `/status`.
    pub failure_rate: f64,
    /// Set when this call moved the breaker.
    pub transition: Option<Transition>,
}

/// Why a store round failed; the caller fails open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreFailure {
    /// The backend answered with an error.
    Unavailable(String),
    /// Other writers won the compare-and-swap every time.
    Contended,
}

impl std::fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreFailure::Unavailable(why) => write!(f, "state unavailable: {why}"),
            StoreFailure::Contended => {
                write!(f, "state contended: {MAX_CAS_TRIES} compare-and-swaps lost")
            }
        }
    }
}

/// The state machine over a store.
#[derive(Debug, Clone)]
pub struct Engine {
    settings: Settings,
}

impl Engine {
    /// An engine with these settings.
    pub fn new(settings: Settings) -> Engine {
        Engine { settings }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The state key of breaker `key`.
    pub fn state_key(key: &str) -> String {
        format!("circuit/{key}")
    }

    /// `on-request`: may a call on breaker `key` go through at `now`?
    pub fn admit(
        &self,
        store: &impl Store,
        key: &str,
        now: u64,
        expires: u64,
    ) -> Result<Admitted, StoreFailure> {
        self.update(store, key, |rec| {
            match admit(rec, &self.settings, now, expires) {
                Admission::Permit { ticket, update } => {
                    let transition =
                        update
                            .as_ref()
                            .filter(|u| u.state != rec.state)
                            .map(|u| Transition {
                                from: rec.state,
                                to: u.state,
                                tally: tally(rec),
                            });
                    (update, Admitted::Pass { ticket, transition })
                }
                Admission::Reject {
                    phase,
                    retry_after_s,
                } => (
                    None,
                    Admitted::Reject {
                        phase,
                        retry_after_s,
                    },
                ),
            }
        })
    }

    /// `on-response`: records `call`, admitted with `ticket`, at `now`.
    pub fn complete(
        &self,
        store: &impl Store,
        key: &str,
        ticket: Ticket,
        call: Call,
        now: u64,
    ) -> Result<Completed, StoreFailure> {
        self.update(store, key, |rec| {
            let next = complete(rec, &self.settings, ticket, call, now);
            let done = match &next {
                Some(n) if n.state != rec.state || n.generation != rec.generation => {
                    // The window that decided: the old one plus this call.
                    let mut decided = tally(rec);
                    decided.calls += 1;
                    decided.failed += u64::from(call.failed);
                    decided.slow += u64::from(call.slow);
                    if let Window::Time(size) = self.settings.window {
                        let second = now / 1000;
                        let gone: Vec<Bucket> = rec
                            .buckets
                            .iter()
                            .filter(|b| b[0] + u64::from(size) <= second)
                            .copied()
                            .collect();
                        let gone = Tally::of_buckets(&gone);
                        decided.calls -= gone.calls;
                        decided.failed -= gone.failed;
                        decided.slow -= gone.slow;
                    }
                    Completed {
                        phase: n.state,
                        // The rate that moved the breaker, not the reset window's.
                        failure_rate: decided.failure_rate(),
                        transition: Some(Transition {
                            from: rec.state,
                            to: n.state,
                            tally: decided,
                        }),
                    }
                }
                Some(n) => Completed {
                    phase: n.state,
                    failure_rate: tally(n).failure_rate(),
                    transition: None,
                },
                None => Completed {
                    phase: rec.state,
                    failure_rate: tally(rec).failure_rate(),
                    transition: None,
                },
            };
            (next, done)
        })
    }

    /// Reads the record, lets `f` compute the next one, and stores it with
    /// compare-and-swap, again from the top whenever another writer came first.
    fn update<T>(
        &self,
        store: &impl Store,
        key: &str,
        f: impl Fn(&Record) -> (Option<Record>, T),
    ) -> Result<T, StoreFailure> {
        let skey = Engine::state_key(key);
        for _ in 0..MAX_CAS_TRIES {
            let raw = store.get(&skey).map_err(StoreFailure::Unavailable)?;
            // A value that is not a record (an older format, a hand edit) counts as a
            // closed breaker and is replaced by the next write.
            let rec = raw
                .as_deref()
                .and_then(Record::decode)
                .unwrap_or_else(Record::absent);
            let (next, out) = f(&rec);
            let Some(next) = next else {
                return Ok(out);
            };
            let stored = store
                .compare_and_swap(
                    &skey,
                    raw.as_deref(),
                    &next.encode(),
                    self.settings.record_ttl_ms(),
                )
                .map_err(StoreFailure::Unavailable)?;
            if stored {
                return Ok(out);
            }
        }
        Err(StoreFailure::Contended)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use super::*;
    use crate::config::Config;

    /// A map with compare-and-swap; `interfere` lets a test write between the read and
    /// the swap, as a concurrent instance would.
    #[derive(Default)]
    struct MemStore {
        map: RefCell<HashMap<String, Vec<u8>>>,
        interfere: Cell<u32>,
        down: Cell<bool>,
    }

    impl Store for MemStore {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
            if self.down.get() {
                return Err("connection refused".into());
            }
            Ok(self.map.borrow().get(key).cloned())
        }

        fn compare_and_swap(
            &self,
            key: &str,
            expected: Option<&[u8]>,
            new: &[u8],
            _ttl_ms: u64,
        ) -> Result<bool, String> {
            if self.interfere.get() > 0 {
                let n = self.interfere.get() - 1;
                self.interfere.set(n);
                let other = format!("another writer {n}").into_bytes();
                self.map.borrow_mut().insert(key.into(), other);
            }
            let mut map = self.map.borrow_mut();
            if map.get(key).map(Vec::as_slice) != expected {
                return Ok(false);
            }
            map.insert(key.into(), new.to_vec());
            Ok(true)
        }
    }

    impl MemStore {
        fn record(&self, key: &str) -> Option<Record> {
            let raw = self.map.borrow().get(&Engine::state_key(key)).cloned()?;
            Record::decode(&raw)
        }
    }

    fn engine(json: &str) -> Engine {
        let (s, _) = weir_filter::parse_config::<Config>("breaker", json)
            .unwrap()
            .validate()
            .unwrap();
        Engine::new(s)
    }

    const OK: Call = Call {
        failed: false,
        slow: false,
    };
    const FAIL: Call = Call {
        failed: true,
        slow: false,
    };
    const SLOW: Call = Call {
        failed: false,
        slow: true,
    };

    const T0: u64 = 1_700_000_000_000;
    const FAR: u64 = u64::MAX / 2;

    /// Admits and completes one call at `now`; returns the state after.
    fn call(e: &Engine, st: &MemStore, c: Call, now: u64) -> Phase {
        let Admitted::Pass { ticket, .. } = e.admit(st, "k", now, FAR).unwrap() else {
            panic!("rejected at {now}");
        };
        e.complete(st, "k", ticket, c, now).unwrap().phase
    }

    fn ticket(e: &Engine, st: &MemStore, now: u64) -> Option<Ticket> {
        match e.admit(st, "k", now, FAR).unwrap() {
            Admitted::Pass { ticket, .. } => Some(ticket),
            Admitted::Reject { .. } => None,
        }
    }

    /// Opens the breaker at `now` with window 5 and five failures.
    fn opened(e: &Engine, st: &MemStore, now: u64) {
        for _ in 0..5 {
            call(e, st, FAIL, now);
        }
        assert_eq!(st.record("k").unwrap().state, Phase::Open);
    }

    #[test]
    fn fffss_opens_at_the_fifth_call_and_not_before() {
        let e = engine(r#"{"window_size": 5}"#);
        let st = MemStore::default();
        let seq = [FAIL, FAIL, FAIL, OK, OK];
        for (i, c) in seq.into_iter().enumerate() {
            let phase = call(&e, &st, c, T0);
            let want = if i == 4 { Phase::Open } else { Phase::Closed };
            assert_eq!(phase, want, "after call {}", i + 1);
        }
        let rec = st.record("k").unwrap();
        assert_eq!((rec.generation, rec.since, rec.calls.as_str()), (1, T0, ""));
    }

    #[test]
    fn the_transition_reports_the_deciding_window() {
        let e = engine(r#"{"window_size": 5}"#);
        let st = MemStore::default();
        for c in [FAIL, FAIL, FAIL, OK] {
            call(&e, &st, c, T0);
        }
        let t = ticket(&e, &st, T0).unwrap();
        let done = e.complete(&st, "k", t, OK, T0).unwrap();
        assert_eq!(
            done.transition,
            Some(Transition {
                from: Phase::Closed,
                to: Phase::Open,
                tally: Tally {
                    calls: 5,
                    failed: 3,
                    slow: 0
                }
            })
        );
        assert_eq!(done.transition.unwrap().tally.failure_rate(), 60.0);
    }

    #[test]
    fn below_the_threshold_the_count_window_slides() {
        let e = engine(r#"{"window_size": 5}"#);
        let st = MemStore::default();
        // 40 % at every step: F F S S S, then F S S F S …
        for c in [FAIL, FAIL, OK, OK, OK, FAIL, OK, OK, FAIL, OK, OK] {
            assert_eq!(call(&e, &st, c, T0), Phase::Closed);
        }
        assert_eq!(st.record("k").unwrap().calls, "oofoo");
    }

    #[test]
    fn fewer_than_minimum_calls_never_opens() {
        let e = engine(r#"{"window_size": 10, "minimum_calls": 5}"#);
        let st = MemStore::default();
        for _ in 0..4 {
            assert_eq!(call(&e, &st, FAIL, T0), Phase::Closed);
        }
        assert_eq!(call(&e, &st, FAIL, T0), Phase::Open);
    }

    #[test]
    fn slow_successful_calls_open_by_the_slow_rate() {
        let e = engine(r#"{"window_size": 5, "slow_call_rate_threshold": 50}"#);
        let st = MemStore::default();
        for (i, c) in [SLOW, OK, SLOW, OK, SLOW].into_iter().enumerate() {
            let want = if i == 4 { Phase::Open } else { Phase::Closed };
            assert_eq!(call(&e, &st, c, T0), want);
        }
        // With the default slow threshold (100 %), the same calls do not open.
        let e = engine(r#"{"window_size": 5}"#);
        let st = MemStore::default();
        for c in [SLOW, OK, SLOW, OK, SLOW] {
            assert_eq!(call(&e, &st, c, T0), Phase::Closed);
        }
    }

    #[test]
    fn open_rejects_with_retry_after_until_the_wait_is_over() {
        let e = engine(r#"{"window_size": 5, "wait_in_open": "5s"}"#);
        let st = MemStore::default();
        opened(&e, &st, T0);
        let reject = |s| Admitted::Reject {
            phase: Phase::Open,
            retry_after_s: s,
        };
        assert_eq!(e.admit(&st, "k", T0, FAR).unwrap(), reject(5));
        assert_eq!(e.admit(&st, "k", T0 + 3000, FAR).unwrap(), reject(2));
        assert_eq!(e.admit(&st, "k", T0 + 3001, FAR).unwrap(), reject(2));
        assert_eq!(e.admit(&st, "k", T0 + 4999, FAR).unwrap(), reject(1));
        let Admitted::Pass { ticket, transition } = e.admit(&st, "k", T0 + 5000, FAR).unwrap()
        else {
            panic!("not half-open after the wait");
        };
        assert_eq!(ticket.probe, Some(0));
        assert_eq!(
            transition.map(|t| (t.from, t.to)),
            Some((Phase::Open, Phase::HalfOpen))
        );
        assert_eq!(st.record("k").unwrap().state, Phase::HalfOpen);
    }

    #[test]
    fn half_open_permits_only_so_many_concurrent_probes() {
        let e = engine(
            r#"{"window_size": 5, "wait_in_open": "1s", "permitted_calls_in_half_open": 4}"#,
        );
        let st = MemStore::default();
        opened(&e, &st, T0);
        let now = T0 + 1000;
        let tickets: Vec<Ticket> = (0..4).map(|_| ticket(&e, &st, now).unwrap()).collect();
        assert_eq!(
            e.admit(&st, "k", now, FAR).unwrap(),
            Admitted::Reject {
                phase: Phase::HalfOpen,
                retry_after_s: 1
            }
        );
        // A completed probe does not free its permit: all four decide together.
        let done = e.complete(&st, "k", tickets[0], OK, now).unwrap();
        assert_eq!(done.phase, Phase::HalfOpen);
        assert!(ticket(&e, &st, now).is_none());
        for t in &tickets[1..3] {
            assert_eq!(
                e.complete(&st, "k", *t, OK, now).unwrap().phase,
                Phase::HalfOpen
            );
        }
        let done = e.complete(&st, "k", tickets[3], FAIL, now).unwrap();
        assert_eq!(done.phase, Phase::Closed);
        // Closed again with a fresh window.
        assert_eq!(st.record("k").unwrap().calls, "");
        assert_eq!(call(&e, &st, FAIL, now), Phase::Closed);
    }

    #[test]
    fn half_open_ffsf_reopens_at_75_percent() {
        let e = engine(
            r#"{"window_size": 5, "wait_in_open": "1s", "permitted_calls_in_half_open": 4}"#,
        );
        let st = MemStore::default();
        opened(&e, &st, T0);
        let now = T0 + 1000;
        let tickets: Vec<Ticket> = (0..4).map(|_| ticket(&e, &st, now).unwrap()).collect();
        let outcomes = [FAIL, FAIL, OK, FAIL];
        let mut last = None;
        for (t, c) in tickets.into_iter().zip(outcomes) {
            last = Some(e.complete(&st, "k", t, c, now + 10).unwrap());
        }
        let last = last.unwrap();
        assert_eq!(last.phase, Phase::Open);
        assert_eq!(last.transition.unwrap().tally.failure_rate(), 75.0);
        // Open again, for a full wait from the reopening.
        assert_eq!(
            e.admit(&st, "k", now + 10, FAR).unwrap(),
            Admitted::Reject {
                phase: Phase::Open,
                retry_after_s: 1
            }
        );
        assert!(ticket(&e, &st, now + 1009).is_none());
        assert!(ticket(&e, &st, now + 1010).is_some());
    }

    #[test]
    fn a_lost_probe_frees_its_permit_at_its_deadline() {
        let e = engine(
            r#"{"window_size": 5, "wait_in_open": "1s", "permitted_calls_in_half_open": 1}"#,
        );
        let st = MemStore::default();
        opened(&e, &st, T0);
        let now = T0 + 1000;
        let Admitted::Pass { ticket: lost, .. } = e.admit(&st, "k", now, now + 500).unwrap() else {
            panic!("no probe");
        };
        assert!(ticket(&e, &st, now + 499).is_none());
        let again = ticket(&e, &st, now + 500).expect("the permit came back");
        assert_ne!(again.probe, lost.probe);
        // The lost probe's late outcome is ignored; the new one decides.
        assert_eq!(
            e.complete(&st, "k", lost, FAIL, now + 600).unwrap().phase,
            Phase::HalfOpen
        );
        assert_eq!(
            e.complete(&st, "k", again, OK, now + 600).unwrap().phase,
            Phase::Closed
        );
    }

    #[test]
    fn late_outcomes_from_an_earlier_generation_are_ignored() {
        let e = engine(r#"{"window_size": 5}"#);
        let st = MemStore::default();
        let early = ticket(&e, &st, T0).unwrap();
        opened(&e, &st, T0);
        let before = st.record("k");
        let done = e.complete(&st, "k", early, FAIL, T0).unwrap();
        assert_eq!((done.phase, done.transition), (Phase::Open, None));
        assert_eq!(st.record("k"), before);
    }

    #[test]
    fn the_time_window_drops_old_buckets() {
        let json = r#"{"window_type": "time", "window_size": 5, "minimum_calls": 4}"#;
        let e = engine(json);
        // Within the window: F F F, then F 4.999 s later → 4 of 4 failed → open.
        let st = MemStore::default();
        for c in [FAIL, FAIL, FAIL] {
            assert_eq!(call(&e, &st, c, T0), Phase::Closed);
        }
        assert_eq!(call(&e, &st, FAIL, T0 + 4999), Phase::Open);
        // With 6 s between: the first three fall out of the window.
        let st = MemStore::default();
        for c in [FAIL, FAIL, FAIL] {
            assert_eq!(call(&e, &st, c, T0), Phase::Closed);
        }
        let later = T0 + 6000;
        for c in [FAIL, OK, OK] {
            assert_eq!(call(&e, &st, c, later), Phase::Closed);
        }
        assert_eq!(
            st.record("k").unwrap().buckets,
            vec![[later / 1000, 3, 1, 0]]
        );
        assert_eq!(call(&e, &st, OK, later + 1000), Phase::Closed);
        // Buckets within the window still count: 3 of 6 failed → open.
        assert_eq!(call(&e, &st, FAIL, later + 4000), Phase::Closed);
        assert_eq!(call(&e, &st, FAIL, later + 4999), Phase::Open);
    }

    #[test]
    fn compare_and_swap_retries_when_another_writer_came_first() {
        let e = engine(r#"{"window_size": 5}"#);
        let st = MemStore::default();
        st.interfere.set(3);
        assert_eq!(call(&e, &st, FAIL, T0), Phase::Closed);
        assert_eq!(st.record("k").unwrap().calls, "f");
        st.interfere.set(1000);
        let t = ticket(&e, &st, T0).unwrap();
        assert_eq!(
            e.complete(&st, "k", t, FAIL, T0),
            Err(StoreFailure::Contended)
        );
    }

    #[test]
    fn store_errors_are_reported() {
        let e = engine("{}");
        let st = MemStore::default();
        st.down.set(true);
        assert_eq!(
            e.admit(&st, "k", T0, FAR),
            Err(StoreFailure::Unavailable("connection refused".into()))
        );
    }

    #[test]
    fn record_json_is_compact_and_round_trips() {
        let mut rec = Record::fresh(Phase::HalfOpen, 3, T0);
        rec.calls = "of".into();
        rec.probes = vec![[2, T0 + 30_000]];
        rec.next_probe = 3;
        let json = String::from_utf8(rec.encode()).unwrap();
        assert_eq!(
            json,
            r#"{"state":"half_open","gen":3,"since":1700000000000,"calls":"of","probes":[[2,1700000030000]],"next_probe":3}"#
        );
        assert_eq!(Record::decode(json.as_bytes()), Some(rec));
        assert_eq!(
            String::from_utf8(Record::absent().encode()).unwrap(),
            r#"{"state":"closed","gen":0,"since":0}"#
        );
        assert_eq!(Record::decode(b"junk"), None);
    }
}
