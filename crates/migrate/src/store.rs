//! The target trait: [`Store`], and the [`Backup`] trait a target's backups go through.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{BoxError, Result};
use crate::ledger::{AppVersion, AuditEntry, Lease, LeaseGrant, LeaseInfo, LedgerRow};
use crate::migration::ScriptKind;
use crate::validate::Direction;

/// One migration script to run under a lease, and what to record when it succeeds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Step<'a> {
    /// The migration's version.
    pub version: u64,
    /// Its name.
    pub name: &'a str,
    /// Up or down.
    pub direction: Direction,
    /// What the script is written in.
    pub kind: ScriptKind,
    /// The script.
    pub script: &'a str,
    /// Run it in one transaction with the ledger write (`false` for `no-transaction`).
    pub transactional: bool,
    /// Keys declared by the migration (`backup = …`): a Redis Lua script's `KEYS`.
    pub keys: &'a [String],
    /// On success: the row to write (up), or `None` to delete the version's row (down).
    pub record: Option<LedgerRow>,
    /// On success: the audit entry to append.
    pub audit: AuditEntry,
}

/// The outcome of running a step's script: `Err` carries the script's own error (nothing
/// was recorded); backend and lease failures are the outer [`Result`]'s.
pub type ScriptResult = std::result::Result<(), BoxError>;

/// A migration target: the database being migrated, which also keeps the ledger, the audit
/// log, the lease and the registered app versions.
///
/// The trait uses `#[async_trait]` (boxed futures) so that it is object safe: a
/// [`Migrator`](crate::Migrator) holds an `Arc<dyn Store>`, and switching PostgreSQL, Redis
/// and memory changes one constructor. One allocation per call is nothing next to a
/// migration.
///
/// # Contract
/// * Every write that takes a [`Lease`] first checks, atomically with the write, that the
///   lease's token is the current one and unexpired, and fails with
///   [`Error::LeaseLost`](crate::Error::LeaseLost) otherwise (fencing).
/// * The lease needs no session state (no advisory lock, no temporary table), so it works
///   through a transaction-pooling proxy; its expiry is read on the target's clock.
/// * A transactional [`Step`] runs its script and its ledger write in one transaction: both
///   or neither. A non-transactional one runs statement by statement and records only at
///   the end.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// A short name for metrics and logs (`memory`, `postgres`, `redis`).
    fn backend_name(&self) -> &'static str;

    /// Whether scripts of this kind can run here.
    fn supports(&self, kind: ScriptKind) -> bool;

    /// Whether a script that fails half-way is undone by the target (a transaction).
    /// Redis has no rollback: the migrator restores the declared keys' backup instead.
    fn rolls_back_failed_scripts(&self) -> bool {
        true
    }

    /// Create the ledger, audit, lease and app tables (or keys) if they do not exist.
    /// Idempotent; safe to run from many migrators at once.
    ///
    /// # Errors
    /// Backend failures.
    async fn prepare(&self) -> Result<()>;

    /// Take the lease for `ttl` if it is free or expired.
    ///
    /// # Errors
    /// Backend failures.
    async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<LeaseGrant>;

    /// Extend a lease still held; `Ok(false)` when it was lost.
    ///
    /// # Errors
    /// Backend failures.
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool>;

    /// Give a lease back (nothing happens when it was lost meanwhile).
    ///
    /// # Errors
    /// Backend failures.
    async fn release_lease(&self, lease: &Lease) -> Result<()>;

    /// Who holds the lease now.
    ///
    /// # Errors
    /// Backend failures.
    async fn lease_info(&self) -> Result<Option<LeaseInfo>>;

    /// Every ledger row, lowest version first.
    ///
    /// # Errors
    /// Backend failures.
    async fn ledger(&self) -> Result<Vec<LedgerRow>>;

    /// Upsert `rows`, delete the rows of `delete` and append `audit`, in one atomic write
    /// fenced by `lease`.
    ///
    /// # Errors
    /// [`Error::LeaseLost`](crate::Error::LeaseLost), backend failures.
    async fn record(
        &self,
        lease: &Lease,
        rows: &[LedgerRow],
        delete: &[u64],
        audit: &[AuditEntry],
    ) -> Result<()>;

    /// Run one step's script under `lease` (see the trait's contract).
    ///
    /// # Errors
    /// [`Error::LeaseLost`](crate::Error::LeaseLost), backend failures; the script's own
    /// failure is the inner `Err`.
    async fn run_step(&self, lease: &Lease, step: &Step<'_>) -> Result<ScriptResult>;

    /// The newest `limit` audit entries, oldest first.
    ///
    /// # Errors
    /// Backend failures.
    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>>;

    /// Indexes left INVALID by a failed `CREATE INDEX CONCURRENTLY` (PostgreSQL only).
    ///
    /// # Errors
    /// Backend failures.
    async fn invalid_indexes(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Drop these invalid indexes (before a failed migration is retried).
    ///
    /// # Errors
    /// [`Error::LeaseLost`](crate::Error::LeaseLost), backend failures.
    async fn drop_invalid_indexes(&self, lease: &Lease, names: &[String]) -> Result<()> {
        let _ = (lease, names);
        Ok(())
    }

    /// Register (or update) an app version and whether it is live.
    ///
    /// # Errors
    /// Backend failures.
    async fn register_app(&self, app: &AppVersion) -> Result<()>;

    /// Every registered app version.
    ///
    /// # Errors
    /// Backend failures.
    async fn apps(&self) -> Result<Vec<AppVersion>>;

    /// Whether the target answers now, for a service's health endpoint: one round trip
    /// within the store's timeout (PostgreSQL `SELECT 1`, Redis `PING`); the memory target
    /// always answers. Needs no table and takes no lease.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) or [`Error::Timeout`](crate::Error::Timeout)
    /// when the target does not answer.
    async fn health(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for Arc<S> {
    fn backend_name(&self) -> &'static str {
        (**self).backend_name()
    }
    fn supports(&self, kind: ScriptKind) -> bool {
        (**self).supports(kind)
    }
    fn rolls_back_failed_scripts(&self) -> bool {
        (**self).rolls_back_failed_scripts()
    }
    async fn prepare(&self) -> Result<()> {
        (**self).prepare().await
    }
    async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<LeaseGrant> {
        (**self).acquire_lease(holder, ttl).await
    }
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        (**self).renew_lease(lease, ttl).await
    }
    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        (**self).release_lease(lease).await
    }
    async fn lease_info(&self) -> Result<Option<LeaseInfo>> {
        (**self).lease_info().await
    }
    async fn ledger(&self) -> Result<Vec<LedgerRow>> {
        (**self).ledger().await
    }
    async fn record(
        &self,
        lease: &Lease,
        rows: &[LedgerRow],
        delete: &[u64],
        audit: &[AuditEntry],
    ) -> Result<()> {
        (**self).record(lease, rows, delete, audit).await
    }
    async fn run_step(&self, lease: &Lease, step: &Step<'_>) -> Result<ScriptResult> {
        (**self).run_step(lease, step).await
    }
    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        (**self).audit_log(limit).await
    }
    async fn invalid_indexes(&self) -> Result<Vec<String>> {
        (**self).invalid_indexes().await
    }
    async fn drop_invalid_indexes(&self, lease: &Lease, names: &[String]) -> Result<()> {
        (**self).drop_invalid_indexes(lease, names).await
    }
    async fn register_app(&self, app: &AppVersion) -> Result<()> {
        (**self).register_app(app).await
    }
    async fn apps(&self) -> Result<Vec<AppVersion>> {
        (**self).apps().await
    }
    async fn health(&self) -> Result<()> {
        (**self).health().await
    }
}

/// What a backup covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BackupScope {
    /// The whole schema (PostgreSQL: every object but the migrator's own tables) or the
    /// whole data set (memory).
    Everything,
    /// Only these tables (PostgreSQL) or keys (Redis, memory).
    Objects(Vec<String>),
}

impl BackupScope {
    /// The scope a migration declares with `backup = …`, else [`Everything`](Self::Everything).
    pub fn of(objects: &[String]) -> Self {
        if objects.is_empty() {
            Self::Everything
        } else {
            Self::Objects(objects.to_vec())
        }
    }
}

/// Makes and restores the plain (unencrypted) dump of a target; the
/// [`BackupVault`](crate::BackupVault) encrypts and keeps it.
#[async_trait]
pub trait Backup: Send + Sync + std::fmt::Debug {
    /// What kind of dump this makes (`pg_dump`, `redis_dump`, `memory`).
    fn kind(&self) -> &'static str;

    /// Whether it can dump [`BackupScope::Everything`] (a Redis cannot: only declared
    /// keys). Migrations that declare nothing get no backup from such a target.
    fn supports_everything(&self) -> bool {
        true
    }

    /// Dump `scope`.
    ///
    /// # Errors
    /// [`Error::Backup`](crate::Error::Backup) or backend failures.
    async fn dump(&self, scope: &BackupScope) -> Result<Vec<u8>>;

    /// Put back what [`dump`](Self::dump) saved for `scope`: objects of the scope created
    /// since are dropped, the saved ones recreated with their data.
    ///
    /// # Errors
    /// [`Error::Backup`](crate::Error::Backup) or backend failures.
    async fn restore(&self, dump: &[u8], scope: &BackupScope) -> Result<()>;
}
