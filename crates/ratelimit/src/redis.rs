//! The Redis backend: [`RedisStore`].

use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::{RetryMethod, Script, ScriptInvocation};

use crate::algorithm::Verdict;
use crate::clock::Clock;
use crate::decision::{Decision, DecisionSource};
use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseCall, LeaseRequest, LeaseReturn, ReleaseCall};
use crate::quota::{Algorithm, Policy};

#[cfg(test)]
mod item_format_tests;
#[cfg(test)]
mod lua_parse_tests;
mod pack;
use pack::{Args, ITEM_FORMAT, Pack};

/// One algorithm's scripts: the shared prelude, the algorithm's file, one operation.
struct Scripts {
    acquire: Script,
    peek: Script,
    refund: Script,
    lease: Script,
    release: Script,
}

macro_rules! scripts {
    ($algorithm:literal) => {
        Scripts {
            acquire: Script::new(concat!(
                include_str!("lua/common.lua"),
                include_str!(concat!("lua/", $algorithm, ".lua")),
                include_str!("lua/acquire.lua")
            )),
            peek: Script::new(concat!(
                include_str!("lua/common.lua"),
                include_str!(concat!("lua/", $algorithm, ".lua")),
                include_str!("lua/peek.lua")
            )),
            refund: Script::new(concat!(
                include_str!("lua/common.lua"),
                include_str!(concat!("lua/", $algorithm, ".lua")),
                include_str!("lua/refund.lua")
            )),
            lease: Script::new(concat!(
                include_str!("lua/common.lua"),
                include_str!(concat!("lua/", $algorithm, ".lua")),
                include_str!("lua/ledger.lua"),
                include_str!("lua/lease.lua")
            )),
            release: Script::new(concat!(
                include_str!("lua/common.lua"),
                include_str!(concat!("lua/", $algorithm, ".lua")),
                include_str!("lua/ledger.lua"),
                include_str!("lua/release.lua")
            )),
        }
    };
}

static SCRIPTS: LazyLock<[Scripts; 5]> = LazyLock::new(|| {
    [
        scripts!("token_bucket"),
        scripts!("gcra"),
        scripts!("fixed_window"),
        scripts!("sliding_log"),
        scripts!("sliding_counter"),
    ]
});

/// One algorithm's lease and release scripts as functions of the batch script: the prelude,
/// the algorithm and the ledger defined once, then each operation a function of the item's
/// KEYS and ARGV (each begins its call with them, as its own script does: `begin`).
macro_rules! batch_ops {
    ($algorithm:literal, $code:literal) => {
        concat!(
            include_str!("lua/common.lua"),
            include_str!(concat!("lua/", $algorithm, ".lua")),
            include_str!("lua/ledger.lua"),
            "ops['",
            $code,
            ":lease'] = function(KEYS, ARGV)\n",
            include_str!("lua/lease.lua"),
            "\nend\nops['",
            $code,
            ":release'] = function(KEYS, ARGV)\n",
            include_str!("lua/release.lua"),
            "\nend\n",
        )
    };
}

/// One algorithm's batch script (its lease and release scripts as functions, and
/// `src/lua/batch.lua`), without comment lines: what a server compiles once.
fn batch_text(ops: &str) -> String {
    ["local ops = {}\n", ops, include_str!("lua/batch.lua")]
        .concat()
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .flat_map(|l| [l, "\n"])
        .collect()
}

/// Per algorithm (in [`algorithm_index`] order), the batch script's text.
static BATCH_TEXTS: LazyLock<[String; 5]> = LazyLock::new(|| {
    [
        batch_text(batch_ops!("token_bucket", "tb")),
        batch_text(batch_ops!("gcra", "gcra")),
        batch_text(batch_ops!("fixed_window", "fw")),
        batch_text(batch_ops!("sliding_log", "swl")),
        batch_text(batch_ops!("sliding_counter", "swc")),
    ]
});

/// Many keys' lease and release calls in one script call (`src/lua/batch.lua`), per
/// algorithm.
static BATCHES: LazyLock<[Script; 5]> =
    LazyLock::new(|| std::array::from_fn(|i| Script::new(&BATCH_TEXTS[i])));

/// The most items one batch script call carries (larger batches are split).
const MAX_BATCH: usize = 128;

static RESET: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/reset.lua")));

/// The scripts of `algorithm`.
fn scripts(algorithm: Algorithm) -> &'static Scripts {
    &SCRIPTS[algorithm_index(algorithm)]
}

/// `algorithm`'s place in the script tables.
const fn algorithm_index(algorithm: Algorithm) -> usize {
    match algorithm {
        Algorithm::TokenBucket => 0,
        Algorithm::Gcra => 1,
        Algorithm::FixedWindow => 2,
        Algorithm::SlidingWindowLog => 3,
        Algorithm::SlidingWindowCounter => 4,
    }
}

/// The connection a [`RedisStore`] talks through. Every variant is a handle that many tasks
/// share; scripts are sent with `EVALSHA` and loaded again after a `NOSCRIPT` (a restarted
/// or failed-over server).
///
/// TLS (`rediss://`): enable this crate's `tls` feature (rustls with the ring provider),
/// then build the pool from a `rediss://` URL (server certificate checked against the
/// system's roots) or from a `redis::Client::build_with_tls` client with your own CA.
#[derive(Clone)]
#[non_exhaustive]
pub enum RedisConnection {
    /// A `deadpool_redis` pool (single node). The store takes one multiplexed connection
    /// from it and shares it between all calls (deadpool-redis pings every connection it
    /// hands out, which would double the round trips); after a connection error, or a call
    /// abandoned by its caller (a timeout), the next call takes a fresh one.
    Pool(deadpool_redis::Pool),
    /// A `deadpool_redis` cluster pool.
    ClusterPool(deadpool_redis::cluster::Pool),
    /// One multiplexed connection shared by every call (pipelines concurrent calls).
    Multiplexed(redis::aio::MultiplexedConnection),
    /// A reconnecting multiplexed connection.
    Manager(redis::aio::ConnectionManager),
    /// A multiplexed Redis Cluster connection.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pool(_) => "RedisConnection::Pool",
            Self::ClusterPool(_) => "RedisConnection::ClusterPool",
            Self::Multiplexed(_) => "RedisConnection::Multiplexed",
            Self::Manager(_) => "RedisConnection::Manager",
            Self::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

/// Counters in Redis, shared by every instance of a service: exact across instances.
///
/// * **One round trip per decision**, whatever the number of quotas: each operation is one
///   Lua script (`EVALSHA`, reloaded after `NOSCRIPT`) that checks every quota and consumes
///   from all or none atomically.
/// * **Server time**: scripts read Redis' `TIME`, so instances with skewed clocks agree.
/// * **Cluster ready**: every key of one key+policy shares one hash tag,
///   `PREFIX:{POLICY:KEY}:QUOTA:ALGORITHM` (and `:PERIOD_MICROS` for the window
///   algorithms, whose states count periods), with the policy, key and quota names
///   percent-encoded (everything but `A-Z a-z 0-9 - _ . @`), so a hostile key (braces,
///   colons, newlines, any Unicode) can neither move the hash tag nor collide with another.
///   The prefix (default `palisade:rl`) is written as given, only `{` and `}` encoded, so
///   `redis-cli --scan --pattern 'palisade:rl:*'` lists every key.
/// * **Bounded**: every key carries a TTL of its policy's idle horizon plus one second; the
///   sliding log's sorted set is trimmed on every write and holds at most `limit` members.
///   Its members carry running totals of the costs, so every decision on it, a denial of any
///   cost included, reads `O(log n)` members (a binary search at most), never the log.
///
/// ```no_run
/// use palisade_ratelimit::{RedisStore, RateLimiter, FailureMode, Policy, Quota, Algorithm};
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:6379")
///     .create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
/// let limiter = RateLimiter::builder(RedisStore::new(pool))
///     .failure_mode(FailureMode::FallbackToMemory)
///     .build();
/// let policy = Policy::single("api", Algorithm::Gcra, Quota::per_second(100))?;
/// let decision = limiter.acquire("tenant:7", &policy, 1).await;
/// # let _ = decision; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConnection,
    namespace: Arc<str>,
    timeout: Option<Duration>,
    clock: Option<Arc<dyn Clock>>,
    // With a pool: one multiplexed connection taken from it and shared by every call, so a
    // call costs one round trip (deadpool-redis pings every connection it hands out). Dropped
    // on a connection error; the next call takes a fresh one from the pool.
    shared: Arc<ArcSwapOption<MultiplexedConnection>>,
    // The batch script (large) is loaded once by one call, not by every batch in flight
    // that meets `NOSCRIPT` at once; a restarted server's `NOSCRIPT` reloads it as usual.
    batch_loaded: Arc<[tokio::sync::OnceCell<()>; 5]>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("conn", &self.conn)
            .field("prefix", &self.namespace)
            .field("timeout", &self.timeout)
            .field("clock", &self.clock)
            .finish()
    }
}

impl RedisStore {
    /// A store over a `deadpool_redis` pool, with namespace `palisade:rl`.
    pub fn new(pool: deadpool_redis::Pool) -> Self {
        Self::from_connection(RedisConnection::Pool(pool))
    }

    /// A store over a `deadpool_redis` Redis Cluster pool.
    pub fn cluster(pool: deadpool_redis::cluster::Pool) -> Self {
        Self::from_connection(RedisConnection::ClusterPool(pool))
    }

    /// A store over any [`RedisConnection`].
    pub fn from_connection(conn: RedisConnection) -> Self {
        Self {
            conn,
            namespace: Arc::from("palisade:rl"),
            timeout: None,
            clock: None,
            shared: Arc::new(ArcSwapOption::empty()),
            batch_loaded: Arc::new(std::array::from_fn(|_| tokio::sync::OnceCell::new())),
        }
    }

    /// Prefix every key with `prefix` (default `palisade:rl`), to keep several applications
    /// apart on one Redis. The prefix is written as given, only `{` and `}` encoded (`%7B`,
    /// `%7D`) so that it never moves the hash tag, as in every palisade crate.
    ///
    /// Builds before this rule percent-encoded the whole prefix (`palisade%3Arl`); to keep
    /// counting on keys they wrote through a rolling upgrade, pass `"palisade%3Arl"`.
    #[must_use]
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.namespace = Arc::from(prefix.replace('{', "%7B").replace('}', "%7D"));
        self
    }

    /// The former name of [`with_prefix`](Self::with_prefix).
    #[deprecated(
        since = "0.1.0",
        note = "renamed `with_prefix`, as in every palisade crate"
    )]
    #[must_use]
    pub fn with_namespace(self, namespace: &str) -> Self {
        self.with_prefix(namespace)
    }

    /// Give up on a call after `timeout` with [`Error::Timeout`] (default: no timeout of the
    /// store's own; a [`RateLimiter`](crate::RateLimiter) bounds every call with its own,
    /// 50 ms by default). An abandoned call's connection is not reused.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Use this clock instead of Redis' `TIME`. Only for tests and benches that drive time
    /// by hand: in production every instance must use the server's clock.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The Redis keys used for `key` under `policy`, in script order.
    pub fn keys_for(&self, key: &str, policy: &Policy) -> Vec<String> {
        let mut base = String::with_capacity(self.namespace.len() + key.len() + 32);
        base.push_str(&self.namespace);
        base.push_str(":{");
        encode_into(&mut base, policy.name());
        base.push(':');
        encode_into(&mut base, key);
        base.push_str("}:");
        let code = policy.algorithm().code();
        let mut keys = Vec::with_capacity(policy.quotas().len() + 1);
        for q in policy.quotas() {
            let mut k = base.clone();
            encode_into(&mut k, &q.name);
            k.push(':');
            k.push_str(code);
            if policy.algorithm().counts_windows() {
                // Window numbers count periods: another period starts other keys.
                k.push(':');
                k.push_str(&q.quota.period_micros().to_string());
            }
            keys.push(k);
        }
        keys
    }

    /// The key of the ledger of leases outstanding on `key` (`src/lua/ledger.lua`), in the
    /// subject's hash tag. `#` is encoded in quota names, so no quota key ends this way.
    fn ledger_key(&self, key: &str, policy: &Policy) -> String {
        let mut k = String::with_capacity(self.namespace.len() + key.len() + 32);
        k.push_str(&self.namespace);
        k.push_str(":{");
        encode_into(&mut k, policy.name());
        k.push(':');
        encode_into(&mut k, key);
        k.push_str("}:#leases");
        k
    }

    fn invocation<'a>(
        &self,
        script: &'a Script,
        key: &str,
        policy: &Policy,
        cost: u64,
    ) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for k in self.keys_for(key, policy) {
            inv.key(k);
        }
        self.common_args(&mut inv, policy, cost);
        inv
    }

    /// The arguments every script starts with (`src/lua/common.lua`): 4 + 4 per quota.
    fn common_args(&self, args: &mut impl Args, policy: &Policy, cost: u64) {
        let now = self
            .clock
            .as_ref()
            .map_or(0, |c| c.now_micros().clamp(1, crate::algorithm::MAX_MICROS));
        args.number(now)
            .text(policy.algorithm().code())
            .number(cost)
            .number(policy.quotas().len() as u64);
        for q in policy.quotas() {
            args.number(q.quota.limit())
                .number(q.quota.burst())
                .number(q.quota.period_micros())
                .number(q.quota.interval_micros());
        }
    }

    /// Append one item to a batch invocation (`src/lua/batch.lua`): its keys (what its own
    /// script call would send: the quotas' state keys, then the ledger), and one argument,
    /// packed ([`pack`]): the item format, its name, then an array of what its own script
    /// call's arguments would be.
    fn batch_item(&self, inv: &mut ScriptInvocation<'_>, item: &Item<'_>) {
        let (key, policy) = item.subject();
        let n = policy.quotas().len();
        let code = policy.algorithm().code();
        for k in self.keys_for(key, policy) {
            inv.key(k);
        }
        inv.key(self.ledger_key(key, policy));
        let mut packed = Pack::with_capacity(64 + 24 * n);
        packed.text(ITEM_FORMAT);
        match item {
            Item::Lease(c) => {
                packed
                    .text(&format!("{code}:lease"))
                    .array(4 + 4 * n + LEASE_ARGS);
                self.common_args(&mut packed, policy, c.request.cost);
                lease_args(&mut packed, &c.request);
            }
            Item::Release(g) => {
                packed
                    .text(&format!("{code}:release"))
                    .array(4 + 4 * n + RELEASE_ARGS);
                self.common_args(&mut packed, policy, g.give.units);
                release_args(&mut packed, &g.give);
            }
        }
        inv.arg(packed.into_bytes());
    }

    /// Send `items` in batch script calls: one per algorithm and Redis Cluster slot (on a
    /// single node, one per algorithm), at most [`MAX_BATCH`] items each, all calls at once;
    /// one reply per item.
    async fn batch(&self, items: &[Item<'_>]) -> Vec<Result<redis::Value>> {
        let cluster = matches!(
            self.conn,
            RedisConnection::ClusterPool(_) | RedisConnection::Cluster(_)
        );
        let mut groups: Vec<((usize, u16), Vec<usize>)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let (key, policy) = item.subject();
            let slot = if cluster {
                slot_of(&self.hash_tag(key, policy))
            } else {
                0
            };
            let to = (algorithm_index(policy.algorithm()), slot);
            match groups
                .iter_mut()
                .find(|(g, members)| *g == to && members.len() < MAX_BATCH)
            {
                Some((_, members)) => members.push(i),
                None => groups.push((to, vec![i])),
            }
        }
        let calls = groups.iter().map(|((algorithm, _), group)| async move {
            // Loaded once per store and algorithm (a failure is left to the call's own
            // `NOSCRIPT` handling).
            let _ = self.batch_loaded[*algorithm]
                .get_or_try_init(|| async {
                    let mut load = redis::cmd("SCRIPT");
                    load.arg("LOAD").arg(BATCH_TEXTS[*algorithm].as_str());
                    self.send::<String>(Request::Command(load))
                        .await
                        .map(|_| ())
                })
                .await;
            let mut inv = BATCHES[*algorithm].prepare_invoke();
            inv.arg(group.len());
            for &i in group {
                self.batch_item(&mut inv, &items[i]);
            }
            let reply: Result<Vec<redis::Value>> = self.run(inv).await;
            (group, reply)
        });
        let mut out: Vec<Option<Result<redis::Value>>> = items.iter().map(|_| None).collect();
        for (group, reply) in futures::future::join_all(calls).await {
            match reply {
                Ok(values) if values.len() == group.len() => {
                    for (&i, v) in group.iter().zip(values) {
                        out[i] = Some(match v {
                            redis::Value::Array(a) if matches!(a.first(), Some(redis::Value::BulkString(b)) if b == b"error") =>
                            {
                                let message = match a.get(1) {
                                    Some(redis::Value::BulkString(m)) => {
                                        String::from_utf8_lossy(m).into_owned()
                                    }
                                    _ => String::new(),
                                };
                                Err(Error::backend(
                                    format!("batch item failed: {message}"),
                                    false,
                                ))
                            }
                            v => Ok(v),
                        });
                    }
                }
                Ok(values) => {
                    for &i in group {
                        out[i] = Some(Err(Error::Protocol(format!(
                            "batch script answered {} replies for {} items",
                            values.len(),
                            group.len()
                        ))));
                    }
                }
                Err(e) => {
                    for &i in group {
                        out[i] = Some(Err(each(&e)));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Protocol(String::from("batch item lost")))))
            .collect()
    }

    /// `{policy:key}`'s content, as the keys carry it: what Redis Cluster hashes.
    fn hash_tag(&self, key: &str, policy: &Policy) -> String {
        let mut t = String::with_capacity(key.len() + 16);
        encode_into(&mut t, policy.name());
        t.push(':');
        encode_into(&mut t, key);
        t
    }

    async fn run<T: redis::FromRedisValue>(&self, inv: ScriptInvocation<'_>) -> Result<T> {
        self.send(Request::Script(inv)).await
    }

    async fn send<T: redis::FromRedisValue>(&self, request: Request<'_>) -> Result<T> {
        match self.timeout {
            Some(limit) => tokio::time::timeout(limit, self.send_unbounded(request))
                .await
                .unwrap_or(Err(Error::Timeout(limit))),
            None => self.send_unbounded(request).await,
        }
    }

    async fn send_unbounded<T: redis::FromRedisValue>(&self, request: Request<'_>) -> Result<T> {
        let result = match &self.conn {
            RedisConnection::Pool(pool) => {
                let mut conn = match self.shared.load_full() {
                    Some(conn) => MultiplexedConnection::clone(&conn),
                    None => {
                        let conn =
                            deadpool_redis::Connection::take(pool.get().await.map_err(pool_error)?);
                        self.shared.store(Some(Arc::new(conn.clone())));
                        conn
                    }
                };
                // If the caller gives up on this call (the limiter's timeout), the connection
                // may be hung: the next call takes a fresh one.
                let mut guard = DropSharedOnCancel {
                    shared: &self.shared,
                    armed: true,
                };
                let result = request.send(&mut conn).await;
                guard.armed = false;
                if let Err(e) = &result
                    && (e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error())
                {
                    self.shared.store(None);
                }
                result
            }
            RedisConnection::ClusterPool(pool) => {
                let mut conn = pool.get().await.map_err(pool_error)?;
                request.send(&mut conn).await
            }
            RedisConnection::Multiplexed(conn) => request.send(&mut conn.clone()).await,
            RedisConnection::Manager(conn) => request.send(&mut conn.clone()).await,
            RedisConnection::Cluster(conn) => request.send(&mut conn.clone()).await,
        };
        result.map_err(redis_error)
    }

    async fn decision(
        &self,
        script: &Script,
        key: &str,
        policy: &Policy,
        cost: u64,
    ) -> Result<Decision> {
        let reply: Vec<i64> = self.run(self.invocation(script, key, policy, cost)).await?;
        decision_of(policy, &reply, 1)
    }
}

/// The decision in a script's reply: the admitted flag at `reply[0]`, then from `at` four
/// numbers per quota (allowed, remaining, reset, retry or -1).
fn decision_of(policy: &Policy, reply: &[i64], at: usize) -> Result<Decision> {
    let n = policy.quotas().len();
    if reply.len() != at + 4 * n {
        return Err(Error::Protocol(format!(
            "script answered {} values for {n} quotas",
            reply.len()
        )));
    }
    let verdicts: Vec<Verdict> = reply[at..]
        .chunks_exact(4)
        .map(|c| Verdict {
            allowed: c[0] == 1,
            remaining: non_negative(c[1]),
            reset: non_negative(c[2]),
            retry_after: if c[0] == 1 || c[3] < 0 {
                None
            } else {
                Some(non_negative(c[3]))
            },
        })
        .collect();
    Ok(Decision::from_verdicts(
        reply[0] == 1,
        &verdicts,
        DecisionSource::Store,
    ))
}

/// The arguments after the common ones of `src/lua/lease.lua`.
const LEASE_ARGS: usize = 14;
/// The arguments after the common ones of `src/lua/release.lua`.
const RELEASE_ARGS: usize = 4;

fn lease_args(args: &mut impl Args, request: &LeaseRequest) {
    let max = crate::algorithm::MAX_MICROS;
    args.number(request.held)
        .number(request.held_at.min(max))
        .number(request.want.min(crate::quota::MAX_LIMIT))
        .number(crate::lease::micros(request.lifetime).min(max))
        .number(u64::from(request.max_share_permille.min(1000)))
        .decimal(request.owner)
        .number(request.kept.min(crate::quota::MAX_LIMIT))
        .number(request.kept_at.min(max))
        .number(crate::lease::micros(request.grace).min(max))
        .number(request.report)
        .number(crate::lease::micros(request.held_lifetime).min(max))
        .number(request.held_reclaim_at.min(max))
        .number(request.lost_from)
        .number(request.lost_to);
}

fn release_args(args: &mut impl Args, give: &LeaseReturn) {
    args.number(give.granted_at.min(crate::algorithm::MAX_MICROS))
        .decimal(give.owner)
        .number(give.reported)
        .number(give.reclaim_at.min(crate::algorithm::MAX_MICROS));
}

/// Whether a give-back changes anything in the store: units of a leased algorithm, and for
/// a bucket only with an owner's ledger record.
fn releases(policy: &Policy, give: &LeaseReturn) -> bool {
    give.units > 0
        && policy.algorithm() != Algorithm::SlidingWindowLog
        && (give.owner != 0 || policy.algorithm().counts_windows())
}

/// The [`Lease`] in a lease script's reply.
fn lease_of(policy: &Policy, reply: &[i64]) -> Result<Lease> {
    if reply.len() < 6 {
        return Err(Error::Protocol(format!(
            "lease script answered {} values",
            reply.len()
        )));
    }
    let mut lease = Lease::exact(decision_of(policy, reply, 6)?);
    lease.used_held = non_negative(reply[1]);
    lease.stale_held = reply[2] == 1;
    lease.granted = non_negative(reply[3]);
    lease.lifetime = Duration::from_micros(non_negative(reply[4]));
    lease.granted_at = non_negative(reply[5]);
    Ok(lease)
}

/// One call of a batch.
enum Item<'a> {
    Lease(&'a LeaseCall<'a>),
    Release(&'a ReleaseCall<'a>),
}

impl Item<'_> {
    fn subject(&self) -> (&str, &Policy) {
        match self {
            Self::Lease(c) => (c.key, c.policy),
            Self::Release(g) => (g.key, g.policy),
        }
    }
}

/// The Redis Cluster slot of a hash tag's content: CRC16 (XMODEM) mod 16384.
fn slot_of(tag: &str) -> u16 {
    let mut crc: u16 = 0;
    for &b in tag.as_bytes() {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16_384
}

/// The error of a script call, for each of the calls it carried.
fn each(e: &Error) -> Error {
    match e {
        Error::Timeout(d) => Error::Timeout(*d),
        Error::Backend { source, transient } => Error::backend(source.to_string(), *transient),
        other => Error::Protocol(other.to_string()),
    }
}

fn non_negative(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// What one call sends: a script (every store operation) or a plain command (`PING`).
enum Request<'a> {
    Script(ScriptInvocation<'a>),
    Command(redis::Cmd),
}

impl Request<'_> {
    async fn send<T, C>(&self, conn: &mut C) -> redis::RedisResult<T>
    where
        T: redis::FromRedisValue,
        C: redis::aio::ConnectionLike + Send,
    {
        match self {
            Self::Script(inv) => inv.invoke_async(conn).await,
            Self::Command(cmd) => cmd.query_async(conn).await,
        }
    }
}

struct DropSharedOnCancel<'a> {
    shared: &'a ArcSwapOption<MultiplexedConnection>,
    armed: bool,
}

impl Drop for DropSharedOnCancel<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.store(None);
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

/// Percent-encode everything but `A-Z a-z 0-9 - _ . @` onto `out`: injective, and what it
/// writes never contains `{`, `}` or `:`.
fn encode_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[async_trait]
impl crate::store::Store for RedisStore {
    async fn acquire(&self, key: &str, policy: &Policy, cost: u64) -> Result<Decision> {
        self.decision(&scripts(policy.algorithm()).acquire, key, policy, cost)
            .await
    }

    async fn peek(&self, key: &str, policy: &Policy) -> Result<Decision> {
        self.decision(&scripts(policy.algorithm()).peek, key, policy, 1)
            .await
    }

    async fn refund(&self, key: &str, policy: &Policy, cost: u64) -> Result<()> {
        let _: i64 = self
            .run(self.invocation(&scripts(policy.algorithm()).refund, key, policy, cost))
            .await?;
        Ok(())
    }

    async fn reset(&self, key: &str, policy: &Policy) -> Result<()> {
        let mut inv = RESET.prepare_invoke();
        for k in self.keys_for(key, policy) {
            inv.key(k);
        }
        inv.key(self.ledger_key(key, policy));
        let _: i64 = self.run(inv).await?;
        Ok(())
    }

    async fn health(&self) -> Result<()> {
        self.send(Request::Command(redis::cmd("PING"))).await
    }

    /// One script call (`src/lua/lease.lua`): the request, stale held units given back, the
    /// grant, all atomically with server time.
    async fn lease(&self, key: &str, policy: &Policy, request: &LeaseRequest) -> Result<Lease> {
        let mut inv = self.invocation(
            &scripts(policy.algorithm()).lease,
            key,
            policy,
            request.cost,
        );
        inv.key(self.ledger_key(key, policy));
        lease_args(&mut inv, request);
        let reply: Vec<i64> = self.run(inv).await?;
        lease_of(policy, &reply)
    }

    async fn release(&self, key: &str, policy: &Policy, units: u64, granted_at: u64) -> Result<()> {
        self.release_for(key, policy, &LeaseReturn::new(units, granted_at))
            .await
    }

    /// With an `owner`, the owner's record in the key's ledger shrinks by `units`, and the
    /// units go back (bucket algorithms too, less what the bucket refilled since
    /// `granted_at`) only while that record stands: a record already reclaimed gave them
    /// back.
    async fn release_for(&self, key: &str, policy: &Policy, give: &LeaseReturn) -> Result<()> {
        let units = give.units;
        if !releases(policy, give) {
            return Ok(());
        }
        let mut inv = self.invocation(&scripts(policy.algorithm()).release, key, policy, units);
        inv.key(self.ledger_key(key, policy));
        release_args(&mut inv, give);
        let _: i64 = self.run(inv).await?;
        Ok(())
    }

    /// One script call (`src/lua/batch.lua`) per algorithm and Redis Cluster slot (per
    /// algorithm on a single node), at most 128 calls each, all at once: each key's call does
    /// what [`Store::lease`](crate::Store::lease)'s own script would, atomically; a failed script call
    /// fails the calls it carried.
    async fn lease_many(&self, calls: &[LeaseCall<'_>]) -> Vec<Result<Lease>> {
        let items: Vec<Item<'_>> = calls.iter().map(Item::Lease).collect();
        self.batch(&items)
            .await
            .into_iter()
            .zip(calls)
            .map(|(reply, c)| {
                let v: Vec<i64> = redis::FromRedisValue::from_redis_value(reply?)
                    .map_err(|e| Error::Protocol(format!("lease batch reply: {e}")))?;
                lease_of(c.policy, &v)
            })
            .collect()
    }

    /// In the batch script of [`Store::lease_many`](crate::Store::lease_many); give-backs that need no
    /// call (nothing to give, no ledger record for a bucket, the log) answer at once.
    async fn release_many(&self, gives: &[ReleaseCall<'_>]) -> Vec<Result<()>> {
        let sent: Vec<usize> = (0..gives.len())
            .filter(|&i| releases(gives[i].policy, &gives[i].give))
            .collect();
        let items: Vec<Item<'_>> = sent.iter().map(|&i| Item::Release(&gives[i])).collect();
        let mut out: Vec<Result<()>> = gives.iter().map(|_| Ok(())).collect();
        for (i, reply) in sent.into_iter().zip(self.batch(&items).await) {
            out[i] = reply.map(|_| ());
        }
        out
    }

    fn backend_name(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_injective_and_tag_safe() {
        let samples = [
            "a", "a:b", "a%3Ab", "{x}", "}{", "a\nb", "é", "", ":", "%", "a b",
        ];
        let mut seen = std::collections::HashSet::new();
        for s in samples {
            let mut e = String::new();
            encode_into(&mut e, s);
            assert!(!e.contains(['{', '}', ':']), "{e}");
            assert!(seen.insert(e), "collision for {s:?}");
        }
    }

    fn store() -> RedisStore {
        let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:1")
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .unwrap();
        RedisStore::new(pool)
    }

    /// `redis-cli --scan --pattern 'palisade:rl*'` must find the keys: the prefix is written
    /// as given, only braces (which would move the hash tag) encoded.
    #[test]
    fn prefix_is_written_literally() {
        let policy =
            Policy::single("api", crate::Algorithm::Gcra, crate::Quota::per_second(1)).unwrap();
        let keys = store().keys_for("tenant:7", &policy);
        assert!(
            keys[0].starts_with("palisade:rl:{api:tenant%3A7}:"),
            "{}",
            keys[0]
        );
        let keys = store().with_prefix("app:{x}:rl").keys_for("k", &policy);
        assert!(
            keys[0].starts_with("app:%7Bx%7D:rl:{api:k}:"),
            "{}",
            keys[0]
        );
        // The percent-encoded prefix of earlier releases can still be named, to keep counting
        // on the old keys through a rolling upgrade.
        let keys = store().with_prefix("palisade%3Arl").keys_for("k", &policy);
        assert!(keys[0].starts_with("palisade%3Arl:{api:k}:"), "{}", keys[0]);
    }
}
