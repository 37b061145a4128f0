//! Three instances of one service share a circuit breaker through Redis: failures seen by
//! all of them trip it for everyone, and after the open wait exactly the configured number of
//! probes runs across the fleet.
//!
//! Needs a Redis: `REDIS_URL` (default `redis://127.0.0.1:6379`).
//! Run with `cargo run --example circuit_breaker_fleet`.

use std::sync::Arc;
use std::time::Duration;

use palisade::circuit_breaker::{CircuitBreaker, RedisStore, State, Store, deadpool_redis};

#[tokio::main]
async fn main() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let pool = deadpool_redis::Config::from_url(url.as_str())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("a valid REDIS_URL");
    // A prefix of our own so repeated runs start from a clean slate.
    let prefix = format!("palisade-example:{}:", std::process::id());
    let store: Arc<dyn Store> = Arc::new(RedisStore::new(pool).with_prefix(prefix));

    let fleet: Vec<CircuitBreaker> = (0..3)
        .map(|i| {
            CircuitBreaker::builder("llm-provider")
                .minimum_calls(6)
                .failure_rate_threshold(50.0)
                .open_wait(Duration::from_millis(500))
                .half_open_probes(2)
                .success_threshold(2)
                .flush_interval(Duration::from_millis(50))
                .store(Arc::clone(&store))
                .instance_id(format!("instance-{i}"))
                .build()
                .expect("built inside the runtime")
        })
        .collect();

    for (i, b) in fleet.iter().enumerate() {
        for _ in 0..2 {
            let _ = b.call(async { Err::<(), _>("503") }).await;
        }
        println!("instance-{i}: 2 failures, local state {}", b.state());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, b) in fleet.iter().enumerate() {
        println!(
            "instance-{i}: after one flush interval the fleet says {}",
            b.state()
        );
        if b.state() != State::Open {
            eprintln!("expected the fleet to be open; is Redis reachable at {url}?");
            std::process::exit(1);
        }
    }

    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut calls = Vec::new();
    for b in &fleet {
        for _ in 0..5 {
            let b = b.clone();
            calls.push(tokio::spawn(async move {
                b.call(async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, ()>(())
                })
                .await
                .is_ok()
            }));
        }
    }
    let mut ran = 0;
    for c in calls {
        ran += usize::from(c.await.expect("task"));
    }
    println!("half-open: 15 callers across 3 instances, {ran} probes ran (configured: 2)");
    tokio::time::sleep(Duration::from_millis(150)).await;
    for (i, b) in fleet.iter().enumerate() {
        println!("instance-{i}: {}", b.state());
    }
}
