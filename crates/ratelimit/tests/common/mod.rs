//! The one conformance suite every `Store` runs: the in-memory store, a real Redis and a
//! real 3-master Redis Cluster. Time is driven by a `FakeClock` shared with the store.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use palisade_ratelimit::{Algorithm, FakeClock, Policy, Quota, Store};

fn policy(name: &str, alg: Algorithm, quotas: &[(&str, Quota)]) -> Policy {
    let mut b = Policy::builder(format!("{name}-{}", alg.as_str())).algorithm(alg);
    for (n, q) in quotas {
        b = b.quota(*n, *q);
    }
    b.build().unwrap()
}

/// Run every case against `store`, whose clock is `clock`.
pub async fn run_all(store: &dyn Store, clock: &FakeClock) {
    for alg in Algorithm::ALL {
        limit_and_refill(store, clock, alg).await;
        multi_window_denial_consumes_nothing(store, clock, alg).await;
        weighted_cost(store, clock, alg).await;
        peek_consumes_nothing(store, clock, alg).await;
        refund_gives_back(store, clock, alg).await;
        reset_forgets(store, clock, alg).await;
        hostile_keys_stay_apart(store, clock, alg).await;
        policies_stay_apart(store, clock, alg).await;
        retry_after_is_honest(store, clock, alg).await;
        zero_limit_denies(store, clock, alg).await;
        a_longer_period_strands_no_key(store, clock, alg).await;
        reset_forgets_only_the_form_given(store, clock, alg).await;
    }
}

async fn acquire(
    store: &dyn Store,
    key: &str,
    p: &Policy,
    cost: u64,
) -> palisade_ratelimit::Decision {
    store.acquire(key, p, cost).await.expect("store answered")
}

pub async fn limit_and_refill(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let p = policy("limit", alg, &[("per_minute", Quota::per_minute(5))]);
    for i in 0..5 {
        let d = acquire(store, "k", &p, 1).await;
        assert!(d.allowed, "{alg}: request {i} refused: {d:?}");
        assert_eq!(d.quotas[0].remaining, 4 - i, "{alg}");
        assert_eq!(d.quotas[0].limit, 5);
        assert!(!d.from_fallback);
    }
    let d = acquire(store, "k", &p, 1).await;
    assert!(!d.allowed, "{alg}: sixth admitted");
    assert_eq!(d.quotas[0].remaining, 0);
    let retry = d.retry_after.expect("a retry time");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(120),
        "{alg}: {retry:?}"
    );
    assert!(d.quotas[0].reset <= Duration::from_secs(120));
    // After twice the period every algorithm is whole again.
    clock.advance(Duration::from_secs(120));
    for _ in 0..5 {
        assert!(
            acquire(store, "k", &p, 1).await.allowed,
            "{alg}: not refilled"
        );
    }
    assert!(!acquire(store, "k", &p, 1).await.allowed);
    clock.advance(Duration::from_secs(120));
}

pub async fn multi_window_denial_consumes_nothing(
    store: &dyn Store,
    clock: &FakeClock,
    alg: Algorithm,
) {
    let p = policy(
        "multi",
        alg,
        &[
            ("per_second", Quota::per_second(3)),
            ("per_minute", Quota::per_minute(5)),
        ],
    );
    for _ in 0..3 {
        assert!(acquire(store, "k", &p, 1).await.allowed, "{alg}");
    }
    for _ in 0..10 {
        let d = acquire(store, "k", &p, 1).await;
        assert!(!d.allowed, "{alg}");
        assert!(!d.quotas[0].allowed && d.quotas[1].allowed, "{alg}: {d:?}");
        assert_eq!(
            d.quotas[1].remaining, 2,
            "{alg}: the denial consumed from per_minute"
        );
    }
    let peeked = store.peek("k", &p).await.unwrap();
    assert_eq!(peeked.quotas[1].remaining, 2, "{alg}");
    clock.advance(Duration::from_millis(2_000));
    assert!(acquire(store, "k", &p, 1).await.allowed, "{alg}");
    assert!(acquire(store, "k", &p, 1).await.allowed, "{alg}");
    let d = acquire(store, "k", &p, 1).await;
    assert!(!d.allowed, "{alg}: per_minute exceeded");
    assert!(d.quotas[0].allowed && !d.quotas[1].allowed, "{alg}: {d:?}");
    assert_eq!(
        d.quotas[0].remaining, 1,
        "{alg}: the denial consumed from per_second"
    );
    clock.advance(Duration::from_secs(120));
}

pub async fn weighted_cost(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let p = policy("cost", alg, &[("q", Quota::per_minute(10))]);
    let d = acquire(store, "k", &p, 7).await;
    assert!(d.allowed && d.quotas[0].remaining == 3, "{alg}: {d:?}");
    let d = acquire(store, "k", &p, 4).await;
    assert!(!d.allowed, "{alg}");
    assert_eq!(d.quotas[0].remaining, 3, "{alg}");
    assert!(acquire(store, "k", &p, 3).await.allowed, "{alg}");
    let d = acquire(store, "other", &p, 11).await;
    assert!(
        !d.allowed && d.retry_after.is_none(),
        "{alg}: a cost above the limit can never pass: {d:?}"
    );
    let d = acquire(store, "other", &p, 0).await;
    assert!(
        d.allowed && d.quotas[0].remaining == 10,
        "{alg}: cost 0 is a free look: {d:?}"
    );
    clock.advance(Duration::from_secs(120));
}

pub async fn peek_consumes_nothing(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let p = policy("peek", alg, &[("q", Quota::per_minute(3))]);
    let d = store.peek("k", &p).await.unwrap();
    assert!(d.allowed && d.quotas[0].remaining == 3, "{alg}: {d:?}");
    acquire(store, "k", &p, 2).await;
    for _ in 0..5 {
        let d = store.peek("k", &p).await.unwrap();
        assert!(d.allowed && d.quotas[0].remaining == 1, "{alg}: {d:?}");
    }
    acquire(store, "k", &p, 1).await;
    let d = store.peek("k", &p).await.unwrap();
    assert!(
        !d.allowed && d.quotas[0].remaining == 0 && d.retry_after.is_some(),
        "{alg}: {d:?}"
    );
    clock.advance(Duration::from_secs(120));
}

pub async fn refund_gives_back(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let p = policy("refund", alg, &[("q", Quota::per_minute(5))]);
    assert!(acquire(store, "k", &p, 5).await.allowed, "{alg}");
    assert!(!acquire(store, "k", &p, 1).await.allowed, "{alg}");
    store.refund("k", &p, 2).await.unwrap();
    assert!(
        acquire(store, "k", &p, 2).await.allowed,
        "{alg}: refund not applied"
    );
    assert!(
        !acquire(store, "k", &p, 1).await.allowed,
        "{alg}: refunded too much"
    );
    // A refund never raises a quota above its capacity.
    store.refund("fresh", &p, 100).await.unwrap();
    let d = store.peek("fresh", &p).await.unwrap();
    assert_eq!(d.quotas[0].remaining, 5, "{alg}");
    clock.advance(Duration::from_secs(120));
}

pub async fn reset_forgets(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let p = policy(
        "reset",
        alg,
        &[("a", Quota::per_minute(2)), ("b", Quota::per_hour(3))],
    );
    acquire(store, "k", &p, 2).await;
    assert!(!acquire(store, "k", &p, 1).await.allowed, "{alg}");
    store.reset("k", &p).await.unwrap();
    let d = acquire(store, "k", &p, 2).await;
    assert!(d.allowed && d.quotas[1].remaining == 1, "{alg}: {d:?}");
    store.reset("k", &p).await.unwrap();
    clock.advance(Duration::from_secs(120));
}

pub fn hostile_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "a", "a:b", "a%3Ab", "a:", ":a", "{a}", "{a", "a}", "}{", "{", "}", ":", "%", "%25",
        "a\nb", "a\r\nb", "a b", "a\0b", "ключ", "鍵", "🔑", "", " ", "*", "?", "[a]", "a\\b",
        "a\"b",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    keys.push("x".repeat(10 * 1024));
    keys.push("x".repeat(10 * 1024 - 1));
    keys.push(format!("{{{}}}", "y".repeat(5000)));
    keys
}

pub async fn hostile_keys_stay_apart(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let p = policy("hostile", alg, &[("q", Quota::per_minute(2))]);
    let keys = hostile_keys();
    for k in &keys {
        let d = acquire(store, k, &p, 1).await;
        assert!(
            d.allowed && d.quotas[0].remaining == 1,
            "{alg}: key {:?} shares state: {d:?}",
            truncate(k)
        );
    }
    for k in &keys {
        let d = acquire(store, k, &p, 1).await;
        assert!(
            d.allowed && d.quotas[0].remaining == 0,
            "{alg}: key {:?}: {d:?}",
            truncate(k)
        );
        assert!(!acquire(store, k, &p, 1).await.allowed, "{alg}");
    }
    clock.advance(Duration::from_secs(120));
}

fn truncate(k: &str) -> String {
    k.chars().take(20).collect()
}

pub async fn policies_stay_apart(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    // Same key, two policies (one named so that naive concatenation would collide).
    let a = policy("pa", alg, &[("q", Quota::per_minute(1))]);
    let b = Policy::builder(format!("pa-{}:k", alg.as_str()))
        .algorithm(alg)
        .quota("q", Quota::per_minute(1))
        .build()
        .unwrap();
    assert!(acquire(store, "k", &a, 1).await.allowed);
    assert!(
        acquire(store, "", &b, 1).await.allowed,
        "{alg}: policies share state"
    );
    assert!(acquire(store, "k", &b, 1).await.allowed, "{alg}");
    assert!(!acquire(store, "k", &a, 1).await.allowed, "{alg}");
    clock.advance(Duration::from_secs(120));
}

pub async fn retry_after_is_honest(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let p = policy("retry", alg, &[("q", Quota::per_second(4))]);
    for _ in 0..4 {
        assert!(acquire(store, "k", &p, 1).await.allowed);
    }
    clock.advance(Duration::from_millis(100));
    let d = acquire(store, "k", &p, 1).await;
    assert!(!d.allowed, "{alg}");
    let retry = d.retry_after.unwrap();
    clock.advance(retry);
    assert!(
        acquire(store, "k", &p, 1).await.allowed,
        "{alg}: still refused after {retry:?}"
    );
    clock.advance(Duration::from_secs(120));
}

pub async fn zero_limit_denies(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let p = policy("zero", alg, &[("q", Quota::per_minute(0))]);
    for _ in 0..3 {
        let d = acquire(store, "k", &p, 1).await;
        assert!(!d.allowed && d.retry_after.is_none(), "{alg}: {d:?}");
        clock.advance(Duration::from_secs(61));
    }
}

/// A quota replaced at run time by one with a longer period (same policy and quota names):
/// once the new period has passed, every algorithm admits again. (A window number counted
/// under the short period read under the long one would put the window far in the future
/// and keep the key denied; the window algorithms count such a policy's keys apart.)
pub async fn a_longer_period_strands_no_key(store: &dyn Store, clock: &FakeClock, alg: Algorithm) {
    let short = policy("period", alg, &[("q", Quota::per_second(2))]);
    let long = policy("period", alg, &[("q", Quota::per_minute(2))]);
    assert!(acquire(store, "k", &short, 2).await.allowed, "{alg}");
    assert!(!acquire(store, "k", &short, 1).await.allowed, "{alg}");
    clock.advance(Duration::from_secs(121));
    for i in 0..2 {
        let d = acquire(store, "k", &long, 1).await;
        assert!(
            d.allowed,
            "{alg}: request {i} under the longer period refused: {d:?}"
        );
        assert!(
            d.quotas[0].reset <= Duration::from_secs(120),
            "{alg}: {d:?}"
        );
    }
    assert!(!acquire(store, "k", &long, 1).await.allowed, "{alg}");
    clock.advance(Duration::from_secs(121));
    assert!(acquire(store, "k", &short, 1).await.allowed, "{alg}");
    clock.advance(Duration::from_secs(121));
}

/// A policy replaced by one of another algorithm keeps its states apart under the same name
/// (the Redis store's keys name the algorithm); `reset` forgets the key under the form of the
/// policy it is given, and every store leaves the other form's states to expire on their own.
pub async fn reset_forgets_only_the_form_given(
    store: &dyn Store,
    clock: &FakeClock,
    alg: Algorithm,
) {
    let other_alg = if alg == Algorithm::Gcra {
        Algorithm::FixedWindow
    } else {
        Algorithm::Gcra
    };
    let form = |a: Algorithm| {
        Policy::builder(format!("forms-{}", alg.as_str()))
            .algorithm(a)
            .quota("q", Quota::per_minute(2))
            .build()
            .unwrap()
    };
    let (p, other) = (form(alg), form(other_alg));
    assert!(acquire(store, "k", &p, 2).await.allowed, "{alg}");
    assert!(acquire(store, "k", &other, 2).await.allowed, "{alg}");
    store.reset("k", &other).await.unwrap();
    assert!(
        acquire(store, "k", &other, 1).await.allowed,
        "{alg}: reset did not forget the form it was given"
    );
    assert!(
        !acquire(store, "k", &p, 1).await.allowed,
        "{alg}: reset under {other_alg} forgot the {alg} states too"
    );
    store.reset("k", &p).await.unwrap();
    store.reset("k", &other).await.unwrap();
    clock.advance(Duration::from_secs(120));
}
