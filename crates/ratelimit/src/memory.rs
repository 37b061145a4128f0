//! The in-memory backend: [`MemoryStore`].

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use async_trait::async_trait;
use hashbrown::HashTable;

use crate::algorithm::{self, QuotaState};
use crate::clock::{Clock, SystemClock};
use crate::decision::{Decision, DecisionSource};
use crate::error::Result;
use crate::quota::Policy;

/// Default bound on the number of keys a [`MemoryStore`] keeps.
pub const DEFAULT_MAX_KEYS: u64 = 1_000_000;

const MAX_SHARDS: usize = 64;

/// A key's quota states. A single quota of the four fixed-size algorithms is kept inline
/// (at most three words, so that a whole entry fits one cache line); several quotas or a
/// sliding-window log live behind one pointer.
#[derive(Debug)]
enum States {
    Gcra(u64),
    TokenBucket(u64, u64),
    FixedWindow(u64, u64),
    SlidingWindowCounter(u64, u64, u64),
    Other(Box<[QuotaState]>),
}

impl States {
    fn fresh(policy: &Policy, now: u64) -> Self {
        let mut v = algorithm::fresh_states(policy, now);
        if v.len() == 1
            && let Some(one) = v.pop()
        {
            return Self::from_state(one);
        }
        Self::Other(v.into_boxed_slice())
    }

    fn from_state(s: QuotaState) -> Self {
        match s {
            QuotaState::Gcra { tat } => Self::Gcra(tat),
            QuotaState::TokenBucket { tokens, last } => Self::TokenBucket(tokens, last),
            QuotaState::FixedWindow { window, count } => Self::FixedWindow(window, count),
            QuotaState::SlidingWindowCounter { window, prev, curr } => {
                Self::SlidingWindowCounter(window, prev, curr)
            }
            other => Self::Other(Box::new([other])),
        }
    }

    /// The inline state as the algorithms' type, or the boxed ones.
    fn unpack(&self) -> Result<QuotaState, &[QuotaState]> {
        Ok(match *self {
            Self::Gcra(tat) => QuotaState::Gcra { tat },
            Self::TokenBucket(tokens, last) => QuotaState::TokenBucket { tokens, last },
            Self::FixedWindow(window, count) => QuotaState::FixedWindow { window, count },
            Self::SlidingWindowCounter(window, prev, curr) => {
                QuotaState::SlidingWindowCounter { window, prev, curr }
            }
            Self::Other(ref v) => return Err(v),
        })
    }

    /// [`algorithm::admit_aligned`], run on the packed fields for a single quota.
    fn admit(&mut self, policy: &Policy, now: u64, cost: u64) -> bool {
        let [q] = policy.params() else {
            return self.with_mut(|s| algorithm::admit_aligned(s, policy, now, cost));
        };
        match self {
            Self::Gcra(tat) => algorithm::gcra_take(tat, q, now, cost),
            Self::TokenBucket(tokens, last) => algorithm::tb_take(tokens, last, q, now, cost),
            Self::FixedWindow(window, count) => algorithm::fw_take(window, count, q, now, cost),
            Self::SlidingWindowCounter(window, prev, curr) => {
                algorithm::swc_take(window, prev, curr, q, now, cost)
            }
            Self::Other(v) => algorithm::admit_aligned(v, policy, now, cost),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&[QuotaState]) -> R) -> R {
        match self.unpack() {
            Ok(one) => f(std::slice::from_ref(&one)),
            Err(many) => f(many),
        }
    }

    fn with_mut<R>(&mut self, f: impl FnOnce(&mut [QuotaState]) -> R) -> R {
        let Ok(one) = self.unpack() else {
            return match self {
                Self::Other(v) => f(v),
                _ => f(&mut []),
            };
        };
        let mut one = [one];
        let r = f(&mut one);
        let [one] = one;
        *self = Self::from_state(one);
        r
    }
}

/// Per-quota verdicts, without a list for the usual single quota.
enum Verdicts {
    One(algorithm::Verdict),
    Many(Vec<algorithm::Verdict>),
}

impl Verdicts {
    fn as_slice(&self) -> &[algorithm::Verdict] {
        match self {
            Self::One(v) => std::slice::from_ref(v),
            Self::Many(v) => v,
        }
    }
}

/// Keys of up to this many bytes are stored inline.
const INLINE_KEY: usize = 15;

/// A key stored inline when short (user ids, API-key ids, IPv4 addresses), so that comparing
/// it touches no other cache line. Keys are UTF-8, which never contains 0xFF, so an inline
/// key is padded with 0xFF and compared as a whole array.
#[derive(Debug)]
enum KeyBuf {
    Inline([u8; INLINE_KEY]),
    Heap(Box<Box<[u8]>>),
}

/// A looked-up key, padded once per call when short.
#[derive(Clone, Copy)]
enum Probe<'a> {
    Short([u8; INLINE_KEY]),
    Long(&'a [u8]),
}

impl<'a> Probe<'a> {
    fn new(key: &'a [u8]) -> Self {
        match key.len() {
            n if n <= INLINE_KEY => {
                let mut b = [0xff; INLINE_KEY];
                b[..n].copy_from_slice(key);
                Self::Short(b)
            }
            _ => Self::Long(key),
        }
    }
}

impl KeyBuf {
    fn new(key: Probe<'_>) -> Self {
        match key {
            Probe::Short(b) => Self::Inline(b),
            Probe::Long(k) => Self::Heap(Box::new(k.into())),
        }
    }

    fn matches(&self, key: Probe<'_>) -> bool {
        match (self, key) {
            (Self::Inline(a), Probe::Short(b)) => *a == b,
            (Self::Heap(a), Probe::Long(b)) => ***a == *b,
            _ => false,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline(b) => {
                let n = b.iter().position(|&c| c == 0xff).unwrap_or(INLINE_KEY);
                &b[..n]
            }
            Self::Heap(s) => s,
        }
    }
}

/// One (policy, key) pair. The policy is held as the policy object itself (one pointer): the
/// usual call passes that same object, so identity is a pointer comparison, the shape check
/// is skipped, and its idle horizon is at hand for expiry.
#[derive(Debug)]
#[repr(align(64))]
struct Entry {
    policy: Policy,
    key: KeyBuf,
    last_seen: u64,
    states: States,
}

// One cache line per entry (the table aligns its buckets to the entry's alignment).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Entry>() == 64);

impl Entry {
    fn is(&self, policy: &Policy, key: Probe<'_>) -> bool {
        self.key.matches(key) && (self.policy.same(policy) || self.policy.name() == policy.name())
    }

    fn is_idle(&self, now: u64) -> bool {
        now.saturating_sub(self.last_seen) > self.policy.idle_micros()
    }
}

/// One shard's entries, found by the store's hash of (policy name, key) and told apart by
/// comparing both, so two keys whose hashes collide still never share state.
#[derive(Debug, Default)]
struct Shard {
    table: HashTable<Entry>,
}

impl Shard {
    fn get(&self, h: u64, policy: &Policy, key: Probe<'_>) -> Option<&Entry> {
        self.table.find(h, |e| e.is(policy, key))
    }

    fn get_mut(&mut self, h: u64, policy: &Policy, key: Probe<'_>) -> Option<&mut Entry> {
        self.table.find_mut(h, |e| e.is(policy, key))
    }

    fn remove(&mut self, h: u64, policy: &Policy, key: Probe<'_>) {
        if let Ok(e) = self.table.find_entry(h, |e| e.is(policy, key)) {
            e.remove();
        }
    }

    /// The entry for (policy, key), made fresh when missing, idle past its horizon or left
    /// by a policy of another shape under the same name. `rehash` gives an entry's hash
    /// again when the table grows.
    fn slot(
        &mut self,
        h: u64,
        policy: &Policy,
        key: Probe<'_>,
        now: u64,
        cap: usize,
        rehash: impl Fn(&Entry) -> u64,
    ) -> &mut Entry {
        let e = match self.table.find_entry(h, |e| e.is(policy, key)) {
            Ok(found) => found.into_mut(),
            Err(absent) => {
                let table = absent.into_table();
                if table.len() >= cap {
                    evict(table, now, cap);
                }
                let entry = Entry {
                    policy: policy.clone(),
                    key: KeyBuf::new(key),
                    last_seen: now,
                    states: States::fresh(policy, now),
                };
                return table.insert_unique(h, entry, rehash).into_mut();
            }
        };
        if e.is_idle(now) {
            // Idle past its horizon: identical to a fresh state (and keeps the log small).
            e.states = States::fresh(policy, now);
        }
        if !e.policy.same(policy) {
            // Another object under the same name: start over if its quotas or algorithm
            // differ, and follow it from now on (its idle horizon included).
            if !e.states.with(|s| algorithm::is_aligned(s, policy)) {
                e.states = States::fresh(policy, now);
            }
            e.policy = policy.clone();
        }
        e.last_seen = e.last_seen.max(now);
        e
    }

    fn purge_expired(&mut self, now: u64) {
        self.table.retain(|e| !e.is_idle(now));
    }
}

/// Drop every idle-expired entry; if the table is still full, drop the least recently seen
/// eighth.
fn evict(table: &mut HashTable<Entry>, now: u64, cap: usize) {
    table.retain(|e| !e.is_idle(now));
    if table.len() < cap {
        return;
    }
    let mut seen: Vec<u64> = table.iter().map(|e| e.last_seen).collect();
    let drop_n = (seen.len() / 8).max(1);
    let (_, cutoff, _) = seen.select_nth_unstable(drop_n - 1);
    let cutoff = *cutoff;
    let mut left = drop_n;
    table.retain(|e| {
        if left > 0 && e.last_seen <= cutoff {
            left -= 1;
            false
        } else {
            true
        }
    });
}

/// Counters in this process: per-key states in up to 64 sharded hash tables, each shard
/// behind its own short mutex (`parking_lot`: it spins briefly before parking, which is what a
/// critical section of a few dozen nanoseconds wants under contention), so decisions are exact under any concurrency and keys of
/// different shards never contend.
///
/// * **Bounded**: at most `max_keys` keys (default one million). A key idle for longer than
///   its policy's horizon (the time after which its state equals a fresh one, e.g. one
///   period for a fixed window) counts as fresh and is dropped when its shard needs room, so
///   expiry by idleness never admits extra requests. When a shard is full of live keys, its
///   least recently seen eighth is evicted: that does forget those keys' counts, so size
///   `max_keys` above the number of keys active within one period.
/// * **Time**: the store's [`Clock`] drives both the algorithms and idle expiry, so a
///   [`FakeClock`](crate::FakeClock) controls everything in tests.
/// * **Cost**: one [foldhash](https://docs.rs/foldhash) of policy name and key, seeded at
///   random per store (so which keys share a shard or a probe sequence cannot be predicted
///   from outside; keys whose hashes collide are still told apart by their bytes), one mutex,
///   one table probe that reads the key inline (keys up to 15 bytes) next to its state, no
///   I/O, no allocation for a known key ([`allow_sync`](Self::allow_sync) allocates nothing;
///   the [`Decision`] of [`acquire_sync`](Self::acquire_sync) allocates its per-quota list).
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
    hasher: foldhash::fast::RandomState,
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

/// The hash of (policy name, key). UTF-8 never contains 0xFF, so the separator keeps every
/// (name, key) pair's byte string distinct.
fn hash_of(hasher: &foldhash::fast::RandomState, name: &str, key: &[u8]) -> u64 {
    let mut h = hasher.build_hasher();
    h.write(name.as_bytes());
    h.write_u8(0xff);
    h.write(key);
    h.finish()
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
                shard.table.len() as u64
            })
            .sum()
    }

    fn shard(&self, policy: &Policy, key: &[u8]) -> (u64, MutexGuard<'_, Shard>) {
        let h = hash_of(&self.hasher, policy.name(), key);
        // The tables use the low bits (bucket) and the top seven (tag) of the hash; the shard
        // is picked from bits in between so that neither is constant within a shard.
        let mid = (h >> 24) & 0xffff_ffff;
        let i = (mid * self.shards.len() as u64) >> 32;
        (h, lock(&self.shards[i as usize]))
    }

    fn rehash(&self) -> impl Fn(&Entry) -> u64 + '_ {
        |e| hash_of(&self.hasher, e.policy.name(), e.key.as_bytes())
    }

    /// Run `f` on the live entry of (policy, key) under its shard's lock, the entry made
    /// fresh when missing or idle (what every consuming operation starts with).
    #[inline]
    fn with_slot<R>(
        &self,
        key: &[u8],
        policy: &Policy,
        now: u64,
        f: impl FnOnce(&mut Entry) -> R,
    ) -> R {
        let (h, mut shard) = self.shard(policy, key);
        f(shard.slot(
            h,
            policy,
            Probe::new(key),
            now,
            self.per_shard,
            self.rehash(),
        ))
    }

    /// The decision, synchronously (what [`Store::acquire`](crate::Store::acquire) runs; no
    /// I/O, one shard lock).
    pub fn acquire_sync(&self, key: &str, policy: &Policy, cost: u64) -> Decision {
        let now = self.clock.now_micros();
        let key = key.as_bytes();
        let (allowed, verdicts) = self.with_slot(key, policy, now, |e| {
            e.states.with_mut(|s| match (s, policy.params()) {
                ([one], [q]) => {
                    let (allowed, v) = algorithm::decide_one(one, q, now, cost);
                    (allowed, Verdicts::One(v))
                }
                (s, _) => {
                    let (allowed, v) = algorithm::decide_aligned(s, policy, now, cost);
                    (allowed, Verdicts::Many(v))
                }
            })
        });
        Decision::from_verdicts(policy, allowed, verdicts.as_slice(), DecisionSource::Store)
    }

    /// Only whether a request of `cost` is admitted (consuming it if so), without building a
    /// [`Decision`]: no allocation at all for a known key. The same decision as
    /// [`acquire_sync`](Self::acquire_sync), for hot paths that need no headers or
    /// retry times.
    pub fn allow_sync(&self, key: &str, policy: &Policy, cost: u64) -> bool {
        let now = self.clock.now_micros();
        let key = key.as_bytes();
        self.with_slot(key, policy, now, |e| e.states.admit(policy, now, cost))
    }

    /// [`Store::peek`](crate::Store::peek), synchronously.
    pub fn peek_sync(&self, key: &str, policy: &Policy) -> Decision {
        let now = self.clock.now_micros();
        let key = key.as_bytes();
        let (allowed, verdicts) = {
            let (h, shard) = self.shard(policy, key);
            match shard.get(h, policy, Probe::new(key)) {
                Some(e) if !e.is_idle(now) => e.states.with(|s| algorithm::peek(s, policy, now)),
                _ => algorithm::peek(&[], policy, now),
            }
        };
        Decision::from_verdicts(policy, allowed, &verdicts, DecisionSource::Store)
    }

    /// [`Store::refund`](crate::Store::refund), synchronously.
    pub fn refund_sync(&self, key: &str, policy: &Policy, cost: u64) {
        let now = self.clock.now_micros();
        let key = key.as_bytes();
        let (h, mut shard) = self.shard(policy, key);
        if let Some(e) = shard.get_mut(h, policy, Probe::new(key)) {
            e.states.with_mut(|s| {
                if algorithm::is_aligned(s, policy) {
                    algorithm::refund_aligned(s, policy, now, cost);
                }
            });
        }
    }

    /// [`Store::reset`](crate::Store::reset), synchronously.
    pub fn reset_sync(&self, key: &str, policy: &Policy) {
        let key = key.as_bytes();
        let (h, mut shard) = self.shard(policy, key);
        shard.remove(h, policy, Probe::new(key));
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock()
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
            hasher: foldhash::fast::RandomState::default(),
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

    /// Forced hash collisions: entries stay apart, and removal and expiry keep the others
    /// reachable.
    #[test]
    fn colliding_hashes_stay_apart() {
        let policy = Policy::single("p", Algorithm::FixedWindow, Quota::per_minute(2)).unwrap();
        let other = Policy::single("q", Algorithm::FixedWindow, Quota::per_minute(2)).unwrap();
        let now = 1_700_006_400_000_000;
        let mut shard = Shard::default();
        let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
        for p in [&policy, &other] {
            for key in &keys {
                let e = shard.slot(7, p, Probe::new(key.as_bytes()), now, 1_000, |_| 7);
                assert!(
                    e.states
                        .with_mut(|s| algorithm::admit_aligned(s, p, now, 2)),
                    "{key}"
                );
            }
        }
        assert_eq!(shard.table.len(), 80);
        for p in [&policy, &other] {
            for key in &keys {
                let e = shard.get_mut(7, p, Probe::new(key.as_bytes())).unwrap();
                assert!(
                    !e.states
                        .with_mut(|s| algorithm::admit_aligned(s, p, now, 1)),
                    "{key} shares state"
                );
            }
        }
        let probe = |k: &'static str| Probe::new(k.as_bytes());
        shard.remove(7, &policy, probe("k0"));
        assert_eq!(shard.table.len(), 79);
        assert!(shard.get(7, &policy, probe("k0")).is_none());
        assert!(
            shard.get(7, &other, probe("k0")).is_some()
                && shard.get(7, &policy, probe("k1")).is_some()
        );
        // Everything idle past the horizon goes.
        shard.purge_expired(now + 61_000_000);
        assert_eq!(shard.table.len(), 0);
    }

    /// Keys longer than the inline buffer, and keys that differ only past it.
    #[test]
    fn long_keys_stay_apart() {
        let store = MemoryStore::builder()
            .clock(crate::FakeClock::new())
            .build();
        let policy = Policy::single("l", Algorithm::Gcra, Quota::per_minute(1)).unwrap();
        let base = "x".repeat(INLINE_KEY);
        let keys = [
            base.clone(),
            format!("{base}a"),
            format!("{base}b"),
            "x".repeat(INLINE_KEY - 1),
            "x\u{0}".to_owned(),
            "x".to_owned(),
            "ключ".to_owned(),
            String::new(),
        ];
        for k in &keys {
            assert!(store.allow_sync(k, &policy, 1), "{k}");
        }
        for k in &keys {
            assert!(!store.allow_sync(k, &policy, 1), "{k}");
        }
        assert_eq!(store.key_count(), keys.len() as u64);
    }
}
