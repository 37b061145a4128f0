//! Circuit breaker overhead: palisade next to `recloser` and `failsafe`, in the same groups,
//! on the same closure / future.
//!
//! * `closed/*`: the cost a healthy call pays for going through the breaker.
//! * `open/*`: the cost of a rejection while the breaker is open.
//! * `*_2_threads/*`: two threads hammering one shared breaker (time per call per thread).
//! * `palisade_count` uses the last-100-calls window, `palisade_time` a 10 s time window
//!   (one clock read per call).
//! * `store/*`: the shared-state store's operations, memory and Redis (feature `redis`):
//!   `flush` (one round trip, what every instance sends each `flush_interval`) and
//!   `probe_lease` (lease a half-open probe and report it: two round trips). The Redis rows
//!   start their own `redis-server` through the test kit, or use `REDIS_URL`. No peer library
//!   shares breaker state, so these rows have none beside them.
//!
//! Futures are polled once with a no-op waker (they are always ready), so no executor cost
//! is included for anyone. Run with `cargo bench --bench circuit_breaker`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
#[cfg(feature = "redis")]
use palisade::circuit_breaker::RedisStore;
use palisade::circuit_breaker::store::{Batch, ProbeGrant, SharedPolicy};
use palisade::circuit_breaker::{
    CircuitBreaker, Config, FakeClock, MemoryStore, Outcome, State, Store,
};

fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("benchmark futures are always ready"),
    }
}

fn palisade_count() -> CircuitBreaker {
    CircuitBreaker::builder("bench")
        .count_window(100)
        .build()
        .unwrap()
}

fn palisade_time() -> CircuitBreaker {
    CircuitBreaker::builder("bench")
        .time_window(10)
        .build()
        .unwrap()
}

fn recloser() -> recloser::Recloser {
    recloser::Recloser::custom()
        .error_rate(0.5)
        .closed_len(100)
        .open_wait(Duration::from_secs(3600))
        .build()
}

type Failsafe = failsafe::StateMachine<
    failsafe::failure_policy::ConsecutiveFailures<failsafe::backoff::Constant>,
    (),
>;

fn failsafe() -> Failsafe {
    let policy = failsafe::failure_policy::consecutive_failures(
        5,
        failsafe::backoff::constant(Duration::from_secs(3600)),
    );
    failsafe::Config::new().failure_policy(policy).build()
}

/// The protected operation every breaker runs.
#[inline]
fn op(ok: bool) -> Result<u64, ()> {
    if black_box(ok) {
        Ok(black_box(42))
    } else {
        Err(())
    }
}

fn trip_all(
    p: &CircuitBreaker,
    r: &recloser::Recloser,
    ar: &recloser::AsyncRecloser,
    f: &Failsafe,
) {
    for _ in 0..200 {
        let _ = ready(p.call(async { op(false) }));
        let _ = r.call(|| op(false));
        let _ = ready(ar.call(async { op(false) }));
        let _ = ready(failsafe::futures::CircuitBreaker::call(f, async {
            op(false)
        }));
    }
    assert!(p.try_acquire().is_err(), "palisade did not open");
    assert!(r.call(|| op(true)).is_err(), "recloser did not open");
    assert!(
        ready(ar.call(async { op(true) })).is_err(),
        "async recloser did not open"
    );
    assert!(
        !failsafe::CircuitBreaker::is_call_permitted(f),
        "failsafe did not open"
    );
}

fn single_thread(c: &mut Criterion, state: &str) {
    let mut g = c.benchmark_group(state);
    g.throughput(Throughput::Elements(1));
    let (pc, pt, r, f) = (palisade_count(), palisade_time(), recloser(), failsafe());
    let ar = recloser::AsyncRecloser::from(recloser());
    if state == "open" {
        trip_all(&pc, &r, &ar, &f);
        trip_all(&pt, &r, &ar, &f);
    }

    g.bench_function(BenchmarkId::new("async", "palisade_count"), |b| {
        b.iter(|| ready(pc.call(async { op(true) })).is_ok());
    });
    g.bench_function(BenchmarkId::new("async", "palisade_time"), |b| {
        b.iter(|| ready(pt.call(async { op(true) })).is_ok());
    });
    g.bench_function(BenchmarkId::new("async", "recloser"), |b| {
        b.iter(|| ready(ar.call(async { op(true) })).is_ok());
    });
    g.bench_function(BenchmarkId::new("async", "failsafe"), |b| {
        b.iter(|| {
            ready(failsafe::futures::CircuitBreaker::call(&f, async {
                op(true)
            }))
            .is_ok()
        });
    });

    g.bench_function(BenchmarkId::new("sync", "palisade_count"), |b| {
        b.iter(|| match pc.try_acquire() {
            Ok(permit) => {
                let r = op(true);
                permit.record(if r.is_ok() {
                    Outcome::Success
                } else {
                    Outcome::Failure
                });
                r.is_ok()
            }
            Err(_) => false,
        });
    });
    g.bench_function(BenchmarkId::new("sync", "recloser"), |b| {
        b.iter(|| r.call(|| op(true)).is_ok());
    });
    g.bench_function(BenchmarkId::new("sync", "failsafe"), |b| {
        b.iter(|| failsafe::CircuitBreaker::call(&f, || op(true)).is_ok());
    });
    g.finish();
}

fn two_threads(c: &mut Criterion, state: &str) {
    let mut g = c.benchmark_group(format!("{state}_2_threads"));
    g.throughput(Throughput::Elements(1));
    let (pc, pt, r, f) = (palisade_count(), palisade_time(), recloser(), failsafe());
    let ar = recloser::AsyncRecloser::from(recloser());
    if state == "open" {
        trip_all(&pc, &r, &ar, &f);
        trip_all(&pt, &r, &ar, &f);
    }

    fn run(iters: u64, work: &(impl Fn() -> bool + Sync)) -> Duration {
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..iters {
                        black_box(work());
                    }
                });
            }
        });
        start.elapsed()
    }

    g.bench_function(BenchmarkId::new("async", "palisade_count"), |b| {
        b.iter_custom(|iters| run(iters, &|| ready(pc.call(async { op(true) })).is_ok()));
    });
    g.bench_function(BenchmarkId::new("async", "palisade_time"), |b| {
        b.iter_custom(|iters| run(iters, &|| ready(pt.call(async { op(true) })).is_ok()));
    });
    g.bench_function(BenchmarkId::new("async", "recloser"), |b| {
        b.iter_custom(|iters| run(iters, &|| ready(ar.call(async { op(true) })).is_ok()));
    });
    g.bench_function(BenchmarkId::new("async", "failsafe"), |b| {
        b.iter_custom(|iters| {
            run(iters, &|| {
                ready(failsafe::futures::CircuitBreaker::call(&f, async {
                    op(true)
                }))
                .is_ok()
            })
        });
    });
    g.finish();
}

/// A store made half-open on a fake clock, with room for every probe the bench leases.
fn store_rows(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    backend: &str,
    store: &dyn Store,
    clock: &FakeClock,
) {
    let config = Config::default()
        .minimum_calls(1)
        .half_open_probes(1 << 20)
        .success_threshold(1);
    let policy = SharedPolicy::from_config(&config);
    let batch = Batch::new("bench-instance", 20, 1, 0, false);
    g.bench_function(BenchmarkId::new("flush", backend), |b| {
        b.iter(|| {
            rt.block_on(store.flush("bench-flush", &policy, &batch))
                .unwrap()
        });
    });
    rt.block_on(async {
        let s = store
            .flush("bench-probe", &policy, &Batch::new("a", 1, 1, 0, true))
            .await
            .unwrap();
        assert_eq!(s.state, State::Open);
        clock.advance(config.open_wait);
    });
    let mut n = 0u64;
    g.bench_function(BenchmarkId::new("probe_lease", backend), |b| {
        b.iter(|| {
            n += 1;
            let lease = format!("bench-{n}");
            rt.block_on(async {
                let ProbeGrant::Granted { generation } = store
                    .acquire_probe("bench-probe", &policy, &lease)
                    .await
                    .unwrap()
                else {
                    panic!("the bench store is half-open with room for every probe")
                };
                store
                    .complete_probe("bench-probe", &policy, generation, &lease, Outcome::Ignored)
                    .await
                    .unwrap()
            })
        });
    });
}

fn stores(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    let clock = FakeClock::new();
    store_rows(
        &mut g,
        &rt,
        "memory",
        &MemoryStore::with_clock(clock.clone()),
        &clock,
    );
    #[cfg(feature = "redis")]
    {
        let server = match std::env::var("REDIS_URL") {
            Ok(_) => None,
            Err(_) => {
                Some(palisade_testkit::RedisServer::start().expect("redis-server for the bench"))
            }
        };
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| server.as_ref().unwrap().url());
        let pool = palisade::circuit_breaker::deadpool_redis::Config::from_url(url.as_str())
            .create_pool(Some(
                palisade::circuit_breaker::deadpool_redis::Runtime::Tokio1,
            ))
            .unwrap();
        let clock = FakeClock::new();
        let prefix = format!("palisade-bench:{}:", std::process::id());
        let store = RedisStore::new(pool)
            .with_prefix(prefix)
            .with_clock(clock.clone());
        store_rows(&mut g, &rt, "redis", &store, &clock);
        drop(server);
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    single_thread(c, "closed");
    single_thread(c, "open");
    two_threads(c, "closed");
    two_threads(c, "open");
    stores(c);
}

criterion_group!(circuit_breaker, benches);
criterion_main!(circuit_breaker);
