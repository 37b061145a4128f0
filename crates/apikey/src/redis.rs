//! [`RedisStore`]: key records in Redis (standalone, TLS or Cluster).
//!
//! See [`RedisStore`] for the layout.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use parking_lot::Mutex;
use redis::{FromRedisValue, Script, ScriptInvocation};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::key::{Env, KeyId};
use crate::memory::DEFAULT_IDEMPOTENCY_TTL;
use crate::record::{CreditOutcome, Credits, KeyRecord, KeyStatus, Refill, Scopes};
use crate::store::{RotateOutcome, Store, Usage};

const COMMON: &str = include_str!("lua/common.lua");

#[derive(Clone)]
enum Conn {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

struct Scripts {
    insert: Script,
    revoke: Script,
    rotate: Script,
    scopes: Script,
    charge: Script,
    rehash: Script,
    usage: Script,
}

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

struct Shared {
    conn: Conn,
    prefix: String,
    timeout: Duration,
    idempotency_ttl: Duration,
    scripts: Scripts,
    feed: broadcast::Sender<KeyId>,
    follower: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(t) = self.follower.get_mut().take() {
            t.abort();
        }
    }
}

/// Key records in Redis, shared by every instance.
///
/// Layout under the prefix `P` (default `palisade:apikey:`), `F` being the first six
/// characters of the key id (its rotation family):
///
/// | key | type | what |
/// |---|---|---|
/// | `P{F}:k:<id>` | hash | the record: status, expiry, scopes, credits, usage, hash version and HMAC (hex), the rest as JSON |
/// | `P{F}:i:<id>:<idempotency key>` | string | a charge's answer, for the idempotency window |
/// | `P{o:<owner>}` | set | the owner's key ids (updated in a separate, idempotent step) |
/// | `Pchanges` | stream | ids of changed keys (revoked, rotated, rescoped, re-hashed), capped at about 10 000 entries |
///
/// A key, its successors and their idempotency records share the hash tag `{F}`, so
/// rotate, revoke and charge are each one Lua script (`src/lua/*.lua`, written line by line
/// from [`KeyRecord`]'s rules) on one Redis Cluster slot. Neither the key's text nor its
/// secret is ever sent to Redis: only the HMAC.
///
/// Each operation is one round trip (`EVALSHA`, the script loaded again on `NOSCRIPT`)
/// bounded by an operation timeout (default 1 s), except `create`/`rotate` (plus one `SADD`
/// to the owner index) and the change notes (one `XADD` after revoke, rotate, rescope).
/// Construction does no I/O; the change-feed follower starts when an
/// [`ApiKeys`](crate::ApiKeys) subscribes (it holds one pooled connection in `XREAD BLOCK`,
/// 200 ms at a time).
///
/// ```no_run
/// # fn main() -> palisade_apikey::Result<()> {
/// use palisade_apikey::{ApiKeys, Pepper, Peppers, RedisStore, deadpool_redis};
///
/// let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:6379")
///     .create_pool(Some(deadpool_redis::Runtime::Tokio1))
///     .unwrap();
/// let keys = ApiKeys::builder(Peppers::new(Pepper::new(1, [7u8; 32])?))
///     .store(RedisStore::new(pool))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &matches!(self.shared.conn, Conn::Cluster(_)))
            .field("prefix", &self.shared.prefix)
            .field("timeout", &self.shared.timeout)
            .finish_non_exhaustive()
    }
}

/// Percent-encode every byte outside `A-Z a-z 0-9 _ . -`.
fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn protocol(what: impl Into<String>) -> Error {
    Error::Protocol(what.into())
}

fn redis_error(e: redis::RedisError) -> Error {
    let transient = e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_cluster_error();
    Error::backend(e, transient)
}

/// The JSON part of a record: what no script reads.
#[derive(Serialize, Deserialize)]
struct Body {
    prefix: String,
    env: Env,
    owner: String,
    name: String,
    created_at: u64,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    rate_limit_policy: Option<String>,
    #[serde(default)]
    allowed_ips: Vec<ipnet::IpNet>,
    #[serde(default)]
    rotated_from: Option<KeyId>,
}

fn fields(r: &KeyRecord) -> Result<Vec<(&'static str, String)>> {
    let body = Body {
        prefix: r.prefix.clone(),
        env: r.env,
        owner: r.owner.clone(),
        name: r.name.clone(),
        created_at: r.created_at,
        metadata: r.metadata.clone(),
        rate_limit_policy: r.rate_limit_policy.clone(),
        allowed_ips: r.allowed_ips.clone(),
        rotated_from: r.rotated_from,
    };
    let mut f = vec![
        ("b", json(&body)?),
        ("st", r.status.as_str().to_owned()),
        ("sc", json(&r.scopes)?),
        ("uses", r.uses.to_string()),
        ("hv", r.hash_version.to_string()),
        ("h", hex::encode(r.hash)),
    ];
    let mut opt = |name: &'static str, v: Option<String>| {
        if let Some(v) = v {
            f.push((name, v));
        }
    };
    opt("exp", r.expires_at.map(|v| v.to_string()));
    opt("lu", r.last_used_at.map(|v| v.to_string()));
    opt("rev", r.revoked_at.map(|v| v.to_string()));
    opt("gu", r.grace_until.map(|v| v.to_string()));
    opt("rt", r.rotated_to.map(|v| v.to_string()));
    if let Some(c) = &r.credits {
        opt("cr", Some(c.remaining.to_string()));
        opt("crt", Some(c.refilled_at.to_string()));
        if let Some(refill) = c.refill {
            opt("cra", Some(refill.amount.to_string()));
            opt(
                "cri",
                Some(crate::clock::micros(refill.interval).to_string()),
            );
        }
    }
    Ok(f)
}

fn json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| protocol(e.to_string()))
}

fn record_from(id: &KeyId, map: &HashMap<String, String>) -> Result<KeyRecord> {
    fn num<T: std::str::FromStr>(map: &HashMap<String, String>, k: &str) -> Result<Option<T>> {
        map.get(k)
            .map(|v| {
                v.parse()
                    .map_err(|_| protocol(format!("field {k} is not a number")))
            })
            .transpose()
    }
    let body: Body =
        serde_json::from_str(map.get("b").ok_or_else(|| protocol("record has no body"))?)
            .map_err(|e| protocol(format!("record body: {e}")))?;
    let scopes: Scopes = serde_json::from_str(map.get("sc").map_or("[]", String::as_str))
        .map_err(|e| protocol(format!("record scopes: {e}")))?;
    let status = map
        .get("st")
        .and_then(|s| KeyStatus::from_name(s))
        .ok_or_else(|| protocol("record has no status"))?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(map.get("h").map_or("", String::as_str), &mut hash)
        .map_err(|_| protocol("record hash is not 32 bytes of hex"))?;
    let credits = match num::<u64>(map, "cr")? {
        None => None,
        Some(remaining) => Some(Credits {
            remaining,
            refilled_at: num(map, "crt")?.unwrap_or(0),
            refill: match (num::<u64>(map, "cra")?, num::<u64>(map, "cri")?) {
                (Some(amount), Some(interval)) => Some(Refill {
                    amount,
                    interval: Duration::from_micros(interval),
                }),
                _ => None,
            },
        }),
    };
    Ok(KeyRecord {
        id: *id,
        prefix: body.prefix,
        env: body.env,
        owner: body.owner,
        name: body.name,
        scopes,
        created_at: body.created_at,
        expires_at: num(map, "exp")?,
        last_used_at: num(map, "lu")?,
        uses: num(map, "uses")?.unwrap_or(0),
        status,
        revoked_at: num(map, "rev")?,
        grace_until: num(map, "gu")?,
        rotated_to: map
            .get("rt")
            .map(|s| s.parse())
            .transpose()
            .map_err(|_| protocol("bad rotated_to"))?,
        rotated_from: body.rotated_from,
        metadata: body.metadata,
        rate_limit_policy: body.rate_limit_policy,
        allowed_ips: body.allowed_ips,
        credits,
        hash_version: num(map, "hv")?.unwrap_or(0),
        hash,
    })
}

fn pairs(flat: &[String]) -> HashMap<String, String> {
    flat.chunks_exact(2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

impl RedisStore {
    fn with_conn(conn: Conn) -> Self {
        let (feed, _) = broadcast::channel(4096);
        Self {
            shared: Arc::new(Shared {
                conn,
                prefix: "palisade:apikey:".to_owned(),
                timeout: Duration::from_secs(1),
                idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
                scripts: Scripts {
                    insert: script(include_str!("lua/insert.lua")),
                    revoke: script(include_str!("lua/revoke.lua")),
                    rotate: script(include_str!("lua/rotate.lua")),
                    scopes: script(include_str!("lua/scopes.lua")),
                    charge: script(include_str!("lua/charge.lua")),
                    rehash: script(include_str!("lua/rehash.lua")),
                    usage: script(include_str!("lua/usage.lua")),
                },
                feed,
                follower: Mutex::new(None),
            }),
        }
    }

    /// A store on a standalone (or TLS) Redis. No I/O until first use.
    pub fn new(pool: deadpool_redis::Pool) -> Self {
        Self::with_conn(Conn::Single(pool))
    }

    /// A store on a Redis Cluster. No I/O until first use.
    pub fn cluster(pool: deadpool_redis::cluster::Pool) -> Self {
        Self::with_conn(Conn::Cluster(pool))
    }

    fn shared_mut(&mut self) -> &mut Shared {
        Arc::get_mut(&mut self.shared).expect("configured before it is cloned or used")
    }

    /// Put every key under `prefix` (default `palisade:apikey:`); braces are encoded so it
    /// never changes a hash tag.
    ///
    /// # Panics
    /// When called on a clone of a store (configure before cloning).
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.shared_mut().prefix = prefix.into().replace('{', "%7B").replace('}', "%7D");
        self
    }

    /// Give up on one operation after `timeout` (default 1 s).
    ///
    /// # Panics
    /// When called on a clone of a store (configure before cloning).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.shared_mut().timeout = timeout;
        self
    }

    /// Keep idempotency answers for `ttl` (default 24 h).
    ///
    /// # Panics
    /// When called on a clone of a store (configure before cloning).
    #[must_use]
    pub fn with_idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.shared_mut().idempotency_ttl = ttl;
        self
    }

    /// The Redis key of a record.
    pub fn record_key(&self, id: &KeyId) -> String {
        format!(
            "{}{{{}}}:k:{}",
            self.shared.prefix,
            id.family(),
            id.as_str()
        )
    }

    fn idempotency_key(&self, id: &KeyId, key: &str) -> String {
        format!(
            "{}{{{}}}:i:{}:{}",
            self.shared.prefix,
            id.family(),
            id.as_str(),
            encode(key)
        )
    }

    fn owner_key(&self, owner: &str) -> String {
        format!("{}{{o:{}}}", self.shared.prefix, encode(owner))
    }

    fn stream_key(&self) -> String {
        format!("{}changes", self.shared.prefix)
    }
}

impl Shared {
    async fn timed<T>(
        &self,
        timeout: Duration,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    async fn invoke<T: FromRedisValue>(&self, inv: &ScriptInvocation<'_>) -> Result<T> {
        self.timed(self.timeout, async {
            match &self.conn {
                Conn::Single(pool) => {
                    let mut c = pool.get().await.map_err(|e| Error::backend(e, true))?;
                    inv.invoke_async(&mut c).await.map_err(redis_error)
                }
                Conn::Cluster(pool) => {
                    let mut c = pool.get().await.map_err(|e| Error::backend(e, true))?;
                    inv.invoke_async(&mut c).await.map_err(redis_error)
                }
            }
        })
        .await
    }

    async fn query_with<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> Result<T> {
        self.timed(timeout, async {
            match &self.conn {
                Conn::Single(pool) => {
                    let mut c = pool.get().await.map_err(|e| Error::backend(e, true))?;
                    cmd.query_async(&mut c).await.map_err(redis_error)
                }
                Conn::Cluster(pool) => {
                    let mut c = pool.get().await.map_err(|e| Error::backend(e, true))?;
                    cmd.query_async(&mut c).await.map_err(redis_error)
                }
            }
        })
        .await
    }

    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        self.query_with(cmd, self.timeout).await
    }
}

/// How long one `XREAD BLOCK` of the follower waits (under redis-rs' 500 ms response
/// timeout).
const FOLLOW_BLOCK: Duration = Duration::from_millis(200);

async fn follow(shared: Weak<Shared>, stream: String) {
    let mut last: Option<String> = None;
    let mut healthy = true;
    loop {
        let Some(s) = shared.upgrade() else { return };
        let step: Result<()> = async {
            // From the stream's start: the capped stream (about 10 000 ids) is replayed once,
            // so a change made while this follower was starting is never missed.
            let from = last.clone().unwrap_or_else(|| "0-0".to_owned());
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(1000)
                .arg("BLOCK")
                .arg(FOLLOW_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&stream)
                .arg(&from);
            let reply: Option<redis::streams::StreamReadReply> =
                s.query_with(&cmd, s.timeout + FOLLOW_BLOCK).await?;
            last = Some(from);
            for key in reply.map(|r| r.keys).unwrap_or_default() {
                for entry in key.ids {
                    if let Some(id) = entry
                        .get::<String>("id")
                        .and_then(|t| t.parse::<KeyId>().ok())
                    {
                        let _ = s.feed.send(id);
                    }
                    last = Some(entry.id);
                }
            }
            Ok(())
        }
        .await;
        match step {
            Ok(()) => {
                if !healthy {
                    tracing::info!("api-key change feed: following again");
                }
                healthy = true;
            }
            Err(e) => {
                if healthy {
                    tracing::warn!(error = %e, "api-key change feed lost Redis; verify caches fall back to their TTL");
                }
                healthy = false;
                drop(s);
                tokio::time::sleep(FOLLOW_BLOCK).await;
            }
        }
    }
}

impl RedisStore {
    async fn note_change(&self, id: &KeyId) {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.stream_key())
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg("id")
            .arg(id.as_str());
        if let Err(e) = self.shared.query::<String>(&cmd).await {
            tracing::warn!(error = %e, key_id = id.as_str(), "api-key change not published; other instances see it within their cache TTL");
        }
    }

    async fn index_owner(&self, owner: &str, id: &KeyId) -> Result<()> {
        let mut cmd = redis::cmd("SADD");
        cmd.arg(self.owner_key(owner)).arg(id.as_str());
        self.shared.query::<i64>(&cmd).await.map(|_| ())
    }

    fn decode(id: &KeyId, flat: Option<Vec<String>>) -> Result<Option<KeyRecord>> {
        match flat {
            None => Ok(None),
            Some(f) if f.is_empty() => Ok(None),
            Some(f) => record_from(id, &pairs(&f)).map(Some),
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn insert(&self, record: &KeyRecord) -> Result<bool> {
        let mut inv = self.shared.scripts.insert.prepare_invoke();
        inv.key(self.record_key(&record.id));
        for (k, v) in fields(record)? {
            inv.arg(k).arg(v);
        }
        let inserted: i64 = self.shared.invoke(&inv).await?;
        if inserted == 1 {
            self.index_owner(&record.owner, &record.id).await?;
        }
        Ok(inserted == 1)
    }

    async fn get(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.record_key(id));
        let map: HashMap<String, String> = self.shared.query(&cmd).await?;
        if map.is_empty() {
            return Ok(None);
        }
        record_from(id, &map).map(|r| Some(Arc::new(r)))
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(self.owner_key(owner));
        let ids: Vec<String> = self.shared.query(&cmd).await?;
        let mut ids: Vec<KeyId> = ids.iter().filter_map(|s| s.parse().ok()).collect();
        ids.sort();
        let records: Vec<Result<Option<Arc<KeyRecord>>>> = futures::stream::iter(ids)
            .map(|id| async move { self.get(&id).await })
            .buffered(16)
            .collect()
            .await;
        let mut out = Vec::new();
        for r in records {
            if let Some(r) = r? {
                out.push((*r).clone());
            }
        }
        Ok(out)
    }

    async fn revoke(&self, id: &KeyId, now: u64) -> Result<Option<KeyRecord>> {
        let mut inv = self.shared.scripts.revoke.prepare_invoke();
        inv.key(self.record_key(id)).arg(now);
        let flat: Option<Vec<String>> = self.shared.invoke(&inv).await?;
        let r = Self::decode(id, flat)?;
        if r.is_some() {
            self.note_change(id).await;
        }
        Ok(r)
    }

    async fn rotate(
        &self,
        old: &KeyId,
        new: &KeyRecord,
        now: u64,
        grace_until: u64,
    ) -> Result<RotateOutcome> {
        if old.family() != new.id.family() {
            return Err(Error::InvalidConfig(
                "a rotated key must stay in its family".into(),
            ));
        }
        let mut inv = self.shared.scripts.rotate.prepare_invoke();
        inv.key(self.record_key(old))
            .key(self.record_key(&new.id))
            .arg(now)
            .arg(grace_until)
            .arg(new.id.as_str());
        for (k, v) in fields(new)? {
            inv.arg(k).arg(v);
        }
        let mut flat: Vec<String> = self.shared.invoke(&inv).await?;
        if flat.is_empty() {
            return Err(protocol("empty rotate answer"));
        }
        let status = flat.remove(0);
        Ok(match status.as_str() {
            "ok" => {
                let old_rec = record_from(old, &pairs(&flat))?;
                self.index_owner(&new.owner, &new.id).await?;
                self.note_change(old).await;
                RotateOutcome::Rotated(Box::new(old_rec))
            }
            "not_found" => RotateOutcome::NotFound,
            "taken" => RotateOutcome::InvalidState("taken"),
            other => RotateOutcome::InvalidState(
                KeyStatus::from_name(other).map_or("unknown", KeyStatus::as_str),
            ),
        })
    }

    async fn update_scopes(&self, id: &KeyId, scopes: &Scopes) -> Result<Option<KeyRecord>> {
        let mut inv = self.shared.scripts.scopes.prepare_invoke();
        inv.key(self.record_key(id))
            .arg(serde_json::to_string(scopes).map_err(|e| protocol(e.to_string()))?);
        let flat: Option<Vec<String>> = self.shared.invoke(&inv).await?;
        let r = Self::decode(id, flat)?;
        if r.is_some() {
            self.note_change(id).await;
        }
        Ok(r)
    }

    async fn charge(
        &self,
        id: &KeyId,
        cost: u64,
        idempotency_key: Option<&str>,
        now: u64,
    ) -> Result<CreditOutcome> {
        let mut inv = self.shared.scripts.charge.prepare_invoke();
        inv.key(self.record_key(id));
        if let Some(k) = idempotency_key {
            inv.key(self.idempotency_key(id, k));
        }
        let ttl_ms = u64::try_from(self.shared.idempotency_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        inv.arg(now)
            .arg(cost)
            .arg(ttl_ms)
            .arg(if idempotency_key.is_some() { "1" } else { "0" });
        let reply: Vec<String> = self.shared.invoke(&inv).await?;
        let n = |i: usize| -> Result<u64> {
            reply
                .get(i)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| protocol("bad charge answer"))
        };
        Ok(match reply.first().map(String::as_str) {
            Some("charged") => CreditOutcome::Charged {
                remaining: n(1)?,
                replayed: n(2)? == 1,
            },
            Some("out_of_credits") => CreditOutcome::OutOfCredits { remaining: n(1)? },
            Some("not_active") => CreditOutcome::NotActive,
            Some("not_found") => CreditOutcome::NotFound,
            Some("unlimited") => CreditOutcome::Unlimited,
            _ => return Err(protocol("unknown charge answer")),
        })
    }

    async fn rehash(
        &self,
        id: &KeyId,
        from_version: u16,
        version: u16,
        hash: &[u8; 32],
    ) -> Result<()> {
        let mut inv = self.shared.scripts.rehash.prepare_invoke();
        inv.key(self.record_key(id))
            .arg(from_version)
            .arg(version)
            .arg(hex::encode(hash));
        let changed: i64 = self.shared.invoke(&inv).await?;
        if changed == 1 {
            self.note_change(id).await;
        }
        Ok(())
    }

    async fn record_usage(&self, usage: &[Usage]) -> Result<()> {
        let results: Vec<Result<i64>> = futures::stream::iter(usage.iter().copied())
            .map(|u: Usage| async move {
                let mut inv = self.shared.scripts.usage.prepare_invoke();
                inv.key(self.record_key(&u.id))
                    .arg(u.uses)
                    .arg(u.last_used_at);
                self.shared.invoke::<i64>(&inv).await
            })
            .buffer_unordered(16)
            .collect()
            .await;
        results.into_iter().try_for_each(|r| r.map(|_| ()))
    }

    fn changes(&self) -> Option<broadcast::Receiver<KeyId>> {
        let mut follower = self.shared.follower.lock();
        if follower.is_none() {
            tokio::runtime::Handle::try_current().ok()?;
            *follower = Some(tokio::spawn(follow(
                Arc::downgrade(&self.shared),
                self.stream_key(),
            )));
        }
        Some(self.shared.feed.subscribe())
    }

    fn backend_name(&self) -> &'static str {
        "redis"
    }

    async fn health(&self) -> Result<()> {
        let _: String = self.shared.query(&redis::cmd("PING")).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn names_cannot_escape_the_hash_tag_or_collide() {
        assert_eq!(encode("team-42"), "team-42");
        assert_eq!(encode("a}b{c"), "a%7Db%7Bc");
        assert_ne!(encode("a:b"), encode("a%3Ab"));
        assert!(!encode("x}:s\n").contains(['{', '}', ':', '\n']));
    }
}
