//! The Redis [`StateStore`]: one Lua script per operation, decided on Redis server time.
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

use std::time::Duration;

use async_trait::async_trait;
use redis::{FromRedisValue, Script, ScriptInvocation};

use crate::error::{Error, Result};
use crate::store::{Batch, ManualOp, Policy, ProbeGrant, SharedState, StateStore};
use crate::{Outcome, Snapshot, State};

const COMMON: &str = r"
local SK, BK, IK, FK, LK = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local WINDOW = tonumber(ARGV[1])
local MIN_CALLS = tonumber(ARGV[2])
local FAIL_RATE = tonumber(ARGV[3])
local SLOW_RATE = tonumber(ARGV[4])
local OPEN_WAIT = tonumber(ARGV[5])
local MULT = tonumber(ARGV[6])
local MAX_WAIT = tonumber(ARGV[7])
local PROBES = tonumber(ARGV[8])
local SUCC_NEEDED = tonumber(ARGV[9])
local MAX_HALF = tonumber(ARGV[10])
local LEASE = tonumber(ARGV[11])
local Q_MIN = tonumber(ARGV[12])
local Q_PCT = tonumber(ARGV[13])
local TTL = tonumber(ARGV[14])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local S = redis.call('HMGET', SK, 'st', 'gen', 'dl', 'trips', 'succ')
local st = S[1] or 'closed'
local gen = tonumber(S[2]) or 0
local dl = tonumber(S[3]) or 0
local trips = tonumber(S[4]) or 0
local succ = tonumber(S[5]) or 0

local function int(x) return string.format('%.0f', x) end
local function wait_for(k)
  local w = OPEN_WAIT * (MULT ^ (k - 1))
  if w >= MAX_WAIT then return MAX_WAIT end
  return math.floor(w)
end
local function go(to, deadline) st = to; gen = gen + 1; dl = deadline end
local function open()
  trips = trips + 1
  go('open', now + wait_for(trips))
  redis.call('DEL', LK)
end
local function close()
  go('closed', 0); trips = 0; succ = 0
  redis.call('DEL', BK, FK, LK)
end
local function advance()
  if st == 'open' and now >= dl then
    go('half_open', now + MAX_HALF); succ = 0
    redis.call('DEL', LK)
  elseif st == 'half_open' and now >= dl then
    open()
  end
end
local function window()
  local min_sec = math.floor(now / 1000) + 1 - WINDOW
  local all = redis.call('HGETALL', BK)
  local c, f, s = 0, 0, 0
  for i = 1, #all, 2 do
    local field = all[i]
    local sec = tonumber(string.sub(field, 3))
    if sec == nil or sec < min_sec then
      redis.call('HDEL', BK, field)
    else
      local v = tonumber(all[i + 1])
      local kind = string.sub(field, 1, 1)
      if kind == 'c' then c = c + v elseif kind == 'f' then f = f + v else s = s + v end
    end
  end
  return c, f, s
end
local function save()
  redis.call('HSET', SK, 'st', st, 'gen', int(gen), 'dl', int(dl), 'trips', int(trips), 'succ', int(succ))
  for _, k in ipairs({SK, BK, IK, FK, LK}) do redis.call('PEXPIRE', k, TTL) end
end
local function reply()
  local c, f, s = window()
  local retry = 0
  if st == 'open' then retry = math.max(dl - now, 0) elseif st == 'forced_open' then retry = OPEN_WAIT end
  return {st, int(gen), retry, c, f, s}
end
";

const FLUSH: &str = r"
local instance = ARGV[15]
local calls, fails, slows = tonumber(ARGV[16]), tonumber(ARGV[17]), tonumber(ARGV[18])
advance()
local sec = int(math.floor(now / 1000))
if calls > 0 then
  redis.call('HINCRBY', BK, 'c:' .. sec, calls)
  if fails > 0 then redis.call('HINCRBY', BK, 'f:' .. sec, fails) end
  if slows > 0 then redis.call('HINCRBY', BK, 's:' .. sec, slows) end
end
redis.call('ZADD', IK, now, instance)
if ARGV[19] == '1' then redis.call('ZADD', FK, now, instance) end
local horizon = '(' .. int(now - WINDOW * 1000)
redis.call('ZREMRANGEBYSCORE', IK, '-inf', horizon)
redis.call('ZREMRANGEBYSCORE', FK, '-inf', horizon)
local c, f, s = window()
if st == 'closed' and c > 0 and c >= MIN_CALLS then
  local trip = f * 100 >= FAIL_RATE * c or (SLOW_RATE >= 0 and s * 100 >= SLOW_RATE * c)
  local nf, ni = redis.call('ZCARD', FK), redis.call('ZCARD', IK)
  if trip and nf >= Q_MIN and nf * 100 >= Q_PCT * ni then
    trips = 0
    open()
  end
end
save()
return reply()
";

const ACQUIRE: &str = r"
local lease = ARGV[15]
advance()
local granted = 0
if st == 'half_open' then
  redis.call('ZREMRANGEBYSCORE', LK, '-inf', int(now))
  if redis.call('ZCARD', LK) + succ < PROBES then
    redis.call('ZADD', LK, int(now + LEASE), lease)
    granted = 1
  end
end
save()
local r = reply()
table.insert(r, 1, granted)
return r
";

const COMPLETE: &str = r"
local req_gen, lease, outcome = tonumber(ARGV[15]), ARGV[16], ARGV[17]
advance()
local expiry = tonumber(redis.call('ZSCORE', LK, lease))
redis.call('ZREM', LK, lease)
if expiry ~= nil and expiry > now and st == 'half_open' and gen == req_gen then
  if outcome == 'failure' then
    open()
  elseif outcome == 'success' then
    succ = succ + 1
    if succ >= SUCC_NEEDED then close() end
  end
end
save()
return reply()
";

const APPLY: &str = r"
local op = ARGV[15]
if op == 'force_open' then go('forced_open', 0)
elseif op == 'close' then local k = trips; close(); trips = k
elseif op == 'reset' then close()
elseif op == 'disable' then go('disabled', 0)
elseif op == 'metrics_only' then go('metrics_only', 0)
else return redis.error_reply('unknown circuit breaker operation') end
save()
return reply()
";

#[derive(Clone)]
enum Conn {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// Shared circuit-breaker state in Redis (standalone, TLS or Cluster).
///
/// Each [`StateStore`] operation is one `EVALSHA` (the script is loaded automatically on
/// `NOSCRIPT`, for example after a Redis restart) bounded by an operation timeout (default
/// 1 s) so that a hung Redis looks like a failed one.
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
    flush: Script,
    acquire: Script,
    complete: Script,
    apply: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &matches!(self.conn, Conn::Cluster(_)))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}{body}"))
}

/// Percent-encode every byte outside `A-Z a-z 0-9 _ . -`.
fn encode(name: &str) -> String {
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
            flush: script(FLUSH),
            acquire: script(ACQUIRE),
            complete: script(COMPLETE),
            apply: script(APPLY),
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

    /// The five keys of breaker `name`.
    pub fn keys(&self, name: &str) -> [String; 5] {
        let base = format!("{}{{{}}}:", self.prefix, encode(name));
        ["s", "b", "i", "f", "l"].map(|k| format!("{base}{k}"))
    }

    fn invocation<'a>(&self, script: &'a Script, name: &str, p: &Policy) -> ScriptInvocation<'a> {
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
            .arg(p.key_ttl_ms());
        inv
    }

    async fn run<T: FromRedisValue>(&self, inv: &ScriptInvocation<'_>) -> Result<T> {
        let work = async {
            match &self.conn {
                Conn::Single(pool) => {
                    let mut conn = pool.get().await.map_err(Error::store)?;
                    inv.invoke_async(&mut conn).await.map_err(Error::store)
                }
                Conn::Cluster(pool) => {
                    let mut conn = pool.get().await.map_err(Error::store)?;
                    inv.invoke_async(&mut conn).await.map_err(Error::store)
                }
            }
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::store(format!(
                "redis did not answer within {:?}",
                self.timeout
            ))),
        }
    }
}

type Reply = (String, String, u64, u64, u64, u64);

fn state(reply: Reply) -> Result<SharedState> {
    let (st, generation, retry, calls, failures, slow) = reply;
    let state = State::from_name(&st)
        .ok_or_else(|| Error::store(format!("unknown circuit breaker state {st:?} in redis")))?;
    let generation = generation
        .parse()
        .map_err(|_| Error::store(format!("bad generation {generation:?} in redis")))?;
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
impl StateStore for RedisStore {
    async fn flush(&self, name: &str, policy: &Policy, batch: &Batch) -> Result<SharedState> {
        let mut inv = self.invocation(&self.flush, name, policy);
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
        policy: &Policy,
        lease_id: &str,
    ) -> Result<ProbeGrant> {
        let mut inv = self.invocation(&self.acquire, name, policy);
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
        policy: &Policy,
        generation: u64,
        lease_id: &str,
        outcome: Outcome,
    ) -> Result<SharedState> {
        let mut inv = self.invocation(&self.complete, name, policy);
        let outcome = match outcome {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Ignored => "ignored",
        };
        inv.arg(generation).arg(lease_id).arg(outcome);
        state(self.run(&inv).await?)
    }

    async fn apply(&self, name: &str, policy: &Policy, op: ManualOp) -> Result<SharedState> {
        let mut inv = self.invocation(&self.apply, name, policy);
        inv.arg(op.as_str());
        state(self.run(&inv).await?)
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
    }
}
