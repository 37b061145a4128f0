//! The `palisade-migrate` binary, run as a user would, against the real PostgreSQL (one
//! fresh schema per test).
#![cfg(feature = "cli")]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use palisade_testkit::PgSchema;

const BIN: &str = env!("CARGO_BIN_EXE_palisade-migrate");

fn cli(schema: &PgSchema, dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", schema.url())
        .env("PALISADE_MIGRATE_DIR", dir)
        .env("PALISADE_MIGRATE_SCHEMA", schema.name())
        .env_remove("PALISADE_MIGRATE_BACKUP_DIR")
        .output()
        .expect("the binary runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

fn write(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join(name), body).unwrap();
}

#[test]
fn new_plan_up_status_down_round_trip() {
    let schema = PgSchema::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let o = cli(&schema, dir.path(), &["new", "create_users"]);
    assert_eq!(code(&o), 0, "{:?}", text(&o));
    assert!(text(&o).0.contains("V1__create_users.up.sql"));
    write(
        dir.path(),
        "V1__create_users.up.sql",
        "CREATE TABLE users (id bigint PRIMARY KEY);",
    );
    write(dir.path(), "V1__create_users.down.sql", "DROP TABLE users;");
    let o = cli(&schema, dir.path(), &["new", "add_email"]);
    assert!(
        text(&o).0.contains("V2__add_email.up.sql"),
        "the next version: {:?}",
        text(&o)
    );
    write(
        dir.path(),
        "V2__add_email.up.sql",
        "ALTER TABLE users ADD COLUMN email text;",
    );
    write(
        dir.path(),
        "V2__add_email.down.sql",
        "ALTER TABLE users DROP COLUMN email;",
    );

    let o = cli(&schema, dir.path(), &["plan"]);
    assert_eq!(code(&o), 0);
    let (out, _) = text(&o);
    assert!(
        out.contains("-- V1 create_users (up)") && out.contains("ADD COLUMN email"),
        "{out}"
    );

    let o = cli(&schema, dir.path(), &["up"]);
    let (out, err) = text(&o);
    assert_eq!(code(&o), 0, "{out}{err}");
    assert!(out.contains("applied 2 migration(s)"), "{out}");
    assert!(
        err.contains("==> V1 create_users (up)") && err.contains("V2 done in"),
        "progress on stderr: {err}"
    );

    let o = cli(&schema, dir.path(), &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(status["current_version"], 2);
    assert_eq!(status["migrations"][1]["state"], "applied");
    let o = cli(&schema, dir.path(), &["status"]);
    assert!(
        text(&o).0.contains("at version 2, latest 2, 0 pending"),
        "{:?}",
        text(&o)
    );

    let o = cli(&schema, dir.path(), &["plan", "--down", "0"]);
    assert!(text(&o).0.contains("DROP TABLE users"));
    let o = cli(&schema, dir.path(), &["down", "--to", "0"]);
    assert_eq!(code(&o), 0, "{:?}", text(&o));
    let o = cli(&schema, dir.path(), &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(status["current_version"].is_null());
}

#[test]
fn validate_exit_codes_edit_and_crlf() {
    let schema = PgSchema::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "V1__t.up.sql", "CREATE TABLE t (x int);\n");
    assert_eq!(code(&cli(&schema, dir.path(), &["up"])), 0);
    assert_eq!(code(&cli(&schema, dir.path(), &["validate"])), 0);
    write(
        dir.path(),
        "V1__t.up.sql",
        "CREATE TABLE t (x int);   \r\n\r\n",
    );
    let o = cli(&schema, dir.path(), &["validate"]);
    assert_eq!(code(&o), 0, "a CRLF re-save is not an edit: {:?}", text(&o));
    write(dir.path(), "V1__t.up.sql", "CREATE TABLE t (x bigint);\n");
    let o = cli(&schema, dir.path(), &["validate"]);
    assert_eq!(code(&o), 3, "{:?}", text(&o));
    assert!(text(&o).0.contains("V1 t: edited"));
    write(dir.path(), "V2__u.up.sql", "CREATE TABLE u (x int);\n");
    let o = cli(&schema, dir.path(), &["up"]);
    assert_eq!(code(&o), 3, "up refuses on an edit: {:?}", text(&o));
    assert_eq!(code(&cli(&schema, dir.path(), &["repair"])), 0);
    assert_eq!(code(&cli(&schema, dir.path(), &["up"])), 0);
}

#[test]
fn a_failed_migration_exits_5_and_a_held_lock_exits_4() {
    let schema = PgSchema::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "V1__bad.up.sql", "SELECT * FROM nowhere;");
    let o = cli(&schema, dir.path(), &["up"]);
    assert_eq!(code(&o), 5, "{:?}", text(&o));
    assert!(
        text(&o).1.contains("relation \"nowhere\" does not exist"),
        "the database's message: {:?}",
        text(&o)
    );

    // Another migrator holds the lease.
    write(dir.path(), "V1__bad.up.sql", "SELECT 1;");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _lease = rt.block_on(async {
        use palisade_migrate::{LeaseGrant, PostgresStore, Store};
        let store = PostgresStore::from_url(&schema.url()).unwrap();
        store.prepare().await.unwrap();
        match store
            .acquire_lease("other-deployer", Duration::from_secs(60))
            .await
            .unwrap()
        {
            LeaseGrant::Acquired(l) => l,
            other => panic!("{other:?}"),
        }
    });
    let o = cli(&schema, dir.path(), &["--lock-wait", "0s", "up"]);
    assert_eq!(code(&o), 4, "{:?}", text(&o));
    assert!(
        text(&o).1.contains("held by \"other-deployer\""),
        "{:?}",
        text(&o)
    );
    let o = cli(&schema, dir.path(), &["--lock-wait", "300ms", "up"]);
    assert_eq!(code(&o), 4);
    assert!(
        text(&o)
            .1
            .contains("waiting: the lock is held by other-deployer"),
        "{:?}",
        text(&o)
    );
    assert_eq!(
        code(&cli(&schema, dir.path(), &["bogus-command"])),
        2,
        "usage errors exit 2"
    );
}

#[test]
fn backup_backups_restore() {
    let schema = PgSchema::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backups = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "V1__t.up.sql",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2);",
    );
    let key = palisade_migrate::BackupKey::generate().to_hex();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("DATABASE_URL", schema.url())
            .env("PALISADE_MIGRATE_DIR", dir.path())
            .env("PALISADE_MIGRATE_SCHEMA", schema.name())
            .env("PALISADE_MIGRATE_BACKUP_DIR", backups.path())
            .env("PALISADE_MIGRATE_BACKUP_KEY", &key)
            .output()
            .unwrap()
    };
    let o = run(&["up"]);
    assert_eq!(code(&o), 0, "{:?}", text(&o));
    assert!(
        text(&o).1.contains("taken before V1"),
        "up backs up first: {:?}",
        text(&o)
    );
    let o = run(&["backup", "--objects", "t"]);
    assert_eq!(code(&o), 0, "{:?}", text(&o));
    let id = text(&o).0.trim().to_owned();
    let o = run(&["backups"]);
    let (out, _) = text(&o);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.contains(&id) && out.contains("manual") && out.contains("before V1"),
        "{out}"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = palisade_migrate::PostgresStore::from_url(&schema.url()).unwrap();
        store
            .pool()
            .get()
            .await
            .unwrap()
            .batch_execute("DELETE FROM t")
            .await
            .unwrap();
    });
    let o = run(&["restore", &id]);
    assert_eq!(code(&o), 0, "{:?}", text(&o));
    let n: i64 = rt.block_on(async {
        let store = palisade_migrate::PostgresStore::from_url(&schema.url()).unwrap();
        store
            .pool()
            .get()
            .await
            .unwrap()
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(n, 2);
    let o = Command::new(BIN)
        .args(["backups"])
        .env("DATABASE_URL", schema.url())
        .env("PALISADE_MIGRATE_DIR", dir.path())
        .env("PALISADE_MIGRATE_BACKUP_DIR", backups.path())
        .env_remove("PALISADE_MIGRATE_BACKUP_KEY")
        .output()
        .unwrap();
    assert_eq!(code(&o), 1);
    assert!(text(&o).1.contains("PALISADE_MIGRATE_BACKUP_KEY"));
}
