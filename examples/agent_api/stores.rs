//! The agent API's own data: the usage ledger (PostgreSQL, or an in-memory stand-in that can
//! be made to fail) and conversation sessions (Redis, or this process's memory). Neither
//! knows about breakers: `app.rs` puts one around every call.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade::deadpool_redis::redis;
use serde::{Deserialize, Serialize};

/// A failure of a backend, as text (never holding a value the backend returned).
#[derive(Debug)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

fn err(what: &str, e: impl fmt::Display) -> StoreError {
    StoreError(format!("{what}: {e}"))
}

/// One `/v1/generate` call, as the ledger keeps it.
#[derive(Clone, Debug, Serialize)]
pub struct UsageRecord {
    /// The API key's owner.
    pub user: String,
    /// The API key's public id (never the key).
    pub key_id: String,
    /// The provider that answered.
    pub provider: String,
    /// Its model.
    pub model: String,
    /// Tokens in.
    pub prompt_tokens: u64,
    /// Tokens out.
    pub completion_tokens: u64,
    /// When, in microseconds since the Unix epoch.
    pub at_micros: u64,
}

/// A user's totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsageTotals {
    /// Calls recorded.
    pub requests: u64,
    /// Tokens in.
    pub prompt_tokens: u64,
    /// Tokens out.
    pub completion_tokens: u64,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS agent_usage (
    id BIGSERIAL PRIMARY KEY,
    at_micros BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS agent_usage_user ON agent_usage (user_id);";

/// The usage ledger.
#[derive(Debug)]
pub enum Database {
    /// PostgreSQL, one connection opened on first use and again after it breaks.
    Postgres(Postgres),
    /// Records in this process's memory (the most recent [`MemoryDatabase::CAPACITY`]).
    Memory(MemoryDatabase),
}

impl Database {
    /// `postgres` or `memory`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Memory(_) => "memory",
        }
    }

    /// Record `records` in one transaction.
    ///
    /// # Errors
    /// The database failed or refused.
    pub async fn insert(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        match self {
            Self::Postgres(pg) => pg.insert(records).await,
            Self::Memory(m) => m.insert(records),
        }
    }

    /// The totals of `user`.
    ///
    /// # Errors
    /// The database failed.
    pub async fn totals(&self, user: &str) -> Result<UsageTotals, StoreError> {
        match self {
            Self::Postgres(pg) => pg.totals(user).await,
            Self::Memory(m) => m.totals(user),
        }
    }

    /// One trivial query.
    ///
    /// # Errors
    /// The database did not answer.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Postgres(pg) => pg.ping().await,
            Self::Memory(m) => m.check(),
        }
    }
}

/// The PostgreSQL ledger: table `agent_usage`, created when missing.
pub struct Postgres {
    url: String,
    client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: never printed.
        f.debug_struct("Postgres").finish_non_exhaustive()
    }
}

impl Postgres {
    /// A ledger at `url`; nothing is connected until the first call.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            client: tokio::sync::Mutex::new(None),
        }
    }

    async fn client(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<tokio_postgres::Client>>, StoreError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            *guard = None;
            let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                .await
                .map_err(|e| err("connecting to PostgreSQL", e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "PostgreSQL connection closed");
                }
            });
            client
                .batch_execute(SCHEMA)
                .await
                .map_err(|e| err("creating table agent_usage", e))?;
            *guard = Some(client);
        }
        Ok(guard)
    }

    async fn insert(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        let mut guard = self.client().await?;
        let client = guard
            .as_mut()
            .ok_or_else(|| StoreError("no connection".into()))?;
        let tx = client.transaction().await.map_err(|e| err("BEGIN", e))?;
        let insert = tx
            .prepare(
                "INSERT INTO agent_usage (at_micros, user_id, key_id, provider, model, \
                 prompt_tokens, completion_tokens) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await
            .map_err(|e| err("preparing INSERT", e))?;
        for r in records {
            let at = i64::try_from(r.at_micros).unwrap_or(i64::MAX);
            let prompt = i64::try_from(r.prompt_tokens).unwrap_or(i64::MAX);
            let completion = i64::try_from(r.completion_tokens).unwrap_or(i64::MAX);
            tx.execute(
                &insert,
                &[
                    &at,
                    &r.user,
                    &r.key_id,
                    &r.provider,
                    &r.model,
                    &prompt,
                    &completion,
                ],
            )
            .await
            .map_err(|e| err("INSERT", e))?;
        }
        tx.commit().await.map_err(|e| err("COMMIT", e))
    }

    async fn totals(&self, user: &str) -> Result<UsageTotals, StoreError> {
        let guard = self.client().await?;
        let client = guard
            .as_ref()
            .ok_or_else(|| StoreError("no connection".into()))?;
        let row = client
            .query_one(
                "SELECT count(*)::BIGINT, coalesce(sum(prompt_tokens), 0)::BIGINT, \
                 coalesce(sum(completion_tokens), 0)::BIGINT FROM agent_usage WHERE user_id = $1",
                &[&user],
            )
            .await
            .map_err(|e| err("SELECT totals", e))?;
        let n = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok(UsageTotals {
            requests: n(0),
            prompt_tokens: n(1),
            completion_tokens: n(2),
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let guard = self.client().await?;
        let client = guard
            .as_ref()
            .ok_or_else(|| StoreError("no connection".into()))?;
        client
            .simple_query("SELECT 1")
            .await
            .map(drop)
            .map_err(|e| err("SELECT 1", e))
    }
}

/// The in-memory stand-in for the ledger. [`set_failing`](Self::set_failing) makes every
/// call fail, so the database breaker and the outbox can be seen at work without a database.
#[derive(Debug, Default)]
pub struct MemoryDatabase {
    records: Mutex<VecDeque<UsageRecord>>,
    failing: AtomicBool,
}

impl MemoryDatabase {
    /// Records kept at most (the oldest go first).
    pub const CAPACITY: usize = 100_000;

    /// Fail every call from now on (`true`) or answer again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::Relaxed) {
            Err(StoreError("the in-memory database is set to fail".into()))
        } else {
            Ok(())
        }
    }

    fn insert(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        self.check()?;
        let mut all = self
            .records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for r in records {
            if all.len() == Self::CAPACITY {
                all.pop_front();
            }
            all.push_back(r.clone());
        }
        Ok(())
    }

    fn totals(&self, user: &str) -> Result<UsageTotals, StoreError> {
        self.check()?;
        let all = self
            .records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(all
            .iter()
            .filter(|r| r.user == user)
            .fold(UsageTotals::default(), |mut t, r| {
                t.requests += 1;
                t.prompt_tokens += r.prompt_tokens;
                t.completion_tokens += r.completion_tokens;
                t
            }))
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    /// `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// Conversations in this process's memory: at most `max_sessions`, each its last
/// `max_turns` messages. Also the fallback of the Redis sessions while Redis is away.
#[derive(Debug)]
pub struct MemorySessions {
    sessions: Mutex<HashMap<String, VecDeque<Turn>>>,
    max_sessions: usize,
    max_turns: usize,
}

impl MemorySessions {
    /// Bounded as said.
    pub fn new(max_sessions: usize, max_turns: usize) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            max_sessions: max_sessions.max(1),
            max_turns: max_turns.max(1),
        }
    }

    /// The turns of `key`, oldest first.
    pub fn load(&self, key: &str) -> Vec<Turn> {
        let sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sessions
            .get(key)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Append `turns` to `key`, keeping the last `max_turns`. A new session past
    /// `max_sessions` pushes out an arbitrary other one.
    pub fn append(&self, key: &str, turns: &[Turn]) {
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !sessions.contains_key(key)
            && sessions.len() >= self.max_sessions
            && let Some(victim) = sessions.keys().next().cloned()
        {
            sessions.remove(&victim);
        }
        let session = sessions.entry(key.to_owned()).or_default();
        session.extend(turns.iter().cloned());
        while session.len() > self.max_turns {
            session.pop_front();
        }
    }
}

/// Conversations in Redis: one list per session (`agent_api:session:<user>:<session>`),
/// trimmed to the last `max_turns` messages, expiring `ttl` after the last message. Every
/// instance on the same Redis sees the same conversation.
#[derive(Debug)]
pub struct RedisSessions {
    pool: palisade::deadpool_redis::Pool,
    max_turns: usize,
    ttl: Duration,
    timeout: Duration,
}

impl RedisSessions {
    /// Sessions in the Redis behind `pool`; each call gives up after `timeout`.
    pub fn new(
        pool: palisade::deadpool_redis::Pool,
        max_turns: usize,
        ttl: Duration,
        timeout: Duration,
    ) -> Self {
        Self {
            pool,
            max_turns: max_turns.max(1),
            ttl,
            timeout,
        }
    }

    fn redis_key(key: &str) -> String {
        format!("agent_api:session:{key}")
    }

    async fn timed<T>(
        &self,
        what: &str,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| StoreError(format!("{what}: no answer within {:?}", self.timeout)))?
    }

    /// The turns of `key`, oldest first.
    ///
    /// # Errors
    /// Redis failed, did not answer in time, or holds something that is not a turn.
    pub async fn load(&self, key: &str) -> Result<Vec<Turn>, StoreError> {
        self.timed("LRANGE", async {
            let mut conn = self.pool.get().await.map_err(|e| err("Redis pool", e))?;
            let start = -isize::try_from(self.max_turns).unwrap_or(isize::MAX);
            let raw: Vec<String> = redis::cmd("LRANGE")
                .arg(Self::redis_key(key))
                .arg(start)
                .arg(-1)
                .query_async(&mut *conn)
                .await
                .map_err(|e| err("LRANGE", e))?;
            raw.iter()
                .map(|t| serde_json::from_str(t).map_err(|e| err("a stored turn", e)))
                .collect()
        })
        .await
    }

    /// Append `turns` to `key` (one round trip: `RPUSH`, `LTRIM`, `PEXPIRE`).
    ///
    /// # Errors
    /// Redis failed or did not answer in time.
    pub async fn append(&self, key: &str, turns: &[Turn]) -> Result<(), StoreError> {
        self.timed("RPUSH", async {
            let mut conn = self.pool.get().await.map_err(|e| err("Redis pool", e))?;
            let k = Self::redis_key(key);
            let encoded: Vec<String> = turns
                .iter()
                .map(|t| serde_json::to_string(t).unwrap_or_default())
                .collect();
            let start = -isize::try_from(self.max_turns).unwrap_or(isize::MAX);
            let ttl_ms = u64::try_from(self.ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            redis::pipe()
                .atomic()
                .cmd("RPUSH")
                .arg(&k)
                .arg(encoded)
                .ignore()
                .cmd("LTRIM")
                .arg(&k)
                .arg(start)
                .arg(-1)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&k)
                .arg(ttl_ms)
                .ignore()
                .query_async::<()>(&mut *conn)
                .await
                .map_err(|e| err("RPUSH", e))
        })
        .await
    }

    /// `PING`.
    ///
    /// # Errors
    /// Redis did not answer in time.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.timed("PING", async {
            let mut conn = self.pool.get().await.map_err(|e| err("Redis pool", e))?;
            redis::cmd("PING")
                .query_async::<String>(&mut *conn)
                .await
                .map(drop)
                .map_err(|e| err("PING", e))
        })
        .await
    }
}
