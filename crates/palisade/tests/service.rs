//! End-to-end test of `examples/service.rs`, the file the README sends newcomers to: the
//! service is built from the example's own code, served on 127.0.0.1:0 and driven over HTTP.
//! In memory: tiered limits and the default policy (429 problem+json), cache hits that never
//! reach the provider, provider failures (502) until the breaker opens (503 problem+json with
//! Retry-After) while cached answers are still served. On a throwaway Redis: two instances
//! share limits and answers; Redis is killed (still served, `/health` degraded) and restarted.

#[path = "../../../examples/service.rs"]
mod service;

use std::time::Duration;

use palisade_testkit::RedisServer;
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Running {
    base: String,
    http: reqwest::Client,
    llm: std::sync::Arc<service::FakeLlm>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Small limits, so the test reaches them.
fn settings(redis_url: Option<String>) -> service::Settings {
    service::Settings {
        redis_url,
        free_per_minute: 3,
        pro_per_minute: 50,
        default_per_minute: 2,
        breaker_failures: 2,
        open_wait: Duration::from_secs(60),
        ..service::Settings::default()
    }
}

async fn start(settings: &service::Settings) -> Running {
    let (router, llm) = service::build(settings).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    Running {
        base,
        http: reqwest::Client::new(),
        llm,
        task: tokio::spawn(async move { axum::serve(listener, router).await }),
    }
}

impl Running {
    async fn chat(&self, key: Option<&str>, prompt: &str) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/v1/chat", self.base))
            .json(&json!({ "prompt": prompt }));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        request.send().await.unwrap()
    }

    async fn set_llm_failing(&self, failing: bool) -> reqwest::Response {
        self.http
            .put(format!("{}/demo/llm", self.base))
            .json(&json!({ "failing": failing }))
            .send()
            .await
            .unwrap()
    }

    async fn health(&self) -> Value {
        let response = self
            .http
            .get(format!("{}/health", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }
}

/// A problem+json body with this status and code.
async fn problem(response: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
}

fn x_cache(response: &reqwest::Response) -> &str {
    response.headers()["x-cache"].to_str().unwrap()
}

#[tokio::test]
async fn in_memory_tiers_cache_and_breaker() {
    let app = start(&settings(None)).await;

    // free tier: 3 chats a minute; a repeated prompt is a hit and never reaches the provider.
    let first = app
        .chat(Some("demo-free-key"), "How do I reset my password?")
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(x_cache(&first), "miss");
    assert_eq!(first.headers()["x-ratelimit-remaining"], "2");
    let again = app
        .chat(Some("demo-free-key"), "How do I reset my password?")
        .await;
    assert_eq!(x_cache(&again), "hit");
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["answer"], "An answer to: How do I reset my password?");
    assert_eq!(app.llm.calls(), 1);
    assert_eq!(
        app.chat(Some("demo-free-key"), "What is the refund policy?")
            .await
            .status(),
        StatusCode::OK
    );
    let denied = app.chat(Some("demo-free-key"), "One more?").await;
    assert!(denied.headers().contains_key("retry-after"));
    let body = problem(denied, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(body["policy"], "chat-free");

    // The pro tier has its own budget; a caller without a key is `free` (shared budget).
    let pro = app
        .chat(Some("demo-pro-key"), "How do I reset my password?")
        .await;
    assert_eq!(pro.status(), StatusCode::OK);
    assert_eq!(pro.headers()["x-ratelimit-limit"], "50");
    assert_eq!(x_cache(&pro), "miss", "bob does not see alice's answers");
    let anonymous = app.chat(None, "Hello").await;
    assert_eq!(anonymous.headers()["x-ratelimit-limit"], "3");
    problem(
        app.chat(Some("not-a-key"), "Hello").await,
        StatusCode::UNAUTHORIZED,
        "unknown_key",
    )
    .await;

    // Other routes are under the default policy (one budget for keyless callers).
    assert_eq!(
        app.set_llm_failing(true).await.status(),
        StatusCode::NO_CONTENT
    );

    // The provider fails: 502 twice, then the breaker is open: 503 without a provider call.
    for prompt in ["Is it down?", "Still down?"] {
        problem(
            app.chat(Some("demo-pro-key"), prompt).await,
            StatusCode::BAD_GATEWAY,
            "upstream_failed",
        )
        .await;
    }
    let calls = app.llm.calls();
    let rejected = app.chat(Some("demo-pro-key"), "Down for good?").await;
    assert_eq!(rejected.headers()["retry-after"], "60");
    let body = problem(rejected, StatusCode::SERVICE_UNAVAILABLE, "circuit_open").await;
    assert_eq!(body["state"], "open");
    assert_eq!(
        app.llm.calls(),
        calls,
        "an open breaker never calls the provider"
    );
    // ... while cached answers are still served.
    let cached = app
        .chat(Some("demo-pro-key"), "How do I reset my password?")
        .await;
    assert_eq!(cached.status(), StatusCode::OK);
    assert_eq!(x_cache(&cached), "hit");

    // The default policy (2 a minute): the second switch passes, the third is refused.
    assert_eq!(
        app.set_llm_failing(false).await.status(),
        StatusCode::NO_CONTENT
    );
    let third = app.set_llm_failing(false).await;
    problem(third, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    // /health and /metrics are exempt and never limited.
    for _ in 0..5 {
        let health = app.health().await;
        assert_eq!(health["status"], "ok");
    }
    let breaker = app.health().await["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "breaker:llm")
        .cloned()
        .unwrap();
    assert_eq!(breaker["state"], "open");
}

#[tokio::test]
async fn on_redis_shared_then_killed_then_restarted() {
    let mut redis = RedisServer::start().expect("redis-server on PATH");
    let settings = settings(Some(redis.url()));
    let one = start(&settings).await;
    let two = start(&settings).await;

    // One budget and one cache across both instances.
    let first = one
        .chat(Some("demo-free-key"), "How do I reset my password?")
        .await;
    assert_eq!(x_cache(&first), "miss");
    let second = two
        .chat(Some("demo-free-key"), "How do I reset my password?")
        .await;
    assert_eq!(
        x_cache(&second),
        "hit",
        "the answer is shared through Redis"
    );
    assert_eq!(second.headers()["x-ratelimit-remaining"], "1");
    assert_eq!(two.llm.calls(), 0);
    assert_eq!(one.health().await["status"], "ok");

    // Keys are where the guides say: redis-cli --scan --pattern 'palisade:rl:*'.
    let mut conn = redis.async_connection().await.unwrap();
    let keys: Vec<String> = palisade::redis::cmd("KEYS")
        .arg("palisade:rl:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());

    // Redis killed: still answered (limits and cache fall back to this process's memory).
    redis.kill();
    let during = one.chat(Some("demo-pro-key"), "Anyone there?").await;
    assert_eq!(during.status(), StatusCode::OK);
    assert_eq!(x_cache(&during), "miss");
    let health = one.health().await;
    assert_eq!(health["status"], "degraded", "{health}");

    // Restarted: back on Redis.
    redis.restart().unwrap();
    let mut back = None;
    for _ in 0..50 {
        let health = one.health().await;
        if health["status"] == "ok" {
            back = Some(health);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back.is_some(), "healthy again within 5 s of the restart");
    let after = two.chat(Some("demo-pro-key"), "Back again?").await;
    assert_eq!(after.status(), StatusCode::OK);
    assert_eq!(x_cache(&after), "miss");
    let again = one.chat(Some("demo-pro-key"), "Back again?").await;
    assert_eq!(x_cache(&again), "hit", "shared through Redis again");
}
