//! Secret store: what a read costs.
//!
//! * `get_cached/*`: a cached `Secrets::get` (polled once with a no-op waker: it is always
//!   ready, so no executor cost is counted) next to what services hand-roll instead — an
//!   `RwLock<HashMap>` of `Arc<SecretString>`, and `std::env::var` read on every call.
//! * `get_cached_2_threads/*`: two threads (the machine's cores) reading the same cached
//!   secret: time per read per thread (each thread does every iteration).
//! * `get_cold_redis/*`: a forced load through `RedisProvider` (one `EVALSHA` + decryption)
//!   next to a plain `GET` of the same bytes over the same pool, on a local `redis-server`
//!   started by the bench (or `REDIS_URL`).
//! * `redact/*`: scrubbing one 200-byte log line with 10 and 1000 known values.
//!
//! Run with `cargo bench --bench secret_store`.

use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use palisade::secret_store::deadpool_redis;
use palisade::secret_store::redact::Redactor;
use palisade::secret_store::{
    ExposeSecret, MasterKey, MemoryProvider, Provider, RedisProvider, SecretName, SecretString,
    Secrets,
};

fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("a cached read is always ready"),
    }
}

fn secrets() -> Secrets {
    let mut p = MemoryProvider::new();
    for i in 0..100 {
        p = p
            .with_secret(
                &format!("service-{i}/api-key"),
                &format!("sk-value-{i:04}-0123456789"),
            )
            .unwrap();
    }
    Secrets::builder().provider(p).build().unwrap()
}

fn cached(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = secrets();
    rt.block_on(async {
        for i in 0..100 {
            s.get(&format!("service-{i}/api-key")).await.unwrap();
        }
    });
    let map: RwLock<HashMap<String, Arc<SecretString>>> = RwLock::new(
        (0..100)
            .map(|i| {
                (
                    format!("service-{i}/api-key"),
                    Arc::new(SecretString::from(format!("sk-value-{i:04}-0123456789"))),
                )
            })
            .collect(),
    );
    let env_name = std::env::vars()
        .next()
        .map_or_else(|| "PATH".to_owned(), |(k, _)| k);

    let mut group = c.benchmark_group("get_cached");
    group.throughput(Throughput::Elements(1));
    let _enter = rt.enter();
    group.bench_function(BenchmarkId::new("palisade", "secrets_get"), |b| {
        b.iter(|| {
            let v = ready(s.get(black_box("service-42/api-key"))).unwrap();
            black_box(v.expose_secret().len())
        });
    });
    group.bench_function(BenchmarkId::new("palisade", "cached_sync"), |b| {
        b.iter(|| {
            let v = s.cached(black_box("service-42/api-key")).unwrap();
            black_box(v.expose_secret().len())
        });
    });
    group.bench_function(BenchmarkId::new("rwlock_hashmap_arc", "get"), |b| {
        b.iter(|| {
            let v = map
                .read()
                .unwrap()
                .get(black_box("service-42/api-key"))
                .cloned()
                .unwrap();
            black_box(v.expose_secret().len())
        });
    });
    group.bench_function(BenchmarkId::new("std_env_var", "get"), |b| {
        b.iter(|| black_box(std::env::var(black_box(&env_name)).map(|v| v.len())));
    });
    group.finish();

    let mut group = c.benchmark_group("get_cached_2_threads");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("palisade", "secrets_get"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    let s = &s;
                    let handle = rt.handle().clone();
                    scope.spawn(move || {
                        let _g = handle.enter();
                        for _ in 0..iters {
                            let v = ready(s.get(black_box("service-42/api-key"))).unwrap();
                            black_box(v.expose_secret().len());
                        }
                    });
                }
            });
            start.elapsed()
        });
    });
    group.bench_function(BenchmarkId::new("rwlock_hashmap_arc", "get"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    let map = &map;
                    scope.spawn(move || {
                        for _ in 0..iters {
                            let v = map
                                .read()
                                .unwrap()
                                .get(black_box("service-42/api-key"))
                                .cloned()
                                .unwrap();
                            black_box(v.expose_secret().len());
                        }
                    });
                }
            });
            start.elapsed()
        });
    });
    group.finish();
}

fn cold_redis(c: &mut Criterion) {
    let server = match std::env::var("REDIS_URL") {
        Ok(_) => None,
        Err(_) => Some(palisade_testkit::RedisServer::start().expect("redis-server for the bench")),
    };
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| server.as_ref().unwrap().url());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool = deadpool_redis::Config::from_url(url.as_str())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let prefix = format!("palisade-bench:{}:", std::process::id());
    let key = MasterKey::from_hex("bench", &"ab".repeat(32)).unwrap();
    let provider = RedisProvider::new(pool.clone(), key).with_prefix(prefix.clone());
    let name = SecretName::new("openai/api-key").unwrap();
    let value = "sk-bench-0123456789abcdefghijklmnopqrstuvwxyz";
    rt.block_on(async {
        provider.put(&name, &value.into()).await.unwrap();
        let mut c = pool.get().await.unwrap();
        let _: () = deadpool_redis::redis::cmd("SET")
            .arg(format!("{prefix}plain"))
            .arg(value)
            .query_async(&mut c)
            .await
            .unwrap();
    });
    let s = Secrets::builder().provider(provider).build().unwrap();

    let mut group = c.benchmark_group("get_cold_redis");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("palisade", "refresh_decrypt"), |b| {
        b.to_async(&rt).iter(|| async {
            let v = s.refresh("openai/api-key").await.unwrap();
            black_box(v.expose_secret().len())
        });
    });
    group.bench_function(BenchmarkId::new("plain_redis_get", "pool"), |b| {
        b.to_async(&rt).iter(|| async {
            let mut c = pool.get().await.unwrap();
            let v: String = deadpool_redis::redis::cmd("GET")
                .arg(format!("{prefix}plain"))
                .query_async(&mut c)
                .await
                .unwrap();
            black_box(v.len())
        });
    });
    group.finish();
    drop(server);
}

fn redact(c: &mut Criterion) {
    let line = "2026-01-01T00:00:00Z  INFO request{method=POST path=/v1/chat/completions}: upstream answered status=200 latency_ms=812 model=gpt-4o-mini tokens=1234 user=u-42 trace=4bf92f3577b34da6";
    let mut group = c.benchmark_group("redact");
    group.throughput(Throughput::Bytes(line.len() as u64));
    for n in [10usize, 1000] {
        let r = Redactor::new();
        for i in 0..n {
            r.add_value(&format!("secret-value-{i:05}-xyzzy"));
        }
        group.bench_function(BenchmarkId::new("clean_line", n), |b| {
            b.iter(|| black_box(r.scrub(black_box(line)).len()));
        });
        let dirty = format!(
            "{line} dsn=postgres://app:secret-value-{:05}-xyzzy@db/app",
            n / 2
        );
        group.bench_function(BenchmarkId::new("line_with_a_value", n), |b| {
            b.iter(|| black_box(r.scrub(black_box(&dirty)).len()));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = cached, cold_redis, redact
}
criterion_main!(benches);
