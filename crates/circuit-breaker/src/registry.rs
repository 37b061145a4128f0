//! Named breakers built from a default configuration plus per-name overrides.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::breaker::{CircuitBreaker, Health};
use crate::clock::{Clock, Time};
use crate::config::{Config, ConfigOverride};
use crate::error::Result;
use crate::store::Store;

/// A registry's configuration: a default for every breaker and overrides by name.
///
/// ```
/// use palisade_circuit_breaker::RegistryConfig;
///
/// let config: RegistryConfig = toml::from_str(r#"
///     [default]
///     failure_rate_threshold = 50.0
///     open_wait = "30s"
///
///     [breakers.openai]
///     call_timeout = "20s"
///     slow_call = { duration = "8s", rate_threshold = 80.0 }
///
///     [breakers.database]
///     consecutive_failures = 5
///     open_wait = "5s"
/// "#).unwrap();
/// assert_eq!(config.config_for("database").consecutive_failures, Some(5));
///
/// // The same in code.
/// use palisade_circuit_breaker::{Config, ConfigOverride};
/// use std::time::Duration;
///
/// let in_code = RegistryConfig::new(Config::default().open_wait(Duration::from_secs(30)))
///     .breaker("database", ConfigOverride::default().consecutive_failures(5));
/// assert_eq!(in_code.config_for("database").consecutive_failures, Some(5));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct RegistryConfig {
    /// The configuration of any breaker without an override.
    pub default: Config,
    /// Per-name changes to the default.
    pub breakers: BTreeMap<String, ConfigOverride>,
}

impl RegistryConfig {
    /// A registry whose breakers all use `default` unless overridden.
    pub fn new(default: Config) -> Self {
        Self {
            default,
            breakers: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) the override of the breaker called `name`.
    #[must_use]
    pub fn breaker(mut self, name: impl Into<String>, changes: ConfigOverride) -> Self {
        self.breakers.insert(name.into(), changes);
        self
    }

    /// The effective configuration of the breaker called `name`.
    pub fn config_for(&self, name: &str) -> Config {
        match self.breakers.get(name) {
            Some(o) => o.apply(&self.default),
            None => self.default.clone(),
        }
    }

    /// Validate the default and every override.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) naming the breaker whose configuration is invalid.
    pub fn validate(&self) -> Result<()> {
        self.default
            .validate()
            .map_err(|e| crate::Error::InvalidConfig(format!("default: {e}")))?;
        for name in self.breakers.keys() {
            self.config_for(name)
                .validate()
                .map_err(|e| crate::Error::InvalidConfig(format!("breaker `{name}`: {e}")))?;
        }
        Ok(())
    }
}

/// Named breakers, created on first use and shared by every caller asking for the same name.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use palisade_circuit_breaker::{Registry, RegistryConfig, State};
///
/// let registry = Registry::new(RegistryConfig::default()).unwrap();
/// let openai = registry.get("openai").unwrap();
/// openai.force_open();
/// let health = registry.health();
/// assert_eq!(health[0].name, "openai");
/// assert_eq!(health[0].state, State::ForcedOpen);
/// # }
/// ```
///
/// Looking a breaker up takes a read lock on the registry's map; keep the returned
/// [`CircuitBreaker`] (a cheap clone) rather than looking it up on every call.
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    clock: Time,
    store: Option<Arc<dyn Store>>,
    instance_id: Option<String>,
    breakers: RwLock<HashMap<String, CircuitBreaker>>,
}

impl Registry {
    /// A registry with `config`, the system clock and no shared state.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) when any configuration is invalid.
    pub fn new(config: RegistryConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            clock: Time::system(),
            store: None,
            instance_id: None,
            breakers: RwLock::default(),
        })
    }

    /// Use `clock` for breakers created from now on.
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Time::absolute(clock);
        self
    }

    /// Share every breaker's state through `store` (breakers are then created inside a tokio
    /// runtime), identifying this instance as `instance_id` (random when `None`).
    pub fn with_store(mut self, store: Arc<dyn Store>, instance_id: Option<String>) -> Self {
        self.store = Some(store);
        self.instance_id = instance_id;
        self
    }

    /// The registry's configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// The breaker called `name`, created from its configuration on first use.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) when a shared breaker is created outside a
    /// tokio runtime, or `name` is empty.
    pub fn get(&self, name: &str) -> Result<CircuitBreaker> {
        if let Some(b) = self.read().get(name) {
            return Ok(b.clone());
        }
        let mut map = self
            .breakers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(b) = map.get(name) {
            return Ok(b.clone());
        }
        let mut builder = CircuitBreaker::builder(name)
            .config(self.config.config_for(name))
            .time(self.clock.clone());
        if let Some(store) = &self.store {
            builder = builder.store(Arc::clone(store));
            if let Some(id) = &self.instance_id {
                builder = builder.instance_id(id.clone());
            }
        }
        let breaker = builder.build()?;
        map.insert(name.to_owned(), breaker.clone());
        Ok(breaker)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, CircuitBreaker>> {
        self.breakers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Names of the breakers created so far, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// The health of every breaker created so far and of every breaker named in the
    /// configuration (created now if needed), sorted by name.
    pub fn health(&self) -> Vec<Health> {
        for name in self.config.breakers.keys() {
            let _ = self.get(name);
        }
        let mut all: Vec<Health> = self.read().values().map(CircuitBreaker::health).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}
