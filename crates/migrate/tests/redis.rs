//! The Redis target: keyspace data migrations as command files and Lua, the ledger in a
//! hash, and the declared keys' backup restored when a migration fails half-way (Redis has
//! no rollback).
#![cfg(feature = "redis")]

use palisade_migrate::{
    BackupKey, BackupVault, Error, MigrationSet, Migrator, RedisStore, RowState, Store,
};
use palisade_testkit::redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_and_lua_migrations_run_and_the_ledger_is_a_hash() {
    let redis = palisade_testkit::test_redis().unwrap();
    let p = redis.key("");
    let store = RedisStore::new(redis.pool()).with_prefix(format!("{p}m"));
    let v1 = format!("HSET {p}user:1 plan free name \"Ada Lovelace\"\nHSET {p}user:2 plan pro");
    let v2 = format!(
        "-- palisade: backup = {p}user:1, {p}user:2\nfor _, k in ipairs(KEYS) do\n  local plan = redis.call('HGET', k, 'plan')\n  redis.call('HSET', k, 'tier', plan)\n  redis.call('HDEL', k, 'plan')\nend"
    );
    let v2_down = format!(
        "-- palisade: backup = {p}user:1, {p}user:2\nfor _, k in ipairs(KEYS) do\n  redis.call('HSET', k, 'plan', redis.call('HGET', k, 'tier'))\n  redis.call('HDEL', k, 'tier')\nend"
    );
    let set = MigrationSet::from_embedded(&[
        ("V1__users.up.redis", &v1),
        ("V2__rename_plan.up.lua", &v2),
        ("V2__rename_plan.down.lua", &v2_down),
    ])
    .unwrap();
    let m = Migrator::builder(store.clone(), set).build().unwrap();
    assert_eq!(
        m.up()
            .await
            .unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)))
            .applied,
        [1, 2]
    );
    let mut c = redis.async_connection().await.unwrap();
    let tier: String = c.hget(format!("{p}user:2"), "tier").await.unwrap();
    assert_eq!(tier, "pro");
    let name: String = c.hget(format!("{p}user:1"), "name").await.unwrap();
    assert_eq!(name, "Ada Lovelace", "quoted arguments keep their blanks");
    let ledger: Vec<String> = c.hkeys(format!("{{{p}m}}:ledger")).await.unwrap();
    assert_eq!(
        ledger.len(),
        2,
        "the ledger is a hash under the prefix's hash tag"
    );
    m.down_to(1).await.unwrap();
    let plan: String = c.hget(format!("{p}user:2"), "plan").await.unwrap();
    assert_eq!(plan, "pro");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_failing_half_way_restores_the_declared_keys() {
    let redis = palisade_testkit::test_redis().unwrap();
    let p = redis.key("");
    let store = RedisStore::new(redis.pool()).with_prefix(format!("{p}m"));
    let mut c = redis.async_connection().await.unwrap();
    let _: () = c.set_ex(format!("{p}counter"), "41", 3600).await.unwrap();
    let _: () = c.hset(format!("{p}cfg"), "mode", "old").await.unwrap();
    // Two commands succeed, the third fails: Redis keeps the first two unless restored.
    let bad = format!(
        "-- palisade: backup = {p}counter, {p}cfg, {p}fresh\nINCR {p}counter\nHSET {p}cfg mode new\nSET {p}fresh 1\nINCR {p}cfg"
    );
    let dir = tempfile::tempdir().unwrap();
    let m = Migrator::builder(
        store.clone(),
        MigrationSet::from_embedded(&[("V1__bump.up.redis", &bad)]).unwrap(),
    )
    .backups(store, BackupVault::new(dir.path(), BackupKey::generate()))
    .build()
    .unwrap();
    let err = m.up().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Migration {
                version: 1,
                restored: true,
                ..
            }
        ),
        "{err}"
    );
    let counter: String = c.get(format!("{p}counter")).await.unwrap();
    assert_eq!(counter, "41");
    let ttl: i64 = c.ttl(format!("{p}counter")).await.unwrap();
    assert!(ttl > 3000, "the TTL is restored too: {ttl}");
    let mode: String = c.hget(format!("{p}cfg"), "mode").await.unwrap();
    assert_eq!(mode, "old");
    let fresh: bool = c.exists(format!("{p}fresh")).await.unwrap();
    assert!(!fresh, "a key created by the failed migration is removed");
    let status = m.status().await.unwrap();
    assert_eq!(status.migrations[0].state, Some(RowState::Failed));
    assert!(status.migrations[0].backup_id.is_some());
    assert_eq!(m.backups().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_lua_and_command_migrations_run_and_a_failure_restores_the_keys() {
    let cluster = palisade_testkit::RedisCluster::start_async(3)
        .await
        .expect("a 3-master Redis Cluster");
    let store = RedisStore::cluster(cluster.pool()).with_prefix("billing");
    // Commands route one by one (keys on different masters); a Lua body keeps its keys in one
    // slot with a hash tag.
    let v1 = "SET plan:alice free\nSET plan:bob pro\nSET plan:carol pro";
    let v2 = "-- palisade: backup = {acct}:alice, {acct}:bob\nfor _, k in ipairs(KEYS) do redis.call('HSET', k, 'credits', 100) end";
    let v2_down = "-- palisade: backup = {acct}:alice, {acct}:bob\nfor _, k in ipairs(KEYS) do redis.call('DEL', k) end";
    let v3 = "-- palisade: backup = plan:alice, plan:bob\nSET plan:alice enterprise\nHSET plan:bob oops 1";
    let set = MigrationSet::from_embedded(&[
        ("V1__plans.up.redis", v1),
        ("V2__credits.up.lua", v2),
        ("V2__credits.down.lua", v2_down),
        ("V3__broken.up.redis", v3),
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let m = Migrator::builder(store.clone(), set)
        .backups(store, BackupVault::new(dir.path(), BackupKey::generate()))
        .build()
        .unwrap();
    let err = m.up().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Migration {
                version: 3,
                restored: true,
                ..
            }
        ),
        "{err}"
    );
    let mut c = cluster.async_connection().await.unwrap();
    let alice: String = c.get("plan:alice").await.unwrap();
    assert_eq!(
        alice, "free",
        "V3's first command was undone by the restore"
    );
    let credits: i64 = c.hget("{acct}:bob", "credits").await.unwrap();
    assert_eq!(credits, 100);
    let status = m.status().await.unwrap();
    assert_eq!(status.current_version, Some(2));
    assert_eq!(status.migrations[2].state, Some(RowState::Failed));
    m.down_to(1).await.unwrap();
    let exists: bool = c.exists("{acct}:alice").await.unwrap();
    assert!(!exists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_server() {
    let mut server = palisade_testkit::RedisServer::start().unwrap();
    let store = RedisStore::new(server.pool()).with_timeout(std::time::Duration::from_secs(2));
    store.health().await.expect("a running server is healthy");
    server.kill();
    let err = store.health().await.expect_err("a killed server is not");
    assert!(
        matches!(err, Error::Backend { .. } | Error::Timeout(_)),
        "{err:?}"
    );
    server.restart().unwrap();
    let mut healthy = false;
    for _ in 0..50 {
        if store.health().await.is_ok() {
            healthy = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(healthy, "healthy again after the restart");
}
