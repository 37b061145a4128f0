//! The one error type of this crate.

use std::time::Duration;

/// A boxed error from a backend (Redis, a connection pool, …), kept opaque so that the
/// backend's crate version is not part of this crate's public API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in `palisade-ratelimit`.
///
/// Configuration errors ([`Error::InvalidQuota`], [`Error::InvalidPolicy`],
/// [`Error::InvalidConfig`]) are found when a value is built, never in the middle of a request.
/// Backend errors ([`Error::Backend`], [`Error::Timeout`], [`Error::Protocol`]) are what a
/// [`FailureMode`](crate::FailureMode) turns into a decision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A quota that cannot be enforced (for example a zero period, or more than one request
    /// per microsecond).
    #[error("invalid quota `{name}`: {reason}")]
    InvalidQuota {
        /// The quota's name in its policy.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A policy that cannot be enforced (no quota, duplicate quota names, too many quotas).
    #[error("invalid policy `{policy}`: {reason}")]
    InvalidPolicy {
        /// The policy's name.
        policy: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Any other configuration error (bad CIDR, bad path pattern, bad namespace, …).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The backend failed (connection refused, connection reset, pool exhausted, server error).
    /// `Display` does not repeat the source: walk [`source()`](std::error::Error::source)
    /// (or print with an error reporter) for the backend's own message.
    #[error("rate-limit backend error")]
    Backend {
        /// The backend's own error.
        #[source]
        source: BoxError,
        /// Whether retrying (or failing open for now) makes sense.
        transient: bool,
    },
    /// The backend did not answer within the per-call timeout.
    #[error("rate-limit backend did not answer within {0:?}")]
    Timeout(Duration),
    /// The backend answered something this crate does not understand (a version mismatch
    /// or a foreign value stored under one of our keys).
    #[error("unexpected answer from the rate-limit backend: {0}")]
    Protocol(String),
}

impl Error {
    /// Whether the failure is likely to go away by itself (network trouble, timeouts, a
    /// restarting server). Configuration and protocol errors are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Backend { transient, .. } => *transient,
            Self::Timeout(_) => true,
            Self::InvalidQuota { .. }
            | Self::InvalidPolicy { .. }
            | Self::InvalidConfig(_)
            | Self::Protocol(_) => false,
        }
    }

    /// Whether this error came from the backend (as opposed to configuration).
    pub fn is_backend(&self) -> bool {
        matches!(
            self,
            Self::Backend { .. } | Self::Timeout(_) | Self::Protocol(_)
        )
    }

    /// Wrap a backend's error.
    pub fn backend(source: impl Into<BoxError>, transient: bool) -> Self {
        Self::Backend {
            source: source.into(),
            transient,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
