//! What a decision allocates, counted by a heap-profiling global allocator (dhat, in
//! testing mode). One test in this binary: the counts are process-wide.

use palisade_ratelimit::{Algorithm, FakeClock, MemoryStore, Policy, Quota, RateLimiter, Store};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn blocks() -> u64 {
    dhat::HeapStats::get().total_blocks
}

/// A single-quota decision allocates nothing (its figures are inline and the policy is one
/// reference count), and through the limiter no future is boxed; several quotas take one
/// allocation (their figures); `allow_sync` never allocates for a known key. The limiter's
/// two are its metrics: the `metrics` macros build each labelled key's label list, recorder
/// or not (label values share the policy's and tier's names, no string is copied).
#[test]
fn a_single_quota_decision_allocates_nothing() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for alg in Algorithm::ALL {
        let single = Policy::single(format!("one-{alg}"), alg, Quota::per_hour(1_000)).unwrap();
        let multi = Policy::builder(format!("two-{alg}"))
            .algorithm(alg)
            .quota("a", Quota::per_hour(1_000))
            .quota("b", Quota::per_day(10_000))
            .build()
            .unwrap();
        // Time stands still, so a sliding log merges each request into its newest entry
        // instead of growing its list (a log allocates as it grows, amortised).
        let store = MemoryStore::builder().clock(FakeClock::new()).build();
        let limiter = RateLimiter::builder(store.clone()).build();
        // Known keys: the first call may make the key (and the log its list).
        for p in [&single, &multi] {
            store.acquire_sync("user:1", p, 1);
            store.acquire_sync(7_u64, p, 1);
        }
        let cases: [(&str, u64, &dyn Fn()); 5] = [
            ("acquire_sync, text key", 0, &|| {
                drop(store.acquire_sync("user:1", &single, 1));
            }),
            ("acquire_sync, id", 0, &|| {
                drop(store.acquire_sync(7_u64, &single, 1));
            }),
            ("allow_sync, several quotas", 0, &|| {
                let _ = store.allow_sync("user:1", &multi, 1);
            }),
            ("acquire_sync, several quotas", 1, &|| {
                drop(store.acquire_sync("user:1", &multi, 1));
            }),
            ("RateLimiter::acquire (two metric label lists)", 2, &|| {
                drop(rt.block_on(limiter.acquire("user:1", &single, 1)));
            }),
        ];
        for (what, expected, op) in cases {
            // The log's list may grow while warming; measure a steady state.
            op();
            let before = blocks();
            op();
            assert_eq!(blocks() - before, expected, "{alg}: {what}");
        }
        // The async trait path (a boxed future) is what a store that waits pays.
        let before = blocks();
        drop(rt.block_on(store.acquire("user:1", &single, 1)));
        assert_eq!(
            blocks() - before,
            1,
            "{alg}: the boxed future of Store::acquire"
        );
    }
}
