//! The Redis [`Store`]: one Lua script per operation (`src/lua/*.lua`), decided on Redis
//! server time (or on a [`Clock`] given with [`RedisStore::with_clock`], for tests).
//!
//! # Keys
//! Every breaker uses five keys that share one hash tag, so a Redis Cluster keeps them in
//! one slot and each script runs atomically on one node:
//!
//! | key | type | content |
//! |---|---|---|
//! | `<prefix>{<name>}:s` | hash | `st`, `gen`, `dl` (deadline, ms), `trips`, `succ` |
//! | `<prefix>{<name>}:b` | hash | `c:<second>`, `f:<second>`, `s:<second>`: calls, failures, slow calls per second |
//! | `<prefix>{<name>}:i` | sorted set | instances by last flush (ms) |
//! | `<prefix>{<name>}:f` | sorted set | instances that reported a failing window (ms) |
//! | `<prefix>{<name>}:l` | sorted set | half-open probe leases by expiry (ms) |
//!
//! `<name>` is percent-encoded (every byte outside `A-Z a-z 0-9 _ . -`), so no name can close
//! the hash tag, reach another breaker's keys or collide with another name. All keys expire
//! after twice the longest configured period plus a minute without activity.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::{FromRedisValue, RetryMethod, Script, ScriptInvocation};

use crate::clock::{Clock, Time};
use crate::error::{Error, Result};
use crate::store::{Batch, ManualOp, ProbeGrant, SharedPolicy, SharedState, Store};
use crate::{Outcome, Snapshot, State};

struct Scripts {
    flush: Script,
    acquire: Script,
    complete: Script,
    apply: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    flush: Script::new(concat!(
        include_str!("lua/common.lua"),
        include_str!("lua/flush.lua")
    )),
    acquire: Script::new(concat!(
        include_str!("lua/common.lua"),
        include_str!("lua/acquire.lua")
    )),
    complete: Script::new(concat!(
        include_str!("lua/common.lua"),
        include_str!("lua/complete.lua")
    )),
    apply: Script::new(concat!(
        include_str!("lua/common.lua"),
        include_str!("lua/apply.lua")
    )),
});

#[derive(Clone)]
enum Conn {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// Shared circuit-breaker state in Redis (standalone, TLS or Cluster).
///
/// Each [`Store`] operation is one `EVALSHA` (the script is loaded automatically on
/// `NOSCRIPT`, for example after a Redis restart) bounded by an operation timeout (default
/// 1 s, [`Error::Timeout`]) so that a hung Redis looks like a failed one. Building a store
/// does no I/O; the first operation takes a connection from the pool.
///
/// ```no_run
/// # #[tokio::main] async fn main() {
/// use std::sync::Arc;
/// use palisade_circuit_breaker::{CircuitBreaker, RedisStore};
///
/// let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:6379")
///     .create_pool(Some(deadpool_redis::Runtime::Tokio1))
///     .unwrap();
/// let store = Arc::new(RedisStore::new(pool));
/// let breaker = CircuitBreaker::builder("openai").store(store).build().unwrap();
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    timeout: Duration,
    clock: Option<Time>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &matches!(self.conn, Conn::Cluster(_)))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// Percent-encode every byte outside `A-Z a-z 0-9 _ . -`; the empty name becomes `%` (no
/// other name encodes to it), because an empty hash tag `{}` would hash each key on its own
/// and split a breaker's keys over several Cluster slots.
fn encode(name: &str) -> String {
    if name.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl RedisStore {
    fn with_conn(conn: Conn) -> Self {
        Self {
            conn,
            prefix: "palisade:cb:".to_owned(),
            timeout: Duration::from_secs(1),
            clock: None,
        }
    }

    /// A store on a standalone (or TLS) Redis.
    pub fn new(pool: deadpool_redis::Pool) -> Self {
        Self::with_conn(Conn::Single(pool))
    }

    /// A store on a Redis Cluster.
    pub fn cluster(pool: deadpool_redis::cluster::Pool) -> Self {
        Self::with_conn(Conn::Cluster(pool))
    }

    /// Put every key under `prefix` (default `palisade:cb:`); braces in the prefix are
    /// encoded so that it never changes the hash tag.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().replace('{', "%7B").replace('}', "%7D");
        self
    }

    /// Give up on one operation after `timeout` (default 1 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Decide on `clock` instead of Redis server time: each operation sends the clock's
    /// milliseconds. Meant for tests (the conformance suite runs on a
    /// [`FakeClock`](crate::FakeClock), so no test sleeps); every store sharing these keys
    /// must then use the same clock.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Some(Time::absolute(clock));
        self
    }

    /// The five keys of breaker `name`.
    pub fn keys(&self, name: &str) -> [String; 5] {
        let base = format!("{}{{{}}}:", self.prefix, encode(name));
        ["s", "b", "i", "f", "l"].map(|k| format!("{base}{k}"))
    }

    fn invocation<'a>(
        &self,
        script: &'a Script,
        name: &str,
        p: &SharedPolicy,
    ) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for key in self.keys(name) {
            inv.key(key);
        }
        inv.arg(p.window_seconds)
            .arg(p.minimum_calls)
            .arg(p.failure_rate_threshold)
            .arg(p.slow_rate_threshold.unwrap_or(-1.0))
            .arg(p.open_wait_ms)
            .arg(p.backoff_multiplier)
            .arg(p.max_open_wait_ms)
            .arg(p.half_open_probes)
            .arg(p.success_threshold)
            .arg(p.max_half_open_ms)
            .arg(p.probe_lease_ms)
            .arg(p.quorum_min_instances)
            .arg(p.quorum_min_percent)
            .arg(p.key_ttl_ms())
            .arg(
                self.clock
                    .as_ref()
                    .map_or(-1, |c| i64::try_from(c.now_ms()).unwrap_or(i64::MAX)),
            );
        inv
    }

    async fn run<T: FromRedisValue>(&self, inv: &ScriptInvocation<'_>) -> Result<T> {
        let work = async {
            match &self.conn {
                Conn::Single(pool) => {
                    let mut conn = pool.get().await.map_err(pool_error)?;
                    inv.invoke_async(&mut conn).await.map_err(redis_error)
                }
                Conn::Cluster(pool) => {
                    let mut conn = pool.get().await.map_err(pool_error)?;
                    inv.invoke_async(&mut conn).await.map_err(redis_error)
                }
            }
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(self.timeout)),
        }
    }
}

fn pool_error(e: deadpool_redis::PoolError) -> Error {
    let transient = !matches!(
        e,
        deadpool_redis::PoolError::Closed | deadpool_redis::PoolError::NoRuntimeSpecified
    );
    Error::backend(e, transient)
}

fn redis_error(e: redis::RedisError) -> Error {
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || !matches!(e.retry_method(), RetryMethod::NoRetry);
    Error::backend(e, transient)
}

/// An answer this crate cannot read (a foreign value under one of its keys).
fn protocol(what: String) -> Error {
    Error::backend(what, false)
}

type Reply = (String, String, u64, u64, u64, u64);

fn state(reply: Reply) -> Result<SharedState> {
    let (st, generation, retry, calls, failures, slow) = reply;
    let state = State::from_name(&st)
        .ok_or_else(|| protocol(format!("unknown circuit breaker state {st:?} in redis")))?;
    let generation = generation
        .parse()
        .map_err(|_| protocol(format!("bad generation {generation:?} in redis")))?;
    Ok(SharedState {
        state,
        generation,
        retry_after: Duration::from_millis(retry),
        window: Snapshot {
            calls,
            failures,
            slow,
        },
    })
}

#[async_trait]
impl Store for RedisStore {
    async fn flush(&self, name: &str, policy: &SharedPolicy, batch: &Batch) -> Result<SharedState> {
        let mut inv = self.invocation(&SCRIPTS.flush, name, policy);
        inv.arg(&batch.instance)
            .arg(batch.calls)
            .arg(batch.failures)
            .arg(batch.slow)
            .arg(if batch.failing { "1" } else { "0" });
        state(self.run(&inv).await?)
    }

    async fn acquire_probe(
        &self,
        name: &str,
        policy: &SharedPolicy,
        lease_id: &str,
    ) -> Result<ProbeGrant> {
        let mut inv = self.invocation(&SCRIPTS.acquire, name, policy);
        inv.arg(lease_id);
        let (granted, st, generation, retry, calls, failures, slow): (
            i64,
            String,
            String,
            u64,
            u64,
            u64,
            u64,
        ) = self.run(&inv).await?;
        let s = state((st, generation, retry, calls, failures, slow))?;
        Ok(if granted == 1 {
            ProbeGrant::Granted {
                generation: s.generation,
            }
        } else {
            ProbeGrant::Denied(s)
        })
    }

    async fn complete_probe(
        &self,
        name: &str,
        policy: &SharedPolicy,
        generation: u64,
        lease_id: &str,
        outcome: Outcome,
    ) -> Result<SharedState> {
        let mut inv = self.invocation(&SCRIPTS.complete, name, policy);
        let outcome = match outcome {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Ignored => "ignored",
        };
        inv.arg(generation).arg(lease_id).arg(outcome);
        state(self.run(&inv).await?)
    }

    async fn apply(&self, name: &str, policy: &SharedPolicy, op: ManualOp) -> Result<SharedState> {
        let mut inv = self.invocation(&SCRIPTS.apply, name, policy);
        inv.arg(op.as_str());
        state(self.run(&inv).await?)
    }

    async fn health(&self) -> Result<()> {
        let ping = redis::cmd("PING");
        let work = async {
            match &self.conn {
                Conn::Single(pool) => {
                    let mut conn = pool.get().await.map_err(pool_error)?;
                    ping.query_async::<()>(&mut conn).await.map_err(redis_error)
                }
                Conn::Cluster(pool) => {
                    let mut conn = pool.get().await.map_err(pool_error)?;
                    ping.query_async::<()>(&mut conn).await.map_err(redis_error)
                }
            }
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn names_cannot_escape_the_hash_tag_or_collide() {
        assert_eq!(encode("openai"), "openai");
        assert_eq!(encode("a}b{c"), "a%7Db%7Bc");
        assert_ne!(encode("a:b"), encode("a%3Ab"));
        assert_eq!(encode("a%3Ab"), "a%253Ab");
        assert!(!encode("x}:s\n").contains(['{', '}', ':', '\n']));
        assert_eq!(encode(""), "%");
    }
}
