//! The [`Migrator`]: status, plan, up, down, baseline, validate, repair, backups, under a
//! lease with heartbeat.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::backup::{BackupInfo, BackupVault};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::finding::{Issue, Validation};
use crate::ledger::{AppVersion, AuditEntry, Lease, LeaseGrant, LeaseInfo, LedgerRow, RowState};
use crate::migration::{Migration, MigrationSet};
use crate::phase::Phase;
use crate::store::{Backup, BackupScope, Step, Store};
use crate::validate::{self, Blocked, Direction};

/// What a failing target means for [`Migrator::run_on_startup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureMode {
    /// The target is unreachable (or the lock stays held): log at WARN and let the service
    /// start on the schema it has.
    FailOpen,
    /// Return the error, so the service does not start on a schema it may not understand
    /// (the default: the safe choice).
    #[default]
    FailClosed,
    /// Not meaningful for migrations (there is no local schema to fall back to): refused by
    /// [`MigratorConfig::validate`].
    FallbackToMemory,
}

/// When backups are taken before `up` (needs [`MigratorBuilder::backups`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BackupMode {
    /// Before every migration `up` applies (the default when backups are configured).
    #[default]
    EachStep,
    /// Only before non-transactional migrations (transactional ones roll back by themselves).
    NonTransactional,
    /// Never before `up` (the standalone `backup` operation still works).
    Off,
}

/// Migrator settings (serde, humantime durations, unknown fields refused).
///
/// ```
/// let c: palisade_migrate::MigratorConfig = serde_json::from_str(
///     r#"{"lease_ttl": "30s", "lock_wait": "5m", "allow_out_of_order": false}"#,
/// ).unwrap();
/// assert_eq!(c.lock_wait, std::time::Duration::from_secs(300));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MigratorConfig {
    /// How long a lease lasts without a heartbeat (default 30 s); the heartbeat renews it
    /// every third of that. A crashed migrator's lease is free again after this.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How long to wait for a lease another migrator holds (default 2 min; `0s` fails at
    /// once with [`Error::Locked`]).
    #[serde(with = "humantime_serde")]
    pub lock_wait: Duration,
    /// How often to retry while waiting (default 250 ms).
    #[serde(with = "humantime_serde")]
    pub lock_poll: Duration,
    /// Apply pending migrations whose version is below the latest applied one (default
    /// `false`: they are reported and `up` refuses).
    pub allow_out_of_order: bool,
    /// When to back up before `up`.
    pub backup_mode: BackupMode,
    /// What [`Migrator::run_on_startup`] does when the target fails.
    pub startup_failure: FailureMode,
    /// A label for this migrator in the lease and the ledger (`deployer`, a pod name);
    /// host and process id are appended.
    pub label: String,
}

impl Default for MigratorConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(30),
            lock_wait: Duration::from_secs(120),
            lock_poll: Duration::from_millis(250),
            allow_out_of_order: false,
            backup_mode: BackupMode::EachStep,
            startup_failure: FailureMode::FailClosed,
            label: "palisade-migrate".to_owned(),
        }
    }
}

impl MigratorConfig {
    /// Check the values.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a lease TTL under 1 s, a zero poll interval or
    /// `FallbackToMemory`.
    pub fn validate(&self) -> Result<()> {
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(Error::InvalidConfig("lease_ttl must be at least 1s".into()));
        }
        if self.lock_poll.is_zero() {
            return Err(Error::InvalidConfig("lock_poll must be above zero".into()));
        }
        if self.startup_failure == FailureMode::FallbackToMemory {
            return Err(Error::InvalidConfig(
                "startup_failure = fallback_to_memory has no meaning for migrations".into(),
            ));
        }
        Ok(())
    }
}

/// Progress reported while a migrator works (the CLI prints these).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Another migrator holds the lease; waiting.
    Waiting {
        /// Who holds it.
        holder: String,
        /// For how much longer.
        expires_in: Duration,
    },
    /// The lease is ours.
    LeaseAcquired {
        /// Its fencing token.
        token: u64,
    },
    /// A backup was written.
    BackupTaken {
        /// The migration it precedes (`None` for a standalone backup).
        version: Option<u64>,
        /// The backup's id.
        id: String,
    },
    /// A migration started.
    Started {
        /// Version.
        version: u64,
        /// Name.
        name: String,
        /// Up or down.
        direction: Direction,
    },
    /// A long migration is still running (every 10 s).
    StillRunning {
        /// Version.
        version: u64,
        /// Time since it started.
        elapsed: Duration,
    },
    /// A migration finished.
    Finished {
        /// Version.
        version: u64,
        /// Up or down.
        direction: Direction,
        /// How long it took.
        took: Duration,
    },
    /// A migration failed.
    Failed {
        /// Version.
        version: u64,
        /// The error text.
        error: String,
    },
    /// A backup was restored.
    Restored {
        /// The backup's id.
        id: String,
    },
    /// `up` stopped before a contract migration.
    Blocked(Blocked),
}

type EventSink = Arc<dyn Fn(&Event) + Send + Sync>;

/// One migration's line in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MigrationStatus {
    /// Version.
    pub version: u64,
    /// Name.
    pub name: String,
    /// Phase.
    pub phase: Phase,
    /// The ledger state, `None` when it never ran.
    pub state: Option<RowState>,
    /// Whether the file still has the checksum that was applied (`None` when not applied
    /// or without a file).
    pub checksum_matches: Option<bool>,
    /// When it was applied (microseconds since the Unix epoch).
    pub applied_at_us: Option<u64>,
    /// How long it took, in milliseconds.
    pub duration_ms: Option<u64>,
    /// Who applied it.
    pub applied_by: Option<String>,
    /// The backup taken before it.
    pub backup_id: Option<String>,
    /// Whether a down script exists.
    pub reversible: bool,
}

/// Where the target stands: serde-serialisable, so a service can serve it on a status
/// endpoint as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Status {
    /// `postgres`, `redis` or `memory`.
    pub target: String,
    /// The highest applied (or baselined) version.
    pub current_version: Option<u64>,
    /// The highest version among the files.
    pub latest_version: Option<u64>,
    /// Migrations not applied yet (unfinished ones included).
    pub pending: usize,
    /// Every migration, from files and ledger, in version order.
    pub migrations: Vec<MigrationStatus>,
    /// Who holds the lease, if anyone.
    pub lease: Option<LeaseInfo>,
    /// What [`Migrator::validate`] finds (INVALID indexes included).
    pub issues: Vec<Issue>,
    /// Registered app versions.
    pub apps: Vec<AppVersion>,
    /// The contract migration `up` would stop at, if any.
    pub blocked: Option<Blocked>,
}

impl Status {
    /// Whether nothing is pending and validation is clean.
    pub fn is_up_to_date(&self) -> bool {
        self.pending == 0 && self.issues.is_empty()
    }
}

/// One step of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PlannedStep {
    /// Version.
    pub version: u64,
    /// Name.
    pub name: String,
    /// Up or down.
    pub direction: Direction,
    /// Phase.
    pub phase: Phase,
    /// Whether it runs in one transaction.
    pub transactional: bool,
    /// The backup `up` would take first.
    pub backup: Option<BackupScope>,
    /// The script that would run.
    pub script: String,
}

/// What `up` or `down` would do, without doing it (a dry run). `Display` prints the
/// scripts with a header comment per step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Plan {
    /// The steps, in order.
    pub steps: Vec<PlannedStep>,
    /// The contract migration the plan stops before, if any.
    pub blocked: Option<Blocked>,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            writeln!(f, "-- nothing to do")?;
        }
        for s in &self.steps {
            write!(f, "-- V{} {} ({}", s.version, s.name, s.direction.as_str())?;
            if s.phase != Phase::None {
                write!(f, ", {}", s.phase)?;
            }
            if !s.transactional {
                write!(f, ", no transaction")?;
            }
            match &s.backup {
                Some(BackupScope::Objects(o)) => write!(f, ", backup: {}", o.join(", "))?,
                Some(_) => write!(f, ", backup: everything")?,
                None => {}
            }
            writeln!(f, ")")?;
            writeln!(f, "{}", s.script.trim_end())?;
            writeln!(f)?;
        }
        if let Some(b) = &self.blocked {
            writeln!(
                f,
                "-- stops before V{} (contract of V{}): app version(s) {} still live",
                b.version,
                b.expand,
                b.live.join(", ")
            )?;
        }
        Ok(())
    }
}

/// What `up` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UpReport {
    /// The versions applied, in order.
    pub applied: Vec<u64>,
    /// The backups taken.
    pub backups: Vec<String>,
    /// The contract migration `up` stopped before, if any (not an error: run `up` again
    /// once the old app version is retired).
    pub blocked: Option<Blocked>,
}

/// What `repair` changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RepairReport {
    /// Versions whose checksum was re-stamped to the file's.
    pub restamped: Vec<u64>,
    /// Unfinished rows removed (they will run again).
    pub cleared: Vec<u64>,
    /// INVALID indexes dropped.
    pub dropped_indexes: Vec<String>,
}

/// Builds a [`Migrator`]; no I/O happens until an operation is called.
#[must_use]
pub struct MigratorBuilder {
    store: Arc<dyn Store>,
    set: MigrationSet,
    config: MigratorConfig,
    clock: Arc<dyn Clock>,
    backup: Option<(Arc<dyn Backup>, BackupVault)>,
    app: Option<AppVersion>,
    events: Option<EventSink>,
}

impl fmt::Debug for MigratorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MigratorBuilder")
            .field("store", &self.store)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl MigratorBuilder {
    /// All settings at once.
    pub fn config(mut self, config: MigratorConfig) -> Self {
        self.config = config;
        self
    }
    /// See [`MigratorConfig::lease_ttl`].
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.config.lease_ttl = ttl;
        self
    }
    /// See [`MigratorConfig::lock_wait`].
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.config.lock_wait = wait;
        self
    }
    /// See [`MigratorConfig::lock_poll`].
    pub fn lock_poll(mut self, poll: Duration) -> Self {
        self.config.lock_poll = poll;
        self
    }
    /// See [`MigratorConfig::allow_out_of_order`].
    pub fn allow_out_of_order(mut self, allow: bool) -> Self {
        self.config.allow_out_of_order = allow;
        self
    }
    /// See [`MigratorConfig::label`].
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.config.label = label.into();
        self
    }
    /// See [`MigratorConfig::backup_mode`].
    pub fn backup_mode(mut self, mode: BackupMode) -> Self {
        self.config.backup_mode = mode;
        self
    }
    /// See [`MigratorConfig::startup_failure`].
    pub fn startup_failure(mut self, mode: FailureMode) -> Self {
        self.config.startup_failure = mode;
        self
    }
    /// The clock for ledger and audit timestamps (default: the system clock).
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }
    /// Back up through `backup` into `vault` before `up` (see [`BackupMode`]).
    pub fn backups(mut self, backup: impl Backup + 'static, vault: BackupVault) -> Self {
        self.backup = Some((Arc::new(backup), vault));
        self
    }
    /// The app version this process runs, registered as live by
    /// [`run_on_startup`](Migrator::run_on_startup).
    pub fn app_version(mut self, version: impl Into<String>, built_against: u64) -> Self {
        self.app = Some(AppVersion {
            version: version.into(),
            built_against,
            live: true,
        });
        self
    }
    /// Call `sink` with every progress [`Event`].
    pub fn on_event(mut self, sink: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.events = Some(Arc::new(sink));
        self
    }

    /// The migrator.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for bad settings or a migration the target cannot run.
    pub fn build(self) -> Result<Migrator> {
        self.config.validate()?;
        if let Some(m) = self.set.iter().find(|m| !self.store.supports(m.kind())) {
            return Err(Error::InvalidConfig(format!(
                "migration {} is a .{} script, which the {} target cannot run",
                m.version(),
                m.kind().ext(),
                self.store.backend_name()
            )));
        }
        let holder = format!(
            "{}@{}:{}",
            self.config.label,
            hostname(),
            std::process::id()
        );
        Ok(Migrator {
            inner: Arc::new(Inner {
                store: self.store,
                set: self.set,
                config: self.config,
                clock: self.clock,
                backup: self.backup,
                app: self.app,
                events: self.events,
                holder,
                prepared: tokio::sync::OnceCell::new(),
            }),
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

struct Inner {
    store: Arc<dyn Store>,
    set: MigrationSet,
    config: MigratorConfig,
    clock: Arc<dyn Clock>,
    backup: Option<(Arc<dyn Backup>, BackupVault)>,
    app: Option<AppVersion>,
    events: Option<EventSink>,
    holder: String,
    prepared: tokio::sync::OnceCell<()>,
}

/// Runs a [`MigrationSet`] against a [`Store`]. Cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> palisade_migrate::Result<()> {
/// use palisade_migrate::{MemoryStore, MigrationSet, Migrator};
///
/// let set = MigrationSet::from_embedded(&[
///     ("V1__greeting.up.sql", "SET greeting hello"),
///     ("V1__greeting.down.sql", "DEL greeting"),
/// ])?;
/// let store = MemoryStore::new();
/// let migrator = Migrator::builder(store.clone(), set).build()?;
/// assert_eq!(migrator.up().await?.applied, [1]);
/// assert_eq!(store.get("greeting").as_deref(), Some("hello"));
/// migrator.down_to(0).await?;
/// assert_eq!(store.get("greeting"), None);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Migrator {
    inner: Arc<Inner>,
}

impl fmt::Debug for Migrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migrator")
            .field("store", &self.inner.store)
            .field("migrations", &self.inner.set.len())
            .field("holder", &self.inner.holder)
            .finish_non_exhaustive()
    }
}

/// A lease with its heartbeat task.
struct Held {
    lease: Lease,
    lost: Arc<AtomicBool>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

fn outcome_label<T>(r: &Result<T>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(Error::Locked { .. }) => "locked",
        Err(Error::Validation(_)) => "invalid",
        Err(_) => "error",
    }
}

impl Migrator {
    /// A builder for a migrator of `set` on `store`.
    pub fn builder(store: impl Store + 'static, set: MigrationSet) -> MigratorBuilder {
        MigratorBuilder {
            store: Arc::new(store),
            set,
            config: MigratorConfig::default(),
            clock: Arc::new(SystemClock),
            backup: None,
            app: None,
            events: None,
        }
    }

    /// The migrations this migrator knows.
    pub fn migrations(&self) -> &MigrationSet {
        &self.inner.set
    }

    /// The name this migrator holds leases and writes ledger rows under.
    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    #[allow(clippy::needless_pass_by_value)] // callers build the event for this call
    fn emit(&self, event: Event) {
        if let Some(sink) = &self.inner.events {
            sink(&event);
        }
    }

    fn now(&self) -> u64 {
        self.inner.clock.now_micros()
    }

    fn audit(&self, action: &str, version: Option<u64>, detail: impl Into<String>) -> AuditEntry {
        let mut e = AuditEntry::new(&self.inner.holder, action, version, detail);
        e.at_us = self.now();
        tracing::info!(target: "palisade_migrate::audit", action, version, detail = %e.detail, "audit");
        e
    }

    async fn prepare(&self) -> Result<()> {
        self.inner
            .prepared
            .get_or_try_init(|| self.inner.store.prepare())
            .await
            .map(|_| ())
    }

    async fn acquire(&self) -> Result<Held> {
        self.prepare().await?;
        let cfg = &self.inner.config;
        let started = Instant::now();
        loop {
            match self
                .inner
                .store
                .acquire_lease(&self.inner.holder, cfg.lease_ttl)
                .await?
            {
                LeaseGrant::Acquired(lease) => {
                    tracing::debug!(token = lease.token, "lease acquired");
                    self.emit(Event::LeaseAcquired { token: lease.token });
                    return Ok(self.heartbeat(lease));
                }
                LeaseGrant::Held { holder, expires_in } => {
                    let waited = started.elapsed();
                    if waited >= cfg.lock_wait {
                        return Err(Error::Locked { holder, expires_in });
                    }
                    metrics::counter!("palisade_migrate_lock_waits_total").increment(1);
                    tracing::info!(%holder, ?expires_in, "migration lock held; waiting");
                    self.emit(Event::Waiting { holder, expires_in });
                    tokio::time::sleep(cfg.lock_poll.min(cfg.lock_wait - waited)).await;
                }
            }
        }
    }

    fn heartbeat(&self, lease: Lease) -> Held {
        let lost = Arc::new(AtomicBool::new(false));
        let store = Arc::clone(&self.inner.store);
        let ttl = self.inner.config.lease_ttl;
        let (l, flag) = (lease.clone(), Arc::clone(&lost));
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                match store.renew_lease(&l, ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(token = l.token, "migration lease lost");
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "migration lease heartbeat failed"),
                }
            }
        });
        Held {
            lease,
            lost,
            heartbeat,
        }
    }

    async fn release(&self, held: Held) {
        held.heartbeat.abort();
        if let Err(e) = self.inner.store.release_lease(&held.lease).await {
            tracing::warn!(error = %e, "releasing the migration lease failed; it will expire");
        }
    }

    /// Run `f` under the lease and release it afterwards, counting the run.
    async fn locked<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(Lease, Arc<AtomicBool>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let target = self.inner.store.backend_name();
        let span = match operation {
            "up" => tracing::info_span!("migrate.up", target),
            "down" => tracing::info_span!("migrate.down", target),
            "baseline" => tracing::info_span!("migrate.baseline", target),
            "repair" => tracing::info_span!("migrate.repair", target),
            "backup" => tracing::info_span!("migrate.backup", target),
            "restore" => tracing::info_span!("migrate.restore", target),
            _ => tracing::info_span!("migrate.run", operation, target),
        };
        async {
            let held = self.acquire().await;
            let r = match held {
                Ok(held) => {
                    let r = f(held.lease.clone(), Arc::clone(&held.lost)).await;
                    self.release(held).await;
                    r
                }
                Err(e) => Err(e),
            };
            if let Err(e) = &r {
                tracing::warn!(operation, error = %e, "migration operation failed");
            }
            metrics::counter!("palisade_migrate_runs_total", "operation" => operation, "outcome" => outcome_label(&r))
                .increment(1);
            r
        }
        .instrument(span)
        .await
    }

    /// Where the target stands. Reads only (no lease).
    ///
    /// # Errors
    /// Backend failures.
    pub async fn status(&self) -> Result<Status> {
        self.prepare().await?;
        let store = &self.inner.store;
        let set = &self.inner.set;
        let ledger = store.ledger().await?;
        let invalid = store.invalid_indexes().await?;
        let apps = store.apps().await?;
        let lease = store.lease_info().await?;
        let issues = validate::validate(set, &ledger, &invalid).issues;
        let mut versions: Vec<u64> = set.iter().map(Migration::version).collect();
        versions.extend(ledger.iter().map(|r| r.version));
        versions.sort_unstable();
        versions.dedup();
        let migrations: Vec<MigrationStatus> = versions
            .into_iter()
            .map(|v| {
                let m = set.get(v);
                let row = ledger.iter().find(|r| r.version == v);
                MigrationStatus {
                    version: v,
                    name: m.map_or_else(
                        || row.map(|r| r.name.clone()).unwrap_or_default(),
                        |m| m.name().to_owned(),
                    ),
                    phase: m.map_or_else(|| row.map_or(Phase::None, |r| r.phase), Migration::phase),
                    state: row.map(|r| r.state),
                    checksum_matches: match (m, row) {
                        (Some(m), Some(r)) if r.state.is_done() => Some(m.checksum() == r.checksum),
                        _ => None,
                    },
                    applied_at_us: row.and_then(|r| r.finished_at_us),
                    duration_ms: row
                        .and_then(LedgerRow::duration)
                        .map(|d| d.as_millis() as u64),
                    applied_by: row.map(|r| r.applied_by.clone()),
                    backup_id: row.and_then(|r| r.backup_id.clone()),
                    reversible: m.is_some_and(|m| m.down().is_some()),
                }
            })
            .collect();
        let pending = set
            .iter()
            .filter(|m| {
                !ledger
                    .iter()
                    .any(|r| r.version == m.version() && r.state.is_done())
            })
            .count();
        let blocked = validate::plan_up(set, &ledger, None, true)
            .ok()
            .and_then(|steps| {
                steps
                    .iter()
                    .find_map(|m| validate::contract_blocked(set, m, &apps))
            });
        Ok(Status {
            target: store.backend_name().to_owned(),
            current_version: ledger
                .iter()
                .filter(|r| r.state.is_done())
                .map(|r| r.version)
                .max(),
            latest_version: set.latest(),
            pending,
            migrations,
            lease,
            issues,
            apps,
            blocked,
        })
    }

    /// Compare the ledger with the files: edited, missing, out-of-order and unfinished
    /// migrations, INVALID indexes. A value; empty when all is well. Reads only.
    ///
    /// # Errors
    /// Backend failures.
    pub async fn validate(&self) -> Result<Validation> {
        self.prepare().await?;
        let ledger = self.inner.store.ledger().await?;
        let invalid = self.inner.store.invalid_indexes().await?;
        Ok(validate::validate(&self.inner.set, &ledger, &invalid))
    }

    /// Whether a failure of `m` can leave partial changes (and so needs a restore).
    fn may_leave_partial_changes(&self, m: &Migration) -> bool {
        !m.is_transactional() || !self.inner.store.rolls_back_failed_scripts()
    }

    fn backup_scope(&self, m: &Migration) -> Option<BackupScope> {
        let (backup, _) = self.inner.backup.as_ref()?;
        let scope = BackupScope::of(&m.directives().backup);
        if scope == BackupScope::Everything && !backup.supports_everything() {
            return None;
        }
        match self.inner.config.backup_mode {
            BackupMode::Off => None,
            BackupMode::NonTransactional if !self.may_leave_partial_changes(m) => None,
            _ => Some(scope),
        }
    }

    /// What `up` (to `to`, or to the latest) would run: a dry run. Reads only.
    ///
    /// # Errors
    /// [`Error::Validation`] when `up` would refuse; backend failures.
    pub async fn plan_up(&self, to: Option<u64>) -> Result<Plan> {
        self.prepare().await?;
        let ledger = self.inner.store.ledger().await?;
        let apps = self.inner.store.apps().await?;
        let set = &self.inner.set;
        let mut steps = Vec::new();
        let mut blocked = None;
        for m in validate::plan_up(set, &ledger, to, self.inner.config.allow_out_of_order)? {
            if let Some(b) = validate::contract_blocked(set, m, &apps) {
                blocked = Some(b);
                break;
            }
            steps.push(PlannedStep {
                version: m.version(),
                name: m.name().to_owned(),
                direction: Direction::Up,
                phase: m.phase(),
                transactional: m.is_transactional(),
                backup: self.backup_scope(m),
                script: m.up().to_owned(),
            });
        }
        Ok(Plan { steps, blocked })
    }

    /// What `down` to `to` would run: a dry run. Reads only.
    ///
    /// # Errors
    /// [`Error::Irreversible`], [`Error::Validation`]; backend failures.
    pub async fn plan_down(&self, to: u64) -> Result<Plan> {
        self.prepare().await?;
        let ledger = self.inner.store.ledger().await?;
        let steps = validate::plan_down(&self.inner.set, &ledger, to)?
            .into_iter()
            .map(|m| PlannedStep {
                version: m.version(),
                name: m.name().to_owned(),
                direction: Direction::Down,
                phase: m.phase(),
                transactional: m.is_transactional(),
                backup: None,
                script: m.down().unwrap_or_default().to_owned(),
            })
            .collect();
        Ok(Plan {
            steps,
            blocked: None,
        })
    }

    /// Apply every pending migration under the lease, stopping before a contract migration
    /// an old live app version still needs.
    ///
    /// # Errors
    /// [`Error::Locked`], [`Error::Validation`], [`Error::Migration`] (the ledger row is
    /// `failed`; a non-transactional one's backup was restored), [`Error::LeaseLost`],
    /// backend failures.
    pub async fn up(&self) -> Result<UpReport> {
        self.up_inner(None).await
    }

    /// [`up`](Self::up), to version `to` (inclusive).
    ///
    /// # Errors
    /// As [`up`](Self::up); [`Error::InvalidConfig`] when no file has version `to`.
    pub async fn up_to(&self, to: u64) -> Result<UpReport> {
        self.up_inner(Some(to)).await
    }

    async fn up_inner(&self, to: Option<u64>) -> Result<UpReport> {
        self.locked("up", |lease, lost| async move {
            let store = &self.inner.store;
            let set = &self.inner.set;
            let ledger = store.ledger().await?;
            let apps = store.apps().await?;
            let mut report = UpReport::default();
            let steps = validate::plan_up(set, &ledger, to, self.inner.config.allow_out_of_order)?;
            for m in steps {
                if lost.load(Ordering::SeqCst) {
                    return Err(Error::LeaseLost { token: lease.token });
                }
                if let Some(b) = validate::contract_blocked(set, m, &apps) {
                    tracing::info!(version = b.version, live = ?b.live, "contract migration waits for old app versions");
                    metrics::counter!("palisade_migrate_blocked_total").increment(1);
                    self.emit(Event::Blocked(b.clone()));
                    report.blocked = Some(b);
                    break;
                }
                let previous = ledger.iter().find(|r| r.version == m.version());
                if let Some(id) = self.apply_up(&lease, m, previous).await? {
                    report.backups.push(id);
                }
                report.applied.push(m.version());
            }
            Ok(report)
        })
        .await
    }

    async fn take_backup(
        &self,
        lease: &Lease,
        scope: &BackupScope,
        m: Option<&Migration>,
    ) -> Result<BackupInfo> {
        let (backup, vault) = self
            .inner
            .backup
            .as_ref()
            .ok_or_else(|| Error::InvalidConfig("no backup vault configured".into()))?;
        let dump = backup.dump(scope).await;
        let dump = match dump {
            Ok(d) => d,
            Err(e) => {
                metrics::counter!("palisade_migrate_backups_total", "outcome" => "error")
                    .increment(1);
                return Err(e);
            }
        };
        let info = vault.save(
            self.inner.store.backend_name(),
            backup.kind(),
            scope,
            m.map(|m| (m.version(), m.name())),
            self.now(),
            &dump,
        )?;
        metrics::counter!("palisade_migrate_backups_total", "outcome" => "ok").increment(1);
        let audit = self.audit(
            "backup",
            m.map(Migration::version),
            format!("backup {} ({} bytes)", info.id, info.size),
        );
        self.inner.store.record(lease, &[], &[], &[audit]).await?;
        self.emit(Event::BackupTaken {
            version: m.map(Migration::version),
            id: info.id.clone(),
        });
        Ok(info)
    }

    /// Apply one migration; returns the id of the backup taken before it.
    async fn apply_up(
        &self,
        lease: &Lease,
        m: &Migration,
        previous: Option<&LedgerRow>,
    ) -> Result<Option<String>> {
        let store = &self.inner.store;
        let span = tracing::info_span!(
            "migrate.migration",
            version = m.version(),
            name = m.name(),
            direction = "up"
        );
        async {
            let mut row = LedgerRow::new(m.version(), m.name(), m.checksum(), RowState::Pending, m.phase(), &self.inner.holder);
            row.started_at_us = self.now();
            let mut backup_id = None;
            if let Some(scope) = self.backup_scope(m) {
                let info = self.take_backup(lease, &scope, Some(m)).await?;
                row.backup_id = Some(info.id.clone());
                backup_id = Some(info.id);
                store.record(lease, &[row.clone()], &[], &[]).await?;
            }
            if !m.is_transactional() {
                // A previous run that died or failed may have left INVALID indexes behind.
                if previous.is_some() {
                    let leftovers: Vec<String> = store
                        .invalid_indexes()
                        .await?
                        .into_iter()
                        .filter(|i| creates_index(m.up(), i))
                        .collect();
                    if !leftovers.is_empty() {
                        store.drop_invalid_indexes(lease, &leftovers).await?;
                        let audit = self.audit("cleanup", Some(m.version()), format!("dropped INVALID index(es) {}", leftovers.join(", ")));
                        store.record(lease, &[], &[], &[audit]).await?;
                    }
                }
                row.state = RowState::Running;
                store.record(lease, &[row.clone()], &[], &[]).await?;
            }
            self.emit(Event::Started {
                version: m.version(),
                name: m.name().to_owned(),
                direction: Direction::Up,
            });
            let mut done = row.clone();
            done.state = RowState::Applied;
            done.error = None;
            let step = Step {
                version: m.version(),
                name: m.name(),
                direction: Direction::Up,
                kind: m.kind(),
                script: m.up(),
                transactional: m.is_transactional(),
                keys: &m.directives().backup,
                record: Some(done),
                audit: self.audit("apply", Some(m.version()), format!("{} applied (checksum {})", m.name(), m.checksum())),
            };
            let started = Instant::now();
            let result = self.run_with_progress(lease, &step).await?;
            let took = started.elapsed();
            metrics::histogram!("palisade_migrate_migration_duration_seconds", "direction" => "up").record(took.as_secs_f64());
            match result {
                Ok(()) => {
                    metrics::counter!("palisade_migrate_migrations_total", "direction" => "up", "outcome" => "applied").increment(1);
                    tracing::info!(?took, "migration applied");
                    self.emit(Event::Finished {
                        version: m.version(),
                        direction: Direction::Up,
                        took,
                    });
                    Ok(backup_id)
                }
                Err(source) => {
                    metrics::counter!("palisade_migrate_migrations_total", "direction" => "up", "outcome" => "failed").increment(1);
                    tracing::warn!(error = %source, "migration failed");
                    self.emit(Event::Failed {
                        version: m.version(),
                        error: source.to_string(),
                    });
                    let mut restored = false;
                    let mut error = source.to_string();
                    if self.may_leave_partial_changes(m)
                        && let (Some(id), Some(scope)) = (&backup_id, self.backup_scope(m))
                    {
                        match self.restore_dump(id, &scope).await {
                            Ok(()) => {
                                restored = true;
                                error.push_str(&format!("; backup {id} restored"));
                                let audit = self.audit("restore", Some(m.version()), format!("backup {id} restored after failure"));
                                store.record(lease, &[], &[], &[audit]).await?;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "restoring the backup failed");
                                error.push_str(&format!("; restoring backup {id} failed: {e}"));
                            }
                        }
                    }
                    row.state = RowState::Failed;
                    row.finished_at_us = Some(row.started_at_us + took.as_micros() as u64);
                    row.error = Some(error.clone());
                    let audit = self.audit("fail", Some(m.version()), error);
                    store.record(lease, &[row], &[], &[audit]).await?;
                    Err(Error::Migration {
                        version: m.version(),
                        name: m.name().to_owned(),
                        restored,
                        source,
                    })
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Run a step, reporting progress every 10 s.
    async fn run_with_progress(
        &self,
        lease: &Lease,
        step: &Step<'_>,
    ) -> Result<crate::store::ScriptResult> {
        let started = Instant::now();
        let run = self.inner.store.run_step(lease, step);
        tokio::pin!(run);
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(10),
            Duration::from_secs(10),
        );
        loop {
            tokio::select! {
                r = &mut run => return r,
                _ = tick.tick() => {
                    tracing::info!(version = step.version, elapsed = ?started.elapsed(), "migration still running");
                    self.emit(Event::StillRunning { version: step.version, elapsed: started.elapsed() });
                }
            }
        }
    }

    async fn restore_dump(&self, id: &str, scope: &BackupScope) -> Result<()> {
        let (backup, vault) = self
            .inner
            .backup
            .as_ref()
            .ok_or_else(|| Error::InvalidConfig("no backup vault configured".into()))?;
        let (_, dump) = vault.load(id)?;
        backup.restore(&dump, scope).await?;
        self.emit(Event::Restored { id: id.to_owned() });
        Ok(())
    }

    /// Revert applied migrations, highest first, until `to` is the highest applied version
    /// (`0` reverts everything).
    ///
    /// # Errors
    /// [`Error::Irreversible`] (checked before anything runs), [`Error::Migration`],
    /// [`Error::Locked`], [`Error::LeaseLost`], backend failures.
    pub async fn down_to(&self, to: u64) -> Result<Vec<u64>> {
        self.locked("down", |lease, lost| async move {
            let store = &self.inner.store;
            let ledger = store.ledger().await?;
            let mut reverted = Vec::new();
            for m in validate::plan_down(&self.inner.set, &ledger, to)? {
                if lost.load(Ordering::SeqCst) {
                    return Err(Error::LeaseLost { token: lease.token });
                }
                self.apply_down(&lease, m).await?;
                reverted.push(m.version());
            }
            Ok(reverted)
        })
        .await
    }

    async fn apply_down(&self, lease: &Lease, m: &Migration) -> Result<()> {
        let span = tracing::info_span!(
            "migrate.migration",
            version = m.version(),
            name = m.name(),
            direction = "down"
        );
        async {
            self.emit(Event::Started {
                version: m.version(),
                name: m.name().to_owned(),
                direction: Direction::Down,
            });
            let step = Step {
                version: m.version(),
                name: m.name(),
                direction: Direction::Down,
                kind: m.kind(),
                script: m.down().unwrap_or_default(),
                transactional: m.is_transactional(),
                keys: &m.directives().backup,
                record: None,
                audit: self.audit("revert", Some(m.version()), format!("{} reverted", m.name())),
            };
            let started = Instant::now();
            let result = self.run_with_progress(lease, &step).await?;
            let took = started.elapsed();
            metrics::histogram!("palisade_migrate_migration_duration_seconds", "direction" => "down").record(took.as_secs_f64());
            if let Err(source) = result {
                metrics::counter!("palisade_migrate_migrations_total", "direction" => "down", "outcome" => "failed").increment(1);
                tracing::warn!(error = %source, "down migration failed");
                let audit = self.audit("fail", Some(m.version()), format!("down failed: {source}"));
                self.inner.store.record(lease, &[], &[], &[audit]).await?;
                return Err(Error::Migration {
                    version: m.version(),
                    name: m.name().to_owned(),
                    restored: false,
                    source,
                });
            }
            metrics::counter!("palisade_migrate_migrations_total", "direction" => "down", "outcome" => "applied").increment(1);
            tracing::info!(?took, "migration reverted");
            self.emit(Event::Finished {
                version: m.version(),
                direction: Direction::Down,
                took,
            });
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Mark every migration up to `version` as applied without running it (a database that
    /// already has that schema starts using the migrator). Rows already applied are kept.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when no file has `version`; [`Error::Locked`]; backend
    /// failures.
    pub async fn baseline(&self, version: u64) -> Result<Vec<u64>> {
        if self.inner.set.get(version).is_none() {
            return Err(Error::InvalidConfig(format!(
                "no migration has version {version}"
            )));
        }
        self.locked("baseline", |lease, _| async move {
            let ledger = self.inner.store.ledger().await?;
            let mut rows = Vec::new();
            let mut audit = Vec::new();
            for m in self.inner.set.iter().filter(|m| m.version() <= version) {
                if ledger
                    .iter()
                    .any(|r| r.version == m.version() && r.state.is_done())
                {
                    continue;
                }
                let mut row = LedgerRow::new(
                    m.version(),
                    m.name(),
                    m.checksum(),
                    RowState::Baseline,
                    m.phase(),
                    &self.inner.holder,
                );
                row.started_at_us = self.now();
                row.finished_at_us = Some(row.started_at_us);
                rows.push(row);
                audit.push(self.audit(
                    "baseline",
                    Some(m.version()),
                    format!("{} marked applied without running", m.name()),
                ));
            }
            self.inner.store.record(&lease, &rows, &[], &audit).await?;
            Ok(rows.iter().map(|r| r.version).collect())
        })
        .await
    }

    /// Make the ledger agree with the files, auditing every change: re-stamp the checksum
    /// of edited applied migrations, remove unfinished rows (so they run again) and drop
    /// INVALID indexes. Missing files are left for a human (their rows stay).
    ///
    /// # Errors
    /// [`Error::Locked`]; backend failures.
    pub async fn repair(&self) -> Result<RepairReport> {
        self.locked("repair", |lease, _| async move {
            let store = &self.inner.store;
            let ledger = store.ledger().await?;
            let invalid = store.invalid_indexes().await?;
            let mut report = RepairReport::default();
            let mut rows = Vec::new();
            let mut audit = Vec::new();
            for issue in validate::validate(&self.inner.set, &ledger, &invalid).issues {
                match issue {
                    Issue::Edited {
                        version,
                        applied,
                        file,
                        ..
                    } => {
                        if let Some(r) = ledger.iter().find(|r| r.version == version) {
                            let mut r = r.clone();
                            r.checksum.clone_from(&file);
                            rows.push(r);
                            audit.push(self.audit(
                                "repair",
                                Some(version),
                                format!("checksum re-stamped {applied} -> {file}"),
                            ));
                            report.restamped.push(version);
                        }
                    }
                    Issue::Unfinished { version, state, .. } => {
                        audit.push(self.audit(
                            "repair",
                            Some(version),
                            format!("{state} row removed; it will run again"),
                        ));
                        report.cleared.push(version);
                    }
                    Issue::InvalidIndex { name } => report.dropped_indexes.push(name),
                    _ => {}
                }
            }
            if !report.dropped_indexes.is_empty() {
                store
                    .drop_invalid_indexes(&lease, &report.dropped_indexes)
                    .await?;
                audit.push(self.audit(
                    "cleanup",
                    None,
                    format!(
                        "dropped INVALID index(es) {}",
                        report.dropped_indexes.join(", ")
                    ),
                ));
            }
            store.record(&lease, &rows, &report.cleared, &audit).await?;
            Ok(report)
        })
        .await
    }

    /// Take a backup now (under the lease, so never in the middle of a migration).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] without a configured vault; [`Error::Backup`];
    /// [`Error::Locked`]; backend failures.
    pub async fn backup(&self, scope: BackupScope) -> Result<BackupInfo> {
        self.locked("backup", |lease, _| async move {
            self.take_backup(&lease, &scope, None).await
        })
        .await
    }

    /// Every backup in the vault, oldest first.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] without a configured vault; [`Error::Io`].
    pub fn backups(&self) -> Result<Vec<BackupInfo>> {
        let (_, vault) = self
            .inner
            .backup
            .as_ref()
            .ok_or_else(|| Error::InvalidConfig("no backup vault configured".into()))?;
        vault.list()
    }

    /// Restore backup `id` (its own scope) under the lease, audited. The ledger is not
    /// changed: run `status` and `down`/`repair` as the situation needs.
    ///
    /// # Errors
    /// [`Error::Backup`] for a missing or unreadable backup; [`Error::Locked`]; backend
    /// failures.
    pub async fn restore(&self, id: &str) -> Result<BackupInfo> {
        self.locked("restore", |lease, _| async move {
            let (_, vault) = self
                .inner
                .backup
                .as_ref()
                .ok_or_else(|| Error::InvalidConfig("no backup vault configured".into()))?;
            let (info, _) = vault.load(id)?;
            self.restore_dump(id, &info.scope).await?;
            let audit = self.audit(
                "restore",
                info.version,
                format!("backup {id} restored by command"),
            );
            self.inner.store.record(&lease, &[], &[], &[audit]).await?;
            Ok(info)
        })
        .await
    }

    /// Register an app version (live or retired) for expand/contract. No lease needed.
    ///
    /// # Errors
    /// Backend failures.
    pub async fn register_app(&self, version: &str, built_against: u64, live: bool) -> Result<()> {
        self.prepare().await?;
        let app = AppVersion {
            version: version.to_owned(),
            built_against,
            live,
        };
        self.inner.store.register_app(&app).await?;
        tracing::info!(target: "palisade_migrate::audit", action = "register_app", version, built_against, live, "audit");
        Ok(())
    }

    /// The newest `limit` audit entries, oldest first.
    ///
    /// # Errors
    /// Backend failures.
    pub async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        self.prepare().await?;
        self.inner.store.audit_log(limit).await
    }

    /// For services that migrate at boot: register this app version as live (when one was
    /// given to the builder), then [`up`](Self::up) under the lease, waiting up to
    /// `lock_wait` for another instance that is migrating. Nothing touches the target
    /// before this is called. With [`FailureMode::FailOpen`] a failure is logged at WARN and
    /// an empty report returned.
    ///
    /// # Errors
    /// As [`up`](Self::up), under [`FailureMode::FailClosed`].
    pub async fn run_on_startup(&self) -> Result<UpReport> {
        let r = async {
            if let Some(app) = &self.inner.app {
                self.register_app(&app.version, app.built_against, true)
                    .await?;
            }
            self.up().await
        }
        .await;
        match (r, self.inner.config.startup_failure) {
            (Err(e), FailureMode::FailOpen) => {
                tracing::warn!(error = %e, "migrations at start-up failed; starting anyway (fail open)");
                Ok(UpReport::default())
            }
            (r, _) => r,
        }
    }
}

/// Whether `sql` creates an index named `index` (`CREATE [UNIQUE] INDEX [CONCURRENTLY]
/// [IF NOT EXISTS] name`), compared case-insensitively without quotes.
fn creates_index(sql: &str, index: &str) -> bool {
    crate::migration::split_statements(sql).iter().any(|s| {
        let words: Vec<String> = s
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .map(|w| w.trim_matches('"').to_ascii_lowercase())
            .collect();
        let mut it = words
            .iter()
            .map(String::as_str)
            .skip_while(|w| *w != "create");
        if it.next() != Some("create") {
            return false;
        }
        let rest: Vec<&str> = it
            .filter(|w| !matches!(*w, "unique" | "concurrently" | "if" | "not" | "exists"))
            .collect();
        rest.first() == Some(&"index")
            && rest
                .get(1)
                .is_some_and(|n| n.rsplit('.').next() == Some(&index.to_ascii_lowercase()))
    })
}

#[cfg(test)]
mod tests {
    use super::creates_index;

    #[test]
    fn finds_the_index_a_migration_creates() {
        let sql = "-- palisade: no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS \"Users_Email\" ON users (email);";
        assert!(creates_index(sql, "users_email"));
        assert!(!creates_index(sql, "users"));
        assert!(creates_index(
            "create index concurrently public.idx on t (x)",
            "idx"
        ));
        assert!(!creates_index("CREATE TABLE idx (x int)", "idx"));
    }
}
