//! # plugin_server — the backend plugins talk to
//!
//! Rebuilds a plugin backend from Palisade's crates:
//!
//! * plugins **register** (an admin calls `POST /plugins`) and receive an API key, shown
//!   once, whose scopes are their **capabilities** (`palisade::apikey`);
//! * they exchange it for **short-lived HMAC tokens** (`POST /v1/token`: HS256 JWTs from
//!   `palisade::apikey::Tokens`, 15 minutes, carrying the capabilities asked for) and call
//!   with those: a token is verified without any store lookup;
//! * **per-plugin rate limits** (`palisade::ratelimit`) that an admin changes at run time
//!   through `/config`, validated and **audited** (who, when, before and after, the request's
//!   correlation id); with Redis the changes reach every instance and survive restarts;
//! * a **bounded cache with a TTL** (`palisade::semantic_cache`, exact matches only: inputs
//!   are compared after the cache's normalisation, so case, runs of spaces and trailing
//!   `?!.` do not matter) in front of the expensive work a plugin triggers, one partition per
//!   plugin; on Redis it outlives a restart of the service;
//! * **input validation** with clear `4xx` problem+json answers (`code` says which rule);
//! * `/health` and `/metrics`; every request carries an `x-request-id`.
//!
//! ```sh
//! cargo run -p palisade --example plugin_server                                  # in memory
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p palisade --example plugin_server # shared, durable
//! ```
//!
//! It prints an admin key once (on stdout, never in the logs). Then:
//!
//! ```sh
//! curl -s localhost:3003/plugins -H "authorization: Bearer $ADMIN" -H 'content-type: application/json' \
//!   -d '{"name": "weather", "capabilities": ["complete", "cache:purge"]}'       # -> api_key
//! curl -s -XPOST localhost:3003/v1/token -H "authorization: Bearer $PLUGIN_KEY" # -> access_token
//! curl -s localhost:3003/v1/complete -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
//!   -d '{"input": "forecast for tomorrow"}' -i                                  # x-cache: miss, then hit
//! curl -s -XPUT localhost:3003/config/plugins/weather -H "authorization: Bearer $ADMIN" \
//!   -H 'content-type: application/json' -d '{"per_minute": 5}'
//! curl -s localhost:3003/config/audit -H "authorization: Bearer $ADMIN"
//! ```
//!
//! Routes:
//!
//! | route | credential | what |
//! |---|---|---|
//! | `POST /plugins` | admin key, scope `admin:plugins` | register `{"name", "capabilities"}` → the plugin's API key (once) |
//! | `GET /plugins/{name}`, `DELETE /plugins/{name}` | admin key, `admin:plugins` | a plugin's keys and limit; revoke it |
//! | `GET /config` | admin key, `admin:config` | the limits in force |
//! | `PUT /config/plugins/{name}`, `DELETE …` | admin key, `admin:config` | set `{"per_minute", "burst"?}` / back to the default |
//! | `GET /config/audit` | admin key, `admin:config` | the last 100 changes |
//! | `POST /v1/token` | plugin key, scope `token` | `{"capabilities"?}` → a token |
//! | `POST /v1/complete` | token, capability `complete` | `{"input", "max_tokens"?}` → the (cached) answer, `x-cache: hit/miss` |
//! | `DELETE /v1/cache` | token, capability `cache:purge` | forget the plugin's cached answers |
//! | `GET /v1/whoami` | token | the token's claims |
//! | `GET /health`, `GET /metrics` | — | stores and secret providers with `connected`; Prometheus text |
//!
//! Settings: `PLUGIN_SERVER_CONFIG` names a TOML file (`examples/plugin_server/plugin_server.toml`
//! documents every key); `REDIS_URL`, `LISTEN`, `RUST_LOG` and the secrets
//! (`PLUGIN_SERVER_APIKEY_PEPPER`, `PLUGIN_SERVER_TOKENS_SIGNING_KEY`) come from the
//! environment.

#[path = "../support/mod.rs"]
mod support;

mod app;

use palisade::apikey::KeySpec;
use palisade::secret_store::redact::Redactor;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = support::settings::load::<app::Settings>("PLUGIN_SERVER_CONFIG")?.with_env();
    let redactor = Redactor::new();
    support::telemetry::init_logs(&redactor);
    let addr = support::settings::listen_addr(settings.port)?;
    let bootstrap = settings.bootstrap_admin;

    let app = app::build(settings, redactor).await?;
    if bootstrap {
        let created = app
            .keys
            .create(KeySpec::new("admin", "bootstrap admin").scopes(["admin:*"]))
            .await?;
        // stdout, once: the logs go through the redactor and would show `[REDACTED]`.
        println!(
            "admin API key (shown once): {}",
            created.key.expose_secret()
        );
    }

    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "plugin_server listening");
    app::serve(listener, app.router, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    app.keys.flush_usage().await?;
    Ok(())
}
