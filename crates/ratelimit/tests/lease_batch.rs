//! Batched lease traffic (issue 19): `Store::lease_many` / `release_many` on Redis (one
//! script call per slot) decide exactly what the single-key scripts decide, for keys of
//! every algorithm and multi-window policies in one batch; a failed batch (Redis down) gives
//! every key of a `LeasedStore` the limiter's failure mode; on a 3-master cluster, keys on
//! different slots are batched per slot; and many never-seen keys at once are leased in
//! batches without one key's call holding up another's.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::time::Duration;

use palisade_ratelimit::{
    Algorithm, DecisionSource, FailureMode, FakeClock, LeaseCall, LeaseConfig, LeaseRequest,
    LeaseReturn, LeasedStore, Policy, Quota, RateLimiter, RedisStore, ReleaseCall, Store,
};
use palisade_testkit::{CommandCalls, RedisServer, test_redis};

#[path = "support/counting.rs"]
mod counting;
use counting::Counting;

fn next(seed: &mut u64, n: u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed % n
}

/// Every algorithm, single and multi-window. Periods of minutes: Redis expires keys on its
/// own clock (TTL of about a period), and the fake clock must not see keys expire at
/// different moments in the two stores.
fn policies() -> Vec<Policy> {
    let mut all = Vec::new();
    for alg in Algorithm::ALL {
        all.push(
            Policy::builder(format!("batch-{alg}"))
                .algorithm(alg)
                .quota(
                    "fast",
                    Quota::new(40, Duration::from_secs(70)).with_burst(50),
                )
                .quota("slow", Quota::new(90, Duration::from_secs(500)))
                .build()
                .unwrap(),
        );
        all.push(
            Policy::single(
                format!("batch-1-{alg}"),
                alg,
                Quota::new(60, Duration::from_secs(90)),
            )
            .unwrap(),
        );
    }
    all
}

/// Random batches of lease and release calls over keys of every policy (owners with ledger
/// records included), sent as one `lease_many` + one `release_many` to one Redis store and
/// call by call to another (its own prefix), with one fake clock: identical answers and
/// identical counters. (The single-key script against the memory store's arithmetic is
/// `tests/leased.rs`.)
async fn batches_decide_like_single_calls(
    batched: RedisStore,
    single: RedisStore,
    clock: FakeClock,
) {
    let policies = policies();
    let keys = ["a", "b", "{c}", "d:e"];
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    // Grants not yet given back: (key, policy index, units, granted_at, owner).
    let mut grants: Vec<(usize, usize, u64, u64, u64)> = Vec::new();
    for round in 0..120 {
        clock.advance(Duration::from_micros(
            next(&mut seed, 3) * next(&mut seed, 200_000),
        ));
        let mut leases: Vec<(usize, usize, LeaseRequest)> = Vec::new();
        let mut gives: Vec<(usize, usize, LeaseReturn)> = Vec::new();
        let mut used: Vec<(usize, usize)> = Vec::new();
        for _ in 0..(1 + next(&mut seed, 24)) {
            let (k, p) = (
                next(&mut seed, keys.len() as u64) as usize,
                next(&mut seed, policies.len() as u64) as usize,
            );
            // One call per key and policy per batch: calls of one batch have no order.
            if used.contains(&(k, p)) {
                continue;
            }
            used.push((k, p));
            let owner = [0, 7][next(&mut seed, 2) as usize];
            match grants.iter().position(|g| g.0 == k && g.1 == p) {
                Some(i) if next(&mut seed, 3) == 0 => {
                    let g = grants.swap_remove(i);
                    gives.push((k, p, LeaseReturn::new(g.2, g.3).owner(g.4, 0)));
                }
                _ => {
                    let request = LeaseRequest::new(next(&mut seed, 6))
                        .want(
                            next(&mut seed, 30),
                            Duration::from_secs(next(&mut seed, 3) * 40),
                        )
                        .max_share_permille([100, 500, 1000][next(&mut seed, 3) as usize])
                        .owner(owner, Duration::from_millis(500));
                    leases.push((k, p, request));
                }
            }
        }
        let lease_calls: Vec<LeaseCall<'_>> = leases
            .iter()
            .map(|(k, p, r)| LeaseCall::new(keys[*k], &policies[*p], *r))
            .collect();
        let release_calls: Vec<ReleaseCall<'_>> = gives
            .iter()
            .map(|(k, p, g)| ReleaseCall::new(keys[*k], &policies[*p], *g))
            .collect();
        let b_leases = batched.lease_many(&lease_calls).await;
        let b_releases = batched.release_many(&release_calls).await;
        assert_eq!(b_leases.len(), lease_calls.len());
        assert_eq!(b_releases.len(), release_calls.len());
        for (c, b) in lease_calls.iter().zip(b_leases) {
            let b = b.unwrap_or_else(|e| panic!("round {round}: batched lease failed: {e:?}"));
            let s = single.lease(c.key, c.policy, &c.request).await.unwrap();
            assert_eq!(
                b,
                s,
                "round {round}: {} {} {:?}",
                c.key,
                c.policy.name(),
                c.request
            );
            if b.granted > 0 {
                let (k, p, r) = leases
                    .iter()
                    .find(|(k, p, _)| keys[*k] == c.key && policies[*p] == *c.policy)
                    .unwrap();
                grants.push((*k, *p, b.granted, b.granted_at, r.owner));
            }
        }
        for (c, b) in release_calls.iter().zip(b_releases) {
            b.unwrap();
            single.release_for(c.key, c.policy, &c.give).await.unwrap();
        }
        // Both Redis stores hold the same counters: a peek of every key agrees.
        for p in &policies {
            for k in keys {
                assert_eq!(
                    batched.peek(k, p).await.unwrap(),
                    single.peek(k, p).await.unwrap(),
                    "round {round}: {k} {} after the batch",
                    p.name()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_every_algorithm_decides_like_single_calls() {
    let redis = test_redis().unwrap();
    let clock = FakeClock::new();
    let batched = RedisStore::new(redis.pool())
        .with_prefix(&format!("{}:batched", redis.prefix().as_str()))
        .with_clock(clock.clone());
    let single = RedisStore::new(redis.pool())
        .with_prefix(&format!("{}:single", redis.prefix().as_str()))
        .with_clock(clock.clone());
    batches_decide_like_single_calls(batched, single, clock).await;
}

/// On a 3-master cluster the keys of one batch fall on many slots (and every master): the
/// store sends one script call per slot, and the answers are the single calls'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_cluster_slots_decides_like_single_calls() {
    let cluster = palisade_testkit::RedisCluster::start_async(3)
        .await
        .expect("a 3-master cluster");
    let clock = FakeClock::new();
    let batched = RedisStore::cluster(cluster.pool())
        .with_prefix("batched")
        .with_clock(clock.clone());
    let single = RedisStore::cluster(cluster.pool())
        .with_prefix("single")
        .with_clock(clock.clone());
    batches_decide_like_single_calls(batched, single, clock).await;
}

/// A `LeasedStore` over a cluster: 300 never-seen keys decided at once (their first
/// decisions batched, on many slots), every one admitted by the store, then from leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keys_on_many_slots_lease_through_a_cluster() {
    let cluster = palisade_testkit::RedisCluster::start_async(3)
        .await
        .expect("a 3-master cluster");
    let store = LeasedStore::new(RedisStore::cluster(cluster.pool()));
    let limiter = RateLimiter::builder(store.clone())
        .failure_mode(FailureMode::FailClosed)
        .timeout(Duration::from_secs(5))
        .build();
    let policy =
        Policy::single("cluster-batch", Algorithm::Gcra, Quota::per_hour(1_000_000)).unwrap();
    let decide_all = || {
        let tasks: Vec<_> = (0..300)
            .map(|k| {
                let (limiter, policy) = (limiter.clone(), policy.clone());
                tokio::spawn(async move { limiter.acquire(&format!("user:{k}"), &policy, 1).await })
            })
            .collect();
        async move {
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }
    };
    for d in decide_all().await {
        assert!(d.allowed, "{d:?}");
        assert_eq!(
            d.source,
            DecisionSource::Store,
            "a first decision sees the store"
        );
    }
    store.settled().await;
    for d in decide_all().await {
        assert!(d.allowed, "{d:?}");
        assert_eq!(
            d.source,
            DecisionSource::Lease,
            "the first call leased the key"
        );
    }
}

/// Redis down: a batch fails as a whole, and every key in it (every algorithm and policy)
/// gets the limiter's failure mode, not an error and not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_gives_every_key_the_failure_mode() {
    let mut server = RedisServer::builder().start_async().await.unwrap();
    let url_pool = server.pool();
    tokio::task::block_in_place(|| server.kill());
    let store =
        LeasedStore::new(RedisStore::new(url_pool).with_timeout(Duration::from_millis(300)));
    let policies: Vec<Policy> = policies()
        .into_iter()
        .filter(|p| p.algorithm() != Algorithm::SlidingWindowLog)
        .collect();
    for (mode, allowed, source) in [
        (FailureMode::FailClosed, false, DecisionSource::FailClosed),
        (FailureMode::FailOpen, true, DecisionSource::FailOpen),
    ] {
        let limiter = Arc::new(
            RateLimiter::builder(store.clone())
                .failure_mode(mode)
                .timeout(Duration::from_secs(2))
                .build(),
        );
        let tasks: Vec<_> = (0..40)
            .map(|k| {
                let (limiter, policy) =
                    (Arc::clone(&limiter), policies[k % policies.len()].clone());
                tokio::spawn(async move { limiter.acquire(&format!("down:{k}"), &policy, 1).await })
            })
            .collect();
        for t in tasks {
            let d = t.await.unwrap();
            assert_eq!((d.allowed, d.source), (allowed, source), "{mode:?}: {d:?}");
        }
    }
    // The batch call itself answers an error per call.
    let answers = store
        .inner()
        .lease_many(&[
            LeaseCall::new("x", &policies[0], LeaseRequest::new(1)),
            LeaseCall::new("y", &policies[1], LeaseRequest::new(1)),
        ])
        .await;
    assert_eq!(answers.len(), 2);
    assert!(
        answers
            .iter()
            .all(|a| a.as_ref().is_err_and(|e| e.is_backend()))
    );
}

/// Many never-seen keys decided at once by one instance are leased in batches: far fewer
/// store calls than keys, and each key's decision is its own (a key that the store denies
/// does not change another's).
///
/// Nothing here depends on how fast the machine is: on a current-thread runtime the 200
/// decisions all queue their calls before the batcher's task first runs (it is woken
/// behind them), so it finds them queued together whatever the load; and the decisions are
/// the store's own answers (no limiter timeout that a loaded machine turns into a denial).
/// Before, on two worker threads with a 5 s limiter timeout, a starved batcher could send
/// each call alone (`b < c` failed) and a slow Redis deny an open key (fail-closed).
#[tokio::test(flavor = "current_thread")]
async fn first_decisions_of_many_keys_are_batched() {
    let redis = test_redis().unwrap();
    let inner = Counting::new(RedisStore::new(redis.pool()).with_prefix(redis.prefix().as_str()));
    let batches = Arc::clone(&inner.batches);
    let calls = Arc::clone(&inner.calls);
    let store = LeasedStore::builder(inner)
        .config(LeaseConfig::default().prefetch(false))
        .build()
        .unwrap();
    let open =
        Policy::single("first-open", Algorithm::FixedWindow, Quota::per_hour(1_000)).unwrap();
    let shut = Policy::single("first-shut", Algorithm::FixedWindow, Quota::per_hour(1)).unwrap();
    // Spend the one unit of every `shut` key first.
    for k in 0..100 {
        if k % 2 == 1 {
            assert!(
                store
                    .inner()
                    .acquire(&format!("k{k}"), &shut, 1)
                    .await
                    .unwrap()
                    .allowed
            );
        }
    }
    let tasks: Vec<_> = (0..200)
        .map(|k| {
            let store = store.clone();
            let policy = if k % 2 == 0 {
                open.clone()
            } else {
                shut.clone()
            };
            tokio::spawn(async move {
                let d = store.acquire(&format!("k{}", k % 100), &policy, 1).await;
                (k, d)
            })
        })
        .collect();
    for t in tasks {
        let (k, d) = t.await.unwrap();
        let d = d.unwrap_or_else(|e| panic!("key {k}: {e}"));
        assert_eq!(d.allowed, k % 2 == 0, "key {k}: {d:?}");
    }
    let (b, c) = (
        batches.load(std::sync::atomic::Ordering::Relaxed),
        calls.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(c >= 100, "{c} lease calls");
    assert!(b < c, "{b} batches for {c} lease calls: none was batched");
}

/// Commands Redis ran since the last `CONFIG RESETSTAT`, those the test sends itself left
/// out: what the scripts called (`INFO commandstats` counts commands run inside scripts).
fn script_commands(calls: &CommandCalls) -> u64 {
    const OWN: [&str; 8] = [
        "evalsha", "eval", "script", "info", "config", "ping", "hello", "client",
    ];
    calls
        .iter()
        .filter(|(command, _)| !OWN.contains(command))
        .map(|(_, n)| n)
        .sum()
}

/// A Redis server of its own (nothing else runs commands while they are counted), a store
/// on it, and a connection to read and reset its command counts.
async fn counted_server() -> (RedisServer, RedisStore, redis::aio::MultiplexedConnection) {
    let server = RedisServer::builder().start_async().await.unwrap();
    let store = RedisStore::new(server.pool());
    let conn = server.async_connection().await.unwrap();
    (server, store, conn)
}

/// What one key's lease call costs Redis, in commands run by the batch script, for a GCRA
/// key with an owner's ledger record: a key's first lease, a request paid from the store
/// with a renewal (the record exists) and a background renewal (cost 0). The lease script
/// used to issue 13, 12 and 10 (TIME per item, the ledger's HGET/HSET/PTTL/PEXPIRE and
/// 'due' each on their own, the state read back after every write); it now reads the
/// ledger once, writes it once, reads each state once, and reads TIME once per batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_call_costs_redis_few_commands() {
    let (_server, store, mut conn) = counted_server().await;
    let policy = Policy::single("cost", Algorithm::Gcra, Quota::per_hour(1_000_000_000)).unwrap();
    let keys: Vec<String> = (0..64).map(|k| format!("k{k}")).collect();
    let lease = |cost: u64, report: u64| {
        LeaseRequest::new(cost)
            .want(32, Duration::from_secs(10))
            .held_for(Duration::from_secs(10))
            .max_share_permille(100)
            .owner(7, Duration::from_secs(1))
            .report(report)
    };
    // Each round on a fresh count: (the request's cost, its report number, the most
    // commands a key's call may cost).
    for (round, (cost, report, most)) in [(1, 1, 6), (1, 2, 5), (0, 3, 4)].into_iter().enumerate() {
        let calls: Vec<LeaseCall<'_>> = keys
            .iter()
            .map(|k| LeaseCall::new(k, &policy, lease(cost, report)))
            .collect();
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await
            .unwrap();
        for r in store.lease_many(&calls).await {
            let l = r.unwrap();
            assert!(l.granted > 0, "round {round}: {l:?}");
        }
        let per_key = script_commands(&CommandCalls::read(&mut conn).await.unwrap()) as f64
            / keys.len() as f64;
        assert!(
            per_key <= most as f64 + 0.1,
            "round {round}: {per_key} commands per key, at most {most} expected"
        );
    }
}

/// Every key matching `pattern` (a key's windows' counters and its ledger) and what it
/// holds, in order.
async fn contents(
    conn: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> Vec<(String, String)> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(conn)
        .await
        .unwrap();
    keys.sort();
    let mut out = Vec::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE").arg(&k).query_async(conn).await.unwrap();
        let value = if kind == "hash" {
            let mut fields: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(&k)
                .query_async(conn)
                .await
                .unwrap();
            fields.sort();
            format!("{fields:?}")
        } else {
            redis::cmd("GET").arg(&k).query_async(conn).await.unwrap()
        };
        out.push((k, value));
    }
    out
}

/// Issue 19, open defect 3: an item that fails partway (here: its key's second window is
/// corrupted, a hash where a count belongs, and the item had first reclaimed a dead
/// owner's record into the first window) must change nothing, and fail alone: the items
/// before and after it in the same batch are decided. Before, the reclaim's refund of the
/// first window stayed (and the record too: its units would have gone back twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_item_changes_nothing_and_fails_alone() {
    let redis = test_redis().unwrap();
    let clock = FakeClock::new();
    let store = RedisStore::new(redis.pool())
        .with_prefix(redis.prefix().as_str())
        .with_clock(clock.clone());
    let mut conn = redis.async_connection().await.unwrap();
    let policy = Policy::builder("batch-corrupt")
        .algorithm(Algorithm::FixedWindow)
        .quota("hour", Quota::per_hour(1_000))
        .quota("ten", Quota::new(500, Duration::from_secs(600)))
        .build()
        .unwrap();
    let life = Duration::from_secs(1);
    // Owner 9 leases 10 units of each key and dies.
    let mut granted_at = 0;
    for k in ["a", "b", "c"] {
        let dead = LeaseRequest::new(0).want(10, life).owner(9, life);
        let lease = store.lease(k, &policy, &dead).await.unwrap();
        assert_eq!(lease.granted, 10);
        granted_at = lease.granted_at;
    }
    let second = &store.keys_for("b", &policy)[1];
    let _: () = redis::cmd("DEL")
        .arg(second)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(second)
        .arg("corrupt")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Past owner 9's record's end: each key's next call reclaims it first.
    clock.advance(life + life + Duration::from_millis(10));
    let pattern = format!("{}*batch-corrupt:b}}*", redis.prefix().as_str());
    let before = contents(&mut conn, &pattern).await;
    assert_eq!(before.len(), 3, "{before:?}");

    let request = LeaseRequest::new(1).want(5, life).owner(7, life);
    let calls: Vec<LeaseCall<'_>> = ["a", "b", "c"]
        .iter()
        .map(|k| LeaseCall::new(k, &policy, request))
        .collect();
    let replies = store.lease_many(&calls).await;
    assert_eq!(replies.len(), 3);
    let b = replies[1].as_ref().expect_err("the corrupted key's item");
    assert!(format!("{b:?}").contains("WRONGTYPE"), "{b:?}");
    for i in [0, 2] {
        let l = replies[i]
            .as_ref()
            .unwrap_or_else(|e| panic!("item {i} failed: {e}"));
        assert!(l.decision.allowed, "item {i}: {l:?}");
        assert_eq!(l.granted, 5, "item {i}: {l:?}");
    }
    assert_eq!(
        contents(&mut conn, &pattern).await,
        before,
        "the failed item changed its keys"
    );
    // Its own script call too.
    assert!(store.lease("b", &policy, &request).await.is_err());
    let give = LeaseReturn::new(3, granted_at).owner(9, 0);
    assert!(store.release_for("b", &policy, &give).await.is_err());
    assert_eq!(contents(&mut conn, &pattern).await, before);
    // The others were reclaimed (10 back) and charged (1 + 5).
    let peek = store.peek("a", &policy).await.unwrap();
    assert_eq!(
        (
            peek.quota(0).unwrap().remaining,
            peek.quota(1).unwrap().remaining
        ),
        (994, 494)
    );
}

/// A lease call writes each state key once, whatever it does to it: a request paid from the
/// store and a grant on top (before: one `SET` for the request, one for the grant, more for
/// stale units given back), for every leased algorithm, on a key's first lease and on a
/// renewal that spends from the store again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_call_writes_each_state_once() {
    let (_server, store, mut conn) = counted_server().await;
    let policies: Vec<Policy> = [
        Algorithm::Gcra,
        Algorithm::TokenBucket,
        Algorithm::FixedWindow,
        Algorithm::SlidingWindowCounter,
    ]
    .into_iter()
    .map(|a| Policy::single(format!("once-{a:?}"), a, Quota::per_hour(1_000_000_000)).unwrap())
    .collect();
    let keys: Vec<String> = (0..16).map(|k| format!("k{k}")).collect();
    let lease = |report: u64| {
        LeaseRequest::new(1)
            .want(32, Duration::from_secs(10))
            .held_for(Duration::from_secs(10))
            .max_share_permille(100)
            .owner(7, Duration::from_secs(1))
            .report(report)
    };
    for (round, report) in [1, 2].into_iter().enumerate() {
        let calls: Vec<LeaseCall<'_>> = policies
            .iter()
            .flat_map(|p| keys.iter().map(move |k| (k, p)))
            .map(|(k, p)| LeaseCall::new(k, p, lease(report)))
            .collect();
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await
            .unwrap();
        for r in store.lease_many(&calls).await {
            let l = r.unwrap();
            assert!(l.decision.allowed && l.granted > 0, "round {round}: {l:?}");
        }
        let sets = CommandCalls::read(&mut conn).await.unwrap().of("set");
        assert_eq!(
            sets,
            calls.len() as u64,
            "round {round}: {sets} SETs for {} lease calls",
            calls.len()
        );
    }
}

/// A request's lease call does not queue behind renewals. 2,000 keys each spend their
/// first lease, so that every book queues a renewal ahead of need at once (as 10,000 keys
/// starting together do), over a store that runs lease batches one at a time, each 20 ms
/// longer than Redis takes (a Redis saturated by those renewals). Then a request on a new
/// key must lease: its call goes ahead of the queued renewals, behind at most the two
/// background batches already in the store. Before, renewals left in up to 32 batches at
/// once, and the request's call waited behind all of them (31 batches ahead, ~650 ms:
/// ten times the limiter's default timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_does_not_queue_behind_renewals() {
    let redis = test_redis().unwrap();
    let inner = Counting::busy(
        RedisStore::new(redis.pool()).with_prefix(redis.prefix().as_str()),
        Duration::from_millis(20),
    );
    let ahead = Arc::clone(&inner.ahead_of_requests);
    let store = LeasedStore::new(inner);
    let policy = Policy::single(
        "behind-renewals",
        Algorithm::Gcra,
        Quota::per_hour(1_000_000_000),
    )
    .unwrap();
    let keys: Vec<String> = (0..2_000).map(|k| format!("k{k}")).collect();
    // Every key's first lease (requests wait on these calls).
    let firsts: Vec<_> = keys
        .iter()
        .map(|k| {
            let (store, policy, k) = (store.clone(), policy.clone(), k.clone());
            tokio::spawn(async move { store.acquire(&k, &policy, 1).await })
        })
        .collect();
    for f in firsts {
        assert!(f.await.unwrap().unwrap().allowed);
    }
    ahead.lock().clear();
    // Spend each first lease (a sparse key's few units): every book renews in the background.
    for k in &keys {
        for _ in 0..4 {
            let d = store.acquire(k, &policy, 1).await.unwrap();
            assert_eq!(d.source, DecisionSource::Lease, "{k}: {d:?}");
        }
    }
    let began = std::time::Instant::now();
    let d = store.acquire("new-key", &policy, 1).await.unwrap();
    let took = began.elapsed();
    assert!(d.allowed);
    let ahead = ahead.lock().clone();
    assert_eq!(
        ahead.len(),
        1,
        "one batch carried the request's call: {ahead:?}"
    );
    assert!(
        ahead[0] <= 2,
        "{} lease batches were in the store ahead of the request's call (at most the 2 \
         background batches in flight expected); it took {took:?}",
        ahead[0]
    );
    store.settled().await;
}
