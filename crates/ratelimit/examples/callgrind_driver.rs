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

use std::hint::black_box;
use std::num::NonZeroU32;

use palisade_ratelimit::{Algorithm, MemoryStore, Policy, Quota, RateLimiter};

fn main() {
    let args: Vec<String> = std::env::args().collect();
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
