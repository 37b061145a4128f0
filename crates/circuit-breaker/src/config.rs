//! Configuration: plain structs with serde support, validated once when a breaker is built.
//! The trip rule and the open-wait backoff live here as pure functions.
//!
//! Every struct is `#[non_exhaustive]` (the crate contract: a new setting is not a breaking
//! change), so code outside this crate builds them from `default()` (or `new` where a
//! field has no sensible default) with the chainable setters below, or assigns fields.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::window::Snapshot;

/// The largest count-based window (calls).
pub const MAX_WINDOW_CALLS: u32 = 1 << 20;
/// The longest time-based window (seconds).
pub const MAX_WINDOW_SECONDS: u32 = 3600;

/// Chainable setters named after the fields they set, so a `#[non_exhaustive]` struct is
/// still written in one expression: `Config::default().minimum_calls(20).open_wait(d)`.
/// `plain` fields take their value; `optional` fields (`Option<T>`) take a `T` and set `Some`.
macro_rules! setters {
    (plain { $($field:ident: $ty:ty),* $(,)? } $(optional { $($opt:ident: $oty:ty),* $(,)? })?) => {
        $(
            #[doc = concat!("Sets [`", stringify!($field), "`](Self::", stringify!($field), ").")]
            #[must_use]
            pub fn $field(mut self, $field: $ty) -> Self {
                self.$field = $field;
                self
            }
        )*
        $($(
            #[doc = concat!("Sets [`", stringify!($opt), "`](Self::", stringify!($opt), ") to `Some`.")]
            #[must_use]
            pub fn $opt(mut self, $opt: $oty) -> Self {
                self.$opt = Some($opt);
                self
            }
        )*)?
    };
}

/// Which recent calls the failure and slow-call rates are computed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SlidingWindow {
    /// The last `size` calls (1 ..= 2^20).
    Count {
        /// Number of calls.
        size: u32,
    },
    /// The calls of the last `seconds` seconds, in one bucket per second (1 ..= 3600).
    Time {
        /// Number of one-second buckets.
        seconds: u32,
    },
}

impl Default for SlidingWindow {
    fn default() -> Self {
        Self::Count { size: 100 }
    }
}

/// Calls slower than `duration` count as slow; the breaker trips when the share of slow
/// calls reaches `rate_threshold` percent (with at least `minimum_calls` in the window).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SlowCallRule {
    /// A call taking at least this long is slow (`"2s"`, `"800ms"` in serde formats).
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Percentage of slow calls (0 < x <= 100) that trips the breaker.
    pub rate_threshold: f64,
}

impl SlowCallRule {
    /// Calls taking at least `duration` are slow; `rate_threshold` percent of them trips.
    /// Checked by [`Config::validate`].
    pub fn new(duration: Duration, rate_threshold: f64) -> Self {
        Self {
            duration,
            rate_threshold,
        }
    }
}

/// Growth of the open wait when the breaker trips again right after a half-open period:
/// the k-th consecutive trip waits `open_wait * multiplier^(k-1)`, at most `max_wait`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Backoff {
    /// Factor per repeated trip (>= 1).
    pub multiplier: f64,
    /// Upper bound of the open wait.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Backoff {
    /// Multiply the open wait by `multiplier` per repeated trip, up to `max_wait`. Checked
    /// by [`Config::validate`].
    pub fn new(multiplier: f64, max_wait: Duration) -> Self {
        Self {
            multiplier,
            max_wait,
        }
    }
}

/// What a breaker with shared state does while its [`Store`](crate::Store) fails (the same
/// three words in every palisade crate; serde names `fail_open`, `fail_closed`,
/// `fallback_to_memory`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureMode {
    /// "Fail open": let every call through (outcomes are still recorded locally) until the
    /// store answers again. Manual states (forced open, disabled) still hold.
    FailOpen,
    /// "Fail closed": reject every call until the store answers again.
    FailClosed,
    /// Go on deciding with this instance's own window and rules, in memory, and resynchronise
    /// (push what was seen meanwhile) when the store answers again. The default: the breaker
    /// keeps protecting and keeps serving. (`local` in configs written before 0.1.)
    #[default]
    #[serde(alias = "local")]
    FallbackToMemory,
}

/// Open fleet-wide only when enough instances see failures, so one bad node cannot open the
/// breaker for every other node.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Quorum {
    /// At least this many instances must report failures within the shared window.
    pub min_instances: u32,
    /// And at least this percentage of the live instances (0 ..= 100).
    pub min_percent: f64,
}

impl Default for Quorum {
    fn default() -> Self {
        Self {
            min_instances: 2,
            min_percent: 0.0,
        }
    }
}

impl Quorum {
    setters! {
        plain { min_instances: u32, min_percent: f64 }
    }
}

/// Settings used only when the breaker shares its state through a
/// [`Store`](crate::Store).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct SharedConfig {
    /// How often local outcomes are flushed to the store and the shared state is read back.
    /// This is also the staleness bound: every instance learns a shared transition within one
    /// interval (plus one round trip).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Length of the shared time window in seconds (one bucket per second of store time).
    pub window_seconds: u32,
    /// What to do while the store fails.
    pub failure_mode: FailureMode,
    /// Optional quorum rule for opening fleet-wide.
    pub quorum: Option<Quorum>,
    /// How long a fleet-wide half-open probe permit is leased; a permit whose holder died
    /// is handed out again after this time.
    #[serde(with = "humantime_serde")]
    pub probe_lease: Duration,
}

impl Default for SharedConfig {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(100),
            window_seconds: 10,
            failure_mode: FailureMode::FallbackToMemory,
            quorum: None,
            probe_lease: Duration::from_secs(30),
        }
    }
}

impl SharedConfig {
    setters! {
        plain {
            flush_interval: Duration,
            window_seconds: u32,
            failure_mode: FailureMode,
            probe_lease: Duration,
        }
        optional { quorum: Quorum }
    }
}

/// Everything that decides how a breaker behaves. Every field has a default; deserialize
/// from TOML/JSON with humantime durations (`"30s"`), or start from `default()` in code.
///
/// ```
/// use palisade_circuit_breaker::{Config, SlowCallRule};
/// use std::time::Duration;
///
/// let config = Config::default()
///     .minimum_calls(20)
///     .open_wait(Duration::from_secs(10))
///     .slow_call(SlowCallRule::new(Duration::from_secs(2), 80.0));
/// config.validate().unwrap();
/// assert_eq!(config.minimum_calls, 20);
///
/// let config: Config = serde_json::from_str(r#"{
///     "window": { "kind": "time", "seconds": 30 },
///     "failure_rate_threshold": 25.0,
///     "open_wait": "10s",
///     "slow_call": { "duration": "2s", "rate_threshold": 80.0 }
/// }"#).unwrap();
/// config.validate().unwrap();
/// ```
///
/// A struct literal does not compile outside this crate (`#[non_exhaustive]`: a new setting
/// is not a breaking change):
///
/// ```compile_fail
/// let config = palisade_circuit_breaker::Config { minimum_calls: 20, ..Default::default() };
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Config {
    /// The sliding window the rates are computed over (default: last 100 calls).
    pub window: SlidingWindow,
    /// No rate rule trips before the window holds this many calls (default 10).
    pub minimum_calls: u32,
    /// Failure percentage (0 < x <= 100) that trips the breaker (default 50).
    pub failure_rate_threshold: f64,
    /// Trip after this many failures in a row, whatever the window says (default: off).
    pub consecutive_failures: Option<u32>,
    /// Slow-call rule (default: off).
    pub slow_call: Option<SlowCallRule>,
    /// How long the breaker stays open before probing (default 30 s).
    #[serde(with = "humantime_serde")]
    pub open_wait: Duration,
    /// Growth of the open wait on repeated trips (default: off).
    pub backoff: Option<Backoff>,
    /// Probe calls admitted per half-open period (default 3).
    pub half_open_probes: u32,
    /// Successful probes needed to close (1 ..= `half_open_probes`, default 3).
    pub success_threshold: u32,
    /// A half-open period that has not closed after this long opens again, so a breaker
    /// can never stay half-open (default 60 s).
    #[serde(with = "humantime_serde")]
    pub max_half_open_wait: Duration,
    /// Per-call timeout; a call that takes longer fails with
    /// [`Error::Timeout`](crate::Error::Timeout) and counts as a failure (default: none).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Option<Duration>,
    /// Settings for shared state.
    pub shared: SharedConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            window: SlidingWindow::default(),
            minimum_calls: 10,
            failure_rate_threshold: 50.0,
            consecutive_failures: None,
            slow_call: None,
            open_wait: Duration::from_secs(30),
            backoff: None,
            half_open_probes: 3,
            success_threshold: 3,
            max_half_open_wait: Duration::from_secs(60),
            call_timeout: None,
            shared: SharedConfig::default(),
        }
    }
}

/// Why a breaker tripped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TripReason {
    /// The failure rate reached its threshold.
    FailureRate,
    /// The slow-call rate reached its threshold.
    SlowCallRate,
    /// Too many failures in a row.
    ConsecutiveFailures,
    /// A half-open probe failed.
    ProbeFailed,
    /// The half-open period exceeded its maximum wait.
    HalfOpenTimeout,
    /// The shared state (another instance, or the fleet's window) opened it.
    Shared,
}

fn bad(msg: String) -> Error {
    Error::InvalidConfig(msg)
}

fn check_percent(name: &str, v: f64, allow_zero: bool) -> Result<(), Error> {
    let ok = v.is_finite() && v <= 100.0 && (v > 0.0 || (allow_zero && v == 0.0));
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{name} must be a percentage in (0, 100], got {v}"
        )))
    }
}

impl Config {
    setters! {
        plain {
            window: SlidingWindow,
            minimum_calls: u32,
            failure_rate_threshold: f64,
            open_wait: Duration,
            half_open_probes: u32,
            success_threshold: u32,
            max_half_open_wait: Duration,
            shared: SharedConfig,
        }
        optional {
            consecutive_failures: u32,
            slow_call: SlowCallRule,
            backoff: Backoff,
            call_timeout: Duration,
        }
    }

    /// Check every field; [`CircuitBreakerBuilder::build`](crate::CircuitBreakerBuilder::build)
    /// calls this.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first invalid field.
    pub fn validate(&self) -> Result<(), Error> {
        match self.window {
            SlidingWindow::Count { size } if size == 0 || size > MAX_WINDOW_CALLS => {
                return Err(bad(format!(
                    "window size must be 1..={MAX_WINDOW_CALLS}, got {size}"
                )));
            }
            SlidingWindow::Time { seconds } if seconds == 0 || seconds > MAX_WINDOW_SECONDS => {
                return Err(bad(format!(
                    "window seconds must be 1..={MAX_WINDOW_SECONDS}, got {seconds}"
                )));
            }
            _ => {}
        }
        check_percent("failure_rate_threshold", self.failure_rate_threshold, false)?;
        if let Some(slow) = &self.slow_call {
            check_percent("slow_call.rate_threshold", slow.rate_threshold, false)?;
            if slow.duration.is_zero() {
                return Err(bad("slow_call.duration must be greater than zero".into()));
            }
        }
        if self.consecutive_failures == Some(0) {
            return Err(bad("consecutive_failures must be at least 1".into()));
        }
        if self.open_wait.is_zero() || self.open_wait.as_millis() >= 1 << 39 {
            return Err(bad(
                "open_wait must be between 1 ms and about 17 years".into()
            ));
        }
        if let Some(b) = &self.backoff {
            if !b.multiplier.is_finite() || b.multiplier < 1.0 {
                return Err(bad(format!(
                    "backoff.multiplier must be >= 1, got {}",
                    b.multiplier
                )));
            }
            if b.max_wait < self.open_wait || b.max_wait.as_millis() >= 1 << 39 {
                return Err(bad("backoff.max_wait must be at least open_wait".into()));
            }
        }
        if self.half_open_probes == 0 || self.half_open_probes > 1 << 20 {
            return Err(bad("half_open_probes must be 1..=2^20".into()));
        }
        if self.success_threshold == 0 || self.success_threshold > self.half_open_probes {
            return Err(bad(format!(
                "success_threshold must be 1..=half_open_probes ({}), got {}",
                self.half_open_probes, self.success_threshold
            )));
        }
        if self.max_half_open_wait.is_zero() || self.max_half_open_wait.as_millis() >= 1 << 39 {
            return Err(bad(
                "max_half_open_wait must be between 1 ms and about 17 years".into(),
            ));
        }
        if self.call_timeout.is_some_and(|t| t.is_zero()) {
            return Err(bad("call_timeout must be greater than zero".into()));
        }
        let s = &self.shared;
        if s.flush_interval.is_zero() {
            return Err(bad("shared.flush_interval must be greater than zero".into()));
        }
        if s.window_seconds == 0 || s.window_seconds > MAX_WINDOW_SECONDS {
            return Err(bad(format!(
                "shared.window_seconds must be 1..={MAX_WINDOW_SECONDS}"
            )));
        }
        if s.probe_lease.is_zero() {
            return Err(bad("shared.probe_lease must be greater than zero".into()));
        }
        if let Some(q) = &s.quorum {
            check_percent("shared.quorum.min_percent", q.min_percent, true)?;
        }
        Ok(())
    }

    /// How long the breaker stays open on its `trips`-th consecutive trip (1 = first).
    pub fn open_wait_for(&self, trips: u32) -> Duration {
        match &self.backoff {
            None => self.open_wait,
            Some(b) => {
                let exp = i32::try_from(trips.saturating_sub(1)).unwrap_or(i32::MAX);
                let secs = self.open_wait.as_secs_f64() * b.multiplier.powi(exp);
                if !secs.is_finite() || secs >= b.max_wait.as_secs_f64() {
                    b.max_wait
                } else {
                    Duration::from_secs_f64(secs)
                }
            }
        }
    }

    /// The pure trip rule: given the window's snapshot and the current run of consecutive
    /// failures, should a closed breaker open, and why.
    pub fn should_trip(&self, snapshot: Snapshot, consecutive_failures: u32) -> Option<TripReason> {
        if self
            .consecutive_failures
            .is_some_and(|limit| consecutive_failures >= limit)
        {
            return Some(TripReason::ConsecutiveFailures);
        }
        if snapshot.calls == 0 || snapshot.calls < u64::from(self.minimum_calls) {
            return None;
        }
        // Rates compared by multiplication: no division on the hot path.
        let calls = snapshot.calls as f64;
        if snapshot.failures as f64 * 100.0 >= self.failure_rate_threshold * calls {
            return Some(TripReason::FailureRate);
        }
        if let Some(slow) = &self.slow_call
            && snapshot.slow as f64 * 100.0 >= slow.rate_threshold * calls
        {
            return Some(TripReason::SlowCallRate);
        }
        None
    }
}

/// A partial [`Config`]: the fields a [`Registry`](crate::Registry) entry changes from the
/// registry's default. Missing fields keep the default's value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // each field overrides the Config field of the same name
#[non_exhaustive]
pub struct ConfigOverride {
    pub window: Option<SlidingWindow>,
    pub minimum_calls: Option<u32>,
    pub failure_rate_threshold: Option<f64>,
    pub consecutive_failures: Option<u32>,
    pub slow_call: Option<SlowCallRule>,
    #[serde(with = "humantime_serde")]
    pub open_wait: Option<Duration>,
    pub backoff: Option<Backoff>,
    pub half_open_probes: Option<u32>,
    pub success_threshold: Option<u32>,
    #[serde(with = "humantime_serde")]
    pub max_half_open_wait: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub call_timeout: Option<Duration>,
    pub shared: Option<SharedConfig>,
}

impl ConfigOverride {
    setters! {
        plain {}
        optional {
            window: SlidingWindow,
            minimum_calls: u32,
            failure_rate_threshold: f64,
            consecutive_failures: u32,
            slow_call: SlowCallRule,
            open_wait: Duration,
            backoff: Backoff,
            half_open_probes: u32,
            success_threshold: u32,
            max_half_open_wait: Duration,
            call_timeout: Duration,
            shared: SharedConfig,
        }
    }

    /// `base` with every field this override sets replaced.
    pub fn apply(&self, base: &Config) -> Config {
        let mut c = base.clone();
        if let Some(v) = self.window {
            c.window = v;
        }
        if let Some(v) = self.minimum_calls {
            c.minimum_calls = v;
        }
        if let Some(v) = self.failure_rate_threshold {
            c.failure_rate_threshold = v;
        }
        if let Some(v) = self.consecutive_failures {
            c.consecutive_failures = Some(v);
        }
        if let Some(v) = self.slow_call {
            c.slow_call = Some(v);
        }
        if let Some(v) = self.open_wait {
            c.open_wait = v;
        }
        if let Some(v) = self.backoff {
            c.backoff = Some(v);
        }
        if let Some(v) = self.half_open_probes {
            c.half_open_probes = v;
        }
        if let Some(v) = self.success_threshold {
            c.success_threshold = v;
        }
        if let Some(v) = self.max_half_open_wait {
            c.max_half_open_wait = v;
        }
        if let Some(v) = self.call_timeout {
            c.call_timeout = Some(v);
        }
        if let Some(v) = self.shared {
            c.shared = v;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setters_set_their_fields() {
        let c = Config::default()
            .minimum_calls(7)
            .consecutive_failures(3)
            .call_timeout(Duration::from_secs(2))
            .slow_call(SlowCallRule::new(Duration::from_millis(800), 60.0))
            .backoff(Backoff::new(2.0, Duration::from_secs(60)))
            .shared(
                SharedConfig::default()
                    .window_seconds(20)
                    .quorum(Quorum::default().min_instances(3).min_percent(25.0)),
            );
        let expected = Config {
            minimum_calls: 7,
            consecutive_failures: Some(3),
            call_timeout: Some(Duration::from_secs(2)),
            slow_call: Some(SlowCallRule {
                duration: Duration::from_millis(800),
                rate_threshold: 60.0,
            }),
            backoff: Some(Backoff {
                multiplier: 2.0,
                max_wait: Duration::from_secs(60),
            }),
            shared: SharedConfig {
                window_seconds: 20,
                quorum: Some(Quorum {
                    min_instances: 3,
                    min_percent: 25.0,
                }),
                ..SharedConfig::default()
            },
            ..Config::default()
        };
        assert_eq!(c, expected);
        c.validate().unwrap();

        let o = ConfigOverride::default().open_wait(Duration::from_secs(5));
        assert_eq!(o.apply(&c).open_wait, Duration::from_secs(5));
        assert_eq!(o.apply(&c).minimum_calls, 7);
    }

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn invalid_fields_are_named() {
        let c = Config {
            success_threshold: 4,
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("success_threshold")
        );
        let c = Config {
            failure_rate_threshold: f64::NAN,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            window: SlidingWindow::Count { size: 0 },
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn backoff_grows_and_caps() {
        let c = Config {
            open_wait: Duration::from_secs(1),
            backoff: Some(Backoff {
                multiplier: 2.0,
                max_wait: Duration::from_secs(5),
            }),
            ..Config::default()
        };
        assert_eq!(c.open_wait_for(1), Duration::from_secs(1));
        assert_eq!(c.open_wait_for(2), Duration::from_secs(2));
        assert_eq!(c.open_wait_for(3), Duration::from_secs(4));
        assert_eq!(c.open_wait_for(4), Duration::from_secs(5));
        assert_eq!(c.open_wait_for(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn trip_rule_respects_minimum_calls() {
        let c = Config {
            minimum_calls: 4,
            ..Config::default()
        };
        let s = Snapshot {
            calls: 3,
            failures: 3,
            slow: 0,
        };
        assert_eq!(c.should_trip(s, 0), None);
        let s = Snapshot {
            calls: 4,
            failures: 2,
            slow: 0,
        };
        assert_eq!(c.should_trip(s, 0), Some(TripReason::FailureRate));
    }

    #[test]
    fn toml_round_trip() {
        let c = Config {
            slow_call: Some(SlowCallRule {
                duration: Duration::from_millis(800),
                rate_threshold: 60.0,
            }),
            call_timeout: Some(Duration::from_secs(5)),
            ..Config::default()
        };
        let text = toml::to_string(&c).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }
}
