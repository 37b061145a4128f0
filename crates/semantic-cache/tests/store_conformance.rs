//! The public conformance suite (`palisade_semantic_cache::testing`) against every backend:
//! memory, a standalone Redis, a 3-master Redis Cluster and a TLS Redis, one test per case.

use palisade_semantic_cache::MemoryStore;
use palisade_semantic_cache::testing::Fixture;
#[cfg(feature = "redis")]
use palisade_semantic_cache::{RedisConfig, RedisStore};

/// The Redis settings of the suite: a short stream poll so vectors arrive quickly.
#[cfg(feature = "redis")]
fn redis_config(prefix: &str) -> RedisConfig {
    RedisConfig::default()
        .prefix(prefix.to_owned())
        .poll_block(std::time::Duration::from_millis(20))
}

mod memory {
    use super::*;

    palisade_semantic_cache::store_conformance_tests!(async {
        Fixture::new(MemoryStore::default())
    });
}

#[cfg(feature = "redis")]
mod redis_standalone {
    use super::*;

    palisade_semantic_cache::store_conformance_tests!(async {
        let redis = palisade_testkit::test_redis().expect("a test Redis");
        let prefix = redis.prefix().as_str().trim_end_matches(':').to_owned();
        let store = RedisStore::new(redis.pool())
            .with_config(redis_config(&prefix))
            .unwrap();
        Fixture::new(store).keep_alive(redis)
    });
}

#[cfg(feature = "redis")]
mod redis_cluster {
    use super::*;

    palisade_semantic_cache::store_conformance_tests!(async {
        let cluster = palisade_testkit::RedisCluster::start_async(3)
            .await
            .expect("a 3-master Redis Cluster");
        let store = RedisStore::cluster(cluster.pool())
            .with_config(redis_config("psc"))
            .unwrap();
        Fixture::new(store).keep_alive(cluster)
    });
}

#[cfg(feature = "redis")]
mod redis_tls {
    use super::*;

    palisade_semantic_cache::store_conformance_tests!(async {
        let server = palisade_testkit::RedisServer::builder()
            .tls()
            .start_async()
            .await
            .expect("a TLS redis-server");
        assert!(server.url().starts_with("rediss://"));
        let store = RedisStore::new(server.pool())
            .with_config(redis_config("psc"))
            .unwrap();
        Fixture::new(store).keep_alive(server)
    });
}
