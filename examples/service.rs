//! The whole stack in one file, from the `palisade` facade alone: start here.
//!
//! An axum service answering chats from a (fake) LLM provider:
//!
//! * **one Redis pool** shared by the rate limiter, the breaker and the cache when
//!   `REDIS_URL` is set; everything in memory without it;
//! * **tiered rate limits with a default policy**: `/v1/**` per caller under the caller's
//!   tier (`free`, `pro`; a caller without a tier is `free`), every other route under the
//!   default policy; `/health` and `/metrics` exempt; 429 problem+json with `Retry-After`;
//! * **the breaker inside the cache's computation**: a cache hit never reaches the provider,
//!   a miss calls it through the breaker, and `try_get_or_compute` keeps the breaker's
//!   rejection typed, so it becomes a 503 (problem+json, `Retry-After`) and a provider failure
//!   a 502;
//! * every guard falls back to memory while Redis is down (`FailureMode::FallbackToMemory`),
//!   so the service keeps answering, and `/health` says `degraded`;
//! * a `tracing` subscriber (`RUST_LOG`, default `info`): without one, the guards' WARN logs
//!   about a failing Redis go nowhere.
//!
//! ```sh
//! cargo run --example service                                  # in memory
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example service # shared through Redis
//! curl -s localhost:8080/v1/chat -H 'x-api-key: demo-pro-key' \
//!      -H 'content-type: application/json' -d '{"prompt": "How do I reset my password?"}'
//! curl -s -X PUT localhost:8080/demo/llm -d '{"failing": true}' -H 'content-type: application/json'
//! ```
//!
//! Callers are named by an `x-api-key` from a fixed demo table (in a real service, the
//! `palisade::apikey` layer verifies keys and tells the tier). The end-to-end test
//! `crates/palisade/tests/service.rs` drives this file over HTTP, in memory and on a Redis it
//! kills and restarts.
// The end-to-end test includes this file as a module: what `main` alone uses is dead there.
#![allow(dead_code, unreachable_pub)]

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use palisade::circuit_breaker::layer::rejection_response;
use palisade::circuit_breaker::{self, CircuitBreaker};
use palisade::ratelimit::layer::RateLimitLayer;
use palisade::ratelimit::rules::{Key, RequestLimiter, Route, Rules, Tier, TierResolver, UserId};
use palisade::ratelimit::{Algorithm, MemoryStore, Policy, Quota, RateLimiter};
use palisade::semantic_cache::{CacheKey, ComputeError, Computed, SemanticCache, Source, Usage};
use palisade::{deadpool_redis, ratelimit, semantic_cache};
use serde::Deserialize;
use serde_json::json;

/// Any error of start-up.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the service is configured with (from the environment in `main`, by hand in tests).
#[derive(Clone, Debug)]
pub struct Settings {
    /// `redis://…`: share limits, breaker state and cache entries; `None`: all in memory.
    pub redis_url: Option<String>,
    /// Chats per minute of the `free` tier.
    pub free_per_minute: u64,
    /// Chats per minute of the `pro` tier.
    pub pro_per_minute: u64,
    /// Requests per minute to any other route (the default policy).
    pub default_per_minute: u64,
    /// Consecutive provider failures that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open.
    pub open_wait: Duration,
    /// How long one provider call may take (then it counts as a failure: 502).
    pub llm_timeout: Duration,
    /// API key → (user, tier).
    pub callers: HashMap<String, (String, String)>,
}

impl Default for Settings {
    fn default() -> Self {
        let callers = [
            ("demo-free-key", "alice", "free"),
            ("demo-pro-key", "bob", "pro"),
        ]
        .into_iter()
        .map(|(key, user, tier)| (key.to_owned(), (user.to_owned(), tier.to_owned())))
        .collect();
        Self {
            redis_url: None,
            free_per_minute: 10,
            pro_per_minute: 100,
            default_per_minute: 30,
            breaker_failures: 3,
            open_wait: Duration::from_secs(10),
            llm_timeout: Duration::from_secs(5),
            callers,
        }
    }
}

/// The stand-in LLM provider: answers after a short delay, or fails while `failing` is set
/// (`PUT /demo/llm`), so the breaker can be seen opening.
#[derive(Debug, Default)]
pub struct FakeLlm {
    failing: AtomicBool,
    calls: AtomicU64,
}

impl FakeLlm {
    /// How many completions were asked of the provider (hits never count).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    async fn complete(&self, prompt: &str) -> Result<String, LlmError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(5)).await;
        if self.failing.load(Ordering::Relaxed) {
            return Err(LlmError("the provider answered 500".to_owned()));
        }
        Ok(format!("An answer to: {prompt}"))
    }
}

/// The provider's own error.
#[derive(Debug)]
pub struct LlmError(String);

impl fmt::Display for LlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LlmError {}

#[derive(Clone)]
struct App {
    limiter: RateLimiter,
    breaker: CircuitBreaker,
    cache: SemanticCache,
    llm: Arc<FakeLlm>,
    callers: Arc<HashMap<String, (String, String)>>,
    backend: &'static str,
}

/// The router, and the fake provider behind it (tests read its call count).
///
/// # Errors
/// A malformed `REDIS_URL` or an invalid limit.
pub fn build(settings: &Settings) -> Result<(Router, Arc<FakeLlm>), BoxError> {
    // One pool for the three crates: `palisade::deadpool_redis` is the version they take.
    let pool: Option<deadpool_redis::Pool> = settings
        .redis_url
        .as_deref()
        .map(support::settings::redis_pool)
        .transpose()?;

    let limiter = match &pool {
        Some(pool) => RateLimiter::builder(ratelimit::RedisStore::new(pool.clone()))
            .failure_mode(ratelimit::FailureMode::FallbackToMemory)
            .build(),
        None => RateLimiter::new(MemoryStore::new()),
    };

    let mut breaker = CircuitBreaker::builder("llm")
        .consecutive_failures(settings.breaker_failures)
        .open_wait(settings.open_wait)
        .call_timeout(settings.llm_timeout);
    if let Some(pool) = &pool {
        breaker = breaker
            .store(Arc::new(circuit_breaker::RedisStore::new(pool.clone())))
            .failure_mode(circuit_breaker::FailureMode::FallbackToMemory);
    }
    let breaker = breaker.build()?;

    let mut cache = SemanticCache::builder();
    if let Some(pool) = &pool {
        cache = cache
            .store(semantic_cache::RedisStore::new(pool.clone()))
            .failure_mode(semantic_cache::FailureMode::FallbackToMemory);
    }
    let cache = cache.build()?;

    let per_minute = |name: &str, n: u64| {
        Policy::single(name, Algorithm::SlidingWindowCounter, Quota::per_minute(n))
    };
    let rules = Rules::builder()
        .exempt("/health")?
        .exempt("/metrics")?
        .route(
            Route::new("/v1/**")?
                .tier("free", per_minute("chat-free", settings.free_per_minute)?)
                .tier("pro", per_minute("chat-pro", settings.pro_per_minute)?),
        )
        .route(Route::new("/**")?.policy(per_minute("default", settings.default_per_minute)?))
        // The caller named by its key; callers without one share one budget.
        .key(Key::first_of([Key::user_id(), Key::global()]))
        .tiers(TierResolver::extension(), "free")
        .build()?;

    let llm = Arc::new(FakeLlm::default());
    let app = App {
        limiter: limiter.clone(),
        breaker,
        cache,
        llm: Arc::clone(&llm),
        callers: Arc::new(settings.callers.clone()),
        backend: if pool.is_some() { "redis" } else { "memory" },
    };

    let guarded = Router::new()
        .route("/v1/chat", post(chat))
        .route("/demo/llm", put(set_llm))
        // Layers run bottom-up: the caller is named before the limiter counts it.
        .layer(RateLimitLayer::new(RequestLimiter::new(limiter, rules)))
        .layer(middleware::from_fn_with_state(app.clone(), identify));
    let router = Router::new()
        .route("/health", get(health))
        .merge(support::http::metrics_route(support::telemetry::metrics()))
        .merge(guarded)
        .with_state(app);
    Ok((support::http::with_request_ids(router), llm))
}

/// `x-api-key` → `UserId` and `Tier` extensions for the limiter; an unknown key is a 401.
async fn identify(State(app): State<App>, mut request: Request, next: Next) -> Response {
    if let Some(key) = request.headers().get("x-api-key") {
        let Some((user, tier)) = key.to_str().ok().and_then(|k| app.callers.get(k)) else {
            return problem(
                StatusCode::UNAUTHORIZED,
                "unknown_key",
                "the API key is not valid",
            );
        };
        request.extensions_mut().insert(UserId(user.clone()));
        request.extensions_mut().insert(Tier(tier.clone()));
    }
    next.run(request).await
}

#[derive(Deserialize)]
struct ChatRequest {
    prompt: String,
}

async fn chat(
    State(app): State<App>,
    user: Option<Extension<UserId>>,
    Json(body): Json<ChatRequest>,
) -> Response {
    // The tenant keeps one caller's answers from another's.
    let tenant = user.map_or_else(|| "anonymous".to_owned(), |Extension(UserId(u))| u);
    let key = match CacheKey::new(tenant.as_str(), "chat", "fake-llm-1", body.prompt.as_str()) {
        Ok(key) => key,
        Err(e) => {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_prompt",
                e.to_string(),
            );
        }
    };
    let served = app
        .cache
        .try_get_or_compute(&key, || async {
            // Only a miss gets here, and through the breaker.
            let text = app.breaker.call(app.llm.complete(&body.prompt)).await?;
            let usage = Usage::new(12, 40, 0.0001);
            Ok::<_, circuit_breaker::Error<LlmError>>(Computed::new(text, usage))
        })
        .await;
    match served {
        Ok(served) => {
            let hit = matches!(served.source, Source::Cache { .. });
            let answer = served.entry.response_text().unwrap_or_default().to_owned();
            let mut response = Json(json!({ "answer": answer })).into_response();
            response.headers_mut().insert(
                "x-cache",
                HeaderValue::from_static(if hit { "hit" } else { "miss" }),
            );
            response
        }
        // Open breaker: 503 problem+json with Retry-After, built by the breaker crate.
        Err(ComputeError::Compute(e)) => match rejection_response::<axum::body::Body, _>(&e) {
            Some(response) => response.into_response(),
            None => {
                tracing::warn!(error = %e, "the provider failed");
                let code = if matches!(e, circuit_breaker::Error::Timeout(_)) {
                    "upstream_timeout"
                } else {
                    "upstream_failed"
                };
                problem(StatusCode::BAD_GATEWAY, code, "the model provider failed")
            }
        },
        Err(ComputeError::Cache(e)) if e.is_invalid_input() => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_prompt",
            e.to_string(),
        ),
        Err(e) => {
            tracing::error!(error = %e, "the cache failed");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "cache_unavailable",
                "try again later",
            )
        }
    }
}

#[derive(Deserialize)]
struct LlmSwitch {
    failing: bool,
}

/// `PUT /demo/llm {"failing": true}`: make the fake provider fail (a demo knob).
async fn set_llm(State(app): State<App>, Json(switch): Json<LlmSwitch>) -> StatusCode {
    app.llm.failing.store(switch.failing, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

async fn health(State(app): State<App>) -> support::health::Report {
    use support::health::Component;
    let limiter = match app.limiter.health().await {
        Ok(()) => Component::up("ratelimit", app.backend, "ok"),
        Err(e) => Component::down("ratelimit", app.backend, e.to_string()),
    };
    let cache = match app.cache.health().await {
        Ok(()) => Component::up("semantic_cache", app.backend, "ok"),
        Err(e) => Component::down("semantic_cache", app.backend, e.to_string()),
    };
    let breaker = Component::up("breaker:llm", app.backend, app.breaker.state().as_str());
    support::health::Report::new(vec![limiter, cache, breaker])
}

/// The service's own refusals, in the shape the crates use for theirs.
fn problem(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    let mut extensions = serde_json::Map::new();
    extensions.insert("code".to_owned(), code.into());
    let title = status.canonical_reason().unwrap_or("Error");
    support::http::problem_with(status, title, detail, extensions)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Without a subscriber, the guards' logs (a Redis gone, a breaker opening) are lost.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let settings = Settings {
        redis_url: support::settings::redis_url(),
        ..Settings::default()
    };
    let (router, _llm) = build(&settings)?;
    let addr = support::settings::listen_addr(8080)?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, backend = if settings.redis_url.is_some() { "redis" } else { "memory" }, "service listening");
    axum::serve(listener, router).await?;
    Ok(())
}
