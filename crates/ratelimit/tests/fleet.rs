//! A fleet of four separate processes (this test binary started again with
//! `--ignored --exact fleet_child`) on one key through one Redis, each with its own
//! `LeasedStore` and eight tasks deciding at full speed, for every algorithm, in strict mode
//! and with the default 1 % tolerance; then the same with one instance killed (SIGKILL)
//! while it holds a lease.
//!
//! Redis decides with a frozen fake time shared by every process (no refill, no new window
//! during a run), so every unit of the quota is accounted for exactly, however slowly the
//! loaded machine schedules the processes: the units admitted, the units instances dropped
//! (bucket leftovers), the units a killed instance held, and what Redis has left add up to
//! the quota; nothing is admitted beyond it; in strict mode exactly the quota is admitted.
//! The processes meet at a barrier in Redis (counts, not time).
#![cfg(feature = "redis")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use palisade_ratelimit::{
    Algorithm, DecisionSource, FakeClock, LeaseConfig, LeasedStore, Policy, Quota, RedisStore,
    Store,
};
use palisade_testkit::{deadpool_redis, redis, test_redis};

const INSTANCES: usize = 4;
const TASKS: usize = 8;
/// Redis' time for every process: the fake clock's start, an hour boundary.
fn frozen() -> FakeClock {
    FakeClock::new()
}

const ENV_URL: &str = "PALISADE_RL_FLEET_URL";
const ENV_PREFIX: &str = "PALISADE_RL_FLEET_PREFIX";
const ENV_CASE: &str = "PALISADE_RL_FLEET_CASE";
const ENV_ALG: &str = "PALISADE_RL_FLEET_ALGORITHM";
const ENV_MODE: &str = "PALISADE_RL_FLEET_MODE";
const ENV_QUOTA: &str = "PALISADE_RL_FLEET_QUOTA";
const ENV_DOOMED: &str = "PALISADE_RL_FLEET_DOOMED";

fn algorithm(name: &str) -> Algorithm {
    Algorithm::ALL
        .into_iter()
        .find(|a| a.as_str() == name)
        .expect("an algorithm name")
}

fn policy(case: &str, alg: Algorithm, quota: u64) -> Policy {
    Policy::single(format!("fleet-{case}"), alg, Quota::per_hour(quota)).unwrap()
}

fn config(mode: &str) -> LeaseConfig {
    match mode {
        "strict" => LeaseConfig::strict(),
        "tolerant" => LeaseConfig::default(),
        // Leases that outlive the kill: what the killed instance held stays held.
        "kill" => LeaseConfig::default().max_lease(Duration::from_secs(60)),
        other => panic!("unknown mode {other}"),
    }
}

#[derive(Debug, Default)]
struct Stats {
    admitted: AtomicU64,
    local: AtomicU64,
}

/// Decide at full speed until the store itself denies while this instance holds nothing
/// (a denial repeated locally, or one with allowance still held, goes on), or `stop`.
async fn worker(
    store: LeasedStore,
    policy: Policy,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
    until: u64,
) {
    while !stop.load(Ordering::Relaxed) && stats.admitted.load(Ordering::Relaxed) < until {
        assert!(
            Instant::now() < deadline,
            "the fleet never ran the quota out"
        );
        let d = store
            .acquire("hot", &policy, 1)
            .await
            .expect("Redis answers");
        if d.allowed {
            stats.admitted.fetch_add(1, Ordering::Relaxed);
            if d.source == DecisionSource::Lease {
                stats.local.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        if d.source == DecisionSource::Store && store.allowance("hot", &policy) == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// The body of each instance: started by the tests below, ignored on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "one instance of the fleet tests, started by them in a process of its own"]
async fn fleet_child() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).expect("the child's only recorder");
    let var = |name: &str| std::env::var(name).expect("started by a fleet test");
    let (url, prefix, case) = (var(ENV_URL), var(ENV_PREFIX), var(ENV_CASE));
    let alg = algorithm(&var(ENV_ALG));
    let mode = var(ENV_MODE);
    let quota: u64 = var(ENV_QUOTA).parse().unwrap();
    let doomed = std::env::var(ENV_DOOMED).is_ok();
    let policy = policy(&case, alg, quota);
    let pool = deadpool_redis::Config::from_url(url.as_str())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let inner = RedisStore::new(pool)
        .with_prefix(&prefix)
        .with_clock(frozen());
    let store = LeasedStore::builder(inner)
        .config(if mode == "kill" && !doomed {
            // The survivors lease as in production: a denial is repeated locally for at most
            // `max_lease`, and with 60 s leases every survivor's tasks spun on their repeated
            // denials for a minute after the quota ran out (16 processes on 2 CPUs, past the
            // 120 s deadline once under load).
            config("tolerant")
        } else {
            config(&mode)
        })
        .build()
        .unwrap();

    // The barrier: every instance starts together.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let barrier = format!("{prefix}barrier:{case}");
    let _: u64 = redis::cmd("INCR")
        .arg(&barrier)
        .query_async(&mut conn)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n: u64 = redis::cmd("GET")
            .arg(&barrier)
            .query_async(&mut conn)
            .await
            .unwrap();
        if n as usize >= INSTANCES {
            break;
        }
        assert!(Instant::now() < deadline, "the fleet never gathered");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let go = format!("{prefix}go:{case}");
    if doomed {
        // Run until an eighth of the quota is admitted here and a lease is held, then stop,
        // report, let the others go, and wait for the SIGKILL.
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            tasks.push(tokio::spawn(worker(
                store.clone(),
                policy.clone(),
                Arc::clone(&stats),
                Arc::clone(&stop),
                deadline,
                quota / 8,
            )));
        }
        for t in tasks {
            t.await.unwrap();
        }
        store.settled().await;
        // Hold a lease when killed: a request that finds no allowance leases one.
        while store.allowance("hot", &policy) == 0 {
            assert!(
                Instant::now() < deadline,
                "the doomed instance never held a lease"
            );
            let d = store
                .acquire("hot", &policy, 1)
                .await
                .expect("Redis answers");
            if d.allowed {
                stats.admitted.fetch_add(1, Ordering::Relaxed);
            }
            store.settled().await;
        }
        // The others may go before this instance reports: the test kills it on the report,
        // and nothing is spent here any more.
        let _: () = redis::cmd("SET")
            .arg(&go)
            .arg(1)
            .query_async(&mut conn)
            .await
            .unwrap();
        println!(
            "CHILD doomed admitted={} held={}",
            stats.admitted.load(Ordering::Relaxed),
            store.allowance("hot", &policy)
        );
        tokio::time::sleep(Duration::from_secs(600)).await;
        unreachable!("killed before");
    }
    if mode == "kill" {
        // The others start once the doomed instance holds its lease (and is being killed).
        loop {
            let set: Option<u64> = redis::cmd("GET")
                .arg(&go)
                .query_async(&mut conn)
                .await
                .unwrap();
            if set.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the doomed instance never reported"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    loop {
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            tasks.push(tokio::spawn(worker(
                store.clone(),
                policy.clone(),
                Arc::clone(&stats),
                Arc::clone(&stop),
                deadline,
                u64::MAX,
            )));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // A lease asked in the background may still land: spend it too.
        store.settled().await;
        if store.allowance("hot", &policy) == 0 {
            break;
        }
    }
    store.release_all().await.unwrap();
    let dropped: u64 = palisade_testkit::metric_lines(&snapshotter)
        .iter()
        .filter(|l| {
            l.starts_with("palisade_ratelimit_lease_units_total{") && l.contains("fate=dropped")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum();
    println!(
        "CHILD admitted={} local={} dropped={dropped}",
        stats.admitted.load(Ordering::Relaxed),
        stats.local.load(Ordering::Relaxed),
    );
}

/// What one instance reported.
#[derive(Debug, Default, Clone, Copy)]
struct Report {
    admitted: u64,
    local: u64,
    dropped: u64,
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        .parse()
        .unwrap()
}

fn spawn(
    url: &str,
    prefix: &str,
    case: &str,
    alg: Algorithm,
    mode: &str,
    quota: u64,
    doomed: bool,
) -> Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--ignored",
        "--exact",
        "fleet_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ENV_URL, url)
    .env(ENV_PREFIX, prefix)
    .env(ENV_CASE, case)
    .env(ENV_ALG, alg.as_str())
    .env(ENV_MODE, mode)
    .env(ENV_QUOTA, quota.to_string())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if doomed {
        c.env(ENV_DOOMED, "1");
    }
    c.spawn().unwrap()
}

fn finish(child: Child) -> Report {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "an instance failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        // The harness may print `test fleet_child ... ` on the same line first.
        .find_map(|l| l.find("CHILD admitted=").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no report:\n{stdout}"));
    Report {
        admitted: field(line, "admitted"),
        local: field(line, "local"),
        dropped: field(line, "dropped"),
    }
}

/// What Redis has left of the quota, in its frozen time.
async fn left(url: &str, prefix: &str, policy: &Policy) -> u64 {
    let pool = deadpool_redis::Config::from_url(url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let store = RedisStore::new(pool)
        .with_prefix(prefix)
        .with_clock(frozen());
    store
        .peek("hot", policy)
        .await
        .unwrap()
        .quota(0)
        .unwrap()
        .remaining
}

/// Four processes on one key for `alg`, strict then tolerant.
async fn fleet(alg: Algorithm) {
    let redis = test_redis().unwrap();
    let url = redis.url().to_owned();
    let prefix = redis.prefix().as_str().to_owned();
    let quota = if alg == Algorithm::SlidingWindowLog {
        4_000
    } else {
        20_000
    };
    for mode in ["strict", "tolerant"] {
        let case = format!("{}-{mode}", alg.as_str());
        let (url2, prefix2, case2) = (url.clone(), prefix.clone(), case.clone());
        let reports: Vec<Report> = tokio::task::spawn_blocking(move || {
            let children: Vec<Child> = (0..INSTANCES)
                .map(|_| spawn(&url2, &prefix2, &case2, alg, mode, quota, false))
                .collect();
            children.into_iter().map(finish).collect()
        })
        .await
        .unwrap();
        let p = policy(&case, alg, quota);
        let left = left(&url, &prefix, &p).await;
        let admitted: u64 = reports.iter().map(|r| r.admitted).sum();
        let local: u64 = reports.iter().map(|r| r.local).sum();
        let dropped: u64 = reports.iter().map(|r| r.dropped).sum();
        println!(
            "{case}: admitted {admitted} of {quota} ({local} from leases), dropped {dropped}, left {left}: {reports:?}"
        );
        assert!(
            admitted <= quota,
            "{case}: {admitted} admitted, over the quota"
        );
        assert_eq!(
            admitted + dropped + left,
            quota,
            "{case}: units unaccounted for: {reports:?}"
        );
        let leased = match alg {
            Algorithm::SlidingWindowLog => false,
            Algorithm::Gcra | Algorithm::TokenBucket => mode == "tolerant",
            _ => true,
        };
        if leased {
            assert!(
                local * 2 > admitted,
                "{case}: only {local} of {admitted} decided from leases"
            );
        } else {
            assert_eq!(local, 0, "{case}: leased");
        }
        if mode == "strict" {
            assert_eq!(
                admitted, quota,
                "{case}: strict mode admits exactly the quota"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_gcra() {
    fleet(Algorithm::Gcra).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_token_bucket() {
    fleet(Algorithm::TokenBucket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_fixed_window() {
    fleet(Algorithm::FixedWindow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_sliding_window_counter() {
    fleet(Algorithm::SlidingWindowCounter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_sliding_window_log() {
    fleet(Algorithm::SlidingWindowLog).await;
}

/// Four processes on one key; one is killed (SIGKILL) mid-window while it holds a lease
/// (it runs first, and the others start as it is killed). The survivors run the quota out
/// within the killed lease's TTL (Redis' time is frozen here, so its ledger record never
/// expires: `tests/fleet_live.rs` runs the reclaim on Redis' time): everything is accounted
/// for, the killed instance's allowance is the only quota lost (it stays counted as spent
/// until reclaimed), and it was at most two leases (a book renews in the background only
/// while it holds fewer than two), each at most a tenth of what remained (2,000 + 1,800 of
/// 20,000). (Before that cap a killed instance was seen holding 4,392 units: a renewal per
/// round trip while the first lease still held most of its units.)
async fn killed(alg: Algorithm) {
    let redis = test_redis().unwrap();
    let url = redis.url().to_owned();
    let prefix = redis.prefix().as_str().to_owned();
    let quota = 20_000;
    let case = format!("{}-kill", alg.as_str());
    let (url2, prefix2, case2) = (url.clone(), prefix.clone(), case.clone());
    let (doomed_admitted, held, reports) = tokio::task::spawn_blocking(move || {
        let mut doomed = spawn(&url2, &prefix2, &case2, alg, "kill", quota, true);
        let survivors: Vec<Child> = (1..INSTANCES)
            .map(|_| spawn(&url2, &prefix2, &case2, alg, "kill", quota, false))
            .collect();
        let mut lines = BufReader::new(doomed.stdout.take().unwrap()).lines();
        let line = loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("CHILD doomed") => break l,
                Some(Ok(_)) => {}
                other => panic!("the doomed instance ended without reporting: {other:?}"),
            }
        };
        doomed.kill().unwrap(); // SIGKILL: nothing is given back
        let status = doomed.wait().unwrap();
        assert!(!status.success());
        let reports: Vec<Report> = survivors.into_iter().map(finish).collect();
        (field(&line, "admitted"), field(&line, "held"), reports)
    })
    .await
    .unwrap();
    let p = policy(&case, alg, quota);
    let left = left(&url, &prefix, &p).await;
    let survived: u64 = reports.iter().map(|r| r.admitted).sum();
    let dropped: u64 = reports.iter().map(|r| r.dropped).sum();
    println!(
        "{case}: killed instance admitted {doomed_admitted} and held {held}; survivors admitted {survived}, dropped {dropped}; left {left}"
    );
    assert!(held > 0, "{case}: the killed instance held nothing");
    assert!(
        survived + doomed_admitted <= quota,
        "{case}: over the quota"
    );
    assert_eq!(
        survived + doomed_admitted + held + dropped + left,
        quota,
        "{case}: units unaccounted for"
    );
    assert!(
        held <= quota - quota * 81 / 100,
        "{case}: the killed instance held {held}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_with_a_lease_gcra() {
    killed(Algorithm::Gcra).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_with_a_lease_token_bucket() {
    killed(Algorithm::TokenBucket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_with_a_lease_fixed_window() {
    killed(Algorithm::FixedWindow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_with_a_lease_sliding_window_counter() {
    killed(Algorithm::SlidingWindowCounter).await;
}
