//! [`Secrets`]: the chain, the cache and the outage policy.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use metrics::{Counter, Gauge};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{broadcast, watch};
use tracing::Instrument;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::events::{
    AuditEvent, AuditKind, HealthReport, ProviderHealth, ProviderMetrics, ReadCounters, Rotation,
    RotationSource, names,
};
use crate::key::Keyring;
use crate::policy::{Failed, FailureMode, Freshness, Read, SecretsConfig, micros};
use crate::provider::Provider;
use crate::redact::Redactor;
use crate::snapshot::{SnapEntry, Snapshot};
use crate::value::{Fetched, Secret, SecretName, Version, from_micros, to_micros};

struct Cached {
    secret: Secret,
    previous: Option<Secret>,
    fresh: Freshness,
    resurrected: bool,
}

struct Slot {
    name: SecretName,
    state: ArcSwapOption<Cached>,
    refreshing: AtomicBool,
    load: tokio::sync::Mutex<()>,
    reads: Option<ReadCounters>,
}

type SlotMap = HashMap<SecretName, Arc<Slot>, foldhash::fast::RandomState>;

struct ChainProvider {
    provider: Arc<dyn Provider>,
    name: Arc<str>,
    metrics: ProviderMetrics,
}

struct Inner {
    providers: Vec<ChainProvider>,
    config: SecretsConfig,
    clock: Arc<dyn Clock>,
    slots: ArcSwap<SlotMap>,
    insert_lock: parking_lot::Mutex<()>,
    snapshot: Option<Snapshot>,
    redactor: Redactor,
    audit: broadcast::Sender<AuditEvent>,
    /// Set once anyone subscribed to audit events: the cached path checks this atomic, not
    /// the channel (whose receiver count takes a lock).
    audit_subscribed: AtomicBool,
    rotations: watch::Sender<Option<Rotation>>,
    reads: ReadCounters,
    rotations_written: Counter,
    rotations_observed: Counter,
    cached: Gauge,
    snapshot_ok: Counter,
    snapshot_err: Counter,
}

/// Secrets from an ordered chain of providers, cached, redacted and kept through outages.
///
/// * **Chain**: `get` asks each provider in order; a miss (or a name the provider cannot
///   represent) or a transient failure moves on to the next; a permanent failure (access
///   denied, a value that does not decrypt, a malformed answer) stops the chain and is
///   returned — a revoked permission is never papered over by a lower provider.
/// * **Cache**: a loaded value is served for the TTL (default 1 h, shortened by up to 10 %
///   jitter), then served while one background refresh runs (stale-while-revalidate), then
///   loaded in the foreground. Loads of one name are single-flight. A cached `get` takes a
///   lock-free read and one reference-count increment: no allocation.
/// * **Outages** ([`FailureMode`], default `FallbackToMemory`): on a *transient* failure
///   the last-known-good value is served for the `resurrect` window (default 15 min) after
///   the first failure; never after a denial, never past the provider's own expiry. With an
///   encrypted [snapshot](SecretsBuilder::snapshot), a process that starts during an outage
///   serves what the last run loaded (at most `snapshot_max_age` old).
/// * **Versions and rotation**: [`get_version`](Self::get_version), [`rotate`](Self::rotate)
///   (a new version through the first writable provider, the previous kept readable),
///   [`rotations`](Self::rotations) (a watch channel), and
///   [`with_secret`](Self::with_secret), which retries a call refused for bad credentials
///   with the previous version, then with a forced refresh.
/// * **Never printed**: values are [`Secret`]s (redacted `Debug`, no `Display`/`Serialize`)
///   and every loaded value is added to the [`Redactor`] that scrubs log output.
///
/// Cloning is cheap (one `Arc`); every clone shares the cache.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use palisade_secret_store::{EnvProvider, ExposeSecret, MemoryProvider, Secrets};
///
/// let secrets = Secrets::builder()
///     .provider(EnvProvider::from_vars("APP_", [("APP_OPENAI_API_KEY", "sk-from-env")]))
///     .provider(MemoryProvider::new().with_secret("db/password", "hunter2")?)
///     .build()?;
/// assert_eq!(secrets.get("openai/api-key").await?.expose_secret(), "sk-from-env");
/// let db = secrets.get("db/password").await?;
/// assert_eq!(db.provider(), "memory");
/// assert_eq!(format!("{db:?}"), r#"Secret { name: "db/password", version: "1", value: "[REDACTED]", .. }"#);
/// assert!(secrets.get("missing").await.unwrap_err().is_not_found());
/// # Ok::<(), palisade_secret_store::Error>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct Secrets {
    inner: Arc<Inner>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field(
                "providers",
                &self
                    .inner
                    .providers
                    .iter()
                    .map(|p| &*p.name)
                    .collect::<Vec<_>>(),
            )
            .field("cached", &self.inner.slots.load().len())
            .field("failure_mode", &self.inner.config.failure_mode)
            .finish_non_exhaustive()
    }
}

/// Builds [`Secrets`].
#[must_use]
pub struct SecretsBuilder {
    providers: Vec<Arc<dyn Provider>>,
    config: SecretsConfig,
    clock: Arc<dyn Clock>,
    snapshot: Option<(PathBuf, Keyring)>,
    redactor: Option<Redactor>,
}

impl fmt::Debug for SecretsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretsBuilder")
            .field("providers", &self.providers)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SecretsBuilder {
    /// Append a provider to the chain (asked after the ones added before it).
    pub fn provider(self, provider: impl Provider + 'static) -> Self {
        self.shared_provider(Arc::new(provider))
    }

    /// Append a shared provider to the chain.
    pub fn shared_provider(mut self, provider: Arc<dyn Provider>) -> Self {
        self.providers.push(provider);
        self
    }

    /// All settings at once (from a config file).
    pub fn config(mut self, config: SecretsConfig) -> Self {
        self.config = config;
        self
    }

    /// How long a loaded value is served without asking again (default 1 h).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = ttl;
        self
    }

    /// How long after the TTL the old value is served while one refresh runs (default 5 min).
    pub fn stale_while_revalidate(mut self, d: Duration) -> Self {
        self.config.stale_while_revalidate = d;
        self
    }

    /// How long after the first failed refresh the last-known-good value is served
    /// (default 15 min; [`FailureMode::FallbackToMemory`]).
    pub fn resurrect(mut self, d: Duration) -> Self {
        self.config.resurrect = d;
        self
    }

    /// How often a read retries the providers while a last-known-good value is served
    /// (default 5 s).
    pub fn retry_interval(mut self, d: Duration) -> Self {
        self.config.retry_interval = d;
        self
    }

    /// Shorten each TTL by a random fraction up to `fraction` (default 0.1, at most 0.9).
    pub fn refresh_jitter(mut self, fraction: f64) -> Self {
        self.config.refresh_jitter = fraction;
        self
    }

    /// What an outage does to cached values (default [`FailureMode::FallbackToMemory`]).
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.config.failure_mode = mode;
        self
    }

    /// Snapshot entries older than this are never served (default 24 h).
    pub fn snapshot_max_age(mut self, d: Duration) -> Self {
        self.config.snapshot_max_age = d;
        self
    }

    /// One provider call's time limit (default 2 s).
    pub fn provider_timeout(mut self, d: Duration) -> Self {
        self.config.provider_timeout = d;
        self
    }

    /// Hold at most `n` distinct names (default 10 000).
    pub fn max_secrets(mut self, n: usize) -> Self {
        self.config.max_secrets = n;
        self
    }

    /// Label the read counter with secret names (off by default: an unbounded label set
    /// unless the application's secrets are a fixed list).
    pub fn secret_name_labels(mut self, on: bool) -> Self {
        self.config.secret_name_labels = on;
        self
    }

    /// Keep an encrypted snapshot of last-known-good values at `path` (mode 0600, written
    /// atomically whenever a loaded value changes) and serve from it when every provider is
    /// down at a cold start.
    pub fn snapshot(mut self, path: impl Into<PathBuf>, key: impl Into<Keyring>) -> Self {
        self.snapshot = Some((path.into(), key.into()));
        self
    }

    /// Scrub loaded values through this redactor (by default a new [`Redactor::new`]).
    pub fn redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = Some(redactor);
        self
    }

    /// Read time from `clock` (a [`FakeClock`](crate::FakeClock) in tests).
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Build. Reads the snapshot file, if one is configured (a snapshot that does not
    /// decrypt is logged at WARN and ignored: a new master key must not stop a start).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] without providers or with invalid settings.
    pub fn build(self) -> Result<Secrets> {
        if self.providers.is_empty() {
            return Err(Error::InvalidConfig(
                "a secret store needs at least one provider".to_owned(),
            ));
        }
        self.config.validate().map_err(Error::InvalidConfig)?;
        let snapshot = self.snapshot.map(|(path, keyring)| {
            let (s, problem) = Snapshot::open(path, keyring);
            if let Some(e) = problem {
                tracing::warn!(error = %ErrorChain(&e), "secret snapshot ignored");
            }
            s
        });
        let providers = self
            .providers
            .into_iter()
            .map(|p| ChainProvider {
                name: Arc::from(p.name()),
                metrics: ProviderMetrics::new(p.name()),
                provider: p,
            })
            .collect();
        Ok(Secrets {
            inner: Arc::new(Inner {
                providers,
                config: self.config,
                clock: self.clock,
                slots: ArcSwap::from_pointee(SlotMap::default()),
                insert_lock: parking_lot::Mutex::new(()),
                snapshot,
                redactor: self.redactor.unwrap_or_default(),
                audit: broadcast::channel(1024).0,
                audit_subscribed: AtomicBool::new(false),
                rotations: watch::channel(None).0,
                reads: ReadCounters::new(None),
                rotations_written: metrics::counter!(names::ROTATIONS, "source" => "written"),
                rotations_observed: metrics::counter!(names::ROTATIONS, "source" => "observed"),
                cached: metrics::gauge!(names::CACHED),
                snapshot_ok: metrics::counter!(names::SNAPSHOT_WRITES, "outcome" => "ok"),
                snapshot_err: metrics::counter!(names::SNAPSHOT_WRITES, "outcome" => "error"),
            }),
        })
    }
}

/// An error's message followed by its sources (`a: b: c`), for logs. Errors of this crate
/// never hold values, so this is safe to log.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// How the caller's use of a secret failed, in [`Secrets::with_secret`]'s closure.
#[derive(Debug)]
pub enum Refused<E> {
    /// The remote side refused the credential (HTTP 401/403, bad password): worth trying
    /// the previous version and a fresh one.
    Credential(E),
    /// Any other failure: returned as it is, no retry.
    Other(E),
}

/// What [`Secrets::with_secret`] returns on failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UseError<E> {
    /// The secret could not be read.
    #[error("the secret could not be read")]
    Secret(#[source] Error),
    /// Every version tried (current, previous, freshly loaded) was refused; the last refusal.
    #[error("every version of the secret was refused")]
    Refused(E),
    /// The call failed for another reason.
    #[error("the call failed")]
    Other(E),
}

/// The future of [`Secrets::get`]: already complete when the value was cached (it holds
/// only the handle), otherwise a boxed load.
#[must_use = "futures do nothing unless polled"]
pub struct GetFuture<'a>(GetState<'a>);

type BoxedLoad<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Secret>> + Send + 'a>>;

enum GetState<'a> {
    Hit(Option<Secret>),
    Load(BoxedLoad<'a>),
}

impl fmt::Debug for GetFuture<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            GetState::Hit(_) => "GetFuture(cached)",
            GetState::Load(_) => "GetFuture(loading)",
        })
    }
}

impl Future for GetFuture<'_> {
    type Output = Result<Secret>;

    #[inline]
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.get_mut().0 {
            GetState::Hit(s) => {
                std::task::Poll::Ready(Ok(s.take().expect("GetFuture polled after it completed")))
            }
            GetState::Load(f) => f.as_mut().poll(cx),
        }
    }
}

impl Secrets {
    /// A builder with the default settings ([`SecretsConfig::default`]).
    pub fn builder() -> SecretsBuilder {
        SecretsBuilder {
            providers: Vec::new(),
            config: SecretsConfig::default(),
            clock: Arc::new(SystemClock),
            snapshot: None,
            redactor: None,
        }
    }

    /// The secret `name`, from the cache when fresh, else from the chain.
    ///
    /// Cost: cached, two lock-free reads, a clock read and a reference-count increment (no
    /// allocation, tens of nanoseconds; the cache is consulted when `get` is called and the
    /// future is then already complete); stale, the same plus one background refresh per
    /// TTL; otherwise one boxed future and one call per provider until one has it.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; [`Error::NotFound`] when no provider has it; the first
    /// provider's error when the chain failed and no last-known-good value may be served
    /// (always for [`Error::Denied`]).
    #[inline]
    pub fn get<'a>(&'a self, name: &'a str) -> GetFuture<'a> {
        // The cached path is decided before any future exists: the future handed back then
        // holds just the handle (8 bytes), and only a load pays for the (boxed) slow path.
        match self.cached(name) {
            Some(s) => GetFuture(GetState::Hit(Some(s))),
            None => GetFuture(GetState::Load(self.load_boxed(name))),
        }
    }

    /// The slow path, boxed in a function of its own: the load future is large, and building
    /// it inline would give `get` a stack frame (and stack probes) that every cached read
    /// would pay for.
    #[inline(never)]
    fn load_boxed<'a>(&'a self, name: &'a str) -> BoxedLoad<'a> {
        Box::pin(self.load(name, false))
    }

    /// The cached value of `name` if it may be served now, without any I/O (`None` when it
    /// is not cached or must be loaded). Starts a background refresh when it is stale.
    #[inline]
    pub fn cached(&self, name: &str) -> Option<Secret> {
        let slots = self.inner.slots.load();
        let slot = slots.get(name)?;
        let state = slot.state.load();
        let c = state.as_ref()?;
        let reads = slot.reads.as_ref().unwrap_or(&self.inner.reads);
        let stale = match c.fresh.read(self.inner.clock.now_micros()) {
            Read::Fresh => false,
            Read::Stale if self.refresh_in_background(slot) => true,
            Read::Stale | Read::Expired => return None,
        };
        if c.resurrected {
            reads.resurrected.increment(1);
        } else if stale {
            reads.stale.increment(1);
        } else {
            reads.fresh.increment(1);
        }
        if self.inner.audit_subscribed.load(Ordering::Relaxed) {
            self.audit(AuditKind::Read, &c.secret, None);
        }
        Some(c.secret.clone())
    }

    /// Load `name` from the chain now, whatever the cache holds (single-flight with any
    /// other load of it), and cache the answer.
    ///
    /// # Errors
    /// As [`get`](Self::get); a last-known-good value may still be answered during a
    /// transient outage.
    pub async fn refresh(&self, name: &str) -> Result<Secret> {
        self.load(name, true).await
    }

    /// Load every name in `names` (at start-up, to fail fast on a missing secret).
    ///
    /// # Errors
    /// The first failure.
    pub async fn preload(&self, names: &[&str]) -> Result<()> {
        for name in names {
            self.get(name).await?;
        }
        Ok(())
    }

    /// Version `version` of `name`: from the cache when it is the current or previous
    /// version, otherwise from the chain (versions are not cached, and no last-known-good
    /// value stands in for a specific version).
    ///
    /// # Errors
    /// As [`get`](Self::get), without the outage fallback.
    pub async fn get_version(&self, name: &str, version: &Version) -> Result<Secret> {
        if let Some(c) = self.slot_state(name) {
            for s in std::iter::once(&c.secret).chain(&c.previous) {
                if s.version() == version {
                    return Ok(s.clone());
                }
            }
        }
        let n = SecretName::new(name)?;
        let (fetched, i) = self.fetch(&n, Some(version)).await?;
        let secret = Secret::from_parts(n, fetched, self.inner.providers[i].name.clone());
        self.inner.redactor.add_secret(&secret);
        self.audit(AuditKind::Read, &secret, None);
        Ok(secret)
    }

    /// The version served before the current one, when known (after a rotation written or
    /// observed by this process, or version `n - 1` of a numbered version `n`).
    pub async fn previous(&self, name: &str) -> Option<Secret> {
        let c = self.slot_state(name)?;
        if let Some(p) = &c.previous {
            return Some(p.clone());
        }
        let n = c.secret.version().number().filter(|&n| n > 1)?;
        self.get_version(name, &Version::from(n - 1)).await.ok()
    }

    /// Write `value` as a new version of `name` through the first writable provider of the
    /// chain, serve it from now on (the old version stays readable through
    /// [`previous`](Self::previous) and [`get_version`](Self::get_version)), and announce
    /// the rotation.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when no provider can write, or when a provider earlier in the
    /// chain holds the name (the new version would never be served); the provider's error.
    pub async fn rotate(&self, name: &str, value: SecretString) -> Result<Secret> {
        let slot = self.slot(name)?;
        let _flight = slot.load.lock().await;
        let span = tracing::info_span!("secret_store.rotate", secret = %slot.name);
        async {
            let Some(at) = self.inner.providers.iter().position(|p| p.provider.writable()) else {
                return Err(Error::InvalidConfig(
                    "no provider in the chain can write a new version".to_owned(),
                ));
            };
            for earlier in &self.inner.providers[..at] {
                if let Ok(Some(_)) = self.call_get(earlier, &slot.name, None).await {
                    return Err(Error::InvalidConfig(format!(
                        "secret {:?} is held by `{}`, ahead of the writable provider `{}` in the chain",
                        slot.name.as_str(),
                        earlier.name,
                        self.inner.providers[at].name
                    )));
                }
            }
            let p = &self.inner.providers[at];
            let version = match tokio::time::timeout(
                self.inner.config.provider_timeout,
                p.provider.put(&slot.name, &value),
            )
            .await
            {
                Ok(r) => r?,
                Err(_) => return Err(Error::Timeout(self.inner.config.provider_timeout)),
            };
            let fetched = Fetched::new(value, version);
            let secret = Secret::from_parts(slot.name.clone(), fetched, p.name.clone());
            let previous = slot.state.load_full().map(|c| c.secret.clone());
            self.store(&slot, secret.clone(), previous.clone(), None);
            self.rotated(&secret, previous.as_ref(), RotationSource::Written);
            Ok(secret)
        }
        .instrument(span)
        .await
    }

    /// Run `call` with the secret; when it reports [`Refused::Credential`], run it again
    /// with the previous version (a rotation the other side has not caught up with), then
    /// with a freshly loaded value (a rotation this process has not seen yet). Each version
    /// is tried once.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use palisade_secret_store::{ExposeSecret, MemoryProvider, Refused, Secrets};
    /// let secrets = Secrets::builder().provider(MemoryProvider::new()).build()?;
    /// secrets.rotate("api-token", "old-token".into()).await?;
    /// secrets.rotate("api-token", "new-token".into()).await?;
    /// // The remote side still only accepts the old token.
    /// let answer = secrets
    ///     .with_secret("api-token", |token| async move {
    ///         if token.expose_secret() == "old-token" { Ok(200) } else { Err(Refused::Credential(401)) }
    ///     })
    ///     .await
    ///     .unwrap();
    /// assert_eq!(answer, 200);
    /// # Ok::<(), palisade_secret_store::Error>(()) }).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`UseError::Secret`] when the secret cannot be read, [`UseError::Other`] for a failure
    /// that is not a refusal, [`UseError::Refused`] when every version was refused.
    pub async fn with_secret<T, E, F, Fut>(&self, name: &str, mut call: F) -> Result<T, UseError<E>>
    where
        F: FnMut(Secret) -> Fut,
        Fut: Future<Output = Result<T, Refused<E>>>,
    {
        let current = self.get(name).await.map_err(UseError::Secret)?;
        let mut tried = vec![current.version().clone()];
        let mut refused = match call(current).await {
            Ok(t) => return Ok(t),
            Err(Refused::Other(e)) => return Err(UseError::Other(e)),
            Err(Refused::Credential(e)) => e,
        };
        tracing::info!(
            secret = name,
            "credential refused: trying the previous version"
        );
        if let Some(prev) = self.previous(name).await
            && !tried.contains(prev.version())
        {
            tried.push(prev.version().clone());
            match call(prev).await {
                Ok(t) => return Ok(t),
                Err(Refused::Other(e)) => return Err(UseError::Other(e)),
                Err(Refused::Credential(e)) => refused = e,
            }
        }
        tracing::info!(
            secret = name,
            "credential refused: loading the secret again"
        );
        if let Ok(fresh) = self.refresh(name).await
            && !tried.contains(fresh.version())
        {
            match call(fresh).await {
                Ok(t) => return Ok(t),
                Err(Refused::Other(e)) => return Err(UseError::Other(e)),
                Err(Refused::Credential(e)) => refused = e,
            }
        }
        Err(UseError::Refused(refused))
    }

    /// Rotation events: the latest [`Rotation`] (the channel keeps only the newest; use
    /// [`audit_events`](Self::audit_events) to see every one).
    pub fn rotations(&self) -> watch::Receiver<Option<Rotation>> {
        self.inner.rotations.subscribe()
    }

    /// Every audit event from now on (a bounded channel: a receiver that falls more than
    /// 1024 events behind loses the oldest). Events are also logged under the target
    /// `palisade_secret_store::audit`.
    pub fn audit_events(&self) -> broadcast::Receiver<AuditEvent> {
        self.inner.audit_subscribed.store(true, Ordering::Relaxed);
        self.inner.audit.subscribe()
    }

    /// The redactor every loaded value is added to: wrap the log writer with
    /// [`Redactor::make_writer`].
    pub fn redactor(&self) -> &Redactor {
        &self.inner.redactor
    }

    /// The settings in force.
    pub fn config(&self) -> &SecretsConfig {
        &self.inner.config
    }

    /// Check every provider (concurrently, each within the provider timeout).
    pub async fn health(&self) -> HealthReport {
        let t = self.inner.config.provider_timeout;
        let checks = self.inner.providers.iter().map(|p| async move {
            let start = Instant::now();
            let r = tokio::time::timeout(t, p.provider.health())
                .await
                .unwrap_or(Err(Error::Timeout(t)));
            p.metrics.up.set(if r.is_ok() { 1.0 } else { 0.0 });
            ProviderHealth {
                name: p.name.to_string(),
                healthy: r.is_ok(),
                latency_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                error: r.err().map(|e| ErrorChain(&e).to_string()),
            }
        });
        let providers = futures::future::join_all(checks).await;
        let slots = self.inner.slots.load();
        let (cached, resurrected) =
            slots
                .values()
                .fold((0, 0), |(c, r), s| match s.state.load().as_ref() {
                    Some(st) => (c + 1, r + usize::from(st.resurrected)),
                    None => (c, r),
                });
        HealthReport {
            healthy: providers.iter().all(|p| p.healthy),
            providers,
            cached_secrets: cached,
            resurrected_secrets: resurrected,
            snapshot_secrets: self.inner.snapshot.as_ref().map(Snapshot::len),
        }
    }

    // -- internals -------------------------------------------------------------------------

    fn slot_state(&self, name: &str) -> Option<Arc<Cached>> {
        self.inner.slots.load().get(name)?.state.load_full()
    }

    fn slot(&self, name: &str) -> Result<Arc<Slot>> {
        if let Some(s) = self.inner.slots.load().get(name) {
            return Ok(s.clone());
        }
        let name = SecretName::new(name)?;
        let _g = self.inner.insert_lock.lock();
        let current = self.inner.slots.load_full();
        if let Some(s) = current.get(&name) {
            return Ok(s.clone());
        }
        if current.len() >= self.inner.config.max_secrets {
            return Err(Error::InvalidConfig(format!(
                "the secret cache holds its maximum of {} names (max_secrets)",
                self.inner.config.max_secrets
            )));
        }
        let slot = Arc::new(Slot {
            reads: self
                .inner
                .config
                .secret_name_labels
                .then(|| ReadCounters::new(Some(&name))),
            name: name.clone(),
            state: ArcSwapOption::empty(),
            refreshing: AtomicBool::new(false),
            load: tokio::sync::Mutex::new(()),
        });
        let mut map = SlotMap::clone(&current);
        map.insert(name, slot.clone());
        self.inner.cached.set(map.len() as f64);
        self.inner.slots.store(Arc::new(map));
        Ok(slot)
    }

    /// Start one background refresh of a stale value; `false` when there is no tokio
    /// runtime to run it on (the caller loads in the foreground instead).
    fn refresh_in_background(&self, slot: &Arc<Slot>) -> bool {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if slot.refreshing.swap(true, Ordering::AcqRel) {
            return true;
        }
        let this = self.clone();
        let slot = slot.clone();
        handle.spawn(async move {
            {
                let _flight = slot.load.lock().await;
                let still_stale = slot
                    .state
                    .load()
                    .as_ref()
                    .is_none_or(|c| c.fresh.read(this.inner.clock.now_micros()) != Read::Fresh);
                if still_stale {
                    let _ = this.load_slot(&slot).await;
                }
            }
            slot.refreshing.store(false, Ordering::Release);
        });
        true
    }

    async fn load(&self, name: &str, force: bool) -> Result<Secret> {
        let slot = self.slot(name)?;
        let _flight = slot.load.lock().await;
        if !force
            && let Some(c) = slot.state.load_full()
            && c.fresh.read(self.inner.clock.now_micros()) != Read::Expired
        {
            // Loaded by the caller we waited for.
            return Ok(c.secret.clone());
        }
        let result = self.load_slot(&slot).await;
        if result.is_err() && slot.state.load().is_none() {
            // Nothing to keep for this name: forget it, so that names that fail (a typo, a
            // caller probing names) do not use up `max_secrets`.
            self.forget_slot(&slot);
        }
        result
    }

    fn forget_slot(&self, slot: &Arc<Slot>) {
        let _g = self.inner.insert_lock.lock();
        let current = self.inner.slots.load_full();
        if current
            .get(&slot.name)
            .is_some_and(|s| Arc::ptr_eq(s, slot))
        {
            let mut map = SlotMap::clone(&current);
            map.remove(&slot.name);
            self.inner.cached.set(map.len() as f64);
            self.inner.slots.store(Arc::new(map));
        }
    }

    async fn load_slot(&self, slot: &Arc<Slot>) -> Result<Secret> {
        let span = tracing::debug_span!("secret_store.load", secret = %slot.name);
        let reads = slot.reads.as_ref().unwrap_or(&self.inner.reads);
        let result = self.fetch(&slot.name, None).instrument(span).await;
        let now = self.inner.clock.now_micros();
        let old = slot.state.load_full();
        match result {
            Ok((fetched, i)) => {
                reads.loaded.increment(1);
                let expiry = fetched.expires_at.map(to_micros);
                let secret = Secret::from_parts(
                    slot.name.clone(),
                    fetched,
                    self.inner.providers[i].name.clone(),
                );
                let changed = old.as_ref().is_some_and(|c| {
                    c.secret.version() != secret.version()
                        || !c.secret.same_value(secret.expose_secret())
                });
                let previous = match &old {
                    Some(c) if changed => Some(c.secret.clone()),
                    Some(c) => c.previous.clone(),
                    None => None,
                };
                self.store(slot, secret.clone(), previous.clone(), expiry);
                self.audit(AuditKind::Refreshed, &secret, None);
                if changed
                    && old
                        .as_ref()
                        .is_some_and(|c| !c.resurrected || c.secret.version() != secret.version())
                {
                    self.rotated(&secret, previous.as_ref(), RotationSource::Observed);
                }
                Ok(secret)
            }
            Err(error) => {
                self.audit_failure(&slot.name, &error);
                if error.is_not_found() {
                    slot.state.store(None);
                    self.forget_snapshot(&slot.name);
                    reads.not_found.increment(1);
                    return Err(error);
                }
                if let Some(c) = old {
                    match c
                        .fresh
                        .failed(&self.inner.config, now, error.is_transient())
                    {
                        Failed::Serve(fresh) => {
                            slot.state.store(Some(Arc::new(Cached {
                                secret: c.secret.clone(),
                                previous: c.previous.clone(),
                                fresh,
                                resurrected: true,
                            })));
                            reads.resurrected.increment(1);
                            self.resurrected(&c.secret, &error, fresh.serve_until);
                            return Ok(c.secret.clone());
                        }
                        Failed::Drop => slot.state.store(None),
                    }
                } else if error.is_transient()
                    && let Some(secret) = self.resurrect_from_snapshot(slot, now)
                {
                    reads.resurrected.increment(1);
                    self.resurrected(&secret, &error, now);
                    return Ok(secret);
                }
                if error.is_denied() {
                    self.forget_snapshot(&slot.name);
                }
                reads.error.increment(1);
                Err(error)
            }
        }
    }

    fn resurrect_from_snapshot(&self, slot: &Arc<Slot>, now: u64) -> Option<Secret> {
        let snap = self.inner.snapshot.as_ref()?.get(&slot.name)?;
        let fresh = Freshness::from_snapshot(&self.inner.config, snap.loaded_at, now)?;
        let secret = Secret::from_parts(
            slot.name.clone(),
            Fetched::new(snap.value, snap.version),
            Arc::from("snapshot"),
        );
        self.inner.redactor.add_secret(&secret);
        slot.state.store(Some(Arc::new(Cached {
            secret: secret.clone(),
            previous: None,
            fresh,
            resurrected: true,
        })));
        Some(secret)
    }

    fn store(&self, slot: &Slot, secret: Secret, previous: Option<Secret>, expiry: Option<u64>) {
        let now = self.inner.clock.now_micros();
        let jitter = if self.inner.config.refresh_jitter > 0.0 {
            rand::random::<f64>()
        } else {
            0.0
        };
        let fresh = Freshness::loaded(&self.inner.config, now, jitter, expiry);
        self.inner.redactor.add_secret(&secret);
        if let Some(snapshot) = &self.inner.snapshot {
            let entry = SnapEntry {
                version: secret.version().clone(),
                provider: secret.provider().to_owned(),
                loaded_at: now,
                value: SecretString::from(secret.expose_secret()),
            };
            match snapshot.record(
                &slot.name,
                entry,
                micros(self.inner.config.snapshot_max_age),
            ) {
                Ok(true) => self.inner.snapshot_ok.increment(1),
                Ok(false) => {}
                Err(e) => {
                    self.inner.snapshot_err.increment(1);
                    tracing::warn!(error = %ErrorChain(&e), "secret snapshot not written");
                }
            }
        }
        slot.state.store(Some(Arc::new(Cached {
            secret,
            previous,
            fresh,
            resurrected: false,
        })));
    }

    fn forget_snapshot(&self, name: &SecretName) {
        if let Some(snapshot) = &self.inner.snapshot
            && let Err(e) = snapshot.forget(name)
        {
            self.inner.snapshot_err.increment(1);
            tracing::warn!(error = %ErrorChain(&e), "secret snapshot not written");
        }
    }

    async fn call_get(
        &self,
        p: &ChainProvider,
        name: &SecretName,
        version: Option<&Version>,
    ) -> Result<Option<Fetched>> {
        let t = self.inner.config.provider_timeout;
        let start = Instant::now();
        let r = tokio::time::timeout(t, p.provider.get(name, version))
            .await
            .unwrap_or(Err(Error::Timeout(t)));
        p.metrics.duration.record(start.elapsed().as_secs_f64());
        match &r {
            Ok(Some(_)) => p.metrics.hit.increment(1),
            Ok(None) | Err(Error::InvalidName { .. }) => p.metrics.miss.increment(1),
            Err(e) => {
                p.metrics.error.increment(1);
                p.metrics.error_kind(e.kind());
                tracing::warn!(provider = %p.name, secret = %name, error = %ErrorChain(e), "secret provider failed");
            }
        }
        r
    }

    /// Ask the chain in order. Misses and transient failures move on; a permanent failure
    /// stops the chain; with no answer, the first failure (or `NotFound`).
    async fn fetch(
        &self,
        name: &SecretName,
        version: Option<&Version>,
    ) -> Result<(Fetched, usize)> {
        let mut first: Option<Error> = None;
        for (i, p) in self.inner.providers.iter().enumerate() {
            match self.call_get(p, name, version).await {
                Ok(Some(f)) => return Ok((f, i)),
                Ok(None) | Err(Error::InvalidName { .. }) => {}
                Err(e) if e.is_transient() => {
                    first.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(first.unwrap_or_else(|| Error::NotFound(name.as_str().to_owned())))
    }

    fn audit(&self, kind: AuditKind, secret: &Secret, error: Option<String>) {
        match kind {
            AuditKind::Read => tracing::trace!(
                target: "palisade_secret_store::audit", secret = %secret.name(), version = %secret.version(), "secret read"
            ),
            _ => tracing::info!(
                target: "palisade_secret_store::audit", event = ?kind, secret = %secret.name(), version = %secret.version(), provider = secret.provider(), "secret {kind:?}"
            ),
        }
        if self.inner.audit.receiver_count() > 0 {
            let _ = self.inner.audit.send(AuditEvent {
                kind,
                name: secret.name().clone(),
                version: Some(secret.version().clone()),
                provider: Some(secret.provider().to_owned()),
                at: self.now(),
                error,
            });
        }
    }

    fn audit_failure(&self, name: &SecretName, error: &Error) {
        tracing::warn!(target: "palisade_secret_store::audit", secret = %name, error = %ErrorChain(error), "secret load failed");
        if self.inner.audit.receiver_count() > 0 {
            let _ = self.inner.audit.send(AuditEvent {
                kind: AuditKind::Failed,
                name: name.clone(),
                version: None,
                provider: None,
                at: self.now(),
                error: Some(ErrorChain(error).to_string()),
            });
        }
    }

    fn resurrected(&self, secret: &Secret, error: &Error, until: u64) {
        tracing::warn!(
            target: "palisade_secret_store::audit",
            secret = %secret.name(),
            version = %secret.version(),
            from = secret.provider(),
            until = ?from_micros(until),
            error = %ErrorChain(error),
            "providers failing: serving the last-known-good value"
        );
        if self.inner.audit.receiver_count() > 0 {
            let _ = self.inner.audit.send(AuditEvent {
                kind: AuditKind::Resurrected,
                name: secret.name().clone(),
                version: Some(secret.version().clone()),
                provider: Some(secret.provider().to_owned()),
                at: self.now(),
                error: Some(ErrorChain(error).to_string()),
            });
        }
    }

    fn rotated(&self, secret: &Secret, previous: Option<&Secret>, source: RotationSource) {
        match source {
            RotationSource::Written => self.inner.rotations_written.increment(1),
            RotationSource::Observed => self.inner.rotations_observed.increment(1),
        }
        self.audit(AuditKind::Rotated, secret, None);
        let _ = self.inner.rotations.send_replace(Some(Rotation {
            name: secret.name().clone(),
            previous: previous.map(|p| p.version().clone()),
            current: secret.version().clone(),
            source,
            at: self.now(),
        }));
    }

    fn now(&self) -> SystemTime {
        from_micros(self.inner.clock.now_micros())
    }
}
