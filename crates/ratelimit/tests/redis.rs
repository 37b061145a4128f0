//! The Redis backend against real servers from the test kit: the conformance suite on one
//! server and on a 3-master cluster, identical decisions to the memory store, exactness under
//! 64 concurrent tasks, and failure modes with the server killed, paused and restarted.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use palisade_ratelimit::{
    Algorithm, DecisionSource, FailureMode, FakeClock, MemoryStore, Policy, Quota, RateLimiter,
    RedisConnection, RedisStore, Store,
};
use palisade_testkit::{CommandCalls, RedisCluster, RedisServer, redis, test_redis};

/// The public conformance suite on one server, one test per case (each under a key prefix
/// of its own).
mod conformance_redis {
    use palisade_ratelimit::testing::Fixture;
    use palisade_ratelimit::{FakeClock, RedisStore};

    fn redis() -> Fixture {
        let redis = palisade_testkit::test_redis().expect("a Redis for the test");
        let clock = FakeClock::new();
        let store = RedisStore::new(redis.pool())
            .with_prefix(redis.prefix().as_str())
            .with_clock(clock.clone());
        Fixture::new(store, clock).keep_alive(redis)
    }

    palisade_ratelimit::store_conformance_tests!(redis());
}

/// The public conformance suite on a real 3-master Redis Cluster, one test (and cluster) per
/// case.
mod conformance_redis_cluster {
    use palisade_ratelimit::testing::Fixture;
    use palisade_ratelimit::{FakeClock, RedisStore};

    async fn cluster() -> Fixture {
        let cluster = palisade_testkit::RedisCluster::start_async(3)
            .await
            .expect("a 3-master cluster");
        let clock = FakeClock::new();
        let store = RedisStore::cluster(cluster.pool()).with_clock(clock.clone());
        Fixture::new(store, clock).keep_alive(cluster)
    }

    palisade_ratelimit::store_conformance_tests!(cluster());
}

/// Keys spread over every master of a cluster, through one multiplexed cluster connection
/// with server time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keys_spread_over_every_master() {
    let cluster = RedisCluster::start_async(3)
        .await
        .expect("a 3-master cluster");
    let conn = cluster.async_connection().await.unwrap();
    let store = RedisStore::from_connection(RedisConnection::Cluster(conn));
    let policy = Policy::builder("cluster-time")
        .quota("a", Quota::per_hour(2))
        .quota("b", Quota::per_day(3))
        .build()
        .unwrap();
    // Keys that hash to many different slots, so every master is used.
    for i in 0..30 {
        let key = format!("user-{i}");
        assert!(store.acquire(&key, &policy, 2).await.unwrap().allowed);
        assert!(!store.acquire(&key, &policy, 1).await.unwrap().allowed);
    }
    let mut used = 0;
    for node in cluster.nodes() {
        let mut c = node.client().get_connection().unwrap();
        let n: u64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        used += u64::from(n > 0);
    }
    assert_eq!(used, 3, "keys did not spread over the three masters");
    drop(cluster);
}

/// Random operations against the memory store and Redis with the same fake clock give
/// identical decisions: both backends run the same algorithm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_decides_exactly_like_memory() {
    let redis = test_redis().unwrap();
    let clock = FakeClock::new();
    let remote = RedisStore::new(redis.pool())
        .with_prefix(redis.prefix().as_str())
        .with_clock(clock.clone());
    let local = MemoryStore::builder().clock(clock.clone()).build();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for alg in Algorithm::ALL {
        let policy = Policy::builder(format!("diff-{alg}"))
            .algorithm(alg)
            .quota(
                "fast",
                Quota::new(7, Duration::from_millis(700)).with_burst(9),
            )
            .quota("slow", Quota::new(20, Duration::from_secs(5)))
            .build()
            .unwrap();
        for step in 0..400 {
            clock.advance(Duration::from_micros(next(4) * next(90_000)));
            let key = ["a", "b"][next(2) as usize];
            match next(10) {
                0 => {
                    let cost = next(3);
                    remote.refund(key, &policy, cost).await.unwrap();
                    local.refund(key, &policy, cost).await.unwrap();
                }
                1 => {
                    let (r, l) = (
                        remote.peek(key, &policy).await.unwrap(),
                        local.peek(key, &policy).await.unwrap(),
                    );
                    assert_eq!(r, l, "{alg} step {step}: peek differs");
                }
                _ => {
                    let cost = next(4);
                    let r = remote.acquire(key, &policy, cost).await.unwrap();
                    let l = local.acquire(key, &policy, cost).await.unwrap();
                    assert_eq!(r, l, "{alg} step {step}: acquire({cost}) differs");
                }
            }
        }
    }
}

async fn hammer(store: Arc<dyn Store>, policy: &Policy, key: &str) -> u64 {
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (store, policy, admitted, key) = (
            Arc::clone(&store),
            policy.clone(),
            Arc::clone(&admitted),
            key.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..1_000 {
                if store.acquire(&key, &policy, 1).await.unwrap().allowed {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    admitted.load(Ordering::Relaxed)
}

/// 64 tasks × 1,000 requests on one key: exactly the quota is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_exact_through_redis() {
    let redis = test_redis().unwrap();
    // Server time: a daily sliding log (no refill can happen during the test).
    let store: Arc<dyn Store> =
        Arc::new(RedisStore::new(redis.pool()).with_prefix(redis.prefix().as_str()));
    let policy = Policy::builder("hot-log")
        .algorithm(Algorithm::SlidingWindowLog)
        .quota("per_day", Quota::per_day(5_000))
        .quota("per_hour", Quota::per_hour(20_000))
        .build()
        .unwrap();
    assert_eq!(hammer(Arc::clone(&store), &policy, "hot").await, 5_000);

    // A frozen fake clock for the bucket algorithms (no refill between requests), over one
    // multiplexed connection.
    let conn = redis.async_connection().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(
        RedisStore::from_connection(RedisConnection::Multiplexed(conn))
            .with_prefix(redis.prefix().as_str())
            .with_clock(FakeClock::new()),
    );
    for alg in [
        Algorithm::Gcra,
        Algorithm::TokenBucket,
        Algorithm::SlidingWindowCounter,
    ] {
        let policy = Policy::single(format!("hot-{alg}"), alg, Quota::per_minute(3_000)).unwrap();
        assert_eq!(
            hammer(Arc::clone(&store), &policy, "hot").await,
            3_000,
            "{alg}"
        );
    }
}

/// Keys are hash-tagged, namespaced and expire.
#[tokio::test]
async fn keys_are_tagged_encoded_and_expire() {
    let redis = test_redis().unwrap();
    let store = RedisStore::new(redis.pool()).with_prefix(redis.prefix().as_str());
    let policy = Policy::builder("tagged")
        .algorithm(Algorithm::SlidingWindowLog)
        .quota("per_minute", Quota::per_minute(5))
        .build()
        .unwrap();
    for key in palisade_ratelimit::testing::hostile_keys() {
        let keys = store.keys_for(&key, &policy);
        for k in &keys {
            assert_eq!(k.matches('{').count(), 1, "{k:.60}");
            assert_eq!(k.matches('}').count(), 1, "{k:.60}");
            assert!(!k.contains('\n'));
        }
        store.acquire(&key, &policy, 1).await.unwrap();
    }
    let mut conn = redis.async_connection().await.unwrap();
    // The prefix is written as given: what an operator types in `redis-cli --scan`.
    let pattern = format!("{}*", redis.prefix().as_str());
    let found: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        found.len(),
        palisade_ratelimit::testing::hostile_keys().len(),
        "{pattern}"
    );
    for k in found {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 61_000, "{k:.60}: ttl {ttl}");
    }
}

/// Server time: a real refill through Redis' TIME (short window, short wait).
#[tokio::test]
async fn server_time_refills() {
    let redis = test_redis().unwrap();
    let store = RedisStore::new(redis.pool()).with_prefix(redis.prefix().as_str());
    let policy = Policy::single(
        "time",
        Algorithm::Gcra,
        Quota::new(2, Duration::from_millis(200)),
    )
    .unwrap();
    assert!(store.acquire("k", &policy, 2).await.unwrap().allowed);
    let d = store.acquire("k", &policy, 1).await.unwrap();
    assert!(!d.allowed);
    let wait = d.retry_after().unwrap();
    assert!(wait <= Duration::from_millis(100), "{wait:?}");
    tokio::time::sleep(wait + Duration::from_millis(5)).await;
    assert!(store.acquire("k", &policy, 1).await.unwrap().allowed);
}

fn fault_policy() -> Policy {
    Policy::single("fault", Algorithm::FixedWindow, Quota::per_hour(2)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_follows_the_failure_mode() {
    let mut server = RedisServer::builder().start_async().await.unwrap();
    let policy = fault_policy();
    let limiter = |mode| {
        RateLimiter::builder(RedisStore::new(server.pool()))
            .failure_mode(mode)
            .build()
    };
    let open = limiter(FailureMode::FailOpen);
    let closed = limiter(FailureMode::FailClosed);
    let fallback = limiter(FailureMode::FallbackToMemory);
    assert_eq!(
        open.acquire("k", &policy, 1).await.source,
        DecisionSource::Store
    );
    open.health().await.expect("healthy while Redis runs");
    server.kill();
    // Health reports the outage whatever the failure mode answers meanwhile.
    for limiter in [&open, &closed, &fallback] {
        let err = limiter.health().await.expect_err("Redis is down");
        assert!(err.is_transient(), "{err:?}");
    }

    for _ in 0..5 {
        let d = open.acquire("k", &policy, 1).await;
        assert!(
            d.allowed && d.source == DecisionSource::FailOpen && d.from_fallback(),
            "{d:?}"
        );
        let d = closed.acquire("k", &policy, 1).await;
        assert!(
            !d.allowed && d.source == DecisionSource::FailClosed && d.from_fallback(),
            "{d:?}"
        );
    }
    let admitted: Vec<bool> = futures_lite(&fallback, &policy).await;
    assert_eq!(
        admitted,
        [true, true, false, false],
        "the fallback counts in memory"
    );
    assert!(
        open.try_acquire("k", &policy, 1)
            .await
            .unwrap_err()
            .is_transient()
    );

    // Restarted: back to Redis within one second.
    server.restart().unwrap();
    let started = Instant::now();
    loop {
        let d = fallback.acquire("k2", &policy, 1).await;
        if d.source == DecisionSource::Store {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "still on the fallback after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fallback
        .health()
        .await
        .expect("healthy again after the restart");
}

async fn futures_lite(limiter: &RateLimiter, policy: &Policy) -> Vec<bool> {
    let mut out = Vec::new();
    for _ in 0..4 {
        let d = limiter.acquire("fb", policy, 1).await;
        assert_eq!(d.source, DecisionSource::Fallback);
        out.push(d.allowed);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_never_stalls_a_request() {
    let server = RedisServer::builder().start_async().await.unwrap();
    let policy = fault_policy();
    let limiter = RateLimiter::builder(RedisStore::new(server.pool()))
        .failure_mode(FailureMode::FallbackToMemory)
        .build();
    assert_eq!(
        limiter.acquire("k", &policy, 1).await.source,
        DecisionSource::Store
    );
    server.pause(Duration::from_secs(2));
    for _ in 0..3 {
        let started = Instant::now();
        let d = limiter.acquire("k", &policy, 1).await;
        let took = started.elapsed();
        assert_eq!(d.source, DecisionSource::Fallback);
        assert!(
            took < Duration::from_millis(250),
            "a decision took {took:?} with the default 50 ms timeout"
        );
    }
    server.resume();
    let started = Instant::now();
    while limiter.acquire("k3", &policy, 1).await.source != DecisionSource::Store {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "not back on Redis after resume"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every backend failure is counted (and the decision says who made it).
#[test]
fn backend_failures_are_counted() {
    let mut server = RedisServer::start().unwrap();
    let pool = server.pool();
    server.kill();
    let lines = palisade_testkit::record_metrics(|| async move {
        let limiter = RateLimiter::new(RedisStore::new(pool));
        for _ in 0..3 {
            assert_eq!(
                limiter.acquire("k", &fault_policy(), 1).await.source,
                DecisionSource::FailOpen
            );
        }
    });
    let errors: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("palisade_ratelimit_backend_errors_total{"))
        .collect();
    assert_eq!(
        errors,
        [&format!(
            "palisade_ratelimit_backend_errors_total{{backend=redis,kind=backend,policy={}}} 3",
            fault_policy().name()
        )],
        "{lines:#?}"
    );
}

/// The read commands a sliding-window-log script may issue.
const LOG_READS: [&str; 5] = [
    "zrange",
    "zrangebyscore",
    "zrevrangebyscore",
    "zcount",
    "zcard",
];

/// Review finding: a sliding-window-log denial read the log 64 entries at a time from a
/// growing offset (quadratic in the cost: a denied cost-100k request held Redis ~0.6 s, past
/// the limiter's timeout, and FailOpen then admitted it uncounted). The script now does
/// O(log n) work whatever the cost, and still answers exactly what the memory store does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_log_request_does_logarithmic_work() {
    // A server of its own: nothing else runs commands while they are counted.
    let server = RedisServer::builder().start_async().await.unwrap();
    let clock = FakeClock::new();
    let remote = Arc::new(RedisStore::new(server.pool()).with_clock(clock.clone()));
    let local = MemoryStore::builder().clock(clock.clone()).build();
    const N: u64 = 20_000;
    let policy =
        Policy::single("long-log", Algorithm::SlidingWindowLog, Quota::per_hour(N)).unwrap();
    // N entries of cost 1 (a tenth of them a second apart, so they have different times).
    for batch in 0..10 {
        // 100 calls in flight at a time on the store's one multiplexed connection.
        for _ in 0..N / 1_000 {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..100 {
                let (remote, policy) = (Arc::clone(&remote), policy.clone());
                tasks.spawn(async move { remote.acquire("k", &policy, 1).await });
            }
            while let Some(answer) = tasks.join_next().await {
                let decision = answer.unwrap().expect("the store answered");
                assert!(decision.allowed);
            }
        }
        for _ in 0..N / 10 {
            assert!(local.acquire("k", &policy, 1).await.unwrap().allowed);
        }
        if batch < 9 {
            clock.advance(Duration::from_secs(1));
        }
    }
    let mut conn = server.async_connection().await.unwrap();
    for cost in [N, N / 2, 3 * N / 4 + 1, 1] {
        let before = CommandCalls::read(&mut conn)
            .await
            .unwrap()
            .total_of(LOG_READS);
        let d = remote.acquire("k", &policy, cost).await.unwrap();
        let reads = CommandCalls::read(&mut conn)
            .await
            .unwrap()
            .total_of(LOG_READS)
            - before;
        assert!(!d.allowed);
        assert_eq!(
            d,
            local.acquire("k", &policy, cost).await.unwrap(),
            "cost {cost}"
        );
        assert!(d.retry_after().is_some(), "cost {cost}");
        // Binary search over 20,000 entries: 15 probes, plus a few reads of the ends.
        assert!(reads <= 24, "cost {cost}: {reads} reads of the log");
    }
    // Refunds and peeks stay exact too.
    remote.refund("k", &policy, 3 * N / 4).await.unwrap();
    local.refund("k", &policy, 3 * N / 4).await.unwrap();
    assert_eq!(
        remote.peek("k", &policy).await.unwrap(),
        local.peek("k", &policy).await.unwrap()
    );
    let d = remote.acquire("k", &policy, N / 2).await.unwrap();
    assert_eq!(d, local.acquire("k", &policy, N / 2).await.unwrap());
}

/// The store's own timeout (the crate contract's `with_timeout`), for callers that use the
/// store without a limiter: a paused server is an `Error::Timeout`, and the store answers
/// again once the server does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_times_out_on_its_own() {
    let server = RedisServer::builder().start_async().await.unwrap();
    let store = RedisStore::new(server.pool()).with_timeout(Duration::from_millis(50));
    let policy = fault_policy();
    // The first call connects and loads the script: on a loaded machine it can take longer
    // than 50 ms (seen in a full run), which is the timeout working, not the case under test.
    let started = Instant::now();
    loop {
        match store.acquire("k", &policy, 1).await {
            Ok(d) => {
                assert!(d.allowed);
                break;
            }
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(5),
                "a fresh server did not answer: {e:?}"
            ),
        }
    }
    server.pause(Duration::from_secs(2));
    let started = Instant::now();
    let err = store.acquire("k", &policy, 1).await.unwrap_err();
    assert!(
        matches!(err, palisade_ratelimit::Error::Timeout(t) if t == Duration::from_millis(50)),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(started.elapsed() < Duration::from_millis(250));
    server.resume();
    let started = Instant::now();
    while store.acquire("k", &policy, 1).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "not back after resume"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
