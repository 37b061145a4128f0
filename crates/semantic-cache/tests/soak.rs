//! Soak run: a Redis-backed cache under steady inserts with short TTLs and rotating tenants
//! for a few minutes. Redis memory, the tracking structures, the event stream and the local
//! index must stay flat: after a warm-up (one stream retention period), the least-squares
//! slope of each over the measured window may move it by at most 10 % of its mean.
//!
//! Ignored by `cargo test`; the CI step `semantic-cache: recall and soak` runs it with
//! `--ignored`. `PALISADE_SOAK_SECS` sets the length (default 170 s: 80 s warm-up, the rest
//! measured).
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use palisade_semantic_cache::{
    CacheKey, InsertOptions, NamespacePolicy, RedisConfig, RedisStore, SemanticCache, Tag, Usage,
};
use palisade_testkit::RedisServer;
use redis::aio::MultiplexedConnection;

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    at: f64,
    used_memory: f64,
    keys: f64,
    tracked: f64,
    stream: f64,
    local: f64,
}

async fn info_field(conn: &mut MultiplexedConnection, section: &str, field: &str) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Members of every sorted set (the tracking structures), found with SCAN.
async fn tracked_members(conn: &mut MultiplexedConnection) -> f64 {
    let mut cursor: u64 = 0;
    let mut total = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("TYPE")
            .arg("zset")
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .unwrap();
        for key in keys {
            let n: u64 = redis::cmd("ZCARD")
                .arg(&key)
                .query_async(conn)
                .await
                .unwrap();
            total += n;
        }
        cursor = next;
        if cursor == 0 {
            return total as f64;
        }
    }
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let num: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let den: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a few minutes long: run by the CI step `semantic-cache: recall and soak`"]
async fn redis_memory_tracking_and_local_index_stay_flat() {
    let total: u64 = std::env::var("PALISADE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(170);
    let warm_up = Duration::from_secs(total * 8 / 17);
    let total = Duration::from_secs(total);
    let server = RedisServer::builder().start_async().await.unwrap();
    let store = RedisStore::new(server.pool())
        .with_config(RedisConfig::default().poll_block(Duration::from_millis(50)))
        .unwrap();
    let cache = SemanticCache::builder()
        .store(store.clone())
        .default_policy(NamespacePolicy::with_ttl(Duration::from_secs(2)))
        .build()
        .unwrap();
    let mut conn = server.async_connection().await.unwrap();

    let started = Instant::now();
    let writer = {
        let cache = cache.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while started.elapsed() < total {
                tick.tick().await;
                // A new tenant every ~2.5 s (500 inserts), four namespaces, a tag per user.
                let tenant = format!("tenant-{}", i / 500);
                let namespace = format!("ns-{}", i % 4);
                let prompt = format!("question {i} about order {} and invoice {}", i * 7, i % 13);
                let key = CacheKey::new(&tenant, &namespace, "model", prompt).unwrap();
                let tags = vec![Tag::new(format!("user:{}", i % 50)).unwrap()];
                let options = InsertOptions::default().tags(tags);
                cache
                    .insert_with(&key, "an answer of a few words", Usage::default(), options)
                    .await
                    .unwrap();
                if i.is_multiple_of(10) {
                    let probe =
                        CacheKey::new(&tenant, &namespace, "model", "a question about an order")
                            .unwrap();
                    cache.lookup(&probe).await.unwrap();
                }
                if i % 1000 == 999 {
                    cache
                        .invalidate_tag(key.partition().tenant(), &Tag::new("user:7").unwrap())
                        .await
                        .unwrap();
                }
                i += 1;
            }
            i
        })
    };

    // One sample a second while the writer runs: tenants rotate every ~2.5 s, and the
    // regression over many periods averages that saw-tooth out (samples every 5 s would
    // alias it into a slow trend).
    let mut samples = Vec::new();
    while started.elapsed() + Duration::from_secs(2) < total {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sample = Sample {
            at: started.elapsed().as_secs_f64(),
            used_memory: info_field(&mut conn, "memory", "used_memory").await,
            keys: redis::cmd("DBSIZE")
                .query_async::<u64>(&mut conn)
                .await
                .unwrap() as f64,
            tracked: tracked_members(&mut conn).await,
            stream: redis::cmd("XLEN")
                .arg("psc:stream")
                .query_async::<u64>(&mut conn)
                .await
                .unwrap() as f64,
            local: store.local_entries() as f64,
        };
        if samples.len() % 5 == 0 {
            eprintln!("{sample:?}");
        }
        samples.push(sample);
    }
    let inserts = writer.await.unwrap();
    let rate = inserts as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "{inserts} inserts, {rate:.0}/s; cache stats {:?}",
        cache.stats()
    );
    assert!(rate > 50.0, "the soak ran only {rate:.0} inserts/s");

    let measured: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.at >= warm_up.as_secs_f64())
        .collect();
    assert!(
        measured.len() >= 5,
        "{} samples after the warm-up",
        measured.len()
    );
    let window = measured.last().unwrap().at - measured[0].at;
    type Metric = (&'static str, fn(&Sample) -> f64);
    let metrics: [Metric; 5] = [
        ("redis used_memory", |s| s.used_memory),
        ("redis keys", |s| s.keys),
        ("tracking set members", |s| s.tracked),
        ("stream length", |s| s.stream),
        ("local index rows", |s| s.local),
    ];
    let mut report = Vec::new();
    for (name, get) in metrics {
        let points: Vec<(f64, f64)> = measured.iter().map(|s| (s.at, get(s))).collect();
        let mean = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
        let drift = slope(&points) * window;
        report.push(format!(
            "{name}: mean {mean:.0}, drift over {window:.0} s {drift:+.0} ({:+.1} %)",
            100.0 * drift / mean.max(1.0)
        ));
        assert!(
            drift.abs() <= 0.10 * mean.max(10.0),
            "{name} grows: {drift:+.0} over {window:.0} s on a mean of {mean:.0}\n{}",
            report.join("\n")
        );
    }
    eprintln!("{}", report.join("\n"));
}
