//! Per-plugin rate limits that change at run time, and the audit trail of every change.
//!
//! The limits in force are the settings file's (`[limits]`: a default and per-plugin
//! entries) overlaid with the changes made through `/config`. With Redis, the changes live in
//! the hash `plugin_server:limits` and the trail in the list `plugin_server:audit`: every
//! instance reloads them every `config_refresh` (and at start-up), so a change reaches the
//! whole fleet and survives restarts. Without Redis they live in this process.
//!
//! Every plugin is limited under one policy *name* (`plugin`, a token bucket) keyed by the
//! plugin's name, so a changed limit keeps the plugin's count (the rate limiter keeps state
//! per policy name and key) and the metrics' `policy` label stays one value whatever the
//! number of plugins.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade::deadpool_redis::redis;
use palisade::ratelimit::{Algorithm, Policy, Quota};
use serde::{Deserialize, Serialize};

/// The policy name every plugin's limit is counted under.
pub const POLICY: &str = "plugin";
/// Audit entries kept (memory, and the Redis list).
pub const AUDIT_CAPACITY: usize = 1000;
/// Highest `per_minute` accepted.
pub const MAX_PER_MINUTE: u64 = 100_000;

/// One plugin's limit: requests per minute, with a burst (default: the per-minute limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginLimit {
    /// Requests per minute (1 ..= 100 000).
    pub per_minute: u64,
    /// Requests at once after a quiet spell (1 ..= 10 × `per_minute`; default `per_minute`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

impl PluginLimit {
    /// Check the bounds, saying what is wrong.
    ///
    /// # Errors
    /// A message for a `422`.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_PER_MINUTE).contains(&self.per_minute) {
            return Err(format!(
                "`per_minute` must be between 1 and {MAX_PER_MINUTE}, got {}",
                self.per_minute
            ));
        }
        if let Some(burst) = self.burst
            && !(1..=self.per_minute.saturating_mul(10)).contains(&burst)
        {
            return Err(format!(
                "`burst` must be between 1 and 10 × per_minute ({}), got {burst}",
                self.per_minute.saturating_mul(10)
            ));
        }
        Ok(())
    }

    fn policy(self) -> Result<Policy, String> {
        self.validate()?;
        let quota =
            Quota::per_minute(self.per_minute).with_burst(self.burst.unwrap_or(self.per_minute));
        // A token bucket keeps its level across a change of limit and refills at the new
        // rate from the next call on. (GCRA keeps its theoretical arrival time, computed
        // under the old rate: an exhausted plugin raised from 6 to 600 a minute would wait
        // about 28 s instead of 0.1 s — measured on the memory store.)
        Policy::single(POLICY, Algorithm::TokenBucket, quota).map_err(|e| e.to_string())
    }
}

/// The `[limits]` section: the default and per-plugin limits (also what `GET /config`
/// shows, with the run-time changes applied).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// The limit of a plugin without its own.
    pub default: PluginLimit,
    /// Limits by plugin name.
    pub plugins: BTreeMap<String, PluginLimit>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            default: PluginLimit {
                per_minute: 60,
                burst: Some(10),
            },
            plugins: BTreeMap::new(),
        }
    }
}

/// One change, as the audit trail keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `limit_set`, `limit_removed`, `plugin_registered`, `plugin_revoked`.
    pub action: String,
    /// The plugin concerned.
    pub plugin: String,
    /// Who: the owner and id of the admin API key (never the key).
    pub actor: String,
    /// The request's correlation id.
    pub request_id: String,
    /// The limit before, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<PluginLimit>,
    /// The limit after, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<PluginLimit>,
}

impl AuditEntry {
    /// An entry stamped now.
    pub fn now(action: &str, plugin: &str, actor: &str, request_id: &str) -> Self {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            at_ms,
            action: action.to_owned(),
            plugin: plugin.to_owned(),
            actor: actor.to_owned(),
            request_id: request_id.to_owned(),
            before: None,
            after: None,
        }
    }
}

/// A failure of the config store.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

struct Snapshot {
    view: LimitsConfig,
    default: Policy,
    plugins: HashMap<String, Policy>,
}

impl Snapshot {
    fn build(view: LimitsConfig) -> Result<Self, String> {
        let default = view
            .default
            .policy()
            .map_err(|e| format!("limits.default: {e}"))?;
        let mut plugins = HashMap::new();
        for (name, limit) in &view.plugins {
            plugins.insert(
                name.clone(),
                limit
                    .policy()
                    .map_err(|e| format!("limits.plugins.{name}: {e}"))?,
            );
        }
        Ok(Self {
            view,
            default,
            plugins,
        })
    }
}

/// The limits in force and their audit trail. Cheap to share (`Arc`).
pub struct Limits {
    file: LimitsConfig,
    current: RwLock<Arc<Snapshot>>,
    redis: Option<RedisConfig>,
    audit: Mutex<VecDeque<AuditEntry>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("redis", &self.redis.is_some())
            .finish_non_exhaustive()
    }
}

struct RedisConfig {
    pool: palisade::deadpool_redis::Pool,
    timeout: Duration,
}

const LIMITS_KEY: &str = "plugin_server:limits";
const AUDIT_KEY: &str = "plugin_server:audit";

impl Limits {
    /// The limits of the settings file, kept in this process (`pool: None`) or in Redis.
    ///
    /// # Errors
    /// A limit of the file is out of bounds.
    pub fn new(
        file: LimitsConfig,
        pool: Option<palisade::deadpool_redis::Pool>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let snapshot = Snapshot::build(file.clone())?;
        Ok(Self {
            file,
            current: RwLock::new(Arc::new(snapshot)),
            redis: pool.map(|pool| RedisConfig { pool, timeout }),
            audit: Mutex::new(VecDeque::new()),
        })
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The policy `plugin` is limited by now, and whether it is its own (not the default).
    pub fn policy_for(&self, plugin: &str) -> (Policy, bool) {
        let s = self.snapshot();
        match s.plugins.get(plugin) {
            Some(p) => (p.clone(), true),
            None => (s.default.clone(), false),
        }
    }

    /// The limits in force (`GET /config`).
    pub fn view(&self) -> LimitsConfig {
        self.snapshot().view.clone()
    }

    /// `backend` for `/health`.
    pub fn backend(&self) -> &'static str {
        if self.redis.is_some() {
            "redis"
        } else {
            "memory"
        }
    }

    /// Set `plugin`'s limit (validated first) and record who did it.
    ///
    /// # Errors
    /// [`Refusal::Invalid`] for a limit out of bounds (a `422`), [`Refusal::Store`] when the
    /// store failed.
    pub async fn set(
        &self,
        plugin: &str,
        limit: PluginLimit,
        mut entry: AuditEntry,
    ) -> Result<AuditEntry, Refusal> {
        limit.validate().map_err(Refusal::Invalid)?;
        entry.before = self.view().plugins.get(plugin).copied();
        entry.after = Some(limit);
        if let Some(r) = &self.redis {
            let value = serde_json::to_string(&limit).unwrap_or_default();
            r.run::<()>(
                "HSET",
                redis::cmd("HSET").arg(LIMITS_KEY).arg(plugin).arg(value),
            )
            .await
            .map_err(Refusal::Store)?;
            self.reload().await.map_err(Refusal::Store)?;
        } else {
            let mut view = self.view();
            view.plugins.insert(plugin.to_owned(), limit);
            self.install(view).map_err(Refusal::Invalid)?;
        }
        self.record(entry.clone()).await;
        Ok(entry)
    }

    /// Remove the run-time limit of `plugin` (back to the file's, or the default).
    ///
    /// # Errors
    /// The store failed.
    pub async fn remove(&self, plugin: &str, mut entry: AuditEntry) -> Result<AuditEntry, Refusal> {
        entry.before = self.view().plugins.get(plugin).copied();
        if let Some(r) = &self.redis {
            r.run::<()>("HDEL", redis::cmd("HDEL").arg(LIMITS_KEY).arg(plugin))
                .await
                .map_err(Refusal::Store)?;
            self.reload().await.map_err(Refusal::Store)?;
        } else {
            let mut view = self.view();
            view.plugins.remove(plugin);
            if let Some(from_file) = self.file.plugins.get(plugin) {
                view.plugins.insert(plugin.to_owned(), *from_file);
            }
            self.install(view).map_err(Refusal::Invalid)?;
        }
        entry.after = self.view().plugins.get(plugin).copied();
        self.record(entry.clone()).await;
        Ok(entry)
    }

    fn install(&self, view: LimitsConfig) -> Result<(), String> {
        let snapshot = Snapshot::build(view)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(snapshot);
        Ok(())
    }

    /// Read the run-time changes from Redis again (nothing to do without Redis). An entry
    /// that does not parse or is out of bounds is skipped and logged.
    ///
    /// # Errors
    /// Redis failed.
    pub async fn reload(&self) -> Result<(), ConfigError> {
        let Some(r) = &self.redis else {
            return Ok(());
        };
        let stored: HashMap<String, String> = r
            .run("HGETALL", redis::cmd("HGETALL").arg(LIMITS_KEY))
            .await?;
        let mut view = self.file.clone();
        for (plugin, value) in stored {
            match serde_json::from_str::<PluginLimit>(&value) {
                Ok(limit) if limit.validate().is_ok() => {
                    view.plugins.insert(plugin, limit);
                }
                _ => tracing::warn!(%plugin, "a stored plugin limit is unreadable: skipped"),
            }
        }
        self.install(view).map_err(ConfigError)
    }

    /// Add `entry` to the trail (and log it under the target `plugin_server::audit`).
    pub async fn record(&self, entry: AuditEntry) {
        tracing::info!(
            target: "plugin_server::audit",
            action = %entry.action,
            plugin = %entry.plugin,
            actor = %entry.actor,
            request_id = %entry.request_id,
            before = ?entry.before,
            after = ?entry.after,
            "configuration changed"
        );
        metrics::counter!("plugin_server_config_changes_total", "action" => entry.action.clone())
            .increment(1);
        if let Some(r) = &self.redis {
            let value = serde_json::to_string(&entry).unwrap_or_default();
            let cap = isize::try_from(AUDIT_CAPACITY).unwrap_or(isize::MAX) - 1;
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("LPUSH")
                .arg(AUDIT_KEY)
                .arg(value)
                .ignore()
                .cmd("LTRIM")
                .arg(AUDIT_KEY)
                .arg(0)
                .arg(cap)
                .ignore();
            if let Err(e) = r.run_pipe(&pipe).await {
                // The change is made; its trail entry is still in the log line above.
                tracing::warn!(error = %e, "audit entry not written to Redis");
            }
            return;
        }
        let mut audit = self.audit.lock().unwrap_or_else(PoisonError::into_inner);
        if audit.len() == AUDIT_CAPACITY {
            audit.pop_back();
        }
        audit.push_front(entry);
    }

    /// The most recent `n` entries, newest first.
    ///
    /// # Errors
    /// Redis failed.
    pub async fn audit(&self, n: usize) -> Result<Vec<AuditEntry>, ConfigError> {
        if let Some(r) = &self.redis {
            let last = isize::try_from(n.clamp(1, AUDIT_CAPACITY)).unwrap_or(1) - 1;
            let raw: Vec<String> = r
                .run(
                    "LRANGE",
                    redis::cmd("LRANGE").arg(AUDIT_KEY).arg(0).arg(last),
                )
                .await?;
            return Ok(raw
                .iter()
                .filter_map(|e| serde_json::from_str(e).ok())
                .collect());
        }
        let audit = self.audit.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(audit.iter().take(n).cloned().collect())
    }

    /// `PING` the config store (always fine in memory).
    ///
    /// # Errors
    /// Redis did not answer.
    pub async fn health(&self) -> Result<(), ConfigError> {
        match &self.redis {
            Some(r) => r
                .run::<String>("PING", &mut redis::cmd("PING"))
                .await
                .map(drop),
            None => Ok(()),
        }
    }
}

/// Why a change was not made.
#[derive(Debug)]
pub enum Refusal {
    /// The value is out of bounds.
    Invalid(String),
    /// The store failed.
    Store(ConfigError),
}

impl RedisConfig {
    async fn run<T: redis::FromRedisValue>(
        &self,
        what: &str,
        cmd: &mut redis::Cmd,
    ) -> Result<T, ConfigError> {
        let work = async {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|e| ConfigError(format!("Redis pool: {e}")))?;
            cmd.query_async::<T>(&mut *conn)
                .await
                .map_err(|e| ConfigError(format!("{what}: {e}")))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| ConfigError(format!("{what}: no answer within {:?}", self.timeout)))?
    }

    async fn run_pipe(&self, pipe: &redis::Pipeline) -> Result<(), ConfigError> {
        let work = async {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|e| ConfigError(format!("Redis pool: {e}")))?;
            pipe.query_async::<()>(&mut *conn)
                .await
                .map_err(|e| ConfigError(format!("audit: {e}")))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| ConfigError(format!("audit: no answer within {:?}", self.timeout)))?
    }
}

/// Reload the limits from Redis every `every` (nothing to do without Redis).
pub fn spawn_reload(limits: std::sync::Weak<Limits>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(limits) = limits.upgrade() else {
                return;
            };
            if limits.redis.is_none() {
                return;
            }
            if let Err(e) = limits.reload().await {
                tracing::warn!(error = %e, "plugin limits not reloaded: the last ones stay");
            }
        }
    });
}
