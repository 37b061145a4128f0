//! API keys for Rust services, with their whole lifecycle: readable checksummed keys shown
//! once, HMAC-SHA256 at rest under server peppers, scopes with wildcards, expiry,
//! revocation, rotation with a grace period, credits, usage, audit, short-lived HS256
//! tokens and a tower layer — in memory or shared by many instances through Redis.
//!
//! * [`ApiKeys`] is the service: [`create`](ApiKeys::create),
//!   [`verify`](ApiKeys::verify) → [`Verification`] (`Verified` or a typed [`Denial`], kept
//!   apart from [`Error`]), [`list_by_owner`](ApiKeys::list_by_owner),
//!   [`revoke`](ApiKeys::revoke), [`rotate`](ApiKeys::rotate),
//!   [`update_scopes`](ApiKeys::update_scopes).
//! * Keys look like `pk_live_<key id><hash version><secret><checksum>` ([`ParsedKey`],
//!   [`MAX_KEY_LEN`]); a malformed or mistyped key is refused before any lookup.
//! * [`Peppers`] are the server secrets the hashes are keyed with (several versions, so they
//!   rotate); they come from the caller — a secret store, never source code.
//! * [`Store`] is where records live: [`MemoryStore`] or `RedisStore` (feature `redis`:
//!   standalone, TLS, Cluster; one Lua script per atomic operation, a change feed that
//!   carries revocations to every instance's verify cache).
//! * [`Tokens`] issues and verifies short-lived HS256 JWTs with no store lookup.
//! * `layer` (feature `tower`) verifies `Authorization: Bearer` (or a header of your
//!   choice) and puts an [`Identity`](layer::Identity) into the request's extensions.
//!
//! ```
//! use palisade_apikey::{ApiKeys, Denial, KeySpec, MemoryStore, Pepper, Peppers};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> palisade_apikey::Result<()> {
//! // The pepper comes from a secret store in a real service.
//! let keys = ApiKeys::builder(Peppers::new(Pepper::new(1, *b"an example pepper of 32+ bytes!!")?))
//!     .store(MemoryStore::new())
//!     .prefix("acme")
//!     .build()?;
//! let created = keys
//!     .create(KeySpec::new("customer-7", "reporting").scopes(["read:*"]))
//!     .await?;
//! let text = created.key.expose_secret();
//! assert!(text.starts_with("acme_live_"));
//!
//! let verified = keys.verify(text, "read:invoices").await?.verified().expect("valid");
//! assert_eq!(verified.record.owner, "customer-7");
//! assert_eq!(
//!     keys.verify("acme_live_not-a-key", "read:invoices").await?.denial(),
//!     Some(Denial::Malformed)
//! );
//! # Ok(()) }
//! ```
//!
//! See the repository's `docs/apikey.md` for the format, hashing and pepper rotation, the
//! Redis layout, the staleness bound, failure modes and the token format.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

mod audit;
mod clock;
mod error;
mod key;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod layer;
mod memory;
mod pepper;
mod record;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
mod redis;
mod service;
mod store;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod token;
mod verification;

pub use crate::audit::{AuditEvent, AuditKind, AuditSink, MemoryAuditSink};
pub use crate::clock::{Clock, FakeClock, SystemClock};
pub use crate::error::{BoxError, Error, Result};
pub use crate::key::{
    Env, FAMILY_LEN, FormatError, KEY_ID_LEN, KeyId, MAX_HASH_VERSION, MAX_KEY_LEN, MAX_PREFIX_LEN,
    ParsedKey, PlaintextKey, Prefix, SECRET_LEN, checksum,
};
pub use crate::memory::{DEFAULT_IDEMPOTENCY_TTL, DEFAULT_MAX_KEYS, MemoryStore};
pub use crate::pepper::{MIN_PEPPER_LEN, Pepper, Peppers};
pub use crate::record::{
    CreditOutcome, Credits, KeyRecord, KeyStatus, MAX_SCOPE_LEN, MAX_SCOPES, Refill, Scopes,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use crate::redis::RedisStore;
pub use crate::service::{
    ApiKeys, ApiKeysBuilder, Config, CreatedKey, FailureMode, KeySpec, VerifyRequest,
};
pub use crate::store::{RotateOutcome, Store, Usage};
pub use crate::token::{
    Claims, DEFAULT_LEEWAY, DEFAULT_TOKEN_LIFETIME, MAX_TOKEN_LEN, TokenDenial, Tokens,
};
pub use crate::verification::{Denial, Verification, Verified};

/// The `deadpool_redis` crate whose pools [`RedisStore`] takes.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use deadpool_redis;
