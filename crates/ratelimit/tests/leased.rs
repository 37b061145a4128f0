//! `LeasedStore` over the memory store and real Redis servers from the test kit: the public
//! conformance suite (one test per case) over memory, Redis, a 3-master cluster and TLS; the
//! lease script against the memory store's arithmetic; several instances in one process on
//! one key; what a slow, killed and restarted Redis does to decisions; clock skew; bounded
//! memory; metrics. (Separate processes: `tests/fleet.rs`.)
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use palisade_ratelimit::{
    Algorithm, Clock, DecisionSource, FailureMode, FakeClock, LeaseConfig, LeaseRequest,
    LeasedStore, MemoryStore, Policy, Quota, RateLimiter, RedisConnection, RedisStore, Store,
    SystemClock,
};
use palisade_testkit::{RedisServer, test_redis};

/// A configuration that leases even the small quotas of the conformance suite: every lease
/// may take all that is left, buckets tolerate half their limit, and leases are asked on the
/// request that needs them (no background calls, so every figure is deterministic).
fn eager() -> LeaseConfig {
    LeaseConfig::default()
        .max_share(1.0)
        .max_overshoot(0.5)
        .max_lease(Duration::from_secs(30))
        .prefetch(false)
}

mod conformance_over_memory {
    use super::*;
    use palisade_ratelimit::testing::Fixture;

    fn leased() -> Fixture {
        let clock = FakeClock::new();
        let inner = MemoryStore::builder().clock(clock.clone()).build();
        let store = LeasedStore::builder(inner)
            .clock(clock.clone())
            .build()
            .unwrap();
        Fixture::new(store, clock)
    }

    palisade_ratelimit::store_conformance_tests!(leased());
}

mod conformance_over_memory_eager {
    use super::*;
    use palisade_ratelimit::testing::Fixture;

    fn leased() -> Fixture {
        let clock = FakeClock::new();
        let inner = MemoryStore::builder().clock(clock.clone()).build();
        let store = LeasedStore::builder(inner)
            .config(eager())
            .clock(clock.clone())
            .build()
            .unwrap();
        Fixture::new(store, clock)
    }

    palisade_ratelimit::store_conformance_tests!(leased());
}

mod conformance_over_redis {
    use super::*;
    use palisade_ratelimit::testing::Fixture;

    fn leased() -> Fixture {
        let redis = test_redis().expect("a Redis for the test");
        let clock = FakeClock::new();
        let inner = RedisStore::new(redis.pool())
            .with_prefix(redis.prefix().as_str())
            .with_clock(clock.clone());
        let store = LeasedStore::builder(inner)
            .clock(clock.clone())
            .build()
            .unwrap();
        Fixture::new(store, clock).keep_alive(redis)
    }

    palisade_ratelimit::store_conformance_tests!(leased());
}

mod conformance_over_redis_eager {
    use super::*;
    use palisade_ratelimit::testing::Fixture;

    fn leased() -> Fixture {
        let redis = test_redis().expect("a Redis for the test");
        let clock = FakeClock::new();
        let inner = RedisStore::new(redis.pool())
            .with_prefix(redis.prefix().as_str())
            .with_clock(clock.clone());
        let store = LeasedStore::builder(inner)
            .config(eager())
            .clock(clock.clone())
            .build()
            .unwrap();
        Fixture::new(store, clock).keep_alive(redis)
    }

    palisade_ratelimit::store_conformance_tests!(leased());
}

mod conformance_over_redis_cluster {
    use super::*;
    use palisade_ratelimit::testing::Fixture;

    async fn leased() -> Fixture {
        let cluster = palisade_testkit::RedisCluster::start_async(3)
            .await
            .expect("a 3-master cluster");
        let clock = FakeClock::new();
        let inner = RedisStore::cluster(cluster.pool()).with_clock(clock.clone());
        let store = LeasedStore::builder(inner)
            .config(eager())
            .clock(clock.clone())
            .build()
            .unwrap();
        Fixture::new(store, clock).keep_alive(cluster)
    }

    palisade_ratelimit::store_conformance_tests!(leased());
}

mod conformance_over_tls {
    use super::*;
    use palisade_ratelimit::testing::Fixture;

    async fn leased() -> Fixture {
        let server = RedisServer::builder()
            .tls()
            .start_async()
            .await
            .expect("a TLS redis-server");
        assert!(server.url().starts_with("rediss://"));
        let clock = FakeClock::new();
        let inner = RedisStore::new(server.pool()).with_clock(clock.clone());
        let store = LeasedStore::builder(inner)
            .config(eager())
            .clock(clock.clone())
            .build()
            .unwrap();
        Fixture::new(store, clock).keep_alive(server)
    }

    palisade_ratelimit::store_conformance_tests!(leased());
}

fn next(seed: &mut u64, n: u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed % n
}

/// The lease script is the memory store's lease arithmetic, line by line: random leases
/// (with held units, fresh and stale), releases, acquisitions and refunds on both stores
/// with one fake clock give identical answers, for every algorithm and multi-window
/// policies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_script_decides_exactly_like_memory() {
    let redis = test_redis().unwrap();
    let clock = FakeClock::new();
    let remote = RedisStore::new(redis.pool())
        .with_prefix(redis.prefix().as_str())
        .with_clock(clock.clone());
    let local = MemoryStore::builder().clock(clock.clone()).build();
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    for alg in Algorithm::ALL {
        let policy = Policy::builder(format!("lease-diff-{alg}"))
            .algorithm(alg)
            .quota(
                "fast",
                Quota::new(40, Duration::from_millis(700)).with_burst(50),
            )
            .quota("slow", Quota::new(90, Duration::from_secs(5)))
            .build()
            .unwrap();
        let single = Policy::single(
            format!("lease-diff-1-{alg}"),
            alg,
            Quota::new(60, Duration::from_millis(900)),
        )
        .unwrap();
        let mut grants: Vec<(String, Policy, u64, u64)> = Vec::new();
        for step in 0..500 {
            clock.advance(Duration::from_micros(
                next(&mut seed, 4) * next(&mut seed, 90_000),
            ));
            let key = ["a", "b"][next(&mut seed, 2) as usize];
            let p = if next(&mut seed, 2) == 0 {
                &policy
            } else {
                &single
            };
            match next(&mut seed, 10) {
                0 | 1 if !grants.is_empty() => {
                    let (k, gp, units, at) =
                        grants.swap_remove(next(&mut seed, grants.len() as u64) as usize);
                    remote.release(&k, &gp, units, at).await.unwrap();
                    local.release(&k, &gp, units, at).await.unwrap();
                }
                2 => {
                    let cost = next(&mut seed, 3);
                    remote.refund(key, p, cost).await.unwrap();
                    local.refund(key, p, cost).await.unwrap();
                }
                3 => {
                    let cost = next(&mut seed, 5);
                    let r = remote.acquire(key, p, cost).await.unwrap();
                    let l = local.acquire(key, p, cost).await.unwrap();
                    assert_eq!(r, l, "{alg} step {step}: acquire differs");
                }
                _ => {
                    let (held, held_at) = match grants.iter().position(|g| g.0 == key && g.1 == *p)
                    {
                        Some(i) if next(&mut seed, 2) == 0 => {
                            let g = grants.swap_remove(i);
                            (g.2, g.3)
                        }
                        _ => (0, 0),
                    };
                    let request = LeaseRequest::new(next(&mut seed, 6))
                        .held(held, held_at)
                        .want(
                            next(&mut seed, 30),
                            Duration::from_millis(next(&mut seed, 3) * 400),
                        )
                        .max_share_permille([100, 500, 1000][next(&mut seed, 3) as usize]);
                    let r = remote.lease(key, p, &request).await.unwrap();
                    let l = local.lease(key, p, &request).await.unwrap();
                    assert_eq!(r, l, "{alg} step {step}: lease {request:?} differs");
                    if !r.stale_held && held > r.used_held && !r.decision.allowed {
                        grants.push((key.to_owned(), p.clone(), held, held_at));
                    } else if !r.stale_held && held > r.used_held {
                        grants.push((key.to_owned(), p.clone(), held - r.used_held, held_at));
                    }
                    if r.granted > 0 {
                        grants.push((key.to_owned(), p.clone(), r.granted, r.granted_at));
                    }
                }
            }
        }
    }
}

/// Counts the decisions of a run: admitted, and of those how many without a round trip.
#[derive(Debug, Default)]
struct Tally {
    admitted: AtomicU64,
    local: AtomicU64,
    decisions: AtomicU64,
}

async fn hammer(
    store: LeasedStore,
    policy: Policy,
    key: &str,
    tally: Arc<Tally>,
    tasks: usize,
    per_task: usize,
) {
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (store, policy, key, tally) = (
            store.clone(),
            policy.clone(),
            key.to_owned(),
            Arc::clone(&tally),
        );
        handles.push(tokio::spawn(async move {
            for _ in 0..per_task {
                let d = store.acquire(&key, &policy, 1).await.unwrap();
                tally.decisions.fetch_add(1, Ordering::Relaxed);
                if d.allowed {
                    tally.admitted.fetch_add(1, Ordering::Relaxed);
                    if d.source == DecisionSource::Lease {
                        tally.local.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

/// A multiplexed connection that waits for every reply (no response or connection timeout).
async fn patient_connection(url: &str) -> palisade_testkit::redis::aio::MultiplexedConnection {
    let config = palisade_testkit::redis::AsyncConnectionConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(None);
    palisade_testkit::redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}

/// Every store gives back what it holds, and no call of theirs is in flight afterwards.
async fn give_back_everything(stores: &[LeasedStore], policy: &Policy) {
    loop {
        for store in stores {
            store.release_all().await.unwrap();
        }
        for store in stores {
            store.settled().await;
        }
        // A background renewal sent before a give-back may have landed after it.
        if stores.iter().all(|s| s.allowance("hot", policy) == 0) {
            return;
        }
    }
}

/// Four instances (each its own `LeasedStore` and connection) on one key, 16 tasks each,
/// far more requests than the quota: exactly the quota is admitted for every leasable
/// algorithm (server time frozen by a fake clock: no refill, no new window), most of it
/// without a round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_in_one_process_admit_exactly_the_quota() {
    let redis = test_redis().unwrap();
    let clock = FakeClock::new();
    for alg in [
        Algorithm::Gcra,
        Algorithm::TokenBucket,
        Algorithm::FixedWindow,
        Algorithm::SlidingWindowCounter,
        Algorithm::SlidingWindowLog,
    ] {
        let policy = Policy::single(format!("inproc-{alg}"), alg, Quota::per_hour(20_000)).unwrap();
        let tally = Arc::new(Tally::default());
        let mut instances = Vec::new();
        let mut stores = Vec::new();
        for _ in 0..4 {
            // Without the client's 500 ms reply timeout: a call it gave up on may still run,
            // and its grant would be lost (the exact balance below is about leases, not
            // about a reply slower than that on a loaded machine).
            let inner = RedisStore::from_connection(RedisConnection::Multiplexed(
                patient_connection(redis.url()).await,
            ))
            .with_prefix(redis.prefix().as_str())
            .with_clock(clock.clone());
            let store = LeasedStore::builder(inner).build().unwrap();
            stores.push(store.clone());
            instances.push(tokio::spawn(hammer(
                store,
                policy.clone(),
                "hot",
                Arc::clone(&tally),
                16,
                500,
            )));
        }
        for i in instances {
            i.await.unwrap();
        }
        // An instance that stops while holding allowance strands it until its leases end;
        // with the server's time frozen they never do, so each gives back what it holds (as
        // at shutdown) and one instance spends what is left.
        let before_release = tally.admitted.load(Ordering::Relaxed);
        give_back_everything(&stores, &policy).await;
        // The ledger balances: with nothing held, Redis counts exactly what was admitted
        // (a unit granted and neither spent, held nor given back would show here).
        let left = stores[0]
            .inner()
            .peek("hot", &policy)
            .await
            .unwrap()
            .remaining()
            .unwrap();
        assert_eq!(
            20_000 - left,
            before_release,
            "{alg}: Redis counts {} units, {before_release} were admitted and none is held",
            20_000 - left
        );
        hammer(
            stores[0].clone(),
            policy.clone(),
            "hot",
            Arc::clone(&tally),
            1,
            25_000 - before_release as usize,
        )
        .await;
        let admitted = tally.admitted.load(Ordering::Relaxed);
        println!("{alg}: {before_release} admitted before the give-back, {admitted} after");
        let local = tally.local.load(Ordering::Relaxed);
        assert!(
            admitted <= 20_000,
            "{alg}: {admitted} admitted, over the quota"
        );
        // 32,000 requests for 20,000 units, then the leftovers given back and spent. The
        // balance is exact: what is left in Redis once everything is given back again is
        // what was not admitted. (The last instance may see Redis empty while a give-back of
        // its own ended lease is still on its way, and repeat that denial for the rest of
        // its requests: "exactly the quota admitted" would be a race, the balance is not.)
        give_back_everything(&stores, &policy).await;
        let left = stores[0]
            .inner()
            .peek("hot", &policy)
            .await
            .unwrap()
            .remaining()
            .unwrap();
        assert_eq!(
            admitted + left,
            20_000,
            "{alg}: {admitted} admitted and {left} left in Redis"
        );
        assert!(admitted >= 19_000, "{alg}: only {admitted} admitted");
        if alg == Algorithm::SlidingWindowLog {
            assert_eq!(local, 0, "the log is never leased");
            assert_eq!(admitted, 20_000);
        } else {
            assert!(
                local * 2 > admitted,
                "{alg}: only {local} of {admitted} decided locally"
            );
        }
    }
}

fn fault_store(server: &RedisServer, config: LeaseConfig) -> LeasedStore {
    let inner = RedisStore::new(server.pool()).with_timeout(Duration::from_millis(300));
    LeasedStore::builder(inner).config(config).build().unwrap()
}

/// Redis killed while an instance holds allowance: requests are admitted from it (no
/// error, no waiting), then the failure mode decides (fail-closed: denied); after a restart
/// (an empty Redis: the window's count is lost, as for any store without persistence) the
/// instance leases again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_spends_the_allowance_then_follows_the_failure_mode() {
    let mut server = RedisServer::builder().start_async().await.unwrap();
    let store = fault_store(
        &server,
        LeaseConfig::default()
            .max_lease(Duration::from_secs(60))
            .prefetch(false),
    );
    let limiter = RateLimiter::builder(store.clone())
        .failure_mode(FailureMode::FailClosed)
        .timeout(Duration::from_millis(500))
        .build();
    let policy = Policy::single(
        "killed",
        Algorithm::FixedWindow,
        Quota::new(1_000_000, Duration::from_secs(366 * 86_400)),
    )
    .unwrap();
    // Demand builds up a lease.
    let mut rounds = 0;
    while store.allowance("k", &policy) < 50 {
        for _ in 0..100 {
            assert!(limiter.acquire("k", &policy, 1).await.allowed);
        }
        rounds += 1;
        assert!(rounds < 100, "no lease was granted");
    }
    let held = store.allowance("k", &policy);
    tokio::task::block_in_place(|| server.kill());
    let mut from_lease = 0;
    loop {
        let d = limiter.acquire("k", &policy, 1).await;
        if d.source != DecisionSource::Lease {
            assert_eq!(d.source, DecisionSource::FailClosed, "{d:?}");
            assert!(!d.allowed);
            break;
        }
        assert!(d.allowed);
        from_lease += 1;
    }
    assert_eq!(from_lease, held, "every unit held was spent, no more");
    assert!(limiter.health().await.is_err());
    tokio::task::block_in_place(|| server.restart()).unwrap();
    let started = Instant::now();
    loop {
        let d = limiter.acquire("k", &policy, 1).await;
        if d.allowed && d.source == DecisionSource::Store {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not back on Redis: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A paused (hung) Redis never makes a request wait while allowance is left: decisions stay
/// local and fast; once it is spent, the limiter's timeout and failure mode apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_never_stalls_a_request_while_allowance_is_left() {
    let server = RedisServer::builder().start_async().await.unwrap();
    let store = fault_store(
        &server,
        LeaseConfig::default().max_lease(Duration::from_secs(60)),
    );
    let limiter = RateLimiter::builder(store.clone())
        .failure_mode(FailureMode::FailOpen)
        .timeout(Duration::from_millis(100))
        .build();
    let policy = Policy::single(
        "hung",
        Algorithm::SlidingWindowCounter,
        Quota::new(10_000_000, Duration::from_secs(366 * 86_400)),
    )
    .unwrap();
    let mut rounds = 0;
    while store.allowance("k", &policy) < 200 {
        for _ in 0..200 {
            limiter.acquire("k", &policy, 1).await;
        }
        rounds += 1;
        assert!(rounds < 200, "no lease was granted");
    }
    // Long enough to outlast the test on a loaded machine; resumed at the end.
    server.pause(Duration::from_secs(60));
    let held = store.allowance("k", &policy);
    let mut slowest = Duration::ZERO;
    for _ in 0..held.min(100) {
        let started = Instant::now();
        let d = limiter.acquire("k", &policy, 1).await;
        slowest = slowest.max(started.elapsed());
        assert!(d.allowed && d.source == DecisionSource::Lease, "{d:?}");
    }
    assert!(
        slowest < Duration::from_millis(50),
        "a local decision took {slowest:?}"
    );
    // Spend the rest in one request (the lease may hold a large slice: one unit at a time
    // outlasted a 3 s pause once in CI); the next request waits for the timeout and fails
    // open.
    loop {
        let rest = store.allowance("k", &policy);
        if rest == 0 {
            break;
        }
        let d = limiter.acquire("k", &policy, rest).await;
        assert_eq!(d.source, DecisionSource::Lease, "{d:?}");
    }
    let d = limiter.acquire("k", &policy, 1).await;
    assert_eq!(d.source, DecisionSource::FailOpen, "{d:?}");
    server.resume();
}

/// A request that gives up (its limiter's timeout) while its lease call is out strands
/// nothing: the call's answer still reaches the instance, which then holds what Redis
/// granted (and the units the call carried); a call that never left is taken back. The
/// ledger balances: what Redis counts is what was admitted, plus what is held, plus at most
/// the cost of each request that gave up (counted when its call ran). Before the fix the
/// grant of every such call was counted in Redis and held by nobody (a lease of at least 5
/// units per give-up here, and of up to a tenth of what remained under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_gives_up_strands_nothing() {
    let server = RedisServer::builder().start_async().await.unwrap();
    // No store timeout, nor the client's (500 ms by default): the call outlives the pause
    // and is answered after it. (A call the client gives up on after sending it is an
    // error, and the store may have run it: that grant is lost, as before.)
    let inner = RedisStore::from_connection(RedisConnection::Multiplexed(
        patient_connection(&server.url()).await,
    ));
    let store = LeasedStore::builder(inner)
        .config(
            LeaseConfig::default()
                .max_lease(Duration::from_secs(60))
                .prefetch(false),
        )
        .build()
        .unwrap();
    let limiter = RateLimiter::builder(store.clone())
        .failure_mode(FailureMode::FailClosed)
        .timeout(Duration::from_millis(20))
        .build();
    let quota = 1_000_000;
    let policy = Policy::single(
        "gave-up",
        Algorithm::FixedWindow,
        Quota::new(quota, Duration::from_secs(366 * 86_400)),
    )
    .unwrap();
    let (mut admitted, mut gave_up) = (0u64, 0u64);
    for _ in 0..4 {
        // Spend what is held, so that the next request calls Redis.
        loop {
            let rest = store.allowance("k", &policy);
            if rest == 0 {
                break;
            }
            let d = limiter.acquire("k", &policy, rest).await;
            assert!(d.allowed && d.source == DecisionSource::Lease, "{d:?}");
            admitted += rest;
        }
        // Redis hangs for far longer than the limiter waits: the request gives up while
        // its call is queued or in Redis' socket, and the call runs after the pause.
        server.pause(Duration::from_millis(300));
        let d = limiter.acquire("k", &policy, 1).await;
        if d.allowed {
            admitted += 1;
        } else {
            assert_eq!(d.source, DecisionSource::FailClosed, "{d:?}");
            gave_up += 1;
        }
        store.settled().await;
        let left = store
            .inner()
            .peek("k", &policy)
            .await
            .unwrap()
            .remaining()
            .unwrap();
        let counted = quota - left;
        let held = store.allowance("k", &policy);
        assert!(
            counted >= admitted + held && counted <= admitted + held + gave_up,
            "Redis counts {counted}; admitted {admitted}, held {held}, {gave_up} gave up"
        );
    }
    assert!(
        gave_up > 0,
        "no request gave up: the pause never outlasted the timeout"
    );
}

/// Redis restarted mid-window under four instances. The restarted Redis forgot the
/// window's count (as it would for any store without persistence); the instances spend the
/// allowance they held (counted on the old server), fail closed while they reconnect, then
/// lease again from the new server: after the restart they admit at most what they held
/// plus one quota, and nothing before it exceeded the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_window() {
    let mut server = RedisServer::builder().start_async().await.unwrap();
    let quota = 4_000;
    let policy = Policy::single(
        "restart",
        Algorithm::FixedWindow,
        Quota::new(quota, Duration::from_secs(366 * 86_400)),
    )
    .unwrap();
    // Generous timeouts: with the limiter's default 50 ms a lease call queued on a loaded
    // machine was refused (fail-closed) and 1,597 of 1,600 passed before the restart.
    let stores: Vec<LeasedStore> = (0..4)
        .map(|_| {
            let inner = RedisStore::new(server.pool()).with_timeout(Duration::from_secs(2));
            LeasedStore::builder(inner)
                .config(LeaseConfig::default().max_lease(Duration::from_secs(60)))
                .build()
                .unwrap()
        })
        .collect();
    let limiters: Vec<RateLimiter> = stores
        .iter()
        .map(|s| {
            RateLimiter::builder(s.clone())
                .failure_mode(FailureMode::FailClosed)
                .timeout(Duration::from_secs(2))
                .build()
        })
        .collect();
    let run = |requests: usize| {
        let admitted = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for l in &limiters {
            for _ in 0..4 {
                let (l, p, a) = (l.clone(), policy.clone(), Arc::clone(&admitted));
                tasks.push(tokio::spawn(async move {
                    for _ in 0..requests {
                        if l.acquire("k", &p, 1).await.allowed {
                            a.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
        }
        async move {
            for t in tasks {
                t.await.unwrap();
            }
            admitted.load(Ordering::Relaxed)
        }
    };
    let before = run(100).await;
    assert_eq!(before, 1_600, "under the quota, everything is admitted");
    for s in &stores {
        s.settled().await;
    }
    let held: u64 = stores.iter().map(|s| s.allowance("k", &policy)).sum();
    assert!(held > 0, "no instance held a lease");
    tokio::task::block_in_place(|| server.restart()).unwrap();
    // Twice what the new server can give.
    let mut after = 0;
    for _ in 0..4 {
        after += run(250).await;
    }
    assert!(
        after <= held + quota,
        "{after} admitted after the restart, holding {held} before it"
    );
    let left = stores[0].inner().peek("k", &policy).await.unwrap();
    assert_eq!(
        left.quota(0).unwrap().remaining,
        0,
        "the instances did not lease the new server's quota: {after} admitted"
    );
}

/// A clock that is `offset` µs ahead of (or behind) the system clock.
#[derive(Debug, Clone, Copy)]
struct Skewed(i64);

impl Clock for Skewed {
    fn now_micros(&self) -> u64 {
        SystemClock.now_micros().saturating_add_signed(self.0)
    }
}

/// Instances whose clocks are an hour apart share one Redis on its own time: leases are
/// timed by durations of each instance's clock, never by its reading, so the fleet admits
/// exactly the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_between_instances_does_not_matter() {
    let redis = test_redis().unwrap();
    for alg in [
        Algorithm::Gcra,
        Algorithm::FixedWindow,
        Algorithm::SlidingWindowCounter,
    ] {
        // A bucket that refills one unit per 10 s (a few at most during the test).
        let policy = Policy::single(
            format!("skew-{alg}"),
            alg,
            Quota::new(3_000, Duration::from_secs(30_000)),
        )
        .unwrap();
        let tally = Arc::new(Tally::default());
        let mut tasks = Vec::new();
        for skew in [-3_600_000_000_i64, 0, 3_600_000_000, 86_400_000_000] {
            let inner = RedisStore::new(redis.pool()).with_prefix(redis.prefix().as_str());
            let store = LeasedStore::builder(inner)
                .config(LeaseConfig::default().max_overshoot(0.02))
                .clock(Skewed(skew))
                .build()
                .unwrap();
            tasks.push(tokio::spawn(hammer(
                store,
                policy.clone(),
                "k",
                Arc::clone(&tally),
                8,
                150,
            )));
        }
        let started = Instant::now();
        for t in tasks {
            t.await.unwrap();
        }
        let refill = if alg == Algorithm::Gcra {
            started.elapsed().as_secs() / 10 + 1
        } else {
            0
        };
        let admitted = tally.admitted.load(Ordering::Relaxed);
        assert!(admitted <= 3_000 + refill, "{alg}: {admitted}");
        assert!(admitted >= 2_800, "{alg}: {admitted}");
        assert!(
            tally.local.load(Ordering::Relaxed) > 0,
            "{alg}: nothing leased"
        );
    }
}

/// A leased store keeps at most `max_keys` keys with leases; requests for further keys are
/// decided by the shared store, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_bounded_by_max_keys() {
    let clock = FakeClock::new();
    let inner = MemoryStore::builder().clock(clock.clone()).build();
    let store = LeasedStore::builder(inner.clone())
        .config(eager().max_keys(64))
        .clock(clock.clone())
        .build()
        .unwrap();
    let policy = Policy::single("bounded", Algorithm::FixedWindow, Quota::per_minute(10)).unwrap();
    for i in 0..1_000 {
        let key = format!("k{i}");
        for _ in 0..10 {
            assert!(
                store.acquire(&key, &policy, 1).await.unwrap().allowed,
                "{key}"
            );
        }
        assert!(
            !store.acquire(&key, &policy, 1).await.unwrap().allowed,
            "{key}"
        );
    }
    let held: usize = (0..1_000)
        .filter(|i| store.allowance(&format!("k{i}"), &policy) > 0)
        .count();
    assert!(held <= 64, "{held} keys hold leases");
}

/// `release_all` gives every unspent window unit back at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_all_gives_everything_back() {
    let clock = FakeClock::new();
    let inner = MemoryStore::builder().clock(clock.clone()).build();
    let store = LeasedStore::builder(inner.clone())
        .config(eager())
        .clock(clock.clone())
        .build()
        .unwrap();
    let policy =
        Policy::single("shutdown", Algorithm::FixedWindow, Quota::per_hour(1_000)).unwrap();
    // Demand: leases grow.
    for _ in 0..50 {
        store.acquire("k", &policy, 1).await.unwrap();
        clock.advance(Duration::from_millis(10));
    }
    assert!(store.allowance("k", &policy) > 0);
    let used = 50;
    store.release_all().await.unwrap();
    assert_eq!(store.allowance("k", &policy), 0);
    assert_eq!(
        inner.peek_sync("k", &policy).quota(0).unwrap().remaining,
        1_000 - used
    );
}

/// Lease calls and units are counted: granted, given back, dropped.
#[test]
fn lease_metrics_are_recorded() {
    let lines = palisade_testkit::record_metrics(|| async {
        let clock = FakeClock::new();
        let inner = MemoryStore::builder().clock(clock.clone()).build();
        let store = LeasedStore::builder(inner)
            .config(
                eager()
                    .max_lease(Duration::from_secs(1))
                    .max_sparse_lease(Duration::ZERO),
            )
            .clock(clock.clone())
            .build()
            .unwrap();
        let policy =
            Policy::single("metered", Algorithm::FixedWindow, Quota::per_hour(100)).unwrap();
        for _ in 0..5 {
            store.acquire("k", &policy, 1).await.unwrap();
            clock.advance(Duration::from_millis(1));
        }
        clock.advance(Duration::from_secs(2));
        store.acquire("k", &policy, 1).await.unwrap();
        store.release_all().await.unwrap();
    });
    // 1: one unit asked (no demand yet), granted; 2 and 3 from it; 4: demand of about one a
    // millisecond asks a second's worth, and gets all 97 left; 5 and 6 from it; 7 (two
    // seconds later) finds the lease ended: one of its units pays, nothing is left to
    // lease, and the 94 it holds are given back at shutdown.
    assert_eq!(
        lines,
        [
            "palisade_ratelimit_lease_calls_total{outcome=empty,policy=metered} 1",
            "palisade_ratelimit_lease_calls_total{outcome=granted,policy=metered} 2",
            "palisade_ratelimit_lease_units_total{fate=granted,policy=metered} 98",
            "palisade_ratelimit_lease_units_total{fate=returned,policy=metered} 94",
        ]
    );
}

/// An ended bucket lease whose unspent units the bucket's refill already covers is not
/// given back (Redis would give back nothing: `units − ⌈elapsed / interval⌉`); it is
/// counted as `refilled`. A window's unspent units still go back.
#[test]
fn an_ended_bucket_lease_the_refill_covers_is_not_given_back() {
    let lines = palisade_testkit::record_metrics(|| async {
        let clock = FakeClock::new();
        let inner = MemoryStore::builder().clock(clock.clone()).build();
        let store = LeasedStore::builder(inner)
            .config(
                LeaseConfig::default()
                    .max_lease(Duration::from_secs(1))
                    .max_sparse_lease(Duration::ZERO)
                    .prefetch(false),
            )
            .clock(clock.clone())
            .build()
            .unwrap();
        // GCRA: one unit per millisecond, so a 1 s lease's unit is refilled long before
        // it ends. Fixed window: nothing refills within the hour.
        let bucket =
            Policy::single("refill-gcra", Algorithm::Gcra, Quota::per_hour(3_600_000)).unwrap();
        let window = Policy::single(
            "refill-window",
            Algorithm::FixedWindow,
            Quota::per_hour(100),
        )
        .unwrap();
        for policy in [&bucket, &window] {
            // A first decision leases one unit beyond its own (no demand seen yet).
            assert!(store.acquire("k", policy, 1).await.unwrap().allowed);
            assert_eq!(store.allowance("k", policy), 1);
        }
        clock.advance(Duration::from_secs(2));
        // The sweeper (four visits per `max_lease`, real time) finds both leases ended.
        tokio::time::sleep(Duration::from_millis(600)).await;
        store.settled().await;
    });
    assert!(
        lines.iter().any(
            |l| l == "palisade_ratelimit_lease_units_total{fate=refilled,policy=refill-gcra} 1"
        ),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l
                == "palisade_ratelimit_lease_units_total{fate=returned,policy=refill-window} 1"),
        "{lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("fate=returned,policy=refill-gcra")),
        "{lines:?}"
    );
}

/// A key decided less often than once per `max_lease` is leased longer (up to
/// `max_sparse_lease`, for at least 4 units), so that its next requests find the lease; with
/// sparse leases off, each lease has ended before the key's next request.
#[tokio::test]
async fn a_sparse_key_is_leased_until_its_next_requests() {
    for (sparse, expected) in [(Duration::from_secs(10), 3), (Duration::ZERO, 0)] {
        let clock = FakeClock::new();
        let inner = MemoryStore::builder().clock(clock.clone()).build();
        let store = LeasedStore::builder(inner)
            .config(
                eager()
                    .max_lease(Duration::from_secs(1))
                    .max_sparse_lease(sparse),
            )
            .clock(clock.clone())
            .build()
            .unwrap();
        for alg in [Algorithm::FixedWindow, Algorithm::Gcra] {
            let policy = Policy::single(
                format!("sparse-{}", alg.as_str()),
                alg,
                Quota::per_hour(100_000),
            )
            .unwrap();
            let mut local = 0;
            for _ in 0..4 {
                let d = store.acquire("k", &policy, 1).await.unwrap();
                assert!(d.allowed);
                if d.source == DecisionSource::Lease {
                    local += 1;
                }
                clock.advance(Duration::from_millis(1_500));
            }
            assert_eq!(local, expected, "{alg:?}, max_sparse_lease {sparse:?}");
        }
    }
}
