//! The conformance suite every [`Store`] must pass (feature `testing`), public so that a
//! store written outside this crate (a decorator, another database) can prove itself with
//! the same cases the memory, Redis, Redis Cluster and TLS stores run here, as
//! `object_store`'s `integration` module does for its stores.
//!
//! Each case is an `async fn(&dyn Store, &FakeClock)` that runs every algorithm and panics
//! on a violation; the store must read its time from the [`FakeClock`] it is given (a store
//! on server time cannot be tested for refills without sleeping). Cases use policy names of
//! their own and advance the clock past every period they used, so they may share a store
//! and run in any order. [`store_conformance_tests!`](crate::store_conformance_tests)
//! writes one `#[tokio::test]` per case:
//!
//! ```
//! use palisade_ratelimit::testing::Fixture;
//! use palisade_ratelimit::{FakeClock, MemoryStore};
//!
//! fn memory() -> Fixture {
//!     let clock = FakeClock::new();
//!     Fixture::new(MemoryStore::builder().clock(clock.clone()).build(), clock)
//! }
//!
//! // In a test file: one test per case, each on a fresh store.
//! palisade_ratelimit::store_conformance_tests!(memory());
//! # fn main() {}
//! ```
//!
//! The macro needs `tokio` (features `macros`, `rt-multi-thread`) among the caller's
//! dev-dependencies.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use crate::{Algorithm, Decision, FakeClock, LeaseRequest, Policy, Quota, Store};

/// A store under test, its clock, and whatever must live as long as the test (a server).
pub struct Fixture {
    store: Arc<dyn Store>,
    clock: FakeClock,
    _keep: Vec<Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("store", &self.store)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Fixture {
    /// `store`, reading its time from `clock`.
    pub fn new(store: impl Store + 'static, clock: FakeClock) -> Self {
        Self {
            store: Arc::new(store),
            clock,
            _keep: Vec::new(),
        }
    }

    /// Keep `guard` (a test server, a temporary directory) alive until the case ends.
    #[must_use]
    pub fn keep_alive(mut self, guard: impl Any + Send + Sync) -> Self {
        self._keep.push(Box::new(guard));
        self
    }

    /// The store under test.
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// The clock the store reads.
    pub fn clock(&self) -> &FakeClock {
        &self.clock
    }
}

/// A fixture is its own future, so [`store_conformance_tests!`](crate::store_conformance_tests)
/// takes a plain function as well as an `async` one.
impl std::future::IntoFuture for Fixture {
    type Output = Self;
    type IntoFuture = std::future::Ready<Self>;

    fn into_future(self) -> Self::IntoFuture {
        std::future::ready(self)
    }
}

/// Every case, in order, on one store.
pub async fn run_all(store: &dyn Store, clock: &FakeClock) {
    limit_and_refill(store, clock).await;
    multi_window_denial_consumes_nothing(store, clock).await;
    weighted_cost(store, clock).await;
    peek_consumes_nothing(store, clock).await;
    refund_gives_back(store, clock).await;
    reset_forgets(store, clock).await;
    hostile_keys_stay_apart(store, clock).await;
    policies_stay_apart(store, clock).await;
    retry_after_is_honest(store, clock).await;
    zero_limit_denies(store, clock).await;
    a_longer_period_strands_no_key(store, clock).await;
    reset_forgets_only_the_form_given(store, clock).await;
    a_lease_is_counted_when_granted(store, clock).await;
}

/// Writes one `#[tokio::test]` per conformance case, each on a fresh [`Fixture`] from
/// `$fixture` (an expression giving a fixture or a future of one, evaluated once per case);
/// see the
/// [module docs](crate::testing).
#[macro_export]
macro_rules! store_conformance_tests {
    ($fixture:expr) => {
        $crate::__store_conformance_cases!($fixture; limit_and_refill, multi_window_denial_consumes_nothing, weighted_cost, peek_consumes_nothing, refund_gives_back, reset_forgets, hostile_keys_stay_apart, policies_stay_apart, retry_after_is_honest, zero_limit_denies, a_longer_period_strands_no_key, reset_forgets_only_the_form_given, a_reachable_store_is_healthy, a_lease_is_counted_when_granted);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_conformance_cases {
    ($fixture:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture: $crate::testing::Fixture = $fixture.await;
                $crate::testing::$case(fixture.store(), fixture.clock()).await;
            }
        )*
    };
}

fn policy(name: &str, alg: Algorithm, quotas: &[(&str, Quota)]) -> Policy {
    let mut b = Policy::builder(format!("{name}-{}", alg.as_str())).algorithm(alg);
    for (n, q) in quotas {
        b = b.quota(*n, *q);
    }
    b.build().expect("a valid policy")
}

/// A quota admits its limit, denies the next request with an honest retry time, and is whole again after two periods. Every algorithm.
pub async fn limit_and_refill(store: &dyn Store, clock: &FakeClock) {
    for alg in Algorithm::ALL {
        limit_and_refill_for(store, clock, alg).await;
    }
}

/// Several quotas are checked together, and a denial by one consumes from none. Every algorithm.
pub async fn multi_window_denial_consumes_nothing(store: &dyn Store, clock: &FakeClock) {
    for alg in Algorithm::ALL {
        multi_window_denial_consumes_nothing_for(store, clock, alg).await;
    }
}

/// A request of cost n takes n units; a cost above the limit can never pass (no retry time); cost 0 is a free look. Every algorithm.
pub async fn weighted_cost(store: &dyn Store, clock: &FakeClock) {
    for alg in Algorithm::ALL {
        weighted_cost_for(store, clock, alg).await;
    }
}

/// `peek` reports what is left and consumes nothing. Every algorithm.
pub async fn peek_consumes_nothing(store: &dyn Store, clock: &FakeClock) {
    for alg in Algorithm::ALL {
        peek_consumes_nothing_for(store, clock, alg).await;
    }
}

/// `refund` gives units back, never above the quota's capacity. Every algorithm.
pub async fn refund_gives_back(store: &dyn Store, clock: &FakeClock) {
    for alg in Algorithm::ALL {
        refund_gives_back_for(store, clock, alg).await;
    }
}

/// `reset` forgets every quota of the key. Every algorithm.
pub async fn reset_forgets(store: &dyn Store, clock: &FakeClock) {
    for alg in Algorithm::ALL {
        reset_forgets_for(store, clock, alg).await;
    }
}

/// Keys with braces, colons, newlines, NUL, any Unicode or 10 KB never share state. Every algorithm.
pub async fn hostile_keys_stay_apart(store: &dyn Store, clock: &FakeClock) {
    for alg in Algorithm::ALL {
        hostile_keys_stay_apart_for(store, clock, alg).await;
    }
}

/// Two policies never share state for one key, even when naive concatenation of names would collide. Every algorithm.
pub async fn policies_stay_apart(store: &dyn Store, clock: &FakeClock) {
    for alg in Algorithm::ALL {
        policies_stay_apart_for(store, clock, alg).await;
    }
}

/// Waiting exactly `retry_after` is enough. Every algorithm.
pub async fn retry_after_is_honest(store: &dyn Store, clock: &FakeClock) {
    for alg in Algorithm::ALL {
        retry_after_is_honest_for(store, clock, alg).await;
    }
}

/// A zero limit denies everything, with no retry time. Every algorithm.
pub async fn zero_limit_denies(store: &dyn Store, clock: &FakeClock) {
    for alg in Algorithm::ALL {
        zero_limit_denies_for(store, clock, alg).await;
    }
}

/// A quota replaced by one of a longer period under the same names strands no key in the future. Every algorithm.
pub async fn a_longer_period_strands_no_key(store: &dyn Store, clock: &FakeClock) {
    for alg in Algorithm::ALL {
        a_longer_period_strands_no_key_for(store, clock, alg).await;
    }
}

/// `reset` forgets the key under the form of the policy given; a policy of another algorithm under the same name keeps its own states. Every algorithm.
pub async fn reset_forgets_only_the_form_given(store: &dyn Store, clock: &FakeClock) {
    for alg in Algorithm::ALL {
        reset_forgets_only_the_form_given_for(store, clock, alg).await;
    }
}

async fn acquire(store: &dyn Store, key: &str, p: &Policy, cost: u64) -> Decision {
    store.acquire(key, p, cost).await.expect("store answered")
}

async fn limit_and_refill_for(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let p = policy("limit", alg, &[("per_minute", Quota::per_minute(5))]);
    for i in 0..5 {
        let d = acquire(store, "k", &p, 1).await;
        assert!(d.allowed, "{alg}: request {i} refused: {d:?}");
        assert_eq!(d.quota(0).unwrap().remaining, 4 - i, "{alg}");
        assert_eq!(d.len(), 1, "{alg}: one figure per quota");
        assert!(!d.from_fallback());
    }
    let d = acquire(store, "k", &p, 1).await;
    assert!(!d.allowed, "{alg}: sixth admitted");
    assert_eq!(d.quota(0).unwrap().remaining, 0);
    let retry = d.retry_after().expect("a retry time");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(120),
        "{alg}: {retry:?}"
    );
    assert!(d.quota(0).unwrap().reset <= Duration::from_secs(120));
    // After twice the period every algorithm is whole again.
    clock.advance(Duration::from_secs(120));
    for _ in 0..5 {
        assert!(
            acquire(store, "k", &p, 1).await.allowed,
            "{alg}: not refilled"
        );
    }
    assert!(!acquire(store, "k", &p, 1).await.allowed);
    clock.advance(Duration::from_secs(120));
}

async fn multi_window_denial_consumes_nothing_for(
    store: &dyn Store,
    clock: &FakeClock,
    alg: Algorithm,
) {
    let p = policy(
        "multi",
        alg,
        &[
            ("per_second", Quota::per_second(3)),
            ("per_minute", Quota::per_minute(5)),
        ],
    );
    for _ in 0..3 {
        assert!(acquire(store, "k", &p, 1).await.allowed, "{alg}");
    }
    for _ in 0..10 {
        let d = acquire(store, "k", &p, 1).await;
        assert!(!d.allowed, "{alg}");
        assert!(
            !d.quota(0).unwrap().allowed && d.quota(1).unwrap().allowed,
            "{alg}: {d:?}"
        );
        assert_eq!(
            d.quota(1).unwrap().remaining,
            2,
            "{alg}: the denial consumed from per_minute"
        );
    }
    let peeked = store.peek("k", &p).await.expect("the store answered");
    assert_eq!(peeked.quota(1).unwrap().remaining, 2, "{alg}");
    clock.advance(Duration::from_millis(2_000));
    assert!(acquire(store, "k", &p, 1).await.allowed, "{alg}");
    assert!(acquire(store, "k", &p, 1).await.allowed, "{alg}");
    let d = acquire(store, "k", &p, 1).await;
    assert!(!d.allowed, "{alg}: per_minute exceeded");
    assert!(
        d.quota(0).unwrap().allowed && !d.quota(1).unwrap().allowed,
        "{alg}: {d:?}"
    );
    assert_eq!(
        d.quota(0).unwrap().remaining,
        1,
        "{alg}: the denial consumed from per_second"
    );
    clock.advance(Duration::from_secs(120));
}

async fn weighted_cost_for(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let p = policy("cost", alg, &[("q", Quota::per_minute(10))]);
    let d = acquire(store, "k", &p, 7).await;
    assert!(
        d.allowed && d.quota(0).unwrap().remaining == 3,
        "{alg}: {d:?}"
    );
    let d = acquire(store, "k", &p, 4).await;
    assert!(!d.allowed, "{alg}");
    assert_eq!(d.quota(0).unwrap().remaining, 3, "{alg}");
    assert!(acquire(store, "k", &p, 3).await.allowed, "{alg}");
    let d = acquire(store, "other", &p, 11).await;
    assert!(
        !d.allowed && d.retry_after().is_none(),
        "{alg}: a cost above the limit can never pass: {d:?}"
    );
    let d = acquire(store, "other", &p, 0).await;
    assert!(
        d.allowed && d.quota(0).unwrap().remaining == 10,
        "{alg}: cost 0 is a free look: {d:?}"
    );
    clock.advance(Duration::from_secs(120));
}

async fn peek_consumes_nothing_for(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let p = policy("peek", alg, &[("q", Quota::per_minute(3))]);
    let d = store.peek("k", &p).await.expect("the store answered");
    assert!(
        d.allowed && d.quota(0).unwrap().remaining == 3,
        "{alg}: {d:?}"
    );
    acquire(store, "k", &p, 2).await;
    for _ in 0..5 {
        let d = store.peek("k", &p).await.expect("the store answered");
        assert!(
            d.allowed && d.quota(0).unwrap().remaining == 1,
            "{alg}: {d:?}"
        );
    }
    acquire(store, "k", &p, 1).await;
    let d = store.peek("k", &p).await.expect("the store answered");
    assert!(
        !d.allowed && d.quota(0).unwrap().remaining == 0 && d.retry_after().is_some(),
        "{alg}: {d:?}"
    );
    clock.advance(Duration::from_secs(120));
}

async fn refund_gives_back_for(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let p = policy("refund", alg, &[("q", Quota::per_minute(5))]);
    assert!(acquire(store, "k", &p, 5).await.allowed, "{alg}");
    assert!(!acquire(store, "k", &p, 1).await.allowed, "{alg}");
    store.refund("k", &p, 2).await.expect("the store answered");
    assert!(
        acquire(store, "k", &p, 2).await.allowed,
        "{alg}: refund not applied"
    );
    assert!(
        !acquire(store, "k", &p, 1).await.allowed,
        "{alg}: refunded too much"
    );
    // A refund never raises a quota above its capacity.
    store
        .refund("fresh", &p, 100)
        .await
        .expect("the store answered");
    let d = store.peek("fresh", &p).await.expect("the store answered");
    assert_eq!(d.quota(0).unwrap().remaining, 5, "{alg}");
    clock.advance(Duration::from_secs(120));
}

async fn reset_forgets_for(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let p = policy(
        "reset",
        alg,
        &[("a", Quota::per_minute(2)), ("b", Quota::per_hour(3))],
    );
    acquire(store, "k", &p, 2).await;
    assert!(!acquire(store, "k", &p, 1).await.allowed, "{alg}");
    store.reset("k", &p).await.expect("the store answered");
    let d = acquire(store, "k", &p, 2).await;
    assert!(
        d.allowed && d.quota(1).unwrap().remaining == 1,
        "{alg}: {d:?}"
    );
    store.reset("k", &p).await.expect("the store answered");
    clock.advance(Duration::from_secs(120));
}

/// Keys that a store must keep apart: braces, colons, percent signs, newlines, NUL, any
/// Unicode, the empty key and 10 KB keys.
pub fn hostile_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "a", "a:b", "a%3Ab", "a:", ":a", "{a}", "{a", "a}", "}{", "{", "}", ":", "%", "%25",
        "a\nb", "a\r\nb", "a b", "a\0b", "ключ", "鍵", "🔑", "", " ", "*", "?", "[a]", "a\\b",
        "a\"b",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    // Around the length kept inline (15 bytes) and the word boundaries it is compared by.
    for n in [7, 8, 9, 14, 15, 16, 17] {
        keys.push("x".repeat(n));
    }
    keys.push("x".repeat(10 * 1024));
    keys.push("x".repeat(10 * 1024 - 1));
    keys.push(format!("{{{}}}", "y".repeat(5000)));
    keys
}

async fn hostile_keys_stay_apart_for(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let p = policy("hostile", alg, &[("q", Quota::per_minute(2))]);
    let keys = hostile_keys();
    for k in &keys {
        let d = acquire(store, k, &p, 1).await;
        assert!(
            d.allowed && d.quota(0).unwrap().remaining == 1,
            "{alg}: key {:?} shares state: {d:?}",
            truncate(k)
        );
    }
    for k in &keys {
        let d = acquire(store, k, &p, 1).await;
        assert!(
            d.allowed && d.quota(0).unwrap().remaining == 0,
            "{alg}: key {:?}: {d:?}",
            truncate(k)
        );
        assert!(!acquire(store, k, &p, 1).await.allowed, "{alg}");
    }
    clock.advance(Duration::from_secs(120));
}

fn truncate(k: &str) -> String {
    k.chars().take(20).collect()
}

async fn policies_stay_apart_for(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    // Same key, two policies (one named so that naive concatenation would collide).
    let a = policy("pa", alg, &[("q", Quota::per_minute(1))]);
    let b = Policy::builder(format!("pa-{}:k", alg.as_str()))
        .algorithm(alg)
        .quota("q", Quota::per_minute(1))
        .build()
        .expect("a valid policy");
    assert!(acquire(store, "k", &a, 1).await.allowed);
    assert!(
        acquire(store, "", &b, 1).await.allowed,
        "{alg}: policies share state"
    );
    assert!(acquire(store, "k", &b, 1).await.allowed, "{alg}");
    assert!(!acquire(store, "k", &a, 1).await.allowed, "{alg}");
    clock.advance(Duration::from_secs(120));
}

async fn retry_after_is_honest_for(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let p = policy("retry", alg, &[("q", Quota::per_second(4))]);
    for _ in 0..4 {
        assert!(acquire(store, "k", &p, 1).await.allowed);
    }
    clock.advance(Duration::from_millis(100));
    let d = acquire(store, "k", &p, 1).await;
    assert!(!d.allowed, "{alg}");
    let retry = d.retry_after().expect("a retry time");
    clock.advance(retry);
    assert!(
        acquire(store, "k", &p, 1).await.allowed,
        "{alg}: still refused after {retry:?}"
    );
    clock.advance(Duration::from_secs(120));
}

async fn zero_limit_denies_for(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let p = policy("zero", alg, &[("q", Quota::per_minute(0))]);
    for _ in 0..3 {
        let d = acquire(store, "k", &p, 1).await;
        assert!(!d.allowed && d.retry_after().is_none(), "{alg}: {d:?}");
        clock.advance(Duration::from_secs(61));
    }
}

/// A quota replaced at run time by one with a longer period (same policy and quota names):
/// once the new period has passed, every algorithm admits again. (A window number counted
/// under the short period read under the long one would put the window far in the future
/// and keep the key denied; the window algorithms count such a policy's keys apart.)
async fn a_longer_period_strands_no_key_for(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let short = policy("period", alg, &[("q", Quota::per_second(2))]);
    let long = policy("period", alg, &[("q", Quota::per_minute(2))]);
    assert!(acquire(store, "k", &short, 2).await.allowed, "{alg}");
    assert!(!acquire(store, "k", &short, 1).await.allowed, "{alg}");
    clock.advance(Duration::from_secs(121));
    for i in 0..2 {
        let d = acquire(store, "k", &long, 1).await;
        assert!(
            d.allowed,
            "{alg}: request {i} under the longer period refused: {d:?}"
        );
        assert!(
            d.quota(0).unwrap().reset <= Duration::from_secs(120),
            "{alg}: {d:?}"
        );
    }
    assert!(!acquire(store, "k", &long, 1).await.allowed, "{alg}");
    clock.advance(Duration::from_secs(121));
    assert!(acquire(store, "k", &short, 1).await.allowed, "{alg}");
    clock.advance(Duration::from_secs(121));
}

/// A policy replaced by one of another algorithm keeps its states apart under the same name
/// (the Redis store's keys name the algorithm); `reset` forgets the key under the form of the
/// policy it is given, and every store leaves the other form's states to expire on their own.
async fn reset_forgets_only_the_form_given_for(
    store: &dyn Store,
    clock: &FakeClock,
    alg: Algorithm,
) {
    let other_alg = if alg == Algorithm::Gcra {
        Algorithm::FixedWindow
    } else {
        Algorithm::Gcra
    };
    let form = |a: Algorithm| {
        Policy::builder(format!("forms-{}", alg.as_str()))
            .algorithm(a)
            .quota("q", Quota::per_minute(2))
            .build()
            .expect("a valid policy")
    };
    let (p, other) = (form(alg), form(other_alg));
    assert!(acquire(store, "k", &p, 2).await.allowed, "{alg}");
    assert!(acquire(store, "k", &other, 2).await.allowed, "{alg}");
    store.reset("k", &other).await.expect("the store answered");
    assert!(
        acquire(store, "k", &other, 1).await.allowed,
        "{alg}: reset did not forget the form it was given"
    );
    assert!(
        !acquire(store, "k", &p, 1).await.allowed,
        "{alg}: reset under {other_alg} forgot the {alg} states too"
    );
    store.reset("k", &p).await.expect("the store answered");
    store.reset("k", &other).await.expect("the store answered");
    clock.advance(Duration::from_secs(120));
}

/// [`Store::lease`]: the request and the grant are counted at once, the grant is at most the
/// share asked of what is left (none for the sliding-window log), a denial takes and grants
/// nothing, and [`Store::release`] within the window gives a window algorithm's units back
/// (never a bucket's). A store that does not lease passes by granting nothing. Every
/// algorithm.
pub async fn a_lease_is_counted_when_granted(store: &dyn Store, clock: &FakeClock) {
    for alg in Algorithm::ALL {
        a_lease_is_counted_when_granted_for(store, clock, alg).await;
    }
}

async fn a_lease_is_counted_when_granted_for(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let p = policy("lease", alg, &[("q", Quota::per_minute(100))]);
    let request = LeaseRequest::new(10)
        .want(40, Duration::from_secs(10))
        .max_share_permille(500);
    let lease = store
        .lease("k", &p, &request)
        .await
        .expect("the store answered");
    assert!(lease.decision.allowed, "{alg}: {lease:?}");
    assert!(lease.granted <= 40, "{alg}: more than asked: {lease:?}");
    if alg == Algorithm::SlidingWindowLog {
        assert_eq!(lease.granted, 0, "the log is never leased");
    }
    assert_eq!(
        lease.decision.quota(0).unwrap().remaining,
        90 - lease.granted,
        "{alg}: the grant is not counted: {lease:?}"
    );
    let left = |d: Decision| d.quota(0).unwrap().remaining;
    let peeked = left(store.peek("k", &p).await.expect("the store answered"));
    assert_eq!(peeked, 90 - lease.granted, "{alg}");
    if lease.granted > 0 {
        assert!(
            lease.lifetime > Duration::ZERO && lease.lifetime <= Duration::from_secs(10),
            "{alg}: {lease:?}"
        );
    }
    // A denied request takes nothing and grants nothing.
    let denied = store
        .lease(
            "k",
            &p,
            &LeaseRequest::new(95).want(5, Duration::from_secs(10)),
        )
        .await
        .expect("the store answered");
    assert!(
        !denied.decision.allowed && denied.granted == 0,
        "{alg}: {denied:?}"
    );
    assert_eq!(
        left(store.peek("k", &p).await.expect("the store answered")),
        peeked,
        "{alg}"
    );
    store
        .release("k", &p, lease.granted, lease.granted_at)
        .await
        .expect("the store answered");
    let back = left(store.peek("k", &p).await.expect("the store answered"));
    let expected = if matches!(
        alg,
        Algorithm::FixedWindow | Algorithm::SlidingWindowCounter
    ) {
        90
    } else {
        peeked
    };
    assert_eq!(back, expected, "{alg}: release");
    clock.advance(Duration::from_secs(120));
}

/// A store whose backend answers reports itself healthy (and stays so across calls).
pub async fn a_reachable_store_is_healthy(store: &dyn Store, _clock: &FakeClock) {
    store.health().await.expect("a reachable store is healthy");
    store.health().await.expect("and stays healthy");
}
