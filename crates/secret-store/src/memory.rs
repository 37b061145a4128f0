//! [`MemoryProvider`]: secrets in this process's memory, versioned.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use parking_lot::Mutex;
use secrecy::SecretString;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::provider::Provider;
use crate::value::{Fetched, SecretName, Version, from_micros};

/// Versions kept per secret by default.
pub const DEFAULT_MAX_VERSIONS: usize = 10;
/// Secrets kept at most by default.
pub const DEFAULT_MAX_SECRETS: usize = 10_000;

struct Entry {
    next: u64,
    versions: VecDeque<(u64, SecretString, u64, Option<SystemTime>)>,
}

/// Versioned secrets in memory: tests, values generated at start-up, or a writable provider
/// in front of read-only ones. Every `put` is a new version number (1, 2, …); the last
/// [`max_versions`](Self::max_versions) versions stay readable. Bounded: at most
/// [`max_secrets`](Self::max_secrets) names (a `put` of a new name beyond that is refused).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use palisade_secret_store::{MemoryProvider, Provider, SecretName};
/// let p = MemoryProvider::new().with_secret("db/password", "hunter2")?;
/// let f = p.get(&SecretName::new("db/password")?, None).await?.unwrap();
/// assert_eq!(f.version.as_str(), "1");
/// # Ok::<(), palisade_secret_store::Error>(()) }).unwrap();
/// ```
pub struct MemoryProvider {
    name: String,
    clock: Arc<dyn Clock>,
    max_versions: usize,
    max_secrets: usize,
    entries: Mutex<HashMap<SecretName, Entry>>,
}

impl std::fmt::Debug for MemoryProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryProvider")
            .field("name", &self.name)
            .field("secrets", &self.entries.lock().len())
            .field("max_versions", &self.max_versions)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryProvider {
    /// An empty provider named `memory`.
    pub fn new() -> Self {
        Self {
            name: "memory".to_owned(),
            clock: Arc::new(SystemClock),
            max_versions: DEFAULT_MAX_VERSIONS,
            max_secrets: DEFAULT_MAX_SECRETS,
            entries: Mutex::default(),
        }
    }

    /// Report under another name.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Stamp versions with `clock` (a [`FakeClock`](crate::FakeClock) in tests).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Keep the last `n` versions of each secret (at least 2, so the previous version stays
    /// readable after a rotation).
    #[must_use]
    pub fn max_versions(mut self, n: usize) -> Self {
        self.max_versions = n.max(2);
        self
    }

    /// Hold at most `n` secrets.
    #[must_use]
    pub fn max_secrets(mut self, n: usize) -> Self {
        self.max_secrets = n;
        self
    }

    /// Builder form of [`insert`](Self::insert).
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub fn with_secret(self, name: &str, value: &str) -> Result<Self> {
        self.insert(&SecretName::new(name)?, SecretString::from(value), None)?;
        Ok(self)
    }

    /// Store a new version of `name`, optionally expiring at `expires_at`, and return its
    /// version.
    ///
    /// # Errors
    /// [`Error::Backend`] (not transient) when the provider is full.
    pub fn insert(
        &self,
        name: &SecretName,
        value: SecretString,
        expires_at: Option<SystemTime>,
    ) -> Result<Version> {
        let now = self.clock.now_micros();
        let mut entries = self.entries.lock();
        if !entries.contains_key(name) && entries.len() >= self.max_secrets {
            return Err(Error::backend(
                &self.name,
                format!(
                    "memory provider holds its maximum of {} secrets",
                    self.max_secrets
                ),
                false,
            ));
        }
        let e = entries.entry(name.clone()).or_insert_with(|| Entry {
            next: 1,
            versions: VecDeque::new(),
        });
        let n = e.next;
        e.next += 1;
        e.versions.push_back((n, value, now, expires_at));
        while e.versions.len() > self.max_versions {
            e.versions.pop_front();
        }
        Ok(Version::from(n))
    }

    /// Forget `name` and all its versions.
    pub fn remove(&self, name: &SecretName) -> bool {
        self.entries.lock().remove(name).is_some()
    }
}

#[async_trait]
impl Provider for MemoryProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, name: &SecretName, version: Option<&Version>) -> Result<Option<Fetched>> {
        let entries = self.entries.lock();
        let Some(e) = entries.get(name) else {
            return Ok(None);
        };
        let found = match version {
            None => e.versions.back(),
            Some(v) => match v.number() {
                Some(n) => e.versions.iter().find(|(m, ..)| *m == n),
                None => None,
            },
        };
        Ok(found.map(|(n, value, created, exp)| {
            Fetched::new(value.clone(), Version::from(*n))
                .expires_at(*exp)
                .created_at(Some(from_micros(*created)))
        }))
    }

    async fn put(&self, name: &SecretName, value: &SecretString) -> Result<Version> {
        self.insert(name, value.clone(), None)
    }

    fn writable(&self) -> bool {
        true
    }

    async fn list(&self) -> Result<Vec<SecretName>> {
        Ok(self.entries.lock().keys().cloned().collect())
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }
}
