//! Cached entries and what a lookup returns.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::key::{EntryId, Scope, ScopeId, Tag};

/// Tokens and money one provider call cost (and a cache hit saves).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Cost in the provider's currency (for example US dollars).
    pub cost: f64,
}

impl Usage {
    /// Usage from token counts and what they cost.
    pub fn new(input_tokens: u64, output_tokens: u64, cost: f64) -> Self {
        Self {
            input_tokens,
            output_tokens,
            cost,
        }
    }

    /// Usage from token counts and a price per token.
    pub fn priced(
        input_tokens: u64,
        output_tokens: u64,
        pricing: crate::provider::Pricing,
    ) -> Self {
        let cost = input_tokens as f64 * pricing.input_per_token
            + output_tokens as f64 * pricing.output_per_token;
        Self {
            input_tokens,
            output_tokens,
            cost,
        }
    }

    /// The total of two usages.
    #[must_use]
    pub fn plus(self, other: Self) -> Self {
        Self {
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
            cost: self.cost + other.cost,
        }
    }
}

/// One cached answer.
///
/// The response is opaque bytes (a provider's JSON, a serialized struct, plain text); see
/// [`Entry::response_json`] for serde values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Entry {
    /// Digest of scope and normalised prompt.
    pub id: EntryId,
    /// The exact part of the key this entry answers.
    pub scope: Scope,
    /// The prompt as it was first asked.
    pub prompt: String,
    /// The cached response.
    #[serde(with = "bytes_as_base64")]
    pub response: Vec<u8>,
    /// What the call that produced the response cost.
    pub usage: Usage,
    /// Tags for invalidation.
    pub tags: Vec<Tag>,
    /// Embedding of the prompt (normalised to unit length); empty when the namespace is exact-only.
    pub vector: Vec<f32>,
    /// Version of the embedder that made `vector`; vectors of other versions are never compared.
    pub embedder: String,
    /// Creation time, milliseconds since the Unix epoch (the cache's clock).
    pub created_at_ms: u64,
    /// Expiry time, milliseconds since the Unix epoch; the entry is a miss from then on.
    pub expires_at_ms: u64,
}

impl Entry {
    /// The response decoded as JSON into `T`.
    ///
    /// # Errors
    /// [`crate::Error::Serialization`] when the bytes are not a JSON `T`.
    pub fn response_json<T: serde::de::DeserializeOwned>(&self) -> crate::Result<T> {
        Ok(serde_json::from_slice(&self.response)?)
    }

    /// The response as UTF-8 text, if it is.
    pub fn response_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.response).ok()
    }

    /// The scope's digest (the index partition).
    pub fn scope_id(&self) -> ScopeId {
        self.scope.id()
    }

    /// Whether the entry has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at_ms
    }

    /// Approximate memory the entry takes, in bytes: what `max_bytes` limits count.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.prompt.len()
            + self.response.len()
            + self.vector.len() * 4
            + self.embedder.len()
            + self.scope.model.len()
            + self.scope.partition.tenant.as_str().len()
            + self.scope.partition.namespace.as_str().len()
            + self
                .tags
                .iter()
                .map(|t| t.as_str().len() + 16)
                .sum::<usize>()
    }
}

/// Whether a hit matched the normalised prompt exactly or by meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HitKind {
    /// Same normalised prompt: no embedding was computed.
    Exact,
    /// Nearest neighbour above the namespace's threshold, not vetoed by the lexical guard.
    Semantic,
}

/// A served cache hit.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Hit {
    /// The entry.
    pub entry: Arc<Entry>,
    /// Exact or semantic.
    pub kind: HitKind,
    /// Cosine similarity between the prompts' embeddings, 1.0 for exact hits.
    pub similarity: f32,
}

/// Why a lookup did not return a hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MissReason {
    /// No entry above the threshold (or the namespace is exact-only).
    NoMatch,
    /// The nearest entry was above the threshold but the lexical guard vetoed it.
    Vetoed,
    /// The backend failed and the cache runs [`FailureMode::FailOpen`](crate::FailureMode):
    /// the lookup counts as a miss (the failure is logged at WARN and counted in
    /// `palisade_semantic_cache_backend_errors_total`).
    BackendUnavailable,
}

/// The outcome of a lookup.
#[derive(Clone, Debug)]
#[allow(
    clippy::exhaustive_enums,
    reason = "complete by nature: a lookup is served or it is not (why is in `MissReason`)"
)]
pub enum Lookup {
    /// Served from the cache.
    Hit(Hit),
    /// Not served; the best candidate's similarity, if any, for diagnostics.
    Miss {
        /// Why.
        reason: MissReason,
        /// Similarity of the nearest entry considered, if any.
        best_similarity: Option<f32>,
    },
}

impl Lookup {
    /// The hit, if any.
    pub fn hit(self) -> Option<Hit> {
        match self {
            Self::Hit(hit) => Some(hit),
            Self::Miss { .. } => None,
        }
    }

    /// Whether this is a hit.
    pub fn is_hit(&self) -> bool {
        matches!(self, Self::Hit(_))
    }
}

mod bytes_as_base64 {
    use serde::{Deserialize, Deserializer, Serializer};

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        s.serialize_str(&out)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        let mut out = Vec::with_capacity(text.len() / 4 * 3);
        let mut acc = 0u32;
        let mut bits = 0;
        for c in text.bytes() {
            if c == b'=' {
                break;
            }
            let v = ALPHABET
                .iter()
                .position(|&a| a == c)
                .ok_or_else(|| serde::de::Error::custom("invalid base64"))?;
            acc = (acc << 6) | v as u32;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{ContextHash, Partition};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn entries_round_trip_through_json(response in proptest::collection::vec(any::<u8>(), 0..64)) {
            let scope = Scope { partition: Partition::new("t", "n").unwrap(), model: "m".into(), context: ContextHash::EMPTY };
            let entry = Entry {
                id: crate::key::entry_id(scope.id(), "p"),
                scope,
                prompt: "p".into(),
                response,
                usage: Usage { input_tokens: 1, output_tokens: 2, cost: 0.5 },
                tags: vec![Tag::new("user:1").unwrap()],
                vector: vec![0.5, -0.25],
                embedder: "e".into(),
                created_at_ms: 1,
                expires_at_ms: 2,
            };
            let json = serde_json::to_string(&entry).unwrap();
            let back: Entry = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, entry);
        }
    }
}
