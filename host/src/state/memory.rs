//! The embedded `memory` backend: filter state kept in this process, bounded in size.
//!
//! It is the default backend. State is lost when the process exits and is not shared
//! between `weir` processes; use it for one proxy, or where losing breaker windows and
//! token buckets on restart is acceptable.
//!
//! # Bounds
//!
//! - **Keys** longer than [`MemoryBackend::MAX_KEY_BYTES`] are refused with
//!   [`StateError::TooLarge`], by every operation.
//! - **Memory.** Each entry is charged `key.len() + value.len() +`
//!   [`MemoryBackend::ENTRY_OVERHEAD`], the overhead standing for the map and index
//!   bookkeeping. The charges never add up to more than the `max_bytes` given to
//!   [`MemoryBackend::new`], expired entries not yet swept included.
//! - **Entries.** One entry may be charged at most [`MemoryBackend::max_entry_bytes`];
//!   a larger one is refused with [`StateError::TooLarge`] and leaves any old value in
//!   place.
//!
//! # Sharding
//!
//! Keys are spread by hash over up to 16 shards, each behind its own `std::sync::Mutex`,
//! so tasks touching different keys rarely wait for each other. Every operation runs
//! synchronously under one shard's lock, which is never held across an `.await`; that is
//! also what makes `incr`, `compare_and_swap` and the primitives (`bucket_take`,
//! `bucket_pause`, `window_add`) atomic. The budget is split evenly
//! between the shards, and a shard is given at least 4 MiB (a budget under 8 MiB gets a
//! single shard), so the largest entry is `max_bytes / shards`: at least 4 MiB, or the
//! whole budget when it is smaller than that.
//!
//! # Eviction
//!
//! When an entry does not fit in its shard, the shard first drops its expired entries,
//! then its least-recently-used ones, until it fits. Reads and writes (including `incr`
//! and a `compare_and_swap` that did not store) count as use. Each shard keeps its
//! recency order in a `BTreeMap` from a use counter to the key, and its deadlines in a
//! second `BTreeMap`, beside the `HashMap` of entries, so every operation and every
//! eviction is O(log n). The LRU order is per shard: with several shards, the entry
//! evicted is the oldest of its shard, not necessarily of the whole backend.
//!
//! # Primitives
//!
//! Buckets and windows are ordinary entries, charged and evicted like any other value
//! and readable with `get` as the text forms that [`super::prims`] describes (a bucket:
//! `"<tat> <paused_until>"`). The entry keeps them decoded ([`prims::Value`]), so a call
//! changes the bucket or the window's records in place under the lock, and the text is
//! printed only for `get`; it is charged the length of that text all the same. A window
//! still costs time in proportion to the records (`Count`) or slots (`Time`) it holds,
//! which are summed (and their text length counted) on every call.
//!
//! # Expiry
//!
//! Deadlines use [`tokio::time::Instant`], so tests can run on paused time. An expired
//! entry is never returned: reads check the deadline, and drop the entry they find
//! expired. The rest are dropped by [`MemoryBackend::sweep`], which
//! [`MemoryBackend::spawn_sweeper`] runs periodically; until then they still count in
//! [`MemoryBackend::len`] and [`MemoryBackend::used_bytes`].

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::prims::{self, Value, Write};
use super::{BoxFuture, BucketPolicy, StateBackend, StateError, TakeResult, Window};
use crate::clock::VirtualClock;

/// The most shards a backend is split into.
const MAX_SHARDS: usize = 16;
/// The smallest budget worth a shard of its own: smaller shards would refuse ordinary
/// cache entries as too large.
const MIN_SHARD_BYTES: u64 = 4 * 1024 * 1024;
/// How many expired entries a sweep drops before releasing a shard's lock, so a burst of
/// expiries does not stall requests waiting on that shard.
const SWEEP_BATCH: usize = 1024;

// === impl MemoryBackend ===

/// The in-process state backend, bounded in memory.
///
/// Every entry is charged `key.len() + value.len() +` [`Self::ENTRY_OVERHEAD`], and the
/// charges never exceed the `max_bytes` given to [`Self::new`]: an entry that does not fit
/// first evicts expired entries, then the least recently used (reads and writes both
/// count as use). Keys are spread over up to 16 shards, each with its own lock, LRU order
/// and an even share of the budget, so one entry may be charged at most
/// [`Self::max_entry_bytes`]. Expired entries are never returned, and are dropped by
/// [`Self::sweep`], which [`Self::spawn_sweeper`] runs periodically.
pub struct MemoryBackend {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    max_bytes: u64,
    /// Time for TTLs: tokio's clock, or a virtual one under the filter harness.
    clock: Option<VirtualClock>,
}

impl MemoryBackend {
    /// The bytes charged to each entry on top of its key and value.
    pub const ENTRY_OVERHEAD: u64 = 64;
    /// The longest key accepted, in bytes (the filter's namespace prefix included).
    pub const MAX_KEY_BYTES: usize = 1024;

    /// A backend whose entries are charged at most `max_bytes` in total.
    pub fn new(max_bytes: u64) -> Arc<MemoryBackend> {
        let fit = usize::try_from(max_bytes / MIN_SHARD_BYTES).unwrap_or(usize::MAX);
        let shards = fit.clamp(1, MAX_SHARDS);
        // A power of two, so the shard is picked with a mask.
        let shards = 1 << shards.ilog2();
        Arc::new(Self::with_shards(max_bytes, shards))
    }

    /// A backend whose TTLs follow `clock` instead of real time (for the filter harness).
    pub fn with_clock(max_bytes: u64, clock: VirtualClock) -> Arc<MemoryBackend> {
        let mut backend = Arc::into_inner(Self::new(max_bytes)).expect("just made");
        backend.clock = Some(clock);
        Arc::new(backend)
    }

    fn now(&self) -> Instant {
        match &self.clock {
            Some(c) => c.instant(),
            None => Instant::now(),
        }
    }

    /// A backend split into exactly `shards` shards (a power of two).
    fn with_shards(max_bytes: u64, shards: usize) -> MemoryBackend {
        debug_assert!(shards.is_power_of_two());
        let budget = max_bytes / shards as u64;
        MemoryBackend {
            shards: (0..shards)
                .map(|_| Mutex::new(Shard::new(budget)))
                .collect(),
            hasher: RandomState::new(),
            max_bytes,
            clock: None,
        }
    }

    /// The most bytes one entry may be charged (`key.len() + value.len() +`
    /// [`Self::ENTRY_OVERHEAD`]): the budget of one shard.
    pub fn max_entry_bytes(&self) -> u64 {
        self.max_bytes / self.shards.len() as u64
    }

    /// The number of entries held, counting expired entries not yet swept.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Whether no entries are held (expired entries not yet swept count as held).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes charged for the entries held, counting expired entries not yet swept.
    /// Never more than the `max_bytes` given to [`Self::new`].
    pub fn used_bytes(&self) -> u64 {
        self.shards.iter().map(|s| lock(s).used).sum()
    }

    /// Drops every expired entry now, and returns how many it dropped.
    pub fn sweep(&self) -> usize {
        let now = self.now();
        let mut removed = 0;
        for shard in &self.shards {
            loop {
                let dropped = lock(shard).drop_expired(now, SWEEP_BATCH);
                removed += dropped;
                if dropped < SWEEP_BATCH {
                    break;
                }
            }
        }
        removed
    }

    /// Spawns a task that calls [`Self::sweep`] every `every` (at least 1 ms).
    ///
    /// The task holds only a weak reference, so it ends at its next tick after the last
    /// `Arc` of the backend is dropped. Must be called within a tokio runtime.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) -> JoinHandle<()> {
        let backend = Arc::downgrade(self);
        let every = every.max(Duration::from_millis(1));
        tokio::spawn(sweep_every(backend, every))
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        // The mask keeps the value below `shards.len()`, so the cast cannot truncate.
        let index = (self.hasher.hash_one(key) & (self.shards.len() as u64 - 1)) as usize;
        lock(&self.shards[index])
    }

    fn get_now(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        check_key(key)?;
        let now = self.now();
        let mut shard = self.shard(key);
        Ok(shard
            .live(key, now)
            .map(|e| e.value.to_bytes().into_owned()))
    }

    fn set_now(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), StateError> {
        check_key(key)?;
        let now = self.now();
        self.shard(key)
            .store(key, Value::Bytes(value), deadline(now, ttl), now)
    }

    fn delete_now(&self, key: &str) -> Result<(), StateError> {
        check_key(key)?;
        self.shard(key).remove(key);
        Ok(())
    }

    fn incr_now(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, StateError> {
        check_key(key)?;
        let now = self.now();
        let mut shard = self.shard(key);
        let (old, expires) = match shard.live(key, now) {
            Some(entry) => (parse_integer(&entry.value.to_bytes())?, entry.expires),
            None => (0, deadline(now, ttl)),
        };
        let new = old.checked_add(delta).ok_or(StateError::NotAnInteger)?;
        shard.store(
            key,
            Value::Bytes(new.to_string().into_bytes()),
            expires,
            now,
        )?;
        Ok(new)
    }

    fn compare_and_swap_now(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, StateError> {
        check_key(key)?;
        // Refuse an oversized value whatever the comparison, so the answer does not
        // depend on what another filter instance stored meanwhile.
        let new = Value::Bytes(new);
        let mut shard = self.shard(key);
        shard.check_fits(key, &new)?;
        let now = self.now();
        let current = shard.live(key, now).map(|e| e.value.to_bytes());
        if current.as_deref() != expected {
            return Ok(false);
        }
        shard.store(key, new, deadline(now, ttl), now)?;
        Ok(true)
    }

    fn bucket_take_now(
        &self,
        key: &str,
        policy: BucketPolicy,
        now_ns: u64,
    ) -> Result<TakeResult, StateError> {
        check_key(key)?;
        let now = self.now();
        let mut shard = self.shard(key);
        let stored = shard.live(key, now).map(|e| &e.value);
        let (result, write) = prims::bucket_take(&policy, stored, now_ns);
        shard.write(key, write, now)?;
        Ok(result)
    }

    fn bucket_pause_now(&self, key: &str, until_ns: u64, now_ns: u64) -> Result<(), StateError> {
        check_key(key)?;
        let now = self.now();
        let mut shard = self.shard(key);
        let stored = shard.live(key, now).map(|e| &e.value);
        let write = prims::bucket_pause(stored, until_ns, now_ns);
        shard.write(key, write, now)
    }

    fn window_add_now(
        &self,
        key: &str,
        window: Window,
        at_ns: u64,
        now_ns: u64,
        record: Option<&[i64]>,
        ttl: Option<Duration>,
    ) -> Result<Vec<i64>, StateError> {
        check_key(key)?;
        let now = self.now();
        let mut shard = self.shard(key);
        let budget = shard.budget;
        let Some(entry) = shard.live(key, now) else {
            let (sums, write) = prims::window_add(None, window, at_ns, now_ns, record, ttl);
            shard.write(key, write, now)?;
            return Ok(sums);
        };
        // A write takes the records out of the entry. If the window could grow past what
        // one entry may hold, it works on a copy, so that a refusal leaves the old one.
        let growth = record.map_or(0, |r| prims::window_growth_bound(r) as u64);
        let mut copy = (entry.cost + growth > budget).then(|| entry.value.clone());
        let stored = match &mut copy {
            Some(copy) => copy,
            None => &mut entry.value,
        };
        let (sums, write) = prims::window_add(Some(stored), window, at_ns, now_ns, record, ttl);
        shard.write(key, write, now)?;
        Ok(sums)
    }
}

impl StateBackend for MemoryBackend {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StateError>> {
        Box::pin(std::future::ready(self.get_now(key)))
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(std::future::ready(self.set_now(key, value, ttl)))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(std::future::ready(self.delete_now(key)))
    }

    fn incr<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<i64, StateError>> {
        Box::pin(std::future::ready(self.incr_now(key, delta, ttl)))
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a [u8]>,
        new: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool, StateError>> {
        Box::pin(std::future::ready(
            self.compare_and_swap_now(key, expected, new, ttl),
        ))
    }

    fn bucket_take<'a>(
        &'a self,
        key: &'a str,
        policy: BucketPolicy,
        now_ns: u64,
    ) -> BoxFuture<'a, Result<TakeResult, StateError>> {
        Box::pin(std::future::ready(
            self.bucket_take_now(key, policy, now_ns),
        ))
    }

    fn bucket_pause<'a>(
        &'a self,
        key: &'a str,
        until_ns: u64,
        now_ns: u64,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(std::future::ready(
            self.bucket_pause_now(key, until_ns, now_ns),
        ))
    }

    fn window_add<'a>(
        &'a self,
        key: &'a str,
        window: Window,
        at_ns: u64,
        now_ns: u64,
        record: Option<&'a [i64]>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<Vec<i64>, StateError>> {
        Box::pin(std::future::ready(
            self.window_add_now(key, window, at_ns, now_ns, record, ttl),
        ))
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("max_bytes", &self.max_bytes)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

async fn sweep_every(backend: Weak<MemoryBackend>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    // After a stall, one sweep catches up with every deadline passed; a burst adds nothing.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick completes at once, and there is nothing to sweep yet.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(backend) = backend.upgrade() else {
            break;
        };
        let removed = backend.sweep();
        if removed > 0 {
            tracing::debug!(removed, "swept expired state entries");
        }
    }
}

/// Locks a shard, ignoring poisoning: a shard's updates do not panic midway, so a panic
/// elsewhere in the holder's thread leaves it consistent.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

fn check_key(key: &str) -> Result<(), StateError> {
    if key.len() > MemoryBackend::MAX_KEY_BYTES {
        return Err(StateError::TooLarge);
    }
    Ok(())
}

/// The deadline `ttl` from `now`; a TTL too long to represent never expires.
fn deadline(now: Instant, ttl: Option<Duration>) -> Option<Instant> {
    ttl.and_then(|ttl| now.checked_add(ttl))
}

fn parse_integer(value: &[u8]) -> Result<i64, StateError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(StateError::NotAnInteger)
}

fn charge(key: &str, value: &Value) -> u64 {
    key.len() as u64 + value.len() as u64 + MemoryBackend::ENTRY_OVERHEAD
}

// === impl Shard ===

/// One shard: the entries, their recency order and their deadlines, and the bytes charged.
struct Shard {
    map: HashMap<Arc<str>, Entry>,
    /// Use tick → key; the first is the least recently used.
    lru: BTreeMap<u64, Arc<str>>,
    /// (Deadline, the entry's `id`) → key; the first expires soonest.
    expiry: BTreeMap<(Instant, u64), Arc<str>>,
    next_tick: u64,
    used: u64,
    budget: u64,
}

struct Entry {
    value: Value,
    /// What the entry is charged: [`charge`] of its key and value when stored.
    cost: u64,
    expires: Option<Instant>,
    /// The entry's key in `lru`, moved on every use.
    tick: u64,
    /// Unique in the shard and fixed while the entry is stored, so two entries with the
    /// same deadline have distinct keys in `expiry`.
    id: u64,
}

impl Entry {
    fn is_expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

/// Marks `entry` as the most recently used one in `lru`. One just read (`live`, then
/// written back) already is, and stays where it is.
fn touch(lru: &mut BTreeMap<u64, Arc<str>>, next_tick: &mut u64, entry: &mut Entry) {
    if entry.tick == *next_tick {
        return;
    }
    *next_tick += 1;
    let name = lru.remove(&entry.tick).expect("every entry is in `lru`");
    lru.insert(*next_tick, name);
    entry.tick = *next_tick;
}

impl Shard {
    fn new(budget: u64) -> Shard {
        Shard {
            map: HashMap::new(),
            lru: BTreeMap::new(),
            expiry: BTreeMap::new(),
            next_tick: 0,
            used: 0,
            budget,
        }
    }

    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    /// The entry under `key` if it has not expired, marked as just used. An expired entry
    /// found here is dropped.
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.map.get(key)?.is_expired(now) {
            self.remove(key);
            return None;
        }
        let entry = self.map.get_mut(key)?;
        touch(&mut self.lru, &mut self.next_tick, entry);
        Some(entry)
    }

    fn check_fits(&self, key: &str, value: &Value) -> Result<(), StateError> {
        if charge(key, value) > self.budget {
            return Err(StateError::TooLarge);
        }
        Ok(())
    }

    /// Stores `value` under `key`, replacing any entry, after evicting what it takes to
    /// fit in the budget.
    fn store(
        &mut self,
        key: &str,
        value: Value,
        expires: Option<Instant>,
        now: Instant,
    ) -> Result<(), StateError> {
        let cost = charge(key, &value);
        if cost > self.budget {
            return Err(StateError::TooLarge);
        }
        // A key written again (a window, a bucket, a counter) that fits without evicting
        // anything is replaced where it is.
        if let Some(entry) = self.map.get_mut(key)
            && self.used - entry.cost + cost <= self.budget
        {
            self.used = self.used - entry.cost + cost;
            if entry.expires != expires {
                let name = self.lru.get(&entry.tick).expect("every entry is in `lru`");
                if let Some(at) = entry.expires {
                    self.expiry.remove(&(at, entry.id));
                }
                if let Some(at) = expires {
                    self.expiry.insert((at, entry.id), name.clone());
                }
            }
            touch(&mut self.lru, &mut self.next_tick, entry);
            entry.value = value;
            entry.cost = cost;
            entry.expires = expires;
            return Ok(());
        }
        let tick = self.tick();
        let key = match self.remove(key) {
            Some((key, _)) => key,
            None => Arc::from(key),
        };
        while self.used + cost > self.budget {
            // Expired entries are dead already: drop them before anything still live.
            if self.drop_expired(now, 1) == 0 {
                self.evict_lru();
            }
        }
        if let Some(at) = expires {
            self.expiry.insert((at, tick), key.clone());
        }
        self.lru.insert(tick, key.clone());
        self.used += cost;
        let entry = Entry {
            value,
            cost,
            expires,
            tick,
            id: tick,
        };
        self.map.insert(key, entry);
        Ok(())
    }

    /// Carries out what a primitive decided for `key`.
    fn write(&mut self, key: &str, write: Write, now: Instant) -> Result<(), StateError> {
        match write {
            Write::Keep => Ok(()),
            Write::Delete => {
                self.remove(key);
                Ok(())
            }
            Write::Store { value, ttl } => self.store(key, value, deadline(now, ttl), now),
        }
    }

    fn remove(&mut self, key: &str) -> Option<(Arc<str>, Entry)> {
        let (key, entry) = self.map.remove_entry(key)?;
        self.lru.remove(&entry.tick);
        if let Some(at) = entry.expires {
            self.expiry.remove(&(at, entry.id));
        }
        self.used -= entry.cost;
        Some((key, entry))
    }

    /// Drops up to `limit` entries whose deadline has passed; returns how many.
    fn drop_expired(&mut self, now: Instant, limit: usize) -> usize {
        let mut dropped = 0;
        while dropped < limit {
            let key = match self.expiry.first_key_value() {
                Some((&(at, _), key)) if at <= now => key.clone(),
                _ => break,
            };
            self.remove(&key);
            dropped += 1;
        }
        dropped
    }

    fn evict_lru(&mut self) {
        if let Some(key) = self.lru.first_key_value().map(|(_, key)| key.clone()) {
            self.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OVERHEAD: u64 = MemoryBackend::ENTRY_OVERHEAD;

    impl MemoryBackend {
        /// Panics unless every shard's indexes and byte count agree with its entries.
        fn assert_consistent(&self) {
            for shard in self.shards.iter() {
                let shard = lock(shard);
                assert_eq!(shard.lru.len(), shard.map.len());
                let with_deadline = shard.map.values().filter(|e| e.expires.is_some());
                assert_eq!(shard.expiry.len(), with_deadline.count());
                let used: u64 = shard.map.iter().map(|(k, e)| charge(k, &e.value)).sum();
                for (key, entry) in &shard.map {
                    assert_eq!(entry.cost, charge(key, &entry.value), "{key}");
                }
                assert_eq!(shard.used, used);
                assert!(shard.used <= shard.budget);
                for (key, entry) in &shard.map {
                    assert_eq!(shard.lru.get(&entry.tick), Some(key));
                    if let Some(at) = entry.expires {
                        assert_eq!(shard.expiry.get(&(at, entry.id)), Some(key));
                    }
                }
            }
        }
    }

    async fn get(backend: &MemoryBackend, key: &str) -> Option<Vec<u8>> {
        backend.get(key).await.unwrap()
    }

    #[tokio::test]
    async fn get_set_delete() {
        let backend = MemoryBackend::new(1 << 20);
        assert!(backend.is_empty());
        assert_eq!(get(&backend, "f/a").await, None);

        backend.set("f/a", b"one".to_vec(), None).await.unwrap();
        assert_eq!(get(&backend, "f/a").await.as_deref(), Some(&b"one"[..]));
        assert_eq!(backend.len(), 1);
        assert_eq!(backend.used_bytes(), 3 + 3 + OVERHEAD);

        backend.set("f/a", b"three".to_vec(), None).await.unwrap();
        assert_eq!(get(&backend, "f/a").await.as_deref(), Some(&b"three"[..]));
        assert_eq!(backend.len(), 1);
        assert_eq!(backend.used_bytes(), 3 + 5 + OVERHEAD);

        backend.delete("f/a").await.unwrap();
        assert_eq!(get(&backend, "f/a").await, None);
        backend.delete("f/a").await.unwrap();
        assert!(backend.is_empty());
        assert_eq!(backend.used_bytes(), 0);
        backend.assert_consistent();
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_expires_at_the_deadline() {
        let backend = MemoryBackend::new(1 << 20);
        let ttl = Duration::from_secs(10);
        backend.set("f/a", b"v".to_vec(), Some(ttl)).await.unwrap();
        backend.set("f/forever", b"v".to_vec(), None).await.unwrap();

        tokio::time::advance(ttl - Duration::from_millis(1)).await;
        assert!(get(&backend, "f/a").await.is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(get(&backend, "f/a").await, None);
        assert!(get(&backend, "f/forever").await.is_some());

        // The read that found it expired dropped it.
        assert_eq!(backend.len(), 1);
        backend.assert_consistent();
    }

    #[tokio::test(start_paused = true)]
    async fn set_replaces_the_ttl() {
        let backend = MemoryBackend::new(1 << 20);
        backend
            .set("f/a", b"v".to_vec(), Some(Duration::from_secs(1)))
            .await
            .unwrap();
        backend.set("f/a", b"w".to_vec(), None).await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(get(&backend, "f/a").await.as_deref(), Some(&b"w"[..]));
        backend.assert_consistent();
    }

    #[tokio::test(start_paused = true)]
    async fn incr_creates_with_ttl_and_keeps_it() {
        let backend = MemoryBackend::new(1 << 20);
        let ttl = Some(Duration::from_secs(10));
        assert_eq!(backend.incr("f/n", 5, ttl).await, Ok(5));
        assert_eq!(get(&backend, "f/n").await.as_deref(), Some(&b"5"[..]));

        tokio::time::advance(Duration::from_secs(6)).await;
        // A later TTL does not extend the first.
        assert_eq!(
            backend.incr("f/n", -7, Some(Duration::from_secs(60))).await,
            Ok(-2)
        );
        assert_eq!(get(&backend, "f/n").await.as_deref(), Some(&b"-2"[..]));

        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(get(&backend, "f/n").await, None);
        // Expired counts as absent: a new counter, with the new TTL.
        assert_eq!(backend.incr("f/n", 1, ttl).await, Ok(1));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(get(&backend, "f/n").await, None);
        backend.assert_consistent();
    }

    #[tokio::test]
    async fn incr_refuses_non_integers_and_overflow() {
        let backend = MemoryBackend::new(1 << 20);
        for value in [&b"abc"[..], b"", b"1.5", b" 1", b"\xff"] {
            backend.set("f/x", value.to_vec(), None).await.unwrap();
            assert_eq!(
                backend.incr("f/x", 1, None).await,
                Err(StateError::NotAnInteger)
            );
            assert_eq!(get(&backend, "f/x").await.as_deref(), Some(value));
        }

        backend
            .set("f/x", i64::MAX.to_string().into_bytes(), None)
            .await
            .unwrap();
        assert_eq!(
            backend.incr("f/x", 1, None).await,
            Err(StateError::NotAnInteger)
        );
        assert_eq!(backend.incr("f/x", -1, None).await, Ok(i64::MAX - 1));
        assert_eq!(backend.incr("f/y", i64::MIN, None).await, Ok(i64::MIN));
        assert_eq!(
            backend.incr("f/y", -1, None).await,
            Err(StateError::NotAnInteger)
        );
        backend.assert_consistent();
    }

    #[tokio::test(start_paused = true)]
    async fn compare_and_swap() {
        let backend = MemoryBackend::new(1 << 20);
        let ttl = Some(Duration::from_secs(10));

        // Absent expected, absent found: stores.
        assert_eq!(
            backend
                .compare_and_swap("f/k", None, b"a".to_vec(), ttl)
                .await,
            Ok(true)
        );
        assert_eq!(get(&backend, "f/k").await.as_deref(), Some(&b"a"[..]));
        // Absent expected, present found: does not store.
        let swapped = backend
            .compare_and_swap("f/k", None, b"b".to_vec(), None)
            .await;
        assert_eq!(swapped, Ok(false));
        // Mismatch: does not store.
        let swapped = backend
            .compare_and_swap("f/k", Some(b"x"), b"b".to_vec(), None)
            .await;
        assert_eq!(swapped, Ok(false));
        assert_eq!(get(&backend, "f/k").await.as_deref(), Some(&b"a"[..]));
        // Match: stores, with the new TTL.
        let swapped = backend
            .compare_and_swap("f/k", Some(b"a"), b"b".to_vec(), ttl)
            .await;
        assert_eq!(swapped, Ok(true));
        assert_eq!(get(&backend, "f/k").await.as_deref(), Some(&b"b"[..]));
        // Present expected, absent found: does not store.
        let swapped = backend
            .compare_and_swap("f/none", Some(b"a"), b"b".to_vec(), None)
            .await;
        assert_eq!(swapped, Ok(false));
        assert_eq!(get(&backend, "f/none").await, None);

        // Expired counts as absent.
        tokio::time::advance(Duration::from_secs(10)).await;
        let swapped = backend
            .compare_and_swap("f/k", Some(b"b"), b"c".to_vec(), None)
            .await;
        assert_eq!(swapped, Ok(false));
        assert_eq!(
            backend
                .compare_and_swap("f/k", None, b"c".to_vec(), None)
                .await,
            Ok(true)
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(get(&backend, "f/k").await.as_deref(), Some(&b"c"[..]));
        backend.assert_consistent();
    }

    #[tokio::test]
    async fn evicts_the_least_recently_used() {
        // Room for exactly three entries with one-byte keys and values.
        let max = 3 * (2 + OVERHEAD);
        let backend = MemoryBackend::new(max);
        for key in ["a", "b", "c"] {
            backend.set(key, b"0".to_vec(), None).await.unwrap();
        }
        // A read counts as use: b is now the oldest.
        assert!(get(&backend, "a").await.is_some());
        backend.set("d", b"0".to_vec(), None).await.unwrap();
        assert_eq!(get(&backend, "b").await, None);

        // So do a write (order now: a, d, c) and an incr (order now: d, c, a).
        backend.set("c", b"1".to_vec(), None).await.unwrap();
        assert_eq!(backend.incr("a", 1, None).await, Ok(1));
        backend.set("e", b"0".to_vec(), None).await.unwrap();
        assert_eq!(get(&backend, "d").await, None);
        for key in ["a", "c", "e"] {
            assert!(get(&backend, key).await.is_some(), "{key} was evicted");
        }
        assert_eq!(backend.len(), 3);

        // An entry as large as the budget evicts everything else.
        let whole = vec![0; (max - 1 - OVERHEAD) as usize];
        backend.set("f", whole, None).await.unwrap();
        assert_eq!(backend.len(), 1);
        assert_eq!(backend.used_bytes(), max);
        backend.assert_consistent();
    }

    #[tokio::test(start_paused = true)]
    async fn evicts_expired_entries_before_live_ones() {
        let backend = MemoryBackend::new(3 * (2 + OVERHEAD));
        backend.set("a", b"v".to_vec(), None).await.unwrap();
        backend
            .set("b", b"v".to_vec(), Some(Duration::from_secs(1)))
            .await
            .unwrap();
        backend.set("c", b"v".to_vec(), None).await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        backend.set("d", b"v".to_vec(), None).await.unwrap();
        for key in ["a", "c", "d"] {
            assert!(get(&backend, key).await.is_some(), "{key} was evicted");
        }
        backend.assert_consistent();
    }

    #[tokio::test]
    async fn never_exceeds_the_budget() {
        let single = Arc::new(MemoryBackend::with_shards(10_000, 1));
        let sharded = Arc::new(MemoryBackend::with_shards(16 * 2_000, 16));
        for (backend, max) in [(single, 10_000), (sharded, 16 * 2_000)] {
            for i in 0..10_000usize {
                let key = format!("f/key-{}", i % 3_000);
                let value = vec![b'x'; (i * 7) % 300];
                let ttl = (i % 5 == 0).then(|| Duration::from_secs(1));
                if i % 11 == 0 {
                    backend
                        .incr(&format!("f/n-{}", i % 50), 1, ttl)
                        .await
                        .unwrap();
                } else {
                    backend.set(&key, value, ttl).await.unwrap();
                }
                assert!(
                    backend.used_bytes() <= max,
                    "{} > {max}",
                    backend.used_bytes()
                );
            }
            assert!(!backend.is_empty());
            backend.assert_consistent();
        }
    }

    #[tokio::test]
    async fn refuses_what_is_too_large() {
        let backend = MemoryBackend::new(1_000);
        assert_eq!(backend.max_entry_bytes(), 1_000);
        backend.set("f/a", b"old".to_vec(), None).await.unwrap();

        let too_big = vec![0; 1_000];
        assert_eq!(
            backend.set("f/a", too_big.clone(), None).await,
            Err(StateError::TooLarge)
        );
        let swapped = backend
            .compare_and_swap("f/a", Some(b"old"), too_big, None)
            .await;
        assert_eq!(swapped, Err(StateError::TooLarge));
        // The refused writes left the old value and evicted nothing.
        assert_eq!(get(&backend, "f/a").await.as_deref(), Some(&b"old"[..]));

        let fits = vec![0; 1_000 - 3 - OVERHEAD as usize];
        backend.set("f/b", fits, None).await.unwrap();
        assert_eq!(backend.len(), 1);

        let big = MemoryBackend::new(1 << 30);
        assert_eq!(big.max_entry_bytes(), (1 << 30) / 16);
        let long_key = "k".repeat(MemoryBackend::MAX_KEY_BYTES + 1);
        assert_eq!(
            big.set(&long_key, vec![], None).await,
            Err(StateError::TooLarge)
        );
        assert_eq!(big.get(&long_key).await, Err(StateError::TooLarge));
        assert_eq!(
            big.incr(&long_key, 1, None).await,
            Err(StateError::TooLarge)
        );
        let key = "k".repeat(MemoryBackend::MAX_KEY_BYTES);
        big.set(&key, vec![], None).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_that_would_outgrow_an_entry_is_refused_and_kept() {
        let backend = MemoryBackend::new(1_000);
        let add = |record: &'static [i64]| {
            let backend = backend.clone();
            async move {
                let record = (!record.is_empty()).then_some(record);
                backend
                    .window_add("f/w", Window::Count(100), 0, 0, record, None)
                    .await
            }
        };
        // Records of 20 lanes of 19 digits: two fit in 1,000 bytes, a third does not.
        const BIG: &[i64] = &[i64::MAX; 20];
        assert_eq!(add(BIG).await.unwrap()[0], i64::MAX);
        add(BIG).await.unwrap();
        let before = get(&backend, "f/w").await.unwrap();
        assert_eq!(add(BIG).await, Err(StateError::TooLarge));
        assert_eq!(get(&backend, "f/w").await, Some(before));
        assert_eq!(
            add(&[]).await.unwrap(),
            vec![i64::MAX; 20],
            "both records kept"
        );
        // Small records are added in place, charged the length of their text.
        backend.delete("f/w").await.unwrap();
        for _ in 0..10 {
            add(&[1, -2]).await.unwrap();
        }
        assert_eq!(add(&[]).await.unwrap(), [10, -20]);
        let text = get(&backend, "f/w").await.unwrap();
        assert_eq!(text, format!("n{}", " 1,-2".repeat(10)).into_bytes());
        let charged = "f/w".len() + text.len() + OVERHEAD as usize;
        assert_eq!(backend.used_bytes(), charged as u64);
        backend.assert_consistent();
    }

    #[test]
    fn shard_count_follows_the_budget() {
        let shards = |max_bytes| MemoryBackend::new(max_bytes).shards.len();
        assert_eq!(shards(0), 1);
        assert_eq!(shards(8 * 1024 * 1024 - 1), 1);
        assert_eq!(shards(8 * 1024 * 1024), 2);
        assert_eq!(shards(48 * 1024 * 1024), 8);
        assert_eq!(shards(64 * 1024 * 1024), 16);
        assert_eq!(shards(u64::MAX), 16);
    }

    #[tokio::test(start_paused = true)]
    async fn sweeper_removes_expired_entries() {
        let backend = MemoryBackend::new(1 << 20);
        let sweeper = backend.spawn_sweeper(Duration::from_secs(1));
        // Let the sweeper start its interval at time zero.
        settle().await;
        for i in 0..10 {
            let ttl = Some(Duration::from_millis(2_500));
            backend
                .set(&format!("f/{i}"), b"v".to_vec(), ttl)
                .await
                .unwrap();
        }
        backend.set("f/kept", b"v".to_vec(), None).await.unwrap();
        assert_eq!(backend.len(), 11);

        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(backend.len(), 11);

        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(backend.len(), 1);
        assert_eq!(backend.used_bytes(), 6 + 1 + OVERHEAD);
        backend.assert_consistent();

        // The sweeper holds no strong reference, and stops once the backend is gone.
        drop(backend);
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert!(sweeper.is_finished());
    }

    async fn settle() {
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
    }

    const S: u64 = 1_000_000_000;
    /// Some wall-clock time, as filters pass it.
    const T0: u64 = 1_800_000_000 * S;

    fn per_second(rate: u64, burst: u64) -> BucketPolicy {
        BucketPolicy {
            interval_ns: S / rate,
            burst,
            max_wait_ns: 0,
            max_queue: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_take_stores_the_bucket_until_it_is_full_again() {
        use crate::state::TakeOutcome;
        let backend = MemoryBackend::new(1 << 20);
        let p = per_second(10, 2);
        let take = |now| backend.bucket_take("f/b", p, now);
        assert_eq!(take(T0).await.unwrap().outcome, TakeOutcome::Admitted);
        assert_eq!(take(T0).await.unwrap().outcome, TakeOutcome::Admitted);
        let tat = T0 + 200_000_000;
        let stored = format!("{tat} 0");
        assert_eq!(
            get(&backend, "f/b").await,
            Some(stored.clone().into_bytes())
        );
        assert_eq!(backend.used_bytes(), 3 + stored.len() as u64 + OVERHEAD);
        let refused = take(T0).await.unwrap();
        assert_eq!(
            (refused.outcome, refused.tat_ns, refused.wait_ns),
            (TakeOutcome::Empty, tat, 100_000_000)
        );

        // The key lives 200 ms: as long as the bucket takes to fill up again.
        tokio::time::advance(Duration::from_millis(199)).await;
        assert!(get(&backend, "f/b").await.is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(get(&backend, "f/b").await, None);
        backend.assert_consistent();
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_pause_keeps_the_longer_pause_and_the_key_with_it() {
        use crate::state::TakeOutcome;
        let backend = MemoryBackend::new(1 << 20);
        let p = per_second(10, 10);
        backend.bucket_take("f/b", p, T0).await.unwrap();
        backend.bucket_pause("f/b", T0 + 5 * S, T0).await.unwrap();
        backend.bucket_pause("f/b", T0 + S, T0).await.unwrap();
        let stored = format!("{} {}", T0 + S / 10, T0 + 5 * S);
        assert_eq!(get(&backend, "f/b").await, Some(stored.into_bytes()));
        let r = backend.bucket_take("f/b", p, T0 + S).await.unwrap();
        assert_eq!((r.outcome, r.wait_ns), (TakeOutcome::Paused, 4 * S));

        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert!(get(&backend, "f/b").await.is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(get(&backend, "f/b").await, None);

        // A pause already over on a full bucket leaves nothing behind.
        backend.bucket_pause("f/b", T0, T0).await.unwrap();
        assert!(backend.is_empty());
        backend.assert_consistent();
    }

    #[tokio::test(start_paused = true)]
    async fn window_add_stores_the_records_and_charges_them() {
        let backend = MemoryBackend::new(1 << 20);
        let w = Window::Count(2);
        let ttl = Some(Duration::from_secs(10));
        let add = |record: Option<&'static [i64]>| backend.window_add("f/w", w, 0, 0, record, ttl);
        assert_eq!(add(None).await, Ok(vec![]));
        assert!(backend.is_empty(), "a read creates nothing");
        assert_eq!(add(Some(&[1, 0, 0])).await, Ok(vec![1, 0, 0]));
        assert_eq!(add(Some(&[1, 1, 0])).await, Ok(vec![2, 1, 0]));
        assert_eq!(add(Some(&[1, 1, 1])).await, Ok(vec![2, 2, 1]));
        assert_eq!(
            get(&backend, "f/w").await.as_deref(),
            Some(&b"n 1,1,0 1,1,1"[..])
        );
        assert_eq!(backend.used_bytes(), 3 + 13 + OVERHEAD);

        // Each write restarts the TTL; a read does not.
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(add(Some(&[0, 0, 0])).await, Ok(vec![1, 1, 1]));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(add(None).await, Ok(vec![1, 1, 1]));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(add(None).await, Ok(vec![]));

        // A time window: slots of 1 s, kept at least the 60 s it spans.
        let t = Window::Time {
            slot_ms: 1_000,
            slots: 60,
        };
        let sums = backend.window_add("f/t", t, T0, T0, Some(&[2]), ttl).await;
        assert_eq!(sums, Ok(vec![2]));
        let stored = format!("t 1000 {}:2", T0 / S);
        assert_eq!(get(&backend, "f/t").await, Some(stored.into_bytes()));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(get(&backend, "f/t").await.is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(get(&backend, "f/t").await, None);
        backend.assert_consistent();
    }

    #[tokio::test]
    async fn primitives_refuse_what_is_too_large() {
        let backend = MemoryBackend::new(1_000);
        let long_key = "k".repeat(MemoryBackend::MAX_KEY_BYTES + 1);
        let p = per_second(1, 1);
        assert_eq!(
            backend.bucket_take(&long_key, p, T0).await,
            Err(StateError::TooLarge)
        );
        assert_eq!(
            backend.bucket_pause(&long_key, T0, T0).await,
            Err(StateError::TooLarge)
        );
        let window = backend.window_add(&long_key, Window::Count(1), 0, 0, None, None);
        assert_eq!(window.await, Err(StateError::TooLarge));

        // A window that outgrows the budget is refused and keeps what it held.
        let w = Window::Count(1_000);
        backend
            .window_add("f/w", w, 0, 0, Some(&[1]), None)
            .await
            .unwrap();
        let wide = vec![i64::MAX; 100];
        let grown = backend.window_add("f/w", w, 0, 0, Some(&wide), None).await;
        assert_eq!(grown, Err(StateError::TooLarge));
        assert_eq!(get(&backend, "f/w").await.as_deref(), Some(&b"n 1"[..]));
        backend.assert_consistent();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_takes_admit_exactly_the_burst() {
        use crate::state::TakeOutcome;
        let backend: Arc<dyn StateBackend> = MemoryBackend::new(1 << 30);
        // A token an hour: only the burst of 100 is admitted, whoever asks.
        let p = BucketPolicy {
            interval_ns: 3_600 * S,
            burst: 100,
            max_wait_ns: 0,
            max_queue: 0,
        };
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let backend = backend.clone();
                tokio::spawn(async move {
                    let mut admitted = 0;
                    for _ in 0..200 {
                        let r = backend.bucket_take("f/hot", p, T0).await.unwrap();
                        admitted += u32::from(r.outcome == TakeOutcome::Admitted);
                        backend
                            .window_add("f/win", Window::Count(10_000), 0, 0, Some(&[1, 2]), None)
                            .await
                            .unwrap();
                    }
                    admitted
                })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            admitted += task.await.unwrap();
        }
        assert_eq!(admitted, 100);
        let sums = backend.window_add("f/win", Window::Count(10_000), 0, 0, None, None);
        assert_eq!(sums.await, Ok(vec![1_600, 3_200]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_incr_sums_exactly() {
        let backend: Arc<dyn StateBackend> = MemoryBackend::new(1 << 30);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let backend = backend.clone();
                tokio::spawn(async move {
                    for _ in 0..1_000 {
                        backend.incr("f/count", 1, None).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let total = backend.get("f/count").await.unwrap();
        assert_eq!(total.as_deref(), Some(&b"8000"[..]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_compare_and_swap_loses_no_update() {
        let backend: Arc<dyn StateBackend> = MemoryBackend::new(1 << 30);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let backend = backend.clone();
                tokio::spawn(async move {
                    for _ in 0..200 {
                        loop {
                            let old = backend.get("f/cas").await.unwrap();
                            let n: u64 = old
                                .as_deref()
                                .map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                            let new = (n + 1).to_string().into_bytes();
                            let cas = backend.compare_and_swap("f/cas", old.as_deref(), new, None);
                            if cas.await.unwrap() {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let total = backend.get("f/cas").await.unwrap();
        assert_eq!(total.as_deref(), Some(&b"1600"[..]));
    }
}
