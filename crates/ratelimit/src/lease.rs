//! The arithmetic of leases, pure (no I/O, no clock, no locks): what one store call does to
//! a key's counters ([`lease`], [`release`]: the memory store runs them as they are, and
//! `src/lua/lease.lua` / `release.lua` are their line-by-line transcription), and what one
//! instance does with the allowance it holds ([`Book`]: [`LeasedStore`](crate::LeasedStore)
//! is a thin shell of locks and tasks around it). The property test at the end of this file
//! runs several books against one set of counters with random delays, cancellations and
//! clock offsets, and replays every unit the instances admitted through the exact algorithm:
//! the bound derived in `docs/ratelimit.md` is what it checks.
//!
//! **Prepaid.** A unit is counted in the shared store *before* an instance may admit it: a
//! lease takes its units from every quota of the policy at once (a denial by any takes from
//! none), exactly as an admitted request of that cost would. So the store's counters always
//! hold at least what the fleet has admitted, and
//!
//! * the window algorithms (fixed window, sliding counter) over-admit **nothing**: a lease
//!   ends with its window (at the latest), so every unit is admitted in the window it was
//!   counted in, and a window's unspent units are given back only within that window;
//! * the bucket algorithms (GCRA, token bucket) admit a unit at most one lease lifetime `L`
//!   after the bucket gave it: a stream delayed by at most `L` conforms to the bucket with
//!   `L / interval` more burst (the cell-delay-variation tolerance of ATM's GCRA), so over
//!   any span the fleet admits at most `⌈L / interval⌉` units more than the exact algorithm,
//!   whatever the number of instances. [`bucket_lifetime`] picks `L` so that this is at most
//!   `max_overshoot × limit`, rounded down. Unspent bucket units are never given back (a
//!   bucket that refilled meanwhile would take them above what it allows);
//! * the sliding-window log is never leased.

use std::time::Duration;

use crate::algorithm::{MAX_MICROS, Machine, Op, QuotaState, Verdict};
use crate::decision::{Decision, DecisionSource};
use crate::quota::{Algorithm, MAX_QUOTAS, Params, Policy};

/// What an instance asks a store in one [`Store::lease`](crate::Store::lease) call: count a
/// request of `cost` units — paid first from `held` units of earlier leases when the store
/// finds them still valid — then lease up to `want` more units for later requests, at most
/// `max_share_permille`/1000 of what each quota has left.
///
/// ```
/// use palisade_ratelimit::LeaseRequest;
/// use std::time::Duration;
///
/// let r = LeaseRequest::new(1).want(50, Duration::from_millis(200));
/// assert_eq!((r.cost, r.want, r.lifetime), (1, 50, Duration::from_millis(200)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseRequest {
    /// Units the request needs (0 for a call that only leases).
    pub cost: u64,
    /// Units the instance holds from earlier leases and offers towards `cost`.
    pub held: u64,
    /// Store time (µs since the Unix epoch) the oldest of the `held` units was granted at:
    /// the store counts them only while they are valid (bucket algorithms: within
    /// `lifetime` of that time; window algorithms: in the same windows).
    pub held_at: u64,
    /// Units the instance would like to hold for later requests.
    pub want: u64,
    /// The longest the granted units may be spent for (the window algorithms end a lease
    /// at the end of the earliest window).
    pub lifetime: Duration,
    /// The longest any of the `held` units was granted for, when longer than `lifetime`
    /// (bucket algorithms count held units within this of `held_at`).
    pub held_lifetime: Duration,
    /// Store time from which a ledger may have reclaimed some of the `held` units with the
    /// owner's record (the earliest [`LeaseReturn::reclaim_at`] among them; 0: none). From
    /// then on the store counts none of them, neither towards the cost nor back into the
    /// quota: they went back with the record, or go back with it.
    pub held_reclaim_at: u64,
    /// A lease takes at most this many thousandths of what each quota has left after the
    /// request, so that the last units of a window are decided by the store one request
    /// at a time. Default 100 (10 %).
    pub max_share_permille: u32,
    /// Who leases (a [`LeasedStore`](crate::LeasedStore)'s id; 0, the default, for nobody
    /// in particular): a store that keeps a ledger of the leases outstanding (Redis)
    /// records what this owner holds after the call, and reclaims it once the record's TTL
    /// (the lease's lifetime plus `grace`) has passed without the owner giving it back.
    pub owner: u64,
    /// Units the owner holds besides `held` and does not offer towards the cost (a call
    /// that only leases reports its allowance this way).
    pub kept: u64,
    /// Store time the oldest of the `kept` units was granted at.
    pub kept_at: u64,
    /// Nonzero: `held` and `kept` are everything the owner holds (no other call of its for
    /// the key is in flight), and this number, larger than any the owner sent before, lets
    /// the ledger replace its record with them (unless a later report landed first) and
    /// tell which give-backs the record already left out. 0: the ledger adjusts the
    /// record by what this call took and granted.
    pub report: u64,
    /// How long after a lease's lifetime a ledger waits before it reclaims what the owner
    /// did not give back: the owner's own give-back must land first.
    pub grace: Duration,
    /// The first and the last `report` of the owner's calls for the key whose answers it
    /// gave up on since its last answer (a reply timed out or lost, after the store may
    /// have run the call; 0: none). A ledger whose record of the owner stands on one of
    /// them gives that call's grant back: nobody holds it. (A call landing after a later
    /// report grants nothing.)
    pub lost_from: u64,
    /// See [`lost_from`](Self::lost_from).
    pub lost_to: u64,
}

impl LeaseRequest {
    /// A request of `cost` units, holding nothing and wanting nothing.
    pub const fn new(cost: u64) -> Self {
        Self {
            cost,
            held: 0,
            held_at: 0,
            want: 0,
            lifetime: Duration::ZERO,
            held_lifetime: Duration::ZERO,
            held_reclaim_at: 0,
            max_share_permille: 100,
            owner: 0,
            kept: 0,
            kept_at: 0,
            report: 0,
            grace: Duration::ZERO,
            lost_from: 0,
            lost_to: 0,
        }
    }

    /// Offer `units` held since store time `granted_at` towards the cost.
    #[must_use]
    pub const fn held(mut self, units: u64, granted_at: u64) -> Self {
        self.held = units;
        self.held_at = granted_at;
        self
    }

    /// Lease up to `units` more, to be spent within `lifetime`.
    #[must_use]
    pub const fn want(mut self, units: u64, lifetime: Duration) -> Self {
        self.want = units;
        self.lifetime = lifetime;
        self
    }

    /// Held units were granted for at most `lifetime` (see
    /// [`held_lifetime`](Self::held_lifetime)).
    #[must_use]
    pub const fn held_for(mut self, lifetime: Duration) -> Self {
        self.held_lifetime = lifetime;
        self
    }

    /// See [`held_reclaim_at`](Self::held_reclaim_at).
    #[must_use]
    pub const fn held_reclaim_at(mut self, store_time: u64) -> Self {
        self.held_reclaim_at = store_time;
        self
    }

    /// Take at most `permille` thousandths of what each quota has left (1 to 1000).
    #[must_use]
    pub const fn max_share_permille(mut self, permille: u32) -> Self {
        self.max_share_permille = permille;
        self
    }

    /// Lease as `owner`, to be reclaimed `grace` after a lease's lifetime unless given
    /// back (see [`owner`](Self::owner)).
    #[must_use]
    pub const fn owner(mut self, owner: u64, grace: Duration) -> Self {
        self.owner = owner;
        self.grace = grace;
        self
    }

    /// Report `units` held since store time `granted_at` that are not offered.
    #[must_use]
    pub const fn kept(mut self, units: u64, granted_at: u64) -> Self {
        self.kept = units;
        self.kept_at = granted_at;
        self
    }

    /// See [`lost_from`](Self::lost_from).
    #[must_use]
    pub const fn lost(mut self, from: u64, to: u64) -> Self {
        self.lost_from = from;
        self.lost_to = to;
        self
    }

    /// See [`report`](Self::report).
    #[must_use]
    pub const fn report(mut self, report: u64) -> Self {
        self.report = report;
        self
    }
}

/// Units of a lease an instance gives back ([`Store::release_for`](crate::Store::release_for)).
///
/// ```
/// use palisade_ratelimit::LeaseReturn;
///
/// let r = LeaseReturn::new(40, 1_700_000_000_000_000).owner(7, 3);
/// assert_eq!((r.units, r.owner, r.reported), (40, 7, 3));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseReturn {
    /// Units never spent.
    pub units: u64,
    /// Store time (µs) the lease was granted at.
    pub granted_at: u64,
    /// The owner that leased them (0: none, as [`Store::release`](crate::Store::release)).
    pub owner: u64,
    /// The owner's last [`LeaseRequest::report`] sent before these units left its hands:
    /// a ledger record written by a later report already left them out.
    pub reported: u64,
    /// Store time (µs) from which a ledger may have reclaimed these units with the owner's
    /// record: the grant's time plus the lease's lifetime plus the grace. A give-back that
    /// arrives then or later gives nothing back (the units went back with the record, or
    /// go back with it; counting them again would admit them twice). 0: no such time.
    pub reclaim_at: u64,
}

impl LeaseReturn {
    /// `units` of a lease granted at store time `granted_at`, of no owner.
    pub const fn new(units: u64, granted_at: u64) -> Self {
        Self {
            units,
            granted_at,
            owner: 0,
            reported: 0,
            reclaim_at: 0,
        }
    }

    /// Given back by `owner`, whose last report before was `reported`.
    #[must_use]
    pub const fn owner(mut self, owner: u64, reported: u64) -> Self {
        self.owner = owner;
        self.reported = reported;
        self
    }

    /// See [`reclaim_at`](Self::reclaim_at).
    #[must_use]
    pub const fn reclaim_at(mut self, store_time: u64) -> Self {
        self.reclaim_at = store_time;
        self
    }
}

/// One key's lease call in a [`Store::lease_many`](crate::Store::lease_many) batch.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct LeaseCall<'a> {
    /// The key leased.
    pub key: &'a str,
    /// Its policy.
    pub policy: &'a Policy,
    /// What is asked, as for [`Store::lease`](crate::Store::lease).
    pub request: LeaseRequest,
}

impl<'a> LeaseCall<'a> {
    /// `request` for `key` under `policy`.
    pub const fn new(key: &'a str, policy: &'a Policy, request: LeaseRequest) -> Self {
        Self {
            key,
            policy,
            request,
        }
    }
}

/// One key's give-back in a [`Store::release_many`](crate::Store::release_many) batch.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ReleaseCall<'a> {
    /// The key the units were leased for.
    pub key: &'a str,
    /// Its policy.
    pub policy: &'a Policy,
    /// What is given back, as for [`Store::release_for`](crate::Store::release_for).
    pub give: LeaseReturn,
}

impl<'a> ReleaseCall<'a> {
    /// `give` back for `key` under `policy`.
    pub const fn new(key: &'a str, policy: &'a Policy, give: LeaseReturn) -> Self {
        Self { key, policy, give }
    }
}

/// What a store answered to a [`LeaseRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// The request's decision. When admitted, its figures are what the store has left after
    /// the request **and** the grant (the granted units are the instance's now); when denied,
    /// nothing was taken and nothing granted.
    pub decision: Decision,
    /// How many of the offered `held` units paid for the request (0 when the store found
    /// them no longer valid, or the request was denied).
    pub used_held: u64,
    /// The offered `held` units were no longer valid (a window they were counted in ended,
    /// or a bucket lease outlived its lifetime): the store took back what the windows still
    /// current allow, as [`Store::release`](crate::Store::release) does, and the caller must
    /// forget them, admitted or not.
    pub stale_held: bool,
    /// Units granted to the instance (already counted in the store).
    pub granted: u64,
    /// How long the granted units may be spent, counted from when the call was sent.
    pub lifetime: Duration,
    /// Store time at the call (µs since the Unix epoch): the `granted_at` of the granted
    /// units, for [`Store::release`](crate::Store::release) and later requests' `held_at`.
    pub granted_at: u64,
}

impl Lease {
    /// The answer of a store that does not lease: `decision` counted the whole cost, and
    /// nothing is granted.
    pub fn exact(decision: Decision) -> Self {
        Self {
            decision,
            used_held: 0,
            stale_held: false,
            granted: 0,
            lifetime: Duration::ZERO,
            granted_at: 0,
        }
    }
}

/// Whether `algorithm` may be leased at all.
pub(crate) const fn leasable(algorithm: Algorithm) -> bool {
    !matches!(algorithm, Algorithm::SlidingWindowLog)
}

/// The units a bucket quota may be over-admitted by under a tolerance of `max_overshoot`
/// (a fraction of its limit), rounded down.
pub(crate) fn overshoot_units(max_overshoot: f64, limit: u64) -> u64 {
    let units = (max_overshoot * limit as f64).floor();
    if units.is_finite() && units >= 1.0 {
        units as u64
    } else {
        0
    }
}

/// The lifetime of a lease on a bucket policy: at most `max_lease` µs, and at most
/// `overshoot_units × interval` for every quota, so that a unit admitted up to that long
/// after the bucket gave it over-admits at most `overshoot_units`. Zero when some quota
/// tolerates less than one unit (that policy is not leased).
pub(crate) fn bucket_lifetime(policy: &Policy, max_overshoot: f64, max_lease: u64) -> u64 {
    policy
        .params()
        .iter()
        .map(|q| overshoot_units(max_overshoot, q.limit).saturating_mul(q.interval))
        .fold(max_lease, u64::min)
}

/// The counters a store call works on: one machine, or the states of a policy of several
/// quotas. The lease arithmetic is written once over this.
pub(crate) trait Counters {
    fn len(&self) -> usize;
    fn period(&self, i: usize) -> u64;
    fn check(&self, i: usize, now: u64, cost: u64) -> Verdict;
    fn take(&mut self, i: usize, now: u64, cost: u64) -> bool;
    fn refund(&mut self, i: usize, now: u64, cost: u64);
}

/// A single quota's machine.
pub(crate) struct One<'a, M> {
    pub(crate) machine: &'a mut M,
    pub(crate) params: &'a Params,
}

impl<M: Machine> Counters for One<'_, M> {
    fn len(&self) -> usize {
        1
    }
    fn period(&self, _: usize) -> u64 {
        self.params.period
    }
    fn check(&self, _: usize, now: u64, cost: u64) -> Verdict {
        self.machine.check(self.params, now, cost)
    }
    fn take(&mut self, _: usize, now: u64, cost: u64) -> bool {
        self.machine.take(self.params, now, cost)
    }
    fn refund(&mut self, _: usize, now: u64, cost: u64) {
        self.machine.refund(self.params, now, cost);
    }
}

/// A policy's states, one per quota.
pub(crate) struct Many<'a> {
    pub(crate) states: &'a mut [QuotaState],
    pub(crate) params: &'a [Params],
}

impl Counters for Many<'_> {
    fn len(&self) -> usize {
        self.states.len().min(self.params.len())
    }
    fn period(&self, i: usize) -> u64 {
        self.params[i].period
    }
    fn check(&self, i: usize, now: u64, cost: u64) -> Verdict {
        self.states[i].check_with(&self.params[i], now, cost)
    }
    fn take(&mut self, i: usize, now: u64, cost: u64) -> bool {
        self.states[i].take(&self.params[i], now, cost)
    }
    fn refund(&mut self, i: usize, now: u64, cost: u64) {
        self.states[i].refund_with(&self.params[i], now, cost);
    }
}

/// One lease call ([`lease`]) as a store operation: the request and the grant, all or nothing.
#[derive(Clone, Copy)]
pub(crate) struct LeaseOp<'p> {
    pub(crate) now: u64,
    pub(crate) request: &'p LeaseRequest,
}

impl LeaseOp<'_> {
    fn answer(self, o: Outcome, verdicts: &[Verdict]) -> Lease {
        let mut lease = Lease::exact(Decision::from_verdicts(
            o.admitted,
            verdicts,
            DecisionSource::Store,
        ));
        lease.used_held = o.used_held;
        lease.stale_held = o.stale_held;
        lease.granted = o.granted;
        lease.lifetime = Duration::from_micros(o.lifetime);
        lease.granted_at = o.granted_at;
        lease
    }
}

impl Op for LeaseOp<'_> {
    type Out = Lease;
    fn one<M: Machine>(self, m: &mut M, q: &Params) -> Self::Out {
        let mut v = [Verdict::NONE];
        let mut one = One {
            machine: m,
            params: q,
        };
        let o = lease(&mut one, M::ALGORITHM, self.now, self.request, &mut v);
        self.answer(o, &v)
    }
    fn list(self, states: &mut [QuotaState], policy: &Policy) -> Self::Out {
        let mut out = [Verdict::NONE; MAX_QUOTAS];
        let n = states.len().min(MAX_QUOTAS);
        let mut many = Many {
            states: &mut states[..n],
            params: policy.params(),
        };
        let o = lease(
            &mut many,
            policy.algorithm(),
            self.now,
            self.request,
            &mut out[..n],
        );
        self.answer(o, &out[..n])
    }
}

/// Give back unspent leased units ([`release`]) as a store operation.
#[derive(Clone, Copy)]
pub(crate) struct ReleaseOp {
    pub(crate) now: u64,
    pub(crate) units: u64,
    pub(crate) granted_at: u64,
}

impl Op for ReleaseOp {
    type Out = ();
    fn one<M: Machine>(self, m: &mut M, q: &Params) {
        let mut one = One {
            machine: m,
            params: q,
        };
        release(
            &mut one,
            M::ALGORITHM,
            self.now,
            self.units,
            self.granted_at,
        );
    }
    fn list(self, states: &mut [QuotaState], policy: &Policy) {
        let mut many = Many {
            states,
            params: policy.params(),
        };
        release(
            &mut many,
            policy.algorithm(),
            self.now,
            self.units,
            self.granted_at,
        );
    }
}

/// What one lease call did, beside the per-quota verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) admitted: bool,
    pub(crate) used_held: u64,
    pub(crate) stale_held: bool,
    pub(crate) granted: u64,
    /// µs.
    pub(crate) lifetime: u64,
    pub(crate) granted_at: u64,
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Whether units granted at `held_at` still count at `now`: a bucket's within `lifetime`
/// (time that went backwards is time standing still), a window's within the same window of
/// every quota.
fn held_valid<C: Counters>(
    c: &C,
    algorithm: Algorithm,
    now: u64,
    held_at: u64,
    lifetime: u64,
) -> bool {
    let held_at = held_at.min(MAX_MICROS);
    match algorithm {
        Algorithm::Gcra | Algorithm::TokenBucket => now.saturating_sub(held_at) <= lifetime,
        Algorithm::FixedWindow | Algorithm::SlidingWindowCounter => {
            (0..c.len()).all(|i| now / c.period(i) == held_at / c.period(i))
        }
        Algorithm::SlidingWindowLog => false,
    }
}

/// One lease call, atomically on a key's counters (`src/lua/lease.lua` is its
/// transcription): pay `cost` with the valid `held` units first and take the rest from every
/// quota (all or none, as an admission); then grant `min(want, ⌊left × share / 1000⌋)` over
/// every quota's `left`, taken from all. `out` gets one verdict per quota: for an admitted
/// request what is left after the request and the grant, for a denied one what `acquire`
/// reports.
pub(crate) fn lease<C: Counters>(
    c: &mut C,
    algorithm: Algorithm,
    now: u64,
    req: &LeaseRequest,
    out: &mut [Verdict],
) -> Outcome {
    let now = now.min(MAX_MICROS);
    let n = c.len().min(out.len());
    let lifetime = micros(req.lifetime);
    let held_lifetime = lifetime.max(micros(req.held_lifetime));
    let mut stale_held = false;
    let usable = if req.held == 0 || req.cost == 0 {
        0
    } else if held_valid(c, algorithm, now, req.held_at, held_lifetime) {
        req.held.min(req.cost)
    } else {
        // Given back first (to the windows still current), as a release would.
        stale_held = true;
        release(c, algorithm, now, req.held, req.held_at);
        0
    };
    let need = req.cost - usable;
    for (i, v) in out[..n].iter_mut().enumerate() {
        *v = c.check(i, now, need);
    }
    if !out[..n].iter().all(|v| v.allowed) {
        // Nothing is taken: quotas that would have admitted report what they still have.
        for (i, v) in out[..n].iter_mut().enumerate() {
            if v.allowed {
                *v = c.check(i, now, 0);
            }
        }
        return Outcome {
            admitted: false,
            used_held: 0,
            stale_held,
            granted: 0,
            lifetime: 0,
            granted_at: now,
        };
    }
    if need > 0 {
        for i in 0..n {
            let taken = c.take(i, now, need);
            debug_assert!(taken, "every quota admitted the request");
        }
    }
    let mut grant = if leasable(algorithm) { req.want } else { 0 };
    let share = u64::from(req.max_share_permille.min(1000));
    for i in 0..n {
        let left = c.check(i, now, 0).remaining;
        grant = grant.min(left.saturating_mul(share) / 1000);
    }
    if grant > 0 && !(0..n).all(|i| c.check(i, now, grant).allowed) {
        grant = 0;
    }
    if grant > 0 {
        for i in 0..n {
            let taken = c.take(i, now, grant);
            debug_assert!(taken, "every quota admitted the grant");
        }
    }
    for (i, v) in out[..n].iter_mut().enumerate() {
        let after = c.check(i, now, 0);
        *v = Verdict {
            allowed: true,
            remaining: after.remaining,
            reset: after.reset,
            retry_after: None,
        };
    }
    let lifetime = if grant == 0 {
        0
    } else if algorithm.counts_windows() {
        (0..n)
            .map(|i| {
                let p = c.period(i);
                (now / p + 1).saturating_mul(p) - now
            })
            .fold(lifetime, u64::min)
    } else {
        lifetime
    };
    Outcome {
        admitted: true,
        used_held: usable,
        stale_held,
        granted: grant,
        lifetime,
        granted_at: now,
    }
}

/// Give back `units` of a lease granted at `granted_at` that were never spent
/// (`src/lua/release.lua`): window algorithms only, and only to the quotas still in the
/// window of the grant. Bucket units are not given back: a bucket refilled meanwhile, and
/// tokens returned on top of that refill would admit more than the bucket allows.
pub(crate) fn release<C: Counters>(
    c: &mut C,
    algorithm: Algorithm,
    now: u64,
    units: u64,
    granted_at: u64,
) {
    let now = now.min(MAX_MICROS);
    let granted_at = granted_at.min(MAX_MICROS);
    if units == 0 || !algorithm.counts_windows() {
        return;
    }
    for i in 0..c.len() {
        let p = c.period(i);
        if now / p == granted_at / p {
            c.refund(i, now, units);
        }
    }
}

/// Units of one lease an instance still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) units: u64,
    /// Local time (µs) after which the units may no longer be spent: when the call was sent
    /// plus the lease's lifetime, so never later than the store's grant plus the lifetime.
    pub(crate) expires: u64,
    /// Store time of the grant.
    pub(crate) granted_at: u64,
    /// Store time from which the store's ledger may reclaim the units (the grant plus the
    /// lease's lifetime plus the grace; 0 without a ledger record).
    pub(crate) reclaim_at: u64,
    /// The book's last report when the units left it (0 while held).
    pub(crate) reported: u64,
}

/// Leases of one book: at most [`MAX_HELD_LEASES`] held (one more, on the heap, while a
/// call's units come back), kept inline (a decision reads them, and a pointer to elsewhere was a cache miss on
/// every decision over many keys).
pub(crate) type Leases = smallvec::SmallVec<[Held; MAX_HELD_LEASES]>;

impl Held {
    /// Take `other`'s units; of each time the earlier one.
    fn join(&mut self, other: Held) {
        self.units = self.units.saturating_add(other.units);
        self.expires = self.expires.min(other.expires);
        self.granted_at = self.granted_at.min(other.granted_at);
        self.reclaim_at = match (self.reclaim_at, other.reclaim_at) {
            (0, r) | (r, 0) => r,
            (a, b) => a.min(b),
        };
        self.reported = self.reported.max(other.reported);
    }
}

/// How an instance leases one policy: fixed when its book is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The longest a lease may live, µs (> 0).
    pub(crate) lifetime: u64,
    pub(crate) share_permille: u32,
    /// The longest a store's denial is repeated locally, µs.
    pub(crate) max_denial: u64,
    /// Whether to lease again ahead of need, in the background.
    pub(crate) prefetch: bool,
    /// The longest a lease may live for a key this instance decides sparsely (≥
    /// `lifetime`), µs: what the bound is derived from.
    pub(crate) sparse: u64,
    /// The instance's ledger id (0: no record, nothing reclaimed) and the grace, µs.
    pub(crate) owner: u64,
    pub(crate) grace: u64,
}

/// A lease is sized to hold at least this many units of its key's demand (longer leases
/// for sparse keys, see [`Book`]'s `terms`).
const SPARSE_UNITS: f64 = 4.0;

/// A key whose demand would not fill this many units in one lease lifetime is leased
/// longer, up to `plan.sparse`, so that one lease call serves about this many of its
/// decisions. A lease call costs the store two to three plain decisions' work (and an ended
/// lease's give-back about one more), so a lease that serves `n` decisions spends about
/// `4 / n` of what deciding them in the store would: at 32 (before issue 19's seventh pass)
/// an eighth, and 10,000 keys each decided a few dozen times a second per instance kept
/// Redis saturated by renewals alone (`docs/benchmarks.md`); at 256 it is about 1.5 %.
const COVER_UNITS: f64 = 256.0;

/// `x` rounded up to whole units (0 for nothing, NaN or negative).
fn units_of(x: f64) -> u64 {
    let units = x.ceil();
    if units.is_finite() && units > 0.0 {
        units.min(crate::quota::MAX_LIMIT as f64) as u64
    } else {
        0
    }
}

/// A book asks for a lease in the background only while it holds fewer leases than this,
/// so an instance holds at most this many (each at most `max_share` of what was left when
/// it was granted): what a crash strands, and what a live instance holds unspent.
pub(crate) const MAX_HELD_LEASES: usize = 2;

/// A number in `[0, 1)`, different at every call (a process-wide sequence through
/// SplitMix64: spreads sparse leases' lifetimes, no need for unpredictability).
fn jitter() -> f64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut z = SEQ
        .fetch_add(0x9e37_79b9_7f4a_7c15, std::sync::atomic::Ordering::Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Report numbers: one counter for the process, so every owner's only grow.
static REPORTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A lease call an instance makes: what it asks, and the units it set aside for it.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) request: LeaseRequest,
    pub(crate) reserved: Vec<Held>,
    /// Local time the call was sent.
    pub(crate) sent: u64,
    /// Whether the call asks for a lease (only one such call per book is in flight).
    pub(crate) wanted: bool,
}

/// The store's answer to a [`Call`], in the numbers a book needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reply<'v> {
    pub(crate) admitted: bool,
    pub(crate) used_held: u64,
    pub(crate) stale_held: bool,
    pub(crate) granted: u64,
    /// µs.
    pub(crate) lifetime: u64,
    pub(crate) granted_at: u64,
    /// Per quota, as [`lease`] writes them.
    pub(crate) verdicts: &'v [Verdict],
}

/// What a request got from a book.
#[cfg(test)]
#[derive(Debug)]
pub(crate) enum Step {
    /// Admitted from the allowance; `out` holds the verdicts.
    Local,
    /// Denied as the store denied the same cost a moment ago; `out` holds the verdicts.
    Denied,
    /// The store must decide: send this call.
    Remote(Call),
}

/// Per quota: what the store had left at the last answer, and when the quota is whole.
#[derive(Debug, Clone, Copy)]
struct Figure {
    remaining: u64,
    /// Local µs.
    reset_at: u64,
}

/// The store's last denial, repeated for requests of the same cost until `until`.
#[derive(Debug, Clone)]
struct Denial {
    cost: u64,
    until: u64,
    /// `reset` and `retry_after` hold local deadlines (µs), not durations.
    verdicts: Vec<Verdict>,
}

impl Denial {
    /// The store's denial of `call`, repeated for requests of the same cost until the
    /// earliest of its quotas' `retry_after` (at most `plan.max_denial`).
    fn of(call: &Call, reply: &Reply<'_>, plan: &Plan) -> Self {
        let mut until = call.sent.saturating_add(plan.max_denial);
        for v in reply.verdicts.iter().filter(|v| !v.allowed) {
            until = match v.retry_after {
                Some(r) => until.min(call.sent.saturating_add(r)),
                None => until,
            };
        }
        Self {
            cost: call.request.cost,
            until,
            verdicts: reply
                .verdicts
                .iter()
                .map(|v| Verdict {
                    allowed: v.allowed,
                    remaining: v.remaining,
                    reset: call.sent.saturating_add(v.reset),
                    retry_after: v.retry_after.map(|r| call.sent.saturating_add(r)),
                })
                .collect(),
        }
    }
}

/// The allowance one instance holds for one key under one policy, and what it knows of the
/// key: the whole decision logic of [`LeasedStore`](crate::LeasedStore), with time passed in
/// (local µs: only durations of the local clock are used, never its reading against the
/// store's).
#[derive(Debug)]
pub(crate) struct Book {
    held: Leases,
    /// A call asking for a lease is in flight.
    pub(crate) leasing: bool,
    /// Calls in flight.
    pub(crate) in_flight: u32,
    /// Boxed: rare, and a book is read by every local decision (the smaller, the fewer
    /// cache lines).
    denial: Option<Box<Denial>>,
    /// Units admitted since `mark`, and the demand estimate (units per µs).
    spent: u64,
    mark: u64,
    rate: f64,
    /// Inline for one quota (read by every local decision).
    figures: smallvec::SmallVec<[Figure; 1]>,
    /// Store time of the answer `figures` and `denial` come from: answers to calls in
    /// flight together may be applied out of order, and an older one must not overwrite
    /// them (its window may have ended: local decisions then reported the next window's
    /// units against the ended one's reset).
    answered_at: u64,
    pub(crate) last_used: u64,
    /// No lease is asked in the background before this (after a failure or an empty grant).
    pub(crate) quiet_until: u64,
    /// The number of the last report this book sent.
    reported: u64,
    /// The first and last reports of the calls that failed since the last answer (their
    /// answers lost: the store may have run them), until a call carrying them is answered
    /// (0: none).
    lost: (u64, u64),
}

impl Book {
    pub(crate) fn new(now: u64) -> Self {
        Self {
            held: Leases::new(),
            leasing: false,
            in_flight: 0,
            denial: None,
            spent: 0,
            mark: now,
            rate: 0.0,
            figures: smallvec::SmallVec::new(),
            answered_at: 0,
            last_used: now,
            quiet_until: 0,
            reported: 0,
            lost: (0, 0),
        }
    }

    /// Units held now (call [`expire`](Self::expire) first).
    pub(crate) fn allowance(&self) -> u64 {
        self.held.iter().map(|h| h.units).sum()
    }

    /// Drop the leases that ended by `now`, handing each one's unspent units to `ended`.
    pub(crate) fn expire(&mut self, now: u64, mut ended: impl FnMut(Held)) {
        self.held.retain(|h| {
            if h.expires <= now {
                if h.units > 0 {
                    ended(Held {
                        reported: self.reported,
                        ..*h
                    });
                }
                false
            } else {
                h.units > 0
            }
        });
    }

    /// Whether the book holds nothing and waits for nothing, so it may be forgotten.
    pub(crate) fn idle(&self, now: u64) -> bool {
        self.held.is_empty()
            && self.in_flight == 0
            && self.denial.as_ref().is_none_or(|d| d.until <= now)
    }

    /// Spend `cost` units, soonest-ending lease first; `false` (nothing spent) when the
    /// book holds fewer.
    fn spend(&mut self, cost: u64) -> bool {
        if self.allowance() < cost {
            return false;
        }
        let mut left = cost;
        while left > 0 {
            let Some(h) = self
                .held
                .iter_mut()
                .filter(|h| h.units > 0)
                .min_by_key(|h| h.expires)
            else {
                break;
            };
            let t = left.min(h.units);
            h.units -= t;
            left -= t;
        }
        self.held.retain(|h| h.units > 0);
        self.spent = self.spent.saturating_add(cost);
        true
    }

    /// Decide a request of `cost` at `now`: from the allowance, from a recent denial, or by
    /// the store (the call then carries every unit the book holds, so that the store counts
    /// them towards the cost if they are still valid). Leases that ended go to `ended`
    /// unless the call carries them. ([`LeasedStore`](crate::LeasedStore) runs the two
    /// halves, [`decide_here`](Self::decide_here) and [`call`](Self::call), itself.)
    #[cfg(test)]
    pub(crate) fn begin(
        &mut self,
        policy: &Policy,
        plan: &Plan,
        now: u64,
        cost: u64,
        out: &mut [Verdict],
        ended: &mut Leases,
    ) -> Step {
        match self.decide_here(policy, now, cost, out, ended) {
            Some(true) => Step::Local,
            Some(false) => Step::Denied,
            None => Step::Remote(self.call(plan, now, cost, std::mem::take(ended))),
        }
    }

    /// The part of [`begin`](Self::begin) that needs no store: `Some(true)` admitted from
    /// the allowance, `Some(false)` denied as the store denied the same cost a moment ago,
    /// `None` when the store must decide. Leases that ended are moved to `ended`.
    pub(crate) fn decide_here(
        &mut self,
        policy: &Policy,
        now: u64,
        cost: u64,
        out: &mut [Verdict],
        ended: &mut Leases,
    ) -> Option<bool> {
        self.last_used = now;
        self.expire(now, |h| ended.push(h));
        if !self.figures.is_empty() && self.spend(cost) {
            self.local(policy, now, out);
            return Some(true);
        }
        if let Some(d) = &self.denial
            && d.cost == cost
            && now < d.until
        {
            for (o, v) in out.iter_mut().zip(&d.verdicts) {
                *o = Verdict {
                    allowed: v.allowed,
                    remaining: v.remaining.saturating_add(self.allowance()),
                    reset: v.reset.saturating_sub(now),
                    retry_after: v.retry_after.map(|at| at.saturating_sub(now)),
                };
            }
            return Some(false);
        }
        None
    }

    /// Put back leases [`decide_here`](Self::decide_here) found ended (the caller will not
    /// send a call now: the next one carries them).
    pub(crate) fn keep(&mut self, ended: Leases) {
        self.hold(ended);
    }

    /// Hold `leases` (again). A book holds at most [`MAX_HELD_LEASES`] entries (the bound
    /// counts them): when a call's units come back while another call's grant arrived (a
    /// request that gave up, a call never sent), the two soonest-ending entries become one,
    /// taking the earlier of each time — it ends, counts as granted and may be reclaimed at
    /// the earlier one, so it is spent, offered and given back no longer than either part
    /// would have been. (Entries are not joined by grant time: one batch grants every call
    /// in it at the same store time, and two grants counted as one entry would let the
    /// book ask for a third.)
    fn hold(&mut self, leases: impl IntoIterator<Item = Held>) {
        self.held.extend(leases.into_iter().filter(|h| h.units > 0));
        while self.held.len() > MAX_HELD_LEASES {
            self.held.sort_by_key(|h| h.expires);
            let second = self.held.remove(1);
            self.held[0].join(second);
        }
    }

    /// The call the store must decide a request of `cost` with, carrying every unit held
    /// and those of leases that just `ended` (the store counts them towards the cost while
    /// it finds them valid; that is better than giving them back and asking again).
    pub(crate) fn call(&mut self, plan: &Plan, now: u64, cost: u64, ended: Leases) -> Call {
        let wanted = !self.leasing;
        let (want, life) = if wanted {
            self.terms(now, plan, cost)
        } else {
            (0, plan.lifetime)
        };
        let mut reserved = std::mem::take(&mut self.held).into_vec();
        reserved.extend(ended);
        let held: u64 = reserved.iter().map(|h| h.units).sum();
        let held_at = reserved.iter().map(|h| h.granted_at).min().unwrap_or(0);
        let reclaim_at = reserved
            .iter()
            .map(|h| h.reclaim_at)
            .filter(|&r| r > 0)
            .min()
            .unwrap_or(0);
        let report = self.next_report(plan, false);
        self.leasing |= wanted;
        self.in_flight += 1;
        Call {
            request: LeaseRequest::new(cost)
                .held(held, held_at)
                .held_reclaim_at(reclaim_at)
                .want(want, Duration::from_micros(life))
                .held_for(Duration::from_micros(plan.sparse))
                .max_share_permille(plan.share_permille)
                .owner(plan.owner, Duration::from_micros(plan.grace))
                .report(report)
                .lost(self.lost.0, self.lost.1),
            reserved,
            sent: now,
            wanted,
        }
    }

    /// Units held and still spendable at `now`, without dropping the ended ones.
    pub(crate) fn allowance_at(&self, now: u64) -> u64 {
        self.held
            .iter()
            .filter(|h| h.expires > now)
            .map(|h| h.units)
            .sum()
    }

    /// A call that only leases, when the allowance runs low or its soonest lease is about
    /// to end (within `lead` µs), none is in flight, and the book is not in a quiet spell.
    pub(crate) fn refresh(&mut self, plan: &Plan, now: u64, lead: u64) -> Option<Call> {
        let lead = lead.clamp(plan.lifetime / 8, plan.lifetime / 2);
        self.refresh_within(plan, now, lead)
    }

    /// The background renewal of a key decided since its last lease call (a sparse key's
    /// trickle included), visited by the store's sweeper: the call of
    /// [`refresh`](Self::refresh) when the allowance would run low, or its soonest lease
    /// end, within `period` µs (until the sweeper's next visit) plus `lead` (twice the
    /// round trip), the lead clamped as `refresh` clamps it, to ⅛–½ of the dense
    /// lifetime. A key not decided since its last call is not renewed: an idle key's
    /// lease ends. (Unclamped, a Redis saturated by lease calls answered batches in
    /// seconds, the lead grew with it, and 10,000 sparse keys renewed their 10 s leases
    /// after about 6 s, giving the unspent rest back: more calls, a slower Redis, an
    /// earlier renewal.)
    pub(crate) fn renew(&mut self, plan: &Plan, now: u64, period: u64, lead: u64) -> Option<Call> {
        if self.spent == 0 {
            return None;
        }
        let lead = lead.clamp(plan.lifetime / 8, plan.lifetime / 2);
        self.refresh_within(plan, now, period.saturating_add(lead))
    }

    fn refresh_within(&mut self, plan: &Plan, now: u64, lead: u64) -> Option<Call> {
        if !plan.prefetch || self.leasing || now < self.quiet_until || self.figures.is_empty() {
            return None;
        }
        // At most two leases at once: the one being spent and its renewal. (Renewing while
        // two are held let a book pile up a lease per round trip, each a tenth of what was
        // left, while it spent the first: a SIGKILLed instance was seen holding three.)
        let live = self
            .held
            .iter()
            .filter(|h| h.units > 0 && h.expires > now)
            .count();
        if live >= MAX_HELD_LEASES {
            return None;
        }
        // The demand since the last ask counts too: a key leased before it had any (its
        // first lease) renews ahead of need once it spends.
        let recent = self.spent as f64 / now.saturating_sub(self.mark).max(1) as f64;
        let rate = self.rate.max(recent);
        let low = (rate * lead as f64).ceil();
        let soonest = self.held.iter().map(|h| h.expires).min();
        let running_low = (self.allowance() as f64) <= low;
        let ending = soonest.is_some_and(|e| e <= now.saturating_add(lead));
        if !(running_low || ending) || rate <= 0.0 {
            return None;
        }
        let (want, life) = self.terms(now, plan, 0);
        let report = self.next_report(plan, true);
        self.leasing = true;
        self.in_flight += 1;
        // Every unit held is reported (not offered), ended leases not yet given back
        // included (their give-back takes them off the record): the store's record of this
        // owner is then what it holds, plus what it spends until its next call.
        let kept = self.allowance();
        let kept_at = self.held.iter().map(|h| h.granted_at).min().unwrap_or(0);
        Some(Call {
            request: LeaseRequest::new(0)
                .want(want, Duration::from_micros(life))
                .held_for(Duration::from_micros(plan.sparse))
                .max_share_permille(plan.share_permille)
                .owner(plan.owner, Duration::from_micros(plan.grace))
                .kept(kept, kept_at)
                .report(report)
                .lost(self.lost.0, self.lost.1),
            reserved: Vec::new(),
            sent: now,
            wanted: true,
        })
    }

    /// Units to ask for and for how long: the demand since the last ask (rising at once,
    /// falling by half per ask) over one lease lifetime, plus the request's own cost. A key
    /// whose demand would not fill [`COVER_UNITS`] in one lifetime (a key decided up to a
    /// few hundred times a second, now and then, or for the first time) is leased longer,
    /// long enough for that many units up to `plan.sparse` (up to a quarter less, at random),
    /// for its demand over that time and at least [`SPARSE_UNITS`]: a lease then lasts until
    /// its key's next requests instead of ending unspent before them, and one lease call
    /// serves many decisions.
    fn terms(&mut self, now: u64, plan: &Plan, cost: u64) -> (u64, u64) {
        let rate = self.measure(now);
        let base = plan.lifetime;
        let dense = rate * base as f64 >= COVER_UNITS;
        if dense || plan.sparse <= base {
            return (units_of(rate * base as f64).saturating_add(cost), base);
        }
        let life = if rate > 0.0 {
            let fill = COVER_UNITS / rate;
            if fill.is_finite() {
                (fill as u64).clamp(base, plan.sparse)
            } else {
                plan.sparse
            }
        } else {
            plan.sparse
        };
        // Up to a quarter shorter, at random: keys that started together (a deploy, a
        // warm-up) would otherwise all renew together, one lifetime apart, in waves of
        // lease calls that queue every request finding its allowance spent behind them.
        let life = life
            .saturating_sub((life as f64 * 0.25 * jitter()) as u64)
            .max(base);
        let units = units_of((rate * life as f64).max(SPARSE_UNITS));
        (units.saturating_add(cost), life)
    }

    /// Update the demand estimate with what was spent since the last ask.
    fn measure(&mut self, now: u64) -> f64 {
        let elapsed = now.saturating_sub(self.mark).max(1);
        let sample = self.spent as f64 / elapsed as f64;
        self.rate = if sample >= self.rate {
            sample
        } else {
            (self.rate + sample) / 2.0
        };
        self.spent = 0;
        self.mark = now;
        self.rate
    }

    /// Apply the store's answer to `call` (received at local time `now`). Returns the
    /// held units the store found stale (it took back what it could: they are gone).
    pub(crate) fn finish(
        &mut self,
        call: Call,
        reply: &Reply<'_>,
        plan: &Plan,
        now: u64,
    ) -> Dropped {
        self.settle(&call);
        if call.request.lost_to == self.lost.1 {
            // The store has settled the lost calls.
            self.lost = (0, 0);
        }
        // Stores that do not lease answer without a time (0): always the newest.
        let newest = reply.granted_at == 0 || reply.granted_at >= self.answered_at;
        if newest {
            self.answered_at = reply.granted_at;
        }
        let stale = if reply.stale_held {
            call.reserved.iter().map(|h| h.units).sum()
        } else {
            0
        };
        if reply.admitted {
            if reply.stale_held {
                // Gone: the store gave back to the windows still current what it could.
            } else {
                // What paid for the request is spent (soonest-ending first); the rest is
                // held again (ended leases end again, and are given back, on the next look).
                let mut used = reply.used_held;
                let mut rest = call.reserved;
                rest.sort_by_key(|h| h.expires);
                for h in &mut rest {
                    let t = used.min(h.units);
                    h.units -= t;
                    used -= t;
                }
                self.hold(rest);
            }
            if call.request.cost > 0 {
                self.spent = self.spent.saturating_add(call.request.cost);
            }
            if newest {
                self.denial = None;
            }
            if reply.granted > 0 {
                self.hold([Held {
                    units: reply.granted,
                    expires: call.sent.saturating_add(reply.lifetime),
                    granted_at: reply.granted_at,
                    // As the ledger computes the record's end (lease.lua).
                    reclaim_at: if call.request.owner == 0 {
                        0
                    } else {
                        reply
                            .granted_at
                            .saturating_add(reply.lifetime)
                            .saturating_add(micros(call.request.grace))
                    },
                    reported: 0,
                }]);
            } else if call.wanted && call.request.want > 0 {
                // Nothing to lease now (the quota is nearly spent): no background calls for
                // a while; requests that find no allowance still ask.
                self.quiet_until = now.saturating_add(plan.lifetime / 4);
            }
        } else {
            if newest {
                self.denial = Some(Box::new(Denial::of(&call, reply, plan)));
            }
            if !reply.stale_held {
                self.hold(call.reserved);
            }
        }
        if newest {
            self.figures = reply
                .verdicts
                .iter()
                .map(|v| Figure {
                    remaining: v.remaining,
                    reset_at: call.sent.saturating_add(v.reset),
                })
                .collect();
        }
        Dropped(stale)
    }

    /// The call failed or was abandoned: its reserved units are dropped (the store may have
    /// counted them towards the request), background calls wait until `quiet_until`, and
    /// the next calls name its report as lost (the store gives back what it granted).
    pub(crate) fn cancel(&mut self, call: Call, quiet_until: u64) -> Dropped {
        self.settle(&call);
        if call.request.report > 0 {
            // The store may have run it: the next calls say so (`LeaseRequest::lost_from`).
            if self.lost.0 == 0 {
                self.lost.0 = call.request.report;
            }
            self.lost.1 = call.request.report;
        }
        self.quiet_until = self.quiet_until.max(quiet_until);
        Dropped(call.reserved.into_iter().map(|h| h.units).sum())
    }

    /// The call was never sent (its request gave up while it was queued): the store counted
    /// nothing, and the units it carried are held again.
    pub(crate) fn unsend(&mut self, call: Call) {
        self.settle(&call);
        self.hold(call.reserved);
    }

    fn settle(&mut self, call: &Call) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if call.wanted {
            self.leasing = false;
        }
    }

    /// Forget the allowance and the last denial (after a reset of the key).
    pub(crate) fn clear(&mut self) -> u64 {
        self.denial = None;
        let units = self.allowance();
        self.held.clear();
        units
    }

    /// Forget the last denial (after a refund).
    pub(crate) fn forget_denial(&mut self) {
        self.denial = None;
    }

    /// Every unit held, taken out of the book (to give back at shutdown). The demand seen
    /// since the last call is forgotten too, so that the sweeper does not lease again for a
    /// key nobody decided since (it renewed such a key once: a lease taken after the
    /// give-back, held by an instance about to stop).
    pub(crate) fn take_all(&mut self) -> Leases {
        self.spent = 0;
        let reported = self.reported;
        let mut all = std::mem::take(&mut self.held);
        for h in &mut all {
            h.reported = reported;
        }
        all
    }

    /// The number of the next call's report, when it carries everything the book holds
    /// that could change the record, else 0. A call that leases is sent only while no other
    /// lease call is in flight; calls in flight then lease nothing, and the held units they
    /// carry are left out of the report: the record is then lower than the truth, which
    /// only reclaims less. A request's call reports when no call at all is in flight.
    fn next_report(&mut self, plan: &Plan, leasing: bool) -> u64 {
        if plan.owner == 0 || (self.in_flight > 0 && !leasing) {
            return 0;
        }
        self.reported = REPORTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.reported
    }

    /// Verdicts of an admission from the allowance: what the store had left at its last
    /// answer plus what this instance holds (at most the quota's capacity).
    fn local(&self, policy: &Policy, now: u64, out: &mut [Verdict]) {
        let allowance = self.allowance();
        for ((o, f), q) in out.iter_mut().zip(&self.figures).zip(policy.params()) {
            let capacity = match policy.algorithm() {
                Algorithm::Gcra | Algorithm::TokenBucket => q.burst,
                _ => q.limit,
            };
            *o = Verdict {
                allowed: true,
                remaining: f.remaining.saturating_add(allowance).min(capacity),
                reset: f.reset_at.saturating_sub(now),
                retry_after: None,
            };
        }
    }
}

/// Units dropped by a book operation: held units no store will count again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) struct Dropped(pub(crate) u64);

#[cfg(test)]
mod tests;
