//! The gateway's routes.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use palisade::apikey::KeySpec;
use palisade::apikey::layer::Identity;
use palisade::ratelimit::headers::{self, HeaderStyle};
use palisade::ratelimit::layer::too_many_requests;
use palisade::semantic_cache::{CacheKey, Computed, ContextHasher, HitKind, Source, Usage};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::providers::{Attempt, ChatRequest, ChatResponse, RouteError};
use super::settings::FaultMode;
use super::usage::UsageEvent;
use super::{CHAT_NAMESPACE, Gateway, HEALTH_TIMEOUT, TIERS, default_scopes, limit_key};
use crate::support::health::{Component, Report};
use crate::support::http::problem;

type Shared = State<Arc<Gateway>>;

/// Which provider answered (`x-gateway-provider`).
pub const PROVIDER_HEADER: HeaderName = HeaderName::from_static("x-gateway-provider");
/// `miss`, `joined`, `exact_hit`, `semantic_hit` or `off` (`x-gateway-cache`).
pub const CACHE_HEADER: HeaderName = HeaderName::from_static("x-gateway-cache");

/// An error answer: problem+json.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    title: &'static str,
    detail: String,
}

/// The reason phrase of `status`, as a problem's title.
fn title_of(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

impl Problem {
    fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            title,
            detail: detail.into(),
        }
    }

    fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad Request", detail)
    }

    fn internal(what: &str, error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::warn!(error, "{what} failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            format!("{what} failed; try again shortly"),
        )
    }

    fn body(&self) -> serde_json::Value {
        json!({
            "type": "about:blank",
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        })
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        problem(self.status, self.title, self.detail)
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        Self::new(status, title_of(status), rejection.body_text())
    }
}

// -- chat ------------------------------------------------------------------------------------

/// What the semantic cache keeps for one answer: who answered and what it said.
#[derive(Debug, Serialize, Deserialize)]
struct CachedAnswer {
    provider: String,
    response: ChatResponse,
}

/// What the gateway adds to an OpenAI-shaped answer.
#[derive(Debug, Serialize)]
struct GatewayInfo {
    provider: String,
    cache: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    similarity: Option<f32>,
    /// Dollars spent on this request.
    cost: f64,
    /// Dollars the cache saved on it.
    saved: f64,
    /// Tokens the cache saved on it.
    tokens_saved: u64,
    /// Providers tried (and failed) before the one that answered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    fallback_from: Vec<Attempt>,
}

/// One answered chat request.
#[derive(Debug)]
pub struct Answer {
    response: ChatResponse,
    info: GatewayInfo,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        let mut body = serde_json::to_value(&self.response).unwrap_or_default();
        if let Some(map) = body.as_object_mut() {
            map.insert(
                "gateway".to_owned(),
                serde_json::to_value(&self.info).unwrap_or_default(),
            );
        }
        body
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = Json(self.json()).into_response();
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.info.provider) {
            headers.insert(PROVIDER_HEADER, v);
        }
        headers.insert(CACHE_HEADER, HeaderValue::from_static(self.info.cache));
        response
    }
}

const ROLES: [&str; 3] = ["system", "user", "assistant"];

fn validate(gateway: &Gateway, request: &ChatRequest) -> Result<(), Problem> {
    if request.stream {
        return Err(Problem::bad_request(
            "streaming is not supported by this gateway; send \"stream\": false",
        ));
    }
    if !gateway.settings.models.contains(&request.model) {
        return Err(Problem::bad_request(format!(
            "unknown model `{}`; GET /v1/models lists them",
            request.model
        )));
    }
    let Some(last) = request.messages.last() else {
        return Err(Problem::bad_request("`messages` is empty"));
    };
    if last.role != "user" || last.content.trim().is_empty() {
        return Err(Problem::bad_request(
            "the last message must be the user's, and not empty",
        ));
    }
    if let Some(m) = request
        .messages
        .iter()
        .find(|m| !ROLES.contains(&m.role.as_str()))
    {
        return Err(Problem::bad_request(format!(
            "unknown role `{}`; use system, user or assistant",
            m.role
        )));
    }
    if request
        .temperature
        .is_some_and(|t| !(0.0..=2.0).contains(&t))
    {
        return Err(Problem::bad_request(
            "`temperature` must be between 0 and 2",
        ));
    }
    Ok(())
}

/// The cache key: the owner's partition, the model, the last user message compared by
/// meaning, everything else (earlier messages, parameters) matched exactly.
fn cache_key(owner: &str, request: &ChatRequest) -> Result<CacheKey, Problem> {
    let (last, earlier) = request
        .messages
        .split_last()
        .ok_or_else(|| Problem::bad_request("`messages` is empty"))?;
    let mut context = ContextHasher::new();
    for m in earlier {
        context = if m.role == "system" {
            context.system(&m.content)
        } else {
            context.message(&m.role, &m.content)
        };
    }
    if let Some(t) = request.temperature {
        context = context.param("temperature", &t.to_string());
    }
    if let Some(t) = request.max_tokens {
        context = context.param("max_tokens", &t.to_string());
    }
    Ok(
        CacheKey::new(owner, CHAT_NAMESPACE, &request.model, last.content.clone())
            .map_err(|e| Problem::bad_request(e.to_string()))?
            .with_context(context.finish()),
    )
}

fn route_problem(error: &RouteError) -> Problem {
    match error {
        RouteError::BadRequest(_) => Problem::bad_request(error.to_string()),
        RouteError::AllFailed(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            error.to_string(),
        ),
    }
}

/// Answer one chat request: from the cache when it can, else from the first provider that
/// answers; then record it in the ledger.
async fn answer(
    gateway: &Gateway,
    identity: &Identity,
    request: &ChatRequest,
) -> Result<Answer, Problem> {
    let failed = Mutex::new(Vec::new());
    let (response, provider, info_cache, similarity, cost, saved, tokens_saved) =
        match &gateway.cache {
            None => {
                let answered = gateway
                    .upstreams
                    .complete(request)
                    .await
                    .map_err(|e| route_problem(&e))?;
                *failed.lock().unwrap_or_else(PoisonError::into_inner) = answered.failed;
                let cost = answered.cost;
                (
                    answered.response,
                    answered.provider,
                    "off",
                    None,
                    cost,
                    0.0,
                    0,
                )
            }
            Some(cache) => {
                let key = cache_key(&identity.owner, request)?;
                let served = cache
                    .get_or_compute(&key, || async {
                        let answered = gateway.upstreams.complete(request).await?;
                        let usage = Usage::new(
                            answered.response.usage.prompt_tokens,
                            answered.response.usage.completion_tokens,
                            answered.cost,
                        );
                        *failed.lock().unwrap_or_else(PoisonError::into_inner) = answered.failed;
                        let cached = CachedAnswer {
                            provider: answered.provider,
                            response: answered.response,
                        };
                        Computed::json(&cached, usage)
                            .map_err(|e| RouteError::BadRequest(e.to_string()))
                    })
                    .await
                    .map_err(|e| match e {
                        palisade::semantic_cache::Error::Provider(inner) => {
                            match inner.downcast_ref::<RouteError>() {
                                Some(route) => route_problem(route),
                                None => Problem::internal("the provider call", &*inner),
                            }
                        }
                        e if e.is_invalid_input() => Problem::bad_request(e.to_string()),
                        e => Problem::internal("the cache", &e),
                    })?;
                let cached: CachedAnswer = served
                    .entry
                    .response_json()
                    .map_err(|e| Problem::internal("reading a cached answer", &e))?;
                let usage = served.entry.usage;
                let (label, similarity, spent) = match served.source {
                    Source::Joined => ("joined", None, 0.0),
                    Source::Cache {
                        kind: HitKind::Exact,
                        ..
                    } => ("exact_hit", Some(1.0), 0.0),
                    Source::Cache { similarity, .. } => ("semantic_hit", Some(similarity), 0.0),
                    // `Computed`, and any source a later version adds (`Source` is
                    // non-exhaustive): this call paid for the answer.
                    _ => ("miss", None, usage.cost),
                };
                let (saved, tokens_saved) = if label == "miss" {
                    (0.0, 0)
                } else {
                    (usage.cost, usage.input_tokens + usage.output_tokens)
                };
                (
                    cached.response,
                    cached.provider,
                    label,
                    similarity,
                    spent,
                    saved,
                    tokens_saved,
                )
            }
        };
    let source = match info_cache {
        "exact_hit" => "exact_hit",
        "semantic_hit" => "semantic_hit",
        "joined" => "joined",
        _ => "computed",
    };
    let event = UsageEvent {
        key_id: identity.key_id.as_str(),
        owner: &identity.owner,
        provider: &provider,
        model: &request.model,
        source,
        input_tokens: response.usage.prompt_tokens,
        output_tokens: response.usage.completion_tokens,
        cost,
        saved,
    };
    if let Err(e) = gateway.ledger.record(&event).await {
        // The answer was paid for: serve it, and say the ledger missed it.
        tracing::warn!(
            error = &*e as &dyn std::error::Error,
            "usage ledger write failed"
        );
    }
    let fallback_from = failed.into_inner().unwrap_or_else(PoisonError::into_inner);
    Ok(Answer {
        response,
        info: GatewayInfo {
            provider,
            cache: info_cache,
            similarity,
            cost,
            saved,
            tokens_saved,
            fallback_from,
        },
    })
}

/// `POST /v1/chat/completions` (scope `ai:chat`): an OpenAI-compatible chat completion,
/// rate-limited by the layer under the key's tier.
pub async fn chat(
    State(gateway): Shared,
    Extension(identity): Extension<Identity>,
    request: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Answer, Problem> {
    let Json(request) = request?;
    validate(&gateway, &request)?;
    answer(&gateway, &identity, &request).await
}

// -- batch -----------------------------------------------------------------------------------

/// `POST /v1/batch` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Chat requests, answered concurrently.
    pub requests: Vec<ChatRequest>,
}

/// How many prompts of one batch are in flight at once.
const BATCH_CONCURRENCY: usize = 4;

/// `POST /v1/batch` (scope `ai:batch`): up to `batch_max` chat requests, answered
/// concurrently (each through the cache and the providers), in order. The batch costs
/// `batch_cost_per_prompt` per prompt against the tier's AI budget, charged before any is
/// sent; prompts that fail are refunded.
pub async fn batch(
    State(gateway): Shared,
    Extension(identity): Extension<Identity>,
    body: Result<Json<BatchRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(batch) = body?;
    let max = gateway.settings.limits.batch_max;
    if batch.requests.is_empty() || batch.requests.len() > max {
        return Err(Problem::bad_request(format!(
            "a batch holds 1 to {max} requests, not {}",
            batch.requests.len()
        )));
    }
    for (i, r) in batch.requests.iter().enumerate() {
        validate(&gateway, r)
            .map_err(|p| Problem::bad_request(format!("requests[{i}]: {}", p.detail)))?;
    }
    let per_prompt = gateway.settings.limits.batch_cost_per_prompt;
    let cost = per_prompt * batch.requests.len() as u64;
    let policy = gateway
        .ai_policies
        .for_tier(identity.rate_limit_policy.as_deref());
    let key = limit_key(&identity);
    let decision = match policy {
        Some(policy) => {
            let decision = gateway.limiter.limiter().acquire(&key, policy, cost).await;
            if !decision.allowed {
                return Ok(too_many_requests(&decision, policy, HeaderStyle::BOTH));
            }
            Some((decision, policy))
        }
        None => None,
    };

    let (gateway_ref, identity_ref, requests) = (&*gateway, &identity, &batch.requests);
    let answers: Vec<Result<Answer, Problem>> = futures::stream::iter(0..requests.len())
        .map(|i| answer(gateway_ref, identity_ref, &requests[i]))
        .buffered(BATCH_CONCURRENCY)
        .collect()
        .await;
    let mut failures = 0_u64;
    let (mut spent, mut saved, mut input, mut output) = (0.0, 0.0, 0_u64, 0_u64);
    let results: Vec<serde_json::Value> = answers
        .iter()
        .enumerate()
        .map(|(index, a)| match a {
            Ok(a) => {
                spent += a.info.cost;
                saved += a.info.saved;
                if a.info.cache == "miss" || a.info.cache == "off" {
                    input += a.response.usage.prompt_tokens;
                    output += a.response.usage.completion_tokens;
                }
                json!({ "index": index, "status": 200, "response": a.json() })
            }
            Err(p) => {
                failures += 1;
                json!({ "index": index, "status": p.status.as_u16(), "error": p.body() })
            }
        })
        .collect();
    if failures > 0
        && let Some(policy) = policy
        && let Err(e) = gateway
            .limiter
            .limiter()
            .refund(&key, policy, failures * per_prompt)
            .await
    {
        tracing::warn!(
            error = &e as &dyn std::error::Error,
            "refund of failed prompts failed"
        );
    }
    let mut response = Json(json!({
        "results": results,
        "usage": {
            "prompts": batch.requests.len(),
            "failed": failures,
            "units_charged": if policy.is_some() { cost - failures * per_prompt } else { 0 },
            "input_tokens": input,
            "output_tokens": output,
            "cost": spent,
            "saved": saved,
        },
    }))
    .into_response();
    if let Some((d, policy)) = &decision {
        headers::apply(d, policy, response.headers_mut(), HeaderStyle::BOTH);
    }
    Ok(response)
}

// -- models and usage -------------------------------------------------------------------------

/// `GET /v1/models` (scope `models:read`).
pub async fn models(State(gateway): Shared) -> Json<serde_json::Value> {
    let data: Vec<_> = gateway
        .settings
        .models
        .iter()
        .map(|m| json!({ "id": m, "object": "model", "owned_by": "ai_gateway" }))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

/// `GET /v1/usage` (scope `usage:read`): what the key's owner used, per provider: requests,
/// cached answers, tokens, dollars spent and saved.
pub async fn usage(
    State(gateway): Shared,
    Extension(identity): Extension<Identity>,
) -> Result<Json<serde_json::Value>, Problem> {
    let usage = gateway
        .ledger
        .owner(&identity.owner)
        .await
        .map_err(|e| Problem::internal("the usage ledger", &*e))?;
    Ok(Json(json!({
        "owner": identity.owner,
        "key_id": identity.key_id.as_str(),
        "tier": identity.rate_limit_policy,
        "ledger": gateway.ledger.backend(),
        "usage": usage,
    })))
}

// -- admin -----------------------------------------------------------------------------------

/// `POST /admin/keys` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// Who the key belongs to (the cache and the ledger are partitioned by it).
    pub owner: String,
    /// A human name.
    pub name: String,
    /// `free`, `premium` or `admin`.
    pub tier: String,
    /// Scopes instead of the tier's defaults.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Lifetime (`"90days"`); none: never expires.
    #[serde(default, with = "humantime_serde")]
    pub expires_in: Option<Duration>,
}

fn key_error(e: palisade::apikey::Error) -> Problem {
    match e {
        palisade::apikey::Error::InvalidConfig(detail) => Problem::bad_request(detail),
        palisade::apikey::Error::NotFound => {
            Problem::new(StatusCode::NOT_FOUND, "Not Found", "no such key")
        }
        e => Problem::internal("the key store", &e),
    }
}

/// `POST /admin/keys` (scope `admin`): a new key, shown once in the answer.
pub async fn create_key(
    State(gateway): Shared,
    body: Result<Json<NewKey>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), Problem> {
    let Json(new) = body?;
    if !TIERS.contains(&new.tier.as_str()) {
        return Err(Problem::bad_request(format!(
            "unknown tier `{}`; use free, premium or admin",
            new.tier
        )));
    }
    if new.owner.is_empty() || new.owner.len() > 128 || new.owner.chars().any(char::is_control) {
        return Err(Problem::bad_request(
            "`owner` must be 1 to 128 characters without control characters",
        ));
    }
    let scopes: Vec<String> = match new.scopes {
        Some(s) => s,
        None => default_scopes(&new.tier)
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    };
    let mut spec = KeySpec::new(new.owner, new.name)
        .scopes(scopes)
        .rate_limit_policy(new.tier);
    if let Some(lifetime) = new.expires_in {
        spec = spec.expires_in(lifetime);
    }
    let created = gateway.keys.create(spec).await.map_err(key_error)?;
    let mut body = serde_json::to_value(&created.record).unwrap_or_default();
    if let Some(map) = body.as_object_mut() {
        map.insert("key".to_owned(), json!(created.key.expose_secret()));
    }
    Ok((StatusCode::CREATED, Json(body)))
}

/// `GET /admin/keys?owner=…` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerQuery {
    /// The owner whose keys to list.
    pub owner: String,
}

/// `GET /admin/keys?owner=…` (scope `admin`): the owner's keys (records, never key text).
pub async fn list_keys(
    State(gateway): Shared,
    Query(query): Query<OwnerQuery>,
) -> Result<Json<serde_json::Value>, Problem> {
    let records = gateway
        .keys
        .list_by_owner(&query.owner)
        .await
        .map_err(key_error)?;
    Ok(Json(json!({ "keys": records })))
}

/// `DELETE /admin/keys/{id}` (scope `admin`): revoke a key, everywhere within the verify
/// cache's bound.
pub async fn revoke_key(
    State(gateway): Shared,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, Problem> {
    let id = id
        .parse()
        .map_err(|_| Problem::bad_request("a key id is 16 base62 characters"))?;
    let record = gateway.keys.revoke(&id).await.map_err(key_error)?;
    Ok(Json(serde_json::to_value(&record).unwrap_or_default()))
}

/// `PUT /admin/providers/{name}/fault` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    /// `none`, `fail` or `slow`.
    pub mode: FaultMode,
    /// How long a slow answer takes (`"3s"`); unchanged when absent.
    #[serde(default, with = "humantime_serde")]
    pub delay: Option<Duration>,
}

/// `PUT /admin/providers/{name}/fault` (scope `admin`): make a fake provider fail, slow
/// down or recover.
pub async fn set_fault(
    State(gateway): Shared,
    Path(name): Path<String>,
    body: Result<Json<FaultRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, Problem> {
    let Json(fault) = body?;
    let upstream = gateway
        .upstreams
        .get(&name)
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "Not Found", "no such provider"))?;
    let fake = upstream.fake.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::CONFLICT,
            "Conflict",
            "this provider is a real upstream; only the example's fake providers take faults",
        )
    })?;
    fake.control.set(fault.mode, fault.delay);
    let (mode, delay) = fake.control.get();
    tracing::info!(provider = %name, ?mode, ?delay, "fault injected");
    Ok(Json(json!({
        "provider": name,
        "mode": mode,
        "delay_ms": delay.as_millis() as u64,
    })))
}

/// `PUT /admin/breakers/{name}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct BreakerRequest {
    /// `force_open`, `close` or `reset`.
    pub action: BreakerAction,
}

/// What to do to a breaker.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerAction {
    /// Reject every call until closed.
    ForceOpen,
    /// Close (keeping the backoff history).
    Close,
    /// Forget everything.
    Reset,
}

/// `PUT /admin/breakers/{name}` (scope `admin`): open or close a provider's breaker by hand.
pub async fn set_breaker(
    State(gateway): Shared,
    Path(name): Path<String>,
    body: Result<Json<BreakerRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, Problem> {
    let Json(request) = body?;
    let upstream = gateway
        .upstreams
        .get(&name)
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "Not Found", "no such provider"))?;
    match request.action {
        BreakerAction::ForceOpen => upstream.breaker.force_open(),
        BreakerAction::Close => upstream.breaker.close(),
        BreakerAction::Reset => upstream.breaker.reset(),
    }
    Ok(Json(
        serde_json::to_value(upstream.breaker.health()).unwrap_or_default(),
    ))
}

/// `GET /admin/costs` (scope `admin`): per provider, this instance's calls, failures,
/// fallbacks, tokens and dollars; the ledger's totals (the fleet's on PostgreSQL); what the
/// cache saved.
pub async fn costs(State(gateway): Shared) -> Result<Json<serde_json::Value>, Problem> {
    let ledger = gateway
        .ledger
        .providers()
        .await
        .map_err(|e| Problem::internal("the usage ledger", &*e))?;
    let cache = gateway.cache.as_ref().map(|c| {
        let s = c.stats();
        json!({
            "exact_hits": s.exact_hits,
            "semantic_hits": s.semantic_hits,
            "misses": s.misses,
            "hit_rate": s.hit_rate(),
            "input_tokens_saved": s.input_tokens_saved,
            "output_tokens_saved": s.output_tokens_saved,
            "cost_saved": s.cost_saved,
        })
    });
    Ok(Json(json!({
        "providers": gateway.upstreams.costs(),
        "ledger": { "backend": gateway.ledger.backend(), "providers": ledger },
        "cache": cache,
    })))
}

/// `GET /admin/migrations` (scope `admin`): the schema's status and its backups.
pub async fn migrations(State(gateway): Shared) -> Result<Json<serde_json::Value>, Problem> {
    let status = gateway
        .migrator
        .status()
        .await
        .map_err(|e| Problem::internal("the migration target", &e))?;
    let backups = gateway
        .migrator
        .backups()
        .map_err(|e| Problem::internal("listing backups", &e))?;
    Ok(Json(json!({
        "status": status,
        "applied_at_start": gateway.migrated.applied,
        "backups": backups,
    })))
}

// -- health and fallback -----------------------------------------------------------------------

async fn within<T>(fut: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(HEALTH_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {} ms",
                HEALTH_TIMEOUT.as_millis()
            ))
        })
}

/// A store's health check, within [`HEALTH_TIMEOUT`]: `ok`, or the error and its sources.
async fn check<E: std::error::Error + 'static>(
    health: impl std::future::Future<Output = Result<(), E>>,
) -> Result<String, String> {
    within(async {
        health
            .await
            .map(|()| "ok".to_owned())
            .map_err(|e| error_chain(&e))
    })
    .await
}

/// An error and its sources, one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn component(name: &str, backend: &str, result: Result<String, String>) -> Component {
    match result {
        Ok(state) => Component::up(name, backend, state),
        Err(detail) => Component::down(name, backend, detail),
    }
}

/// `GET /health` (no key): every store, breaker, provider, secret provider, the schema and
/// the ledger, each with `connected`. Always 200; `status` is `degraded` when a backend is
/// down (every guard has a failure mode, so the gateway still answers).
pub async fn health(State(gateway): Shared) -> Report {
    let gateway: &Gateway = &gateway;
    let backend = gateway.backend();
    let stores = async {
        let breakers = async {
            match &gateway.breaker_store {
                Some(store) => check(store.health()).await,
                None => Ok("ok".to_owned()),
            }
        };
        let cache = async {
            match &gateway.cache {
                Some(cache) => Some(check(cache.health()).await),
                None => None,
            }
        };
        let (keys, limits, breakers, cache) = tokio::join!(
            check(gateway.keys.store().health()),
            check(gateway.limiter.limiter().health()),
            breakers,
            cache,
        );
        let mut out = vec![
            component("apikey", backend, keys),
            component("ratelimit", backend, limits),
            component("breaker_store", backend, breakers),
        ];
        if let Some(cache) = cache {
            out.push(component("cache", backend, cache));
        }
        out
    };
    let providers = futures::future::join_all(gateway.upstreams.iter().map(|u| async move {
        let result = within(u.ping(gateway.upstreams.http(), &gateway.secrets)).await;
        let state = match &u.fake {
            Some(fake) => format!("fake, fault {:?}", fake.control.get().0).to_lowercase(),
            None => "ok".to_owned(),
        };
        component(
            &format!("provider:{}", u.name),
            "http",
            result.map(|()| state),
        )
    }));
    let schema = async {
        let status =
            within(async { gateway.migrator.status().await.map_err(|e| e.to_string()) }).await;
        let state = status.map(|s| {
            let version = s
                .current_version
                .map_or("none".to_owned(), |v| format!("v{v}"));
            if s.is_up_to_date() {
                format!("{version}, up to date")
            } else {
                format!("{version}, {} pending", s.pending)
            }
        });
        vec![
            component("migrations", gateway.ledger.backend(), state),
            component(
                "usage_ledger",
                gateway.ledger.backend(),
                gateway.ledger.ping().await.map(|()| "ok".to_owned()),
            ),
        ]
    };
    let secrets = async {
        let report = gateway.secrets.health().await;
        report
            .providers
            .into_iter()
            .map(|p| {
                let result = if p.healthy {
                    Ok("ok".to_owned())
                } else {
                    Err(p.error.unwrap_or_else(|| "unhealthy".to_owned()))
                };
                component(&format!("secrets:{}", p.name), &p.name, result)
            })
            .collect::<Vec<_>>()
    };
    let (stores, providers, schema, secrets) = tokio::join!(stores, providers, schema, secrets);
    let breakers = gateway.breakers.health().into_iter().map(|h| {
        let mut c = Component::up(format!("breaker:{}", h.name), backend, h.state.as_str());
        if h.store_healthy == Some(false) {
            c.connected = false;
            c.detail = Some("its shared store did not answer the last flush".to_owned());
        }
        c
    });
    let mut components = stores;
    components.extend(breakers);
    components.extend(providers);
    components.extend(schema);
    components.extend(secrets);
    Report::new(components)
}

/// Any other path: 404 problem+json.
pub async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "Not Found", "no such route")
}
