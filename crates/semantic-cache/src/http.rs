//! An embedder for OpenAI-compatible `/embeddings` endpoints (feature `http`).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::embed::{Embedder, check_vector, normalize};
use crate::error::{Error, Result};

/// Settings of an [`HttpEmbedder`].
///
/// Read from a file, `timeout` is a humantime duration (`"10s"`); unknown fields are refused.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HttpEmbedderConfig {
    /// Base URL of the API, without the `/embeddings` suffix
    /// (`https://api.openai.com/v1`, `http://localhost:11434/v1`, …).
    pub base_url: String,
    /// Embedding model name (`text-embedding-3-small`).
    pub model: String,
    /// Vector length the model returns; also sent as `dimensions` when `send_dimensions` is set.
    pub dimension: usize,
    /// Bearer token, if the service needs one. Never printed by `Debug`.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Whether to send `dimensions` in the request (models that can shorten their vectors).
    #[serde(default)]
    pub send_dimensions: bool,
    /// Timeout of one request (default 10 s).
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl fmt::Debug for HttpEmbedderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEmbedderConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("dimension", &self.dimension)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("send_dimensions", &self.send_dimensions)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HttpEmbedderConfig {
    /// Settings for `model` at `base_url` returning `dimension`-long vectors, no API key.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>, dimension: usize) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            dimension,
            api_key: None,
            send_dimensions: false,
            timeout: default_timeout(),
        }
    }

    /// The same settings with a bearer token.
    #[must_use]
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    setters! {
        plain { send_dimensions: bool, timeout: Duration }
    }
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    input: &'a [&'a str],
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<usize>,
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Datum>,
}

#[derive(Deserialize)]
struct Datum {
    embedding: Vec<f32>,
    #[serde(default)]
    index: usize,
}

/// Embeddings from an OpenAI-compatible HTTP service: one `POST {base_url}/embeddings` per
/// batch. Vectors are checked (count, dimension, finite) and normalised to unit length.
#[derive(Clone)]
pub struct HttpEmbedder {
    client: reqwest::Client,
    config: HttpEmbedderConfig,
    url: String,
    version: String,
}

impl fmt::Debug for HttpEmbedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEmbedder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl HttpEmbedder {
    /// An embedder with these settings.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an empty URL or model or a zero dimension,
    /// [`Error::Embedder`] when the HTTP client cannot be built.
    pub fn new(config: HttpEmbedderConfig) -> Result<Self> {
        if config.base_url.is_empty() || config.model.is_empty() || config.dimension == 0 {
            return Err(Error::InvalidConfig(
                "base_url, model and dimension must be set".into(),
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| Error::Embedder(Box::new(e)))?;
        let url = format!("{}/embeddings", config.base_url.trim_end_matches('/'));
        let version = format!("http-{}-d{}", config.model, config.dimension);
        Ok(Self {
            client,
            config,
            url,
            version,
        })
    }
}

#[async_trait]
impl Embedder for HttpEmbedder {
    fn dimension(&self) -> usize {
        self.config.dimension
    }

    fn version(&self) -> &str {
        &self.version
    }

    async fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let body = Request {
            model: &self.config.model,
            input: texts,
            dimensions: self.config.send_dimensions.then_some(self.config.dimension),
        };
        let mut request = self.client.post(&self.url).json(&body);
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Error::Embedder(Box::new(e)))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let snippet: String = text.chars().take(200).collect();
            return Err(Error::Embedder(
                format!("embedding service answered {status}: {snippet}").into(),
            ));
        }
        let mut parsed: Response = response
            .json()
            .await
            .map_err(|e| Error::Embedder(Box::new(e)))?;
        if parsed.data.len() != texts.len() {
            return Err(Error::Embedder(
                format!(
                    "asked for {} vectors, got {}",
                    texts.len(),
                    parsed.data.len()
                )
                .into(),
            ));
        }
        parsed.data.sort_by_key(|d| d.index);
        let mut out = Vec::with_capacity(parsed.data.len());
        for datum in parsed.data {
            let mut v = datum.embedding;
            check_vector(&v, self.config.dimension)?;
            normalize(&mut v);
            out.push(v);
        }
        Ok(out)
    }
}
