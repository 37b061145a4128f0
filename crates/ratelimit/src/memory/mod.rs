//! The in-memory backend: [`MemoryStore`]. Split by concern: `key` (how a key is kept),
//! `table` (how a policy group keeps its keys' states, generic over one small trait for
//! every algorithm), `eviction` (what a full shard forgets).

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::{Mutex, MutexGuard};

use crate::algorithm::{
    self, Admit, Decide, FixedWindow, Gcra, Op, Peek, Refund, SlidingCounter, TokenBucket,
};
use crate::clock::{Clock, TimeSource};
use crate::decision::{Decision, DecisionSource};
use crate::error::Result;
use crate::lease::{LeaseOp, ReleaseOp};
use crate::quota::{Algorithm, Policy};

mod eviction;
mod table;

use crate::key::{KeyBuf, Probe, StoredKey};
use table::{Call, Form, KeyKind, List, Log, Shard, Word};

/// Default bound on the number of keys a [`MemoryStore`] keeps.
pub const DEFAULT_MAX_KEYS: u64 = 1_000_000;

const MAX_SHARDS: usize = 64;

/// Who a [`MemoryStore`] call is about: a text key (what every [`Store`](crate::Store)
/// takes), or an integer id an application already holds (a user or tenant number), kept
/// unformatted in eight bytes. Both convert with `Into`; `Subject::Id(7)` and `"7"` are two
/// subjects.
///
/// **A memory-only fast path**: the [`Store`](crate::Store) trait takes text keys (what Redis
/// keys are made of), so code written against it or [`RateLimiter`](crate::RateLimiter)
/// moves to Redis by changing one constructor, while code passing ids to a `MemoryStore`
/// formats them as well (`format!("user:{id}")`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Subject<'a> {
    /// A text key, as [`Store`](crate::Store) calls pass it.
    Text(&'a str),
    /// An integer id, kept in eight bytes.
    Id(u64),
}

impl<'a> From<&'a str> for Subject<'a> {
    fn from(key: &'a str) -> Self {
        Self::Text(key)
    }
}

impl<'a> From<&'a String> for Subject<'a> {
    fn from(key: &'a String) -> Self {
        Self::Text(key)
    }
}

impl From<u64> for Subject<'_> {
    fn from(id: u64) -> Self {
        Self::Id(id)
    }
}

/// Counters in this process: per-key states in up to 64 sharded hash tables, each shard
/// behind its own short mutex (`parking_lot`, which spins briefly before parking), so
/// decisions are exact under any concurrency and keys of different shards never contend.
///
/// * **Bounded** to `max_keys` keys (default one million). A key whose state has become
///   equivalent to a fresh one is dropped when its shard needs room, so expiry never admits
///   extra requests. When a shard is full of live keys, the eighth whose states hold the
///   fewest units is forgotten, giving those keys back what they spent: size `max_keys`
///   above the number of keys active within one period. A key that has spent its whole
///   quota is forgotten last, so flooding the store with new keys does not reset it.
/// * **Time**: the store's [`Clock`] drives the algorithms and expiry alike.
/// * **Cost**: one [foldhash](https://docs.rs/foldhash) of the key, seeded at random per
///   store, one mutex, two table probes, no I/O; no allocation for a known key in
///   [`allow_sync`](Self::allow_sync), nor in [`acquire_sync`](Self::acquire_sync) for a
///   single-quota policy.
/// * **Memory**: an entry holds the key and the states its policy needs, 24 bytes for a
///   single quota of any algorithm but the sliding-window log with a key of up to 15 bytes
///   (16 with a [`Subject::Id`]); the guide (`docs/ratelimit.md`) gives every layout.
/// * **Policies**: replacing a policy by one of the same name, algorithm, number of quotas
///   and (for the window algorithms) periods keeps its keys' states; any other starts them
///   fresh, as the Redis store's key names do.
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
    clock: TimeSource,
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
            clock: TimeSource::System,
        }
    }

    /// Keys currently held (expired keys are dropped first).
    pub fn key_count(&self) -> u64 {
        let now = self.clock.now();
        self.shards
            .iter()
            .map(|s| {
                let mut shard = s.lock();
                shard.purge_expired(now);
                shard.len() as u64
            })
            .sum()
    }

    /// The store's hash of (policy name, key): the policy's fixed name hash, then the key.
    #[inline]
    fn hash<K: StoredKey>(&self, name_hash: u64, key: K::Probe<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u64(name_hash);
        K::write(key, &mut h);
        h.finish()
    }

    /// The hash of (policy, key) and its shard, locked.
    #[inline]
    fn shard<K: StoredKey>(
        &self,
        policy: &Policy,
        key: K::Probe<'_>,
    ) -> (u64, MutexGuard<'_, Shard>) {
        let h = self.hash::<K>(policy.name_hash(), key);
        // The tables use the low bits (bucket) and the top seven (tag) of the hash; the shard
        // is picked from bits in between so that neither is constant within a shard.
        let mid = (h >> 24) & 0xffff_ffff;
        let i = (mid * self.shards.len() as u64) >> 32;
        (h, self.shards[i as usize].lock())
    }

    /// Runs `op` on the states of `subject` under `policy`, with the key form of the
    /// subject's kind and the state form of the policy's algorithm and number of quotas. A
    /// key not held is made fresh at `fresh` when given, else left alone (`None`).
    #[inline]
    fn call<O: Op>(
        &self,
        subject: Subject<'_>,
        policy: &Policy,
        fresh: Option<u64>,
        op: O,
    ) -> Option<O::Out> {
        match subject {
            Subject::Text(t) => {
                self.call_as::<KeyBuf, O>(Probe::new(t.as_bytes()), policy, fresh, op)
            }
            Subject::Id(id) => self.call_as::<u64, O>(id, policy, fresh, op),
        }
    }

    #[inline]
    fn call_as<K: KeyKind, O: Op>(
        &self,
        key: K::Probe<'_>,
        policy: &Policy,
        fresh: Option<u64>,
        op: O,
    ) -> Option<O::Out> {
        if policy.params().len() != 1 {
            return self.run::<K, List, O>(key, policy, fresh, op);
        }
        match policy.algorithm() {
            Algorithm::Gcra => self.run::<K, Word<Gcra>, O>(key, policy, fresh, op),
            Algorithm::TokenBucket => self.run::<K, Word<TokenBucket>, O>(key, policy, fresh, op),
            Algorithm::FixedWindow => self.run::<K, Word<FixedWindow>, O>(key, policy, fresh, op),
            Algorithm::SlidingWindowCounter => {
                self.run::<K, Word<SlidingCounter>, O>(key, policy, fresh, op)
            }
            Algorithm::SlidingWindowLog => self.run::<K, Log, O>(key, policy, fresh, op),
        }
    }

    /// One form's call, straight-line from the hash to the unlock (each form's copy keeps
    /// its values in registers; a lock shared by the forms before the dispatch cost a few
    /// instructions per call).
    #[inline]
    fn run<K: KeyKind, F: Form, O: Op>(
        &self,
        key: K::Probe<'_>,
        policy: &Policy,
        fresh: Option<u64>,
        op: O,
    ) -> Option<O::Out> {
        let (h, mut shard) = self.shard::<K>(policy, key);
        let name_hash = policy.name_hash();
        let rehash = |k: &K| self.hash::<K>(name_hash, k.probe());
        let fresh = fresh.map(|now| (now, self.per_shard));
        shard.run::<K, F, O>(Call { h, policy, rehash }, key, fresh, op)
    }

    /// [`call`](Self::call) on states made fresh when missing: it always answers.
    #[inline]
    fn call_fresh<O: Op>(&self, subject: Subject<'_>, policy: &Policy, now: u64, op: O) -> O::Out {
        self.call(subject, policy, Some(now), op)
            .unwrap_or_else(|| unreachable!("a key not held is made fresh"))
    }

    fn forget<K: KeyKind>(&self, key: K::Probe<'_>, policy: &Policy) {
        let (h, mut shard) = self.shard::<K>(policy, key);
        shard.remove::<K>(h, policy, key);
    }

    /// The decision, synchronously (what [`Store::acquire`](crate::Store::acquire) runs; no
    /// I/O, one shard lock). `subject` is a text key or an integer id ([`Subject`]).
    #[inline]
    pub fn acquire_sync<'k>(
        &self,
        subject: impl Into<Subject<'k>>,
        policy: &Policy,
        cost: u64,
    ) -> Decision {
        let now = self.clock.now();
        self.call_fresh(subject.into(), policy, now, Decide { now, cost })
    }

    /// Only whether a request of `cost` is admitted (consuming it if so), without building a
    /// [`Decision`]: no allocation at all for a known key. The same decision as
    /// [`acquire_sync`](Self::acquire_sync), for hot paths that need no headers or
    /// retry times.
    #[inline]
    pub fn allow_sync<'k>(
        &self,
        subject: impl Into<Subject<'k>>,
        policy: &Policy,
        cost: u64,
    ) -> bool {
        let now = self.clock.now();
        self.call_fresh(subject.into(), policy, now, Admit { now, cost })
    }

    /// [`Store::peek`](crate::Store::peek), synchronously.
    pub fn peek_sync<'k>(&self, subject: impl Into<Subject<'k>>, policy: &Policy) -> Decision {
        let now = self.clock.now();
        self.call(subject.into(), policy, None, Peek { now })
            .unwrap_or_else(|| {
                let (allowed, v) = algorithm::peek(&[], policy, now);
                Decision::from_verdicts(allowed, &v, DecisionSource::Store)
            })
    }

    /// [`Store::refund`](crate::Store::refund), synchronously.
    pub fn refund_sync<'k>(&self, subject: impl Into<Subject<'k>>, policy: &Policy, cost: u64) {
        let now = self.clock.now();
        self.call(subject.into(), policy, None, Refund { now, cost });
    }

    /// [`Store::lease`](crate::Store::lease), synchronously (one shard lock).
    pub fn lease_sync<'k>(
        &self,
        subject: impl Into<Subject<'k>>,
        policy: &Policy,
        request: &crate::lease::LeaseRequest,
    ) -> crate::lease::Lease {
        let now = self.clock.now();
        self.call_fresh(subject.into(), policy, now, LeaseOp { now, request })
    }

    /// [`Store::release`](crate::Store::release), synchronously.
    pub fn release_sync<'k>(
        &self,
        subject: impl Into<Subject<'k>>,
        policy: &Policy,
        units: u64,
        granted_at: u64,
    ) {
        let now = self.clock.now();
        let op = ReleaseOp {
            now,
            units,
            granted_at,
        };
        self.call(subject.into(), policy, None, op);
    }

    /// [`Store::reset`](crate::Store::reset), synchronously: forgets the subject's states
    /// under `policy`. States kept under another form of the policy's name (another
    /// algorithm, number of quotas, or a window algorithm's period) stay until they expire,
    /// as the Redis store's keys of that form do.
    pub fn reset_sync<'k>(&self, subject: impl Into<Subject<'k>>, policy: &Policy) {
        match subject.into() {
            Subject::Text(t) => self.forget::<KeyBuf>(Probe::new(t.as_bytes()), policy),
            Subject::Id(id) => self.forget::<u64>(id, policy),
        }
    }
}

/// Builds a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    max_keys: u64,
    clock: TimeSource,
}

impl MemoryStoreBuilder {
    /// At most this many keys (default [`DEFAULT_MAX_KEYS`]).
    #[must_use]
    pub fn max_keys(mut self, max_keys: u64) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// The clock (default [`SystemClock`](crate::SystemClock)); tests pass a
    /// [`FakeClock`](crate::FakeClock).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = TimeSource::of(clock);
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
    async fn lease(
        &self,
        key: &str,
        policy: &Policy,
        request: &crate::lease::LeaseRequest,
    ) -> Result<crate::lease::Lease> {
        Ok(self.lease_sync(key, policy, request))
    }
    async fn release(&self, key: &str, policy: &Policy, units: u64, granted_at: u64) -> Result<()> {
        self.release_sync(key, policy, units, granted_at);
        Ok(())
    }
    fn backend_name(&self) -> &'static str {
        "memory"
    }
    fn acquire_now(&self, key: &str, policy: &Policy, cost: u64) -> Option<Result<Decision>> {
        Some(Ok(self.acquire_sync(key, policy, cost)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::quota::Quota;

    /// A one-word state that outgrows its word (a bucket missing 1,024 tokens or more or
    /// fuller than the capacity its group was made with, a sliding-window count past its
    /// field) moves to the wide table. (A fixed window's count never outgrows its field.)
    /// `tests/memory.rs` drives the same keys through the public calls and checks every
    /// decision against the algorithms.
    #[test]
    fn outgrown_words_move_to_the_wide_table() {
        let single = |alg, q| Policy::single("w", alg, q).unwrap();
        let bucket = |q| single(Algorithm::TokenBucket, q);
        let burst = |b| bucket(Quota::per_hour(100_000).with_burst(b));
        let counter = |n| single(Algorithm::SlidingWindowCounter, Quota::per_hour(n));
        let fast = bucket(Quota::new(1_000, Duration::from_millis(1)));
        let cases = [
            (burst(5_000), burst(8_000), 700),
            (burst(5_000), fast, 700),
            (counter(1_000_000_000), counter(900_000_000), 1_500_000),
        ];
        for (first, later, cost) in cases {
            let t0 = 1_700_000_000_000_000;
            let clock = crate::FakeClock::at_micros(t0);
            let store = MemoryStore::builder().clock(clock.clone()).build();
            // "late" first comes under `later`, into its shard's group made with `first`.
            store.allow_sync("late", &first, 0);
            store.reset_sync("late", &first);
            for step in 0..8_u64 {
                clock.set_micros(t0 + step * 10_000);
                let policy = if step < 4 { &first } else { &later };
                let subjects = [Subject::Text("k"), Subject::Id(7), Subject::Text("late")];
                for subject in &subjects[..if step < 4 { 2 } else { 3 }] {
                    let _ = match step % 2 {
                        0 => store.allow_sync(*subject, policy, cost),
                        _ => store.acquire_sync(*subject, policy, cost).allowed,
                    };
                }
            }
            // Keys of (text, id) held in wide form.
            let (mut text, mut ids) = (0, 0);
            for shard in store.shards.iter() {
                for g in &shard.lock().groups {
                    (text, ids) = (text + g.text.lists.len(), ids + g.ids.lists.len());
                }
            }
            let alg = first.algorithm();
            assert_eq!((text, ids), (2, 1), "{alg}: every key outgrew its word");
        }
    }
}
