//! A hung Redis and the lease batcher's limits (issue 19): while a real `redis-server` is
//! stopped (SIGSTOP), a `LeasedStore` keeps at most 6 lease batches in flight, drops the
//! queued calls whose request gave up instead of keeping them (its memory and tasks stay
//! bounded however many requests come), every request gets the limiter's `FailureMode`,
//! and once Redis goes on (SIGCONT) it runs only the batches that were in flight and the
//! store serves again.
//!
//! One test in this binary: it counts the live heap blocks of the whole process (a counting
//! global allocator, dhat in testing mode), so nothing else may run beside it.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use palisade_ratelimit::{
    Algorithm, DecisionSource, FailureMode, LeaseConfig, LeasedStore, Policy, Quota, RateLimiter,
    RedisConnection, RedisStore, Store,
};
use palisade_testkit::{CommandCalls, RedisServer};

#[path = "support/counting.rs"]
mod counting;
use counting::Counting;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Heap blocks allocated and not yet freed, process-wide.
fn live_blocks() -> i64 {
    dhat::HeapStats::get().curr_blocks as i64
}

/// The batcher's limits (`src/leased/batch.rs`): batches in flight, 4 of calls requests
/// wait on and 2 of background calls (before the two lanes: 32 of any).
const MAX_IN_FLIGHT: u64 = 6;
/// The most calls `RedisStore` puts in one script call (`src/redis.rs`, `MAX_BATCH`): a
/// batch carries what was queued when it left, which may be more.
const SCRIPT_ITEMS: u64 = 128;
/// Keys decided in each wave of requests, and the waves, all while Redis is stopped.
const KEYS: usize = 3_000;
const WAVES: usize = 6;
/// Guards against a hang only (a loaded machine takes its time; nothing here is timed).
const HANG_GUARD: Duration = Duration::from_secs(60);
/// Redis goes on by itself after this at worst (longer than any guard: the test resumes it).
const PAUSE: Duration = Duration::from_secs(600);

/// Before, nothing tested that the cap holds or that a hang's queued calls are dropped
/// (the batcher's doc and the changelog stated it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_holds_at_most_6_batches_and_drops_the_calls_given_up_on() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let server = RedisServer::builder().start_async().await.unwrap();
    // A client that waits for Redis however long it hangs (redis-rs gives up on a reply
    // after 500 ms by default, and a batch that failed frees its place: see the guide),
    // so the batches sent stay in flight for the whole hang.
    let patient = server
        .client()
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await
        .unwrap();
    let inner = Counting::new(RedisStore::from_connection(RedisConnection::Multiplexed(
        patient,
    )));
    let (batches, calls) = (Arc::clone(&inner.batches), Arc::clone(&inner.calls));
    let sent = move || (batches.load(Ordering::SeqCst), calls.load(Ordering::SeqCst));
    let (releases, gives) = (Arc::clone(&inner.releases), Arc::clone(&inner.gives));
    let given = move || {
        (
            releases.load(Ordering::SeqCst),
            gives.load(Ordering::SeqCst),
        )
    };
    // No background renewals: every lease call is a request's.
    let store = LeasedStore::builder(inner)
        .config(LeaseConfig::default().prefetch(false))
        .build()
        .unwrap();
    let policy =
        Policy::single("hang", Algorithm::FixedWindow, Quota::per_hour(1_000_000)).unwrap();
    // Connected and the batch script loaded before the hang: a batch is then one EVALSHA.
    assert!(store.acquire("warm", &policy, 1).await.unwrap().allowed);
    store.settled().await;
    let mut conn = server.async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let before = sent();
    let given_before = given();

    // The test resumes it once every wave of requests gave up.
    server.pause(PAUSE);
    let mut settled_blocks: Option<i64> = None;
    for wave in 0..WAVES {
        let (mode, allowed, source) = if wave % 2 == 0 {
            (FailureMode::FailClosed, false, DecisionSource::FailClosed)
        } else {
            (FailureMode::FailOpen, true, DecisionSource::FailOpen)
        };
        // The first wave waits long enough for its calls to be batched (up to the cap); the
        // later ones give up sooner (their calls cannot leave while the cap is reached).
        let timeout = if wave == 0 {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(300)
        };
        let limiter = RateLimiter::builder(store.clone())
            .failure_mode(mode)
            .timeout(timeout)
            .build();
        // The same keys in every wave: their books exist after the first, so what a later
        // wave leaves on the heap is what the batcher keeps of its calls.
        let tasks: Vec<_> = (0..KEYS)
            .map(|k| {
                let (limiter, policy) = (limiter.clone(), policy.clone());
                tokio::spawn(async move { limiter.acquire(&format!("k{k}"), &policy, 1).await })
            })
            .collect();
        for t in tasks {
            let d = tokio::time::timeout(HANG_GUARD, t)
                .await
                .expect("a request under a hung Redis gets its failure mode, not a hang")
                .unwrap();
            assert_eq!(
                (d.allowed, d.source),
                (allowed, source),
                "wave {wave}: {mode:?}: {d:?}"
            );
        }
        drop(limiter);

        // Batches that reached the store while it hangs: none comes back, so each holds
        // its place (a batch whose every request gave up before it left is not sent).
        let b = sent().0 - before.0;
        assert!(
            b <= MAX_IN_FLIGHT,
            "wave {wave}: {b} batches sent to a hung store, at most {MAX_IN_FLIGHT} expected"
        );
        // Tasks: the batches in flight, the batcher, the sweeper, the Redis connections'.
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        assert!(
            tasks as u64 <= MAX_IN_FLIGHT + 8,
            "wave {wave}: {tasks} tasks alive"
        );
        // The calls given up on are dropped from the queue: after the first wave (which
        // made the keys' books), the heap comes back to where it was. Kept, each wave's
        // 3,000 calls would hold 4 blocks each (key, answer, channel...: 12,000 blocks more
        // after the second wave when the batcher did not drop them).
        let guard = tokio::time::Instant::now() + HANG_GUARD;
        match settled_blocks {
            None => {
                // Let the batcher drop the first wave's calls too before taking the level.
                tokio::time::sleep(Duration::from_millis(100)).await;
                settled_blocks = Some(live_blocks());
            }
            Some(level) => loop {
                let now = live_blocks();
                if now <= level + (KEYS / 2) as i64 {
                    settled_blocks = Some(now.min(level));
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < guard,
                    "wave {wave}: {now} heap blocks live, {level} after the waves before: \
                     the calls given up on are kept"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            },
        }
    }
    let (hung_batches, hung_calls) = sent();
    let (hung_batches, hung_calls) = (hung_batches - before.0, hung_calls - before.1);
    assert!(hung_batches > 0, "no batch reached the store");

    // Redis goes on: it runs the batches that were in flight, and nothing else (every
    // queued call's request gave up: none is sent late).
    server.resume();
    tokio::time::timeout(HANG_GUARD, store.settled())
        .await
        .expect("every call in flight or queued is settled once Redis answers");
    let evalsha = CommandCalls::read(&mut conn)
        .await
        .unwrap()
        .total_of(["evalsha", "eval"]);
    assert_eq!(
        sent(),
        (before.0 + hung_batches, before.1 + hung_calls),
        "no batch was sent after Redis resumed"
    );
    // One script call per batch, one more per 128 calls past the first 128; beside them
    // only give-backs (the sweeper gives back the leases the hung batches granted, once they
    // end: a loaded machine may get there before the count is read).
    let (releases, gives) = given();
    let (releases, gives) = (releases - given_before.0, gives - given_before.1);
    assert!(
        hung_batches <= evalsha
            && evalsha
                <= hung_batches + hung_calls / SCRIPT_ITEMS + releases + gives / SCRIPT_ITEMS,
        "Redis ran {evalsha} scripts for the {hung_batches} batches ({hung_calls} calls) in \
         flight during the hang and {releases} give-back batches ({gives} give-backs)"
    );
    eprintln!(
        "hang: {hung_batches} batches, {hung_calls} calls of {} reached Redis; {evalsha} \
         script calls ({releases} give-back batches)",
        KEYS * WAVES
    );

    // And it serves again: a key decided during the hang (leased, if its call was in
    // flight) and a new one (the store's decision, then its lease).
    let limiter = RateLimiter::builder(store.clone())
        .failure_mode(FailureMode::FailClosed)
        .timeout(Duration::from_secs(30))
        .build();
    let d = limiter.acquire("k0", &policy, 1).await;
    assert!(d.allowed, "{d:?}");
    assert!(
        matches!(d.source, DecisionSource::Store | DecisionSource::Lease),
        "{d:?}"
    );
    let d = limiter.acquire("after", &policy, 1).await;
    assert_eq!(
        (d.allowed, d.source),
        (true, DecisionSource::Store),
        "{d:?}"
    );
    store.settled().await;
    let d = limiter.acquire("after", &policy, 1).await;
    assert_eq!(
        (d.allowed, d.source),
        (true, DecisionSource::Lease),
        "{d:?}"
    );
}
