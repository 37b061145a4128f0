//! `palisade-migrate`: the command-line tool of `palisade-migrate` (feature `cli`).
//!
//! ```text
//! palisade-migrate --database-url postgres://app@db/app --dir migrations status
//! palisade-migrate plan                 # dry run: the SQL `up` would run
//! palisade-migrate up [--to 12]
//! palisade-migrate down --to 10
//! ```
//!
//! Exit codes: 0 done, 1 error (target unreachable, bad input), 2 usage, 3 validation
//! findings (edited, missing, out-of-order, unfinished, INVALID index), 4 the lock is held
//! by another migrator, 5 a migration failed, 6 `up` stopped before a contract migration an
//! old live app version still needs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use palisade_migrate::{
    BackupKey, BackupScope, BackupVault, Error, Event, MigrationSet, Migrator, MigratorBuilder,
    PgDump, PostgresStore,
};

const EXIT_ERROR: u8 = 1;
const EXIT_INVALID: u8 = 3;
const EXIT_LOCKED: u8 = 4;
const EXIT_FAILED: u8 = 5;
const EXIT_BLOCKED: u8 = 6;

/// Versioned migrations for PostgreSQL and Redis with a lease lock, encrypted backups and
/// expand/contract phases.
#[derive(Debug, Parser)]
#[command(name = "palisade-migrate", version, about)]
struct Cli {
    /// postgres://… (or redis://… / rediss://… for the Redis target).
    #[arg(long, env = "DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// The folder of migration files.
    #[arg(
        long,
        env = "PALISADE_MIGRATE_DIR",
        default_value = "migrations",
        global = true
    )]
    dir: PathBuf,
    /// PostgreSQL schema of the ledger tables and of schema backups (default: the
    /// connection's search_path for the ledger, `public` for backups).
    #[arg(long, env = "PALISADE_MIGRATE_SCHEMA", global = true)]
    schema: Option<String>,
    /// Key prefix of the Redis target's ledger.
    #[arg(long, default_value = "palisade:migrate", global = true)]
    redis_prefix: String,
    /// This migrator's name in the lease and the ledger.
    #[arg(
        long,
        env = "PALISADE_MIGRATE_LABEL",
        default_value = "palisade-migrate",
        global = true
    )]
    label: String,
    /// How long to wait for a lease held by another migrator (`0s`: fail at once).
    #[arg(long, default_value = "2m", value_parser = parse_duration, global = true)]
    lock_wait: Duration,
    /// Lease time to live (renewed every third of it while working).
    #[arg(long, default_value = "30s", value_parser = parse_duration, global = true)]
    lease_ttl: Duration,
    /// Folder of encrypted backups; with it, `up` backs up before each migration. The key
    /// is read from PALISADE_MIGRATE_BACKUP_KEY (64 hex digits).
    #[arg(long, env = "PALISADE_MIGRATE_BACKUP_DIR", global = true)]
    backup_dir: Option<PathBuf>,
    /// Apply pending migrations below the latest applied version.
    #[arg(long, global = true)]
    allow_out_of_order: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the next migration's up and down files.
    New {
        /// Its name (letters, digits, `_`).
        name: String,
        /// File kind: sql, redis or lua.
        #[arg(long, default_value = "sql")]
        kind: String,
        /// Make it a non-transactional migration (CREATE INDEX CONCURRENTLY).
        #[arg(long)]
        no_transaction: bool,
    },
    /// Where the target stands.
    Status {
        /// Print JSON (the same document a status endpoint serves).
        #[arg(long)]
        json: bool,
    },
    /// Dry run: print what `up` (or `down`) would run.
    Plan {
        /// Plan `up` to this version.
        #[arg(long, conflicts_with = "down")]
        to: Option<u64>,
        /// Plan `down` to this version instead.
        #[arg(long)]
        down: Option<u64>,
    },
    /// Apply pending migrations.
    Up {
        /// Stop at this version (inclusive).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Revert applied migrations until `--to` is the highest applied version.
    Down {
        /// The version to go back to (`0`: revert everything).
        #[arg(long)]
        to: u64,
    },
    /// Mark migrations up to VERSION as applied without running them.
    Baseline {
        /// The highest version the database already has.
        version: u64,
    },
    /// Compare the ledger with the files.
    Validate,
    /// Re-stamp edited checksums, clear unfinished rows, drop INVALID indexes (audited).
    Repair,
    /// Take an encrypted backup now.
    Backup {
        /// Only these tables (PostgreSQL) or keys (Redis), comma-separated.
        #[arg(long, value_delimiter = ',')]
        objects: Vec<String>,
    },
    /// List the backups.
    Backups,
    /// Restore a backup by id.
    Restore {
        /// The backup's id (see `backups`).
        id: String,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 2m, 500ms"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" | "min" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        other => Err(format!("unknown duration unit {other:?} (ms, s, m, h)")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Validation(_) => EXIT_INVALID,
        Error::Locked { .. } => EXIT_LOCKED,
        Error::Migration { .. } | Error::Irreversible { .. } | Error::LeaseLost { .. } => {
            EXIT_FAILED
        }
        _ => EXIT_ERROR,
    }
}

/// The error and its sources, on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn progress(event: &Event) {
    match event {
        Event::Waiting { holder, expires_in } => {
            eprintln!(
                "waiting: the lock is held by {holder} (lease ends in {expires_in:.0?} unless renewed)"
            );
        }
        Event::LeaseAcquired { token } => eprintln!("lock acquired (fencing token {token})"),
        Event::BackupTaken { version, id } => match version {
            Some(v) => eprintln!("backup {id} taken before V{v}"),
            None => eprintln!("backup {id} taken"),
        },
        Event::Started {
            version,
            name,
            direction,
        } => eprintln!("==> V{version} {name} ({})", direction.as_str()),
        Event::StillRunning { version, elapsed } => {
            eprintln!("    V{version} still running ({elapsed:.0?})");
        }
        Event::Finished { version, took, .. } => eprintln!("    V{version} done in {took:.1?}"),
        Event::Failed { version, error } => eprintln!("    V{version} FAILED: {error}"),
        Event::Restored { id } => eprintln!("    backup {id} restored"),
        Event::Blocked(b) => eprintln!(
            "stopped before V{} (contract of V{}): app version(s) {} still live",
            b.version,
            b.expand,
            b.live.join(", ")
        ),
        _ => {}
    }
}

fn new_migration(
    dir: &Path,
    name: &str,
    kind: &str,
    no_transaction: bool,
) -> Result<ExitCode, Error> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Error::InvalidConfig(format!(
            "{name:?}: use letters, digits and `_`"
        )));
    }
    if !matches!(kind, "sql" | "redis" | "lua") {
        return Err(Error::InvalidConfig(format!(
            "unknown kind {kind:?} (sql, redis, lua)"
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::InvalidConfig(format!("{}: {e}", dir.display())))?;
    let next = MigrationSet::from_dir(dir)?.latest().unwrap_or(0) + 1;
    let header = if no_transaction {
        "-- palisade: no-transaction\n"
    } else {
        ""
    };
    for (direction, body) in [
        ("up", format!("{header}-- V{next} {name}\n")),
        ("down", format!("-- revert V{next} {name}\n")),
    ] {
        let path = dir.join(format!("V{next}__{name}.{direction}.{kind}"));
        std::fs::write(&path, body)
            .map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))?;
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    if let Command::New {
        name,
        kind,
        no_transaction,
    } = &cli.command
    {
        return new_migration(&cli.dir, name, kind, *no_transaction);
    }
    let url = cli.database_url.clone().ok_or_else(|| {
        Error::InvalidConfig("no database: pass --database-url or set DATABASE_URL".into())
    })?;
    let set = MigrationSet::from_dir(&cli.dir)?;
    let migrator = build(&cli, &url, set)?;
    match cli.command {
        Command::New { .. } => unreachable!("handled above"),
        Command::Status { json } => {
            let status = migrator.status().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).map_err(|e| Error::backend(e, false))?
                );
            } else {
                println!(
                    "target {}: at version {}, latest {}, {} pending",
                    status.target,
                    status
                        .current_version
                        .map_or("-".to_owned(), |v| v.to_string()),
                    status
                        .latest_version
                        .map_or("-".to_owned(), |v| v.to_string()),
                    status.pending
                );
                for m in &status.migrations {
                    let state = m.state.map_or("pending", |s| s.as_str());
                    let edited = if m.checksum_matches == Some(false) {
                        "  EDITED"
                    } else {
                        ""
                    };
                    println!(
                        "  V{:<6} {:<9} {:<8} {}{edited}",
                        m.version,
                        state,
                        m.phase.as_str(),
                        m.name
                    );
                }
                if let Some(l) = &status.lease {
                    println!(
                        "lock held by {} (token {}, {} ms left)",
                        l.holder, l.token, l.expires_in_ms
                    );
                }
                for i in &status.issues {
                    println!("issue: {i}");
                }
                if let Some(b) = &status.blocked {
                    println!(
                        "contract V{} waits for app version(s) {}",
                        b.version,
                        b.live.join(", ")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan { to, down } => {
            let plan = match down {
                Some(v) => migrator.plan_down(v).await?,
                None => migrator.plan_up(to).await?,
            };
            print!("{plan}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Up { to } => {
            let report = match to {
                Some(v) => migrator.up_to(v).await?,
                None => migrator.up().await?,
            };
            println!("applied {} migration(s)", report.applied.len());
            if report.blocked.is_some() {
                return Ok(ExitCode::from(EXIT_BLOCKED));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Down { to } => {
            let reverted = migrator.down_to(to).await?;
            println!("reverted {} migration(s)", reverted.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Baseline { version } => {
            let marked = migrator.baseline(version).await?;
            println!("baselined {} migration(s) up to V{version}", marked.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate => {
            let v = migrator.validate().await?;
            if v.is_ok() {
                println!("ok");
                return Ok(ExitCode::SUCCESS);
            }
            for i in &v.issues {
                println!("{i}");
            }
            Ok(ExitCode::from(EXIT_INVALID))
        }
        Command::Repair => {
            let r = migrator.repair().await?;
            println!(
                "re-stamped {:?}, cleared {:?}, dropped indexes {:?}",
                r.restamped, r.cleared, r.dropped_indexes
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { objects } => {
            let scope = if objects.is_empty() {
                BackupScope::Everything
            } else {
                BackupScope::Objects(objects)
            };
            let info = migrator.backup(scope).await?;
            println!("{}", info.id);
            Ok(ExitCode::SUCCESS)
        }
        Command::Backups => {
            for b in migrator.backups()? {
                let scope = match &b.scope {
                    BackupScope::Objects(o) => o.join(","),
                    _ => "everything".to_owned(),
                };
                let before = b
                    .version
                    .map_or("manual".to_owned(), |v| format!("before V{v}"));
                println!(
                    "{}  {}  {} bytes  {}  {}",
                    b.id, b.format, b.size, scope, before
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { id } => {
            let info = migrator.restore(&id).await?;
            println!("restored {}", info.id);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn build(cli: &Cli, url: &str, set: MigrationSet) -> Result<Migrator, Error> {
    let vault = match &cli.backup_dir {
        Some(dir) => {
            let key = std::env::var("PALISADE_MIGRATE_BACKUP_KEY").map_err(|_| {
                Error::InvalidConfig(
                    "--backup-dir needs PALISADE_MIGRATE_BACKUP_KEY (64 hex digits)".into(),
                )
            })?;
            Some(BackupVault::new(dir, BackupKey::from_hex(&key)?))
        }
        None => None,
    };
    let configure = |b: MigratorBuilder| {
        b.label(&cli.label)
            .lock_wait(cli.lock_wait)
            .lease_ttl(cli.lease_ttl)
            .allow_out_of_order(cli.allow_out_of_order)
            .on_event(progress)
    };
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        return build_redis(cli, url, set, vault, configure);
    }
    let mut store = PostgresStore::from_url(url)?;
    if let Some(s) = &cli.schema {
        store = store.with_schema(s.clone());
    }
    let mut builder = configure(Migrator::builder(store, set));
    if let Some(vault) = vault {
        let schema = cli.schema.clone().unwrap_or_else(|| "public".to_owned());
        builder = builder.backups(PgDump::new(url, schema), vault);
    }
    builder.build()
}

#[cfg(feature = "redis")]
fn build_redis(
    cli: &Cli,
    url: &str,
    set: MigrationSet,
    vault: Option<BackupVault>,
    configure: impl FnOnce(MigratorBuilder) -> MigratorBuilder,
) -> Result<Migrator, Error> {
    use palisade_migrate::{RedisStore, deadpool_redis};
    let pool = deadpool_redis::Config::from_url(url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .map_err(|e| Error::InvalidConfig(format!("bad Redis URL: {e}")))?;
    let store = RedisStore::new(pool).with_prefix(cli.redis_prefix.clone());
    let mut builder = configure(Migrator::builder(store.clone(), set));
    if let Some(vault) = vault {
        builder = builder.backups(store, vault);
    }
    builder.build()
}

#[cfg(not(feature = "redis"))]
fn build_redis(
    _: &Cli,
    _: &str,
    _: MigrationSet,
    _: Option<BackupVault>,
    _: impl FnOnce(MigratorBuilder) -> MigratorBuilder,
) -> Result<Migrator, Error> {
    Err(Error::InvalidConfig(
        "this build has no Redis target (feature `redis`)".into(),
    ))
}
