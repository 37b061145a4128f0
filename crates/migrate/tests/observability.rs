//! Metrics, spans and the audit trail of a migrator (memory target, current-thread runtime
//! so the thread-local recorder and log capture see every task).

use std::time::Duration;

use metrics_util::debugging::DebuggingRecorder;
use palisade_migrate::{Error, FakeClock, LeaseGrant, MemoryStore, MigrationSet, Migrator, Store};
use palisade_testkit::{LogCapture, metric_lines};

/// The two tests run one at a time. `tracing` caches each callsite's interest when the
/// callsite is first hit: the other test's thread, which has no subscriber, could register a
/// span such as `migrate.up` as "never" while this file's capture was being installed, and
/// the span would then be missing from the captured text (seen once in CI under load).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn set() -> MigrationSet {
    MigrationSet::from_embedded(&[
        ("V1__a.up.sql", "SET a 1"),
        ("V1__a.down.sql", "DEL a"),
        ("V2__b.up.sql", "SET b 2"),
        (
            "V3__bad.up.sql",
            "-- palisade: no-transaction\nSET c 3\nFAIL on purpose",
        ),
    ])
    .unwrap()
}

#[tokio::test]
async fn runs_migrations_durations_lock_waits_and_audit_are_recorded() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let logs = LogCapture::new();
    let _logs = logs.set_default();

    let clock = FakeClock::new();
    let store = MemoryStore::with_clock(clock.clone());
    let m = Migrator::builder(store.clone(), set())
        .label("obs")
        .lock_wait(Duration::ZERO)
        .build()
        .unwrap();
    let err = m.up().await.unwrap_err();
    assert!(matches!(
        err,
        Error::Migration {
            version: 3,
            restored: false,
            ..
        }
    ));
    assert_eq!(
        store.get("c").as_deref(),
        Some("3"),
        "no backup configured: partial change stays"
    );
    m.down_to(0).await.unwrap_err(); // V3 failed, V2 has no down file: refused before running
    // Another holder: the run is counted as locked.
    let LeaseGrant::Acquired(_l) = store
        .acquire_lease("someone", Duration::from_secs(60))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(matches!(m.up().await, Err(Error::Locked { .. })));

    assert_eq!(
        metric_lines(&snapshotter),
        [
            "palisade_migrate_migration_duration_seconds{direction=up} 3",
            "palisade_migrate_migrations_total{direction=up,outcome=applied} 2",
            "palisade_migrate_migrations_total{direction=up,outcome=failed} 1",
            "palisade_migrate_runs_total{operation=down,outcome=error} 1",
            "palisade_migrate_runs_total{operation=up,outcome=error} 1",
            "palisade_migrate_runs_total{operation=up,outcome=locked} 1",
        ]
    );
    let text = logs.text();
    assert!(text.contains("migrate.up{target=\"memory\"}"), "{text}");
    assert!(
        text.contains("migrate.migration{version=2 name=\"b\" direction=\"up\"}"),
        "{text}"
    );
    assert!(
        text.contains("palisade_migrate::audit") && text.contains("action=\"apply\""),
        "{text}"
    );
    assert!(
        text.contains("migration failed") && text.contains("FAIL on purpose"),
        "{text}"
    );

    let audit = m.audit_log(100).await.unwrap();
    let actions: Vec<(&str, Option<u64>)> = audit
        .iter()
        .map(|a| (a.action.as_str(), a.version))
        .collect();
    assert_eq!(
        actions,
        [("apply", Some(1)), ("apply", Some(2)), ("fail", Some(3))]
    );
}

#[tokio::test]
async fn a_waiting_migrator_counts_waits_and_a_fake_clock_expires_a_crashed_lease() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let clock = FakeClock::new();
    let store = MemoryStore::with_clock(clock.clone());
    // A migrator that "crashed" holding the lease: it never renews nor releases.
    let LeaseGrant::Acquired(_) = store
        .acquire_lease("crashed", Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!()
    };
    let m = Migrator::builder(store.clone(), set())
        .lock_wait(Duration::from_secs(5))
        .lock_poll(Duration::from_millis(10))
        .build()
        .unwrap();
    let waiter = tokio::spawn({
        let m = m.clone();
        async move { m.up_to(2).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    clock.advance(Duration::from_secs(31)); // the lease runs out on the store's clock
    let report = waiter.await.unwrap().unwrap();
    assert_eq!(report.applied, [1, 2]);
    let lines = metric_lines(&snapshotter);
    let waits = lines
        .iter()
        .find(|l| l.starts_with("palisade_migrate_lock_waits_total"))
        .unwrap();
    let n: f64 = waits.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 2.0, "{lines:?}");
}
