//! The answer to one request: [`Decision`].

use std::fmt;
use std::time::Duration;

use crate::quota::{NamedQuota, Policy};

/// Who made a [`Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecisionSource {
    /// The limiter's store (memory or Redis) counted the request.
    Store,
    /// The store failed and the in-memory fallback counted the request
    /// ([`FailureMode::FallbackToMemory`](crate::FailureMode::FallbackToMemory)).
    Fallback,
    /// The store failed and the request was admitted uncounted
    /// ([`FailureMode::FailOpen`](crate::FailureMode::FailOpen)).
    FailOpen,
    /// The store failed and the request was denied
    /// ([`FailureMode::FailClosed`](crate::FailureMode::FailClosed)).
    FailClosed,
    /// A [`LeasedStore`](crate::LeasedStore) decided without a round trip: admitted from the
    /// allowance this instance leased (counted in the shared store beforehand), or denied
    /// as the shared store denied the same cost a moment ago.
    Lease,
}

impl DecisionSource {
    /// A stable lowercase name for metrics labels.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::Fallback => "fallback",
            Self::FailOpen => "fail_open",
            Self::FailClosed => "fail_closed",
            Self::Lease => "lease",
        }
    }

    /// Whether the primary store did not make the decision (fallback memory, fail-open or
    /// fail-closed).
    pub const fn is_fallback(&self) -> bool {
        matches!(self, Self::Fallback | Self::FailOpen | Self::FailClosed)
    }
}

/// What one quota of the policy said. Plain numbers (`Copy`); the quota's name, limit and
/// period are the policy's ([`Decision::named`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuotaDecision {
    /// Units left (after this request when it was admitted).
    pub remaining: u64,
    /// Time until the quota is whole again.
    pub reset: Duration,
    /// Whether this quota admitted the request.
    pub allowed: bool,
    /// When this quota denied: time until a request of the same cost would pass it;
    /// `None` when admitted or when the cost exceeds the quota's capacity.
    pub retry_after: Option<Duration>,
}

/// What one quota says about one request: an algorithm's answer, in full figures (a
/// [`Decision`] keeps one per quota of its policy).
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

impl Verdict {
    /// A placeholder, overwritten before it is read.
    pub(crate) const NONE: Self = Self {
        allowed: false,
        remaining: 0,
        reset: 0,
        retry_after: None,
    };
}

/// A verdict as an algorithm leaves it, its figures read when asked: units left are kept as
/// a quotient not yet taken (GCRA knows its slack in microseconds, and dividing by the
/// emission interval is a 64-bit division nobody needs unless a header is written), times
/// as microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawVerdict {
    /// Units left are `left / unit`.
    pub(crate) left: u64,
    /// At least 1.
    pub(crate) unit: u64,
    /// Microseconds until the quota is whole again.
    pub(crate) reset: u64,
    /// Microseconds until a request of the same cost would pass; [`NEVER`](Self::NEVER)
    /// when admitted or when it never will.
    pub(crate) retry: u64,
    pub(crate) allowed: bool,
}

impl RawVerdict {
    /// `retry` of a verdict without a wait.
    pub(crate) const NEVER: u64 = u64::MAX;

    #[inline]
    pub(crate) const fn of(v: &Verdict) -> Self {
        Self {
            left: v.remaining,
            unit: 1,
            reset: v.reset,
            retry: match v.retry_after {
                Some(r) if !v.allowed => r,
                _ => Self::NEVER,
            },
            allowed: v.allowed,
        }
    }

    /// The verdict with every figure computed.
    pub(crate) fn verdict(&self) -> Verdict {
        Verdict {
            allowed: self.allowed,
            remaining: self.left / self.unit.max(1),
            reset: self.reset,
            retry_after: (self.retry != Self::NEVER).then_some(self.retry),
        }
    }

    fn quota(&self) -> QuotaDecision {
        let v = self.verdict();
        QuotaDecision {
            remaining: v.remaining,
            reset: Duration::from_micros(v.reset),
            allowed: v.allowed,
            retry_after: v.retry_after.map(Duration::from_micros),
        }
    }
}

/// Each quota's raw verdict: one inline, several behind one pointer, none when nothing was
/// counted.
#[derive(Clone)]
enum Figures {
    None,
    One(RawVerdict),
    Many(Box<[RawVerdict]>),
}

impl Figures {
    fn as_slice(&self) -> &[RawVerdict] {
        match self {
            Self::None => &[],
            Self::One(v) => std::slice::from_ref(v),
            Self::Many(v) => v,
        }
    }
}

/// The answer to one request: admitted or not, and what every quota of the policy says.
///
/// A decision is a few numbers (48 bytes): for a policy of one quota, building it allocates
/// nothing and touches nothing shared (no reference count), and its figures (units left,
/// reset and retry times) are computed when read. Several quotas take one allocation.
/// Names, limits and periods are the policy's: [`named`](Self::named) pairs them, and the
/// [`headers`](crate::headers) take the policy beside the decision.
///
/// ```
/// use palisade_ratelimit::{Algorithm, MemoryStore, Policy, Quota};
/// let store = MemoryStore::new();
/// let policy = Policy::single("api", Algorithm::Gcra, Quota::per_minute(2))?;
/// let d = store.acquire_sync("user:1", &policy, 1);
/// assert!(d.allowed);
/// assert_eq!(d.remaining(), Some(1));
/// let (quota, figures) = d.named(&policy).next().unwrap();
/// assert_eq!((&*quota.name, quota.quota.limit(), figures.remaining), ("api", 2, 1));
/// store.acquire_sync("user:1", &policy, 1);
/// let denied = store.acquire_sync("user:1", &policy, 1);
/// assert!(!denied.allowed && denied.retry_after().is_some());
/// # Ok::<(), palisade_ratelimit::Error>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// Who made the decision.
    pub source: DecisionSource,
    figures: Figures,
}

impl Decision {
    /// Build a decision from the per-quota verdicts of the algorithms (in policy order).
    pub fn from_verdicts(allowed: bool, verdicts: &[Verdict], source: DecisionSource) -> Self {
        let figures = match verdicts {
            [] => Figures::None,
            [only] => Figures::One(RawVerdict::of(only)),
            many => Figures::Many(many.iter().map(RawVerdict::of).collect()),
        };
        Self {
            allowed,
            source,
            figures,
        }
    }

    /// The decision of a single-quota policy from its quota's raw verdict (the memory
    /// store's hot path: nothing computed, nothing shared touched).
    #[inline]
    pub(crate) const fn one(verdict: RawVerdict, source: DecisionSource) -> Self {
        Self {
            allowed: verdict.allowed,
            source,
            figures: Figures::One(verdict),
        }
    }

    /// A decision that counted nothing: admitted (fail-open) or denied (fail-closed).
    pub fn uncounted(allowed: bool) -> Self {
        Self {
            allowed,
            source: if allowed {
                DecisionSource::FailOpen
            } else {
                DecisionSource::FailClosed
            },
            figures: Figures::None,
        }
    }

    /// Whether the decision was made without the primary store (fallback memory, fail-open
    /// or fail-closed); see [`source`](Self::source).
    pub fn from_fallback(&self) -> bool {
        self.source.is_fallback()
    }

    /// When denied: how long to wait before a request of the same cost can pass every quota
    /// that denied it; `None` when admitted or when it can never pass (cost above a
    /// quota's capacity, or a fail-closed decision).
    pub fn retry_after(&self) -> Option<Duration> {
        if self.allowed {
            return None;
        }
        let mut denied = self.figures.as_slice().iter().filter(|v| !v.allowed);
        let first = denied.next()?;
        // The longest wait of the quotas that denied; one that never passes wins.
        let longest = denied.fold(first.retry, |a, v| a.max(v.retry));
        (longest != RawVerdict::NEVER).then(|| Duration::from_micros(longest))
    }

    /// How many quotas were counted: the policy's number, or 0 for fail-open and
    /// fail-closed decisions, which counted nothing.
    pub fn len(&self) -> usize {
        self.figures.as_slice().len()
    }

    /// Whether no quota was counted (fail-open and fail-closed decisions).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What quota `index` (in policy order) said; `None` past the last counted quota.
    pub fn quota(&self, index: usize) -> Option<QuotaDecision> {
        self.figures.as_slice().get(index).map(RawVerdict::quota)
    }

    /// What every quota said, in policy order (empty when nothing was counted).
    pub fn quotas(&self) -> impl ExactSizeIterator<Item = QuotaDecision> + '_ {
        self.figures.as_slice().iter().map(RawVerdict::quota)
    }

    /// Each quota of `policy` (the one that decided: its name, limit and period) with what
    /// it said, in policy order.
    pub fn named<'a>(
        &'a self,
        policy: &'a Policy,
    ) -> impl Iterator<Item = (&'a NamedQuota, QuotaDecision)> + 'a {
        policy.quotas().iter().zip(self.quotas())
    }

    /// The index (in policy order) and figures of the quota closest to denying: the one that
    /// denied (longest wait first), else the one with the fewest units left. `None` when no
    /// quota was counted.
    pub fn most_restrictive(&self) -> Option<(usize, QuotaDecision)> {
        if !self.allowed
            && let Some(q) = self
                .quotas()
                .enumerate()
                .filter(|(_, q)| !q.allowed)
                .max_by_key(|(_, q)| q.retry_after.unwrap_or(Duration::MAX))
        {
            return Some(q);
        }
        self.quotas()
            .enumerate()
            .min_by(|(_, a), (_, b)| a.remaining.cmp(&b.remaining).then(b.reset.cmp(&a.reset)))
    }

    /// Units left under the most restrictive quota (`None` when nothing was counted).
    pub fn remaining(&self) -> Option<u64> {
        self.quotas().map(|q| q.remaining).min()
    }
}

/// Decisions are equal when they say the same: admitted, source and every quota's figures
/// (however the figures are kept).
impl PartialEq for Decision {
    fn eq(&self, other: &Self) -> bool {
        self.allowed == other.allowed
            && self.source == other.source
            && self.quotas().eq(other.quotas())
    }
}

impl Eq for Decision {}

impl fmt::Debug for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decision")
            .field("allowed", &self.allowed)
            .field("source", &self.source)
            .field("retry_after", &self.retry_after())
            .field("quotas", &self.quotas().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(retry: Option<u64>) -> Verdict {
        Verdict {
            allowed: false,
            remaining: 0,
            reset: 5,
            retry_after: retry,
        }
    }

    #[test]
    fn the_longest_wait_of_the_denying_quotas_is_the_decision_s() {
        let admitted = Verdict {
            allowed: true,
            remaining: 3,
            reset: 1,
            retry_after: None,
        };
        let d = Decision::from_verdicts(
            false,
            &[admitted, denied(Some(7)), denied(Some(3))],
            DecisionSource::Store,
        );
        assert_eq!(d.retry_after(), Some(Duration::from_micros(7)));
        assert_eq!(d.most_restrictive().map(|(i, _)| i), Some(1));
        let never = Decision::from_verdicts(
            false,
            &[denied(Some(7)), denied(None)],
            DecisionSource::Store,
        );
        assert_eq!(never.retry_after(), None);
        assert_eq!(Decision::uncounted(false).retry_after(), None);
    }

    #[test]
    fn a_raw_quotient_reads_as_its_units() {
        let raw = RawVerdict {
            left: 2_999,
            unit: 1_000,
            reset: 10,
            retry: RawVerdict::NEVER,
            allowed: true,
        };
        let lazy = Decision::one(raw, DecisionSource::Store);
        let plain = Decision::from_verdicts(true, &[raw.verdict()], DecisionSource::Store);
        assert_eq!(lazy.remaining(), Some(2));
        assert_eq!(lazy, plain);
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_decision_is_small() {
        assert!(size_of::<Decision>() <= 48, "{}", size_of::<Decision>());
    }
}
