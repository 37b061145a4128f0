//! palisade-ratelimit fleet bench (issue 19): four processes deciding at full speed through
//! one Redis, each through a `RateLimiter` over the memory store (each process alone: the
//! speed a fleet-wide limit is measured against), the plain `RedisStore` (one round trip per
//! decision), a `LeasedStore` over it with the default configuration and one with 10 s
//! leases (`leased10s`), on one hot key and on 10,000 keys, all in one run; then the
//! over-admission of four leased processes on a binding GCRA quota, next to plain Redis.
//!
//! ```sh
//! cargo bench -p palisade --bench ratelimit_fleet
//! FLEET_SECONDS=5 FLEET_IN_FLIGHT=32 FLEET_WARMUP=20 cargo bench -p palisade --bench ratelimit_fleet
//! ```
//! It starts its own `redis-server` through the test kit, or uses `REDIS_URL`. Each process
//! warms every key up with one decision (`FLEET_IN_FLIGHT` tasks at once, timed: a key's
//! first decision), then runs `FLEET_IN_FLIGHT` (default 16) tasks on a two-thread tokio
//! runtime for `FLEET_SECONDS` (default 2) from a start time the parent gives, and reports its decisions
//! and the latency of every 4th one; the parent adds the decisions up and takes the p50/p99
//! of all the samples. This is a throughput harness, not a criterion bench: criterion cannot
//! time four processes at once. The binary re-executes itself for the children
//! (`FLEET_CHILD` set).
//!
//! The 10,000-key rows run twice: cold (as above: the row starts right after each key's
//! first decision, so it holds the keys' start-up lease traffic) and steady (`/warm`: the
//! same keys decided at full speed for `FLEET_WARMUP` seconds, default 10, before the row
//! is timed, as a service that has run for a while), timed over `FLEET_WARM_SECONDS`
//! (default 10: a sparse key's whole lease cycle, `max_sparse_lease`, so that a row does
//! not land on or between the renewal waves of keys that all started at once).
//!
//! A second table says where the shared store's work came from in each row's timed part:
//! per key, process and second, the lease calls answered (those a request waited on, the
//! rest renewals ahead of need), the give-backs sent, the units per grant, the requests the
//! limiter gave up on (its 50 ms timeout), and Redis's own time in commands (`INFO
//! commandstats` through `redis-cli`, read by the parent at the row's start and end: the
//! share of one core) and script calls per second. Each child counts with a metrics
//! recorder of its own (the lease counters and the limiter's timeouts; every other metric a
//! no-op), installed in every row alike.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade::ratelimit::{
    Algorithm, DecisionSource, LeaseConfig, LeasedStore, MemoryStore, Policy, Quota, RateLimiter,
    RedisStore,
};

const PROCESSES: usize = 4;

/// What each child counts of its store's work (a metrics recorder: the lease counters of
/// `LeasedStore` and the limiter's backend errors; every other metric is a no-op, in every
/// row alike): lease calls answered, give-backs sent back (one per ended lease with units
/// left), the units granted and returned, and requests the limiter gave up on (timeouts).
#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    gives: AtomicU64,
    granted: AtomicU64,
    returned: AtomicU64,
    timeouts: AtomicU64,
}

static COUNTS: Counts = Counts {
    calls: AtomicU64::new(0),
    gives: AtomicU64::new(0),
    granted: AtomicU64::new(0),
    returned: AtomicU64::new(0),
    timeouts: AtomicU64::new(0),
};

impl Counts {
    fn snapshot(&self) -> [u64; 5] {
        [
            self.calls.load(Ordering::Relaxed),
            self.gives.load(Ordering::Relaxed),
            self.granted.load(Ordering::Relaxed),
            self.returned.load(Ordering::Relaxed),
            self.timeouts.load(Ordering::Relaxed),
        ]
    }
}

/// Which of [`COUNTS`] a counter feeds: (how many increments, how many units).
struct Tally(Option<&'static AtomicU64>, Option<&'static AtomicU64>);

impl metrics::CounterFn for Tally {
    fn increment(&self, value: u64) {
        if let Some(n) = self.0 {
            n.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(u) = self.1 {
            u.fetch_add(value, Ordering::Relaxed);
        }
    }
    fn absolute(&self, _: u64) {}
}

struct Counting;

impl metrics::Recorder for Counting {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let label = |name: &str| {
            key.labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
        };
        let tally = match key.name() {
            "palisade_ratelimit_lease_calls_total" => Tally(Some(&COUNTS.calls), None),
            "palisade_ratelimit_lease_units_total" => match label("fate").as_deref() {
                Some("granted") => Tally(None, Some(&COUNTS.granted)),
                Some("returned") => Tally(Some(&COUNTS.gives), Some(&COUNTS.returned)),
                _ => return metrics::Counter::noop(),
            },
            "palisade_ratelimit_backend_errors_total"
                if label("kind").as_deref() == Some("timeout") =>
            {
                Tally(Some(&COUNTS.timeouts), None)
            }
            _ => return metrics::Counter::noop(),
        };
        metrics::Counter::from_arc(Arc::new(tally))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// Redis's own time in commands (µs, all `cmdstat_*` lines of `INFO commandstats`) and the
/// script calls (`evalsha`), read with `redis-cli`; `None` without it.
fn redis_time(url: &str) -> Option<(u64, u64)> {
    let out = Command::new("redis-cli")
        .args(["-u", url, "INFO", "commandstats"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut usec, mut scripts) = (0, 0);
    for line in text.lines().filter(|l| l.starts_with("cmdstat_")) {
        let field = |name: &str| {
            line.split([':', ','])
                .find_map(|f| f.strip_prefix(name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        usec += field("usec=");
        if line.starts_with("cmdstat_evalsha:") {
            scripts += field("calls=");
        }
    }
    Some((usec, scripts))
}
/// The over-admission run's quota: GCRA, this many per second (burst = limit).
const BINDING_PER_SECOND: u64 = 20_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn unix_micros() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros(),
    )
    .unwrap_or(u64::MAX)
}

fn policy(binding: bool) -> Policy {
    if binding {
        Policy::single(
            "fleet-bench-binding",
            Algorithm::Gcra,
            Quota::per_second(BINDING_PER_SECOND),
        )
        .unwrap()
    } else {
        // Never exhausted during a run: every decision does the whole admit path.
        Policy::single(
            "fleet-bench",
            Algorithm::Gcra,
            Quota::per_hour(1_000_000_000),
        )
        .unwrap()
    }
}

fn main() {
    if std::env::var_os("FLEET_CHILD").is_some() {
        child();
        return;
    }
    let server = match std::env::var("REDIS_URL") {
        Ok(_) => None,
        Err(_) => Some(palisade_testkit::RedisServer::start().expect("redis-server for the bench")),
    };
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| server.as_ref().unwrap().url());
    let seconds = env_u64("FLEET_SECONDS", 2);
    let in_flight = env_u64("FLEET_IN_FLIGHT", 16);
    let warmup = env_u64("FLEET_WARMUP", 10);
    let warm_seconds = env_u64("FLEET_WARM_SECONDS", 10);
    println!(
        "fleet bench: {PROCESSES} processes x {in_flight} in flight, {seconds} s per row, \
         GCRA; /warm rows {warm_seconds} s after {warmup} s at full speed; {} CPUs; load average {}",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "{:<14} {:>6} {:>14} {:>9} {:>9} {:>9} {:>8} {:>9} {:>10} {:>10}",
        "store",
        "keys",
        "decisions/s",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "local %",
        "admitted",
        "1st p50",
        "1st p99"
    );
    let mut run = 0;
    let mut traffic = Vec::new();
    let rows = [1u64, 10_000]
        .into_iter()
        .flat_map(|keys| {
            ["memory", "redis", "leased", "leased10s"]
                .into_iter()
                .map(move |b| (b, keys, 0))
        })
        .chain(
            ["memory", "redis", "leased", "leased10s"]
                .into_iter()
                .map(|b| (b, 10_000, warmup)),
        );
    for (backend, keys, warm) in rows {
        run += 1;
        let timing = Timing {
            seconds: if warm > 0 { warm_seconds } else { seconds },
            warmup: warm,
            in_flight,
        };
        let r = fleet(&url, run, backend, keys, false, timing);
        let label = if warm > 0 {
            format!("{backend}/warm")
        } else {
            backend.to_owned()
        };
        println!(
            "{label:<14} {keys:>6} {:>14.0} {:>9.1} {:>9.1} {:>9.1} {:>8.1} {:>9} {:>10.1} {:>10.1}",
            r.decisions as f64 / r.span_s,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            100.0 * r.local as f64 / r.decisions.max(1) as f64,
            r.admitted,
            r.first_p50_us,
            r.first_p99_us,
        );
        if backend != "memory" {
            traffic.push((label, keys, r));
        }
    }
    // Where the shared store's work comes from, in the timed part of each row: per key and
    // process and second, the lease calls answered (`calls`), of which the requests that
    // waited on one (`waited`: decisions not admitted from a lease) and the rest (renewals
    // ahead of need; a key's first leases are in the warm-up), the give-backs sent, the
    // units per grant; requests the limiter gave up on (50 ms); Redis's own time in
    // commands per second (`INFO commandstats`, the share of one core) and script calls.
    println!();
    println!(
        "{:<14} {:>6} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>10}",
        "traffic",
        "keys",
        "calls/k/s",
        "waited",
        "renewals",
        "gives/k/s",
        "units/gr",
        "timeouts",
        "redis cpu",
        "scripts/s"
    );
    for (label, keys, r) in &traffic {
        let per = (*keys as f64) * PROCESSES as f64 * r.span_s.max(1e-9);
        let waited = r.decisions.saturating_sub(r.local);
        println!(
            "{label:<14} {keys:>6} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>9.1} {:>9} {:>9.2} {:>10.0}",
            r.counts[0] as f64 / per,
            waited as f64 / per,
            r.counts[0].saturating_sub(waited) as f64 / per,
            r.counts[1] as f64 / per,
            r.counts[2] as f64 / r.counts[0].max(1) as f64,
            r.counts[4],
            r.redis_usec as f64 / 1e6 / r.span_s.max(1e-9),
            r.redis_scripts as f64 / r.span_s.max(1e-9),
        );
    }
    println!();
    println!(
        "over-admission: GCRA {BINDING_PER_SECOND}/s (burst {BINDING_PER_SECOND}), one key; \
         allowed = burst + rate x span (first to last decision of the fleet)"
    );
    for backend in ["redis", "leased"] {
        run += 1;
        let timing = Timing {
            seconds,
            warmup: 0,
            in_flight,
        };
        let r = fleet(&url, run, backend, 1, true, timing);
        let allowed = BINDING_PER_SECOND as f64 * (1.0 + r.span_s);
        println!(
            "{backend:<8} admitted {} in {:.3} s, allowed {:.0}: {:+.2} % ({:+.0} units; bound {} units)",
            r.admitted,
            r.span_s,
            allowed,
            100.0 * (r.admitted as f64 - allowed) / allowed,
            r.admitted as f64 - allowed,
            if backend == "leased" {
                BINDING_PER_SECOND / 100
            } else {
                0
            }
        );
    }
    drop(server);
}

/// How long a row runs, after how long a warm-up at full speed, with how many tasks.
#[derive(Clone, Copy)]
struct Timing {
    seconds: u64,
    warmup: u64,
    in_flight: u64,
}

/// What the fleet did in one row.
struct Row {
    decisions: u64,
    admitted: u64,
    local: u64,
    span_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    /// Each key's first decision in a process (the warm-up, before the clock starts: it
    /// must see the shared store once).
    first_p50_us: f64,
    first_p99_us: f64,
    /// Summed over the processes, over the timed part: lease calls, give-backs, units
    /// granted, units returned, limiter timeouts (see [`Counts`]).
    counts: [u64; 5],
    /// Redis's time in commands (µs) and its script calls over the timed part (as the
    /// parent sampled it: from the row's start time to its end).
    redis_usec: u64,
    redis_scripts: u64,
}

/// The `p` quantile of sorted nanosecond samples, in µs.
fn quantile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1_000.0
}

fn fleet(url: &str, run: u32, backend: &str, keys: u64, binding: bool, timing: Timing) -> Row {
    let Timing {
        seconds,
        warmup,
        in_flight,
    } = timing;
    let exe = std::env::current_exe().expect("the bench binary");
    // Time for four processes to start and connect on a loaded machine, and the warm-up.
    let start = unix_micros() + 2_000_000 + warmup * 1_000_000;
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .env("FLEET_CHILD", "1")
                .env("FLEET_URL", url)
                .env(
                    "FLEET_PREFIX",
                    format!("fleet-bench:{}:{run}:", std::process::id()),
                )
                .env("FLEET_BACKEND", backend)
                .env("FLEET_KEYS", keys.to_string())
                .env("FLEET_BINDING", if binding { "1" } else { "0" })
                .env("FLEET_START", start.to_string())
                .env("FLEET_SECONDS", seconds.to_string())
                .env("FLEET_WARMUP", warmup.to_string())
                .env("FLEET_IN_FLIGHT", in_flight.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .expect("a child process")
        })
        .collect();
    let sampler = {
        let url = url.to_owned();
        std::thread::spawn(move || {
            let until = |at: u64| {
                std::thread::sleep(Duration::from_micros(at.saturating_sub(unix_micros())));
            };
            until(start);
            let before = redis_time(&url);
            until(start + seconds * 1_000_000);
            let after = redis_time(&url);
            match (before, after) {
                (Some(b), Some(a)) => (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1)),
                _ => (0, 0),
            }
        })
    };
    let mut counts = [0u64; 5];
    let (mut decisions, mut admitted, mut local) = (0, 0, 0);
    let (mut first, mut last) = (u64::MAX, 0);
    let mut samples: Vec<u32> = Vec::new();
    let mut firsts: Vec<u32> = Vec::new();
    for c in children {
        let out = c.wait_with_output().expect("the child ran");
        assert!(out.status.success(), "a child failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let head = lines.next().expect("a report");
        let f: Vec<u64> = head
            .split_whitespace()
            .map(|w| w.parse().expect("a number"))
            .collect();
        decisions += f[0];
        admitted += f[1];
        local += f[2];
        first = first.min(f[3]);
        last = last.max(f[4]);
        for (c, v) in counts.iter_mut().zip(&f[5..10]) {
            *c += v;
        }
        for into in [&mut samples, &mut firsts] {
            into.extend(
                lines
                    .next()
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(|w| w.parse::<u32>().expect("a sample")),
            );
        }
    }
    samples.sort_unstable();
    firsts.sort_unstable();
    let (redis_usec, redis_scripts) = sampler.join().unwrap_or((0, 0));
    Row {
        counts,
        redis_usec,
        redis_scripts,
        decisions,
        admitted,
        local,
        span_s: last.saturating_sub(first) as f64 / 1e6,
        p50_us: quantile(&samples, 0.50),
        p99_us: quantile(&samples, 0.99),
        p999_us: quantile(&samples, 0.999),
        first_p50_us: quantile(&firsts, 0.50),
        first_p99_us: quantile(&firsts, 0.99),
    }
}

/// One process of the fleet: prints `decisions admitted local first_us last_us`, a line of
/// latency samples (ns) and a line of each key's first decision's latency (ns).
fn child() {
    let var = |name: &str| std::env::var(name).expect("set by the parent");
    let url = var("FLEET_URL");
    let prefix = var("FLEET_PREFIX");
    let backend = var("FLEET_BACKEND");
    let keys: u64 = var("FLEET_KEYS").parse().unwrap();
    let binding = var("FLEET_BINDING") == "1";
    let start: u64 = var("FLEET_START").parse().unwrap();
    let seconds: u64 = var("FLEET_SECONDS").parse().unwrap();
    let in_flight: u64 = var("FLEET_IN_FLIGHT").parse().unwrap();
    let warmup: u64 = var("FLEET_WARMUP").parse().unwrap();
    metrics::set_global_recorder(Counting).expect("the only recorder");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let pool = palisade::ratelimit::deadpool_redis::Config::from_url(url.as_str())
            .builder()
            .unwrap()
            .max_size(usize::try_from(in_flight).unwrap_or(16))
            .runtime(palisade::ratelimit::deadpool_redis::Runtime::Tokio1)
            .build()
            .unwrap();
        let redis = RedisStore::new(pool).with_prefix(&prefix);
        // What a service calls: the limiter (its span, metrics and timeout) over the store.
        let store = match backend.as_str() {
            "memory" => RateLimiter::new(MemoryStore::new()),
            "redis" => RateLimiter::new(redis),
            "leased" => RateLimiter::new(LeasedStore::new(redis)),
            "leased10s" => RateLimiter::new(
                LeasedStore::builder(redis)
                    .config(LeaseConfig::default().max_lease(Duration::from_secs(10)))
                    .build()
                    .unwrap(),
            ),
            other => panic!("unknown backend {other}"),
        };
        let policy = policy(binding);
        let names: Arc<Vec<String>> = Arc::new((0..keys).map(|k| format!("k{k}")).collect());
        // Warm: one decision per key before the clock starts (connections, scripts, leases),
        // each timed: a key's first decision. The `FLEET_IN_FLIGHT` tasks warm the keys up
        // at once (task t takes keys t, t + in_flight, ...), as a service's first requests
        // come: a leased store batches their first lease calls.
        let mut warmers = Vec::new();
        for t in 0..in_flight {
            let (store, policy, names) = (store.clone(), policy.clone(), Arc::clone(&names));
            warmers.push(tokio::spawn(async move {
                let mut firsts = Vec::new();
                for name in names
                    .iter()
                    .skip(t as usize)
                    .step_by(in_flight.max(1) as usize)
                {
                    let began = Instant::now();
                    store.acquire(name, &policy, 1).await;
                    firsts.push(u32::try_from(began.elapsed().as_nanos()).unwrap_or(u32::MAX));
                }
                firsts
            }));
        }
        let mut firsts = Vec::with_capacity(names.len());
        for w in warmers {
            firsts.extend(w.await.unwrap());
        }
        // The binding run starts from a whole bucket: the wait below refills what the
        // warm-up took, and a warm-up lease (10 ms on this quota) has ended by then. A
        // `/warm` row first decides at full speed for `warmup` seconds, untimed.
        let warm_from = start.saturating_sub(warmup * 1_000_000);
        tokio::time::sleep(Duration::from_micros(
            warm_from.saturating_sub(unix_micros()),
        ))
        .await;
        if warmup > 0 {
            drive(&store, &policy, &names, in_flight, warmup).await;
        }
        let wait = start.saturating_sub(unix_micros());
        tokio::time::sleep(Duration::from_micros(wait)).await;
        let first = unix_micros();
        let before = COUNTS.snapshot();
        let (decisions, admitted, local, samples) =
            drive(&store, &policy, &names, in_flight, seconds).await;
        let last = unix_micros();
        let after = COUNTS.snapshot();
        let c: Vec<String> = after
            .iter()
            .zip(before)
            .map(|(a, b)| a.saturating_sub(b).to_string())
            .collect();
        println!(
            "{decisions} {admitted} {local} {first} {last} {}",
            c.join(" ")
        );
        for list in [&samples, &firsts] {
            let line: Vec<String> = list.iter().map(u32::to_string).collect();
            println!("{}", line.join(" "));
        }
    });
}

/// `in_flight` tasks deciding at full speed for `seconds` (task t walks the keys from
/// t x 7,919): decisions, admitted, admitted from a lease, and every 4th decision's
/// latency (ns).
async fn drive(
    store: &RateLimiter,
    policy: &Policy,
    names: &Arc<Vec<String>>,
    in_flight: u64,
    seconds: u64,
) -> (u64, u64, u64, Vec<u32>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (decisions, admitted, local) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut tasks = Vec::new();
    for t in 0..in_flight {
        let (store, policy, names, stop) = (
            store.clone(),
            policy.clone(),
            Arc::clone(names),
            Arc::clone(&stop),
        );
        let (decisions, admitted, local) = (
            Arc::clone(&decisions),
            Arc::clone(&admitted),
            Arc::clone(&local),
        );
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut i: u64 = t * 7_919;
            while !stop.load(Ordering::Relaxed) {
                let key = &names[usize::try_from(i % names.len() as u64).unwrap_or(0)];
                let began = Instant::now();
                let d = store.acquire(key, &policy, 1).await;
                if i.is_multiple_of(4) {
                    samples.push(u32::try_from(began.elapsed().as_nanos()).unwrap_or(u32::MAX));
                }
                i = i.wrapping_add(1);
                decisions.fetch_add(1, Ordering::Relaxed);
                if d.allowed {
                    admitted.fetch_add(1, Ordering::Relaxed);
                    if d.source == DecisionSource::Lease {
                        local.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if i.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
            samples
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }
    (
        decisions.load(Ordering::Relaxed),
        admitted.load(Ordering::Relaxed),
        local.load(Ordering::Relaxed),
        samples,
    )
}
