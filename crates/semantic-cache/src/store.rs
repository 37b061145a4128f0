//! The storage backend trait.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::entry::Entry;
use crate::error::Result;
use crate::key::{EntryId, Partition, ScopeId, Tag, Tenant};

/// A nearest-neighbour query inside one scope.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct SearchQuery<'a> {
    /// The partition the scope belongs to; results from any other partition are a bug the
    /// backends check for.
    pub partition: &'a Partition,
    /// The exact part of the key.
    pub scope: ScopeId,
    /// Version of the embedder that made `vector`.
    pub embedder: &'a str,
    /// Unit query vector.
    pub vector: &'a [f32],
    /// How many candidates at most.
    pub limit: usize,
    /// Lowest cosine similarity returned.
    pub min_similarity: f32,
    /// Now, for expiry checks (milliseconds since the Unix epoch).
    pub now_ms: u64,
}

/// What to invalidate. Every variant names a tenant: no invalidation crosses tenants,
/// except [`Invalidation::EmbedderOtherThan`], which is an operator's clean-up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Invalidation {
    /// One entry.
    Entry {
        /// Its partition.
        partition: Partition,
        /// Its id.
        id: EntryId,
    },
    /// Every entry of a tenant carrying the tag, in all its namespaces.
    Tag {
        /// The tenant.
        tenant: Tenant,
        /// The tag.
        tag: Tag,
    },
    /// Every entry of one namespace of one tenant.
    Namespace(Partition),
    /// Every entry of a tenant.
    Tenant(Tenant),
    /// Every entry whose vector was made by another embedder version than this one
    /// (the cache also ignores such vectors on its own).
    EmbedderOtherThan(String),
}

impl Invalidation {
    /// A stable lower-case name of the kind (used as a metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Entry { .. } => "entry",
            Self::Tag { .. } => "tag",
            Self::Namespace(_) => "namespace",
            Self::Tenant(_) => "tenant",
            Self::EmbedderOtherThan(_) => "embedder",
        }
    }

    /// Whether `entry` is covered.
    pub fn matches(&self, entry: &Entry) -> bool {
        let p = &entry.scope.partition;
        match self {
            Self::Entry { partition, id } => p == partition && entry.id == *id,
            Self::Tag { tenant, tag } => p.tenant == *tenant && entry.tags.contains(tag),
            Self::Namespace(partition) => p == partition,
            Self::Tenant(tenant) => p.tenant == *tenant,
            Self::EmbedderOtherThan(version) => entry.embedder != *version,
        }
    }
}

/// Entries and bytes held for one partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PartitionUsage {
    /// Live entries (an upper bound for backends that expire lazily).
    pub entries: u64,
    /// Approximate bytes, when the backend knows.
    pub bytes: Option<u64>,
}

impl PartitionUsage {
    /// `entries` live entries taking `bytes` bytes (`None` when the backend does not know).
    pub fn new(entries: u64, bytes: Option<u64>) -> Self {
        Self { entries, bytes }
    }
}

/// Where entries live. One object-safe `async-trait` trait (the cache holds an
/// `Arc<dyn Store>` chosen at run time); every backend runs the same conformance suite.
///
/// A store keeps entries with their TTL, finds them by id (the exact path) and by vector
/// inside one scope (the semantic path), and drops them on invalidation. Every read
/// names the partition and a backend never returns an entry of another partition.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Store (or replace) an entry for `ttl`. The vector has been checked by the caller.
    ///
    /// # Errors
    /// [`crate::Error::Backend`] when the backend fails.
    async fn insert(&self, entry: Arc<Entry>, ttl: Duration) -> Result<()>;

    /// The live entry `id` of `partition`, if any (expired at `now_ms` counts as absent).
    ///
    /// # Errors
    /// [`crate::Error::Backend`] when the backend fails.
    async fn get(
        &self,
        partition: &Partition,
        id: &EntryId,
        now_ms: u64,
    ) -> Result<Option<Arc<Entry>>>;

    /// The live entries nearest to the query, best first, with their similarity.
    ///
    /// # Errors
    /// [`crate::Error::Backend`], or a vector error for a query of the wrong dimension.
    async fn search(&self, query: SearchQuery<'_>) -> Result<Vec<(Arc<Entry>, f32)>>;

    /// Remove what `what` covers; returns how many entries were removed (as far as the
    /// backend can tell).
    ///
    /// # Errors
    /// [`crate::Error::Backend`] when the backend fails.
    async fn invalidate(&self, what: &Invalidation) -> Result<u64>;

    /// Entries and bytes of one partition.
    ///
    /// # Errors
    /// [`crate::Error::Backend`] when the backend fails.
    async fn usage(&self, partition: &Partition) -> Result<PartitionUsage>;

    /// Whether the backend answers right now, for a `/health` endpoint: `Ok(())` from a store
    /// that needs no server (the default); the Redis store sends one `PING` within its
    /// operation timeout and returns the error an operation would get.
    ///
    /// # Errors
    /// [`crate::Error::Backend`] or [`crate::Error::Timeout`] when the backend does not answer.
    async fn health(&self) -> Result<()> {
        Ok(())
    }
}
