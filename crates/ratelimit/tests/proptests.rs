//! Properties of the pure algorithms, driven by a hand-advanced clock.

use palisade_ratelimit::algorithm::{decide, fresh_states, peek};
use palisade_ratelimit::{Algorithm, Policy, Quota};
use proptest::prelude::*;
use std::time::Duration;

const T0: u64 = 1_700_000_000_000_000;

/// (microseconds to advance, cost) steps.
fn steps() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec(
        (
            prop_oneof![Just(0u64), 0u64..50_000, 0u64..2_000_000],
            0u64..4,
        ),
        1..120,
    )
}

fn quota() -> impl Strategy<Value = Quota> {
    (
        1u64..12,
        prop_oneof![Just(1_000u64), Just(250u64), Just(1_500u64)],
        prop::option::of(1u64..20),
    )
        .prop_map(|(limit, ms, burst)| {
            let q = Quota::new(limit, Duration::from_millis(ms));
            match burst {
                Some(b) => q.with_burst(b),
                None => q,
            }
        })
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(Algorithm::ALL.to_vec())
}

/// Run the steps; returns the admitted (time, cost) pairs.
fn run(policy: &Policy, steps: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut now = T0;
    let mut states = fresh_states(policy, now);
    let mut admitted = Vec::new();
    for &(dt, cost) in steps {
        now += dt;
        let (ok, _) = decide(&mut states, policy, now, cost);
        if ok && cost > 0 {
            admitted.push((now, cost));
        }
    }
    admitted
}

/// Largest total cost admitted within any span `[t, t + span)`.
fn max_in_span(admitted: &[(u64, u64)], span: u64) -> u64 {
    let mut best = 0;
    for (i, &(t, _)) in admitted.iter().enumerate() {
        let sum: u64 = admitted[i..]
            .iter()
            .take_while(|(u, _)| *u < t + span)
            .map(|(_, c)| c)
            .sum();
        best = best.max(sum);
    }
    best
}

fn interval(q: &Quota) -> u64 {
    let p = q.period().as_micros() as u64;
    p.div_ceil(q.limit())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Never more than the algorithm guarantees, in any span.
    #[test]
    fn never_more_than_guaranteed(alg in algorithm(), q in quota(), steps in steps()) {
        let policy = Policy::builder("p").algorithm(alg).quota("q", q).build().unwrap();
        let admitted = run(&policy, &steps);
        let p = q.period().as_micros() as u64;
        match alg {
            Algorithm::TokenBucket | Algorithm::Gcra => {
                // Fluid bound: burst + span / interval, for every pair of admitted requests.
                let t = interval(&q);
                for i in 0..admitted.len() {
                    let mut sum = 0;
                    for j in i..admitted.len() {
                        sum += admitted[j].1;
                        let span = admitted[j].0 - admitted[i].0;
                        prop_assert!(sum * t <= q.burst() * t + span,
                            "{sum} admitted within {span} µs (burst {}, interval {t})", q.burst());
                    }
                }
            }
            Algorithm::SlidingWindowLog => {
                prop_assert!(max_in_span(&admitted, p) <= q.limit());
            }
            _ => {
                // Fixed window and sliding counter: exact per aligned window, at most twice the limit across a boundary.
                let mut by_window = std::collections::BTreeMap::new();
                for (t, c) in &admitted {
                    *by_window.entry(t / p).or_insert(0) += c;
                }
                for (w, sum) in by_window {
                    prop_assert!(sum <= q.limit(), "window {w}: {sum} > {}", q.limit());
                }
                prop_assert!(max_in_span(&admitted, p) <= 2 * q.limit());
            }
        }
    }

    /// After the idle horizon, a key is whole again: its full capacity passes at once.
    #[test]
    fn refills_completely(alg in algorithm(), q in quota(), steps in steps()) {
        let policy = Policy::builder("p").algorithm(alg).quota("q", q).build().unwrap();
        let mut now = T0;
        let mut states = fresh_states(&policy, now);
        for &(dt, cost) in &steps {
            now += dt;
            let _ = decide(&mut states, &policy, now, cost);
        }
        now += policy.idle_horizon().as_micros() as u64;
        let capacity = if matches!(alg, Algorithm::TokenBucket | Algorithm::Gcra) { q.burst() } else { q.limit() };
        let (ok, v) = decide(&mut states, &policy, now, capacity);
        prop_assert!(ok, "full capacity {capacity} refused after the horizon: {v:?}");
        prop_assert_eq!(v[0].remaining, 0);
        let (ok, _) = decide(&mut states, &policy, now, 1);
        prop_assert!(!ok);
    }

    /// A denied request passes once its retry_after has elapsed.
    #[test]
    fn retry_after_is_honest(alg in algorithm(), q in quota(), steps in steps()) {
        let policy = Policy::builder("p").algorithm(alg).quota("q", q).build().unwrap();
        let mut now = T0;
        let mut states = fresh_states(&policy, now);
        for &(dt, cost) in &steps {
            now += dt;
            let (ok, v) = decide(&mut states, &policy, now, cost);
            if !ok {
                if let Some(r) = v[0].retry_after {
                    let mut probe = states.clone();
                    let (later, v2) = decide(&mut probe, &policy, now + r, cost);
                    prop_assert!(later, "cost {cost} still refused {r} µs later: {v2:?}");
                    if r > 0 {
                        // ...and it was not admissible noticeably earlier (the wait is not padded).
                        let mut probe = states.clone();
                        let early = r.saturating_sub(2);
                        let (before, _) = decide(&mut probe, &policy, now + early, cost);
                        prop_assert!(!before || r <= 2, "admitted at {early} µs though retry_after was {r}");
                    }
                } else {
                    prop_assert!(cost > q.limit() || cost > q.burst());
                }
            }
        }
    }

    /// With several quotas, a denial by one consumes from none; peek never changes state.
    #[test]
    fn denial_consumes_nothing(alg in algorithm(), a in quota(), b in quota(), steps in steps()) {
        let policy = Policy::builder("p").algorithm(alg).quota("a", a).quota("b", b).build().unwrap();
        let mut now = T0;
        let mut states = fresh_states(&policy, now);
        for &(dt, cost) in &steps {
            now += dt;
            let before = states.clone();
            let _ = peek(&states, &policy, now);
            let (ok, v) = decide(&mut states, &policy, now, cost);
            if !ok {
                prop_assert_eq!(&before, &states, "a denial changed the state");
                prop_assert!(v.iter().any(|v| !v.allowed));
            } else {
                prop_assert!(v.iter().all(|v| v.allowed));
            }
        }
    }

    /// Remaining never exceeds capacity, and peek reports what acquire then gets.
    #[test]
    fn peek_matches_acquire(alg in algorithm(), q in quota(), steps in steps()) {
        let policy = Policy::builder("p").algorithm(alg).quota("q", q).build().unwrap();
        let mut now = T0;
        let mut states = fresh_states(&policy, now);
        for &(dt, cost) in &steps {
            now += dt;
            let (would, pv) = peek(&states, &policy, now);
            prop_assert!(pv[0].remaining <= q.limit().max(q.burst()));
            let mut probe = states.clone();
            let (ok, v) = decide(&mut probe, &policy, now, 1);
            prop_assert_eq!(would, ok);
            if ok {
                prop_assert_eq!(pv[0].remaining, v[0].remaining + 1);
            }
            let _ = decide(&mut states, &policy, now, cost);
        }
    }
}

#[test]
fn per_second_means_n_per_second() {
    // governor's Quota::per_second(n) trap: ours is n per second, not one every n seconds.
    for alg in Algorithm::ALL {
        let policy = Policy::single("p", alg, Quota::per_second(10)).unwrap();
        let mut states = fresh_states(&policy, T0);
        let admitted = (0..20)
            .filter(|_| decide(&mut states, &policy, T0, 1).0)
            .count();
        assert_eq!(admitted, 10, "{alg}");
    }
}

#[test]
fn invalid_quotas_are_rejected() {
    assert!(Policy::single("p", Algorithm::Gcra, Quota::new(1, Duration::ZERO)).is_err());
    assert!(Policy::single("p", Algorithm::Gcra, Quota::per_second(2_000_000)).is_err());
    assert!(Policy::single("p", Algorithm::Gcra, Quota::per_second(1).with_burst(0)).is_err());
    // A bucket that would take centuries to fill.
    assert!(Policy::single("p", Algorithm::Gcra, Quota::per_day(1).with_burst(1 << 30)).is_err());
    assert!(Policy::builder("p").build().is_err());
    assert!(
        Policy::builder("p")
            .quota("a", Quota::per_second(1))
            .quota("a", Quota::per_minute(1))
            .build()
            .is_err()
    );
    // A zero limit is valid: it denies everything, forever.
    let policy = Policy::single("p", Algorithm::FixedWindow, Quota::per_second(0)).unwrap();
    let mut states = fresh_states(&policy, T0);
    let (ok, v) = decide(&mut states, &policy, T0, 1);
    assert!(!ok);
    assert_eq!(v[0].retry_after, None);
}

#[test]
fn policies_round_trip_through_serde() {
    let policy = Policy::builder("api")
        .algorithm(Algorithm::SlidingWindowCounter)
        .quota("per_minute", Quota::per_minute(60))
        .quota("per_hour", Quota::per_hour(1000).with_burst(50))
        .build()
        .unwrap();
    let json = serde_json::to_string(&policy).unwrap();
    assert!(json.contains("\"period\":\"1m\""), "{json}");
    let back: Policy = serde_json::from_str(&json).unwrap();
    assert_eq!(back, policy);
    let bad = r#"{"name":"x","quotas":[{"name":"a","limit":1,"period":"0s"}]}"#;
    assert!(serde_json::from_str::<Policy>(bad).is_err());
}

#[test]
fn clock_going_backwards_admits_nothing_extra() {
    for alg in Algorithm::ALL {
        let policy = Policy::single("p", alg, Quota::per_second(3)).unwrap();
        let mut states = fresh_states(&policy, T0);
        let mut admitted = 0;
        for i in 0..10 {
            // Alternate between now and one second earlier.
            let now = if i % 2 == 0 { T0 } else { T0 - 1_000_000 };
            admitted += u64::from(decide(&mut states, &policy, now, 1).0);
        }
        assert!(admitted <= 3, "{alg}: {admitted}");
    }
}

/// How far the sliding-window counter strays from an exact sliding window under random
/// (Poisson) traffic at 1.2x, 2x and 10x the limit (the figures quoted in docs/ratelimit.md).
#[test]
fn sliding_counter_error_under_random_traffic() {
    let limit = 100;
    let p = 60_000_000u64;
    for (alg, load) in [1.2f64, 2.0, 10.0].into_iter().flat_map(|l| {
        [
            (Algorithm::SlidingWindowCounter, l),
            (Algorithm::FixedWindow, l),
        ]
    }) {
        let counter = Policy::single("c", alg, Quota::per_minute(limit)).unwrap();
        let mut states = fresh_states(&counter, T0);
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut now = T0;
        let mut admitted = Vec::new();
        let mean_gap = 60_000_000.0 / (limit as f64 * load);
        // Six simulated hours.
        while now < T0 + 6 * 3_600_000_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let u = (seed % 1_000_000 + 1) as f64 / 1_000_001.0;
            now += (-u.ln() * mean_gap) as u64;
            if decide(&mut states, &counter, now, 1).0 {
                admitted.push((now, 1));
            }
        }
        let worst = max_in_span(&admitted, p);
        let over = worst as f64 / limit as f64 - 1.0;
        let per_minute = admitted.len() as f64 / 360.0;
        println!(
            "{alg} at {load}x: admitted {per_minute:.1}/min on average, worst sliding minute {worst} (+{:.0} %)",
            over * 100.0
        );
        assert!(worst <= 2 * limit);
        assert!(per_minute <= limit as f64 * 1.01);
        if alg == Algorithm::SlidingWindowCounter {
            assert!(over < 0.5, "worst sliding minute {worst} at {load}x");
        }
    }
}

proptest! {
    /// `admit` (no verdicts) decides exactly like `decide`.
    #[test]
    fn admit_matches_decide(alg in algorithm(), a in quota(), b in quota(), steps in steps()) {
        let policy = Policy::builder("p").algorithm(alg).quota("a", a).quota("b", b).build().unwrap();
        let mut now = T0;
        let mut full = fresh_states(&policy, now);
        let mut lean = full.clone();
        for &(dt, cost) in &steps {
            now += dt;
            let (ok, _) = decide(&mut full, &policy, now, cost);
            prop_assert_eq!(palisade_ratelimit::algorithm::admit(&mut lean, &policy, now, cost), ok);
            prop_assert_eq!(&full, &lean);
        }
    }
}

#[test]
fn extreme_costs_never_panic() {
    for alg in Algorithm::ALL {
        let policy = Policy::builder("p")
            .algorithm(alg)
            .quota("a", Quota::per_second(5))
            .quota("b", Quota::per_day(1 << 30).with_burst(1 << 40))
            .build()
            .unwrap();
        let mut states = fresh_states(&policy, T0);
        for (i, cost) in [u64::MAX, u64::MAX / 2, 1 << 41, 0, 5, u64::MAX]
            .into_iter()
            .enumerate()
        {
            let now = T0 + i as u64;
            let (ok, v) = decide(&mut states, &policy, now, cost);
            if cost > 5 {
                assert!(!ok, "{alg} cost {cost}");
                assert_eq!(v[0].retry_after, None, "{alg}");
            }
            palisade_ratelimit::algorithm::refund(&mut states, &policy, now, cost);
            let _ = peek(&states, &policy, u64::MAX);
            let _ = decide(&mut states, &policy, u64::MAX, cost);
        }
    }
}

/// Steps for the fast paths: time may also step back (a clock correction), costs include
/// zero, the capacity edge and values no quota can hold.
fn rough_steps() -> impl Strategy<Value = Vec<(i64, u64)>> {
    prop::collection::vec(
        (
            prop_oneof![
                4 => Just(0i64),
                8 => 0i64..50_000,
                4 => 0i64..3_000_000,
                1 => -2_000_000i64..0,
            ],
            prop_oneof![8 => 0u64..4, 2 => 0u64..25, 1 => Just(u64::MAX), 1 => Just(1u64 << 41)],
        ),
        1..150,
    )
}

fn quotas(n: usize) -> impl Strategy<Value = Vec<Quota>> {
    prop::collection::vec(quota(), n..=n)
}

fn apply(now: u64, dt: i64) -> u64 {
    if dt >= 0 {
        now + dt as u64
    } else {
        now.saturating_sub(dt.unsigned_abs())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    /// The lean admit path (a single quota's one-step `take`, several quotas' division-free
    /// `admits`) decides and leaves state exactly like `decide`, with time that also steps
    /// back.
    #[test]
    fn lean_admit_matches_decide(
        alg in algorithm(),
        n in 1usize..4,
        qs in quotas(3),
        steps in rough_steps(),
    ) {
        let mut b = Policy::builder("p").algorithm(alg);
        for (i, q) in qs.iter().take(n).enumerate() {
            b = b.quota(format!("q{i}"), *q);
        }
        let policy = b.build().unwrap();
        let mut now = T0;
        let mut full = fresh_states(&policy, now);
        let mut lean = full.clone();
        for &(dt, cost) in &steps {
            now = apply(now, dt);
            let (ok, _) = decide(&mut full, &policy, now, cost);
            prop_assert_eq!(palisade_ratelimit::algorithm::admit(&mut lean, &policy, now, cost), ok);
            prop_assert_eq!(&full, &lean);
        }
    }

    /// The memory store's `allow_sync` and `acquire_sync` make the same decisions on twin
    /// stores (same fake time, several keys, refunds and resets between), and both match the
    /// pure algorithms run on a state per key, also when the clock steps back (the store
    /// keeps an expired state as it is rather than restamping it, and an expired state
    /// decides like a fresh one).
    #[test]
    fn memory_allow_matches_acquire_and_the_algorithms(
        alg in algorithm(),
        n in 1usize..3,
        qs in quotas(2),
        steps in rough_steps(),
        ops in prop::collection::vec((0usize..3, 0u8..20), 150),
    ) {
        use palisade_ratelimit::{FakeClock, MemoryStore};
        let mut b = Policy::builder("p").algorithm(alg);
        for (i, q) in qs.iter().take(n).enumerate() {
            b = b.quota(format!("q{i}"), *q);
        }
        let policy = b.build().unwrap();
        let clock = FakeClock::at_micros(T0);
        let lean = MemoryStore::builder().clock(clock.clone()).build();
        let full = MemoryStore::builder().clock(clock.clone()).build();
        let keys = ["a", "b", "a-much-longer-key-than-the-inline-buffer"];
        let mut model: Vec<Vec<palisade_ratelimit::algorithm::QuotaState>> =
            keys.iter().map(|_| fresh_states(&policy, T0)).collect();
        // A store keeps nothing for a key it has not counted yet, so a refund to it is a no-op.
        let mut counted = [false; 3];
        let mut now = T0;
        for (&(dt, cost), &(k, op)) in steps.iter().zip(&ops) {
            now = apply(now, dt);
            clock.set_micros(now);
            let key = keys[k];
            match op {
                0 => {
                    lean.refund_sync(key, &policy, cost);
                    full.refund_sync(key, &policy, cost);
                    if counted[k] {
                        palisade_ratelimit::algorithm::refund(&mut model[k], &policy, now, cost);
                    }
                }
                1 => {
                    lean.reset_sync(key, &policy);
                    full.reset_sync(key, &policy);
                    model[k] = fresh_states(&policy, now);
                    counted[k] = false;
                }
                _ => {
                    let a = lean.allow_sync(key, &policy, cost);
                    let d = full.acquire_sync(key, &policy, cost);
                    if !counted[k] {
                        model[k] = fresh_states(&policy, now);
                        counted[k] = true;
                    }
                    let (m, verdicts) = decide(&mut model[k], &policy, now, cost);
                    prop_assert_eq!(a, d.allowed, "allow_sync vs acquire_sync, key {}", key);
                    prop_assert_eq!(
                        full.peek_sync(key, &policy),
                        lean.peek_sync(key, &policy)
                    );
                    prop_assert_eq!(a, m, "store vs algorithm, key {}", key);
                    prop_assert_eq!(
                        &d,
                        &palisade_ratelimit::Decision::from_verdicts(
                            m,
                            &verdicts,
                            palisade_ratelimit::DecisionSource::Store,
                        )
                    );
                    let (p, _) = peek(&model[k], &policy, now);
                    prop_assert_eq!(lean.peek_sync(key, &policy).allowed, p);
                }
            }
        }
    }
}

/// Quotas whose counts and buckets outgrow the memory store's one-word states: large limits
/// and bursts, periods from 1 ms to a day.
fn large_quota() -> impl Strategy<Value = Quota> {
    (
        prop_oneof![Just(1u64), Just(250), Just(3_600_000), Just(86_400_000)],
        1u64..200_000,
        prop::option::of(prop_oneof![1u64..2_000, 500u64..200_000]),
    )
        .prop_map(|(ms, limit, burst)| {
            // At most one per microsecond.
            let q = Quota::new(limit.min(ms * 1_000), Duration::from_millis(ms));
            match burst {
                Some(b) => q.with_burst(b),
                None => q,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// With large counts, costs and a policy replaced now and then by one of other figures
    /// (same name and algorithm, so the keys keep their states), the memory store decides,
    /// peeks and refunds exactly like the algorithms on a state per key: states that outgrow
    /// the store's one-word form move to a wider one without changing a decision.
    #[test]
    fn memory_store_stays_exact_when_states_outgrow_their_word(
        alg in prop::sample::select(vec![
            Algorithm::TokenBucket,
            Algorithm::FixedWindow,
            Algorithm::SlidingWindowCounter,
        ]),
        quotas in prop::collection::vec(large_quota(), 2),
        steps in prop::collection::vec(
            (
                prop_oneof![
                    4 => Just(0i64),
                    4 => 0i64..5_000,
                    2 => 0i64..5_000_000,
                    1 => -2_000_000i64..0,
                ],
                prop_oneof![4 => 0u64..3_000, 2 => 0u64..200_000, 1 => Just(u64::MAX)],
                0usize..3,
                0u8..12,
            ),
            1..200,
        ),
    ) {
        use palisade_ratelimit::{Decision, DecisionSource, FakeClock, MemoryStore, Subject};
        // The window algorithms keep a policy of another period apart (its window numbers
        // count other periods), so only their limits change here.
        let period = quotas[0].period();
        let policies: Vec<Policy> = quotas
            .iter()
            .map(|q| {
                let q = match alg {
                    Algorithm::TokenBucket => *q,
                    _ => Quota::new(q.limit().min(period.as_micros() as u64), period),
                };
                Policy::single("w", alg, q).unwrap()
            })
            .collect();
        let clock = FakeClock::at_micros(T0);
        let store = MemoryStore::builder().clock(clock.clone()).build();
        let subjects = [Subject::Text("a"), Subject::Id(1), Subject::Text("a-much-longer-key-than-the-inline-buffer")];
        let mut model: Vec<Option<Vec<palisade_ratelimit::algorithm::QuotaState>>> = vec![None; 3];
        let mut current = 0;
        let mut now = T0;
        for &(dt, cost, k, op) in &steps {
            now = apply(now, dt);
            clock.set_micros(now);
            let subject = subjects[k];
            if op == 0 {
                current = 1 - current;
            }
            let policy = &policies[current];
            match op {
                1 => {
                    store.refund_sync(subject, policy, cost);
                    if let Some(states) = &mut model[k] {
                        palisade_ratelimit::algorithm::refund(states, policy, now, cost);
                    }
                }
                2 => {
                    store.reset_sync(subject, policy);
                    model[k] = None;
                }
                _ => {
                    let states = model[k].get_or_insert_with(|| fresh_states(policy, now));
                    let (m, verdicts) = decide(states, policy, now, cost);
                    if op % 2 == 0 {
                        prop_assert_eq!(store.allow_sync(subject, policy, cost), m, "{:?}", subject);
                    } else {
                        prop_assert_eq!(
                            store.acquire_sync(subject, policy, cost),
                            Decision::from_verdicts(m, &verdicts, DecisionSource::Store)
                        );
                    }
                }
            }
            let fresh;
            let states = match &model[k] {
                Some(s) => s,
                None => {
                    fresh = fresh_states(policy, now);
                    &fresh
                }
            };
            let (p, verdicts) = peek(states, policy, now);
            prop_assert_eq!(
                store.peek_sync(subject, policy),
                Decision::from_verdicts(p, &verdicts, DecisionSource::Store)
            );
        }
    }
}
