//! `Store::health` tells a `/health` endpoint whether Redis answers, and recovers with it.
#![cfg(feature = "redis")]

use std::time::Duration;

use palisade_circuit_breaker::{RedisStore, Store};
use palisade_testkit::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_redis_down_and_back() {
    let mut server = RedisServer::builder()
        .start_async()
        .await
        .expect("a redis-server");
    let store = RedisStore::new(server.pool()).with_timeout(Duration::from_millis(300));
    store.health().await.expect("healthy while Redis runs");

    server.kill();
    let err = store
        .health()
        .await
        .expect_err("unhealthy once Redis is gone");
    assert!(
        err.is_transient(),
        "a dead server is a transient failure: {err}"
    );

    server.restart().expect("restarted");
    let mut healthy = false;
    for _ in 0..50 {
        if store.health().await.is_ok() {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(healthy, "healthy again after Redis restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_is_a_timeout() {
    let server = RedisServer::builder()
        .start_async()
        .await
        .expect("a redis-server");
    let store = RedisStore::new(server.pool()).with_timeout(Duration::from_millis(100));
    store.health().await.expect("healthy while Redis runs");
    server.pause(Duration::from_secs(2));
    let err = store
        .health()
        .await
        .expect_err("a hung Redis is not healthy");
    assert!(
        matches!(err, palisade_circuit_breaker::Error::Timeout(_)),
        "{err:?}"
    );
    server.resume();
}
