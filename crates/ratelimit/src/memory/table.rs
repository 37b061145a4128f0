//! How a policy group keeps its keys' states: one typed table per group (plus a wide table
//! for one-word states that outgrew their word), generic over the small [`Form`] trait, so
//! that every algorithm's store code is the same code.

use std::fmt;

use hashbrown::HashTable;

use super::key::StoredKey;
use crate::algorithm::{
    self, FixedWindow, Gcra, LogEnds, Machine, OneWord, QuotaState, SlidingCounter, SlidingLog,
    TokenBucket, Verdict, WordLayout,
};
use crate::decision::{Decision, DecisionSource};
use crate::quota::{Algorithm, MAX_QUOTAS, Params, Policy};

/// The one quota of a single-quota group's policy.
#[inline]
fn only(policy: &Policy) -> &Params {
    match policy.params() {
        [q] => q,
        // A group is found only by policies of its own number of quotas.
        _ => unreachable!("a single-quota group serves single-quota policies"),
    }
}

/// What a call does to one key's states, whatever form they are kept in. An operation is a
/// few numbers (`Copy`): when a state outgrows its form, it runs again on the wide form of
/// the state it left untouched.
pub(super) trait Op: Copy {
    type Out;
    /// On the state of a single quota.
    fn one<M: Machine>(self, m: &mut M, q: &Params) -> Self::Out;
    /// On a single sliding-window log whose ends the entry keeps.
    fn log(self, log: &mut SlidingLog, ends: &mut LogEnds, q: &Params) -> Self::Out {
        let out = self.one(log, q);
        *ends = LogEnds::of(log);
        out
    }
    /// On the states of several quotas.
    fn list(self, states: &mut [QuotaState], policy: &Policy) -> Self::Out;
}

/// Admit or deny, nothing else ([`MemoryStore::allow_sync`](super::MemoryStore::allow_sync)).
#[derive(Clone, Copy)]
pub(super) struct Admit {
    pub(super) now: u64,
    pub(super) cost: u64,
}

impl Op for Admit {
    type Out = bool;
    #[inline]
    fn one<M: Machine>(self, m: &mut M, q: &Params) -> bool {
        m.take(q, self.now, self.cost)
    }
    #[inline]
    fn log(self, log: &mut SlidingLog, ends: &mut LogEnds, q: &Params) -> bool {
        log.take_at_ends(ends, q, self.now, self.cost)
    }
    fn list(self, states: &mut [QuotaState], policy: &Policy) -> bool {
        algorithm::admit_aligned(states, policy, self.now, self.cost)
    }
}

/// The decision with every quota's verdict, built where the verdicts are (a single quota's
/// raw verdict as the algorithm leaves it, several through a buffer on the stack): nothing
/// is allocated for one quota.
#[derive(Clone, Copy)]
pub(super) struct Decide {
    pub(super) now: u64,
    pub(super) cost: u64,
}

impl Op for Decide {
    type Out = Decision;
    #[inline]
    fn one<M: Machine>(self, m: &mut M, q: &Params) -> Decision {
        Decision::one(m.decide(q, self.now, self.cost), DecisionSource::Store)
    }
    fn list(self, states: &mut [QuotaState], policy: &Policy) -> Decision {
        let mut out = [Verdict::NONE; MAX_QUOTAS];
        let n = states.len().min(MAX_QUOTAS);
        let allowed =
            algorithm::decide_into(&mut states[..n], policy, self.now, self.cost, &mut out[..n]);
        Decision::from_verdicts(allowed, &out[..n], DecisionSource::Store)
    }
}

/// Give units back.
#[derive(Clone, Copy)]
pub(super) struct Refund {
    pub(super) now: u64,
    pub(super) cost: u64,
}

impl Op for Refund {
    type Out = ();
    fn one<M: Machine>(self, m: &mut M, q: &Params) {
        m.refund(q, self.now, self.cost);
    }
    fn list(self, states: &mut [QuotaState], policy: &Policy) {
        algorithm::refund_aligned(states, policy, self.now, self.cost);
    }
}

/// One lease call ([`crate::lease::lease`]): the request and the grant, all or nothing.
#[derive(Clone, Copy)]
pub(super) struct LeaseOp<'p> {
    pub(super) now: u64,
    pub(super) request: &'p crate::lease::LeaseRequest,
}

impl LeaseOp<'_> {
    fn answer(self, o: crate::lease::Outcome, verdicts: &[Verdict]) -> crate::lease::Lease {
        let mut lease = crate::lease::Lease::exact(Decision::from_verdicts(
            o.admitted,
            verdicts,
            DecisionSource::Store,
        ));
        lease.used_held = o.used_held;
        lease.stale_held = o.stale_held;
        lease.granted = o.granted;
        lease.lifetime = std::time::Duration::from_micros(o.lifetime);
        lease.granted_at = o.granted_at;
        lease
    }
}

impl Op for LeaseOp<'_> {
    type Out = crate::lease::Lease;
    fn one<M: Machine>(self, m: &mut M, q: &Params) -> Self::Out {
        let mut v = [Verdict::NONE];
        let mut one = crate::lease::One {
            machine: m,
            params: q,
        };
        let o = crate::lease::lease(&mut one, M::ALGORITHM, self.now, self.request, &mut v);
        self.answer(o, &v)
    }
    fn list(self, states: &mut [QuotaState], policy: &Policy) -> Self::Out {
        let mut out = [Verdict::NONE; MAX_QUOTAS];
        let n = states.len().min(MAX_QUOTAS);
        let mut many = crate::lease::Many {
            states: &mut states[..n],
            params: policy.params(),
        };
        let o = crate::lease::lease(
            &mut many,
            policy.algorithm(),
            self.now,
            self.request,
            &mut out[..n],
        );
        self.answer(o, &out[..n])
    }
}

/// Give back unspent leased units ([`crate::lease::release`]).
#[derive(Clone, Copy)]
pub(super) struct ReleaseOp {
    pub(super) now: u64,
    pub(super) units: u64,
    pub(super) granted_at: u64,
}

impl Op for ReleaseOp {
    type Out = ();
    fn one<M: Machine>(self, m: &mut M, q: &Params) {
        let mut one = crate::lease::One {
            machine: m,
            params: q,
        };
        crate::lease::release(
            &mut one,
            M::ALGORITHM,
            self.now,
            self.units,
            self.granted_at,
        );
    }
    fn list(self, states: &mut [QuotaState], policy: &Policy) {
        let mut many = crate::lease::Many {
            states,
            params: policy.params(),
        };
        crate::lease::release(
            &mut many,
            policy.algorithm(),
            self.now,
            self.units,
            self.granted_at,
        );
    }
}

/// What a call reads from one key's states without changing them.
pub(super) trait Read: Copy {
    type Out;
    fn one<M: Machine>(self, m: &M, q: &Params) -> Self::Out;
    fn list(self, states: &[QuotaState], policy: &Policy) -> Self::Out;
}

/// [`Machine::expiry`]: when the states turn fresh, and what they hold.
#[derive(Clone, Copy)]
pub(super) struct Expiry {
    pub(super) now: u64,
}

impl Read for Expiry {
    type Out = (u64, u64);
    fn one<M: Machine>(self, m: &M, q: &Params) -> (u64, u64) {
        m.expiry(q, self.now)
    }
    fn list(self, states: &[QuotaState], policy: &Policy) -> (u64, u64) {
        algorithm::expiry(states, policy.params(), self.now)
    }
}

/// What a request of cost 1 would get, consuming nothing.
#[derive(Clone, Copy)]
pub(super) struct Peek {
    pub(super) now: u64,
}

impl Read for Peek {
    type Out = Decision;
    fn one<M: Machine>(self, m: &M, q: &Params) -> Decision {
        let mut v = m.check(q, self.now, 1);
        if v.allowed {
            v.remaining += 1;
        }
        Decision::from_verdicts(v.allowed, &[v], DecisionSource::Store)
    }
    fn list(self, states: &[QuotaState], policy: &Policy) -> Decision {
        let (allowed, v) = algorithm::peek(states, policy, self.now);
        Decision::from_verdicts(allowed, &v, DecisionSource::Store)
    }
}

/// How a group keeps one key's states. A form that may outgrow itself (`SPILLS`) moves a
/// key's states to its [`Wide`](Self::Wide) form, which holds any.
pub(super) trait Form: Sized + fmt::Debug {
    type Wide: Form;
    const SPILLS: bool = false;
    /// The fresh states of `policy`, or their wide form when this one cannot hold them.
    fn fresh(layout: &WordLayout, policy: &Policy, now: u64) -> Result<Self, Self::Wide>;
    /// Runs `op`; `None`, with the states unchanged, when this form cannot hold the result.
    fn run<O: Op>(&mut self, layout: &WordLayout, policy: &Policy, op: O) -> Option<O::Out>;
    fn read<R: Read>(&self, layout: &WordLayout, policy: &Policy, r: R) -> R::Out;
    /// These states in the wide form.
    fn widen(&self, layout: &WordLayout) -> Self::Wide;
    /// This form's table among a group's.
    fn typed<K>(tables: &Tables<K>) -> &Typed<K, Self>;
    fn typed_mut<K>(tables: &mut Tables<K>) -> &mut Typed<K, Self>;
}

/// A single quota's state in one word, laid out by its algorithm's codec.
pub(super) struct Word<M>(u64, std::marker::PhantomData<M>);

impl<M> fmt::Debug for Word<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Word({:#x})", self.0)
    }
}

/// A single quota's state at full width: what a [`Word`] cannot hold, and a log with its
/// ends.
#[derive(Debug)]
pub(super) struct Full<M>(M);

/// A single sliding-window log, held in the entry with the times of its ends, so that an
/// admission that drops nothing from the window reads only the entry.
#[derive(Debug)]
pub(super) struct Log {
    log: SlidingLog,
    ends: LogEnds,
}

/// Several quotas behind one pointer.
#[derive(Debug)]
pub(super) struct List(Box<[QuotaState]>);

impl<M: OneWord + WordTable> Form for Word<M> {
    type Wide = Full<M>;
    const SPILLS: bool = true;
    fn fresh(layout: &WordLayout, policy: &Policy, now: u64) -> Result<Self, Full<M>> {
        let m = M::fresh(only(policy), now);
        m.pack(layout)
            .map(|w| Self(w, std::marker::PhantomData))
            .ok_or(Full(m))
    }
    #[inline(always)]
    fn run<O: Op>(&mut self, layout: &WordLayout, policy: &Policy, op: O) -> Option<O::Out> {
        let mut m = M::unpack(self.0, layout);
        let out = op.one(&mut m, only(policy));
        self.0 = m.pack(layout)?;
        Some(out)
    }
    fn read<R: Read>(&self, layout: &WordLayout, policy: &Policy, r: R) -> R::Out {
        r.one(&M::unpack(self.0, layout), only(policy))
    }
    fn widen(&self, layout: &WordLayout) -> Full<M> {
        Full(M::unpack(self.0, layout))
    }
    fn typed<K>(tables: &Tables<K>) -> &Typed<K, Self> {
        &M::table(tables).words
    }
    fn typed_mut<K>(tables: &mut Tables<K>) -> &mut Typed<K, Self> {
        &mut M::table_mut(tables).words
    }
}

impl<M: OneWord + WordTable> Form for Full<M> {
    type Wide = Self;
    fn fresh(_: &WordLayout, policy: &Policy, now: u64) -> Result<Self, Self> {
        Ok(Self(M::fresh(only(policy), now)))
    }
    fn run<O: Op>(&mut self, _: &WordLayout, policy: &Policy, op: O) -> Option<O::Out> {
        Some(op.one(&mut self.0, only(policy)))
    }
    fn read<R: Read>(&self, _: &WordLayout, policy: &Policy, r: R) -> R::Out {
        r.one(&self.0, only(policy))
    }
    fn widen(&self, _: &WordLayout) -> Self {
        Self(self.0)
    }
    fn typed<K>(tables: &Tables<K>) -> &Typed<K, Self> {
        &M::table(tables).wide
    }
    fn typed_mut<K>(tables: &mut Tables<K>) -> &mut Typed<K, Self> {
        &mut M::table_mut(tables).wide
    }
}

impl Form for Log {
    type Wide = Self;
    fn fresh(_: &WordLayout, policy: &Policy, now: u64) -> Result<Self, Self> {
        let log = SlidingLog::fresh(only(policy), now);
        let ends = LogEnds::of(&log);
        Ok(Self { log, ends })
    }
    #[inline]
    fn run<O: Op>(&mut self, _: &WordLayout, policy: &Policy, op: O) -> Option<O::Out> {
        Some(op.log(&mut self.log, &mut self.ends, only(policy)))
    }
    fn read<R: Read>(&self, _: &WordLayout, policy: &Policy, r: R) -> R::Out {
        r.one(&self.log, only(policy))
    }
    fn widen(&self, _: &WordLayout) -> Self {
        unreachable!("a log never outgrows its entry")
    }
    fn typed<K>(tables: &Tables<K>) -> &Typed<K, Self> {
        match tables {
            Tables::Log(t) => t,
            _ => unreachable!("a log group has a log table"),
        }
    }
    fn typed_mut<K>(tables: &mut Tables<K>) -> &mut Typed<K, Self> {
        match tables {
            Tables::Log(t) => t,
            _ => unreachable!("a log group has a log table"),
        }
    }
}

impl Form for List {
    type Wide = Self;
    fn fresh(_: &WordLayout, policy: &Policy, now: u64) -> Result<Self, Self> {
        Ok(Self(
            algorithm::fresh_states(policy, now).into_boxed_slice(),
        ))
    }
    fn run<O: Op>(&mut self, _: &WordLayout, policy: &Policy, op: O) -> Option<O::Out> {
        Some(op.list(&mut self.0, policy))
    }
    fn read<R: Read>(&self, _: &WordLayout, policy: &Policy, r: R) -> R::Out {
        r.list(&self.0, policy)
    }
    fn widen(&self, _: &WordLayout) -> Self {
        unreachable!("a list never outgrows its entry")
    }
    fn typed<K>(tables: &Tables<K>) -> &Typed<K, Self> {
        match tables {
            Tables::List(t) => t,
            _ => unreachable!("a list group has a list table"),
        }
    }
    fn typed_mut<K>(tables: &mut Tables<K>) -> &mut Typed<K, Self> {
        match tables {
            Tables::List(t) => t,
            _ => unreachable!("a list group has a list table"),
        }
    }
}

/// Which of a group's tables holds a one-word machine's words.
pub(super) trait WordTable: Sized {
    fn table<K>(tables: &Tables<K>) -> &Spilling<K, Self>;
    fn table_mut<K>(tables: &mut Tables<K>) -> &mut Spilling<K, Self>;
}

macro_rules! word_table {
    ($machine:ty, $variant:ident) => {
        impl WordTable for $machine {
            #[inline]
            fn table<K>(tables: &Tables<K>) -> &Spilling<K, Self> {
                match tables {
                    Tables::$variant(t) => t,
                    _ => unreachable!("a group has the table of its policy's form"),
                }
            }
            #[inline]
            fn table_mut<K>(tables: &mut Tables<K>) -> &mut Spilling<K, Self> {
                match tables {
                    Tables::$variant(t) => t,
                    _ => unreachable!("a group has the table of its policy's form"),
                }
            }
        }
    };
}
word_table!(Gcra, Gcra);
word_table!(TokenBucket, Bucket);
word_table!(FixedWindow, Window);
word_table!(SlidingCounter, Counter);

/// One key of one policy group: the key and its states, nothing else (the policy is the
/// group's).
#[derive(Debug)]
pub(super) struct Entry<K, F> {
    key: K,
    state: F,
}

// A single GCRA quota, token bucket, fixed window or sliding-window counter takes 24 bytes
// for a text key of up to 15 bytes, 16 for an id (the size of governor's `usize`-keyed
// entries); a single sliding-window log keeps its list's handle, total and ends inline.
#[cfg(target_pointer_width = "64")]
const _: () = {
    use super::key::KeyBuf;
    assert!(size_of::<Entry<KeyBuf, Word<Gcra>>>() == 24);
    assert!(size_of::<Entry<u64, Word<Gcra>>>() == 16);
    assert!(size_of::<Entry<KeyBuf, Word<SlidingCounter>>>() == 24);
    assert!(size_of::<Entry<u64, Word<SlidingCounter>>>() == 16);
    assert!(size_of::<Entry<KeyBuf, Log>>() == 72);
    assert!(size_of::<Entry<u64, Log>>() == 64);
};

/// The keys of one form in one group.
#[derive(Debug)]
pub(super) struct Typed<K, F>(HashTable<Entry<K, F>>);

impl<K, F> Default for Typed<K, F> {
    fn default() -> Self {
        Self(HashTable::new())
    }
}

/// A one-word table and the wide table its outgrown states move to.
#[derive(Debug)]
pub(super) struct Spilling<K, M> {
    words: Typed<K, Word<M>>,
    wide: Typed<K, Full<M>>,
}

impl<K, M> Default for Spilling<K, M> {
    fn default() -> Self {
        Self {
            words: Typed::default(),
            wide: Typed::default(),
        }
    }
}

impl<K: StoredKey, F: Form> Typed<K, F> {
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn remove(&mut self, h: u64, key: K::Probe<'_>) {
        if let Ok(e) = self.0.find_entry(h, |e| e.key.matches(key)) {
            e.remove();
        }
    }

    pub(super) fn insert(&mut self, h: u64, key: K, state: F, rehash: &impl Fn(&K) -> u64) {
        self.0
            .insert_unique(h, Entry { key, state }, |e| rehash(&e.key));
    }

    /// `read` on every entry's states.
    pub(super) fn read_all<'a, R: Read + 'a>(
        &'a self,
        layout: &'a WordLayout,
        policy: &'a Policy,
        r: R,
    ) -> impl Iterator<Item = R::Out> + 'a {
        self.0.iter().map(move |e| e.state.read(layout, policy, r))
    }

    /// Keep the entries for which `keep(expires_at, holds)` at `now` says so.
    pub(super) fn retain(
        &mut self,
        layout: &WordLayout,
        policy: &Policy,
        now: u64,
        keep: &mut impl FnMut(u64, u64) -> bool,
    ) {
        self.0.retain(|e| {
            let (at, held) = e.state.read(layout, policy, Expiry { now });
            keep(at, held)
        });
    }
}

/// A group's one table (two for the one-word forms: the words and the wide states), of the
/// form its policy's algorithm and number of quotas make.
#[derive(Debug)]
pub(super) enum Tables<K> {
    Gcra(Spilling<K, Gcra>),
    Bucket(Spilling<K, TokenBucket>),
    Window(Spilling<K, FixedWindow>),
    Counter(Spilling<K, SlidingCounter>),
    Log(Typed<K, Log>),
    List(Typed<K, List>),
}

/// `$body` with `$t` bound to each typed table of `$tables` (the wide one too).
macro_rules! each_table {
    ($tables:expr, $t:ident => $body:expr) => {
        match $tables {
            Tables::Gcra(s) => {
                let $t = &mut s.words;
                $body;
                let $t = &mut s.wide;
                $body;
            }
            Tables::Bucket(s) => {
                let $t = &mut s.words;
                $body;
                let $t = &mut s.wide;
                $body;
            }
            Tables::Window(s) => {
                let $t = &mut s.words;
                $body;
                let $t = &mut s.wide;
                $body;
            }
            Tables::Counter(s) => {
                let $t = &mut s.words;
                $body;
                let $t = &mut s.wide;
                $body;
            }
            Tables::Log($t) => $body,
            Tables::List($t) => $body,
        }
    };
}

impl<K: StoredKey> Tables<K> {
    /// The tables a group of `policy` keeps.
    pub(super) fn of(policy: &Policy) -> Self {
        if policy.params().len() != 1 {
            return Self::List(Typed::default());
        }
        match policy.algorithm() {
            Algorithm::Gcra => Self::Gcra(Spilling::default()),
            Algorithm::TokenBucket => Self::Bucket(Spilling::default()),
            Algorithm::FixedWindow => Self::Window(Spilling::default()),
            Algorithm::SlidingWindowCounter => Self::Counter(Spilling::default()),
            Algorithm::SlidingWindowLog => Self::Log(Typed::default()),
        }
    }

    pub(super) fn len(&mut self) -> usize {
        let mut n = 0;
        each_table!(self, t => n += t.len());
        n
    }

    /// Keys held in a wide table (states that outgrew their word).
    #[cfg(test)]
    pub(super) fn wide_len(&self) -> usize {
        match self {
            Self::Gcra(s) => s.wide.len(),
            Self::Bucket(s) => s.wide.len(),
            Self::Window(s) => s.wide.len(),
            Self::Counter(s) => s.wide.len(),
            Self::Log(_) | Self::List(_) => 0,
        }
    }

    pub(super) fn remove(&mut self, h: u64, key: K::Probe<'_>) {
        each_table!(self, t => t.remove(h, key));
    }

    /// `(expires_at, holds)` at `now` of every entry.
    pub(super) fn expiries(
        &mut self,
        layout: &WordLayout,
        policy: &Policy,
        now: u64,
        out: &mut Vec<(u64, u64)>,
    ) {
        each_table!(self, t => out.extend(t.read_all(layout, policy, Expiry { now })));
    }

    pub(super) fn retain(
        &mut self,
        layout: &WordLayout,
        policy: &Policy,
        now: u64,
        keep: &mut impl FnMut(u64, u64) -> bool,
    ) {
        each_table!(self, t => t.retain(layout, policy, now, keep));
    }

    /// `r` on the states of `key` in form `F` (or moved from it to its wide form); `None`
    /// when the key is not held.
    pub(super) fn read<F: Form, R: Read>(
        &self,
        h: u64,
        key: K::Probe<'_>,
        layout: &WordLayout,
        policy: &Policy,
        r: R,
    ) -> Option<R::Out> {
        if let Some(e) = F::typed(self).0.find(h, |e| e.key.matches(key)) {
            return Some(e.state.read(layout, policy, r));
        }
        let wide = F::Wide::typed(self);
        if F::SPILLS && wide.len() > 0 {
            return wide
                .0
                .find(h, |e| e.key.matches(key))
                .map(|e| e.state.read(layout, policy, r));
        }
        None
    }

    /// Runs `op` on the states of `key` in form `F` (or moved from it to its wide form);
    /// `None` when there is none. States that outgrow form `F` move.
    #[inline]
    pub(super) fn run<F: Form, O: Op>(
        &mut self,
        h: u64,
        key: K::Probe<'_>,
        layout: &WordLayout,
        policy: &Policy,
        rehash: &impl Fn(&K) -> u64,
        op: O,
    ) -> Option<O::Out> {
        if let Ok(mut found) = F::typed_mut(self).0.find_entry(h, |e| e.key.matches(key)) {
            if let Some(out) = found.get_mut().state.run(layout, policy, op) {
                return Some(out);
            }
            let (Entry { key, state }, _) = found.remove();
            return Some(self.insert_wide::<F, O>(
                h,
                key,
                state.widen(layout),
                layout,
                policy,
                rehash,
                op,
            ));
        }
        if F::SPILLS {
            let wide = F::Wide::typed_mut(self);
            if wide.len() > 0
                && let Some(e) = wide.0.find_mut(h, |e| e.key.matches(key))
            {
                return e.state.run(layout, policy, op);
            }
        }
        None
    }

    /// Runs `op` on the fresh states of a key not held yet, then keeps the key in the form
    /// that holds what `op` left.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_fresh<F: Form, O: Op>(
        &mut self,
        h: u64,
        key: K,
        layout: &WordLayout,
        policy: &Policy,
        now: u64,
        rehash: &impl Fn(&K) -> u64,
        op: O,
    ) -> O::Out {
        match F::fresh(layout, policy, now) {
            Ok(mut state) => match state.run(layout, policy, op) {
                Some(out) => {
                    F::typed_mut(self).insert(h, key, state, rehash);
                    out
                }
                None => self.insert_wide::<F, O>(
                    h,
                    key,
                    state.widen(layout),
                    layout,
                    policy,
                    rehash,
                    op,
                ),
            },
            Err(wide) => self.insert_wide::<F, O>(h, key, wide, layout, policy, rehash, op),
        }
    }

    /// Runs `op` on `wide`, then keeps it for `key`.
    #[cold]
    #[allow(clippy::too_many_arguments)]
    fn insert_wide<F: Form, O: Op>(
        &mut self,
        h: u64,
        key: K,
        mut wide: F::Wide,
        layout: &WordLayout,
        policy: &Policy,
        rehash: &impl Fn(&K) -> u64,
        op: O,
    ) -> O::Out {
        let out = wide
            .run(layout, policy, op)
            .unwrap_or_else(|| unreachable!("a wide form holds any state"));
        F::Wide::typed_mut(self).insert(h, key, wide, rehash);
        out
    }
}

/// The keys of one policy in one shard. A group is found by the policy's name and what its
/// states mean ([`Policy::reads_states_of`]: algorithm, number of quotas, and the window
/// algorithms' periods): a policy replaced by a matching one keeps the states (the group
/// follows the new object), any other gets a group of its own, so its keys start fresh; the
/// old group's keys expire or are evicted like any other. The Redis store behaves the same
/// way: its keys name the policy, quota, algorithm and a window algorithm's period.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) policy: Policy,
    /// How the group's one-word states are laid out, fixed when it is made (a policy
    /// replaced later by one with other figures is still read with it: a state its fields
    /// cannot hold moves to the wide table instead).
    pub(super) layout: WordLayout,
    pub(super) text: Tables<super::key::KeyBuf>,
    pub(super) ids: Tables<u64>,
}

impl Group {
    fn new(policy: &Policy) -> Self {
        let layout = match (policy.algorithm(), policy.params()) {
            (Algorithm::TokenBucket, [q]) => TokenBucket::layout(q),
            (Algorithm::FixedWindow, [q]) => FixedWindow::layout(q),
            (Algorithm::SlidingWindowCounter, [q]) => SlidingCounter::layout(q),
            _ => WordLayout::default(),
        };
        Self {
            policy: policy.clone(),
            layout,
            text: Tables::of(policy),
            ids: Tables::of(policy),
        }
    }

    /// Whether `policy` reads this group's states as they are.
    #[inline(always)]
    fn fits(&self, policy: &Policy) -> bool {
        self.policy.same(policy) || self.matches(policy)
    }

    /// [`fits`](Self::fits) for another policy object (out of line: rare).
    #[cold]
    #[inline(never)]
    fn matches(&self, policy: &Policy) -> bool {
        self.policy.name() == policy.name() && self.policy.reads_states_of(policy)
    }

    pub(super) fn len(&mut self) -> usize {
        self.text.len() + self.ids.len()
    }
}

/// A group found under another object of a matching policy follows that one.
#[cold]
#[inline(never)]
fn follow(g: &mut Group, policy: &Policy) {
    g.policy = policy.clone();
}

/// The group of a policy first seen in this shard.
#[cold]
#[inline(never)]
fn new_group<'t>(groups: &'t mut HashTable<Group>, policy: &Policy) -> &'t mut Group {
    groups
        .insert_unique(policy.name_hash(), Group::new(policy), |g| {
            g.policy.name_hash()
        })
        .into_mut()
}

/// One shard's keys, grouped by policy ([`Group`]); each group's tables find a key by the
/// store's hash of (policy name, key) and tell keys apart by comparing them, so two keys
/// whose hashes collide still never share state.
#[derive(Debug, Default)]
pub(super) struct Shard {
    pub(super) groups: HashTable<Group>,
}

impl Shard {
    pub(super) fn len(&mut self) -> usize {
        self.groups.iter_mut().map(Group::len).sum()
    }

    /// The group of `policy`, made when missing, following `policy` from now on. Inlined
    /// into every call: the usual case is one probe and a pointer comparison (the same
    /// policy object as last time); the rest is out of line.
    #[inline(always)]
    fn group_mut(&mut self, policy: &Policy) -> &mut Group {
        match self
            .groups
            .find_entry(policy.name_hash(), |g| g.fits(policy))
        {
            Ok(found) => {
                let g = found.into_mut();
                if !g.policy.same(policy) {
                    follow(g, policy);
                }
                g
            }
            Err(absent) => new_group(absent.into_table(), policy),
        }
    }

    /// `r` on the states of (policy, key) in form `F`; `None` when the key is not held.
    pub(super) fn read<K: StoredKey, F: Form, R: Read>(
        &self,
        h: u64,
        policy: &Policy,
        key: K::Probe<'_>,
        r: R,
    ) -> Option<R::Out> {
        let g = self.groups.find(policy.name_hash(), |g| g.fits(policy))?;
        K::tables(g).read::<F, R>(h, key, &g.layout, policy, r)
    }

    /// Runs `op` on the states of (policy, key) when held.
    pub(super) fn run_existing<K: StoredKey, F: Form, O: Op>(
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
        K::tables_mut(g).run::<F, O>(h, key, &layout, policy, rehash, op)
    }

    /// Forget `key` in the group that reads `policy`'s states; the groups of other forms
    /// of its name keep theirs (as the Redis store's keys of another form do).
    pub(super) fn remove<K: StoredKey>(&mut self, h: u64, policy: &Policy, key: K::Probe<'_>) {
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
    pub(super) fn with_slot<K: StoredKey, F: Form, O: Op>(
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
        if let Some(out) = K::tables_mut(g).run::<F, O>(h, key, &layout, policy, rehash, op) {
            return out;
        }
        if self.len() >= cap {
            self.evict(now, cap);
        }
        // Eviction may have dropped the group; a new one has its own layout.
        let g = self.group_mut(policy);
        let layout = g.layout;
        K::tables_mut(g).run_fresh::<F, O>(h, K::stored(key), &layout, policy, now, rehash, op)
    }
}
