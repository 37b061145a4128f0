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

/// Who a [`MemoryStore`] call is about: a text key (what every [`Store`](crate::Store)
/// takes), or an integer id, for applications that already hold one (a user or tenant
/// number) and need not format it.
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

/// How a policy's keys are kept: each shape has its own tables, so that an entry is no
/// larger than its policy needs.
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

/// `$store.$method::<K, S>(args)` with `K` the stored form of `$subject`'s kind (its probe
/// passed first) and `S` the state type of `$policy`'s [`Shape`].
macro_rules! dispatch {
    ($subject:expr, $policy:expr, $store:ident . $method:ident ( $($arg:expr),* )) => {
        match $subject {
            Subject::Text(t) => {
                dispatch!(@shape KeyBuf, Probe::new(t.as_bytes()), $policy, $store.$method($($arg),*))
            }
            Subject::Id(id) => dispatch!(@shape u64, id, $policy, $store.$method($($arg),*)),
        }
    };
    (@shape $k:ty, $probe:expr, $policy:expr, $store:ident . $method:ident ( $($arg:expr),* )) => {
        match Shape::of($policy) {
            Shape::Gcra => $store.$method::<$k, GcraState>($probe, $($arg),*),
            Shape::Pair => $store.$method::<$k, PairState>($probe, $($arg),*),
            Shape::Counter => $store.$method::<$k, CounterState>($probe, $($arg),*),
            Shape::List => $store.$method::<$k, ListState>($probe, $($arg),*),
        }
    };
}

/// One shape of a key's states, read with its group's policy (which has that shape).
trait Packed: Sized + std::fmt::Debug {
    fn table<K>(tables: &Tables<K>) -> &HashTable<Entry<K, Self>>;
    fn table_mut<K>(tables: &mut Tables<K>) -> &mut HashTable<Entry<K, Self>>;
    fn fresh(policy: &Policy, now: u64) -> Self;
    fn with<R>(&self, algorithm: Algorithm, f: impl FnOnce(&[QuotaState]) -> R) -> R;
    fn with_mut<R>(&mut self, algorithm: Algorithm, f: impl FnOnce(&mut [QuotaState]) -> R) -> R;
    /// [`algorithm::admit_aligned`] on the packed fields.
    fn admit(&mut self, policy: &Policy, now: u64, cost: u64) -> bool;
}

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
    fn table<K>(tables: &Tables<K>) -> &HashTable<Entry<K, Self>> {
        &tables.gcra
    }
    fn table_mut<K>(tables: &mut Tables<K>) -> &mut HashTable<Entry<K, Self>> {
        &mut tables.gcra
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
    #[inline]
    fn admit(&mut self, policy: &Policy, now: u64, cost: u64) -> bool {
        match policy.params() {
            [q] => algorithm::gcra_take(&mut self.0, q, now, cost),
            _ => false,
        }
    }
}

impl Packed for PairState {
    fn table<K>(tables: &Tables<K>) -> &HashTable<Entry<K, Self>> {
        &tables.pair
    }
    fn table_mut<K>(tables: &mut Tables<K>) -> &mut HashTable<Entry<K, Self>> {
        &mut tables.pair
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
    #[inline]
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
    fn table<K>(tables: &Tables<K>) -> &HashTable<Entry<K, Self>> {
        &tables.counter
    }
    fn table_mut<K>(tables: &mut Tables<K>) -> &mut HashTable<Entry<K, Self>> {
        &mut tables.counter
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
    #[inline]
    fn admit(&mut self, policy: &Policy, now: u64, cost: u64) -> bool {
        let [q] = policy.params() else {
            return false;
        };
        let Self(window, prev, curr) = self;
        algorithm::swc_take(window, prev, curr, q, now, cost)
    }
}

impl Packed for ListState {
    fn table<K>(tables: &Tables<K>) -> &HashTable<Entry<K, Self>> {
        &tables.list
    }
    fn table_mut<K>(tables: &mut Tables<K>) -> &mut HashTable<Entry<K, Self>> {
        &mut tables.list
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
    #[inline]
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
    #[inline]
    fn new(key: &[u8]) -> Self {
        let n = key.len();
        Self(
            le_padded(key.get(..n.min(8)).unwrap_or_default()),
            le_padded(key.get(n.min(7)..).unwrap_or_default()),
        )
    }

    #[inline]
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
#[inline]
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
    #[inline]
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

    #[inline]
    fn matches(&self, key: Probe<'_>) -> bool {
        match (self, key) {
            (Self::Inline(a), Probe::Short(b)) => ShortKey::of_inline(a) == b,
            (Self::Heap(a), Probe::Long(b)) => ***a == *b,
            _ => false,
        }
    }

    #[cfg(test)]
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

/// A key as a table stores it: a text key ([`KeyBuf`]) or an id (`u64`).
trait StoredKey: Sized + std::fmt::Debug {
    /// The looked-up form, made once per call.
    type Probe<'a>: Copy;
    fn stored(probe: Self::Probe<'_>) -> Self;
    fn matches(&self, probe: Self::Probe<'_>) -> bool;
    /// Feeds the probe to the store's hasher; a stored key feeds the same as its probe.
    fn write_probe(probe: Self::Probe<'_>, h: &mut impl Hasher);
    fn write_stored(&self, h: &mut impl Hasher);
    fn tables(group: &Group) -> &Tables<Self>;
    fn tables_mut(group: &mut Group) -> &mut Tables<Self>;
}

impl StoredKey for KeyBuf {
    type Probe<'a> = Probe<'a>;
    #[inline]
    fn stored(probe: Probe<'_>) -> Self {
        Self::new(probe)
    }
    #[inline]
    fn matches(&self, probe: Probe<'_>) -> bool {
        KeyBuf::matches(self, probe)
    }
    #[inline]
    fn write_probe(probe: Probe<'_>, h: &mut impl Hasher) {
        match probe {
            // The two words the key is compared by; no second pass over the bytes.
            Probe::Short(ShortKey(a, b)) => {
                h.write_u64(a);
                h.write_u64(b);
            }
            Probe::Long(bytes) => h.write(bytes),
        }
    }
    fn write_stored(&self, h: &mut impl Hasher) {
        match self {
            Self::Inline(b) => Self::write_probe(Probe::Short(ShortKey::of_inline(b)), h),
            Self::Heap(bytes) => h.write(bytes),
        }
    }
    #[inline]
    fn tables(group: &Group) -> &Tables<Self> {
        &group.text
    }
    #[inline]
    fn tables_mut(group: &mut Group) -> &mut Tables<Self> {
        &mut group.text
    }
}

impl StoredKey for u64 {
    type Probe<'a> = u64;
    #[inline]
    fn stored(probe: u64) -> Self {
        probe
    }
    #[inline]
    fn matches(&self, probe: u64) -> bool {
        *self == probe
    }
    #[inline]
    fn write_probe(probe: u64, h: &mut impl Hasher) {
        h.write_u64(probe);
    }
    fn write_stored(&self, h: &mut impl Hasher) {
        h.write_u64(*self);
    }
    #[inline]
    fn tables(group: &Group) -> &Tables<Self> {
        &group.ids
    }
    #[inline]
    fn tables_mut(group: &mut Group) -> &mut Tables<Self> {
        &mut group.ids
    }
}

/// One key of one policy group: the key and its packed states, nothing else (the policy
/// is the group's).
#[derive(Debug)]
struct Entry<K, S> {
    key: K,
    state: S,
}

impl<K, S: Packed> Entry<K, S> {
    /// When the state turns equivalent to a fresh one, and what it holds at `now`, read
    /// with its group's `policy`.
    fn expiry(&self, policy: &Policy, now: u64) -> (u64, u64) {
        self.state.with(policy.algorithm(), |s| {
            algorithm::expiry(s, policy.params(), now)
        })
    }
}

// A single GCRA quota takes 24 bytes for a text key of up to 15 bytes, 16 for an id (the
// same as governor's `usize`-keyed entries).
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<Entry<KeyBuf, GcraState>>() == 24);
    assert!(std::mem::size_of::<Entry<u64, GcraState>>() == 16);
    assert!(std::mem::size_of::<Entry<KeyBuf, PairState>>() == 32);
};

/// One table per state shape for one kind of key. A group uses only its policy's shape;
/// the others stay empty (an empty table allocates nothing).
#[derive(Debug)]
struct Tables<K> {
    gcra: HashTable<Entry<K, GcraState>>,
    pair: HashTable<Entry<K, PairState>>,
    counter: HashTable<Entry<K, CounterState>>,
    list: HashTable<Entry<K, ListState>>,
}

impl<K> Default for Tables<K> {
    fn default() -> Self {
        Self {
            gcra: HashTable::new(),
            pair: HashTable::new(),
            counter: HashTable::new(),
            list: HashTable::new(),
        }
    }
}

impl<K: StoredKey> Tables<K> {
    fn len(&self) -> usize {
        self.gcra.len() + self.pair.len() + self.counter.len() + self.list.len()
    }

    fn remove(&mut self, h: u64, key: K::Probe<'_>) {
        fn rm<K: StoredKey, S>(t: &mut HashTable<Entry<K, S>>, h: u64, key: K::Probe<'_>) {
            if let Ok(e) = t.find_entry(h, |e| e.key.matches(key)) {
                e.remove();
            }
        }
        rm(&mut self.gcra, h, key);
        rm(&mut self.pair, h, key);
        rm(&mut self.counter, h, key);
        rm(&mut self.list, h, key);
    }

    /// `(expires_at, holds)` at `now` of every entry, read with `policy`.
    fn expiries<'a>(
        &'a self,
        policy: &'a Policy,
        now: u64,
    ) -> impl Iterator<Item = (u64, u64)> + 'a {
        (self.gcra.iter().map(move |e| e.expiry(policy, now)))
            .chain(self.pair.iter().map(move |e| e.expiry(policy, now)))
            .chain(self.counter.iter().map(move |e| e.expiry(policy, now)))
            .chain(self.list.iter().map(move |e| e.expiry(policy, now)))
    }

    /// Keep the entries for which `keep(expires_at, holds)` (at `now`, read with `policy`)
    /// says so.
    fn retain(&mut self, policy: &Policy, now: u64, keep: &mut impl FnMut(u64, u64) -> bool) {
        let mut keep = |(at, held)| keep(at, held);
        self.gcra.retain(|e| keep(e.expiry(policy, now)));
        self.pair.retain(|e| keep(e.expiry(policy, now)));
        self.counter.retain(|e| keep(e.expiry(policy, now)));
        self.list.retain(|e| keep(e.expiry(policy, now)));
    }
}

/// The keys of one policy in one shard. A group is found by the policy's name, algorithm and
/// number of quotas (its layout): a policy replaced by one of the same layout keeps the
/// states (the group follows the new object), one of another layout gets a group of its
/// own, so its keys start fresh; the old group's keys expire or are evicted like any other.
/// The Redis store behaves the same way: its keys name the policy, quota and algorithm.
#[derive(Debug)]
struct Group {
    policy: Policy,
    text: Tables<KeyBuf>,
    ids: Tables<u64>,
}

impl Group {
    fn new(policy: &Policy) -> Self {
        Self {
            policy: policy.clone(),
            text: Tables::default(),
            ids: Tables::default(),
        }
    }

    /// Whether `policy` reads this group's states as they are.
    #[inline]
    fn fits(&self, policy: &Policy) -> bool {
        self.policy.same(policy)
            || (self.policy.algorithm() == policy.algorithm()
                && self.policy.params().len() == policy.params().len()
                && self.policy.name() == policy.name())
    }

    fn len(&self) -> usize {
        self.text.len() + self.ids.len()
    }

    fn expiries(&self, now: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        (self.text.expiries(&self.policy, now)).chain(self.ids.expiries(&self.policy, now))
    }

    fn retain(&mut self, now: u64, keep: &mut impl FnMut(u64, u64) -> bool) {
        self.text.retain(&self.policy, now, keep);
        self.ids.retain(&self.policy, now, keep);
    }
}

/// One shard's keys, grouped by policy ([`Group`]); each group's tables find a key by the
/// store's hash of (policy name, key) and tell keys apart by comparing them, so two keys
/// whose hashes collide still never share state.
#[derive(Debug, Default)]
struct Shard {
    groups: HashTable<Group>,
}

impl Shard {
    fn len(&self) -> usize {
        self.groups.iter().map(Group::len).sum()
    }

    fn group(&self, policy: &Policy) -> Option<&Group> {
        self.groups.find(policy.name_hash(), |g| g.fits(policy))
    }

    /// The group of `policy`, made when missing, following `policy` from now on.
    #[inline]
    fn group_mut(&mut self, policy: &Policy) -> &mut Group {
        let g = match self
            .groups
            .find_entry(policy.name_hash(), |g| g.fits(policy))
        {
            Ok(found) => found.into_mut(),
            Err(absent) => absent
                .into_table()
                .insert_unique(policy.name_hash(), Group::new(policy), |g| {
                    g.policy.name_hash()
                })
                .into_mut(),
        };
        if !g.policy.same(policy) {
            g.policy = policy.clone();
        }
        g
    }

    fn get<K: StoredKey, S: Packed>(
        &self,
        h: u64,
        policy: &Policy,
        key: K::Probe<'_>,
    ) -> Option<(&Policy, &Entry<K, S>)> {
        let g = self.group(policy)?;
        let e = S::table(K::tables(g)).find(h, |e| e.key.matches(key))?;
        Some((&g.policy, e))
    }

    fn get_mut<K: StoredKey, S: Packed>(
        &mut self,
        h: u64,
        policy: &Policy,
        key: K::Probe<'_>,
    ) -> Option<&mut Entry<K, S>> {
        let g = self
            .groups
            .find_mut(policy.name_hash(), |g| g.fits(policy))?;
        S::table_mut(K::tables_mut(g)).find_mut(h, |e| e.key.matches(key))
    }

    /// Forget `key` under every layout of the policy's name.
    fn remove<K: StoredKey>(&mut self, h: u64, policy: &Policy, key: K::Probe<'_>) {
        for g in &mut self.groups {
            if g.policy.name() == policy.name() {
                K::tables_mut(g).remove(h, key);
            }
        }
    }

    /// Runs `f` on the entry for (policy, key), made fresh when missing. `rehash` gives an
    /// entry's hash again when its table grows.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn with_slot<K: StoredKey, S: Packed, R>(
        &mut self,
        h: u64,
        policy: &Policy,
        key: K::Probe<'_>,
        now: u64,
        cap: usize,
        rehash: impl Fn(&Entry<K, S>) -> u64,
        f: impl FnOnce(&mut Entry<K, S>) -> R,
    ) -> R {
        let table = S::table_mut(K::tables_mut(self.group_mut(policy)));
        if let Some(e) = table.find_mut(h, |e| e.key.matches(key)) {
            return f(e);
        }
        if self.len() >= cap {
            self.evict(now, cap);
        }
        let entry = Entry {
            key: K::stored(key),
            state: S::fresh(policy, now),
        };
        let table = S::table_mut(K::tables_mut(self.group_mut(policy)));
        f(table.insert_unique(h, entry, rehash).into_mut())
    }

    /// `(expires_at, holds)` at `now` of every entry.
    fn expiries(&self, now: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.groups.iter().flat_map(move |g| g.expiries(now))
    }

    /// Keep the entries for which `keep(expires_at, holds)` (at `now`) says so; drop the
    /// groups left empty.
    fn retain(&mut self, now: u64, mut keep: impl FnMut(u64, u64) -> bool) {
        self.groups.retain(|g| {
            g.retain(now, &mut keep);
            g.len() > 0
        });
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
/// * **Cost**: one [foldhash](https://docs.rs/foldhash) of the key (with the policy name's
///   hash, computed once per policy), seeded at random per store (so which keys share a
///   shard or a probe sequence cannot be predicted from outside; keys whose hashes collide
///   are still told apart by their bytes), one mutex, two table probes (the policy's group,
///   then the key), no I/O, no allocation for a known key
///   ([`allow_sync`](Self::allow_sync) allocates nothing; the [`Decision`] of
///   [`acquire_sync`](Self::acquire_sync) allocates its per-quota list).
/// * **Memory**: keys are grouped by policy, and each group keeps one table per state
///   shape, so an entry holds only the key and the states its policy needs: 24 bytes for a
///   single GCRA quota, 32 for a token bucket or fixed window, 40 for a sliding-window
///   counter, 24 plus the states for several quotas or a sliding-window log. That includes
///   the key when it has at most 15 bytes (user ids, IPv4 addresses); longer keys add one
///   allocation. An integer id ([`Subject::Id`]) takes 8 bytes less: 16 bytes for a single
///   GCRA quota, the size of governor's `usize`-keyed entries.
/// * **Policies**: a policy's keys are found by its name, algorithm and number of quotas.
///   Replacing a policy by one of the same algorithm and number of quotas keeps every
///   key's state (the new limits apply from the next call); one of another algorithm or
///   number of quotas starts its keys fresh, and the old states are dropped as they expire.
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

    /// The hash of (policy name, key): the policy's fixed name hash, then what `write`
    /// feeds (the key).
    #[inline]
    fn hash_of(
        &self,
        name_hash: u64,
        write: impl FnOnce(&mut foldhash::fast::FoldHasher<'_>),
    ) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u64(name_hash);
        write(&mut h);
        h.finish()
    }

    #[inline]
    fn shard<K: StoredKey>(
        &self,
        policy: &Policy,
        key: K::Probe<'_>,
    ) -> (u64, MutexGuard<'_, Shard>) {
        let h = self.hash_of(policy.name_hash(), |h| K::write_probe(key, h));
        // The tables use the low bits (bucket) and the top seven (tag) of the hash; the shard
        // is picked from bits in between so that neither is constant within a shard.
        let mid = (h >> 24) & 0xffff_ffff;
        let i = (mid * self.shards.len() as u64) >> 32;
        (h, self.shards[i as usize].lock())
    }

    /// Run `f` on the entry of (policy, key) in the table of shape `S` under its shard's
    /// lock, the entry made when missing (what every consuming operation starts with).
    #[inline]
    fn with_slot<K: StoredKey, S: Packed, R>(
        &self,
        key: K::Probe<'_>,
        policy: &Policy,
        now: u64,
        f: impl FnOnce(&mut Entry<K, S>) -> R,
    ) -> R {
        let (h, mut shard) = self.shard::<K>(policy, key);
        let name_hash = policy.name_hash();
        let rehash = |e: &Entry<K, S>| self.hash_of(name_hash, |h| e.key.write_stored(h));
        shard.with_slot(h, policy, key, now, self.per_shard, rehash, f)
    }

    /// The decision, synchronously (what [`Store::acquire`](crate::Store::acquire) runs; no
    /// I/O, one shard lock). `subject` is a text key or an integer id ([`Subject`]).
    pub fn acquire_sync<'k>(
        &self,
        subject: impl Into<Subject<'k>>,
        policy: &Policy,
        cost: u64,
    ) -> Decision {
        dispatch!(subject.into(), policy, self.acquire_in(policy, cost))
    }

    fn acquire_in<K: StoredKey, S: Packed>(
        &self,
        key: K::Probe<'_>,
        policy: &Policy,
        cost: u64,
    ) -> Decision {
        let now = self.clock.now();
        let (allowed, verdicts) = self.with_slot::<K, S, _>(key, policy, now, |e| {
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
    pub fn allow_sync<'k>(
        &self,
        subject: impl Into<Subject<'k>>,
        policy: &Policy,
        cost: u64,
    ) -> bool {
        dispatch!(subject.into(), policy, self.allow_in(policy, cost))
    }

    #[inline]
    fn allow_in<K: StoredKey, S: Packed>(
        &self,
        key: K::Probe<'_>,
        policy: &Policy,
        cost: u64,
    ) -> bool {
        let now = self.clock.now();
        self.with_slot::<K, S, _>(key, policy, now, |e| e.state.admit(policy, now, cost))
    }

    /// [`Store::peek`](crate::Store::peek), synchronously.
    pub fn peek_sync<'k>(&self, subject: impl Into<Subject<'k>>, policy: &Policy) -> Decision {
        dispatch!(subject.into(), policy, self.peek_in(policy))
    }

    fn peek_in<K: StoredKey, S: Packed>(&self, key: K::Probe<'_>, policy: &Policy) -> Decision {
        let now = self.clock.now();
        let (allowed, verdicts) = {
            let (h, shard) = self.shard::<K>(policy, key);
            match shard.get::<K, S>(h, policy, key) {
                Some((held_by, e)) => e
                    .state
                    .with(held_by.algorithm(), |s| algorithm::peek(s, policy, now)),
                None => algorithm::peek(&[], policy, now),
            }
        };
        Decision::from_verdicts(policy, allowed, &verdicts, DecisionSource::Store)
    }

    /// [`Store::refund`](crate::Store::refund), synchronously.
    pub fn refund_sync<'k>(&self, subject: impl Into<Subject<'k>>, policy: &Policy, cost: u64) {
        dispatch!(subject.into(), policy, self.refund_in(policy, cost));
    }

    fn refund_in<K: StoredKey, S: Packed>(&self, key: K::Probe<'_>, policy: &Policy, cost: u64) {
        let now = self.clock.now();
        let (h, mut shard) = self.shard::<K>(policy, key);
        if let Some(e) = shard.get_mut::<K, S>(h, policy, key) {
            e.state.with_mut(policy.algorithm(), |s| {
                algorithm::refund_aligned(s, policy, now, cost);
            });
        }
    }

    /// [`Store::reset`](crate::Store::reset), synchronously: forgets the subject under every
    /// algorithm its policy's name has been used with.
    pub fn reset_sync<'k>(&self, subject: impl Into<Subject<'k>>, policy: &Policy) {
        match subject.into() {
            Subject::Text(t) => self.reset_in::<KeyBuf>(Probe::new(t.as_bytes()), policy),
            Subject::Id(id) => self.reset_in::<u64>(id, policy),
        }
    }

    fn reset_in<K: StoredKey>(&self, key: K::Probe<'_>, policy: &Policy) {
        let (h, mut shard) = self.shard::<K>(policy, key);
        shard.remove::<K>(h, policy, key);
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
            shard.with_slot::<KeyBuf, PairState, _>(
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
        shard.remove::<KeyBuf>(7, &policy, probe("k0"));
        assert_eq!(shard.len(), 79);
        assert!(
            shard
                .get::<KeyBuf, PairState>(7, &policy, probe("k0"))
                .is_none()
        );
        assert!(
            shard
                .get::<KeyBuf, PairState>(7, &other, probe("k0"))
                .is_some()
                && shard
                    .get::<KeyBuf, PairState>(7, &policy, probe("k1"))
                    .is_some()
        );
        // Everything expires when its window ends.
        shard.purge_expired(now + 60_000_000);
        assert_eq!(shard.len(), 0);
    }

    /// A policy replaced under the same name by one of another algorithm starts its keys
    /// fresh; going back finds the states it left (as the Redis store, whose keys name the
    /// algorithm, does), until they expire.
    #[test]
    fn a_changed_algorithm_keeps_its_own_states() {
        let clock = crate::FakeClock::new();
        let store = MemoryStore::builder().clock(clock.clone()).build();
        let gcra = Policy::single("s", Algorithm::Gcra, Quota::per_minute(1)).unwrap();
        let fw = Policy::single("s", Algorithm::FixedWindow, Quota::per_minute(1)).unwrap();
        assert!(store.allow_sync("k", &gcra, 1));
        assert!(store.allow_sync("k", &fw, 1));
        assert!(!store.allow_sync("k", &fw, 1));
        assert!(!store.allow_sync("k", &gcra, 1));
        assert_eq!(store.key_count(), 2);
        // A fresh object of the same layout takes over the states.
        let gcra_again = Policy::single("s", Algorithm::Gcra, Quota::per_minute(1)).unwrap();
        assert!(!store.allow_sync("k", &gcra_again, 1));
        clock.advance(std::time::Duration::from_secs(61));
        assert_eq!(store.key_count(), 0);
        // Reset forgets the key under every algorithm of the name.
        assert!(store.allow_sync("k", &gcra, 1));
        assert!(store.allow_sync("k", &fw, 1));
        store.reset_sync("k", &gcra);
        assert_eq!(store.key_count(), 0);
    }

    /// Ids and texts are separate subjects, each exact.
    #[test]
    fn ids_and_texts_are_separate_subjects() {
        let store = MemoryStore::builder()
            .clock(crate::FakeClock::new())
            .build();
        for alg in Algorithm::ALL {
            let p = Policy::single(format!("ids-{alg}"), alg, Quota::per_minute(1)).unwrap();
            for id in [0_u64, 7, u64::MAX] {
                assert!(store.allow_sync(id, &p, 1), "{alg} {id}");
                assert!(!store.allow_sync(Subject::Id(id), &p, 1), "{alg} {id}");
                assert!(
                    store.allow_sync(id.to_string().as_str(), &p, 1),
                    "{alg} {id}"
                );
            }
            assert_eq!(store.peek_sync(7_u64, &p).quotas[0].remaining, 0, "{alg}");
            store.refund_sync(7_u64, &p, 1);
            assert_eq!(store.peek_sync(7_u64, &p).quotas[0].remaining, 1, "{alg}");
            assert_eq!(store.peek_sync("7", &p).quotas[0].remaining, 0, "{alg}");
            store.reset_sync(0_u64, &p);
            assert!(store.acquire_sync(0_u64, &p, 1).allowed, "{alg}");
            assert!(!store.allow_sync("0", &p, 1), "{alg}");
        }
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
