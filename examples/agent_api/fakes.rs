//! Stand-ins for what the agent API talks to, served by the example itself over real HTTP on
//! `127.0.0.1:<free port>`, so it runs with nothing installed:
//!
//! * LLM providers speaking a small OpenAI-style chat API:
//!   `POST /providers/<name>/v1/chat/completions` (bearer key checked, `401` otherwise);
//! * a Vault KV v2 server: `GET /v1/secret/data/<path>` (`X-Vault-Token` checked) and
//!   `GET /v1/sys/health`;
//! * control routes to break them on demand: `POST /control/providers/<name>`
//!   `{"fail": true, "delay_ms": 2000}` and `POST /control/vault` `{"sealed": true}`.
//!
//! Point `VAULT_ADDR` and each provider's `url` at real services and none of this starts.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

/// One fake provider's switches and counters.
#[derive(Debug, Default)]
pub struct FakeProvider {
    /// Answer `503` to every call.
    pub fail: AtomicBool,
    /// Wait this long before answering.
    pub delay_ms: AtomicU64,
    /// Calls received.
    pub calls: AtomicU64,
    /// Calls answered `200`.
    pub served: AtomicU64,
    /// Calls refused for a wrong key.
    pub unauthorized: AtomicU64,
    /// The key it accepts.
    key: String,
}

impl FakeProvider {
    /// Make every call fail (`503`) or succeed again.
    pub fn set_failing(&self, fail: bool) {
        self.fail.store(fail, Ordering::Relaxed);
    }

    /// Answer after `delay` (zero: at once).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Calls answered `200` so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Calls received so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// The fake services of one process.
#[derive(Debug)]
pub struct FakeServices {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// The token the fake Vault accepts.
    pub vault_token: String,
    /// Whether the fake Vault answers `503 sealed` to everything.
    pub vault_sealed: Arc<AtomicBool>,
    /// Providers by name.
    pub providers: HashMap<String, Arc<FakeProvider>>,
}

impl FakeServices {
    /// The base URL of the fake provider `name`.
    pub fn provider_url(&self, name: &str) -> String {
        format!("{}/providers/{name}", self.address)
    }

    /// The fake provider `name`.
    ///
    /// # Panics
    /// When no provider of that name was started.
    pub fn provider(&self, name: &str) -> &FakeProvider {
        &self.providers[name]
    }

    /// Seal (every Vault call answers `503`, as a sealed Vault does) or unseal the fake Vault.
    pub fn set_vault_sealed(&self, sealed: bool) {
        self.vault_sealed.store(sealed, Ordering::Relaxed);
    }

    /// Start the fake services on a free port: a Vault holding `secrets` (name → value) and
    /// one provider per name in `providers`, each accepting the key stored in `secrets`
    /// under `providers/<name>/api-key`.
    ///
    /// # Errors
    /// No port could be bound.
    pub async fn start(
        secrets: BTreeMap<String, String>,
        providers: &[String],
    ) -> std::io::Result<Self> {
        let vault_token = format!("fake-vault-root-{:016x}", rand_u64());
        let providers: HashMap<String, Arc<FakeProvider>> = providers
            .iter()
            .map(|name| {
                let key = secrets
                    .get(&format!("providers/{name}/api-key"))
                    .cloned()
                    .unwrap_or_default();
                (
                    name.clone(),
                    Arc::new(FakeProvider {
                        key,
                        ..FakeProvider::default()
                    }),
                )
            })
            .collect();
        let vault_sealed = Arc::new(AtomicBool::new(false));
        let state = FakeState {
            secrets: Arc::new(secrets),
            vault_token: vault_token.clone(),
            vault_sealed: Arc::clone(&vault_sealed),
            providers: Arc::new(providers.clone()),
        };
        let router = Router::new()
            .route(
                "/providers/{name}/v1/chat/completions",
                post(chat_completion),
            )
            .route("/v1/sys/health", get(vault_health))
            .route("/v1/secret/data/{*path}", get(vault_read))
            .route("/control/providers/{name}", post(control_provider))
            .route("/control/vault", post(control_vault))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let address = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self {
            address,
            vault_token,
            vault_sealed,
            providers,
        })
    }
}

/// Demo secret values for a run without a real Vault: the fake Vault serves them and the
/// fake providers accept them. They are fixed, so a run on Redis can be restarted and still
/// verify the API keys it issued (the pepper is one of them); they are not secret, which is
/// why they only ever live here.
pub fn demo_secrets(providers: &[String]) -> BTreeMap<String, String> {
    let mut secrets = BTreeMap::new();
    for name in providers {
        secrets.insert(
            format!("providers/{name}/api-key"),
            format!("demo-{name}-provider-key"),
        );
    }
    secrets.insert(
        "apikey/pepper".to_owned(),
        "demo pepper of the agent api example, not a secret".to_owned(),
    );
    secrets
}

/// 64 random bits from the standard library's randomly seeded hasher (no extra dependency).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

#[derive(Clone)]
struct FakeState {
    secrets: Arc<BTreeMap<String, String>>,
    vault_token: String,
    vault_sealed: Arc<AtomicBool>,
    providers: Arc<HashMap<String, Arc<FakeProvider>>>,
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    max_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct ChatMessage {
    #[allow(dead_code)]
    role: String,
    content: String,
}

async fn chat_completion(
    State(state): State<FakeState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(request): Json<ChatRequest>,
) -> Response {
    let Some(provider) = state.providers.get(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    provider.calls.fetch_add(1, Ordering::Relaxed);
    let delay = provider.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if provider.key.is_empty() || presented != Some(provider.key.as_str()) {
        provider.unauthorized.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"type": "invalid_api_key"}})),
        )
            .into_response();
    }
    if provider.fail.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"type": "overloaded"}})),
        )
            .into_response();
    }
    provider.served.fetch_add(1, Ordering::Relaxed);
    let last = request
        .messages
        .last()
        .map(|m| m.content.as_str())
        .unwrap_or_default();
    let words: Vec<&str> = last.split_whitespace().take(12).collect();
    let mut text = format!(
        "[{name}] I read {} message(s). You said: {}",
        request.messages.len(),
        words.join(" ")
    );
    if let Some(max) = request.max_tokens {
        let limit = usize::try_from(max).unwrap_or(usize::MAX).max(1);
        let kept: Vec<&str> = text.split_whitespace().take(limit).collect();
        text = kept.join(" ");
    }
    let prompt_tokens: usize = request
        .messages
        .iter()
        .map(|m| m.content.split_whitespace().count())
        .sum();
    let completion_tokens = text.split_whitespace().count();
    Json(json!({
        "id": format!("cmpl-{:016x}", rand_u64()),
        "model": request.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }))
    .into_response()
}

fn vault_refusal(state: &FakeState, headers: &HeaderMap) -> Option<Response> {
    if state.vault_sealed.load(Ordering::Relaxed) {
        return Some(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"errors": ["Vault is sealed"]})),
            )
                .into_response(),
        );
    }
    let token = headers.get("x-vault-token").and_then(|v| v.to_str().ok());
    if token != Some(state.vault_token.as_str()) {
        return Some(
            (
                StatusCode::FORBIDDEN,
                Json(json!({"errors": ["permission denied"]})),
            )
                .into_response(),
        );
    }
    None
}

async fn vault_health(State(state): State<FakeState>) -> Response {
    if state.vault_sealed.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"initialized": true, "sealed": true, "standby": false})),
        )
            .into_response();
    }
    Json(json!({"initialized": true, "sealed": false, "standby": false})).into_response()
}

async fn vault_read(
    State(state): State<FakeState>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = vault_refusal(&state, &headers) {
        return refusal;
    }
    match state.secrets.get(&path) {
        Some(value) => Json(json!({"data": {
            "data": {"value": value},
            "metadata": {"version": 1, "created_time": "2026-01-01T00:00:00Z", "deletion_time": "", "destroyed": false},
        }}))
        .into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"errors": []}))).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderControl {
    #[serde(default)]
    fail: Option<bool>,
    #[serde(default)]
    delay_ms: Option<u64>,
}

async fn control_provider(
    State(state): State<FakeState>,
    Path(name): Path<String>,
    Json(control): Json<ProviderControl>,
) -> Response {
    let Some(provider) = state.providers.get(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some(fail) = control.fail {
        provider.set_failing(fail);
    }
    if let Some(ms) = control.delay_ms {
        provider.set_delay(Duration::from_millis(ms));
    }
    Json(json!({
        "provider": name,
        "fail": provider.fail.load(Ordering::Relaxed),
        "delay_ms": provider.delay_ms.load(Ordering::Relaxed),
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VaultControl {
    sealed: bool,
}

async fn control_vault(
    State(state): State<FakeState>,
    Json(control): Json<VaultControl>,
) -> Response {
    state.vault_sealed.store(control.sealed, Ordering::Relaxed);
    Json(json!({"sealed": control.sealed})).into_response()
}
