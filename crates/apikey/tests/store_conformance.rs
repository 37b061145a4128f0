//! The `Store` conformance suite (`palisade_apikey::testing`) on every backend: one test per
//! case on memory, a real Redis, a 3-master Redis Cluster and a TLS Redis.

mod memory {
    palisade_apikey::store_conformance!(async {
        palisade_apikey::testing::Fixture::new(palisade_apikey::MemoryStore::new(), ())
    });
}

#[cfg(feature = "redis")]
mod redis {
    palisade_apikey::store_conformance!(async {
        let redis = palisade_testkit::test_redis().expect("a test Redis");
        let store = palisade_apikey::RedisStore::new(redis.pool()).with_prefix(redis.key(""));
        palisade_apikey::testing::Fixture::new(store, redis)
    });
}

#[cfg(feature = "redis")]
mod cluster {
    palisade_apikey::store_conformance!(async {
        let cluster = palisade_testkit::RedisCluster::start_async(3)
            .await
            .expect("a 3-master Redis Cluster");
        let store = palisade_apikey::RedisStore::cluster(cluster.pool());
        palisade_apikey::testing::Fixture::new(store, cluster)
    });
}

#[cfg(feature = "redis")]
mod tls {
    palisade_apikey::store_conformance!(async {
        let server = palisade_testkit::RedisServer::builder()
            .tls()
            .start_async()
            .await
            .expect("a TLS redis-server");
        assert!(server.url().starts_with("rediss://"));
        let store = palisade_apikey::RedisStore::new(server.pool());
        palisade_apikey::testing::Fixture::new(store, server)
    });
}
