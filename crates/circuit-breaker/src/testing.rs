//! The conformance suite every [`Store`] passes: one `async fn` per case, on a
//! [`FakeClock`] so that no case sleeps. The crate runs it against [`MemoryStore`](crate::MemoryStore)
//! and `RedisStore` on a standalone server, a 3-master Redis Cluster and a TLS server; a
//! store of your own runs it the same way.
//!
//! [`store_conformance_tests!`](crate::store_conformance_tests) writes one `#[tokio::test]`
//! per case from an expression that makes a [`Fixture`] (it needs `tokio` with the `macros`
//! and `rt-multi-thread` features among the dev-dependencies):
//!
//! ```
//! use std::sync::Arc;
//! use palisade_circuit_breaker::testing::Fixture;
//! use palisade_circuit_breaker::{FakeClock, MemoryStore};
//!
//! fn memory() -> std::future::Ready<Fixture> {
//!     let clock = FakeClock::new();
//!     let store = Arc::new(MemoryStore::with_clock(clock.clone()));
//!     std::future::ready(Fixture::new(store, clock))
//! }
//!
//! palisade_circuit_breaker::store_conformance_tests!(memory());
//! # fn main() {}
//! ```
//!
//! A store must decide on the fixture's clock (the Redis store does with
//! [`RedisStore::with_clock`](crate::RedisStore)); each case uses breaker names of its own.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{Batch, ManualOp, ProbeGrant, SharedPolicy, Store};
use crate::{Backoff, Config, FakeClock, Outcome, Quorum, SlowCallRule, State};

/// A store under test, the fake clock it decides on, and whatever must live as long as the
/// test (a server, a cluster).
pub struct Fixture {
    store: Arc<dyn Store>,
    clock: FakeClock,
    _keep: Option<Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Fixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture")
            .field("store", &self.store)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Fixture {
    /// `store`, deciding on `clock`.
    pub fn new(store: Arc<dyn Store>, clock: FakeClock) -> Self {
        Self {
            store,
            clock,
            _keep: None,
        }
    }

    /// Keep `guard` (a server, a cluster) alive until the case ends.
    #[must_use]
    pub fn keeping(mut self, guard: impl Any + Send + Sync) -> Self {
        self._keep = Some(Box::new(guard));
        self
    }

    /// The store under test.
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// The clock the store decides on.
    pub fn clock(&self) -> &FakeClock {
        &self.clock
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
}

/// The name of every case, in the order [`store_conformance_tests!`](crate::store_conformance_tests)
/// writes them.
pub const CASES: &[&str] = &[
    "trips_on_failure_rate_after_minimum_calls",
    "stays_closed_below_threshold",
    "slow_rate_trips",
    "shared_window_forgets_old_seconds",
    "half_open_probes_are_bounded_and_close",
    "failed_probe_reopens_with_backoff",
    "max_half_open_wait_reopens",
    "expired_leases_are_handed_out_again",
    "only_a_held_lease_completes_a_probe",
    "quorum_needs_enough_failing_instances",
    "manual_control_is_fleet_wide",
    "hostile_names_are_isolated",
    "a_reachable_store_is_healthy",
];

/// One `#[tokio::test]` per conformance case; `$fixture` is an expression evaluating to a
/// future of a [`Fixture`](crate::testing::Fixture) (an `async fn`'s call, or
/// `std::future::ready(…)`), made afresh for each case.
#[macro_export]
macro_rules! store_conformance_tests {
    ($fixture:expr) => {
        $crate::store_conformance_tests!(@case $fixture, trips_on_failure_rate_after_minimum_calls);
        $crate::store_conformance_tests!(@case $fixture, stays_closed_below_threshold);
        $crate::store_conformance_tests!(@case $fixture, slow_rate_trips);
        $crate::store_conformance_tests!(@case $fixture, shared_window_forgets_old_seconds);
        $crate::store_conformance_tests!(@case $fixture, half_open_probes_are_bounded_and_close);
        $crate::store_conformance_tests!(@case $fixture, failed_probe_reopens_with_backoff);
        $crate::store_conformance_tests!(@case $fixture, max_half_open_wait_reopens);
        $crate::store_conformance_tests!(@case $fixture, expired_leases_are_handed_out_again);
        $crate::store_conformance_tests!(@case $fixture, only_a_held_lease_completes_a_probe);
        $crate::store_conformance_tests!(@case $fixture, quorum_needs_enough_failing_instances);
        $crate::store_conformance_tests!(@case $fixture, manual_control_is_fleet_wide);
        $crate::store_conformance_tests!(@case $fixture, hostile_names_are_isolated);
        $crate::store_conformance_tests!(@case $fixture, a_reachable_store_is_healthy);
    };
    (@case $fixture:expr, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let fixture: $crate::testing::Fixture = $fixture.await;
            $crate::testing::$case(&fixture).await;
        }
    };
}

const WAIT: Duration = Duration::from_millis(250);
const TICK: Duration = Duration::from_millis(1);

fn policy(f: impl FnOnce(&mut Config)) -> SharedPolicy {
    let mut c = Config {
        minimum_calls: 4,
        failure_rate_threshold: 50.0,
        open_wait: WAIT,
        half_open_probes: 2,
        success_threshold: 2,
        max_half_open_wait: Duration::from_secs(10),
        ..Config::default()
    };
    f(&mut c);
    c.validate().expect("a valid conformance configuration");
    SharedPolicy::from_config(&c)
}

fn batch(instance: &str, calls: u64, failures: u64, slow: u64, failing: bool) -> Batch {
    Batch::new(instance, calls, failures, slow, failing)
}

fn read() -> Batch {
    batch("reader", 0, 0, 0, false)
}

/// Open `name` from closed: four failures of four calls.
async fn trip(f: &Fixture, name: &str, p: &SharedPolicy) {
    let s = f
        .store()
        .flush(name, p, &batch("a", 4, 4, 0, true))
        .await
        .unwrap();
    assert_eq!(
        s.state,
        State::Open,
        "{name}: four failures of four calls trip"
    );
}

async fn granted(f: &Fixture, name: &str, p: &SharedPolicy, lease: &str) -> u64 {
    match f.store().acquire_probe(name, p, lease).await.unwrap() {
        ProbeGrant::Granted { generation } => generation,
        denied => panic!("{name}: lease {lease} denied: {denied:?}"),
    }
}

/// The failure-rate rule trips once the shared window holds the minimum number of calls,
/// with an open wait of exactly `open_wait`; a read changes nothing.
pub async fn trips_on_failure_rate_after_minimum_calls(f: &Fixture) {
    let (name, p) = ("trip", policy(|_| {}));
    let s = f
        .store()
        .flush(name, &p, &batch("a", 2, 2, 0, true))
        .await
        .unwrap();
    assert_eq!(s.state, State::Closed, "2 calls are below the minimum of 4");
    assert_eq!((s.window.calls, s.window.failures), (2, 2));
    let s = f
        .store()
        .flush(name, &p, &batch("b", 2, 0, 0, false))
        .await
        .unwrap();
    assert_eq!(s.state, State::Open, "4 calls, 50 % failures: trip");
    assert_eq!((s.generation, s.retry_after), (1, WAIT));
    f.advance(Duration::from_millis(100));
    let again = f.store().flush(name, &p, &read()).await.unwrap();
    assert_eq!(
        (again.state, again.generation, again.retry_after),
        (State::Open, 1, WAIT - Duration::from_millis(100)),
        "a read changes nothing; the wait runs down on the store's clock"
    );
}

/// A failure rate under the threshold never trips.
pub async fn stays_closed_below_threshold(f: &Fixture) {
    let p = policy(|_| {});
    let s = f
        .store()
        .flush("below", &p, &batch("a", 10, 4, 0, false))
        .await
        .unwrap();
    assert_eq!(s.state, State::Closed);
    assert_eq!((s.window.calls, s.window.failures), (10, 4));
}

/// The slow-call rule trips on the slow share alone.
pub async fn slow_rate_trips(f: &Fixture) {
    let name = "slow";
    let p = policy(|c| {
        c.slow_call = Some(SlowCallRule {
            duration: Duration::from_secs(1),
            rate_threshold: 60.0,
        });
    });
    let s = f
        .store()
        .flush(name, &p, &batch("a", 10, 0, 5, false))
        .await
        .unwrap();
    assert_eq!(s.state, State::Closed);
    let s = f.store().flush(name, &p, &read()).await.unwrap();
    assert_eq!(s.window.slow, 5);
    let s = f
        .store()
        .flush(name, &p, &batch("a", 5, 0, 5, false))
        .await
        .unwrap();
    assert_eq!(s.state, State::Open, "10 of 15 slow >= 60 %");
}

/// Calls older than the shared window no longer count towards a trip.
pub async fn shared_window_forgets_old_seconds(f: &Fixture) {
    let name = "window";
    let p = policy(|c| c.shared.window_seconds = 10);
    f.advance(Duration::from_secs(1_000));
    let s = f
        .store()
        .flush(name, &p, &batch("a", 3, 3, 0, true))
        .await
        .unwrap();
    assert_eq!((s.state, s.window.calls), (State::Closed, 3));
    f.advance(Duration::from_secs(9));
    let s = f.store().flush(name, &p, &read()).await.unwrap();
    assert_eq!(
        s.window.calls, 3,
        "9 s later the calls are still in a 10 s window"
    );
    f.advance(Duration::from_secs(1));
    let s = f
        .store()
        .flush(name, &p, &batch("a", 1, 1, 0, true))
        .await
        .unwrap();
    assert_eq!(
        (s.state, s.window.calls),
        (State::Closed, 1),
        "10 s later they are gone: 1 call is below the minimum"
    );
}

/// At most `half_open_probes` leases per half-open period; an ignored probe gives its permit
/// back; `success_threshold` successes close; late results change nothing.
pub async fn half_open_probes_are_bounded_and_close(f: &Fixture) {
    let (name, p) = ("probes", policy(|_| {}));
    trip(f, name, &p).await;
    let denied = f.store().acquire_probe(name, &p, "early").await.unwrap();
    assert!(
        matches!(denied, ProbeGrant::Denied(ref s) if s.state == State::Open),
        "{denied:?}"
    );
    f.advance(WAIT);
    let generation = granted(f, name, &p, "p1").await;
    assert_eq!(granted(f, name, &p, "p2").await, generation);
    let g3 = f.store().acquire_probe(name, &p, "p3").await.unwrap();
    assert!(
        matches!(g3, ProbeGrant::Denied(ref s) if s.state == State::HalfOpen),
        "{g3:?}"
    );
    // A late result of the previous generation changes nothing.
    let s = f
        .store()
        .complete_probe(name, &p, generation - 1, "old", Outcome::Failure)
        .await
        .unwrap();
    assert_eq!((s.state, s.generation), (State::HalfOpen, generation));
    // An ignored probe gives its permit back.
    f.store()
        .complete_probe(name, &p, generation, "p2", Outcome::Ignored)
        .await
        .unwrap();
    assert_eq!(granted(f, name, &p, "p4").await, generation);
    let s = f
        .store()
        .complete_probe(name, &p, generation, "p1", Outcome::Success)
        .await
        .unwrap();
    assert_eq!(s.state, State::HalfOpen);
    let s = f
        .store()
        .complete_probe(name, &p, generation, "p4", Outcome::Success)
        .await
        .unwrap();
    assert_eq!((s.state, s.generation), (State::Closed, generation + 1));
    assert_eq!(s.window.calls, 0, "closing starts a fresh window");
    let s = f
        .store()
        .complete_probe(name, &p, generation, "p1", Outcome::Success)
        .await
        .unwrap();
    assert_eq!(
        (s.state, s.generation),
        (State::Closed, generation + 1),
        "a late success after closing changes nothing"
    );
}

/// A failed probe opens again, for the backoff's longer wait.
pub async fn failed_probe_reopens_with_backoff(f: &Fixture) {
    let name = "backoff";
    let p = policy(|c| {
        c.backoff = Some(Backoff {
            multiplier: 4.0,
            max_wait: Duration::from_secs(5),
        });
    });
    trip(f, name, &p).await;
    f.advance(WAIT);
    let generation = granted(f, name, &p, "p").await;
    let s = f
        .store()
        .complete_probe(name, &p, generation, "p", Outcome::Failure)
        .await
        .unwrap();
    assert_eq!(
        (s.state, s.retry_after),
        (State::Open, WAIT * 4),
        "the second trip in a row waits 4x"
    );
    f.advance(WAIT * 4 - TICK);
    let s = f.store().acquire_probe(name, &p, "early").await.unwrap();
    assert!(
        matches!(s, ProbeGrant::Denied(ref s) if s.state == State::Open),
        "{s:?}"
    );
    f.advance(TICK);
    granted(f, name, &p, "on-time").await;
}

/// A half-open period that does not close within `max_half_open_wait` opens again.
pub async fn max_half_open_wait_reopens(f: &Fixture) {
    let name = "maxhalf";
    let p = policy(|c| c.max_half_open_wait = Duration::from_millis(200));
    trip(f, name, &p).await;
    f.advance(WAIT);
    granted(f, name, &p, "p").await;
    f.advance(Duration::from_millis(200) - TICK);
    let s = f.store().flush(name, &p, &read()).await.unwrap();
    assert_eq!(s.state, State::HalfOpen);
    f.advance(TICK);
    let s = f.store().flush(name, &p, &read()).await.unwrap();
    assert_eq!(s.state, State::Open, "a half-open period never sticks");
}

/// A lease whose holder died is handed out again once it expires.
pub async fn expired_leases_are_handed_out_again(f: &Fixture) {
    let name = "lease";
    let p = policy(|c| {
        c.half_open_probes = 1;
        c.success_threshold = 1;
        c.shared.probe_lease = Duration::from_millis(150);
    });
    trip(f, name, &p).await;
    f.advance(WAIT);
    granted(f, name, &p, "dead").await;
    f.advance(Duration::from_millis(150) - TICK);
    assert!(matches!(
        f.store().acquire_probe(name, &p, "x").await.unwrap(),
        ProbeGrant::Denied(_)
    ));
    f.advance(TICK);
    granted(f, name, &p, "y").await;
}

/// Only a completion that holds a live lease counts: a made-up lease id, a duplicate report
/// and a report after the lease expired change nothing (the lease may have been handed to
/// another instance meanwhile).
pub async fn only_a_held_lease_completes_a_probe(f: &Fixture) {
    let name = "held";
    let p = policy(|c| {
        c.half_open_probes = 3;
        c.success_threshold = 2;
        c.shared.probe_lease = Duration::from_millis(150);
    });
    trip(f, name, &p).await;
    f.advance(WAIT);
    let generation = granted(f, name, &p, "p1").await;
    granted(f, name, &p, "p2").await;
    for (lease, outcome) in [
        ("made-up", Outcome::Success),
        ("made-up-too", Outcome::Failure),
    ] {
        let s = f
            .store()
            .complete_probe(name, &p, generation, lease, outcome)
            .await
            .unwrap();
        assert_eq!(
            (s.state, s.generation),
            (State::HalfOpen, generation),
            "a lease nobody was granted counts for nothing ({outcome:?})"
        );
    }
    let s = f
        .store()
        .complete_probe(name, &p, generation, "p1", Outcome::Success)
        .await
        .unwrap();
    assert_eq!(s.state, State::HalfOpen, "one success of the two needed");
    let s = f
        .store()
        .complete_probe(name, &p, generation, "p1", Outcome::Success)
        .await
        .unwrap();
    assert_eq!(s.state, State::HalfOpen, "a duplicate report counts once");
    f.advance(Duration::from_millis(150));
    let s = f
        .store()
        .complete_probe(name, &p, generation, "p2", Outcome::Success)
        .await
        .unwrap();
    assert_eq!(
        s.state,
        State::HalfOpen,
        "a report after its lease expired is late"
    );
    let g = granted(f, name, &p, "p3").await;
    let s = f
        .store()
        .complete_probe(name, &p, g, "p3", Outcome::Success)
        .await
        .unwrap();
    assert_eq!(
        (s.state, s.generation),
        (State::Closed, generation + 1),
        "the second held lease closes"
    );
}

/// With a quorum, one failing instance cannot open the fleet; enough of them do.
pub async fn quorum_needs_enough_failing_instances(f: &Fixture) {
    let name = "quorum";
    let p = policy(|c| {
        c.shared.quorum = Some(Quorum {
            min_instances: 2,
            min_percent: 50.0,
        });
    });
    for i in ["ok1", "ok2"] {
        f.store()
            .flush(name, &p, &batch(i, 0, 0, 0, false))
            .await
            .unwrap();
    }
    let s = f
        .store()
        .flush(name, &p, &batch("bad1", 10, 10, 0, true))
        .await
        .unwrap();
    assert_eq!(s.state, State::Closed, "one bad node cannot open the fleet");
    let s = f
        .store()
        .flush(name, &p, &batch("bad2", 1, 1, 0, true))
        .await
        .unwrap();
    assert_eq!(s.state, State::Open, "2 of 4 instances failing");
}

/// Manual states hold fleet-wide until changed by hand; reset forgets everything.
pub async fn manual_control_is_fleet_wide(f: &Fixture) {
    let (name, p) = ("manual", policy(|_| {}));
    let s = f
        .store()
        .apply(name, &p, ManualOp::ForceOpen)
        .await
        .unwrap();
    assert_eq!(s.state, State::ForcedOpen);
    f.advance(Duration::from_secs(3_600));
    let s = f.store().flush(name, &p, &read()).await.unwrap();
    assert_eq!(s.state, State::ForcedOpen, "no wait ends a forced open");
    let s = f.store().apply(name, &p, ManualOp::Disable).await.unwrap();
    assert_eq!(s.state, State::Disabled);
    let s = f
        .store()
        .flush(name, &p, &batch("a", 100, 100, 0, true))
        .await
        .unwrap();
    assert_eq!(s.state, State::Disabled, "disabled never trips");
    let s = f
        .store()
        .apply(name, &p, ManualOp::MetricsOnly)
        .await
        .unwrap();
    assert_eq!(s.state, State::MetricsOnly);
    let s = f.store().apply(name, &p, ManualOp::Reset).await.unwrap();
    assert_eq!(
        (s.state, s.generation, s.window.calls),
        (State::Closed, 4, 0)
    );
}

/// Names are data: none reaches another breaker's state or escapes its keys.
pub async fn hostile_names_are_isolated(f: &Fixture) {
    let p = policy(|_| {});
    let name = "names";
    let evil = format!("{name}}}:s");
    trip(f, &evil, &p).await;
    let s = f.store().flush(name, &p, &read()).await.unwrap();
    assert_eq!(s.state, State::Closed);
    let s = f.store().flush(&evil, &p, &read()).await.unwrap();
    assert_eq!(s.state, State::Open);
    for other in [format!("{{{name}}}"), format!("{name}%7D:s"), String::new()] {
        let s = f.store().flush(&other, &p, &read()).await.unwrap();
        assert_eq!(s.state, State::Closed, "{other:?}");
    }
}

/// A store whose backend answers reports itself healthy (and stays so across calls).
pub async fn a_reachable_store_is_healthy(f: &Fixture) {
    f.store()
        .health()
        .await
        .expect("a reachable store is healthy");
    f.store().health().await.expect("and stays healthy");
}
