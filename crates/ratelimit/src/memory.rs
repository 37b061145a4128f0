//! The in-memory backend: [`MemoryStore`].

use std::hash::{BuildHasher, Hasher};
use std::marker::PhantomData;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use async_trait::async_trait;
use hashbrown::HashTable;

use crate::algorithm::{self, LogEnds, QuotaState};
use crate::clock::{Clock, SystemClock};
use crate::decision::{Decision, DecisionSource};
use crate::error::Result;
use crate::quota::{Algorithm, Params, Policy};

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

/// How a policy's keys are kept: each shape has its own tables, so that an entry is no
/// larger than its policy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Gcra,
    Bucket,
    Window,
    Counter,
    Log,
    List,
}

impl Shape {
    fn of(policy: &Policy) -> Self {
        if policy.params().len() != 1 {
            return Self::List;
        }
        match policy.algorithm() {
            Algorithm::Gcra => Self::Gcra,
            Algorithm::TokenBucket => Self::Bucket,
            Algorithm::FixedWindow => Self::Window,
            Algorithm::SlidingWindowCounter => Self::Counter,
            Algorithm::SlidingWindowLog => Self::Log,
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
            Shape::Bucket => $store.$method::<$k, Word<Bucket>>($probe, $($arg),*),
            Shape::Window => $store.$method::<$k, Word<Window>>($probe, $($arg),*),
            Shape::Counter => $store.$method::<$k, Word<Counter>>($probe, $($arg),*),
            Shape::Log => $store.$method::<$k, LogState>($probe, $($arg),*),
            Shape::List => $store.$method::<$k, ListState>($probe, $($arg),*),
        }
    };
}

/// How a group's single-quota states are laid out in a word, fixed when the group is made
/// (a policy replaced later by one with other figures is still read with it: a state its
/// fields cannot hold moves to the group's wide table instead).
#[derive(Debug, Clone, Copy)]
struct Layout {
    algorithm: Algorithm,
    /// Bits of the word's low field: a token bucket's missing tokens, a fixed window's
    /// count, or each of a sliding-window counter's two counts.
    low: u32,
    /// A token bucket's capacity when the group was made: the word holds how many tokens
    /// are missing from it.
    capacity: u64,
}

/// Missing tokens a one-word token bucket holds (the time it was counted at takes the other
/// 54 bits; times are capped at 2^53 µs).
const BUCKET_DEFICIT_BITS: u32 = 10;

impl Layout {
    fn of(policy: &Policy) -> Self {
        let algorithm = policy.algorithm();
        let (low, capacity) = match policy.quotas() {
            [one] => {
                // A window index never exceeds the largest time over the period.
                let window_bits =
                    64 - (algorithm::MAX_MICROS / one.quota.period_micros()).leading_zeros();
                match algorithm {
                    Algorithm::TokenBucket => (BUCKET_DEFICIT_BITS, one.quota.burst()),
                    Algorithm::FixedWindow => (64 - window_bits, 0),
                    _ => ((64 - window_bits) / 2, 0),
                }
            }
            _ => (0, 0),
        };
        Self {
            algorithm,
            low,
            capacity,
        }
    }
}

/// Whether `v` fits in `bits` bits.
#[inline]
fn fits_in(v: u64, bits: u32) -> bool {
    v.checked_shr(bits).unwrap_or(0) == 0
}

/// One shape of a key's states, read with its group's [`Layout`] (which has that shape).
trait Packed: Sized + std::fmt::Debug {
    /// Whether a state of this form may have to move to the wide table.
    const SPILLS: bool = false;
    fn table<K>(tables: &Tables<K>) -> &HashTable<Entry<K, Self>>;
    fn table_mut<K>(tables: &mut Tables<K>) -> &mut HashTable<Entry<K, Self>>;
    /// The fresh states of `policy`, or their wide form when this one cannot hold them.
    fn fresh(layout: &Layout, policy: &Policy, now: u64) -> Result<Self, WideState>;
    /// This state at full width, for a form that [`SPILLS`](Self::SPILLS).
    fn widen(&self, layout: &Layout) -> WideState;
    fn with<R>(&self, layout: &Layout, f: impl FnOnce(&[QuotaState]) -> R) -> R;
    /// Runs `f` on the unpacked states and keeps what it leaves; `None`, with this state
    /// unchanged, when this form cannot hold that (the entry must move and `f` run again on
    /// its wide form).
    fn with_mut<R>(&mut self, layout: &Layout, f: impl Fn(&mut [QuotaState]) -> R) -> Option<R>;
    /// [`algorithm::admit_aligned`] on the packed fields, `None` as for `with_mut`.
    fn admit(&mut self, layout: &Layout, policy: &Policy, now: u64, cost: u64) -> Option<bool>;
}

/// A single GCRA quota: the theoretical arrival time.
#[derive(Debug, Default)]
struct GcraState(u64);

/// A single token bucket, fixed window or sliding-window counter in one word, its fields as
/// wide as the group's [`Layout`] says and laid out by the algorithm's [`Codec`]. A state
/// that does not fit moves to the wide table.
struct Word<C>(u64, PhantomData<C>);

impl<C> std::fmt::Debug for Word<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Word({:#x})", self.0)
    }
}

/// How one algorithm's single-quota state goes in a [`Word`] and back.
trait Codec: Sized {
    fn table<K>(tables: &Tables<K>) -> &HashTable<Entry<K, Word<Self>>>;
    fn table_mut<K>(tables: &mut Tables<K>) -> &mut HashTable<Entry<K, Word<Self>>>;
    /// The fields at full width.
    fn widen(word: u64, layout: &Layout) -> WideState;
    /// `None` when the layout's fields cannot hold `wide`.
    fn narrow(wide: &WideState, layout: &Layout) -> Option<u64>;
    /// The algorithm's admit step on the fields.
    fn take(wide: &mut WideState, q: &Params, now: u64, cost: u64) -> bool;
}

/// A token bucket: `(last << 10) | missing tokens`, missing counted from the capacity of the
/// group's layout.
#[derive(Debug)]
struct Bucket;

/// A fixed window: `(window << low) | count`.
#[derive(Debug)]
struct Window;

/// A sliding-window counter: `(window << 2·low) | (prev << low) | curr`.
#[derive(Debug)]
struct Counter;

impl Codec for Bucket {
    fn table<K>(tables: &Tables<K>) -> &HashTable<Entry<K, Word<Self>>> {
        &tables.bucket
    }
    fn table_mut<K>(tables: &mut Tables<K>) -> &mut HashTable<Entry<K, Word<Self>>> {
        &mut tables.bucket
    }
    #[inline]
    fn widen(word: u64, layout: &Layout) -> WideState {
        let low = layout.low;
        let missing = word & ((1 << low) - 1);
        WideState(layout.capacity.saturating_sub(missing), word >> low, 0)
    }
    #[inline]
    fn narrow(&WideState(tokens, last, _): &WideState, layout: &Layout) -> Option<u64> {
        let low = layout.low;
        let missing = layout.capacity.checked_sub(tokens)?;
        (fits_in(missing, low) && fits_in(last, 64 - low)).then(|| (last << low) | missing)
    }
    #[inline]
    fn take(WideState(tokens, last, _): &mut WideState, q: &Params, now: u64, cost: u64) -> bool {
        algorithm::tb_take(tokens, last, q, now, cost)
    }
}

impl Codec for Window {
    fn table<K>(tables: &Tables<K>) -> &HashTable<Entry<K, Word<Self>>> {
        &tables.window
    }
    fn table_mut<K>(tables: &mut Tables<K>) -> &mut HashTable<Entry<K, Word<Self>>> {
        &mut tables.window
    }
    #[inline]
    fn widen(word: u64, layout: &Layout) -> WideState {
        let low = layout.low;
        WideState(word >> low, word & ((1 << low) - 1), 0)
    }
    #[inline]
    fn narrow(&WideState(window, count, _): &WideState, layout: &Layout) -> Option<u64> {
        let low = layout.low;
        (fits_in(count, low) && fits_in(window, 64 - low)).then(|| (window << low) | count)
    }
    #[inline]
    fn take(WideState(window, count, _): &mut WideState, q: &Params, now: u64, cost: u64) -> bool {
        algorithm::fw_take(window, count, q, now, cost)
    }
}

impl Codec for Counter {
    fn table<K>(tables: &Tables<K>) -> &HashTable<Entry<K, Word<Self>>> {
        &tables.counter
    }
    fn table_mut<K>(tables: &mut Tables<K>) -> &mut HashTable<Entry<K, Word<Self>>> {
        &mut tables.counter
    }
    #[inline]
    fn widen(word: u64, layout: &Layout) -> WideState {
        let low = layout.low;
        let mask = (1 << low) - 1;
        WideState(word >> (2 * low), (word >> low) & mask, word & mask)
    }
    #[inline]
    fn narrow(&WideState(window, prev, curr): &WideState, layout: &Layout) -> Option<u64> {
        let low = layout.low;
        (fits_in(prev, low) && fits_in(curr, low) && fits_in(window, 64 - 2 * low))
            .then(|| (window << (2 * low)) | (prev << low) | curr)
    }
    #[inline]
    fn take(
        WideState(window, prev, curr): &mut WideState,
        q: &Params,
        now: u64,
        cost: u64,
    ) -> bool {
        algorithm::swc_take(window, prev, curr, q, now, cost)
    }
}

/// A single token bucket `(tokens, last, 0)`, fixed window `(window, count, 0)` or
/// sliding-window counter `(window, prev, curr)` at full width: what a [`Word`] cannot
/// hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WideState(u64, u64, u64);

/// A single sliding-window log, held in the entry with the times of its ends, so that an
/// admission that drops nothing from the window reads only the entry (and appends to the
/// list).
#[derive(Debug)]
struct LogState {
    state: QuotaState,
    ends: LogEnds,
}

/// Several quotas behind one pointer.
#[derive(Debug)]
struct ListState(Box<[QuotaState]>);

/// The only fresh state of a single-quota policy (its shape guarantees one).
fn fresh_one(policy: &Policy, now: u64) -> QuotaState {
    let mut v = algorithm::fresh_states(policy, now);
    v.pop().unwrap_or(QuotaState::Gcra { tat: 0 })
}

impl WideState {
    fn unpack(&self, algorithm: Algorithm) -> QuotaState {
        let Self(a, b, c) = *self;
        match algorithm {
            Algorithm::TokenBucket => QuotaState::TokenBucket { tokens: a, last: b },
            Algorithm::FixedWindow => QuotaState::FixedWindow {
                window: a,
                count: b,
            },
            _ => QuotaState::SlidingWindowCounter {
                window: a,
                prev: b,
                curr: c,
            },
        }
    }

    fn pack(state: &QuotaState) -> Self {
        match *state {
            QuotaState::TokenBucket { tokens, last } => Self(tokens, last, 0),
            QuotaState::FixedWindow { window, count } => Self(window, count, 0),
            QuotaState::SlidingWindowCounter { window, prev, curr } => Self(window, prev, curr),
            // Not a state of this shape's algorithms; never made.
            _ => Self(0, 0, 0),
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
    fn fresh(_: &Layout, policy: &Policy, now: u64) -> Result<Self, WideState> {
        match fresh_one(policy, now) {
            QuotaState::Gcra { tat } => Ok(Self(tat)),
            _ => Ok(Self::default()),
        }
    }
    fn widen(&self, _: &Layout) -> WideState {
        WideState(self.0, 0, 0)
    }
    fn with<R>(&self, _: &Layout, f: impl FnOnce(&[QuotaState]) -> R) -> R {
        f(&[QuotaState::Gcra { tat: self.0 }])
    }
    fn with_mut<R>(&mut self, _: &Layout, f: impl Fn(&mut [QuotaState]) -> R) -> Option<R> {
        let mut one = [QuotaState::Gcra { tat: self.0 }];
        let r = f(&mut one);
        if let [QuotaState::Gcra { tat }] = one {
            self.0 = tat;
        }
        Some(r)
    }
    #[inline]
    fn admit(&mut self, _: &Layout, policy: &Policy, now: u64, cost: u64) -> Option<bool> {
        match policy.params() {
            [q] => Some(algorithm::gcra_take(&mut self.0, q, now, cost)),
            _ => Some(false),
        }
    }
}

impl<C: Codec + std::fmt::Debug> Packed for Word<C> {
    const SPILLS: bool = true;
    fn table<K>(tables: &Tables<K>) -> &HashTable<Entry<K, Self>> {
        C::table(tables)
    }
    fn table_mut<K>(tables: &mut Tables<K>) -> &mut HashTable<Entry<K, Self>> {
        C::table_mut(tables)
    }
    fn fresh(layout: &Layout, policy: &Policy, now: u64) -> Result<Self, WideState> {
        let wide = WideState::pack(&fresh_one(policy, now));
        C::narrow(&wide, layout)
            .map(|w| Self(w, PhantomData))
            .ok_or(wide)
    }
    fn widen(&self, layout: &Layout) -> WideState {
        C::widen(self.0, layout)
    }
    fn with<R>(&self, layout: &Layout, f: impl FnOnce(&[QuotaState]) -> R) -> R {
        C::widen(self.0, layout).with(layout, f)
    }
    fn with_mut<R>(&mut self, layout: &Layout, f: impl Fn(&mut [QuotaState]) -> R) -> Option<R> {
        let mut wide = C::widen(self.0, layout);
        let r = wide.with_mut(layout, f);
        self.0 = C::narrow(&wide, layout)?;
        Some(r)
    }
    #[inline]
    fn admit(&mut self, layout: &Layout, policy: &Policy, now: u64, cost: u64) -> Option<bool> {
        let [q] = policy.params() else {
            return Some(false);
        };
        let mut wide = C::widen(self.0, layout);
        // A denial changes nothing.
        if !C::take(&mut wide, q, now, cost) {
            return Some(false);
        }
        self.0 = C::narrow(&wide, layout)?;
        Some(true)
    }
}

impl WideState {
    fn with_mut<R>(&mut self, layout: &Layout, f: impl FnOnce(&mut [QuotaState]) -> R) -> R {
        let mut one = [self.unpack(layout.algorithm)];
        let r = f(&mut one);
        *self = Self::pack(&one[0]);
        r
    }

    fn admit(&mut self, layout: &Layout, policy: &Policy, now: u64, cost: u64) -> bool {
        let [q] = policy.params() else {
            return false;
        };
        match layout.algorithm {
            Algorithm::TokenBucket => Bucket::take(self, q, now, cost),
            Algorithm::FixedWindow => Window::take(self, q, now, cost),
            _ => Counter::take(self, q, now, cost),
        }
    }
}

impl Packed for WideState {
    fn table<K>(tables: &Tables<K>) -> &HashTable<Entry<K, Self>> {
        &tables.wide
    }
    fn table_mut<K>(tables: &mut Tables<K>) -> &mut HashTable<Entry<K, Self>> {
        &mut tables.wide
    }
    fn fresh(_: &Layout, policy: &Policy, now: u64) -> Result<Self, WideState> {
        Ok(Self::pack(&fresh_one(policy, now)))
    }
    fn widen(&self, _: &Layout) -> WideState {
        *self
    }
    fn with<R>(&self, layout: &Layout, f: impl FnOnce(&[QuotaState]) -> R) -> R {
        f(&[self.unpack(layout.algorithm)])
    }
    fn with_mut<R>(&mut self, layout: &Layout, f: impl Fn(&mut [QuotaState]) -> R) -> Option<R> {
        Some(WideState::with_mut(self, layout, f))
    }
    #[inline]
    fn admit(&mut self, layout: &Layout, policy: &Policy, now: u64, cost: u64) -> Option<bool> {
        Some(WideState::admit(self, layout, policy, now, cost))
    }
}

impl Packed for LogState {
    fn table<K>(tables: &Tables<K>) -> &HashTable<Entry<K, Self>> {
        &tables.log
    }
    fn table_mut<K>(tables: &mut Tables<K>) -> &mut HashTable<Entry<K, Self>> {
        &mut tables.log
    }
    fn fresh(_: &Layout, policy: &Policy, now: u64) -> Result<Self, WideState> {
        let state = fresh_one(policy, now);
        let ends = LogEnds::of(&state);
        Ok(Self { state, ends })
    }
    fn widen(&self, _: &Layout) -> WideState {
        // Never asked: the entry holds any log.
        WideState(0, 0, 0)
    }
    fn with<R>(&self, _: &Layout, f: impl FnOnce(&[QuotaState]) -> R) -> R {
        f(std::slice::from_ref(&self.state))
    }
    fn with_mut<R>(&mut self, _: &Layout, f: impl Fn(&mut [QuotaState]) -> R) -> Option<R> {
        let r = f(std::slice::from_mut(&mut self.state));
        self.ends = LogEnds::of(&self.state);
        Some(r)
    }
    #[inline]
    fn admit(&mut self, _: &Layout, policy: &Policy, now: u64, cost: u64) -> Option<bool> {
        match (policy.params(), &mut self.state) {
            ([q], QuotaState::SlidingWindowLog { entries, sum }) => Some(
                algorithm::log_take_at_ends(entries, sum, &mut self.ends, q, now, cost),
            ),
            _ => Some(false),
        }
    }
}

impl Packed for ListState {
    fn table<K>(tables: &Tables<K>) -> &HashTable<Entry<K, Self>> {
        &tables.list
    }
    fn table_mut<K>(tables: &mut Tables<K>) -> &mut HashTable<Entry<K, Self>> {
        &mut tables.list
    }
    fn fresh(_: &Layout, policy: &Policy, now: u64) -> Result<Self, WideState> {
        Ok(Self(
            algorithm::fresh_states(policy, now).into_boxed_slice(),
        ))
    }
    fn widen(&self, _: &Layout) -> WideState {
        // Never asked: a list holds any states.
        WideState(0, 0, 0)
    }
    fn with<R>(&self, _: &Layout, f: impl FnOnce(&[QuotaState]) -> R) -> R {
        f(&self.0)
    }
    fn with_mut<R>(&mut self, _: &Layout, f: impl Fn(&mut [QuotaState]) -> R) -> Option<R> {
        Some(f(&mut self.0))
    }
    #[inline]
    fn admit(&mut self, _: &Layout, policy: &Policy, now: u64, cost: u64) -> Option<bool> {
        Some(algorithm::admit_aligned(&mut self.0, policy, now, cost))
    }
}

/// What a call does to one key's states, on whichever form they are kept in. An operation
/// is a few references and numbers (`Copy`): when a state outgrows its form, it runs again
/// on the wide form of the state it left untouched.
trait Operation: Copy {
    type Out;
    /// `None` when `state`'s form cannot hold the result (`state` is left as it was).
    fn run<S: Packed>(self, state: &mut S, layout: &Layout) -> Option<Self::Out>;
    fn run_wide(self, state: &mut WideState, layout: &Layout) -> Self::Out;
}

/// [`MemoryStore::allow_sync`]: admit or deny, nothing else.
#[derive(Clone, Copy)]
struct Admit<'p> {
    policy: &'p Policy,
    now: u64,
    cost: u64,
}

impl Operation for Admit<'_> {
    type Out = bool;
    #[inline]
    fn run<S: Packed>(self, state: &mut S, layout: &Layout) -> Option<bool> {
        state.admit(layout, self.policy, self.now, self.cost)
    }
    fn run_wide(self, state: &mut WideState, layout: &Layout) -> bool {
        state.admit(layout, self.policy, self.now, self.cost)
    }
}

/// [`MemoryStore::acquire_sync`]: the decision with every quota's verdict.
#[derive(Clone, Copy)]
struct Decide<'p> {
    policy: &'p Policy,
    now: u64,
    cost: u64,
}

impl Decide<'_> {
    fn on(self, states: &mut [QuotaState]) -> (bool, Verdicts) {
        let Self { policy, now, cost } = self;
        match (states, policy.params()) {
            ([one], [q]) => {
                let (allowed, v) = algorithm::decide_one(one, q, now, cost);
                (allowed, Verdicts::One(v))
            }
            (s, _) => {
                let (allowed, v) = algorithm::decide_aligned(s, policy, now, cost);
                (allowed, Verdicts::Many(v))
            }
        }
    }
}

impl Operation for Decide<'_> {
    type Out = (bool, Verdicts);
    fn run<S: Packed>(self, state: &mut S, layout: &Layout) -> Option<Self::Out> {
        state.with_mut(layout, |s| self.on(s))
    }
    fn run_wide(self, state: &mut WideState, layout: &Layout) -> Self::Out {
        state.with_mut(layout, |s| self.on(s))
    }
}

/// [`MemoryStore::refund_sync`].
#[derive(Clone, Copy)]
struct Refund<'p> {
    policy: &'p Policy,
    now: u64,
    cost: u64,
}

impl Operation for Refund<'_> {
    type Out = ();
    fn run<S: Packed>(self, state: &mut S, layout: &Layout) -> Option<()> {
        let Self { policy, now, cost } = self;
        state.with_mut(layout, |s| algorithm::refund_aligned(s, policy, now, cost))
    }
    fn run_wide(self, state: &mut WideState, layout: &Layout) {
        let Self { policy, now, cost } = self;
        state.with_mut(layout, |s| algorithm::refund_aligned(s, policy, now, cost));
    }
}

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
    /// with its group's layout and `policy`.
    fn expiry(&self, layout: &Layout, policy: &Policy, now: u64) -> (u64, u64) {
        self.state
            .with(layout, |s| algorithm::expiry(s, policy.params(), now))
    }
}

// A single GCRA quota, token bucket, fixed window or sliding-window counter takes 24 bytes
// for a text key of up to 15 bytes, 16 for an id (the size of governor's `usize`-keyed
// entries).
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<Entry<KeyBuf, GcraState>>() == 24);
    assert!(std::mem::size_of::<Entry<u64, GcraState>>() == 16);
    assert!(std::mem::size_of::<Entry<KeyBuf, Word<Counter>>>() == 24);
    assert!(std::mem::size_of::<Entry<u64, Word<Counter>>>() == 16);
    // A single sliding-window log: the list's handle and total in the entry.
    assert!(std::mem::size_of::<Entry<KeyBuf, LogState>>() == 72);
    assert!(std::mem::size_of::<Entry<u64, LogState>>() == 64);
};

/// One table per state shape for one kind of key. A group uses its policy's shape, and a
/// one-word group also the wide table for the keys whose states outgrew their word; the
/// others stay empty (an empty table allocates nothing).
#[derive(Debug)]
struct Tables<K> {
    gcra: HashTable<Entry<K, GcraState>>,
    bucket: HashTable<Entry<K, Word<Bucket>>>,
    window: HashTable<Entry<K, Word<Window>>>,
    counter: HashTable<Entry<K, Word<Counter>>>,
    wide: HashTable<Entry<K, WideState>>,
    log: HashTable<Entry<K, LogState>>,
    list: HashTable<Entry<K, ListState>>,
}

impl<K> Default for Tables<K> {
    fn default() -> Self {
        Self {
            gcra: HashTable::new(),
            bucket: HashTable::new(),
            window: HashTable::new(),
            counter: HashTable::new(),
            wide: HashTable::new(),
            log: HashTable::new(),
            list: HashTable::new(),
        }
    }
}

impl<K: StoredKey> Tables<K> {
    fn len(&self) -> usize {
        self.gcra.len()
            + self.bucket.len()
            + self.window.len()
            + self.counter.len()
            + self.wide.len()
            + self.log.len()
            + self.list.len()
    }

    fn remove(&mut self, h: u64, key: K::Probe<'_>) {
        fn rm<K: StoredKey, S>(t: &mut HashTable<Entry<K, S>>, h: u64, key: K::Probe<'_>) {
            if let Ok(e) = t.find_entry(h, |e| e.key.matches(key)) {
                e.remove();
            }
        }
        rm(&mut self.gcra, h, key);
        rm(&mut self.bucket, h, key);
        rm(&mut self.window, h, key);
        rm(&mut self.counter, h, key);
        rm(&mut self.wide, h, key);
        rm(&mut self.log, h, key);
        rm(&mut self.list, h, key);
    }

    /// The entry of `key` in form `S`, or in the wide table when `S` may have moved there.
    fn find<S: Packed, R>(
        &self,
        h: u64,
        key: K::Probe<'_>,
        on_packed: impl FnOnce(&S) -> R,
        on_wide: impl FnOnce(&WideState) -> R,
    ) -> Option<R> {
        if let Some(e) = S::table(self).find(h, |e| e.key.matches(key)) {
            return Some(on_packed(&e.state));
        }
        if S::SPILLS && !self.wide.is_empty() {
            return self
                .wide
                .find(h, |e| e.key.matches(key))
                .map(|e| on_wide(&e.state));
        }
        None
    }

    /// Runs `op` on the entry of `key` in form `S` (or moved from it to the wide table);
    /// `None` when there is none. An entry whose state outgrows form `S` moves.
    #[inline]
    fn run<S: Packed, O: Operation>(
        &mut self,
        h: u64,
        key: K::Probe<'_>,
        layout: &Layout,
        rehash: &impl Fn(&K) -> u64,
        op: O,
    ) -> Option<O::Out> {
        if let Ok(mut found) = S::table_mut(self).find_entry(h, |e| e.key.matches(key)) {
            if let Some(out) = op.run(&mut found.get_mut().state, layout) {
                return Some(out);
            }
            let (Entry { key, state }, _) = found.remove();
            return Some(self.insert_wide(h, key, state.widen(layout), layout, rehash, op));
        }
        if S::SPILLS
            && !self.wide.is_empty()
            && let Some(e) = self.wide.find_mut(h, |e| e.key.matches(key))
        {
            return Some(op.run_wide(&mut e.state, layout));
        }
        None
    }

    /// Runs `op` on `fresh` (the states of a key not held yet, as [`Packed::fresh`] made
    /// them), then keeps the key in the form that holds what `op` left.
    fn run_fresh<S: Packed, O: Operation>(
        &mut self,
        h: u64,
        key: K,
        layout: &Layout,
        fresh: Result<S, WideState>,
        rehash: &impl Fn(&K) -> u64,
        op: O,
    ) -> O::Out {
        match fresh {
            Ok(mut state) => match op.run(&mut state, layout) {
                Some(out) => {
                    self.insert(h, key, state, rehash);
                    out
                }
                None => self.insert_wide(h, key, state.widen(layout), layout, rehash, op),
            },
            Err(wide) => self.insert_wide(h, key, wide, layout, rehash, op),
        }
    }

    /// Runs `op` on `wide`, then keeps it for `key`.
    #[cold]
    fn insert_wide<O: Operation>(
        &mut self,
        h: u64,
        key: K,
        mut wide: WideState,
        layout: &Layout,
        rehash: &impl Fn(&K) -> u64,
        op: O,
    ) -> O::Out {
        let out = op.run_wide(&mut wide, layout);
        self.insert(h, key, wide, rehash);
        out
    }

    fn insert<S: Packed>(&mut self, h: u64, key: K, state: S, rehash: &impl Fn(&K) -> u64) {
        S::table_mut(self).insert_unique(h, Entry { key, state }, |e| rehash(&e.key));
    }

    /// `(expires_at, holds)` at `now` of every entry, read with `layout` and `policy`.
    fn expiries<'a>(
        &'a self,
        layout: &'a Layout,
        policy: &'a Policy,
        now: u64,
    ) -> impl Iterator<Item = (u64, u64)> + 'a {
        (self.gcra.iter().map(move |e| e.expiry(layout, policy, now)))
            .chain(
                self.bucket
                    .iter()
                    .map(move |e| e.expiry(layout, policy, now)),
            )
            .chain(
                self.window
                    .iter()
                    .map(move |e| e.expiry(layout, policy, now)),
            )
            .chain(
                self.counter
                    .iter()
                    .map(move |e| e.expiry(layout, policy, now)),
            )
            .chain(self.wide.iter().map(move |e| e.expiry(layout, policy, now)))
            .chain(self.log.iter().map(move |e| e.expiry(layout, policy, now)))
            .chain(self.list.iter().map(move |e| e.expiry(layout, policy, now)))
    }

    /// Keep the entries for which `keep(expires_at, holds)` (at `now`, read with `layout`
    /// and `policy`) says so.
    fn retain(
        &mut self,
        layout: &Layout,
        policy: &Policy,
        now: u64,
        keep: &mut impl FnMut(u64, u64) -> bool,
    ) {
        let mut keep = |(at, held)| keep(at, held);
        self.gcra.retain(|e| keep(e.expiry(layout, policy, now)));
        self.bucket.retain(|e| keep(e.expiry(layout, policy, now)));
        self.window.retain(|e| keep(e.expiry(layout, policy, now)));
        self.counter.retain(|e| keep(e.expiry(layout, policy, now)));
        self.wide.retain(|e| keep(e.expiry(layout, policy, now)));
        self.log.retain(|e| keep(e.expiry(layout, policy, now)));
        self.list.retain(|e| keep(e.expiry(layout, policy, now)));
    }
}

/// The keys of one policy in one shard. A group is found by the policy's name and what its
/// states mean ([`Policy::reads_states_of`]: algorithm, number of quotas, and the window
/// algorithms' periods): a policy replaced by a matching one keeps the states (the group
/// follows the new object), any other gets a group of its own, so its keys start fresh; the
/// old group's keys expire or are evicted like any other. The Redis store behaves the same
/// way: its keys name the policy, quota, algorithm and a window algorithm's period.
#[derive(Debug)]
struct Group {
    policy: Policy,
    layout: Layout,
    text: Tables<KeyBuf>,
    ids: Tables<u64>,
}

impl Group {
    fn new(policy: &Policy) -> Self {
        Self {
            policy: policy.clone(),
            layout: Layout::of(policy),
            text: Tables::default(),
            ids: Tables::default(),
        }
    }

    /// Whether `policy` reads this group's states as they are.
    #[inline]
    fn fits(&self, policy: &Policy) -> bool {
        self.policy.same(policy)
            || (self.policy.name() == policy.name() && self.policy.reads_states_of(policy))
    }

    fn len(&self) -> usize {
        self.text.len() + self.ids.len()
    }

    fn expiries(&self, now: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        (self.text.expiries(&self.layout, &self.policy, now)).chain(self.ids.expiries(
            &self.layout,
            &self.policy,
            now,
        ))
    }

    fn retain(&mut self, now: u64, keep: &mut impl FnMut(u64, u64) -> bool) {
        self.text.retain(&self.layout, &self.policy, now, keep);
        self.ids.retain(&self.layout, &self.policy, now, keep);
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

    /// Reads the states of (policy, key) in form `S` with `f`; `None` when the key is not
    /// held.
    fn read<K: StoredKey, S: Packed, R>(
        &self,
        h: u64,
        policy: &Policy,
        key: K::Probe<'_>,
        f: impl Fn(&[QuotaState]) -> R,
    ) -> Option<R> {
        let g = self.group(policy)?;
        let layout = &g.layout;
        K::tables(g).find::<S, R>(h, key, |s| s.with(layout, &f), |w| w.with(layout, &f))
    }

    /// Runs `op` on the states of (policy, key) when held.
    fn run_existing<K: StoredKey, S: Packed, O: Operation>(
        &mut self,
        h: u64,
        policy: &Policy,
        key: K::Probe<'_>,
        rehash: &impl Fn(&K) -> u64,
        op: O,
    ) -> Option<O::Out> {
        let g = self
            .groups
            .find_mut(policy.name_hash(), |g| g.fits(policy))?;
        let layout = g.layout;
        K::tables_mut(g).run::<S, O>(h, key, &layout, rehash, op)
    }

    /// Forget `key` in the group that reads `policy`'s states; the groups of other forms
    /// of its name keep theirs (as the Redis store's keys of another form do).
    fn remove<K: StoredKey>(&mut self, h: u64, policy: &Policy, key: K::Probe<'_>) {
        if let Ok(g) = self
            .groups
            .find_entry(policy.name_hash(), |g| g.fits(policy))
        {
            K::tables_mut(g.into_mut()).remove(h, key);
        }
    }

    /// Runs `op` on the states of (policy, key), made fresh when missing. `rehash` gives a
    /// key's hash again when its table grows.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn with_slot<K: StoredKey, S: Packed, O: Operation>(
        &mut self,
        h: u64,
        policy: &Policy,
        key: K::Probe<'_>,
        now: u64,
        cap: usize,
        rehash: &impl Fn(&K) -> u64,
        op: O,
    ) -> O::Out {
        let g = self.group_mut(policy);
        let layout = g.layout;
        if let Some(out) = K::tables_mut(g).run::<S, O>(h, key, &layout, rehash, op) {
            return out;
        }
        if self.len() >= cap {
            self.evict(now, cap);
        }
        // Eviction may have dropped the group; a new one has its own layout.
        let g = self.group_mut(policy);
        let layout = g.layout;
        let fresh = S::fresh(&layout, policy, now);
        K::tables_mut(g).run_fresh::<S, O>(h, K::stored(key), &layout, fresh, rehash, op)
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
///   single quota of GCRA, token bucket, fixed window or sliding-window counter (its state
///   packed in one word), 24 plus the states behind one pointer for several quotas, 72 for
///   a single sliding-window log (its list's handle, total and end times held in the entry)
///   plus 16 per logged microsecond.
///   That includes the key when it has at most 15 bytes (user ids, IPv4 addresses); longer
///   keys add one allocation. An integer id ([`Subject::Id`]) takes 8 bytes less: 16 bytes
///   for a single quota, the size of governor's `usize`-keyed entries. A state that
///   outgrows its word (a bucket missing 1,024 tokens or more, a sliding-window count past
///   its field) moves to a table of 40-byte entries (32 with an id), with the same decisions.
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

    /// Runs `op` on the states of (policy, key) in form `S` under its shard's lock, made
    /// fresh when missing (what every consuming operation starts with).
    #[inline]
    fn with_slot<K: StoredKey, S: Packed, O: Operation>(
        &self,
        key: K::Probe<'_>,
        policy: &Policy,
        now: u64,
        op: O,
    ) -> O::Out {
        let (h, mut shard) = self.shard::<K>(policy, key);
        let name_hash = policy.name_hash();
        let rehash = |k: &K| self.hash_of(name_hash, |h| k.write_stored(h));
        shard.with_slot::<K, S, O>(h, policy, key, now, self.per_shard, &rehash, op)
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
        let op = Decide { policy, now, cost };
        let (allowed, verdicts) = self.with_slot::<K, S, _>(key, policy, now, op);
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
        self.with_slot::<K, S, _>(key, policy, now, Admit { policy, now, cost })
    }

    /// [`Store::peek`](crate::Store::peek), synchronously.
    pub fn peek_sync<'k>(&self, subject: impl Into<Subject<'k>>, policy: &Policy) -> Decision {
        dispatch!(subject.into(), policy, self.peek_in(policy))
    }

    fn peek_in<K: StoredKey, S: Packed>(&self, key: K::Probe<'_>, policy: &Policy) -> Decision {
        let now = self.clock.now();
        let (allowed, verdicts) = {
            let (h, shard) = self.shard::<K>(policy, key);
            shard
                .read::<K, S, _>(h, policy, key, |s| algorithm::peek(s, policy, now))
                .unwrap_or_else(|| algorithm::peek(&[], policy, now))
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
        let name_hash = policy.name_hash();
        let rehash = |k: &K| self.hash_of(name_hash, |h| k.write_stored(h));
        let op = Refund { policy, now, cost };
        shard.run_existing::<K, S, _>(h, policy, key, &rehash, op);
    }

    /// [`Store::reset`](crate::Store::reset), synchronously: forgets the subject's states
    /// under `policy`. States kept under another form of the policy's name (another
    /// algorithm, number of quotas, or a window algorithm's period) stay until they expire,
    /// as the Redis store's keys of that form do.
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
            let op = Admit {
                policy: p,
                now,
                cost,
            };
            shard.with_slot::<KeyBuf, Word<Window>, _>(
                7,
                p,
                Probe::new(key.as_bytes()),
                now,
                1_000,
                &|_| 7,
                op,
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
        let held = |shard: &Shard, p: &Policy, k| {
            shard
                .read::<KeyBuf, Word<Window>, _>(7, p, probe(k), |_| ())
                .is_some()
        };
        assert!(!held(&shard, &policy, "k0"));
        assert!(held(&shard, &other, "k0") && held(&shard, &policy, "k1"));
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
        // Reset forgets the key under the form it is given, as the Redis store does.
        assert!(store.allow_sync("k", &gcra, 1));
        assert!(store.allow_sync("k", &fw, 1));
        store.reset_sync("k", &gcra);
        assert_eq!(store.key_count(), 1);
        assert!(!store.allow_sync("k", &fw, 1));
        store.reset_sync("k", &fw);
        assert_eq!(store.key_count(), 0);
    }

    /// Keys of (text, id) held in wide form, summed over every shard and group.
    fn wide_keys(store: &MemoryStore) -> (usize, usize) {
        store.shards.iter().fold((0, 0), |(t, i), s| {
            let s = s.lock();
            let (dt, di) = s.groups.iter().fold((0, 0), |(t, i), g| {
                (t + g.text.wide.len(), i + g.ids.wide.len())
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
        let cases = [
            (
                single(
                    Algorithm::TokenBucket,
                    Quota::per_hour(100_000).with_burst(5_000),
                ),
                single(
                    Algorithm::TokenBucket,
                    Quota::per_hour(100_000).with_burst(8_000),
                ),
                700,
            ),
            (
                single(
                    Algorithm::TokenBucket,
                    Quota::per_hour(100_000).with_burst(5_000),
                ),
                single(
                    Algorithm::TokenBucket,
                    Quota::new(1_000, Duration::from_millis(1)),
                ),
                700,
            ),
            (
                single(
                    Algorithm::SlidingWindowCounter,
                    Quota::per_hour(1_000_000_000),
                ),
                single(
                    Algorithm::SlidingWindowCounter,
                    Quota::per_hour(900_000_000),
                ),
                1_500_000,
            ),
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
                            Decision::from_verdicts(
                                policy,
                                expected,
                                &verdicts,
                                DecisionSource::Store
                            ),
                            "{alg} step {step} {subject:?}"
                        );
                        d.allowed
                    };
                    assert_eq!(got, expected, "{alg} step {step} {subject:?}");
                    let (peeked, verdicts) = algorithm::peek(states, policy, now);
                    assert_eq!(
                        store.peek_sync(*subject, policy),
                        Decision::from_verdicts(policy, peeked, &verdicts, DecisionSource::Store),
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
                Decision::from_verdicts(&later, peeked, &verdicts, DecisionSource::Store),
                "{alg} after a refund"
            );
            // Moved keys are forgotten like any other.
            store.reset_sync("k", &later);
            store.reset_sync(7_u64, &later);
            store.reset_sync("late", &later);
            assert_eq!(store.key_count(), 0, "{alg}");
        }
    }

    proptest::proptest! {
        /// A word gives back exactly the state it was packed from, for any layout and values.
        #[test]
        fn words_unpack_to_what_they_packed(
            alg in proptest::sample::select(vec![
                Algorithm::TokenBucket,
                Algorithm::FixedWindow,
                Algorithm::SlidingWindowCounter,
            ]),
            period_ms in proptest::prop_oneof![
                proptest::strategy::Just(1_u64),
                1_u64..100_000,
                proptest::strategy::Just(31_622_400_000),
            ],
            burst in proptest::prop_oneof![1_u64..2_000, 1_u64..1 << 20],
            // Values of every magnitude, so that each field's edges are reached.
            a in (proptest::num::u64::ANY, 0_u32..64),
            b in (proptest::num::u64::ANY, 0_u32..64),
            c in (proptest::num::u64::ANY, 0_u32..64),
        ) {
            let [a, b, c] = [a, b, c].map(|(v, shift)| v >> shift);
            let quota = Quota::new(1, std::time::Duration::from_millis(period_ms)).with_burst(burst);
            let Ok(policy) = Policy::single("w", alg, quota) else {
                return Ok(());
            };
            let layout = Layout::of(&policy);
            // A state of the algorithm (a token bucket or fixed window has no third field).
            let wide = WideState::pack(&WideState(a, b, c).unpack(alg));
            fn round_trip<C: Codec>(wide: &WideState, layout: &Layout) -> Option<WideState> {
                C::narrow(wide, layout).map(|w| C::widen(w, layout))
            }
            let round_trip = match alg {
                Algorithm::TokenBucket => round_trip::<Bucket>,
                Algorithm::FixedWindow => round_trip::<Window>,
                _ => round_trip::<Counter>,
            };
            if let Some(back) = round_trip(&wide, &layout) {
                proptest::prop_assert_eq!(back, wide);
            }
            // What the algorithms make of a fresh key always fits.
            let fresh = fresh_one(&policy, a.min(algorithm::MAX_MICROS));
            proptest::prop_assert!(round_trip(&WideState::pack(&fresh), &layout).is_some());
        }
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
