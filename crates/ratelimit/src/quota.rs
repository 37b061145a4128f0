//! What is enforced: [`Quota`], [`Algorithm`] and [`Policy`]. Plain values, no I/O.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest period a quota may have (366 days).
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);
/// The most quotas one policy may check together.
pub const MAX_QUOTAS: usize = 16;
/// The longest time a bucket may take to fill (`burst × period / limit`), 2^50 µs.
const MAX_SPAN_MICROS: u64 = 1 << 50;

/// The largest limit or burst a quota may have.
pub const MAX_LIMIT: u64 = 1 << 40;

/// `limit` requests (or units of cost) per `period`, with an optional `burst` for the
/// bucket algorithms.
///
/// The constructors read the way they are spoken: [`Quota::per_minute(60)`](Quota::per_minute)
/// is sixty per minute, never "one every sixty minutes".
///
/// ```
/// use palisade_ratelimit::Quota;
/// use std::time::Duration;
///
/// let q = Quota::per_minute(60);
/// assert_eq!((q.limit(), q.period()), (60, Duration::from_secs(60)));
/// assert_eq!(Quota::per_hour(1000), Quota::new(1000, Duration::from_secs(3600)));
/// // A bucket that refills 10 per second but holds up to 50.
/// assert_eq!(Quota::per_second(10).with_burst(50).burst(), 50);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    limit: u64,
    #[serde(with = "humantime_serde")]
    period: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    burst: Option<u64>,
}

impl Quota {
    /// `limit` per `period`. Checked when the quota is put in a [`Policy`].
    pub const fn new(limit: u64, period: Duration) -> Self {
        Self {
            limit,
            period,
            burst: None,
        }
    }

    /// `n` per second.
    pub const fn per_second(n: u64) -> Self {
        Self::new(n, Duration::from_secs(1))
    }

    /// `n` per minute.
    pub const fn per_minute(n: u64) -> Self {
        Self::new(n, Duration::from_secs(60))
    }

    /// `n` per hour.
    pub const fn per_hour(n: u64) -> Self {
        Self::new(n, Duration::from_secs(3600))
    }

    /// `n` per day (24 hours).
    pub const fn per_day(n: u64) -> Self {
        Self::new(n, Duration::from_secs(86_400))
    }

    /// The capacity of the bucket for [`Algorithm::TokenBucket`] and [`Algorithm::Gcra`]:
    /// how many requests may arrive at once after a quiet spell (default: `limit`). The
    /// window algorithms ignore it.
    #[must_use]
    pub const fn with_burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Requests (cost units) allowed per period.
    pub const fn limit(&self) -> u64 {
        self.limit
    }

    /// The period.
    pub const fn period(&self) -> Duration {
        self.period
    }

    /// The bucket capacity (`limit` unless set with [`with_burst`](Self::with_burst)).
    pub const fn burst(&self) -> u64 {
        match self.burst {
            Some(b) => b,
            None => self.limit,
        }
    }

    pub(crate) fn validate(&self, name: &str) -> Result<()> {
        let bad = |reason: String| Error::InvalidQuota {
            name: name.to_owned(),
            reason,
        };
        if self.period < Duration::from_millis(1) {
            return Err(bad(format!(
                "period {:?} is shorter than 1 ms",
                self.period
            )));
        }
        if self.period > MAX_PERIOD {
            return Err(bad(format!(
                "period {:?} is longer than 366 days",
                self.period
            )));
        }
        if self.limit > MAX_LIMIT || self.burst() > MAX_LIMIT {
            return Err(bad(format!("limit and burst must be at most {MAX_LIMIT}")));
        }
        if self.limit > 0 && self.limit > self.period_micros() {
            return Err(bad(format!(
                "{} per {:?} is more than one per microsecond",
                self.limit, self.period
            )));
        }
        if self.limit > 0 && self.burst() == 0 {
            return Err(bad(String::from("burst must be at least 1")));
        }
        if self.burst().saturating_mul(self.interval_micros()) > MAX_SPAN_MICROS {
            return Err(bad(format!(
                "burst {} at one per {} µs takes more than 2^50 µs (35 years) to fill",
                self.burst(),
                self.interval_micros()
            )));
        }
        Ok(())
    }

    /// The period in microseconds (at least 1).
    pub(crate) fn period_micros(&self) -> u64 {
        u64::try_from(self.period.as_micros())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The emission interval of the bucket algorithms: `period / limit`, rounded **up** to a
    /// whole microsecond, so rounding can only make the limit stricter (by at most 1 µs per
    /// token). A zero limit yields the whole period.
    pub(crate) fn interval_micros(&self) -> u64 {
        let p = self.period_micros();
        if self.limit == 0 {
            p
        } else {
            p.div_ceil(self.limit).max(1)
        }
    }
}

/// A quota's figures in the units the arithmetic uses, worked out once when its policy is
/// built, so that a decision does no `Duration` conversion and no division it can avoid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Params {
    pub(crate) limit: u64,
    pub(crate) burst: u64,
    /// Period in microseconds (at least 1).
    pub(crate) period: u64,
    /// Emission interval of the bucket algorithms in microseconds (at least 1).
    pub(crate) interval: u64,
}

impl Params {
    /// How long an idle key's state of `algorithm` stays meaningful, in microseconds: a
    /// bucket refills in `burst × interval`, a window's count lasts its period, a sliding
    /// counter's two.
    pub(crate) fn horizon(&self, algorithm: Algorithm) -> u64 {
        match algorithm {
            Algorithm::TokenBucket | Algorithm::Gcra => self.burst.saturating_mul(self.interval),
            Algorithm::FixedWindow | Algorithm::SlidingWindowLog => self.period,
            Algorithm::SlidingWindowCounter => self.period.saturating_mul(2),
        }
    }

    pub(crate) fn new(q: &Quota) -> Self {
        Self {
            limit: q.limit(),
            burst: q.burst(),
            period: q.period_micros(),
            interval: q.interval_micros(),
        }
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} per {:?}", self.limit, self.period)?;
        if let Some(b) = self.burst {
            write!(f, " (burst {b})")?;
        }
        Ok(())
    }
}

/// How a quota is counted. Every backend runs the same arithmetic for each.
///
/// | algorithm | state per key and quota | guarantee in any span of length `period` |
/// |---|---|---|
/// | [`TokenBucket`](Self::TokenBucket) | tokens + timestamp | at most `burst + limit` (steady rate `limit/period`) |
/// | [`Gcra`](Self::Gcra) | one timestamp | same as the token bucket |
/// | [`FixedWindow`](Self::FixedWindow) | window + count | `limit` per aligned window, up to `2 × limit` across a boundary |
/// | [`SlidingWindowLog`](Self::SlidingWindowLog) | one entry per admitted request (≤ `limit`) | exactly at most `limit` |
/// | [`SlidingWindowCounter`](Self::SlidingWindowCounter) | two counters | `limit` per aligned window; an estimate in between (see the guide) |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Algorithm {
    /// Tokens refill continuously at `limit/period`, up to `burst`; a request takes `cost`.
    TokenBucket,
    /// Generic cell rate algorithm: the token bucket's behaviour kept as one "theoretical
    /// arrival time" per key (the algorithm of `governor`).
    #[default]
    Gcra,
    /// A counter per aligned window (`floor(now / period)`); cheapest, bursty at boundaries.
    FixedWindow,
    /// A log of admitted requests over the last `period`; exact, memory grows with `limit`.
    SlidingWindowLog,
    /// The current window's count plus the previous window's count weighted by how much of
    /// it still overlaps the sliding window; cheap and smooth, approximate.
    SlidingWindowCounter,
}

impl Algorithm {
    /// Every algorithm, in declaration order.
    pub const ALL: [Self; 5] = [
        Self::TokenBucket,
        Self::Gcra,
        Self::FixedWindow,
        Self::SlidingWindowLog,
        Self::SlidingWindowCounter,
    ];

    /// A short stable name (`token_bucket`, `gcra`, `fixed_window`, `sliding_window_log`,
    /// `sliding_window_counter`), used in metrics and Redis keys.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::TokenBucket => "token_bucket",
            Self::Gcra => "gcra",
            Self::FixedWindow => "fixed_window",
            Self::SlidingWindowLog => "sliding_window_log",
            Self::SlidingWindowCounter => "sliding_window_counter",
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    /// Whether the state counts numbered windows of the period (so that it means nothing
    /// under another period).
    pub(crate) const fn counts_windows(&self) -> bool {
        matches!(self, Self::FixedWindow | Self::SlidingWindowCounter)
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) const fn code(&self) -> &'static str {
        match self {
            Self::TokenBucket => "tb",
            Self::Gcra => "gcra",
            Self::FixedWindow => "fw",
            Self::SlidingWindowLog => "swl",
            Self::SlidingWindowCounter => "swc",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named quota inside a [`Policy`]. In configuration it is one table:
/// `{ name = "per_minute", limit = 60, period = "1m", burst = 10 }` (unknown fields are
/// refused, so a misspelt `burts` is an error, not a silently default burst).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "NamedQuotaConfig", into = "NamedQuotaConfig")]
#[non_exhaustive]
pub struct NamedQuota {
    /// The quota's name (`per_minute`), unique within its policy; it names the quota in
    /// decisions, headers and storage keys.
    pub name: Arc<str>,
    /// The quota.
    pub quota: Quota,
}

/// [`NamedQuota`]'s configuration form: one flat table (serde's `flatten` cannot refuse
/// unknown fields).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedQuotaConfig {
    name: Arc<str>,
    limit: u64,
    #[serde(with = "humantime_serde")]
    period: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    burst: Option<u64>,
}

impl From<NamedQuotaConfig> for NamedQuota {
    fn from(c: NamedQuotaConfig) -> Self {
        let quota = Quota::new(c.limit, c.period);
        Self {
            name: c.name,
            quota: c.burst.map_or(quota, |b| quota.with_burst(b)),
        }
    }
}

impl From<NamedQuota> for NamedQuotaConfig {
    fn from(q: NamedQuota) -> Self {
        Self {
            name: q.name,
            limit: q.quota.limit,
            period: q.quota.period,
            burst: q.quota.burst,
        }
    }
}

/// One or more named quotas checked together for the same key, all counted with one
/// [`Algorithm`]. A request is admitted only when **every** quota admits it, and a denial by
/// any quota consumes from none.
///
/// The policy's name scopes the stored counters: two policies with different names never
/// share state for the same key; the same policy used on several routes shares one budget.
/// Cloning is cheap (one reference count).
///
/// ```
/// use palisade_ratelimit::{Algorithm, Policy, Quota};
///
/// let policy = Policy::builder("api")
///     .algorithm(Algorithm::SlidingWindowCounter)
///     .quota("per_minute", Quota::per_minute(60))
///     .quota("per_hour", Quota::per_hour(1_000))
///     .quota("per_day", Quota::per_day(10_000))
///     .build()?;
/// assert_eq!(policy.quotas().len(), 3);
/// # Ok::<(), palisade_ratelimit::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    inner: Arc<PolicyInner>,
}

#[derive(Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyInner {
    name: Arc<str>,
    #[serde(default)]
    algorithm: Algorithm,
    quotas: Vec<NamedQuota>,
    /// Derived from `quotas` by the builder (the only way a policy is made), so equality and
    /// hashing are unchanged by them.
    #[serde(skip)]
    params: Vec<Params>,
    #[serde(skip)]
    idle_micros: u64,
    #[serde(skip)]
    name_hash: u64,
}

impl Policy {
    /// Start a policy called `name`.
    pub fn builder(name: impl Into<Arc<str>>) -> PolicyBuilder {
        PolicyBuilder {
            name: name.into(),
            algorithm: Algorithm::default(),
            quotas: Vec::new(),
        }
    }

    /// A policy of one quota, named after the policy.
    ///
    /// # Errors
    /// [`Error::InvalidQuota`] when the quota cannot be enforced.
    pub fn single(name: impl Into<Arc<str>>, algorithm: Algorithm, quota: Quota) -> Result<Self> {
        let name = name.into();
        Self::builder(Arc::clone(&name))
            .algorithm(algorithm)
            .quota(name, quota)
            .build()
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub(crate) fn name_arc(&self) -> &Arc<str> {
        &self.inner.name
    }

    /// A fixed hash of the name, computed once, so stores can find a policy's keys without
    /// hashing the name on every call. Not seeded: names are chosen by the operator, not
    /// by clients.
    pub(crate) fn name_hash(&self) -> u64 {
        self.inner.name_hash
    }

    /// The same policy object (not merely an equal one): a pointer comparison.
    pub(crate) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Whether a state `other` kept can be read under this policy as it is: the same
    /// algorithm and number of quotas and, for the window algorithms (whose states count
    /// windows in units of the period), the same periods. A store keeps the states of
    /// policies that differ here apart.
    pub(crate) fn reads_states_of(&self, other: &Self) -> bool {
        self.algorithm() == other.algorithm()
            && self.quotas().len() == other.quotas().len()
            && (!self.algorithm().counts_windows()
                || self
                    .quotas()
                    .iter()
                    .zip(other.quotas())
                    .all(|(a, b)| a.quota.period_micros() == b.quota.period_micros()))
    }

    /// Each quota's figures, in policy order.
    pub(crate) fn params(&self) -> &[Params] {
        &self.inner.params
    }

    /// [`idle_horizon`](Self::idle_horizon) in microseconds.
    pub(crate) fn idle_micros(&self) -> u64 {
        self.inner.idle_micros
    }

    /// The algorithm every quota of this policy is counted with.
    pub fn algorithm(&self) -> Algorithm {
        self.inner.algorithm
    }

    /// The quotas, in the order they were added.
    pub fn quotas(&self) -> &[NamedQuota] {
        &self.inner.quotas
    }

    /// How long state of an idle key stays meaningful: after this much idle time the
    /// stored state is equivalent to no state, so backends may drop it.
    pub fn idle_horizon(&self) -> Duration {
        Duration::from_micros(self.idle_micros())
    }
}

impl Serialize for Policy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.inner.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Policy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let inner = PolicyInner::deserialize(d)?;
        let mut b = Policy::builder(inner.name).algorithm(inner.algorithm);
        for q in inner.quotas {
            b = b.quota(q.name, q.quota);
        }
        b.build().map_err(serde::de::Error::custom)
    }
}

/// Builds a [`Policy`]; see [`Policy::builder`].
#[derive(Debug, Clone)]
pub struct PolicyBuilder {
    name: Arc<str>,
    algorithm: Algorithm,
    quotas: Vec<NamedQuota>,
}

impl PolicyBuilder {
    /// The algorithm for every quota (default [`Algorithm::Gcra`]).
    #[must_use]
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Add a named quota.
    #[must_use]
    pub fn quota(mut self, name: impl Into<Arc<str>>, quota: Quota) -> Self {
        self.quotas.push(NamedQuota {
            name: name.into(),
            quota,
        });
        self
    }

    /// Check and build.
    ///
    /// # Errors
    /// [`Error::InvalidPolicy`] for no quota, more than [`MAX_QUOTAS`] or duplicate names;
    /// [`Error::InvalidQuota`] for a quota that cannot be enforced (period under 1 ms or over
    /// 366 days, limit over [`MAX_LIMIT`], more than one per microsecond, zero burst).
    pub fn build(self) -> Result<Policy> {
        let bad = |reason: &str| Error::InvalidPolicy {
            policy: self.name.to_string(),
            reason: reason.to_owned(),
        };
        if self.quotas.is_empty() {
            return Err(bad("a policy needs at least one quota"));
        }
        if self.quotas.len() > MAX_QUOTAS {
            return Err(bad("too many quotas (at most 16)"));
        }
        for (i, q) in self.quotas.iter().enumerate() {
            q.quota.validate(&q.name)?;
            if self.quotas[..i].iter().any(|p| p.name == q.name) {
                return Err(bad(&format!("quota name `{}` appears twice", q.name)));
            }
        }
        let params = self.quotas.iter().map(|q| Params::new(&q.quota)).collect();
        let idle_micros = self
            .quotas
            .iter()
            .map(|q| Params::new(&q.quota).horizon(self.algorithm))
            .max()
            .unwrap_or(0);
        let name_hash = foldhash::fast::FixedState::with_seed(0).hash_one(&*self.name);
        Ok(Policy {
            inner: Arc::new(PolicyInner {
                name_hash,
                name: self.name,
                algorithm: self.algorithm,
                quotas: self.quotas,
                params,
                idle_micros,
            }),
        })
    }
}
