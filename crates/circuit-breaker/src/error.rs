//! The crate's one error type.

use std::convert::Infallible;
use std::time::Duration;

use crate::State;

/// A boxed error from a [`Store`](crate::Store) backend, kept opaque so that the backend's
/// crate version is not part of this crate's public API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong around a guarded call, generic over the call's own error `E`.
///
/// The variants a caller usually matches on are [`Rejected`](Self::Rejected) (answer fast,
/// tell the client when to come back), [`Timeout`](Self::Timeout) and
/// [`Inner`](Self::Inner) (the protected call's own error). Configuration and store errors use
/// the default `E = Infallible`. A guarded call never fails with a store error: while the
/// store fails, the breaker's [`FailureMode`](crate::FailureMode) decides.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error<E = Infallible> {
    /// The breaker did not let the call through (open, forced open, half-open with every
    /// probe taken, or a store that failed under [`FailureMode::FailClosed`](crate::FailureMode)).
    #[error("circuit breaker is {state}: call rejected, retry after {retry_after:?}")]
    Rejected {
        /// The state that rejected the call.
        state: State,
        /// When a call may be admitted again, as far as the breaker knows.
        retry_after: Duration,
    },
    /// Something did not answer in time: from a guarded call, the call itself did not finish
    /// within the per-call timeout (it counted as a failure); from a [`Store`](crate::Store)
    /// operation, the backend did not answer within the store's timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The protected call failed with its own error.
    #[error("{0}")]
    Inner(E),
    /// A configuration value is invalid.
    #[error("invalid circuit breaker configuration: {0}")]
    InvalidConfig(String),
    /// The shared-state backend failed (connection refused or reset, pool exhausted, an
    /// answer this crate cannot read). The cause is the [`source`](std::error::Error::source).
    #[error("circuit breaker backend error")]
    Backend {
        /// The backend's own error.
        #[source]
        source: BoxError,
        /// Whether retrying later may succeed (network trouble, a restarting server), as
        /// opposed to an answer that will not change.
        transient: bool,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl<E> Error<E> {
    /// Whether trying again later may succeed: rejections and timeouts are, a backend error
    /// says so itself; configuration errors are not; an inner error is the caller's to judge
    /// (reported as not transient).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Rejected { .. } | Self::Timeout(_) => true,
            Self::Backend { transient, .. } => *transient,
            Self::Inner(_) | Self::InvalidConfig(_) => false,
        }
    }

    /// Whether the breaker rejected the call.
    pub fn is_rejected(&self) -> bool {
        matches!(self, Self::Rejected { .. })
    }

    /// Whether the shared-state backend failed.
    pub fn is_backend(&self) -> bool {
        matches!(self, Self::Backend { .. })
    }

    /// The retry-after of a rejection.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Rejected { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The inner error, if this is one.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Inner(e) => Some(e),
            _ => None,
        }
    }

    /// Map the inner error type.
    pub fn map_inner<F>(self, f: impl FnOnce(E) -> F) -> Error<F> {
        match self {
            Self::Rejected { state, retry_after } => Error::Rejected { state, retry_after },
            Self::Timeout(d) => Error::Timeout(d),
            Self::Inner(e) => Error::Inner(f(e)),
            Self::InvalidConfig(s) => Error::InvalidConfig(s),
            Self::Backend { source, transient } => Error::Backend { source, transient },
        }
    }
}

impl Error {
    /// Wrap a backend's error.
    pub fn backend(source: impl Into<BoxError>, transient: bool) -> Self {
        Self::Backend {
            source: source.into(),
            transient,
        }
    }

    /// Turn an error of the default type into one for calls failing with `E`.
    pub fn widen<E>(self) -> Error<E> {
        self.map_inner(|never| match never {})
    }
}
