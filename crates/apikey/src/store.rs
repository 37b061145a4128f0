//! The backend trait: [`Store`].

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::key::KeyId;
use crate::record::{CreditOutcome, KeyRecord, Scopes};

/// Uses of one key since the last flush (see [`Store::record_usage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Usage {
    /// The key.
    pub id: KeyId,
    /// Successful verifications.
    pub uses: u64,
    /// The latest of them (microseconds since the Unix epoch).
    pub last_used_at: u64,
}

impl Usage {
    /// `uses` uses of `id`, the last at `last_used_at`.
    pub fn new(id: KeyId, uses: u64, last_used_at: u64) -> Self {
        Self {
            id,
            uses,
            last_used_at,
        }
    }
}

/// The answer to [`Store::rotate`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RotateOutcome {
    /// Done: the old key as it is now (rotating), the new one stored.
    Rotated(Box<KeyRecord>),
    /// No key with the old id.
    NotFound,
    /// The old key is not active (`revoked`, `expired`, `rotating`).
    InvalidState(&'static str),
}

/// Where key records live. Each method is one atomic operation of the backend (one Lua
/// script for Redis, one lock for memory) that runs the pure rules of
/// [`KeyRecord`] (`revoke`, `rotate`, `charge`, `record_use`), so every backend behaves the
/// same; the public conformance suite (`testing`, feature `testing`) proves it.
///
/// The trait uses `#[async_trait]` (boxed futures) so that it is object safe: an
/// [`ApiKeys`](crate::ApiKeys) holds an `Arc<dyn Store>`, and switching memory to Redis
/// changes one constructor. One allocation per call is small next to a Redis round trip.
///
/// Times (`now`) come from the caller's clock so that tests with a
/// [`FakeClock`](crate::FakeClock) behave the same on every backend.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Store a new key. `Ok(false)` when the id is already taken (nothing is changed).
    ///
    /// # Errors
    /// Backend failures.
    async fn insert(&self, record: &KeyRecord) -> Result<bool>;

    /// The record of `id`, if any. One round trip for Redis.
    ///
    /// # Errors
    /// Backend failures.
    async fn get(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>>;

    /// Every key of `owner`, in id order.
    ///
    /// # Errors
    /// Backend failures.
    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>>;

    /// Revoke `id` at `now` ([`KeyRecord::revoke`]); `None` when there is no such key.
    ///
    /// # Errors
    /// Backend failures.
    async fn revoke(&self, id: &KeyId, now: u64) -> Result<Option<KeyRecord>>;

    /// Atomically mark `old` as rotating to `new.id` until `grace_until`
    /// ([`KeyRecord::rotate`]) and store `new` (same family as `old`).
    ///
    /// # Errors
    /// Backend failures.
    async fn rotate(
        &self,
        old: &KeyId,
        new: &KeyRecord,
        now: u64,
        grace_until: u64,
    ) -> Result<RotateOutcome>;

    /// Replace the scopes of `id`; `None` when there is no such key.
    ///
    /// # Errors
    /// Backend failures.
    async fn update_scopes(&self, id: &KeyId, scopes: &Scopes) -> Result<Option<KeyRecord>>;

    /// Charge `cost` credits of `id` at `now` ([`KeyRecord::charge`]), exact under
    /// concurrency. With an `idempotency_key`, the first call's answer is stored (for the
    /// store's idempotency window) and every later call with the same key gets it back with
    /// `replayed: true`, charging nothing.
    ///
    /// # Errors
    /// Backend failures.
    async fn charge(
        &self,
        id: &KeyId,
        cost: u64,
        idempotency_key: Option<&str>,
        now: u64,
    ) -> Result<CreditOutcome>;

    /// Replace the hash of `id` (computed under pepper `version`) if it is still the one
    /// computed under `from_version`. Used to move a key to the current pepper.
    ///
    /// # Errors
    /// Backend failures.
    async fn rehash(
        &self,
        id: &KeyId,
        from_version: u16,
        version: u16,
        hash: &[u8; 32],
    ) -> Result<()>;

    /// Add batched uses ([`KeyRecord::record_use`]); unknown ids are skipped.
    ///
    /// # Errors
    /// Backend failures.
    async fn record_usage(&self, usage: &[Usage]) -> Result<()>;

    /// Whether reads cost a network round trip, so that [`ApiKeys`](crate::ApiKeys) puts
    /// its verify cache in front (`false` for the memory store).
    fn is_remote(&self) -> bool {
        true
    }

    /// Ids of keys changed (revoked, rotated, rescoped, re-hashed) by any instance, for
    /// verify caches to drop. `None` when the store has no such feed.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<KeyId>> {
        None
    }

    /// A short name for metrics and logs (`memory`, `redis`).
    fn backend_name(&self) -> &'static str;

    /// Whether the backend answers now, for a service's `/health` endpoint: `Ok` for the
    /// memory store; for Redis one `PING` within the store's timeout.
    ///
    /// # Errors
    /// The backend did not answer ([`Error::Backend`](crate::Error::Backend),
    /// [`Error::Timeout`](crate::Error::Timeout)).
    async fn health(&self) -> Result<()> {
        Ok(())
    }
}
