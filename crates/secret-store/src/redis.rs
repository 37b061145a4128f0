//! [`RedisProvider`]: versioned secrets in Redis, encrypted before they leave the process.
//!
//! # Keys
//! | key | type | content |
//! |---|---|---|
//! | `<prefix>{<name>}:s` | hash | `next` (last reserved version), `latest` (newest committed), `<n>` → sealed value of version n |
//! | `<prefix>index` | set | every name written (for `list`) |
//!
//! `<name>` is percent-encoded (every byte outside `A-Z a-z 0-9 _ . -`), so no name can
//! close the hash tag or collide with another. Each value is sealed with XChaCha20-Poly1305
//! under the [`Keyring`]'s current [`MasterKey`](crate::MasterKey), bound to the prefix,
//! name and version: Redis (its memory, its persistence files, its replicas, anyone who can
//! read them) holds only ciphertext, and a blob moved under another name or version does not
//! decrypt. A put is two round trips (reserve a version number with `HINCRBY`, then commit the
//! blob sealed for that number with one script); a get is one `EVALSHA`.

use std::time::Duration;

use async_trait::async_trait;
use redis::{FromRedisValue, Script, ScriptInvocation};
use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, Result};
use crate::key::Keyring;
use crate::provider::Provider;
use crate::value::{Fetched, SecretName, Version};

const GET: &str = include_str!("lua/get.lua");
const COMMIT: &str = include_str!("lua/commit.lua");

#[derive(Clone)]
enum Conn {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// Secrets in Redis (standalone, TLS or Cluster), encrypted client-side. Writable: every
/// `put` is a new version (1, 2, …), the last [`max_versions`](Self::max_versions) stay
/// readable.
///
/// Synchronous to build, no I/O until the first call; every call is bounded by the
/// operation timeout (default 1 s). Redis errors are classified: `NOAUTH`, `WRONGPASS` and
/// `NOPERM` are [`Error::Denied`]; connection trouble, timeouts, `LOADING`, `TRYAGAIN`,
/// `CLUSTERDOWN` are transient.
///
/// ```no_run
/// use palisade_secret_store::{MasterKey, RedisProvider};
/// let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:6379")
///     .create_pool(Some(deadpool_redis::Runtime::Tokio1))
///     .unwrap();
/// let key = MasterKey::from_hex("k1", &std::env::var("SECRETS_MASTER_KEY").unwrap()).unwrap();
/// let redis = RedisProvider::new(pool, key).with_prefix("myapp:secrets:");
/// ```
#[derive(Clone)]
pub struct RedisProvider {
    conn: Conn,
    keyring: Keyring,
    name: String,
    prefix: String,
    timeout: Duration,
    max_versions: u32,
    get: Script,
    commit: Script,
}

impl std::fmt::Debug for RedisProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisProvider")
            .field("name", &self.name)
            .field("cluster", &matches!(self.conn, Conn::Cluster(_)))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("keyring", &self.keyring)
            .finish_non_exhaustive()
    }
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

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl RedisProvider {
    fn with_conn(conn: Conn, keyring: Keyring) -> Self {
        Self {
            conn,
            keyring,
            name: "redis".to_owned(),
            prefix: "palisade:secrets:".to_owned(),
            timeout: Duration::from_secs(1),
            max_versions: 10,
            get: Script::new(GET),
            commit: Script::new(COMMIT),
        }
    }

    /// A provider on a standalone (or TLS) Redis, sealing values with `key` (a
    /// [`MasterKey`](crate::MasterKey) or a [`Keyring`]).
    pub fn new(pool: deadpool_redis::Pool, key: impl Into<Keyring>) -> Self {
        Self::with_conn(Conn::Single(pool), key.into())
    }

    /// A provider on a Redis Cluster.
    pub fn cluster(pool: deadpool_redis::cluster::Pool, key: impl Into<Keyring>) -> Self {
        Self::with_conn(Conn::Cluster(pool), key.into())
    }

    /// Put every key under `prefix` (default `palisade:secrets:`); braces are encoded so
    /// that the prefix never changes the hash tag. The prefix is also bound into every
    /// ciphertext.
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

    /// Keep the last `n` versions of each secret readable (default 10, at least 2).
    #[must_use]
    pub fn max_versions(mut self, n: u32) -> Self {
        self.max_versions = n.max(2);
        self
    }

    /// Report under another name.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The hash that holds `name`'s versions.
    pub fn key(&self, name: &SecretName) -> String {
        format!("{}{{{}}}:s", self.prefix, encode(name.as_str()))
    }

    fn index_key(&self) -> String {
        format!("{}index", self.prefix)
    }

    fn aad(&self, name: &SecretName, version: &str) -> Vec<u8> {
        format!(
            "palisade-secret-store redis v1\0{}\0{}\0{version}",
            self.prefix,
            name.as_str()
        )
        .into_bytes()
    }

    async fn bounded<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or(Err(Error::Timeout(self.timeout)))
    }

    async fn script<T: FromRedisValue>(&self, inv: &ScriptInvocation<'_>) -> Result<T> {
        self.bounded(async {
            match &self.conn {
                Conn::Single(pool) => {
                    let mut c = pool.get().await.map_err(|e| self.pool_error(e))?;
                    inv.invoke_async(&mut c)
                        .await
                        .map_err(|e| self.redis_error(&e))
                }
                Conn::Cluster(pool) => {
                    let mut c = pool.get().await.map_err(|e| self.pool_error(e))?;
                    inv.invoke_async(&mut c)
                        .await
                        .map_err(|e| self.redis_error(&e))
                }
            }
        })
        .await
    }

    async fn cmd<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        self.bounded(async {
            match &self.conn {
                Conn::Single(pool) => {
                    let mut c = pool.get().await.map_err(|e| self.pool_error(e))?;
                    cmd.query_async(&mut c)
                        .await
                        .map_err(|e| self.redis_error(&e))
                }
                Conn::Cluster(pool) => {
                    let mut c = pool.get().await.map_err(|e| self.pool_error(e))?;
                    cmd.query_async(&mut c)
                        .await
                        .map_err(|e| self.redis_error(&e))
                }
            }
        })
        .await
    }

    fn pool_error(&self, e: deadpool_redis::PoolError) -> Error {
        match e {
            deadpool_redis::PoolError::Backend(e) => self.redis_error(&e),
            deadpool_redis::PoolError::Timeout(_) => Error::backend(&self.name, e, true),
            e @ (deadpool_redis::PoolError::Closed
            | deadpool_redis::PoolError::NoRuntimeSpecified) => {
                Error::backend(&self.name, e, false)
            }
            e => Error::backend(&self.name, e, true),
        }
    }

    fn redis_error(&self, e: &redis::RedisError) -> Error {
        use redis::{ErrorKind, ServerErrorKind};
        let denied = matches!(
            e.kind(),
            ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm)
        ) || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"));
        if denied {
            return Error::denied(&self.name, e.code().unwrap_or("authentication failed"));
        }
        let transient = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_cluster_error()
            || matches!(
                e.kind(),
                ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                ) | ErrorKind::ClusterConnectionNotFound
            );
        // The error's text names commands and keys, never values (values travel sealed).
        Error::backend(&self.name, e.to_string(), transient)
    }
}

#[async_trait]
impl Provider for RedisProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, name: &SecretName, version: Option<&Version>) -> Result<Option<Fetched>> {
        let wanted = match version {
            None => String::new(),
            Some(v) => match v.number() {
                Some(n) if n >= 1 => n.to_string(),
                _ => return Ok(None),
            },
        };
        let mut inv = self.get.prepare_invoke();
        inv.key(self.key(name)).arg(&wanted);
        let reply: Option<(String, Vec<u8>)> = self.script(&inv).await?;
        let Some((v, blob)) = reply else {
            return Ok(None);
        };
        let version = Version::new(&v)
            .map_err(|_| Error::protocol(&self.name, "a version that is not a number"))?;
        let plain = self
            .keyring
            .open(&self.aad(name, &v), &blob)
            .ok_or_else(|| Error::Decrypt {
                provider: self.name.clone(),
            })?;
        let text = std::str::from_utf8(&plain)
            .map_err(|_| Error::protocol(&self.name, "a value that is not UTF-8"))?;
        Ok(Some(Fetched::new(SecretString::from(text), version)))
    }

    async fn put(&self, name: &SecretName, value: &SecretString) -> Result<Version> {
        let key = self.key(name);
        let n: u64 = self
            .cmd(redis::cmd("HINCRBY").arg(&key).arg("next").arg(1))
            .await?;
        let blob = self.keyring.seal(
            &self.aad(name, &n.to_string()),
            value.expose_secret().as_bytes(),
        )?;
        let mut inv = self.commit.prepare_invoke();
        inv.key(&key).arg(n).arg(blob).arg(self.max_versions);
        let _: u64 = self.script(&inv).await?;
        let _: i64 = self
            .cmd(
                redis::cmd("SADD")
                    .arg(self.index_key())
                    .arg(encode(name.as_str())),
            )
            .await?;
        Ok(Version::from(n))
    }

    fn writable(&self) -> bool {
        true
    }

    async fn list(&self) -> Result<Vec<SecretName>> {
        let members: Vec<String> = self
            .cmd(redis::cmd("SMEMBERS").arg(self.index_key()))
            .await?;
        Ok(members
            .iter()
            .filter_map(|m| SecretName::new(&decode(m)?).ok())
            .collect())
    }

    async fn health(&self) -> Result<()> {
        let pong: String = self.cmd(&redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(Error::protocol(
                &self.name,
                "PING was not answered with PONG",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{decode, encode};

    #[test]
    fn names_cannot_escape_the_hash_tag_or_collide() {
        assert_eq!(encode("openai/api-key"), "openai%2Fapi-key");
        assert_eq!(decode(&encode("a/b.c_d-e")).unwrap(), "a/b.c_d-e");
        assert!(!encode("x}:s{").contains(['{', '}', ':']));
        assert_ne!(encode("a/b"), encode("a%2Fb"));
        assert_eq!(decode("%zz"), None);
    }
}
