//! The logic of the atomic primitives ([`StateBackend::bucket_take`],
//! [`StateBackend::bucket_pause`], [`StateBackend::window_add`]), apart from any store.
//!
//! Each function takes the value found under the key (if any) and returns the answer and
//! what to write back, so a backend only has to run it atomically: the memory backend
//! under its shard lock. A [`Value`] is the text a filter stored, or a primitive's state
//! kept decoded, so that the memory backend does not parse and print a window's records
//! on every call. Either way its stored form is text, readable with `get`:
//!
//! - **Bucket:** `"<tat> <paused_until>"`, both nanoseconds since the Unix epoch (the
//!   form the limiter filter stored before the primitive existed). It is kept for
//!   `max(tat, paused_until) - now`; after that the bucket is full and unpaused, which an
//!   absent key means too, so a write that leaves it so deletes the key.
//! - **Count window:** `"n <record> <record> …"`, oldest first, at most `n` records.
//! - **Time window:** `"t <slot_ms> <slot>:<record> <slot>:<record> …"`, slots in
//!   ascending order, each holding the lane-wise sum of the records added to it. A slot is
//!   `floor(at_ns / (slot_ms × 10⁶))`.
//!
//! A record is its lanes as decimal integers joined by `,` (no lanes: the empty string).
//! A value that is not of the form an operation expects (another primitive's, or a
//! window of another kind or slot width, as after a config change) counts as absent and
//! is replaced by the next write.
//!
//! Arithmetic saturates: times near `u64::MAX` and sums near `i64::MAX` stay at the
//! bound instead of wrapping (a count window's sums are exact, then held to `i64`'s
//! range). Arguments outside the documented ranges are brought into
//! them (an interval or burst of 0 counts as 1; window sizes are clamped).
//!
//! [`StateBackend::bucket_take`]: super::StateBackend::bucket_take
//! [`StateBackend::bucket_pause`]: super::StateBackend::bucket_pause
//! [`StateBackend::window_add`]: super::StateBackend::window_add

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::{BucketPolicy, TakeOutcome, TakeResult, Window};

/// The most records a [`Window::Count`] holds.
pub const MAX_COUNT: u32 = 10_000;
/// The most slots a [`Window::Time`] sums.
pub const MAX_SLOTS: u32 = 3_600;

const NS_PER_MS: u64 = 1_000_000;

/// What an operation leaves under its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Nothing changes.
    Keep,
    /// The key is removed.
    Delete,
    /// `value` replaces the key's value, with this TTL (`None`: no expiry).
    Store {
        /// The new value.
        value: Value,
        /// How long it is kept.
        ttl: Option<Duration>,
    },
}

/// A value under a key: bytes, or a primitive's state kept decoded. Two values are
/// equal when their stored forms are.
#[derive(Debug, Clone)]
pub enum Value {
    /// What `set`, `incr` or `compare_and_swap` stored (or a primitive's text, set back).
    Bytes(Vec<u8>),
    /// A bucket.
    Bucket(Bucket),
    /// A window's records, with the length of their stored form (kept up to date as
    /// records come and go, so that charging the entry does not count every record).
    Window {
        /// The records.
        held: Held,
        /// `held.encode().len()`.
        len: usize,
    },
}

impl Value {
    /// The stored form, as `get` returns it.
    pub fn to_bytes(&self) -> Cow<'_, [u8]> {
        match self {
            Value::Bytes(b) => Cow::Borrowed(b),
            Value::Bucket(b) => Cow::Owned(b.encode()),
            Value::Window { held, .. } => Cow::Owned(held.encode()),
        }
    }

    /// The length of the stored form, counted without printing it.
    pub fn len(&self) -> usize {
        match self {
            Value::Bytes(b) => b.len(),
            Value::Bucket(b) => digits(b.tat) + 1 + digits(b.paused_until),
            Value::Window { len, .. } => *len,
        }
    }

    /// Whether the stored form is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bucket this value holds; `None` if it is not one.
    fn bucket(&self) -> Option<Bucket> {
        match self {
            Value::Bucket(b) => Some(*b),
            Value::Bytes(bytes) => Bucket::decode(bytes),
            Value::Window { .. } => None,
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        self.to_bytes() == other.to_bytes()
    }
}

impl Eq for Value {}

impl From<Vec<u8>> for Value {
    fn from(bytes: Vec<u8>) -> Value {
        Value::Bytes(bytes)
    }
}

/// How many characters `n` takes in decimal.
fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// How many characters `n` takes in decimal, its sign included.
fn signed_digits(n: i64) -> usize {
    usize::from(n < 0) + digits(n.unsigned_abs())
}

/// The most that adding `record` can lengthen a window's stored form, whatever it held
/// before (another kind of value, or nothing): a new `Time` window's `"t <slot_ms>"`
/// (at most 12 characters, `slot_ms` being a `u32`), the slot's `" <slot>:"` (at most 22)
/// and the record itself.
pub fn window_growth_bound(record: &[i64]) -> usize {
    12 + 22 + record_len(record)
}

/// The length of a record's stored form.
fn record_len(record: &[i64]) -> usize {
    let commas = record.len().saturating_sub(1);
    commas
        + record
            .iter()
            .map(|&lane| signed_digits(lane))
            .sum::<usize>()
}

// === Buckets ===

/// A GCRA bucket as stored: its theoretical arrival time and the end of its pause, in
/// nanoseconds since the Unix epoch. The default (both 0) is a full, unpaused bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    /// When the bucket is full again, less the burst.
    pub tat: u64,
    /// Until when every take is refused (0: not paused).
    pub paused_until: u64,
}

impl Bucket {
    /// The stored form: `"<tat> <paused_until>"`.
    pub fn encode(&self) -> Vec<u8> {
        format!("{} {}", self.tat, self.paused_until).into_bytes()
    }

    /// Reads the stored form; `None` if it is not one.
    pub fn decode(bytes: &[u8]) -> Option<Bucket> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (tat, paused) = text.split_once(' ')?;
        Some(Bucket {
            tat: tat.parse().ok()?,
            paused_until: paused.parse().ok()?,
        })
    }

    /// What storing this bucket at `now_ns` takes: the value, kept until the bucket is
    /// full and unpaused, or deleting the key if it already is.
    fn write(&self, now_ns: u64) -> Write {
        let ttl = self.tat.max(self.paused_until).saturating_sub(now_ns);
        if ttl == 0 {
            return Write::Delete;
        }
        Write::Store {
            value: Value::Bucket(*self),
            ttl: Some(Duration::from_nanos(ttl)),
        }
    }
}

/// Takes one token at `now_ns` from the bucket stored as `stored` (`None`: absent).
pub fn bucket_take(
    policy: &BucketPolicy,
    stored: Option<&Value>,
    now_ns: u64,
) -> (TakeResult, Write) {
    let b = stored.and_then(Value::bucket).unwrap_or_default();
    let refuse = |outcome, wait_ns| {
        let result = TakeResult {
            outcome,
            tat_ns: b.tat,
            paused_until_ns: b.paused_until,
            wait_ns,
        };
        (result, Write::Keep)
    };
    if b.paused_until > now_ns {
        return refuse(TakeOutcome::Paused, b.paused_until - now_ns);
    }
    let interval = policy.interval_ns.max(1);
    let capacity = policy.burst.max(1).saturating_mul(interval);
    let new_tat = b.tat.max(now_ns).saturating_add(interval);
    let ahead = new_tat - now_ns;
    let take = |outcome, wait_ns| {
        let bucket = Bucket { tat: new_tat, ..b };
        let result = TakeResult {
            outcome,
            tat_ns: new_tat,
            paused_until_ns: b.paused_until,
            wait_ns,
        };
        (result, bucket.write(now_ns))
    };
    if ahead <= capacity {
        return take(TakeOutcome::Admitted, 0);
    }
    // The token this request would take comes when `tat` is back within capacity.
    let wait = ahead - capacity;
    if policy.max_wait_ns == 0 {
        return refuse(TakeOutcome::Empty, wait);
    }
    // Each waiting request holds one interval of `tat` beyond capacity.
    if wait.div_ceil(interval) > policy.max_queue {
        return refuse(TakeOutcome::QueueFull, wait);
    }
    if wait > policy.max_wait_ns {
        return refuse(TakeOutcome::TooLong, wait);
    }
    take(TakeOutcome::Reserved, wait)
}

/// Pauses the bucket stored as `stored` until `until_ns`, keeping a longer pause.
pub fn bucket_pause(stored: Option<&Value>, until_ns: u64, now_ns: u64) -> Write {
    let b = stored.and_then(Value::bucket).unwrap_or_default();
    let paused = Bucket {
        paused_until: b.paused_until.max(until_ns),
        ..b
    };
    paused.write(now_ns)
}

// === Windows ===

/// A window's records as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// A [`Window::Count`]'s records, oldest first.
    Count(Records),
    /// A [`Window::Time`]'s slots.
    Time {
        /// The width of one slot.
        slot_ms: u32,
        /// Slot → the sum of its records.
        slots: BTreeMap<u64, Vec<i64>>,
    },
}

impl Held {
    /// The length of [`Held::encode`]'s text, counted without printing it.
    fn encoded_len(&self) -> usize {
        match self {
            Held::Count(records) => 1 + records.iter().map(|r| 1 + record_len(r)).sum::<usize>(),
            Held::Time { slot_ms, slots } => {
                let records = slots
                    .iter()
                    .map(|(slot, r)| 2 + digits(*slot) + record_len(r));
                2 + digits(u64::from(*slot_ms)) + records.sum::<usize>()
            }
        }
    }

    /// The stored form: `"n <record> …"` or `"t <slot_ms> <slot>:<record> …"`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::new();
        match self {
            Held::Count(records) => {
                out.push('n');
                for record in records.iter() {
                    out.push(' ');
                    push_record(&mut out, record);
                }
            }
            Held::Time { slot_ms, slots } => {
                out.push_str(&format!("t {slot_ms}"));
                for (slot, record) in slots {
                    out.push_str(&format!(" {slot}:"));
                    push_record(&mut out, record);
                }
            }
        }
        out.into_bytes()
    }

    /// Reads the stored form; `None` if it is not one.
    pub fn decode(bytes: &[u8]) -> Option<Held> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(' ');
        match parts.next()? {
            "n" => parts
                .try_fold(Records::default(), |mut records, part| {
                    records.push(parse_record(part)?);
                    Some(records)
                })
                .map(Held::Count),
            "t" => {
                let slot_ms = parts.next()?.parse().ok()?;
                let slots = parts
                    .map(|part| {
                        let (slot, record) = part.split_once(':')?;
                        Some((slot.parse().ok()?, parse_record(record)?))
                    })
                    .collect::<Option<_>>()?;
                Some(Held::Time { slot_ms, slots })
            }
            _ => None,
        }
    }
}

fn push_record(out: &mut String, record: &[i64]) {
    for (i, lane) in record.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&lane.to_string());
    }
}

fn parse_record(text: &str) -> Option<Vec<i64>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',').map(|lane| lane.parse().ok()).collect()
}

/// Adds `record` lane by lane into `sum`, which grows to the longer of the two.
fn add_lanes(sum: &mut Vec<i64>, record: &[i64]) {
    if sum.len() < record.len() {
        sum.resize(record.len(), 0);
    }
    for (s, r) in sum.iter_mut().zip(record) {
        *s = s.saturating_add(*r);
    }
}

/// `window` with its sizes brought into the documented ranges.
fn clamped(window: Window) -> Window {
    match window {
        Window::Count(n) => Window::Count(n.clamp(1, MAX_COUNT)),
        Window::Time { slot_ms, slots } => Window::Time {
            slot_ms: slot_ms.max(1),
            slots: slots.clamp(1, MAX_SLOTS),
        },
    }
}

/// The slot of a [`Window::Time`] of `slot_ms` that `at_ns` falls in.
fn slot_of(at_ns: u64, slot_ms: u32) -> u64 {
    at_ns / (u64::from(slot_ms) * NS_PER_MS)
}

/// Adds `record` (if any) to the window stored as `stored`, and returns the sums per lane
/// with what to write back. `ttl` is the caller's; a `Time` window is kept at least as
/// long as it spans.
///
/// A write takes the records out of `stored` rather than copying them (the `Write` holds
/// them now), so a caller that may not carry the write out passes a copy.
///
/// A `Time` record whose slot is already out of the window is not added; one from a slot
/// after `now_ns`'s (a clock ahead of this one) counts in `now_ns`'s slot, so the window
/// never holds more than `slots` slots.
pub fn window_add(
    stored: Option<&mut Value>,
    window: Window,
    at_ns: u64,
    now_ns: u64,
    record: Option<&[i64]>,
    ttl: Option<Duration>,
) -> (Vec<i64>, Write) {
    let window = clamped(window);
    let Some(record) = record else {
        let held = match stored.as_deref() {
            Some(Value::Window { held, .. }) => Some(Cow::Borrowed(held)),
            Some(Value::Bytes(bytes)) => Held::decode(bytes).map(Cow::Owned),
            _ => None,
        };
        return (window_sums(held.as_deref(), window, now_ns), Write::Keep);
    };
    let held = match stored {
        Some(Value::Window { held, len }) => Some((
            std::mem::replace(held, Held::Count(Records::default())),
            *len,
        )),
        Some(Value::Bytes(bytes)) => Held::decode(bytes).map(|held| {
            let len = held.encoded_len();
            (held, len)
        }),
        _ => None,
    };
    let mut sums = Vec::new();
    let (held, len) = match window {
        Window::Count(n) => {
            // "n", then " <record>" for each record.
            let (mut records, mut len) = match held {
                Some((Held::Count(records), len)) => (records, len),
                _ => (Records::default(), 1),
            };
            records.push(record.to_vec());
            len += 1 + record_len(record);
            while records.len() > n as usize {
                if let Some(gone) = records.pop_front() {
                    len -= 1 + record_len(&gone);
                }
            }
            sums = records.sums();
            (Held::Count(records), len)
        }
        Window::Time { slot_ms, slots: n } => {
            let now_slot = slot_of(now_ns, slot_ms);
            let mut slots = match held {
                Some((
                    Held::Time {
                        slot_ms: held_ms,
                        slots,
                    },
                    _,
                )) if held_ms == slot_ms => slots,
                _ => BTreeMap::new(),
            };
            let slot = slot_of(at_ns, slot_ms).min(now_slot);
            if in_window(slot, now_slot, n) {
                add_lanes(slots.entry(slot).or_default(), record);
            }
            slots.retain(|slot, _| in_window(*slot, now_slot, n));
            for slot_sum in slots.values() {
                add_lanes(&mut sums, slot_sum);
            }
            if slots.is_empty() {
                return (sums, Write::Delete);
            }
            // A time window holds few slots (at most `slots`): its length is counted anew.
            let held = Held::Time { slot_ms, slots };
            let len = held.encoded_len();
            (held, len)
        }
    };
    let ttl = match (window, ttl) {
        (Window::Time { slot_ms, slots }, Some(ttl)) => {
            let span = Duration::from_millis(u64::from(slot_ms) * u64::from(slots));
            Some(ttl.max(span))
        }
        (_, ttl) => ttl,
    };
    let value = Value::Window { held, len };
    (sums, Write::Store { value, ttl })
}

/// A count window's records, oldest first, with their running sums per lane, so that
/// adding a record costs its own lanes rather than a pass over the whole window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    held: VecDeque<Vec<i64>>,
    /// The exact sums per lane of the records held: a window of at most [`MAX_COUNT`]
    /// records cannot overflow an `i128`, so taking a record out is exact too.
    sums: Vec<i128>,
    /// `lanes[i]`: how many records held have lane `i`. The sums have as many lanes as
    /// the longest record held.
    lanes: Vec<u32>,
}

impl Records {
    /// Adds `record` as the newest.
    pub fn push(&mut self, record: Vec<i64>) {
        add_exact(&mut self.sums, &record);
        if self.lanes.len() < record.len() {
            self.lanes.resize(record.len(), 0);
        }
        for held in &mut self.lanes[..record.len()] {
            *held += 1;
        }
        self.held.push_back(record);
    }

    /// Takes out the oldest record.
    pub fn pop_front(&mut self) -> Option<Vec<i64>> {
        let record = self.held.pop_front()?;
        for (i, &lane) in record.iter().enumerate() {
            self.sums[i] -= i128::from(lane);
            self.lanes[i] -= 1;
        }
        let longest = self.lanes.iter().rposition(|&n| n > 0).map_or(0, |i| i + 1);
        self.sums.truncate(longest);
        self.lanes.truncate(longest);
        Some(record)
    }

    /// The sums per lane, each held to `i64`'s range.
    pub fn sums(&self) -> Vec<i64> {
        self.sums.iter().copied().map(held_to_i64).collect()
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The records, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Vec<i64>> {
        self.held.iter()
    }
}

/// Adds `record` to the exact sums per lane `sums`, lengthening them to its lanes.
fn add_exact(sums: &mut Vec<i128>, record: &[i64]) {
    if sums.len() < record.len() {
        sums.resize(record.len(), 0);
    }
    for (s, &lane) in sums.iter_mut().zip(record) {
        *s += i128::from(lane);
    }
}

/// An exact sum held to `i64`'s range.
fn held_to_i64(sum: i128) -> i64 {
    sum.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// The sums per lane of the window `held` (`None`: absent), read at `now_ns` through
/// `window` (clamped): the newest records of a `Count`, the slots in range of a `Time`.
/// A window of another kind or slot width counts as empty.
fn window_sums(held: Option<&Held>, window: Window, now_ns: u64) -> Vec<i64> {
    let mut sums = Vec::new();
    match (window, held) {
        (Window::Count(n), Some(Held::Count(records))) => {
            let excess = records.len().saturating_sub(n as usize);
            if excess == 0 {
                return records.sums();
            }
            // Read through a shorter window than the one written: sum its part, exactly
            // as the running sums are.
            let mut exact = Vec::new();
            for kept in records.iter().skip(excess) {
                add_exact(&mut exact, kept);
            }
            return exact.into_iter().map(held_to_i64).collect();
        }
        (
            Window::Time { slot_ms, slots: n },
            Some(Held::Time {
                slot_ms: held_ms,
                slots,
            }),
        ) if *held_ms == slot_ms => {
            let now_slot = slot_of(now_ns, slot_ms);
            for (_, slot_sum) in slots.iter().filter(|(s, _)| in_window(**s, now_slot, n)) {
                add_lanes(&mut sums, slot_sum);
            }
        }
        _ => {}
    }
    sums
}

/// Whether `slot` is one of the `n` slots that end with `now_slot`.
fn in_window(slot: u64, now_slot: u64, n: u32) -> bool {
    slot <= now_slot && slot + u64::from(n) > now_slot
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const MS: u64 = NS_PER_MS;
    /// Some wall-clock time, so that nothing depends on starting at 0.
    const T0: u64 = 1_700_000_000 * S + 123_456_789;

    /// A value as a filter's `set` leaves it.
    fn text_value(text: &str) -> Value {
        Value::Bytes(text.as_bytes().to_vec())
    }

    /// `rate` per second with `burst`, no queue.
    fn policy(rate: u64, burst: u64) -> BucketPolicy {
        BucketPolicy {
            interval_ns: S / rate,
            burst,
            max_wait_ns: 0,
            max_queue: 0,
        }
    }

    /// Applies a take to `value` as a backend would, and returns the result.
    fn take(p: &BucketPolicy, value: &mut Option<Value>, now: u64) -> TakeResult {
        let (result, write) = bucket_take(p, value.as_ref(), now);
        apply(value, write);
        result
    }

    fn apply(value: &mut Option<Value>, write: Write) {
        match write {
            Write::Keep => {}
            Write::Delete => *value = None,
            Write::Store { value: v, .. } => *value = Some(v),
        }
    }

    fn stored(value: &Option<Value>) -> Option<Bucket> {
        value
            .as_ref()
            .map(|v| Bucket::decode(&v.to_bytes()).expect("a bucket"))
    }

    #[test]
    fn bucket_encode_decode() {
        let b = Bucket {
            tat: T0,
            paused_until: 7,
        };
        assert_eq!(Bucket::decode(&b.encode()), Some(b));
        assert_eq!(b.encode(), format!("{T0} 7").into_bytes());
        for bad in [&b""[..], b"1", b"1 x", b"x 1", b"1 2 3", b"-1 0", b"\xff 1"] {
            assert_eq!(Bucket::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_full_bucket_admits_burst_then_refuses_until_the_next_token() {
        let p = policy(20, 10);
        let mut v = None;
        for i in 1..=10 {
            let r = take(&p, &mut v, T0);
            assert_eq!(r.outcome, TakeOutcome::Admitted);
            assert_eq!(r.wait_ns, 0);
            assert_eq!(r.tat_ns, T0 + i * 50 * MS);
            assert_eq!(r.paused_until_ns, 0);
        }
        let before = v.clone();
        let r = take(&p, &mut v, T0);
        assert_eq!(
            r,
            TakeResult {
                outcome: TakeOutcome::Empty,
                tat_ns: T0 + 500 * MS,
                paused_until_ns: 0,
                wait_ns: 50 * MS,
            }
        );
        assert_eq!(v, before, "a refusal writes nothing");
        // The next token is 50 ms away: not at 49.999 ms, exactly at 50 ms.
        let r = take(&p, &mut v, T0 + 50 * MS - 1);
        assert_eq!((r.outcome, r.wait_ns), (TakeOutcome::Empty, 1));
        assert_eq!(
            take(&p, &mut v, T0 + 50 * MS).outcome,
            TakeOutcome::Admitted
        );
        assert_eq!(take(&p, &mut v, T0 + 50 * MS).outcome, TakeOutcome::Empty);
    }

    #[test]
    fn the_stored_bucket_lives_until_it_is_full_again() {
        let p = policy(10, 5);
        let (r, write) = bucket_take(&p, None, T0);
        assert_eq!(r.outcome, TakeOutcome::Admitted);
        assert_eq!(
            write,
            Write::Store {
                value: format!("{} 0", T0 + 100 * MS).into_bytes().into(),
                ttl: Some(Duration::from_millis(100)),
            }
        );
        // A refusal reports the stored bucket as it is.
        let stored = format!("{} 0", T0 + S);
        let (r, write) = bucket_take(&policy(1, 1), Some(&text_value(&stored)), T0);
        assert_eq!(
            (r.outcome, r.tat_ns, r.wait_ns),
            (TakeOutcome::Empty, T0 + S, S)
        );
        assert_eq!(write, Write::Keep);
    }

    #[test]
    fn an_idle_bucket_refills_to_burst_and_no_further() {
        let p = policy(10, 3);
        let mut v = None;
        for _ in 0..3 {
            assert_eq!(take(&p, &mut v, T0).outcome, TakeOutcome::Admitted);
        }
        let later = T0 + 60 * S;
        let got = (0..10)
            .filter(|_| take(&p, &mut v, later).outcome == TakeOutcome::Admitted)
            .count();
        assert_eq!(got, 3);
    }

    #[test]
    fn the_long_run_rate_is_rate_plus_burst() {
        let p = policy(20, 10);
        let mut v = None;
        let admitted = (0..6000)
            .filter(|i| take(&p, &mut v, T0 + i * 10 * MS).outcome == TakeOutcome::Admitted)
            .count();
        assert_eq!(admitted, 10 + 1199);
    }

    #[test]
    fn a_queue_reserves_the_next_tokens_in_order() {
        let p = BucketPolicy {
            max_wait_ns: 10 * S,
            max_queue: 100,
            ..policy(5, 1)
        };
        let mut v = None;
        assert_eq!(take(&p, &mut v, T0).outcome, TakeOutcome::Admitted);
        for k in 1..=3u64 {
            let r = take(&p, &mut v, T0);
            assert_eq!(r.outcome, TakeOutcome::Reserved);
            assert_eq!(r.wait_ns, k * 200 * MS);
            assert_eq!(r.tat_ns, T0 + (k + 1) * 200 * MS);
        }
        let r = take(&p, &mut v, T0 + 450 * MS);
        assert_eq!((r.outcome, r.wait_ns), (TakeOutcome::Reserved, 350 * MS));
    }

    #[test]
    fn a_queue_is_bounded_by_max_queue_and_max_wait_without_taking_tokens() {
        let p = BucketPolicy {
            max_wait_ns: 10 * S,
            max_queue: 3,
            ..policy(1, 1)
        };
        let mut v = None;
        assert_eq!(take(&p, &mut v, T0).outcome, TakeOutcome::Admitted);
        for _ in 0..3 {
            assert_eq!(take(&p, &mut v, T0).outcome, TakeOutcome::Reserved);
        }
        let before = v.clone();
        let r = take(&p, &mut v, T0);
        assert_eq!((r.outcome, r.wait_ns), (TakeOutcome::QueueFull, 4 * S));
        assert_eq!(v, before, "a refused request takes nothing");
        let r = take(&p, &mut v, T0 + S);
        assert_eq!((r.outcome, r.wait_ns), (TakeOutcome::Reserved, 3 * S));

        let short = BucketPolicy {
            max_wait_ns: 1500 * MS,
            max_queue: 100,
            ..policy(1, 1)
        };
        let mut v = None;
        assert_eq!(take(&short, &mut v, T0).outcome, TakeOutcome::Admitted);
        assert_eq!(take(&short, &mut v, T0).outcome, TakeOutcome::Reserved);
        let r = take(&short, &mut v, T0);
        assert_eq!((r.outcome, r.wait_ns), (TakeOutcome::TooLong, 2 * S));
        // Exactly max_wait away is still reserved.
        let exact = BucketPolicy {
            max_wait_ns: S,
            ..short
        };
        let mut v = None;
        take(&exact, &mut v, T0);
        assert_eq!(take(&exact, &mut v, T0).outcome, TakeOutcome::Reserved);
    }

    #[test]
    fn a_pause_refuses_until_it_ends_and_keeps_the_tokens() {
        let p = policy(10, 10);
        let mut v = None;
        assert_eq!(take(&p, &mut v, T0).outcome, TakeOutcome::Admitted);
        let paused = bucket_pause(v.as_ref(), T0 + 2 * S, T0);
        apply(&mut v, paused);
        assert_eq!(
            stored(&v),
            Some(Bucket {
                tat: T0 + 100 * MS,
                paused_until: T0 + 2 * S
            })
        );
        let r = take(&p, &mut v, T0 + 500 * MS);
        assert_eq!(
            r,
            TakeResult {
                outcome: TakeOutcome::Paused,
                tat_ns: T0 + 100 * MS,
                paused_until_ns: T0 + 2 * S,
                wait_ns: 1500 * MS,
            }
        );
        // A shorter pause never cuts a longer one short, and keeps the key as long.
        let write = bucket_pause(v.as_ref(), T0 + S, T0);
        assert_eq!(
            write,
            Write::Store {
                value: format!("{} {}", T0 + 100 * MS, T0 + 2 * S)
                    .into_bytes()
                    .into(),
                ttl: Some(Duration::from_secs(2)),
            }
        );
        let r = take(&p, &mut v, T0 + 2 * S);
        assert_eq!(r.outcome, TakeOutcome::Admitted);
        assert_eq!(r.paused_until_ns, T0 + 2 * S);
        assert_eq!(take(&p, &mut v, T0 + 2 * S).tat_ns, T0 + 2200 * MS);
    }

    #[test]
    fn a_pause_already_over_on_a_full_bucket_deletes_the_key() {
        assert_eq!(bucket_pause(None, T0, T0), Write::Delete);
        assert_eq!(bucket_pause(None, T0 - 1, T0), Write::Delete);
        let full = format!("{} {}", T0 - S, T0 - S);
        assert_eq!(
            bucket_pause(Some(&text_value(&full)), T0, T0),
            Write::Delete
        );
        assert!(matches!(
            bucket_pause(None, T0 + 1, T0),
            Write::Store { ttl: Some(t), .. } if t == Duration::from_nanos(1)
        ));
    }

    #[test]
    fn a_value_that_is_not_a_bucket_counts_as_a_full_one() {
        let p = policy(1, 1);
        let (r, write) = bucket_take(&p, Some(&text_value("n 1,2")), T0);
        assert_eq!(r.outcome, TakeOutcome::Admitted);
        assert!(
            matches!(write, Write::Store { value, .. } if value == text_value(&format!("{} 0", T0 + S)))
        );
    }

    #[test]
    fn zero_interval_and_burst_count_as_one() {
        let p = BucketPolicy {
            interval_ns: 0,
            burst: 0,
            max_wait_ns: 0,
            max_queue: 0,
        };
        let mut v = None;
        let r = take(&p, &mut v, T0);
        assert_eq!((r.outcome, r.tat_ns), (TakeOutcome::Admitted, T0 + 1));
        let r = take(&p, &mut v, T0);
        assert_eq!((r.outcome, r.wait_ns), (TakeOutcome::Empty, 1));
    }

    #[test]
    fn bucket_arithmetic_saturates_near_the_end_of_time() {
        // Capacity overflows u64: every request is admitted, tat stays at the bound.
        let huge = BucketPolicy {
            interval_ns: u64::MAX / 2,
            burst: 3,
            max_wait_ns: 0,
            max_queue: 0,
        };
        let mut v = None;
        for _ in 0..4 {
            let r = take(&huge, &mut v, T0);
            assert_eq!(r.outcome, TakeOutcome::Admitted);
            assert!(r.tat_ns >= T0);
        }
        assert_eq!(stored(&v).unwrap().tat, u64::MAX);

        // now near 1.8e19 (the largest u64): tat saturates, and the wait never underflows.
        let p = policy(1, 2);
        let end = u64::MAX - S / 2;
        let mut v = None;
        let r = take(&p, &mut v, end);
        assert_eq!((r.outcome, r.tat_ns), (TakeOutcome::Admitted, u64::MAX));
        for _ in 0..3 {
            let r = take(&p, &mut v, end);
            assert!(matches!(
                r.outcome,
                TakeOutcome::Admitted | TakeOutcome::Empty
            ));
            assert!(r.wait_ns <= u64::MAX - end);
        }

        // Times around 1.8e18 ns (year 2027) are ordinary values.
        let t = 1_800_000_000_000_000_000;
        let queued = BucketPolicy {
            max_wait_ns: u64::MAX,
            max_queue: u64::MAX,
            ..policy(1, 1)
        };
        let mut v = None;
        assert_eq!(take(&queued, &mut v, t).outcome, TakeOutcome::Admitted);
        let r = take(&queued, &mut v, t);
        assert_eq!(
            (r.outcome, r.wait_ns, r.tat_ns),
            (TakeOutcome::Reserved, S, t + 2 * S)
        );
        // A pause until the end of time, and a take under it.
        let paused = bucket_pause(v.as_ref(), u64::MAX, t);
        apply(&mut v, paused);
        let r = take(&queued, &mut v, t);
        assert_eq!((r.outcome, r.wait_ns), (TakeOutcome::Paused, u64::MAX - t));
        assert!(matches!(
            bucket_pause(v.as_ref(), 0, t),
            Write::Store { ttl: Some(ttl), .. } if ttl == Duration::from_nanos(u64::MAX - t)
        ));
    }

    // --- windows ---

    fn add(
        value: &mut Option<Value>,
        window: Window,
        at: u64,
        now: u64,
        record: Option<&[i64]>,
    ) -> Vec<i64> {
        let (sums, write) = window_add(value.as_mut(), window, at, now, record, None);
        apply(value, write);
        sums
    }

    fn text(value: &Option<Value>) -> String {
        String::from_utf8(value.as_ref().unwrap().to_bytes().into_owned()).unwrap()
    }

    #[test]
    fn a_count_window_keeps_the_last_n_records() {
        let w = Window::Count(3);
        let mut v = None;
        assert_eq!(add(&mut v, w, 0, 0, None), Vec::<i64>::new());
        assert_eq!(v, None, "a read writes nothing");
        assert_eq!(add(&mut v, w, 0, 0, Some(&[1, 0, 0])), [1, 0, 0]);
        assert_eq!(add(&mut v, w, 0, 0, Some(&[1, 1, 0])), [2, 1, 0]);
        assert_eq!(add(&mut v, w, 0, 0, Some(&[1, 1, 1])), [3, 2, 1]);
        assert_eq!(text(&v), "n 1,0,0 1,1,0 1,1,1");
        assert_eq!(add(&mut v, w, 0, 0, Some(&[1, 0, 0])), [3, 2, 1]);
        assert_eq!(text(&v), "n 1,1,0 1,1,1 1,0,0");
        assert_eq!(add(&mut v, w, 0, 0, None), [3, 2, 1]);
        // A smaller window reads (and then keeps) the newest records only.
        assert_eq!(add(&mut v, Window::Count(2), 0, 0, None), [2, 1, 1]);
        assert_eq!(text(&v), "n 1,1,0 1,1,1 1,0,0");
        assert_eq!(
            add(&mut v, Window::Count(2), 0, 0, Some(&[0, 0, 0])),
            [1, 0, 0]
        );
        assert_eq!(text(&v), "n 1,0,0 0,0,0");
    }

    #[test]
    fn running_sums_match_a_fresh_sum_of_the_records_held() {
        // Records of 0 to 3 lanes from a fixed pseudo-random sequence, through a window
        // of 5: after every add, the running sums are what summing the records gives.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut records = Records::default();
        for _ in 0..500 {
            let lanes = (next() % 4) as usize;
            let record: Vec<i64> = (0..lanes).map(|_| (next() % 2001) as i64 - 1000).collect();
            records.push(record);
            while records.len() > 5 {
                records.pop_front();
            }
            let mut fresh = Vec::new();
            for r in records.iter() {
                add_lanes(&mut fresh, r);
            }
            assert_eq!(records.sums(), fresh);
        }
    }

    #[test]
    fn running_sums_are_exact_and_held_to_the_i64_range() {
        let mut records = Records::default();
        records.push(vec![i64::MAX, i64::MIN]);
        records.push(vec![i64::MAX, i64::MIN]);
        assert_eq!(records.sums(), [i64::MAX, i64::MIN]);
        // Taking a record out leaves the exact rest, not a value stuck at the bound.
        records.push(vec![-1, 1]);
        records.pop_front();
        assert_eq!(records.sums(), [i64::MAX - 1, i64::MIN + 1]);
        // Read through a shorter window, the newest two are summed exactly too.
        records.push(vec![i64::MAX, 0]);
        let held = Held::Count(records.clone());
        assert_eq!(
            window_sums(Some(&held), Window::Count(2), 0),
            [i64::MAX - 1, 1]
        );
        records.pop_front();
        records.pop_front();
        records.pop_front();
        assert!(records.is_empty());
        assert_eq!(records.sums(), Vec::<i64>::new());
    }

    #[test]
    fn sums_have_as_many_lanes_as_the_longest_record_held() {
        let w = Window::Count(2);
        let mut v = None;
        assert_eq!(add(&mut v, w, 0, 0, Some(&[5])), [5]);
        assert_eq!(add(&mut v, w, 0, 0, Some(&[1, 2, 3])), [6, 2, 3]);
        assert_eq!(add(&mut v, w, 0, 0, Some(&[])), [1, 2, 3]);
        assert_eq!(text(&v), "n 1,2,3 ");
        // The long record leaves: so do its lanes.
        assert_eq!(add(&mut v, w, 0, 0, Some(&[-4])), [-4]);
        assert_eq!(text(&v), "n  -4");
    }

    #[test]
    fn a_time_window_sums_the_slots_up_to_now() {
        // 10 slots of 1 s.
        let w = Window::Time {
            slot_ms: 1000,
            slots: 10,
        };
        let base = 1_800_000_000 * S;
        let slot0 = base / S;
        let mut v = None;
        assert_eq!(add(&mut v, w, base, base, Some(&[1, 0])), [1, 0]);
        assert_eq!(
            add(&mut v, w, base + 999 * MS, base + 999 * MS, Some(&[1, 1])),
            [2, 1]
        );
        assert_eq!(text(&v), format!("t 1000 {slot0}:2,1"));
        assert_eq!(
            add(&mut v, w, base + 3 * S, base + 3 * S, Some(&[1, 0])),
            [3, 1]
        );
        assert_eq!(text(&v), format!("t 1000 {slot0}:2,1 {}:1,0", slot0 + 3));
        // The first slot is summed up to 9.999… s after it began, not at 10 s.
        assert_eq!(add(&mut v, w, 0, base + 10 * S - 1, None), [3, 1]);
        assert_eq!(add(&mut v, w, 0, base + 10 * S, None), [1, 0]);
        // A record from an earlier slot still in the window goes to that slot…
        let now = base + 10 * S;
        assert_eq!(add(&mut v, w, base + 5 * S, now, Some(&[0, 7])), [1, 7]);
        assert_eq!(
            text(&v),
            format!("t 1000 {}:1,0 {}:0,7", slot0 + 3, slot0 + 5)
        );
        // …one from a slot already out of it is not added, one from the future counts now.
        assert_eq!(add(&mut v, w, base, now, Some(&[100, 100])), [1, 7]);
        assert_eq!(add(&mut v, w, now + 60 * S, now, Some(&[0, 1])), [1, 8]);
        assert_eq!(
            text(&v),
            format!(
                "t 1000 {}:1,0 {}:0,7 {}:0,1",
                slot0 + 3,
                slot0 + 5,
                slot0 + 10
            )
        );
        // Long after, a write of a late record leaves an empty window: the key goes.
        let late = now + 3600 * S;
        assert_eq!(add(&mut v, w, now, late, Some(&[1, 1])), Vec::<i64>::new());
        assert_eq!(v, None);
    }

    #[test]
    fn a_time_window_is_kept_at_least_as_long_as_it_spans() {
        let w = Window::Time {
            slot_ms: 500,
            slots: 20,
        };
        let ttl = |asked| match window_add(None, w, T0, T0, Some(&[1]), asked).1 {
            Write::Store { ttl, .. } => ttl,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            ttl(Some(Duration::from_secs(1))),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            ttl(Some(Duration::from_secs(60))),
            Some(Duration::from_secs(60))
        );
        assert_eq!(ttl(None), None);
        let counted = window_add(
            None,
            Window::Count(5),
            0,
            0,
            Some(&[1]),
            Some(Duration::from_secs(1)),
        );
        assert!(
            matches!(counted.1, Write::Store { ttl: Some(t), .. } if t == Duration::from_secs(1))
        );
    }

    #[test]
    fn a_window_of_another_shape_counts_as_empty() {
        let time = Window::Time {
            slot_ms: 1000,
            slots: 5,
        };
        let mut v = None;
        add(&mut v, time, T0, T0, Some(&[3]));
        // Another slot width, another kind, or not a window at all.
        let other = Window::Time {
            slot_ms: 100,
            slots: 50,
        };
        assert_eq!(add(&mut v.clone(), other, T0, T0, None), Vec::<i64>::new());
        assert_eq!(
            add(&mut v.clone(), Window::Count(5), 0, 0, None),
            Vec::<i64>::new()
        );
        assert_eq!(add(&mut v, Window::Count(5), 0, 0, Some(&[1])), [1]);
        assert_eq!(text(&v), "n 1");
        for bad in [
            &b"x"[..],
            b"n 1,a",
            b"t",
            b"t x 1:1",
            b"t 10 1",
            b"123 0",
            b"\xff",
        ] {
            assert_eq!(Held::decode(bad), None, "{bad:?}");
            let mut v = Some(Value::Bytes(bad.to_vec()));
            assert_eq!(add(&mut v, Window::Count(2), 0, 0, Some(&[2])), [2]);
        }
    }

    #[test]
    fn window_sizes_are_clamped() {
        let mut v = None;
        // Count(0) holds one record; Count above the maximum holds the maximum.
        add(&mut v, Window::Count(0), 0, 0, Some(&[1]));
        assert_eq!(add(&mut v, Window::Count(0), 0, 0, Some(&[2])), [2]);
        let mut v = None;
        for _ in 0..MAX_COUNT + 5 {
            add(&mut v, Window::Count(u32::MAX), 0, 0, Some(&[1]));
        }
        assert_eq!(
            add(&mut v, Window::Count(u32::MAX), 0, 0, None),
            [i64::from(MAX_COUNT)]
        );
        // A slot width of 0 counts as 1 ms; more slots than the maximum sum the maximum.
        let w = Window::Time {
            slot_ms: 0,
            slots: u32::MAX,
        };
        let mut v = None;
        add(&mut v, w, 0, 0, Some(&[1]));
        assert_eq!(
            add(&mut v, w, 0, (u64::from(MAX_SLOTS) - 1) * MS, None),
            [1]
        );
        assert_eq!(
            add(&mut v, w, 0, u64::from(MAX_SLOTS) * MS, None),
            Vec::<i64>::new()
        );
    }

    #[test]
    fn window_sums_saturate() {
        let w = Window::Count(4);
        let mut v = None;
        add(&mut v, w, 0, 0, Some(&[i64::MAX, i64::MIN]));
        assert_eq!(add(&mut v, w, 0, 0, Some(&[1, -1])), [i64::MAX, i64::MIN]);
        assert_eq!(text(&v), format!("n {},{} 1,-1", i64::MAX, i64::MIN));
        // Saturation is in the sum only: the records are kept as given.
        add(&mut v, w, 0, 0, Some(&[0, 0]));
        add(&mut v, w, 0, 0, Some(&[0, 0]));
        assert_eq!(add(&mut v, w, 0, 0, Some(&[-1, 1])), [0, 0]);

        // A time slot's own sum saturates too, and so do times near the end of u64.
        let t = Window::Time {
            slot_ms: u32::MAX,
            slots: MAX_SLOTS,
        };
        let end = u64::MAX;
        let mut v = None;
        add(&mut v, t, end, end, Some(&[i64::MAX]));
        assert_eq!(add(&mut v, t, end, end, Some(&[i64::MAX])), [i64::MAX]);
        assert_eq!(add(&mut v, t, 0, end, None), [i64::MAX]);
        let slot = end / (u64::from(u32::MAX) * MS);
        assert_eq!(text(&v), format!("t {} {slot}:{}", u32::MAX, i64::MAX));
    }

    #[test]
    fn a_value_kept_decoded_has_the_stored_form_and_length_of_its_text() {
        let mut values = vec![
            Value::Bucket(Bucket::default()),
            Value::Bucket(Bucket {
                tat: u64::MAX,
                paused_until: 9,
            }),
        ];
        let count = Window::Count(4);
        let time = Window::Time {
            slot_ms: 250,
            slots: 8,
        };
        let mut v = None;
        // Twice round: the second adds push the first out of the window.
        let records = [&[][..], &[0], &[-1, 10, i64::MIN], &[i64::MAX, 99, 100]];
        for record in records.iter().chain(&records).chain(&records[..1]) {
            add(&mut v, count, 0, 0, Some(record));
            values.push(v.clone().unwrap());
        }
        let mut v = None;
        for (k, record) in [&[7][..], &[-70, 0], &[]].iter().enumerate() {
            let at = T0 + k as u64 * 300 * MS;
            add(&mut v, time, at, at, Some(record));
            values.push(v.clone().unwrap());
        }
        for value in values {
            let text = value.to_bytes().into_owned();
            assert_eq!(value.len(), text.len(), "{value:?}");
            let decoded = match &value {
                Value::Bucket(_) => Value::Bucket(Bucket::decode(&text).expect("a bucket")),
                Value::Window { held, .. } => {
                    assert_eq!(Held::decode(&text).as_ref(), Some(held));
                    Value::Window {
                        held: held.clone(),
                        len: text.len(),
                    }
                }
                Value::Bytes(_) => unreachable!("only decoded values here"),
            };
            assert_eq!(decoded, Value::Bytes(text));
        }
    }

    #[test]
    fn no_add_lengthens_a_value_past_the_growth_bound() {
        let time = Window::Time {
            slot_ms: u32::MAX,
            slots: MAX_SLOTS,
        };
        let records: [&[i64]; 3] = [&[], &[i64::MIN], &[i64::MIN, i64::MAX, -1]];
        for record in records {
            let before = [
                None,
                Some(text_value("x")),
                Some(text_value("n 1,2")),
                Some(text_value("t 1 5:1")),
            ];
            for (window, at) in [(Window::Count(10), 0), (time, u64::MAX)] {
                for old in before.clone() {
                    let old_len = old.as_ref().map_or(0, Value::len);
                    let mut v = old;
                    add(&mut v, window, at, at, Some(record));
                    let grew = v.as_ref().map_or(0, Value::len).saturating_sub(old_len);
                    assert!(grew <= window_growth_bound(record), "{window:?} {record:?}");
                }
            }
        }
    }

    #[test]
    fn a_window_set_as_text_reads_and_grows_as_the_decoded_one() {
        let w = Window::Count(3);
        let mut text = Some(text_value("n 1,2 3,4"));
        assert_eq!(add(&mut text, w, 0, 0, None), [4, 6]);
        assert!(
            matches!(text, Some(Value::Bytes(_))),
            "a read leaves the text"
        );
        assert_eq!(add(&mut text, w, 0, 0, Some(&[5, 6])), [9, 12]);
        assert!(matches!(text, Some(Value::Window { .. })));
        assert_eq!(self::text(&text), "n 1,2 3,4 5,6");
    }
}
