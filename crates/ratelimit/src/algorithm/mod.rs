//! The five algorithms as pure state transitions: no I/O, no clock, no locks.
//!
//! Time is whole microseconds since the Unix epoch. **One algorithm, one module**: each of
//! `gcra`, `token_bucket`, `fixed_window`, `sliding_log` and `sliding_counter` owns its state
//! and every transition of it (the crate-internal `Machine` trait): `check` (pure: would a
//! request of this cost be admitted, and what would remain), `take` (check and apply, the
//! hot path), `refund`, `expiry` (when the state turns equivalent to a fresh one), and, for
//! the algorithms whose state fits in one machine word, the word's codec (`OneWord`). Each
//! module sits beside its Lua transcription in `src/lua/` (integers below 2^53, which Lua's
//! doubles hold exactly; the sliding counter's weighting is the same IEEE-754 double
//! arithmetic in both). Fixing an algorithm touches its module and its script.
//!
//! A [`QuotaState`] is the state of one quota for one key, of any algorithm, with the same
//! transitions public: [`check`](QuotaState::check), [`consume`](QuotaState::consume) and
//! [`refund`](QuotaState::refund).
//!
//! [`decide`] applies a whole [`Policy`]: every quota is checked first and
//! the request is consumed from all of them only when all admit it, so a denial by one quota
//! consumes from none.
//!
//! ```
//! use palisade_ratelimit::algorithm::{decide, fresh_states};
//! use palisade_ratelimit::{Algorithm, Policy, Quota};
//!
//! let policy = Policy::builder("p")
//!     .algorithm(Algorithm::FixedWindow)
//!     .quota("per_second", Quota::per_second(2))
//!     .quota("per_minute", Quota::per_minute(3))
//!     .build()?;
//! let now = 1_700_000_000_000_000;
//! let mut states = fresh_states(&policy, now);
//! assert!(decide(&mut states, &policy, now, 1).0);
//! assert!(decide(&mut states, &policy, now, 1).0);
//! assert!(!decide(&mut states, &policy, now, 1).0); // 2 per second
//! # Ok::<(), palisade_ratelimit::Error>(())
//! ```

use std::fmt;

pub use crate::decision::Verdict;
use crate::decision::{Decision, DecisionSource, RawVerdict};
use crate::quota::{Algorithm, MAX_QUOTAS, Params, Policy, Quota};

mod fixed_window;
mod gcra;
mod sliding_counter;
mod sliding_log;
mod token_bucket;

pub(crate) use fixed_window::FixedWindow;
pub(crate) use gcra::Gcra;
pub(crate) use sliding_counter::SlidingCounter;
pub(crate) use sliding_log::{LogEnds, SlidingLog};
pub(crate) use token_bucket::TokenBucket;

/// Times beyond 2^53 µs (year 2255) are treated as 2^53 µs: every value the algorithms
/// store stays exact in a double (Lua) and no arithmetic can overflow.
pub const MAX_MICROS: u64 = 1 << 53;

/// One algorithm: its state of one quota for one key, and every transition of it. Time is
/// capped at [`MAX_MICROS`] by each transition; time that goes backwards is time that stands
/// still, so no clock admits extra requests by stepping back.
pub(crate) trait Machine: Clone + fmt::Debug + PartialEq {
    /// The algorithm this machine runs.
    const ALGORITHM: Algorithm;
    /// The state of a key never seen before.
    fn fresh(q: &Params, now: u64) -> Self;
    /// What a request of `cost` would get at `now`; changes nothing.
    fn check(&self, q: &Params, now: u64, cost: u64) -> Verdict;
    /// `check(..).allowed`, without the other figures.
    fn admits(&self, q: &Params, now: u64, cost: u64) -> bool {
        self.clone().take(q, now, cost)
    }
    /// Check and, when admitted, apply: the whole decision of a single quota, and what a
    /// policy of several applies to each once all have admitted. A denial changes nothing.
    fn take(&mut self, q: &Params, now: u64, cost: u64) -> bool;
    /// `check`, then `take` when admitted: the verdict of a single quota's decision with
    /// the request applied, its figures left for the reader to compute. An algorithm may do
    /// it in one pass (GCRA does), as long as the verdict and the new state are those of
    /// `check` and `take`.
    #[inline]
    fn decide(&mut self, q: &Params, now: u64, cost: u64) -> RawVerdict {
        let v = self.check(q, now, cost);
        if v.allowed {
            let taken = self.take(q, now, cost);
            debug_assert!(taken, "check admitted the request");
        }
        RawVerdict::of(&v)
    }
    /// Give back up to `cost` units (never beyond the capacity, never below zero).
    fn refund(&mut self, q: &Params, now: u64, cost: u64);
    /// When the state turns equivalent to a fresh one if no request comes (every decision,
    /// peek and refund from then on is the same as on a fresh state), and how many units it
    /// holds at `now`. A store may drop it from that time on without admitting anything
    /// extra, and, when it must forget live keys, forgets first those holding least.
    fn expiry(&self, q: &Params, now: u64) -> (u64, u64);
}

/// What a store call does to one key's states, whatever form the store keeps them in: one
/// machine, a single sliding-window log with its ends, or the states of several quotas. An
/// operation is a few numbers (`Copy`): when a state outgrows its form, the store runs it
/// again on the wider form of the state it left untouched. The memory store runs its calls
/// as these; the lease calls are ones too (`crate::lease`).
pub(crate) trait Op: Copy {
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

// The memory store's calls as operations (its lease calls are in `crate::lease`).

/// Admit or deny, nothing else (`MemoryStore::allow_sync`).
#[derive(Clone, Copy)]
pub(crate) struct Admit {
    pub(crate) now: u64,
    pub(crate) cost: u64,
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
        admit_aligned(states, policy, self.now, self.cost)
    }
}

/// The decision with every quota's verdict, built where the verdicts are (a single quota's
/// raw verdict as the algorithm leaves it, several through a buffer on the stack): nothing
/// is allocated for one quota.
#[derive(Clone, Copy)]
pub(crate) struct Decide {
    pub(crate) now: u64,
    pub(crate) cost: u64,
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
        let allowed = decide_into(&mut states[..n], policy, self.now, self.cost, &mut out[..n]);
        Decision::from_verdicts(allowed, &out[..n], DecisionSource::Store)
    }
}

/// Give units back.
#[derive(Clone, Copy)]
pub(crate) struct Refund {
    pub(crate) now: u64,
    pub(crate) cost: u64,
}

impl Op for Refund {
    type Out = ();
    fn one<M: Machine>(self, m: &mut M, q: &Params) {
        m.refund(q, self.now, self.cost);
    }
    fn list(self, states: &mut [QuotaState], policy: &Policy) {
        refund_aligned(states, policy, self.now, self.cost);
    }
}

/// What a request of cost 1 would get, consuming nothing.
#[derive(Clone, Copy)]
pub(crate) struct Peek {
    pub(crate) now: u64,
}

impl Op for Peek {
    type Out = Decision;
    fn one<M: Machine>(self, m: &mut M, q: &Params) -> Decision {
        let v = peeked(m.check(q, self.now, 1));
        Decision::from_verdicts(v.allowed, &[v], DecisionSource::Store)
    }
    fn list(self, states: &mut [QuotaState], policy: &Policy) -> Decision {
        let (allowed, v) = peek(states, policy, self.now);
        Decision::from_verdicts(allowed, &v, DecisionSource::Store)
    }
}

/// How a store packs a [`OneWord`] state in one `u64`: the bits of its low field, and a
/// token bucket's capacity (the word holds how many tokens are missing from it). Fixed when
/// a store's group of keys is made; a state the layout cannot hold stays at full width.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WordLayout {
    pub(crate) low: u32,
    pub(crate) capacity: u64,
}

/// A machine whose state usually fits in one word: its codec.
pub(crate) trait OneWord: Machine + Copy {
    /// The layout for a quota's figures.
    fn layout(q: &Params) -> WordLayout;
    /// The state in one word, or `None` when `layout`'s fields cannot hold it.
    fn pack(&self, layout: &WordLayout) -> Option<u64>;
    /// The state a word of `layout` holds.
    fn unpack(word: u64, layout: &WordLayout) -> Self;
}

/// Whether `v` fits in `bits` bits.
#[inline]
pub(crate) fn fits_in(v: u64, bits: u32) -> bool {
    v.checked_shr(bits).unwrap_or(0) == 0
}

/// Bits a window index takes at most: that of the largest time over the period.
pub(crate) fn window_bits(q: &Params) -> u32 {
    64 - (MAX_MICROS / q.period).leading_zeros()
}

/// The stored state of one quota for one key, of any algorithm.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaState(pub(crate) AnyState);

/// One machine's state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AnyState {
    TokenBucket(TokenBucket),
    Gcra(Gcra),
    FixedWindow(FixedWindow),
    SlidingLog(SlidingLog),
    SlidingCounter(SlidingCounter),
}

/// `$s.$method($args)` on whichever machine's state `$state` holds.
macro_rules! on_machine {
    ($state:expr, $s:ident => $call:expr) => {
        match $state {
            AnyState::TokenBucket($s) => $call,
            AnyState::Gcra($s) => $call,
            AnyState::FixedWindow($s) => $call,
            AnyState::SlidingLog($s) => $call,
            AnyState::SlidingCounter($s) => $call,
        }
    };
}

impl QuotaState {
    /// The state of a key never seen before.
    pub fn new(algorithm: Algorithm, quota: &Quota, now: u64) -> Self {
        Self::fresh(algorithm, &Params::new(quota), now)
    }

    pub(crate) fn fresh(algorithm: Algorithm, q: &Params, now: u64) -> Self {
        Self(match algorithm {
            Algorithm::TokenBucket => AnyState::TokenBucket(TokenBucket::fresh(q, now)),
            Algorithm::Gcra => AnyState::Gcra(Gcra::fresh(q, now)),
            Algorithm::FixedWindow => AnyState::FixedWindow(FixedWindow::fresh(q, now)),
            Algorithm::SlidingWindowLog => AnyState::SlidingLog(SlidingLog::fresh(q, now)),
            Algorithm::SlidingWindowCounter => {
                AnyState::SlidingCounter(SlidingCounter::fresh(q, now))
            }
        })
    }

    /// The state a store keeps in `word`, laid out by `layout`, for a one-word `algorithm`.
    pub(crate) fn from_word(algorithm: Algorithm, word: u64, layout: &WordLayout) -> Self {
        Self(match algorithm {
            Algorithm::Gcra => AnyState::Gcra(Gcra::unpack(word, layout)),
            Algorithm::TokenBucket => AnyState::TokenBucket(TokenBucket::unpack(word, layout)),
            Algorithm::FixedWindow => AnyState::FixedWindow(FixedWindow::unpack(word, layout)),
            Algorithm::SlidingWindowCounter => {
                AnyState::SlidingCounter(SlidingCounter::unpack(word, layout))
            }
            Algorithm::SlidingWindowLog => unreachable!("a sliding-window log is not one word"),
        })
    }

    /// The machine this state holds, when it is an `M` (one comparison once inlined).
    #[inline]
    pub(crate) fn machine_mut<M: Machine + 'static>(&mut self) -> Option<&mut M> {
        on_machine!(&mut self.0, s => (s as &mut dyn std::any::Any).downcast_mut::<M>())
    }

    /// The algorithm this state belongs to.
    pub fn algorithm(&self) -> Algorithm {
        fn of<M: Machine>(_: &M) -> Algorithm {
            M::ALGORITHM
        }
        on_machine!(&self.0, s => of(s))
    }

    /// Would a request of `cost` be admitted at `now`? Changes nothing.
    pub fn check(&self, q: &Quota, now: u64, cost: u64) -> Verdict {
        self.check_with(&Params::new(q), now, cost)
    }

    /// Apply a request of `cost` at `now` if it is admitted (call after
    /// [`check`](Self::check)); a request that would be denied changes nothing.
    pub fn consume(&mut self, q: &Quota, now: u64, cost: u64) {
        self.take(&Params::new(q), now, cost);
    }

    /// Give back up to `cost` units (never beyond the quota's capacity, never below zero).
    pub fn refund(&mut self, q: &Quota, now: u64, cost: u64) {
        self.refund_with(&Params::new(q), now, cost);
    }

    pub(crate) fn check_with(&self, q: &Params, now: u64, cost: u64) -> Verdict {
        on_machine!(&self.0, s => s.check(q, now, cost))
    }

    pub(crate) fn admits(&self, q: &Params, now: u64, cost: u64) -> bool {
        on_machine!(&self.0, s => s.admits(q, now, cost))
    }

    pub(crate) fn take(&mut self, q: &Params, now: u64, cost: u64) -> bool {
        on_machine!(&mut self.0, s => s.take(q, now, cost))
    }

    pub(crate) fn refund_with(&mut self, q: &Params, now: u64, cost: u64) {
        on_machine!(&mut self.0, s => s.refund(q, now, cost));
    }

    pub(crate) fn expiry(&self, q: &Params, now: u64) -> (u64, u64) {
        on_machine!(&self.0, s => s.expiry(q, now))
    }
}

/// Fresh state for every quota of `policy` (what a never-seen key has).
pub fn fresh_states(policy: &Policy, now: u64) -> Vec<QuotaState> {
    policy
        .params()
        .iter()
        .map(|q| QuotaState::fresh(policy.algorithm(), q, now))
        .collect()
}

/// Check every quota; when all admit, consume `cost` from all of them. Returns whether the
/// request was admitted and one verdict per quota (in policy order).
///
/// `states` must hold one state per quota, as made by [`fresh_states`]; states of another
/// algorithm are replaced by fresh ones.
pub fn decide(
    states: &mut Vec<QuotaState>,
    policy: &Policy,
    now: u64,
    cost: u64,
) -> (bool, Vec<Verdict>) {
    align(states, policy, now);
    decide_aligned(states, policy, now, cost)
}

/// [`decide`] on states already aligned with the policy (one per quota, same algorithm).
pub(crate) fn decide_aligned(
    states: &mut [QuotaState],
    policy: &Policy,
    now: u64,
    cost: u64,
) -> (bool, Vec<Verdict>) {
    let mut verdicts = vec![Verdict::NONE; states.len()];
    let allowed = decide_into(states, policy, now, cost, &mut verdicts);
    (allowed, verdicts)
}

/// [`decide_aligned`] writing one verdict per quota into `out` (as long as `states`),
/// so that a caller with a buffer on its stack allocates nothing.
pub(crate) fn decide_into(
    states: &mut [QuotaState],
    policy: &Policy,
    now: u64,
    cost: u64,
    out: &mut [Verdict],
) -> bool {
    let params = policy.params();
    for ((q, s), v) in params.iter().zip(states.iter()).zip(out.iter_mut()) {
        *v = s.check_with(q, now, cost);
    }
    let allowed = out.iter().all(|v| v.allowed);
    if allowed {
        for (q, s) in params.iter().zip(states.iter_mut()) {
            let taken = s.take(q, now, cost);
            debug_assert!(taken, "every quota admitted the request");
        }
        return true;
    }
    // Nothing was consumed: quotas that would have admitted report what they still have.
    for ((q, s), v) in params.iter().zip(states.iter()).zip(out.iter_mut()) {
        if v.allowed {
            *v = s.check_with(q, now, 0);
        }
    }
    false
}

/// [`decide`] without the verdicts: whether the request is admitted (and, if so, consumed
/// from every quota). Allocates nothing; for hot paths that need no per-quota details.
pub fn admit(states: &mut Vec<QuotaState>, policy: &Policy, now: u64, cost: u64) -> bool {
    align(states, policy, now);
    admit_aligned(states, policy, now, cost)
}

/// [`admit`] on states already aligned with the policy.
pub(crate) fn admit_aligned(
    states: &mut [QuotaState],
    policy: &Policy,
    now: u64,
    cost: u64,
) -> bool {
    let params = policy.params();
    if let ([p], [s]) = (params, &mut *states) {
        return s.take(p, now, cost);
    }
    if !params
        .iter()
        .zip(states.iter())
        .all(|(p, s)| s.admits(p, now, cost))
    {
        return false;
    }
    for (p, s) in params.iter().zip(states.iter_mut()) {
        let taken = s.take(p, now, cost);
        debug_assert!(taken, "every quota admitted the request");
    }
    true
}

/// What a request of cost 1 would get, consuming nothing. `remaining` is what is left now.
pub fn peek(states: &[QuotaState], policy: &Policy, now: u64) -> (bool, Vec<Verdict>) {
    let verdicts: Vec<Verdict> = policy
        .params()
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let fresh;
            let state = match states.get(i) {
                Some(s) if s.algorithm() == policy.algorithm() => s,
                _ => {
                    fresh = QuotaState::fresh(policy.algorithm(), q, now);
                    &fresh
                }
            };
            peeked(state.check_with(q, now, 1))
        })
        .collect();
    (verdicts.iter().all(|v| v.allowed), verdicts)
}

/// A peek's verdict from that of a request of cost 1: what is left now.
fn peeked(mut v: Verdict) -> Verdict {
    if v.allowed {
        v.remaining += 1;
    }
    v
}

/// Give `cost` units back to every quota (never beyond its capacity).
pub fn refund(states: &mut Vec<QuotaState>, policy: &Policy, now: u64, cost: u64) {
    align(states, policy, now);
    refund_aligned(states, policy, now, cost);
}

/// [`refund`] on states already aligned with the policy.
pub(crate) fn refund_aligned(states: &mut [QuotaState], policy: &Policy, now: u64, cost: u64) {
    for (q, s) in policy.params().iter().zip(states.iter_mut()) {
        s.refund_with(q, now, cost);
    }
}

fn align(states: &mut Vec<QuotaState>, policy: &Policy, now: u64) {
    states.truncate(policy.params().len());
    for (i, q) in policy.params().iter().enumerate() {
        match states.get(i) {
            Some(s) if s.algorithm() == policy.algorithm() => {}
            Some(_) => states[i] = QuotaState::fresh(policy.algorithm(), q, now),
            None => states.push(QuotaState::fresh(policy.algorithm(), q, now)),
        }
    }
}

/// [`Machine::expiry`] of a key's states: the latest expiry, the sum of what they hold.
pub(crate) fn expiry(states: &[QuotaState], params: &[Params], now: u64) -> (u64, u64) {
    states
        .iter()
        .zip(params)
        .map(|(s, q)| s.expiry(q, now))
        .fold((0, 0), |(at, held), (a, h)| {
            (at.max(a), held.saturating_add(h))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    const T0: u64 = 1_700_000_000_000_000;

    fn quota() -> impl Strategy<Value = Quota> {
        (
            1u64..12,
            prop_oneof![Just(1_000u64), Just(250u64), Just(1_500u64)],
            prop::option::of(1u64..20),
        )
            .prop_map(|(limit, ms, burst)| {
                let q = Quota::new(limit, Duration::from_millis(ms));
                burst.map_or(q, |b| q.with_burst(b))
            })
    }

    proptest! {
        /// GCRA's one-pass `decide` gives `check`'s verdict and leaves `take`'s state,
        /// request after request (what the default check-then-take does).
        #[test]
        fn gcra_decide_is_check_then_take(
            q in quota(),
            steps in prop::collection::vec(
                (prop_oneof![Just(0u64), 0u64..50_000, 0u64..2_000_000], 0u64..25),
                1..80,
            ),
        ) {
            let policy = Policy::single("p", Algorithm::Gcra, q).unwrap();
            let params = &policy.params()[0];
            let (mut one_pass, mut two_pass) = (Gcra::fresh(params, T0), Gcra::fresh(params, T0));
            let mut now = T0;
            for (dt, cost) in steps {
                now += dt;
                let expected = two_pass.check(params, now, cost);
                if expected.allowed {
                    prop_assert!(two_pass.take(params, now, cost));
                }
                prop_assert_eq!(one_pass.decide(params, now, cost).verdict(), expected);
                prop_assert_eq!(one_pass, two_pass);
            }
        }
    }

    proptest! {
        /// From its expiry time on, a key's states answer every request, peek and refund
        /// exactly as fresh states do (what lets the memory store drop it then).
        #[test]
        fn expired_states_behave_as_fresh(
            alg in prop::sample::select(Algorithm::ALL.to_vec()),
            quotas in prop::collection::vec(quota(), 1..3),
            steps in prop::collection::vec(
                (prop_oneof![Just(0u64), 0u64..50_000, 0u64..2_000_000], 0u64..4, any::<bool>()),
                1..80,
            ),
            after in prop_oneof![Just(0u64), 0u64..3_000_000],
            costs in prop::collection::vec(0u64..25, 1..6),
        ) {
            let mut b = Policy::builder("p").algorithm(alg);
            for (i, q) in quotas.into_iter().enumerate() {
                b = b.quota(format!("q{i}"), q);
            }
            let policy = b.build().unwrap();
            let mut now = T0;
            let mut states = fresh_states(&policy, now);
            for &(dt, cost, give_back) in &steps {
                now += dt;
                if give_back {
                    refund(&mut states, &policy, now, cost);
                } else {
                    let _ = decide(&mut states, &policy, now, cost);
                }
            }
            let (at, _) = expiry(&states, policy.params(), now);
            let later = at.max(now) + after;
            let mut fresh = fresh_states(&policy, later);
            prop_assert_eq!(peek(&states, &policy, later), peek(&fresh, &policy, later));
            for cost in costs {
                let a = decide(&mut states, &policy, later, cost);
                let b = decide(&mut fresh, &policy, later, cost);
                prop_assert_eq!(a, b, "cost {}", cost);
            }
        }

        /// A log admitted through its known ends decides and keeps exactly what the plain
        /// log does, and its ends stay those of the list. Periods of a few microseconds and
        /// steps around them put requests on every window boundary, and the clock steps back.
        #[test]
        fn log_at_known_ends_matches_the_log(
            limit in 1u64..6,
            period in 1u64..12,
            steps in prop::collection::vec(
                (prop_oneof![-3i64..=3, 0i64..30], 0u64..4, prop::bool::weighted(0.15)),
                1..120,
            ),
        ) {
            let quota = Quota::new(limit, Duration::from_micros(period));
            let q = Params::new(&quota);
            let mut now = T0;
            let mut plain = SlidingLog::fresh(&q, now);
            let mut at_ends = plain.clone();
            let mut ends = LogEnds::of(&at_ends);
            for &(dt, cost, give_back) in &steps {
                now = now.saturating_add_signed(dt);
                if give_back {
                    plain.refund(&q, now, cost);
                    at_ends.refund(&q, now, cost);
                    ends = LogEnds::of(&at_ends);
                    continue;
                }
                let expected = plain.take(&q, now, cost);
                let got = at_ends.take_at_ends(&mut ends, &q, now, cost);
                prop_assert_eq!(got, expected, "at {} cost {}", now - T0, cost);
                prop_assert_eq!(&at_ends, &plain);
                prop_assert_eq!(ends, LogEnds::of(&at_ends));
            }
        }

        /// A word gives back exactly the state it was packed from, for any layout and
        /// values, and what a fresh key holds always fits.
        #[test]
        fn words_unpack_to_what_they_packed(
            period_ms in prop_oneof![Just(1_u64), 1_u64..100_000, Just(31_622_400_000)],
            burst in prop_oneof![1_u64..2_000, 1_u64..1 << 20],
            // Values of every magnitude, so that each field's edges are reached.
            a in (any::<u64>(), 0_u32..64),
            b in (any::<u64>(), 0_u32..64),
            c in (any::<u64>(), 0_u32..64),
        ) {
            let [a, b, c] = [a, b, c].map(|(v, shift)| v >> shift);
            let quota = Quota::new(1, Duration::from_millis(period_ms)).with_burst(burst);
            let q = Params::new(&quota);
            fn round_trip<M: OneWord + Eq>(m: M, q: &Params, now: u64) -> Result<(), TestCaseError> {
                let layout = M::layout(q);
                if let Some(w) = m.pack(&layout) {
                    prop_assert_eq!(M::unpack(w, &layout), m);
                }
                prop_assert!(M::fresh(q, now).pack(&layout).is_some());
                Ok(())
            }
            let now = a.min(MAX_MICROS);
            round_trip(Gcra { tat: a }, &q, now)?;
            round_trip(TokenBucket { tokens: a, last: b }, &q, now)?;
            round_trip(FixedWindow { window: a, count: b }, &q, now)?;
            round_trip(SlidingCounter { window: a, prev: b, curr: c }, &q, now)?;
        }
    }
}
