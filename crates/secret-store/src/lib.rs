//! Secrets that never print, survive a vault outage and rotate safely.
//!
//! * **Values** are [`Secret`]s: zeroized on drop ([`secrecy`]), `Debug` prints
//!   `[REDACTED]`, no `Display`, no `Serialize`; read with [`ExposeSecret::expose_secret`].
//!   Names are validated ([`SecretName`]); every value has a [`Version`].
//! * **Providers** ([`Provider`]): [`EnvProvider`], [`FileProvider`] (`.env`, JSON, TOML),
//!   [`MemoryProvider`], [`RedisProvider`] (values encrypted client-side under a
//!   [`MasterKey`]; standalone, TLS, Cluster; feature `redis`, default),
//!   `vault::VaultProvider` (HashiCorp Vault KV v2; feature `vault`) and
//!   `azure::AzureKeyVaultProvider` (feature `azure`).
//! * **[`Secrets`]**: an ordered fallback chain, a TTL cache (1 h by default) with
//!   stale-while-revalidate and single-flight loads, the last-known-good value served through
//!   a *transient* outage for a bounded `resurrect` window (never after a denial), an
//!   encrypted snapshot for cold starts during an outage, versioned reads, rotation with
//!   [`Rotation`] events on a watch channel, and [`Secrets::with_secret`], which retries a
//!   refused credential with the previous version, then a fresh one.
//! * **Redaction by value**: the [`Redactor`](redact::Redactor) scrubs every loaded value (and API-key-shaped
//!   strings) from log output through a `tracing-subscriber` writer wrapper.
//! * **Operations**: [`Secrets::health`] per provider for `/health`, [`AuditEvent`]s (read,
//!   refreshed, failed, resurrected, rotated; never values), metrics `palisade_secret_store_*`
//!   ([`names`]) with bounded labels.
//!
//! # Example
//! A service's provider keys from the environment, with a `.env` file as the fallback, and
//! logs that can never show them:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use palisade_secret_store::{EnvProvider, ExposeSecret, FileProvider, Secrets};
//!
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("app.env");
//! # std::fs::write(&path, "OPENAI_API_KEY=sk-from-file-0123456789abcdef\n").unwrap();
//! let secrets = Secrets::builder()
//!     // Production: EnvProvider::from_env("APP_").
//!     .provider(EnvProvider::from_vars("APP_", [("APP_ANTHROPIC_API_KEY", "sk-ant-from-env-0123456789")]))
//!     .provider(FileProvider::new(&path)) // e.g. /run/secrets/app.env
//!     .build()?;
//!
//! // Logs go through the redactor: every value loaded is scrubbed.
//! let logs = palisade_testkit::LogCapture::new();
//! let subscriber = tracing_subscriber::fmt()
//!     .with_writer(secrets.redactor().make_writer(logs.clone()))
//!     .finish();
//! let _guard = tracing::subscriber::set_default(subscriber);
//!
//! let openai = secrets.get("openai/api-key").await?; // OPENAI_API_KEY, from the file
//! assert_eq!(openai.provider(), "file");
//! let anthropic = secrets.get("anthropic/api-key").await?; // from the environment
//! tracing::info!("calling with {}", anthropic.expose_secret()); // a mistake, caught:
//! assert!(!logs.contains("sk-ant-from-env"));
//! assert!(logs.contains("calling with [REDACTED]"));
//! assert!(format!("{openai:?}").contains(r#"value: "[REDACTED]""#));
//! # Ok::<(), palisade_secret_store::Error>(()) }).unwrap();
//! ```
//!
//! # Failure modes
//! | [`FailureMode`] | every provider fails transiently | a provider denies access |
//! |---|---|---|
//! | `FallbackToMemory` (default) | last-known-good value for `resurrect` (15 min) after the first failure; the snapshot at a cold start | error |
//! | `FailOpen` | last-known-good value until the outage ends (or the value expires) | error |
//! | `FailClosed` | error once the TTL and stale window are over | error |
//!
//! # Metrics
//! | name | kind | labels |
//! |---|---|---|
//! | `palisade_secret_store_reads_total` | counter | `outcome` = `fresh`/`stale`/`loaded`/`resurrected`/`not_found`/`error` (+ `secret` when opted in) |
//! | `palisade_secret_store_provider_calls_total` | counter | `provider`, `outcome` = `hit`/`miss`/`error` |
//! | `palisade_secret_store_provider_errors_total` | counter | `provider`, `kind` = `transient`/`denied`/`decrypt`/`other` |
//! | `palisade_secret_store_provider_duration_seconds` | histogram | `provider` |
//! | `palisade_secret_store_provider_up` | gauge | `provider` (at the last health check) |
//! | `palisade_secret_store_rotations_total` | counter | `source` = `written`/`observed` |
//! | `palisade_secret_store_cached_secrets` | gauge | — |
//! | `palisade_secret_store_snapshot_writes_total` | counter | `outcome` = `ok`/`error` |
//!
//! Spans: `secret_store.load`, `secret_store.rotate`; audit events are logged under the
//! target `palisade_secret_store::audit` (provider failures at WARN).
//!
//! # Features
//! `redis` (default), `tls` (`rediss://`), `vault`, `azure` (reqwest with rustls; off by
//! default), `testing` (the public conformance suite, module `testing`).
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
pub use secrecy::{self, ExposeSecret, SecretString};
pub use secrets::{GetFuture, Refused, Secrets, SecretsBuilder, UseError};
pub use value::{Fetched, MAX_NAME_LEN, MAX_VERSION_LEN, Secret, SecretName, Version};
