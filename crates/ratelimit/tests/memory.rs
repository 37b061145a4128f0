//! The conformance suite and concurrency on the in-memory store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade_ratelimit::{Algorithm, FakeClock, MemoryStore, Policy, Quota, Store, Subject};

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
        d.allowed && d.len() == 2 && d.quota(1).unwrap().remaining == 2,
        "{d:?}"
    );
    store.refund_sync("k", &one, 1);
    assert_eq!(store.peek_sync("k", &two).quota(0).unwrap().remaining, 1);
    assert!(store.allow_sync("k", &one, 1));
}

/// A policy replaced under the same name by one of another algorithm starts its keys
/// fresh; going back finds the states it left (as the Redis store, whose keys name the
/// algorithm, does), until they expire.
#[test]
fn a_changed_algorithm_keeps_its_own_states() {
    let clock = FakeClock::new();
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let gcra = Policy::single("s", Algorithm::Gcra, Quota::per_minute(1)).unwrap();
    let fw = Policy::single("s", Algorithm::FixedWindow, Quota::per_minute(1)).unwrap();
    assert!(store.allow_sync("k", &gcra, 1));
    assert!(store.allow_sync("k", &fw, 1));
    assert!(!store.allow_sync("k", &fw, 1));
    assert!(!store.allow_sync("k", &gcra, 1));
    assert_eq!(store.key_count(), 2);
    // A fresh object of the same layout takes over the states.
    let gcra_again = Policy::single("s", Algorithm::Gcra, Quota::per_minute(1)).unwrap();
    assert!(!store.allow_sync("k", &gcra_again, 1));
    clock.advance(std::time::Duration::from_secs(61));
    assert_eq!(store.key_count(), 0);
    // Reset forgets the key under the form it is given, as the Redis store does.
    assert!(store.allow_sync("k", &gcra, 1));
    assert!(store.allow_sync("k", &fw, 1));
    store.reset_sync("k", &gcra);
    assert_eq!(store.key_count(), 1);
    assert!(!store.allow_sync("k", &fw, 1));
    store.reset_sync("k", &fw);
    assert_eq!(store.key_count(), 0);
}

/// Ids and texts are separate subjects, each exact.
#[test]
fn ids_and_texts_are_separate_subjects() {
    let store = MemoryStore::builder().clock(FakeClock::new()).build();
    for alg in Algorithm::ALL {
        let p = Policy::single(format!("ids-{alg}"), alg, Quota::per_minute(1)).unwrap();
        for id in [0_u64, 7, u64::MAX] {
            assert!(store.allow_sync(id, &p, 1), "{alg} {id}");
            assert!(!store.allow_sync(Subject::Id(id), &p, 1), "{alg} {id}");
            assert!(
                store.allow_sync(id.to_string().as_str(), &p, 1),
                "{alg} {id}"
            );
        }
        assert_eq!(
            store.peek_sync(7_u64, &p).quota(0).unwrap().remaining,
            0,
            "{alg}"
        );
        store.refund_sync(7_u64, &p, 1);
        assert_eq!(
            store.peek_sync(7_u64, &p).quota(0).unwrap().remaining,
            1,
            "{alg}"
        );
        assert_eq!(
            store.peek_sync("7", &p).quota(0).unwrap().remaining,
            0,
            "{alg}"
        );
        store.reset_sync(0_u64, &p);
        assert!(store.acquire_sync(0_u64, &p, 1).allowed, "{alg}");
        assert!(!store.allow_sync("0", &p, 1), "{alg}");
    }
}
/// Keys longer than the inline buffer, and keys that differ only past it.
#[test]
fn long_keys_stay_apart() {
    let store = MemoryStore::builder().clock(FakeClock::new()).build();
    let policy = Policy::single("l", Algorithm::Gcra, Quota::per_minute(1)).unwrap();
    let base = "x".repeat(15);
    let keys = [
        base.clone(),
        format!("{base}a"),
        format!("{base}b"),
        "x".repeat(15 - 1),
        "x\u{0}".to_owned(),
        "x".to_owned(),
        "ключ".to_owned(),
        String::new(),
    ];
    for k in &keys {
        assert!(store.allow_sync(k, &policy, 1), "{k}");
    }
    for k in &keys {
        assert!(!store.allow_sync(k, &policy, 1), "{k}");
    }
    assert_eq!(store.key_count(), keys.len() as u64);
}

/// Keys whose one-word states outgrow their word (a bucket missing 1,024 tokens or more or
/// fuller than the capacity its group was made with, a sliding-window count past its field:
/// the store then keeps them in its wide table, which a unit test of `src/memory` checks)
/// decide, peek, refund and reset exactly as the algorithms run on plain states.
#[test]
fn outgrown_word_states_decide_as_the_algorithms() {
    use palisade_ratelimit::algorithm::{self, QuotaState};
    use palisade_ratelimit::{Clock, Decision, DecisionSource};
    let from = |(allowed, verdicts): (bool, Vec<_>)| {
        Decision::from_verdicts(allowed, &verdicts, DecisionSource::Store)
    };
    let single = |alg, q| Policy::single("w", alg, q).unwrap();
    let bucket = |q| single(Algorithm::TokenBucket, q);
    let burst = |b| bucket(Quota::per_hour(100_000).with_burst(b));
    let fast = bucket(Quota::new(1_000, Duration::from_millis(1)));
    let counter = |n| single(Algorithm::SlidingWindowCounter, Quota::per_hour(n));
    let cases = [
        (burst(5_000), burst(8_000), 700),
        (burst(5_000), fast, 700),
        (counter(1_000_000_000), counter(900_000_000), 1_500_000),
    ];
    for (first, later, cost) in cases {
        let alg = first.algorithm();
        let t0 = 1_700_000_000_000_000;
        let clock = FakeClock::at_micros(t0);
        let store = MemoryStore::builder().clock(clock.clone()).build();
        let subjects = [Subject::Text("k"), Subject::Id(7), Subject::Text("late")];
        let mut model: Vec<Option<Vec<QuotaState>>> = vec![None; subjects.len()];
        // "late" first comes under `later`, into its shard's group made with `first`.
        store.allow_sync("late", &first, 0);
        store.reset_sync("late", &first);
        for step in 0..8_u64 {
            let now = t0 + step * 10_000;
            clock.set_micros(now);
            let policy = if step < 4 { &first } else { &later };
            for (i, subject) in subjects
                .iter()
                .enumerate()
                .take(if step < 4 { 2 } else { 3 })
            {
                let states = model[i].get_or_insert_with(|| algorithm::fresh_states(policy, now));
                let expected = algorithm::decide(states, policy, now, cost);
                let at = format!("{alg} step {step} {subject:?}");
                if step % 2 == 0 {
                    assert_eq!(store.allow_sync(*subject, policy, cost), expected.0, "{at}");
                } else {
                    assert_eq!(
                        store.acquire_sync(*subject, policy, cost),
                        from(expected),
                        "{at}"
                    );
                }
                let peeked = from(algorithm::peek(states, policy, now));
                assert_eq!(store.peek_sync(*subject, policy), peeked, "{at}");
            }
        }
        // Refunds reach the moved states.
        store.refund_sync("k", &later, cost);
        let (states, now) = (model[0].as_mut().unwrap(), clock.now_micros());
        algorithm::refund(states, &later, now, cost);
        let peeked = from(algorithm::peek(states, &later, now));
        assert_eq!(store.peek_sync("k", &later), peeked, "{alg} after a refund");
        // Moved keys are forgotten like any other.
        for subject in subjects {
            store.reset_sync(subject, &later);
        }
        assert_eq!(store.key_count(), 0, "{alg}");
    }
}
