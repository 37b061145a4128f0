//! The conformance suite and concurrency on the in-memory store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade_ratelimit::{Algorithm, FakeClock, MemoryStore, Policy, Quota, Store};

/// The public conformance suite, one test per case, each on a fresh store.
mod conformance {
    use palisade_ratelimit::testing::Fixture;
    use palisade_ratelimit::{FakeClock, MemoryStore};

    fn memory() -> Fixture {
        let clock = FakeClock::new();
        Fixture::new(MemoryStore::builder().clock(clock.clone()).build(), clock)
    }

    palisade_ratelimit::store_conformance_tests!(memory());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_exact_in_memory() {
    let clock = FakeClock::new();
    let store = Arc::new(MemoryStore::builder().clock(clock.clone()).build());
    for alg in Algorithm::ALL {
        let policy = Policy::single(format!("c-{alg}"), alg, Quota::per_hour(5_000)).unwrap();
        let admitted = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (store, policy, admitted) =
                (Arc::clone(&store), policy.clone(), Arc::clone(&admitted));
            tasks.push(tokio::spawn(async move {
                for _ in 0..1_000 {
                    if store.acquire("hot", &policy, 1).await.unwrap().allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 5_000, "{alg}");
    }
}

#[test]
fn memory_is_bounded() {
    let store = MemoryStore::builder().max_keys(1_000).build();
    let policy = Policy::single("b", Algorithm::Gcra, Quota::per_minute(10)).unwrap();
    for i in 0..20_000 {
        store.acquire_sync(&format!("k{i}"), &policy, 1);
    }
    assert!(
        store.key_count() <= 1_000,
        "{} keys kept",
        store.key_count()
    );
}

#[test]
fn idle_keys_expire() {
    // A key idle past its policy's horizon is dropped (the store's clock drives expiry).
    let clock = FakeClock::new();
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let policy = Policy::single("idle", Algorithm::FixedWindow, Quota::per_minute(1)).unwrap();
    store.acquire_sync("k", &policy, 1);
    assert!(!store.acquire_sync("k", &policy, 1).allowed);
    assert_eq!(store.key_count(), 1);
    clock.advance(Duration::from_secs(59));
    assert_eq!(store.key_count(), 1);
    clock.advance(Duration::from_secs(2));
    assert_eq!(store.key_count(), 0);
    assert!(store.acquire_sync("k", &policy, 1).allowed);
}

#[test]
fn a_full_store_keeps_the_keys_that_hold_most() {
    for alg in Algorithm::ALL {
        let clock = FakeClock::new();
        let store = MemoryStore::builder()
            .max_keys(64 * 8)
            .clock(clock.clone())
            .build();
        let policy = Policy::single("busy", alg, Quota::per_hour(100)).unwrap();
        // One key spends its whole quota; thousands of others one unit each, filling the
        // store many times over.
        for _ in 0..100 {
            assert!(store.allow_sync("hot", &policy, 1), "{alg}");
        }
        for i in 0..10_000 {
            clock.advance(Duration::from_micros(10));
            assert!(store.allow_sync(&format!("cold{i}"), &policy, 1), "{alg}");
            if i % 50 == 0 {
                // Forgetting the spent key would give it its quota back: it is kept.
                assert!(
                    !store.allow_sync("hot", &policy, 1),
                    "{alg}: spent key forgotten at {i}"
                );
            }
        }
        assert!(store.key_count() <= 64 * 8, "{alg}");
    }
}

#[test]
fn a_policy_changed_under_the_same_name_starts_fresh() {
    let store = MemoryStore::builder().clock(FakeClock::new()).build();
    let one = Policy::single("chg", Algorithm::FixedWindow, Quota::per_minute(1)).unwrap();
    assert!(store.acquire_sync("k", &one, 1).allowed);
    assert!(!store.acquire_sync("k", &one, 1).allowed);
    let two = Policy::builder("chg")
        .algorithm(Algorithm::SlidingWindowLog)
        .quota("a", Quota::per_minute(2))
        .quota("b", Quota::per_hour(3))
        .build()
        .unwrap();
    let d = store.acquire_sync("k", &two, 1);
    assert!(
        d.allowed && d.quotas.len() == 2 && d.quotas[1].remaining == 2,
        "{d:?}"
    );
    store.refund_sync("k", &one, 1);
    assert_eq!(store.peek_sync("k", &two).quotas[0].remaining, 1);
    assert!(store.allow_sync("k", &one, 1));
}
