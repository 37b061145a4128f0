//! Database migrations for services that deploy many times a day: versioned up/down
//! migrations for PostgreSQL and Redis, a lease lock that works through PgBouncer,
//! encrypted backups restored on failure, expand/contract phases for blue-green deploys,
//! and a command-line tool.
//!
//! * **Migrations** ([`MigrationSet`]) from a folder, listed with [`embed_migrations!`]
//!   or a whole folder embedded by the [`build`] helper (no proc-macro crate):
//!   `V{version}__{name}.up.sql` / `.down.sql`, header directives (`no-transaction`,
//!   `phase = expand|contract`, `backup = tables`), checksums over normalised text so
//!   line endings and trailing blanks never count as edits.
//! * **Targets** behind one trait ([`Store`]): [`PostgresStore`] (transactional DDL, ledger
//!   table, feature `postgres`), [`RedisStore`] (keyspace data migrations, ledger in a
//!   hash, standalone or Cluster, feature `redis`) and [`MemoryStore`].
//! * **Lease lock**: TTL, heartbeat, fencing token, in a ledger-side row or Redis key: no
//!   advisory lock and no session state, so it works behind a transaction-pooling proxy.
//!   A crashed migrator's lease expires; a second migrator waits, or fails naming the
//!   holder ([`Error::Locked`]).
//! * **Operations** on [`Migrator`]: [`status`](Migrator::status) (serde), plan (dry run),
//!   [`up`](Migrator::up), [`down_to`](Migrator::down_to), [`baseline`](Migrator::baseline),
//!   [`validate`](Migrator::validate), [`repair`](Migrator::repair),
//!   [`run_on_startup`](Migrator::run_on_startup).
//! * **Backups** ([`Backup`], [`BackupVault`]): `pg_dump` / Redis `DUMP` before `up`,
//!   sealed with ChaCha20-Poly1305 under the caller's key, linked to the ledger row,
//!   restored when a non-transactional migration fails.
//! * **`CREATE INDEX CONCURRENTLY`** outside a transaction; an INVALID index left by a
//!   failure is reported by status and validate and dropped before the retry.
//! * **Expand/contract**: a contract migration waits while an app version built before its
//!   expand migration is still registered live.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> palisade_migrate::Result<()> {
//! use palisade_migrate::{MemoryStore, MigrationSet, Migrator, RowState};
//!
//! // The in-memory target runs `SET key value` / `DEL key` scripts; PostgreSQL runs SQL.
//! let set = MigrationSet::from_embedded(&[
//!     ("V1__users.up.sql", "SET users:schema v1"),
//!     ("V1__users.down.sql", "DEL users:schema"),
//!     ("V2__flags.up.sql", "SET flags:dark-mode off"),
//! ])?;
//! let store = MemoryStore::new();
//! let migrator = Migrator::builder(store.clone(), set).label("deployer").build()?;
//!
//! print!("{}", migrator.plan_up(None).await?); // the scripts `up` would run
//! let report = migrator.up().await?;
//! assert_eq!(report.applied, [1, 2]);
//!
//! let status = migrator.status().await?;
//! assert_eq!(status.current_version, Some(2));
//! assert_eq!(status.migrations[0].state, Some(RowState::Applied));
//! let json = serde_json::to_string(&status).unwrap(); // serve it on a status endpoint
//! assert!(json.contains("\"current_version\":2"));
//! # Ok(()) }
//! ```
//!
//! # Metrics
//! | name | kind | labels |
//! |---|---|---|
//! | `palisade_migrate_runs_total` | counter | `operation` = `up`/`down`/`baseline`/`repair`/`backup`/`restore`, `outcome` = `ok`/`error`/`locked`/`invalid` |
//! | `palisade_migrate_migrations_total` | counter | `direction` = `up`/`down`, `outcome` = `applied`/`failed` |
//! | `palisade_migrate_migration_duration_seconds` | histogram | `direction` |
//! | `palisade_migrate_lock_waits_total` | counter | — |
//! | `palisade_migrate_backups_total` | counter | `outcome` = `ok`/`error` |
//! | `palisade_migrate_blocked_total` | counter | — (contract migrations held back) |
//!
//! Spans: `migrate.up`, `migrate.down`, `migrate.baseline`, `migrate.repair`,
//! `migrate.backup`, `migrate.restore` (field `target`) around each locked operation,
//! `migrate.migration` (`version`, `name`, `direction`) around each script. Every state change is appended to
//! the target's audit log and logged at INFO under the `palisade_migrate::audit` target.
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The crate's README, compiled as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod backup;
pub mod build;
mod clock;
mod error;
mod finding;
mod ledger;
mod memory;
mod migration;
mod migrator;
mod phase;
mod store;
mod validate;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
mod postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
mod redis;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use backup::{BackupInfo, BackupKey, BackupVault};
pub use clock::{Clock, FakeClock, SystemClock};
pub use error::{BoxError, Error, Result};
pub use finding::{Issue, Validation};
pub use ledger::{
    AppVersion, AuditEntry, Lease, LeaseGrant, LeaseInfo, LeaseState, LedgerRow, RowState,
};
pub use memory::MemoryStore;
pub use migration::{
    Directives, Migration, MigrationSet, ScriptKind, checksum, normalize, split_statements,
};
pub use migrator::{
    BackupMode, Event, FailureMode, MigrationStatus, Migrator, MigratorBuilder, MigratorConfig,
    Plan, PlannedStep, RepairReport, Status, UpReport,
};
pub use phase::Phase;
pub use store::{Backup, BackupScope, ScriptResult, Step, Store};
pub use validate::{Blocked, Direction};

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use self::postgres::{PgDump, PostgresStore};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use deadpool_postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use deadpool_redis;
