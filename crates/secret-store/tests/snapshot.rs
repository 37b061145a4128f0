//! The encrypted last-known-good snapshot: a process that starts while every provider is
//! down serves what the previous run loaded, within `snapshot_max_age`, never after a
//! denial, never with the wrong key. (A cold start with a killed Redis: tests/redis.rs.)

use std::sync::Arc;
use std::time::Duration;

use palisade_secret_store::testing::Switch;
use palisade_secret_store::{
    ExposeSecret, FailureMode, FakeClock, MasterKey, MemoryProvider, Secrets, SecretsBuilder,
};

fn key() -> MasterKey {
    MasterKey::from_hex("k1", &"5a".repeat(32)).unwrap()
}

fn provider() -> Arc<Switch<MemoryProvider>> {
    Arc::new(Switch::new(
        MemoryProvider::new()
            .with_secret("openai/api-key", "sk-snapshot-test-0123456789")
            .unwrap(),
    ))
}

fn builder(
    clock: &FakeClock,
    p: &Arc<Switch<MemoryProvider>>,
    path: &std::path::Path,
) -> SecretsBuilder {
    Secrets::builder()
        .clock(clock.clone())
        .refresh_jitter(0.0)
        .resurrect(Duration::from_secs(600))
        .snapshot_max_age(Duration::from_secs(86_400))
        .snapshot(path, key())
        .shared_provider(p.clone())
}

#[tokio::test]
async fn a_cold_start_with_every_provider_down_serves_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.snapshot");
    let clock = FakeClock::new();
    let p = provider();
    {
        let first_run = builder(&clock, &p, &path).build().unwrap();
        first_run.get("openai/api-key").await.unwrap();
    }
    let raw = std::fs::read(&path).unwrap();
    assert!(
        !String::from_utf8_lossy(&raw).contains("sk-snapshot-test"),
        "encrypted at rest"
    );

    // The next run starts an hour later, during an outage.
    clock.advance(Duration::from_secs(3600));
    p.fail_transiently();
    let second_run = builder(&clock, &p, &path).build().unwrap();
    let v = second_run.get("openai/api-key").await.unwrap();
    assert_eq!(v.expose_secret(), "sk-snapshot-test-0123456789");
    assert_eq!(v.provider(), "snapshot");
    assert_eq!(second_run.health().await.resurrected_secrets, 1);
    // The resurrect window starts at the first failure of this run.
    clock.advance(Duration::from_secs(599));
    second_run.get("openai/api-key").await.unwrap();
    clock.advance(Duration::from_secs(1));
    assert!(
        second_run
            .get("openai/api-key")
            .await
            .unwrap_err()
            .is_transient()
    );
    // The provider is back: its value is served and the snapshot refreshed.
    p.heal();
    assert_eq!(
        second_run.get("openai/api-key").await.unwrap().provider(),
        "memory"
    );
}

#[tokio::test]
async fn the_snapshot_is_not_served_when_too_old_denied_fail_closed_or_under_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.snapshot");
    let clock = FakeClock::new();
    let p = provider();
    builder(&clock, &p, &path)
        .build()
        .unwrap()
        .get("openai/api-key")
        .await
        .unwrap();

    p.deny();
    let denied = builder(&clock, &p, &path).build().unwrap();
    assert!(denied.get("openai/api-key").await.unwrap_err().is_denied());
    // The denial also removed it from the snapshot.
    p.fail_transiently();
    let after_denial = builder(&clock, &p, &path).build().unwrap();
    assert!(after_denial.get("openai/api-key").await.is_err());

    p.heal();
    builder(&clock, &p, &path)
        .build()
        .unwrap()
        .get("openai/api-key")
        .await
        .unwrap();
    p.fail_transiently();
    let closed = builder(&clock, &p, &path)
        .failure_mode(FailureMode::FailClosed)
        .build()
        .unwrap();
    assert!(closed.get("openai/api-key").await.is_err());

    let other_key = Secrets::builder()
        .clock(clock.clone())
        .snapshot(&path, MasterKey::from_hex("k2", &"01".repeat(32)).unwrap())
        .shared_provider(p.clone())
        .build()
        .expect("a snapshot under another key is ignored, not fatal");
    assert!(other_key.get("openai/api-key").await.is_err());

    clock.advance(Duration::from_secs(86_401));
    let too_old = builder(&clock, &p, &path).build().unwrap();
    assert!(too_old.get("openai/api-key").await.is_err());
    // Still there for a younger limit? No: age is measured from the load.
    let older_limit = builder(&clock, &p, &path)
        .snapshot_max_age(Duration::from_secs(2 * 86_400))
        .build()
        .unwrap();
    assert!(older_limit.get("openai/api-key").await.is_ok());
}

#[tokio::test]
async fn the_snapshot_survives_a_master_key_rotation_through_the_keyring() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.snapshot");
    let clock = FakeClock::new();
    let p = provider();
    builder(&clock, &p, &path)
        .build()
        .unwrap()
        .get("openai/api-key")
        .await
        .unwrap();
    p.fail_transiently();
    let ring = palisade_secret_store::Keyring::new(MasterKey::generate("k2").unwrap())
        .with_previous(key());
    let s = Secrets::builder()
        .clock(clock.clone())
        .snapshot(&path, ring)
        .shared_provider(p.clone())
        .build()
        .unwrap();
    assert_eq!(
        s.get("openai/api-key").await.unwrap().provider(),
        "snapshot"
    );
}
