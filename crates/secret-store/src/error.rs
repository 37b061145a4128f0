//! The one error type of this crate.
//!
//! No variant ever holds a secret value: names, versions, provider names and HTTP statuses
//! are all an error may carry, and a backend's own error is kept as an opaque
//! [`source`](std::error::Error::source) that this crate builds only from messages it wrote
//! itself or from client errors that never see a value (connection refused, timeouts).

use std::time::Duration;

/// A boxed error from a backend (Redis, an HTTP client, the file system), kept opaque so
/// that the backend's crate version is not part of this crate's public API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in `palisade-secret-store`.
///
/// A missing secret seen by one [`Provider`](crate::Provider) is not an error (it answers
/// `Ok(None)` and the chain goes on); [`Secrets::get`](crate::Secrets::get) reports
/// [`Error::NotFound`] only when no provider has it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid (found when a value is built, never mid-request).
    #[error("invalid secret-store configuration: {0}")]
    InvalidConfig(String),
    /// A secret name that is empty, too long or has characters outside `A-Z a-z 0-9 _ - . /`,
    /// or that a provider cannot represent (Azure Key Vault names allow only `A-Z a-z 0-9 -`).
    #[error("invalid secret name {name:?}: {reason}")]
    InvalidName {
        /// The name as given (names are not secret).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No provider of the chain has this secret (or this version of it).
    #[error("secret {0:?} not found")]
    NotFound(String),
    /// The provider refused the credentials this process uses (HTTP 401/403, a Redis `NOAUTH`
    /// or `NOPERM`). Never answered with a cached value: a revoked permission is a decision,
    /// not an outage.
    #[error("access to the secret provider `{provider}` was denied ({reason})")]
    Denied {
        /// The provider's name.
        provider: String,
        /// What the provider answered (a status code or an error kind, never a body).
        reason: String,
    },
    /// A value could not be decrypted: the master key is wrong or the ciphertext was altered.
    #[error("a value from `{provider}` could not be decrypted (wrong master key or tampered data)")]
    Decrypt {
        /// Where the ciphertext came from (a provider's name, or `snapshot`).
        provider: String,
    },
    /// The provider cannot write (environment, files), so it cannot rotate.
    #[error("the secret provider `{0}` is read-only")]
    ReadOnly(String),
    /// The backend failed (connection refused, reset, a 5xx answer, a file that cannot be read).
    #[error("secret provider `{provider}` backend error")]
    Backend {
        /// The provider's name.
        provider: String,
        /// The backend's own error.
        #[source]
        source: BoxError,
        /// Whether retrying (or serving the last-known-good value for now) makes sense.
        transient: bool,
    },
    /// The backend did not answer within the per-call timeout.
    #[error("secret provider did not answer within {0:?}")]
    Timeout(Duration),
    /// The backend answered something this crate does not understand.
    #[error("unexpected answer from secret provider `{provider}`: {what}")]
    Protocol {
        /// The provider's name.
        provider: String,
        /// What was wrong (never a value).
        what: String,
    },
}

impl Error {
    /// Whether the failure is likely to go away by itself (network trouble, timeouts, a
    /// restarting or sealed server, HTTP 429/5xx). Only transient failures let
    /// [`Secrets`](crate::Secrets) serve a last-known-good value.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Backend { transient, .. } => *transient,
            Self::Timeout(_) => true,
            Self::InvalidConfig(_)
            | Self::InvalidName { .. }
            | Self::NotFound(_)
            | Self::Denied { .. }
            | Self::Decrypt { .. }
            | Self::ReadOnly(_)
            | Self::Protocol { .. } => false,
        }
    }

    /// Whether the provider refused this process's credentials ([`Error::Denied`]).
    pub fn is_denied(&self) -> bool {
        matches!(self, Self::Denied { .. })
    }

    /// Whether the secret (or version) does not exist anywhere in the chain.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
    }

    /// A bounded label for metrics: `transient`, `denied`, `decrypt`, `not_found` or `other`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Denied { .. } => "denied",
            Self::Decrypt { .. } => "decrypt",
            Self::NotFound(_) => "not_found",
            e if e.is_transient() => "transient",
            _ => "other",
        }
    }

    /// Wrap a backend's error.
    pub fn backend(provider: &str, source: impl Into<BoxError>, transient: bool) -> Self {
        Self::Backend {
            provider: provider.to_owned(),
            source: source.into(),
            transient,
        }
    }

    /// [`Error::Denied`].
    pub fn denied(provider: &str, reason: impl Into<String>) -> Self {
        Self::Denied {
            provider: provider.to_owned(),
            reason: reason.into(),
        }
    }

    /// [`Error::Protocol`].
    pub fn protocol(provider: &str, what: impl Into<String>) -> Self {
        Self::Protocol {
            provider: provider.to_owned(),
            what: what.into(),
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
        let e = Error::backend("redis", "connection refused", true);
        assert_eq!(e.to_string(), "secret provider `redis` backend error");
        assert_eq!(
            std::error::Error::source(&e).unwrap().to_string(),
            "connection refused"
        );
        assert!(e.is_transient());
        assert!(!Error::denied("vault", "HTTP 403").is_transient());
        assert_eq!(Error::denied("vault", "HTTP 403").kind(), "denied");
        assert_eq!(Error::Timeout(Duration::from_secs(1)).kind(), "transient");
    }
}
