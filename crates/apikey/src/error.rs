//! The one error type of this crate.

use std::time::Duration;

/// A boxed error from a backend (Redis, a connection pool, …), kept opaque so that the
/// backend's crate version is not part of this crate's public API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in `palisade-apikey`.
///
/// A key that is refused (malformed, unknown, revoked, out of credits, …) is not an error:
/// it is a [`Denial`](crate::Denial) inside a [`Verification`](crate::Verification).
/// Errors are what a caller cannot fix by presenting another key: a bad configuration, a
/// backend that failed or did not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration that cannot work (a short pepper, an unknown pepper version, a bad
    /// prefix, scope or CIDR, a zero lifetime, …). Found when the value is built.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The backend failed (connection refused or reset, pool exhausted, server error). The
    /// backend's own error is the [`source`](std::error::Error::source).
    #[error("api-key backend error")]
    Backend {
        /// The backend's own error.
        #[source]
        source: BoxError,
        /// Whether retrying later makes sense.
        transient: bool,
    },
    /// The backend did not answer within the per-operation timeout.
    #[error("api-key backend did not answer within {0:?}")]
    Timeout(Duration),
    /// The backend answered something this crate does not understand (a version mismatch
    /// or a foreign value under one of our keys).
    #[error("unexpected answer from the api-key backend: {0}")]
    Protocol(String),
    /// The key id named in a management call (revoke, rotate, update) does not exist.
    #[error("no api key with this id")]
    NotFound,
    /// The operation does not apply to the key in its current state (rotating a revoked
    /// key, rotating a key that is already being rotated, …).
    #[error("the api key is {0}: operation not allowed")]
    InvalidState(&'static str),
    /// The memory store is full (its `max_keys` bound).
    #[error("the api-key store holds its maximum of {0} keys")]
    CapacityExceeded(usize),
}

impl Error {
    /// Whether the failure is likely to go away by itself (network trouble, timeouts, a
    /// restarting server). Configuration, protocol and state errors are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Backend { transient, .. } => *transient,
            Self::Timeout(_) => true,
            Self::InvalidConfig(_)
            | Self::Protocol(_)
            | Self::NotFound
            | Self::InvalidState(_)
            | Self::CapacityExceeded(_) => false,
        }
    }

    /// Whether this error came from the backend (as opposed to configuration or state).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn display_never_repeats_the_source() {
        let e = Error::backend(std::io::Error::other("connection reset by peer"), true);
        assert_eq!(e.to_string(), "api-key backend error");
        assert!(e.source().unwrap().to_string().contains("reset"));
        assert!(e.is_transient() && e.is_backend());
        assert!(Error::Timeout(Duration::from_secs(1)).is_transient());
        assert!(!Error::InvalidConfig("x".into()).is_transient());
        assert!(!Error::NotFound.is_backend());
    }
}
