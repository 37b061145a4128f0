//! End-to-end test of `examples/migrations`: the service is built from its own modules,
//! served on 127.0.0.1:0 and driven over HTTP. On PostgreSQL (a fresh schema from the test
//! kit): blue migrates to V2 and writes users; green with an injected failure in V3 refuses
//! to start and the `users` table is restored; green then applies V3 and the expand step V4
//! and waits for blue before the contract step V5; both releases read each other's rows;
//! blue is retired and V5 runs; a manual backup is restored. In memory and on a throwaway
//! Redis: the same deploy on the keyspace mirror migrations (on Redis the injected failure
//! is a command Redis refuses, the restore is `DUMP`/`RESTORE` of the declared keys, and a
//! Redis that dies shows in `/health`).

#[path = "../../../examples/support/mod.rs"]
mod support;

#[path = "../../../examples/migrations/app.rs"]
mod app;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use palisade::migrate::{Error as MigrateError, MemoryStore};
use palisade_testkit::{PgSchema, RedisServer};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ADMIN: &str = "demo-admin-token-set-APP_MIGRATIONS_ADMIN_TOKEN";

fn backup_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "palisade-migrations-example-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn settings(
    target: app::Target,
    release: app::Release,
    inject_failure: Option<u64>,
    dir: &std::path::Path,
) -> app::Settings {
    app::Settings {
        target,
        release,
        inject_failure,
        backup_dir: dir.to_path_buf(),
        ..app::Settings::default()
    }
}

fn pg_settings(
    schema: &PgSchema,
    release: app::Release,
    inject_failure: Option<u64>,
    dir: &std::path::Path,
) -> app::Settings {
    app::Settings {
        database_url: Some(schema.database_url().to_owned()),
        schema: schema.name().to_owned(),
        ..settings(app::Target::Postgres, release, inject_failure, dir)
    }
}

/// A running service: its base URL; the server stops when the test ends.
struct Service {
    base: String,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(app: app::App) -> Service {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(app::serve(listener, app.router));
    Service {
        base,
        http: reqwest::Client::new(),
        task,
    }
}

impl Service {
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        assert!(
            response.headers().contains_key("x-request-id"),
            "every response carries a correlation id"
        );
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn text(&self, path: &str) -> String {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.send(method, path, Some(ADMIN), body).await
    }
}

fn migration(status: &Value, version: u64) -> &Value {
    status["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["version"] == version)
        .unwrap_or_else(|| panic!("V{version} in {status}"))
}

fn injected_failure(result: Result<app::App, app::BoxError>) -> (u64, bool) {
    let error = result.expect_err("a release whose migration fails does not start");
    match error.downcast_ref::<MigrateError>() {
        Some(MigrateError::Migration {
            version, restored, ..
        }) => (*version, *restored),
        _ => panic!("expected a migration failure, got {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_failure_is_restored_and_a_blue_green_deploy_expands_then_contracts() {
    let schema = PgSchema::create().expect("PostgreSQL at DATABASE_URL");
    let dir = backup_dir();

    // Blue starts: V1 and V2, each after a backup.
    let blue = app::build(
        pg_settings(&schema, app::Release::Blue, None, &dir),
        app::secrets().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(blue.startup.applied, [1, 2]);
    assert_eq!(blue.startup.backups.len(), 2, "a backup before each step");
    let blue = serve(blue).await;
    let (status, health) = blue.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["components"][0]["backend"], "postgres");
    assert_eq!(health["components"][0]["connected"], true);
    assert_eq!(health["components"][0]["state"], "up_to_date");

    for (name, email) in [
        ("Ada Lovelace", "Ada@Example.com"),
        ("Alan Turing", "alan@example.com"),
    ] {
        let (status, body) = blue
            .send(
                reqwest::Method::POST,
                "/users",
                None,
                Some(json!({ "name": name, "email": email })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = blue
        .send(
            reqwest::Method::POST,
            "/users",
            None,
            Some(json!({ "name": "Nobody", "email": "no-at-sign" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["code"], "invalid_email");

    // Green with a failure injected into V3 (no-transaction: the emails are lower-cased,
    // the index built, then the injected statement fails): it does not start, and the
    // `users` table is back as the backup taken just before V3 had it.
    let (version, restored) = injected_failure(
        app::build(
            pg_settings(&schema, app::Release::Green, Some(3), &dir),
            app::secrets().unwrap(),
        )
        .await,
    );
    assert_eq!((version, restored), (3, true));
    let (_, users) = blue.get("/users").await;
    assert_eq!(
        users[0]["email"], "Ada@Example.com",
        "lower-casing undone: {users}"
    );
    assert_eq!(users.as_array().unwrap().len(), 2);
    let (_, status) = blue.get("/migrations").await;
    let v3 = migration(&status, 3);
    assert_eq!(v3["state"], "failed");
    assert!(v3["backup_id"].is_string(), "{v3}");
    let unfinished = &status["issues"][0];
    assert!(
        unfinished["error"].as_str().unwrap().contains("restored"),
        "{unfinished}"
    );
    let (_, health) = blue.get("/health").await;
    assert_eq!(health["components"][0]["state"], "failed");
    let (_, audit) = blue.get("/migrations/audit?limit=20").await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"restore") && actions.contains(&"fail"),
        "{actions:?}"
    );
    let (_, backups) = blue.get("/backups").await;
    let v3_backup = backups
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["version"] == 3)
        .expect("V3's backup is listed");
    assert_eq!(v3_backup["scope"], json!({ "objects": ["users"] }));

    // Green for real: V3 is retried, V4 (expand) applied, V5 (contract) waits for blue.
    let green = app::build(
        pg_settings(&schema, app::Release::Green, None, &dir),
        app::secrets().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(green.startup.applied, [3, 4]);
    let blocked = green.startup.blocked.clone().expect("V5 waits");
    assert_eq!(
        (blocked.version, blocked.live.clone()),
        (5, vec!["blue".to_owned()])
    );
    let green = serve(green).await;
    let (_, status) = green.get("/migrations").await;
    assert_eq!(status["blocked"]["version"], 5);
    assert_eq!(migration(&status, 4)["phase"], "expand");
    assert_eq!(migration(&status, 5)["phase"], "contract");
    assert!(migration(&status, 5)["state"].is_null());
    let (_, health) = green.get("/health").await;
    assert_eq!(health["components"][0]["state"], "blocked");
    let plan = green.text("/migrations/plan").await;
    assert!(
        plan.contains("stops before V5") && plan.contains("blue"),
        "{plan}"
    );

    // Both releases serve, each in its own shape, and read each other's rows.
    let (_, users) = green.get("/users").await;
    assert_eq!(users[0]["first_name"], "Ada");
    assert_eq!(users[0]["last_name"], "Lovelace");
    assert_eq!(users[0]["email"], "ada@example.com", "V3 ran this time");
    let (status, _) = green
        .send(
            reqwest::Method::POST,
            "/users",
            None,
            Some(json!({ "name": "Grace Hopper", "email": "grace@example.com" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = blue
        .send(
            reqwest::Method::POST,
            "/users",
            None,
            Some(json!({ "name": "Barbara Liskov", "email": "barbara@example.com" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, blue_users) = blue.get("/users").await;
    let grace = blue_users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "grace@example.com")
        .unwrap();
    assert_eq!(
        grace["name"], "Grace Hopper",
        "the trigger filled fullname for blue"
    );
    assert!(
        grace.get("first_name").is_none(),
        "blue knows no first_name"
    );
    let (_, green_users) = green.get("/users").await;
    let barbara = green_users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "barbara@example.com")
        .unwrap();
    assert_eq!(
        (
            barbara["first_name"].as_str(),
            barbara["last_name"].as_str()
        ),
        (Some("Barbara"), Some("Liskov")),
        "the trigger filled the new columns for green"
    );
    let (status, body) = green
        .send(
            reqwest::Method::POST,
            "/users",
            None,
            Some(json!({ "name": "Ada Again", "email": "ada@example.com" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "email_taken");

    // Changing anything needs the admin token.
    let (status, body) = green
        .send(reqwest::Method::POST, "/migrations/up", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "unauthorized");
    let (status, report) = green
        .admin(reqwest::Method::POST, "/migrations/up", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["applied"], json!([]));
    assert_eq!(report["blocked"]["live"], json!(["blue"]));

    // The pipeline retires blue; the contract step runs.
    let (status, apps) = green
        .admin(
            reqwest::Method::PUT,
            "/apps/blue",
            Some(json!({ "built_against": 2, "live": false })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        apps.as_array()
            .unwrap()
            .iter()
            .any(|a| a["version"] == "blue" && a["live"] == false)
    );
    let plan = green.text("/migrations/plan").await;
    assert!(
        plan.contains("DROP COLUMN fullname"),
        "the dry run shows V5's SQL: {plan}"
    );
    let (status, report) = green
        .admin(reqwest::Method::POST, "/migrations/up", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["applied"], json!([5]));
    assert!(report["blocked"].is_null());
    let (_, health) = green.get("/health").await;
    assert_eq!(health["components"][0]["state"], "up_to_date");
    assert_eq!(health["components"][0]["detail"], "at V5");
    let (status, users) = green.get("/users").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(users.as_array().unwrap().len(), 4);

    let (status, body) = green
        .admin(
            reqwest::Method::POST,
            "/migrations/down",
            Some(json!({ "to": "three" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["code"], "invalid_body");

    // A contract step has no way back: refused before anything runs.
    let (status, body) = green
        .admin(
            reqwest::Method::POST,
            "/migrations/down",
            Some(json!({ "to": 3 })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        (body["code"].as_str(), body["version"].as_u64()),
        (Some("irreversible"), Some(5))
    );

    // A manual backup of the whole schema, a change, and the restore that undoes it.
    let (status, backup) = green.admin(reqwest::Method::POST, "/backups", None).await;
    assert_eq!(status, StatusCode::CREATED, "{backup}");
    assert_eq!(backup["scope"], "everything");
    let (status, _) = green
        .send(
            reqwest::Method::POST,
            "/users",
            None,
            Some(json!({ "name": "Temporary User", "email": "temp@example.com" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = backup["id"].as_str().unwrap();
    let (status, restored) = green
        .admin(
            reqwest::Method::POST,
            &format!("/backups/{id}/restore"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{restored}");
    let (_, users) = green.get("/users").await;
    assert_eq!(
        users.as_array().unwrap().len(),
        4,
        "the change is gone: {users}"
    );
    let (status, body) = green
        .admin(
            reqwest::Method::POST,
            "/backups/no-such-backup/restore",
            None,
        )
        .await;
    assert!(status.is_client_error() || status.is_server_error());
    assert!(body["code"].is_string(), "{body}");

    // What the migrator did is in /metrics.
    let metrics = green.text("/metrics").await;
    for line in [
        "palisade_migrate_migrations_total{direction=\"up\",outcome=\"failed\"}",
        "palisade_migrate_migrations_total{direction=\"up\",outcome=\"applied\"}",
        "palisade_migrate_backups_total{outcome=\"ok\"}",
        "palisade_migrate_blocked_total",
    ] {
        assert!(metrics.contains(line), "{line} in /metrics:\n{metrics}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_the_same_deploy_runs_on_the_mirror_migrations() {
    let dir = backup_dir();
    let target = MemoryStore::new();
    let blue = app::build_on_memory(
        settings(app::Target::Memory, app::Release::Blue, None, &dir),
        app::secrets().unwrap(),
        target.clone(),
    )
    .await
    .unwrap();
    assert_eq!(blue.startup.applied, [1, 2]);
    let blue = serve(blue).await;
    let (_, data) = blue.get("/data").await;
    assert_eq!(data["table:users"], "id,fullname,email,created_at");
    assert_eq!(data["data:users:email_case"], "mixed");
    let (status, body) = blue.get("/users").await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(body["code"], "needs_postgres");
    let (_, health) = blue.get("/health").await;
    assert_eq!(health["components"][0]["backend"], "memory");
    assert_eq!(health["components"][0]["connected"], true);
    // An unknown route is a problem+json 404 like every other error.
    let (status, body) = blue.get("/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "not_found");

    // The injected failure: V3's first line ran, the declared keys are restored.
    let (version, restored) = injected_failure(
        app::build_on_memory(
            settings(app::Target::Memory, app::Release::Green, Some(3), &dir),
            app::secrets().unwrap(),
            target.clone(),
        )
        .await,
    );
    assert_eq!((version, restored), (3, true));
    let (_, data) = blue.get("/data").await;
    assert_eq!(data["data:users:email_case"], "mixed", "restored: {data}");
    assert!(data.get("index:users_email_key").is_none(), "{data}");
    let (_, status) = blue.get("/migrations").await;
    assert_eq!(migration(&status, 3)["state"], "failed");

    // Green: V3 and V4, V5 waits for blue; then blue is retired and V5 runs.
    let green = app::build_on_memory(
        settings(app::Target::Memory, app::Release::Green, None, &dir),
        app::secrets().unwrap(),
        target.clone(),
    )
    .await
    .unwrap();
    assert_eq!(green.startup.applied, [3, 4]);
    assert_eq!(green.startup.blocked.as_ref().map(|b| b.version), Some(5));
    let green = serve(green).await;
    let (_, data) = green.get("/data").await;
    assert_eq!(data["data:users:email_case"], "lower");
    assert_eq!(
        data["trigger:users_sync_names"],
        "fullname<->first_name,last_name"
    );
    let (status, _) = green
        .admin(
            reqwest::Method::PUT,
            "/apps/blue",
            Some(json!({ "built_against": 2, "live": false })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, report) = green
        .admin(reqwest::Method::POST, "/migrations/up", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["applied"], json!([5]));
    let (_, data) = green.get("/data").await;
    assert_eq!(
        data["table:users"],
        "id,first_name,last_name,email,created_at"
    );
    assert!(data.get("trigger:users_sync_names").is_none());
    let (_, health) = green.get("/health").await;
    assert_eq!(health["components"][0]["state"], "up_to_date");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_the_same_deploy_runs_on_the_keyspace_migrations() {
    let dir = backup_dir();
    let mut redis = RedisServer::start().expect("redis-server on PATH");
    let url = redis.url();
    let on_redis = |release, inject_failure| app::Settings {
        redis_url: Some(url.clone()),
        ..settings(app::Target::Redis, release, inject_failure, &dir)
    };

    let blue = app::build(on_redis(app::Release::Blue, None), app::secrets().unwrap())
        .await
        .unwrap();
    assert_eq!(blue.startup.applied, [1, 2]);
    assert!(
        blue.startup.backups.is_empty(),
        "a Redis backs up declared keys only; V1 and V2 declare none"
    );
    let blue = serve(blue).await;
    let (_, data) = blue.get("/data").await;
    assert_eq!(data["table:users"], "id,fullname,email,created_at");
    assert_eq!(data["data:users:email_case"], "mixed");
    assert!(
        data.as_object()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with('{')),
        "the migrator's own keys are not data: {data}"
    );
    let (_, health) = blue.get("/health").await;
    assert_eq!(health["components"][0]["backend"], "redis");
    assert_eq!(health["components"][0]["connected"], true);
    assert_eq!(health["components"][0]["state"], "up_to_date");
    let (status, body) = blue.get("/users").await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(body["code"], "needs_postgres");

    // V3's first command ran (the emails lower-cased) before Redis refused the injected one;
    // the declared keys are restored from the backup taken just before.
    let (version, restored) = injected_failure(
        app::build(
            on_redis(app::Release::Green, Some(3)),
            app::secrets().unwrap(),
        )
        .await,
    );
    assert_eq!((version, restored), (3, true));
    let (_, data) = blue.get("/data").await;
    assert_eq!(data["data:users:email_case"], "mixed", "restored: {data}");
    assert!(data.get("index:users_email_key").is_none(), "{data}");
    let (_, status) = blue.get("/migrations").await;
    let v3 = migration(&status, 3);
    assert_eq!(v3["state"], "failed");
    assert!(v3["backup_id"].is_string(), "{v3}");
    let (_, health) = blue.get("/health").await;
    assert_eq!(health["components"][0]["state"], "failed");

    // Green for real: V3 (after a backup of its keys) and V4; V5 waits for blue.
    let green = app::build(on_redis(app::Release::Green, None), app::secrets().unwrap())
        .await
        .unwrap();
    assert_eq!(green.startup.applied, [3, 4]);
    assert_eq!(green.startup.backups.len(), 1, "V3 declares its keys");
    assert_eq!(green.startup.blocked.as_ref().map(|b| b.version), Some(5));
    let green = serve(green).await;
    let (_, data) = green.get("/data").await;
    assert_eq!(data["data:users:email_case"], "lower");
    assert_eq!(data["index:users_email_key"], "users(email),unique");
    let (status, _) = green
        .admin(
            reqwest::Method::PUT,
            "/apps/blue",
            Some(json!({ "built_against": 2, "live": false })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, report) = green
        .admin(reqwest::Method::POST, "/migrations/up", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["applied"], json!([5]));
    let (_, data) = green.get("/data").await;
    assert_eq!(
        data["table:users"],
        "id,first_name,last_name,email,created_at"
    );
    assert!(data.get("trigger:users_sync_names").is_none());

    // A backup of named keys, a change, a restore.
    let (status, backup) = green
        .admin(
            reqwest::Method::POST,
            "/backups",
            Some(json!({ "objects": ["table:users"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{backup}");
    let (status, body) = green
        .admin(reqwest::Method::POST, "/backups", Some(json!({})))
        .await;
    assert!(
        status.is_client_error() || status.is_server_error(),
        "a Redis has no whole-database backup: {status} {body}"
    );
    let (status, reverted) = green
        .admin(
            reqwest::Method::POST,
            "/migrations/down",
            Some(json!({ "to": 4 })),
        )
        .await;
    assert!(
        !status.is_success(),
        "V5 has no down file: refused before anything runs ({status} {reverted})"
    );
    let (status, restored) = green
        .admin(
            reqwest::Method::POST,
            &format!("/backups/{}/restore", backup["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{restored}");

    // Redis dies: `/health` says so (`degraded`, `connected: false`) and `/data` is a typed
    // 503; both recover once a Redis answers on the same port again.
    redis.kill();
    let (status, health) = green.get("/health").await;
    assert_eq!(status, StatusCode::OK, "health answers while Redis is down");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["components"][0]["connected"], false, "{health}");
    let (status, body) = green.get("/data").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "backend_unavailable");
    redis.restart().unwrap();
    let (_, health) = green.get("/health").await;
    assert_eq!(health["components"][0]["connected"], true, "{health}");
    let (status, _) = green.get("/data").await;
    assert_eq!(status, StatusCode::OK);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_sample_settings_file_is_valid() {
    let path = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/migrations/migrations.toml"
    ));
    let settings: app::Settings = support::settings::from_file(path).unwrap();
    assert_eq!(settings.target, app::Target::Memory);
    assert_eq!(app::Settings::default().target, app::Target::Memory);
    assert_eq!(settings.release, app::Release::Blue);
    assert_eq!(
        settings.migrator.lock_wait,
        std::time::Duration::from_secs(120)
    );
    let bad = std::env::temp_dir().join(format!("migrations-bad-{}.toml", std::process::id()));
    std::fs::write(&bad, "relase = \"green\"\n").unwrap();
    let error = support::settings::from_file::<app::Settings>(&bad).unwrap_err();
    assert!(error.contains("unknown field"), "{error}");
    let _ = std::fs::remove_file(&bad);
}
