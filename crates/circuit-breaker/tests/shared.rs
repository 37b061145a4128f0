//! Breakers of several instances sharing state through a real Redis (and a Redis Cluster):
//! they trip together, run exactly the configured probes fleet-wide, keep working on local
//! state when Redis dies and resynchronise when it returns.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use palisade_circuit_breaker::store::SharedPolicy;
use palisade_circuit_breaker::{
    CircuitBreaker, Config, Error, FailureMode, MemoryStore, Outcome, RedisStore, SharedConfig,
    SlidingWindow, State, Store,
};
use palisade_testkit::{RedisCluster, RedisServer};

const FLUSH: Duration = Duration::from_millis(50);
const OPEN_WAIT: Duration = Duration::from_millis(400);
const PROBES: u32 = 3;

fn config() -> Config {
    Config::default()
        .window(SlidingWindow::Count { size: 100 })
        .minimum_calls(8)
        .failure_rate_threshold(50.0)
        .open_wait(OPEN_WAIT)
        .half_open_probes(PROBES)
        .success_threshold(PROBES)
        .max_half_open_wait(Duration::from_secs(10))
        .shared(
            SharedConfig::default()
                .flush_interval(FLUSH)
                .window_seconds(10),
        )
}

fn fleet(store: &Arc<dyn Store>, name: &str, n: usize) -> Vec<CircuitBreaker> {
    (0..n)
        .map(|i| {
            CircuitBreaker::builder(name)
                .config(config())
                .store(store.clone())
                .instance_id(format!("instance-{i}"))
                .build()
                .unwrap()
        })
        .collect()
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// 4 instances, 3 failures each: no instance has the 8 calls its own rule needs, the fleet
/// has 12 at 100 %. All open within about one flush interval; after the wait, 256 callers
/// (64 per instance) race for probes and exactly 3 run fleet-wide; then all close.
async fn four_instances_trip_together_and_probe_fleet_wide(store: Arc<dyn Store>, name: &str) {
    let breakers = fleet(&store, name, 4);
    let mut tasks = Vec::new();
    for b in &breakers {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..3 {
                let r = b.call(async { Err::<(), _>("upstream 500") }).await;
                assert!(matches!(r, Err(Error::Inner(_))), "{r:?}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = wait_until("all four open", Duration::from_secs(2), || {
        breakers.iter().all(|b| b.state() == State::Open)
    })
    .await;
    // One flush carries the last failures, the next one brings the verdict to everyone.
    assert!(
        took <= FLUSH * 2 + Duration::from_millis(150),
        "took {took:?}"
    );
    for b in &breakers {
        assert!(
            b.call(async { Ok::<_, ()>(()) })
                .await
                .unwrap_err()
                .is_rejected()
        );
    }

    tokio::time::sleep(OPEN_WAIT + FLUSH).await;
    let running = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = Vec::new();
    for b in &breakers {
        for _ in 0..64 {
            let (b, running, release) = (b.clone(), running.clone(), release.clone());
            tasks.push(tokio::spawn(async move {
                b.call(async {
                    running.fetch_add(1, Ordering::SeqCst);
                    let _p = release.acquire().await.unwrap();
                    Ok::<_, ()>(())
                })
                .await
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        running.load(Ordering::SeqCst),
        PROBES as usize,
        "exactly the configured probes, fleet-wide"
    );
    release.add_permits(10_000);
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(e) => assert!(e.is_rejected(), "{e:?}"),
        }
    }
    assert_eq!(ok, PROBES);
    wait_until(
        "all four closed",
        FLUSH * 2 + Duration::from_millis(300),
        || breakers.iter().all(|b| b.state() == State::Closed),
    )
    .await;
    for b in &breakers {
        b.call(async { Ok::<_, ()>(()) }).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_fleet_trips_together_and_probes_fleet_wide() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    four_instances_trip_together_and_probe_fleet_wide(store, "mem-fleet").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_fleet_trips_together_and_probes_fleet_wide() {
    let redis = palisade_testkit::test_redis().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RedisStore::new(redis.pool()).with_prefix(redis.prefix().key("")));
    four_instances_trip_together_and_probe_fleet_wide(store, "redis-fleet").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_fleet_trips_together_and_probes_fleet_wide() {
    let cluster = RedisCluster::start_async(3).await.unwrap();
    let store: Arc<dyn Store> = Arc::new(RedisStore::cluster(cluster.pool()));
    four_instances_trip_together_and_probe_fleet_wide(store, "cluster-fleet").await;
}

fn local_rules(mode: FailureMode) -> Config {
    let mut c = config();
    c.minimum_calls = 4;
    c.shared.failure_mode = mode;
    c
}

async fn start_server() -> RedisServer {
    RedisServer::builder().start_async().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_keeps_working_locally_and_resyncs_after_restart() {
    let mut server = start_server().await;
    let store: Arc<dyn Store> =
        Arc::new(RedisStore::new(server.pool()).with_timeout(Duration::from_millis(300)));
    let a = CircuitBreaker::builder("killed")
        .config(local_rules(FailureMode::FallbackToMemory))
        .store(store.clone())
        .instance_id("a")
        .build()
        .unwrap();
    let mut events = a.subscribe();
    for _ in 0..3 {
        a.call(async { Ok::<_, ()>(()) }).await.unwrap();
    }
    a.flush().await;
    assert_eq!(a.health().store_healthy, Some(true));

    tokio::task::block_in_place(|| server.kill());
    wait_until("store marked down", Duration::from_secs(3), || {
        a.health().store_healthy == Some(false)
    })
    .await;
    // Still serving on local state...
    a.call(async { Ok::<_, ()>(()) }).await.unwrap();
    // ...and still protecting: the local rules trip (4 failures of 8 calls = 50 %).
    for _ in 0..4 {
        let _ = a.call(async { Err::<(), _>("down") }).await;
    }
    assert_eq!(
        a.state(),
        State::Open,
        "local rules decide while Redis is down"
    );

    tokio::task::block_in_place(|| server.restart()).unwrap();
    // A fresh instance on the restarted (empty) Redis learns what `a` saw during the outage.
    let b = CircuitBreaker::builder("killed")
        .config(local_rules(FailureMode::FallbackToMemory))
        .store(store.clone())
        .instance_id("b")
        .build()
        .unwrap();
    wait_until("resynchronised", Duration::from_secs(5), || {
        a.health().store_healthy == Some(true) && b.state() == State::Open
    })
    .await;
    let mut store_events = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let palisade_circuit_breaker::Event::Store { healthy, .. } = e {
            store_events.push(healthy);
        }
    }
    assert_eq!(
        store_events,
        [false, true],
        "one event when Redis went away, one when it came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_rejects_and_fail_open_admits_while_redis_is_down() {
    let mut server = start_server().await;
    let store: Arc<dyn Store> =
        Arc::new(RedisStore::new(server.pool()).with_timeout(Duration::from_millis(300)));
    let closed = CircuitBreaker::builder("fc")
        .config(local_rules(FailureMode::FailClosed))
        .store(store.clone())
        .build()
        .unwrap();
    let open = CircuitBreaker::builder("fo")
        .config(local_rules(FailureMode::FailOpen))
        .store(store.clone())
        .build()
        .unwrap();
    closed.call(async { Ok::<_, ()>(()) }).await.unwrap();
    tokio::task::block_in_place(|| server.kill());
    wait_until("both see the outage", Duration::from_secs(3), || {
        closed.health().store_healthy == Some(false) && open.health().store_healthy == Some(false)
    })
    .await;
    assert!(
        closed
            .call(async { Ok::<_, ()>(()) })
            .await
            .unwrap_err()
            .is_rejected()
    );
    for _ in 0..20 {
        let r = open.call(async { Err::<(), _>("down") }).await;
        assert!(
            matches!(r, Err(Error::Inner(_))),
            "fail-open never rejects: {r:?}"
        );
    }
    tokio::task::block_in_place(|| server.restart()).unwrap();
    wait_until("fail-closed recovers", Duration::from_secs(5), || {
        closed.health().store_healthy == Some(true)
    })
    .await;
    closed.call(async { Ok::<_, ()>(()) }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_force_open_reaches_the_whole_fleet() {
    let redis = palisade_testkit::test_redis().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RedisStore::new(redis.pool()).with_prefix(redis.prefix().key("")));
    let breakers = fleet(&store, "manual", 3);
    breakers[0].force_open();
    wait_until("everyone forced open", Duration::from_secs(2), || {
        breakers.iter().all(|b| b.state() == State::ForcedOpen)
    })
    .await;
    breakers[2].reset();
    wait_until("everyone closed", Duration::from_secs(2), || {
        breakers.iter().all(|b| b.state() == State::Closed)
    })
    .await;
}

const CHILD_URL: &str = "PALISADE_CB_CHILD_REDIS_URL";
const CHILD_PREFIX: &str = "PALISADE_CB_CHILD_PREFIX";
const CHILD_PROBE_AT: &str = "PALISADE_CB_CHILD_PROBE_AT_MS";

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn sleep_until_unix_ms(at: u64) {
    let now = unix_ms();
    assert!(
        at > now,
        "the probe phase was scheduled too early ({} ms late)",
        now - at
    );
    tokio::time::sleep(Duration::from_millis(at - now)).await;
}

/// Three failing calls, then (at the agreed instant) 64 concurrent calls held for 600 ms;
/// returns how many of them ran.
async fn instance_script(b: CircuitBreaker, probe_at: u64) -> usize {
    for _ in 0..3 {
        let _ = b.call(async { Err::<(), _>("upstream 500") }).await;
    }
    wait_until("open", Duration::from_secs(3), || b.state() == State::Open).await;
    sleep_until_unix_ms(probe_at).await;
    let running = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (b, running) = (b.clone(), running.clone());
        tasks.push(tokio::spawn(async move {
            b.call(async {
                running.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(600)).await;
                Ok::<_, ()>(())
            })
            .await
        }));
    }
    for t in tasks {
        let _ = t.await.unwrap();
    }
    running.load(Ordering::SeqCst)
}

/// The body of the separate process started by `a_separate_process_joins_the_fleet`; it is
/// ignored when the suite runs, because on its own it has no fleet to join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of a_separate_process_joins_the_fleet"]
async fn child_process_instance() {
    let url = std::env::var(CHILD_URL).expect("started by a_separate_process_joins_the_fleet");
    let prefix = std::env::var(CHILD_PREFIX).unwrap();
    let probe_at: u64 = std::env::var(CHILD_PROBE_AT).unwrap().parse().unwrap();
    use palisade_circuit_breaker::deadpool_redis;
    let pool = deadpool_redis::Config::from_url(url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(RedisStore::new(pool).with_prefix(prefix));
    let b = CircuitBreaker::builder("process-fleet")
        .config(config())
        .store(store)
        .instance_id("child-process")
        .build()
        .unwrap();
    let ran = instance_script(b.clone(), probe_at).await;
    println!("CHILD ran {ran}");
    wait_until("closed", Duration::from_secs(3), || {
        b.state() == State::Closed
    })
    .await;
    println!("CHILD closed");
}

/// Three instances in this process and one in another process share one Redis: they trip
/// together and exactly the configured number of probes runs across both processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_process_joins_the_fleet() {
    let redis = palisade_testkit::test_redis().unwrap();
    let prefix = redis.prefix().key("");
    let probe_at = unix_ms() + 3000;
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_process_instance",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, redis.url())
        .env(CHILD_PREFIX, &prefix)
        .env(CHILD_PROBE_AT, probe_at.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(RedisStore::new(redis.pool()).with_prefix(prefix));
    let breakers = fleet(&store, "process-fleet", 3);
    let mut tasks = Vec::new();
    for b in &breakers {
        tasks.push(tokio::spawn(instance_script(b.clone(), probe_at)));
    }
    let mut ran_here = 0;
    for t in tasks {
        ran_here += t.await.unwrap();
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ran_there: usize = stdout
        .lines()
        .find_map(|l| l.split("CHILD ran ").nth(1))
        .unwrap_or_else(|| panic!("the child did not report its probes:\n{stdout}"))
        .parse()
        .unwrap();
    assert!(stdout.contains("CHILD closed"), "{stdout}");
    assert_eq!(
        ran_here + ran_there,
        PROBES as usize,
        "here {ran_here}, there {ran_there}"
    );
    wait_until("closed here", Duration::from_secs(2), || {
        breakers.iter().all(|b| b.state() == State::Closed)
    })
    .await;
}

/// With a quorum of 2 instances, one bad node (its own path to the upstream is broken) does
/// not open the breaker for the fleet; a second failing node does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_keeps_one_bad_node_from_opening_the_fleet() {
    let redis = palisade_testkit::test_redis().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RedisStore::new(redis.pool()).with_prefix(redis.prefix().key("")));
    let fleet: Vec<CircuitBreaker> = (0..4)
        .map(|i| {
            CircuitBreaker::builder("quorum")
                .config(config())
                .quorum(
                    palisade_circuit_breaker::Quorum::default()
                        .min_instances(2)
                        .min_percent(40.0),
                )
                .store(store.clone())
                .instance_id(format!("node-{i}"))
                .build()
                .unwrap()
        })
        .collect();
    for b in &fleet[1..] {
        b.call(async { Ok::<_, ()>(()) }).await.unwrap();
    }
    for _ in 0..12 {
        let _ = fleet[0].call(async { Err::<(), _>("broken route") }).await;
    }
    // Several flush intervals: the shared window is at 12 of 15 failing, but only one node
    // reports a failing window.
    tokio::time::sleep(FLUSH * 6).await;
    assert!(
        fleet.iter().all(|b| b.state() == State::Closed),
        "one node must not open the fleet"
    );
    for _ in 0..2 {
        let _ = fleet[1].call(async { Err::<(), _>("upstream down") }).await;
    }
    wait_until(
        "a quorum of two opens the fleet",
        Duration::from_secs(2),
        || fleet.iter().all(|b| b.state() == State::Open),
    )
    .await;
}

/// Two instances on their own Redis (the tests pause it), tripped and past the open wait:
/// one probe fleet-wide, which one success closes.
async fn half_open_pair(server: &RedisServer, name: &str) -> (CircuitBreaker, CircuitBreaker) {
    let store: Arc<dyn Store> =
        Arc::new(RedisStore::new(server.pool()).with_timeout(Duration::from_secs(5)));
    let mut c = config();
    c.half_open_probes = 1;
    c.success_threshold = 1;
    let pair = (0..2)
        .map(|i| {
            CircuitBreaker::builder(name)
                .config(c.clone())
                .store(store.clone())
                .instance_id(format!("{name}-{i}"))
                .build()
                .unwrap()
        })
        .collect::<Vec<_>>();
    // Load the probe scripts on this fresh server first (a script's first use is answered
    // NOSCRIPT and sent again, and a caller that goes away in between sends nothing).
    let policy = SharedPolicy::from_config(&c);
    let _ = store
        .acquire_probe("warm-up", &policy, "warm-up")
        .await
        .unwrap();
    let _ = store
        .complete_probe("warm-up", &policy, 0, "warm-up", Outcome::Ignored)
        .await
        .unwrap();
    for _ in 0..8 {
        let _ = pair[0].call(async { Err::<(), _>("upstream 500") }).await;
    }
    wait_until("both open", Duration::from_secs(2), || {
        pair.iter().all(|b| b.state() == State::Open)
    })
    .await;
    tokio::time::sleep(OPEN_WAIT + FLUSH).await;
    (pair[0].clone(), pair[1].clone())
}

/// A call whose caller goes away while its probe's result is on its way to the store: the
/// result still reaches the store (it closes the fleet), and neither the fleet-wide lease
/// (30 s) nor the local probe slot (the maximum half-open wait) stays taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_while_reporting_still_reports_and_frees_its_probe() {
    let server = start_server().await;
    let (a, b) = half_open_pair(&server, "drop-reporting").await;
    let (ran_tx, ran_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let probe = tokio::spawn({
        let a = a.clone();
        async move {
            a.call(async move {
                let _ = ran_tx.send(());
                let _ = go_rx.await;
                Ok::<_, ()>(())
            })
            .await
        }
    });
    ran_rx
        .await
        .expect("the probe runs (it holds the fleet's lease)");
    server.pause(Duration::from_secs(3));
    go_tx.send(()).unwrap(); // the call succeeds; its report now waits on the frozen Redis
    tokio::time::sleep(Duration::from_millis(150)).await;
    probe.abort();
    assert!(probe.await.unwrap_err().is_cancelled());
    server.resume();
    wait_until(
        "the dropped call's success closed the fleet",
        Duration::from_secs(3),
        || a.state() == State::Closed && b.state() == State::Closed,
    )
    .await;
    a.call(async { Ok::<_, ()>(()) }).await.unwrap();
}

/// A call whose caller goes away while it waits for its fleet-wide lease: the lease Redis
/// grants it is given back, and so is its local probe slot, so another probe runs at once
/// instead of after the 30 s lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_while_leasing_gives_back_its_lease_and_probe() {
    let server = start_server().await;
    let (a, b) = half_open_pair(&server, "drop-leasing").await;
    // Scripts wait while Redis answers everything else: the lease request is sent and held,
    // and Redis grants it once the pause ends, to a caller that is gone by then.
    let mut admin = server.async_connection().await.unwrap();
    let _: () = palisade_testkit::redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let leasing = tokio::spawn({
        let (a, ran) = (a.clone(), ran.clone());
        async move {
            a.call(async move {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(())
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    leasing.abort();
    assert!(leasing.await.unwrap_err().is_cancelled());
    let _: () = palisade_testkit::redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 0, "the call never ran");
    // The same instance probes again: its local slot and the fleet's lease must both be free.
    let prober = tokio::spawn({
        let a = a.clone();
        async move {
            while a.call(async { Ok::<_, ()>(()) }).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    wait_until(
        "a new probe closes the fleet",
        Duration::from_secs(3),
        || a.state() == State::Closed && b.state() == State::Closed,
    )
    .await;
    prober.await.unwrap();
}

/// A half-open probe whose lease request the store cannot answer (Redis frozen past the
/// store's timeout) is decided by the failure mode, as admission is while the store is
/// down: `FailOpen` lets the call through and records it, `FallbackToMemory` runs it as a
/// local probe, `FailClosed` rejects it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_the_store_cannot_answer_follows_the_failure_mode() {
    let server = start_server().await;
    for (mode, admitted) in [
        (FailureMode::FailOpen, true),
        (FailureMode::FallbackToMemory, true),
        (FailureMode::FailClosed, false),
    ] {
        let store: Arc<dyn Store> = Arc::new(
            RedisStore::new(server.pool())
                .with_prefix(format!("{mode:?}:"))
                .with_timeout(Duration::from_millis(300)),
        );
        let b = CircuitBreaker::builder("lease-down")
            .config(local_rules(mode))
            .store(store)
            .build()
            .unwrap();
        for _ in 0..8 {
            let _ = b.call(async { Err::<(), _>("upstream 500") }).await;
        }
        wait_until("open", Duration::from_secs(2), || b.state() == State::Open).await;
        tokio::time::sleep(OPEN_WAIT + FLUSH).await;
        assert_eq!(b.health().store_healthy, Some(true));
        let recorded = b.snapshot().calls;
        server.pause(Duration::from_secs(2));
        let r = b.call(async { Ok::<_, ()>(()) }).await;
        server.resume();
        assert_eq!(r.is_ok(), admitted, "{mode:?}: {r:?}");
        if mode == FailureMode::FailOpen {
            assert_eq!(
                b.snapshot().calls,
                recorded + 1,
                "FailOpen records the call it lets through"
            );
        }
        wait_until("the store answers again", Duration::from_secs(3), || {
            b.health().store_healthy == Some(true)
        })
        .await;
    }
}
