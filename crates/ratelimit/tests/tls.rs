//! `rediss://`: the Redis backend over TLS against a real TLS `redis-server` with a throwaway
//! CA — the whole conformance suite, and a typed error (never a decision) when the server's
//! certificate is not trusted.
#![cfg(feature = "redis")]

use palisade_ratelimit::{Algorithm, Error, Policy, Quota, RedisStore, Store};
use palisade_testkit::{RedisServer, deadpool_redis};

async fn tls_server() -> RedisServer {
    RedisServer::builder()
        .tls()
        .start_async()
        .await
        .expect("a TLS redis-server")
}

/// The public conformance suite over `rediss://`, one test (and TLS server) per case.
mod conformance_over_tls {
    use palisade_ratelimit::testing::Fixture;
    use palisade_ratelimit::{FakeClock, RedisStore};

    async fn tls() -> Fixture {
        let server = super::tls_server().await;
        assert!(server.url().starts_with("rediss://"));
        let clock = FakeClock::new();
        let store = RedisStore::new(server.pool()).with_clock(clock.clone());
        Fixture::new(store, clock).keep_alive(server)
    }

    palisade_ratelimit::store_conformance_tests!(tls());
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_backend_error() {
    let server = tls_server().await;
    // A pool from the bare URL checks the certificate against the system's roots, which do
    // not hold the test CA.
    let pool = deadpool_redis::Config::from_url(server.url())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let store = RedisStore::new(pool);
    let policy = Policy::single("tls", Algorithm::Gcra, Quota::per_minute(10)).unwrap();
    match store.acquire("user:1", &policy, 1).await {
        Err(Error::Backend { .. }) => {}
        other => panic!("expected a backend error, got {other:?}"),
    }
}
