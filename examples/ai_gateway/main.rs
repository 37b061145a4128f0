//! **AI service gateway**: the backend of an LLM product, rebuilt from Palisade's crates.
//! Clients call an OpenAI-compatible API with keys the gateway issues; the gateway limits
//! them by tier, answers from a semantic cache when it can, and otherwise calls the first of
//! its upstream providers whose circuit breaker admits the call, falling back to the next.
//!
//! | concern | crate | where |
//! |---|---|---|
//! | API keys with scopes (`ai:chat`, `ai:batch`, `usage:read`, `admin`) | `palisade::apikey` (tower layer per route) | `app.rs` `router` |
//! | tiers: free 10/min + 60/h, premium 50/min + 300/h on AI routes, admin unlimited; batches weighted per prompt | `palisade::ratelimit` (rules + layer; the batch route charges by hand) | `app.rs` `build`, `handlers.rs` `batch` |
//! | a breaker per provider, fallback to the next | `palisade::circuit_breaker` | `providers.rs` `Upstreams::complete` |
//! | semantic cache per key owner, tokens and dollars saved | `palisade::semantic_cache` | `handlers.rs` `answer` |
//! | per-provider cost tracking | metrics + usage ledger | `providers.rs`, `usage.rs` |
//! | provider keys, the API-key pepper, the backup key | `palisade::secret_store` (env → file → demo), logs redacted | `app.rs` `secrets` |
//! | the ledger's schema, migrated at start-up after an encrypted backup | `palisade::migrate` (memory target; PostgreSQL with `DATABASE_URL`) | `usage.rs` `migrate` |
//!
//! The two upstreams (`alpha`, `beta`) are fake OpenAI-compatible servers that the example
//! serves itself, each on its own port; `PUT /admin/providers/alpha/fault` makes one fail
//! or slow down (or start it that way with `fault = "fail"` in the settings). Point a
//! provider's `base_url` at a real OpenAI-compatible service to use it instead.
//!
//! # Run
//! ```sh
//! cargo run -p palisade --example ai_gateway                 # everything in memory
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p palisade --example ai_gateway
//! DATABASE_URL=postgres://postgres@127.0.0.1/test cargo run -p palisade --example ai_gateway
//! AI_GATEWAY_CONFIG=examples/ai_gateway/ai_gateway.toml cargo run -p palisade --example ai_gateway
//! ```
//! With `REDIS_URL`, API keys, rate limits, breaker state and cached answers are shared by
//! every instance; with `DATABASE_URL`, the usage ledger is a PostgreSQL table migrated at
//! start-up (after a `pg_dump` backup); without it, the migrate crate's memory target runs.
//! The first start prints an admin key once on stdout:
//! ```sh
//! curl -s -XPOST localhost:8080/admin/keys -H "authorization: Bearer $ADMIN" \
//!   -d '{"owner":"acme","name":"laptop","tier":"free"}' -H 'content-type: application/json'
//! curl -s localhost:8080/v1/chat/completions -H "authorization: Bearer $KEY" \
//!   -H 'content-type: application/json' \
//!   -d '{"model":"small","messages":[{"role":"user","content":"What is a circuit breaker?"}]}'
//! ```
//!
//! # Routes
//! | route | scope | what |
//! |---|---|---|
//! | `POST /v1/chat/completions` | `ai:chat` | OpenAI-shaped answer plus a `gateway` object (provider, cache, cost, saved, fallbacks); headers `x-gateway-provider`, `x-gateway-cache`, `RateLimit*`, `X-RateLimit-*`, `X-RateLimit-Tier` |
//! | `POST /v1/batch` | `ai:batch` | `{"requests": [...]}`, answered concurrently, costs one unit per prompt |
//! | `GET /v1/models` | `models:read` | the models clients may ask for |
//! | `GET /v1/usage` | `usage:read` | the owner's requests, tokens, dollars spent and saved, per provider |
//! | `POST /admin/keys`, `GET /admin/keys?owner=`, `DELETE /admin/keys/{id}` | `admin` | issue (shown once), list, revoke keys |
//! | `PUT /admin/providers/{name}/fault` | `admin` | `{"mode": "fail" \| "slow" \| "none", "delay": "3s"}` |
//! | `PUT /admin/breakers/{name}` | `admin` | `{"action": "force_open" \| "close" \| "reset"}` |
//! | `GET /admin/costs` | `admin` | per-provider calls, failures, fallbacks, tokens, dollars; cache savings |
//! | `GET /admin/migrations` | `admin` | schema status and backups |
//! | `GET /health`, `GET /metrics` | none | every backend with `connected`; Prometheus text |
//!
//! Every response carries `x-request-id` (taken from the request or made up), which every
//! log line of the request carries too. Errors are `application/problem+json`.
//!
//! # Settings
//! `AI_GATEWAY_CONFIG` names a TOML file; `examples/ai_gateway/ai_gateway.toml` documents
//! every key with its default. `REDIS_URL`, `DATABASE_URL`, `LISTEN` and `RUST_LOG` come
//! from the environment; secrets from `GATEWAY_APIKEY_PEPPER_V1`,
//! `GATEWAY_PROVIDERS_<NAME>_API_KEY`, `GATEWAY_MIGRATE_BACKUP_KEY` (64 hex digits), then
//! the file `secrets.file`, then demo values (logged at WARN; `secrets.demo_values = false`
//! in production).

#[path = "../support/mod.rs"]
mod support;

mod app;

#[tokio::main]
async fn main() -> Result<(), app::BoxError> {
    let settings = app::settings::Settings::load()?;
    let addr = support::settings::listen_addr(settings.port)?;
    // Logs go through the redactor of the secret store the gateway loads its secrets from:
    // every value it loads is scrubbed from every line.
    let names: Vec<&str> = settings.providers.iter().map(|p| p.name.as_str()).collect();
    let secrets = app::secrets(&settings.secrets, &names)?;
    support::telemetry::init_logs(secrets.redactor());

    let app = app::build_with_secrets(settings, secrets).await?;
    if let Some(admin) = &app.admin_key {
        // Shown once, on stdout, never through the logs.
        println!("admin key (shown once): {}", admin.key.expose_secret());
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, backend = app.gateway.backend(), ledger = app.gateway.ledger.backend(), "ai_gateway listening");
    for u in app.gateway.upstreams.iter() {
        tracing::info!(provider = %u.name, url = %u.base_url, "upstream");
    }
    axum::serve(listener, app.router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    app.gateway.keys.flush_usage().await?;
    Ok(())
}
