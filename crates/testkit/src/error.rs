use std::path::PathBuf;

/// Why a test server could not be provided.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The `redis-server` binary is not installed (and `REDIS_URL` is not set).
    #[error(
        "`{binary}` was not found on PATH: install Redis (Debian/Ubuntu: `apt-get install redis-server`, \
         macOS: `brew install redis`) or set REDIS_URL to an existing server"
    )]
    RedisServerNotFound {
        /// The binary that was looked for.
        binary: PathBuf,
    },
    /// `openssl` (used to make a TLS server's throwaway certificates) is not installed.
    #[error(
        "`openssl` was not found on PATH; it makes the certificates of a TLS test server \
         (Debian/Ubuntu: `apt-get install openssl`)"
    )]
    OpensslNotFound,
    /// `openssl` failed while making a TLS server's certificates.
    #[error("making the TLS test certificates failed: {0}")]
    Certificates(String),
    /// `redis-server` started but exited or never answered `PING`.
    #[error("redis-server on port {port} did not come up: {reason}\n--- last log lines ---\n{log}")]
    RedisStartFailed {
        /// The port it was asked to listen on.
        port: u16,
        /// What went wrong.
        reason: String,
        /// The tail of its log file.
        log: String,
    },
    /// The cluster never reached `cluster_state:ok`.
    #[error("redis cluster did not reach cluster_state:ok: {0}")]
    ClusterNotReady(String),
    /// PostgreSQL could not be reached or a statement failed.
    #[error(
        "PostgreSQL at {url} failed: {source} (start it, e.g. `pg_ctlcluster <version> main start`, \
         or set DATABASE_URL)"
    )]
    Postgres {
        /// The URL that was used (`DATABASE_URL` or the default).
        url: String,
        /// The driver's error.
        #[source]
        source: ::postgres::Error,
    },
    /// A Redis command sent by the kit itself failed.
    #[error("redis command failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// A file or process operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A start on tokio's blocking pool that panicked (`start_async`).
impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Io(std::io::Error::other(e))
    }
}

/// Result with the kit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
