//! A fixed workload for `valgrind --tool=callgrind`, whose instruction counts repeat exactly
//! whatever else the machine runs (unlike wall-clock benches on a shared box). Each run
//! warms the keys, then performs `iters` operations; the cost of one operation is the
//! difference between a run of `iters` and a run of 0, divided by `iters`:
//!
//! ```sh
//! cargo build --release -p palisade-ratelimit --example callgrind_driver
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/callgrind_driver allow gcra 1 100000
//! ```
//! Operations: `allow` (`MemoryStore::allow_sync`, text keys), `allow_ids` (integer ids),
//! `acquire` (`acquire_sync`, the full `Decision`, text keys), `acquire_ids` (the same with
//! integer ids), `limiter` (`RateLimiter::acquire` on a current-thread runtime), `governor`
//! (governor's `check_key`, `usize` keys), `governor_text` (governor keyed by `String`).
//!
//! `rows ALGORITHM KEYS ITERS THREADS` runs, in one process, every memory row of the
//! criterion bench (`benches/ratelimit.rs`) for one algorithm, set up as the bench sets it up
//! (`palisade`, `palisade_limiter` on one thread, `palisade_allow` on one store of text
//! keys, then `palisade_ids` and `palisade_allow_ids` on one of ids; `rows governor KEYS ..`
//! runs `governor/keyed_gcra` and `governor/keyed_gcra_string_keys`), each row `ITERS` calls
//! split over `THREADS` threads as the bench splits them, in a function of its own
//! (`row_palisade`, `row_palisade_allow`, ...). Each row's cost per call is that function's
//! inclusive count over every thread (callgrind sums threads), divided by `ITERS`, so the
//! warm-up and the clock's calibration are left out and no run of 0 calls is needed:
//!
//! ```sh
//! valgrind --tool=callgrind --callgrind-out-file=out.cg \
//!     target/release/examples/callgrind_driver rows gcra 100000 200000 1
//! callgrind_annotate --inclusive=yes out.cg | grep row_
//! ```

use std::hint::black_box;
use std::num::NonZeroU32;

use palisade_ratelimit::{Algorithm, MemoryStore, Policy, Quota, RateLimiter};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, rows, alg, keys, iters, threads] = args.as_slice()
        && rows == "rows"
    {
        let n = |s: &String| s.parse::<usize>().expect("a number");
        return bench_rows(alg, n(keys), n(iters), n(threads));
    }
    let [_, op, alg, keys, iters] = args.as_slice() else {
        eprintln!("usage: callgrind_driver OP ALGORITHM KEYS ITERS");
        std::process::exit(2);
    };
    let alg = Algorithm::ALL
        .into_iter()
        .find(|a| a.as_str() == alg)
        .expect("an algorithm name (gcra, token_bucket, ...)");
    let keys: usize = keys.parse().expect("a key count");
    let iters: usize = iters.parse().expect("an iteration count");
    let policy = Policy::single("driver", alg, Quota::per_hour(1_000_000_000)).unwrap();
    let names: Vec<String> = (0..keys).map(|i| format!("user:{i}")).collect();
    let store = MemoryStore::new();
    match op.as_str() {
        "allow" | "acquire" => {
            for k in &names {
                store.allow_sync(k.as_str(), &policy, 1);
            }
            for i in 0..iters {
                let k = names[i % keys].as_str();
                if op == "allow" {
                    black_box(store.allow_sync(k, &policy, 1));
                } else {
                    black_box(store.acquire_sync(k, &policy, 1));
                }
            }
        }
        "allow_ids" | "acquire_ids" => {
            for id in 0..keys as u64 {
                store.allow_sync(id, &policy, 1);
            }
            for i in 0..iters {
                let id = (i % keys) as u64;
                if op == "allow_ids" {
                    black_box(store.allow_sync(id, &policy, 1));
                } else {
                    black_box(store.acquire_sync(id, &policy, 1));
                }
            }
        }
        "limiter" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let limiter = RateLimiter::builder(store).no_timeout().build();
            rt.block_on(async {
                for k in &names {
                    limiter.acquire(k, &policy, 1).await;
                }
                for i in 0..iters {
                    black_box(limiter.acquire(&names[i % keys], &policy, 1).await);
                }
            });
        }
        "governor" => {
            let gov = governor::RateLimiter::keyed(governor::Quota::per_hour(
                NonZeroU32::new(1_000_000_000).unwrap(),
            ));
            for i in 0..keys {
                let _ = gov.check_key(&i);
            }
            for i in 0..iters {
                let _ = black_box(gov.check_key(&(i % keys)));
            }
        }
        "governor_text" => {
            let gov = governor::RateLimiter::keyed(governor::Quota::per_hour(
                NonZeroU32::new(1_000_000_000).unwrap(),
            ));
            for k in &names {
                let _ = gov.check_key(k);
            }
            for i in 0..iters {
                let _ = black_box(gov.check_key(&names[i % keys]));
            }
        }
        other => panic!("unknown operation {other}"),
    }
}

/// The bench's policy for `alg`.
fn bench_policy(alg: Algorithm) -> Policy {
    Policy::single(format!("bench-{alg}"), alg, Quota::per_hour(1_000_000_000)).unwrap()
}

/// Runs `row(t, per)` on `threads` threads (this one when one), `per` calls each, as the
/// bench's `on_threads` splits `iters` calls (thread `t` calls with `t * 7919 + i`).
fn on_threads(iters: usize, threads: usize, row: &(dyn Fn(usize, usize) + Sync)) {
    let per = iters.div_ceil(threads);
    if threads == 1 {
        return row(0, per);
    }
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || row(t, per));
        }
    });
}

fn bench_rows(alg: &str, nkeys: usize, iters: usize, threads: usize) {
    let names: Vec<String> = (0..nkeys).map(|i| format!("user:{i}")).collect();
    if alg == "governor" {
        let gov = governor::RateLimiter::keyed(governor::Quota::per_hour(
            NonZeroU32::new(1_000_000_000).unwrap(),
        ));
        for i in 0..nkeys {
            let _ = gov.check_key(&i);
        }
        on_threads(iters, threads, &|t, per| row_governor(&gov, nkeys, t, per));
        let gov_str = governor::RateLimiter::keyed(governor::Quota::per_hour(
            NonZeroU32::new(1_000_000_000).unwrap(),
        ));
        for k in &names {
            let _ = gov_str.check_key(k);
        }
        on_threads(iters, threads, &|t, per| {
            row_governor_string(&gov_str, &names, t, per);
        });
        return;
    }
    let alg = Algorithm::ALL
        .into_iter()
        .find(|a| a.as_str() == alg)
        .expect("an algorithm name (gcra, token_bucket, ...) or governor");
    let policy = bench_policy(alg);
    let p = &policy;
    let store = MemoryStore::new();
    for k in &names {
        store.acquire_sync(k, p, 1);
    }
    let s = &store;
    on_threads(iters, threads, &|t, per| row_palisade(s, p, &names, t, per));
    if threads == 1 {
        let limiter = RateLimiter::builder(store.clone()).build();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        row_palisade_limiter(&rt, &limiter, p, &names, iters);
    }
    on_threads(iters, threads, &|t, per| {
        row_palisade_allow(s, p, &names, t, per);
    });
    drop(store);
    let store = MemoryStore::new();
    for id in 0..nkeys as u64 {
        store.acquire_sync(id, p, 1);
    }
    let s = &store;
    on_threads(iters, threads, &|t, per| {
        row_palisade_ids(s, p, nkeys, t, per);
    });
    on_threads(iters, threads, &|t, per| {
        row_palisade_allow_ids(s, p, nkeys, t, per);
    });
}

#[inline(never)]
fn row_palisade(store: &MemoryStore, policy: &Policy, names: &[String], t: usize, per: usize) {
    for i in 0..per {
        let i = t * 7919 + i;
        black_box(store.acquire_sync(&names[i % names.len()], policy, 1));
    }
}

#[inline(never)]
fn row_palisade_limiter(
    rt: &tokio::runtime::Runtime,
    limiter: &RateLimiter,
    policy: &Policy,
    names: &[String],
    iters: usize,
) {
    rt.block_on(async {
        for i in 0..iters {
            black_box(limiter.acquire(&names[i % names.len()], policy, 1).await);
        }
    });
}

#[inline(never)]
fn row_palisade_allow(
    store: &MemoryStore,
    policy: &Policy,
    names: &[String],
    t: usize,
    per: usize,
) {
    for i in 0..per {
        let i = t * 7919 + i;
        black_box(store.allow_sync(&names[i % names.len()], policy, 1));
    }
}

#[inline(never)]
fn row_palisade_ids(store: &MemoryStore, policy: &Policy, nkeys: usize, t: usize, per: usize) {
    for i in 0..per {
        let i = t * 7919 + i;
        black_box(store.acquire_sync((i % nkeys) as u64, policy, 1));
    }
}

#[inline(never)]
fn row_palisade_allow_ids(
    store: &MemoryStore,
    policy: &Policy,
    nkeys: usize,
    t: usize,
    per: usize,
) {
    for i in 0..per {
        let i = t * 7919 + i;
        black_box(store.allow_sync((i % nkeys) as u64, policy, 1));
    }
}

#[inline(never)]
fn row_governor(
    gov: &governor::DefaultKeyedRateLimiter<usize>,
    nkeys: usize,
    t: usize,
    per: usize,
) {
    for i in 0..per {
        let i = t * 7919 + i;
        let _ = black_box(gov.check_key(&(i % nkeys)));
    }
}

#[inline(never)]
fn row_governor_string(
    gov: &governor::DefaultKeyedRateLimiter<String>,
    names: &[String],
    t: usize,
    per: usize,
) {
    for i in 0..per {
        let i = t * 7919 + i;
        let _ = black_box(gov.check_key(&names[i % names.len()]));
    }
}
