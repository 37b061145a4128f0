//! # tiered_api — a fitness app's API with tiered rate limits
//!
//! The backend of a fitness app, rebuilt from the Palisade crates: each request carries a
//! signed token (`palisade::apikey` HS256 tokens) whose `tier:<name>` capability picks the
//! caller's tier; the tier's quotas are enforced per user (per client address for anonymous
//! requests) by `palisade::ratelimit`, in memory or shared by every instance through Redis;
//! each answer says where the caller stands (`X-RateLimit-*`, the IETF draft's `RateLimit`
//! and `RateLimit-Policy`, `Retry-After` on a 429, and `X-RateLimit-Tier`); health checks and
//! the docs are exempt; when Redis dies the limits fail open (requests are served uncounted)
//! and count again as soon as it is back; and each user's context (profile and recent
//! training) is cached by `palisade::semantic_cache` and invalidated when the user updates
//! the profile or logs a workout.
//!
//! ```text
//! cargo run --example tiered_api                                   # in memory
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example tiered_api  # shared through Redis
//! TIERED_API_CONFIG=examples/tiered_api/tiered_api.toml cargo run --example tiered_api
//!
//! # a token (the stand-in for the app's auth service; the admin token is the secret
//! # tiered-api/admin-token, a demo value without APP_TIERED_API_ADMIN_TOKEN)
//! curl -s -X POST localhost:8084/auth/token -H 'content-type: application/json' \
//!      -H 'authorization: Bearer demo-admin-token-set-APP_TIERED_API_ADMIN_TOKEN' \
//!      -d '{"user": "ada", "tier": "premium"}'
//! curl -i localhost:8084/v1/me -H "authorization: Bearer $TOKEN"
//! ```
//!
//! ## Tiers (defaults; `[tiers]` in the settings file)
//!
//! | tier | limits | who |
//! |---|---|---|
//! | `anonymous` | 20 a minute, per client address | requests without a valid token |
//! | `free` | 60 a minute and 1,000 a day, per user | a token without a tier, or naming an unknown one |
//! | `premium` | 600 a minute and 20,000 a day, per user | |
//! | `coach` | unlimited | staff |
//!
//! Every route shares its tier's budget; `POST /v1/plans` costs `plan_cost` (5) units of it.
//!
//! ## Routes
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/me` | the caller's context, cached (`x-cache: hit`/`miss`) |
//! | `PUT /v1/me` `{display_name?, goal?, weekly_target_minutes?}` | update the profile; invalidates the context |
//! | `GET /v1/workouts`, `POST /v1/workouts` `{kind, minutes}` | list, log (invalidates the context) |
//! | `POST /v1/plans` | a week of training made from the context (costs `plan_cost`) |
//! | `POST /auth/token` `{user, tier?}` | issue a token (admin token) |
//! | `GET /docs`, `GET /docs/tiers` | the API and its tiers (exempt) |
//! | `GET /health` | the limits' store, the context cache (`connected` each), the token keys (exempt) |
//! | `GET /metrics` | Prometheus text (exempt) |
//!
//! `/v1` routes need a valid token: 401 problem+json with the reason (`missing_token`,
//! `expired`, `bad_signature`, …) and `WWW-Authenticate` otherwise. Every response carries
//! `x-request-id`; every log line of a request carries it too, and no secret value.
//!
//! ## Settings
//!
//! A TOML file named by `TIERED_API_CONFIG` (`examples/tiered_api/tiered_api.toml` documents
//! every key), then `REDIS_URL`, `LISTEN`, `RUST_LOG`; secrets from `APP_TIERED_API_TOKEN_KEY_V1`
//! and `APP_TIERED_API_ADMIN_TOKEN` (demo values without them, logged at WARN).

#[path = "../support/mod.rs"]
mod support;

mod app;
mod fitness;

#[tokio::main]
async fn main() -> Result<(), app::BoxError> {
    let settings = app::Settings::load()?;
    let secrets = app::secrets()?;
    support::telemetry::init_logs(secrets.redactor());
    let listen = support::settings::listen_addr(settings.port)?;
    let app = app::build(settings, secrets).await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "tiered_api example listening");
    app::serve(listener, app.router).await?;
    Ok(())
}
