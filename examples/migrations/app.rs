//! The migrations service: settings, the migration sets of the two releases, start-up
//! migration, and the HTTP routes (status, plan, up/down, backups, restore, app versions,
//! and the `users` data each release reads and writes in its own shape).
// The example and its end-to-end test (crates/palisade/tests/migrations.rs) each use a part.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use palisade::deadpool_redis::redis;
use palisade::migrate::deadpool_postgres::tokio_postgres;
use palisade::migrate::{
    BackupKey, BackupScope, BackupVault, Error as MigrateError, MemoryStore, MigrationSet,
    Migrator, MigratorConfig, PgDump, PostgresStore, RedisStore, RowState, Store, UpReport,
};
use palisade::secret_store::{EnvProvider, ExposeSecret, MemoryProvider, SecretString, Secrets};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::support;

/// Errors of start-up.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The local test database, used when neither the settings nor `DATABASE_URL` name one.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1/test";

/// The local Redis, used by the `redis` target when neither the settings nor `REDIS_URL`
/// name one.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Where the migrations run.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// PostgreSQL at `database_url`, in `schema` (the default when `DATABASE_URL` is set).
    Postgres,
    /// This process's memory: the migrate crate's memory target (ledger, lease, backups
    /// and the mirror migrations in `memory/`). No `users` routes. The default without
    /// `DATABASE_URL`, so the example runs with nothing else installed.
    #[default]
    Memory,
    /// Redis at `redis_url` (the default when `REDIS_URL` is set and `DATABASE_URL` is
    /// not): the migrate crate's Redis target runs the same keyspace migrations as the
    /// memory target (`memory/`), with its ledger, lease and audit under the key prefix
    /// `{<schema>}:`, and backs up the keys a step declares (`DUMP`/`RESTORE`). No `users`
    /// routes.
    Redis,
}

/// Which build of the service this is. A real service has one; this example ships two so
/// that one binary can play both sides of a blue-green deploy.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Release {
    /// The running version: built against V2 (`users.fullname`), ships V1–V2.
    #[default]
    Blue,
    /// The new version: built against V5 (`users.first_name`/`last_name`), ships V1–V5.
    Green,
}

impl Release {
    /// The newest migration this release's code was written against: the migrations it
    /// ships, and what it registers for expand/contract.
    pub fn built_against(self) -> u64 {
        match self {
            Self::Blue => 2,
            Self::Green => 5,
        }
    }

    /// Its name in the ledger, the lease and the app registry.
    pub fn name(self) -> &'static str {
        match self {
            Self::Blue => "blue",
            Self::Green => "green",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "blue" => Some(Self::Blue),
            "green" => Some(Self::Green),
            _ => None,
        }
    }
}

/// Everything the service reads at start-up (see `migrations.toml` beside this file).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Port on 127.0.0.1 when `LISTEN` is unset.
    pub port: u16,
    /// `memory` (default), `postgres` or `redis`; `DATABASE_URL` selects `postgres`,
    /// else `REDIS_URL` selects `redis`, and `MIGRATIONS_TARGET` wins over both.
    pub target: Target,
    /// The database; `DATABASE_URL` wins; default the local test database.
    pub database_url: Option<String>,
    /// The Redis of the `redis` target; `REDIS_URL` wins; default `redis://127.0.0.1:6379`.
    pub redis_url: Option<String>,
    /// The schema the service's tables (and the migrator's ledger) live in; created when
    /// missing. On Redis: the migrator's key prefix.
    pub schema: String,
    /// `blue` or `green`; `MIGRATIONS_RELEASE` wins.
    pub release: Release,
    /// Where encrypted backups are written (one file each).
    pub backup_dir: PathBuf,
    /// A drill: make the migration of this version fail after its other statements, to
    /// watch backup → failure → restore → retry. `MIGRATIONS_INJECT_FAILURE` wins.
    pub inject_failure: Option<u64>,
    /// The migrator: `lease_ttl`, `lock_wait`, `lock_poll`, `allow_out_of_order`,
    /// `backup_mode`, `startup_failure` (its `label` is replaced by the release's name).
    pub migrator: MigratorConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            port: 8086,
            target: Target::Memory,
            database_url: None,
            redis_url: None,
            schema: "palisade_migrations_example".to_owned(),
            release: Release::Blue,
            backup_dir: PathBuf::from("target/migrations-example/backups"),
            inject_failure: None,
            migrator: MigratorConfig::default(),
        }
    }
}

impl Settings {
    /// The file named by `MIGRATIONS_CONFIG` (defaults without it), then the environment.
    ///
    /// # Errors
    /// An unreadable or invalid file, or an environment variable with a bad value.
    pub fn load() -> Result<Self, String> {
        let mut settings: Self = support::settings::load("MIGRATIONS_CONFIG")?;
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let Some(url) = support::settings::redis_url() {
            settings.redis_url = Some(url);
            settings.target = Target::Redis;
        }
        // PostgreSQL holds this example's real schema: it wins when both are set.
        if let Some(url) = var("DATABASE_URL") {
            settings.database_url = Some(url);
            settings.target = Target::Postgres;
        }
        if let Some(target) = var("MIGRATIONS_TARGET") {
            settings.target = match target.trim() {
                "postgres" => Target::Postgres,
                "memory" => Target::Memory,
                "redis" => Target::Redis,
                other => {
                    return Err(format!(
                        "MIGRATIONS_TARGET={other}: postgres, redis or memory"
                    ));
                }
            };
        }
        if let Some(release) = var("MIGRATIONS_RELEASE") {
            settings.release = Release::parse(&release)
                .ok_or_else(|| format!("MIGRATIONS_RELEASE={release}: blue or green"))?;
        }
        if let Some(v) = var("MIGRATIONS_INJECT_FAILURE") {
            settings.inject_failure = Some(
                v.trim()
                    .parse()
                    .map_err(|_| format!("MIGRATIONS_INJECT_FAILURE={v}: a version number"))?,
            );
        }
        Ok(settings)
    }

    /// The database URL in use.
    pub fn database_url(&self) -> &str {
        self.database_url.as_deref().unwrap_or(DEFAULT_DATABASE_URL)
    }

    /// The Redis URL in use.
    pub fn redis_url(&self) -> &str {
        self.redis_url.as_deref().unwrap_or(DEFAULT_REDIS_URL)
    }
}

// -- the migrations ------------------------------------------------------------------------

macro_rules! files {
    ($dir:literal: $($name:literal),+ $(,)?) => {
        &[$(($name, include_str!(concat!($dir, "/", $name)))),+]
    };
}

/// The PostgreSQL migrations (`sql/`), embedded at compile time.
const SQL: &[(&str, &str)] = files!("sql":
    "V1__users.up.sql", "V1__users.down.sql",
    "V2__orders.up.sql", "V2__orders.down.sql",
    "V3__unique_email.up.sql", "V3__unique_email.down.sql",
    "V4__split_name.up.sql", "V4__split_name.down.sql",
    "V5__drop_fullname.up.sql",
);

/// Their mirror as keyspace migrations (`memory/`): one command per line, run by the
/// memory target (`SET`/`DEL`) and by the Redis target (real Redis commands).
const KEYSPACE: &[(&str, &str)] = files!("memory":
    "V1__users.up.redis", "V1__users.down.redis",
    "V2__orders.up.redis", "V2__orders.down.redis",
    "V3__unique_email.up.redis", "V3__unique_email.down.redis",
    "V4__split_name.up.redis", "V4__split_name.down.redis",
    "V5__drop_fullname.up.redis",
);

fn version_of(file: &str) -> Option<u64> {
    file.strip_prefix('V')?.split("__").next()?.parse().ok()
}

/// The migrations `release` ships for `target`: every file up to the version it was built
/// against. With `inject_failure = Some(v)`, migration `v`'s up script gets a last statement
/// that fails (a drill).
///
/// # Errors
/// A file that does not parse (never with the embedded ones).
pub fn migrations(
    target: Target,
    release: Release,
    inject_failure: Option<u64>,
) -> Result<MigrationSet, MigrateError> {
    let (files, failing) = match target {
        Target::Postgres => (
            SQL,
            "DO $$ BEGIN RAISE EXCEPTION 'injected failure (inject_failure)'; END $$;",
        ),
        Target::Memory => (KEYSPACE, "FAIL injected failure (inject_failure)"),
        // No Redis command fails on purpose; one Redis does not know fails every time.
        Target::Redis => (KEYSPACE, "INJECTED_FAILURE inject_failure"),
    };
    let chosen: Vec<(&str, String)> = files
        .iter()
        .filter(|(name, _)| version_of(name).is_some_and(|v| v <= release.built_against()))
        .map(|(name, text)| {
            let broken = inject_failure.is_some()
                && version_of(name) == inject_failure
                && name.contains(".up.");
            let text = if broken {
                format!("{}\n{failing}\n", text.trim_end())
            } else {
                (*text).to_owned()
            };
            (*name, text)
        })
        .collect();
    let refs: Vec<(&str, &str)> = chosen.iter().map(|(n, t)| (*n, t.as_str())).collect();
    MigrationSet::from_embedded(&refs)
}

// -- secrets --------------------------------------------------------------------------------

/// Demo values, used only when the environment has none (each use is logged at WARN).
const DEMO_BACKUP_KEY: &str = "6d6967726174696f6e732d6578616d706c652d64656d6f2d6b65792d30303031";
const DEMO_ADMIN_TOKEN: &str = "demo-admin-token-set-APP_MIGRATIONS_ADMIN_TOKEN";

/// The service's secrets: `migrations/backup-key` (64 hex digits, the backups' encryption
/// key) and `migrations/admin-token` (the bearer token of the routes that change
/// anything), from `APP_MIGRATIONS_BACKUP_KEY` / `APP_MIGRATIONS_ADMIN_TOKEN`, else demo
/// values. Every value loaded is scrubbed from the logs by the store's redactor.
///
/// # Errors
/// A provider that cannot be built (never with these).
pub fn secrets() -> Result<Secrets, BoxError> {
    let demo = MemoryProvider::new()
        .named("demo")
        .with_secret("migrations/backup-key", DEMO_BACKUP_KEY)?
        .with_secret("migrations/admin-token", DEMO_ADMIN_TOKEN)?;
    Ok(Secrets::builder()
        .provider(EnvProvider::from_env("APP_"))
        .provider(demo)
        .build()?)
}

// -- the app --------------------------------------------------------------------------------

/// What `build` returns: the router and what a test pokes at.
#[derive(Debug)]
pub struct App {
    /// Every route, with correlation ids.
    pub router: Router,
    /// The migrator (status, backups, …).
    pub migrator: Migrator,
    /// What `run_on_startup` did.
    pub startup: UpReport,
    /// The memory target, when that is where the migrations run.
    pub memory: Option<MemoryStore>,
}

#[derive(Debug)]
enum Db {
    Postgres(PostgresStore),
    Memory(MemoryStore),
    /// The migrator's store, and what `/data` reads with: a pool, the migrator's prefix.
    Redis {
        /// Boxed: a `RedisStore` carries its compiled scripts (hundreds of bytes).
        store: Box<RedisStore>,
        pool: palisade::deadpool_redis::Pool,
        prefix: String,
    },
}

impl Db {
    fn backend(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Memory(_) => "memory",
            Self::Redis { .. } => "redis",
        }
    }
}

struct AppState {
    migrator: Migrator,
    db: Db,
    release: Release,
    admin_token: SecretString,
}

/// Build the service on the target its settings name (a fresh one for `memory`) and run
/// its migrations (`run_on_startup`: register this release live, apply what is pending up
/// to the first blocked contract step, with a backup before each).
///
/// # Errors
/// The target cannot be reached, or a migration fails (with `startup_failure =
/// "fail_closed"`, the default: the service does not start on a schema it may not
/// understand).
pub async fn build(settings: Settings, secrets: Secrets) -> Result<App, BoxError> {
    build_inner(settings, secrets, None).await
}

/// [`build`] on an existing memory target, so two releases share one (the memory target
/// lives in one process).
///
/// # Errors
/// As [`build`].
pub async fn build_on_memory(
    settings: Settings,
    secrets: Secrets,
    memory: MemoryStore,
) -> Result<App, BoxError> {
    build_inner(settings, secrets, Some(memory)).await
}

async fn build_inner(
    settings: Settings,
    secrets: Secrets,
    memory: Option<MemoryStore>,
) -> Result<App, BoxError> {
    let metrics = support::telemetry::metrics();
    let key = BackupKey::from_hex(
        support::secrets::get_warning_on_demo(&secrets, "migrations/backup-key")
            .await?
            .expose_secret(),
    )?;
    let admin_token =
        support::secrets::get_warning_on_demo(&secrets, "migrations/admin-token").await?;
    let vault = BackupVault::new(&settings.backup_dir, key);
    let set = migrations(settings.target, settings.release, settings.inject_failure)?;
    let release = settings.release;
    let (migrator, db) = match settings.target {
        Target::Postgres => {
            let url = settings.database_url();
            create_schema(url, &settings.schema).await?;
            let store = PostgresStore::from_url(&with_search_path(url, &settings.schema))?
                .with_schema(settings.schema.clone());
            let migrator = Migrator::builder(store.clone(), set)
                .config(settings.migrator.clone())
                .label(release.name())
                .app_version(release.name(), release.built_against())
                .backups(PgDump::new(url, settings.schema.clone()), vault)
                .build()?;
            (migrator, Db::Postgres(store))
        }
        Target::Memory => {
            let store = memory.unwrap_or_default();
            let migrator = Migrator::builder(store.clone(), set)
                .config(settings.migrator.clone())
                .label(release.name())
                .app_version(release.name(), release.built_against())
                .backups(store.clone(), vault)
                .build()?;
            (migrator, Db::Memory(store))
        }
        Target::Redis => {
            let pool = support::settings::redis_pool(settings.redis_url())?;
            let store = RedisStore::new(pool.clone()).with_prefix(settings.schema.clone());
            let migrator = Migrator::builder(store.clone(), set)
                .config(settings.migrator.clone())
                .label(release.name())
                .app_version(release.name(), release.built_against())
                .backups(store.clone(), vault)
                .build()?;
            let prefix = settings.schema.clone();
            (
                migrator,
                Db::Redis {
                    store: Box::new(store),
                    pool,
                    prefix,
                },
            )
        }
    };
    let startup = migrator.run_on_startup().await?;
    tracing::info!(
        release = release.name(),
        applied = ?startup.applied,
        blocked = ?startup.blocked.as_ref().map(|b| (b.version, &b.live)),
        "migrations at start-up"
    );
    let memory = match &db {
        Db::Memory(store) => Some(store.clone()),
        Db::Postgres(_) | Db::Redis { .. } => None,
    };
    let state = Arc::new(AppState {
        migrator: migrator.clone(),
        db,
        release,
        admin_token,
    });
    let router = Router::new()
        .route("/health", get(health))
        .route("/migrations", get(status))
        .route("/migrations/plan", get(plan))
        .route("/migrations/up", post(up))
        .route("/migrations/down", post(down))
        .route("/migrations/audit", get(audit))
        .route("/backups", get(list_backups).post(take_backup))
        .route("/backups/{id}/restore", post(restore))
        .route("/apps/{version}", put(register_app))
        .route("/users", get(list_users).post(create_user))
        .route("/data", get(data))
        .fallback(not_found)
        .with_state(state)
        .merge(support::http::metrics_route(metrics));
    Ok(App {
        router: support::http::with_request_ids(router),
        migrator,
        startup,
        memory,
    })
}

/// `url` with `search_path` set to `schema` for every connection, so the migrations' and
/// the handlers' unqualified table names land in it.
fn with_search_path(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}

async fn create_schema(url: &str, schema: &str) -> Result<(), BoxError> {
    if schema.is_empty()
        || !schema
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(format!("schema {schema:?}: use letters, digits and _").into());
    }
    let store = PostgresStore::from_url(url)?;
    let client = store.pool().get().await?;
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
        .await?;
    Ok(())
}

/// Serve `router` on `listener`.
///
/// # Errors
/// The listener fails.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}

// -- errors ---------------------------------------------------------------------------------

/// A handler's error: a problem+json response (boxed: handlers return it in a `Result`).
struct Problem(Box<Response>);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        *self.0
    }
}

fn problem(status: StatusCode, title: &str, detail: impl Into<String>, code: &str) -> Problem {
    let mut extra = serde_json::Map::new();
    extra.insert("code".to_owned(), code.into());
    Problem(Box::new(support::http::problem_with(
        status, title, detail, extra,
    )))
}

/// Any route not above.
async fn not_found() -> Problem {
    problem(
        StatusCode::NOT_FOUND,
        "Not found",
        "no such route",
        "not_found",
    )
}

impl From<MigrateError> for Problem {
    fn from(error: MigrateError) -> Self {
        let detail = error.to_string();
        let mut extra = serde_json::Map::new();
        let (status, title, code) = match &error {
            MigrateError::Locked { holder, .. } => {
                extra.insert("holder".to_owned(), holder.clone().into());
                (StatusCode::CONFLICT, "Migration lock held", "locked")
            }
            MigrateError::LeaseLost { .. } => {
                (StatusCode::CONFLICT, "Migration lease lost", "lease_lost")
            }
            MigrateError::Validation(v) => {
                extra.insert("issues".to_owned(), json!(v.issues));
                (
                    StatusCode::CONFLICT,
                    "Migrations do not validate",
                    "invalid",
                )
            }
            MigrateError::Irreversible { version, .. } => {
                extra.insert("version".to_owned(), (*version).into());
                (
                    StatusCode::CONFLICT,
                    "Migration has no down script",
                    "irreversible",
                )
            }
            MigrateError::Migration {
                version, restored, ..
            } => {
                extra.insert("version".to_owned(), (*version).into());
                extra.insert("restored".to_owned(), (*restored).into());
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Migration failed",
                    "migration_failed",
                )
            }
            MigrateError::InvalidConfig(_) => (
                StatusCode::BAD_REQUEST,
                "Invalid request",
                "invalid_request",
            ),
            MigrateError::Backend { .. } | MigrateError::Timeout(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Database unavailable",
                "unavailable",
            ),
            _ => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Migration error",
                "error",
            ),
        };
        tracing::warn!(error = %detail, code, "migration request failed");
        extra.insert("code".to_owned(), code.into());
        Self(Box::new(support::http::problem_with(
            status, title, detail, extra,
        )))
    }
}

type Answer<T> = Result<T, Problem>;

/// A JSON body whose rejection is problem+json like every other error.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        Json::<T>::from_request(request, state)
            .await
            .map(|Json(value)| Self(value))
            .map_err(|rejection| {
                problem(
                    rejection.status(),
                    "Invalid body",
                    rejection.body_text(),
                    "invalid_body",
                )
            })
    }
}

/// Routes that change anything need `Authorization: Bearer <migrations/admin-token>`.
fn require_admin(state: &AppState, headers: &HeaderMap) -> Answer<()> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .unwrap_or("");
    if constant_time_eq(
        presented.as_bytes(),
        state.admin_token.expose_secret().as_bytes(),
    ) {
        Ok(())
    } else {
        Err(problem(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "this route needs the admin bearer token",
            "unauthorized",
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// -- migration routes -----------------------------------------------------------------------

async fn health(State(state): State<Arc<AppState>>) -> support::health::Report {
    let backend = state.migrator.status().await;
    let target = match &state.db {
        Db::Postgres(s) => s.health().await,
        Db::Memory(s) => s.health().await,
        Db::Redis { store, .. } => store.health().await,
    };
    let name = format!("migrations:{}", state.release.name());
    let backend_name = state.db.backend();
    let component = match (target, backend) {
        (Err(e), _) | (Ok(()), Err(e)) => {
            support::health::Component::down(name, backend_name, e.to_string())
        }
        (Ok(()), Ok(status)) => {
            let failed = status
                .migrations
                .iter()
                .any(|m| m.state == Some(RowState::Failed));
            let state = if failed {
                "failed"
            } else if status.blocked.is_some() {
                "blocked"
            } else if status.pending > 0 {
                "pending"
            } else {
                "up_to_date"
            };
            let mut c = support::health::Component::up(name, backend_name, state);
            c.detail = status.current_version.map(|v| format!("at V{v}"));
            c
        }
    };
    support::health::Report::new(vec![component])
}

async fn status(State(state): State<Arc<AppState>>) -> Answer<Response> {
    Ok(Json(state.migrator.status().await?).into_response())
}

async fn plan(State(state): State<Arc<AppState>>) -> Answer<Response> {
    let plan = state.migrator.plan_up(None).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        plan.to_string(),
    )
        .into_response())
}

async fn up(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Answer<Response> {
    require_admin(&state, &headers)?;
    Ok(Json(state.migrator.up().await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DownRequest {
    to: u64,
}

async fn down(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Body(request): Body<DownRequest>,
) -> Answer<Response> {
    require_admin(&state, &headers)?;
    let reverted = state.migrator.down_to(request.to).await?;
    Ok(Json(json!({ "reverted": reverted })).into_response())
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn audit(State(state): State<Arc<AppState>>, Query(q): Query<Limit>) -> Answer<Response> {
    let limit = q.limit.unwrap_or(50).min(1_000);
    Ok(Json(state.migrator.audit_log(limit).await?).into_response())
}

async fn list_backups(State(state): State<Arc<AppState>>) -> Answer<Response> {
    Ok(Json(state.migrator.backups()?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BackupRequest {
    /// Tables (PostgreSQL) or keys (memory, Redis); none: everything (not on Redis).
    #[serde(default)]
    objects: Vec<String>,
}

async fn take_backup(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Option<Json<BackupRequest>>,
) -> Answer<Response> {
    require_admin(&state, &headers)?;
    let request = body.map(|Json(b)| b).unwrap_or_default();
    let info = state
        .migrator
        .backup(BackupScope::of(&request.objects))
        .await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn restore(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<Response> {
    require_admin(&state, &headers)?;
    Ok(Json(state.migrator.restore(&id).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppRequest {
    built_against: u64,
    live: bool,
}

/// The deploy pipeline says which app versions serve traffic: retiring the old one
/// (`live: false`) lets the next `up` run the contract step.
async fn register_app(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(version): Path<String>,
    Body(request): Body<AppRequest>,
) -> Answer<Response> {
    require_admin(&state, &headers)?;
    if version.is_empty() || version.len() > 100 {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "Invalid app version",
            "an app version is 1 to 100 characters",
            "invalid_request",
        ));
    }
    state
        .migrator
        .register_app(&version, request.built_against, request.live)
        .await?;
    let apps = state.migrator.status().await?.apps;
    Ok(Json(apps).into_response())
}

// -- the data each release reads and writes -------------------------------------------------

async fn data(State(state): State<Arc<AppState>>) -> Answer<Response> {
    match &state.db {
        Db::Memory(store) => Ok(Json(store.data()).into_response()),
        Db::Redis { pool, prefix, .. } => Ok(Json(redis_data(pool, prefix).await?).into_response()),
        Db::Postgres(_) => Err(problem(
            StatusCode::NOT_FOUND,
            "Not found",
            "`/data` shows the keyspace targets' data (memory, Redis); on PostgreSQL use /users",
            "not_found",
        )),
    }
}

/// At most this many keys in `/data` on Redis: a shared Redis may hold anything.
const MAX_DATA_KEYS: usize = 1_000;

/// The string keys of the Redis target, outside the migrator's own (`{<prefix>}:…`): what
/// the keyspace migrations wrote.
async fn redis_data(
    pool: &palisade::deadpool_redis::Pool,
    prefix: &str,
) -> Answer<std::collections::BTreeMap<String, String>> {
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "reading the Redis target failed");
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Redis unavailable",
            "the Redis target did not answer; see /health",
            "backend_unavailable",
        )
    };
    let own = format!("{{{prefix}}}:");
    let mut conn = pool.get().await.map_err(|e| unavailable(&e))?;
    let mut data = std::collections::BTreeMap::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(200)
            .arg("TYPE")
            .arg("string")
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        for key in keys.into_iter().filter(|k| !k.starts_with(&own)) {
            if data.len() == MAX_DATA_KEYS {
                return Ok(data);
            }
            let value: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable(&e))?;
            if let Some(value) = value {
                data.insert(key, value);
            }
        }
        if next == 0 {
            return Ok(data);
        }
        cursor = next;
    }
}

fn postgres(state: &AppState) -> Answer<&PostgresStore> {
    match &state.db {
        Db::Postgres(store) => Ok(store),
        Db::Memory(_) | Db::Redis { .. } => Err(problem(
            StatusCode::NOT_IMPLEMENTED,
            "Needs PostgreSQL",
            "the users table exists on the PostgreSQL target only; the memory and Redis targets keep the schema as keys (see /data)",
            "needs_postgres",
        )),
    }
}

fn db_error(error: &tokio_postgres::Error) -> Problem {
    if error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        return problem(
            StatusCode::CONFLICT,
            "Email taken",
            "a user with this email exists",
            "email_taken",
        );
    }
    tracing::warn!(%error, "query failed");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Database error",
        "the query failed; see the service's logs",
        "database_error",
    )
}

/// One user, as each release sees it: blue has `name` only (`users.fullname`), green has
/// `first_name`/`last_name` and a `name` made from them.
#[derive(Serialize)]
struct User {
    id: i64,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_name: Option<String>,
    email: String,
}

async fn list_users(State(state): State<Arc<AppState>>) -> Answer<Response> {
    let store = postgres(&state)?;
    let client = store.pool().get().await.map_err(|e| {
        tracing::warn!(error = %e, "no database connection");
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Database unavailable",
            "no connection",
            "unavailable",
        )
    })?;
    let users: Vec<User> = match state.release {
        Release::Blue => client
            .query(
                "SELECT id, fullname, email FROM users ORDER BY id LIMIT 1000",
                &[],
            )
            .await
            .map_err(|e| db_error(&e))?
            .iter()
            .map(|r| User {
                id: r.get(0),
                name: r.get(1),
                first_name: None,
                last_name: None,
                email: r.get(2),
            })
            .collect(),
        Release::Green => client
            .query(
                "SELECT id, first_name, last_name, email FROM users ORDER BY id LIMIT 1000",
                &[],
            )
            .await
            .map_err(|e| db_error(&e))?
            .iter()
            .map(|r| {
                let first: String = r.get(1);
                let last: Option<String> = r.get(2);
                User {
                    id: r.get(0),
                    name: [Some(first.as_str()), last.as_deref()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" "),
                    first_name: Some(first.clone()),
                    last_name: last,
                    email: r.get(3),
                }
            })
            .collect(),
    };
    Ok(Json(users).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    email: String,
}

async fn create_user(
    State(state): State<Arc<AppState>>,
    Body(user): Body<NewUser>,
) -> Answer<Response> {
    let store = postgres(&state)?;
    let name = user.name.trim();
    let email = user.email.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid user",
            "`name` is 1 to 200 characters",
            "invalid_name",
        ));
    }
    if email.len() > 254 || !email.contains('@') || email.starts_with('@') || email.ends_with('@') {
        return Err(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid user",
            "`email` is an address like ada@example.com",
            "invalid_email",
        ));
    }
    let client = store.pool().get().await.map_err(|e| {
        tracing::warn!(error = %e, "no database connection");
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Database unavailable",
            "no connection",
            "unavailable",
        )
    })?;
    let row = match state.release {
        // Blue knows one name column.
        Release::Blue => client
            .query_one(
                "INSERT INTO users (fullname, email) VALUES ($1, $2) RETURNING id",
                &[&name, &email],
            )
            .await,
        // Green writes the new columns only; while blue still runs, V4's trigger fills
        // `fullname` for it.
        Release::Green => {
            let (first, last) = match name.split_once(' ') {
                Some((f, l)) => (f, Some(l.trim())),
                None => (name, None),
            };
            client
                .query_one(
                    "INSERT INTO users (first_name, last_name, email) VALUES ($1, $2, $3) RETURNING id",
                    &[&first, &last, &email],
                )
                .await
        }
    }
    .map_err(|e| db_error(&e))?;
    let id: i64 = row.get(0);
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}
