//! The answer to one request: [`Decision`].

use std::time::Duration;

use crate::algorithm::Verdict;
use crate::quota::Policy;

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
}

/// What one quota of the policy said. Plain numbers (`Copy`); the quota's name is the
/// policy's ([`Decision::named`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuotaDecision {
    /// The quota's limit per period.
    pub limit: u64,
    /// The quota's period.
    pub period: Duration,
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

impl QuotaDecision {
    #[inline]
    fn of(q: &crate::quota::NamedQuota, v: &Verdict) -> Self {
        Self {
            limit: q.quota.limit(),
            period: q.quota.period(),
            remaining: v.remaining,
            reset: Duration::from_micros(v.reset),
            allowed: v.allowed,
            retry_after: v.retry_after.map(Duration::from_micros),
        }
    }
}

/// Every quota's [`QuotaDecision`], in policy order; a slice (`decision.quotas[0]`,
/// `.iter()`, `.len()`). A single quota is held inline, so the decision of a one-quota
/// policy allocates nothing; several take one allocation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Quotas(Repr);

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Repr {
    #[default]
    None,
    One(QuotaDecision),
    Many(Box<[QuotaDecision]>),
}

impl std::ops::Deref for Quotas {
    type Target = [QuotaDecision];
    fn deref(&self) -> &[QuotaDecision] {
        match &self.0 {
            Repr::None => &[],
            Repr::One(q) => std::slice::from_ref(q),
            Repr::Many(q) => q,
        }
    }
}

/// The answer to one request: admitted or not, and what every quota of the policy says.
///
/// Cost: for a policy of one quota, building a decision allocates nothing (its figures are
/// inline and the policy is one reference count); several quotas take one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// The policy that decided (names the policy and its quotas for headers).
    pub policy: Policy,
    /// One entry per quota, in policy order (empty for fail-open and fail-closed decisions,
    /// which counted nothing).
    pub quotas: Quotas,
    /// When denied: how long to wait before a request of the same cost can pass every quota
    /// that denied it; `None` when admitted or when it can never pass (cost above a
    /// quota's capacity, or a fail-closed decision).
    pub retry_after: Option<Duration>,
    /// Whether the decision was made without the primary store (fallback memory, fail-open
    /// or fail-closed); see [`source`](Self::source).
    pub from_fallback: bool,
    /// Who made the decision.
    pub source: DecisionSource,
}

impl Decision {
    /// Build a decision from the per-quota verdicts of the algorithms.
    pub fn from_verdicts(
        policy: &Policy,
        allowed: bool,
        verdicts: &[Verdict],
        source: DecisionSource,
    ) -> Self {
        let quota = |(q, v): (&crate::quota::NamedQuota, &Verdict)| QuotaDecision::of(q, v);
        let mut pairs = policy.quotas().iter().zip(verdicts);
        let quotas = match (pairs.len(), pairs.next()) {
            (_, None) => Repr::None,
            (1, Some(only)) => Repr::One(quota(only)),
            (_, Some(first)) => {
                Repr::Many(std::iter::once(first).chain(pairs).map(quota).collect())
            }
        };
        let quotas = Quotas(quotas);
        let retry_after = if allowed {
            None
        } else {
            let mut max = Some(Duration::ZERO);
            for q in quotas.iter().filter(|q| !q.allowed) {
                max = match (max, q.retry_after) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
            max
        };
        Self {
            allowed,
            policy: policy.clone(),
            quotas,
            retry_after,
            from_fallback: matches!(
                source,
                DecisionSource::Fallback | DecisionSource::FailOpen | DecisionSource::FailClosed
            ),
            source,
        }
    }

    /// The decision of a single-quota policy from its quota's verdict: what
    /// [`from_verdicts`](Self::from_verdicts) builds from `&[*verdict]`, without walking a
    /// list (the memory store's hot path).
    #[inline]
    pub(crate) fn from_verdict(policy: &Policy, verdict: &Verdict, source: DecisionSource) -> Self {
        let Some(q) = policy.quotas().first() else {
            return Self::from_verdicts(policy, verdict.allowed, &[], source);
        };
        debug_assert_eq!(policy.quotas().len(), 1, "a single-quota policy");
        let quota = QuotaDecision::of(q, verdict);
        // One quota: the decision's wait is its wait (`None` when it never passes).
        let retry_after = if verdict.allowed {
            None
        } else {
            quota.retry_after
        };
        Self {
            allowed: verdict.allowed,
            policy: policy.clone(),
            quotas: Quotas(Repr::One(quota)),
            retry_after,
            from_fallback: matches!(
                source,
                DecisionSource::Fallback | DecisionSource::FailOpen | DecisionSource::FailClosed
            ),
            source,
        }
    }

    /// A decision that counted nothing: admitted (fail-open) or denied (fail-closed).
    pub fn uncounted(policy: &Policy, allowed: bool) -> Self {
        Self {
            allowed,
            policy: policy.clone(),
            quotas: Quotas::default(),
            retry_after: None,
            from_fallback: true,
            source: if allowed {
                DecisionSource::FailOpen
            } else {
                DecisionSource::FailClosed
            },
        }
    }

    /// Each quota's name (from the policy) with what it said, in policy order.
    pub fn named(&self) -> impl ExactSizeIterator<Item = (&str, &QuotaDecision)> {
        self.policy
            .quotas()
            .iter()
            .map(|q| &*q.name)
            .zip(self.quotas.iter())
    }

    /// The quota closest to denying: the one that denied (longest wait first), else the one
    /// with the fewest units left. `None` when no quota was counted.
    pub fn most_restrictive(&self) -> Option<&QuotaDecision> {
        if !self.allowed
            && let Some(q) = self
                .quotas
                .iter()
                .filter(|q| !q.allowed)
                .max_by_key(|q| q.retry_after.unwrap_or(Duration::MAX))
        {
            return Some(q);
        }
        self.quotas
            .iter()
            .min_by(|a, b| a.remaining.cmp(&b.remaining).then(b.reset.cmp(&a.reset)))
    }

    /// Units left under the most restrictive quota (`None` when nothing was counted).
    pub fn remaining(&self) -> Option<u64> {
        self.quotas.iter().map(|q| q.remaining).min()
    }
}
