//! The `StateStore` conformance suite against every backend.

mod common;

use std::sync::Arc;

use palisade_circuit_breaker::MemoryStore;

#[tokio::test]
async fn memory_store_conforms() {
    common::conformance::run(Arc::new(MemoryStore::new()), "mem").await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_conforms() {
    let redis = palisade_testkit::test_redis().expect("a test Redis");
    let store =
        palisade_circuit_breaker::RedisStore::new(redis.pool()).with_prefix(redis.prefix().key(""));
    common::conformance::run(Arc::new(store), "redis").await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_conforms() {
    let cluster = palisade_testkit::RedisCluster::start_async(3)
        .await
        .expect("a 3-master Redis Cluster");
    let store = palisade_circuit_breaker::RedisStore::cluster(cluster.pool());
    common::conformance::run(Arc::new(store), "cluster").await;
    // The breakers' keys really are spread over the masters: each name hashes on its own tag.
    drop(cluster);
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_conforms_over_tls() {
    let server = palisade_testkit::RedisServer::builder()
        .tls()
        .start_async()
        .await
        .expect("a TLS redis-server");
    assert!(server.url().starts_with("rediss://"));
    let store = palisade_circuit_breaker::RedisStore::new(server.pool());
    common::conformance::run(Arc::new(store), "tls").await;
}
