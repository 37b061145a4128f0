//! The in-memory backend: [`MemoryStore`].

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use crate::algorithm::{self, QuotaState};
use crate::clock::{Clock, SystemClock};
use crate::decision::{Decision, DecisionSource};
use crate::error::Result;
use crate::quota::Policy;

/// Default bound on the number of keys a [`MemoryStore`] keeps.
pub const DEFAULT_MAX_KEYS: u64 = 1_000_000;

const MAX_SHARDS: usize = 64;

#[derive(Debug)]
struct Slot {
    states: States,
    last_seen: u64,
    idle: u64,
}

/// A key's quota states: inline for the usual single-quota policy (no pointer to chase).
#[derive(Debug)]
enum States {
    One(QuotaState),
    Many(Vec<QuotaState>),
}

impl States {
    fn fresh(policy: &Policy, now: u64) -> Self {
        let mut v = algorithm::fresh_states(policy, now);
        if v.len() == 1
            && let Some(one) = v.pop()
        {
            return Self::One(one);
        }
        Self::Many(v)
    }

    fn as_slice(&self) -> &[QuotaState] {
        match self {
            Self::One(s) => std::slice::from_ref(s),
            Self::Many(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [QuotaState] {
        match self {
            Self::One(s) => std::slice::from_mut(s),
            Self::Many(v) => v,
        }
    }
}

/// A key stored inline when short (most user ids, API-key ids and IP addresses), so that
/// comparing it touches no other cache line.
#[derive(Debug)]
enum KeyBuf {
    Inline { len: u8, bytes: [u8; 22] },
    Heap(Box<str>),
}

impl KeyBuf {
    fn new(key: &str) -> Self {
        let b = key.as_bytes();
        match u8::try_from(b.len()) {
            Ok(len) if b.len() <= 22 => {
                let mut bytes = [0; 22];
                bytes[..b.len()].copy_from_slice(b);
                Self::Inline { len, bytes }
            }
            _ => Self::Heap(key.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(s) => s.as_bytes(),
        }
    }
}

/// The map key is the store's keyed SipHash of (policy name, key), computed once per call
/// (it also picks the shard); an entry whose hash collides with another's goes to a spill
/// list and both are told apart by their names, so hostile keys can neither collide nor
/// degrade the map.
#[derive(Debug)]
struct Entry {
    policy: Arc<str>,
    key: KeyBuf,
    slot: Slot,
}

impl Entry {
    fn is(&self, policy: &Policy, key: &str) -> bool {
        self.key.as_bytes() == key.as_bytes() && *self.policy == *policy.name()
    }
}

#[derive(Default)]
struct PrehashedHasher(u64);

impl std::hash::Hasher for PrehashedHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type Prehashed = std::hash::BuildHasherDefault<PrehashedHasher>;

#[derive(Debug, Default)]
struct Shard {
    // Entries inline in the table (one cache line away from the hash), plus the practically
    // always empty list of entries whose hash collides with a different (policy, key).
    map: HashMap<u64, Entry, Prehashed>,
    spill: Vec<(u64, Entry)>,
    len: usize,
}

enum Place {
    Map,
    Spill(usize),
    Missing,
}

impl Shard {
    fn place(&self, h: u64, policy: &Policy, key: &str) -> Place {
        match self.map.get(&h) {
            Some(e) if e.is(policy, key) => Place::Map,
            Some(_) => self
                .spill
                .iter()
                .position(|(sh, e)| *sh == h && e.is(policy, key))
                .map_or(Place::Missing, Place::Spill),
            None => Place::Missing,
        }
    }

    fn get(&self, h: u64, policy: &Policy, key: &str) -> Option<&Slot> {
        match self.place(h, policy, key) {
            Place::Map => self.map.get(&h).map(|e| &e.slot),
            Place::Spill(i) => Some(&self.spill[i].1.slot),
            Place::Missing => None,
        }
    }

    fn get_mut(&mut self, h: u64, policy: &Policy, key: &str) -> Option<&mut Slot> {
        match self.place(h, policy, key) {
            Place::Map => self.map.get_mut(&h).map(|e| &mut e.slot),
            Place::Spill(i) => Some(&mut self.spill[i].1.slot),
            Place::Missing => None,
        }
    }

    fn remove(&mut self, h: u64, policy: &Policy, key: &str) {
        match self.place(h, policy, key) {
            Place::Map => {
                self.map.remove(&h);
                self.len -= 1;
                // Promote a spilled entry with the same hash, if any.
                if let Some(i) = self.spill.iter().position(|(sh, _)| *sh == h) {
                    let (_, e) = self.spill.swap_remove(i);
                    self.map.insert(h, e);
                }
            }
            Place::Spill(i) => {
                self.spill.swap_remove(i);
                self.len -= 1;
            }
            Place::Missing => {}
        }
    }

    fn slot(&mut self, h: u64, policy: &Policy, key: &str, now: u64, cap: usize) -> &mut Slot {
        let mut place = self.place(h, policy, key);
        if matches!(place, Place::Missing) {
            if self.len >= cap {
                self.evict(now, cap);
            }
            let idle = u64::try_from(policy.idle_horizon().as_micros()).unwrap_or(u64::MAX);
            let entry = Entry {
                policy: Arc::clone(policy.name_arc()),
                key: KeyBuf::new(key),
                slot: Slot {
                    states: States::fresh(policy, now),
                    last_seen: now,
                    idle,
                },
            };
            self.len += 1;
            if let std::collections::hash_map::Entry::Vacant(v) = self.map.entry(h) {
                v.insert(entry);
                place = Place::Map;
            } else {
                self.spill.push((h, entry));
                place = Place::Spill(self.spill.len() - 1);
            }
        }
        let slot = match place {
            Place::Spill(i) => &mut self.spill[i].1.slot,
            _ => {
                &mut self
                    .map
                    .get_mut(&h)
                    .expect("the entry was just found or inserted")
                    .slot
            }
        };
        if now.saturating_sub(slot.last_seen) > slot.idle
            || !algorithm::is_aligned(slot.states.as_slice(), policy)
        {
            // Idle past its horizon (identical to a fresh state; keeps the log small), or the
            // policy changed its quotas or algorithm: start over.
            slot.states = States::fresh(policy, now);
        }
        slot.last_seen = slot.last_seen.max(now);
        slot
    }

    /// Drop every idle-expired key; if the shard is still full, drop the least recently
    /// seen eighth.
    fn evict(&mut self, now: u64, cap: usize) {
        self.purge_expired(now);
        if self.len < cap {
            return;
        }
        let mut seen: Vec<u64> = self
            .map
            .values()
            .chain(self.spill.iter().map(|(_, e)| e))
            .map(|e| e.slot.last_seen)
            .collect();
        let drop_n = (seen.len() / 8).max(1);
        let (_, cutoff, _) = seen.select_nth_unstable(drop_n - 1);
        let cutoff = *cutoff;
        let mut left = drop_n;
        let mut keep = |e: &Entry| {
            if left > 0 && e.slot.last_seen <= cutoff {
                left -= 1;
                false
            } else {
                true
            }
        };
        self.map.retain(|_, e| keep(e));
        self.spill.retain(|(_, e)| keep(e));
        self.rebalance();
    }

    fn purge_expired(&mut self, now: u64) {
        let live = |e: &Entry| now.saturating_sub(e.slot.last_seen) <= e.slot.idle;
        self.map.retain(|_, e| live(e));
        self.spill.retain(|(_, e)| live(e));
        self.rebalance();
    }

    /// Move spilled entries whose table slot became free back into the table.
    fn rebalance(&mut self) {
        let spill = std::mem::take(&mut self.spill);
        for (h, e) in spill {
            if let std::collections::hash_map::Entry::Vacant(v) = self.map.entry(h) {
                v.insert(e);
            } else {
                self.spill.push((h, e));
            }
        }
        self.len = self.map.len() + self.spill.len();
    }
}

/// Counters in this process: per-key states in up to 64 sharded hash maps, each shard behind its
/// own short mutex, so decisions are exact under any concurrency and keys of different
/// shards never contend.
///
/// * **Bounded**: at most `max_keys` keys (default one million). A key idle for longer than
///   its policy's horizon (the time after which its state equals a fresh one, e.g. one
///   period for a fixed window) counts as fresh and is dropped when its shard needs room, so
///   expiry by idleness never admits extra requests. When a shard is full of live keys, its
///   least recently seen eighth is evicted: that does forget those keys' counts, so size
///   `max_keys` above the number of keys active within one period.
/// * **Time**: the store's [`Clock`] drives both the algorithms and idle expiry, so a
///   [`FakeClock`](crate::FakeClock) controls everything in tests.
/// * **Cost**: one keyed SipHash of policy name and key (random per store, so hostile keys
///   cannot degrade the maps), one mutex, one map lookup, no I/O, no allocation for a known key (the [`Decision`] itself allocates its per-quota list).
///
/// ```
/// use palisade_ratelimit::{MemoryStore, Policy, Quota, Algorithm, Store};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> palisade_ratelimit::Result<()> {
/// let store = MemoryStore::new();
/// let policy = Policy::single("login", Algorithm::SlidingWindowLog, Quota::per_minute(2))?;
/// assert!(store.acquire("alice", &policy, 1).await?.allowed);
/// assert!(store.acquire("alice", &policy, 1).await?.allowed);
/// assert!(!store.acquire("alice", &policy, 1).await?.allowed);
/// assert!(store.acquire("bob", &policy, 1).await?.allowed);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    shards: Arc<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("per_shard", &self.per_shard)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store with the system clock and at most [`DEFAULT_MAX_KEYS`] keys.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A store with another clock or key bound.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            max_keys: DEFAULT_MAX_KEYS,
            clock: Arc::new(SystemClock),
        }
    }

    /// Keys currently held (idle-expired keys are dropped first).
    pub fn key_count(&self) -> u64 {
        let now = self.clock.now_micros();
        self.shards
            .iter()
            .map(|s| {
                let mut shard = lock(s);
                shard.purge_expired(now);
                shard.len as u64
            })
            .sum()
    }

    fn shard(&self, policy: &Policy, key: &str) -> (u64, MutexGuard<'_, Shard>) {
        let h = self.hasher.hash_one((policy.name(), key));
        // The low bits pick the shard; the map inside uses the whole hash.
        (h, lock(&self.shards[(h as usize) % self.shards.len()]))
    }

    /// The decision, synchronously (what [`Store::acquire`](crate::Store::acquire) runs; no
    /// I/O, one shard lock).
    pub fn acquire_sync(&self, key: &str, policy: &Policy, cost: u64) -> Decision {
        let now = self.clock.now_micros();
        let (allowed, verdicts) = {
            let (h, mut shard) = self.shard(policy, key);
            let slot = shard.slot(h, policy, key, now, self.per_shard);
            algorithm::decide_aligned(slot.states.as_mut_slice(), policy, now, cost)
        };
        Decision::from_verdicts(policy, allowed, &verdicts, DecisionSource::Store)
    }

    /// Only whether a request of `cost` is admitted (consuming it if so), without building a
    /// [`Decision`]: no allocation at all for a known key. The same decision as
    /// [`acquire_sync`](Self::acquire_sync), for hot paths that need no headers or
    /// retry times.
    pub fn allow_sync(&self, key: &str, policy: &Policy, cost: u64) -> bool {
        let now = self.clock.now_micros();
        let (h, mut shard) = self.shard(policy, key);
        let slot = shard.slot(h, policy, key, now, self.per_shard);
        algorithm::admit_aligned(slot.states.as_mut_slice(), policy, now, cost)
    }

    /// [`Store::peek`](crate::Store::peek), synchronously.
    pub fn peek_sync(&self, key: &str, policy: &Policy) -> Decision {
        let now = self.clock.now_micros();
        let (allowed, verdicts) = {
            let (h, shard) = self.shard(policy, key);
            match shard.get(h, policy, key) {
                Some(slot) if now.saturating_sub(slot.last_seen) <= slot.idle => {
                    algorithm::peek(slot.states.as_slice(), policy, now)
                }
                _ => algorithm::peek(&[], policy, now),
            }
        };
        Decision::from_verdicts(policy, allowed, &verdicts, DecisionSource::Store)
    }

    /// [`Store::refund`](crate::Store::refund), synchronously.
    pub fn refund_sync(&self, key: &str, policy: &Policy, cost: u64) {
        let now = self.clock.now_micros();
        let (h, mut shard) = self.shard(policy, key);
        if let Some(slot) = shard.get_mut(h, policy, key)
            && algorithm::is_aligned(slot.states.as_slice(), policy)
        {
            algorithm::refund_aligned(slot.states.as_mut_slice(), policy, now, cost);
        }
    }

    /// [`Store::reset`](crate::Store::reset), synchronously.
    pub fn reset_sync(&self, key: &str, policy: &Policy) {
        let (h, mut shard) = self.shard(policy, key);
        shard.remove(h, policy, key);
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Builds a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    max_keys: u64,
    clock: Arc<dyn Clock>,
}

impl MemoryStoreBuilder {
    /// At most this many keys (default [`DEFAULT_MAX_KEYS`]).
    #[must_use]
    pub fn max_keys(mut self, max_keys: u64) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// The clock (default [`SystemClock`]); tests pass a [`FakeClock`](crate::FakeClock).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Build the store.
    pub fn build(self) -> MemoryStore {
        let max = usize::try_from(self.max_keys).unwrap_or(usize::MAX).max(1);
        let shards = max.min(MAX_SHARDS);
        MemoryStore {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: (max / shards).max(1),
            hasher: std::collections::hash_map::RandomState::new(),
            clock: self.clock,
        }
    }
}

#[async_trait]
impl crate::store::Store for MemoryStore {
    async fn acquire(&self, key: &str, policy: &Policy, cost: u64) -> Result<Decision> {
        Ok(self.acquire_sync(key, policy, cost))
    }
    async fn peek(&self, key: &str, policy: &Policy) -> Result<Decision> {
        Ok(self.peek_sync(key, policy))
    }
    async fn refund(&self, key: &str, policy: &Policy, cost: u64) -> Result<()> {
        self.refund_sync(key, policy, cost);
        Ok(())
    }
    async fn reset(&self, key: &str, policy: &Policy) -> Result<()> {
        self.reset_sync(key, policy);
        Ok(())
    }
    fn backend_name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{Algorithm, Quota};

    /// Forced hash collisions: entries stay apart, and removal and eviction keep them
    /// reachable.
    #[test]
    fn colliding_hashes_stay_apart() {
        let policy = Policy::single("p", Algorithm::FixedWindow, Quota::per_minute(2)).unwrap();
        let now = 1_700_006_400_000_000;
        let mut shard = Shard::default();
        for key in ["a", "b", "c"] {
            let slot = shard.slot(7, &policy, key, now, 100);
            assert!(
                algorithm::admit_aligned(slot.states.as_mut_slice(), &policy, now, 2),
                "{key}"
            );
        }
        assert_eq!((shard.len, shard.map.len(), shard.spill.len()), (3, 1, 2));
        for key in ["a", "b", "c"] {
            let slot = shard.get_mut(7, &policy, key).unwrap();
            assert!(
                !algorithm::admit_aligned(slot.states.as_mut_slice(), &policy, now, 1),
                "{key} shares state"
            );
        }
        shard.remove(7, &policy, "a");
        assert_eq!((shard.len, shard.map.len(), shard.spill.len()), (2, 1, 1));
        assert!(shard.get(7, &policy, "a").is_none());
        assert!(shard.get(7, &policy, "b").is_some() && shard.get(7, &policy, "c").is_some());
        // Everything idle past the horizon goes.
        shard.purge_expired(now + 61_000_000);
        assert_eq!((shard.len, shard.map.len(), shard.spill.len()), (0, 0, 0));
    }
}
