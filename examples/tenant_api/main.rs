//! # tenant_api — a multi-tenant backend with layered limits and a per-organisation cache
//!
//! The backend of a multi-tenant SaaS, rebuilt from the Palisade crates: organisations'
//! data behind API keys scoped to an organisation (`palisade::apikey`, read from
//! `x-api-key`); rate limits of minute, hour and day windows counted per user, per API key
//! or per client address, chosen route by route (`palisade::ratelimit` rules: reports per
//! key, writes per user, public routes per address, the rest per user), each answer
//! carrying every window's figures; and a cache (`palisade::semantic_cache`, exact-match
//! namespaces) where each organisation's entries live in a partition of their own, each
//! namespace with its own TTL, invalidated on change, reported by `/cache/stats`. In memory
//! by default, shared by every instance through Redis with `REDIS_URL`.
//!
//! ```text
//! cargo run --example tenant_api                                   # in memory
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example tenant_api  # shared through Redis
//! # the operator key is printed once on stdout at start-up (bootstrap_admin = true)
//! curl -s localhost:8085/orgs/acme/reports/summary -H "x-api-key: $KEY" -i
//! curl -s -X POST localhost:8085/admin/keys -H "x-api-key: $KEY" -H 'content-type: application/json' \
//!      -d '{"owner": "alice", "org": "acme", "name": "laptop", "scopes": ["projects:read", "projects:write"]}'
//! curl -s localhost:8085/cache/stats -H "x-api-key: $KEY"
//! ```
//!
//! ## Limits (defaults; `[[limits.routes]]` in the settings file, first match wins)
//!
//! | name | routes | counted per | minute / hour / day |
//! |---|---|---|---|
//! | `reports` | `GET /orgs/*/reports/**` | API key | 10 / 100 / 500 |
//! | `writes` | `PUT`, `POST`, `DELETE` under `/orgs/**` | user (the key's owner) | 20 / 200 / 1,000 |
//! | `public` | `/public/**` | client address | 30 / 500 / 2,000 |
//! | `default` | everything else | user | 120 / 3,000 / 20,000 |
//! | `ip-guard` | everything, before the key is checked | client address | 600 / 10,000 / 100,000 |
//!
//! A counted answer carries `X-RateLimit-Limit-Minute`, `X-RateLimit-Remaining-Minute`,
//! `X-RateLimit-Reset-Minute` (and `-Hour`, `-Day`), the tightest window's
//! `X-RateLimit-Limit`/`-Remaining`/`-Reset`, and `RateLimit`/`RateLimit-Policy` listing every
//! window; a 429 adds `Retry-After`. `/health` and `/metrics` are exempt.
//!
//! ## Routes
//!
//! | route | scope | what |
//! |---|---|---|
//! | `GET /orgs/{org}/projects` | `org:{org}`, `projects:read` | the projects, cached (`x-cache`) in namespace `projects` |
//! | `PUT /orgs/{org}/projects/{id}` `{name?, status?, budget_cents?}` | `projects:write` | change one; drops the organisation's cached lists and reports (tag `projects`) |
//! | `GET /orgs/{org}/reports/{summary,budget}` | `reports:read` | a report, cached in namespace `reports` |
//! | `DELETE /orgs/{org}/cache`, `DELETE /orgs/{org}/cache/{namespace}` | `cache:invalidate` | drop the organisation's entries, or one namespace's |
//! | `GET /cache/stats` | `cache:stats` | hits, misses, `hit_rate_percent`, memory (entries; bytes in memory), `connected`, per organisation too, and each namespace's TTL |
//! | `POST /admin/keys` `{owner, org, name, scopes?}` | `keys:create` | a key for one user in one organisation, shown once |
//! | `GET /public/status` | none | counted per client address |
//! | `GET /health`, `GET /metrics` | none | every store (`connected` each), Prometheus text |
//!
//! A key without the organisation's scope gets 403 (`wrong_org`), whether the organisation
//! exists or not. Errors are problem+json with a `code`; every response carries
//! `x-request-id`.
//!
//! ## Settings
//!
//! A TOML file named by `TENANT_API_CONFIG` (`examples/tenant_api/tenant_api.toml` documents
//! every key), then `REDIS_URL`, `LISTEN`, `RUST_LOG`; the API-key pepper from
//! `APP_TENANT_API_PEPPER_V1` (a demo value without it, logged at WARN).

#[path = "../support/mod.rs"]
mod support;

mod app;
mod tenants;

#[tokio::main]
async fn main() -> Result<(), app::BoxError> {
    let settings = app::Settings::load()?;
    let secrets = app::secrets()?;
    support::telemetry::init_logs(secrets.redactor());
    let listen = support::settings::listen_addr(settings.port)?;
    let bootstrap = settings.bootstrap_admin;
    let app = app::build(settings, secrets).await?;
    if bootstrap {
        // On stdout, once: the logs never see a key.
        let key = app::bootstrap_admin(&app.keys).await?;
        println!("operator API key (valid 24 h, shown once): {key}");
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "tenant_api example listening");
    app::serve(listener, app.router).await?;
    Ok(())
}
