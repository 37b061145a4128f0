//! API keys in front of an axum service, glued to the rate limiter: the tower layer verifies
//! the key and puts an `Identity` into the request, and the handler rate-limits on the
//! *key id* (never the key's text) under the policy named on the key.
//!
//! The pepper comes from the secret store (`palisade::secret_store`): secret
//! `apikey/pepper-v1`, here from the environment variable `APP_APIKEY_PEPPER_V1` (32 bytes or
//! more) or a demo value when it is unset. In production put a Vault, Azure or encrypted
//! Redis provider behind it; never source code. Everything runs in memory; requests are sent
//! to the router in-process.
//!
//! `cargo run --example apikey_axum`

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, Request};
use axum::http::StatusCode;
use axum::routing::get;
use palisade::apikey::layer::{ApiKeyLayer, Identity};
use palisade::apikey::{ApiKeys, KeySpec, MemoryStore, Pepper, Peppers};
use palisade::ratelimit::{Algorithm, Policy, Quota, RateLimiter};
use palisade::secret_store::{EnvProvider, ExposeSecret, Secrets};
use tower::ServiceExt;

struct Limits {
    limiter: RateLimiter,
    policies: HashMap<String, Policy>,
}

async fn reports(
    Extension(who): Extension<Identity>,
    Extension(limits): Extension<Arc<Limits>>,
) -> (StatusCode, String) {
    let name = who.rate_limit_policy.as_deref().unwrap_or("free");
    let policy = &limits.policies[name];
    // Keyed on the public key id: the plain text never leaves the layer.
    let decision = limits.limiter.acquire(who.key_id.as_str(), policy, 1).await;
    if !decision.allowed {
        return (StatusCode::TOO_MANY_REQUESTS, "slow down".into());
    }
    (StatusCode::OK, format!("reports for {}", who.owner))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = match std::env::var("APP_APIKEY_PEPPER_V1") {
        Ok(_) => EnvProvider::from_env("APP_"),
        Err(_) => EnvProvider::from_vars(
            "APP_",
            [(
                "APP_APIKEY_PEPPER_V1",
                "demo pepper: set APP_APIKEY_PEPPER_V1 in production",
            )],
        ),
    };
    let secrets = Secrets::builder().provider(env).build()?;
    let pepper = secrets.get("apikey/pepper-v1").await?;
    let keys = ApiKeys::builder(Peppers::new(Pepper::new(
        1,
        pepper.expose_secret().as_bytes(),
    )?))
    .store(MemoryStore::new())
    .prefix("acme")
    .build()?;

    let free = keys
        .create(
            KeySpec::new("customer-1", "laptop")
                .scopes(["reports:read"])
                .rate_limit_policy("free"),
        )
        .await?;
    let pro = keys
        .create(
            KeySpec::new("customer-2", "backend")
                .scopes(["reports:*"])
                .rate_limit_policy("pro"),
        )
        .await?;

    let mut policies = HashMap::new();
    policies.insert(
        "free".to_owned(),
        Policy::single("free", Algorithm::Gcra, Quota::per_minute(2))?,
    );
    policies.insert(
        "pro".to_owned(),
        Policy::single("pro", Algorithm::Gcra, Quota::per_minute(100))?,
    );
    let limits = Arc::new(Limits {
        limiter: RateLimiter::new(palisade::ratelimit::MemoryStore::new()),
        policies,
    });

    let app = Router::new()
        .route("/reports", get(reports))
        .layer(axum::Extension(limits))
        .layer(ApiKeyLayer::new(keys.clone()).require_scope("reports:read"));

    let send = |key: Option<String>| {
        let app = app.clone();
        async move {
            let mut req = Request::get("/reports");
            if let Some(k) = key {
                req = req.header("authorization", format!("Bearer {k}"));
            }
            let res = app.oneshot(req.body(axum::body::Body::empty())?).await?;
            Ok::<_, Box<dyn std::error::Error>>(res.status())
        }
    };
    let free_key = free.key.expose_secret().to_owned();
    for i in 1..=3 {
        println!(
            "free key, request {i}: {}",
            send(Some(free_key.clone())).await?
        );
    }
    println!(
        "pro key: {}",
        send(Some(pro.key.expose_secret().to_owned())).await?
    );
    println!("no key: {}", send(None).await?);
    keys.revoke(&pro.record.id).await?;
    println!(
        "pro key after revocation: {}",
        send(Some(pro.key.expose_secret().to_owned())).await?
    );
    Ok(())
}
