//! The fleet on Redis' own time (`TIME`, as in production), where `tests/fleet.rs` freezes
//! it: separate processes (this test binary started again with `--ignored --exact
//! live_child`), each with its own `LeasedStore` through one Redis.
//!
//! * **Reclaim**: an instance killed (SIGKILL) with a lease out does not strand its unspent
//!   units beyond the lease's TTL (its lifetime plus the grace, `max_lease`): the key's
//!   ledger in Redis holds its record until then, and once it passed, survivors started
//!   afterwards get the whole remaining quota, for every leased algorithm.
//! * **Short windows**: four instances at full speed on a limit of one-second windows for
//!   a few seconds, so leases end, are renewed ahead of need and given back as in
//!   production: no window admits more than its limit (fixed window, sliding counter), the
//!   buckets stay within the stated bound over the whole run, and most decisions are
//!   local.
//!
//! Redis and the processes share this machine's clock, so a child can tell which window a
//! decision belongs to from its `reset`.
#![cfg(feature = "redis")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_ratelimit::{
    Algorithm, DecisionSource, LeaseConfig, LeasedStore, Policy, Quota, RedisConnection,
    RedisStore, Store,
};
use palisade_testkit::{deadpool_redis, redis, test_redis};

const ENV_URL: &str = "PALISADE_RL_LIVE_URL";
const ENV_PREFIX: &str = "PALISADE_RL_LIVE_PREFIX";
const ENV_CASE: &str = "PALISADE_RL_LIVE_CASE";
const ENV_ALG: &str = "PALISADE_RL_LIVE_ALGORITHM";
const ENV_ROLE: &str = "PALISADE_RL_LIVE_ROLE";
const ENV_PEERS: &str = "PALISADE_RL_LIVE_PEERS";

/// The reclaim tests' lease lifetime; their records are reclaimed twice that after a grant.
const MAX_LEASE: Duration = Duration::from_secs(1);
/// The reclaim tests' quota, per day: a bucket refills one unit per 4.32 s.
const DAY_QUOTA: u64 = 20_000;
/// The short-window test: a limit per second, and how long the fleet runs.
const SECOND_QUOTA: u64 = 2_000;
const RUN: Duration = Duration::from_secs(3);
const TASKS: usize = 8;

fn algorithm(name: &str) -> Algorithm {
    Algorithm::ALL
        .into_iter()
        .find(|a| a.as_str() == name)
        .expect("an algorithm name")
}

fn policy(case: &str, alg: Algorithm) -> Policy {
    let quota = if case.ends_with("-live") {
        Quota::per_second(SECOND_QUOTA)
    } else {
        Quota::per_day(DAY_QUOTA)
    };
    Policy::single(format!("live-{case}"), alg, quota).unwrap()
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A connection that waits for every reply: with the client's 500 ms reply timeout a loaded
/// machine made requests fail (the worker panics) and lease calls that did reach Redis lose
/// their grant, which the exact balances below would count as stranded. How a failed call
/// is accounted for is tests/leased.rs's business.
async fn patient(url: &str) -> RedisStore {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(None);
    let conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    RedisStore::from_connection(RedisConnection::Multiplexed(conn))
}

async fn store(url: &str, prefix: &str, config: LeaseConfig) -> LeasedStore {
    let inner = patient(url).await.with_prefix(prefix);
    LeasedStore::builder(inner).config(config).build().unwrap()
}

/// Units admitted, per window for the window algorithms (`0` for buckets), and the first
/// and last admission (local µs, the machine's clock).
#[derive(Debug, Default)]
struct Tally {
    per_window: BTreeMap<u64, u64>,
    local: u64,
    first: u64,
    last: u64,
}

impl Tally {
    fn total(&self) -> u64 {
        self.per_window.values().sum()
    }
}

/// Which window an admitted decision counted in: its quota resets at the end of the window
/// (fixed window) or one window later (sliding counter: the window's count weighs on the
/// next); that end, read against this machine's clock, is within a round trip of a window
/// boundary, so rounding finds it.
fn window_of(alg: Algorithm, d: &palisade_ratelimit::Decision, period: Duration, now: u64) -> u64 {
    let q = d.quota(0).expect("a counted decision");
    let p = period.as_micros() as u64;
    let end = now + q.reset.as_micros() as u64;
    let boundary = (end + p / 2) / p;
    match alg {
        Algorithm::FixedWindow => boundary - 1,
        Algorithm::SlidingWindowCounter => boundary - 2,
        _ => 0,
    }
}

/// Decide at full speed until `stop`, or (`until_out`) until the store itself denies while
/// this instance holds nothing.
async fn worker(
    store: LeasedStore,
    policy: Policy,
    tally: Arc<parking_lot::Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    until_out: bool,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "never ran the quota out");
        let d = store
            .acquire("hot", &policy, 1)
            .await
            .expect("Redis answers");
        let now = now_micros();
        if d.allowed {
            let w = window_of(
                policy.algorithm(),
                &d,
                policy.quotas()[0].quota.period(),
                now,
            );
            let mut t = tally.lock();
            *t.per_window.entry(w).or_default() += 1;
            if d.source == DecisionSource::Lease {
                t.local += 1;
            }
            if t.first == 0 {
                t.first = now;
            }
            t.last = now;
            continue;
        }
        if until_out && d.source == DecisionSource::Store && store.allowance("hot", &policy) == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
}

async fn run_tasks(
    store: &LeasedStore,
    policy: &Policy,
    tally: &Arc<parking_lot::Mutex<Tally>>,
    stop: &Arc<AtomicBool>,
    until_out: bool,
) {
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        tasks.push(tokio::spawn(worker(
            store.clone(),
            policy.clone(),
            Arc::clone(tally),
            Arc::clone(stop),
            until_out,
        )));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// A counter's total over `lines` (one snapshot: taking one resets the counters, so every
/// figure of a report must come from the same).
fn metric(lines: &[String], name: &str, label: &str) -> u64 {
    lines
        .iter()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

/// The body of each instance: started by the tests below, ignored on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "one instance of the live fleet tests, started by them in a process of its own"]
async fn live_child() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).expect("the child's only recorder");
    let var = |name: &str| std::env::var(name).expect("started by a live fleet test");
    let (url, prefix, case, role) = (var(ENV_URL), var(ENV_PREFIX), var(ENV_CASE), var(ENV_ROLE));
    let alg = algorithm(&var(ENV_ALG));
    let peers: usize = var(ENV_PEERS).parse().unwrap();
    let policy = policy(&case, alg);
    let config = match role.as_str() {
        "fleet" => LeaseConfig::default(),
        // Sparse keys' leases (a first lease) no longer than the others: the record's TTL is
        // then 2 × MAX_LEASE.
        _ => LeaseConfig::default()
            .max_lease(MAX_LEASE)
            .max_sparse_lease(MAX_LEASE),
    };
    let store = store(&url, &prefix, config).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();

    // The barrier: the instances of one role start together.
    let barrier = format!("{prefix}barrier:{case}:{role}");
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
        if n as usize >= peers {
            break;
        }
        assert!(Instant::now() < deadline, "the fleet never gathered");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let tally = Arc::new(parking_lot::Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    match role.as_str() {
        "doomed" => {
            // An eighth of the quota, then hold a lease, report and wait for the SIGKILL.
            let stopper = Arc::clone(&stop);
            let watch = Arc::clone(&tally);
            let watcher = tokio::spawn(async move {
                while watch.lock().total() < DAY_QUOTA / 8 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                stopper.store(true, Ordering::Relaxed);
            });
            run_tasks(&store, &policy, &tally, &stop, false).await;
            watcher.await.unwrap();
            store.settled().await;
            while store.allowance("hot", &policy) == 0 {
                assert!(Instant::now() < deadline, "never held a lease");
                let d = store
                    .acquire("hot", &policy, 1)
                    .await
                    .expect("Redis answers");
                if d.allowed {
                    let mut t = tally.lock();
                    *t.per_window.entry(0).or_default() += 1;
                }
                store.settled().await;
            }
            println!(
                "CHILD doomed admitted={} held={}",
                tally.lock().total(),
                store.allowance("hot", &policy)
            );
            tokio::time::sleep(Duration::from_secs(600)).await;
            unreachable!("killed before");
        }
        "survivor" => run_tasks(&store, &policy, &tally, &stop, true).await,
        "fleet" => {
            let stopper = Arc::clone(&stop);
            let timer = tokio::spawn(async move {
                tokio::time::sleep(RUN).await;
                stopper.store(true, Ordering::Relaxed);
            });
            run_tasks(&store, &policy, &tally, &stop, false).await;
            timer.await.unwrap();
        }
        other => panic!("unknown role {other}"),
    }
    store.release_all().await.unwrap();
    let t = tally.lock();
    let lines = palisade_testkit::metric_lines(&snapshotter);
    let windows: Vec<String> = t
        .per_window
        .iter()
        .map(|(w, n)| format!("{w}:{n}"))
        .collect();
    println!(
        "CHILD admitted={} local={} first={} last={} granted_calls={} granted={} returned={} \
         dropped={} refilled={} windows={}",
        t.total(),
        t.local,
        t.first,
        t.last,
        metric(
            &lines,
            "palisade_ratelimit_lease_calls_total",
            "outcome=granted"
        ),
        metric(
            &lines,
            "palisade_ratelimit_lease_units_total",
            "fate=granted"
        ),
        metric(
            &lines,
            "palisade_ratelimit_lease_units_total",
            "fate=returned"
        ),
        metric(
            &lines,
            "palisade_ratelimit_lease_units_total",
            "fate=dropped"
        ),
        metric(
            &lines,
            "palisade_ratelimit_lease_units_total",
            "fate=refilled"
        ),
        windows.join(","),
    );
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        .parse()
        .unwrap()
}

fn spawn(url: &str, prefix: &str, case: &str, alg: Algorithm, role: &str, peers: usize) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "live_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_URL, url)
        .env(ENV_PREFIX, prefix)
        .env(ENV_CASE, case)
        .env(ENV_ALG, alg.as_str())
        .env(ENV_ROLE, role)
        .env(ENV_PEERS, peers.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[derive(Debug, Default, Clone)]
struct Report {
    admitted: u64,
    local: u64,
    first: u64,
    last: u64,
    granted_calls: u64,
    /// Units granted, and of them given back, dropped and not given back (refilled).
    granted: u64,
    returned: u64,
    dropped: u64,
    refilled: u64,
    windows: BTreeMap<u64, u64>,
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
        .find_map(|l| l.find("CHILD admitted=").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no report:\n{stdout}"));
    let windows = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("windows="))
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|p| {
            let (w, n) = p.split_once(':').unwrap();
            (w.parse().unwrap(), n.parse().unwrap())
        })
        .collect();
    Report {
        admitted: field(line, "admitted"),
        local: field(line, "local"),
        first: field(line, "first"),
        last: field(line, "last"),
        granted_calls: field(line, "granted_calls"),
        granted: field(line, "granted"),
        returned: field(line, "returned"),
        dropped: field(line, "dropped"),
        refilled: field(line, "refilled"),
        windows,
    }
}

/// The key's ledger in Redis: owner → units recorded.
async fn ledger(url: &str, prefix: &str, policy: &Policy) -> BTreeMap<String, u64> {
    let pool = deadpool_redis::Config::from_url(url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let first = RedisStore::new(pool)
        .with_prefix(prefix)
        .keys_for("hot", policy)[0]
        .clone();
    let at = first.find("}:").expect("a hash-tagged key") + 2;
    let key = format!("{}#leases", &first[..at]);
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let all: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    all.into_iter()
        .filter(|(f, _)| f != "due" && f != "exp")
        .map(|(f, v)| (f, v.split(':').next().unwrap().parse().unwrap()))
        .collect()
}

/// What Redis has left of the quota, on its own time.
async fn left(url: &str, prefix: &str, policy: &Policy) -> u64 {
    patient(url)
        .await
        .with_prefix(prefix)
        .peek("hot", policy)
        .await
        .unwrap()
        .quota(0)
        .unwrap()
        .remaining
}

/// Waits until the UTC day has at least `need` left (the per-day windows must not roll
/// during a test).
async fn clear_of_midnight(need: Duration) {
    let day = 86_400_000_000u64;
    let left = day - now_micros() % day;
    if left < need.as_micros() as u64 {
        tokio::time::sleep(Duration::from_micros(left + 1_000_000)).await;
    }
}

/// One instance runs an eighth of a per-day quota, takes a lease and is killed while
/// holding it. Its record stays in the key's ledger until the TTL (lifetime plus grace) has
/// passed; then three survivors run the quota out and get all of it but what the killed
/// instance admitted (buckets: less what they refilled meanwhile, a few units).
async fn reclaimed(alg: Algorithm) {
    clear_of_midnight(Duration::from_secs(120)).await;
    let redis = test_redis().unwrap();
    let url = redis.url().to_owned();
    let prefix = redis.prefix().as_str().to_owned();
    let case = format!("{}-reclaim", alg.as_str());
    let p = policy(&case, alg);
    let (url2, prefix2, case2) = (url.clone(), prefix.clone(), case.clone());
    let (doomed_admitted, held, killed_at) = tokio::task::spawn_blocking(move || {
        let mut doomed = spawn(&url2, &prefix2, &case2, alg, "doomed", 1);
        let mut lines = BufReader::new(doomed.stdout.take().unwrap()).lines();
        let line = loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("CHILD doomed") => break l,
                Some(Ok(_)) => {}
                other => panic!("the doomed instance ended without reporting: {other:?}"),
            }
        };
        doomed.kill().unwrap(); // SIGKILL: nothing is given back
        let killed_at = Instant::now();
        assert!(!doomed.wait().unwrap().success());
        (field(&line, "admitted"), field(&line, "held"), killed_at)
    })
    .await
    .unwrap();
    assert!(held > 0, "{case}: the killed instance held nothing");
    // Within the TTL its record stands: what it held when it last called Redis for the key,
    // which is what it held when killed plus what it admitted since (unreported).
    let recorded = ledger(&url, &prefix, &p).await;
    assert!(
        killed_at.elapsed() < 2 * MAX_LEASE,
        "{case}: the ledger was read too late to see the record"
    );
    assert_eq!(
        recorded.len(),
        1,
        "{case}: one record, the killed instance's: {recorded:?}"
    );
    let (owner, record) = recorded.into_iter().next().unwrap();
    assert!(record >= held, "{case}: recorded {record} < held {held}");
    let unreported = record - held;
    // At most the two leases an instance holds at once, each at most a tenth of what was left.
    assert!(
        unreported <= DAY_QUOTA / 5,
        "{case}: {unreported} admitted unreported"
    );
    let before = left(&url, &prefix, &p).await;
    // Past the TTL (lifetime + grace = 2 × max_lease after its last grant).
    tokio::time::sleep(
        (2 * MAX_LEASE + Duration::from_millis(300)).saturating_sub(killed_at.elapsed()),
    )
    .await;
    let started = Instant::now();
    let (url2, prefix2, case2) = (url.clone(), prefix.clone(), case.clone());
    let reports: Vec<Report> = tokio::task::spawn_blocking(move || {
        let survivors: Vec<Child> = (0..3)
            .map(|_| spawn(&url2, &prefix2, &case2, alg, "survivor", 3))
            .collect();
        survivors.into_iter().map(finish).collect()
    })
    .await
    .unwrap();
    let left = left(&url, &prefix, &p).await;
    let survived: u64 = reports.iter().map(|r| r.admitted).sum();
    let returned: u64 = reports.iter().map(|r| r.returned).sum();
    println!(
        "{case}: killed instance admitted {doomed_admitted}, held {held}, recorded {record} ({unreported} admitted since its last call); Redis had {before} left; survivors admitted {survived}, returned {returned}; left {left}"
    );
    assert!(
        !ledger(&url, &prefix, &p).await.contains_key(&owner),
        "{case}: the killed instance's record is still in the ledger"
    );
    // The record was given back whole: what it admitted unreported is admitted again (the
    // stated cost of a crash), nothing more.
    let admitted = survived + doomed_admitted;
    let refill = match alg {
        // A bucket refills one unit per 4.32 s.
        Algorithm::Gcra | Algorithm::TokenBucket => (started.elapsed().as_secs() + 12) / 4,
        _ => 0,
    };
    assert!(
        admitted <= DAY_QUOTA + unreported + refill,
        "{case}: {admitted} admitted, over the quota by more than the unreported {unreported}"
    );
    // Nothing stranded: the quota is spent but for a bucket's give-backs, each less what it
    // refilled since its grant (a unit or so per lease given back).
    let total = admitted + left;
    let slack = match alg {
        Algorithm::Gcra | Algorithm::TokenBucket => 40,
        _ => 0,
    };
    assert!(
        total + slack >= DAY_QUOTA + unreported,
        "{case}: {} units of the quota stranded (held {held})",
        DAY_QUOTA + unreported - total
    );
    assert!(
        held > slack,
        "{case}: the killed instance's lease ({held}) is too small to tell"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_reclaimed_gcra() {
    reclaimed(Algorithm::Gcra).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_reclaimed_token_bucket() {
    reclaimed(Algorithm::TokenBucket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_reclaimed_fixed_window() {
    reclaimed(Algorithm::FixedWindow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_reclaimed_sliding_window_counter() {
    reclaimed(Algorithm::SlidingWindowCounter).await;
}

/// Four instances at full speed for three seconds on `SECOND_QUOTA` per second, on Redis'
/// time, default configuration.
async fn live(alg: Algorithm) {
    let redis = test_redis().unwrap();
    let url = redis.url().to_owned();
    let prefix = redis.prefix().as_str().to_owned();
    let case = format!("{}-live", alg.as_str());
    let p = policy(&case, alg);
    let (url2, prefix2, case2) = (url.clone(), prefix.clone(), case.clone());
    let reports: Vec<Report> = tokio::task::spawn_blocking(move || {
        let children: Vec<Child> = (0..4)
            .map(|_| spawn(&url2, &prefix2, &case2, alg, "fleet", 4))
            .collect();
        children.into_iter().map(finish).collect()
    })
    .await
    .unwrap();
    let admitted: u64 = reports.iter().map(|r| r.admitted).sum();
    let local: u64 = reports.iter().map(|r| r.local).sum();
    let granted: u64 = reports.iter().map(|r| r.granted_calls).sum();
    let granted_units: u64 = reports.iter().map(|r| r.granted).sum();
    let returned: u64 = reports.iter().map(|r| r.returned).sum();
    let dropped: u64 = reports.iter().map(|r| r.dropped).sum();
    let refilled: u64 = reports.iter().map(|r| r.refilled).sum();
    let first = reports
        .iter()
        .map(|r| r.first)
        .filter(|&f| f > 0)
        .min()
        .unwrap();
    let last = reports.iter().map(|r| r.last).max().unwrap();
    let span = last - first;
    let mut windows: BTreeMap<u64, u64> = BTreeMap::new();
    for r in &reports {
        for (w, n) in &r.windows {
            *windows.entry(*w).or_default() += n;
        }
    }
    println!(
        "{case}: admitted {admitted} in {span} µs ({local} from leases, {granted} leases granted: {granted_units} units, {returned} given back, {dropped} dropped, {refilled} refilled); per window {windows:?}"
    );
    let config = LeaseConfig::default();
    match alg {
        Algorithm::FixedWindow | Algorithm::SlidingWindowCounter => {
            for (w, n) in &windows {
                assert!(*n <= SECOND_QUOTA, "{case}: window {w} admitted {n}");
            }
            assert!(
                windows.len() >= 3,
                "{case}: ran over {} windows",
                windows.len()
            );
        }
        _ => {
            // Over the run the exact bucket admits at most its burst plus what it refills;
            // the stated bound adds overshoot_units.
            let interval = 1_000_000 / SECOND_QUOTA;
            let bound = SECOND_QUOTA + span.div_ceil(interval) + 1 + config.overshoot_units(&p)[0];
            assert!(
                admitted <= bound,
                "{case}: {admitted} admitted, bound {bound}"
            );
        }
    }
    // The fleet kept the limit busy (a quarter at least: the tests of this binary run at
    // once on a loaded machine) and decided from leases, renewing them.
    let exact = SECOND_QUOTA as f64 * (1.0 + span as f64 / 1e6);
    assert!(
        admitted as f64 >= 0.25 * exact,
        "{case}: only {admitted} of about {exact} admitted"
    );
    // Decided from leases: some decisions are local, and every one of them spent a unit
    // Redis granted (what was granted is spent locally, spent towards a request at Redis,
    // given back, dropped or left to the refill; nothing is held after `release_all`).
    // How *many* are local is the machine's speed, not a property: leases are small where
    // the limit is nearly spent all the time (a bucket's last 1 % of a second, a sliding
    // counter's window weighed down by the previous one), so the local share follows how
    // fast each instance spends against the round trip (quiet runs: a tenth or more; a
    // loaded CI run saw 9.98 % for GCRA, under the twentieth this test used to require
    // on a busier machine). A fixed window's start frees the whole limit, so there most is
    // local on a quiet machine, but the share is still the machine's speed (it used to be
    // required, `local * 2 > admitted`); what holds whatever the load is that a window
    // algorithm's unspent units go back to Redis or are dropped, never left to a refill.
    assert!(local > 0, "{case}: nothing decided from leases");
    assert!(
        local + returned + dropped + refilled <= granted_units,
        "{case}: {local} local decisions, {returned} given back, {dropped} dropped and \
         {refilled} refilled out of {granted_units} units granted"
    );
    if matches!(
        alg,
        Algorithm::FixedWindow | Algorithm::SlidingWindowCounter
    ) {
        assert_eq!(
            refilled, 0,
            "{case}: a window algorithm's units left to a refill"
        );
    }
    assert!(granted >= 4 * 3, "{case}: only {granted} leases granted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_time_fleet_gcra() {
    live(Algorithm::Gcra).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_time_fleet_token_bucket() {
    live(Algorithm::TokenBucket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_time_fleet_fixed_window() {
    live(Algorithm::FixedWindow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_time_fleet_sliding_window_counter() {
    live(Algorithm::SlidingWindowCounter).await;
}
