//! The AI gateway's application: the stores, the guards and the router. `main.rs` only
//! reads settings, starts logs and serves; the end-to-end test and the overhead bench
//! include this module and drive [`build`]'s router directly.
#![allow(dead_code, unreachable_pub)] // the test and the bench use different parts of it

#[path = "handlers.rs"]
pub mod handlers;
#[path = "providers.rs"]
pub mod providers;
#[path = "settings.rs"]
pub mod settings;
#[path = "usage.rs"]
pub mod usage;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::{delete, get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use palisade::apikey::layer::{ApiKeyLayer, Identity};
use palisade::apikey::{ApiKeys, CreatedKey, KeySpec, Pepper, Peppers};
use palisade::circuit_breaker::Registry;
use palisade::migrate::{Migrator, UpReport};
use palisade::ratelimit::layer::RateLimitLayer;
use palisade::ratelimit::rules::{Key, RequestLimiter, Route, Rules, TierResolver};
use palisade::ratelimit::{Algorithm, FailureMode, Policy, Quota, RateLimiter};
use palisade::secret_store::{EnvProvider, ExposeSecret, FileProvider, Secrets, SecretsBuilder};
use palisade::semantic_cache::{NamespacePolicy, SemanticCache};
use tower::ServiceBuilder;

use self::providers::Upstreams;
use self::settings::{SecretSettings, Settings, TierLimits};
use self::usage::Ledger;

/// Errors of start-up and of the stores, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The secret holding the API-key pepper (32 bytes or more).
pub const PEPPER_SECRET: &str = "apikey/pepper-v1";

/// The semantic cache's namespace for chat answers.
pub const CHAT_NAMESPACE: &str = "chat";

/// Tier names, as written on the keys (`KeySpec::rate_limit_policy`).
pub const TIERS: [&str; 3] = ["free", "premium", "admin"];

/// The scopes a key of each tier gets unless the admin names others.
pub fn default_scopes(tier: &str) -> &'static [&'static str] {
    match tier {
        "admin" => &["*"],
        "premium" => &["ai:*", "models:read", "usage:read"],
        _ => &["ai:chat", "models:read", "usage:read"],
    }
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct Gateway {
    /// The settings it was built from.
    pub settings: Settings,
    /// API keys.
    pub keys: ApiKeys,
    /// The rate limiter with its rules (the layer uses it; the batch route charges it by hand).
    pub limiter: RequestLimiter,
    /// The AI budget of `free` and `premium` (`admin` is unlimited).
    pub ai_policies: AiPolicies,
    /// The upstream providers behind their breakers.
    pub upstreams: Upstreams,
    /// The breakers, one per provider.
    pub breakers: Registry,
    /// The store the breakers share their state through (`None`: each instance alone).
    pub breaker_store: Option<Arc<dyn palisade::circuit_breaker::Store>>,
    /// The semantic cache (`None` when disabled).
    pub cache: Option<SemanticCache>,
    /// The usage ledger.
    pub ledger: Ledger,
    /// The migrator of the ledger's schema.
    pub migrator: Migrator,
    /// What the start-up migration did.
    pub migrated: UpReport,
    /// Provider keys, the pepper and the backup key.
    pub secrets: Secrets,
    /// The Redis pool every store shares (`None`: memory).
    pub redis: Option<palisade::deadpool_redis::Pool>,
    /// The Prometheus recorder's handle.
    pub metrics: PrometheusHandle,
}

impl Gateway {
    /// `memory` or `redis`: where rate limits, keys, breakers and the cache live.
    pub fn backend(&self) -> &'static str {
        if self.redis.is_some() {
            "redis"
        } else {
            "memory"
        }
    }
}

/// The policies of the AI routes.
#[derive(Debug, Clone)]
pub struct AiPolicies {
    /// `free`.
    pub free: Policy,
    /// `premium`.
    pub premium: Policy,
}

impl AiPolicies {
    /// The policy of `tier`: `None` for `admin` (unlimited); an unknown tier is `free`.
    pub fn for_tier(&self, tier: Option<&str>) -> Option<&Policy> {
        match tier {
            Some("admin") => None,
            Some("premium") => Some(&self.premium),
            _ => Some(&self.free),
        }
    }
}

/// The built gateway: its router, its shared state and, when `bootstrap_admin` is on, the
/// admin key made at start-up (shown once by `main`).
#[derive(Debug)]
pub struct App {
    /// Every route, with correlation ids.
    pub router: Router,
    /// The shared state.
    pub gateway: Arc<Gateway>,
    /// The bootstrap admin key.
    pub admin_key: Option<CreatedKey>,
}

/// The rate-limit key of a request: the verified key's id (never its text).
pub fn limit_key(identity: &Identity) -> String {
    format!("key:{}", identity.key_id)
}

fn ai_policy(name: &str, limits: TierLimits) -> Result<Policy, BoxError> {
    Ok(Policy::builder(name)
        .algorithm(Algorithm::SlidingWindowCounter)
        .quota("per_minute", Quota::per_minute(limits.per_minute))
        .quota("per_hour", Quota::per_hour(limits.per_hour))
        .build()?)
}

/// The secret store: the environment (`GATEWAY_…`), then the settings' file, then demo
/// values when allowed. Every value loaded is scrubbed from the logs by its redactor.
///
/// # Errors
/// A provider is misconfigured.
pub fn secrets(settings: &SecretSettings, provider_names: &[&str]) -> Result<Secrets, BoxError> {
    Ok(secrets_builder(settings, provider_names).build()?)
}

/// The builder behind [`secrets`], for a caller that sets more (a shared redactor, a cache
/// TTL).
pub fn secrets_builder(settings: &SecretSettings, provider_names: &[&str]) -> SecretsBuilder {
    let prefix = &settings.env_prefix;
    let mut builder = Secrets::builder().provider(EnvProvider::from_env(prefix).named("env"));
    if let Some(file) = &settings.file {
        builder = builder.provider(FileProvider::new(file).named("file"));
    }
    if settings.demo_values {
        let upper = |name: &str| {
            format!("{prefix}{name}")
                .to_uppercase()
                .replace(['-', '.', '/'], "_")
        };
        let mut demo = vec![
            (
                upper(PEPPER_SECRET),
                "demo pepper of the ai_gateway example: never use it in production".to_owned(),
            ),
            (upper(usage::BACKUP_KEY_SECRET), "de".repeat(32)),
        ];
        for name in provider_names {
            let secret = providers::secret_name(name);
            demo.push((
                upper(&secret),
                format!("demo-{name}-key-for-the-fake-provider"),
            ));
        }
        builder = builder.provider(EnvProvider::from_vars(prefix, demo).named("demo"));
    }
    builder
}

/// Build the gateway from `settings`: secrets, the start-up migration, stores (Redis when
/// `redis_url` is set), breakers, fake providers, the cache, rate limits and the router.
///
/// # Errors
/// A secret is missing, a store or the migration fails, the settings are invalid.
pub async fn build(settings: Settings) -> Result<App, BoxError> {
    let names: Vec<&str> = settings.providers.iter().map(|p| p.name.as_str()).collect();
    let secrets = secrets(&settings.secrets, &names)?;
    build_with_secrets(settings, secrets).await
}

/// [`build`] with a secret store made beforehand by [`secrets`] (so that the log writer can
/// be wrapped with its redactor before anything is loaded).
///
/// # Errors
/// As [`build`].
pub async fn build_with_secrets(settings: Settings, secrets: Secrets) -> Result<App, BoxError> {
    let metrics = crate::support::telemetry::metrics();
    let names: Vec<&str> = settings.providers.iter().map(|p| p.name.as_str()).collect();
    let mut wanted = vec![
        PEPPER_SECRET.to_owned(),
        usage::BACKUP_KEY_SECRET.to_owned(),
    ];
    wanted.extend(names.iter().map(|n| providers::secret_name(n)));
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    secrets.preload(&wanted).await?;
    for name in &wanted {
        if let Some(s) = secrets.cached(name)
            && s.provider() == "demo"
        {
            tracing::warn!(
                secret = name,
                "using a demo value: set it in the environment or the secrets file"
            );
        }
    }

    let (migrator, migrated, ledger) = usage::migrate(&settings, &secrets).await?;

    let redis = match &settings.redis_url {
        Some(url) => Some(crate::support::settings::redis_pool(url)?),
        None => None,
    };

    // API keys: HMAC-SHA256 under the pepper from the secret store.
    let pepper = secrets.get(PEPPER_SECRET).await?;
    let mut key_config = palisade::apikey::Config::default();
    key_config.prefix = settings.key_prefix.clone();
    let keys = ApiKeys::builder(Peppers::new(Pepper::new(
        1,
        pepper.expose_secret().as_bytes(),
    )?))
    .config(key_config);
    let keys = match &redis {
        Some(pool) => keys.store(
            palisade::apikey::RedisStore::new(pool.clone()).with_prefix("ai_gateway:apikey:"),
        ),
        None => keys.store(palisade::apikey::MemoryStore::new()),
    }
    .build()?;

    // Breakers, one per provider; shared by the fleet through Redis.
    let mut breakers = Registry::new(settings.breakers.clone())?;
    let breaker_store = redis.as_ref().map(|pool| {
        Arc::new(
            palisade::circuit_breaker::RedisStore::new(pool.clone())
                .with_prefix("ai_gateway:breaker:"),
        ) as Arc<dyn palisade::circuit_breaker::Store>
    });
    if let Some(store) = &breaker_store {
        breakers = breakers.with_store(Arc::clone(store), None);
    }
    let upstreams = Upstreams::start(&settings.providers, &breakers, secrets.clone()).await?;

    // The semantic cache, partitioned by the key's owner.
    let cache = if settings.cache.enabled {
        let mut builder = SemanticCache::builder().namespace(
            CHAT_NAMESPACE,
            NamespacePolicy::with_ttl(settings.cache.ttl).threshold(settings.cache.threshold),
        );
        if let Some(pool) = &redis {
            builder = builder.store(
                palisade::semantic_cache::RedisStore::new(pool.clone())
                    .with_prefix("ai_gateway:cache"),
            );
        }
        Some(builder.build()?)
    } else {
        None
    };

    // Rate limits keyed on the verified key id, by the key's tier.
    let limiter = match &redis {
        Some(pool) => RateLimiter::builder(
            palisade::ratelimit::RedisStore::new(pool.clone()).with_prefix("ai_gateway:ratelimit"),
        )
        .failure_mode(FailureMode::FallbackToMemory)
        .build(),
        None => RateLimiter::new(palisade::ratelimit::MemoryStore::new()),
    };
    let limits = &settings.limits;
    let ai_policies = AiPolicies {
        free: ai_policy("ai-free", limits.free)?,
        premium: ai_policy("ai-premium", limits.premium)?,
    };
    let api = Policy::builder("api")
        .algorithm(Algorithm::SlidingWindowCounter)
        .quota("per_minute", Quota::per_minute(limits.api_per_minute))
        .build()?;
    let rules = Rules::builder()
        .exempt("/health")?
        .exempt("/metrics")?
        .route(
            Route::new("/v1/chat/completions")?
                .methods([Method::POST])
                .cost(limits.chat_cost)
                .tier("free", ai_policies.free.clone())
                .tier("premium", ai_policies.premium.clone())
                .unlimited_tier("admin"),
        )
        .route(Route::new("/v1/**")?.policy(api).unlimited_tier("admin"))
        .key(Key::custom(|r| {
            r.extensions.get::<Identity>().map(limit_key)
        }))
        .tiers(
            TierResolver::custom(|r| {
                r.extensions
                    .get::<Identity>()
                    .and_then(|i| i.rate_limit_policy.clone())
            }),
            "free",
        )
        .build()?;
    let limiter = RequestLimiter::new(limiter, rules);

    let admin_key = if settings.bootstrap_admin {
        Some(
            keys.create(
                KeySpec::new("admin", "bootstrap")
                    .scopes(default_scopes("admin").iter().copied())
                    .rate_limit_policy("admin"),
            )
            .await?,
        )
    } else {
        None
    };

    let max_body = settings.max_body_bytes;
    let gateway = Arc::new(Gateway {
        settings,
        keys,
        limiter,
        ai_policies,
        upstreams,
        breakers,
        breaker_store,
        cache,
        ledger,
        migrator,
        migrated,
        secrets,
        redis,
        metrics: metrics.clone(),
    });
    let router = router(&gateway, metrics, max_body);
    Ok(App {
        router,
        gateway,
        admin_key,
    })
}

fn router(gateway: &Arc<Gateway>, metrics: PrometheusHandle, max_body: usize) -> Router {
    let key = |scope: &str| ApiKeyLayer::new(gateway.keys.clone()).require_scope(scope);
    let limit = RateLimitLayer::new(gateway.limiter.clone()).tier_header(true);
    // The key first (its Identity carries the tier and the key id the limiter reads), then
    // the limit; stacked into one layer, so each route boxes one service, not two.
    let guarded = |scope: &str| ServiceBuilder::new().layer(key(scope)).layer(limit.clone());
    // Only the routes that read a body get the size limit, in the same stack: on the whole
    // router it would box every route once more, on every request.
    let body_limit = DefaultBodyLimit::max(max_body);
    let api = Router::new()
        .route(
            "/v1/chat/completions",
            post(handlers::chat).layer(guarded("ai:chat").layer(body_limit)),
        )
        // Weighted by its number of prompts, so the handler charges the limiter itself.
        .route(
            "/v1/batch",
            post(handlers::batch).layer(
                ServiceBuilder::new()
                    .layer(key("ai:batch"))
                    .layer(body_limit),
            ),
        )
        .route(
            "/v1/models",
            get(handlers::models).layer(guarded("models:read")),
        )
        .route(
            "/v1/usage",
            get(handlers::usage).layer(guarded("usage:read")),
        );
    let admin = Router::new()
        .route(
            "/admin/keys",
            post(handlers::create_key).get(handlers::list_keys),
        )
        .route("/admin/keys/{id}", delete(handlers::revoke_key))
        .route("/admin/providers/{name}/fault", put(handlers::set_fault))
        .route("/admin/breakers/{name}", put(handlers::set_breaker))
        .route("/admin/costs", get(handlers::costs))
        .route("/admin/migrations", get(handlers::migrations))
        .route_layer(ServiceBuilder::new().layer(key("admin")).layer(body_limit));
    let router = Router::new()
        .merge(api)
        .merge(admin)
        .route("/health", get(handlers::health))
        .fallback(handlers::not_found)
        .with_state(Arc::clone(gateway))
        .merge(crate::support::http::metrics_route(metrics));
    crate::support::http::with_request_ids(router)
}

/// How long `/health` waits for any one backend.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
