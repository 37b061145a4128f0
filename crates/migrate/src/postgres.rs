//! The PostgreSQL target and `pg_dump` backups.
//!
//! # Tables
//! In the connection's schema (`search_path`) or the one given to
//! [`PostgresStore::with_schema`], named after the ledger table (default
//! `palisade_migrations`):
//!
//! | table | content |
//! |---|---|
//! | `palisade_migrations` | one row per migration: version, name, checksum, state, phase, timings, who, backup id, error |
//! | `palisade_migrations_lock` | the lease: one row with holder, fencing token and expiry (`clock_timestamp()`) |
//! | `palisade_migrations_audit` | every state change |
//! | `palisade_migrations_apps` | app versions registered for expand/contract |
//!
//! # Working through PgBouncer
//! Every statement is sent with the unnamed prepared statement in one round trip
//! (`query_typed`) or the simple protocol, nothing sets session state, and the lease is a
//! row updated in autocommit statements or inside the transaction that also runs the
//! migration, so a pooler in transaction mode can hand each transaction to another server
//! connection. Another migrator's lease request skips a lease row locked by a running
//! migration (`FOR UPDATE SKIP LOCKED`) and reads the holder instead of waiting.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_postgres::types::{ToSql, Type};

use crate::error::{Error, Result};
use crate::ledger::{
    AppVersion, AuditEntry, Lease, LeaseGrant, LeaseInfo, LedgerRow, RowState, micros,
};
use crate::migration::{ScriptKind, split_statements};
use crate::phase::Phase;
use crate::store::{Backup, BackupScope, ScriptResult, Step, Store};

const LOCK_NAME: &str = "migrate";
const DEFAULT_TABLE: &str = "palisade_migrations";

/// Quote an identifier (`"…"`, inner quotes doubled).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn pg_err(e: tokio_postgres::Error) -> Error {
    let transient = match e.code() {
        None => true,
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("40")
                || c.starts_with("53")
                || c.starts_with("57P")
        }
    };
    Error::backend(e, transient)
}

/// A migration script's error with the server's message, code and position (the driver's
/// own `Display` says only "db error").
fn script_err(e: &tokio_postgres::Error) -> crate::error::BoxError {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(d) = db.detail() {
                text.push_str(&format!("; detail: {d}"));
            }
            if let Some(h) = db.hint() {
                text.push_str(&format!("; hint: {h}"));
            }
            text.into()
        }
        None => e.to_string().into(),
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        other => Error::backend(other, true),
    }
}

fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v)
        .map_err(|_| Error::InvalidConfig(format!("version {v} does not fit PostgreSQL's bigint")))
}

/// The PostgreSQL target: transactional DDL, the ledger and lease in tables of the migrated
/// schema.
///
/// `new` is synchronous and does no I/O; the tables are created by the first operation.
///
/// ```no_run
/// # async fn demo() -> palisade_migrate::Result<()> {
/// use palisade_migrate::{MigrationSet, Migrator, PostgresStore};
///
/// let store = PostgresStore::from_url("postgres://app@db/app")?;
/// let migrator = Migrator::builder(store, MigrationSet::from_dir("migrations")?).build()?;
/// migrator.run_on_startup().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: deadpool_postgres::Pool,
    schema: Option<String>,
    table: String,
    timeout: Duration,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// A target on `pool`'s database.
    pub fn new(pool: deadpool_postgres::Pool) -> Self {
        Self {
            pool,
            schema: None,
            table: DEFAULT_TABLE.to_owned(),
            timeout: Duration::from_secs(30),
        }
    }

    /// A target with a pool of up to 4 connections to `url` (no TLS); no I/O until first
    /// use.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a URL the driver does not accept.
    pub fn from_url(url: &str) -> Result<Self> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::InvalidConfig(format!("bad database URL: {e}")))?;
        let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(4)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::InvalidConfig(format!("connection pool: {e}")))?;
        Ok(Self::new(pool))
    }

    /// Keep the ledger tables in `schema` (default: the connection's `search_path`) and
    /// look for INVALID indexes there.
    #[must_use]
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Name the ledger table (default `palisade_migrations`; the lock, audit and app
    /// tables take it as prefix).
    #[must_use]
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Give up on a ledger or lease statement after `timeout` (default 30 s). Migration
    /// scripts are not bounded by it.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &deadpool_postgres::Pool {
        &self.pool
    }

    fn t(&self, suffix: &str) -> String {
        let name = ident(&format!("{}{suffix}", self.table));
        match &self.schema {
            Some(s) => format!("{}.{name}", ident(s)),
            None => name,
        }
    }

    async fn bounded<T>(&self, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or(Err(Error::Timeout(self.timeout)))
    }

    async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(pool_err)
    }

    /// The fencing statement: extends a current lease (and row-locks it inside a
    /// transaction); no row when the lease is no longer ours.
    fn fence_sql(&self) -> String {
        format!(
            "UPDATE {} SET expires_at = clock_timestamp() + $2 * interval '1 millisecond' \
             WHERE name = '{LOCK_NAME}' AND token = $1 AND holder IS NOT NULL AND expires_at > clock_timestamp() \
             RETURNING 1",
            self.t("_lock")
        )
    }

    async fn fence(&self, client: &impl GenericTyped, lease: &Lease) -> Result<()> {
        let token = to_i64(lease.token)?;
        let ttl = i64::try_from(lease.ttl.as_millis()).unwrap_or(i64::MAX);
        let rows = client
            .typed(
                &self.fence_sql(),
                &[(&token, Type::INT8), (&ttl, Type::INT8)],
            )
            .await?;
        if rows.is_empty() {
            return Err(Error::LeaseLost { token: lease.token });
        }
        Ok(())
    }

    async fn write(
        &self,
        client: &impl GenericTyped,
        rows: &[LedgerRow],
        delete: &[u64],
        audit: &[AuditEntry],
    ) -> Result<()> {
        let upsert = format!(
            "INSERT INTO {} (version, name, checksum, state, phase, started_at_us, finished_at_us, applied_by, backup_id, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name, checksum = EXCLUDED.checksum, state = EXCLUDED.state, \
             phase = EXCLUDED.phase, started_at_us = EXCLUDED.started_at_us, finished_at_us = EXCLUDED.finished_at_us, \
             applied_by = EXCLUDED.applied_by, backup_id = EXCLUDED.backup_id, error = EXCLUDED.error",
            self.t("")
        );
        for r in rows {
            let version = to_i64(r.version)?;
            let started = to_i64(r.started_at_us)?;
            let finished = r.finished_at_us.map(to_i64).transpose()?;
            client
                .typed(
                    &upsert,
                    &[
                        (&version, Type::INT8),
                        (&r.name, Type::TEXT),
                        (&r.checksum, Type::TEXT),
                        (&r.state.as_str(), Type::TEXT),
                        (&r.phase.as_str(), Type::TEXT),
                        (&started, Type::INT8),
                        (&finished, Type::INT8),
                        (&r.applied_by, Type::TEXT),
                        (&r.backup_id, Type::TEXT),
                        (&r.error, Type::TEXT),
                    ],
                )
                .await?;
        }
        let del = format!("DELETE FROM {} WHERE version = $1", self.t(""));
        for v in delete {
            let v = to_i64(*v)?;
            client.typed(&del, &[(&v, Type::INT8)]).await?;
        }
        let ins = format!(
            "INSERT INTO {} (at_us, actor, action, version, detail) VALUES ($1, $2, $3, $4, $5)",
            self.t("_audit")
        );
        for a in audit {
            let at = to_i64(a.at_us)?;
            let version = a.version.map(to_i64).transpose()?;
            client
                .typed(
                    &ins,
                    &[
                        (&at, Type::INT8),
                        (&a.actor, Type::TEXT),
                        (&a.action, Type::TEXT),
                        (&version, Type::INT8),
                        (&a.detail, Type::TEXT),
                    ],
                )
                .await?;
        }
        Ok(())
    }

    fn schema_expr(&self) -> &'static str {
        "COALESCE($1::text, current_schema())"
    }
}

/// `query_typed` on a client or a transaction.
trait GenericTyped: Sync {
    fn typed(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> impl std::future::Future<Output = Result<Vec<tokio_postgres::Row>>> + Send;
}

impl GenericTyped for tokio_postgres::Client {
    async fn typed(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        self.query_typed(sql, params).await.map_err(pg_err)
    }
}

impl GenericTyped for tokio_postgres::Transaction<'_> {
    async fn typed(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        self.query_typed(sql, params).await.map_err(pg_err)
    }
}

fn row_to_ledger(r: &tokio_postgres::Row) -> Result<LedgerRow> {
    let bad = |what: &str| Error::backend(format!("unexpected {what} in the ledger table"), false);
    let state: String = r.get(3);
    let phase: String = r.get(4);
    let version: i64 = r.get(0);
    let started: i64 = r.get(5);
    let finished: Option<i64> = r.get(6);
    Ok(LedgerRow {
        version: u64::try_from(version).map_err(|_| bad("version"))?,
        name: r.get(1),
        checksum: r.get(2),
        state: RowState::parse(&state).ok_or_else(|| bad("state"))?,
        phase: Phase::parse(&phase).ok_or_else(|| bad("phase"))?,
        started_at_us: u64::try_from(started).unwrap_or(0),
        finished_at_us: finished.map(|f| u64::try_from(f).unwrap_or(0)),
        applied_by: r.get(7),
        backup_id: r.get(8),
        error: r.get(9),
    })
}

#[async_trait]
impl Store for PostgresStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn supports(&self, kind: ScriptKind) -> bool {
        kind == ScriptKind::Sql
    }

    async fn prepare(&self) -> Result<()> {
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {ledger} (version bigint PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, \
               state text NOT NULL, phase text NOT NULL DEFAULT 'none', started_at_us bigint NOT NULL, finished_at_us bigint, \
               applied_by text NOT NULL, backup_id text, error text);
             CREATE TABLE IF NOT EXISTS {lock} (name text PRIMARY KEY, holder text, token bigint NOT NULL, expires_at timestamptz NOT NULL);
             INSERT INTO {lock} (name, holder, token, expires_at) SELECT '{LOCK_NAME}', NULL, 0, to_timestamp(0) \
               WHERE NOT EXISTS (SELECT 1 FROM {lock} WHERE name = '{LOCK_NAME}') ON CONFLICT (name) DO NOTHING;
             CREATE TABLE IF NOT EXISTS {audit} (id bigserial PRIMARY KEY, at_us bigint NOT NULL, actor text NOT NULL, \
               action text NOT NULL, version bigint, detail text NOT NULL);
             CREATE TABLE IF NOT EXISTS {apps} (version text PRIMARY KEY, built_against bigint NOT NULL, live boolean NOT NULL, \
               updated_at timestamptz NOT NULL DEFAULT clock_timestamp());",
            ledger = self.t(""),
            lock = self.t("_lock"),
            audit = self.t("_audit"),
            apps = self.t("_apps"),
        );
        self.bounded(async {
            // The lease row is inserted only when absent, read without locking: an insert
            // that met the row would wait for a migration holding it locked.
            // Two migrators creating the tables at once can collide on the catalog's unique
            // index (CREATE TABLE IF NOT EXISTS is not race-free): try again.
            for attempt in 0..3 {
                let client = self.client().await?;
                match client.batch_execute(&ddl).await {
                    Ok(()) => return Ok(()),
                    Err(e)
                        if attempt < 2
                            && e.code()
                                .is_some_and(|c| matches!(c.code(), "23505" | "42P07")) => {}
                    Err(e) => return Err(pg_err(e)),
                }
            }
            Ok(())
        })
        .await
    }

    async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<LeaseGrant> {
        let lock = self.t("_lock");
        let acquire = format!(
            "UPDATE {lock} SET holder = $1, token = token + 1, expires_at = clock_timestamp() + $2 * interval '1 millisecond' \
             WHERE name = (SELECT name FROM {lock} WHERE name = '{LOCK_NAME}' FOR UPDATE SKIP LOCKED) \
               AND (holder IS NULL OR expires_at <= clock_timestamp()) \
             RETURNING token"
        );
        let read = format!(
            "SELECT holder, GREATEST(0, floor(extract(epoch FROM (expires_at - clock_timestamp())) * 1000))::bigint \
             FROM {lock} WHERE name = '{LOCK_NAME}'"
        );
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.bounded(async {
            let client = self.client().await?;
            let holder_s = holder.to_owned();
            let rows = client
                .typed(&acquire, &[(&holder_s, Type::TEXT), (&ttl_ms, Type::INT8)])
                .await?;
            if let Some(r) = rows.first() {
                let token: i64 = r.get(0);
                return Ok(LeaseGrant::Acquired(Lease {
                    token: u64::try_from(token).unwrap_or(0),
                    holder: holder.to_owned(),
                    ttl,
                }));
            }
            let rows = client.typed(&read, &[]).await?;
            let (current, ms): (Option<String>, i64) =
                rows.first().map_or((None, 0), |r| (r.get(0), r.get(1)));
            Ok(LeaseGrant::Held {
                // Freed between the two statements, or row-locked by a finishing
                // transaction: report it as held for a moment; the caller polls again.
                holder: current.unwrap_or_else(|| "(being released)".to_owned()),
                expires_in: Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
            })
        })
        .await
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let lease = Lease {
            ttl,
            ..lease.clone()
        };
        self.bounded(async {
            let client = self.client().await?;
            match self.fence(&**client, &lease).await {
                Ok(()) => Ok(true),
                Err(Error::LeaseLost { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET holder = NULL, expires_at = clock_timestamp() WHERE name = '{LOCK_NAME}' AND token = $1 AND holder IS NOT NULL",
            self.t("_lock")
        );
        let token = to_i64(lease.token)?;
        self.bounded(async {
            self.client()
                .await?
                .typed(&sql, &[(&token, Type::INT8)])
                .await?;
            Ok(())
        })
        .await
    }

    async fn lease_info(&self) -> Result<Option<LeaseInfo>> {
        let sql = format!(
            "SELECT holder, token, GREATEST(0, floor(extract(epoch FROM (expires_at - clock_timestamp())) * 1000))::bigint \
             FROM {} WHERE name = '{LOCK_NAME}' AND holder IS NOT NULL AND expires_at > clock_timestamp()",
            self.t("_lock")
        );
        self.bounded(async {
            let rows = self.client().await?.typed(&sql, &[]).await?;
            Ok(rows.first().map(|r| {
                let token: i64 = r.get(1);
                let ms: i64 = r.get(2);
                LeaseInfo {
                    holder: r.get(0),
                    token: u64::try_from(token).unwrap_or(0),
                    expires_in_ms: u64::try_from(ms).unwrap_or(0),
                }
            }))
        })
        .await
    }

    async fn ledger(&self) -> Result<Vec<LedgerRow>> {
        let sql = format!(
            "SELECT version, name, checksum, state, phase, started_at_us, finished_at_us, applied_by, backup_id, error \
             FROM {} ORDER BY version",
            self.t("")
        );
        self.bounded(async {
            let rows = self.client().await?.typed(&sql, &[]).await?;
            rows.iter().map(row_to_ledger).collect()
        })
        .await
    }

    async fn record(
        &self,
        lease: &Lease,
        rows: &[LedgerRow],
        delete: &[u64],
        audit: &[AuditEntry],
    ) -> Result<()> {
        self.bounded(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            self.fence(&*tx, lease).await?;
            self.write(&*tx, rows, delete, audit).await?;
            tx.commit().await.map_err(pg_err)
        })
        .await
    }

    async fn run_step(&self, lease: &Lease, step: &Step<'_>) -> Result<ScriptResult> {
        let mut client = self.client().await?;
        let started = Instant::now();
        let finish = |row: &LedgerRow| {
            let mut row = row.clone();
            row.finished_at_us = Some(row.started_at_us.saturating_add(micros(started.elapsed())));
            row
        };
        let split = |row: Option<LedgerRow>| -> (Vec<LedgerRow>, Vec<u64>) {
            match row {
                Some(r) => (vec![r], vec![]),
                None => (vec![], vec![step.version]),
            }
        };
        if step.transactional {
            let tx = client.transaction().await.map_err(pg_err)?;
            self.fence(&*tx, lease).await?;
            if let Err(e) = tx.batch_execute(step.script).await {
                drop(tx); // rolls back
                return Ok(Err(script_err(&e)));
            }
            let (rows, delete) = split(step.record.as_ref().map(finish));
            self.write(&*tx, &rows, &delete, std::slice::from_ref(&step.audit))
                .await?;
            // Renew at the end. The lease may have run out during a long migration, but the
            // row lock taken by the first fence kept every other migrator from taking it
            // over, so the token is still ours: extend by token alone.
            let token = to_i64(lease.token)?;
            let ttl = i64::try_from(lease.ttl.as_millis()).unwrap_or(i64::MAX);
            let renew = format!(
                "UPDATE {} SET expires_at = clock_timestamp() + $2 * interval '1 millisecond' \
                 WHERE name = '{LOCK_NAME}' AND token = $1 AND holder IS NOT NULL RETURNING 1",
                self.t("_lock")
            );
            if tx
                .typed(&renew, &[(&token, Type::INT8), (&ttl, Type::INT8)])
                .await?
                .is_empty()
            {
                return Err(Error::LeaseLost { token: lease.token });
            }
            tx.commit().await.map_err(pg_err)?;
            return Ok(Ok(()));
        }
        self.fence(&**client, lease).await?;
        for statement in split_statements(step.script) {
            if let Err(e) = client.batch_execute(statement).await {
                return Ok(Err(script_err(&e)));
            }
        }
        drop(client);
        let (rows, delete) = split(step.record.as_ref().map(finish));
        self.record(lease, &rows, &delete, std::slice::from_ref(&step.audit))
            .await?;
        Ok(Ok(()))
    }

    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        let sql = format!(
            "SELECT at_us, actor, action, version, detail FROM (SELECT * FROM {} ORDER BY id DESC LIMIT $1) a ORDER BY id",
            self.t("_audit")
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.bounded(async {
            let rows = self
                .client()
                .await?
                .typed(&sql, &[(&limit, Type::INT8)])
                .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let at: i64 = r.get(0);
                    let version: Option<i64> = r.get(3);
                    AuditEntry {
                        at_us: u64::try_from(at).unwrap_or(0),
                        actor: r.get(1),
                        action: r.get(2),
                        version: version.and_then(|v| u64::try_from(v).ok()),
                        detail: r.get(4),
                    }
                })
                .collect())
        })
        .await
    }

    async fn invalid_indexes(&self) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT i.indisvalid AND n.nspname = {} ORDER BY 1",
            self.schema_expr()
        );
        self.bounded(async {
            let rows = self
                .client()
                .await?
                .typed(&sql, &[(&self.schema, Type::TEXT)])
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    async fn drop_invalid_indexes(&self, lease: &Lease, names: &[String]) -> Result<()> {
        let client = self.client().await?;
        let schema = match &self.schema {
            Some(s) => s.clone(),
            None => client.typed("SELECT current_schema()::text", &[]).await?[0].get(0),
        };
        for name in names {
            self.fence(&**client, lease).await?;
            client
                .batch_execute(&format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
                    ident(&schema),
                    ident(name)
                ))
                .await
                .map_err(pg_err)?;
        }
        Ok(())
    }

    async fn register_app(&self, app: &AppVersion) -> Result<()> {
        let sql = format!(
            "INSERT INTO {} (version, built_against, live) VALUES ($1, $2, $3) \
             ON CONFLICT (version) DO UPDATE SET built_against = EXCLUDED.built_against, live = EXCLUDED.live, updated_at = clock_timestamp()",
            self.t("_apps")
        );
        let built = to_i64(app.built_against)?;
        self.bounded(async {
            self.client()
                .await?
                .typed(
                    &sql,
                    &[
                        (&app.version, Type::TEXT),
                        (&built, Type::INT8),
                        (&app.live, Type::BOOL),
                    ],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn apps(&self) -> Result<Vec<AppVersion>> {
        let sql = format!(
            "SELECT version, built_against, live FROM {} ORDER BY version",
            self.t("_apps")
        );
        self.bounded(async {
            let rows = self.client().await?.typed(&sql, &[]).await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let built: i64 = r.get(1);
                    AppVersion {
                        version: r.get(0),
                        built_against: u64::try_from(built).unwrap_or(0),
                        live: r.get(2),
                    }
                })
                .collect())
        })
        .await
    }

    async fn health(&self) -> Result<()> {
        self.bounded(async {
            self.client().await?.typed("SELECT 1", &[]).await?;
            Ok(())
        })
        .await
    }
}

/// Backups of a PostgreSQL schema (or of declared tables) with `pg_dump` in custom format,
/// restored with `pg_restore`.
///
/// * [`BackupScope::Everything`]: every object of the schema except the migrator's own
///   tables. Restoring drops every object of the schema but those tables (so what a failed
///   migration created goes too), then restores the dump in one transaction.
/// * [`BackupScope::Objects`]: only those tables (`-t`); restoring drops and recreates them
///   (foreign keys of other tables pointing at them are saved and added back afterwards).
///
/// `pg_dump` must be of the server's major version or newer.
#[derive(Debug, Clone)]
pub struct PgDump {
    url: String,
    schema: String,
    table: String,
    bin_dir: Option<PathBuf>,
    store: Option<PostgresStore>,
}

impl PgDump {
    /// Dumps of `schema` in the database at `url` (a libpq URL, as `pg_dump -d` takes).
    pub fn new(url: impl Into<String>, schema: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: schema.into(),
            table: DEFAULT_TABLE.to_owned(),
            bin_dir: None,
            store: None,
        }
    }

    /// Where `pg_dump` and `pg_restore` are (default: `PATH`).
    #[must_use]
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// The ledger table name, if not `palisade_migrations` (its tables are never dumped nor
    /// dropped).
    #[must_use]
    pub fn ledger_table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir
            .as_ref()
            .map_or_else(|| PathBuf::from(name), |d| d.join(name))
    }

    fn store(&self) -> Result<PostgresStore> {
        match &self.store {
            Some(s) => Ok(s.clone()),
            None => Ok(PostgresStore::from_url(&self.url)?.with_schema(self.schema.clone())),
        }
    }

    async fn run(&self, program: &str, args: &[String]) -> Result<Vec<u8>> {
        let out = tokio::process::Command::new(self.bin(program))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| {
                Error::Backup(format!(
                    "could not run {program}: {e} (install the PostgreSQL client tools)"
                ))
            })?;
        if !out.status.success() {
            return Err(Error::Backup(format!(
                "{program} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out.stdout)
    }

    fn temp_file(bytes: &[u8]) -> Result<TempFile> {
        let mut random = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut random);
        let path =
            std::env::temp_dir().join(format!("palisade-migrate-{}.dump", hex::encode(random)));
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        Ok(TempFile(path))
    }
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[async_trait]
impl Backup for PgDump {
    fn kind(&self) -> &'static str {
        "pg_dump"
    }

    async fn dump(&self, scope: &BackupScope) -> Result<Vec<u8>> {
        let mut args = vec![
            "--format=custom".to_owned(),
            "--no-owner".to_owned(),
            "--no-privileges".to_owned(),
        ];
        match scope {
            BackupScope::Objects(tables) => {
                for t in tables {
                    args.push(format!("--table={}.{}", ident(&self.schema), ident(t)));
                }
            }
            _ => {
                args.push(format!("--schema={}", ident(&self.schema)));
                args.push(format!(
                    "--exclude-table={}.{}*",
                    ident(&self.schema),
                    ident(&self.table)
                ));
            }
        }
        args.push(format!("--dbname={}", self.url));
        self.run("pg_dump", &args).await
    }

    async fn restore(&self, dump: &[u8], scope: &BackupScope) -> Result<()> {
        let file = Self::temp_file(dump)?;
        let path = file.0.display().to_string();
        let mut args = vec![
            "--no-owner".to_owned(),
            "--no-privileges".to_owned(),
            "--single-transaction".to_owned(),
            "--exit-on-error".to_owned(),
        ];
        match scope {
            BackupScope::Objects(tables) => {
                // Foreign keys of other tables that point at these would block a drop (and be
                // lost with CASCADE): remember them, drop, restore, put them back.
                let store = self.store()?;
                let client = store.client().await?;
                let names: Vec<String> = tables
                    .iter()
                    .map(|t| format!("{}.{}", ident(&self.schema), ident(t)))
                    .collect();
                let fks: Vec<String> = client
                    .typed(
                        "SELECT format('ALTER TABLE %s ADD CONSTRAINT %I %s', conrelid::regclass, conname, pg_get_constraintdef(oid)) \
                         FROM pg_constraint WHERE contype = 'f' \
                           AND confrelid IN (SELECT to_regclass(x) FROM unnest($1::text[]) x) \
                           AND conrelid NOT IN (SELECT to_regclass(x) FROM unnest($1::text[]) x WHERE to_regclass(x) IS NOT NULL)",
                        &[(&names, Type::TEXT_ARRAY)],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                client
                    .batch_execute(&format!(
                        "DROP TABLE IF EXISTS {} CASCADE",
                        names.join(", ")
                    ))
                    .await
                    .map_err(pg_err)?;
                args.push(format!("--dbname={}", self.url));
                args.push(path);
                self.run("pg_restore", &args).await?;
                for fk in fks {
                    client.batch_execute(&fk).await.map_err(pg_err)?;
                }
                return Ok(());
            }
            _ => {
                self.drop_schema_objects().await?;
                // Everything the dump holds but the schema itself, which still exists.
                let list = self
                    .run("pg_restore", &["--list".to_owned(), path.clone()])
                    .await?;
                let list: String = String::from_utf8_lossy(&list)
                    .lines()
                    .filter(|l| !l.contains(" SCHEMA - "))
                    .map(|l| format!("{l}\n"))
                    .collect();
                let list_file = Self::temp_file(list.as_bytes())?;
                args.push(format!("--use-list={}", list_file.0.display()));
                args.push(format!("--dbname={}", self.url));
                args.push(path);
                self.run("pg_restore", &args).await?;
                Ok(())
            }
        }
    }
}

impl PgDump {
    /// Drop every object of the schema except the migrator's own tables, in one
    /// transaction.
    async fn drop_schema_objects(&self) -> Result<()> {
        let store = self.store()?;
        let mut client = store.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let relations = "SELECT format('DROP %s IF EXISTS %I.%I CASCADE', CASE c.relkind WHEN 'v' THEN 'VIEW' \
              WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' \
              WHEN 'c' THEN 'TYPE' ELSE 'TABLE' END, n.nspname, c.relname) \
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
            WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c') \
              AND left(c.relname, length($2)) <> $2 \
              AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i'))) \
            ORDER BY CASE c.relkind WHEN 'v' THEN 0 WHEN 'm' THEN 0 WHEN 'S' THEN 2 WHEN 'c' THEN 2 ELSE 1 END";
        let routines = "SELECT format('DROP %s IF EXISTS %s CASCADE', CASE p.prokind WHEN 'p' THEN 'PROCEDURE' \
              WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END, p.oid::regprocedure) \
            FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1 AND $2::text IS NOT NULL";
        let types = "SELECT format('DROP %s IF EXISTS %I.%I CASCADE', CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, \
              n.nspname, t.typname) \
            FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
            WHERE n.nspname = $1 AND t.typtype IN ('e', 'd', 'r') AND $2::text IS NOT NULL";
        for sql in [relations, routines, types] {
            let rows = tx
                .typed(
                    sql,
                    &[(&self.schema, Type::TEXT), (&self.table, Type::TEXT)],
                )
                .await?;
            for r in rows {
                let statement: String = r.get(0);
                tx.batch_execute(&statement).await.map_err(pg_err)?;
            }
        }
        tx.commit().await.map_err(pg_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        let s = PostgresStore::from_url("postgres://u@127.0.0.1/db")
            .unwrap()
            .with_schema("x")
            .with_table("t");
        assert_eq!(s.t("_lock"), "\"x\".\"t_lock\"");
    }
}
