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
use crate::quota::{Algorithm, Policy};

/// Default bound on the number of keys a [`MemoryStore`] keeps.
pub const DEFAULT_MAX_KEYS: u64 = 1_000_000;

const MAX_SHARDS: usize = 64;

/// How a policy's keys are kept: each shape has its own table in every shard, so that an
/// entry is no larger than its policy needs (a GCRA key is half a cache line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Gcra,
    Pair,
    Counter,
    List,
}

impl Shape {
    fn of(policy: &Policy) -> Self {
        if policy.params().len() != 1 {
            return Self::List;
        }
        match policy.algorithm() {
            Algorithm::Gcra => Self::Gcra,
            Algorithm::TokenBucket | Algorithm::FixedWindow => Self::Pair,
            Algorithm::SlidingWindowCounter => Self::Counter,
            Algorithm::SlidingWindowLog => Self::List,
        }
    }
}

/// `$store.$method::<S>(args)` with `S` the state type of `$policy`'s [`Shape`].
macro_rules! by_shape {
    ($policy:expr, $store:ident . $method:ident ( $($arg:expr),* )) => {
        match Shape::of($policy) {
            Shape::Gcra => $store.$method::<GcraState>($($arg),*),
            Shape::Pair => $store.$method::<PairState>($($arg),*),
            Shape::Counter => $store.$method::<CounterState>($($arg),*),
            Shape::List => $store.$method::<ListState>($($arg),*),
        }
    };
}

/// One shape of a key's states, read with the policy its entry holds (which has that shape).
trait Packed: Sized + std::fmt::Debug {
    /// Aligns [`Entry`] so that no entry of this shape straddles two cache lines when its
    /// size divides 64 (the table aligns its buckets to the entry's alignment).
    type Align: std::fmt::Debug;
    fn table(shard: &Shard) -> &HashTable<Entry<Self>>;
    fn table_mut(shard: &mut Shard) -> &mut HashTable<Entry<Self>>;
    fn fresh(policy: &Policy, now: u64) -> Self;
    fn with<R>(&self, algorithm: Algorithm, f: impl FnOnce(&[QuotaState]) -> R) -> R;
    fn with_mut<R>(&mut self, algorithm: Algorithm, f: impl FnOnce(&mut [QuotaState]) -> R) -> R;
    /// [`algorithm::admit_aligned`] on the packed fields.
    fn admit(&mut self, policy: &Policy, now: u64, cost: u64) -> bool;
}

/// Zero-sized: gives an entry of four words the alignment of its size.
#[derive(Debug)]
#[repr(align(32))]
struct Align32;

/// A single GCRA quota: the theoretical arrival time.
#[derive(Debug, Default)]
struct GcraState(u64);

/// A single token bucket `(tokens, last)` or fixed window `(window, count)`.
#[derive(Debug, Default)]
struct PairState(u64, u64);

/// A single sliding-window counter `(window, prev, curr)`.
#[derive(Debug, Default)]
struct CounterState(u64, u64, u64);

/// Several quotas, or a sliding-window log, behind one pointer.
#[derive(Debug)]
struct ListState(Box<[QuotaState]>);

/// A single quota's state packed in words, read as the algorithms' type with the entry
/// policy's algorithm (a pair is a token bucket or a fixed window as that says).
trait Words: Sized + Default {
    fn unpack(&self, algorithm: Algorithm) -> QuotaState;
    /// `None` for a state of another shape (which a policy of this shape never makes).
    fn pack(state: QuotaState) -> Option<Self>;

    /// The only fresh state of a single-quota policy (its shape guarantees one).
    fn fresh_words(policy: &Policy, now: u64) -> Self {
        let mut v = algorithm::fresh_states(policy, now);
        v.pop().and_then(Self::pack).unwrap_or_default()
    }

    /// Runs `f` on the unpacked state and packs back what it leaves.
    fn with_words_mut<R>(
        &mut self,
        algorithm: Algorithm,
        f: impl FnOnce(&mut [QuotaState]) -> R,
    ) -> R {
        let mut one = [self.unpack(algorithm)];
        let r = f(&mut one);
        let [one] = one;
        if let Some(packed) = Self::pack(one) {
            *self = packed;
        }
        r
    }
}

impl Words for GcraState {
    fn unpack(&self, _: Algorithm) -> QuotaState {
        QuotaState::Gcra { tat: self.0 }
    }
    fn pack(state: QuotaState) -> Option<Self> {
        match state {
            QuotaState::Gcra { tat } => Some(Self(tat)),
            _ => None,
        }
    }
}

impl Words for PairState {
    fn unpack(&self, algorithm: Algorithm) -> QuotaState {
        let Self(a, b) = *self;
        match algorithm {
            Algorithm::TokenBucket => QuotaState::TokenBucket { tokens: a, last: b },
            _ => QuotaState::FixedWindow {
                window: a,
                count: b,
            },
        }
    }
    fn pack(state: QuotaState) -> Option<Self> {
        match state {
            QuotaState::TokenBucket { tokens, last } => Some(Self(tokens, last)),
            QuotaState::FixedWindow { window, count } => Some(Self(window, count)),
            _ => None,
        }
    }
}

impl Words for CounterState {
    fn unpack(&self, _: Algorithm) -> QuotaState {
        let Self(window, prev, curr) = *self;
        QuotaState::SlidingWindowCounter { window, prev, curr }
    }
    fn pack(state: QuotaState) -> Option<Self> {
        match state {
            QuotaState::SlidingWindowCounter { window, prev, curr } => {
                Some(Self(window, prev, curr))
            }
            _ => None,
        }
    }
}

impl Packed for GcraState {
    type Align = Align32;
    fn table(shard: &Shard) -> &HashTable<Entry<Self>> {
        &shard.gcra
    }
    fn table_mut(shard: &mut Shard) -> &mut HashTable<Entry<Self>> {
        &mut shard.gcra
    }
    fn fresh(policy: &Policy, now: u64) -> Self {
        Self::fresh_words(policy, now)
    }
    fn with<R>(&self, algorithm: Algorithm, f: impl FnOnce(&[QuotaState]) -> R) -> R {
        f(&[self.unpack(algorithm)])
    }
    fn with_mut<R>(&mut self, algorithm: Algorithm, f: impl FnOnce(&mut [QuotaState]) -> R) -> R {
        self.with_words_mut(algorithm, f)
    }
    fn admit(&mut self, policy: &Policy, now: u64, cost: u64) -> bool {
        match policy.params() {
            [q] => algorithm::gcra_take(&mut self.0, q, now, cost),
            _ => false,
        }
    }
}

impl Packed for PairState {
    type Align = u64;
    fn table(shard: &Shard) -> &HashTable<Entry<Self>> {
        &shard.pair
    }
    fn table_mut(shard: &mut Shard) -> &mut HashTable<Entry<Self>> {
        &mut shard.pair
    }
    fn fresh(policy: &Policy, now: u64) -> Self {
        Self::fresh_words(policy, now)
    }
    fn with<R>(&self, algorithm: Algorithm, f: impl FnOnce(&[QuotaState]) -> R) -> R {
        f(&[self.unpack(algorithm)])
    }
    fn with_mut<R>(&mut self, algorithm: Algorithm, f: impl FnOnce(&mut [QuotaState]) -> R) -> R {
        self.with_words_mut(algorithm, f)
    }
    fn admit(&mut self, policy: &Policy, now: u64, cost: u64) -> bool {
        let [q] = policy.params() else {
            return false;
        };
        let Self(a, b) = self;
        match policy.algorithm() {
            Algorithm::TokenBucket => algorithm::tb_take(a, b, q, now, cost),
            _ => algorithm::fw_take(a, b, q, now, cost),
        }
    }
}

impl Packed for CounterState {
    type Align = u64;
    fn table(shard: &Shard) -> &HashTable<Entry<Self>> {
        &shard.counter
    }
    fn table_mut(shard: &mut Shard) -> &mut HashTable<Entry<Self>> {
        &mut shard.counter
    }
    fn fresh(policy: &Policy, now: u64) -> Self {
        Self::fresh_words(policy, now)
    }
    fn with<R>(&self, algorithm: Algorithm, f: impl FnOnce(&[QuotaState]) -> R) -> R {
        f(&[self.unpack(algorithm)])
    }
    fn with_mut<R>(&mut self, algorithm: Algorithm, f: impl FnOnce(&mut [QuotaState]) -> R) -> R {
        self.with_words_mut(algorithm, f)
    }
    fn admit(&mut self, policy: &Policy, now: u64, cost: u64) -> bool {
        let [q] = policy.params() else {
            return false;
        };
        let Self(window, prev, curr) = self;
        algorithm::swc_take(window, prev, curr, q, now, cost)
    }
}

impl Packed for ListState {
    type Align = u64;
    fn table(shard: &Shard) -> &HashTable<Entry<Self>> {
        &shard.list
    }
    fn table_mut(shard: &mut Shard) -> &mut HashTable<Entry<Self>> {
        &mut shard.list
    }
    fn fresh(policy: &Policy, now: u64) -> Self {
        Self(algorithm::fresh_states(policy, now).into_boxed_slice())
    }
    fn with<R>(&self, _: Algorithm, f: impl FnOnce(&[QuotaState]) -> R) -> R {
        f(&self.0)
    }
    fn with_mut<R>(&mut self, _: Algorithm, f: impl FnOnce(&mut [QuotaState]) -> R) -> R {
        f(&mut self.0)
    }
    fn admit(&mut self, policy: &Policy, now: u64, cost: u64) -> bool {
        algorithm::admit_aligned(&mut self.0, policy, now, cost)
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
/// key is padded with 0xFF and compared as a whole.
#[derive(Debug)]
enum KeyBuf {
    Inline([u8; INLINE_KEY]),
    Heap(Box<Box<[u8]>>),
}

/// A short key padded with 0xFF to 15 bytes, as two little-endian words: bytes 0..8 and 7..15
/// (they overlap, so that together they cover all 15). Built in registers, without copying
/// the key into a buffer first: a buffer written byte by byte and read back as words stalls
/// the CPU's store forwarding, which cost more than the rest of the lookup of a known key.
#[derive(Clone, Copy, PartialEq, Eq)]
struct ShortKey(u64, u64);

impl ShortKey {
    fn new(key: &[u8]) -> Self {
        let n = key.len();
        Self(
            le_padded(key.get(..n.min(8)).unwrap_or_default()),
            le_padded(key.get(n.min(7)..).unwrap_or_default()),
        )
    }

    fn of_inline(b: &[u8; INLINE_KEY]) -> Self {
        let [
            b0,
            b1,
            b2,
            b3,
            b4,
            b5,
            b6,
            b7,
            b8,
            b9,
            b10,
            b11,
            b12,
            b13,
            b14,
        ] = *b;
        Self(
            u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
            u64::from_le_bytes([b7, b8, b9, b10, b11, b12, b13, b14]),
        )
    }

    fn to_inline(self) -> [u8; INLINE_KEY] {
        let [b0, b1, b2, b3, b4, b5, b6, b7] = self.0.to_le_bytes();
        let [_, b8, b9, b10, b11, b12, b13, b14] = self.1.to_le_bytes();
        [
            b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14,
        ]
    }
}

/// Up to the first eight bytes as a little-endian word, padded with 0xFF.
fn le_padded(bytes: &[u8]) -> u64 {
    let n = bytes.len();
    let word = if let Some(all) = bytes.first_chunk::<8>() {
        return u64::from_le_bytes(*all);
    } else if let (Some(a), Some(b)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        // 4..8 bytes: two overlapping reads agree on the bytes they share.
        u64::from(u32::from_le_bytes(*a)) | (u64::from(u32::from_le_bytes(*b)) << (8 * (n - 4)))
    } else if let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) {
        // 1..4 bytes: first, middle and last cover them all.
        let mid = bytes.get(n / 2).copied().unwrap_or(first);
        u64::from(first) | (u64::from(mid) << (8 * (n / 2))) | (u64::from(last) << (8 * (n - 1)))
    } else {
        return u64::MAX;
    };
    word | (u64::MAX << (8 * n))
}

/// A looked-up key, put in inline form once per call when short.
#[derive(Clone, Copy)]
enum Probe<'a> {
    Short(ShortKey),
    Long(&'a [u8]),
}

impl<'a> Probe<'a> {
    fn new(key: &'a [u8]) -> Self {
        if key.len() <= INLINE_KEY {
            Self::Short(ShortKey::new(key))
        } else {
            Self::Long(key)
        }
    }
}

impl KeyBuf {
    fn new(key: Probe<'_>) -> Self {
        match key {
            Probe::Short(k) => Self::Inline(k.to_inline()),
            Probe::Long(k) => Self::Heap(Box::new(k.into())),
        }
    }

    fn matches(&self, key: Probe<'_>) -> bool {
        match (self, key) {
            (Self::Inline(a), Probe::Short(b)) => ShortKey::of_inline(a) == b,
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
/// usual call passes that same object, so identity is a pointer comparison, and it says how
/// to read the packed state.
#[derive(Debug)]
struct Entry<S: Packed> {
    _align: [S::Align; 0],
    policy: Policy,
    key: KeyBuf,
    state: S,
}

// A GCRA entry is half a cache line, and never straddles two.
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<Entry<GcraState>>() == 32);
    assert!(std::mem::align_of::<Entry<GcraState>>() == 32);
    assert!(std::mem::size_of::<Entry<PairState>>() == 40);
};

impl<S: Packed> Entry<S> {
    fn is(&self, policy: &Policy, key: Probe<'_>) -> bool {
        self.key.matches(key) && (self.policy.same(policy) || self.policy.name() == policy.name())
    }

    /// When the state turns equivalent to a fresh one, and what it holds at `now`.
    fn expiry(&self, now: u64) -> (u64, u64) {
        let policy = &self.policy;
        self.state.with(policy.algorithm(), |s| {
            algorithm::expiry(s, policy.params(), now)
        })
    }

    /// Whether `policy` reads this entry's state as it is: same algorithm, as many quotas.
    fn is_aligned(&self, policy: &Policy) -> bool {
        self.policy.same(policy)
            || (self.policy.algorithm() == policy.algorithm()
                && self.policy.params().len() == policy.params().len())
    }
}

/// One shard's entries, one table per [`Shape`], found by the store's hash of (policy name,
/// key) and told apart by comparing both, so two keys whose hashes collide still never share
/// state.
#[derive(Debug, Default)]
struct Shard {
    gcra: HashTable<Entry<GcraState>>,
    pair: HashTable<Entry<PairState>>,
    counter: HashTable<Entry<CounterState>>,
    list: HashTable<Entry<ListState>>,
}

impl Shard {
    fn len(&self) -> usize {
        self.gcra.len() + self.pair.len() + self.counter.len() + self.list.len()
    }

    fn get<S: Packed>(&self, h: u64, policy: &Policy, key: Probe<'_>) -> Option<&Entry<S>> {
        S::table(self).find(h, |e| e.is(policy, key))
    }

    fn get_mut<S: Packed>(
        &mut self,
        h: u64,
        policy: &Policy,
        key: Probe<'_>,
    ) -> Option<&mut Entry<S>> {
        S::table_mut(self).find_mut(h, |e| e.is(policy, key))
    }

    /// Forget (policy name, key) in every table: a policy changed under the same name may
    /// have left it in another shape's.
    fn remove(&mut self, h: u64, policy: &Policy, key: Probe<'_>) {
        fn rm<S: Packed>(t: &mut HashTable<Entry<S>>, h: u64, policy: &Policy, key: Probe<'_>) {
            if let Ok(e) = t.find_entry(h, |e| e.is(policy, key)) {
                e.remove();
            }
        }
        rm(&mut self.gcra, h, policy, key);
        rm(&mut self.pair, h, policy, key);
        rm(&mut self.counter, h, policy, key);
        rm(&mut self.list, h, policy, key);
    }

    /// Runs `f` on the entry for (policy, key), made fresh when missing or left by a policy
    /// of another algorithm or number of quotas under the same name. `rehash` gives an
    /// entry's hash again when the table grows.
    #[allow(clippy::too_many_arguments)]
    fn with_slot<S: Packed, R>(
        &mut self,
        h: u64,
        policy: &Policy,
        key: Probe<'_>,
        now: u64,
        cap: usize,
        rehash: impl Fn(&Entry<S>) -> u64,
        f: impl FnOnce(&mut Entry<S>) -> R,
    ) -> R {
        if let Ok(found) = S::table_mut(self).find_entry(h, |e| e.is(policy, key)) {
            let e = found.into_mut();
            if !e.policy.same(policy) {
                // Another object under the same name: start over if it reads the state
                // differently, and follow it from now on.
                if !e.is_aligned(policy) {
                    e.state = S::fresh(policy, now);
                }
                e.policy = policy.clone();
            }
            return f(e);
        }
        self.remove(h, policy, key);
        if self.len() >= cap {
            self.evict(now, cap);
        }
        let entry = Entry {
            _align: [],
            policy: policy.clone(),
            key: KeyBuf::new(key),
            state: S::fresh(policy, now),
        };
        f(S::table_mut(self)
            .insert_unique(h, entry, rehash)
            .into_mut())
    }

    /// `(expires_at, holds)` at `now` of every entry.
    fn expiries(&self, now: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        (self.gcra.iter().map(move |e| e.expiry(now)))
            .chain(self.pair.iter().map(move |e| e.expiry(now)))
            .chain(self.counter.iter().map(move |e| e.expiry(now)))
            .chain(self.list.iter().map(move |e| e.expiry(now)))
    }

    /// Keep the entries for which `keep(expires_at, holds)` (at `now`) says so.
    fn retain(&mut self, now: u64, mut keep: impl FnMut(u64, u64) -> bool) {
        let mut keep = |(at, held)| keep(at, held);
        self.gcra.retain(|e| keep(e.expiry(now)));
        self.pair.retain(|e| keep(e.expiry(now)));
        self.counter.retain(|e| keep(e.expiry(now)));
        self.list.retain(|e| keep(e.expiry(now)));
    }

    fn purge_expired(&mut self, now: u64) {
        self.retain(now, |at, _| at > now);
    }

    /// Drop every expired entry; if the shard is still full, drop the eighth whose states
    /// hold least (soonest expiring among equals): what forgetting gives back least. A key
    /// that has spent its quota is the last one forgotten.
    fn evict(&mut self, now: u64, cap: usize) {
        self.purge_expired(now);
        if self.len() < cap {
            return;
        }
        let mut ranks: Vec<(u64, u64)> = self.expiries(now).map(|(at, held)| (held, at)).collect();
        let drop_n = (ranks.len() / 8).max(1);
        let (_, cutoff, _) = ranks.select_nth_unstable(drop_n - 1);
        let cutoff = *cutoff;
        let mut left = drop_n;
        self.retain(now, |at, held| {
            if left > 0 && (held, at) <= cutoff {
                left -= 1;
                false
            } else {
                true
            }
        });
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
/// * **Cost**: one [foldhash](https://docs.rs/foldhash) of policy name and key, seeded at
///   random per store (so which keys share a shard or a probe sequence cannot be predicted
///   from outside; keys whose hashes collide are still told apart by their bytes), one mutex,
///   one table probe, no I/O, no allocation for a known key
///   ([`allow_sync`](Self::allow_sync) allocates nothing; the [`Decision`] of
///   [`acquire_sync`](Self::acquire_sync) allocates its per-quota list).
/// * **Memory**: each shard keeps one table per state shape, so an entry is no larger than
///   its policy needs: 32 bytes for a single GCRA quota (half a cache line), 40 for a token
///   bucket or fixed window, 48 for a sliding-window counter, 40 plus the states for several
///   quotas or a sliding-window log. That includes the key when it has at most 15 bytes
///   (user ids, IPv4 addresses); longer keys add one allocation.
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

    /// Keys currently held (expired keys are dropped first).
    pub fn key_count(&self) -> u64 {
        let now = self.clock.now_micros();
        self.shards
            .iter()
            .map(|s| {
                let mut shard = s.lock();
                shard.purge_expired(now);
                shard.len() as u64
            })
            .sum()
    }

    fn shard(&self, policy: &Policy, key: &[u8]) -> (u64, MutexGuard<'_, Shard>) {
        let h = hash_of(&self.hasher, policy.name(), key);
        // The tables use the low bits (bucket) and the top seven (tag) of the hash; the shard
        // is picked from bits in between so that neither is constant within a shard.
        let mid = (h >> 24) & 0xffff_ffff;
        let i = (mid * self.shards.len() as u64) >> 32;
        (h, self.shards[i as usize].lock())
    }

    fn rehash<S: Packed>(&self) -> impl Fn(&Entry<S>) -> u64 + '_ {
        |e| hash_of(&self.hasher, e.policy.name(), e.key.as_bytes())
    }

    /// Run `f` on the entry of (policy, key) in the table of shape `S` under its shard's
    /// lock, the entry made when missing (what every consuming operation starts with).
    #[inline]
    fn with_slot<S: Packed, R>(
        &self,
        key: &[u8],
        policy: &Policy,
        now: u64,
        f: impl FnOnce(&mut Entry<S>) -> R,
    ) -> R {
        let (h, mut shard) = self.shard(policy, key);
        shard.with_slot(
            h,
            policy,
            Probe::new(key),
            now,
            self.per_shard,
            self.rehash(),
            f,
        )
    }

    /// The decision, synchronously (what [`Store::acquire`](crate::Store::acquire) runs; no
    /// I/O, one shard lock).
    pub fn acquire_sync(&self, key: &str, policy: &Policy, cost: u64) -> Decision {
        by_shape!(policy, self.acquire_in(key, policy, cost))
    }

    fn acquire_in<S: Packed>(&self, key: &str, policy: &Policy, cost: u64) -> Decision {
        let now = self.clock.now_micros();
        let (allowed, verdicts) = self.with_slot::<S, _>(key.as_bytes(), policy, now, |e| {
            e.state
                .with_mut(policy.algorithm(), |s| match (s, policy.params()) {
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
        by_shape!(policy, self.allow_in(key, policy, cost))
    }

    #[inline]
    fn allow_in<S: Packed>(&self, key: &str, policy: &Policy, cost: u64) -> bool {
        let now = self.clock.now_micros();
        self.with_slot::<S, _>(key.as_bytes(), policy, now, |e| {
            e.state.admit(policy, now, cost)
        })
    }

    /// [`Store::peek`](crate::Store::peek), synchronously.
    pub fn peek_sync(&self, key: &str, policy: &Policy) -> Decision {
        by_shape!(policy, self.peek_in(key, policy))
    }

    fn peek_in<S: Packed>(&self, key: &str, policy: &Policy) -> Decision {
        let now = self.clock.now_micros();
        let key = key.as_bytes();
        let (allowed, verdicts) = {
            let (h, shard) = self.shard(policy, key);
            match shard.get::<S>(h, policy, Probe::new(key)) {
                // `peek` reads states of another algorithm or count as fresh.
                Some(e) => e
                    .state
                    .with(e.policy.algorithm(), |s| algorithm::peek(s, policy, now)),
                None => algorithm::peek(&[], policy, now),
            }
        };
        Decision::from_verdicts(policy, allowed, &verdicts, DecisionSource::Store)
    }

    /// [`Store::refund`](crate::Store::refund), synchronously.
    pub fn refund_sync(&self, key: &str, policy: &Policy, cost: u64) {
        by_shape!(policy, self.refund_in(key, policy, cost));
    }

    fn refund_in<S: Packed>(&self, key: &str, policy: &Policy, cost: u64) {
        let now = self.clock.now_micros();
        let key = key.as_bytes();
        let (h, mut shard) = self.shard(policy, key);
        if let Some(e) = shard.get_mut::<S>(h, policy, Probe::new(key))
            && e.is_aligned(policy)
        {
            let algorithm = e.policy.algorithm();
            e.state.with_mut(algorithm, |s| {
                algorithm::refund_aligned(s, policy, now, cost);
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
        let admit = |shard: &mut Shard, p: &Policy, key: &str, cost| {
            shard.with_slot::<PairState, _>(
                7,
                p,
                Probe::new(key.as_bytes()),
                now,
                1_000,
                |_| 7,
                |e| e.state.admit(p, now, cost),
            )
        };
        for p in [&policy, &other] {
            for key in &keys {
                assert!(admit(&mut shard, p, key, 2), "{key}");
            }
        }
        assert_eq!(shard.len(), 80);
        for p in [&policy, &other] {
            for key in &keys {
                assert!(!admit(&mut shard, p, key, 1), "{key} shares state");
            }
        }
        let probe = |k: &'static str| Probe::new(k.as_bytes());
        shard.remove(7, &policy, probe("k0"));
        assert_eq!(shard.len(), 79);
        assert!(shard.get::<PairState>(7, &policy, probe("k0")).is_none());
        assert!(
            shard.get::<PairState>(7, &other, probe("k0")).is_some()
                && shard.get::<PairState>(7, &policy, probe("k1")).is_some()
        );
        // Everything expires when its window ends.
        shard.purge_expired(now + 60_000_000);
        assert_eq!(shard.len(), 0);
    }

    /// A policy replaced under the same name by one of another shape leaves no stale entry
    /// behind in the old shape's table.
    #[test]
    fn a_changed_shape_moves_the_key() {
        let store = MemoryStore::builder()
            .clock(crate::FakeClock::new())
            .build();
        let gcra = Policy::single("s", Algorithm::Gcra, Quota::per_minute(1)).unwrap();
        let fw = Policy::single("s", Algorithm::FixedWindow, Quota::per_minute(1)).unwrap();
        assert!(store.allow_sync("k", &gcra, 1));
        assert!(store.allow_sync("k", &fw, 1));
        assert_eq!(store.key_count(), 1);
        // Back to GCRA: fresh, not the state left an instant ago.
        assert!(store.allow_sync("k", &gcra, 1));
        assert!(!store.allow_sync("k", &gcra, 1));
        assert_eq!(store.key_count(), 1);
    }

    proptest::proptest! {
        /// Two keys match exactly when their bytes are equal, and a stored key gives its
        /// bytes back, at every length around the inline limit.
        #[test]
        fn keys_match_only_themselves(
            a in proptest::collection::vec(0u8..=0xfe, 0..20),
            b in proptest::collection::vec(0u8..=0xfe, 0..20),
            flip in 0usize..20,
        ) {
            // Often equal up to one byte, so near misses are tried at every position.
            let mut near = a.clone();
            if let Some(c) = near.get_mut(flip) {
                *c = c.wrapping_add(1) % 0xff;
            }
            for other in [&a, &b, &near] {
                let stored = KeyBuf::new(Probe::new(other));
                proptest::prop_assert_eq!(stored.as_bytes(), other.as_slice());
                proptest::prop_assert_eq!(stored.matches(Probe::new(&a)), *other == a);
            }
        }
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
