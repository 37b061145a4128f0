//! The provider trait: where secrets come from.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use secrecy::SecretString;

use crate::error::{Error, Result};
use crate::value::{Fetched, SecretName, Version};

/// A source of secrets: the environment, a file, memory, Redis, HashiCorp Vault, Azure Key
/// Vault, or anything a user writes. [`Secrets`](crate::Secrets) chains providers in order,
/// caches what they answer and decides what to do when they fail.
///
/// The trait uses `#[async_trait]` (boxed futures) so that it is object safe: the chain holds
/// `Arc<dyn Provider>`s of different types, chosen at run time. One allocation per call is
/// nothing next to a network round trip, and the cached path never calls a provider.
///
/// # Contract (checked by the conformance suite of the `testing` module, feature `testing`)
/// * `get` answers `Ok(None)` for a secret (or version) it does not have: a miss is not an
///   error, and the chain moves on to the next provider.
/// * `get` with `version: None` answers the latest version.
/// * A provider that can write ([`writable`](Self::writable)) makes every `put` a new version,
///   different from every earlier one, and keeps the previous versions readable.
/// * Errors are typed: [`Error::Denied`] when the provider refuses the credentials,
///   [`Error::Backend`] with `transient` set for outages, [`Error::Timeout`]; no error ever
///   carries a value.
#[async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// A short name for health reports, metric labels and audit events (by default the kind,
    /// `env`, `file`, `memory`, `redis`, `vault`, `azure`; providers take `.named(…)`).
    fn name(&self) -> &str;

    /// Read `name` at `version` (the latest when `None`).
    ///
    /// # Errors
    /// Backend failures; never a miss.
    async fn get(&self, name: &SecretName, version: Option<&Version>) -> Result<Option<Fetched>>;

    /// Write a new version of `name` and answer its version; the previous versions stay
    /// readable. Read-only providers answer [`Error::ReadOnly`] (the default).
    ///
    /// # Errors
    /// [`Error::ReadOnly`], backend failures.
    async fn put(&self, name: &SecretName, value: &SecretString) -> Result<Version> {
        let _ = (name, value);
        Err(Error::ReadOnly(self.name().to_owned()))
    }

    /// Whether [`put`](Self::put) can succeed.
    fn writable(&self) -> bool {
        false
    }

    /// The names this provider holds (in no particular order).
    ///
    /// # Errors
    /// Backend failures.
    async fn list(&self) -> Result<Vec<SecretName>>;

    /// Check that the provider answers (one cheap request: `PING`, `sys/health`, a token).
    ///
    /// # Errors
    /// The failure, as `get` would report it.
    async fn health(&self) -> Result<()>;
}

#[async_trait]
impl<P: Provider + ?Sized> Provider for Arc<P> {
    fn name(&self) -> &str {
        (**self).name()
    }
    async fn get(&self, name: &SecretName, version: Option<&Version>) -> Result<Option<Fetched>> {
        (**self).get(name, version).await
    }
    async fn put(&self, name: &SecretName, value: &SecretString) -> Result<Version> {
        (**self).put(name, value).await
    }
    fn writable(&self) -> bool {
        (**self).writable()
    }
    async fn list(&self) -> Result<Vec<SecretName>> {
        (**self).list().await
    }
    async fn health(&self) -> Result<()> {
        (**self).health().await
    }
}
