//! The PostgreSQL target against the real server at `DATABASE_URL`, one fresh schema per
//! test (so parallel tests never contend, lock table included).
#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_migrate::{
    BackupKey, BackupScope, BackupVault, Error, Issue, MigrationSet, Migrator, PgDump,
    PostgresStore, RowState, Store,
};
use palisade_testkit::PgSchema;

fn store(schema: &PgSchema) -> PostgresStore {
    PostgresStore::from_url(&schema.url()).unwrap()
}

fn set(files: &[(&str, &str)]) -> MigrationSet {
    MigrationSet::from_embedded(files).unwrap()
}

async fn query(schema: &PgSchema, sql: &str) -> Vec<tokio_postgres::Row> {
    let s = store(schema);
    let client = s.pool().get().await.unwrap();
    if sql.contains(';') {
        client.batch_execute(sql).await.unwrap();
        return Vec::new();
    }
    client.query(sql, &[]).await.unwrap()
}

async fn count(schema: &PgSchema, sql: &str) -> i64 {
    query(schema, sql).await[0].get(0)
}

/// `pg_dump --schema-only` of the test schema without the migrator's own tables.
async fn schema_dump(schema: &PgSchema) -> String {
    let out = tokio::process::Command::new("pg_dump")
        .args(["--schema-only", "--no-owner", "--no-privileges"])
        .arg(format!("--schema={}", schema.name()))
        .arg(format!(
            "--exclude-table={}.palisade_migrations*",
            schema.name()
        ))
        .arg(format!("--dbname={}", schema.database_url()))
        .output()
        .await
        .expect("pg_dump is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // pg_dump 15.14+ brackets its output with a random `\restrict` key: not part of the schema.
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .map(|l| format!("{l}\n"))
        .collect()
}

const V1: &str = "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);\nINSERT INTO users VALUES (1, 'a@example.com'), (2, 'b@example.com');";
const V2: &str =
    "ALTER TABLE users ADD COLUMN name text;\nCREATE INDEX users_name ON users (name);";
const V2_DOWN: &str = "DROP INDEX users_name;\nALTER TABLE users DROP COLUMN name;";
const V3: &str = "CREATE TYPE mood AS ENUM ('ok', 'sad');\nCREATE TABLE events (id bigserial PRIMARY KEY, user_id bigint REFERENCES users (id), mood mood);\nCREATE VIEW user_events AS SELECT u.email, e.mood FROM users u JOIN events e ON e.user_id = u.id;\nCREATE FUNCTION event_count() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM events; $$;";
const V3_DOWN: &str =
    "DROP FUNCTION event_count();\nDROP VIEW user_events;\nDROP TABLE events;\nDROP TYPE mood;";

fn three() -> MigrationSet {
    set(&[
        ("V1__users.up.sql", V1),
        ("V2__user_names.up.sql", V2),
        ("V2__user_names.down.sql", V2_DOWN),
        ("V3__events.up.sql", V3),
        ("V3__events.down.sql", V3_DOWN),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_applies_in_order_and_records_the_ledger() {
    let schema = PgSchema::create().unwrap();
    let m = Migrator::builder(store(&schema), three())
        .label("ci")
        .build()
        .unwrap();
    let plan = m.plan_up(None).await.unwrap();
    assert_eq!(plan.steps.len(), 3);
    assert!(
        plan.to_string().contains("CREATE TYPE mood"),
        "the dry run prints the SQL"
    );
    assert_eq!(
        count(&schema, "SELECT count(*) FROM palisade_migrations").await,
        0,
        "a plan writes nothing"
    );

    assert_eq!(m.up().await.unwrap().applied, [1, 2, 3]);
    assert_eq!(count(&schema, "SELECT event_count()").await, 0);
    let status = m.status().await.unwrap();
    assert_eq!((status.current_version, status.pending), (Some(3), 0));
    assert!(status.is_up_to_date());
    let row = &status.migrations[0];
    assert_eq!(row.state, Some(RowState::Applied));
    assert!(
        row.applied_by.as_deref().unwrap().starts_with("ci@"),
        "{row:?}"
    );
    assert!(row.duration_ms.is_some());
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["current_version"], 3);
    assert_eq!(json["migrations"][2]["state"], "applied");
    assert!(m.up().await.unwrap().applied.is_empty(), "up is idempotent");

    let audit = m.audit_log(100).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["apply", "apply", "apply"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_migrations_round_trip_the_schema() {
    let schema = PgSchema::create().unwrap();
    let m = Migrator::builder(store(&schema), three()).build().unwrap();
    m.up_to(1).await.unwrap();
    let before = schema_dump(&schema).await;
    assert!(before.contains("CREATE TABLE"), "{before}");
    m.up().await.unwrap();
    let during = schema_dump(&schema).await;
    assert_ne!(before, during);
    assert_eq!(m.down_to(1).await.unwrap(), [3, 2]);
    assert_eq!(
        schema_dump(&schema).await,
        before,
        "pg_dump --schema-only is the same after up + down"
    );
    assert_eq!(m.status().await.unwrap().current_version, Some(1));
    // V1 has no down file: reverting it is refused before anything runs.
    assert!(matches!(
        m.down_to(0).await,
        Err(Error::Irreversible { version: 1, .. })
    ));
    // And up again reaches the same schema as the first time.
    m.up().await.unwrap();
    assert_eq!(schema_dump(&schema).await, during);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_transactional_migration_leaves_nothing_and_is_marked_failed() {
    let schema = PgSchema::create().unwrap();
    let bad = set(&[
        ("V1__users.up.sql", V1),
        (
            "V2__broken.up.sql",
            "CREATE TABLE half (id int);\nINSERT INTO missing_table VALUES (1);",
        ),
    ]);
    let m = Migrator::builder(store(&schema), bad).build().unwrap();
    let err = m.up().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Migration {
                version: 2,
                restored: false,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        std::error::Error::source(&err)
            .unwrap()
            .to_string()
            .contains("missing_table")
    );
    assert_eq!(count(&schema, "SELECT count(*) FROM pg_tables WHERE tablename = 'half' AND schemaname = current_schema()").await, 0);
    let status = m.status().await.unwrap();
    assert_eq!(status.current_version, Some(1));
    assert_eq!(status.migrations[1].state, Some(RowState::Failed));
    assert!(matches!(
        status.issues[0],
        Issue::Unfinished { version: 2, .. }
    ));
    // Fixed file: the next up retries it.
    let fixed = set(&[
        ("V1__users.up.sql", V1),
        ("V2__broken.up.sql", "CREATE TABLE half (id int);"),
    ]);
    let m = Migrator::builder(store(&schema), fixed).build().unwrap();
    assert_eq!(m.up().await.unwrap().applied, [2]);
    assert!(m.validate().await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_migration_is_detected_but_a_crlf_change_is_not() {
    let schema = PgSchema::create().unwrap();
    Migrator::builder(store(&schema), three())
        .build()
        .unwrap()
        .up()
        .await
        .unwrap();

    // The same files saved with Windows line endings and trailing blanks: nothing to report.
    let crlf = |s: &str| s.replace('\n', "  \r\n") + "\r\n";
    let (v1, v2, v2d, v3, v3d) = (crlf(V1), crlf(V2), crlf(V2_DOWN), crlf(V3), crlf(V3_DOWN));
    let windows = set(&[
        ("V1__users.up.sql", &v1),
        ("V2__user_names.up.sql", &v2),
        ("V2__user_names.down.sql", &v2d),
        ("V3__events.up.sql", &v3),
        ("V3__events.down.sql", &v3d),
    ]);
    let m = Migrator::builder(store(&schema), windows).build().unwrap();
    assert!(m.validate().await.unwrap().is_ok());
    assert!(m.up().await.unwrap().applied.is_empty());

    // A real edit of an applied migration: reported, and up refuses.
    let edited_v2 = V2.replace("name text", "name varchar(100)");
    let edited = set(&[
        ("V1__users.up.sql", V1),
        ("V2__user_names.up.sql", &edited_v2),
        ("V3__events.up.sql", V3),
        ("V4__more.up.sql", "CREATE TABLE more (id int);"),
    ]);
    let m = Migrator::builder(store(&schema), edited).build().unwrap();
    let v = m.validate().await.unwrap();
    assert!(
        matches!(v.issues.as_slice(), [Issue::Edited { version: 2, .. }]),
        "{v}"
    );
    let err = m.up().await.unwrap_err();
    assert!(matches!(err, Error::Validation(_)), "{err}");
    assert!(err.to_string().contains("V2 user_names: edited"), "{err}");

    // repair re-stamps the checksum (audited); then up proceeds.
    let report = m.repair().await.unwrap();
    assert_eq!(report.restamped, [2]);
    assert_eq!(m.up().await.unwrap().applied, [4]);
    let audit = m.audit_log(1000).await.unwrap();
    let repair = audit.iter().find(|a| a.action == "repair").unwrap();
    assert_eq!(repair.version, Some(2));
    assert!(repair.detail.contains("re-stamped"), "{repair:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_out_of_order_files_are_reported() {
    let schema = PgSchema::create().unwrap();
    let m = Migrator::builder(
        store(&schema),
        set(&[
            ("V1__a.up.sql", "CREATE TABLE a (x int);"),
            ("V3__c.up.sql", "CREATE TABLE c (x int);"),
        ]),
    )
    .build()
    .unwrap();
    m.up().await.unwrap();
    // A branch merged late brings V2; V1's file was deleted.
    let late = set(&[
        ("V2__b.up.sql", "CREATE TABLE b (x int);"),
        ("V3__c.up.sql", "CREATE TABLE c (x int);"),
    ]);
    let m = Migrator::builder(store(&schema), late.clone())
        .build()
        .unwrap();
    let v = m.validate().await.unwrap();
    assert!(
        matches!(
            v.issues.as_slice(),
            [
                Issue::Missing { version: 1, .. },
                Issue::OutOfOrder { version: 2, .. }
            ]
        ),
        "{v}"
    );
    assert!(matches!(m.up().await, Err(Error::Validation(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_marks_an_existing_schema_without_running_it() {
    let schema = PgSchema::create().unwrap();
    query(
        &schema,
        "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL)",
    )
    .await;
    let m = Migrator::builder(store(&schema), three()).build().unwrap();
    assert_eq!(m.baseline(1).await.unwrap(), [1]);
    assert_eq!(
        m.up().await.unwrap().applied,
        [2, 3],
        "V1 would have failed: the table exists"
    );
    let status = m.status().await.unwrap();
    assert_eq!(status.migrations[0].state, Some(RowState::Baseline));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_migrators_one_wins_the_other_waits_or_fails_naming_the_holder() {
    let schema = PgSchema::create().unwrap();
    let slow = set(&[
        (
            "V1__slow.up.sql",
            "CREATE TABLE t (x int);\nSELECT pg_sleep(4);",
        ),
        ("V2__next.up.sql", "INSERT INTO t VALUES (1);"),
    ]);
    let a = Migrator::builder(store(&schema), slow.clone())
        .label("deployer-a")
        .build()
        .unwrap();
    let impatient = Migrator::builder(store(&schema), slow.clone())
        .label("deployer-b")
        .lock_wait(Duration::ZERO)
        .build()
        .unwrap();
    let patient = Migrator::builder(store(&schema), slow)
        .label("deployer-c")
        .lock_wait(Duration::from_secs(20))
        .build()
        .unwrap();

    let first = tokio::spawn({
        let a = a.clone();
        async move { a.up().await }
    });
    // Wait until A holds the lease.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a
        .status()
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)))
        .lease
        .is_none()
    {
        assert!(Instant::now() < deadline, "A never took the lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = impatient.up().await.unwrap_err();
    match &err {
        Error::Locked { holder, .. } => assert!(holder.starts_with("deployer-a@"), "{holder}"),
        other => panic!("{other}"),
    }
    assert!(
        err.to_string().contains("deployer-a@"),
        "the message names the holder: {err}"
    );
    assert!(err.is_transient());

    let second = patient.up().await.unwrap();
    assert!(
        second.applied.is_empty(),
        "C waited, then found everything applied: {second:?}"
    );
    assert_eq!(first.await.unwrap().unwrap().applied, [1, 2]);
    assert_eq!(
        count(&schema, "SELECT count(*) FROM t").await,
        1,
        "V2 ran exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_migrators_racing_apply_each_migration_once() {
    let schema = PgSchema::create().unwrap();
    let files: Vec<(String, String)> = (1..=10)
        .map(|v| {
            (
                format!("V{v}__step.up.sql"),
                format!("CREATE TABLE IF NOT EXISTS log (v int); INSERT INTO log VALUES ({v});"),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let s = set(&refs);
    let mut tasks = Vec::new();
    for i in 0..6 {
        let m = Migrator::builder(store(&schema), s.clone())
            .label(format!("pod-{i}"))
            .lock_poll(Duration::from_millis(20))
            .build()
            .unwrap();
        tasks.push(tokio::spawn(async move {
            m.run_on_startup().await.map(|r| r.applied.len())
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)));
    }
    assert_eq!(total, 10);
    assert_eq!(count(&schema, "SELECT count(*) FROM log").await, 10);
    assert_eq!(
        count(&schema, "SELECT count(DISTINCT v) FROM log").await,
        10
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_lease_holder_is_fenced_out() {
    use palisade_migrate::{LeaseGrant, Store};
    let schema = PgSchema::create().unwrap();
    let s = store(&schema);
    s.prepare().await.unwrap();
    let LeaseGrant::Acquired(old) = s
        .acquire_lease("paused", Duration::from_secs(1))
        .await
        .unwrap()
    else {
        panic!("free lease")
    };
    // The holder pauses (GC, SIGSTOP) past its TTL; another migrator takes over.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let LeaseGrant::Acquired(new) = s
        .acquire_lease("next", Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("the expired lease is free")
    };
    assert!(new.token > old.token, "fencing tokens grow");
    let row = palisade_migrate::LedgerRow::new(
        1,
        "x",
        "c",
        RowState::Applied,
        Default::default(),
        "paused",
    );
    let err = s.record(&old, &[row], &[], &[]).await.unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
    assert!(!s.renew_lease(&old, Duration::from_secs(1)).await.unwrap());
    assert!(
        s.ledger().await.unwrap().is_empty(),
        "the stale holder wrote nothing"
    );
    s.release_lease(&old).await.unwrap();
    assert_eq!(
        s.lease_info().await.unwrap().unwrap().holder,
        "next",
        "releasing a lost lease does nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_index_concurrently_runs_outside_a_transaction_and_invalid_indexes_are_cleaned_on_retry()
 {
    let schema = PgSchema::create().unwrap();
    let base = (
        "V1__users.up.sql",
        "CREATE TABLE users (id bigint PRIMARY KEY, email text);\nINSERT INTO users VALUES (1, 'x'), (2, 'x');",
    );
    let cic = "-- palisade: no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY users_email ON users (email);";
    let m = Migrator::builder(
        store(&schema),
        set(&[base, ("V2__unique_email.up.sql", cic)]),
    )
    .build()
    .unwrap();
    let err = m.up().await.unwrap_err();
    assert!(matches!(err, Error::Migration { version: 2, .. }), "{err}");
    // The failed CREATE INDEX CONCURRENTLY left an INVALID index: status and validate say so.
    let status = m.status().await.unwrap();
    assert!(
        status.issues.contains(&Issue::InvalidIndex {
            name: "users_email".into()
        }),
        "{:?}",
        status.issues
    );
    assert_eq!(status.migrations[1].state, Some(RowState::Failed));
    let v = m.validate().await.unwrap();
    assert!(
        v.issues
            .iter()
            .any(|i| matches!(i, Issue::InvalidIndex { name } if name == "users_email"))
    );

    // Fix the data and retry: the leftover is dropped first, then the index is built.
    query(&schema, "UPDATE users SET email = 'y' WHERE id = 2").await;
    assert_eq!(m.up().await.unwrap().applied, [2]);
    assert!(m.validate().await.unwrap().is_ok());
    assert_eq!(
        count(&schema, "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'users_email' AND i.indisvalid AND c.relnamespace = current_schema()::regnamespace").await,
        1
    );
    let audit = m.audit_log(100).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "cleanup" && a.detail.contains("users_email")),
        "{audit:?}"
    );
}

fn vault(dir: &std::path::Path, key: &BackupKey) -> BackupVault {
    BackupVault::new(dir, key.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_mid_migration_restores_the_backup() {
    let schema = PgSchema::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = BackupKey::generate();
    let pg_dump = PgDump::new(schema.database_url(), schema.name());
    let v1 = ("V1__users.up.sql", V1);
    let m = Migrator::builder(store(&schema), set(&[v1]))
        .build()
        .unwrap();
    m.up().await.unwrap();
    let before = schema_dump(&schema).await;

    // A non-transactional migration that changes data and schema, then fails half-way.
    let breaking = "-- palisade: no-transaction\nUPDATE users SET email = 'overwritten';\nCREATE TABLE leftovers (id int);\nALTER TABLE users ADD COLUMN age int;\nINSERT INTO nowhere VALUES (1);";
    let m = Migrator::builder(store(&schema), set(&[v1, ("V2__risky.up.sql", breaking)]))
        .backups(pg_dump.clone(), vault(dir.path(), &key))
        .build()
        .unwrap();
    let err = m.up().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Migration {
                version: 2,
                restored: true,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("backup restored"));
    assert_eq!(schema_dump(&schema).await, before, "schema back as it was");
    let emails: Vec<String> = query(&schema, "SELECT email FROM users ORDER BY id")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        emails,
        ["a@example.com", "b@example.com"],
        "data back as it was"
    );

    // The ledger row says failed, links the backup and the audit has the restore.
    let status = m.status().await.unwrap();
    let row = &status.migrations[1];
    assert_eq!(row.state, Some(RowState::Failed));
    let backup_id = row
        .backup_id
        .clone()
        .expect("the backup is linked to the ledger row");
    let backups = m.backups().unwrap();
    assert_eq!(backups.len(), 1);
    assert_eq!(backups[0].id, backup_id);
    assert_eq!(backups[0].version, Some(2));
    let audit = m.audit_log(100).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["apply", "backup", "restore", "fail"]);
    // Encrypted at rest: the dump's table names do not appear in the file.
    let file = std::fs::read(dir.path().join(format!("{backup_id}.pmb"))).unwrap();
    assert!(!file.windows(11).any(|w| w == b"example.com"));
    // The wrong key cannot restore it.
    let wrong = Migrator::builder(store(&schema), set(&[v1]))
        .backups(pg_dump, vault(dir.path(), &BackupKey::generate()))
        .build()
        .unwrap();
    assert!(matches!(
        wrong.restore(&backup_id).await,
        Err(Error::Backup(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_backup_lists_and_restores_by_command() {
    let schema = PgSchema::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = BackupKey::generate();
    let m = Migrator::builder(store(&schema), three())
        .backups(
            PgDump::new(schema.database_url(), schema.name()),
            vault(dir.path(), &key),
        )
        .backup_mode(palisade_migrate::BackupMode::Off)
        .build()
        .unwrap();
    m.up().await.unwrap();
    query(
        &schema,
        "INSERT INTO events (user_id, mood) VALUES (1, 'ok')",
    )
    .await;
    let whole = m.backup(BackupScope::Everything).await.unwrap();
    let users_only = m
        .backup(BackupScope::Objects(vec!["users".into()]))
        .await
        .unwrap();
    assert_eq!(
        m.backups()
            .unwrap()
            .iter()
            .map(|b| b.id.clone())
            .collect::<Vec<_>>(),
        [whole.id.clone(), users_only.id.clone()]
    );

    query(
        &schema,
        "DELETE FROM events; CREATE TABLE stray (x int); UPDATE users SET email = 'gone'",
    )
    .await;
    m.restore(&users_only.id).await.unwrap();
    assert_eq!(
        count(&schema, "SELECT count(*) FROM users WHERE email = 'gone'").await,
        0
    );
    assert_eq!(
        count(&schema, "SELECT count(*) FROM events").await,
        0,
        "a table backup touches only its tables"
    );
    m.restore(&whole.id).await.unwrap();
    assert_eq!(count(&schema, "SELECT count(*) FROM events").await, 1);
    assert_eq!(count(&schema, "SELECT count(*) FROM pg_tables WHERE tablename = 'stray' AND schemaname = current_schema()").await, 0);
    assert_eq!(
        count(&schema, "SELECT event_count()").await,
        1,
        "functions come back"
    );
    // The ledger survived the restore and still says everything is applied.
    assert_eq!(m.status().await.unwrap().current_version, Some(3));
    assert!(
        m.audit_log(100)
            .await
            .unwrap()
            .iter()
            .filter(|a| a.action == "restore")
            .count()
            == 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expand_contract_waits_for_the_old_app_version() {
    let schema = PgSchema::create().unwrap();
    let files = [
        (
            "V1__users.up.sql",
            "CREATE TABLE users (id bigint PRIMARY KEY, fullname text);",
        ),
        (
            "V2__split_name.up.sql",
            "-- palisade: phase = expand\nALTER TABLE users ADD COLUMN first_name text, ADD COLUMN last_name text;",
        ),
        (
            "V3__drop_fullname.up.sql",
            "-- palisade: phase = contract\nALTER TABLE users DROP COLUMN fullname;",
        ),
    ];
    // Blue (built against V1) is live; green (built against V3) deploys and migrates at boot.
    let blue = Migrator::builder(store(&schema), set(&files[..1]))
        .app_version("blue", 1)
        .build()
        .unwrap();
    blue.run_on_startup().await.unwrap();
    let green = Migrator::builder(store(&schema), set(&files))
        .app_version("green", 3)
        .build()
        .unwrap();
    let report = green.run_on_startup().await.unwrap();
    assert_eq!(report.applied, [2], "expand runs, contract waits");
    let blocked = report.blocked.unwrap();
    assert_eq!(
        (blocked.version, blocked.expand, blocked.live.as_slice()),
        (3, 2, ["blue".to_owned()].as_slice())
    );
    let status = green.status().await.unwrap();
    assert_eq!(status.blocked.as_ref().map(|b| b.version), Some(3));
    assert!(
        green
            .plan_up(None)
            .await
            .unwrap()
            .to_string()
            .contains("still live")
    );
    assert_eq!(count(&schema, "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() AND column_name = 'fullname'").await, 1);

    // Blue is drained: contract runs.
    green.register_app("blue", 1, false).await.unwrap();
    assert_eq!(green.up().await.unwrap().applied, [3]);
    let status = green.status().await.unwrap();
    assert_eq!(
        status.migrations[2].phase,
        palisade_migrate::Phase::Contract
    );
    assert_eq!(status.migrations[1].phase, palisade_migrate::Phase::Expand);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_startup_does_no_io_until_called_and_fails_open_when_asked() {
    // A server that does not exist: building the store and the migrator touches nothing.
    let store = PostgresStore::from_url("postgres://postgres@127.0.0.1:1/none")
        .unwrap()
        .with_timeout(Duration::from_secs(2));
    let closed = Migrator::builder(store.clone(), three()).build().unwrap();
    let err = closed.run_on_startup().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(
        err.to_string(),
        "migration backend error",
        "Display does not repeat the source"
    );
    let open = Migrator::builder(store, three())
        .startup_failure(palisade_migrate::FailureMode::FailOpen)
        .build()
        .unwrap();
    assert!(open.run_on_startup().await.unwrap().applied.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_works_through_pgbouncer_in_transaction_mode() {
    let bouncer = palisade_testkit::pgbouncer::PgBouncer::start()
        .expect("pgbouncer (apt-get install pgbouncer)");
    let schema = PgSchema::create().unwrap();
    let db = schema
        .database_url()
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let url = bouncer.url(&db);
    // Through a transaction pooler there is no session search_path: qualify with the schema.
    let through = |label: &str, wait: Duration| {
        Migrator::builder(
            PostgresStore::from_url(&url)
                .unwrap()
                .with_schema(schema.name()),
            qualified(schema.name()),
        )
        .label(label)
        .lock_wait(wait)
        .lease_ttl(Duration::from_secs(2))
        .lock_poll(Duration::from_millis(50))
        .build()
        .unwrap()
    };
    let a = through("bouncer-a", Duration::from_secs(20));
    let b = through("bouncer-b", Duration::ZERO);
    let c = through("bouncer-c", Duration::from_secs(20));
    let first = tokio::spawn({
        let a = a.clone();
        async move { a.up().await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.status().await.unwrap().lease.is_none() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match b.up().await {
        Err(Error::Locked { holder, .. }) => assert!(holder.starts_with("bouncer-a@"), "{holder}"),
        other => panic!("{other:?}"),
    }
    // The first migration sleeps longer than the TTL: the heartbeat keeps the lease alive
    // through the pooler.
    assert_eq!(first.await.unwrap().unwrap().applied, [1, 2]);
    assert!(c.up().await.unwrap().applied.is_empty());
    assert_eq!(
        count(
            &schema,
            &format!("SELECT count(*) FROM {}.t", schema.name())
        )
        .await,
        1
    );
    // Many short-lived transactions went through one pooler: nothing session-bound broke.
    let status = c.status().await.unwrap();
    assert_eq!(status.current_version, Some(2));
    assert!(status.lease.is_none(), "released");
}

fn qualified(schema: &str) -> MigrationSet {
    let v1 = format!(
        "-- palisade: no-transaction\nCREATE TABLE {schema}.t (x int);\nSELECT pg_sleep(3);"
    );
    let v2 = format!("INSERT INTO {schema}.t VALUES (1);");
    MigrationSet::from_embedded(&[("V1__slow.up.sql", &v1), ("V2__insert.up.sql", &v2)]).unwrap()
}

/// Set by `a_crashed_migrators_lease_expires` for the child process it starts.
const CHILD_URL: &str = "PALISADE_MIGRATE_CHILD_URL";
const CHILD_SCHEMA: &str = "PALISADE_MIGRATE_CHILD_SCHEMA";

fn crashing_set(schema: &str) -> MigrationSet {
    // Sleeps while ctl.slow is true: the child hangs in it until it is killed.
    let v1 = format!(
        "-- palisade: no-transaction\nSELECT pg_sleep(CASE WHEN (SELECT slow FROM ctl) THEN 20 ELSE 0 END) /* {schema} */;\nCREATE TABLE done (x int);"
    );
    MigrationSet::from_embedded(&[("V1__hangs.up.sql", &v1)]).unwrap()
}

/// The migrator that crashes: started as a separate process by
/// `a_crashed_migrators_lease_expires`, killed while it holds the lease. Ignored when the
/// suite runs, because on its own it has nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of a_crashed_migrators_lease_expires"]
async fn child_crashing_migrator() {
    let url = std::env::var(CHILD_URL).expect("started by a_crashed_migrators_lease_expires");
    let schema = std::env::var(CHILD_SCHEMA).unwrap();
    let m = Migrator::builder(
        PostgresStore::from_url(&url).unwrap(),
        crashing_set(&schema),
    )
    .label("doomed")
    .lease_ttl(Duration::from_secs(2))
    .build()
    .unwrap();
    println!("CHILD migrating");
    let _ = m.up().await;
    println!("CHILD finished (should have been killed)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_migrators_lease_expires() {
    let schema = PgSchema::create().unwrap();
    query(
        &schema,
        "CREATE TABLE ctl (slow boolean); INSERT INTO ctl VALUES (true)",
    )
    .await;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_crashing_migrator",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, schema.url())
        .env(CHILD_SCHEMA, schema.name())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let observer = Migrator::builder(store(&schema), crashing_set(schema.name()))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = observer.status().await.unwrap();
        if status.migrations[0].state == Some(RowState::Running) {
            assert!(status.lease.as_ref().unwrap().holder.starts_with("doomed@"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the child never started migrating: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Crash: SIGKILL, no chance to release anything. Its server-side statement is ended too.
    child.kill().unwrap();
    child.wait().unwrap();
    query(
        &schema,
        &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%/* {} */%' AND pid <> pg_backend_pid()", schema.name()),
    )
    .await;
    query(&schema, "UPDATE ctl SET slow = false").await;

    let killed_at = Instant::now();
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    let next = Migrator::builder(store(&schema), crashing_set(schema.name()))
        .label("survivor")
        .lock_wait(Duration::from_secs(20))
        .lock_poll(Duration::from_millis(50))
        .on_event(move |e| seen.lock().unwrap().push(format!("{e:?}")))
        .build()
        .unwrap();
    let report = next.up().await.unwrap();
    assert_eq!(report.applied, [1], "the running migration is retried");
    assert!(
        killed_at.elapsed() <= Duration::from_secs(5),
        "took {:?}",
        killed_at.elapsed()
    );
    let events = events.lock().unwrap().clone();
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Waiting") && e.contains("doomed@")),
        "{events:?}"
    );
    assert_eq!(count(&schema, "SELECT count(*) FROM done").await, 0);
    assert_eq!(
        next.status().await.unwrap().migrations[0].state,
        Some(RowState::Applied)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_migration_longer_than_the_lease_ttl_keeps_the_lease() {
    let schema = PgSchema::create().unwrap();
    // V1 holds the lease row locked for 2.5 s with a 1 s TTL: nobody can take it over, and
    // the lease must still be ours (renewed at commit) for V2.
    let long = set(&[
        (
            "V1__long.up.sql",
            "CREATE TABLE t (x int);\nSELECT pg_sleep(2.5);",
        ),
        ("V2__after.up.sql", "INSERT INTO t VALUES (1);"),
    ]);
    let m = Migrator::builder(store(&schema), long.clone())
        .label("long")
        .lease_ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    let other = Migrator::builder(store(&schema), long)
        .label("other")
        .lock_wait(Duration::ZERO)
        .build()
        .unwrap();
    let run = tokio::spawn({
        let m = m.clone();
        async move { m.up().await }
    });
    tokio::time::sleep(Duration::from_millis(1800)).await;
    // Past the TTL, mid-migration: the row is locked, so the other migrator is told it is
    // held rather than taking it over.
    let r = other.up().await;
    assert!(matches!(r, Err(Error::Locked { .. })), "{r:?}");
    assert_eq!(run.await.unwrap().unwrap().applied, [1, 2]);
    assert_eq!(count(&schema, "SELECT count(*) FROM t").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_only_while_the_server_does() {
    let schema = PgSchema::create().unwrap();
    let store = PostgresStore::from_url(&schema.url()).unwrap();
    store.health().await.expect("a reachable server is healthy");
    // Nothing listens on port 1: the check fails (promptly), it does not hang.
    let gone = PostgresStore::from_url("postgres://postgres@127.0.0.1:1/test")
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    let started = Instant::now();
    let err = gone.health().await.expect_err("nothing listens on port 1");
    assert!(
        matches!(err, Error::Backend { .. } | Error::Timeout(_)),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(6));
}
