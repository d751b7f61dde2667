//! The state value codecs ([`weir::state::prims`]: a bucket's `"<tat> <paused_until>"`,
//! a window's `"n …"` and `"t …"`) and the memory backend that stores them, driven the
//! way guests drive `weir:filter/state`: any key may hold any bytes a guest `set`, and a
//! primitive must take whatever it finds.
//!
//! Properties:
//! - a bucket and a window survive encode then decode, and what decodes from any bytes
//!   encodes to something that decodes the same;
//! - on any stored bytes, `bucket_take`, `bucket_pause` and `window_add` neither panic
//!   nor overflow, a read changes nothing, what they store decodes as their own form,
//!   a count window keeps at most its `n` records and a time window only its slots, and
//!   the sums a `window_add` returns are what a read of what it stored returns;
//! - the memory backend answers every operation as a plain map with deadlines does
//!   (get, set, delete, incr, compare-and-swap and the primitives, while its virtual
//!   clock moves), and refuses a key over its limit.
#![no_main]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use weir::clock::VirtualClock;
use weir::state::prims::{self, Bucket, Held, Records, Write};
use weir::state::{BucketPolicy, MemoryBackend, StateBackend, StateError, TakeOutcome, Window};

/// Some wall-clock time in nanoseconds, so times near it are the usual case.
const EPOCH_NS: u64 = 1_700_000_000_000_000_000;

/// A value a guest may store: any bytes, or one of the primitives' own forms.
#[derive(Debug)]
struct Value(Vec<u8>);

impl<'a> Arbitrary<'a> for Value {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Value> {
        Ok(Value(match u.int_in_range(0..=3)? {
            0 => u.arbitrary()?,
            1 => u.arbitrary::<i64>()?.to_string().into_bytes(),
            2 => Bucket {
                tat: time(u)?,
                paused_until: time(u)?,
            }
            .encode(),
            _ => held(u)?.encode(),
        }))
    }
}

/// A time: mostly near [`EPOCH_NS`], sometimes anywhere.
fn time(u: &mut Unstructured<'_>) -> arbitrary::Result<u64> {
    Ok(if u.ratio(7, 8)? {
        EPOCH_NS.wrapping_add(u64::from(u.arbitrary::<u32>()?) * 1_000)
    } else {
        u.arbitrary()?
    })
}

fn record(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<i64>> {
    let mut lanes = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        lanes.push(if u.ratio(1, 8)? {
            *u.choose(&[i64::MAX, i64::MIN, -1])?
        } else {
            i64::from(u.arbitrary::<i8>()?)
        });
    }
    Ok(lanes)
}

fn held(u: &mut Unstructured<'_>) -> arbitrary::Result<Held> {
    let n = u.int_in_range(0..=8)?;
    Ok(if u.arbitrary()? {
        let mut records = Records::default();
        for _ in 0..n {
            records.push(record(u)?);
        }
        Held::Count(records)
    } else {
        let slot_ms = u.arbitrary()?;
        let mut slots = BTreeMap::new();
        for _ in 0..n {
            let slot = match slot_ms {
                0 => u.arbitrary()?,
                ms => (time(u)? / (u64::from(ms) * 1_000_000))
                    .saturating_sub(u64::from(u.arbitrary::<u8>()?)),
            };
            slots.insert(slot, record(u)?);
        }
        Held::Time { slot_ms, slots }
    })
}

fn window(u: &mut Unstructured<'_>) -> arbitrary::Result<Window> {
    Ok(if u.arbitrary()? {
        Window::Count(u.int_in_range(0..=12)?)
    } else {
        Window::Time {
            slot_ms: *u.choose(&[0, 1, 10, 1000, u32::MAX])?,
            slots: u.int_in_range(0..=8)?,
        }
    })
}

#[derive(Debug)]
enum Op {
    Get(String),
    Set(String, Value, Option<u64>),
    Delete(String),
    Incr(String, i64, Option<u64>),
    Cas(String, Option<Value>, Value, Option<u64>),
    Take(String, BucketPolicy, u64),
    Pause(String, u64, u64),
    Window {
        key: String,
        window: Window,
        at: u64,
        now: u64,
        record: Option<Vec<i64>>,
        ttl_ms: Option<u64>,
    },
    /// Moves the backend's clock on, by milliseconds.
    Advance(u16),
}

/// One of a few keys, or one longer than the backend takes.
fn key(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    Ok(match u.int_in_range(0..=8)? {
        8 => format!("f/{}", "k".repeat(MemoryBackend::MAX_KEY_BYTES)),
        k => format!("f/k{}", k % 4),
    })
}

fn ttl_ms(u: &mut Unstructured<'_>) -> arbitrary::Result<Option<u64>> {
    Ok(match u.int_in_range(0..=3)? {
        0 => None,
        1 => Some(0),
        2 => Some(u64::from(u.arbitrary::<u16>()?)),
        _ => Some(u.arbitrary()?),
    })
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Op> {
        Ok(match u.int_in_range(0..=8)? {
            0 => Op::Get(key(u)?),
            1 => Op::Set(key(u)?, u.arbitrary()?, ttl_ms(u)?),
            2 => Op::Delete(key(u)?),
            3 => Op::Incr(key(u)?, u.arbitrary()?, ttl_ms(u)?),
            4 => Op::Cas(key(u)?, u.arbitrary()?, u.arbitrary()?, ttl_ms(u)?),
            5 => {
                let small = |u: &mut Unstructured<'_>| -> arbitrary::Result<u64> {
                    Ok(if u.ratio(1, 8)? {
                        u.arbitrary()?
                    } else {
                        u64::from(u.arbitrary::<u16>()?)
                    })
                };
                let policy = BucketPolicy {
                    interval_ns: small(u)?.saturating_mul(1_000),
                    burst: small(u)?,
                    max_wait_ns: small(u)?.saturating_mul(1_000),
                    max_queue: small(u)?,
                };
                Op::Take(key(u)?, policy, time(u)?)
            }
            6 => Op::Pause(key(u)?, time(u)?, time(u)?),
            7 => Op::Window {
                key: key(u)?,
                window: window(u)?,
                at: time(u)?,
                now: time(u)?,
                record: if u.arbitrary()? {
                    Some(record(u)?)
                } else {
                    None
                },
                ttl_ms: ttl_ms(u)?,
            },
            _ => Op::Advance(u.arbitrary()?),
        })
    }
}

#[derive(Debug)]
struct Input {
    held: Held,
    bytes: Vec<u8>,
    ops: Vec<Op>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Input> {
        let held = held(u)?;
        let bytes = u.arbitrary()?;
        let mut ops = Vec::new();
        for _ in 0..u.int_in_range(0..=32)? {
            ops.push(u.arbitrary()?);
        }
        Ok(Input { held, bytes, ops })
    }
}

fuzz_target!(|input: Input| {
    codecs(&input.held, &input.bytes);
    let mut model = Model::default();
    let clock = VirtualClock::new();
    let backend = MemoryBackend::with_clock(1 << 30, clock.clone());
    for op in input.ops {
        step(&backend, &clock, &mut model, op);
    }
});

// === The codecs ===

fn codecs(held: &Held, bytes: &[u8]) {
    assert_eq!(Held::decode(&held.encode()).as_ref(), Some(held));
    if let Some(h) = Held::decode(bytes) {
        assert_eq!(Held::decode(&h.encode()), Some(h), "{bytes:?}");
    }
    if let Some(b) = Bucket::decode(bytes) {
        assert_eq!(Bucket::decode(&b.encode()), Some(b), "{bytes:?}");
    }
}

/// Checks a primitive's answer on `stored`, and what it writes back.
fn check_window(
    stored: Option<&[u8]>,
    window: Window,
    now: u64,
    record: Option<&[i64]>,
    sums: &[i64],
    write: &Write,
) {
    match (record, write) {
        (None, Write::Keep) => {}
        (None, w) => panic!("a read wrote {w:?}"),
        (Some(_), Write::Keep) => panic!("an add kept the old value"),
        (Some(_), Write::Delete) => assert!(sums.is_empty(), "{sums:?} from nothing"),
        (Some(_), Write::Store { value, .. }) => {
            let text = value.to_bytes();
            assert_eq!(value.len(), text.len(), "the charged length is the text's");
            let held = Held::decode(&text).expect("a window stores a window");
            match (held, window) {
                (Held::Count(records), Window::Count(n)) => {
                    assert!(records.len() <= n.clamp(1, prims::MAX_COUNT) as usize);
                }
                (Held::Time { slots, .. }, Window::Time { slots: n, .. }) => {
                    assert!(!slots.is_empty());
                    assert!(slots.len() <= n.clamp(1, prims::MAX_SLOTS) as usize);
                }
                (h, w) => panic!("{w:?} stored {h:?}"),
            }
            // What it stored reads back as the sums it answered.
            let mut value = value.clone();
            let (again, w) = prims::window_add(Some(&mut value), window, now, now, None, None);
            assert_eq!(again, sums, "{stored:?} then {record:?}");
            assert_eq!(w, Write::Keep);
        }
    }
}

// === The backend against a model ===

/// A map with deadlines: what the memory backend must behave as (its budget is never
/// reached here).
#[derive(Default)]
struct Model {
    entries: HashMap<String, (Vec<u8>, Option<Duration>)>,
}

impl Model {
    fn live(&mut self, key: &str, now: Duration) -> Option<&[u8]> {
        if let Some((_, Some(at))) = self.entries.get(key)
            && *at <= now
        {
            self.entries.remove(key);
        }
        self.entries.get(key).map(|(v, _)| v.as_slice())
    }

    fn write(&mut self, key: &str, write: Write, now: Duration) {
        match write {
            Write::Keep => {}
            Write::Delete => {
                self.entries.remove(key);
            }
            Write::Store { value, ttl } => {
                let text = value.to_bytes().into_owned();
                self.entries
                    .insert(key.to_owned(), (text, ttl.map(|t| now + t)));
            }
        }
    }
}

/// Polls a backend future once: the memory backend never waits.
fn ready<T>(f: impl Future<Output = T>) -> T {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the memory backend waited"),
    }
}

fn step(backend: &Arc<MemoryBackend>, clock: &VirtualClock, model: &mut Model, op: Op) {
    let now = clock.elapsed();
    let ttl = |ms: Option<u64>| ms.map(Duration::from_millis);
    let too_long = |key: &str| key.len() > MemoryBackend::MAX_KEY_BYTES;
    match op {
        Op::Advance(ms) => clock.advance(Duration::from_millis(u64::from(ms))),
        Op::Get(key) => {
            let got = ready(backend.get(&key));
            if too_long(&key) {
                assert_eq!(got, Err(StateError::TooLarge));
                return;
            }
            assert_eq!(
                got,
                Ok(model.live(&key, now).map(<[u8]>::to_vec)),
                "get {key}"
            );
        }
        Op::Set(key, value, ttl_ms) => {
            let got = ready(backend.set(&key, value.0.clone(), ttl(ttl_ms)));
            if too_long(&key) {
                assert_eq!(got, Err(StateError::TooLarge));
                return;
            }
            assert_eq!(got, Ok(()));
            let ttl = ttl(ttl_ms);
            model.write(
                &key,
                Write::Store {
                    value: prims::Value::Bytes(value.0),
                    ttl,
                },
                now,
            );
        }
        Op::Delete(key) => {
            let got = ready(backend.delete(&key));
            if too_long(&key) {
                assert_eq!(got, Err(StateError::TooLarge));
                return;
            }
            assert_eq!(got, Ok(()));
            model.entries.remove(&key);
        }
        Op::Incr(key, delta, ttl_ms) => {
            let got = ready(backend.incr(&key, delta, ttl(ttl_ms)));
            if too_long(&key) {
                assert_eq!(got, Err(StateError::TooLarge));
                return;
            }
            let old = match model.live(&key, now).map(<[u8]>::to_vec) {
                None => Some((0, ttl(ttl_ms).map(|t| now + t))),
                Some(v) => {
                    let n = std::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok());
                    n.map(|n| (n, model.entries[&key].1))
                }
            };
            let Some((new, expires)) = old.and_then(|(n, e)| Some((n.checked_add(delta)?, e)))
            else {
                assert_eq!(got, Err(StateError::NotAnInteger), "incr {key} by {delta}");
                return;
            };
            assert_eq!(got, Ok(new), "incr {key} by {delta}");
            model
                .entries
                .insert(key, (new.to_string().into_bytes(), expires));
        }
        Op::Cas(key, expected, new, ttl_ms) => {
            let expected = expected.map(|v| v.0);
            let got = ready(backend.compare_and_swap(
                &key,
                expected.as_deref(),
                new.0.clone(),
                ttl(ttl_ms),
            ));
            if too_long(&key) {
                assert_eq!(got, Err(StateError::TooLarge));
                return;
            }
            let swap = model.live(&key, now) == expected.as_deref();
            assert_eq!(got, Ok(swap), "cas {key}");
            if swap {
                let ttl = ttl(ttl_ms);
                model.write(
                    &key,
                    Write::Store {
                        value: prims::Value::Bytes(new.0),
                        ttl,
                    },
                    now,
                );
            }
        }
        Op::Take(key, policy, now_ns) => {
            let got = ready(backend.bucket_take(&key, policy, now_ns));
            if too_long(&key) {
                assert_eq!(got, Err(StateError::TooLarge));
                return;
            }
            let stored = model.live(&key, now).map(<[u8]>::to_vec);
            let text = stored.clone().map(prims::Value::Bytes);
            let (result, write) = prims::bucket_take(&policy, text.as_ref(), now_ns);
            assert_eq!(got, Ok(result), "take {key} from {stored:?}");
            match result.outcome {
                TakeOutcome::Admitted => assert_eq!(result.wait_ns, 0),
                TakeOutcome::Reserved => assert!(result.wait_ns <= policy.max_wait_ns),
                TakeOutcome::Paused => assert!(result.paused_until_ns > now_ns),
                _ => assert_eq!(write, Write::Keep, "a refusal wrote"),
            }
            if let Write::Store { value, .. } = &write {
                let b = Bucket::decode(&value.to_bytes()).expect("a bucket stores a bucket");
                assert_eq!(b.tat, result.tat_ns);
                assert_eq!(value.len(), value.to_bytes().len());
            }
            model.write(&key, write, now);
        }
        Op::Pause(key, until_ns, now_ns) => {
            let got = ready(backend.bucket_pause(&key, until_ns, now_ns));
            if too_long(&key) {
                assert_eq!(got, Err(StateError::TooLarge));
                return;
            }
            assert_eq!(got, Ok(()));
            let stored = model.live(&key, now).map(<[u8]>::to_vec);
            let text = stored.map(prims::Value::Bytes);
            let write = prims::bucket_pause(text.as_ref(), until_ns, now_ns);
            if let Write::Store { value, .. } = &write {
                let b = Bucket::decode(&value.to_bytes()).expect("a bucket stores a bucket");
                assert!(b.paused_until >= until_ns);
            }
            model.write(&key, write, now);
        }
        Op::Window {
            key,
            window,
            at,
            now: now_ns,
            record,
            ttl_ms,
        } => {
            let got =
                ready(backend.window_add(&key, window, at, now_ns, record.as_deref(), ttl(ttl_ms)));
            if too_long(&key) {
                assert_eq!(got, Err(StateError::TooLarge));
                return;
            }
            let stored = model.live(&key, now).map(<[u8]>::to_vec);
            let mut text = stored.clone().map(prims::Value::Bytes);
            let (sums, write) = prims::window_add(
                text.as_mut(),
                window,
                at,
                now_ns,
                record.as_deref(),
                ttl(ttl_ms),
            );
            assert_eq!(got.as_ref(), Ok(&sums), "window {key} on {stored:?}");
            check_window(
                stored.as_deref(),
                window,
                now_ns,
                record.as_deref(),
                &sums,
                &write,
            );
            model.write(&key, write, now);
        }
    }
}
