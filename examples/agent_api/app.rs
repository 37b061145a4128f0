//! The agent API, everything but the process around it: settings, the services it is made
//! of, its routes. `main.rs` serves what [`build`] returns; the end-to-end test
//! (`crates/palisade/tests/agent_api.rs`) includes this file and drives the same router.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared with the end-to-end test, which uses other parts than main.rs"
)]

#[path = "fakes.rs"]
pub mod fakes;
#[path = "limits.rs"]
pub mod limits;
#[path = "stores.rs"]
pub mod stores;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use palisade::apikey::layer::{ApiKeyLayer, Identity};
use palisade::apikey::{ApiKeys, Pepper, Peppers};
use palisade::circuit_breaker::{
    self as cb, CircuitBreaker, Registry, RegistryConfig, State as BreakerState,
};
use palisade::ratelimit::rules::{ClientIp, Key};
use palisade::ratelimit::{Algorithm, Policy, Quota, RateLimiter};
use palisade::secret_store::redact::Redactor;
use palisade::secret_store::vault::{VaultConfig, VaultProvider};
use palisade::secret_store::{ExposeSecret, FileProvider, SecretString, Secrets, SecretsConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;

use self::fakes::FakeServices;
use self::limits::{Limit, Stage};
use self::stores::{
    Database, MemoryDatabase, MemorySessions, Postgres, RedisSessions, StoreError, Turn,
    UsageRecord,
};
use crate::support::health::{Component, Report};
use crate::support::http::{metrics_route, problem, with_request_ids};
use crate::support::settings::redis_pool;
use crate::support::telemetry::metrics;

// ---------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------

/// Everything the agent API reads at start-up: a TOML file named by `AGENT_API_CONFIG` (see
/// `agent_api.toml` beside this file), then the environment (`REDIS_URL`, `DATABASE_URL`,
/// `VAULT_ADDR`, `VAULT_TOKEN`). Every key has a default, so no file is needed.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The port when `LISTEN` is unset (on 127.0.0.1).
    pub port: u16,
    /// Redis for rate limits, API keys and sessions; `REDIS_URL` wins. Without either,
    /// everything lives in this process's memory.
    pub redis_url: Option<String>,
    /// PostgreSQL for the usage ledger; `DATABASE_URL` wins. Without either, an in-memory
    /// stand-in holds it.
    pub database_url: Option<String>,
    /// API keys: prefix (`agent_live_…`), verify cache (its TTL bounds how long a revoked
    /// key may still pass on another instance), failure mode.
    pub apikey: palisade::apikey::Config,
    /// Create a demo key at start-up and print it once on stdout (never in the logs).
    pub bootstrap_key: bool,
    /// Where secrets come from: Vault first, then a file.
    pub secrets: SecretSettings,
    /// The LLM providers, tried in this order.
    pub providers: Vec<ProviderSettings>,
    /// Rate limits.
    pub limits: LimitSettings,
    /// Proxies whose `X-Forwarded-For` is believed (CIDRs); the client is the first address
    /// from the right that is not one of them. Empty: the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Circuit breakers: `[breakers.default]` and `[breakers.breakers."<name>"]` for
    /// `database`, `redis` and `provider:<name>`.
    pub breakers: RegistryConfig,
    /// Conversation sessions.
    pub sessions: SessionSettings,
    /// Largest prompt accepted, in bytes (`413` beyond).
    pub max_prompt_bytes: usize,
    /// Usage records kept in memory while the database is away (the oldest are dropped
    /// beyond, and counted).
    pub outbox_capacity: usize,
    /// How often the outbox is retried without new traffic.
    #[serde(with = "humantime_serde")]
    pub outbox_retry: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            port: 3002,
            redis_url: None,
            database_url: None,
            apikey: {
                let mut config = palisade::apikey::Config::default();
                config.prefix = "agent".to_owned();
                config
            },
            bootstrap_key: true,
            secrets: SecretSettings::default(),
            providers: vec![
                ProviderSettings::fake("alpha", "alpha-large"),
                ProviderSettings::fake("beta", "beta-small"),
            ],
            limits: LimitSettings::default(),
            trusted_proxies: Vec::new(),
            breakers: default_breakers(),
            sessions: SessionSettings::default(),
            max_prompt_bytes: 16 * 1024,
            outbox_capacity: 10_000,
            outbox_retry: Duration::from_secs(5),
        }
    }
}

impl Settings {
    /// Apply the environment: `REDIS_URL`, `DATABASE_URL`, `VAULT_ADDR` and `VAULT_TOKEN`
    /// win over the file.
    #[must_use]
    pub fn with_env(mut self) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let Some(url) = crate::support::settings::redis_url() {
            self.redis_url = Some(url);
        }
        if let Some(url) = var("DATABASE_URL") {
            self.database_url = Some(url);
        }
        if let Some(addr) = var("VAULT_ADDR") {
            self.secrets.vault_address = Some(addr);
        }
        if let Some(token) = var("VAULT_TOKEN") {
            self.secrets.vault_token = Some(SecretString::from(token));
        }
        self
    }

    fn provider_names(&self) -> Vec<String> {
        self.providers.iter().map(|p| p.name.clone()).collect()
    }
}

/// Breakers for the three kinds of dependency: a provider is judged on its last 10 calls
/// (half failing, at least 4, or 3 in a row opens it for 30 s; a call is cut at 20 s); the
/// database and Redis open after 3 failures in a row for 5 s.
fn default_breakers() -> RegistryConfig {
    let provider = cb::Config::default()
        .window(cb::SlidingWindow::Count { size: 10 })
        .minimum_calls(4)
        .consecutive_failures(3)
        .open_wait(Duration::from_secs(30))
        .call_timeout(Duration::from_secs(20))
        .half_open_probes(1)
        .success_threshold(1);
    let local = cb::ConfigOverride::default()
        .open_wait(Duration::from_secs(5))
        .call_timeout(Duration::from_secs(2))
        .consecutive_failures(3);
    RegistryConfig::new(provider)
        .breaker("database", local.clone())
        .breaker("redis", local)
}

/// Where the secrets come from: HashiCorp Vault (KV v2), then a file. Without a Vault
/// address the example serves a Vault-compatible fake of its own holding demo values.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretSettings {
    /// Vault's address; `VAULT_ADDR` wins. None: the built-in fake.
    pub vault_address: Option<String>,
    /// The token (only from `VAULT_TOKEN`, never from the file).
    #[serde(skip)]
    pub vault_token: Option<SecretString>,
    /// The KV v2 mount.
    pub vault_mount: String,
    /// A path before every secret name (`agent-api/`).
    pub vault_path_prefix: String,
    /// The fallback file (`.env`, JSON or TOML): read when Vault misses or is down.
    pub file: Option<PathBuf>,
    /// The secret holding the API-key pepper (32 bytes or more).
    pub pepper: String,
    /// The cache: TTL, outage policy, provider timeout.
    pub cache: SecretsConfig,
}

impl Default for SecretSettings {
    fn default() -> Self {
        Self {
            vault_address: None,
            vault_token: None,
            vault_mount: "secret".to_owned(),
            vault_path_prefix: String::new(),
            file: None,
            pepper: "apikey/pepper".to_owned(),
            cache: SecretsConfig::default(),
        }
    }
}

/// One LLM provider.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// Its name (`alpha`): the breaker is `provider:<name>`.
    pub name: String,
    /// Base URL of an OpenAI-style API (`<url>/v1/chat/completions`). None: the built-in
    /// fake.
    #[serde(default)]
    pub url: Option<String>,
    /// The model asked for.
    pub model: String,
    /// The secret holding its API key (default `providers/<name>/api-key`).
    #[serde(default)]
    pub api_key_secret: Option<String>,
}

impl ProviderSettings {
    fn fake(name: &str, model: &str) -> Self {
        Self {
            name: name.to_owned(),
            url: None,
            model: model.to_owned(),
            api_key_secret: None,
        }
    }

    fn secret(&self) -> String {
        self.api_key_secret
            .clone()
            .unwrap_or_else(|| format!("providers/{}/api-key", self.name))
    }
}

/// The four limits (each a `palisade::ratelimit::Policy`: a name, an algorithm, quotas).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Every request, whoever sends it.
    pub global: Policy,
    /// Per client IP address (IPv6 per /64).
    pub per_ip: Policy,
    /// Per API key.
    pub per_key: Policy,
    /// Per user (the keys' owner), whatever key they use.
    pub per_user: Policy,
}

impl Default for LimitSettings {
    fn default() -> Self {
        let policy = |name: &str, minute: u64, hour: u64| {
            Policy::builder(name)
                .algorithm(Algorithm::SlidingWindowCounter)
                .quota("per_minute", Quota::per_minute(minute))
                .quota("per_hour", Quota::per_hour(hour))
                .build()
                .expect("valid default policy")
        };
        Self {
            global: Policy::single("global", Algorithm::Gcra, Quota::per_second(200))
                .expect("valid default policy"),
            per_ip: policy("per-ip", 120, 3_000),
            per_key: policy("per-key", 30, 600),
            per_user: policy("per-user", 60, 1_000),
        }
    }
}

/// Conversation sessions.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSettings {
    /// Messages kept per session (the oldest go first).
    pub max_turns: usize,
    /// A session is forgotten this long after its last message (Redis).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Sessions kept in memory (without Redis, or while it is away).
    pub max_local_sessions: usize,
    /// One Redis call's time limit.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            max_turns: 20,
            ttl: Duration::from_secs(24 * 3600),
            max_local_sessions: 10_000,
            redis_timeout: Duration::from_millis(500),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------

/// What [`build`] returns: the router and the handles a test (or `main`) needs.
#[derive(Debug)]
pub struct App {
    /// Every route, with correlation ids.
    pub router: Router,
    /// The API keys (to issue keys).
    pub keys: ApiKeys,
    /// The breakers.
    pub registry: Arc<Registry>,
    /// The secrets.
    pub secrets: Secrets,
    /// The usage ledger.
    pub database: Arc<Database>,
    /// The fake Vault and providers, when this app started them.
    pub fakes: Option<Arc<FakeServices>>,
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

struct Provider {
    name: String,
    url: String,
    model: String,
    secret: String,
    breaker: CircuitBreaker,
}

struct AppState {
    providers: Vec<Provider>,
    client: reqwest::Client,
    secrets: Secrets,
    secret_names: Vec<String>,
    registry: Arc<Registry>,
    database: Arc<Database>,
    database_breaker: CircuitBreaker,
    outbox: Mutex<std::collections::VecDeque<UsageRecord>>,
    outbox_capacity: usize,
    redis_sessions: Option<(RedisSessions, CircuitBreaker)>,
    local_sessions: MemorySessions,
    keys: ApiKeys,
    limiter: RateLimiter,
    max_prompt_bytes: usize,
}

/// Build the service from `settings`, sending every loaded secret to `redactor` (the one the
/// process's log writer scrubs with).
///
/// # Errors
/// Invalid settings, a secret no provider has (at start-up, so a misconfiguration fails
/// fast), a malformed Redis URL.
pub async fn build(settings: Settings, redactor: Redactor) -> Result<App, BuildError> {
    let handle = metrics();
    let names = settings.provider_names();

    // The fakes, for whatever has no real address.
    let needs_fakes = settings.secrets.vault_address.is_none()
        || settings.providers.iter().any(|p| p.url.is_none());
    let fakes = if needs_fakes {
        let started = FakeServices::start(fakes::demo_secrets(&names), &names)
            .await
            .map_err(|e| fail("starting the fake services", e))?;
        tracing::info!(address = %started.address, "fake Vault and providers started");
        Some(Arc::new(started))
    } else {
        None
    };

    // Secrets: Vault, then the file.
    let secrets = secrets(&settings.secrets, fakes.as_deref(), redactor)?;
    let secret_names: Vec<String> = settings
        .providers
        .iter()
        .map(ProviderSettings::secret)
        .chain([settings.secrets.pepper.clone()])
        .collect();
    let wanted: Vec<&str> = secret_names.iter().map(String::as_str).collect();
    secrets.preload(&wanted).await.map_err(|e| {
        fail(
            "loading secrets (is Vault up, or the fallback file there?)",
            e,
        )
    })?;

    let pool = match &settings.redis_url {
        Some(url) => Some(redis_pool(url).map_err(BuildError)?),
        None => None,
    };

    // API keys, peppered with a secret.
    let pepper = secrets
        .get(&settings.secrets.pepper)
        .await
        .map_err(|e| fail("the pepper", e))?;
    let peppers = Peppers::new(
        Pepper::new(1, pepper.expose_secret().as_bytes()).map_err(|e| fail("the pepper", e))?,
    );
    let mut keys = ApiKeys::builder(peppers).config(settings.apikey.clone());
    if let Some(pool) = &pool {
        keys = keys.store(palisade::apikey::RedisStore::new(pool.clone()));
    }
    let keys = keys.build().map_err(|e| fail("API keys", e))?;

    // Rate limits.
    let limiter = match &pool {
        Some(pool) => RateLimiter::builder(palisade::ratelimit::RedisStore::new(pool.clone()))
            .failure_mode(palisade::ratelimit::FailureMode::FallbackToMemory)
            .build(),
        None => RateLimiter::new(palisade::ratelimit::MemoryStore::new()),
    };
    let client_ip = ClientIp::new()
        .trust(&settings.trusted_proxies)
        .map_err(|e| fail("trusted_proxies", e))?
        .peer_from(|e| e.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()));
    let edge = Stage::new(
        limiter.clone(),
        vec![
            Limit {
                scope: "global",
                key: Key::global(),
                policy: settings.limits.global.clone(),
            },
            Limit {
                scope: "ip",
                key: Key::client_ip(client_ip),
                policy: settings.limits.per_ip.clone(),
            },
        ],
    );
    let caller = Stage::new(
        limiter.clone(),
        vec![
            Limit {
                scope: "key",
                key: Key::custom(|r| {
                    r.extensions
                        .get::<Identity>()
                        .map(|i| format!("key:{}", i.key_id))
                }),
                policy: settings.limits.per_key.clone(),
            },
            Limit {
                scope: "user",
                key: Key::custom(|r| {
                    r.extensions
                        .get::<Identity>()
                        .map(|i| format!("user:{}", i.owner))
                }),
                policy: settings.limits.per_user.clone(),
            },
        ],
    );

    // Breakers: one per dependency, all in one registry (no `redis` breaker without Redis).
    let mut breaker_config = settings.breakers.clone();
    if pool.is_none() {
        breaker_config.breakers.remove("redis");
    }
    let registry = Arc::new(Registry::new(breaker_config).map_err(|e| fail("breakers", e))?);
    let breaker = |name: &str| registry.get(name).map_err(|e| fail("breakers", e));
    let mut providers = Vec::new();
    for p in &settings.providers {
        let url = match (&p.url, &fakes) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Some(f)) => f.provider_url(&p.name),
            (None, None) => unreachable!("fakes start when a provider has no url"),
        };
        providers.push(Provider {
            name: p.name.clone(),
            url,
            model: p.model.clone(),
            secret: p.secret(),
            breaker: breaker(&format!("provider:{}", p.name))?,
        });
    }
    let database = Arc::new(match &settings.database_url {
        Some(url) => Database::Postgres(Postgres::new(url.clone())),
        None => Database::Memory(MemoryDatabase::default()),
    });
    let database_breaker = breaker("database")?;
    let redis_sessions = match &pool {
        Some(pool) => Some((
            RedisSessions::new(
                pool.clone(),
                settings.sessions.max_turns,
                settings.sessions.ttl,
                settings.sessions.redis_timeout,
            ),
            breaker("redis")?,
        )),
        None => None,
    };

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| fail("the HTTP client", e))?;

    let state = Arc::new(AppState {
        providers,
        client,
        secrets: secrets.clone(),
        secret_names,
        registry: Arc::clone(&registry),
        database: Arc::clone(&database),
        database_breaker,
        outbox: Mutex::new(std::collections::VecDeque::new()),
        outbox_capacity: settings.outbox_capacity.max(1),
        redis_sessions,
        local_sessions: MemorySessions::new(
            settings.sessions.max_local_sessions,
            settings.sessions.max_turns,
        ),
        keys: keys.clone(),
        limiter,
        max_prompt_bytes: settings.max_prompt_bytes,
    });
    spawn_outbox_retry(Arc::downgrade(&state), settings.outbox_retry);

    // Routes: /v1/* behind the edge limits, the API key and the caller limits; health and
    // metrics open (put them behind your network's access rules).
    let api = Router::new()
        .route("/v1/generate", post(generate))
        .route("/v1/usage", get(usage))
        .layer(middleware::from_fn_with_state(caller, limits::enforce))
        .layer(ApiKeyLayer::new(keys.clone()))
        .layer(middleware::from_fn_with_state(edge, limits::enforce));
    let router = Router::new()
        .route("/health", get(health))
        .route("/health/breakers", get(breakers))
        .merge(api)
        .fallback(not_found)
        .with_state(Arc::clone(&state))
        .merge(metrics_route(handle));

    Ok(App {
        router: with_request_ids(router),
        keys,
        registry,
        secrets,
        database,
        fakes,
    })
}

fn secrets(
    settings: &SecretSettings,
    fakes: Option<&FakeServices>,
    redactor: Redactor,
) -> Result<Secrets, BuildError> {
    let (address, token) = match (&settings.vault_address, fakes) {
        (Some(address), _) => {
            let token = settings
                .vault_token
                .clone()
                .ok_or_else(|| BuildError("VAULT_ADDR is set but VAULT_TOKEN is not".to_owned()))?;
            (address.clone(), token)
        }
        (None, Some(f)) => (f.address.clone(), SecretString::from(f.vault_token.clone())),
        (None, None) => unreachable!("fakes start when no Vault address is given"),
    };
    let vault = VaultProvider::new(
        VaultConfig::new(address, token)
            .mount(settings.vault_mount.clone())
            .path_prefix(settings.vault_path_prefix.clone())
            .timeout(Duration::from_secs(2)),
    )
    .map_err(|e| fail("Vault", e))?
    .named("vault");
    let mut builder = Secrets::builder()
        .config(settings.cache.clone())
        .redactor(redactor)
        .provider(vault);
    if let Some(file) = &settings.file {
        builder = builder.provider(FileProvider::new(file).named("file"));
    }
    builder.build().map_err(|e| fail("secrets", e))
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "Not Found", "No such route.")
}

// ---------------------------------------------------------------------------------------
// POST /v1/generate
// ---------------------------------------------------------------------------------------

/// The body of `POST /v1/generate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// What to ask.
    pub prompt: String,
    /// A conversation to continue (`[A-Za-z0-9_-]{1,64}`); its earlier messages are sent too.
    #[serde(default)]
    pub session: Option<String>,
    /// Longest answer, in tokens (1 ..= 4096).
    #[serde(default)]
    pub max_tokens: Option<u32>,
}

/// A provider's answer.
#[derive(Debug, Deserialize)]
struct Completion {
    choices: Vec<Choice>,
    usage: CompletionUsage,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: ChoiceMessage,
}

#[derive(Debug, Deserialize)]
struct ChoiceMessage {
    content: String,
}

#[derive(Debug, Deserialize)]
struct CompletionUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// A provider that answered something other than a completion.
#[derive(Debug)]
struct ProviderError(String);

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a provider was passed over.
#[derive(Debug, Serialize)]
struct Skipped {
    provider: String,
    reason: &'static str,
}

fn valid_session(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn bad_body(rejection: &JsonRejection) -> Response {
    problem(
        rejection.status(),
        "Invalid request body",
        rejection.body_text(),
    )
}

async fn generate(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    body: Result<Json<GenerateRequest>, JsonRejection>,
) -> Response {
    if !identity.has_scope("generate") {
        return problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "This key lacks the scope `generate`.",
        );
    }
    let request = match body {
        Ok(Json(r)) => r,
        Err(rejection) => return bad_body(&rejection),
    };
    if request.prompt.trim().is_empty() {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid prompt",
            "`prompt` must not be empty.",
        );
    }
    if request.prompt.len() > state.max_prompt_bytes {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Prompt too large",
            format!(
                "`prompt` is {} bytes; at most {} are accepted.",
                request.prompt.len(),
                state.max_prompt_bytes
            ),
        );
    }
    if let Some(session) = &request.session
        && !valid_session(session)
    {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid session",
            "`session` is 1 to 64 characters of A-Z, a-z, 0-9, `-` and `_`.",
        );
    }
    if let Some(max) = request.max_tokens
        && !(1..=4096).contains(&max)
    {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid max_tokens",
            "`max_tokens` is between 1 and 4096.",
        );
    }

    // The conversation so far (Redis behind its breaker, else this process's memory).
    let session_key = request
        .session
        .as_ref()
        .map(|s| format!("{}:{s}", identity.owner));
    let (mut messages, session_store) = match &session_key {
        Some(key) => state.load_session(key).await,
        None => (Vec::new(), "none"),
    };
    let asked = Turn {
        role: "user".to_owned(),
        content: request.prompt.clone(),
    };
    messages.push(asked.clone());

    // The providers in order, each behind its breaker; the first answer wins.
    let mut skipped = Vec::new();
    let mut retry_after: Option<Duration> = None;
    for provider in &state.providers {
        let key = match state.secrets.get(&provider.secret).await {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(provider = %provider.name, error = %e, "provider key unavailable");
                skipped.push(Skipped {
                    provider: provider.name.clone(),
                    reason: "no_key",
                });
                continue;
            }
        };
        let call =
            state.call_provider(provider, key.expose_secret(), &messages, request.max_tokens);
        let outcome = provider.breaker.call(call).await;
        let reason = match outcome {
            Ok(completion) => {
                metrics::counter!("agent_api_provider_calls_total", "provider" => provider.name.clone(), "outcome" => "success").increment(1);
                return state
                    .answer(
                        &identity,
                        provider,
                        completion,
                        &messages,
                        asked,
                        session_key,
                        session_store,
                        skipped,
                    )
                    .await;
            }
            Err(cb::Error::Rejected { retry_after: r, .. }) => {
                retry_after = Some(retry_after.map_or(r, |old| old.min(r)));
                "circuit_open"
            }
            Err(cb::Error::Timeout(_)) => "timeout",
            Err(e) => {
                tracing::warn!(provider = %provider.name, error = %e, "provider call failed");
                "failed"
            }
        };
        metrics::counter!("agent_api_provider_calls_total", "provider" => provider.name.clone(), "outcome" => reason).increment(1);
        skipped.push(Skipped {
            provider: provider.name.clone(),
            reason,
        });
    }
    metrics::counter!("agent_api_generations_total", "outcome" => "unavailable").increment(1);
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        )],
        Json(json!({
            "type": "about:blank",
            "title": "No provider available",
            "status": 503,
            "detail": "Every provider failed or is resting behind an open circuit breaker.",
            "skipped": skipped,
        })),
    )
        .into_response();
    if let Some(wait) = retry_after {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

impl AppState {
    async fn call_provider(
        &self,
        provider: &Provider,
        key: &str,
        messages: &[Turn],
        max_tokens: Option<u32>,
    ) -> Result<Completion, ProviderError> {
        let body = json!({
            "model": provider.model,
            "messages": messages,
            "max_tokens": max_tokens,
        });
        let response = self
            .client
            .post(format!("{}/v1/chat/completions", provider.url))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            // Without the URL: a reqwest error names it, and a URL may carry a credential.
            .map_err(|e| ProviderError(format!("request failed: {}", e.without_url())))?;
        if !response.status().is_success() {
            // Never the body: an upstream may echo what it was sent.
            return Err(ProviderError(format!("answered {}", response.status())));
        }
        response
            .json::<Completion>()
            .await
            .map_err(|e| ProviderError(format!("unreadable answer: {}", e.without_url())))
    }

    #[allow(clippy::too_many_arguments)]
    async fn answer(
        &self,
        identity: &Identity,
        provider: &Provider,
        completion: Completion,
        messages: &[Turn],
        asked: Turn,
        session_key: Option<String>,
        session_store: &'static str,
        skipped: Vec<Skipped>,
    ) -> Response {
        let text = completion
            .choices
            .into_iter()
            .next()
            .map(|c| c.message.content)
            .unwrap_or_default();
        if let Some(key) = &session_key {
            let answered = Turn {
                role: "assistant".to_owned(),
                content: text.clone(),
            };
            self.append_session(key, &[asked, answered]).await;
        }
        let record = UsageRecord {
            user: identity.owner.clone(),
            key_id: identity.key_id.to_string(),
            provider: provider.name.clone(),
            model: provider.model.clone(),
            prompt_tokens: completion.usage.prompt_tokens,
            completion_tokens: completion.usage.completion_tokens,
            at_micros: now_micros(),
        };
        let recorded = self.record_usage(record).await;
        let fallback = !skipped.is_empty();
        metrics::counter!("agent_api_generations_total", "outcome" => if fallback { "fallback" } else { "served" }).increment(1);
        Json(json!({
            "provider": provider.name,
            "model": provider.model,
            "text": text,
            "usage": {
                "prompt_tokens": completion.usage.prompt_tokens,
                "completion_tokens": completion.usage.completion_tokens,
                "recorded": recorded,
            },
            "fallback": fallback,
            "skipped": skipped,
            "session": {"messages_sent": messages.len(), "store": session_store},
        }))
        .into_response()
    }

    // -- sessions: Redis behind the `redis` breaker, this process's memory as the fallback --

    async fn load_session(&self, key: &str) -> (Vec<Turn>, &'static str) {
        let Some((redis, breaker)) = &self.redis_sessions else {
            return (self.local_sessions.load(key), "memory");
        };
        match breaker.call(redis.load(key)).await {
            Ok(turns) => (turns, "redis"),
            Err(e) => {
                session_fallback("load", &e);
                (self.local_sessions.load(key), "memory_fallback")
            }
        }
    }

    async fn append_session(&self, key: &str, turns: &[Turn]) {
        let Some((redis, breaker)) = &self.redis_sessions else {
            self.local_sessions.append(key, turns);
            return;
        };
        if let Err(e) = breaker.call(redis.append(key, turns)).await {
            session_fallback("append", &e);
            self.local_sessions.append(key, turns);
        }
    }

    // -- usage: the database behind the `database` breaker, an outbox as the fallback --

    /// Write `record` (and whatever waits in the outbox) to the ledger; when the database
    /// fails or its breaker is open, keep it in the outbox for a later attempt.
    async fn record_usage(&self, record: UsageRecord) -> &'static str {
        let mut batch: Vec<UsageRecord> = self.take_outbox();
        let waiting = batch.len();
        batch.push(record);
        match self
            .database_breaker
            .call(self.database.insert(&batch))
            .await
        {
            Ok(()) => {
                metrics::counter!("agent_api_usage_records_total", "result" => "stored")
                    .increment(1);
                if waiting > 0 {
                    metrics::counter!("agent_api_usage_records_total", "result" => "flushed")
                        .increment(waiting as u64);
                }
                self.outbox_gauge();
                "stored"
            }
            Err(e) => {
                log_database_error("record usage", &e);
                metrics::counter!("agent_api_usage_records_total", "result" => "queued")
                    .increment(1);
                self.put_back(batch);
                "queued"
            }
        }
    }

    /// Try the outbox alone (the periodic retry).
    async fn flush_outbox(&self) {
        let batch = self.take_outbox();
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        match self
            .database_breaker
            .call(self.database.insert(&batch))
            .await
        {
            Ok(()) => {
                metrics::counter!("agent_api_usage_records_total", "result" => "flushed")
                    .increment(n);
                self.outbox_gauge();
                tracing::info!(records = n, "usage outbox written to the database");
            }
            Err(e) => {
                log_database_error("flush the outbox", &e);
                self.put_back(batch);
            }
        }
    }

    fn take_outbox(&self) -> Vec<UsageRecord> {
        let mut outbox = self
            .outbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        outbox.drain(..).collect()
    }

    /// Put `batch` back in front of what arrived meanwhile, dropping the oldest beyond the
    /// capacity (counted as `dropped`).
    fn put_back(&self, batch: Vec<UsageRecord>) {
        let mut outbox = self
            .outbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let newer: Vec<UsageRecord> = outbox.drain(..).collect();
        outbox.extend(batch);
        outbox.extend(newer);
        let mut dropped = 0_u64;
        while outbox.len() > self.outbox_capacity {
            outbox.pop_front();
            dropped += 1;
        }
        if dropped > 0 {
            metrics::counter!("agent_api_usage_records_total", "result" => "dropped")
                .increment(dropped);
            tracing::warn!(dropped, "usage outbox full: oldest records dropped");
        }
        metrics::gauge!("agent_api_usage_outbox_records").set(outbox.len() as f64);
    }

    fn outbox_len(&self, user: Option<&str>) -> u64 {
        let outbox = self
            .outbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        outbox
            .iter()
            .filter(|r| user.is_none_or(|u| r.user == u))
            .count() as u64
    }

    fn outbox_gauge(&self) {
        metrics::gauge!("agent_api_usage_outbox_records").set(self.outbox_len(None) as f64);
    }
}

fn session_fallback(op: &'static str, e: &cb::Error<StoreError>) {
    metrics::counter!("agent_api_session_fallbacks_total", "op" => op).increment(1);
    match e {
        cb::Error::Rejected { .. } => {}
        other => {
            tracing::warn!(op, error = %other, "Redis sessions failed: this instance's memory serves");
        }
    }
}

fn log_database_error(what: &str, e: &cb::Error<StoreError>) {
    match e {
        cb::Error::Rejected { .. } => {
            tracing::debug!(what, "database breaker open: usage kept in the outbox");
        }
        other => tracing::warn!(what, error = %other, "database failed: usage kept in the outbox"),
    }
}

fn spawn_outbox_retry(state: Weak<AppState>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else { return };
            state.flush_outbox().await;
        }
    });
}

// ---------------------------------------------------------------------------------------
// GET /v1/usage
// ---------------------------------------------------------------------------------------

async fn usage(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
) -> Response {
    if !identity.has_scope("usage:read") {
        return problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "This key lacks the scope `usage:read`.",
        );
    }
    let queued = state.outbox_len(Some(&identity.owner));
    match state
        .database_breaker
        .call(state.database.totals(&identity.owner))
        .await
    {
        Ok(totals) => Json(json!({
            "user": identity.owner,
            "requests": totals.requests,
            "prompt_tokens": totals.prompt_tokens,
            "completion_tokens": totals.completion_tokens,
            "queued": queued,
        }))
        .into_response(),
        Err(e) => {
            log_database_error("read usage", &e);
            let mut response = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Usage unavailable",
                "The usage database is not answering; try again later.",
            );
            if let cb::Error::Rejected { retry_after, .. } = e {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            response
        }
    }
}

// ---------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------

/// `GET /health/breakers`: the registry's view of every breaker (state, rates, window).
async fn breakers(State(state): State<Arc<AppState>>) -> Json<Vec<cb::Health>> {
    Json(state.registry.health())
}

fn breaker_backend(name: &str) -> &'static str {
    match name {
        "database" | "redis" => "breaker",
        _ => "http",
    }
}

/// A health probe that gives up after a second.
async fn within(
    what: &'static str,
    probe: impl Future<Output = Result<(), StoreError>>,
) -> Result<(), StoreError> {
    let limit = Duration::from_secs(1);
    tokio::time::timeout(limit, probe)
        .await
        .unwrap_or_else(|_| Err(StoreError(format!("{what}: no answer within {limit:?}"))))
}

/// `GET /health`: every breaker, store, secret provider and secret, `connected` per backend.
async fn health(State(state): State<Arc<AppState>>) -> Report {
    let database = within("database", state.database.ping());
    let redis = async {
        match &state.redis_sessions {
            Some((redis, _)) => Some(within("redis", redis.ping()).await),
            None => None,
        }
    };
    let apikey = async {
        state
            .keys
            .store()
            .health()
            .await
            .map_err(|e| StoreError(e.to_string()))
    };
    let ratelimit = async {
        state
            .limiter
            .health()
            .await
            .map_err(|e| StoreError(e.to_string()))
    };
    let (database, redis, apikey, ratelimit, secrets) = tokio::join!(
        database,
        redis,
        within("apikey", apikey),
        within("ratelimit", ratelimit),
        state.secrets.health()
    );

    let mut components = Vec::new();
    for h in state.registry.health() {
        let open = matches!(h.state, BreakerState::Open | BreakerState::ForcedOpen);
        let mut c = Component::up(
            format!("breaker:{}", h.name),
            breaker_backend(&h.name),
            h.state.as_str(),
        );
        c.connected = !open;
        if open {
            c.detail = Some(format!(
                "failure rate {:.0} % over {} calls",
                h.failure_rate, h.window.calls
            ));
        }
        components.push(c);
    }
    let store = |name: &str, backend: &str, r: &Result<(), StoreError>| match r {
        Ok(()) => Component::up(name, backend, "ok"),
        Err(e) => Component::down(name, backend, e.to_string()),
    };
    components.push(store("database", state.database.backend(), &database));
    components.push(store("apikey", state.keys.store().backend_name(), &apikey));
    // The limiter never fails a request when its store is down (it falls back to memory):
    // this line says whether the shared limits are in force.
    components.push(store(
        "ratelimit",
        state.limiter.store().backend_name(),
        &ratelimit,
    ));
    match &redis {
        Some(r) => components.push(store("sessions", "redis", r)),
        None => components.push(Component::up("sessions", "memory", "ok")),
    }
    let queued = state.outbox_len(None);
    if queued > 0 {
        let mut c = Component::up("usage_outbox", "memory", "pending");
        c.detail = Some(format!("{queued} usage record(s) wait for the database"));
        components.push(c);
    }
    for p in &secrets.providers {
        let mut c = if p.healthy {
            Component::up(format!("secrets:{}", p.name), p.name.clone(), "ok")
        } else {
            Component::down(
                format!("secrets:{}", p.name),
                p.name.clone(),
                p.error.clone().unwrap_or_else(|| "unhealthy".to_owned()),
            )
        };
        if p.healthy {
            c.detail = Some(format!("{} ms", p.latency_ms));
        }
        components.push(c);
    }
    // Which provider served each secret (never the value).
    for name in &state.secret_names {
        let c = match state.secrets.cached(name) {
            Some(s) => {
                let mut c = Component::up(format!("secret:{name}"), s.provider(), "cached");
                c.detail = Some(format!("version {}", s.version().as_str()));
                c
            }
            None => Component::down(format!("secret:{name}"), "none", "not cached"),
        };
        components.push(c);
    }
    Report::new(components)
}

/// Serve `router` on `listener` until `shutdown` resolves, with the peer address in each
/// request (the IP limit needs it).
///
/// # Errors
/// The listener failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
