//! The Redis target: keyspace data migrations, ledger in a hash, lease in a hash, on a
//! standalone (or TLS) Redis or a Redis Cluster.
//!
//! # Keys
//! Every key of the migrator shares one hash tag, so a Cluster keeps them in one slot:
//!
//! | key | type | content |
//! |---|---|---|
//! | `{<prefix>}:ledger` | hash | version → ledger row (JSON) |
//! | `{<prefix>}:lock` | hash | `holder`, `token` (fencing), `expires_at` (µs, server time) |
//! | `{<prefix>}:audit` | list | audit entries (JSON), the newest 10 000 |
//! | `{<prefix>}:apps` | hash | app version → registration (JSON) |
//!
//! # Migrations
//! `.redis` files hold one command per line (`HSET user:1 plan free`, arguments split on
//! blanks, `"…"` quoting with `\"` and `\\`, `--` or `#` comments); `.lua` files hold a
//! script body that sees its declared keys (`-- palisade: backup = k1, k2`) as `KEYS`.
//!
//! On a standalone server a step is one script: the fencing check, the migration and the
//! ledger write run atomically. Redis has no rollback, so a command that fails half-way
//! leaves the ones before it applied: the migrator then restores the backup of the
//! declared keys (`DUMP`/`RESTORE`). On a Cluster the migration's keys live in other slots
//! than the ledger's, so the step is three calls: fence, migration (commands routed one by
//! one; a Lua body must keep its keys in one slot), fenced ledger write.

use std::time::Duration;

use async_trait::async_trait;
use redis::{FromRedisValue, Script, ScriptInvocation, Value};

use crate::error::{Error, Result};
use crate::ledger::{AppVersion, AuditEntry, Lease, LeaseGrant, LeaseInfo, LedgerRow};
use crate::migration::ScriptKind;
use crate::store::{Backup, BackupScope, ScriptResult, Step, Store};

const MAX_AUDIT: usize = 10_000;
const COMMON: &str = include_str!("lua/common.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

#[derive(Clone)]
enum Conn {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

fn redis_err(e: redis::RedisError) -> Error {
    let transient =
        e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal();
    Error::backend(e, transient)
}

/// The Redis target. `new`/`cluster` are synchronous and do no I/O.
///
/// ```no_run
/// # async fn demo() -> palisade_migrate::Result<()> {
/// use palisade_migrate::{MigrationSet, Migrator, RedisStore};
///
/// let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:6379")
///     .create_pool(Some(deadpool_redis::Runtime::Tokio1))
///     .unwrap();
/// let store = RedisStore::new(pool).with_prefix("billing");
/// let migrator = Migrator::builder(store, MigrationSet::from_dir("redis-migrations")?).build()?;
/// migrator.up().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    timeout: Duration,
    acquire: Script,
    renew: Script,
    release: Script,
    info: Script,
    record: Script,
    step: Script,
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

impl RedisStore {
    fn with_conn(conn: Conn) -> Self {
        Self {
            conn,
            prefix: "palisade:migrate".to_owned(),
            timeout: Duration::from_secs(10),
            acquire: script(include_str!("lua/acquire.lua")),
            renew: script(include_str!("lua/renew.lua")),
            release: script(include_str!("lua/release.lua")),
            info: script(include_str!("lua/info.lua")),
            record: script(include_str!("lua/record.lua")),
            step: script(include_str!("lua/step.lua")),
        }
    }

    /// A target on a standalone (or TLS) Redis.
    pub fn new(pool: deadpool_redis::Pool) -> Self {
        Self::with_conn(Conn::Single(pool))
    }

    /// A target on a Redis Cluster.
    pub fn cluster(pool: deadpool_redis::cluster::Pool) -> Self {
        Self::with_conn(Conn::Cluster(pool))
    }

    /// Name the migrator's keys `{<prefix>}:…` (default `palisade:migrate`); braces are
    /// encoded so the prefix is always the whole hash tag.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().replace('{', "%7B").replace('}', "%7D");
        self
    }

    /// Give up on one call after `timeout` (default 10 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn key(&self, name: &str) -> String {
        format!("{{{}}}:{name}", self.prefix)
    }

    async fn bounded<T>(&self, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or(Err(Error::Timeout(self.timeout)))
    }

    async fn invoke<T: FromRedisValue>(&self, inv: &ScriptInvocation<'_>) -> Result<T> {
        self.bounded(async {
            match &self.conn {
                Conn::Single(pool) => {
                    let mut c = pool.get().await.map_err(|e| Error::backend(e, true))?;
                    inv.invoke_async(&mut c).await.map_err(redis_err)
                }
                Conn::Cluster(pool) => {
                    let mut c = pool.get().await.map_err(|e| Error::backend(e, true))?;
                    inv.invoke_async(&mut c).await.map_err(redis_err)
                }
            }
        })
        .await
    }

    /// One command; `Ok(Err(_))` when Redis answered with an error (a script failure).
    async fn command(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<std::result::Result<Value, redis::RedisError>> {
        self.bounded(async {
            let r = match &self.conn {
                Conn::Single(pool) => {
                    let mut c = pool.get().await.map_err(|e| Error::backend(e, true))?;
                    cmd.query_async::<Value>(&mut c).await
                }
                Conn::Cluster(pool) => {
                    let mut c = pool.get().await.map_err(|e| Error::backend(e, true))?;
                    cmd.query_async::<Value>(&mut c).await
                }
            };
            match r {
                Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                    Err(redis_err(e))
                }
                other => Ok(other),
            }
        })
        .await
    }

    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let v = self.command(cmd).await?.map_err(redis_err)?;
        T::from_redis_value(v).map_err(|e| Error::backend(e, false))
    }

    fn json<T: serde::Serialize>(value: &T) -> Result<String> {
        serde_json::to_string(value).map_err(|e| Error::backend(e, false))
    }

    fn lua_step(body: &str) -> Script {
        script(&include_str!("lua/lua_step.lua").replace("USER_BODY", body))
    }
}

/// Split one line of a `.redis` file into arguments: blanks separate, `"…"` quotes (with
/// `\"` and `\\` inside). `None` for a blank or comment line.
pub(crate) fn parse_command(line: &str) -> std::result::Result<Option<Vec<String>>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with("--") || line.starts_with('#') {
        return Ok(None);
    }
    let mut args = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut arg = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("unclosed quote in {line:?}")),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(e @ ('"' | '\\')) => arg.push(e),
                        Some('n') => arg.push('\n'),
                        Some(o) => {
                            arg.push('\\');
                            arg.push(o);
                        }
                        None => return Err(format!("unclosed quote in {line:?}")),
                    },
                    Some(o) => arg.push(o),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                arg.push(c);
                chars.next();
            }
        }
        args.push(arg);
    }
    Ok(Some(args))
}

fn parse_commands(script: &str) -> std::result::Result<Vec<Vec<String>>, String> {
    let mut out = Vec::new();
    for line in script.lines() {
        if let Some(args) = parse_command(line)? {
            out.push(args);
        }
    }
    Ok(out)
}

fn step_outcome(reply: &[String], token: u64) -> Result<ScriptResult> {
    match reply.first().map(String::as_str) {
        Some("ok") => Ok(Ok(())),
        Some("lost") => Err(Error::LeaseLost { token }),
        Some("fail") => Ok(Err(reply.get(1).cloned().unwrap_or_default().into())),
        _ => Err(Error::backend(
            format!("unexpected step reply {reply:?}"),
            false,
        )),
    }
}

#[async_trait]
impl Store for RedisStore {
    fn backend_name(&self) -> &'static str {
        "redis"
    }

    fn supports(&self, kind: ScriptKind) -> bool {
        matches!(kind, ScriptKind::Redis | ScriptKind::Lua)
    }

    fn rolls_back_failed_scripts(&self) -> bool {
        false
    }

    async fn prepare(&self) -> Result<()> {
        Ok(())
    }

    async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<LeaseGrant> {
        let mut inv = self.acquire.prepare_invoke();
        inv.key(self.key("lock"))
            .arg(holder)
            .arg(ttl.as_millis() as u64);
        let reply: Vec<Value> = self.invoke(&inv).await?;
        let int = |v: Option<&Value>| match v {
            Some(Value::Int(i)) => u64::try_from(*i).unwrap_or(0),
            _ => 0,
        };
        match reply.first() {
            Some(Value::Int(1)) => Ok(LeaseGrant::Acquired(Lease {
                token: int(reply.get(1)),
                holder: holder.to_owned(),
                ttl,
            })),
            _ => {
                let holder = match reply.get(1) {
                    Some(v) => String::from_redis_value(v.clone()).unwrap_or_default(),
                    None => String::new(),
                };
                Ok(LeaseGrant::Held {
                    holder,
                    expires_in: Duration::from_millis(int(reply.get(2))),
                })
            }
        }
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let mut inv = self.renew.prepare_invoke();
        inv.key(self.key("lock"))
            .arg(lease.token)
            .arg(ttl.as_millis() as u64);
        Ok(self.invoke::<i64>(&inv).await? == 1)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let mut inv = self.release.prepare_invoke();
        inv.key(self.key("lock")).arg(lease.token);
        self.invoke::<i64>(&inv).await.map(|_| ())
    }

    async fn lease_info(&self) -> Result<Option<LeaseInfo>> {
        let mut inv = self.info.prepare_invoke();
        inv.key(self.key("lock"));
        let reply: Vec<Value> = self.invoke(&inv).await?;
        if reply.len() < 3 {
            return Ok(None);
        }
        let n = |v: &Value| match v {
            Value::Int(i) => u64::try_from(*i).unwrap_or(0),
            _ => 0,
        };
        Ok(Some(LeaseInfo {
            holder: String::from_redis_value(reply[0].clone()).unwrap_or_default(),
            token: n(&reply[1]),
            expires_in_ms: n(&reply[2]),
        }))
    }

    async fn ledger(&self) -> Result<Vec<LedgerRow>> {
        let all: Vec<(String, String)> = self
            .query(redis::cmd("HGETALL").arg(self.key("ledger")))
            .await?;
        let mut rows = all
            .iter()
            .map(|(_, json)| {
                serde_json::from_str::<LedgerRow>(json)
                    .map_err(|e| Error::backend(format!("bad ledger row in redis: {e}"), false))
            })
            .collect::<Result<Vec<_>>>()?;
        rows.sort_by_key(|r| r.version);
        Ok(rows)
    }

    async fn record(
        &self,
        lease: &Lease,
        rows: &[LedgerRow],
        delete: &[u64],
        audit: &[AuditEntry],
    ) -> Result<()> {
        let mut inv = self.record.prepare_invoke();
        inv.key(self.key("lock"))
            .key(self.key("ledger"))
            .key(self.key("audit"));
        inv.arg(lease.token).arg(MAX_AUDIT).arg(rows.len());
        for r in rows {
            inv.arg(r.version).arg(Self::json(r)?);
        }
        inv.arg(delete.len());
        for v in delete {
            inv.arg(*v);
        }
        for a in audit {
            inv.arg(Self::json(a)?);
        }
        match self.invoke::<i64>(&inv).await? {
            1 => Ok(()),
            _ => Err(Error::LeaseLost { token: lease.token }),
        }
    }

    async fn run_step(&self, lease: &Lease, step: &Step<'_>) -> Result<ScriptResult> {
        let commands = match step.kind {
            ScriptKind::Redis => match parse_commands(step.script) {
                Ok(c) => Some(c),
                Err(e) => return Ok(Err(e.into())),
            },
            _ => None,
        };
        let row_json = match &step.record {
            Some(r) => {
                let mut r = r.clone();
                r.finished_at_us = Some(r.started_at_us);
                Self::json(&r)?
            }
            None => String::new(),
        };
        let audit_json = Self::json(&step.audit)?;
        if let Conn::Single(_) = self.conn {
            let lua;
            let script = match &commands {
                Some(_) => &self.step,
                None => {
                    lua = Self::lua_step(step.script);
                    &lua
                }
            };
            let mut inv = script.prepare_invoke();
            inv.key(self.key("lock"))
                .key(self.key("ledger"))
                .key(self.key("audit"));
            for k in step.keys {
                inv.key(k);
            }
            inv.arg(lease.token)
                .arg(lease.ttl.as_millis() as u64)
                .arg(MAX_AUDIT)
                .arg(step.version)
                .arg(&row_json)
                .arg(&audit_json);
            if let Some(commands) = &commands {
                inv.arg(commands.len());
                for c in commands {
                    inv.arg(c.len());
                    for a in c {
                        inv.arg(a);
                    }
                }
            }
            let reply: Vec<String> = match self.invoke(&inv).await {
                Ok(r) => r,
                // A Lua body that does not compile is the migration's failure.
                Err(Error::Backend {
                    source,
                    transient: false,
                }) => return Ok(Err(source)),
                Err(e) => return Err(e),
            };
            return step_outcome(&reply, lease.token);
        }
        // Cluster: fence, run, record.
        if !self.renew_lease(lease, lease.ttl).await? {
            return Err(Error::LeaseLost { token: lease.token });
        }
        match &commands {
            Some(commands) => {
                for c in commands {
                    let mut cmd = redis::cmd(&c[0]);
                    for a in &c[1..] {
                        cmd.arg(a);
                    }
                    if let Err(e) = self.command(&cmd).await? {
                        return Ok(Err(Box::new(e)));
                    }
                }
            }
            None => {
                let s = Script::new(step.script);
                let mut inv = s.prepare_invoke();
                for k in step.keys {
                    inv.key(k);
                }
                match self.invoke::<Value>(&inv).await {
                    Ok(_) => {}
                    Err(Error::Backend {
                        source,
                        transient: false,
                    }) => return Ok(Err(source)),
                    Err(e) => return Err(e),
                }
            }
        }
        let rows: Vec<LedgerRow> = step.record.iter().cloned().collect();
        let delete: Vec<u64> = if step.record.is_none() {
            vec![step.version]
        } else {
            vec![]
        };
        self.record(lease, &rows, &delete, std::slice::from_ref(&step.audit))
            .await?;
        Ok(Ok(()))
    }

    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let start = -(i64::try_from(limit).unwrap_or(i64::MAX));
        let all: Vec<String> = self
            .query(
                redis::cmd("LRANGE")
                    .arg(self.key("audit"))
                    .arg(start)
                    .arg(-1),
            )
            .await?;
        all.iter()
            .map(|j| {
                serde_json::from_str(j)
                    .map_err(|e| Error::backend(format!("bad audit entry in redis: {e}"), false))
            })
            .collect()
    }

    async fn register_app(&self, app: &AppVersion) -> Result<()> {
        self.query::<i64>(
            redis::cmd("HSET")
                .arg(self.key("apps"))
                .arg(&app.version)
                .arg(Self::json(app)?),
        )
        .await
        .map(|_| ())
    }

    async fn apps(&self) -> Result<Vec<AppVersion>> {
        let all: Vec<(String, String)> = self
            .query(redis::cmd("HGETALL").arg(self.key("apps")))
            .await?;
        let mut apps = all
            .iter()
            .map(|(_, j)| {
                serde_json::from_str(j)
                    .map_err(|e| Error::backend(format!("bad app entry in redis: {e}"), false))
            })
            .collect::<Result<Vec<AppVersion>>>()?;
        apps.sort_by(|a, b| a.version.cmp(&b.version));
        Ok(apps)
    }

    async fn health(&self) -> Result<()> {
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(())
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct DumpedKey {
    key: String,
    /// Hex of `DUMP`'s payload; `None` when the key did not exist.
    value: Option<String>,
    /// Remaining time to live in ms (0: none).
    ttl_ms: i64,
}

/// Backups of the keys a migration declares (`DUMP` with their TTL), restored with
/// `RESTORE … REPLACE` (a key that did not exist is deleted). A Redis has no schema to dump
/// whole: [`BackupScope::Everything`] is refused.
#[async_trait]
impl Backup for RedisStore {
    fn kind(&self) -> &'static str {
        "redis_dump"
    }

    fn supports_everything(&self) -> bool {
        false
    }

    async fn dump(&self, scope: &BackupScope) -> Result<Vec<u8>> {
        let BackupScope::Objects(keys) = scope else {
            return Err(Error::Backup(
                "a Redis backup needs the keys to save (`-- palisade: backup = key1, key2`)".into(),
            ));
        };
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let value: Option<Vec<u8>> = self.query(redis::cmd("DUMP").arg(k)).await?;
            let ttl: i64 = if value.is_some() {
                self.query(redis::cmd("PTTL").arg(k)).await?
            } else {
                0
            };
            out.push(DumpedKey {
                key: k.clone(),
                value: value.map(hex::encode),
                ttl_ms: ttl.max(0),
            });
        }
        serde_json::to_vec(&out).map_err(|e| Error::Backup(e.to_string()))
    }

    async fn restore(&self, dump: &[u8], _scope: &BackupScope) -> Result<()> {
        let keys: Vec<DumpedKey> = serde_json::from_slice(dump)
            .map_err(|e| Error::Backup(format!("not a Redis dump: {e}")))?;
        for k in keys {
            match k.value {
                Some(hex_value) => {
                    let bytes = hex::decode(hex_value).map_err(|e| Error::Backup(e.to_string()))?;
                    self.query::<Value>(
                        redis::cmd("RESTORE")
                            .arg(&k.key)
                            .arg(k.ttl_ms)
                            .arg(bytes)
                            .arg("REPLACE"),
                    )
                    .await?;
                }
                None => {
                    self.query::<i64>(redis::cmd("DEL").arg(&k.key)).await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn command_lines() {
        assert_eq!(
            parse_command("  SET a \"b c\" d").unwrap().unwrap(),
            ["SET", "a", "b c", "d"]
        );
        assert_eq!(
            parse_command(r#"SET k "q\"uote\\""#).unwrap().unwrap(),
            ["SET", "k", "q\"uote\\"]
        );
        assert!(parse_command("-- comment").unwrap().is_none());
        assert!(parse_command("# comment").unwrap().is_none());
        assert!(parse_command("SET a \"open").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_command_lines_never_panic(line in ".{0,80}") {
            let _ = parse_command(&line);
        }
    }
}
