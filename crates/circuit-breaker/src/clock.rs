//! Injectable time: the system's monotonic clock, or a [`FakeClock`] that tests advance by hand.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The time source of a breaker: a monotonic clock measured from the clock's own epoch.
///
/// [`Clock::system`] (the default) reads [`Instant::now`]; a [`FakeClock`] turns into a
/// `Clock` with [`FakeClock::clock`] (or `From`) and only moves when told to, so tests and
/// benches never sleep. Cloning is cheap; clones share the same epoch.
#[derive(Clone)]
pub struct Clock(Source);

#[derive(Clone)]
enum Source {
    System(Instant),
    Fake(FakeClock),
}

impl Clock {
    /// The system's monotonic clock; its epoch is the moment of this call.
    pub fn system() -> Self {
        Self(Source::System(Instant::now()))
    }

    /// The time elapsed since this clock's epoch.
    #[inline]
    pub fn now(&self) -> Duration {
        match &self.0 {
            Source::System(epoch) => epoch.elapsed(),
            Source::Fake(fake) => fake.now(),
        }
    }

    /// [`now`](Self::now) in whole milliseconds.
    #[inline]
    pub(crate) fn now_ms(&self) -> u64 {
        let now = self.now();
        now.as_secs()
            .saturating_mul(1000)
            .saturating_add(u64::from(now.subsec_millis()))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::System(_) => f.write_str("Clock::System"),
            Source::Fake(fake) => f.debug_tuple("Clock::Fake").field(&fake.now()).finish(),
        }
    }
}

impl From<FakeClock> for Clock {
    fn from(fake: FakeClock) -> Self {
        Self(Source::Fake(fake))
    }
}

/// A clock that stands still until [`advance`](Self::advance)d or [`set`](Self::set).
///
/// Clones share the same time, so a test keeps one handle and gives a clone to the breaker:
///
/// ```
/// use std::time::Duration;
/// use palisade_circuit_breaker::{Clock, FakeClock};
///
/// let fake = FakeClock::new();
/// let clock: Clock = fake.clock();
/// fake.advance(Duration::from_secs(3));
/// assert_eq!(clock.now(), Duration::from_secs(3));
/// ```
#[derive(Clone, Debug, Default)]
pub struct FakeClock(Arc<AtomicU64>);

impl FakeClock {
    /// A fake clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current fake time.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Acquire))
    }

    /// Move the time forward by `by` (saturating).
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(nanos))
            });
    }

    /// Set the time to `to` (it may move backwards; breakers treat that as no time passing).
    pub fn set(&self, to: Duration) {
        self.0.store(
            u64::try_from(to.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
    }

    /// A [`Clock`] reading this fake time.
    pub fn clock(&self) -> Clock {
        Clock::from(self.clone())
    }
}
