//! The OpenAI-compatible HTTP embedder against a real HTTP server (axum on a free port)
//! that speaks the `/embeddings` protocol.
#![cfg(feature = "http")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use palisade_semantic_cache::http::{HttpEmbedder, HttpEmbedderConfig};
use palisade_semantic_cache::{CacheKey, Embedder, Error, SemanticCache, Usage};
use serde_json::{Value, json};

async fn serve() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let app = Router::new().route(
        "/v1/embeddings",
        post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                if headers.get("authorization").and_then(|v| v.to_str().ok())
                    != Some("Bearer sk-test")
                {
                    return (StatusCode::UNAUTHORIZED, Json(json!({"error": "no key"})));
                }
                if body["model"] != "embed-small" {
                    return (StatusCode::BAD_REQUEST, Json(json!({"error": "model"})));
                }
                let inputs: Vec<String> = serde_json::from_value(body["input"].clone()).unwrap();
                if inputs.iter().any(|t| t == "fail") {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        Json(json!({"error": "overloaded"})),
                    );
                }
                // Answer in reverse order, as the protocol allows; `index` says which is which.
                let data: Vec<Value> = inputs
                    .iter()
                    .enumerate()
                    .rev()
                    .map(|(i, t)| {
                        let embedding = if t == "wrongdim" {
                            vec![1.0, 0.0]
                        } else {
                            vec![t.len() as f32, 3.0, 4.0]
                        };
                        json!({"object": "embedding", "index": i, "embedding": embedding})
                    })
                    .collect();
                (
                    StatusCode::OK,
                    Json(json!({"object": "list", "data": data, "model": "embed-small"})),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), calls)
}

fn config(base: &str) -> HttpEmbedderConfig {
    HttpEmbedderConfig::new(base, "embed-small", 3).api_key("sk-test")
}

#[tokio::test]
async fn embeds_batches_in_order_and_normalises() {
    let (base, calls) = serve().await;
    let e = HttpEmbedder::new(config(&base)).unwrap();
    let vs = e.embed_batch(&["a", "abcd"]).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one request per batch");
    // [1,3,4] and [4,3,4], normalised, in input order despite the reversed answer.
    assert!((vs[0][0] - 1.0 / 26f32.sqrt()).abs() < 1e-6, "{vs:?}");
    assert!((vs[1][0] - 4.0 / 41f32.sqrt()).abs() < 1e-6, "{vs:?}");
    assert!(
        !format!("{e:?}").contains("sk-test"),
        "the key never prints"
    );
}

#[tokio::test]
async fn service_errors_and_bad_vectors_are_typed() {
    let (base, _) = serve().await;
    let e = HttpEmbedder::new(config(&base)).unwrap();
    let err = e.embed("fail").await.unwrap_err();
    assert!(
        matches!(err, Error::Embedder(_)) && err.is_transient(),
        "{err}"
    );
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("503"), "{cause}");
    assert!(matches!(
        e.embed("wrongdim").await,
        Err(Error::DimensionMismatch {
            expected: 3,
            actual: 2
        })
    ));
    let no_key = HttpEmbedder::new(HttpEmbedderConfig::new(&base, "embed-small", 3)).unwrap();
    let err = no_key.embed("x").await.unwrap_err();
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("401"), "{cause}");
    let down = HttpEmbedder::new(config("http://127.0.0.1:1/v1")).unwrap();
    assert!(matches!(down.embed("x").await, Err(Error::Embedder(_))));
    assert!(matches!(
        HttpEmbedder::new(HttpEmbedderConfig::new("", "m", 3)),
        Err(Error::InvalidConfig(_))
    ));
}

#[tokio::test]
async fn a_cache_runs_on_the_http_embedder() {
    let (base, _) = serve().await;
    let cache = SemanticCache::builder()
        .embedder(HttpEmbedder::new(config(&base)).unwrap())
        .build()
        .unwrap();
    let key = CacheKey::new("t", "n", "m", "abc").unwrap();
    cache.insert(&key, "x", Usage::default()).await.unwrap();
    // "xyz" has the same length, so the same vector: a semantic hit through the service.
    let hit = cache
        .lookup(&CacheKey::new("t", "n", "m", "xyz").unwrap())
        .await
        .unwrap();
    assert!(hit.is_hit());
    assert_eq!(cache.stats().embed_calls, 2);
}

#[test]
fn config_reads_humantime_and_refuses_unknown_fields() {
    let config: HttpEmbedderConfig = serde_json::from_value(json!({
        "base_url": "http://localhost:11434/v1",
        "model": "embed-small",
        "dimension": 3,
        "timeout": "2s 500ms",
    }))
    .unwrap();
    assert_eq!(config.timeout, std::time::Duration::from_millis(2500));
    assert!(!config.send_dimensions);
    let defaulted: HttpEmbedderConfig =
        serde_json::from_value(json!({ "base_url": "http://x/v1", "model": "m", "dimension": 3 }))
            .unwrap();
    assert_eq!(defaulted.timeout, std::time::Duration::from_secs(10));
    let typo = serde_json::from_value::<HttpEmbedderConfig>(json!({
        "base_url": "http://x/v1", "model": "m", "dimension": 3, "timout": "1s",
    }));
    assert!(typo.unwrap_err().to_string().contains("unknown field"));
}
