//! The crate's one error type.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// A boxed error from a backend, an embedder or a provider.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the semantic cache.
///
/// Bad input (an empty or oversized prompt, a vector with `NaN`, a vector of the wrong
/// dimension, an identifier the key format refuses) is reported as its own variant and is
/// never transient; backend, embedder and provider failures carry their source and say
/// through [`Error::is_transient`] whether a retry may help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The prompt is empty, or nothing is left of it after normalisation.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The prompt is longer than the configured limit (in bytes, before normalisation).
    #[error("the prompt has {len} bytes, more than the limit of {max}")]
    PromptTooLarge {
        /// The prompt's length in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A vector contains `NaN` or an infinity.
    #[error("the vector contains NaN or an infinite value")]
    NonFiniteVector,
    /// A vector is all zeros, so it has no direction to compare.
    #[error("the vector has zero length")]
    ZeroVector,
    /// A vector has another dimension than the index it is compared with.
    #[error("the vector has dimension {actual}, the index expects {expected}")]
    DimensionMismatch {
        /// The index's dimension.
        expected: usize,
        /// The vector's dimension.
        actual: usize,
    },
    /// An identifier (tenant, namespace, model, tag) is empty or too long.
    #[error("invalid {what}: {reason}")]
    InvalidIdentifier {
        /// Which identifier.
        what: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A cached response could not be encoded or decoded.
    #[error("serialization failed")]
    Serialization(#[source] serde_json::Error),
    /// The embedder failed.
    #[error("embedder failed")]
    Embedder(#[source] BoxError),
    /// The LLM provider (or the value computation of a cache-aside call) failed.
    #[error("provider failed")]
    Provider(#[source] BoxError),
    /// The storage backend failed (Redis down, refused, protocol error). Under
    /// [`FailureMode::FailOpen`](crate::FailureMode) a lookup treats it as a miss.
    #[error("semantic cache backend error")]
    Backend {
        /// The backend's own error.
        #[source]
        source: BoxError,
        /// Whether retrying later may succeed (connection refused or reset, a restarting
        /// server) as opposed to a reply this crate cannot use.
        transient: bool,
    },
    /// The backend did not answer within the store's timeout.
    #[error("semantic cache backend did not answer within {0:?}")]
    Timeout(Duration),
}

impl Error {
    /// Wrap a backend's error.
    pub fn backend(source: impl Into<BoxError>, transient: bool) -> Self {
        Self::Backend {
            source: source.into(),
            transient,
        }
    }

    /// Whether retrying the same call later may succeed: `true` for transient backend
    /// failures, timeouts and embedder/provider failures (remote calls); `false` for bad
    /// input and configuration, which fail the same way every time.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Backend { transient, .. } => *transient,
            Self::Timeout(_) | Self::Embedder(_) | Self::Provider(_) => true,
            _ => false,
        }
    }

    /// Whether the error came from the storage backend ([`Error::Backend`],
    /// [`Error::Timeout`]): what a [`FailureMode`](crate::FailureMode) decides about.
    pub fn is_backend(&self) -> bool {
        matches!(self, Self::Backend { .. } | Self::Timeout(_))
    }

    /// Whether the error is about the caller's input (prompt, vector, identifier).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Self::EmptyPrompt
                | Self::PromptTooLarge { .. }
                | Self::NonFiniteVector
                | Self::ZeroVector
                | Self::DimensionMismatch { .. }
                | Self::InvalidIdentifier { .. }
        )
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Self::Serialization(err)
    }
}

/// The error of [`SemanticCache::try_get_or_compute`](crate::SemanticCache::try_get_or_compute):
/// the computation's own error, typed, or the cache's.
///
/// [`get_or_compute`](crate::SemanticCache::get_or_compute) boxes a failed computation in
/// [`Error::Provider`]; this keeps it as it was, so a circuit breaker's rejection inside the
/// computation can be matched (`ComputeError::Compute(circuit_breaker::Error::Rejected { .. })`)
/// without a downcast.
#[derive(Debug)]
#[non_exhaustive]
pub enum ComputeError<E> {
    /// The computation failed; nothing was cached.
    Compute(E),
    /// The cache failed before or around the computation: bad input (the prompt, an
    /// identifier), the embedder, or a backend error the [`FailureMode`](crate::FailureMode)
    /// returns.
    Cache(Error),
}

impl<E> ComputeError<E> {
    /// The computation's error, if it was the computation that failed.
    pub fn compute(&self) -> Option<&E> {
        match self {
            Self::Compute(e) => Some(e),
            Self::Cache(_) => None,
        }
    }

    /// The cache's error, if it was the cache that failed.
    pub fn cache(&self) -> Option<&Error> {
        match self {
            Self::Compute(_) => None,
            Self::Cache(e) => Some(e),
        }
    }
}

impl<E: fmt::Display> fmt::Display for ComputeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Compute(e) => write!(f, "the computation failed: {e}"),
            Self::Cache(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<E: StdError + 'static> StdError for ComputeError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Compute(e) => Some(e),
            Self::Cache(e) => Some(e),
        }
    }
}

impl<E> From<Error> for ComputeError<E> {
    fn from(e: Error) -> Self {
        Self::Cache(e)
    }
}
