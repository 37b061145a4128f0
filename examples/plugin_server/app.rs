//! The plugin server, everything but the process around it: settings, the services it is
//! made of, its routes. `main.rs` serves what [`build`] returns; the end-to-end test
//! (`crates/palisade/tests/plugin_server.rs`) includes this file and drives the same router.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared with the end-to-end test, which uses other parts than main.rs"
)]

#[path = "config.rs"]
pub mod config;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use palisade::apikey::layer::{ApiKeyLayer, Identity};
use palisade::apikey::{ApiKeys, Claims, KeySpec, KeyStatus, Pepper, Peppers, Tokens};
use palisade::ratelimit::RateLimiter;
use palisade::ratelimit::headers::{self, HeaderStyle};
use palisade::ratelimit::layer::too_many_requests;
use palisade::secret_store::redact::Redactor;
use palisade::secret_store::{EnvProvider, ExposeSecret, FileProvider, MemoryProvider, Secrets};
use palisade::semantic_cache::{
    CacheKey, Computed, Invalidation, MemoryConfig, NamespacePolicy, SemanticCache, Source, Tenant,
    Usage,
};
use serde::Deserialize;
use serde_json::json;

use self::config::{AuditEntry, Limits, LimitsConfig, PluginLimit, Refusal};
use crate::support::health::{Component, Report};
use crate::support::http::{REQUEST_ID, metrics_route, problem, problem_with, with_request_ids};
use crate::support::settings::redis_pool;
use crate::support::telemetry::metrics;

/// The capabilities a plugin may be granted (and put into its tokens).
pub const CAPABILITIES: &[&str] = &["complete", "cache:purge"];

/// The scope a plugin's API key needs to ask for tokens.
pub const TOKEN_SCOPE: &str = "token";

/// The cache namespace of `/v1/complete` answers.
const NAMESPACE: &str = "complete";

// ---------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------

/// Everything the plugin server reads at start-up: a TOML file named by
/// `PLUGIN_SERVER_CONFIG` (see `plugin_server.toml` beside this file), then `REDIS_URL` and
/// `LISTEN` from the environment. Every key has a default, so no file is needed.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The port when `LISTEN` is unset (on 127.0.0.1).
    pub port: u16,
    /// Redis for API keys, rate limits, the cache and the limit changes; `REDIS_URL` wins.
    /// Without either, everything lives in this process's memory.
    pub redis_url: Option<String>,
    /// Create an admin key at start-up and print it once on stdout (never in the logs).
    pub bootstrap_admin: bool,
    /// API keys (admins' and plugins'): prefix, verify cache, failure mode.
    pub apikey: palisade::apikey::Config,
    /// The short-lived tokens plugins call with.
    pub tokens: TokenSettings,
    /// Per-plugin rate limits (changed at run time through `/config`).
    pub limits: LimitsConfig,
    /// How often each instance reads the limit changes from Redis again.
    #[serde(with = "humantime_serde")]
    pub config_refresh: Duration,
    /// The answer cache.
    pub cache: CacheSettings,
    /// Where the pepper and the token signing key come from.
    pub secrets: SecretSettings,
    /// Largest `input` accepted by `/v1/complete`, in bytes (`413` beyond).
    pub max_input_bytes: usize,
    /// The work behind `/v1/complete`.
    pub upstream: UpstreamSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            port: 3003,
            redis_url: None,
            bootstrap_admin: true,
            apikey: {
                let mut config = palisade::apikey::Config::default();
                config.prefix = "plug".to_owned();
                config
            },
            tokens: TokenSettings::default(),
            limits: LimitsConfig::default(),
            config_refresh: Duration::from_secs(5),
            cache: CacheSettings::default(),
            secrets: SecretSettings::default(),
            max_input_bytes: 8 * 1024,
            upstream: UpstreamSettings::default(),
        }
    }
}

impl Settings {
    /// Apply the environment: `REDIS_URL` wins over the file.
    #[must_use]
    pub fn with_env(mut self) -> Self {
        if let Some(url) = crate::support::settings::redis_url() {
            self.redis_url = Some(url);
        }
        self
    }
}

/// The tokens plugins call with (`palisade::apikey::Tokens`, HS256 JWTs).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSettings {
    /// How long a token lives: short, because a token is never looked up (a revoked plugin's
    /// tokens work until they expire).
    #[serde(with = "humantime_serde")]
    pub lifetime: Duration,
    /// `iss` of every token.
    pub issuer: String,
    /// `aud` of every token (required when verifying).
    pub audience: String,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(15 * 60),
            issuer: "plugin-server".to_owned(),
            audience: "plugin-server".to_owned(),
        }
    }
}

/// The answer cache (`palisade::semantic_cache`, exact matches only).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// How long an answer is served from the cache.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Most answers kept in memory (without Redis; Redis is bounded by the TTL and its
    /// `maxmemory` policy).
    pub max_entries: u64,
    /// Most bytes kept in memory.
    pub max_bytes: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(600),
            max_entries: 10_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Where the API-key pepper (`apikey/pepper`) and the token signing key
/// (`tokens/signing-key`) come from, in this order: the environment
/// (`PLUGIN_SERVER_APIKEY_PEPPER`, `PLUGIN_SERVER_TOKENS_SIGNING_KEY`), a file, demo values.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretSettings {
    /// The prefix of the environment variables.
    pub env_prefix: String,
    /// A `.env`/JSON/TOML file (`APIKEY_PEPPER=…`, `TOKENS_SIGNING_KEY=…`).
    pub file: Option<PathBuf>,
    /// Fall back to fixed demo values (a WARN at start-up says so). Turn it off in
    /// production: then a missing secret stops the start.
    pub demo_values: bool,
}

impl Default for SecretSettings {
    fn default() -> Self {
        Self {
            env_prefix: "PLUGIN_SERVER_".to_owned(),
            file: None,
            demo_values: true,
        }
    }
}

/// The work behind `/v1/complete`: a stand-in for the expensive call a plugin triggers (a
/// model, a search, a third-party API), slow enough for the cache to matter.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Its name (part of the cache key: another model, other answers).
    pub model: String,
    /// How long one call takes.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            model: "upstream-v1".to_owned(),
            latency: Duration::from_millis(50),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------

/// The work behind `/v1/complete`, counting its calls.
#[derive(Debug)]
pub struct Upstream {
    model: String,
    latency: Duration,
    calls: AtomicU64,
}

impl Upstream {
    /// Calls made so far (a cache hit makes none).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    async fn run(&self, input: &str, max_tokens: u32) -> (String, Usage) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("plugin_server_upstream_calls_total").increment(1);
        tokio::time::sleep(self.latency).await;
        let words: Vec<String> = input
            .split_whitespace()
            .take(usize::try_from(max_tokens).unwrap_or(usize::MAX))
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_uppercase().chain(c).collect())
                    .unwrap_or_default()
            })
            .collect();
        let output = format!("[{}] {}", self.model, words.join(" "));
        let usage = Usage::new(
            input.split_whitespace().count() as u64,
            words.len() as u64,
            0.0,
        );
        (output, usage)
    }
}

/// What [`build`] returns: the router and the handles a test (or `main`) needs.
#[derive(Debug)]
pub struct App {
    /// Every route, with correlation ids.
    pub router: Router,
    /// The API keys (to issue an admin key).
    pub keys: ApiKeys,
    /// The token issuer.
    pub tokens: Tokens,
    /// The per-plugin limits.
    pub limits: Arc<Limits>,
    /// The answer cache.
    pub cache: SemanticCache,
    /// The work behind `/v1/complete`.
    pub upstream: Arc<Upstream>,
}

/// Why the service could not start.
#[derive(Debug)]
pub struct BuildError(pub String);

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BuildError {}

fn fail(what: &str, e: impl std::fmt::Display) -> BuildError {
    BuildError(format!("{what}: {e}"))
}

struct AppState {
    keys: ApiKeys,
    tokens: Tokens,
    token_lifetime: Duration,
    limiter: RateLimiter,
    limits: Arc<Limits>,
    cache: SemanticCache,
    cache_backend: &'static str,
    upstream: Arc<Upstream>,
    secrets: Secrets,
    max_input_bytes: usize,
}

/// Demo secret values, used only when `secrets.demo_values` is on and neither the
/// environment nor the file has the secret. Fixed, so a restart on the same Redis still
/// verifies the keys and tokens it issued.
pub const DEMO_SECRETS: &[(&str, &str)] = &[
    (
        "apikey/pepper",
        "demo pepper of the plugin server example, not a secret",
    ),
    (
        "tokens/signing-key",
        "demo token signing key of the plugin server example, not a secret",
    ),
];

/// Build the service from `settings`, sending every loaded secret to `redactor` (the one the
/// process's log writer scrubs with).
///
/// # Errors
/// Invalid settings, a missing secret, a malformed Redis URL.
pub async fn build(settings: Settings, redactor: Redactor) -> Result<App, BuildError> {
    let handle = metrics();
    let pool = match &settings.redis_url {
        Some(url) => Some(redis_pool(url).map_err(BuildError)?),
        None => None,
    };

    // Secrets: environment, then the file, then (if allowed) demo values.
    let mut secrets = Secrets::builder()
        .redactor(redactor)
        .provider(EnvProvider::from_env(&settings.secrets.env_prefix));
    if let Some(file) = &settings.secrets.file {
        secrets = secrets.provider(FileProvider::new(file).named("file"));
    }
    if settings.secrets.demo_values {
        let mut demo = MemoryProvider::new().named("demo");
        for (name, value) in DEMO_SECRETS {
            demo = demo
                .with_secret(name, value)
                .map_err(|e| fail("demo secrets", e))?;
        }
        secrets = secrets.provider(demo);
    }
    let secrets = secrets.build().map_err(|e| fail("secrets", e))?;
    let pepper = secrets
        .get("apikey/pepper")
        .await
        .map_err(|e| fail("secret apikey/pepper", e))?;
    let signing = secrets
        .get("tokens/signing-key")
        .await
        .map_err(|e| fail("secret tokens/signing-key", e))?;
    for s in [&pepper, &signing] {
        if s.provider() == "demo" {
            tracing::warn!(secret = %s.name().as_str(), "demo secret in use: set it in the environment or the secrets file");
        }
    }

    // API keys (admins and plugins) and the plugins' tokens.
    let peppers = Peppers::new(
        Pepper::new(1, pepper.expose_secret().as_bytes()).map_err(|e| fail("the pepper", e))?,
    );
    let mut keys = ApiKeys::builder(peppers).config(settings.apikey.clone());
    if let Some(pool) = &pool {
        keys = keys.store(palisade::apikey::RedisStore::new(pool.clone()));
    }
    let keys = keys.build().map_err(|e| fail("API keys", e))?;
    let signing = Peppers::new(
        Pepper::new(1, signing.expose_secret().as_bytes())
            .map_err(|e| fail("the token signing key", e))?,
    );
    let tokens = Tokens::new(signing, settings.tokens.issuer.clone())
        .map_err(|e| fail("tokens", e))?
        .with_lifetime(settings.tokens.lifetime)
        .with_audience(settings.tokens.audience.clone());

    // Per-plugin limits, changed at run time.
    let limiter = match &pool {
        Some(pool) => RateLimiter::builder(palisade::ratelimit::RedisStore::new(pool.clone()))
            .failure_mode(palisade::ratelimit::FailureMode::FallbackToMemory)
            .build(),
        None => RateLimiter::new(palisade::ratelimit::MemoryStore::new()),
    };
    let limits = Arc::new(
        Limits::new(
            settings.limits.clone(),
            pool.clone(),
            Duration::from_millis(500),
        )
        .map_err(BuildError)?,
    );
    if let Err(e) = limits.reload().await {
        tracing::warn!(error = %e, "limit changes not read from Redis: the file's limits apply");
    }
    config::spawn_reload(Arc::downgrade(&limits), settings.config_refresh);

    // The answer cache: exact matches only, bounded, a TTL; on Redis it outlives the process.
    let policy = NamespacePolicy::exact_only(settings.cache.ttl);
    let (cache, cache_backend) = match &pool {
        Some(pool) => (
            SemanticCache::builder()
                .store(
                    palisade::semantic_cache::RedisStore::new(pool.clone())
                        .with_prefix("plugin_server:cache"),
                )
                .namespace(NAMESPACE, policy)
                .build(),
            "redis",
        ),
        None => (
            SemanticCache::builder()
                .store(
                    palisade::semantic_cache::MemoryStore::new(
                        MemoryConfig::default()
                            .max_entries(settings.cache.max_entries)
                            .max_bytes(settings.cache.max_bytes),
                    )
                    .map_err(|e| fail("cache", e))?,
                )
                .namespace(NAMESPACE, policy)
                .build(),
            "memory",
        ),
    };
    let cache = cache.map_err(|e| fail("cache", e))?;

    let upstream = Arc::new(Upstream {
        model: settings.upstream.model.clone(),
        latency: settings.upstream.latency,
        calls: AtomicU64::new(0),
    });
    let state = Arc::new(AppState {
        keys: keys.clone(),
        tokens: tokens.clone(),
        token_lifetime: settings.tokens.lifetime,
        limiter,
        limits: Arc::clone(&limits),
        cache: cache.clone(),
        cache_backend,
        upstream: Arc::clone(&upstream),
        secrets,
        max_input_bytes: settings.max_input_bytes,
    });

    // Admin routes and the token exchange: API keys. Plugin routes: tokens, then the
    // plugin's rate limit.
    let admin = Router::new()
        .route("/plugins", post(register))
        .route("/plugins/{name}", get(plugin_info).delete(revoke_plugin))
        .route("/config", get(show_config))
        .route(
            "/config/plugins/{name}",
            put(set_limit).delete(remove_limit),
        )
        .route("/config/audit", get(audit))
        .layer(ApiKeyLayer::new(keys.clone()));
    let exchange = Router::new()
        .route("/v1/token", post(issue_token))
        .layer(ApiKeyLayer::new(keys.clone()).require_scope(TOKEN_SCOPE));
    let plugin = Router::new()
        .route("/v1/complete", post(complete))
        .route("/v1/cache", delete(purge_cache))
        .route("/v1/whoami", get(whoami))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            plugin_limit,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token,
        ));
    let router = Router::new()
        .route("/health", get(health))
        .merge(admin)
        .merge(exchange)
        .merge(plugin)
        .fallback(not_found)
        .with_state(state)
        .merge(metrics_route(handle));

    Ok(App {
        router: with_request_ids(router),
        keys,
        tokens,
        limits,
        cache,
        upstream,
    })
}

async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "Not Found", "No such route.")
}

fn invalid(code: &str, detail: impl Into<String>) -> Response {
    let mut ext = serde_json::Map::new();
    ext.insert("code".to_owned(), code.into());
    problem_with(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid request",
        detail,
        ext,
    )
}

fn forbidden(detail: impl Into<String>) -> Response {
    problem(StatusCode::FORBIDDEN, "Forbidden", detail)
}

fn bad_body(rejection: &JsonRejection) -> Response {
    problem(
        rejection.status(),
        "Invalid request body",
        rejection.body_text(),
    )
}

fn store_unavailable(what: &str, e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "{what} failed");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        format!("{what} is not answering; try again later."),
    )
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

fn actor(identity: &Identity) -> String {
    format!("{} ({})", identity.owner, identity.key_id)
}

/// A plugin name: 2 to 32 of `a-z 0-9 -`, starting with a letter.
fn valid_name(name: &str) -> bool {
    (2..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn owner(name: &str) -> String {
    format!("plugin:{name}")
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------------------
// Admin: plugins
// ---------------------------------------------------------------------------------------

/// The body of `POST /plugins`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The plugin's name.
    pub name: String,
    /// What it may do (see [`CAPABILITIES`]).
    pub capabilities: Vec<String>,
}

async fn register(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    body: Result<Json<Registration>, JsonRejection>,
) -> Response {
    if !identity.has_scope("admin:plugins") {
        return forbidden("This key lacks the scope `admin:plugins`.");
    }
    let Registration { name, capabilities } = match body {
        Ok(Json(r)) => r,
        Err(rejection) => return bad_body(&rejection),
    };
    if !valid_name(&name) {
        return invalid(
            "invalid_name",
            "`name` is 2 to 32 characters of a-z, 0-9 and `-`, starting with a letter.",
        );
    }
    let mut seen = BTreeSet::new();
    for c in &capabilities {
        if !CAPABILITIES.contains(&c.as_str()) {
            return invalid(
                "unknown_capability",
                format!(
                    "Unknown capability `{c}`; known: {}.",
                    CAPABILITIES.join(", ")
                ),
            );
        }
        if !seen.insert(c.as_str()) {
            return invalid("duplicate_capability", format!("`{c}` is listed twice."));
        }
    }
    if capabilities.is_empty() {
        return invalid("no_capabilities", "A plugin needs at least one capability.");
    }
    let existing = match state.keys.list_by_owner(&owner(&name)).await {
        Ok(keys) => keys,
        Err(e) => return store_unavailable("the key store", e),
    };
    let now = now_micros();
    if existing
        .iter()
        .any(|k| k.status_at(now) == KeyStatus::Active)
    {
        metrics::counter!("plugin_server_registrations_total", "outcome" => "conflict")
            .increment(1);
        return problem(
            StatusCode::CONFLICT,
            "Conflict",
            format!("A plugin named `{name}` is registered; revoke it first."),
        );
    }
    let spec = KeySpec::new(owner(&name), "plugin credential")
        .scopes(std::iter::once(TOKEN_SCOPE.to_owned()).chain(capabilities.iter().cloned()))
        .metadata("plugin", name.clone());
    let created = match state.keys.create(spec).await {
        Ok(c) => c,
        Err(e) => return store_unavailable("the key store", e),
    };
    metrics::counter!("plugin_server_registrations_total", "outcome" => "created").increment(1);
    state
        .limits
        .record(AuditEntry::now(
            "plugin_registered",
            &name,
            &actor(&identity),
            &request_id(&headers),
        ))
        .await;
    (
        StatusCode::CREATED,
        Json(json!({
            "plugin": name,
            "api_key": created.key.expose_secret(),
            "key_id": created.record.id.to_string(),
            "capabilities": capabilities,
            "note": "The API key is shown once. Exchange it for short-lived tokens at POST /v1/token.",
        })),
    )
        .into_response()
}

async fn plugin_info(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Path(name): Path<String>,
) -> Response {
    if !identity.has_scope("admin:plugins") {
        return forbidden("This key lacks the scope `admin:plugins`.");
    }
    let keys = match state.keys.list_by_owner(&owner(&name)).await {
        Ok(keys) => keys,
        Err(e) => return store_unavailable("the key store", e),
    };
    if keys.is_empty() {
        return problem(
            StatusCode::NOT_FOUND,
            "Not Found",
            format!("No plugin named `{name}`."),
        );
    }
    let now = now_micros();
    let (limit, own) = {
        let view = state.limits.view();
        match view.plugins.get(&name) {
            Some(l) => (*l, true),
            None => (view.default, false),
        }
    };
    Json(json!({
        "plugin": name,
        "keys": keys.iter().map(|k| json!({
            "key_id": k.id.to_string(),
            "status": k.status_at(now).as_str(),
            "capabilities": k.scopes.iter().filter(|s| *s != TOKEN_SCOPE).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "limit": limit,
        "limit_is_default": !own,
    }))
    .into_response()
}

async fn revoke_plugin(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if !identity.has_scope("admin:plugins") {
        return forbidden("This key lacks the scope `admin:plugins`.");
    }
    let keys = match state.keys.list_by_owner(&owner(&name)).await {
        Ok(keys) => keys,
        Err(e) => return store_unavailable("the key store", e),
    };
    if keys.is_empty() {
        return problem(
            StatusCode::NOT_FOUND,
            "Not Found",
            format!("No plugin named `{name}`."),
        );
    }
    let mut revoked = 0;
    for k in &keys {
        if let Err(e) = state.keys.revoke(&k.id).await {
            return store_unavailable("the key store", e);
        }
        revoked += 1;
    }
    state
        .limits
        .record(AuditEntry::now(
            "plugin_revoked",
            &name,
            &actor(&identity),
            &request_id(&headers),
        ))
        .await;
    Json(json!({
        "plugin": name,
        "revoked_keys": revoked,
        "note": format!(
            "Tokens already issued are not looked up and stay valid until they expire (at most {} s).",
            state.token_lifetime.as_secs()
        ),
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------
// Admin: /config
// ---------------------------------------------------------------------------------------

async fn show_config(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
) -> Response {
    if !identity.has_scope("admin:config") {
        return forbidden("This key lacks the scope `admin:config`.");
    }
    Json(json!({"limits": state.limits.view(), "backend": state.limits.backend()})).into_response()
}

async fn set_limit(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<PluginLimit>, JsonRejection>,
) -> Response {
    if !identity.has_scope("admin:config") {
        return forbidden("This key lacks the scope `admin:config`.");
    }
    let limit = match body {
        Ok(Json(l)) => l,
        Err(rejection) => return bad_body(&rejection),
    };
    if !valid_name(&name) {
        return invalid("invalid_name", "Not a plugin name.");
    }
    match state.keys.list_by_owner(&owner(&name)).await {
        Ok(keys) if keys.is_empty() => {
            return problem(
                StatusCode::NOT_FOUND,
                "Not Found",
                format!("No plugin named `{name}`."),
            );
        }
        Ok(_) => {}
        Err(e) => return store_unavailable("the key store", e),
    }
    let entry = AuditEntry::now("limit_set", &name, &actor(&identity), &request_id(&headers));
    match state.limits.set(&name, limit, entry).await {
        Ok(entry) => Json(json!({"plugin": name, "limit": limit, "audit": entry})).into_response(),
        Err(Refusal::Invalid(why)) => invalid("invalid_limit", why),
        Err(Refusal::Store(e)) => store_unavailable("the configuration store", e),
    }
}

async fn remove_limit(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if !identity.has_scope("admin:config") {
        return forbidden("This key lacks the scope `admin:config`.");
    }
    let entry = AuditEntry::now(
        "limit_removed",
        &name,
        &actor(&identity),
        &request_id(&headers),
    );
    match state.limits.remove(&name, entry).await {
        Ok(entry) => Json(json!({"plugin": name, "audit": entry})).into_response(),
        Err(Refusal::Invalid(why)) => invalid("invalid_limit", why),
        Err(Refusal::Store(e)) => store_unavailable("the configuration store", e),
    }
}

async fn audit(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
) -> Response {
    if !identity.has_scope("admin:config") {
        return forbidden("This key lacks the scope `admin:config`.");
    }
    match state.limits.audit(100).await {
        Ok(entries) => Json(json!({"entries": entries})).into_response(),
        Err(e) => store_unavailable("the configuration store", e),
    }
}

// ---------------------------------------------------------------------------------------
// POST /v1/token: a plugin's API key for a short-lived token
// ---------------------------------------------------------------------------------------

/// The (optional) body of `POST /v1/token`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The capabilities wanted in the token (default: every one the plugin holds).
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
}

fn parse_optional<T: Default + serde::de::DeserializeOwned>(
    body: &Bytes,
) -> Result<T, serde_json::Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
}

fn body_error(e: &serde_json::Error) -> Response {
    let status = if e.is_data() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::BAD_REQUEST
    };
    problem(status, "Invalid request body", e.to_string())
}

async fn issue_token(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    body: Bytes,
) -> Response {
    let request: TokenRequest = match parse_optional(&body) {
        Ok(r) => r,
        Err(e) => return body_error(&e),
    };
    let Some(plugin) = identity.owner.strip_prefix("plugin:") else {
        return forbidden("Only a plugin's key can be exchanged for a token.");
    };
    let granted: Vec<String> = identity
        .scopes
        .iter()
        .filter(|s| *s != TOKEN_SCOPE)
        .map(str::to_owned)
        .collect();
    let wanted = request.capabilities.unwrap_or_else(|| granted.clone());
    if let Some(unknown) = wanted.iter().find(|c| !CAPABILITIES.contains(&c.as_str())) {
        return invalid(
            "unknown_capability",
            format!(
                "Unknown capability `{unknown}`; known: {}.",
                CAPABILITIES.join(", ")
            ),
        );
    }
    let missing: Vec<&String> = wanted.iter().filter(|c| !identity.has_scope(c)).collect();
    if !missing.is_empty() {
        let mut ext = serde_json::Map::new();
        ext.insert("missing".to_owned(), json!(missing));
        return problem_with(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("Plugin `{plugin}` was not granted every capability asked for."),
            ext,
        );
    }
    match state
        .tokens
        .issue(identity.owner.clone(), wanted.iter().cloned())
    {
        Ok(token) => {
            metrics::counter!("plugin_server_tokens_issued_total").increment(1);
            Json(json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": state.token_lifetime.as_secs(),
                "capabilities": wanted,
            }))
            .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "token not issued");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                "No token could be issued.",
            )
        }
    }
}

// ---------------------------------------------------------------------------------------
// Plugin routes: a token, then the plugin's rate limit
// ---------------------------------------------------------------------------------------

fn unauthorized(code: &str, detail: &str) -> Response {
    let mut ext = serde_json::Map::new();
    ext.insert("code".to_owned(), code.into());
    let mut response = problem_with(StatusCode::UNAUTHORIZED, "Unauthorized", detail, ext);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    response
}

/// Verify the bearer token (no store lookup) and put its [`Claims`] into the request.
async fn require_token(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(token) = token else {
        return unauthorized(
            "missing",
            "Send `Authorization: Bearer <token>`; POST /v1/token issues one.",
        );
    };
    match state.tokens.verify(token) {
        Ok(claims) if claims.sub.starts_with("plugin:") => {
            req.extensions_mut().insert(claims);
            next.run(req).await
        }
        Ok(_) => unauthorized("not_a_plugin", "This token does not speak for a plugin."),
        Err(denial) => {
            metrics::counter!("plugin_server_token_rejections_total", "reason" => denial.as_str())
                .increment(1);
            let detail = match denial.as_str() {
                "expired" => "The token has expired; ask POST /v1/token for a new one.",
                _ => "The token is not valid here.",
            };
            unauthorized(denial.as_str(), detail)
        }
    }
}

/// The plugin's own rate limit (or the default), as set at run time through `/config`.
async fn plugin_limit(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(plugin) = req
        .extensions()
        .get::<Claims>()
        .and_then(|c| c.sub.strip_prefix("plugin:"))
        .map(str::to_owned)
    else {
        return unauthorized("missing", "No token.");
    };
    let (policy, _own) = state.limits.policy_for(&plugin);
    let decision = state
        .limiter
        .acquire(&format!("plugin:{plugin}"), &policy, 1)
        .await;
    if !decision.allowed {
        metrics::counter!("plugin_server_rate_limited_total").increment(1);
        return too_many_requests(&decision, &policy, HeaderStyle::BOTH);
    }
    let mut response = next.run(req).await;
    headers::apply(
        &decision,
        &policy,
        response.headers_mut(),
        HeaderStyle::BOTH,
    );
    response
}

fn plugin_of(claims: &Claims) -> &str {
    claims.sub.strip_prefix("plugin:").unwrap_or(&claims.sub)
}

/// The body of `POST /v1/complete`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// The input.
    pub input: String,
    /// Longest answer, in words (1 ..= 1024, default 64).
    #[serde(default)]
    pub max_tokens: Option<u32>,
}

async fn complete(
    State(state): State<Arc<AppState>>,
    Extension(claims): Extension<Claims>,
    body: Result<Json<CompleteRequest>, JsonRejection>,
) -> Response {
    if !claims.has_capability("complete") {
        return forbidden("This token lacks the capability `complete`.");
    }
    let request = match body {
        Ok(Json(r)) => r,
        Err(rejection) => return bad_body(&rejection),
    };
    if request.input.trim().is_empty() {
        return invalid("empty_input", "`input` must not be empty.");
    }
    if request.input.len() > state.max_input_bytes {
        let mut ext = serde_json::Map::new();
        ext.insert("limit".to_owned(), state.max_input_bytes.into());
        return problem_with(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Input too large",
            format!(
                "`input` is {} bytes; at most {} are accepted.",
                request.input.len(),
                state.max_input_bytes
            ),
            ext,
        );
    }
    let max_tokens = request.max_tokens.unwrap_or(64);
    if !(1..=1024).contains(&max_tokens) {
        return invalid("invalid_max_tokens", "`max_tokens` is between 1 and 1024.");
    }
    // Exact part of the key: the plugin (tenant), the namespace, the model and the answer
    // length; the input is the prompt. Plugins never see each other's answers.
    let plugin = plugin_of(&claims);
    let key = match CacheKey::new(
        plugin,
        NAMESPACE,
        format!("{}:{max_tokens}", state.upstream.model),
        request.input.clone(),
    ) {
        Ok(k) => k,
        Err(e) => return invalid("invalid_input", e.to_string()),
    };
    let upstream = Arc::clone(&state.upstream);
    let input = request.input;
    let served = state
        .cache
        .get_or_compute(&key, || async move {
            let (output, usage) = upstream.run(&input, max_tokens).await;
            Ok::<_, std::convert::Infallible>(Computed::new(output, usage))
        })
        .await;
    let served = match served {
        Ok(s) => s,
        Err(e) if e.is_invalid_input() => return invalid("invalid_input", e.to_string()),
        Err(e) => return store_unavailable("the cache", e),
    };
    let (cache_status, cached) = match served.source {
        Source::Cache { .. } => ("hit", true),
        Source::Joined => ("joined", false),
        // `Computed`, and any source a later version adds (`Source` is non-exhaustive).
        _ => ("miss", false),
    };
    metrics::counter!("plugin_server_cache_total", "result" => cache_status).increment(1);
    let output = served.entry.response_text().unwrap_or_default().to_owned();
    let mut response = Json(json!({
        "output": output,
        "cached": cached,
        "stored": served.stored,
    }))
    .into_response();
    response
        .headers_mut()
        .insert("x-cache", HeaderValue::from_static(cache_status));
    response
}

async fn purge_cache(
    State(state): State<Arc<AppState>>,
    Extension(claims): Extension<Claims>,
) -> Response {
    if !claims.has_capability("cache:purge") {
        return forbidden("This token lacks the capability `cache:purge`.");
    }
    let tenant = match Tenant::new(plugin_of(&claims)) {
        Ok(t) => t,
        Err(e) => return invalid("invalid_plugin", e.to_string()),
    };
    match state.cache.invalidate(Invalidation::Tenant(tenant)).await {
        Ok(removed) => Json(json!({"removed": removed})).into_response(),
        Err(e) => store_unavailable("the cache", e),
    }
}

async fn whoami(Extension(claims): Extension<Claims>) -> Json<Claims> {
    Json(claims)
}

// ---------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------

async fn within<E: std::fmt::Display>(
    probe: impl Future<Output = Result<(), E>>,
) -> Result<(), String> {
    let limit = Duration::from_secs(1);
    match tokio::time::timeout(limit, probe).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// `GET /health`: every store and secret provider, `connected` per backend.
async fn health(State(state): State<Arc<AppState>>) -> Report {
    let (apikey, ratelimit, cache, config, secrets) = tokio::join!(
        within(state.keys.store().health()),
        within(state.limiter.health()),
        within(state.cache.health()),
        within(state.limits.health()),
        state.secrets.health(),
    );
    let component = |name: &str, backend: &str, r: Result<(), String>| match r {
        Ok(()) => Component::up(name, backend, "ok"),
        Err(e) => Component::down(name, backend, e),
    };
    let mut components = vec![
        component("apikey", state.keys.store().backend_name(), apikey),
        component("ratelimit", state.limiter.store().backend_name(), ratelimit),
        component("cache", state.cache_backend, cache),
        component("config", state.limits.backend(), config),
    ];
    for p in &secrets.providers {
        components.push(if p.healthy {
            Component::up(format!("secrets:{}", p.name), p.name.clone(), "ok")
        } else {
            Component::down(
                format!("secrets:{}", p.name),
                p.name.clone(),
                p.error.clone().unwrap_or_else(|| "unhealthy".to_owned()),
            )
        });
    }
    Report::new(components)
}

/// Serve `router` on `listener` until `shutdown` resolves.
///
/// # Errors
/// The listener failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
