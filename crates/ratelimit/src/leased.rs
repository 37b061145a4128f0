//! [`LeasedStore`]: fleet-wide limits decided at near-memory speed, from allowances leased
//! from a shared store.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hashbrown::HashTable;
use parking_lot::Mutex;
use serde::{Deserialize, Deserializer, Serialize};
use tracing::Instrument;

use crate::algorithm::Verdict;
use crate::clock::{Clock, SystemClock, TimeSource};
use crate::decision::{Decision, DecisionSource};
use crate::error::{Error, Result};
use crate::key::{KeyBuf, Probe, StoredKey};
use crate::lease::{
    Book, Call, Dropped, Lease, LeaseCall, LeaseRequest, LeaseReturn, Leases, Plan, ReleaseCall,
    Reply, bucket_lifetime, micros,
};
use crate::quota::{Algorithm, MAX_QUOTAS, Policy};
use crate::store::Store;

mod batch;

use batch::{Batcher, Done, Job, LeaseJob, ReleaseJob, Reply as Answer, Waiter};

const MAX_SHARDS: usize = 64;

/// How a [`LeasedStore`] leases: the over-admission it may trade for speed, how long and how
/// large a lease may be. A serde value (`max_lease = "1s"`, `max_overshoot = "1%"` or
/// `0.01`); unknown fields are refused.
///
/// ```
/// use palisade_ratelimit::LeaseConfig;
/// use std::time::Duration;
///
/// let config = LeaseConfig::default()
///     .max_overshoot(0.01)
///     .max_lease(Duration::from_millis(500));
/// assert_eq!(config.max_overshoot, 0.01);
/// assert_eq!(LeaseConfig::strict().max_overshoot, 0.0);
/// let parsed: LeaseConfig = serde_json::from_str(r#"{"max_overshoot": "2%", "max_lease": "250ms"}"#)?;
/// assert_eq!((parsed.max_overshoot, parsed.max_lease), (0.02, Duration::from_millis(250)));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct LeaseConfig {
    /// Over-admission the bucket algorithms (GCRA, token bucket) may trade for speed, as a
    /// fraction of each quota's limit (default `0.01`, 1 %): a bucket lease lives at most
    /// `⌊max_overshoot × limit⌋` emission intervals, and over any span of time the fleet
    /// admits at most that many units more than the exact algorithm would. `0` is strict:
    /// buckets are then decided by the shared store, one call per request. The window
    /// algorithms never over-admit and are leased in either case; the sliding-window log
    /// is never leased.
    #[serde(deserialize_with = "fraction")]
    pub max_overshoot: f64,
    /// The longest a lease lives (default 1 s), and the grace a ledger gives a live
    /// instance to give back what it did not spend before it reclaims it (see
    /// [`reclaim`](Self::reclaim)). An instance's allowance is sized from its own demand
    /// over one lease.
    #[serde(with = "humantime_serde")]
    pub max_lease: Duration,
    /// The longest a lease lives for a key this instance decides sparsely (default 10 s):
    /// one whose demand here would not fill 256 units in `max_lease` (decided up to a few
    /// hundred times a second, now and then, or for the first time) is leased long enough
    /// for 256 units of it, up to this long (for its demand over that time, at least 4
    /// units; up to a quarter shorter at random, so that keys that started together do not
    /// renew together), so that its lease lasts until its next requests and one lease call
    /// serves many of them.
    /// The bucket algorithms still cap it by `max_overshoot` (the bound is derived from the
    /// longer of the two); the window algorithms end every lease with its window.
    #[serde(with = "humantime_serde")]
    pub max_sparse_lease: Duration,
    /// A lease takes at most this fraction of what each quota has left (default `0.1`), so
    /// that slices shrink with the remaining quota and its last units (fewer than
    /// `1 / max_share`) are decided by the shared store, one request at a time.
    #[serde(deserialize_with = "fraction")]
    pub max_share: f64,
    /// The most keys this instance holds leases for (default 100,000); requests for further
    /// keys are decided by the shared store until idle keys are forgotten.
    pub max_keys: u64,
    /// Lease again in the background before the allowance runs out or its lease ends
    /// (default `true`), so that a request never waits on the store while allowance is left.
    /// `false` leases on the request that finds the allowance short (deterministic tests).
    pub prefetch: bool,
    /// Have the shared store reclaim what an instance killed with a lease out did not
    /// spend, once the lease's lifetime plus `max_lease` has passed (default `true`; `false`
    /// in [`strict`](Self::strict)). A store that keeps a ledger of the leases outstanding
    /// (Redis) records, at every lease call, what the instance holds; a live instance gives
    /// its leases back before that TTL, a dead one cannot, and its record is given back
    /// for it (window algorithms: to the windows still current; buckets: less what they
    /// refilled since the grant). What the dead instance admitted after its last call for
    /// the key was not recorded and is given back too: that, at most about one lease, is
    /// what a crash can over-admit. `false`: a crash never over-admits, and its allowance
    /// stays counted as spent until its window ends (buckets: for good).
    pub reclaim: bool,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            max_overshoot: 0.01,
            max_lease: Duration::from_secs(1),
            max_sparse_lease: Duration::from_secs(10),
            max_share: 0.1,
            max_keys: 100_000,
            prefetch: true,
            reclaim: true,
        }
    }
}

/// A number (`0.01`) or a percentage (`"1%"`).
fn fraction<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Number(f64),
        Text(String),
    }
    match Form::deserialize(d)? {
        Form::Number(v) => Ok(v),
        Form::Text(t) => t
            .trim()
            .strip_suffix('%')
            .and_then(|p| p.trim().parse::<f64>().ok())
            .map(|p| p / 100.0)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("expected a fraction or a percentage, got {t:?}"))
            }),
    }
}

impl LeaseConfig {
    /// No over-admission at all: the bucket algorithms are decided by the shared store, the
    /// window algorithms are leased (they never over-admit), and nothing is reclaimed from
    /// an instance that died (a crash strands its allowance until the window ends).
    pub fn strict() -> Self {
        Self {
            max_overshoot: 0.0,
            reclaim: false,
            ..Self::default()
        }
    }

    /// See [`max_overshoot`](Self::max_overshoot) (a fraction: `0.01` is 1 %).
    #[must_use]
    pub fn max_overshoot(mut self, fraction: f64) -> Self {
        self.max_overshoot = fraction;
        self
    }

    /// See [`max_lease`](Self::max_lease).
    #[must_use]
    pub fn max_lease(mut self, lifetime: Duration) -> Self {
        self.max_lease = lifetime;
        self
    }

    /// See [`max_sparse_lease`](Self::max_sparse_lease).
    #[must_use]
    pub fn max_sparse_lease(mut self, lifetime: Duration) -> Self {
        self.max_sparse_lease = lifetime;
        self
    }

    /// See [`max_share`](Self::max_share).
    #[must_use]
    pub fn max_share(mut self, fraction: f64) -> Self {
        self.max_share = fraction;
        self
    }

    /// See [`max_keys`](Self::max_keys).
    #[must_use]
    pub fn max_keys(mut self, keys: u64) -> Self {
        self.max_keys = keys;
        self
    }

    /// See [`prefetch`](Self::prefetch).
    #[must_use]
    pub fn prefetch(mut self, prefetch: bool) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// See [`reclaim`](Self::reclaim).
    #[must_use]
    pub fn reclaim(mut self, reclaim: bool) -> Self {
        self.reclaim = reclaim;
        self
    }

    /// Check the values.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a `max_overshoot` outside `[0, 0.5]`, a `max_share`
    /// outside `(0, 1]` (both fractions: `0.01` is 1 %), a `max_lease` over an hour or no
    /// key at all.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if !(0.0..=0.5).contains(&self.max_overshoot) {
            return bad(format!(
                "max_overshoot {} is not a fraction of the limit between 0 and 0.5 (0.01 is 1 %)",
                self.max_overshoot
            ));
        }
        if !(self.max_share > 0.0 && self.max_share <= 1.0) {
            return bad(format!(
                "max_share {} is not a fraction between 0 (excluded) and 1 (0.1 is 10 %)",
                self.max_share
            ));
        }
        if self.max_lease > Duration::from_secs(3600) {
            return bad(format!(
                "max_lease {:?} is longer than an hour",
                self.max_lease
            ));
        }
        if self.max_sparse_lease > Duration::from_secs(3600) {
            return bad(format!(
                "max_sparse_lease {:?} is longer than an hour",
                self.max_sparse_lease
            ));
        }
        if self.max_keys == 0 {
            return bad(String::from("max_keys must be at least 1"));
        }
        Ok(())
    }

    /// The lifetime of a lease on `policy` for a key decided densely (a sparse key's lasts
    /// up to [`max_sparse_lease`](Self::max_sparse_lease), within the same tolerance), or
    /// `None` when the policy is not leased (the sliding-window log; a bucket policy some
    /// quota of which tolerates less than one unit of over-admission; a zero `max_lease`).
    pub fn lease_lifetime(&self, policy: &Policy) -> Option<Duration> {
        self.lifetime_micros(policy).map(Duration::from_micros)
    }

    fn lifetime_micros(&self, policy: &Policy) -> Option<u64> {
        self.lifetime_within(policy, micros(self.max_lease))
    }

    /// The longest a lease on `policy` lives for a sparse key (≥ the lifetime).
    fn sparse_micros(&self, policy: &Policy) -> Option<u64> {
        self.lifetime_micros(policy)?;
        let longest = micros(self.max_lease).max(micros(self.max_sparse_lease));
        self.lifetime_within(policy, longest)
    }

    fn lifetime_within(&self, policy: &Policy, max_lease: u64) -> Option<u64> {
        let lifetime = match policy.algorithm() {
            Algorithm::FixedWindow | Algorithm::SlidingWindowCounter => max_lease,
            Algorithm::Gcra | Algorithm::TokenBucket => {
                bucket_lifetime(policy, self.max_overshoot, max_lease)
            }
            Algorithm::SlidingWindowLog => 0,
        };
        (lifetime > 0).then_some(lifetime)
    }

    /// The stated bound, per quota of `policy` (in policy order): over any span of time, the
    /// fleet admits at most this many units more than the exact algorithm would, whatever
    /// the number of instances. `⌈lifetime / interval⌉ ≤ ⌊max_overshoot × limit⌋` for the
    /// bucket algorithms (the lifetime of a sparse key's lease, the longer), `0` for the
    /// window algorithms, the log and policies not leased.
    pub fn overshoot_units(&self, policy: &Policy) -> Vec<u64> {
        let lifetime = self.sparse_micros(policy).unwrap_or(0);
        policy
            .params()
            .iter()
            .map(|q| match policy.algorithm() {
                Algorithm::Gcra | Algorithm::TokenBucket => lifetime.div_ceil(q.interval),
                _ => 0,
            })
            .collect()
    }

    fn share_permille(&self) -> u32 {
        (self.max_share * 1000.0).round().clamp(1.0, 1000.0) as u32
    }
}

/// A [`Store`] that decides most requests in memory from allowances it leases from another
/// store (a [`RedisStore`](crate::RedisStore) shared by a fleet), and the rest through it:
/// fleet-wide limits at near-memory speed, with a stated bound on over-admission.
///
/// * **Leases**: for each key it decides, an instance asks the shared store, in one atomic
///   call ([`Store::lease`]: one Lua script on Redis), for a slice of what remains, sized
///   from its own recent demand over one lease lifetime and at most
///   [`max_share`](LeaseConfig::max_share) of what each quota has left. The store counts the
///   slice at once, as if admitted; the instance then admits requests from it in memory
///   ([`DecisionSource::Lease`]), asks again in the background before it runs out or its
///   lease ends, and gives back what it did not spend when the lease ends. When little is
///   left, slices are empty and every request is decided by the shared store.
/// * **Bound**: every unit is counted before it is admitted, so the fleet never admits more
///   in total than the exact algorithm; the window algorithms (fixed window, sliding
///   counter) over-admit nothing over any span (a lease ends with its window); the bucket
///   algorithms (GCRA, token bucket) may admit a unit up to one lease lifetime after the
///   bucket gave it, which over any span is at most
///   [`overshoot_units`](LeaseConfig::overshoot_units) — `⌊max_overshoot × limit⌋` —
///   whatever the number of instances. [`LeaseConfig::strict`] makes that 0 by deciding
///   buckets in the shared store. The sliding-window log is decided there always. The
///   derivation is in the guide (`docs/ratelimit.md`).
/// * **Faults**: while the shared store is slow or down, requests are admitted from the
///   allowance held; once it is spent, they go to the store and the
///   [`RateLimiter`](crate::RateLimiter)'s [`FailureMode`](crate::FailureMode) decides
///   them. Leases are timed by the instance from when it asked (its clock's rate, never its
///   reading, matters; Redis decides with its own `TIME`), so clock skew between instances
///   does not matter. An instance killed with a lease out cannot give it back: the shared
///   store (Redis) keeps a ledger of what each instance holds, as the instance reported at
///   its last lease call for the key, and once the lease's TTL (its lifetime plus a grace
///   of [`max_lease`](LeaseConfig::max_lease) for live instances to give theirs back first)
///   has passed, the next call for the key gives that back for it
///   ([`reclaim`](LeaseConfig::reclaim)): window algorithms to the windows still current,
///   buckets less what they refilled since the grant. What the dead instance admitted
///   after its last call was not reported and comes back too: that (at most about one
///   lease, sized from its demand over one lifetime) is what a crash may over-admit. With
///   `reclaim` off ([`LeaseConfig::strict`]) a crash never over-admits, and its allowance
///   stays counted as spent until its window ends.
/// * **Memory**: at most [`max_keys`](LeaseConfig::max_keys) keys hold leases; a background
///   task (on the tokio runtime of the first call) gives back ended leases and forgets idle
///   keys.
///
/// ```no_run
/// use palisade_ratelimit::{FailureMode, LeasedStore, Policy, Quota, RateLimiter, RedisStore};
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:6379")
///     .create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
/// let limiter = RateLimiter::builder(LeasedStore::new(RedisStore::new(pool)))
///     .failure_mode(FailureMode::FailClosed)
///     .build();
/// let policy = Policy::single("api", Default::default(), Quota::per_minute(60_000))?;
/// let decision = limiter.acquire("tenant:7", &policy, 1).await; // mostly no round trip
/// # let _ = decision; Ok(()) }
/// ```
#[derive(Clone)]
pub struct LeasedStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LeasedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedStore")
            .field("inner", &self.shared.inner)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// Builds a [`LeasedStore`].
#[derive(Debug)]
pub struct LeasedStoreBuilder {
    inner: Arc<dyn Store>,
    config: LeaseConfig,
    clock: TimeSource,
}

impl LeasedStoreBuilder {
    /// How to lease (default [`LeaseConfig::default`]).
    #[must_use]
    pub fn config(mut self, config: LeaseConfig) -> Self {
        self.config = config;
        self
    }

    /// The clock leases are timed with (default [`SystemClock`]; only its rate matters).
    /// Tests pass the [`FakeClock`](crate::FakeClock) the inner store reads.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = TimeSource::of(clock);
        self
    }

    /// Check the configuration and build.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] from [`LeaseConfig::validate`].
    pub fn build(self) -> Result<LeasedStore> {
        self.config.validate()?;
        let max = usize::try_from(self.config.max_keys)
            .unwrap_or(usize::MAX)
            .max(1);
        let shards = max.min(MAX_SHARDS);
        Ok(LeasedStore {
            shared: Arc::new(Shared {
                batcher: Batcher::new(Arc::clone(&self.inner)),
                inner: self.inner,
                share_permille: self.config.share_permille(),
                config: self.config,
                clock: self.clock,
                shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
                per_shard: (max / shards).max(1),
                hasher: foldhash::fast::RandomState::default(),
                epoch: AtomicU64::new(1),
                rtt: AtomicU64::new(1_000),
                sweeping: AtomicBool::new(false),
                failing: AtomicBool::new(false),
                calls: Arc::new(AtomicU64::new(0)),
                owner: if self.config.reclaim { owner_id() } else { 0 },
            }),
        })
    }
}

#[derive(Debug)]
struct Shared {
    inner: Arc<dyn Store>,
    /// Every lease and give-back call goes through it: many keys' calls in one store call.
    batcher: Batcher,
    config: LeaseConfig,
    share_permille: u32,
    clock: TimeSource,
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: foldhash::fast::RandomState,
    /// Numbers books, so that an answer never lands in a book made after a reset.
    epoch: AtomicU64,
    /// Round trip of lease calls, µs (moving average).
    rtt: AtomicU64,
    sweeping: AtomicBool,
    failing: AtomicBool,
    /// Lease and release calls in flight.
    calls: Arc<AtomicU64>,
    /// This instance's name in the shared store's ledger (0: none, nothing reclaimed).
    owner: u64,
}

/// A random, nonzero ledger id: two instances (or two stores of one) never share one.
fn owner_id() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy source: the hasher's random state, the time and the process id.
        let mut h = foldhash::fast::RandomState::default().build_hasher();
        h.write_u64(SystemClock.now_micros());
        h.write_u32(std::process::id());
        bytes = h.finish().to_le_bytes();
    }
    u64::from_le_bytes(bytes).max(1)
}

/// One call in flight, counted in [`Shared::calls`] until dropped.
#[derive(Debug)]
struct InFlight(Arc<AtomicU64>);

impl InFlight {
    fn new(calls: &Arc<AtomicU64>) -> Self {
        calls.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(calls))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Default)]
struct Shard {
    table: HashTable<Entry>,
}

#[derive(Debug)]
struct Entry {
    hash: u64,
    key: KeyBuf,
    policy: Policy,
    /// The policy's lease lifetimes, dense and sparse (worked out once: every local decision
    /// needs them, see [`Shared::plan_for`]).
    lifetime: u64,
    sparse: u64,
    epoch: u64,
    book: Book,
}

impl Entry {
    #[inline]
    fn is(&self, key: Probe<'_>, policy: &Policy) -> bool {
        self.key.matches(key) && (self.policy.same(policy) || self.policy == *policy)
    }
}

/// Leases that ended, with units to give back.
type Ended = Leases;

/// What `acquire` does once the book has looked at a request.
enum Step {
    /// No book (every shard is full of busy keys): the shared store decides.
    Untracked,
    /// Decided by the book, maybe with a background lease call to send.
    Here(Decision, Option<(Call, u64)>),
    /// The shared store decides this call (of the book with this epoch).
    Remote(Call, u64),
}

impl LeasedStore {
    /// Lease from `inner` with [`LeaseConfig::default`] (1 % tolerance for buckets, leases of
    /// at most one second and 10 % of what remains).
    pub fn new(inner: impl Store + 'static) -> Self {
        Self::builder(inner)
            .build()
            .expect("the default configuration is valid")
    }

    /// A store with another configuration or clock.
    pub fn builder(inner: impl Store + 'static) -> LeasedStoreBuilder {
        LeasedStoreBuilder {
            inner: Arc::new(inner),
            config: LeaseConfig::default(),
            clock: TimeSource::System,
        }
    }

    /// The store leases are taken from.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.shared.inner
    }

    /// The configuration.
    pub fn config(&self) -> &LeaseConfig {
        &self.shared.config
    }

    /// Units this instance holds for `key` under `policy` and may admit without asking
    /// the shared store.
    pub fn allowance(&self, key: &str, policy: &Policy) -> u64 {
        let shared = &self.shared;
        let now = shared.clock.now();
        let (h, probe) = shared.locate(policy, key);
        let shard = shared.shards[shared.shard_of(h)].lock();
        shard
            .table
            .find(h, |e| e.is(probe, policy))
            .map_or(0, |e| e.book.allowance_at(now))
    }

    /// Resolves once no lease or release call of this store is in flight (background ones
    /// included), so that what [`allowance`](Self::allowance) says will not change but by
    /// new requests.
    pub async fn settled(&self) {
        while self.shared.calls.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Wait for the calls in flight, then give back every unspent unit this instance holds
    /// (window algorithms; bucket units are dropped) and wait for the shared store to take
    /// them: call it at shutdown, so a rolling deploy strands nothing. Leasing goes on
    /// afterwards as before.
    ///
    /// # Errors
    /// The first error of the shared store (the other units are still given back).
    pub async fn release_all(&self) -> Result<()> {
        self.settled().await;
        let mut all = Vec::new();
        for shard in &self.shared.shards {
            let mut shard = shard.lock();
            for e in &mut shard.table {
                let held = e.book.take_all();
                if !held.is_empty() {
                    all.push((Box::from(e.key.text()), e.policy.clone(), held));
                }
            }
        }
        self.shared.give_back(all).await
    }
}

impl Shared {
    /// The key as its book's table compares it (inline when short), and its hash.
    #[inline]
    fn locate<'k>(&self, policy: &Policy, key: &'k str) -> (u64, Probe<'k>) {
        let probe = Probe::new(key.as_bytes());
        let mut h = self.hasher.build_hasher();
        h.write_u64(policy.name_hash());
        KeyBuf::write(probe, &mut h);
        (h.finish(), probe)
    }

    #[inline]
    fn shard_of(&self, h: u64) -> usize {
        let mid = (h >> 24) & 0xffff_ffff;
        ((mid * self.shards.len() as u64) >> 32) as usize
    }

    fn plan(&self, policy: &Policy) -> Option<Plan> {
        let lifetime = self.config.lifetime_micros(policy)?;
        let sparse = self
            .config
            .sparse_micros(policy)
            .unwrap_or(lifetime)
            .max(lifetime);
        Some(self.plan_for(lifetime, sparse))
    }

    /// The plan of a policy whose leases live `lifetime` (dense) and `sparse` µs: the rest is
    /// the store's configuration.
    #[inline]
    fn plan_for(&self, lifetime: u64, sparse: u64) -> Plan {
        Plan {
            lifetime,
            share_permille: self.share_permille,
            max_denial: micros(self.config.max_lease),
            prefetch: self.config.prefetch,
            sparse,
            owner: self.owner,
            grace: micros(self.config.max_lease),
        }
    }

    fn lead(&self) -> u64 {
        self.rtt.load(Ordering::Relaxed).saturating_mul(2)
    }

    fn quiet(&self) -> u64 {
        (micros(self.config.max_lease) / 4).max(1_000)
    }

    /// Decide from the book alone, when it can: `None` sends the request to the store.
    fn try_here(self: &Arc<Self>, key: &str, policy: &Policy, cost: u64) -> Option<Decision> {
        let now = self.clock.now();
        let (h, probe) = self.locate(policy, key);
        let n = policy.params().len().min(MAX_QUOTAS);
        let mut out = [Verdict::NONE; MAX_QUOTAS];
        let mut ended = Ended::new();
        let (answer, refresh) = {
            let mut shard = self.shards[self.shard_of(h)].lock();
            let e = shard.table.find_mut(h, |e| e.is(probe, policy))?;
            let answer = e
                .book
                .decide_here(policy, now, cost, &mut out[..n], &mut ended);
            let refresh = match answer {
                Some(true) => {
                    let plan = self.plan_for(e.lifetime, e.sparse);
                    e.book
                        .refresh(&plan, now, self.lead())
                        .map(|call| (call, e.epoch, plan))
                }
                Some(false) => None,
                None => {
                    // The call `acquire` is about to send carries them.
                    e.book.keep(std::mem::take(&mut ended));
                    None
                }
            };
            (answer, refresh)
        };
        self.give_back_later(key, policy, ended);
        if let Some((call, epoch, plan)) = refresh {
            self.lease_in_background(key, policy, plan, call, epoch);
        }
        let allowed = answer?;
        Some(Decision::from_verdicts(
            allowed,
            &out[..n],
            DecisionSource::Lease,
        ))
    }

    async fn acquire(self: &Arc<Self>, key: &str, policy: &Policy, cost: u64) -> Result<Decision> {
        let Some(plan) = self.plan(policy) else {
            return self.inner.acquire(key, policy, cost).await;
        };
        let now = self.clock.now();
        let (h, probe) = self.locate(policy, key);
        let mut ended = Ended::new();
        let step = {
            let mut shard = self.shards[self.shard_of(h)].lock();
            let entry = match shard.table.find_mut(h, |e| e.is(probe, policy)) {
                Some(e) => Some(e),
                None => self.insert(&mut shard, h, probe, policy, plan, now),
            };
            match entry {
                None => Step::Untracked,
                Some(e) => {
                    let n = policy.params().len().min(MAX_QUOTAS);
                    let mut out = [Verdict::NONE; MAX_QUOTAS];
                    match e
                        .book
                        .decide_here(policy, now, cost, &mut out[..n], &mut ended)
                    {
                        Some(allowed) => {
                            let refresh = if allowed {
                                e.book
                                    .refresh(&plan, now, self.lead())
                                    .map(|call| (call, e.epoch))
                            } else {
                                None
                            };
                            let decision =
                                Decision::from_verdicts(allowed, &out[..n], DecisionSource::Lease);
                            Step::Here(decision, refresh)
                        }
                        None => Step::Remote(
                            e.book.call(&plan, now, cost, std::mem::take(&mut ended)),
                            e.epoch,
                        ),
                    }
                }
            }
        };
        self.give_back_later(key, policy, ended);
        match step {
            Step::Untracked => self.inner.acquire(key, policy, cost).await,
            Step::Here(decision, refresh) => {
                if let Some((call, epoch)) = refresh {
                    self.lease_in_background(key, policy, plan, call, epoch);
                }
                Ok(decision)
            }
            Step::Remote(call, epoch) => self.remote(key, policy, plan, call, epoch).await,
        }
    }

    /// A new book for `key`, when the shard has room (after forgetting idle books).
    fn insert<'s>(
        self: &Arc<Self>,
        shard: &'s mut Shard,
        h: u64,
        key: Probe<'_>,
        policy: &Policy,
        plan: Plan,
        now: u64,
    ) -> Option<&'s mut Entry> {
        if shard.table.len() >= self.per_shard {
            let idle_for = micros(self.config.max_lease).saturating_mul(2);
            shard
                .table
                .retain(|e| !(e.book.idle(now) && now.saturating_sub(e.book.last_used) > idle_for));
            if shard.table.len() >= self.per_shard {
                return None;
            }
        }
        self.start_sweeper();
        let entry = Entry {
            hash: h,
            key: KeyBuf::stored(key),
            policy: policy.clone(),
            lifetime: plan.lifetime,
            sparse: plan.sparse,
            epoch: self.epoch.fetch_add(1, Ordering::Relaxed),
            book: Book::new(now),
        };
        Some(shard.table.insert_unique(h, entry, |e| e.hash).into_mut())
    }

    /// A lease call failed: its book cancels it (dropping the units it carried, and staying
    /// quiet for a while) and the loss is counted. One place for the request path, the
    /// direct path and the background renewal.
    fn failed(&self, key: &str, policy: &Policy, epoch: u64, call: Call) {
        let quiet = self.clock.now().saturating_add(self.quiet());
        let dropped = self
            .with_book(key, policy, epoch, |b| b.cancel(call, quiet))
            .map_or(0, |Dropped(d)| d);
        count_units(policy, "dropped", dropped);
        count_call(policy, "error");
    }

    /// Runs `f` on the book `epoch` of `key`, if it is still there.
    fn with_book<R>(
        &self,
        key: &str,
        policy: &Policy,
        epoch: u64,
        f: impl FnOnce(&mut Book) -> R,
    ) -> Option<R> {
        let (h, probe) = self.locate(policy, key);
        let mut shard = self.shards[self.shard_of(h)].lock();
        shard
            .table
            .find_mut(h, |e| e.is(probe, policy) && e.epoch == epoch)
            .map(|e| f(&mut e.book))
    }

    /// Send `call` and apply the answer (a request waits on this). The answer is applied to
    /// the book even when the request gave up meanwhile (its limiter's timeout): what the
    /// store granted is this instance's to spend, and the units the call carried come back
    /// to the book when it was never sent. (Before, a request that gave up after its call
    /// left dropped the grant and the carried units: counted in the store, held by nobody,
    /// and left out of the ledger by the instance's next report.)
    async fn remote(
        self: &Arc<Self>,
        key: &str,
        policy: &Policy,
        plan: Plan,
        call: Call,
        epoch: u64,
    ) -> Result<Decision> {
        let request = call.request;
        if tokio::runtime::Handle::try_current().is_err() {
            return self.remote_direct(key, policy, plan, call, epoch).await;
        }
        let in_flight = InFlight::new(&self.calls);
        let (shared, key_c, policy_c) = (Arc::clone(self), Box::<str>::from(key), policy.clone());
        let started = Instant::now();
        let settle: batch::Settle = Box::new(move |outcome: Option<Result<Lease>>| {
            let _in_flight = in_flight;
            let (key, policy) = (&*key_c, &policy_c);
            match outcome {
                None => {
                    shared.with_book(key, policy, epoch, |b| b.unsend(call));
                    Err(Error::backend("the lease call was not sent", true))
                }
                Some(Ok(lease)) => {
                    shared.observe_rtt(started.elapsed());
                    let allowance = shared.apply(key, policy, plan, call, epoch, &lease);
                    Ok(with_allowance(&lease.decision, policy, allowance))
                }
                Some(Err(error)) => {
                    shared.failed(key, policy, epoch, call);
                    Err(error)
                }
            }
        });
        let span = tracing::debug_span!(
            "ratelimit.lease",
            policy = policy.name(),
            cost = request.cost,
            want = request.want,
            background = false
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job::Lease(LeaseJob {
            key: Box::from(key),
            policy: policy.clone(),
            request,
            done: Answer::Caller(Waiter::new(tx, settle)),
        });
        // Queued on the current runtime (checked above); a job it could not queue was
        // settled as failed when dropped.
        let _ = self.batcher.submit(job);
        rx.instrument(span)
            .await
            .unwrap_or_else(|_| Err(Error::backend("the lease batch was dropped", true)))
    }

    /// [`remote`](Self::remote) without a tokio runtime to batch on: straight to the shared
    /// store (a request that gives up drops what the call carried).
    async fn remote_direct(
        self: &Arc<Self>,
        key: &str,
        policy: &Policy,
        plan: Plan,
        call: Call,
        epoch: u64,
    ) -> Result<Decision> {
        let request = call.request;
        let _in_flight = InFlight::new(&self.calls);
        let mut pending = Pending {
            shared: self,
            key,
            policy,
            epoch,
            call: Some(call),
        };
        let started = Instant::now();
        let result = self.inner.lease(key, policy, &request).await;
        let call = pending.call.take().expect("the call is settled once");
        match result {
            Ok(lease) => {
                self.observe_rtt(started.elapsed());
                let allowance = self.apply(key, policy, plan, call, epoch, &lease);
                Ok(with_allowance(&lease.decision, policy, allowance))
            }
            Err(error) => {
                self.failed(key, policy, epoch, call);
                Err(error)
            }
        }
    }

    /// Apply a store's answer to the book; returns the units the book holds afterwards.
    fn apply(
        &self,
        key: &str,
        policy: &Policy,
        plan: Plan,
        call: Call,
        epoch: u64,
        lease: &Lease,
    ) -> u64 {
        let now = self.clock.now();
        let n = policy.params().len().min(MAX_QUOTAS);
        let mut verdicts = [Verdict::NONE; MAX_QUOTAS];
        verdicts_of(&lease.decision, &mut verdicts[..n]);
        let reply = Reply {
            admitted: lease.decision.allowed,
            used_held: lease.used_held,
            stale_held: lease.stale_held,
            granted: lease.granted,
            lifetime: micros(lease.lifetime),
            granted_at: lease.granted_at,
            verdicts: &verdicts[..n],
        };
        let reserved: u64 = call.reserved.iter().map(|h| h.units).sum();
        let applied = self.with_book(key, policy, epoch, |b| {
            let Dropped(d) = b.finish(call, &reply, &plan, now);
            (d, b.allowance_at(now))
        });
        let (dropped, allowance) = applied.unwrap_or_else(|| {
            // The key was reset meanwhile: nothing the answer brings may be spent.
            let held_lost = if reply.admitted && reply.used_held > 0 {
                0
            } else {
                reserved
            };
            (reply.granted + held_lost, 0)
        });
        count_units(policy, "granted", reply.granted);
        count_units(policy, "dropped", dropped);
        count_call(
            policy,
            match (reply.admitted, reply.granted) {
                (false, _) => "denied",
                (true, 0) => "empty",
                (true, _) => "granted",
            },
        );
        allowance
    }

    /// Send a call that only leases, in the next batch; nobody waits on it.
    fn lease_in_background(
        self: &Arc<Self>,
        key: &str,
        policy: &Policy,
        plan: Plan,
        call: Call,
        epoch: u64,
    ) {
        let request = call.request;
        let (shared, key_c, policy_c) = (Arc::clone(self), Box::<str>::from(key), policy.clone());
        let in_flight = InFlight::new(&self.calls);
        let started = Instant::now();
        let done = Done::new(move |result: Result<Lease>| {
            let _in_flight = in_flight;
            let (key, policy) = (&*key_c, &policy_c);
            match result {
                Ok(lease) => {
                    shared.observe_rtt(started.elapsed());
                    if shared.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(
                            backend = shared.inner.backend_name(),
                            "lease calls to the shared store succeed again"
                        );
                    }
                    let _ = shared.apply(key, policy, plan, call, epoch, &lease);
                }
                Err(error) => {
                    shared.failed(key, policy, epoch, call);
                    if shared.failing.swap(true, Ordering::Relaxed) {
                        tracing::debug!(%error, policy = policy.name(), "background lease failed");
                    } else {
                        tracing::warn!(
                            %error,
                            backend = shared.inner.backend_name(),
                            policy = policy.name(),
                            "lease calls to the shared store fail: requests are admitted from the allowance held, then decided by the store and the failure mode"
                        );
                    }
                }
            }
        });
        tracing::trace!(
            policy = policy.name(),
            want = request.want,
            "ratelimit.lease queued in the background"
        );
        let job = Job::Lease(LeaseJob {
            key: Box::from(key),
            policy: policy.clone(),
            request,
            done: Answer::Then(done),
        });
        // Without a runtime the job is dropped: its answer, an error, cancels the call.
        let _ = self.batcher.submit(job);
    }

    fn observe_rtt(&self, took: Duration) {
        let sample = micros(took);
        let _ = self
            .rtt
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some((old.saturating_mul(7).saturating_add(sample)) / 8)
            });
    }

    /// Give ended leases' units back, in the next batch.
    fn give_back_later(self: &Arc<Self>, key: &str, policy: &Policy, ended: Ended) {
        if ended.is_empty() {
            return;
        }
        if !self.gives_back(policy) {
            count_units(policy, "dropped", ended.iter().map(|h| h.units).sum());
            return;
        }
        for h in ended {
            if self.refilled(policy, h.units) {
                count_units(policy, "refilled", h.units);
                continue;
            }
            let in_flight = InFlight::new(&self.calls);
            let policy_c = policy.clone();
            let units = h.units;
            let done = Done::new(move |result: Result<()>| {
                let _in_flight = in_flight;
                match result {
                    Ok(()) => count_units(&policy_c, "returned", units),
                    Err(e) => {
                        tracing::debug!(error = %e, policy = policy_c.name(), "giving leased units back failed");
                        count_units(&policy_c, "dropped", units);
                    }
                }
            });
            let job = Job::Release(ReleaseJob {
                key: Box::from(key),
                policy: policy.clone(),
                give: LeaseReturn::new(h.units, h.granted_at)
                    .owner(self.owner, h.reported)
                    .reclaim_at(h.reclaim_at),
                done,
            });
            // Without a runtime the job is dropped: its answer, an error, counts the units
            // dropped.
            let _ = self.batcher.submit(job);
        }
    }

    /// Whether `units` of an ended bucket lease would come back as nothing, so that giving
    /// them back is not worth a call: Redis gives back `units − ⌈(t − g) / interval⌉`
    /// per quota (guide, "Giving bucket units back"), and an ended lease was granted at
    /// least its lifetime (≥ the policy's dense lifetime) less a round trip ago — at least
    /// half that lifetime while a round trip takes less than the other half. Such units
    /// stay counted, as the give-back would have left them (had a round trip taken longer,
    /// the bucket keeps a few units it could have had back: under-admission, never more);
    /// the owner's ledger record keeps them until its next report replaces it, or its
    /// reclaim gives back what the bucket has not refilled since — nothing, by then.
    fn refilled(&self, policy: &Policy, units: u64) -> bool {
        if policy.algorithm().counts_windows() {
            return false;
        }
        let Some(lifetime) = self.config.lifetime_micros(policy) else {
            return false;
        };
        let since = lifetime / 2;
        policy
            .params()
            .iter()
            .all(|q| units.saturating_mul(q.interval) <= since)
    }

    /// Whether unspent units of `policy` go back to the shared store: window algorithms
    /// always; buckets when the store keeps this instance's record (less what they refilled).
    fn gives_back(&self, policy: &Policy) -> bool {
        policy.algorithm().counts_windows() || self.owner != 0
    }

    /// Give units back and wait (bucket units are dropped without a ledger record), in one
    /// [`Store::release_many`] call.
    async fn give_back(&self, all: Vec<(Box<str>, Policy, Leases)>) -> Result<()> {
        let mut calls = Vec::new();
        for (key, policy, held) in &all {
            if !self.gives_back(policy) {
                count_units(policy, "dropped", held.iter().map(|h| h.units).sum());
                continue;
            }
            for h in held {
                calls.push(ReleaseCall::new(
                    key,
                    policy,
                    LeaseReturn::new(h.units, h.granted_at)
                        .owner(self.owner, h.reported)
                        .reclaim_at(h.reclaim_at),
                ));
            }
        }
        if calls.is_empty() {
            return Ok(());
        }
        let span = tracing::debug_span!("ratelimit.release", keys = calls.len());
        let answers = self.inner.release_many(&calls).instrument(span).await;
        let mut result = Ok(());
        for (c, answer) in calls.iter().zip(answers) {
            match answer {
                Ok(()) => count_units(c.policy, "returned", c.give.units),
                Err(e) => {
                    tracing::debug!(error = %e, policy = c.policy.name(), "giving leased units back failed");
                    count_units(c.policy, "dropped", c.give.units);
                    result = result.and(Err(e));
                }
            }
        }
        result
    }

    /// One background task per store: gives back ended leases and forgets idle books,
    /// visiting every shard four times per `max_lease` (and renews leases ahead of need, see `sweep`).
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(self);
        let shards = self.shards.len();
        let period = self.sweep_period();
        let tick = (period / shards as u64).max(1_000);
        let per_tick = (shards as u64 * tick).div_ceil(period).max(1) as usize;
        runtime.spawn(async move {
            // Whoever starts the next call restarts the sweeper if this runtime goes away.
            struct Stopped(std::sync::Weak<Shared>);
            impl Drop for Stopped {
                fn drop(&mut self) {
                    if let Some(s) = self.0.upgrade() {
                        s.sweeping.store(false, Ordering::Release);
                    }
                }
            }
            let _stopped = Stopped(weak.clone());
            let mut next = 0;
            loop {
                tokio::time::sleep(Duration::from_micros(tick)).await;
                let Some(shared) = weak.upgrade() else { return };
                for _ in 0..per_tick {
                    shared.sweep(next);
                    next = (next + 1) % shards;
                }
            }
        });
    }

    /// Visit shard `i`: give back ended leases, forget idle books, and renew, in the
    /// background, the leases of keys decided since their last lease call that would run
    /// out or end before the next visit (a quarter of `max_lease` away) plus twice the round
    /// trip (clamped to ⅛–½ of the dense lifetime, see [`Book::renew`]): a key
    /// with a steady trickle of requests, dense or sparse, then never waits on the shared
    /// store while it has allowance. The renewals go out in batches.
    fn sweep(self: &Arc<Self>, i: usize) {
        let now = self.clock.now();
        let idle_for = micros(self.config.max_lease).saturating_mul(2);
        let (period, lead) = (self.sweep_period(), self.lead());
        let mut ended: Vec<(Box<str>, Policy, Ended)> = Vec::new();
        let mut renewals: Vec<(Box<str>, Policy, Plan, Call, u64)> = Vec::new();
        {
            let mut shard = self.shards[i].lock();
            for e in &mut shard.table {
                let mut mine = Ended::new();
                e.book.expire(now, |h| mine.push(h));
                if !mine.is_empty() {
                    ended.push((Box::from(e.key.text()), e.policy.clone(), mine));
                }
                let plan = self.plan_for(e.lifetime, e.sparse);
                if let Some(call) = e.book.renew(&plan, now, period, lead) {
                    renewals.push((
                        Box::from(e.key.text()),
                        e.policy.clone(),
                        plan,
                        call,
                        e.epoch,
                    ));
                }
            }
            shard
                .table
                .retain(|e| !(e.book.idle(now) && now.saturating_sub(e.book.last_used) > idle_for));
        }
        for (key, policy, held) in ended {
            self.give_back_later(&key, &policy, held);
        }
        for (key, policy, plan, call, epoch) in renewals {
            self.lease_in_background(&key, &policy, plan, call, epoch);
        }
    }

    /// How often the sweeper visits a shard, µs: four times per `max_lease`, so that a
    /// dense key's lease (of `max_lease`) is renewed at about three quarters of its life.
    fn sweep_period(&self) -> u64 {
        (micros(self.config.max_lease) / 4).max(2_000)
    }

    fn forget(&self, key: &str, policy: &Policy) {
        let (h, probe) = self.locate(policy, key);
        let mut shard = self.shards[self.shard_of(h)].lock();
        if let Ok(e) = shard.table.find_entry(h, |e| e.is(probe, policy)) {
            let (mut e, _) = e.remove();
            count_units(policy, "dropped", e.book.clear());
        }
    }
}

/// A call in flight. Dropped before its answer (the caller gave up: a timeout), the units
/// it carried are dropped (the store may have counted them) and the book may lease again.
struct Pending<'a> {
    shared: &'a Shared,
    key: &'a str,
    policy: &'a Policy,
    epoch: u64,
    call: Option<Call>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            let dropped = self
                .shared
                .with_book(self.key, self.policy, self.epoch, |b| b.cancel(call, 0))
                .map_or(0, |Dropped(d)| d);
            count_units(self.policy, "dropped", dropped);
        }
    }
}

/// The decision's per-quota figures, as verdicts.
fn verdicts_of(decision: &Decision, out: &mut [Verdict]) {
    for (o, q) in out.iter_mut().zip(decision.quotas()) {
        *o = Verdict {
            allowed: q.allowed,
            remaining: q.remaining,
            reset: micros(q.reset),
            retry_after: q.retry_after.map(micros),
        };
    }
}

/// `decision` with `allowance` units (this instance's) added to what each quota has left.
fn with_allowance(decision: &Decision, policy: &Policy, allowance: u64) -> Decision {
    if allowance == 0 {
        return decision.clone();
    }
    let n = policy.params().len().min(MAX_QUOTAS);
    let mut v = [Verdict::NONE; MAX_QUOTAS];
    verdicts_of(decision, &mut v[..n]);
    for (v, q) in v[..n].iter_mut().zip(policy.params()) {
        let capacity = match policy.algorithm() {
            Algorithm::Gcra | Algorithm::TokenBucket => q.burst,
            _ => q.limit,
        };
        v.remaining = v.remaining.saturating_add(allowance).min(capacity);
    }
    Decision::from_verdicts(decision.allowed, &v[..n], decision.source)
}

fn count_call(policy: &Policy, outcome: &'static str) {
    metrics::counter!(
        "palisade_ratelimit_lease_calls_total",
        "policy" => metrics::SharedString::from(Arc::clone(policy.name_arc())),
        "outcome" => outcome,
    )
    .increment(1);
}

fn count_units(policy: &Policy, fate: &'static str, units: u64) {
    if units > 0 {
        metrics::counter!(
            "palisade_ratelimit_lease_units_total",
            "policy" => metrics::SharedString::from(Arc::clone(policy.name_arc())),
            "fate" => fate,
        )
        .increment(units);
    }
}

#[async_trait]
impl Store for LeasedStore {
    async fn acquire(&self, key: &str, policy: &Policy, cost: u64) -> Result<Decision> {
        self.shared.acquire(key, policy, cost).await
    }

    /// The shared store's answer, plus what this instance holds.
    async fn peek(&self, key: &str, policy: &Policy) -> Result<Decision> {
        let d = self.shared.inner.peek(key, policy).await?;
        let held = self.allowance(key, policy);
        if held == 0 {
            return Ok(d);
        }
        let n = policy.params().len().min(MAX_QUOTAS);
        let mut v = [Verdict::NONE; MAX_QUOTAS];
        verdicts_of(&d, &mut v[..n]);
        for v in &mut v[..n] {
            v.allowed = true;
            v.retry_after = None;
        }
        let admitted = Decision::from_verdicts(true, &v[..n], d.source);
        Ok(with_allowance(&admitted, policy, held))
    }

    /// Given back to the shared store (this instance forgets the store's last denial).
    async fn refund(&self, key: &str, policy: &Policy, cost: u64) -> Result<()> {
        self.shared.inner.refund(key, policy, cost).await?;
        let (h, probe) = self.shared.locate(policy, key);
        let mut shard = self.shared.shards[self.shared.shard_of(h)].lock();
        if let Some(e) = shard.table.find_mut(h, |e| e.is(probe, policy)) {
            e.book.forget_denial();
        }
        Ok(())
    }

    /// Forgotten in the shared store, then here (this instance's allowance is dropped;
    /// other instances spend theirs until their leases end).
    async fn reset(&self, key: &str, policy: &Policy) -> Result<()> {
        self.shared.inner.reset(key, policy).await?;
        self.shared.forget(key, policy);
        Ok(())
    }

    fn backend_name(&self) -> &'static str {
        "leased"
    }

    async fn health(&self) -> Result<()> {
        self.shared.inner.health().await
    }

    fn acquire_now(&self, key: &str, policy: &Policy, cost: u64) -> Option<Result<Decision>> {
        self.shared.try_here(key, policy, cost).map(Ok)
    }

    async fn lease(&self, key: &str, policy: &Policy, request: &LeaseRequest) -> Result<Lease> {
        self.shared.inner.lease(key, policy, request).await
    }

    async fn release(&self, key: &str, policy: &Policy, units: u64, granted_at: u64) -> Result<()> {
        self.shared
            .inner
            .release(key, policy, units, granted_at)
            .await
    }

    async fn release_for(&self, key: &str, policy: &Policy, give: &LeaseReturn) -> Result<()> {
        self.shared.inner.release_for(key, policy, give).await
    }

    async fn lease_many(&self, calls: &[LeaseCall<'_>]) -> Vec<Result<Lease>> {
        self.shared.inner.lease_many(calls).await
    }

    async fn release_many(&self, gives: &[ReleaseCall<'_>]) -> Vec<Result<()>> {
        self.shared.inner.release_many(gives).await
    }
}
