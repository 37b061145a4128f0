//! What only a shared backend has (the conformance suite runs in
//! `tests/store_conformance.rs`): two instances seeing each other's inserts and
//! invalidations, a late instance replaying the stream, TTL in Redis, the failure modes
//! when Redis dies, bounded tracking structures and a fair local index.
#![cfg(feature = "redis")]

mod conformance;

use std::sync::Arc;
use std::time::Duration;

use palisade_semantic_cache::{
    Computed, Error, FailureMode, FakeClock, HitKind, InsertOptions, Lookup, MissReason, Source,
    Store, Tag, Tenant, Usage,
};
use palisade_semantic_cache::{RedisConfig, RedisStore};
use palisade_testkit::{CommandCalls, RedisServer, TestRedis, test_redis};

fn config(redis: &TestRedis) -> RedisConfig {
    RedisConfig::default()
        .prefix(redis.prefix().as_str().trim_end_matches(':').to_owned())
        .poll_block(Duration::from_millis(20))
}

fn store(redis: &TestRedis) -> RedisStore {
    RedisStore::new(redis.pool())
        .with_config(config(redis))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_see_each_others_inserts_and_invalidations() {
    let redis = test_redis().unwrap();
    let clock = FakeClock::default();
    let a = conformance::cache(Arc::new(store(&redis)), &clock);
    let b = conformance::cache(Arc::new(store(&redis)), &clock);
    let tag = Tag::new("user:42").unwrap();
    let opts = InsertOptions::default().tags(vec![tag.clone()]);
    a.insert_with(
        &conformance::key("t1", "chat", "How do I reset my password?"),
        "from a",
        Usage::default(),
        opts,
    )
    .await
    .unwrap();
    conformance::settle().await;
    // B never saw the insert itself: the exact path reads Redis, the semantic path needs the stream.
    let exact = b
        .lookup(&conformance::key(
            "t1",
            "chat",
            "how do I reset my password",
        ))
        .await
        .unwrap();
    assert_eq!(exact.hit().unwrap().kind, HitKind::Exact);
    let semantic = b
        .lookup(&conformance::key(
            "t1",
            "chat",
            "how can I reset my password",
        ))
        .await
        .unwrap();
    let hit = semantic.hit().expect("B learns A's vector from the stream");
    assert_eq!(hit.kind, HitKind::Semantic);
    assert_eq!(hit.entry.response, b"from a");

    // B invalidates the tag; A stops serving it, by both paths.
    assert_eq!(
        b.invalidate_tag(&Tenant::new("t1").unwrap(), &tag)
            .await
            .unwrap(),
        1
    );
    conformance::settle().await;
    assert!(
        !a.lookup(&conformance::key(
            "t1",
            "chat",
            "How do I reset my password?"
        ))
        .await
        .unwrap()
        .is_hit()
    );
    assert!(
        !a.lookup(&conformance::key(
            "t1",
            "chat",
            "how can I reset my password"
        ))
        .await
        .unwrap()
        .is_hit()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_instance_replays_the_stream() {
    let redis = test_redis().unwrap();
    let clock = FakeClock::default();
    let a = conformance::cache(Arc::new(store(&redis)), &clock);
    a.insert(
        &conformance::key("t1", "chat", "What is the refund policy?"),
        "30 days",
        Usage::default(),
    )
    .await
    .unwrap();
    a.insert(
        &conformance::key("t1", "chat", "Where is the office?"),
        "Oslo",
        Usage::default(),
    )
    .await
    .unwrap();
    a.invalidate_key(&conformance::key("t1", "chat", "Where is the office?"))
        .await
        .unwrap();
    let late = store(&redis);
    assert_eq!(late.local_entries(), 0, "no I/O before first use");
    late.ready().await.unwrap();
    assert_eq!(
        late.local_entries(),
        1,
        "the insert and the later delete were both replayed"
    );
    let c = conformance::cache(Arc::new(late), &clock);
    let hit = c
        .lookup(&conformance::key("t1", "chat", "what's the refund policy"))
        .await
        .unwrap();
    assert_eq!(hit.hit().unwrap().kind, HitKind::Semantic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_carry_their_ttl_in_redis() {
    let redis = test_redis().unwrap();
    let clock = FakeClock::default();
    let c = conformance::cache(Arc::new(store(&redis)), &clock);
    let entry = c
        .insert(
            &conformance::key("t1", "short", "ttl check"),
            "x",
            Usage::default(),
        )
        .await
        .unwrap();
    let mut conn = redis.async_connection().await.unwrap();
    let key = format!("{}:{{t1}}:e:{}", config(&redis).prefix, entry.id.to_hex());
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        pttl > 0 && pttl <= 5_000,
        "the 'short' namespace has a 5 s TTL, PTTL is {pttl}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_falls_back_to_memory_and_recovers() {
    let mut server = RedisServer::start().unwrap();
    let cfg = RedisConfig::default()
        .op_timeout(Duration::from_millis(300))
        .poll_block(Duration::from_millis(20));
    let redis_store = RedisStore::new(server.pool()).with_config(cfg).unwrap();
    let clock = FakeClock::default();
    let with = |mode| {
        conformance::builder(Arc::new(redis_store.clone()), &clock)
            .failure_mode(mode)
            .build()
            .unwrap()
    };
    let (open, closed, fallback) = (
        with(FailureMode::FailOpen),
        with(FailureMode::FailClosed),
        with(FailureMode::FallbackToMemory),
    );
    fallback
        .insert(
            &conformance::key("t1", "chat", "before the outage"),
            "x",
            Usage::default(),
        )
        .await
        .unwrap();

    for cache in [&open, &closed, &fallback] {
        cache.health().await.expect("healthy while Redis runs");
    }

    server.kill();
    // Health says Redis is gone in every mode, the memory fallback's included.
    for cache in [&open, &closed, &fallback] {
        let err = cache.health().await.expect_err("Redis is down");
        assert!(err.is_backend() && err.is_transient(), "{err:?}");
    }
    let before = conformance::key("t1", "chat", "before the outage");
    // Fail closed: a transient typed error, never a panic.
    let err = closed.lookup(&before).await.unwrap_err();
    assert!(err.is_backend() && err.is_transient(), "{err:?}");
    assert!(
        closed
            .get_or_compute(&before, || async {
                Ok::<_, std::io::Error>(Computed::new("x", Usage::default()))
            })
            .await
            .is_err()
    );
    // Fail open (the default): a miss, and the provider's answer is returned unstored.
    assert!(matches!(
        open.lookup(&before).await.unwrap(),
        Lookup::Miss {
            reason: MissReason::BackendUnavailable,
            ..
        }
    ));
    let served = open
        .get_or_compute(&before, || async {
            Ok::<_, std::io::Error>(Computed::new("fresh", Usage::default()))
        })
        .await
        .unwrap();
    assert_eq!(served.source, Source::Computed);
    assert_eq!(served.entry.response, b"fresh");
    assert!(!served.stored);
    assert_eq!(open.stats().backend_errors, 2);
    assert_eq!(open.stats().insert_failures, 1);
    // Invalidation never fails open.
    assert!(open.invalidate_key(&before).await.is_err());
    // With it: the cache keeps working in memory.
    let key = conformance::key("t1", "chat", "during the outage");
    assert!(!fallback.lookup(&key).await.unwrap().is_hit());
    fallback
        .insert(&key, "local", Usage::default())
        .await
        .unwrap();
    assert!(fallback.lookup(&key).await.unwrap().is_hit());

    server.restart().unwrap();
    // Back on Redis (empty after the restart): writes and reads go there again.
    let mut ok = false;
    for _ in 0..50 {
        if closed
            .insert(
                &conformance::key("t1", "chat", "after"),
                "y",
                Usage::default(),
            )
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the store reconnects after a restart");
    assert!(
        closed
            .lookup(&conformance::key("t1", "chat", "after"))
            .await
            .unwrap()
            .is_hit()
    );
    for cache in [&open, &closed, &fallback] {
        cache
            .health()
            .await
            .expect("healthy again after the restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_rejects_bad_config() {
    let redis = test_redis().unwrap();
    let bad = RedisConfig::default().stream_max_len(0);
    assert!(matches!(
        RedisStore::new(redis.pool()).with_config(bad),
        Err(Error::InvalidConfig(_))
    ));
    // A zero timeout is refused at first use, before any I/O.
    let zero = RedisStore::new(redis.pool()).with_timeout(Duration::ZERO);
    assert!(matches!(zero.ready().await, Err(Error::InvalidConfig(_))));
    let _ = Arc::new(store(&redis)) as Arc<dyn Store>;
}

/// Review finding: the memory fallback reported an invalidation as done while Redis was
/// down, so the stale (possibly private) answer came back once Redis recovered with its
/// data. Now the failure is surfaced and the invalidation is retried before Redis serves
/// anything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_an_outage_is_surfaced_and_replayed() {
    // A Redis that keeps its data across a crash (append-only file, fsync always).
    let mut server = RedisServer::builder()
        .config("appendonly", "yes")
        .config("appendfsync", "always")
        .start_async()
        .await
        .unwrap();
    let cfg = RedisConfig::default()
        .op_timeout(Duration::from_millis(300))
        .poll_block(Duration::from_millis(20));
    let redis_store = RedisStore::new(server.pool()).with_config(cfg).unwrap();
    let clock = FakeClock::default();
    let cache = conformance::builder(Arc::new(redis_store), &clock)
        .failure_mode(FailureMode::FallbackToMemory)
        .build()
        .unwrap();
    let tag = Tag::new("user:42").unwrap();
    let private = conformance::key("t1", "chat", "What is my salary?");
    cache
        .insert_with(
            &private,
            "user 42 earns 100k",
            Usage::default(),
            InsertOptions::default().tags(vec![tag.clone()]),
        )
        .await
        .unwrap();

    server.kill();
    let result = cache
        .invalidate_tag(&Tenant::new("t1").unwrap(), &tag)
        .await;
    let err = result.expect_err("an invalidation Redis never saw is not reported as done");
    assert!(err.is_backend() && err.is_transient(), "{err:?}");

    server.restart().unwrap();
    let mut served = None;
    for _ in 0..50 {
        match cache.lookup(&private).await {
            Ok(lookup) => {
                served = Some(lookup.is_hit());
                // Keep looking until reads come from Redis again (not the fallback).
                if cache.store().usage(private.partition()).await.is_ok() {
                    break;
                }
            }
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        served,
        Some(false),
        "the invalidated answer came back from Redis"
    );
    // The replayed invalidation really removed it from Redis.
    let mut conn = server.async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*:e:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

/// Members of every tracking structure (`ns`, `nss`, `tag` keys) of one tenant, whatever
/// their Redis type.
async fn tracked_members(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> u64 {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(conn)
        .await
        .unwrap();
    let mut total = 0;
    for key in keys.iter().filter(|k| !k.contains(":e:")) {
        let kind: String = redis::cmd("TYPE").arg(key).query_async(conn).await.unwrap();
        let n: u64 = match kind.as_str() {
            "set" => redis::cmd("SCARD")
                .arg(key)
                .query_async(conn)
                .await
                .unwrap(),
            "zset" => redis::cmd("ZCARD")
                .arg(key)
                .query_async(conn)
                .await
                .unwrap(),
            _ => 0,
        };
        total += n;
    }
    total
}

/// Review finding: the namespace, namespace-list and tag sets only ever grew (SADD, never
/// SREM) and invalidation read them whole inside one script. Now they forget expired ids as
/// inserts go, and an invalidation works through them in bounded batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_structures_forget_expired_ids_and_invalidations_are_batched() {
    let server = RedisServer::builder().start_async().await.unwrap();
    let cfg = RedisConfig::default().poll_block(Duration::from_millis(20));
    let store = RedisStore::new(server.pool()).with_config(cfg).unwrap();
    let clock = FakeClock::default();
    let cache = conformance::cache(Arc::new(store), &clock);
    let tag = Tag::new("user:1").unwrap();
    let short = |ms| {
        InsertOptions::default()
            .tags(vec![tag.clone()])
            .ttl(Duration::from_millis(ms))
    };
    // One long-lived entry keeps the structures alive while short-lived ones come and go.
    let key = conformance::key("t1", "chat", "a lasting question");
    cache
        .insert_with(&key, "x", Usage::default(), short(60_000))
        .await
        .unwrap();
    for i in 0..300 {
        let key = conformance::key("t1", "chat", &format!("short-lived question {i}"));
        cache
            .insert_with(&key, "x", Usage::default(), short(100))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Each insert drops up to 100 expired ids from every set it touches.
    for i in 0..3 {
        let key = conformance::key("t1", "chat", &format!("another lasting question {i}"));
        cache
            .insert_with(&key, "x", Usage::default(), short(60_000))
            .await
            .unwrap();
    }
    let mut conn = server.async_connection().await.unwrap();
    let members = tracked_members(&mut conn, "psc:{t1}").await;
    assert!(
        members <= 9,
        "four live entries (namespace, tag, namespace list: 9 members), but the tracking structures hold {members}"
    );

    // 2,500 live entries in one namespace: invalidated in several bounded script calls.
    for i in 0..2_500 {
        let key = conformance::key("t2", "chat", &format!("question {i}"));
        cache.insert(&key, "x", Usage::default()).await.unwrap();
    }
    let before = CommandCalls::read(&mut conn)
        .await
        .unwrap()
        .total_of(["evalsha", "eval"]);
    let removed = cache
        .invalidate(palisade_semantic_cache::Invalidation::Namespace(
            palisade_semantic_cache::Partition::new("t2", "chat").unwrap(),
        ))
        .await
        .unwrap();
    assert_eq!(removed, 2_500);
    let calls = CommandCalls::read(&mut conn)
        .await
        .unwrap()
        .total_of(["evalsha", "eval"])
        - before;
    assert!(
        calls >= 3,
        "one script call went through all 2,500 ids ({calls} calls)"
    );
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("psc:{t2}:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{} keys left", keys.len());
}

/// Review finding: the local vector index kept expired rows until they came up in a
/// search, and one busy tenant could fill `max_local_entries` and stop semantic hits for
/// every other tenant on the instance. Rows now carry their expiry and are pruned, and a
/// full index makes room from the tenant holding the most rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_index_prunes_expired_rows_and_shares_its_budget_fairly() {
    let redis = test_redis().unwrap();
    let cfg = config(&redis).max_local_entries(100);
    let store = RedisStore::new(redis.pool()).with_config(cfg).unwrap();
    let clock = FakeClock::default();
    let cache = conformance::cache(Arc::new(store.clone()), &clock);
    // Expired rows go without being searched for.
    for i in 0..40 {
        let key = conformance::key("t0", "short", &format!("short-lived question {i}"));
        cache.insert(&key, "x", Usage::default()).await.unwrap();
    }
    clock.advance(Duration::from_secs(6));
    for i in 0..100 {
        let key = conformance::key("busy", "chat", &format!("busy tenant question {i}"));
        cache.insert(&key, "x", Usage::default()).await.unwrap();
    }
    conformance::settle().await;
    assert!(store.local_entries() <= 100, "{}", store.local_entries());
    let busy_rows = store.local_entries();
    assert_eq!(
        busy_rows, 100,
        "expired rows were kept in place of live ones"
    );

    // A quiet tenant still gets semantic hits on a full index.
    let quiet = conformance::key("quiet", "chat", "How do I reset my password?");
    cache
        .insert(&quiet, "Settings", Usage::default())
        .await
        .unwrap();
    conformance::settle().await;
    let hit = cache
        .lookup(&conformance::key(
            "quiet",
            "chat",
            "how can I reset my password",
        ))
        .await
        .unwrap();
    assert!(
        hit.hit().is_some_and(|h| h.kind == HitKind::Semantic),
        "a full index refused the quiet tenant's vector"
    );
    assert!(store.local_entries() <= 100, "{}", store.local_entries());

    // Once everything has expired, the next insert leaves only itself.
    clock.advance(Duration::from_secs(61));
    let last = conformance::key("quiet", "chat", "What are your opening hours?");
    cache.insert(&last, "9-5", Usage::default()).await.unwrap();
    conformance::settle().await;
    assert_eq!(store.local_entries(), 1, "expired rows stay in the index");
}
