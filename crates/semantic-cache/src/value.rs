//! A plain typed cache-aside helper for values that are not prompts: user context, RAG
//! context, dashboard data. Per-namespace TTL, tenant-scoped keys, single-flight loads.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::key::{Partition, Tenant};

type ValueKey = (Partition, String);

struct NamespaceTtl {
    default: Duration,
    by_namespace: HashMap<String, Duration>,
}

impl NamespaceTtl {
    fn ttl(&self, key: &ValueKey) -> Duration {
        *self
            .by_namespace
            .get(key.0.namespace.as_str())
            .unwrap_or(&self.default)
    }
}

impl<V> moka::Expiry<ValueKey, V> for NamespaceTtl {
    fn expire_after_create(&self, key: &ValueKey, _: &V, _: Instant) -> Option<Duration> {
        Some(self.ttl(key))
    }

    fn expire_after_update(
        &self,
        key: &ValueKey,
        _: &V,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.ttl(key))
    }
}

/// A typed, bounded, tenant-scoped cache-aside map with a TTL per namespace.
///
/// Keys are `(partition, key)`: two tenants' `"profile"` never meet. Concurrent loads of
/// one key run the loader once (moka's `try_get_with`).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use palisade_semantic_cache::{Partition, ValueCache};
/// let cache: ValueCache<String> = ValueCache::builder(10_000, Duration::from_secs(60))
///     .namespace_ttl("user-context", Duration::from_secs(300))
///     .build();
/// let p = Partition::new("acme", "user-context")?;
/// let v = cache.get_or_try_insert_with(&p, "user:42", || async {
///     Ok::<_, std::io::Error>("likes short answers".to_owned())
/// }).await?;
/// assert_eq!(v, "likes short answers");
/// # Ok::<(), palisade_semantic_cache::Error>(())
/// # }).unwrap();
/// ```
pub struct ValueCache<V> {
    cache: moka::future::Cache<ValueKey, V>,
}

impl<V> fmt::Debug for ValueCache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValueCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl<V> Clone for ValueCache<V> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
        }
    }
}

/// Builds a [`ValueCache`].
#[derive(Debug)]
pub struct ValueCacheBuilder<V> {
    max_entries: u64,
    default_ttl: Duration,
    by_namespace: HashMap<String, Duration>,
    _value: std::marker::PhantomData<fn() -> V>,
}

impl<V: Clone + Send + Sync + 'static> ValueCacheBuilder<V> {
    /// The TTL of one namespace.
    #[must_use]
    pub fn namespace_ttl(mut self, namespace: impl Into<String>, ttl: Duration) -> Self {
        self.by_namespace.insert(namespace.into(), ttl);
        self
    }

    /// The cache.
    pub fn build(self) -> ValueCache<V> {
        let expiry = NamespaceTtl {
            default: self.default_ttl,
            by_namespace: self.by_namespace,
        };
        ValueCache {
            cache: moka::future::Cache::builder()
                .max_capacity(self.max_entries)
                .expire_after(expiry)
                .build(),
        }
    }
}

impl<V: Clone + Send + Sync + 'static> ValueCache<V> {
    /// A builder: at most `max_entries` values, `default_ttl` for namespaces without their own.
    pub fn builder(max_entries: u64, default_ttl: Duration) -> ValueCacheBuilder<V> {
        ValueCacheBuilder {
            max_entries,
            default_ttl,
            by_namespace: HashMap::new(),
            _value: std::marker::PhantomData,
        }
    }

    /// The value, if cached and alive.
    pub async fn get(&self, partition: &Partition, key: &str) -> Option<V> {
        self.cache.get(&(partition.clone(), key.to_owned())).await
    }

    /// Cache a value.
    pub async fn insert(&self, partition: &Partition, key: &str, value: V) {
        self.cache
            .insert((partition.clone(), key.to_owned()), value)
            .await;
    }

    /// The cached value, or the loader's, cached. Concurrent calls for one key share one load;
    /// a failed load caches nothing.
    ///
    /// # Errors
    /// [`Error::Provider`] with the loader's error.
    pub async fn get_or_try_insert_with<F, Fut, E>(
        &self,
        partition: &Partition,
        key: &str,
        load: F,
    ) -> Result<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.cache
            .try_get_with(
                (partition.clone(), key.to_owned()),
                async move { load().await },
            )
            .await
            .map_err(|e: Arc<E>| Error::Provider(Box::new(e)))
    }

    /// Drop one value.
    pub async fn invalidate(&self, partition: &Partition, key: &str) {
        self.cache
            .invalidate(&(partition.clone(), key.to_owned()))
            .await;
    }

    /// Drop every value of a partition (O(n)).
    pub async fn invalidate_partition(&self, partition: &Partition) {
        let keys: Vec<Arc<ValueKey>> = self
            .cache
            .iter()
            .filter(|(k, _)| k.0 == *partition)
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            self.cache.invalidate(&*k).await;
        }
    }

    /// Drop every value of a tenant (O(n)).
    pub async fn invalidate_tenant(&self, tenant: &Tenant) {
        let keys: Vec<Arc<ValueKey>> = self
            .cache
            .iter()
            .filter(|(k, _)| k.0.tenant == *tenant)
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            self.cache.invalidate(&*k).await;
        }
    }
}
