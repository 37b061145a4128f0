//! The Redis provider against real servers from the test kit: the conformance suite on a
//! standalone server (one test per case), a 3-master Cluster and a TLS server; values
//! encrypted at rest; and outage drills with the provider's own server killed (the resurrect
//! window honoured, cold start from the snapshot) or its user's permissions revoked (the
//! denial never masked).
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::time::Duration;

use palisade_secret_store::{
    Error, ExposeSecret, FailureMode, FakeClock, FileProvider, MasterKey, Provider, RedisProvider,
    SecretName, Secrets, testing,
};
use palisade_testkit::{RedisCluster, RedisServer};

fn key() -> MasterKey {
    MasterKey::from_hex("k1", &"c3".repeat(32)).unwrap()
}

fn name(s: &str) -> SecretName {
    SecretName::new(s).unwrap()
}

mod standalone {
    use super::*;

    async fn provider() -> (palisade_testkit::TestRedis, Arc<RedisProvider>) {
        let redis = palisade_testkit::test_redis().expect("a test Redis");
        let p =
            Arc::new(RedisProvider::new(redis.pool(), key()).with_prefix(redis.prefix().key("")));
        testing::seed(&*p).await;
        (redis, p)
    }

    palisade_secret_store::provider_conformance!(provider().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_cluster() {
    let cluster = RedisCluster::start_async(3)
        .await
        .expect("a 3-master cluster");
    let p = Arc::new(RedisProvider::cluster(cluster.pool(), key()));
    testing::seed(&*p).await;
    testing::run_all(p.clone()).await;
    // The secrets' hashes are spread over the masters.
    let mut masters_used = 0;
    for node in cluster.nodes() {
        let mut c = node.client().get_connection().unwrap();
        let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        masters_used += usize::from(n > 0);
    }
    assert!(masters_used >= 2, "keys on {masters_used} master(s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_tls() {
    let server = RedisServer::builder()
        .tls()
        .start_async()
        .await
        .expect("a TLS redis-server");
    assert!(server.url().starts_with("rediss://"));
    let p = Arc::new(RedisProvider::new(server.pool(), key()));
    testing::seed(&*p).await;
    testing::run_all(p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_are_ciphertext_in_redis_and_bound_to_their_name() {
    let server = RedisServer::builder().start_async().await.unwrap();
    let p = RedisProvider::new(server.pool(), key()).with_prefix("t:");
    p.put(&name("db"), &"plaintext-password-1".into())
        .await
        .unwrap();
    p.put(&name("other"), &"another-password-2".into())
        .await
        .unwrap();
    let mut c = server.client().get_connection().unwrap();
    let dump: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(p.key(&name("db")))
        .query(&mut c)
        .unwrap();
    let blob = dump.iter().find(|(f, _)| f == "1").unwrap().1.clone();
    assert!(!String::from_utf8_lossy(&blob).contains("plaintext-password"));
    // The blob of `db` copied under `other` does not decrypt: a typed, permanent error.
    let _: () = redis::cmd("HSET")
        .arg(p.key(&name("other")))
        .arg("1")
        .arg(&blob)
        .query(&mut c)
        .unwrap();
    let e = p.get(&name("other"), None).await.unwrap_err();
    assert!(
        matches!(e, Error::Decrypt { .. }) && !e.is_transient(),
        "{e}"
    );
    // Another master key cannot read it either.
    let wrong = RedisProvider::new(
        server.pool(),
        MasterKey::from_hex("k1", &"00".repeat(32)).unwrap(),
    )
    .with_prefix("t:");
    assert!(matches!(
        wrong.get(&name("db"), None).await,
        Err(Error::Decrypt { .. })
    ));
}

fn drill_secrets(clock: &FakeClock, p: RedisProvider) -> Secrets {
    Secrets::builder()
        .clock(clock.clone())
        .refresh_jitter(0.0)
        .ttl(Duration::from_secs(60))
        .stale_while_revalidate(Duration::ZERO)
        .resurrect(Duration::from_secs(300))
        .provider_timeout(Duration::from_millis(500))
        .provider(p)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_is_bridged_for_the_resurrect_window_then_reported() {
    let mut server = RedisServer::builder().start_async().await.unwrap();
    let p = RedisProvider::new(server.pool(), key()).with_timeout(Duration::from_millis(300));
    p.put(&name("openai/api-key"), &"sk-live-from-redis-000111".into())
        .await
        .unwrap();
    let clock = FakeClock::new();
    let s = drill_secrets(&clock, p);
    s.get("openai/api-key").await.unwrap();

    tokio::task::block_in_place(|| server.kill());
    clock.advance(Duration::from_secs(61));
    let v = s
        .get("openai/api-key")
        .await
        .expect("the last-known-good value");
    assert_eq!(v.expose_secret(), "sk-live-from-redis-000111");
    let h = s.health().await;
    assert!(!h.healthy && h.resurrected_secrets == 1, "{h:?}");
    clock.advance(Duration::from_secs(299));
    s.get("openai/api-key")
        .await
        .expect("still inside the window");
    clock.advance(Duration::from_secs(1));
    let e = s.get("openai/api-key").await.unwrap_err();
    assert!(
        e.is_transient(),
        "after the window the outage is reported: {e}"
    );

    // Redis is back (empty: the test server keeps nothing) and is written again.
    tokio::task::block_in_place(|| server.restart()).unwrap();
    let p = RedisProvider::new(server.pool(), key());
    p.put(&name("openai/api-key"), &"sk-live-rotated-000222".into())
        .await
        .unwrap();
    let s = drill_secrets(&clock, p);
    assert_eq!(
        s.get("openai/api-key").await.unwrap().expose_secret(),
        "sk-live-rotated-000222"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_permissions_are_never_masked_by_the_cache() {
    let server = RedisServer::builder().start_async().await.unwrap();
    let mut admin = server.client().get_connection().unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "app", "on", ">app-password-1", "~app:*", "+@all"][..])
        .query(&mut admin)
        .unwrap();
    let url = format!("redis://app:app-password-1@127.0.0.1:{}", server.port());
    let pool = deadpool_redis::Config::from_url(url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let p = RedisProvider::new(pool, key()).with_prefix("app:");
    p.put(&name("db"), &"db-password-from-redis".into())
        .await
        .unwrap();
    let clock = FakeClock::new();
    let s = Secrets::builder()
        .clock(clock.clone())
        .refresh_jitter(0.0)
        .ttl(Duration::from_secs(60))
        .stale_while_revalidate(Duration::ZERO)
        .failure_mode(FailureMode::FailOpen) // even the most forgiving mode
        .provider(p)
        .build()
        .unwrap();
    s.get("db").await.unwrap();

    // The user loses access to the keys: NOPERM.
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "app", "resetkeys"][..])
        .query(&mut admin)
        .unwrap();
    clock.advance(Duration::from_secs(61));
    let e = s.get("db").await.unwrap_err();
    assert!(e.is_denied(), "{e}");

    // The password is changed and connections dropped: WRONGPASS on reconnect.
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "app", "~app:*", "resetpass", ">another-password"][..])
        .query(&mut admin)
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "USER", "app"][..])
        .query(&mut admin)
        .unwrap();
    let e = s.get("db").await.unwrap_err();
    assert!(e.is_denied(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_with_redis_killed_and_the_file_missing_serves_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("secrets.snapshot");
    let missing_file = dir.path().join("fallback.env");
    let mut server = RedisServer::builder().start_async().await.unwrap();
    let build = |server: &RedisServer| {
        Secrets::builder()
            .provider(
                RedisProvider::new(server.pool(), key()).with_timeout(Duration::from_millis(300)),
            )
            .provider(FileProvider::new(&missing_file))
            .provider_timeout(Duration::from_millis(500))
            .snapshot(&snapshot, key())
            .build()
            .unwrap()
    };
    let p = RedisProvider::new(server.pool(), key());
    p.put(&name("stripe/api-key"), &"sk_live_snapshotted_0123".into())
        .await
        .unwrap();
    build(&server).get("stripe/api-key").await.unwrap();

    tokio::task::block_in_place(|| server.kill());
    let cold = build(&server);
    let v = cold
        .get("stripe/api-key")
        .await
        .expect("served from the snapshot");
    assert_eq!(
        (v.expose_secret(), v.provider()),
        ("sk_live_snapshotted_0123", "snapshot")
    );
    let h = cold.health().await;
    assert!(h.providers.iter().all(|p| !p.healthy), "{h:?}");
    // A secret the last run never loaded is not invented.
    assert!(cold.get("never-loaded").await.unwrap_err().is_transient());
}
