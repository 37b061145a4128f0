//! Rate limiting an axum service: tiers, a weighted AI route, an exempt health check, client
//! IPs behind a trusted proxy, and the 429 answer with its headers. Everything in memory; the
//! requests are sent to the router directly (no port is opened).
//!
//! Run it from the repository root with `cargo run --example ratelimit_axum --features tower`.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use http::Request;
use palisade::ratelimit::layer::RateLimitLayer;
use palisade::ratelimit::rules::{
    ClientIp, Key, RequestLimiter, Route, Rules, Tier, TierResolver, UserId,
};
use palisade::ratelimit::{Algorithm, FailureMode, MemoryStore, Policy, Quota, RateLimiter};
use tower::ServiceExt;

fn policy(name: &str, per_minute: u64, per_hour: u64) -> Policy {
    Policy::builder(name)
        .algorithm(Algorithm::SlidingWindowLog)
        .quota("per_minute", Quota::per_minute(per_minute))
        .quota("per_hour", Quota::per_hour(per_hour))
        .build()
        .expect("a valid policy")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rules = Rules::builder()
        .exempt("/health")?
        .route(
            Route::new("/ai/**")?
                .cost(5) // an AI call weighs five ordinary requests
                .tier("free", policy("free-ai", 10, 60))
                .tier("premium", policy("premium-ai", 50, 300))
                .unlimited_tier("admin"),
        )
        .route(Route::new("/**")?.policy(policy("general", 60, 1_000)))
        .key(Key::first_of([
            Key::user_id(),
            // Our load balancer lives in 10.0.0.0/8: only its X-Forwarded-For entries count.
            Key::client_ip(ClientIp::new().trust(["10.0.0.0/8"])?),
        ]))
        .tiers(TierResolver::extension(), "free")
        .build()?;
    // With Redis: RateLimiter::builder(RedisStore::new(pool)) — the rest is unchanged.
    let limiter = RateLimiter::builder(MemoryStore::new())
        .failure_mode(FailureMode::FallbackToMemory)
        .build();
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ai/chat", post(|| async { "a very expensive answer" }))
        .layer(RateLimitLayer::new(RequestLimiter::new(limiter, rules)));

    for i in 1..=3 {
        // In a real service, authentication middleware inserts UserId and Tier.
        let mut req = Request::post("/ai/chat").body(Body::empty())?;
        req.extensions_mut().insert(UserId::from("alice"));
        req.extensions_mut().insert(Tier::from("free"));
        req.extensions_mut()
            .insert(SocketAddr::from(([10, 0, 0, 1], 443)));
        let resp = app.clone().oneshot(req).await?;
        let h = resp.headers();
        println!(
            "POST /ai/chat #{i} (free tier, cost 5): {} RateLimit: {:?} Retry-After: {:?}",
            resp.status(),
            h.get("ratelimit").map(|v| v.to_str().unwrap_or("")),
            h.get("retry-after").map(|v| v.to_str().unwrap_or("")),
        );
        if resp.status() == 429 {
            let body = axum::body::to_bytes(resp.into_body(), 4096).await?;
            println!("  body: {}", String::from_utf8_lossy(&body));
        }
    }
    let resp = app
        .clone()
        .oneshot(Request::get("/health").body(Body::empty())?)
        .await?;
    println!(
        "GET /health: {} (exempt, no rate-limit headers: {})",
        resp.status(),
        !resp.headers().contains_key("ratelimit")
    );
    Ok(())
}
