//! LLM providers and the cached wrapper around them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
/// The boxed future a [`CallGuard`] takes and returns (`futures`' own), re-exported so that
/// a guard can be written without depending on `futures`.
pub use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::cache::{Computed, SemanticCache, Source};
use crate::entry::Usage;
use crate::error::{BoxError, Error, Result};
use crate::key::{CacheKey, ContextHasher, Partition, Tag};

/// Price per token of a model, in the provider's currency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Pricing {
    /// Price of one prompt token.
    pub input_per_token: f64,
    /// Price of one completion token.
    pub output_per_token: f64,
}

impl Pricing {
    /// The price of one prompt token and of one completion token.
    pub fn new(input_per_token: f64, output_per_token: f64) -> Self {
        Self {
            input_per_token,
            output_per_token,
        }
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Message {
    /// `"user"`, `"assistant"`, `"tool"`, …
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message from `role` (`"user"`, `"assistant"`, …) saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A completion request. Everything but `prompt` (and `tags`) is part of the exact key:
/// a cached answer is only served for the same system prompt, history, tools and parameters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct CompletionRequest {
    /// The system prompt.
    pub system: Option<String>,
    /// The conversation before the prompt.
    pub history: Vec<Message>,
    /// The user's prompt: the part compared by meaning.
    pub prompt: String,
    /// Tool definitions, as text (JSON schemas).
    pub tools: Vec<String>,
    /// Generation parameters (`temperature`, `max_tokens`, …).
    pub params: BTreeMap<String, String>,
    /// Tags put on the cached answer (`user:42`), for invalidation.
    pub tags: Vec<Tag>,
}

impl CompletionRequest {
    /// A request with only a prompt.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            ..Self::default()
        }
    }

    setters! {
        plain {
            history: Vec<Message>,
            tools: Vec<String>,
            params: BTreeMap<String, String>,
            tags: Vec<Tag>,
        }
        optional { system: String }
    }

    /// The digest of everything that must match exactly.
    pub fn context_hash(&self) -> crate::key::ContextHash {
        let mut h = ContextHasher::new();
        if let Some(system) = &self.system {
            h = h.system(system);
        }
        for m in &self.history {
            h = h.message(&m.role, &m.content);
        }
        for t in &self.tools {
            h = h.tool(t);
        }
        for (k, v) in &self.params {
            h = h.param(k, v);
        }
        h.finish()
    }
}

/// A provider's answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Completion {
    /// The generated text.
    pub text: String,
    /// Prompt tokens billed.
    pub input_tokens: u64,
    /// Completion tokens billed.
    pub output_tokens: u64,
}

impl Completion {
    /// Generated `text` and the tokens billed for it.
    pub fn new(text: impl Into<String>, input_tokens: u64, output_tokens: u64) -> Self {
        Self {
            text: text.into(),
            input_tokens,
            output_tokens,
        }
    }
}

/// An LLM provider: completions, embeddings, the model's name and its price.
///
/// Object safe through `async-trait`, so a service can hold `Arc<dyn LlmProvider>`; errors
/// are boxed because every provider SDK has its own.
#[async_trait]
pub trait LlmProvider: Send + Sync + fmt::Debug {
    /// The model name; part of every cache key.
    fn model(&self) -> &str;

    /// Price per token.
    fn pricing(&self) -> Pricing;

    /// Run one completion.
    ///
    /// # Errors
    /// Whatever the provider reports.
    async fn complete(&self, request: &CompletionRequest) -> Result<Completion, BoxError>;

    /// Embed texts with the provider's embedding model (not every provider has one).
    ///
    /// # Errors
    /// Whatever the provider reports; the default says embeddings are not supported.
    async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, BoxError> {
        let _ = texts;
        Err("this provider has no embedding model".into())
    }
}

/// A hook around each provider call, for a circuit breaker, a retry policy or a rate
/// limiter the user already has, without this crate depending on one. Any
/// `Fn(BoxFuture) -> BoxFuture` closure is a `CallGuard`.
///
/// ```
/// use palisade_semantic_cache::{BoxError, BoxFuture, CallGuard, Completion};
/// // A guard that refuses every call, as an open circuit breaker would.
/// let open = |_call: BoxFuture<'static, Result<Completion, BoxError>>| -> BoxFuture<'static, Result<Completion, BoxError>> {
///     Box::pin(async { Err::<Completion, BoxError>("circuit open".into()) })
/// };
/// fn takes(_: impl CallGuard) {}
/// takes(open);
/// ```
pub trait CallGuard: Send + Sync {
    /// Run (or refuse) the call.
    fn guard(
        &self,
        call: BoxFuture<'static, Result<Completion, BoxError>>,
    ) -> BoxFuture<'static, Result<Completion, BoxError>>;
}

impl<F> CallGuard for F
where
    F: Fn(
            BoxFuture<'static, Result<Completion, BoxError>>,
        ) -> BoxFuture<'static, Result<Completion, BoxError>>
        + Send
        + Sync,
{
    fn guard(
        &self,
        call: BoxFuture<'static, Result<Completion, BoxError>>,
    ) -> BoxFuture<'static, Result<Completion, BoxError>> {
        self(call)
    }
}

/// The answer of a [`CachedProvider`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct CachedCompletion {
    /// The text.
    pub text: String,
    /// What the call that produced it cost (saved, when it came from the cache).
    pub usage: Usage,
    /// Cache hit, fresh call, or joined another caller's call.
    pub source: Source,
}

/// An [`LlmProvider`] behind a [`SemanticCache`]: cache hits skip the provider, identical
/// concurrent prompts share one call, and every call's tokens and cost are recorded.
pub struct CachedProvider<P> {
    provider: Arc<P>,
    cache: SemanticCache,
    call_guard: Option<Arc<dyn CallGuard>>,
    spent: Mutex<Usage>,
}

impl<P: fmt::Debug> fmt::Debug for CachedProvider<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedProvider")
            .field("provider", &self.provider)
            .field("cache", &self.cache)
            .field("call_guard", &self.call_guard.is_some())
            .finish_non_exhaustive()
    }
}

impl<P: LlmProvider + 'static> CachedProvider<P> {
    /// Wrap `provider` with `cache`.
    pub fn new(provider: P, cache: SemanticCache) -> Self {
        Self {
            provider: Arc::new(provider),
            cache,
            call_guard: None,
            spent: Mutex::new(Usage::default()),
        }
    }

    /// Run every provider call through `guard` (a circuit breaker, for example).
    #[must_use]
    pub fn with_call_guard(mut self, guard: impl CallGuard + 'static) -> Self {
        self.call_guard = Some(Arc::new(guard));
        self
    }

    /// The wrapped provider.
    pub fn provider(&self) -> &P {
        &self.provider
    }

    /// The cache.
    pub fn cache(&self) -> &SemanticCache {
        &self.cache
    }

    /// Tokens and money actually spent on provider calls through this wrapper.
    pub fn spent(&self) -> Usage {
        *self.spent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answer `request` for `partition`, from the cache when possible.
    ///
    /// # Errors
    /// [`Error::Provider`] when the provider (or the call guard) fails, bad prompt,
    /// embedder and backend errors.
    pub async fn complete(
        &self,
        partition: &Partition,
        request: &CompletionRequest,
    ) -> Result<CachedCompletion> {
        let key = CacheKey::in_partition(
            partition.clone(),
            self.provider.model(),
            request.prompt.clone(),
        )?
        .with_context(request.context_hash());
        let served = self
            .cache
            .get_or_compute(&key, || async {
                let provider = Arc::clone(&self.provider);
                let owned = request.clone();
                let call: BoxFuture<'static, Result<Completion, BoxError>> =
                    Box::pin(async move { provider.complete(&owned).await });
                let completion = match &self.call_guard {
                    Some(guard) => guard.guard(call).await?,
                    None => call.await?,
                };
                let usage = Usage::priced(
                    completion.input_tokens,
                    completion.output_tokens,
                    self.provider.pricing(),
                );
                {
                    let mut spent = self.spent.lock().unwrap_or_else(PoisonError::into_inner);
                    *spent = spent.plus(usage);
                }
                Ok::<_, BoxError>(Computed {
                    response: completion.text.into_bytes(),
                    usage,
                    tags: request.tags.clone(),
                })
            })
            .await?;
        let text = String::from_utf8(served.entry.response.clone())
            .map_err(|e| Error::Provider(Box::new(e)))?;
        Ok(CachedCompletion {
            text,
            usage: served.entry.usage,
            source: served.source,
        })
    }

    /// Answer several requests concurrently; one result per request, in order.
    pub async fn complete_batch(
        &self,
        partition: &Partition,
        requests: &[CompletionRequest],
    ) -> Vec<Result<CachedCompletion>> {
        futures::future::join_all(requests.iter().map(|r| self.complete(partition, r))).await
    }
}

/// An [`Embedder`](crate::Embedder) backed by an [`LlmProvider`]'s embedding model (for
/// example an OpenAI-compatible service), so the cache can use the provider's vectors.
///
/// Vectors are checked (dimension, finite) and normalised to unit length.
#[derive(Debug)]
pub struct ProviderEmbedder<P> {
    provider: Arc<P>,
    dimension: usize,
    version: String,
}

impl<P: LlmProvider> ProviderEmbedder<P> {
    /// Use `provider.embed`, whose vectors have `dimension` components; `version` names the
    /// embedding model (change it when the model changes).
    pub fn new(provider: Arc<P>, dimension: usize, version: impl Into<String>) -> Self {
        Self {
            provider,
            dimension,
            version: version.into(),
        }
    }
}

#[async_trait]
impl<P: LlmProvider> crate::Embedder for ProviderEmbedder<P> {
    fn dimension(&self) -> usize {
        self.dimension
    }

    fn version(&self) -> &str {
        &self.version
    }

    async fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut vectors = self.provider.embed(texts).await.map_err(Error::Embedder)?;
        if vectors.len() != texts.len() {
            return Err(Error::Embedder(
                format!("asked for {} vectors, got {}", texts.len(), vectors.len()).into(),
            ));
        }
        for v in &mut vectors {
            crate::embed::check_vector(v, self.dimension)?;
            crate::embed::normalize(v);
        }
        Ok(vectors)
    }
}
