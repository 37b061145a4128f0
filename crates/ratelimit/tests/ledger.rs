//! The Redis lease ledger (issue 19): an owner's record stands for the units it leased and
//! did not give back; once the record's TTL passed, the next call on the key reclaims it
//! (gives its units back to the quota). A give-back that arrives after that — the owner was
//! alive but late — must not be counted again against a *newer* record of the same owner:
//! those units went back with the reclaimed record already. Seen in `tests/fleet_live.rs`
//! on a loaded machine as survivors admitting one or two units over the quota. Nor may the
//! owner spend them: held units offered towards a request after that time count for nothing.
#![cfg(feature = "redis")]

use std::time::Duration;

use palisade_ratelimit::{
    Algorithm, FakeClock, Lease, LeaseRequest, LeaseReturn, Policy, Quota, RedisStore, Store,
};
use palisade_testkit::test_redis;

const LIFETIME: Duration = Duration::from_secs(1);
const GRACE: Duration = Duration::from_secs(1);

/// The store time from which the ledger may have reclaimed `lease` (as `LeasedStore` sets
/// it: the grant plus the lease's lifetime plus the grace).
fn reclaim_at(lease: &Lease) -> u64 {
    lease.granted_at + (lease.lifetime + GRACE).as_micros() as u64
}

/// What owner 7 gives back of `lease`, as a `LeasedStore` does.
fn give_back(lease: &Lease) -> LeaseReturn {
    LeaseReturn::new(lease.granted, lease.granted_at)
        .owner(7, 0)
        .reclaim_at(reclaim_at(lease))
}

async fn remaining(store: &RedisStore, policy: &Policy) -> u64 {
    store
        .peek("k", policy)
        .await
        .unwrap()
        .quota(0)
        .unwrap()
        .remaining
}

/// Owner 7 after its record was reclaimed: it leased 10 units and went quiet past the
/// record's TTL, owner 8's call reclaimed them, and owner 7 leased 5 more (a new record).
struct LateOwner {
    _redis: palisade_testkit::TestRedis,
    store: RedisStore,
    policy: Policy,
    first: Lease,
    second: Lease,
}

async fn late_owner(alg: Algorithm, name: &str) -> LateOwner {
    let redis = test_redis().unwrap();
    let clock = FakeClock::new();
    // Hours: the fake clock moves a few seconds and stays in one window.
    let policy = Policy::single(format!("{name}-{alg}"), alg, Quota::per_hour(100)).unwrap();
    let store = RedisStore::new(redis.pool())
        .with_prefix(redis.prefix().as_str())
        .with_clock(clock.clone());
    let want = |units| LeaseRequest::new(0).want(units, LIFETIME).owner(7, GRACE);

    let first = store.lease("k", &policy, &want(10)).await.unwrap();
    assert_eq!(first.granted, 10, "{alg}: the first lease");
    assert_eq!(remaining(&store, &policy).await, 90, "{alg}");

    // Past the lease's lifetime and the grace: the record is due.
    clock.advance(LIFETIME + GRACE + Duration::from_millis(10));
    let other = store
        .lease("k", &policy, &LeaseRequest::new(1).owner(8, GRACE))
        .await
        .unwrap();
    assert!(other.decision.allowed, "{alg}: owner 8's request");
    assert_eq!(
        remaining(&store, &policy).await,
        99,
        "{alg}: owner 7's 10 units were reclaimed"
    );

    let second = store.lease("k", &policy, &want(5)).await.unwrap();
    assert_eq!(second.granted, 5, "{alg}: the second lease");
    assert_eq!(remaining(&store, &policy).await, 94, "{alg}");
    LateOwner {
        _redis: redis,
        store,
        policy,
        first,
        second,
    }
}

/// Then its give-back of the first lease's 10 units lands. The quota must count owner 8's
/// unit and owner 7's live 5, nothing less.
async fn a_late_give_back_is_not_counted_twice(alg: Algorithm) {
    // `_redis` bound: the throwaway server lives until the end of the test.
    let LateOwner {
        _redis,
        store,
        policy,
        first,
        second,
    } = late_owner(alg, "ledger").await;

    // The first lease's give-back, late: its units are back already.
    store
        .release_for("k", &policy, &give_back(&first))
        .await
        .unwrap();
    assert_eq!(
        remaining(&store, &policy).await,
        94,
        "{alg}: a give-back of reclaimed units was counted again"
    );

    // The live lease's own give-back still counts.
    store
        .release_for("k", &policy, &give_back(&second))
        .await
        .unwrap();
    assert_eq!(
        remaining(&store, &policy).await,
        99,
        "{alg}: the live lease's give-back"
    );
}

/// Or it does not give its first lease back but offers it towards a request (a request's
/// call carries every unit its book holds): past the lease's `reclaim_at` the store counts
/// none of them — the request is charged in full, and nothing is refunded.
async fn reclaimed_units_are_not_spent_again(alg: Algorithm) {
    // `_redis` bound: the throwaway server lives until the end of the test.
    let LateOwner {
        _redis,
        store,
        policy,
        first,
        ..
    } = late_owner(alg, "ledger-held").await;

    let request = LeaseRequest::new(1)
        .held(10, first.granted_at)
        .held_reclaim_at(reclaim_at(&first))
        .owner(7, GRACE);
    let answer = store.lease("k", &policy, &request).await.unwrap();
    assert!(answer.decision.allowed, "{alg}: the request");
    assert_eq!(answer.used_held, 0, "{alg}: reclaimed units paid for it");
    assert!(answer.stale_held, "{alg}: the reclaimed units are gone");
    assert_eq!(
        remaining(&store, &policy).await,
        93,
        "{alg}: the request was not charged, or reclaimed units were refunded"
    );
}

#[tokio::test]
async fn reclaimed_units_are_not_spent_again_fixed_window() {
    reclaimed_units_are_not_spent_again(Algorithm::FixedWindow).await;
}

#[tokio::test]
async fn reclaimed_units_are_not_spent_again_sliding_window_counter() {
    reclaimed_units_are_not_spent_again(Algorithm::SlidingWindowCounter).await;
}

#[tokio::test]
async fn a_late_give_back_is_not_counted_twice_fixed_window() {
    a_late_give_back_is_not_counted_twice(Algorithm::FixedWindow).await;
}

#[tokio::test]
async fn a_late_give_back_is_not_counted_twice_sliding_window_counter() {
    a_late_give_back_is_not_counted_twice(Algorithm::SlidingWindowCounter).await;
}

/// Issue 19, open defect 1: a renewal that reports the units the owner kept (`kept`, with a
/// report number) lands after the owner's record was reclaimed — the reclaim gave those
/// units back already. The ledger must record only what the call granted: before, the
/// record became `kept` + the grant, and a second reclaim gave `kept` back again.
async fn a_late_report_does_not_record_reclaimed_units(alg: Algorithm) {
    let redis = test_redis().unwrap();
    let clock = FakeClock::new();
    let policy = Policy::single(format!("ledger-report-{alg}"), alg, Quota::per_hour(100)).unwrap();
    let store = RedisStore::new(redis.pool())
        .with_prefix(redis.prefix().as_str())
        .with_clock(clock.clone());
    let want = |units| LeaseRequest::new(0).want(units, LIFETIME).owner(7, GRACE);
    let first = store
        .lease("k", &policy, &want(10).report(1))
        .await
        .unwrap();
    assert_eq!(first.granted, 10, "{alg}: the first lease");

    // Owner 7's renewal, sent while it held the 10 units, lands past their record's end:
    // the call's own reclaim gives the 10 back first.
    clock.advance(LIFETIME + GRACE + Duration::from_millis(10));
    let late = want(5).kept(10, first.granted_at).report(2);
    let renewal = store.lease("k", &policy, &late).await.unwrap();
    assert_eq!(renewal.granted, 5, "{alg}: the renewal");
    assert_eq!(remaining(&store, &policy).await, 95, "{alg}");

    // Owner 8 spends 20; owner 7 dies. Its record (the renewal's 5 units) is reclaimed
    // with owner 8's next request: 100 - 20 - 1 remain, not 10 more.
    let request = |cost| LeaseRequest::new(cost).owner(8, GRACE);
    assert!(
        store
            .lease("k", &policy, &request(20))
            .await
            .unwrap()
            .decision
            .allowed
    );
    clock.advance(LIFETIME + GRACE + Duration::from_millis(10));
    assert!(
        store
            .lease("k", &policy, &request(1))
            .await
            .unwrap()
            .decision
            .allowed
    );
    assert_eq!(
        remaining(&store, &policy).await,
        79,
        "{alg}: the reclaimed units were recorded again and given back twice"
    );
}

#[tokio::test]
async fn a_late_report_does_not_record_reclaimed_units_fixed_window() {
    a_late_report_does_not_record_reclaimed_units(Algorithm::FixedWindow).await;
}

#[tokio::test]
async fn a_late_report_does_not_record_reclaimed_units_sliding_window_counter() {
    a_late_report_does_not_record_reclaimed_units(Algorithm::SlidingWindowCounter).await;
}
