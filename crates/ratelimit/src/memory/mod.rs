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
use crate::clock::{Clock, SystemClock};
use crate::decision::{Decision, DecisionSource};
use crate::error::Result;
use crate::lease::{LeaseOp, ReleaseOp};
use crate::quota::{Algorithm, Policy};

mod eviction;
mod key;
mod table;

use key::{KeyBuf, Probe, StoredKey};
use table::{Call, Form, KeyKind, List, Log, Shard, Word};

/// Default bound on the number of keys a [`MemoryStore`] keeps.
pub const DEFAULT_MAX_KEYS: u64 = 1_000_000;

const MAX_SHARDS: usize = 64;

/// Who a [`MemoryStore`] call is about: a text key (what every [`Store`](crate::Store)
/// takes), or an integer id, for applications that already hold one (a user or tenant
/// number) and need not format it.
///
/// **A memory-only fast path.** The [`Store`](crate::Store) trait takes text keys (what a
/// Redis key is made of), so ids stay off it: code written against `Store` or
/// [`RateLimiter`](crate::RateLimiter) moves to Redis by changing one constructor, and code
/// that calls `allow_sync(id, ..)` on a `MemoryStore` moves by formatting the id
/// (`format!("user:{id}")`) as well. An id saves formatting and 8 bytes per entry (16-byte
/// entries, governor's `usize` size).
///
/// Texts and ids are separate key spaces: `Subject::Id(7)` and `Subject::Text("7")` are two
/// subjects. Both convert with `Into`, so `store.allow_sync("user:7", …)` and
/// `store.allow_sync(7_u64, …)` both work.
///
/// ```
/// use palisade_ratelimit::{Algorithm, MemoryStore, Policy, Quota, Subject};
///
/// let store = MemoryStore::new();
/// let policy = Policy::single("api", Algorithm::Gcra, Quota::per_minute(1))?;
/// assert!(store.allow_sync(7_u64, &policy, 1));
/// assert!(!store.allow_sync(Subject::Id(7), &policy, 1));
/// assert!(store.allow_sync("7", &policy, 1)); // another subject
/// # Ok::<(), palisade_ratelimit::Error>(())
/// ```
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
/// behind its own short mutex (`parking_lot`: it spins briefly before parking, which is what a
/// critical section of a few dozen nanoseconds wants under contention), so decisions are
/// exact under any concurrency and keys of different shards never contend.
///
/// * **Bounded**: at most `max_keys` keys (default one million). A key whose state has
///   become equivalent to a fresh one (its GCRA arrival time or its window has passed, its
///   bucket is full again: every algorithm can tell from its own state) is dropped when its
///   shard needs room, so expiry never admits extra requests. When a shard is full of live
///   keys, the eighth whose states hold the fewest units is forgotten (soonest expiring
///   among equals): that gives those keys back what they had spent, so size `max_keys` above
///   the number of keys active within one period. A key that has spent its whole quota is
///   the last one forgotten, so flooding the store with new keys does not reset it.
/// * **Time**: the store's [`Clock`] drives both the algorithms and expiry, so a
///   [`FakeClock`](crate::FakeClock) controls everything in tests.
/// * **Cost**: one [foldhash](https://docs.rs/foldhash) of the key (with the policy name's
///   hash, computed once per policy), seeded at random per store (so which keys share a
///   shard or a probe sequence cannot be predicted from outside; keys whose hashes collide
///   are still told apart by their bytes), one mutex, two table probes (the policy's group,
///   then the key), no I/O, no allocation for a known key
///   (neither [`allow_sync`](Self::allow_sync) nor, for a single-quota policy, the
///   [`Decision`] of [`acquire_sync`](Self::acquire_sync) allocates).
/// * **Memory**: keys are grouped by policy, and each group keeps one table per state
///   shape, so an entry holds only the key and the states its policy needs: 24 bytes for a
///   single quota of GCRA, token bucket, fixed window or sliding-window counter (its state
///   packed in one word), 32 plus the states behind one pointer for several quotas, 72 for
///   a single sliding-window log (its list's handle, total and end times held in the entry)
///   plus 16 per logged microsecond.
///   That includes the key when it has at most 15 bytes (user ids, IPv4 addresses); longer
///   keys add one allocation. An integer id ([`Subject::Id`]) takes 8 bytes less: 16 bytes
///   for a single quota, the size of governor's `usize`-keyed entries. A state that
///   outgrows its word (a bucket missing 1,024 tokens or more, a sliding-window count past
///   its field) moves to the group's wide table, kept as a list of one quota (32 bytes, 24
///   with an id, plus the state behind one pointer), with the same decisions.
/// * **Policies**: a policy's keys are found by its name, algorithm and number of quotas,
///   and for the window algorithms also the periods (their states count windows of the
///   period). Replacing a policy by one that matches keeps every key's state (the new
///   limits apply from the next call); one that does not starts its keys fresh, and the old
///   states are dropped as they expire. The Redis store names its keys the same way.
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

/// The store's clock: the system clock called directly (it is on every decision's path),
/// or any other [`Clock`].
#[derive(Debug, Clone)]
enum TimeSource {
    System,
    Other(Arc<dyn Clock>),
}

impl TimeSource {
    #[inline]
    fn now(&self) -> u64 {
        match self {
            Self::System => SystemClock.now_micros(),
            Self::Other(clock) => clock.now_micros(),
        }
    }
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
        self.clock = TimeSource::Other(Arc::new(clock));
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
    use super::*;
    use crate::algorithm::QuotaState;
    use crate::quota::Quota;

    /// Keys of (text, id) held in wide form, summed over every shard and group.
    fn wide_keys(store: &MemoryStore) -> (usize, usize) {
        store.shards.iter().fold((0, 0), |(t, i), s| {
            let s = s.lock();
            let (dt, di) = s.groups.iter().fold((0, 0), |(t, i), g| {
                (t + g.text.lists.len(), i + g.ids.lists.len())
            });
            (t + dt, i + di)
        })
    }

    /// A one-word state that outgrows its word (a bucket missing 1,024 tokens or more or
    /// fuller than the capacity its group was made with, a sliding-window count past its
    /// field) moves to the wide table, and every decision before and after equals the
    /// algorithms'. (A fixed window's count never outgrows its field: a limit is at most one
    /// per microsecond of the period, and another period makes another group.)
    #[test]
    fn outgrown_words_move_to_the_wide_table() {
        use std::time::Duration;
        let single = |alg, q| Policy::single("w", alg, q).unwrap();
        let bucket = |q| single(Algorithm::TokenBucket, q);
        let burst = |b| bucket(Quota::per_hour(100_000).with_burst(b));
        let counter = |n| single(Algorithm::SlidingWindowCounter, Quota::per_hour(n));
        let cases = [
            (burst(5_000), burst(8_000), 700),
            (
                burst(5_000),
                bucket(Quota::new(1_000, Duration::from_millis(1))),
                700,
            ),
            (counter(1_000_000_000), counter(900_000_000), 1_500_000),
        ];
        for (first, later, cost) in cases {
            let alg = first.algorithm();
            let t0 = 1_700_000_000_000_000;
            let clock = crate::FakeClock::at_micros(t0);
            let store = MemoryStore::builder().clock(clock.clone()).build();
            let subjects = [Subject::Text("k"), Subject::Id(7), Subject::Text("late")];
            let mut model: Vec<Option<Vec<QuotaState>>> = vec![None; subjects.len()];
            // "late" first comes under `later`, into a group made with `first`'s layout
            // (groups are per shard: touch it once so its shard has the group).
            store.allow_sync("late", &first, 0);
            store.reset_sync("late", &first);
            for step in 0..8_u64 {
                let now = t0 + step * 10_000;
                clock.set_micros(now);
                let policy = if step < 4 { &first } else { &later };
                for (i, subject) in subjects.iter().enumerate() {
                    if i == 2 && step < 4 {
                        continue;
                    }
                    let states =
                        model[i].get_or_insert_with(|| algorithm::fresh_states(policy, now));
                    let (expected, verdicts) = algorithm::decide(states, policy, now, cost);
                    let got = if step % 2 == 0 {
                        store.allow_sync(*subject, policy, cost)
                    } else {
                        let d = store.acquire_sync(*subject, policy, cost);
                        assert_eq!(
                            d,
                            Decision::from_verdicts(expected, &verdicts, DecisionSource::Store),
                            "{alg} step {step} {subject:?}"
                        );
                        d.allowed
                    };
                    assert_eq!(got, expected, "{alg} step {step} {subject:?}");
                    let (peeked, verdicts) = algorithm::peek(states, policy, now);
                    assert_eq!(
                        store.peek_sync(*subject, policy),
                        Decision::from_verdicts(peeked, &verdicts, DecisionSource::Store),
                        "{alg} step {step} {subject:?}"
                    );
                }
            }
            let (text, ids) = wide_keys(&store);
            assert_eq!((text, ids), (2, 1), "{alg}: every key outgrew its word");
            // Refunds reach the moved states.
            store.refund_sync("k", &later, cost);
            let states = model[0].as_mut().unwrap();
            algorithm::refund(states, &later, clock.now_micros(), cost);
            let (peeked, verdicts) = algorithm::peek(states, &later, clock.now_micros());
            assert_eq!(
                store.peek_sync("k", &later),
                Decision::from_verdicts(peeked, &verdicts, DecisionSource::Store),
                "{alg} after a refund"
            );
            // Moved keys are forgotten like any other.
            store.reset_sync("k", &later);
            store.reset_sync(7_u64, &later);
            store.reset_sync("late", &later);
            assert_eq!(store.key_count(), 0, "{alg}");
        }
    }
}
