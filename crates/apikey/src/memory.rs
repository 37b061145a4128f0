//! [`MemoryStore`]: every key in this process, behind one lock.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::key::KeyId;
use crate::record::{CreditOutcome, KeyRecord, Scopes};
use crate::store::{RotateOutcome, Store, Usage};

/// Default bound on the keys a [`MemoryStore`] holds.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
/// How long an idempotency key's answer is kept by default.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<KeyId, Arc<KeyRecord>>,
    owners: HashMap<String, BTreeSet<KeyId>>,
}

/// Keys in this process: for one instance, tests and development. Every operation takes one
/// lock and runs the pure rules of [`KeyRecord`]; a read clones an `Arc`.
///
/// Bounded: at most `max_keys` keys (default [`DEFAULT_MAX_KEYS`]; an insert past it fails
/// with [`Error::CapacityExceeded`]), idempotency answers in a `moka` cache bounded in
/// size and age (default 24 h, real time).
#[derive(Debug)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
    max_keys: usize,
    idempotency: moka::sync::Cache<(KeyId, String), CreditOutcome>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with the default bounds.
    pub fn new() -> Self {
        Self::with_limits(DEFAULT_MAX_KEYS, DEFAULT_IDEMPOTENCY_TTL)
    }

    /// An empty store holding at most `max_keys` keys and idempotency answers for
    /// `idempotency_ttl`.
    pub fn with_limits(max_keys: usize, idempotency_ttl: Duration) -> Self {
        Self {
            inner: RwLock::default(),
            max_keys,
            idempotency: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(idempotency_ttl)
                .build(),
        }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.inner.read().keys.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn update<T>(&self, id: &KeyId, f: impl FnOnce(&mut KeyRecord) -> T) -> Option<T> {
        let mut inner = self.inner.write();
        let rec = inner.keys.get_mut(id)?;
        Some(f(Arc::make_mut(rec)))
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert(&self, record: &KeyRecord) -> Result<bool> {
        let mut inner = self.inner.write();
        if inner.keys.contains_key(&record.id) {
            return Ok(false);
        }
        if inner.keys.len() >= self.max_keys {
            return Err(Error::CapacityExceeded(self.max_keys));
        }
        inner.keys.insert(record.id, Arc::new(record.clone()));
        inner
            .owners
            .entry(record.owner.clone())
            .or_default()
            .insert(record.id);
        Ok(true)
    }

    async fn get(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>> {
        Ok(self.inner.read().keys.get(id).cloned())
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>> {
        let inner = self.inner.read();
        Ok(inner.owners.get(owner).map_or_else(Vec::new, |ids| {
            ids.iter()
                .filter_map(|id| inner.keys.get(id).map(|r| (**r).clone()))
                .collect()
        }))
    }

    async fn revoke(&self, id: &KeyId, now: u64) -> Result<Option<KeyRecord>> {
        Ok(self.update(id, |r| {
            r.revoke(now);
            r.clone()
        }))
    }

    async fn rotate(
        &self,
        old: &KeyId,
        new: &KeyRecord,
        now: u64,
        grace_until: u64,
    ) -> Result<RotateOutcome> {
        let mut inner = self.inner.write();
        if inner.keys.contains_key(&new.id) {
            return Ok(RotateOutcome::InvalidState("taken"));
        }
        let Some(rec) = inner.keys.get_mut(old) else {
            return Ok(RotateOutcome::NotFound);
        };
        let mut rotated = (**rec).clone();
        if let Err(Error::InvalidState(s)) = rotated.rotate(new.id, now, grace_until) {
            return Ok(RotateOutcome::InvalidState(s));
        }
        *rec = Arc::new(rotated.clone());
        inner.keys.insert(new.id, Arc::new(new.clone()));
        inner
            .owners
            .entry(new.owner.clone())
            .or_default()
            .insert(new.id);
        Ok(RotateOutcome::Rotated(Box::new(rotated)))
    }

    async fn update_scopes(&self, id: &KeyId, scopes: &Scopes) -> Result<Option<KeyRecord>> {
        Ok(self.update(id, |r| {
            r.scopes = scopes.clone();
            r.clone()
        }))
    }

    async fn charge(
        &self,
        id: &KeyId,
        cost: u64,
        idempotency_key: Option<&str>,
        now: u64,
    ) -> Result<CreditOutcome> {
        let mut inner = self.inner.write();
        let memo = idempotency_key.map(|k| (*id, k.to_owned()));
        if let Some(memo) = &memo
            && let Some(CreditOutcome::Charged { remaining, .. }) = self.idempotency.get(memo)
        {
            return Ok(CreditOutcome::Charged {
                remaining,
                replayed: true,
            });
        }
        let Some(rec) = inner.keys.get_mut(id) else {
            return Ok(CreditOutcome::NotFound);
        };
        let outcome = Arc::make_mut(rec).charge(now, cost);
        if let (Some(memo), CreditOutcome::Charged { .. }) = (memo, outcome) {
            self.idempotency.insert(memo, outcome);
        }
        Ok(outcome)
    }

    async fn rehash(
        &self,
        id: &KeyId,
        from_version: u16,
        version: u16,
        hash: &[u8; 32],
    ) -> Result<()> {
        self.update(id, |r| {
            if r.hash_version == from_version {
                r.hash_version = version;
                r.hash = *hash;
            }
        });
        Ok(())
    }

    async fn record_usage(&self, usage: &[Usage]) -> Result<()> {
        let mut inner = self.inner.write();
        for u in usage {
            if let Some(rec) = inner.keys.get_mut(&u.id) {
                Arc::make_mut(rec).record_use(u.uses, u.last_used_at);
            }
        }
        Ok(())
    }

    fn is_remote(&self) -> bool {
        false
    }

    fn backend_name(&self) -> &'static str {
        "memory"
    }
}
