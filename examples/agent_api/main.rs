//! # agent_api — the API of an agent platform
//!
//! Rebuilds the backend an agent platform runs in front of its LLM providers, database and
//! Redis, from Palisade's crates:
//!
//! * **circuit breakers** (`palisade::circuit_breaker`) around every dependency, all in one
//!   `Registry`: each LLM provider (`provider:<name>`, tried in order: the next one answers
//!   when a provider fails or its breaker is open), the database (`database`: usage records
//!   wait in a bounded outbox and are written when it is back) and Redis (`redis`: sessions
//!   fall back to this process's memory);
//! * **rate limits** (`palisade::ratelimit`) per user, client IP, API key and for everybody,
//!   with `RateLimit`/`X-RateLimit-*` headers and `429` problem+json;
//! * **API keys** (`palisade::apikey`) with scopes (`generate`, `usage:read`);
//! * **secrets** (`palisade::secret_store`) from HashiCorp Vault with a file fallback, and
//!   logs that never show a loaded value (every line goes through the secret redactor);
//! * `/generate` records the usage of every call (tokens in and out, provider, key) in
//!   PostgreSQL.
//!
//! Without any service it runs in memory and serves its own fakes over HTTP on a free port:
//! a Vault KV v2 server and two OpenAI-style providers, `alpha` and `beta` (their control
//! routes break them on demand; the address is logged at start-up).
//!
//! ```sh
//! cargo run -p palisade --example agent_api --features vault   # memory, fake Vault and providers
//! REDIS_URL=redis://127.0.0.1:6379 DATABASE_URL=postgres://postgres@127.0.0.1/test \
//!   cargo run -p palisade --example agent_api --features vault  # shared state, real ledger
//! VAULT_ADDR=https://vault:8200 VAULT_TOKEN=… AGENT_API_CONFIG=examples/agent_api/agent_api.toml \
//!   cargo run -p palisade --example agent_api --features vault  # real Vault, file fallback
//! ```
//!
//! It prints a demo API key once (on stdout, never in the logs). Then:
//!
//! ```sh
//! curl -s localhost:3002/v1/generate -H "authorization: Bearer $KEY" \
//!   -H 'content-type: application/json' -d '{"prompt": "plan my week", "session": "s1"}'
//! curl -s localhost:3002/v1/usage -H "authorization: Bearer $KEY"
//! curl -s localhost:3002/health ; curl -s localhost:3002/health/breakers ; curl -s localhost:3002/metrics
//! curl -s -XPOST $FAKES/control/providers/alpha -d '{"fail": true}' -H 'content-type: application/json'
//! ```
//!
//! Routes:
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/generate` | `{"prompt", "session"?, "max_tokens"?}` → the first provider's answer; scope `generate` |
//! | `GET /v1/usage` | the caller's recorded calls and tokens; scope `usage:read` |
//! | `GET /health` | every breaker, store, secret provider and secret, `connected` per backend |
//! | `GET /health/breakers` | the breaker registry's health (state, rates, window counts) |
//! | `GET /metrics` | Prometheus text |
//!
//! Settings: `AGENT_API_CONFIG` names a TOML file (`examples/agent_api/agent_api.toml`
//! documents every key); `REDIS_URL`, `DATABASE_URL`, `VAULT_ADDR`, `VAULT_TOKEN`, `LISTEN`
//! and `RUST_LOG` come from the environment.

#[path = "../support/mod.rs"]
mod support;

mod app;

use palisade::apikey::KeySpec;
use palisade::secret_store::redact::Redactor;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = support::settings::load::<app::Settings>("AGENT_API_CONFIG")?.with_env();
    let redactor = Redactor::new();
    support::telemetry::init_logs(&redactor);
    let addr = support::settings::listen_addr(settings.port)?;
    let bootstrap = settings.bootstrap_key;
    let prefix = settings.apikey.prefix.clone();

    let app = app::build(settings, redactor).await?;
    if bootstrap {
        let created = app
            .keys
            .create(KeySpec::new("demo-user", "demo key").scopes(["generate", "usage:read"]))
            .await?;
        // stdout, once: the logs go through the redactor and would show `[REDACTED]`.
        println!(
            "demo API key for user `demo-user` (shown once): {}",
            created.key.expose_secret()
        );
    }
    if let Some(fakes) = &app.fakes {
        println!("fake Vault and providers at {}", fakes.address);
    }

    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, keys = %prefix, "agent_api listening");
    app::serve(listener, app.router, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    app.keys.flush_usage().await?;
    Ok(())
}
