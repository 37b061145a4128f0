//! palisade-ratelimit benches: every algorithm on the memory store next to `governor`
//! (keyed, same quota) in the same groups, and the Redis store's throughput at 1, 16 and 64
//! requests in flight on one multiplexed connection and on a pool.
//!
//! Two like-for-like pairs per memory group: keys read from a table of `String`s
//! (`palisade_allow` against `governor/keyed_gcra_string_keys`), and integer ids
//! (`palisade_allow_ids`, `Subject::Id`, against `governor/keyed_gcra`, keyed by `usize`).
//! `palisade/{alg}` is the full `Decision` (`MemoryStore::acquire_sync`, what headers need;
//! `palisade_ids/{alg}` the same keyed by ids) and `palisade_limiter/{alg}` the async
//! `RateLimiter::acquire` a service calls (one thread).
//!
//! ```sh
//! cargo bench -p palisade --bench ratelimit            # full run
//! cargo bench -p palisade --bench ratelimit -- --quick # faster, noisier
//! cargo bench -p palisade --bench ratelimit -- memory  # only the memory groups
//! ```
//! The Redis groups start their own `redis-server` (from `PATH`) through the test kit, or use
//! `REDIS_URL` when it is set.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use palisade::ratelimit::{
    Algorithm, MemoryStore, Policy, Quota, RateLimiter, RedisConnection, RedisStore, Store,
};

const KEYS: usize = 100_000;
/// A quota that is never exhausted during a run, so every request does the full admit path.
const PER_HOUR: u32 = 1_000_000_000;

fn policy(alg: Algorithm) -> Policy {
    Policy::single(
        format!("bench-{alg}"),
        alg,
        Quota::per_hour(u64::from(PER_HOUR)),
    )
    .unwrap()
}

fn governor_limiter<K: std::hash::Hash + Eq + Clone>() -> governor::DefaultKeyedRateLimiter<K> {
    governor::RateLimiter::keyed(governor::Quota::per_hour(
        NonZeroU32::new(PER_HOUR).unwrap(),
    ))
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user:{i}")).collect()
}

/// Runs `op(i)` for `iters` iterations split over `threads` threads; returns wall time.
/// One thread runs on the bench's own thread: a thread spawned per sample may start on the
/// other core, away from the caches the warm-up filled, which on a 2-core VM swung the
/// 100k-key rows (every library's alike) by up to 2x.
fn on_threads(iters: u64, threads: usize, op: &(dyn Fn(usize) + Sync)) -> Duration {
    let per = (iters as usize).div_ceil(threads);
    let start = Instant::now();
    if threads == 1 {
        for i in 0..per {
            op(i);
        }
        return start.elapsed();
    }
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in 0..per {
                    op(t * 7919 + i);
                }
            });
        }
    });
    start.elapsed()
}

fn memory(c: &mut Criterion) {
    for (nkeys, label) in [(1usize, "1_key"), (KEYS, "100k_keys")] {
        for threads in [1usize, 2] {
            let mut group = c.benchmark_group(format!("memory/{label}/{threads}_thread"));
            group.throughput(Throughput::Elements(1));
            let names = keys(nkeys);
            for alg in Algorithm::ALL {
                let store = MemoryStore::new();
                let policy = policy(alg);
                // Warm every key so the 100k-key case measures lookups, not inserts.
                for k in &names {
                    store.acquire_sync(k, &policy, 1);
                }
                // The full Decision (per-quota remaining/reset/retry-after, what headers need).
                group.bench_function(
                    BenchmarkId::from_parameter(format!("palisade/{alg}")),
                    |b| {
                        b.iter_custom(|iters| {
                            on_threads(iters, threads, &|i| {
                                black_box(store.acquire_sync(&names[i % nkeys], &policy, 1));
                            })
                        });
                    },
                );
                // The async `RateLimiter::acquire` over the same store (its metrics and span
                // included, no recorder installed), on a current-thread runtime: what a
                // service calls.
                if threads == 1 {
                    let limiter = RateLimiter::builder(store.clone()).build();
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    group.bench_function(
                        BenchmarkId::from_parameter(format!("palisade_limiter/{alg}")),
                        |b| {
                            b.iter_custom(|iters| {
                                rt.block_on(async {
                                    let start = Instant::now();
                                    for i in 0..iters as usize {
                                        black_box(
                                            limiter.acquire(&names[i % nkeys], &policy, 1).await,
                                        );
                                    }
                                    start.elapsed()
                                })
                            });
                        },
                    );
                }
                // Only admit/deny, like governor's check_key.
                group.bench_function(
                    BenchmarkId::from_parameter(format!("palisade_allow/{alg}")),
                    |b| {
                        b.iter_custom(|iters| {
                            on_threads(iters, threads, &|i| {
                                black_box(store.allow_sync(&names[i % nkeys], &policy, 1));
                            })
                        });
                    },
                );
                // Keyed by integer ids (`Subject::Id`), like governor's `usize` rows, in a
                // store of their own (the same number of keys as the other rows).
                drop(store);
                let store = MemoryStore::new();
                for id in 0..nkeys as u64 {
                    store.acquire_sync(id, &policy, 1);
                }
                // The full Decision keyed by ids, against governor's `usize` rows.
                group.bench_function(
                    BenchmarkId::from_parameter(format!("palisade_ids/{alg}")),
                    |b| {
                        b.iter_custom(|iters| {
                            on_threads(iters, threads, &|i| {
                                black_box(store.acquire_sync((i % nkeys) as u64, &policy, 1));
                            })
                        });
                    },
                );
                group.bench_function(
                    BenchmarkId::from_parameter(format!("palisade_allow_ids/{alg}")),
                    |b| {
                        b.iter_custom(|iters| {
                            on_threads(iters, threads, &|i| {
                                black_box(store.allow_sync((i % nkeys) as u64, &policy, 1));
                            })
                        });
                    },
                );
            }
            let gov = governor_limiter::<usize>();
            for i in 0..nkeys {
                let _ = gov.check_key(&i);
            }
            group.bench_function(BenchmarkId::from_parameter("governor/keyed_gcra"), |b| {
                b.iter_custom(|iters| {
                    on_threads(iters, threads, &|i| {
                        let _ = black_box(gov.check_key(&(i % nkeys)));
                    })
                });
            });
            // The same keys as palisade's rows (strings), so both pay for reading and
            // hashing the same bytes.
            let gov_str = governor_limiter::<String>();
            for k in &names {
                let _ = gov_str.check_key(k);
            }
            group.bench_function(
                BenchmarkId::from_parameter("governor/keyed_gcra_string_keys"),
                |b| {
                    b.iter_custom(|iters| {
                        on_threads(iters, threads, &|i| {
                            let _ = black_box(gov_str.check_key(&names[i % nkeys]));
                        })
                    });
                },
            );
            group.finish();
        }
    }
}

fn redis(c: &mut Criterion) {
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
    let pool = palisade::ratelimit::deadpool_redis::Config::from_url(url.as_str())
        .builder()
        .unwrap()
        .max_size(64)
        .runtime(palisade::ratelimit::deadpool_redis::Runtime::Tokio1)
        .build()
        .unwrap();
    let client = palisade::ratelimit::redis_crate::Client::open(url.as_str()).unwrap();
    let mux = rt
        .block_on(client.get_multiplexed_async_connection())
        .unwrap();
    let stores: [(&str, Arc<dyn Store>); 2] = [
        (
            "multiplexed",
            Arc::new(RedisStore::from_connection(RedisConnection::Multiplexed(
                mux,
            ))),
        ),
        ("pool", Arc::new(RedisStore::new(pool))),
    ];

    let run = |store: &Arc<dyn Store>, policy: &Policy, inflight: u64, iters: u64| -> Duration {
        rt.block_on(async {
            let per = iters.div_ceil(inflight);
            let start = Instant::now();
            let tasks: Vec<_> = (0..inflight)
                .map(|_| {
                    let (store, policy) = (Arc::clone(store), policy.clone());
                    tokio::spawn(async move {
                        for _ in 0..per {
                            black_box(store.acquire("hot", &policy, 1).await.unwrap());
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            start.elapsed()
        })
    };

    let mut group = c.benchmark_group("redis/gcra_one_key");
    group.throughput(Throughput::Elements(1));
    let gcra = policy(Algorithm::Gcra);
    for (name, store) in &stores {
        for inflight in [1u64, 16, 64] {
            group.bench_function(
                BenchmarkId::new(*name, format!("{inflight}_in_flight")),
                |b| {
                    b.iter_custom(|iters| run(store, &gcra, inflight, iters));
                },
            );
        }
    }
    group.finish();

    let mut group = c.benchmark_group("redis/algorithms_64_in_flight_multiplexed");
    group.throughput(Throughput::Elements(1));
    for alg in Algorithm::ALL {
        let policy = policy(alg);
        group.bench_function(BenchmarkId::from_parameter(alg.as_str()), |b| {
            b.iter_custom(|iters| run(&stores[0].1, &policy, 64, iters));
        });
    }
    // Three windows in one script call.
    let three = Policy::builder("bench-three")
        .quota("per_minute", Quota::per_minute(60_000_000))
        .quota("per_hour", Quota::per_hour(u64::from(PER_HOUR)))
        .quota("per_day", Quota::per_day(10_000_000_000))
        .build()
        .unwrap();
    group.bench_function(BenchmarkId::from_parameter("gcra_3_windows"), |b| {
        b.iter_custom(|iters| run(&stores[0].1, &three, 64, iters));
    });
    group.finish();
    drop(server);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = memory, redis
}
criterion_main!(benches);
