//! The gateway's settings: a TOML file named by `AI_GATEWAY_CONFIG` (see `ai_gateway.toml`
//! beside this file, which documents every key), then `REDIS_URL`, `DATABASE_URL` and
//! `LISTEN` from the environment. Every section has defaults, so no file is needed.

use std::path::PathBuf;
use std::time::Duration;

use palisade::circuit_breaker::RegistryConfig;
use serde::Deserialize;

/// Everything the gateway reads at start-up. Unknown keys are refused.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The gateway's port when `LISTEN` is unset (on 127.0.0.1).
    pub port: u16,
    /// Redis for every store (rate limits, API keys, breakers, cache); `REDIS_URL` wins.
    /// Without either, everything lives in this process's memory.
    pub redis_url: Option<String>,
    /// PostgreSQL for the usage ledger and its migrations; `DATABASE_URL` wins. Without
    /// either, the ledger lives in memory and the migrations run on the memory target.
    pub database_url: Option<String>,
    /// The PostgreSQL schema the gateway's tables live in (created when missing).
    pub database_schema: String,
    /// The readable prefix of the API keys this gateway issues (`gw_live_…`).
    pub key_prefix: String,
    /// Create an admin key at start-up and print it once on stdout (never in the logs).
    pub bootstrap_admin: bool,
    /// Tiers and route weights.
    pub limits: Limits,
    /// The models clients may ask for (passed to the providers as they are).
    pub models: Vec<String>,
    /// The upstream providers, tried in this order.
    pub providers: Vec<ProviderSettings>,
    /// Circuit breakers, one per provider (`[breakers.default]`, `[breakers.breakers.alpha]`).
    pub breakers: RegistryConfig,
    /// The semantic cache.
    pub cache: CacheSettings,
    /// Where secrets come from.
    pub secrets: SecretSettings,
    /// Start-up migrations.
    pub migrations: MigrationSettings,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            port: 8080,
            redis_url: None,
            database_url: None,
            database_schema: "ai_gateway".to_owned(),
            key_prefix: "gw".to_owned(),
            bootstrap_admin: true,
            limits: Limits::default(),
            models: vec!["small".to_owned(), "large".to_owned()],
            providers: vec![
                ProviderSettings::fake("alpha", 0.15, 0.60),
                ProviderSettings::fake("beta", 0.25, 1.00),
            ],
            breakers: default_breakers(),
            cache: CacheSettings::default(),
            secrets: SecretSettings::default(),
            migrations: MigrationSettings::default(),
            max_body_bytes: 256 * 1024,
        }
    }
}

/// Breakers that judge an upstream on its last 20 calls: half of them failing (at least 4
/// calls), or 3 failures in a row, or 80 % slower than 5 s opens it for 10 s.
fn default_breakers() -> RegistryConfig {
    use palisade::circuit_breaker::{Config, SlidingWindow, SlowCallRule};
    RegistryConfig::new(
        Config::default()
            .window(SlidingWindow::Count { size: 20 })
            .minimum_calls(4)
            .failure_rate_threshold(50.0)
            .consecutive_failures(3)
            .open_wait(Duration::from_secs(10))
            .call_timeout(Duration::from_secs(30))
            .slow_call(SlowCallRule::new(Duration::from_secs(5), 80.0)),
    )
}

impl Settings {
    /// Read the file named by `AI_GATEWAY_CONFIG` (defaults without it), then apply the
    /// environment (`REDIS_URL`, `DATABASE_URL`).
    ///
    /// # Errors
    /// The file cannot be read or does not describe valid settings.
    pub fn load() -> Result<Self, String> {
        let mut settings: Self = crate::support::settings::load("AI_GATEWAY_CONFIG")?;
        if let Some(url) = crate::support::settings::redis_url() {
            settings.redis_url = Some(url);
        }
        if let Some(url) = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
        {
            settings.database_url = Some(url);
        }
        Ok(settings)
    }
}

/// One tier's budget on the AI routes.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TierLimits {
    /// Units per minute.
    pub per_minute: u64,
    /// Units per hour.
    pub per_hour: u64,
}

/// Rate limits: the tiers' budgets on AI routes, what each AI request weighs, and the
/// budget of the other API routes. Keys are limited by their key id; `admin` is unlimited.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// `free`: 10 units a minute and 60 an hour on AI routes.
    pub free: TierLimits,
    /// `premium`: 50 units a minute and 300 an hour on AI routes.
    pub premium: TierLimits,
    /// Units one chat completion costs.
    pub chat_cost: u64,
    /// Units each prompt of a batch costs (a batch of 5 costs 5 times this).
    pub batch_cost_per_prompt: u64,
    /// Most prompts in one batch.
    pub batch_max: usize,
    /// Requests a minute on the other `/v1` routes (models, usage), per key, every tier but
    /// `admin`.
    pub api_per_minute: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            free: TierLimits {
                per_minute: 10,
                per_hour: 60,
            },
            premium: TierLimits {
                per_minute: 50,
                per_hour: 300,
            },
            chat_cost: 1,
            batch_cost_per_prompt: 1,
            batch_max: 16,
            api_per_minute: 120,
        }
    }
}

/// How a fake provider behaves (the example serves its own upstreams).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultMode {
    /// Answers normally.
    #[default]
    None,
    /// Answers `503 Service Unavailable`.
    Fail,
    /// Answers after `delay`.
    Slow,
}

/// One upstream provider.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// Its name: the breaker's name, the metric label, the secret `providers/<name>/api-key`.
    pub name: String,
    /// An OpenAI-compatible base URL (`https://api.example.com`, the gateway posts to
    /// `<base_url>/v1/chat/completions`). Without it the gateway serves a fake provider of
    /// that name itself, on `fake_port`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The fake provider's port on 127.0.0.1 (0: any free port).
    #[serde(default)]
    pub fake_port: u16,
    /// The fake provider's behaviour at start (`none`, `fail`, `slow`); change it at
    /// runtime with `PUT /admin/providers/<name>/fault`.
    #[serde(default)]
    pub fault: FaultMode,
    /// How long a `slow` fake provider takes.
    #[serde(default = "default_slow_delay", with = "humantime_serde")]
    pub slow_delay: Duration,
    /// Price of a million prompt tokens, in dollars.
    pub input_per_million: f64,
    /// Price of a million completion tokens, in dollars.
    pub output_per_million: f64,
    /// The HTTP client's timeout for one call (the breaker's `call_timeout` cuts earlier
    /// when it is shorter).
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

fn default_slow_delay() -> Duration {
    Duration::from_secs(2)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}

impl ProviderSettings {
    /// A fake provider served by the gateway itself on any free port.
    pub fn fake(name: &str, input_per_million: f64, output_per_million: f64) -> Self {
        Self {
            name: name.to_owned(),
            base_url: None,
            fake_port: 0,
            fault: FaultMode::None,
            slow_delay: default_slow_delay(),
            input_per_million,
            output_per_million,
            request_timeout: default_request_timeout(),
        }
    }
}

/// The semantic cache in front of the providers.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Whether answers are cached at all.
    pub enabled: bool,
    /// How long an answer is served.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Lowest similarity served as a hit (1.0: exact prompts only).
    pub threshold: f32,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: Duration::from_secs(3600),
            threshold: palisade::semantic_cache::DEFAULT_THRESHOLD,
        }
    }
}

/// Where secrets come from, in this order: the environment (`GATEWAY_<NAME>`), then a file,
/// then (when `demo_values` is on) built-in demo values.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretSettings {
    /// Prefix of the environment variables (`GATEWAY_APIKEY_PEPPER_V1`, …).
    pub env_prefix: String,
    /// A `.env`, JSON or TOML file of secrets (`apikey/pepper-v1 = "…"`).
    pub file: Option<PathBuf>,
    /// Fall back to demo values for secrets found nowhere else (logged at WARN). Turn off
    /// in production: a missing secret then stops the start.
    pub demo_values: bool,
}

impl Default for SecretSettings {
    fn default() -> Self {
        Self {
            env_prefix: "GATEWAY_".to_owned(),
            file: None,
            demo_values: true,
        }
    }
}

/// Migrations run at start-up, each after an encrypted backup.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigrationSettings {
    /// Where backups are written (one encrypted file per backup).
    pub backup_dir: PathBuf,
    /// How long to wait for another instance's migration lease.
    #[serde(with = "humantime_serde")]
    pub lock_wait: Duration,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        Self {
            backup_dir: std::env::temp_dir().join("palisade-ai-gateway-backups"),
            lock_wait: Duration::from_secs(120),
        }
    }
}
