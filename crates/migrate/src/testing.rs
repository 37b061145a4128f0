//! The public conformance suite for [`Store`] implementations (feature `testing`).
//!
//! A target provides a [`Fixture`]: a fresh store and the scripts that create, drop and
//! fail in its language. [`conformance_tests!`](crate::conformance_tests) then expands to
//! one `#[tokio::test]` per case:
//!
//! ```ignore
//! palisade_migrate::conformance_tests!(memory, palisade_migrate::testing::MemoryFixture::new());
//! ```
//!
//! The fixture expression is evaluated inside each (async) test, so it may `.await`.

use std::time::Duration;

use async_trait::async_trait;

use crate::ledger::{LeaseGrant, LedgerRow, RowState};
use crate::migration::{MigrationSet, ScriptKind};
use crate::phase::Phase;
use crate::{Error, Issue, MemoryStore, Migrator, Store};

/// What the suite needs from a target.
#[async_trait]
pub trait Fixture: Send + Sync {
    /// The store type (clones share one target).
    type Store: Store + Clone + 'static;
    /// A store on this fixture's (fresh, isolated) target.
    fn store(&self) -> Self::Store;
    /// The script language of this target.
    fn kind(&self) -> ScriptKind;
    /// A script that creates object `name` (a table, a key).
    fn create(&self, name: &str) -> String;
    /// A script that removes object `name`.
    fn remove(&self, name: &str) -> String;
    /// A script that fails.
    fn fail(&self) -> String;
    /// Whether object `name` exists.
    async fn exists(&self, name: &str) -> bool;
}

/// The fixture of [`MemoryStore`].
#[derive(Debug, Clone, Default)]
pub struct MemoryFixture {
    store: MemoryStore,
}

impl MemoryFixture {
    /// A fresh memory target.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Fixture for MemoryFixture {
    type Store = MemoryStore;
    fn store(&self) -> MemoryStore {
        self.store.clone()
    }
    fn kind(&self) -> ScriptKind {
        ScriptKind::Sql
    }
    fn create(&self, name: &str) -> String {
        format!("SET {name} 1")
    }
    fn remove(&self, name: &str) -> String {
        format!("DEL {name}")
    }
    fn fail(&self) -> String {
        "FAIL on purpose".to_owned()
    }
    async fn exists(&self, name: &str) -> bool {
        self.store.get(name).is_some()
    }
}

fn set<F: Fixture>(f: &F, versions: &[(u64, &str)]) -> MigrationSet {
    let ext = f.kind().ext();
    let files: Vec<(String, String)> = versions
        .iter()
        .flat_map(|(v, name)| {
            [
                (format!("V{v}__{name}.up.{ext}"), f.create(name)),
                (format!("V{v}__{name}.down.{ext}"), f.remove(name)),
            ]
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    MigrationSet::from_embedded(&refs).expect("valid test migrations")
}

fn migrator<F: Fixture>(f: &F, set: MigrationSet, label: &str) -> Migrator {
    Migrator::builder(f.store(), set)
        .label(label)
        .lock_wait(Duration::ZERO)
        .build()
        .expect("a valid migrator")
}

/// `up` applies every migration in version order, records them applied, and a second `up`
/// does nothing.
pub async fn up_applies_in_order_and_is_idempotent<F: Fixture>(f: &F) {
    let m = migrator(f, set(f, &[(1, "cf_a"), (2, "cf_b"), (10, "cf_c")]), "t");
    assert_eq!(m.up().await.unwrap().applied, [1, 2, 10]);
    for n in ["cf_a", "cf_b", "cf_c"] {
        assert!(f.exists(n).await, "{n} was created");
    }
    let ledger = f.store().ledger().await.unwrap();
    assert_eq!(
        ledger.iter().map(|r| r.version).collect::<Vec<_>>(),
        [1, 2, 10]
    );
    assert!(
        ledger
            .iter()
            .all(|r| r.state == RowState::Applied && r.applied_by.starts_with("t@"))
    );
    assert!(m.up().await.unwrap().applied.is_empty());
    let status = m.status().await.unwrap();
    assert_eq!((status.current_version, status.pending), (Some(10), 0));
}

/// `up_to` stops at the version; `down_to` reverts the newest first and removes the rows.
pub async fn down_reverts_newest_first<F: Fixture>(f: &F) {
    let m = migrator(f, set(f, &[(1, "cf_d1"), (2, "cf_d2"), (3, "cf_d3")]), "t");
    assert_eq!(m.up_to(2).await.unwrap().applied, [1, 2]);
    assert!(!f.exists("cf_d3").await);
    m.up().await.unwrap();
    assert_eq!(m.down_to(1).await.unwrap(), [3, 2]);
    assert!(f.exists("cf_d1").await && !f.exists("cf_d2").await && !f.exists("cf_d3").await);
    assert_eq!(m.status().await.unwrap().current_version, Some(1));
    assert_eq!(m.plan_down(0).await.unwrap().steps.len(), 1);
}

/// A failing migration is an [`Error::Migration`], recorded `failed` with its error, blocks
/// nothing after a fix and is retried by the next `up`.
pub async fn a_failed_migration_is_recorded_and_retried<F: Fixture>(f: &F) {
    let ext = f.kind().ext();
    let (up1, bad) = (f.create("cf_f1"), f.fail());
    let files = [
        (format!("V1__ok.up.{ext}"), up1.clone()),
        (format!("V2__bad.up.{ext}"), bad),
    ];
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let m = migrator(f, MigrationSet::from_embedded(&refs).unwrap(), "t");
    let err = m.up().await.unwrap_err();
    assert!(matches!(err, Error::Migration { version: 2, .. }), "{err}");
    let ledger = f.store().ledger().await.unwrap();
    let failed = ledger
        .iter()
        .find(|r| r.version == 2)
        .expect("a row for the failure");
    assert_eq!(failed.state, RowState::Failed);
    assert!(failed.error.is_some());
    let v = m.validate().await.unwrap();
    assert!(
        matches!(v.issues.as_slice(), [Issue::Unfinished { version: 2, .. }]),
        "{v}"
    );
    let fixed = [
        (format!("V1__ok.up.{ext}"), up1),
        (format!("V2__bad.up.{ext}"), f.create("cf_f2")),
    ];
    let refs: Vec<(&str, &str)> = fixed
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let m = migrator(f, MigrationSet::from_embedded(&refs).unwrap(), "t");
    assert_eq!(m.up().await.unwrap().applied, [2]);
    assert!(m.validate().await.unwrap().is_ok());
}

/// The lease is exclusive: a second holder is told who holds it and for how long.
pub async fn the_lease_is_exclusive_and_names_its_holder<F: Fixture>(f: &F) {
    let s = f.store();
    s.prepare().await.unwrap();
    let LeaseGrant::Acquired(a) = s
        .acquire_lease("alpha", Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("a free lease is granted")
    };
    match s
        .acquire_lease("beta", Duration::from_secs(30))
        .await
        .unwrap()
    {
        LeaseGrant::Held { holder, expires_in } => {
            assert_eq!(holder, "alpha");
            assert!(
                expires_in > Duration::from_secs(25) && expires_in <= Duration::from_secs(30),
                "{expires_in:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let info = s.lease_info().await.unwrap().unwrap();
    assert_eq!((info.holder.as_str(), info.token), ("alpha", a.token));
    // A migrator that may not wait fails with a message naming the holder.
    let m = migrator(f, set(f, &[(1, "cf_l")]), "t");
    match m.up().await {
        Err(e @ Error::Locked { .. }) => assert!(e.to_string().contains("alpha"), "{e}"),
        other => panic!("{other:?}"),
    }
    s.release_lease(&a).await.unwrap();
    assert!(s.lease_info().await.unwrap().is_none());
    let LeaseGrant::Acquired(b) = s
        .acquire_lease("beta", Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("a released lease is free")
    };
    assert!(b.token > a.token, "tokens grow");
}

/// An expired lease can be taken over with a higher token, and the old holder can neither
/// renew nor write (fencing).
pub async fn an_expired_lease_is_taken_over_and_the_old_holder_is_fenced<F: Fixture>(f: &F) {
    let s = f.store();
    s.prepare().await.unwrap();
    let LeaseGrant::Acquired(old) = s
        .acquire_lease("old", Duration::from_millis(300))
        .await
        .unwrap()
    else {
        panic!("free")
    };
    assert!(
        s.renew_lease(&old, Duration::from_millis(300))
            .await
            .unwrap(),
        "a live lease renews"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let LeaseGrant::Acquired(new) = s
        .acquire_lease("new", Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("an expired lease is free")
    };
    assert!(new.token > old.token);
    assert!(!s.renew_lease(&old, Duration::from_secs(30)).await.unwrap());
    let row = LedgerRow::new(1, "x", "c", RowState::Applied, Phase::None, "old");
    assert!(matches!(
        s.record(&old, std::slice::from_ref(&row), &[], &[]).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(s.ledger().await.unwrap().is_empty());
    s.release_lease(&old).await.unwrap();
    assert_eq!(
        s.lease_info().await.unwrap().unwrap().holder,
        "new",
        "a stale release does nothing"
    );
    s.record(&new, &[row], &[], &[]).await.unwrap();
    assert_eq!(s.ledger().await.unwrap().len(), 1);
}

/// An edited applied migration blocks `up`; `repair` re-stamps it (audited).
pub async fn an_edit_blocks_up_until_repaired<F: Fixture>(f: &F) {
    let m = migrator(f, set(f, &[(1, "cf_e")]), "t");
    m.up().await.unwrap();
    let ext = f.kind().ext();
    let edited = format!("{}\n{}", f.create("cf_e"), f.create("cf_e2"));
    let files = [
        (format!("V1__cf_e.up.{ext}"), edited),
        (format!("V2__more.up.{ext}"), f.create("cf_e3")),
    ];
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let m = migrator(f, MigrationSet::from_embedded(&refs).unwrap(), "t");
    assert!(matches!(m.up().await, Err(Error::Validation(_))));
    assert_eq!(m.repair().await.unwrap().restamped, [1]);
    assert_eq!(m.up().await.unwrap().applied, [2]);
    let audit = m.audit_log(50).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "repair" && a.version == Some(1)),
        "{audit:?}"
    );
}

/// `baseline` records migrations applied without running them.
pub async fn baseline_records_without_running<F: Fixture>(f: &F) {
    let m = migrator(f, set(f, &[(1, "cf_b1"), (2, "cf_b2")]), "t");
    assert_eq!(m.baseline(1).await.unwrap(), [1]);
    assert!(!f.exists("cf_b1").await, "baseline runs nothing");
    assert_eq!(m.up().await.unwrap().applied, [2]);
    let ledger = f.store().ledger().await.unwrap();
    assert_eq!(ledger[0].state, RowState::Baseline);
}

/// Every state change is in the audit log, oldest first.
pub async fn every_state_change_is_audited<F: Fixture>(f: &F) {
    let m = migrator(f, set(f, &[(1, "cf_a1"), (2, "cf_a2")]), "auditor");
    m.up().await.unwrap();
    m.down_to(1).await.unwrap();
    let audit = m.audit_log(100).await.unwrap();
    let actions: Vec<(&str, Option<u64>)> = audit
        .iter()
        .map(|a| (a.action.as_str(), a.version))
        .collect();
    assert_eq!(
        actions,
        [("apply", Some(1)), ("apply", Some(2)), ("revert", Some(2))]
    );
    assert!(
        audit
            .iter()
            .all(|a| a.actor.starts_with("auditor@") && a.at_us > 0)
    );
    assert_eq!(m.audit_log(1).await.unwrap().len(), 1, "the newest entries");
}

/// App versions round-trip, and a contract migration waits for an old live version.
pub async fn contract_waits_for_live_old_apps<F: Fixture>(f: &F) {
    let ext = f.kind().ext();
    let files = [
        (
            format!("V1__expand.up.{ext}"),
            format!("-- palisade: phase = expand\n{}", f.create("cf_c1")),
        ),
        (
            format!("V2__contract.up.{ext}"),
            format!("-- palisade: phase = contract\n{}", f.create("cf_c2")),
        ),
    ];
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let m = migrator(f, MigrationSet::from_embedded(&refs).unwrap(), "t");
    m.register_app("old", 0, true).await.unwrap();
    m.register_app("new", 2, true).await.unwrap();
    let report = m.up().await.unwrap();
    assert_eq!(report.applied, [1]);
    assert_eq!(report.blocked.unwrap().live, ["old"]);
    let apps = f.store().apps().await.unwrap();
    assert_eq!(apps.len(), 2);
    m.register_app("old", 0, false).await.unwrap();
    assert_eq!(m.up().await.unwrap().applied, [2]);
    let ledger = f.store().ledger().await.unwrap();
    assert_eq!(
        (ledger[0].phase, ledger[1].phase),
        (Phase::Expand, Phase::Contract)
    );
}

/// Status serialises to JSON with the fields a status endpoint serves.
pub async fn status_serialises<F: Fixture>(f: &F) {
    let m = migrator(f, set(f, &[(1, "cf_s1"), (2, "cf_s2")]), "t");
    m.up_to(1).await.unwrap();
    let status = m.status().await.unwrap();
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["current_version"], 1);
    assert_eq!(json["latest_version"], 2);
    assert_eq!(json["pending"], 1);
    assert_eq!(json["migrations"][0]["state"], "applied");
    assert!(json["migrations"][1]["state"].is_null());
    assert_eq!(json["target"], f.store().backend_name());
}

/// A live target answers its health check, with or without the migrator's tables.
pub async fn health_answers_on_a_live_target<F: Fixture>(f: &F) {
    let store = f.store();
    store.health().await.expect("a fresh target is healthy");
    let m = migrator(f, set(f, &[(1, "cf_h1")]), "t");
    m.up().await.unwrap();
    store.health().await.expect("a migrated target is healthy");
    let shared: std::sync::Arc<dyn Store> = std::sync::Arc::new(store);
    shared.health().await.expect("through Arc<dyn Store>");
}

/// Expands to one `#[tokio::test]` per conformance case in a module `$name`; `$fixture` is
/// an expression (it may `.await`) evaluated in each test for a fresh [`Fixture`].
#[macro_export]
macro_rules! conformance_tests {
    ($name:ident, $fixture:expr) => {
        $crate::conformance_tests!(@cases $name, $fixture,
            up_applies_in_order_and_is_idempotent,
            down_reverts_newest_first,
            a_failed_migration_is_recorded_and_retried,
            the_lease_is_exclusive_and_names_its_holder,
            an_expired_lease_is_taken_over_and_the_old_holder_is_fenced,
            an_edit_blocks_up_until_repaired,
            baseline_records_without_running,
            every_state_change_is_audited,
            contract_waits_for_live_old_apps,
            status_serialises,
            health_answers_on_a_live_target
        );
    };
    (@cases $name:ident, $fixture:expr, $($case:ident),+) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = $fixture;
                    $crate::testing::$case(&fixture).await;
                }
            )+
        }
    };
}
