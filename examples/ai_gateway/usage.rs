//! The usage ledger (one row per answered request: who, which provider, tokens, dollars
//! spent and saved) and the schema it needs, migrated at start-up with `palisade::migrate`.
//!
//! * With `DATABASE_URL`: the tables live in PostgreSQL (schema `database_schema`), the
//!   migrations are the SQL files in `migrations/postgres/`, and each one runs after a
//!   `pg_dump` backup of the schema, encrypted into `migrations.backup_dir`. Every instance
//!   writes the same ledger, so `/v1/usage` is fleet-wide.
//! * Without it: the migrate crate's memory target runs `migrations/memory/` (which record
//!   the ledger's layout in the target's key-value data set, so the start-up path — lease,
//!   backup, ledger of applied versions, status — is the same code as on PostgreSQL), and
//!   usage rows are summed in this process.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use palisade::migrate::{
    BackupKey, BackupVault, MemoryStore, MigrationSet, Migrator, PgDump, PostgresStore, UpReport,
};
use palisade::secret_store::{ExposeSecret, Secrets};
use serde::Serialize;

use crate::app::BoxError;
use crate::app::settings::Settings;

/// The secret holding the 32-byte backup key, as 64 hex digits.
pub const BACKUP_KEY_SECRET: &str = "migrate/backup-key";

/// Most owners the memory ledger sums separately; later owners are summed under `other`.
const MAX_MEMORY_OWNERS: usize = 100_000;

fn postgres_migrations() -> Result<MigrationSet, BoxError> {
    Ok(MigrationSet::from_embedded(&[
        (
            "V1__usage_events.up.sql",
            include_str!("migrations/postgres/V1__usage_events.up.sql"),
        ),
        (
            "V1__usage_events.down.sql",
            include_str!("migrations/postgres/V1__usage_events.down.sql"),
        ),
        (
            "V2__provider_costs.up.sql",
            include_str!("migrations/postgres/V2__provider_costs.up.sql"),
        ),
        (
            "V2__provider_costs.down.sql",
            include_str!("migrations/postgres/V2__provider_costs.down.sql"),
        ),
    ])?)
}

fn memory_migrations() -> Result<MigrationSet, BoxError> {
    Ok(MigrationSet::from_embedded(&[
        (
            "V1__usage_events.up.redis",
            include_str!("migrations/memory/V1__usage_events.up.redis"),
        ),
        (
            "V1__usage_events.down.redis",
            include_str!("migrations/memory/V1__usage_events.down.redis"),
        ),
        (
            "V2__provider_costs.up.redis",
            include_str!("migrations/memory/V2__provider_costs.up.redis"),
        ),
        (
            "V2__provider_costs.down.redis",
            include_str!("migrations/memory/V2__provider_costs.down.redis"),
        ),
    ])?)
}

/// `url` with its connections' `search_path` set to `schema`, so the migrations' unqualified
/// table names land there.
fn with_search_path(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Migrate the target at start-up (waiting for another instance's lease), each migration
/// after an encrypted backup, and open the ledger.
///
/// # Errors
/// The backup key is missing or malformed, the target fails, a migration fails (its backup
/// is restored first where the target needs it).
pub async fn migrate(
    settings: &Settings,
    secrets: &Secrets,
) -> Result<(Migrator, UpReport, Ledger), BoxError> {
    let key = secrets.get(BACKUP_KEY_SECRET).await?;
    let vault = BackupVault::new(
        &settings.migrations.backup_dir,
        BackupKey::from_hex(key.expose_secret().trim())?,
    );
    let (migrator, ledger) = match &settings.database_url {
        Some(url) => {
            let schema = &settings.database_schema;
            let store = PostgresStore::from_url(&with_search_path(url, schema))?
                .with_schema(schema.clone());
            let pool = store.pool().clone();
            pool.get()
                .await?
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {}",
                    quote_ident(schema)
                ))
                .await?;
            let migrator = Migrator::builder(store, postgres_migrations()?)
                .label("ai_gateway")
                .lock_wait(settings.migrations.lock_wait)
                .backups(PgDump::new(url.clone(), schema.clone()), vault)
                .build()?;
            (migrator, Ledger::Postgres(pool))
        }
        None => {
            let store = MemoryStore::new();
            let migrator = Migrator::builder(store.clone(), memory_migrations()?)
                .label("ai_gateway")
                .lock_wait(settings.migrations.lock_wait)
                .backups(store, vault)
                .build()?;
            (migrator, Ledger::Memory(Mutex::default()))
        }
    };
    let report = migrator.run_on_startup().await?;
    tracing::info!(
        applied = ?report.applied,
        backups = report.backups.len(),
        target = ledger.backend(),
        "schema migrated"
    );
    Ok((migrator, report, ledger))
}

/// One answered request, as the ledger records it.
#[derive(Clone, Debug)]
pub struct UsageEvent<'a> {
    /// The API key's id.
    pub key_id: &'a str,
    /// The key's owner.
    pub owner: &'a str,
    /// The provider that produced the answer (now, or when it was cached).
    pub provider: &'a str,
    /// The model asked for.
    pub model: &'a str,
    /// `computed`, `joined`, `exact_hit` or `semantic_hit`.
    pub source: &'static str,
    /// Prompt tokens of the answer.
    pub input_tokens: u64,
    /// Completion tokens of the answer.
    pub output_tokens: u64,
    /// Dollars spent on this request (0 when it came from the cache).
    pub cost: f64,
    /// Dollars saved by the cache (the answer's original cost on a hit).
    pub saved: f64,
}

/// Tokens and dollars of one provider in an owner's usage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ProviderUsage {
    /// Requests answered (by the provider or from its cached answers).
    pub requests: u64,
    /// Of those, answered from the cache.
    pub cached: u64,
    /// Prompt tokens sent to the provider (hits not included).
    pub input_tokens: u64,
    /// Completion tokens generated (hits not included).
    pub output_tokens: u64,
    /// Dollars spent.
    pub cost: f64,
    /// Dollars saved by the cache.
    pub saved: f64,
}

/// An owner's usage: totals and per provider.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OwnerUsage {
    /// Every provider together.
    pub total: ProviderUsage,
    /// Per provider.
    pub providers: BTreeMap<String, ProviderUsage>,
}

impl OwnerUsage {
    fn add(&mut self, provider: &str, row: ProviderUsage) {
        for target in [
            &mut self.total,
            self.providers.entry(provider.to_owned()).or_default(),
        ] {
            target.requests += row.requests;
            target.cached += row.cached;
            target.input_tokens += row.input_tokens;
            target.output_tokens += row.output_tokens;
            target.cost += row.cost;
            target.saved += row.saved;
        }
    }
}

fn micros(dollars: f64) -> i64 {
    (dollars * 1e6).round() as i64
}

/// Where usage rows go.
#[derive(Debug)]
pub enum Ledger {
    /// Summed per owner in this process.
    Memory(Mutex<HashMap<String, OwnerUsage>>),
    /// Rows in PostgreSQL's `usage_events`.
    Postgres(palisade::migrate::deadpool_postgres::Pool),
}

impl Ledger {
    /// `memory` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Record one answered request (one `INSERT` on PostgreSQL).
    ///
    /// # Errors
    /// PostgreSQL failed.
    pub async fn record(&self, e: &UsageEvent<'_>) -> Result<(), BoxError> {
        let cached = e.source.ends_with("_hit");
        let row = ProviderUsage {
            requests: 1,
            cached: u64::from(cached),
            input_tokens: if cached { 0 } else { e.input_tokens },
            output_tokens: if cached { 0 } else { e.output_tokens },
            cost: e.cost,
            saved: e.saved,
        };
        match self {
            Self::Memory(owners) => {
                let mut owners = owners.lock().unwrap_or_else(PoisonError::into_inner);
                let owner = if owners.len() >= MAX_MEMORY_OWNERS && !owners.contains_key(e.owner) {
                    "other"
                } else {
                    e.owner
                };
                owners
                    .entry(owner.to_owned())
                    .or_default()
                    .add(e.provider, row);
                Ok(())
            }
            Self::Postgres(pool) => {
                let client = pool.get().await?;
                client
                    .execute(
                        "INSERT INTO usage_events (key_id, owner, provider, model, source, \
                         input_tokens, output_tokens, cost_micros, saved_micros) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                        &[
                            &e.key_id,
                            &e.owner,
                            &e.provider,
                            &e.model,
                            &e.source,
                            &i64::try_from(row.input_tokens).unwrap_or(i64::MAX),
                            &i64::try_from(row.output_tokens).unwrap_or(i64::MAX),
                            &micros(e.cost),
                            &micros(e.saved),
                        ],
                    )
                    .await?;
                Ok(())
            }
        }
    }

    /// What `owner` used, per provider.
    ///
    /// # Errors
    /// PostgreSQL failed.
    pub async fn owner(&self, owner: &str) -> Result<OwnerUsage, BoxError> {
        match self {
            Self::Memory(owners) => Ok(owners
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(owner)
                .cloned()
                .unwrap_or_default()),
            Self::Postgres(pool) => {
                let client = pool.get().await?;
                let rows = client
                    .query(
                        "SELECT provider, count(*)::bigint, \
                         (count(*) FILTER (WHERE source LIKE '%_hit'))::bigint, \
                         sum(input_tokens)::bigint, sum(output_tokens)::bigint, \
                         sum(cost_micros)::bigint, sum(saved_micros)::bigint \
                         FROM usage_events WHERE owner = $1 GROUP BY provider",
                        &[&owner],
                    )
                    .await?;
                let mut usage = OwnerUsage::default();
                for r in rows {
                    let n = |i: usize| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0);
                    usage.add(
                        r.get::<_, &str>(0),
                        ProviderUsage {
                            requests: n(1),
                            cached: n(2),
                            input_tokens: n(3),
                            output_tokens: n(4),
                            cost: r.get::<_, i64>(5) as f64 / 1e6,
                            saved: r.get::<_, i64>(6) as f64 / 1e6,
                        },
                    );
                }
                Ok(usage)
            }
        }
    }

    /// Every provider's spend across all owners, from the `provider_costs` view
    /// (PostgreSQL: the whole fleet) or this process's sums.
    ///
    /// # Errors
    /// PostgreSQL failed.
    pub async fn providers(&self) -> Result<BTreeMap<String, ProviderUsage>, BoxError> {
        match self {
            Self::Memory(owners) => {
                let mut all = OwnerUsage::default();
                for usage in owners
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                {
                    for (provider, row) in &usage.providers {
                        all.add(provider, *row);
                    }
                }
                Ok(all.providers)
            }
            Self::Postgres(pool) => {
                let client = pool.get().await?;
                let rows = client
                    .query(
                        "SELECT provider, requests, cached, input_tokens, output_tokens, \
                         cost_micros, saved_micros FROM provider_costs",
                        &[],
                    )
                    .await?;
                let mut out = BTreeMap::new();
                for r in rows {
                    let n = |i: usize| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0);
                    out.insert(
                        r.get::<_, String>(0),
                        ProviderUsage {
                            requests: n(1),
                            cached: n(2),
                            input_tokens: n(3),
                            output_tokens: n(4),
                            cost: r.get::<_, i64>(5) as f64 / 1e6,
                            saved: r.get::<_, i64>(6) as f64 / 1e6,
                        },
                    );
                }
                Ok(out)
            }
        }
    }

    /// Whether the ledger answers (`SELECT 1` on PostgreSQL, within one second).
    pub async fn ping(&self) -> Result<(), String> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Postgres(pool) => {
                let check = async {
                    let client = pool.get().await.map_err(|e| e.to_string())?;
                    client
                        .simple_query("SELECT 1")
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                };
                tokio::time::timeout(std::time::Duration::from_secs(1), check)
                    .await
                    .unwrap_or_else(|_| Err("timed out".to_owned()))
            }
        }
    }
}
