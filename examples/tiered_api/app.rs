//! The fitness API: settings, the tiered rate limits, token authentication, the cached
//! per-user context, and the routes.
// The example and its end-to-end test (crates/palisade/tests/tiered_api.rs) each use a part.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use palisade::apikey::{Pepper, Peppers, Tokens};
use palisade::ratelimit::layer::RateLimitLayer;
use palisade::ratelimit::rules::{
    ClientIp, Key, RequestLimiter, Route, Rules, Tier, TierResolver, UserId,
};
use palisade::ratelimit::{Algorithm, FailureMode, Policy, Quota, RateLimiter};
use palisade::secret_store::{EnvProvider, ExposeSecret, MemoryProvider, SecretString, Secrets};
use palisade::semantic_cache::{CacheKey, Computed, NamespacePolicy, SemanticCache, Source, Usage};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::fitness::{self, Context, Database, Goal};
use crate::support;

/// Errors of start-up.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The cache namespace of per-user contexts.
pub const CONTEXT_NAMESPACE: &str = "user-context";

// -- settings -------------------------------------------------------------------------------

/// One tier's limits: either `unlimited = true`, or quotas checked together (a request
/// passes only when every quota admits it; a denial consumes none).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TierLimits {
    /// No limit at all (staff, internal jobs).
    pub unlimited: bool,
    /// The algorithm (`gcra`, `token_bucket`, `fixed_window`, `sliding_window_log`,
    /// `sliding_window_counter`).
    pub algorithm: Algorithm,
    /// `{ name = "minute", limit = 60, period = "1m" }`, … The names appear in the
    /// `RateLimit` header.
    pub quotas: Vec<QuotaSettings>,
}

/// One quota of a tier.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSettings {
    /// Its name in the headers (`minute`, `day`).
    pub name: String,
    /// Units per period.
    pub limit: u64,
    /// The period (`"1m"`, `"24h"`).
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// For the bucket algorithms: how many units may come at once (default: `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

impl TierLimits {
    fn quotas(quotas: &[(&str, u64, Duration)]) -> Self {
        Self {
            unlimited: false,
            algorithm: Algorithm::default(),
            quotas: quotas
                .iter()
                .map(|(name, limit, period)| QuotaSettings {
                    name: (*name).to_owned(),
                    limit: *limit,
                    period: *period,
                    burst: None,
                })
                .collect(),
        }
    }
}

/// Everything the service reads at start-up (see `tiered_api.toml` beside this file).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Port on 127.0.0.1 when `LISTEN` is unset.
    pub port: u16,
    /// Redis for the rate limits and the context cache; `REDIS_URL` wins. Without either,
    /// both live in this process's memory.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key this service writes.
    pub redis_prefix: String,
    /// The `iss` of the tokens this service issues and accepts.
    pub token_issuer: String,
    /// How long an issued token lives (`"1h"`).
    #[serde(with = "humantime_serde")]
    pub token_lifetime: Duration,
    /// The tier of a token that names none.
    pub default_tier: String,
    /// The tier of requests without a valid token (keyed by client address).
    pub anonymous_tier: String,
    /// Every tier's limits.
    pub tiers: BTreeMap<String, TierLimits>,
    /// What `POST /v1/plans` costs, in units of the tier's quotas (a read costs 1).
    pub plan_cost: u64,
    /// Paths never limited (`**` matches any rest).
    pub exempt: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed (CIDRs); none: the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
    /// What the limits do when Redis fails: `fail_open` (serve uncounted), `fail_closed`
    /// (refuse), `fallback_to_memory` (count per instance).
    pub failure_mode: FailureMode,
    /// How long a rate-limit decision may wait for Redis.
    #[serde(with = "humantime_serde")]
    pub limiter_timeout: Duration,
    /// How long a user's context stays cached (an update invalidates it at once).
    #[serde(with = "humantime_serde")]
    pub context_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        let minute = Duration::from_secs(60);
        let day = Duration::from_secs(86_400);
        let mut tiers = BTreeMap::new();
        tiers.insert(
            "anonymous".to_owned(),
            TierLimits::quotas(&[("minute", 20, minute)]),
        );
        tiers.insert(
            "free".to_owned(),
            TierLimits::quotas(&[("minute", 60, minute), ("day", 1_000, day)]),
        );
        tiers.insert(
            "premium".to_owned(),
            TierLimits::quotas(&[("minute", 600, minute), ("day", 20_000, day)]),
        );
        tiers.insert(
            "coach".to_owned(),
            TierLimits {
                unlimited: true,
                ..TierLimits::default()
            },
        );
        Self {
            port: 8084,
            redis_url: None,
            redis_prefix: "tiered_api".to_owned(),
            token_issuer: "fitness-auth".to_owned(),
            token_lifetime: Duration::from_secs(3_600),
            default_tier: "free".to_owned(),
            anonymous_tier: "anonymous".to_owned(),
            tiers,
            plan_cost: 5,
            exempt: vec![
                "/health".to_owned(),
                "/metrics".to_owned(),
                "/docs".to_owned(),
                "/docs/**".to_owned(),
            ],
            trusted_proxies: Vec::new(),
            failure_mode: FailureMode::FailOpen,
            limiter_timeout: Duration::from_millis(50),
            context_ttl: Duration::from_secs(300),
        }
    }
}

impl Settings {
    /// The file named by `TIERED_API_CONFIG` (defaults without it), then `REDIS_URL`.
    ///
    /// # Errors
    /// An unreadable or invalid file.
    pub fn load() -> Result<Self, String> {
        let mut settings: Self = support::settings::load("TIERED_API_CONFIG")?;
        if let Some(url) = support::settings::redis_url() {
            settings.redis_url = Some(url);
        }
        Ok(settings)
    }
}

// -- secrets --------------------------------------------------------------------------------

const DEMO_TOKEN_KEY: &str = "demo token signing key: set APP_TIERED_API_TOKEN_KEY_V1";
const DEMO_ADMIN_TOKEN: &str = "demo-admin-token-set-APP_TIERED_API_ADMIN_TOKEN";

/// The service's secrets: `tiered-api/token-key-v1` (32 bytes or more: signs and verifies
/// the tokens) and `tiered-api/admin-token` (the bearer token of `POST /auth/token`), from
/// `APP_TIERED_API_TOKEN_KEY_V1` / `APP_TIERED_API_ADMIN_TOKEN`, else demo values (logged
/// at WARN). Every value loaded is scrubbed from the logs by the store's redactor.
///
/// # Errors
/// A provider that cannot be built (never with these).
pub fn secrets() -> Result<Secrets, BoxError> {
    let demo = MemoryProvider::new()
        .named("demo")
        .with_secret("tiered-api/token-key-v1", DEMO_TOKEN_KEY)?
        .with_secret("tiered-api/admin-token", DEMO_ADMIN_TOKEN)?;
    Ok(Secrets::builder()
        .provider(EnvProvider::from_env("APP_"))
        .provider(demo)
        .build()?)
}

// -- the app --------------------------------------------------------------------------------

/// What `build` returns: the router and what a test pokes at.
#[derive(Debug)]
pub struct App {
    /// Every route, with authentication, rate limits and correlation ids.
    pub router: Router,
    /// Issues and verifies tokens (a test issues its own).
    pub tokens: Tokens,
    /// The stand-in database.
    pub database: Arc<Database>,
}

struct AppState {
    tokens: Tokens,
    admin_token: SecretString,
    default_tier: String,
    anonymous_tier: String,
    tiers: BTreeMap<String, TierLimits>,
    plan_cost: u64,
    limiter: RequestLimiter,
    cache: SemanticCache,
    database: Arc<Database>,
    backend: &'static str,
}

/// The policy of a tier (its quotas under the name `tier-<name>`), `None` when unlimited.
fn tier_policy(name: &str, limits: &TierLimits) -> Result<Option<Policy>, BoxError> {
    if limits.unlimited {
        if !limits.quotas.is_empty() {
            return Err(format!("tier {name}: unlimited with quotas").into());
        }
        return Ok(None);
    }
    if limits.quotas.is_empty() {
        return Err(format!("tier {name}: no quotas (say `unlimited = true` for none)").into());
    }
    let mut policy = Policy::builder(format!("tier-{name}")).algorithm(limits.algorithm);
    for q in &limits.quotas {
        let mut quota = Quota::new(q.limit, q.period);
        if let Some(burst) = q.burst {
            quota = quota.with_burst(burst);
        }
        policy = policy.quota(q.name.as_str(), quota);
    }
    Ok(Some(policy.build()?))
}

/// The rules: exemptions first, then `POST /v1/plans` at `plan_cost`, then everything else
/// at cost 1, every route with every tier's policy (a route's requests share the tier's
/// budget, since the policy names are the same), keyed by user, else by client address.
fn rules(settings: &Settings) -> Result<Rules, BoxError> {
    let mut plans = Route::new("/v1/plans")?
        .methods([axum::http::Method::POST])
        .cost(settings.plan_cost);
    let mut everything = Route::new("/**")?;
    for (name, limits) in &settings.tiers {
        match tier_policy(name, limits)? {
            Some(policy) => {
                plans = plans.tier(name.clone(), policy.clone());
                everything = everything.tier(name.clone(), policy);
            }
            None => {
                plans = plans.unlimited_tier(name.clone());
                everything = everything.unlimited_tier(name.clone());
            }
        }
    }
    let client_ip = ClientIp::new()
        .trust(&settings.trusted_proxies)?
        .peer_from(|e| e.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()));
    let mut rules = Rules::builder();
    for path in &settings.exempt {
        rules = rules.exempt(path)?;
    }
    Ok(rules
        .route(plans)
        .route(everything)
        .key(Key::first_of([Key::user_id(), Key::client_ip(client_ip)]))
        .tiers(TierResolver::extension(), settings.default_tier.clone())
        .build()?)
}

/// Build the service from `settings`, its secrets from `secrets`.
///
/// # Errors
/// Invalid settings (a tier without quotas, a default tier that is not configured, a bad
/// path pattern or proxy CIDR), a malformed `REDIS_URL`, or a secret that cannot be read.
pub async fn build(settings: Settings, secrets: Secrets) -> Result<App, BoxError> {
    build_with(settings, secrets, Arc::new(Database::new())).await
}

/// [`build`] on an existing database, as every instance of a fleet shares one (the
/// stand-in database lives in one process, so only instances in one process can).
///
/// # Errors
/// As [`build`].
pub async fn build_with(
    settings: Settings,
    secrets: Secrets,
    database: Arc<Database>,
) -> Result<App, BoxError> {
    let metrics = support::telemetry::metrics();
    for tier in [&settings.default_tier, &settings.anonymous_tier] {
        if !settings.tiers.contains_key(tier) {
            return Err(format!("tier {tier} is used but not configured under [tiers]").into());
        }
    }
    let key = support::secrets::get_warning_on_demo(&secrets, "tiered-api/token-key-v1").await?;
    let tokens = Tokens::new(
        Peppers::new(Pepper::new(1, key.expose_secret().as_bytes())?),
        settings.token_issuer.clone(),
    )?
    .with_lifetime(settings.token_lifetime);
    let admin_token =
        support::secrets::get_warning_on_demo(&secrets, "tiered-api/admin-token").await?;

    let context_policy = NamespacePolicy::exact_only(settings.context_ttl);
    let (limiter, cache, backend) = match &settings.redis_url {
        Some(url) => {
            let pool = support::settings::redis_pool(url)?;
            let store = palisade::ratelimit::RedisStore::new(pool.clone())
                .with_prefix(&format!("{}:rl", settings.redis_prefix));
            let limiter = RateLimiter::builder(store)
                .failure_mode(settings.failure_mode)
                .timeout(settings.limiter_timeout)
                .build();
            let cache = SemanticCache::builder()
                .store(
                    palisade::semantic_cache::RedisStore::new(pool)
                        .with_prefix(&format!("{}:cache", settings.redis_prefix)),
                )
                .namespace(CONTEXT_NAMESPACE, context_policy)
                .build()?;
            (limiter, cache, "redis")
        }
        None => {
            let limiter = RateLimiter::builder(palisade::ratelimit::MemoryStore::new())
                .failure_mode(settings.failure_mode)
                .build();
            let cache = SemanticCache::builder()
                .namespace(CONTEXT_NAMESPACE, context_policy)
                .build()?;
            (limiter, cache, "memory")
        }
    };
    let limiter = RequestLimiter::new(limiter, rules(&settings)?);
    let state = Arc::new(AppState {
        tokens: tokens.clone(),
        admin_token,
        default_tier: settings.default_tier.clone(),
        anonymous_tier: settings.anonymous_tier.clone(),
        tiers: settings.tiers.clone(),
        plan_cost: settings.plan_cost,
        limiter: limiter.clone(),
        cache,
        database: Arc::clone(&database),
        backend,
    });

    let router = Router::new()
        .route("/health", get(health))
        .route("/docs", get(docs))
        .route("/docs/tiers", get(docs_tiers))
        .route("/auth/token", post(issue_token))
        .route("/v1/me", get(me).put(update_me))
        .route("/v1/workouts", get(list_workouts).post(log_workout))
        .route("/v1/plans", post(make_plan))
        .fallback(not_found)
        .with_state(Arc::clone(&state))
        .merge(support::http::metrics_route(metrics))
        // Inner to outer: the limits see the tier and user the authentication found.
        .layer(RateLimitLayer::new(limiter).tier_header(true))
        .layer(middleware::from_fn_with_state(state, authenticate));
    Ok(App {
        router: support::http::with_request_ids(router),
        tokens,
        database,
    })
}

/// Serve `router` on `listener`, with each connection's peer address (the client address
/// the anonymous limits are keyed by).
///
/// # Errors
/// The listener fails.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

// -- authentication -------------------------------------------------------------------------

/// The verified caller, put into the request by [`authenticate`].
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's subject.
    pub user: String,
    /// The tier the token names (or the default tier).
    pub tier: String,
}

/// Why a request has no [`Caller`] (a missing token or a [`TokenDenial`] name).
///
/// [`TokenDenial`]: palisade::apikey::TokenDenial
#[derive(Clone, Copy, Debug)]
struct Unauthenticated(&'static str);

/// Verify the bearer token, if any (no I/O: an HMAC and two small JSON parses). A valid one
/// gives the request its user and tier; anything else makes it anonymous (limited by client
/// address), and the routes that need a caller answer 401 with the reason. Verifying before
/// the limits means a flood of bad tokens is limited like any anonymous traffic.
async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        });
    let verified = match token {
        None => Err("missing_token"),
        Some(token) => state.tokens.verify(token).map_err(|d| d.as_str()),
    };
    let extensions = request.extensions_mut();
    match verified {
        Ok(claims) => {
            let tier = claims
                .caps
                .iter()
                .find_map(|c| c.strip_prefix("tier:"))
                .unwrap_or(&state.default_tier)
                .to_owned();
            extensions.insert(UserId(claims.sub.clone()));
            extensions.insert(Tier(tier.clone()));
            extensions.insert(Caller {
                user: claims.sub,
                tier,
            });
        }
        Err(reason) => {
            extensions.insert(Tier(state.anonymous_tier.clone()));
            extensions.insert(Unauthenticated(reason));
        }
    }
    next.run(request).await
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(caller) = parts.extensions.get::<Self>() {
            return Ok(caller.clone());
        }
        let reason = parts
            .extensions
            .get::<Unauthenticated>()
            .map_or("missing_token", |u| u.0);
        let mut response = problem(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "this route needs a valid bearer token",
            reason,
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"fitness\""),
        );
        Err(response)
    }
}

fn problem(status: StatusCode, title: &str, detail: impl Into<String>, code: &str) -> Response {
    let mut extra = serde_json::Map::new();
    extra.insert("code".to_owned(), code.into());
    support::http::problem_with(status, title, detail, extra)
}

/// A JSON body whose rejection is problem+json like every other error.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(problem(
                rejection.status(),
                "Invalid body",
                rejection_text(&rejection),
                "invalid_body",
            )),
        }
    }
}

fn rejection_text(rejection: &JsonRejection) -> String {
    rejection.body_text()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// -- routes ---------------------------------------------------------------------------------

async fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "Not found",
        "no such route",
        "not_found",
    )
}

async fn health(State(state): State<Arc<AppState>>) -> support::health::Report {
    let limits = match state.limiter.limiter().health().await {
        Ok(()) => support::health::Component::up(
            "ratelimit",
            state.backend,
            state.limiter.limiter().failure_mode().as_str(),
        ),
        Err(e) => support::health::Component::down("ratelimit", state.backend, e.to_string()),
    };
    let cache = match state.cache.health().await {
        Ok(()) => support::health::Component::up("cache:user-context", state.backend, "ok"),
        Err(e) => {
            support::health::Component::down("cache:user-context", state.backend, e.to_string())
        }
    };
    let tokens = support::health::Component::up("tokens", "hmac", "ok");
    support::health::Report::new(vec![limits, cache, tokens])
}

/// `GET /docs`: what the API offers (exempt from the limits, like `/docs/**`).
async fn docs() -> Json<serde_json::Value> {
    Json(json!({
        "service": "fitness API (palisade tiered_api example)",
        "authentication": "Authorization: Bearer <token>; the token's `tier:<name>` capability picks the tier",
        "routes": [
            { "route": "GET /v1/me", "what": "your context (profile and recent training), cached", "cost": 1 },
            { "route": "PUT /v1/me", "what": "update display_name, goal, weekly_target_minutes", "cost": 1 },
            { "route": "GET /v1/workouts", "what": "your latest workouts", "cost": 1 },
            { "route": "POST /v1/workouts", "what": "log a workout {kind, minutes}", "cost": 1 },
            { "route": "POST /v1/plans", "what": "a week of training made from your context", "cost": "plan_cost" },
            { "route": "POST /auth/token", "what": "issue a token {user, tier} (admin token)" },
            { "route": "GET /docs/tiers", "what": "every tier's limits" },
        ],
        "headers": ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "RateLimit", "RateLimit-Policy", "Retry-After", "X-RateLimit-Tier", "x-request-id", "x-cache"],
    }))
}

async fn docs_tiers(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "default_tier": state.default_tier,
        "anonymous_tier": state.anonymous_tier,
        "plan_cost": state.plan_cost,
        "tiers": state.tiers,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user: String,
    tier: Option<String>,
}

#[derive(Serialize)]
struct IssuedToken {
    token: String,
    token_type: &'static str,
    tier: String,
}

/// `POST /auth/token`: the stand-in for the app's auth service, which signs a token naming
/// the user and its plan's tier. Needs the admin token.
async fn issue_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Body(request): Body<TokenRequest>,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(
        presented.as_bytes(),
        state.admin_token.expose_secret().as_bytes(),
    ) {
        return problem(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "issuing tokens needs the admin token",
            "not_admin",
        );
    }
    let tier = request.tier.unwrap_or_else(|| state.default_tier.clone());
    if !state.tiers.contains_key(&tier) {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Unknown tier",
            format!("tier `{tier}` is not configured"),
            "unknown_tier",
        );
    }
    let user = request.user.trim();
    if user.is_empty()
        || user.len() > 64
        || !user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid user",
            "`user` is 1 to 64 of A-Z a-z 0-9 - _ .",
            "invalid_user",
        );
    }
    match state.tokens.issue(user, [format!("tier:{tier}")]) {
        Ok(token) => (
            StatusCode::CREATED,
            Json(IssuedToken {
                token,
                token_type: "Bearer",
                tier,
            }),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "token not issued");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Token not issued",
                "see the logs",
                "error",
            )
        }
    }
}

fn context_key(user: &str) -> palisade::semantic_cache::Result<CacheKey> {
    // The user is the cache tenant: no lookup can ever reach another user's context.
    CacheKey::new(user, CONTEXT_NAMESPACE, "v1", "context")
}

/// The caller's context: from the cache (shared through Redis when configured), else built
/// from the database once (concurrent misses share one build) and cached for
/// `context_ttl`. When the cache's backend is down the context is built every time
/// (fail-open). Returns whether it was a hit.
async fn context(state: &AppState, user: &str) -> Result<(Context, bool), Response> {
    let key = context_key(user).map_err(|e| {
        problem(
            StatusCode::BAD_REQUEST,
            "Invalid user",
            e.to_string(),
            "invalid_user",
        )
    })?;
    let database = Arc::clone(&state.database);
    let owned = user.to_owned();
    let served = state
        .cache
        .get_or_compute(&key, || async move {
            let context = database.load_context(&owned);
            Computed::json(&context, Usage::default())
        })
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "context unavailable");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Context unavailable",
                "see the logs",
                "unavailable",
            )
        })?;
    let hit = matches!(served.source, Source::Cache { .. });
    let context = served.entry.response_json::<Context>().map_err(|e| {
        tracing::warn!(error = %e, "cached context does not decode");
        problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Context unreadable",
            "see the logs",
            "error",
        )
    })?;
    Ok((context, hit))
}

/// Forget the caller's cached context after a change, on every instance sharing the cache.
/// A failed invalidation (Redis down) is logged and counted; the context is then stale for
/// at most `context_ttl`.
async fn invalidate_context(state: &AppState, user: &str) {
    let Ok(key) = context_key(user) else { return };
    if let Err(e) = state.cache.invalidate_key(&key).await {
        metrics::counter!("tiered_api_context_invalidation_failures_total").increment(1);
        tracing::warn!(error = %e, "context not invalidated; stale for at most the context TTL");
    }
}

fn with_cache_header(mut response: Response, hit: bool) -> Response {
    response.headers_mut().insert(
        "x-cache",
        HeaderValue::from_static(if hit { "hit" } else { "miss" }),
    );
    response
}

async fn me(State(state): State<Arc<AppState>>, caller: Caller) -> Response {
    match context(&state, &caller.user).await {
        Ok((context, hit)) => with_cache_header(
            Json(json!({ "tier": caller.tier, "context": context })).into_response(),
            hit,
        ),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileUpdate {
    display_name: Option<String>,
    goal: Option<Goal>,
    weekly_target_minutes: Option<u32>,
}

async fn update_me(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Body(update): Body<ProfileUpdate>,
) -> Response {
    if let Some(name) = &update.display_name
        && (name.trim().is_empty() || name.chars().count() > 80)
    {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid profile",
            "`display_name` is 1 to 80 characters",
            "invalid_display_name",
        );
    }
    if update
        .weekly_target_minutes
        .is_some_and(|m| m > 7 * 24 * 60)
    {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid profile",
            "`weekly_target_minutes` is at most a week's minutes",
            "invalid_weekly_target",
        );
    }
    let result = state.database.update_profile(
        &caller.user,
        update.display_name.map(|n| n.trim().to_owned()),
        update.goal,
        update.weekly_target_minutes,
    );
    match result {
        Ok(profile) => {
            invalidate_context(&state, &caller.user).await;
            Json(profile).into_response()
        }
        Err(fitness::Refused::Full) => full(),
    }
}

fn full() -> Response {
    problem(
        StatusCode::INSUFFICIENT_STORAGE,
        "Full",
        "the database holds as many users as it may",
        "full",
    )
}

async fn list_workouts(State(state): State<Arc<AppState>>, caller: Caller) -> Response {
    Json(state.database.workouts(&caller.user, 50)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWorkout {
    kind: String,
    minutes: u32,
}

async fn log_workout(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Body(workout): Body<NewWorkout>,
) -> Response {
    let kind = workout.kind.trim();
    if kind.is_empty()
        || kind.len() > 40
        || !kind
            .chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || c == '-')
    {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid workout",
            "`kind` is 1 to 40 letters, digits, spaces or dashes",
            "invalid_kind",
        );
    }
    if workout.minutes == 0 || workout.minutes > 24 * 60 {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid workout",
            "`minutes` is 1 to 1440",
            "invalid_minutes",
        );
    }
    match state
        .database
        .log_workout(&caller.user, kind.to_lowercase(), workout.minutes)
    {
        Ok(logged) => {
            invalidate_context(&state, &caller.user).await;
            (StatusCode::CREATED, Json(logged)).into_response()
        }
        Err(fitness::Refused::Full) => full(),
    }
}

async fn make_plan(State(state): State<Arc<AppState>>, caller: Caller) -> Response {
    match context(&state, &caller.user).await {
        Ok((context, hit)) => with_cache_header(
            Json(json!({ "user": caller.user, "goal": context.profile.goal, "sessions": fitness::plan(&context) }))
                .into_response(),
            hit,
        ),
        Err(response) => response,
    }
}
