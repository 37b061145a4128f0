//! The five algorithms as pure state transitions: no I/O, no clock, no locks.
//!
//! Time is whole microseconds since the Unix epoch. Each algorithm has a [`QuotaState`] per
//! key and quota and three transitions: [`check`](QuotaState::check) (pure: would a request
//! of this cost be admitted, and what would remain), [`consume`](QuotaState::consume) (apply
//! an admitted request) and [`refund`](QuotaState::refund) (give units back). The in-memory
//! backend runs these functions directly; the Redis backend runs a Lua transcription of the
//! same arithmetic (integers below 2^53, which Lua's doubles hold exactly; the sliding
//! counter's weighting is the same IEEE-754 double arithmetic in both).
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

use std::collections::VecDeque;

use crate::quota::{Algorithm, Params, Policy, Quota};

/// Times beyond 2^53 µs (year 2255) are treated as 2^53 µs: every value the algorithms
/// store stays exact in a double (Lua) and no arithmetic can overflow.
pub const MAX_MICROS: u64 = 1 << 53;

/// What one quota says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verdict {
    /// Whether this quota admits the request.
    pub allowed: bool,
    /// Units left after the request (when admitted) or now (when denied).
    pub remaining: u64,
    /// Microseconds until the quota is whole again (after the request, when admitted).
    pub reset: u64,
    /// When denied: microseconds until a request of the same cost would be admitted by this
    /// quota, or `None` when it never will (the cost exceeds the quota's capacity).
    /// Always `None` when admitted.
    pub retry_after: Option<u64>,
}

/// The stored state of one quota for one key.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum QuotaState {
    /// [`Algorithm::TokenBucket`]: whole tokens and the time they were counted at.
    TokenBucket {
        /// Tokens in the bucket.
        tokens: u64,
        /// Time up to which refills have been counted.
        last: u64,
    },
    /// [`Algorithm::Gcra`]: the theoretical arrival time.
    Gcra {
        /// Theoretical arrival time of the next request.
        tat: u64,
    },
    /// [`Algorithm::FixedWindow`]: the window index (`now / period`) and its count.
    FixedWindow {
        /// Window index.
        window: u64,
        /// Units admitted in that window.
        count: u64,
    },
    /// [`Algorithm::SlidingWindowLog`]: admitted requests `(time, cost)`, oldest first, with
    /// their total. At most `limit` entries (requests at the same microsecond are merged).
    SlidingWindowLog {
        /// `(time, cost)` of each admitted request, oldest first.
        entries: VecDeque<(u64, u64)>,
        /// Sum of the costs in `entries`.
        sum: u64,
    },
    /// [`Algorithm::SlidingWindowCounter`]: the current window and the two latest counts.
    SlidingWindowCounter {
        /// Window index of `curr`.
        window: u64,
        /// Units admitted in window `window - 1`.
        prev: u64,
        /// Units admitted in window `window`.
        curr: u64,
    },
}

/// Fresh state for every quota of `policy` (what a never-seen key has).
pub fn fresh_states(policy: &Policy, now: u64) -> Vec<QuotaState> {
    policy
        .quotas()
        .iter()
        .map(|q| QuotaState::new(policy.algorithm(), &q.quota, now))
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
    let params = policy.params();
    let verdicts: Vec<Verdict> = params
        .iter()
        .zip(states.iter())
        .map(|(q, s)| s.check_with(q, now, cost))
        .collect();
    let allowed = verdicts.iter().all(|v| v.allowed);
    if allowed {
        for (q, s) in params.iter().zip(states.iter_mut()) {
            s.consume_with(q, now, cost);
        }
        return (true, verdicts);
    }
    // Nothing was consumed: quotas that would have admitted report what they still have.
    let verdicts = params
        .iter()
        .zip(states.iter())
        .zip(verdicts)
        .map(|((q, s), v)| {
            if v.allowed {
                s.check_with(q, now, 0)
            } else {
                v
            }
        })
        .collect();
    (false, verdicts)
}

/// [`decide_aligned`] for a policy of one quota, without allocating the verdict list (a
/// denial by the only quota leaves its verdict as it is).
pub(crate) fn decide_one(
    state: &mut QuotaState,
    q: &Params,
    now: u64,
    cost: u64,
) -> (bool, Verdict) {
    let v = state.check_with(q, now, cost);
    if v.allowed {
        state.consume_with(q, now, cost);
    }
    (v.allowed, v)
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
        s.consume_with(p, now, cost);
    }
    true
}

/// What a request of cost 1 would get, consuming nothing. `remaining` is what is left now.
pub fn peek(states: &[QuotaState], policy: &Policy, now: u64) -> (bool, Vec<Verdict>) {
    let verdicts: Vec<Verdict> = policy
        .quotas()
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let fresh;
            let state = match states.get(i) {
                Some(s) if s.algorithm() == policy.algorithm() => s,
                _ => {
                    fresh = QuotaState::new(policy.algorithm(), &q.quota, now);
                    &fresh
                }
            };
            let mut v = state.check(&q.quota, now, 1);
            if v.allowed {
                v.remaining += 1;
            }
            v
        })
        .collect();
    (verdicts.iter().all(|v| v.allowed), verdicts)
}

/// Give `cost` units back to every quota (never beyond its capacity).
pub fn refund(states: &mut Vec<QuotaState>, policy: &Policy, now: u64, cost: u64) {
    align(states, policy, now);
    refund_aligned(states, policy, now, cost);
}

/// [`refund`] on states already aligned with the policy.
pub(crate) fn refund_aligned(states: &mut [QuotaState], policy: &Policy, now: u64, cost: u64) {
    for (q, s) in policy.quotas().iter().zip(states.iter_mut()) {
        s.refund(&q.quota, now, cost);
    }
}

fn align(states: &mut Vec<QuotaState>, policy: &Policy, now: u64) {
    let n = policy.quotas().len();
    states.truncate(n);
    for (i, q) in policy.quotas().iter().enumerate() {
        match states.get(i) {
            Some(s) if s.algorithm() == policy.algorithm() => {}
            Some(_) => states[i] = QuotaState::new(policy.algorithm(), &q.quota, now),
            None => states.push(QuotaState::new(policy.algorithm(), &q.quota, now)),
        }
    }
}

/// When a key's states become equivalent to fresh ones if no request comes (every decision,
/// peek and refund from then on is the same as on [`fresh_states`]), and how many units they
/// still hold at `now`. A store may drop a key from that time on without admitting anything
/// extra, and, when it must forget live keys, forgets first those holding least (what
/// forgetting gives back), soonest expiring among equals.
pub(crate) fn expiry(states: &[QuotaState], params: &[Params], now: u64) -> (u64, u64) {
    states
        .iter()
        .zip(params)
        .map(|(s, q)| s.expiry(q, now))
        .fold((0, 0), |(at, held), (a, h)| {
            (at.max(a), held.saturating_add(h))
        })
}

// The single-quota decisions on the bare fields (what `QuotaState::take` runs, and what the
// memory store runs on its packed states): `check(..).allowed`, then `consume` if admitted.

#[inline]
pub(crate) fn gcra_take(tat: &mut u64, q: &Params, now: u64, cost: u64) -> bool {
    let now = now.min(MAX_MICROS);
    let t = q.interval;
    let new_tat = (*tat).max(now).saturating_add(cost.saturating_mul(t));
    let admitted = new_tat <= now + q.burst * t;
    if admitted {
        *tat = new_tat;
    }
    admitted
}

#[inline]
pub(crate) fn tb_take(tokens: &mut u64, last: &mut u64, q: &Params, now: u64, cost: u64) -> bool {
    let now = now.min(MAX_MICROS);
    let (tok, l) = tb_refill(*tokens, *last, now, q.burst, q.interval);
    let admitted = cost <= tok;
    if admitted {
        *tokens = tok - cost;
        *last = l;
    }
    admitted
}

#[inline]
pub(crate) fn fw_take(window: &mut u64, count: &mut u64, q: &Params, now: u64, cost: u64) -> bool {
    let now = now.min(MAX_MICROS);
    let p = q.period;
    // `now / p <= window` without dividing: only a new window divides.
    let same = now < window.saturating_add(1).saturating_mul(p);
    let used = if same { *count } else { 0 };
    let admitted = used.saturating_add(cost) <= q.limit;
    if admitted {
        if !same {
            *window = now / p;
        }
        *count = used.saturating_add(cost);
    }
    admitted
}

#[inline]
pub(crate) fn swc_take(
    window: &mut u64,
    prev: &mut u64,
    curr: &mut u64,
    q: &Params,
    now: u64,
    cost: u64,
) -> bool {
    let now = now.min(MAX_MICROS);
    let p = q.period;
    let (w, pv, c, now) = counter_window(*window, *prev, *curr, now, p);
    let admitted = weighted(pv, p, now.saturating_sub(w.saturating_mul(p)))
        + c.saturating_add(cost) as f64
        <= q.limit as f64;
    if admitted {
        *window = w;
        *prev = pv;
        *curr = c.saturating_add(cost);
    }
    admitted
}

/// The times of a sliding-window log's oldest and newest entries, kept beside the list by a
/// store that admits without reading either end of it ([`log_take_at_ends`]). An empty log
/// has `oldest` `u64::MAX` and `newest` 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogEnds {
    oldest: u64,
    newest: u64,
}

impl LogEnds {
    /// The ends of `state`'s log (those of an empty log for any other state).
    pub(crate) fn of(state: &QuotaState) -> Self {
        match state {
            QuotaState::SlidingWindowLog { entries, .. } => Self {
                oldest: entries.front().map_or(u64::MAX, |&(ts, _)| ts),
                newest: entries.back().map_or(0, |&(ts, _)| ts),
            },
            _ => Self {
                oldest: u64::MAX,
                newest: 0,
            },
        }
    }
}

/// [`log_take`] with the log's ends known. When nothing has left the window and the
/// request gets an entry of its own, the usual case, it reads neither end of the list: in
/// a store of many long logs those are two cache misses per decision.
#[inline]
pub(crate) fn log_take_at_ends(
    entries: &mut VecDeque<(u64, u64)>,
    sum: &mut u64,
    ends: &mut LogEnds,
    q: &Params,
    now: u64,
    cost: u64,
) -> bool {
    let now = now.min(MAX_MICROS);
    if cost > 0 && now > ends.newest && ends.oldest.saturating_add(q.period) > now {
        if sum.saturating_add(cost) > q.limit {
            return false;
        }
        entries.push_back((now, cost));
        *sum += cost;
        ends.newest = now;
        ends.oldest = ends.oldest.min(now);
        return true;
    }
    let admitted = log_take(entries, sum, q, now, cost);
    if admitted {
        ends.oldest = entries.front().map_or(u64::MAX, |&(ts, _)| ts);
        ends.newest = entries.back().map_or(0, |&(ts, _)| ts);
    }
    admitted
}

/// A sliding-window log's units still in the window at `now`, and how many entries at its
/// front have left it.
#[inline]
fn log_live(entries: &VecDeque<(u64, u64)>, sum: u64, period: u64, now: u64) -> (u64, usize) {
    // Usually the oldest entry is still in the window: one comparison, no iterator.
    match entries.front() {
        Some(&(ts, _)) if ts.saturating_add(period) <= now => {}
        _ => return (sum, 0),
    }
    let mut live = sum;
    let mut expired = 0;
    for &(ts, c) in entries {
        if ts.saturating_add(period) > now {
            break;
        }
        live -= c;
        expired += 1;
    }
    (live, expired)
}

/// A sliding-window log's admit in one pass over the expired entries at its front: they
/// are counted out first and dropped only when the request is admitted, so a denial changes
/// nothing (the clock may still step back to a time they were live).
#[inline]
pub(crate) fn log_take(
    entries: &mut VecDeque<(u64, u64)>,
    sum: &mut u64,
    q: &Params,
    now: u64,
    cost: u64,
) -> bool {
    let now = now.min(MAX_MICROS);
    let (live, expired) = log_live(entries, *sum, q.period, now);
    if live.saturating_add(cost) > q.limit {
        return false;
    }
    if expired > 0 {
        entries.drain(..expired);
        *sum = live;
    }
    if cost > 0 {
        // Requests in the same microsecond share an entry, so a log never holds more
        // entries than its limit.
        match entries.back_mut() {
            Some((ts, c)) if *ts >= now => *c += cost,
            _ => entries.push_back((now, cost)),
        }
        *sum += cost;
    }
    true
}

#[inline]
fn tb_refill(tokens: u64, last: u64, now: u64, burst: u64, t: u64) -> (u64, u64) {
    if now <= last {
        return (tokens.min(burst), last);
    }
    let add = (now - last) / t;
    if tokens.saturating_add(add) >= burst {
        (burst, now)
    } else {
        (tokens + add, last + add * t)
    }
}

#[inline]
fn counter_window(window: u64, prev: u64, curr: u64, now: u64, p: u64) -> (u64, u64, u64, u64) {
    // Returns (window, prev, curr, now) with time that went backwards held at the stored
    // window's start. `now / p` is compared through products, so that only a request two
    // or more windows later divides (a 64-bit division costs more than the rest of a
    // decision); `now < window·p` is `now / p < window` for whole numbers, and saturation
    // only makes a bound larger than any time.
    let start = window.saturating_mul(p);
    if now < start {
        return (window, prev, curr, start);
    }
    let next = start.saturating_add(p);
    if now < next {
        (window, prev, curr, now)
    } else if now < next.saturating_add(p) {
        (window + 1, curr, 0, now)
    } else {
        (now / p, 0, 0, now)
    }
}

#[inline]
fn weighted(prev: u64, p: u64, elapsed: u64) -> f64 {
    // Lua: prev * (p - elapsed) / p, evaluated left to right in doubles.
    (prev as f64 * (p - elapsed) as f64) / p as f64
}

impl QuotaState {
    /// The state of a key never seen before.
    pub fn new(algorithm: Algorithm, quota: &Quota, now: u64) -> Self {
        let now = now.min(MAX_MICROS);
        match algorithm {
            Algorithm::TokenBucket => Self::TokenBucket {
                tokens: quota.burst(),
                last: now,
            },
            Algorithm::Gcra => Self::Gcra { tat: 0 },
            Algorithm::FixedWindow => Self::FixedWindow {
                window: now / quota.period_micros(),
                count: 0,
            },
            Algorithm::SlidingWindowLog => Self::SlidingWindowLog {
                entries: VecDeque::new(),
                sum: 0,
            },
            Algorithm::SlidingWindowCounter => Self::SlidingWindowCounter {
                window: now / quota.period_micros(),
                prev: 0,
                curr: 0,
            },
        }
    }

    /// The algorithm this state belongs to.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::TokenBucket { .. } => Algorithm::TokenBucket,
            Self::Gcra { .. } => Algorithm::Gcra,
            Self::FixedWindow { .. } => Algorithm::FixedWindow,
            Self::SlidingWindowLog { .. } => Algorithm::SlidingWindowLog,
            Self::SlidingWindowCounter { .. } => Algorithm::SlidingWindowCounter,
        }
    }

    /// [`expiry`] of one quota's state.
    pub(crate) fn expiry(&self, q: &Params, now: u64) -> (u64, u64) {
        let now = now.min(MAX_MICROS);
        let p = q.period;
        match *self {
            // Any `tat <= now` behaves as the fresh `tat = 0`.
            Self::Gcra { tat } => (tat, tat.saturating_sub(now).div_ceil(q.interval)),
            // Full once the refill reaches `burst`; a full bucket counted at an earlier
            // `last` refills to the same `(burst, now)` a fresh one holds.
            Self::TokenBucket { tokens, last } => {
                let missing = q.burst.saturating_sub(tokens);
                let (now_tokens, _) = tb_refill(tokens, last, now, q.burst, q.interval);
                (
                    last.saturating_add(missing.saturating_mul(q.interval)),
                    q.burst.saturating_sub(now_tokens),
                )
            }
            Self::FixedWindow { window, count } => {
                let end = window.saturating_add(1).saturating_mul(p);
                (end, if now < end { count } else { 0 })
            }
            // `curr` still weighs during the next window; `prev` only during this one.
            Self::SlidingWindowCounter { window, prev, curr } => {
                let windows = if curr > 0 { 2 } else { 1 };
                let (_, prev_now, curr_now, _) = counter_window(window, prev, curr, now, p);
                (
                    window.saturating_add(windows).saturating_mul(p),
                    prev_now.saturating_add(curr_now),
                )
            }
            Self::SlidingWindowLog { ref entries, sum } => (
                entries.back().map_or(0, |&(ts, _)| ts.saturating_add(p)),
                sum,
            ),
        }
    }

    /// Would a request of `cost` be admitted at `now`? Changes nothing.
    pub fn check(&self, q: &Quota, now: u64, cost: u64) -> Verdict {
        self.check_with(&Params::new(q), now, cost)
    }

    pub(crate) fn check_with(&self, q: &Params, now: u64, cost: u64) -> Verdict {
        let now = now.min(MAX_MICROS);
        let limit = q.limit;
        let p = q.period;
        match self {
            Self::TokenBucket { tokens, last } => {
                let burst = q.burst;
                let t = q.interval;
                let (tok, last) = tb_refill(*tokens, *last, now, burst, t);
                if cost <= tok {
                    let left = tok - cost;
                    Verdict {
                        allowed: true,
                        remaining: left,
                        reset: (last + (burst - left) * t).saturating_sub(now),
                        retry_after: None,
                    }
                } else {
                    Verdict {
                        allowed: false,
                        remaining: tok,
                        reset: (last + (burst - tok) * t).saturating_sub(now),
                        retry_after: (cost <= burst)
                            .then(|| (last + (cost - tok) * t).saturating_sub(now)),
                    }
                }
            }
            Self::Gcra { tat } => {
                let t = q.interval;
                let tau = q.burst * t;
                let tat0 = (*tat).max(now);
                let new_tat = tat0.saturating_add(cost.saturating_mul(t));
                if new_tat <= now + tau {
                    Verdict {
                        allowed: true,
                        remaining: (now + tau - new_tat) / t,
                        reset: new_tat - now,
                        retry_after: None,
                    }
                } else {
                    Verdict {
                        allowed: false,
                        remaining: (now + tau).saturating_sub(tat0) / t,
                        reset: tat0 - now,
                        retry_after: (cost <= q.burst).then(|| new_tat - tau - now),
                    }
                }
            }
            Self::FixedWindow { window, count } => {
                let w = now / p;
                let (w, count) = if w <= *window {
                    (*window, *count)
                } else {
                    (w, 0)
                };
                let reset = w.saturating_add(1).saturating_mul(p).saturating_sub(now);
                if count.saturating_add(cost) <= limit {
                    Verdict {
                        allowed: true,
                        remaining: limit - count - cost,
                        reset,
                        retry_after: None,
                    }
                } else {
                    Verdict {
                        allowed: false,
                        remaining: limit.saturating_sub(count),
                        reset,
                        retry_after: (cost <= limit).then_some(reset),
                    }
                }
            }
            Self::SlidingWindowCounter { window, prev, curr } => {
                let (w, prev, curr, now) = counter_window(*window, *prev, *curr, now, p);
                let elapsed = now.saturating_sub(w.saturating_mul(p));
                let weight = weighted(prev, p, elapsed);
                let allowed = weight + curr.saturating_add(cost) as f64 <= limit as f64;
                let used = if allowed { curr + cost } else { curr };
                let remaining = (limit as f64 - weight - used as f64).floor().max(0.0) as u64;
                let reset = if used > 0 {
                    w.saturating_add(2).saturating_mul(p).saturating_sub(now)
                } else if prev > 0 {
                    w.saturating_add(1).saturating_mul(p).saturating_sub(now)
                } else {
                    0
                };
                let retry_after = if allowed || cost > limit {
                    None
                } else if curr.saturating_add(cost) <= limit {
                    // Wait until the previous window's weight has dropped enough.
                    let x = (p - elapsed) as f64
                        - ((limit - curr - cost) as f64 * p as f64) / prev as f64;
                    Some(x.ceil().max(0.0) as u64 + 1)
                } else {
                    // Wait for the next window, then until this window's weight drops enough.
                    let y = p as f64 - ((limit - cost) as f64 * p as f64) / curr as f64;
                    Some((p - elapsed) + y.ceil().max(0.0) as u64 + 1)
                };
                Verdict {
                    allowed,
                    remaining,
                    reset,
                    retry_after,
                }
            }
            Self::SlidingWindowLog { entries, sum } => {
                let mut live = *sum;
                let mut first_live = 0;
                for (ts, c) in entries {
                    if ts.saturating_add(p) <= now {
                        live -= c;
                        first_live += 1;
                    } else {
                        break;
                    }
                }
                if live.saturating_add(cost) <= limit {
                    let reset = if cost > 0 {
                        p
                    } else {
                        entries
                            .back()
                            .map_or(0, |(ts, _)| (ts + p).saturating_sub(now))
                    };
                    Verdict {
                        allowed: true,
                        remaining: limit - live - cost,
                        reset,
                        retry_after: None,
                    }
                } else {
                    let reset = entries
                        .back()
                        .map_or(0, |(ts, _)| (ts + p).saturating_sub(now));
                    let mut retry_after = None;
                    if cost <= limit {
                        let mut freed = 0;
                        for (ts, c) in entries.iter().skip(first_live) {
                            freed += c;
                            if live - freed + cost <= limit {
                                retry_after = Some((ts + p).saturating_sub(now));
                                break;
                            }
                        }
                    }
                    Verdict {
                        allowed: false,
                        remaining: limit.saturating_sub(live),
                        reset,
                        retry_after,
                    }
                }
            }
        }
    }

    /// `check(..).allowed` without the verdict's other figures (and, for the bucket and
    /// fixed-window algorithms, without dividing).
    pub(crate) fn admits(&self, q: &Params, now: u64, cost: u64) -> bool {
        let now = now.min(MAX_MICROS);
        match self {
            Self::TokenBucket { tokens, last } => {
                // The refilled tokens are min(burst, tokens + (now - last) / interval), and
                // for whole k, k <= d / t exactly when k * t <= d.
                if cost > q.burst {
                    return false;
                }
                if cost <= *tokens {
                    return true;
                }
                (cost - *tokens).saturating_mul(q.interval) <= now.saturating_sub(*last)
            }
            Self::Gcra { tat } => {
                let t = q.interval;
                (*tat).max(now).saturating_add(cost.saturating_mul(t)) <= now + q.burst * t
            }
            Self::FixedWindow { window, count } => {
                let count = if now < window.saturating_add(1).saturating_mul(q.period) {
                    *count
                } else {
                    0
                };
                count.saturating_add(cost) <= q.limit
            }
            Self::SlidingWindowCounter { window, prev, curr } => {
                let p = q.period;
                let (w, prev, curr, now) = counter_window(*window, *prev, *curr, now, p);
                weighted(prev, p, now.saturating_sub(w.saturating_mul(p)))
                    + curr.saturating_add(cost) as f64
                    <= q.limit as f64
            }
            Self::SlidingWindowLog { entries, sum } => {
                log_live(entries, *sum, q.period, now)
                    .0
                    .saturating_add(cost)
                    <= q.limit
            }
        }
    }

    /// [`admits`](Self::admits), then [`consume_with`](Self::consume_with) when admitted:
    /// the whole decision of a single-quota policy.
    pub(crate) fn take(&mut self, q: &Params, now: u64, cost: u64) -> bool {
        match self {
            Self::Gcra { tat } => gcra_take(tat, q, now, cost),
            Self::TokenBucket { tokens, last } => tb_take(tokens, last, q, now, cost),
            Self::FixedWindow { window, count } => fw_take(window, count, q, now, cost),
            Self::SlidingWindowCounter { window, prev, curr } => {
                swc_take(window, prev, curr, q, now, cost)
            }
            Self::SlidingWindowLog { entries, sum } => log_take(entries, sum, q, now, cost),
        }
    }

    /// Apply an admitted request of `cost` at `now` (call after [`check`](Self::check)
    /// admitted it; it does not check again).
    pub fn consume(&mut self, q: &Quota, now: u64, cost: u64) {
        self.consume_with(&Params::new(q), now, cost);
    }

    pub(crate) fn consume_with(&mut self, q: &Params, now: u64, cost: u64) {
        let now = now.min(MAX_MICROS);
        let p = q.period;
        match self {
            Self::TokenBucket { tokens, last } => {
                let (tok, l) = tb_refill(*tokens, *last, now, q.burst, q.interval);
                *tokens = tok.saturating_sub(cost);
                *last = l;
            }
            Self::Gcra { tat } => {
                *tat = (*tat)
                    .max(now)
                    .saturating_add(cost.saturating_mul(q.interval));
            }
            Self::FixedWindow { window, count } => {
                // `now / p > window` without dividing on every call: only a new window does.
                if now >= window.saturating_add(1).saturating_mul(p) {
                    *window = now / p;
                    *count = 0;
                }
                *count = count.saturating_add(cost);
            }
            Self::SlidingWindowCounter { window, prev, curr } => {
                let (w, pv, c, _) = counter_window(*window, *prev, *curr, now, p);
                *window = w;
                *prev = pv;
                *curr = c.saturating_add(cost);
            }
            Self::SlidingWindowLog { entries, sum } => {
                while let Some(&(ts, c)) = entries.front() {
                    if ts.saturating_add(p) <= now {
                        entries.pop_front();
                        *sum -= c;
                    } else {
                        break;
                    }
                }
                if cost == 0 {
                    return;
                }
                match entries.back_mut() {
                    Some((ts, c)) if *ts >= now => *c += cost,
                    _ => entries.push_back((now, cost)),
                }
                *sum += cost;
            }
        }
    }

    /// Give back up to `cost` units (never beyond the quota's capacity, never below zero).
    pub fn refund(&mut self, q: &Quota, now: u64, cost: u64) {
        let now = now.min(MAX_MICROS);
        let p = q.period_micros();
        match self {
            Self::TokenBucket { tokens, last } => {
                let burst = q.burst();
                let (tok, l) = tb_refill(*tokens, *last, now, burst, q.interval_micros());
                *tokens = tok.saturating_add(cost).min(burst);
                *last = if *tokens == burst { now.max(l) } else { l };
            }
            Self::Gcra { tat } => {
                *tat = tat
                    .saturating_sub(cost.saturating_mul(q.interval_micros()))
                    .max(now);
            }
            Self::FixedWindow { window, count } => {
                if now / p <= *window {
                    *count = count.saturating_sub(cost);
                }
            }
            Self::SlidingWindowCounter { window, prev, curr } => {
                let (w, pv, c, _) = counter_window(*window, *prev, *curr, now, p);
                *window = w;
                *prev = pv;
                *curr = c.saturating_sub(cost);
            }
            Self::SlidingWindowLog { entries, sum } => {
                let mut left = cost;
                while left > 0 {
                    let Some((_, c)) = entries.back_mut() else {
                        break;
                    };
                    let take = left.min(*c);
                    *c -= take;
                    *sum -= take;
                    left -= take;
                    if *c == 0 {
                        entries.pop_back();
                    }
                }
            }
        }
    }
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
            let mut plain = QuotaState::new(Algorithm::SlidingWindowLog, &quota, now);
            let mut at_ends = plain.clone();
            let mut ends = LogEnds::of(&at_ends);
            for &(dt, cost, give_back) in &steps {
                now = now.saturating_add_signed(dt);
                if give_back {
                    plain.refund(&quota, now, cost);
                    at_ends.refund(&quota, now, cost);
                    ends = LogEnds::of(&at_ends);
                    continue;
                }
                let expected = plain.take(&q, now, cost);
                let QuotaState::SlidingWindowLog { entries, sum } = &mut at_ends else {
                    unreachable!("a log's state")
                };
                let got = log_take_at_ends(entries, sum, &mut ends, &q, now, cost);
                prop_assert_eq!(got, expected, "at {} cost {}", now - T0, cost);
                prop_assert_eq!(&at_ends, &plain);
                prop_assert_eq!(ends, LogEnds::of(&at_ends));
            }
        }
    }
}
