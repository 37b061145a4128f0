//! Embedders turn prompts into unit vectors whose cosine similarity says how close two
//! prompts are in meaning.

use std::fmt;

use async_trait::async_trait;
use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};

/// A second, lexical signal beside the model: a candidate whose model similarity is under
/// the namespace's threshold by at most [`margin`](Self::margin) is still served when the
/// two normalised prompts' similarity under the built-in [`HashingEmbedder`] (default
/// settings: words, word pairs and character n-grams) is at least
/// [`lexical`](Self::lexical) — a near-repeat (a typo, other punctuation, a word more or
/// less) that the model happens to place a little further away. The guard judges such a
/// candidate exactly as any other.
///
/// The window moves with the threshold: a namespace with a stricter policy, or whose
/// threshold [`feedback`](crate::SemanticCache::feedback) raised, looks that much higher.
/// Cost: one hashing embedding of the query (only when a candidate falls in the window) and
/// one of each such candidate's prompt, a few microseconds each; nothing on the exact-hit
/// path.
///
/// ```
/// use palisade_semantic_cache::LexicalFloor;
/// let floor = LexicalFloor::new(0.90, 0.10)?;
/// assert_eq!((floor.lexical, floor.margin), (0.90, 0.10));
/// assert!(LexicalFloor::new(f32::NAN, 0.10).is_err());
/// # Ok::<(), palisade_semantic_cache::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LexicalFloor {
    /// Lowest hashing-embedder cosine of the two normalised prompts.
    pub lexical: f32,
    /// How far under the threshold the model's similarity may be.
    pub margin: f32,
}

impl LexicalFloor {
    /// A floor; see the type's docs.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] unless `lexical` is within `0..=1` and `margin` within
    /// `0..=2`.
    pub fn new(lexical: f32, margin: f32) -> Result<Self> {
        let floor = Self { lexical, margin };
        floor.check()?;
        Ok(floor)
    }

    pub(crate) fn check(&self) -> Result<()> {
        if (0.0..=1.0).contains(&self.lexical) && (0.0..=2.0).contains(&self.margin) {
            Ok(())
        } else {
            Err(Error::InvalidConfig(
                "a lexical floor needs lexical within 0..=1 and margin within 0..=2".into(),
            ))
        }
    }

    /// Whether a candidate of model similarity `similarity` and lexical similarity
    /// `lexical`, under `threshold`, is served (the guard aside).
    pub fn admits(&self, threshold: f32, similarity: f32, lexical: f32) -> bool {
        similarity >= threshold - self.margin && lexical >= self.lexical
    }
}

/// Turns texts into vectors of one fixed dimension, normalised to unit length, so that a
/// dot product is the cosine similarity.
///
/// The trait is object safe (`Arc<dyn Embedder>`) through `async-trait`: the cache stores
/// one embedder chosen at run time, and the boxed future costs nothing next to an
/// embedding. [`version`](Self::version) names the model and its settings: vectors made
/// by another version are never compared with this one's.
#[async_trait]
pub trait Embedder: Send + Sync + fmt::Debug {
    /// Length of every vector this embedder returns.
    fn dimension(&self) -> usize;

    /// Names the model and settings (`"hashing-v1-384"`); change it whenever vectors change.
    fn version(&self) -> &str;

    /// Embed a batch of texts, one vector per text, in order.
    ///
    /// # Errors
    /// [`Error::Embedder`] when the model or service fails.
    async fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;

    /// The similarity threshold this embedder should be used with (the guard on), as
    /// measured on the crate's held-out quality set. The cache builder applies it to the
    /// default namespace policy unless a threshold is set explicitly. The provided value is
    /// [`DEFAULT_THRESHOLD`](crate::DEFAULT_THRESHOLD); an embedder that knows better
    /// overrides it.
    fn recommended_threshold(&self) -> f32 {
        crate::cache::DEFAULT_THRESHOLD
    }

    /// The lowest similarity of two differing spans for the guard to take one for the other
    /// (`update` for `change`, not `adults` for `children`); see
    /// [`GuardConfig::substitutions`](crate::guard::GuardConfig::substitutions). The provided
    /// value, 1.0, vetoes every substitution: right for an embedder that cannot tell
    /// synonyms apart.
    fn recommended_span_similarity(&self) -> f32 {
        1.0
    }

    /// The second, lexical way to a semantic hit this embedder should be used with (see
    /// [`LexicalFloor`]); the cache builder applies it unless
    /// [`lexical_floor`](crate::SemanticCacheBuilder::lexical_floor) is set explicitly. The
    /// provided value is `None`: no second signal (right for the built-in
    /// [`HashingEmbedder`], which is that signal already).
    fn recommended_lexical_floor(&self) -> Option<LexicalFloor> {
        None
    }

    /// Cosine similarity of two short spans: the words two prompts do not share (`adults` /
    /// `children`), which the guard's substitution check compares with
    /// [`recommended_span_similarity`](Self::recommended_span_similarity). The provided
    /// method embeds both spans with [`embed_batch`](Self::embed_batch); an embedder with
    /// a cheaper word-level view overrides it (MiniLM averages its own word-piece vectors
    /// instead of running the model a second time).
    ///
    /// # Errors
    /// As [`embed_batch`](Self::embed_batch), and [`Error::Embedder`] when it returns the
    /// wrong number of vectors.
    async fn span_similarity(&self, a: &str, b: &str) -> Result<f32> {
        let vectors = self.embed_batch(&[a, b]).await?;
        match vectors.as_slice() {
            [x, y] if x.len() == y.len() => Ok(crate::index::dot(x, y)),
            _ => Err(Error::Embedder(
                "the embedder returned the wrong number of vectors".into(),
            )),
        }
    }

    /// Embed one text.
    ///
    /// # Errors
    /// As [`embed_batch`](Self::embed_batch).
    async fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let mut out = self.embed_batch(&[text]).await?;
        out.pop()
            .ok_or_else(|| Error::Embedder("the embedder returned no vector".into()))
    }
}

/// Check that `vector` has `dimension` finite components and is not all zeros.
///
/// # Errors
/// [`Error::DimensionMismatch`], [`Error::NonFiniteVector`] or [`Error::ZeroVector`].
pub fn check_vector(vector: &[f32], dimension: usize) -> Result<()> {
    if vector.len() != dimension {
        return Err(Error::DimensionMismatch {
            expected: dimension,
            actual: vector.len(),
        });
    }
    if vector.iter().any(|x| !x.is_finite()) {
        return Err(Error::NonFiniteVector);
    }
    if vector.iter().all(|&x| x == 0.0) {
        return Err(Error::ZeroVector);
    }
    Ok(())
}

/// Scale `vector` to unit length in place (a zero vector is left alone).
pub fn normalize(vector: &mut [f32]) {
    let norm = crate::index::dot(vector, vector).sqrt();
    if norm > 0.0 && norm.is_finite() {
        for x in vector.iter_mut() {
            *x /= norm;
        }
    }
}

/// Words too common to say much about meaning; they still count, at a fifth of the weight.
/// Negations and quantifiers are deliberately not here.
const STOPWORDS: &[&str] = &[
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "to", "of", "in", "on", "at",
    "for", "with", "and", "or", "i", "me", "my", "you", "your", "it", "its", "this", "that", "do",
    "does", "did", "can", "could", "would", "should", "will", "please", "how", "what", "which",
    "there", "here", "we", "our", "us", "am", "so", "as", "by", "from", "about", "tell", "show",
    "give", "want", "like", "need", "get",
];

/// Settings of a [`HashingEmbedder`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HashingConfig {
    /// Vector length (default 384).
    pub dimension: usize,
    /// Shortest character n-gram (default 3).
    pub min_ngram: usize,
    /// Longest character n-gram (default 4).
    pub max_ngram: usize,
    /// Weight of a whole word (default 1.0).
    pub word_weight: f32,
    /// Weight of each character n-gram (default 0.3).
    pub ngram_weight: f32,
    /// Weight of each pair of adjacent words (default 0.5).
    pub bigram_weight: f32,
}

impl Default for HashingConfig {
    fn default() -> Self {
        Self {
            dimension: 384,
            min_ngram: 3,
            max_ngram: 4,
            word_weight: 1.0,
            ngram_weight: 0.3,
            bigram_weight: 0.5,
        }
    }
}

impl HashingConfig {
    setters! {
        plain {
            dimension: usize,
            min_ngram: usize,
            max_ngram: usize,
            word_weight: f32,
            ngram_weight: f32,
            bigram_weight: f32,
        }
    }
}

/// The built-in offline embedder: feature hashing of words, word pairs and character
/// n-grams into a fixed-size vector, L2-normalised. Deterministic on every platform, no
/// model file, about a microsecond per short prompt.
///
/// It measures shared wording, not meaning: paraphrases that reuse the words hit, those
/// that do not need a sentence model (the `candle` feature's MiniLM). See the repository's
/// `docs/semantic-cache.md` for its measured hit and false-hit rates.
///
/// ```
/// # tokio_test_block_on(async {
/// use palisade_semantic_cache::{Embedder, HashingEmbedder};
/// let embedder = HashingEmbedder::default();
/// let v = embedder.embed("How do I reset my password?").await?;
/// assert_eq!(v.len(), 384);
/// # Ok::<(), palisade_semantic_cache::Error>(())
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct HashingEmbedder {
    config: HashingConfig,
    version: String,
}

impl Default for HashingEmbedder {
    fn default() -> Self {
        Self::new(HashingConfig::default()).expect("the default configuration is valid")
    }
}

impl HashingEmbedder {
    /// An embedder with these settings.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a zero dimension, an empty or absurd n-gram range, or
    /// a negative or non-finite weight.
    pub fn new(config: HashingConfig) -> Result<Self> {
        if config.dimension == 0 || config.dimension > 65_536 {
            return Err(Error::InvalidConfig(
                "dimension must be within 1..=65536".into(),
            ));
        }
        if config.min_ngram == 0 || config.min_ngram > config.max_ngram || config.max_ngram > 16 {
            return Err(Error::InvalidConfig(
                "need 1 <= min_ngram <= max_ngram <= 16".into(),
            ));
        }
        let weights = [
            config.word_weight,
            config.ngram_weight,
            config.bigram_weight,
        ];
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) || weights.iter().all(|w| *w == 0.0) {
            return Err(Error::InvalidConfig(
                "weights must be finite, >= 0, not all 0".into(),
            ));
        }
        let version = format!(
            "hashing-v1-d{}-n{}{}-w{}-{}-{}",
            config.dimension,
            config.min_ngram,
            config.max_ngram,
            config.word_weight,
            config.ngram_weight,
            config.bigram_weight
        );
        Ok(Self { config, version })
    }

    /// The settings.
    pub fn config(&self) -> &HashingConfig {
        &self.config
    }

    /// Embed one text synchronously (what [`Embedder::embed`] does, without a future).
    pub fn embed_sync(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; self.config.dimension];
        let text: String = text
            .nfkc()
            .flat_map(char::to_lowercase)
            .map(|c| if c == '\u{2019}' { '\'' } else { c })
            .collect();
        let text = expand_contractions(&text);
        let words: Vec<&str> = text
            .split(|c: char| !c.is_alphanumeric() && c != '\'')
            .filter(|w| !w.is_empty())
            .collect();
        let mut padded = String::new();
        for (i, word) in words.iter().enumerate() {
            let stop = STOPWORDS.contains(word);
            let scale = if stop { 0.2 } else { 1.0 };
            bump(&mut v, 1, word.as_bytes(), self.config.word_weight * scale);
            if let Some(next) = words.get(i + 1) {
                let mut pair = Vec::with_capacity(word.len() + next.len() + 1);
                pair.extend_from_slice(word.as_bytes());
                pair.push(b' ');
                pair.extend_from_slice(next.as_bytes());
                bump(&mut v, 2, &pair, self.config.bigram_weight * scale);
            }
            if stop || self.config.ngram_weight == 0.0 {
                continue;
            }
            padded.clear();
            padded.push('<');
            padded.push_str(word);
            padded.push('>');
            let chars: Vec<(usize, char)> = padded.char_indices().collect();
            for n in self.config.min_ngram..=self.config.max_ngram {
                if chars.len() < n {
                    break;
                }
                for start in 0..=chars.len() - n {
                    let from = chars[start].0;
                    let to = chars.get(start + n).map_or(padded.len(), |c| c.0);
                    bump(
                        &mut v,
                        3 + n as u64,
                        &padded.as_bytes()[from..to],
                        self.config.ngram_weight,
                    );
                }
            }
        }
        if v.iter().all(|&x| x == 0.0) {
            // No word characters at all ("???", emoji): hash the whole text so that the
            // vector is never zero and equal texts still meet.
            bump(&mut v, 99, text.as_bytes(), 1.0);
        }
        normalize(&mut v);
        v
    }
}

#[async_trait]
impl Embedder for HashingEmbedder {
    fn dimension(&self) -> usize {
        self.config.dimension
    }

    fn version(&self) -> &str {
        &self.version
    }

    async fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|t| self.embed_sync(t)).collect())
    }
}

/// Spell out English contractions so "what's" meets "what is" and "don't" meets "do not".
fn expand_contractions(text: &str) -> String {
    if !text.contains('\'') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let expanded = match word {
            "can't" => Some("can not".to_owned()),
            "won't" => Some("will not".to_owned()),
            "let's" => Some("let us".to_owned()),
            _ => [
                ("n't", " not"),
                ("'re", " are"),
                ("'m", " am"),
                ("'ve", " have"),
                ("'ll", " will"),
                ("'d", " would"),
                ("'s", " is"),
            ]
            .iter()
            .find_map(|(suffix, full)| {
                word.strip_suffix(suffix)
                    .map(|stem| format!("{stem}{full}"))
            }),
        };
        out.push_str(expanded.as_deref().unwrap_or(word));
    }
    out
}

/// Add `weight` with a hashed sign at a hashed position.
fn bump(v: &mut [f32], seed: u64, bytes: &[u8], weight: f32) {
    let h = hash64(seed, bytes);
    let index = (h % v.len() as u64) as usize;
    v[index] += if h >> 63 == 0 { weight } else { -weight };
}

/// FNV-1a over a seed and the bytes, finished with the SplitMix64 mixer: stable across
/// platforms and releases (the embedder's version pins it).
fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::dot;
    use proptest::prelude::*;

    #[test]
    fn paraphrases_are_closer_than_unrelated_prompts() {
        let e = HashingEmbedder::default();
        let a = e.embed_sync("How do I reset my password?");
        let b = e.embed_sync("how can I reset the password");
        let c = e.embed_sync("What is the weather in Oslo tomorrow?");
        assert!(dot(&a, &b) > 0.8, "{}", dot(&a, &b));
        assert!(dot(&a, &c) < 0.3, "{}", dot(&a, &c));
    }

    #[test]
    fn golden_values_pin_the_hash() {
        let e = HashingEmbedder::default();
        let v = e.embed_sync("This is an example sentence");
        let nonzero = v.iter().filter(|x| **x != 0.0).count();
        assert!(nonzero > 10);
        // Deterministic: the same text always gives the same vector.
        assert_eq!(v, e.embed_sync("This is an example sentence"));
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(
            HashingEmbedder::new(HashingConfig {
                dimension: 0,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            HashingEmbedder::new(HashingConfig {
                min_ngram: 5,
                max_ngram: 3,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            HashingEmbedder::new(HashingConfig {
                word_weight: f32::NAN,
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn vectors_are_checked() {
        assert!(matches!(
            check_vector(&[1.0, 0.0], 3),
            Err(Error::DimensionMismatch {
                expected: 3,
                actual: 2
            })
        ));
        assert!(matches!(
            check_vector(&[f32::NAN, 1.0], 2),
            Err(Error::NonFiniteVector)
        ));
        assert!(matches!(
            check_vector(&[0.0, 0.0], 2),
            Err(Error::ZeroVector)
        ));
        assert!(check_vector(&[0.0, 1.0], 2).is_ok());
    }

    proptest! {
        #[test]
        fn every_text_embeds_to_a_unit_vector(text in ".{1,80}") {
            let v = HashingEmbedder::default().embed_sync(&text);
            prop_assert_eq!(v.len(), 384);
            let norm = dot(&v, &v).sqrt();
            prop_assert!((norm - 1.0).abs() < 1e-4, "norm {}", norm);
        }
    }
}
