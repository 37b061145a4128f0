//! [`CircuitBreakerBuilder`]: a breaker's configuration, clock and store, set in code.

use std::sync::Arc;
use std::time::Duration;

use crate::breaker::{CircuitBreaker, Inner};
use crate::clock::{Clock, Time};
use crate::config::{Backoff, Config, FailureMode, Quorum, SlidingWindow, SlowCallRule};
use crate::error::{Error, Result};
use crate::fleet::spawn_flusher;
use crate::store::Store;
use crate::sync::Shared;

/// Builds a [`CircuitBreaker`]; every setter changes one [`Config`] field.
#[derive(Debug)]
pub struct CircuitBreakerBuilder {
    name: String,
    config: Config,
    clock: Time,
    store: Option<Arc<dyn Store>>,
    instance_id: Option<String>,
}

impl CircuitBreakerBuilder {
    pub(crate) fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            config: Config::default(),
            clock: Time::system(),
            store: None,
            instance_id: None,
        }
    }

    /// Replace the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The sliding window.
    pub fn window(mut self, window: SlidingWindow) -> Self {
        self.config.window = window;
        self
    }

    /// A count-based window over the last `size` calls.
    pub fn count_window(self, size: u32) -> Self {
        self.window(SlidingWindow::Count { size })
    }

    /// A time-based window over the last `seconds` seconds.
    pub fn time_window(self, seconds: u32) -> Self {
        self.window(SlidingWindow::Time { seconds })
    }

    /// Calls needed in the window before a rate rule may trip.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls = calls;
        self
    }

    /// Failure percentage that trips the breaker.
    pub fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.config.failure_rate_threshold = percent;
        self
    }

    /// Trip after `n` failures in a row.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.config.consecutive_failures = Some(n);
        self
    }

    /// Calls taking at least `duration` are slow; trip at `rate_threshold` percent slow calls.
    pub fn slow_call(mut self, duration: Duration, rate_threshold: f64) -> Self {
        self.config.slow_call = Some(SlowCallRule {
            duration,
            rate_threshold,
        });
        self
    }

    /// How long to stay open before probing.
    pub fn open_wait(mut self, wait: Duration) -> Self {
        self.config.open_wait = wait;
        self
    }

    /// Multiply the open wait by `multiplier` on each repeated trip, up to `max_wait`.
    pub fn backoff(mut self, multiplier: f64, max_wait: Duration) -> Self {
        self.config.backoff = Some(Backoff {
            multiplier,
            max_wait,
        });
        self
    }

    /// Probe calls admitted per half-open period.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.config.half_open_probes = probes;
        self
    }

    /// Successful probes needed to close.
    pub fn success_threshold(mut self, successes: u32) -> Self {
        self.config.success_threshold = successes;
        self
    }

    /// Longest half-open period before opening again.
    pub fn max_half_open_wait(mut self, wait: Duration) -> Self {
        self.config.max_half_open_wait = wait;
        self
    }

    /// Per-call timeout.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.config.call_timeout = Some(timeout);
        self
    }

    /// The clock (default: [`SystemClock`](crate::SystemClock)); a
    /// [`FakeClock`](crate::FakeClock) in tests, so that none sleeps.
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Time::absolute(clock);
        self
    }

    /// The clock as the crate reads it (a registry hands its own to every breaker).
    pub(crate) fn time(mut self, clock: Time) -> Self {
        self.clock = clock;
        self
    }

    /// Share state with other instances through `store`. [`build`](Self::build) must then run
    /// inside a tokio runtime: it spawns the task that flushes every
    /// [`flush_interval`](Self::flush_interval).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// How often a shared breaker flushes to its store.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.config.shared.flush_interval = interval;
        self
    }

    /// What a shared breaker does while its store fails.
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.config.shared.failure_mode = mode;
        self
    }

    /// Open fleet-wide only with a quorum of failing instances.
    pub fn quorum(mut self, quorum: Quorum) -> Self {
        self.config.shared.quorum = Some(quorum);
        self
    }

    /// Length of the shared time window in seconds.
    pub fn shared_window_seconds(mut self, seconds: u32) -> Self {
        self.config.shared.window_seconds = seconds;
        self
    }

    /// The id this instance uses in the store (default: random).
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// Build the breaker.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the configuration is invalid, or when a store is set and
    /// no tokio runtime is running.
    pub fn build(self) -> Result<CircuitBreaker> {
        self.config.validate()?;
        if self.name.is_empty() {
            return Err(Error::InvalidConfig(
                "a circuit breaker needs a non-empty name".into(),
            ));
        }
        let name: Arc<str> = Arc::from(self.name.as_str());
        let (shared, runtime) = match self.store {
            None => (None, None),
            Some(store) => {
                let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                    Error::InvalidConfig(
                        "a circuit breaker with a store must be built inside a tokio runtime"
                            .into(),
                    )
                })?;
                let shared = Shared::new(store, self.instance_id, &self.config, runtime.clone());
                (Some(shared), Some(runtime))
            }
        };
        let breaker = CircuitBreaker {
            inner: Arc::new(Inner::new(name, self.config, &self.clock, shared)),
        };
        if let Some(runtime) = runtime {
            spawn_flusher(&breaker, &runtime);
        }
        Ok(breaker)
    }
}
