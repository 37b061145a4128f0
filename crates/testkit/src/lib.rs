//! Real servers for Palisade's tests: no mocked Redis, no mocked database.
//!
//! * [`RedisServer`] runs a throwaway `redis-server` on a free port in a temporary directory
//!   (no persistence) and kills it on drop. Tests can [`kill`](RedisServer::kill),
//!   [`restart`](RedisServer::restart) and [`pause`](RedisServer::pause) it to prove how a
//!   backend behaves when Redis dies, comes back or hangs.
//! * [`RedisCluster`] runs N masters with `cluster-enabled yes`, assigns the 16384 slots and
//!   waits for `cluster_state:ok`.
//! * [`test_redis`] gives a test its Redis: the server at `REDIS_URL` when that is set,
//!   otherwise a fresh [`RedisServer`]; either way with a [`KeyPrefix`] no other test shares.
//! * [`LogCapture`] keeps what `tracing` wrote, so a test can prove a secret never reached
//!   the logs.
//! * [`metric_lines`] renders what a `metrics` debugging recorder captured, for assertions.
//! * [`PgSchema`] creates a fresh PostgreSQL schema at `DATABASE_URL`
//!   (default `postgres://postgres@127.0.0.1/test`) and drops it on drop.
//!
//! When `redis-server` is not on `PATH` and `REDIS_URL` is unset, starting a server fails
//! with [`Error::RedisServerNotFound`], whose message says how to install it. Nothing here
//! skips a test silently.
//!
//! ```no_run
//! # fn main() -> Result<(), palisade_testkit::Error> {
//! let mut server = palisade_testkit::RedisServer::start()?;
//! let mut conn = server.client().get_connection()?;
//! let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut conn)?;
//! server.restart()?; // same port, empty data set
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cluster;
mod command_calls;
mod error;
mod logs;
pub mod pgbouncer;
mod ports;
mod postgres;
mod prefix;
mod recorded_metrics;
mod server;
mod test_redis;
mod tls;

pub use cluster::RedisCluster;
pub use command_calls::CommandCalls;
pub use error::{Error, Result};
pub use logs::{CaptureWriter, LogCapture};
pub use postgres::{PgSchema, database_url};
pub use prefix::KeyPrefix;
pub use recorded_metrics::{metric_lines, record_metrics};
pub use server::{RedisServer, RedisServerBuilder};
pub use test_redis::{TestRedis, test_redis};

/// The `deadpool_redis` crate this kit was built against.
pub use deadpool_redis;
/// The `redis` crate this kit was built against, for tests that need its types.
pub use redis;
