//! Upstream providers: the OpenAI-compatible wire format, the fake providers the example
//! serves itself (each on its own port, able to fail or slow down on demand), the HTTP
//! client that calls any OpenAI-compatible provider, and the router that tries them in order
//! through one circuit breaker each and keeps what each one cost.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use palisade::circuit_breaker::{CircuitBreaker, Error as BreakerError, Outcome, Registry};
use palisade::secret_store::{ExposeSecret, Secrets};
use serde::{Deserialize, Serialize};

use crate::app::settings::{FaultMode, ProviderSettings};

// -- the wire format (a subset of OpenAI's chat completions) ----------------------------------

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// `POST /v1/chat/completions`, as clients send it to the gateway and the gateway sends it
/// upstream. Fields this example does not know are ignored, as OpenAI-compatible servers do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model asked for.
    pub model: String,
    /// The conversation; the last message is the user's prompt.
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Most tokens to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Server-sent events: not supported by this example (refused with 400).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// The token counts of an answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireUsage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Both.
    pub total_tokens: u64,
}

/// One choice of an answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Its index.
    pub index: u32,
    /// The generated message.
    pub message: ChatMessage,
    /// Why generation stopped.
    pub finish_reason: String,
}

/// An upstream's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The completion's id.
    pub id: String,
    /// Always `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// The generated messages (one here).
    pub choices: Vec<Choice>,
    /// Token counts.
    pub usage: WireUsage,
}

/// A rough token count (about 4 tokens for 3 words), what the fake providers bill.
pub fn estimate_tokens(text: &str) -> u64 {
    let words = text.split_whitespace().count() as u64;
    (words * 4).div_ceil(3).max(1)
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// -- fake providers --------------------------------------------------------------------------

/// How a fake provider behaves right now; shared between its server and the gateway's admin
/// route.
#[derive(Debug)]
pub struct FaultControl {
    state: Mutex<(FaultMode, Duration)>,
    calls: AtomicU64,
}

impl FaultControl {
    fn new(mode: FaultMode, delay: Duration) -> Self {
        Self {
            state: Mutex::new((mode, delay)),
            calls: AtomicU64::new(0),
        }
    }

    /// Switch the behaviour (`delay` is kept when `None`).
    pub fn set(&self, mode: FaultMode, delay: Option<Duration>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = mode;
        if let Some(d) = delay {
            state.1 = d;
        }
    }

    /// The behaviour and the `slow` delay.
    pub fn get(&self) -> (FaultMode, Duration) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Completion requests received (answered or not).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// A fake OpenAI-compatible provider served by this process on its own port. It checks the
/// bearer key against the secret `providers/<name>/api-key` from the same secret store the
/// gateway reads, so a wrong or missing key is a 401 as it would be upstream.
#[derive(Debug)]
pub struct FakeProvider {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its behaviour.
    pub control: Arc<FaultControl>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct FakeState {
    name: Arc<str>,
    secrets: Secrets,
    secret: Arc<str>,
    control: Arc<FaultControl>,
}

impl FakeProvider {
    /// Serve a fake provider called `name` on 127.0.0.1:`port` (0: any free port).
    ///
    /// # Errors
    /// The port cannot be bound.
    pub async fn serve(
        name: &str,
        port: u16,
        secrets: Secrets,
        mode: FaultMode,
        delay: Duration,
    ) -> std::io::Result<Self> {
        let control = Arc::new(FaultControl::new(mode, delay));
        let state = FakeState {
            name: Arc::from(name),
            secrets,
            secret: Arc::from(secret_name(name)),
            control: Arc::clone(&control),
        };
        let router = Router::new()
            .route("/v1/chat/completions", post(fake_completion))
            .route("/v1/models", get(fake_models))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "fake provider stopped");
            }
        });
        Ok(Self {
            addr,
            control,
            task,
        })
    }

    /// Its base URL (`http://127.0.0.1:PORT`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The secret holding a provider's API key.
pub fn secret_name(provider: &str) -> String {
    format!("providers/{provider}/api-key")
}

async fn authorized(state: &FakeState, headers: &HeaderMap) -> bool {
    let Ok(expected) = state.secrets.get(&state.secret).await else {
        return false;
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // A fake: a real provider compares in constant time on its side.
    presented == Some(expected.expose_secret())
}

fn upstream_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "message": message, "type": "upstream_error" } });
    (status, Json(body)).into_response()
}

async fn fake_models(State(state): State<FakeState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers).await {
        return upstream_error(StatusCode::UNAUTHORIZED, "invalid api key");
    }
    match state.control.get().0 {
        FaultMode::Fail => upstream_error(StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        _ => Json(serde_json::json!({ "object": "list", "data": [] })).into_response(),
    }
}

async fn fake_completion(
    State(state): State<FakeState>,
    headers: HeaderMap,
    Json(request): Json<ChatRequest>,
) -> Response {
    let n = state.control.calls.fetch_add(1, Ordering::Relaxed) + 1;
    if !authorized(&state, &headers).await {
        return upstream_error(StatusCode::UNAUTHORIZED, "invalid api key");
    }
    let (mode, delay) = state.control.get();
    match mode {
        FaultMode::Fail => {
            return upstream_error(StatusCode::SERVICE_UNAVAILABLE, "overloaded, try later");
        }
        FaultMode::Slow => tokio::time::sleep(delay).await,
        FaultMode::None => {}
    }
    let Some(last) = request.messages.last() else {
        return upstream_error(StatusCode::BAD_REQUEST, "messages is empty");
    };
    let content = format!(
        "[{}] A short answer to \"{}\".",
        state.name,
        last.content.trim()
    );
    let prompt_tokens: u64 = request
        .messages
        .iter()
        .map(|m| estimate_tokens(&m.content))
        .sum();
    let completion_tokens = estimate_tokens(&content);
    Json(ChatResponse {
        id: format!("chatcmpl-{}-{n}", state.name),
        object: "chat.completion".to_owned(),
        created: unix_seconds(),
        model: request.model,
        choices: vec![Choice {
            index: 0,
            message: ChatMessage {
                role: "assistant".to_owned(),
                content,
            },
            finish_reason: "stop".to_owned(),
        }],
        usage: WireUsage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        },
    })
    .into_response()
}

// -- the client side -------------------------------------------------------------------------

/// Why one upstream call failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// The upstream answered with an error status.
    Status(StatusCode),
    /// The request did not get an answer (connection refused, reset, client timeout).
    Transport(reqwest::Error),
    /// The answer was not a chat completion.
    Unreadable(reqwest::Error),
    /// The provider's API key could not be loaded.
    Secret(palisade::secret_store::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(s) => write!(f, "upstream answered {}", s.as_u16()),
            Self::Transport(_) => f.write_str("upstream unreachable"),
            Self::Unreadable(_) => f.write_str("upstream answer unreadable"),
            Self::Secret(_) => f.write_str("provider key unavailable"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Status(_) => None,
            Self::Transport(e) | Self::Unreadable(e) => Some(e),
            Self::Secret(e) => Some(e),
        }
    }
}

impl UpstreamError {
    /// A request the upstream refused as malformed: the caller's problem, not the
    /// provider's (the breaker ignores it, and no other provider is tried).
    pub fn is_client_error(&self) -> bool {
        matches!(self, Self::Status(s) if s.is_client_error()
            && !matches!(*s, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                | StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS))
    }
}

/// Price of a provider, in dollars per token.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Pricing {
    /// One prompt token.
    pub input_per_token: f64,
    /// One completion token.
    pub output_per_token: f64,
}

impl Pricing {
    /// What `usage` costs, in dollars.
    pub fn cost(&self, usage: WireUsage) -> f64 {
        usage.prompt_tokens as f64 * self.input_per_token
            + usage.completion_tokens as f64 * self.output_per_token
    }
}

/// Calls and money spent on one provider since start (this instance).
#[derive(Debug, Default)]
struct Counters {
    successes: AtomicU64,
    failures: AtomicU64,
    timeouts: AtomicU64,
    rejected: AtomicU64,
    client_errors: AtomicU64,
    fallbacks: AtomicU64,
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
    /// Dollars, summed exactly (the metric counts whole millionths of this sum).
    cost: Mutex<f64>,
}

/// One provider's figures, as `/admin/costs` shows them.
#[derive(Clone, Debug, Serialize)]
pub struct ProviderCosts {
    /// The provider.
    pub provider: String,
    /// Calls answered.
    pub successes: u64,
    /// Calls that failed (error status, unreachable, unreadable).
    pub failures: u64,
    /// Calls cut off by the breaker's timeout.
    pub timeouts: u64,
    /// Calls the open breaker refused without sending them.
    pub rejected: u64,
    /// Requests refused upstream as malformed.
    pub client_errors: u64,
    /// Answers this provider gave after an earlier provider failed.
    pub fallbacks: u64,
    /// Prompt tokens billed.
    pub input_tokens: u64,
    /// Completion tokens billed.
    pub output_tokens: u64,
    /// Dollars spent.
    pub cost: f64,
    /// The breaker's state.
    pub breaker: String,
}

/// One upstream provider behind its breaker.
#[derive(Debug)]
pub struct Upstream {
    /// The provider's name.
    pub name: String,
    /// Its base URL.
    pub base_url: String,
    /// Its price.
    pub pricing: Pricing,
    /// Its breaker.
    pub breaker: CircuitBreaker,
    /// The fake server, when the example serves this provider itself.
    pub fake: Option<FakeProvider>,
    secret: String,
    timeout: Duration,
    counters: Counters,
}

impl Upstream {
    async fn send(
        &self,
        http: &reqwest::Client,
        secrets: &Secrets,
        request: &ChatRequest,
    ) -> Result<ChatResponse, UpstreamError> {
        let key = secrets
            .get(&self.secret)
            .await
            .map_err(UpstreamError::Secret)?;
        let response = http
            .post(format!("{}/v1/chat/completions", self.base_url))
            .bearer_auth(key.expose_secret())
            .timeout(self.timeout)
            .json(request)
            .send()
            .await
            .map_err(UpstreamError::Transport)?;
        let status = response.status();
        if !status.is_success() {
            return Err(UpstreamError::Status(
                StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
            ));
        }
        response
            .json::<ChatResponse>()
            .await
            .map_err(UpstreamError::Unreadable)
    }

    /// Whether the provider answers right now (`GET /v1/models` with its key), within one
    /// second.
    pub async fn ping(&self, http: &reqwest::Client, secrets: &Secrets) -> Result<(), String> {
        let key = secrets
            .get(&self.secret)
            .await
            .map_err(|e| format!("provider key unavailable: {e}"))?;
        let response = http
            .get(format!("{}/v1/models", self.base_url))
            .bearer_auth(key.expose_secret())
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .map_err(|_| "unreachable".to_owned())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", response.status().as_u16()))
        }
    }

    fn costs(&self) -> ProviderCosts {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProviderCosts {
            provider: self.name.clone(),
            successes: load(&c.successes),
            failures: load(&c.failures),
            timeouts: load(&c.timeouts),
            rejected: load(&c.rejected),
            client_errors: load(&c.client_errors),
            fallbacks: load(&c.fallbacks),
            input_tokens: load(&c.input_tokens),
            output_tokens: load(&c.output_tokens),
            cost: *c.cost.lock().unwrap_or_else(PoisonError::into_inner),
            breaker: self.breaker.state().as_str().to_owned(),
        }
    }

    fn count(&self, outcome: &'static str) {
        let c = &self.counters;
        let counter = match outcome {
            "success" => &c.successes,
            "timeout" => &c.timeouts,
            "rejected" => &c.rejected,
            "client_error" => &c.client_errors,
            _ => &c.failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ai_gateway_provider_calls_total", "provider" => self.name.clone(), "outcome" => outcome)
            .increment(1);
    }

    fn bill(&self, usage: WireUsage, cost: f64, fallback: bool) {
        let c = &self.counters;
        c.input_tokens
            .fetch_add(usage.prompt_tokens, Ordering::Relaxed);
        c.output_tokens
            .fetch_add(usage.completion_tokens, Ordering::Relaxed);
        // The counter counts whole millionths of the running sum, so fractions of a
        // millionth are carried to the next call instead of being rounded away per call.
        let micros = {
            let mut total = c.cost.lock().unwrap_or_else(PoisonError::into_inner);
            let before = (*total * 1e6).floor();
            *total += cost.max(0.0);
            ((*total * 1e6).floor() - before) as u64
        };
        let name = self.name.clone();
        metrics::counter!("ai_gateway_provider_tokens_total", "provider" => name.clone(), "kind" => "input")
            .increment(usage.prompt_tokens);
        metrics::counter!("ai_gateway_provider_tokens_total", "provider" => name.clone(), "kind" => "output")
            .increment(usage.completion_tokens);
        metrics::counter!("ai_gateway_provider_cost_micros_total", "provider" => name.clone())
            .increment(micros);
        if fallback {
            c.fallbacks.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("ai_gateway_fallbacks_total", "provider" => name).increment(1);
        }
    }
}

/// One provider that was tried and did not answer.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    /// The provider.
    pub provider: String,
    /// Why (`rejected by open breaker`, `timed out`, `upstream answered 503 …`).
    pub error: String,
}

/// An answer and who gave it.
#[derive(Clone, Debug)]
pub struct Answered {
    /// The upstream's answer.
    pub response: ChatResponse,
    /// The provider that answered.
    pub provider: String,
    /// What it cost, in dollars.
    pub cost: f64,
    /// Providers tried before it.
    pub failed: Vec<Attempt>,
}

/// Why no provider answered.
#[derive(Debug)]
pub enum RouteError {
    /// An upstream refused the request as malformed (no other provider is tried).
    BadRequest(String),
    /// Every provider failed or was refused by its breaker.
    AllFailed(Vec<Attempt>),
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadRequest(e) => write!(f, "the provider refused the request: {e}"),
            Self::AllFailed(attempts) => {
                f.write_str("no provider answered:")?;
                for a in attempts {
                    write!(f, " {} ({});", a.provider, a.error)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for RouteError {}

/// The providers in the order they are tried, each behind its breaker.
#[derive(Debug)]
pub struct Upstreams {
    http: reqwest::Client,
    secrets: Secrets,
    list: Vec<Upstream>,
}

impl Upstreams {
    /// Set up `providers` (serving the fake ones), with breakers from `registry`.
    ///
    /// # Errors
    /// A fake provider's port cannot be bound, a breaker cannot be built, no provider is
    /// configured.
    pub async fn start(
        providers: &[ProviderSettings],
        registry: &Registry,
        secrets: Secrets,
    ) -> Result<Self, crate::app::BoxError> {
        if providers.is_empty() {
            return Err("at least one provider must be configured".into());
        }
        let mut list = Vec::with_capacity(providers.len());
        for p in providers {
            let (base_url, fake) = match &p.base_url {
                Some(url) => (url.trim_end_matches('/').to_owned(), None),
                None => {
                    let fake = FakeProvider::serve(
                        &p.name,
                        p.fake_port,
                        secrets.clone(),
                        p.fault,
                        p.slow_delay,
                    )
                    .await?;
                    tracing::info!(provider = %p.name, addr = %fake.addr, "serving a fake provider");
                    (fake.base_url(), Some(fake))
                }
            };
            list.push(Upstream {
                name: p.name.clone(),
                base_url,
                pricing: Pricing {
                    input_per_token: p.input_per_million / 1e6,
                    output_per_token: p.output_per_million / 1e6,
                },
                breaker: registry.get(&p.name)?,
                fake,
                secret: secret_name(&p.name),
                timeout: p.request_timeout,
                counters: Counters::default(),
            });
        }
        Ok(Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            secrets,
            list,
        })
    }

    /// Every provider, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Upstream> {
        self.list.iter()
    }

    /// The provider called `name`.
    pub fn get(&self, name: &str) -> Option<&Upstream> {
        self.list.iter().find(|u| u.name == name)
    }

    /// The HTTP client (for health checks).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The secret store the provider keys come from.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Each provider's calls, tokens and cost since start.
    pub fn costs(&self) -> Vec<ProviderCosts> {
        self.list.iter().map(Upstream::costs).collect()
    }

    /// Send `request` to the first provider whose breaker admits it and that answers; the
    /// next one on a failure, a timeout or a rejection.
    ///
    /// # Errors
    /// [`RouteError`]: the request is malformed, or no provider answered.
    pub async fn complete(&self, request: &ChatRequest) -> Result<Answered, RouteError> {
        let mut failed = Vec::new();
        for upstream in &self.list {
            let call = upstream.send(&self.http, &self.secrets, request);
            let result = upstream
                .breaker
                .call_classified(call, |r: &Result<ChatResponse, UpstreamError>| match r {
                    Ok(_) => Outcome::Success,
                    Err(e) if e.is_client_error() => Outcome::Ignored,
                    Err(_) => Outcome::Failure,
                })
                .await;
            let error = match result {
                Ok(response) => {
                    upstream.count("success");
                    let cost = upstream.pricing.cost(response.usage);
                    upstream.bill(response.usage, cost, !failed.is_empty());
                    return Ok(Answered {
                        response,
                        provider: upstream.name.clone(),
                        cost,
                        failed,
                    });
                }
                Err(BreakerError::Inner(e)) if e.is_client_error() => {
                    upstream.count("client_error");
                    return Err(RouteError::BadRequest(e.to_string()));
                }
                Err(BreakerError::Inner(e)) => {
                    upstream.count("failure");
                    e.to_string()
                }
                Err(BreakerError::Rejected { retry_after, .. }) => {
                    upstream.count("rejected");
                    format!(
                        "breaker open, retry in {} s",
                        retry_after.as_secs_f64().ceil()
                    )
                }
                Err(BreakerError::Timeout(d)) => {
                    upstream.count("timeout");
                    format!("timed out after {} ms", d.as_millis())
                }
                Err(other) => {
                    upstream.count("failure");
                    other.to_string()
                }
            };
            tracing::warn!(provider = %upstream.name, error = %error, "provider failed; trying the next one");
            failed.push(Attempt {
                provider: upstream.name.clone(),
                error,
            });
        }
        Err(RouteError::AllFailed(failed))
    }
}

/// Prompt tokens, completion tokens and dollars, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Dollars.
    pub cost: f64,
}

/// Per provider name.
pub type ByProvider = BTreeMap<String, Totals>;
