//! The circuit breaker's state machine, in plain Rust: time is a parameter and the store
//! is a trait, so every transition is unit-tested natively.
//!
//! A breaker keeps two kinds of state, so that the hot path never contends:
//!
//! - the **machine**, a small [`Record`] (phase, generation, since), changed with
//!   compare-and-swap only on a transition. A compare-and-swap that loses means another
//!   instance or process made the transition: the caller re-reads and goes on, never
//!   retrying in a loop;
//! - per generation, the **window** of outcomes (`state::window_add`, lanes
//!   `[calls, failed, slow]`) and in half-open the **permit counter** (`state::incr`).
//!   Recording an outcome is one atomic call that returns the window's sums.
//!
//! The window's key holds the generation, so a transition starts a fresh window, and an
//! outcome of a call admitted in an earlier generation lands in a window nobody reads.

use serde::{Deserialize, Serialize};
use weir_filter::state::{TimeWindow, Window as StateWindow};

use crate::config::{Settings, Window};

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
    /// The record a window holds for this call: `[calls, failed, slow]`.
    fn lanes(self) -> [i64; 3] {
        [1, i64::from(self.failed), i64::from(self.slow)]
    }
}

/// The machine, as JSON, under `circuit/<key>`. An absent key is a closed breaker of
/// generation 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The state.
    pub state: Phase,
    /// Bumped on every transition; it names the window and the permits, so a call is
    /// recorded only in the generation it was admitted in.
    #[serde(rename = "gen")]
    pub generation: u64,
    /// When this state began, in Unix milliseconds.
    pub since: u64,
    /// Half-open: when the probes must all have completed (the route deadline of the call
    /// that began the round); past it, a round short of outcomes starts over.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub until: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Record {
    /// A breaker in `state` since `now`.
    fn fresh(state: Phase, generation: u64, now: u64) -> Record {
        Record {
            state,
            generation,
            since: now,
            until: 0,
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

    /// The move to `state`, as resilience4j does on every transition: a new generation,
    /// so fresh metrics.
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
    /// The window's sums as `state::window_add` returns them (missing lanes are 0).
    fn of_sums(sums: &[i64]) -> Tally {
        let lane = |i: usize| sums.get(i).map_or(0, |n| u64::try_from(*n).unwrap_or(0));
        Tally {
            calls: lane(0),
            failed: lane(1),
            slow: lane(2),
        }
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

// === Engine ===

/// What a request carries from admission to completion (in the memo).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The generation the call was admitted in.
    pub generation: u64,
    /// The permit number (from 1), when admitted as a half-open probe.
    pub probe: Option<u64>,
}

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
    /// Atomically adds `delta` to the counter under `key` (created at 0 with `ttl_ms`).
    fn incr(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, String>;
    /// Atomically adds `lanes` (if any) to the window under `key` at `now_ms` and returns
    /// its sums (`state::window_add`).
    fn window_add(
        &self,
        key: &str,
        window: StateWindow,
        now_ms: u64,
        lanes: Option<&[i64]>,
        ttl_ms: u64,
    ) -> Result<Vec<i64>, String>;
}

/// A state change one call caused, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    /// The state before.
    pub from: Phase,
    /// The state after.
    pub to: Phase,
    /// The window that decided it (empty when time decided: open → half-open, or a
    /// half-open round that ran out of time).
    pub tally: Tally,
}

/// What [`Engine::admit`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Admitted {
    /// Go on; carry the ticket in the memo.
    Pass {
        /// For [`Engine::complete`].
        ticket: Ticket,
        /// Set when this call moved the breaker (into half-open).
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
    /// The state after this call, as far as this call saw it.
    pub phase: Phase,
    /// The failure rate (percent) of the window after this call, or the one that moved
    /// the breaker.
    pub failure_rate: f64,
    /// Set when this call moved the breaker.
    pub transition: Option<Transition>,
}

/// Why a store call failed; the caller fails open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreFailure {
    /// The backend answered with an error.
    Unavailable(String),
}

impl std::fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreFailure::Unavailable(why) => write!(f, "state unavailable: {why}"),
        }
    }
}

/// The state machine over a store.
#[derive(Debug, Clone)]
pub struct Engine {
    settings: Settings,
}

/// The machine as read: its raw bytes (for compare-and-swap) and what they say.
struct Read {
    raw: Option<Vec<u8>>,
    rec: Record,
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

    /// The state key of breaker `key`'s machine.
    pub fn state_key(key: &str) -> String {
        ["circuit/", key].concat()
    }

    /// The state key of breaker `key`'s window in generation `generation` (the
    /// generation first, so no key can pose as another's).
    pub fn window_key(generation: u64, key: &str) -> String {
        format!("window/{generation}/{key}")
    }

    /// The state key of breaker `key`'s half-open permit counter in `generation`.
    pub fn permits_key(generation: u64, key: &str) -> String {
        format!("permits/{generation}/{key}")
    }

    /// The window a generation in `phase` records into: the configured one when closed,
    /// the probes' outcomes when half-open.
    fn window(&self, phase: Phase) -> StateWindow {
        match (phase, self.settings.window) {
            (Phase::HalfOpen, _) => StateWindow::Count(self.settings.permitted_in_half_open),
            (_, Window::Count(size)) => StateWindow::Count(size),
            (_, Window::Time(secs)) => StateWindow::Time(TimeWindow {
                slot_ms: 1000,
                slots: secs,
            }),
        }
    }

    fn read(&self, store: &impl Store, key: &str) -> Result<Read, StoreFailure> {
        let raw = store
            .get(&Engine::state_key(key))
            .map_err(StoreFailure::Unavailable)?;
        // A value that is not a record (an older format, a hand edit) counts as a closed
        // breaker and is replaced by the next transition.
        let rec = raw
            .as_deref()
            .and_then(Record::decode)
            .unwrap_or_else(Record::absent);
        Ok(Read { raw, rec })
    }

    /// Moves the machine from `from` to `next`; `false` when another writer came first.
    fn swap(
        &self,
        store: &impl Store,
        key: &str,
        from: &Read,
        next: &Record,
    ) -> Result<bool, StoreFailure> {
        store
            .compare_and_swap(
                &Engine::state_key(key),
                from.raw.as_deref(),
                &next.encode(),
                self.settings.record_ttl_ms(),
            )
            .map_err(StoreFailure::Unavailable)
    }

    /// `on-request`: may a call on breaker `key` go through at `now`? `expires` is when
    /// the request is over at the latest (its route deadline).
    pub fn admit(
        &self,
        store: &impl Store,
        key: &str,
        now: u64,
        expires: u64,
    ) -> Result<Admitted, StoreFailure> {
        let read = self.read(store, key)?;
        match self.admit_in(store, key, &read, now, expires, true)? {
            Some(admitted) => Ok(admitted),
            // Another instance moved the breaker first: decide again on what it stored.
            None => {
                let read = self.read(store, key)?;
                let admitted = self.admit_in(store, key, &read, now, expires, false)?;
                Ok(admitted.unwrap_or(Admitted::Reject {
                    phase: read.rec.state,
                    retry_after_s: 1,
                }))
            }
        }
    }

    /// Admission on the machine as `read`; `None` when a transition it needed lost its
    /// compare-and-swap (or, without `may_move`, was needed at all).
    fn admit_in(
        &self,
        store: &impl Store,
        key: &str,
        read: &Read,
        now: u64,
        expires: u64,
        may_move: bool,
    ) -> Result<Option<Admitted>, StoreFailure> {
        let rec = &read.rec;
        let s = &self.settings;
        match rec.state {
            Phase::Closed => Ok(Some(Admitted::Pass {
                ticket: Ticket {
                    generation: rec.generation,
                    probe: None,
                },
                transition: None,
            })),
            Phase::Open => {
                let until = rec.since.saturating_add(s.wait_in_open_ms);
                if now < until {
                    return Ok(Some(Admitted::Reject {
                        phase: Phase::Open,
                        retry_after_s: (until - now).div_ceil(1000).max(1),
                    }));
                }
                self.begin_round(store, key, read, now, expires, may_move)
            }
            Phase::HalfOpen => {
                if let Some(ticket) = self.take_permit(store, key, rec.generation)? {
                    return Ok(Some(Admitted::Pass {
                        ticket,
                        transition: None,
                    }));
                }
                // Every permit is taken. Probes that never report back (their clients
                // went away) would hold them for ever: past the round's deadline, a
                // round still short of outcomes starts over.
                if now >= rec.until {
                    let window_key = Engine::window_key(rec.generation, key);
                    let sums = store
                        .window_add(
                            &window_key,
                            self.window(Phase::HalfOpen),
                            now,
                            None,
                            s.record_ttl_ms(),
                        )
                        .map_err(StoreFailure::Unavailable)?;
                    if Tally::of_sums(&sums).calls < u64::from(s.permitted_in_half_open) {
                        return self.begin_round(store, key, read, now, expires, may_move);
                    }
                }
                Ok(Some(Admitted::Reject {
                    phase: Phase::HalfOpen,
                    retry_after_s: 1,
                }))
            }
        }
    }

    /// Moves the breaker into a new half-open round, and takes its first permit.
    fn begin_round(
        &self,
        store: &impl Store,
        key: &str,
        read: &Read,
        now: u64,
        expires: u64,
        may_move: bool,
    ) -> Result<Option<Admitted>, StoreFailure> {
        if !may_move {
            return Ok(None);
        }
        let mut next = read.rec.transition(Phase::HalfOpen, now);
        next.until = expires.max(now.saturating_add(1));
        if !self.swap(store, key, read, &next)? {
            return Ok(None);
        }
        let transition = Some(Transition {
            from: read.rec.state,
            to: Phase::HalfOpen,
            tally: Tally::default(),
        });
        Ok(Some(
            match self.take_permit(store, key, next.generation)? {
                Some(ticket) => Admitted::Pass { ticket, transition },
                // Others took every permit of the new round between the swap and here.
                None => Admitted::Reject {
                    phase: Phase::HalfOpen,
                    retry_after_s: 1,
                },
            },
        ))
    }

    /// A half-open permit of `generation`, if one is left.
    fn take_permit(
        &self,
        store: &impl Store,
        key: &str,
        generation: u64,
    ) -> Result<Option<Ticket>, StoreFailure> {
        let n = store
            .incr(
                &Engine::permits_key(generation, key),
                1,
                self.settings.record_ttl_ms(),
            )
            .map_err(StoreFailure::Unavailable)?;
        let n = u64::try_from(n).unwrap_or(0);
        Ok((1..=u64::from(self.settings.permitted_in_half_open))
            .contains(&n)
            .then_some(Ticket {
                generation,
                probe: Some(n),
            }))
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
        let s = &self.settings;
        let (phase, minimum) = match ticket.probe {
            None => (Phase::Closed, u64::from(s.minimum_calls)),
            Some(_) => (Phase::HalfOpen, u64::from(s.permitted_in_half_open)),
        };
        let sums = store
            .window_add(
                &Engine::window_key(ticket.generation, key),
                self.window(phase),
                now,
                Some(&call.lanes()),
                s.record_ttl_ms(),
            )
            .map_err(StoreFailure::Unavailable)?;
        let tally = Tally::of_sums(&sums);
        let unmoved = Completed {
            phase,
            failure_rate: tally.failure_rate(),
            transition: None,
        };
        let to = match phase {
            Phase::Closed if tally.trips(s, minimum) => Phase::Open,
            Phase::HalfOpen if tally.calls >= minimum => {
                if tally.trips(s, minimum) {
                    Phase::Open
                } else {
                    Phase::Closed
                }
            }
            _ => return Ok(unmoved),
        };
        // The window calls for a transition: make it, if the machine is still in the
        // generation the call was admitted in.
        let read = self.read(store, key)?;
        if read.rec.state != phase || read.rec.generation != ticket.generation {
            return Ok(Completed {
                phase: read.rec.state,
                ..unmoved
            });
        }
        let next = read.rec.transition(to, now);
        if !self.swap(store, key, &read, &next)? {
            // Another instance made the transition.
            let now_read = self.read(store, key)?;
            return Ok(Completed {
                phase: now_read.rec.state,
                ..unmoved
            });
        }
        Ok(Completed {
            phase: to,
            failure_rate: tally.failure_rate(),
            transition: Some(Transition {
                from: phase,
                to,
                tally,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::{BTreeMap, HashMap};

    use super::*;
    use crate::config::Config;

    /// A stored value: bytes, or a window as the host keeps it.
    #[derive(Debug, Clone)]
    enum Value {
        Bytes(Vec<u8>),
        /// Count window: the records, oldest first.
        Records(Vec<Vec<i64>>),
        /// Time window: slot → sums.
        Slots(BTreeMap<u64, Vec<i64>>),
    }

    /// A map with the store's operations; `interfere` lets a test write between the
    /// read and the swap, as a concurrent instance would.
    #[derive(Default)]
    struct MemStore {
        map: RefCell<HashMap<String, Value>>,
        interfere: Cell<u32>,
        down: Cell<bool>,
        swaps: Cell<u32>,
    }

    fn add(sum: &mut Vec<i64>, record: &[i64]) {
        if sum.len() < record.len() {
            sum.resize(record.len(), 0);
        }
        for (s, r) in sum.iter_mut().zip(record) {
            *s += r;
        }
    }

    impl Store for MemStore {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
            if self.down.get() {
                return Err("connection refused".into());
            }
            Ok(match self.map.borrow().get(key) {
                Some(Value::Bytes(b)) => Some(b.clone()),
                _ => None,
            })
        }

        fn compare_and_swap(
            &self,
            key: &str,
            expected: Option<&[u8]>,
            new: &[u8],
            _ttl_ms: u64,
        ) -> Result<bool, String> {
            self.swaps.set(self.swaps.get() + 1);
            if self.interfere.get() > 0 {
                self.interfere.set(self.interfere.get() - 1);
                // Another instance makes the same transition first.
                self.map
                    .borrow_mut()
                    .insert(key.into(), Value::Bytes(new.to_vec()));
            }
            let current = self.get(key)?;
            if current.as_deref() != expected {
                return Ok(false);
            }
            self.map
                .borrow_mut()
                .insert(key.into(), Value::Bytes(new.to_vec()));
            Ok(true)
        }

        fn incr(&self, key: &str, delta: i64, _ttl_ms: u64) -> Result<i64, String> {
            let n = self
                .get(key)?
                .map_or(0, |b| String::from_utf8(b).unwrap().parse::<i64>().unwrap())
                + delta;
            let value = Value::Bytes(n.to_string().into_bytes());
            self.map.borrow_mut().insert(key.into(), value);
            Ok(n)
        }

        fn window_add(
            &self,
            key: &str,
            window: StateWindow,
            now_ms: u64,
            lanes: Option<&[i64]>,
            _ttl_ms: u64,
        ) -> Result<Vec<i64>, String> {
            if self.down.get() {
                return Err("connection refused".into());
            }
            let mut map = self.map.borrow_mut();
            let mut sums = Vec::new();
            match window {
                StateWindow::Count(n) => {
                    let mut records = match map.get(key) {
                        Some(Value::Records(r)) => r.clone(),
                        _ => Vec::new(),
                    };
                    records.extend(lanes.map(<[i64]>::to_vec));
                    let excess = records.len().saturating_sub(n as usize);
                    records.drain(..excess);
                    records.iter().for_each(|r| add(&mut sums, r));
                    if lanes.is_some() {
                        map.insert(key.into(), Value::Records(records));
                    }
                }
                StateWindow::Time(TimeWindow { slot_ms, slots }) => {
                    let now_slot = now_ms / u64::from(slot_ms);
                    let mut held = match map.get(key) {
                        Some(Value::Slots(h)) => h.clone(),
                        _ => BTreeMap::new(),
                    };
                    if let Some(lanes) = lanes {
                        add(held.entry(now_slot).or_default(), lanes);
                    }
                    held.retain(|slot, _| slot + u64::from(slots) > now_slot);
                    held.values().for_each(|r| add(&mut sums, r));
                    if lanes.is_some() {
                        map.insert(key.into(), Value::Slots(held));
                    }
                }
            }
            Ok(sums)
        }
    }

    impl MemStore {
        fn record(&self, key: &str) -> Option<Record> {
            let raw = self.get(&Engine::state_key(key)).unwrap()?;
            Record::decode(&raw)
        }

        /// The tally of `key`'s window in `generation`.
        fn tally(&self, e: &Engine, generation: u64, phase: Phase) -> Tally {
            let key = Engine::window_key(generation, "k");
            let sums = self.window_add(&key, e.window(phase), 0, None, 0).unwrap();
            Tally::of_sums(&sums)
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
        assert_eq!((rec.generation, rec.since), (1, T0));
        // Only the transition wrote the machine; the new generation's window is empty.
        assert_eq!(st.swaps.get(), 1);
        assert_eq!(st.tally(&e, 1, Phase::Closed), Tally::default());
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
        assert_eq!(done.failure_rate, 60.0);
    }

    #[test]
    fn below_the_threshold_the_count_window_slides() {
        let e = engine(r#"{"window_size": 5}"#);
        let st = MemStore::default();
        // 40 % at every step: F F S S S, then F S S F S …
        for c in [FAIL, FAIL, OK, OK, OK, FAIL, OK, OK, FAIL, OK, OK] {
            assert_eq!(call(&e, &st, c, T0), Phase::Closed);
        }
        let t = st.tally(&e, 0, Phase::Closed);
        assert_eq!((t.calls, t.failed), (5, 1));
        assert_eq!(st.record("k"), None, "no transition, no machine written");
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
        assert_eq!(ticket.probe, Some(1));
        assert_eq!(
            transition.map(|t| (t.from, t.to)),
            Some((Phase::Open, Phase::HalfOpen))
        );
        let rec = st.record("k").unwrap();
        assert_eq!(
            (rec.state, rec.generation, rec.until),
            (Phase::HalfOpen, 2, FAR)
        );
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
        let rec = st.record("k").unwrap();
        assert_eq!(
            st.tally(&e, rec.generation, Phase::Closed),
            Tally::default()
        );
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
    fn a_round_short_of_outcomes_starts_over_at_its_deadline() {
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
        let Admitted::Pass {
            ticket: again,
            transition,
        } = e.admit(&st, "k", now + 500, FAR).unwrap()
        else {
            panic!("the round did not start over");
        };
        assert_eq!(again.generation, lost.generation + 1);
        assert_eq!(
            transition.map(|t| (t.from, t.to)),
            Some((Phase::HalfOpen, Phase::HalfOpen))
        );
        // The lost probe's late outcome is ignored; the new one decides.
        assert_eq!(
            e.complete(&st, "k", lost, FAIL, now + 600)
                .unwrap()
                .transition,
            None
        );
        assert_eq!(st.record("k").unwrap().state, Phase::HalfOpen);
        assert_eq!(
            e.complete(&st, "k", again, OK, now + 600).unwrap().phase,
            Phase::Closed
        );
    }

    #[test]
    fn a_probe_of_a_round_started_over_no_longer_counts() {
        let e = engine(
            r#"{"window_size": 5, "wait_in_open": "1s", "permitted_calls_in_half_open": 2}"#,
        );
        let st = MemStore::default();
        opened(&e, &st, T0);
        let now = T0 + 1000;
        let Admitted::Pass { ticket: a, .. } = e.admit(&st, "k", now, now + 10).unwrap() else {
            panic!("no probe");
        };
        let b = ticket(&e, &st, now).unwrap();
        e.complete(&st, "k", a, OK, now).unwrap();
        // Past the deadline, one probe still out: the round starts over.
        assert!(ticket(&e, &st, now + 10).is_some());
        let late = e.complete(&st, "k", b, OK, now + 11).unwrap();
        assert_eq!((late.phase, late.transition), (Phase::HalfOpen, None));
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
        let t = st.tally(&e, 0, Phase::Closed);
        assert_eq!((t.calls, t.failed), (3, 1));
        assert_eq!(call(&e, &st, OK, later + 1000), Phase::Closed);
        // Buckets within the window still count: 3 of 6 failed → open.
        assert_eq!(call(&e, &st, FAIL, later + 4000), Phase::Closed);
        assert_eq!(call(&e, &st, FAIL, later + 4999), Phase::Open);
    }

    #[test]
    fn a_transition_lost_to_another_writer_is_not_retried() {
        let e = engine(r#"{"window_size": 5, "wait_in_open": "1s"}"#);
        let st = MemStore::default();
        for _ in 0..4 {
            call(&e, &st, FAIL, T0);
        }
        // Another instance opens the breaker between this call's read and its swap.
        st.interfere.set(1);
        let t = ticket(&e, &st, T0).unwrap();
        let done = e.complete(&st, "k", t, FAIL, T0).unwrap();
        assert_eq!((done.phase, done.transition), (Phase::Open, None));
        assert_eq!(
            st.swaps.get(),
            1,
            "one compare-and-swap, lost, and no retry"
        );
        // Likewise into half-open: the loser re-reads and takes a permit of the winner's
        // round.
        st.interfere.set(1);
        let Admitted::Pass { ticket, transition } = e.admit(&st, "k", T0 + 1000, FAR).unwrap()
        else {
            panic!("rejected");
        };
        assert_eq!(
            (ticket.generation, ticket.probe, transition),
            (2, Some(1), None)
        );
        assert_eq!(st.swaps.get(), 2);
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
        let t = Ticket {
            generation: 0,
            probe: None,
        };
        assert!(e.complete(&st, "k", t, OK, T0).is_err());
    }

    #[test]
    fn record_json_is_compact_and_round_trips() {
        let mut rec = Record::fresh(Phase::HalfOpen, 3, T0);
        rec.until = T0 + 30_000;
        let json = String::from_utf8(rec.encode()).unwrap();
        assert_eq!(
            json,
            r#"{"state":"half_open","gen":3,"since":1700000000000,"until":1700000030000}"#
        );
        assert_eq!(Record::decode(json.as_bytes()), Some(rec));
        assert_eq!(
            String::from_utf8(Record::absent().encode()).unwrap(),
            r#"{"state":"closed","gen":0,"since":0}"#
        );
        assert_eq!(Record::decode(b"junk"), None);
        assert_eq!(Engine::window_key(3, "a/b"), "window/3/a/b");
        assert_eq!(Engine::permits_key(3, "a/b"), "permits/3/a/b");
    }
}
