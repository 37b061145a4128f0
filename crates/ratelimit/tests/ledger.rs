//! The Redis lease ledger (issue 19): an owner's record stands for the units it leased and
//! did not give back; once the record's TTL passed, the next call on the key reclaims it
//! (gives its units back to the quota). A give-back that arrives after that — the owner was
//! alive but late — must not be counted again against a *newer* record of the same owner:
//! those units went back with the reclaimed record already. Seen in `tests/fleet_live.rs`
//! on a loaded machine as survivors admitting one or two units over the quota. Nor may the
//! owner spend them: held units offered towards a request after that time count for nothing.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade_ratelimit::{
    Algorithm, Decision, Error, FakeClock, Lease, LeaseCall, LeaseConfig, LeaseRequest,
    LeaseReturn, LeasedStore, Policy, Quota, RedisStore, ReleaseCall, Result, Store,
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

/// A Redis store on a throwaway server, on a fake clock, and a policy of 100 units an
/// hour named after `name` and `alg` (the fake clock moves a few seconds and stays in one
/// window). The server lives as long as the returned `TestRedis`.
fn ledger_store(
    alg: Algorithm,
    name: &str,
) -> (palisade_testkit::TestRedis, FakeClock, Policy, RedisStore) {
    let redis = test_redis().unwrap();
    let clock = FakeClock::new();
    let policy = Policy::single(format!("{name}-{alg}"), alg, Quota::per_hour(100)).unwrap();
    let store = RedisStore::new(redis.pool())
        .with_prefix(redis.prefix().as_str())
        .with_clock(clock.clone());
    (redis, clock, policy, store)
}

/// Owner 7's request for a lease of `units` (cost 0), as a `LeasedStore` asks.
fn want(units: u64) -> LeaseRequest {
    LeaseRequest::new(0).want(units, LIFETIME).owner(7, GRACE)
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
    let (redis, clock, policy, store) = ledger_store(alg, name);

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
    let (_redis, clock, policy, store) = ledger_store(alg, "ledger-report");
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

/// A Redis store whose next lease call's reply is lost after Redis ran it (as when the
/// client's reply timeout fires, or the connection drops, once the script ran).
#[derive(Debug)]
struct LosingReply {
    inner: RedisStore,
    lose: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Store for LosingReply {
    async fn acquire(&self, key: &str, policy: &Policy, cost: u64) -> Result<Decision> {
        self.inner.acquire(key, policy, cost).await
    }
    async fn peek(&self, key: &str, policy: &Policy) -> Result<Decision> {
        self.inner.peek(key, policy).await
    }
    async fn refund(&self, key: &str, policy: &Policy, cost: u64) -> Result<()> {
        self.inner.refund(key, policy, cost).await
    }
    async fn reset(&self, key: &str, policy: &Policy) -> Result<()> {
        self.inner.reset(key, policy).await
    }
    fn backend_name(&self) -> &'static str {
        "losing-reply"
    }
    async fn lease(&self, key: &str, policy: &Policy, request: &LeaseRequest) -> Result<Lease> {
        let lease = self.inner.lease(key, policy, request).await;
        if self.lose.swap(false, Ordering::SeqCst) {
            return Err(Error::Timeout(Duration::from_millis(500)));
        }
        lease
    }
    async fn lease_many(&self, calls: &[LeaseCall<'_>]) -> Vec<Result<Lease>> {
        let mut leases = self.inner.lease_many(calls).await;
        if self.lose.swap(false, Ordering::SeqCst) {
            for l in &mut leases {
                *l = Err(Error::Timeout(Duration::from_millis(500)));
            }
        }
        leases
    }
    async fn release_for(&self, key: &str, policy: &Policy, give: &LeaseReturn) -> Result<()> {
        self.inner.release_for(key, policy, give).await
    }
    async fn release_many(&self, gives: &[ReleaseCall<'_>]) -> Vec<Result<()>> {
        self.inner.release_many(gives).await
    }
}

/// Issue 19, open defect 2: a lease call that fails after it reached Redis (its reply
/// lost) granted units nobody holds. They must come back: the owner's next call for the key
/// says which call it lost, and the ledger gives that call's grant back. Before, the next
/// call's report replaced the owner's record without them, and they stayed counted until
/// the window's end. Every unit is accounted for at the end: admitted, the failed
/// request's own unit (Redis counted it), and the rest back in the quota.
async fn a_lost_reply_does_not_strand_its_grant(alg: Algorithm) {
    let redis = test_redis().unwrap();
    let lose = Arc::new(AtomicBool::new(false));
    let inner = LosingReply {
        inner: RedisStore::new(redis.pool()).with_prefix(redis.prefix().as_str()),
        lose: Arc::clone(&lose),
    };
    let store = LeasedStore::builder(inner)
        .config(LeaseConfig::default().prefetch(false))
        .build()
        .unwrap();
    let policy = Policy::single(format!("lost-{alg}"), alg, Quota::per_hour(1_000)).unwrap();
    let mut admitted = 0;
    let mut decide = |d: Result<Decision>| match d {
        Ok(d) => {
            assert!(d.allowed, "{alg}: {d:?}");
            admitted += 1;
            Ok(())
        }
        Err(e) => Err(e),
    };
    decide(store.acquire("k", &policy, 1).await).unwrap();
    assert!(store.allowance("k", &policy) > 0, "{alg}: the first lease");
    // The next lease call (when the allowance is spent) loses its reply.
    lose.store(true, Ordering::SeqCst);
    let mut failed = 0;
    for _ in 0..200 {
        if decide(store.acquire("k", &policy, 1).await).is_err() {
            failed += 1;
            break;
        }
    }
    assert_eq!(failed, 1, "{alg}: no lease call failed");
    assert!(!lose.load(Ordering::SeqCst));
    for _ in 0..10 {
        decide(store.acquire("k", &policy, 1).await).unwrap();
    }
    store.release_all().await.unwrap();
    let remaining = store
        .inner()
        .peek("k", &policy)
        .await
        .unwrap()
        .quota(0)
        .unwrap()
        .remaining;
    assert_eq!(
        remaining + admitted + failed,
        1_000,
        "{alg}: {admitted} admitted, {failed} failed, {remaining} remaining: the lost \
         call's grant is stranded"
    );
}

#[tokio::test]
async fn a_lost_reply_does_not_strand_its_grant_fixed_window() {
    a_lost_reply_does_not_strand_its_grant(Algorithm::FixedWindow).await;
}

#[tokio::test]
async fn a_lost_reply_does_not_strand_its_grant_sliding_window_counter() {
    a_lost_reply_does_not_strand_its_grant(Algorithm::SlidingWindowCounter).await;
}

/// Lost calls in a row, on the Store API: report 1 ran but its reply was lost, report 2 was
/// given up on before it reached Redis. Report 3 names both (`lost(1, 2)`): the record
/// stands on report 1, whose grant goes back. Report 2 then lands at last: its owner gave
/// up on it, so it grants nothing (a grant would be lost again).
async fn lost_calls_in_a_row_are_settled(alg: Algorithm) {
    let (_redis, _clock, policy, store) = ledger_store(alg, "ledger-lost");
    let first = store
        .lease("k", &policy, &want(10).report(1))
        .await
        .unwrap();
    assert_eq!(first.granted, 10, "{alg}: report 1");
    assert_eq!(remaining(&store, &policy).await, 90, "{alg}");
    let third = store
        .lease("k", &policy, &want(5).report(3).lost(1, 2))
        .await
        .unwrap();
    assert_eq!(third.granted, 5, "{alg}: report 3");
    assert_eq!(
        remaining(&store, &policy).await,
        95,
        "{alg}: report 1's grant, held by nobody, was not given back"
    );
    let second = store
        .lease("k", &policy, &want(10).report(2))
        .await
        .unwrap();
    assert_eq!(second.granted, 0, "{alg}: a call given up on leased");
    assert_eq!(remaining(&store, &policy).await, 95, "{alg}");
}

#[tokio::test]
async fn lost_calls_in_a_row_are_settled_fixed_window() {
    lost_calls_in_a_row_are_settled(Algorithm::FixedWindow).await;
}

#[tokio::test]
async fn lost_calls_in_a_row_are_settled_sliding_window_counter() {
    lost_calls_in_a_row_are_settled(Algorithm::SlidingWindowCounter).await;
}
