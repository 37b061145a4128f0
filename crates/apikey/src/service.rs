//! [`ApiKeys`]: the service type — create, verify, list, revoke, rotate, rescope.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ipnet::IpNet;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::audit::{AuditEvent, AuditKind, AuditSink};
use crate::clock::{Clock, SystemClock, micros};
use crate::error::{Error, Result};
use crate::key::{self, Env, FormatError, KeyId, ParsedKey, PlaintextKey, Prefix};
use crate::memory::MemoryStore;
use crate::pepper::{Peppers, hashes_equal};
use crate::record::{CreditOutcome, Credits, KeyRecord, KeyStatus, Refill, Scopes};
use crate::store::{RotateOutcome, Store, Usage};
use crate::verification::{Denial, Verification, Verified};

/// What an [`ApiKeys`] does when its [`Store`] fails (or times out) in the middle of a
/// verification. A key whose record is not in the verify cache can never be accepted
/// without the store, whatever the mode: its owner and scopes are unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureMode {
    /// Verification returns the error (the tower layer answers 503). The default: an
    /// authentication check that passes when it cannot check is rarely what a public API
    /// wants.
    #[default]
    FailClosed,
    /// Records come only from the verify cache (within its bound, as always); a metered
    /// key whose credits cannot be charged is admitted uncharged.
    FailOpen,
    /// Records come only from the verify cache (within its bound); a metered key is charged
    /// against the balance last seen, kept in this instance's memory until the store
    /// answers again (so a fleet of N instances can overspend a balance up to N times
    /// while the store is down).
    FallbackToMemory,
}

/// Settings of an [`ApiKeys`]; serde with humantime durations (`"5s"`, `"90days"`).
///
/// ```
/// let c: palisade_apikey::Config = serde_json::from_str(
///     r#"{"prefix": "acme", "default_expiry": "90days", "cache_ttl": "2s"}"#,
/// ).unwrap();
/// assert_eq!(c.cache_ttl, std::time::Duration::from_secs(2));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Config {
    /// Readable prefix of new keys (`pk`).
    pub prefix: String,
    /// Environment of new keys unless a [`KeySpec`] says otherwise (`live`).
    pub env: Env,
    /// Lifetime of new keys unless a [`KeySpec`] says otherwise (none: keys never expire).
    #[serde(with = "humantime_serde")]
    pub default_expiry: Option<Duration>,
    /// The verify cache's staleness bound: a record read from a remote store is reused for
    /// at most this long. A revocation, rotation or scope change made on any instance is
    /// seen everywhere within this bound even if the change feed is down (with the feed,
    /// within about one round trip). Zero turns the cache off. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Most records in the verify cache (default 100 000).
    pub cache_capacity: u64,
    /// How often batched usage (use counts, last-used times) is written (default 10 s).
    #[serde(with = "humantime_serde")]
    pub usage_flush_interval: Duration,
    /// Most keys with unflushed usage; past it, a flush starts at once (default 100 000).
    pub max_pending_usage: usize,
    /// What a store failure means (default [`FailureMode::FailClosed`]).
    pub failure_mode: FailureMode,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            prefix: "pk".to_owned(),
            env: Env::Live,
            default_expiry: None,
            cache_ttl: Duration::from_secs(5),
            cache_capacity: 100_000,
            usage_flush_interval: Duration::from_secs(10),
            max_pending_usage: 100_000,
            failure_mode: FailureMode::FailClosed,
        }
    }
}

/// What a verification asks for besides the key (see [`ApiKeys::verify_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyRequest<'a> {
    /// A scope the key must grant.
    pub scope: Option<&'a str>,
    /// The client's address, checked against the key's allowlist.
    pub ip: Option<IpAddr>,
    /// Credits a metered key spends (default 1; 0 checks without spending).
    pub cost: u64,
    /// Charge at most once per this key (retries of one request).
    pub idempotency_key: Option<&'a str>,
}

impl Default for VerifyRequest<'_> {
    fn default() -> Self {
        Self {
            scope: None,
            ip: None,
            cost: 1,
            idempotency_key: None,
        }
    }
}

impl<'a> VerifyRequest<'a> {
    /// No scope, no address, cost 1.
    pub fn new() -> Self {
        Self::default()
    }
    /// Require `scope`.
    #[must_use]
    pub fn scope(mut self, scope: &'a str) -> Self {
        self.scope = Some(scope);
        self
    }
    /// The client's address.
    #[must_use]
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }
    /// Credits to spend.
    #[must_use]
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = cost;
        self
    }
    /// Charge once per `key`.
    #[must_use]
    pub fn idempotency_key(mut self, key: &'a str) -> Self {
        self.idempotency_key = Some(key);
        self
    }
}

/// What a new key looks like (see [`ApiKeys::create`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeySpec {
    /// Owner (user, team or tenant id): 1 to 256 bytes.
    pub owner: String,
    /// Human name: at most 256 bytes.
    pub name: String,
    /// Scopes to grant.
    pub scopes: Vec<String>,
    /// Environment (the service's default when `None`).
    pub env: Option<Env>,
    /// Lifetime: `None` takes the service's default, `Some(None)` never expires.
    pub expires_in: Option<Option<Duration>>,
    /// Metadata (at most 64 entries of at most 1 KiB each).
    pub metadata: BTreeMap<String, String>,
    /// Rate-limit policy name.
    pub rate_limit_policy: Option<String>,
    /// Allowed client networks (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`).
    pub allowed_ips: Vec<String>,
    /// Credit balance and refill.
    pub credits: Option<(u64, Option<Refill>)>,
}

impl KeySpec {
    /// A key for `owner` called `name`, no scopes.
    pub fn new(owner: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            owner: owner.into(),
            name: name.into(),
            scopes: Vec::new(),
            env: None,
            expires_in: None,
            metadata: BTreeMap::new(),
            rate_limit_policy: None,
            allowed_ips: Vec::new(),
            credits: None,
        }
    }
    /// Grant these scopes.
    #[must_use]
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }
    /// In this environment.
    #[must_use]
    pub fn env(mut self, env: Env) -> Self {
        self.env = Some(env);
        self
    }
    /// Expire after `lifetime`.
    #[must_use]
    pub fn expires_in(mut self, lifetime: Duration) -> Self {
        self.expires_in = Some(Some(lifetime));
        self
    }
    /// Never expire (whatever the service's default).
    #[must_use]
    pub fn never_expires(mut self) -> Self {
        self.expires_in = Some(None);
        self
    }
    /// Add a metadata entry.
    #[must_use]
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
    /// Run requests with this key under the rate-limit policy `name`.
    #[must_use]
    pub fn rate_limit_policy(mut self, name: impl Into<String>) -> Self {
        self.rate_limit_policy = Some(name.into());
        self
    }
    /// Accept the key only from these networks.
    #[must_use]
    pub fn allowed_ips<I: IntoIterator<Item = S>, S: Into<String>>(mut self, nets: I) -> Self {
        self.allowed_ips = nets.into_iter().map(Into::into).collect();
        self
    }
    /// Meter the key: `credits` to start with, refilled to `refill.amount` every
    /// `refill.interval` when given.
    #[must_use]
    pub fn credits(mut self, credits: u64, refill: Option<Refill>) -> Self {
        self.credits = Some((credits, refill));
        self
    }
}

/// A key just made: its plain text (shown once, never printed) and its record.
#[derive(Debug)]
#[non_exhaustive]
pub struct CreatedKey {
    /// The key to hand to its owner, once.
    pub key: PlaintextKey,
    /// What the store keeps.
    pub record: KeyRecord,
}

/// Most balances kept for [`FailureMode::FallbackToMemory`].
const MAX_LOCAL_BALANCES: usize = 100_000;

#[derive(Clone)]
struct CacheEntry {
    record: Option<Arc<KeyRecord>>,
    fetched_at: u64,
}

struct Inner {
    store: Arc<dyn Store>,
    peppers: Peppers,
    prefix: Prefix,
    config: Config,
    clock: Arc<dyn Clock>,
    cache: Option<moka::sync::Cache<KeyId, CacheEntry>>,
    cache_ttl: u64,
    usage: Mutex<HashMap<KeyId, (u64, u64)>>,
    local_credits: Mutex<HashMap<KeyId, u64>>,
    audit: Option<Arc<dyn AuditSink>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().drain(..) {
            t.abort();
        }
    }
}

/// API keys with their whole lifecycle: create (shown once, stored as HMAC-SHA256 under a
/// server pepper), verify (format and checksum first, then one lookup, a constant-time
/// compare, status, expiry, allowlist, scope and credits), list by owner, revoke, rotate
/// with a grace period, rescope. Cheap to clone (one `Arc`).
///
/// ```
/// use palisade_apikey::{ApiKeys, KeySpec, MemoryStore, Pepper, Peppers, Denial};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> palisade_apikey::Result<()> {
/// let keys = ApiKeys::builder(Peppers::new(Pepper::new(1, [7u8; 32])?))
///     .store(MemoryStore::new())
///     .build()?;
/// let created = keys.create(KeySpec::new("team-42", "CI").scopes(["deploy:*"])).await?;
/// let text = created.key.expose_secret(); // show once
///
/// let ok = keys.verify(text, "deploy:prod").await?;
/// assert!(ok.is_verified());
/// assert_eq!(keys.verify(text, "billing:read").await?.denial(), Some(Denial::InsufficientScope));
///
/// keys.revoke(&created.record.id).await?;
/// assert_eq!(keys.verify(text, "deploy:prod").await?.denial(), Some(Denial::Revoked));
/// # Ok(()) }
/// ```
///
/// Background work (started by [`ApiKeysBuilder::build`] when called inside a tokio
/// runtime, stopped when the last clone drops): the usage flush every
/// `usage_flush_interval`, and for remote stores the change-feed follower that drops
/// changed keys from the verify cache.
///
/// Metrics (labels are bounded; never a key id or owner):
/// `palisade_apikey_verifications_total{outcome}`,
/// `palisade_apikey_verify_duration_seconds{backend}`,
/// `palisade_apikey_cache_lookups_total{result}`,
/// `palisade_apikey_backend_errors_total{operation}`,
/// `palisade_apikey_lifecycle_total{event}`, `palisade_apikey_grace_uses_total`,
/// `palisade_apikey_usage_flushes_total{result}`,
/// `palisade_apikey_token_verifications_total{outcome}`.
/// Spans: `apikey.create`, `apikey.verify`, `apikey.revoke`, `apikey.rotate`,
/// `apikey.update_scopes`, `apikey.flush_usage`.
#[derive(Clone)]
pub struct ApiKeys {
    inner: Arc<Inner>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("store", &self.inner.store)
            .field("prefix", &self.inner.prefix)
            .field("config", &self.inner.config)
            .field("peppers", &self.inner.peppers)
            .finish_non_exhaustive()
    }
}

/// Builds an [`ApiKeys`]; see [`ApiKeys::builder`].
#[derive(Debug)]
pub struct ApiKeysBuilder {
    peppers: Peppers,
    store: Option<Arc<dyn Store>>,
    config: Config,
    clock: Arc<dyn Clock>,
    audit: Option<Arc<dyn AuditSink>>,
}

impl ApiKeysBuilder {
    /// The store (default: a [`MemoryStore`]).
    #[must_use]
    pub fn store(mut self, store: impl Store + 'static) -> Self {
        self.store = Some(Arc::new(store));
        self
    }
    /// The store, shared.
    #[must_use]
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }
    /// All settings at once.
    #[must_use]
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }
    /// Prefix of new keys.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.prefix = prefix.into();
        self
    }
    /// Default environment of new keys.
    #[must_use]
    pub fn env(mut self, env: Env) -> Self {
        self.config.env = env;
        self
    }
    /// Default lifetime of new keys.
    #[must_use]
    pub fn default_expiry(mut self, lifetime: Duration) -> Self {
        self.config.default_expiry = Some(lifetime);
        self
    }
    /// The verify cache's staleness bound (zero: no cache).
    #[must_use]
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.config.cache_ttl = ttl;
        self
    }
    /// What a store failure means.
    #[must_use]
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.config.failure_mode = mode;
        self
    }
    /// The clock (a [`FakeClock`](crate::FakeClock) in tests).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }
    /// Where audit events go besides `tracing`.
    #[must_use]
    pub fn audit_sink(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    /// Build it. Inside a tokio runtime this starts the background usage flush and, for a
    /// store with a change feed, the cache follower.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad prefix or zero limits.
    pub fn build(self) -> Result<ApiKeys> {
        let prefix = Prefix::new(self.config.prefix.clone())?;
        if self.config.usage_flush_interval.is_zero() || self.config.max_pending_usage == 0 {
            return Err(Error::InvalidConfig(
                "usage_flush_interval and max_pending_usage must be above zero".into(),
            ));
        }
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::new()) as Arc<dyn Store>);
        let cache_ttl = micros(self.config.cache_ttl);
        let cache =
            (store.is_remote() && cache_ttl > 0 && self.config.cache_capacity > 0).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(self.config.cache_capacity)
                    .time_to_live(self.config.cache_ttl)
                    .build()
            });
        let inner = Arc::new(Inner {
            store,
            peppers: self.peppers,
            prefix,
            config: self.config,
            clock: self.clock,
            cache,
            cache_ttl,
            usage: Mutex::new(HashMap::new()),
            local_credits: Mutex::new(HashMap::new()),
            audit: self.audit,
            tasks: Mutex::new(Vec::new()),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            let mut tasks = Vec::new();
            tasks.push(tokio::spawn(usage_flusher(
                Arc::downgrade(&inner),
                inner.config.usage_flush_interval,
            )));
            if inner.cache.is_some()
                && let Some(rx) = inner.store.changes()
            {
                tasks.push(tokio::spawn(cache_follower(Arc::downgrade(&inner), rx)));
            }
            *inner.tasks.lock() = tasks;
        }
        Ok(ApiKeys { inner })
    }
}

async fn usage_flusher(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let _ = ApiKeys { inner }.flush_usage().await;
    }
}

async fn cache_follower(inner: Weak<Inner>, mut rx: tokio::sync::broadcast::Receiver<KeyId>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let msg = rx.recv().await;
        let Some(inner) = inner.upgrade() else { return };
        let Some(cache) = &inner.cache else { return };
        match msg {
            Ok(id) => cache.invalidate(&id),
            Err(RecvError::Lagged(_)) => cache.invalidate_all(),
            Err(RecvError::Closed) => return,
        }
    }
}

/// Count one verification. Every label value is spelled out as a literal so the `metrics`
/// macros use static keys: a runtime label value costs a heap allocation per call.
fn record_verification(outcome: &'static str, backend: &'static str, took: Duration) {
    macro_rules! by_outcome {
        ($($l:literal),*) => {
            match outcome {
                $($l => metrics::counter!("palisade_apikey_verifications_total", "outcome" => $l).increment(1),)*
                other => metrics::counter!("palisade_apikey_verifications_total", "outcome" => other).increment(1),
            }
        };
    }
    by_outcome!(
        "verified",
        "malformed",
        "bad_checksum",
        "not_found",
        "revoked",
        "expired",
        "insufficient_scope",
        "ip_not_allowed",
        "out_of_credits",
        "error"
    );
    let secs = took.as_secs_f64();
    match backend {
        "memory" => {
            metrics::histogram!("palisade_apikey_verify_duration_seconds", "backend" => "memory")
                .record(secs);
        }
        "redis" => {
            metrics::histogram!("palisade_apikey_verify_duration_seconds", "backend" => "redis")
                .record(secs);
        }
        other => metrics::histogram!("palisade_apikey_verify_duration_seconds", "backend" => other)
            .record(secs),
    }
}

fn check_text(what: &str, s: &str, max: usize) -> Result<()> {
    if s.len() > max || s.chars().any(char::is_control) {
        return Err(Error::InvalidConfig(format!(
            "{what} is longer than {max} bytes or holds control characters"
        )));
    }
    Ok(())
}

impl ApiKeys {
    /// A builder with these peppers, a [`MemoryStore`], the [`SystemClock`] and the default
    /// [`Config`].
    pub fn builder(peppers: Peppers) -> ApiKeysBuilder {
        ApiKeysBuilder {
            peppers,
            store: None,
            config: Config::default(),
            clock: Arc::new(SystemClock),
            audit: None,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    fn now(&self) -> u64 {
        self.inner.clock.now_micros()
    }

    fn audit(&self, kind: AuditKind, record: Option<&KeyRecord>, id: Option<KeyId>) {
        let event = AuditEvent {
            kind,
            key_id: record.map(|r| r.id).or(id),
            owner: record.map(|r| r.owner.clone()),
            at: self.now(),
        };
        let key_id = event.key_id.as_ref().map(KeyId::as_str);
        match &event.kind {
            AuditKind::Denied(d) => tracing::info!(
                target: "palisade_apikey::audit",
                event = "denied", reason = d.as_str(), key_id, owner = event.owner.as_deref(),
                "api key denied"
            ),
            AuditKind::Rotated { successor } => tracing::info!(
                target: "palisade_apikey::audit",
                event = "rotated", key_id, successor = successor.as_str(), owner = event.owner.as_deref(),
                "api key rotated"
            ),
            AuditKind::GraceUse => tracing::warn!(
                target: "palisade_apikey::audit",
                event = "grace_use", key_id, owner = event.owner.as_deref(),
                "rotated api key used during its grace period"
            ),
            other => tracing::info!(
                target: "palisade_apikey::audit",
                event = other.as_str(), key_id, owner = event.owner.as_deref(),
                "api key {}", other.as_str()
            ),
        }
        if let Some(sink) = &self.inner.audit {
            sink.record(&event);
        }
    }

    fn backend_error(&self, operation: &'static str, e: &Error) {
        metrics::counter!("palisade_apikey_backend_errors_total", "operation" => operation)
            .increment(1);
        tracing::warn!(
            operation,
            backend = self.inner.store.backend_name(),
            error = %e,
            transient = e.is_transient(),
            "api-key store failed"
        );
    }

    fn lifecycle(event: &'static str) {
        metrics::counter!("palisade_apikey_lifecycle_total", "event" => event).increment(1);
    }

    fn build_record(&self, spec: &KeySpec, now: u64) -> Result<KeyRecord> {
        if spec.owner.is_empty() {
            return Err(Error::InvalidConfig("a key needs an owner".into()));
        }
        check_text("owner", &spec.owner, 256)?;
        check_text("name", &spec.name, 256)?;
        if spec.metadata.len() > 64 {
            return Err(Error::InvalidConfig("at most 64 metadata entries".into()));
        }
        for (k, v) in &spec.metadata {
            if k.len() > 1024 || v.len() > 1024 {
                return Err(Error::InvalidConfig(
                    "metadata keys and values are at most 1 KiB".into(),
                ));
            }
        }
        if let Some(p) = &spec.rate_limit_policy {
            check_text("rate_limit_policy", p, 256)?;
        }
        if spec.allowed_ips.len() > 256 {
            return Err(Error::InvalidConfig("at most 256 allowed networks".into()));
        }
        let allowed_ips = spec
            .allowed_ips
            .iter()
            .map(|s| {
                IpNet::from_str(s)
                    .or_else(|_| IpAddr::from_str(s).map(IpNet::from))
                    .map_err(|_| Error::InvalidConfig(format!("{s:?} is not a CIDR or address")))
            })
            .collect::<Result<Vec<_>>>()?;
        let lifetime = spec.expires_in.unwrap_or(self.inner.config.default_expiry);
        Ok(KeyRecord {
            id: KeyId::random(None)?,
            prefix: self.inner.prefix.as_str().to_owned(),
            env: spec.env.unwrap_or(self.inner.config.env),
            owner: spec.owner.clone(),
            name: spec.name.clone(),
            scopes: Scopes::new(spec.scopes.iter().map(String::as_str))?,
            created_at: now,
            expires_at: lifetime.map(|l| now.saturating_add(micros(l))),
            last_used_at: None,
            uses: 0,
            status: KeyStatus::Active,
            revoked_at: None,
            grace_until: None,
            rotated_to: None,
            rotated_from: None,
            metadata: spec.metadata.clone(),
            rate_limit_policy: spec.rate_limit_policy.clone(),
            allowed_ips,
            credits: spec.credits.map(|(remaining, refill)| Credits {
                remaining,
                refill,
                refilled_at: now,
            }),
            hash_version: self.inner.peppers.current_version(),
            hash: [0; 32],
        })
    }

    /// Give `record` a fresh key (id in `family` when given) and its hash; the key's text.
    fn mint(&self, record: &mut KeyRecord, family: Option<&KeyId>) -> Result<PlaintextKey> {
        let version = self.inner.peppers.current_version();
        let prefix = Prefix::new(record.prefix.clone())?;
        let new = key::generate(&prefix, record.env, version, family)?;
        record.id = new.id;
        record.hash_version = version;
        record.hash = self
            .inner
            .peppers
            .hash_key(version, &new.id, &new.secret[..])
            .ok_or_else(|| Error::InvalidConfig("no current pepper".into()))?;
        Ok(new.text)
    }

    /// Create a key. The returned [`CreatedKey::key`] is the only time the plain text
    /// exists outside its owner's hands: the store keeps only its HMAC.
    ///
    /// Cost: one store write (plus the owner-index update, a separate idempotent step).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad spec; backend failures.
    #[tracing::instrument(name = "apikey.create", skip_all, fields(key_id))]
    pub async fn create(&self, spec: KeySpec) -> Result<CreatedKey> {
        let now = self.now();
        let mut record = self.build_record(&spec, now)?;
        for _ in 0..4 {
            let key = self.mint(&mut record, None)?;
            match self.inner.store.insert(&record).await {
                Ok(true) => {
                    tracing::Span::current().record("key_id", record.id.as_str());
                    Self::lifecycle("created");
                    self.audit(AuditKind::Created, Some(&record), None);
                    return Ok(CreatedKey { key, record });
                }
                Ok(false) => continue,
                Err(e) => {
                    self.backend_error("create", &e);
                    return Err(e);
                }
            }
        }
        Err(Error::InvalidConfig(
            "four random key ids in a row were taken: the random number generator is broken".into(),
        ))
    }

    /// Verify `key` and require `scope` (`""` requires none); spends 1 credit of a
    /// metered key. See [`verify_with`](Self::verify_with).
    ///
    /// # Errors
    /// Backend failures, under [`FailureMode::FailClosed`].
    pub async fn verify(&self, key: &str, scope: &str) -> Result<Verification> {
        let req = VerifyRequest {
            scope: (!scope.is_empty()).then_some(scope),
            ..VerifyRequest::default()
        };
        self.verify_with(key, &req).await
    }

    /// Verify `key` against `req`. In order: format and checksum (no lookup), the record
    /// (verify cache, else one store read), the HMAC of the secret in constant time
    /// (a wrong secret looks like an unknown id), revocation, expiry and grace, the IP
    /// allowlist, the scope, and last the credits (one atomic store operation; a denial
    /// before it spends nothing). A key hashed under an older pepper is re-hashed under the
    /// current one on success.
    ///
    /// Cost with a memory store: no I/O, one HMAC-SHA256 of 48 bytes (two SHA-256 blocks).
    /// With Redis: zero round trips on a fresh cache hit, one on a miss, plus one for a
    /// metered key.
    ///
    /// # Errors
    /// Backend failures, as the [`FailureMode`] says.
    pub async fn verify_with(&self, key: &str, req: &VerifyRequest<'_>) -> Result<Verification> {
        let started = std::time::Instant::now();
        let outcome = self.verify_inner(key, req).await;
        let label = match &outcome {
            Ok(Verification::Verified(_)) => "verified",
            Ok(Verification::Denied(d)) => d.as_str(),
            Err(_) => "error",
        };
        record_verification(label, self.inner.store.backend_name(), started.elapsed());
        outcome
    }

    fn deny(&self, denial: Denial, record: Option<&KeyRecord>, id: Option<KeyId>) -> Verification {
        self.audit(AuditKind::Denied(denial), record, id);
        Verification::Denied(denial)
    }

    async fn verify_inner(&self, key: &str, req: &VerifyRequest<'_>) -> Result<Verification> {
        let parsed = match ParsedKey::parse(key) {
            Ok(p) if p.prefix() == self.inner.prefix.as_str() => p,
            Ok(_) | Err(FormatError::Malformed) => {
                return Ok(self.deny(Denial::Malformed, None, None));
            }
            Err(FormatError::BadChecksum) => return Ok(self.deny(Denial::BadChecksum, None, None)),
        };
        let id = parsed.id();
        let now = self.now();
        let Some(record) = self.lookup(&id, now).await? else {
            return Ok(self.deny(Denial::NotFound, None, Some(id)));
        };
        let Some(hash) = self
            .inner
            .peppers
            .hash_key(record.hash_version, &id, parsed.secret())
        else {
            tracing::warn!(
                key_id = id.as_str(),
                hash_version = record.hash_version,
                "api key hashed under a pepper version this service does not have"
            );
            return Ok(self.deny(Denial::NotFound, None, Some(id)));
        };
        if !hashes_equal(&hash, &record.hash) || record.env != parsed.env() {
            return Ok(self.deny(Denial::NotFound, None, Some(id)));
        }
        let in_grace = match record.status_at(now) {
            KeyStatus::Active => false,
            KeyStatus::Rotating => true,
            KeyStatus::Revoked => return Ok(self.deny(Denial::Revoked, Some(&record), None)),
            _ => return Ok(self.deny(Denial::Expired, Some(&record), None)),
        };
        if !record.ip_allowed(req.ip) {
            return Ok(self.deny(Denial::IpNotAllowed, Some(&record), None));
        }
        if let Some(scope) = req.scope
            && !record.scopes.grants(scope)
        {
            return Ok(self.deny(Denial::InsufficientScope, Some(&record), None));
        }
        let mut credits_remaining = None;
        if record.credits.is_some() && req.cost > 0 {
            match self.charge(&record, req, now).await? {
                CreditOutcome::Charged { remaining, .. } => credits_remaining = Some(remaining),
                CreditOutcome::OutOfCredits { .. } => {
                    return Ok(self.deny(Denial::OutOfCredits, Some(&record), None));
                }
                CreditOutcome::NotActive => {
                    self.forget(&id);
                    return Ok(self.deny(Denial::Revoked, Some(&record), None));
                }
                CreditOutcome::NotFound => {
                    self.forget(&id);
                    return Ok(self.deny(Denial::NotFound, None, Some(id)));
                }
                CreditOutcome::Unlimited => {}
            }
        }
        if record.hash_version != self.inner.peppers.current_version() {
            self.upgrade_hash(&record, parsed.secret()).await;
        }
        if in_grace {
            metrics::counter!("palisade_apikey_grace_uses_total").increment(1);
            self.audit(AuditKind::GraceUse, Some(&record), None);
        }
        self.note_use(id, now);
        Ok(Verification::Verified(Verified {
            record,
            credits_remaining,
            in_grace,
        }))
    }

    async fn lookup(&self, id: &KeyId, now: u64) -> Result<Option<Arc<KeyRecord>>> {
        if let Some(cache) = &self.inner.cache {
            if let Some(e) = cache.get(id)
                && now >= e.fetched_at
                && now - e.fetched_at < self.inner.cache_ttl
            {
                metrics::counter!("palisade_apikey_cache_lookups_total", "result" => "hit")
                    .increment(1);
                return Ok(e.record);
            }
            metrics::counter!("palisade_apikey_cache_lookups_total", "result" => "miss")
                .increment(1);
        }
        match self.inner.store.get(id).await {
            Ok(record) => {
                if let Some(cache) = &self.inner.cache {
                    cache.insert(
                        *id,
                        CacheEntry {
                            record: record.clone(),
                            fetched_at: now,
                        },
                    );
                }
                Ok(record)
            }
            Err(e) => {
                self.backend_error("get", &e);
                Err(e)
            }
        }
    }

    async fn charge(
        &self,
        record: &KeyRecord,
        req: &VerifyRequest<'_>,
        now: u64,
    ) -> Result<CreditOutcome> {
        match self
            .inner
            .store
            .charge(&record.id, req.cost, req.idempotency_key, now)
            .await
        {
            Ok(outcome) => {
                if self.inner.config.failure_mode == FailureMode::FallbackToMemory
                    && let CreditOutcome::Charged { remaining, .. }
                    | CreditOutcome::OutOfCredits { remaining } = outcome
                {
                    // The last balance seen, for charging in memory while the store is down.
                    let mut local = self.inner.local_credits.lock();
                    if local.len() < MAX_LOCAL_BALANCES || local.contains_key(&record.id) {
                        local.insert(record.id, remaining);
                    }
                }
                Ok(outcome)
            }
            Err(e) => {
                self.backend_error("charge", &e);
                match self.inner.config.failure_mode {
                    FailureMode::FailClosed => Err(e),
                    FailureMode::FailOpen => Ok(CreditOutcome::Unlimited),
                    FailureMode::FallbackToMemory => {
                        let mut local = self.inner.local_credits.lock();
                        let mut credits = record.credits.unwrap_or(Credits {
                            remaining: 0,
                            refill: None,
                            refilled_at: now,
                        });
                        if let Some(left) = local.get(&record.id) {
                            credits.remaining = *left;
                        }
                        let outcome = credits.charge(now, req.cost);
                        if local.len() < MAX_LOCAL_BALANCES || local.contains_key(&record.id) {
                            local.insert(record.id, credits.remaining);
                        }
                        Ok(outcome)
                    }
                }
            }
        }
    }

    async fn upgrade_hash(&self, record: &KeyRecord, secret: &[u8]) {
        let version = self.inner.peppers.current_version();
        let Some(hash) = self.inner.peppers.hash_key(version, &record.id, secret) else {
            return;
        };
        match self
            .inner
            .store
            .rehash(&record.id, record.hash_version, version, &hash)
            .await
        {
            Ok(()) => self.forget(&record.id),
            Err(e) => self.backend_error("rehash", &e),
        }
    }

    fn forget(&self, id: &KeyId) {
        if let Some(cache) = &self.inner.cache {
            cache.invalidate(id);
        }
    }

    fn note_use(&self, id: KeyId, now: u64) {
        let full = {
            let mut usage = self.inner.usage.lock();
            let e = usage.entry(id).or_insert((0, now));
            e.0 += 1;
            e.1 = e.1.max(now);
            usage.len() >= self.inner.config.max_pending_usage
        };
        if full && tokio::runtime::Handle::try_current().is_ok() {
            let this = self.clone();
            tokio::spawn(async move {
                let _ = this.flush_usage().await;
            });
        }
    }

    /// Write the batched usage (use counts, last-used times) now. Runs by itself every
    /// `usage_flush_interval`; call it before shutting down.
    ///
    /// # Errors
    /// Backend failures (the batch is kept for the next flush, within its bound).
    #[tracing::instrument(name = "apikey.flush_usage", skip_all)]
    pub async fn flush_usage(&self) -> Result<()> {
        let batch: Vec<Usage> = std::mem::take(&mut *self.inner.usage.lock())
            .into_iter()
            .map(|(id, (uses, last))| Usage::new(id, uses, last))
            .collect();
        if batch.is_empty() {
            return Ok(());
        }
        match self.inner.store.record_usage(&batch).await {
            Ok(()) => {
                metrics::counter!("palisade_apikey_usage_flushes_total", "result" => "ok")
                    .increment(1);
                Ok(())
            }
            Err(e) => {
                metrics::counter!("palisade_apikey_usage_flushes_total", "result" => "error")
                    .increment(1);
                self.backend_error("record_usage", &e);
                let mut usage = self.inner.usage.lock();
                for u in batch {
                    if usage.len() >= self.inner.config.max_pending_usage {
                        break;
                    }
                    let e = usage.entry(u.id).or_insert((0, u.last_used_at));
                    e.0 += u.uses;
                    e.1 = e.1.max(u.last_used_at);
                }
                Err(e)
            }
        }
    }

    /// The record of `id`, read from the store (not the cache).
    ///
    /// # Errors
    /// Backend failures.
    pub async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>> {
        Ok(self.inner.store.get(id).await?.map(|r| (*r).clone()))
    }

    /// Every key of `owner` (any status), in id order.
    ///
    /// # Errors
    /// Backend failures.
    pub async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>> {
        self.inner.store.list_by_owner(owner).await
    }

    /// Revoke `id` for good (idempotent). Every instance refuses it within the verify
    /// cache's bound; this one at once.
    ///
    /// # Errors
    /// [`Error::NotFound`]; backend failures.
    #[tracing::instrument(name = "apikey.revoke", skip_all, fields(key_id = id.as_str()))]
    pub async fn revoke(&self, id: &KeyId) -> Result<KeyRecord> {
        let record = self
            .inner
            .store
            .revoke(id, self.now())
            .await
            .inspect_err(|e| self.backend_error("revoke", e))?
            .ok_or(Error::NotFound)?;
        self.forget(id);
        Self::lifecycle("revoked");
        self.audit(AuditKind::Revoked, Some(&record), None);
        Ok(record)
    }

    /// Replace `id` by a new key with the same owner, name, scopes, metadata, policy,
    /// allowlist and credit balance (and the same lifetime length, if it had one). The old
    /// key keeps working until `grace` has passed, each use reported as an audit event
    /// ([`AuditKind::GraceUse`]); `Duration::ZERO` retires it at once.
    ///
    /// Cost: one store read and one atomic store operation on the key's family.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::InvalidState`] unless the key is active; backend
    /// failures.
    #[tracing::instrument(name = "apikey.rotate", skip_all, fields(key_id = id.as_str()))]
    pub async fn rotate(&self, id: &KeyId, grace: Duration) -> Result<CreatedKey> {
        let now = self.now();
        let old = self
            .inner
            .store
            .get(id)
            .await
            .inspect_err(|e| self.backend_error("rotate", e))?
            .ok_or(Error::NotFound)?;
        let mut new = (*old).clone();
        new.created_at = now;
        new.expires_at = old
            .expires_at
            .map(|e| now.saturating_add(e.saturating_sub(old.created_at)));
        new.last_used_at = None;
        new.uses = 0;
        new.status = KeyStatus::Active;
        new.revoked_at = None;
        new.grace_until = None;
        new.rotated_to = None;
        new.rotated_from = Some(*id);
        if let Some(c) = &mut new.credits {
            c.refill_at(now);
        }
        let grace_until = now.saturating_add(micros(grace));
        for _ in 0..4 {
            let key = self.mint(&mut new, Some(id))?;
            match self
                .inner
                .store
                .rotate(id, &new, now, grace_until)
                .await
                .inspect_err(|e| self.backend_error("rotate", e))?
            {
                RotateOutcome::Rotated(old) => {
                    self.forget(id);
                    Self::lifecycle("rotated");
                    self.audit(AuditKind::Rotated { successor: new.id }, Some(&old), None);
                    return Ok(CreatedKey { key, record: new });
                }
                RotateOutcome::InvalidState("taken") => continue,
                RotateOutcome::InvalidState(s) => return Err(Error::InvalidState(s)),
                RotateOutcome::NotFound => return Err(Error::NotFound),
            }
        }
        Err(Error::InvalidConfig(
            "four random key ids in a row were taken: the random number generator is broken".into(),
        ))
    }

    /// Replace the scopes of `id`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad scope, [`Error::NotFound`]; backend failures.
    #[tracing::instrument(name = "apikey.update_scopes", skip_all, fields(key_id = id.as_str()))]
    pub async fn update_scopes<I, S>(&self, id: &KeyId, scopes: I) -> Result<KeyRecord>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let scopes = Scopes::new(scopes)?;
        let record = self
            .inner
            .store
            .update_scopes(id, &scopes)
            .await
            .inspect_err(|e| self.backend_error("update_scopes", e))?
            .ok_or(Error::NotFound)?;
        self.forget(id);
        Self::lifecycle("scopes_updated");
        self.audit(AuditKind::ScopesUpdated, Some(&record), None);
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_humantime_and_refuses_unknown_fields() {
        let c: Config = serde_json::from_str(
            r#"{"prefix":"acme","env":"test","default_expiry":"90days","cache_ttl":"250ms",
                "failure_mode":"fallback_to_memory","usage_flush_interval":"1m"}"#,
        )
        .unwrap();
        assert_eq!(c.prefix, "acme");
        assert_eq!(c.env, Env::Test);
        assert_eq!(c.default_expiry, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(c.cache_ttl, Duration::from_millis(250));
        assert_eq!(c.failure_mode, FailureMode::FallbackToMemory);
        assert_eq!(c.cache_capacity, Config::default().cache_capacity);
        let back: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<Config>(r#"{"cache_tll":"1s"}"#).is_err());
        assert_eq!(Config::default().failure_mode, FailureMode::FailClosed);
    }

    #[test]
    fn bad_builder_settings_are_refused() {
        let p = || Peppers::new(crate::Pepper::new(1, [1u8; 32]).unwrap());
        assert!(ApiKeys::builder(p()).prefix("Bad_Prefix").build().is_err());
        let c = Config {
            usage_flush_interval: Duration::ZERO,
            ..Config::default()
        };
        assert!(ApiKeys::builder(p()).config(c).build().is_err());
    }

    #[tokio::test]
    async fn bad_specs_are_refused_before_any_write() {
        let store = Arc::new(MemoryStore::new());
        let keys = ApiKeys::builder(Peppers::new(crate::Pepper::new(1, [1u8; 32]).unwrap()))
            .shared_store(store.clone())
            .build()
            .unwrap();
        let mut many = KeySpec::new("o", "n");
        for i in 0..65 {
            many = many.metadata(i.to_string(), "v");
        }
        for spec in [
            KeySpec::new("", "no owner"),
            KeySpec::new("o\nwner", "control character"),
            KeySpec::new("o".repeat(257), "long owner"),
            KeySpec::new("o", "n").scopes(["read *"]),
            KeySpec::new("o", "n").allowed_ips(["not-an-ip"]),
            KeySpec::new("o", "n").metadata("k", "v".repeat(1025)),
            many,
        ] {
            assert!(
                matches!(
                    keys.create(spec.clone()).await,
                    Err(Error::InvalidConfig(_))
                ),
                "{spec:?}"
            );
        }
        assert!(store.is_empty());
    }
}
