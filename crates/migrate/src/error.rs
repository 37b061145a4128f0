//! The one error type of this crate.

use std::time::Duration;

use crate::finding::Validation;

/// A boxed error from a backend (PostgreSQL, Redis, a pool, `pg_dump`, the file system),
/// kept opaque so that the driver's version is not part of this crate's public API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in `palisade-migrate`.
///
/// Outcomes that are not failures are values: a migration blocked by a live app is
/// [`UpReport::blocked`](crate::UpReport::blocked), validation findings are a
/// [`Validation`], the lock held by another migrator is [`Error::Locked`] only once waiting
/// for it has given up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value, migration file name or header directive is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The backend failed (connection refused or reset, pool exhausted, server error).
    #[error("migration backend error")]
    Backend {
        /// The backend's own error.
        #[source]
        source: BoxError,
        /// Whether retrying later makes sense.
        transient: bool,
    },
    /// The backend did not answer within the configured timeout.
    #[error("migration backend did not answer within {0:?}")]
    Timeout(Duration),
    /// Another migrator holds the lease and waiting for it (if allowed) gave up.
    #[error("migration lock is held by {holder:?} for another {expires_in:?}")]
    Locked {
        /// Who holds it (host, process id and the name given to the migrator).
        holder: String,
        /// How long its lease runs unless renewed.
        expires_in: Duration,
    },
    /// This migrator's lease expired or was taken over (fencing token no longer current):
    /// nothing more was written.
    #[error("migration lease lost (fencing token {token} is no longer current)")]
    LeaseLost {
        /// The token this migrator held.
        token: u64,
    },
    /// The applied migrations do not match the files (edited, missing or out of order).
    #[error("migrations do not validate: {0}")]
    Validation(Validation),
    /// A migration's SQL (or script) failed. The ledger row is marked `failed`; for a
    /// non-transactional migration the backup (if any) was restored first.
    #[error("migration {version} ({name}) failed{}", if *.restored { ", backup restored" } else { "" })]
    Migration {
        /// Its version.
        version: u64,
        /// Its name.
        name: String,
        /// Whether the backup taken before it was restored.
        restored: bool,
        /// The database's error.
        #[source]
        source: BoxError,
    },
    /// A down migration was asked for a migration without a `.down` file.
    #[error("migration {version} ({name}) has no down migration")]
    Irreversible {
        /// Its version.
        version: u64,
        /// Its name.
        name: String,
    },
    /// A backup could not be made, read or restored (wrong key, tampered file, missing
    /// `pg_dump`).
    #[error("backup error: {0}")]
    Backup(String),
    /// A file could not be read or written.
    #[error("I/O error on {path}")]
    Io {
        /// The path.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the failure may go away by itself (network trouble, timeouts, a lease held
    /// by another migrator). Configuration, validation and migration errors are not
    /// transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Backend { transient, .. } => *transient,
            Self::Timeout(_) | Self::Locked { .. } => true,
            _ => false,
        }
    }

    /// Wrap a backend's error.
    pub fn backend(source: impl Into<BoxError>, transient: bool) -> Self {
        Self::Backend {
            source: source.into(),
            transient,
        }
    }

    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_never_repeats_the_source() {
        let e = Error::backend(std::io::Error::other("connection refused"), true);
        assert_eq!(e.to_string(), "migration backend error");
        assert!(e.is_transient());
        let e = Error::Migration {
            version: 3,
            name: "add_index".into(),
            restored: true,
            source: "duplicate key".into(),
        };
        assert_eq!(
            e.to_string(),
            "migration 3 (add_index) failed, backup restored"
        );
        assert!(!e.is_transient());
    }
}
