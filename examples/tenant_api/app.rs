//! The multi-tenant API: settings, the per-route limits (per user, API key or client
//! address; minute, hour and day windows), API keys scoped to organisations, the
//! per-organisation cache and its statistics, and the routes.
// The example and its end-to-end test (crates/palisade/tests/tenant_api.rs) each use a part.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Extension, FromRequest, Path, Request, State};
use axum::http::{HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use palisade::apikey::layer::{ApiKeyLayer, Identity};
use palisade::apikey::{ApiKeys, KeySpec, Pepper, Peppers};
use palisade::ratelimit::headers::HeaderStyle;
use palisade::ratelimit::layer::RateLimitLayer;
use palisade::ratelimit::rules::{ClientIp, Key, RequestLimiter, Route, Rules};
use palisade::ratelimit::{Algorithm, FailureMode, Policy, Quota, RateLimiter};
use palisade::secret_store::{EnvProvider, ExposeSecret, MemoryProvider, Secrets};
use palisade::semantic_cache::{
    CacheKey, Computed, Invalidation, NamespacePolicy, Partition, SemanticCache, Source, Tag,
    Tenant, Usage,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::support;
use crate::tenants::{self, Database, Status};

/// Errors of start-up.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The header API keys are read from.
pub const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// The cache namespace of project lists.
pub const PROJECTS: &str = "projects";
/// The cache namespace of reports.
pub const REPORTS: &str = "reports";

// -- settings -------------------------------------------------------------------------------

/// What a limit is counted per.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// The API key's owner: every key of one user shares the budget.
    User,
    /// The API key itself (its public id; never its text).
    ApiKey,
    /// The client address (the TCP peer, or the first untrusted hop of `X-Forwarded-For`
    /// behind `trusted_proxies`; IPv6 by /64).
    Ip,
}

/// One limit: a path pattern (first match wins), what it is counted per, and its windows.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimit {
    /// The policy's name (its counters; the `policy` of a 429 body).
    pub name: String,
    /// `/orgs/*/reports/**`: literal segments, `*` for one segment, a final `**` for any rest.
    pub pattern: String,
    /// Only these methods (`["PUT", "DELETE"]`); none: every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Counted per `user`, `api_key` or `ip`.
    pub key: KeyKind,
    /// Units a request takes.
    #[serde(default = "one")]
    pub cost: u64,
    /// Units a minute.
    #[serde(default)]
    pub minute: Option<u64>,
    /// Units an hour.
    #[serde(default)]
    pub hour: Option<u64>,
    /// Units a day.
    #[serde(default)]
    pub day: Option<u64>,
    /// The algorithm (default `sliding_window_counter`: smooth windows users read as
    /// "per minute", two counters per key and window).
    #[serde(default = "window_algorithm")]
    pub algorithm: Algorithm,
}

fn one() -> u64 {
    1
}

fn window_algorithm() -> Algorithm {
    Algorithm::SlidingWindowCounter
}

impl RouteLimit {
    fn new(name: &str, pattern: &str, methods: &[&str], key: KeyKind, windows: [u64; 3]) -> Self {
        Self {
            name: name.to_owned(),
            pattern: pattern.to_owned(),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            key,
            cost: 1,
            minute: Some(windows[0]),
            hour: Some(windows[1]),
            day: Some(windows[2]),
            algorithm: window_algorithm(),
        }
    }

    fn policy(&self) -> Result<Policy, BoxError> {
        let mut policy = Policy::builder(self.name.as_str()).algorithm(self.algorithm);
        let windows = [
            ("minute", self.minute, 60),
            ("hour", self.hour, 3_600),
            ("day", self.day, 86_400),
        ];
        let mut any = false;
        for (name, limit, seconds) in windows {
            if let Some(limit) = limit {
                policy = policy.quota(name, Quota::new(limit, Duration::from_secs(seconds)));
                any = true;
            }
        }
        if !any {
            return Err(format!("limit {}: give minute, hour or day", self.name).into());
        }
        Ok(policy.build()?)
    }
}

/// The rate limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// The limits, in order (first match wins; a path none matches is not limited).
    pub routes: Vec<RouteLimit>,
    /// Before authentication, every request but the exempt ones, per client address: a
    /// flood guard (a 429 from it carries `Retry-After` only). Off when it has no window.
    pub ip_guard: Option<RouteLimit>,
    /// Never limited.
    pub exempt: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed (CIDRs).
    pub trusted_proxies: Vec<String>,
    /// When Redis fails: `fail_open`, `fail_closed`, `fallback_to_memory`.
    pub failure_mode: FailureMode,
    /// How long a decision may wait for Redis.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            routes: vec![
                // Reports are expensive: each API key gets its own, smaller budget.
                RouteLimit::new(
                    "reports",
                    "/orgs/*/reports/**",
                    &["GET"],
                    KeyKind::ApiKey,
                    [10, 100, 500],
                ),
                // Writes: per user, whichever key they use.
                RouteLimit::new(
                    "writes",
                    "/orgs/**",
                    &["PUT", "POST", "DELETE"],
                    KeyKind::User,
                    [20, 200, 1_000],
                ),
                // Unauthenticated routes: per client address.
                RouteLimit::new("public", "/public/**", &[], KeyKind::Ip, [30, 500, 2_000]),
                // Everything else: per user.
                RouteLimit::new("default", "/**", &[], KeyKind::User, [120, 3_000, 20_000]),
            ],
            ip_guard: Some(RouteLimit::new(
                "ip-guard",
                "/**",
                &[],
                KeyKind::Ip,
                [600, 10_000, 100_000],
            )),
            exempt: vec!["/health".to_owned(), "/metrics".to_owned()],
            trusted_proxies: Vec::new(),
            failure_mode: FailureMode::FailOpen,
            timeout: Duration::from_millis(50),
        }
    }
}

/// How long each namespace's entries live (the same for every organisation; each
/// organisation's entries live in a partition of their own).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheTtls {
    /// Project lists.
    #[serde(with = "humantime_serde")]
    pub projects: Duration,
    /// Reports.
    #[serde(with = "humantime_serde")]
    pub reports: Duration,
}

impl Default for CacheTtls {
    fn default() -> Self {
        Self {
            projects: Duration::from_secs(60),
            reports: Duration::from_secs(300),
        }
    }
}

/// Everything the service reads at start-up (see `tenant_api.toml` beside this file).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Port on 127.0.0.1 when `LISTEN` is unset.
    pub port: u16,
    /// Redis for the limits, the API keys and the cache; `REDIS_URL` wins. Without
    /// either, everything lives in this process's memory.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key this service writes.
    pub redis_prefix: String,
    /// The readable prefix of the API keys (`tn_live_…`).
    pub key_prefix: String,
    /// Create an operator key at start-up and print it once on stdout (never in the logs).
    pub bootstrap_admin: bool,
    /// The rate limits.
    pub limits: Limits,
    /// The cache's TTL per namespace.
    pub cache_ttl: CacheTtls,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            port: 8085,
            redis_url: None,
            redis_prefix: "tenant_api".to_owned(),
            key_prefix: "tn".to_owned(),
            bootstrap_admin: true,
            limits: Limits::default(),
            cache_ttl: CacheTtls::default(),
        }
    }
}

impl Settings {
    /// The file named by `TENANT_API_CONFIG` (defaults without it), then `REDIS_URL`.
    ///
    /// # Errors
    /// An unreadable or invalid file.
    pub fn load() -> Result<Self, String> {
        let mut settings: Self = support::settings::load("TENANT_API_CONFIG")?;
        if let Some(url) = support::settings::redis_url() {
            settings.redis_url = Some(url);
        }
        Ok(settings)
    }
}

// -- secrets --------------------------------------------------------------------------------

const DEMO_PEPPER: &str = "demo API-key pepper: set APP_TENANT_API_PEPPER_V1 in production";

/// The service's secrets: `tenant-api/pepper-v1` (32 bytes or more: the API keys' hashes
/// at rest), from `APP_TENANT_API_PEPPER_V1`, else a demo value (logged at WARN). Every value
/// loaded is scrubbed from the logs by the store's redactor.
///
/// # Errors
/// A provider that cannot be built (never with these).
pub fn secrets() -> Result<Secrets, BoxError> {
    let demo = MemoryProvider::new()
        .named("demo")
        .with_secret("tenant-api/pepper-v1", DEMO_PEPPER)?;
    Ok(Secrets::builder()
        .provider(EnvProvider::from_env("APP_"))
        .provider(demo)
        .build()?)
}

// -- the app --------------------------------------------------------------------------------

/// What `build` returns: the router and what a test (or `main`) pokes at.
#[derive(Debug)]
pub struct App {
    /// Every route, with the limits, API keys and correlation ids.
    pub router: Router,
    /// The API keys (issue one for a test, or the operator key at start-up).
    pub keys: ApiKeys,
    /// The cache.
    pub cache: SemanticCache,
    /// The stand-in database.
    pub database: Arc<Database>,
}

/// Hits and misses per organisation, as `/cache/stats` reports them (bounded: only
/// organisations of the database are ever counted).
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct OrgCounts {
    hits: u64,
    misses: u64,
}

struct AppState {
    keys: ApiKeys,
    cache: SemanticCache,
    database: Arc<Database>,
    limiter: RateLimiter,
    ttls: CacheTtls,
    counts: Mutex<BTreeMap<String, OrgCounts>>,
    backend: &'static str,
}

/// The rules of `limits`: exemptions first, then each route limit in order.
fn rules(
    limits: &[RouteLimit],
    exempt: &[String],
    client_ip: &ClientIp,
) -> Result<Rules, BoxError> {
    let mut rules = Rules::builder();
    for path in exempt {
        rules = rules.exempt(path)?;
    }
    for limit in limits {
        let mut route = Route::new(&limit.pattern)?
            .cost(limit.cost)
            .policy(limit.policy()?)
            .key(key(limit.key, client_ip));
        if !limit.methods.is_empty() {
            let methods = limit
                .methods
                .iter()
                .map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()))
                .collect::<Result<Vec<_>, _>>()?;
            route = route.methods(methods);
        }
        rules = rules.route(route);
    }
    Ok(rules.key(key(KeyKind::Ip, client_ip)).build()?)
}

/// Where a limit's key comes from. The API key layer runs before the limits of the
/// authenticated routes and leaves the verified `Identity` in the request.
fn key(kind: KeyKind, client_ip: &ClientIp) -> Key {
    match kind {
        KeyKind::User => Key::custom(|req| {
            req.extensions
                .get::<Identity>()
                .map(|id| format!("user:{}", id.owner))
        }),
        KeyKind::ApiKey => Key::custom(|req| {
            req.extensions
                .get::<Identity>()
                .map(|id| format!("key:{}", id.key_id))
        }),
        KeyKind::Ip => Key::client_ip(client_ip.clone()),
    }
}

/// Build the service from `settings`, its secrets from `secrets`.
///
/// # Errors
/// Invalid settings (a limit without windows, a bad pattern, method or proxy CIDR), a
/// malformed `REDIS_URL`, or a pepper that cannot be read.
pub async fn build(settings: Settings, secrets: Secrets) -> Result<App, BoxError> {
    let metrics = support::telemetry::metrics();
    let pepper = secrets.get("tenant-api/pepper-v1").await?;
    if pepper.provider() == "demo" {
        tracing::warn!("using the demo API-key pepper; set APP_TENANT_API_PEPPER_V1 in production");
    }
    let peppers = Peppers::new(Pepper::new(1, pepper.expose_secret().as_bytes())?);
    let cache = SemanticCache::builder()
        .namespace(
            PROJECTS,
            NamespacePolicy::exact_only(settings.cache_ttl.projects),
        )
        .namespace(
            REPORTS,
            NamespacePolicy::exact_only(settings.cache_ttl.reports),
        );
    let limits = &settings.limits;
    let (limiter, keys, cache, backend) = match &settings.redis_url {
        Some(url) => {
            let pool = support::settings::redis_pool(url)?;
            let prefix = &settings.redis_prefix;
            let limiter = RateLimiter::builder(
                palisade::ratelimit::RedisStore::new(pool.clone())
                    .with_prefix(&format!("{prefix}:rl")),
            )
            .failure_mode(limits.failure_mode)
            .timeout(limits.timeout)
            .build();
            let keys = ApiKeys::builder(peppers)
                .store(
                    palisade::apikey::RedisStore::new(pool.clone())
                        .with_prefix(format!("{prefix}:keys:")),
                )
                .prefix(settings.key_prefix.clone())
                .build()?;
            let cache = cache
                .store(
                    palisade::semantic_cache::RedisStore::new(pool)
                        .with_prefix(&format!("{prefix}:cache")),
                )
                .build()?;
            (limiter, keys, cache, "redis")
        }
        None => {
            let limiter = RateLimiter::builder(palisade::ratelimit::MemoryStore::new())
                .failure_mode(limits.failure_mode)
                .build();
            let keys = ApiKeys::builder(peppers)
                .store(palisade::apikey::MemoryStore::new())
                .prefix(settings.key_prefix.clone())
                .build()?;
            (limiter, keys, cache.build()?, "memory")
        }
    };
    let client_ip = ClientIp::new()
        .trust(&limits.trusted_proxies)?
        .peer_from(|e| e.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()));
    let route_limits = RequestLimiter::new(
        limiter.clone(),
        rules(&limits.routes, &limits.exempt, &client_ip)?,
    );
    // Every window's figures: the legacy trio of the tightest window, the IETF draft's
    // lists, and one X-RateLimit-{Limit,Remaining,Reset}-{Minute,Hour,Day} set per window.
    let per_window = HeaderStyle::BOTH.with_per_window(true);

    let database = Arc::new(Database::seeded());
    let state = Arc::new(AppState {
        keys: keys.clone(),
        cache: cache.clone(),
        database: Arc::clone(&database),
        limiter: limiter.clone(),
        ttls: settings.cache_ttl.clone(),
        counts: Mutex::new(BTreeMap::new()),
        backend,
    });

    // Authenticated routes: the key is verified first, then the route's limit (which may
    // count per user or per key) applies.
    let authenticated = Router::new()
        .route("/orgs/{org}/projects", get(list_projects))
        .route("/orgs/{org}/projects/{id}", put(update_project))
        .route("/orgs/{org}/reports/{name}", get(report))
        .route("/orgs/{org}/cache", delete(invalidate_org))
        .route(
            "/orgs/{org}/cache/{namespace}",
            delete(invalidate_namespace),
        )
        .route("/cache/stats", get(cache_stats))
        .route("/admin/keys", post(create_key))
        .with_state(Arc::clone(&state))
        .layer(RateLimitLayer::new(route_limits.clone()).headers(per_window))
        .layer(ApiKeyLayer::new(keys.clone()).header(API_KEY_HEADER));
    let open = Router::new()
        .route("/public/status", get(public_status))
        .route("/health", get(health))
        .with_state(state)
        .merge(support::http::metrics_route(metrics))
        .layer(RateLimitLayer::new(route_limits).headers(per_window));
    let mut router = authenticated.merge(open).fallback(not_found);
    if let Some(guard) = limits
        .ip_guard
        .as_ref()
        .filter(|g| g.minute.is_some() || g.hour.is_some() || g.day.is_some())
    {
        let guard_rules = rules(std::slice::from_ref(guard), &limits.exempt, &client_ip)?;
        router = router.layer(
            RateLimitLayer::new(RequestLimiter::new(limiter, guard_rules))
                .headers(HeaderStyle::NONE),
        );
    }
    Ok(App {
        router: support::http::with_request_ids(router),
        keys,
        cache,
        database,
    })
}

/// Create the operator key: every organisation, every action.
///
/// # Errors
/// The key store fails.
pub async fn bootstrap_admin(keys: &ApiKeys) -> Result<String, BoxError> {
    let created = keys
        .create(
            KeySpec::new("ops", "bootstrap operator key")
                .scopes(["org:*", "projects:*", "reports:*", "cache:*", "keys:create"])
                .expires_in(Duration::from_secs(24 * 3_600)),
        )
        .await?;
    Ok(created.key.expose_secret().to_owned())
}

/// Serve `router` on `listener`, with each connection's peer address (what the per-address
/// limits count by).
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

// -- errors and authorisation ---------------------------------------------------------------

fn problem(status: StatusCode, title: &str, detail: impl Into<String>, code: &str) -> Response {
    let mut extra = serde_json::Map::new();
    extra.insert("code".to_owned(), code.into());
    support::http::problem_with(status, title, detail, extra)
}

async fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "Not found",
        "no such route",
        "not_found",
    )
}

/// A JSON body whose rejection is problem+json like every other error.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Json::<T>::from_request(request, state)
            .await
            .map(|Json(value)| Self(value))
            .map_err(|rejection: JsonRejection| {
                problem(
                    rejection.status(),
                    "Invalid body",
                    rejection.body_text(),
                    "invalid_body",
                )
            })
    }
}

/// The caller may act on `org` (`org:<org>` or `org:*`) with `action`; the organisation
/// exists. A key without the organisation's scope gets 403 whether or not it exists.
fn authorize(
    state: &AppState,
    who: &Identity,
    org: &str,
    action: &str,
) -> Result<(), Box<Response>> {
    let valid = !org.is_empty()
        && org.len() <= 64
        && org
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid || !who.has_scope(&format!("org:{org}")) {
        return Err(Box::new(problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "this key may not act on this organisation",
            "wrong_org",
        )));
    }
    if !who.has_scope(action) {
        return Err(Box::new(problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("this key lacks the scope `{action}`"),
            "insufficient_scope",
        )));
    }
    if !state.database.has_org(org) {
        return Err(Box::new(problem(
            StatusCode::NOT_FOUND,
            "Not found",
            "no such organisation",
            "unknown_org",
        )));
    }
    Ok(())
}

// -- the cache ------------------------------------------------------------------------------

/// `namespace`/`name` of `org` from the cache, else from `load` (concurrent misses share
/// one load), tagged `projects` (both namespaces are computed from the projects, so a
/// project change drops both). Fails open: with the cache's backend down, `load` answers.
async fn cached(
    state: &AppState,
    org: &str,
    namespace: &str,
    name: &str,
    load: impl FnOnce() -> Option<serde_json::Value>,
) -> Result<Option<(serde_json::Value, bool)>, Response> {
    let key = CacheKey::new(org, namespace, "v1", name).map_err(|e| {
        problem(
            StatusCode::BAD_REQUEST,
            "Invalid request",
            e.to_string(),
            "invalid_request",
        )
    })?;
    let tags = vec![Tag::new(PROJECTS).map_err(|e| {
        problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cache error",
            e.to_string(),
            "error",
        )
    })?];
    let served = state
        .cache
        .get_or_compute(&key, || async move {
            match load() {
                Some(value) => Computed::json(&value, Usage::default()).map(|c| c.with_tags(tags)),
                None => Err(palisade::semantic_cache::Error::InvalidConfig(
                    "not found".into(),
                )),
            }
        })
        .await;
    let served = match served {
        Ok(served) => served,
        Err(palisade::semantic_cache::Error::Provider(_)) => return Ok(None),
        Err(e) => {
            tracing::warn!(error = %e, "cache unavailable");
            return Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "see the logs",
                "unavailable",
            ));
        }
    };
    let hit = matches!(served.source, Source::Cache { .. });
    {
        let mut counts = state
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = counts.entry(org.to_owned()).or_default();
        if hit {
            entry.hits += 1;
        } else {
            entry.misses += 1;
        }
    }
    let value = served.entry.response_json().map_err(|e| {
        tracing::warn!(error = %e, "cached value does not decode");
        problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cache error",
            "see the logs",
            "error",
        )
    })?;
    Ok(Some((value, hit)))
}

fn with_cache_header(mut response: Response, hit: bool) -> Response {
    response.headers_mut().insert(
        "x-cache",
        axum::http::HeaderValue::from_static(if hit { "hit" } else { "miss" }),
    );
    response
}

fn percent(hits: u64, misses: u64) -> f64 {
    if hits + misses == 0 {
        0.0
    } else {
        (hits as f64 * 1000.0 / (hits + misses) as f64).round() / 10.0
    }
}

// -- routes ---------------------------------------------------------------------------------

async fn health(State(state): State<Arc<AppState>>) -> support::health::Report {
    use support::health::Component;
    let limits = match state.limiter.health().await {
        Ok(()) => Component::up(
            "ratelimit",
            state.backend,
            state.limiter.failure_mode().as_str(),
        ),
        Err(e) => Component::down("ratelimit", state.backend, e.to_string()),
    };
    let keys = match state.keys.store().health().await {
        Ok(()) => Component::up("apikey", state.backend, "ok"),
        Err(e) => Component::down("apikey", state.backend, e.to_string()),
    };
    let cache = match state.cache.health().await {
        Ok(()) => Component::up("cache", state.backend, "ok"),
        Err(e) => Component::down("cache", state.backend, e.to_string()),
    };
    support::health::Report::new(vec![limits, keys, cache])
}

async fn public_status(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "service": "tenant API (palisade tenant_api example)",
        "organisations": state.database.orgs().len(),
    }))
}

async fn list_projects(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Identity>,
    Path(org): Path<String>,
) -> Response {
    if let Err(denied) = authorize(&state, &who, &org, "projects:read") {
        return *denied;
    }
    let database = Arc::clone(&state.database);
    let owned = org.clone();
    match cached(&state, &org, PROJECTS, "all", move || {
        database.projects(&owned).map(|p| json!(p))
    })
    .await
    {
        Ok(Some((value, hit))) => with_cache_header(Json(value).into_response(), hit),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "Not found",
            "no such organisation",
            "unknown_org",
        ),
        Err(response) => response,
    }
}

async fn report(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Identity>,
    Path((org, name)): Path<(String, String)>,
) -> Response {
    if let Err(denied) = authorize(&state, &who, &org, "reports:read") {
        return *denied;
    }
    if !tenants::REPORTS.contains(&name.as_str()) {
        return problem(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("reports: {}", tenants::REPORTS.join(", ")),
            "unknown_report",
        );
    }
    let database = Arc::clone(&state.database);
    let (owned_org, owned_name) = (org.clone(), name.clone());
    match cached(&state, &org, REPORTS, &name, move || {
        database.report(&owned_org, &owned_name)
    })
    .await
    {
        Ok(Some((value, hit))) => with_cache_header(Json(value).into_response(), hit),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "Not found",
            "no such report",
            "unknown_report",
        ),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectUpdate {
    name: Option<String>,
    status: Option<Status>,
    budget_cents: Option<u64>,
}

async fn update_project(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Identity>,
    Path((org, id)): Path<(String, String)>,
    Body(update): Body<ProjectUpdate>,
) -> Response {
    if let Err(denied) = authorize(&state, &who, &org, "projects:write") {
        return *denied;
    }
    if let Some(name) = &update.name
        && (name.trim().is_empty() || name.chars().count() > 100)
    {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid project",
            "`name` is 1 to 100 characters",
            "invalid_name",
        );
    }
    let Ok(id) = id.parse::<u32>() else {
        return problem(
            StatusCode::NOT_FOUND,
            "Not found",
            "no such project",
            "unknown_project",
        );
    };
    let updated = state.database.update_project(
        &org,
        id,
        update.name.map(|n| n.trim().to_owned()),
        update.status,
        update.budget_cents,
    );
    let Ok(project) = updated else {
        return problem(
            StatusCode::NOT_FOUND,
            "Not found",
            "no such project",
            "unknown_project",
        );
    };
    // The project list and every report of this organisation were computed from the old
    // data: drop them (tag `projects`), here and on every instance sharing Redis. Other
    // organisations' entries are untouched.
    let invalidated = match Tenant::new(&org).and_then(|t| Ok((t, Tag::new(PROJECTS)?))) {
        Ok((tenant, tag)) => state.cache.invalidate_tag(&tenant, &tag).await,
        Err(e) => Err(e),
    };
    match invalidated {
        Ok(removed) => Json(json!({ "project": project, "invalidated": removed })).into_response(),
        Err(e) => {
            // The change is made; what the cache holds may be stale for up to its TTL.
            metrics::counter!("tenant_api_invalidation_failures_total").increment(1);
            tracing::warn!(error = %e, "cache not invalidated after a change");
            Json(json!({ "project": project, "invalidated": null })).into_response()
        }
    }
}

async fn invalidate_org(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Identity>,
    Path(org): Path<String>,
) -> Response {
    if let Err(denied) = authorize(&state, &who, &org, "cache:invalidate") {
        return *denied;
    }
    let what = match Tenant::new(&org) {
        Ok(tenant) => Invalidation::Tenant(tenant),
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Invalid request",
                e.to_string(),
                "invalid_request",
            );
        }
    };
    invalidate(&state, what).await
}

async fn invalidate_namespace(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Identity>,
    Path((org, namespace)): Path<(String, String)>,
) -> Response {
    if let Err(denied) = authorize(&state, &who, &org, "cache:invalidate") {
        return *denied;
    }
    if namespace != PROJECTS && namespace != REPORTS {
        return problem(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("namespaces: {PROJECTS}, {REPORTS}"),
            "unknown_namespace",
        );
    }
    let what = match Partition::new(&org, &namespace) {
        Ok(partition) => Invalidation::Namespace(partition),
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Invalid request",
                e.to_string(),
                "invalid_request",
            );
        }
    };
    invalidate(&state, what).await
}

async fn invalidate(state: &AppState, what: Invalidation) -> Response {
    match state.cache.invalidate(what).await {
        Ok(removed) => Json(json!({ "invalidated": removed })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "invalidation failed");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Cache unavailable",
                "the invalidation was not applied; retry",
                "unavailable",
            )
        }
    }
}

#[derive(Serialize)]
struct NamespaceStats {
    name: &'static str,
    ttl_seconds: u64,
}

#[derive(Serialize)]
struct Memory {
    entries: u64,
    /// `null` on Redis (it keeps no per-partition byte count).
    bytes: Option<u64>,
}

#[derive(Serialize)]
struct OrgStats {
    hits: u64,
    misses: u64,
    hit_rate_percent: f64,
    memory: Memory,
}

/// `GET /cache/stats` (scope `cache:stats`): hits, misses and hit rate (the whole cache and
/// per organisation), the entries (and bytes, in memory) each organisation holds, whether
/// the cache's backend answers, and each namespace's TTL.
async fn cache_stats(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Identity>,
) -> Response {
    if !who.has_scope("cache:stats") {
        return problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "this key lacks the scope `cache:stats`",
            "insufficient_scope",
        );
    }
    let snapshot = state.cache.stats();
    let hits = snapshot.exact_hits + snapshot.semantic_hits;
    let connected = state.cache.health().await.is_ok();
    let counts = state
        .counts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let mut total = Memory {
        entries: 0,
        bytes: Some(0),
    };
    let mut orgs = BTreeMap::new();
    for org in state.database.orgs() {
        let mut memory = Memory {
            entries: 0,
            bytes: Some(0),
        };
        if connected {
            for namespace in [PROJECTS, REPORTS] {
                let Ok(partition) = Partition::new(&org, namespace) else {
                    continue;
                };
                if let Ok(usage) = state.cache.usage(&partition).await {
                    memory.entries += usage.entries;
                    memory.bytes = memory.bytes.zip(usage.bytes).map(|(a, b)| a + b);
                }
            }
        } else {
            memory.bytes = None;
        }
        total.entries += memory.entries;
        total.bytes = total.bytes.zip(memory.bytes).map(|(a, b)| a + b);
        let c = counts.get(&org).copied().unwrap_or_default();
        orgs.insert(
            org,
            OrgStats {
                hits: c.hits,
                misses: c.misses,
                hit_rate_percent: percent(c.hits, c.misses),
                memory,
            },
        );
    }
    Json(json!({
        "backend": state.backend,
        "connected": connected,
        "hits": hits,
        "misses": snapshot.misses,
        "hit_rate_percent": percent(hits, snapshot.misses),
        "memory": total,
        "namespaces": [
            NamespaceStats { name: PROJECTS, ttl_seconds: state.ttls.projects.as_secs() },
            NamespaceStats { name: REPORTS, ttl_seconds: state.ttls.reports.as_secs() },
        ],
        "orgs": orgs,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    /// The user the key belongs to.
    owner: String,
    /// The organisation it may act on.
    org: String,
    /// What it is for.
    name: String,
    /// What it may do there (default: read projects and reports).
    #[serde(default)]
    scopes: Vec<String>,
}

/// `POST /admin/keys` (scope `keys:create`): a key for one user in one organisation, shown
/// once in the answer.
async fn create_key(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Identity>,
    Body(request): Body<NewKey>,
) -> Response {
    if !who.has_scope("keys:create") {
        return problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "this key lacks the scope `keys:create`",
            "insufficient_scope",
        );
    }
    if !state.database.has_org(&request.org) {
        return problem(
            StatusCode::NOT_FOUND,
            "Not found",
            "no such organisation",
            "unknown_org",
        );
    }
    let allowed = [
        "projects:read",
        "projects:write",
        "reports:read",
        "cache:invalidate",
    ];
    if let Some(bad) = request
        .scopes
        .iter()
        .find(|s| !allowed.contains(&s.as_str()))
    {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid key",
            format!("scope `{bad}` is not one of {}", allowed.join(", ")),
            "invalid_scope",
        );
    }
    let mut scopes = vec![format!("org:{}", request.org)];
    if request.scopes.is_empty() {
        scopes.extend(["projects:read".to_owned(), "reports:read".to_owned()]);
    } else {
        scopes.extend(request.scopes);
    }
    match state
        .keys
        .create(KeySpec::new(request.owner, request.name).scopes(scopes))
        .await
    {
        Ok(created) => (
            StatusCode::CREATED,
            Json(json!({
                "id": created.record.id.as_str(),
                "key": created.key.expose_secret(),
                "scopes": created.record.scopes,
            })),
        )
            .into_response(),
        Err(e) if !e.is_transient() => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid key",
            e.to_string(),
            "invalid_key",
        ),
        Err(e) => {
            tracing::warn!(error = %e, "key not created");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "see the logs",
                "unavailable",
            )
        }
    }
}
