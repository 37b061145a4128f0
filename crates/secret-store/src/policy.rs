//! The cache policy as a pure machine: when a cached value is fresh, stale (served while one
//! refresh runs), or gone; and what a failed refresh does to it. No I/O, no clock: every
//! function takes "now" in microseconds. [`Secrets`](crate::Secrets) runs it for every name.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What [`Secrets`](crate::Secrets) does with a cached value when every provider fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureMode {
    /// Serve the last-known-good value for as long as the outage lasts (until the value's
    /// own expiry, if the provider gave one). Availability over freshness.
    FailOpen,
    /// Never serve a value past its TTL and stale-while-revalidate window: an outage is an
    /// error as soon as the cache runs out.
    FailClosed,
    /// Serve the last-known-good value (from memory, or from the encrypted snapshot at a
    /// cold start) for at most the `resurrect` window after the first failure. The default.
    #[default]
    FallbackToMemory,
}

impl FailureMode {
    /// Wire name (`fail_open`, `fail_closed`, `fallback_to_memory`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::FailOpen => "fail_open",
            Self::FailClosed => "fail_closed",
            Self::FallbackToMemory => "fallback_to_memory",
        }
    }
}

/// The settings of [`Secrets`](crate::Secrets) (serde with humantime durations, unknown
/// fields refused; or set one by one through [`SecretsBuilder`](crate::SecretsBuilder)).
///
/// ```
/// let p: palisade_secret_store::SecretsConfig =
///     toml::from_str("ttl = \"1h\"\nresurrect = \"30m\"\nfailure_mode = \"fallback_to_memory\"").unwrap();
/// assert_eq!(p.ttl, std::time::Duration::from_secs(3600));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SecretsConfig {
    /// How long a loaded value is served without asking the providers again (default 1 h).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// After the TTL, how long the old value is still served while one background refresh
    /// runs (default 5 min).
    #[serde(with = "humantime_serde")]
    pub stale_while_revalidate: Duration,
    /// Under [`FailureMode::FallbackToMemory`], how long after the first failed refresh the
    /// last-known-good value is still served (default 15 min).
    #[serde(with = "humantime_serde")]
    pub resurrect: Duration,
    /// While a last-known-good value is served, how often a read may try the providers
    /// again (default 5 s).
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// Each TTL is shortened by a random fraction up to this (default 0.1), so that a fleet
    /// started together does not refresh together.
    pub refresh_jitter: f64,
    /// What an outage does to cached values.
    pub failure_mode: FailureMode,
    /// Values in the on-disk snapshot older than this are never served (default 24 h).
    #[serde(with = "humantime_serde")]
    pub snapshot_max_age: Duration,
    /// How long one provider call may take before it counts as a (transient) failure
    /// (default 2 s).
    #[serde(with = "humantime_serde")]
    pub provider_timeout: Duration,
    /// Distinct secret names the cache holds at most (default 10 000).
    pub max_secrets: usize,
    /// Label the read counter with the secret's name (`secret`). Off by default: names are
    /// an unbounded label set unless the application's list of secrets is fixed.
    pub secret_name_labels: bool,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            stale_while_revalidate: Duration::from_secs(300),
            resurrect: Duration::from_secs(900),
            retry_interval: Duration::from_secs(5),
            refresh_jitter: 0.1,
            failure_mode: FailureMode::FallbackToMemory,
            snapshot_max_age: Duration::from_secs(86_400),
            provider_timeout: Duration::from_secs(2),
            max_secrets: 10_000,
            secret_name_labels: false,
        }
    }
}

impl SecretsConfig {
    /// Check the values.
    ///
    /// # Errors
    /// A message saying which value is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.ttl.is_zero() {
            return Err("ttl must be greater than zero".to_owned());
        }
        if !(0.0..=0.9).contains(&self.refresh_jitter) {
            return Err(format!(
                "refresh_jitter must be within 0..=0.9, got {}",
                self.refresh_jitter
            ));
        }
        if self.provider_timeout.is_zero() {
            return Err("provider_timeout must be greater than zero".to_owned());
        }
        if self.max_secrets == 0 {
            return Err("max_secrets must be at least 1".to_owned());
        }
        if self.retry_interval.is_zero() {
            return Err("retry_interval must be greater than zero".to_owned());
        }
        Ok(())
    }
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// How a read finds a cached value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// Serve it.
    Fresh,
    /// Serve it, and start one refresh.
    Stale,
    /// Do not serve it: load in the foreground.
    Expired,
}

/// The clock of one cached value, microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freshness {
    /// When the value was loaded.
    pub loaded_at: u64,
    /// Served without a refresh before this.
    pub fresh_until: u64,
    /// Served (with a refresh) before this.
    pub serve_until: u64,
    /// The provider's own expiry: never served at or after it.
    pub hard_expiry: Option<u64>,
    /// The start of the current run of failed refreshes.
    pub failing_since: Option<u64>,
}

/// What a failed refresh leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failed {
    /// The last-known-good value may still be served (with the new freshness).
    Serve(Freshness),
    /// The value must not be served any more: the error goes to the caller.
    Drop,
}

impl Freshness {
    /// A value loaded at `now`; `jitter` in `0.0..1.0` is the random draw (scaled by the
    /// policy's `refresh_jitter`).
    pub fn loaded(p: &SecretsConfig, now: u64, jitter: f64, hard_expiry: Option<u64>) -> Self {
        let ttl = micros(p.ttl);
        let cut = (ttl as f64 * p.refresh_jitter * jitter.clamp(0.0, 1.0)) as u64;
        let fresh = now.saturating_add(ttl.saturating_sub(cut).max(1));
        let serve = fresh.saturating_add(micros(p.stale_while_revalidate));
        let cap = |t: u64| hard_expiry.map_or(t, |h| t.min(h));
        Self {
            loaded_at: now,
            fresh_until: cap(fresh),
            serve_until: cap(serve),
            hard_expiry,
            failing_since: None,
        }
    }

    /// How a read at `now` finds the value.
    pub fn read(&self, now: u64) -> Read {
        if self.hard_expiry.is_some_and(|h| now >= h) {
            Read::Expired
        } else if now < self.fresh_until {
            Read::Fresh
        } else if now < self.serve_until {
            Read::Stale
        } else {
            Read::Expired
        }
    }

    /// A refresh at `now` failed; `transient` says whether the error may go away by itself.
    pub fn failed(&self, p: &SecretsConfig, now: u64, transient: bool) -> Failed {
        if !transient || self.hard_expiry.is_some_and(|h| now >= h) {
            return Failed::Drop;
        }
        let since = self.failing_since.unwrap_or(now);
        let limit = match p.failure_mode {
            FailureMode::FailClosed => self.serve_until,
            FailureMode::FallbackToMemory => self
                .serve_until
                .max(since.saturating_add(micros(p.resurrect))),
            FailureMode::FailOpen => u64::MAX,
        };
        let limit = self.hard_expiry.map_or(limit, |h| limit.min(h));
        if now >= limit {
            return Failed::Drop;
        }
        Failed::Serve(Self {
            failing_since: Some(since),
            fresh_until: now.saturating_add(micros(p.retry_interval)).min(limit),
            serve_until: limit,
            ..*self
        })
    }

    /// Whether a value of this age (loaded at `loaded_at`) read from the snapshot may be
    /// served at `now` during an outage.
    pub fn snapshot_servable(p: &SecretsConfig, loaded_at: u64, now: u64) -> bool {
        p.failure_mode != FailureMode::FailClosed
            && now.saturating_sub(loaded_at) <= micros(p.snapshot_max_age)
    }

    /// The freshness of a value served from the snapshot at `now` during an outage: the
    /// failure run (and so the resurrect window) starts now, capped by the snapshot's
    /// maximum age.
    pub fn from_snapshot(p: &SecretsConfig, loaded_at: u64, now: u64) -> Option<Self> {
        if !Self::snapshot_servable(p, loaded_at, now) {
            return None;
        }
        let cap = loaded_at.saturating_add(micros(p.snapshot_max_age));
        let expired = Self {
            loaded_at,
            fresh_until: now,
            serve_until: now,
            hard_expiry: Some(cap),
            failing_since: None,
        };
        match expired.failed(p, now, true) {
            Failed::Serve(f) => Some(f),
            Failed::Drop => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn policy(mode: FailureMode) -> SecretsConfig {
        SecretsConfig {
            ttl: Duration::from_secs(100),
            stale_while_revalidate: Duration::from_secs(10),
            resurrect: Duration::from_secs(60),
            retry_interval: Duration::from_secs(5),
            refresh_jitter: 0.0,
            failure_mode: mode,
            snapshot_max_age: Duration::from_secs(1000),
            ..SecretsConfig::default()
        }
    }

    #[test]
    fn fresh_stale_expired() {
        let p = policy(FailureMode::FallbackToMemory);
        let f = Freshness::loaded(&p, 0, 0.0, None);
        assert_eq!(f.read(99 * S), Read::Fresh);
        assert_eq!(f.read(100 * S), Read::Stale);
        assert_eq!(f.read(110 * S), Read::Expired);
        let f = Freshness::loaded(&p, 0, 0.0, Some(50 * S));
        assert_eq!(f.read(50 * S), Read::Expired, "the provider's expiry wins");
    }

    #[test]
    fn resurrect_window_counts_from_the_first_failure() {
        let p = policy(FailureMode::FallbackToMemory);
        let f = Freshness::loaded(&p, 0, 0.0, None);
        let Failed::Serve(g) = f.failed(&p, 105 * S, true) else {
            panic!()
        };
        assert_eq!(g.failing_since, Some(105 * S));
        assert_eq!(
            g.read(106 * S),
            Read::Fresh,
            "no retry before retry_interval"
        );
        assert_eq!(g.read(110 * S), Read::Stale);
        let Failed::Serve(h) = g.failed(&p, 150 * S, true) else {
            panic!()
        };
        assert_eq!(h.failing_since, Some(105 * S), "the run goes on");
        assert_eq!(h.failed(&p, 165 * S, true), Failed::Drop);
        assert_eq!(
            f.failed(&p, 105 * S, false),
            Failed::Drop,
            "never on a denial"
        );
        let closed = policy(FailureMode::FailClosed);
        assert_eq!(f.failed(&closed, 110 * S, true), Failed::Drop);
        let open = policy(FailureMode::FailOpen);
        assert!(matches!(
            f.failed(&open, 10_000 * S, true),
            Failed::Serve(_)
        ));
    }
}
