//! Secrets that never print, survive a vault outage and rotate safely.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "azure")]
#[cfg_attr(docsrs, doc(cfg(feature = "azure")))]
pub mod azure;
mod clock;
mod env;
mod error;
mod events;
mod file;
#[cfg(any(feature = "vault", feature = "azure"))]
mod http;
mod key;
mod memory;
mod policy;
mod provider;
pub mod redact;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
mod redis;
mod secrets;
mod snapshot;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod value;
#[cfg(feature = "vault")]
#[cfg_attr(docsrs, doc(cfg(feature = "vault")))]
pub mod vault;

#[cfg(feature = "redis")]
pub use self::redis::RedisProvider;
pub use clock::{Clock, FakeClock, SystemClock};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use deadpool_redis;
pub use env::EnvProvider;
pub use error::{BoxError, Error, Result};
pub use events::{
    AuditEvent, AuditKind, HealthReport, ProviderHealth, Rotation, RotationSource, names,
};
pub use file::{FileFormat, FileProvider};
pub use key::{Keyring, MasterKey};
pub use memory::{DEFAULT_MAX_SECRETS, DEFAULT_MAX_VERSIONS, MemoryProvider};
pub use policy::{Failed, FailureMode, Freshness, Read, SecretsConfig};
pub use provider::Provider;
pub use redact::{RedactingMakeWriter, Redactor};
pub use secrecy::{self, ExposeSecret, SecretString};
pub use secrets::{Refused, Secrets, SecretsBuilder, UseError};
pub use value::{Fetched, MAX_NAME_LEN, MAX_VERSION_LEN, Secret, SecretName, Version};
