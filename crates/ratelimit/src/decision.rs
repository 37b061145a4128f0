//! The answer to one request: [`Decision`].

use std::sync::Arc;
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
}

impl DecisionSource {
    /// A stable lowercase name for metrics labels.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::Fallback => "fallback",
            Self::FailOpen => "fail_open",
            Self::FailClosed => "fail_closed",
        }
    }
}

/// What one quota of the policy said.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuotaDecision {
    /// The quota's name in its policy.
    pub name: Arc<str>,
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

/// The answer to one request: admitted or not, and what every quota of the policy says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// The policy that decided.
    pub policy: Arc<str>,
    /// One entry per quota, in policy order (empty for fail-open and fail-closed decisions,
    /// which counted nothing).
    pub quotas: Vec<QuotaDecision>,
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
        let quotas: Vec<QuotaDecision> = policy
            .quotas()
            .iter()
            .zip(verdicts)
            .map(|(q, v)| QuotaDecision {
                name: Arc::clone(&q.name),
                limit: q.quota.limit(),
                period: q.quota.period(),
                remaining: v.remaining,
                reset: Duration::from_micros(v.reset),
                allowed: v.allowed,
                retry_after: v.retry_after.map(Duration::from_micros),
            })
            .collect();
        let retry_after = if allowed {
            None
        } else {
            let denying = quotas.iter().filter(|q| !q.allowed);
            let mut max = Some(Duration::ZERO);
            for q in denying {
                max = match (max, q.retry_after) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
            max
        };
        Self {
            allowed,
            policy: Arc::clone(policy.name_arc()),
            quotas,
            retry_after,
            from_fallback: !matches!(source, DecisionSource::Store),
            source,
        }
    }

    /// A decision that counted nothing: admitted (fail-open) or denied (fail-closed).
    pub fn uncounted(policy: &Policy, allowed: bool) -> Self {
        Self {
            allowed,
            policy: Arc::clone(policy.name_arc()),
            quotas: Vec::new(),
            retry_after: None,
            from_fallback: true,
            source: if allowed {
                DecisionSource::FailOpen
            } else {
                DecisionSource::FailClosed
            },
        }
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
