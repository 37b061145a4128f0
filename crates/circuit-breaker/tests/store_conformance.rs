//! The public conformance suite (`palisade_circuit_breaker::testing`) against every backend,
//! one test per case: the memory store, and the Redis store on a standalone server, a
//! 3-master Redis Cluster and a TLS server. Every store decides on the fixture's fake clock.

use std::sync::Arc;

use palisade_circuit_breaker::testing::Fixture;
use palisade_circuit_breaker::{FakeClock, MemoryStore};

fn memory() -> std::future::Ready<Fixture> {
    let clock = FakeClock::new();
    std::future::ready(Fixture::new(
        Arc::new(MemoryStore::with_clock(clock.clone())),
        clock,
    ))
}

mod memory {
    palisade_circuit_breaker::store_conformance_tests!(super::memory());
}

#[cfg(feature = "redis")]
mod redis {
    use std::sync::Arc;

    use palisade_circuit_breaker::testing::Fixture;
    use palisade_circuit_breaker::{FakeClock, RedisStore};
    use palisade_testkit::{RedisCluster, RedisServer};

    pub(super) fn standalone() -> std::future::Ready<Fixture> {
        let redis = palisade_testkit::test_redis().expect("a test Redis");
        let clock = FakeClock::new();
        let store = RedisStore::new(redis.pool())
            .with_prefix(redis.prefix().key(""))
            .with_clock(clock.clone());
        std::future::ready(Fixture::new(Arc::new(store), clock).keeping(redis))
    }

    pub(super) async fn cluster() -> Fixture {
        let cluster = RedisCluster::start_async(3)
            .await
            .expect("a 3-master Redis Cluster");
        let clock = FakeClock::new();
        let store = RedisStore::cluster(cluster.pool()).with_clock(clock.clone());
        Fixture::new(Arc::new(store), clock).keeping(cluster)
    }

    pub(super) async fn tls() -> Fixture {
        let server = RedisServer::builder()
            .tls()
            .start_async()
            .await
            .expect("a TLS redis-server");
        assert!(server.url().starts_with("rediss://"));
        let clock = FakeClock::new();
        let store = RedisStore::new(server.pool()).with_clock(clock.clone());
        Fixture::new(Arc::new(store), clock).keeping(server)
    }

    mod standalone {
        palisade_circuit_breaker::store_conformance_tests!(super::standalone());
    }

    mod cluster {
        palisade_circuit_breaker::store_conformance_tests!(super::cluster());
    }

    mod tls {
        palisade_circuit_breaker::store_conformance_tests!(super::tls());
    }
}

/// Without a clock of its own, the Redis store decides on Redis server time.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_uses_server_time_by_default() {
    use palisade_circuit_breaker::RedisStore;
    use palisade_circuit_breaker::store::{Batch, SharedPolicy};

    let redis = palisade_testkit::test_redis().expect("a test Redis");
    let store = RedisStore::new(redis.pool()).with_prefix(redis.prefix().key(""));
    let config = palisade_circuit_breaker::Config::default()
        .minimum_calls(1)
        .open_wait(std::time::Duration::from_secs(60));
    let policy = SharedPolicy::from_config(&config);
    use palisade_circuit_breaker::Store as _;
    let s = store
        .flush("server-time", &policy, &Batch::new("a", 1, 1, 0, true))
        .await
        .unwrap();
    assert_eq!(s.state, palisade_circuit_breaker::State::Open);
    // Redis' TIME is the wall clock: the open deadline is about a minute from now, which a
    // fake clock at zero could not have produced with a 60 s wait either, so read it back.
    let deadline: u64 = palisade_testkit::redis::cmd("HGET")
        .arg(store.keys("server-time")[0].as_str())
        .arg("dl")
        .query_async(&mut redis.async_connection().await.unwrap())
        .await
        .unwrap();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        deadline.abs_diff(wall + 60_000) < 5_000,
        "deadline {deadline} vs wall clock {wall} + 60 s"
    );
}
