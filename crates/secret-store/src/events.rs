//! What [`Secrets`](crate::Secrets) tells the outside: audit events, rotation events, health
//! reports and metrics. None of them ever holds a value.

use std::time::SystemTime;

use metrics::{Counter, Gauge, Histogram};
use serde::Serialize;

use crate::value::{SecretName, Version};

/// What happened to a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditKind {
    /// A caller read the secret (cached or loaded).
    Read,
    /// The secret was loaded or refreshed from a provider.
    Refreshed,
    /// Loading it failed (the error is in [`AuditEvent::error`]).
    Failed,
    /// The last-known-good value was served during an outage (from memory or the snapshot).
    Resurrected,
    /// A new version was written, or a refresh found one.
    Rotated,
}

/// One audit record. Serialises to JSON for an audit log; never holds a value.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct AuditEvent {
    /// What happened.
    pub kind: AuditKind,
    /// The secret.
    pub name: SecretName,
    /// The version involved, if any.
    pub version: Option<Version>,
    /// The provider involved, if any.
    pub provider: Option<String>,
    /// When.
    pub at: SystemTime,
    /// The error, for [`AuditKind::Failed`] (its message; errors never hold values).
    pub error: Option<String>,
}

/// Where a rotation came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RotationSource {
    /// [`Secrets::rotate`](crate::Secrets::rotate) wrote it.
    Written,
    /// A refresh found a new version written elsewhere.
    Observed,
}

/// A secret changed version ([`Secrets::rotations`](crate::Secrets::rotations)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Rotation {
    /// The secret.
    pub name: SecretName,
    /// The version served before.
    pub previous: Option<Version>,
    /// The version served now.
    pub current: Version,
    /// Written here or observed.
    pub source: RotationSource,
    /// When.
    pub at: SystemTime,
}

/// One provider's health, for a `/health` endpoint.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct ProviderHealth {
    /// The provider's name.
    pub name: String,
    /// Whether its health check answered in time.
    pub healthy: bool,
    /// How long the check took, milliseconds.
    pub latency_ms: u64,
    /// Why it is unhealthy (an error message, never a value).
    pub error: Option<String>,
}

/// The health of every provider and of the cache ([`Secrets::health`](crate::Secrets::health)).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// Every provider answered.
    pub healthy: bool,
    /// Per provider, in chain order.
    pub providers: Vec<ProviderHealth>,
    /// Secrets in the cache.
    pub cached_secrets: usize,
    /// Of those, served as last-known-good values during an outage right now.
    pub resurrected_secrets: usize,
    /// Secrets remembered in the on-disk snapshot (`None` without a snapshot).
    pub snapshot_secrets: Option<usize>,
}

/// Metric names (all `palisade_secret_store_*`; labels bounded: an outcome, a provider
/// name from the configuration, an error kind; a secret name only when opted in with
/// [`SecretsBuilder::secret_name_labels`](crate::SecretsBuilder::secret_name_labels)).
pub mod names {
    /// Counter: reads, label `outcome` = `fresh`/`stale`/`loaded`/`resurrected`/`not_found`/`error`.
    pub const READS: &str = "palisade_secret_store_reads_total";
    /// Counter: provider calls, labels `provider`, `outcome` = `hit`/`miss`/`error`.
    pub const PROVIDER_CALLS: &str = "palisade_secret_store_provider_calls_total";
    /// Counter: provider errors, labels `provider`, `kind` = `transient`/`denied`/`decrypt`/`other`.
    pub const PROVIDER_ERRORS: &str = "palisade_secret_store_provider_errors_total";
    /// Histogram: provider call time, seconds, label `provider`.
    pub const PROVIDER_DURATION: &str = "palisade_secret_store_provider_duration_seconds";
    /// Counter: rotations, label `source` = `written`/`observed`.
    pub const ROTATIONS: &str = "palisade_secret_store_rotations_total";
    /// Gauge: secret names the cache tracks.
    pub const CACHED: &str = "palisade_secret_store_cached_secrets";
    /// Counter: snapshot writes, label `outcome` = `ok`/`error`.
    pub const SNAPSHOT_WRITES: &str = "palisade_secret_store_snapshot_writes_total";
    /// Gauge: provider health (1 up, 0 down) at the last check, label `provider`.
    pub const PROVIDER_UP: &str = "palisade_secret_store_provider_up";
}

/// Read counters, registered once (the cached `get` increments a handle, no lookup).
#[derive(Clone)]
pub(crate) struct ReadCounters {
    pub(crate) fresh: Counter,
    pub(crate) stale: Counter,
    pub(crate) loaded: Counter,
    pub(crate) resurrected: Counter,
    pub(crate) not_found: Counter,
    pub(crate) error: Counter,
}

impl ReadCounters {
    pub(crate) fn new(secret: Option<&SecretName>) -> Self {
        let c = |outcome: &'static str| match secret {
            None => metrics::counter!(names::READS, "outcome" => outcome),
            Some(n) => {
                metrics::counter!(names::READS, "outcome" => outcome, "secret" => n.to_string())
            }
        };
        Self {
            fresh: c("fresh"),
            stale: c("stale"),
            loaded: c("loaded"),
            resurrected: c("resurrected"),
            not_found: c("not_found"),
            error: c("error"),
        }
    }
}

pub(crate) struct ProviderMetrics {
    pub(crate) hit: Counter,
    pub(crate) miss: Counter,
    pub(crate) error: Counter,
    pub(crate) duration: Histogram,
    pub(crate) up: Gauge,
    name: String,
}

impl ProviderMetrics {
    pub(crate) fn new(provider: &str) -> Self {
        let p = provider.to_owned();
        Self {
            hit: metrics::counter!(names::PROVIDER_CALLS, "provider" => p.clone(), "outcome" => "hit"),
            miss: metrics::counter!(names::PROVIDER_CALLS, "provider" => p.clone(), "outcome" => "miss"),
            error: metrics::counter!(names::PROVIDER_CALLS, "provider" => p.clone(), "outcome" => "error"),
            duration: metrics::histogram!(names::PROVIDER_DURATION, "provider" => p.clone()),
            up: metrics::gauge!(names::PROVIDER_UP, "provider" => p.clone()),
            name: p,
        }
    }

    pub(crate) fn error_kind(&self, kind: &'static str) {
        metrics::counter!(names::PROVIDER_ERRORS, "provider" => self.name.clone(), "kind" => kind)
            .increment(1);
    }
}
