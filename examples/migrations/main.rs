//! # migrations — a schema evolved with backups, a failure restored, a blue-green deploy
//!
//! The database side of the services our users run, rebuilt with `palisade::migrate`: the
//! service migrates its schema at start-up under a lease (so a fleet starting together
//! migrates once), takes an encrypted backup before every step, restores it when a step
//! that cannot roll back fails half-way, and splits a column rename into an *expand* step
//! and a *contract* step that waits until the old release is retired.
//!
//! ```text
//! # everything in memory (the migrate crate's memory target), no database needed
//! cargo run --example migrations
//! # the keyspace migrations on Redis (ledger, lease and audit under `{palisade_migrations_example}:`)
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example migrations
//! # PostgreSQL, schema palisade_migrations_example: the blue release (built against V2)
//! # migrates to V2
//! export DATABASE_URL=postgres://postgres@127.0.0.1/test
//! cargo run --example migrations
//! # a drill: the green release's V3 fails after lower-casing the emails; the `users` table
//! # is restored from the backup taken just before, and the service refuses to start
//! MIGRATIONS_RELEASE=green MIGRATIONS_INJECT_FAILURE=3 LISTEN=127.0.0.1:8087 cargo run --example migrations
//! # green for real: V3 is retried, V4 (expand) applied, V5 (contract) waits for blue
//! MIGRATIONS_RELEASE=green LISTEN=127.0.0.1:8087 cargo run --example migrations
//! # retire blue, then run the contract step
//! curl -X PUT localhost:8087/apps/blue -H "authorization: Bearer $TOKEN" \
//!      -H 'content-type: application/json' -d '{"built_against": 2, "live": false}'
//! curl -X POST localhost:8087/migrations/up -H "authorization: Bearer $TOKEN"
//! ```
//!
//! Two releases share one target on PostgreSQL or Redis (the memory target lives and dies
//! with its process), so the blue-green steps above need `DATABASE_URL` or `REDIS_URL`; the
//! end-to-end test plays them on all three targets.
//!
//! `$TOKEN` is the secret `migrations/admin-token` (`APP_MIGRATIONS_ADMIN_TOKEN`; without
//! it a demo value, logged at WARN as such). Backups are sealed with
//! `migrations/backup-key` (`APP_MIGRATIONS_BACKUP_KEY`, 64 hex digits).
//!
//! ## The migrations (`sql/`, mirrored as keyspace migrations in `memory/`)
//!
//! | version | what | kind |
//! |---|---|---|
//! | V1 | `users (id, fullname, email)` | transactional |
//! | V2 | `orders`, foreign key to `users` | transactional |
//! | V3 | lower-case the emails, then `CREATE UNIQUE INDEX CONCURRENTLY` | `no-transaction`, backs up `users` only |
//! | V4 | add `first_name`/`last_name`, backfill, a trigger that fills whichever side a new row lacks | `phase = expand` |
//! | V5 | drop `fullname` and the trigger | `phase = contract`, no down file |
//!
//! *Blue* ships V1–V2 and reads/writes `fullname`; *green* ships V1–V5 and reads/writes
//! first and last names. Green's start-up applies V3 and V4 and stops before V5 while blue
//! is registered live: both serve `/users` meanwhile (the trigger keeps each one's rows
//! readable by the other). Retiring blue (`PUT /apps/blue`, `live: false`, from the deploy
//! pipeline) lets the next `up` run V5.
//!
//! Which steps need PostgreSQL: the `users` routes, `pg_dump` backups of tables, the
//! INVALID-index cleanup of `CREATE INDEX CONCURRENTLY`. The memory and Redis targets run
//! everything else — the ledger, the lease, backups (of the keys a step declares; the
//! memory target can also save its whole data set, a Redis cannot), the injected failure
//! and its restore, expand/contract gating — on the mirror migrations, whose keys
//! (`table:users`, `index:users_email_key`, …) stand for the schema; `GET /data` shows them.
//! On Redis each step is one Lua script (fencing check, commands, ledger row), Redis has no
//! rollback, so the injected failure — a command Redis does not know, after V3's first line
//! — leaves that line applied until the `DUMP`/`RESTORE` backup of V3's declared keys puts
//! them back. A Redis shared with other data keeps the migrations' keys as the files name
//! them: give the example its own database or instance.
//!
//! ## Routes
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | the target (`connected`) and the migrations' state: `up_to_date`, `pending`, `blocked`, `failed` |
//! | `GET /metrics` | Prometheus text (`palisade_migrate_*`) |
//! | `GET /migrations` | the status: every migration's state, phase, checksum, backup; lease; issues; apps; what blocks |
//! | `GET /migrations/plan` | dry run: the SQL `up` would run |
//! | `POST /migrations/up` | apply what is pending (admin) |
//! | `POST /migrations/down` `{"to": N}` | revert to version N (admin; refused before anything runs if a step has no down file) |
//! | `GET /migrations/audit?limit=N` | every state change, newest first |
//! | `GET /backups`, `POST /backups` `{"objects": ["users"]}` | list, take one (admin; no objects: everything) |
//! | `POST /backups/{id}/restore` | restore one (admin) |
//! | `PUT /apps/{version}` `{"built_against": N, "live": bool}` | register or retire an app version (admin) |
//! | `GET /users`, `POST /users` `{"name", "email"}` | the data, in this release's shape (PostgreSQL) |
//! | `GET /data` | the keyspace targets' string keys (memory, Redis; at most 1,000, the migrator's own excluded) |
//!
//! Errors are `application/problem+json` with a `code` (`migration_failed` with `version` and
//! `restored`, `locked` with `holder`, `invalid` with `issues`, `irreversible`, …). Every
//! response carries `x-request-id`.
//!
//! ## Settings
//!
//! A TOML file named by `MIGRATIONS_CONFIG` (`examples/migrations/migrations.toml` documents
//! every key), then the environment: `REDIS_URL` (selects Redis), `DATABASE_URL` (selects
//! PostgreSQL, and wins over `REDIS_URL`), `MIGRATIONS_TARGET`,
//! `MIGRATIONS_RELEASE`, `MIGRATIONS_INJECT_FAILURE`, `LISTEN`, `RUST_LOG`.

#[path = "../support/mod.rs"]
mod support;

mod app;

#[tokio::main]
async fn main() -> Result<(), app::BoxError> {
    let settings = app::Settings::load()?;
    let secrets = app::secrets()?;
    support::telemetry::init_logs(secrets.redactor());
    let listen = support::settings::listen_addr(settings.port)?;
    let app = app::build(settings, secrets).await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "migrations example listening");
    app::serve(listener, app.router).await?;
    Ok(())
}
