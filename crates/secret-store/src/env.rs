//! [`EnvProvider`]: secrets from environment variables.

use std::collections::HashMap;

use async_trait::async_trait;
use secrecy::SecretString;

use crate::error::Result;
use crate::provider::Provider;
use crate::value::{Fetched, SecretName, Version};

/// Secrets from environment variables, read once when the provider is built.
///
/// Secret `openai/api-key` is variable `<PREFIX>OPENAI_API_KEY` (upper case, `-` `.` `/` as
/// `_`, see [`SecretName::env_var`]). Only variables that start with the prefix are kept,
/// each as a [`SecretString`]; the version is always `env`. Read-only.
///
/// Edition 2024 makes `std::env::set_var` unsafe (and this workspace forbids unsafe code), so
/// tests build the provider from an explicit map with [`from_vars`](Self::from_vars), and
/// production code uses [`from_env`](Self::from_env).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use palisade_secret_store::{EnvProvider, ExposeSecret, Provider, SecretName};
/// let p = EnvProvider::from_vars("APP_", [("APP_OPENAI_API_KEY", "sk-test"), ("PATH", "/bin")]);
/// let f = p.get(&SecretName::new("openai/api-key")?, None).await?.unwrap();
/// assert_eq!(f.value.expose_secret(), "sk-test");
/// assert!(p.get(&SecretName::new("path")?, None).await?.is_none(), "outside the prefix");
/// # Ok::<(), palisade_secret_store::Error>(()) }).unwrap();
/// ```
pub struct EnvProvider {
    name: String,
    prefix: String,
    vars: HashMap<String, SecretString>,
}

impl std::fmt::Debug for EnvProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvProvider")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .field("variables", &self.vars.len())
            .finish()
    }
}

impl EnvProvider {
    /// The process's environment variables that start with `prefix` (`""` for all of them;
    /// variables that are not valid Unicode are skipped).
    pub fn from_env(prefix: &str) -> Self {
        Self::build(
            prefix,
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// The variables of `vars` that start with `prefix` (tests, or a map read elsewhere).
    pub fn from_vars<K, V>(prefix: &str, vars: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        Self::build(prefix, vars.into_iter().map(|(k, v)| (k.into(), v.into())))
    }

    fn build(prefix: &str, vars: impl Iterator<Item = (String, String)>) -> Self {
        let vars = vars
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k, SecretString::from(v)))
            .collect();
        Self {
            name: "env".to_owned(),
            prefix: prefix.to_owned(),
            vars,
        }
    }

    /// Report under another name.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

#[async_trait]
impl Provider for EnvProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, name: &SecretName, version: Option<&Version>) -> Result<Option<Fetched>> {
        if version.is_some_and(|v| v.as_str() != "env") {
            return Ok(None);
        }
        let var = format!("{}{}", self.prefix, name.env_var());
        Ok(self
            .vars
            .get(&var)
            .map(|v| Fetched::new(v.clone(), env_version())))
    }

    async fn list(&self) -> Result<Vec<SecretName>> {
        Ok(self
            .vars
            .keys()
            .filter_map(|k| SecretName::new(&k[self.prefix.len()..]).ok())
            .collect())
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }
}

fn env_version() -> Version {
    static V: std::sync::OnceLock<Version> = std::sync::OnceLock::new();
    V.get_or_init(|| Version::new("env").expect("a valid version"))
        .clone()
}
