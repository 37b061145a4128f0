//! Several instances sharing keys through Redis: a revocation reaches a second process
//! within the stated bound, the verify cache's TTL bounds staleness without the change
//! feed, and the failure modes behave as documented when Redis dies.
#![cfg(feature = "redis")]

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use palisade_apikey::{
    ApiKeys, CreditOutcome, Denial, Error, FailureMode, FakeClock, KeyId, KeyRecord, KeySpec,
    MemoryStore, Pepper, Peppers, RedisStore, RotateOutcome, Scopes, Store, Usage,
};
use palisade_testkit::RedisServer;

const CHILD_URL: &str = "APIKEY_CHILD_REDIS_URL";
const CHILD_PREFIX: &str = "APIKEY_CHILD_PREFIX";
const CHILD_KEY: &str = "APIKEY_CHILD_KEY";

fn peppers() -> Peppers {
    Peppers::new(Pepper::new(1, *b"shared-instances test pepper v1!").unwrap())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The verify cache is kept for a minute here, so only the change feed can explain a
/// revocation seen within a second.
const LONG_CACHE: Duration = Duration::from_secs(60);
/// The bound the guide states for a revocation with the feed connected.
const FEED_BOUND: Duration = Duration::from_secs(1);

/// The body of the second process started by `a_revocation_reaches_another_process`;
/// ignored when the suite runs, because on its own it has nothing to watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of a_revocation_reaches_another_process"]
async fn child_process_instance() {
    let url = std::env::var(CHILD_URL).expect("started by a_revocation_reaches_another_process");
    let prefix = std::env::var(CHILD_PREFIX).unwrap();
    let key = std::env::var(CHILD_KEY).unwrap();
    let pool = palisade_apikey::deadpool_redis::Config::from_url(url)
        .create_pool(Some(palisade_apikey::deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let keys = ApiKeys::builder(peppers())
        .store(RedisStore::new(pool).with_prefix(prefix))
        .cache_ttl(LONG_CACHE)
        .build()
        .unwrap();
    assert!(keys.verify(&key, "").await.unwrap().is_verified());
    println!("CHILD ready");
    let deadline = unix_ms() + 20_000;
    loop {
        let v = keys.verify(&key, "").await.unwrap();
        if v.denial() == Some(Denial::Revoked) {
            println!("CHILD revoked-at {}", unix_ms());
            return;
        }
        assert!(unix_ms() < deadline, "the revocation never arrived");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One process creates a key; a second process (this test binary again) verifies it and
/// caches the record for a minute; the first revokes it. The second refuses the key within
/// one second, through the Redis change feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_another_process() {
    let redis = palisade_testkit::test_redis().unwrap();
    let prefix = redis.key("");
    let keys = ApiKeys::builder(peppers())
        .store(RedisStore::new(redis.pool()).with_prefix(prefix.clone()))
        .cache_ttl(LONG_CACHE)
        .build()
        .unwrap();
    let created = keys.create(KeySpec::new("fleet", "shared")).await.unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_process_instance",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, redis.url())
        .env(CHILD_PREFIX, &prefix)
        .env(CHILD_KEY, created.key.expose_secret())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("the child never got ready")
            .unwrap_or_else(|| panic!("the child ended early:\n{}", seen.join("\n")));
        seen.push(line.clone());
        if line.contains("CHILD ready") {
            break;
        }
    }
    // The child now holds the record in its cache for a minute.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let revoked_at = unix_ms();
    keys.revoke(&created.record.id).await.unwrap();
    let seen_at: u64 = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the child never saw the revocation")
            .unwrap_or_else(|| panic!("the child ended early:\n{}", seen.join("\n")));
        seen.push(line.clone());
        if let Some(t) = line.split("CHILD revoked-at ").nth(1) {
            break t.trim().parse().unwrap();
        }
    };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed:\n{}\n{}",
        seen.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    let took = Duration::from_millis(seen_at.saturating_sub(revoked_at));
    assert!(
        took < FEED_BOUND,
        "revocation took {took:?} to reach the other process"
    );
    println!("revocation reached the other process in {took:?}");
}

/// A store that hides another's change feed (as if the follower were down).
#[derive(Debug)]
struct NoFeed(Arc<dyn Store>);

#[async_trait]
impl Store for NoFeed {
    async fn insert(&self, r: &KeyRecord) -> palisade_apikey::Result<bool> {
        self.0.insert(r).await
    }
    async fn get(&self, id: &KeyId) -> palisade_apikey::Result<Option<Arc<KeyRecord>>> {
        self.0.get(id).await
    }
    async fn list_by_owner(&self, o: &str) -> palisade_apikey::Result<Vec<KeyRecord>> {
        self.0.list_by_owner(o).await
    }
    async fn revoke(&self, id: &KeyId, now: u64) -> palisade_apikey::Result<Option<KeyRecord>> {
        self.0.revoke(id, now).await
    }
    async fn rotate(
        &self,
        old: &KeyId,
        new: &KeyRecord,
        now: u64,
        grace_until: u64,
    ) -> palisade_apikey::Result<RotateOutcome> {
        self.0.rotate(old, new, now, grace_until).await
    }
    async fn update_scopes(
        &self,
        id: &KeyId,
        s: &Scopes,
    ) -> palisade_apikey::Result<Option<KeyRecord>> {
        self.0.update_scopes(id, s).await
    }
    async fn charge(
        &self,
        id: &KeyId,
        cost: u64,
        idem: Option<&str>,
        now: u64,
    ) -> palisade_apikey::Result<CreditOutcome> {
        self.0.charge(id, cost, idem, now).await
    }
    async fn rehash(
        &self,
        id: &KeyId,
        from: u16,
        to: u16,
        hash: &[u8; 32],
    ) -> palisade_apikey::Result<()> {
        self.0.rehash(id, from, to, hash).await
    }
    async fn record_usage(&self, u: &[Usage]) -> palisade_apikey::Result<()> {
        self.0.record_usage(u).await
    }
    fn backend_name(&self) -> &'static str {
        "no-feed"
    }
}

/// Without the change feed, an instance serves a revoked key from its cache for less than
/// `cache_ttl`, never longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_feed_the_cache_ttl_bounds_staleness() {
    let redis = palisade_testkit::test_redis().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedisStore::new(redis.pool()).with_prefix(redis.key("")));
    let clock = FakeClock::new();
    let admin = ApiKeys::builder(peppers())
        .shared_store(store.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    let other = ApiKeys::builder(peppers())
        .store(NoFeed(store))
        .cache_ttl(Duration::from_secs(5))
        .clock(clock.clone())
        .build()
        .unwrap();
    let k = admin.create(KeySpec::new("o", "k")).await.unwrap();
    let text = k.key.expose_secret();
    assert!(other.verify(text, "").await.unwrap().is_verified());
    admin.revoke(&k.record.id).await.unwrap();
    clock.advance(Duration::from_millis(4999));
    assert!(
        other.verify(text, "").await.unwrap().is_verified(),
        "stale within the bound: served from the cache"
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        other.verify(text, "").await.unwrap().denial(),
        Some(Denial::Revoked),
        "never past the bound"
    );
}

async fn metered(keys: &ApiKeys) -> (String, KeyId) {
    let k = keys
        .create(KeySpec::new("o", "metered").credits(3, None))
        .await
        .unwrap();
    (k.key.expose_secret().to_owned(), k.record.id)
}

fn service(server: &RedisServer, mode: FailureMode) -> ApiKeys {
    ApiKeys::builder(peppers())
        .store(RedisStore::new(server.pool()).with_timeout(Duration::from_millis(300)))
        .cache_ttl(Duration::from_secs(30))
        .failure_mode(mode)
        .build()
        .unwrap()
}

/// Redis dies. `FailClosed` (the default): a cache miss is an error, a metered key cannot
/// be charged, so it is an error too. `FallbackToMemory`: cached records answer, credits are
/// charged from the last balance seen, in this instance's memory. `FailOpen`: cached
/// records answer and metered keys pass uncharged. A key never seen is an error in every
/// mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_modes_when_redis_dies() {
    let mut server = RedisServer::builder().start_async().await.unwrap();
    let closed = service(&server, FailureMode::FailClosed);
    let fallback = service(&server, FailureMode::FallbackToMemory);
    let open = service(&server, FailureMode::FailOpen);
    let plain = closed.create(KeySpec::new("o", "plain")).await.unwrap();
    let plain_text = plain.key.expose_secret();
    let never_seen = closed.create(KeySpec::new("o", "unseen")).await.unwrap();
    let (m_closed, _) = metered(&closed).await;
    let (m_fallback, _) = metered(&closed).await;
    let (m_open, _) = metered(&closed).await;
    for keys in [&closed, &fallback, &open] {
        assert!(keys.verify(plain_text, "").await.unwrap().is_verified());
    }
    assert!(closed.verify(&m_closed, "").await.unwrap().is_verified());
    assert!(
        fallback
            .verify(&m_fallback, "")
            .await
            .unwrap()
            .is_verified()
    );
    assert!(open.verify(&m_open, "").await.unwrap().is_verified());

    tokio::task::block_in_place(|| server.kill());

    for keys in [&closed, &fallback, &open] {
        // Cached within the bound: no store read needed.
        assert!(keys.verify(plain_text, "").await.unwrap().is_verified());
        let e = keys
            .verify(never_seen.key.expose_secret(), "")
            .await
            .unwrap_err();
        assert!(e.is_backend() && e.is_transient(), "{e:?}");
    }
    let e = closed.verify(&m_closed, "").await.unwrap_err();
    assert!(
        matches!(e, Error::Backend { .. } | Error::Timeout(_)),
        "{e:?}"
    );

    // 3 credits, 1 spent before the outage: 2 more locally, then refused.
    for left in [1, 0] {
        let v = fallback.verify(&m_fallback, "").await.unwrap();
        assert_eq!(v.verified().unwrap().credits_remaining, Some(left));
    }
    assert_eq!(
        fallback.verify(&m_fallback, "").await.unwrap().denial(),
        Some(Denial::OutOfCredits)
    );
    for _ in 0..5 {
        let v = open.verify(&m_open, "").await.unwrap();
        assert_eq!(v.verified().unwrap().credits_remaining, None, "uncharged");
    }
}

/// `Store::health` says whether Redis answers: ok while it serves, an error (backend or
/// timeout) once it is killed, ok again after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_server() {
    let mut server = RedisServer::builder().start_async().await.unwrap();
    let store = RedisStore::new(server.pool()).with_timeout(Duration::from_millis(500));
    store.health().await.unwrap();
    tokio::task::block_in_place(|| server.kill());
    let e = store.health().await.unwrap_err();
    assert!(
        matches!(e, Error::Backend { .. } | Error::Timeout(_)) && e.is_transient(),
        "{e:?}"
    );
    tokio::task::block_in_place(|| server.restart()).unwrap();
    let mut healthy = false;
    for _ in 0..50 {
        if store.health().await.is_ok() {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "health after the restart");
}

/// A rotated key's successor and the old key live in one hash tag; a revoke from one
/// instance and the cache of another agree through the feed on a Redis Cluster too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_works_on_a_cluster() {
    let cluster = palisade_testkit::RedisCluster::start_async(3)
        .await
        .unwrap();
    let a = ApiKeys::builder(peppers())
        .store(RedisStore::cluster(cluster.pool()))
        .cache_ttl(LONG_CACHE)
        .build()
        .unwrap();
    let b = ApiKeys::builder(peppers())
        .store(RedisStore::cluster(cluster.pool()))
        .cache_ttl(LONG_CACHE)
        .build()
        .unwrap();
    let k = a.create(KeySpec::new("o", "k")).await.unwrap();
    let text = k.key.expose_secret();
    assert!(b.verify(text, "").await.unwrap().is_verified());
    a.revoke(&k.record.id).await.unwrap();
    let start = std::time::Instant::now();
    while b.verify(text, "").await.unwrap().is_verified() {
        assert!(start.elapsed() < FEED_BOUND, "not within {FEED_BOUND:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// With an in-memory store there is nothing to go stale: a revocation is seen at once.
#[tokio::test]
async fn memory_store_sees_revocation_at_once() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = ApiKeys::builder(peppers())
        .shared_store(store.clone())
        .build()
        .unwrap();
    let b = ApiKeys::builder(peppers())
        .shared_store(store)
        .build()
        .unwrap();
    let k = a.create(KeySpec::new("o", "k")).await.unwrap();
    assert!(
        b.verify(k.key.expose_secret(), "")
            .await
            .unwrap()
            .is_verified()
    );
    a.revoke(&k.record.id).await.unwrap();
    assert_eq!(
        b.verify(k.key.expose_secret(), "").await.unwrap().denial(),
        Some(Denial::Revoked)
    );
}
