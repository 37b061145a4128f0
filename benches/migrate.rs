//! Time to plan and apply 1,000 small migrations on the same PostgreSQL: palisade-migrate
//! next to refinery (its tokio-postgres runner), each run in a fresh schema.
//!
//! * `load/palisade`: parse 1,000 embedded files and checksum them (no I/O).
//! * `plan/palisade`: load plus `plan_up` on an empty schema (creates the ledger tables,
//!   reads the ledger, validates). refinery has no dry run.
//! * `apply/palisade`, `apply/refinery`: every migration applied in its own transaction with
//!   its ledger row. palisade also takes and renews its lease row, fences every write and
//!   writes an audit row per migration; refinery takes no lock at all.
//!
//! Schemas are created and dropped outside the timed part. Needs PostgreSQL at
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1/test`). Run with
//! `cargo bench --bench migrate`.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use palisade::migrate::{MigrationSet, Migrator, PostgresStore};
use palisade_testkit::PgSchema;

const N: usize = 1000;

fn files() -> Vec<(String, String)> {
    (1..=N)
        .map(|v| {
            (
                format!("V{v}__step_{v}.up.sql"),
                format!("CREATE TABLE t_{v} (id bigint PRIMARY KEY, note text);\nINSERT INTO t_{v} VALUES ({v}, 'x');"),
            )
        })
        .collect()
}

fn load(files: &[(String, String)]) -> MigrationSet {
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    MigrationSet::from_embedded(&refs).unwrap()
}

async fn refinery_apply(schema: &PgSchema, files: &[(String, String)]) {
    let (mut client, connection) = tokio_postgres::connect(&schema.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(connection);
    let migrations: Vec<refinery::Migration> = files
        .iter()
        .map(|(name, sql)| {
            refinery::Migration::unapplied(name.trim_end_matches(".up.sql"), sql).unwrap()
        })
        .collect();
    let report = refinery::Runner::new(&migrations)
        .run_async(&mut client)
        .await
        .unwrap();
    assert_eq!(report.applied_migrations().len(), N);
    drop(client);
    let _ = conn.await;
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let files = files();
    let mut g = c.benchmark_group("migrate_1000");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));

    g.bench_function(BenchmarkId::new("load", "palisade"), |b| {
        b.iter(|| load(&files));
    });

    g.bench_function(BenchmarkId::new("plan", "palisade"), |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let files = &files;
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let schema = PgSchema::create().unwrap();
                    let start = Instant::now();
                    let m = Migrator::builder(
                        PostgresStore::from_url(&schema.url()).unwrap(),
                        load(files),
                    )
                    .build()
                    .unwrap();
                    let plan = m.plan_up(None).await.unwrap();
                    total += start.elapsed();
                    assert_eq!(plan.steps.len(), N);
                }
                total
            }
        });
    });

    g.bench_function(BenchmarkId::new("apply", "palisade"), |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let files = &files;
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let schema = PgSchema::create().unwrap();
                    let start = Instant::now();
                    let m = Migrator::builder(
                        PostgresStore::from_url(&schema.url()).unwrap(),
                        load(files),
                    )
                    .build()
                    .unwrap();
                    let report = m.up().await.unwrap();
                    total += start.elapsed();
                    assert_eq!(report.applied.len(), N);
                }
                total
            }
        });
    });

    g.bench_function(BenchmarkId::new("apply", "refinery"), |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let files = &files;
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let schema = PgSchema::create().unwrap();
                    let start = Instant::now();
                    refinery_apply(&schema, files).await;
                    total += start.elapsed();
                }
                total
            }
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
