//! What a verification decides: a [`Verified`] key or a typed [`Denial`].
//!
//! Apart from the service so the audit trail can name a denial without depending on the
//! service that emits it.

use std::fmt;
use std::sync::Arc;

use crate::record::KeyRecord;

/// Why a key was refused. A value, not an [`Error`](crate::Error): the caller presented a bad key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Denial {
    /// Not a key of this service's format and prefix (no lookup was made).
    Malformed,
    /// The checksum does not match (no lookup was made).
    BadChecksum,
    /// No key with this id, or the secret does not match (the two are not told apart, so
    /// a caller learns nothing about which ids exist).
    NotFound,
    /// Revoked.
    Revoked,
    /// Past its expiry, or a rotated key past its grace period.
    Expired,
    /// The key lacks the required scope.
    InsufficientScope,
    /// The client's address is not in the key's allowlist.
    IpNotAllowed,
    /// Not enough credits.
    OutOfCredits,
}

impl Denial {
    /// A short name for metrics, logs and problem types.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadChecksum => "bad_checksum",
            Self::NotFound => "not_found",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::InsufficientScope => "insufficient_scope",
            Self::IpNotAllowed => "ip_not_allowed",
            Self::OutOfCredits => "out_of_credits",
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An accepted key.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Verified {
    /// The key's record as verified (shared with the cache; never holds the secret).
    pub record: Arc<KeyRecord>,
    /// Credits left after this request's charge (`None` for an unmetered key, or when the
    /// charge was skipped under [`FailureMode::FailOpen`](crate::FailureMode::FailOpen)).
    pub credits_remaining: Option<u64>,
    /// Whether this is a rotated key used during its grace period (the use is reported as
    /// an audit event).
    pub in_grace: bool,
}

/// The outcome of a verification.
#[derive(Clone, Debug)]
#[non_exhaustive]
#[must_use]
pub enum Verification {
    /// Accepted.
    Verified(Verified),
    /// Refused, and why.
    Denied(Denial),
}

impl Verification {
    /// Whether the key was accepted.
    pub fn is_verified(&self) -> bool {
        matches!(self, Self::Verified(_))
    }

    /// The accepted key, if any.
    pub fn verified(self) -> Option<Verified> {
        match self {
            Self::Verified(v) => Some(v),
            Self::Denied(_) => None,
        }
    }

    /// The reason for a refusal, if any.
    pub fn denial(&self) -> Option<Denial> {
        match self {
            Self::Verified(_) => None,
            Self::Denied(d) => Some(*d),
        }
    }
}
